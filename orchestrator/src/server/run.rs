//! Server-driven episodes (RunEpisode): the server starts an episode, runs the model agent loop against an
//! OpenAI-compatible endpoint (one the operator configured, by name; a client URL only when allowed, never with a
//! key), streams each recorded step, grades when asked, and ends the episode. The
//! episode lives in the registry like any other (listed, cancelled by a drain); its slot stays locked while the
//! loop runs, so client Steps on it wait and then find it ended.
//!
//! A test-generation episode (kind `EPISODE_KIND_TESTGEN`) is the same loop with the built-in test-generation
//! prompt ([`DEFAULT_TESTGEN_TEMPLATE`]) and a submit tool that takes a file as is; "grade" is then the validity
//! check of the submitted script in a fresh container ([`ServerState::validate_script`]), never a run of the
//! task's tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use swe_env_model::{ClientConfig, ModelClient};
use swe_env_tools::SubmitKind;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::warn;

use super::config::{Maxima, ModelEndpointConfig, ServerConfig};
use super::convert;
use super::error::ServiceError;
use super::proto;
use super::proto::run_episode_event::Event;
use super::registry::EpisodeSlot;
use super::state::{cancelled_end, CheckedTest, InflightGuard, ServerState};
use crate::agent::{
    add_client_info, run_model_agent, start_info_for, ApiMode, ModelAgentConfig, StepEvent,
};
use crate::episode::EndInfo;
use crate::grade::testgen::DEFAULT_TESTGEN_TEMPLATE;
use crate::trajectory::EpisodeStatus;

/// Events buffered towards a slow client before the loop waits for it.
const EVENT_BUFFER: usize = 64;

/// A stream of RunEpisode events.
pub type EventReceiver = mpsc::Receiver<Result<proto::RunEpisodeEvent, Status>>;

/// Model clients of the operator's endpoints, shared by every RunEpisode so that an endpoint's `concurrency` holds
/// across episodes; made on first use, one per (endpoint, model).
#[derive(Debug, Default)]
pub struct ModelClients {
    clients: Mutex<HashMap<(String, String), Arc<ModelClient>>>,
}

