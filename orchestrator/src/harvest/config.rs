//! The harvest configuration: every knob of `swe-env harvest`, from a YAML file (`--config`, loaded with the one
//! YAML loader, unknown keys refused with line and column) and the command-line flags (which override it). Each
//! flag has a YAML key of the same name with `_` for `-` (`--task-token-budget` → `task_token_budget`), plus
//! `endpoints: [{url, max_in_flight}]`, an inline `agent:` (the agent config; or `agent_config: FILE`) and
//! `sandbox:` (container and tool limits, the keys of the unified file's `sandbox` section).
//!
//! [`HarvestConfig::resolve`] validates it and makes what the runner needs: the agent config, the model client
//! config, the episode and grading settings, the temperature of each sample, and the config hash.
//!
//! **Config hash** (`config_hash`, part of every rollout id): sha256 hex of the canonical JSON (keys sorted, no
//! spaces) of [`Resolved::hashed_config`]: `model`; `agent` (the effective agent config: API mode, sampling (with
//! `max_tokens`; without the recording-only `logprobs` and `return_token_ids`, which cannot change an action),
//! prompts and layout, format-error limit, after-submit); `temperatures` (the list as numbers, or the schedule as
//! its two numbers, so `0.2:1.0` and `0.2:1` are the same); `seed`; `samples` ONLY with a temperature schedule (a
//! schedule spreads over K, so K changes every sample's temperature; with a list or none, sample k's settings do
//! not depend on K, so raising K continues the harvest with the new samples); `episode` (`max_turns`,
//! `context_tokens`, `wall_clock_secs` = `episode_timeout`, `observation_cap_bytes`, the tool settings,
//! anti-leak, `image_template`, and the container limits when `sandbox` sets any); `grading` (`rules`, `network`,
//! `test_timeout_secs`). NOT hashed (changing them resumes the same harvest): datasets and `instance_ids` (the store checks the dataset set itself), `samples`
//! without a schedule, `workers`, endpoints' URLs and concurrency, API key variable, request timeout and attempts,
//! `logprobs` and `return_token_ids`, the per-task and global budgets, `max_rollout_failures`,
//! `max_consecutive_failures`, `pull`, `max_shard_bytes`, `out`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use swe_env_model::yaml::{self, YamlError};
use swe_env_model::{LogprobsSetting, TokenIdsSetting};

use crate::agent::{ApiMode, ModelAgentConfig, ModelAgentConfigError};
use crate::benchmark::{GradingNetwork, PullPolicy};
use crate::episode::{AntiLeak, EpisodeConfig};
use crate::grade::{GradeConfig, RuleSet};
use crate::task::OFFICIAL_IMAGE_TEMPLATE;
use crate::trajectory::digest::sha256_hex;
use crate::trajectory::Durability;

/// What the config file is called in errors.
const KIND: &str = "harvest config";

/// Default `workers`.
pub const DEFAULT_WORKERS: usize = 4;
/// Default `max_turns` per rollout.
pub const DEFAULT_MAX_TURNS: u32 = 128;
/// Default wall-clock limit of one rollout, seconds.
pub const DEFAULT_ROLLOUT_TIME_SECS: u64 = 3600;
/// Default time limit of the tests at grading, seconds.
pub const DEFAULT_TEST_TIMEOUT_SECS: u64 = 1800;
/// Default `max_shard_bytes`: 256 MiB.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 256 << 20;
/// Default time allowed for one model request, seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 600;
/// Default most attempts per model call.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Most rollouts per task (`samples`, K).
pub const MAX_SAMPLES: u32 = 100_000;
/// Default `max_rollout_failures`: a rollout that failed this often (failures.jsonl) is not planned again.
pub const DEFAULT_MAX_ROLLOUT_FAILURES: u32 = 3;
/// Default `max_consecutive_failures`: this many infrastructure failures in a row stop the harvest.
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 8;

/// One model endpoint and how many requests it takes at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL of an OpenAI-compatible endpoint, ending in `/v1`.
    pub url: String,
    /// Most requests in flight to this endpoint (default: the client's per-endpoint default, 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
}

