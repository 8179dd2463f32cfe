//! What the service does, independent of the wire: create, step, close, grade, reap idle episodes, and drain at
//! shutdown. The gRPC handlers in `service` only translate to and from this.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use serde_json::Value;
use swe_env_grading::dataset::Instance;
use swe_env_tools::{openai_tools, tool_specs_text};
use tokio::sync::OwnedMutexGuard;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::{error, info, warn, Instrument};

use super::admission::Admission;
use super::config::ServerConfig;
use super::convert;
use super::error::ServiceError;
use super::metrics::{GradingOutcome, StartSource};
use super::proto;
use super::registry::{
    DigestMismatch, EpisodeSlot, LiveEpisode, Lookup, NewSlot, Registry, RequestDigest, SlotState,
    Summary, REPLIES_KEPT_AFTER_END,
};
use super::tasks::TaskCatalog;
use crate::episode::{
    Action, EndInfo, Episode, EpisodeConfig, EpisodeError, StartInfo, StepMeta, ToolFormat,
};
use crate::grade::testgen::{self, TestgenError};
use crate::grade::{grade_patch, grade_submission, GradeConfig, GradeOutcome, RuleSet};
use crate::pool::{FillLimits, Pool, PoolError};
use crate::task::image_for;
use crate::trajectory::{read_trajectory, EpisodeStatus, PromptMessage, ReadTrajectory};
use swe_env_sandbox::{DockerEngine, SandboxError};

/// Shared state of a running server.
pub struct ServerState {
    /// Resolved configuration.
    pub config: ServerConfig,
    /// The Docker engine.
    pub engine: DockerEngine,
    /// Loaded tasks.
    pub tasks: TaskCatalog,
    /// Episodes.
    pub registry: Registry,
    /// Admission limits.
    pub admission: Admission,
    /// Model clients of the configured endpoints (RunEpisode).
    pub model_clients: super::run::ModelClients,
    /// Warm pools (`None` when `pool.max_containers` is 0).
    pub pool: Option<Arc<Pool>>,
    /// Prometheus metrics (served by `metrics` when `metrics_listen` is set; always recorded).
    pub metrics: super::metrics::Metrics,
    /// This node's episode ids (`<node_id>.ep-<32 hex>`).
    pub episode_ids: EpisodeIds,
    grade_config: GradeConfig,
    /// Cancelled when the drain starts: new work is refused, the reaper and reconciler stop.
    draining: CancellationToken,
    inflight: Arc<AtomicUsize>,
    /// Cancelled when the drain's grace period is over: calls still in flight stop.
    cancel: CancellationToken,
}

