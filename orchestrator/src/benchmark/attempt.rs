//! One instance of a run, in four phases, each with its own typed error:
//!
//! 1. `prepare_image` (`image.rs`): the image per the pull policy → [`ImageError`]
//! 2. `run_agent`: the submission — a given prediction, or an episode with the gold / empty / model agent (prompt,
//!    dispatch, token accounting, sandbox released before grading) → [`AgentError`]
//! 3. `grade`: the submission graded in a fresh container, reference logs written → [`GradeError`]
//! 4. `finish`: the trajectory's `episode_end` (rewards, grading report) and the instance's result
//!
//! A phase error becomes the instance's `error` result with what was known by then
//! ([`AttemptError::into_result`]); a panic in any phase becomes one too (`workers.rs` catches it).
//!
//! One attempt path for every runner: `run-benchmark` / `evaluate` ([`attempt_instance`]: ids from the run id, the
//! run's agent) and `harvest` ([`attempt_with`]: a rollout's episode and grading ids, its own model agent with the
//! rollout's sampling; the trajectory is left in the episode config's `trajectory_dir`).

use std::path::PathBuf;
use std::time::Instant;

use swe_env_grading::dataset::Instance;
use swe_env_model::TemplateError;
use tracing::warn;

use super::image::{prepare_image, ImageError};
use super::results::{InstanceResult, InstanceStatus};
use super::{AgentSpec, SandboxError, Shared};
use crate::agent::{builtin_prompt, run_gold, AgentOutcome, ModelAgentOutcome};
use crate::episode::{EndInfo, Episode, EpisodeConfig, EpisodeError, StartInfo};
use crate::grade::{grade_patch, write_instance_logs, GradeError, GradeOutcome};
use crate::trajectory::{EpisodeStatus, StepTokens};

/// Runs one instance of a benchmark run: image → submission (given, or from an agent's episode) → grading →
/// trajectory end. The episode is `<run id>-<instance id>`, the run's agent drives it.
pub(super) async fn attempt_instance(shared: &Shared, instance: &Instance) -> InstanceResult {
    let spec = AttemptSpec {
        episode_id: format!("{}-{}", shared.config.run_id, instance.instance_id),
        grading_id: format!("{}-{}-grade", shared.config.run_id, instance.instance_id),
        agent: shared.config.agent.clone(),
        logs_dir: Some(shared.config.logs_dir.clone()),
        kind: AttemptKind::Solve,
    };
    attempt_with(shared, instance, &spec).await.result
}

/// Who runs one attempt and under which ids.
#[derive(Clone)]
pub struct AttemptSpec {
    /// The episode id (the trajectory is `<trajectory_dir>/<episode_id>.jsonl`, the container is named after it).
    pub episode_id: String,
    /// The id of the grading container.
    pub grading_id: String,
    /// The agent (a model agent carries this attempt's sampling).
    pub agent: super::AgentSpec,
    /// Where the reference grading logs go (`None`: not written).
    pub logs_dir: Option<PathBuf>,
    /// What the episode produces.
    pub kind: AttemptKind,
}

/// What an attempt's episode produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttemptKind {
    /// A fix: the submission is a patch, graded against the task's tests (phase 3).
    #[default]
    Solve,
    /// A generated test: submit takes a file (`SubmitKind::File`), whose content is the submission; not graded
    /// (the trajectory ends without rewards, the result has no report and status `unresolved`, which then only
    /// means "not graded"). The caller checks the script.
    Testgen,
}

/// What an attempt produced: the result and where its time went.
#[derive(Debug, Clone)]
pub struct AttemptOutput {
    /// The instance's result (an `error` result when a phase failed).
    pub result: InstanceResult,
    /// Time of each phase.
    pub timing: PhaseTimes,
}

/// Time of an attempt's phases, ms (0 for a phase that did not run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    /// Starting the episode (container create + start, shell, anti-leak).
    pub start_ms: u64,
    /// Grading (fresh container, apply, tests).
    pub grade_ms: u64,
}

/// Runs one attempt of `instance` as `spec` says: image → submission → grading → trajectory end.
pub(super) async fn attempt_with(
    shared: &Shared,
    instance: &Instance,
    spec: &AttemptSpec,
) -> AttemptOutput {
    let mut timing = PhaseTimes::default();
    let result = match attempt(shared, instance, spec, &mut timing).await {
        Ok(result) => result,
        Err(error) => error.into_result(instance),
    };
    AttemptOutput { result, timing }
}

