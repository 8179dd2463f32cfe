//! The submit tool (a patch file becomes the episode's submission) and [`compute_submission_excluding`], which
//! diffs the repository against the base commit for agents that do not write patch files themselves, leaving out
//! the untracked files the repository already had at episode start ([`record_untracked`]) while they are unchanged.

use std::time::Duration;

use crate::call::ToolName;
use crate::tool::{resolve_path, SubmitKind, ToolConfig, ToolErrorKind, ToolResult};
use swe_env_sandbox::{BoundedRead, PathKind, Sandbox, SandboxError};

/// Time allowed for `git add -A && git diff` in [`compute_submission`].
pub const SUBMISSION_TIMEOUT: Duration = Duration::from_secs(120);

/// Why [`compute_submission`] produced no patch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmissionError {
    /// The sandbox failed (infrastructure).
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// git did not finish within [`SUBMISSION_TIMEOUT`].
    #[error("computing the patch of {repo_dir} timed out")]
    TimedOut {
        /// The repository.
        repo_dir: String,
    },
    /// git exited non-zero (not a repository, unknown commit, …).
    #[error("computing the patch of {repo_dir} failed (exit code {exit_code:?}): {output}")]
    GitFailed {
        /// The repository.
        repo_dir: String,
        /// git's exit status, if it finished.
        exit_code: Option<i32>,
        /// What git printed.
        output: String,
    },
    /// The patch is over the size limit (see [`compute_submission_at_most`]); it was not read into memory.
    #[error("the patch of {repo_dir} is {size} bytes, over the {max_bytes}-byte limit")]
    TooLarge {
        /// The repository.
        repo_dir: String,
        /// The patch's size in bytes.
        size: u64,
        /// The limit.
        max_bytes: usize,
    },
}

use crate::quote::shell_quote;

/// A file that was untracked (and not ignored) in the repository at episode start: a path not in the base commit
/// that `git add -A` picks up, such as a `build/` tree left by `pip install .` that the image's `.gitignore` does
/// not cover. Recorded by [`record_untracked`] and kept on the host ([`crate::SubmissionRepo`]), never only in the
/// sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UntrackedFile {
    /// Path relative to the repository, as git's `-z` output gives it (any bytes: spaces, quotes, newlines,
    /// non-UTF-8).
    pub path: Vec<u8>,
    /// git's file mode (`100644`, `100755`, `120000` for a symbolic link).
    pub mode: String,
    /// git's blob hash of the content (full length).
    pub blob: String,
}

/// Shell lines (inside a subshell already in the repository) that make `$swe_env_dir` a new temporary directory
/// and stage everything into a copy of the repository's index there (`$swe_env_dir/index`), so the agent's own
/// index is never touched. `GIT_INDEX_FILE` is exported for the rest of the subshell only.
const STAGE_IN_TEMP_INDEX: &str = "swe_env_index=\"$(git rev-parse --git-path index)\" || exit\n\
     swe_env_dir=\"$(mktemp -d)\" || exit\n\
     export GIT_INDEX_FILE=\"$swe_env_dir/index\"\n\
     if [ -f \"$swe_env_index\" ]; then\n\
       cp -- \"$swe_env_index\" \"$GIT_INDEX_FILE\" || { rm -rf -- \"$swe_env_dir\"; exit 1; }\n\
     fi\n\
     git add -A || { swe_env_status=$?; rm -rf -- \"$swe_env_dir\"; exit \"$swe_env_status\"; }\n";

/// Shell: after a failed command, remove the temporary directory and exit with that command's status.
const CLEAN_UP_AND_FAIL: &str =
    "{ swe_env_status=$?; rm -rf -- \"$swe_env_dir\"; exit \"$swe_env_status\"; }";

/// `git diff --cached --raw` of the files added since `base` (new paths), NUL-separated, into `$swe_env_dir/added`.
fn added_files_command(base: &str) -> String {
    format!(
        "git diff --cached --raw -z --no-abbrev --no-renames --diff-filter=A {} -- > \"$swe_env_dir/added\"",
        shell_quote(base)
    )
}

/// The binary patch of the temporary index against `base`, into `$swe_env_dir/patch`.
fn patch_command(base: &str) -> String {
    format!(
        "git -c core.quotepath=off diff --cached --binary --no-color --no-ext-diff {} -- > \"$swe_env_dir/patch\"",
        shell_quote(base)
    )
}

