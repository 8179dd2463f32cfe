//! `swe-env mine mutate`: new tasks made by injecting one small bug into working code.
//!
//! For each source row: the tests that pass in the chosen passing state (the gold patch applied, or the base commit)
//! are the baseline; `mutate.py` (piped into a container of the task image) lists mutants of the source files the
//! gold patch touches; each mutant is applied in a fresh container, /testbed/.git is replaced by a repository with
//! ONE root commit of the mutated tree (fixed identity and date: the sha is deterministic, the unmutated code cannot
//! be recovered from git), and the container is committed as `swe-env-mined/<slug>-mut:<hash12>`. The new row's gold
//! patch is the diff that reverts the mutant; it is validated like every mined row (`validate`), and additionally
//! reverting must restore every baseline-passing test.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::json;
use swe_env_grading::dataset::Instance;
use swe_env_grading::log_parsers::TestStatus;
use swe_env_sandbox::{DockerEngine, DockerSandbox, SandboxConfig, SandboxError};
use tracing::{info, warn};

use crate::mine::env::{LABEL_BASE, LABEL_MINED, PURGE_BYTECODE};
use crate::mine::issue_fix::{MineProgress, RejectedRow};
use crate::mine::swerl;
use crate::mine::tail;
use crate::mine::validate::{self, ValidateConfig, ValidateError};
use crate::task;

/// The mutation script (stdlib-only Python; its docstring is its spec), piped into task containers.
pub const MUTATE_PY: &str = include_str!("mutate.py");

/// Fixed identity and date of the single commit of a mutant image (deterministic sha).
const COMMIT_IDENTITY: &str = "swe-env";
const COMMIT_EMAIL: &str = "mine@swe-env";
const COMMIT_DATE: &str = "2000-01-01T00:00:00Z";
/// The mtime (2000-01-01T00:00:00Z, Unix seconds) every tracked file and directory of a mutant image gets, so the
/// mutated file does not stand out as the newest one (its ctime follows `git ls-files` order like every other's).
const FIXED_MTIME: u64 = 946_684_800;
/// Where the gold patch is written inside a container.
const GOLD_PATH: &str = "/tmp/swe-env-mine-gold.patch";
/// Time limit of each script step in a container (gold apply, list, apply, snapshot).
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// At most this many error lines in a problem statement's excerpt.
const EXCERPT_LINES: usize = 20;

/// Which working code is mutated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PassingState {
    /// The base commit (the source row's tests that pass without its fix).
    Base,
    /// The base commit with the source row's gold patch applied (default: every test should pass).
    #[default]
    Gold,
}

impl PassingState {
    /// `base` / `gold`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Base => "base",
            Self::Gold => "gold",
        }
    }
}

/// Settings of `mine mutate`.
#[derive(Debug, Clone)]
pub struct MutateOptions {
    /// Which working code is mutated.
    pub state: PassingState,
    /// `mutate.py` operator ids (None = all).
    pub operators: Option<Vec<String>>,
    /// Mutants kept per function by `mutate.py` (0 = no cap).
    pub max_per_function: usize,
    /// Mutants kept per file by `mutate.py` (0 = no cap).
    pub max_per_file: usize,
    /// Mutants tried per source row (the first ones in `mutate.py`'s order).
    pub max_mutants_per_task: usize,
    /// `mutate.py --seed` (which mutants the caps keep).
    pub seed: u64,
    /// Validation of every mutant row (and the number of baseline runs).
    pub validate: ValidateConfig,
    /// Mutants validated in parallel.
    pub workers: usize,
    /// Image template for source rows without an `image` field.
    pub image_template: String,
}

impl Default for MutateOptions {
    fn default() -> Self {
        Self {
            state: PassingState::Gold,
            operators: None,
            max_per_function: 1,
            max_per_file: 4,
            max_mutants_per_task: 8,
            seed: 0,
            validate: ValidateConfig::default(),
            workers: 2,
            image_template: task::OFFICIAL_IMAGE_TEMPLATE.to_owned(),
        }
    }
}

/// What `mine mutate` produced.
#[derive(Debug, Clone, Default)]
pub struct MutateReport {
    /// Kept rows (run-benchmark-ready).
    pub tasks: Vec<Instance>,
    /// Rejected source rows (`id` = source instance id) and mutants (`id` = mutant id).
    pub rejected: Vec<RejectedRow>,
    /// Mutants tried (applied and validated, or rejected on the way).
    pub tried: usize,
    /// Mutants `mutate.py` listed (before `max_mutants_per_task`).
    pub listed: usize,
    /// Wall time of the whole run, seconds.
    pub secs: f64,
    /// Containers run for gradings (baselines and validations).
    pub container_runs: usize,
    /// Own layer size (bytes over the source image) of each kept row's derived image, in `tasks` order.
    pub image_layer_bytes: Vec<u64>,
}

/// `mine mutate` could not run (infrastructure), as opposed to a rejected row or mutant.
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    /// Docker failed during validation or a baseline run.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// The Docker engine failed; check that it runs.
    #[error("mutation container failed: {0}")]
    Sandbox(#[from] SandboxError),
}

/// One mutant as `mutate.py list` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Mutant {
    /// `FILE:LINE:COL:OPERATOR`.
    pub id: String,
    /// Path relative to /testbed.
    pub file: String,
    /// Dotted function name.
    pub function: String,
    /// 1-based line.
    pub line: u64,
    /// Operator id.
    pub operator: String,
}

#[derive(Debug, Deserialize)]
struct Listing {
    mutants: Vec<Mutant>,
}

#[derive(Debug, Deserialize)]
struct Applied {
    diff: String,
}

