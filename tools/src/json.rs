//! The same four tools as OpenAI function-calling tools: their JSON schemas, and parsing a native tool call (name
//! plus arguments) into the same [`ToolCall`] the text format produces, with the same error type and texts.

use serde_json::{json, Map, Value};

use crate::call::{CallError, ToolCall, ToolName};
use crate::tool::SubmitKind;

/// The `tools` array for an OpenAI-compatible chat completion request (`[{"type": "function", "function": …}]`).
pub fn openai_tools() -> Value {
    openai_tools_for(SubmitKind::Patch)
}

/// [`openai_tools`] for a submit tool of `submit` kind (a generated test's episode submits a file, not a patch).
pub fn openai_tools_for(submit: SubmitKind) -> Value {
    Value::Array(
        ToolName::ALL
            .into_iter()
            .map(|tool| function_tool(tool, submit))
            .collect(),
    )
}

fn function_tool(tool: ToolName, submit: SubmitKind) -> Value {
    let (description, properties, required): (&str, Value, Vec<&str>) = match tool {
        ToolName::Bash => (
            "Run non-interactive bash command(s) in the persistent shell session (working directory and \
             environment persist between calls). stdout and stderr are returned together. A command that runs \
             longer than the per-command timeout is interrupted.",
            json!({"command": {"type": "string", "description": "The command(s) to run; may span several lines."}}),
            vec!["command"],
        ),
        ToolName::Edit => (
            "Replace one block of consecutive whole lines in an existing file. `search` must match the file's lines \
             exactly (indentation and whitespace included) and occur exactly once; `replace` takes its place (empty \
             deletes the lines). The file's line endings and final newline are kept.",
            json!({
                "path": {"type": "string", "description": "File path, absolute or relative to the shell's working directory."},
                "search": {"type": "string", "description": "The exact lines to find, one or more."},
                "replace": {"type": "string", "description": "The lines to put in their place."}
            }),
            vec!["path", "search", "replace"],
        ),
        ToolName::Create => (
            "Create a new file with the given content. The path must not exist yet and its parent directory must \
             exist.",
            json!({
                "path": {"type": "string", "description": "File path, absolute or relative to the shell's working directory."},
                "content": {"type": "string", "description": "The exact content of the new file."}
            }),
            vec!["path", "content"],
        ),
        ToolName::Submit if submit == SubmitKind::File => (
            "Submit your result: the file at `path`, its content as is. You may submit again to replace an \
             earlier submission.",
            json!({"path": {"type": "string", "description": "Path to the file to submit."}}),
            vec!["path"],
        ),
        ToolName::Submit => (
            "Submit your solution. With `path`, the file (a patch in git diff format) is your submission; without \
             it, the changes in the repository are submitted. You may submit again to replace an earlier \
             submission.",
            json!({"path": {"type": "string", "description": "Path to a patch file in git diff format."}}),
            vec![],
        ),
    };
    json!({
        "type": "function",
        "function": {
            "name": tool.as_str(),
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": false
            }
        }
    })
}

/// Parses a native tool call whose arguments arrive as a JSON string (as in OpenAI responses). An empty or
/// whitespace-only string counts as `{}`.
pub fn parse_json_call(name: &str, arguments: &str) -> Result<ToolCall, CallError> {
    let tool = lookup(name)?;
    if arguments.trim().is_empty() {
        return parse_args(tool, &Map::new());
    }
    let value: Value = serde_json::from_str(arguments).map_err(|error| CallError::BadJson {
        tool,
        message: error.to_string(),
    })?;
    parse_object(tool, &value)
}

/// Parses a native tool call whose arguments are already a JSON value (must be an object).
pub fn parse_json_call_value(name: &str, arguments: &Value) -> Result<ToolCall, CallError> {
    let tool = lookup(name)?;
    parse_object(tool, arguments)
}

fn lookup(name: &str) -> Result<ToolName, CallError> {
    ToolName::from_name(name).ok_or_else(|| CallError::UnknownTool {
        name: name.to_owned(),
        available: ToolName::available(),
    })
}

fn parse_object(tool: ToolName, value: &Value) -> Result<ToolCall, CallError> {
    match value {
        Value::Object(map) => parse_args(tool, map),
        _ => Err(CallError::ArgsNotObject { tool }),
    }
}

fn allowed_fields(tool: ToolName) -> &'static [&'static str] {
    match tool {
        ToolName::Bash => &["command"],
        ToolName::Edit => &["path", "search", "replace"],
        ToolName::Create => &["path", "content"],
        ToolName::Submit => &["path"],
    }
}

fn allowed_text(tool: ToolName) -> &'static str {
    match tool {
        ToolName::Bash => "command",
        ToolName::Edit => "path, search, replace",
        ToolName::Create => "path, content",
        ToolName::Submit => "path (optional)",
    }
}

