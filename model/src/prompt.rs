//! The agent's prompts: built-in default templates and what each one is filled with.
//!
//! The defaults follow the structure of CWM's SWE-RL scaffold (environment description, the tool
//! specifications, one-call-per-turn rules; an issue in `<issue_description>` tags) in our own wording.
//! Observations (`<output>` + `<budget>`, `FormatError:`) are rendered by the tools crate, the single place
//! that defines what the model sees after an action. To reproduce a model's training
//! prompt exactly, override the templates from a YAML file (see `AgentPromptConfig`).

use crate::config::AgentPromptConfig;
use crate::template::{render_template, TemplateError};

/// Placeholders of `system_template`.
pub const SYSTEM_PLACEHOLDERS: &[&str] = &[
    "tool_specs",
    "max_turns",
    "context_tokens",
    "command_timeout_secs",
];
/// Placeholders of `user_template`.
pub const USER_PLACEHOLDERS: &[&str] = &["issue", "repo_root"];

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

/// What the system prompt is filled with.
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

/// What the user prompt is filled with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPromptInputs {
    /// The issue text (problem statement).
    pub issue: String,
    /// Where the repository is inside the container (e.g. `/testbed`).
    pub repo_root: String,
}

impl AgentPromptConfig {
    /// The system prompt.
    pub fn render_system(&self, inputs: &SystemPromptInputs) -> Result<String, TemplateError> {
        let max_turns = inputs.max_turns.to_string();
        let context_tokens = inputs.context_tokens.to_string();
        let timeout = inputs.command_timeout_secs.to_string();
        render_template(
            "system_template",
            &self.system_template,
            &[
                ("tool_specs", inputs.tool_specs.trim()),
                ("max_turns", &max_turns),
                ("context_tokens", &context_tokens),
                ("command_timeout_secs", &timeout),
            ],
        )
    }

    /// The first user message.
    pub fn render_user(&self, inputs: &UserPromptInputs) -> Result<String, TemplateError> {
        render_template(
            "user_template",
            &self.user_template,
            &[
                ("issue", inputs.issue.trim()),
                ("repo_root", &inputs.repo_root),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_render_every_input() {
        let config = AgentPromptConfig::default();
        let system = config
            .render_system(&SystemPromptInputs {
                tool_specs: "<tool: bash>\n[command(s)]\n</tool>\n".into(),
                max_turns: 128,
                context_tokens: 131072,
                command_timeout_secs: 120,
            })
            .unwrap();
        assert!(system.contains("at most 128 turns"));
        assert!(system.contains("131072 tokens"));
        assert!(system.contains("120 seconds"));
        assert!(system.contains("<tool: bash>\n[command(s)]\n</tool>\n\nRULES:"));
        assert!(!system.contains("{{"));

        let user = config
            .render_user(&UserPromptInputs {
                issue: "Crash on {{empty}} input\n".into(),
                repo_root: "/testbed".into(),
            })
            .unwrap();
        assert!(
            user.contains("<issue_description>\nCrash on {{empty}} input\n</issue_description>")
        );
        assert!(user.contains("at /testbed"));
    }
}