/// `mine mutate` (see the module docs). Source rows are processed one after another, the mutants of a row in
/// parallel (`workers`).
pub async fn mine_mutations(
    engine: &DockerEngine,
    rows: &[Instance],
    options: &MutateOptions,
    progress: &(dyn Fn(MineProgress) + Sync),
) -> Result<MutateReport, MutateError> {
    let started = Instant::now();
    let mut report = MutateReport::default();
    let done = AtomicUsize::new(0);
    let kept = AtomicUsize::new(0);
    let total = AtomicUsize::new(0);
    for row in rows {
        mine_row(
            engine,
            row,
            options,
            &mut report,
            progress,
            (&done, &kept, &total),
        )
        .await?;
    }
    report.secs = started.elapsed().as_secs_f64();
    info!(
        kept = report.tasks.len(),
        tried = report.tried,
        listed = report.listed,
        container_runs = report.container_runs,
        secs = report.secs,
        "mutants mined"
    );
    Ok(report)
}

type Counters<'a> = (&'a AtomicUsize, &'a AtomicUsize, &'a AtomicUsize);

/// One mutant's fate (with the gradings it ran).
enum MutantOutcome {
    Kept(Box<Instance>, usize, u64),
    Rejected(RejectedRow, usize),
}

async fn mine_row(
    engine: &DockerEngine,
    row: &Instance,
    options: &MutateOptions,
    report: &mut MutateReport,
    progress: &(dyn Fn(MineProgress) + Sync),
    (done, kept, total): Counters<'_>,
) -> Result<(), MutateError> {
    let reject_row = |reason: &str, detail: String| RejectedRow {
        id: row.instance_id.clone(),
        instance_id: Some(row.instance_id.clone()),
        reason: reason.to_owned(),
        detail,
    };
    let image = task::image_for(row, &options.image_template);
    let Some(source) = engine.image_info(&image).await? else {
        report.rejected.push(reject_row(
            "image",
            format!("the task image {image} is not present; pull or build it first"),
        ));
        return Ok(());
    };
    // 1. Baseline: the tests passing in every run of the passing state.
    let gold_patch = match options.state {
        PassingState::Gold => row.patch.as_str(),
        PassingState::Base => "",
    };
    let short = hash_hex(row.instance_id.as_bytes(), 8);
    let mut baseline: Option<BTreeSet<String>> = None;
    for run in 0..options.validate.runs.max(1) {
        let outcome = validate::run_tests(
            engine,
            row,
            Some(gold_patch),
            &options.validate,
            &format!("mine-mutbase-{short}-{run}"),
        )
        .await?;
        report.container_runs += 1;
        let passing: BTreeSet<String> = outcome
            .statuses
            .iter()
            .filter(|(_, status)| matches!(status, TestStatus::Passed | TestStatus::Xfail))
            .map(|(name, _)| name.clone())
            .collect();
        baseline = Some(match baseline {
            None => passing,
            Some(before) => before.intersection(&passing).cloned().collect(),
        });
    }
    let baseline = baseline.unwrap_or_default();
    if baseline.is_empty() {
        report.rejected.push(reject_row(
            "baseline_failed",
            format!(
                "no test passes in every baseline run of state {} in {image}",
                options.state.as_str()
            ),
        ));
        return Ok(());
    }
    // 2. List the mutants.
    let files = touched_source_files(&row.patch, options.state);
    if files.is_empty() {
        report.rejected.push(reject_row(
            "no_mutants",
            "the gold patch touches no Python source file".to_owned(),
        ));
        return Ok(());
    }
    let mutants = match list_mutants(engine, row, &image, &files, options).await {
        Ok(Ok(mutants)) => mutants,
        Ok(Err((reason, detail))) => {
            report.rejected.push(reject_row(reason, detail));
            return Ok(());
        }
        Err(error) => return Err(error),
    };
    report.listed += mutants.len();
    let chosen: Vec<Mutant> = mutants
        .into_iter()
        .take(options.max_mutants_per_task)
        .collect();
    if chosen.is_empty() {
        report.rejected.push(reject_row(
            "no_mutants",
            format!("mutate.py found no mutant in {}", files.join(", ")),
        ));
        return Ok(());
    }
    let all = total.fetch_add(chosen.len(), Ordering::SeqCst) + chosen.len();
    progress(MineProgress {
        done: done.load(Ordering::SeqCst),
        total: all,
        kept: kept.load(Ordering::SeqCst),
    });
    info!(instance_id = %row.instance_id, baseline = baseline.len(), mutants = chosen.len(), "mutating");
    // 3. Each mutant in its own container and image.
    let context = MutantContext {
        engine,
        row,
        options,
        image: &image,
        source_id: &source.id,
        source_size: source.size,
        baseline: &baseline,
    };
    let mut outcomes: Vec<(usize, Result<MutantOutcome, MutateError>)> =
        stream::iter(chosen.iter().enumerate())
            .map(|(index, mutant)| {
                let context = &context;
                async move {
                    let outcome = mine_mutant(context, mutant).await;
                    if matches!(outcome, Ok(MutantOutcome::Kept(..))) {
                        kept.fetch_add(1, Ordering::SeqCst);
                    }
                    progress(MineProgress {
                        done: done.fetch_add(1, Ordering::SeqCst) + 1,
                        total: total.load(Ordering::SeqCst),
                        kept: kept.load(Ordering::SeqCst),
                    });
                    (index, outcome)
                }
            })
            .buffer_unordered(options.workers.max(1))
            .collect()
            .await;
    outcomes.sort_by_key(|(index, _)| *index);
    for (_, outcome) in outcomes {
        report.tried += 1;
        match outcome? {
            MutantOutcome::Kept(row, runs, layer) => {
                report.container_runs += runs;
                report.image_layer_bytes.push(layer);
                report.tasks.push(*row);
            }
            MutantOutcome::Rejected(rejected, runs) => {
                report.container_runs += runs;
                report.rejected.push(rejected);
            }
        }
    }
    Ok(())
}

