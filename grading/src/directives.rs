//! Which tests to run and which files to reset, read from a task's test patch the way swebench 4.1.0 reads it.
//!
//! Two different readings of the same patch are used by the reference, and both are kept here:
//! - **test directives** (`get_test_directives`): every `diff --git a/… b/<path>` header's *target* path, minus
//!   non-test extensions, appended to the test command; for Django the paths become dotted module names relative
//!   to `tests/` (`tests/admin_views/tests.py` → `admin_views.tests`). Sympy and every other repository use the
//!   paths as they are.
//! - **modified files** (`get_modified_files`, via the `unidiff` package): the *source* path of every file the
//!   patch touches that existed before it (new files are left out); these are the files `git checkout <base>`
//!   resets before and after the tests.

use std::sync::LazyLock;

use regex::Regex;

/// File endings the reference drops from the directives (note `csv` has no dot in the reference).
pub const NON_TEST_EXTS: [&str; 11] = [
    ".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml",
];

/// The test directives of a test patch for a repository (`get_test_directives`).
pub fn test_directives(repo: &str, test_patch: &str) -> Vec<String> {
    if repo == "swe-bench/humaneval" {
        return vec!["test.py".to_string()];
    }
    let paths = diff_header_targets(test_patch)
        .into_iter()
        .filter(|p| !NON_TEST_EXTS.iter().any(|ext| p.ends_with(ext)));
    if repo == "django/django" {
        paths.map(|p| django_module(&p)).collect()
    } else {
        paths.collect()
    }
}

/// `tests/admin_views/tests.py` → `admin_views.tests`: drop `.py`, drop the `tests/` prefix, slashes to dots.
fn django_module(path: &str) -> String {
    let path = path.strip_suffix(".py").unwrap_or(path);
    let path = path.strip_prefix("tests/").unwrap_or(path);
    path.replace('/', ".")
}

/// The captures of the reference's `re.findall(r"diff --git a/.* b/(.*)", patch)`: on each line, from the first
/// `diff --git a/`, whatever follows the last ` b/` after it (the pattern is unanchored, as in the reference).
fn diff_header_targets(patch: &str) -> Vec<String> {
    const HEAD: &str = "diff --git a/";
    let mut out = Vec::new();
    for line in patch.split('\n') {
        let Some(start) = line.find(HEAD) else {
            continue;
        };
        let rest = &line[start + HEAD.len()..];
        if let Some(b) = rest.rfind(" b/") {
            out.push(rest[b + 3..].to_string());
        }
    }
    out
}

/// A patch the reference's diff parser (`unidiff.PatchSet`) rejects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("patch cannot be parsed at line {line_no}: {reason}")]
pub struct PatchParseError {
    /// 1-based line number in the patch.
    pub line_no: usize,
    /// What the parser expected.
    pub reason: String,
}

const DEV_NULL: &str = "/dev/null";

static GIT_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^diff --git ("?a/[^\t\n]+"?) ("?b/[^\t\n]+"?)"#).expect("static regex")
});
static GIT_HEADER_URI: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^diff --git (.*://[^\t\n]+) (.*://[^\t\n]+)").expect("static regex")
});
static GIT_HEADER_NO_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^diff --git ([^\t\n]+) ([^\t\n]+)").expect("static regex"));
static NEW_FILE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^new file mode \d+$").expect("static regex"));
static DELETED_FILE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^deleted file mode \d+$").expect("static regex"));
static MODE_OR_INDEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(old mode \d+|new mode \d+|index [0-9a-f]+\.\.[0-9a-f]+ \d+)$")
        .expect("static regex")
});
static SOURCE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^--- ("?[^\t\n]*"?)"#).expect("static regex"));
static TARGET_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^\+\+\+ ("?[^\t\n]*"?)"#).expect("static regex"));
static HUNK_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@").expect("static regex")
});
static BINARY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^Binary files? ([^\t]+?)(?:\t[\s0-9:+-]+)?(?: and ([^\t]+?)(?:\t[\s0-9:+-]+)?)? (?:differ|has changed)",
    )
    .expect("static regex")
});

struct PatchedFile {
    source: String,
    target: String,
    n_hunks: usize,
}

/// The files a patch modifies or deletes, by their path before the patch (`get_modified_files`): the source side
/// of each file, leaving out created files (`/dev/null`) and any path without the `a/` prefix.
pub fn modified_files(patch: &str) -> Result<Vec<String>, PatchParseError> {
    Ok(parse_patched_files(patch)?
        .into_iter()
        .filter(|f| f.source != DEV_NULL)
        .filter_map(|f| f.source.strip_prefix("a/").map(str::to_string))
        .collect())
}

