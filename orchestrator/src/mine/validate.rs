//! Docker validation of a provisional mined row, shared by `mine history` and `mine mutate`.
//!
//! The row is graded by our own grader ([`grade::grade_patch`], fresh container from the row's image) `runs` times
//! without the fix (empty prediction: base + test patch, the "before" side) and `runs` times with it (the "after"
//! side). A test whose status differs between the runs of one side is flaky and dropped. FAIL_TO_PASS = failing or
//! erroring (or absent: a test file that does not import yet) in every before run and passing in every after run;
//! PASS_TO_PASS = passing in every run of both sides. The row with those lists is then graded once more with the
//! gold patch (must resolve) and with the empty patch (must not).

use std::collections::{BTreeMap, BTreeSet};

use swe_env_grading::dataset::Instance;
use swe_env_grading::log_parsers::{evaluate_log, LogParser, TestStatus, START_TEST_OUTPUT};
use swe_env_sandbox::{DockerEngine, SandboxError};
use tracing::{debug, info};

use crate::grade::{grade_patch, test_spec, GradeConfig, GradeError};
use crate::mine::tail;

/// How a row is validated.
#[derive(Debug, Clone)]
pub struct ValidateConfig {
    /// Grading settings (network, test timeout, rule set) of every run.
    pub grade: GradeConfig,
    /// Runs per side (before / after); default 2. A test is flaky when its runs on one side disagree.
    pub runs: usize,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        Self {
            grade: GradeConfig::default(),
            runs: 2,
        }
    }
}

/// One grading of the row and its parsed test statuses.
#[derive(Debug, Clone, Default)]
pub struct TestRun {
    /// Test name → status (the row's log parser over the eval output).
    pub statuses: BTreeMap<String, TestStatus>,
    /// The eval script's output.
    pub test_output: String,
    /// The prediction applied (always true for the empty prediction).
    pub patch_applied: bool,
    /// The eval script hit its time limit.
    pub timed_out: bool,
    /// Time spent in the eval script, ms.
    pub test_ms: u64,
    /// The eval script's `git apply` of the row's test patch succeeded (false: the tests ran without it).
    pub test_patch_applied: bool,
    /// Total grading time (container start to report), ms.
    pub total_ms: u64,
    /// The grader called the row resolved with this prediction.
    pub resolved: bool,
}

/// A row that passed validation: the lists to write into it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validated {
    /// Failing (or absent) in every before run, passing in every after run; sorted.
    pub fail_to_pass: Vec<String>,
    /// Passing in every run of both sides; sorted.
    pub pass_to_pass: Vec<String>,
    /// Tests whose status differed between the runs of one side (dropped from both lists); sorted.
    pub flaky: Vec<String>,
    /// Test output of before#1 (problem statements use it).
    pub before_output: String,
    /// Tests passing in every after run.
    pub after_passing: BTreeSet<String>,
    /// Containers run (gradings) for this row.
    pub container_runs: usize,
}

/// Why a row was not kept (data, not an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// `no_fail_to_pass`, `all_flaky`, `test_patch_does_not_apply`, `patch_does_not_apply`, `no_test_results`,
    /// `timeout`, `gold_not_resolved`, `empty_resolves`, `bad_row` (no eval script can be made), `image`.
    pub reason: &'static str,
    /// What happened, for a person.
    pub detail: String,
    /// Containers run before the rejection.
    pub container_runs: usize,
}

impl Rejection {
    fn new(reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            container_runs: 0,
        }
    }
}

/// Validation could not run (infrastructure), as opposed to a rejected row.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// No eval script can be made for the row (bad log parser, test patch holding the heredoc delimiter).
    #[error("cannot grade the mined row {instance_id}: {detail}")]
    Spec {
        /// The row.
        instance_id: String,
        /// Why.
        detail: String,
    },
    /// Docker failed; check that the engine runs and the image exists.
    #[error("validation container failed: {0}")]
    Sandbox(#[from] SandboxError),
}

impl From<GradeError> for ValidateError {
    fn from(error: GradeError) -> Self {
        match error {
            GradeError::Spec {
                instance_id,
                detail,
            } => Self::Spec {
                instance_id,
                detail,
            },
            GradeError::Sandbox(e) => Self::Sandbox(e),
        }
    }
}

