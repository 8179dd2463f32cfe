//! One configuration file for `run-benchmark`, `run-episode`, `harvest` and `serve`: every knob in one YAML file,
//! command-line flags override it, the effective configuration is printed by `--print-config` and stored in the run
//! manifest.
//!
//! The file has top-level sections, every key optional, unknown keys refused with file, line and column (the one
//! YAML loader, [`swe_env_model::yaml`]):
//!
//! - `model`: endpoint(s), model name, API key variable, request timeout, attempts;
//! - `agent`: the model agent config ([`ModelAgentConfig`]: mode, sampling, prompts, …);
//! - `budgets`: `max_turns`, `context_tokens`, `episode_timeout` (seconds);
//! - `sandbox`: container limits, bash command timeout, observation cap, anti-leak level;
//! - `grading`: `rules`, `network`, `test_timeout` (seconds);
//! - `benchmark`: `run-benchmark` only (workers, output directory, image template, pull policy, …);
//! - `harvest`: `harvest` only ([`HarvestConfig`]);
//! - `serve`: `serve` only ([`ServerConfig`]).
//!
//! Each command reads the shared sections and its own; another command's section is accepted and ignored, so one
//! file serves all four. Keys are the flag names with `_` for `-`. Precedence: built-in defaults < the file's
//! shared sections < the command's own section < flags. For compatibility, `serve --config` and `harvest --config`
//! given a file with no section name of the unified layout (except those that are also keys of their own layout:
//! [`HARVEST_OWN_KEYS`], [`SERVE_OWN_KEYS`]) read the whole file as their own section.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use swe_env_model::yaml::{self, YamlError};

use crate::agent::ModelAgentConfig;
use crate::benchmark::{GradingNetwork, PullPolicy};
use crate::grade::RuleSet;
use crate::harvest::config::HarvestConfig;
pub use crate::harvest::config::SandboxSection;
use crate::server::ServerConfig;

/// What the file is called in errors.
const KIND: &str = "config file";

/// Default context window when neither a flag, the config file nor the model endpoint gives one.
pub const DEFAULT_CONTEXT_TOKENS: u64 = 131_072;

/// The unified file's top-level sections.
pub const SECTIONS: [&str; 8] = [
    "model",
    "agent",
    "budgets",
    "sandbox",
    "grading",
    "benchmark",
    "harvest",
    "serve",
];

/// Section names that are also top-level keys of `harvest`'s own layout (`model: NAME`, `agent: {…}`,
/// `sandbox: {…}`); `model` as a mapping is the unified file's.
pub const HARVEST_OWN_KEYS: [&str; 3] = ["model", "agent", "sandbox"];

/// Section names that are also top-level keys of `serve`'s own layout (`grading: {network_mode, …}`).
pub const SERVE_OWN_KEYS: [&str; 1] = ["grading"];

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfigFile {
    /// How to reach the model.
    #[serde(skip_serializing_if = "ModelSection::is_empty")]
    pub model: ModelSection,
    /// The model agent config (the same keys as an `--agent-config` file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<ModelAgentConfig>,
    /// Episode budgets.
    pub budgets: BudgetsSection,
    /// Container and tool limits.
    pub sandbox: SandboxSection,
    /// Grading settings.
    pub grading: GradingSection,
    /// `run-benchmark` only.
    #[serde(skip_serializing_if = "BenchmarkSection::is_empty")]
    pub benchmark: BenchmarkSection,
    /// `harvest` only (read by `harvest`; other commands ignore it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub harvest: Option<Value>,
    /// `serve` only (read by `serve`; other commands ignore it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve: Option<Value>,
}

/// `model:` — how to reach and call the model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// Base URLs of OpenAI-compatible endpoints, ending in /v1 (round-robin) (flag `--model-url`, repeatable).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Served model name (flag `--model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Name of the environment variable holding the API key; the key itself is never written in a config.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// Time allowed for one model request, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_timeout: Option<u64>,
    /// Most attempts per model call (1 = no retry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
}

impl ModelSection {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `budgets:` — what one episode may use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetsSection {
    /// Maximum agent turns per episode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// Context window in tokens (the prompt tells the model this number; the loop stops at it). Unset: the served
    /// window the endpoint reports, else 131072.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context_tokens: Option<u64>,
    /// Wall-clock limit of one episode, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub episode_timeout: Option<u64>,
}

/// `grading:` — how submissions are graded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradingSection {
    /// Grading rules: `swebench-4.1`, `swebench-5` or `hardened`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<RuleSet>,
    /// Network of grading containers: `bridge`, `none` or `host` (flag `--grading-network`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<GradingNetwork>,
    /// Time limit of the tests at grading, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_timeout: Option<u64>,
}

