//! Server-driven episodes (RunEpisode): the server starts an episode, runs the model agent loop against the
//! client's OpenAI-compatible endpoint, streams each recorded step, grades when asked, and ends the episode. The
//! episode lives in the registry like any other (listed, cancelled by a drain); its slot stays locked while the
//! loop runs, so client Steps on it wait and then find it ended.

use std::sync::Arc;

use swe_env_model::{ClientConfig, ModelClient};
use tokio::sync::mpsc;
use tonic::Status;
use tracing::warn;

use super::convert;
use super::error::ServiceError;
use super::proto;
use super::proto::run_episode_event::Event;
use super::registry::EpisodeSlot;
use super::state::{cancelled_end, InflightGuard, ServerState};
use crate::agent::{
    add_client_info, run_model_agent, start_info_for, ApiMode, ModelAgentConfig, StepEvent,
};
use crate::episode::EndInfo;
use crate::trajectory::EpisodeStatus;

/// Events buffered towards a slow client before the loop waits for it.
const EVENT_BUFFER: usize = 64;

/// A stream of RunEpisode events.
pub type EventReceiver = mpsc::Receiver<Result<proto::RunEpisodeEvent, Status>>;

/// Validates the request, starts the episode and spawns the loop; the first event (`started`) is already queued.
pub async fn run_episode(
    state: Arc<ServerState>,
    request: proto::RunEpisodeRequest,
) -> Result<EventReceiver, ServiceError> {
    let inflight = state.enter()?;
    let create = request
        .episode
        .ok_or_else(|| ServiceError::invalid("episode", "required"))?;
    let endpoint = request
        .model
        .ok_or_else(|| ServiceError::invalid("model", "required"))?;
    let (agent, client_config) = agent_config(&endpoint, state.config.model_api_key_env.clone())?;
    let client = ModelClient::new(client_config.clone())
        .map_err(|e| ServiceError::invalid("model", e.to_string()))?;
    let mut plan = state.plan_episode(&create)?;
    plan.config.tool_format = agent.mode.tool_format();
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
        request.grade,
        events,
        inflight,
    ));
    Ok(receiver)
}

/// The agent configuration and model client of an endpoint, validated.
fn agent_config(
    endpoint: &proto::ModelEndpoint,
    api_key_env: Option<String>,
) -> Result<(ModelAgentConfig, ClientConfig), ServiceError> {
    let url = endpoint.base_url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ServiceError::invalid(
            "model.base_url",
            "an http:// or https:// URL is required",
        ));
    }
    if endpoint.model.is_empty() {
        return Err(ServiceError::invalid("model.model", "required"));
    }
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
        agent.sampling.max_tokens = Some(max_tokens);
    }
    agent
        .validate()
        .map_err(|e| ServiceError::invalid("model", e.to_string()))?;
    let mut client = ClientConfig::new(url, endpoint.model.clone());
    client.api_key_env = api_key_env;
    Ok((agent, client))
}

fn event(event: Event) -> proto::RunEpisodeEvent {
    proto::RunEpisodeEvent { event: Some(event) }
}

/// Runs the loop on the locked slot, then grades and ends the episode, then sends the result.
async fn drive(
    state: Arc<ServerState>,
    slot: Arc<EpisodeSlot>,
    client: ModelClient,
    agent: ModelAgentConfig,
    grade: bool,
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
        tokio::spawn(async move {
            while let Some(step) = step_rx.recv().await {
                if let StepEvent::Step { record, .. } = step {
                    // A departed client does not stop the episode; its events are dropped.
                    let _ = events
                        .send(Ok(event(Event::Step(convert::step_record(&record)))))
                        .await;
                }
            }
        })
    };
    let mut cancel = state.cancelled();
    let outcome = tokio::select! {
        outcome = run_model_agent(&mut live.episode, &client, &agent, Some(step_tx)) => Some(outcome),
        _ = cancel.wait_for(|cancelled| *cancelled) => None,
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
    if grade && gradable && live.episode.submission().is_some() {
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
    };
    let _ = events.send(Ok(event(Event::Result(result)))).await;
}
