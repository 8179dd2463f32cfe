//! `swe-env run-benchmark` end to end through the real binary: gold / empty rates, kill and resume, a missing
//! image reported per instance, Ctrl-C clean-up, a pull from a local registry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{assert_success, engine, free_port, run_ok};
use crate::episode::fixtures_file;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");

fn run_benchmark(args: &[&str], out: &Path) -> Output {
    Command::new(EXE)
        .arg("run-benchmark")
        .args(args)
        .arg("--output-dir")
        .arg(out)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stats(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `run-benchmark fixtures --agent <agent> --json` (run id = the agent's name, no grading network) must succeed;
/// returns its stats.
fn run_fixtures(agent: &str, out: &Path) -> serde_json::Value {
    let output = run_benchmark(
        &[
            "fixtures",
            "--agent",
            agent,
            "--json",
            "--run-id",
            agent,
            "--grading-network",
            "none",
        ],
        out,
    );
    assert_success(&output, &format!("run-benchmark --agent {agent}"));
    stats(&output)
}

fn report(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_resolves_everything_and_empty_nothing() {
    let out = tempfile::tempdir().unwrap();
    let gold_stats = run_fixtures("gold", out.path());
    assert_eq!(gold_stats["resolved"], gold_stats["total"]);
    assert_eq!(gold_stats["resolved_pct"], 100.0);
    let dir = out.path().join("gold");
    for file in [
        "predictions.jsonl",
        "report.json",
        "summary.md",
        "results.jsonl",
    ] {
        assert!(dir.join(file).exists(), "{file} missing");
    }
    let predictions = std::fs::read_to_string(dir.join("predictions.jsonl")).unwrap();
    for line in predictions.lines() {
        let row: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(row["model_name_or_path"], "gold");
        assert!(row["model_patch"]
            .as_str()
            .unwrap()
            .starts_with("diff --git"));
    }
    assert_eq!(
        std::fs::read_dir(dir.join("trajectories")).unwrap().count(),
        gold_stats["total"].as_u64().unwrap() as usize
    );

    // The trajectories export to both training formats, one episode per line.
    for format in ["openai-chat", "cwm"] {
        let file = out.path().join(format!("{format}.jsonl"));
        run_ok(
            Command::new(EXE)
                .args(["export", "--format", format, "--only-resolved", "-o"])
                .arg(&file)
                .arg(dir.join("trajectories")),
        );
        let text = std::fs::read_to_string(&file).unwrap();
        assert_eq!(
            text.lines().count() as u64,
            gold_stats["total"].as_u64().unwrap()
        );
        for line in text.lines() {
            let episode: serde_json::Value = serde_json::from_str(line).unwrap();
            let roles: Vec<&str> = episode["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["role"].as_str().unwrap())
                .collect();
            assert_eq!(roles[..2], ["system", "user"]);
            // Then one assistant turn and its observation per step: a `user` message in OpenAI chat form (text
            // tool calls), a `tool: NAME` turn in the CWM transcript.
            let turns = &roles[2..];
            assert!(
                turns.len() >= 4 && turns.len().is_multiple_of(2),
                "{format}: {roles:?}"
            );
            for pair in turns.chunks(2) {
                assert_eq!(pair[0], "assistant", "{format}: {roles:?}");
                match format {
                    "cwm" => assert!(pair[1].starts_with("tool: "), "{format}: {roles:?}"),
                    _ => assert_eq!(pair[1], "user", "{format}: {roles:?}"),
                }
            }
        }
    }

    let empty_stats = run_fixtures("empty", out.path());
    assert_eq!(empty_stats["resolved"], 0);
    // The default rules (swebench-4.1) produce exactly what main produced before rule sets existed.
    assert_same_as_golden(&dir, "gold");
    assert_same_as_golden(&out.path().join("empty"), "empty");
    assert_eq!(
        report(&out.path().join("empty"))["empty_patch_instances"],
        empty_stats["total"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_run_resumes_to_the_same_report() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "fixtures",
        "--agent",
        "gold",
        "--workers",
        "1",
        "--grading-network",
        "none",
        "--json",
    ];
    let full = run_benchmark(&[&args[..], &["--run-id", "full"]].concat(), out.path());
    assert!(full.status.success());

    let mut child = Command::new(EXE)
        .arg("run-benchmark")
        .args(args)
        .args(["--run-id", "killed", "--output-dir"])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let results = out.path().join("killed/results.jsonl");
    wait_for_results(&results, 2).await;
    child.kill().unwrap(); // SIGKILL mid-run: an instance is in flight
    child.wait().unwrap();
    let finished_before = std::fs::read_to_string(&results).unwrap().lines().count();
    assert!(
        finished_before < 5,
        "the kill came too late to test resuming"
    );

    let resumed = run_benchmark(&[&args[..], &["--run-id", "killed"]].concat(), out.path());
    assert_success(&resumed, "the resumed run-benchmark");
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("resuming"),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(
        report(&out.path().join("killed")),
        report(&out.path().join("full"))
    );
    // The resumed run reconciled the killed run's containers: none of this run remain (other tests run in
    // parallel processes, so only this run's episode labels are checked).
    let engine = engine().await;
    for container in engine.labelled_containers().await.unwrap() {
        assert!(
            !container.episode.starts_with("killed-"),
            "container {} of the killed run left behind",
            container.id
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_image_is_a_per_instance_error_and_the_run_completes() {
    let out = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures_file()).unwrap();
    let mut rows: Vec<serde_json::Value> = text
        .lines()
        .take(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    rows[0]["image"] = serde_json::json!("swe-env/no-such-image:latest");
    let missing_id = rows[0]["instance_id"].as_str().unwrap().to_owned();
    let tasks = out.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        rows.iter().map(|r| format!("{r}\n")).collect::<String>(),
    )
    .unwrap();
    let output = run_benchmark(
        &[
            tasks.to_str().unwrap(),
            "--agent",
            "gold",
            "--pull",
            "never",
            "--json",
            "--run-id",
            "m",
            "--grading-network",
            "none",
        ],
        out.path(),
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "some instances errored: exit 1"
    );
    let stats = stats(&output);
    assert_eq!(stats["finished"], 2);
    assert_eq!(stats["resolved"], 1);
    assert_eq!(stats["errors_by_kind"]["image_missing"], 1);
    let results = std::fs::read_to_string(out.path().join("m/results.jsonl")).unwrap();
    let line = results.lines().find(|l| l.contains(&missing_id)).unwrap();
    assert!(
        line.contains("swe-env/no-such-image:latest") && line.contains("--pull"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_stops_cleanly_and_keeps_partial_results() {
    stops_cleanly_and_keeps_partial_results("-INT").await;
}

/// A scheduler's SIGTERM is an interrupt like Ctrl-C (before, it killed the run and left its containers).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_cleanly_and_keeps_partial_results() {
    stops_cleanly_and_keeps_partial_results("-TERM").await;
}

async fn stops_cleanly_and_keeps_partial_results(signal: &str) {
    let out = tempfile::tempdir().unwrap();
    let child = Command::new(EXE)
        .args([
            "run-benchmark",
            "fixtures",
            "--agent",
            "gold",
            "--workers",
            "2",
            "--grading-network",
            "none",
            "--run-id",
            "int",
            "--output-dir",
        ])
        .arg(out.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let results = out.path().join("int/results.jsonl");
    wait_for_results(&results, 1).await;
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(130) {
        assert!(stdout.contains("interrupted"), "{stdout}");
    } else {
        // The interrupt landed after the last instance finished: a normal ending.
        assert_eq!(output.status.code(), Some(0), "{stdout}");
    }
    assert!(
        out.path().join("int/report.json").exists(),
        "partial results are written"
    );
    let engine = engine().await;
    for container in engine.labelled_containers().await.unwrap() {
        assert_ne!(
            container.owner.unwrap().pid,
            pid,
            "container {} of the interrupted run left behind",
            container.id
        );
    }
}

/// Waits (at most 120 s) until the run's `results.jsonl` holds at least `n` finished instances.
async fn wait_for_results(results: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::read_to_string(results)
        .map(|t| t.lines().count())
        .unwrap_or(0)
        < n
    {
        assert!(Instant::now() < deadline, "the run made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn docker(args: &[&str]) {
    run_ok(Command::new("docker").args(args));
}

/// A registry (Debian's docker-registry) on loopback, stopped on drop.
struct LocalRegistry {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LocalRegistry {
    async fn start() -> Self {
        let binary = PathBuf::from("/usr/bin/docker-registry");
        assert!(
            binary.exists(),
            "docker-registry is not installed (scripts/setup.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let child = Command::new(binary)
            .arg("serve")
            .arg(dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn images_are_pulled_from_a_registry_under_the_official_naming_scheme() {
    let registry = LocalRegistry::start().await;
    let out = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures_file()).unwrap();
    let mut row: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let local_image = row["image"].as_str().unwrap().to_owned();
    let id = row["instance_id"].as_str().unwrap().to_owned();
    // The row loses its `image` field: the official template decides the name.
    row.as_object_mut().unwrap().remove("image");
    let official = format!(
        "127.0.0.1:{}/swebench/sweb.eval.x86_64.{}:latest",
        registry.port,
        id.to_lowercase().replace("__", "_1776_")
    );
    docker(&["tag", &local_image, &official]);
    docker(&["push", &official]);
    docker(&["rmi", &official]);
    let tasks = out.path().join("tasks.jsonl");
    std::fs::write(&tasks, format!("{row}\n")).unwrap();
    let template = format!(
        "127.0.0.1:{}/swebench/sweb.eval.x86_64.{{id}}:latest",
        registry.port
    );
    let output = run_benchmark(
        &[
            tasks.to_str().unwrap(),
            "--agent",
            "gold",
            "--json",
            "--run-id",
            "pull",
            "--image-template",
            &template,
            "--grading-network",
            "none",
        ],
        out.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("pulling {official}")), "{stderr}");
    assert_eq!(stats(&output)["resolved"], 1);
    docker(&["rmi", &official]);
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_model_resolves_the_expected_set() {
    use swe_env_model::scripted::{Script, ScriptedReply, ScriptedServer};
    let run_id = "model";
    let give_up: Vec<ScriptedReply> = (0..6)
        .map(|_| ScriptedReply::text("I cannot find the bug."))
        .collect();
    let script = Script::default()
        .with_episode(
            format!("{run_id}-swe-env-fixtures__spans-1"),
            crate::model_loop::text_script(),
        )
        .with_episode(format!("{run_id}-swe-env-fixtures__unitconv-1"), give_up);
    let server = ScriptedServer::start(script).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let output = run_benchmark(
        &[
            "fixtures",
            "--instance-ids",
            "swe-env-fixtures__spans-1,swe-env-fixtures__unitconv-1",
            "--model-url",
            &server.base_url(),
            "--model",
            "scripted",
            "--mode",
            "chat-text",
            "--json",
            "--run-id",
            run_id,
            "--grading-network",
            "none",
        ],
        out.path(),
    );
    assert_success(&output, "run-benchmark");
    let stats = stats(&output);
    assert_eq!(stats["model"], "scripted");
    assert_eq!(stats["resolved"], 1);
    assert!(stats["tokens"].as_u64().unwrap() > 0);
    let report = report(&out.path().join(run_id));
    assert_eq!(
        report["resolved_ids"],
        serde_json::json!(["swe-env-fixtures__spans-1"])
    );
    let results = std::fs::read_to_string(out.path().join(run_id).join("results.jsonl")).unwrap();
    assert!(
        results.contains("\"episode_status\":\"format_errors\""),
        "{results}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_model_endpoint_is_reported_per_instance() {
    let port = free_port(); // bound then released: nothing listens there
    let out = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/v1");
    let output = run_benchmark(
        &[
            "fixtures",
            "--instance-ids",
            "swe-env-fixtures__spans-1,swe-env-fixtures__slugkit-1",
            "--model-url",
            &url,
            "--model",
            "m",
            "--max-attempts",
            "1",
            "--json",
            "--run-id",
            "down",
            "--grading-network",
            "none",
        ],
        out.path(),
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stats = stats(&output);
    assert_eq!(stats["finished"], 2, "the run completes");
    assert_eq!(stats["errors_by_kind"]["model_endpoint"], 2);
    let results = std::fs::read_to_string(out.path().join("down/results.jsonl")).unwrap();
    assert!(
        results.contains(&format!("127.0.0.1:{port}")),
        "the error names the endpoint: {results}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_grades_predictions_in_the_reference_layout() {
    let out = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures_file()).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .take(3)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let predictions: String = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let patch = if i == 2 { serde_json::Value::Null } else { row["patch"].clone() };
            format!("{}\n", serde_json::json!({"instance_id": row["instance_id"], "model_name_or_path": "my-model", "model_patch": patch}))
        })
        .collect();
    let preds = out.path().join("preds.jsonl");
    std::fs::write(&preds, predictions).unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["instance_id"].as_str().unwrap())
        .collect();
    let output = run_ok(
        Command::new(EXE)
            .args(["evaluate", "--predictions"])
            .arg(&preds)
            .args([
                "--dataset",
                "fixtures",
                "--instance-ids",
                &ids.join(","),
                "--run-id",
                "ev",
                "--grading-network",
                "none",
                "--json",
                "--output-dir",
            ])
            .arg(out.path()),
    );
    let stats = stats(&output);
    assert_eq!(stats["model"], "my-model");
    assert_eq!(stats["resolved"], 2);
    let summary = report(&out.path().join("ev"));
    assert_eq!(summary["resolved_instances"], 2);
    let reference_summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("my-model.ev.json")).unwrap())
            .unwrap();
    assert_eq!(reference_summary, summary);
    for id in &ids[..2] {
        let report = out
            .path()
            .join(format!("logs/run_evaluation/ev/my-model/{id}/report.json"));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(report[id]["resolved"], true);
    }
    let null_report = out.path().join(format!(
        "logs/run_evaluation/ev/my-model/{}/report.json",
        ids[2]
    ));
    let null_report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&null_report).unwrap()).unwrap();
    assert_eq!(null_report[ids[2]]["patch_is_None"], true);
}

/// `run_dir`'s report.json and the reference fields of its per-instance reports equal `tests/it/golden/fixtures-NAME`.
fn assert_same_as_golden(run_dir: &Path, name: &str) {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/it/golden/fixtures-{name}"));
    let read = |path: &Path| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap()
    };
    assert_eq!(
        read(&run_dir.join("report.json")),
        read(&golden.join("report.json")),
        "{name}: run summary differs from the golden one"
    );
    let expected = read(&golden.join("instances.json"));
    let expected = expected.as_object().unwrap();
    for (id, want) in expected {
        let report = read(&run_dir.join("logs").join(id).join("report.json"));
        let mut got = report[id].clone();
        let extras = got.as_object_mut().unwrap().remove("swe_env").unwrap();
        assert_eq!(extras["rule_set"], "swebench-4.1", "{name} {id}");
        assert_eq!(
            &got, want,
            "{name} {id}: reference fields differ from the golden report"
        );
    }
}
