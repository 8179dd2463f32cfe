//! Server knobs: where to listen, which tasks to serve, auth, admission limits, timeouts and episode defaults.
//! Read from a YAML file (every field optional, unknown fields refused), then overridden by CLI flags. Defaults
//! are defined once, in [`ServerConfig::default`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::episode::{AntiLeak, EpisodeConfig};
use crate::grade::{GradeConfig, RuleSet};
use crate::sandbox::SandboxConfig;
use crate::task::OFFICIAL_IMAGE_TEMPLATE;

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
    /// Dataset files (JSONL / JSON / parquet, SWE-bench format) whose tasks the server offers. Default none.
    pub tasks: Vec<PathBuf>,
    /// File holding the bearer token clients must send. Default none: the token comes from `SWE_ENV_TOKEN`, and
    /// with neither, auth is off.
    pub token_file: Option<PathBuf>,
    /// Maximum live episodes (each holds a container). Default 256.
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
    /// Ended episodes remembered for ListEpisodes / CloseEpisode (their trajectories stay on disk). Default 10000.
    pub max_ended_remembered: usize,
    /// Environment variable holding the API key RunEpisode sends to model endpoints. Default none (no key).
    pub model_api_key_env: Option<String>,
    /// Episode defaults and sandbox limits.
    pub episode: EpisodeDefaults,
    /// Grading settings.
    pub grading: GradingSettings,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Some("127.0.0.1:50051".to_owned()),
            unix_socket: None,
            tasks: Vec::new(),
            token_file: None,
            max_episodes: 256,
            max_concurrent_starts: 8,
            start_queue_ms: 10_000,
            idle_ttl_secs: 1800,
            trajectory_dir: PathBuf::from("runs/serve"),
            shutdown_grace_secs: 30,
            max_ended_remembered: 10_000,
            model_api_key_env: None,
            episode: EpisodeDefaults::default(),
            grading: GradingSettings::default(),
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
            cpus: sandbox.nano_cpus as f64 / 1e9,
            pids_limit: sandbox.pids_limit,
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
}

impl Default for GradingSettings {
    fn default() -> Self {
        let grade = GradeConfig::default();
        Self {
            rules: grade.rule_set(),
            network_mode: grade.network_mode,
            test_timeout_secs: grade.test_timeout.as_secs(),
            in_place: grade.in_place,
        }
    }
}

/// The configuration could not be read or is inconsistent.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_yaml_str(&text).map_err(|detail| ConfigError::Parse {
            path: path.to_owned(),
            detail,
        })
    }

    /// Parses YAML text (an empty document is the default configuration).
    pub fn from_yaml_str(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let error = ServerConfig::from_yaml_str("max_episods: 3\n").unwrap_err();
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
}
