//! The parsed form of one tool call, shared by the text (CWM) and JSON (function-calling) formats, and the errors
//! a malformed call produces. Both formats parse into [`ToolCall`] so execution never cares where a call came from.

use std::fmt;

/// The four tools, by name. Used in results and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolName {
    /// Run commands in the persistent shell.
    Bash,
    /// Replace one block of whole lines in an existing file.
    Edit,
    /// Create a new file.
    Create,
    /// Submit a patch file as the episode's answer.
    Submit,
}

impl ToolName {
    /// Every tool, in the order they are documented to the model.
    pub const ALL: [ToolName; 4] = [
        ToolName::Bash,
        ToolName::Edit,
        ToolName::Create,
        ToolName::Submit,
    ];

    /// The name as the model writes it (`bash`, `edit`, `create`, `submit`).
    pub fn as_str(self) -> &'static str {
        match self {
            ToolName::Bash => "bash",
            ToolName::Edit => "edit",
            ToolName::Create => "create",
            ToolName::Submit => "submit",
        }
    }

    /// Looks a tool up by the exact name the model wrote.
    pub fn from_name(name: &str) -> Option<ToolName> {
        ToolName::ALL.into_iter().find(|tool| tool.as_str() == name)
    }

    /// The names of all tools joined for error messages: `bash, edit, create, submit`.
    pub fn available() -> String {
        ToolName::ALL.map(ToolName::as_str).join(", ")
    }
}

impl fmt::Display for ToolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One parsed tool call, ready to run.
///
/// For `Edit`, `search` and `replace` are *line blocks*: a sequence of lines, each terminated by `\n` (so `""` is
/// zero lines and `"\n"` is one empty line). The text format produces this directly from the lines between the
/// markers; the JSON format appends a final `\n` when the model's string lacks one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "tool", rename_all = "lowercase")]
pub enum ToolCall {
    /// Run `command` in the persistent shell.
    Bash {
        /// The command text, possibly several lines.
        command: String,
    },
    /// Replace the unique occurrence of the `search` lines in `path` with the `replace` lines.
    Edit {
        /// File path, absolute or relative to the shell's current directory.
        path: String,
        /// Lines to find (each `\n`-terminated).
        search: String,
        /// Lines to put in their place (each `\n`-terminated; empty deletes the lines).
        replace: String,
    },
    /// Create a new file at `path` holding exactly `content`.
    Create {
        /// File path, absolute or relative to the shell's current directory.
        path: String,
        /// The exact file content.
        content: String,
    },
    /// Submit a patch file; with no path the submission is computed from the repository (if configured).
    Submit {
        /// Patch file path, absolute or relative to the shell's current directory.
        path: Option<String>,
    },
}

impl ToolCall {
    /// Which tool this call is for.
    pub fn name(&self) -> ToolName {
        match self {
            ToolCall::Bash { .. } => ToolName::Bash,
            ToolCall::Edit { .. } => ToolName::Edit,
            ToolCall::Create { .. } => ToolName::Create,
            ToolCall::Submit { .. } => ToolName::Submit,
        }
    }
}

