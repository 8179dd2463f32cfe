//! [`UnisolatedHostSandbox`]: a [`Sandbox`] over a host directory and a host `bash`, for fast tool tests.
//!
//! **It is not a sandbox in any security sense**: commands run on the host, as the current user, with full access
//! to everything that user can reach. Use it only for trusted commands (tests), never for model output.
//!
//! Protocol: one long-lived `bash --noprofile --norc` with stdin/stdout pipes (stderr merged into stdout). Each
//! command is passed through a quoted heredoc into a variable and `eval`ed with stdin from `/dev/null`, so syntax
//! errors cannot kill the shell and the command cannot eat the protocol; then the shell prints a line
//! `\n<sentinel> <$?> <$PWD>` with a sentinel unique to the command. On timeout every descendant process of the
//! shell is killed; if the shell itself does not report back within a grace period (a builtin busy loop, or it
//! redirected its own stdout), its whole process group is killed and a fresh shell started in the root directory.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Mutex;

use crate::api::{BoundedRead, CommandOutput, PathKind, Sandbox};
use crate::capture::{CappedOutput, ScanEvent, SentinelScanner};
use crate::error::SandboxError;

/// Default cap on one command's kept output: 64 KiB (first and last 32 KiB).
pub const DEFAULT_HOST_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Default time the shell gets to report back after a timed-out command's processes were killed.
pub const DEFAULT_HOST_KILL_GRACE: Duration = Duration::from_secs(2);

/// Knobs of [`UnisolatedHostSandbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSandboxConfig {
    /// Output kept per command; beyond it the middle is dropped and marked (default 64 KiB).
    pub max_output_bytes: usize,
    /// Grace after killing a timed-out command before the shell is declared wedged and restarted (default 2 s).
    pub kill_grace: Duration,
}

impl Default for HostSandboxConfig {
    fn default() -> Self {
        Self {
            max_output_bytes: DEFAULT_HOST_MAX_OUTPUT_BYTES,
            kill_grace: DEFAULT_HOST_KILL_GRACE,
        }
    }
}

/// A host-local, **unisolated** [`Sandbox`]: a persistent host `bash` rooted at a directory. It runs commands
/// directly on this machine with this user's rights — for tests of the tools only, never for untrusted commands.
pub struct UnisolatedHostSandbox {
    root: PathBuf,
    config: HostSandboxConfig,
    shell: Mutex<Shell>,
    _temp_dir: Option<tempfile::TempDir>,
}

struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pid: u32,
    cwd: String,
    n_commands: u64,
}

fn sandbox_error(what: &str, error: impl std::fmt::Display) -> SandboxError {
    SandboxError::Host {
        detail: format!("{what}: {error}"),
    }
}

impl UnisolatedHostSandbox {
    /// Starts a shell in `root` (which must exist).
    pub async fn start(root: &Path, config: HostSandboxConfig) -> Result<Self, SandboxError> {
        let root = tokio::fs::canonicalize(root).await.map_err(|error| {
            sandbox_error(&format!("cannot resolve root {}", root.display()), error)
        })?;
        let shell = Shell::spawn(&root).await?;
        Ok(Self {
            root,
            config,
            shell: Mutex::new(shell),
            _temp_dir: None,
        })
    }

    /// Starts a shell in a fresh temporary directory that is deleted when the sandbox is dropped.
    pub async fn start_in_temp_dir() -> Result<Self, SandboxError> {
        let temp_dir = tempfile::Builder::new()
            .prefix("swe-env-host-sandbox-")
            .tempdir()
            .map_err(|error| sandbox_error("cannot create a temporary directory", error))?;
        let mut sandbox = Self::start(temp_dir.path(), HostSandboxConfig::default()).await?;
        sandbox._temp_dir = Some(temp_dir);
        Ok(sandbox)
    }

    /// The root directory (canonical); the shell starts, and restarts, here.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for UnisolatedHostSandbox {
    fn drop(&mut self) {
        kill_process_group(self.shell.get_mut().pid);
    }
}

impl Shell {
    async fn spawn(root: &Path) -> Result<Self, SandboxError> {
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(root)
            .env("TERM", "dumb")
            .env("PAGER", "cat")
            .env("GIT_PAGER", "cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|error| sandbox_error("cannot start bash", error))?;
        let pid = child.id().ok_or_else(|| SandboxError::Host {
            detail: "bash exited right after starting".into(),
        })?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(SandboxError::Host {
                detail: "bash started without stdin/stdout pipes".into(),
            });
        };
        stdin
            .write_all(b"exec 2>&1\n")
            .await
            .map_err(|error| sandbox_error("cannot set up bash", error))?;
        let cwd = root.to_string_lossy().into_owned();
        Ok(Self {
            child,
            stdin,
            stdout,
            pid,
            cwd,
            n_commands: 0,
        })
    }
}

