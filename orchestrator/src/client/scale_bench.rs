//! `swe-env bench scale`: N episodes through one real `swe-env serve` (a child process it starts, or `--server`),
//! in three phases — create all N (created/s, ready p50/p99), all N stepping at once (steps/s, step p50/p99 under
//! load), close all and count the containers left behind — with the RSS of the server, dockerd and the
//! containerd shims sampled at peak. `--burst` fires K CreateEpisode calls at once across several tasks;
//! `--ceiling` measures the best rate at which this engine itself creates + starts a container and runs a first
//! exec (no swe-env in the path), the ceiling the server's start rate is compared against.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::server::proto;
use crate::server::proto::env_service_client::EnvServiceClient;
use swe_env_sandbox::floor::FloorProbe;
use swe_env_sandbox::DockerEngine;

use super::grpc_bench::{Bearer, Client};
use super::serve_child::ServeChild;
use super::stats::{stats, Stats};

/// Arguments of `swe-env bench scale`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env bench scale --episodes 256 --steps 10\n  \
    swe-env bench scale --episodes 0 --burst 64 --burst-tasks 8\n  \
    swe-env bench scale --ceiling --json"
)]
pub struct ScaleBenchArgs {
    /// Task source of the server the bench starts: `fixtures`, an alias, or a dataset file.
    #[arg(long, default_value = "fixtures")]
    pub tasks: String,
    /// Task the N episodes run.
    #[arg(long, default_value = "swe-env-fixtures__retrykit-1")]
    pub task: String,
    /// Live episodes created, stepped and closed (0 skips the three phases).
    #[arg(long, default_value_t = 64)]
    pub episodes: usize,
    /// Steps per episode in phase 2 (all episodes stepping at once).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Shell command each step runs.
    #[arg(long, default_value = "true")]
    pub command: String,
    /// Client calls in flight at once while creating and closing.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The server's `--max-concurrent-starts` (the server's default when unset; ignored with `--server`).
    #[arg(long)]
    pub max_concurrent_starts: Option<usize>,
    /// After the phases, fire this many CreateEpisode calls at once (0: no burst).
    #[arg(long, default_value_t = 0)]
    pub burst: usize,
    /// Tasks the burst is spread over (round robin over the server's first tasks; fewer if it has fewer).
    #[arg(long, default_value_t = 8)]
    pub burst_tasks: usize,
    /// Before the burst, Prewarm this many containers per burst task (and wait for them; timed separately), so
    /// the burst is served from warm pools.
    #[arg(long, default_value_t = 0)]
    pub prewarm: u32,
    /// Start the server with warm pools off (`pool.max_containers: 0`): every episode starts a cold container.
    /// Ignored with `--server`.
    #[arg(long, conflicts_with = "prewarm")]
    pub cold: bool,
    /// Before anything else, measure the engine's start ceiling: bare create + start + first exec at each
    /// `--ceiling-concurrency`, no swe-env in the path.
    #[arg(long)]
    pub ceiling: bool,
    /// Concurrency levels of the ceiling.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16")]
    pub ceiling_concurrency: Vec<usize>,
    /// Starts per ceiling level (at least 2 per concurrent worker).
    #[arg(long, default_value_t = 32)]
    pub ceiling_starts: usize,
    /// Use this running server (`http://host:port`) instead of starting one; the token comes from
    /// `--token-file` or SWE_ENV_TOKEN.
    #[arg(long)]
    pub server: Option<String>,
    /// Token file for `--server`.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Pid of the `--server` process, for its RSS (unknown otherwise).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Memory figures at one instant, bytes (0 when unknown).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct MemorySample {
    /// VmRSS of the server process.
    pub server_rss: u64,
    /// VmRSS of dockerd.
    pub dockerd_rss: u64,
    /// Sum of VmRSS over every containerd-shim process.
    pub shims_rss: u64,
    /// containerd-shim processes counted.
    pub shims: usize,
    /// MemTotal − MemAvailable of the host.
    pub host_used: u64,
}

/// One phase: calls made, successes, rate and latency.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Phase {
    /// Calls attempted.
    pub calls: usize,
    /// Calls that failed.
    pub errors: usize,
    /// Up to three distinct error messages.
    pub first_errors: Vec<String>,
    /// Wall time of the phase, seconds.
    pub wall_secs: f64,
    /// Successful calls per second of wall time.
    pub per_sec: f64,
    /// Latency of the successful calls.
    pub latency: Stats,
    /// Creates only: episodes the server started from a warm-pool container (`CreateEpisodeResponse.warm`).
    pub warm: usize,
}