/// Counts a call in flight (a create, a step, a grading, a server-driven run) until dropped.
#[must_use = "the call counts as in flight until the guard is dropped"]
pub struct InflightGuard(Arc<AtomicUsize>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a drain did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DrainReport {
    /// Calls still running at the end of the grace period (then cancelled).
    pub cancelled_calls: usize,
    /// Live episodes ended with status `cancelled`.
    pub episodes_cancelled: usize,
    /// Containers of this process removed by the final sweep (should be 0).
    pub containers_swept: usize,
}

impl ServerState {
    /// Builds the state.
    pub fn new(config: ServerConfig, engine: DockerEngine, tasks: TaskCatalog) -> Self {
        let admission = Admission::new(
            config.max_episodes,
            config.max_concurrent_starts,
            Duration::from_millis(config.start_queue_ms),
        );
        let grade_config = config.grade_config();
        let registry = Registry::new(
            config.max_ended_remembered,
            config.memory.max_ended_remembered_bytes,
        );
        // Pooled containers are prepared with the server's episode defaults; an episode's own limits are applied
        // when it takes one.
        let fill_limits = FillLimits {
            memory_bytes: config.episode.memory_bytes,
            nano_cpus: (config.episode.cpus * 1e9) as i64,
            pids_limit: config.episode.pids_limit,
        };
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| super::config::node_id_from_host(&engine.owner().host));
        let episode_ids = EpisodeIds::new(node_id);
        let pool = Pool::new(
            engine.clone(),
            config.pool.clone(),
            {
                let ids = episode_ids.clone();
                Arc::new(move || ids.next())
            },
            fill_limits,
        );
        Self {
            pool,
            config,
            engine,
            tasks,
            registry,
            admission,
            model_clients: super::run::ModelClients::default(),
            metrics: super::metrics::Metrics::new(),
            episode_ids,
            grade_config,
            draining: CancellationToken::new(),
            inflight: Arc::new(AtomicUsize::new(0)),
            cancel: CancellationToken::new(),
        }
    }

    /// Registers a call on existing work (a Step of a live episode) in flight. Accepted during the drain's grace
    /// period, so clients can finish their episodes; refused once the grace period is over.
    pub fn enter(&self) -> Result<InflightGuard, ServiceError> {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let guard = InflightGuard(self.inflight.clone());
        if self.cancel.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        Ok(guard)
    }

    /// Registers a call that starts new work (CreateEpisode, RunEpisode, Grade, CheckTest) in flight; refused as
    /// soon as the server drains (UNAVAILABLE with a retry hint: another server, or this one after its restart).
    pub fn admit_new(&self) -> Result<InflightGuard, ServiceError> {
        let guard = self.enter()?;
        // The call counts as in flight before it looks at the token, and the drain cancels the token before it
        // counts the calls in flight (the token's lock orders the two): either this call sees the drain or the
        // drain waits for this call.
        if self.draining.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        Ok(guard)
    }

    /// Resolves the task of a request.
    pub fn resolve_task(
        &self,
        task_id: Option<&str>,
        task_json: Option<&str>,
        image: &str,
    ) -> Result<Instance, ServiceError> {
        let mut instance = match (task_id, task_json) {
            (Some(id), _) => {
                if id.is_empty() {
                    return Err(ServiceError::invalid("task_id", "required"));
                }
                self.tasks
                    .get(id)
                    .map(|t| t.instance.clone())
                    .ok_or_else(|| ServiceError::TaskNotFound {
                        task_id: id.to_owned(),
                    })?
            }
            (None, Some(json)) => {
                convert::inline_task("task_json", json, self.config.maxima.task_json_bytes)?
            }
            (None, None) => {
                return Err(ServiceError::invalid(
                    "task",
                    "one of `task_id` or `task_json` is required",
                ))
            }
        };
        if !image.is_empty() {
            if image.len() > 512 || image.chars().any(char::is_whitespace) {
                return Err(ServiceError::invalid("image", "not an image reference"));
            }
            instance.image = Some(image.to_owned());
        }
        Ok(instance)
    }

    /// Starts an episode.
    pub async fn create_episode(
        &self,
        request: proto::CreateEpisodeRequest,
    ) -> Result<proto::CreateEpisodeResponse, ServiceError> {
        let _inflight = self.admit_new()?;
        let plan = self.plan_episode(&request)?;
        let (_slot, reply) = self.launch_episode(plan).await?;
        Ok(reply)
    }

    /// Validates a CreateEpisode request into what [`Self::launch_episode`] needs.
    pub fn plan_episode(
        &self,
        request: &proto::CreateEpisodeRequest,
    ) -> Result<EpisodePlan, ServiceError> {
        use proto::create_episode_request::Task;
        let (task_id, task_json) = match &request.task {
            Some(Task::TaskId(id)) => (Some(id.as_str()), None),
            Some(Task::TaskJson(json)) => (None, Some(json.as_str())),
            None => (None, None),
        };
        let instance = self.resolve_task(task_id, task_json, &request.image)?;
        let mut config = convert::episode_config(
            request,
            &self.config.episode,
            &self.config.maxima,
            &self.config.trajectory_dir,
        )?;
        self.config.memory.apply(&mut config.tools);
        let labels = convert::labels(&request.labels, &self.config.maxima)?;
        let model = if request.model_json.is_empty() {
            None
        } else {
            let value: Value = serde_json::from_str(&request.model_json)
                .map_err(|e| ServiceError::invalid("model_json", format!("not valid json: {e}")))?;
            Some(value)
        };
        let prompt = if request.prompt.is_empty() {
            let mut prompt = Vec::new();
            if config.tool_format == ToolFormat::Text {
                prompt.push(PromptMessage {
                    role: "system".into(),
                    content: tool_specs_text(&config.tools),
                });
            }
            prompt.push(PromptMessage {
                role: "user".into(),
                content: instance.problem_statement.clone(),
            });
            prompt
        } else {
            request
                .prompt
                .iter()
                .map(|m| PromptMessage {
                    role: m.role.clone(),
                    content: m.content.clone(),
                })
                .collect()
        };
        Ok(EpisodePlan {
            instance,
            config,
            labels,
            info: StartInfo { model, prompt },
            grade_on_submit: request.grade_on_submit,
        })
    }

    /// Admits, starts and registers an episode.
    pub async fn launch_episode(
        &self,
        plan: EpisodePlan,
    ) -> Result<(Arc<EpisodeSlot>, proto::CreateEpisodeResponse), ServiceError> {
        let EpisodePlan {
            instance,
            config,
            labels,
            info,
            grade_on_submit,
        } = plan;
        let permit = self.admission.episode()?;
        // A warm container of this task's key when there is one (or one being prepared for this burst); else a
        // cold start, which takes a start slot.
        let warm = match &self.pool {
            Some(pool) => tokio::select! {
                taken = pool.take(&instance, &config) => taken,
                _ = self.cancel.cancelled() => return Err(ServiceError::ShuttingDown),
            },
            None => None,
        };
        // A pooled container is labelled with the id of the episode that takes it.
        let (mut episode_id, warm) = match warm {
            Some(taken) => (taken.episode_id, Some(taken.prepared)),
            None => (self.episode_ids.next(), None),
        };
        let image = image_for(&instance, &config.image_template);
        let tool_format = config.tool_format;
        let specs_text = tool_specs_text(&config.tools);
        let instance_id = instance.instance_id.clone();
        let problem_statement = instance.problem_statement.clone();
        let started = Instant::now();
        let mut from_pool = false;
        let warm_episode = match warm {
            Some(prepared) => {
                let result = tokio::select! {
                    result = Episode::start_prepared(
                        &self.engine,
                        &episode_id,
                        instance.clone(),
                        config.clone(),
                        info.clone(),
                        prepared,
                    ) => result,
                    _ = self.cancel.cancelled() => return Err(ServiceError::ShuttingDown),
                };
                match result {
                    Ok(episode) => Some(episode),
                    // The pooled container (removed by now) could not take the episode's limits or no longer
                    // answers: the episode starts in a container of its own instead, under a new id.
                    Err(EpisodeError::Sandbox(error)) => {
                        warn!(episode_id, %error, "starting from a pooled container failed; starting a cold container instead");
                        episode_id = self.episode_ids.next();
                        None
                    }
                    Err(error) => {
                        return Err(ServiceError::from_episode("starting the episode", error))
                    }
                }
            }
            None => None,
        };
        let episode = match warm_episode {
            Some(episode) => {
                from_pool = true;
                episode
            }
            None => {
                let start_permit = self.admission.start().await?;
                let episode = tokio::select! {
                    result = Episode::start(&self.engine, &episode_id, instance, config, info) => {
                        result.map_err(|e| ServiceError::from_episode("starting the episode", e))?
                    }
                    _ = self.cancel.cancelled() => return Err(ServiceError::ShuttingDown),
                };
                drop(start_permit);
                episode
            }
        };
        let budget = episode.budget();
        let slot = self.registry.insert(NewSlot {
            id: episode_id.clone(),
            instance_id: instance_id.clone(),
            labels,
            tool_format,
            live: LiveEpisode {
                episode,
                grade_on_submit,
                graded: None,
                permit,
            },
        });
        self.metrics.episode_started(
            if from_pool {
                StartSource::Pooled
            } else {
                StartSource::Fresh
            },
            started.elapsed(),
        );
        info!(
            episode_id,
            instance_id,
            start_ms = started.elapsed().as_millis() as u64,
            warm = from_pool,
            "episode created"
        );
        if self.draining.is_cancelled() {
            let mut state = slot.state.lock().await;
            self.finish_locked(&slot, &mut state, cancelled_end("server shutdown"))
                .await;
            return Err(ServiceError::ShuttingDown);
        }
        let reply = proto::CreateEpisodeResponse {
            episode_id,
            instance_id,
            problem_statement,
            tool_specs_text: specs_text,
            openai_tools_json: openai_tools().to_string(),
            tool_format: convert::tool_format_to_proto(tool_format) as i32,
            image,
            budget: Some(convert::budget(&budget)),
            repo_dir: swe_env_grading::specs::SWE_BENCH_REPO_DIR.to_owned(),
            warm: from_pool,
        };
        Ok((slot, reply))
    }

    /// Keeps `count` containers of a task's pool key ready (Prewarm); with `wait`, answers once they are.
    pub async fn prewarm(
        &self,
        request: proto::PrewarmRequest,
    ) -> Result<proto::PrewarmResponse, ServiceError> {
        let _inflight = self.admit_new()?;
        use proto::prewarm_request::Task;
        let (task_id, task_json) = match &request.task {
            Some(Task::TaskId(id)) => (Some(id.as_str()), None),
            Some(Task::TaskJson(json)) => (None, Some(json.as_str())),
            None => (None, None),
        };
        let instance = self.resolve_task(task_id, task_json, &request.image)?;
        let maximum = self.config.maxima.prewarm;
        if request.count == 0 {
            return Err(ServiceError::invalid("count", "must be at least 1"));
        }
        if request.count > maximum {
            return Err(ServiceError::invalid(
                "count",
                format!(
                    "{} is above the server maximum {maximum} (server config `maxima.prewarm`)",
                    request.count
                ),
            ));
        }
        let Some(pool) = &self.pool else {
            return Err(ServiceError::Unimplemented {
                what: "Prewarm: warm pools are off (server config `pool.max_containers` is 0)"
                    .to_owned(),
            });
        };
        // The key of a CreateEpisode of this task with the server's defaults. The asked limits are checked like
        // CreateEpisode's but not used: pooled containers are prepared with the server's default limits, and each
        // episode's own are applied when it takes one (limits are not part of the key).
        let create = proto::CreateEpisodeRequest {
            limits: request.limits,
            ..Default::default()
        };
        convert::episode_config(
            &create,
            &self.config.episode,
            &self.config.maxima,
            &self.config.trajectory_dir,
        )?;
        let mut config = convert::episode_config(
            &proto::CreateEpisodeRequest::default(),
            &self.config.episode,
            &self.config.maxima,
            &self.config.trajectory_dir,
        )?;
        self.config.memory.apply(&mut config.tools);
        let wait = request.wait.then(|| {
            Duration::from_millis(match request.wait_timeout_ms {
                0 => PREWARM_WAIT_DEFAULT_MS,
                ms => u64::from(ms).min(PREWARM_WAIT_MAX_MS),
            })
        });
        let outcome = tokio::select! {
            outcome = pool.prewarm(&instance, &config, request.count as usize, wait) => outcome,
            _ = self.cancel.cancelled() => return Err(ServiceError::ShuttingDown),
        };
        match outcome {
            Ok((key, outcome)) => Ok(proto::PrewarmResponse {
                ready: outcome.ready as u32,
                warming: outcome.warming as u32,
                waited_ms: outcome.waited.as_millis() as u64,
                pool_key: key.to_string(),
                pool_keys: outcome.keys as u32,
            }),
            Err(PoolError::Fill { source, .. }) => Err(ServiceError::from_episode(
                "preparing pooled containers",
                source,
            )),
            Err(PoolError::Draining) => Err(ServiceError::ShuttingDown),
            Err(error @ PoolError::TooManyKeys { .. }) => Err(ServiceError::Exhausted {
                what: error.to_string(),
                retry_after: Duration::from_secs(1),
            }),
            Err(
                error @ (PoolError::FillFailed { .. }
                | PoolError::OverBudget { .. }
                | PoolError::Disabled),
            ) => Err(ServiceError::Internal {
                context: "preparing pooled containers",
                detail: error.to_string(),
            }),
        }
    }

    /// Completes when the drain cancels calls in flight (its grace period is over).
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Completes when the drain starts.
    pub fn draining(&self) -> WaitForCancellationFuture<'_> {
        self.draining.cancelled()
    }

    /// Grades `patch` for `instance` in a fresh container with the server's grading settings, under `rules` when
    /// given (else the configured rules).
    pub async fn grade_instance(
        &self,
        instance: &Instance,
        patch: Option<&str>,
        rules: Option<RuleSet>,
        grading_id: &str,
    ) -> Result<GradeOutcome, ServiceError> {
        let asked;
        let config = match rules {
            Some(rules) if rules != self.grade_config.rule_set() => {
                asked = self.grade_config.clone().with_rules(rules);
                &asked
            }
            _ => &self.grade_config,
        };
        let started = Instant::now();
        let graded = grade_patch(&self.engine, instance, patch, config, grading_id)
            .await
            .map_err(ServiceError::from_grade);
        self.record_grading(&graded, started);
        graded
    }

    /// Counts a grading and its outcome.
    fn record_grading(&self, graded: &Result<GradeOutcome, ServiceError>, started: Instant) {
        let outcome = match graded {
            Ok(outcome) if outcome.resolved => GradingOutcome::Resolved,
            Ok(_) => GradingOutcome::Unresolved,
            Err(_) => GradingOutcome::Error,
        };
        self.metrics.grading(outcome, started.elapsed());
    }

    /// Grades an episode's submission with the server's settings (in its own container when `grading.in_place`;
    /// the container is sealed then). The caller ends the episode right after: grading is its last act.
    pub async fn grade_episode(
        &self,
        episode: &Episode,
        grading_id: &str,
    ) -> Result<GradeOutcome, ServiceError> {
        let started = Instant::now();
        let graded = grade_submission(
            &self.engine,
            episode.sandbox(),
            episode.instance(),
            episode.submission(),
            &self.grade_config,
            grading_id,
        )
        .await
        .map_err(ServiceError::from_grade);
        self.record_grading(&graded, started);
        graded
    }

    /// NOT_FOUND for an episode this server does not know, naming its node when the id names another one.
    fn not_found(&self, episode_id: &str) -> ServiceError {
        match self.episode_ids.foreign_node(episode_id) {
            Some(node) => ServiceError::EpisodeOnOtherNode {
                episode_id: episode_id.to_owned(),
                node: node.to_owned(),
                this_node: self.episode_ids.node_id().to_owned(),
            },
            None => ServiceError::EpisodeNotFound {
                episode_id: episode_id.to_owned(),
            },
        }
    }

    /// GetCapacity: this node's id and free slots, from memory.
    pub fn capacity(&self) -> proto::GetCapacityResponse {
        let max = self.config.max_episodes;
        let live = self.admission.live_episodes().min(max);
        let draining = self.draining.is_cancelled();
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        proto::GetCapacityResponse {
            node_id: self.episode_ids.node_id().to_owned(),
            max_episodes: clamp(max),
            live_episodes: clamp(live),
            free_episodes: if draining { 0 } else { clamp(max - live) },
            draining,
            instance_id: self.engine.owner().to_label(),
            pool_ready: self.pool.as_ref().map_or(0, |pool| {
                clamp(pool.ready_by_task().iter().map(|(_, n)| n).sum())
            }),
        }
    }

    /// The slot of an episode this server process knows. An id it does not know is NOT_FOUND — naming the node
    /// when the id names another one —, or FAILED_PRECONDITION when this node's trajectory directory holds it: an
    /// episode of an earlier run of this node (the process was killed or restarted; the episode cannot go on).
    async fn slot(&self, episode_id: &str) -> Result<Arc<EpisodeSlot>, ServiceError> {
        convert::episode_id("episode_id", episode_id)?;
        if let Some(slot) = self.registry.get(episode_id) {
            return Ok(slot);
        }
        if self.episode_ids.foreign_node(episode_id).is_none()
            && tokio::fs::try_exists(self.trajectory_file(episode_id))
                .await
                .unwrap_or(false)
        {
            return Err(ServiceError::EpisodeFromEarlierRun {
                episode_id: episode_id.to_owned(),
                node: self.episode_ids.node_id().to_owned(),
            });
        }
        Err(self.not_found(episode_id))
    }

    /// Runs one step (idempotent by request id). Once accepted (valid, episode live, request id new) the step runs
    /// in its own task: a client that gives up (deadline, cancel, dropped connection) does not stop it, and its
    /// reply is stored under the request id for the retry. A retry arriving while the step runs waits for it (the
    /// slot's lock) and gets the stored reply; the same request id with another action or model turn is refused.
    pub async fn step(
        self: &Arc<Self>,
        request: proto::StepRequest,
    ) -> Result<proto::StepResponse, ServiceError> {
        // Validate the whole request before looking anything up.
        convert::episode_id("episode_id", &request.episode_id)?;
        let (action, meta) = convert::step_action(&request)?;
        // Only a request id makes a step retryable: no digest without one.
        let digest = (!request.request_id.is_empty()).then(|| request_digest(&request));
        let slot = self.slot(&request.episode_id).await?;
        let inflight = self.enter()?;
        let state = slot.state.clone().lock_owned().await;
        if let Some(digest) = &digest {
            match state.replies.lookup(&request.request_id, digest) {
                Ok(Lookup::Stored(stored)) => {
                    let mut replay = stored.clone();
                    replay.replayed = true;
                    return Ok(replay);
                }
                Ok(Lookup::Evicted { step_idx }) => {
                    return Err(ServiceError::ReplyEvicted {
                        request_id: request.request_id.clone(),
                        step_idx,
                    })
                }
                Ok(Lookup::Unknown) => {}
                Err(DigestMismatch) => {
                    return Err(ServiceError::invalid(
                        "request_id",
                        "already used for a Step with another action or model turn; use a new request_id \
                         for a new action, and resend exactly the same request to retry",
                    ))
                }
            }
        }
        if state.live.is_none() {
            return Err(ServiceError::EpisodeEnded {
                episode_id: slot.id.clone(),
                status: slot
                    .summary()
                    .status
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|| "closed".to_owned()),
            });
        }
        // Accepted: from here on the step belongs to its task, which owns the slot's lock until it is recorded.
        let this = Arc::clone(self);
        let task_slot = Arc::clone(&slot);
        let task = async move {
            let _inflight = inflight;
            this.run_step(task_slot, state, request, digest, action, meta)
                .await
        };
        match tokio::spawn(task.instrument(tracing::Span::current())).await {
            Ok(result) => result,
            Err(join_error) => {
                // `run_step` catches panics of the step itself; this is a panic while ending the episode, or the
                // runtime shutting down.
                let detail = format!("the step task failed: {join_error}");
                error!(episode_id = %slot.id, %detail, "step task failed");
                self.end_after_panic(&slot, &detail).await;
                Err(ServiceError::Internal {
                    context: "stepping",
                    detail,
                })
            }
        }
    }

    /// The accepted step, in its own task: runs it with the slot locked, ends the episode as `sandbox_error` if it
    /// panics, and stores a successful reply under the request id.
    async fn run_step(
        self: Arc<Self>,
        slot: Arc<EpisodeSlot>,
        mut state: OwnedMutexGuard<SlotState>,
        request: proto::StepRequest,
        digest: Option<RequestDigest>,
        action: Action,
        meta: StepMeta,
    ) -> Result<proto::StepResponse, ServiceError> {
        let stepped = AssertUnwindSafe(self.step_locked(&slot, &mut state, &request, action, meta))
            .catch_unwind()
            .await;
        let result = match stepped {
            Ok(result) => result,
            Err(panic) => {
                let detail = format!(
                    "the step panicked: {}",
                    crate::panic_message(panic.as_ref())
                );
                error!(episode_id = %slot.id, %detail, "step panicked; ending the episode");
                let mut end = EndInfo::status(EpisodeStatus::SandboxError);
                end.detail = Some(format!("internal error: {detail}"));
                self.finish_locked(&slot, &mut state, end).await;
                Err(ServiceError::Internal {
                    context: "stepping",
                    detail,
                })
            }
        };
        if let (Ok(reply), Some(digest)) = (&result, digest) {
            state
                .replies
                .insert(request.request_id.clone(), digest, reply.clone());
        }
        result
    }

    /// Ends an episode whose step task died outside [`Self::run_step`]'s own panic handling.
    async fn end_after_panic(&self, slot: &EpisodeSlot, detail: &str) {
        let mut state = slot.state.lock().await;
        if state.live.is_some() {
            let mut end = EndInfo::status(EpisodeStatus::SandboxError);
            end.detail = Some(format!("internal error: {detail}"));
            self.finish_locked(slot, &mut state, end).await;
        } else if slot.summary().status.is_none() {
            // The episode was taken out of its slot by an ending that did not complete.
            let mut summary = slot.summary();
            summary.status = Some(EpisodeStatus::SandboxError);
            slot.set_summary(summary);
            // Ended for the retention bounds too, or the slot would never be forgotten.
            self.registry
                .mark_ended(&slot.id, state.replies.retained_bytes());
        }
    }

    /// One step on the locked, live slot.
    async fn step_locked(
        &self,
        slot: &EpisodeSlot,
        state: &mut SlotState,
        request: &proto::StepRequest,
        action: Action,
        meta: StepMeta,
    ) -> Result<proto::StepResponse, ServiceError> {
        let Some(live) = state.live.as_mut() else {
            return Err(ServiceError::EpisodeEnded {
                episode_id: slot.id.clone(),
                status: "closed".to_owned(),
            });
        };
        slot.touch();
        if let Some(tokens) = request
            .model_turn
            .as_ref()
            .and_then(|t| t.context_tokens_used)
        {
            live.episode.set_context_tokens_used(tokens);
        }
        // Only a server shutdown past its grace period interrupts a step; the interrupted step is neither recorded
        // nor counted (`Episode::step` counts a step once recorded) and the drain ends the episode `cancelled`.
        let stepping = Instant::now();
        let result = tokio::select! {
            result = live.episode.step(action, meta) => result,
            _ = self.cancel.cancelled() => return Err(ServiceError::ShuttingDown),
        };
        slot.touch();
        let outcome = match result {
            Ok(outcome) => {
                self.metrics
                    .step(outcome.record.tool.as_deref(), stepping.elapsed());
                outcome
            }
            Err(EpisodeError::Sandbox(SandboxError::EngineUnavailable { .. })) => {
                return Err(ServiceError::EngineUnavailable)
            }
            Err(error @ EpisodeError::Ended { .. }) => {
                return Err(ServiceError::from_episode("stepping", error))
            }
            Err(error) => {
                // The sandbox or the trajectory failed: the episode cannot go on.
                warn!(episode_id = %slot.id, %error, "step failed; ending the episode");
                let mut end = EndInfo::status(EpisodeStatus::SandboxError);
                end.detail = Some(error.to_string());
                self.finish_locked(slot, state, end).await;
                return Err(ServiceError::from_episode("stepping", error));
            }
        };
        let mut reply = convert::step_response(&outcome, &live.episode.budget());
        // A submission graded on submit ends the episode: grading is the last thing that happens in it, so no
        // Step can ever run where test material was (in-place grading also seals the container first).
        let grade_now = outcome.submitted && live.grade_on_submit;
        let mut grading_failed = None;
        if grade_now {
            let grading_id = format!("{}-grade-{}", slot.id, outcome.record.step_idx);
            match self.grade_episode(&live.episode, &grading_id).await {
                Ok(graded) => {
                    reply.reward = Some(graded.rewards.shaped);
                    live.graded = Some((
                        serde_json::to_value(&graded.rewards).unwrap_or(Value::Null),
                        serde_json::to_value(&graded.report).unwrap_or(Value::Null),
                    ));
                }
                Err(error) => {
                    warn!(episode_id = %slot.id, %error, "grading the submission failed; no reward");
                    grading_failed = Some(format!("grading failed: {error}"));
                }
            }
        }
        slot.set_summary(Summary {
            status: None,
            n_steps: live.episode.n_steps(),
            submission: slot.stored_submission(live.episode.submission()),
        });
        let end_status = outcome
            .end_status
            .or(grade_now.then_some(EpisodeStatus::Submitted));
        // `done` means exactly this: the server has ended the episode and accepts no more Steps.
        reply.done = end_status.is_some();
        if let Some(status) = end_status {
            reply.end_status = status.as_str().to_owned();
            let mut end = EndInfo::status(status);
            end.detail = grading_failed;
            self.finish_locked(slot, state, end).await;
        }
        Ok(reply)
    }

    /// Ends a live episode whose state is locked: writes `episode_end`, removes the container (returning only once
    /// Docker confirmed it, after retries), frees the slot. Returns the failure, if any: a container whose removal
    /// failed is retried by the periodic reconcile ([`Self::retry_failed_removals`]).
    pub async fn finish_locked(
        &self,
        slot: &EpisodeSlot,
        state: &mut SlotState,
        mut end: EndInfo,
    ) -> Option<EpisodeError> {
        let mut live = state.live.take()?;
        self.metrics.episode_ending();
        if let Some((rewards, report)) = live.graded.take() {
            end.rewards = end.rewards.or(Some(rewards));
            end.grading = end.grading.or(Some(report));
        }
        let status = end.status;
        let failure = match live.episode.finish(end).await {
            Ok(_) => None,
            Err(error) => {
                warn!(episode_id = %slot.id, %error, "ending the episode failed");
                Some(error)
            }
        };
        let ended = live.episode.ended().unwrap_or(status);
        self.metrics.episode_ended(ended);
        slot.set_summary(Summary {
            status: Some(ended),
            n_steps: live.episode.n_steps(),
            submission: slot.stored_submission(live.episode.submission()),
        });
        state.replies.keep_newest(REPLIES_KEPT_AFTER_END);
        self.registry
            .mark_ended(&slot.id, state.replies.retained_bytes());
        drop(live);
        failure
    }

    /// Closes an episode (idempotent).
    pub async fn close_episode(
        &self,
        request: proto::CloseEpisodeRequest,
    ) -> Result<proto::EpisodeInfo, ServiceError> {
        let slot = self.slot(&request.episode_id).await?;
        let mut state = slot.state.lock().await;
        if let Some(live) = state.live.as_ref() {
            let status = if live.episode.submission().is_some() {
                EpisodeStatus::Submitted
            } else {
                EpisodeStatus::Closed
            };
            let mut end = EndInfo::status(status);
            end.final_answer = Some(request.final_answer).filter(|a| !a.is_empty());
            // OK only once Docker confirmed the container gone.
            if let Some(EpisodeError::Sandbox(error)) =
                self.finish_locked(&slot, &mut state, end).await
            {
                return Err(ServiceError::Internal {
                    context: "removing the episode's container (the episode has ended; the server retries the \
                              removal in the background)",
                    detail: error.to_string(),
                });
            }
        }
        drop(state);
        Ok(slot.info())
    }

    /// Lists episodes, newest first.
    pub fn list_episodes(
        &self,
        request: &proto::ListEpisodesRequest,
    ) -> Result<proto::ListEpisodesResponse, ServiceError> {
        let size = convert::page_size(request.page_size, self.config.maxima.page_size)?;
        let before = convert::page_token(&request.page_token)?;
        let mut matching = self
            .registry
            .snapshot()
            .into_iter()
            .filter(|slot| before.is_none_or(|b| slot.seq < b))
            .filter(|slot| request.include_ended || slot.summary().status.is_none());
        let page: Vec<_> = matching.by_ref().take(size).collect();
        let next_page_token = match (matching.next(), page.last()) {
            (Some(_), Some(last)) => last.seq.to_string(),
            _ => String::new(),
        };
        Ok(proto::ListEpisodesResponse {
            episodes: page.iter().map(|slot| slot.info()).collect(),
            next_page_token,
        })
    }

    /// Lists tasks.
    pub fn list_tasks(
        &self,
        request: &proto::ListTasksRequest,
    ) -> Result<proto::ListTasksResponse, ServiceError> {
        let size = convert::page_size(request.page_size, self.config.maxima.page_size)?;
        let offset = convert::page_token(&request.page_token)?.unwrap_or(0) as usize;
        let matching: Vec<_> = self
            .tasks
            .all()
            .iter()
            .filter(|t| request.repo.is_empty() || t.instance.repo == request.repo)
            .collect();
        let page = matching.iter().skip(offset).take(size);
        let tasks = page
            .map(|t| {
                convert::task(
                    &t.instance,
                    &t.dataset,
                    &self.config.episode.image_template,
                    request.include_rows,
                )
            })
            .collect::<Vec<_>>();
        let end = offset.saturating_add(tasks.len());
        Ok(proto::ListTasksResponse {
            tasks,
            next_page_token: if end < matching.len() {
                end.to_string()
            } else {
                String::new()
            },
            total_size: matching.len() as u32,
        })
    }

    /// Reads an episode's trajectory (known to this process, or a file of an earlier run).
    pub async fn trajectory(&self, episode_id: &str) -> Result<ReadTrajectory, ServiceError> {
        convert::episode_id("episode_id", episode_id)?;
        let path = match self.registry.get(episode_id) {
            Some(slot) => slot.trajectory_path.clone(),
            None => self.trajectory_file(episode_id),
        };
        read_trajectory(&path).await.map_err(|e| {
            match ServiceError::from_trajectory(episode_id, e) {
                ServiceError::EpisodeNotFound { .. } => self.not_found(episode_id),
                other => other,
            }
        })
    }

    fn trajectory_file(&self, episode_id: &str) -> PathBuf {
        self.config
            .trajectory_dir
            .join(format!("{episode_id}.jsonl"))
    }

    /// Grades a patch in a fresh container.
    pub async fn grade(&self, request: proto::GradeRequest) -> Result<GradeOutcome, ServiceError> {
        let _inflight = self.admit_new()?;
        use proto::grade_request::Task;
        let (task_id, task_json) = match &request.task {
            Some(Task::TaskId(id)) => (Some(id.as_str()), None),
            Some(Task::TaskJson(json)) => (None, Some(json.as_str())),
            None => (None, None),
        };
        let instance = self.resolve_task(task_id, task_json, &request.image)?;
        let _permit = self.admission.episode()?;
        let grading_id = format!("grade-{}", self.episode_ids.next());
        let patch = Some(request.patch.as_str()).filter(|p| !p.is_empty());
        let rules = if request.rules.is_empty() {
            None
        } else {
            Some(
                request
                    .rules
                    .parse::<RuleSet>()
                    .map_err(|e| ServiceError::invalid("rules", e.to_string()))?,
            )
        };
        tokio::select! {
            result = self.grade_instance(&instance, patch, rules, &grading_id) => result,
            _ = self.cancel.cancelled() => Err(ServiceError::ShuttingDown),
        }
    }

    /// Checks a generated test in a fresh container (CheckTest): its validity at the base commit, or, with a
    /// patch, its run on that candidate patch. Admitted like [`Self::grade`].
    pub async fn check_test(
        &self,
        request: proto::CheckTestRequest,
    ) -> Result<CheckedTest, ServiceError> {
        let _inflight = self.admit_new()?;
        use proto::check_test_request::Task;
        let (task_id, task_json) = match &request.task {
            Some(Task::TaskId(id)) => (Some(id.as_str()), None),
            Some(Task::TaskJson(json)) => (None, Some(json.as_str())),
            None => (None, None),
        };
        let instance = self.resolve_task(task_id, task_json, &request.image)?;
        let maximum = self.config.memory.max_submission_bytes;
        for (field, value) in [("script", &request.script), ("patch", &request.patch)] {
            if value.len() > maximum {
                return Err(ServiceError::invalid(
                    field,
                    format!(
                        "{} bytes is above the server maximum {maximum} bytes (server config \
                         `memory.max_submission_bytes`)",
                        value.len()
                    ),
                ));
            }
        }
        let limits = self.config.testgen_limits(request.timeout_secs)?;
        if !request.patch.is_empty() {
            if request.script.trim().is_empty() {
                return Err(ServiceError::invalid(
                    "script",
                    "required with a `patch` (send the test that passed the validity check)",
                ));
            }
            if request.script.len() > limits.max_script_bytes {
                return Err(ServiceError::invalid(
                    "script",
                    format!(
                        "{} bytes, more than the {} bytes a valid test may have (the validity check rejects a \
                         larger one `too_large`)",
                        request.script.len(),
                        limits.max_script_bytes
                    ),
                ));
            }
        }
        let _permit = self.admission.episode()?;
        let name = format!("checktest-{:032x}", rand::random::<u128>());
        info!(
            instance_id = %instance.instance_id,
            check = %name,
            mode = if request.patch.is_empty() { "validity" } else { "patch" },
            timeout_secs = limits.timeout.as_secs(),
            script_bytes = request.script.len(),
            "checking a generated test"
        );
        if request.patch.is_empty() {
            self.validate_script(&instance, Some(request.script.as_str()), &limits, &name)
                .await
                .map(CheckedTest::Validity)
        } else {
            let image = image_for(&instance, &self.config.episode.image_template);
            self.checking(testgen::run_test_on_patch(
                &self.engine,
                &instance,
                &image,
                &request.patch,
                &request.script,
                &limits,
                &name,
            ))
            .await
            .map(CheckedTest::OnPatch)
        }
    }

    /// The validity check of a generated test `script` for `instance` (at the base commit of the task's image, in
    /// a fresh container named after `name`, removed on every path): CheckTest without a patch, and the end of a
    /// test-generation RunEpisode. The caller holds the admission; a drain's end cancels it (UNAVAILABLE).
    pub async fn validate_script(
        &self,
        instance: &Instance,
        script: Option<&str>,
        limits: &testgen::TestgenLimits,
        name: &str,
    ) -> Result<testgen::Validation, ServiceError> {
        let image = image_for(instance, &self.config.episode.image_template);
        self.checking(testgen::validate_test(
            &self.engine,
            instance,
            &image,
            script,
            limits,
            name,
        ))
        .await
    }

    /// Runs a generated-test check until it ends or the drain's grace period is over.
    async fn checking<T>(
        &self,
        check: impl std::future::Future<Output = Result<T, TestgenError>>,
    ) -> Result<T, ServiceError> {
        let checked = tokio::select! {
            result = check => result,
            _ = self.cancel.cancelled() => return Err(ServiceError::ShuttingDown),
        };
        checked.map_err(|error| match error {
            TestgenError::Sandbox(error) => {
                ServiceError::from_sandbox("checking a generated test", error)
            }
        })
    }

    /// Ends live episodes idle for longer than the TTL; returns how many.
    pub async fn reap_idle(&self) -> usize {
        let ttl = self.config.idle_ttl();
        let mut reaped = 0;
        for slot in self.registry.snapshot() {
            if slot.summary().status.is_some() || slot.idle() < ttl {
                continue;
            }
            // A step in flight holds the lock: that episode is not idle.
            let Ok(mut state) = slot.state.try_lock() else {
                continue;
            };
            if state.live.is_none() {
                continue;
            }
            info!(episode_id = %slot.id, idle_secs = slot.idle().as_secs(), "ending idle episode");
            let detail = format!("idle for more than {} s (server idle TTL)", ttl.as_secs());
            self.finish_locked(&slot, &mut state, cancelled_end(&detail))
                .await;
            reaped += 1;
        }
        reaped
    }

    /// Stops admitting new work (CreateEpisode, RunEpisode, Grade), lets live episodes Step and Close and calls in
    /// flight finish within `grace` (ending early once nothing is live or in flight), cancels the rest, ends every
    /// live episode with status `cancelled`, and removes any container of this process still present.
    pub async fn drain(&self, grace: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        self.draining.cancel();
        // New episodes are refused from now on: the pooled containers are of no more use.
        if let Some(pool) = &self.pool {
            pool.drain().await;
        }
        let deadline = Instant::now() + grace;
        // New work is refused from now on; live episodes may still Step and Close until the grace period ends. The
        // drain ends early once nothing is in flight and no live episode has been used for `quiet` (clients that
        // are still working keep the server up to the full grace).
        let quiet = grace.min(Duration::from_secs(self.config.drain_quiet_secs));
        let started = Instant::now();
        let clients_active = || {
            self.registry
                .snapshot()
                .iter()
                .filter(|slot| slot.summary().status.is_none())
                .any(|slot| started.elapsed() < quiet || slot.idle() < quiet)
        };
        while (self.inflight.load(Ordering::SeqCst) > 0 || clients_active())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        report.cancelled_calls = self.inflight.load(Ordering::SeqCst);
        if report.cancelled_calls > 0 {
            warn!(
                calls = report.cancelled_calls,
                "grace period over; cancelling calls in flight"
            );
        }
        self.cancel.cancel();
        let live: Vec<_> = self
            .registry
            .snapshot()
            .into_iter()
            .filter(|slot| slot.summary().status.is_none())
            .collect();
        let finishes = live.iter().map(|slot| async move {
            let mut state = slot.state.lock().await;
            let was_live = state.live.is_some();
            let _ = self
                .finish_locked(slot, &mut state, cancelled_end("server shutdown"))
                .await;
            was_live
        });
        report.episodes_cancelled = futures_util::future::join_all(finishes)
            .await
            .into_iter()
            .filter(|was_live| *was_live)
            .count();
        report.containers_swept = self.sweep_own_containers().await;
        report
    }

    /// Removes again the containers of this process whose episode has ended here but whose removal failed (the
    /// engine gave up under load); returns how many were removed. Containers of episodes still starting or live, and
    /// grading containers, are left alone.
    pub async fn retry_failed_removals(&self) -> usize {
        let containers = match self.engine.labelled_containers().await {
            Ok(containers) => containers,
            Err(error) => {
                warn!(%error, "listing containers for the removal retry failed");
                return 0;
            }
        };
        let me = self.engine.owner();
        let ended = |episode: &str| {
            self.registry
                .get(episode)
                .is_some_and(|slot| slot.summary().status.is_some())
        };
        let retries = containers
            .iter()
            .filter(|c| c.owner.as_ref() == Some(me) && ended(&c.episode))
            .map(|container| async move {
                match self.engine.remove_container(&container.id).await {
                    Ok(()) => {
                        info!(container = %container.id, episode_id = %container.episode, "removed the container of an ended episode on retry");
                        true
                    }
                    Err(error) => {
                        warn!(container = %container.id, episode_id = %container.episode, %error, "removing the container of an ended episode failed again; retrying at the next reconcile");
                        false
                    }
                }
            });
        futures_util::future::join_all(retries)
            .await
            .into_iter()
            .filter(|removed| *removed)
            .count()
    }

    /// Removes every container labelled with this process as owner; returns how many.
    pub async fn sweep_own_containers(&self) -> usize {
        swe_env_sandbox::gc::remove_owned(&self.engine)
            .await
            .unwrap_or_else(|error| {
                warn!(%error, "listing containers for the final sweep failed");
                0
            })
    }
}

