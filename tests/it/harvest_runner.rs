//! `swe-env harvest` runner behaviour through the real binary: Ctrl-C (exit 130, manifest parquet and data card
//! written, no container left, a rerun completes exactly once) and a failed rollout (recorded in failures.jsonl,
//! exit 1, retried by the next invocation).

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;

use crate::common::{engine, free_port, unique_id};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");

/// The fixture ids (first `n`), comma-separated.
fn fixture_ids(n: usize) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/fixtures/tasks.jsonl"),
    )
    .unwrap();
    text.lines()
        .take(n)
        .map(|line| {
            let row: Value = serde_json::from_str(line).unwrap();
            row["instance_id"].as_str().unwrap().to_owned()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A bash call that changes nothing, after `delay_ms`.
fn idle(delay_ms: u64) -> ScriptedReply {
    ScriptedReply::delayed(
        Duration::from_millis(delay_ms),
        ScriptedReply::Completion(ScriptedCompletion {
            text: "<tool: bash>\ntrue\n</tool>".to_owned(),
            usage: Some(Usage {
                prompt_tokens: 100,
                completion_tokens: 5,
            }),
            ..ScriptedCompletion::default()
        }),
    )
}

fn command(url: &str, model: &str, out: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(EXE);
    command
        .args(["harvest", "--dataset", "fixtures", "--model-url", url])
        .args(["--model", model, "--grading-network", "none", "--json"])
        .arg("--out")
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON on stdout: {}", describe(output)));
    serde_json::from_str(line).unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_exits_130_with_card_and_parquet_no_container_left_and_a_rerun_completes() {
    let server = ScriptedServer::start(Script::default().with_fallback(idle(300)))
        .await
        .unwrap();
    let url = server.base_url();
    let model = unique_id("harvest-int");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids(2);
    let args = [
        "--instance-ids",
        ids.as_str(),
        "--samples",
        "3",
        "--max-turns",
        "3",
        "--workers",
        "2",
    ];
    let child = command(&url, &model, &out, &args).spawn().unwrap();
    let pid = child.id().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while lines(&out.join("manifest.jsonl")).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing committed in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
    let json = summary(&output);
    assert_eq!(json["exit_code"], 130, "{json}");
    assert_eq!(json["interrupted"], true, "{json}");
    let committed = lines(&out.join("manifest.jsonl"));
    assert_eq!(json["committed_total"], committed.len(), "{json}");
    assert!(committed.len() < 6, "the interrupt came too late: {json}");
    // The end-of-invocation files are written on interrupt too, from what was committed.
    assert!(out.join("manifest.parquet").exists());
    let card: Value =
        serde_json::from_slice(&std::fs::read(out.join("data_card.json")).unwrap()).unwrap();
    assert_eq!(card["rollouts"], committed.len(), "{card}");
    for container in engine().await.labelled_containers().await.unwrap() {
        assert!(
            container
                .owner
                .as_ref()
                .is_none_or(|owner| owner.pid != pid),
            "container {} ({}) of the interrupted harvest left behind",
            container.id,
            container.episode
        );
    }

    let rerun = command(&url, &model, &out, &args).output().await.unwrap();
    assert_eq!(rerun.status.code(), Some(0), "{}", describe(&rerun));
    let json = summary(&rerun);
    assert_eq!(json["committed_before"], committed.len(), "{json}");
    assert_eq!(json["committed_total"], 6, "{json}");
    let rows = lines(&out.join("manifest.jsonl"));
    let keys: std::collections::BTreeSet<(String, u64)> = rows
        .iter()
        .map(|row| {
            (
                row["instance_id"].as_str().unwrap().to_owned(),
                row["sample_idx"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!((rows.len(), keys.len()), (6, 6), "{rows:?}");
    let work: Vec<_> = std::fs::read_dir(out.join("work")).unwrap().collect();
    assert!(work.is_empty(), "work/ not cleared: {work:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_rollout_is_recorded_exits_1_and_is_retried_by_the_next_invocation() {
    let model = unique_id("harvest-fail");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids(1);
    let args = [
        "--instance-ids",
        ids.as_str(),
        "--samples",
        "2",
        "--max-turns",
        "2",
        "--max-attempts",
        "1",
    ];
    // Nothing listens there: every rollout's first model call fails.
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let failed = command(&dead, &model, &out, &args).output().await.unwrap();
    assert_eq!(failed.status.code(), Some(1), "{}", describe(&failed));
    let json = summary(&failed);
    assert_eq!(json["failed"], 2, "{json}");
    assert_eq!(json["failed_by_kind"]["model_endpoint"], 2, "{json}");
    assert_eq!(json["committed_total"], 0, "{json}");
    let failures = lines(&out.join("failures.jsonl"));
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().all(|f| f["error_kind"] == "model_endpoint"));
    assert!(lines(&out.join("manifest.jsonl")).is_empty());

    // Another endpoint is not a config change: the same harvest resumes and retries both rollouts.
    let server = ScriptedServer::start(Script::default().with_fallback(idle(0)))
        .await
        .unwrap();
    let retried = command(&server.base_url(), &model, &out, &args)
        .output()
        .await
        .unwrap();
    assert_eq!(retried.status.code(), Some(0), "{}", describe(&retried));
    let json = summary(&retried);
    assert_eq!(json["committed_new"], 2, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    let rows = lines(&out.join("manifest.jsonl"));
    let ids: std::collections::BTreeSet<&str> = rows
        .iter()
        .map(|row| row["rollout_id"].as_str().unwrap())
        .collect();
    let failed_ids: std::collections::BTreeSet<&str> = failures
        .iter()
        .map(|f| f["rollout_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, failed_ids, "the retried rollouts are the failed ones");
}
