//! `swe-env shell`: an interactive sandbox for a person — see exactly what an agent would see.
//!
//! Without `--task`, each input line is one bash command in the persistent shell. With `--task`, the input is
//! tool calls in the CWM text format; a call is sent when its closing `</tool>` line is typed (or a lone `.` line
//! sends whatever was typed, to see format errors). Observations print exactly as the model receives them, and
//! the session's trajectory is recorded like any episode's.
//!
//! Manners of a terminal: with `--task` the problem statement prints before the container starts; the prompt shows
//! the shell's working directory; Ctrl-C while a command runs interrupts that command only (the sandbox's timeout
//! escalation, reused) and the next command runs in the same shell; Ctrl-C at the prompt prints how to leave;
//! `exit`, Ctrl-D (end of input) or SIGTERM leave, and the container is removed on every way out.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::agent::builtin_prompt;
use crate::episode::{Action, EndInfo, Episode, EpisodeConfig, StartInfo, StepMeta};
use crate::server::shutdown::{StopSignal, StopSignals};
use crate::trajectory::EpisodeStatus;
use swe_env_sandbox::{CommandOutput, DockerEngine, Sandbox, SandboxConfig};

/// Arguments of `swe-env shell`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env shell --image swe-env/base:bookworm\n  \
    swe-env shell --task swe-env-fixtures__spans-1 --tasks images/fixtures/tasks.jsonl\n\n\
    Ctrl-C interrupts the running command (the shell stays; its status shows as 130); at the prompt it only \
    reminds you how to leave. `exit` or Ctrl-D leaves; the container is removed on the way out (also on SIGTERM, \
    exit code 130)."
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

/// What the person asked for at the prompt.
enum Input {
    /// A line of input.
    Line(String),
    /// End of input (Ctrl-D, or the pipe closed).
    End,
    /// Ctrl-C at the prompt.
    Interrupt,
    /// SIGTERM: leave now.
    Terminate,
}

/// The line of text telling a person at the prompt how to leave.
const LEAVE_HINT: &str = "(the shell is still open: type `exit` or press Ctrl-D to leave)";

/// Standard input, line by line, read on a thread of its own: a read blocked on a terminal cannot be cancelled, and
/// one on the runtime's blocking pool would keep the process from exiting (after SIGTERM at the prompt) until the
/// person pressed Enter. The thread ends with the input, or with the process.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if sender.blocking_send(line).is_err() {
                    break;
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the stdin reader; the session ends at once");
    }
    receiver
}

/// Reads the next input line, or the next stop signal, whichever comes first (both are cancel-safe).
async fn next_input(
    lines: &mut tokio::sync::mpsc::Receiver<std::io::Result<String>>,
    signals: &mut StopSignals,
) -> anyhow::Result<Input> {
    tokio::select! {
        line = lines.recv() => match line {
            Some(line) => Ok(Input::Line(line.context("reading stdin")?)),
            None => Ok(Input::End),
        },
        signal = signals.recv() => Ok(match signal {
            StopSignal::Interrupt => Input::Interrupt,
            StopSignal::Terminate => Input::Terminate,
        }),
    }
}