/// Runs `body` in a subshell in `repo_dir`; the last line printed must be the temporary directory.
async fn run_in_repo(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    body: &str,
) -> Result<String, SubmissionError> {
    let command = format!(
        "( builtin cd -- {} || exit 1\n{body}\n)",
        shell_quote(repo_dir)
    );
    let output = sandbox.run(&command, SUBMISSION_TIMEOUT).await?;
    let printed = String::from_utf8_lossy(&output.output).into_owned();
    if output.timed_out {
        return Err(SubmissionError::TimedOut {
            repo_dir: repo_dir.to_owned(),
        });
    }
    let dir = printed.lines().last().unwrap_or_default().trim().to_owned();
    if output.exit_code != Some(0) || !dir.starts_with('/') {
        return Err(SubmissionError::GitFailed {
            repo_dir: repo_dir.to_owned(),
            exit_code: output.exit_code,
            output: printed,
        });
    }
    Ok(dir)
}

/// What [`record_untracked`]'s script prints in place of its temporary directory when nothing was added.
const NOTHING_ADDED: &str = "/dev/null";

/// Parses `git diff --raw -z --no-renames` output (`:old_mode new_mode old_hash new_hash status NUL path NUL`…).
fn parse_raw_added(raw: &[u8]) -> Vec<UntrackedFile> {
    let mut files = Vec::new();
    let mut fields = raw.split(|byte| *byte == 0);
    while let (Some(meta), Some(path)) = (fields.next(), fields.next()) {
        let meta = String::from_utf8_lossy(meta);
        let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
        if let [_, new_mode, _, new_hash, _status] = parts[..] {
            files.push(UntrackedFile {
                path: path.to_vec(),
                mode: new_mode.to_owned(),
                blob: new_hash.to_owned(),
            });
        }
    }
    files
}

/// Records the repository's untracked, non-ignored files with their modes and blob hashes: every path `git add -A`
/// would add that `base_commit` does not have. Stages into a temporary copy of the index, so the repository's
/// index is untouched (the blobs do land in its object store, as with any `git add`).
pub async fn record_untracked(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    base_commit: &str,
) -> Result<Vec<UntrackedFile>, SubmissionError> {
    // Most repositories have no untracked file: then the directory is removed in the same command and the
    // script prints `/dev/null` (which `mktemp -d` never returns), sparing a file read (a one-shot exec through
    // the engine, the dearest part of a cold episode start after the container itself).
    let body = format!(
        "{STAGE_IN_TEMP_INDEX}{added} || {CLEAN_UP_AND_FAIL}\n\
         if [ -s \"$swe_env_dir/added\" ]; then builtin printf '%s\\n' \"$swe_env_dir\"; \
         else rm -rf -- \"$swe_env_dir\"; builtin printf '%s\\n' {NOTHING_ADDED}; fi",
        added = added_files_command(base_commit),
    );
    let dir = run_in_repo(sandbox, repo_dir, &body).await?;
    if dir == NOTHING_ADDED {
        return Ok(Vec::new());
    }
    let raw = sandbox.read_file(&format!("{dir}/added")).await;
    remove_dir(sandbox, &dir).await?;
    Ok(parse_raw_added(&raw?))
}

async fn remove_dir(sandbox: &dyn Sandbox, dir: &str) -> Result<(), SandboxError> {
    sandbox
        .run(
            &format!("rm -rf -- {}", shell_quote(dir)),
            SUBMISSION_TIMEOUT,
        )
        .await?;
    Ok(())
}

/// Stages everything in `repo_dir` and returns `git diff --cached --binary <base_commit>` (may be empty when
/// nothing changed). Same as [`compute_submission_excluding`] with nothing to exclude.
pub async fn compute_submission(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    base_commit: &str,
) -> Result<Vec<u8>, SubmissionError> {
    compute_submission_excluding(sandbox, repo_dir, base_commit, &[]).await
}

/// Stages everything in `repo_dir` and returns `git diff --cached --binary <base_commit>` (may be empty when
/// nothing changed), leaving out each file of `preexisting` (see [`record_untracked`]) whose path, mode and blob
/// are unchanged: the episode did not touch it, so it is not part of the answer.
///
/// A pre-existing untracked file the agent modified (content or mode) stays in, as a new file with its whole
/// current content, since the base commit does not have it. Grading in a fresh container of the same image finds
/// that file already there: `git apply -v` refuses the patch, the apply chain cleans the tree (`git clean -fd`
/// removes every untracked file) and `git apply -v --reject` then creates the file with the agent's content. A
/// pre-existing untracked file the agent deleted cannot be expressed in a patch against the base commit (which
/// never had it), so it simply does not appear; the grading container still has it.
///
/// Staging happens in a temporary copy of the index, so the repository's index is left as it was found. Runs in
/// subshells of the persistent shell, so the shell's directory is untouched; the diff goes through a temporary
/// file in the sandbox so the shell's output cap cannot cut it, and the excluded paths go to git NUL-separated
/// through a file (`--pathspec-from-file`, git >= 2.26), so any number of any bytes is fine.
pub async fn compute_submission_excluding(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    base_commit: &str,
    preexisting: &[UntrackedFile],
) -> Result<Vec<u8>, SubmissionError> {
    compute_submission_at_most(sandbox, repo_dir, base_commit, preexisting, usize::MAX).await
}