/// How long a Prewarm with `wait` and no `wait_timeout_ms` waits at most.
pub const PREWARM_WAIT_DEFAULT_MS: u64 = 120_000;
/// The longest wait of a Prewarm (a larger `wait_timeout_ms` is lowered to it): 10 minutes.
pub const PREWARM_WAIT_MAX_MS: u64 = 600_000;

/// Everything needed to start an episode, validated.
pub struct EpisodePlan {
    /// The task (with any image override applied).
    pub instance: Instance,
    /// Budgets, limits, format.
    pub config: EpisodeConfig,
    /// Client labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What `episode_start` records besides the task.
    pub info: StartInfo,
    /// Grade each successful submission during its Step.
    pub grade_on_submit: bool,
}

/// What CheckTest found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckedTest {
    /// The validity check at the base commit (no patch).
    Validity(testgen::Validation),
    /// The run on a candidate patch.
    OnPatch(testgen::PairRun),
}

/// The end of an episode cancelled for `detail`.
pub fn cancelled_end(detail: &str) -> EndInfo {
    let mut end = EndInfo::status(EpisodeStatus::Cancelled);
    end.detail = Some(detail.to_owned());
    end
}

/// SHA-256 of what a Step asks for (its action and model turn; not the ids), stored with its reply.
fn request_digest(request: &proto::StepRequest) -> RequestDigest {
    // What was asked (the action and the model turn, with their field tags), encoded from borrows.
    let mut encoded = Vec::new();
    if let Some(action) = &request.action {
        action.encode(&mut encoded);
    }
    if let Some(turn) = &request.model_turn {
        prost::encoding::message::encode(5, turn, &mut encoded);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &encoded);
    let mut bytes = [0; 32];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

/// The episode ids of one node: `<node_id>.ep-<32 random hex digits>`. The node id (a DNS label, no `.`) before
/// the first `.` tells a fleet client which node owns an episode.
#[derive(Debug, Clone)]
pub struct EpisodeIds {
    node_id: Arc<str>,
}

impl EpisodeIds {
    /// Ids of node `node_id` (checked by `ServerConfig::validate`, or made by `config::node_id_from_host`).
    pub fn new(node_id: String) -> Self {
        Self {
            node_id: node_id.into(),
        }
    }

    /// The node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// A fresh id.
    pub fn next(&self) -> String {
        format!("{}.ep-{:032x}", self.node_id, rand::random::<u128>())
    }

    /// The node an episode id names, when it names one that is not this node (a misrouted call).
    pub fn foreign_node<'a>(&self, episode_id: &'a str) -> Option<&'a str> {
        episode_id
            .split_once('.')
            .map(|(node, _)| node)
            .filter(|node| *node != &*self.node_id)
    }
}
