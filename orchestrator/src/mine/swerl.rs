//! SWE-RL records from mined history: for every candidate commit, the issue text (the commit message), the code
//! context (each source file the oracle patch touches, as it is at the base commit) and the oracle patch, the
//! inputs SWE-RL's patch-similarity reward (`swe_env_grading::similarity::swe_rl_similarity`) needs. Read with git2
//! on the host; no Docker.
//!
//! Also the naming rules every mined artefact shares: [`instance_id`] and the image [`slug`].

use std::collections::HashSet;
use std::path::Path;

use git2::{ObjectType, Oid, Repository, Tree};
use serde::{Deserialize, Serialize};

use crate::mine::history;

/// One line of `swerl.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweRlRecord {
    pub instance_id: String,
    /// `owner/name`.
    pub repo: String,
    /// The fix commit's first parent.
    pub base_commit: String,
    /// The fix commit's committer time, RFC 3339.
    pub created_at: String,
    pub problem_statement: String,
    /// The source files the oracle patch touches, as they are at `base_commit`, in patch order. Files the patch
    /// adds are absent (nothing at the base), and so are binary or non-UTF-8 files.
    pub code_context: Vec<ContextFile>,
    /// The source part of the fix (tests excluded), `git apply`-able at `base_commit`.
    pub oracle_patch: String,
    /// Whether the candidate became a task (passed Docker validation).
    pub validated: bool,
}

/// A file's path (repository-relative, `/`-separated) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextFile {
    pub path: String,
    pub content: String,
}

/// One record per candidate, in the candidates' order; `validated` is whether the candidate's
/// [`instance_id`] is in `validated_ids`.
pub fn records(
    repo: &Path,
    repo_name: &str,
    candidates: &[history::Candidate],
    validated_ids: &HashSet<String>,
) -> Result<Vec<SweRlRecord>, history::MineError> {
    let repository = Repository::open(repo).map_err(|source| history::MineError::Open {
        path: repo.display().to_string(),
        source,
    })?;
    candidates
        .iter()
        .map(|candidate| {
            let git = |source| history::MineError::Git {
                commit: candidate.commit.clone(),
                source,
            };
            let base = Oid::from_str(&candidate.parent)
                .and_then(|oid| repository.find_commit(oid))
                .and_then(|commit| commit.tree())
                .map_err(git)?;
            let code_context = candidate
                .touched_source_files
                .iter()
                .map(|path| file_at(&repository, &base, path).map_err(git))
                .filter_map(Result::transpose)
                .collect::<Result<Vec<_>, _>>()?;
            let instance_id = instance_id(repo_name, &candidate.commit);
            Ok(SweRlRecord {
                validated: validated_ids.contains(&instance_id),
                instance_id,
                repo: repo_name.to_string(),
                base_commit: candidate.parent.clone(),
                created_at: candidate.created_at.clone(),
                problem_statement: candidate.problem_statement.clone(),
                code_context,
                oracle_patch: candidate.patch.clone(),
            })
        })
        .collect()
}

