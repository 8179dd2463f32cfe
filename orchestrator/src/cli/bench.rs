//! `swe-env bench`: programs that measure and print figures, side by side with a baseline in the same run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use swe_env_sandbox::{DockerEngine, SandboxConfig};

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Step latency on a live shell vs one-shot `docker exec`, and cold sandbox start-up vs `docker run`.
    Sandbox(SandboxBenchArgs),
    /// Step round trip over gRPC vs in-process `Episode::step`, and episodes/s through the service.
    Grpc(crate::client::grpc_bench::GrpcBenchArgs),
    /// Grading overhead (everything but the test command) and the orchestrator's per-instance overhead of a gold
    /// run-benchmark (total − model time − test time), on the fixture tasks.
    Grading(GradingBenchArgs),
    /// Fault injection against a real `swe-env serve`: client deadlines and cancels mid-step, shell hijacks,
    /// containers removed outside, hostile limits, kill -9 and restart, drain; one row per fault.
    Chaos(crate::client::chaos_bench::ChaosBenchArgs),
}

/// Arguments of `swe-env bench sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxBenchArgs {
    /// Image to use.
    #[arg(long, default_value = "swe-env/base:bookworm")]
    image: String,
    /// `true` commands on the live shell.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// One-shot exec baselines (API and CLI) — they are slow, so fewer.
    #[arg(long, default_value_t = 50)]
    execs: usize,
    /// Cold sandbox starts (and `docker run` baselines).
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `swe-env bench grading`.
#[derive(Debug, clap::Args)]
pub struct GradingBenchArgs {
    /// Rounds over the fixture tasks.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Percentiles of a set of durations, in milliseconds.
#[derive(Debug, serde::Serialize)]
pub(super) struct Stats {
    pub(super) n: usize,
    pub(super) p50_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) mean_ms: f64,
}

/// Prints named percentile rows as a table (with `decimals` digits) or, with `json`, as one JSON object.
pub(super) fn print_rows(
    rows: &[(&str, Stats)],
    json: bool,
    decimals: usize,
) -> anyhow::Result<()> {
    if json {
        let map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(());
    }
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(10);
    println!(
        "{:<width$} {:>6} {:>10} {:>10} {:>10}",
        "measurement", "n", "p50 ms", "p99 ms", "mean ms"
    );
    for (name, s) in rows {
        println!(
            "{name:<width$} {:>6} {:>10.decimals$} {:>10.decimals$} {:>10.decimals$}",
            s.n, s.p50_ms, s.p99_ms, s.mean_ms
        );
    }
    Ok(())
}

pub(super) fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let at = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).copied().map(ms).unwrap_or(f64::NAN)
    };
    let mean = if samples.is_empty() {
        f64::NAN
    } else {
        samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64
    };
    Stats {
        n: samples.len(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        mean_ms: mean,
    }
}

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Sandbox(args) => sandbox(args).await,
        BenchCommand::Grpc(args) => {
            use crate::client::grpc_bench::BENCH_MAX_TURNS;
            if args.steps == 0 || args.concurrency == 0 || args.steps >= BENCH_MAX_TURNS as usize {
                return Err(super::error::usage(format!(
                    "--steps must be from 1 to {} and --concurrency positive",
                    BENCH_MAX_TURNS - 1
                )));
            }
            crate::client::grpc_bench::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Grading(args) => super::bench_grading::run(args).await,
        BenchCommand::Chaos(args) => Ok(if crate::client::chaos_bench::run(args).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(super::EXIT_FAILED)
        }),
    }
}

async fn sandbox(args: SandboxBenchArgs) -> anyhow::Result<ExitCode> {
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    let config = SandboxConfig {
        workdir: "/".into(),
        ..SandboxConfig::default()
    };
    let bench_id = format!("bench-{}", std::process::id());
    let sb = engine
        .create_sandbox(&args.image, &bench_id, config.clone())
        .await
        .context("creating the sandbox")?;
    let timeout = Duration::from_secs(30);

    // Warm up, then the live-shell step latency.
    for _ in 0..20 {
        sb.run_command("true", timeout).await?;
    }
    let mut step = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let t = Instant::now();
        let out = sb.run_command("true", timeout).await?;
        step.push(t.elapsed());
        anyhow::ensure!(
            out.exit_code == Some(0),
            "`true` failed on the live shell: {out:?}"
        );
    }
    // Baseline 1: one-shot exec through the API (what a harness without a persistent shell pays per step).
    let mut api_exec = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t = Instant::now();
        let out = sb.exec(&["true"], None, timeout).await?;
        api_exec.push(t.elapsed());
        anyhow::ensure!(out.exit_code == Some(0), "one-shot exec of `true` failed");
    }
    // Baseline 2: the `docker exec` CLI, as scripts and some harnesses use it.
    let mut cli_exec = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t = Instant::now();
        let status = tokio::process::Command::new("docker")
            .args(["exec", sb.id(), "true"])
            .status()
            .await;
        cli_exec.push(t.elapsed());
        anyhow::ensure!(
            matches!(status, Ok(s) if s.success()),
            "`docker exec` failed: {status:?}"
        );
    }
    sb.remove().await?;

    // Cold start: container created, started, shell answering.
    let mut ready = Vec::with_capacity(args.starts);
    for i in 0..args.starts {
        let t = Instant::now();
        let sb = engine
            .create_sandbox(&args.image, &format!("{bench_id}-{i}"), config.clone())
            .await?;
        ready.push(t.elapsed());
        sb.remove().await?;
    }
    // Baseline: `docker run --rm IMAGE true` (create + start + wait + remove).
    let mut docker_run = Vec::with_capacity(args.starts);
    for _ in 0..args.starts {
        let t = Instant::now();
        let status = tokio::process::Command::new("docker")
            .args(["run", "--rm", "--network", "none", &args.image, "true"])
            .status()
            .await;
        docker_run.push(t.elapsed());
        anyhow::ensure!(
            matches!(status, Ok(s) if s.success()),
            "`docker run` failed: {status:?}"
        );
    }

    let rows = [
        ("step: `true` on the live shell", stats(step)),
        ("baseline: one-shot exec via API", stats(api_exec)),
        ("baseline: `docker exec` CLI", stats(cli_exec)),
        ("cold ready: create+start+shell", stats(ready)),
        ("baseline: `docker run --rm true`", stats(docker_run)),
    ];
    print_rows(&rows, args.json, 3)?;
    if !args.json {
        let ratio = rows[2].1.p50_ms / rows[0].1.p50_ms;
        println!("live-shell step is {ratio:.0}x faster than `docker exec` at p50");
    }
    Ok(ExitCode::SUCCESS)
}