/// How reading one command's output ended.
enum Ending {
    /// The sentinel arrived: exit status and working directory.
    Done { exit_code: i32, cwd: String },
    /// The deadline passed first.
    Deadline,
    /// The shell closed its stdout (exited).
    ShellGone,
}

/// Reads the shell's stdout through `scanner` into `sink` until the sentinel line or `deadline`.
async fn read_until_marker(
    stdout: &mut ChildStdout,
    scanner: &mut SentinelScanner,
    sink: &mut CappedOutput,
    deadline: tokio::time::Instant,
) -> Result<Ending, SandboxError> {
    let mut buffer = [0_u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stdout.read(&mut buffer)).await {
            Err(_) => return Ok(Ending::Deadline),
            Ok(Ok(0)) => {
                sink.push(&scanner.take_pending());
                return Ok(Ending::ShellGone);
            }
            Ok(Ok(n)) => {
                if let ScanEvent::Done(trailer) = scanner.feed(&buffer[..n], sink) {
                    let trailer = String::from_utf8_lossy(&trailer).into_owned();
                    let (code, cwd) = trailer.split_once(' ').unwrap_or((trailer.as_str(), ""));
                    let exit_code = code
                        .parse()
                        .map_err(|error| sandbox_error("bad exit status from bash", error))?;
                    return Ok(Ending::Done {
                        exit_code,
                        cwd: cwd.to_owned(),
                    });
                }
            }
            Ok(Err(error)) => return Err(sandbox_error("cannot read from bash", error)),
        }
    }
}