/// One ceiling level.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CeilingLevel {
    /// Starts in flight at once.
    pub concurrency: usize,
    /// Starts (create + start + first exec) completed.
    pub starts: usize,
    /// Failed starts.
    pub errors: usize,
    /// Completed starts per second.
    pub per_sec: f64,
    /// Latency of one start.
    pub latency: Stats,
}

/// The engine's start ceiling: every level and the best rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Ceiling {
    /// Image started.
    pub image: String,
    /// One row per concurrency level.
    pub levels: Vec<CeilingLevel>,
    /// The best `per_sec` over the levels.
    pub best_per_sec: f64,
    /// Its concurrency.
    pub best_concurrency: usize,
}

/// What `swe-env bench scale --json` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScaleReport {
    /// Episodes asked for.
    pub episodes: usize,
    /// Steps per episode.
    pub steps: usize,
    /// Client concurrency of create / close.
    pub concurrency: usize,
    /// Task of the episodes.
    pub task: String,
    /// Warm pools of the server: `server default`, `off` (`--cold`) or `external server` (`--server`).
    pub warm_pools: &'static str,
    /// Phase 1: CreateEpisode of all N (latency = ready: CreateEpisode round trip, the shell answering).
    pub create: Option<Phase>,
    /// Phase 2: all N episodes stepping at once (latency = one Step round trip under that load).
    pub step: Option<Phase>,
    /// Phase 3: CloseEpisode of all N.
    pub close: Option<Phase>,
    /// Memory before phase 1.
    pub memory_before: MemorySample,
    /// Memory at peak (the largest of the samples taken with all N live, field by field).
    pub memory_peak: MemorySample,
    /// (host used at peak − before) / N, MiB: everything the episodes cost the host (containers included).
    pub host_mib_per_episode: f64,
    /// (server + dockerd + shims RSS at peak − before) / N, MiB: the swe-env and Docker processes only.
    pub process_rss_mib_per_episode: f64,
    /// Containers of this run's episodes still present after every close returned (re-checked for 10 s).
    pub leaked_containers: usize,
    /// Containers of the server's owner (pooled ones included) still present after the server stopped (only
    /// when the bench started the server).
    pub leaked_after_stop: Option<usize>,
    /// The burst, when asked for.
    pub burst: Option<Burst>,
    /// The engine's start ceiling, when asked for.
    pub ceiling: Option<Ceiling>,
    /// Phase 1 created/s as a fraction of the ceiling's best rate (when both ran).
    pub create_vs_ceiling: Option<f64>,
}

/// K CreateEpisode calls fired at once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Burst {
    /// Distinct tasks the calls were spread over.
    pub tasks: usize,
    /// The Prewarm calls before the burst (one per task, waiting until ready), when `--prewarm` asked for them.
    pub prewarm: Option<Prewarm>,
    /// The creates (per_sec = episodes/s over the burst's wall time).
    pub create: Phase,
    /// Containers of the burst's episodes left after closing them.
    pub leaked_containers: usize,
}

/// The Prewarm calls made before a burst.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prewarm {
    /// Containers asked for per task.
    pub count_per_task: u32,
    /// Ready containers the calls reported, summed over the tasks.
    pub ready: u32,
    /// Wall time of all the calls (made concurrently), seconds.
    pub wall_secs: f64,
}

/// Runs the benchmark; `Ok(false)` when any call failed or a container leaked.
pub async fn run(args: ScaleBenchArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.concurrency > 0,
        "--concurrency must be positive: it bounds the create and close calls in flight"
    );
    let engine = DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker (is dockerd running and DOCKER_HOST right?)")?;
    let ceiling = if args.ceiling {
        let image = task_image(&args).await?;
        Some(measure_ceiling(&engine, &image, &args).await?)
    } else {
        None
    };
    let dir = std::env::temp_dir().join(format!("swe-env-bench-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the work directory")?;
    let result = with_server(&args, &engine, &dir, ceiling).await;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let phase_errors = [&report.create, &report.step, &report.close]
        .iter()
        .filter_map(|p| p.as_ref())
        .map(|p| p.errors)
        .sum::<usize>()
        + report.burst.as_ref().map_or(0, |b| b.create.errors);
    let leaks = report.leaked_containers
        + report.burst.as_ref().map_or(0, |b| b.leaked_containers)
        + report.leaked_after_stop.unwrap_or(0);
    Ok(phase_errors == 0 && leaks == 0)
}

