//! Splitting a unified diff into per-file "diff bodies", the unit SWE-RL compares.
//!
//! SWE-RL (`swerl/core/reward.py`) compares, per file, the output of Python's
//! `difflib.unified_diff(old.splitlines(), new.splitlines(), lineterm="", n=3)` with its two file
//! header lines dropped and the rest joined by `"\n"`: the hunk headers `@@ -a,b +c,d @@` and the
//! hunk lines. We start from a patch rather than file contents, so a file's body here is:
//!
//! * every hunk of that file in patch order: its header reduced to `@@ <old range> <new range> @@`
//!   (git's trailing section heading is dropped, as difflib never writes one), then its lines
//!   verbatim (prefix included, `\r` kept);
//! * `\ No newline at end of file` markers left out (difflib never writes them);
//! * joined with `"\n"`, no trailing newline; several sections for one path are concatenated.
//!
//! Files are keyed by their new path (`+++ b/...`), or the old path for deletions; files without
//! hunks (binary, mode-only, pure renames) have no body and are left out, as SWE-RL leaves out
//! files whose diff is empty. Hunks are read by their line counts, so a removed line starting with
//! `-- ` is never mistaken for a file header. A blank line inside a hunk counts as an empty context
//! line (some tools strip the trailing space).

use std::collections::BTreeMap;

use crate::diff::{parse, Dialect, DiffError, LineKind};

/// Splits a unified diff (git's or plain) into file path → diff body, as documented above, reading it as SWE-RL
/// does ([`Dialect::SweRl`]).
pub fn file_diff_bodies(patch: &str) -> Result<BTreeMap<String, String>, DiffError> {
    if patch.trim().is_empty() {
        return Err(DiffError::Empty);
    }
    let mut parts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in parse(patch, Dialect::SweRl)? {
        // The parser refuses a hunk whose file has no path, so a file with hunks always has one.
        let Some(path) = file.path() else {
            continue;
        };
        for hunk in &file.hunks {
            let part = parts.entry(path.to_string()).or_default();
            part.push(format!("@@ {} {} @@", hunk.old_range, hunk.new_range));
            part.extend(
                hunk.lines
                    .iter()
                    .filter(|line| line.kind != LineKind::NoNewline)
                    .map(|line| line.text().to_string()),
            );
        }
    }
    if parts.is_empty() {
        return Err(DiffError::NoHunks);
    }
    Ok(parts
        .into_iter()
        .map(|(file, file_parts)| (file, file_parts.join("\n")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_diff_bodies_drop_headers_and_section_headings() {
        let patch = "diff --git a/x.py b/x.py\nindex 1..2 100644\n--- a/x.py\n+++ b/x.py\n@@ -1,3 +1,3 @@ def f():\n a\n--- removed dashes\n+b\n c\n@@ -10 +10 @@\n-y\n+z\n\\ No newline at end of file\ndiff --git a/new.txt b/new.txt\nnew file mode 100644\n--- /dev/null\n+++ b/new.txt\n@@ -0,0 +1 @@\n+hello\n";
        let bodies = file_diff_bodies(patch).unwrap();
        assert_eq!(
            bodies.get("x.py").map(String::as_str),
            Some("@@ -1,3 +1,3 @@\n a\n--- removed dashes\n+b\n c\n@@ -10 +10 @@\n-y\n+z")
        );
        assert_eq!(
            bodies.get("new.txt").map(String::as_str),
            Some("@@ -0,0 +1 @@\n+hello")
        );
    }

    #[test]
    fn deleted_files_use_the_old_path_and_binary_files_are_skipped() {
        let patch = "diff --git a/gone.py b/gone.py\ndeleted file mode 100644\n--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\ndiff --git a/img.png b/img.png\nBinary files a/img.png and b/img.png differ\n";
        let bodies = file_diff_bodies(patch).unwrap();
        assert_eq!(bodies.keys().collect::<Vec<_>>(), vec!["gone.py"]);
    }

    #[test]
    fn malformed_patches_are_rejected() {
        assert_eq!(file_diff_bodies("  \n"), Err(DiffError::Empty));
        assert_eq!(file_diff_bodies("hello\n"), Err(DiffError::NoHunks));
        assert!(matches!(
            file_diff_bodies("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n"),
            Err(DiffError::BadHunkBody { .. })
        ));
        assert!(matches!(
            file_diff_bodies("--- a/x\n+++ b/x\n@@ -1,2 +1 @@ \n"),
            Err(DiffError::BadHunkBody { .. })
        ));
        assert!(matches!(
            file_diff_bodies("@@ -1 +1 @@\n-a\n+b\n"),
            Err(DiffError::HunkWithoutFile { .. })
        ));
        assert!(matches!(
            file_diff_bodies("--- a/x\n+++ b/x\n@@ -x +1 @@\n"),
            Err(DiffError::BadHunkHeader { .. })
        ));
    }
}
