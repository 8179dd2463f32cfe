//! `swe-env view`: Write a static HTML report of a run or of trajectory files (`--serve ADDR` serves it).

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::view::{self, ViewConfig, ViewError};

/// Arguments of `swe-env view`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    swe-env view runs/RUN                      writes runs/RUN/view/index.html\n  \
    swe-env view runs/RUN -o report/           writes report/index.html and report/episodes/*.html\n  \
    swe-env view runs/RUN --serve 127.0.0.1:8080\n  \
    swe-env view runs/episodes/                a directory of trajectory files (run-episode)\n  \
    swe-env view a.jsonl b.jsonl -o report/    trajectory files\n\n\
    The pages are self-contained (no script, no external asset): open index.html from the file system or \
    serve it. Long texts are shown as a head and a tail with the size of the whole.")]
pub struct ViewArgs {
    /// A run directory (runs/RUN: results.jsonl, trajectories/, logs/), or trajectory .jsonl files and
    /// directories of them.
    #[arg(required = true, value_name = "RUN_DIR|FILE")]
    inputs: Vec<PathBuf>,
    /// Output directory, rewritten on every call [default: RUN_DIR/view/, or view/ beside the first trajectory
    /// file or in the directory given].
    #[arg(short = 'o', long = "out", value_name = "DIR")]
    out: Option<PathBuf>,
    /// After writing, serve the report at this address (e.g. 127.0.0.1:8080; port 0 picks a free one) until
    /// Ctrl-C or SIGTERM.
    #[arg(long, value_name = "ADDR")]
    serve: Option<SocketAddr>,
}

/// The output directory when `-o` is not given.
async fn default_out(first: &Path) -> PathBuf {
    let is_dir = tokio::fs::metadata(first).await.is_ok_and(|m| m.is_dir());
    if is_dir {
        first.join("view")
    } else {
        first
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join("view")
    }
}

/// A view error as the CLI's error: the input's fault is exit 2, the machine's exit 3.
pub(super) fn classify(error: ViewError) -> anyhow::Error {
    if error.is_input() {
        anyhow::Error::new(super::CliError::Input(anyhow::Error::new(error)))
    } else {
        anyhow::Error::new(error)
    }
}

/// Runs `swe-env view`.
pub async fn run(args: ViewArgs) -> anyhow::Result<ExitCode> {
    let report = view::load_report(&args.inputs).await.map_err(classify)?;
    let out = match args.out {
        Some(out) => out,
        None => default_out(&args.inputs[0]).await,
    };
    let pages = view::html::render_site(&report, &ViewConfig::default());
    view::write_site(&pages, &out).await.map_err(classify)?;
    for problem in &report.problems {
        eprintln!("warning: {problem}");
    }
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "wrote {} ({} rows, {} episode pages; {})",
        out.join("index.html").display(),
        report.rows.len(),
        report.episodes.len(),
        view::table::summary_line(&report.summary)
    )?;
    let Some(addr) = args.serve else {
        return Ok(ExitCode::SUCCESS);
    };
    // The address is the user's choice: one in use or not local is bad input (exit 2).
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|error| {
        super::error::usage(format!(
            "cannot listen on {addr}: {error}; choose another address or port (port 0 picks a free one)"
        ))
    })?;
    let bound = listener.local_addr()?;
    let mut signals = crate::server::shutdown::StopSignals::install();
    writeln!(stdout, "serving http://{bound}/")?;
    stdout.flush()?;
    let shutdown = async move {
        signals.recv().await;
    };
    view::serve::serve_pages(&pages, listener, shutdown)
        .await
        .with_context(|| format!("serving the report on {bound}"))?;
    eprintln!("stopped serving http://{bound}/");
    Ok(ExitCode::SUCCESS)
}