/// A port of the file-level state machine of `unidiff.PatchSet` (1.0.1); hunk bodies are consumed by their
/// line counts so that diff-looking lines inside them are never taken for headers.
fn parse_patched_files(patch: &str) -> Result<Vec<PatchedFile>, PatchParseError> {
    let lines: Vec<&str> = patch.split_inclusive('\n').collect();
    let mut files: Vec<PatchedFile> = Vec::new();
    let mut current: Option<usize> = None;
    // The reference's `patch_info is not None`: inside a header block, before any hunk.
    let mut in_info = false;
    let mut pending_source: Option<String> = None;
    let err = |idx: usize, reason: &str| PatchParseError {
        line_no: idx + 1,
        reason: reason.to_string(),
    };

    let mut idx = 0;
    while idx < lines.len() {
        let raw = lines[idx];
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let header = GIT_HEADER
            .captures(line)
            .or_else(|| GIT_HEADER_URI.captures(line))
            .or_else(|| GIT_HEADER_NO_PREFIX.captures(line));
        if let Some(caps) = header {
            in_info = true;
            files.push(PatchedFile {
                source: caps[1].to_string(),
                target: caps[2].to_string(),
                n_hunks: 0,
            });
            current = Some(files.len() - 1);
            idx += 1;
            continue;
        }
        if NEW_FILE.is_match(line) {
            let (Some(c), true) = (current, in_info) else {
                return Err(err(idx, "unexpected new file mode line"));
            };
            files[c].source = DEV_NULL.to_string();
            idx += 1;
            continue;
        }
        if DELETED_FILE.is_match(line) {
            let (Some(c), true) = (current, in_info) else {
                return Err(err(idx, "unexpected deleted file mode line"));
            };
            files[c].target = DEV_NULL.to_string();
            idx += 1;
            continue;
        }
        if current.is_some() && in_info && MODE_OR_INDEX.is_match(line) {
            idx += 1;
            continue;
        }
        if let Some(caps) = SOURCE_NAME.captures(line) {
            pending_source = Some(caps[1].to_string());
            if current.is_some() && !in_info {
                current = None;
            }
            idx += 1;
            continue;
        }
        if let Some(caps) = TARGET_NAME.captures(line) {
            let target = caps[1].to_string();
            match current {
                Some(c) if files[c].target != target => {
                    return Err(err(idx, "target without source"))
                }
                Some(_) => {}
                None => {
                    let Some(source) = pending_source.take() else {
                        return Err(err(idx, "target without source"));
                    };
                    files.push(PatchedFile {
                        source,
                        target,
                        n_hunks: 0,
                    });
                    current = Some(files.len() - 1);
                    in_info = false;
                }
            }
            idx += 1;
            continue;
        }
        if let Some(caps) = HUNK_HEADER.captures(line) {
            in_info = false;
            let Some(c) = current else {
                return Err(err(idx, "unexpected hunk"));
            };
            let len = |i: usize| caps.get(i).map_or(Ok(1), |m| m.as_str().parse::<u64>());
            let (Ok(source_len), Ok(target_len)) = (len(2), len(4)) else {
                return Err(err(idx, "hunk header length out of range"));
            };
            idx = skip_hunk_body(&lines, idx + 1, source_len, target_len)
                .map_err(|(at, reason)| err(at, reason))?;
            files[c].n_hunks += 1;
            continue;
        }
        if line.starts_with("\\ No newline at end of file") {
            if current.is_none() {
                return Err(err(idx, "unexpected no-newline marker"));
            }
            idx += 1;
            continue;
        }
        if raw == "\n" && current.is_some_and(|c| files[c].n_hunks > 0) {
            idx += 1;
            continue;
        }
        if !in_info {
            current = None;
            in_info = true;
        }
        if let Some(caps) = BINARY.captures(line) {
            if current.is_none() {
                let source = caps[1].to_string();
                let target = caps
                    .get(2)
                    .map_or_else(|| source.clone(), |m| m.as_str().to_string());
                files.push(PatchedFile {
                    source,
                    target,
                    n_hunks: 0,
                });
            }
            in_info = false;
            current = None;
            idx += 1;
            continue;
        }
        if raw == "GIT binary patch\n" {
            if current.is_none() {
                return Err(err(idx, "unexpected binary patch marker"));
            }
            in_info = false;
            current = None;
        }
        idx += 1;
    }
    Ok(files)
}

/// Consumes one hunk body starting at `start`; returns the index of the first line after it.
fn skip_hunk_body(
    lines: &[&str],
    start: usize,
    source_len: u64,
    target_len: u64,
) -> Result<usize, (usize, &'static str)> {
    let (mut n_source, mut n_target) = (0u64, 0u64);
    let mut idx = start;
    if source_len == 0 && target_len == 0 {
        // The reference still reads one line before checking the counts.
        if idx < lines.len() {
            return body_line_kind(lines[idx]).map_or(
                Err((idx, "hunk diff line expected")),
                |kind| {
                    if kind == '\\' {
                        Ok(idx + 1)
                    } else {
                        Err((idx, "hunk is longer than expected"))
                    }
                },
            );
        }
        return Ok(idx);
    }
    while idx < lines.len() {
        let Some(kind) = body_line_kind(lines[idx]) else {
            return Err((idx, "hunk diff line expected"));
        };
        match kind {
            '+' => n_target += 1,
            '-' => n_source += 1,
            ' ' => {
                n_source += 1;
                n_target += 1;
            }
            _ => {}
        }
        if n_source > source_len || n_target > target_len {
            return Err((idx, "hunk is longer than expected"));
        }
        idx += 1;
        if n_source == source_len && n_target == target_len {
            return Ok(idx);
        }
    }
    Err((idx.saturating_sub(1), "hunk is shorter than expected"))
}

