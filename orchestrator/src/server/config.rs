//! Server knobs: where to listen, which tasks to serve, auth, admission limits, timeouts and episode defaults.
//! Read from a YAML file (every field optional, unknown fields refused), then overridden by CLI flags. Defaults
//! are defined once, in [`ServerConfig::default`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use swe_env_model::yaml::{self, YamlError};

use super::error::ServiceError;
use crate::episode::{AntiLeak, EpisodeConfig};
use crate::grade::testgen::{
    TestgenLimits, DEFAULT_TIMEOUT_SECS, MAX_SCRIPT_BYTES, MAX_TIMEOUT_SECS,
};
use crate::grade::{GradeConfig, RuleSet};
use crate::pool::PoolConfig;
use crate::task::OFFICIAL_IMAGE_TEMPLATE;
use crate::trajectory::Durability;
use swe_env_sandbox::SandboxConfig;

/// What a server config file is called in errors.
const KIND: &str = "server config";

/// Environment variable read for the bearer token when no token file is configured.
pub const TOKEN_ENV_VAR: &str = "SWE_ENV_TOKEN";

/// Configuration of `swe-env serve`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// TCP address to listen on (`host:port`; port 0 picks one). Default `127.0.0.1:50051`. `None` with a
    /// `unix_socket` serves on the socket only.
    pub listen: Option<String>,
    /// Unix socket path to listen on as well (a stale socket file there is replaced). Default none.
    pub unix_socket: Option<PathBuf>,
    /// TCP address (`host:port`; port 0 picks one) of the Prometheus metrics endpoint (`GET /metrics`, no auth:
    /// bind it to loopback or a private network). Default none (no metrics endpoint).
    pub metrics_listen: Option<String>,
    /// This server's node id in a fleet: a DNS label (1 to 63 of `[a-z0-9-]`, not starting or ending with `-`).
    /// Every episode id it makes is `<node_id>.ep-<32 hex>`, so fleet clients route an episode's calls to its node.
    /// Default: the host name, lower-cased, every run of other characters one `-` (a Kubernetes pod's name).
    /// Servers of one fleet need distinct ids (several on one host: set it).
    pub node_id: Option<String>,
    /// Task sources the server offers, read as every command reads them (`datasets::load_source`): `fixtures`,
    /// an alias (`verified`, `lite`, `full`) or a dataset file (JSONL / JSON / parquet, SWE-bench format).
    /// Default none.
    pub tasks: Vec<String>,
    /// File holding the bearer token clients must send. Default none: the token comes from `SWE_ENV_TOKEN`, and
    /// with neither, auth is off.
    pub token_file: Option<PathBuf>,
    /// Maximum live episodes (each holds a container). Default 1024: one 2-core, 24 GiB box held 1,000 live
    /// episodes with 0 errors (`swe-env bench scale --episodes 1000`; ~5 MiB of host memory each while idle, server
    /// RSS ~100 MiB). What the agents run inside counts on top (each container may use up to its memory limit), so
    /// lower it on a smaller host or for heavy test suites.
    pub max_episodes: usize,
    /// Maximum containers starting at once. Default 8.
    pub max_concurrent_starts: usize,
    /// How long a CreateEpisode waits for a start slot before answering RESOURCE_EXHAUSTED, ms. Default 10000.
    pub start_queue_ms: u64,
    /// Live episodes idle (no Step) longer than this are ended (status `cancelled`), seconds. Default 1800.
    pub idle_ttl_secs: u64,
    /// Directory of trajectory files (`<episode id>.jsonl`). Default `runs/serve`.
    pub trajectory_dir: PathBuf,
    /// On SIGTERM/SIGINT, how long in-flight calls may finish before they are cancelled, seconds. Default 30.
    pub shutdown_grace_secs: u64,
    /// During a drain, live episodes unused for this long (and this long after the stop signal) no longer hold the
    /// server up to the end of `shutdown_grace_secs`, seconds (at most the grace). Default 2: a drain ends soon
    /// once clients stop stepping. A trainer that thinks longer than this between steps (a model call) loses its
    /// live episodes at a drain unless this is raised (the Kubernetes manifests set it to the grace).
    pub drain_quiet_secs: u64,
    /// Ended episodes remembered for ListEpisodes / CloseEpisode (their trajectories stay on disk). Default 10000.
    pub max_ended_remembered: usize,
    /// How often the running server reconciles, seconds: orphaned containers of dead owners, removals of its own
    /// containers that failed, trajectories of crashed episodes. Default 60.
    pub reconcile_interval_secs: u64,
    /// Removed: an API key attached to whatever URL a client sent could be exfiltrated. A config that still sets
    /// it is refused at start; give each entry of `model_endpoints` its own `api_key_env` instead.
    pub model_api_key_env: Option<String>,
    /// The model endpoints RunEpisode may use, by name (the client sends `ModelEndpoint.endpoint`). Each endpoint's
    /// API key is only ever sent to that endpoint's `base_url`. Default none: RunEpisode is refused unless
    /// `allow_client_base_urls` is set.
    pub model_endpoints: BTreeMap<String, ModelEndpointConfig>,
    /// Let RunEpisode clients send their own `ModelEndpoint.base_url` (the server then calls any address the
    /// client names). No API key is ever sent to a client URL. Default false.
    pub allow_client_base_urls: bool,
    /// The most a request may ask for (budgets, limits, sizes, page sizes); above it is INVALID_ARGUMENT.
    pub maxima: Maxima,
    /// Episode defaults and sandbox limits.
    pub episode: EpisodeDefaults,
    /// Grading settings.
    pub grading: GradingSettings,
    /// Memory bounds: tool file and submission sizes, retained ended-episode bytes.
    pub memory: MemoryBounds,
    /// Warm pools of ready containers (Prewarm, automatic policy). Defaults: `max_containers: 64`,
    /// `max_concurrent_fills: 2`, `min_host_available_bytes: 2147483648`, `max_idle_secs: 900`,
    /// `take_wait_ms: 5000`, `max_keys: 256`, `auto: {enabled: false, size: 2, min_uses: 2, keep_secs: 120,
    /// max_keys: 8}`; see
    /// [`PoolConfig`].
    pub pool: PoolConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:50051".to_owned()),
            unix_socket: None,
            metrics_listen: None,
            node_id: None,
            tasks: Vec::new(),
            token_file: None,
            max_episodes: 1024,
            max_concurrent_starts: 8,
            start_queue_ms: 10_000,
            idle_ttl_secs: 1800,
            trajectory_dir: PathBuf::from("runs/serve"),
            shutdown_grace_secs: 30,
            drain_quiet_secs: 2,
            max_ended_remembered: 10_000,
            reconcile_interval_secs: 60,
            model_api_key_env: None,
            model_endpoints: BTreeMap::new(),
            allow_client_base_urls: false,
            maxima: Maxima::default(),
            episode: EpisodeDefaults::default(),
            grading: GradingSettings::default(),
            memory: MemoryBounds::default(),
            pool: PoolConfig::default(),
        }
    }
}

