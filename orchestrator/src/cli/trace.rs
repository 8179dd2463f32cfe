//! `swe-env trace`: Python execution traces in the CWM format, of one task's tests (`--task`) or of one entry point
//! of any file (`--image --file --entry`). Traces go to `--out` (JSON lines, each trace with its `"cwm"` string) or
//! to stdout (`--format json|cwm`); items to `--items`; a summary table with throughput lines (or `--json`) at the end.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use swe_env_sandbox::DockerEngine;
use tokio_util::sync::CancellationToken;

use super::error::{usage, CliError};
use super::trace_harvest;
use super::{EXIT_INTERRUPTED, EXIT_OK};
use crate::task::{image_for, OFFICIAL_IMAGE_TEMPLATE};
use crate::trace::format::{render, LocalsStyle, Trace};
use crate::trace::run::{TraceOptions, TraceRun, TraceState};

/// The tracer's caps and filters, the splitter's and the container's settings: shared by `swe-env trace` and
/// `swe-env trace harvest` (flattened).
#[derive(Debug, Clone, clap::Args)]
pub struct CapsArgs {
    /// Directory inside the container whose code is traced (repeatable) [default: /testbed].
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<String>,
    /// Trace only files whose absolute path matches this fnmatch glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Do not trace files whose absolute path matches this fnmatch glob (repeatable; on top of site-packages,
    /// dist-packages and the standard library).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Files whose functions open no trace of their own (repeatable) [default: test files by the SWE-bench rule].
    #[arg(long, value_name = "GLOB")]
    pub entry_exclude: Vec<String>,
    /// Characters of one value's repr (longer ones are cut and end with `...`).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub max_repr: usize,
    /// Locals per frame.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub max_locals: usize,
    /// Events per test; past it tracing stops for that test (the test keeps running).
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub max_events: u64,
    /// Seconds of tracing per test; past it tracing stops for that test (the test keeps running).
    #[arg(long = "time-cap", default_value_t = 30, value_name = "SECONDS")]
    pub time_cap_secs: u64,
    /// Bytes of the whole events file (at most 60 MiB).
    #[arg(long, default_value_t = 48 << 20, value_name = "N")]
    pub max_bytes: u64,
    /// Frames of one trace; longer traces are dropped and counted `too_long`.
    #[arg(long, default_value_t = 2_000, value_name = "N")]
    pub max_frames: usize,
    /// Frames of all the traces one test keeps (a deep recursion makes one trace per level, each holding every
    /// frame under it); later new traces of that test are dropped and counted `over_budget`.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub max_test_frames: u64,
    /// Seconds the whole traced run may take in its container.
    #[arg(long = "timeout", default_value_t = 1_800, value_name = "SECONDS")]
    pub timeout_secs: u64,
    /// How the CWM rendering writes locals: diff (`".."` for a value unchanged since the previous frame) or full.
    #[arg(long, value_enum, default_value_t = LocalsStyle::Diff)]
    pub locals: LocalsStyle,
    /// Which code the tests run against: gold (gold + test patch) or base (test patch only).
    #[arg(long, value_enum, default_value_t = TraceState::Gold)]
    pub state: TraceState,
}

