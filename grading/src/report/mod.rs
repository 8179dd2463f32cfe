//! Grading reports: from a test log and the expected tests to `report.json` (per instance) and the
//! run summary, in the schema and with the semantics of swebench 4.1.0's `grading.py` and
//! `reporting.py`; swebench 5.x's stricter rules are available as [`GradingRules::Swebench5`].
//!
//! What 5.x changes, and what [`GradingRules::Swebench5`] therefore does differently:
//! * a log whose status map is empty and that shows no sign a test suite ran is ungradable
//!   (`patch_successfully_applied = false`) instead of "every FAIL_TO_PASS test missing";
//! * if the first `>>>>> Test Exit Code: N` line says non-zero while the map has tests and none
//!   FAILED or ERROR, the log is ungradable (the exit-code cross-check);
//! * a skipped FAIL_TO_PASS test is a failure (4.1.0 puts it in neither list, so a patch that
//!   skips every FAIL_TO_PASS test is resolved), a skipped PASS_TO_PASS test is a success;
//! * truncated parametrised ids (more `[` than `]`) match recorded tests by prefix;
//! * report.json gains `infra_failure` fields (not produced here), and the parsers drop
//!   `SKIPPED [N]` summary lines and join names with spaces in pytest-v2 (not ported: parsing
//!   stays 4.1.0 under both rules).
//!
//! Three rule sets are selectable ([`RuleSet`]): `swebench-4.1` (the default: the reference's
//! semantics exactly), `swebench-5`, and `hardened` = 4.1.0 plus swe-env's anti-spoofing measures,
//! of which the grading part is the exit-code cross-check below (the orchestrator adds the
//! conftest.py restore and a clean tree between apply attempts).
//!
//! swe-env's own anti-spoofing rule ([`GradingOptions::exit_code_cross_check`], on under
//! `hardened` only), applied on top of 4.1.0 rules: when the test command's exit code is known and non-zero, the
//! parsed status map is non-empty, and no test in it is FAILED or ERROR, the instance is not
//! resolved (`resolved = false`, `swe_env.exit_code_contradicts_log = true`; `tests_status` is still
//! reported). The exit code is the one the orchestrator recorded when it ran the tests, else the
//! last `>>>>> Test Exit Code: N` line of the log (the eval script prints it after all output, so a
//! test cannot pre-empt it with a fake line). Logs without an exit code grade exactly as 4.1.0.

mod summary;
mod tests_status;

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use summary::{make_run_summary, RunSummary};
pub use tests_status::{
    eval_tests_report, resolution_status, EvalType, GoldTests, ResolvedStatus, TestOutcomes,
    TestsStatus,
};

use crate::log_parsers::{
    as_reference_reads_it, evaluate_log, parse_last_test_exit_code, parse_test_exit_code, LogEval,
    LogParser, StatusMap, TestStatus,
};

/// Which swebench release's grading rules to follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum GradingRules {
    /// swebench 4.1.0 (the default; what most published SWE-bench Verified numbers used).
    #[default]
    #[serde(rename = "swebench-4.1.0")]
    Swebench4_1,
    /// swebench 5.x's stricter rules (see the module documentation).
    #[serde(rename = "swebench-5")]
    Swebench5,
}

/// The rule set a grading follows, as users select it (`--rules`, the server config, the gRPC
/// Grade call) and as report.json records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RuleSet {
    /// swebench 4.1.0's semantics exactly, failure modes included (the default).
    #[default]
    #[serde(rename = "swebench-4.1")]
    #[cfg_attr(feature = "clap", value(name = "swebench-4.1"))]
    Swebench4_1,
    /// swebench 5.x's stricter grading rules.
    #[serde(rename = "swebench-5")]
    #[cfg_attr(feature = "clap", value(name = "swebench-5"))]
    Swebench5,
    /// 4.1.0 plus swe-env's anti-spoofing: the exit-code cross-check, the pytest configuration
    /// the submission touches (conftest.py, pytest.ini, tox.ini, pytest sections of setup.cfg /
    /// pyproject.toml) restored before the tests run, a clean tree between apply attempts.
    #[serde(rename = "hardened")]
    Hardened,
}

