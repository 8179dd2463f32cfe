//! Agent-facing tools with CWM semantics. Pure logic over [`swe_env_sandbox::Sandbox`]; no Docker, no proto.
//!
//! Flow: [`parse_text_call`] / [`parse_json_call`] turn a model action into a [`ToolCall`] (or a [`CallError`]);
//! [`run_tool`] runs it in a sandbox and returns a [`ToolResult`] (tool failures are data); [`render_observation`]
//! / [`render_call_error`] produce what the model sees next.

#![warn(missing_docs)]

mod bash;
pub mod call;
mod create;
mod edit;
#[cfg(test)]
mod fault;
pub mod json;
pub mod parse;
pub mod quote;
pub mod render;
pub mod submit;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tool;

pub use call::{CallError, ToolCall, ToolName};
pub use json::{openai_tools, openai_tools_for, parse_json_call, parse_json_call_value};
pub use parse::{parse_text_args, parse_text_call};
pub use quote::shell_quote;
pub use render::{render_call_error, render_observation, tool_specs_text, truncate_right, Budget};
pub use submit::{compute_submission, looks_like_diff, SubmissionError};
pub use tool::{
    run_tool, SubmissionRepo, SubmitKind, ToolConfig, ToolErrorKind, ToolResult,
    DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_SUBMISSION_BYTES,
};

#[cfg(test)]
mod tests {
    use super::*;
    use swe_env_sandbox::{Sandbox, UnisolatedHostSandbox};

    /// One step as the orchestrator drives it: text action → call → run → rendered observation.
    #[tokio::test]
    async fn text_step_end_to_end() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        sandbox
            .write_file(&format!("{root}/m.py"), b"def f():\r\n    return 1\r\n")
            .await
            .unwrap();
        let action = "<think>fix the return</think>\n<tool: edit>\nm.py\n<<<<<<< SEARCH\n    return 1\n=======\n    \
                      return 2\n>>>>>>> REPLACE\n</tool>";
        let call = parse_text_call(action).unwrap();
        let json_call = parse_json_call(
            "edit",
            r#"{"path": "m.py", "search": "    return 1", "replace": "    return 2\n"}"#,
        )
        .unwrap();
        assert_eq!(call, json_call, "both formats parse to the same call");
        let result = run_tool(&sandbox, &call, &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(
            render_observation(&result, &Budget::new(9, 500)),
            "<output>\nEdited m.py: replaced line 2 of the old file with 1 line (now line 2). The file now has 2 \
             lines. Lines 1-2 after the edit:\n     1\tdef f():\n     2\t    return 2\nCheck that the change is \
             what you intended.\n</output>\n\n<budget>\nTurns left: 9\nTokens left: 500\n</budget>"
        );
        assert_eq!(
            sandbox.read_file(&format!("{root}/m.py")).await.unwrap(),
            b"def f():\r\n    return 2\r\n"
        );
        let error = parse_text_call("I am done.").unwrap_err();
        assert!(render_call_error(&error, &Budget::new(8, 400))
            .starts_with("FormatError: no tool call found"));
    }
}
