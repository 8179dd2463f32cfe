//! The model agent loop: render the prompt, call the model, turn its reply into one [`Action`], step the episode,
//! feed the observation back, check budgets — until the model gives its final answer after submitting, a budget
//! runs out, it keeps writing unparsable replies, or its endpoint fails. Every ending is a named
//! [`EpisodeStatus`].
//!
//! How a reply becomes an action, per [`ApiMode`]:
//! - `chat-tools`: exactly one native tool call is the action; several calls in one reply are one format-error
//!   step (each call id gets the error as its `tool` message, as the API requires); a reply with no call is a
//!   format error before any submission and the final answer after one.
//! - `chat-text` and `completions`: the whole assistant text is a CWM text action (`<tool: NAME>` …); a reply
//!   with no call at all after a submission is the final answer.
//!
//! How observations go back: `chat-tools` as a `tool` message answering the call id (a `user` message when there
//! was no call to answer); `chat-text` as a `user` message (chat templates reject `tool` turns without ids);
//! `completions` in the CWM transcript as a `tool: NAME` turn, or a `user` turn for format errors — the same
//! roles as the trajectory's CWM export, so the exported transcript is the prompt the model saw.
//!
//! `run_model_agent` never calls `Episode::finish`: the caller grades the submission, then finishes the episode
//! with [`ModelAgentOutcome::end_info`] (plus rewards and the grading report).

use std::time::{Duration, Instant};

use serde_json::json;
use swe_env_model::{
    ChatMessage, Completion, CwmLayout, ModelClient, ModelError, ModelRequest, ToolSpec,
};
use swe_env_tools::{parse_text_call, CallError};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::cost::Spend;
use super::model_config::{
    native_tool_specs_for, opening_prompt, AfterSubmit, ApiMode, ModelAgentConfig,
};
use super::AgentOutcome;
use crate::episode::{Action, EndInfo, Episode, EpisodeError, StepMeta, StepOutcome};
use crate::trajectory::{EpisodeStatus, StepRecord, StepTokens};

/// Stored in place of a log-probability the server sent as null (vLLM's own stand-in for minus infinity);
/// JSON has no infinities.
pub const MISSING_LOGPROB: f64 = -9999.0;

/// What a live view (the CLI, the gRPC `RunEpisode` stream) is told while the loop runs.
// A few events per model call: the size of `Step` costs nothing, and a plain record is simpler to consume.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StepEvent {
    /// A model call returned (after the client's retries).
    ModelCalled {
        /// 0-based index of the call in the episode.
        call_idx: u32,
        /// Wall time of the call, retries and backoff included, ms.
        model_ms: u64,
        /// HTTP attempts the call took (1 = no retry).
        attempts: u32,
        /// Prompt tokens, when the server reported them.
        prompt_tokens: Option<u64>,
        /// Completion tokens, when the server reported them.
        completion_tokens: Option<u64>,
        /// Why generation stopped (`stop`, `length`, `tool_calls`, …).
        finish_reason: Option<String>,
    },
    /// A step was taken and recorded (durably) in the trajectory.
    Step {
        /// The step record as written.
        record: StepRecord,
        /// The observation the model sees next (same text as `record.observation`).
        observation: String,
        /// A submit succeeded in this step.
        submitted: bool,
    },
    /// The loop ended (the episode itself is finished by the caller).
    Finished {
        /// Why it ended.
        status: EpisodeStatus,
        /// Detail: the error, the budget, or a note.
        detail: Option<String>,
        /// The model's final answer, when it gave one.
        final_answer: Option<String>,
        /// Steps taken.
        n_steps: u32,
        /// Whether a submission exists (grade it whatever the status).
        submitted: bool,
    },
}

