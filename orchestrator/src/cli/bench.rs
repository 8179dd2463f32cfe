//! `swe-env bench`: programs that measure and print figures, side by side with a baseline in the same run.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use swe_env_sandbox::floor::FloorProbe;
use swe_env_sandbox::owner::{LABEL_EPISODE, LABEL_EXPIRES, LABEL_OWNER};
use swe_env_sandbox::{DataPath, DockerEngine, DockerSandbox, SandboxConfig};

use crate::client::grpc_bench::InProcess;
use crate::client::scale_bench::procfs;
pub(super) use crate::client::stats::{stats, Stats};

/// What to measure.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Step latency (bare shell round trip, a full episode step, `docker exec` via API and CLI) and cold starts
    /// (sandbox ready, episode ready) against the Docker floor (`docker run` + first exec), interleaved, with host
    /// CPU per step.
    Sandbox(SandboxBenchArgs),
    /// Step round trip over gRPC vs an in-process episode step, and episodes/s through the service.
    #[command(
        after_help = "Examples:\n  swe-env bench grpc\n  swe-env bench grpc --steps 5000 --concurrency 16 --json"
    )]
    Grpc(crate::client::grpc_bench::GrpcBenchArgs),
    /// N episodes through one real `swe-env serve`: created/s, ready and step latency under load, RSS of the
    /// server / dockerd / shims, leaks after close; `--burst` and the engine's start `--ceiling`.
    Scale(crate::client::scale_bench::ScaleBenchArgs),
    /// Grading overhead (everything but the test command) and the orchestrator's per-instance overhead of a gold
    /// run-benchmark (total − model time − test time), on the fixture tasks.
    Grading(GradingBenchArgs),
    /// Fault injection against a real `swe-env serve`: client deadlines and cancels mid-step, shell hijacks,
    /// containers removed outside, hostile limits, kill -9 and restart, drain; one row per fault.
    Chaos(crate::client::chaos_bench::ChaosBenchArgs),
    /// A fleet of three `swe-env serve` nodes (or `--server` repeated): placement overhead per CreateEpisode
    /// (fleet vs direct, interleaved; the client-side decision in µs) and episodes/s across all nodes vs one.
    Fleet(crate::client::fleet_bench::FleetBenchArgs),
}

/// Arguments of `swe-env bench sandbox`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Rows of a group are interleaved (one sample of each row, repeated), so drift on the box hits \
    every row alike; each row of a group has the same number of samples.\n\nExample:\n  \
    swe-env bench sandbox --samples 500 --starts 20 --json"
)]
pub struct SandboxBenchArgs {
    /// Task source of `--task`: `fixtures`, an alias, or a dataset file.
    #[arg(long, default_value = "fixtures")]
    tasks: String,
    /// Task whose image every row uses (and whose episode the episode-step row runs).
    #[arg(long, default_value = "swe-env-fixtures__retrykit-1")]
    task: String,
    /// Samples per step row (shell round trip, episode step, `docker exec` via API and CLI), interleaved.
    #[arg(long, default_value_t = 200)]
    samples: usize,
    /// Samples per start row (sandbox ready, episode ready, Docker floor via CLI and API), interleaved.
    #[arg(long, default_value_t = 20)]
    starts: usize,
    /// Steps timed for host CPU per step (this process + dockerd + every containerd-shim; 0 skips).
    #[arg(long, default_value_t = 1000)]
    cpu_steps: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `swe-env bench grading`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Needs the fixture task images (`bash images/build.sh`).\n\nExamples:\n  \
    swe-env bench grading\n  swe-env bench grading --rounds 10 --json"
)]
pub struct GradingBenchArgs {
    /// Rounds over the fixture tasks.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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

pub async fn run(command: BenchCommand) -> anyhow::Result<ExitCode> {
    match command {
        BenchCommand::Sandbox(args) => interruptible(sandbox(args)).await,
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
        BenchCommand::Scale(args) => {
            if args.episodes > 0 && args.steps == 0 {
                return Err(super::error::usage(
                    "--steps must be positive (or --episodes 0 to skip the phases)",
                ));
            }
            if args.concurrency == 0 {
                return Err(super::error::usage("--concurrency must be positive"));
            }
            interruptible(async {
                Ok(if crate::client::scale_bench::run(args).await? {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(super::EXIT_FAILED)
                })
            })
            .await
        }
        BenchCommand::Grading(args) => super::bench_grading::run(args).await,
        BenchCommand::Fleet(args) => {
            if args.episodes == 0 || args.concurrency == 0 || args.rounds == 0 {
                return Err(super::error::usage(
                    "--episodes, --concurrency and --rounds must be positive",
                ));
            }
            interruptible(async {
                crate::client::fleet_bench::run(args).await?;
                Ok(ExitCode::SUCCESS)
            })
            .await
        }
        BenchCommand::Chaos(args) => Ok(if crate::client::chaos_bench::run(args).await? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(super::EXIT_FAILED)
        }),
    }
}

