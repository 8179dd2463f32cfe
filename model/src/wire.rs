//! The OpenAI-compatible wire format: request bodies out, tolerant response parsing in.
//!
//! Response structs keep every field they do not model (`#[serde(flatten)]`), so servers that add
//! fields (vLLM's `reasoning_content`, `stop_reason`, `token_ids`) never break parsing.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::types::{
    ChatMessage, LogprobsSetting, ModelInput, ModelRequest, TokenIdsSetting, TokenLogprob,
    ToolCall, TopLogprob, Usage,
};

/// Which endpoint path a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiKind {
    /// `/chat/completions`
    Chat,
    /// `/completions`
    Completions,
}

impl ApiKind {
    pub(crate) fn of(input: &ModelInput) -> Self {
        match input {
            ModelInput::Chat { .. } => ApiKind::Chat,
            ModelInput::Prompt(_) => ApiKind::Completions,
        }
    }

    pub(crate) fn path(self) -> &'static str {
        match self {
            ApiKind::Chat => "chat/completions",
            ApiKind::Completions => "completions",
        }
    }
}

/// A request field an `auto` setting asks for and drops for an endpoint that rejects it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptionalField {
    /// `logprobs` (and `top_logprobs` on the chat path).
    Logprobs,
    /// vLLM's `return_token_ids`.
    ReturnTokenIds,
}

impl OptionalField {
    pub(crate) const ALL: [OptionalField; 2] =
        [OptionalField::Logprobs, OptionalField::ReturnTokenIds];

    /// The body field a server's error message names.
    pub(crate) fn name(self) -> &'static str {
        match self {
            OptionalField::Logprobs => "logprobs",
            OptionalField::ReturnTokenIds => "return_token_ids",
        }
    }

    /// Whether `request` asks for this field in `auto` mode (so it may be dropped). A field that `extra_body`
    /// sets is the user's and never dropped.
    pub(crate) fn droppable(self, request: &ModelRequest) -> bool {
        let sampling = &request.sampling;
        let auto = match self {
            OptionalField::Logprobs => sampling.logprobs == LogprobsSetting::Auto,
            OptionalField::ReturnTokenIds => sampling.return_token_ids == TokenIdsSetting::Auto,
        };
        let in_extra = sampling
            .extra_body
            .as_ref()
            .and_then(Value::as_object)
            .is_some_and(|extra| {
                extra.contains_key(self.name())
                    || (self == OptionalField::Logprobs && extra.contains_key("top_logprobs"))
            });
        auto && !in_extra
    }
}

/// Body fields that are the conversation or transport, not sampling: everything else is recorded as sent.
const NON_SAMPLING_FIELDS: [&str; 6] = ["model", "messages", "prompt", "tools", "stream", "user"];

/// The sampling part of a request body: every field but the conversation and transport ones.
pub(crate) fn sampling_of(body: &Value) -> Value {
    let fields = body
        .as_object()
        .map(|fields| {
            fields
                .iter()
                .filter(|(key, _)| !NON_SAMPLING_FIELDS.contains(&key.as_str()))
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect()
        })
        .unwrap_or_default();
    Value::Object(fields)
}

/// The JSON body for a request to model `model`, without the `omit` fields (dropped for this endpoint).
pub(crate) fn request_body(model: &str, request: &ModelRequest, omit: &[OptionalField]) -> Value {
    let logprobs = if omit.contains(&OptionalField::Logprobs) {
        None
    } else {
        request.sampling.logprobs.requested()
    };
    let return_token_ids = !omit.contains(&OptionalField::ReturnTokenIds)
        && request.sampling.return_token_ids.requested();
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let sampling = &request.sampling;
    match &request.input {
        ModelInput::Chat { messages, tools } => {
            let wire: Vec<Value> = messages.iter().map(message_to_wire).collect();
            body.insert("messages".into(), Value::Array(wire));
            if !tools.is_empty() {
                let wire: Vec<Value> = tools
                    .iter()
                    .map(|tool| {
                        json!({"type": "function", "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.parameters,
                        }})
                    })
                    .collect();
                body.insert("tools".into(), Value::Array(wire));
            }
            if let Some(n_top) = logprobs {
                body.insert("logprobs".into(), json!(true));
                body.insert("top_logprobs".into(), json!(n_top));
            }
        }
        ModelInput::Prompt(prompt) => {
            body.insert("prompt".into(), json!(prompt));
            if let Some(n_top) = logprobs {
                body.insert("logprobs".into(), json!(n_top));
            }
        }
    }
    body.insert("stream".into(), json!(false));
    if let Some(value) = sampling.temperature {
        body.insert("temperature".into(), json!(value));
    }
    if let Some(value) = sampling.top_p {
        body.insert("top_p".into(), json!(value));
    }
    if let Some(value) = sampling.max_tokens {
        body.insert("max_tokens".into(), json!(value));
    }
    if let Some(value) = sampling.seed {
        body.insert("seed".into(), json!(value));
    }
    if !sampling.stop.is_empty() {
        body.insert("stop".into(), json!(sampling.stop));
    }
    if return_token_ids {
        body.insert("return_token_ids".into(), json!(true));
    }
    if let Some(user) = &request.user {
        body.insert("user".into(), json!(user));
    }
    if let Some(Value::Object(extra)) = &sampling.extra_body {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    Value::Object(body)
}