/// What a model-driven run ended with, before grading.
#[derive(Debug, Clone)]
pub struct ModelAgentOutcome {
    /// Status, submission and step count (the submission is the episode's latest; grade it whenever it is
    /// `Some`, even when a budget ended the run after a submit).
    pub agent: AgentOutcome,
    /// Why the loop ended, in words (the model error, the budget hit, a note), when there is more to say.
    pub detail: Option<String>,
    /// The model's final answer after submitting.
    pub final_answer: Option<String>,
    /// Tokens of the final-answer call (the trajectory has no step for it).
    pub final_answer_tokens: Option<StepTokens>,
    /// Separated reasoning of the final-answer call.
    pub final_answer_reasoning: Option<String>,
    /// Successful model calls.
    pub n_model_calls: u32,
    /// Prompt tokens summed over calls (as reported by the server; 0 when it reports none).
    pub prompt_tokens: u64,
    /// Completion tokens summed over calls.
    pub completion_tokens: u64,
    /// Time spent waiting for the model, retries included.
    pub model_time: Duration,
    /// USD spent over all calls, when the served model has a price in the agent config.
    pub cost_usd: Option<f64>,
    /// Steps whose reply could not be parsed into a tool call.
    pub n_format_errors: u32,
    /// The loop ended with `model_error` because the endpoint refused this episode's own request (an HTTP 4xx other
    /// than 408 / 429, a malformed or oversized answer, a prompt that does not render): retrying the same episode
    /// would fail the same way, unlike an endpoint that is down.
    pub model_rejected: bool,
}

impl ModelAgentOutcome {
    /// Prompt plus completion tokens over all calls.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// The `episode_end` information (status, detail, final answer); add rewards and grading before finishing.
    pub fn end_info(&self) -> EndInfo {
        EndInfo {
            detail: self.detail.clone(),
            final_answer: self.final_answer.clone(),
            final_answer_tokens: self.final_answer_tokens.clone(),
            final_answer_reasoning: self.final_answer_reasoning.clone(),
            ..EndInfo::status(self.agent.status)
        }
    }
}

/// What one reply means for the loop.
enum Reply {
    /// Run this action; `assistant` is the turn to append to the conversation.
    Act {
        action: Action,
        assistant: ChatMessage,
    },
    /// A native-tools reply that is no single call: a format-error step. `answer_ids` are the call ids
    /// (with tool names) that must each get the error as their `tool` message.
    Reject {
        raw_action: String,
        message: String,
        assistant: ChatMessage,
        answer_ids: Vec<(String, String)>,
    },
    /// The final answer after a submission.
    Final(String),
    /// After a submission in final-answer-only mode the model called a tool instead; it is not run.
    ToolAfterSubmit,
}

/// The messages sent so far and how they are sent.
struct Conversation {
    mode: ApiMode,
    messages: Vec<ChatMessage>,
    tools: Vec<ToolSpec>,
    layout: CwmLayout,
}

impl Conversation {
    fn request(
        &self,
        config: &ModelAgentConfig,
        episode: &Episode,
    ) -> Result<ModelRequest, String> {
        let mut sampling = config.sampling.clone();
        if self.mode == ApiMode::Completions && sampling.stop.is_empty() {
            sampling.stop = self.layout.stop.clone();
        }
        if let Some(max_tokens) = sampling.max_tokens {
            let left = episode
                .config()
                .context_tokens
                .saturating_sub(episode.context_tokens_used())
                .max(1);
            sampling.max_tokens = Some(u64::from(max_tokens).min(left) as u32);
        }
        let request = match self.mode {
            ApiMode::ChatTools => ModelRequest::chat(self.messages.clone(), self.tools.clone()),
            ApiMode::ChatText => ModelRequest::chat(self.messages.clone(), Vec::new()),
            ApiMode::Completions => ModelRequest::prompt(
                self.layout
                    .render_prompt(&self.messages)
                    .map_err(|error| error.to_string())?,
            ),
        };
        Ok(request.with_sampling(sampling).with_user(episode.id()))
    }

    /// Appends the model's turn and the observation it got.
    fn push_step(&mut self, assistant: ChatMessage, outcome: &StepOutcome) {
        let record = &outcome.record;
        let observation = outcome.observation.clone();
        let reply = match (self.mode, &record.tool_call_id) {
            (ApiMode::ChatTools, Some(call_id)) => {
                let name = assistant
                    .tool_calls
                    .first()
                    .map(|call| call.name.clone())
                    .unwrap_or_default();
                ChatMessage::tool_result(call_id.clone(), name, observation)
            }
            (ApiMode::Completions, _) => match (&record.tool, &record.format_error) {
                (Some(tool), None) => ChatMessage::tool_output(tool.clone(), observation),
                _ => ChatMessage::user(observation),
            },
            _ => ChatMessage::user(observation),
        };
        self.messages.push(assistant);
        self.messages.push(reply);
    }

