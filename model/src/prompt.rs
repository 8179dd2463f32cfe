//! The agent's prompts: built-in default templates and the variables they are rendered with.
//!
//! The defaults follow the structure of CWM's SWE-RL scaffold (environment description, the tool
//! specifications, one-call-per-turn rules; an issue in `<issue_description>` tags) in our own wording.
//! Observations (`<output>` + `<budget>`, `FormatError:`) are rendered by the tools crate, the single place
//! that defines what the model sees after an action. To reproduce a model's training
//! prompt exactly, override the templates from a YAML file (see `AgentPromptConfig`).
//!
//! Both templates are Jinja (see [`crate::template`]) and see the same variables: [`RUN_VARIABLES`] (the
//! episode's settings), [`DATASET_VARIABLES`] (the task row's columns, `""` when the row has none) and
//! `instance`, the whole row including any extra column (`{{ instance.difficulty }}`). The row's
//! [`HIDDEN_FIELDS`] (the gold patch and the tests that grade it) are never available.

use serde_json::{Map, Value};

use crate::config::AgentPromptConfig;
use crate::template::{render_template, TemplateError};

/// Variables set by the run: `tool_specs`, `max_turns`, `context_tokens`, `command_timeout_secs`, `issue` (the
/// problem statement, trimmed), `repo_root`, and `instance` (the task row as an object).
pub const RUN_VARIABLES: &[&str] = &[
    "tool_specs",
    "max_turns",
    "context_tokens",
    "command_timeout_secs",
    "issue",
    "repo_root",
    "instance",
];

/// Columns of a task row available as top-level variables (the SWE-bench columns and swe-env's own).
pub const DATASET_VARIABLES: &[&str] = &[
    "repo",
    "instance_id",
    "base_commit",
    "problem_statement",
    "hints_text",
    "created_at",
    "version",
    "environment_setup_commit",
    "image",
    "activate",
    "test_cmd",
    "log_parser",
];

/// Columns of a task row no template can read: the answer and the tests that grade it.
pub const HIDDEN_FIELDS: &[&str] = &[
    "patch",
    "test_patch",
    "FAIL_TO_PASS",
    "PASS_TO_PASS",
    "eval_script",
];

/// Every variable a template may name ([`RUN_VARIABLES`] then [`DATASET_VARIABLES`]).
pub fn known_variables() -> Vec<&'static str> {
    RUN_VARIABLES
        .iter()
        .chain(DATASET_VARIABLES)
        .copied()
        .collect()
}

/// Default system prompt: who the model is, the container, the tools and the rules.
pub const DEFAULT_SYSTEM_TEMPLATE: &str = "\
You are a helpful AI assistant.

# Environment

You are working in a Linux container. The shell session persists between turns; it is restarted, \
and its working directory reset, after an error or when a command runs longer than \
{{command_timeout_secs}} seconds. You have at most {{max_turns}} turns and a context window of \
{{context_tokens}} tokens in total. You act on the container only through these tools:

{{tool_specs}}

RULES:
* Call exactly one tool in every turn until you have submitted; never call more than one tool in a turn.
* After a successful submission, either answer with a final report and no tool call if the issue \
is resolved, or keep working and submit again. Do not give a final report before submitting.";

/// Default user prompt: the issue, where the repository is and what to submit.
pub const DEFAULT_USER_TEMPLATE: &str = "\
Resolve the issue below by changing the code of the repository and submitting a patch.

<issue_description>
{{issue}}
</issue_description>

The repository is at {{repo_root}} with its dependencies installed, and the shell starts there. \
Save your changes as a patch file in git diff format (for example with `git diff > /tmp/fix.patch`) \
and give that file's path to the submit tool. You may submit several times; the last submission counts.

Correctness comes first: explore the code, reproduce the problem, and run new and existing tests \
before submitting. Once you have submitted and are confident in the patch, end with a final report \
in markdown, with `##` sections on the issue, how you reproduced it, the change you made and how you \
tested it.";

/// The run settings the system prompt is usually filled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPromptInputs {
    /// The tools' specifications as the tools crate renders them for this scaffold.
    pub tool_specs: String,
    /// The episode's turn budget.
    pub max_turns: u64,
    /// The episode's context budget in tokens.
    pub context_tokens: u64,
    /// The per-command timeout of the shell, in seconds.
    pub command_timeout_secs: u64,
}

/// The task values the user prompt is usually filled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPromptInputs {
    /// The issue text (problem statement).
    pub issue: String,
    /// Where the repository is inside the container (e.g. `/testbed`).
    pub repo_root: String,
}

/// Everything both templates can use: the run settings, the issue and the task's row.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptVariables {
    /// `tool_specs`, `max_turns`, `context_tokens`, `command_timeout_secs`.
    pub system: SystemPromptInputs,
    /// `issue`, `repo_root`.
    pub user: UserPromptInputs,
    /// The task's row as a JSON object (its [`HIDDEN_FIELDS`] are dropped here).
    pub dataset_row: Map<String, Value>,
}

impl SystemPromptInputs {
    fn insert_into(&self, context: &mut Map<String, Value>) {
        context.insert("tool_specs".into(), self.tool_specs.trim().into());
        context.insert("max_turns".into(), self.max_turns.into());
        context.insert("context_tokens".into(), self.context_tokens.into());
        context.insert(
            "command_timeout_secs".into(),
            self.command_timeout_secs.into(),
        );
    }
}

