//! OpenAI-compatible model client and prompt rendering for agent loops.
//!
//! - [`ModelClient::call`] sends a [`ModelRequest`] in one of three modes — chat with native tools,
//!   chat with text-format (CWM `<tool: NAME>`) calls, raw completions of a rendered prompt — with
//!   retries, round-robin over endpoints and a per-endpoint concurrency limit.
//! - [`AgentPromptConfig`] holds the prompt templates (built-in defaults, YAML overrides) and the
//!   [`CwmLayout`] that renders a conversation into one prompt string.
//! - [`yaml`] is the one YAML config loader (this crate's prompt config, the orchestrator's agent and server
//!   configs), so every config file reports errors alike.
//! - [`redact_url`] is the endpoint URL without user-info or query: the only form recorded or logged.
//! - [`scripted::ScriptedServer`] is a real HTTP server replaying scripted replies, for tests.

mod client;
mod config;
mod cwm;
mod endpoints;
mod error;
mod prompt;
mod retry;
pub mod scripted;
mod template;
mod types;
mod url;
mod wire;
pub mod yaml;

pub use client::{CallInFlight, ClientConfig, ModelClient, DEFAULT_MAX_RESPONSE_BYTES};
pub use config::{AgentPromptConfig, PromptConfigError};
pub use cwm::{CwmLayout, CwmRenderError};
pub use error::ModelError;
pub use prompt::{
    known_variables, PromptVariables, SystemPromptInputs, UserPromptInputs, DATASET_VARIABLES,
    DEFAULT_SYSTEM_TEMPLATE, DEFAULT_USER_TEMPLATE, HIDDEN_FIELDS, RUN_VARIABLES,
};
pub use retry::RetryConfig;
pub use template::{check_template, render_template, TemplateError, TEMPLATE_FUEL};
pub use types::{
    ChatMessage, ChatRole, Completion, LogprobsSetting, ModelInput, ModelRequest, SamplingParams,
    TokenIdsSetting, TokenLogprob, ToolCall, ToolSpec, TopLogprob, Usage,
};
pub use url::redact_url;
pub use yaml::YamlError;