async fn attempt(
    shared: &Shared,
    instance: &Instance,
    spec: &AttemptSpec,
    timing: &mut PhaseTimes,
) -> Result<InstanceResult, AttemptError> {
    if let Err(error) = prepare_image(shared, instance).await {
        // A given prediction is a submission even when its image is missing: the harness counts it as an
        // error, not as incomplete.
        let submission = given_prediction(spec, instance).flatten();
        return Err(AttemptError::Image { error, submission });
    }
    let mut agent = run_agent(shared, instance, spec, timing).await?;
    if spec.kind == AttemptKind::Testgen {
        return Ok(finish(instance, agent, None).await);
    }
    let grading = Instant::now();
    let graded = grade(shared, instance, spec, &mut agent).await;
    timing.grade_ms = grading.elapsed().as_millis() as u64;
    let graded = match graded {
        Ok(graded) => graded,
        Err(error) => {
            let submission = agent.submission;
            return Err(AttemptError::Grade { error, submission });
        }
    };
    Ok(finish(instance, agent, Some(graded)).await)
}

/// `error_kind` of a model endpoint that is down, timing out or overloaded.
pub const KIND_MODEL_ENDPOINT: &str = "model_endpoint";
/// `error_kind` of a Docker engine that cannot be reached.
pub const KIND_DOCKER_UNAVAILABLE: &str = "docker_unavailable";

/// Whether an `error_kind` says the infrastructure is down (every attempt would fail the same way until it is
/// back), as opposed to a problem of one instance or rollout.
pub fn is_outage_kind(kind: &str) -> bool {
    kind == KIND_MODEL_ENDPOINT || kind == KIND_DOCKER_UNAVAILABLE
}

/// Why an instance ended as an `error` result: one variant per phase.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Phase 1: the image is not available.
    #[error("{error}")]
    Image {
        /// Why.
        error: ImageError,
        /// The given prediction, if any (recorded with the error).
        submission: Option<String>,
    },
    /// Phase 2: no submission (no prediction, or the episode or its agent failed).
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Phase 3: the submission could not be graded.
    #[error("{error}")]
    Grade {
        /// Why.
        error: GradeError,
        /// The submission that was not graded (recorded with the error).
        submission: Option<String>,
    },
}

/// Why the agent phase produced no submission.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `evaluate` runs only predicted instances; a library caller that passes others gets this.
    #[error("no prediction for {instance_id}: pass only instances that have one")]
    NoPrediction {
        /// The instance.
        instance_id: String,
    },
    /// The model agent's prompt template does not render for this instance.
    #[error(transparent)]
    PromptTemplate(#[from] TemplateError),
    /// The episode could not start, or its sandbox or trajectory failed while the agent ran.
    #[error(transparent)]
    Episode(#[from] EpisodeError),
    /// The model endpoint failed during the episode (the trajectory is finished with `model_error`).
    #[error("{detail}")]
    ModelEndpoint {
        /// What the endpoint did, in words.
        detail: String,
        /// Steps taken before it failed.
        n_steps: u32,
        /// How the episode ended.
        episode_status: EpisodeStatus,
        /// Model usage until then.
        usage: Usage,
        /// The endpoint refused this episode's request (a 4xx, a malformed answer): kind `model_rejected`, which
        /// a retry of the same episode would repeat; otherwise `model_endpoint` (down, timing out, overloaded).
        rejected: bool,
    },
}

impl AttemptError {
    /// The `error_kind` recorded in results.jsonl.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Image { error, .. } => error.kind(),
            Self::Agent(AgentError::NoPrediction { .. }) => "no_prediction",
            Self::Agent(AgentError::PromptTemplate(_)) => "prompt_template",
            Self::Agent(AgentError::Episode(error)) => error_kind_of_episode(error),
            Self::Agent(AgentError::ModelEndpoint { rejected: true, .. }) => "model_rejected",
            Self::Agent(AgentError::ModelEndpoint { .. }) => KIND_MODEL_ENDPOINT,
            Self::Grade {
                error: GradeError::Spec { .. },
                ..
            } => "grading_spec",
            Self::Grade {
                error: GradeError::Sandbox(error),
                ..
            } => error_kind_of_sandbox(error),
        }
    }

    /// The instance's `error` result, with what was known when the phase failed.
    pub fn into_result(self, instance: &Instance) -> InstanceResult {
        let mut result = InstanceResult::error(
            &instance.instance_id,
            &instance.repo,
            self.kind(),
            self.to_string(),
        );
        match self {
            Self::Image { submission, .. } | Self::Grade { submission, .. } => {
                result.submission = submission;
            }
            Self::Agent(AgentError::ModelEndpoint {
                n_steps,
                episode_status,
                usage,
                ..
            }) => {
                result.n_steps = n_steps;
                result.episode_status = Some(episode_status.as_str().to_owned());
                result.tokens = usage.tokens;
                result.model_ms = usage.model_ms;
            }
            Self::Agent(_) => {}
        }
        result
    }
}

