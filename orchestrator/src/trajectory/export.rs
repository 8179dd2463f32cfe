//! Exporters from trajectories to training formats. Both produce one JSON object per episode, so a JSONL file of
//! them loads with HF `datasets` (`load_dataset("json", data_files=…)`).
//!
//! Every row: `episode_id`, `instance_id`, `status`, `rewards`, `messages` and `metadata` ([`metadata`]: ids,
//! repo, outcome, rewards, turns, tokens, model and sampling, harvest ids). Nothing hidden from the agent is
//! exported: the task row (gold `patch`, `test_patch`, `FAIL_TO_PASS`, `PASS_TO_PASS`) and the grading report
//! stay out unless [`ExportOptions::include_task`] asks for them, and then only in `metadata`.
//!
//! - OpenAI chat messages ([`to_openai_chat_with`]): `system`, `user`, then per step the `assistant` turn and the
//!   observation — as a `tool` message answering a native tool call (JSON format, with the calls exactly as the
//!   model wrote them), else as a `user` message (CWM text format). Separate reasoning stays in its own field,
//!   `reasoning_content` (null when none), on every assistant message. `tools` holds the OpenAI tool schemas of a
//!   JSON-format episode (empty for text-format episodes).
//! - CWM transcript ([`to_cwm_transcript_with`]): roles `system`, `user`, `assistant` and `tool: NAME` for tool
//!   outputs; format errors go back to the model as `user` turns, as the CWM scaffold does. Every assistant
//!   message has `reasoning`: the model's separate reasoning of that turn (the final answer's too), null when none,
//!   never rendered into the content (the layout did not render it either). Its `content` is the raw action; in a
//!   chat-tools episode the text the model sent beside a call comes first, then a blank line, then the call as
//!   recorded (the JSON `raw_action`). Plus `token_view`
//!   ([`token_view`]): the token ids of the whole episode with a loss mask, when they were recorded.

use serde_json::{json, Map, Value};

use super::filter::{model_calls, patch_hash, resolved_of, TokenTotals};
use super::reader::ReadTrajectory;
use super::record::{StepRecord, StepTokens};

/// Where a trajectory came from in a harvest (absent for plain trajectory files).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutInfo {
    /// The rollout id.
    pub rollout_id: String,
    /// Sample index within the task.
    pub sample_idx: u32,
    /// The rollout's seed.
    pub seed: Option<u64>,
    /// The rollout's temperature.
    pub temperature: Option<f64>,
    /// SHA-256 of the dataset file.
    pub dataset_sha256: String,
    /// Hash of the harvest's result-changing config.
    pub config_hash: String,
}

/// What goes into an exported row besides the conversation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExportOptions {
    /// Put the full task row and the grading report into `metadata` (they hold the gold patch, the test patch and
    /// the FAIL/PASS lists: never for training inputs).
    pub include_task: bool,
    /// Harvest ids of the trajectory.
    pub rollout: Option<RolloutInfo>,
}

/// One episode as OpenAI chat messages, with default options.
pub fn to_openai_chat(trajectory: &ReadTrajectory) -> Value {
    to_openai_chat_with(trajectory, &ExportOptions::default())
}

/// One episode as a CWM transcript, with default options.
pub fn to_cwm_transcript(trajectory: &ReadTrajectory) -> Value {
    to_cwm_transcript_with(trajectory, &ExportOptions::default())
}

fn prompt_messages(trajectory: &ReadTrajectory) -> Vec<Value> {
    trajectory
        .start
        .iter()
        .flat_map(|start| &start.prompt)
        .map(|message| json!({"role": message.role, "content": message.content}))
        .collect()
}

fn is_native(trajectory: &ReadTrajectory) -> bool {
    trajectory
        .start
        .as_ref()
        .is_some_and(|s| s.tool_format == "json")
}

