//! Agents that drive episodes: the gold and empty baselines (and, with a model, the agent loop).

pub mod cost;
pub mod gold;
pub mod model_config;
pub mod model_loop;

pub use cost::{Limits, ModelPrice, PriceTable};
pub use model_config::{
    add_client_info, start_info_for, AfterSubmit, ApiMode, ModelAgentConfig, ModelAgentConfigError,
};
pub use model_loop::{run_model_agent, ModelAgentOutcome, StepEvent};

use tracing::warn;

use crate::episode::{Action, Episode, EpisodeError, StepMeta};
use crate::trajectory::{EpisodeStatus, PromptMessage};

/// Which built-in agent to run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BuiltinAgent {
    /// Replays the gold patch through the tools and submits it.
    Gold,
    /// Submits nothing.
    Empty,
}

/// What an agent run ended with (before grading).
#[derive(Debug, Clone)]
pub struct AgentOutcome {
    /// How the episode ended.
    pub status: EpisodeStatus,
    /// The submission, if any.
    pub submission: Option<String>,
    /// Steps taken.
    pub n_steps: u32,
}

/// The prompt the built-in agents "see", recorded so their trajectories export like model ones.
pub fn builtin_prompt(problem_statement: &str) -> Vec<PromptMessage> {
    vec![
        PromptMessage {
            role: "system".into(),
            content: "Built-in agent replaying a reference solution.".into(),
        },
        PromptMessage {
            role: "user".into(),
            content: problem_statement.to_owned(),
        },
    ]
}

/// Runs the gold agent on an episode until it submits (or a budget ends it). Does not call `finish`.
pub async fn run_gold(episode: &mut Episode) -> Result<AgentOutcome, EpisodeError> {
    let patch = episode.instance().patch.clone();
    for file in gold::split_patch(&patch) {
        let mut failed = false;
        for action in gold::file_actions(&file) {
            let outcome = episode
                .step(Action::Text(action), StepMeta::default())
                .await?;
            if let Some(status) = outcome.end_status {
                return Ok(AgentOutcome {
                    status,
                    submission: None,
                    n_steps: episode.n_steps(),
                });
            }
            let tool_failed =
                outcome.record.tool_error.is_some() || outcome.record.format_error.is_some();
            let bash_failed = outcome.record.tool.as_deref() == Some("bash")
                && outcome.record.exit_code != Some(0);
            if tool_failed || bash_failed {
                warn!(episode_id = %episode.id(), file = ?file.new_path, observation = %outcome.observation, "gold step failed; falling back to git apply");
                failed = true;
                break;
            }
        }
        if failed {
            let path = file
                .old_path
                .clone()
                .or(file.new_path.clone())
                .unwrap_or_default();
            let reset = format!(
                "<tool: bash>\ncd {repo} && (git checkout -q -- {path} 2>/dev/null || rm -f -- {path})\n</tool>",
                repo = swe_env_tools::shell_quote(swe_env_grading::specs::SWE_BENCH_REPO_DIR),
                path = swe_env_tools::shell_quote(&path)
            );
            episode
                .step(Action::Text(reset), StepMeta::default())
                .await?;
            episode
                .step(
                    Action::Text(gold::git_apply_action(&file)),
                    StepMeta::default(),
                )
                .await?;
        }
    }
    let mut submission = None;
    for action in gold::submit_actions() {
        let outcome = episode
            .step(Action::Text(action), StepMeta::default())
            .await?;
        if outcome.submitted {
            submission = episode.submission().map(str::to_owned);
        }
    }
    let status = if submission.is_some() {
        EpisodeStatus::Submitted
    } else {
        EpisodeStatus::MaxTurns
    };
    Ok(AgentOutcome {
        status,
        submission,
        n_steps: episode.n_steps(),
    })
}

/// The empty agent: ends at once without a submission.
pub fn run_empty(episode: &Episode) -> AgentOutcome {
    AgentOutcome {
        status: EpisodeStatus::Submitted,
        submission: None,
        n_steps: episode.n_steps(),
    }
}