    /// Appends a rejected native turn: every call id it made is answered with the error.
    fn push_rejected(
        &mut self,
        assistant: ChatMessage,
        answer_ids: &[(String, String)],
        observation: &str,
    ) {
        self.messages.push(assistant);
        if answer_ids.is_empty() {
            self.messages.push(ChatMessage::user(observation));
        }
        for (call_id, name) in answer_ids {
            self.messages.push(ChatMessage::tool_result(
                call_id.clone(),
                name.clone(),
                observation,
            ));
        }
    }
}

/// The text after the last `</think>`, trimmed: the answer without its reasoning.
fn answer_text(text: &str) -> String {
    text.rsplit_once("</think>")
        .map_or(text, |(_, after)| after)
        .trim()
        .to_owned()
}

fn interpret(
    mode: ApiMode,
    completion: &Completion,
    layout: &CwmLayout,
    submitted: bool,
    after_submit: AfterSubmit,
) -> Reply {
    let final_only = submitted && after_submit == AfterSubmit::FinalAnswerOnly;
    match mode {
        ApiMode::ChatTools => {
            let calls = &completion.tool_calls;
            if calls.is_empty() {
                if submitted {
                    return Reply::Final(answer_text(&completion.text));
                }
                return Reply::Reject {
                    raw_action: completion.text.clone(),
                    message: format!(
                        "no tool call found; call exactly one of the tools ({}) through function calling",
                        swe_env_tools::ToolName::available()
                    ),
                    assistant: ChatMessage::assistant(completion.text.clone()),
                    answer_ids: Vec::new(),
                };
            }
            if final_only {
                return Reply::ToolAfterSubmit;
            }
            let assistant =
                ChatMessage::assistant_with_tool_calls(completion.text.clone(), calls.clone());
            if let [call] = calls.as_slice() {
                return Reply::Act {
                    action: Action::Call {
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                        call_id: Some(call.id.clone()),
                    },
                    assistant,
                };
            }
            let names: Vec<&str> = calls.iter().map(|call| call.name.as_str()).collect();
            let raw: Vec<serde_json::Value> = calls
                .iter()
                .map(|call| json!({"name": call.name, "arguments": call.arguments, "id": call.id}))
                .collect();
            Reply::Reject {
                raw_action: serde_json::Value::Array(raw).to_string(),
                message: format!(
                    "expected exactly one tool call per turn but found {} ({}); none was run, send one call and \
                     wait for its output",
                    calls.len(),
                    names.join(", ")
                ),
                answer_ids: calls
                    .iter()
                    .map(|call| (call.id.clone(), call.name.clone()))
                    .collect(),
                assistant,
            }
        }
        ApiMode::ChatText | ApiMode::Completions => {
            let text = if mode == ApiMode::Completions {
                format!("{}{}", layout.assistant_prefix, completion.text)
            } else {
                completion.text.clone()
            };
            if submitted {
                match parse_text_call(&text) {
                    Err(CallError::NoCall { .. }) => return Reply::Final(answer_text(&text)),
                    Err(_) if final_only => return Reply::Final(answer_text(&text)),
                    Ok(_) if final_only => return Reply::ToolAfterSubmit,
                    _ => {}
                }
            }
            Reply::Act {
                assistant: ChatMessage::assistant(text.clone()),
                action: Action::Text(text),
            }
        }
    }
}

/// Token accounting of one call, for the step record.
pub fn step_tokens(completion: &Completion) -> StepTokens {
    let usage = completion
        .usage
        .filter(|usage| usage.prompt_tokens > 0 || usage.completion_tokens > 0);
    StepTokens {
        prompt: usage.map(|usage| usage.prompt_tokens),
        completion: usage.map(|usage| usage.completion_tokens),
        token_ids: completion
            .token_ids
            .as_ref()
            .map(|ids| ids.iter().map(|&id| i64::from(id)).collect()),
        logprobs: completion.logprobs.as_ref().map(|tokens| {
            tokens
                .iter()
                .map(|token| token.logprob.unwrap_or(MISSING_LOGPROB))
                .collect()
        }),
        tokens: completion
            .logprobs
            .as_ref()
            .map(|tokens| tokens.iter().map(|token| token.token.clone()).collect()),
        prompt_token_ids: completion
            .prompt_token_ids
            .as_ref()
            .map(|ids| ids.iter().map(|&id| i64::from(id)).collect()),
        finish_reason: completion.finish_reason.clone(),
        sampling: Some(completion.sampling.clone()).filter(|sampling| !sampling.is_null()),
        endpoint: Some(completion.endpoint.clone()),
        cost_usd: None,
        episode_cost_usd: None,
    }
}

