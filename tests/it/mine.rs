//! `swe-env mine` end to end through the real binary and the real engine: tasks mined from a git2-built history
//! (valid fixes kept, commits without tests / without source / without a failing test rejected, a flaky test
//! dropped and listed), mutants of a fixture task, both kinds run through `run-benchmark` at 100% (gold) and 0%
//! (empty), no answer leaking through git in the derived images, bad input refused with exit 2, and no image or
//! container left behind.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use git2::{Oid, Repository, Signature, Time};
use serde_json::Value;
use swe_env_grading::dataset::Instance;

use crate::common::{assert_success, describe, engine, read_json, read_jsonl};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const FIXTURE_IMAGE: &str = "swe-env/fixture-retrykit:latest";
const FIXTURE_ACTIVATE: &str = "source /opt/venv/bin/activate";
const FIXTURE_INSTANCE: &str = "swe-env-fixtures__retrykit-1";
/// The mutate test's source task: not retrykit, which the library's mutate tests mine at the same time (mutant
/// image names are deterministic, so two tests on one source could share, and remove, one image).
const MUTATE_INSTANCE: &str = "swe-env-fixtures__spans-1";
const MUTATE_IMAGES: &str = "swe-env-mined/swe-env-fixtures-spans-mut:";

/// A finished `swe-env` run and the pid it ran under (its containers carry that pid in their owner label).
struct Run {
    output: Output,
    pid: u32,
}

/// `swe-env ARGS` to its end, stdin closed.
fn swe_env(args: &[&str]) -> Run {
    let child = Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    Run {
        output: child.wait_with_output().unwrap(),
        pid,
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// tasks.jsonl read as the rows every consumer reads.
fn read_tasks(path: &Path) -> Vec<Instance> {
    read_jsonl(path)
        .into_iter()
        .map(|row| serde_json::from_value(row.clone()).unwrap_or_else(|e| panic!("{e}: {row}")))
        .collect()
}

/// The one JSON object `--json` prints on stdout.
fn json_stdout(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {}", describe(output)))
}

/// `swe-env run-benchmark TASKS --agent AGENT --json` into `out/AGENT`: must succeed; returns (stats, pid).
fn run_benchmark(tasks: &Path, agent: &str, out: &Path) -> (Value, u32) {
    let run = swe_env(&[
        "run-benchmark",
        p(tasks),
        "--agent",
        agent,
        "--run-id",
        agent,
        "--workers",
        "2",
        "--grading-network",
        "none",
        "--json",
        "--output-dir",
        p(out),
    ]);
    assert_success(&run.output, &format!("run-benchmark --agent {agent}"));
    (json_stdout(&run.output), run.pid)
}

/// `docker ARGS`, its output (not asserted).
fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

/// `bash -c SCRIPT` in a throwaway container of `image` (`--rm`, whatever its entrypoint), stdin from `stdin`.
fn in_image(image: &str, script: &str, stdin: &str) -> Output {
    let mut child = Command::new("docker")
        .args([
            "run",
            "--rm",
            "-i",
            "--network",
            "none",
            "--entrypoint",
            "bash",
            image,
            "-c",
            script,
        ])
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

fn stdout_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// References (`repository:tag`) of the images labelled `swe-env.mined` whose repository starts with `prefix`.
fn mined_images(prefix: &str) -> BTreeSet<String> {
    let out = docker(&[
        "images",
        "--filter",
        "label=swe-env.mined",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]);
    assert_success(&out, "docker images");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|reference| reference.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Removes, on [`ImageCleanup::finish`] or on drop (a failed test), the mined images whose repository starts with
/// `prefix` and that did not exist when the guard was made.
struct ImageCleanup {
    prefix: String,
    before: BTreeSet<String>,
    done: bool,
}

impl ImageCleanup {
    fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            before: mined_images(prefix),
            done: false,
        }
    }

    fn made(&self) -> Vec<String> {
        mined_images(&self.prefix)
            .difference(&self.before)
            .cloned()
            .collect()
    }

    /// Removes this test's images (by reference) and asserts they are gone (an image still used by a container
    /// cannot be removed: a leaked container fails here too). `shared`: the names are not unique to this test
    /// (mutant images are named by content), so an image made meanwhile by another process may be in use by it:
    /// only `required` must be removed, the others are removed when possible.
    fn finish(mut self, shared: bool, required: &[String]) {
        self.done = true;
        let made = self.made();
        for reference in &made {
            let out = docker(&["rmi", reference]);
            if !shared || required.contains(reference) {
                assert_success(&out, &format!("docker rmi {reference}"));
            }
        }
        let left = self.made();
        for reference in required {
            assert!(!left.contains(reference), "mined image {reference} left");
        }
        if !shared {
            assert_eq!(left, Vec::<String>::new(), "mined images left");
        }
    }
}

impl Drop for ImageCleanup {
    fn drop(&mut self) {
        if !self.done {
            for reference in self.made() {
                let _ = docker(&["rmi", "-f", &reference]);
            }
        }
    }
}

/// No container of the `swe-env` processes `pids` is left, and none of `images` runs anywhere.
async fn assert_no_container_left(pids: &[u32], images: &[String]) {
    let engine = engine().await;
    for container in engine.labelled_containers().await.unwrap() {
        if let Some(owner) = &container.owner {
            assert!(
                !pids.contains(&owner.pid),
                "container {} ({}) of swe-env pid {} left behind",
                container.id,
                container.name,
                owner.pid
            );
        }
    }
    // Containers of the mined images: none unlabelled (nobody would reap it) and none of these runs. Containers of
    // other processes using the same (deterministic) mutant image names are theirs.
    for image in images {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("ancestor={image}"),
            "--format",
            "{{.ID}} {{.Label \"swe-env.owner\"}}",
        ]);
        assert_success(&out, "docker ps");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let (id, owner) = line.split_once(' ').unwrap_or((line, ""));
            let pid = owner
                .split(':')
                .nth(1)
                .and_then(|pid| pid.parse::<u32>().ok());
            assert!(
                pid.is_some_and(|pid| !pids.contains(&pid)),
                "container {id} of the mined image {image} left behind (owner label {owner:?})"
            );
        }
    }
}

