//! The public request and result types of a model call, independent of the wire format.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Who wrote a chat message (OpenAI roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions and the environment description.
    System,
    /// The task, and observations in text-format scaffolds.
    User,
    /// The model's own turns.
    Assistant,
    /// A tool's output (native tool calling, or `tool: NAME` in the CWM layout).
    Tool,
}

impl ChatRole {
    /// The role's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        }
    }
}

/// One message of a conversation, the unit every request mode is built from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// The text (may be empty for an assistant turn that only calls tools).
    pub content: String,
    /// Native tool calls made in an assistant turn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a native tool result: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a tool result: the tool's name (the CWM layout needs it for its `tool: NAME` role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    fn plain(role: ChatRole, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            name: None,
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(ChatRole::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(ChatRole::User, content)
    }

    /// An assistant message with text only (text-format scaffolds, raw completions).
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::plain(ChatRole::Assistant, content)
    }

    /// An assistant message that made native tool calls, echoed back so the model sees its own calls.
    pub fn assistant_with_tool_calls(
        content: impl Into<String>,
        tool_calls: Vec<ToolCall>,
    ) -> Self {
        ChatMessage {
            tool_calls,
            ..Self::plain(ChatRole::Assistant, content)
        }
    }

    /// A native tool result answering the call `tool_call_id` of tool `name`.
    pub fn tool_result(
        tool_call_id: impl Into<String>,
        name: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        ChatMessage {
            tool_call_id: Some(tool_call_id.into()),
            name: Some(name.into()),
            ..Self::plain(ChatRole::Tool, content)
        }
    }

    /// A tool output in a text-format transcript (CWM `tool: NAME` role), with no call id.
    pub fn tool_output(name: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            name: Some(name.into()),
            ..Self::plain(ChatRole::Tool, content)
        }
    }
}

/// A function the model may call natively (rendered as an OpenAI `tools` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The function name (`bash`, `edit`, ...).
    pub name: String,
    /// What it does, shown to the model.
    pub description: String,
    /// A JSON Schema object for its arguments.
    pub parameters: Value,
}

/// One native tool call as the model made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call id (the server's, or `call_<index>` when the server gave none).
    pub id: String,
    /// The function name.
    pub name: String,
    /// The arguments exactly as the model wrote them (normally a JSON object's text; may be invalid JSON).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments parsed as JSON; an error here is a model format error, not an infrastructure one.
    pub fn arguments_json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.arguments)
    }
}

/// Token counts the server reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

/// One generated token with its log-probability and the top alternatives, when the server returned them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's text (vLLM may send `token_id:N` when asked to).
    pub token: String,
    /// Its log-probability (`None` when the server sent null).
    pub logprob: Option<f64>,
    /// The most likely alternatives at this position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub top_logprobs: Vec<TopLogprob>,
}

/// One alternative token at a position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
}

/// Whether to ask for per-token log-probabilities.
///
/// YAML / JSON: `auto` (the default), `off` (or `null`, `false`), or a number `N` = ask with `N` alternatives per
/// token (`0` = the chosen token only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogprobsSetting {
    /// Ask for the chosen token's log-probability (`N = 0`) unless the endpoint rejected the field once; then
    /// calls to that endpoint go without it.
    #[default]
    Auto,
    /// Never ask.
    Off,
    /// Always ask, with this many alternatives; an endpoint rejecting it fails the call (the user asked).
    Top(u32),
}

impl LogprobsSetting {
    /// The number of alternatives to ask for when the field is sent (`Auto` asks for 0), `None` when off.
    pub fn requested(self) -> Option<u32> {
        match self {
            LogprobsSetting::Auto => Some(0),
            LogprobsSetting::Off => None,
            LogprobsSetting::Top(n) => Some(n),
        }
    }
}

impl std::str::FromStr for LogprobsSetting {
    type Err = String;

    /// `auto`, `off` (or `none`, `false`), or a number of alternatives per token.
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.trim() {
            "auto" => Ok(LogprobsSetting::Auto),
            "off" | "none" | "false" => Ok(LogprobsSetting::Off),
            other => other.parse::<u32>().map(LogprobsSetting::Top).map_err(|_| {
                format!(
                    "logprobs `{other}` is not `auto`, `off` or a number of alternatives per token (e.g. 0)"
                )
            }),
        }
    }
}

