//! Hand-written conversions between the wire types (`proto`) and the crate's own types, with request validation:
//! every rejected field is named. Nothing outside `server` sees a proto type.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use swe_env_grading::dataset::{instance_from_value, Instance};
use swe_env_tools::Budget;

use super::config::{EpisodeDefaults, Maxima};
use super::error::ServiceError;
use super::proto;
use crate::episode::{Action, EpisodeConfig, StepMeta, StepOutcome, ToolFormat};
use crate::trajectory::{EpisodeEnd, EpisodeStart, Record, StepRecord, StepTokens};

/// Longest accepted id (episode, task, request).
pub const MAX_ID_BYTES: usize = 128;
/// Longest accepted action text or tool-call arguments.
pub const MAX_ACTION_BYTES: usize = 1 << 20;

/// Wire tool format of a [`ToolFormat`].
pub fn tool_format_to_proto(format: ToolFormat) -> proto::ToolFormat {
    match format {
        ToolFormat::Text => proto::ToolFormat::Text,
        ToolFormat::Json => proto::ToolFormat::Json,
    }
}

fn tool_format_from_proto(value: i32) -> Result<ToolFormat, ServiceError> {
    match proto::ToolFormat::try_from(value) {
        Ok(proto::ToolFormat::Unspecified | proto::ToolFormat::Text) => Ok(ToolFormat::Text),
        Ok(proto::ToolFormat::Json) => Ok(ToolFormat::Json),
        Err(_) => Err(ServiceError::invalid(
            "tool_format",
            format!("unknown value {value}"),
        )),
    }
}

