//! Model options shared by `run-episode` and `run-benchmark`: endpoint(s), model, API mode, agent config file,
//! sampling overrides, timeouts and retries.

use std::path::PathBuf;
use std::time::Duration;

use swe_env_model::{ClientConfig, LogprobsSetting, TokenIdsSetting};

use crate::agent::{ApiMode, ModelAgentConfig};

/// How to reach and drive a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Base URL of an OpenAI-compatible endpoint, ending in /v1; repeat for round-robin.
    #[arg(long = "model-url")]
    pub model_urls: Vec<String>,
    /// Served model name.
    #[arg(long, default_value = "")]
    pub model: String,
    /// API mode; overrides the config file's `mode` (default chat-text).
    #[arg(long, value_enum)]
    pub mode: Option<ApiMode>,
    /// Agent config YAML (mode, sampling, prompts, format-error limit): the `agent` section alone; replaces the
    /// `--config` file's `agent` section; flags override it.
    #[arg(long = "agent-config", id = "agent_config", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The `--config` file's `agent` section (used when `--agent-config` is not given).
    #[arg(skip)]
    pub base_agent: Option<ModelAgentConfig>,
    /// Name of the environment variable holding the API key (sent as a bearer token).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Sampling temperature; overrides the config.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Most output tokens per turn; overrides the config.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// What is recorded of each model call (logprobs, token ids).
    #[command(flatten)]
    pub recording: RecordingArgs,
    /// Time allowed for one model request, in seconds [default: 600].
    #[arg(long, alias = "request-timeout-secs")]
    pub request_timeout: Option<u64>,
    /// Most attempts per model call (1 = no retry) [default: 5].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Most prompt + completion tokens per episode, summed over its model calls; the episode then ends with
    /// `token_limit`. Overrides the config's `limits.tokens` [default: no limit].
    #[arg(long, value_name = "TOKENS")]
    pub token_limit: Option<u64>,
    /// Most USD per episode, priced with the config's `prices` for the served model (required then); the episode
    /// then ends with `cost_limit`. Overrides the config's `limits.cost_usd` [default: no limit].
    #[arg(long, value_name = "USD")]
    pub cost_limit: Option<f64>,
}

/// What is recorded of each model call; shared by `run-episode`, `run-benchmark` and `harvest`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RecordingArgs {
    /// Per-token log-probabilities: `auto` (asked for, dropped for an endpoint that rejects them), `off`, or N
    /// alternatives per token (always asked); overrides the config [default: auto].
    #[arg(long, value_name = "auto|off|N")]
    pub logprobs: Option<LogprobsSetting>,
    /// Prompt and generated token ids (vLLM `return_token_ids`): `auto` (asked for, dropped for an endpoint that
    /// rejects them), `true` or `false`; overrides the config [default: auto].
    #[arg(long, value_name = "auto|true|false")]
    pub return_token_ids: Option<TokenIdsSetting>,
}

/// Default of `--request-timeout`.
const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;
/// Default of `--max-attempts`.
const DEFAULT_MAX_ATTEMPTS: u32 = 5;

impl ModelArgs {
    /// Whether a model was asked for: any model option given. [`Self::agent_config`] then checks that the
    /// endpoint and the model name are both there, so `--model NAME` alone is a usage error, never a silent
    /// fallback to a built-in agent.
    pub fn is_set(&self) -> bool {
        !self.model_urls.is_empty()
            || !self.model.is_empty()
            || self.mode.is_some()
            || self.config.is_some()
            || self.api_key_env.is_some()
            || self.temperature.is_some()
            || self.max_tokens.is_some()
            || self.recording.logprobs.is_some()
            || self.recording.return_token_ids.is_some()
            || self.request_timeout.is_some()
            || self.max_attempts.is_some()
            || self.token_limit.is_some()
            || self.cost_limit.is_some()
    }