/// Model usage of an episode (zero for the built-in agents).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt + completion tokens.
    pub tokens: u64,
    /// Time in model calls, ms.
    pub model_ms: u64,
}

impl Usage {
    fn of(outcome: &ModelAgentOutcome) -> Self {
        Self {
            tokens: outcome.total_tokens(),
            model_ms: outcome.model_time.as_millis() as u64,
        }
    }
}

/// What the agent phase produced.
struct AgentRun {
    /// The submission to grade (`None` = no prediction).
    submission: Option<String>,
    /// The episode, when one ran (its sandbox released, its trajectory still open).
    episode: Option<EpisodeRun>,
}

/// An episode whose agent finished; [`finish`] (or a grading error) ends its trajectory.
struct EpisodeRun {
    episode: Episode,
    outcome: AgentOutcome,
    usage: Usage,
    final_answer: Option<String>,
    /// The final answer's model call (token ids, logprobs, finish reason, sampling), for `episode_end`.
    final_answer_tokens: Option<StepTokens>,
    final_answer_reasoning: Option<String>,
    detail: Option<String>,
}

impl EpisodeRun {
    /// The `episode_end` of this run, before grading.
    fn end_info(&self) -> EndInfo {
        EndInfo::status(self.outcome.status)
    }
}

fn given_prediction(spec: &AttemptSpec, instance: &Instance) -> Option<Option<String>> {
    match &spec.agent {
        AgentSpec::Predictions { patches, .. } => patches.get(&instance.instance_id).cloned(),
        _ => None,
    }
}

/// Phase 2: the submission, from the given predictions or from an episode with the chosen agent.
async fn run_agent(
    shared: &Shared,
    instance: &Instance,
    spec: &AttemptSpec,
    timing: &mut PhaseTimes,
) -> Result<AgentRun, AgentError> {
    if let AgentSpec::Predictions { .. } = &spec.agent {
        // Given predictions (a file, or the gold / empty patches): no episode, the patch is graded as is.
        return match given_prediction(spec, instance) {
            Some(submission) => Ok(AgentRun {
                submission,
                episode: None,
            }),
            None => Err(AgentError::NoPrediction {
                instance_id: instance.instance_id.clone(),
            }),
        };
    }
    let agent = &spec.agent;
    let episode_id = &spec.episode_id;
    let trajectory = shared
        .episode_config
        .trajectory_dir
        .join(format!("{episode_id}.jsonl"));
    // A rerun after an interrupt starts its trajectory afresh.
    let _ = tokio::fs::remove_file(&trajectory).await;
    let (episode_config, info) = start_info(shared, agent, instance, spec.kind)?;
    let starting = Instant::now();
    let started = Episode::start(
        &shared.engine,
        episode_id,
        instance.clone(),
        episode_config,
        info,
    )
    .await;
    timing.start_ms = starting.elapsed().as_millis() as u64;
    let mut episode = started?;
    let dispatched = match agent {
        AgentSpec::Gold => run_gold(&mut episode).await.map(|o| (o, None)),
        AgentSpec::Model(model) => {
            crate::agent::run_model_agent(&mut episode, &model.client, &model.config, None)
                .await
                .map(|o| (o.agent.clone(), Some(o)))
        }
        _ => Ok((crate::agent::run_empty(&episode), None)),
    };
    let (outcome, model_outcome) = match dispatched {
        Ok(dispatched) => dispatched,
        Err(error) => {
            let _ = episode
                .finish(EndInfo::status(EpisodeStatus::SandboxError))
                .await;
            return Err(error.into());
        }
    };
    if let Err(error) = episode.release_sandbox().await {
        warn!(instance_id = %instance.instance_id, %error, "releasing the episode sandbox failed");
    }
    let mut run = EpisodeRun {
        episode,
        outcome,
        usage: Usage::default(),
        final_answer: None,
        final_answer_tokens: None,
        final_answer_reasoning: None,
        detail: None,
    };
    if let Some(model_outcome) = model_outcome {
        run.usage = Usage::of(&model_outcome);
        if run.outcome.status == EpisodeStatus::ModelError {
            let detail = model_outcome
                .detail
                .clone()
                .unwrap_or_else(|| "model endpoint failed".to_owned());
            let _ = run.episode.finish(model_outcome.end_info()).await;
            return Err(AgentError::ModelEndpoint {
                detail,
                n_steps: run.outcome.n_steps,
                episode_status: run.outcome.status,
                usage: run.usage,
                rejected: model_outcome.model_rejected,
            });
        }
        run.final_answer = model_outcome.final_answer;
        run.final_answer_tokens = model_outcome.final_answer_tokens;
        run.final_answer_reasoning = model_outcome.final_answer_reasoning;
        run.detail = model_outcome.detail;
    }
    let submission = match agent {
        AgentSpec::Empty => Some(String::new()),
        _ => run.outcome.submission.clone(),
    };
    Ok(AgentRun {
        submission,
        episode: Some(run),
    })
}