/// Checks an episode id: 1..=128 bytes of `[A-Za-z0-9_.-]`, not starting with `.` (it names a file).
pub fn episode_id(field: &str, id: &str) -> Result<(), ServiceError> {
    if id.is_empty() {
        return Err(ServiceError::invalid(field, "required"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(ServiceError::invalid(
            field,
            format!("longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    let ok = !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        return Err(ServiceError::invalid(
            field,
            "only letters, digits, `_`, `-` and `.` (not first) are allowed",
        ));
    }
    Ok(())
}

/// Parses an inline task row of at most `max_bytes` (`maxima.task_json_bytes`).
pub fn inline_task(field: &str, json: &str, max_bytes: usize) -> Result<Instance, ServiceError> {
    size_at_most(field, json.len(), max_bytes, "task_json_bytes")?;
    let value: Value = serde_json::from_str(json)
        .map_err(|e| ServiceError::invalid(field, format!("not valid json: {e}")))?;
    instance_from_value(value).map_err(|e| ServiceError::invalid(field, e.to_string()))
}

/// Checks labels against the server's maxima (`maxima.labels`, `maxima.label_bytes`).
pub fn labels(
    labels: &std::collections::HashMap<String, String>,
    maxima: &Maxima,
) -> Result<BTreeMap<String, String>, ServiceError> {
    if labels.len() > maxima.labels {
        return Err(ServiceError::invalid(
            "labels",
            above(labels.len(), maxima.labels, " labels", "labels"),
        ));
    }
    for (key, value) in labels {
        if key.is_empty() {
            return Err(ServiceError::invalid("labels", "a key is empty"));
        }
        for (what, text) in [("key", key), ("value", value)] {
            if text.len() > maxima.label_bytes {
                return Err(ServiceError::invalid(
                    "labels",
                    format!(
                        "a {what} of {}",
                        above(text.len(), maxima.label_bytes, " bytes", "label_bytes")
                    ),
                ));
            }
        }
    }
    Ok(labels.clone().into_iter().collect())
}

/// "`value` is above the server maximum `max` (server config `maxima.key`)", both with `unit` (e.g. " bytes").
fn above(
    value: impl std::fmt::Display,
    max: impl std::fmt::Display,
    unit: &str,
    key: &str,
) -> String {
    format!("{value}{unit} is above the server maximum {max}{unit} (server config `maxima.{key}`)")
}

/// A size (bytes) of a request field checked against its maximum.
fn size_at_most(field: &str, len: usize, max: usize, key: &str) -> Result<(), ServiceError> {
    if len > max {
        return Err(ServiceError::invalid(field, above(len, max, " bytes", key)));
    }
    Ok(())
}

/// `value` when it is at least `min` and at most the operator's maximum `max` (`maxima.{key}`).
fn within<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    value: Option<T>,
    min: T,
    max: T,
    key: &str,
) -> Result<Option<T>, ServiceError> {
    let Some(v) = value else {
        return Ok(None);
    };
    if v > max {
        return Err(ServiceError::invalid(field, above(v, max, "", key)));
    }
    // Incomparable (NaN) is refused too.
    if !matches!(
        v.partial_cmp(&min),
        Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
    ) {
        return Err(ServiceError::invalid(
            field,
            format!("{v} is not a value of at least {min}"),
        ));
    }
    Ok(Some(v))
}

/// A page size: 0 → 100 (or the maximum when lower), at most `maxima.page_size`.
pub fn page_size(value: u32, max: u32) -> Result<usize, ServiceError> {
    match value {
        0 => Ok(100.min(max) as usize),
        v if v > max => Err(ServiceError::invalid(
            "page_size",
            above(v, max, "", "page_size"),
        )),
        v => Ok(v as usize),
    }
}

/// The episode configuration of a CreateEpisode request: server defaults, then the request's budgets and limits,
/// each at most the operator's maximum (`maxima`). Also checks the sizes of `prompt` and `model_json`.
pub fn episode_config(
    request: &proto::CreateEpisodeRequest,
    defaults: &EpisodeDefaults,
    maxima: &Maxima,
    trajectory_dir: &std::path::Path,
) -> Result<EpisodeConfig, ServiceError> {
    let base = EpisodeConfig::default();
    let mut config = EpisodeConfig {
        max_turns: defaults.max_turns,
        context_tokens: defaults.context_tokens,
        wall_clock: Duration::from_secs(defaults.wall_clock_secs),
        tool_format: tool_format_from_proto(request.tool_format)?,
        image_template: defaults.image_template.clone(),
        anti_leak: defaults.anti_leak,
        trajectory_dir: trajectory_dir.to_owned(),
        durability: defaults.durability,
        ..base
    };
    config.tools.cmd_timeout = Duration::from_secs(defaults.cmd_timeout_secs);
    config.sandbox.network_mode = defaults.network_mode.clone();
    config.sandbox.memory_bytes = defaults.memory_bytes;
    config.sandbox.nano_cpus = (defaults.cpus * 1e9) as i64;
    config.sandbox.pids_limit = defaults.pids_limit;

    if let Some(budgets) = &request.budgets {
        let b = budgets;
        let m = maxima;
        if let Some(v) = within(
            "budgets.max_turns",
            b.max_turns,
            1,
            m.max_turns,
            "max_turns",
        )? {
            config.max_turns = v;
        }
        if let Some(v) = within(
            "budgets.context_tokens",
            b.context_tokens,
            1,
            m.context_tokens,
            "context_tokens",
        )? {
            config.context_tokens = v;
        }
        if let Some(v) = within(
            "budgets.observation_cap_bytes",
            b.observation_cap_bytes,
            64,
            m.observation_cap_bytes,
            "observation_cap_bytes",
        )? {
            config.observation_cap_bytes = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = within(
            "budgets.wall_clock_secs",
            b.wall_clock_secs,
            1,
            m.wall_clock_secs,
            "wall_clock_secs",
        )? {
            config.wall_clock = Duration::from_secs(v);
        }
    }
    if let Some(limits) = &request.limits {
        let (l, m) = (limits, maxima);
        if let Some(v) = within(
            "limits.cmd_timeout_secs",
            l.cmd_timeout_secs,
            1,
            m.cmd_timeout_secs,
            "cmd_timeout_secs",
        )? {
            config.tools.cmd_timeout = Duration::from_secs(v);
        }
        if let Some(v) = within(
            "limits.memory_bytes",
            l.memory_bytes,
            16 << 20,
            m.memory_bytes,
            "memory_bytes",
        )? {
            config.sandbox.memory_bytes = v;
        }
        if let Some(v) = within("limits.cpus", l.cpus, 0.01, m.cpus, "cpus")? {
            config.sandbox.nano_cpus = (v * 1e9) as i64;
        }
        if let Some(v) = within(
            "limits.pids_limit",
            l.pids_limit,
            16,
            m.pids_limit,
            "pids_limit",
        )? {
            config.sandbox.pids_limit = v;
        }
    }
    if request.prompt.len() > maxima.prompt_messages {
        return Err(ServiceError::invalid(
            "prompt",
            above(
                request.prompt.len(),
                maxima.prompt_messages,
                " messages",
                "prompt_messages",
            ),
        ));
    }
    let prompt_bytes: usize = request
        .prompt
        .iter()
        .map(|m| m.role.len() + m.content.len())
        .sum();
    size_at_most("prompt", prompt_bytes, maxima.prompt_bytes, "prompt_bytes")?;
    size_at_most(
        "model_json",
        request.model_json.len(),
        maxima.model_json_bytes,
        "model_json_bytes",
    )?;
    Ok(config)
}

/// The action and step facts of a Step request.
pub fn step_action(request: &proto::StepRequest) -> Result<(Action, StepMeta), ServiceError> {
    if request.request_id.len() > MAX_ID_BYTES {
        return Err(ServiceError::invalid(
            "request_id",
            format!("longer than {MAX_ID_BYTES} bytes"),
        ));
    }
    let too_long =
        |field: &str| ServiceError::invalid(field, format!("longer than {MAX_ACTION_BYTES} bytes"));
    let action = match &request.action {
        None => {
            return Err(ServiceError::invalid(
                "action",
                "one of `text` or `tool_call` is required",
            ))
        }
        Some(proto::step_request::Action::Text(text)) => {
            if text.len() > MAX_ACTION_BYTES {
                return Err(too_long("text"));
            }
            Action::Text(text.clone())
        }
        Some(proto::step_request::Action::ToolCall(call)) => {
            if call.name.is_empty() {
                return Err(ServiceError::invalid("tool_call.name", "required"));
            }
            if call.arguments_json.len() > MAX_ACTION_BYTES {
                return Err(too_long("tool_call.arguments_json"));
            }
            if call.call_id.len() > MAX_ID_BYTES {
                return Err(ServiceError::invalid(
                    "tool_call.call_id",
                    format!("longer than {MAX_ID_BYTES} bytes"),
                ));
            }
            Action::Call {
                name: call.name.clone(),
                arguments: call.arguments_json.clone(),
                call_id: Some(call.call_id.clone()).filter(|c| !c.is_empty()),
            }
        }
    };
    let turn = request.model_turn.clone().unwrap_or_default();
    if !turn.logprobs.is_empty()
        && !turn.token_ids.is_empty()
        && turn.logprobs.len() != turn.token_ids.len()
    {
        return Err(ServiceError::invalid(
            "model_turn.logprobs",
            "must have one value per token id",
        ));
    }
    let meta = StepMeta {
        request_id: Some(request.request_id.clone()).filter(|r| !r.is_empty()),
        model_ms: turn.model_ms,
        tokens: StepTokens {
            prompt: turn.prompt_tokens,
            completion: turn.completion_tokens,
            token_ids: Some(turn.token_ids).filter(|t| !t.is_empty()),
            logprobs: Some(turn.logprobs).filter(|l| !l.is_empty()),
            tokens: None,
            prompt_token_ids: None,
            ..StepTokens::default()
        },
        reasoning: Some(turn.reasoning).filter(|r| !r.is_empty()),
        content: None,
    };
    Ok((action, meta))
}

/// The wire observation of a step record.
pub fn observation(record: &StepRecord) -> proto::Observation {
    proto::Observation {
        text: record.observation.clone(),
        tool: record.tool.clone().unwrap_or_default(),
        exit_code: record.exit_code,
        timed_out: record.timed_out,
        truncated: record.truncated,
        restarted: record.restarted,
        tool_error: record.tool_error.clone().unwrap_or_default(),
        format_error: record.format_error.clone().unwrap_or_default(),
        duration_ms: record.tool_ms,
    }
}

/// The wire budget.
pub fn budget(budget: &Budget) -> proto::Budget {
    proto::Budget {
        remaining_turns: budget.remaining_turns,
        remaining_tokens: budget.remaining_tokens,
    }
}

/// The Step reply of an outcome.
pub fn step_response(outcome: &StepOutcome, after: &Budget) -> proto::StepResponse {
    proto::StepResponse {
        observation: Some(observation(&outcome.record)),
        step_idx: outcome.record.step_idx,
        // Over gRPC `done` means the episode has ended (a budget ran out here; the caller also ends it when it
        // grades a submission). A plain submit keeps the episode live: the agent may revise and submit again.
        done: outcome.end_status.is_some(),
        submitted: outcome.submitted,
        end_status: outcome
            .end_status
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        reward: None,
        budget: Some(budget(after)),
        replayed: false,
    }
}

/// A task as listed.
pub fn task(
    instance: &Instance,
    dataset: &str,
    image_template: &str,
    include_row: bool,
) -> proto::Task {
    proto::Task {
        instance_id: instance.instance_id.clone(),
        repo: instance.repo.clone(),
        problem_statement: instance.problem_statement.clone(),
        base_commit: instance.base_commit.clone(),
        version: instance.version.clone(),
        image: crate::task::image_for(instance, image_template),
        dataset: dataset.to_owned(),
        row_json: if include_row {
            serde_json::to_string(instance).unwrap_or_default()
        } else {
            String::new()
        },
    }
}

fn json_text(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// A trajectory record in the requested encoding.
pub fn trajectory_record(record: &Record, typed: bool) -> proto::TrajectoryRecord {
    use proto::trajectory_record::Record as Wire;
    let wire = if !typed {
        Wire::Json(json_text(record))
    } else {
        match record {
            Record::EpisodeStart(start) => Wire::Start(start_record(start)),
            Record::Step(step) => Wire::Step(step_record(step)),
            Record::EpisodeEnd(end) => Wire::End(end_record(end)),
        }
    };
    proto::TrajectoryRecord { record: Some(wire) }
}

fn start_record(start: &EpisodeStart) -> proto::EpisodeStartRecord {
    proto::EpisodeStartRecord {
        schema_version: start.schema_version,
        episode_id: start.episode_id.clone(),
        instance_id: start.instance_id.clone(),
        task_json: json_text(&start.task),
        image: start.image.clone(),
        image_id: start.image_id.clone(),
        tool_format: start.tool_format.clone(),
        limits_json: json_text(&start.limits),
        model_json: json_text(&start.model),
        prompt: start
            .prompt
            .iter()
            .map(|m| proto::PromptMessage {
                role: m.role.clone(),
                content: m.content.clone(),
            })
            .collect(),
        started_at: start.started_at.clone(),
    }
}

/// A typed step record.
pub fn step_record(step: &StepRecord) -> proto::StepRecord {
    proto::StepRecord {
        step_idx: step.step_idx,
        request_id: step.request_id.clone().unwrap_or_default(),
        raw_action: step.raw_action.clone(),
        parsed_call_json: json_text(&step.parsed_call),
        observation: Some(observation(step)),
        tool_call_id: step.tool_call_id.clone().unwrap_or_default(),
        model_ms: step.model_ms,
        tokens_json: json_text(&step.tokens),
        reasoning: step.reasoning.clone().unwrap_or_default(),
        at: step.at.clone(),
    }
}

fn end_record(end: &EpisodeEnd) -> proto::EpisodeEndRecord {
    proto::EpisodeEndRecord {
        status: end.status.as_str().to_owned(),
        detail: end.detail.clone().unwrap_or_default(),
        submission: end.submission.clone().unwrap_or_default(),
        final_answer: end.final_answer.clone().unwrap_or_default(),
        n_steps: end.n_steps,
        rewards_json: json_text(&end.rewards),
        grading_json: json_text(&end.grading),
        duration_ms: end.duration_ms,
        ended_at: end.ended_at.clone(),
    }
}

/// The Grade reply of a grading.
pub fn grade_response(outcome: &crate::grade::GradeOutcome) -> proto::GradeResponse {
    use swe_env_grading::report::ResolvedStatus;
    let resolution = outcome
        .report
        .swe_env
        .as_ref()
        .and_then(|extras| extras.resolution)
        .map(|r| match r {
            ResolvedStatus::Full => "FULL",
            ResolvedStatus::Partial => "PARTIAL",
            ResolvedStatus::No => "NO",
        })
        .unwrap_or_default();
    let mut rewards = std::collections::HashMap::from([
        ("execution".to_owned(), outcome.rewards.execution),
        ("shaped".to_owned(), outcome.rewards.shaped),
    ]);
    if let Some(similarity) = outcome.rewards.similarity {
        rewards.insert("similarity".to_owned(), similarity);
    }
    proto::GradeResponse {
        instance_id: outcome.instance_id.clone(),
        resolved: outcome.resolved,
        resolution: resolution.to_owned(),
        report_json: json_text(&outcome.report),
        rewards,
    }
}

/// The wire form of what CheckTest found.
pub fn check_test_response(checked: &super::state::CheckedTest) -> proto::CheckTestResponse {
    use super::state::CheckedTest;
    let (mut reply, run) = match checked {
        CheckedTest::Validity(validation) => (
            proto::CheckTestResponse {
                valid: validation.valid,
                reason: validation
                    .reason
                    .map(|reason| reason.as_str().to_owned())
                    .unwrap_or_default(),
                detail: validation.detail.clone(),
                container_ms: validation.container_ms,
                ..Default::default()
            },
            validation.run.as_ref(),
        ),
        CheckedTest::OnPatch(pair) => {
            let detail = match &pair.run {
                None => "the patch did not apply (every method of the grading's apply chain failed); the script \
                         did not run"
                    .to_owned(),
                Some(run) => pair_detail(pair.passed, run),
            };
            (
                proto::CheckTestResponse {
                    passed: pair.passed,
                    patch_applied: pair.patch_applied,
                    detail,
                    container_ms: pair.container_ms,
                    ..Default::default()
                },
                pair.run.as_ref(),
            )
        }
    };
    if let Some(run) = run {
        reply.reproduced = run.reproduced;
        reply.resolved = run.resolved;
        reply.other_issues = run.other_issues;
        reply.timed_out = run.timed_out;
        reply.exit_code = run.exit_code;
        reply.output_tail = run.output_tail.clone();
    }
    reply
}

/// A script's run on a candidate patch, in words.
fn pair_detail(passed: bool, run: &crate::grade::testgen::ScriptRun) -> String {
    use crate::grade::testgen::{OTHER_ISSUES, REPRODUCED, RESOLVED};
    let printed: Vec<_> = [
        (run.reproduced, REPRODUCED),
        (run.resolved, RESOLVED),
        (run.other_issues, OTHER_ISSUES),
    ]
    .into_iter()
    .filter(|(seen, _)| *seen)
    .map(|(_, line)| format!("`{line}`"))
    .collect();
    let printed = if printed.is_empty() {
        "no verdict line".to_owned()
    } else {
        printed.join(" and ")
    };
    let verdict = if passed { "passed" } else { "did not pass" };
    if run.timed_out {
        format!("the patch applied; the script was killed at the time limit (it printed {printed}): {verdict}")
    } else {
        format!("the patch applied; the script printed {printed}: {verdict}")
    }
}

/// A numeric page token (empty = start).
pub fn page_token(token: &str) -> Result<Option<u64>, ServiceError> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .parse()
        .map(Some)
        .map_err(|_| ServiceError::invalid("page_token", "not a token returned by this server"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_named() {
        assert!(episode_id("episode_id", "ep-0123abc").is_ok());
        for bad in [
            "",
            "../etc/passwd",
            ".hidden",
            "a/b",
            "a b",
            &"x".repeat(129),
        ] {
            let error = episode_id("episode_id", bad).unwrap_err().to_string();
            assert!(error.contains("episode_id"), "{bad}: {error}");
        }
    }

    #[test]
    fn budgets_and_limits_override_defaults_within_ranges() {
        let defaults = EpisodeDefaults::default();
        let maxima = Maxima::default();
        let mut request = proto::CreateEpisodeRequest {
            tool_format: proto::ToolFormat::Json as i32,
            budgets: Some(proto::Budgets {
                max_turns: Some(5),
                ..Default::default()
            }),
            limits: Some(proto::Limits {
                cpus: Some(0.5),
                ..Default::default()
            }),
            ..Default::default()
        };
        let config =
            episode_config(&request, &defaults, &maxima, std::path::Path::new("t")).unwrap();
        assert_eq!(config.max_turns, 5);
        assert_eq!(config.tool_format, ToolFormat::Json);
        assert_eq!(config.sandbox.nano_cpus, 500_000_000);
        assert_eq!(config.context_tokens, defaults.context_tokens);

        request.budgets = Some(proto::Budgets {
            max_turns: Some(0),
            ..Default::default()
        });
        let error = episode_config(&request, &defaults, &maxima, std::path::Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("budgets.max_turns"), "{error}");
        request.budgets = None;
        request.limits = Some(proto::Limits {
            cpus: Some(f64::NAN),
            ..Default::default()
        });
        let error = episode_config(&request, &defaults, &maxima, std::path::Path::new("t"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("limits.cpus"), "{error}");
        request.limits = None;
        request.tool_format = 9;
        assert!(episode_config(&request, &defaults, &maxima, std::path::Path::new("t")).is_err());
    }

    #[test]
    fn step_actions_are_validated() {
        let mut request = proto::StepRequest::default();
        let error = step_action(&request).unwrap_err().to_string();
        assert!(error.contains("action"), "{error}");
        request.action = Some(proto::step_request::Action::ToolCall(proto::ToolCall {
            name: "bash".into(),
            arguments_json: r#"{"command":"ls"}"#.into(),
            call_id: "c1".into(),
        }));
        request.request_id = "r1".into();
        let (action, meta) = step_action(&request).unwrap();
        assert!(matches!(action, Action::Call { call_id: Some(ref c), .. } if c == "c1"));
        assert_eq!(meta.request_id.as_deref(), Some("r1"));
        request.request_id = "r".repeat(200);
        assert!(step_action(&request)
            .unwrap_err()
            .to_string()
            .contains("request_id"));
    }

    #[test]
    fn page_tokens_must_be_ours() {
        assert_eq!(page_token("").unwrap(), None);
        assert_eq!(page_token("12").unwrap(), Some(12));
        assert!(page_token("abc")
            .unwrap_err()
            .to_string()
            .contains("page_token"));
        assert_eq!(page_size(0, 1000).unwrap(), 100);
        assert_eq!(page_size(7, 1000).unwrap(), 7);
        let error = page_size(5000, 1000).unwrap_err().to_string();
        assert!(error.contains("above the server maximum 1000"), "{error}");
        assert!(error.contains("maxima.page_size"), "{error}");
    }
}