/// A TCP service on the Docker bridge's gateway that answers `pass` to the first connection and `fail` to every
/// later one: the flaky test of commit E asks it. Validation runs "before #1" first and alone (the early exit
/// needs its result), so that run passes the test and "before #2" fails it: the test's status differs between the
/// runs of one side, deterministically, which is what makes a test flaky. A test that is random per run
/// (`os.urandom`, the time) is only seen as flaky with probability 3/4 at two runs per side, too low for CI.
struct FirstPassService {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FirstPassService {
    fn start() -> Self {
        let gateway = docker(&[
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        ]);
        assert_success(&gateway, "docker network inspect bridge");
        let mut gateway = stdout_of(&gateway);
        if gateway.is_empty() {
            // Some engines (Docker 20.10 right after a fresh start) report the bridge's subnet but no gateway; the
            // gateway is then the subnet's first host address, which the engine gives the bridge interface.
            let subnet = docker(&[
                "network",
                "inspect",
                "bridge",
                "-f",
                "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
            ]);
            assert_success(&subnet, "docker network inspect bridge (subnet)");
            let subnet = stdout_of(&subnet);
            let network: std::net::Ipv4Addr = subnet
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "the bridge network has neither a gateway nor an IPv4 subnet: {subnet:?}"
                    )
                });
            gateway = std::net::Ipv4Addr::from(u32::from(network) + 1).to_string();
        }
        let listener = TcpListener::bind((gateway.as_str(), 0))
            .unwrap_or_else(|e| panic!("cannot listen on the bridge gateway {gateway}: {e}"));
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_hits, thread_stop) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if thread_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let n = thread_hits.fetch_add(1, Ordering::SeqCst);
                let _ = stream.write_all(if n == 0 { b"pass" } else { b"fail" });
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest);
            }
        });
        Self { addr, hits, stop }
    }
}

impl Drop for FirstPassService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

/// A repository built with git2, commit by commit; each commit's tree is the current file set.
struct RepoBuilder {
    repo: Repository,
    files: BTreeMap<String, String>,
    clock: i64,
    head: Option<Oid>,
}

impl RepoBuilder {
    fn new(dir: &Path) -> Self {
        Self {
            repo: Repository::init(dir).unwrap(),
            files: BTreeMap::new(),
            clock: 1_700_000_000,
            head: None,
        }
    }

    fn set(&mut self, path: &str, text: &str) -> &mut Self {
        self.files.insert(path.to_owned(), text.to_owned());
        self
    }

