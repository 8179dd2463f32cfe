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

/// Why a patch could not be split into file bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchParseError {
    /// The patch is empty or only whitespace.
    #[error("patch is empty")]
    Empty,
    /// The patch has no hunk at all.
    #[error("patch has no hunks")]
    NoHunks,
    /// A hunk header could not be read.
    #[error("bad hunk header on patch line {line_number}: {line:?}")]
    BadHunkHeader {
        /// 1-based line number in the patch.
        line_number: usize,
        /// The line.
        line: String,
    },
    /// A hunk appears before any file header.
    #[error("hunk without a file header on patch line {line_number}")]
    HunkWithoutFile {
        /// 1-based line number in the patch.
        line_number: usize,
    },
    /// A hunk has fewer (or different) lines than its header announces.
    #[error("hunk ending on patch line {line_number} does not match its header counts")]
    BadHunkBody {
        /// 1-based line number in the patch where the hunk went wrong.
        line_number: usize,
    },
}

/// `-a[,b]` or `+c[,d]` → the line count (`1` when omitted).
fn range_count(range: &str, sign: char) -> Option<usize> {
    let digits = range.strip_prefix(sign)?;
    let (start, count) = match digits.split_once(',') {
        Some((start, count)) => (start, Some(count)),
        None => (digits, None),
    };
    ascii_number(start)?;
    match count {
        Some(count) => ascii_number(count),
        None => Some(1),
    }
}

/// A non-empty run of ASCII digits as a number (`str::parse` alone would accept a `+` sign).
fn ascii_number(text: &str) -> Option<usize> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses `@@ -a,b +c,d @@...` into (normalised header, old count, new count).
fn hunk_header(line: &str) -> Option<(String, usize, usize)> {
    let rest = line.strip_prefix("@@ ")?;
    let (ranges, _section) = rest.split_once(" @@")?;
    let (old_range, new_range) = ranges.split_once(' ')?;
    let old_count = range_count(old_range, '-')?;
    let new_count = range_count(new_range, '+')?;
    Some((
        format!("@@ {old_range} {new_range} @@"),
        old_count,
        new_count,
    ))
}

/// A path from a `---`/`+++` line: the text after the marker, cut at a tab (timestamps), with
/// git's `a/`/`b/` prefix removed; `None` for `/dev/null`.
fn header_path(rest: &str) -> Option<String> {
    let path = rest
        .split('\t')
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    if path == "/dev/null" {
        return None;
    }
    let path = path
        .strip_prefix("a/")
        .or_else(|| path.strip_prefix("b/"))
        .unwrap_or(path);
    Some(path.to_string())
}

/// The new path of a `diff --git a/x b/y` line (used when no `---`/`+++` pair follows).
fn git_header_path(rest: &str) -> Option<String> {
    let position = rest.rfind(" b/")?;
    Some(rest[position + 3..].trim_end_matches('\r').to_string())
}

/// Splits a unified diff (git's or plain) into file path → diff body, as documented above.
pub fn file_diff_bodies(patch: &str) -> Result<BTreeMap<String, String>, PatchParseError> {
    if patch.trim().is_empty() {
        return Err(PatchParseError::Empty);
    }
    // The text after the final newline is not a line (so it is never a blank context line).
    let lines: Vec<&str> = patch
        .strip_suffix('\n')
        .unwrap_or(patch)
        .split('\n')
        .collect();
    let mut parts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current_file: Option<String> = None;
    let (mut old_left, mut new_left) = (0usize, 0usize);
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        let line_number = index + 1;
        index += 1;
        if old_left > 0 || new_left > 0 {
            match line.chars().next() {
                Some(' ') | None if old_left > 0 && new_left > 0 => {
                    old_left -= 1;
                    new_left -= 1;
                }
                Some('-') if old_left > 0 => old_left -= 1,
                Some('+') if new_left > 0 => new_left -= 1,
                Some('\\') => continue,
                _ => return Err(PatchParseError::BadHunkBody { line_number }),
            }
            if let Some(file) = &current_file {
                parts
                    .entry(file.clone())
                    .or_default()
                    .push(line.to_string());
            }
            continue;
        }
        if line.starts_with("@@") {
            let Some((header, old_count, new_count)) = hunk_header(line) else {
                return Err(PatchParseError::BadHunkHeader {
                    line_number,
                    line: line.to_string(),
                });
            };
            let Some(file) = &current_file else {
                return Err(PatchParseError::HunkWithoutFile { line_number });
            };
            parts.entry(file.clone()).or_default().push(header);
            old_left = old_count;
            new_left = new_count;
        } else if let Some(rest) = line.strip_prefix("diff --git ") {
            current_file = git_header_path(rest);
        } else if let (Some(old), Some(new)) = (
            line.strip_prefix("--- "),
            lines.get(index).and_then(|next| next.strip_prefix("+++ ")),
        ) {
            current_file = header_path(new).or_else(|| header_path(old));
            index += 1;
        }
    }
    if old_left > 0 || new_left > 0 {
        return Err(PatchParseError::BadHunkBody {
            line_number: lines.len(),
        });
    }
    if parts.is_empty() {
        return Err(PatchParseError::NoHunks);
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
        assert_eq!(file_diff_bodies("  \n"), Err(PatchParseError::Empty));
        assert_eq!(file_diff_bodies("hello\n"), Err(PatchParseError::NoHunks));
        assert!(matches!(
            file_diff_bodies("--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n"),
            Err(PatchParseError::BadHunkBody { .. })
        ));
        assert!(matches!(
            file_diff_bodies("--- a/x\n+++ b/x\n@@ -1,2 +1 @@ \n"),
            Err(PatchParseError::BadHunkBody { .. })
        ));
        assert!(matches!(
            file_diff_bodies("@@ -1 +1 @@\n-a\n+b\n"),
            Err(PatchParseError::HunkWithoutFile { .. })
        ));
        assert!(matches!(
            file_diff_bodies("--- a/x\n+++ b/x\n@@ -x +1 @@\n"),
            Err(PatchParseError::BadHunkHeader { .. })
        ));
    }
}
