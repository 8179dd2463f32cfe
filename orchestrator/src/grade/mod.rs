//! Grading a patch for a task in a container: fresh container (by default), the patch apply chain, the eval
//! script, log parsing, report.json and rewards. The semantics (specs, scripts, parsers, reports, rewards) come
//! from `swe-env-grading`; this module only runs them.
//!
//! Rule sets ([`RuleSet`], recorded in every report): `swebench-4.1` (default) and `swebench-5` run exactly the
//! reference's steps (apply chain without clean-up between attempts, eval script); `hardened` adds swe-env's
//! anti-spoofing: a clean tree between apply attempts, the pytest configuration the submission touched put back to
//! the base commit before the tests run (conftest.py, pytest.ini, tox.ini, pytest sections of setup.cfg /
//! pyproject.toml: each can load a plugin that rewrites any test's outcome), and the exit-code cross-check of
//! `swe_env_grading::report`. The eval script resets the test patch's own files under every rule set, as the
//! reference does.
//!
//! Test material (the eval script holds the test patch) only ever enters a container no agent can act in again:
//! a fresh grading container, or — in-place — the episode's container after [`DockerSandbox::seal_for_grading`]
//! killed every process in it and closed the shell and the tools for good.

mod apply;
mod logs;
pub mod testgen;

pub use apply::{applied_method, apply_chain_script, ApplyChain, ApplyMethod, APPLY_METHODS};
pub use logs::write_instance_logs;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use swe_env_grading::dataset::Instance;
use swe_env_grading::eval_script::Semantics;
use swe_env_grading::eval_script::{make_test_spec, EvalScriptConfig, GradingNetwork, TestSpec};
pub use swe_env_grading::report::RuleSet;
use swe_env_grading::report::{
    grade_instance, offline_install_status, GoldTests, GradeInput, GradingOptions, InstanceReport,
    TestRunOutcome,
};
use swe_env_grading::rewards::{compute_rewards, RewardConfig, Rewards};
use swe_env_grading::similarity::swe_rl_similarity;
use swe_env_tools::shell_quote;
use tracing::{info, warn};

use crate::task::{image_for, OFFICIAL_IMAGE_TEMPLATE};
use swe_env_sandbox::{DockerEngine, DockerSandbox, SandboxConfig, SandboxError};

/// Grading knobs. Defaults: fresh container, bridge network (fidelity with published numbers), 30 min test
/// timeout, swebench 4.1.0 rules, ±1 rewards.
#[derive(Debug, Clone)]
pub struct GradeConfig {
    /// Docker network of the grading container: `bridge` (as the reference harness) or `none` (isolation; pip is
    /// made to fail fast and the report says the install step ran offline).
    pub network_mode: String,
    /// Time limit of the eval script.
    pub test_timeout: Duration,
    /// Image name template for rows without an `image` field.
    pub image_template: String,
    /// Rules and cross-checks; set them with [`GradeConfig::with_rules`] so they agree with `eval_script`.
    pub options: GradingOptions,
    /// Eval-script options (semantics, exit-code recording). `grading_network` follows `network_mode`.
    pub eval_script: EvalScriptConfig,
    /// Reward values.
    pub rewards: RewardConfig,
    /// Container limits of the grading container.
    pub sandbox: SandboxConfig,
    /// Grade in the episode's own container instead of a fresh one (RL speed: no container start). The container
    /// is sealed first (every process killed, the agent's shell and tools closed for good: grading is the last
    /// thing that happens there), the episode's working-tree changes are discarded and the submission re-applied,
    /// so the outcome matches a fresh grading unless the agent changed state outside the repository (installed
    /// packages, files elsewhere) — a fresh container (the default) is the only grading a hostile agent cannot
    /// influence. Default false.
    pub in_place: bool,
}