fn message_to_wire(message: &ChatMessage) -> Value {
    let mut wire = Map::new();
    wire.insert("role".into(), json!(message.role.as_str()));
    if message.tool_calls.is_empty() || !message.content.is_empty() {
        wire.insert("content".into(), json!(message.content));
    } else {
        wire.insert("content".into(), Value::Null);
    }
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|call| {
                json!({"id": call.id, "type": "function",
                       "function": {"name": call.name, "arguments": call.arguments}})
            })
            .collect();
        wire.insert("tool_calls".into(), Value::Array(calls));
    }
    if let Some(id) = &message.tool_call_id {
        wire.insert("tool_call_id".into(), json!(id));
    }
    Value::Object(wire)
}

#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

#[derive(Debug, Deserialize)]
struct WireResponse<C> {
    choices: Vec<C>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    prompt_token_ids: Option<Vec<u32>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct WireChatChoice {
    message: WireMessage,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireChatLogprobs>,
    #[serde(default)]
    token_ids: Option<Vec<u32>>,
    #[serde(default)]
    prompt_token_ids: Option<Vec<u32>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Option<Value>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct WireToolCall {
    #[serde(default)]
    id: Option<String>,
    function: WireFunction,
}

#[derive(Debug, Deserialize)]
struct WireFunction {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WireChatLogprobs {
    #[serde(default)]
    content: Option<Vec<WireChatToken>>,
}

#[derive(Debug, Deserialize)]
struct WireChatToken {
    token: String,
    #[serde(default)]
    logprob: Option<f64>,
    #[serde(default)]
    top_logprobs: Option<Vec<WireTop>>,
}

#[derive(Debug, Deserialize)]
struct WireTop {
    token: String,
    logprob: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct WireCompletionChoice {
    #[serde(default)]
    text: String,
    #[serde(default)]
    finish_reason: Option<String>,
    #[serde(default)]
    logprobs: Option<WireCompletionLogprobs>,
    #[serde(default)]
    token_ids: Option<Vec<u32>>,
    #[serde(default)]
    prompt_token_ids: Option<Vec<u32>>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct WireCompletionLogprobs {
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    token_logprobs: Vec<Option<f64>>,
    #[serde(default)]
    top_logprobs: Option<Vec<Option<Map<String, Value>>>>,
}

/// The model-facing part of a parsed response; the client adds timing and endpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ParsedReply {
    pub(crate) text: String,
    pub(crate) reasoning: Option<String>,
    pub(crate) tool_calls: Vec<ToolCall>,
    pub(crate) finish_reason: Option<String>,
    pub(crate) usage: Option<Usage>,
    pub(crate) logprobs: Option<Vec<TokenLogprob>>,
    pub(crate) token_ids: Option<Vec<u32>>,
    pub(crate) prompt_token_ids: Option<Vec<u32>>,
    pub(crate) extra: Map<String, Value>,
}

/// Parses a 200 body of the given API kind; `Err` is a description of what was wrong.
pub(crate) fn parse_reply(kind: ApiKind, body: &[u8]) -> Result<ParsedReply, String> {
    match kind {
        ApiKind::Chat => parse_chat(body),
        ApiKind::Completions => parse_completions(body),
    }
}

fn usage_of(wire: Option<WireUsage>) -> Option<Usage> {
    wire.map(|usage| Usage {
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
    })
}

/// Merges unknown fields, the earlier maps (inner levels) winning.
fn merge_extra(levels: Vec<Map<String, Value>>) -> Map<String, Value> {
    let mut merged = Map::new();
    for level in levels {
        for (key, value) in level {
            merged.entry(key).or_insert(value);
        }
    }
    merged
}

fn content_text(content: Option<Value>) -> Result<String, String> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect()),
        Some(other) => Err(format!(
            "message content is neither text nor parts: {other}"
        )),
    }
}

fn parse_chat(body: &[u8]) -> Result<ParsedReply, String> {
    let response: WireResponse<WireChatChoice> =
        serde_json::from_slice(body).map_err(|error| format!("not a chat completion: {error}"))?;
    let Some(choice) = response.choices.into_iter().next() else {
        return Err("response has no choices".into());
    };
    let message = choice.message;
    let tool_calls = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(index, call)| ToolCall {
            id: call.id.unwrap_or_else(|| format!("call_{index}")),
            name: call.function.name,
            arguments: match call.function.arguments {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text,
                Some(other) => other.to_string(),
            },
        })
        .collect();
    let logprobs = choice.logprobs.and_then(|lp| lp.content).map(|tokens| {
        tokens
            .into_iter()
            .map(|token| TokenLogprob {
                token: token.token,
                logprob: token.logprob,
                top_logprobs: token
                    .top_logprobs
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|top| {
                        top.logprob.map(|logprob| TopLogprob {
                            token: top.token,
                            logprob,
                        })
                    })
                    .collect(),
            })
            .collect()
    });
    Ok(ParsedReply {
        text: content_text(message.content)?,
        reasoning: message.reasoning_content.or(message.reasoning),
        tool_calls,
        finish_reason: choice.finish_reason,
        usage: usage_of(response.usage),
        logprobs,
        token_ids: choice.token_ids,
        prompt_token_ids: choice.prompt_token_ids.or(response.prompt_token_ids),
        extra: merge_extra(vec![message.extra, choice.extra, response.extra]),
    })
}