/// Memory bounds of the server (YAML `memory:`). Each is at most [`MemoryBounds::CEILING_BYTES`] (the sandbox's
/// own read limit) except the ended-episode budget.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryBounds {
    /// Largest submission an episode accepts (patch file or computed), bytes. Default 4 MiB.
    pub max_submission_bytes: usize,
    /// Largest file edit reads and edit/create write, bytes. Default 8 MiB.
    pub max_file_bytes: usize,
    /// Bytes the remembered ended episodes may hold together (submissions, stored replies, labels), beside the
    /// count bound `max_ended_remembered`; the oldest are forgotten first. Default 256 MiB.
    pub max_ended_remembered_bytes: usize,
}

impl MemoryBounds {
    /// The operator maximum of `max_submission_bytes` and `max_file_bytes`: 64 MiB.
    pub const CEILING_BYTES: usize = swe_env_sandbox::docker::MAX_FILE_BYTES;

    /// Sets the tool limits of an episode.
    pub fn apply(&self, tools: &mut swe_env_tools::ToolConfig) {
        tools.max_submission_bytes = self.max_submission_bytes;
        tools.max_file_bytes = self.max_file_bytes;
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("memory.max_submission_bytes", self.max_submission_bytes),
            ("memory.max_file_bytes", self.max_file_bytes),
        ] {
            if value == 0 || value > Self::CEILING_BYTES {
                return Err(ConfigError::Invalid {
                    field,
                    reason: format!(
                        "{value} is not between 1 and {} bytes (the sandbox's read limit)",
                        Self::CEILING_BYTES
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Default for MemoryBounds {
    fn default() -> Self {
        Self {
            max_submission_bytes: swe_env_tools::DEFAULT_MAX_SUBMISSION_BYTES,
            max_file_bytes: swe_env_tools::DEFAULT_MAX_FILE_BYTES,
            max_ended_remembered_bytes: 256 << 20,
        }
    }
}

/// Defaults of every episode (a CreateEpisode request may override budgets and limits per episode).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EpisodeDefaults {
    /// Maximum turns. Default 128.
    pub max_turns: u32,
    /// Context-token budget. Default 131072.
    pub context_tokens: u64,
    /// Wall-clock limit of an episode, seconds. Default 3600.
    pub wall_clock_secs: u64,
    /// Per-command timeout of bash, seconds. Default 120.
    pub cmd_timeout_secs: u64,
    /// Image template for rows without `image`. Default the official SWE-bench one.
    pub image_template: String,
    /// Git-history hygiene at start: `off`, `refs` (default) or `full`.
    pub anti_leak: AntiLeak,
    /// Docker network of episode containers. Default `none`.
    pub network_mode: String,
    /// Container memory limit, bytes. Default 4 GiB.
    pub memory_bytes: i64,
    /// Container CPU limit, CPUs. Default 2.0.
    pub cpus: f64,
    /// Container process limit. Default 1024.
    pub pids_limit: i64,
    /// How trajectory records are made durable before a Step answers: `per-step` (default: written and
    /// fdatasynced), `batched` (group commit: one `syncfs` per batch of concurrent records; as safe, fewer syncs)
    /// or `os` (written only: a machine crash may lose the last records; a process crash loses nothing). Operator
    /// setting: no request can change it. Recorded in `episode_start.limits.durability`.
    pub durability: Durability,
}

impl Default for EpisodeDefaults {
    fn default() -> Self {
        let episode = EpisodeConfig::default();
        let sandbox = SandboxConfig::default();
        Self {
            max_turns: episode.max_turns,
            context_tokens: episode.context_tokens,
            wall_clock_secs: episode.wall_clock.as_secs(),
            cmd_timeout_secs: episode.tools.cmd_timeout.as_secs(),
            image_template: OFFICIAL_IMAGE_TEMPLATE.to_owned(),
            anti_leak: episode.anti_leak,
            network_mode: sandbox.network_mode,
            memory_bytes: sandbox.memory_bytes,
            // Docker refuses more CPUs than the host has: on a one-CPU host the default is 1.
            cpus: (sandbox.nano_cpus as f64 / 1e9).min(host_cpus()),
            pids_limit: sandbox.pids_limit,
            durability: episode.durability,
        }
    }
}

/// An operator-approved model endpoint for RunEpisode (entry of `model_endpoints`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEndpointConfig {
    /// Base URL of the OpenAI-compatible API (e.g. `http://10.0.0.5:8000/v1`). Required.
    pub base_url: String,
    /// Model names a client may ask for; the first is used when the client names none. Empty (the default): any
    /// name, and the client must name one.
    #[serde(default)]
    pub models: Vec<String>,
    /// Environment variable holding this endpoint's API key (sent as `Authorization: Bearer`, to this endpoint
    /// only). Default none: no key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Most requests in flight to this endpoint for one model, over every RunEpisode. Default 64.
    #[serde(default = "default_endpoint_concurrency")]
    pub concurrency: usize,
}

fn default_endpoint_concurrency() -> usize {
    64
}

/// The most a client may ask for in a request. Every client-settable number has one; a request above it is
/// refused with INVALID_ARGUMENT naming the field and the maximum. Defaults (what an unset field gets) live in
/// `episode`, and must not be above these.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Maxima {
    /// `limits.memory_bytes`: container memory, bytes. Default 16 GiB.
    pub memory_bytes: i64,
    /// `limits.cpus`: container CPUs. Default the host's CPU count (Docker refuses more).
    pub cpus: f64,
    /// `limits.pids_limit`: container processes. Default 8192.
    pub pids_limit: i64,
    /// `limits.cmd_timeout_secs`: one bash command, seconds. Default 1800.
    pub cmd_timeout_secs: u64,
    /// `budgets.max_turns`. Default 1024.
    pub max_turns: u32,
    /// `budgets.context_tokens`. Default 1048576.
    pub context_tokens: u64,
    /// `budgets.observation_cap_bytes`: one observation's text. Default 1 MiB.
    pub observation_cap_bytes: u64,
    /// `budgets.wall_clock_secs`: one episode, seconds. Default 14400 (4 h).
    pub wall_clock_secs: u64,
    /// `labels`: labels per episode. Default 16.
    pub labels: usize,
    /// `labels`: bytes of one label key or value. Default 256.
    pub label_bytes: usize,
    /// `prompt`: messages of the initial prompt. Default 64.
    pub prompt_messages: usize,
    /// `prompt`: bytes of all prompt messages together. Default 1 MiB.
    pub prompt_bytes: usize,
    /// `model_json`: bytes. Default 64 KiB.
    pub model_json_bytes: usize,
    /// `task_json` (CreateEpisode, Grade): bytes of an inline task row. Default 1 MiB.
    pub task_json_bytes: usize,
    /// `page_size` of ListTasks and ListEpisodes. Default 1000.
    pub page_size: u32,
    /// `model.max_tokens` of RunEpisode: tokens per completion. Default 65536.
    pub model_max_tokens: u32,
    /// `count` of Prewarm: containers kept ready for one task. Default 64 (at most `pool.max_containers`).
    pub prewarm: u32,
    /// `timeout_secs` of CheckTest: one run of a generated test, seconds. Default 3600, the most it may be.
    pub testgen_timeout_secs: u64,
}

/// The host's CPU count (1 when unknown).
pub fn host_cpus() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

impl Default for Maxima {
    fn default() -> Self {
        Self {
            memory_bytes: 16 << 30,
            cpus: host_cpus(),
            pids_limit: 8192,
            cmd_timeout_secs: 1800,
            max_turns: 1024,
            context_tokens: 1 << 20,
            observation_cap_bytes: 1 << 20,
            wall_clock_secs: 4 * 3600,
            labels: 16,
            label_bytes: 256,
            prompt_messages: 64,
            prompt_bytes: 1 << 20,
            model_json_bytes: 64 << 10,
            task_json_bytes: 1 << 20,
            page_size: 1000,
            model_max_tokens: 65536,
            prewarm: 64,
            testgen_timeout_secs: MAX_TIMEOUT_SECS,
        }
    }
}

/// How Grade (and grade-on-submit) grade.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradingSettings {
    /// Network of grading containers: `bridge` (fidelity with published numbers, the default) or `none`.
    pub network_mode: String,
    /// Time limit of the eval script, seconds. Default 1800.
    pub test_timeout_secs: u64,
    /// Grade-on-submit in the episode's own container (no container start; see `GradeConfig::in_place`).
    /// Default false: a fresh container.
    pub in_place: bool,
    /// Grading rules: `swebench-4.1` (default, the reference's semantics), `swebench-5` or `hardened`
    /// (reference + swe-env's anti-spoofing). A Grade call may ask for other rules; grade-on-submit and
    /// RunEpisode use these.
    pub rules: RuleSet,
    /// Time limit of one run of a generated test (CheckTest without `timeout_secs`), seconds. Default 60.
    pub testgen_timeout_secs: u64,
}

impl Default for GradingSettings {
    fn default() -> Self {
        let grade = GradeConfig::default();
        Self {
            rules: grade.rule_set(),
            network_mode: grade.network_mode,
            test_timeout_secs: grade.test_timeout.as_secs(),
            in_place: grade.in_place,
            testgen_timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }
}

/// The configuration could not be read or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read, is not valid YAML for this schema or has unknown keys (file, line and column
    /// named).
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A value is out of range.
    #[error("config field `{field}`: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The token file could not be read or is empty.
    #[error("token file {path}: {reason}")]
    Token {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ServerConfig {
    /// Reads a YAML config file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ConfigError> {
        Ok(yaml::load_file(path, KIND)?)
    }

    /// Parses YAML text (an empty document is the default configuration).
    pub fn from_yaml_str(text: &str) -> Result<Self, ConfigError> {
        Ok(yaml::parse_str(text, KIND, yaml::INLINE)?)
    }

    /// Checks ranges that would make the server unusable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.listen.is_none() && self.unix_socket.is_none() {
            return invalid("listen", "set a TCP address or a unix socket");
        }
        if let Some(address) = &self.metrics_listen {
            if !is_host_port(address) {
                return invalid(
                    "metrics_listen",
                    "not a `host:port` address (e.g. 127.0.0.1:9464; port 0 picks a free port)",
                );
            }
        }
        if let Some(node_id) = &self.node_id {
            if let Err(reason) = check_node_id(node_id) {
                return Err(ConfigError::Invalid {
                    field: "node_id",
                    reason: format!("`{node_id}`: {reason}"),
                });
            }
        }
        if self.max_episodes == 0 {
            return invalid("max_episodes", "must be at least 1");
        }
        if self.max_concurrent_starts == 0 {
            return invalid("max_concurrent_starts", "must be at least 1");
        }
        if self.idle_ttl_secs == 0 {
            return invalid("idle_ttl_secs", "must be at least 1");
        }
        if self.episode.max_turns == 0 {
            return invalid("episode.max_turns", "must be at least 1");
        }
        if !(self.episode.cpus.is_finite() && self.episode.cpus > 0.0) {
            return invalid("episode.cpus", "must be a positive number");
        }
        if self.model_api_key_env.is_some() {
            return invalid(
                "model_api_key_env",
                "was removed (a key sent to any client URL could be stolen); list the endpoints under \
                 `model_endpoints` with an `api_key_env` each",
            );
        }
        self.validate_maxima()?;
        self.memory.validate()?;
        self.pool
            .check()
            .map_err(|(field, reason)| ConfigError::Invalid { field, reason })?;
        if self.pool.max_containers > 0 && self.maxima.prewarm as usize > self.pool.max_containers {
            return Err(ConfigError::Invalid {
                field: "maxima.prewarm",
                reason: format!(
                    "{} is above `pool.max_containers` ({}): a Prewarm that large could never be ready; lower the \
                     maximum or raise the budget",
                    self.maxima.prewarm, self.pool.max_containers
                ),
            });
        }
        for (name, endpoint) in &self.model_endpoints {
            let url = endpoint.base_url.trim();
            if name.is_empty() {
                return invalid("model_endpoints", "an endpoint name is empty");
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid {
                    field: "model_endpoints.base_url",
                    reason: format!("endpoint `{name}`: an http:// or https:// URL is required"),
                });
            }
            if let Some(env) = &endpoint.api_key_env {
                if std::env::var(env).map_or(true, |key| key.is_empty()) {
                    return Err(ConfigError::Invalid {
                        field: "model_endpoints.api_key_env",
                        reason: format!(
                            "endpoint `{name}`: environment variable `{env}` is not set (export the key in it, \
                             or remove `api_key_env` for an endpoint without a key)"
                        ),
                    });
                }
            }
            if endpoint.concurrency == 0 {
                return Err(ConfigError::Invalid {
                    field: "model_endpoints.concurrency",
                    reason: format!("endpoint `{name}`: must be at least 1"),
                });
            }
        }
        Ok(())
    }