/// `path`'s text in `tree`; `None` when absent there (added by the patch), not a file, binary or not UTF-8.
fn file_at(
    repository: &Repository,
    tree: &Tree<'_>,
    path: &str,
) -> Result<Option<ContextFile>, git2::Error> {
    let entry = match tree.get_path(Path::new(path)) {
        Ok(entry) => entry,
        Err(error) if error.code() == git2::ErrorCode::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    if entry.kind() != Some(ObjectType::Blob) {
        return Ok(None);
    }
    let blob = repository.find_blob(entry.id())?;
    if blob.is_binary() {
        return Ok(None);
    }
    Ok(String::from_utf8(blob.content().to_vec())
        .ok()
        .map(|content| ContextFile {
            path: path.to_string(),
            content,
        }))
}

/// A history task's instance id: `<owner>__<name>-<commit sha 12>` (SWE-bench's shape). Characters outside
/// `[A-Za-z0-9_.-]` become `-`, so the id is safe in container names; a `repo_name` without `/` is used whole.
pub fn instance_id(repo_name: &str, commit: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    let repo = match repo_name.split_once('/') {
        Some((owner, name)) => format!("{}__{}", clean(owner), clean(name)),
        None => clean(repo_name),
    };
    let sha: String = commit.chars().take(12).collect();
    format!("{repo}-{}", clean(&sha))
}

/// The longest [`slug`] (Docker refuses a repository name over 255 characters; the image names add a registry-less
/// namespace and a suffix).
pub const SLUG_MAX: usize = 100;

/// The image-name slug of a repository: lowercased; every run of characters outside `[a-z0-9]` (`/`, `.`, `_`, `-`,
/// spaces, anything else) becomes one `-`, none at either end (Docker's path-component grammar refuses `..`, `___`,
/// `_-` and a separator at an end); at most [`SLUG_MAX`] characters; an empty result is `repo`.
pub fn slug(repo_name: &str) -> String {
    let mut slug = String::new();
    let mut separator = false;
    for c in repo_name.to_lowercase().chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            let dash = separator && !slug.is_empty();
            if slug.len() + usize::from(dash) + 1 > SLUG_MAX {
                break;
            }
            if dash {
                slug.push('-');
            }
            separator = false;
            slug.push(c);
        } else {
            separator = true;
        }
    }
    if slug.is_empty() {
        "repo".to_string()
    } else {
        slug
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::Command;

    use git2::{Commit, Signature, Time};
    use swe_env_grading::similarity::swe_rl_similarity;

    /// A repository with two commits: the base, and a fix touching a source file, adding one and changing a test.
    struct Fixture {
        dir: tempfile::TempDir,
        base: Oid,
        fix: Oid,
    }

    const MOD_BASE: &str =
        "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n";
    const MOD_FIX: &str =
        "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n";

    fn commit(
        repo: &Repository,
        files: &[(&str, &[u8])],
        message: &str,
        parents: &[Oid],
        at: i64,
    ) -> Oid {
        let mut index = repo.index().unwrap();
        index.clear().unwrap();
        let workdir = repo.workdir().unwrap().to_path_buf();
        for (path, bytes) in files {
            let full = workdir.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, bytes).unwrap();
            index.add_path(Path::new(path)).unwrap();
        }
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let who = Signature::new("Dev", "dev@example.com", &Time::new(at, 0)).unwrap();
        let parents: Vec<Commit<'_>> = parents
            .iter()
            .map(|oid| repo.find_commit(*oid).unwrap())
            .collect();
        let parents: Vec<&Commit<'_>> = parents.iter().collect();
        repo.commit(Some("HEAD"), &who, &who, message, &tree, &parents)
            .unwrap()
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        let base = commit(
            &repo,
            &[
                ("pkg/mod.py", MOD_BASE.as_bytes()),
                ("pkg/logo.png", b"\x89PNG\r\n\x1a\n\0\0\0binary"),
                ("tests/test_mod.py", b"def test_sub():\n    pass\n"),
            ],
            "Initial",
            &[],
            1_700_000_000,
        );
        let fix = commit(
            &repo,
            &[
                ("pkg/mod.py", MOD_FIX.as_bytes()),
                ("pkg/logo.png", b"\x89PNG\r\n\x1a\n\0\0\0binary"),
                ("pkg/new.py", b"X = 1\n"),
                (
                    "tests/test_mod.py",
                    b"def test_sub():\n    pass\n\n\ndef test_add():\n    pass\n",
                ),
            ],
            "Fix add\n\nadd subtracted.",
            &[base],
            1_700_000_060,
        );
        Fixture { dir, base, fix }
    }

    fn candidates(fixture: &Fixture) -> Vec<history::Candidate> {
        let walk = history::walk(
            fixture.dir.path(),
            &history::RevRange::Revs {
                from: None,
                to: "HEAD".into(),
            },
            &history::PathRules::default(),
        )
        .unwrap();
        assert_eq!(walk.candidates.len(), 1, "{walk:?}");
        walk.candidates
    }

    #[test]
    fn records_carry_the_base_content_of_touched_source_files_only() {
        let fixture = fixture();
        let mut candidates = candidates(&fixture);
        // A binary source file among the touched ones is left out of the context (history rejects such commits;
        // a caller's own candidate may still name one).
        candidates[0]
            .touched_source_files
            .push("pkg/logo.png".into());
        let id = instance_id("acme/Widgets", &fixture.fix.to_string());
        let records = records(
            fixture.dir.path(),
            "acme/Widgets",
            &candidates,
            &HashSet::from([id.clone()]),
        )
        .unwrap();
        assert_eq!(records.len(), 1);
        let record = &records[0];
        assert_eq!(record.instance_id, id);
        assert_eq!(
            record.instance_id,
            format!("acme__Widgets-{}", &fixture.fix.to_string()[..12])
        );
        assert_eq!(record.repo, "acme/Widgets");
        assert_eq!(record.base_commit, fixture.base.to_string());
        assert_eq!(record.problem_statement, "Fix add\n\nadd subtracted.");
        assert!(record.validated);
        assert_eq!(
            record.code_context,
            vec![ContextFile {
                path: "pkg/mod.py".into(),
                content: MOD_BASE.into()
            }],
            "modified source at base; the added pkg/new.py, the test and the binary are absent"
        );
        assert!(record.oracle_patch.contains("+++ b/pkg/new.py"));
        assert!(!record.oracle_patch.contains("tests/test_mod.py"));

        let unvalidated = records_of(&fixture, &candidates, &HashSet::new());
        assert!(!unvalidated[0].validated);

        // One JSON object per line, fields by their contract names.
        let line = serde_json::to_value(record).unwrap();
        for key in [
            "instance_id",
            "repo",
            "base_commit",
            "created_at",
            "problem_statement",
            "code_context",
            "oracle_patch",
            "validated",
        ] {
            assert!(line.get(key).is_some(), "{key} in {line}");
        }
    }

    fn records_of(
        fixture: &Fixture,
        candidates: &[history::Candidate],
        validated: &HashSet<String>,
    ) -> Vec<SweRlRecord> {
        records(fixture.dir.path(), "acme/widgets", candidates, validated).unwrap()
    }

    /// Usable with the existing similarity reward: the oracle patch parses as the gold side, scores the top reward
    /// against itself and the format-error reward for an empty prediction; and the code context is exactly what
    /// the patch needs (applied to the context files it gives the fixed source).
    #[test]
    fn records_work_with_the_swe_rl_similarity_reward() {
        let fixture = fixture();
        let record = records_of(&fixture, &candidates(&fixture), &HashSet::new()).remove(0);
        let itself = swe_rl_similarity(&record.oracle_patch, &record.oracle_patch).unwrap();
        assert_eq!(itself.reward, 1.0);
        assert_eq!(itself.files.len(), 2, "{itself:?}");
        let empty = swe_rl_similarity("", &record.oracle_patch).unwrap();
        assert_eq!(empty.reward, -1.0);
        assert!(empty.format_error.is_some());

        let work = tempfile::tempdir().unwrap();
        for file in &record.code_context {
            let path = work.path().join(&file.path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &file.content).unwrap();
        }
        let patch = work.path().join("oracle.diff");
        std::fs::write(&patch, &record.oracle_patch).unwrap();
        let apply = Command::new("git")
            .arg("-C")
            .arg(work.path())
            .args(["apply", "oracle.diff"])
            .output()
            .unwrap();
        assert!(apply.status.success(), "{apply:?}");
        assert_eq!(
            std::fs::read_to_string(work.path().join("pkg/mod.py")).unwrap(),
            MOD_FIX
        );
        assert_eq!(
            std::fs::read_to_string(work.path().join("pkg/new.py")).unwrap(),
            "X = 1\n"
        );
    }

    #[test]
    fn missing_repository_and_unknown_base_are_errors() {
        let fixture = fixture();
        let mut candidates = candidates(&fixture);
        let missing = records(
            &fixture.dir.path().join("nope"),
            "a/b",
            &candidates,
            &HashSet::new(),
        );
        assert!(
            matches!(missing, Err(history::MineError::Open { .. })),
            "{missing:?}"
        );
        candidates[0].parent = "0".repeat(40);
        let unknown = records(fixture.dir.path(), "a/b", &candidates, &HashSet::new());
        assert!(
            matches!(unknown, Err(history::MineError::Git { .. })),
            "{unknown:?}"
        );
    }

    #[test]
    fn ids_and_slugs() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(
            instance_id("psf/requests", sha),
            "psf__requests-0123456789ab"
        );
        assert_eq!(
            instance_id("local/my repo", sha),
            "local__my-repo-0123456789ab"
        );
        assert_eq!(instance_id("a/b/c", sha), "a__b-c-0123456789ab");
        assert_eq!(instance_id("single", sha), "single-0123456789ab");
        assert_eq!(slug("psf/Requests"), "psf-requests");
        assert_eq!(slug("Org/My Repo+2"), "org-my-repo-2");
        assert_eq!(slug("local/_x_"), "local-x");
        assert_eq!(slug("/.git"), "git");
        assert_eq!(slug("ü"), "repo");
    }

    /// Every slug is a valid Docker path component (runs of separators collapse to one `-`, none at the ends, at
    /// most [`SLUG_MAX`] characters), also with the `-env` / `-mut` suffixes the image names add.
    #[test]
    fn slugs_are_valid_docker_path_components() {
        let component = regex::Regex::new(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$").unwrap();
        let long = format!("owner/{}", "ab.".repeat(200));
        let at_the_cap = format!("{}/yz", "x".repeat(SLUG_MAX - 1));
        let cases = [
            ("a/x..y", "a-x-y"),
            ("___", "repo"),
            ("a_-b", "a-b"),
            ("a__b", "a-b"),
            ("a___b", "a-b"),
            ("x/-_.-y", "x-y"),
            ("local/_x_", "local-x"),
            ("psf/Requests", "psf-requests"),
            ("Org/My Repo+2", "org-my-repo-2"),
            ("a.b_c", "a-b-c"),
            ("/.git", "git"),
            ("ü", "repo"),
            ("", "repo"),
            (long.as_str(), ""),
            (at_the_cap.as_str(), &at_the_cap[..SLUG_MAX - 1]),
        ];
        for (name, expected) in cases {
            let got = slug(name);
            if !expected.is_empty() {
                assert_eq!(got, expected, "{name:?}");
            }
            assert!(got.len() <= SLUG_MAX, "{name:?} → {} chars", got.len());
            for suffix in ["", "-env", "-mut"] {
                let component_text = format!("{got}{suffix}");
                assert!(
                    component.is_match(&component_text),
                    "{name:?} → {component_text:?}"
                );
            }
        }
        assert!(slug(&long).starts_with("owner-ab-ab-"));
    }
}
