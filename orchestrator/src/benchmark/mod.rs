//! Benchmark runs: for each instance, an episode with the chosen agent → submission → grading in a fresh container
//! → rewards; bounded concurrency, resumable (`results.jsonl`), clean on Ctrl-C, reference-compatible outputs.
//! `swe-env run-benchmark` and `swe-env evaluate` are both this runner (evaluate grades given predictions).

mod attempt;
mod image;
pub mod manifest;
pub mod results;
pub mod summary;
mod workers;

pub use attempt::{
    is_outage_kind, AgentError, AttemptError, AttemptKind, AttemptOutput, AttemptSpec, PhaseTimes,
    Usage,
};
pub use image::ImageError;
pub use workers::{run_workers, Job};

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use swe_env_grading::dataset::Instance;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::episode::EpisodeConfig;
use crate::grade::GradeConfig;
use results::{read_results, InstanceResult, InstanceStatus, ResultsFile};
use summary::{finish_run, RunStats};
use swe_env_sandbox::{DockerEngine, SandboxError};

/// Network of grading containers (a closed set: a typo fails when the arguments are parsed).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum GradingNetwork {
    /// Docker's default bridge, as the reference harness grades (the tests may reach the network).
    #[default]
    Bridge,
    /// No network (only `lo`): the submission's tests are isolated.
    None,
    /// The host's network stack (for tests that need a service on the host).
    Host,
}

impl GradingNetwork {
    /// The Docker `network_mode` value.
    pub fn as_docker_mode(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::None => "none",
            Self::Host => "host",
        }
    }
}

/// When images are pulled.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Pull an image only when it is not present locally (default).
    #[default]
    Missing,
    /// Always pull (refresh tags).
    Always,
    /// Never pull: a missing image is a per-instance error.
    Never,
}

/// Who produces the submissions.
#[derive(Clone)]
pub enum AgentSpec {
    /// The gold agent: replays the reference patch through the tools.
    Gold,
    /// Submits nothing (an empty patch).
    Empty,
    /// Given predictions (`instance_id` → patch) under a model name; no episode runs.
    Predictions {
        /// `model_name_or_path` of the predictions.
        name: String,
        /// The patches (`None` = a null prediction).
        patches: Arc<HashMap<String, Option<String>>>,
    },
    /// A model behind an OpenAI-compatible endpoint, driven by the agent loop.
    Model(Arc<ModelAgent>),
}

/// A model agent: the client (shared by all workers: its concurrency limit is per endpoint) and the loop config.
pub struct ModelAgent {
    /// The HTTP client (shared: runners that vary the sampling per attempt share one client).
    pub client: Arc<swe_env_model::ModelClient>,
    /// Its configuration (recorded in trajectories, API key excluded).
    pub client_config: swe_env_model::ClientConfig,
    /// The agent loop's configuration.
    pub config: crate::agent::ModelAgentConfig,
}

impl AgentSpec {
    /// The name used as `model_name_or_path`.
    pub fn name(&self) -> &str {
        match self {
            Self::Gold => "gold",
            Self::Empty => "empty",
            Self::Predictions { name, .. } => name,
            Self::Model(model) => &model.client_config.model,
        }
    }
}