/// `benchmark:` — `run-benchmark` only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BenchmarkSection {
    /// Instances run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Where runs are written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<PathBuf>,
    /// Image name template for rows without an `image` field.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_template: Option<String>,
    /// When to pull images: `missing`, `always`, `never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pull: Option<PullPolicy>,
    /// Only these instance ids.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instance_ids: Vec<String>,
}

impl BenchmarkSection {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Why a configuration file is unusable. All are usage errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read, is not YAML, or has an unknown key (file, line and column named).
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A value is out of range or two settings conflict.
    #[error("invalid config {origin}: {detail}")]
    Invalid {
        /// The file.
        origin: String,
        /// What is wrong and how to fix it.
        detail: String,
    },
}

/// A loaded configuration file: its parsed shared sections and its text (re-read for a command's own section).
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// The file (`None`: no `--config`, every value a default).
    pub path: Option<PathBuf>,
    /// The parsed file.
    pub file: ConfigFile,
    /// Whether the file is the unified layout (else a file holding only one command's section).
    pub unified: bool,
    text: String,
}

impl Loaded {
    /// Reads `path` as the unified file (any section); `None` gives the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|error| YamlError::Read {
            kind: KIND,
            path: path.to_owned(),
            error,
        })?;
        let origin = path.display().to_string();
        let file: ConfigFile = yaml::parse_str(&text, KIND, &origin)?;
        file.sandbox
            .validate()
            .map_err(|detail| ConfigError::Invalid {
                origin: origin.clone(),
                detail,
            })?;
        Ok(Self {
            path: Some(path.to_owned()),
            file,
            unified: true,
            text,
        })
    }

    /// Reads `path` for `harvest` or `serve`: the unified file, or a file holding only that command's section (the
    /// layout those commands read before the unified file existed): one whose top-level keys include no section
    /// name other than `own_keys` (the section names that are also keys of the command's own layout, e.g.
    /// [`SERVE_OWN_KEYS`]), and no `model` mapping.
    pub fn load_with_section(path: Option<&Path>, own_keys: &[&str]) -> Result<Self, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|error| YamlError::Read {
            kind: KIND,
            path: path.to_owned(),
            error,
        })?;
        let origin = path.display().to_string();
        let raw: Value = yaml::parse_str(&text, KIND, &origin)?;
        let unified = match &raw {
            Value::Object(map) => {
                SECTIONS
                    .iter()
                    .any(|key| !own_keys.contains(key) && map.contains_key(*key))
                    || matches!(map.get("model"), Some(Value::Object(_)))
            }
            _ => true,
        };
        if unified {
            return Self::load(Some(path));
        }
        Ok(Self {
            path: Some(path.to_owned()),
            file: ConfigFile::default(),
            unified: false,
            text,
        })
    }

    fn origin(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| yaml::INLINE.to_owned(), |p| p.display().to_string())
    }

    /// The harvest configuration: built-in defaults, the shared sections, then the `harvest` section (or the whole
    /// file when it holds only that section). Flags are applied by the caller.
    pub fn harvest(&self) -> Result<HarvestConfig, ConfigError> {
        let origin = self.origin();
        if self.path.is_none() {
            return Ok(HarvestConfig::default());
        }
        if !self.unified {
            return Ok(yaml::parse_str(&self.text, "harvest config", &origin)?);
        }
        // Typed once for errors with line and column inside the section.
        let _: HarvestView = yaml::parse_str(&self.text, KIND, &origin)?;
        let file = &self.file;
        let mut shared = Map::new();
        let mut put = |key: &str, value: Value| {
            shared.insert(key.to_owned(), value);
        };
        if !file.model.urls.is_empty() {
            let endpoints: Vec<Value> = file
                .model
                .urls
                .iter()
                .map(|url| serde_json::json!({ "url": url }))
                .collect();
            put("endpoints", Value::Array(endpoints));
        }
        if let Some(name) = &file.model.name {
            put("model", Value::from(name.clone()));
        }
        if let Some(env) = &file.model.api_key_env {
            put("api_key_env", Value::from(env.clone()));
        }
        if let Some(secs) = file.model.request_timeout {
            put("request_timeout", Value::from(secs));
        }
        if let Some(n) = file.model.max_attempts {
            put("max_attempts", Value::from(n));
        }
        if let Some(agent) = &file.agent {
            put("agent", to_value(agent)?);
        }
        if !file.sandbox.is_empty() {
            put("sandbox", to_value(&file.sandbox)?);
        }
        if let Some(n) = file.budgets.max_turns {
            put("max_turns", Value::from(n));
        }
        if let Some(n) = file.budgets.context_tokens {
            put("context_tokens", Value::from(n));
        }
        if let Some(secs) = file.budgets.episode_timeout {
            put("episode_timeout", Value::from(secs));
        }
        if let Some(rules) = file.grading.rules {
            put("rules", to_value(&rules)?);
        }
        if let Some(network) = file.grading.network {
            put("grading_network", to_value(&network)?);
        }
        if let Some(secs) = file.grading.test_timeout {
            put("test_timeout", Value::from(secs));
        }
        let mut merged = Value::Object(shared);
        if let Some(section) = &file.harvest {
            if let Value::Object(own) = section {
                // An own `agent_config` file replaces a shared inline `agent`.
                if own.contains_key("agent_config") {
                    if let Value::Object(map) = &mut merged {
                        map.remove("agent");
                    }
                }
            }
            merge(&mut merged, section.clone());
        }
        serde_json::from_value(merged).map_err(|error| ConfigError::Invalid {
            origin,
            detail: format!("harvest section with the shared sections: {error}"),
        })
    }

    /// The server configuration as a JSON object: the shared `budgets`, `sandbox` and `grading` sections mapped to
    /// the server's `episode` and `grading` keys, then the `serve` section (or the whole file when it holds only
    /// that section). Flags are applied by the caller, then [`server_config`] makes it typed. `model`, `agent`,
    /// `benchmark` and `sandbox.observation_cap_bytes` have no server-wide counterpart (RunEpisode and CreateEpisode
    /// requests carry them) and are ignored.
    pub fn serve_value(&self) -> Result<Value, ConfigError> {
        let origin = self.origin();
        if self.path.is_none() {
            return Ok(Value::Object(Map::new()));
        }
        if !self.unified {
            let _: ServerConfig = yaml::parse_str(&self.text, "server config", &origin)?;
            let raw: Value = yaml::parse_str(&self.text, "server config", &origin)?;
            return Ok(match raw {
                Value::Null => Value::Object(Map::new()),
                other => other,
            });
        }
        let _: ServeView = yaml::parse_str(&self.text, KIND, &origin)?;
        let file = &self.file;
        let mut episode = Map::new();
        let mut grading = Map::new();
        let budgets = &file.budgets;
        let sandbox = &file.sandbox;
        let set = |map: &mut Map<String, Value>, key: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(key.to_owned(), value);
            }
        };
        set(
            &mut episode,
            "max_turns",
            budgets.max_turns.map(Value::from),
        );
        set(
            &mut episode,
            "context_tokens",
            budgets.context_tokens.map(Value::from),
        );
        set(
            &mut episode,
            "wall_clock_secs",
            budgets.episode_timeout.map(Value::from),
        );
        set(
            &mut episode,
            "cmd_timeout_secs",
            sandbox.cmd_timeout.map(Value::from),
        );
        set(
            &mut episode,
            "anti_leak",
            sandbox.anti_leak.map(|a| Value::from(a.as_str())),
        );
        set(
            &mut episode,
            "network_mode",
            sandbox.network.clone().map(Value::from),
        );
        set(
            &mut episode,
            "memory_bytes",
            sandbox.memory_bytes.map(Value::from),
        );
        set(&mut episode, "cpus", sandbox.cpus.map(Value::from));
        set(
            &mut episode,
            "pids_limit",
            sandbox.pids_limit.map(Value::from),
        );
        set(
            &mut grading,
            "rules",
            file.grading.rules.map(|r| to_value(&r)).transpose()?,
        );
        set(
            &mut grading,
            "network_mode",
            file.grading
                .network
                .map(|n| Value::from(n.as_docker_mode())),
        );
        set(
            &mut grading,
            "test_timeout_secs",
            file.grading.test_timeout.map(Value::from),
        );
        // `sandbox.observation_cap_bytes` has no server-wide default (CreateEpisode sets it per request): ignored.
        let mut merged = Map::new();
        if !episode.is_empty() {
            merged.insert("episode".into(), Value::Object(episode));
        }
        if !grading.is_empty() {
            merged.insert("grading".into(), Value::Object(grading));
        }
        let mut merged = Value::Object(merged);
        if let Some(section) = &file.serve {
            merge(&mut merged, section.clone());
        }
        Ok(merged)
    }
}