impl RuleSet {
    /// Every rule set, in the order documentation lists them.
    pub const ALL: [RuleSet; 3] = [RuleSet::Swebench4_1, RuleSet::Swebench5, RuleSet::Hardened];

    /// The name users type and reports record.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleSet::Swebench4_1 => "swebench-4.1",
            RuleSet::Swebench5 => "swebench-5",
            RuleSet::Hardened => "hardened",
        }
    }

    /// The reference release whose test-status rules apply.
    pub fn grading_rules(self) -> GradingRules {
        match self {
            RuleSet::Swebench5 => GradingRules::Swebench5,
            RuleSet::Swebench4_1 | RuleSet::Hardened => GradingRules::Swebench4_1,
        }
    }

    /// Whether swe-env's anti-spoofing measures are on.
    pub fn hardened(self) -> bool {
        self == RuleSet::Hardened
    }
}

impl std::fmt::Display for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown rule-set name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown grading rules `{0}`: expected swebench-4.1, swebench-5 or hardened")]
pub struct UnknownRuleSet(pub String);

impl std::str::FromStr for RuleSet {
    type Err = UnknownRuleSet;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim() {
            "swebench-4.1" | "swebench-4.1.0" | "4.1" => Ok(RuleSet::Swebench4_1),
            "swebench-5" | "5" => Ok(RuleSet::Swebench5),
            "hardened" => Ok(RuleSet::Hardened),
            other => Err(UnknownRuleSet(other.to_owned())),
        }
    }
}

/// Grading knobs. Defaults: 4.1.0 rules, pass-and-fail checks, no FAIL_TO_FAIL/PASS_TO_FAIL
/// grading, no cross-check (the reference's semantics); [`GradingOptions::for_rule_set`] sets
/// them for a rule set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GradingOptions {
    /// The rule set these options implement (recorded in reports).
    pub rule_set: RuleSet,
    /// Reference release whose rules apply.
    pub rules: GradingRules,
    /// Pass-and-fail (all Python repos) or fail-only.
    pub eval_type: EvalType,
    /// Also grade FAIL_TO_FAIL and PASS_TO_FAIL lists (the reference never does when grading).
    pub calculate_to_fail: bool,
    /// swe-env's anti-spoofing rule (module documentation); on under `hardened` only.
    pub exit_code_cross_check: bool,
}

impl Default for GradingOptions {
    fn default() -> Self {
        GradingOptions::for_rule_set(RuleSet::default())
    }
}

impl GradingOptions {
    /// The options of a rule set.
    pub fn for_rule_set(rule_set: RuleSet) -> Self {
        GradingOptions {
            rule_set,
            rules: rule_set.grading_rules(),
            eval_type: EvalType::PassAndFail,
            calculate_to_fail: false,
            exit_code_cross_check: rule_set.hardened(),
        }
    }
}

/// What happened when the orchestrator applied the patch and ran the eval script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestRunOutcome {
    /// Whether the model patch applied (by any fallback method).
    pub patch_applied: bool,
    /// How it applied (e.g. `git apply`, `patch --fuzz`), for the record.
    pub apply_method: Option<String>,
    /// The eval script's whole output (empty if it never ran).
    pub test_output: String,
    /// Whether the eval script hit its time limit.
    pub timed_out: bool,
    /// The test command's exit code as the orchestrator recorded it, if it did.
    pub test_exit_code: Option<i64>,
}

