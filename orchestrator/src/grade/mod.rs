//! Grading a patch for a task in a container: fresh container (by default), anti-spoofing clean-up, the patch
//! apply chain, the eval script, log parsing, report.json and rewards. The semantics (specs, scripts, parsers,
//! reports, rewards) come from `swe-env-grading`; this module only runs them.
//!
//! Anti-spoofing beyond the reference harness: after the model patch applies, files it *added* under test paths
//! are deleted and `conftest.py` files it *modified* are restored to the base commit (a conftest can rewrite any
//! test's outcome); the eval script then resets the test patch's files as the reference does. The recorded test
//! exit code is cross-checked against the parsed log (see `swe_env_grading::report`).

mod apply;
mod logs;

pub use apply::{apply_chain_script, APPLY_METHODS};
pub use logs::write_instance_logs;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use swe_env_grading::dataset::Instance;
use swe_env_grading::eval_script::{make_test_spec, EvalScriptConfig, GradingNetwork, TestSpec};
use swe_env_grading::report::{
    grade_instance, offline_install_status, GoldTests, GradeInput, GradingOptions, InstanceReport,
    TestRunOutcome,
};
use swe_env_grading::rewards::{compute_rewards, RewardConfig, Rewards};
use swe_env_grading::similarity::swe_rl_similarity;
use tracing::{info, warn};

use crate::sandbox::{DockerEngine, DockerSandbox, SandboxConfig, SandboxError};
use crate::task::{image_for, OFFICIAL_IMAGE_TEMPLATE, REPO_DIR};

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
    /// Rules and cross-checks.
    pub options: GradingOptions,
    /// Eval-script options (semantics, exit-code recording). `grading_network` follows `network_mode`.
    pub eval_script: EvalScriptConfig,
    /// Reward values.
    pub rewards: RewardConfig,
    /// Container limits of the grading container.
    pub sandbox: SandboxConfig,
    /// Grade in the episode's own container instead of a fresh one (RL speed: no container start). The episode's
    /// working-tree changes are discarded and the submission re-applied, so the outcome matches a fresh grading
    /// unless the agent changed state outside the repository (installed packages, files elsewhere). Default false.
    pub in_place: bool,
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
        workdir: REPO_DIR.to_owned(),
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

/// Grades in the episode's own container: resets the repository to its checked-out commit (tracked changes and
/// untracked, non-ignored files go), then applies `patch` and runs the eval script as a fresh grading would.
pub async fn grade_in_place(
    sandbox: &DockerSandbox,
    instance: &Instance,
    patch: Option<&str>,
    config: &GradeConfig,
) -> Result<GradeOutcome, GradeError> {
    let started = Instant::now();
    let spec = test_spec(instance, config)?;
    let reset = format!(
        "cd {} && git reset -q --hard HEAD && git clean -fdq",
        swe_env_quote(&spec.repo_dir)
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
    let mut script_config = config.eval_script;
    script_config.grading_network = if config.network_mode == "none" {
        GradingNetwork::None
    } else {
        GradingNetwork::Bridge
    };
    make_test_spec(instance, &script_config).map_err(|e| GradeError::Spec {
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
    let has_patch = patch.is_some_and(|p| !p.trim().is_empty());
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
                        &apply_chain_script(&spec.repo_dir, "/tmp/swe_env_model.patch"),
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
        if run.patch_applied {
            spoof_cleanup = clean_spoofs(sandbox, &spec.repo_dir, &spec.base_commit).await?;
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

/// Removes files the submission added under test paths and restores modified `conftest.py` files.
async fn clean_spoofs(
    sandbox: &DockerSandbox,
    repo_dir: &str,
    base_commit: &str,
) -> Result<Vec<String>, GradeError> {
    let script = format!(
        r#"cd {repo} || exit 0
is_test_path() {{
  case "/$1" in
    */test/*|*/tests/*|*/testing/*|*/conftest.py|*/test_*.py|*_test.py|*/tests.py) return 0 ;;
  esac
  return 1
}}
git add -A >/dev/null 2>&1
git diff --cached --name-status --no-renames {base} | while IFS=$'\t' read -r status path; do
  if [ "$status" = A ] && is_test_path "$path"; then
    git rm -q --cached -- "$path" >/dev/null 2>&1; rm -f -- "$path"; echo "removed $path"
  elif [ "$status" = M ] && [ "${{path##*/}}" = conftest.py ]; then
    git checkout -q {base} -- "$path" && echo "restored $path"
  fi
done
git reset -q >/dev/null 2>&1
true"#,
        repo = swe_env_quote(repo_dir),
        base = swe_env_quote(base_commit),
    );
    let out = sandbox
        .exec(&["bash", "-c", &script], None, Duration::from_secs(120))
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

fn swe_env_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}
