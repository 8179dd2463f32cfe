//! Benchmark runs: for each instance, an episode with the chosen agent → submission → grading in a fresh container
//! → rewards; bounded concurrency, resumable (`results.jsonl`), clean on Ctrl-C, reference-compatible outputs.
//! `swe-env run-benchmark` and `swe-env evaluate` are both this runner (evaluate grades given predictions).

pub mod manifest;
pub mod results;
pub mod summary;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use swe_env_grading::dataset::Instance;
use tokio::sync::{watch, Mutex, Semaphore};
use tracing::{info, warn};

use crate::agent::{builtin_prompt, run_gold, AgentOutcome};
use crate::episode::{EndInfo, Episode, EpisodeConfig, StartInfo};
use crate::grade::{grade_patch, write_instance_logs, GradeConfig, GradeError};
use crate::sandbox::{DockerEngine, SandboxError};
use crate::task::image_for;
use crate::trajectory::EpisodeStatus;
use results::{read_results, InstanceResult, InstanceStatus, ResultsFile};
use summary::{finish_run, RunStats};

/// When images are pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
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
    /// The HTTP client.
    pub client: swe_env_model::ModelClient,
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
}

/// Runs `instances`; resumes from `<dir>/results.jsonl`; stops cleanly when `cancel` flips to true.
pub async fn run_benchmark(
    engine: &DockerEngine,
    instances: Vec<Instance>,
    config: RunConfig,
    progress: Arc<dyn Progress>,
    cancel: watch::Receiver<bool>,
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
    let shared = Arc::new(Shared {
        engine: engine.clone(),
        config: config.clone(),
        episode_config,
        results: Mutex::new(ResultsFile::open(&results_path).await?),
        pulls: Mutex::new(HashMap::new()),
        counters: std::sync::Mutex::new(Counters {
            done: done.len(),
            resolved: done
                .values()
                .filter(|r| r.status == InstanceStatus::Resolved)
                .count(),
        }),
        total,
        progress,
    });
    let semaphore = Arc::new(Semaphore::new(config.workers.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for instance in todo {
        let shared = shared.clone();
        let semaphore = semaphore.clone();
        let mut cancel = cancel.clone();
        tasks.spawn(async move {
            let Ok(_permit) = semaphore.acquire_owned().await else {
                return None;
            };
            if *cancel.borrow() {
                return None;
            }
            tokio::select! {
                result = run_instance(&shared, &instance) => Some(result),
                _ = cancel.wait_for(|c| *c) => None,
            }
        });
    }
    let mut interrupted = false;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Some(result)) => {
                done.insert(result.instance_id.clone(), result);
            }
            Ok(None) => interrupted = true,
            Err(error) => warn!(%error, "an instance task failed"),
        }
    }
    interrupted |= *cancel.borrow();
    if interrupted {
        // In-flight episodes were dropped mid-way: remove every container this process still owns. A create
        // request dropped mid-flight may still land in the engine, so sweep until a pass finds nothing.
        for pass in 0..5 {
            match crate::sandbox::gc::remove_owned(engine).await {
                Ok(0) if pass > 0 => break,
                Ok(n) => info!(
                    removed = n,
                    pass, "removed in-flight containers after interrupt"
                ),
                Err(error) => {
                    warn!(%error, "could not remove in-flight containers; run `swe-env gc`")
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    }
    let results: Vec<InstanceResult> = done.into_values().collect();
    let stats = finish_run(&config, &dataset_ids, &results, started.elapsed()).await?;
    Ok(RunOutcome {
        stats,
        results,
        interrupted,
    })
}

/// The outcome of one image pull, shared by every instance that needs the image.
type PullCell = tokio::sync::OnceCell<Result<(), ImageError>>;

struct Counters {
    done: usize,
    resolved: usize,
}

struct Shared {
    engine: DockerEngine,
    config: RunConfig,
    episode_config: EpisodeConfig,
    results: Mutex<ResultsFile>,
    /// One pull per image at a time; the value is the pull's outcome.
    pulls: Mutex<HashMap<String, Arc<PullCell>>>,
    counters: std::sync::Mutex<Counters>,
    total: usize,
    progress: Arc<dyn Progress>,
}

async fn run_instance(shared: &Shared, instance: &Instance) -> InstanceResult {
    let started = Instant::now();
    let mut result = attempt_instance(shared, instance).await;
    result.total_ms = started.elapsed().as_millis() as u64;
    {
        let mut file = shared.results.lock().await;
        if let Err(error) = file.append(&result).await {
            warn!(path = %file.path().display(), %error, "cannot record a result; the run cannot resume this instance");
        }
    }
    let (resolved, done) = match shared.counters.lock() {
        Ok(mut counters) => {
            counters.done += 1;
            if result.status == InstanceStatus::Resolved {
                counters.resolved += 1;
            }
            (counters.resolved, counters.done)
        }
        Err(_) => (0, 0),
    };
    shared
        .progress
        .finished(&result, resolved, done, shared.total);
    result
}

async fn attempt_instance(shared: &Shared, instance: &Instance) -> InstanceResult {
    let id = &instance.instance_id;
    let repo = &instance.repo;
    let image = image_for(instance, &shared.episode_config.image_template);
    if let Err(error) = ensure_image(shared, &image).await {
        let mut result = InstanceResult::error(id, repo, error.kind(), error.to_string());
        // A given prediction is a submission even when its image is missing: the harness counts it as an error,
        // not as incomplete.
        if let AgentSpec::Predictions { patches, .. } = &shared.config.agent {
            result.submission = patches.get(id).cloned().flatten();
        }
        return result;
    }
    // The submission, from an episode or from the given predictions.
    let mut episode = None;
    let mut usage = (0u64, 0u64); // (tokens, model ms)
    let mut final_answer = None;
    let mut end_detail = None;
    let (submission, agent_outcome) = match &shared.config.agent {
        // Given predictions (a file, or the gold / empty patches): no episode, the patch is graded as is.
        AgentSpec::Predictions { patches, .. } => match patches.get(id) {
            Some(patch) => (patch.clone(), None),
            None => {
                // `evaluate` runs only predicted instances; a library caller that passes others gets this.
                return InstanceResult::error(
                    id,
                    repo,
                    "no_prediction",
                    format!("no prediction for {id}: pass only instances that have one"),
                );
            }
        },
        agent => {
            let episode_id = format!("{}-{}", shared.config.run_id, id);
            let trajectory = shared
                .episode_config
                .trajectory_dir
                .join(format!("{episode_id}.jsonl"));
            // A rerun after an interrupt starts its trajectory afresh.
            let _ = tokio::fs::remove_file(&trajectory).await;
            let mut episode_config = shared.episode_config.clone();
            let info = match agent {
                AgentSpec::Model(model) => {
                    episode_config.tool_format = model.config.mode.tool_format();
                    match crate::agent::start_info_for(instance, &model.config, &episode_config) {
                        Ok(mut info) => {
                            crate::agent::add_client_info(&mut info, &model.client_config);
                            info
                        }
                        Err(error) => {
                            return InstanceResult::error(
                                id,
                                repo,
                                "prompt_template",
                                error.to_string(),
                            );
                        }
                    }
                }
                _ => StartInfo {
                    model: None,
                    prompt: builtin_prompt(&instance.problem_statement),
                },
            };
            let mut started = match Episode::start(
                &shared.engine,
                &episode_id,
                instance.clone(),
                episode_config,
                info,
            )
            .await
            {
                Ok(episode) => episode,
                Err(error) => {
                    return InstanceResult::error(
                        id,
                        repo,
                        error_kind_of_episode(&error),
                        error.to_string(),
                    )
                }
            };
            let outcome = match agent {
                AgentSpec::Gold => run_gold(&mut started).await.map(|o| (o, None)),
                AgentSpec::Model(model) => {
                    crate::agent::run_model_agent(&mut started, &model.client, &model.config, None)
                        .await
                        .map(|o| (o.agent.clone(), Some(o)))
                }
                _ => Ok((crate::agent::run_empty(&started), None)),
            };
            let (outcome, model_outcome) = match outcome {
                Ok(outcome) => outcome,
                Err(error) => {
                    let _ = started
                        .finish(EndInfo::status(EpisodeStatus::SandboxError))
                        .await;
                    return InstanceResult::error(
                        id,
                        repo,
                        error_kind_of_episode(&error),
                        error.to_string(),
                    );
                }
            };
            if let Err(error) = started.release_sandbox().await {
                warn!(instance_id = %id, %error, "releasing the episode sandbox failed");
            }
            if let Some(model_outcome) = &model_outcome {
                usage = (
                    model_outcome.total_tokens(),
                    model_outcome.model_time.as_millis() as u64,
                );
                if outcome.status == EpisodeStatus::ModelError {
                    let detail = model_outcome
                        .detail
                        .clone()
                        .unwrap_or_else(|| "model endpoint failed".to_owned());
                    let _ = started.finish(model_outcome.end_info()).await;
                    let mut result = InstanceResult::error(id, repo, "model_endpoint", detail);
                    result.n_steps = outcome.n_steps;
                    result.episode_status = Some(outcome.status.as_str().to_owned());
                    (result.tokens, result.model_ms) = usage;
                    return result;
                }
                final_answer = model_outcome.final_answer.clone();
                end_detail = model_outcome.detail.clone();
            }
            let submission = match agent {
                AgentSpec::Empty => Some(String::new()),
                _ => outcome.submission.clone(),
            };
            episode = Some(started);
            (submission, Some(outcome))
        }
    };
    let grading_id = format!("{}-{}-grade", shared.config.run_id, id);
    let graded = grade_patch(
        &shared.engine,
        instance,
        submission.as_deref(),
        &shared.config.grade,
        &grading_id,
    )
    .await;
    let outcome = match graded {
        Ok(outcome) => outcome,
        Err(error) => {
            if let Some(episode) = episode.as_mut() {
                let mut end = EndInfo::status(
                    agent_outcome
                        .as_ref()
                        .map_or(EpisodeStatus::Submitted, |o| o.status),
                );
                end.detail = Some(format!("grading failed: {error}"));
                let _ = episode.finish(end).await;
            }
            let kind = match error {
                GradeError::Spec { .. } => "grading_spec",
                GradeError::Sandbox(ref e) => error_kind_of_sandbox(e),
            };
            let mut result = InstanceResult::error(id, repo, kind, error.to_string());
            result.submission = submission;
            return result;
        }
    };
    if let Err(error) =
        write_instance_logs(&shared.config.logs_dir, &outcome, submission.as_deref()).await
    {
        warn!(instance_id = %id, %error, "cannot write grading logs");
    }
    let n_steps = agent_outcome
        .as_ref()
        .map_or(0, |o: &AgentOutcome| o.n_steps);
    let episode_status = agent_outcome.as_ref().map(|o| o.status.as_str().to_owned());
    if let Some(episode) = episode.as_mut() {
        let mut end = EndInfo::status(
            agent_outcome
                .as_ref()
                .map_or(EpisodeStatus::Submitted, |o| o.status),
        );
        end.final_answer = final_answer;
        end.detail = end_detail;
        end.rewards = serde_json::to_value(&outcome.rewards).ok();
        end.grading = serde_json::to_value(&outcome.report).ok();
        if let Err(error) = episode.finish(end).await {
            warn!(instance_id = %id, %error, "cannot finish the trajectory");
        }
    }
    InstanceResult {
        instance_id: id.clone(),
        repo: repo.clone(),
        status: if outcome.resolved {
            InstanceStatus::Resolved
        } else {
            InstanceStatus::Unresolved
        },
        error_kind: None,
        error: None,
        episode_status,
        submission,
        n_steps,
        tokens: usage.0,
        model_ms: usage.1,
        test_ms: outcome.test_ms,
        total_ms: 0,
        report: Some(outcome.report),
        rewards: Some(outcome.rewards),
    }
}

/// Why an instance's image is not available; [`ImageError::kind`] is the `error_kind` of its result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// Not present locally and `--pull never`.
    #[error(
        "image {image} is not present and --pull never forbids pulling: build or pull it first \
         (`swe-env images pull …`), or use --pull missing"
    )]
    NotPresent {
        /// The image.
        image: String,
    },
    /// The registry has no such image (or tag).
    #[error("image {image} does not exist in its registry ({detail}): check the name and --image-template")]
    NotFound {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// The registry refused the credentials (or the repository is private).
    #[error(
        "pulling {image} was denied ({detail}): `docker login` to its registry, or check the name"
    )]
    Auth {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// The registry could not be reached (DNS, connection refused, TLS, timeout).
    #[error("the registry of {image} is unreachable ({detail}): check the network, proxy and registry host")]
    RegistryUnreachable {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// Any other pull failure.
    #[error("cannot pull {image}: {detail} (check the image name template and registry access)")]
    Pull {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// The Docker engine itself failed.
    #[error("{0}")]
    Engine(String),
}

impl ImageError {
    /// The `error_kind` recorded in results.jsonl.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotPresent { .. } | Self::NotFound { .. } => "image_missing",
            Self::Auth { .. } => "registry_auth",
            Self::RegistryUnreachable { .. } => "registry_unreachable",
            Self::Pull { .. } => "pull_failed",
            Self::Engine(_) => "docker_unavailable",
        }
    }

    /// Classifies a failed pull of `image` by what the engine reported.
    fn from_pull(image: &str, error: SandboxError) -> Self {
        let detail = match error {
            SandboxError::ImageNotFound { image: what } => {
                return Self::NotFound {
                    image: image.to_owned(),
                    detail: what,
                }
            }
            SandboxError::EngineUnavailable { .. } => return Self::Engine(error.to_string()),
            SandboxError::Docker { detail, .. } => detail,
            other => other.to_string(),
        };
        let lower = detail.to_ascii_lowercase();
        let image = image.to_owned();
        if lower.contains("unauthorized")
            || lower.contains("authentication required")
            || lower.contains("pull access denied")
            || lower.contains("denied:")
        {
            Self::Auth { image, detail }
        } else if lower.contains("manifest unknown")
            || lower.contains("not found")
            || lower.contains("does not exist")
        {
            Self::NotFound { image, detail }
        } else if lower.contains("connection refused")
            || lower.contains("no such host")
            || lower.contains("dial tcp")
            || lower.contains("i/o timeout")
            || lower.contains("tls:")
            || lower.contains("timeout")
            || lower.contains("http: server gave http response to https client")
        {
            Self::RegistryUnreachable { image, detail }
        } else {
            Self::Pull { image, detail }
        }
    }
}

