//! `swe-env run-episode`: one task, one model, one episode — the model agent loop with a live view of its steps,
//! then a one-line result. The trajectory is written like any episode's; grading is a separate step.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};
use swe_env_model::{ModelClient, ModelError};
use tokio::sync::mpsc;

use super::model_args::ModelArgs;
use super::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE};
use crate::agent::{add_client_info, run_model_agent, start_info_for, ApiMode, StepEvent};
use crate::episode::{EndInfo, Episode, EpisodeConfig};
use crate::trajectory::{EpisodeStatus, StepRecord};
use swe_env_sandbox::DockerEngine;

/// How many characters of an observation the live view prints.
const OBSERVATION_HEAD_CHARS: usize = 100;

/// Arguments of `swe-env run-episode`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  swe-env run-episode --task swe-env-fixtures__spans-1 \
    --tasks images/fixtures/tasks.jsonl --model-url http://127.0.0.1:8000/v1 --model my-model --mode chat-tools"
)]
pub struct RunEpisodeArgs {
    /// Task id (`instance_id`) to run.
    #[arg(long)]
    task: String,
    /// Tasks holding `--task`: `fixtures`, `verified`/`lite`/`full`, or a JSONL/JSON/parquet file.
    #[arg(long)]
    tasks: String,
    #[command(flatten)]
    model: ModelArgs,
    /// Turn budget [default: 128].
    #[arg(long)]
    max_turns: Option<u32>,
    /// Context-token budget [default: 131072].
    #[arg(long)]
    context_tokens: Option<u64>,
    /// Wall-clock budget of the episode in seconds [default: 3600].
    #[arg(long)]
    wall_clock_secs: Option<u64>,
    /// Where the trajectory (`<episode id>.jsonl`) is written.
    #[arg(long, default_value = "runs/episodes")]
    trajectory_dir: PathBuf,
    /// Episode id [default: run-<task>-<pid>].
    #[arg(long)]
    episode_id: Option<String>,
    /// Print the result as one JSON object on stdout (the live view goes to stderr).
    #[arg(long)]
    json: bool,
}

fn episode_config(args: &RunEpisodeArgs, mode: ApiMode) -> EpisodeConfig {
    let mut config = EpisodeConfig {
        trajectory_dir: args.trajectory_dir.clone(),
        tool_format: mode.tool_format(),
        ..EpisodeConfig::default()
    };
    if let Some(max_turns) = args.max_turns {
        config.max_turns = max_turns;
    }
    if let Some(tokens) = args.context_tokens {
        config.context_tokens = tokens;
    }
    if let Some(secs) = args.wall_clock_secs {
        config.wall_clock = Duration::from_secs(secs);
    }
    config
}

fn usage_error(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(EXIT_USAGE))
}