/// [`compute_submission_excluding`] with a size limit: a patch over `max_bytes` is
/// [`SubmissionError::TooLarge`] and is never read into memory (the sandbox may apply its own lower limit).
pub async fn compute_submission_at_most(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    base_commit: &str,
    preexisting: &[UntrackedFile],
    max_bytes: usize,
) -> Result<Vec<u8>, SubmissionError> {
    let added = if preexisting.is_empty() {
        String::new()
    } else {
        format!(
            "{} || {CLEAN_UP_AND_FAIL}\n",
            added_files_command(base_commit)
        )
    };
    let body = format!(
        "{STAGE_IN_TEMP_INDEX}{added}{patch} || {CLEAN_UP_AND_FAIL}\nbuiltin printf '%s\\n' \"$swe_env_dir\"",
        patch = patch_command(base_commit),
    );
    let dir = run_in_repo(sandbox, repo_dir, &body).await?;
    let result = finish_submission(sandbox, repo_dir, base_commit, preexisting, &dir).await;
    let result = match result {
        Ok(()) => read_patch(sandbox, repo_dir, &dir, max_bytes).await,
        Err(error) => Err(error),
    };
    let removed = remove_dir(sandbox, &dir).await;
    let patch = result?;
    removed?;
    Ok(patch)
}

/// Reads `$dir/patch` when it has at most `max_bytes` bytes.
async fn read_patch(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    dir: &str,
    max_bytes: usize,
) -> Result<Vec<u8>, SubmissionError> {
    match sandbox
        .read_file_at_most(&format!("{dir}/patch"), max_bytes)
        .await?
    {
        BoundedRead::Whole(patch) => Ok(patch),
        BoundedRead::TooLarge { size } => Err(SubmissionError::TooLarge {
            repo_dir: repo_dir.to_owned(),
            size,
            max_bytes,
        }),
    }
}

/// The part of [`compute_submission_excluding`] after the first staging, in the temporary directory `dir`: leaves
/// `$dir/patch` holding the final patch.
async fn finish_submission(
    sandbox: &dyn Sandbox,
    repo_dir: &str,
    base_commit: &str,
    preexisting: &[UntrackedFile],
    dir: &str,
) -> Result<(), SubmissionError> {
    if preexisting.is_empty() {
        return Ok(());
    }
    let before: std::collections::HashSet<&UntrackedFile> = preexisting.iter().collect();
    let added = parse_raw_added(&sandbox.read_file(&format!("{dir}/added")).await?);
    let mut unchanged = Vec::new();
    for file in added.iter().filter(|file| before.contains(file)) {
        unchanged.extend_from_slice(&file.path);
        unchanged.push(0);
    }
    if unchanged.is_empty() {
        return Ok(());
    }
    sandbox
        .write_file(&format!("{dir}/unchanged"), &unchanged)
        .await?;
    let body = format!(
        "swe_env_dir={dir}\nexport GIT_INDEX_FILE=\"$swe_env_dir/index\"\n\
         git --literal-pathspecs rm -q --cached -f --ignore-unmatch --pathspec-from-file=\"$swe_env_dir/unchanged\" \
         --pathspec-file-nul || exit\n{patch} || exit\nbuiltin printf '%s\\n' \"$swe_env_dir\"",
        dir = shell_quote(dir),
        patch = patch_command(base_commit),
    );
    run_in_repo(sandbox, repo_dir, &body).await?;
    Ok(())
}

/// True when `patch` has the structure of a diff: a `diff --git` header, or a `--- ` line directly followed by a
/// `+++ ` line with an `@@ ` hunk header somewhere after them.
pub fn looks_like_diff(patch: &[u8]) -> bool {
    let text = String::from_utf8_lossy(patch);
    let lines: Vec<&str> = text.lines().collect();
    if lines.iter().any(|line| line.starts_with("diff --git ")) {
        return true;
    }
    lines.windows(2).enumerate().any(|(index, pair)| {
        pair[0].starts_with("--- ")
            && pair[1].starts_with("+++ ")
            && lines[index + 2..]
                .iter()
                .any(|line| line.starts_with("@@ "))
    })
}

/// The tool error of a submission over the limit.
fn too_large_text(source: &str, size: u64, max_bytes: usize) -> String {
    format!(
        "Failed to submit {source}: the submission is {size} bytes, over the {max_bytes}-byte limit. A fix is \
         usually small: leave generated, binary or data files out of it (delete them, or list them in .gitignore), \
         then submit again."
    )
}

