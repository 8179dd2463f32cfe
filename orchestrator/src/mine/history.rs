//! Candidates for issue-fix tasks from a repository's history, read with git2 on the host (no Docker here).
//!
//! [`walk`] follows first-parent history from `to` back to `from` (exclusive, as in `from..to`) or to the root, and
//! diffs each commit against its first parent (a merge's combined change is that diff too). A commit is a
//! [`Candidate`] when its diff changes both test files and non-test ("source") files, as [`PathRules`] tell them
//! apart; its diff is split into `patch` (source files) and `test_patch` (test files), each a unified diff that
//! `git apply` takes at the parent commit. Every other commit is a [`Rejected`] with a [`RejectReason`].
//!
//! Default test rules, as SWE-bench's: a path with a directory component `test`, `tests` or `testing`, or a file
//! named `test_*.py`, `*_test.py` or `conftest.py`. [`PathRules::extra_test_globs`] adds globs over the whole path
//! (`*` and `?` within one component, `**` across components).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use git2::{Commit, Delta, Diff, DiffOptions, Oid, Patch, Repository};

use crate::trajectory::record::rfc3339_millis;

/// Which commits to walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevRange {
    /// First-parent history of `to`, stopping at `from` or any ancestor of it (`from..to`); the whole first-parent
    /// history when `from` is `None`.
    Revs { from: Option<String>, to: String },
    /// First-parent history of `to` whose commit times (committer time, seconds since the epoch) fall in
    /// `since..=until` (an absent bound is open).
    Dates {
        to: String,
        since: Option<i64>,
        until: Option<i64>,
    },
}

/// How paths are told apart into tests and source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRules {
    /// A path with a directory component named one of these is a test file.
    pub test_dirs: Vec<String>,
    /// A file whose name (last component) matches one of these globs is a test file.
    pub test_file_globs: Vec<String>,
    /// A path matching one of these globs (whole path) is a test file as well.
    pub extra_test_globs: Vec<String>,
}

impl Default for PathRules {
    fn default() -> Self {
        Self {
            test_dirs: ["test", "tests", "testing"].map(String::from).to_vec(),
            test_file_globs: ["test_*.py", "*_test.py", "conftest.py"]
                .map(String::from)
                .to_vec(),
            extra_test_globs: Vec::new(),
        }
    }
}

impl PathRules {
    /// Whether `path` (repository-relative, `/`-separated) is a test file.
    pub fn is_test(&self, path: &str) -> bool {
        let components: Vec<&str> = path.split('/').collect();
        let (file, dirs) = components
            .split_last()
            .expect("split always yields one item");
        dirs.iter()
            .any(|dir| self.test_dirs.iter().any(|test_dir| test_dir == dir))
            || self
                .test_file_globs
                .iter()
                .any(|glob| glob_match(glob, file))
            || self
                .extra_test_globs
                .iter()
                .any(|glob| glob_match(glob, path))
    }
}

/// Size caps: a commit over either is rejected as [`RejectReason::TooLarge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of `patch` + `test_patch`.
    pub max_patch_bytes: usize,
    /// Files changed (source + tests).
    pub max_files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_patch_bytes: 512 * 1024,
            max_files: 100,
        }
    }
}

/// A commit whose change touches both source and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub commit: String,
    /// The first parent: the task's `base_commit`.
    pub parent: String,
    /// The source part of the diff (unified, `git apply`-able at `parent`).
    pub patch: String,
    /// The test part of the diff.
    pub test_patch: String,
    /// The commit message (a merge's message: for a GitHub merge, "Merge pull request #N …" and the PR body).
    pub problem_statement: String,
    /// Committer time, RFC 3339 (`trajectory::record::rfc3339_millis`).
    pub created_at: String,
    pub is_merge: bool,
    /// A pull-request number the message names ("Merge pull request #N" or a squash title ending "(#N)").
    pub pr_number: Option<u64>,
    pub touched_test_files: Vec<String>,
    pub touched_source_files: Vec<String>,
}