/// swe-env's additions to an instance report, kept under one `swe_env` key so the reference
/// fields stay exactly as the reference writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweEnvReport {
    /// The rule set that produced this report.
    #[serde(default)]
    pub rule_set: RuleSet,
    /// Test-status rules used (follows from `rule_set`).
    pub rules: GradingRules,
    /// FULL / PARTIAL / NO, when tests were graded.
    pub resolution: Option<ResolvedStatus>,
    /// The test command's exit code (recorded, else read from the log).
    pub test_exit_code: Option<i64>,
    /// Whether the eval script timed out.
    pub timed_out: bool,
    /// How the patch applied.
    pub apply_method: Option<String>,
    /// The exit-code cross-check fired and overrode `resolved`.
    pub exit_code_contradicts_log: bool,
    /// The slice between the markers parsed to nothing and the whole log was parsed instead.
    pub parsed_whole_log: bool,
    /// Why the log could not be graded (failure marker, missing markers, no sign the suite ran).
    pub log_unusable: Option<String>,
    /// Set when the reference harness would have written no report.json at all (patch did not
    /// apply, tests timed out, its parser raised): run summaries count such instances as errors.
    pub harness_error: Option<String>,
    /// The eval script's install step ran with the grading network off (`>>>>> Install Ran Offline`):
    /// it could not fetch anything, so the image's existing install was used.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub install_ran_offline: bool,
    /// Exit status of that offline install step (`>>>>> Install Exit Code: N`), when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_exit_code: Option<i64>,
}

/// Reads the offline-install markers of an eval log: whether the install step ran offline, and its status.
/// Only lines that start with a marker count (a `set -x` trace of the `echo` starts with `+`).
pub fn offline_install_status(test_output: &str) -> (bool, Option<i64>) {
    use crate::eval_script::{INSTALL_EXIT_CODE_MARKER, INSTALL_OFFLINE_MARKER};
    let mut ran_offline = false;
    let mut exit_code = None;
    for line in test_output.lines() {
        if line.starts_with(INSTALL_OFFLINE_MARKER) {
            ran_offline = true;
        } else if let Some(rest) = line.strip_prefix(INSTALL_EXIT_CODE_MARKER) {
            exit_code = rest.trim_start_matches(':').trim().parse().ok();
        }
    }
    (ran_offline, exit_code)
}

/// One instance's entry in report.json, fields and order as the reference writes them, plus the
/// `swe_env` extras.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The prediction's patch was null.
    #[serde(rename = "patch_is_None")]
    pub patch_is_none: bool,
    /// The prediction had a patch (possibly empty).
    pub patch_exists: bool,
    /// The reference's `found`: the log had both markers and no failure marker.
    pub patch_successfully_applied: bool,
    /// Resolved (FULL), after the exit-code cross-check.
    pub resolved: bool,
    /// Per-list outcomes, when the log was gradable.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tests_status: Option<TestsStatus>,
    /// swe-env's extras.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub swe_env: Option<SweEnvReport>,
}

impl InstanceReport {
    /// True when the reference would have produced no report.json for this instance.
    pub fn reference_writes_no_report(&self) -> bool {
        self.swe_env
            .as_ref()
            .is_some_and(|extras| extras.harness_error.is_some())
    }
}

/// The whole report.json: `{instance_id: report}`.
pub type ReportFile = std::collections::BTreeMap<String, InstanceReport>;

/// Everything needed to grade one instance.
#[derive(Debug, Clone, Copy)]
pub struct GradeInput<'a> {
    /// The model patch (`None` when the prediction's patch is null).
    pub model_patch: Option<&'a str>,
    /// The instance's log-parser family.
    pub parser: LogParser,
    /// Expected tests.
    pub gold: &'a GoldTests,
    /// The run (ignored when `model_patch` is `None`).
    pub run: &'a TestRunOutcome,
}

/// Evidence, in 5.x, that a test runner executed (used only when the status map is empty).
static SUITE_RAN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"(?m)Executed [1-9]\d* of \d+",
        r"|TOTAL: [1-9]\d* (?:SUCCESS|FAILED)",
        r"|[1-9]\d* passing",
        r"|Tests:\s+[1-9]\d*",
        r"|Test Suites:\s+(?:\d+ \w+, )*[1-9]\d* total",
        r"|^# tests [1-9]\d*",
        r"|[1-9]\d* specs?, \d+ failures?",
        r"|': ok$"
    ))
    .expect("constant regex is valid")
});

