//! `swe-env harvest` runner behaviour through the real binary: Ctrl-C (exit 130, manifest parquet and data card
//! written, no container left, a rerun completes exactly once) and a failed rollout (recorded in failures.jsonl,
//! exit 1, retried by the next invocation).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;

use crate::common::{describe, engine, free_port, unique_id};
use crate::harvest::summary;

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

/// The harvest binary with explicit datasets (no `--dataset fixtures`).
fn bare_command(datasets: &[&Path], out: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(EXE);
    command.arg("harvest");
    for dataset in datasets {
        command.arg("--dataset").arg(dataset);
    }
    command
        .args([
            "--model-url",
            "http://127.0.0.1:9/v1",
            "--model",
            "m",
            "--json",
        ])
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_dataset_twice_or_an_instance_id_in_two_datasets_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/fixtures/tasks.jsonl"),
    )
    .unwrap();
    let a = dir.path().join("a.jsonl");
    let b = dir.path().join("b.jsonl");
    std::fs::write(&a, &fixtures).unwrap();
    std::fs::write(&b, &fixtures).unwrap();
    let out = dir.path().join("out");
    let same = bare_command(&[&a, &b], &out).output().await.unwrap();
    assert_eq!(same.status.code(), Some(2), "{}", describe(&same));
    let stderr = String::from_utf8_lossy(&same.stderr);
    assert!(stderr.contains("same content"), "{stderr}");
    assert!(
        stderr.contains(a.to_str().unwrap()) && stderr.contains(b.to_str().unwrap()),
        "{stderr}"
    );
    assert!(!out.join("manifest.jsonl").exists());

    // Another file holding one row of the first: the instance id would be harvested twice.
    let first_row = fixtures.lines().next().unwrap();
    std::fs::write(&b, format!("{first_row}\n")).unwrap();
    let shared = bare_command(&[&a, &b], &out).output().await.unwrap();
    assert_eq!(shared.status.code(), Some(2), "{}", describe(&shared));
    let stderr = String::from_utf8_lossy(&shared.stderr);
    let id: Value = serde_json::from_str(first_row).unwrap();
    assert!(
        stderr.contains(id["instance_id"].as_str().unwrap()),
        "{stderr}"
    );
    assert!(stderr.contains("--instance-ids"), "{stderr}");
    assert!(!out.join("manifest.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_trips_the_breaker_and_gives_nothing_up_but_refused_rollouts_are_given_up() {
    let model = unique_id("harvest-breaker");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids(1);
    let base = [
        "--instance-ids",
        ids.as_str(),
        "--samples",
        "5",
        "--max-turns",
        "1",
        "--max-attempts",
        "1",
    ];
    // Nothing listens there: the breaker stops the harvest after 3 failures in a row, not after all 5.
    let dead = format!("http://127.0.0.1:{}/v1", free_port());
    let mut args = base.to_vec();
    args.extend(["--workers", "1", "--max-consecutive-failures", "3"]);
    let tripped = command(&dead, &model, &out, &args).output().await.unwrap();
    assert_eq!(tripped.status.code(), Some(3), "{}", describe(&tripped));
    let json = summary(&tripped);
    assert_eq!(json["failed"], 3, "{json}");
    assert_eq!(json["exit_code"], 3, "{json}");
    let stderr = String::from_utf8_lossy(&tripped.stderr);
    assert!(
        stderr.contains("the model endpoint failed 3 rollouts in a row"),
        "{stderr}"
    );
    assert!(stderr.contains("rerun"), "{stderr}");
    assert_eq!(lines(&out.join("failures.jsonl")).len(), 3);

    // An outage says nothing about the rollouts: even with one failure allowed per rollout, none is given up once
    // the endpoint is back, and all 5 run.
    let server = ScriptedServer::start(Script::default().with_fallback(idle(0)))
        .await
        .unwrap();
    let mut args = base.to_vec();
    args.extend(["--workers", "2", "--max-rollout-failures", "1"]);
    let healed = command(&server.base_url(), &model, &out, &args)
        .output()
        .await
        .unwrap();
    assert_eq!(healed.status.code(), Some(0), "{}", describe(&healed));
    let json = summary(&healed);
    assert_eq!(
        (json["given_up"].as_u64(), json["committed_new"].as_u64()),
        (Some(0), Some(5)),
        "{json}"
    );

    // A rollout the endpoint refuses (HTTP 400: retrying repeats it) fails as `model_rejected`, which does not trip
    // the breaker and, after `--max-rollout-failures`, is given up; --retry-given-up runs it once more.
    let out = dir.path().join("out-rejected");
    let refusing =
        ScriptedServer::start(Script::default().with_fallback(ScriptedReply::status(400)))
            .await
            .unwrap();
    let mut args = vec![
        "--instance-ids",
        ids.as_str(),
        "--samples",
        "2",
        "--max-turns",
        "1",
        "--max-attempts",
        "1",
        "--max-consecutive-failures",
        "1",
    ];
    let rejected = command(&refusing.base_url(), &model, &out, &args)
        .output()
        .await
        .unwrap();
    assert_eq!(rejected.status.code(), Some(1), "{}", describe(&rejected));
    let json = summary(&rejected);
    assert_eq!(json["failed_by_kind"]["model_rejected"], 2, "{json}");
    assert_eq!(json["exit_code"], 1, "not an outage: {json}");
    args.extend(["--max-rollout-failures", "1"]);
    let given_up = command(&refusing.base_url(), &model, &out, &args)
        .output()
        .await
        .unwrap();
    assert_eq!(given_up.status.code(), Some(1), "{}", describe(&given_up));
    let json = summary(&given_up);
    assert_eq!(
        (json["given_up"].as_u64(), json["failed"].as_u64()),
        (Some(2), Some(0)),
        "{json}"
    );
    let listed = json["given_up_rollouts"].to_string();
    assert!(listed.contains("model_rejected"), "{listed}");
    let card = std::fs::read_to_string(out.join("data_card.md")).unwrap();
    assert!(card.contains("2 rollouts given up"), "{card}");
    args.push("--retry-given-up");
    let retried = command(&server.base_url(), &model, &out, &args)
        .output()
        .await
        .unwrap();
    assert_eq!(retried.status.code(), Some(0), "{}", describe(&retried));
    let json = summary(&retried);
    assert_eq!(
        (json["given_up"].as_u64(), json["committed_total"].as_u64()),
        (Some(0), Some(2)),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn raising_k_with_a_temperature_list_continues_the_harvest() {
    let server = ScriptedServer::start(Script::default().with_fallback(idle(0)))
        .await
        .unwrap();
    let model = unique_id("harvest-k");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids(1);
    let run = |k: &'static str, extra: &[&str]| {
        let mut args = vec![
            "--instance-ids",
            ids.as_str(),
            "--samples",
            k,
            "--max-turns",
            "1",
            "--temperatures",
            "0.2,0.6",
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        command(&server.base_url(), &model, &out, &args)
    };
    let first = run("1", &[]).output().await.unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let before = lines(&out.join("manifest.jsonl"));
    assert_eq!(before.len(), 1);
    let asked = server.requests();
    assert!(
        asked.iter().all(|r| r.body.get("logprobs").is_some()),
        "logprobs asked for by default"
    );
    // More samples, and the recording-only knobs off: neither changes the config hash.
    let more = run("3", &["--logprobs", "off", "--return-token-ids", "false"])
        .output()
        .await
        .unwrap();
    assert_eq!(more.status.code(), Some(0), "{}", describe(&more));
    let json = summary(&more);
    assert_eq!(
        (
            json["committed_before"].as_u64(),
            json["committed_new"].as_u64()
        ),
        (Some(1), Some(2)),
        "{json}"
    );
    let rows = lines(&out.join("manifest.jsonl"));
    assert_eq!(rows[0], before[0], "the old row is kept as it was");
    let mut by_sample: Vec<(u64, f64)> = rows
        .iter()
        .map(|r| {
            (
                r["sample_idx"].as_u64().unwrap(),
                r["temperature"].as_f64().unwrap(),
            )
        })
        .collect();
    by_sample.sort_by_key(|pair| pair.0);
    assert_eq!(by_sample, [(0, 0.2), (1, 0.6), (2, 0.2)]);
    let later = &server.requests()[asked.len()..];
    assert!(!later.is_empty());
    for request in later {
        assert!(
            request.body.get("logprobs").is_none()
                && request.body.get("return_token_ids").is_none(),
            "--logprobs off / --return-token-ids false: {}",
            request.body
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_is_an_interrupt_and_progress_lines_come_while_rollouts_run() {
    // Each turn takes 2 s: no rollout ends within the first 10 s.
    let server = ScriptedServer::start(Script::default().with_fallback(idle(2000)))
        .await
        .unwrap();
    let model = unique_id("harvest-term");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids(1);
    let args = [
        "--instance-ids",
        ids.as_str(),
        "--samples",
        "2",
        "--max-turns",
        "20",
        "--workers",
        "2",
    ];
    let mut child = command(&server.base_url(), &model, &out, &args)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let stderr = child.stderr.take().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut seen = seen.lock().unwrap();
                seen.push_str(&line);
                seen.push('\n');
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    while !seen.lock().unwrap().contains("progress 0/2") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no progress line while the rollouts ran:\n{}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().await.unwrap();
    reader.await.unwrap();
    let stderr = seen.lock().unwrap().clone();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}\n{stderr}",
        describe(&output)
    );
    let json = summary(&output);
    assert_eq!(json["interrupted"], true, "{json}");
    assert!(out.join("manifest.parquet").exists(), "{stderr}");
    assert!(out.join("data_card.json").exists(), "{stderr}");
    for container in engine().await.labelled_containers().await.unwrap() {
        assert!(
            container
                .owner
                .as_ref()
                .is_none_or(|owner| owner.pid != pid),
            "container {} of the terminated harvest left behind",
            container.id
        );
    }
}

/// Progress that says nothing.
struct Quiet;

impl swe_env::harvest::runner::HarvestProgress for Quiet {
    fn begin(&self, _totals: &swe_env::harvest::runner::Totals) {}
    fn rollout(
        &self,
        _event: &swe_env::harvest::runner::RolloutEvent,
        _totals: &swe_env::harvest::runner::Totals,
    ) {
    }
    fn note(&self, _message: &str) {}
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_plans_a_dataset_given_twice_once() {
    use swe_env::harvest::config::{EndpointConfig, HarvestConfig};
    use swe_env::harvest::runner::{run_harvest, DatasetInput};

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = HarvestConfig {
        datasets: vec!["fixtures".into()],
        out: Some(out.clone()),
        model: unique_id("harvest-twice"),
        endpoints: vec![EndpointConfig {
            url: format!("http://127.0.0.1:{}/v1", free_port()),
            max_in_flight: None,
        }],
        samples: 2,
        max_turns: 1,
        max_attempts: 1,
        grading_network: swe_env::benchmark::GradingNetwork::None,
        ..HarvestConfig::default()
    };
    let resolved = config.resolve().unwrap();
    let loaded = swe_env::datasets::load_source("fixtures").await.unwrap();
    let digest = swe_env::benchmark::manifest::dataset_digest("fixtures").unwrap();
    let first = loaded.instances[0].clone();
    let dataset = DatasetInput {
        source: "fixtures".into(),
        sha256: digest.sha256,
        rows: loaded.instances.len() as u64,
        instances: vec![first.clone(), first],
    };
    let outcome = run_harvest(
        &engine().await,
        out,
        resolved,
        vec![dataset.clone(), dataset],
        std::sync::Arc::new(Quiet),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    // One task × K=2, however often it was given; nothing listens at the endpoint, so both fail once.
    assert_eq!(outcome.totals.planned, 2, "{outcome:?}");
    assert_eq!(outcome.totals.failed, 2, "{outcome:?}");
}
