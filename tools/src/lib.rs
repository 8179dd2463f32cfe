//! Agent-facing tools with CWM semantics. Pure logic over [`ToolSandbox`]; no Docker, no proto.

pub mod sandbox;

pub use sandbox::{CommandOutput, PathKind, SandboxError, ToolSandbox};
