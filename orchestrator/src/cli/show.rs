//! `swe-env show`: Print a run index or one episode's steps as terminal tables.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::view::table::{self, TableStyle};

/// Arguments of `swe-env show`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    swe-env show runs/RUN                                   the index: one row per instance, then the counts\n  \
    swe-env show runs/RUN swe-env-fixtures__spans-1         that instance's steps\n  \
    swe-env show runs/RUN --json | jq '.rows[] | select(.status == \"error\")'\n  \
    swe-env show runs/episodes/                             a directory of trajectory files\n\n\
    Text cells show the first line, cut to the terminal's width (100 characters when not a terminal); \
    --json has the whole texts.")]
pub struct ShowArgs {
    /// A run directory (runs/RUN), a trajectory .jsonl file, or a directory of them.
    #[arg(value_name = "RUN_DIR")]
    input: PathBuf,
    /// Show this instance's steps (or an episode's, by episode id) instead of the index.
    #[arg(value_name = "INSTANCE")]
    instance: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The terminal's width when standard output is one.
fn terminal_width() -> Option<u16> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let columns = rustix::termios::tcgetwinsize(&stdout)
        .map(|size| size.ws_col)
        .unwrap_or(0);
    Some(if columns == 0 { 100 } else { columns })
}

/// Writes `text` to standard output; a closed pipe (`| head`) ends the command quietly.
fn emit(text: &str) -> anyhow::Result<Option<ExitCode>> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(None),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
            Ok(Some(ExitCode::from(super::EXIT_OUTPUT_CLOSED)))
        }
        Err(error) => Err(error.into()),
    }
}

/// Runs `swe-env show`.
pub async fn run(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let report = crate::view::load_report(std::slice::from_ref(&args.input))
        .await
        .map_err(super::view::classify)?;
    let style = TableStyle {
        terminal_width: terminal_width(),
    };
    let text = match &args.instance {
        None if args.json => format!("{:#}\n", table::index_json(&report)),
        None => table::index_table(&report, style),
        Some(key) => {
            let episode = table::find_episode(&report, key).map_err(super::view::classify)?;
            if args.json {
                format!("{:#}\n", table::steps_json(episode))
            } else {
                table::steps_table(episode, style)
            }
        }
    };
    if let Some(code) = emit(&text)? {
        return Ok(code);
    }
    for problem in &report.problems {
        eprintln!("warning: {problem}");
    }
    Ok(ExitCode::SUCCESS)
}