pub async fn run(args: RunEpisodeArgs) -> anyhow::Result<ExitCode> {
    let agent = match args.model.agent_config() {
        Ok(agent) => agent,
        Err(error) => return usage_error(format!("{error:#}")),
    };
    let dataset = match crate::datasets::load_source(&args.tasks).await {
        Ok(dataset) => dataset,
        Err(error) => return usage_error(format!("loading tasks: {error}")),
    };
    for error in &dataset.errors {
        eprintln!("warning: skipped a bad row: {error}");
    }
    let Some(instance) = dataset.get(&args.task).cloned() else {
        return usage_error(format!(
            "task {} is not in {} ({} tasks loaded)",
            args.task,
            args.tasks,
            dataset.instances.len()
        ));
    };
    let client_config = args.model.client_config();
    let client = match ModelClient::new(client_config.clone()) {
        Ok(client) => client,
        Err(error @ (ModelError::MissingApiKey { .. } | ModelError::InvalidConfig(_))) => {
            return usage_error(error)
        }
        Err(error) => return Err(error).context("building the model client"),
    };
    let config = episode_config(&args, agent.mode);
    let mut info = match start_info_for(&instance, &agent, &config) {
        Ok(info) => info,
        Err(error) => return usage_error(format!("rendering the prompt: {error}")),
    };
    add_client_info(&mut info, &client_config);
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    let episode_id = args
        .episode_id
        .clone()
        .unwrap_or_else(|| format!("run-{}-{}", args.task, std::process::id()));
    let mut episode = Episode::start(&engine, &episode_id, instance, config, info)
        .await
        .context("starting the episode")?;
    eprintln!(
        "episode {episode_id}: task {}, model {} ({}), trajectory {}",
        args.task,
        args.model.model,
        agent.mode.as_str(),
        episode.trajectory_path().display()
    );

    let (sender, receiver) = mpsc::channel(64);
    let printer = tokio::spawn(print_events(receiver, args.json));
    let outcome = tokio::select! {
        outcome = run_model_agent(&mut episode, &client, &agent, Some(sender)) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
    };
    let _ = printer.await;
    let (end, agent_outcome) = match outcome {
        Some(Ok(outcome)) => (outcome.end_info(), Some(outcome)),
        Some(Err(error)) => {
            let mut end = EndInfo::status(EpisodeStatus::SandboxError);
            end.detail = Some(error.to_string());
            let _ = episode.finish(end).await;
            return Err(error).context("running the episode");
        }
        None => {
            let mut end = EndInfo::status(EpisodeStatus::Cancelled);
            end.detail = Some("interrupted (Ctrl-C)".into());
            (end, None)
        }
    };
    let record = episode.finish(end).await.context("ending the episode")?;
    let submitted = record.submission.is_some();
    let result = json!({
        "episode_id": episode_id,
        "instance_id": args.task,
        "status": record.status.as_str(),
        "detail": record.detail,
        "submitted": submitted,
        "submission_bytes": record.submission.as_ref().map(String::len),
        "final_answer": record.final_answer,
        "n_steps": record.n_steps,
        "n_model_calls": agent_outcome.as_ref().map(|o| o.n_model_calls),
        "prompt_tokens": agent_outcome.as_ref().map(|o| o.prompt_tokens),
        "completion_tokens": agent_outcome.as_ref().map(|o| o.completion_tokens),
        "n_format_errors": agent_outcome.as_ref().map(|o| o.n_format_errors),
        "model_ms": agent_outcome.as_ref().map(|o| o.model_time.as_millis() as u64),
        "duration_ms": record.duration_ms,
        "trajectory": episode.trajectory_path(),
    });
    print_result(&result, args.json);
    if record.status == EpisodeStatus::Cancelled && agent_outcome.is_none() {
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    let success = record.status == EpisodeStatus::Submitted && submitted;
    Ok(ExitCode::from(if success { EXIT_OK } else { EXIT_FAILED }))
}

fn print_result(result: &Value, as_json: bool) {
    let mut stdout = std::io::stdout().lock();
    if as_json {
        let _ = writeln!(stdout, "{result}");
    } else {
        let text = |key: &str| match &result[key] {
            Value::String(text) => text.clone(),
            Value::Null => "-".to_owned(),
            other => other.to_string(),
        };
        let _ = writeln!(
            stdout,
            "result: {} status={} submitted={} steps={} model_calls={} tokens={}+{} format_errors={} trajectory={}{}",
            text("instance_id"),
            text("status"),
            text("submitted"),
            text("n_steps"),
            text("n_model_calls"),
            text("prompt_tokens"),
            text("completion_tokens"),
            text("n_format_errors"),
            text("trajectory"),
            match &result["detail"] {
                Value::String(detail) => format!(" ({detail})"),
                _ => String::new(),
            }
        );
    }
    let _ = stdout.flush();
}

/// Prints the live view: one line per model call and per step (stderr when the result goes to stdout as JSON).
async fn print_events(mut receiver: mpsc::Receiver<StepEvent>, to_stderr: bool) {
    while let Some(event) = receiver.recv().await {
        let Some(line) = event_line(&event) else {
            continue;
        };
        if to_stderr {
            eprintln!("{line}");
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
    }
}

fn event_line(event: &StepEvent) -> Option<String> {
    match event {
        StepEvent::ModelCalled {
            call_idx,
            model_ms,
            attempts,
            prompt_tokens,
            completion_tokens,
            finish_reason,
        } => Some(format!(
            "model #{call_idx}: {model_ms} ms, {attempts} attempt(s), tokens {}+{}, {}",
            prompt_tokens.map_or("?".to_owned(), |n| n.to_string()),
            completion_tokens.map_or("?".to_owned(), |n| n.to_string()),
            finish_reason.as_deref().unwrap_or("-")
        )),
        StepEvent::Step {
            record,
            observation,
            submitted,
        } => Some(format!(
            "step {}: {}{} -> {}",
            record.step_idx,
            action_summary(record),
            if *submitted { " [submitted]" } else { "" },
            head(observation)
        )),
        StepEvent::Finished { .. } => None,
    }
}

/// A one-line description of the action: the tool and its main argument, or the format error.
fn action_summary(record: &StepRecord) -> String {
    if let Some(error) = &record.format_error {
        return format!("format error ({})", head(error));
    }
    let Some(call) = &record.parsed_call else {
        return "no call".to_owned();
    };
    let tool = call["tool"].as_str().unwrap_or("?");
    let argument = match tool {
        "bash" => call["command"].as_str().map(head),
        "edit" | "create" => call["path"].as_str().map(str::to_owned),
        "submit" => Some(call["path"].as_str().unwrap_or("(repository)").to_owned()),
        _ => None,
    };
    let exit = record
        .exit_code
        .map(|code| format!(" exit {code}"))
        .unwrap_or_default();
    let error = record
        .tool_error
        .as_ref()
        .map(|kind| format!(" failed: {kind}"))
        .unwrap_or_default();
    format!(
        "{tool} {}{exit}{error} ({} ms)",
        argument.unwrap_or_default(),
        record.tool_ms
    )
}

/// The first non-empty line of `text` that is not an `<output>` / `</output>` tag, cut to
/// [`OBSERVATION_HEAD_CHARS`] characters; `(no output)` when the output is empty.
fn head(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .take_while(|line| *line != "</output>")
        .find(|line| !line.is_empty() && *line != "<output>")
        .unwrap_or("(no output)");
    let mut out: String = line.chars().take(OBSERVATION_HEAD_CHARS).collect();
    if line.chars().count() > OBSERVATION_HEAD_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_skips_the_output_tag_and_cuts() {
        assert_eq!(head("<output>\n\nhello\nworld"), "hello");
        assert_eq!(head("<output>\n\n</output>\n\n<budget>"), "(no output)");
        assert_eq!(
            head("FormatError: no tool call found"),
            "FormatError: no tool call found"
        );
        let long = "x".repeat(OBSERVATION_HEAD_CHARS + 5);
        assert_eq!(head(&long).chars().count(), OBSERVATION_HEAD_CHARS + 1);
    }
}