impl Serialize for LogprobsSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LogprobsSetting::Auto => serializer.serialize_str("auto"),
            LogprobsSetting::Off => serializer.serialize_str("off"),
            LogprobsSetting::Top(n) => serializer.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for LogprobsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = LogprobsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`auto`, `off`, or a number of top alternatives per token (0 = chosen token only)")
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Self::Value, E> {
                u32::try_from(n)
                    .map(LogprobsSetting::Top)
                    .map_err(|_| E::custom(format!("logprobs {n} is too large")))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Self::Value, E> {
                u64::try_from(n)
                    .map_err(|_| {
                        E::custom(format!(
                            "logprobs {n} is negative; use `auto`, `off` or a number >= 0"
                        ))
                    })
                    .and_then(|n| self.visit_u64(n))
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Self::Value, E> {
                word.parse().map_err(E::custom)
            }
            fn visit_bool<E: serde::de::Error>(self, flag: bool) -> Result<Self::Value, E> {
                if flag {
                    Err(E::custom("logprobs: true is ambiguous; use `auto` or a number of alternatives (e.g. 0)"))
                } else {
                    Ok(LogprobsSetting::Off)
                }
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(LogprobsSetting::Off)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(LogprobsSetting::Off)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Whether to ask the server for prompt and generated token ids (vLLM's `return_token_ids`).
///
/// YAML / JSON: `auto` (the default), `true` or `false`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenIdsSetting {
    /// Ask unless the endpoint rejected the field once; then calls to that endpoint go without it.
    #[default]
    Auto,
    /// Always ask; an endpoint rejecting it fails the call (the user asked).
    On,
    /// Never ask.
    Off,
}

impl TokenIdsSetting {
    /// Whether the field is sent (before any endpoint fallback).
    pub fn requested(self) -> bool {
        !matches!(self, TokenIdsSetting::Off)
    }
}

impl std::str::FromStr for TokenIdsSetting {
    type Err = String;

    /// `auto`, `true` (or `on`) or `false` (or `off`).
    fn from_str(word: &str) -> Result<Self, Self::Err> {
        match word.trim() {
            "auto" => Ok(TokenIdsSetting::Auto),
            "true" | "on" => Ok(TokenIdsSetting::On),
            "false" | "off" => Ok(TokenIdsSetting::Off),
            other => Err(format!(
                "return_token_ids `{other}` is not `auto`, `true` or `false`"
            )),
        }
    }
}

impl Serialize for TokenIdsSetting {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TokenIdsSetting::Auto => serializer.serialize_str("auto"),
            TokenIdsSetting::On => serializer.serialize_bool(true),
            TokenIdsSetting::Off => serializer.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for TokenIdsSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TokenIdsSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`auto`, `true` or `false`")
            }
            fn visit_bool<E: serde::de::Error>(self, flag: bool) -> Result<Self::Value, E> {
                Ok(if flag {
                    TokenIdsSetting::On
                } else {
                    TokenIdsSetting::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, word: &str) -> Result<Self::Value, E> {
                word.parse().map_err(E::custom)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(TokenIdsSetting::Off)
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(TokenIdsSetting::Off)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Sampling and output options sent with a request; `None` fields are left to the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingParams {
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Most tokens to generate in this turn.
    pub max_tokens: Option<u32>,
    /// Sampling seed, for reproducible runs where the server supports it.
    pub seed: Option<u64>,
    /// Stop sequences (the CWM layout's default is its end-of-turn token).
    pub stop: Vec<String>,
    /// Per-token log-probabilities (default `auto`: asked for, dropped for an endpoint that rejects the field).
    pub logprobs: LogprobsSetting,
    /// Prompt and generated token ids, vLLM's `return_token_ids` (default `auto`: asked for, dropped for an
    /// endpoint that rejects the field).
    pub return_token_ids: TokenIdsSetting,
    /// Extra top-level body fields passed through as given (e.g. `{"top_k": 20}`); they override ours.
    pub extra_body: Option<Value>,
}

/// What is sent: a conversation for `/chat/completions`, or a rendered prompt for `/completions`.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// Chat completions. With `tools` non-empty the model may call them natively; with none, the
    /// caller parses a text-format call (CWM `<tool: NAME>`) out of the reply text.
    Chat {
        /// The conversation so far.
        messages: Vec<ChatMessage>,
        /// Native tools offered (empty for text-format scaffolds).
        tools: Vec<ToolSpec>,
    },
    /// Raw completions of a prompt string the caller rendered (e.g. the CWM transcript).
    Prompt(String),
}

/// One model call: the input, the sampling options and who it is for.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct ModelRequest {
    /// The conversation or prompt.
    pub input: ModelInput,
    /// Sampling and output options.
    pub sampling: SamplingParams,
    /// Sent as OpenAI's `user` field; the episode id, so servers (and the scripted test server) can
    /// tell episodes apart.
    pub user: Option<String>,
}

impl ModelRequest {
    /// A chat request; pass no tools for the CWM text format.
    pub fn chat(messages: Vec<ChatMessage>, tools: Vec<ToolSpec>) -> Self {
        ModelRequest {
            input: ModelInput::Chat { messages, tools },
            sampling: SamplingParams::default(),
            user: None,
        }
    }

    /// A raw completions request for a rendered prompt.
    pub fn prompt(prompt: impl Into<String>) -> Self {
        ModelRequest {
            input: ModelInput::Prompt(prompt.into()),
            sampling: SamplingParams::default(),
            user: None,
        }
    }

    /// Replaces the sampling options.
    pub fn with_sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }

    /// Sets the `user` field (the episode id).
    pub fn with_user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }
}

/// The outcome of a successful model call: what the model said and how the call went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text (assistant content; empty when the turn only called tools).
    pub text: String,
    /// Separated reasoning (`reasoning_content` or `reasoning`), when the server split it out.
    pub reasoning: Option<String>,
    /// Native tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why generation stopped (`stop`, `length`, `tool_calls`, ...), as the server said.
    pub finish_reason: Option<String>,
    /// Token counts, when reported.
    pub usage: Option<Usage>,
    /// Per generated token log-probabilities, when returned.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Generated token ids, when returned (vLLM `token_ids`).
    pub token_ids: Option<Vec<u32>>,
    /// Prompt token ids, when returned (vLLM `prompt_token_ids`).
    pub prompt_token_ids: Option<Vec<u32>>,
    /// Response fields we do not model (e.g. `stop_reason`, `system_fingerprint`), from the message,
    /// the choice and the top level, the innermost winning on a name clash.
    pub extra: Map<String, Value>,
    /// The base URL of the endpoint that answered.
    pub endpoint: String,
    /// How long the successful attempt took.
    pub latency: Duration,
    /// How long the whole call took, including failed attempts and backoff waits.
    pub total_duration: Duration,
    /// How many attempts the call took (1 = no retry).
    pub attempts: u32,
    /// The sampling fields of the request body exactly as sent in the successful attempt: every body field but
    /// `model`, `messages`, `prompt`, `tools`, `stream` and `user` (so `extra_body` fields appear as sent, and a
    /// field the endpoint rejected in `auto` mode is absent).
    #[serde(default)]
    pub sampling: Value,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sampling(value: Value) -> Result<SamplingParams, serde_json::Error> {
        serde_json::from_value(value)
    }

    #[test]
    fn logprobs_and_token_ids_default_to_auto_and_old_values_keep_their_meaning() {
        let default = sampling(json!({})).unwrap();
        assert_eq!(default.logprobs, LogprobsSetting::Auto);
        assert_eq!(default.return_token_ids, TokenIdsSetting::Auto);
        let old = sampling(json!({"logprobs": 0, "return_token_ids": true})).unwrap();
        assert_eq!(old.logprobs, LogprobsSetting::Top(0));
        assert_eq!(old.return_token_ids, TokenIdsSetting::On);
        let off = sampling(json!({"logprobs": null, "return_token_ids": false})).unwrap();
        assert_eq!(off.logprobs, LogprobsSetting::Off);
        assert_eq!(off.return_token_ids, TokenIdsSetting::Off);
        let words = sampling(json!({"logprobs": "off", "return_token_ids": "auto"})).unwrap();
        assert_eq!(words.logprobs, LogprobsSetting::Off);
        assert_eq!(words.return_token_ids, TokenIdsSetting::Auto);
        for bad in [
            json!({"logprobs": "some"}),
            json!({"logprobs": -1}),
            json!({"logprobs": true}),
            json!({"return_token_ids": "maybe"}),
        ] {
            let error = sampling(bad.clone()).unwrap_err().to_string();
            assert!(error.contains("auto"), "{bad}: {error}");
        }
        // Round trip: auto and off are words, explicit values keep their old JSON form.
        let value = serde_json::to_value(&old).unwrap();
        assert_eq!(value["logprobs"], 0);
        assert_eq!(value["return_token_ids"], true);
        let value = serde_json::to_value(&default).unwrap();
        assert_eq!(value["logprobs"], "auto");
        assert_eq!(value["return_token_ids"], "auto");
        assert_eq!(sampling(value).unwrap(), default);
        assert_eq!("3".parse::<LogprobsSetting>(), Ok(LogprobsSetting::Top(3)));
        assert_eq!("on".parse::<TokenIdsSetting>(), Ok(TokenIdsSetting::On));
    }
}
