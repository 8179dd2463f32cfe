//! The harvest runner: plan → rollouts on the benchmark's worker pool and attempt path → commit, exactly once.
//!
//! The plan is every (dataset row × sample index) minus the rollouts already committed in the store, minus the
//! rollouts given up (their failures in `failures.jsonl` reached `max_rollout_failures`; `--retry-given-up` plans
//! them again), each (dataset hash, instance id) once, so each rollout id once. The plan is lazy (`Plan`): one
//! counting pass (totals for progress, one bit per row × sample saying "do not run") and then an iterator the
//! workers pull from, which makes each rollout (its id and shared pointers to its task and dataset hash) only when
//! a worker takes it; its seed and temperature are made when it starts. Each rollout
//! is one attempt of the benchmark path (`benchmark::Attempts`: image → episode with the model agent under this
//! rollout's seed and temperature → grading in a fresh container → `episode_end` with rewards), its trajectory
//! written to the store's work directory, read back, committed as one shard line (`HarvestStore::commit`), and
//! deleted. An attempt that ends in an `error` result (image missing, endpoint down, sandbox or grading failure) is
//! recorded in `failures.jsonl` and runs again on the next invocation (until given up). `max_consecutive_failures`
//! failures in a row of an infrastructure kind (`model_endpoint`, `docker_unavailable`) stop the harvest like a
//! failed commit does (in-flight rollouts dropped, their containers removed, exit 3).
//!
//! Budgets: per rollout through the episode config; per task and in total (tokens, turns, wall time) counted from
//! the committed rows plus this invocation's rollouts (failed ones included). Once one is spent no rollout (of
//! that task / at all) starts; in-flight ones finish and commit; the rest are counted as `skipped_budget`.
//! The global wall-clock budget counts this invocation's time only.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swe_env_grading::dataset::Instance;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::card::DataCard;
use super::config::{rollout_seed, Budgets, Resolved};
use super::store::{
    read_failures, rollout_id, DatasetEntry, HarvestHeader, HarvestStore, ManifestRow,
    RolloutFailure, RolloutLine, RolloutTiming, SpentSummary, StoreError, StoreOptions, TimeSums,
};
use crate::benchmark::results::InstanceStatus;
use crate::benchmark::{
    run_workers, AgentSpec, AttemptSpec, Attempts, Job, ModelAgent, Progress, RunConfig,
};
use crate::trajectory::{read_trajectory, Record};
use swe_env_sandbox::DockerEngine;

/// One dataset of the harvest, loaded.
#[derive(Debug, Clone)]
pub struct DatasetInput {
    /// The source as given (`fixtures`, an alias, a path).
    pub source: String,
    /// sha256 hex of its content.
    pub sha256: String,
    /// Rows in the whole dataset (before `instance_ids`).
    pub rows: u64,
    /// The rows to harvest (after `instance_ids`).
    pub instances: Vec<Instance>,
}

/// Why a harvest could not run or finish.
#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    /// The output directory refused (in use, configuration changed, corrupt) or a write failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model client could not be made from the configuration.
    #[error("model client: {0}")]
    Client(String),
}

impl HarvestError {
    /// Whether this is the user's to fix by changing the command (exit 2) rather than infrastructure (exit 3).
    pub fn is_usage(&self) -> bool {
        match self {
            Self::Store(error) => error.is_usage(),
            Self::Client(_) => true,
        }
    }
}

/// What happened to one rollout, for progress reports.
#[derive(Debug, Clone)]
pub enum RolloutEvent {
    /// Committed (graded).
    Committed {
        /// The task.
        instance_id: String,
        /// The sample index.
        sample_idx: u32,
        /// The grading verdict.
        resolved: bool,
        /// `episode_end.status`.
        status: String,
        /// Wall time of the rollout, ms.
        wall_ms: u64,
    },
    /// Failed (recorded in failures.jsonl; retried next invocation).
    Failed {
        /// The task.
        instance_id: String,
        /// The sample index.
        sample_idx: u32,
        /// `error_kind`.
        kind: String,
        /// The error.
        error: String,
    },
    /// Not started: a budget was spent.
    Skipped {
        /// The task.
        instance_id: String,
        /// The sample index.
        sample_idx: u32,
    },
}

/// Counts so far.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Rollouts in the plan (dataset rows after `instance_ids` × K).
    pub planned: u64,
    /// Committed before this invocation.
    pub committed_before: u64,
    /// Committed by this invocation.
    pub committed_new: u64,
    /// Resolved among every committed rollout.
    pub resolved_total: u64,
    /// Failed in this invocation.
    pub failed: u64,
    /// Failures of this invocation by `error_kind`.
    pub failed_by_kind: BTreeMap<String, u64>,
    /// Not started because a budget was spent.
    pub skipped_budget: u64,
    /// Not planned: they failed `max_rollout_failures` times already (`--retry-given-up` runs them again).
    pub given_up: u64,
    /// Prompt + completion tokens of this invocation's rollouts.
    pub tokens: u64,
    /// Prompt tokens of this invocation.
    pub prompt_tokens: u64,
    /// Completion tokens of this invocation.
    pub completion_tokens: u64,
    /// Time summed over this invocation's rollouts.
    pub time: TimeSums,
}

impl Totals {
    /// Rollouts handled by this invocation (committed, failed or skipped).
    pub fn done(&self) -> u64 {
        self.committed_new + self.failed + self.skipped_budget
    }