/// Every knob of `swe-env harvest` (YAML keys = flag names with `_`). Every key may be left out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HarvestConfig {
    /// Task sources (`fixtures`, an alias, a path); each row of each is a task.
    pub datasets: Vec<String>,
    /// Output directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<PathBuf>,
    /// Only these instance ids (of any of the datasets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instance_ids: Vec<String>,
    /// Served model name.
    pub model: String,
    /// Endpoints, used round-robin, each with its own concurrency limit.
    pub endpoints: Vec<EndpointConfig>,
    /// Name of the environment variable holding the API key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Time allowed for one model request, seconds (also read as `request_timeout_secs`).
    #[serde(alias = "request_timeout_secs")]
    pub request_timeout: u64,
    /// Most attempts per model call (1 = no retry).
    pub max_attempts: u32,
    /// API mode; overrides the agent config's `mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<ApiMode>,
    /// The agent config inline (mode, sampling, prompts, format-error limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<ModelAgentConfig>,
    /// The agent config from a YAML file (instead of `agent`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_config: Option<PathBuf>,
    /// Rollouts per task (K).
    pub samples: u32,
    /// Sample k gets `temperatures[k % len]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub temperatures: Vec<f64>,
    /// `FROM:TO`: sample k gets FROM + (TO − FROM)·k/(K−1) (linear over k).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_schedule: Option<String>,
    /// Base seed, mixed with each rollout (contract: sha256 of `{seed}\n{instance_id}\n{sample_idx}`).
    pub seed: u64,
    /// Rollouts in flight.
    pub workers: usize,
    /// Maximum agent turns per rollout.
    pub max_turns: u32,
    /// Most output tokens per model call (the agent's `sampling.max_tokens`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Context window of one rollout, tokens (default: the window the first endpoint serves, else 131072; also
    /// read as `rollout_token_budget`).
    #[serde(
        alias = "rollout_token_budget",
        skip_serializing_if = "Option::is_none"
    )]
    pub context_tokens: Option<u64>,
    /// Wall-clock limit of one rollout, seconds (also read as `rollout_time_budget_secs`).
    #[serde(alias = "rollout_time_budget_secs")]
    pub episode_timeout: u64,
    /// Tokens (prompt + completion) per task over all its rollouts; then no more rollouts of that task start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_token_budget: Option<u64>,
    /// Turns per task over all its rollouts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_turn_budget: Option<u64>,
    /// Rollout wall time per task (sum over its rollouts), seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task_time_budget_secs: Option<u64>,
    /// Tokens over the whole harvest (every invocation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
    /// Turns over the whole harvest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub turn_budget: Option<u64>,
    /// Wall-clock seconds of this invocation (each invocation counts its own time; rerun to continue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_budget_secs: Option<u64>,
    /// A rollout whose failures in `failures.jsonl` reach this many is not planned again (it is `given_up`)
    /// unless `--retry-given-up`.
    pub max_rollout_failures: u32,
    /// This many rollout failures in a row of an infrastructure kind (model endpoint, Docker unavailable) stop
    /// the harvest (exit 3).
    pub max_consecutive_failures: u32,
    /// Plan the given-up rollouts again (one more try each).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub retry_given_up: bool,
    /// Per-token log-probabilities (`auto`, `off`, N); overrides the agent config's `sampling.logprobs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsSetting>,
    /// Token ids (`auto`, `true`, `false`); overrides the agent config's `sampling.return_token_ids`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub return_token_ids: Option<TokenIdsSetting>,
    /// Network of grading containers.
    pub grading_network: GradingNetwork,
    /// Grading rules.
    pub rules: RuleSet,
    /// Time limit of the tests at grading, seconds.
    pub test_timeout: u64,
    /// Image name template for rows without an `image` field.
    pub image_template: String,
    /// When images are pulled.
    pub pull: PullPolicy,
    /// A shard is closed and the next opened when it reaches this size, bytes.
    pub max_shard_bytes: u64,
    /// Container and tool limits of the rollouts (unset keys: the episode defaults).
    #[serde(skip_serializing_if = "SandboxSection::is_empty")]
    pub sandbox: SandboxSection,
}

impl Default for HarvestConfig {
    fn default() -> Self {
        Self {
            datasets: Vec::new(),
            out: None,
            instance_ids: Vec::new(),
            model: String::new(),
            endpoints: Vec::new(),
            api_key_env: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT_SECS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            mode: None,
            agent: None,
            agent_config: None,
            samples: 1,
            temperatures: Vec::new(),
            temperature_schedule: None,
            seed: 0,
            workers: DEFAULT_WORKERS,
            max_turns: DEFAULT_MAX_TURNS,
            max_tokens: None,
            context_tokens: None,
            episode_timeout: DEFAULT_ROLLOUT_TIME_SECS,
            task_token_budget: None,
            task_turn_budget: None,
            task_time_budget_secs: None,
            token_budget: None,
            turn_budget: None,
            time_budget_secs: None,
            max_rollout_failures: DEFAULT_MAX_ROLLOUT_FAILURES,
            max_consecutive_failures: DEFAULT_MAX_CONSECUTIVE_FAILURES,
            retry_given_up: false,
            logprobs: None,
            return_token_ids: None,
            grading_network: GradingNetwork::Bridge,
            rules: RuleSet::default(),
            test_timeout: DEFAULT_TEST_TIMEOUT_SECS,
            image_template: OFFICIAL_IMAGE_TEMPLATE.to_owned(),
            pull: PullPolicy::Missing,
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
            sandbox: SandboxSection::default(),
        }
    }
}