/// The typed server configuration of a [`Loaded::serve_value`] (flags applied).
pub fn server_config(value: Value, origin: &str) -> Result<ServerConfig, ConfigError> {
    serde_json::from_value(value).map_err(|error| ConfigError::Invalid {
        origin: origin.to_owned(),
        detail: format!("serve settings: {error}"),
    })
}

/// Overlays `over` on `base`: objects key by key (recursively), anything else replaced.
pub fn merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

fn to_value<T: Serialize>(value: &T) -> Result<Value, ConfigError> {
    serde_json::to_value(value).map_err(|error| ConfigError::Invalid {
        origin: yaml::INLINE.to_owned(),
        detail: error.to_string(),
    })
}

/// The file seen by `harvest`: its section typed (errors with line and column), the rest ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HarvestView {
    #[allow(dead_code)]
    harvest: HarvestConfig,
}

/// The file seen by `serve`: its section typed (errors with line and column), the rest ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ServeView {
    #[allow(dead_code)]
    serve: ServerConfig,
}

/// Where the context window came from (recorded in the run manifest and the episode's start record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextSource {
    /// `--context-tokens`.
    Flag,
    /// `budgets.context_tokens` of the config file.
    Config,
    /// The model endpoint's served window (`max_model_len` of GET /models).
    Endpoint,
    /// Neither: [`DEFAULT_CONTEXT_TOKENS`].
    Default,
}