/// Makes `image` available according to the pull policy; one pull per image even with many workers.
async fn ensure_image(shared: &Shared, image: &str) -> Result<(), ImageError> {
    let present = shared
        .engine
        .image_info(image)
        .await
        .map_err(|e| ImageError::Engine(e.to_string()))?
        .is_some();
    match shared.config.pull {
        PullPolicy::Never if present => return Ok(()),
        PullPolicy::Never => {
            return Err(ImageError::NotPresent {
                image: image.to_owned(),
            })
        }
        PullPolicy::Missing if present => return Ok(()),
        _ => {}
    }
    let cell = shared
        .pulls
        .lock()
        .await
        .entry(image.to_owned())
        .or_default()
        .clone();
    cell.get_or_init(|| async {
        shared.progress.note(&format!("pulling {image}"));
        let pulled = shared.engine.pull_image(image, |_| {}).await;
        if let Err(error) = &pulled {
            warn!(image, %error, "pull failed");
        }
        pulled.map_err(|e| ImageError::from_pull(image, e))
    })
    .await
    .clone()
}

fn error_kind_of_sandbox(error: &SandboxError) -> &'static str {
    match error {
        SandboxError::ImageNotFound { .. } => "image_missing",
        SandboxError::EngineUnavailable { .. } => "docker_unavailable",
        _ => "sandbox",
    }
}

