//! Episodes: a sandbox, a task, the tools, budgets and a trajectory recorder. `step(action)` is the hot path:
//! parse → run tool → render observation → append record.

mod anti_leak;
mod config;

pub use anti_leak::{anti_leak_script, AntiLeak};
pub use config::{EpisodeConfig, ToolFormat};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use swe_env_grading::dataset::Instance;
use swe_env_grading::specs::SWE_BENCH_REPO_DIR;
use swe_env_tools::submit::{record_untracked, SubmissionError};
use swe_env_tools::{
    parse_json_call, parse_text_call, render_call_error, render_observation, run_tool, Budget,
    SubmissionRepo, ToolCall, ToolConfig, ToolResult,
};
use tracing::{info, warn};

use crate::task::{activation_for, image_for};
use crate::trajectory::record::now_rfc3339;
use crate::trajectory::{
    EpisodeEnd, EpisodeStart, EpisodeStatus, PromptMessage, Record, StepRecord, StepTokens,
    TrajectoryWriteError, TrajectoryWriter, SCHEMA_VERSION,
};
use swe_env_sandbox::docker::ContainerLimits;
use swe_env_sandbox::{DockerEngine, DockerSandbox, ImageInfo, SandboxConfig, SandboxError};

/// The shortest timeout a command gets, even when the episode's wall-clock budget is (almost) spent; the episode
/// ends right after that step.
pub const MIN_STEP_TIMEOUT: Duration = Duration::from_secs(1);

/// Why an episode operation failed (infrastructure, or a call on an ended episode).
#[derive(Debug, thiserror::Error)]
pub enum EpisodeError {
    /// The sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// Writing the trajectory failed.
    #[error(transparent)]
    Trajectory(#[from] TrajectoryWriteError),
    /// The episode already ended.
    #[error("episode {episode_id} has ended ({status}); start a new episode")]
    Ended {
        /// The episode.
        episode_id: String,
        /// How it ended.
        status: &'static str,
    },
}

/// An action from the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Raw model text in the CWM format (`<tool: NAME>…</tool>`, optionally after `<think>…</think>`).
    Text(String),
    /// A native (OpenAI function-calling) tool call.
    Call {
        /// Tool name.
        name: String,
        /// JSON arguments as a string.
        arguments: String,
        /// The call id to echo in the `tool` message.
        call_id: Option<String>,
    },
}

/// Facts about the model turn that produced an action, recorded with the step.
#[derive(Debug, Clone, Default)]
pub struct StepMeta {
    /// Client request id (idempotency key of gRPC Step).
    pub request_id: Option<String>,
    /// Model call wall time.
    pub model_ms: Option<u64>,
    /// Tokens, ids and logprobs.
    pub tokens: StepTokens,
    /// Reasoning text delivered separately from the action.
    pub reasoning: Option<String>,
    /// Assistant text next to a native tool call (chat-tools).
    pub content: Option<String>,
}

/// What one step produced.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    /// The observation as the model sees it.
    pub observation: String,
    /// The full step record (structured fields), as written to the trajectory.
    pub record: StepRecord,
    /// A submit succeeded in this step.
    pub submitted: bool,
    /// The episode cannot take more steps (submitted, or a budget ran out); see `end_status`.
    pub done: bool,
    /// Why it is done, when done because of a budget.
    pub end_status: Option<EpisodeStatus>,
}

/// Extra information for `episode_start`.
#[derive(Debug, Clone, Default)]
pub struct StartInfo {
    /// Model and sampling parameters, when a model drives the episode.
    pub model: Option<Value>,
    /// The initial prompt messages.
    pub prompt: Vec<PromptMessage>,
}

/// How an episode ended, for `episode_end`.
#[derive(Debug, Clone)]
pub struct EndInfo {
    /// Status.
    pub status: EpisodeStatus,
    /// Detail (error text, budget).
    pub detail: Option<String>,
    /// Final answer after submitting.
    pub final_answer: Option<String>,
    /// Tokens of the final-answer model turn.
    pub final_answer_tokens: Option<StepTokens>,
    /// Separated reasoning of the final-answer model turn.
    pub final_answer_reasoning: Option<String>,
    /// Rewards, when graded.
    pub rewards: Option<Value>,
    /// Grading report, when graded.
    pub grading: Option<Value>,
}