/// One `grade_patch` of `row` with `patch` in a fresh container, parsed with the row's log parser.
pub async fn run_tests(
    engine: &DockerEngine,
    row: &Instance,
    patch: Option<&str>,
    config: &ValidateConfig,
    grading_id: &str,
) -> Result<TestRun, ValidateError> {
    let parser = test_spec(row, &config.grade)?.parser;
    let outcome = grade_patch(engine, row, patch, &config.grade, grading_id).await?;
    let statuses = parse_statuses(&outcome.test_output, parser);
    let patch_applied = outcome.apply_method.is_some();
    let test_patch_applied = !patch_applied || !test_patch_failed(&outcome.test_output);
    debug!(
        grading_id,
        tests = statuses.len(),
        patch_applied,
        test_patch_applied,
        timed_out = outcome.timed_out,
        "validation run"
    );
    Ok(TestRun {
        statuses,
        patch_applied,
        test_patch_applied,
        timed_out: outcome.timed_out,
        test_ms: outcome.test_ms,
        total_ms: outcome.total_ms,
        resolved: outcome.resolved,
        test_output: outcome.test_output,
    })
}

/// The statuses the row's parser finds (none when the log has a failure marker or no markers).
fn parse_statuses(output: &str, parser: LogParser) -> BTreeMap<String, TestStatus> {
    match evaluate_log(output, parser) {
        Ok(eval) if eval.found => eval.status_map,
        _ => BTreeMap::new(),
    }
}

/// True when the eval script's `git apply -v -` of the test patch failed. The script runs under `set -x` and does
/// not stop on errors, so the tests then run without the test patch: the trace line `+ git apply -v -` followed,
/// before the start-of-tests marker, by git's `error: ...` lines.
pub fn test_patch_failed(output: &str) -> bool {
    let before_tests = match output.find(START_TEST_OUTPUT) {
        Some(at) => &output[..at],
        None => output,
    };
    let Some(at) = before_tests.rfind("+ git apply -v -") else {
        return false;
    };
    before_tests[at..]
        .lines()
        .skip(1)
        .any(|line| line.starts_with("error: ") || line.starts_with("fatal: "))
}

fn is_failing(status: Option<&TestStatus>) -> bool {
    matches!(status, None | Some(TestStatus::Failed | TestStatus::Error))
}

fn is_passing(status: Option<&TestStatus>) -> bool {
    matches!(status, Some(TestStatus::Passed | TestStatus::Xfail))
}

/// FAIL_TO_PASS / PASS_TO_PASS / flaky from the status maps of the before and after runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Failing (or absent) in every before run, passing in every after run.
    pub fail_to_pass: Vec<String>,
    /// Passing in every run of both sides.
    pub pass_to_pass: Vec<String>,
    /// Status differs between the runs of one side.
    pub flaky: Vec<String>,
    /// F2P was empty only because flaky tests were dropped (some flaky test failed in a before run and passed in
    /// an after run).
    pub all_flaky: bool,
    /// Passing in every after run.
    pub after_passing: BTreeSet<String>,
}

/// Pure classification (no Docker): see [`Classification`]. Sides must not be empty.
pub fn classify(
    before: &[&BTreeMap<String, TestStatus>],
    after: &[&BTreeMap<String, TestStatus>],
) -> Classification {
    let names: BTreeSet<&String> = before
        .iter()
        .chain(after.iter())
        .flat_map(|m| m.keys())
        .collect();
    let differs = |side: &[&BTreeMap<String, TestStatus>], name: &String| {
        let first = side.first().and_then(|m| m.get(name));
        side.iter().any(|m| m.get(name) != first)
    };
    let mut out = Classification::default();
    let mut flaky_f2p = false;
    for name in names {
        let after_pass = after.iter().all(|m| is_passing(m.get(name)));
        if after_pass {
            out.after_passing.insert(name.clone());
        }
        if differs(before, name) || differs(after, name) {
            if before.iter().any(|m| is_failing(m.get(name)))
                && after.iter().any(|m| is_passing(m.get(name)))
            {
                flaky_f2p = true;
            }
            out.flaky.push(name.clone());
            continue;
        }
        let before_fail = before.iter().all(|m| is_failing(m.get(name)));
        let before_pass = before.iter().all(|m| is_passing(m.get(name)));
        if before_fail && after_pass {
            out.fail_to_pass.push(name.clone());
        } else if before_pass && after_pass {
            out.pass_to_pass.push(name.clone());
        }
    }
    out.all_flaky = out.fail_to_pass.is_empty() && flaky_f2p;
    out
}

