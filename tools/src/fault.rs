//! Fault injection for tests: a sandbox whose file reads or writes fail, to exercise how tools report I/O errors
//! (running as root, permissions cannot provoke them).

use std::time::Duration;

use swe_env_sandbox::host::UnisolatedHostSandbox;
use swe_env_sandbox::{CommandOutput, PathKind, Sandbox, SandboxError};

/// Delegates to a host sandbox, except that the chosen file operations fail.
pub(crate) struct FailingIo {
    pub(crate) inner: UnisolatedHostSandbox,
    pub(crate) fail_reads: bool,
    pub(crate) fail_writes: bool,
}

#[async_trait::async_trait]
impl Sandbox for FailingIo {
    async fn run(&self, command: &str, timeout: Duration) -> Result<CommandOutput, SandboxError> {
        self.inner.run(command, timeout).await
    }

    async fn cwd(&self) -> Result<String, SandboxError> {
        self.inner.cwd().await
    }

    async fn path_kind(&self, path: &str) -> Result<PathKind, SandboxError> {
        self.inner.path_kind(path).await
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        if self.fail_reads {
            return Err(SandboxError::Host {
                detail: format!("cannot read {path}: Permission denied (os error 13)"),
            });
        }
        self.inner.read_file(path).await
    }

    async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), SandboxError> {
        if self.fail_writes {
            return Err(SandboxError::Host {
                detail: format!("cannot write {path}: Read-only file system (os error 30)"),
            });
        }
        self.inner.write_file(path, bytes).await
    }
}