/// `sandbox:` — the episode container and its tools (a section of the unified config file and of a harvest
/// config; every key optional).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSection {
    /// Git-history hygiene at episode start: `off`, `refs` or `full`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_leak: Option<AntiLeak>,
    /// Docker network of the episode container (`none`, `bridge`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Container memory limit, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
    /// Container CPU limit, CPUs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Container process limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
    /// Time limit of one bash command, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd_timeout: Option<u64>,
    /// Cap on one observation's text, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observation_cap_bytes: Option<usize>,
}

impl SandboxSection {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Applies the keys that are set to an episode configuration.
    pub fn apply(&self, episode: &mut EpisodeConfig) {
        if let Some(level) = self.anti_leak {
            episode.anti_leak = level;
        }
        if let Some(network) = &self.network {
            episode.sandbox.network_mode = network.clone();
        }
        if let Some(bytes) = self.memory_bytes {
            episode.sandbox.memory_bytes = bytes;
        }
        if let Some(cpus) = self.cpus {
            episode.sandbox.nano_cpus = (cpus * 1e9).round() as i64;
        }
        if let Some(pids) = self.pids_limit {
            episode.sandbox.pids_limit = pids;
        }
        if let Some(secs) = self.cmd_timeout {
            episode.tools.cmd_timeout = std::time::Duration::from_secs(secs);
        }
        if let Some(bytes) = self.observation_cap_bytes {
            episode.observation_cap_bytes = bytes;
        }
    }

    /// Every key, from an episode configuration (for the printed effective config).
    pub fn of(episode: &EpisodeConfig) -> Self {
        Self {
            anti_leak: Some(episode.anti_leak),
            network: Some(episode.sandbox.network_mode.clone()),
            memory_bytes: Some(episode.sandbox.memory_bytes),
            cpus: Some(episode.sandbox.nano_cpus as f64 / 1e9),
            pids_limit: Some(episode.sandbox.pids_limit),
            cmd_timeout: Some(episode.tools.cmd_timeout.as_secs()),
            observation_cap_bytes: Some(episode.observation_cap_bytes),
        }
    }

    /// Checks ranges a container runtime would refuse late.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |detail: String| Err(detail);
        if let Some(cpus) = self.cpus {
            if !(cpus > 0.0 && cpus.is_finite()) {
                return bad(format!(
                    "sandbox.cpus is {cpus}: give a positive number of CPUs"
                ));
            }
        }
        for (key, value) in [
            ("sandbox.memory_bytes", self.memory_bytes),
            ("sandbox.pids_limit", self.pids_limit),
        ] {
            if let Some(value) = value.filter(|v| *v <= 0) {
                return bad(format!("{key} is {value}: give a positive number"));
            }
        }
        if self.cmd_timeout == Some(0) {
            return bad("sandbox.cmd_timeout is 0: give at least 1 second".to_owned());
        }
        Ok(())
    }
}

/// Why a harvest configuration is unusable. All of these are usage errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read or parsed (file, line and column named).
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// The agent config is unusable.
    #[error(transparent)]
    Agent(#[from] ModelAgentConfigError),
    /// A value is missing or out of range.
    #[error("invalid harvest config: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

/// Per-task and global budgets (not part of the config hash: raise them and rerun to continue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Budgets {
    /// Tokens per task.
    pub task_tokens: Option<u64>,
    /// Turns per task.
    pub task_turns: Option<u64>,
    /// Rollout wall time per task, seconds.
    pub task_wall_secs: Option<u64>,
    /// Tokens in total.
    pub tokens: Option<u64>,
    /// Turns in total.
    pub turns: Option<u64>,
    /// Harvest wall time in total, seconds.
    pub wall_secs: Option<u64>,
}