/// Why a commit is not a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Changes no test file.
    NoTests,
    /// Changes test files only.
    NoSource,
    /// A changed file is binary or not UTF-8 (no text patch to carry in a row).
    Binary,
    /// Over [`Limits`].
    TooLarge,
    /// A merge with no change against its first parent.
    MergeWithoutChanges,
    /// A non-merge commit with no change.
    Empty,
    /// A root commit: no parent to be the base.
    NoParent,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoTests => "no_tests",
            Self::NoSource => "no_source",
            Self::Binary => "binary",
            Self::TooLarge => "too_large",
            Self::MergeWithoutChanges => "merge_without_changes",
            Self::Empty => "empty",
            Self::NoParent => "no_parent",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub commit: String,
    pub reason: RejectReason,
    /// What tripped the reason (a file, a size), empty when the reason says it all.
    pub detail: String,
}

/// The outcome of a walk, newest commit first (the walk order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walk {
    pub candidates: Vec<Candidate>,
    pub rejected: Vec<Rejected>,
    /// Commits looked at (candidates + rejected).
    pub scanned: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MineError {
    #[error("opening the repository {path}: {source}")]
    Open { path: String, source: git2::Error },
    #[error("resolving {rev:?} to a commit: {source}")]
    Rev { rev: String, source: git2::Error },
    #[error("reading history at commit {commit}: {source}")]
    Git { commit: String, source: git2::Error },
}

/// [`walk_with`] under the default [`Limits`].
pub fn walk(repo_path: &Path, range: &RevRange, rules: &PathRules) -> Result<Walk, MineError> {
    walk_with(repo_path, range, rules, Limits::default())
}

/// Candidates and rejected commits of `range` in the repository at `repo_path` (a work tree or a `.git`).
pub fn walk_with(
    repo_path: &Path,
    range: &RevRange,
    rules: &PathRules,
    limits: Limits,
) -> Result<Walk, MineError> {
    let repo = Repository::open(repo_path).map_err(|source| MineError::Open {
        path: repo_path.display().to_string(),
        source,
    })?;
    let (to, stop, since, until) = match range {
        RevRange::Revs { from, to } => {
            let stop = match from {
                Some(from) => ancestors_of(&repo, resolve(&repo, from)?)?,
                None => HashSet::new(),
            };
            (to, stop, None, None)
        }
        RevRange::Dates { to, since, until } => (to, HashSet::new(), *since, *until),
    };
    let mut next = Some(resolve(&repo, to)?);
    let mut out = Walk::default();
    while let Some(oid) = next {
        if stop.contains(&oid) {
            break;
        }
        let git = |source| MineError::Git {
            commit: oid.to_string(),
            source,
        };
        let commit = repo.find_commit(oid).map_err(git)?;
        next = commit.parent_id(0).ok();
        let time = commit.time().seconds();
        if since.is_some_and(|since| time < since) || until.is_some_and(|until| time > until) {
            continue;
        }
        out.scanned += 1;
        match examine(&repo, &commit, rules, limits).map_err(git)? {
            Ok(candidate) => out.candidates.push(candidate),
            Err((reason, detail)) => out.rejected.push(Rejected {
                commit: oid.to_string(),
                reason,
                detail,
            }),
        }
    }
    Ok(out)
}

fn resolve(repo: &Repository, rev: &str) -> Result<Oid, MineError> {
    repo.revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
        .map(|commit| commit.id())
        .map_err(|source| MineError::Rev {
            rev: rev.to_string(),
            source,
        })
}

/// `from` and every commit it reaches (what `from..to` excludes).
fn ancestors_of(repo: &Repository, from: Oid) -> Result<HashSet<Oid>, MineError> {
    let git = |source| MineError::Git {
        commit: from.to_string(),
        source,
    };
    let mut revwalk = repo.revwalk().map_err(git)?;
    revwalk.push(from).map_err(git)?;
    revwalk.map(|oid| oid.map_err(git)).collect()
}

type Verdict = Result<Candidate, (RejectReason, String)>;

