//! `swe-env harvest` end to end through the real binary, against a scripted model server and the fixture tasks in
//! Docker: mixed outcomes, kill -9 and resume exactly once, shards and manifest read back by Python (`zstandard`,
//! `pyarrow`), a config change refused on resume, budgets, the `--json` summary and per-endpoint concurrency.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use swe_env::harvest::store::rollout_id;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;

use crate::common::{describe, engine, unique_id};
use crate::episode::fixtures_file;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");

/// The fields the contract promises in `--json`.
const JSON_FIELDS: [&str; 14] = [
    "out",
    "planned",
    "committed_before",
    "committed_new",
    "committed_total",
    "failed",
    "failed_by_kind",
    "resolved_total",
    "skipped_budget",
    "rollouts_per_hour",
    "tokens_per_sec",
    "wall_secs",
    "time_ms",
    "exit_code",
];

/// `swe-env harvest` over the fixtures in CWM text mode without grading network, writing to `out`, with `extra`.
fn harvest_command(url: &str, model: &str, out: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(EXE);
    command
        .args(["harvest", "--dataset", "fixtures", "--model-url", url])
        .args(["--model", model, "--mode", "chat-text"])
        .args(["--grading-network", "none", "--out"])
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run(mut command: tokio::process::Command) -> Output {
    command.output().await.unwrap()
}

/// The one JSON object `--json` prints on stdout.
pub(crate) fn summary(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON summary on stdout: {}", describe(output)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {}", describe(output)))
}

fn manifest(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out.join("manifest.jsonl")).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Complete lines of manifest.jsonl (a torn last line does not count).
fn committed_lines(out: &Path) -> usize {
    std::fs::read(out.join("manifest.jsonl"))
        .map(|bytes| bytes.iter().filter(|&&b| b == b'\n').count())
        .unwrap_or(0)
}

