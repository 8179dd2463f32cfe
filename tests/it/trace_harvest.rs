//! `swe-env trace harvest` end to end on the fixture dataset with the real Docker engine (issue 16): a harvest of
//! fixture tasks, a resume that redoes nothing, kill -9 mid-run then resume (no task twice, every shard line
//! parses), a config change refused, and `--shard 0/2` + `--shard 1/2` covering the set exactly once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::{describe, engine};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const SPANS: &str = "swe-env-fixtures__spans-1";
const SLUGKIT: &str = "swe-env-fixtures__slugkit-1";
const RETRYKIT: &str = "swe-env-fixtures__retrykit-1";
const UNITCONV: &str = "swe-env-fixtures__unitconv-1";

fn command(out: &Path, instances: &[&str], extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(EXE);
    command
        .args([
            "trace",
            "harvest",
            "--tasks",
            "fixtures",
            "--max-tests-per-task",
            "2",
        ])
        .arg("--out")
        .arg(out)
        .arg("--instances")
        .arg(instances.join(","))
        .args(extra)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    command
}

async fn harvest(out: &Path, instances: &[&str], extra: &[&str]) -> Output {
    command(out, instances, extra).output().await.unwrap()
}

fn manifest(out: &Path) -> Vec<Value> {
    match std::fs::read_to_string(out.join("manifest.jsonl")) {
        Ok(text) => text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

fn committed_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("manifest.jsonl"))
        .map(|text| text.lines().filter(|l| l.ends_with('}')).count())
        .unwrap_or(0)
}