impl ContextSource {
    /// `flag`, `config`, `endpoint` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Flag => "flag",
            Self::Config => "config",
            Self::Endpoint => "endpoint",
            Self::Default => "default",
        }
    }
}

/// The context window: the flag, else the config file, else the served window, else the default; with a warning
/// text when a configured value is above what the endpoint serves.
pub fn context_window(
    flag: Option<u64>,
    config: Option<u64>,
    served: Option<u64>,
) -> (u64, ContextSource, Option<String>) {
    let (tokens, source) = match (flag, config, served) {
        (Some(n), _, _) => (n, ContextSource::Flag),
        (None, Some(n), _) => (n, ContextSource::Config),
        (None, None, Some(n)) => (n, ContextSource::Endpoint),
        (None, None, None) => (DEFAULT_CONTEXT_TOKENS, ContextSource::Default),
    };
    let warning = served.filter(|served| tokens > *served).map(|served| {
        format!(
            "the context window is set to {tokens} tokens ({}) but the model endpoint serves {served}: requests \
             past {served} tokens will be refused; lower --context-tokens / budgets.context_tokens to {served}",
            source.as_str()
        )
    });
    (tokens, source, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_window_precedence_and_warning() {
        assert_eq!(context_window(Some(1000), Some(2000), Some(8192)).0, 1000);
        let (tokens, source, warning) = context_window(None, None, Some(8192));
        assert_eq!(
            (tokens, source, warning),
            (8192, ContextSource::Endpoint, None)
        );
        let (tokens, source, warning) = context_window(None, Some(16384), Some(8192));
        assert_eq!((tokens, source), (16384, ContextSource::Config));
        let warning = warning.unwrap();
        assert!(
            warning.contains("16384") && warning.contains("8192"),
            "{warning}"
        );
        assert_eq!(
            context_window(None, None, None),
            (DEFAULT_CONTEXT_TOKENS, ContextSource::Default, None)
        );
    }

    #[test]
    fn merge_overlays_objects_recursively() {
        let mut base = serde_json::json!({"episode": {"max_turns": 5, "cpus": 1.0}, "listen": "a"});
        merge(
            &mut base,
            serde_json::json!({"episode": {"max_turns": 7}, "tasks": ["x"]}),
        );
        assert_eq!(
            base,
            serde_json::json!({"episode": {"max_turns": 7, "cpus": 1.0}, "listen": "a", "tasks": ["x"]})
        );
    }
}