/// A validated configuration with everything the runner needs.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The configuration as given (flags applied).
    pub config: HarvestConfig,
    /// The agent config (mode and `max_tokens` applied); each rollout adds its seed and temperature.
    pub agent: ModelAgentConfig,
    /// The model client config (endpoints with their limits, key, timeouts).
    pub client: swe_env_model::ClientConfig,
    /// Per-rollout episode settings (`trajectory_dir` is set by the runner).
    pub episode: EpisodeConfig,
    /// Grading settings.
    pub grade: GradeConfig,
    /// Budgets over tasks and the whole harvest.
    pub budgets: Budgets,
    /// The result-changing configuration (hashed; recorded in harvest.json).
    pub hashed_config: Value,
    /// sha256 hex of the canonical JSON of `hashed_config`.
    pub config_hash: String,
}

impl HarvestConfig {
    /// Reads a YAML config file (unknown keys refused, errors with line and column).
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(yaml::load_file(path, KIND)?)
    }

    /// Parses YAML text (empty = defaults).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        Ok(yaml::parse_str(text, KIND, yaml::INLINE)?)
    }

    /// The temperature of sample `sample_idx` (`None`: the agent config's, or the server default).
    pub fn temperature_for(&self, sample_idx: u32) -> Option<f64> {
        if !self.temperatures.is_empty() {
            return Some(self.temperatures[sample_idx as usize % self.temperatures.len()]);
        }
        let (from, to) = parse_schedule(self.temperature_schedule.as_deref()?).ok()?;
        if self.samples <= 1 {
            return Some(from);
        }
        let t = from + (to - from) * f64::from(sample_idx) / f64::from(self.samples - 1);
        // Round away float noise (0.1 + 0.2 …) so the value sent and recorded is the one a person would write.
        Some((t * 1e9).round() / 1e9)
    }

    /// Validates and resolves the configuration.
    pub fn resolve(&self) -> Result<Resolved, ConfigError> {
        self.validate()?;
        let mut agent = match (&self.agent, &self.agent_config) {
            (Some(agent), None) => agent.clone(),
            (None, Some(path)) => ModelAgentConfig::from_yaml_file(path)?,
            (None, None) => ModelAgentConfig::default(),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "both `agent` (inline) and `agent_config` (a file) are set: keep one",
                ))
            }
        };
        if let Some(mode) = self.mode {
            agent.mode = mode;
        }
        if let Some(max_tokens) = self.max_tokens {
            agent.sampling.max_tokens = Some(max_tokens);
        }
        if let Some(logprobs) = self.logprobs {
            agent.sampling.logprobs = logprobs;
        }
        if let Some(return_token_ids) = self.return_token_ids {
            agent.sampling.return_token_ids = return_token_ids;
        }
        agent
            .validate()
            .map_err(|detail| invalid(format!("agent config: {detail}")))?;
        if agent.sampling.seed.is_some() {
            return Err(invalid(
                "the agent config sets `sampling.seed`: harvest gives each rollout its own seed; set the base \
                 seed with --seed (YAML `seed`) instead",
            ));
        }
        let mut client =
            swe_env_model::ClientConfig::new(self.endpoints[0].url.clone(), self.model.clone());
        client.endpoints = self.endpoints.iter().map(|e| e.url.clone()).collect();
        let default_limit = client.max_in_flight_per_endpoint;
        client.endpoint_max_in_flight = self
            .endpoints
            .iter()
            .map(|e| e.max_in_flight.unwrap_or(default_limit))
            .collect();
        client.api_key_env = self.api_key_env.clone();
        client.request_timeout = Duration::from_secs(self.request_timeout);
        client.retry.max_attempts = self.max_attempts;
        let mut episode = EpisodeConfig {
            max_turns: self.max_turns,
            wall_clock: Duration::from_secs(self.episode_timeout),
            image_template: self.image_template.clone(),
            // The work trajectory is discarded on restart; the store's commit is the durability point.
            durability: Durability::Os,
            ..EpisodeConfig::default()
        };
        if let Some(tokens) = self.context_tokens {
            episode.context_tokens = tokens;
        }
        self.sandbox.apply(&mut episode);
        episode.tool_format = agent.mode.tool_format();
        let grade = GradeConfig {
            network_mode: self.grading_network.as_docker_mode().to_owned(),
            test_timeout: Duration::from_secs(self.test_timeout),
            image_template: self.image_template.clone(),
            ..GradeConfig::default()
        }
        .with_rules(self.rules);
        let budgets = Budgets {
            task_tokens: self.task_token_budget,
            task_turns: self.task_turn_budget,
            task_wall_secs: self.task_time_budget_secs,
            tokens: self.token_budget,
            turns: self.turn_budget,
            wall_secs: self.time_budget_secs,
        };
        let mut agent_hashed = serde_json::to_value(&agent).map_err(|e| invalid(e.to_string()))?;
        if let Some(sampling) = agent_hashed
            .get_mut("sampling")
            .and_then(Value::as_object_mut)
        {
            // Recording only: they change what is kept of a call, never the action.
            sampling.remove("logprobs");
            sampling.remove("return_token_ids");
        }
        let schedule = match &self.temperature_schedule {
            Some(text) => Some(parse_schedule(text).map_err(invalid)?),
            None => None,
        };
        let mut hashed_config = serde_json::json!({
            "model": self.model,
            "agent": agent_hashed,
            "temperatures": match (&self.temperatures, schedule) {
                (_, Some((from, to))) => serde_json::json!({"schedule": [from, to]}),
                (list, None) if !list.is_empty() => serde_json::json!({"list": list}),
                _ => Value::Null,
            },
            "seed": self.seed,
            "episode": {
                "max_turns": episode.max_turns,
                "context_tokens": episode.context_tokens,
                "wall_clock_secs": episode.wall_clock.as_secs(),
                "observation_cap_bytes": episode.observation_cap_bytes,
                "tool_format": episode.tool_format.as_str(),
                "tools": {
                    "cmd_timeout_secs": episode.tools.cmd_timeout.as_secs_f64(),
                    "edit_context_lines": episode.tools.edit_context_lines,
                    "show_exit_code": episode.tools.show_exit_code,
                    "max_submission_bytes": episode.tools.max_submission_bytes,
                    "max_file_bytes": episode.tools.max_file_bytes,
                },
                "anti_leak": episode.anti_leak.as_str(),
                "image_template": episode.image_template,
            },
            "grading": {
                "rules": self.rules.as_str(),
                "network": self.grading_network.as_docker_mode(),
                "test_timeout_secs": self.test_timeout,
            },
        });
        if self.sandbox.network.is_some()
            || self.sandbox.memory_bytes.is_some()
            || self.sandbox.cpus.is_some()
            || self.sandbox.pids_limit.is_some()
        {
            // Container limits can change what a rollout manages to do; hashed only when set, so that harvests
            // started before the `sandbox` key existed keep their hash.
            hashed_config["episode"]["sandbox"] = serde_json::json!({
                "network_mode": episode.sandbox.network_mode,
                "memory_bytes": episode.sandbox.memory_bytes,
                "nano_cpus": episode.sandbox.nano_cpus,
                "pids_limit": episode.sandbox.pids_limit,
            });
        }
        if schedule.is_some() {
            // A schedule spreads over K: K changes every sample's temperature.
            hashed_config["samples"] = Value::from(self.samples);
        }
        let config_hash = sha256_hex(canonical_json(&hashed_config).as_bytes());
        Ok(Resolved {
            config: self.clone(),
            agent,
            client,
            episode,
            grade,
            budgets,
            hashed_config,
            config_hash,
        })
    }

    /// Checks values (counts, ranges, required keys), saying how to fix each.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.datasets.is_empty() {
            return Err(invalid(
                "no dataset: give --dataset fixtures|verified|lite|full|PATH (repeatable) or `datasets:` in the config",
            ));
        }
        if self.datasets.iter().any(|d| d.trim().is_empty()) {
            return Err(invalid("an empty dataset name: give an alias or a path"));
        }
        if self.out.is_none() {
            return Err(invalid(
                "no output directory: give --out DIR (or `out:` in the config)",
            ));
        }
        if self.endpoints.is_empty() {
            return Err(invalid(
                "no model endpoint: give --model-url URL (repeatable; an OpenAI-compatible base URL ending in /v1) \
                 or `endpoints: [{url: …, max_in_flight: …}]` in the config",
            ));
        }
        for endpoint in &self.endpoints {
            if !(endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://")) {
                return Err(invalid(format!(
                    "endpoint `{}` is not an http(s) URL: give a base URL such as http://host:8000/v1",
                    endpoint.url
                )));
            }
            if endpoint.max_in_flight == Some(0) {
                return Err(invalid(format!(
                    "endpoint {} has max_in_flight 0: give at least 1 (or leave it out)",
                    endpoint.url
                )));
            }
        }
        if self.model.trim().is_empty() {
            return Err(invalid(
                "no model name: give --model NAME (the served model name)",
            ));
        }
        if self.samples == 0 {
            return Err(invalid("--samples is 0: give K >= 1 rollouts per task"));
        }
        if self.samples > MAX_SAMPLES {
            return Err(invalid(format!(
                "--samples {} is too many: give at most {MAX_SAMPLES} rollouts per task",
                self.samples
            )));
        }
        if self.max_rollout_failures == 0 {
            return Err(invalid(format!(
                "--max-rollout-failures is 0: give at least 1 (default {DEFAULT_MAX_ROLLOUT_FAILURES})"
            )));
        }
        if self.max_consecutive_failures == 0 {
            return Err(invalid(format!(
                "--max-consecutive-failures is 0: give at least 1 (default {DEFAULT_MAX_CONSECUTIVE_FAILURES})"
            )));
        }
        if self.workers == 0 || self.workers > 4096 {
            return Err(invalid(format!(
                "--workers {} is out of range: give 1 to 4096",
                self.workers
            )));
        }
        if self.max_turns == 0 {
            return Err(invalid("--max-turns is 0: give at least 1"));
        }
        if self.max_tokens == Some(0) {
            return Err(invalid(
                "--max-tokens is 0: give at least 1 (or leave it out)",
            ));
        }
        self.sandbox.validate().map_err(invalid)?;
        if self.context_tokens == Some(0) {
            return Err(invalid("--context-tokens is 0: give at least 1"));
        }
        if self.episode_timeout == 0 {
            return Err(invalid("--episode-timeout is 0: give at least 1 second"));
        }
        if self.test_timeout == 0 {
            return Err(invalid("--test-timeout is 0: give at least 1 second"));
        }
        if self.request_timeout == 0 || self.max_attempts == 0 {
            return Err(invalid(
                "request_timeout and max_attempts must be at least 1",
            ));
        }
        if self.max_shard_bytes == 0 {
            return Err(invalid(format!(
                "--max-shard-bytes is 0: give a positive size in bytes (default {DEFAULT_MAX_SHARD_BYTES})"
            )));
        }
        if !self.temperatures.is_empty() && self.temperature_schedule.is_some() {
            return Err(invalid(
                "both --temperatures and --temperature-schedule are set: give one of them",
            ));
        }
        for &t in &self.temperatures {
            check_temperature(t)?;
        }
        if let Some(schedule) = &self.temperature_schedule {
            let (from, to) = parse_schedule(schedule).map_err(invalid)?;
            check_temperature(from)?;
            check_temperature(to)?;
        }
        if self.instance_ids.iter().any(|id| id.trim().is_empty()) {
            return Err(invalid(
                "--instance-ids holds an empty id: give comma-separated instance ids, e.g. --instance-ids a__b-1,c__d-2",
            ));
        }
        for (name, value) in [
            ("--task-token-budget", self.task_token_budget),
            ("--task-turn-budget", self.task_turn_budget),
            ("--task-time-budget-secs", self.task_time_budget_secs),
            ("--token-budget", self.token_budget),
            ("--turn-budget", self.turn_budget),
            ("--time-budget-secs", self.time_budget_secs),
        ] {
            if value == Some(0) {
                return Err(invalid(format!(
                    "{name} is 0: give a positive budget (or leave it out for none)"
                )));
            }
        }
        Ok(())
    }
}