/// Whether a failed call means the prompt no longer fits the model's context (servers answer 400 and say so).
fn is_context_overflow(error: &ModelError) -> bool {
    match error {
        ModelError::HttpStatus {
            status: 400,
            body_snippet,
            ..
        } => {
            let body = body_snippet.to_ascii_lowercase();
            [
                "context length",
                "context_length",
                "maximum context",
                "max_model_len",
                "too many tokens",
                "prompt is too long",
            ]
            .iter()
            .any(|needle| body.contains(needle))
        }
        _ => false,
    }
}

/// Sends an event; false when nobody listens any more.
async fn emit(events: &Option<mpsc::Sender<StepEvent>>, event: StepEvent) -> bool {
    match events {
        Some(sender) => sender.send(event).await.is_ok(),
        None => true,
    }
}

/// The running totals of one loop.
struct Tally {
    spend: Spend,
    n_model_calls: u32,
    prompt_tokens: u64,
    completion_tokens: u64,
    model_time: Duration,
    n_format_errors: u32,
}

/// Drives `episode` with the model behind `client` until it ends (see the module docs), streaming
/// [`StepEvent`]s to `events` when given. Does not call `Episode::finish`: grade, then finish with
/// [`ModelAgentOutcome::end_info`].
///
/// Endings: `submitted` (final answer after a submission, or a tool call after it in final-answer-only mode),
/// `max_turns` / `context_exhausted` / `wall_clock` (budgets; a 400 saying the prompt exceeds the model's
/// context also counts as `context_exhausted`), `format_errors` (that many unparsable replies in a row),
/// `token_limit` / `cost_limit` (the agent config's per-episode `limits`, checked before each call and after
/// each step), `model_error` (the endpoint failed after the client's retries, the prompt could not be rendered, or
/// a cost limit is set without a price for the served model), and
/// `cancelled` when the `events` receiver is dropped (the live view went away).
///
/// Set the episode's `tool_format` to `config.mode.tool_format()` so its trajectory exports right.
/// `Err` is infrastructure only (the sandbox or the trajectory file failed).
pub async fn run_model_agent(
    episode: &mut Episode,
    client: &ModelClient,
    config: &ModelAgentConfig,
    events: Option<mpsc::Sender<StepEvent>>,
) -> Result<ModelAgentOutcome, EpisodeError> {
    let mut tally = Tally {
        spend: Spend::default(),
        n_model_calls: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        model_time: Duration::ZERO,
        n_format_errors: 0,
    };
    let loop_started = Instant::now();
    let mut final_answer = None;
    let mut final_answer_tokens = None;
    let mut final_answer_reasoning = None;
    let mut model_rejected = false;
    let (status, detail) = 'run: {
        let price = match config
            .limits
            .price_for(&config.prices, &client.config().model)
        {
            Ok(price) => price.copied(),
            Err(error) => {
                model_rejected = true;
                break 'run (EpisodeStatus::ModelError, Some(error));
            }
        };
        let (system, user) = match opening_prompt(episode.instance(), config, episode.config()) {
            Ok(prompt) => prompt,
            Err(error) => {
                model_rejected = true;
                break 'run (
                    EpisodeStatus::ModelError,
                    Some(format!("invalid prompt config: {error}")),
                );
            }
        };
        let mut conversation = Conversation {
            mode: config.mode,
            messages: vec![ChatMessage::system(system), ChatMessage::user(user)],
            tools: native_tool_specs_for(episode.config().tools.submit_kind),
            layout: config.prompts.cwm_layout.clone(),
        };
        let mut consecutive_format_errors = 0u32;
        let mut submitted = episode.submission().is_some();
        loop {
            if let Some(status) = episode.exhausted_budget() {
                break 'run (status, Some(budget_detail(status, episode)));
            }
            if let Some(status) = config.limits.reached(&tally.spend) {
                break 'run (status, Some(config.limits.detail(status, &tally.spend)));
            }
            let request = match conversation.request(config, episode) {
                Ok(request) => request,
                Err(error) => {
                    model_rejected = true;
                    break 'run (
                        EpisodeStatus::ModelError,
                        Some(format!("cannot render the prompt: {error}")),
                    );
                }
            };
            let wall_left = episode
                .config()
                .wall_clock
                .saturating_sub(loop_started.elapsed())
                .max(Duration::from_millis(1));
            let called = Instant::now();
            let completion = match tokio::time::timeout(wall_left, client.call(&request)).await {
                Err(_) => {
                    tally.model_time += called.elapsed();
                    break 'run (
                        EpisodeStatus::WallClock,
                        Some(format!(
                            "the wall-clock budget ({} s) ran out during a model call",
                            episode.config().wall_clock.as_secs()
                        )),
                    );
                }
                Ok(Err(error)) => {
                    tally.model_time += called.elapsed();
                    let status = if is_context_overflow(&error) {
                        EpisodeStatus::ContextExhausted
                    } else {
                        model_rejected = error.is_request_rejected();
                        EpisodeStatus::ModelError
                    };
                    break 'run (status, Some(error.to_string()));
                }
                Ok(Ok(completion)) => completion,
            };
            let call_idx = tally.n_model_calls;
            tally.n_model_calls += 1;
            tally.model_time += completion.total_duration;
            let mut tokens = step_tokens(&completion);
            tally.prompt_tokens += tokens.prompt.unwrap_or(0);
            tally.completion_tokens += tokens.completion.unwrap_or(0);
            tokens.cost_usd = tally.spend.add_call(
                price.as_ref(),
                tokens.prompt.unwrap_or(0),
                tokens.completion.unwrap_or(0),
            );
            tokens.episode_cost_usd = tokens.cost_usd.and(tally.spend.cost_usd);
            if let (Some(prompt), Some(generated)) = (tokens.prompt, tokens.completion) {
                episode.set_context_tokens_used(prompt + generated);
            }
            let model_ms = completion.total_duration.as_millis() as u64;
            debug!(episode_id = %episode.id(), call_idx, model_ms, attempts = completion.attempts, "model called");
            let listening = emit(
                &events,
                StepEvent::ModelCalled {
                    call_idx,
                    model_ms,
                    attempts: completion.attempts,
                    prompt_tokens: tokens.prompt,
                    completion_tokens: tokens.completion,
                    finish_reason: completion.finish_reason.clone(),
                },
            )
            .await;
            if !listening {
                break 'run cancelled_detail();
            }
            let meta = StepMeta {
                request_id: None,
                model_ms: Some(model_ms),
                tokens,
                reasoning: completion
                    .reasoning
                    .clone()
                    .filter(|r| !r.trim().is_empty()),
                content: content_beside_call(config.mode, &completion),
            };
            let reply = interpret(
                config.mode,
                &completion,
                &conversation.layout,
                submitted,
                config.after_submit,
            );
            let outcome = match reply {
                Reply::Final(answer) => {
                    final_answer = Some(answer);
                    final_answer_tokens = Some(meta.tokens);
                    final_answer_reasoning = meta.reasoning;
                    break 'run (EpisodeStatus::Submitted, None);
                }
                Reply::ToolAfterSubmit => {
                    break 'run (
                        EpisodeStatus::Submitted,
                        Some(
                            "the model called a tool after submitting; the call was not run".into(),
                        ),
                    )
                }
                Reply::Act { action, assistant } => {
                    let outcome = episode.step(action, meta).await?;
                    conversation.push_step(assistant, &outcome);
                    outcome
                }
                Reply::Reject {
                    raw_action,
                    message,
                    assistant,
                    answer_ids,
                } => {
                    let outcome = episode
                        .step_format_error(raw_action, &message, meta)
                        .await?;
                    conversation.push_rejected(assistant, &answer_ids, &outcome.observation);
                    outcome
                }
            };
            submitted |= outcome.submitted;
            if outcome.record.format_error.is_some() {
                tally.n_format_errors += 1;
                consecutive_format_errors += 1;
            } else {
                consecutive_format_errors = 0;
            }
            let listening = emit(
                &events,
                StepEvent::Step {
                    record: outcome.record.clone(),
                    observation: outcome.observation.clone(),
                    submitted: outcome.submitted,
                },
            )
            .await;
            if !listening {
                break 'run cancelled_detail();
            }
            if consecutive_format_errors >= config.max_consecutive_format_errors {
                break 'run (
                    EpisodeStatus::FormatErrors,
                    Some(format!(
                        "{consecutive_format_errors} consecutive replies could not be parsed; last: {}",
                        outcome.record.format_error.unwrap_or_default()
                    )),
                );
            }
            if let Some(status) = outcome.end_status {
                break 'run (status, Some(budget_detail(status, episode)));
            }
            if let Some(status) = config.limits.reached(&tally.spend) {
                break 'run (status, Some(config.limits.detail(status, &tally.spend)));
            }
        }
    };
    let submission = episode.submission().map(str::to_owned);
    info!(
        episode_id = %episode.id(),
        status = status.as_str(),
        n_steps = episode.n_steps(),
        n_model_calls = tally.n_model_calls,
        submitted = submission.is_some(),
        "model agent finished"
    );
    let outcome = ModelAgentOutcome {
        agent: AgentOutcome {
            status,
            submission,
            n_steps: episode.n_steps(),
        },
        detail,
        final_answer,
        final_answer_tokens,
        final_answer_reasoning,
        n_model_calls: tally.n_model_calls,
        prompt_tokens: tally.prompt_tokens,
        completion_tokens: tally.completion_tokens,
        model_time: tally.model_time,
        cost_usd: tally.spend.cost_usd,
        n_format_errors: tally.n_format_errors,
        model_rejected,
    };
    emit(
        &events,
        StepEvent::Finished {
            status: outcome.agent.status,
            detail: outcome.detail.clone(),
            final_answer: outcome.final_answer.clone(),
            n_steps: outcome.agent.n_steps,
            submitted: outcome.agent.submission.is_some(),
        },
    )
    .await;
    Ok(outcome)
}