/// What every mutant of one source row shares.
struct MutantContext<'a> {
    engine: &'a DockerEngine,
    row: &'a Instance,
    options: &'a MutateOptions,
    image: &'a str,
    source_id: &'a str,
    source_size: u64,
    baseline: &'a BTreeSet<String>,
}

/// A container of the task image with /testbed in the passing state (gold applied and staged for `Gold`).
async fn prepared_sandbox(
    engine: &DockerEngine,
    row: &Instance,
    image: &str,
    state: PassingState,
    episode: &str,
) -> Result<(DockerSandbox, Result<(), String>), SandboxError> {
    let config = SandboxConfig {
        network_mode: "none".to_owned(),
        workdir: "/".to_owned(),
        ..SandboxConfig::default()
    };
    let sandbox = engine.create_sandbox(image, episode, config).await?;
    if state == PassingState::Base {
        return Ok((sandbox, Ok(())));
    }
    let applied = async {
        sandbox.write_bytes(GOLD_PATH, row.patch.as_bytes()).await?;
        let script =
            format!("cd /testbed && git apply --index -v {GOLD_PATH} && rm -f {GOLD_PATH}");
        let out = sandbox
            .exec(&["bash", "-c", &script], None, STEP_TIMEOUT)
            .await?;
        Ok::<_, SandboxError>(if out.exit_code == Some(0) {
            Ok(())
        } else {
            Err(format!(
                "the gold patch does not apply with git apply: {}",
                tail(&output_text(&out.stdout, &out.stderr), 1500)
            ))
        })
    }
    .await;
    match applied {
        Ok(result) => Ok((sandbox, result)),
        Err(error) => {
            remove_container(&sandbox).await;
            Err(error)
        }
    }
}

/// `mutate.py list` in a container of the task image. `Ok(Err((reason, detail)))`: the row is rejected.
async fn list_mutants(
    engine: &DockerEngine,
    row: &Instance,
    image: &str,
    files: &[String],
    options: &MutateOptions,
) -> Result<Result<Vec<Mutant>, (&'static str, String)>, MutateError> {
    let episode = format!("mine-mutlist-{}", hash_hex(row.instance_id.as_bytes(), 8));
    let (sandbox, applied) = prepared_sandbox(engine, row, image, options.state, &episode).await?;
    let result = async {
        if let Err(detail) = applied {
            return Ok(Err(("apply_failed", detail)));
        }
        let mut command = format!(
            "{} && python - list --root /testbed --files {} --max-per-function {} --max-per-file {} --seed {}",
            task::activation_for(row),
            shell_quote(&files.join(",")),
            options.max_per_function,
            options.max_per_file,
            options.seed
        );
        if let Some(operators) = &options.operators {
            command.push_str(&format!(" --operators {}", shell_quote(&operators.join(","))));
        }
        let out = sandbox
            .exec(&["bash", "-c", &command], Some(MUTATE_PY.as_bytes()), STEP_TIMEOUT)
            .await?;
        let listing = (out.exit_code == Some(0))
            .then(|| serde_json::from_slice::<Listing>(&out.stdout).ok())
            .flatten();
        Ok::<_, SandboxError>(match listing {
            Some(listing) => Ok(listing.mutants),
            None => Err((
                "no_mutants",
                format!(
                    "mutate.py list failed (exit {:?}): {}",
                    out.exit_code,
                    tail(&output_text(&out.stdout, &out.stderr), 1500)
                ),
            )),
        })
    }
    .await;
    remove_container(&sandbox).await;
    Ok(result?)
}