    /// Rollouts this invocation set out to run.
    pub fn to_run(&self) -> u64 {
        self.planned
            .saturating_sub(self.committed_before)
            .saturating_sub(self.given_up)
    }
}

/// Reports progress to the caller (bar, log lines).
pub trait HarvestProgress: Send + Sync {
    /// The plan is known.
    fn begin(&self, totals: &Totals);
    /// A rollout ended (or was skipped).
    fn rollout(&self, event: &RolloutEvent, totals: &Totals);
    /// A status line (orphans removed, pulls, budget stop).
    fn note(&self, message: &str);
}

/// What a harvest invocation did.
#[derive(Debug, Clone)]
pub struct HarvestOutcome {
    /// The output directory.
    pub out: PathBuf,
    /// The counts.
    pub totals: Totals,
    /// Committed rollouts in the directory now.
    pub committed_total: u64,
    /// Wall-clock time of this invocation.
    pub wall: Duration,
    /// Interrupted (Ctrl-C): in-flight rollouts were dropped.
    pub interrupted: bool,
    /// The budget that stopped the harvest, in words with how to continue.
    pub budget_stop: Option<String>,
    /// A write to the store failed mid-run (the harvest stopped; rerun to continue).
    pub store_error: Option<String>,
    /// Too many infrastructure failures in a row stopped the harvest: what failed and how to continue.
    pub circuit_break: Option<String>,
    /// The rollouts given up (`{instance_id} s{sample_idx}: {failures} failures, last {kind}`), first ones.
    pub given_up: Vec<String>,
    /// The data card written at the end.
    pub card: Option<DataCard>,
}

impl HarvestOutcome {
    /// Committed rollouts per hour of this invocation.
    pub fn rollouts_per_hour(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.totals.committed_new as f64 * 3600.0 / secs
        } else {
            0.0
        }
    }

    /// Tokens per second of this invocation.
    pub fn tokens_per_sec(&self) -> f64 {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            self.totals.tokens as f64 / secs
        } else {
            0.0
        }
    }
}

/// One planned rollout: shared task and dataset, its own id only (seed and temperature are made when it starts).
#[derive(Clone)]
struct Rollout {
    instance: Arc<Instance>,
    dataset_sha256: Arc<str>,
    sample_idx: u32,
    rollout_id: String,
}

/// What decides which rollouts a harvest plans.
struct PlanRules<'a> {
    samples: u32,
    config_hash: &'a str,
    max_failures: u32,
    retry_given_up: bool,
}

/// The rollouts to run, made one at a time: every (dataset row × sample index) in dataset order, minus the ones
/// the counting pass ([`Plan::count`]) marked (committed, given up, or of a row given twice). It keeps the rows it
/// has not reached and one bit per planned (row × sample), never a rollout: 10 M rollouts are 1.25 MB of bits where
/// a list of them was ~1 GB.
struct Plan {
    rows: Box<dyn Iterator<Item = (Arc<str>, Instance)> + Send>,
    row: Option<(Arc<str>, Arc<Instance>)>,
    samples: u32,
    next_sample: u32,
    config_hash: String,
    /// Bit `row_index × samples + sample_idx` set: not to run.
    skip: Vec<u64>,
    position: u64,
    remaining: usize,
}

impl Plan {
    /// The counting pass: one walk over the rows × samples that adds every planned, committed and given-up rollout
    /// to `totals` (a given-up one also to `given_up`, with its failure count and last kind), calls `new_row` once
    /// per distinct task, and marks what not to run. Each (dataset hash, instance id) is planned once, so each
    /// rollout id once, even with a row or a dataset given twice (the CLI refuses both; this is the last guard).
    fn count(
        datasets: Vec<DatasetInput>,
        rules: PlanRules<'_>,
        is_committed: impl Fn(&str) -> bool,
        failures: &HashMap<String, (u32, String)>,
        totals: &mut Totals,
        given_up: &mut Vec<String>,
        mut new_row: impl FnMut(&str),
    ) -> Plan {
        let samples = rules.samples;
        let n_rows: u64 = datasets.iter().map(|d| d.instances.len() as u64).sum();
        let bits = n_rows.saturating_mul(u64::from(samples));
        let mut skip = vec![0u64; bits.div_ceil(64) as usize];
        let mut mark = |position: u64| skip[(position / 64) as usize] |= 1 << (position % 64);
        let mut remaining = 0usize;
        let mut planned_rows: HashSet<(&str, &str)> = HashSet::new();
        let mut position = 0u64;
        for dataset in &datasets {
            for instance in &dataset.instances {
                let row_start = position;
                position += u64::from(samples);
                if !planned_rows.insert((dataset.sha256.as_str(), instance.instance_id.as_str())) {
                    warn!(
                        instance_id = instance.instance_id,
                        dataset = dataset.source,
                        "a task is given twice; planned once"
                    );
                    (row_start..position).for_each(&mut mark);
                    continue;
                }
                new_row(&instance.instance_id);
                for sample_idx in 0..samples {
                    let at = row_start + u64::from(sample_idx);
                    let id = rollout_id(
                        &dataset.sha256,
                        &instance.instance_id,
                        sample_idx,
                        rules.config_hash,
                    );
                    totals.planned += 1;
                    if is_committed(&id) {
                        totals.committed_before += 1;
                        mark(at);
                        continue;
                    }
                    if let Some((count, kind)) = failures.get(&id) {
                        if *count >= rules.max_failures && !rules.retry_given_up {
                            totals.given_up += 1;
                            if given_up.len() < MAX_GIVEN_UP_LISTED {
                                given_up.push(format!(
                                    "{} s{sample_idx}: {count} failures, last {kind}",
                                    instance.instance_id
                                ));
                            }
                            mark(at);
                            continue;
                        }
                    }
                    remaining += 1;
                }
            }
        }
        drop(planned_rows);
        let rows = datasets.into_iter().flat_map(|dataset| {
            let sha256: Arc<str> = Arc::from(dataset.sha256);
            dataset
                .instances
                .into_iter()
                .map(move |instance| (sha256.clone(), instance))
        });
        Plan {
            rows: Box::new(rows),
            row: None,
            samples,
            next_sample: samples,
            config_hash: rules.config_hash.to_owned(),
            skip,
            position: 0,
            remaining,
        }
    }