/// The rejection a run earns before classification, if any.
fn run_problem(run: &TestRun, side: &str, k: usize) -> Option<Rejection> {
    if !run.patch_applied {
        return Some(Rejection::new(
            "patch_does_not_apply",
            format!("{side}#{k}: the fix does not apply at the base commit"),
        ));
    }
    if !run.test_patch_applied {
        return Some(Rejection::new(
            "test_patch_does_not_apply",
            format!(
                "{side}#{k}: the test patch does not apply at the base commit: {}",
                tail(&run.test_output, 400)
            ),
        ));
    }
    if run.timed_out {
        return Some(Rejection::new(
            "timeout",
            format!("{side}#{k}: the tests exceeded the time limit"),
        ));
    }
    if run.statuses.is_empty() {
        return Some(Rejection::new(
            "no_test_results",
            format!(
                "{side}#{k}: the log parser found no test result; output ends with: {}",
                tail(&run.test_output, 400)
            ),
        ));
    }
    None
}

/// Validates `row` (its `patch` is the fix, `test_patch` the tests): see the module docs. `id_prefix` names the
/// grading containers. `Ok(Err(_))` = the row is rejected; `Err(_)` = Docker failed.
pub async fn validate(
    engine: &DockerEngine,
    row: &Instance,
    config: &ValidateConfig,
    id_prefix: &str,
) -> Result<Result<Validated, Rejection>, ValidateError> {
    let mut runs_done = 0usize;
    let result = validate_counted(engine, row, config, id_prefix, &mut runs_done).await;
    match result {
        Ok(Ok(mut validated)) => {
            validated.container_runs = runs_done;
            Ok(Ok(validated))
        }
        Ok(Err(mut rejection)) => {
            rejection.container_runs = runs_done;
            info!(instance_id = %row.instance_id, reason = rejection.reason, container_runs = runs_done, "mined row rejected");
            Ok(Err(rejection))
        }
        Err(ValidateError::Spec { detail, .. }) => Ok(Err(Rejection {
            reason: "bad_row",
            detail,
            container_runs: runs_done,
        })),
        Err(e) => Err(e),
    }
}

