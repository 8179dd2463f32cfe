//! `mine history` end to end: walk the first-parent history ([`history::walk_with`]), then for each candidate
//! (newest first, up to `max_candidates`) build the provisional row, its base image ([`env::base_image`]) and
//! validate it ([`validate::validate`]); kept rows get their FAIL_TO_PASS / PASS_TO_PASS, the others become
//! [`RejectedRow`]s. Candidates are validated `workers` at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use swe_env_grading::dataset::Instance;
use swe_env_sandbox::{DockerEngine, SandboxError};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::mine::env::{self, EnvError, Environment};
use crate::mine::history::{self, Candidate, MineError};
use crate::mine::swerl;
use crate::mine::validate::{self, ValidateError};

/// What `mine history` does.
#[derive(Debug, Clone)]
pub struct HistoryOptions {
    /// The local repository.
    pub repo: PathBuf,
    /// Which commits.
    pub range: history::RevRange,
    /// Source / test split.
    pub rules: history::PathRules,
    /// Patch size limits.
    pub limits: history::Limits,
    /// `owner/name` (rows' `repo`, instance ids, image names).
    pub repo_name: String,
    /// Where the tests run.
    pub environment: Environment,
    /// Validation settings.
    pub validate: validate::ValidateConfig,
    /// Candidates validated at a time.
    pub workers: usize,
    /// Validate at most this many candidates (newest first).
    pub max_candidates: Option<usize>,
    /// false = walk (and SWE-RL records) only, no Docker.
    pub validate_tasks: bool,
}

/// What `mine history` found.
#[derive(Debug, Clone, Default)]
pub struct HistoryReport {
    /// Kept rows (run-benchmark-ready), newest candidate first.
    pub tasks: Vec<Instance>,
    /// Walk and validation rejections.
    pub rejected: Vec<RejectedRow>,
    /// The candidates considered (after the `max_candidates` cap), newest first.
    pub candidates: Vec<Candidate>,
    /// Commits the walk looked at.
    pub scanned: usize,
    /// Walk time.
    pub walk_secs: f64,
    /// Env image + base images + validation time.
    pub validate_secs: f64,
    /// Grading containers run.
    pub container_runs: usize,
    /// Cancelled: candidates in flight were dropped (their containers removed); the report holds the finished ones.
    pub interrupted: bool,
}

/// One line of rejected.jsonl.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RejectedRow {
    /// The candidate commit or mutant id.
    pub id: String,
    /// The row's instance id, when one was made.
    pub instance_id: Option<String>,
    /// Why (`RejectReason::as_str` for the walk, [`validate::Rejection::reason`] for validation, `image`).
    pub reason: String,
    /// Details.
    pub detail: String,
}

/// Progress after each validated candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MineProgress {
    /// Candidates done.
    pub done: usize,
    /// Candidates to do.
    pub total: usize,
    /// Rows kept so far.
    pub kept: usize,
}

