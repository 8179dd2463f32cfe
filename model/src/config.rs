//! `AgentPromptConfig`: every prompt template and the CWM layout, with defaults, loadable from YAML.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::cwm::CwmLayout;
use crate::prompt::{
    known_variables, DEFAULT_SYSTEM_TEMPLATE, DEFAULT_USER_TEMPLATE, HIDDEN_FIELDS,
};
use crate::template::{check_template, TemplateError};
use crate::yaml::{self, YamlError, INLINE};

/// What a prompt config file is called in errors.
const KIND: &str = "prompt config";

/// The agent's prompt text; any field left out of a YAML file keeps its built-in default. (What the model sees
/// after an action — `<output>`/`<budget>`, `FormatError:` — is rendered by the tools crate; unknown keys such
/// as an observation template are refused rather than silently ignored.)
///
/// Templates are Jinja; both see every variable listed in [`crate::prompt`] (run settings, the task row's
/// columns, `instance`).
///
/// ```yaml
/// user_template: |
///   Fix this in {{ repo }} ({{ version }}): {{ issue }} (repo at {{ repo_root }})
///   {% if hints_text %}Hints: {{ hints_text }}{% endif %}
/// cwm_layout:
///   begin_of_text: ""
///   assistant_prefix: "<think>\n"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentPromptConfig {
    /// System prompt (Jinja); usually uses `tool_specs`, `max_turns`, `context_tokens`, `command_timeout_secs`.
    pub system_template: String,
    /// First user message (Jinja); usually uses `issue`, `repo_root`.
    pub user_template: String,
    /// Special tokens of the raw-completions transcript.
    pub cwm_layout: CwmLayout,
}

impl Default for AgentPromptConfig {
    fn default() -> Self {
        AgentPromptConfig {
            system_template: DEFAULT_SYSTEM_TEMPLATE.into(),
            user_template: DEFAULT_USER_TEMPLATE.into(),
            cwm_layout: CwmLayout::default(),
        }
    }
}

/// Why a prompt config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PromptConfigError {
    /// The file could not be read, the YAML is invalid or has unknown keys (file, line and column named).
    #[error(transparent)]
    Yaml(#[from] YamlError),
    /// A template is not valid Jinja or names a variable that does not exist.
    #[error("invalid prompt config {origin}: {source}")]
    Template {
        /// The file, or `(inline)`.
        origin: String,
        /// Which template and placeholder.
        source: TemplateError,
    },
}

impl AgentPromptConfig {
    /// Parses YAML text and checks every template.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, PromptConfigError> {
        Self::checked(yaml::parse_str(yaml, KIND, INLINE)?, INLINE)
    }

    /// Reads and parses a YAML file, checking every template.
    pub fn from_yaml_file(path: &Path) -> Result<Self, PromptConfigError> {
        Self::checked(yaml::load_file(path, KIND)?, &path.display().to_string())
    }

    fn checked(config: Self, origin: &str) -> Result<Self, PromptConfigError> {
        config
            .validate()
            .map_err(|source| PromptConfigError::Template {
                origin: origin.to_string(),
                source,
            })?;
        Ok(config)
    }

    /// Checks that every template is valid Jinja and only names known variables (not the hidden fields).
    pub fn validate(&self) -> Result<(), TemplateError> {
        let known = known_variables();
        check_template(
            "system_template",
            &self.system_template,
            &known,
            HIDDEN_FIELDS,
        )?;
        check_template("user_template", &self.user_template, &known, HIDDEN_FIELDS)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_overrides_some_fields_and_keeps_defaults() {
        let yaml = "user_template: |\n  Fix: {{issue}} at {{ repo_root }}\ncwm_layout:\n  begin_of_text: \"\"\n  assistant_prefix: \"<think>\\n\"\n";
        let config = AgentPromptConfig::from_yaml_str(yaml).unwrap();
        assert_eq!(config.user_template, "Fix: {{issue}} at {{ repo_root }}\n");
        assert_eq!(config.cwm_layout.begin_of_text, "");
        assert_eq!(config.cwm_layout.assistant_prefix, "<think>\n");
        assert_eq!(config.cwm_layout.end_of_turn, "<|eot_id|>");
        assert_eq!(config.system_template, DEFAULT_SYSTEM_TEMPLATE);
        assert_eq!(
            AgentPromptConfig::from_yaml_str("").unwrap(),
            AgentPromptConfig::default()
        );
    }

    #[test]
    fn unknown_variable_broken_syntax_and_unknown_key_are_named() {
        let error =
            AgentPromptConfig::from_yaml_str("user_template: \"{{issue}} {{ hint_text }}\"\n")
                .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("(inline): template user_template uses unknown variable `hint_text`"),
            "{text}"
        );
        let error = AgentPromptConfig::from_yaml_str("system_template: \"{% if issue %}x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("template system_template has a syntax error"),
            "{error}"
        );
        let error = AgentPromptConfig::from_yaml_str("user_template: \"{{ patch }}\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("hidden field"), "{error}");
        let error = AgentPromptConfig::from_yaml_str("usr_template: x\n").unwrap_err();
        assert!(matches!(error, PromptConfigError::Yaml { .. }), "{error}");
    }

    #[test]
    fn file_round_trip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("swe-env-model-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("prompts.yaml");
        std::fs::write(&path, "user_template: \"Fix {{issue}} in {{repo_root}}\"\n").unwrap();
        let config = AgentPromptConfig::from_yaml_file(&path).unwrap();
        let inputs = crate::prompt::UserPromptInputs {
            issue: "bug".into(),
            repo_root: "/r".into(),
        };
        assert_eq!(config.render_user(&inputs).unwrap(), "Fix bug in /r");
        let error = AgentPromptConfig::from_yaml_file(&dir.join("missing.yaml")).unwrap_err();
        assert!(error.to_string().contains("missing.yaml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