/// The native calls of a step's raw action: `{"name", "arguments"}` (one call, whose id is the step's
/// `tool_call_id`) or an array of `{"name", "arguments", "id"}` (a turn with several calls, refused). Arguments stay
/// exactly as the model wrote them.
fn native_calls(step: &StepRecord) -> Option<Vec<Value>> {
    let raw: Value = serde_json::from_str(&step.raw_action).ok()?;
    let call = |value: &Value, id: &str| -> Option<Value> {
        let name = value.get("name")?.as_str()?;
        let arguments = match value.get("arguments")? {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        Some(
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}),
        )
    };
    match (&raw, &step.tool_call_id) {
        (Value::Object(_), Some(id)) => Some(vec![call(&raw, id)?]),
        (Value::Array(calls), _) if !calls.is_empty() => calls
            .iter()
            .map(|c| call(c, c.get("id")?.as_str()?))
            .collect(),
        _ => None,
    }
}

/// One episode as OpenAI chat messages (see the module documentation).
pub fn to_openai_chat_with(trajectory: &ReadTrajectory, options: &ExportOptions) -> Value {
    let mut messages = prompt_messages(trajectory);
    let native = is_native(trajectory);
    for step in &trajectory.steps {
        match native.then(|| native_calls(step)).flatten() {
            Some(calls) => {
                let answered: Vec<(Value, Value)> = calls
                    .iter()
                    .map(|c| (c["id"].clone(), c["function"]["name"].clone()))
                    .collect();
                messages.push(json!({
                    "role": "assistant",
                    "content": step.content.as_deref().unwrap_or_default(),
                    "reasoning_content": step.reasoning,
                    "tool_calls": calls,
                }));
                for (id, name) in answered {
                    messages.push(json!({
                        "role": "tool", "tool_call_id": id, "name": name, "content": step.observation,
                    }));
                }
            }
            None => {
                messages.push(json!({
                    "role": "assistant",
                    "content": step.raw_action,
                    "reasoning_content": step.reasoning,
                }));
                messages.push(json!({"role": "user", "content": step.observation}));
            }
        }
    }
    if let Some(answer) = final_answer(trajectory) {
        let reasoning = final_answer_reasoning(trajectory);
        messages
            .push(json!({"role": "assistant", "content": answer, "reasoning_content": reasoning}));
    }
    let tools = if native {
        swe_env_tools::openai_tools()
    } else {
        json!([])
    };
    row(trajectory, options, messages, |row| {
        row.insert("tools".into(), tools);
    })
}

/// One episode as a CWM transcript (roles `system`, `user`, `assistant`, `tool: NAME`) with its `token_view`.
pub fn to_cwm_transcript_with(trajectory: &ReadTrajectory, options: &ExportOptions) -> Value {
    let mut messages = prompt_messages(trajectory);
    for step in &trajectory.steps {
        // Text sent beside a native call (chat-tools mode) came first in the model's turn; the call follows.
        let content = match step.content.as_deref().filter(|text| !text.is_empty()) {
            Some(text) => format!("{text}\n\n{}", step.raw_action),
            None => step.raw_action.clone(),
        };
        messages
            .push(json!({"role": "assistant", "content": content, "reasoning": step.reasoning}));
        let role = match (&step.tool, &step.format_error) {
            (Some(tool), None) => format!("tool: {tool}"),
            _ => "user".to_owned(),
        };
        messages.push(json!({"role": role, "content": step.observation}));
    }
    if let Some(answer) = final_answer(trajectory) {
        messages.push(
            json!({"role": "assistant", "content": answer, "reasoning": final_answer_reasoning(trajectory)}),
        );
    }
    row(trajectory, options, messages, |row| {
        row.insert("token_view".into(), token_view(trajectory));
    })
}

fn final_answer(trajectory: &ReadTrajectory) -> Option<&str> {
    trajectory
        .end
        .as_ref()
        .and_then(|e| e.final_answer.as_deref())
}

fn final_answer_reasoning(trajectory: &ReadTrajectory) -> Option<&str> {
    trajectory
        .end
        .as_ref()
        .and_then(|end| end.final_answer_reasoning.as_deref())
}