/// The image of `--task`, read from `--tasks` as every command reads a source.
async fn task_image(args: &ScaleBenchArgs) -> anyhow::Result<String> {
    let dataset = crate::datasets::load_source(&args.tasks).await?;
    let instance = dataset
        .get(&args.task)
        .with_context(|| format!("task {} not in {}", args.task, args.tasks))?;
    Ok(crate::task::image_for(
        instance,
        crate::task::OFFICIAL_IMAGE_TEMPLATE,
    ))
}

/// Starts the run's server in `dir`. The bench measures throughput, not admission refusals: calls may queue for a
/// start slot as long as needed.
async fn start_server(
    args: &ScaleBenchArgs,
    dir: &Path,
    token: &str,
) -> anyhow::Result<(ServeChild, String)> {
    let mut yaml = String::from("start_queue_ms: 600000\nshutdown_grace_secs: 10\n");
    let prewarmed = args.prewarm as usize * args.burst_tasks.max(1);
    if args.cold {
        yaml.push_str("pool:\n  max_containers: 0\n");
    } else if prewarmed > 64 || args.prewarm > 64 {
        // Room for every prewarmed container (the defaults are 64 pooled, 64 per Prewarm).
        yaml.push_str(&format!(
            "pool:\n  max_containers: {}\nmaxima:\n  prewarm: {}\n",
            prewarmed.max(64),
            args.prewarm.max(64)
        ));
    }
    let max_episodes = args.episodes.max(args.burst) + 8;
    let mut flags: Vec<OsString> = vec![
        "--tasks".into(),
        args.tasks.clone().into(),
        "--max-episodes".into(),
        max_episodes.to_string().into(),
    ];
    if let Some(starts) = args.max_concurrent_starts {
        flags.push("--max-concurrent-starts".into());
        flags.push(starts.to_string().into());
    }
    let server = ServeChild::start(dir, &yaml, token, &flags).await?;
    let url = format!("http://{}", server.addr);
    Ok((server, url))
}

async fn with_server(
    args: &ScaleBenchArgs,
    engine: &DockerEngine,
    dir: &Path,
    ceiling: Option<Ceiling>,
) -> anyhow::Result<ScaleReport> {
    let (server, url, token, server_pid) = match &args.server {
        Some(url) => {
            let token = match &args.token_file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
                None => std::env::var("SWE_ENV_TOKEN").unwrap_or_default(),
            };
            (None, url.clone(), token, args.server_pid)
        }
        None => {
            let token = format!("{:032x}", rand::random::<u128>());
            let (server, url) = start_server(args, dir, &token).await?;
            let pid = server.pid();
            (Some(server), url, token, pid)
        }
    };
    let mut result = drive(args, engine, &url, &token, server_pid, ceiling).await;
    if let Some(mut server) = server {
        server.check_running()?;
        let owner = server.owner.clone();
        server.stop().await;
        if let Ok(report) = &mut result {
            report.leaked_after_stop = Some(containers_of_owner(engine, &owner).await);
        }
    }
    result
}

/// Channels to the server: several HTTP/2 connections, so a thousand concurrent calls are not queued behind one
/// connection's stream limit.
async fn clients(url: &str, token: &str, n: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("connecting to the server at {url}"))?;
        let bearer = Bearer(Some(format!("Bearer {token}").parse()?));
        clients.push(EnvServiceClient::with_interceptor(channel, bearer));
    }
    Ok(clients)
}

