//! Running a parsed [`ToolCall`] against a [`Sandbox`]: the knobs ([`ToolConfig`]), the outcome
//! ([`ToolResult`]), and the dispatch ([`run_tool`]). Tool-level failures are data in the result; `Err` is only
//! the sandbox's infrastructure failing.

use std::sync::Arc;
use std::time::Duration;

use crate::call::{ToolCall, ToolName};
use crate::submit::UntrackedFile;
use swe_env_sandbox::{Sandbox, SandboxError};

/// Default per-command timeout of the bash tool (CWM's session timeout).
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(120);
/// Default number of unchanged lines shown before and after an edit.
pub const DEFAULT_EDIT_CONTEXT_LINES: usize = 4;
/// Default largest submission (a patch) the submit tool accepts: 4 MiB.
pub const DEFAULT_MAX_SUBMISSION_BYTES: usize = 4 << 20;
/// Default largest file edit reads and edit/create write: 8 MiB (edit holds the whole file in memory a few times).
pub const DEFAULT_MAX_FILE_BYTES: usize = 8 << 20;

/// What the submit tool submits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SubmitKind {
    /// A patch (default): a file in `git diff` format, or without a path the repository's changes.
    #[default]
    Patch,
    /// Any file, its content as is (a generated test script); a path is required.
    File,
}

/// Knobs of the tools for one episode. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolConfig {
    /// Per-command timeout of `bash` (default [`DEFAULT_CMD_TIMEOUT`], 120 s).
    pub cmd_timeout: Duration,
    /// Unchanged lines shown on each side of an edit (default [`DEFAULT_EDIT_CONTEXT_LINES`], 4).
    pub edit_context_lines: usize,
    /// Append `[exit code: N]` to bash output (default false, as in CWM, whose observations omit it).
    pub show_exit_code: bool,
    /// Where `submit` without a path computes the patch from; `None` (default) makes a path required.
    pub submission_repo: Option<SubmissionRepo>,
    /// Largest accepted submission in bytes, for a patch file and a computed patch alike (default
    /// [`DEFAULT_MAX_SUBMISSION_BYTES`], 4 MiB). A larger one is a [`ToolErrorKind::TooLarge`] tool error.
    pub max_submission_bytes: usize,
    /// Largest file edit reads and edit/create write, in bytes (default [`DEFAULT_MAX_FILE_BYTES`], 8 MiB). A
    /// larger one is a [`ToolErrorKind::TooLarge`] tool error; nothing beyond the limit is held in memory.
    pub max_file_bytes: usize,
    /// What `submit` takes (default [`SubmitKind::Patch`]).
    pub submit_kind: SubmitKind,
}

impl Default for ToolConfig {
    fn default() -> Self {
        Self {
            cmd_timeout: DEFAULT_CMD_TIMEOUT,
            edit_context_lines: DEFAULT_EDIT_CONTEXT_LINES,
            show_exit_code: false,
            submission_repo: None,
            max_submission_bytes: DEFAULT_MAX_SUBMISSION_BYTES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            submit_kind: SubmitKind::Patch,
        }
    }
}

/// The repository a path-less `submit` diffs (see [`crate::submit::compute_submission_excluding`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRepo {
    /// Absolute path of the repository inside the sandbox (e.g. `/testbed`).
    pub repo_dir: String,
    /// The commit the patch is taken against (the task's base commit).
    pub base_commit: String,
    /// Untracked, non-ignored files the repository already had when the episode started, with their modes and blob
    /// hashes (from [`crate::submit::record_untracked`]), kept here on the host. A submission leaves out each one
    /// that is unchanged; one the agent modified stays in (see `compute_submission_excluding`). Empty: nothing is
    /// left out.
    pub preexisting_untracked: Arc<[UntrackedFile]>,
}

impl SubmissionRepo {
    /// `repo_dir` diffed against `base_commit`, with no pre-existing untracked files recorded.
    pub fn new(repo_dir: impl Into<String>, base_commit: impl Into<String>) -> Self {
        Self {
            repo_dir: repo_dir.into(),
            base_commit: base_commit.into(),
            preexisting_untracked: Arc::from(Vec::new()),
        }
    }
}