async fn validate_counted(
    engine: &DockerEngine,
    row: &Instance,
    config: &ValidateConfig,
    id_prefix: &str,
    runs_done: &mut usize,
) -> Result<Result<Validated, Rejection>, ValidateError> {
    let runs = config.runs.max(1);
    let mut before = Vec::with_capacity(runs);
    for k in 1..=runs {
        let run = run_tests(
            engine,
            row,
            Some(""),
            config,
            &format!("{id_prefix}-before{k}"),
        )
        .await?;
        *runs_done += 1;
        if let Some(rejection) = run_problem(&run, "before", k) {
            return Ok(Err(rejection));
        }
        if k == 1
            && !run
                .statuses
                .values()
                .any(|s| matches!(s, TestStatus::Failed | TestStatus::Error))
        {
            return Ok(Err(Rejection::new(
                "no_fail_to_pass",
                format!(
                    "before#1: all {} tests pass without the fix",
                    run.statuses.len()
                ),
            )));
        }
        before.push(run);
    }
    let mut after = Vec::with_capacity(runs);
    for k in 1..=runs {
        let run = run_tests(
            engine,
            row,
            Some(&row.patch),
            config,
            &format!("{id_prefix}-after{k}"),
        )
        .await?;
        *runs_done += 1;
        if let Some(rejection) = run_problem(&run, "after", k) {
            return Ok(Err(rejection));
        }
        after.push(run);
    }
    let before_maps: Vec<_> = before.iter().map(|r| &r.statuses).collect();
    let after_maps: Vec<_> = after.iter().map(|r| &r.statuses).collect();
    let classes = classify(&before_maps, &after_maps);
    if classes.fail_to_pass.is_empty() {
        let (reason, detail) = if classes.all_flaky {
            (
                "all_flaky",
                format!(
                    "every fail-to-pass test is flaky: {}",
                    classes.flaky.join(", ")
                ),
            )
        } else {
            (
                "no_fail_to_pass",
                "no test fails in every run without the fix and passes in every run with it"
                    .to_owned(),
            )
        };
        return Ok(Err(Rejection::new(reason, detail)));
    }
    let mut graded = row.clone();
    graded.fail_to_pass = classes.fail_to_pass.clone();
    graded.pass_to_pass = classes.pass_to_pass.clone();
    let gold = run_tests(
        engine,
        &graded,
        Some(&row.patch),
        config,
        &format!("{id_prefix}-gold"),
    )
    .await?;
    *runs_done += 1;
    if !gold.resolved {
        return Ok(Err(Rejection::new(
            "gold_not_resolved",
            format!(
                "the gold patch does not resolve the row with the computed lists ({} FAIL_TO_PASS, {} PASS_TO_PASS); output ends with: {}",
                graded.fail_to_pass.len(),
                graded.pass_to_pass.len(),
                tail(&gold.test_output, 400)
            ),
        )));
    }
    let empty = run_tests(
        engine,
        &graded,
        Some(""),
        config,
        &format!("{id_prefix}-empty"),
    )
    .await?;
    *runs_done += 1;
    if empty.resolved {
        return Ok(Err(Rejection::new(
            "empty_resolves",
            "the empty patch resolves the row: the tests do not need the fix",
        )));
    }
    Ok(Ok(Validated {
        fail_to_pass: classes.fail_to_pass,
        pass_to_pass: classes.pass_to_pass,
        flaky: classes.flaky,
        before_output: before
            .into_iter()
            .next()
            .map(|r| r.test_output)
            .unwrap_or_default(),
        after_passing: classes.after_passing,
        container_runs: 0,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, TestStatus)]) -> BTreeMap<String, TestStatus> {
        entries
            .iter()
            .map(|(n, s)| ((*n).to_owned(), s.clone()))
            .collect()
    }

    use TestStatus::{Error, Failed, Passed, Skipped, Xfail};

    #[test]
    fn f2p_p2p_and_flaky() {
        let b1 = map(&[
            ("t::fixed", Failed),
            ("t::err", Error),
            ("t::ok", Passed),
            ("t::flaky", Passed),
            ("t::skip", Skipped),
            ("t::still", Failed),
        ]);
        let b2 = map(&[
            ("t::fixed", Failed),
            ("t::err", Error),
            ("t::ok", Passed),
            ("t::flaky", Failed),
            ("t::skip", Skipped),
            ("t::still", Failed),
        ]);
        let a = map(&[
            ("t::fixed", Passed),
            ("t::err", Xfail),
            ("t::ok", Passed),
            ("t::flaky", Passed),
            ("t::skip", Skipped),
            ("t::still", Failed),
            ("t::new", Passed),
        ]);
        let c = classify(&[&b1, &b2], &[&a, &a]);
        assert_eq!(c.fail_to_pass, vec!["t::err", "t::fixed", "t::new"]);
        assert_eq!(c.pass_to_pass, vec!["t::ok"]);
        assert_eq!(c.flaky, vec!["t::flaky"]);
        assert!(!c.all_flaky);
        assert_eq!(
            c.after_passing.into_iter().collect::<Vec<_>>(),
            vec!["t::err", "t::fixed", "t::flaky", "t::new", "t::ok"]
        );
    }

    #[test]
    fn after_side_flakiness_drops_the_test() {
        let b = map(&[("t::a", Failed), ("t::b", Failed)]);
        let a1 = map(&[("t::a", Passed), ("t::b", Passed)]);
        let a2 = map(&[("t::a", Passed), ("t::b", Failed)]);
        let c = classify(&[&b, &b], &[&a1, &a2]);
        assert_eq!(c.fail_to_pass, vec!["t::a"]);
        assert_eq!(c.flaky, vec!["t::b"]);
        // A test missing from one run of a side is flaky too.
        let a3 = map(&[("t::a", Passed)]);
        let c = classify(&[&b, &b], &[&a1, &a3]);
        assert_eq!(c.flaky, vec!["t::b"]);
    }

    #[test]
    fn only_flaky_fail_to_pass_is_all_flaky() {
        let b1 = map(&[("t::a", Failed), ("t::ok", Passed)]);
        let b2 = map(&[("t::a", Passed), ("t::ok", Passed)]);
        let a = map(&[("t::a", Passed), ("t::ok", Passed)]);
        let c = classify(&[&b1, &b2], &[&a, &a]);
        assert!(c.fail_to_pass.is_empty());
        assert!(c.all_flaky);
        assert_eq!(c.pass_to_pass, vec!["t::ok"]);
        // Nothing fixed at all: not all_flaky.
        let c = classify(&[&a, &a], &[&a, &a]);
        assert!(c.fail_to_pass.is_empty());
        assert!(!c.all_flaky);
        assert_eq!(c.pass_to_pass, vec!["t::a", "t::ok"]);
    }

    #[test]
    fn test_patch_failure_is_read_from_the_trace() {
        let failed = "+ git checkout abc tests/test_a.py\n+ git apply -v -\nChecking patch tests/test_a.py...\n\
error: while searching for:\nerror: patch failed: tests/test_a.py:1\nerror: tests/test_a.py: patch does not apply\n\
+ : '>>>>> Start Test Output'\n+ pytest\nPASSED tests/test_a.py::t\n+ : '>>>>> End Test Output'\n";
        assert!(test_patch_failed(failed));
        let ok = "+ git apply -v -\nChecking patch tests/test_a.py...\nApplied patch tests/test_a.py cleanly.\n\
+ : '>>>>> Start Test Output'\nerror: something the tests print\n+ : '>>>>> End Test Output'\n";
        assert!(!test_patch_failed(ok));
        assert!(!test_patch_failed("no trace at all"));
    }

    /// Docker: a test patch that does not apply at the base commit is reported as such after one run (read from
    /// the real eval script's trace), not as "no fail-to-pass".
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_test_patch_that_does_not_apply_is_named() {
        let engine = DockerEngine::connect(std::time::Duration::from_secs(120))
            .await
            .unwrap();
        let image = "swe-env/fixture-retrykit:latest";
        let sandbox = engine
            .create_sandbox(
                image,
                "mine-unit-head",
                swe_env_sandbox::SandboxConfig::default(),
            )
            .await
            .unwrap();
        let head = sandbox
            .exec(
                &["git", "-C", "/testbed", "rev-parse", "HEAD"],
                None,
                std::time::Duration::from_secs(30),
            )
            .await;
        sandbox.remove().await.unwrap();
        let head = String::from_utf8(head.unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let row: Instance = serde_json::from_value(serde_json::json!({
            "repo": "local/retrykit",
            "instance_id": "local__retrykit-unit",
            "base_commit": head,
            "patch": "",
            "test_patch": "diff --git a/tests/test_retry.py b/tests/test_retry.py\n--- a/tests/test_retry.py\n+++ b/tests/test_retry.py\n@@ -1,1 +1,1 @@\n-this line is not in the file\n+x = 2\n",
            "image": image,
            "activate": "source /opt/venv/bin/activate",
            "test_cmd": "pytest -rA -p no:cacheprovider",
            "log_parser": "pytest",
        }))
        .unwrap();
        let config = ValidateConfig {
            grade: GradeConfig {
                network_mode: "none".into(),
                test_timeout: std::time::Duration::from_secs(120),
                ..GradeConfig::default()
            },
            runs: 2,
        };
        let rejection = validate(&engine, &row, &config, "mine-unit-tp")
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            rejection.reason, "test_patch_does_not_apply",
            "{}",
            rejection.detail
        );
        assert_eq!(rejection.container_runs, 1);
    }
}