/// Apply → snapshot → image → row → validate. `Err` only for infrastructure failures.
async fn mine_mutant(
    context: &MutantContext<'_>,
    mutant: &Mutant,
) -> Result<MutantOutcome, MutateError> {
    let started = Instant::now();
    let MutantContext {
        engine,
        row,
        options,
        ..
    } = *context;
    let hash = mutant_hash(context.source_id, options.state, &mutant.id);
    let instance_id = mutant_instance_id(&row.instance_id, &hash);
    let rejected = |reason: &str, detail: String, runs: usize| {
        MutantOutcome::Rejected(
            RejectedRow {
                id: mutant.id.clone(),
                instance_id: Some(instance_id.clone()),
                reason: reason.to_owned(),
                detail,
            },
            runs,
        )
    };
    let reference = format!(
        "swe-env-mined/{}-mut:{}",
        swerl::slug(&row.repo),
        &hash[..12]
    );
    // An image of the same name from an earlier run may back a row of that run's tasks.jsonl (names are
    // deterministic): a rejection here removes only an image this call made.
    let preexisting = engine.image_info(&reference).await?.is_some();
    let discard = |reference: String| async move {
        if !preexisting {
            remove_image(engine, &reference).await;
        }
    };
    let made = match make_image(context, mutant, &hash, &reference).await {
        Ok(Ok(made)) => made,
        Ok(Err((reason, detail))) => return Ok(rejected(reason, detail, 0)),
        Err(error) if is_infrastructure(&error) => return Err(error.into()),
        Err(error) => {
            warn!(mutant = %mutant.id, %error, "mutant image could not be made");
            return Ok(rejected("image", error.to_string(), 0));
        }
    };
    let layer = made.size.saturating_sub(context.source_size);
    let mut new_row = mutant_row(row, mutant, options.state, &instance_id, &reference, &made);
    let prefix = format!("mine-mut-{}", &hash[..8]);
    let outcome = validate::validate(engine, &new_row, &options.validate, &prefix).await;
    let secs = started.elapsed().as_secs_f64();
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            discard(reference.clone()).await;
            return Err(error.into());
        }
    };
    let validated = match outcome {
        Ok(validated) => validated,
        Err(rejection) => {
            info!(%instance_id, mutant = %mutant.id, secs, reason = rejection.reason, "mutant rejected");
            discard(reference.clone()).await;
            return Ok(rejected(
                rejection.reason,
                rejection.detail,
                rejection.container_runs,
            ));
        }
    };
    let missing: Vec<&String> = context
        .baseline
        .iter()
        .filter(|test| !validated.after_passing.contains(*test))
        .collect();
    if !missing.is_empty() {
        info!(%instance_id, mutant = %mutant.id, secs, missing = missing.len(), "mutant rejected: revert does not restore the baseline");
        discard(reference.clone()).await;
        let shown: Vec<&str> = missing.iter().take(10).map(|s| s.as_str()).collect();
        return Ok(rejected(
            "revert_not_restoring",
            format!(
                "{} baseline-passing test(s) do not pass after the revert: {}",
                missing.len(),
                shown.join(", ")
            ),
            validated.container_runs,
        ));
    }
    new_row.problem_statement = problem_statement(
        &validated.fail_to_pass,
        &validated.before_output,
        &mutant.file,
    );
    new_row.fail_to_pass = validated.fail_to_pass;
    new_row.pass_to_pass = validated.pass_to_pass;
    if let Some(serde_json::Value::Object(mined)) = new_row.extra.get_mut("swe_env_mined") {
        mined.insert("flaky".to_owned(), json!(validated.flaky));
    }
    info!(%instance_id, mutant = %mutant.id, secs, layer_bytes = layer, fail_to_pass = new_row.fail_to_pass.len(), "mutant kept");
    Ok(MutantOutcome::Kept(
        Box::new(new_row),
        validated.container_runs,
        layer,
    ))
}

/// A derived mutant image.
struct MadeImage {
    /// The revert diff (the new gold patch).
    revert: String,
    /// The single commit's sha.
    base_commit: String,
    /// The image's total size.
    size: u64,
}

/// A fresh container in the passing state, the mutant applied, /testbed/.git replaced by one root commit, committed
/// as `reference`. The container is removed in every case.
async fn make_image(
    context: &MutantContext<'_>,
    mutant: &Mutant,
    hash: &str,
    reference: &str,
) -> Result<Result<MadeImage, (&'static str, String)>, SandboxError> {
    let episode = format!("mine-mutant-{}", &hash[..8]);
    let (sandbox, applied) = prepared_sandbox(
        context.engine,
        context.row,
        context.image,
        context.options.state,
        &episode,
    )
    .await?;
    let result = async {
        if let Err(detail) = applied {
            return Ok(Err(("apply_failed", detail)));
        }
        let command = format!(
            "{} && python - apply --root /testbed --id {}",
            task::activation_for(context.row),
            shell_quote(&mutant.id)
        );
        let out = sandbox
            .exec(
                &["bash", "-c", &command],
                Some(MUTATE_PY.as_bytes()),
                STEP_TIMEOUT,
            )
            .await?;
        let applied = (out.exit_code == Some(0))
            .then(|| serde_json::from_slice::<Applied>(&out.stdout).ok())
            .flatten();
        let Some(applied) = applied else {
            return Ok(Err((
                "apply_failed",
                format!(
                    "mutate.py apply failed (exit {:?}): {}",
                    out.exit_code,
                    tail(&output_text(&out.stdout, &out.stderr), 1500)
                ),
            )));
        };
        let out = sandbox
            .exec(&["bash", "-c", &snapshot_script()], None, STEP_TIMEOUT)
            .await?;
        let sha = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.exit_code != Some(0) || sha.len() != 40 {
            return Ok(Err((
                "image",
                format!(
                    "replacing /testbed/.git by a single commit failed (exit {:?}): {}",
                    out.exit_code,
                    tail(&output_text(&out.stdout, &out.stderr), 1500)
                ),
            )));
        }
        let labels = HashMap::from([
            (LABEL_MINED.to_owned(), "mutate".to_owned()),
            (LABEL_BASE.to_owned(), sha.clone()),
        ]);
        sandbox.commit_image(reference, labels).await?;
        let size = context
            .engine
            .image_info(reference)
            .await?
            .map_or(0, |info| info.size);
        Ok(Ok(MadeImage {
            revert: applied.diff,
            base_commit: sha,
            size,
        }))
    }
    .await;
    remove_container(&sandbox).await;
    result
}

/// Replaces /testbed/.git by a fresh repository with ONE root commit of the paths `git ls-files` listed (fixed
/// identity and date) and prints its sha. No other object is left in the new repository. Then every tracked file
/// and every directory outside .git gets the same fixed mtime, touched in one pass in `git ls-files` order (ctimes
/// follow that order), so the mutated file is not the newest one (the price: every tracked file is copied into the
/// image's top layer).
pub fn snapshot_script() -> String {
    format!(
        "set -e\ncd /testbed\nlist=$(mktemp)\ngit ls-files -z > \"$list\"\nrm -rf .git\n\
git -c init.defaultBranch=main init -q\ngit symbolic-ref HEAD refs/heads/main\n\
xargs -0 -r git add -f -- < \"$list\"\nrm -f \"$list\"\n\
export GIT_AUTHOR_NAME={COMMIT_IDENTITY} GIT_AUTHOR_EMAIL={COMMIT_EMAIL} GIT_AUTHOR_DATE={COMMIT_DATE}\n\
export GIT_COMMITTER_NAME={COMMIT_IDENTITY} GIT_COMMITTER_EMAIL={COMMIT_EMAIL} GIT_COMMITTER_DATE={COMMIT_DATE}\n\
git -c commit.gpgsign=false commit -q --no-verify -m 'swe-env mined task' >&2\n\
git rev-parse HEAD\n{PURGE_BYTECODE}\
git ls-files -z | xargs -0 -r touch -h -d @{FIXED_MTIME} --\n\
find . -path ./.git -prune -o -type d -print0 | xargs -0 -r touch -h -d @{FIXED_MTIME} --\n\
git update-index -q --refresh >/dev/null || true\n"
    )
}

