//! `swe-env export` run as a program on trajectory files and a harvest directory written here: filters and their
//! counts, dedup, the per-task cap, closed sets failing at parse time, two episodes in one file, nothing hidden in
//! the output. No Docker needed, except one test that runs a real episode (fixture task in Docker, scripted model
//! server) to check that a credential in `--model-url` reaches neither the trajectory nor an export.

use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};
use swe_env::harvest::store::{
    rollout_id, DatasetEntry, HarvestHeader, HarvestStore, RolloutLine, RolloutTiming, StoreOptions,
};
use swe_env::trajectory::Record;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");

const GOLD_SECRET: &str = "GOLD_SECRET_patch_line_4d1e";
const TEST_SECRET: &str = "TEST_SECRET_test_patch_9a0c";
const F2P_SECRET: &str = "test_F2P_SECRET_b7c3";

/// What one synthetic episode looks like.
#[derive(Clone)]
struct Episode {
    id: String,
    task: String,
    repo: String,
    /// `(action, observation)` per step.
    steps: Vec<(String, String)>,
    /// `None`: unfinished (no `episode_end`).
    status: Option<&'static str>,
    resolved: Option<bool>,
    submission: Option<String>,
    tokens_per_step: u64,
}

impl Episode {
    fn new(id: &str, task: &str) -> Episode {
        Episode {
            id: id.into(),
            task: task.into(),
            repo: "owner/alpha".into(),
            steps: vec![
                ("<tool: bash>\nls\n</tool>".into(), "a.py".into()),
                ("<tool: submit>\n</tool>".into(), "submitted".into()),
            ],
            status: Some("submitted"),
            resolved: Some(true),
            submission: Some(patch("a = 2")),
            tokens_per_step: 100,
        }
    }

    fn records(&self) -> Vec<Record> {
        let mut records = vec![json!({
            "type": "episode_start", "schema_version": 1, "episode_id": self.id, "instance_id": self.task,
            "task": {
                "instance_id": self.task, "repo": self.repo, "problem_statement": "the widget breaks",
                "patch": format!("diff --git a/w.py b/w.py\n+{GOLD_SECRET}\n"),
                "test_patch": format!("diff --git a/t.py b/t.py\n+def {TEST_SECRET}(): pass\n"),
                "FAIL_TO_PASS": [format!("t.py::{F2P_SECRET}")], "PASS_TO_PASS": ["t.py::test_PASS2PASS_SECRET_e2f1"],
            },
            "image": "img", "image_id": "", "tool_format": "text", "limits": {},
            "model": {"name": "scripted", "sampling": {"temperature": 0.5}},
            "prompt": [{"role": "system", "content": "You fix bugs."}, {"role": "user", "content": "the widget breaks"}],
            "versions": {}, "started_at": "2026-01-01T00:00:00.000Z",
        })];
        for (idx, (action, observation)) in self.steps.iter().enumerate() {
            records.push(json!({
                "type": "step", "step_idx": idx, "raw_action": action, "parsed_call": {"tool": "bash"},
                "tool": "bash", "observation": observation, "tool_ms": 1, "model_ms": 2,
                "tokens": {"prompt": self.tokens_per_step - 10, "completion": 10}, "at": "t",
            }));
        }
        if let Some(status) = self.status {
            let rewards = self.resolved.map(|resolved| {
                json!({"resolved": resolved, "execution": if resolved { 1.0 } else { -1.0 }, "similarity": 0.5,
                       "shaped": if resolved { 1.0 } else { -0.5 }})
            });
            records.push(json!({
                "type": "episode_end", "status": status, "submission": self.submission, "n_steps": self.steps.len(),
                "rewards": rewards,
                "grading": {"tests_status": {"FAIL_TO_PASS": {"success": [format!("t.py::{F2P_SECRET}")]}}},
                "duration_ms": 9, "ended_at": "t",
            }));
        }
        records
            .into_iter()
            .map(|value| serde_json::from_value(value).unwrap())
            .collect()
    }

