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
use crate::config::ConfigFile;
use crate::episode::{EndInfo, Episode, EpisodeConfig};
use crate::trajectory::{EpisodeStatus, StepRecord};
use swe_env_sandbox::DockerEngine;

/// How many characters of an observation the live view prints.
const OBSERVATION_HEAD_CHARS: usize = 100;

/// Arguments of `swe-env run-episode`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  swe-env run-episode --task swe-env-fixtures__spans-1 \
    --tasks images/fixtures/tasks.jsonl --model-url http://127.0.0.1:8000/v1 --model my-model --mode chat-tools\n  \
    swe-env run-episode --task swe-env-fixtures__spans-1 --tasks fixtures --config swe-env.yaml --print-config"
)]
pub struct RunEpisodeArgs {
    /// Task id (`instance_id`) to run.
    #[arg(long, required_unless_present = "print_config")]
    task: Option<String>,
    /// Tasks holding `--task`: `fixtures`, `verified`/`lite`/`full`, or a JSONL/JSON/parquet file.
    #[arg(long, required_unless_present = "print_config")]
    tasks: Option<String>,
    /// Config file (YAML: sections `model`, `agent`, `budgets`, `sandbox`; other sections are ignored); flags
    /// override it. The effective config is written next to the trajectory (`<episode id>.config.yaml`).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (JSON, which is YAML: usable as --config) and exit without touching
    /// Docker or the model.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    model: ModelArgs,
    /// Turn budget [default: 128].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_turns: Option<u32>,
    /// Context window, tokens: the prompt tells the model this number and the episode stops at it [default: the
    /// window the model endpoint serves, else 131072].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    context_tokens: Option<u64>,
    /// Wall-clock limit of the episode, seconds [default: 3600].
    #[arg(long, alias = "wall-clock-secs", value_parser = clap::value_parser!(u64).range(1..))]
    episode_timeout: Option<u64>,
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

/// The episode settings: defaults, then the config file's `budgets` and `sandbox`, then the flags. The context
/// window is set later (it may come from the endpoint).
fn episode_config(args: &RunEpisodeArgs, file: &ConfigFile, mode: ApiMode) -> EpisodeConfig {
    let mut config = EpisodeConfig {
        trajectory_dir: args.trajectory_dir.clone(),
        tool_format: mode.tool_format(),
        ..EpisodeConfig::default()
    };
    file.sandbox.apply(&mut config);
    if let Some(max_turns) = args.max_turns.or(file.budgets.max_turns) {
        config.max_turns = max_turns;
    }
    if let Some(secs) = args.episode_timeout.or(file.budgets.episode_timeout) {
        config.wall_clock = Duration::from_secs(secs);
    }
    config
}

/// The effective configuration of an episode (printed by `--print-config`, written next to the trajectory).
fn effective_config(
    model: &ModelArgs,
    agent: &crate::agent::ModelAgentConfig,
    episode: &EpisodeConfig,
    context_tokens: Option<u64>,
) -> ConfigFile {
    ConfigFile {
        model: model.model_section(),
        agent: Some(agent.clone()),
        budgets: crate::config::BudgetsSection {
            max_turns: Some(episode.max_turns),
            context_tokens,
            episode_timeout: Some(episode.wall_clock.as_secs()),
        },
        sandbox: crate::config::SandboxSection::of(episode),
        ..ConfigFile::default()
    }
}

fn usage_error(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("error: {message}");
    Ok(ExitCode::from(EXIT_USAGE))
}

/// `verbose` is the global `-v` count: at 1 or more the live view prints each model reply in full.
pub async fn run(mut args: RunEpisodeArgs, verbose: u8) -> anyhow::Result<ExitCode> {
    let file = match crate::config::Loaded::load(args.config.as_deref()) {
        Ok(loaded) => loaded.file,
        Err(error) => return usage_error(error),
    };
    if file.budgets.context_tokens == Some(0) {
        return usage_error("budgets.context_tokens is 0: give at least 1 (or leave it out)");
    }
    args.model.apply_file(&file);
    let agent = match args.model.agent_config() {
        Ok(agent) => agent,
        Err(error) => return usage_error(format!("{error:#}")),
    };
    let mut config = episode_config(&args, &file, agent.mode);
    let configured_context = args.context_tokens.or(file.budgets.context_tokens);
    let mut effective = effective_config(&args.model, &agent, &config, configured_context);
    if args.print_config {
        println!("{}", serde_json::to_string_pretty(&effective)?);
        return Ok(ExitCode::from(EXIT_OK));
    }
    let (Some(task), Some(tasks)) = (args.task.clone(), args.tasks.clone()) else {
        return usage_error("give --task ID and --tasks SOURCE (or --print-config)");
    };
    let dataset = match crate::datasets::load_source(&tasks).await {
        Ok(dataset) => dataset,
        Err(error) => return usage_error(format!("loading tasks: {error}")),
    };
    for error in &dataset.errors {
        eprintln!("warning: skipped a bad row: {error}");
    }
    let Some(instance) = dataset.get(&task).cloned() else {
        return usage_error(format!(
            "task {task} is not in {tasks} ({} tasks loaded)",
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
    let served = super::model_args::served_context_window(&client_config).await;
    let (tokens, source, warning) =
        crate::config::context_window(args.context_tokens, file.budgets.context_tokens, served);
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    config.context_tokens = tokens;
    effective.budgets.context_tokens = Some(tokens);
    let mut info = match start_info_for(&instance, &agent, &config) {
        Ok(info) => info,
        Err(error) => return usage_error(format!("rendering the prompt: {error}")),
    };
    add_client_info(&mut info, &client_config);
    if let Some(serde_json::Value::Object(model)) = info.model.as_mut() {
        model.insert("context_tokens_source".into(), json!(source.as_str()));
    }
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    let episode_id = args
        .episode_id
        .clone()
        .unwrap_or_else(|| format!("run-{task}-{}", std::process::id()));
    let config_path = config
        .trajectory_dir
        .join(format!("{episode_id}.config.yaml"));
    let mut episode = Episode::start(&engine, &episode_id, instance, config, info)
        .await
        .context("starting the episode")?;
    let text = format!("{}\n", serde_json::to_string_pretty(&effective)?);
    tokio::fs::write(&config_path, text)
        .await
        .with_context(|| format!("writing the effective config {}", config_path.display()))?;
    eprintln!(
        "episode {episode_id}: task {task}, model {} ({}), trajectory {}",
        args.model.model,
        agent.mode.as_str(),
        episode.trajectory_path().display()
    );

    let (sender, receiver) = mpsc::channel(64);
    let view = LiveView {
        to_stderr: args.json,
        full_replies: verbose > 0,
    };
    let printer = tokio::spawn(print_events(receiver, view));
    let outcome = tokio::select! {
        outcome = run_model_agent(&mut episode, &client, &agent, Some(sender)) => Some(outcome),
        _ = tokio::signal::ctrl_c() => None,
        never = show_model_waits(&client, &args.model.model) => match never {},
    };
    clear_waiting_line();
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
        "instance_id": task,
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
        "cost_usd": agent_outcome.as_ref().and_then(|o| o.cost_usd),
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

/// How the live view prints.
#[derive(Debug, Clone, Copy)]
struct LiveView {
    /// Print to stderr (the result goes to stdout as JSON).
    to_stderr: bool,
    /// Print each model reply in full (`-v`), not only a one-line summary of its action.
    full_replies: bool,
}

/// Prints the live view: one line per model call and per step (stderr when the result goes to stdout as JSON),
/// and with `full_replies` each reply in full.
async fn print_events(mut receiver: mpsc::Receiver<StepEvent>, view: LiveView) {
    while let Some(event) = receiver.recv().await {
        let mut lines: Vec<String> = Vec::new();
        if view.full_replies {
            lines.extend(full_reply(&event));
        }
        lines.extend(event_line(&event));
        if lines.is_empty() {
            continue;
        }
        clear_waiting_line();
        let text = lines.join("\n");
        if view.to_stderr {
            eprintln!("{text}");
        } else {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{text}");
            let _ = stdout.flush();
        }
    }
}

/// The model's whole reply behind a step (separated reasoning, text beside a native call, the action as sent) or
/// its final answer, between marker lines.
fn full_reply(event: &StepEvent) -> Option<String> {
    let (title, parts) = match event {
        StepEvent::Step { record, .. } => (
            format!("model reply (step {})", record.step_idx),
            vec![
                ("reasoning", record.reasoning.clone()),
                ("content", record.content.clone()),
                ("action", Some(record.raw_action.clone())),
            ],
        ),
        StepEvent::Finished {
            final_answer: Some(answer),
            ..
        } => (
            "model reply (final answer)".to_owned(),
            vec![("answer", Some(answer.clone()))],
        ),
        _ => return None,
    };
    let mut text = format!("----- {title} -----");
    for (label, part) in parts {
        if let Some(part) = part.filter(|part| !part.is_empty()) {
            text.push_str(&format!("\n[{label}]\n{}", part.trim_end()));
        }
    }
    text.push_str("\n-----");
    Some(text)
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
            "step {}: {}{}{} -> {}",
            record.step_idx,
            action_summary(record),
            if *submitted { " [submitted]" } else { "" },
            record
                .tokens
                .episode_cost_usd
                .map(|cost| format!(" [${cost:.4} so far]"))
                .unwrap_or_default(),
            head(observation)
        )),
        StepEvent::Finished { .. } => None,
    }
}

/// When a call is first reported on stderr that is not a terminal.
const WAIT_FIRST_REPORT: Duration = Duration::from_secs(10);
/// How often a call still in flight is reported again on stderr that is not a terminal.
const WAIT_REPORT_EVERY: Duration = Duration::from_secs(30);
/// How often the waiting display looks at the client.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Whether an updating "waiting" line is on the terminal now (cleared before any other output).
static WAITING_LINE_SHOWN: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Erases the updating "waiting" line, if one is shown.
fn clear_waiting_line() {
    if WAITING_LINE_SHOWN.swap(false, std::sync::atomic::Ordering::Relaxed) {
        eprint!("\r\x1b[2K");
    }
}

fn waiting_line(model: &str, endpoint: &str, elapsed: Duration) -> String {
    format!(
        "waiting for model {model} at {endpoint}: {} s",
        elapsed.as_secs()
    )
}

/// Shows on stderr that a model call is in flight, until dropped: on a terminal an updating line; otherwise one
/// line once the call has taken [`WAIT_FIRST_REPORT`], then one every [`WAIT_REPORT_EVERY`].
async fn show_model_waits(client: &ModelClient, model: &str) -> std::convert::Infallible {
    use std::io::IsTerminal;
    let terminal = std::io::stderr().is_terminal();
    // The elapsed time of the call last seen, and the elapsed time at which it was last reported.
    let mut last_seen = Duration::ZERO;
    let mut last_reported: Option<Duration> = None;
    loop {
        tokio::time::sleep(WAIT_POLL).await;
        let Some(call) = client
            .calls_in_flight()
            .into_iter()
            .max_by_key(|call| call.elapsed)
        else {
            clear_waiting_line();
            last_reported = None;
            last_seen = Duration::ZERO;
            continue;
        };
        if call.elapsed < last_seen {
            last_reported = None;
        }
        last_seen = call.elapsed;
        let line = waiting_line(model, &call.endpoint, call.elapsed);
        if terminal {
            if call.elapsed >= Duration::from_secs(1) {
                eprint!("\r\x1b[2K{line}");
                WAITING_LINE_SHOWN.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            continue;
        }
        let due = match last_reported {
            None => call.elapsed >= WAIT_FIRST_REPORT,
            Some(at) => call.elapsed >= at + WAIT_REPORT_EVERY,
        };
        if due {
            eprintln!("{line}");
            last_reported = Some(call.elapsed);
        }
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
    fn full_replies_show_every_part_and_the_waiting_line_names_model_and_endpoint() {
        let record: StepRecord = serde_json::from_value(json!({
            "step_idx": 2, "raw_action": "<tool: bash>\nls\n</tool>\n", "reasoning": "think first",
            "observation": "x", "tool_ms": 1, "at": "2026-01-01T00:00:00.000Z"
        }))
        .unwrap();
        let event = StepEvent::Step {
            record,
            observation: "x".into(),
            submitted: false,
        };
        assert_eq!(
            full_reply(&event).unwrap(),
            "----- model reply (step 2) -----\n[reasoning]\nthink first\n[action]\n<tool: bash>\nls\n</tool>\n-----"
        );
        assert_eq!(
            waiting_line("m", "http://127.0.0.1:1/v1", Duration::from_millis(12_900)),
            "waiting for model m at http://127.0.0.1:1/v1: 12 s"
        );
    }

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