fn check_temperature(t: f64) -> Result<(), ConfigError> {
    if t.is_finite() && (0.0..=2.0).contains(&t) {
        Ok(())
    } else {
        Err(invalid(format!(
            "temperature {t} is out of range: give values from 0 to 2"
        )))
    }
}

/// Parses a temperature list `0.2,0.6,1.0` (the `--temperatures` flag).
pub fn parse_temperatures(text: &str) -> Result<Vec<f64>, String> {
    let values: Result<Vec<f64>, String> = text
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<f64>()
                .map_err(|_| format!("`{part}` is not a number: give e.g. 0.2,0.6,1.0"))
        })
        .collect();
    let values = values?;
    if values.is_empty() {
        return Err("an empty temperature list: give e.g. 0.2,0.6,1.0".to_owned());
    }
    Ok(values)
}

/// Parses `FROM:TO` (e.g. `0.2:1.0`).
pub fn parse_schedule(text: &str) -> Result<(f64, f64), String> {
    let bad = || format!("temperature schedule `{text}` is not FROM:TO: give e.g. 0.2:1.0");
    let (from, to) = text.split_once(':').ok_or_else(bad)?;
    let from = from.trim().parse::<f64>().map_err(|_| bad())?;
    let to = to.trim().parse::<f64>().map_err(|_| bad())?;
    Ok((from, to))
}