/// Runs `work` until Ctrl-C; then drops it (a server child is asked to drain) and removes every container this
/// process created (sandboxes, Docker-floor and ceiling containers), exit 130.
async fn interruptible(
    work: impl std::future::Future<Output = anyhow::Result<ExitCode>>,
) -> anyhow::Result<ExitCode> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => {
            // Engine calls in flight when `work` was dropped may still create a container: sweep, wait, sweep.
            let mut removed = 0;
            if let Ok(engine) = DockerEngine::connect(Duration::from_secs(60)).await {
                for _ in 0..2 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    removed += swe_env_sandbox::gc::remove_owned(&engine).await.unwrap_or(0);
                }
            }
            eprintln!(
                "interrupted: removed {removed} container(s) of this run; a server it started drains and removes \
                its own (`swe-env gc` removes anything left)"
            );
            Ok(ExitCode::from(super::EXIT_INTERRUPTED))
        }
    }
}

/// Rows of `bench sandbox`, in print order.
const SHELL: &str = "step: bare shell round trip, attach path";
const SHELL_FIFO: &str = "step: bare shell round trip, FIFO path";
const EPISODE_STEP: &str = "step: Episode::step in process (full path)";
const API_EXEC: &str = "step: one-shot `docker exec` via API";
const CLI_EXEC: &str = "step: one-shot `docker exec` via CLI";
const SANDBOX_READY: &str = "start: sandbox ready (create+start+shell)";
const EPISODE_READY: &str = "start: episode ready (Episode::start)";
const FLOOR_CLI: &str = "floor: `docker run -d` + `docker exec true` CLI";
const FLOOR_API: &str = "floor: create+start+exec `true` via API";

