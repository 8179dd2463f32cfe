//! The gold agent: replays a task's reference patch through the same tools a model uses (edit / create / bash,
//! then submit), so a gold run exercises the whole pipeline — parsing, tools, trajectory, submission, grading.
//!
//! Each hunk of a modified file becomes one `edit` whose SEARCH is the hunk's old side (context + removed lines)
//! and REPLACE its new side. New files become `create`, deleted files `rm`. When an edit is refused (its SEARCH
//! text occurs several times, or the hunk relies on fuzz), the agent falls back to `git apply` of that file's diff
//! — exactly what a careful human would do — so gold stays gold.

/// One file's part of a unified diff.
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
    /// The diff is binary or uses features the edit tool cannot express (mode changes, missing newline markers).
    pub needs_git_apply: bool,
}

/// Splits a `git diff` into files. Lines outside any `diff --git` section are ignored.
pub fn split_patch(patch: &str) -> Vec<FileDiff> {
    let mut files: Vec<FileDiff> = Vec::new();
    let mut current_old: Option<(String, String)> = None; // (old, new) of the hunk being read
    let mut remaining = (0usize, 0usize);
    for line in patch.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            flush_hunk(&mut files, &mut current_old);
            let (a, b) = parse_git_header(rest.trim_end_matches(['\n', '\r']));
            files.push(FileDiff {
                old_path: a,
                new_path: b,
                hunks: Vec::new(),
                raw: String::new(),
                needs_git_apply: false,
            });
        }
        let Some(file) = files.last_mut() else {
            continue;
        };
        file.raw.push_str(line);
        if remaining != (0, 0) {
            if let Some((old, new)) = current_old.as_mut() {
                match line.as_bytes().first() {
                    Some(b' ') => {
                        old.push_str(&line[1..]);
                        new.push_str(&line[1..]);
                        remaining = (remaining.0.saturating_sub(1), remaining.1.saturating_sub(1));
                    }
                    Some(b'-') => {
                        old.push_str(&line[1..]);
                        remaining.0 = remaining.0.saturating_sub(1);
                    }
                    Some(b'+') => {
                        new.push_str(&line[1..]);
                        remaining.1 = remaining.1.saturating_sub(1);
                    }
                    Some(b'\\') => file.needs_git_apply = true,
                    _ => {
                        // An empty context line some tools emit without the leading space.
                        old.push('\n');
                        new.push('\n');
                        remaining = (remaining.0.saturating_sub(1), remaining.1.saturating_sub(1));
                    }
                }
                continue;
            }
        }
        if line.starts_with("\\ No newline") {
            file.needs_git_apply = true;
        } else if line.starts_with("@@ ") {
            flush_hunk(&mut files, &mut current_old);
            remaining = parse_hunk_counts(line).unwrap_or((0, 0));
            current_old = Some((String::new(), String::new()));
        } else if line.starts_with("--- /dev/null") {
            if let Some(file) = files.last_mut() {
                file.old_path = None;
            }
        } else if line.starts_with("+++ /dev/null") {
            if let Some(file) = files.last_mut() {
                file.new_path = None;
            }
        } else if line.starts_with("GIT binary patch")
            || line.starts_with("Binary files")
            || line.starts_with("old mode")
            || line.starts_with("new mode")
            || line.starts_with("rename from")
            || line.starts_with("copy from")
        {
            if let Some(file) = files.last_mut() {
                file.needs_git_apply = true;
            }
        } else if line.starts_with("new file mode") {
            if let Some(file) = files.last_mut() {
                file.old_path = None;
            }
        } else if line.starts_with("deleted file mode") {
            if let Some(file) = files.last_mut() {
                file.new_path = None;
            }
        }
    }
    flush_hunk(&mut files, &mut current_old);
    files
}

fn flush_hunk(files: &mut [FileDiff], current: &mut Option<(String, String)>) {
    if let (Some(file), Some(hunk)) = (files.last_mut(), current.take()) {
        file.hunks.push(hunk);
    }
}

fn parse_git_header(rest: &str) -> (Option<String>, Option<String>) {
    // `a/PATH b/PATH`; paths with spaces are ambiguous in this header, so split at " b/".
    match rest.split_once(" b/") {
        Some((a, b)) => (
            Some(a.trim_start_matches("a/").to_owned()),
            Some(b.to_owned()),
        ),
        None => (None, None),
    }
}

fn parse_hunk_counts(line: &str) -> Option<(usize, usize)> {
    // @@ -l,s +l,s @@
    let mut parts = line.split_whitespace().skip(1);
    let old = parts.next()?.trim_start_matches('-');
    let new = parts.next()?.trim_start_matches('+');
    let count = |spec: &str| -> Option<usize> {
        match spec.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => Some(1),
        }
    };
    Some((count(old)?, count(new)?))
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
