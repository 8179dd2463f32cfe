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

use crate::diff::{git_header_targets_anywhere, parse, Dialect, DiffError};

/// File endings the reference drops from the directives (note `csv` has no dot in the reference).
pub const NON_TEST_EXTS: [&str; 11] = [
    ".json", ".png", "csv", ".txt", ".md", ".jpg", ".jpeg", ".pkl", ".yml", ".yaml", ".toml",
];

/// The test directives of a test patch for a repository (`get_test_directives`).
pub fn test_directives(repo: &str, test_patch: &str) -> Vec<String> {
    if repo == "swe-bench/humaneval" {
        return vec!["test.py".to_string()];
    }
    let paths = git_header_targets_anywhere(test_patch)
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

/// The files a patch modifies or deletes, by their path before the patch (`get_modified_files`): the source side
/// of each file as unidiff reads it ([`Dialect::Unidiff`]), leaving out created files (`/dev/null`) and any path
/// without the `a/` prefix.
pub fn modified_files(patch: &str) -> Result<Vec<String>, DiffError> {
    Ok(parse(patch, Dialect::Unidiff)?
        .into_iter()
        .filter_map(|f| f.source)
        .filter(|source| source != "/dev/null")
        .filter_map(|source| source.strip_prefix("a/").map(str::to_string))
        .collect())
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
        assert!(matches!(
            modified_files(orphan),
            Err(DiffError::Unexpected { line_no: 1, .. })
        ));
    }
}