/// Why a tool did not do what was asked. Each kind has its own message in [`ToolResult::text`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolErrorKind {
    /// bash: the command hit the per-command timeout and was interrupted.
    TimedOut,
    /// bash: the command contains a NUL byte, which bash cannot receive; nothing ran.
    NulInCommand,
    /// bash: the shell died or was wedged and had to be restarted (state reset).
    SessionRestarted,
    /// edit: the SEARCH block has no lines.
    EmptySearch,
    /// edit/submit: nothing exists at the path.
    PathMissing,
    /// edit/create/submit: the path is a directory.
    PathIsDirectory,
    /// edit/submit: the path is neither a regular file nor a directory.
    NotARegularFile,
    /// edit: the file is not valid UTF-8; submit of a file (`SubmitKind::File`): the file is not UTF-8 text.
    NotUtf8,
    /// edit/submit: the file exists but could not be read.
    Unreadable,
    /// edit/create: writing the file failed.
    WriteFailed,
    /// edit: the SEARCH lines do not occur.
    SearchNotFound,
    /// edit: the SEARCH lines occur more than once.
    SeveralOccurrences,
    /// create: the path already exists.
    PathExists,
    /// create: the parent directory is missing (or not a directory).
    ParentMissing,
    /// submit: the patch is empty.
    EmptyPatch,
    /// submit: the file is not a diff.
    NotADiff,
    /// submit: no path given and no repository configured to compute the patch from.
    NoPatchPath,
    /// submit: computing the patch with git failed.
    GitFailed,
    /// edit/create/submit: the file, the new content or the submission is over its size limit
    /// ([`ToolConfig::max_file_bytes`], [`ToolConfig::max_submission_bytes`]).
    TooLarge,
}

/// The outcome of one tool call: the text the model sees plus structured fields for trajectories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The tool that ran.
    pub tool: ToolName,
    /// `None` on success, else why the tool failed (the text explains it to the model).
    pub error: Option<ToolErrorKind>,
    /// The observation text (unwrapped; see [`crate::render_observation`]).
    pub text: String,
    /// bash: the command's exit status (`None` if it never finished); other tools: `None`.
    pub exit_code: Option<i32>,
    /// bash: the timeout fired.
    pub timed_out: bool,
    /// bash: the sandbox cut the output.
    pub truncated: bool,
    /// bash: the shell was restarted.
    pub restarted: bool,
    /// Wall-clock time in the sandbox (bash: the command; others: zero).
    pub duration: Duration,
    /// submit: the accepted patch bytes (the caller keeps the last good one).
    pub submission: Option<Vec<u8>>,
}

impl ToolResult {
    /// A successful non-bash result with `text`.
    pub(crate) fn ok(tool: ToolName, text: String) -> Self {
        Self {
            tool,
            error: None,
            text,
            exit_code: None,
            timed_out: false,
            truncated: false,
            restarted: false,
            duration: Duration::ZERO,
            submission: None,
        }
    }

    /// A failed result of `kind` with `text` (nothing ran: no exit code, no duration).
    pub(crate) fn failed(tool: ToolName, kind: ToolErrorKind, text: String) -> Self {
        Self {
            error: Some(kind),
            ..Self::ok(tool, text)
        }
    }

    /// True when the tool did what was asked (a bash command with a non-zero exit still counts as success).
    pub fn is_success(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs `call` in `sandbox`. Tool failures come back as `Ok` with [`ToolResult::error`] set; `Err` means the
/// sandbox itself failed (container gone, engine down) and the episode cannot continue normally.
pub async fn run_tool(
    sandbox: &dyn Sandbox,
    call: &ToolCall,
    config: &ToolConfig,
) -> Result<ToolResult, SandboxError> {
    match call {
        ToolCall::Bash { command } => crate::bash::run_bash(sandbox, command, config).await,
        ToolCall::Edit {
            path,
            search,
            replace,
        } => crate::edit::run_edit(sandbox, path, search, replace, config).await,
        ToolCall::Create { path, content } => {
            crate::create::run_create(sandbox, path, content, config).await
        }
        ToolCall::Submit { path } => {
            crate::submit::run_submit(sandbox, path.as_deref(), config).await
        }
    }
}

/// Resolves a model-given path against the shell's current directory (absolute paths pass through).
pub(crate) fn resolve_path(cwd: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else if cwd.ends_with('/') {
        format!("{cwd}{path}")
    } else {
        format!("{cwd}/{path}")
    }
}

/// The directory part of an absolute path (`/a/b` → `/a`, `/a` → `/`).
pub(crate) fn parent_dir(abs_path: &str) -> &str {
    match abs_path.trim_end_matches('/').rfind('/') {
        Some(0) | None => "/",
        Some(index) => &abs_path[..index],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(resolve_path("/repo", "a/b.py"), "/repo/a/b.py");
        assert_eq!(resolve_path("/", "b.py"), "/b.py");
        assert_eq!(resolve_path("/repo", "/etc/x"), "/etc/x");
        assert_eq!(parent_dir("/repo/a/b.py"), "/repo/a");
        assert_eq!(parent_dir("/b.py"), "/");
    }
}