async fn drive(
    args: &ScaleBenchArgs,
    engine: &DockerEngine,
    url: &str,
    token: &str,
    server_pid: Option<u32>,
    ceiling: Option<Ceiling>,
) -> anyhow::Result<ScaleReport> {
    let pool = clients(url, token, 8).await?;
    let memory_before = sample_memory(server_pid);
    let mut peak = memory_before;
    let n = args.episodes;
    let (mut create, mut step, mut close, mut leaked) = (None, None, None, 0);
    if n > 0 {
        // Phase 1: create all N, at most `--concurrency` calls in flight.
        let bar = progress(n as u64, "create");
        let task = args.task.clone();
        let (phase, ids) = bounded(&pool, n, args.concurrency, &bar, move |mut client, _| {
            let task = task.clone();
            async move { create_one(&mut client, &task).await }
        })
        .await;
        let (phase, ids) = with_warm(phase, ids);
        bar.finish_and_clear();
        say(&bar, &phase_line("create", &phase));
        create = Some(phase);
        peak = peak.max(sample_memory(server_pid));

        // Phase 2: every live episode steps `--steps` times, all at once.
        let bar = progress((ids.len() * args.steps) as u64, "step");
        let sampler = MemorySampler::start(server_pid);
        let phase = step_all(&pool, &ids, args, &bar).await;
        peak = peak.max(sampler.stop().await);
        bar.finish_and_clear();
        say(&bar, &phase_line("step", &phase));
        step = Some(phase);

        // Phase 3: close all, then count what is left.
        let bar = progress(ids.len() as u64, "close");
        let (phase, _) = bounded_over(&pool, ids.clone(), args.concurrency, &bar).await;
        bar.finish_and_clear();
        say(&bar, &phase_line("close", &phase));
        close = Some(phase);
        leaked = leaked_after_close(engine, &ids).await;
    }
    let burst = if args.burst > 0 {
        Some(run_burst(&pool, engine, args).await?)
    } else {
        None
    };
    let per_episode = |bytes: u64| bytes as f64 / (1u64 << 20) as f64 / n.max(1) as f64;
    let rss = |m: &MemorySample| m.server_rss + m.dockerd_rss + m.shims_rss;
    let create_vs_ceiling = match (&create, &ceiling) {
        (Some(create), Some(ceiling)) if ceiling.best_per_sec > 0.0 => {
            Some(create.per_sec / ceiling.best_per_sec)
        }
        _ => None,
    };
    Ok(ScaleReport {
        episodes: n,
        steps: args.steps,
        concurrency: args.concurrency,
        task: args.task.clone(),
        warm_pools: match (&args.server, args.cold) {
            (Some(_), _) => "external server",
            (None, true) => "off",
            (None, false) => "server default",
        },
        host_mib_per_episode: per_episode(peak.host_used.saturating_sub(memory_before.host_used)),
        process_rss_mib_per_episode: per_episode(rss(&peak).saturating_sub(rss(&memory_before))),
        create,
        step,
        close,
        memory_before,
        memory_peak: peak,
        leaked_containers: leaked,
        leaked_after_stop: None,
        burst,
        ceiling,
        create_vs_ceiling,
    })
}

/// One CreateEpisode of `task`: the episode id and whether it came from a warm pool.
async fn create_one(client: &mut Client, task: &str) -> Result<(String, bool), String> {
    let reply = client
        .create_episode(create_request(task))
        .await
        .map_err(status_text)?
        .into_inner();
    Ok((reply.episode_id, reply.warm))
}

fn create_request(task: &str) -> proto::CreateEpisodeRequest {
    proto::CreateEpisodeRequest {
        task: Some(proto::create_episode_request::Task::TaskId(task.to_owned())),
        ..Default::default()
    }
}

/// Runs `call` `n` times with at most `concurrency` in flight (clients round robin over `pool`); the phase figures
/// and the successful results in completion order.
async fn bounded<T, F, Fut>(
    pool: &[Client],
    n: usize,
    concurrency: usize,
    bar: &Progress,
    call: F,
) -> (Phase, Vec<T>)
where
    T: Send + 'static,
    F: Fn(Client, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..concurrency.min(n) {
        let client = pool[worker % pool.len()].clone();
        let next = next.clone();
        let call = call.clone();
        let bar = bar.clone();
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                let result = call(client.clone(), i).await;
                out.push((t.elapsed(), result));
                bar.inc(1);
            }
            out
        }));
    }
    let mut outcomes = Vec::with_capacity(n);
    for worker in workers {
        match worker.await {
            Ok(out) => outcomes.extend(out),
            Err(error) => outcomes.push((
                Duration::ZERO,
                Err(format!("a client task panicked: {error}")),
            )),
        }
    }
    collect(outcomes, started.elapsed())
}

/// Closes `ids` with at most `concurrency` calls in flight.
async fn bounded_over(
    pool: &[Client],
    ids: Vec<String>,
    concurrency: usize,
    bar: &Progress,
) -> (Phase, Vec<()>) {
    let ids = Arc::new(ids);
    let n = ids.len();
    bounded(pool, n, concurrency, bar, move |mut client, i| {
        let ids = ids.clone();
        async move {
            client
                .close_episode(proto::CloseEpisodeRequest {
                    episode_id: ids[i].clone(),
                    final_answer: String::new(),
                })
                .await
                .map_err(status_text)?;
            Ok(())
        }
    })
    .await
}