fn row(
    trajectory: &ReadTrajectory,
    options: &ExportOptions,
    messages: Vec<Value>,
    extra: impl FnOnce(&mut Map<String, Value>),
) -> Value {
    let metadata = metadata(trajectory, options);
    let mut row = Map::new();
    for key in ["episode_id", "instance_id", "status", "rewards"] {
        row.insert(key.into(), metadata[key].clone());
    }
    row.insert("messages".into(), Value::Array(messages));
    extra(&mut row);
    row.insert("metadata".into(), metadata);
    Value::Object(row)
}

/// The metadata of an exported row: `episode_id`, `instance_id`, `repo`, `status`, `detail`, `resolved` (null when
/// not graded), `rewards`, `n_turns`, `n_format_errors`, `n_length_cut`, `tokens` {prompt, completion, total},
/// `tool_format`, `model` (as in `episode_start`), `sampling` (the first model call's parameters as sent, else the
/// model description's `sampling`), `seed`, `temperature`, the harvest's `rollout_id`, `sample_idx`,
/// `dataset_sha256`, `config_hash` (null outside a harvest), `submission`, `patch_hash`, `started_at`,
/// `duration_ms`; `task` and `grading` only with [`ExportOptions::include_task`].
pub fn metadata(trajectory: &ReadTrajectory, options: &ExportOptions) -> Value {
    let start = trajectory.start.as_ref();
    let end = trajectory.end.as_ref();
    let rewards = end.and_then(|e| e.rewards.clone());
    let model = start.and_then(|s| s.model.clone());
    let sampling = model_calls(trajectory)
        .find_map(|t| t.sampling.clone())
        .or_else(|| model.as_ref().and_then(|m| m.get("sampling").cloned()));
    let rollout = options.rollout.as_ref();
    let seed = rollout
        .and_then(|r| r.seed)
        .or_else(|| sampling.as_ref().and_then(|s| s.get("seed")?.as_u64()));
    let temperature = rollout.and_then(|r| r.temperature).or_else(|| {
        sampling
            .as_ref()
            .and_then(|s| s.get("temperature")?.as_f64())
    });
    let submission = end.and_then(|e| e.submission.clone());
    let mut metadata = json!({
        "episode_id": start.map(|s| s.episode_id.as_str()),
        "instance_id": start.map(|s| s.instance_id.as_str()),
        "repo": start.and_then(|s| s.task.get("repo")),
        "status": end.map(|e| e.status.as_str()),
        "detail": end.and_then(|e| e.detail.as_deref()),
        "resolved": resolved_of(rewards.as_ref()),
        "rewards": rewards,
        "n_turns": trajectory.steps.len(),
        "n_format_errors": trajectory.steps.iter().filter(|s| s.format_error.is_some()).count(),
        "n_length_cut": model_calls(trajectory)
            .filter(|t| t.finish_reason.as_deref() == Some("length"))
            .count(),
        "tokens": TokenTotals::of(trajectory).to_json(),
        "tool_format": start.map(|s| s.tool_format.as_str()),
        "model": model,
        "sampling": sampling,
        "seed": seed,
        "temperature": temperature,
        "rollout_id": rollout.map(|r| r.rollout_id.as_str()),
        "sample_idx": rollout.map(|r| r.sample_idx),
        "dataset_sha256": rollout.map(|r| r.dataset_sha256.as_str()),
        "config_hash": rollout.map(|r| r.config_hash.as_str()),
        "patch_hash": submission.as_deref().and_then(patch_hash),
        "submission": submission,
        "started_at": start.map(|s| s.started_at.as_str()),
        "duration_ms": end.map(|e| e.duration_ms),
    });
    if options.include_task {
        metadata["task"] = start.map(|s| s.task.clone()).unwrap_or(Value::Null);
        metadata["grading"] = end.and_then(|e| e.grading.clone()).unwrap_or(Value::Null);
    }
    metadata
}