fn cancelled_detail() -> (EpisodeStatus, Option<String>) {
    (
        EpisodeStatus::Cancelled,
        Some("the event receiver was dropped, so the run was stopped".into()),
    )
}

/// In chat-tools mode the assistant text sent next to a native call (its `content`), recorded as is in
/// `StepRecord::content`, apart from the separated reasoning. In the text modes the whole text is the action.
fn content_beside_call(mode: ApiMode, completion: &Completion) -> Option<String> {
    (mode == ApiMode::ChatTools
        && !completion.tool_calls.is_empty()
        && !completion.text.trim().is_empty())
    .then(|| completion.text.clone())
}

fn budget_detail(status: EpisodeStatus, episode: &Episode) -> String {
    let config = episode.config();
    match status {
        EpisodeStatus::MaxTurns => format!("the turn budget ({} turns) ran out", config.max_turns),
        EpisodeStatus::ContextExhausted => format!(
            "the context budget ({} tokens) ran out: {} used",
            config.context_tokens,
            episode.context_tokens_used()
        ),
        EpisodeStatus::WallClock => format!(
            "the wall-clock budget ({} s) ran out",
            config.wall_clock.as_secs()
        ),
        other => other.as_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swe_env_model::{TokenLogprob, ToolCall, Usage};

    fn completion(text: &str, calls: &[(&str, &str)]) -> Completion {
        Completion {
            text: text.into(),
            reasoning: None,
            tool_calls: calls
                .iter()
                .enumerate()
                .map(|(index, (name, arguments))| ToolCall {
                    id: format!("call_{index}"),
                    name: (*name).into(),
                    arguments: (*arguments).into(),
                })
                .collect(),
            finish_reason: None,
            usage: None,
            logprobs: None,
            token_ids: None,
            prompt_token_ids: None,
            extra: serde_json::Map::new(),
            endpoint: "http://127.0.0.1:1/v1".into(),
            latency: Duration::ZERO,
            total_duration: Duration::ZERO,
            attempts: 1,
            sampling: json!({"temperature": 0.5, "logprobs": 0}),
        }
    }

    fn check(mode: ApiMode, reply: &Completion, submitted: bool, after: AfterSubmit, expect: &str) {
        let got = match interpret(mode, reply, &CwmLayout::default(), submitted, after) {
            Reply::Act { action, .. } => format!("act {action:?}"),
            Reply::Reject {
                message,
                answer_ids,
                ..
            } => {
                format!("reject {} {message}", answer_ids.len())
            }
            Reply::Final(text) => format!("final {text}"),
            Reply::ToolAfterSubmit => "tool after submit".into(),
        };
        assert!(got.starts_with(expect), "{got}");
    }

    #[test]
    fn replies_become_actions_rejections_or_answers() {
        let keep = AfterSubmit::KeepWorking;
        let call = completion("", &[("bash", "{\"command\":\"ls\"}")]);
        check(
            ApiMode::ChatTools,
            &call,
            false,
            keep,
            "act Call { name: \"bash\"",
        );
        let two = completion("", &[("bash", "{}"), ("submit", "{}")]);
        check(
            ApiMode::ChatTools,
            &two,
            false,
            keep,
            "reject 2 expected exactly one tool call per turn but found 2 (bash, submit)",
        );
        let none = completion("I think it works.", &[]);
        check(
            ApiMode::ChatTools,
            &none,
            false,
            keep,
            "reject 0 no tool call found",
        );
        check(
            ApiMode::ChatTools,
            &none,
            true,
            keep,
            "final I think it works.",
        );
        check(
            ApiMode::ChatTools,
            &call,
            true,
            AfterSubmit::FinalAnswerOnly,
            "tool after submit",
        );

        let text = completion("<think>hm</think>\n<tool: bash>\nls\n</tool>", &[]);
        check(ApiMode::ChatText, &text, false, keep, "act Text(");
        check(ApiMode::ChatText, &text, true, keep, "act Text(");
        check(
            ApiMode::Completions,
            &text,
            true,
            AfterSubmit::FinalAnswerOnly,
            "tool after submit",
        );
        let answer = completion("<think>done</think>\n## Fix\nSorted the ranges.", &[]);
        check(ApiMode::ChatText, &answer, false, keep, "act Text(");
        check(
            ApiMode::Completions,
            &answer,
            true,
            keep,
            "final ## Fix\nSorted the ranges.",
        );
    }

    #[test]
    fn tokens_and_logprobs_are_converted() {
        let mut reply = completion("x", &[]);
        reply.usage = Some(Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
        });
        reply.token_ids = Some(vec![7, 8]);
        reply.logprobs = Some(vec![
            TokenLogprob {
                token: "a".into(),
                logprob: Some(-0.5),
                top_logprobs: Vec::new(),
            },
            TokenLogprob {
                token: "b".into(),
                logprob: None,
                top_logprobs: Vec::new(),
            },
        ]);
        let tokens = step_tokens(&reply);
        assert_eq!(tokens.prompt, Some(10));
        assert_eq!(tokens.completion, Some(2));
        assert_eq!(tokens.token_ids, Some(vec![7, 8]));
        assert_eq!(tokens.logprobs, Some(vec![-0.5, MISSING_LOGPROB]));
        assert_eq!(tokens.tokens, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(
            tokens.sampling,
            Some(json!({"temperature": 0.5, "logprobs": 0}))
        );
        assert_eq!(tokens.endpoint.as_deref(), Some("http://127.0.0.1:1/v1"));
        reply.usage = Some(Usage::default());
        assert_eq!(
            step_tokens(&reply).prompt,
            None,
            "all-zero usage means unknown"
        );
    }

    #[test]
    fn text_beside_a_native_call_is_its_own_field() {
        let mut call = completion("", &[("bash", "{}")]);
        assert_eq!(content_beside_call(ApiMode::ChatTools, &call), None);
        call.text = "I will list".into();
        assert_eq!(
            content_beside_call(ApiMode::ChatTools, &call).as_deref(),
            Some("I will list")
        );
        // Text modes: the reply text is the action itself.
        let text = completion("<tool: bash>\nls\n</tool>", &[]);
        assert_eq!(content_beside_call(ApiMode::ChatText, &text), None);
        assert_eq!(content_beside_call(ApiMode::Completions, &text), None);
    }

    #[test]
    fn context_overflow_is_recognised() {
        let error = |status, body: &str| ModelError::HttpStatus {
            endpoint: "e".into(),
            status,
            attempts: 1,
            body_snippet: body.into(),
            hint: "",
        };
        assert!(is_context_overflow(&error(
            400,
            "This model's maximum context length is 8192 tokens"
        )));
        assert!(!is_context_overflow(&error(400, "bad temperature")));
        assert!(!is_context_overflow(&error(500, "maximum context length")));
        // A refused request is the episode's own (retrying repeats it); an overloaded or down endpoint is not.
        assert!(error(400, "bad temperature").is_request_rejected());
        assert!(error(404, "no such model").is_request_rejected());
        for transient in [408, 429, 500, 503] {
            assert!(!error(transient, "").is_request_rejected(), "{transient}");
        }
    }
}