/// One task per episode, each stepping `--steps` times in sequence: all episodes step at once.
async fn step_all(pool: &[Client], ids: &[String], args: &ScaleBenchArgs, bar: &Progress) -> Phase {
    let action = format!("<tool: bash>\n{}\n</tool>", args.command);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let mut client = pool[i % pool.len()].clone();
        let id = id.clone();
        let action = action.clone();
        let steps = args.steps;
        let bar = bar.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(steps);
            for _ in 0..steps {
                let t = Instant::now();
                let result = client
                    .step(proto::StepRequest {
                        episode_id: id.clone(),
                        action: Some(proto::step_request::Action::Text(action.clone())),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_text)
                    .and_then(|reply| {
                        let observation = reply.into_inner().observation.unwrap_or_default();
                        if observation.tool_error.is_empty() {
                            Ok(())
                        } else {
                            Err(format!("tool error: {}", observation.tool_error))
                        }
                    });
                out.push((t.elapsed(), result));
                bar.inc(1);
            }
            out
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        match task.await {
            Ok(out) => outcomes.extend(out),
            Err(error) => outcomes.push((
                Duration::ZERO,
                Err(format!("a client task panicked: {error}")),
            )),
        }
    }
    collect(outcomes, started.elapsed()).0
}

/// A failed call as the report shows it: the gRPC code and message.
fn status_text(status: tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn collect<T>(outcomes: Vec<(Duration, Result<T, String>)>, wall: Duration) -> (Phase, Vec<T>) {
    let calls = outcomes.len();
    let mut ok = Vec::new();
    let mut latencies = Vec::new();
    let mut first_errors: Vec<String> = Vec::new();
    let mut errors = 0;
    for (elapsed, result) in outcomes {
        match result {
            Ok(value) => {
                latencies.push(elapsed);
                ok.push(value);
            }
            Err(message) => {
                errors += 1;
                if first_errors.len() < 3 && !first_errors.contains(&message) {
                    first_errors.push(message);
                }
            }
        }
    }
    let phase = Phase {
        warm: 0,
        calls,
        errors,
        first_errors,
        wall_secs: wall.as_secs_f64(),
        per_sec: ok.len() as f64 / wall.as_secs_f64().max(1e-9),
        latency: stats(latencies),
    };
    (phase, ok)
}

/// Counts the warm starts of a create phase and keeps the episode ids.
fn with_warm(mut phase: Phase, created: Vec<(String, bool)>) -> (Phase, Vec<String>) {
    phase.warm = created.iter().filter(|(_, warm)| *warm).count();
    (phase, created.into_iter().map(|(id, _)| id).collect())
}

/// Prewarm `count` containers of each task at once, each call waiting until they are ready.
async fn prewarm(pool: &[Client], tasks: &[String], count: u32) -> anyhow::Result<Prewarm> {
    let started = Instant::now();
    let calls = tasks.iter().enumerate().map(|(i, task)| {
        let mut client = pool[i % pool.len()].clone();
        let task = task.clone();
        tokio::spawn(async move {
            client
                .prewarm(proto::PrewarmRequest {
                    task: Some(proto::prewarm_request::Task::TaskId(task.clone())),
                    count,
                    wait: true,
                    ..Default::default()
                })
                .await
                .map(|reply| reply.into_inner().ready)
                .with_context(|| format!("Prewarm of {task} ({count} containers)"))
        })
    });
    let mut ready = 0;
    for call in calls.collect::<Vec<_>>() {
        ready += call.await.context("a Prewarm task panicked")??;
    }
    Ok(Prewarm {
        count_per_task: count,
        ready,
        wall_secs: started.elapsed().as_secs_f64(),
    })
}

/// Containers labelled with `owner` (an owner label), re-checked for up to 10 s.
async fn containers_of_owner(engine: &DockerEngine, owner: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = match engine.labelled_containers().await {
            Ok(all) => all
                .iter()
                .filter(|c| c.owner.as_ref().map(|o| o.to_label()).as_deref() == Some(owner))
                .count(),
            Err(error) => {
                tracing::warn!(%error, "cannot list containers to count leaks");
                usize::MAX
            }
        };
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Containers of `ids` still present, re-checked for up to 10 s while removals settle.
async fn leaked_after_close(engine: &DockerEngine, ids: &[String]) -> usize {
    let ids: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = match engine.labelled_containers().await {
            Ok(all) => all
                .iter()
                .filter(|c| ids.contains(c.episode.as_str()))
                .count(),
            Err(error) => {
                tracing::warn!(%error, "cannot list containers to count leaks");
                usize::MAX
            }
        };
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run_burst(
    pool: &[Client],
    engine: &DockerEngine,
    args: &ScaleBenchArgs,
) -> anyhow::Result<Burst> {
    let mut client = pool[0].clone();
    let listed = client
        .list_tasks(proto::ListTasksRequest {
            page_size: args.burst_tasks.max(1) as u32,
            ..Default::default()
        })
        .await
        .context("ListTasks")?
        .into_inner();
    let tasks: Vec<String> = listed
        .tasks
        .into_iter()
        .take(args.burst_tasks.max(1))
        .map(|t| t.instance_id)
        .collect();
    anyhow::ensure!(!tasks.is_empty(), "the server lists no tasks to burst over");
    let prewarm = if args.prewarm > 0 {
        Some(prewarm(pool, &tasks, args.prewarm).await?)
    } else {
        None
    };
    let bar = progress(args.burst as u64, "burst");
    let tasks = Arc::new(tasks);
    let distinct = tasks.len();
    let (create, ids) = bounded(pool, args.burst, args.burst, &bar, {
        let tasks = tasks.clone();
        move |mut client, i| {
            let task = tasks[i % tasks.len()].clone();
            async move { create_one(&mut client, &task).await }
        }
    })
    .await;
    let (create, ids) = with_warm(create, ids);
    bar.finish_and_clear();
    say(&bar, &phase_line("burst create", &create));
    let close_bar = progress(ids.len() as u64, "close burst");
    let _ = bounded_over(pool, ids.clone(), args.concurrency, &close_bar).await;
    close_bar.finish_and_clear();
    Ok(Burst {
        tasks: distinct,
        prewarm,
        create,
        leaked_containers: leaked_after_close(engine, &ids).await,
    })
}

/// The engine's ceiling: bare create + start + first exec at each concurrency level; every container removed
/// after its level.
async fn measure_ceiling(
    engine: &DockerEngine,
    image: &str,
    args: &ScaleBenchArgs,
) -> anyhow::Result<Ceiling> {
    let probe = FloorProbe::connect(Duration::from_secs(120)).await?;
    let mut levels = Vec::new();
    for &concurrency in args.ceiling_concurrency.iter().filter(|c| **c > 0) {
        let total = args.ceiling_starts.max(2 * concurrency);
        let bar = progress(total as u64, &format!("ceiling c={concurrency}"));
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        // A JoinSet: an interrupted bench aborts its workers instead of leaving them starting containers.
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let probe = probe.clone();
            let next = next.clone();
            let image = image.to_owned();
            let bar = bar.clone();
            workers.spawn(async move {
                let mut out = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let id = format!("bench-ceiling-{}", std::process::id());
                    out.push(probe.start_and_first_exec(&image, &id).await);
                    bar.inc(1);
                }
                out
            });
        }
        let mut outcomes = Vec::new();
        while let Some(worker) = workers.join_next().await {
            outcomes.extend(worker.context("a ceiling worker panicked")?);
        }
        let wall = started.elapsed();
        bar.finish_and_clear();
        let mut latencies = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        let mut containers = Vec::new();
        for outcome in outcomes {
            match outcome {
                Ok(start) => {
                    latencies.push(start.elapsed);
                    containers.push(start.container);
                }
                Err(error) => {
                    errors += 1;
                    first_error.get_or_insert(error.to_string());
                }
            }
        }
        remove_all(engine, containers).await;
        if let Some(error) = first_error {
            tracing::warn!(concurrency, errors, %error, "ceiling starts failed");
        }
        let level = CeilingLevel {
            concurrency,
            starts: latencies.len(),
            errors,
            per_sec: latencies.len() as f64 / wall.as_secs_f64().max(1e-9),
            latency: stats(latencies),
        };
        say(
            &bar,
            &format!(
                "ceiling c={concurrency}: {:.1} starts/s, p50 {:.0} ms, {errors} errors",
                level.per_sec, level.latency.p50_ms
            ),
        );
        levels.push(level);
    }
    let best = levels
        .iter()
        .max_by(|a, b| a.per_sec.total_cmp(&b.per_sec))
        .map(|l| (l.per_sec, l.concurrency))
        .unwrap_or((0.0, 0));
    Ok(Ceiling {
        image: image.to_owned(),
        levels,
        best_per_sec: best.0,
        best_concurrency: best.1,
    })
}

/// Removes `containers` (the engine bounds concurrent removals itself).
pub async fn remove_all(engine: &DockerEngine, containers: Vec<String>) {
    let removals = containers.into_iter().map(|id| {
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(error) = engine.remove_container(&id).await {
                tracing::warn!(container = %id, %error, "removing a bench container failed; `swe-env gc` will");
            }
        })
    });
    for removal in removals.collect::<Vec<_>>() {
        let _ = removal.await;
    }
}

