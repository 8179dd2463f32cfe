//! Benchmark runs that cannot be mixed up, through the real binary: a resume with other settings is refused (and
//! `--force-resume` is recorded), default run ids are unique, one process per run directory, container names do not
//! collide across runs, duplicated dataset rows are rejected.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::episode::fixtures_file;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const SPANS: &str = "swe-env-fixtures__spans-1";
const SLUGKIT: &str = "swe-env-fixtures__slugkit-1";

fn command(args: &[&str], out: &Path) -> Command {
    let mut command = Command::new(EXE);
    command
        .arg("run-benchmark")
        .args(args)
        .args(["--grading-network", "none", "--json", "--output-dir"])
        .arg(out)
        .stdin(Stdio::null());
    command
}

fn run(args: &[&str], out: &Path) -> Output {
    command(args, out).output().unwrap()
}

/// `run-benchmark fixtures --agent <agent> --run-id g1 --instance-ids <instance_ids>` plus `extra`.
fn run_g1(agent: &str, instance_ids: &str, extra: &[&str], out: &Path) -> Output {
    let args = [
        "fixtures",
        "--agent",
        agent,
        "--run-id",
        "g1",
        "--instance-ids",
        instance_ids,
    ];
    run(&[&args[..], extra].concat(), out)
}

fn spawn(args: &[&str], out: &Path) -> Child {
    command(args, out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stats(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&output.stdout),
            stderr(output)
        )
    })
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_with_other_settings_is_refused_unless_forced() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("g1");
    let gold = run_g1("gold", SPANS, &[], out.path());
    assert!(gold.status.success(), "{}", stderr(&gold));
    assert_eq!(stats(&gold)["resolved"], 1);
    let written = manifest(&dir);
    assert_eq!(written["run_id"], "g1");
    assert_eq!(written["settings"]["agent"]["kind"], "gold");
    assert_eq!(
        written["settings"]["agent"]["config_hash"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        written["settings"]["dataset_sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(written["settings"]["grading"]["network"], "none");
    assert!(written["settings"]["grading"]["options"].is_object());
    assert_eq!(written["instances"], serde_json::json!([SPANS]));
    assert_eq!(written["recorded"]["dataset_source"], "fixtures");
    assert_eq!(written["recorded"]["pull"], "missing");
    let results_before = std::fs::read(dir.join("results.jsonl")).unwrap();
    let report_before = std::fs::read(dir.join("report.json")).unwrap();

    // The reproduction: the empty agent on the finished gold run used to report the gold results as its own.
    let empty = run_g1("empty", SPANS, &[], out.path());
    let message = stderr(&empty);
    assert_eq!(empty.status.code(), Some(2), "{message}");
    assert!(
        message.contains(r#"agent.kind: was "gold", now "empty""#),
        "{message}"
    );
    assert!(
        message.contains("--force-resume") && message.contains("--run-id"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(dir.join("results.jsonl")).unwrap(),
        results_before
    );
    assert_eq!(
        std::fs::read(dir.join("report.json")).unwrap(),
        report_before
    );
    assert_eq!(
        manifest(&dir),
        written,
        "a refused run leaves the manifest alone"
    );

    // Same settings, a wider selection: allowed; the run's selection is the union.
    let wider = run_g1("gold", &format!("{SPANS},{SLUGKIT}"), &[], out.path());
    assert!(wider.status.success(), "{}", stderr(&wider));
    assert_eq!(stats(&wider)["resolved"], 2);
    let widened = manifest(&dir);
    let mut both = [SPANS, SLUGKIT];
    both.sort();
    assert_eq!(widened["instances"], serde_json::json!(both));
    assert_eq!(widened["resumes"][0]["forced"], false);
    assert_eq!(
        widened["resumes"][0]["added_instances"],
        serde_json::json!([SLUGKIT])
    );

    // --force-resume proceeds and is recorded; the run's settings stay the ones it started with.
    let forced = run_g1("empty", SPANS, &["--force-resume"], out.path());
    assert!(forced.status.success(), "{}", stderr(&forced));
    let after = manifest(&dir);
    assert_eq!(after["settings"], written["settings"]);
    let resume = &after["resumes"][1];
    assert_eq!(resume["forced"], true);
    assert!(resume["at"].as_str().unwrap().ends_with('Z'));
    let fields: Vec<&str> = resume["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"agent.kind"), "{fields:?}");
    let kind = resume["differences"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["field"] == "agent.kind")
        .unwrap();
    assert_eq!(kind["old"], "gold");
    assert_eq!(kind["new"], "empty");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_runs_without_a_run_id_get_their_own_directories() {
    let out = tempfile::tempdir().unwrap();
    let args = ["fixtures", "--agent", "gold", "--instance-ids", SPANS];
    let first = spawn(&args, out.path());
    let second = spawn(&args, out.path());
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stats(&output)["resolved"], 1, "{}", stderr(&output));
    }
    let mut dirs: Vec<String> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    assert_eq!(dirs.len(), 2, "{dirs:?}");
    for dir in &dirs {
        assert_eq!(manifest(&out.path().join(dir))["run_id"], dir.as_str());
        let results = std::fs::read_to_string(out.path().join(dir).join("results.jsonl")).unwrap();
        assert_eq!(results.lines().count(), 1, "{dir}: {results}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_run_id_in_two_output_directories_runs_side_by_side() {
    // Same run id, so the same episode ids: only the container names' suffix keeps them apart.
    let (out1, out2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = [
        "fixtures",
        "--agent",
        "gold",
        "--run-id",
        "twin",
        "--instance-ids",
        SPANS,
    ];
    let first = spawn(&args, out1.path());
    let second = spawn(&args, out2.path());
    for child in [first, second] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stats(&output)["resolved"], 1, "{}", stderr(&output));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_on_the_same_run_fails_fast() {
    let out = tempfile::tempdir().unwrap();
    let args = [
        "fixtures",
        "--agent",
        "gold",
        "--run-id",
        "busy",
        "--instance-ids",
        SPANS,
    ];
    let mut holder = spawn(&args, out.path());
    let lock = out.path().join("busy/.lock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != holder.id().to_string() {
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the first run ended before taking the lock"
        );
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    let second = run(&args, out.path());
    let message = stderr(&second);
    assert_eq!(second.status.code(), Some(2), "{message}");
    assert!(
        message.contains(&format!(
            "run busy is in use by another swe-env process (pid {})",
            holder.id()
        )),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(20), "fails fast");
    let output = holder.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stats(&output)["resolved"], 1);
    let results = std::fs::read_to_string(out.path().join("busy/results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 1, "only the holder ran: {results}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_with_a_duplicated_row_is_rejected_naming_the_rows() {
    let out = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(fixtures_file()).unwrap();
    let lines: Vec<&str> = text.lines().take(2).collect();
    let id: String = serde_json::from_str::<serde_json::Value>(lines[0]).unwrap()["instance_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let tasks = out.path().join("tasks.jsonl");
    std::fs::write(
        &tasks,
        format!("{}\n{}\n{}\n", lines[0], lines[1], lines[0]),
    )
    .unwrap();
    let output = run(
        &[
            tasks.to_str().unwrap(),
            "--agent",
            "gold",
            "--run-id",
            "dup",
        ],
        out.path(),
    );
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{message}");
    assert!(message.contains(&format!("{id} (rows 1, 3)")), "{message}");
    assert!(message.contains("duplicate instance ids"), "{message}");
    assert!(!out.path().join("dup").exists(), "nothing ran");
}
