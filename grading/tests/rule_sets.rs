//! Each rule set on the real eval logs of the fixture tasks (gold and empty runs, `grading/tests/logs/pytest/`):
//! gold resolves and empty does not under all three; a log whose recorded exit code contradicts its all-passing
//! results resolves under `swebench-4.1` (as the reference harness grades it), is not resolved under `hardened`,
//! and is ungradable under `swebench-5`.

#![allow(clippy::unwrap_used)] // Tests panic on unexpected failures by design.

mod common;

use common::repo_root;
use swe_env_grading::log_parsers::LogParser;
use swe_env_grading::report::{
    grade_instance, GoldTests, GradeInput, GradingOptions, InstanceReport, RuleSet, TestRunOutcome,
};

/// (fixture name, FAIL_TO_PASS, PASS_TO_PASS) from the fixture tasks file.
fn fixtures() -> Vec<(String, GoldTests)> {
    let text = std::fs::read_to_string(repo_root().join("images/fixtures/tasks.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = row["instance_id"].as_str().unwrap();
            // swe-env-fixtures__spans-1 → spans
            let name = id
                .trim_start_matches("swe-env-fixtures__")
                .trim_end_matches("-1")
                .to_owned();
            let list = |key: &str| -> Vec<String> {
                let value = &row[key];
                let value = match value.as_str() {
                    Some(text) => serde_json::from_str(text).unwrap(),
                    None => value.clone(),
                };
                serde_json::from_value(value).unwrap()
            };
            let gold = GoldTests {
                fail_to_pass: list("FAIL_TO_PASS"),
                pass_to_pass: list("PASS_TO_PASS"),
                ..GoldTests::default()
            };
            (name, gold)
        })
        .collect()
}

fn grade(log: &str, gold: &GoldTests, rule_set: RuleSet) -> InstanceReport {
    let run = TestRunOutcome {
        patch_applied: true,
        apply_method: Some("git apply -v".into()),
        test_output: log.to_owned(),
        ..TestRunOutcome::default()
    };
    grade_instance(
        &GradeInput {
            model_patch: Some("diff"),
            parser: LogParser::Pytest,
            gold,
            run: &run,
        },
        &GradingOptions::for_rule_set(rule_set),
    )
}

#[test]
fn every_rule_set_on_the_fixture_logs() {
    let fixtures = fixtures();
    assert_eq!(fixtures.len(), 5);
    for (name, gold) in &fixtures {
        let dir = repo_root().join("grading/tests/logs/pytest");
        let gold_log =
            std::fs::read_to_string(dir.join(format!("fixture-{name}-gold.log"))).unwrap();
        let empty_log =
            std::fs::read_to_string(dir.join(format!("fixture-{name}-empty.log"))).unwrap();
        assert!(gold_log.contains(">>>>> Test Exit Code: 0"), "{name}");
        for rule_set in RuleSet::ALL {
            let report = grade(&gold_log, gold, rule_set);
            assert!(report.resolved, "{name} gold under {rule_set}");
            assert_eq!(report.swe_env.as_ref().unwrap().rule_set, rule_set);
            let report = grade(&empty_log, gold, rule_set);
            assert!(!report.resolved, "{name} empty under {rule_set}");
        }
        // The same all-passing log, but the test command really exited 1 (e.g. a crash after the results were
        // printed, or output forged by the submission).
        let contradicted = gold_log.replace(">>>>> Test Exit Code: 0", ">>>>> Test Exit Code: 1");
        let reference = grade(&contradicted, gold, RuleSet::Swebench4_1);
        assert!(reference.resolved, "{name}: 4.1 ignores the exit code");
        let hardened = grade(&contradicted, gold, RuleSet::Hardened);
        assert!(!hardened.resolved, "{name}: hardened cross-checks it");
        assert!(hardened.swe_env.unwrap().exit_code_contradicts_log);
        let v5 = grade(&contradicted, gold, RuleSet::Swebench5);
        assert!(
            !v5.resolved && !v5.patch_successfully_applied,
            "{name}: 5.x"
        );
        // Reference fields are identical under 4.1 and hardened whenever the cross-check does not fire.
        let (a, b) = (
            grade(&gold_log, gold, RuleSet::Swebench4_1),
            grade(&gold_log, gold, RuleSet::Hardened),
        );
        assert_eq!(a.tests_status, b.tests_status);
        assert_eq!(
            (a.patch_successfully_applied, a.resolved),
            (b.patch_successfully_applied, b.resolved)
        );
    }
}