/// The mutant's provisional row (no FAIL_TO_PASS / PASS_TO_PASS; the problem statement is written once validated).
fn mutant_row(
    source: &Instance,
    mutant: &Mutant,
    state: PassingState,
    instance_id: &str,
    image: &str,
    made: &MadeImage,
) -> Instance {
    let mut extra = BTreeMap::new();
    extra.insert(
        "swe_env_mined".to_owned(),
        json!({
            "kind": "mutate",
            "source_instance": source.instance_id,
            "state": state.as_str(),
            "mutant": mutant.id,
            "operator": mutant.operator,
            "function": mutant.function,
            "file": mutant.file,
            "line": mutant.line,
            "flaky": Vec::<String>::new(),
        }),
    );
    Instance {
        repo: source.repo.clone(),
        instance_id: instance_id.to_owned(),
        base_commit: made.base_commit.clone(),
        patch: made.revert.clone(),
        test_patch: source.test_patch.clone(),
        problem_statement: String::new(),
        hints_text: String::new(),
        created_at: source.created_at.clone(),
        version: source.version.clone(),
        environment_setup_commit: source.environment_setup_commit.clone(),
        fail_to_pass: Vec::new(),
        pass_to_pass: Vec::new(),
        image: Some(image.to_owned()),
        activate: Some(task::activation_for(source)),
        test_cmd: source.test_cmd.clone(),
        log_parser: source.log_parser.clone(),
        eval_script: None,
        extra,
    }
}

/// Hex SHA-256 of the source image id, the passing state and the mutant id (ids and image tags derive from it).
pub fn mutant_hash(source_image_id: &str, state: PassingState, mutant_id: &str) -> String {
    hash_hex(
        format!("{source_image_id}\n{}\n{mutant_id}", state.as_str()).as_bytes(),
        64,
    )
}

/// `<source instance id>-mut-<hash 8>`.
pub fn mutant_instance_id(source_instance_id: &str, hash: &str) -> String {
    format!("{source_instance_id}-mut-{}", &hash[..hash.len().min(8)])
}

/// The first `digits` hex digits of SHA-256 of `bytes`.
fn hash_hex(bytes: &[u8], digits: usize) -> String {
    let mut hex = crate::trajectory::digest::sha256_hex(bytes);
    hex.truncate(digits);
    hex
}

/// The Python files `patch` touches that exist in `state` (for `Base`: before the patch; for `Gold`: after it).
pub fn touched_source_files(patch: &str, state: PassingState) -> Vec<String> {
    let prefix = match state {
        PassingState::Base => "--- ",
        PassingState::Gold => "+++ ",
    };
    let mut files: Vec<String> = patch
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .map(|path| path.split('\t').next().unwrap_or(path).trim())
        .filter_map(|path| path.strip_prefix("a/").or_else(|| path.strip_prefix("b/")))
        .filter(|path| path.ends_with(".py"))
        .map(str::to_owned)
        .collect();
    files.sort();
    files.dedup();
    files
}

/// The mutant task's problem statement: the failing tests and an excerpt of the error output (left out when
/// nothing safe remains). It never names the mutated file, function or line: see [`error_excerpt`].
pub fn problem_statement(
    fail_to_pass: &[String],
    before_output: &str,
    mutated_file: &str,
) -> String {
    let tests: Vec<String> = fail_to_pass
        .iter()
        .map(|test| format!("- {test}"))
        .collect();
    let excerpt = error_excerpt(before_output, mutated_file);
    let excerpt = if excerpt.is_empty() {
        String::new()
    } else {
        format!(
            "Error output (excerpt):\n```\n{}\n```\n\n",
            excerpt.join("\n")
        )
    };
    format!(
        "Some tests fail after a recent change.\n\nFailing tests:\n{}\n\n{excerpt}\
Fix the library code so these tests pass; the tests are correct.",
        tests.join("\n")
    )
}

/// At most 20 `E ` lines of pytest output, else at most 20 lines of pytest's short test summary (`FAILED ...`,
/// `ERROR ...`); never source lines (pytest's `>` line and the code around it) and never a line naming
/// `mutated_file` in any form (its path, or its base name, which covers `File "/testbed/.../x.py", line N`).
pub fn error_excerpt(output: &str, mutated_file: &str) -> Vec<String> {
    let pick = |keep: &dyn Fn(&str) -> bool| -> Vec<String> {
        output
            .lines()
            .filter(|line| keep(line) && !names_file(line, mutated_file))
            .take(EXCERPT_LINES)
            .map(|line| line.trim_end().to_owned())
            .collect()
    };
    let errors = pick(&|line| line.starts_with("E "));
    if !errors.is_empty() {
        return errors;
    }
    pick(&|line| line.starts_with("FAILED ") || line.starts_with("ERROR "))
}

/// `line` names `file` (a path relative to /testbed) by its path or by its base name.
fn names_file(line: &str, file: &str) -> bool {
    let base = file.rsplit('/').next().unwrap_or(file);
    (!file.is_empty() && line.contains(file)) || (!base.is_empty() && line.contains(base))
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

fn output_text(stdout: &[u8], stderr: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(stderr));
    text
}