/// The episode's token ids with a loss mask, built call by call: each model call's `prompt_token_ids` must extend
/// the sequence so far (the previous prompt plus its completion); its new prompt tokens get mask 0 (prompt and
/// environment), its completion `token_ids` mask 1 (model-generated).
///
/// - `null` when no call recorded token ids.
/// - `{"consistent": true, "n_calls", "tokens", "loss_mask"}` when every call extends the sequence.
/// - `{"consistent": false, "reason", "call", "step_idx", "at_token", "segments"}` when one does not (the prompt was
///   re-tokenised or re-rendered, e.g. a chat template that drops earlier reasoning) or a call lacks ids: no
///   whole-episode mask (it would be wrong), but one segment per call that has ids, each `{"call", "step_idx",
///   "tokens", "loss_mask"}` = its prompt (0) + its completion (1), a valid sample on its own.
pub fn token_view(trajectory: &ReadTrajectory) -> Value {
    // (step_idx or null for the final answer, the call's tokens) of every model call.
    let calls: Vec<(Option<u32>, &StepTokens)> = trajectory
        .steps
        .iter()
        .filter(|step| step.model_ms.is_some() || step.tokens != StepTokens::default())
        .map(|step| (Some(step.step_idx), &step.tokens))
        .chain(
            trajectory
                .end
                .as_ref()
                .and_then(|e| e.final_answer_tokens.as_ref())
                .map(|t| (None, t)),
        )
        .collect();
    let has_ids = |t: &StepTokens| t.prompt_token_ids.is_some() && t.token_ids.is_some();
    if !calls
        .iter()
        .any(|(_, t)| t.prompt_token_ids.is_some() || t.token_ids.is_some())
    {
        return Value::Null;
    }
    let mut tokens: Vec<i64> = Vec::new();
    let mut mask: Vec<u8> = Vec::new();
    let mut problem: Option<(usize, Option<u32>, Option<usize>, String)> = None;
    for (index, (step_idx, call)) in calls.iter().enumerate() {
        let (Some(prompt), Some(completion)) = (&call.prompt_token_ids, &call.token_ids) else {
            let missing = if call.prompt_token_ids.is_none() {
                "prompt_token_ids"
            } else {
                "token_ids"
            };
            problem = Some((
                index,
                *step_idx,
                None,
                format!("model call {index} recorded no {missing}"),
            ));
            break;
        };
        let common = tokens
            .iter()
            .zip(prompt.iter())
            .take_while(|(a, b)| a == b)
            .count();
        if common < tokens.len() {
            problem = Some((
                index,
                *step_idx,
                Some(common),
                format!(
                    "the prompt of model call {index} does not extend the sequence so far (first difference at \
                     token {common} of {}): the conversation was re-tokenised or re-rendered",
                    tokens.len()
                ),
            ));
            break;
        }
        tokens.extend_from_slice(&prompt[common..]);
        mask.resize(tokens.len(), 0);
        tokens.extend_from_slice(completion);
        mask.resize(tokens.len(), 1);
    }
    match problem {
        None => json!({
            "consistent": true,
            "n_calls": calls.len(),
            "tokens": tokens,
            "loss_mask": mask,
        }),
        Some((call, step_idx, at_token, reason)) => {
            let segments: Vec<Value> = calls
                .iter()
                .enumerate()
                .filter(|(_, (_, t))| has_ids(t))
                .map(|(index, (step_idx, t))| {
                    let prompt = t.prompt_token_ids.as_deref().unwrap_or_default();
                    let completion = t.token_ids.as_deref().unwrap_or_default();
                    let tokens: Vec<i64> = prompt.iter().chain(completion).copied().collect();
                    let mut mask = vec![0u8; prompt.len()];
                    mask.resize(tokens.len(), 1);
                    json!({"call": index, "step_idx": step_idx, "tokens": tokens, "loss_mask": mask})
                })
                .collect();
            json!({
                "consistent": false,
                "reason": reason,
                "call": call,
                "step_idx": step_idx,
                "at_token": at_token,
                "n_calls": calls.len(),
                "segments": segments,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::record::{EpisodeEnd, EpisodeStart, EpisodeStatus, PromptMessage};

    fn start(tool_format: &str) -> EpisodeStart {
        EpisodeStart {
            schema_version: 1,
            episode_id: "ep-1".into(),
            instance_id: "owner__repo-1".into(),
            task: json!({
                "instance_id": "owner__repo-1",
                "repo": "owner/repo",
                "problem_statement": "the widget breaks",
                "patch": "diff --git a/GOLDPATCH_SECRET_7f3a b/x\n+gold_only_line_91c2\n",
                "test_patch": "diff --git a/tests/TESTPATCH_SECRET_55d1.py b/t\n+def test_hidden_a8e0(): pass\n",
                "FAIL_TO_PASS": ["tests/test_x.py::test_FAIL2PASS_SECRET_0b7e"],
                "PASS_TO_PASS": ["tests/test_x.py::test_PASS2PASS_SECRET_c44d"],
            }),
            image: "img".into(),
            image_id: "sha256:1".into(),
            image_digests: vec![],
            tool_format: tool_format.into(),
            limits: json!({}),
            model: Some(json!({"name": "m", "sampling": {"temperature": 0.7}})),
            prompt: vec![
                PromptMessage {
                    role: "system".into(),
                    content: "You are an agent.".into(),
                },
                PromptMessage {
                    role: "user".into(),
                    content: "Fix: the widget breaks".into(),
                },
            ],
            versions: json!({}),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            owner: None,
        }
    }

    fn step(idx: u32, raw_action: &str, tool: Option<&str>, observation: &str) -> StepRecord {
        StepRecord {
            step_idx: idx,
            request_id: None,
            raw_action: raw_action.into(),
            reasoning: None,
            content: None,
            parsed_call: tool.map(|t| json!({"tool": t})),
            tool: tool.map(str::to_owned),
            tool_call_id: None,
            format_error: tool.is_none().then(|| "no call".to_owned()),
            tool_error: None,
            observation: observation.into(),
            exit_code: None,
            timed_out: false,
            truncated: false,
            restarted: false,
            tool_ms: 1,
            model_ms: Some(5),
            tokens: StepTokens::default(),
            at: "t".into(),
        }
    }

    fn end() -> EpisodeEnd {
        EpisodeEnd {
            status: EpisodeStatus::Submitted,
            detail: None,
            submission: Some("--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a=1\n+a=2\n".into()),
            final_answer: Some("Done.".into()),
            final_answer_tokens: None,
            final_answer_reasoning: None,
            n_steps: 2,
            rewards: Some(
                json!({"resolved": true, "execution": 1.0, "similarity": 0.4, "shaped": 1.0}),
            ),
            grading: Some(
                json!({"owner__repo-1": {"tests_status": {"FAIL_TO_PASS": {"success":
                ["tests/test_x.py::test_FAIL2PASS_SECRET_0b7e"]}}}}),
            ),
            duration_ms: 100,
            ended_at: "t".into(),
        }
    }

    fn text_trajectory() -> ReadTrajectory {
        let mut first = step(0, "<tool: bash>\nls\n</tool>", Some("bash"), "x.py");
        first.reasoning = Some("I should look around.".into());
        ReadTrajectory {
            start: Some(start("text")),
            steps: vec![
                first,
                step(1, "<tool: submit>\n</tool>", Some("submit"), "submitted"),
            ],
            end: Some(end()),
            torn_tail: false,
        }
    }

    fn native_trajectory() -> ReadTrajectory {
        let mut first = step(
            0,
            r#"{"name":"bash","arguments":"{\"command\": \"ls\"}"}"#,
            Some("bash"),
            "x.py",
        );
        first.tool_call_id = Some("call_1".into());
        first.reasoning = Some("Let me list files.".into());
        let mut rejected = step(
            1,
            r#"[{"name":"bash","arguments":"{}","id":"c_a"},{"name":"edit","arguments":"{}","id":"c_b"}]"#,
            None,
            "FormatError: one call per turn",
        );
        rejected.reasoning = Some("Two at once.".into());
        rejected.content = Some("Both at once.".into());
        let mut plain = step(2, "I am done?", None, "FormatError: no tool call");
        plain.reasoning = None;
        ReadTrajectory {
            start: Some(start("json")),
            steps: vec![first, rejected, plain],
            end: Some(end()),
            torn_tail: false,
        }
    }

    #[test]
    fn openai_chat_keeps_reasoning_in_its_own_field_in_text_mode() {
        let row = to_openai_chat(&text_trajectory());
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2 + 4 + 1);
        assert_eq!(messages[2]["role"], "assistant");
        assert_eq!(messages[2]["content"], "<tool: bash>\nls\n</tool>");
        assert_eq!(messages[2]["reasoning_content"], "I should look around.");
        assert_eq!(messages[3]["role"], "user");
        assert_eq!(messages[4]["reasoning_content"], Value::Null);
        assert_eq!(messages[6]["content"], "Done.");
        assert_eq!(
            row["tools"],
            json!([]),
            "text-format episodes have no tools"
        );
        assert_eq!(row["metadata"]["tool_format"], "text");
    }

    #[test]
    fn openai_chat_of_native_calls_has_the_tools_and_exact_calls_and_separate_reasoning() {
        let row = to_openai_chat(&native_trajectory());
        assert_eq!(row["tools"], swe_env_tools::openai_tools());
        let messages = row["messages"].as_array().unwrap();
        let first = &messages[2];
        assert_eq!(
            first["content"], "",
            "reasoning is not merged into the content"
        );
        assert_eq!(first["reasoning_content"], "Let me list files.");
        assert_eq!(first["tool_calls"][0]["id"], "call_1");
        assert_eq!(
            messages[4]["content"], "Both at once.",
            "text beside a call"
        );
        assert_eq!(
            first["tool_calls"][0]["function"],
            json!({"name": "bash", "arguments": "{\"command\": \"ls\"}"})
        );
        assert_eq!(messages[3]["role"], "tool");
        assert_eq!(messages[3]["tool_call_id"], "call_1");
        assert_eq!(messages[3]["content"], "x.py");
        // A refused two-call turn: both calls, each answered by a tool message, as the model saw it.
        let rejected = &messages[4];
        assert_eq!(rejected["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(rejected["reasoning_content"], "Two at once.");
        assert_eq!(messages[5]["tool_call_id"], "c_a");
        assert_eq!(messages[6]["tool_call_id"], "c_b");
        assert_eq!(messages[6]["content"], "FormatError: one call per turn");
        // A reply with no call: plain text, answered by the user.
        assert_eq!(messages[7]["content"], "I am done?");
        assert_eq!(messages[8]["role"], "user");
        assert_eq!(messages[9]["content"], "Done.");
        assert_eq!(messages.len(), 10);
    }

    /// Every CWM assistant message carries the model's separate reasoning (null when none), the final answer's
    /// included, so the messages hold what the token view holds; text beside a native call is in the content.
    #[test]
    fn cwm_transcript_keeps_reasoning_and_text_beside_a_call() {
        let mut text = text_trajectory();
        if let Some(end) = text.end.as_mut() {
            end.final_answer_reasoning = Some("All checked.".into());
        }
        let row = to_cwm_transcript(&text);
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2 + 4 + 1);
        assert_eq!(messages[2]["role"], "assistant");
        assert_eq!(messages[2]["content"], "<tool: bash>\nls\n</tool>");
        assert_eq!(messages[2]["reasoning"], "I should look around.");
        assert_eq!(messages[3]["role"], "tool: bash");
        assert_eq!(messages[3].get("reasoning"), None, "only assistant turns");
        assert_eq!(messages[4]["reasoning"], Value::Null);
        assert!(messages[4].as_object().unwrap().contains_key("reasoning"));
        assert_eq!(messages[6]["content"], "Done.");
        assert_eq!(messages[6]["reasoning"], "All checked.");

        let row = to_cwm_transcript(&native_trajectory());
        let messages = row["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2 + 6 + 1);
        let call = r#"{"name":"bash","arguments":"{\"command\": \"ls\"}"}"#;
        assert_eq!(messages[2]["content"], call);
        assert_eq!(messages[2]["reasoning"], "Let me list files.");
        let rejected = &messages[4];
        let content = rejected["content"].as_str().unwrap();
        assert!(
            content.starts_with("Both at once.\n\n[{\"name\":\"bash\""),
            "text beside a call comes first, then the calls: {content}"
        );
        assert_eq!(rejected["reasoning"], "Two at once.");
        assert_eq!(messages[6]["content"], "I am done?");
        assert_eq!(messages[6]["reasoning"], Value::Null);
        assert_eq!(messages[8]["reasoning"], Value::Null);
    }

    #[test]
    fn metadata_carries_outcome_tokens_model_and_harvest_ids() {
        let mut trajectory = text_trajectory();
        trajectory.steps[0].tokens = StepTokens {
            prompt: Some(100),
            completion: Some(20),
            finish_reason: Some("length".into()),
            sampling: Some(json!({"temperature": 0.2, "seed": 42})),
            ..StepTokens::default()
        };
        trajectory.steps[1].tokens.prompt = Some(130);
        trajectory.steps[1].tokens.completion = Some(5);
        let options = ExportOptions {
            include_task: false,
            rollout: Some(RolloutInfo {
                rollout_id: "r1".into(),
                sample_idx: 3,
                seed: Some(7),
                temperature: Some(0.6),
                dataset_sha256: "d".into(),
                config_hash: "c".into(),
            }),
        };
        let row = to_cwm_transcript_with(&trajectory, &options);
        let m = &row["metadata"];
        assert_eq!(m["episode_id"], "ep-1");
        assert_eq!(m["repo"], "owner/repo");
        assert_eq!(m["status"], "submitted");
        assert_eq!(m["resolved"], true);
        assert_eq!(m["rewards"]["similarity"], 0.4);
        assert_eq!(m["n_turns"], 2);
        assert_eq!(m["n_format_errors"], 0);
        assert_eq!(m["n_length_cut"], 1);
        assert_eq!(
            m["tokens"],
            json!({"prompt": 230, "completion": 25, "total": 255})
        );
        assert_eq!(m["model"]["name"], "m");
        assert_eq!(m["sampling"], json!({"temperature": 0.2, "seed": 42}));
        assert_eq!(m["rollout_id"], "r1");
        assert_eq!(m["sample_idx"], 3);
        assert_eq!(m["seed"], 7);
        assert_eq!(m["temperature"], 0.6);
        assert_eq!(m["patch_hash"].as_str().unwrap().len(), 64);
        assert_eq!(row["status"], "submitted");
        assert_eq!(row["token_view"], Value::Null, "no token ids recorded");
        // Outside a harvest: no rollout ids, seed and temperature from the sampling sent.
        let plain = to_openai_chat(&trajectory);
        assert_eq!(plain["metadata"]["rollout_id"], Value::Null);
        assert_eq!(plain["metadata"]["seed"], 42);
        assert_eq!(plain["metadata"]["temperature"], 0.2);
    }

    #[test]
    fn nothing_hidden_leaks_into_exports_unless_asked_for_and_then_only_into_metadata() {
        const SECRETS: [&str; 6] = [
            "GOLDPATCH_SECRET_7f3a",
            "gold_only_line_91c2",
            "TESTPATCH_SECRET_55d1",
            "test_hidden_a8e0",
            "test_FAIL2PASS_SECRET_0b7e",
            "test_PASS2PASS_SECRET_c44d",
        ];
        for trajectory in [text_trajectory(), native_trajectory()] {
            for row in [to_openai_chat(&trajectory), to_cwm_transcript(&trajectory)] {
                let text = row.to_string();
                assert!(text.contains("the widget breaks"), "the issue is exported");
                for secret in SECRETS {
                    assert!(!text.contains(secret), "{secret} leaked: {text}");
                }
            }
            let options = ExportOptions {
                include_task: true,
                rollout: None,
            };
            for row in [
                to_openai_chat_with(&trajectory, &options),
                to_cwm_transcript_with(&trajectory, &options),
            ] {
                // Asked for: the full task row in metadata (the positive control), never in the messages.
                assert_eq!(
                    row["metadata"]["task"],
                    trajectory.start.as_ref().unwrap().task
                );
                let text = row.to_string();
                let messages = row["messages"].to_string();
                for secret in SECRETS {
                    assert!(text.contains(secret), "{secret} missing from the task row");
                    assert!(!messages.contains(secret), "{secret} in the messages");
                }
            }
        }
    }

    fn with_ids(prompt: &[i64], completion: &[i64]) -> StepTokens {
        StepTokens {
            prompt_token_ids: Some(prompt.to_vec()),
            token_ids: Some(completion.to_vec()),
            ..StepTokens::default()
        }
    }

    #[test]
    fn token_view_masks_model_tokens_when_every_prompt_extends_the_sequence() {
        let mut trajectory = text_trajectory();
        trajectory.steps[0].tokens = with_ids(&[1, 2, 3], &[10, 11]);
        // The next prompt: everything so far, the observation (4, 5), the next turn's header (6).
        trajectory.steps[1].tokens = with_ids(&[1, 2, 3, 10, 11, 4, 5, 6], &[12]);
        trajectory.end.as_mut().unwrap().final_answer_tokens =
            Some(with_ids(&[1, 2, 3, 10, 11, 4, 5, 6, 12, 7], &[13, 14]));
        let view = token_view(&trajectory);
        assert_eq!(view["consistent"], true);
        assert_eq!(view["n_calls"], 3);
        assert_eq!(
            view["tokens"],
            json!([1, 2, 3, 10, 11, 4, 5, 6, 12, 7, 13, 14])
        );
        assert_eq!(
            view["loss_mask"],
            json!([0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1])
        );
        assert_eq!(to_cwm_transcript(&trajectory)["token_view"], view);
    }

    #[test]
    fn token_view_says_when_a_prompt_was_retokenised_instead_of_masking_wrongly() {
        let mut trajectory = text_trajectory();
        trajectory.steps[0].tokens = with_ids(&[1, 2, 3], &[10, 11]);
        // The template re-rendered the first reply (11 became 99): no whole-episode mask.
        trajectory.steps[1].tokens = with_ids(&[1, 2, 3, 10, 99, 4], &[12]);
        let view = token_view(&trajectory);
        assert_eq!(view["consistent"], false);
        assert_eq!(view["call"], 1);
        assert_eq!(view["step_idx"], 1);
        assert_eq!(view["at_token"], 4);
        assert!(view.get("loss_mask").is_none());
        assert!(view["reason"].as_str().unwrap().contains("re-tokenised"));
        let segments = view["segments"].as_array().unwrap();
        assert_eq!(segments.len(), 2);
        assert_eq!(segments[1]["tokens"], json!([1, 2, 3, 10, 99, 4, 12]));
        assert_eq!(segments[1]["loss_mask"], json!([0, 0, 0, 0, 0, 0, 1]));

        // A model call without ids among calls with ids: said, not guessed.
        trajectory.steps[1].tokens = StepTokens {
            completion: Some(3),
            ..StepTokens::default()
        };
        let view = token_view(&trajectory);
        assert_eq!(view["consistent"], false);
        assert!(view["reason"]
            .as_str()
            .unwrap()
            .contains("recorded no prompt_token_ids"));
        assert_eq!(view["segments"].as_array().unwrap().len(), 1);
    }
}
