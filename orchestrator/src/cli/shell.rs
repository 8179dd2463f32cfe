//! `swe-env shell`: an interactive sandbox for a person — see exactly what an agent would see.
//!
//! Without `--task`, each input line is one bash command in the persistent shell. With `--task`, the input is
//! tool calls in the CWM text format; a call is sent when its closing `</tool>` line is typed (or a lone `.` line
//! sends whatever was typed, to see format errors). Observations print exactly as the model receives them, and
//! the session's trajectory is recorded like any episode's.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::agent::builtin_prompt;
use crate::episode::{Action, EndInfo, Episode, EpisodeConfig, StartInfo, StepMeta};
use crate::trajectory::EpisodeStatus;
use swe_env_sandbox::{DockerEngine, SandboxConfig};

/// Arguments of `swe-env shell`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env shell --image swe-env/base:bookworm\n  \
    swe-env shell --task swe-env-fixtures__spans-1 --tasks images/fixtures/tasks.jsonl"
)]
pub struct ShellArgs {
    /// Image to open in raw mode (each input line is one bash command).
    #[arg(long, default_value = "swe-env/base:bookworm")]
    image: String,
    /// Working directory the raw shell starts in.
    #[arg(long, default_value = "/")]
    workdir: String,
    /// Task id to open in tool mode (input is `<tool: NAME>` … `</tool>` calls).
    #[arg(long, requires = "tasks")]
    task: Option<String>,
    /// Tasks holding `--task`: `fixtures`, `verified`/`lite`/`full`, or a JSONL/JSON/parquet file.
    #[arg(long)]
    tasks: Option<String>,
    /// Where the trajectory of a tool-mode session is written.
    #[arg(long, default_value = "runs/shell")]
    trajectory_dir: PathBuf,
    /// Per-command timeout in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub async fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    match (&args.task, &args.tasks) {
        (Some(task), Some(tasks)) => tool_mode(&engine, &args, task, tasks).await,
        _ => raw_mode(&engine, &args).await,
    }
}

async fn raw_mode(engine: &DockerEngine, args: &ShellArgs) -> anyhow::Result<ExitCode> {
    let episode_id = format!("shell-{}", std::process::id());
    let config = SandboxConfig {
        workdir: args.workdir.clone(),
        ..SandboxConfig::default()
    };
    let sandbox = engine
        .create_sandbox(&args.image, &episode_id, config)
        .await
        .context("opening the sandbox")?;
    eprintln!(
        "sandbox ready: container {} (image {}); one bash command per line, Ctrl-D to quit",
        sandbox.id(),
        args.image
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let outcome = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(()),
            Err(error) => break Err(anyhow::Error::from(error).context("reading stdin")),
        };
        match sandbox.run_command(&line, timeout).await {
            Ok(out) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&out.output);
                let _ = writeln!(
                    stdout,
                    "[exit {}{}{}{} in {} ms]",
                    out.exit_code.map_or("-".to_owned(), |c| c.to_string()),
                    if out.timed_out { ", timed out" } else { "" },
                    if out.truncated { ", truncated" } else { "" },
                    if out.restarted {
                        ", shell restarted"
                    } else {
                        ""
                    },
                    out.duration.as_millis()
                );
                let _ = stdout.flush();
            }
            Err(error) => break Err(anyhow::Error::from(error).context("running the command")),
        }
    };
    sandbox.remove().await.context("removing the sandbox")?;
    outcome?;
    Ok(ExitCode::SUCCESS)
}

async fn tool_mode(
    engine: &DockerEngine,
    args: &ShellArgs,
    task: &str,
    tasks: &str,
) -> anyhow::Result<ExitCode> {
    let dataset = crate::datasets::load_source(tasks)
        .await
        .with_context(|| format!("loading tasks from {tasks}"))?;
    for error in &dataset.errors {
        eprintln!("warning: skipped a bad row: {error}");
    }
    let Some(instance) = dataset.get(task).cloned() else {
        eprintln!(
            "error: task {task} is not in {tasks} ({} tasks loaded)",
            dataset.instances.len()
        );
        return Ok(ExitCode::from(super::EXIT_USAGE));
    };
    let mut config = EpisodeConfig {
        trajectory_dir: args.trajectory_dir.clone(),
        ..EpisodeConfig::default()
    };
    config.tools.cmd_timeout = Duration::from_secs(args.timeout_secs);
    let episode_id = format!("shell-{}-{}", task, std::process::id());
    let info = StartInfo {
        model: None,
        prompt: builtin_prompt(&instance.problem_statement),
    };
    let mut episode = Episode::start(engine, &episode_id, instance, config, info)
        .await
        .context("starting the episode")?;
    let sandbox_id = episode
        .sandbox()
        .map(|s| s.id().to_owned())
        .unwrap_or_default();
    eprintln!(
        "episode ready: container {sandbox_id}, trajectory {}; type tool calls (`<tool: bash>` … `</tool>`), Ctrl-D to quit",
        episode.trajectory_path().display()
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut pending = String::new();
    let outcome: anyhow::Result<()> = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(()),
            Err(error) => break Err(anyhow::Error::from(error).context("reading stdin")),
        };
        let send = line.trim() == "</tool>" || line.trim() == ".";
        if line.trim() != "." {
            pending.push_str(&line);
            pending.push('\n');
        }
        if !send {
            continue;
        }
        let action = std::mem::take(&mut pending);
        match episode
            .step(
                Action::Text(action.trim_end_matches('\n').to_owned()),
                StepMeta::default(),
            )
            .await
        {
            Ok(outcome) => {
                let mut stdout = std::io::stdout().lock();
                let _ = writeln!(stdout, "{}", outcome.observation);
                let _ = stdout.flush();
                if outcome.done {
                    break Ok(());
                }
            }
            Err(error) => break Err(anyhow::Error::from(error).context("running the step")),
        }
    };
    let status = if episode.submission().is_some() {
        EpisodeStatus::Submitted
    } else {
        EpisodeStatus::Closed
    };
    episode
        .finish(EndInfo::status(status))
        .await
        .context("ending the episode")?;
    outcome?;
    Ok(ExitCode::SUCCESS)
}