    /// Commits the file set on HEAD's branch; returns the commit's sha.
    fn commit(&mut self, message: &str) -> String {
        let root = self.repo.workdir().unwrap().to_owned();
        let mut index = self.repo.index().unwrap();
        index.clear().unwrap();
        for (path, text) in &self.files {
            let full = root.join(path);
            std::fs::create_dir_all(full.parent().unwrap()).unwrap();
            std::fs::write(&full, text).unwrap();
            index.add_path(Path::new(path)).unwrap();
        }
        index.write().unwrap();
        let tree = self.repo.find_tree(index.write_tree().unwrap()).unwrap();
        self.clock += 3600;
        let who = Signature::new("Dev", "dev@example.com", &Time::new(self.clock, 0)).unwrap();
        let parent = self.head.map(|oid| self.repo.find_commit(oid).unwrap());
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
        let oid = self
            .repo
            .commit(Some("HEAD"), &who, &who, message, &tree, &parents)
            .unwrap();
        self.head = Some(oid);
        oid.to_string()
    }
}

const CALC_V0: &str = r#""""Tiny arithmetic helpers."""


def add(a, b):
    return (a + b) % 2**32


def sub(a, b):
    return a - b


def mul(a, b):
    return a * b


def clamp(x, lo, hi):
    return min(x, hi)
"#;

const TESTS_V0: &str = r#"from calc import add, clamp, mul, sub


def test_add_small():
    assert add(1, 2) == 3


def test_sub():
    assert sub(5, 3) == 2


def test_mul():
    assert mul(3, 4) == 12
"#;

/// The shas of the calc repository's commits.
struct CalcHistory {
    root: String,
    a: String,
    b: String,
    c: String,
    d: String,
    e: String,
}

/// root (passing) → A fix + failing-before test → B source only → C tests only → D source + a test that already
/// passes → E fix + its test + a flaky test asking `service`.
fn calc_history(dir: &Path, service: SocketAddr) -> CalcHistory {
    let mut repo = RepoBuilder::new(dir);
    repo.set("calc/__init__.py", CALC_V0)
        .set("conftest.py", "# Makes the repository root importable.\n")
        .set("tests/test_calc.py", TESTS_V0);
    let root = repo.commit("Initial calc package");

    let calc = CALC_V0.replace("return (a + b) % 2**32", "return a + b");
    let tests =
        format!("{TESTS_V0}\n\ndef test_add_large():\n    assert add(2**32, 1) == 2**32 + 1\n");
    repo.set("calc/__init__.py", &calc)
        .set("tests/test_calc.py", &tests);
    let a = repo.commit(
        "Fix add overflow\n\nadd() wraps around at 2**32: add(2**32, 1) returns 1 instead of 4294967297.\n",
    );

    let calc = calc.replace(
        "def mul(a, b):\n",
        "def mul(a, b):\n    \"\"\"The product of a and b.\"\"\"\n",
    );
    repo.set("calc/__init__.py", &calc);
    let b = repo.commit("Document mul");

    let tests = format!("{tests}\n\ndef test_sub_negative():\n    assert sub(3, 5) == -2\n");
    repo.set("tests/test_calc.py", &tests);
    let c = repo.commit("Test sub with a negative result");

    let calc = calc.replace("return a - b", "return a + (-b)");
    let tests = format!("{tests}\n\ndef test_sub_zero():\n    assert sub(7, 0) == 7\n");
    repo.set("calc/__init__.py", &calc)
        .set("tests/test_calc.py", &tests);
    let d = repo.commit("Write sub as an addition");

    let calc = calc.replace("return min(x, hi)", "return max(lo, min(x, hi))");
    let tests = format!(
        "import socket\n\n{tests}\n\ndef test_clamp_below():\n    assert clamp(-5, 0, 10) == 0\n\n\n\
         def test_clamp_above():\n    assert clamp(50, 0, 10) == 10\n\n\n\
         def test_shared_service():\n    \
         # Flaky: a shared service that answers `pass` only to its first caller.\n    \
         with socket.create_connection((\"{}\", {}), timeout=10) as conn:\n        \
         answer = conn.recv(16)\n    \
         assert answer == b\"pass\"\n",
        service.ip(),
        service.port()
    );
    repo.set("calc/__init__.py", &calc)
        .set("tests/test_calc.py", &tests);
    let e = repo.commit("Fix clamp ignoring its lower bound\n\nclamp(-5, 0, 10) returns -5.\n");
    CalcHistory {
        root,
        a,
        b,
        c,
        d,
        e,
    }
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names
        .iter()
        .map(|name| format!("tests/test_calc.py::{name}"))
        .collect();
    names.sort();
    names
}