/// Why a model's action could not be turned into a [`ToolCall`].
///
/// Two families: *format errors* about the call as a whole (no call, several calls, tags, thinking markers, unknown
/// tool), which the CWM scaffold returns as a `FormatError:` user message, and *argument errors* of a known tool
/// (bad edit block, bad JSON arguments), which it returns as that tool's failed output. See
/// [`CallError::is_format_error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The text has no `<tool: NAME>` … `</tool>` block at all.
    #[error(
        "no tool call found; write exactly one call as `<tool: NAME>`, a newline, the arguments, a newline and \
         `</tool>` (available tools: {available})"
    )]
    NoCall {
        /// Names of the available tools.
        available: String,
    },
    /// More than one complete call in one turn.
    #[error("expected exactly one tool call per turn but found {count} ({names}); send one call and wait for its output")]
    SeveralCalls {
        /// How many complete calls were found.
        count: usize,
        /// Their tool names, comma-separated.
        names: String,
    },
    /// Opening and closing tags do not pair up into well-formed calls.
    #[error(
        "unbalanced tool tags: found {opening} `<tool:` opening tag(s) and {closing} `</tool>` closing tag(s) but \
         {complete} well-formed call(s); the opening tag must be `<tool: NAME>` on its own line and `</tool>` must \
         start the line after the arguments"
    )]
    UnbalancedTags {
        /// Count of `<tool:` in the text.
        opening: usize,
        /// Count of `</tool>` in the text.
        closing: usize,
        /// Count of well-formed calls.
        complete: usize,
    },
    /// The reasoning block is not closed exactly once.
    #[error("expected exactly one `</think>` closing the reasoning but found {count}; the tool call goes after it")]
    ThinkEnd {
        /// How many `</think>` markers were found.
        count: usize,
    },
    /// A call whose arguments are empty or whitespace only.
    #[error("tool `{tool}` needs non-empty arguments but got empty or whitespace-only input")]
    EmptyArgs {
        /// The tool named in the call.
        tool: ToolName,
    },
    /// The tool name is not one of ours.
    #[error("unknown tool `{name}`; available tools: {available}")]
    UnknownTool {
        /// The name the model wrote.
        name: String,
        /// Names of the available tools.
        available: String,
    },
    /// The edit arguments are not a path line followed by one SEARCH/REPLACE block.
    #[error(
        "could not parse the edit call ({reason}); use exactly this layout:\n<tool: edit>\n[path]\n<<<<<<< SEARCH\n\
         [lines to find]\n=======\n[lines to put instead]\n>>>>>>> REPLACE\n</tool>"
    )]
    BadEditFormat {
        /// What exactly is wrong.
        reason: String,
    },
    /// The edit arguments hold more than one SEARCH/REPLACE block.
    #[error("an edit call takes exactly one SEARCH/REPLACE block but found {count}; send one edit per call")]
    SeveralEditBlocks {
        /// How many `<<<<<<< SEARCH` markers were found.
        count: usize,
    },
    /// A path argument that is empty.
    #[error("tool `{tool}` needs a file path but the path is empty")]
    EmptyPath {
        /// The tool whose path is empty.
        tool: ToolName,
    },
    /// The JSON arguments string is not valid JSON.
    #[error("arguments of tool `{tool}` are not valid JSON: {message}")]
    BadJson {
        /// The tool called.
        tool: ToolName,
        /// The JSON parser's message.
        message: String,
    },
    /// The JSON arguments are valid JSON but not an object.
    #[error("arguments of tool `{tool}` must be a JSON object")]
    ArgsNotObject {
        /// The tool called.
        tool: ToolName,
    },
    /// A required argument is absent.
    #[error("tool `{tool}` is missing the required argument `{field}`")]
    MissingField {
        /// The tool called.
        tool: ToolName,
        /// The missing argument.
        field: &'static str,
    },
    /// An argument has the wrong JSON type.
    #[error("argument `{field}` of tool `{tool}` must be {expected}")]
    WrongFieldType {
        /// The tool called.
        tool: ToolName,
        /// The argument.
        field: &'static str,
        /// What it must be, e.g. "a string".
        expected: &'static str,
    },
    /// An argument the tool does not take.
    #[error("tool `{tool}` does not take an argument `{field}`; its arguments are: {allowed}")]
    UnexpectedField {
        /// The tool called.
        tool: ToolName,
        /// The argument the model sent.
        field: String,
        /// The arguments the tool takes.
        allowed: &'static str,
    },
}

impl CallError {
    /// True for errors about the call as a whole (rendered as `FormatError: …`); false for argument errors of a
    /// known tool (rendered as that tool's failed output).
    pub fn is_format_error(&self) -> bool {
        self.tool().is_none()
    }

    /// The tool whose arguments were bad, for argument errors; `None` for format errors.
    pub fn tool(&self) -> Option<ToolName> {
        match self {
            CallError::NoCall { .. }
            | CallError::SeveralCalls { .. }
            | CallError::UnbalancedTags { .. }
            | CallError::ThinkEnd { .. }
            | CallError::EmptyArgs { .. }
            | CallError::UnknownTool { .. } => None,
            CallError::BadEditFormat { .. } | CallError::SeveralEditBlocks { .. } => {
                Some(ToolName::Edit)
            }
            CallError::EmptyPath { tool }
            | CallError::BadJson { tool, .. }
            | CallError::ArgsNotObject { tool }
            | CallError::MissingField { tool, .. }
            | CallError::WrongFieldType { tool, .. }
            | CallError::UnexpectedField { tool, .. } => Some(*tool),
        }
    }

    /// A stable snake_case name for the variant, for trajectories and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::NoCall { .. } => "no_call",
            CallError::SeveralCalls { .. } => "several_calls",
            CallError::UnbalancedTags { .. } => "unbalanced_tags",
            CallError::ThinkEnd { .. } => "think_end",
            CallError::EmptyArgs { .. } => "empty_args",
            CallError::UnknownTool { .. } => "unknown_tool",
            CallError::BadEditFormat { .. } => "bad_edit_format",
            CallError::SeveralEditBlocks { .. } => "several_edit_blocks",
            CallError::EmptyPath { .. } => "empty_path",
            CallError::BadJson { .. } => "bad_json",
            CallError::ArgsNotObject { .. } => "args_not_object",
            CallError::MissingField { .. } => "missing_field",
            CallError::WrongFieldType { .. } => "wrong_field_type",
            CallError::UnexpectedField { .. } => "unexpected_field",
        }
    }
}