/// Writes `text` to stdout and flushes it; a closed stdout is not an error worth stopping the session for.
fn say(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes one line to stderr without panicking when stderr is closed (a test may stop reading it).
fn note(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

pub async fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    // Installed first: a Ctrl-C or SIGTERM from here on never kills the process with a container alive.
    let mut signals = StopSignals::install();
    // Nothing exists yet: a stop signal while connecting just ends the command.
    let engine = tokio::select! {
        engine = DockerEngine::connect(Duration::from_secs(60)) => engine.context("connecting to Docker")?,
        _ = signals.recv() => {
            note("stopped while connecting to Docker; nothing was created");
            return Ok(ExitCode::from(super::EXIT_INTERRUPTED));
        }
    };
    match (&args.task, &args.tasks) {
        (Some(task), Some(tasks)) => tool_mode(&engine, &args, task, tasks, &mut signals).await,
        _ => raw_mode(&engine, &args, &mut signals).await,
    }
}

/// Runs a start-up step that creates a container to its end even when a stop signal comes meanwhile (dropping it
/// half-way could leave the container behind); returns its result and whether a signal came, so the caller removes
/// what was made and leaves.
async fn finish_despite_signals<T>(
    work: impl std::future::Future<Output = T>,
    signals: &mut StopSignals,
) -> (T, bool) {
    tokio::pin!(work);
    let mut stopped = false;
    loop {
        tokio::select! {
            biased;
            result = &mut work => return (result, stopped),
            _ = signals.recv() => {
                if !stopped {
                    note("stopping: waiting for the container to start, to remove it");
                }
                stopped = true;
            }
        }
    }
}

/// Runs `work` to completion; each SIGTERM / Ctrl-C meanwhile calls `interrupt` (which stops the running command
/// with the sandbox's timeout escalation, the shell staying). Returns the result and the strongest signal seen
/// (SIGTERM wins over a Ctrl-C: the session ends after this command).
async fn interruptible<T>(
    work: impl std::future::Future<Output = T>,
    signals: &mut StopSignals,
    interrupt: impl Fn(),
) -> (T, Option<StopSignal>) {
    tokio::pin!(work);
    let mut stopped_by = None;
    loop {
        tokio::select! {
            // The work first, so it is under way (and reachable by an interrupt) before a signal is handled.
            biased;
            result = &mut work => return (result, stopped_by),
            signal = signals.recv() => {
                if stopped_by != Some(StopSignal::Terminate) {
                    stopped_by = Some(signal);
                }
                interrupt();
            }
        }
    }
}

/// The status line after a raw-mode command: its exit code (130 when Ctrl-C interrupted it), flags, duration.
fn status_line(out: &CommandOutput, interrupted: bool) -> String {
    let code = if interrupted {
        super::EXIT_INTERRUPTED.to_string()
    } else {
        out.exit_code.map_or("-".to_owned(), |c| c.to_string())
    };
    let mut flags = String::new();
    if interrupted {
        flags.push_str(", interrupted");
    } else if out.timed_out {
        flags.push_str(", timed out");
    }
    if out.truncated {
        flags.push_str(", truncated");
    }
    if out.restarted {
        flags.push_str(", shell restarted");
    }
    format!("[exit {code}{flags} in {} ms]\n", out.duration.as_millis())
}

async fn raw_mode(
    engine: &DockerEngine,
    args: &ShellArgs,
    signals: &mut StopSignals,
) -> anyhow::Result<ExitCode> {
    let episode_id = format!("shell-{}", std::process::id());
    let config = SandboxConfig {
        workdir: args.workdir.clone(),
        ..SandboxConfig::default()
    };
    let (created, stopped) = finish_despite_signals(
        engine.create_sandbox(&args.image, &episode_id, config),
        signals,
    )
    .await;
    let sandbox = created.context("opening the sandbox")?;
    if stopped {
        sandbox.remove().await.context("removing the sandbox")?;
        return Ok(ExitCode::from(super::EXIT_INTERRUPTED));
    }
    note(&format!(
        "sandbox ready: container {} (image {}); one bash command per line, Ctrl-C interrupts it, `exit` or Ctrl-D to quit",
        sandbox.id(),
        args.image
    ));
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut lines = stdin_lines();
    let mut code = ExitCode::SUCCESS;
    let outcome: anyhow::Result<()> = loop {
        let cwd = sandbox.cwd().await.unwrap_or_default();
        say(&format!("{cwd} $ "));
        let line = match next_input(&mut lines, signals).await {
            Ok(Input::Line(line)) => line,
            Ok(Input::End) => {
                say("\n");
                break Ok(());
            }
            Ok(Input::Interrupt) => {
                say(&format!("^C {LEAVE_HINT}\n"));
                continue;
            }
            Ok(Input::Terminate) => {
                note("SIGTERM: leaving; removing the container");
                code = ExitCode::from(super::EXIT_INTERRUPTED);
                break Ok(());
            }
            Err(error) => break Err(error),
        };
        if line.trim() == "exit" {
            break Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        // Ctrl-C or SIGTERM while the command runs interrupts it (the sandbox's timeout escalation); the shell stays.
        let (result, stopped_by) =
            interruptible(sandbox.run_command(&line, timeout), signals, || {
                sandbox.interrupt_command()
            })
            .await;
        match result {
            Ok(out) => {
                let mut text = String::from_utf8_lossy(&out.output).into_owned();
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                // A command that ended on its own just as the signal came keeps its own status.
                let interrupted = stopped_by.is_some() && out.timed_out;
                if interrupted {
                    text.push_str("^C\n");
                }
                text.push_str(&status_line(&out, interrupted));
                say(&text);
            }
            Err(error) => break Err(anyhow::Error::from(error).context("running the command")),
        }
        if stopped_by == Some(StopSignal::Terminate) {
            note("SIGTERM: leaving; removing the container");
            code = ExitCode::from(super::EXIT_INTERRUPTED);
            break Ok(());
        }
    };
    sandbox.remove().await.context("removing the sandbox")?;
    outcome?;
    Ok(code)
}

/// Prints the task before its container starts: id, repository, base commit and the problem statement.
fn print_task(instance: &swe_env_grading::dataset::Instance) {
    say(&format!(
        "Task {} (repository {} at {})\n\nProblem statement:\n{}\n\n",
        instance.instance_id,
        instance.repo,
        instance.base_commit,
        instance.problem_statement.trim_end()
    ));
}

async fn tool_mode(
    engine: &DockerEngine,
    args: &ShellArgs,
    task: &str,
    tasks: &str,
    signals: &mut StopSignals,
) -> anyhow::Result<ExitCode> {
    let dataset = crate::datasets::load_source(tasks)
        .await
        .with_context(|| format!("loading tasks from {tasks}"))?;
    for error in &dataset.errors {
        note(&format!("warning: skipped a bad row: {error}"));
    }
    let Some(instance) = dataset.get(task).cloned() else {
        note(&format!(
            "error: task {task} is not in {tasks} ({} tasks loaded)",
            dataset.instances.len()
        ));
        return Ok(ExitCode::from(super::EXIT_USAGE));
    };
    print_task(&instance);
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
    let (started, stopped) = finish_despite_signals(
        Episode::start(engine, &episode_id, instance, config, info),
        signals,
    )
    .await;
    let mut episode = started.context("starting the episode")?;
    if stopped {
        episode
            .finish(EndInfo::status(EpisodeStatus::Cancelled))
            .await
            .context("ending the episode")?;
        return Ok(ExitCode::from(super::EXIT_INTERRUPTED));
    }
    let sandbox = episode.sandbox().cloned();
    let sandbox_id = sandbox
        .as_ref()
        .map(|s| s.id().to_owned())
        .unwrap_or_default();
    note(&format!(
        "episode ready: container {sandbox_id}, trajectory {}; type tool calls (`<tool: bash>` … `</tool>`), `exit` or Ctrl-D to quit",
        episode.trajectory_path().display()
    ));
    let mut lines = stdin_lines();
    let mut pending = String::new();
    let mut cancelled = false;
    let outcome: anyhow::Result<()> = loop {
        if pending.is_empty() {
            let cwd = match &sandbox {
                Some(sandbox) => sandbox.cwd().await.unwrap_or_default(),
                None => String::new(),
            };
            say(&format!("{cwd} tool> "));
        }
        let line = match next_input(&mut lines, signals).await {
            Ok(Input::Line(line)) => line,
            Ok(Input::End) => {
                say("\n");
                break Ok(());
            }
            Ok(Input::Interrupt) => {
                // As a terminal drops the line being typed: the partial call is discarded.
                let dropped = if pending.is_empty() {
                    ""
                } else {
                    "the unfinished call is discarded "
                };
                pending.clear();
                say(&format!("^C {dropped}{LEAVE_HINT}\n"));
                continue;
            }
            Ok(Input::Terminate) => {
                note("SIGTERM: leaving; ending the episode and removing the container");
                cancelled = true;
                break Ok(());
            }
            Err(error) => break Err(error),
        };
        if pending.is_empty() && line.trim() == "exit" {
            break Ok(());
        }
        let send = line.trim() == "</tool>" || line.trim() == ".";
        if line.trim() != "." {
            pending.push_str(&line);
            pending.push('\n');
        }
        if !send {
            continue;
        }
        let action = Action::Text(
            std::mem::take(&mut pending)
                .trim_end_matches('\n')
                .to_owned(),
        );
        // Ctrl-C or SIGTERM during a tool call interrupts its command (the sandbox's timeout escalation: the
        // observation reads as a timeout, as the model would see one); the session stays unless SIGTERM.
        let (stepped, stopped_by) =
            interruptible(episode.step(action, StepMeta::default()), signals, || {
                note("^C interrupting the running command");
                if let Some(sandbox) = &sandbox {
                    sandbox.interrupt_command();
                }
            })
            .await;
        if stopped_by == Some(StopSignal::Terminate) {
            if let Ok(outcome) = &stepped {
                say(&format!("{}\n", outcome.observation));
            }
            note("SIGTERM: leaving; ending the episode and removing the container");
            cancelled = true;
            break Ok(());
        }
        match stepped {
            Ok(outcome) => {
                say(&format!("{}\n", outcome.observation));
                if outcome.done {
                    break Ok(());
                }
            }
            Err(error) => break Err(anyhow::Error::from(error).context("running the step")),
        }
    };
    let status = if cancelled {
        EpisodeStatus::Cancelled
    } else if episode.submission().is_some() {
        EpisodeStatus::Submitted
    } else {
        EpisodeStatus::Closed
    };
    episode
        .finish(EndInfo::status(status))
        .await
        .context("ending the episode")?;
    outcome?;
    Ok(if cancelled {
        ExitCode::from(super::EXIT_INTERRUPTED)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(exit_code: Option<i32>, timed_out: bool) -> CommandOutput {
        CommandOutput {
            output: Vec::new(),
            exit_code,
            timed_out,
            truncated: false,
            restarted: false,
            duration: Duration::from_millis(12),
        }
    }

    #[test]
    fn the_status_line_shows_130_for_an_interrupted_command_and_the_real_code_otherwise() {
        assert_eq!(
            status_line(&output(None, true), true),
            "[exit 130, interrupted in 12 ms]\n"
        );
        assert_eq!(
            status_line(&output(None, true), false),
            "[exit -, timed out in 12 ms]\n"
        );
        assert_eq!(
            status_line(&output(Some(2), false), false),
            "[exit 2 in 12 ms]\n"
        );
    }
}
