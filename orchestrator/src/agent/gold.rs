//! The gold agent: replays a task's reference patch through the same tools a model uses (edit / create / bash,
//! then submit), so a gold run exercises the whole pipeline — parsing, tools, trajectory, submission, grading.
//!
//! Each hunk of a modified file becomes one `edit` whose SEARCH is the hunk's old side (context + removed lines)
//! and REPLACE its new side. New files become `create`, deleted files `rm`. When an edit is refused (its SEARCH
//! text occurs several times, or the hunk relies on fuzz), the agent falls back to `git apply` of that file's diff
//! — exactly what a careful human would do — so gold stays gold.

use swe_env_grading::diff::{self, Dialect};

/// One file's part of a unified diff, as the replay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDiff {
    /// Path before (`None` for a new file).
    pub old_path: Option<String>,
    /// Path after (`None` for a deleted file).
    pub new_path: Option<String>,
    /// The hunks, as (old side, new side) line blocks, each line `\n`-terminated.
    pub hunks: Vec<(String, String)>,
    /// The raw text of this file's diff (header included), for the `git apply` fallback.
    pub raw: String,
    /// The diff is binary or uses features the edit tool cannot express (mode changes, renames, copies, missing
    /// newline markers).
    pub needs_git_apply: bool,
}

/// Splits a `git diff` into files, read leniently as `git apply` input ([`Dialect::GitApply`]: lines outside any
/// `diff --git` section are ignored, malformed hunks are taken as far as they go).
pub fn split_patch(patch: &str) -> Vec<FileDiff> {
    // The GitApply reading never fails; an error would only come from another dialect.
    let files = diff::parse(patch, Dialect::GitApply).unwrap_or_default();
    files
        .into_iter()
        .map(|file| FileDiff {
            hunks: file
                .hunks
                .iter()
                .map(|hunk| (hunk.old_text(), hunk.new_text()))
                .collect(),
            raw: patch.get(file.span.clone()).unwrap_or_default().to_owned(),
            needs_git_apply: file.binary
                || file.mode_changed
                || file.renamed
                || file.copied
                || file.no_newline,
            old_path: file.old_path,
            new_path: file.new_path,
        })
        .collect()
}

/// The CWM-format actions that apply one file's diff with the tools (fallbacks are decided by the caller).
pub fn file_actions(file: &FileDiff) -> Vec<String> {
    if file.needs_git_apply {
        return vec![git_apply_action(file)];
    }
    match (&file.old_path, &file.new_path) {
        (None, Some(path)) => {
            let content: String = file.hunks.iter().map(|(_, new)| new.as_str()).collect();
            vec![format!("<tool: create>\n{path}\n{content}</tool>")]
        }
        (Some(path), None) => vec![format!(
            "<tool: bash>\nrm -- {}\n</tool>",
            swe_env_tools::shell_quote(path)
        )],
        (Some(old), Some(new)) if old == new => file
            .hunks
            .iter()
            .map(|(search, replace)| {
                format!("<tool: edit>\n{old}\n<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n</tool>")
            })
            .collect(),
        _ => vec![git_apply_action(file)],
    }
}

/// A bash action applying `file`'s raw diff with `git apply` (via a quoted heredoc, byte-faithful for text).
pub fn git_apply_action(file: &FileDiff) -> String {
    let mut delimiter = String::from("SWE_ENV_GOLD_PATCH");
    while file.raw.contains(&delimiter) {
        delimiter.push('_');
    }
    format!(
        "<tool: bash>\ncat > /tmp/swe_env_gold_file.patch <<'{delimiter}'\n{}{delimiter}\ngit apply -v /tmp/swe_env_gold_file.patch && rm -f /tmp/swe_env_gold_file.patch\n</tool>",
        file.raw
    )
}

/// The submit action: a path-less submit, so the episode computes the submission from the repository against the
/// task's base commit and leaves out untracked files the image already had (see
/// `swe_env_tools::submit::compute_submission_excluding`).
pub fn submit_actions() -> [String; 1] {
    ["<tool: submit>\n\n</tool>".to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATCH: &str = "diff --git a/src/x.py b/src/x.py\nindex 1..2 100644\n--- a/src/x.py\n+++ b/src/x.py\n@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n@@ -10,2 +10,3 @@ def f():\n x\n+y\n z\ndiff --git a/new.py b/new.py\nnew file mode 100644\nindex 0000000..e69de29\n--- /dev/null\n+++ b/new.py\n@@ -0,0 +1,2 @@\n+one\n+two\n";

    #[test]
    fn splits_files_and_hunks() {
        let files = split_patch(PATCH);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].old_path.as_deref(), Some("src/x.py"));
        assert_eq!(
            files[0].hunks,
            vec![
                ("a\nb\nc\n".into(), "a\nB\nc\n".into()),
                ("x\nz\n".into(), "x\ny\nz\n".into())
            ]
        );
        assert_eq!(files[1].old_path, None);
        assert_eq!(files[1].new_path.as_deref(), Some("new.py"));
        let actions = file_actions(&files[1]);
        assert_eq!(
            actions,
            vec!["<tool: create>\nnew.py\none\ntwo\n</tool>".to_owned()]
        );
        assert!(files[0].raw.starts_with("diff --git a/src/x.py"));
        assert!(!files[0].raw.contains("new.py"));
    }

    #[test]
    fn renames_mode_changes_binaries_and_missing_newlines_go_through_git_apply() {
        let patch = "diff --git a/old.py b/new.py\nsimilarity index 90%\nrename from old.py\nrename to new.py\n--- a/old.py\n+++ b/new.py\n@@ -1 +1 @@\n-a\n+b\n\
diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n\
diff --git a/img.png b/img.png\nBinary files a/img.png and b/img.png differ\n\
diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\
diff --git a/y.py b/y.py\n--- a/y.py\n+++ b/y.py\n@@ -1 +1 @@\n-a\n+b\n";
        let files = split_patch(patch);
        let flags: Vec<bool> = files.iter().map(|f| f.needs_git_apply).collect();
        assert_eq!(flags, [true, true, true, true, false]);
        assert_eq!(files[0].old_path.as_deref(), Some("old.py"));
        assert_eq!(files[0].new_path.as_deref(), Some("new.py"));
        assert!(file_actions(&files[3])[0].contains("git apply -v"));
        assert_eq!(
            file_actions(&files[4]),
            ["<tool: edit>\ny.py\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n</tool>"]
        );
        let rebuilt: String = files.iter().map(|f| f.raw.as_str()).collect();
        assert_eq!(rebuilt, patch);
    }

    #[test]
    fn every_verified_gold_patch_splits_cleanly() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/datasets/swe-bench-verified.jsonl");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut n = 0;
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let patch = row["patch"].as_str().unwrap();
            let files = split_patch(patch);
            assert!(!files.is_empty(), "{}", row["instance_id"]);
            let rebuilt: String = files.iter().map(|f| f.raw.as_str()).collect();
            assert!(
                patch.ends_with(&rebuilt),
                "{}: raw sections must cover the patch",
                row["instance_id"]
            );
            for file in &files {
                assert!(
                    !file.hunks.is_empty() || file.needs_git_apply,
                    "{}",
                    row["instance_id"]
                );
            }
            n += 1;
        }
        assert_eq!(n, 500);
    }
}