fn error_kind_of_episode(error: &crate::episode::EpisodeError) -> &'static str {
    match error {
        crate::episode::EpisodeError::Sandbox(e) => error_kind_of_sandbox(e),
        crate::episode::EpisodeError::Trajectory(_) => "trajectory",
        crate::episode::EpisodeError::Ended { .. } => "episode",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_error(detail: &str) -> ImageError {
        ImageError::from_pull(
            "reg.example/x:1",
            SandboxError::Docker {
                op: "pull image",
                detail: detail.to_owned(),
            },
        )
    }

    #[test]
    fn pull_failures_keep_their_kind() {
        let kinds = [
            (
                "Get \"https://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused",
                "registry_unreachable",
            ),
            (
                "pull access denied for x, repository does not exist or may require 'docker login'",
                "registry_auth",
            ),
            ("unauthorized: authentication required", "registry_auth"),
            (
                "manifest for reg.example/x:1 not found: manifest unknown",
                "image_missing",
            ),
            ("something else entirely", "pull_failed"),
        ];
        for (detail, kind) in kinds {
            assert_eq!(pull_error(detail).kind(), kind, "{detail}");
        }
        let not_found =
            ImageError::from_pull("x", SandboxError::ImageNotFound { image: "x".into() });
        assert_eq!(not_found.kind(), "image_missing");
    }
}
