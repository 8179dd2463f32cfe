//! `swe-env bench fleet`: what the fleet client costs and what several nodes buy on one box. Starts three
//! `swe-env serve` children (or takes `--server ADDR` repeated) and prints
//! - placement overhead per CreateEpisode: a create through [`Fleet`] and a direct create on the same node over the
//!   same channel, interleaved one by one, the order within a pair alternating (median / p90 of both and of the
//!   per-pair difference), and the client-side decision alone (the choice from the cached estimates, no I/O) in µs;
//! - episodes/s (create, S `echo` steps, close; C at a time) through a fleet of one node vs all nodes, in
//!   interleaved rounds (one-node round, all-nodes round, repeat), every node with the same `max_episodes`;
//! - every node it could not use (its GetCapacity failed) with the reason (`not used: …`; `unusable` in the JSON).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;

use super::fleet::{Fleet, FleetConfig, Placed};
use super::serve_child::ServeChild;
use crate::server::proto;

/// Arguments of `swe-env bench fleet`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  swe-env bench fleet\n  \
    swe-env bench fleet --episodes 60 --concurrency 12 --rounds 3 --json\n  \
    swe-env bench fleet --server 10.0.0.1:50051 --server 10.0.0.2:50051 --token-file token")]
pub struct FleetBenchArgs {
    /// Use these running servers instead of starting three (repeatable; the one-node rounds use the first that
    /// answers; a server whose GetCapacity fails is printed as `not used` with the reason and left out).
    #[arg(long = "server")]
    pub servers: Vec<String>,
    /// Token file of `--server` (else SWE_ENV_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Task source of the servers the bench starts: `fixtures`, an alias, or a dataset file.
    #[arg(long, default_value = "fixtures")]
    pub tasks: String,
    /// Task every episode runs.
    #[arg(long, default_value = "swe-env-fixtures__spans-1")]
    pub task: String,
    /// `max_episodes` of every server the bench starts.
    #[arg(long, default_value_t = 64)]
    pub max_episodes: usize,
    /// Create pairs (fleet, direct) timed for the placement overhead.
    #[arg(long, default_value_t = 20)]
    pub creates: usize,
    /// Episodes per throughput round.
    #[arg(long, default_value_t = 24)]
    pub episodes: usize,
    /// `echo` steps per episode in the throughput rounds.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Episodes in flight at once in the throughput rounds.
    #[arg(long, default_value_t = 6)]
    pub concurrency: usize,
    /// Throughput rounds per configuration (one-node and all-nodes rounds alternate).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Median, p90 and mean of signed samples (milliseconds or microseconds, as named by the caller).
#[derive(Debug, Clone, serde::Serialize)]
struct Summary {
    n: usize,
    p50: f64,
    p90: f64,
    mean: f64,
}

fn summarize(mut samples: Vec<f64>) -> Summary {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(idx).copied().unwrap_or(f64::NAN)
    };
    let mean = if samples.is_empty() {
        f64::NAN
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    Summary {
        n: samples.len(),
        p50: at(0.5),
        p90: at(0.9),
        mean,
    }
}

/// A row in milliseconds, with the shared `Stats` p99 beside the median / p90.
#[derive(Debug, Clone, serde::Serialize)]
struct MsRow {
    n: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
}

fn ms_row(samples: &[Duration]) -> MsRow {
    let stats = super::stats::stats(samples.to_vec());
    let summary = summarize(samples.iter().map(|d| d.as_secs_f64() * 1e3).collect());
    MsRow {
        n: stats.n,
        p50_ms: stats.p50_ms,
        p90_ms: summary.p90,
        p99_ms: stats.p99_ms,
        mean_ms: stats.mean_ms,
    }
}

#[derive(Debug, serde::Serialize)]
struct Placement {
    fleet_create: MsRow,
    direct_create: MsRow,
    /// Per pair: fleet create − direct create (signed, ms).
    difference: SignedMs,
    /// The choice from the cached estimates alone, µs.
    decision_us: Summary,
    /// One GetCapacity round trip (a refresh asks every node at once, at most once per `refresh`).
    get_capacity: MsRow,
}

#[derive(Debug, serde::Serialize)]
struct SignedMs {
    n: usize,
    p50_ms: f64,
    p90_ms: f64,
    mean_ms: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Rate {
    nodes: usize,
    episodes: usize,
    seconds: f64,
    episodes_per_s: f64,
    /// Episodes/s of each round.
    rounds: Vec<f64>,
}

#[derive(Debug, serde::Serialize)]
struct Throughput {
    steps_per_episode: usize,
    concurrency: usize,
    one_node: Rate,
    all_nodes: Rate,
    /// all_nodes.episodes_per_s / one_node.episodes_per_s.
    ratio: f64,
}

#[derive(Debug, serde::Serialize)]
struct NodeRow {
    node_id: String,
    address: String,
    max_episodes: u32,
}

/// A node (or an address that never answered) the bench could not use, and why.
#[derive(Debug, serde::Serialize)]
struct Unusable {
    /// Empty for an address that never answered.
    node_id: String,
    address: String,
    reason: String,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    nodes: Vec<NodeRow>,
    /// Nodes left out: their GetCapacity failed (unreachable, too slow, refused the token, ...).
    unusable: Vec<Unusable>,
    placement: Placement,
    throughput: Throughput,
}

/// Starts node `node_id` of the bench's own fleet in `dir`. Throughput, not admission refusals: calls may queue for
/// a start slot as long as needed; no warm pools.
async fn start_server(
    args: &FleetBenchArgs,
    dir: &Path,
    node_id: &str,
    token: &str,
) -> anyhow::Result<ServeChild> {
    let flags: Vec<OsString> = vec![
        "--node-id".into(),
        node_id.into(),
        "--tasks".into(),
        args.tasks.clone().into(),
        "--max-episodes".into(),
        args.max_episodes.to_string().into(),
    ];
    ServeChild::start(
        dir,
        "start_queue_ms: 600000\nshutdown_grace_secs: 10\npool:\n  max_containers: 0\n",
        token,
        &flags,
    )
    .await
}

fn create_request(task: &str) -> proto::CreateEpisodeRequest {
    proto::CreateEpisodeRequest {
        task: Some(proto::create_episode_request::Task::TaskId(task.to_owned())),
        ..Default::default()
    }
}

fn close_request(episode_id: &str) -> proto::CloseEpisodeRequest {
    proto::CloseEpisodeRequest {
        episode_id: episode_id.to_owned(),
        final_answer: String::new(),
    }
}

fn echo(episode_id: &str, i: usize) -> proto::StepRequest {
    proto::StepRequest {
        episode_id: episode_id.to_owned(),
        action: Some(proto::step_request::Action::Text(format!(
            "<tool: bash>\necho step-{i}\n</tool>"
        ))),
        ..Default::default()
    }
}

/// Runs the bench and prints the report.
pub async fn run(args: FleetBenchArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("swe-env-bench-fleet-{}", std::process::id()));
    let mut servers = Vec::new();
    let result = async {
        let (addresses, token) = if args.servers.is_empty() {
            let token = format!("{:032x}", rand::random::<u128>());
            for i in 1..=3 {
                let node_dir = dir.join(format!("n{i}"));
                let node_id = format!("bench-{}-n{i}", std::process::id());
                servers.push(start_server(&args, &node_dir, &node_id, &token).await?);
            }
            (servers.iter().map(|s| s.addr.clone()).collect(), token)
        } else {
            let token = match &args.token_file {
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
                None => std::env::var("SWE_ENV_TOKEN").unwrap_or_default(),
            };
            (args.servers.clone(), token)
        };
        let token = (!token.is_empty()).then_some(token);
        measure(&args, addresses, token).await
    }
    .await;
    for server in servers {
        server.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&args, &report);
    }
    Ok(())
}