    /// Every maximum is usable and no default is above its maximum.
    fn validate_maxima(&self) -> Result<(), ConfigError> {
        let (m, e) = (&self.maxima, &self.episode);
        if !(m.cpus.is_finite() && m.cpus >= 0.01) {
            return Err(ConfigError::Invalid {
                field: "maxima.cpus",
                reason: "must be a number of at least 0.01".to_owned(),
            });
        }
        let checks: [(&'static str, f64, f64); 7] = [
            ("memory_bytes", e.memory_bytes as f64, m.memory_bytes as f64),
            ("cpus", e.cpus, m.cpus),
            ("pids_limit", e.pids_limit as f64, m.pids_limit as f64),
            (
                "cmd_timeout_secs",
                e.cmd_timeout_secs as f64,
                m.cmd_timeout_secs as f64,
            ),
            ("max_turns", f64::from(e.max_turns), f64::from(m.max_turns)),
            (
                "context_tokens",
                e.context_tokens as f64,
                m.context_tokens as f64,
            ),
            (
                "wall_clock_secs",
                e.wall_clock_secs as f64,
                m.wall_clock_secs as f64,
            ),
        ];
        for (name, default, maximum) in checks {
            if default > maximum {
                return Err(ConfigError::Invalid {
                    field: "maxima",
                    reason: format!(
                        "`episode.{name}` ({default}) is above `maxima.{name}` ({maximum}); raise the maximum or \
                         lower the default"
                    ),
                });
            }
        }
        if m.testgen_timeout_secs == 0 || m.testgen_timeout_secs > MAX_TIMEOUT_SECS {
            return Err(ConfigError::Invalid {
                field: "maxima.testgen_timeout_secs",
                reason: format!(
                    "{} is not between 1 and {MAX_TIMEOUT_SECS} seconds",
                    m.testgen_timeout_secs
                ),
            });
        }
        let testgen_default = self.grading.testgen_timeout_secs;
        if testgen_default == 0 || testgen_default > m.testgen_timeout_secs {
            return Err(ConfigError::Invalid {
                field: "grading.testgen_timeout_secs",
                reason: format!(
                    "{testgen_default} is not between 1 and `maxima.testgen_timeout_secs` ({}); raise the maximum \
                     or lower the default",
                    m.testgen_timeout_secs
                ),
            });
        }
        if m.page_size == 0 {
            return Err(ConfigError::Invalid {
                field: "maxima.page_size",
                reason: "must be at least 1".to_owned(),
            });
        }
        Ok(())
    }

    /// The bearer token: the token file's first line, else `SWE_ENV_TOKEN`; `None` when neither is set.
    pub fn resolve_token(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.token_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Token {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let token = text.lines().next().unwrap_or("").trim().to_owned();
            if token.is_empty() {
                return Err(ConfigError::Token {
                    path: path.clone(),
                    reason: "empty".to_owned(),
                });
            }
            return Ok(Some(token));
        }
        Ok(std::env::var(TOKEN_ENV_VAR)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty()))
    }

