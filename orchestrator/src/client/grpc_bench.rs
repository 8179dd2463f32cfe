//! `swe-env bench grpc`: Step round-trip latency over gRPC (loopback TCP, bearer auth, an in-process server)
//! side by side with the in-process `Episode::step` on the same task and action, then episodes/s through the
//! service (create → one step → close) with concurrent clients.

use std::time::{Duration, Instant};

use anyhow::Context;

use crate::episode::{Action, EndInfo, Episode, EpisodeConfig, StartInfo, StepMeta};
use crate::server::config::Maxima;
use crate::server::proto;
use crate::server::proto::env_service_client::EnvServiceClient;
use crate::server::{self, ServerConfig};
use crate::trajectory::EpisodeStatus;
use swe_env_sandbox::DockerEngine;

use super::stats::stats;

/// The action measured: the cheapest bash step.
const TRUE_ACTION: &str = "<tool: bash>\ntrue\n</tool>";

/// Arguments of `swe-env bench grpc`.
#[derive(Debug, clap::Args)]
pub struct GrpcBenchArgs {
    /// Tasks holding `--task`: `fixtures`, `verified`/`lite`/`full`, or a JSONL/JSON/parquet file.
    #[arg(long, default_value = "fixtures")]
    tasks: String,
    /// Task whose image runs the episodes.
    #[arg(long, default_value = "swe-env-fixtures__spans-1")]
    task: String,
    /// `true` steps measured over gRPC, and again in process.
    #[arg(long, default_value_t = 1000)]
    pub steps: usize,
    /// Episodes (create → one step → close) for the throughput figure.
    #[arg(long, default_value_t = 64)]
    episodes: usize,
    /// Concurrent clients for the throughput figure.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The bearer-token interceptor of every wire client (`fleet::FleetAuth`), shared with `bench chaos` / `bench scale`.
pub(super) use super::fleet::FleetAuth as Bearer;

pub(super) type Client = super::fleet::FleetClient;

fn step_request(episode_id: &str) -> proto::StepRequest {
    proto::StepRequest {
        episode_id: episode_id.to_owned(),
        action: Some(proto::step_request::Action::Text(TRUE_ACTION.to_owned())),
        ..Default::default()
    }
}

fn create_request(task: &str) -> proto::CreateEpisodeRequest {
    proto::CreateEpisodeRequest {
        task: Some(proto::create_episode_request::Task::TaskId(task.to_owned())),
        budgets: Some(proto::Budgets {
            max_turns: Some(BENCH_MAX_TURNS),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The in-process baseline: an `Episode` of a task stepped directly (parse → tool → render → durable append), the
/// full path a gRPC Step runs minus the wire. Shared with `swe-env bench sandbox`.
pub struct InProcess {
    episode: Episode,
}

impl InProcess {
    /// Starts an episode of `task` (from the source `tasks`) writing its trajectory under `trajectory_dir`.
    pub async fn start(
        engine: &DockerEngine,
        tasks: &str,
        task: &str,
        trajectory_dir: &std::path::Path,
        episode_id: &str,
    ) -> anyhow::Result<Self> {
        let dataset = crate::datasets::load_source(tasks).await?;
        let instance = dataset
            .get(task)
            .with_context(|| format!("task {task} not in {tasks}"))?
            .clone();
        let episode_config = EpisodeConfig {
            max_turns: BENCH_MAX_TURNS,
            trajectory_dir: trajectory_dir.to_owned(),
            ..EpisodeConfig::default()
        };
        let episode = Episode::start(
            engine,
            episode_id,
            instance,
            episode_config,
            StartInfo::default(),
        )
        .await?;
        Ok(Self { episode })
    }

    /// One `true` bash step through `Episode::step`, timed; an error unless it exited 0.
    pub async fn step_true(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let outcome = self
            .episode
            .step(Action::Text(TRUE_ACTION.to_owned()), StepMeta::default())
            .await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            outcome.record.exit_code == Some(0),
            "`true` in process failed"
        );
        Ok(elapsed)
    }

    /// The data path of the episode's shell (`attach` or `fifo`; `None` once its sandbox is released).
    pub fn data_path(&self) -> Option<swe_env_sandbox::DataPath> {
        self.episode.sandbox().map(|sandbox| sandbox.data_path())
    }

    /// Ends the episode (`closed`) and removes its container.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.episode
            .finish(EndInfo::status(EpisodeStatus::Closed))
            .await?;
        Ok(())
    }
}

/// Turn budget of the measured episodes: more than any `--steps` a run asks for in one episode.
pub const BENCH_MAX_TURNS: u32 = 100_000;

/// Runs the benchmark.
pub async fn run(args: GrpcBenchArgs) -> anyhow::Result<()> {
    let work_dir = std::env::temp_dir().join(format!("swe-env-bench-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&work_dir).context("creating the work directory")?;
    let token = format!("{:032x}", rand::random::<u128>());
    let token_file = work_dir.join("token");
    std::fs::write(&token_file, &token).context("writing the token file")?;
    let config = ServerConfig {
        listen: Some("127.0.0.1:0".to_owned()),
        tasks: vec![args.tasks.clone()],
        token_file: Some(token_file),
        trajectory_dir: work_dir.join("trajectories"),
        max_episodes: args.concurrency.max(1) + 2,
        // The bench operates this server: its maxima admit the bench's one long episode of `--steps` steps.
        maxima: Maxima {
            max_turns: BENCH_MAX_TURNS,
            ..Maxima::default()
        },
        ..ServerConfig::default()
    };
    let result = measure(&args, config, &token, &work_dir).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

async fn measure(
    args: &GrpcBenchArgs,
    config: ServerConfig,
    token: &str,
    work_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let running = server::start(config).await.context("starting the server")?;
    let addr = running
        .tcp_addr()
        .context("the server has no TCP address")?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("connecting to the server")?;
    let bearer = Bearer(Some(format!("Bearer {token}").parse()?));
    let mut client: Client = EnvServiceClient::with_interceptor(channel, bearer);

    // Step round trip over gRPC.
    let episode_id = client
        .create_episode(create_request(&args.task))
        .await
        .context("CreateEpisode")?
        .into_inner()
        .episode_id;
    for _ in 0..20 {
        client.step(step_request(&episode_id)).await?;
    }
    let mut grpc_steps = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        let started = Instant::now();
        let reply = client.step(step_request(&episode_id)).await?.into_inner();
        grpc_steps.push(started.elapsed());
        let exit_code = reply.observation.and_then(|o| o.exit_code);
        anyhow::ensure!(
            exit_code == Some(0),
            "`true` over gRPC exited {exit_code:?}"
        );
    }
    client
        .close_episode(proto::CloseEpisodeRequest {
            episode_id,
            final_answer: String::new(),
        })
        .await?;

    // The same steps in process: Episode::step with the same task, action and trajectory disk.
    let engine = DockerEngine::connect(server::DOCKER_API_TIMEOUT).await?;
    let bench_id = format!("bench-grpc-{}", std::process::id());
    let mut episode = InProcess::start(
        &engine,
        &args.tasks,
        &args.task,
        &work_dir.join("in-process"),
        &bench_id,
    )
    .await?;
    for _ in 0..20 {
        episode.step_true().await?;
    }
    let mut local_steps = Vec::with_capacity(args.steps);
    for _ in 0..args.steps {
        local_steps.push(episode.step_true().await?);
    }
    episode.finish().await?;

    // Throughput: concurrent clients each running create → step → close.
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let mut client = client.clone();
        let task = args.task.clone();
        let n = args.episodes / args.concurrency
            + usize::from(worker < args.episodes % args.concurrency);
        workers.push(tokio::spawn(async move {
            let mut lifecycles = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let id = client
                    .create_episode(create_request(&task))
                    .await?
                    .into_inner()
                    .episode_id;
                client.step(step_request(&id)).await?;
                client
                    .close_episode(proto::CloseEpisodeRequest {
                        episode_id: id,
                        final_answer: String::new(),
                    })
                    .await?;
                lifecycles.push(t.elapsed());
            }
            Ok::<_, tonic::Status>(lifecycles)
        }));
    }
    let mut lifecycles = Vec::new();
    for worker in workers {
        lifecycles.extend(worker.await.context("a worker panicked")??);
    }
    let wall = started.elapsed();
    let episodes_per_sec = lifecycles.len() as f64 / wall.as_secs_f64();
    let report = running.shutdown(Duration::from_secs(10)).await;

    let rows = [
        ("step `true` over gRPC (round trip)", stats(grpc_steps)),
        ("step `true` in process (Episode::step)", stats(local_steps)),
        ("episode create+step+close over gRPC", stats(lifecycles)),
    ];
    if args.json {
        let mut map: serde_json::Map<String, serde_json::Value> = rows
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect();
        map.insert(
            "episodes_per_sec".into(),
            serde_json::json!(episodes_per_sec),
        );
        map.insert("concurrency".into(), serde_json::json!(args.concurrency));
        println!("{}", serde_json::to_string_pretty(&map)?);
    } else {
        println!(
            "{:<42} {:>6} {:>10} {:>10} {:>10}",
            "measurement", "n", "p50 ms", "p99 ms", "mean ms"
        );
        for (name, s) in &rows {
            println!(
                "{name:<42} {:>6} {:>10.3} {:>10.3} {:>10.3}",
                s.n, s.p50_ms, s.p99_ms, s.mean_ms
            );
        }
        println!(
            "gRPC overhead at p50: {:.3} ms per step",
            rows[0].1.p50_ms - rows[1].1.p50_ms
        );
        println!(
            "throughput: {episodes_per_sec:.1} episodes/s with {} concurrent clients ({} episodes in {:.1} s)",
            args.concurrency,
            rows[2].1.n,
            wall.as_secs_f64()
        );
    }
    anyhow::ensure!(
        report.containers_swept == 0,
        "the server left {} container(s) behind",
        report.containers_swept
    );
    Ok(())
}
