//! Test-time scaling end to end (issue 17) through the real binary: `run-benchmark --samples K --testgen-samples M`
//! with the scripted model server. Majority vote picks a wrong patch while the generated tests pick the right
//! one; an instance without a valid generated test falls back to majority; invalid generated tests (prints
//! `Issue resolved` at base, syntax error, hangs) are rejected with their reason; the same trajectories give the
//! same selection and a resume reruns nothing; bad option combinations are usage errors; `--samples 2 --agent gold`
//! reports pass@1 = 1 while a plain run writes no scaling outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use swe_env::trajectory::digest::sha256_hex;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;

use crate::common::{describe, engine, read_json, read_jsonl};

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const SPANS: &str = "swe-env-fixtures__spans-1";
const RETRYKIT: &str = "swe-env-fixtures__retrykit-1";
/// Where the scripted test-generation episodes write their script.
const TEST_PATH: &str = "/testbed/test_issue.py";
/// `--testgen-timeout` of the scenario runs: the hanging generated test is killed after this long.
const TESTGEN_TIMEOUT: &str = "5";

// ---------------------------------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------------------------------

/// `swe-env run-benchmark <args> --output-dir <out>` to its end (off the async runtime, so the scripted server
/// keeps answering); returns its output and its pid (the owner of every container it created).
async fn run_benchmark(args: Vec<String>, out: &Path) -> (Output, u32) {
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || {
        let child = Command::new(EXE)
            .arg("run-benchmark")
            .args(&args)
            .arg("--output-dir")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        (child.wait_with_output().unwrap(), pid)
    })
    .await
    .unwrap()
}

/// No container created by the `swe-env` process `pid` is left behind.
async fn assert_no_container_left(pid: u32) {
    let left: Vec<String> = engine()
        .await
        .labelled_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.owner.as_ref().is_some_and(|owner| owner.pid == pid))
        .map(|c| format!("{} ({})", c.id, c.name))
        .collect();
    assert!(
        left.is_empty(),
        "containers of swe-env pid {pid} left behind: {left:?}"
    );
}

