//! `ModelAgentConfig`: how the model agent talks to its endpoint (API mode, sampling, prompts) and when it gives
//! up on a model (format errors), loadable from YAML; and the episode's opening prompt built from it.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use swe_env_grading::dataset::Instance;
use swe_env_grading::specs::SWE_BENCH_REPO_DIR;
use swe_env_model::yaml::{self, YamlError};
use swe_env_model::{
    AgentPromptConfig, ClientConfig, PromptVariables, SamplingParams, SystemPromptInputs,
    TemplateError, ToolSpec, UserPromptInputs,
};

use super::cost::{Limits, PriceTable};
use crate::episode::{EpisodeConfig, StartInfo, ToolFormat};
use crate::trajectory::PromptMessage;

/// Default for [`ModelAgentConfig::max_consecutive_format_errors`].
pub const DEFAULT_MAX_CONSECUTIVE_FORMAT_ERRORS: u32 = 5;

/// Which OpenAI-compatible API the agent speaks, and so how tool calls and observations travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ApiMode {
    /// `/chat/completions` with native function calling (`tools`); observations go back as `tool` messages.
    /// The server must parse tool calls (vLLM: `--enable-auto-tool-choice --tool-call-parser …`).
    ChatTools,
    /// `/chat/completions` with CWM text calls (`<tool: NAME>` … `</tool>`) in the reply; observations go back
    /// as `user` messages. Works with any chat server (the default).
    #[default]
    ChatText,
    /// `/completions` of the CWM transcript rendered by us (exact special tokens, `tool: NAME` roles).
    Completions,
}

impl ApiMode {
    /// The episode's tool-call format for this mode (native calls are `json`, the others `text`); set it in
    /// [`EpisodeConfig::tool_format`] so trajectories export right.
    pub fn tool_format(self) -> ToolFormat {
        match self {
            ApiMode::ChatTools => ToolFormat::Json,
            ApiMode::ChatText | ApiMode::Completions => ToolFormat::Text,
        }
    }

    /// Parses `chat-tools`, `chat-text` or `completions` (underscores accepted), e.g. from a gRPC request.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.trim().replace('_', "-").as_str() {
            "chat-tools" => Some(ApiMode::ChatTools),
            "chat-text" => Some(ApiMode::ChatText),
            "completions" => Some(ApiMode::Completions),
            _ => None,
        }
    }

    /// `chat-tools`, `chat-text` or `completions`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiMode::ChatTools => "chat-tools",
            ApiMode::ChatText => "chat-text",
            ApiMode::Completions => "completions",
        }
    }
}

/// What the agent does once a submit has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterSubmit {
    /// The model may keep working and submit again, as the default prompts tell it; the episode ends at its
    /// first reply without a tool call (the final answer) or when a budget runs out (default; CWM semantics).
    #[default]
    KeepWorking,
    /// One more model call for the final answer; if the model calls a tool instead, the call is not run and the
    /// episode ends as submitted with no final answer.
    FinalAnswerOnly,
}