/// The episode settings and opening prompt for the chosen agent.
fn start_info(
    shared: &Shared,
    agent: &AgentSpec,
    instance: &Instance,
    kind: AttemptKind,
) -> Result<(EpisodeConfig, StartInfo), TemplateError> {
    let mut episode_config = shared.episode_config.clone();
    if kind == AttemptKind::Testgen {
        // The system prompt's tool specs are rendered from this config: they describe a file submission.
        episode_config.tools.submit_kind = swe_env_tools::SubmitKind::File;
    }
    let info = match agent {
        AgentSpec::Model(model) => {
            episode_config.tool_format = model.config.mode.tool_format();
            let mut info = crate::agent::start_info_for(instance, &model.config, &episode_config)?;
            crate::agent::add_client_info(&mut info, &model.client_config);
            info
        }
        _ => StartInfo {
            model: None,
            prompt: builtin_prompt(&instance.problem_statement),
        },
    };
    Ok((episode_config, info))
}

/// Phase 3: grades the submission in a fresh container and writes the reference grading logs; on failure the
/// episode's trajectory is finished with the reason.
async fn grade(
    shared: &Shared,
    instance: &Instance,
    spec: &AttemptSpec,
    agent: &mut AgentRun,
) -> Result<GradeOutcome, GradeError> {
    let graded = grade_patch(
        &shared.engine,
        instance,
        agent.submission.as_deref(),
        &shared.config.grade,
        &spec.grading_id,
    )
    .await;
    let outcome = match graded {
        Ok(outcome) => outcome,
        Err(error) => {
            if let Some(run) = agent.episode.as_mut() {
                let mut end = run.end_info();
                end.detail = Some(format!("grading failed: {error}"));
                let _ = run.episode.finish(end).await;
            }
            return Err(error);
        }
    };
    if let Some(logs_dir) = &spec.logs_dir {
        if let Err(error) =
            write_instance_logs(logs_dir, &outcome, agent.submission.as_deref()).await
        {
            warn!(instance_id = %instance.instance_id, %error, "cannot write grading logs");
        }
    }
    Ok(outcome)
}

/// Phase 4: ends the trajectory (with the rewards and grading report when graded) and makes the instance's
/// result. Not graded (`AttemptKind::Testgen`): no report, status `unresolved`, which then only means "not graded".
async fn finish(
    instance: &Instance,
    agent: AgentRun,
    graded: Option<GradeOutcome>,
) -> InstanceResult {
    let (n_steps, episode_status, usage) = match agent.episode {
        Some(mut run) => {
            let mut end = run.end_info();
            end.final_answer = run.final_answer;
            end.final_answer_tokens = run.final_answer_tokens;
            end.final_answer_reasoning = run.final_answer_reasoning;
            end.detail = run.detail;
            if let Some(graded) = &graded {
                end.rewards = serde_json::to_value(&graded.rewards).ok();
                end.grading = serde_json::to_value(&graded.report).ok();
            }
            if let Err(error) = run.episode.finish(end).await {
                warn!(instance_id = %instance.instance_id, %error, "cannot finish the trajectory");
            }
            let status = run.outcome.status.as_str().to_owned();
            (run.outcome.n_steps, Some(status), run.usage)
        }
        None => (0, None, Usage::default()),
    };
    let (resolved, test_ms, report, rewards) = match graded {
        Some(graded) => (
            graded.resolved,
            graded.test_ms,
            Some(graded.report),
            Some(graded.rewards),
        ),
        None => (false, 0, None, None),
    };
    InstanceResult {
        instance_id: instance.instance_id.clone(),
        repo: instance.repo.clone(),
        status: if resolved {
            InstanceStatus::Resolved
        } else {
            InstanceStatus::Unresolved
        },
        error_kind: None,
        error: None,
        episode_status,
        submission: agent.submission,
        n_steps,
        tokens: usage.tokens,
        model_ms: usage.model_ms,
        test_ms,
        total_ms: 0,
        report,
        rewards,
    }
}