impl EndInfo {
    /// An ending with just a status.
    pub fn status(status: EpisodeStatus) -> Self {
        Self {
            status,
            detail: None,
            final_answer: None,
            final_answer_tokens: None,
            final_answer_reasoning: None,
            rewards: None,
            grading: None,
        }
    }
}

/// A running episode.
pub struct Episode {
    id: String,
    instance: Instance,
    config: EpisodeConfig,
    sandbox: Option<DockerSandbox>,
    writer: TrajectoryWriter,
    started: Instant,
    n_steps: u32,
    context_tokens_used: u64,
    submission: Option<String>,
    ended: Option<EpisodeStatus>,
}

/// A sandbox made ready for `instance` by everything [`Episode::start`] does that depends only on the task and the
/// creation-time sandbox settings: container created and started, shell attached, anti-leak set-up run, the
/// repository's pre-existing untracked files recorded, the image's id and digests read. A warm pool keeps these;
/// [`Episode::start_prepared`] turns one into an episode.
pub struct PreparedSandbox {
    /// The live container with its shell.
    pub sandbox: DockerSandbox,
    /// The image it runs.
    pub image: String,
    /// The image's id and digests (for `episode_start`).
    pub image_info: ImageInfo,
    /// The settings it was created with (task workdir and activation included).
    pub sandbox_config: SandboxConfig,
    /// The anti-leak set-up that ran in it.
    pub anti_leak: AntiLeak,
    /// The repository a path-less submit diffs, with its pre-existing untracked files recorded (`None` when the
    /// episode config names no repository).
    pub submission_repo: Option<SubmissionRepo>,
    /// How many pre-existing untracked files were recorded (`None`: they could not be).
    pub excluded_untracked: Option<usize>,
}

impl Episode {
    /// Creates the sandbox for `instance`, runs the anti-leak set-up and writes `episode_start`.
    pub async fn start(
        engine: &DockerEngine,
        id: &str,
        instance: Instance,
        config: EpisodeConfig,
        info: StartInfo,
    ) -> Result<Self, EpisodeError> {
        // A missing image is named before anything is written; the trajectory directory is checked before a
        // container is made for nothing.
        let image_info = Self::image_info(engine, &instance, &config).await?;
        let trajectory_path = config.trajectory_dir.join(format!("{id}.jsonl"));
        let writer = TrajectoryWriter::create_with(&trajectory_path, config.durability).await?;
        let prepared = Self::prepare_with(engine, id, &instance, &config, image_info).await?;
        Self::start_with(engine, id, instance, config, info, prepared, writer, None).await
    }

    /// Everything of [`Episode::start`] that depends only on the task and the creation-time settings of `config`
    /// (not on its budgets, nor on the limits Docker can change later): the container is labelled with
    /// `sandbox_label` as its episode id.
    pub async fn prepare(
        engine: &DockerEngine,
        sandbox_label: &str,
        instance: &Instance,
        config: &EpisodeConfig,
    ) -> Result<PreparedSandbox, EpisodeError> {
        let image_info = Self::image_info(engine, instance, config).await?;
        Self::prepare_with(engine, sandbox_label, instance, config, image_info).await
    }

    async fn image_info(
        engine: &DockerEngine,
        instance: &Instance,
        config: &EpisodeConfig,
    ) -> Result<ImageInfo, EpisodeError> {
        let image = image_for(instance, &config.image_template);
        Ok(engine
            .image_info(&image)
            .await?
            .ok_or(SandboxError::ImageNotFound { image })?)
    }

    async fn prepare_with(
        engine: &DockerEngine,
        sandbox_label: &str,
        instance: &Instance,
        config: &EpisodeConfig,
        image_info: ImageInfo,
    ) -> Result<PreparedSandbox, EpisodeError> {
        let image = image_for(instance, &config.image_template);
        let sandbox_config = Self::sandbox_config_for(instance, config);
        let sandbox = engine
            .create_sandbox(&image, sandbox_label, sandbox_config.clone())
            .await?;
        if config.anti_leak != AntiLeak::Off {
            let script = anti_leak_script(config.anti_leak);
            let out = sandbox
                .run_command(&script, Duration::from_secs(300))
                .await?;
            if out.exit_code != Some(0) {
                warn!(episode_id = sandbox_label, output = %String::from_utf8_lossy(&out.output), "anti-leak set-up failed");
            }
        }
        let mut submission_repo = Self::submission_repo_for(instance, config);
        let excluded_untracked = match submission_repo.as_mut() {
            Some(repo) => match record_preexisting_untracked(&sandbox, sandbox_label, repo).await {
                Ok(n_files) => n_files,
                Err(error) => {
                    let _ = sandbox.remove().await;
                    return Err(error);
                }
            },
            None => None,
        };
        Ok(PreparedSandbox {
            sandbox,
            image,
            image_info,
            sandbox_config,
            anti_leak: config.anti_leak,
            submission_repo,
            excluded_untracked,
        })
    }

