//! The records of a trajectory file. Field names are the on-disk schema.

use std::num::NonZeroU8;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::well_known::{iso8601, Iso8601};
use time::{OffsetDateTime, PrimitiveDateTime};

/// Version of the record schema written in every `episode_start`.
pub const SCHEMA_VERSION: u32 = 1;

/// One line of a trajectory file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// First line: what ran, where, with which limits.
    EpisodeStart(EpisodeStart),
    /// One action and its observation.
    Step(StepRecord),
    /// Last line: how the episode ended, the submission, rewards.
    EpisodeEnd(EpisodeEnd),
}

/// A message of the initial prompt (system / user), kept so exports need nothing but the trajectory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptMessage {
    /// `system` or `user`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// The `episode_start` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeStart {
    /// Record schema version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Episode id.
    pub episode_id: String,
    /// Task id (`instance_id`).
    pub instance_id: String,
    /// The full task row as loaded (problem statement, base commit, tests…).
    pub task: Value,
    /// Image reference used.
    pub image: String,
    /// Content-addressed image id (`sha256:…`), empty when unknown.
    pub image_id: String,
    /// Registry digests of the image, when it was pulled.
    #[serde(default)]
    pub image_digests: Vec<String>,
    /// Tool call format: `text` (CWM) or `json` (OpenAI function calling).
    pub tool_format: String,
    /// Sandbox limits and budgets in force.
    pub limits: Value,
    /// Model and sampling parameters, when a model drives the episode.
    #[serde(default)]
    pub model: Option<Value>,
    /// The initial prompt messages the agent saw.
    #[serde(default)]
    pub prompt: Vec<PromptMessage>,
    /// Versions of swe-env and its parts.
    pub versions: Value,
    /// RFC 3339 start time.
    pub started_at: String,
    /// The process driving the episode (`host:pid:start_ticks`, as the container's `swe-env.owner` label): a
    /// later server closes the trajectory as `crashed` only once this process is dead. Absent in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

/// Token accounting for the model turn that produced an action, when known.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StepTokens {
    /// Prompt tokens of the model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<u64>,
    /// Completion tokens of the model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<u64>,
    /// Completion token ids, when the server returned them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ids: Option<Vec<i64>>,
    /// Per-token log-probabilities of the completion, when returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<f64>>,
    /// Completion tokens as strings, when returned alongside logprobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    /// Prompt token ids, when the server returned them (vLLM `prompt_token_ids`): the exact tokenisation the
    /// policy saw, for RL without re-tokenising.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_token_ids: Option<Vec<i64>>,
    /// Why generation stopped (`stop`, `length`, `tool_calls`, …), as the endpoint said: a reply cut off by
    /// `max_tokens` reads `length`. Absent in older files and for actions no model produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// The sampling parameters exactly as sent with this call: every field of the request body except `model`,
    /// `messages`, `prompt`, `tools`, `stream` and `user` — so `temperature`, `top_p`, `max_tokens` (after lowering
    /// to the context left), `seed`, `stop` (after the layout's default filled it), `logprobs` / `top_logprobs` and
    /// `return_token_ids` (absent when the endpoint rejected them in `auto` mode), and `extra_body`'s fields
    /// merged at the top level as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<serde_json::Value>,
    /// Base URL of the endpoint that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What this call cost in USD (prompt and completion tokens priced with the agent config's `prices` for the
    /// served model). Absent when the model has no price, and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// What the episode's model calls cost in USD up to and including this one. Absent like `cost_usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_cost_usd: Option<f64>,
}

/// The `step` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based index of the step in the episode.
    pub step_idx: u32,
    /// Client request id (gRPC Step idempotency), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The raw action: the model's text, or the JSON tool call as sent.
    pub raw_action: String,
    /// Reasoning text the model produced separately (e.g. `reasoning_content`), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
    /// Assistant text sent next to a native tool call (chat-tools mode), when any: the message's `content`, kept
    /// apart from both the call (`raw_action`) and the separated `reasoning`. (Files before this field stored it in
    /// `reasoning`, joined after a blank line.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// The parsed tool call (`{"tool": name, ...arguments}`), or null when parsing failed.
    pub parsed_call: Option<Value>,
    /// Tool name when parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Native tool-call id (OpenAI function calling), echoed in the `tool` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Format error message, when the action could not be parsed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_error: Option<String>,
    /// Tool-level error kind (`not_found`, `ambiguous`, …), when the tool failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_error: Option<String>,
    /// The observation exactly as shown to the model.
    pub observation: String,
    /// Exit code of a bash command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The command hit its timeout.
    #[serde(default)]
    pub timed_out: bool,
    /// The output was truncated.
    #[serde(default)]
    pub truncated: bool,
    /// The shell was restarted.
    #[serde(default)]
    pub restarted: bool,
    /// Wall time of the tool execution, ms.
    pub tool_ms: u64,
    /// Wall time of the model call that produced the action, ms (when a model drove it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_ms: Option<u64>,
    /// Token accounting.
    #[serde(default)]
    pub tokens: StepTokens,
    /// RFC 3339 time the step finished.
    pub at: String,
}