impl GradeConfig {
    /// This configuration under `rule_set`: grading options and eval-script semantics set together.
    pub fn with_rules(mut self, rule_set: RuleSet) -> Self {
        self.options = GradingOptions::for_rule_set(rule_set);
        self.eval_script.semantics = match rule_set {
            RuleSet::Swebench5 => Semantics::V5,
            RuleSet::Swebench4_1 | RuleSet::Hardened => Semantics::V4_1_0,
        };
        self
    }

    /// The rule set in force.
    pub fn rule_set(&self) -> RuleSet {
        self.options.rule_set
    }

    /// The eval-script options gradings use: `eval_script` with `grading_network` following `network_mode`.
    pub fn effective_eval_script(&self) -> EvalScriptConfig {
        let mut script = self.eval_script;
        script.grading_network = if self.network_mode == "none" {
            GradingNetwork::None
        } else {
            GradingNetwork::Bridge
        };
        script
    }
}

impl Default for GradeConfig {
    fn default() -> Self {
        Self {
            network_mode: "bridge".to_owned(),
            test_timeout: Duration::from_secs(1800),
            image_template: OFFICIAL_IMAGE_TEMPLATE.to_owned(),
            options: GradingOptions::default(),
            eval_script: EvalScriptConfig::default(),
            rewards: RewardConfig::default(),
            sandbox: SandboxConfig::default(),
            in_place: false,
        }
    }
}

/// Why grading could not run at all (a patch that does not apply or tests that time out are *outcomes*).
#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    /// No eval script can be made for the task (unknown repo/version, bad test patch).
    #[error("cannot grade {instance_id}: {detail}")]
    Spec {
        /// The task.
        instance_id: String,
        /// Why.
        detail: String,
    },
    /// The sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Everything a grading produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GradeOutcome {
    /// The task.
    pub instance_id: String,
    /// report.json entry (reference schema + `swe_env` extras).
    pub report: InstanceReport,
    /// Resolved (FULL).
    pub resolved: bool,
    /// Rewards (execution, similarity, shaped).
    pub rewards: Rewards,
    /// How the patch applied (`git apply`, `git apply --reject`, `patch --fuzz`), or `None` when it did not.
    pub apply_method: Option<String>,
    /// The apply chain's log.
    pub apply_log: String,
    /// The eval script run.
    pub eval_script: String,
    /// The eval script's output.
    pub test_output: String,
    /// The eval script hit its time limit.
    pub timed_out: bool,
    /// Files removed or restored by the anti-spoofing clean-up.
    pub spoof_cleanup: Vec<String>,
    /// Time spent in the eval script, ms.
    pub test_ms: u64,
    /// Total grading time (container start to report), ms.
    pub total_ms: u64,
}

/// Grades `patch` (`None` = no prediction) for `instance` in a fresh container.
pub async fn grade_patch(
    engine: &DockerEngine,
    instance: &Instance,
    patch: Option<&str>,
    config: &GradeConfig,
    grading_id: &str,
) -> Result<GradeOutcome, GradeError> {
    let started = Instant::now();
    let spec = test_spec(instance, config)?;
    let image = image_for(instance, &config.image_template);
    let sandbox_config = SandboxConfig {
        network_mode: config.network_mode.clone(),
        workdir: swe_env_grading::specs::SWE_BENCH_REPO_DIR.to_owned(),
        ..config.sandbox.clone()
    };
    let sandbox = engine
        .create_sandbox(&image, grading_id, sandbox_config)
        .await?;
    let result = grade_in(&sandbox, instance, &spec, patch, config).await;
    if let Err(error) = sandbox.remove().await {
        warn!(grading_id, %error, "removing the grading container failed; `swe-env gc` will remove it");
    }
    let mut outcome = result?;
    outcome.total_ms = started.elapsed().as_millis() as u64;
    info!(instance_id = %instance.instance_id, resolved = outcome.resolved, total_ms = outcome.total_ms, test_ms = outcome.test_ms, "graded");
    Ok(outcome)
}