/// One commit against its first parent: a candidate or the reason it is not one.
fn examine(
    repo: &Repository,
    commit: &Commit<'_>,
    rules: &PathRules,
    limits: Limits,
) -> Result<Verdict, git2::Error> {
    let Ok(parent) = commit.parent(0) else {
        return Ok(Err((RejectReason::NoParent, String::new())));
    };
    let is_merge = commit.parent_count() > 1;
    let mut options = DiffOptions::new();
    options.ignore_submodules(true);
    let diff = repo.diff_tree_to_tree(
        Some(&parent.tree()?),
        Some(&commit.tree()?),
        Some(&mut options),
    )?;
    if diff.deltas().len() == 0 {
        let reason = if is_merge {
            RejectReason::MergeWithoutChanges
        } else {
            RejectReason::Empty
        };
        return Ok(Err((reason, String::new())));
    }
    if diff.deltas().len() > limits.max_files {
        return Ok(Err((
            RejectReason::TooLarge,
            format!(
                "{} files changed (max {})",
                diff.deltas().len(),
                limits.max_files
            ),
        )));
    }
    let split = match split_diff(&diff, rules)? {
        Ok(split) => split,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if split.test_files.is_empty() {
        return Ok(Err((RejectReason::NoTests, String::new())));
    }
    if split.source_files.is_empty() {
        return Ok(Err((RejectReason::NoSource, String::new())));
    }
    let bytes = split.patch.len() + split.test_patch.len();
    if bytes > limits.max_patch_bytes {
        return Ok(Err((
            RejectReason::TooLarge,
            format!("{bytes} patch bytes (max {})", limits.max_patch_bytes),
        )));
    }
    let message = String::from_utf8_lossy(commit.message_bytes())
        .trim()
        .to_string();
    let seconds = commit.time().seconds();
    let at = if seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        UNIX_EPOCH
    };
    Ok(Ok(Candidate {
        commit: commit.id().to_string(),
        parent: parent.id().to_string(),
        patch: split.patch,
        test_patch: split.test_patch,
        pr_number: pr_number(&message),
        problem_statement: message,
        created_at: rfc3339_millis(at),
        is_merge,
        touched_test_files: split.test_files,
        touched_source_files: split.source_files,
    }))
}

struct Split {
    patch: String,
    test_patch: String,
    source_files: Vec<String>,
    test_files: Vec<String>,
}

/// The diff's files into source and tests, each file's text appended to its side. A rename whose either path is a
/// test counts as a test (no rename detection is asked for, so renames come as a delete and an add).
fn split_diff(
    diff: &Diff<'_>,
    rules: &PathRules,
) -> Result<Result<Split, (RejectReason, String)>, git2::Error> {
    let mut split = Split {
        patch: String::new(),
        test_patch: String::new(),
        source_files: Vec::new(),
        test_files: Vec::new(),
    };
    for index in 0..diff.deltas().len() {
        let delta = diff.get_delta(index).expect("index within deltas().len()");
        if delta.status() == Delta::Unmodified {
            continue;
        }
        let paths: Vec<String> = [delta.old_file().path(), delta.new_file().path()]
            .into_iter()
            .flatten()
            .map(|path| path.to_string_lossy().replace('\\', "/"))
            .collect();
        let shown = delta
            .new_file()
            .path()
            .or(delta.old_file().path())
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        let patch = Patch::from_diff(diff, index)?;
        let binary = delta.flags().is_binary()
            || patch
                .as_ref()
                .is_some_and(|patch| patch.delta().flags().is_binary());
        let Some(mut patch) = patch.filter(|_| !binary) else {
            return Ok(Err((RejectReason::Binary, shown)));
        };
        let Ok(text) = String::from_utf8(patch.to_buf()?.to_vec()) else {
            return Ok(Err((RejectReason::Binary, format!("{shown} (not UTF-8)"))));
        };
        if paths.iter().any(|path| rules.is_test(path)) {
            split.test_patch.push_str(&text);
            split.test_files.push(shown);
        } else {
            split.patch.push_str(&text);
            split.source_files.push(shown);
        }
    }
    Ok(Ok(split))
}

/// "Merge pull request #123 from …" or a squash-merge title ending "(#123)".
fn pr_number(message: &str) -> Option<u64> {
    let title = message.lines().next().unwrap_or_default().trim();
    let digits = |text: &str| -> Option<u64> {
        let end = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        text[..end].parse().ok()
    };
    if let Some(rest) = title.strip_prefix("Merge pull request #") {
        return digits(rest);
    }
    let inner = title.strip_suffix(')')?;
    let start = inner.rfind("(#")?;
    let number = &inner[start + 2..];
    number
        .bytes()
        .all(|byte| byte.is_ascii_digit())
        .then(|| number.parse().ok())
        .flatten()
}