async fn remove_container(sandbox: &DockerSandbox) {
    if let Err(error) = sandbox.remove().await {
        warn!(container = sandbox.id(), %error, "removing a mine mutate container failed; `swe-env gc` will remove it");
    }
}

async fn remove_image(engine: &DockerEngine, reference: &str) {
    if let Err(error) = engine.remove_image(reference).await {
        warn!(image = reference, %error, "removing a rejected mutant image failed; remove it with docker rmi");
    }
}

/// Docker itself failed (the run stops), as opposed to this mutant's container or image (the mutant is rejected).
fn is_infrastructure(error: &SandboxError) -> bool {
    matches!(
        error,
        SandboxError::EngineUnavailable { .. }
            | SandboxError::EngineConfig { .. }
            | SandboxError::EngineTls { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::grade::{grade_patch, GradeConfig};

    const GOLD: &str = "diff --git a/src/pkg/core.py b/src/pkg/core.py\n--- a/src/pkg/core.py\n+++ b/src/pkg/core.py\n\
@@ -1 +1 @@\n-x = 1\n+x = 2\n\
diff --git a/src/pkg/new.py b/src/pkg/new.py\nnew file mode 100644\n--- /dev/null\n+++ b/src/pkg/new.py\n@@ -0,0 +1 @@\n+y = 1\n\
diff --git a/src/pkg/gone.py b/src/pkg/gone.py\ndeleted file mode 100644\n--- a/src/pkg/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-z = 1\n\
diff --git a/README.md b/README.md\n--- a/README.md\n+++ b/README.md\n@@ -1 +1 @@\n-a\n+b\n";

    #[test]
    fn touched_files_follow_the_state() {
        assert_eq!(
            touched_source_files(GOLD, PassingState::Gold),
            vec!["src/pkg/core.py", "src/pkg/new.py"]
        );
        assert_eq!(
            touched_source_files(GOLD, PassingState::Base),
            vec!["src/pkg/core.py", "src/pkg/gone.py"]
        );
    }

    #[test]
    fn ids_and_hashes_are_deterministic_and_safe() {
        let a = mutant_hash("sha256:abc", PassingState::Gold, "src/x.py:3:4:cmp_flip");
        assert_eq!(a.len(), 64);
        assert_eq!(
            a,
            mutant_hash("sha256:abc", PassingState::Gold, "src/x.py:3:4:cmp_flip")
        );
        assert_ne!(
            a,
            mutant_hash("sha256:abc", PassingState::Base, "src/x.py:3:4:cmp_flip")
        );
        assert_ne!(
            a,
            mutant_hash("sha256:abd", PassingState::Gold, "src/x.py:3:4:cmp_flip")
        );
        let id = mutant_instance_id("owner__repo-12", &a);
        assert_eq!(id, format!("owner__repo-12-mut-{}", &a[..8]));
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
        assert_eq!(
            swerl::slug("Swe-Env-Fixtures/retry kit"),
            "swe-env-fixtures-retry-kit"
        );
    }

    #[test]
    fn problem_statement_lists_tests_and_hides_the_mutated_location() {
        let output = "\
tests/test_x.py::test_a FAILED\n\
=================================== FAILURES ===================================\n\
___________________________________ test_a ____________________________________\n\
    def test_a():\n\
>       assert area(2) == 4\n\
E       assert 5 == 4\n\
E        +  where 5 = area(2)\n\
src/geo/shapes.py:12: AssertionError\n\
E   src/geo/shapes.py:12: in area\n\
=========================== short test summary info ============================\n";
        let text = problem_statement(
            &[
                "tests/test_x.py::test_a".to_owned(),
                "tests/test_x.py::test_b".to_owned(),
            ],
            output,
            "src/geo/shapes.py",
        );
        assert!(text.starts_with("Some tests fail after a recent change.\n\nFailing tests:\n- tests/test_x.py::test_a\n- tests/test_x.py::test_b\n\nError output (excerpt):\n```\n"));
        assert!(text.contains("E       assert 5 == 4\nE        +  where 5 = area(2)\n```"));
        assert!(!text.contains("shapes.py"), "{text}");
        assert!(text.ends_with("Fix the library code so these tests pass; the tests are correct."));
        // No `E   ` lines and no short summary: no source or location line is shown.
        let plain = "collected 1 item\n= FAILURES =\nboom happened\nsrc/geo/shapes.py:7: ValueError\n==== short ====\nafter\n";
        assert!(error_excerpt(plain, "src/geo/shapes.py").is_empty());
        // At most 20 lines.
        let many: String = (0..30).map(|i| format!("E   line {i}\n")).collect();
        let excerpt = error_excerpt(&many, "a.py");
        assert_eq!(excerpt.len(), 20);
        assert_eq!(excerpt[0], "E   line 0");
    }

    #[test]
    fn excerpt_never_names_the_mutated_file_nor_shows_source_lines() {
        // `E` lines: a traceback line naming the file in any form is dropped.
        let output = "\
E   Traceback (most recent call last):\n\
E     File \"/testbed/src/geo/shapes.py\", line 12, in area\n\
E       return w * h + 1\n\
E   ValueError: bad area\n\
E   raised in shapes.py near the top\n\
E   see src/geo/shapes.py for details\n";
        let excerpt = error_excerpt(output, "src/geo/shapes.py");
        assert_eq!(
            excerpt,
            vec![
                "E   Traceback (most recent call last):",
                "E       return w * h + 1",
                "E   ValueError: bad area",
            ]
        );
        // No `E` lines: only the short summary's FAILED/ERROR lines, never the source lines of the failure section
        // (pytest's `>` line and the code around it), and never a line naming the file.
        let plain = "\
collected 2 items\n\
=================================== FAILURES ===================================\n\
___________________________________ test_a ____________________________________\n\
    def area(w, h):\n\
>       return w * h + 1\n\
boom happened\n\
src/geo/shapes.py:7: ValueError\n\
=========================== short test summary info ============================\n\
FAILED tests/test_x.py::test_a - ValueError: boom\n\
FAILED tests/test_x.py::test_b - File \"/testbed/src/geo/shapes.py\", line 9\n\
ERROR tests/test_y.py - ImportError: cannot import name 'x'\n\
========================= 2 failed, 1 error in 0.10s ==========================\n";
        let excerpt = error_excerpt(plain, "src/geo/shapes.py");
        assert_eq!(
            excerpt,
            vec![
                "FAILED tests/test_x.py::test_a - ValueError: boom",
                "ERROR tests/test_y.py - ImportError: cannot import name 'x'",
            ]
        );
        let text = problem_statement(
            &["tests/test_x.py::test_a".to_owned()],
            plain,
            "src/geo/shapes.py",
        );
        assert!(!text.contains("shapes.py"), "{text}");
        assert!(!text.contains("w * h"), "{text}");
        // Nothing usable: no excerpt section at all.
        let text = problem_statement(&["t::a".to_owned()], "    x = w * h\n", "src/geo/shapes.py");
        assert!(!text.contains("Error output"), "{text}");
        assert!(!text.contains("w * h"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_images_drop_the_source_image_labels() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let sandbox = engine
            .create_sandbox(
                "swe-env/fixture-retrykit:latest",
                "mine-mutate-label-check",
                SandboxConfig {
                    network_mode: "none".into(),
                    ..SandboxConfig::default()
                },
            )
            .await
            .unwrap();
        let reference = format!("swe-env-mined/label-check:{}", std::process::id());
        let labels = HashMap::from([
            (LABEL_MINED.to_owned(), "mutate".to_owned()),
            (LABEL_BASE.to_owned(), "abc123".to_owned()),
        ]);
        let committed = sandbox.commit_image(&reference, labels).await;
        sandbox.remove().await.unwrap();
        committed.unwrap();
        let info = engine.image_info(&reference).await.unwrap().unwrap();
        engine.remove_image(&reference).await.unwrap();
        assert_eq!(
            info.labels.get(LABEL_MINED).map(String::as_str),
            Some("mutate")
        );
        assert_eq!(
            info.labels.get(LABEL_BASE).map(String::as_str),
            Some("abc123")
        );
        for (key, value) in &info.labels {
            if key.starts_with("swe-env.") && key != LABEL_MINED && key != LABEL_BASE {
                assert_eq!(
                    value, "",
                    "{key} inherited from the source image: {:?}",
                    info.labels
                );
            }
        }
    }

    #[test]
    fn snapshot_script_uses_the_fixed_identity() {
        let script = snapshot_script();
        assert!(script.contains("GIT_COMMITTER_DATE=2000-01-01T00:00:00Z"));
        assert!(script.contains("GIT_AUTHOR_EMAIL=mine@swe-env"));
        assert!(script.contains("rm -rf .git"));
    }

    async fn exec_in(engine: &DockerEngine, image: &str, script: &str) -> (Option<i64>, String) {
        let sandbox = engine
            .create_sandbox(
                image,
                "mine-mutate-unit-check",
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
        let out = out.unwrap();
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retrykit_mutants_become_single_commit_tasks_whose_revert_resolves() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let rows = crate::datasets::load_source("fixtures")
            .await
            .unwrap()
            .instances;
        let row = rows
            .into_iter()
            .find(|r| r.instance_id == "swe-env-fixtures__retrykit-1")
            .unwrap();
        let grade = GradeConfig {
            network_mode: "none".into(),
            test_timeout: Duration::from_secs(120),
            ..GradeConfig::default()
        };
        // Not the default operators: the end-to-end CLI test (tests/it/mine.rs) mines this row's default mutants
        // in parallel, and the image names of equal mutants are equal (deterministic).
        let options = MutateOptions {
            max_mutants_per_task: 3,
            max_per_function: 2,
            operators: Some(vec![
                "arith_flip".into(),
                "cmp_flip".into(),
                "negate_cond".into(),
            ]),
            validate: ValidateConfig {
                grade: grade.clone(),
                runs: 2,
            },
            ..MutateOptions::default()
        };
        let seen = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        let report = mine_mutations(&engine, std::slice::from_ref(&row), &options, &|p| {
            seen.lock().unwrap().push(p)
        })
        .await
        .unwrap();
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "listed {} tried {} kept {} in {secs:.1} s ({:.1} s per mutant), {} container runs, layers {:?}, rejected {:?}",
            report.listed,
            report.tried,
            report.tasks.len(),
            secs / report.tried.max(1) as f64,
            report.container_runs,
            report.image_layer_bytes,
            report.rejected
        );
        let images: Vec<String> = report
            .tasks
            .iter()
            .filter_map(|t| t.image.clone())
            .collect();
        let checks = async {
            assert_eq!(report.tried, 3);
            assert!(report.listed >= 3);
            assert_eq!(report.tasks.len() + report.rejected.len(), 3);
            assert_eq!(seen.lock().unwrap().last().unwrap().done, 3);
            assert_eq!(report.image_layer_bytes.len(), report.tasks.len());
            let task = report.tasks.first().expect("at least one mutant is kept");
            eprintln!("{}\n{}", task.instance_id, task.problem_statement);
            let mined = &task.extra["swe_env_mined"];
            assert_eq!(mined["kind"], json!("mutate"));
            assert_eq!(mined["source_instance"], json!(row.instance_id));
            assert_eq!(mined["state"], json!("gold"));
            let file = mined["file"].as_str().unwrap();
            assert!(task
                .instance_id
                .starts_with("swe-env-fixtures__retrykit-1-mut-"));
            let image = task.image.as_deref().unwrap();
            assert!(image.starts_with("swe-env-mined/swe-env-fixtures-retrykit-mut:"));
            assert!(!task.fail_to_pass.is_empty());
            assert_eq!(task.test_patch, row.test_patch);
            assert!(task.patch.contains(&format!("--- a/{file}")));
            assert!(!task.problem_statement.contains(&format!("{file}:")));
            assert!(task.problem_statement.contains(&task.fail_to_pass[0]));
            // Exactly one commit, at base_commit, and no other object in the repository.
            let (code, out) = exec_in(
                &engine,
                image,
                "cd /testbed && git rev-list --count --all && git rev-parse HEAD && git status --porcelain | wc -l \
                 && git cat-file --batch-all-objects --batch-check | grep -c commit",
            )
            .await;
            assert_eq!(code, Some(0), "{out}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines, vec!["1", task.base_commit.as_str(), "0", "1"]);
            // The revert resolves the task; the empty patch does not.
            let gold = grade_patch(
                &engine,
                task,
                Some(&task.patch),
                &grade,
                "mine-mut-unit-gold",
            )
            .await
            .unwrap();
            assert!(gold.resolved, "{}", gold.test_output);
            let empty = grade_patch(&engine, task, Some(""), &grade, "mine-mut-unit-empty")
                .await
                .unwrap();
            assert!(!empty.resolved);
        };
        let result =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(checks)).await;
        for image in &images {
            engine.remove_image(image).await.unwrap();
        }
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshot_commit_is_deterministic_and_alone() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let image = "swe-env/fixture-retrykit:latest";
        let script = format!(
            "set -e\ncd /testbed\nold=$(git rev-parse HEAD)\necho changed >> README.md\n\
             cp src/retrykit/policy.py /tmp/p && echo '# mutated' >> /tmp/p && mv /tmp/p src/retrykit/policy.py\n\
             mkdir -p src/__pycache__ && echo old > src/__pycache__/m.cpython-311.pyc && echo old > src/legacy.pyc\n\
             ({}) >/tmp/sha\n\
             cat /tmp/sha\ngit rev-list --count --all\ngit cat-file --batch-all-objects --batch-check | grep -c commit\n\
             git cat-file -e $old 2>/dev/null && echo leaked || echo clean\ngit status --porcelain | wc -l\n\
             find . -name '*.pyc' | wc -l\n\
             git ls-files -z | xargs -0 stat -c %Y | sort -u | wc -l\n\
             find . -path ./.git -prune -o -type d -printf '%T@\\n' | sort -u | wc -l\n\
             git ls-files -z | xargs -0 stat -c %.9Z | sort -c -n && echo ctime-in-ls-files-order\n",
            snapshot_script()
        );
        let (code, first) = exec_in(&engine, image, &script).await;
        assert_eq!(code, Some(0), "{first}");
        let (_, second) = exec_in(&engine, image, &script).await;
        let lines: Vec<&str> = first.lines().collect();
        assert_eq!(lines.len(), 9, "{first}");
        assert_eq!(lines[0].len(), 40);
        // One commit, the old HEAD gone, a clean tree, and no bytecode of the unmutated code left behind.
        assert_eq!(&lines[1..6], ["1", "1", "clean", "0", "0"]);
        // The changed files do not stand out: every tracked file and directory has one mtime, and ctimes follow
        // `git ls-files` order (one touch pass), so the changed file is not the newest beyond that order.
        assert_eq!(
            &lines[6..],
            ["1", "1", "ctime-in-ls-files-order"],
            "{first}"
        );
        assert_eq!(first, second, "same tree, same sha");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn base_state_mutants_keep_the_source_bug() {
        let engine = DockerEngine::connect(Duration::from_secs(120))
            .await
            .unwrap();
        let rows = crate::datasets::load_source("fixtures")
            .await
            .unwrap()
            .instances;
        let row = rows
            .into_iter()
            .find(|r| r.instance_id == "swe-env-fixtures__retrykit-1")
            .unwrap();
        let options = MutateOptions {
            state: PassingState::Base,
            max_mutants_per_task: 1,
            operators: Some(vec!["cmp_flip".into()]),
            validate: ValidateConfig {
                grade: GradeConfig {
                    network_mode: "none".into(),
                    test_timeout: Duration::from_secs(120),
                    ..GradeConfig::default()
                },
                runs: 2,
            },
            ..MutateOptions::default()
        };
        let report = mine_mutations(&engine, std::slice::from_ref(&row), &options, &|_| {})
            .await
            .unwrap();
        eprintln!(
            "base state: kept {} rejected {:?}",
            report.tasks.len(),
            report.rejected
        );
        for task in &report.tasks {
            engine
                .remove_image(task.image.as_deref().unwrap())
                .await
                .unwrap();
        }
        assert_eq!(report.tried, 1);
        for rejected in &report.rejected {
            assert!(
                !["apply_failed", "image", "baseline_failed"].contains(&rejected.reason.as_str()),
                "{rejected:?}"
            );
        }
        for task in &report.tasks {
            assert_eq!(task.extra["swe_env_mined"]["state"], json!("base"));
            assert_eq!(task.extra["swe_env_mined"]["operator"], json!("cmp_flip"));
            // The source row's own failing tests still fail after the revert (the base keeps its bug).
            for test in &row.fail_to_pass {
                assert!(!task.fail_to_pass.contains(test));
                assert!(!task.pass_to_pass.contains(test));
            }
        }
    }
}