/// Why an episode ended. Every ending has a name (the same on the command line, e.g. `export --only-status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum EpisodeStatus {
    /// The agent submitted and finished.
    Submitted,
    /// The turn budget ran out.
    MaxTurns,
    /// The context-token budget ran out.
    ContextExhausted,
    /// The wall-clock budget ran out.
    WallClock,
    /// Too many consecutive format errors.
    FormatErrors,
    /// The model endpoint failed (after retries).
    ModelError,
    /// The sandbox failed (Docker error, container gone).
    SandboxError,
    /// Closed by the client before a submission.
    Closed,
    /// Cancelled (shutdown, Ctrl-C).
    Cancelled,
    /// The process driving the episode died (kill -9, OOM, power loss) before it ended; a later server closed the
    /// trajectory with this status.
    Crashed,
    /// The per-episode token limit (prompt + completion tokens over all model calls) was reached.
    TokenLimit,
    /// The per-episode cost limit (USD, priced per model) was reached.
    CostLimit,
}

impl EpisodeStatus {
    /// The snake_case name, as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::MaxTurns => "max_turns",
            Self::ContextExhausted => "context_exhausted",
            Self::WallClock => "wall_clock",
            Self::FormatErrors => "format_errors",
            Self::ModelError => "model_error",
            Self::SandboxError => "sandbox_error",
            Self::Closed => "closed",
            Self::Cancelled => "cancelled",
            Self::Crashed => "crashed",
            Self::TokenLimit => "token_limit",
            Self::CostLimit => "cost_limit",
        }
    }
}

/// The `episode_end` record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeEnd {
    /// How it ended.
    pub status: EpisodeStatus,
    /// Human-readable detail (the error, the budget hit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The submitted patch, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submission: Option<String>,
    /// The agent's final answer text after submitting, when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_answer: Option<String>,
    /// Tokens, ids and logprobs of the model turn that gave the final answer (it is not a step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_answer_tokens: Option<StepTokens>,
    /// Reasoning the model produced separately in the final-answer turn (`reasoning_content`), when any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_answer_reasoning: Option<String>,
    /// Number of steps taken.
    pub n_steps: u32,
    /// Rewards, when graded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Value>,
    /// The grading report (report.json of the instance), when graded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grading: Option<Value>,
    /// Episode wall time, ms.
    pub duration_ms: u64,
    /// RFC 3339 end time.
    pub ended_at: String,
}

/// The timestamp format of trajectories and manifests (a public contract): RFC 3339 in UTC with exactly three
/// fractional digits (truncated, not rounded) and a `Z`, e.g. `2025-11-25T20:36:36.123Z`.
const TIMESTAMP: Iso8601<
    {
        iso8601::Config::DEFAULT
            .set_year_is_six_digits(false)
            .set_time_precision(iso8601::TimePrecision::Second {
                decimal_digits: NonZeroU8::new(3),
            })
            .encode()
    },
> = Iso8601;

/// Current time as RFC 3339 (UTC, seconds precision with milliseconds).
pub fn now_rfc3339() -> String {
    rfc3339_millis(SystemTime::now())
}

/// `instant` as RFC 3339 in the [`TIMESTAMP`] format. An instant before 1970 reads as the epoch (as it always has
/// here), one after 9999 as the last instant of 9999.
pub fn rfc3339_millis(instant: SystemTime) -> String {
    let nanos = instant.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i128::try_from(since.as_nanos()).unwrap_or(i128::MAX)
    });
    let at = OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or_else(|_| PrimitiveDateTime::MAX.assume_utc());
    // Cannot fail: the year is within 1970..=9999 (four digits) and the output is a String.
    at.format(&TIMESTAMP).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(nanos: u64) -> SystemTime {
        UNIX_EPOCH + std::time::Duration::from_nanos(nanos)
    }

    #[test]
    fn timestamps_keep_the_public_format() {
        const DAY: u64 = 86_400 * 1_000_000_000;
        assert_eq!(rfc3339_millis(at(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(at(20_417 * DAY)), "2025-11-25T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(at(11_016 * DAY + 100_000_000)),
            "2000-02-29T00:00:00.100Z"
        );
        // Milliseconds are truncated, never rounded up into the next second.
        assert_eq!(
            rfc3339_millis(at(1_764_102_996_999_999_999)),
            "2025-11-25T20:36:36.999Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH - std::time::Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(
            rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000)),
            "9999-12-31T23:59:59.999Z"
        );
        let now = now_rfc3339();
        assert_eq!(now.len(), 24, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[19] == b'.', "{now}");
    }

    #[test]
    fn timestamps_agree_with_gnu_date() {
        // Independent oracle: coreutils `date -u` on instants across leap years and century boundaries.
        for secs in [
            0u64,
            951_782_400,
            951_868_799,
            1_709_208_000,
            4_107_542_399,
            4_102_444_800,
            253_402_300_799,
        ] {
            let out = std::process::Command::new("date")
                .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S.000Z"])
                .output()
                .unwrap();
            let expected = String::from_utf8(out.stdout).unwrap();
            assert_eq!(
                rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_secs(secs)),
                expected.trim(),
                "{secs}"
            );
        }
    }

    #[test]
    fn records_are_tagged_by_type() {
        let end = Record::EpisodeEnd(EpisodeEnd {
            status: EpisodeStatus::MaxTurns,
            detail: None,
            submission: None,
            final_answer: None,
            final_answer_tokens: None,
            final_answer_reasoning: None,
            n_steps: 3,
            rewards: None,
            grading: None,
            duration_ms: 10,
            ended_at: "t".into(),
        });
        let line = serde_json::to_string(&end).unwrap();
        assert!(
            line.starts_with(r#"{"type":"episode_end","status":"max_turns""#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), end);
    }
}