impl CapsArgs {
    /// The options these flags give (check them with [`TraceOptions::validate`]).
    pub fn options(&self) -> TraceOptions {
        TraceOptions {
            roots: self.roots.clone(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            max_repr: self.max_repr,
            max_locals: self.max_locals,
            max_events: self.max_events,
            time_cap_secs: self.time_cap_secs,
            max_bytes: self.max_bytes,
            max_frames: self.max_frames,
            max_test_frames: self.max_test_frames,
            entry_exclude: (!self.entry_exclude.is_empty()).then(|| self.entry_exclude.clone()),
            timeout_secs: self.timeout_secs,
            state: self.state,
        }
    }
}

/// `swe-env trace`.
#[derive(Debug, clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  \
    swe-env trace --task swe-env-fixtures__spans-1 --test tests/test_ops.py::test_merge_unsorted --format cwm\n  \
    swe-env trace --task swe-env-fixtures__spans-1 --out traces.jsonl --items items.jsonl\n  \
    swe-env trace --image swe-env/base:bookworm --file prog.py --entry 'main([3, 1, 2])' --out traces.jsonl"
)]
pub struct TraceArgs {
    /// `harvest`: trace a dataset's tests into shards.
    #[command(subcommand)]
    pub command: Option<TraceCommand>,
    /// Task id (`instance_id`) whose tests are traced.
    #[arg(long, conflicts_with_all = ["file", "entry", "python"])]
    pub task: Option<String>,
    /// Tasks holding `--task`: `fixtures`, `verified`/`lite`/`full`, or a JSONL/JSON/parquet file.
    #[arg(long, default_value = "fixtures", requires = "task")]
    pub tasks: String,
    /// Test node id to trace (repeatable) [default: the task's FAIL_TO_PASS tests].
    #[arg(long = "test", value_name = "NODEID", requires = "task")]
    pub tests: Vec<String>,
    /// Image to run in: required with --file; with --task it replaces the task's image.
    #[arg(long, value_name = "IMG")]
    pub image: Option<String>,
    /// Python file (on this machine) whose entry point is traced; copied into the container.
    #[arg(long, value_name = "F.py", requires_all = ["entry", "image"])]
    pub file: Option<PathBuf>,
    /// Python expression evaluated in the globals of --file with tracing on, e.g. `main([3, 1, 2])`.
    #[arg(long, value_name = "EXPR", requires = "file")]
    pub entry: Option<String>,
    /// Interpreter (name or path in the image) that runs --file [default: python3].
    #[arg(long, value_name = "PYTHON", requires = "file")]
    pub python: Option<String>,
    /// Write the traces here (JSON lines: each trace with its `"cwm"` string) instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Write the output-prediction items (function source + call → returned value) here (JSON lines).
    #[arg(long, value_name = "FILE")]
    pub items: Option<PathBuf>,
    /// What goes to stdout without --out: json (one trace a line) or cwm (the CWM strings, one a line).
    #[arg(long, value_enum, default_value_t = StdoutFormat::Json)]
    pub format: StdoutFormat,
    /// Print the summary as one JSON object on stdout (needs --out: without it the traces go to stdout).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub caps: CapsArgs,
}

/// What `swe-env trace` prints on stdout without `--out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StdoutFormat {
    /// One trace a line as JSON (the structured trace plus its `"cwm"` string).
    Json,
    /// The CWM strings only, one a line (JSON-escaped newlines are not used: each string is printed as is, with a
    /// blank line after it).
    Cwm,
}

/// `swe-env trace` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum TraceCommand {
    /// Trace the FAIL_TO_PASS and PASS_TO_PASS tests of every task of a dataset (resumable, sharded).
    ///
    /// Example: `swe-env trace harvest --tasks fixtures --out traces`.
    Harvest(Box<trace_harvest::HarvestArgs>),
}

/// The summary of one `swe-env trace` (`--json`, and the table's figures).
#[derive(Debug, Serialize)]
struct Summary {
    mode: &'static str,
    task: Option<String>,
    image: String,
    python: String,
    tests: Vec<crate::trace::split::TestOutcome>,
    traces: u64,
    frames: u64,
    duplicates: u64,
    too_long: u64,
    over_budget: u64,
    incomplete: u64,
    missing_source: u64,
    items: usize,
    caps: Vec<String>,
    tracer_errors: Vec<String>,
    tracer_finished: bool,
    exit_code: Option<i64>,
    timed_out: bool,
    events_bytes: u64,
    jsonl_bytes: u64,
    elapsed_secs: f64,
    traces_per_sec: f64,
    frames_per_sec: f64,
    bytes_per_frame: f64,
    out: Option<String>,
    items_out: Option<String>,
}