/// A progress bar with ETA on a terminal; otherwise (no ANSI) a plain line on stderr every tenth of the work.
#[derive(Clone)]
struct Progress {
    bar: ProgressBar,
    done: Arc<AtomicUsize>,
    len: u64,
    what: Arc<str>,
    started: Instant,
}

impl Progress {
    fn inc(&self, n: u64) {
        self.bar.inc(n);
        if self.bar.is_hidden() {
            let done = self.done.fetch_add(n as usize, Ordering::Relaxed) as u64 + n;
            let tenth = (self.len / 10).max(1);
            if done / tenth != (done - n) / tenth && done < self.len {
                eprintln!(
                    "{}: {done}/{} after {:.0} s",
                    self.what,
                    self.len,
                    self.started.elapsed().as_secs_f64()
                );
            }
        }
    }

    fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

fn progress(len: u64, what: &str) -> Progress {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    Progress {
        bar,
        done: Arc::new(AtomicUsize::new(0)),
        len,
        what: what.into(),
        started: Instant::now(),
    }
}

/// A progress line: above the bar on a terminal, plain on stderr otherwise.
fn say(progress: &Progress, line: &str) {
    if progress.bar.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.bar.println(line);
    }
}

fn phase_line(name: &str, phase: &Phase) -> String {
    format!(
        "{name}: {} calls, {} errors, {} warm, {:.1}/s, p50 {:.1} ms, p99 {:.1} ms",
        phase.calls,
        phase.errors,
        phase.warm,
        phase.per_sec,
        phase.latency.p50_ms,
        phase.latency.p99_ms
    )
}

