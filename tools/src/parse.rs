//! The CWM text call format: one `<tool: NAME>\nARGS\n</tool>` block per assistant turn, optionally after a
//! reasoning block closed by a single `</think>`. Matching follows the reference DOTALL regex
//! `<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>` exactly, then counts raw tags to catch unbalanced ones.

use std::sync::LazyLock;

use regex::Regex;

use crate::call::{CallError, ToolCall, ToolName};

/// The reference call pattern (dot matches newline, lazy arguments).
static CALL_PATTERN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?s)<tool:\s([a-zA-Z_]+)>\n(.*?)\n</tool>").expect("the call pattern is valid")
});

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TAG_OPEN: &str = "<tool:";
const TAG_CLOSE: &str = "</tool>";
const SEARCH_MARKER: &str = "<<<<<<< SEARCH";
const SEPARATOR_MARKER: &str = "=======";
const REPLACE_MARKER: &str = ">>>>>>> REPLACE";

/// Parses one assistant message in the CWM text format into a [`ToolCall`].
///
/// Rules, in order: a message mentioning `<think>`/`</think>` must contain exactly one `</think>` and only the text
/// after it is parsed; exactly one well-formed call; as many raw `<tool:`/`</tool>` tags as well-formed calls; a
/// known tool name; non-empty arguments (except `submit`, whose path is optional); then the tool's own argument
/// layout (see [`parse_text_args`]).
pub fn parse_text_call(text: &str) -> Result<ToolCall, CallError> {
    let answer = strip_reasoning(text)?;
    let calls: Vec<(&str, &str)> = CALL_PATTERN
        .captures_iter(answer)
        .filter_map(|caps| Some((caps.get(1)?.as_str(), caps.get(2)?.as_str())))
        .collect();
    if calls.len() > 1 {
        let names: Vec<&str> = calls.iter().map(|(name, _)| *name).collect();
        return Err(CallError::SeveralCalls {
            count: calls.len(),
            names: names.join(", "),
        });
    }
    let opening = answer.matches(TAG_OPEN).count();
    let closing = answer.matches(TAG_CLOSE).count();
    if opening != calls.len() || closing != calls.len() {
        return Err(CallError::UnbalancedTags {
            opening,
            closing,
            complete: calls.len(),
        });
    }
    let Some(&(name, args)) = calls.first() else {
        return Err(CallError::NoCall {
            available: ToolName::available(),
        });
    };
    let tool = ToolName::from_name(name).ok_or_else(|| CallError::UnknownTool {
        name: name.to_owned(),
        available: ToolName::available(),
    })?;
    if tool != ToolName::Submit && args.trim().is_empty() {
        return Err(CallError::EmptyArgs { tool });
    }
    parse_text_args(tool, args)
}

/// Drops the reasoning block: when the text mentions thinking markers, keeps what follows the single `</think>`.
fn strip_reasoning(text: &str) -> Result<&str, CallError> {
    let count = text.matches(THINK_CLOSE).count();
    if count == 0 && !text.contains(THINK_OPEN) {
        return Ok(text);
    }
    match text.split_once(THINK_CLOSE) {
        Some((_, after)) if count == 1 => Ok(after),
        _ => Err(CallError::ThinkEnd { count }),
    }
}