async fn sandbox(args: SandboxBenchArgs) -> anyhow::Result<ExitCode> {
    if args.samples == 0 || args.starts == 0 {
        return Err(super::error::usage(
            "--samples and --starts must be positive",
        ));
    }
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker (is dockerd running and DOCKER_HOST right?)")?;
    let dataset = crate::datasets::load_source(&args.tasks).await?;
    let instance = dataset
        .get(&args.task)
        .with_context(|| format!("task {} not in {}", args.task, args.tasks))?
        .clone();
    let image = crate::task::image_for(&instance, crate::task::OFFICIAL_IMAGE_TEMPLATE);
    let work_dir =
        std::env::temp_dir().join(format!("swe-env-bench-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).context("creating the work directory")?;
    let mut floor_containers = Vec::new();
    let result = measure_sandbox(&args, &engine, &image, &work_dir, &mut floor_containers).await;
    crate::client::scale_bench::remove_all(&engine, floor_containers).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    let (episode_path, mut rows, cpu) = result?;
    rows.retain(|(_, s)| s.n > 0);
    let floor = |name: &str| {
        rows.iter()
            .find(|(n, _)| *n == name)
            .map_or(f64::NAN, |(_, s)| s.p50_ms)
    };
    let (floor_cli, floor_api) = (floor(FLOOR_CLI), floor(FLOOR_API));
    if args.json {
        let mut map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        let ratios: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v.p50_ms / floor_api)))
            .collect();
        map.insert("image".into(), serde_json::json!(image));
        map.insert("episode_data_path".into(), serde_json::json!(episode_path));
        map.insert("p50_over_api_floor_p50".into(), ratios.into());
        map.insert("host_cpu_per_step".into(), serde_json::json!(cpu));
        println!("{}", serde_json::to_string_pretty(&map)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "image {image}; rows of a group interleaved, equal samples per row; Episode::step on the {episode_path} \
        data path (the default)"
    );
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(10);
    println!(
        "{:<width$} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "measurement", "n", "p50 ms", "p99 ms", "mean ms", "/ floor"
    );
    for (name, s) in &rows {
        println!(
            "{name:<width$} {:>6} {:>10.3} {:>10.3} {:>10.3} {:>10.4}",
            s.n,
            s.p50_ms,
            s.p99_ms,
            s.mean_ms,
            s.p50_ms / floor_api
        );
    }
    println!("/ floor: p50 over the p50 of the Docker floor via API ({floor_api:.1} ms; via CLI {floor_cli:.1} ms)");
    println!(
        "full Episode::step is {:.0}x faster than a one-shot `docker exec` via CLI at p50; bare shell {:.0}x (attach), \
        {:.0}x (FIFO)",
        floor(CLI_EXEC) / floor(EPISODE_STEP),
        floor(CLI_EXEC) / floor(SHELL),
        floor(CLI_EXEC) / floor(SHELL_FIFO)
    );
    println!(
        "episode ready is {:.2}x the Docker floor via API and {:.2}x via CLI at p50",
        floor(EPISODE_READY) / floor_api,
        floor(EPISODE_READY) / floor_cli
    );
    for row in &cpu {
        println!(
            "host CPU per step, {}: {:.3} ms (this process + dockerd + {} containerd-shims; {} steps, {:.3} ms wall each)",
            row.path, row.cpu_ms_per_step, row.shims, row.steps, row.wall_ms_per_step
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Host CPU spent per step by the processes a step passes through.
#[derive(Debug, serde::Serialize)]
struct CpuRow {
    path: &'static str,
    steps: usize,
    cpu_ms_per_step: f64,
    wall_ms_per_step: f64,
    shims: usize,
}

/// The measured rows (step group and start group, each interleaved) and the host-CPU blocks.
async fn measure_sandbox(
    args: &SandboxBenchArgs,
    engine: &DockerEngine,
    image: &str,
    work_dir: &std::path::Path,
    floor_containers: &mut Vec<String>,
) -> anyhow::Result<(&'static str, Vec<(&'static str, Stats)>, Vec<CpuRow>)> {
    let config = SandboxConfig::default();
    let bench_id = format!("bench-{}", std::process::id());
    let timeout = Duration::from_secs(30);
    let attach = SandboxConfig {
        data_path: DataPath::Attach,
        ..SandboxConfig::default()
    };
    let sb = engine
        .create_sandbox(image, &bench_id, attach)
        .await
        .with_context(|| {
            format!("creating a sandbox of {image} (build it with images/build.sh?)")
        })?;
    // The FIFO data path needs a local engine that sees this host's files; without one its rows are left out.
    let fifo_config = SandboxConfig {
        data_path: DataPath::Fifo,
        ..SandboxConfig::default()
    };
    let fifo = match engine
        .create_sandbox(image, &format!("{bench_id}-fifo"), fifo_config)
        .await
    {
        Ok(sb) => Some(sb),
        Err(error) => {
            tracing::warn!(%error, "no FIFO data path on this engine: its rows are left out");
            None
        }
    };
    let mut episode = InProcess::start(
        engine,
        &args.tasks,
        &args.task,
        &work_dir.join("trajectories"),
        &format!("{bench_id}-episode"),
    )
    .await?;
    let episode_path = episode.data_path().map_or("unknown", |p| p.as_str());
    // Warm up every path once.
    for _ in 0..20 {
        shell_true(&sb, timeout).await?;
        if let Some(fifo) = &fifo {
            shell_true(fifo, timeout).await?;
        }
        episode.step_true().await?;
    }
    api_exec(&sb, timeout).await?;
    cli_exec(sb.id()).await?;

    // Step group: one sample of each row per round.
    let mut shell = Vec::with_capacity(args.samples);
    let mut shell_fifo = Vec::with_capacity(args.samples);
    let mut step = Vec::with_capacity(args.samples);
    let mut api = Vec::with_capacity(args.samples);
    let mut cli = Vec::with_capacity(args.samples);
    for _ in 0..args.samples {
        shell.push(shell_true(&sb, timeout).await?);
        if let Some(fifo) = &fifo {
            shell_fifo.push(shell_true(fifo, timeout).await?);
        }
        step.push(episode.step_true().await?);
        api.push(api_exec(&sb, timeout).await?);
        cli.push(cli_exec(sb.id()).await?);
    }

    // Host CPU per step: blocks of one path each (CPU cannot be told apart within a round).
    let mut cpu = Vec::new();
    if args.cpu_steps > 0 {
        let ticks = procfs::ticks_per_sec();
        let shims = procfs::pids_named(|c| c.starts_with("containerd-shim")).len();
        let mut paths: Vec<(&'static str, Option<&DockerSandbox>)> =
            vec![("bare shell round trip, attach path", Some(&sb))];
        if let Some(fifo) = &fifo {
            paths.push(("bare shell round trip, FIFO path", Some(fifo)));
        }
        paths.push(("Episode::step (default data path)", None));
        for (path, sandbox) in paths {
            let before = procfs::engine_cpu_ticks();
            let t = Instant::now();
            for _ in 0..args.cpu_steps {
                match sandbox {
                    Some(sandbox) => shell_true(sandbox, timeout).await?,
                    None => episode.step_true().await?,
                };
            }
            let wall = t.elapsed();
            let spent = procfs::ticks_between(&before, &procfs::engine_cpu_ticks());
            cpu.push(CpuRow {
                path,
                steps: args.cpu_steps,
                cpu_ms_per_step: spent as f64 / ticks * 1e3 / args.cpu_steps as f64,
                wall_ms_per_step: wall.as_secs_f64() * 1e3 / args.cpu_steps as f64,
                shims,
            });
        }
    }
    if let Some(fifo) = fifo {
        fifo.remove().await?;
    }
    sb.remove().await?;
    episode.finish().await?;

    // Start group: one sample of each row per round.
    let probe = FloorProbe::connect(Duration::from_secs(60)).await?;
    let instance_tasks = (&args.tasks, &args.task);
    let mut ready = Vec::with_capacity(args.starts);
    let mut episode_ready = Vec::with_capacity(args.starts);
    let mut floor_cli = Vec::with_capacity(args.starts);
    let mut floor_api = Vec::with_capacity(args.starts);
    for i in 0..args.starts {
        let t = Instant::now();
        let sb = engine
            .create_sandbox(image, &format!("{bench_id}-{i}"), config.clone())
            .await?;
        ready.push(t.elapsed());
        sb.remove().await?;

        let t = Instant::now();
        let episode = InProcess::start(
            engine,
            instance_tasks.0,
            instance_tasks.1,
            &work_dir.join("trajectories"),
            &format!("{bench_id}-episode-{i}"),
        )
        .await?;
        episode_ready.push(t.elapsed());
        episode.finish().await?;

        let (elapsed, id) = docker_run_first_exec(engine, image, &bench_id).await?;
        floor_containers.push(id);
        floor_cli.push(elapsed);

        let start = probe
            .start_and_first_exec(image, &format!("{bench_id}-floor"))
            .await?;
        floor_containers.push(start.container);
        floor_api.push(start.elapsed);
        // Removals are not timed, and not left to pile up.
        crate::client::scale_bench::remove_all(engine, std::mem::take(floor_containers)).await;
    }
    Ok((
        episode_path,
        vec![
            (SHELL, stats(shell)),
            (SHELL_FIFO, stats(shell_fifo)),
            (EPISODE_STEP, stats(step)),
            (API_EXEC, stats(api)),
            (CLI_EXEC, stats(cli)),
            (SANDBOX_READY, stats(ready)),
            (EPISODE_READY, stats(episode_ready)),
            (FLOOR_CLI, stats(floor_cli)),
            (FLOOR_API, stats(floor_api)),
        ],
        cpu,
    ))
}

async fn shell_true(sb: &DockerSandbox, timeout: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = sb.run_command("true", timeout).await?;
    let elapsed = t.elapsed();
    anyhow::ensure!(
        out.exit_code == Some(0),
        "`true` failed on the live shell: {out:?}"
    );
    Ok(elapsed)
}

/// One-shot exec through the API: what a harness without a persistent shell pays per step.
async fn api_exec(sb: &DockerSandbox, timeout: Duration) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = sb.exec(&["true"], None, timeout).await?;
    let elapsed = t.elapsed();
    anyhow::ensure!(out.exit_code == Some(0), "one-shot exec of `true` failed");
    Ok(elapsed)
}

/// The `docker exec` CLI, as scripts and some harnesses use it.
async fn cli_exec(container: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = tokio::process::Command::new("docker")
        .args(["exec", container, "true"])
        .status()
        .await;
    let elapsed = t.elapsed();
    anyhow::ensure!(
        matches!(status, Ok(s) if s.success()),
        "`docker exec` failed: {status:?} (is the docker CLI installed and on PATH?)"
    );
    Ok(elapsed)
}

/// The Docker floor via the CLI: `docker run -d … sleep infinity`, then `docker exec ID true`, timed together.
/// The container carries our labels (so `gc` finds it after a crash); the caller removes it.
async fn docker_run_first_exec(
    engine: &DockerEngine,
    image: &str,
    bench_id: &str,
) -> anyhow::Result<(Duration, String)> {
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let t = Instant::now();
    let run = tokio::process::Command::new("docker")
        .args(["run", "-d", "--network", "none", "--entrypoint", "sleep"])
        .arg("--label")
        .arg(format!("{LABEL_OWNER}={}", engine.owner().to_label()))
        .arg("--label")
        .arg(format!("{LABEL_EPISODE}={bench_id}-floor"))
        .arg("--label")
        .arg(format!("{LABEL_EXPIRES}={expires}"))
        .args([image, "infinity"])
        .output()
        .await
        .context("running the docker CLI (is it installed and on PATH?)")?;
    anyhow::ensure!(
        run.status.success(),
        "`docker run` failed: {}",
        String::from_utf8_lossy(&run.stderr).trim()
    );
    let id = String::from_utf8_lossy(&run.stdout).trim().to_owned();
    let exec = tokio::process::Command::new("docker")
        .args(["exec", &id, "true"])
        .status()
        .await;
    let elapsed = t.elapsed();
    if !matches!(exec, Ok(s) if s.success()) {
        let _ = engine.remove_container(&id).await;
        anyhow::bail!("`docker exec {id} true` failed: {exec:?}");
    }
    Ok((elapsed, id))
}