fn print_report(report: &ScaleReport) {
    println!(
        "{} episodes of {}, {} steps each, client concurrency {}, warm pools: {}",
        report.episodes, report.task, report.steps, report.concurrency, report.warm_pools
    );
    println!(
        "{:<34} {:>7} {:>7} {:>6} {:>10} {:>10} {:>10}",
        "phase", "calls", "errors", "warm", "per s", "p50 ms", "p99 ms"
    );
    let mut rows: Vec<(String, &Phase)> = Vec::new();
    if let Some(p) = &report.create {
        rows.push(("create (ready = CreateEpisode)".into(), p));
    }
    if let Some(p) = &report.step {
        rows.push((format!("step, all {} at once", report.episodes), p));
    }
    if let Some(p) = &report.close {
        rows.push(("close".into(), p));
    }
    if let Some(b) = &report.burst {
        rows.push((
            format!("burst of {} over {} tasks", b.create.calls, b.tasks),
            &b.create,
        ));
    }
    for (name, p) in &rows {
        println!(
            "{name:<34} {:>7} {:>7} {:>6} {:>10.1} {:>10.1} {:>10.1}",
            p.calls, p.errors, p.warm, p.per_sec, p.latency.p50_ms, p.latency.p99_ms
        );
        for error in &p.first_errors {
            println!("    error: {error}");
        }
    }
    if report.episodes > 0 {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let (before, peak) = (&report.memory_before, &report.memory_peak);
        println!(
            "RSS at peak: server {:.0} MiB, dockerd {:.0} MiB (before {:.0}), {} containerd-shims {:.0} MiB (before {:.0})",
            mib(peak.server_rss),
            mib(peak.dockerd_rss),
            mib(before.dockerd_rss),
            peak.shims,
            mib(peak.shims_rss),
            mib(before.shims_rss)
        );
        println!(
            "per episode: {:.2} MiB of host memory (MemTotal - MemAvailable, peak - before, / N); {:.2} MiB of server + \
            dockerd + shim RSS (RSS counts pages shared between the shims once per shim)",
            report.host_mib_per_episode, report.process_rss_mib_per_episode
        );
        println!(
            "leaked containers after close: {}",
            report.leaked_containers
        );
    }
    if let Some(left) = report.leaked_after_stop {
        println!("containers of the server left after it stopped (pools included): {left}");
    }
    if let Some(b) = &report.burst {
        if let Some(p) = &b.prewarm {
            println!(
                "prewarm before the burst: {} per task over {} tasks, {} ready, {:.1} s",
                p.count_per_task, b.tasks, p.ready, p.wall_secs
            );
        }
        println!(
            "burst: {:.1} episodes/s ({} CreateEpisode at once, {} tasks, {} warm), leaked {}",
            b.create.per_sec, b.create.calls, b.tasks, b.create.warm, b.leaked_containers
        );
    }
    if let Some(c) = &report.ceiling {
        println!(
            "engine start ceiling ({}; create + start + first exec, no swe-env):",
            c.image
        );
        for l in &c.levels {
            println!(
                "  concurrency {:>3}: {:>6.1} starts/s  p50 {:>7.1} ms  p99 {:>7.1} ms  errors {}",
                l.concurrency, l.per_sec, l.latency.p50_ms, l.latency.p99_ms, l.errors
            );
        }
        println!(
            "  best: {:.1} starts/s at concurrency {}",
            c.best_per_sec, c.best_concurrency
        );
    }
    if let Some(ratio) = report.create_vs_ceiling {
        println!(
            "episode starts through the server: {:.0}% of the engine's ceiling",
            ratio * 100.0
        );
    }
}

