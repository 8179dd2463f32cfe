//! A `swe-env serve` child process started by a bench program (this binary, loopback, a port the OS picks): its
//! config file, token file, trajectories and `server.log` in a work directory of the caller's. Asked to drain
//! (SIGTERM) when dropped early, so an interrupted bench leaves no containers behind.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long the child may take to print its address and owner.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`ServeChild::stop`] waits for the drain before killing.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `swe-env serve` child.
pub struct ServeChild {
    child: Child,
    pid: Option<u32>,
    dir: PathBuf,
    /// The bound TCP address (`host:port`).
    pub addr: String,
    /// Its owner label (`owner …` line): its containers, pooled ones included, carry it.
    pub owner: String,
}

impl ServeChild {
    /// Writes `config_yaml` to `dir/serve.yaml` and `token` to `dir/token`, then starts
    /// `swe-env serve --listen 127.0.0.1:0 --config dir/serve.yaml --token-file dir/token --trajectory-dir
    /// dir/trajectories ARGS…` (stderr to `dir/server.log`) and waits for its address and owner lines.
    pub async fn start(
        dir: &Path,
        config_yaml: &str,
        token: &str,
        args: &[OsString],
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the swe-env binary")?;
        std::fs::create_dir_all(dir).context("creating the server's work directory")?;
        let config = dir.join("serve.yaml");
        std::fs::write(&config, config_yaml).context("writing the server config")?;
        std::fs::write(dir.join("token"), token).context("writing the token file")?;
        let log = std::fs::File::create(dir.join("server.log")).context("creating server.log")?;
        let mut child = Command::new(exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--token-file")
            .arg(dir.join("token"))
            .arg("--trajectory-dir")
            .arg(dir.join("trajectories"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("starting `swe-env serve`")?;
        let pid = child.id();
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut addr, mut owner) = (None, None);
        while addr.is_none() || owner.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .context("the server did not start within 60 s")??;
            let Some(line) = line else {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                anyhow::bail!("`swe-env serve` exited before listening:\n{log}");
            };
            if let Some(rest) = line.strip_prefix("listening tcp ") {
                addr = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("owner ") {
                owner = Some(rest.trim().to_owned());
            }
        }
        Ok(Self {
            child,
            pid,
            dir: dir.to_owned(),
            addr: addr.unwrap_or_default(),
            owner: owner.unwrap_or_default(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// `Err` with the end of its log when the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let mut tail: Vec<&str> = log.lines().rev().take(20).collect();
            tail.reverse();
            anyhow::bail!(
                "`swe-env serve` exited during the bench ({status}); the end of its log:\n{}",
                tail.join("\n")
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits for the drain (killed after 60 s).
    pub async fn stop(mut self) {
        if let Some(pid) = self.pid {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
            tracing::warn!(
                addr = %self.addr,
                "a server did not drain within 60 s and was killed; `swe-env gc` removes what it left"
            );
        }
    }
}

impl Drop for ServeChild {
    /// Interrupted (the bench's future dropped): the server is asked to drain, which removes its containers,
    /// rather than killed, which would leave them to `swe-env gc`.
    fn drop(&mut self) {
        if let (Some(pid), Ok(None)) = (self.pid, self.child.try_wait()) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
}