fn parse_completions(body: &[u8]) -> Result<ParsedReply, String> {
    let response: WireResponse<WireCompletionChoice> =
        serde_json::from_slice(body).map_err(|error| format!("not a text completion: {error}"))?;
    let Some(choice) = response.choices.into_iter().next() else {
        return Err("response has no choices".into());
    };
    let logprobs = choice.logprobs.map(|lp| {
        let tops = lp.top_logprobs.unwrap_or_default();
        lp.tokens
            .into_iter()
            .enumerate()
            .map(|(index, token)| TokenLogprob {
                token,
                logprob: lp.token_logprobs.get(index).copied().flatten(),
                top_logprobs: tops
                    .get(index)
                    .and_then(Option::as_ref)
                    .map(|alternatives| {
                        alternatives
                            .iter()
                            .filter_map(|(token, logprob)| {
                                logprob.as_f64().map(|logprob| TopLogprob {
                                    token: token.clone(),
                                    logprob,
                                })
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    });
    Ok(ParsedReply {
        text: choice.text,
        reasoning: None,
        tool_calls: Vec::new(),
        finish_reason: choice.finish_reason,
        usage: usage_of(response.usage),
        logprobs,
        token_ids: choice.token_ids,
        prompt_token_ids: choice.prompt_token_ids.or(response.prompt_token_ids),
        extra: merge_extra(vec![choice.extra, response.extra]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{SamplingParams, ToolSpec};

    #[test]
    fn chat_body_has_tools_logprobs_and_extra_overrides() {
        let request = ModelRequest::chat(
            vec![ChatMessage::user("hi")],
            vec![ToolSpec {
                name: "bash".into(),
                description: "run".into(),
                parameters: json!({"type": "object"}),
            }],
        )
        .with_sampling(SamplingParams {
            temperature: Some(0.5),
            logprobs: LogprobsSetting::Top(2),
            extra_body: Some(json!({"top_k": 20, "temperature": 0.7})),
            ..SamplingParams::default()
        })
        .with_user("ep-1");
        let body = request_body("m", &request, &[]);
        assert_eq!(body["tools"][0]["function"]["name"], "bash");
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 2);
        assert_eq!(body["top_k"], 20);
        assert_eq!(body["temperature"], 0.7);
        assert_eq!(body["user"], "ep-1");
        assert_eq!(body["return_token_ids"], true, "auto asks for token ids");
        assert!(body.get("stop").is_none());
        // An explicit setting is never droppable; sampling_of keeps every non-conversation field as sent.
        assert!(!OptionalField::Logprobs.droppable(&request));
        assert!(OptionalField::ReturnTokenIds.droppable(&request));
        assert_eq!(
            sampling_of(&body),
            json!({"logprobs": true, "top_logprobs": 2, "top_k": 20, "temperature": 0.7,
                   "return_token_ids": true})
        );
    }

    #[test]
    fn auto_fields_are_asked_for_and_omitted_on_request() {
        let chat = ModelRequest::chat(vec![ChatMessage::user("hi")], Vec::new());
        let body = request_body("m", &chat, &[]);
        assert_eq!(body["logprobs"], true);
        assert_eq!(body["top_logprobs"], 0);
        assert_eq!(body["return_token_ids"], true);
        let body = request_body("m", &chat, &OptionalField::ALL);
        assert!(body.get("logprobs").is_none() && body.get("top_logprobs").is_none());
        assert!(body.get("return_token_ids").is_none());
        let prompt = ModelRequest::prompt("p");
        let body = request_body("m", &prompt, &[OptionalField::ReturnTokenIds]);
        assert_eq!(body["logprobs"], 0);
        assert!(body.get("top_logprobs").is_none());
        assert!(body.get("return_token_ids").is_none());
        let off = ModelRequest::prompt("p").with_sampling(SamplingParams {
            logprobs: LogprobsSetting::Off,
            return_token_ids: TokenIdsSetting::Off,
            ..SamplingParams::default()
        });
        assert_eq!(sampling_of(&request_body("m", &off, &[])), json!({}));
        let extra = ModelRequest::prompt("p").with_sampling(SamplingParams {
            extra_body: Some(json!({"return_token_ids": true})),
            ..SamplingParams::default()
        });
        assert!(!OptionalField::ReturnTokenIds.droppable(&extra));
        assert!(OptionalField::Logprobs.droppable(&extra));
    }

    #[test]
    fn tool_call_turn_sends_null_content_and_tool_result_sends_id() {
        let call = ToolCall {
            id: "c1".into(),
            name: "bash".into(),
            arguments: "{}".into(),
        };
        let assistant = message_to_wire(&ChatMessage::assistant_with_tool_calls("", vec![call]));
        assert_eq!(assistant["content"], Value::Null);
        assert_eq!(assistant["tool_calls"][0]["function"]["arguments"], "{}");
        let result = message_to_wire(&ChatMessage::tool_result("c1", "bash", "ok"));
        assert_eq!(
            result,
            json!({"role": "tool", "content": "ok", "tool_call_id": "c1"})
        );
    }

    #[test]
    fn chat_reply_keeps_unknown_fields_and_object_arguments() {
        let body = br#"{"id":"x","choices":[{"index":0,"stop_reason":null,"message":{"role":"assistant",
            "content":null,"reasoning_content":"hmm","tool_calls":[{"type":"function",
            "function":{"name":"bash","arguments":{"command":"ls"}}}]},"finish_reason":"tool_calls"}],
            "usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7},"kv_transfer_params":1}"#;
        let reply = parse_reply(ApiKind::Chat, body).unwrap();
        assert_eq!(reply.text, "");
        assert_eq!(reply.reasoning.as_deref(), Some("hmm"));
        assert_eq!(reply.tool_calls[0].id, "call_0");
        assert_eq!(
            reply.tool_calls[0].arguments_json().unwrap(),
            json!({"command": "ls"})
        );
        assert_eq!(reply.finish_reason.as_deref(), Some("tool_calls"));
        assert_eq!(
            reply.usage,
            Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4
            })
        );
        assert!(reply.extra.contains_key("stop_reason"));
        assert_eq!(reply.extra["kv_transfer_params"], 1);
        assert_eq!(reply.extra["id"], "x");
    }

    #[test]
    fn completion_reply_pairs_tokens_with_logprobs() {
        let body = br#"{"choices":[{"text":"ab","finish_reason":"stop","token_ids":[5,6],
            "prompt_token_ids":[1],"logprobs":{"tokens":["a","b"],"token_logprobs":[-0.5,null],
            "top_logprobs":[{"a":-0.5,"c":-1.0},null],"text_offset":[0,1]}}]}"#;
        let reply = parse_reply(ApiKind::Completions, body).unwrap();
        let logprobs = reply.logprobs.unwrap();
        assert_eq!(logprobs.len(), 2);
        assert_eq!(logprobs[0].logprob, Some(-0.5));
        assert_eq!(logprobs[0].top_logprobs.len(), 2);
        assert_eq!(logprobs[1].logprob, None);
        assert_eq!(reply.token_ids, Some(vec![5, 6]));
        assert_eq!(reply.prompt_token_ids, Some(vec![1]));
    }

    #[test]
    fn replies_without_choices_are_malformed() {
        assert!(parse_reply(ApiKind::Chat, br#"{"choices":[]}"#)
            .unwrap_err()
            .contains("no choices"));
        assert!(parse_reply(ApiKind::Completions, b"<html>")
            .unwrap_err()
            .starts_with("not a text completion"));
    }
}