    /// Checks that endpoint and model name come together.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            !self.model_urls.is_empty(),
            "model options need --model-url (an OpenAI-compatible base URL ending in /v1) and --model NAME"
        );
        anyhow::ensure!(
            !self.model.is_empty(),
            "--model is required with --model-url (the served model name)"
        );
        Ok(())
    }

    /// The agent config from the file and the flags, validated.
    pub fn agent_config(&self) -> anyhow::Result<ModelAgentConfig> {
        self.check()?;
        let mut config = match &self.config {
            Some(path) => ModelAgentConfig::from_yaml_file(path)?,
            None => self.base_agent.clone().unwrap_or_default(),
        };
        if let Some(mode) = self.mode {
            config.mode = mode;
        }
        if let Some(temperature) = self.temperature {
            config.sampling.temperature = Some(temperature);
        }
        if let Some(max_tokens) = self.max_tokens {
            config.sampling.max_tokens = Some(max_tokens);
        }
        if let Some(logprobs) = self.recording.logprobs {
            config.sampling.logprobs = logprobs;
        }
        if let Some(return_token_ids) = self.recording.return_token_ids {
            config.sampling.return_token_ids = return_token_ids;
        }
        if let Some(tokens) = self.token_limit {
            config.limits.tokens = Some(tokens);
        }
        if let Some(cost) = self.cost_limit {
            config.limits.cost_usd = Some(cost);
        }
        config.validate().map_err(anyhow::Error::msg)?;
        config
            .check_price_for(&self.model)
            .map_err(anyhow::Error::msg)?;
        Ok(config)
    }

    /// The client config (endpoints round-robin, key env var, timeout, attempts).
    pub fn client_config(&self) -> ClientConfig {
        let first = self.model_urls.first().cloned().unwrap_or_default();
        let mut client = ClientConfig::new(first, self.model.clone());
        client.endpoints = self.model_urls.clone();
        client.api_key_env = self.api_key_env.clone();
        client.request_timeout =
            Duration::from_secs(self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS));
        client.retry.max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        client
    }

    /// Fills what no flag gave from the config file's `model` and `agent` sections (flags win).
    pub fn apply_file(&mut self, file: &crate::config::ConfigFile) {
        let model = &file.model;
        if self.model_urls.is_empty() {
            self.model_urls = model.urls.clone();
        }
        if self.model.is_empty() {
            self.model = model.name.clone().unwrap_or_default();
        }
        if self.api_key_env.is_none() {
            self.api_key_env = model.api_key_env.clone();
        }
        if self.request_timeout.is_none() {
            self.request_timeout = model.request_timeout;
        }
        if self.max_attempts.is_none() {
            self.max_attempts = model.max_attempts;
        }
        self.base_agent = file.agent.clone();
    }

    /// The effective `model` section (for `--print-config` and the manifest): never an API key, only its variable.
    pub fn model_section(&self) -> crate::config::ModelSection {
        crate::config::ModelSection {
            urls: self
                .model_urls
                .iter()
                .map(|url| swe_env_model::redact_url(url))
                .collect(),
            name: Some(self.model.clone()),
            api_key_env: self.api_key_env.clone(),
            request_timeout: Some(self.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT_SECS)),
            max_attempts: Some(self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS)),
        }
    }
}

/// The context window the model endpoint serves (`max_model_len` of GET {base}/models, as vLLM reports it), or
/// `None` when the endpoint does not say, or cannot be asked (then a warning is printed and the run goes on).
pub async fn served_context_window(client: &ClientConfig) -> Option<u64> {
    let endpoint = swe_env_model::redact_url(client.endpoints.first()?);
    let asked = match swe_env_model::ModelClient::new(client.clone()) {
        Ok(model) => model.served_context_window().await,
        Err(error) => Err(error),
    };
    match asked {
        Ok(window) => window,
        Err(error) => {
            eprintln!(
                "warning: cannot ask {endpoint} for its context window ({error}); give --context-tokens to set it"
            );
            None
        }
    }
}
