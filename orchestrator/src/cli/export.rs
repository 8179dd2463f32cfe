//! `swe-env export`: trajectories → training formats, one JSON object per episode per line (loadable by HF
//! `datasets`). Torn last lines (crashed episodes) are tolerated; corrupt files are reported and skipped.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::trajectory::export::{to_cwm_transcript, to_openai_chat};
use crate::trajectory::{read_trajectory, EpisodeStatus};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// OpenAI chat messages (`system`, `user`, `assistant`, `tool` with tool_call_id for native calls).
    OpenaiChat,
    /// CWM transcript (roles `system`, `user`, `assistant`, `tool: NAME`).
    Cwm,
}

/// Arguments of `swe-env export`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env export runs/20261125-211430/trajectories --format openai-chat -o chat.jsonl\n  \
    swe-env export runs/*/trajectories --format cwm --only-status submitted -o cwm.jsonl"
)]
pub struct ExportArgs {
    /// Trajectory files or directories of them (`*.jsonl`).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::OpenaiChat)]
    format: ExportFormat,
    /// Output file (JSONL); standard output when absent.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Keep only episodes that ended with this status; unfinished episodes have no status.
    #[arg(long, value_enum)]
    only_status: Option<EpisodeStatus>,
    /// Keep only episodes whose grading resolved the task.
    #[arg(long)]
    only_resolved: bool,
}

/// The trajectory files named by `inputs`: files as given, directories' `*.jsonl` files, and for a run directory
/// (one with a `trajectories/` sub-directory) its trajectories. A missing input is bad input (exit 2).
fn trajectory_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if !input.exists() {
            return Err(super::error::usage(format!(
                "{} does not exist: give trajectory files, a trajectories directory or a run directory",
                input.display()
            )));
        }
        if input.is_dir() {
            let nested = input.join("trajectories");
            let dir = if nested.is_dir() {
                nested
            } else {
                input.clone()
            };
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let files = trajectory_files(&args.inputs)?;
    let mut out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                super::error::usage(format!(
                    "cannot create the output {}: {e} (check the directory exists and is writable)",
                    path.display()
                ))
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let (mut written, mut skipped, mut corrupt) = (0usize, 0usize, 0usize);
    for file in &files {
        let trajectory = match read_trajectory(file).await {
            Ok(trajectory) => trajectory,
            Err(error) => {
                eprintln!("skipping {}: {error}", file.display());
                corrupt += 1;
                continue;
            }
        };
        if !keep(&trajectory, args.only_status, args.only_resolved) {
            skipped += 1;
            continue;
        }
        let value = match args.format {
            ExportFormat::OpenaiChat => to_openai_chat(&trajectory),
            ExportFormat::Cwm => to_cwm_transcript(&trajectory),
        };
        match writeln!(out, "{value}") {
            Ok(()) => written += 1,
            // The reader went away (`| head`): stop quietly, as command-line tools do.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                return Ok(ExitCode::SUCCESS)
            }
            Err(error) => return Err(anyhow::Error::from(error).context("writing the export")),
        }
    }
    match out.flush() {
        Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::from(error).context("writing the export"))
        }
        _ => {}
    }
    eprintln!(
        "exported {written} episodes ({skipped} filtered out, {corrupt} unreadable) from {} files",
        files.len()
    );
    Ok(ExitCode::from(if corrupt == 0 {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    }))
}

fn keep(
    trajectory: &crate::trajectory::ReadTrajectory,
    only_status: Option<EpisodeStatus>,
    only_resolved: bool,
) -> bool {
    let end = trajectory.end.as_ref();
    if let Some(status) = only_status {
        if end.map(|e| e.status) != Some(status) {
            return false;
        }
    }
    if only_resolved {
        let resolved = end
            .and_then(|e| e.rewards.as_ref())
            .and_then(|r| r.get("resolved"))
            .and_then(serde_json::Value::as_bool);
        if resolved != Some(true) {
            return false;
        }
    }
    true
}
