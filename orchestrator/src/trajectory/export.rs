//! Exporters from trajectories to training formats. Both produce one JSON object per episode, so a JSONL file of
//! them loads with HF `datasets` (`load_dataset("json", data_files=…)`).
//!
//! - OpenAI chat messages: `system`, `user`, then per step the `assistant` turn and the observation — as a `tool`
//!   message answering a native tool call (JSON format), else as a `user` message (CWM text format).
//! - CWM transcript: roles `system`, `user`, `assistant` and `tool: NAME` for tool outputs; format errors go back
//!   to the model as `user` turns, as the CWM scaffold does.

use serde_json::{json, Value};

use super::reader::ReadTrajectory;

fn header(trajectory: &ReadTrajectory) -> (String, String, Option<String>) {
    let episode_id = trajectory
        .start
        .as_ref()
        .map(|s| s.episode_id.clone())
        .unwrap_or_default();
    let instance_id = trajectory
        .start
        .as_ref()
        .map(|s| s.instance_id.clone())
        .unwrap_or_default();
    let status = trajectory
        .end
        .as_ref()
        .map(|e| e.status.as_str().to_owned());
    (episode_id, instance_id, status)
}

fn final_answer(trajectory: &ReadTrajectory) -> Option<&str> {
    trajectory
        .end
        .as_ref()
        .and_then(|e| e.final_answer.as_deref())
}

/// One episode as OpenAI chat messages.
pub fn to_openai_chat(trajectory: &ReadTrajectory) -> Value {
    let mut messages = Vec::new();
    if let Some(start) = &trajectory.start {
        for message in &start.prompt {
            messages.push(json!({"role": message.role, "content": message.content}));
        }
    }
    let native = trajectory
        .start
        .as_ref()
        .is_some_and(|s| s.tool_format == "json");
    for step in &trajectory.steps {
        match (&step.tool_call_id, &step.parsed_call, native) {
            (Some(call_id), Some(call), true) => {
                let name = call.get("tool").cloned().unwrap_or(Value::Null);
                let mut args = call.as_object().cloned().unwrap_or_default();
                args.remove("tool");
                let arguments = Value::Object(args).to_string();
                messages.push(json!({
                    "role": "assistant",
                    "content": step.reasoning.clone().unwrap_or_default(),
                    "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
                }));
                messages.push(
                    json!({"role": "tool", "tool_call_id": call_id, "content": step.observation}),
                );
            }
            _ => {
                messages.push(json!({"role": "assistant", "content": step.raw_action}));
                messages.push(json!({"role": "user", "content": step.observation}));
            }
        }
    }
    if let Some(answer) = final_answer(trajectory) {
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    let (episode_id, instance_id, status) = header(trajectory);
    json!({
        "episode_id": episode_id,
        "instance_id": instance_id,
        "status": status,
        "rewards": trajectory.end.as_ref().and_then(|e| e.rewards.clone()),
        "messages": messages,
    })
}

/// One episode as a CWM transcript (roles `system`, `user`, `assistant`, `tool: NAME`).
pub fn to_cwm_transcript(trajectory: &ReadTrajectory) -> Value {
    let mut messages = Vec::new();
    if let Some(start) = &trajectory.start {
        for message in &start.prompt {
            messages.push(json!({"role": message.role, "content": message.content}));
        }
    }
    for step in &trajectory.steps {
        messages.push(json!({"role": "assistant", "content": step.raw_action}));
        let role = match (&step.tool, &step.format_error) {
            (Some(tool), None) => format!("tool: {tool}"),
            _ => "user".to_owned(),
        };
        messages.push(json!({"role": role, "content": step.observation}));
    }
    if let Some(answer) = final_answer(trajectory) {
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    let (episode_id, instance_id, status) = header(trajectory);
    json!({"episode_id": episode_id, "instance_id": instance_id, "status": status, "messages": messages})
}
