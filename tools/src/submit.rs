//! The submit tool (a patch file becomes the episode's submission) and [`compute_submission`], which diffs the
//! repository against the base commit for agents that do not write patch files themselves.

use std::time::Duration;

use crate::call::ToolName;
use crate::sandbox::{PathKind, SandboxError, ToolSandbox};
use crate::tool::{resolve_path, ToolConfig, ToolErrorKind, ToolResult};

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
}

/// Single-quotes `text` for bash.
pub(crate) fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Stages everything in `repo_dir` and returns `git diff --cached --binary <base_commit>` (may be empty when
/// nothing changed). Runs in a subshell of the persistent shell, so the shell's directory is untouched; the diff
/// goes through a temporary file in the sandbox so the shell's output cap cannot cut it.
pub async fn compute_submission(
    sandbox: &dyn ToolSandbox,
    repo_dir: &str,
    base_commit: &str,
) -> Result<Vec<u8>, SubmissionError> {
    let command = format!(
        "(builtin cd -- {repo} && git add -A && swe_env_patch=\"$(mktemp)\" && git -c core.quotepath=off diff \
         --cached --binary --no-color --no-ext-diff {base} -- > \"$swe_env_patch\" && builtin printf '%s\\n' \
         \"$swe_env_patch\")",
        repo = shell_quote(repo_dir),
        base = shell_quote(base_commit),
    );
    let output = sandbox.run(&command, SUBMISSION_TIMEOUT).await?;
    let printed = String::from_utf8_lossy(&output.output).into_owned();
    if output.timed_out {
        return Err(SubmissionError::TimedOut {
            repo_dir: repo_dir.to_owned(),
        });
    }
    let patch_path = printed.lines().last().unwrap_or_default().trim().to_owned();
    if output.exit_code != Some(0) || !patch_path.starts_with('/') {
        return Err(SubmissionError::GitFailed {
            repo_dir: repo_dir.to_owned(),
            exit_code: output.exit_code,
            output: printed,
        });
    }
    let patch = sandbox.read_file(&patch_path).await?;
    sandbox
        .run(
            &format!("rm -f -- {}", shell_quote(&patch_path)),
            SUBMISSION_TIMEOUT,
        )
        .await?;
    Ok(patch)
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

/// Runs the submit tool.
pub(crate) async fn run_submit(
    sandbox: &dyn ToolSandbox,
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
            match sandbox.read_file(&abs_path).await {
                Ok(bytes) => (bytes, path.to_owned()),
                Err(error) => {
                    return failed(
                        ToolErrorKind::Unreadable,
                        format!(
                            "Failed to submit {path}: it could not be read ({}).",
                            error.message
                        ),
                    )
                }
            }
        }
        None => {
            let Some(repo) = &config.submission_repo else {
                return failed(
                    ToolErrorKind::NoPatchPath,
                    "Failed to submit: give the path of a patch file, for example after `git diff > /tmp/fix.patch`."
                        .to_owned(),
                );
            };
            match compute_submission(sandbox, &repo.repo_dir, &repo.base_commit).await {
                Ok(bytes) => (bytes, format!("the changes in {}", repo.repo_dir)),
                Err(SubmissionError::Sandbox(error)) => return Err(error),
                Err(error) => {
                    return failed(
                        ToolErrorKind::GitFailed,
                        format!("Failed to submit: {error}"),
                    )
                }
            }
        }
    };
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
    use crate::host::UnisolatedHostSandbox;
    use crate::{run_tool, SubmissionRepo, ToolCall};

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
            submission_repo: Some(SubmissionRepo {
                repo_dir: repo_dir.clone(),
                base_commit: base.clone(),
            }),
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
            submission_repo: Some(SubmissionRepo {
                repo_dir: repo_dir.clone(),
                base_commit: bad_base.into(),
            }),
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