fn sorted_vec(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

/// `git log --format=%H` of /testbed in `image`, newest first, and the same for `--all`.
fn image_history(image: &str) -> (Vec<String>, Vec<String>) {
    let out = in_image(
        image,
        "git -C /testbed log --format=%H && echo --- && git -C /testbed rev-list --all",
        "",
    );
    assert_success(&out, &format!("git log in {image}"));
    let text = stdout_of(&out);
    let (log, all) = text.split_once("---").unwrap();
    let lines = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    (lines(log), lines(all))
}

/// Asserts `image` carries the labels `swe-env.mined=KIND` and `swe-env.mined.base=BASE`.
fn assert_mined_labels(image: &str, kind: &str, base: &str) {
    let out = docker(&["image", "inspect", image, "-f", "{{json .Config.Labels}}"]);
    assert_success(&out, &format!("docker image inspect {image}"));
    let labels: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(labels["swe-env.mined"], kind, "{image}: {labels}");
    assert_eq!(labels["swe-env.mined.base"], base, "{image}: {labels}");
}

/// Asserts `commit` is not an object of /testbed's repository in `image`.
fn assert_absent(image: &str, commit: &str, what: &str) {
    let out = in_image(image, &format!("git -C /testbed cat-file -e {commit}"), "");
    assert!(
        !out.status.success(),
        "{what} {commit} is readable in {image}: the answer leaks through git"
    );
    assert!(
        in_image(image, "git -C /testbed rev-parse HEAD", "")
            .status
            .success(),
        "/testbed of {image} is no git repository"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mined_history_tasks_are_validated_and_run_at_100_and_0() {
    let tag = format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let repo_name = format!("swe-env-test/calc-{tag}");
    let slug = format!("swe-env-test-calc-{tag}");
    let images = ImageCleanup::new(&format!("swe-env-mined/{slug}:"));
    let service = FirstPassService::start();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("calc");
    let shas = calc_history(&repo, service.addr);
    let out = dir.path().join("mined");

    let mine = swe_env(&[
        "mine",
        "history",
        "--repo",
        p(&repo),
        "--repo-name",
        &repo_name,
        "--image",
        FIXTURE_IMAGE,
        "--activate",
        FIXTURE_ACTIVATE,
        "--workers",
        "2",
        "--out",
        p(&out),
        "--json",
    ]);
    assert_success(&mine.output, "mine history");
    let summary = json_stdout(&mine.output);
    let id = |sha: &str| format!("swe-env-test__calc-{tag}-{}", &sha[..12]);

    // tasks.jsonl: exactly A and E, each on its own derived image at its base commit.
    let tasks = read_tasks(&out.join("tasks.jsonl"));
    let ids: BTreeSet<&str> = tasks.iter().map(|row| row.instance_id.as_str()).collect();
    assert_eq!(
        ids,
        BTreeSet::from([id(&shas.a).as_str(), id(&shas.e).as_str()]),
        "kept tasks; summary {summary}"
    );
    let a = tasks
        .iter()
        .find(|row| row.instance_id == id(&shas.a))
        .unwrap();
    let e = tasks
        .iter()
        .find(|row| row.instance_id == id(&shas.e))
        .unwrap();
    for (row, base) in [(a, &shas.root), (e, &shas.d)] {
        assert_eq!(&row.base_commit, base, "{}", row.instance_id);
        assert_eq!(row.repo, repo_name);
        // `<base sha 12>-<env image id 8>`: one name per (base, env image).
        let image = row.image.as_deref().unwrap_or_default();
        let prefix = format!("swe-env-mined/{slug}:{}-", &base[..12]);
        assert!(
            image.starts_with(&prefix) && image.len() == prefix.len() + 8,
            "{}: {image}",
            row.instance_id
        );
        assert_eq!(row.activate.as_deref(), Some(FIXTURE_ACTIVATE));
        assert!(row
            .test_cmd
            .as_deref()
            .is_some_and(|cmd| cmd.contains("pytest")));
        assert_eq!(row.log_parser.as_deref(), Some("pytest"));
        assert!(row.patch.contains("calc/__init__.py") && !row.patch.contains("tests/"));
        assert!(
            row.test_patch.contains("tests/test_calc.py")
                && !row.test_patch.contains("calc/__init__")
        );
        let mined = &row.extra["swe_env_mined"];
        assert_eq!(mined["kind"], "history", "{}", row.instance_id);
    }
    assert!(
        a.problem_statement.contains("Fix add overflow"),
        "{}",
        a.problem_statement
    );
    assert_eq!(
        sorted_vec(a.fail_to_pass.clone()),
        sorted(&["test_add_large"])
    );
    assert_eq!(
        sorted_vec(a.pass_to_pass.clone()),
        sorted(&["test_add_small", "test_sub", "test_mul"])
    );
    assert_eq!(
        sorted_vec(e.fail_to_pass.clone()),
        sorted(&["test_clamp_below"])
    );
    assert_eq!(
        sorted_vec(e.pass_to_pass.clone()),
        sorted(&[
            "test_add_small",
            "test_sub",
            "test_mul",
            "test_add_large",
            "test_sub_negative",
            "test_sub_zero",
            "test_clamp_above",
        ])
    );
    // The flaky test: asked at least twice (before #1 passed, later runs failed), dropped, listed.
    assert!(
        service.hits.load(Ordering::SeqCst) >= 2,
        "the flaky test's service was asked {} times: it never ran twice, so it cannot be flaky",
        service.hits.load(Ordering::SeqCst)
    );
    let flaky: Vec<String> = serde_json::from_value(e.extra["swe_env_mined"]["flaky"].clone())
        .unwrap_or_else(|err| {
            panic!(
                "extra.swe_env_mined.flaky of E is no list of names ({err}): {:?}",
                e.extra
            )
        });
    assert_eq!(flaky, sorted(&["test_shared_service"]));
    let a_flaky = &a.extra["swe_env_mined"]["flaky"];
    assert!(
        a_flaky.is_null() || a_flaky.as_array().is_some_and(Vec::is_empty),
        "A has no flaky test: {a_flaky}"
    );

    // rejected.jsonl: B, C and D with their reasons.
    let rejected = read_jsonl(&out.join("rejected.jsonl"));
    let reason = |sha: &str| -> String {
        let row = rejected
            .iter()
            .find(|row| row["id"] == sha)
            .unwrap_or_else(|| panic!("commit {sha} not in rejected.jsonl: {rejected:?}"));
        row["reason"].as_str().unwrap().to_owned()
    };
    assert_eq!(reason(&shas.b), "no_tests");
    assert_eq!(reason(&shas.c), "no_source");
    assert_eq!(reason(&shas.d), "no_fail_to_pass");
    let d_row = rejected
        .iter()
        .find(|row| row["id"] == shas.d.as_str())
        .unwrap();
    assert_eq!(d_row["instance_id"], id(&shas.d), "{d_row}");
    for kept in [&shas.a, &shas.e] {
        assert!(
            !rejected.iter().any(|row| row["id"] == kept.as_str()),
            "kept commit {kept} also rejected: {rejected:?}"
        );
    }

    // swerl.jsonl: every candidate (A, D, E), validated when kept.
    let swerl = read_jsonl(&out.join("swerl.jsonl"));
    let validated: BTreeMap<String, bool> = swerl
        .iter()
        .map(|record| {
            (
                record["instance_id"].as_str().unwrap().to_owned(),
                record["validated"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        validated,
        BTreeMap::from([
            (id(&shas.a), true),
            (id(&shas.d), false),
            (id(&shas.e), true),
        ])
    );
    for record in &swerl {
        assert!(
            !record["oracle_patch"].as_str().unwrap().is_empty(),
            "{record}"
        );
        let paths: Vec<&str> = record["code_context"]
            .as_array()
            .unwrap()
            .iter()
            .map(|file| file["path"].as_str().unwrap())
            .collect();
        assert_eq!(paths, ["calc/__init__.py"], "{record}");
    }
    assert_eq!(
        summary,
        read_json(&out.join("summary.json")),
        "--json is summary.json"
    );

    // No answer in the derived images: only history up to the base, HEAD at the base, a clean work tree.
    for (row, base, later) in [
        (
            a,
            &shas.root,
            vec![&shas.a, &shas.b, &shas.c, &shas.d, &shas.e],
        ),
        (e, &shas.d, vec![&shas.e]),
    ] {
        let image = row.image.as_deref().unwrap();
        assert_mined_labels(image, "history", base);
        let (log, all) = image_history(image);
        assert_eq!(log.first(), Some(base), "HEAD of {image}");
        assert_eq!(all, log, "{image} holds commits off the base's history");
        for commit in later {
            assert_absent(image, commit, "a commit after the base");
        }
        let status = in_image(image, "git -C /testbed status --porcelain", "");
        assert_success(&status, "git status");
        assert_eq!(
            stdout_of(&status),
            "",
            "{image}: /testbed is not clean at the base"
        );
    }
    assert_eq!(
        image_history(a.image.as_deref().unwrap()).1,
        std::slice::from_ref(&shas.root)
    );

    // The mined tasks run as they are.
    let runs = dir.path().join("runs");
    let tasks_file = out.join("tasks.jsonl");
    let (gold, gold_pid) = run_benchmark(&tasks_file, "gold", &runs);
    assert_eq!(gold["total"], 2, "{gold}");
    assert_eq!(gold["resolved"], 2, "gold: {gold}");
    let (empty, empty_pid) = run_benchmark(&tasks_file, "empty", &runs);
    assert_eq!(empty["total"], 2, "{empty}");
    assert_eq!(empty["resolved"], 0, "empty: {empty}");

    let made: Vec<String> = images.made();
    for row in [a, e] {
        assert!(made.contains(row.image.as_ref().unwrap()), "{made:?}");
    }
    assert_no_container_left(&[mine.pid, gold_pid, empty_pid], &made).await;
    images.finish(false, &made);
}

/// The path a unified diff changes (its first `diff --git a/PATH b/PATH`).
fn diff_path(patch: &str) -> String {
    patch
        .lines()
        .find_map(|line| line.strip_prefix("diff --git a/"))
        .and_then(|rest| rest.split(" b/").next())
        .unwrap_or_else(|| panic!("no diff header in {patch}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn mutants_of_a_fixture_task_are_validated_and_run_at_100_and_0() {
    let images = ImageCleanup::new(MUTATE_IMAGES);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mutants");
    let mine = swe_env(&[
        "mine",
        "mutate",
        "--tasks",
        "fixtures",
        "--instance",
        MUTATE_INSTANCE,
        "--max-mutants",
        "4",
        "--workers",
        "2",
        "--out",
        p(&out),
        "--json",
    ]);
    assert_success(&mine.output, "mine mutate");
    let summary = json_stdout(&mine.output);
    let tasks = read_tasks(&out.join("tasks.jsonl"));
    assert!(!tasks.is_empty(), "no mutant kept: {summary}");
    assert!(tasks.len() <= 4, "more rows than --max-mutants 4");
    assert_eq!(
        summary,
        read_json(&out.join("summary.json")),
        "--json is summary.json"
    );

    let mut seen = HashSet::new();
    for row in &tasks {
        let id = &row.instance_id;
        assert!(seen.insert(id.clone()), "duplicate row {id}");
        let hash = id
            .strip_prefix(&format!("{MUTATE_INSTANCE}-mut-"))
            .unwrap_or_else(|| panic!("id {id} is not <source>-mut-<hash 8>"));
        assert_eq!(hash.len(), 8, "{id}");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)),
            "{id}"
        );
        assert_eq!(row.extra["swe_env_mined"]["kind"], "mutate", "{id}");
        assert!(!row.fail_to_pass.is_empty(), "{id}");
        assert!(
            row.fail_to_pass
                .iter()
                .all(|t| !row.pass_to_pass.contains(t)),
            "{id}: a test in both lists"
        );
        assert!(row.activate.is_some() && row.test_cmd.is_some() && row.log_parser.is_some());
        let image = row.image.as_deref().unwrap();
        assert!(image.starts_with(MUTATE_IMAGES), "{id}: image {image}");

        // The problem statement does not give the mutated file away.
        let file = diff_path(&row.patch);
        assert!(
            !row.problem_statement.contains(&file),
            "{id}: the problem statement names the mutated file {file}:\n{}",
            row.problem_statement
        );

        // One root commit of the mutated tree; the unmutated file is no object of the repository.
        let count = in_image(
            image,
            "git -C /testbed rev-list --count HEAD && git -C /testbed rev-list --all | wc -l",
            "",
        );
        assert_success(&count, &format!("git rev-list in {image}"));
        assert_eq!(
            stdout_of(&count).split_whitespace().collect::<Vec<_>>(),
            ["1", "1"],
            "{image}: history holds more than the mutated tree"
        );
        let (log, _) = image_history(image);
        assert_eq!(
            log,
            std::slice::from_ref(&row.base_commit),
            "{id}: HEAD of {image} is not the row's base_commit"
        );
        assert_mined_labels(image, "mutate", &row.base_commit);
        let leak = in_image(
            image,
            &format!(
                "cd /testbed && git apply - && h=$(git hash-object '{file}') && git checkout -q -- '{file}' \
                 && echo applied $h && if git cat-file -e $h 2>/dev/null; then echo LEAK; else echo clean; fi"
            ),
            &row.patch,
        );
        assert_success(&leak, &format!("reverting the mutant in {image}"));
        let leak = stdout_of(&leak);
        assert!(leak.starts_with("applied "), "{image}: {leak}");
        assert!(
            leak.ends_with("clean"),
            "{image}: the unmutated {file} is an object of /testbed's repository"
        );
    }

    let runs = dir.path().join("runs");
    let tasks_file = out.join("tasks.jsonl");
    let (gold, gold_pid) = run_benchmark(&tasks_file, "gold", &runs);
    assert_eq!(gold["total"], tasks.len(), "{gold}");
    assert_eq!(gold["resolved"], tasks.len(), "gold: {gold}");
    let (empty, empty_pid) = run_benchmark(&tasks_file, "empty", &runs);
    assert_eq!(empty["total"], tasks.len(), "{empty}");
    assert_eq!(empty["resolved"], 0, "empty: {empty}");

    let rows_images: Vec<String> = tasks.iter().map(|row| row.image.clone().unwrap()).collect();
    assert_no_container_left(&[mine.pid, gold_pid, empty_pid], &rows_images).await;
    images.finish(true, &rows_images);
}

/// Exit 2 and a message naming `needle` (stderr).
fn assert_bad_input(run: &Run, needle: &str, what: &str) {
    assert_eq!(
        run.output.status.code(),
        Some(2),
        "{what}: {}",
        describe(&run.output)
    );
    let stderr = String::from_utf8_lossy(&run.output.stderr);
    assert!(
        stderr.contains(needle),
        "{what}: the message does not name {needle:?}: {}",
        describe(&run.output)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-repo");
    let run = swe_env(&[
        "mine",
        "history",
        "--repo",
        p(&missing),
        "--image",
        FIXTURE_IMAGE,
        "--out",
        p(&dir.path().join("o1")),
    ]);
    assert_bad_input(&run, p(&missing), "mine history --repo <missing>");

    let run = swe_env(&[
        "mine",
        "mutate",
        "--tasks",
        "fixtures",
        "--instance",
        "nope-no-such-instance",
        "--out",
        p(&dir.path().join("o2")),
    ]);
    assert_bad_input(
        &run,
        "nope-no-such-instance",
        "mine mutate --instance <unknown>",
    );

    // A valid repository, but an output directory holding someone else's file: refused, the file untouched.
    let repo = dir.path().join("repo");
    let mut builder = RepoBuilder::new(&repo);
    builder.set("pkg/mod.py", "def f():\n    return 1\n").set(
        "tests/test_mod.py",
        "from pkg.mod import f\n\n\ndef test_f():\n    assert f() == 1\n",
    );
    builder.commit("Initial");
    builder.set("pkg/mod.py", "def f():\n    return 2\n").set(
        "tests/test_mod.py",
        "from pkg.mod import f\n\n\ndef test_f():\n    assert f() == 2\n",
    );
    builder.commit("Change f");
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine\n").unwrap();
    let run = swe_env(&[
        "mine",
        "history",
        "--repo",
        p(&repo),
        "--no-validate",
        "--out",
        p(&foreign),
    ]);
    assert_bad_input(&run, p(&foreign), "mine history --out <foreign directory>");
    let run = swe_env(&[
        "mine",
        "mutate",
        "--tasks",
        "fixtures",
        "--instance",
        FIXTURE_INSTANCE,
        "--out",
        p(&foreign),
    ]);
    assert_bad_input(&run, p(&foreign), "mine mutate --out <foreign directory>");
    assert_eq!(
        std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
        "mine\n"
    );
    assert_eq!(
        std::fs::read_dir(&foreign).unwrap().count(),
        1,
        "files added to a refused --out"
    );

    // The same repository into a fresh directory works without Docker (the walk only).
    let walk = dir.path().join("walk");
    let run = swe_env(&[
        "mine",
        "history",
        "--repo",
        p(&repo),
        "--no-validate",
        "--out",
        p(&walk),
    ]);
    assert_success(&run.output, "mine history --no-validate");
    assert_eq!(read_jsonl(&walk.join("swerl.jsonl")).len(), 1);
    if walk.join("tasks.jsonl").exists() {
        assert_eq!(
            read_jsonl(&walk.join("tasks.jsonl")).len(),
            0,
            "tasks without validation"
        );
    }
}

/// Waits (at most 120 s) until the `swe-env` process `child` owns a container; fails if it ends first.
async fn wait_for_an_owned_container(child: &mut std::process::Child, what: &str) {
    let pid = child.id();
    let engine = engine().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let owned = engine
            .labelled_containers()
            .await
            .unwrap()
            .into_iter()
            .any(|c| c.owner.is_some_and(|owner| owner.pid == pid));
        if owned {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "{what} ended before starting a container"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no container within 120 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// SIGINT in the middle of `mine mutate` (containers of this process running): exit 130, nothing written, no
/// container of the process left. Before the mutate path handled signals, the default action killed it on the spot and
/// its containers stayed behind.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_mutate_exits_130_and_leaves_no_container() {
    // Its own source task (mutant image names are deterministic; the other mutate tests use retrykit and spans).
    let images = ImageCleanup::new("swe-env-mined/swe-env-fixtures-unitconv-mut:");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mutants");
    let mut child = Command::new(EXE)
        .args(["mine", "mutate", "--tasks", "fixtures"])
        .args([
            "--instance",
            "swe-env-fixtures__unitconv-1",
            "--max-mutants",
            "4",
        ])
        .args(["--out", p(&out)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_an_owned_container(&mut child, "mine mutate").await;
    let nix_pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(nix_pid, rustix::process::Signal::INT).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        !out.join("tasks.jsonl").exists(),
        "an interrupted run wrote tasks"
    );
    let made: Vec<String> = images.made();
    assert_no_container_left(&[pid], &made).await;
    images.finish(false, &made);
}

/// The README's demo repository (`scripts/mine-demo-repo.sh`) has the history it promises: N fix commits that are
/// candidates, one source-only and one test-only commit (a walk without Docker; the validating runs are above).
#[test]
fn the_readme_demo_repository_walks_to_its_candidates() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("demo");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/mine-demo-repo.sh");
    let made = Command::new("bash")
        .arg(&script)
        .arg(&repo)
        .arg("4")
        .output()
        .unwrap();
    assert_success(&made, "scripts/mine-demo-repo.sh");
    let out = dir.path().join("walk");
    let run = swe_env(&[
        "mine",
        "history",
        "--repo",
        p(&repo),
        "--repo-name",
        "demo/scale",
        "--no-validate",
        "--out",
        p(&out),
        "--json",
    ]);
    assert_success(&run.output, "mine history --no-validate");
    let records = read_jsonl(&out.join("swerl.jsonl"));
    assert_eq!(records.len(), 4, "{records:?}");
    for record in &records {
        assert_eq!(record["code_context"][0]["path"], "demo/__init__.py");
        assert!(record["problem_statement"]
            .as_str()
            .unwrap()
            .starts_with("Fix scale"));
    }
    let mut reasons: Vec<String> = read_jsonl(&out.join("rejected.jsonl"))
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_owned())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["no_parent", "no_source", "no_tests"]);
}

/// SIGINT while `mine history` grades a candidate whose tests sleep: the candidate in flight is dropped at once
/// (exit 130 within 20 s, not after the test timeout), no container of the process is left, and the output is
/// written with `"interrupted": true`. Before, the run waited for every grading in flight and wrote nothing.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_history_exits_130_at_once_and_writes_what_finished() {
    let tag = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
    let slug = format!("swe-env-test-sleepy-{tag}");
    let images = ImageCleanup::new(&format!("swe-env-mined/{slug}:"));
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("sleepy");
    let mut repo = RepoBuilder::new(&repo_dir);
    repo.set("calc/__init__.py", "def add(a, b):\n    return a - b\n")
        .set("conftest.py", "# root importable\n")
        .set("tests/test_calc.py", "def test_true():\n    assert True\n");
    repo.commit("Initial");
    repo.set("calc/__init__.py", "def add(a, b):\n    return a + b\n")
        .set(
            "tests/test_calc.py",
            "from calc import add\n\n\ndef test_true():\n    assert True\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
        );
    repo.commit("Fix add");
    let out = dir.path().join("mined");
    let mut child = Command::new(EXE)
        .args(["mine", "history", "--repo", p(&repo_dir)])
        .args(["--repo-name", &format!("swe-env-test/sleepy-{tag}")])
        .args(["--image", FIXTURE_IMAGE, "--activate", FIXTURE_ACTIVATE])
        .args(["--test-cmd", "sleep 60; pytest -rA -p no:cacheprovider"])
        .args(["--network", "none", "--runs", "1", "--out", p(&out)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for_an_owned_container(&mut child, "mine history").await;
    // Let the grading container reach its sleeping test command.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let signalled = std::time::Instant::now();
    let nix_pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(nix_pid, rustix::process::Signal::INT).unwrap();
    let output = child.wait_with_output().unwrap();
    let waited = signalled.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(
        waited < std::time::Duration::from_secs(20),
        "exit {waited:?} after SIGINT: {stderr}"
    );
    let summary = read_json(&out.join("summary.json"));
    assert_eq!(summary["interrupted"], Value::Bool(true), "{summary}");
    let made: Vec<String> = images.made();
    assert_no_container_left(&[pid], &made).await;
    images.finish(false, &[]);
}