/// The flags of a scripted scaled run of both scenario instances.
fn scenario_args(server: &ScriptedServer, run_id: &str) -> Vec<String> {
    [
        "fixtures",
        "--instance-ids",
        &format!("{SPANS},{RETRYKIT}"),
        "--model-url",
        &server.base_url(),
        "--model",
        "scripted",
        "--mode",
        "chat-text",
        "--samples",
        "3",
        "--testgen-samples",
        "3",
        "--testgen-timeout",
        TESTGEN_TIMEOUT,
        "--grading-network",
        "none",
        "--workers",
        "2",
        "--json",
        "--run-id",
        run_id,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The last line per key of a JSONL file ("last line wins").
fn last_by<K: Ord>(rows: Vec<Value>, key: impl Fn(&Value) -> K) -> BTreeMap<K, Value> {
    rows.into_iter().map(|row| (key(&row), row)).collect()
}

fn str_of<'a>(row: &'a Value, field: &str) -> &'a str {
    row[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string in {row}"))
}

fn u64_of(row: &Value, field: &str) -> u64 {
    row[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not an integer in {row}"))
}

fn f64_of(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {row}"))
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "{what}: {actual} != {expected}"
    );
}

/// `selection.jsonl` by instance id.
fn selections(dir: &Path) -> BTreeMap<String, Value> {
    last_by(read_jsonl(&dir.join("selection.jsonl")), |row| {
        str_of(row, "instance_id").to_owned()
    })
}

/// `testgen.jsonl` by (instance id, index).
fn testgen_rows(dir: &Path) -> BTreeMap<(String, u64), Value> {
    last_by(read_jsonl(&dir.join("testgen.jsonl")), |row| {
        (str_of(row, "instance_id").to_owned(), u64_of(row, "index"))
    })
}

/// `samples.jsonl` by (instance id, sample).
fn sample_rows(dir: &Path) -> BTreeMap<(String, u64), Value> {
    last_by(read_jsonl(&dir.join("samples.jsonl")), |row| {
        (str_of(row, "instance_id").to_owned(), u64_of(row, "sample"))
    })
}

fn resolved_ids(report: &Value) -> Vec<String> {
    let mut ids: Vec<String> = report["resolved_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("no resolved_ids in {report}"))
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// `{"0": n, …}` as sample → n.
fn per_sample(map: &Value) -> BTreeMap<u32, u64> {
    map.as_object()
        .map(|object| {
            object
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// The scripted model: solving and test-generation episodes in the CWM text format
// ---------------------------------------------------------------------------------------------------------------

/// One model turn with token usage (so the run's token costs are non-zero).
fn turn(index: usize, text: String) -> ScriptedReply {
    ScriptedReply::Completion(ScriptedCompletion {
        text,
        usage: Some(Usage {
            prompt_tokens: 800 + 10 * index as u64,
            completion_tokens: 40 + index as u64,
        }),
        ..ScriptedCompletion::default()
    })
}

fn turns(actions: Vec<String>) -> Vec<ScriptedReply> {
    actions
        .into_iter()
        .enumerate()
        .map(|(index, action)| turn(index, action))
        .collect()
}

/// A text edit call: replace `search` by `replace` in `path`.
fn edit(path: &str, search: &str, replace: &str) -> String {
    format!("<tool: edit>\n{path}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n</tool>")
}

/// A solving episode: the edits, then the diff written to a file, submitted by path, and a final answer.
fn solving(edits: Vec<String>) -> Vec<ScriptedReply> {
    let mut actions = edits;
    actions.push("<tool: bash>\ngit diff > /tmp/fix.patch\n</tool>".to_owned());
    actions.push("<tool: submit>\n/tmp/fix.patch\n</tool>".to_owned());
    actions.push("<think>done</think>\nThe fix is submitted.".to_owned());
    turns(actions)
}

/// A test-generation episode: `script` created at [`TEST_PATH`], its path submitted, a final answer.
fn testgen(script: &str) -> Vec<ScriptedReply> {
    turns(vec![
        format!("<tool: create>\n{TEST_PATH}\n{script}\n</tool>"),
        format!("<tool: submit>\n{TEST_PATH}\n</tool>"),
        "The reproduction script is submitted.".to_owned(),
    ])
}

const SPANS_OPS: &str = "src/spans/ops.py";
const SPANS_SORT_SEARCH: &str = "    for start, end in map(_check, ranges):";
const SPANS_SORT_REPLACE: &str = "    for start, end in sorted(map(_check, ranges)):";
const SPANS_ADJACENT_SEARCH: &str = "        if merged and start < merged[-1][1]:";
const SPANS_ADJACENT_REPLACE: &str = "        if merged and start <= merged[-1][1]:";

/// spans-1 fixed (the gold patch's two edits).
fn spans_right() -> Vec<ScriptedReply> {
    solving(vec![
        edit(SPANS_OPS, SPANS_SORT_SEARCH, SPANS_SORT_REPLACE),
        edit(SPANS_OPS, SPANS_ADJACENT_SEARCH, SPANS_ADJACENT_REPLACE),
    ])
}

/// spans-1 half fixed: the ranges are sorted but touching ones still not joined, so `test_merge_adjacent` (a
/// FAIL_TO_PASS test) still fails.
fn spans_wrong() -> Vec<ScriptedReply> {
    solving(vec![edit(SPANS_OPS, SPANS_SORT_SEARCH, SPANS_SORT_REPLACE)])
}

const RETRYKIT_POLICY: &str = "src/retrykit/policy.py";
const RETRYKIT_FIRST_SEARCH: &str = "    delay = base_delay";
const RETRYKIT_CAP_SEARCH: &str =
    "        if max_delay is not None and delay > max_delay:\n            delay = max_delay + base_delay";

/// retrykit-1 fixed exactly as the gold patch.
fn retrykit_right() -> Vec<ScriptedReply> {
    solving(vec![
        edit(
            RETRYKIT_POLICY,
            RETRYKIT_FIRST_SEARCH,
            "    delay = base_delay if max_delay is None else min(base_delay, max_delay)",
        ),
        edit(
            RETRYKIT_POLICY,
            RETRYKIT_CAP_SEARCH,
            "        if max_delay is not None:\n            delay = min(delay, max_delay)",
        ),
    ])
}

/// The same fix written differently: other spacing, a trailing comment and a comment line. Different bytes,
/// the same normalised patch (majority vote counts them together).
fn retrykit_right_reformatted() -> Vec<ScriptedReply> {
    solving(vec![
        edit(
            RETRYKIT_POLICY,
            RETRYKIT_FIRST_SEARCH,
            "    delay = base_delay if max_delay is None else min(base_delay,max_delay)  # never above the cap",
        ),
        edit(
            RETRYKIT_POLICY,
            RETRYKIT_CAP_SEARCH,
            "        # every later delay is capped too\n        if max_delay is not None :\n            delay = min( delay, max_delay )",
        ),
    ])
}

/// retrykit-1 half fixed: later delays capped, but a `max_delay` below `base_delay` still ignored, so
/// `test_cap_below_base_delay` (FAIL_TO_PASS) still fails.
fn retrykit_wrong() -> Vec<ScriptedReply> {
    solving(vec![edit(
        RETRYKIT_POLICY,
        RETRYKIT_CAP_SEARCH,
        "        if max_delay is not None:\n            delay = min(delay, max_delay)",
    )])
}

/// A valid reproduction test of spans-1: both symptoms of the issue. Only the full fix passes it.
const SPANS_TEST_BOTH: &str = r#"from spans import merge


def main():
    try:
        unsorted = merge([(5, 8), (1, 3), (2, 6)])
        adjacent = merge([(1, 3), (3, 5)])
    except Exception as error:
        print("Other issues")
        print(error)
        return
    if unsorted == [(1, 8)] and adjacent == [(1, 5)]:
        print("Issue resolved")
    else:
        print("Issue reproduced")


main()
"#;

/// An invalid test of spans-1: it imports a function the package does not have, so it prints `Other issues` at
/// the base commit.
const SPANS_TEST_OTHER_ISSUES: &str = r#"try:
    from spans import split_ranges
except ImportError:
    print("Other issues")
else:
    print("Issue reproduced" if split_ranges([(1, 3)]) else "Issue resolved")
"#;

/// A second valid test of spans-1: touching ranges only (the half fix does not pass it either).
const SPANS_TEST_ADJACENT: &str = r#"from spans import merge

if merge([(1, 3), (3, 5)]) == [(1, 5)]:
    print("Issue resolved")
else:
    print("Issue reproduced")
"#;

/// An invalid test of retrykit-1: it checks a schedule without a cap, which is already right at the base commit,
/// so it prints `Issue resolved` there.
const RETRYKIT_TEST_RESOLVED_AT_BASE: &str = r#"from retrykit import delays

if list(delays(3, 1.0, factor=2.0)) == [1.0, 2.0]:
    print("Issue resolved")
else:
    print("Issue reproduced")
"#;

/// An invalid test of retrykit-1: an unclosed parenthesis.
const RETRYKIT_TEST_SYNTAX_ERROR: &str = r#"from retrykit import delays

if list(delays(6, 1.0, factor=2.0, max_delay=4.0) == [1.0, 2.0, 4.0, 4.0, 4.0]:
    print("Issue resolved")
else:
    print("Issue reproduced")
"#;

/// An invalid test of retrykit-1: it never finishes.
const RETRYKIT_TEST_HANGS: &str = r#"from retrykit import delays

schedule = list(delays(6, 1.0, factor=2.0, max_delay=4.0))
while True:
    pass
"#;

/// The scenario's episodes of run `run_id`, registered statelessly (a rerun of an episode gets the same replies):
/// - spans-1: s0 and s1 the same half fix, s2 the full fix; t0 and t2 valid tests (only s2 passes them), t1
///   prints `Other issues`. Majority picks s0 (wrong), tests pick s2 (right).
/// - retrykit-1: s0 and s1 the fix (written differently), s2 a half fix; t0 prints `Issue resolved` at base, t1
///   does not parse, t2 hangs. No valid test: `tests` falls back to majority, which picks the fix.
fn scenario_script(script: Script, run_id: &str) -> Script {
    let episode = |instance: &str, kind: &str| format!("{run_id}-{instance}.{kind}");
    script
        .with_episode_turns(episode(SPANS, "s0"), spans_wrong())
        .with_episode_turns(episode(SPANS, "s1"), spans_wrong())
        .with_episode_turns(episode(SPANS, "s2"), spans_right())
        .with_episode_turns(episode(SPANS, "t0"), testgen(SPANS_TEST_BOTH))
        .with_episode_turns(episode(SPANS, "t1"), testgen(SPANS_TEST_OTHER_ISSUES))
        .with_episode_turns(episode(SPANS, "t2"), testgen(SPANS_TEST_ADJACENT))
        .with_episode_turns(episode(RETRYKIT, "s0"), retrykit_right())
        .with_episode_turns(episode(RETRYKIT, "s1"), retrykit_right_reformatted())
        .with_episode_turns(episode(RETRYKIT, "s2"), retrykit_wrong())
        .with_episode_turns(
            episode(RETRYKIT, "t0"),
            testgen(RETRYKIT_TEST_RESOLVED_AT_BASE),
        )
        .with_episode_turns(episode(RETRYKIT, "t1"), testgen(RETRYKIT_TEST_SYNTAX_ERROR))
        .with_episode_turns(episode(RETRYKIT, "t2"), testgen(RETRYKIT_TEST_HANGS))
}

/// Runs the scenario as `run_id` in `out`; it must exit 0 and leave no container. Returns the `--json` stdout.
async fn run_scenario(server: &ScriptedServer, run_id: &str, out: &Path) -> Value {
    let (output, pid) = run_benchmark(scenario_args(server, run_id), out).await;
    if output.status.code() != Some(0) {
        let testgen =
            std::fs::read_to_string(out.join(run_id).join("testgen.jsonl")).unwrap_or_default();
        panic!(
            "scaled run {run_id}: {}\ntestgen.jsonl:\n{testgen}",
            describe(&output)
        );
    }
    assert_no_container_left(pid).await;
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("--json stdout is not JSON ({e}): {}", describe(&output)))
}

// ---------------------------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn majority_picks_wrong_tests_pick_right_and_invalid_tests_are_rejected() {
    let run_id = "tts";
    let server = ScriptedServer::start(scenario_script(Script::default(), run_id))
        .await
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let stdout = run_scenario(&server, run_id, out.path()).await;
    let dir = out.path().join(run_id);

    // The test-generation episodes are prompted with the testgen template, the solving ones are not; every
    // episode asked the model with its own seed.
    let requests = server.requests();
    let first_prompt = |episode: &str| -> String {
        requests
            .iter()
            .find(|r| r.episode.as_deref() == Some(episode))
            .unwrap_or_else(|| panic!("no request of episode {episode}"))
            .body["messages"]
            .to_string()
    };
    let testgen_prompt = first_prompt(&format!("{run_id}-{SPANS}.t0"));
    let solving_prompt = first_prompt(&format!("{run_id}-{SPANS}.s0"));
    assert!(
        testgen_prompt.contains("Issue reproduced"),
        "{testgen_prompt}"
    );
    assert!(
        testgen_prompt.contains("merge() drops ranges"),
        "{testgen_prompt}"
    );
    assert!(
        !solving_prompt.contains("Issue reproduced"),
        "{solving_prompt}"
    );
    assert!(
        solving_prompt.contains("merge() drops ranges"),
        "{solving_prompt}"
    );
    let mut seeds: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for request in &requests {
        let episode = request.episode.clone().unwrap_or_default();
        let seed = request
            .body
            .get("seed")
            .map(Value::to_string)
            .unwrap_or_default();
        seeds.entry(episode).or_default().insert(seed);
    }
    assert_eq!(seeds.len(), 12, "12 episodes asked the model: {seeds:?}");
    assert!(
        seeds.values().all(|s| s.len() == 1 && !s.contains("")),
        "{seeds:?}"
    );
    let distinct: BTreeSet<&String> = seeds.values().flatten().collect();
    assert_eq!(
        distinct.len(),
        12,
        "each episode samples with its own seed: {seeds:?}"
    );

    // scaling.json: the --json object, pass@1 = (1/3 + 2/3) / 2, pass@K = 1, tests 2/2, majority 1/2.
    let scaling = read_json(&dir.join("scaling.json"));
    assert_eq!(stdout, scaling, "--json prints scaling.json's object");
    assert_eq!(scaling["run_id"], run_id);
    assert_eq!(scaling["samples"], 3);
    assert_eq!(scaling["testgen_samples"], 3);
    assert_eq!(scaling["selectors"], json!(["tests", "majority"]));
    assert_eq!(scaling["primary"], "tests");
    assert_eq!(scaling["instances"], 2);
    assert_close(
        f64_of(&scaling, "pass_at_1"),
        (1.0 / 3.0 + 2.0 / 3.0) / 2.0,
        "pass_at_1",
    );
    assert_close(f64_of(&scaling, "pass_at_k"), 1.0, "pass_at_k");
    assert_close(
        f64_of(&scaling["selected_at_k"], "tests"),
        1.0,
        "selected@K tests",
    );
    assert_close(
        f64_of(&scaling["selected_at_k"], "majority"),
        0.5,
        "selected@K majority",
    );
    assert_eq!(scaling["resolved"]["pass_at_k"], 2);
    assert_eq!(
        scaling["resolved"]["selected"],
        json!({"tests": 2, "majority": 1})
    );
    for repo in ["swe-env-fixtures/spans", "swe-env-fixtures/retrykit"] {
        assert_eq!(
            scaling["per_repo"][repo]["instances"], 1,
            "{repo}: {scaling}"
        );
    }
    assert_close(
        f64_of(
            &scaling["per_repo"]["swe-env-fixtures/spans"]["selected_at_k"],
            "majority",
        ),
        0.0,
        "spans selected@K majority",
    );
    let testgen_stats = &scaling["testgen"];
    assert_eq!(testgen_stats["generated"], 6, "{testgen_stats}");
    assert_eq!(testgen_stats["valid"], 2, "{testgen_stats}");
    assert_eq!(
        testgen_stats["rejected"],
        json!({"prints_other_issues": 1, "prints_resolved_at_base": 1, "syntax_error": 1, "timeout": 1})
    );
    assert_eq!(testgen_stats["instances_with_valid_test"], 1);
    let cost = &scaling["cost"];
    assert_eq!(cost["solve_episodes"], 6, "{cost}");
    assert_eq!(cost["testgen_episodes"], 6, "{cost}");
    for field in [
        "solve_tokens",
        "testgen_tokens",
        "solve_container_seconds",
        "testgen_container_seconds",
        "validation_container_seconds",
        "selection_container_seconds",
        "container_seconds",
        "wall_seconds",
    ] {
        assert!(
            f64_of(cost, field) > 0.0,
            "cost.{field} must be > 0: {cost}"
        );
    }
    let parts: f64 = [
        "solve_container_seconds",
        "testgen_container_seconds",
        "validation_container_seconds",
        "selection_container_seconds",
    ]
    .iter()
    .map(|field| f64_of(cost, field))
    .sum();
    assert!(
        (f64_of(cost, "container_seconds") - parts).abs() < 1e-3,
        "{cost}"
    );
    // spans: 2 distinct patches × 2 valid tests at least (a duplicate patch may share its run through the cache).
    assert!(
        u64_of(cost, "selection_runs") + u64_of(cost, "selection_runs_cached") >= 4,
        "{cost}"
    );

    // samples.jsonl: every sample graded, with its seed and episode id.
    let samples = sample_rows(&dir);
    assert_eq!(samples.len(), 6, "{samples:?}");
    for ((instance, sample), row) in &samples {
        assert_eq!(
            str_of(row, "episode_id"),
            format!("{run_id}-{instance}.s{sample}")
        );
        assert!(row["seed"].is_u64(), "{row}");
        assert!(u64_of(row, "tokens") > 0, "{row}");
        let expected = match (instance.as_str(), sample) {
            (SPANS, 2) | (RETRYKIT, 0 | 1) => "resolved",
            _ => "unresolved",
        };
        assert_eq!(
            str_of(row, "status"),
            expected,
            "{instance} s{sample}: {row}"
        );
    }
    let seeds: BTreeSet<u64> = samples.values().map(|row| u64_of(row, "seed")).collect();
    assert_eq!(seeds.len(), 6, "each rollout has its own seed: {samples:?}");

    // selection.jsonl.
    let selection = selections(&dir);
    assert_eq!(selection.len(), 2, "{selection:?}");
    let spans = &selection[SPANS];
    assert_eq!(spans["resolved_samples"], json!([2]), "{spans}");
    assert_eq!(spans["valid_tests"], json!([0, 2]), "{spans}");
    let spans_tests = &spans["selections"]["tests"];
    assert_eq!(spans_tests["selector"], "tests");
    assert_eq!(spans_tests["sample"], 2, "tests pick the full fix: {spans}");
    assert_eq!(spans_tests["decided_by"], "tests", "{spans}");
    let passed = per_sample(&spans_tests["tests_passed"]);
    assert_eq!(passed.get(&2), Some(&2), "{spans}");
    assert_eq!(passed.get(&0).copied().unwrap_or(0), 0, "{spans}");
    assert_eq!(passed.get(&1).copied().unwrap_or(0), 0, "{spans}");
    let spans_majority = &spans["selections"]["majority"];
    assert_eq!(
        spans_majority["sample"], 0,
        "majority picks the half fix: {spans}"
    );
    assert_eq!(spans_majority["decided_by"], "majority", "{spans}");
    assert_eq!(
        per_sample(&spans_majority["votes"]),
        BTreeMap::from([(0, 2), (1, 2), (2, 1)]),
        "{spans}"
    );
    assert!(
        spans["selections"].get("oracle").is_none(),
        "only the run's selectors: {spans}"
    );
    let candidates = spans["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 3, "{spans}");
    assert_eq!(
        candidates[0]["patch_sha256"], candidates[1]["patch_sha256"],
        "{spans}"
    );
    assert_ne!(
        candidates[0]["patch_sha256"], candidates[2]["patch_sha256"],
        "{spans}"
    );
    let right_spans_patch = str_of(&candidates[2], "patch_sha256").to_owned();

    let retrykit = &selection[RETRYKIT];
    assert_eq!(retrykit["resolved_samples"], json!([0, 1]), "{retrykit}");
    assert_eq!(retrykit["valid_tests"], json!([]), "{retrykit}");
    let retrykit_tests = &retrykit["selections"]["tests"];
    assert_eq!(
        retrykit_tests["decided_by"], "majority_fallback",
        "{retrykit}"
    );
    let chosen = u64_of(retrykit_tests, "sample");
    assert!(chosen == 0 || chosen == 1, "{retrykit}");
    assert_eq!(
        retrykit["selections"]["majority"]["sample"], 0,
        "{retrykit}"
    );
    assert_eq!(
        per_sample(&retrykit["selections"]["majority"]["votes"]),
        BTreeMap::from([(0, 2), (1, 2), (2, 1)]),
        "the reformatted fix votes with the fix: {retrykit}"
    );
    let candidates = retrykit["candidates"].as_array().unwrap();
    assert_ne!(
        candidates[0]["patch_sha256"], candidates[1]["patch_sha256"],
        "the two fixes differ in bytes: {retrykit}"
    );
    assert_eq!(
        candidates[0]["majority_key_sha256"], candidates[1]["majority_key_sha256"],
        "and normalise to the same patch: {retrykit}"
    );
    assert_ne!(
        candidates[0]["majority_key_sha256"],
        candidates[2]["majority_key_sha256"]
    );

    // testgen.jsonl: the reasons of the rejected tests, the scripts recorded.
    let tests = testgen_rows(&dir);
    assert_eq!(tests.len(), 6, "{tests:?}");
    let expect = [
        (SPANS, 0, SPANS_TEST_BOTH, None),
        (
            SPANS,
            1,
            SPANS_TEST_OTHER_ISSUES,
            Some("prints_other_issues"),
        ),
        (SPANS, 2, SPANS_TEST_ADJACENT, None),
        (
            RETRYKIT,
            0,
            RETRYKIT_TEST_RESOLVED_AT_BASE,
            Some("prints_resolved_at_base"),
        ),
        (
            RETRYKIT,
            1,
            RETRYKIT_TEST_SYNTAX_ERROR,
            Some("syntax_error"),
        ),
        (RETRYKIT, 2, RETRYKIT_TEST_HANGS, Some("timeout")),
    ];
    let mut valid_test_shas = BTreeSet::new();
    for (instance, index, script, reason) in expect {
        let row = &tests[&(instance.to_owned(), index)];
        assert_eq!(
            str_of(row, "episode_id"),
            format!("{run_id}-{instance}.t{index}")
        );
        assert_eq!(row["episode_status"], "submitted", "{row}");
        assert_eq!(row["script"], script, "{row}");
        assert_eq!(
            str_of(row, "script_sha256"),
            sha256_hex(script.as_bytes()),
            "{row}"
        );
        assert_eq!(
            row["valid"],
            json!(reason.is_none()),
            "{instance} t{index}: {row}"
        );
        assert_eq!(row["reason"], json!(reason), "{instance} t{index}: {row}");
        assert!(u64_of(row, "tokens") > 0, "{row}");
        assert!(row["validation"].is_object(), "{row}");
        if reason.is_none() {
            valid_test_shas.insert(sha256_hex(script.as_bytes()));
        }
    }
    let hang = &tests[&(RETRYKIT.to_owned(), 2)];
    assert_eq!(hang["validation"]["run"]["timed_out"], true, "{hang}");

    // pairs.jsonl: only spans has valid tests; only the full fix passes them; every pair ran once.
    let pairs = read_jsonl(&dir.join("pairs.jsonl"));
    let mut keys = BTreeSet::new();
    for pair in &pairs {
        assert_eq!(pair["instance_id"], SPANS, "{pair}");
        let patch = str_of(pair, "patch_sha256");
        assert!(
            valid_test_shas.contains(str_of(pair, "test_sha256")),
            "{pair}"
        );
        assert_eq!(pair["patch_applied"], true, "{pair}");
        assert_eq!(pair["passed"], json!(patch == right_spans_patch), "{pair}");
        assert!(
            keys.insert((patch.to_owned(), str_of(pair, "test_sha256").to_owned())),
            "a (patch, test) pair ran twice: {pairs:?}"
        );
    }
    assert_eq!(
        keys.len(),
        4,
        "2 distinct patches × 2 valid tests: {pairs:?}"
    );

    // report.json (primary = tests) resolves both; report-majority.json only retrykit.
    let report = read_json(&dir.join("report.json"));
    assert_eq!(
        resolved_ids(&report),
        vec![RETRYKIT.to_owned(), SPANS.to_owned()]
    );
    let majority_report = read_json(&dir.join("report-majority.json"));
    assert_eq!(resolved_ids(&majority_report), vec![RETRYKIT.to_owned()]);
    assert!(
        !dir.join("report-tests.json").exists(),
        "the primary is report.json"
    );
    // results / predictions: the selected samples' rows.
    let results = last_by(read_jsonl(&dir.join("results.jsonl")), |row| {
        str_of(row, "instance_id").to_owned()
    });
    assert_eq!(results[SPANS]["status"], "resolved", "{results:?}");
    assert_eq!(results[RETRYKIT]["status"], "resolved", "{results:?}");
    let predictions = last_by(read_jsonl(&dir.join("predictions.jsonl")), |row| {
        str_of(row, "instance_id").to_owned()
    });
    assert_eq!(
        predictions[SPANS]["model_patch"],
        samples[&(SPANS.to_owned(), 2)]["submission"],
        "the selected sample's patch is the prediction"
    );
    assert_eq!(
        sha256_hex(
            predictions[SPANS]["model_patch"]
                .as_str()
                .unwrap()
                .as_bytes()
        ),
        right_spans_patch
    );

    // One trajectory per episode: 2 × (3 solving + 3 test-generation).
    let mut trajectories: Vec<String> = std::fs::read_dir(dir.join("trajectories"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    trajectories.sort();
    let mut expected: Vec<String> = [SPANS, RETRYKIT]
        .iter()
        .flat_map(|instance| {
            ["s0", "s1", "s2", "t0", "t1", "t2"]
                .iter()
                .map(move |kind| format!("{run_id}-{instance}.{kind}.jsonl"))
        })
        .collect();
    expected.sort();
    assert_eq!(trajectories, expected);

    let manifest = read_json(&dir.join("manifest.json"));
    assert_eq!(manifest["settings"]["scaling"]["samples"], 3, "{manifest}");
    assert_eq!(
        manifest["settings"]["scaling"]["testgen_samples"], 3,
        "{manifest}"
    );
}

/// Per instance: the selections (sample, decided_by, votes, tests_passed) and the evidence they rest on
/// (candidates with their patch hashes, valid tests, resolved samples).
fn selection_choices(dir: &Path) -> BTreeMap<String, Value> {
    selections(dir)
        .into_iter()
        .map(|(instance, row)| {
            let choices: BTreeMap<String, Value> = row["selections"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(selector, s)| {
                    (
                        selector.clone(),
                        json!({"sample": s["sample"], "decided_by": s["decided_by"], "votes": s["votes"],
                               "tests_passed": s.get("tests_passed").cloned().unwrap_or(json!({}))}),
                    )
                })
                .collect();
            let evidence = json!({"selections": choices, "candidates": row["candidates"],
                "valid_tests": row["valid_tests"], "resolved_samples": row["resolved_samples"]});
            (instance, evidence)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn same_trajectories_give_the_same_selection() {
    let server = ScriptedServer::start(scenario_script(
        scenario_script(Script::default(), "same-a"),
        "same-b",
    ))
    .await
    .unwrap();
    let out = tempfile::tempdir().unwrap();
    let first = run_scenario(&server, "same-a", out.path()).await;
    let second = run_scenario(&server, "same-b", out.path()).await;
    let dir_a = out.path().join("same-a");
    let dir_b = out.path().join("same-b");
    let choices = selection_choices(&dir_a);
    assert_eq!(choices.len(), 2, "{choices:?}");
    assert_eq!(
        choices[SPANS]["selections"]["tests"]["sample"], 2,
        "{choices:?}"
    );
    assert_eq!(
        choices[SPANS]["selections"]["majority"]["sample"], 0,
        "{choices:?}"
    );
    assert_eq!(
        choices,
        selection_choices(&dir_b),
        "the same trajectories, another selection"
    );
    assert_eq!(first["selected_at_k"], second["selected_at_k"]);
    assert_eq!(first["pass_at_1"], second["pass_at_1"]);

    // Resume the first run: everything is recorded, so no model request, no pair run, the same selection file.
    let selection_before = std::fs::read(dir_a.join("selection.jsonl")).unwrap();
    let requests_before = server.request_count();
    let resumed = run_scenario(&server, "same-a", out.path()).await;
    assert_eq!(
        server.request_count(),
        requests_before,
        "a resume re-ran model episodes"
    );
    assert_eq!(
        std::fs::read(dir_a.join("selection.jsonl")).unwrap(),
        selection_before,
        "selection.jsonl changed on resume"
    );
    assert_eq!(
        resumed["cost"]["selection_runs"], 0,
        "a resume re-ran pairs: {resumed}"
    );
    assert_eq!(
        u64_of(&resumed["cost"], "selection_runs_cached"),
        u64_of(&first["cost"], "selection_runs") + u64_of(&first["cost"], "selection_runs_cached"),
        "{resumed}"
    );
    assert_eq!(resumed["selected_at_k"], first["selected_at_k"]);
    assert_eq!(
        read_jsonl(&dir_a.join("samples.jsonl")).len(),
        6,
        "a resume appends no sample line"
    );
    assert_eq!(
        read_jsonl(&dir_a.join("testgen.jsonl")).len(),
        6,
        "a resume appends no testgen line"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_scaling_options_are_usage_errors_naming_the_flag() {
    let out = tempfile::tempdir().unwrap();
    // A model that is never called: the options are refused before anything runs.
    let model = [
        "--model-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "m",
        "--mode",
        "chat-text",
    ];
    let no_issue_path = out.path().join("no_issue.txt");
    std::fs::write(
        &no_issue_path,
        "Write a test for the bug in {{repo_root}}.\n",
    )
    .unwrap();
    let no_issue = no_issue_path.to_str().unwrap().to_owned();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--agent", "gold", "--samples", "2", "--select", "oracle"],
            "--select oracle",
        ),
        (
            [&model[..], &["--samples", "2", "--select", "tests"]].concat(),
            "--testgen-samples",
        ),
        (
            vec!["--agent", "gold", "--testgen-samples", "2"],
            "--testgen-samples",
        ),
        (vec!["--agent", "gold", "--samples", "0"], "--samples"),
        (vec!["--agent", "gold", "--samples", "65"], "--samples"),
        // A test-generation prompt that never shows the issue.
        (
            [
                &model[..],
                &["--testgen-samples", "1", "--testgen-prompt", &no_issue],
            ]
            .concat(),
            "{{issue}}",
        ),
        // Options that would be silently ignored are refused.
        (vec!["--agent", "gold", "--seed", "3"], "--seed"),
        (
            vec![
                "--agent",
                "gold",
                "--samples",
                "2",
                "--testgen-timeout",
                "5",
            ],
            "--testgen-timeout",
        ),
        (
            vec![
                "--agent",
                "gold",
                "--samples",
                "2",
                "--testgen-prompt",
                "/nonexistent",
            ],
            "--testgen-prompt",
        ),
    ];
    for (index, (flags, needle)) in cases.into_iter().enumerate() {
        let run_id = format!("bad{index}");
        let mut args: Vec<String> = ["fixtures", "--instance-ids", SPANS, "--run-id", &run_id]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.extend(flags.iter().map(|s| (*s).to_owned()));
        let (output, pid) = run_benchmark(args, out.path()).await;
        assert_eq!(
            output.status.code(),
            Some(2),
            "{flags:?}: {}",
            describe(&output)
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(needle),
            "{flags:?}: the message names {needle}: {stderr}"
        );
        assert!(
            !out.path().join(&run_id).exists(),
            "{flags:?}: a refused run writes nothing"
        );
        assert_no_container_left(pid).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_samples_all_resolve_and_a_plain_run_writes_no_scaling_outputs() {
    let out = tempfile::tempdir().unwrap();
    let common = |run_id: &str| -> Vec<String> {
        [
            "fixtures",
            "--instance-ids",
            SPANS,
            "--agent",
            "gold",
            "--grading-network",
            "none",
            "--json",
            "--run-id",
            run_id,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let mut args = common("gold2");
    args.extend(["--samples".to_owned(), "2".to_owned()]);
    let (output, pid) = run_benchmark(args, out.path()).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_no_container_left(pid).await;
    let dir = out.path().join("gold2");
    let scaling = read_json(&dir.join("scaling.json"));
    let stdout: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stdout, scaling);
    assert_eq!(scaling["samples"], 2);
    assert_eq!(scaling["primary"], "majority");
    assert_close(f64_of(&scaling, "pass_at_1"), 1.0, "pass_at_1");
    assert_close(f64_of(&scaling, "pass_at_k"), 1.0, "pass_at_k");
    assert_close(
        f64_of(&scaling["selected_at_k"], "majority"),
        1.0,
        "selected@K majority",
    );
    assert_eq!(scaling["cost"]["solve_episodes"], 2);
    assert_eq!(scaling["cost"]["testgen_episodes"], 0);
    let samples = sample_rows(&dir);
    assert_eq!(samples.len(), 2, "{samples:?}");
    assert!(
        samples.values().all(|row| row["status"] == "resolved"),
        "{samples:?}"
    );
    let selection = selections(&dir);
    let majority = &selection[SPANS]["selections"]["majority"];
    assert_eq!(majority["sample"], 0, "{majority}");
    assert_eq!(majority["decided_by"], "majority", "{majority}");
    assert_eq!(
        per_sample(&majority["votes"]),
        BTreeMap::from([(0, 2), (1, 2)])
    );
    assert_eq!(
        resolved_ids(&read_json(&dir.join("report.json"))),
        vec![SPANS.to_owned()]
    );

    // Without scaling flags: today's outputs only.
    let (output, pid) = run_benchmark(common("plain"), out.path()).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_no_container_left(pid).await;
    let plain = out.path().join("plain");
    assert!(plain.join("report.json").exists());
    for file in [
        "scaling.json",
        "selection.jsonl",
        "samples.jsonl",
        "testgen.jsonl",
        "pairs.jsonl",
    ] {
        assert!(!plain.join(file).exists(), "a plain run wrote {file}");
    }
    let stats: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(stats["resolved"], 1, "{stats}");
    assert!(stats.get("pass_at_1").is_none(), "{stats}");
}

/// A sample whose model endpoint fails is recorded as an error: the run exits 1, and so does a resume that reruns
/// nothing while the error is still recorded (a hostile review saw the resume exit 0); `--retry-errors` reruns it.
#[tokio::test(flavor = "multi_thread")]
async fn recorded_failures_keep_the_exit_code_until_retried() {
    let run_id = "fails";
    let failing = format!("{run_id}-{SPANS}.s1");
    let script = Script::default()
        .with_episode_turns(format!("{run_id}-{SPANS}.s0"), spans_right())
        .with_episode_turns(failing.clone(), vec![ScriptedReply::status(500); 4]);
    let server = ScriptedServer::start(script).await.unwrap();
    let out = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "fixtures",
        "--instance-ids",
        SPANS,
        "--model-url",
        &server.base_url(),
        "--model",
        "scripted",
        "--mode",
        "chat-text",
        "--max-attempts",
        "1",
        "--samples",
        "2",
        "--grading-network",
        "none",
        "--run-id",
        run_id,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let (first, pid) = run_benchmark(args.clone(), out.path()).await;
    assert_eq!(first.status.code(), Some(1), "{}", describe(&first));
    assert_no_container_left(pid).await;
    let dir = out.path().join(run_id);
    let samples = sample_rows(&dir);
    assert_eq!(str_of(&samples[&(SPANS.to_owned(), 1)], "status"), "error");
    assert_eq!(
        str_of(&samples[&(SPANS.to_owned(), 0)], "status"),
        "resolved"
    );
    let requests = server.request_count();
    let (resumed, pid) = run_benchmark(args.clone(), out.path()).await;
    assert_eq!(resumed.status.code(), Some(1), "{}", describe(&resumed));
    assert!(
        String::from_utf8_lossy(&resumed.stdout).contains("failed on infrastructure"),
        "{}",
        describe(&resumed)
    );
    assert_eq!(server.request_count(), requests, "the resume reran nothing");
    assert_no_container_left(pid).await;
    // Retried: the endpoint still fails for s1, so the run still exits 1, and s1 was asked again.
    let mut retry = args;
    retry.push("--retry-errors".to_owned());
    let (retried, pid) = run_benchmark(retry, out.path()).await;
    assert_eq!(retried.status.code(), Some(1), "{}", describe(&retried));
    assert!(server.request_count() > requests, "--retry-errors reran s1");
    assert_no_container_left(pid).await;
}
