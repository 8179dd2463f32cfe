//! A git2-built repository for the tests of `mine` (history walks, base images, validation).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use git2::{Commit, Oid, Repository, Signature, Time};

/// A repository built commit by commit with git2 (each commit's tree is exactly the files given), for the tests of
/// `mine`.
pub(crate) struct TestRepo {
    _dir: tempfile::TempDir,
    pub(crate) repo: Repository,
    clock: i64,
}

impl TestRepo {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path()).unwrap();
        Self {
            _dir: dir,
            repo,
            clock: 1_700_000_000,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.repo.workdir().unwrap()
    }

    /// A commit of exactly `files` with `parents`, not moving any ref.
    pub(crate) fn commit(&mut self, files: &[(&str, &str)], message: &str, parents: &[Oid]) -> Oid {
        let mut index = self.repo.index().unwrap();
        index.clear().unwrap();
        for (path, text) in files {
            let full = self.path().join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, text).unwrap();
            index.add_path(Path::new(path)).unwrap();
        }
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        self.clock += 60;
        let who = Signature::new("Dev", "dev@example.com", &Time::new(self.clock, 0)).unwrap();
        let parents: Vec<Commit<'_>> = parents
            .iter()
            .map(|oid| self.repo.find_commit(*oid).unwrap())
            .collect();
        let parents: Vec<&Commit<'_>> = parents.iter().collect();
        self.repo
            .commit(None, &who, &who, message, &tree, &parents)
            .unwrap()
    }

    pub(crate) fn git(&self, args: &[&str], stdin: &str) -> std::process::Output {
        git_in(self.path(), args, stdin, &[])
    }

    /// `git apply --check` of each text in turn, then of all applied one after the other, at `commit`.
    pub(crate) fn assert_applies_at(&self, commit: &str, patches: &[&str]) {
        let checkout = self.git(&["checkout", "-q", "-f", "--detach", commit], "");
        assert!(checkout.status.success(), "{checkout:?}");
        let clean = self.git(&["clean", "-q", "-f", "-d", "-x"], "");
        assert!(clean.status.success(), "{clean:?}");
        for patch in patches {
            let check = self.git(&["apply", "--check", "-"], patch);
            assert!(
                check.status.success(),
                "git apply --check: {check:?}\n{patch}"
            );
        }
        for patch in patches {
            let apply = self.git(&["apply", "-"], patch);
            assert!(apply.status.success(), "git apply: {apply:?}\n{patch}");
        }
    }

    /// The difference between the work tree (new files included) and `commit`'s tree: empty when equal.
    pub(crate) fn tree_of(&self, commit: &str) -> String {
        let add = self.git(&["add", "-A"], "");
        assert!(add.status.success(), "{add:?}");
        let output = self.git(&["diff", "--cached", "--stat", commit], "");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// A commit of exactly `files` on top of HEAD (the first one a root), moving HEAD's branch.
    pub(crate) fn commit_head(&mut self, files: &[(&str, &str)], message: &str) -> Oid {
        let parents: Vec<Oid> = self
            .repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .map(|c| c.id())
            .into_iter()
            .collect();
        let oid = self.commit(files, message, &parents);
        let commit = self.repo.find_commit(oid).unwrap();
        match self.repo.head() {
            Ok(head) => {
                let name = head.name().unwrap().to_owned();
                self.repo.reference(&name, oid, true, message).unwrap();
            }
            Err(_) => {
                let branch = self.repo.branch("main", &commit, true).unwrap();
                let name = branch.get().name().unwrap().to_owned();
                self.repo.set_head(&name).unwrap();
            }
        }
        oid
    }
}

/// `git -C dir ARGS` with `stdin` fed and `envs` set; its output.
pub(crate) fn git_in(
    dir: &Path,
    args: &[&str],
    stdin: &str,
    envs: &[(&str, &Path)],
) -> std::process::Output {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}
