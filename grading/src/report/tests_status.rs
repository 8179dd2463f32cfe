//! FAIL_TO_PASS / PASS_TO_PASS bookkeeping: which expected tests succeeded or failed, and the
//! FULL / PARTIAL / NO resolution computed from that, as swebench's `grading.py` does.

use serde::{Deserialize, Serialize};

use super::GradingRules;
use crate::log_parsers::{StatusMap, TestStatus};

/// The expected test lists of an instance (from the dataset row).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldTests {
    /// Tests the gold patch makes pass.
    #[serde(rename = "FAIL_TO_PASS")]
    pub fail_to_pass: Vec<String>,
    /// Tests that pass before and after the gold patch.
    #[serde(rename = "PASS_TO_PASS")]
    pub pass_to_pass: Vec<String>,
    /// Tests failing before and after (only graded with `calculate_to_fail`).
    #[serde(rename = "FAIL_TO_FAIL", default)]
    pub fail_to_fail: Vec<String>,
    /// Tests the gold patch breaks (only graded with `calculate_to_fail`).
    #[serde(rename = "PASS_TO_FAIL", default)]
    pub pass_to_fail: Vec<String>,
}

/// How expected tests are checked (the reference's `EvalType`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalType {
    /// A test succeeds when it passed, fails when it failed, errored or is missing (all Python repos).
    #[default]
    PassAndFail,
    /// A test fails only when recorded FAILED; everything else succeeds (some JavaScript repos).
    FailOnly,
}

/// Successes and failures among one list of expected tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestOutcomes {
    /// Expected tests that met their expectation.
    pub success: Vec<String>,
    /// Expected tests that did not.
    pub failure: Vec<String>,
}

/// `tests_status` of report.json: outcomes per expected-test list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestsStatus {
    /// FAIL_TO_PASS outcomes.
    #[serde(rename = "FAIL_TO_PASS")]
    pub fail_to_pass: TestOutcomes,
    /// PASS_TO_PASS outcomes.
    #[serde(rename = "PASS_TO_PASS")]
    pub pass_to_pass: TestOutcomes,
    /// FAIL_TO_FAIL outcomes (empty unless `calculate_to_fail`).
    #[serde(rename = "FAIL_TO_FAIL")]
    pub fail_to_fail: TestOutcomes,
    /// PASS_TO_FAIL outcomes (empty unless `calculate_to_fail`).
    #[serde(rename = "PASS_TO_FAIL")]
    pub pass_to_fail: TestOutcomes,
}

/// The reference's `ResolvedStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResolvedStatus {
    /// Not resolved.
    #[serde(rename = "RESOLVED_NO")]
    No,
    /// Some but not all FAIL_TO_PASS tests pass, and every PASS_TO_PASS test still passes.
    #[serde(rename = "RESOLVED_PARTIAL")]
    Partial,
    /// Every FAIL_TO_PASS and PASS_TO_PASS test passes: the instance is resolved.
    #[serde(rename = "RESOLVED_FULL")]
    Full,
}

/// The status-map key for an expected test: the test itself, or under 5.x rules a truncated
/// parametrised id (more `[` than `]`) matched by prefix when all candidates agree on
/// pass-vs-not. 5.x takes the first candidate in log order; ours are in name order, which only
/// matters when the agreeing non-passing candidates have different statuses.
fn resolve_case<'m>(case: &str, map: &'m StatusMap, rules: GradingRules) -> Option<&'m TestStatus> {
    if let Some(status) = map.get(case) {
        return Some(status);
    }
    if rules != GradingRules::Swebench5 || case.matches('[').count() <= case.matches(']').count() {
        return None;
    }
    let mut candidates = map
        .iter()
        .filter(|(name, _)| name.starts_with(case))
        .map(|(_, status)| status);
    let first = candidates.next()?;
    let passing = is_passing(first);
    if candidates.all(|status| is_passing(status) == passing) {
        Some(first)
    } else {
        None
    }
}

fn is_passing(status: &TestStatus) -> bool {
    matches!(status, TestStatus::Passed | TestStatus::Xfail)
}

/// `test_passed`: recorded PASSED or XFAIL.
fn test_passed(case: &str, map: &StatusMap, rules: GradingRules) -> bool {
    resolve_case(case, map, rules).is_some_and(is_passing)
}