fn error_kind_of_sandbox(error: &SandboxError) -> &'static str {
    match error {
        SandboxError::ImageNotFound { .. } => "image_missing",
        SandboxError::EngineUnavailable { .. } => KIND_DOCKER_UNAVAILABLE,
        _ => "sandbox",
    }
}

fn error_kind_of_episode(error: &EpisodeError) -> &'static str {
    match error {
        EpisodeError::Sandbox(e) => error_kind_of_sandbox(e),
        EpisodeError::Trajectory(_) => "trajectory",
        EpisodeError::Ended { .. } => "episode",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swe_env_grading::dataset::instance_from_value;

    fn instance() -> Instance {
        instance_from_value(serde_json::json!({"repo": "o/r", "instance_id": "o__r-1",
            "base_commit": "abc", "test_patch": "x", "version": "1.0"}))
        .unwrap()
    }

    #[test]
    fn each_phase_error_keeps_its_kind_and_what_was_known() {
        let image = AttemptError::Image {
            error: ImageError::NotPresent {
                image: "img:1".into(),
            },
            submission: Some("diff".into()),
        }
        .into_result(&instance());
        assert_eq!(image.status, InstanceStatus::Error);
        assert_eq!(image.error_kind.as_deref(), Some("image_missing"));
        assert_eq!(image.submission.as_deref(), Some("diff"));
        assert!(image.error.unwrap().contains("--pull never"));

        let missing = AttemptError::from(AgentError::NoPrediction {
            instance_id: "o__r-1".into(),
        })
        .into_result(&instance());
        assert_eq!(missing.error_kind.as_deref(), Some("no_prediction"));
        assert_eq!(
            missing.error.as_deref(),
            Some("no prediction for o__r-1: pass only instances that have one")
        );

        let usage = Usage {
            tokens: 120,
            model_ms: 40,
        };
        let endpoint = AttemptError::from(AgentError::ModelEndpoint {
            detail: "connection refused".into(),
            n_steps: 3,
            episode_status: EpisodeStatus::ModelError,
            usage,
            rejected: false,
        })
        .into_result(&instance());
        assert_eq!(endpoint.error_kind.as_deref(), Some("model_endpoint"));
        let rejected = AttemptError::from(AgentError::ModelEndpoint {
            detail: "HTTP 400".into(),
            n_steps: 1,
            episode_status: EpisodeStatus::ModelError,
            usage,
            rejected: true,
        });
        assert_eq!(rejected.kind(), "model_rejected");
        assert_eq!(endpoint.error.as_deref(), Some("connection refused"));
        assert_eq!(
            (endpoint.n_steps, endpoint.tokens, endpoint.model_ms),
            (3, 120, 40)
        );
        assert_eq!(
            endpoint.episode_status.as_deref(),
            Some(EpisodeStatus::ModelError.as_str())
        );
        assert_eq!(endpoint.submission, None);

        let grading = AttemptError::Grade {
            error: GradeError::Spec {
                instance_id: "o__r-1".into(),
                detail: "unknown version".into(),
            },
            submission: Some("diff".into()),
        }
        .into_result(&instance());
        assert_eq!(grading.error_kind.as_deref(), Some("grading_spec"));
        assert_eq!(grading.submission.as_deref(), Some("diff"));
        let sandbox = AttemptError::Grade {
            error: GradeError::Sandbox(SandboxError::ImageNotFound { image: "x".into() }),
            submission: None,
        };
        assert_eq!(sandbox.kind(), "image_missing");
    }
}