/// Runs the submit tool.
pub(crate) async fn run_submit(
    sandbox: &dyn Sandbox,
    path: Option<&str>,
    config: &ToolConfig,
) -> Result<ToolResult, SandboxError> {
    let failed = |kind, text| Ok(ToolResult::failed(ToolName::Submit, kind, text));
    let (patch, source) = match path {
        Some(path) => {
            let abs_path = resolve_path(&sandbox.cwd().await?, path);
            match sandbox.path_kind(&abs_path).await? {
                PathKind::File => {}
                PathKind::Missing => {
                    return failed(
                        ToolErrorKind::PathMissing,
                        format!(
                            "Failed to submit {path}: it does not exist (resolved to {abs_path})."
                        ),
                    )
                }
                PathKind::Directory => {
                    return failed(
                        ToolErrorKind::PathIsDirectory,
                        format!("Failed to submit {path}: it is a directory, not a patch file."),
                    )
                }
                PathKind::Other => {
                    return failed(
                        ToolErrorKind::NotARegularFile,
                        format!("Failed to submit {path}: it is not a regular file."),
                    )
                }
            }
            match sandbox
                .read_file_at_most(&abs_path, config.max_submission_bytes)
                .await
            {
                Ok(BoundedRead::Whole(bytes)) => (bytes, path.to_owned()),
                Ok(BoundedRead::TooLarge { size }) => {
                    return failed(
                        ToolErrorKind::TooLarge,
                        too_large_text(path, size, config.max_submission_bytes),
                    )
                }
                Err(error) => {
                    return failed(
                        ToolErrorKind::Unreadable,
                        format!("Failed to submit {path}: it could not be read ({}).", error),
                    )
                }
            }
        }
        None if config.submit_kind == SubmitKind::File => {
            return failed(
                ToolErrorKind::NoPatchPath,
                "Failed to submit: give the path of the file to submit, for example /testbed/test_issue.py."
                    .to_owned(),
            );
        }
        None => {
            let Some(repo) = &config.submission_repo else {
                return failed(
                    ToolErrorKind::NoPatchPath,
                    "Failed to submit: give the path of a patch file, for example after `git diff > /tmp/fix.patch`."
                        .to_owned(),
                );
            };
            let submission = compute_submission_at_most(
                sandbox,
                &repo.repo_dir,
                &repo.base_commit,
                &repo.preexisting_untracked,
                config.max_submission_bytes,
            );
            match submission.await {
                Ok(bytes) => (bytes, format!("the changes in {}", repo.repo_dir)),
                Err(SubmissionError::Sandbox(error)) => return Err(error),
                Err(SubmissionError::TooLarge { size, .. }) => {
                    return failed(
                        ToolErrorKind::TooLarge,
                        too_large_text(
                            &format!("the changes in {}", repo.repo_dir),
                            size,
                            config.max_submission_bytes,
                        ),
                    )
                }
                Err(error) => {
                    return failed(
                        ToolErrorKind::GitFailed,
                        format!("Failed to submit: {error}"),
                    )
                }
            }
        }
    };
    if config.submit_kind == SubmitKind::File {
        if String::from_utf8_lossy(&patch).trim().is_empty() {
            return failed(
                ToolErrorKind::EmptyPatch,
                format!("Failed to submit {source}: the file is empty."),
            );
        }
        // The submission is text from here on (records, prompts, the script written back): refuse rather than
        // change bytes.
        if std::str::from_utf8(&patch).is_err() {
            return failed(
                ToolErrorKind::NotUtf8,
                format!(
                    "Failed to submit {source}: it is not UTF-8 text. Save it as UTF-8 (non-ASCII characters as \
                     UTF-8, or as escapes such as \\xe9 in string literals) and submit again."
                ),
            );
        }
        let text = format!(
            "Your submission is now the file {source} ({} bytes). You may change it and submit again; the latest \
             submission counts.",
            patch.len()
        );
        return Ok(ToolResult {
            submission: Some(patch),
            ..ToolResult::ok(ToolName::Submit, text)
        });
    }
    if String::from_utf8_lossy(&patch).trim().is_empty() {
        return failed(
            ToolErrorKind::EmptyPatch,
            format!("Failed to submit {source}: the patch is empty."),
        );
    }
    if !looks_like_diff(&patch) {
        return failed(
            ToolErrorKind::NotADiff,
            format!(
                "Failed to submit {source}: it is not a diff (expected `diff --git` headers or `---`/`+++` file \
                 lines followed by `@@` hunks, as written by `git diff`)."
            ),
        );
    }
    let text = format!(
        "Your submission is now the patch from {source} ({} bytes):\n<submission>\n{}\n</submission>\nReview it. \
         If something is missing or wrong, keep working and submit again; the latest submission counts.",
        patch.len(),
        String::from_utf8_lossy(&patch).trim_end_matches('\n')
    );
    Ok(ToolResult {
        submission: Some(patch),
        ..ToolResult::ok(ToolName::Submit, text)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_tool, SubmissionRepo, ToolCall};
    use swe_env_sandbox::host::UnisolatedHostSandbox;

    const TIMEOUT: Duration = Duration::from_secs(20);
    const DIFF: &str = "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n+b\n";

    #[test]
    fn diff_shapes() {
        assert!(looks_like_diff(DIFF.as_bytes()));
        assert!(looks_like_diff(b"--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"));
        assert!(looks_like_diff(
            b"diff --git a/x b/x\nold mode 100644\nnew mode 100755\n"
        ));
        assert!(!looks_like_diff(b"--- a/x\n+++ b/x\n"));
        assert!(!looks_like_diff(b"just some notes\n@@ -1 +1 @@\n"));
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    async fn submit(
        sandbox: &UnisolatedHostSandbox,
        path: Option<&str>,
        config: &ToolConfig,
    ) -> ToolResult {
        let call = ToolCall::Submit {
            path: path.map(str::to_owned),
        };
        run_tool(sandbox, &call, config).await.unwrap()
    }

    #[tokio::test]
    async fn submit_patch_file() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        sandbox
            .write_file(&format!("{root}/fix.patch"), DIFF.as_bytes())
            .await
            .unwrap();
        sandbox
            .write_file(&format!("{root}/empty.patch"), b" \n")
            .await
            .unwrap();
        sandbox
            .write_file(&format!("{root}/notes.txt"), b"I fixed it\n")
            .await
            .unwrap();
        sandbox.run("mkdir d", TIMEOUT).await.unwrap();
        let config = ToolConfig::default();

        let ok = submit(&sandbox, Some("fix.patch"), &config).await;
        assert_eq!(ok.error, None);
        assert_eq!(ok.submission.as_deref(), Some(DIFF.as_bytes()));
        assert_eq!(
            ok.text,
            format!(
                "Your submission is now the patch from fix.patch ({} bytes):\n<submission>\n{}\n</submission>\n\
                 Review it. If something is missing or wrong, keep working and submit again; the latest submission \
                 counts.",
                DIFF.len(),
                DIFF.trim_end()
            )
        );

        let missing = submit(&sandbox, Some("no.patch"), &config).await;
        assert_eq!(missing.error, Some(ToolErrorKind::PathMissing));
        assert_eq!(
            missing.text,
            format!("Failed to submit no.patch: it does not exist (resolved to {root}/no.patch).")
        );
        let dir = submit(&sandbox, Some("d"), &config).await;
        assert_eq!(dir.error, Some(ToolErrorKind::PathIsDirectory));
        assert_eq!(
            dir.text,
            "Failed to submit d: it is a directory, not a patch file."
        );
        let empty = submit(&sandbox, Some("empty.patch"), &config).await;
        assert_eq!(empty.error, Some(ToolErrorKind::EmptyPatch));
        assert_eq!(
            empty.text,
            "Failed to submit empty.patch: the patch is empty."
        );
        let notes = submit(&sandbox, Some("notes.txt"), &config).await;
        assert_eq!(notes.error, Some(ToolErrorKind::NotADiff));
        assert_eq!(
            notes.text,
            "Failed to submit notes.txt: it is not a diff (expected `diff --git` headers or `---`/`+++` file lines \
             followed by `@@` hunks, as written by `git diff`)."
        );
        assert_eq!(notes.submission, None);
        let no_path = submit(&sandbox, None, &config).await;
        assert_eq!(no_path.error, Some(ToolErrorKind::NoPatchPath));
        assert_eq!(
            no_path.text,
            "Failed to submit: give the path of a patch file, for example after `git diff > /tmp/fix.patch`."
        );
    }

    /// A generated test's episode submits a file as is: no diff check, a path required, an empty file refused.
    #[tokio::test]
    async fn a_file_submission_takes_any_content_and_needs_a_path() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        let script = "print('Issue reproduced')\n";
        sandbox
            .write_file(&format!("{root}/test_issue.py"), script.as_bytes())
            .await
            .unwrap();
        sandbox
            .write_file(&format!("{root}/blank.py"), b"\n")
            .await
            .unwrap();
        let config = ToolConfig {
            submit_kind: crate::SubmitKind::File,
            ..ToolConfig::default()
        };
        let ok = submit(&sandbox, Some("test_issue.py"), &config).await;
        assert_eq!(ok.error, None, "{}", ok.text);
        assert_eq!(ok.submission.as_deref(), Some(script.as_bytes()));
        assert!(ok
            .text
            .starts_with("Your submission is now the file test_issue.py (26 bytes)."));
        sandbox
            .write_file(
                &format!("{root}/latin1.py"),
                b"# -*- coding: latin-1 -*-\nprint('\xe9')\n",
            )
            .await
            .unwrap();
        let latin1 = submit(&sandbox, Some("latin1.py"), &config).await;
        assert_eq!(
            latin1.error,
            Some(ToolErrorKind::NotUtf8),
            "{}",
            latin1.text
        );
        assert_eq!(latin1.submission, None);
        let blank = submit(&sandbox, Some("blank.py"), &config).await;
        assert_eq!(blank.error, Some(ToolErrorKind::EmptyPatch));
        let no_path = submit(&sandbox, None, &config).await;
        assert_eq!(no_path.error, Some(ToolErrorKind::NoPatchPath));
        assert!(
            no_path.text.contains("/testbed/test_issue.py"),
            "{}",
            no_path.text
        );
        // The same file is refused as a patch.
        let patch = submit(&sandbox, Some("test_issue.py"), &ToolConfig::default()).await;
        assert_eq!(patch.error, Some(ToolErrorKind::NotADiff));
        assert!(crate::tool_specs_text(&config)
            .contains("Submits the file [path] (its content, as is)"));
        assert!(!crate::tool_specs_text(&config).contains("git diff` format) as your solution"));
        let tools = crate::openai_tools_for(crate::SubmitKind::File).to_string();
        assert!(tools.contains("its content as is"), "{tools}");
    }

    #[tokio::test]
    async fn submissions_over_the_limit_are_tool_errors() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        let big = format!("{DIFF}{}", "+x\n".repeat(100));
        sandbox
            .write_file(&format!("{root}/fix.patch"), big.as_bytes())
            .await
            .unwrap();
        let capped = ToolConfig {
            max_submission_bytes: 64,
            ..ToolConfig::default()
        };
        let refused = submit(&sandbox, Some("fix.patch"), &capped).await;
        assert_eq!(refused.error, Some(ToolErrorKind::TooLarge));
        assert_eq!(refused.submission, None);
        assert_eq!(
            refused.text,
            format!(
                "Failed to submit fix.patch: the submission is {} bytes, over the 64-byte limit. A fix is usually \
                 small: leave generated, binary or data files out of it (delete them, or list them in .gitignore), \
                 then submit again.",
                big.len()
            )
        );
        let roomy = ToolConfig {
            max_submission_bytes: big.len(),
            ..ToolConfig::default()
        };
        let accepted = submit(&sandbox, Some("fix.patch"), &roomy).await;
        assert_eq!(accepted.error, None, "{}", accepted.text);
        assert_eq!(accepted.submission.as_deref(), Some(big.as_bytes()));

        // A computed submission: the patch is measured in the sandbox and refused without being read.
        let setup = "mkdir repo && cd repo && git init -q && git config user.email t@e.st && git config user.name t \
                     && printf 'a\\n' > x.py && git add -A && git commit -qm base \
                     && seq 1 1000 > data.txt && git rev-parse HEAD && cd /";
        let out = sandbox.run(setup, TIMEOUT).await.unwrap();
        let printed = String::from_utf8_lossy(&out.output).into_owned();
        assert_eq!(out.exit_code, Some(0), "{printed}");
        let repo_dir = format!("{root}/repo");
        let repo = SubmissionRepo::new(repo_dir.clone(), printed.trim());
        let size = compute_submission(&sandbox, &repo_dir, printed.trim())
            .await
            .unwrap()
            .len();
        let capped = ToolConfig {
            submission_repo: Some(repo.clone()),
            max_submission_bytes: 1000,
            ..ToolConfig::default()
        };
        let refused = submit(&sandbox, None, &capped).await;
        assert_eq!(refused.error, Some(ToolErrorKind::TooLarge));
        assert!(
            refused.text.starts_with(&format!(
                "Failed to submit the changes in {repo_dir}: the submission is {size} bytes, over the 1000-byte \
                 limit."
            )),
            "{}",
            refused.text
        );
        let error =
            compute_submission_at_most(&sandbox, &repo_dir, printed.trim(), &[], 1000).await;
        assert!(
            matches!(error, Err(SubmissionError::TooLarge { size: s, max_bytes: 1000, .. }) if s as usize == size),
            "{error:?}"
        );
        let roomy = ToolConfig {
            submission_repo: Some(repo),
            max_submission_bytes: size,
            ..ToolConfig::default()
        };
        let accepted = submit(&sandbox, None, &roomy).await;
        assert_eq!(accepted.error, None, "{}", accepted.text);
    }

    #[tokio::test]
    async fn odd_and_unreadable_patch_files() {
        let inner = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = inner.root().to_str().unwrap().to_owned();
        inner
            .run("ln -s nowhere dangling && echo x > p.diff", TIMEOUT)
            .await
            .unwrap();
        let odd = submit(&inner, Some("dangling"), &ToolConfig::default()).await;
        assert_eq!(odd.error, Some(ToolErrorKind::NotARegularFile));
        assert_eq!(
            odd.text,
            "Failed to submit dangling: it is not a regular file."
        );
        let sandbox = crate::fault::FailingIo {
            inner,
            fail_reads: true,
            fail_writes: false,
        };
        let call = ToolCall::Submit {
            path: Some("p.diff".into()),
        };
        let unreadable = run_tool(&sandbox, &call, &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(unreadable.error, Some(ToolErrorKind::Unreadable));
        assert_eq!(
            unreadable.text,
            format!(
                "Failed to submit p.diff: it could not be read (cannot read {root}/p.diff: Permission denied (os \
                 error 13))."
            )
        );
    }

    #[tokio::test]
    async fn computed_submission() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let setup = "mkdir repo && cd repo && git init -q && git config user.email t@e.st && git config user.name t \
                     && printf 'a\\n' > x.py && git add x.py && git commit -qm base && git rev-parse HEAD";
        let out = sandbox.run(setup, TIMEOUT).await.unwrap();
        assert_eq!(
            out.exit_code,
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.output)
        );
        let base = String::from_utf8(out.output).unwrap().trim().to_owned();
        let repo_dir = format!("{}/repo", sandbox.root().to_str().unwrap());
        let config = ToolConfig {
            submission_repo: Some(SubmissionRepo::new(repo_dir.clone(), base.clone())),
            ..ToolConfig::default()
        };

        let unchanged = submit(&sandbox, None, &config).await;
        assert_eq!(unchanged.error, Some(ToolErrorKind::EmptyPatch));
        assert_eq!(
            unchanged.text,
            format!("Failed to submit the changes in {repo_dir}: the patch is empty.")
        );

        sandbox
            .run(
                "printf 'b\\n' > x.py && printf '\\0\\1' > bin.dat && cd /",
                TIMEOUT,
            )
            .await
            .unwrap();
        let patch = compute_submission(&sandbox, &repo_dir, &base)
            .await
            .unwrap();
        let patch = String::from_utf8(patch).unwrap();
        assert!(patch.contains("diff --git a/x.py b/x.py\n"), "{patch}");
        assert!(patch.contains("-a\n+b\n"), "{patch}");
        assert!(patch.contains("GIT binary patch"), "{patch}");
        assert_eq!(
            sandbox.cwd().await.unwrap(),
            "/",
            "the shell's directory is untouched"
        );
        let result = submit(&sandbox, None, &config).await;
        assert_eq!(result.error, None, "{}", result.text);
        assert_eq!(result.submission.as_deref(), Some(patch.as_bytes()));

        let bad_base = "0000000000000000000000000000000000000000";
        let error = compute_submission(&sandbox, &repo_dir, bad_base).await;
        assert!(
            matches!(
                error,
                Err(SubmissionError::GitFailed {
                    exit_code: Some(128),
                    ..
                })
            ),
            "{error:?}"
        );
        let config = ToolConfig {
            submission_repo: Some(SubmissionRepo::new(repo_dir.clone(), bad_base)),
            ..ToolConfig::default()
        };
        let failed = submit(&sandbox, None, &config).await;
        assert_eq!(failed.error, Some(ToolErrorKind::GitFailed));
        let prefix = format!(
            "Failed to submit: computing the patch of {repo_dir} failed (exit code Some(128)): "
        );
        assert!(failed.text.starts_with(&prefix), "{}", failed.text);
        assert!(failed.text.contains(bad_base), "{}", failed.text);
    }
}