    /// Idle time after which the reaper ends an episode.
    pub fn idle_ttl(&self) -> Duration {
        Duration::from_secs(self.idle_ttl_secs)
    }

    /// Grace period of a shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// Period of the background reconcile (at least 1 s).
    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_secs(self.reconcile_interval_secs.max(1))
    }

    /// The limits of a CheckTest run of `timeout_secs` (0: the configured default), refused above the maximum.
    pub fn testgen_limits(&self, timeout_secs: u32) -> Result<TestgenLimits, ServiceError> {
        let maximum = self.maxima.testgen_timeout_secs;
        let secs = match u64::from(timeout_secs) {
            0 => self.grading.testgen_timeout_secs,
            secs if secs > maximum => {
                return Err(ServiceError::invalid(
                    "timeout_secs",
                    format!(
                        "{secs} s is above the server maximum {maximum} s (server config \
                         `maxima.testgen_timeout_secs`)"
                    ),
                ))
            }
            secs => secs,
        };
        Ok(TestgenLimits {
            timeout: Duration::from_secs(secs),
            max_script_bytes: MAX_SCRIPT_BYTES,
        })
    }

    /// The grading configuration derived from these settings.
    pub fn grade_config(&self) -> GradeConfig {
        GradeConfig {
            network_mode: self.grading.network_mode.clone(),
            test_timeout: Duration::from_secs(self.grading.test_timeout_secs),
            image_template: self.episode.image_template.clone(),
            in_place: self.grading.in_place,
            ..GradeConfig::default()
        }
        .with_rules(self.grading.rules)
    }
}