impl MemorySample {
    /// Field by field maximum.
    fn max(self, other: Self) -> Self {
        Self {
            server_rss: self.server_rss.max(other.server_rss),
            dockerd_rss: self.dockerd_rss.max(other.dockerd_rss),
            shims_rss: self.shims_rss.max(other.shims_rss),
            shims: self.shims.max(other.shims),
            host_used: self.host_used.max(other.host_used),
        }
    }
}

/// Samples memory every 500 ms in the background; `stop` returns the peak.
struct MemorySampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<MemorySample>,
}

impl MemorySampler {
    fn start(server_pid: Option<u32>) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut peak = MemorySample::default();
            loop {
                let sample = tokio::task::spawn_blocking(move || sample_memory(server_pid))
                    .await
                    .unwrap_or_default();
                peak = peak.max(sample);
                tokio::select! {
                    _ = &mut stopped => return peak,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> MemorySample {
        let _ = self.stop.send(());
        self.task.await.unwrap_or_default()
    }
}

/// Memory of the server (when its pid is known), dockerd, the shims and the host, from /proc.
pub fn sample_memory(server_pid: Option<u32>) -> MemorySample {
    let dockerd = procfs::pids_named(|comm| comm == "dockerd");
    let shims = procfs::pids_named(|comm| comm.starts_with("containerd-shim"));
    MemorySample {
        server_rss: server_pid.and_then(procfs::rss_bytes).unwrap_or(0),
        dockerd_rss: dockerd.iter().filter_map(|p| procfs::rss_bytes(*p)).sum(),
        shims_rss: shims.iter().filter_map(|p| procfs::rss_bytes(*p)).sum(),
        shims: shims.len(),
        host_used: procfs::host_used_bytes().unwrap_or(0),
    }
}

/// Process and host figures read from /proc (Linux); missing figures are `None`, never an error.
pub mod procfs {
    use std::collections::HashMap;

    /// Pids whose `/proc/PID/comm` satisfies `matches`.
    pub fn pids_named(matches: impl Fn(&str) -> bool) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|comm| matches(comm.trim_end()))
                    .unwrap_or(false)
            })
            .collect()
    }

    /// VmRSS of `pid`, bytes.
    pub fn rss_bytes(pid: u32) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// utime + stime of `pid`, clock ticks.
    pub fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces and parentheses): state is field 3; utime and stime
        // are fields 14 and 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some(utime + stime)
    }

    /// MemTotal − MemAvailable, bytes.
    pub fn host_used_bytes() -> Option<u64> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = meminfo.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        Some((field("MemTotal:")? - field("MemAvailable:")?) * 1024)
    }

    /// Clock ticks per second of `/proc/PID/stat` (USER_HZ): `getconf CLK_TCK`, else 100.
    pub fn ticks_per_sec() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    }

    /// CPU ticks of this process, dockerd and every containerd-shim, by pid.
    pub fn engine_cpu_ticks() -> HashMap<u32, u64> {
        let mut pids = pids_named(|c| c == "dockerd" || c.starts_with("containerd-shim"));
        pids.push(std::process::id());
        pids.into_iter()
            .filter_map(|pid| Some((pid, cpu_ticks(pid)?)))
            .collect()
    }

    /// Ticks spent between two `engine_cpu_ticks` snapshots (processes present in both; new ones counted whole).
    pub fn ticks_between(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
        after
            .iter()
            .map(|(pid, t)| t.saturating_sub(before.get(pid).copied().unwrap_or(0)))
            .sum()
    }
}