    fn write(&self, dir: &Path) {
        let text: String = self
            .records()
            .iter()
            .map(|r| format!("{}\n", serde_json::to_string(r).unwrap()))
            .collect();
        std::fs::write(dir.join(format!("{}.jsonl", self.id)), text).unwrap();
    }
}

fn patch(line: &str) -> String {
    format!("diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1\n+{line}\n")
}

struct Run {
    code: i32,
    rows: Vec<Value>,
    stdout: String,
    stderr: String,
}

fn export(args: &[&str]) -> Run {
    let output = Command::new(EXE).arg("export").args(args).output().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    Run {
        code: output.status.code().unwrap(),
        rows: stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect(),
        stdout,
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn ids(run: &Run) -> Vec<String> {
    let mut ids: Vec<String> = run
        .rows
        .iter()
        .map(|row| row["episode_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// The fixture set: `t1` has a resolved episode, an identical conversation (unresolved), the same patch written
/// differently and a distinct one; `t2` (another repo) a max-turns episode; plus an unfinished and an empty one.
fn write_fixtures(dir: &Path) {
    let a = Episode::new("t1-a", "t1");
    a.write(dir);
    let mut same_conversation = a.clone();
    same_conversation.id = "t1-b".into();
    same_conversation.resolved = Some(false);
    same_conversation.submission = Some(patch("a=3"));
    same_conversation.write(dir);
    let mut same_patch = Episode::new("t1-c", "t1");
    same_patch.steps[0].1 = "a.py b.py".into();
    same_patch.resolved = Some(false);
    // `a = 2` with other spacing, a comment and other offsets: the same normalised patch as t1-a.
    same_patch.submission = Some(
        "diff --git a/x.py b/x.py\n--- a/x.py\n+++ b/x.py\n@@ -40 +40 @@\n-a=1\n+a  =  2   # fixed\n".into(),
    );
    same_patch.write(dir);
    let mut distinct = Episode::new("t1-d", "t1");
    distinct.steps[0].1 = "nothing here".into();
    distinct.submission = Some(patch("a = 4"));
    distinct.tokens_per_step = 1000;
    distinct.write(dir);
    let mut other_repo = Episode::new("t2-a", "t2");
    other_repo.repo = "owner/beta".into();
    other_repo.status = Some("max_turns");
    other_repo.resolved = Some(false);
    other_repo.submission = None;
    other_repo
        .steps
        .push(("<tool: bash>\npwd\n</tool>".into(), "/testbed".into()));
    other_repo.write(dir);
    let mut unfinished = Episode::new("t3-unfinished", "t3");
    unfinished.status = None;
    unfinished.write(dir);
    let mut empty = Episode::new("t3-empty", "t3");
    empty.steps.clear();
    empty.status = Some("model_error");
    empty.resolved = None;
    empty.write(dir);
}

#[test]
fn closed_sets_fail_at_parse_time_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path());
    let input = dir.path().to_str().unwrap();
    for args in [
        vec![input, "--status", "submited"],
        vec![input, "--only-status", "submited"],
        vec![input, "--dedup", "patches"],
        vec![input, "--resolved", "yes"],
        vec![input, "--reward-key", "reward"],
        vec![input, "--resolved", "true", "--only-resolved"],
        vec![input, "--min-turns", "5", "--max-turns", "2"],
        vec![input, "--min-reward", "1", "--max-reward", "-1"],
    ] {
        let run = export(&args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stdout.is_empty(), "{args:?} wrote output");
    }
    let run = export(&[input, "--status", "submited"]);
    assert!(
        run.stderr.contains("submitted") && run.stderr.contains("max_turns"),
        "the error lists the statuses: {}",
        run.stderr
    );
}

#[test]
fn filters_exclude_and_count_per_reason() {
    let dir = tempfile::tempdir().unwrap();
    write_fixtures(dir.path());
    let input = dir.path().to_str().unwrap();

    // Default: unfinished and empty episodes are left out and counted.
    let run = export(&[input]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ids(&run), ["t1-a", "t1-b", "t1-c", "t1-d", "t2-a"]);
    assert!(
        run.stderr
            .contains("exported 5; excluded: unfinished 1, empty 1, status 0"),
        "{}",
        run.stderr
    );
    let run = export(&[input, "--include-unfinished"]);
    assert_eq!(run.rows.len(), 7, "{}", run.stderr);

    let cases: Vec<(Vec<&str>, Vec<&str>, &str)> = vec![
        (vec!["--status", "max_turns"], vec!["t2-a"], "status 4"),
        (
            vec!["--status", "max_turns", "--only-status", "submitted"],
            vec!["t1-a", "t1-b", "t1-c", "t1-d", "t2-a"],
            "status 0",
        ),
        (
            vec!["--resolved", "true"],
            vec!["t1-a", "t1-d"],
            "resolved 3",
        ),
        (vec!["--only-resolved"], vec!["t1-a", "t1-d"], "resolved 3"),
        (
            vec!["--resolved", "false"],
            vec!["t1-b", "t1-c", "t2-a"],
            "resolved 2",
        ),
        (vec!["--min-reward", "0"], vec!["t1-a", "t1-d"], "reward 3"),
        (
            vec!["--max-reward", "-1"],
            vec!["t1-b", "t1-c", "t2-a"],
            "reward 2",
        ),
        (
            vec![
                "--reward-key",
                "shaped",
                "--min-reward",
                "-0.6",
                "--max-reward",
                "-0.4",
            ],
            vec!["t1-b", "t1-c", "t2-a"],
            "reward 2",
        ),
        (vec!["--repo", "owner/beta"], vec!["t2-a"], "repo 4"),
        (vec!["--min-turns", "3"], vec!["t2-a"], "turns 4"),
        (
            vec!["--max-turns", "2", "--max-tokens", "500"],
            vec!["t1-a", "t1-b", "t1-c"],
            "turns 1, tokens 1",
        ),
        (vec!["--min-tokens", "2000"], vec!["t1-d"], "tokens 4"),
        // Identical conversations: t1-b repeats t1-a (t1-a is resolved, so it is the one kept).
        (
            vec!["--dedup", "trajectory"],
            vec!["t1-a", "t1-c", "t1-d", "t2-a"],
            "dedup 1, cap 0",
        ),
        // Near-identical patches: t1-c is t1-a's patch with other spacing, comment and offsets.
        (
            vec!["--dedup", "patch"],
            vec!["t1-a", "t1-b", "t1-d", "t2-a"],
            "dedup 1, cap 0",
        ),
        (
            vec!["--dedup", "both"],
            vec!["t1-a", "t1-d", "t2-a"],
            "dedup 2, cap 0",
        ),
        // At most two per task: resolved first (t1-a, t1-d), then by episode id.
        (
            vec!["--per-task-cap", "2"],
            vec!["t1-a", "t1-d", "t2-a"],
            "dedup 0, cap 2",
        ),
        (
            vec!["--per-task-cap", "1", "--resolved", "false"],
            vec!["t1-b", "t2-a"],
            "resolved 2, reward 0, repo 0, turns 0, tokens 0, dedup 0, cap 1",
        ),
    ];
    for (args, expected, counts) in cases {
        let mut all = vec![input];
        all.extend(&args);
        let run = export(&all);
        assert_eq!(run.code, 0, "{args:?}: {}", run.stderr);
        assert_eq!(ids(&run), expected, "{args:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains(&format!("exported {}; excluded: ", expected.len()))
                && run.stderr.contains(counts),
            "{args:?}: {}",
            run.stderr
        );
    }
}

#[test]
fn a_file_with_two_episodes_is_reported_and_skipped_never_merged() {
    let dir = tempfile::tempdir().unwrap();
    let first = Episode::new("ep-one", "t1");
    let second = Episode::new("ep-two", "t1");
    let mut text = String::new();
    for record in first.records().iter().chain(second.records().iter()) {
        text.push_str(&serde_json::to_string(record).unwrap());
        text.push('\n');
    }
    let merged = dir.path().join("merged.jsonl");
    std::fs::write(&merged, text).unwrap();
    Episode::new("ep-good", "t2").write(dir.path());
    let out = dir.path().join("out.jsonl");
    let run = export(&[dir.path().to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(run.code, 1, "an unreadable input is exit 1: {}", run.stderr);
    // Lines 1-4 are the first episode (start, two steps, end); the second one starts on line 5.
    assert!(
        run.stderr.contains("merged.jsonl line 5") && run.stderr.contains("after the episode_end"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("unreadable 1"), "{}", run.stderr);
    let rows: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["episode_id"], "ep-good");
}

#[test]
fn nothing_hidden_is_exported_unless_asked_and_then_only_in_metadata() {
    let dir = tempfile::tempdir().unwrap();
    Episode::new("ep-leak", "t1").write(dir.path());
    let input = dir.path().to_str().unwrap();
    let secrets = [
        GOLD_SECRET,
        TEST_SECRET,
        F2P_SECRET,
        "test_PASS2PASS_SECRET_e2f1",
    ];
    for format in ["openai-chat", "cwm"] {
        let run = export(&[input, "--format", format]);
        assert_eq!(run.rows.len(), 1, "{}", run.stderr);
        assert!(run.stdout.contains("the widget breaks"));
        for secret in secrets {
            assert!(!run.stdout.contains(secret), "{format}: {secret} leaked");
        }
        let run = export(&[input, "--format", format, "--include-task"]);
        let row = &run.rows[0];
        assert_eq!(row["metadata"]["task"]["instance_id"], "t1");
        for secret in secrets {
            assert!(
                row["metadata"]["task"].to_string().contains(secret),
                "{secret} missing from the task row"
            );
            assert!(
                !row["messages"].to_string().contains(secret),
                "{secret} in the messages"
            );
        }
    }
}

fn rollout(
    instance_id: &str,
    sample_idx: u32,
    episode: &Episode,
    config_hash: &str,
) -> RolloutLine {
    RolloutLine {
        rollout_id: rollout_id("d5", instance_id, sample_idx, config_hash),
        dataset_sha256: "d5".into(),
        config_hash: config_hash.into(),
        instance_id: instance_id.into(),
        repo: episode.repo.clone(),
        sample_idx,
        seed: Some(100 + u64::from(sample_idx)),
        temperature: Some(0.8),
        model: "scripted".into(),
        resolved: episode.resolved == Some(true),
        timing: RolloutTiming::default(),
        records: episode.records(),
    }
}

/// A harvest store in `out_dir` over one test dataset of `rows` rows (sha256 `d5`).
async fn test_store(out_dir: &Path, config_hash: &str, rows: u64) -> HarvestStore {
    HarvestStore::open(
        out_dir,
        HarvestHeader {
            datasets: vec![DatasetEntry {
                source: "test".into(),
                sha256: "d5".into(),
                rows,
            }],
            config_hash: config_hash.into(),
            config: json!({"model": "scripted"}),
        },
        StoreOptions::default(),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn harvest_directories_export_their_rollouts_with_ids_filters_and_cap() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("harvest");
    let config_hash = "cfg0";
    let mut store = test_store(&out_dir, config_hash, 2).await;
    let mut rollout_ids = Vec::new();
    for sample_idx in 0..4u32 {
        let mut episode = Episode::new(&format!("t1.s{sample_idx}"), "t1");
        episode.resolved = Some(sample_idx == 3);
        episode.steps[0].1 = format!("listing {sample_idx}");
        if sample_idx == 1 {
            // The same conversation as sample 0.
            episode.steps[0].1 = "listing 0".into();
        }
        let line = rollout("t1", sample_idx, &episode, config_hash);
        rollout_ids.push(line.rollout_id.clone());
        store.commit(line).await.unwrap();
    }
    let mut other = Episode::new("t2.s0", "t2");
    other.status = Some("max_turns");
    other.resolved = Some(false);
    store
        .commit(rollout("t2", 0, &other, config_hash))
        .await
        .unwrap();
    // The store only commits whole trajectories; one without a step is left out by default.
    let mut empty = Episode::new("t2.s1", "t2");
    empty.steps.clear();
    empty.status = Some("model_error");
    store
        .commit(rollout("t2", 1, &empty, config_hash))
        .await
        .unwrap();
    drop(store);
    let input = out_dir.to_str().unwrap();

    let run = export(&[input]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.rows.len(), 5, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("exported 5; excluded: unfinished 0, empty 1,"),
        "{}",
        run.stderr
    );
    let run_all = export(&[input, "--include-unfinished"]);
    assert_eq!(run_all.rows.len(), 6, "{}", run_all.stderr);
    let first = &run.rows[0]["metadata"];
    assert_eq!(first["rollout_id"], rollout_ids[0].as_str());
    assert_eq!(first["sample_idx"], 0);
    assert_eq!(first["seed"], 100);
    assert_eq!(first["temperature"], 0.8);
    assert_eq!(first["config_hash"], config_hash);
    assert_eq!(first["repo"], "owner/alpha");
    for secret in [GOLD_SECRET, TEST_SECRET, F2P_SECRET] {
        assert!(!run.stdout.contains(secret), "{secret} leaked");
    }

    let run = export(&[input, "--status", "submitted", "--dedup", "trajectory"]);
    assert_eq!(run.rows.len(), 3, "{}", run.stderr);
    assert!(
        run.stderr.contains("status 1") && run.stderr.contains("dedup 1"),
        "{}",
        run.stderr
    );

    // Cap 2 per task: t1's resolved sample 3 first, then the lowest rollout id of the rest.
    let run = export(&[input, "--per-task-cap", "2"]);
    let mut rest = rollout_ids[..3].to_vec();
    rest.sort();
    let mut kept: Vec<&str> = run
        .rows
        .iter()
        .filter(|row| row["instance_id"] == "t1")
        .map(|row| row["metadata"]["rollout_id"].as_str().unwrap())
        .collect();
    kept.sort();
    let mut expected = vec![rollout_ids[3].as_str(), rest[0].as_str()];
    expected.sort();
    assert_eq!(kept, expected, "{}", run.stderr);
    assert!(
        run.stderr.contains("exported 3;") && run.stderr.contains("cap 2"),
        "{}",
        run.stderr
    );

    // Harvest and file inputs together.
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    Episode::new("file-ep", "t9").write(&files);
    let run = export(&[input, files.to_str().unwrap(), "--format", "cwm"]);
    assert_eq!(run.rows.len(), 6, "{}", run.stderr);
    assert!(run.stderr.contains("(of 7 inputs)"), "{}", run.stderr);
}

/// The harvest manifest's hashes (written by the store) and the export's must be the same functions, or dedup over a
/// harvest (manifest rows) and over trajectory files would disagree.
#[test]
fn export_hashes_are_the_harvest_manifest_hashes() {
    use swe_env::trajectory::filter::{conversation_hash, patch_hash};
    use swe_env::trajectory::ReadTrajectory;
    let mut episode = Episode::new("h", "t1");
    episode
        .steps
        .push(("<tool: bash>\ncat a.py\n</tool>".into(), "x = 1".into()));
    let records = episode.records();
    let trajectory = ReadTrajectory::from_records(records.clone()).unwrap();
    let hash = conversation_hash(&trajectory);
    assert_eq!(hash, swe_env::harvest::store::trajectory_hash(&records));
    let mut other = trajectory.clone();
    other.steps[2].observation = "x = 2".into();
    assert_ne!(conversation_hash(&other), hash);
    for submission in [
        patch("a = 2"),
        "--- a/x.py\n+++ b/x.py\n@@ -1 +1,2 @@\n a=1\n+  \n".to_owned(),
        String::new(),
    ] {
        assert_eq!(
            patch_hash(&submission),
            swe_env::harvest::store::patch_hash(&submission),
            "{submission:?}"
        );
    }
}

/// A `--model-url` with user-info: the requests authenticate with it, but neither the trajectory (each call's
/// `tokens.endpoint`, `episode_start.model.endpoints`) nor an export (its metadata) holds the secret.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_in_the_model_url_reach_no_record_and_no_export() {
    use swe_env_model::scripted::{Script, ScriptedServer};
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(Script::new(crate::model_loop::text_script()))
        .await
        .unwrap();
    let plain = server.base_url();
    let secret_url = plain.replacen("http://", "http://user:s3cret@", 1);
    let episode_id = crate::common::unique_id("export-cred");
    let output = tokio::process::Command::new(EXE)
        .args([
            "run-episode",
            "--task",
            "swe-env-fixtures__spans-1",
            "--tasks",
        ])
        .arg(crate::episode::fixtures_file())
        .args(["--model-url", &secret_url, "--model", "scripted-model"])
        .args(["--mode", "completions", "--max-turns", "20"])
        .args(["--episode-id", &episode_id, "--trajectory-dir"])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    // The secret was used: reqwest sends user-info as basic auth.
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Basic dXNlcjpzM2NyZXQ=")
    );
    let file = dir.path().join(format!("{episode_id}.jsonl"));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("s3cret"), "the trajectory holds the secret");
    let records: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(records[0]["model"]["endpoints"], json!([plain]));
    let step = records.iter().find(|r| r["type"] == "step").unwrap();
    assert_eq!(step["tokens"]["endpoint"], plain.trim_end_matches('/'));
    for format in ["openai-chat", "cwm"] {
        let run = export(&[file.to_str().unwrap(), "--format", format]);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_eq!(run.rows.len(), 1, "{}", run.stderr);
        assert_eq!(
            run.rows[0]["metadata"]["model"]["endpoints"],
            json!([plain])
        );
        assert!(!run.stdout.contains("s3cret"), "{format}: {}", run.stdout);
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_holding(&path, needle));
        } else if String::from_utf8_lossy(&std::fs::read(&path).unwrap()).contains(needle) {
            hits.push(path.display().to_string());
        }
    }
    hits
}

/// The same through `run-benchmark`: no file of the run directory (manifest, results, trajectories, report) holds
/// the secret of a `--model-url` with user-info, and an export of its trajectories has none either.
#[tokio::test(flavor = "multi_thread")]
async fn a_benchmark_run_directory_holds_no_model_url_credential() {
    use swe_env_model::scripted::{Script, ScriptedServer};
    let server = ScriptedServer::start(Script::new(crate::model_loop::text_script()))
        .await
        .unwrap();
    let secret_url = server
        .base_url()
        .replacen("http://", "http://user:s3cret@", 1);
    let out = tempfile::tempdir().unwrap();
    let run_id = crate::common::unique_id("cred");
    let output = tokio::process::Command::new(EXE)
        .args([
            "run-benchmark",
            "fixtures",
            "--instance-ids",
            "swe-env-fixtures__spans-1",
        ])
        .args([
            "--model-url",
            &secret_url,
            "--model",
            "scripted",
            "--mode",
            "chat-text",
        ])
        .args([
            "--json",
            "--run-id",
            &run_id,
            "--grading-network",
            "none",
            "--output-dir",
        ])
        .arg(out.path())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("s3cret") && !stdout.contains("s3cret"),
        "{stderr}"
    );
    let run_dir = out.path().join(&run_id);
    assert_eq!(files_holding(&run_dir, "s3cret"), Vec::<String>::new());
    let run = export(&[run_dir.to_str().unwrap(), "--format", "openai-chat"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.rows.is_empty(), "{}", run.stderr);
    assert!(!run.stdout.contains("s3cret"));
}

/// Peak RSS (VmHWM) of `swe-env export ARGS` in bytes, read from `/proc/PID/status` every few milliseconds while it
/// runs (the last reading before it exits), with its output.
fn export_peak_rss(args: &[&str]) -> (Run, u64) {
    let child = Command::new(EXE)
        .arg("export")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(status) = std::fs::read_to_string(&status_path) {
                    if let Some(kb) = status
                        .lines()
                        .find(|l| l.starts_with("VmHWM:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|kb| kb.parse::<u64>().ok())
                    {
                        peak.fetch_max(kb * 1024, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let output = child.wait_with_output().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    poller.join().unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let run = Run {
        code: output.status.code().unwrap(),
        rows: stdout
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect(),
        stdout,
        stderr: String::from_utf8(output.stderr).unwrap(),
    };
    (run, peak.load(std::sync::atomic::Ordering::SeqCst))
}

/// A harvest of 100 000 manifest rows exports in bounded memory: the manifest is streamed, nothing is kept per row
/// without dedup or a cap, and with them only a small summary per row that passed the filters (no manifest row).
/// 50 rollouts are real commits (resolved, one per task); 100 000 more rows (unresolved, every one its own id and
/// hashes, tasks shared with the real ones) point at a real frame but are excluded from the manifest alone — by
/// `--resolved true`, or by the cap of 1 per task (resolved first) — so they are never decoded. Holding the rows
/// (~2.7 KB each in memory) needs ~270 MB here.
#[tokio::test]
async fn a_harvest_of_100k_rows_exports_in_bounded_memory() {
    const TASKS: u64 = 50;
    const FILLER: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("harvest");
    let config_hash = "cfg0";
    let mut store = test_store(&out_dir, config_hash, TASKS).await;
    let mut template = None;
    for task in 0..TASKS {
        let id = format!("task-{task}");
        let episode = Episode::new(&format!("{id}.s0"), &id);
        let row = store
            .commit(rollout(&id, 0, &episode, config_hash))
            .await
            .unwrap();
        template.get_or_insert(row);
    }
    drop(store);
    {
        use std::io::Write;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(out_dir.join("manifest.jsonl"))
            .unwrap();
        let mut out = std::io::BufWriter::new(file);
        // One serialization, then markers replaced per row (serializing 100k rows in debug takes seconds).
        let mut row = template.unwrap();
        row.rollout_id = "@@ID@@".into();
        row.instance_id = "@@TASK@@".into();
        row.episode_id = "@@EPISODE@@".into();
        row.trajectory_hash = "@@HASH@@".into();
        row.patch_hash = Some("@@PATCH@@".into());
        row.resolved = false;
        let text = serde_json::to_string(&row).unwrap();
        for marker in ["@@ID@@", "@@TASK@@", "@@EPISODE@@", "@@HASH@@", "@@PATCH@@"] {
            assert_eq!(text.matches(marker).count(), 1, "{marker} in {text}");
        }
        for k in 0..FILLER {
            let line = text
                .replace("@@ID@@", &format!("{:032x}", k + 1))
                .replace("@@TASK@@", &format!("task-{}", k % TASKS))
                .replace("@@EPISODE@@", &format!("filler-{k}"))
                .replace("@@HASH@@", &format!("{:064x}", k + 1))
                .replace("@@PATCH@@", &format!("{:064x}", u64::MAX - k));
            out.write_all(line.as_bytes()).unwrap();
            out.write_all(b"\n").unwrap();
        }
        out.flush().unwrap();
    }
    let input = out_dir.to_str().unwrap();
    let mb = |bytes: u64| bytes as f64 / 1e6;

    let (run, streamed) = export_peak_rss(&[input, "--resolved", "true"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.rows.len(), TASKS as usize, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("exported {TASKS};"))
            && run.stderr.contains("resolved 100000"),
        "{}",
        run.stderr
    );
    let (run, selected) = export_peak_rss(&[input, "--dedup", "both", "--per-task-cap", "1"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.rows.len(), TASKS as usize, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("exported {TASKS};")) && run.stderr.contains("cap 100000"),
        "{}",
        run.stderr
    );
    let mut kept: Vec<&str> = run
        .rows
        .iter()
        .map(|row| row["episode_id"].as_str().unwrap())
        .collect();
    kept.sort();
    kept.dedup();
    assert_eq!(kept.len(), TASKS as usize);
    assert!(kept.iter().all(|id| id.ends_with(".s0")), "{kept:?}");
    println!(
        "export of {} manifest rows: peak RSS {:.1} MB streamed (--resolved true), {:.1} MB with --dedup both \
         --per-task-cap 1",
        TASKS + FILLER,
        mb(streamed),
        mb(selected)
    );
    assert!(
        streamed < 48_000_000,
        "peak RSS {:.1} MB without dedup or cap",
        mb(streamed)
    );
    assert!(
        selected < 96_000_000,
        "peak RSS {:.1} MB with dedup and cap",
        mb(selected)
    );
}
