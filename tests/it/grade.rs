//! Grading on fixture tasks in fresh containers: gold, empty, partial, spoof, bad patch, hang.

use std::path::Path;
use std::time::Duration;

use swe_env::grade::{grade_patch, write_instance_logs, GradeConfig, GradeOutcome};
use swe_env_grading::dataset::{load_dataset_file, Instance};
use swe_env_grading::report::ResolvedStatus;
use swe_env_sandbox::DockerEngine;

use crate::common::{engine, start_episode, unique_id};
use crate::episode::{fixture, fixtures_file};

fn extra_patch(task: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../images/fixtures/{task}/extra/{name}"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Grades `patch` on `instance` under a fresh grading id made from `prefix`; grading must not fail.
async fn grade(
    engine: &DockerEngine,
    instance: &Instance,
    patch: Option<&str>,
    config: &GradeConfig,
    prefix: &str,
) -> GradeOutcome {
    grade_patch(engine, instance, patch, config, &unique_id(prefix))
        .await
        .unwrap()
}

fn isolated() -> GradeConfig {
    GradeConfig {
        network_mode: "none".into(),
        ..GradeConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn gold_resolves_and_empty_does_not_on_every_fixture() {
    let engine = engine().await;
    let dataset = load_dataset_file(&fixtures_file()).unwrap();
    let logs = tempfile::tempdir().unwrap();
    for instance in &dataset.instances {
        let gold = grade(
            &engine,
            instance,
            Some(&instance.patch),
            &GradeConfig::default(),
            "grade-gold",
        )
        .await;
        assert!(
            gold.resolved,
            "{}: gold must resolve\n{}",
            instance.instance_id, gold.test_output
        );
        assert_eq!(gold.apply_method.as_deref(), Some("git apply -v"));
        assert_eq!(gold.rewards.execution, 1.0);
        assert_eq!(gold.rewards.similarity, Some(1.0));
        let status = gold.report.tests_status.as_ref().unwrap();
        assert_eq!(
            status.fail_to_pass.success.len(),
            instance.fail_to_pass.len()
        );
        let dir = write_instance_logs(logs.path(), &gold, Some(&instance.patch))
            .await
            .unwrap();
        for file in ["eval.sh", "patch.diff", "test_output.txt", "report.json"] {
            assert!(dir.join(file).exists(), "{file}");
        }
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
        assert_eq!(report[&instance.instance_id]["resolved"], true);

        let empty = grade(&engine, instance, Some(""), &isolated(), "grade-empty").await;
        assert!(
            !empty.resolved,
            "{}: the unfixed repo must not resolve",
            instance.instance_id
        );
        assert_eq!(empty.rewards.execution, -1.0);
        assert_eq!(empty.rewards.similarity, Some(-1.0));
    }
    let none = grade(
        &engine,
        &dataset.instances[0],
        None,
        &isolated(),
        "grade-none",
    )
    .await;
    assert!(none.report.patch_is_none && !none.resolved);
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_fix_is_partial() {
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__slugkit-1");
    let outcome = grade(
        &engine,
        &instance,
        Some(&extra_patch("slugkit", "partial.patch")),
        &isolated(),
        "grade-partial",
    )
    .await;
    assert!(!outcome.resolved);
    let resolution = outcome.report.swe_env.as_ref().unwrap().resolution;
    assert_eq!(
        resolution,
        Some(ResolvedStatus::Partial),
        "{}",
        outcome.test_output
    );
    assert!(outcome.rewards.similarity.unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn conftest_spoof_fools_the_reference_rules_and_not_hardened() {
    use swe_env::grade::RuleSet;
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__spans-1");
    let spoof = extra_patch("spans", "spoof_conftest.patch");
    // swebench-4.1 (the default) reproduces the reference harness, which a conftest.py that rewrites every test
    // report to "passed" fools: resolved, and nothing is cleaned up.
    let reference = grade(
        &engine,
        &instance,
        Some(&spoof),
        &isolated(),
        "grade-spoof-ref",
    )
    .await;
    assert!(reference.resolved, "{}", reference.test_output);
    assert!(reference.spoof_cleanup.is_empty());
    assert_eq!(
        reference.report.swe_env.as_ref().unwrap().rule_set,
        RuleSet::Swebench4_1
    );
    // hardened removes the added conftest.py before the tests run.
    let hardened = grade(
        &engine,
        &instance,
        Some(&spoof),
        &isolated().with_rules(RuleSet::Hardened),
        "grade-spoof",
    )
    .await;
    assert!(
        !hardened.resolved,
        "spoof resolved!\n{}",
        hardened.test_output
    );
    assert_eq!(
        hardened.spoof_cleanup,
        vec!["removed tests/conftest.py".to_owned()]
    );
    assert_eq!(
        hardened.report.swe_env.as_ref().unwrap().rule_set,
        RuleSet::Hardened
    );
    // The gold patch grades the same under every rule set.
    for rules in RuleSet::ALL {
        let gold = grade(
            &engine,
            &instance,
            Some(&instance.patch),
            &isolated().with_rules(rules),
            "grade-rules",
        )
        .await;
        assert!(gold.resolved, "{rules}: {}", gold.test_output);
        assert!(gold.spoof_cleanup.is_empty(), "{rules}");
    }
}

/// A pytest plugin that marks every test passed and forces exit status 0, loaded through pytest's configuration
/// instead of a conftest.py (found by an independent tester against `--rules hardened`).
const PLUGIN_SPOOF: &str = r#"diff --git a/src/spans/_plug.py b/src/spans/_plug.py
new file mode 100644
index 0000000..0485a07
--- /dev/null
+++ b/src/spans/_plug.py
@@ -0,0 +1,13 @@
+import pytest
+
+
+@pytest.hookimpl(hookwrapper=True)
+def pytest_runtest_makereport(item, call):
+    outcome = yield
+    report = outcome.get_result()
+    report.outcome = "passed"
+    report.longrepr = None
+
+
+def pytest_sessionfinish(session, exitstatus):
+    session.exitstatus = 0
"#;

const PYPROJECT_ADDOPTS: &str = r#"diff --git a/pyproject.toml b/pyproject.toml
index 6cba5e8..78a8729 100644
--- a/pyproject.toml
+++ b/pyproject.toml
@@ -13,3 +13,4 @@ where = ["src"]
 
 [tool.pytest.ini_options]
 testpaths = ["tests"]
+addopts = "-p spans._plug"
"#;

const PYTEST_INI_ADDED: &str = r#"diff --git a/pytest.ini b/pytest.ini
new file mode 100644
index 0000000..1111111
--- /dev/null
+++ b/pytest.ini
@@ -0,0 +1,3 @@
+[pytest]
+testpaths = tests
+addopts = -p spans._plug
"#;

#[tokio::test(flavor = "multi_thread")]
async fn plugin_spoofs_through_pytest_configuration_fool_the_reference_and_not_hardened() {
    use swe_env::grade::RuleSet;
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__spans-1");
    for (config_patch, touched) in [
        (PYPROJECT_ADDOPTS, "restored pyproject.toml"),
        (PYTEST_INI_ADDED, "removed pytest.ini"),
    ] {
        let spoof = format!("{config_patch}{PLUGIN_SPOOF}");
        let reference = grade(
            &engine,
            &instance,
            Some(&spoof),
            &isolated(),
            "grade-plugin-ref",
        )
        .await;
        assert!(
            reference.resolved,
            "{touched}: the reference rules are fooled\n{}",
            reference.test_output
        );
        let hardened = grade(
            &engine,
            &instance,
            Some(&spoof),
            &isolated().with_rules(RuleSet::Hardened),
            "grade-plugin",
        )
        .await;
        assert!(
            !hardened.resolved,
            "{touched}: spoof resolved under hardened\n{}",
            hardened.test_output
        );
        assert_eq!(hardened.spoof_cleanup, vec![touched.to_owned()]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn patch_that_does_not_apply_is_an_outcome() {
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__spans-1");
    let outcome = grade(
        &engine,
        &instance,
        Some(&extra_patch("spans", "bad.patch")),
        &isolated(),
        "grade-bad",
    )
    .await;
    assert!(!outcome.resolved);
    assert_eq!(outcome.apply_method, None);
    assert!(
        outcome.apply_log.contains("Patch Apply Failed"),
        "{}",
        outcome.apply_log
    );
    assert_eq!(
        outcome
            .report
            .swe_env
            .as_ref()
            .unwrap()
            .harness_error
            .as_deref(),
        Some("patch did not apply")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hanging_tests_time_out() {
    let engine = engine().await;
    let instance = fixture("swe-env-fixtures__retrykit-1");
    let config = GradeConfig {
        test_timeout: Duration::from_secs(15),
        ..isolated()
    };
    let started = std::time::Instant::now();
    let outcome = grade(
        &engine,
        &instance,
        Some(&extra_patch("retrykit", "hang.patch")),
        &config,
        "grade-hang",
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(outcome.timed_out);
    assert!(!outcome.resolved);
    assert_eq!(
        outcome
            .report
            .swe_env
            .as_ref()
            .unwrap()
            .harness_error
            .as_deref(),
        Some("tests timed out")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_grading_matches_fresh_grading() {
    use swe_env::agent::run_gold;
    use swe_env::episode::EndInfo;
    use swe_env::grade::grade_submission;
    use swe_env::trajectory::EpisodeStatus;

    let engine = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let instance = fixture("swe-env-fixtures__stockroom-1");
    let mut episode =
        start_episode(&engine, dir.path(), &unique_id("inplace"), instance.clone()).await;
    let outcome = run_gold(&mut episode).await.unwrap();
    let submission = outcome.submission.unwrap();
    // Leave junk behind, as an agent might: it must not influence the grade.
    let sandbox = episode.sandbox().unwrap().clone();
    sandbox
        .run_command(
            "cd /testbed && echo junk > stray.txt && echo '# edit' >> README.md",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let in_place = GradeConfig {
        in_place: true,
        ..isolated()
    };
    let graded = grade_submission(
        &engine,
        Some(&sandbox),
        &instance,
        Some(&submission),
        &in_place,
        &unique_id("g"),
    )
    .await
    .unwrap();
    assert!(graded.resolved, "{}", graded.test_output);
    // In-place grading sealed the episode's container: the agent's shell and tools are closed for good.
    let refused = sandbox
        .run_command("cat /eval.sh", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, swe_env_sandbox::SandboxError::Sealed { .. }),
        "{refused}"
    );
    let fresh = grade_submission(
        &engine,
        Some(&sandbox),
        &instance,
        Some(&submission),
        &isolated(),
        &unique_id("g"),
    )
    .await
    .unwrap();
    assert_eq!(graded.report.tests_status, fresh.report.tests_status);
    // The empty patch in place: the episode's fix is discarded first, so it must not resolve.
    let empty = grade_submission(
        &engine,
        Some(&sandbox),
        &instance,
        Some(""),
        &in_place,
        &unique_id("g"),
    )
    .await
    .unwrap();
    assert!(!empty.resolved);
    episode
        .finish(EndInfo::status(EpisodeStatus::Submitted))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_grading_records_that_the_install_step_could_not_run() {
    // A SWE-bench repo spec (psf/requests: `python -m pip install .` at eval time) on a fixture image, graded
    // with the network off: pip fails fast, the report says so, and the image's existing install is used.
    let engine = engine().await;
    let mut instance = fixture("swe-env-fixtures__spans-1");
    instance.repo = "psf/requests".into();
    instance.version = "2.0".into();
    instance.test_cmd = None;
    instance.log_parser = None;
    let started = std::time::Instant::now();
    let outcome = grade(
        &engine,
        &instance,
        Some(&instance.patch.clone()),
        &isolated(),
        "grade-offline",
    )
    .await;
    assert!(
        outcome.eval_script.contains("python -m pip install ."),
        "{}",
        outcome.eval_script
    );
    let extras = outcome.report.swe_env.as_ref().unwrap();
    assert!(extras.install_ran_offline, "{}", outcome.test_output);
    assert!(
        matches!(extras.install_exit_code, Some(code) if code != 0),
        "{:?}",
        extras.install_exit_code
    );
    assert!(
        outcome.resolved,
        "the existing editable install still serves the tests:\n{}",
        outcome.test_output
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "pip must fail fast offline: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_timeout_leaves_no_runaway_tests_behind() {
    use swe_env::episode::EndInfo;
    use swe_env::grade::grade_submission;
    use swe_env::trajectory::EpisodeStatus;

    let engine = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let instance = fixture("swe-env-fixtures__retrykit-1");
    let mut episode = start_episode(
        &engine,
        dir.path(),
        &unique_id("inplace-hang"),
        instance.clone(),
    )
    .await;
    let sandbox = episode.sandbox().unwrap().clone();
    let grade = GradeConfig {
        in_place: true,
        test_timeout: Duration::from_secs(8),
        ..isolated()
    };
    let hang = extra_patch("retrykit", "hang.patch");
    let outcome = grade_submission(
        &engine,
        Some(&sandbox),
        &instance,
        Some(&hang),
        &grade,
        &unique_id("g"),
    )
    .await
    .unwrap();
    assert!(outcome.timed_out && !outcome.resolved);
    // The limit killed the whole test process group inside the episode's container.
    let out = sandbox
        .exec(
            &["sh", "-c", "ps -eo args= | grep -c '[p]ytest' || true"],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "0",
        "pytest still running after the timeout"
    );
    episode
        .finish(EndInfo::status(EpisodeStatus::Submitted))
        .await
        .unwrap();
}
