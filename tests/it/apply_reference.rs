//! The patch apply chain against the reference harness (swebench 4.1.0): the reference's own `GIT_APPLY_CMDS`,
//! run by its stop-at-first-exit-0 loop (a small Python driver in the reference venv), and our script in
//! `ApplyChain::Reference` mode run on copies of the same git repository with the same patch must end the same way:
//! same method (or none) and the same final tree (status, diff, untracked files with their contents, `.rej` and
//! `.orig` included). The hardened chain differs on a half-applied `--reject` attempt, which is the point of it;
//! the last test shows that difference in a fixture container.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use swe_env::grade::{
    applied_method, apply_chain_script, grade_patch, ApplyChain, GradeConfig, RuleSet,
    APPLY_METHODS,
};
use swe_env::task::image_for;
use swe_env_sandbox::SandboxConfig;

use crate::common::{engine, run_ok, unique_id};
use crate::episode::fixture;

#[path = "../../grading/tests/common/mod.rs"]
mod reference_venv;

/// Runs the reference apply loop in a directory: `GIT_APPLY_CMDS` from the installed harness, each split as
/// docker-py's `exec_run` splits a string command, stopping at the first exit code 0 (`run_instance`). Also checks
/// that `run_instance` still has that loop and no clean-up in it, so a different reference fails here loudly.
const REFERENCE_DRIVER: &str = r#"
import inspect, json, subprocess, sys
from docker.utils import split_command
from swebench.harness import run_evaluation
from swebench.harness.run_evaluation import GIT_APPLY_CMDS
from swebench.harness.constants import DOCKER_WORKDIR, DOCKER_USER

source = inspect.getsource(run_evaluation.run_instance)
for needle in ("for git_apply_cmd in GIT_APPLY_CMDS:", 'f"{git_apply_cmd} {DOCKER_PATCH}"',
               "workdir=DOCKER_WORKDIR", "user=DOCKER_USER", "if val.exit_code == 0:", "break"):
    assert needle in source, f"run_instance changed: no {needle!r}"
for needle in ("git checkout", "git clean", "git reset", ".rej"):
    assert needle not in source, f"run_instance changed: cleans with {needle!r}"
assert (DOCKER_WORKDIR, DOCKER_USER) == ("/testbed", "root"), (DOCKER_WORKDIR, DOCKER_USER)