async fn measure(
    args: &FleetBenchArgs,
    addresses: Vec<String>,
    token: Option<String>,
) -> anyhow::Result<Report> {
    if addresses.is_empty() {
        anyhow::bail!("no server address (give --server or let the bench start its own)");
    }
    let all = Fleet::connect(FleetConfig::new(addresses, token.clone()))
        .await
        .context("connecting to the fleet")?;
    let (up, down): (Vec<_>, Vec<_>) = all.nodes().into_iter().partition(|n| !n.down);
    let unusable: Vec<Unusable> = down
        .into_iter()
        .map(|n| Unusable {
            node_id: n.node_id,
            address: n.address,
            reason: n.down_reason.unwrap_or_default(),
        })
        .collect();
    let first = up
        .first()
        .context("no node answers GetCapacity")?
        .address
        .clone();
    let one = Fleet::connect(FleetConfig::new(vec![first], token))
        .await
        .context("connecting to the first usable node")?;
    let nodes: Vec<NodeRow> = up
        .into_iter()
        .map(|n| NodeRow {
            node_id: n.node_id,
            address: n.address,
            max_episodes: n.report.max_episodes,
        })
        .collect();

    // (a) Placement overhead: a fleet create and a direct create on the same node, pair by pair; the order within
    // a pair alternates (the second create of a pair meets the engine still busy with the first).
    let mut fleet_times = Vec::with_capacity(args.creates);
    let mut direct_times = Vec::with_capacity(args.creates);
    let mut difference = Vec::with_capacity(args.creates);
    for i in 0..args.creates {
        let (fleet_time, direct_time, ids) = if i % 2 == 0 {
            let (fleet_time, placed) = fleet_create(&all, &args.task).await?;
            let (direct_time, direct_id) = direct_create(&all, &placed.node_id, &args.task).await?;
            (
                fleet_time,
                direct_time,
                [placed.response.episode_id, direct_id],
            )
        } else {
            let node = all.next_node().context("no node has a free slot")?;
            let (direct_time, direct_id) = direct_create(&all, &node, &args.task).await?;
            let (fleet_time, placed) = fleet_create(&all, &args.task).await?;
            (
                fleet_time,
                direct_time,
                [placed.response.episode_id, direct_id],
            )
        };
        for id in ids {
            all.close_episode(close_request(&id)).await?;
        }
        difference.push((fleet_time.as_secs_f64() - direct_time.as_secs_f64()) * 1e3);
        fleet_times.push(fleet_time);
        direct_times.push(direct_time);
    }
    let mut decision = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let chosen = all.next_node();
        decision.push(t.elapsed().as_secs_f64() * 1e6);
        std::hint::black_box(chosen);
    }
    let mut capacity_times = Vec::with_capacity(200);
    if let Some(mut client) = nodes_first(&all).and_then(|node| all.client_for_node(&node)) {
        for _ in 0..200 {
            let t = Instant::now();
            client
                .get_capacity(proto::GetCapacityRequest {})
                .await
                .context("GetCapacity")?;
            capacity_times.push(t.elapsed());
        }
    }
    let difference = summarize(difference);
    let placement = Placement {
        fleet_create: ms_row(&fleet_times),
        direct_create: ms_row(&direct_times),
        difference: SignedMs {
            n: difference.n,
            p50_ms: difference.p50,
            p90_ms: difference.p90,
            mean_ms: difference.mean,
        },
        decision_us: summarize(decision),
        get_capacity: ms_row(&capacity_times),
    };

    // (b) Episodes/s: one-node and all-nodes rounds alternate.
    let mut one_rate = Rate {
        nodes: 1,
        ..Rate::default()
    };
    let mut all_rate = Rate {
        nodes: nodes.len(),
        ..Rate::default()
    };
    for _ in 0..args.rounds {
        for (fleet, rate) in [(&one, &mut one_rate), (&all, &mut all_rate)] {
            let t = Instant::now();
            round(args, fleet).await?;
            let seconds = t.elapsed().as_secs_f64();
            rate.episodes += args.episodes;
            rate.seconds += seconds;
            rate.rounds.push(args.episodes as f64 / seconds);
        }
    }
    for rate in [&mut one_rate, &mut all_rate] {
        rate.episodes_per_s = rate.episodes as f64 / rate.seconds;
    }
    let ratio = all_rate.episodes_per_s / one_rate.episodes_per_s;
    Ok(Report {
        nodes,
        unusable,
        placement,
        throughput: Throughput {
            steps_per_episode: args.steps,
            concurrency: args.concurrency,
            one_node: one_rate,
            all_nodes: all_rate,
            ratio,
        },
    })
}