/// Parses the text-format arguments of `tool`:
/// - `bash`: the command, verbatim;
/// - `edit`: the path on the first line, then one `<<<<<<< SEARCH` / lines / `=======` / lines / `>>>>>>> REPLACE`
///   block (marker lines may carry trailing whitespace; only blank lines may follow the block);
/// - `create`: the path on the first line, the rest verbatim as the content (so the file ends with a newline only
///   when the model leaves an empty line before `</tool>`, as in CWM);
/// - `submit`: an optional path (surrounding whitespace ignored).
pub fn parse_text_args(tool: ToolName, args: &str) -> Result<ToolCall, CallError> {
    match tool {
        ToolName::Bash => Ok(ToolCall::Bash {
            command: args.to_owned(),
        }),
        ToolName::Edit => parse_edit_args(args),
        ToolName::Create => {
            let (path_line, content) = args.split_once('\n').unwrap_or((args, ""));
            let path = path_line.trim();
            if path.is_empty() {
                return Err(CallError::EmptyPath { tool });
            }
            Ok(ToolCall::Create {
                path: path.to_owned(),
                content: content.to_owned(),
            })
        }
        ToolName::Submit => {
            let path = args.trim();
            Ok(ToolCall::Submit {
                path: (!path.is_empty()).then(|| path.to_owned()),
            })
        }
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.trim_end() == marker
}

fn bad_edit(reason: &str) -> CallError {
    CallError::BadEditFormat {
        reason: reason.to_owned(),
    }
}

/// Joins lines into a line block: every line terminated by `\n`.
fn line_block(lines: &[&str]) -> String {
    lines.iter().flat_map(|line| [*line, "\n"]).collect()
}

fn parse_edit_args(args: &str) -> Result<ToolCall, CallError> {
    let lines: Vec<&str> = args.split('\n').collect();
    let n_blocks = lines
        .iter()
        .filter(|line| is_marker(line, SEARCH_MARKER))
        .count();
    if n_blocks > 1 {
        return Err(CallError::SeveralEditBlocks { count: n_blocks });
    }
    let path = lines.first().map(|line| line.trim()).unwrap_or_default();
    if is_marker(path, SEARCH_MARKER) {
        return Err(bad_edit(
            "the first line must be the file path, before `<<<<<<< SEARCH`",
        ));
    }
    if path.is_empty() {
        return Err(CallError::EmptyPath {
            tool: ToolName::Edit,
        });
    }
    if n_blocks == 0 {
        return Err(bad_edit("missing the `<<<<<<< SEARCH` line"));
    }
    if !lines
        .get(1)
        .is_some_and(|line| is_marker(line, SEARCH_MARKER))
    {
        return Err(bad_edit(
            "`<<<<<<< SEARCH` must be on the line right after the path",
        ));
    }
    let after_search = &lines[2..];
    let Some(separator) = after_search
        .iter()
        .position(|line| is_marker(line, SEPARATOR_MARKER))
    else {
        return Err(bad_edit(
            "missing the `=======` line between the search and replacement lines",
        ));
    };
    let after_separator = &after_search[separator + 1..];
    let Some(end) = after_separator
        .iter()
        .position(|line| is_marker(line, REPLACE_MARKER))
    else {
        if after_search[..separator]
            .iter()
            .any(|line| is_marker(line, REPLACE_MARKER))
        {
            return Err(bad_edit("`>>>>>>> REPLACE` comes before `=======`"));
        }
        return Err(bad_edit(
            "missing the `>>>>>>> REPLACE` line ending the block",
        ));
    };
    if after_separator[end + 1..]
        .iter()
        .any(|line| !line.trim().is_empty())
    {
        return Err(bad_edit("unexpected text after `>>>>>>> REPLACE`"));
    }
    Ok(ToolCall::Edit {
        path: path.to_owned(),
        search: line_block(&after_search[..separator]),
        replace: line_block(&after_separator[..end]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `input` and compares a one-line rendering of the outcome with `expect`.
    fn check(input: &str, expect: &str) {
        let actual = match parse_text_call(input) {
            Ok(call) => format!("ok {call:?}"),
            Err(error) => format!("err {}: {error}", error.kind()),
        };
        assert_eq!(actual, expect, "input: {input:?}");
    }

    #[test]
    fn bash_call() {
        check(
            "<tool: bash>\nls -la\n</tool>",
            r#"ok Bash { command: "ls -la" }"#,
        );
        check(
            "I'll look.\n<tool: bash>\ncd /x\nls\n</tool>\n",
            r#"ok Bash { command: "cd /x\nls" }"#,
        );
        // `\s` allows any one whitespace character between `tool:` and the name, like the reference regex.
        check("<tool:\tbash>\nls\n</tool>", r#"ok Bash { command: "ls" }"#);
    }

    #[test]
    fn reasoning_is_skipped() {
        check(
            "<think>maybe <tool: bash>\nrm\n</tool></think>\n<tool: bash>\nls\n</tool>",
            r#"ok Bash { command: "ls" }"#,
        );
        check(
            "<think>a</think>b</think><tool: bash>\nls\n</tool>",
            "err think_end: expected exactly one `</think>` closing the reasoning but found 2; the tool call goes after it",
        );
        check(
            "<think>never closed <tool: bash>\nls\n</tool>",
            "err think_end: expected exactly one `</think>` closing the reasoning but found 0; the tool call goes after it",
        );
    }

    #[test]
    fn no_call() {
        check(
            "All done.",
            "err no_call: no tool call found; write exactly one call as `<tool: NAME>`, a newline, the arguments, a \
             newline and `</tool>` (available tools: bash, edit, create, submit)",
        );
    }

    #[test]
    fn several_calls() {
        check(
            "<tool: bash>\nls\n</tool>\n<tool: submit>\np.diff\n</tool>",
            "err several_calls: expected exactly one tool call per turn but found 2 (bash, submit); send one call and \
             wait for its output",
        );
    }

    #[test]
    fn unbalanced_tags() {
        check(
            "<tool: bash>\nls\n",
            "err unbalanced_tags: unbalanced tool tags: found 1 `<tool:` opening tag(s) and 0 `</tool>` closing tag(s) \
             but 0 well-formed call(s); the opening tag must be `<tool: NAME>` on its own line and `</tool>` must \
             start the line after the arguments",
        );
        // Closing tag on the same line as the arguments does not match the pattern.
        check(
            "<tool: bash>\nls</tool>",
            "err unbalanced_tags: unbalanced tool tags: found 1 `<tool:` opening tag(s) and 1 `</tool>` closing tag(s) \
             but 0 well-formed call(s); the opening tag must be `<tool: NAME>` on its own line and `</tool>` must \
             start the line after the arguments",
        );
        check(
            "<tool: bash>\nls\n</tool>\n</tool>",
            "err unbalanced_tags: unbalanced tool tags: found 1 `<tool:` opening tag(s) and 2 `</tool>` closing tag(s) \
             but 1 well-formed call(s); the opening tag must be `<tool: NAME>` on its own line and `</tool>` must \
             start the line after the arguments",
        );
    }

    #[test]
    fn empty_args() {
        check(
            "<tool: bash>\n  \n</tool>",
            "err empty_args: tool `bash` needs non-empty arguments but got empty or whitespace-only input",
        );
        check("<tool: submit>\n\n</tool>", "ok Submit { path: None }");
    }

    #[test]
    fn unknown_tool() {
        check(
            "<tool: python>\nprint(1)\n</tool>",
            "err unknown_tool: unknown tool `python`; available tools: bash, edit, create, submit",
        );
    }

    #[test]
    fn create_call() {
        check(
            "<tool: create>\nsrc/a.py\nx = 1\n\n</tool>",
            r#"ok Create { path: "src/a.py", content: "x = 1\n" }"#,
        );
        check(
            "<tool: create>\n empty.txt \n</tool>",
            r#"ok Create { path: "empty.txt", content: "" }"#,
        );
        check(
            "<tool: create>\n\nx\n</tool>",
            "err empty_path: tool `create` needs a file path but the path is empty",
        );
    }

    #[test]
    fn submit_call() {
        check(
            "<tool: submit>\n  fix.patch \n</tool>",
            r#"ok Submit { path: Some("fix.patch") }"#,
        );
    }

    #[test]
    fn edit_call() {
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\n\tx = 1\n=======\n\tx = 2\n\ty = 3\n>>>>>>> REPLACE\n</tool>",
            r#"ok Edit { path: "a.py", search: "\tx = 1\n", replace: "\tx = 2\n\ty = 3\n" }"#,
        );
        // Empty replacement deletes; one blank search line is one empty line; trailing blank lines are fine.
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\n\n=======\n>>>>>>> REPLACE \n\n</tool>",
            r#"ok Edit { path: "a.py", search: "\n", replace: "" }"#,
        );
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\n=======\nnew\n>>>>>>> REPLACE\n</tool>",
            r#"ok Edit { path: "a.py", search: "", replace: "new\n" }"#,
        );
    }

    #[test]
    fn edit_format_errors() {
        let layout = "; use exactly this layout:\n<tool: edit>\n[path]\n<<<<<<< SEARCH\n[lines to find]\n=======\n\
                      [lines to put instead]\n>>>>>>> REPLACE\n</tool>";
        check(
            "<tool: edit>\na.py\nx\n=======\ny\n>>>>>>> REPLACE\n</tool>",
            &format!("err bad_edit_format: could not parse the edit call (missing the `<<<<<<< SEARCH` line){layout}"),
        );
        check(
            "<tool: edit>\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n</tool>",
            &format!(
                "err bad_edit_format: could not parse the edit call (the first line must be the file path, before \
                 `<<<<<<< SEARCH`){layout}"
            ),
        );
        check(
            "<tool: edit>\na.py\nnote\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n</tool>",
            &format!(
                "err bad_edit_format: could not parse the edit call (`<<<<<<< SEARCH` must be on the line right after \
                 the path){layout}"
            ),
        );
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\nx\ny\n>>>>>>> REPLACE\n</tool>",
            &format!(
                "err bad_edit_format: could not parse the edit call (missing the `=======` line between the search \
                 and replacement lines){layout}"
            ),
        );
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n</tool>",
            &format!(
                "err bad_edit_format: could not parse the edit call (missing the `>>>>>>> REPLACE` line ending the \
                 block){layout}"
            ),
        );
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\nx\n>>>>>>> REPLACE\n=======\n</tool>",
            &format!(
                "err bad_edit_format: could not parse the edit call (`>>>>>>> REPLACE` comes before `=======`){layout}"
            ),
        );
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\nand more\n</tool>",
            &format!(
                "err bad_edit_format: could not parse the edit call (unexpected text after `>>>>>>> REPLACE`){layout}"
            ),
        );
        check(
            "<tool: edit>\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n<<<<<<< SEARCH\nz\n=======\nw\n\
             >>>>>>> REPLACE\n</tool>",
            "err several_edit_blocks: an edit call takes exactly one SEARCH/REPLACE block but found 2; send one edit \
             per call",
        );
        check(
            "<tool: edit>\n \n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n</tool>",
            "err empty_path: tool `edit` needs a file path but the path is empty",
        );
    }

    #[test]
    fn error_families() {
        assert!(parse_text_call("nothing").unwrap_err().is_format_error());
        let edit_error = parse_text_call("<tool: edit>\na.py\nx\n</tool>").unwrap_err();
        assert!(!edit_error.is_format_error());
        assert_eq!(edit_error.tool(), Some(ToolName::Edit));
    }
}
