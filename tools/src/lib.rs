//! Agent-facing tools with CWM semantics. Pure logic over [`ToolSandbox`]; no Docker, no proto.
//!
//! Flow: [`parse_text_call`] / [`parse_json_call`] turn a model action into a [`ToolCall`] (or a [`CallError`]);
//! [`run_tool`] runs it in a sandbox and returns a [`ToolResult`] (tool failures are data); [`render_observation`]
//! / [`render_call_error`] produce what the model sees next.

mod bash;
pub mod call;
mod create;
mod edit;
pub mod host;
pub mod json;
pub mod parse;
pub mod render;
pub mod sandbox;
pub mod submit;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tool;

pub use call::{CallError, ToolCall, ToolName};
pub use host::{HostSandboxConfig, UnisolatedHostSandbox};
pub use json::{openai_tools, parse_json_call, parse_json_call_value};
pub use parse::{parse_text_args, parse_text_call};
pub use render::{render_call_error, render_observation, tool_specs_text, truncate_right, Budget};
pub use sandbox::{CommandOutput, PathKind, SandboxError, ToolSandbox};
pub use submit::{compute_submission, looks_like_diff, SubmissionError};
pub use tool::{run_tool, SubmissionRepo, ToolConfig, ToolErrorKind, ToolResult};