/// `test_failed`: missing, FAILED or ERROR (and, under 5.x rules, SKIPPED). A status that is none
/// of these (4.1.0: SKIPPED; any raw token) is neither passed nor failed.
fn test_failed(case: &str, map: &StatusMap, rules: GradingRules) -> bool {
    match resolve_case(case, map, rules) {
        None => true,
        Some(TestStatus::Failed | TestStatus::Error) => true,
        Some(TestStatus::Skipped) => rules == GradingRules::Swebench5,
        Some(_) => false,
    }
}

/// `test_maintained` (5.x, PASS_TO_PASS only): passed, or skipped.
fn test_maintained(case: &str, map: &StatusMap, rules: GradingRules) -> bool {
    test_passed(case, map, rules)
        || matches!(resolve_case(case, map, rules), Some(TestStatus::Skipped))
}

/// Which check a list of expected tests gets.
#[derive(Clone, Copy)]
enum Check {
    PassAndFail,
    Maintained,
    FailOnly,
}

fn check_all(cases: &[String], map: &StatusMap, check: Check, rules: GradingRules) -> TestOutcomes {
    let mut outcomes = TestOutcomes::default();
    for case in cases {
        match check {
            Check::PassAndFail | Check::Maintained => {
                let succeeded = match check {
                    Check::Maintained => test_maintained(case, map, rules),
                    _ => test_passed(case, map, rules),
                };
                if succeeded {
                    outcomes.success.push(case.clone());
                } else if test_failed(case, map, rules) {
                    outcomes.failure.push(case.clone());
                }
            }
            Check::FailOnly => {
                if map.get(case) == Some(&TestStatus::Failed) {
                    outcomes.failure.push(case.clone());
                } else {
                    outcomes.success.push(case.clone());
                }
            }
        }
    }
    outcomes
}

/// Port of `get_eval_tests_report`: sorts every expected test into success or failure. Under
/// 4.1.0 rules a test whose status is neither passing nor failing (e.g. SKIPPED) lands in neither
/// list; under 5.x rules a skipped FAIL_TO_PASS test fails and a skipped PASS_TO_PASS test succeeds.
pub fn eval_tests_report(
    status_map: &StatusMap,
    gold: &GoldTests,
    eval_type: EvalType,
    rules: GradingRules,
    calculate_to_fail: bool,
) -> TestsStatus {
    let (f2p_check, p2p_check) = match (eval_type, rules) {
        (EvalType::FailOnly, _) => (Check::FailOnly, Check::FailOnly),
        (EvalType::PassAndFail, GradingRules::Swebench4_1) => {
            (Check::PassAndFail, Check::PassAndFail)
        }
        (EvalType::PassAndFail, GradingRules::Swebench5) => (Check::PassAndFail, Check::Maintained),
    };
    let mut report = TestsStatus {
        fail_to_pass: check_all(&gold.fail_to_pass, status_map, f2p_check, rules),
        pass_to_pass: check_all(&gold.pass_to_pass, status_map, p2p_check, rules),
        ..TestsStatus::default()
    };
    if calculate_to_fail {
        report.fail_to_fail = check_all(&gold.fail_to_fail, status_map, f2p_check, rules);
        report.pass_to_fail = check_all(&gold.pass_to_fail, status_map, f2p_check, rules);
    }
    report
}

/// Port of `get_resolution_status`: with `f2p` and `p2p` the success fractions (1 when a list has
/// no graded test), FULL when both are 1, PARTIAL when `0 < f2p < 1` and `p2p` is 1, else NO.
pub fn resolution_status(report: &TestsStatus) -> ResolvedStatus {
    let f2p = fraction(&report.fail_to_pass);
    let p2p = fraction(&report.pass_to_pass);
    if f2p == Fraction::All && p2p == Fraction::All {
        ResolvedStatus::Full
    } else if f2p == Fraction::Some && p2p == Fraction::All {
        ResolvedStatus::Partial
    } else {
        ResolvedStatus::No
    }
}

/// `success / (success + failure)` classified as the reference compares it (exact for integers).
#[derive(PartialEq, Eq)]
enum Fraction {
    None,
    Some,
    All,
}

