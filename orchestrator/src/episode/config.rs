//! Knobs of an episode: budgets, tool format, sandbox limits, where trajectories go. Defaults defined once.

use std::path::PathBuf;
use std::time::Duration;

use swe_env_tools::render::DEFAULT_OBSERVATION_CAP_BYTES;
use swe_env_tools::ToolConfig;

use super::anti_leak::AntiLeak;
use crate::task::OFFICIAL_IMAGE_TEMPLATE;
use crate::trajectory::Durability;
use swe_env_sandbox::SandboxConfig;

/// How tool calls are written by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolFormat {
    /// CWM text format: `<tool: NAME>\n…\n</tool>` in the assistant's text.
    #[default]
    Text,
    /// OpenAI function calling: structured calls with JSON arguments.
    Json,
}

impl ToolFormat {
    /// `text` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Budgets and settings of one episode.
#[derive(Debug, Clone)]
pub struct EpisodeConfig {
    /// Maximum agent turns. Default 128 (CWM).
    pub max_turns: u32,
    /// Context-token budget. Default 131072 (CWM).
    pub context_tokens: u64,
    /// Cap on one observation's text, bytes. Default 32768 tokens' worth.
    pub observation_cap_bytes: usize,
    /// Wall-clock limit of the episode. Default 1 h.
    pub wall_clock: Duration,
    /// Tool call format. Default text (CWM).
    pub tool_format: ToolFormat,
    /// Tool knobs (bash timeout, …).
    pub tools: ToolConfig,
    /// Container limits.
    pub sandbox: SandboxConfig,
    /// Image name template for rows without an `image` field.
    pub image_template: String,
    /// Git-history hygiene at episode start. Default [`AntiLeak::Refs`].
    pub anti_leak: AntiLeak,
    /// Directory of trajectory files (`<episode id>.jsonl`).
    pub trajectory_dir: PathBuf,
    /// How each trajectory record is made durable before `step` returns. Default [`Durability::PerStep`].
    pub durability: Durability,
}

impl Default for EpisodeConfig {
    fn default() -> Self {
        Self {
            max_turns: 128,
            context_tokens: 131_072,
            observation_cap_bytes: DEFAULT_OBSERVATION_CAP_BYTES,
            wall_clock: Duration::from_secs(3600),
            tool_format: ToolFormat::Text,
            tools: ToolConfig::default(),
            sandbox: SandboxConfig::default(),
            image_template: OFFICIAL_IMAGE_TEMPLATE.to_owned(),
            anti_leak: AntiLeak::Refs,
            trajectory_dir: PathBuf::from("trajectories"),
            durability: Durability::PerStep,
        }
    }
}
