//! What the model sees in the CWM scaffold: a tool's output wrapped in `<output>` tags and followed by a
//! `<budget>` block, call errors as `FormatError: …`, each observation capped; and the tool specs for the system
//! prompt.

use crate::call::CallError;
use crate::tool::{SubmitKind, ToolConfig, ToolResult};

/// Rough bytes per token used to turn token caps into byte caps: 3 is conservative for code and logs with common
/// BPE tokenizers (real text usually averages 3.5-4.5), so a byte cap rarely lets through more tokens than meant.
pub const APPROX_BYTES_PER_TOKEN: usize = 3;
/// Default per-observation cap: 32768 tokens' worth of bytes (98304 bytes).
pub const DEFAULT_OBSERVATION_CAP_BYTES: usize = 32768 * APPROX_BYTES_PER_TOKEN;

/// What is left of the episode's budget, shown after every observation, plus the per-observation cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Turns the model may still take.
    pub remaining_turns: u64,
    /// Context tokens still free (may be estimated by the caller; negative means over budget).
    pub remaining_tokens: i64,
    /// Cap in bytes on the text of one observation (the tool output or error, excluding the wrapper and budget
    /// block); longer text is cut at the right with a visible marker. Default [`DEFAULT_OBSERVATION_CAP_BYTES`].
    pub observation_cap_bytes: usize,
}

impl Budget {
    /// A budget with the default observation cap.
    pub fn new(remaining_turns: u64, remaining_tokens: i64) -> Self {
        Self {
            remaining_turns,
            remaining_tokens,
            observation_cap_bytes: DEFAULT_OBSERVATION_CAP_BYTES,
        }
    }
}

/// Cuts `text` to at most `cap_bytes` bytes (at a character boundary) and appends a marker saying how much was cut.
pub fn truncate_right(text: &str, cap_bytes: usize) -> String {
    if text.len() <= cap_bytes {
        return text.to_owned();
    }
    let mut end = cap_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[... observation cut here: {} more bytes not shown; narrow the command (e.g. head, grep, tail) ...]",
        &text[..end],
        text.len() - end
    )
}

fn budget_block(budget: &Budget) -> String {
    format!(
        "<budget>\nTurns left: {}\nTokens left: {}\n</budget>",
        budget.remaining_turns, budget.remaining_tokens
    )
}

fn wrap_output(text: &str, budget: &Budget) -> String {
    format!(
        "<output>\n{}\n</output>\n\n{}",
        truncate_right(text, budget.observation_cap_bytes),
        budget_block(budget)
    )
}

/// The observation for a tool result: `<output>\n…\n</output>`, a blank line, then the `<budget>` block.
pub fn render_observation(result: &ToolResult, budget: &Budget) -> String {
    wrap_output(&result.text, budget)
}

/// The message for an action that did not parse: format errors become `FormatError: …` (no budget block, as in
/// CWM, where they go back as a user message); argument errors of a known tool render like that tool's failed
/// output (see [`CallError::is_format_error`]).
pub fn render_call_error(error: &CallError, budget: &Budget) -> String {
    if error.is_format_error() {
        truncate_right(
            &format!("FormatError: {error}"),
            budget.observation_cap_bytes,
        )
    } else {
        wrap_output(&error.to_string(), budget)
    }
}

/// The tool descriptions and call syntax for a system prompt (text call format).
pub fn tool_specs_text(config: &ToolConfig) -> String {
    let timeout = config.cmd_timeout.as_secs();
    let submit = match config.submit_kind {
        SubmitKind::Patch => {
            "Submits the patch file [path] (in `git diff` format) as your solution. You may submit again later; the \
             latest submission counts."
        }
        SubmitKind::File => {
            "Submits the file [path] (its content, as is) as your result. You may submit again later; the latest \
             submission counts."
        }
    };
    format!(
        "You act by calling tools. Each reply contains exactly one tool call, written as an opening tag with the \
         tool name on its own line, the arguments, and a closing tag on its own line:\n\
         \n\
         <tool: bash>\n\
         [commands]\n\
         </tool>\n\
         Runs non-interactive bash commands (one or several lines) in a persistent shell session: the working \
         directory, variables and activated environments carry over between calls. stdout and stderr come back \
         together. A command still running after {timeout} seconds is interrupted.\n\
         \n\
         <tool: edit>\n\
         [path]\n\
         <<<<<<< SEARCH\n\
         [lines to find]\n\
         =======\n\
         [lines to put instead]\n\
         >>>>>>> REPLACE\n\
         </tool>\n\
         Replaces lines in the existing file [path] (absolute, or relative to the shell's working directory). The \
         SEARCH lines must be one or more whole consecutive lines of the file, copied exactly (indentation and \
         whitespace included), and must occur exactly once. The REPLACE lines take their place; leave REPLACE empty \
         to delete them. One SEARCH/REPLACE block per call. The file's line endings and final newline are kept.\n\
         \n\
         <tool: create>\n\
         [path]\n\
         [content]\n\
         </tool>\n\
         Creates a new file [path] containing [content] exactly; leave an empty line before </tool> to end the file \
         with a newline. [path] must not exist yet; its parent directory must exist.\n\
         \n\
         <tool: submit>\n\
         [path]\n\
         </tool>\n\
         {submit}\n\
         \n\
         Rules: never more than one tool call per reply; if you think first, close your thinking with </think> \
         before the call."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::ToolName;
    use crate::parse::parse_text_call;
    use crate::tool::ToolErrorKind;

    fn result(text: &str) -> ToolResult {
        ToolResult::failed(
            ToolName::Edit,
            ToolErrorKind::SearchNotFound,
            text.to_owned(),
        )
    }

    #[test]
    fn observation_layout() {
        assert_eq!(
            render_observation(&result("hello\n"), &Budget::new(7, 1234)),
            "<output>\nhello\n\n</output>\n\n<budget>\nTurns left: 7\nTokens left: 1234\n</budget>"
        );
    }

    #[test]
    fn observation_cap() {
        // The cap falls inside "é" (bytes 1-2), so the cut moves back to the character boundary.
        let budget = Budget {
            observation_cap_bytes: 2,
            ..Budget::new(1, 2)
        };
        assert_eq!(
            render_observation(&result("héllo"), &budget),
            "<output>\nh\n[... observation cut here: 5 more bytes not shown; narrow the command (e.g. head, grep, \
             tail) ...]\n</output>\n\n<budget>\nTurns left: 1\nTokens left: 2\n</budget>"
        );
        assert_eq!(truncate_right("abc", 3), "abc");
    }

    #[test]
    fn call_errors() {
        let budget = Budget::new(3, -5);
        let no_call = parse_text_call("done").unwrap_err();
        assert!(
            render_call_error(&no_call, &budget).starts_with("FormatError: no tool call found;")
        );
        let bad_edit = parse_text_call("<tool: edit>\na.py\nx\n</tool>").unwrap_err();
        let rendered = render_call_error(&bad_edit, &budget);
        assert!(
            rendered.starts_with("<output>\ncould not parse the edit call (missing the"),
            "{rendered}"
        );
        assert!(
            rendered.ends_with("</output>\n\n<budget>\nTurns left: 3\nTokens left: -5\n</budget>")
        );
    }

    #[test]
    fn specs_mention_every_tool() {
        let specs = tool_specs_text(&ToolConfig::default());
        for tool in ToolName::ALL {
            assert!(specs.contains(&format!("<tool: {tool}>\n")), "{tool}");
        }
        assert!(specs.contains("after 120 seconds"));
    }
}