fn fraction(outcomes: &TestOutcomes) -> Fraction {
    let total = outcomes.success.len() + outcomes.failure.len();
    if total == 0 || outcomes.success.len() == total {
        Fraction::All
    } else if outcomes.success.is_empty() {
        Fraction::None
    } else {
        Fraction::Some
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, &str)]) -> StatusMap {
        entries
            .iter()
            .map(|(name, status)| (name.to_string(), TestStatus::from_token(status)))
            .collect()
    }

    fn gold(f2p: &[&str], p2p: &[&str]) -> GoldTests {
        GoldTests {
            fail_to_pass: f2p.iter().map(|s| s.to_string()).collect(),
            pass_to_pass: p2p.iter().map(|s| s.to_string()).collect(),
            ..GoldTests::default()
        }
    }

    #[test]
    fn full_partial_and_no() {
        let g = gold(&["a", "b"], &["c"]);
        let all = map(&[("a", "PASSED"), ("b", "XFAIL"), ("c", "PASSED")]);
        let report = eval_tests_report(
            &all,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench4_1,
            false,
        );
        assert_eq!(resolution_status(&report), ResolvedStatus::Full);
        let half = map(&[("a", "PASSED"), ("b", "FAILED"), ("c", "PASSED")]);
        let report = eval_tests_report(
            &half,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench4_1,
            false,
        );
        assert_eq!(resolution_status(&report), ResolvedStatus::Partial);
        assert_eq!(report.fail_to_pass.failure, vec!["b".to_string()]);
        let p2p_missing = map(&[("a", "PASSED"), ("b", "PASSED")]);
        let report = eval_tests_report(
            &p2p_missing,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench4_1,
            false,
        );
        assert_eq!(resolution_status(&report), ResolvedStatus::No);
    }

    #[test]
    fn skipped_fail_to_pass_resolves_under_4_1_but_not_5() {
        let g = gold(&["a"], &["c"]);
        let m = map(&[("a", "SKIPPED"), ("c", "SKIPPED")]);
        let old = eval_tests_report(
            &m,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench4_1,
            false,
        );
        assert!(old.fail_to_pass.success.is_empty() && old.fail_to_pass.failure.is_empty());
        assert_eq!(resolution_status(&old), ResolvedStatus::Full);
        let new = eval_tests_report(
            &m,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench5,
            false,
        );
        assert_eq!(new.fail_to_pass.failure, vec!["a".to_string()]);
        assert_eq!(new.pass_to_pass.success, vec!["c".to_string()]);
        assert_eq!(resolution_status(&new), ResolvedStatus::No);
    }

    #[test]
    fn truncated_ids_match_by_prefix_only_under_5() {
        let g = gold(&["t[log(photon"], &[]);
        let m = map(&[("t[log(photon)]", "PASSED")]);
        let old = eval_tests_report(
            &m,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench4_1,
            false,
        );
        assert_eq!(resolution_status(&old), ResolvedStatus::No);
        let new = eval_tests_report(
            &m,
            &g,
            EvalType::PassAndFail,
            GradingRules::Swebench5,
            false,
        );
        assert_eq!(resolution_status(&new), ResolvedStatus::Full);
    }

    #[test]
    fn fail_only_counts_only_recorded_failures() {
        let g = gold(&["a", "b"], &[]);
        let m = map(&[("b", "FAILED")]);
        let report =
            eval_tests_report(&m, &g, EvalType::FailOnly, GradingRules::Swebench4_1, false);
        assert_eq!(report.fail_to_pass.success, vec!["a".to_string()]);
        assert_eq!(resolution_status(&report), ResolvedStatus::Partial);
    }

    #[test]
    fn serialises_with_reference_keys() {
        let json = serde_json::to_string(&TestsStatus::default()).unwrap();
        let empty = r#"{"success":[],"failure":[]}"#;
        assert_eq!(
            json,
            format!(
                r#"{{"FAIL_TO_PASS":{empty},"PASS_TO_PASS":{empty},"FAIL_TO_FAIL":{empty},"PASS_TO_FAIL":{empty}}}"#
            )
        );
        assert_eq!(
            serde_json::to_value(ResolvedStatus::Full).unwrap(),
            "RESOLVED_FULL"
        );
    }
}