impl ModelClients {
    /// The shared client of configured endpoint `name` for `model`.
    fn get(
        &self,
        name: &str,
        endpoint: &ModelEndpointConfig,
        model: &str,
    ) -> Result<Arc<ModelClient>, ServiceError> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (name.to_owned(), model.to_owned());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let mut config = ClientConfig::new(endpoint.base_url.trim(), model);
        // The key of this endpoint, for this endpoint only.
        config.api_key_env = endpoint.api_key_env.clone();
        config.max_in_flight_per_endpoint = endpoint.concurrency;
        let client = ModelClient::new(config).map_err(|e| ServiceError::Internal {
            context: "building the model client of a configured endpoint",
            detail: format!("endpoint `{name}`: {e}"),
        })?;
        let client = Arc::new(client);
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// Validates the request, starts the episode and spawns the loop; the first event (`started`) is already queued.
pub async fn run_episode(
    state: Arc<ServerState>,
    request: proto::RunEpisodeRequest,
) -> Result<EventReceiver, ServiceError> {
    let inflight = state.admit_new()?;
    let create = request
        .episode
        .ok_or_else(|| ServiceError::invalid("episode", "required"))?;
    let endpoint = request
        .model
        .ok_or_else(|| ServiceError::invalid("model", "required"))?;
    let kind = episode_kind(request.kind)?;
    if kind == proto::EpisodeKind::Testgen && create.grade_on_submit {
        // A submitted script must never be graded against the task's tests.
        return Err(ServiceError::invalid(
            "episode.grade_on_submit",
            "not allowed with kind EPISODE_KIND_TESTGEN (the submission is a test script, not a patch); \
             set `grade` instead to get the script's validity check at the end",
        ));
    }
    let mut agent = agent_config(&endpoint, &state.config.maxima)?;
    let client = model_client(&state, &endpoint)?;
    let client_config = client.config().clone();
    let mut plan = state.plan_episode(&create)?;
    plan.config.tool_format = agent.mode.tool_format();
    if kind == proto::EpisodeKind::Testgen {
        // Before the prompt is rendered: the system prompt's tool specs come from this config and describe a
        // file submission; the episode's submit tool then takes the script file as is.
        agent.prompts.user_template = DEFAULT_TESTGEN_TEMPLATE.to_owned();
        plan.config.tools.submit_kind = SubmitKind::File;
    }
    plan.info = start_info_for(&plan.instance, &agent, &plan.config).map_err(|e| {
        ServiceError::invalid("model.mode", format!("cannot render the prompt: {e}"))
    })?;
    add_client_info(&mut plan.info, &client_config);
    let (slot, started) = state.launch_episode(plan).await?;
    let (events, receiver) = mpsc::channel(EVENT_BUFFER);
    let _ = events.try_send(Ok(event(Event::Started(started))));
    tokio::spawn(drive(
        state,
        slot,
        client,
        agent,
        Finish {
            kind,
            grade: request.grade,
        },
        events,
        inflight,
    ));
    Ok(receiver)
}

/// The names of the configured endpoints, for error messages.
fn endpoint_names(config: &ServerConfig) -> String {
    if config.model_endpoints.is_empty() {
        return "none configured".to_owned();
    }
    config
        .model_endpoints
        .keys()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The model client of a request: a configured endpoint by name (its key goes to it and nowhere else), or — only
/// when the operator allows client URLs — the client's URL, with no key.
fn model_client(
    state: &ServerState,
    endpoint: &proto::ModelEndpoint,
) -> Result<Arc<ModelClient>, ServiceError> {
    let config = &state.config;
    let name = endpoint.endpoint.trim();
    let url = endpoint.base_url.trim();
    if !name.is_empty() && !url.is_empty() {
        return Err(ServiceError::invalid(
            "model.base_url",
            "set either `endpoint` (a server endpoint by name) or `base_url`, not both",
        ));
    }
    if !name.is_empty() {
        let Some(configured) = config.model_endpoints.get(name) else {
            return Err(ServiceError::invalid(
                "model.endpoint",
                format!(
                    "unknown endpoint `{name}`; this server's endpoints: {}",
                    endpoint_names(config)
                ),
            ));
        };
        let model = match (endpoint.model.as_str(), configured.models.first()) {
            ("", Some(first)) => first.clone(),
            ("", None) => {
                return Err(ServiceError::invalid(
                    "model.model",
                    format!("required: endpoint `{name}` serves any model name, so name one"),
                ))
            }
            (model, _) => {
                if !configured.models.is_empty() && !configured.models.iter().any(|m| m == model) {
                    return Err(ServiceError::invalid(
                        "model.model",
                        format!(
                            "`{model}` is not allowed on endpoint `{name}`; allowed: {}",
                            configured.models.join(", ")
                        ),
                    ));
                }
                model.to_owned()
            }
        };
        return state.model_clients.get(name, configured, &model);
    }
    if url.is_empty() {
        return Err(ServiceError::invalid(
            "model.endpoint",
            format!(
                "required: name one of this server's endpoints ({})",
                endpoint_names(config)
            ),
        ));
    }
    if !config.allow_client_base_urls {
        return Err(ServiceError::invalid(
            "model.base_url",
            format!(
                "this server does not call client-chosen URLs; name one of its endpoints in `model.endpoint` \
                 ({}), or ask its operator to set `allow_client_base_urls: true`",
                endpoint_names(config)
            ),
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ServiceError::invalid(
            "model.base_url",
            "an http:// or https:// URL is required",
        ));
    }
    if endpoint.model.is_empty() {
        return Err(ServiceError::invalid("model.model", "required"));
    }
    // A client URL never gets a key (`api_key_env` stays unset).
    let client = ModelClient::new(ClientConfig::new(url, endpoint.model.clone()))
        .map_err(|e| ServiceError::invalid("model", e.to_string()))?;
    Ok(Arc::new(client))
}

/// The agent configuration of an endpoint's mode and sampling, validated.
fn agent_config(
    endpoint: &proto::ModelEndpoint,
    maxima: &Maxima,
) -> Result<ModelAgentConfig, ServiceError> {
    let mut agent = ModelAgentConfig::default();
    if !endpoint.mode.is_empty() {
        agent.mode = ApiMode::from_name(&endpoint.mode).ok_or_else(|| {
            ServiceError::invalid(
                "model.mode",
                "one of `chat-text`, `chat-tools`, `completions`",
            )
        })?;
    }
    if let Some(temperature) = endpoint.temperature {
        if !(0.0..=10.0).contains(&temperature) {
            return Err(ServiceError::invalid("model.temperature", "outside 0..=10"));
        }
        agent.sampling.temperature = Some(temperature);
    }
    if let Some(max_tokens) = endpoint.max_tokens {
        if max_tokens == 0 {
            return Err(ServiceError::invalid(
                "model.max_tokens",
                "must be at least 1",
            ));
        }
        if max_tokens > maxima.model_max_tokens {
            return Err(ServiceError::invalid(
                "model.max_tokens",
                format!(
                    "{max_tokens} is above the server maximum {} (server config `maxima.model_max_tokens`)",
                    maxima.model_max_tokens
                ),
            ));
        }
        agent.sampling.max_tokens = Some(max_tokens);
    }
    agent
        .validate()
        .map_err(|e| ServiceError::invalid("model", e.to_string()))?;
    Ok(agent)
}

/// The episode kind of a request; an unknown value is INVALID_ARGUMENT.
fn episode_kind(value: i32) -> Result<proto::EpisodeKind, ServiceError> {
    proto::EpisodeKind::try_from(value).map_err(|_| {
        ServiceError::invalid(
            "kind",
            format!(
                "unknown value {value}; one of 0 (EPISODE_KIND_SOLVE) or 1 (EPISODE_KIND_TESTGEN)"
            ),
        )
    })
}

/// What happens at the end of the loop.
#[derive(Debug, Clone, Copy)]
struct Finish {
    kind: proto::EpisodeKind,
    /// Grade (solve) or check the script's validity (testgen) when there is a submission.
    grade: bool,
}

fn event(event: Event) -> proto::RunEpisodeEvent {
    proto::RunEpisodeEvent { event: Some(event) }
}

/// Runs the loop on the locked slot, then grades and ends the episode, then sends the result.
async fn drive(
    state: Arc<ServerState>,
    slot: Arc<EpisodeSlot>,
    client: Arc<ModelClient>,
    agent: ModelAgentConfig,
    finish: Finish,
    events: mpsc::Sender<Result<proto::RunEpisodeEvent, Status>>,
    _inflight: InflightGuard,
) {
    let mut guard = slot.state.lock().await;
    let Some(live) = guard.live.as_mut() else {
        let _ = events
            .send(Err(ServiceError::EpisodeEnded {
                episode_id: slot.id.clone(),
                status: "cancelled".to_owned(),
            }
            .into()))
            .await;
        return;
    };
    let (step_tx, mut step_rx) = mpsc::channel::<StepEvent>(EVENT_BUFFER);
    let forward = {
        let events = events.clone();
        let state = state.clone();
        tokio::spawn(async move {
            while let Some(step) = step_rx.recv().await {
                match step {
                    StepEvent::Step { record, .. } => {
                        // A departed client does not stop the episode; its events are dropped.
                        let _ = events
                            .send(Ok(event(Event::Step(convert::step_record(&record)))))
                            .await;
                    }
                    StepEvent::ModelCalled {
                        prompt_tokens,
                        completion_tokens,
                        ..
                    } => state.metrics.model_call(prompt_tokens, completion_tokens),
                    // The loop ends `model_error` on a model call that failed after the client's retries.
                    StepEvent::Finished {
                        status: EpisodeStatus::ModelError,
                        ..
                    } => state.metrics.model_call_failed(),
                    _ => {}
                }
            }
        })
    };
    let outcome = tokio::select! {
        outcome = run_model_agent(&mut live.episode, &client, &agent, Some(step_tx)) => Some(outcome),
        _ = state.cancelled() => None,
    };
    let _ = forward.await;
    slot.touch();
    let (mut end, gradable) = match outcome {
        Some(Ok(outcome)) => (outcome.end_info(), true),
        Some(Err(error)) => {
            warn!(episode_id = %slot.id, %error, "server-driven episode failed");
            let mut end = EndInfo::status(EpisodeStatus::SandboxError);
            end.detail = Some(error.to_string());
            (end, false)
        }
        None => (cancelled_end("server shutdown"), false),
    };
    let mut grade_reply = None;
    let mut check_reply = None;
    let checkable = finish.grade && gradable && live.episode.submission().is_some();
    // A test-generation episode that submitted nothing is checked too: its verdict is `no_submission` (no
    // container), so the trainer always gets a reward.
    if finish.grade && gradable && finish.kind == proto::EpisodeKind::Testgen {
        // The script is checked in a fresh container at the base commit; the episode's own container (where the
        // agent acted) is not used. The RunEpisode's admission covers it.
        let check_id = format!("{}-check", slot.id);
        let checked = match state.config.testgen_limits(0) {
            Ok(limits) => {
                state
                    .validate_script(
                        live.episode.instance(),
                        live.episode.submission(),
                        &limits,
                        &check_id,
                    )
                    .await
            }
            Err(error) => Err(error),
        };
        match checked {
            Ok(validation) => {
                check_reply = Some(convert::check_test_response(&CheckedTest::Validity(
                    validation,
                )));
            }
            Err(error) => warn!(
                episode_id = %slot.id,
                %error,
                "checking the generated test of the server-driven episode failed"
            ),
        }
    } else if checkable {
        {
            // The loop is over and nothing else steps this episode (its slot is locked until it ends), so
            // in-place grading may seal its container.
            let grading_id = format!("{}-grade", slot.id);
            match state.grade_episode(&live.episode, &grading_id).await {
                Ok(outcome) => {
                    end.rewards = serde_json::to_value(&outcome.rewards).ok();
                    end.grading = serde_json::to_value(&outcome.report).ok();
                    grade_reply = Some(convert::grade_response(&outcome));
                }
                Err(error) => {
                    warn!(episode_id = %slot.id, %error, "grading the server-driven episode failed")
                }
            }
        }
    }
    state.finish_locked(&slot, &mut guard, end).await;
    drop(guard);
    let result = proto::RunEpisodeResult {
        episode: Some(slot.info()),
        grade: grade_reply,
        check: check_reply,
    };
    let _ = events.send(Ok(event(Event::Result(result)))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episode_kinds_parse_and_an_unknown_one_names_the_field() {
        assert_eq!(episode_kind(0).unwrap(), proto::EpisodeKind::Solve);
        assert_eq!(episode_kind(1).unwrap(), proto::EpisodeKind::Testgen);
        let error = episode_kind(7).unwrap_err();
        let status = Status::from(error);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("kind"), "{}", status.message());
        assert!(
            status.message().contains("EPISODE_KIND_TESTGEN"),
            "{}",
            status.message()
        );
    }
}