/// A `host:port` a TCP listener can be given: a socket address, or a host name (no spaces) and a port number.
fn is_host_port(address: &str) -> bool {
    if address.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    match address.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains(|c: char| c.is_whitespace() || c == ':' || c == '/')
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

/// Longest node id (a DNS label).
pub const MAX_NODE_ID_BYTES: usize = 63;

/// Checks a node id: a DNS label (1 to 63 of `[a-z0-9-]`, not starting or ending with `-`), so it can name a
/// Kubernetes pod and stays unambiguous before the `.` of an episode id.
pub fn check_node_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_NODE_ID_BYTES {
        return Err("must be 1 to 63 characters (a DNS label)");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lower-case letters, digits and `-` are allowed (a DNS label)");
    }
    if id.starts_with('-') || id.ends_with('-') {
        return Err("must not start or end with `-` (a DNS label)");
    }
    Ok(())
}

/// The default node id of a host: the host name lower-cased, every run of characters outside `[a-z0-9]` one `-`,
/// trimmed of `-`, cut to 63 characters; `node` when nothing is left.
pub fn node_id_from_host(host: &str) -> String {
    let mut id = String::with_capacity(host.len());
    for c in host.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('-') {
            id.push('-');
        }
    }
    id.truncate(MAX_NODE_ID_BYTES);
    let id = id.trim_end_matches('-');
    if id.is_empty() {
        "node".to_owned()
    } else {
        id.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn episode_durability_is_per_step_by_default_and_a_bad_value_names_the_choices() {
        assert_eq!(
            ServerConfig::default().episode.durability,
            Durability::PerStep
        );
        let config = ServerConfig::from_yaml_str("episode:\n  durability: batched\n").unwrap();
        assert_eq!(config.episode.durability, Durability::Batched);
        let error = ServerConfig::from_yaml_str("episode:\n  durability: fast\n")
            .unwrap_err()
            .to_string();
        for expected in ["durability", "per-step", "batched", "os"] {
            assert!(error.contains(expected), "{expected} not in: {error}");
        }
    }

    #[test]
    fn yaml_overrides_defaults_and_refuses_unknown_fields() {
        let config = ServerConfig::from_yaml_str(
            "listen: 0.0.0.0:9000\nmax_episodes: 3\ntasks: [a.jsonl, b.jsonl]\nepisode:\n  max_turns: 7\n  anti_leak: off\n",
        )
        .unwrap();
        assert_eq!(config.listen.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(config.max_episodes, 3);
        assert_eq!(config.tasks.len(), 2);
        assert_eq!(config.episode.max_turns, 7);
        assert_eq!(config.episode.anti_leak, AntiLeak::Off);
        assert_eq!(config.max_concurrent_starts, 8);
        assert_eq!(
            ServerConfig::from_yaml_str("").unwrap(),
            ServerConfig::default()
        );
        let error = ServerConfig::from_yaml_str("max_episods: 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_episods"), "{error}");
    }

    #[test]
    fn validation_names_the_field() {
        let config = ServerConfig {
            max_episodes: 0,
            ..ServerConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("max_episodes"), "{error}");
        assert!(ServerConfig::default().validate().is_ok());
    }

    #[test]
    fn maxima_and_endpoints_parse_and_defaults_must_fit_under_maxima() {
        let config = ServerConfig::from_yaml_str(
            "maxima:\n  memory_bytes: 8589934592\n  page_size: 10\nmodel_endpoints:\n  local:\n    base_url: http://127.0.0.1:8000/v1\n    models: [m]\n",
        )
        .unwrap();
        assert_eq!(config.maxima.memory_bytes, 8 << 30);
        assert_eq!(config.maxima.page_size, 10);
        assert_eq!(config.maxima.cpus, host_cpus());
        let local = &config.model_endpoints["local"];
        assert_eq!(local.models, ["m"]);
        assert_eq!(local.concurrency, 64);
        assert_eq!(local.api_key_env, None);
        assert!(!config.allow_client_base_urls);
        config.validate().unwrap();
        assert!(ServerConfig::default().episode.cpus <= ServerConfig::default().maxima.cpus);

        let too_low = ServerConfig {
            maxima: Maxima {
                pids_limit: 100,
                ..Maxima::default()
            },
            ..ServerConfig::default()
        };
        let error = too_low.validate().unwrap_err().to_string();
        assert!(error.contains("maxima.pids_limit"), "{error}");
        assert!(error.contains("episode.pids_limit"), "{error}");

        let old_key = ServerConfig {
            model_api_key_env: Some("OPENAI_API_KEY".into()),
            ..ServerConfig::default()
        };
        let error = old_key.validate().unwrap_err().to_string();
        assert!(error.contains("model_endpoints"), "{error}");
        let error = ServerConfig::from_yaml_str("maxima:\n  memory: 1\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("memory"), "{error}");
    }

    #[test]
    fn pool_section_parses_and_inconsistent_pools_are_refused() {
        let config = ServerConfig::from_yaml_str(
            "pool:\n  max_containers: 8\n  auto:\n    enabled: true\n    size: 3\nmaxima:\n  prewarm: 8\n",
        )
        .unwrap();
        assert_eq!(config.pool.max_containers, 8);
        assert_eq!(config.pool.auto.size, 3);
        assert_eq!(config.pool.auto.keep_secs, 120);
        config.validate().unwrap();
        let error = ServerConfig::from_yaml_str("pool:\n  max_containers: 8\n")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("maxima.prewarm") && error.contains("pool.max_containers"),
            "{error}"
        );
        let error = ServerConfig::from_yaml_str(
            "pool:\n  max_containers: 1\n  auto:\n    enabled: true\nmaxima:\n  prewarm: 1\n",
        )
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
        assert!(error.contains("pool.auto.size"), "{error}");
        assert_eq!(config.pool.max_keys, 256);
        for (yaml, field) in [
            (
                "pool:\n  max_keys: 0\nmaxima:\n  prewarm: 8\n",
                "pool.max_keys",
            ),
            (
                "pool:\n  max_keys: 4\n  auto:\n    enabled: true\nmaxima:\n  prewarm: 8\n",
                "pool.auto.max_keys",
            ),
        ] {
            let error = ServerConfig::from_yaml_str(yaml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{yaml}: {error}");
        }
        let off = ServerConfig::from_yaml_str("pool:\n  max_containers: 0\n").unwrap();
        off.validate().unwrap();
        let error = ServerConfig::from_yaml_str("pool:\n  size: 3\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("size"), "{error}");
    }

    #[test]
    fn testgen_timeouts_default_parse_and_are_bounded() {
        let config = ServerConfig::default();
        assert_eq!(config.grading.testgen_timeout_secs, 60);
        assert_eq!(config.maxima.testgen_timeout_secs, 3600);
        assert_eq!(
            config.testgen_limits(0).unwrap().timeout,
            Duration::from_secs(60)
        );
        assert_eq!(
            config.testgen_limits(3600).unwrap().timeout,
            Duration::from_secs(3600)
        );
        let error = config.testgen_limits(3601).unwrap_err().to_string();
        assert!(
            error.contains("`timeout_secs`") && error.contains("3600"),
            "{error}"
        );

        let config = ServerConfig::from_yaml_str(
            "grading:\n  testgen_timeout_secs: 5\nmaxima:\n  testgen_timeout_secs: 10\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.testgen_limits(0).unwrap().timeout,
            Duration::from_secs(5)
        );
        assert!(config.testgen_limits(11).is_err());
        for (yaml, field) in [
            (
                "grading:\n  testgen_timeout_secs: 0\n",
                "grading.testgen_timeout_secs",
            ),
            (
                "grading:\n  testgen_timeout_secs: 20\nmaxima:\n  testgen_timeout_secs: 10\n",
                "grading.testgen_timeout_secs",
            ),
            (
                "maxima:\n  testgen_timeout_secs: 3601\n",
                "maxima.testgen_timeout_secs",
            ),
        ] {
            let error = ServerConfig::from_yaml_str(yaml)
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(error.contains(field), "{yaml}: {error}");
        }
        let error = ServerConfig::from_yaml_str("grading:\n  testgen_timeout: 5\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("testgen_timeout"), "{error}");
    }

    #[test]
    fn token_file_first_line_is_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        let config = ServerConfig {
            token_file: Some(path.clone()),
            ..ServerConfig::default()
        };
        assert_eq!(config.resolve_token().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&path, "\n").unwrap();
        assert!(config.resolve_token().is_err());
    }

    #[test]
    fn node_ids_are_dns_labels_and_the_host_default_is_one() {
        for good in ["n1", "swe-env-0", "a", &"x".repeat(63)] {
            assert_eq!(check_node_id(good), Ok(()), "{good}");
        }
        for bad in ["", "-a", "a-", "A1", "a.b", "a_b", &"x".repeat(64)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            node_id_from_host("Build_Host.example.org"),
            "build-host-example-org"
        );
        assert_eq!(node_id_from_host("--"), "node");
        assert_eq!(node_id_from_host(&"ab.".repeat(40)).len(), 62);
        for host in ["Build_Host.example.org", "--", "x", &"ab.".repeat(40)] {
            assert_eq!(check_node_id(&node_id_from_host(host)), Ok(()), "{host}");
        }
        let config = ServerConfig {
            node_id: Some("Bad_Id".into()),
            ..ServerConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("node_id"), "{error}");
    }
}