/// Grades `patch` in `episode_sandbox` when `config.in_place` and a sandbox is given, else in a fresh container.
pub async fn grade_submission(
    engine: &DockerEngine,
    episode_sandbox: Option<&DockerSandbox>,
    instance: &Instance,
    patch: Option<&str>,
    config: &GradeConfig,
    grading_id: &str,
) -> Result<GradeOutcome, GradeError> {
    match episode_sandbox {
        Some(sandbox) if config.in_place => grade_in_place(sandbox, instance, patch, config).await,
        _ => grade_patch(engine, instance, patch, config, grading_id).await,
    }
}

/// Grades in the episode's own container: seals it ([`DockerSandbox::seal_for_grading`]: every process killed,
/// no agent action ever again), resets the repository to its checked-out commit (tracked changes and untracked,
/// non-ignored files go), then applies `patch` and runs the eval script as a fresh grading would. The caller ends
/// the episode afterwards; any step it still tries fails with [`SandboxError::Sealed`].
pub async fn grade_in_place(
    sandbox: &DockerSandbox,
    instance: &Instance,
    patch: Option<&str>,
    config: &GradeConfig,
) -> Result<GradeOutcome, GradeError> {
    let started = Instant::now();
    let spec = test_spec(instance, config)?;
    sandbox.seal_for_grading().await?;
    let reset = format!(
        "cd {} && git reset -q --hard HEAD && git clean -fdq",
        shell_quote(&spec.repo_dir)
    );
    let out = sandbox
        .exec(&["bash", "-c", &reset], None, Duration::from_secs(300))
        .await?;
    if out.exit_code != Some(0) {
        return Err(GradeError::Spec {
            instance_id: instance.instance_id.clone(),
            detail: format!(
                "cannot reset the repository for in-place grading: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    let mut outcome = grade_in(sandbox, instance, &spec, patch, config).await?;
    outcome.total_ms = started.elapsed().as_millis() as u64;
    Ok(outcome)
}

/// The eval script and metadata for `instance` under `config`.
pub fn test_spec(instance: &Instance, config: &GradeConfig) -> Result<TestSpec, GradeError> {
    make_test_spec(instance, &config.effective_eval_script()).map_err(|e| GradeError::Spec {
        instance_id: instance.instance_id.clone(),
        detail: e.to_string(),
    })
}

/// Grades in an existing sandbox whose repository is at the base commit (fresh container, or an RL in-place run
/// whose episode changes are first discarded by the caller).
pub async fn grade_in(
    sandbox: &DockerSandbox,
    instance: &Instance,
    spec: &TestSpec,
    patch: Option<&str>,
    config: &GradeConfig,
) -> Result<GradeOutcome, GradeError> {
    let mut run = TestRunOutcome::default();
    let mut apply_log = String::new();
    let mut spoof_cleanup = Vec::new();
    let mut test_ms = 0;
    let patch_text = patch.unwrap_or("");
    // Only a zero-length patch counts as empty: the reference runs the apply chain on a whitespace-only one (and
    // it fails to apply).
    let has_patch = patch.is_some_and(|p| !p.is_empty());
    if patch.is_some() {
        if has_patch {
            sandbox
                .write_bytes("/tmp/swe_env_model.patch", patch_text.as_bytes())
                .await?;
            let out = sandbox
                .exec(
                    &[
                        "bash",
                        "-c",
                        &apply_chain_script(
                            &spec.repo_dir,
                            "/tmp/swe_env_model.patch",
                            if config.rule_set().hardened() {
                                ApplyChain::Hardened
                            } else {
                                ApplyChain::Reference
                            },
                        ),
                    ],
                    None,
                    Duration::from_secs(300),
                )
                .await?;
            apply_log = String::from_utf8_lossy(&out.stdout).into_owned();
            run.apply_method = apply::applied_method(&apply_log);
            run.patch_applied = run.apply_method.is_some();
        } else {
            // An empty patch "applies" trivially; the tests then run on the unchanged repository.
            run.patch_applied = true;
            run.apply_method = Some("empty".to_owned());
        }
        if run.patch_applied && config.rule_set().hardened() {
            spoof_cleanup = restore_test_config(sandbox, &spec.repo_dir, &spec.base_commit).await?;
        }
        if run.patch_applied {
            sandbox
                .write_bytes("/eval.sh", spec.eval_script.as_bytes())
                .await?;
            // The limit is enforced inside the container by `timeout`, which signals the whole process group:
            // an in-place grading must not leave runaway tests behind in the episode's container. The exec's own
            // deadline is only a backstop.
            let limit_secs = config.test_timeout.as_secs().max(1);
            let script = format!("timeout -k 5 {limit_secs} bash /eval.sh 2>&1");
            let started = Instant::now();
            let out = sandbox
                .exec(
                    &["bash", "-c", &script],
                    None,
                    config.test_timeout + Duration::from_secs(30),
                )
                .await?;
            let elapsed = started.elapsed();
            test_ms = elapsed.as_millis() as u64;
            // 124: the limit fired; 137 after the limit: it took the KILL that follows.
            run.timed_out = out.timed_out
                || out.exit_code == Some(124)
                || (out.exit_code == Some(137) && elapsed >= config.test_timeout);
            run.test_output = String::from_utf8_lossy(&out.stdout).into_owned();
            if run.timed_out {
                run.test_output.push_str(&format!(
                    "\n{}: eval script exceeded {} s\n",
                    swe_env_grading::log_parsers::TESTS_TIMEOUT,
                    config.test_timeout.as_secs()
                ));
            }
        }
    }
    let gold = GoldTests {
        fail_to_pass: instance.fail_to_pass.clone(),
        pass_to_pass: instance.pass_to_pass.clone(),
        ..GoldTests::default()
    };
    let input = GradeInput {
        model_patch: patch,
        parser: spec.parser,
        gold: &gold,
        run: &run,
    };
    let mut report = grade_instance(&input, &config.options);
    let (install_ran_offline, install_exit_code) = offline_install_status(&run.test_output);
    if let Some(extras) = report.swe_env.as_mut() {
        extras.install_ran_offline = install_ran_offline;
        extras.install_exit_code = install_exit_code;
    }
    let similarity = if instance.patch.trim().is_empty() {
        None
    } else {
        swe_rl_similarity(patch_text, &instance.patch)
            .ok()
            .map(|s| s.reward)
    };
    let rewards = compute_rewards(report.resolved, similarity, &config.rewards);
    Ok(GradeOutcome {
        instance_id: instance.instance_id.clone(),
        resolved: report.resolved,
        report,
        rewards,
        apply_method: run.apply_method,
        apply_log,
        eval_script: spec.eval_script.clone(),
        test_output: run.test_output,
        timed_out: run.timed_out,
        spoof_cleanup,
        test_ms,
        total_ms: 0,
    })
}

/// `hardened` only: undoes what the submission did to pytest's configuration, the known ways for a patch to rewrite
/// test outcomes without fixing anything. Every `conftest.py`, `pytest.ini` and `tox.ini` the submission added,
/// changed or deleted goes back to the base commit (added ones are removed); a `setup.cfg` / `pyproject.toml` it
/// added is removed, and one it changed is restored when its pytest section (`[tool:pytest]` / `[pytest]`,
/// `[tool.pytest…]`) differs — other sections (dependencies, linters) keep the submission's edits. Nothing else is
/// touched: a legitimate fix may add files under packages named `test`/`testing` (`django/test/…`), and over the
/// 500 SWE-bench Verified gold patches only pylint-dev__pylint-4661 touches one of these files (setup.cfg, outside
/// its pytest section; checked by a test). Code the tests import can still change their behaviour at import time:
/// hardened defeats configuration spoofs, not every conceivable one.
async fn restore_test_config(
    sandbox: &DockerSandbox,
    repo_dir: &str,
    base_commit: &str,
) -> Result<Vec<String>, GradeError> {
    let script = format!(
        r#"cd {repo} || exit 0
pytest_section() {{
  case "$1" in
    toml) awk '/^[[:space:]]*\[/{{on = ($0 ~ /^[[:space:]]*\[+tool\.pytest/)}} on' ;;
    *) awk '/^[[:space:]]*\[/{{on = ($0 ~ /^[[:space:]]*\[(tool:pytest|pytest)\]/)}} on' ;;
  esac
}}
git add -A >/dev/null 2>&1
git diff --cached --name-status --no-renames -z {base} | while IFS= read -r -d '' status && IFS= read -r -d '' path; do
  case "${{path##*/}}" in
    conftest.py|pytest.ini|tox.ini) kind=whole ;;
    setup.cfg) kind=ini ;;
    pyproject.toml) kind=toml ;;
    *) continue ;;
  esac
  case "$status" in
    A) git rm -q --cached -- "$path" >/dev/null 2>&1; rm -f -- "$path"; printf 'removed %s