impl UserPromptInputs {
    fn insert_into(&self, context: &mut Map<String, Value>) {
        context.insert("issue".into(), self.issue.trim().into());
        context.insert("repo_root".into(), self.repo_root.clone().into());
    }
}

impl PromptVariables {
    /// The template context: the row's visible columns at the top level (missing [`DATASET_VARIABLES`] as `""`),
    /// the row again as `instance`, then the run's variables.
    pub fn context(&self) -> Value {
        let mut row = self.dataset_row.clone();
        for hidden in HIDDEN_FIELDS {
            row.remove(*hidden);
        }
        let mut context = row.clone();
        for name in DATASET_VARIABLES {
            match context.get(*name) {
                Some(value) if !value.is_null() => {}
                _ => {
                    context.insert((*name).to_owned(), Value::String(String::new()));
                }
            }
        }
        context.insert("instance".into(), Value::Object(row));
        self.system.insert_into(&mut context);
        self.user.insert_into(&mut context);
        Value::Object(context)
    }
}

impl AgentPromptConfig {
    /// The system prompt and the first user message.
    pub fn render_prompts(
        &self,
        variables: &PromptVariables,
    ) -> Result<(String, String), TemplateError> {
        let context = variables.context();
        Ok((
            render_template("system_template", &self.system_template, &context)?,
            render_template("user_template", &self.user_template, &context)?,
        ))
    }

    /// The system prompt from the run settings alone (a template naming another variable fails to render).
    pub fn render_system(&self, inputs: &SystemPromptInputs) -> Result<String, TemplateError> {
        let mut context = Map::new();
        inputs.insert_into(&mut context);
        render_template(
            "system_template",
            &self.system_template,
            &Value::Object(context),
        )
    }

    /// The first user message from the issue and repository root alone.
    pub fn render_user(&self, inputs: &UserPromptInputs) -> Result<String, TemplateError> {
        let mut context = Map::new();
        inputs.insert_into(&mut context);
        render_template(
            "user_template",
            &self.user_template,
            &Value::Object(context),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn golden_inputs() -> (SystemPromptInputs, UserPromptInputs) {
        (
            SystemPromptInputs {
                tool_specs:
                    "<tool: bash>\n[command(s)]\n</tool>\n\n<tool: submit>\n[path]\n</tool>\n"
                        .into(),
                max_turns: 128,
                context_tokens: 131072,
                command_timeout_secs: 120,
            },
            UserPromptInputs {
                issue: "Crash on {{ empty }} input {% if x %}\nsecond line\n".into(),
                repo_root: "/testbed".into(),
            },
        )
    }

    /// The golden files are the output of the `{{placeholder}}` renderer these templates had before Jinja, for
    /// the same inputs: the defaults must render byte for byte as they did.
    #[test]
    fn defaults_render_byte_identical_to_the_old_renderer() {
        let config = AgentPromptConfig::default();
        let (system, user) = golden_inputs();
        assert_eq!(
            config.render_system(&system).unwrap(),
            include_str!("golden/system.golden")
        );
        assert_eq!(
            config.render_user(&user).unwrap(),
            include_str!("golden/user.golden")
        );
        let row = json!({"repo": "o/r", "problem_statement": "ignored", "patch": "SECRET"});
        let (full_system, full_user) = config
            .render_prompts(&PromptVariables {
                system,
                user,
                dataset_row: row.as_object().unwrap().clone(),
            })
            .unwrap();
        assert_eq!(full_system, include_str!("golden/system.golden"));
        assert_eq!(full_user, include_str!("golden/user.golden"));
    }

    #[test]
    fn every_dataset_field_and_extra_column_is_available_and_hidden_ones_are_not() {
        let (system, user) = golden_inputs();
        let row = json!({
            "repo": "o/r", "instance_id": "o__r-1", "base_commit": "abc123", "problem_statement": "raw issue\n",
            "hints_text": "look at merge()", "created_at": "2024-01-02T03:04:05Z", "version": "3.0",
            "environment_setup_commit": "def456", "difficulty": "15 min",
            "patch": "GOLD", "test_patch": "TESTS", "FAIL_TO_PASS": ["t1"], "PASS_TO_PASS": ["t2"]
        });
        let variables = PromptVariables {
            system,
            user,
            dataset_row: row.as_object().unwrap().clone(),
        };
        let config = AgentPromptConfig {
            user_template: "{{ repo }}|{{ instance_id }}|{{ base_commit }}|{{ problem_statement }}|{{ hints_text }}|\
                {{ created_at }}|{{ version }}|{{ environment_setup_commit }}|{{ instance.difficulty }}|{{ image }}|\
                {{ max_turns }}|{{ context_tokens }}|{{ repo_root }}|{{ issue }}|\
                {% if instance.patch is defined %}LEAK{% endif %}{% if hints_text %}H{% endif %}"
                .into(),
            ..AgentPromptConfig::default()
        };
        config.validate().unwrap();
        let (_, user) = config.render_prompts(&variables).unwrap();
        assert_eq!(
            user,
            "o/r|o__r-1|abc123|raw issue\n|look at merge()|2024-01-02T03:04:05Z|3.0|def456|15 min||128|131072|\
             /testbed|Crash on {{ empty }} input {% if x %}\nsecond line|H"
        );
        let context = variables.context().to_string();
        for secret in ["GOLD", "TESTS", "\"t1\"", "\"t2\""] {
            assert!(!context.contains(secret), "{secret} in {context}");
        }
    }
}