/// Whether a non-empty map claims no failure while the exit code says otherwise.
fn contradicts(exit_code: Option<i64>, map: &StatusMap) -> bool {
    exit_code.is_some_and(|code| code != 0)
        && !map.is_empty()
        && !map
            .values()
            .any(|status| matches!(status, TestStatus::Failed | TestStatus::Error))
}

/// Ports `get_eval_report` (with `include_tests_status=True`, as the harness calls it), under the
/// chosen rules, plus the swe-env extras and cross-check.
pub fn grade_instance(input: &GradeInput<'_>, options: &GradingOptions) -> InstanceReport {
    let run = input.run;
    let recorded_exit_code = run
        .test_exit_code
        .or_else(|| parse_last_test_exit_code(&run.test_output));
    let mut extras = SweEnvReport {
        rule_set: options.rule_set,
        rules: options.rules,
        test_exit_code: recorded_exit_code,
        timed_out: run.timed_out,
        apply_method: run.apply_method.clone(),
        ..SweEnvReport::default()
    };
    let mut report = InstanceReport::default();
    let Some(_patch) = input.model_patch else {
        report.patch_is_none = true;
        extras.test_exit_code = None;
        extras.timed_out = false;
        report.swe_env = Some(extras);
        return report;
    };
    report.patch_exists = true;
    if !run.patch_applied {
        extras.harness_error = Some("patch did not apply".to_string());
    } else if run.timed_out {
        extras.harness_error = Some("tests timed out".to_string());
    }
    if extras.harness_error.is_some() {
        report.swe_env = Some(extras);
        return report;
    }
    let eval = match evaluate_log(&run.test_output, input.parser) {
        Ok(eval) => eval,
        Err(error) => {
            extras.harness_error = Some(error.to_string());
            report.swe_env = Some(extras);
            return report;
        }
    };
    let LogEval {
        status_map,
        found,
        marker_error,
        parsed_whole_log,
    } = eval;
    extras.parsed_whole_log = parsed_whole_log;
    if let Some(marker_error) = marker_error {
        extras.log_unusable = Some(marker_error.to_string());
    }
    let mut found = found;
    if found && options.rules == GradingRules::Swebench5 {
        let content = as_reference_reads_it(&run.test_output);
        if status_map.is_empty() && !SUITE_RAN.is_match(&content) {
            found = false;
            extras.log_unusable = Some("no test results and no sign the suite ran".to_string());
        } else if contradicts(parse_test_exit_code(&content), &status_map) {
            found = false;
            extras.exit_code_contradicts_log = true;
            extras.log_unusable = Some("exit code contradicts the parsed results".to_string());
        }
    }
    if !found {
        report.swe_env = Some(extras);
        return report;
    }
    report.patch_successfully_applied = true;
    let tests_status = eval_tests_report(
        &status_map,
        input.gold,
        options.eval_type,
        options.rules,
        options.calculate_to_fail,
    );
    let resolution = resolution_status(&tests_status);
    report.resolved = resolution == ResolvedStatus::Full;
    if report.resolved
        && options.exit_code_cross_check
        && contradicts(recorded_exit_code, &status_map)
    {
        report.resolved = false;
        extras.exit_code_contradicts_log = true;
    }
    extras.resolution = Some(resolution);
    report.tests_status = Some(tests_status);
    report.swe_env = Some(extras);
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn offline_install_markers_are_read_from_line_starts_only() {
        let log = "+ echo '>>>>> Install Ran Offline (grading network: none)'\n\
                   >>>>> Install Ran Offline (grading network: none)\n\
                   + echo '>>>>> Install Exit Code: 0'\n\
                   >>>>> Install Exit Code: 1\n";
        assert_eq!(offline_install_status(log), (true, Some(1)));
        assert_eq!(
            offline_install_status("+ echo '>>>>> Install Ran Offline'\n"),
            (false, None)
        );
    }

    fn gold() -> GoldTests {
        GoldTests {
            fail_to_pass: vec!["t.py::a".into()],
            pass_to_pass: vec!["t.py::b".into()],
            ..GoldTests::default()
        }
    }

    fn run(log_body: &str, exit_line: Option<i64>) -> TestRunOutcome {
        let mut output =
            format!("+ : '>>>>> Start Test Output'\n{log_body}\n+ : '>>>>> End Test Output'\n");
        if let Some(code) = exit_line {
            output.push_str(&format!(">>>>> Test Exit Code: {code}\n"));
        }
        TestRunOutcome {
            patch_applied: true,
            apply_method: Some("git apply".into()),
            test_output: output,
            ..TestRunOutcome::default()
        }
    }

    fn grade(run: &TestRunOutcome, options: &GradingOptions) -> InstanceReport {
        let gold = gold();
        grade_instance(
            &GradeInput {
                model_patch: Some("diff"),
                parser: LogParser::Pytest,
                gold: &gold,
                run,
            },
            options,
        )
    }

    #[test]
    fn resolved_when_all_expected_tests_pass() {
        let report = grade(
            &run("PASSED t.py::a\nPASSED t.py::b", Some(0)),
            &GradingOptions::default(),
        );
        assert!(report.patch_successfully_applied && report.resolved);
        let extras = report.swe_env.unwrap();
        assert_eq!(extras.resolution, Some(ResolvedStatus::Full));
        assert_eq!(extras.test_exit_code, Some(0));
    }

    #[test]
    fn each_rule_set_on_a_non_zero_exit_with_an_all_passing_log() {
        let spoofed = run("PASSED t.py::a\nPASSED t.py::b", Some(1));
        // swebench-4.1 (the default): the reference resolves it; the exit code is only recorded.
        let report = grade(&spoofed, &GradingOptions::default());
        assert!(report.patch_successfully_applied && report.resolved);
        let extras = report.swe_env.unwrap();
        assert_eq!(extras.rule_set, RuleSet::Swebench4_1);
        assert!(!extras.exit_code_contradicts_log);
        assert_eq!(extras.test_exit_code, Some(1));
        // hardened: the cross-check overrides `resolved`, tests_status is still reported.
        let report = grade(&spoofed, &GradingOptions::for_rule_set(RuleSet::Hardened));
        assert!(report.patch_successfully_applied && !report.resolved);
        assert!(report.tests_status.is_some());
        let extras = report.swe_env.unwrap();
        assert_eq!(extras.rule_set, RuleSet::Hardened);
        assert!(extras.exit_code_contradicts_log);
        // swebench-5 refuses the log altogether.
        let report = grade(&spoofed, &GradingOptions::for_rule_set(RuleSet::Swebench5));
        assert!(!report.patch_successfully_applied && report.tests_status.is_none());
        assert_eq!(report.swe_env.unwrap().rule_set, RuleSet::Swebench5);
    }

    #[test]
    fn each_rule_set_on_a_skipped_fail_to_pass_test() {
        let skipped = run("SKIPPED t.py::a\nPASSED t.py::b", Some(0));
        // 4.1.0 puts a skipped FAIL_TO_PASS test in neither list: resolved (a known reference quirk).
        assert!(grade(&skipped, &GradingOptions::default()).resolved);
        assert!(grade(&skipped, &GradingOptions::for_rule_set(RuleSet::Hardened)).resolved);
        assert!(!grade(&skipped, &GradingOptions::for_rule_set(RuleSet::Swebench5)).resolved);
    }

    #[test]
    fn rule_set_names_round_trip() {
        for rule_set in RuleSet::ALL {
            assert_eq!(rule_set.as_str().parse::<RuleSet>(), Ok(rule_set));
            let json = serde_json::to_string(&rule_set).unwrap();
            assert_eq!(json, format!("\"{}\"", rule_set.as_str()));
        }
        let error = "swebench4".parse::<RuleSet>().unwrap_err();
        assert!(error
            .to_string()
            .contains("swebench-4.1, swebench-5 or hardened"));
    }

    #[test]
    fn a_fake_exit_code_line_in_the_output_does_not_hide_the_real_one() {
        let spoofed = run(
            ">>>>> Test Exit Code: 0\nPASSED t.py::a\nPASSED t.py::b",
            Some(2),
        );
        assert!(!grade(&spoofed, &GradingOptions::for_rule_set(RuleSet::Hardened)).resolved);
    }

    #[test]
    fn failure_markers_and_missing_markers_mean_not_applied() {
        let mut broken = run("PASSED t.py::a\nPASSED t.py::b", None);
        broken.test_output = broken.test_output.replace(">>>>> End Test Output", "");
        let report = grade(&broken, &GradingOptions::default());
        assert!(!report.patch_successfully_applied && !report.resolved);
        assert!(report.swe_env.unwrap().log_unusable.is_some());
    }

    #[test]
    fn report_json_has_reference_shape() {
        let report = grade(
            &run("PASSED t.py::a\nFAILED t.py::b - x", None),
            &GradingOptions::default(),
        );
        let file: ReportFile = BTreeMap::from([("repo__x-1".to_string(), report)]);
        let json = serde_json::to_string(&file).unwrap();
        let expected_prefix = r#"{"repo__x-1":{"patch_is_None":false,"patch_exists":true,"patch_successfully_applied":true,"resolved":false,"tests_status":{"FAIL_TO_PASS":{"success":["t.py::a"],"failure":[]},"PASS_TO_PASS":{"success":[],"failure":["t.py::b"]}"#;
        assert!(json.starts_with(expected_prefix), "{json}");
        let back: ReportFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, file);
    }

    #[test]
    fn run_summary_counts_like_make_run_report() {
        let ids: Vec<String> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let predictions: BTreeMap<String, Option<String>> = BTreeMap::from([
            ("a".to_string(), Some("p".to_string())),
            ("b".to_string(), Some("p".to_string())),
            ("c".to_string(), Some(String::new())),
            ("d".to_string(), Some("p".to_string())),
            ("e".to_string(), Some("p".to_string())),
            ("zz".to_string(), None),
        ]);
        let resolved = InstanceReport {
            patch_exists: true,
            patch_successfully_applied: true,
            resolved: true,
            ..InstanceReport::default()
        };
        let unresolved = InstanceReport {
            patch_exists: true,
            ..InstanceReport::default()
        };
        let harness_error = InstanceReport {
            patch_exists: true,
            swe_env: Some(SweEnvReport {
                harness_error: Some("tests timed out".into()),
                ..SweEnvReport::default()
            }),
            ..InstanceReport::default()
        };
        let reports = BTreeMap::from([
            ("a".to_string(), resolved),
            ("b".to_string(), unresolved),
            ("d".to_string(), harness_error),
        ]);
        let summary = make_run_summary(&ids, &predictions, &reports);
        assert_eq!(summary.total_instances, 6);
        assert_eq!(summary.submitted_instances, 6);
        assert_eq!(summary.completed_ids, vec!["a", "b"]);
        assert_eq!(summary.resolved_ids, vec!["a"]);
        assert_eq!(summary.unresolved_ids, vec!["b"]);
        assert_eq!(summary.empty_patch_ids, vec!["c"]);
        assert_eq!(summary.error_ids, vec!["d", "e"]);
        assert_eq!(summary.incomplete_ids, vec!["f"]);
        assert_eq!(summary.schema_version, 2);
        let json = serde_json::to_string(&summary).unwrap();
        assert!(json.starts_with(
            r#"{"total_instances":6,"submitted_instances":6,"completed_instances":2,"#
        ));
        assert!(json.ends_with(r#""schema_version":2}"#));
    }
}
