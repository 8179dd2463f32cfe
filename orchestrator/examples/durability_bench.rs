//! Trajectory append throughput and latency for each `durability` mode (`per-step`, `batched`, `os`) with 1 … 1,000
//! concurrent writers (one file each, like episodes), interleaved: every round runs each mode once at each
//! concurrency, the mode order rotating round by round, with equal sample counts.
//!
//! `cargo run --release -p swe-env --example durability_bench -- [--concurrency 1,64,256,1000] [--rounds 3]
//! [--dir target/durability-bench]`
//!
//! Put `--dir` on the filesystem the trajectories go to: the numbers are that filesystem's.

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use swe_env::trajectory::{Durability, GroupCommitter, Record, TrajectoryWriter};

#[derive(Parser)]
struct Args {
    /// Concurrent writers, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,256,1000")]
    concurrency: Vec<usize>,
    /// Rounds (each runs every mode once at every concurrency).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Appends per mode per round at each concurrency (split evenly among the writers, at least 5 each).
    #[arg(long, default_value_t = 2000)]
    appends: usize,
    /// Scratch directory (emptied after each run).
    #[arg(long, default_value = "target/durability-bench")]
    dir: PathBuf,
    /// Runtime worker threads (the server uses one per core).
    #[arg(long)]
    workers: Option<usize>,
}

/// The modes compared; `None` is the writer before `durability` existed (tokio::fs: write, flush and
/// fdatasync, three blocking-pool round trips per record), kept as the baseline.
const MODES: [Option<Durability>; 4] = [
    None,
    Some(Durability::PerStep),
    Some(Durability::Batched),
    Some(Durability::Os),
];

fn name(mode: Option<Durability>) -> &'static str {
    mode.map_or("per-step-before", Durability::as_str)
}

#[derive(Default)]
struct Sample {
    latencies: Vec<Duration>,
    wall: Duration,
    cpu: Duration,
    syncs: u64,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = args.workers {
        builder.worker_threads(workers);
    }
    builder.enable_all().build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let committer = GroupCommitter::start()?;
    let observation = "o".repeat(1024);
    let mut samples: BTreeMap<(usize, &str), Sample> = BTreeMap::new();
    for round in 0..args.rounds {
        for &n in &args.concurrency {
            let per_writer = (args.appends / n).max(5);
            for k in 0..MODES.len() {
                let mode = MODES[(k + round) % MODES.len()];
                let dir = args.dir.join(format!("r{round}-n{n}-{}", name(mode)));
                let syncs_before = committer.stats().syncs;
                let cpu_before = process_cpu()?;
                let started = Instant::now();
                let mut tasks = Vec::with_capacity(n);
                for w in 0..n {
                    let path = dir.join(format!("ep{w}.jsonl"));
                    let committer = Arc::clone(&committer);
                    let observation = observation.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut writer = match mode {
                            None => {
                                return before::append_records(&path, per_writer, &observation)
                                    .await;
                            }
                            Some(Durability::Batched) => {
                                TrajectoryWriter::create_batched(&path, committer).await?
                            }
                            Some(other) => TrajectoryWriter::create_with(&path, other).await?,
                        };
                        let mut latencies = Vec::with_capacity(per_writer);
                        for i in 0..per_writer {
                            let record = step(i as u32, &observation)?;
                            let t = Instant::now();
                            writer.append(&record).await?;
                            latencies.push(t.elapsed());
                        }
                        Ok::<_, Box<dyn Error + Send + Sync>>(latencies)
                    }));
                }
                let sample = samples.entry((n, name(mode))).or_default();
                for task in tasks {
                    sample
                        .latencies
                        .extend(task.await?.map_err(|e| e.to_string())?);
                }
                sample.wall += started.elapsed();
                sample.cpu += process_cpu()?.saturating_sub(cpu_before);
                sample.syncs += committer.stats().syncs - syncs_before;
                tokio::fs::remove_dir_all(&dir).await?;
            }
        }
        eprintln!("round {} of {} done", round + 1, args.rounds);
    }
    println!(
        "{:>7}  {:<15} {:>8} {:>11} {:>9} {:>9} {:>13} {:>8}",
        "writers", "mode", "appends", "appends/s", "p50 ms", "p99 ms", "cpu us/append", "syncs"
    );
    for &n in &args.concurrency {
        for mode in MODES {
            let Some(sample) = samples.get_mut(&(n, name(mode))) else {
                continue;
            };
            sample.latencies.sort();
            let count = sample.latencies.len();
            let q = |p: f64| {
                sample.latencies[((count as f64 * p) as usize).min(count - 1)].as_secs_f64() * 1e3
            };
            let syncs = match mode {
                Some(Durability::Batched) => sample.syncs,
                None | Some(Durability::PerStep) => count as u64,
                Some(Durability::Os) => 0,
            };
            println!(
                "{:>7}  {:<15} {:>8} {:>11.0} {:>9.3} {:>9.3} {:>13.1} {:>8}",
                n,
                name(mode),
                count,
                count as f64 / sample.wall.as_secs_f64(),
                q(0.5),
                q(0.99),
                sample.cpu.as_secs_f64() * 1e6 / count as f64,
                syncs,
            );
        }
    }
    Ok(())
}

fn step(idx: u32, observation: &str) -> Result<Record, serde_json::Error> {
    serde_json::from_value(serde_json::json!({
        "type": "step", "step_idx": idx, "raw_action": "<tool: bash>\nls\n</tool>", "parsed_call": null,
        "observation": observation, "tool_ms": 1, "at": "2026-01-01T00:00:00.000Z",
    }))
}

/// User + system CPU time of this process so far (from /proc/self/stat, in clock ticks of 10 ms).
fn process_cpu() -> Result<Duration, Box<dyn Error>> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').ok_or("unreadable /proc/self/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11).ok_or("short stat")?.parse::<u64>()?
        + fields.get(12).ok_or("short stat")?.parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// The writer as it was before `durability`: tokio::fs, write + flush + sync_data per record.
mod before {
    use std::time::{Duration, Instant};

    use tokio::io::AsyncWriteExt;

    pub async fn append_records(
        path: &std::path::Path,
        n: usize,
        observation: &str,
    ) -> Result<Vec<Duration>, Box<dyn std::error::Error + Send + Sync>> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n {
            let record = super::step(i as u32, observation)?;
            let t = Instant::now();
            let mut line = serde_json::to_vec(&record)?;
            line.push(b'\n');
            file.write_all(&line).await?;
            file.flush().await?;
            file.sync_data().await?;
            latencies.push(t.elapsed());
        }
        Ok(latencies)
    }
}