#[cfg(test)]
mod exclusion_tests {
    use super::*;
    use swe_env_sandbox::host::UnisolatedHostSandbox;

    const TIMEOUT: Duration = Duration::from_secs(60);

    /// The `diff --git` header lines of a patch.
    fn headers(patch: &[u8]) -> Vec<String> {
        String::from_utf8_lossy(patch)
            .lines()
            .filter(|line| line.starts_with("diff --git "))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn a_repository_without_untracked_files_records_none_and_leaves_no_temporary_directory() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let setup = "mkdir tmp && export TMPDIR=\"$PWD/tmp\" && mkdir repo && cd repo && git init -q \
                     && git config user.email t@e.st && git config user.name t \
                     && printf 'a\\n' > x.py && git add -A && git commit -qm base && git rev-parse HEAD";
        let out = sandbox.run(setup, TIMEOUT).await.unwrap();
        let printed = String::from_utf8_lossy(&out.output).into_owned();
        assert_eq!(out.exit_code, Some(0), "{printed}");
        let repo_dir = format!("{}/repo", sandbox.root().to_str().unwrap());
        let recorded = record_untracked(&sandbox, &repo_dir, printed.trim())
            .await
            .unwrap();
        assert!(recorded.is_empty());
        let left = std::fs::read_dir(sandbox.root().join("tmp"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "the temporary directory was removed");
        // One untracked file: recorded through the file read path.
        sandbox
            .run("printf 'n\\n' > new.txt", TIMEOUT)
            .await
            .unwrap();
        let recorded = record_untracked(&sandbox, &repo_dir, printed.trim())
            .await
            .unwrap();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].path, b"new.txt");
        let left = std::fs::read_dir(sandbox.root().join("tmp"))
            .unwrap()
            .count();
        assert_eq!(left, 0, "the temporary directory was removed");
    }

    #[tokio::test]
    async fn unchanged_preexisting_untracked_files_are_left_out() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let setup = "mkdir tmp && export TMPDIR=\"$PWD/tmp\" && mkdir repo && cd repo && git init -q \
                     && git config user.email t@e.st && git config user.name t && printf 'ignored/\\n' > .gitignore \
                     && printf 'a\\n' > x.py && git add -A && git commit -qm base \
                     && mkdir -p build/lib ignored && for i in $(seq 1 2000); do echo $i > build/lib/f$i.py; done \
                     && printf 'q\\n' > \"build/it's a -- note.txt\" && printf 'n\\n' > 'build/new\nline' \
                     && printf 'l\\n' > \"$(printf 'build/caf\\351')\" && printf 'g\\n' > 'build/*' \
                     && printf 'k\\n' > build/keep.txt && printf 'i\\n' > ignored/x && git rev-parse HEAD";
        let out = sandbox.run(setup, TIMEOUT).await.unwrap();
        let printed = String::from_utf8_lossy(&out.output).into_owned();
        assert_eq!(out.exit_code, Some(0), "{printed}");
        let base = printed.trim().to_owned();
        let repo_dir = format!("{}/repo", sandbox.root().to_str().unwrap());

        let recorded = record_untracked(&sandbox, &repo_dir, &base).await.unwrap();
        assert_eq!(recorded.len(), 2005, "ignored files are not recorded");
        assert!(recorded
            .iter()
            .any(|file| file.path == b"build/caf\xe9" && file.mode == "100644"));
        assert!(recorded.iter().any(|file| file.path == b"build/new\nline"));
        assert!(recorded.iter().all(|file| file.blob.len() >= 40));

        // Nothing changed: nothing to submit, while the plain computation sweeps everything up.
        let patch = compute_submission_excluding(&sandbox, &repo_dir, &base, &recorded)
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&patch), "");
        let everything = compute_submission(&sandbox, &repo_dir, &base)
            .await
            .unwrap();
        assert_eq!(headers(&everything).len(), 2005);

        // A tracked edit, a new file, an edit of a pre-existing untracked file, a mode change of another, a
        // deletion of a third (not expressible against the base commit); `build/*` (a glob if taken as a
        // pathspec) stays unchanged and out. Something staged by the agent stays staged.
        let change = "cd \"$TMPDIR/../repo\" && printf 'b\\n' > x.py && printf 'new\\n' > 'fresh file.py' \
                      && printf 'more\\n' >> \"build/it's a -- note.txt\" && chmod +x build/keep.txt \
                      && rm build/lib/f1.py && git add x.py && cd /";
        let out = sandbox.run(change, TIMEOUT).await.unwrap();
        assert_eq!(out.exit_code, Some(0));
        let patch = compute_submission_excluding(&sandbox, &repo_dir, &base, &recorded)
            .await
            .unwrap();
        assert_eq!(
            headers(&patch),
            [
                "diff --git a/build/it's a -- note.txt b/build/it's a -- note.txt",
                "diff --git a/build/keep.txt b/build/keep.txt",
                "diff --git a/fresh file.py b/fresh file.py",
                "diff --git a/x.py b/x.py",
            ],
            "{}",
            String::from_utf8_lossy(&patch)
        );
        assert!(String::from_utf8_lossy(&patch).contains("+q\n+more\n"));
        assert_eq!(sandbox.cwd().await.unwrap(), "/");
        let out = sandbox
            .run(
                "cd \"$TMPDIR/../repo\" && git diff --cached --name-only && git status --porcelain -uno \
                 && ls -A \"$TMPDIR\" | wc -l; cd /",
                TIMEOUT,
            )
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.output),
            "x.py\nM  x.py\n0\n",
            "the index is as the agent left it and no temporary directory is left"
        );
    }
}