/// Parent pid of every process, from `/proc/<pid>/stat`.
fn parent_pids() -> HashMap<u32, u32> {
    let mut parents = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Format: `pid (comm) state ppid …`; comm may contain spaces and parentheses.
        let Some(after_comm) = stat.rfind(')').map(|index| &stat[index + 1..]) else {
            continue;
        };
        if let Some(ppid) = after_comm
            .split_whitespace()
            .nth(1)
            .and_then(|field| field.parse().ok())
        {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// Every descendant of `ancestor` (not itself).
fn descendants(ancestor: u32) -> Vec<u32> {
    let parents = parent_pids();
    let mut found = vec![ancestor];
    let mut index = 0;
    while index < found.len() {
        let current = found[index];
        found.extend(
            parents
                .iter()
                .filter(|(_, &ppid)| ppid == current)
                .map(|(&pid, _)| pid),
        );
        index += 1;
    }
    found.remove(0);
    found
}

fn kill_signal(targets: &[String]) {
    if targets.is_empty() {
        return;
    }
    // Processes may exit in between; failures are expected and ignored.
    let _ = std::process::Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .args(targets)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Kills the process tree under `shell_pid`, a few rounds to catch processes forked meanwhile.
fn kill_descendants(shell_pid: u32) {
    for _ in 0..3 {
        let pids: Vec<String> = descendants(shell_pid).iter().map(u32::to_string).collect();
        if pids.is_empty() {
            return;
        }
        kill_signal(&pids);
    }
}

/// Kills the whole process group led by `leader` (the shell and whatever it left behind).
fn kill_process_group(leader: u32) {
    kill_descendants(leader);
    kill_signal(&[format!("-{leader}")]);
}

fn unique_token() -> String {
    // RandomState is seeded randomly per process and per instance; mixing in the pid and clock is belt and braces.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.write_u128(now.as_nanos());
    format!("{:016x}", hasher.finish())
}

impl UnisolatedHostSandbox {
    async fn restart(&self, shell: &mut Shell) -> Result<(), SandboxError> {
        kill_process_group(shell.pid);
        let _ = shell.child.wait().await;
        *shell = Shell::spawn(&self.root).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sandbox for UnisolatedHostSandbox {
    async fn run(&self, command: &str, timeout: Duration) -> Result<CommandOutput, SandboxError> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut shell = self.shell.lock().await;
        shell.n_commands += 1;
        let token = format!("{}_{}", unique_token(), shell.n_commands);
        let marker = format!("\n__swe_env_done_{token} ");
        let script = format!(
            "builtin read -r -d '' __swe_env_cmd <<'__swe_env_eof_{token}'\n{command}\n__swe_env_eof_{token}\n\
             builtin eval \"$__swe_env_cmd\" < /dev/null\n\
             builtin printf '\\n__swe_env_done_{token} %d %s\\n' \"$?\" \"$PWD\"\n"
        );
        let mut restarted = false;
        if shell.stdin.write_all(script.as_bytes()).await.is_err()
            || shell.stdin.flush().await.is_err()
        {
            // The shell died since the last command; start a new one and run the command there.
            self.restart(&mut shell).await?;
            restarted = true;
            shell
                .stdin
                .write_all(script.as_bytes())
                .await
                .map_err(|error| sandbox_error("cannot write to bash", error))?;
        }
        let mut sink = CappedOutput::new(self.config.max_output_bytes);
        let mut scanner = SentinelScanner::new(marker.as_bytes(), b'\n');
        let shell = &mut *shell;
        let mut ending =
            read_until_marker(&mut shell.stdout, &mut scanner, &mut sink, deadline).await?;
        let mut timed_out = false;
        if matches!(ending, Ending::Deadline) {
            timed_out = true;
            kill_descendants(shell.pid);
            let grace_deadline = tokio::time::Instant::now() + self.config.kill_grace;
            ending = read_until_marker(&mut shell.stdout, &mut scanner, &mut sink, grace_deadline)
                .await?;
            if matches!(ending, Ending::Deadline) {
                sink.push(&scanner.take_pending());
            }
        }
        let exit_code = match ending {
            Ending::Done { exit_code, cwd } => {
                shell.cwd = cwd;
                (!timed_out).then_some(exit_code)
            }
            Ending::Deadline | Ending::ShellGone => {
                self.restart(shell).await?;
                restarted = true;
                None
            }
        };
        let truncated = sink.is_truncated();
        let output = sink.into_bytes();
        Ok(CommandOutput {
            output,
            exit_code,
            timed_out,
            truncated,
            restarted,
            duration: started.elapsed(),
        })
    }

    async fn cwd(&self) -> Result<String, SandboxError> {
        Ok(self.shell.lock().await.cwd.clone())
    }

    async fn path_kind(&self, path: &str) -> Result<PathKind, SandboxError> {
        match tokio::fs::metadata(path).await {
            Ok(metadata) if metadata.is_file() => Ok(PathKind::File),
            Ok(metadata) if metadata.is_dir() => Ok(PathKind::Directory),
            Ok(_) => Ok(PathKind::Other),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                match tokio::fs::symlink_metadata(path).await {
                    Ok(_) => Ok(PathKind::Other),
                    Err(_) => Ok(PathKind::Missing),
                }
            }
            Err(error) => Err(sandbox_error(&format!("cannot inspect {path}"), error)),
        }
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        tokio::fs::read(path)
            .await
            .map_err(|error| sandbox_error(&format!("cannot read {path}"), error))
    }

    async fn read_file_at_most(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<BoundedRead, SandboxError> {
        use tokio::io::AsyncReadExt;
        let failed = |error| sandbox_error(&format!("cannot read {path}"), error);
        let file = tokio::fs::File::open(path).await.map_err(failed)?;
        let size = file.metadata().await.map_err(failed)?.len();
        let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX);
        if size > limit {
            return Ok(BoundedRead::TooLarge { size });
        }
        let mut bytes = Vec::new();
        file.take(limit.saturating_add(1))
            .read_to_end(&mut bytes)
            .await
            .map_err(failed)?;
        if bytes.len() > max_bytes {
            return Ok(BoundedRead::TooLarge {
                size: size.max(bytes.len() as u64),
            });
        }
        Ok(BoundedRead::Whole(bytes))
    }

    async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), SandboxError> {
        use std::os::unix::fs::PermissionsExt;
        let existed = tokio::fs::metadata(path).await.is_ok();
        tokio::fs::write(path, bytes)
            .await
            .map_err(|error| sandbox_error(&format!("cannot write {path}"), error))?;
        if !existed {
            tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
                .await
                .map_err(|error| sandbox_error(&format!("cannot set the mode of {path}"), error))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn text(output: &CommandOutput) -> String {
        String::from_utf8_lossy(&output.output).into_owned()
    }

    #[tokio::test]
    async fn commands_share_one_shell() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        assert_eq!(sandbox.cwd().await.unwrap(), root);
        let out = sandbox
            .run("mkdir -p 'a b' && cd 'a b'; f() { echo fn; }", TIMEOUT)
            .await
            .unwrap();
        assert_eq!((out.exit_code, out.restarted), (Some(0), false));
        assert_eq!(sandbox.cwd().await.unwrap(), format!("{root}/a b"));
        assert_eq!(text(&sandbox.run("f", TIMEOUT).await.unwrap()), "fn\n");
        // No trailing newline is added or lost; stdin is empty; syntax errors do not kill the shell.
        assert_eq!(text(&sandbox.run("printf x", TIMEOUT).await.unwrap()), "x");
        assert_eq!(
            text(&sandbox.run("cat; echo done", TIMEOUT).await.unwrap()),
            "done\n"
        );
        let bad = sandbox.run("if then fi", TIMEOUT).await.unwrap();
        assert_eq!(bad.exit_code, Some(2));
        assert!(text(&bad).contains("syntax error"), "{}", text(&bad));
        assert!(!bad.restarted);
        // Heredoc-looking content and quotes pass through untouched.
        let quoted = sandbox
            .run("cat <<'EOF'\n$HOME '\"\\\nEOF", TIMEOUT)
            .await
            .unwrap();
        assert_eq!(text(&quoted), "$HOME '\"\\\n");
    }

    #[tokio::test]
    async fn timeout_kills_the_process_tree() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let out = sandbox
            .run(
                "bash -c 'sleep 300 & echo $! > child.pid; wait' ; echo unreachable",
                Duration::from_millis(500),
            )
            .await
            .unwrap();
        assert!(out.timed_out && !out.restarted);
        assert_eq!(out.exit_code, None);
        let pid = std::fs::read_to_string(sandbox.root().join("child.pid")).unwrap();
        // Killed processes may linger as zombies until reaped, so "gone" means no /proc entry or state Z.
        let probe = format!(
            "s=$(cut -d' ' -f3 /proc/{}/stat 2>/dev/null); if [ -z \"$s\" ] || [ \"$s\" = Z ]; then echo gone; else \
             echo alive; fi",
            pid.trim()
        );
        // SIGKILL is delivered at once but a loaded machine may take a moment to tear the process down: poll.
        let mut state = String::new();
        for _ in 0..50 {
            state = text(&sandbox.run(&probe, TIMEOUT).await.unwrap());
            if state == "gone\n" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            state, "gone\n",
            "the timed-out command's child survived 5 s"
        );
    }

    #[tokio::test]
    async fn wedged_shell_is_restarted() {
        let config = HostSandboxConfig {
            kill_grace: Duration::from_millis(300),
            ..HostSandboxConfig::default()
        };
        let root = tempfile::tempdir().unwrap();
        let sandbox = UnisolatedHostSandbox::start(root.path(), config)
            .await
            .unwrap();
        sandbox.run("cd /tmp", TIMEOUT).await.unwrap();
        // A builtin-only busy loop has no child process to kill: the shell itself must go.
        let out = sandbox
            .run("while :; do :; done", Duration::from_millis(300))
            .await
            .unwrap();
        assert!(out.timed_out && out.restarted);
        assert_eq!(
            sandbox.cwd().await.unwrap(),
            sandbox.root().to_str().unwrap()
        );
        let after = sandbox.run("echo ok; pwd", TIMEOUT).await.unwrap();
        assert_eq!(text(&after), format!("ok\n{}\n", sandbox.root().display()));
    }

    #[tokio::test]
    async fn files() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        let file = format!("{root}/f.sh");
        assert_eq!(sandbox.path_kind(&file).await.unwrap(), PathKind::Missing);
        sandbox.write_file(&file, b"\x00\xff").await.unwrap();
        assert_eq!(sandbox.path_kind(&file).await.unwrap(), PathKind::File);
        assert_eq!(sandbox.path_kind(&root).await.unwrap(), PathKind::Directory);
        assert_eq!(sandbox.read_file(&file).await.unwrap(), b"\x00\xff");
        sandbox
            .run("chmod 700 f.sh && ln -s nowhere dangling", TIMEOUT)
            .await
            .unwrap();
        sandbox.write_file(&file, b"new").await.unwrap();
        assert_eq!(
            text(&sandbox.run("stat -c %a f.sh", TIMEOUT).await.unwrap()),
            "700\n"
        );
        assert_eq!(
            sandbox
                .path_kind(&format!("{root}/dangling"))
                .await
                .unwrap(),
            PathKind::Other
        );
        assert!(sandbox.read_file(&format!("{root}/none")).await.is_err());
    }
}