/// Everything a run needs besides the instances.
#[derive(Clone)]
pub struct RunConfig {
    /// Run id (the output directory's name).
    pub run_id: String,
    /// Output directory of this run (`<output-dir>/<run-id>`).
    pub dir: PathBuf,
    /// Directory of per-instance grading logs (`<dir>/logs` by default).
    pub logs_dir: PathBuf,
    /// Name recorded as `model_name_or_path`.
    pub model_name: String,
    /// The agent.
    pub agent: AgentSpec,
    /// Instances run at once.
    pub workers: usize,
    /// Image pull policy.
    pub pull: PullPolicy,
    /// Episode settings (budgets, sandbox limits, image template); `trajectory_dir` is set per run.
    pub episode: EpisodeConfig,
    /// Grading settings.
    pub grade: GradeConfig,
    /// Re-run instances whose earlier result was an error.
    pub retry_errors: bool,
    /// Selected dataset rows that are not run (evaluate: no prediction); report.json counts them as incomplete,
    /// like the reference harness.
    pub ungraded_ids: Vec<String>,
    /// Prediction ids that are not in the dataset; counted in the summary.
    pub unknown_prediction_ids: Vec<String>,
    /// Result-changing settings of a runner built on this one (test-time scaling: samples, selectors, the
    /// test-generation prompt), recorded in manifest.json's `settings.scaling` and compared on resume; `None`
    /// for a plain run (its manifest has no such key).
    pub extra_settings: Option<serde_json::Value>,
}

/// The directory name of a model in the reference log layout (`/` → `__`, as the harness does).
pub fn log_dir_name(model: &str) -> String {
    model.replace('/', "__")
}

/// What a run produced.
#[derive(Debug)]
pub struct RunOutcome {
    /// Aggregates.
    pub stats: RunStats,
    /// Every result (earlier attempts included).
    pub results: Vec<InstanceResult>,
    /// The run was interrupted (Ctrl-C).
    pub interrupted: bool,
}

/// Reports progress to the caller (progress bar, logs).
pub trait Progress: Send + Sync {
    /// An instance finished.
    fn finished(&self, result: &InstanceResult, resolved_so_far: usize, done: usize, total: usize);
    /// A status line (pulls, skips).
    fn note(&self, message: &str);
    /// A unit of work other than a whole instance finished (a sample, a generated test of a scaled run):
    /// `line` says which and how; `done` of `total` units are finished.
    fn advanced(&self, line: &str, done: usize, total: usize) {
        let _ = (done, total);
        self.note(line);
    }
}

/// Runs `instances`; resumes from `<dir>/results.jsonl`; stops cleanly when `cancel` is cancelled.
pub async fn run_benchmark(
    engine: &DockerEngine,
    instances: Vec<Instance>,
    config: RunConfig,
    progress: Arc<dyn Progress>,
    cancel: CancellationToken,
) -> std::io::Result<RunOutcome> {
    let started = Instant::now();
    tokio::fs::create_dir_all(&config.dir).await?;
    let results_path = config.dir.join("results.jsonl");
    let earlier = read_results(&results_path).await?;
    let total = instances.len();
    let dataset_ids: Vec<String> = instances.iter().map(|i| i.instance_id.clone()).collect();
    let mut done: BTreeMap<String, InstanceResult> = BTreeMap::new();
    let mut todo = Vec::new();
    for instance in instances {
        match earlier.get(&instance.instance_id) {
            Some(result) if !(config.retry_errors && result.status == InstanceStatus::Error) => {
                done.insert(instance.instance_id.clone(), result.clone());
            }
            _ => todo.push(instance),
        }
    }
    if !done.is_empty() {
        progress.note(&format!(
            "resuming: {} of {total} instances already finished",
            done.len()
        ));
    }
    let mut episode_config = config.episode.clone();
    episode_config.trajectory_dir = config.dir.join("trajectories");
    let mut recorder = Recorder {
        file: ResultsFile::open(&results_path).await?,
        done: done.len(),
        resolved: done
            .values()
            .filter(|r| r.status == InstanceStatus::Resolved)
            .count(),
        total,
        progress: progress.clone(),
    };
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        config: config.clone(),
        episode_config,
        pulls: Mutex::new(HashMap::new()),
        progress,
    });
    // Workers run the instances; this task records each result as it arrives (a panicking instance included).
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let attempt = move |instance: Instance| {
        let shared = shared.clone();
        async move { attempt::attempt_instance(&shared, &instance).await }
    };
    let workers = workers::run_workers(todo, config.workers, cancel.clone(), attempt, sender);
    let collect = async {
        while let Some(result) = receiver.recv().await {
            recorder.record(&result).await;
            done.insert(result.instance_id.clone(), result);
        }
    };
    let (interrupted, ()) = tokio::join!(workers, collect);
    if interrupted {
        // In-flight episodes were dropped mid-way: remove every container this process still owns.
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(engine).await;
        info!(removed, "removed in-flight containers after interrupt");
    }
    let results: Vec<InstanceResult> = done.into_values().collect();
    let stats = finish_run(&config, &dataset_ids, &results, started.elapsed()).await?;
    Ok(RunOutcome {
        stats,
        results,
        interrupted,
    })
}