    fn skipped(&self, position: u64) -> bool {
        self.skip
            .get((position / 64) as usize)
            .is_some_and(|word| word & (1 << (position % 64)) != 0)
    }
}

impl Iterator for Plan {
    type Item = Rollout;

    fn next(&mut self) -> Option<Rollout> {
        while self.remaining > 0 {
            if self.next_sample >= self.samples {
                let (sha256, instance) = self.rows.next()?;
                let row_start = self.position;
                self.next_sample = 0;
                // A row with nothing left to run is passed over without sharing it.
                if (row_start..row_start + u64::from(self.samples)).all(|at| self.skipped(at)) {
                    self.position += u64::from(self.samples);
                    self.next_sample = self.samples;
                    self.row = None;
                    continue;
                }
                self.row = Some((sha256, Arc::new(instance)));
            }
            let sample_idx = self.next_sample;
            let at = self.position;
            self.next_sample += 1;
            self.position += 1;
            if self.skipped(at) {
                continue;
            }
            let (sha256, instance) = self.row.as_ref()?;
            self.remaining -= 1;
            return Some(Rollout {
                rollout_id: rollout_id(
                    sha256,
                    &instance.instance_id,
                    sample_idx,
                    &self.config_hash,
                ),
                instance: instance.clone(),
                dataset_sha256: sha256.clone(),
                sample_idx,
            });
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

/// What a worker hands to the collector.
enum RolloutOutput {
    /// A graded trajectory, to commit; the work file is deleted after the commit.
    Line {
        line: Box<RolloutLine>,
        work_file: PathBuf,
    },
    /// No gradable trajectory.
    Failed {
        failure: RolloutFailure,
        timing: RolloutTiming,
        tokens: u64,
        turns: u64,
    },
    /// Not started: a budget was spent.
    Skipped {
        instance_id: String,
        sample_idx: u32,
    },
}

impl Job for Rollout {
    type Output = RolloutOutput;
    type Key = (String, String, u32);

    fn key(&self) -> Self::Key {
        (
            self.rollout_id.clone(),
            self.instance.instance_id.clone(),
            self.sample_idx,
        )
    }

    fn panicked((rollout_id, instance_id, sample_idx): Self::Key, message: &str) -> RolloutOutput {
        tracing::error!(
            rollout_id,
            instance_id,
            panic = message,
            "a rollout panicked; recorded as a failure"
        );
        RolloutOutput::Failed {
            failure: RolloutFailure {
                rollout_id,
                instance_id,
                sample_idx,
                error_kind: "panic".to_owned(),
                error: format!(
                    "swe-env panicked while running this rollout ({message}): this is a bug, please report it \
                     with the log; the next invocation runs the rollout again"
                ),
                at: crate::trajectory::record::now_rfc3339(),
            },
            timing: RolloutTiming::default(),
            tokens: 0,
            turns: 0,
        }
    }

    fn set_elapsed(_output: &mut RolloutOutput, _elapsed: Duration) {
        // Each rollout measures its own wall time (it is part of the committed line).
    }
}

/// Tokens, turns and rollout wall time spent.
#[derive(Debug, Clone, Copy, Default)]
struct Spent {
    tokens: u64,
    turns: u64,
    wall_ms: u64,
}

impl Spent {
    fn add(&mut self, tokens: u64, turns: u64, wall_ms: u64) {
        self.tokens += tokens;
        self.turns += turns;
        self.wall_ms += wall_ms;
    }
}

/// Budget accounting shared by the workers (check before starting) and the collector (add what was spent).
struct BudgetState {
    budgets: Budgets,
    started: Instant,
    total: Spent,
    per_task: HashMap<String, Spent>,
    /// The first global budget found spent, in words.
    stopped: Option<String>,
    /// Tasks whose budget was found spent (message per task; the first is reported).
    task_stops: Vec<String>,
}

const RERUN: &str =
    "rerun the same command with a larger budget to continue (budgets are not part of the config hash)";

impl BudgetState {
    fn add(&mut self, instance_id: &str, tokens: u64, turns: u64, wall_ms: u64) {
        self.total.add(tokens, turns, wall_ms);
        self.per_task
            .entry(instance_id.to_owned())
            .or_default()
            .add(tokens, turns, wall_ms);
    }

    /// Why a rollout of `instance_id` may not start (`None`: it may).
    fn refusal(&mut self, instance_id: &str) -> Option<String> {
        if let Some(stopped) = &self.stopped {
            return Some(stopped.clone());
        }
        let b = self.budgets;
        let global = if b.tokens.is_some_and(|limit| self.total.tokens >= limit) {
            Some(format!(
                "the global token budget (--token-budget {}) is spent: {} tokens used",
                b.tokens.unwrap_or_default(),
                self.total.tokens
            ))
        } else if b.turns.is_some_and(|limit| self.total.turns >= limit) {
            Some(format!(
                "the global turn budget (--turn-budget {}) is spent: {} turns used",
                b.turns.unwrap_or_default(),
                self.total.turns
            ))
        } else if b
            .wall_secs
            .is_some_and(|limit| self.started.elapsed() >= Duration::from_secs(limit))
        {
            Some(format!(
                "the wall-clock budget of this invocation (--time-budget-secs {}) is spent",
                b.wall_secs.unwrap_or_default()
            ))
        } else {
            None
        };
        if let Some(message) = global {
            let message = format!("{message}; {RERUN}");
            self.stopped = Some(message.clone());
            return Some(message);
        }
        let task = self.per_task.get(instance_id).copied().unwrap_or_default();
        let refusal = if b.task_tokens.is_some_and(|limit| task.tokens >= limit) {
            Some(format!(
                "the per-task token budget (--task-token-budget {}) of {instance_id} is spent: {} tokens used",
                b.task_tokens.unwrap_or_default(),
                task.tokens
            ))
        } else if b.task_turns.is_some_and(|limit| task.turns >= limit) {
            Some(format!(
                "the per-task turn budget (--task-turn-budget {}) of {instance_id} is spent: {} turns used",
                b.task_turns.unwrap_or_default(),
                task.turns
            ))
        } else if b
            .task_wall_secs
            .is_some_and(|limit| task.wall_ms >= limit.saturating_mul(1000))
        {
            Some(format!(
                "the per-task time budget (--task-time-budget-secs {}) of {instance_id} is spent: {} s of \
                 rollouts",
                b.task_wall_secs.unwrap_or_default(),
                task.wall_ms / 1000
            ))
        } else {
            None
        };
        let refusal = refusal.map(|message| format!("{message}; {RERUN}"));
        if let Some(message) = &refusal {
            if !self.task_stops.iter().any(|m| m == message) {
                self.task_stops.push(message.clone());
            }
        }
        refusal
    }
}

/// Given-up rollouts named in `--json` and the data card (the count is always exact).
const MAX_GIVEN_UP_LISTED: usize = 1000;

/// Stops the harvest after `limit` rollout failures in a row of an outage kind
/// ([`crate::benchmark::is_outage_kind`]).
struct Breaker {
    limit: u32,
    streak: u32,
}

impl Breaker {
    fn new(limit: u32) -> Self {
        Self { limit, streak: 0 }
    }

    /// A rollout committed: the infrastructure works.
    fn succeeded(&mut self) {
        self.streak = 0;
    }

    /// A rollout failed with `kind`; `Some(why to stop)` once the streak reaches the limit.
    fn failed(&mut self, kind: &str, error: &str) -> Option<String> {
        if !crate::benchmark::is_outage_kind(kind) {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < self.limit {
            return None;
        }
        let what = if kind == "docker_unavailable" {
            "the Docker engine"
        } else {
            "the model endpoint"
        };
        let error = error.lines().next().unwrap_or_default();
        Some(format!(
            "{what} failed {} rollouts in a row (last: {error}): check it and rerun the same command \
             (--max-consecutive-failures sets how many)",
            self.streak
        ))
    }
}

/// Forwards the attempt path's notes (image pulls) to the harvest progress.
struct Notes(Arc<dyn HarvestProgress>);

impl Progress for Notes {
    fn finished(
        &self,
        _result: &crate::benchmark::results::InstanceResult,
        _resolved_so_far: usize,
        _done: usize,
        _total: usize,
    ) {
    }

    fn note(&self, message: &str) {
        self.0.note(message);
    }
}

/// What the workers share.
struct Context {
    attempts: Attempts,
    client: Arc<swe_env_model::ModelClient>,
    resolved: Resolved,
    work_dir: PathBuf,
    budgets: Arc<Mutex<BudgetState>>,
}

/// Runs a harvest into `out`: opens (or resumes) the store, runs every uncommitted rollout, writes the manifest
/// parquet and data card. `cancel` (Ctrl-C) stops starting rollouts and drops the ones in flight.
pub async fn run_harvest(
    engine: &DockerEngine,
    out: PathBuf,
    resolved: Resolved,
    datasets: Vec<DatasetInput>,
    progress: Arc<dyn HarvestProgress>,
    cancel: CancellationToken,
) -> Result<HarvestOutcome, HarvestError> {
    let started = Instant::now();
    let header = HarvestHeader {
        datasets: datasets
            .iter()
            .map(|d| DatasetEntry {
                source: d.source.clone(),
                sha256: d.sha256.clone(),
                rows: d.rows,
            })
            .collect(),
        config_hash: resolved.config_hash.clone(),
        config: resolved.hashed_config.clone(),
    };
    let client = swe_env_model::ModelClient::new(resolved.client.clone())
        .map_err(|e| HarvestError::Client(e.to_string()))?;
    let mut store = HarvestStore::open(
        &out,
        header,
        StoreOptions {
            max_shard_bytes: resolved.config.max_shard_bytes,
        },
    )
    .await?;
    // Containers of earlier swe-env processes that died (a killed harvest being resumed) go first.
    match swe_env_sandbox::collect_garbage(engine, swe_env_sandbox::GcScope::Orphans).await {
        Ok(report) if !report.removed.is_empty() => progress.note(&format!(
            "removed {} orphaned containers of dead swe-env processes",
            report.removed.len()
        )),
        Ok(_) => {}
        Err(error) => progress.note(&format!("warning: orphan clean-up failed: {error}")),
    }

    let mut budget_state = BudgetState {
        budgets: resolved.budgets,
        started,
        total: Spent::default(),
        per_task: HashMap::new(),
        stopped: None,
        task_stops: Vec::new(),
    };
    let committed = store.totals();
    budget_state
        .total
        .add(committed.tokens, committed.turns, committed.wall_ms);
    let mut totals = Totals {
        resolved_total: committed.resolved,
        ..Totals::default()
    };
    // Failures so far per rollout: a rollout that failed `max_rollout_failures` times is given up.
    let mut failures: HashMap<String, (u32, String)> = HashMap::new();
    for failure in read_failures(&out)? {
        // An outage (the endpoint or Docker down) says nothing about the rollout: only its own failures count
        // towards giving it up.
        if crate::benchmark::is_outage_kind(&failure.error_kind) {
            continue;
        }
        let entry = failures.entry(failure.rollout_id).or_default();
        entry.0 += 1;
        entry.1 = failure.error_kind;
    }
    let max_failures = resolved.config.max_rollout_failures;
    let mut given_up = Vec::new();
    let todo = Plan::count(
        datasets,
        PlanRules {
            samples: resolved.config.samples,
            config_hash: &resolved.config_hash,
            max_failures,
            retry_given_up: resolved.config.retry_given_up,
        },
        |id| store.is_committed(id),
        &failures,
        &mut totals,
        &mut given_up,
        |instance_id| {
            if !budget_state.per_task.contains_key(instance_id) {
                let task = store.task_totals(instance_id);
                let mut spent = Spent::default();
                spent.add(task.tokens, task.turns, task.wall_ms);
                budget_state.per_task.insert(instance_id.to_owned(), spent);
            }
        },
    );
    drop(failures);
    progress.begin(&totals);

    let work_dir = store.work_dir();
    let mut episode = resolved.episode.clone();
    episode.trajectory_dir = work_dir.clone();
    let run_config = RunConfig {
        run_id: "harvest".to_owned(),
        dir: out.clone(),
        logs_dir: work_dir.join("logs"),
        model_name: resolved.config.model.clone(),
        agent: AgentSpec::Empty,
        workers: resolved.config.workers,
        pull: resolved.config.pull,
        episode,
        grade: resolved.grade.clone(),
        retry_errors: true,
        ungraded_ids: Vec::new(),
        unknown_prediction_ids: Vec::new(),
        extra_settings: None,
    };
    let budgets = Arc::new(Mutex::new(budget_state));
    let context = Arc::new(Context {
        attempts: Attempts::new(engine, run_config, Arc::new(Notes(progress.clone()))),
        client: Arc::new(client),
        resolved: resolved.clone(),
        work_dir,
        budgets: budgets.clone(),
    });

    // Workers stop on Ctrl-C (`cancel`) or when a commit fails (`stop`, a child: it does not mark an interrupt).
    let stop = cancel.child_token();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let attempt = move |rollout: Rollout| {
        let context = context.clone();
        async move { run_rollout(&context, rollout).await }
    };
    let workers = run_workers(todo, resolved.config.workers, stop.clone(), attempt, sender);
    let mut store_error = None;
    let mut breaker = Breaker::new(resolved.config.max_consecutive_failures);
    let mut circuit_break = None;
    let collect = async {
        while let Some(output) = receiver.recv().await {
            let event = match output {
                RolloutOutput::Skipped {
                    instance_id,
                    sample_idx,
                } => {
                    totals.skipped_budget += 1;
                    RolloutEvent::Skipped {
                        instance_id,
                        sample_idx,
                    }
                }
                RolloutOutput::Failed {
                    failure,
                    timing,
                    tokens,
                    turns,
                } => {
                    lock(&budgets).add(&failure.instance_id, tokens, turns, timing.wall_ms);
                    totals.failed += 1;
                    *totals
                        .failed_by_kind
                        .entry(failure.error_kind.clone())
                        .or_default() += 1;
                    totals.tokens += tokens;
                    totals.time.add(&timing);
                    let event = RolloutEvent::Failed {
                        instance_id: failure.instance_id.clone(),
                        sample_idx: failure.sample_idx,
                        kind: failure.error_kind.clone(),
                        error: failure.error.clone(),
                    };
                    let tripped = breaker.failed(&failure.error_kind, &failure.error);
                    if let Err(error) = store.record_failure(failure).await {
                        warn!(%error, "cannot record a failed rollout (it is retried anyway)");
                    }
                    if let Some(message) = tripped {
                        if circuit_break.is_none() {
                            warn!(
                                message,
                                "too many infrastructure failures in a row; stopping the harvest"
                            );
                            progress.note(&format!("stopping: {message}"));
                            circuit_break = Some(message);
                            stop.cancel();
                        }
                    }
                    event
                }
                RolloutOutput::Line { line, work_file } => {
                    let timing = line.timing;
                    match store.commit(*line).await {
                        Ok(row) => {
                            let _ = tokio::fs::remove_file(&work_file).await;
                            breaker.succeeded();
                            account(&mut totals, &budgets, &row, &timing);
                            RolloutEvent::Committed {
                                instance_id: row.instance_id.clone(),
                                sample_idx: row.sample_idx,
                                resolved: row.resolved,
                                status: row.status.clone(),
                                wall_ms: row.wall_ms,
                            }
                        }
                        Err(error) => {
                            // The disk is full or the directory went away: nothing more can be committed.
                            warn!(%error, "cannot commit a rollout; stopping the harvest");
                            store_error.get_or_insert_with(|| error.to_string());
                            stop.cancel();
                            continue;
                        }
                    }
                }
            };
            progress.rollout(&event, &totals);
        }
    };
    let (stopped_early, ()) = tokio::join!(workers, collect);
    let interrupted = stopped_early && cancel.is_cancelled();
    if stopped_early {
        // In-flight episodes were dropped mid-way: remove every container this process still owns.
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(engine).await;
        info!(removed, "removed in-flight containers after a stop");
    }
    // A create request of a process killed just before this one started can land in the engine after the sweep at
    // start: sweep orphans once more so a resumed harvest leaves nothing of the killed one behind.
    match swe_env_sandbox::collect_garbage(engine, swe_env_sandbox::GcScope::Orphans).await {
        Ok(report) if !report.removed.is_empty() => {
            info!(
                removed = report.removed.len(),
                "removed late orphaned containers"
            )
        }
        Ok(_) => {}
        Err(error) => warn!(%error, "orphan clean-up at the end failed; run `swe-env gc`"),
    }
    let budget_stop = {
        let state = lock(&budgets);
        state
            .stopped
            .clone()
            .or_else(|| state.task_stops.first().cloned())
    };
    if totals.skipped_budget > 0 {
        if let Some(message) = &budget_stop {
            progress.note(&format!(
                "budget: {message} ({} rollouts not started)",
                totals.skipped_budget
            ));
        }
    }
    let committed_total = store.committed_count();
    let wall = started.elapsed();
    let spent = SpentSummary {
        invocation_wall_ms: wall.as_millis() as u64,
        committed_new: totals.committed_new,
        time: totals.time,
        prompt_tokens: totals.prompt_tokens,
        completion_tokens: totals.completion_tokens,
        failures_by_kind: totals.failed_by_kind.clone(),
        given_up: given_up.clone(),
    };
    let card = match store.finish(spent).await {
        Ok(card) => Some(card),
        Err(error) => {
            warn!(%error, "cannot write manifest.parquet / the data card");
            store_error.get_or_insert_with(|| error.to_string());
            None
        }
    };
    let budget_stop = budget_stop.filter(|_| totals.skipped_budget > 0);
    Ok(HarvestOutcome {
        out,
        totals,
        committed_total,
        wall,
        interrupted,
        budget_stop,
        store_error,
        circuit_break,
        given_up,
        card,
    })
}

fn lock(budgets: &Mutex<BudgetState>) -> std::sync::MutexGuard<'_, BudgetState> {
    budgets
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Adds a committed row to the counts and budgets.
fn account(
    totals: &mut Totals,
    budgets: &Mutex<BudgetState>,
    row: &ManifestRow,
    timing: &RolloutTiming,
) {
    totals.committed_new += 1;
    totals.resolved_total += u64::from(row.resolved);
    totals.tokens += row.total_tokens;
    totals.prompt_tokens += row.prompt_tokens;
    totals.completion_tokens += row.completion_tokens;
    totals.time.add(timing);
    lock(budgets).add(
        &row.instance_id,
        row.total_tokens,
        u64::from(row.n_turns),
        row.wall_ms,
    );
}

/// Runs one rollout (unless a budget forbids it) and makes its line or failure.
async fn run_rollout(context: &Context, rollout: Rollout) -> RolloutOutput {
    let instance_id = rollout.instance.instance_id.clone();
    if lock(&context.budgets).refusal(&instance_id).is_some() {
        return RolloutOutput::Skipped {
            instance_id,
            sample_idx: rollout.sample_idx,
        };
    }
    let started = Instant::now();
    let episode_id = format!(
        "{instance_id}.s{}.{}.{:04x}",
        rollout.sample_idx,
        &rollout.rollout_id[..8.min(rollout.rollout_id.len())],
        rand::random::<u16>()
    );
    let config = &context.resolved.config;
    let seed = rollout_seed(config.seed, &instance_id, rollout.sample_idx);
    let mut agent_config = context.resolved.agent.clone();
    agent_config.sampling.seed = Some(seed);
    if let Some(temperature) = config.temperature_for(rollout.sample_idx) {
        agent_config.sampling.temperature = Some(temperature);
    }
    let temperature = agent_config.sampling.temperature;
    let spec = AttemptSpec {
        grading_id: format!("{episode_id}-grade"),
        episode_id: episode_id.clone(),
        agent: AgentSpec::Model(Arc::new(ModelAgent {
            client: context.client.clone(),
            client_config: context.resolved.client.clone(),
            config: agent_config,
        })),
        logs_dir: None,
        kind: crate::benchmark::AttemptKind::Solve,
    };
    let output = context.attempts.run(&rollout.instance, &spec).await;
    let work_file = context.work_dir.join(format!("{episode_id}.jsonl"));
    let result = output.result;
    let mut timing = RolloutTiming {
        wall_ms: started.elapsed().as_millis() as u64,
        start_ms: output.timing.start_ms,
        model_ms: result.model_ms,
        tool_ms: 0,
        grade_ms: output.timing.grade_ms,
    };
    let failed = |kind: &str, error: String, timing: RolloutTiming| RolloutOutput::Failed {
        failure: RolloutFailure {
            rollout_id: rollout.rollout_id.clone(),
            instance_id: instance_id.clone(),
            sample_idx: rollout.sample_idx,
            error_kind: kind.to_owned(),
            error,
            at: crate::trajectory::record::now_rfc3339(),
        },
        timing,
        tokens: result.tokens,
        turns: u64::from(result.n_steps),
    };
    if result.status == InstanceStatus::Error {
        let _ = tokio::fs::remove_file(&work_file).await;
        return failed(
            result.error_kind.as_deref().unwrap_or("error"),
            result.error.clone().unwrap_or_default(),
            timing,
        );
    }
    let read = match read_trajectory(&work_file).await {
        Ok(read) => read,
        Err(error) => {
            let _ = tokio::fs::remove_file(&work_file).await;
            return failed("trajectory", error.to_string(), timing);
        }
    };
    let (Some(start), Some(end)) = (read.start, read.end) else {
        let _ = tokio::fs::remove_file(&work_file).await;
        return failed(
            "trajectory",
            format!(
                "trajectory {} has no episode_start or episode_end",
                work_file.display()
            ),
            timing,
        );
    };
    timing.tool_ms = read.steps.iter().map(|s| s.tool_ms).sum();
    let mut records = Vec::with_capacity(read.steps.len() + 2);
    records.push(Record::EpisodeStart(start));
    records.extend(read.steps.into_iter().map(Record::Step));
    records.push(Record::EpisodeEnd(end));
    RolloutOutput::Line {
        line: Box::new(RolloutLine {
            rollout_id: rollout.rollout_id,
            dataset_sha256: rollout.dataset_sha256.to_string(),
            config_hash: context.resolved.config_hash.clone(),
            instance_id,
            repo: rollout.instance.repo.clone(),
            sample_idx: rollout.sample_idx,
            seed: Some(seed),
            temperature,
            model: context.resolved.config.model.clone(),
            resolved: result.status == InstanceStatus::Resolved,
            timing,
            records,
        }),
        work_file,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Instance {
        swe_env_grading::dataset::instance_from_value(
            serde_json::json!({"repo": "o/r", "instance_id": id,
            "base_commit": "abc", "test_patch": "x", "version": "1.0"}),
        )
        .unwrap()
    }

    fn dataset(sha256: &str, ids: &[&str]) -> DatasetInput {
        DatasetInput {
            source: sha256.to_owned(),
            sha256: sha256.to_owned(),
            rows: ids.len() as u64,
            instances: ids.iter().map(|id| task(id)).collect(),
        }
    }

    fn rules(samples: u32) -> PlanRules<'static> {
        PlanRules {
            samples,
            config_hash: "cfg",
            max_failures: 2,
            retry_given_up: false,
        }
    }

    /// The lazy plan yields exactly what the materialised one did: rows × samples in dataset order, minus committed,
    /// given-up and twice-given rows, with the counts for progress from the counting pass.
    #[test]
    fn the_plan_skips_committed_given_up_and_repeated_rollouts_as_it_goes() {
        let datasets = vec![dataset("d1", &["a", "b", "a"]), dataset("d2", &["a", "c"])];
        let committed: HashSet<String> = [
            rollout_id("d1", "a", 1, "cfg"),
            rollout_id("d2", "c", 0, "cfg"),
            rollout_id("d2", "c", 1, "cfg"),
            rollout_id("d2", "c", 2, "cfg"),
        ]
        .into();
        let mut failures = HashMap::new();
        failures.insert(rollout_id("d1", "b", 0, "cfg"), (2, "panic".to_owned()));
        failures.insert(rollout_id("d1", "b", 2, "cfg"), (1, "panic".to_owned()));
        let (mut totals, mut given_up, mut rows) = (Totals::default(), Vec::new(), Vec::new());
        let plan = Plan::count(
            datasets,
            rules(3),
            |id| committed.contains(id),
            &failures,
            &mut totals,
            &mut given_up,
            |id| rows.push(id.to_owned()),
        );
        assert_eq!(rows, ["a", "b", "a", "c"]);
        assert_eq!(
            (totals.planned, totals.committed_before, totals.given_up),
            (12, 4, 1)
        );
        assert_eq!(given_up, ["b s0: 2 failures, last panic"]);
        assert_eq!(plan.size_hint(), (7, Some(7)));
        let got: Vec<(String, String, u32, String)> = plan
            .map(|r| {
                (
                    r.dataset_sha256.to_string(),
                    r.instance.instance_id.clone(),
                    r.sample_idx,
                    r.rollout_id,
                )
            })
            .collect();
        let want: Vec<(String, String, u32, String)> = [
            ("d1", "a", 0),
            ("d1", "a", 2),
            ("d1", "b", 1),
            ("d1", "b", 2),
            ("d2", "a", 0),
            ("d2", "a", 1),
            ("d2", "a", 2),
        ]
        .into_iter()
        .map(|(d, i, k)| (d.to_owned(), i.to_owned(), k, rollout_id(d, i, k, "cfg")))
        .collect();
        assert_eq!(got, want);
        assert_eq!(totals.to_run(), 7);
    }

    /// Current resident set size (VmRSS), bytes.
    fn rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }

    /// Planning 1 M rollouts (1 000 rows × K = 1 000) allocates nothing per rollout: the counting pass keeps one bit
    /// each (125 KB) and the iterator makes a rollout only when pulled. The list it replaced held ~100 bytes a
    /// rollout (~100 MB here).
    #[test]
    fn planning_millions_of_rollouts_allocates_nothing_per_rollout() {
        const ROWS: usize = 1_000;
        const K: u32 = 1_000;
        let ids: Vec<String> = (0..ROWS).map(|i| format!("o__r-{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let datasets = vec![dataset("d", &refs)];
        let before = rss();
        let (mut totals, mut given_up) = (Totals::default(), Vec::new());
        let mut plan = Plan::count(
            datasets,
            rules(K),
            |_| false,
            &HashMap::new(),
            &mut totals,
            &mut given_up,
            |_| {},
        );
        assert_eq!(totals.planned, ROWS as u64 * u64::from(K));
        assert_eq!(plan.size_hint().0, ROWS * K as usize);
        let first = plan.next().unwrap();
        assert_eq!(
            (first.instance.instance_id.as_str(), first.sample_idx),
            ("o__r-0", 0)
        );
        let pulled = plan.by_ref().take(100_000).count();
        assert_eq!(pulled, 100_000);
        let growth = rss().saturating_sub(before);
        println!(
            "plan of {} rollouts: RSS growth {:.1} MB",
            totals.planned,
            growth as f64 / 1e6
        );
        assert!(
            growth < 32_000_000,
            "RSS grew {growth} bytes planning 1 M rollouts"
        );
        assert_eq!(plan.size_hint().0, ROWS * K as usize - 100_001);
    }

    fn state(budgets: Budgets) -> BudgetState {
        BudgetState {
            budgets,
            started: Instant::now(),
            total: Spent::default(),
            per_task: HashMap::new(),
            stopped: None,
            task_stops: Vec::new(),
        }
    }

    #[test]
    fn the_breaker_trips_on_infrastructure_failures_in_a_row_only() {
        let mut breaker = Breaker::new(3);
        assert_eq!(breaker.failed("model_endpoint", "refused"), None);
        assert_eq!(breaker.failed("model_endpoint", "refused"), None);
        breaker.succeeded();
        assert_eq!(breaker.failed("model_endpoint", "refused"), None);
        assert_eq!(breaker.failed("image_missing", "no image"), None);
        assert_eq!(breaker.failed("model_endpoint", "refused"), None);
        assert_eq!(breaker.failed("docker_unavailable", "no docker"), None);
        let message = breaker
            .failed("model_endpoint", "connection refused\nmore")
            .unwrap();
        assert!(
            message.contains("the model endpoint failed 3 rollouts in a row"),
            "{message}"
        );
        assert!(message.contains("connection refused"), "{message}");
        assert!(message.contains("rerun"), "{message}");
    }

    #[test]
    fn a_corrupt_store_is_a_usage_error() {
        let error = HarvestError::Store(StoreError::Corrupt {
            path: "manifest.jsonl".into(),
            detail: "bad".into(),
        });
        assert!(error.is_usage());
        let io = HarvestError::Store(StoreError::Io {
            op: "write",
            path: "x".into(),
            source: std::io::Error::other("full"),
        });
        assert!(!io.is_usage());
    }

    #[test]
    fn a_spent_task_budget_stops_only_that_task() {
        let mut state = state(Budgets {
            task_turns: Some(5),
            ..Budgets::default()
        });
        assert_eq!(state.refusal("a"), None);
        state.add("a", 100, 5, 10);
        let refusal = state.refusal("a").unwrap();
        assert!(refusal.contains("--task-turn-budget 5"), "{refusal}");
        assert!(refusal.contains("rerun"), "{refusal}");
        assert_eq!(state.refusal("b"), None);
        assert_eq!(state.task_stops.len(), 1);
    }

    #[test]
    fn a_spent_global_budget_stops_everything_and_stays_spent() {
        let mut state = state(Budgets {
            tokens: Some(1000),
            task_tokens: Some(10_000),
            ..Budgets::default()
        });
        state.add("a", 600, 1, 10);
        assert_eq!(state.refusal("b"), None);
        state.add("b", 600, 1, 10);
        let refusal = state.refusal("c").unwrap();
        assert!(refusal.contains("--token-budget 1000"), "{refusal}");
        assert!(refusal.contains("1200 tokens"), "{refusal}");
        assert_eq!(state.refusal("a"), Some(refusal));
    }

    #[test]
    fn the_task_time_budget_counts_rollout_wall_time() {
        let mut state = state(Budgets {
            task_wall_secs: Some(2),
            ..Budgets::default()
        });
        state.add("a", 0, 0, 1999);
        assert_eq!(state.refusal("a"), None);
        state.add("a", 0, 0, 1);
        assert!(state
            .refusal("a")
            .unwrap()
            .contains("--task-time-budget-secs 2"));
    }
}