fn ids(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .map(|row| row["instance_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Checks every frame a row points to (each line parses, traces carry a CWM string, counts match the row) and that
/// each shard file, read as one zstd stream, holds exactly the rows' lines (nothing uncommitted left in it).
fn check_shards(out: &Path, rows: &[Value]) {
    let mut per_shard: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        for (key, count_key) in [("traces_at", "traces"), ("items_at", "items")] {
            let at = &row[key];
            let shard = at["shard"].as_str().unwrap();
            let bytes = std::fs::read(out.join("shards").join(shard)).unwrap();
            let offset = at["offset"].as_u64().unwrap() as usize;
            let length = at["length"].as_u64().unwrap() as usize;
            let text = zstd::stream::decode_all(&bytes[offset..offset + length]).unwrap();
            assert_eq!(text.len() as u64, at["bytes"].as_u64().unwrap());
            let text = String::from_utf8(text).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect();
            assert_eq!(
                lines.len() as u64,
                row[count_key].as_u64().unwrap(),
                "{row}"
            );
            if key == "traces_at" {
                for trace in &lines {
                    let cwm = trace["cwm"].as_str().unwrap();
                    assert!(
                        cwm.starts_with("<|begin_of_text|><|trace_context_start|>"),
                        "{cwm}"
                    );
                    assert!(cwm.ends_with("<|end_of_text|>"), "{cwm}");
                    assert!(cwm.contains("# << START_OF_TRACE"), "{cwm}");
                }
            }
            *per_shard.entry(shard.to_owned()).or_default() += lines.len();
        }
    }
    for entry in std::fs::read_dir(out.join("shards")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = zstd::stream::decode_all(std::fs::File::open(&path).unwrap()).unwrap();
        let lines = String::from_utf8(text).unwrap();
        for line in lines.lines() {
            let _: Value = serde_json::from_str(line).unwrap();
        }
        assert_eq!(
            lines.lines().count(),
            per_shard.get(&name).copied().unwrap_or(0),
            "{name} holds lines no row points to"
        );
    }
}

/// Every file under `dir` but `.lock`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else if path.file_name().unwrap() != ".lock" {
                files.insert(
                    path.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&path).unwrap(),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// Waits (at most 120 s) until the running harvest `child` has committed a task; fails if it ends first.
async fn wait_for_a_commit(out: &Path, child: &mut tokio::process::Child) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while committed_lines(out) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing committed in 120 s"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the harvest ended ({status}) before a task was committed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn assert_no_containers_of(pids: &[u32]) {
    for container in engine().await.labelled_containers().await.unwrap() {
        if let Some(owner) = &container.owner {
            assert!(
                !pids.contains(&owner.pid),
                "container {} of trace harvest {} left behind",
                container.id,
                owner.pid
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_harvest_commits_resumes_without_redoing_and_refuses_a_config_change() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("traces");
    let first = harvest(&out, &[SPANS, SLUGKIT], &["--json"]).await;
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let summary: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(summary["invocation"]["committed"], 2, "{summary}");
    let rows = manifest(&out);
    assert_eq!(
        ids(&rows).into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([SPANS.to_owned(), SLUGKIT.to_owned()])
    );
    for row in &rows {
        assert!(row["traces"].as_u64().unwrap() > 0, "{row}");
        assert_eq!(row["tests"], 2, "{row}");
        assert_eq!(row["outcomes"]["passed"], 2, "{row}");
    }
    check_shards(&out, &rows);
    let card: Value =
        serde_json::from_slice(&std::fs::read(out.join("data_card.json")).unwrap()).unwrap();
    assert_eq!(card["tasks"], 2, "{card}");
    let traces: u64 = rows.iter().map(|r| r["traces"].as_u64().unwrap()).sum();
    assert_eq!(card["traces"], traces, "{card}");
    assert!(card["bytes_per_frame"].as_f64().unwrap() > 0.0, "{card}");
    assert!(std::fs::read_to_string(out.join("data_card.md"))
        .unwrap()
        .contains("swe-env-fixtures/spans"));

    // Resume: nothing re-done, the same files byte for byte.
    let before = snapshot(&out);
    let again = harvest(&out, &[SPANS, SLUGKIT], &["--json"]).await;
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    let summary: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["invocation"]["committed"], 0, "{summary}");
    assert_eq!(summary["invocation"]["skipped"], 2, "{summary}");
    assert_eq!(snapshot(&out), before, "a resume changed the directory");

    // A config change is refused with the changed setting named, and touches nothing.
    let changed = harvest(&out, &[SPANS, SLUGKIT], &["--max-frames", "50"]).await;
    assert_eq!(changed.status.code(), Some(2), "{}", describe(&changed));
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        stderr.contains("other settings") && stderr.contains("max_frames"),
        "{stderr}"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "a refused invocation changed the directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_harvest_killed_with_sigkill_resumes_with_no_task_twice() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("traces");
    let all = [SPANS, SLUGKIT, RETRYKIT, UNITCONV];
    let mut child = command(&out, &all, &["--workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for_a_commit(&out, &mut child).await;
    child.kill().await.unwrap();
    let at_kill = committed_lines(&out);
    assert!(at_kill < all.len(), "the harvest finished before the kill");

    // The resume removes the dead run's containers (orphans), repairs the directory and finishes the rest.
    let resumed = harvest(&out, &all, &["--json"]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    let summary: Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(
        summary["invocation"]["committed"].as_u64().unwrap() as usize,
        all.len() - at_kill,
        "{summary}"
    );
    let rows = manifest(&out);
    let ids = ids(&rows);
    assert_eq!(
        ids.len(),
        all.len(),
        "a task committed twice or missing: {ids:?}"
    );
    assert_eq!(
        ids.iter().cloned().collect::<BTreeSet<_>>(),
        all.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    check_shards(&out, &rows);
    assert_no_containers_of(&[pid]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_harvest_shards_cover_the_set_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let all = [SPANS, SLUGKIT, RETRYKIT, UNITCONV];
    let mut seen = Vec::new();
    for shard in ["0/2", "1/2"] {
        let out = dir.path().join(shard.replace('/', "-of-"));
        let output = harvest(&out, &all, &["--shard", shard, "--json"]).await;
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let rows = manifest(&out);
        check_shards(&out, &rows);
        seen.extend(ids(&rows));
    }
    seen.sort();
    let mut expected: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "shards 0/2 and 1/2 must cover the set exactly once"
    );

    let bad = harvest(&dir.path().join("bad"), &all, &["--shard", "2/2"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_harvest_sigterm_exits_130_removes_its_containers_and_keeps_commits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("traces");
    let all = [SPANS, SLUGKIT, RETRYKIT, UNITCONV];
    let mut child = command(&out, &all, &["--workers", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    wait_for_a_commit(&out, &mut child).await;
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let output = child.wait_with_output().await.unwrap();
    let rows = manifest(&out);
    // Each task takes seconds: the signal lands while tasks are in flight.
    assert!(
        rows.len() < all.len(),
        "the harvest finished before SIGTERM"
    );
    assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("interrupted"),
        "{}",
        describe(&output)
    );
    check_shards(&out, &rows);
    assert_no_containers_of(&[pid]).await;
    let resumed = harvest(&out, &all, &[]).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", describe(&resumed));
    let rows = manifest(&out);
    assert_eq!(ids(&rows).len(), all.len());
    check_shards(&out, &rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_harvest_records_failures_by_reason_and_retries_them() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../images/fixtures/tasks.jsonl"
    ))
    .unwrap();
    let mut lines = Vec::new();
    for line in fixtures.lines() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        match row["instance_id"].as_str().unwrap() {
            SPANS => {
                row["patch"] = Value::from(
                    "diff --git a/nope.py b/nope.py\n--- a/nope.py\n+++ b/nope.py\n@@ -1 +1 @@\n-a\n+b\n",
                )
            }
            SLUGKIT => row["test_cmd"] = Value::from("tox -e py311"),
            _ => continue,
        }
        lines.push(row.to_string());
    }
    let dataset = dir.path().join("broken.jsonl");
    std::fs::write(&dataset, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("traces");
    let run = || async {
        tokio::process::Command::new(EXE)
            .args(["trace", "harvest", "--max-tests-per-task", "1", "--dataset"])
            .arg(&dataset)
            .arg("--out")
            .arg(&out)
            .output()
            .await
            .unwrap()
    };
    let first = run().await;
    assert_eq!(first.status.code(), Some(1), "{}", describe(&first));
    assert!(manifest(&out).is_empty());
    let card: Value =
        serde_json::from_slice(&std::fs::read(out.join("data_card.json")).unwrap()).unwrap();
    assert_eq!(card["failed_tasks"]["apply_failed"], 1, "{card}");
    assert_eq!(card["failed_tasks"]["unsupported_runner"], 1, "{card}");
    // Failed tasks are not committed: the next invocation tries them again.
    let second = run().await;
    assert_eq!(second.status.code(), Some(1), "{}", describe(&second));
    let failures = std::fs::read_to_string(out.join("failures.jsonl")).unwrap();
    assert_eq!(failures.lines().count(), 4, "{failures}");
    let card: Value =
        serde_json::from_slice(&std::fs::read(out.join("data_card.json")).unwrap()).unwrap();
    assert_eq!(card["failed_attempts"]["apply_failed"], 2, "{card}");
}
