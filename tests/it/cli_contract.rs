//! The command-line contract through the real binary: `evaluate` grades exactly like the SWE-bench harness (only
//! predicted instances, gold = each row's patch with no episode, `/` → `__` in log paths, unknown ids reported),
//! every command reads `--tasks` the same way, and each failure class has its documented exit code.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use swe_env_model::scripted::{Script, ScriptedReply, ScriptedServer};

use crate::common::{describe, unique_id};
use crate::episode::fixtures_file;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const TASK: &str = "swe-env-fixtures__spans-1";

fn swe_env(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json_file(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap()
}

fn fixture_rows() -> Vec<serde_json::Value> {
    std::fs::read_to_string(fixtures_file())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_grades_only_predicted_instances_and_reports_unknown_ids() {
    let out = tempfile::tempdir().unwrap();
    let rows = fixture_rows();
    assert_eq!(rows.len(), 5, "the fixture set changed");
    let mut predictions = String::new();
    for row in &rows[..2] {
        predictions.push_str(&format!(
            "{}\n",
            serde_json::json!({"instance_id": row["instance_id"], "model_name_or_path": "org/my-model",
                "model_patch": row["patch"]})
        ));
    }
    predictions.push_str(&format!(
        "{}\n",
        serde_json::json!({"instance_id": "nobody__nothing-1", "model_name_or_path": "org/my-model",
            "model_patch": "diff --git a/x b/x\n"})
    ));
    let preds = out.path().join("preds.jsonl");
    std::fs::write(&preds, predictions).unwrap();
    let output = swe_env(&[
        "evaluate",
        "--predictions",
        preds.to_str().unwrap(),
        "--dataset",
        "fixtures",
        "--run-id",
        "ev",
        "--grading-network",
        "none",
        "--json",
        "--output-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("warning: 1 prediction(s)") && stderr.contains("nobody__nothing-1"),
        "{stderr}"
    );

    // report.json, stats.json and the --json summary agree, with the harness's counts.
    let report = json_file(&out.path().join("ev/report.json"));
    assert_eq!(report["total_instances"], 5, "{report}");
    assert_eq!(report["submitted_instances"], 2, "{report}");
    assert_eq!(report["completed_instances"], 2, "{report}");
    assert_eq!(report["resolved_instances"], 2, "{report}");
    assert_eq!(report["error_instances"], 0, "{report}");
    assert_eq!(report["incomplete_ids"].as_array().unwrap().len(), 3);
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let stats_file = json_file(&out.path().join("ev/stats.json"));
    for (key, report_key) in [
        ("total", "total_instances"),
        ("submitted", "submitted_instances"),
        ("completed", "completed_instances"),
        ("resolved", "resolved_instances"),
        ("error", "error_instances"),
        ("empty_patch", "empty_patch_instances"),
    ] {
        assert_eq!(stats[key], report[report_key], "{key}: {stats}");
        assert_eq!(stats_file[key], report[report_key], "{key}: {stats_file}");
    }
    assert_eq!(stats["unknown_predictions"], 1, "{stats}");
    assert_eq!(stats["model"], "org/my-model");

    // Exactly the two predicted instances ran: two results, no error for the other three.
    let results = std::fs::read_to_string(out.path().join("ev/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 2, "{results}");
    assert!(!results.contains("no_prediction"), "{results}");

    // The harness's layout, the model name sanitised (`/` → `__`).
    for row in &rows[..2] {
        let id = row["instance_id"].as_str().unwrap();
        let log = json_file(&out.path().join(format!(
            "logs/run_evaluation/ev/org__my-model/{id}/report.json"
        )));
        assert_eq!(log[id]["resolved"], true, "{log}");
    }
    for row in &rows[2..] {
        let id = row["instance_id"].as_str().unwrap();
        assert!(!out
            .path()
            .join(format!("logs/run_evaluation/ev/org__my-model/{id}"))
            .exists());
    }
    assert_eq!(json_file(&out.path().join("org__my-model.ev.json")), report);
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_gold_grades_each_rows_patch_without_an_episode() {
    let out = tempfile::tempdir().unwrap();
    let output = swe_env(&[
        "evaluate",
        "--predictions",
        "gold",
        "--dataset",
        "fixtures",
        "--run-id",
        "g",
        "--grading-network",
        "none",
        "--json",
        "--output-dir",
        out.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["total"], 5, "{stats}");
    assert_eq!(stats["resolved"], 5, "{stats}");
    assert_eq!(stats["completed"], 5, "{stats}");
    for row in fixture_rows() {
        let id = row["instance_id"].as_str().unwrap();
        let patch = std::fs::read(
            out.path()
                .join(format!("logs/run_evaluation/g/gold/{id}/patch.diff")),
        )
        .unwrap();
        assert_eq!(
            patch,
            row["patch"].as_str().unwrap().as_bytes(),
            "{id}: the graded patch is not the row's patch byte for byte"
        );
    }
    // No agent ran: no trajectories, no steps, no episode status.
    assert!(
        !out.path().join("g/trajectories").exists(),
        "an episode ran in gold evaluation"
    );
    let results = std::fs::read_to_string(out.path().join("g/results.jsonl")).unwrap();
    for line in results.lines() {
        let result: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(result["n_steps"], 0, "{result}");
        assert!(result.get("episode_status").is_none(), "{result}");
    }
}

/// One row of the exit-code table: case, arguments, an environment variable, expected code, text the error
/// must contain.
type Case<'a> = (
    &'a str,
    Vec<String>,
    Option<(&'a str, &'a str)>,
    i32,
    &'a str,
);

/// Waits until `done` holds, or panics after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_follow_the_documented_table() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    let malformed = dir.join("malformed.jsonl");
    std::fs::write(
        &malformed,
        "{\"instance_id\": \"a\", \"model_patch\": \"\"}\nnot json\n",
    )
    .unwrap();
    let mixed = dir.join("mixed.jsonl");
    std::fs::write(
        &mixed,
        "{\"instance_id\": \"a\", \"model_name_or_path\": \"m1\", \"model_patch\": \"\"}\n\
         {\"instance_id\": \"b\", \"model_name_or_path\": \"m2\", \"model_patch\": \"\"}\n",
    )
    .unwrap();
    let mixed = mixed.to_str().unwrap();
    let bad_config = dir.join("agent.yaml");
    std::fs::write(&bad_config, "mode: no-such-mode\n").unwrap();
    let output_dir = dir.to_str().unwrap();
    let missing = dir.join("missing.jsonl");
    let missing = missing.to_str().unwrap();
    let malformed = malformed.to_str().unwrap();
    let bad_config = bad_config.to_str().unwrap();
    let url = "http://127.0.0.1:9/v1";
    let bench = |extra: &[&'static str]| -> Vec<String> {
        let mut args: Vec<String> = ["run-benchmark", "fixtures", "--output-dir", output_dir]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let to_strings = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases: Vec<Case> = vec![
        (
            "missing predictions file",
            to_strings(&[
                "evaluate",
                "--predictions",
                missing,
                "--dataset",
                "fixtures",
                "--output-dir",
                output_dir,
            ]),
            None,
            2,
            "missing.jsonl",
        ),
        (
            "malformed predictions file",
            to_strings(&[
                "evaluate",
                "--predictions",
                malformed,
                "--dataset",
                "fixtures",
                "--output-dir",
                output_dir,
            ]),
            None,
            2,
            "line 2",
        ),
        (
            "unknown instance id",
            bench(&["--instance-ids", "no-such-instance"]),
            None,
            2,
            "no-such-instance",
        ),
        (
            "unknown dataset file",
            to_strings(&[
                "run-benchmark",
                "/no/such/tasks.jsonl",
                "--output-dir",
                output_dir,
            ]),
            None,
            2,
            "/no/such/tasks.jsonl",
        ),
        (
            "--grading-network typo",
            bench(&["--grading-network", "bogus"]),
            None,
            2,
            "bogus",
        ),
        (
            "export --only-status typo",
            to_strings(&["export", output_dir, "--only-status", "submited"]),
            None,
            2,
            "submited",
        ),
        (
            "model option without --model-url",
            bench(&["--model", "some-model", "--mode", "chat-tools"]),
            None,
            2,
            "--model-url",
        ),
        (
            "--model-url without --model",
            bench(&["--model-url", url]),
            None,
            2,
            "--model",
        ),
        (
            "bad --agent-config",
            {
                let mut args = bench(&["--model-url", url, "--model", "m", "--agent-config"]);
                args.push(bad_config.to_owned());
                args
            },
            None,
            2,
            "agent.yaml",
        ),
        (
            "run-episode with a model option but no endpoint",
            to_strings(&[
                "run-episode",
                "--task",
                TASK,
                "--tasks",
                "fixtures",
                "--model",
                "m",
            ]),
            None,
            2,
            "--model-url",
        ),
        (
            "--run-id that leaves the output directory",
            bench(&["--run-id", "../escape"]),
            None,
            2,
            "not a run id",
        ),
        (
            "empty --run-id",
            bench(&["--run-id", ""]),
            None,
            2,
            "not a run id",
        ),
        (
            "--workers 0",
            bench(&["--workers", "0"]),
            None,
            2,
            "--workers",
        ),
        (
            "--max-turns 0",
            bench(&["--max-turns", "0"]),
            None,
            2,
            "--max-turns",
        ),
        (
            "--agent together with --model-url",
            bench(&["--agent", "empty", "--model-url", url, "--model", "m"]),
            None,
            2,
            "cannot be used with",
        ),
        (
            "empty --instance-ids entry",
            bench(&["--instance-ids", ""]),
            None,
            2,
            "empty id",
        ),
        (
            "export of a path that does not exist",
            to_strings(&["export", "/no/such/trajectories", "--format", "cwm"]),
            None,
            2,
            "/no/such/trajectories",
        ),
        (
            "--rules typo",
            bench(&["--rules", "swebench-4"]),
            None,
            2,
            "swebench-4",
        ),
        (
            "predictions naming two models",
            to_strings(&[
                "evaluate",
                "--predictions",
                mixed,
                "--dataset",
                "fixtures",
                "--output-dir",
                output_dir,
            ]),
            None,
            2,
            "one model per run",
        ),
        (
            "Docker unreachable",
            bench(&["--pull", "never"]),
            Some(("DOCKER_HOST", "unix:///nonexistent/docker.sock")),
            3,
            "Docker",
        ),
    ];
    let mut failures = Vec::new();
    for (case, args, env, expected, needle) in &cases {
        let mut command = Command::new(EXE);
        command.args(args).stdin(Stdio::null());
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.code() != Some(*expected) || !stderr.contains(needle) {
            failures.push(format!(
                "{case}: expected exit {expected} mentioning {needle:?}, got {}",
                describe(&output)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // No case reached a run: the usage errors came before any output directory was made.
    assert!(!dir.join("logs").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn run_episode_exits_130_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::delayed(
        Duration::from_secs(120),
        ScriptedReply::text("too late"),
    )]))
    .await
    .unwrap();
    let episode_id = unique_id("cli-sigint");
    let child = Command::new(EXE)
        .args(["run-episode", "--task", TASK, "--tasks", "fixtures"])
        .args(["--model-url", &server.base_url(), "--model", "slow"])
        .args(["--episode-id", &episode_id, "--trajectory-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The model call is in flight: the episode's container is up and the loop waits on the model.
    wait_for("the first model request", Duration::from_secs(120), || {
        server.request_count() >= 1
    })
    .await;
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", describe(&output));
    let trajectory =
        swe_env::trajectory::read_trajectory(&dir.path().join(format!("{episode_id}.jsonl")))
            .await
            .unwrap();
    assert_eq!(
        trajectory.end.unwrap().status,
        swe_env::trajectory::EpisodeStatus::Cancelled
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_reads_tasks_from_the_same_sources() {
    // shell: tool mode on a fixture task named by the `fixtures` alias; EOF on stdin ends the session.
    let dir = tempfile::tempdir().unwrap();
    let output = swe_env(&[
        "shell",
        "--task",
        TASK,
        "--tasks",
        "fixtures",
        "--trajectory-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("episode ready"),
        "{}",
        describe(&output)
    );

    // serve: the same alias; it starts, lists its address, and stops cleanly on SIGTERM, even one sent the moment
    // the `listening` line appears (its handlers are installed before it announces itself; before that fix about
    // four starts in ten died of the signal here).
    for attempt in 0..20 {
        let mut child = Command::new(EXE)
            .args(["serve", "--tasks", "fixtures", "--listen", "127.0.0.1:0"])
            .args(["--trajectory-dir", dir.path().to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
        assert!(line.starts_with("listening tcp "), "{line:?}");
        // Sent directly (spawning `kill` takes milliseconds, long enough to hide the race).
        let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let status = child.wait().unwrap();
        assert!(status.success(), "start {attempt}: serve exited {status:?}");
    }

    // A path works as before, and an unknown task in a known source is bad input.
    let output = swe_env(&[
        "run-episode",
        "--task",
        "no-such-task",
        "--tasks",
        fixtures_file().to_str().unwrap(),
        "--model-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_keeps_its_kind_in_the_results() {
    let out = tempfile::tempdir().unwrap();
    let mut row = fixture_rows()
        .into_iter()
        .find(|r| r["instance_id"] == TASK)
        .unwrap();
    // Nothing listens on port 1: the engine's pull fails to connect.
    row["image"] = serde_json::json!("127.0.0.1:1/swe-env-nothing:latest");
    let tasks = out.path().join("tasks.jsonl");
    std::fs::write(&tasks, format!("{row}\n")).unwrap();
    let output = swe_env(&[
        "evaluate",
        "--predictions",
        "gold",
        "--dataset",
        tasks.to_str().unwrap(),
        "--run-id",
        "reg",
        "--json",
        "--output-dir",
        out.path().to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stats: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        stats["errors_by_kind"]["registry_unreachable"], 1,
        "{stats}"
    );
    // A given prediction whose instance could not run is a harness error, not incomplete.
    let report = json_file(&out.path().join("reg/report.json"));
    assert_eq!(report["error_instances"], 1, "{report}");
    assert_eq!(stats["error"], 1, "{stats}");
}

#[test]
fn closed_output_and_piped_stderr_are_handled_quietly() {
    // `| head -0`: the reader is gone before the first line; no panic, the SIGPIPE status.
    let mut child = Command::new(EXE)
        .args(["gc", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        matches!(output.status.code(), Some(0) | Some(141)),
        "{}",
        describe(&output)
    );
    // Log lines on a pipe carry no ANSI colour codes.
    let output = Command::new(EXE)
        .args(["-vv", "gc", "--json"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("DEBUG"),
        "expected debug log lines: {}",
        describe(&output)
    );
    assert!(
        !output.stderr.contains(&0x1b),
        "ANSI escape in piped stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `swe-env bench grpc` runs to the end and prints its figures: its in-process server is operated by the bench, so
/// its own operator maxima admit the bench's long episodes (a default maximum once refused every CreateEpisode).
#[tokio::test(flavor = "multi_thread")]
async fn bench_grpc_runs_to_the_end_and_prints_figures() {
    let output = tokio::task::spawn_blocking(|| {
        swe_env(&[
            "bench",
            "grpc",
            "--steps",
            "30",
            "--episodes",
            "4",
            "--concurrency",
            "2",
            "--json",
        ])
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for row in [
        "step `true` over gRPC (round trip)",
        "step `true` in process (Episode::step)",
        "episode create+step+close over gRPC",
    ] {
        let p50 = figures[row]["p50_ms"].as_f64();
        assert!(p50.is_some_and(|ms| ms > 0.0), "{row}: {figures}");
    }
    assert_eq!(figures["step `true` over gRPC (round trip)"]["n"], 30);
    assert_eq!(figures["episode create+step+close over gRPC"]["n"], 4);
}