fn nodes_first(fleet: &Fleet) -> Option<String> {
    fleet
        .nodes()
        .into_iter()
        .find(|n| !n.down)
        .map(|n| n.node_id)
}

async fn fleet_create(fleet: &Fleet, task: &str) -> anyhow::Result<(Duration, Placed)> {
    let t = Instant::now();
    let placed = fleet
        .create_episode(create_request(task))
        .await
        .context("CreateEpisode through the fleet")?;
    Ok((t.elapsed(), placed))
}

/// A CreateEpisode straight to `node` over the fleet's own channel to it (no placement).
async fn direct_create(
    fleet: &Fleet,
    node: &str,
    task: &str,
) -> anyhow::Result<(Duration, String)> {
    let mut client = fleet
        .client_for_node(node)
        .with_context(|| format!("no client for node {node}"))?;
    let t = Instant::now();
    let reply = client
        .create_episode(create_request(task))
        .await
        .with_context(|| format!("CreateEpisode directly on {node}"))?;
    Ok((t.elapsed(), reply.into_inner().episode_id))
}

/// `episodes` short episodes (create, `steps` echoes, close), `concurrency` at a time; any error fails the round.
async fn round(args: &FleetBenchArgs, fleet: &Fleet) -> anyhow::Result<()> {
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..args.episodes)
        .map(|_| async {
            let placed = fleet.create_episode(create_request(&args.task)).await?;
            let id = placed.response.episode_id;
            for i in 0..args.steps {
                fleet.step(echo(&id, i)).await?;
            }
            fleet.close_episode(close_request(&id)).await?;
            Ok(())
        })
        .buffer_unordered(args.concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

fn print_report(args: &FleetBenchArgs, report: &Report) {
    let nodes: Vec<String> = report
        .nodes
        .iter()
        .map(|n| format!("{} at {} (max {})", n.node_id, n.address, n.max_episodes))
        .collect();
    println!("nodes: {}", nodes.join(", "));
    for n in &report.unusable {
        let node = if n.node_id.is_empty() {
            "(never answered)"
        } else {
            n.node_id.as_str()
        };
        println!("not used: {} at {}: {}", node, n.address, n.reason);
    }
    let p = &report.placement;
    println!(
        "{:<44} {:>6} {:>10} {:>10} {:>10}",
        "placement (fleet and direct interleaved)", "n", "p50 ms", "p90 ms", "mean ms"
    );
    for (name, row) in [
        ("CreateEpisode through the fleet", &p.fleet_create),
        ("CreateEpisode direct, same node", &p.direct_create),
    ] {
        println!(
            "{name:<44} {:>6} {:>10.2} {:>10.2} {:>10.2}",
            row.n, row.p50_ms, row.p90_ms, row.mean_ms
        );
    }
    println!(
        "{:<44} {:>6} {:>10.2} {:>10.2} {:>10.2}",
        "difference per pair (fleet - direct)",
        p.difference.n,
        p.difference.p50_ms,
        p.difference.p90_ms,
        p.difference.mean_ms
    );
    println!(
        "client-side decision alone (cached estimates): p50 {:.2} µs, p90 {:.2} µs ({} samples)",
        p.decision_us.p50, p.decision_us.p90, p.decision_us.n
    );
    println!(
        "GetCapacity round trip (a refresh: every node at once, at most once per second): p50 {:.3} ms, p90 {:.3} ms \
        ({} samples)",
        p.get_capacity.p50_ms, p.get_capacity.p90_ms, p.get_capacity.n
    );
    let t = &report.throughput;
    println!(
        "episodes/s (create, {} echo steps, close; {} in flight; {} interleaved rounds of {} episodes each):",
        t.steps_per_episode, t.concurrency, args.rounds, args.episodes
    );
    for (name, rate) in [("one node", &t.one_node), ("all nodes", &t.all_nodes)] {
        let rounds: Vec<String> = rate.rounds.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "  {name:<10} ({} node(s)): {:.2} episodes/s ({} episodes in {:.1} s; rounds {})",
            rate.nodes,
            rate.episodes_per_s,
            rate.episodes,
            rate.seconds,
            rounds.join(", ")
        );
    }
    println!("  all nodes / one node: {:.2}x", t.ratio);
}