/// Asserts every row is a distinct rollout and a distinct (instance, sample); returns the (instance, sample) set.
fn assert_unique(rows: &[Value]) -> BTreeSet<(String, u64)> {
    let ids: BTreeSet<&str> = rows
        .iter()
        .map(|row| row["rollout_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), rows.len(), "duplicate rollout ids");
    let keys: BTreeSet<(String, u64)> = rows
        .iter()
        .map(|row| {
            (
                row["instance_id"].as_str().unwrap().to_owned(),
                row["sample_idx"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys.len(),
        rows.len(),
        "an (instance, sample) committed twice"
    );
    keys
}

fn fixture_rows() -> Vec<Value> {
    std::fs::read_to_string(fixtures_file())
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn fixture_ids() -> Vec<String> {
    fixture_rows()
        .iter()
        .map(|row| row["instance_id"].as_str().unwrap().to_owned())
        .collect()
}

/// A text reply reporting `usage` (1000 prompt + 10 completion tokens).
fn counted(text: &str) -> ScriptedReply {
    ScriptedReply::Completion(ScriptedCompletion {
        text: text.to_owned(),
        usage: Some(Usage {
            prompt_tokens: 1000,
            completion_tokens: 10,
        }),
        ..ScriptedCompletion::default()
    })
}

/// A bash call that changes nothing, after `delay_ms`: every rollout served only this runs to `max_turns`.
fn idle_reply(delay_ms: u64) -> ScriptedReply {
    ScriptedReply::delayed(
        Duration::from_millis(delay_ms),
        counted("<tool: bash>\ntrue\n</tool>"),
    )
}

/// What tests/python/harvest_read.py finds in `out`: every shard decoded whole, every manifest row's frame
/// decoded alone, manifest.parquet read.
async fn python_read(out: &Path) -> Value {
    let python = tokio::task::spawn_blocking(crate::harvest_files::data_venv)
        .await
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/harvest_read.py");
    let output = tokio::process::Command::new(python)
        .arg(script)
        .arg(out)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "harvest_read.py: {}",
        describe(&output)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(&output)))
}

/// Asserts no container of these rollouts (episode label containing a rollout id's first 8 hex) nor of these
/// processes is left.
async fn assert_no_containers_left(rows: &[Value], pids: &[u32]) {
    let prefixes: Vec<String> = rows
        .iter()
        .map(|row| row["rollout_id"].as_str().unwrap()[..8].to_owned())
        .collect();
    let engine = engine().await;
    for container in engine.labelled_containers().await.unwrap() {
        assert!(
            !prefixes
                .iter()
                .any(|prefix| container.episode.contains(&format!(".{prefix}."))),
            "container {} ({}) of the harvest left behind",
            container.id,
            container.episode
        );
        if let Some(owner) = &container.owner {
            assert!(
                !pids.contains(&owner.pid),
                "container {} ({}) of harvest process {} left behind",
                container.id,
                container.episode,
                owner.pid
            );
        }
    }
}

/// Every file under `dir` but `.lock`, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, files);
            } else if path.file_name().is_some_and(|name| name != ".lock") {
                let bytes = std::fs::read(&path).unwrap();
                files.insert(path.strip_prefix(root).unwrap().to_owned(), bytes);
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// A config change on resume is refused with exit 2, the message names the field, and nothing in the directory
/// changes. The first run also shows the `--json` fields of the contract, and `--print-config` prints the
/// effective config and exits 0 without harvesting.
#[tokio::test(flavor = "multi_thread")]
async fn changed_config_on_resume_exits_2_naming_the_field_and_writes_nothing() {
    let server = ScriptedServer::start(Script::default().with_fallback(idle_reply(0)))
        .await
        .unwrap();
    let url = server.base_url();
    let model = unique_id("harvest-cfg");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids();
    let common = [
        "--instance-ids",
        ids[0].as_str(),
        "--samples",
        "2",
        "--max-turns",
        "1",
        "--workers",
        "2",
    ];

    // --print-config: the effective config on stdout, exit 0, nothing harvested.
    let printed = run(harvest_command(
        &url,
        &model,
        &out,
        &[
            &common[..],
            &["--temperatures", "0.2,0.7", "--print-config"],
        ]
        .concat(),
    ))
    .await;
    assert_eq!(printed.status.code(), Some(0), "{}", describe(&printed));
    let config = String::from_utf8_lossy(&printed.stdout);
    for needle in [model.as_str(), "0.7", "temperatures"] {
        assert!(
            config.contains(needle),
            "--print-config lacks {needle:?}:\n{config}"
        );
    }
    assert_eq!(server.request_count(), 0, "--print-config called the model");
    assert!(
        !out.join("manifest.jsonl").exists(),
        "--print-config harvested"
    );

    let first = run(harvest_command(
        &url,
        &model,
        &out,
        &[&common[..], &["--temperatures", "0.2,0.7", "--json"]].concat(),
    ))
    .await;
    assert_eq!(first.status.code(), Some(0), "{}", describe(&first));
    let json = summary(&first);
    for field in JSON_FIELDS {
        assert!(json.get(field).is_some(), "--json lacks {field}: {json}");
    }
    for field in ["start", "model", "tool", "grade"] {
        assert!(json["time_ms"][field].is_u64(), "time_ms.{field}: {json}");
    }
    assert_eq!(json["planned"], 2, "{json}");
    assert_eq!(json["committed_before"], 0, "{json}");
    assert_eq!(json["committed_new"], 2, "{json}");
    assert_eq!(json["committed_total"], 2, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["exit_code"], 0, "{json}");
    assert!(json["rollouts_per_hour"].as_f64().unwrap() > 0.0, "{json}");
    let rows = manifest(&out);
    assert_eq!(rows.len(), 2);
    let temperatures: BTreeMap<u64, f64> = rows
        .iter()
        .map(|row| {
            (
                row["sample_idx"].as_u64().unwrap(),
                row["temperature"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(temperatures, BTreeMap::from([(0, 0.2), (1, 0.7)]));
    assert!(
        rows.iter().all(|row| row["status"] == "max_turns"),
        "{rows:?}"
    );

    let before = snapshot(&out);
    let requests = server.request_count();
    let changed = run(harvest_command(
        &url,
        &model,
        &out,
        &[&common[..], &["--temperatures", "0.2,1.0", "--json"]].concat(),
    ))
    .await;
    assert_eq!(changed.status.code(), Some(2), "{}", describe(&changed));
    let stderr = String::from_utf8_lossy(&changed.stderr);
    assert!(
        stderr.contains("temperature"),
        "the field is not named: {stderr}"
    );
    assert_eq!(
        server.request_count(),
        requests,
        "the refused run called the model"
    );
    assert_eq!(
        snapshot(&out),
        before,
        "the refused run changed the directory"
    );

    // The same command as the first run resumes: nothing left to do, nothing written twice.
    let again = run(harvest_command(
        &url,
        &model,
        &out,
        &[&common[..], &["--temperatures", "0.2,0.7", "--json"]].concat(),
    ))
    .await;
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    let json = summary(&again);
    assert_eq!(json["committed_before"], 2, "{json}");
    assert_eq!(json["committed_new"], 0, "{json}");
    assert_eq!(manifest(&out).len(), 2);
    assert_eq!(
        server.request_count(),
        requests,
        "the finished harvest ran again"
    );
}

/// `--token-budget` stops starting rollouts once spent: exit 1, fewer rows than planned, the budget named; a rerun
/// with a larger budget completes the rest without duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn token_budget_stops_the_harvest_and_a_rerun_completes_it() {
    let server = ScriptedServer::start(Script::default().with_fallback(idle_reply(0)))
        .await
        .unwrap();
    let url = server.base_url();
    let model = unique_id("harvest-budget");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let ids = fixture_ids();
    let subset = format!("{},{}", ids[0], ids[1]);
    // Each rollout: 2 turns × 1010 tokens.
    let common = [
        "--instance-ids",
        subset.as_str(),
        "--samples",
        "3",
        "--max-turns",
        "2",
        "--workers",
        "1",
        "--json",
    ];
    let planned = 6;

    let stopped = run(harvest_command(
        &url,
        &model,
        &out,
        &[&common[..], &["--token-budget", "3000"]].concat(),
    ))
    .await;
    assert_eq!(stopped.status.code(), Some(1), "{}", describe(&stopped));
    let stderr = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        stderr.contains("token budget") || stderr.contains("token-budget"),
        "the budget is not named: {}",
        describe(&stopped)
    );
    let json = summary(&stopped);
    let committed = manifest(&out);
    assert!(
        !committed.is_empty() && committed.len() < planned,
        "{} rows committed of {planned}: {json}",
        committed.len()
    );
    assert_eq!(json["committed_total"], committed.len(), "{json}");
    assert_eq!(json["planned"], planned, "{json}");
    assert!(json["skipped_budget"].as_u64().unwrap() > 0, "{json}");
    assert_eq!(json["exit_code"], 1, "{json}");
    assert_unique(&committed);

    let completed = run(harvest_command(
        &url,
        &model,
        &out,
        &[&common[..], &["--token-budget", "1000000"]].concat(),
    ))
    .await;
    assert_eq!(completed.status.code(), Some(0), "{}", describe(&completed));
    let json = summary(&completed);
    assert_eq!(json["committed_before"], committed.len(), "{json}");
    assert_eq!(json["committed_new"], planned - committed.len(), "{json}");
    let rows = manifest(&out);
    assert_eq!(rows.len(), planned);
    assert_unique(&rows);
    for row in &committed {
        assert!(rows.contains(row), "committed row changed on resume: {row}");
    }
}

/// Two endpoints with max_in_flight 1 and 2 in a YAML config: neither server ever sees more requests at once.
#[tokio::test(flavor = "multi_thread")]
async fn per_endpoint_concurrency_limits_hold() {
    let one = ScriptedServer::start(Script::default().with_fallback(idle_reply(150)))
        .await
        .unwrap();
    let two = ScriptedServer::start(Script::default().with_fallback(idle_reply(150)))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let config = dir.path().join("harvest.yaml");
    std::fs::write(
        &config,
        format!(
            "endpoints:\n  - url: {}\n    max_in_flight: 1\n  - url: {}\n    max_in_flight: 2\n",
            one.base_url(),
            two.base_url()
        ),
    )
    .unwrap();
    let ids = fixture_ids();
    let subset = format!("{},{}", ids[0], ids[1]);
    let mut command = tokio::process::Command::new(EXE);
    command
        .args(["harvest", "--dataset", "fixtures", "--config"])
        .arg(&config)
        .args([
            "--model",
            &unique_id("harvest-endpoints"),
            "--mode",
            "chat-text",
        ])
        .args([
            "--instance-ids",
            &subset,
            "--samples",
            "3",
            "--max-turns",
            "3",
        ])
        .args([
            "--workers",
            "6",
            "--grading-network",
            "none",
            "--json",
            "--out",
        ])
        .arg(&out)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = run(command).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(manifest(&out).len(), 6);
    assert!(
        one.request_count() > 0 && two.request_count() > 0,
        "an endpoint was never used: {} and {} requests",
        one.request_count(),
        two.request_count()
    );
    eprintln!(
        "endpoint 1: {} requests, {} at most at once; endpoint 2: {} requests, {} at most at once",
        one.request_count(),
        one.max_in_flight(),
        two.request_count(),
        two.max_in_flight()
    );
    assert!(
        one.max_in_flight() <= 1,
        "endpoint 1: {} at once",
        one.max_in_flight()
    );
    assert!(
        two.max_in_flight() <= 2,
        "endpoint 2: {} at once",
        two.max_in_flight()
    );
}

fn append(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
}

/// Spawns `command` (a harvest into `out`), waits until `out` holds at least `commits` committed rows, and kills it
/// with SIGKILL; returns its pid and the rows committed when it died.
async fn kill_9_after(
    mut command: tokio::process::Command,
    out: &Path,
    commits: usize,
) -> (u32, usize) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while committed_lines(out) < commits {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{commits} rows not committed in 120 s"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the harvest ended ({status}) before {commits} rows were committed");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().await.unwrap();
    let committed = committed_lines(out);
    let live = engine()
        .await
        .labelled_containers()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.owner.as_ref().is_some_and(|o| o.pid == pid))
        .count();
    eprintln!(
        "harvest {pid} killed with {committed} rows committed and {live} containers of its own"
    );
    (pid, committed)
}

/// Sample 0 of every task resolves it: the task's gold patch written, applied and submitted, then an answer.
fn resolving_turns(patch: &str) -> Vec<ScriptedReply> {
    vec![
        ScriptedReply::delayed(
            Duration::from_millis(200),
            counted(&format!(
                "<tool: bash>\ncat > /tmp/fix.patch <<'SWE_ENV_PATCH_EOF'\n{patch}SWE_ENV_PATCH_EOF\ngit apply \
                 /tmp/fix.patch && git status --short\n</tool>"
            )),
        ),
        counted("<tool: submit>\n/tmp/fix.patch\n</tool>"),
        counted("Applied the fix and submitted it."),
    ]
}

/// Sample 1 never makes a tool call: five format errors in a row end it (`format_errors`).
fn format_error_turns() -> Vec<ScriptedReply> {
    (0..6)
        .map(|_| counted("I think the bug is in the merge loop, but I will not call a tool."))
        .collect()
}

/// Sample 2 submits a patch that fixes nothing (a constant appended to the package's `__init__.py`).
fn wrong_patch_turns() -> Vec<ScriptedReply> {
    vec![
        counted(
            "<tool: bash>\nf=$(git ls-files '*__init__.py' | grep -v '^tests/' | head -n 1)\necho \
             'HARVEST_NOT_A_FIX = 1' >> \"$f\"\ngit diff > /tmp/wrong.patch\nwc -l /tmp/wrong.patch\n</tool>",
        ),
        counted("<tool: submit>\n/tmp/wrong.patch\n</tool>"),
        counted("Submitted."),
    ]
}

/// Per task: sample 0 resolves, 1 ends on format errors, 2 submits a wrong patch, 3 runs out of turns (6).
fn mixed_script() -> Script {
    let mut script = Script::default();
    for row in fixture_rows() {
        let id = row["instance_id"].as_str().unwrap();
        script = script
            .with_episode_turns(
                format!("{id}.s0."),
                resolving_turns(row["patch"].as_str().unwrap()),
            )
            .with_episode_turns(format!("{id}.s1."), format_error_turns())
            .with_episode_turns(format!("{id}.s2."), wrong_patch_turns())
            .with_episode_turns(
                format!("{id}.s3."),
                (0..8).map(|_| idle_reply(100)).collect(),
            );
    }
    script
}

/// What sample `k` under [`mixed_script`] ends as.
struct Expected {
    status: &'static str,
    resolved: bool,
    /// Steps (format errors included).
    turns: u64,
    /// Model calls (the final answer's included), each counted 1010 tokens.
    model_calls: u64,
    format_errors: u64,
}

fn expected_outcome(k: u64) -> Expected {
    let (status, resolved, turns, model_calls, format_errors) = match k {
        0 => ("submitted", true, 2, 3, 0),
        1 => ("format_errors", false, 5, 5, 5),
        2 => ("submitted", false, 2, 3, 0),
        _ => ("max_turns", false, 6, 6, 0),
    };
    Expected {
        status,
        resolved,
        turns,
        model_calls,
        format_errors,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn harvest_fixtures_k4_mixed_outcomes_survives_kill_9_and_resumes_exactly_once() {
    let server = ScriptedServer::start(mixed_script()).await.unwrap();
    let url = server.base_url();
    let model = unique_id("harvest-k4");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let args = [
        "--samples",
        "4",
        "--workers",
        "2",
        "--max-turns",
        "6",
        "--temperatures",
        "0.2,1.0",
        "--json",
    ];
    let tasks = fixture_ids();
    let planned = tasks.len() * 4;

    // Killed twice: after the first commit, then after three more; each time rollouts are in flight.
    let (first_pid, first_kill) =
        kill_9_after(harvest_command(&url, &model, &out, &args), &out, 1).await;
    let (second_pid, committed_at_kill) = kill_9_after(
        harvest_command(&url, &model, &out, &args),
        &out,
        first_kill + 3,
    )
    .await;
    assert!(
        committed_at_kill < planned,
        "the kill came too late to test resuming ({committed_at_kill} of {planned} committed)"
    );
    // And the worst moments of a kill, made deterministic: a frame written but its row not (a copy of a committed
    // rollout's frame appended to the last shard) and a row cut mid-line.
    let first_row = manifest(&out)[0].clone();
    let shard_of = |name: &str| out.join("shards").join(name);
    let shard = std::fs::read(shard_of(first_row["shard"].as_str().unwrap())).unwrap();
    let offset = first_row["offset"].as_u64().unwrap() as usize;
    let frame = &shard[offset..offset + first_row["length"].as_u64().unwrap() as usize];
    let last_shard = std::fs::read_dir(out.join("shards"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .max()
        .unwrap();
    append(&last_shard, frame);
    let row_line = serde_json::to_string(&first_row).unwrap();
    append(
        &out.join("manifest.jsonl"),
        &row_line.as_bytes()[..row_line.len() / 2],
    );

    let resumed = harvest_command(&url, &model, &out, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let resumed_pid = resumed.id().unwrap();
    let output = resumed.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let json = summary(&output);
    assert_eq!(json["planned"], planned, "{json}");
    assert_eq!(json["committed_before"], committed_at_kill, "{json}");
    assert_eq!(json["committed_new"], planned - committed_at_kill, "{json}");
    assert_eq!(json["committed_total"], planned, "{json}");
    assert_eq!(json["failed"], 0, "{json}");
    assert_eq!(json["resolved_total"], tasks.len(), "{json}");

    // The commit log: every (task, sample) exactly once, with the outcome its script makes.
    let rows = manifest(&out);
    assert_eq!(rows.len(), planned);
    let keys = assert_unique(&rows);
    let expected: BTreeSet<(String, u64)> = tasks
        .iter()
        .flat_map(|id| (0..4).map(move |k| (id.clone(), k)))
        .collect();
    assert_eq!(keys, expected);
    for row in &rows {
        let k = row["sample_idx"].as_u64().unwrap();
        let expected = expected_outcome(k);
        assert_eq!(row["status"], expected.status, "{row}");
        assert_eq!(row["resolved"], expected.resolved, "{row}");
        assert_eq!(row["n_turns"], expected.turns, "{row}");
        assert_eq!(row["n_format_errors"], expected.format_errors, "{row}");
        // Every model call's usage is in the trajectory, the final answer's too (episode_end.final_answer_tokens).
        assert_eq!(row["total_tokens"], 1010 * expected.model_calls, "{row}");
        assert_eq!(
            row["patch_bytes"].as_u64().unwrap() > 0,
            k == 0 || k == 2,
            "{row}"
        );
        assert_eq!(row["patch_hash"].is_string(), k == 0 || k == 2, "{row}");
        assert_eq!(row["model"], model.as_str(), "{row}");
        let temperature = if k % 2 == 0 { 0.2 } else { 1.0 };
        assert_eq!(row["temperature"].as_f64(), Some(temperature), "{row}");
        let episode = row["episode_id"].as_str().unwrap();
        let rollout = row["rollout_id"].as_str().unwrap();
        assert!(
            episode.starts_with(&format!(
                "{}.s{k}.{}.",
                row["instance_id"].as_str().unwrap(),
                &rollout[..8]
            )),
            "{row}"
        );
        assert_eq!(
            rollout,
            rollout_id(
                row["dataset_sha256"].as_str().unwrap(),
                row["instance_id"].as_str().unwrap(),
                k as u32,
                row["config_hash"].as_str().unwrap()
            ),
            "{row}"
        );
        assert_eq!(row["dataset_sha256"], rows[0]["dataset_sha256"], "{row}");
        assert_eq!(row["config_hash"], rows[0]["config_hash"], "{row}");
    }
    for id in &tasks {
        let seeds: BTreeSet<u64> = rows
            .iter()
            .filter(|row| row["instance_id"] == id.as_str())
            .map(|row| row["seed"].as_u64().unwrap())
            .collect();
        assert_eq!(seeds.len(), 4, "samples of {id} share a seed");
    }

    // Python reads every shard whole and every row's frame alone, and the parquet manifest.
    let read = python_read(&out).await;
    let ids: BTreeSet<&str> = rows
        .iter()
        .map(|row| row["rollout_id"].as_str().unwrap())
        .collect();
    assert_eq!(read["shard_lines"], planned, "{read}");
    let shard_ids: BTreeSet<&str> = read["shard_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(shard_ids, ids, "shard lines differ from the manifest");
    assert_eq!(read["frames_ok"], planned, "{read}");
    assert_eq!(read["parquet_rows"], planned, "{read}");
    let parquet_ids: BTreeSet<&str> = read["parquet_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap())
        .collect();
    assert_eq!(
        parquet_ids, ids,
        "manifest.parquet differs from manifest.jsonl"
    );

    // The header logs the three invocations; the data card counts what the manifest holds.
    let header: Value =
        serde_json::from_slice(&std::fs::read(out.join("harvest.json")).unwrap()).unwrap();
    assert_eq!(header["format"], "swe-env-harvest/1", "{header}");
    let invocations = header["invocations"].as_array().unwrap();
    assert_eq!(invocations.len(), 3, "{header}");
    assert_eq!(invocations[1]["committed_before"], first_kill, "{header}");
    assert_eq!(
        invocations[2]["committed_before"], committed_at_kill,
        "{header}"
    );
    let card: Value =
        serde_json::from_slice(&std::fs::read(out.join("data_card.json")).unwrap()).unwrap();
    assert_card_counts(&card, &rows);
    let card_md = std::fs::read_to_string(out.join("data_card.md")).unwrap();
    assert!(
        card_md.contains(rows[0]["repo"].as_str().unwrap()),
        "{card_md}"
    );
    let work_left: Vec<_> = std::fs::read_dir(out.join("work"))
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(work_left.is_empty(), "work/ not cleared: {work_left:?}");

    assert_no_containers_left(&rows, &[first_pid, second_pid, resumed_pid]).await;
}

/// data_card.json counts what the manifest holds: rollouts, instances, resolved, per repository and per status.
fn assert_card_counts(card: &Value, rows: &[Value]) {
    let count = |pred: &dyn Fn(&Value) -> bool| rows.iter().filter(|row| pred(row)).count();
    assert_eq!(card["rollouts"], rows.len(), "{card}");
    let instances: BTreeSet<&str> = rows
        .iter()
        .map(|row| row["instance_id"].as_str().unwrap())
        .collect();
    assert_eq!(card["instances"], instances.len(), "{card}");
    assert_eq!(
        card["resolved"],
        count(&|row| row["resolved"] == true),
        "{card}"
    );
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_repo: BTreeMap<String, usize> = BTreeMap::new();
    for row in rows {
        *by_status
            .entry(row["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        *by_repo
            .entry(row["repo"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let card_status: BTreeMap<String, usize> =
        serde_json::from_value(card["by_status"].clone()).unwrap();
    assert_eq!(card_status, by_status, "{card}");
    let card_repo: BTreeMap<String, usize> = card["by_repo"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(repo, counts)| (repo.clone(), counts["rollouts"].as_u64().unwrap() as usize))
        .collect();
    assert_eq!(card_repo, by_repo, "{card}");
    assert_eq!(
        card["format_errors"]["rollouts_ended_format_errors"],
        count(&|row| row["status"] == "format_errors"),
        "{card}"
    );
}