/// `mine history` could not run.
#[derive(Debug, thiserror::Error)]
pub enum MineRunError {
    /// The repository or range is wrong.
    #[error(transparent)]
    Walk(#[from] MineError),
    /// The environment image could not be made or found.
    #[error("environment: {0}")]
    Env(#[from] EnvError),
    /// Docker failed during validation.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// Validation was asked for without a Docker engine.
    #[error("validation needs a Docker engine; pass --no-validate to only walk the history")]
    NoEngine,
    /// Cancelled (Ctrl-C).
    #[error("cancelled")]
    Cancelled,
}

/// `mine history` (see the module docs). `engine` may be `None` only with `validate_tasks = false`.
pub async fn mine_history(
    engine: Option<&DockerEngine>,
    options: &HistoryOptions,
    progress: &(dyn Fn(MineProgress) + Sync),
) -> Result<HistoryReport, MineRunError> {
    mine_history_cancellable(engine, options, progress, &CancellationToken::new()).await
}

/// [`mine_history`] that stops starting candidates once `cancel` fires (then `Err(Cancelled)`).
pub async fn mine_history_cancellable(
    engine: Option<&DockerEngine>,
    options: &HistoryOptions,
    progress: &(dyn Fn(MineProgress) + Sync),
    cancel: &CancellationToken,
) -> Result<HistoryReport, MineRunError> {
    let started = Instant::now();
    let walk = history::walk_with(
        &options.repo,
        &options.range,
        &options.rules,
        options.limits,
    )?;
    let walk_secs = started.elapsed().as_secs_f64();
    let mut report = HistoryReport {
        scanned: walk.scanned,
        walk_secs,
        ..HistoryReport::default()
    };
    report.rejected = walk
        .rejected
        .iter()
        .map(|r| RejectedRow {
            id: r.commit.clone(),
            instance_id: Some(swerl::instance_id(&options.repo_name, &r.commit)),
            reason: r.reason.as_str().to_owned(),
            detail: r.detail.clone(),
        })
        .collect();
    let mut candidates = walk.candidates;
    if let Some(max) = options.max_candidates {
        candidates.truncate(max);
    }
    info!(
        scanned = walk.scanned,
        candidates = candidates.len(),
        walk_secs,
        "history walked"
    );
    if !options.validate_tasks {
        report.candidates = candidates;
        return Ok(report);
    }
    let engine = engine.ok_or(MineRunError::NoEngine)?;
    let validate_started = Instant::now();
    let slug = swerl::slug(&options.repo_name);
    let to = match &options.range {
        history::RevRange::Revs { to, .. } | history::RevRange::Dates { to, .. } => to.clone(),
    };
    let env_image = if candidates.is_empty() {
        String::new()
    } else {
        env::env_image(engine, &options.repo, &to, &options.environment, &slug).await?
    };
    let total = candidates.len();
    let done = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    progress(MineProgress {
        done: 0,
        total,
        kept: 0,
    });
    let outcomes: Vec<(usize, Result<CandidateOutcome, MineRunError>)> =
        stream::iter(candidates.iter().enumerate())
            .map(|(index, candidate)| {
                let env_image = &env_image;
                let slug = &slug;
                let done = &done;
                let kept = &kept;
                async move {
                    let outcome = if cancel.is_cancelled() {
                        Err(MineRunError::Cancelled)
                    } else {
                        // A signal drops the candidate in flight (its containers are removed below).
                        tokio::select! {
                            outcome = mine_candidate(engine, options, candidate, env_image, slug) => outcome,
                            () = cancel.cancelled() => Err(MineRunError::Cancelled),
                        }
                    };
                    if matches!(outcome, Ok(CandidateOutcome::Kept(..))) {
                        kept.fetch_add(1, Ordering::SeqCst);
                    }
                    progress(MineProgress {
                        done: done.fetch_add(1, Ordering::SeqCst) + 1,
                        total,
                        kept: kept.load(Ordering::SeqCst),
                    });
                    (index, outcome)
                }
            })
            .buffer_unordered(options.workers.max(1))
            .collect()
            .await;
    let mut results: Vec<(usize, Result<CandidateOutcome, MineRunError>)> = outcomes;
    results.sort_by_key(|(index, _)| *index);
    // Base images this run made for rejected candidates only (removed below).
    let mut unused_images = Vec::new();
    for (index, outcome) in results {
        let candidate = &candidates[index];
        let outcome = match outcome {
            Err(MineRunError::Cancelled) => {
                report.interrupted = true;
                continue;
            }
            other => other?,
        };
        match outcome {
            CandidateOutcome::Kept(row, runs) => {
                report.container_runs += runs;
                report.tasks.push(*row);
            }
            CandidateOutcome::Rejected(row, runs, made_image) => {
                report.container_runs += runs;
                debug_assert_eq!(row.id, candidate.commit);
                report.rejected.push(row);
                unused_images.extend(made_image);
            }
        }
    }
    if report.interrupted {
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(engine).await;
        warn!(
            removed,
            "interrupted: candidates in flight dropped, their containers removed"
        );
    }
    remove_unused_images(engine, &report.tasks, unused_images).await;
    report.candidates = candidates;
    report.validate_secs = validate_started.elapsed().as_secs_f64();
    info!(
        kept = report.tasks.len(),
        container_runs = report.container_runs,
        validate_secs = report.validate_secs,
        "history mined"
    );
    Ok(report)
}

/// One candidate's fate (with the containers it ran; a rejected one: the base image this run made for it).
enum CandidateOutcome {
    Kept(Box<Instance>, usize),
    Rejected(RejectedRow, usize, Option<String>),
}

/// Removes the base images made in this run for rejected candidates that no kept row uses (images present before
/// the run are never in `made`).
async fn remove_unused_images(engine: &DockerEngine, kept: &[Instance], made: Vec<String>) {
    let used: std::collections::HashSet<&str> =
        kept.iter().filter_map(|row| row.image.as_deref()).collect();
    let mut made = made;
    made.sort();
    made.dedup();
    for image in made.iter().filter(|image| !used.contains(image.as_str())) {
        match engine.remove_image(image).await {
            Ok(_) => info!(image = %image, "base image of a rejected candidate removed"),
            Err(error) => {
                warn!(image = %image, %error, "removing the base image of a rejected candidate failed")
            }
        }
    }
}

/// The provisional row of `candidate` (no FAIL_TO_PASS / PASS_TO_PASS yet) running in `image`.
pub fn provisional_row(
    options: &HistoryOptions,
    candidate: &Candidate,
    image: &str,
    env_image: &str,
) -> Instance {
    let mut extra = BTreeMap::new();
    extra.insert(
        "swe_env_mined".to_owned(),
        json!({
            "kind": "history",
            "commit": candidate.commit,
            "pr_number": candidate.pr_number,
            "is_merge": candidate.is_merge,
            "env_image": env_image,
            "flaky": Vec::<String>::new(),
            "touched_source_files": candidate.touched_source_files,
            "touched_test_files": candidate.touched_test_files,
        }),
    );
    Instance {
        repo: options.repo_name.clone(),
        instance_id: swerl::instance_id(&options.repo_name, &candidate.commit),
        base_commit: candidate.parent.clone(),
        patch: candidate.patch.clone(),
        test_patch: candidate.test_patch.clone(),
        problem_statement: candidate.problem_statement.clone(),
        hints_text: String::new(),
        created_at: candidate.created_at.clone(),
        // Rows with a test_cmd need no SWE-bench (repo, version) spec.
        version: "mined".to_owned(),
        environment_setup_commit: candidate.parent.clone(),
        fail_to_pass: Vec::new(),
        pass_to_pass: Vec::new(),
        image: Some(image.to_owned()),
        activate: Some(options.environment.activate().to_owned()),
        test_cmd: Some(options.environment.test_cmd().to_owned()),
        log_parser: Some(options.environment.log_parser().to_owned()),
        eval_script: None,
        extra,
    }
}

/// Base image → validation → kept row or rejection. `Err` only for infrastructure failures.
async fn mine_candidate(
    engine: &DockerEngine,
    options: &HistoryOptions,
    candidate: &Candidate,
    env_image: &str,
    slug: &str,
) -> Result<CandidateOutcome, MineRunError> {
    let started = Instant::now();
    let instance_id = swerl::instance_id(&options.repo_name, &candidate.commit);
    let rejected = |reason: &str, detail: String, runs: usize, made: Option<String>| {
        CandidateOutcome::Rejected(
            RejectedRow {
                id: candidate.commit.clone(),
                instance_id: Some(instance_id.clone()),
                reason: reason.to_owned(),
                detail,
            },
            runs,
            made,
        )
    };
    let (image, made) = match env::base_image_made(
        engine,
        &options.repo,
        &candidate.parent,
        env_image,
        slug,
        &options.environment,
    )
    .await
    {
        Ok(image) => image,
        Err(error) if is_infrastructure(&error) => return Err(error.into()),
        Err(error) => {
            warn!(commit = %candidate.commit, %error, "base image could not be made");
            return Ok(rejected("image", error.to_string(), 0, None));
        }
    };
    let mut row = provisional_row(options, candidate, &image, env_image);
    let prefix = format!(
        "mine-{}",
        &candidate.commit[..candidate.commit.len().min(12)]
    );
    let outcome = validate::validate(engine, &row, &options.validate, &prefix).await?;
    let validate_ms = started.elapsed().as_millis() as u64;
    match outcome {
        Ok(validated) => {
            info!(instance_id = %row.instance_id, validate_ms, fail_to_pass = validated.fail_to_pass.len(), pass_to_pass = validated.pass_to_pass.len(), flaky = validated.flaky.len(), "candidate kept");
            row.fail_to_pass = validated.fail_to_pass;
            row.pass_to_pass = validated.pass_to_pass;
            if let Some(Value::Object(mined)) = row.extra.get_mut("swe_env_mined") {
                mined.insert("flaky".to_owned(), json!(validated.flaky));
            }
            Ok(CandidateOutcome::Kept(
                Box::new(row),
                validated.container_runs,
            ))
        }
        Err(rejection) => {
            info!(instance_id = %row.instance_id, validate_ms, reason = rejection.reason, "candidate rejected");
            Ok(rejected(
                rejection.reason,
                rejection.detail,
                rejection.container_runs,
                made.then(|| image.clone()),
            ))
        }
    }
}

/// Docker itself failed (the run stops), as opposed to this base commit's image (the candidate is rejected).
fn is_infrastructure(error: &EnvError) -> bool {
    matches!(
        error,
        EnvError::Sandbox(
            SandboxError::EngineUnavailable { .. }
                | SandboxError::EngineConfig { .. }
                | SandboxError::EngineTls { .. }
        ) | EnvError::ImageMissing { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::process::Command;
    use std::time::Duration;

    use git2::Oid;
    use swe_env_sandbox::SandboxConfig;

    use crate::grade::GradeConfig;

    const FIXTURE_IMAGE: &str = "swe-env/fixture-retrykit:latest";

    use crate::mine::test_repo::TestRepo as Fixture;

    const CONFTEST: &str = "# the repository root on sys.path\n";
    const BUGGY: &str = "def add(a, b):\n    return a - b\n\n\ndef mul(a, b):\n    return a * b\n";
    const FIXED: &str = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n";
    const WITH_SUB: &str = "def add(a, b):\n    return a + b\n\n\ndef mul(a, b):\n    return a * b\n\n\ndef sub(a, b):\n    return a - b\n";
    const TEST_MUL: &str =
        "from calc import add, mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n";
    const TEST_ADD: &str = "from calc import add, mul\n\n\ndef test_mul():\n    assert mul(2, 3) == 6\n\n\ndef test_add():\n    assert add(2, 3) == 5\n";
    /// `test_flaky`'s id changes every run (as with hash-seed-dependent parametrisation): a flaky test.
    const TEST_SUB: &str = "import os\n\nimport pytest\n\n\ndef test_sub():\n    from calc import sub\n\n    assert sub(5, 3) == 2\n\n\n@pytest.mark.parametrize(\"seed\", [os.urandom(4).hex()])\ndef test_flaky(seed):\n    assert seed\n";
    const TEST_MUL2: &str =
        "from calc import mul\n\n\ndef test_mul_zero():\n    assert mul(0, 3) == 0\n";

    fn docker(args: &[&str]) -> std::process::Output {
        Command::new("docker").args(args).output().unwrap()
    }

    /// Exit status of `script` in a fresh container from `image`.
    async fn exit_in(engine: &DockerEngine, image: &str, script: &str) -> Option<i64> {
        let sandbox = engine
            .create_sandbox(
                image,
                "mine-unit-check",
                SandboxConfig {
                    network_mode: "none".into(),
                    ..SandboxConfig::default()
                },
            )
            .await
            .unwrap();
        let out = sandbox
            .exec(&["bash", "-c", script], None, Duration::from_secs(60))
            .await;
        sandbox.remove().await.unwrap();
        out.unwrap().exit_code
    }

    #[tokio::test]
    async fn without_validation_only_the_walk_runs() {
        let mut fx = Fixture::new();
        fx.commit_head(
            &[
                ("calc/__init__.py", BUGGY),
                ("tests/test_calc.py", TEST_MUL),
            ],
            "first",
        );
        let c1 = fx.commit_head(
            &[
                ("calc/__init__.py", FIXED),
                ("tests/test_calc.py", TEST_ADD),
            ],
            "Fix add",
        );
        fx.commit_head(
            &[
                ("calc/__init__.py", WITH_SUB),
                ("tests/test_calc.py", TEST_ADD),
            ],
            "no tests touched",
        );
        let mut options = HistoryOptions {
            repo: fx.path().to_owned(),
            range: history::RevRange::Revs {
                from: None,
                to: "HEAD".into(),
            },
            rules: history::PathRules::default(),
            limits: history::Limits::default(),
            repo_name: "acme/calc".into(),
            environment: Environment::Image {
                image: "never/used:latest".into(),
                activate: String::new(),
                test_cmd: env::DEFAULT_TEST_CMD.into(),
                log_parser: "pytest".into(),
                install: Vec::new(),
            },
            validate: validate::ValidateConfig::default(),
            workers: 2,
            max_candidates: None,
            validate_tasks: false,
        };
        let report = mine_history(None, &options, &|_| {}).await.unwrap();
        assert_eq!(report.scanned, 3);
        assert!(report.tasks.is_empty());
        assert_eq!(report.container_runs, 0);
        assert_eq!(report.candidates.len(), 1);
        assert_eq!(report.candidates[0].commit, c1.to_string());
        let reasons: Vec<&str> = report.rejected.iter().map(|r| r.reason.as_str()).collect();
        assert!(reasons.contains(&"no_tests"), "{reasons:?}");
        assert!(report.rejected.iter().all(|r| r
            .instance_id
            .as_deref()
            .is_some_and(|id| id.starts_with("acme__calc-"))));
        let row = provisional_row(&options, &report.candidates[0], "img:1", "env:1");
        assert_eq!(
            row.instance_id,
            format!("acme__calc-{}", &c1.to_string()[..12])
        );
        assert_eq!(row.version, "mined");
        assert_eq!(row.environment_setup_commit, row.base_commit);
        assert_eq!(row.extra["swe_env_mined"]["env_image"], json!("env:1"));
        // The row makes an eval script as it is (test_cmd + the test patch's files).
        let spec = crate::grade::test_spec(&row, &GradeConfig::default()).unwrap();
        assert_eq!(
            spec.test_command,
            "pytest -rA -p no:cacheprovider tests/test_calc.py"
        );
        // Validation without an engine is refused, with a way out.
        options.validate_tasks = true;
        let error = mine_history(None, &options, &|_| {}).await.unwrap_err();
        assert!(error.to_string().contains("--no-validate"), "{error}");
        options.max_candidates = Some(0);
        options.validate_tasks = false;
        assert!(mine_history(None, &options, &|_| {})
            .await
            .unwrap()
            .candidates
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn history_candidates_validate_in_base_images_without_the_fix() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("swe_env::mine=info")
            .with_test_writer()
            .try_init();
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let mut fx = Fixture::new();
        let c0 = fx.commit_head(
            &[
                ("conftest.py", CONFTEST),
                ("calc/__init__.py", BUGGY),
                ("tests/test_calc.py", TEST_MUL),
            ],
            "calc: first version",
        );
        let c1 = fx.commit_head(
            &[
                ("conftest.py", CONFTEST),
                ("calc/__init__.py", FIXED),
                ("tests/test_calc.py", TEST_ADD),
            ],
            "Fix add (#7)\n\nadd subtracted.",
        );
        let c2 = fx.commit_head(
            &[
                ("conftest.py", CONFTEST),
                ("calc/__init__.py", WITH_SUB),
                ("tests/test_calc.py", TEST_ADD),
                ("tests/test_sub.py", TEST_SUB),
            ],
            "Add sub",
        );
        let c3 = fx.commit_head(
            &[
                ("conftest.py", CONFTEST),
                (
                    "calc/__init__.py",
                    &format!("\"\"\"Arithmetic.\"\"\"\n{WITH_SUB}"),
                ),
                ("tests/test_calc.py", TEST_ADD),
                ("tests/test_sub.py", TEST_SUB),
                ("tests/test_mul2.py", TEST_MUL2),
            ],
            "Docstring and one more test",
        );
        let tag = format!("unit{:08x}", rand::random::<u32>());
        let options = HistoryOptions {
            repo: fx.path().to_owned(),
            range: history::RevRange::Revs {
                from: None,
                to: "HEAD".into(),
            },
            rules: history::PathRules::default(),
            limits: history::Limits::default(),
            repo_name: format!("local/{tag}"),
            environment: Environment::Image {
                image: FIXTURE_IMAGE.into(),
                activate: "source /opt/venv/bin/activate".into(),
                test_cmd: env::DEFAULT_TEST_CMD.into(),
                log_parser: "pytest".into(),
                install: Vec::new(),
            },
            validate: validate::ValidateConfig {
                grade: GradeConfig {
                    network_mode: "none".into(),
                    test_timeout: Duration::from_secs(120),
                    ..GradeConfig::default()
                },
                runs: 2,
            },
            workers: 2,
            max_candidates: None,
            validate_tasks: true,
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        let report = mine_history(Some(&engine), &options, &|p| seen.lock().unwrap().push(p)).await;
        let elapsed = started.elapsed();
        let fixture_id = engine.image_info(FIXTURE_IMAGE).await.unwrap().unwrap().id;
        let images: Vec<String> = [c0, c1, c2]
            .iter()
            .map(|c| {
                env::base_image_reference(&format!("local-{tag}"), &c.to_string(), &fixture_id)
            })
            .collect();
        let checks = async {
            let report = report.unwrap();
            eprintln!(
                "3 candidates in {:.1} s, {} container runs",
                elapsed.as_secs_f64(),
                report.container_runs
            );
            assert_eq!(report.candidates.len(), 3);
            assert_eq!(seen.lock().unwrap().last().unwrap().done, 3);
            let by_commit = |c: Oid| {
                report
                    .tasks
                    .iter()
                    .find(|t| t.extra["swe_env_mined"]["commit"] == json!(c.to_string()))
            };
            // A valid candidate: F2P / P2P exactly.
            let fix = by_commit(c1).expect("the add fix is kept");
            assert_eq!(
                fix.instance_id,
                swerl::instance_id(&options.repo_name, &c1.to_string())
            );
            assert_eq!(fix.base_commit, c0.to_string());
            assert_eq!(fix.fail_to_pass, vec!["tests/test_calc.py::test_add"]);
            assert_eq!(fix.pass_to_pass, vec!["tests/test_calc.py::test_mul"]);
            assert_eq!(fix.image.as_deref(), Some(images[0].as_str()));
            assert_eq!(fix.extra["swe_env_mined"]["pr_number"], json!(7));
            assert_eq!(fix.extra["swe_env_mined"]["kind"], json!("history"));
            // A flaky test is dropped and listed.
            let sub = by_commit(c2).expect("the sub commit is kept");
            assert_eq!(sub.fail_to_pass, vec!["tests/test_sub.py::test_sub"]);
            let flaky = sub.extra["swe_env_mined"]["flaky"]
                .as_array()
                .unwrap()
                .clone();
            assert!(!flaky.is_empty());
            for name in &flaky {
                let name = name.as_str().unwrap();
                assert!(name.starts_with("tests/test_sub.py::test_flaky["), "{name}");
                assert!(!sub.pass_to_pass.iter().any(|p| p == name));
            }
            // Only the test patch's files run: test_calc.py is not in it.
            assert!(sub.pass_to_pass.is_empty(), "{:?}", sub.pass_to_pass);
            // Tests passing without the fix: rejected.
            let rejected = report
                .rejected
                .iter()
                .find(|r| r.id == c3.to_string())
                .expect("c3 rejected");
            assert_eq!(rejected.reason, "no_fail_to_pass");
            assert_eq!(report.tasks.len(), 2);
            // D6a: the rejected candidate's base image (made by this run, used by no kept row) is removed.
            assert!(
                engine.image_info(&images[2]).await.unwrap().is_none(),
                "{} left behind",
                images[2]
            );
            // The base image of the fix holds its base and nothing later.
            let probe = |c: Oid| format!("cd /testbed && git cat-file -e {c}^{{commit}}");
            assert_eq!(exit_in(&engine, &images[0], &probe(c0)).await, Some(0));
            assert_ne!(exit_in(&engine, &images[0], &probe(c1)).await, Some(0));
            assert_ne!(exit_in(&engine, &images[0], &probe(c2)).await, Some(0));
            assert_eq!(
                exit_in(&engine, &images[0], "cd /testbed && git status --porcelain | wc -l | grep -qx 0 && test \"$(git rev-parse main)\" = \"$(git rev-parse HEAD)\" && grep -q 'a - b' calc/__init__.py").await,
                Some(0)
            );
            assert_ne!(exit_in(&engine, &images[1], &probe(c2)).await, Some(0));
            // A second build of the same base reuses the labelled image.
            let env_id = engine.image_info(FIXTURE_IMAGE).await.unwrap().unwrap().id;
            let before = engine.image_info(&images[0]).await.unwrap().unwrap();
            assert_eq!(before.labels.get(env::LABEL_ENV), Some(&env_id));
            let again = env::base_image(
                &engine,
                fx.path(),
                &c0.to_string(),
                FIXTURE_IMAGE,
                &format!("local-{tag}"),
                &options.environment,
            )
            .await
            .unwrap();
            assert_eq!(
                engine.image_info(&again).await.unwrap().unwrap().id,
                before.id
            );
        };
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
        for image in &images {
            docker(&["rmi", "-f", image]);
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// D1: the base image holds no build product of a later commit. A recipe with a NON-editable install builds
    /// the env image at `to` (the fix, with a marker string): the base image of the fix's parent must hold the
    /// marker nowhere under /testbed or /opt/venv (ignored build/ output, site-packages copy, bytecode), and the
    /// candidate is still kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn base_image_holds_no_build_product_of_the_fix() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        const SETUP: &str =
            "from setuptools import setup\n\nsetup(name=\"calc\", version=\"0\", packages=[\"calc\"])\n";
        const IGNORE: &str = "build/\n*.egg-info/\n";
        let marker = format!("FIXMARK{:08x}", rand::random::<u32>());
        let fixed = format!("{FIXED}\n\n# {marker}\n");
        let mut fx = Fixture::new();
        let c0 = fx.commit_head(
            &[
                (".gitignore", IGNORE),
                ("setup.py", SETUP),
                ("conftest.py", CONFTEST),
                ("calc/__init__.py", BUGGY),
                ("tests/test_calc.py", TEST_MUL),
            ],
            "first",
        );
        let c1 = fx.commit_head(
            &[
                (".gitignore", IGNORE),
                ("setup.py", SETUP),
                ("conftest.py", CONFTEST),
                ("calc/__init__.py", &fixed),
                ("tests/test_calc.py", TEST_ADD),
            ],
            "Fix add",
        );
        let tag = format!("unitleak{:08x}", rand::random::<u32>());
        let options = HistoryOptions {
            repo: fx.path().to_owned(),
            range: history::RevRange::Revs {
                from: None,
                to: "HEAD".into(),
            },
            rules: history::PathRules::default(),
            limits: history::Limits::default(),
            repo_name: format!("local/{tag}"),
            environment: Environment::Recipe(env::Recipe {
                base_image: FIXTURE_IMAGE.into(),
                install: vec!["pip install -q --no-build-isolation --no-deps --no-index .".into()],
                activate: "source /opt/venv/bin/activate".into(),
                network: "none".into(),
                ..env::Recipe::default()
            }),
            validate: validate::ValidateConfig {
                grade: GradeConfig {
                    network_mode: "none".into(),
                    test_timeout: Duration::from_secs(120),
                    ..GradeConfig::default()
                },
                runs: 1,
            },
            workers: 1,
            max_candidates: None,
            validate_tasks: true,
        };
        let report = mine_history(Some(&engine), &options, &|_| {}).await;
        let checks = async {
            let report = report.unwrap();
            let row = report
                .tasks
                .iter()
                .find(|t| t.extra["swe_env_mined"]["commit"] == json!(c1.to_string()))
                .unwrap_or_else(|| panic!("the fix is kept: {:?}", report.rejected));
            assert_eq!(row.base_commit, c0.to_string());
            let image = row.image.clone().unwrap();
            let found = exit_in(
                &engine,
                &image,
                &format!("grep -rl {marker} /testbed /opt/venv; test $? -eq 1"),
            )
            .await;
            assert_eq!(
                found,
                Some(0),
                "the marker of the fix is in the base image {image}"
            );
        };
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
        let out = docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
        for image in String::from_utf8_lossy(&out.stdout).lines() {
            if image.contains(&tag) {
                docker(&["rmi", "-f", image]);
            }
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}