/// Knobs of the model agent loop. Every field has a documented default; YAML files may set any subset.
///
/// ```yaml
/// mode: completions
/// sampling: {temperature: 0.6, max_tokens: 8192, logprobs: 0, return_token_ids: true}
/// # logprobs: auto | off | N (default auto), return_token_ids: auto | true | false (default auto)
/// max_consecutive_format_errors: 3
/// prompts:
///   cwm_layout: {begin_of_text: ""}
///   user_template: "{{ issue }}{% if hints_text %}\n\nHints: {{ hints_text }}{% endif %}"
/// limits: {tokens: 500000, cost_usd: 2.0}
/// prices:
///   my-served-model: {input_per_mtok: 0.5, output_per_mtok: 1.5}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelAgentConfig {
    /// API mode (default [`ApiMode::ChatText`]).
    pub mode: ApiMode,
    /// Sampling sent with every call (default: all server defaults, plus logprobs and token ids asked for in
    /// `auto` mode, dropped per endpoint when it rejects them). `max_tokens` is the per-turn output cap; the loop
    /// lowers it to the context tokens left when fewer remain. In completions mode an empty `stop` becomes the
    /// layout's `stop` list. Each step's `tokens.sampling` records what was actually sent.
    pub sampling: SamplingParams,
    /// Prompt templates and the CWM layout (default: the model crate's built-in CWM-style prompts).
    pub prompts: AgentPromptConfig,
    /// Consecutive unparsable replies (format or argument errors) that end the episode with `format_errors`
    /// (default [`DEFAULT_MAX_CONSECUTIVE_FORMAT_ERRORS`], 5; at least 1).
    pub max_consecutive_format_errors: u32,
    /// What happens after a successful submit (default [`AfterSubmit::KeepWorking`]).
    pub after_submit: AfterSubmit,
    /// Per-episode token and cost limits (default: none); reaching one ends the episode with `token_limit` /
    /// `cost_limit`.
    #[serde(skip_serializing_if = "Limits::is_unlimited")]
    pub limits: Limits,
    /// USD per million tokens by served model name (default: empty, so cost is not recorded). A cost limit needs
    /// the served model's price.
    #[serde(skip_serializing_if = "PriceTable::is_empty")]
    pub prices: PriceTable,
}

impl Default for ModelAgentConfig {
    fn default() -> Self {
        ModelAgentConfig {
            mode: ApiMode::default(),
            sampling: SamplingParams::default(),
            prompts: AgentPromptConfig::default(),
            max_consecutive_format_errors: DEFAULT_MAX_CONSECUTIVE_FORMAT_ERRORS,
            after_submit: AfterSubmit::default(),
            limits: Limits::default(),
            prices: PriceTable::new(),
        }
    }
}

/// Why a model agent configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ModelAgentConfigError {
    /// The file could not be read, the YAML does not parse or has unknown keys (file, line and column named).
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A value is out of range or a template is broken.
    #[error("invalid agent config {origin}: {detail}")]
    Invalid {
        /// The file, or `(inline)`.
        origin: String,
        /// What is wrong.
        detail: String,
    },
}

/// What an agent config file is called in errors.
const KIND: &str = "agent config";

impl ModelAgentConfig {
    /// Parses YAML text (empty text = all defaults) and validates it.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ModelAgentConfigError> {
        Self::checked(yaml::parse_str(yaml, KIND, yaml::INLINE)?, yaml::INLINE)
    }

    /// Reads, parses and validates a YAML file.
    pub fn from_yaml_file(path: &Path) -> Result<Self, ModelAgentConfigError> {
        Self::checked(yaml::load_file(path, KIND)?, &path.display().to_string())
    }

    fn checked(config: Self, origin: &str) -> Result<Self, ModelAgentConfigError> {
        config
            .validate()
            .map_err(|detail| ModelAgentConfigError::Invalid {
                origin: origin.to_owned(),
                detail,
            })?;
        Ok(config)
    }

    /// Checks the ranges, the limits and prices, and every template (Jinja syntax, known variables only); the
    /// message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_consecutive_format_errors == 0 {
            return Err(
                "max_consecutive_format_errors is 0; use 1 to end at the first format error".into(),
            );
        }
        if self.sampling.max_tokens == Some(0) {
            return Err("sampling.max_tokens is 0, so the model could never answer".into());
        }
        self.limits.validate()?;
        for (model, price) in &self.prices {
            let fine = |usd: f64| usd.is_finite() && usd >= 0.0;
            if !(fine(price.input_per_mtok) && fine(price.output_per_mtok)) {
                return Err(format!(
                    "prices.{model}: input_per_mtok and output_per_mtok must be USD per million tokens, 0 or more"
                ));
            }
        }
        self.prompts.validate().map_err(|error| error.to_string())
    }

    /// Checks that a cost limit can be applied to `model` (the served model name): it needs a price. The message
    /// names the model and how to add the price.
    pub fn check_price_for(&self, model: &str) -> Result<(), String> {
        self.limits.price_for(&self.prices, model).map(|_| ())
    }

    /// What the `episode_start` record says about the model side (client settings are added by
    /// [`add_client_info`]).
    pub fn describe(&self) -> Value {
        json!({
            "api_mode": self.mode.as_str(),
            "sampling": self.sampling,
            "max_consecutive_format_errors": self.max_consecutive_format_errors,
            "after_submit": self.after_submit,
            "limits": self.limits,
            "prices": self.prices,
        })
    }
}

