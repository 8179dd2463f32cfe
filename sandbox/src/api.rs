//! The [`Sandbox`] trait: the small surface the agent tools need. [`crate::DockerSandbox`] implements it for a
//! container, [`crate::UnisolatedHostSandbox`] over a host directory (tests). Keeping it this narrow is what lets the
//! tools stay free of Docker.

use std::time::Duration;

use crate::error::SandboxError;

/// What one command in the persistent shell produced. Non-zero exits and timeouts are data, not errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// stdout and stderr merged, possibly capped (head and tail kept, the cut marked inside the bytes).
    pub output: Vec<u8>,
    /// Exit status of the command; `None` when it never finished (timed out and killed, or the shell died).
    pub exit_code: Option<i32>,
    /// The per-command timeout fired and the command was interrupted.
    pub timed_out: bool,
    /// The output was longer than the cap and was cut.
    pub truncated: bool,
    /// The shell had to be restarted (it exited, or was wedged): state such as the cwd was reset.
    pub restarted: bool,
    /// Wall-clock time of the command.
    pub duration: Duration,
}

/// What a path points at inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// Nothing there.
    Missing,
    /// A regular file (or a symlink to one).
    File,
    /// A directory.
    Directory,
    /// Anything else (socket, device, dangling link).
    Other,
}

/// What [`Sandbox::read_file_at_most`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundedRead {
    /// The whole file, at most the limit.
    Whole(Vec<u8>),
    /// The file is over the limit; its content was not kept. `size` is its size in bytes (at least limit + 1).
    TooLarge {
        /// Size of the file in bytes (a lower bound when the file system does not report it, as in `/proc`).
        size: u64,
    },
}

/// The operations tools perform. All paths given to the file methods are absolute; tools resolve relative paths
/// against [`Sandbox::cwd`] themselves.
#[async_trait::async_trait]
pub trait Sandbox: Send + Sync {
    /// Runs `command` in the persistent shell (state such as `cd`/`export` persists), with a timeout.
    async fn run(&self, command: &str, timeout: Duration) -> Result<CommandOutput, SandboxError>;
    /// The shell's current working directory (as of the last command).
    async fn cwd(&self) -> Result<String, SandboxError>;
    /// What `path` (absolute) is.
    async fn path_kind(&self, path: &str) -> Result<PathKind, SandboxError>;
    /// The exact bytes of the file at `path` (absolute). A missing or unreadable file is an `Err`.
    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError>;
    /// The bytes of the file at `path` (absolute) when it has at most `max_bytes` bytes, else its size only.
    /// Implementations must not hold more than about `max_bytes` of it in memory; this default reads the whole
    /// file first and suits only sandboxes whose files are trusted to be small.
    async fn read_file_at_most(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<BoundedRead, SandboxError> {
        let bytes = self.read_file(path).await?;
        if bytes.len() > max_bytes {
            return Ok(BoundedRead::TooLarge {
                size: bytes.len() as u64,
            });
        }
        Ok(BoundedRead::Whole(bytes))
    }
    /// Writes exactly `bytes` to `path` (absolute). An existing file keeps its mode; a new one gets 0644.
    async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), SandboxError>;
}