pub use crate::benchmark::rollout_seed;

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for key in keys {
                    out.insert(key.clone(), sorted(&map[key]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    // serde_json's map keeps keys sorted unless `preserve_order` is on; sorting here holds either way.
    serde_json::to_string(&sorted(value)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> HarvestConfig {
        HarvestConfig {
            datasets: vec!["fixtures".into()],
            out: Some("out".into()),
            model: "m".into(),
            endpoints: vec![EndpointConfig {
                url: "http://127.0.0.1:1/v1".into(),
                max_in_flight: None,
            }],
            samples: 4,
            ..HarvestConfig::default()
        }
    }

    #[test]
    fn yaml_keys_are_checked_with_line_and_column() {
        let error = HarvestConfig::from_yaml_str("samples: 2\nworkerz: 3\n").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("workerz"), "{text}");
        assert!(
            matches!(&error, ConfigError::Yaml(y) if y.position().map(|p| p.0) == Some(2)),
            "{text}"
        );
        let config = HarvestConfig::from_yaml_str(
            "datasets: [fixtures]\nendpoints:\n  - {url: 'http://a/v1', max_in_flight: 2}\nagent:\n  mode: chat-tools\n  sampling: {top_p: 0.9}\n",
        )
        .unwrap();
        assert_eq!(config.endpoints[0].max_in_flight, Some(2));
        assert_eq!(config.agent.unwrap().mode, ApiMode::ChatTools);
    }

    #[test]
    fn bad_values_are_refused_with_the_fix() {
        for (change, needle) in [
            (
                Box::new(|c: &mut HarvestConfig| c.samples = 0) as Box<dyn Fn(&mut HarvestConfig)>,
                "K >= 1",
            ),
            (
                Box::new(|c: &mut HarvestConfig| c.temperature_schedule = Some("0.2:5".into())),
                "from 0 to 2",
            ),
            (
                Box::new(|c: &mut HarvestConfig| c.temperature_schedule = Some("hot".into())),
                "FROM:TO",
            ),
            (
                Box::new(|c: &mut HarvestConfig| c.temperatures = vec![-1.0]),
                "from 0 to 2",
            ),
            (
                Box::new(|c: &mut HarvestConfig| c.datasets.clear()),
                "--dataset",
            ),
            (
                Box::new(|c: &mut HarvestConfig| c.endpoints.clear()),
                "--model-url",
            ),
            (
                Box::new(|c: &mut HarvestConfig| c.token_budget = Some(0)),
                "--token-budget",
            ),
        ] {
            let mut config = base();
            change(&mut config);
            let error = config.resolve().unwrap_err().to_string();
            assert!(error.contains(needle), "{error}");
        }
        assert!(parse_temperatures("").is_err());
        assert!(parse_temperatures("0.2,x").is_err());
        assert_eq!(parse_temperatures("0.2, 1").unwrap(), [0.2, 1.0]);
    }

    #[test]
    fn temperatures_cycle_or_follow_the_schedule() {
        let mut config = base();
        config.temperatures = vec![0.2, 0.6, 1.0];
        let got: Vec<_> = (0..4).map(|k| config.temperature_for(k)).collect();
        assert_eq!(got, [Some(0.2), Some(0.6), Some(1.0), Some(0.2)]);
        config.temperatures.clear();
        config.temperature_schedule = Some("0.2:1.1".into());
        let got: Vec<_> = (0..4).map(|k| config.temperature_for(k)).collect();
        assert_eq!(got, [Some(0.2), Some(0.5), Some(0.8), Some(1.1)]);
        config.temperature_schedule = None;
        assert_eq!(config.temperature_for(0), None);
    }

    #[test]
    fn the_hash_covers_result_changing_fields_only() {
        let hash = |c: &HarvestConfig| c.resolve().unwrap().config_hash;
        let original = hash(&base());
        let mut other = base();
        other.workers = 17;
        other.endpoints[0].url = "http://other:9/v1".into();
        other.endpoints[0].max_in_flight = Some(3);
        other.token_budget = Some(10);
        other.task_turn_budget = Some(10);
        other.max_shard_bytes = 1 << 20;
        other.instance_ids = vec!["x".into()];
        other.max_rollout_failures = 9;
        other.max_consecutive_failures = 2;
        other.retry_given_up = true;
        assert_eq!(hash(&other), original);
        for change in [
            Box::new(|c: &mut HarvestConfig| c.seed = 1) as Box<dyn Fn(&mut HarvestConfig)>,
            Box::new(|c: &mut HarvestConfig| c.temperatures = vec![0.5]),
            Box::new(|c: &mut HarvestConfig| c.max_turns = 7),
            Box::new(|c: &mut HarvestConfig| c.mode = Some(ApiMode::Completions)),
            Box::new(|c: &mut HarvestConfig| c.model = "n".into()),
            Box::new(|c: &mut HarvestConfig| c.rules = RuleSet::Hardened),
            Box::new(|c: &mut HarvestConfig| c.grading_network = GradingNetwork::None),
        ] {
            let mut changed = base();
            change(&mut changed);
            assert_ne!(hash(&changed), original);
        }
        assert_eq!(original.len(), 64);
    }

    #[test]
    fn recording_only_sampling_knobs_are_not_hashed() {
        let hash = |c: &HarvestConfig| c.resolve().unwrap().config_hash;
        let original = hash(&base());
        let mut other = base();
        other.logprobs = Some(LogprobsSetting::Off);
        other.return_token_ids = Some(TokenIdsSetting::Off);
        let resolved = other.resolve().unwrap();
        assert_eq!(resolved.agent.sampling.logprobs, LogprobsSetting::Off);
        assert_eq!(
            resolved.agent.sampling.return_token_ids,
            TokenIdsSetting::Off
        );
        assert_eq!(resolved.config_hash, original);
        other.logprobs = Some(LogprobsSetting::Top(5));
        assert_eq!(hash(&other), original);
        // The same through an inline agent config.
        let mut inline = base();
        let mut agent = ModelAgentConfig::default();
        agent.sampling.logprobs = LogprobsSetting::Off;
        inline.agent = Some(agent);
        assert_eq!(hash(&inline), original);
    }

    #[test]
    fn samples_are_hashed_only_with_a_temperature_schedule() {
        let hash = |c: &HarvestConfig| c.resolve().unwrap().config_hash;
        // No temperatures, or a list: sample k does not depend on K, so raising K continues the harvest.
        for temperatures in [vec![], vec![0.2, 0.6, 1.0]] {
            let mut four = base();
            four.temperatures = temperatures;
            let mut eight = four.clone();
            eight.samples = 8;
            assert_eq!(hash(&four), hash(&eight));
            for k in 0..4 {
                assert_eq!(four.temperature_for(k), eight.temperature_for(k));
            }
        }
        // A schedule spreads over K: K is part of the hash.
        let mut four = base();
        four.temperature_schedule = Some("0.2:1.0".into());
        let mut eight = four.clone();
        eight.samples = 8;
        assert_ne!(hash(&four), hash(&eight));
    }

    #[test]
    fn the_schedule_is_hashed_as_numbers() {
        let hash = |c: &HarvestConfig| c.resolve().unwrap().config_hash;
        let mut a = base();
        a.temperature_schedule = Some("0.2:1.0".into());
        let mut b = base();
        b.temperature_schedule = Some(" 0.20 : 1".into());
        assert_eq!(hash(&a), hash(&b));
        b.temperature_schedule = Some("0.2:0.9".into());
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn samples_are_capped_and_failure_limits_positive() {
        let mut config = base();
        config.samples = MAX_SAMPLES;
        assert!(config.resolve().is_ok());
        config.samples = MAX_SAMPLES + 1;
        let error = config.resolve().unwrap_err().to_string();
        assert!(error.contains("at most 100000"), "{error}");
        let mut config = base();
        config.max_rollout_failures = 0;
        assert!(config.resolve().is_err());
        let mut config = base();
        config.max_consecutive_failures = 0;
        assert!(config.resolve().is_err());
    }

    #[test]
    fn harvest_episodes_leave_durability_to_the_os() {
        // The work trajectory is discarded on restart; the commit is the durability point.
        assert_eq!(base().resolve().unwrap().episode.durability, Durability::Os);
    }

    #[test]
    fn rollout_seeds_are_json_safe_and_differ_per_sample() {
        let a = rollout_seed(0, "t-1", 0);
        assert_eq!(a, rollout_seed(0, "t-1", 0));
        assert_ne!(a, rollout_seed(0, "t-1", 1));
        assert_ne!(a, rollout_seed(1, "t-1", 0));
        assert!(a < (1 << 53));
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let value = serde_json::json!({"b": 1, "a": {"d": [1, {"z": 0, "y": 1}], "c": null}});
        assert_eq!(
            canonical_json(&value),
            r#"{"a":{"c":null,"d":[1,{"y":1,"z":0}]},"b":1}"#
        );
    }
}