    /// The sandbox settings an episode of `instance` is created with: `config.sandbox` with the task's repository
    /// as working directory and its activation line.
    pub fn sandbox_config_for(instance: &Instance, config: &EpisodeConfig) -> SandboxConfig {
        SandboxConfig {
            workdir: SWE_BENCH_REPO_DIR.to_owned(),
            init_commands: vec![activation_for(instance)],
            ..config.sandbox.clone()
        }
    }

    /// The repository a path-less submit diffs: the config's, else the task's repository at its base commit.
    pub fn submission_repo_for(
        instance: &Instance,
        config: &EpisodeConfig,
    ) -> Option<SubmissionRepo> {
        Some(config.tools.submission_repo.clone().unwrap_or_else(|| {
            SubmissionRepo::new(SWE_BENCH_REPO_DIR, instance.base_commit.clone())
        }))
    }

    /// Starts an episode on a sandbox prepared ahead (a warm pool's) for the same task and creation-time settings:
    /// applies the episode's own limits when they differ from the container's (`update_limits`; `episode_start`
    /// records what the container has afterwards), creates the trajectory and writes `episode_start`. The sandbox
    /// is removed on failure.
    pub async fn start_prepared(
        engine: &DockerEngine,
        id: &str,
        instance: Instance,
        config: EpisodeConfig,
        info: StartInfo,
        prepared: PreparedSandbox,
    ) -> Result<Self, EpisodeError> {
        let limits = match prepared.sandbox.update_limits(&config.sandbox).await {
            Ok(limits) => limits,
            Err(error) => {
                let _ = prepared.sandbox.remove().await;
                return Err(error.into());
            }
        };
        let trajectory_path = config.trajectory_dir.join(format!("{id}.jsonl"));
        let created = TrajectoryWriter::create_with(&trajectory_path, config.durability).await;
        let writer = match created {
            Ok(writer) => writer,
            Err(error) => {
                let _ = prepared.sandbox.remove().await;
                return Err(error.into());
            }
        };
        Self::start_with(
            engine,
            id,
            instance,
            config,
            info,
            prepared,
            writer,
            Some(limits),
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_with(
        engine: &DockerEngine,
        id: &str,
        instance: Instance,
        mut config: EpisodeConfig,
        info: StartInfo,
        prepared: PreparedSandbox,
        mut writer: TrajectoryWriter,
        limits: Option<ContainerLimits>,
    ) -> Result<Self, EpisodeError> {
        let PreparedSandbox {
            sandbox,
            image,
            image_info,
            sandbox_config,
            anti_leak,
            submission_repo,
            excluded_untracked,
        } = prepared;
        // A path-less submit diffs the task's repository against its base commit; decided once, at preparation.
        config.tools.submission_repo = submission_repo;
        let limits = limits.unwrap_or(ContainerLimits {
            memory_bytes: sandbox_config.memory_bytes,
            memory_swap_bytes: sandbox_config.memory_bytes,
            nano_cpus: sandbox_config.nano_cpus,
            pids_limit: sandbox_config.pids_limit,
        });
        let prompt_tokens: usize = info.prompt.iter().map(|m| m.content.len()).sum();
        let start = EpisodeStart {
            schema_version: SCHEMA_VERSION,
            episode_id: id.to_owned(),
            instance_id: instance.instance_id.clone(),
            task: serde_json::to_value(&instance).unwrap_or(Value::Null),
            image: image.clone(),
            image_id: image_info.id,
            image_digests: image_info.repo_digests,
            tool_format: config.tool_format.as_str().to_owned(),
            limits: json!({
                "max_turns": config.max_turns,
                "context_tokens": config.context_tokens,
                "observation_cap_bytes": config.observation_cap_bytes,
                "wall_clock_secs": config.wall_clock.as_secs(),
                "cmd_timeout_secs": config.tools.cmd_timeout.as_secs(),
                "network_mode": sandbox_config.network_mode,
                "memory_bytes": limits.memory_bytes,
                "nano_cpus": limits.nano_cpus,
                "pids_limit": limits.pids_limit,
                "anti_leak": anti_leak.as_str(),
                "durability": config.durability.as_str(),
                "submission_excluded_untracked_files": excluded_untracked,
            }),
            model: info.model,
            prompt: info.prompt,
            versions: json!({"swe_env": env!("CARGO_PKG_VERSION"), "trajectory_schema": SCHEMA_VERSION}),
            started_at: now_rfc3339(),
            owner: Some(engine.owner().to_label()),
        };
        if let Err(error) = writer.append(&Record::EpisodeStart(start)).await {
            let _ = sandbox.remove().await;
            return Err(error.into());
        }
        info!(episode_id = id, instance_id = %instance.instance_id, image, container = %sandbox.id(), "episode started");
        Ok(Self {
            id: id.to_owned(),
            instance,
            config,
            sandbox: Some(sandbox),
            writer,
            started: Instant::now(),
            n_steps: 0,
            context_tokens_used: (prompt_tokens / swe_env_tools::render::APPROX_BYTES_PER_TOKEN)
                as u64,
            submission: None,
            ended: None,
        })
    }

    /// Episode id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The task.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// The configuration.
    pub fn config(&self) -> &EpisodeConfig {
        &self.config
    }

    /// The sandbox, while the episode holds one.
    pub fn sandbox(&self) -> Option<&DockerSandbox> {
        self.sandbox.as_ref()
    }

    /// Path of the trajectory file.
    pub fn trajectory_path(&self) -> PathBuf {
        self.writer.path().to_owned()
    }

    /// Steps taken.
    pub fn n_steps(&self) -> u32 {
        self.n_steps
    }

    /// The last accepted submission.
    pub fn submission(&self) -> Option<&str> {
        self.submission.as_deref()
    }

    /// How the episode ended, once it has.
    pub fn ended(&self) -> Option<EpisodeStatus> {
        self.ended
    }

    /// Sets the context tokens used so far (the agent loop knows the exact count from the model's usage).
    pub fn set_context_tokens_used(&mut self, tokens: u64) {
        self.context_tokens_used = tokens;
    }

    /// Context tokens used so far (exact when set by the agent loop, else estimated from bytes).
    pub fn context_tokens_used(&self) -> u64 {
        self.context_tokens_used
    }

    /// The budget the model sees after `n_steps` steps.
    pub fn budget(&self) -> Budget {
        self.budget_after(self.n_steps)
    }

    fn budget_after(&self, n_steps: u32) -> Budget {
        Budget {
            remaining_turns: u64::from(self.config.max_turns.saturating_sub(n_steps)),
            remaining_tokens: self.config.context_tokens as i64 - self.context_tokens_used as i64,
            observation_cap_bytes: self.config.observation_cap_bytes,
        }
    }

    /// Which budget is exhausted, if any.
    pub fn exhausted_budget(&self) -> Option<EpisodeStatus> {
        if self.n_steps >= self.config.max_turns {
            Some(EpisodeStatus::MaxTurns)
        } else if self.context_tokens_used >= self.config.context_tokens {
            Some(EpisodeStatus::ContextExhausted)
        } else if self.started.elapsed() >= self.config.wall_clock {
            Some(EpisodeStatus::WallClock)
        } else {
            None
        }
    }

    /// The tool configuration of the next step: a command may run at most its own timeout and at most the time
    /// left in the episode's wall-clock budget (never less than [`MIN_STEP_TIMEOUT`]), so one command cannot
    /// outlive the episode.
    fn step_tool_config(&self) -> ToolConfig {
        let left = self
            .config
            .wall_clock
            .saturating_sub(self.started.elapsed());
        let mut tools = self.config.tools.clone();
        tools.cmd_timeout = tools.cmd_timeout.min(left.max(MIN_STEP_TIMEOUT));
        tools
    }

    /// `Err(Ended)` once the episode has ended: nothing more may run or be recorded.
    fn ensure_running(&self) -> Result<(), EpisodeError> {
        match self.ended {
            Some(status) => Err(EpisodeError::Ended {
                episode_id: self.id.clone(),
                status: status.as_str(),
            }),
            None => Ok(()),
        }
    }

    /// Runs one action and records it.
    #[tracing::instrument(name = "step", skip_all, fields(episode_id = %self.id, step_idx = self.n_steps))]
    pub async fn step(
        &mut self,
        action: Action,
        meta: StepMeta,
    ) -> Result<StepOutcome, EpisodeError> {
        self.ensure_running()?;
        let Some(sandbox) = self.sandbox.clone() else {
            return Err(EpisodeError::Ended {
                episode_id: self.id.clone(),
                status: "closed",
            });
        };
        let (raw_action, parsed, call_id) = match &action {
            Action::Text(text) => (text.clone(), parse_text_call(text), None),
            Action::Call {
                name,
                arguments,
                call_id,
            } => {
                let raw = json!({"name": name, "arguments": arguments}).to_string();
                (raw, parse_json_call(name, arguments), call_id.clone())
            }
        };
        // A step counts once it is recorded: one dropped half-way (a server shutdown cancelling it) is not counted,
        // so `n_steps` always equals the steps in the trajectory.
        let step_idx = self.n_steps;
        let started = Instant::now();
        let (observation, result, call, format_error) = match parsed {
            Ok(call) => {
                let tools = self.step_tool_config();
                let result = match run_tool(&sandbox, &call, &tools).await {
                    Ok(result) => result,
                    // A container removed from outside (`docker rm -f`) is named as such.
                    Err(e) => return Err(sandbox.classify_failure(e).await.into()),
                };
                // The context grows by what the model is shown (the output cut at the observation cap), not by the
                // raw output behind it; charged before rendering so the budget block counts this step.
                let shown = result.text.len().min(self.config.observation_cap_bytes);
                self.context_tokens_used += estimate_tokens(raw_action.len() + shown);
                (
                    render_observation(&result, &self.budget_after(step_idx + 1)),
                    Some(result),
                    Some(call),
                    None,
                )
            }
            Err(error) => {
                self.context_tokens_used +=
                    estimate_tokens(raw_action.len() + error.to_string().len());
                let rendered = render_call_error(&error, &self.budget_after(step_idx + 1));
                let format_error = Some(error.to_string());
                (rendered, None, None, format_error)
            }
        };
        let submitted = match result.as_ref().and_then(|r| r.submission.as_ref()) {
            Some(patch) => {
                self.submission = Some(String::from_utf8_lossy(patch).into_owned());
                true
            }
            None => false,
        };
        let record = step_record(
            step_idx,
            raw_action,
            call.as_ref(),
            call_id,
            result.as_ref(),
            format_error,
            observation.clone(),
            started.elapsed(),
            meta,
        );
        self.writer.append(&Record::Step(record.clone())).await?;
        self.n_steps = step_idx + 1;
        let end_status = self.exhausted_budget();
        Ok(StepOutcome {
            observation,
            record,
            submitted,
            done: submitted || end_status.is_some(),
            end_status,
        })
    }

    /// Records a model turn that cannot become an [`Action`] at all (several native tool calls in one reply, a
    /// native-tools reply with no call) as a format-error step: no tool runs, the model sees
    /// `FormatError: {message}`, and the turn counts against the budgets like any step. `raw_action` is what the
    /// model sent, kept verbatim in the trajectory.
    pub async fn step_format_error(
        &mut self,
        raw_action: String,
        message: &str,
        meta: StepMeta,
    ) -> Result<StepOutcome, EpisodeError> {
        self.ensure_running()?;
        // Counted once recorded, as in `step`.
        let step_idx = self.n_steps;
        self.context_tokens_used += estimate_tokens(raw_action.len() + message.len());
        let observation = swe_env_tools::truncate_right(
            &format!("FormatError: {message}"),
            self.config.observation_cap_bytes,
        );
        let record = step_record(
            step_idx,
            raw_action,
            None,
            None,
            None,
            Some(message.to_owned()),
            observation.clone(),
            Duration::ZERO,
            meta,
        );
        self.writer.append(&Record::Step(record.clone())).await?;
        self.n_steps = step_idx + 1;
        let end_status = self.exhausted_budget();
        Ok(StepOutcome {
            observation,
            record,
            submitted: false,
            done: end_status.is_some(),
            end_status,
        })
    }

    /// Removes the sandbox (grading uses a fresh container). Idempotent.
    pub async fn release_sandbox(&mut self) -> Result<(), EpisodeError> {
        if let Some(sandbox) = self.sandbox.take() {
            sandbox.remove().await?;
        }
        Ok(())
    }

    /// Ends the episode: removes the sandbox and writes `episode_end`. Idempotent for the status (first wins).
    pub async fn finish(&mut self, end: EndInfo) -> Result<EpisodeEnd, EpisodeError> {
        let released = self.release_sandbox().await;
        self.ensure_running()?;
        self.ended = Some(end.status);
        let record = EpisodeEnd {
            status: end.status,
            detail: end.detail,
            submission: self.submission.clone(),
            final_answer: end.final_answer,
            final_answer_tokens: end.final_answer_tokens,
            final_answer_reasoning: end.final_answer_reasoning,
            n_steps: self.n_steps,
            rewards: end.rewards,
            grading: end.grading,
            duration_ms: self.started.elapsed().as_millis() as u64,
            ended_at: now_rfc3339(),
        };
        self.writer
            .append(&Record::EpisodeEnd(record.clone()))
            .await?;
        info!(episode_id = %self.id, status = end.status.as_str(), n_steps = self.n_steps, "episode ended");
        released?;
        Ok(record)
    }
}

/// Records on the host the untracked, non-ignored files `repo` already has (a `build/` tree the image's
/// `.gitignore` misses, …), so path-less submissions leave them out while unchanged. Returns how many there are, or
/// `None` when they could not be recorded (then submissions include them, as a warning says). A sandbox failure is
/// an error.
async fn record_preexisting_untracked(
    sandbox: &DockerSandbox,
    episode_id: &str,
    repo: &mut SubmissionRepo,
) -> Result<Option<usize>, EpisodeError> {
    match record_untracked(sandbox, &repo.repo_dir, &repo.base_commit).await {
        Ok(files) => {
            if !files.is_empty() {
                info!(
                    episode_id,
                    repo_dir = %repo.repo_dir,
                    n_files = files.len(),
                    "pre-existing untracked files recorded; unchanged ones are left out of submissions"
                );
            }
            let n_files = files.len();
            repo.preexisting_untracked = Arc::from(files);
            Ok(Some(n_files))
        }
        Err(SubmissionError::Sandbox(error)) => Err(sandbox.classify_failure(error).await.into()),
        Err(error) => {
            warn!(
                episode_id,
                repo_dir = %repo.repo_dir,
                %error,
                "could not record the pre-existing untracked files; submissions will include them"
            );
            Ok(None)
        }
    }
}

fn estimate_tokens(bytes: usize) -> u64 {
    (bytes / swe_env_tools::render::APPROX_BYTES_PER_TOKEN) as u64
}

#[allow(clippy::too_many_arguments)]
fn step_record(
    step_idx: u32,
    raw_action: String,
    call: Option<&ToolCall>,
    tool_call_id: Option<String>,
    result: Option<&ToolResult>,
    format_error: Option<String>,
    observation: String,
    tool_time: Duration,
    meta: StepMeta,
) -> StepRecord {
    StepRecord {
        step_idx,
        request_id: meta.request_id,
        raw_action,
        reasoning: meta.reasoning,
        content: meta.content,
        parsed_call: call.and_then(|c| serde_json::to_value(c).ok()),
        tool: call.map(|c| c.name().as_str().to_owned()),
        tool_call_id,
        format_error,
        tool_error: result
            .and_then(|r| r.error)
            .and_then(|kind| serde_json::to_value(kind).ok())
            .and_then(|v| v.as_str().map(str::to_owned)),
        observation,
        exit_code: result.and_then(|r| r.exit_code),
        timed_out: result.is_some_and(|r| r.timed_out),
        truncated: result.is_some_and(|r| r.truncated),
        restarted: result.is_some_and(|r| r.restarted),
        tool_ms: tool_time.as_millis() as u64,
        model_ms: meta.model_ms,
        tokens: meta.tokens,
        at: now_rfc3339(),
    }
}
