//! The create tool: a new file with exact content. Refuses existing paths and missing parent directories.

use crate::call::ToolName;
use crate::edit::count_lines;
use crate::tool::{parent_dir, resolve_path, ToolConfig, ToolErrorKind, ToolResult};
use swe_env_sandbox::{PathKind, Sandbox, SandboxError};

/// Creates `path` (relative to the shell's current directory) holding exactly `content`, mode 0644; content over
/// [`ToolConfig::max_file_bytes`] is refused.
pub(crate) async fn run_create(
    sandbox: &dyn Sandbox,
    path: &str,
    content: &str,
    config: &ToolConfig,
) -> Result<ToolResult, SandboxError> {
    let failed = |kind, text| Ok(ToolResult::failed(ToolName::Create, kind, text));
    let limit = config.max_file_bytes;
    if content.len() > limit {
        return failed(
            ToolErrorKind::TooLarge,
            format!(
                "Cannot create {path}: the content is {} bytes, over the {limit}-byte limit of the create tool. \
                 Write large files with bash instead (for example a script that generates them).",
                content.len()
            ),
        );
    }
    let abs_path = resolve_path(&sandbox.cwd().await?, path);
    if abs_path.ends_with('/') {
        return failed(
            ToolErrorKind::PathIsDirectory,
            format!("Cannot create {path}: the path ends with `/`, so it names a directory, not a file."),
        );
    }
    match sandbox.path_kind(&abs_path).await? {
        PathKind::Missing => {}
        PathKind::Directory => {
            return failed(
                ToolErrorKind::PathIsDirectory,
                format!("Cannot create {path}: a directory with that name already exists."),
            )
        }
        PathKind::File | PathKind::Other => {
            return failed(
                ToolErrorKind::PathExists,
                format!(
                    "Cannot create {path}: it already exists. Use edit to change an existing file."
                ),
            )
        }
    }
    let parent = parent_dir(&abs_path);
    match sandbox.path_kind(parent).await? {
        PathKind::Directory => {}
        PathKind::Missing => {
            return failed(
                ToolErrorKind::ParentMissing,
                format!("Cannot create {path}: the parent directory {parent} does not exist. Create it first (mkdir -p)."),
            )
        }
        PathKind::File | PathKind::Other => {
            return failed(
                ToolErrorKind::ParentMissing,
                format!("Cannot create {path}: the parent {parent} is not a directory."),
            )
        }
    }
    if let Err(error) = sandbox.write_file(&abs_path, content.as_bytes()).await {
        return failed(
            ToolErrorKind::WriteFailed,
            format!("Cannot create {path}: writing failed ({})", error),
        );
    }
    let n_lines = count_lines(content);
    Ok(ToolResult::ok(
        ToolName::Create,
        format!("Created {path} ({n_lines} lines)."),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{run_tool, ToolCall, ToolConfig, ToolErrorKind};
    use swe_env_sandbox::host::UnisolatedHostSandbox;
    use swe_env_sandbox::Sandbox;

    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn content_over_the_limit_is_refused() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let config = ToolConfig {
            max_file_bytes: 10,
            ..ToolConfig::default()
        };
        let create = |content: &str| ToolCall::Create {
            path: "big.txt".into(),
            content: content.into(),
        };
        let refused = run_tool(&sandbox, &create("0123456789\n"), &config)
            .await
            .unwrap();
        assert_eq!(refused.error, Some(ToolErrorKind::TooLarge));
        assert_eq!(
            refused.text,
            "Cannot create big.txt: the content is 11 bytes, over the 10-byte limit of the create tool. Write large \
             files with bash instead (for example a script that generates them)."
        );
        let root = sandbox.root().to_str().unwrap().to_owned();
        assert!(sandbox.read_file(&format!("{root}/big.txt")).await.is_err());
        let made = run_tool(&sandbox, &create("012345678\n"), &config)
            .await
            .unwrap();
        assert_eq!(made.error, None, "{}", made.text);
    }

    #[tokio::test]
    async fn create_paths() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        sandbox
            .run("mkdir -p pkg && echo old > pkg/old.py && cd pkg", TIMEOUT)
            .await
            .unwrap();
        let create = |path: &str, content: &str| ToolCall::Create {
            path: path.into(),
            content: content.into(),
        };
        let config = ToolConfig::default();

        let made = run_tool(&sandbox, &create("new.py", "a\r\n\tb ☃\nc"), &config)
            .await
            .unwrap();
        assert_eq!(
            (made.error, made.text.as_str()),
            (None, "Created new.py (3 lines).")
        );
        assert_eq!(
            sandbox
                .read_file(&format!("{root}/pkg/new.py"))
                .await
                .unwrap(),
            "a\r\n\tb ☃\nc".as_bytes()
        );
        let mode = sandbox.run("stat -c %a new.py", TIMEOUT).await.unwrap();
        assert_eq!(mode.output, b"644\n");

        let empty = run_tool(&sandbox, &create(&format!("{root}/empty.txt"), ""), &config)
            .await
            .unwrap();
        assert_eq!(empty.text, format!("Created {root}/empty.txt (0 lines)."));

        let exists = run_tool(&sandbox, &create("old.py", "x"), &config)
            .await
            .unwrap();
        assert_eq!(exists.error, Some(ToolErrorKind::PathExists));
        assert_eq!(
            exists.text,
            "Cannot create old.py: it already exists. Use edit to change an existing file."
        );
        assert_eq!(
            sandbox
                .read_file(&format!("{root}/pkg/old.py"))
                .await
                .unwrap(),
            b"old\n"
        );

        let dir = run_tool(&sandbox, &create("..", "x"), &config)
            .await
            .unwrap();
        assert_eq!(dir.error, Some(ToolErrorKind::PathIsDirectory));
        assert_eq!(
            dir.text,
            "Cannot create ..: a directory with that name already exists."
        );

        let slash = run_tool(&sandbox, &create("sub/", "x"), &config)
            .await
            .unwrap();
        assert_eq!(slash.error, Some(ToolErrorKind::PathIsDirectory));
        assert_eq!(
            slash.text,
            "Cannot create sub/: the path ends with `/`, so it names a directory, not a file."
        );

        let orphan = run_tool(&sandbox, &create("missing/x.py", "x"), &config)
            .await
            .unwrap();
        assert_eq!(orphan.error, Some(ToolErrorKind::ParentMissing));
        assert_eq!(
            orphan.text,
            format!(
                "Cannot create missing/x.py: the parent directory {root}/pkg/missing does not exist. Create it first \
                 (mkdir -p)."
            )
        );

        let under_file = run_tool(&sandbox, &create("old.py/x", "x"), &config)
            .await
            .unwrap();
        assert_eq!(under_file.error, Some(ToolErrorKind::ParentMissing));
        assert_eq!(
            under_file.text,
            format!("Cannot create old.py/x: the parent {root}/pkg/old.py is not a directory.")
        );
    }

    #[tokio::test]
    async fn write_failure() {
        let inner = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = inner.root().to_str().unwrap().to_owned();
        let sandbox = crate::fault::FailingIo {
            inner,
            fail_reads: false,
            fail_writes: true,
        };
        let call = ToolCall::Create {
            path: "n.txt".into(),
            content: "x".into(),
        };
        let result = run_tool(&sandbox, &call, &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(result.error, Some(ToolErrorKind::WriteFailed));
        assert_eq!(
            result.text,
            format!("Cannot create n.txt: writing failed (cannot write {root}/n.txt: Read-only file system (os error 30))")
        );
    }
}
