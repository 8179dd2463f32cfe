//! Command-line interface: argument definitions and one module per subcommand. `main.rs` only calls [`run`].

mod bench;
mod bench_grading;
mod doctor;
mod error;
mod evaluate;
mod export;
mod gc;
mod harvest;
mod images;
mod mine;
mod model_args;
mod run_benchmark;
mod run_episode;
mod serve;
mod shell;
mod show;
mod trace;
mod trace_harvest;
mod view;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use error::CliError;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the command ran but its result is a failure (e.g. tests failed, some instances errored).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage or bad input (a file that does not parse, an unknown task).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: infrastructure failure (Docker unreachable, disk full).
pub const EXIT_INFRA: u8 = 3;
/// Exit code: interrupted by Ctrl-C (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code: the reader of our standard output or error went away (128 + SIGPIPE, as shells report it).
pub const EXIT_OUTPUT_CLOSED: u8 = 141;

/// Runs software-engineering agents in sandboxed Docker containers and records every step.
#[derive(Debug, Parser)]
#[command(name = "swe-env", version, about, long_about = None)]
pub struct Cli {
    /// More logging (-v info, -vv debug); RUST_LOG overrides. `run-episode -v` also prints each model reply in
    /// full.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a benchmark end to end: episodes with an agent, grading, resolved rate (resumable).
    ///
    /// Example: `swe-env run-benchmark fixtures --agent gold`.
    RunBenchmark(run_benchmark::RunBenchmarkArgs),
    /// Grade predictions (or gold / empty patches) like the SWE-bench harness.
    ///
    /// Example: `swe-env evaluate --predictions preds.jsonl --dataset verified`.
    Evaluate(evaluate::EvaluateArgs),
    /// Run one model-driven episode on a task: live view of the steps, then a one-line result.
    ///
    /// Example: `swe-env run-episode --task ID --tasks tasks.jsonl --model-url http://host:8000/v1 --model NAME`.
    RunEpisode(run_episode::RunEpisodeArgs),
    /// Serve episodes over gRPC (swe_env.v1.EnvService, health, reflection) until SIGTERM/SIGINT.
    ///
    /// Example: `swe-env serve --tasks images/fixtures/tasks.jsonl --token-file token.txt`.
    Serve(serve::ServeArgs),
    /// Build local images or pre-pull a dataset's task images.
    ///
    /// Example: `swe-env images pull verified --concurrency 4`.
    #[command(subcommand)]
    Images(images::ImagesCommand),
    /// Export trajectories to training formats (OpenAI chat messages, CWM transcripts), one episode per line.
    ///
    /// Example: `swe-env export runs/RUN/trajectories --format cwm -o cwm.jsonl`.
    Export(export::ExportArgs),
    /// Open a sandbox and type into it exactly as an agent would (bash commands, or tool calls with --task).
    ///
    /// Example: `swe-env shell --image swe-env/base:bookworm`.
    Shell(shell::ShellArgs),
    /// Remove containers left behind by dead swe-env processes or past their expiry.
    ///
    /// Example: `swe-env gc` (orphans only), `swe-env gc --all --json`.
    Gc(gc::GcArgs),
    /// Harvest K graded rollouts per task into zstd shards + manifest + data card (exactly once, resumable).
    ///
    /// Example: `swe-env harvest --dataset fixtures --model-url http://host:8000/v1 --model NAME --samples 4 --out h1`.
    Harvest(Box<harvest::HarvestArgs>),
    /// Make new validated tasks: from a repository's history (issue-fix) or by injecting bugs (mutate-fix).
    ///
    /// Example: `swe-env mine history --repo ../myrepo --image IMG --out mined`.
    #[command(subcommand)]
    Mine(mine::MineCommand),
    /// Record Python execution traces of repo code in the CWM format: one test, an entry point, or a dataset.
    ///
    /// Example: `swe-env trace --task swe-env-fixtures__spans-1 --test tests/test_ops.py::test_merge_unsorted`.
    Trace(Box<trace::TraceArgs>),
    /// Measure the system and print figures (step latency, container start-up, …).
    ///
    /// Example: `swe-env bench sandbox --steps 2000`.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Write a static HTML report of a run or of trajectory files: a run index and one page per episode.
    ///
    /// Example: `swe-env view runs/RUN -o report/`, `swe-env view runs/RUN --serve 127.0.0.1:8080`.
    View(view::ViewArgs),
    /// Print a run's index as a terminal table, or one episode's steps.
    ///
    /// Example: `swe-env show runs/RUN`, `swe-env show runs/RUN swe-env-fixtures__spans-1`.
    Show(show::ShowArgs),
    /// Check the machine: Docker reachable and its version, images present, cache and disk space, with the fix
    /// for each problem.
    ///
    /// Example: `swe-env doctor`, `swe-env doctor --json`.
    Doctor(doctor::DoctorArgs),
}