/// The line type of a hunk body line: `+`, `-`, ` ` (context; bare newlines count as context) or `\`.
fn body_line_kind(raw: &str) -> Option<char> {
    match raw.chars().next() {
        Some(c @ ('+' | '-' | ' ' | '\\')) => Some(c),
        Some('\r' | '\n') => Some(' '),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_FILES: &str = "diff --git a/tests/admin_views/tests.py b/tests/admin_views/tests.py\n\
index 1111111..2222222 100644\n--- a/tests/admin_views/tests.py\n+++ b/tests/admin_views/tests.py\n\
@@ -1,2 +1,3 @@\n x\n+diff --git a/fake.py b/fake.py\n y\n\
diff --git a/tests/admin_views/fixtures/x.json b/tests/admin_views/fixtures/x.json\n\
new file mode 100644\nindex 0000000..2222222\n--- /dev/null\n+++ b/tests/admin_views/fixtures/x.json\n\
@@ -0,0 +1 @@\n+{}\n";

    #[test]
    fn directives_follow_the_reference_regex_and_filters() {
        // The regex is unanchored, so the `+diff --git` line inside the hunk counts too (as in the reference).
        assert_eq!(
            test_directives("psf/requests", TWO_FILES),
            vec!["tests/admin_views/tests.py", "fake.py"]
        );
        assert_eq!(
            test_directives("django/django", TWO_FILES),
            vec!["admin_views.tests", "fake"]
        );
        assert_eq!(
            test_directives("swe-bench/humaneval", TWO_FILES),
            vec!["test.py"]
        );
        let spaced = "diff --git a/t/my file.py b/t/my file.py\n";
        assert_eq!(test_directives("x/y", spaced), vec!["t/my file.py"]);
        let csv = "diff --git a/t/datacsv b/t/datacsv\n";
        assert!(test_directives("x/y", csv).is_empty());
    }

    #[test]
    fn modified_files_skip_created_files_and_hunk_content() {
        assert_eq!(
            modified_files(TWO_FILES).unwrap(),
            vec!["tests/admin_views/tests.py"]
        );
    }

    #[test]
    fn modified_files_match_unidiff_on_edge_cases() {
        // Expected values were produced by swebench 4.1.0's get_modified_files (unidiff 1.0.1).
        let cases: &[(&str, &[&str])] = &[
            ("diff --git a/tests/old.py b/tests/new.py\nsimilarity index 100%\nrename from tests/old.py\nrename to tests/new.py\n", &["tests/old.py"]),
            ("diff --git a/tests/x.py b/tests/x.py\nold mode 100644\nnew mode 100755\n", &["tests/x.py"]),
            ("diff --git a/tests/img.png b/tests/img.png\nindex 1111111..2222222 100644\nBinary files a/tests/img.png and b/tests/img.png differ\n", &["tests/img.png"]),
            ("diff --git a/tests/img.png b/tests/img.png\nnew file mode 100644\nindex 0000000..2222222\nBinary files /dev/null and b/tests/img.png differ\n", &[]),
            ("diff --git a/tests/gone.py b/tests/gone.py\ndeleted file mode 100644\nindex 1111111..0000000\n--- a/tests/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n", &["tests/gone.py"]),
            ("diff --git a/tests/__init__.py b/tests/__init__.py\nnew file mode 100644\nindex 0000000..e69de29\n", &[]),
            ("--- a/tests/t.py\n+++ b/tests/t.py\n@@ -1 +1 @@\n-x\n+y\n", &["tests/t.py"]),
            ("diff --git tests/t.py tests/t.py\n--- tests/t.py\n+++ tests/t.py\n@@ -1 +1 @@\n-x\n+y\n", &[]),
            ("--- a/tests/t.py\t2020-01-01 00:00:00\n+++ b/tests/t.py\t2020-01-01\n@@ -1 +1 @@\n-x\n+y\n", &["tests/t.py"]),
            ("diff --git a/tests/my file.py b/tests/my file.py\n--- a/tests/my file.py\n+++ b/tests/my file.py\n@@ -1 +1 @@\n-x\n+y\n", &["tests/my file.py"]),
            ("diff --git a/tests/b.bin b/tests/b.bin\nindex 1..2 100644\nGIT binary patch\nliteral 3\nKcmZ?wU;qFB0RR91\n\nliteral 0\nHcmV?d00001\n\n", &["tests/b.bin"]),
        ];
        for (patch, expected) in cases {
            assert_eq!(modified_files(patch).unwrap(), *expected, "{patch}");
        }
    }

    #[test]
    fn malformed_hunks_are_errors() {
        let short = "--- a/t.py\n+++ b/t.py\n@@ -1,3 +1,3 @@\n x\n";
        assert!(modified_files(short).is_err());
        let orphan = "+++ b/t.py\n";
        assert_eq!(modified_files(orphan).unwrap_err().line_no, 1);
    }
}