/// Runs single attempts with the benchmark's path (image → episode → grading → trajectory end) for other runners
/// (`harvest`): the caller names each attempt's episode, grading id and agent ([`AttemptSpec`]).
#[derive(Clone)]
pub struct Attempts {
    shared: Arc<Shared>,
}

impl Attempts {
    /// Attempts under `config` (its `episode.trajectory_dir` is where trajectories are written; its `agent`,
    /// `run_id` and `logs_dir` are not used: each [`AttemptSpec`] says).
    pub fn new(engine: &DockerEngine, config: RunConfig, progress: Arc<dyn Progress>) -> Self {
        let episode_config = config.episode.clone();
        Self {
            shared: Arc::new(Shared {
                engine: engine.clone(),
                config,
                episode_config,
                pulls: Mutex::new(HashMap::new()),
                progress,
            }),
        }
    }

    /// Runs one attempt of `instance` as `spec` says.
    pub async fn run(&self, instance: &Instance, spec: &AttemptSpec) -> AttemptOutput {
        attempt::attempt_with(&self.shared, instance, spec).await
    }
}

/// The outcome of one image pull, shared by every instance that needs the image.
type PullCell = tokio::sync::OnceCell<Result<(), ImageError>>;

/// What every instance of a run shares.
struct Shared {
    engine: DockerEngine,
    config: RunConfig,
    episode_config: EpisodeConfig,
    /// One pull per image at a time; the value is the pull's outcome.
    pulls: Mutex<HashMap<String, Arc<PullCell>>>,
    progress: Arc<dyn Progress>,
}

/// Records finished instances: `results.jsonl` (fsynced) and progress.
struct Recorder {
    file: ResultsFile,
    done: usize,
    resolved: usize,
    total: usize,
    progress: Arc<dyn Progress>,
}

impl Recorder {
    async fn record(&mut self, result: &InstanceResult) {
        if let Err(error) = self.file.append(result).await {
            warn!(path = %self.file.path().display(), %error, "cannot record a result; the run cannot resume this instance");
        }
        self.done += 1;
        if result.status == InstanceStatus::Resolved {
            self.resolved += 1;
        }
        self.progress
            .finished(result, self.resolved, self.done, self.total);
    }
}

/// A fresh run id: the current time and a random suffix (`YYYYmmdd-HHMMSS-xxxx`), so runs started in the same
/// second get different directories.
pub fn default_run_id() -> String {
    let now = crate::trajectory::record::now_rfc3339();
    // 2026-11-25T20:36:36.123Z → 20261125-203636-3f9a
    let digits: String = now.chars().take(19).filter(char::is_ascii_digit).collect();
    let (date, time) = digits.split_at(8.min(digits.len()));
    format!("{date}-{time}-{:04x}", rand::random::<u16>())
}

/// The seed of a rollout: the first 8 bytes (big-endian) of sha256(`{base_seed}\n{instance_id}\n{sample_idx}`),
/// masked to 2^53 − 1 so it survives JSON readers that use doubles.
pub fn rollout_seed(base_seed: u64, instance_id: &str, sample_idx: u32) -> u64 {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{base_seed}\n{instance_id}\n{sample_idx}").as_bytes(),
    );
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first) & ((1u64 << 53) - 1)
}