/// Runs the parsed command and returns the process exit code; a failure is typed by its exit code.
pub async fn run(cli: Cli) -> Result<ExitCode, CliError> {
    raise_open_file_limit();
    let outcome = match cli.command {
        Command::Gc(args) => gc::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Images(command) => images::run(command).await,
        Command::RunBenchmark(args) => run_benchmark::run(args).await,
        Command::Evaluate(args) => evaluate::run(args).await,
        Command::RunEpisode(args) => run_episode::run(args, cli.verbose).await,
        Command::Shell(args) => shell::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Harvest(args) => harvest::run(*args).await,
        Command::Mine(command) => mine::run(command).await,
        Command::Trace(args) => trace::run(*args).await,
        Command::View(args) => view::run(args).await,
        Command::Show(args) => show::run(args).await,
        Command::Doctor(args) => doctor::run(args).await,
    };
    outcome.map_err(CliError::classify)
}

/// Cancels `cancel` at the first SIGTERM or SIGINT (`server::shutdown::StopSignals`, installed before this returns, so
/// a signal sent right after cannot kill the process), after printing
/// `what` after the signal's name: long-running commands stop cleanly (containers removed, outputs written, exit 130)
/// whether a person presses Ctrl-C or a scheduler sends SIGTERM.
fn cancel_on_stop_signal(cancel: tokio_util::sync::CancellationToken, what: &'static str) {
    let mut signals = crate::server::shutdown::StopSignals::install();
    tokio::spawn(async move {
        let signal = match signals.recv().await {
            crate::server::shutdown::StopSignal::Terminate => "SIGTERM",
            crate::server::shutdown::StopSignal::Interrupt => "interrupt",
        };
        eprintln!("\n{signal}: stopping; {what}");
        cancel.cancel();
    });
}

/// Raises the soft limit of open files to the hard limit, as Go programs (dockerd among them) do at start: a live
/// episode holds about four descriptors on the FIFO data path (its directory, the shell's stdin and stdout, the
/// trajectory), so a server at `max_episodes` 1024 needs more than the common soft default of 1024. Failing to raise
/// it is logged, not fatal: the server then refuses episodes with a clear "too many open files" when it runs out.
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit")
            }
            Err(error) => {
                tracing::warn!(%error, current = ?limit.current, "could not raise the open-file limit")
            }
        }
    }
}

/// Runs the parsed command to completion on `runtime`. Not generic, so the whole async program is compiled once,
/// in this library: a release build shares no generic code between crates, and a `block_on(run(cli))` in the
/// binary compiled every future of every command a second time there.
pub fn block_on_run(runtime: &tokio::runtime::Runtime, cli: Cli) -> Result<ExitCode, CliError> {
    runtime.block_on(run(cli))
}

/// Logs to stderr; `RUST_LOG` wins over `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info,swe_env=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal (and not with NO_COLOR set).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

#[cfg(test)]
mod open_file_limit_tests {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

    /// nextest runs each test in its own process, so lowering this process's limit touches no other test.
    #[test]
    fn the_soft_open_file_limit_is_raised_to_the_hard_limit() {
        let hard = getrlimit(Resource::Nofile).maximum;
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(256),
                maximum: hard,
            },
        )
        .unwrap();
        super::raise_open_file_limit();
        assert_eq!(getrlimit(Resource::Nofile).current, hard);
    }
}