/// The native tools offered in chat-tools mode, from the tools crate's OpenAI schemas.
pub fn native_tool_specs() -> Vec<ToolSpec> {
    native_tool_specs_for(swe_env_tools::SubmitKind::Patch)
}

/// [`native_tool_specs`] with a submit tool of `submit` kind.
pub fn native_tool_specs_for(submit: swe_env_tools::SubmitKind) -> Vec<ToolSpec> {
    let tools = swe_env_tools::openai_tools_for(submit);
    tools
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let function = item.get("function")?;
                    Some(ToolSpec {
                        name: function.get("name")?.as_str()?.to_owned(),
                        description: function
                            .get("description")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        parameters: function.get("parameters").cloned().unwrap_or(Value::Null),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `{{ tool_specs }}` text of the system prompt: the CWM text-call specs, or a list of the native tools.
fn tool_specs_for(mode: ApiMode, episode_config: &EpisodeConfig) -> String {
    match mode {
        ApiMode::ChatText | ApiMode::Completions => {
            swe_env_tools::tool_specs_text(&episode_config.tools)
        }
        ApiMode::ChatTools => {
            let mut text = String::from(
                "You act by calling these functions through the function-calling interface, one call per reply:\n",
            );
            for spec in native_tool_specs_for(episode_config.tools.submit_kind) {
                text.push_str(&format!("\n- {}: {}", spec.name, spec.description));
            }
            text
        }
    }
}

/// The system and user messages that open an episode of `instance` under `config`: both templates see the run
/// settings, the issue and the task row's visible columns (see `swe_env_model::PromptVariables`).
pub fn opening_prompt(
    instance: &Instance,
    config: &ModelAgentConfig,
    episode_config: &EpisodeConfig,
) -> Result<(String, String), TemplateError> {
    let dataset_row = match serde_json::to_value(instance) {
        Ok(Value::Object(row)) => row,
        _ => serde_json::Map::new(),
    };
    config.prompts.render_prompts(&PromptVariables {
        system: SystemPromptInputs {
            tool_specs: tool_specs_for(config.mode, episode_config),
            max_turns: u64::from(episode_config.max_turns),
            context_tokens: episode_config.context_tokens,
            command_timeout_secs: episode_config.tools.cmd_timeout.as_secs(),
        },
        user: UserPromptInputs {
            issue: instance.problem_statement.clone(),
            repo_root: SWE_BENCH_REPO_DIR.to_owned(),
        },
        dataset_row,
    })
}

/// The [`StartInfo`] of a model-driven episode: the rendered system and user prompts and the model settings.
/// Call it before `Episode::start`; a template error here means the prompt config is broken.
pub fn start_info_for(
    instance: &Instance,
    config: &ModelAgentConfig,
    episode_config: &EpisodeConfig,
) -> Result<StartInfo, TemplateError> {
    let (system, user) = opening_prompt(instance, config, episode_config)?;
    Ok(StartInfo {
        model: Some(config.describe()),
        prompt: vec![
            PromptMessage {
                role: "system".into(),
                content: system,
            },
            PromptMessage {
                role: "user".into(),
                content: user,
            },
        ],
    })
}

/// Adds the served model name and endpoints to a [`StartInfo`]'s model description: never the API key, and each
/// endpoint through [`swe_env_model::redact_url`] (no user-info, no query), so a credential in `--model-url`
/// reaches no record or export.
pub fn add_client_info(info: &mut StartInfo, client: &ClientConfig) {
    let mut model = match info.model.take() {
        Some(Value::Object(map)) => map,
        _ => serde_json::Map::new(),
    };
    let endpoints: Vec<String> = client
        .endpoints
        .iter()
        .map(|url| swe_env_model::redact_url(url))
        .collect();
    model.insert("name".into(), json!(client.model));
    model.insert("endpoints".into(), json!(endpoints));
    info.model = Some(Value::Object(model));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_sets_some_fields_and_keeps_defaults() {
        let config = ModelAgentConfig::from_yaml_str(
            "mode: completions\nsampling:\n  temperature: 0.5\n  max_tokens: 100\nmax_consecutive_format_errors: 2\nprompts:\n  cwm_layout:\n    begin_of_text: \"\"\n",
        )
        .unwrap();
        assert_eq!(config.mode, ApiMode::Completions);
        assert_eq!(config.sampling.temperature, Some(0.5));
        assert_eq!(config.sampling.max_tokens, Some(100));
        assert_eq!(config.max_consecutive_format_errors, 2);
        assert_eq!(config.prompts.cwm_layout.begin_of_text, "");
        assert_eq!(config.after_submit, AfterSubmit::KeepWorking);
        assert_eq!(
            ModelAgentConfig::from_yaml_str("").unwrap(),
            ModelAgentConfig::default()
        );
    }

    #[test]
    fn logprobs_and_token_ids_settings_parse_old_and_new_forms() {
        use swe_env_model::{LogprobsSetting, TokenIdsSetting};
        let default = ModelAgentConfig::default();
        assert_eq!(default.sampling.logprobs, LogprobsSetting::Auto);
        assert_eq!(default.sampling.return_token_ids, TokenIdsSetting::Auto);
        let old =
            ModelAgentConfig::from_yaml_str("sampling: {logprobs: 0, return_token_ids: true}\n")
                .unwrap();
        assert_eq!(old.sampling.logprobs, LogprobsSetting::Top(0));
        assert_eq!(old.sampling.return_token_ids, TokenIdsSetting::On);
        let off = ModelAgentConfig::from_yaml_str(
            "sampling:\n  logprobs: off\n  return_token_ids: false\n",
        )
        .unwrap();
        assert_eq!(off.sampling.logprobs, LogprobsSetting::Off);
        assert_eq!(off.sampling.return_token_ids, TokenIdsSetting::Off);
        let auto = ModelAgentConfig::from_yaml_str(
            "sampling:\n  logprobs: auto\n  return_token_ids: auto\n",
        )
        .unwrap();
        assert_eq!(auto, default);
        assert_eq!(auto.describe()["sampling"]["logprobs"], "auto");
        let error = ModelAgentConfig::from_yaml_str("sampling:\n  logprobs: lots\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("lots") && error.contains("auto"), "{error}");
    }

    #[test]
    fn client_info_names_the_endpoints_without_credentials() {
        let mut client = ClientConfig::new("http://user:s3cret@127.0.0.1:8000/v1", "served");
        client
            .endpoints
            .push("https://models.internal/v1?api_key=k3y".into());
        let mut info = StartInfo::default();
        add_client_info(&mut info, &client);
        let model = info.model.unwrap();
        assert_eq!(
            model["endpoints"],
            json!(["http://127.0.0.1:8000/v1", "https://models.internal/v1"])
        );
        assert_eq!(model["name"], "served");
        let text = model.to_string();
        assert!(!text.contains("s3cret") && !text.contains("k3y"), "{text}");
    }

    #[test]
    fn dataset_row_reaches_the_templates_but_hidden_fields_do_not() {
        let instance: Instance = serde_json::from_value(json!({
            "repo": "o/r", "instance_id": "o__r-1", "base_commit": "abc", "patch": "GOLD PATCH",
            "test_patch": "diff --git a/tests/t.py b/tests/t.py\n", "hints_text": "see merge()",
            "problem_statement": "It breaks.", "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]", "difficulty": "hard"
        }))
        .unwrap();
        let mut config = ModelAgentConfig::default();
        config.prompts.user_template =
            "{{ instance_id }} {{ repo }} {{ instance.difficulty }} {% if hints_text %}[{{ hints_text }}]{% endif %}"
                .into();
        config.validate().unwrap();
        let (_, user) = opening_prompt(&instance, &config, &EpisodeConfig::default()).unwrap();
        assert_eq!(user, "o__r-1 o/r hard [see merge()]");
        // Every column an Instance writes is either a template variable or hidden.
        let row = serde_json::to_value(&instance).unwrap();
        for key in row.as_object().unwrap().keys() {
            let known = swe_env_model::known_variables().contains(&key.as_str())
                || swe_env_model::HIDDEN_FIELDS.contains(&key.as_str())
                || key == "difficulty";
            assert!(known, "column {key} is neither a variable nor hidden");
        }
        config.prompts.user_template = "{{ patch }}".into();
        let error = config.validate().unwrap_err();
        assert!(error.contains("hidden field"), "{error}");
    }

    #[test]
    fn limits_and_prices_parse_and_a_cost_limit_needs_a_price() {
        let config = ModelAgentConfig::from_yaml_str(
            "limits: {tokens: 1000, cost_usd: 0.5}\nprices:\n  m: {input_per_mtok: 0.5, output_per_mtok: 1.5}\n",
        )
        .unwrap();
        assert_eq!(config.limits.tokens, Some(1000));
        assert_eq!(config.limits.cost_usd, Some(0.5));
        assert_eq!(config.prices["m"].output_per_mtok, 1.5);
        assert!(config.check_price_for("m").is_ok());
        let error = config.check_price_for("other").unwrap_err();
        assert!(error.contains("\"other\""), "{error}");
        assert_eq!(config.describe()["limits"]["tokens"], 1000);
        let error = ModelAgentConfig::from_yaml_str("limits: {cost_usd: -1}\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("limits.cost_usd"), "{error}");
        let error = ModelAgentConfig::from_yaml_str("prices:\n  m: {input_per_mtok: 1}\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("output_per_mtok"), "{error}");
    }

    #[test]
    fn bad_configs_are_named() {
        let error = ModelAgentConfig::from_yaml_str("mode: telepathy\n").unwrap_err();
        assert!(
            matches!(error, ModelAgentConfigError::Yaml { .. }),
            "{error}"
        );
        let error = ModelAgentConfig::from_yaml_str("max_consecutive_format_errors: 0\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_consecutive_format_errors"), "{error}");
        let error = ModelAgentConfig::from_yaml_str("prompts:\n  user_template: \"{{nope}}\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown variable `nope`"), "{error}");
    }

    #[test]
    fn native_specs_cover_the_four_tools_and_prompts_render() {
        let names: Vec<String> = native_tool_specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["bash", "edit", "create", "submit"]);
        assert_eq!(ApiMode::from_name("chat_tools"), Some(ApiMode::ChatTools));
        assert_eq!(ApiMode::from_name("telepathy"), None);
        let instance: Instance = serde_json::from_value(json!({
            "repo": "o/r", "instance_id": "o__r-1", "base_commit": "abc", "patch": "",
            "test_patch": "diff --git a/tests/t.py b/tests/t.py\n",
            "problem_statement": "It breaks on {{x}}.", "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]"
        }))
        .unwrap();
        for mode in [ApiMode::ChatTools, ApiMode::ChatText, ApiMode::Completions] {
            let config = ModelAgentConfig {
                mode,
                ..ModelAgentConfig::default()
            };
            let info = start_info_for(&instance, &config, &EpisodeConfig::default()).unwrap();
            assert_eq!(info.prompt.len(), 2);
            assert!(info.prompt[1].content.contains("It breaks on {{x}}."));
            assert!(info.prompt[1].content.contains("/testbed"));
            let native = info.prompt[0].content.contains("function-calling");
            assert_eq!(native, mode == ApiMode::ChatTools, "{mode:?}");
            assert_eq!(info.model.as_ref().unwrap()["api_mode"], mode.as_str());
            assert_eq!(ApiMode::from_name(mode.as_str()), Some(mode));
        }
    }
}