repo, patch = sys.argv[1], sys.argv[2]
method = None
for git_apply_cmd in GIT_APPLY_CMDS:
    val = subprocess.run(split_command(f"{git_apply_cmd} {patch}"), cwd=repo, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if val.returncode == 0:
        method = git_apply_cmd
        break
print(json.dumps({"commands": GIT_APPLY_CMDS, "method": method}))
"#;

/// 40 lines, `line 1` .. `line 40`.
fn forty_lines() -> String {
    (1..=40).map(|i| format!("line {i}\n")).collect()
}

/// A hunk changing line 5, with exact context.
const HUNK_LINE_5: &str = "@@ -3,5 +3,5 @@
 line 3
 line 4
-line 5
+LINE FIVE
 line 6
 line 7
";

/// A hunk changing line 30 whose context line 29 differs from the file: `git apply` rejects it, `patch --fuzz`
/// applies it.
const HUNK_LINE_30_FUZZY: &str = "@@ -28,5 +28,5 @@
 line 28
 line 29 CHANGED
-line 30
+LINE THIRTY
 line 31
 line 32
";

fn file_header(path: &str) -> String {
    format!("diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n")
}

/// How a chain ended: the `GIT_APPLY_CMDS` entry that applied (or none) and the final tree.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    method: Option<String>,
    tree: String,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = run_ok(Command::new("git").arg("-C").arg(dir).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A scratch directory holding the base repository (`files` committed), the patch and the copies.
struct Scenario {
    dir: tempfile::TempDir,
}

impl Scenario {
    fn new(files: &[(&str, &str)], patch: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir(&base).unwrap();
        for (path, content) in files {
            std::fs::write(base.join(path), content).unwrap();
        }
        git(&base, &["init", "-q"]);
        git(&base, &["add", "-A"]);
        git(
            &base,
            &[
                "-c",
                "user.name=swe-env",
                "-c",
                "user.email=swe-env@example.invalid",
                "commit",
                "-qm",
                "base",
            ],
        );
        std::fs::write(dir.path().join("patch.diff"), patch).unwrap();
        Self { dir }
    }

    fn patch(&self) -> PathBuf {
        self.dir.path().join("patch.diff")
    }

    /// A fresh copy of the base repository.
    fn copy(&self, name: &str) -> PathBuf {
        let copy = self.dir.path().join(name);
        run_ok(
            Command::new("cp")
                .arg("-a")
                .arg(self.dir.path().join("base"))
                .arg(&copy),
        );
        copy
    }

    fn reference(&self) -> Outcome {
        let repo = self.copy("reference");
        let python = reference_venv::reference_python();
        let out = run_ok(
            Command::new(python)
                .args(["-c", REFERENCE_DRIVER])
                .arg(&repo)
                .arg(self.patch()),
        );
        let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let commands: Vec<&str> = APPLY_METHODS.iter().map(|m| m.command).collect();
        assert_eq!(
            result["commands"],
            serde_json::json!(commands),
            "our commands are the reference's GIT_APPLY_CMDS"
        );
        Outcome {
            method: result["method"].as_str().map(str::to_owned),
            tree: tree_state(&repo),
        }
    }

    fn ours(&self, chain: ApplyChain) -> Outcome {
        let repo = self.copy(&format!("ours-{chain:?}"));
        let script = apply_chain_script(
            repo.to_str().unwrap(),
            self.patch().to_str().unwrap(),
            chain,
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout);
        let label = applied_method(&log);
        assert_eq!(out.status.success(), label.is_some(), "{log}");
        let method = label.map(|label| {
            APPLY_METHODS
                .iter()
                .find(|m| m.label == label)
                .unwrap_or_else(|| panic!("unknown label {label}"))
                .command
                .to_owned()
        });
        Outcome {
            method,
            tree: tree_state(&repo),
        }
    }

    /// Runs the reference and both of our chains; asserts that our reference mode matches the reference exactly
    /// and returns (reference, hardened).
    fn compare(&self) -> (Outcome, Outcome) {
        let reference = self.reference();
        let ours = self.ours(ApplyChain::Reference);
        assert_eq!(
            ours, reference,
            "our reference-mode chain must end exactly like swebench 4.1.0"
        );
        (reference, self.ours(ApplyChain::Hardened))
    }
}

/// Status, diff, and every untracked file (new files, `.rej`, `.orig`) with its contents.
fn tree_state(repo: &Path) -> String {
    let mut state = git(repo, &["status", "--porcelain", "--untracked-files=all"]);
    state.push_str(&git(repo, &["diff"]));
    let untracked = git(repo, &["ls-files", "--others"]);
    for path in untracked.lines() {
        let bytes = std::fs::read(repo.join(path)).unwrap();
        state.push_str(&format!(
            "=== untracked {path}\n{}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    state
}

const GIT_APPLY: &str = "git apply --verbose";
const PATCH_FUZZ: &str = "patch --batch --fuzz=5 -p1 -i";

#[test]
fn clean_patch_applies_with_git_apply_in_both_chains() {
    let patch = format!("{}{HUNK_LINE_5}", file_header("a.txt"));
    let (reference, hardened) = Scenario::new(&[("a.txt", &forty_lines())], &patch).compare();
    assert_eq!(reference.method.as_deref(), Some(GIT_APPLY));
    assert!(reference.tree.contains("+LINE FIVE"), "{}", reference.tree);
    assert_eq!(hardened, reference);
}

#[test]
fn fuzzy_patch_applies_with_patch_and_the_reference_keeps_the_reject_file() {
    let patch = format!("{}{HUNK_LINE_30_FUZZY}", file_header("a.txt"));
    let (reference, hardened) = Scenario::new(&[("a.txt", &forty_lines())], &patch).compare();
    assert_eq!(reference.method.as_deref(), Some(PATCH_FUZZ));
    assert_eq!(hardened.method.as_deref(), Some(PATCH_FUZZ));
    for outcome in [&reference, &hardened] {
        assert!(outcome.tree.contains("+LINE THIRTY"), "{}", outcome.tree);
    }
    // `git apply --reject` rejected the only hunk and left a.txt.rej; only the hardened chain removes it.
    assert!(
        reference.tree.contains("?? a.txt.rej"),
        "{}",
        reference.tree
    );
    assert!(!hardened.tree.contains("a.txt.rej"), "{}", hardened.tree);
}

#[test]
fn half_applied_reject_fails_in_the_reference_and_applies_when_hardened() {
    // Hunk 1 applies cleanly, hunk 2 only with fuzz: `git apply` fails, `git apply --reject` applies hunk 1 and
    // exits 1, then `patch --batch` sees hunk 1 already there, assumes a reversed patch, undoes it and fails.
    let patch = format!("{}{HUNK_LINE_5}{HUNK_LINE_30_FUZZY}", file_header("a.txt"));
    let (reference, hardened) = Scenario::new(&[("a.txt", &forty_lines())], &patch).compare();
    assert_eq!(reference.method, None, "{}", reference.tree);
    assert!(
        reference
            .tree
            .starts_with("?? a.txt.orig\n?? a.txt.rej\n=== untracked"),
        "a.txt is back at base, with patch's backup and rejects: {}",
        reference.tree
    );
    assert_eq!(hardened.method.as_deref(), Some(PATCH_FUZZ));
    assert!(
        hardened.tree.contains("+LINE FIVE") && hardened.tree.contains("+LINE THIRTY"),
        "{}",
        hardened.tree
    );
}

#[test]
fn patch_that_applies_nowhere_fails_in_both_chains() {
    let patch = format!(
        "{}@@ -3,3 +3,3 @@\n line 3\n-no such line\n+replacement\n line 5\n",
        file_header("a.txt")
    );
    let (reference, hardened) = Scenario::new(&[("a.txt", &forty_lines())], &patch).compare();
    assert_eq!(reference.method, None);
    assert_eq!(hardened.method, None);
    // The reference leaves git's reject file, then patch's own reject and backup; the hardened chain a clean tree.
    assert!(
        reference.tree.contains("?? a.txt.rej"),
        "{}",
        reference.tree
    );
    assert_eq!(hardened.tree, "");
}

#[test]
fn patch_creating_a_file_applies_with_git_apply() {
    let patch =
        "diff --git a/new.txt b/new.txt\nnew file mode 100644\n--- /dev/null\n+++ b/new.txt\n\
                 @@ -0,0 +1,2 @@\n+hello\n+world\n";
    let (reference, hardened) = Scenario::new(&[("a.txt", &forty_lines())], patch).compare();
    assert_eq!(reference.method.as_deref(), Some(GIT_APPLY));
    assert!(
        reference
            .tree
            .contains("?? new.txt\n=== untracked new.txt\nhello\nworld\n"),
        "{}",
        reference.tree
    );
    assert_eq!(hardened, reference);
}

#[test]
fn patch_touching_a_missing_file_fails_in_both_chains() {
    // a.txt's hunk applies, missing.txt does not exist: `--reject` applies a.txt and fails, `patch` reverses a.txt
    // ("Assuming -R") and skips missing.txt.
    let patch = format!(
        "{}{HUNK_LINE_5}{}@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n",
        file_header("a.txt"),
        file_header("missing.txt")
    );
    let (reference, hardened) = Scenario::new(&[("a.txt", &forty_lines())], &patch).compare();
    assert_eq!(reference.method, None);
    assert_eq!(hardened.method, None);
    assert!(
        reference.tree.starts_with("?? a.txt.orig\n"),
        "{}",
        reference.tree
    );
    assert_eq!(hardened.tree, "");
}

/// The fixture `spans` gold patch plus a hunk whose context differs from the file (only `patch --fuzz` applies
/// it): the half-apply case on a real task image.
fn spans_half_apply_patch(gold: &str) -> String {
    let mut patch = gold.to_owned();
    if !patch.ends_with('\n') {
        patch.push('\n');
    }
    patch.push_str(concat!(
        "@@ -27,6 +27,6 @@ def merge(ranges):\n",
        " \n",
        " def total_length(ranges):\n",
        "     \"\"\"How many integers the ranges cover (overlaps counted once).\"\"\"\n",
        "-    return sum(end - start for start, end in merge(ranges))\n",
        "+    return sum(end - start for start, end in merge(list(ranges)))\n",
        " \n",
        " \n",
    ));
    patch
}

#[tokio::test(flavor = "multi_thread")]
async fn half_applied_reject_in_a_fixture_container() {
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__spans-1");
    let patch = spans_half_apply_patch(&instance.patch);
    let config = GradeConfig {
        network_mode: "none".into(),
        ..GradeConfig::default()
    };

    // Grading under the default rule set (swebench-4.1, reference chain): the patch did not apply, so the instance is not resolved.
    let graded = grade_patch(
        &engine,
        &instance,
        Some(&patch),
        &config,
        &unique_id("apply-ref"),
    )
    .await
    .unwrap();
    assert_eq!(graded.apply_method, None, "{}", graded.apply_log);
    assert!(!graded.resolved);
    assert!(
        graded.apply_log.contains("Assuming -R")
            && graded.apply_log.contains(">>>>> Patch Apply Failed"),
        "{}",
        graded.apply_log
    );

    // Grading under the `hardened` rule set (cleans between attempts): `patch --fuzz` applies both hunks on the
    // base tree and the gold fix resolves the task.
    let hardened = grade_patch(
        &engine,
        &instance,
        Some(&patch),
        &config.clone().with_rules(RuleSet::Hardened),
        &unique_id("apply-hard"),
    )
    .await
    .unwrap();
    assert_eq!(
        hardened.apply_method.as_deref(),
        Some("patch --batch --fuzz=5 -p1"),
        "{}",
        hardened.apply_log
    );
    assert!(hardened.resolved, "{}", hardened.test_output);

    // The script itself in a fixture container, both chains, each from the base commit.
    let image = image_for(&instance, &config.image_template);
    let sandbox = engine
        .create_sandbox(
            &image,
            &unique_id("apply-chains"),
            SandboxConfig {
                network_mode: "none".into(),
                workdir: "/testbed".into(),
                ..SandboxConfig::default()
            },
        )
        .await
        .unwrap();
    sandbox
        .write_bytes("/tmp/half.patch", patch.as_bytes())
        .await
        .unwrap();
    let mut results = Vec::new();
    for chain in [ApplyChain::Reference, ApplyChain::Hardened] {
        let script = apply_chain_script("/testbed", "/tmp/half.patch", chain);
        let out = sandbox
            .exec(&["bash", "-c", &script], None, Duration::from_secs(60))
            .await
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        let state = sandbox
            .exec(
                &[
                    "bash",
                    "-c",
                    "cd /testbed && git status --porcelain --untracked-files=all && git diff \
                     && git reset -q --hard && git clean -fdq",
                ],
                None,
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert_eq!(state.exit_code, Some(0));
        results.push((
            out.exit_code,
            applied_method(&log),
            String::from_utf8_lossy(&state.stdout).into_owned(),
            log,
        ));
    }
    sandbox.remove().await.unwrap();

    let (code, method, tree, log) = &results[0];
    assert_eq!((*code, method.as_deref()), (Some(1), None), "{log}");
    assert_eq!(
        tree, "?? src/spans/ops.py.orig\n?? src/spans/ops.py.rej\n",
        "reference: ops.py back at base, patch's backup and rejects left: {log}"
    );
    let (code, method, tree, log) = &results[1];
    assert_eq!(
        (*code, method.as_deref()),
        (Some(0), Some("patch --batch --fuzz=5 -p1")),
        "{log}"
    );
    assert!(
        tree.contains("+    for start, end in sorted(map(_check, ranges)):")
            && tree.contains("+    return sum(end - start for start, end in merge(list(ranges)))"),
        "hardened: both hunks applied: {tree}"
    );
}