' "$path" ;;
    D) git checkout -q {base} -- "$path" && printf 'restored %s
' "$path" ;;
    *)
      if [ "$kind" = whole ] || [ "$(git show {base}:"$path" | pytest_section "$kind")" != "$(pytest_section "$kind" < "$path")" ]; then
        git checkout -q {base} -- "$path" && printf 'restored %s
' "$path"
      fi ;;
  esac
done
git reset -q >/dev/null 2>&1
true"#,
        repo = shell_quote(repo_dir),
        base = shell_quote(base_commit),
    );
    let out = sandbox
        .exec(&["bash", "-c", &script], None, Duration::from_secs(120))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    /// Paths a patch touches (the new path, or the old one for a deletion) and whether it creates them.
    fn touched(patch: &str) -> Vec<(String, bool)> {
        use swe_env_grading::diff::{parse, Dialect};
        parse(patch, Dialect::GitApply)
            .unwrap()
            .into_iter()
            .filter_map(|f| Some((f.new_path.or(f.old_path)?, f.new_file)))
            .collect()
    }

    /// The `hardened` clean-up only undoes pytest configuration: over all 500 SWE-bench Verified gold patches it
    /// touches nothing (no gold patch touches a conftest.py, pytest.ini or tox.ini; the one setup.cfg edit is outside
    /// the pytest section).
    #[test]
    fn hardened_cleanup_leaves_every_verified_gold_patch_alone() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/datasets/swe-bench-verified.jsonl");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let (mut rows, mut files) = (0, 0);
        let mut config_edits = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            let id = row["instance_id"].as_str().unwrap();
            let patch = row["patch"].as_str().unwrap();
            rows += 1;
            for (file, _added) in touched(patch) {
                files += 1;
                let name = file.rsplit('/').next().unwrap_or(&file);
                assert!(
                    !matches!(name, "conftest.py" | "pytest.ini" | "tox.ini"),
                    "{id}: the gold patch touches {file}; the hardened clean-up would revert it"
                );
                if matches!(name, "setup.cfg" | "pyproject.toml") {
                    config_edits.push(format!("{id}:{file}"));
                }
            }
        }
        assert_eq!(rows, 500);
        assert!(files >= 500, "parsed {files} files");
        // Its hunks edit [options], [isort] and [mypy]; its pytest section stays as it was, so hardened keeps it.
        assert_eq!(config_edits, ["pylint-dev__pylint-4661:setup.cfg"]);
        let pylint = text
            .lines()
            .find(|l| l.contains("\"pylint-dev__pylint-4661\""))
            .unwrap();
        let patch: serde_json::Value = serde_json::from_str(pylint).unwrap();
        let setup_cfg = patch["patch"].as_str().unwrap();
        assert!(!setup_cfg.contains("[tool:pytest]") && !setup_cfg.contains("addopts"));
    }
}