fn parse_args(tool: ToolName, map: &Map<String, Value>) -> Result<ToolCall, CallError> {
    let allowed = allowed_fields(tool);
    if let Some(field) = map.keys().find(|key| !allowed.contains(&key.as_str())) {
        return Err(CallError::UnexpectedField {
            tool,
            field: field.clone(),
            allowed: allowed_text(tool),
        });
    }
    match tool {
        ToolName::Bash => {
            let command = required_string(tool, map, "command")?;
            if command.trim().is_empty() {
                return Err(CallError::EmptyArgs { tool });
            }
            Ok(ToolCall::Bash { command })
        }
        ToolName::Edit => {
            let path = required_path(tool, map)?;
            let search = as_line_block(required_string(tool, map, "search")?);
            let replace = as_line_block(required_string(tool, map, "replace")?);
            Ok(ToolCall::Edit {
                path,
                search,
                replace,
            })
        }
        ToolName::Create => {
            let path = required_path(tool, map)?;
            let content = required_string(tool, map, "content")?;
            Ok(ToolCall::Create { path, content })
        }
        ToolName::Submit => match map.get("path") {
            None | Some(Value::Null) => Ok(ToolCall::Submit { path: None }),
            Some(Value::String(path)) if path.trim().is_empty() => {
                Ok(ToolCall::Submit { path: None })
            }
            Some(Value::String(path)) => Ok(ToolCall::Submit {
                path: Some(path.trim().to_owned()),
            }),
            Some(_) => Err(CallError::WrongFieldType {
                tool,
                field: "path",
                expected: "a string",
            }),
        },
    }
}

fn required_string(
    tool: ToolName,
    map: &Map<String, Value>,
    field: &'static str,
) -> Result<String, CallError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(CallError::MissingField { tool, field }),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(CallError::WrongFieldType {
            tool,
            field,
            expected: "a string",
        }),
    }
}

fn required_path(tool: ToolName, map: &Map<String, Value>) -> Result<String, CallError> {
    let path = required_string(tool, map, "path")?;
    let path = path.trim();
    if path.is_empty() {
        return Err(CallError::EmptyPath { tool });
    }
    Ok(path.to_owned())
}

/// Turns a JSON string of lines into a line block: a final line without `\n` gets one.
fn as_line_block(mut text: String) -> String {
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, arguments: &str, expect: &str) {
        let actual = match parse_json_call(name, arguments) {
            Ok(call) => format!("ok {call:?}"),
            Err(error) => format!("err {}: {error}", error.kind()),
        };
        assert_eq!(actual, expect, "call: {name} {arguments}");
    }

    #[test]
    fn schemas_cover_all_tools() {
        let tools = openai_tools();
        let names: Vec<&str> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["bash", "edit", "create", "submit"]);
        assert_eq!(
            tools[1]["function"]["parameters"]["required"],
            json!(["path", "search", "replace"])
        );
        assert_eq!(tools[3]["function"]["parameters"]["required"], json!([]));
        assert_eq!(tools[0]["type"], "function");
    }

    #[test]
    fn good_calls() {
        check(
            "bash",
            r#"{"command": "ls"}"#,
            r#"ok Bash { command: "ls" }"#,
        );
        check(
            "edit",
            r#"{"path": " a.py ", "search": "x = 1", "replace": "x = 2\ny = 3\n"}"#,
            r#"ok Edit { path: "a.py", search: "x = 1\n", replace: "x = 2\ny = 3\n" }"#,
        );
        check(
            "edit",
            r#"{"path": "a.py", "search": "x", "replace": ""}"#,
            r#"ok Edit { path: "a.py", search: "x\n", replace: "" }"#,
        );
        check(
            "create",
            r#"{"path": "n.py", "content": "a\n"}"#,
            r#"ok Create { path: "n.py", content: "a\n" }"#,
        );
        check("submit", "", "ok Submit { path: None }");
        check("submit", r#"{"path": null}"#, "ok Submit { path: None }");
        check(
            "submit",
            r#"{"path": "p.diff"}"#,
            r#"ok Submit { path: Some("p.diff") }"#,
        );
        let value = json!({"command": "pwd"});
        assert_eq!(
            parse_json_call_value("bash", &value),
            Ok(ToolCall::Bash {
                command: "pwd".into()
            })
        );
    }

    #[test]
    fn errors() {
        check(
            "python",
            "{}",
            "err unknown_tool: unknown tool `python`; available tools: bash, edit, create, submit",
        );
        check(
            "bash",
            r#"{"command": "ls""#,
            "err bad_json: arguments of tool `bash` are not valid JSON: EOF while parsing an object at line 1 column 16",
        );
        check(
            "bash",
            "[1]",
            "err args_not_object: arguments of tool `bash` must be a JSON object",
        );
        check(
            "bash",
            "{}",
            "err missing_field: tool `bash` is missing the required argument `command`",
        );
        check(
            "bash",
            r#"{"command": " "}"#,
            "err empty_args: tool `bash` needs non-empty arguments but got empty or whitespace-only input",
        );
        check(
            "edit",
            r#"{"path": "a", "search": 3, "replace": ""}"#,
            "err wrong_field_type: argument `search` of tool `edit` must be a string",
        );
        check(
            "edit",
            r#"{"path": "", "search": "a", "replace": ""}"#,
            "err empty_path: tool `edit` needs a file path but the path is empty",
        );
        check(
            "create",
            r#"{"path": "a", "content": "", "mode": "755"}"#,
            "err unexpected_field: tool `create` does not take an argument `mode`; its arguments are: path, content",
        );
        check(
            "submit",
            r#"{"path": 1}"#,
            "err wrong_field_type: argument `path` of tool `submit` must be a string",
        );
    }
}