/// Runs `swe-env trace`.
pub async fn run(args: TraceArgs) -> anyhow::Result<ExitCode> {
    if let Some(TraceCommand::Harvest(harvest)) = args.command {
        return trace_harvest::run(*harvest).await;
    }
    if args.json && args.out.is_none() {
        return Err(usage(
            "--json prints the summary on stdout, where the traces go without --out: give --out FILE too",
        ));
    }
    let opts = args.caps.options();
    opts.validate().map_err(|error| usage(error.to_string()))?;
    for (flag, path) in [("--out", &args.out), ("--items", &args.items)] {
        if let Some(parent) = path.as_deref().and_then(|p| p.parent()) {
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                return Err(usage(format!(
                    "{flag} {}: the directory {} does not exist; create it first",
                    path.as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    parent.display()
                )));
            }
        }
    }
    enum Target {
        Tests {
            row: Box<swe_env_grading::dataset::Instance>,
            image: String,
            tests: Vec<String>,
        },
        Entry {
            image: String,
            file: PathBuf,
            entry: String,
            python: String,
        },
    }
    let target = match (&args.task, &args.file) {
        (Some(task), _) => {
            let dataset = crate::datasets::load_source(&args.tasks)
                .await
                .with_context(|| format!("loading tasks from {}", args.tasks))?;
            for error in &dataset.errors {
                eprintln!("warning: skipped a bad row: {error}");
            }
            let Some(row) = dataset.get(task).cloned() else {
                return Err(usage(format!(
                    "task {task} is not in {} ({} tasks loaded); give --tasks SRC holding it",
                    args.tasks,
                    dataset.instances.len()
                )));
            };
            let tests = if args.tests.is_empty() {
                row.fail_to_pass.clone()
            } else {
                args.tests.clone()
            };
            if tests.is_empty() {
                return Err(usage(format!(
                    "task {task} lists no FAIL_TO_PASS test: give the tests with --test NODEID"
                )));
            }
            let image = args
                .image
                .clone()
                .unwrap_or_else(|| image_for(&row, OFFICIAL_IMAGE_TEMPLATE));
            Target::Tests {
                row: Box::new(row),
                image,
                tests,
            }
        }
        (None, Some(file)) => {
            if !file.is_file() {
                return Err(usage(format!(
                    "--file {}: no such file; give a Python file on this machine",
                    file.display()
                )));
            }
            Target::Entry {
                // clap requires --image and --entry with --file.
                image: args.image.clone().unwrap_or_default(),
                file: file.clone(),
                entry: args.entry.clone().unwrap_or_default(),
                python: args.python.clone().unwrap_or_else(|| "python3".to_owned()),
            }
        }
        (None, None) => {
            return Err(usage(
                "nothing to trace: give --task ID [--test NODEID …], or --image IMG --file F.py --entry EXPR \
                 (or the `harvest` subcommand); see `swe-env trace --help`",
            ))
        }
    };
    let engine = DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker")?;
    let cancel = CancellationToken::new();
    super::cancel_on_stop_signal(cancel.clone(), "the trace container is removed");
    let (mode, task, image) = match &target {
        Target::Tests { row, image, tests } => {
            eprintln!(
                "trace: {} test(s) of {} in {image}",
                tests.len(),
                row.instance_id
            );
            ("tests", Some(row.instance_id.clone()), image.clone())
        }
        Target::Entry {
            image, file, entry, ..
        } => {
            eprintln!("trace: {entry} of {} in {image}", file.display());
            ("entry", None, image.clone())
        }
    };
    let traced = async {
        match &target {
            Target::Tests { row, image, tests } => {
                crate::trace::run::trace_tests(&engine, row, image, tests, &opts).await
            }
            Target::Entry {
                image,
                file,
                entry,
                python,
            } => crate::trace::run::trace_entry(&engine, image, file, entry, python, &opts).await,
        }
    };
    let outcome = tokio::select! {
        outcome = traced => Some(outcome),
        _ = cancel.cancelled() => None,
    };
    let Some(outcome) = outcome else {
        // The run's future is dropped: its container's removal is in flight; sweep whatever this process owns.
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(&engine).await;
        eprintln!("interrupted: {removed} container(s) removed; nothing written");
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    let run = match outcome {
        Ok(run) => run,
        Err(error) if error.is_input() => {
            return Err(anyhow::Error::new(CliError::Usage(error.to_string())))
        }
        Err(error) => return Err(anyhow::Error::new(error).context("tracing")),
    };
    // pytest: 4 = usage error (a node id that does not exist), 5 = no test collected.
    if mode == "tests" && matches!(run.pytest_exit, Some(4 | 5)) {
        return Err(usage(format!(
            "pytest found no test to run (exit {}): check the --test node ids; its output ends:\n{}",
            run.pytest_exit.unwrap_or_default(),
            run.output_tail.trim_end()
        )));
    }
    // The tracer refused its arguments before running anything (e.g. --entry is not a Python expression).
    if mode == "entry" && run.pytest_exit == Some(2) && run.split.tests.is_empty() {
        return Err(usage(format!(
            "the tracer refused the entry point: {}",
            run.output_tail.trim_end()
        )));
    }
    let jsonl = run.traces_jsonl(args.caps.locals)?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, &jsonl).with_context(|| format!("writing {}", path.display()))?
        }
        None => write_stdout(&run.split.traces, &jsonl, args.format, args.caps.locals)?,
    }
    if let Some(path) = &args.items {
        let bytes = run.items_jsonl()?;
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    let frames = run.frames();
    let secs = run.elapsed.as_secs_f64();
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let summary = Summary {
        mode,
        task,
        image,
        python: run.split.python.clone(),
        tests: run.split.tests.clone(),
        traces: run.split.traces.len() as u64,
        frames,
        duplicates: run.split.stats.total.duplicates,
        too_long: run.split.stats.total.too_long,
        over_budget: run.split.stats.total.over_budget,
        incomplete: run.split.stats.total.incomplete,
        missing_source: run.split.stats.total.missing_source,
        items: run.items.len(),
        caps: run
            .split
            .caps
            .iter()
            .map(|cap| match &cap.nodeid {
                Some(nodeid) => format!("{} ({nodeid})", cap.reason),
                None => cap.reason.clone(),
            })
            .collect(),
        tracer_errors: run.split.errors.clone(),
        tracer_finished: run.split.ended,
        exit_code: run.pytest_exit,
        timed_out: run.timed_out,
        events_bytes: run.events_bytes,
        jsonl_bytes: jsonl.len() as u64,
        elapsed_secs: secs,
        traces_per_sec: per_sec(run.split.traces.len() as u64),
        frames_per_sec: per_sec(frames),
        bytes_per_frame: if frames > 0 {
            jsonl.len() as f64 / frames as f64
        } else {
            0.0
        },
        out: args.out.as_ref().map(|p| p.display().to_string()),
        items_out: args.items.as_ref().map(|p| p.display().to_string()),
    };
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else if args.out.is_some() {
        println!("{}", render_summary(&summary));
    } else {
        eprintln!("{}", render_summary(&summary));
    }
    if run.split.traces.is_empty() {
        eprintln!("warning: no trace: {}", no_trace_reason(&run));
    }
    if mode == "entry" && run.pytest_exit != Some(0) {
        eprintln!(
            "note: the entry expression did not return normally (exit {}); its output ends:\n{}",
            run.pytest_exit
                .map_or_else(|| "-".to_owned(), |code| code.to_string()),
            run.output_tail.trim_end()
        );
    }
    if !run.split.errors.is_empty() {
        eprintln!(
            "warning: the tracer reported {} error(s); tracing was switched off after each: {}",
            run.split.errors.len(),
            run.split.errors.join("; ")
        );
    }
    if run.timed_out {
        anyhow::bail!(
            "the traced run was killed by --timeout {} s; the {} complete trace(s) before that were written. Give \
             --time-cap below --timeout (tracing then stops and the program runs on), or a larger --timeout",
            args.caps.timeout_secs,
            run.split.traces.len()
        );
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// Why a run gave no trace, from what it recorded (most specific first).
fn no_trace_reason(run: &TraceRun) -> String {
    let total = &run.split.stats.total;
    if run.timed_out {
        return "the run was killed by --timeout before any traced call returned".to_owned();
    }
    if total.too_long > 0 {
        return format!(
            "{} call(s) were longer than --max-frames and were dropped; raise --max-frames",
            total.too_long
        );
    }
    if !run.split.caps.is_empty() {
        let reasons: Vec<&str> = run
            .split
            .caps
            .iter()
            .map(|cap| cap.reason.as_str())
            .collect();
        return format!(
            "the tracer hit a cap ({}) before any traced call returned; raise --max-events / --time-cap / --max-bytes",
            reasons.join(", ")
        );
    }
    if total.incomplete > 0 {
        return format!(
            "{} traced call(s) never returned before the test or the process ended",
            total.incomplete
        );
    }
    if total.frames == 0 {
        return "no repo function was called from the traced code: check --root / --include (traced: /testbed by \
                default, and the directory of --file)"
            .to_owned();
    }
    "every call was in a file excluded as an entry (--entry-exclude; by default test files); pass \
     --entry-exclude with another glob to change that"
        .to_owned()
}

/// Writes the traces to stdout as `format` says.
fn write_stdout(
    traces: &[Trace],
    jsonl: &[u8],
    format: StdoutFormat,
    locals: LocalsStyle,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match format {
        StdoutFormat::Json => out.write_all(jsonl)?,
        StdoutFormat::Cwm => {
            for trace in traces {
                out.write_all(render(trace, locals).as_bytes())?;
                out.write_all(b"\n\n")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The console summary: counts, tests with their outcomes, then the throughput lines.
fn render_summary(summary: &Summary) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |label: &str, value: String| rows.push((label.to_owned(), value));
    row("traces", summary.traces.to_string());
    row("frames", summary.frames.to_string());
    row("duplicates", summary.duplicates.to_string());
    row("too_long", summary.too_long.to_string());
    row("over_budget", summary.over_budget.to_string());
    row("incomplete", summary.incomplete.to_string());
    if summary.missing_source > 0 {
        row("missing_source", summary.missing_source.to_string());
    }
    row("items", summary.items.to_string());
    row("python", summary.python.clone());
    row(
        "exit code",
        match (summary.exit_code, summary.timed_out) {
            (_, true) => "timed out".to_owned(),
            (Some(code), _) => code.to_string(),
            (None, _) => "-".to_owned(),
        },
    );
    if !summary.caps.is_empty() {
        row("caps hit", summary.caps.join(", "));
    }
    if !summary.tracer_finished {
        row("tracer finished", "no (killed or timed out)".to_owned());
    }
    row("tests", summary.tests.len().to_string());
    for test in &summary.tests {
        row(&format!("  {}", test.nodeid), test.outcome.clone());
    }
    row("", String::new());
    row("traces/s", format!("{:.1}", summary.traces_per_sec));
    row("frames/s", format!("{:.1}", summary.frames_per_sec));
    row("bytes per frame", format!("{:.1}", summary.bytes_per_frame));
    row("events file", format!("{} bytes", summary.events_bytes));
    row("elapsed", format!("{:.2} s", summary.elapsed_secs));
    let width = rows
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    rows.iter()
        .map(|(label, value)| {
            if label.is_empty() {
                String::new()
            } else {
                format!("{label:<width$}  {value}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