/// `glob` against `text`: `**` matches anything (with `/`), `*` anything but `/`, `?` one character but `/`.
fn glob_match(glob: &str, text: &str) -> bool {
    let glob: Vec<char> = glob.chars().collect();
    let text: Vec<char> = text.chars().collect();
    glob_chars(&glob, &text)
}

fn glob_chars(glob: &[char], text: &[char]) -> bool {
    match glob {
        [] => text.is_empty(),
        ['*', '*', rest @ ..] => {
            // "**/" also matches no directory at all.
            let rest_after_slash = rest.strip_prefix(&['/']).unwrap_or(rest);
            (0..=text.len()).any(|skip| {
                glob_chars(rest, &text[skip..]) || glob_chars(rest_after_slash, &text[skip..])
            })
        }
        ['*', rest @ ..] => (0..=text.len())
            .take_while(|&skip| skip == 0 || text[skip - 1] != '/')
            .any(|skip| glob_chars(rest, &text[skip..])),
        ['?', rest @ ..] => text
            .split_first()
            .is_some_and(|(first, tail)| *first != '/' && glob_chars(rest, tail)),
        [literal, rest @ ..] => text
            .split_first()
            .is_some_and(|(first, tail)| first == literal && glob_chars(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_are_swe_bench_s() {
        let rules = PathRules::default();
        for test in [
            "tests/test_a.py",
            "pkg/tests/helpers.py",
            "src/testing/util.py",
            "test/data/x.json",
            "pkg/test_mod.py",
            "pkg/mod_test.py",
            "conftest.py",
            "pkg/conftest.py",
        ] {
            assert!(rules.is_test(test), "{test}");
        }
        for source in [
            "pkg/mod.py",
            "pkg/testsuite.py",
            "pkg/contest.py",
            "README.md",
            "tests.py",
            "pkg/test_data.txt",
            "attest/x.py",
        ] {
            assert!(!rules.is_test(source), "{source}");
        }
        let extra = PathRules {
            extra_test_globs: vec!["**/fixtures/**".into(), "spec/*.rb".into()],
            ..PathRules::default()
        };
        assert!(extra.is_test("a/b/fixtures/c/d.txt"));
        assert!(extra.is_test("fixtures/d.txt"));
        assert!(extra.is_test("spec/a_spec.rb"));
        assert!(!extra.is_test("spec/sub/a_spec.rb"));
        assert!(!extra.is_test("pkg/mod.py"));
    }

    #[test]
    fn pr_numbers() {
        assert_eq!(
            pr_number("Merge pull request #12 from a/b\n\nbody"),
            Some(12)
        );
        assert_eq!(pr_number("Fix the parser (#345)\n\nmore"), Some(345));
        assert_eq!(pr_number("Fix the parser (#34x)"), None);
        assert_eq!(pr_number("Fix the parser"), None);
    }

    use crate::mine::test_repo::TestRepo as Fixture;

    const MOD_V1: &str = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n";
    const MOD_V2: &str = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n";
    const TEST_V1: &str =
        "from pkg.mod import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n";
    const TEST_V2: &str = "from pkg.mod import add, sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n\n\ndef test_add():\n    assert add(1, 2) == 3\n";

    /// root → fix (source + test) → docs only → tests only → [merge of a branch with source + test] → empty merge.
    fn history(fixture: &mut Fixture) -> Vec<Oid> {
        let root = fixture.commit(
            &[("pkg/mod.py", MOD_V1), ("tests/test_mod.py", TEST_V1)],
            "Initial",
            &[],
        );
        let fix = fixture.commit(
            &[("pkg/mod.py", MOD_V2), ("tests/test_mod.py", TEST_V2)],
            "Fix add\n\nadd() subtracted instead of adding.",
            &[root],
        );
        let docs = fixture.commit(
            &[
                ("pkg/mod.py", MOD_V2),
                ("tests/test_mod.py", TEST_V2),
                ("README.md", "# pkg\n"),
            ],
            "Docs",
            &[fix],
        );
        let only_tests_files = [
            ("pkg/mod.py", MOD_V2),
            ("tests/test_mod.py", TEST_V2),
            ("README.md", "# pkg\n"),
            ("tests/conftest.py", "import sys\n"),
        ];
        let only_tests = fixture.commit(&only_tests_files, "More test set-up", &[docs]);
        // A branch off `docs` that adds mul() with its test, merged after `only_tests`.
        let mod_v3 = format!("{MOD_V2}\n\ndef mul(a, b):\n    return a * b\n");
        let test_v3 = format!("{TEST_V2}\n\ndef test_mul():\n    assert mul(2, 3) == 6\n")
            .replace("import add, sub", "import add, mul, sub");
        let branch = fixture.commit(
            &[
                ("pkg/mod.py", &mod_v3),
                ("tests/test_mod.py", &test_v3),
                ("README.md", "# pkg\n"),
            ],
            "Add mul",
            &[docs],
        );
        let merged = [
            ("pkg/mod.py", mod_v3.as_str()),
            ("tests/test_mod.py", test_v3.as_str()),
            ("README.md", "# pkg\n"),
            ("tests/conftest.py", "import sys\n"),
        ];
        let merge = fixture.commit(
            &merged,
            "Merge pull request #7 from dev/mul\n\nAdd mul()\n\nThe PR body: multiplication was missing.",
            &[only_tests, branch],
        );
        // A merge of a branch whose change is already in: nothing against the first parent.
        let empty_merge = fixture.commit(&merged, "Merge branch 'old'", &[merge, fix]);
        vec![root, fix, docs, only_tests, branch, merge, empty_merge]
    }

    #[test]
    fn walk_finds_candidates_splits_them_and_the_patches_apply_at_the_parent() {
        let mut fixture = Fixture::new();
        let oids = history(&mut fixture);
        let [root, fix, docs, only_tests, _branch, merge, empty_merge] = oids[..] else {
            unreachable!()
        };
        let head = empty_merge.to_string();
        let walk = walk(
            fixture.path(),
            &RevRange::Revs {
                from: None,
                to: head.clone(),
            },
            &PathRules::default(),
        )
        .unwrap();
        // First-parent: the branch commit is never visited on its own.
        assert_eq!(walk.scanned, 6);
        let got: Vec<(String, &str)> = walk
            .rejected
            .iter()
            .map(|rejected| (rejected.commit.clone(), rejected.reason.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (empty_merge.to_string(), "merge_without_changes"),
                (only_tests.to_string(), "no_source"),
                (docs.to_string(), "no_tests"),
                (root.to_string(), "no_parent"),
            ]
        );
        let commits: Vec<&str> = walk
            .candidates
            .iter()
            .map(|candidate| candidate.commit.as_str())
            .collect();
        assert_eq!(commits, [merge.to_string(), fix.to_string()]);

        let merge_candidate = &walk.candidates[0];
        assert!(merge_candidate.is_merge);
        assert_eq!(merge_candidate.parent, only_tests.to_string());
        assert_eq!(merge_candidate.pr_number, Some(7));
        assert!(merge_candidate
            .problem_statement
            .contains("The PR body: multiplication was missing."));
        assert_eq!(merge_candidate.touched_source_files, ["pkg/mod.py"]);
        assert_eq!(merge_candidate.touched_test_files, ["tests/test_mod.py"]);
        assert!(merge_candidate.patch.contains("+def mul(a, b):"));
        assert!(!merge_candidate.patch.contains("test_mul"));
        assert!(merge_candidate.test_patch.contains("+def test_mul():"));
        // The merge's combined change against its first parent: no conftest.py (already at the parent).
        assert!(!merge_candidate.test_patch.contains("conftest"));

        let fix_candidate = &walk.candidates[1];
        assert!(!fix_candidate.is_merge);
        assert_eq!(fix_candidate.parent, root.to_string());
        assert_eq!(
            fix_candidate.problem_statement,
            "Fix add\n\nadd() subtracted instead of adding."
        );
        assert_eq!(fix_candidate.pr_number, None);
        // The second commit of the fixture: 1_700_000_000 + 2 × 60.
        assert_eq!(fix_candidate.created_at, "2023-11-14T22:15:20.000Z");
        assert!(fix_candidate
            .patch
            .starts_with("diff --git a/pkg/mod.py b/pkg/mod.py\n"));
        assert!(fix_candidate
            .patch
            .contains("-    return a - b\n+    return a + b\n"));
        assert!(fix_candidate
            .test_patch
            .starts_with("diff --git a/tests/test_mod.py b/tests/test_mod.py\n"));

        for candidate in &walk.candidates {
            fixture.assert_applies_at(&candidate.parent, &[&candidate.patch]);
            fixture.assert_applies_at(&candidate.parent, &[&candidate.test_patch]);
            // Both applied make the commit's tree exactly.
            fixture.assert_applies_at(
                &candidate.parent,
                &[&candidate.test_patch, &candidate.patch],
            );
            assert_eq!(fixture.tree_of(&candidate.commit), "");
            // (and the check can fail: the tree is not the parent's)
            assert_ne!(fixture.tree_of(&candidate.parent), "");
        }
    }

    #[test]
    fn ranges_stop_at_from_and_filter_by_date() {
        let mut fixture = Fixture::new();
        let oids = history(&mut fixture);
        let (fix, docs, merge, head) = (oids[1], oids[2], oids[5], oids[6]);
        let walk_of =
            |range: RevRange| walk(fixture.path(), &range, &PathRules::default()).unwrap();

        let from_docs = walk_of(RevRange::Revs {
            from: Some(docs.to_string()),
            to: head.to_string(),
        });
        assert_eq!(from_docs.scanned, 3);
        assert_eq!(from_docs.candidates.len(), 1);
        assert_eq!(from_docs.candidates[0].commit, merge.to_string());

        // From the side branch's tip: the fix and everything before it are its ancestors.
        let from_branch = walk_of(RevRange::Revs {
            from: Some(oids[4].to_string()),
            to: head.to_string(),
        });
        assert_eq!(from_branch.scanned, 3);

        let fix_time = fixture.repo.find_commit(fix).unwrap().time().seconds();
        let dates = walk_of(RevRange::Dates {
            to: head.to_string(),
            since: Some(fix_time),
            until: Some(fix_time + 60),
        });
        assert_eq!(dates.scanned, 2);
        assert_eq!(dates.candidates.len(), 1);
        assert_eq!(dates.candidates[0].commit, fix.to_string());

        let error = walk(
            fixture.path(),
            &RevRange::Revs {
                from: None,
                to: "no-such-ref".into(),
            },
            &PathRules::default(),
        )
        .unwrap_err();
        assert!(matches!(error, MineError::Rev { .. }), "{error}");
    }

    #[test]
    fn added_deleted_and_moved_files_apply() {
        let mut fixture = Fixture::new();
        let root = fixture.commit(
            &[
                ("pkg/a.py", MOD_V1),
                ("tests/test_old.py", TEST_V1),
                ("setup.py", "x = 1\n"),
            ],
            "root",
            &[],
        );
        let change = fixture.commit(
            &[
                ("pkg/b.py", MOD_V1),
                ("pkg/new.py", "y = 2\n"),
                ("tests/test_new.py", TEST_V2),
                ("setup.py", "x = 1\n"),
            ],
            "Move a to b, add new, replace the tests",
            &[root],
        );
        let walk = walk(
            fixture.path(),
            &RevRange::Revs {
                from: None,
                to: change.to_string(),
            },
            &PathRules::default(),
        )
        .unwrap();
        assert_eq!(walk.candidates.len(), 1);
        let candidate = &walk.candidates[0];
        assert_eq!(
            candidate.touched_source_files,
            ["pkg/a.py", "pkg/b.py", "pkg/new.py"]
        );
        assert_eq!(
            candidate.touched_test_files,
            ["tests/test_new.py", "tests/test_old.py"]
        );
        assert!(candidate.patch.contains("deleted file mode 100644"));
        assert!(candidate.patch.contains("new file mode 100644"));
        fixture.assert_applies_at(
            &candidate.parent,
            &[&candidate.test_patch, &candidate.patch],
        );
        assert_eq!(fixture.tree_of(&candidate.commit), "");
        // (and the check can fail: the tree is not the parent's)
        assert_ne!(fixture.tree_of(&candidate.parent), "");
    }

    #[test]
    fn binary_and_too_large_are_rejected() {
        let mut fixture = Fixture::new();
        let root = fixture.commit(
            &[("pkg/a.py", "x = 1\n"), ("tests/test_a.py", "\n")],
            "root",
            &[],
        );
        let binary = fixture.commit(
            &[
                ("pkg/a.py", "x = 2\n"),
                ("tests/test_a.py", "\n"),
                ("pkg/data.bin", "\0\u{1}\u{2}binary\0"),
            ],
            "binary",
            &[root],
        );
        let big_text = "y = 0\n".repeat(1000);
        let big = fixture.commit(
            &[
                ("pkg/a.py", &big_text),
                ("tests/test_a.py", "def test_a():\n    pass\n"),
                ("pkg/data.bin", "\0\u{1}\u{2}binary\0"),
            ],
            "big",
            &[binary],
        );
        let walk = walk_with(
            fixture.path(),
            &RevRange::Revs {
                from: Some(root.to_string()),
                to: big.to_string(),
            },
            &PathRules::default(),
            Limits {
                max_patch_bytes: 4096,
                max_files: 100,
            },
        )
        .unwrap();
        let got: Vec<(String, &str, &str)> = walk
            .rejected
            .iter()
            .map(|rejected| {
                (
                    rejected.commit.clone(),
                    rejected.reason.as_str(),
                    rejected.detail.as_str(),
                )
            })
            .collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, big.to_string());
        assert_eq!(got[0].1, "too_large");
        assert_eq!(got[1], (binary.to_string(), "binary", "pkg/data.bin"));
        assert!(walk.candidates.is_empty());
    }
    /// `SWE_ENV_MINE_REPO=/path/to/repo cargo test -p swe-env --lib mine::history -- --ignored --nocapture`: walks
    /// a real repository's first-parent history, prints the counts and the commits scanned per second, and checks
    /// that every candidate's `test_patch` then `patch` apply at its parent (`git apply --cached --check` against a
    /// throw-away index of the parent tree: no work tree touched).
    #[test]
    #[ignore = "needs SWE_ENV_MINE_REPO"]
    fn walk_a_real_repository() {
        let Ok(repo) = std::env::var("SWE_ENV_MINE_REPO") else {
            return;
        };
        let started = std::time::Instant::now();
        let walk = walk(
            Path::new(&repo),
            &RevRange::Revs {
                from: None,
                to: "HEAD".into(),
            },
            &PathRules::default(),
        )
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let mut reasons = std::collections::BTreeMap::<&str, usize>::new();
        for rejected in &walk.rejected {
            *reasons.entry(rejected.reason.as_str()).or_default() += 1;
        }
        println!(
            "{repo}: {} commits in {seconds:.3} s ({:.0}/s), {} candidates, rejected {reasons:?}",
            walk.scanned,
            walk.scanned as f64 / seconds,
            walk.candidates.len()
        );
        let index = tempfile::NamedTempFile::new().unwrap();
        for candidate in &walk.candidates {
            let git = |args: &[&str], stdin: &str| {
                let output = crate::mine::test_repo::git_in(
                    Path::new(&repo),
                    args,
                    stdin,
                    &[("GIT_INDEX_FILE", index.path())],
                );
                assert!(
                    output.status.success(),
                    "{} {args:?}: {}",
                    candidate.commit,
                    String::from_utf8_lossy(&output.stderr)
                );
            };
            git(&["read-tree", &candidate.parent], "");
            git(&["apply", "--cached", "-"], &candidate.test_patch);
            git(&["apply", "--cached", "-"], &candidate.patch);
        }
        for rejected in &walk.rejected {
            if rejected.reason == RejectReason::Binary {
                println!("binary: {} {}", rejected.commit, rejected.detail);
            }
        }
        println!(
            "all {} candidates apply at their parents",
            walk.candidates.len()
        );
    }
}
