//! `swe-env trace harvest`: the FAIL_TO_PASS and PASS_TO_PASS tests of every task of a dataset traced (gold patch
//! applied) into a resumable, sharded directory with a manifest and a data card (see `trace::store`).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use swe_env_sandbox::DockerEngine;

use super::error::usage;
use super::trace::CapsArgs;
use super::{EXIT_FAILED, EXIT_INFRA, EXIT_INTERRUPTED, EXIT_OK};
use crate::benchmark::manifest::dataset_digest;
use crate::datasets::load_source;
use crate::task::{image_for, OFFICIAL_IMAGE_TEMPLATE};
use crate::trace::harvest::{
    rate, run_harvest, write_card, HarvestReport, HarvestSettings, HarvestTask, TaskEvent,
};
use crate::trace::store::{DatasetEntry, Header, TraceStore, DEFAULT_MAX_SHARD_BYTES, FORMAT};

/// `swe-env trace harvest`.
#[derive(Debug, clap::Args)]
pub struct HarvestArgs {
    /// Dataset source (repeatable): `fixtures`, an alias or a JSON/JSONL/parquet path.
    #[arg(
        long = "dataset",
        visible_alias = "tasks",
        value_name = "SRC",
        required = true
    )]
    pub datasets: Vec<String>,
    /// Output directory (created; resumed when it holds a trace harvest of the same settings).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Only these instance ids (comma-separated or repeated).
    #[arg(
        long,
        visible_alias = "instance-ids",
        value_delimiter = ',',
        value_name = "IDS"
    )]
    pub instances: Vec<String>,
    /// At most this many tasks (after --shard and --instances, in dataset order).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Tasks traced at once.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: usize,
    /// Only the tasks whose sha256(instance_id) mod N is I (`I/N`, e.g. `0/4`).
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(u64, u64)>,
    /// Tests traced per task: FAIL_TO_PASS first, then PASS_TO_PASS.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub max_tests_per_task: usize,
    /// A shard file is closed and the next one opened past this size, bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_SHARD_BYTES, value_name = "BYTES")]
    pub max_shard_bytes: u64,
    /// Image name template for rows without an `image` field (`{id}`, `{id_raw}`).
    #[arg(long, default_value = OFFICIAL_IMAGE_TEMPLATE, value_name = "TEMPLATE")]
    pub image_template: String,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub caps: CapsArgs,
}

/// `I/N` with I < N.
fn parse_shard(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("{text:?} is not a shard: give I/N with 0 <= I < N, e.g. 0/4");
    let (index, count) = text.split_once('/').ok_or_else(bad)?;
    let index: u64 = index.trim().parse().map_err(|_| bad())?;
    let count: u64 = count.trim().parse().map_err(|_| bad())?;
    if count == 0 || index >= count {
        return Err(bad());
    }
    Ok((index, count))
}

/// Progress on stderr: a bar with ETA on a terminal, nothing otherwise.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(total: u64, done: u64) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(total)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} tasks, ETA {eta}, {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_position(done);
        bar.enable_steady_tick(Duration::from_millis(250));
        Self { bar }
    }

    fn update(&self, event: &TaskEvent, report: &HarvestReport) {
        self.bar.inc(1);
        self.bar.set_message(format!(
            "{} traces, {} failed",
            report.traces, report.failed
        ));
        if let TaskEvent::Failed(failure) = event {
            self.bar.suspend(|| {
                eprintln!(
                    "task {} failed ({}): {}",
                    failure.instance_id,
                    failure.reason,
                    failure.error.lines().next().unwrap_or("")
                );
            });
        }
    }
}

/// Runs `swe-env trace harvest`.
pub async fn run(args: HarvestArgs) -> anyhow::Result<ExitCode> {
    let options = args.caps.options();
    options
        .validate()
        .map_err(|error| usage(error.to_string()))?;
    if args.workers == 0 || args.workers > 256 {
        return Err(usage(format!(
            "--workers {} is out of range: give 1 to 256",
            args.workers
        )));
    }
    if args.max_tests_per_task == 0 {
        return Err(usage(
            "--max-tests-per-task 0 traces nothing: give at least 1",
        ));
    }
    if args.max_shard_bytes == 0 {
        return Err(usage(format!(
            "--max-shard-bytes 0 is not a size: give a positive number of bytes (default {DEFAULT_MAX_SHARD_BYTES})"
        )));
    }
    let settings = HarvestSettings {
        options,
        locals: args.caps.locals,
        max_tests_per_task: args.max_tests_per_task,
        workers: args.workers,
    };

    // Datasets, their digests, then the selection.
    let mut entries = Vec::new();
    let mut tasks = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for source in &args.datasets {
        let loaded = load_source(source).await?;
        for error in &loaded.errors {
            eprintln!("warning: {source}: skipped a bad dataset row: {error}");
        }
        if loaded.instances.is_empty() {
            return Err(usage(format!(
                "no instances in {source}: check the dataset path or alias"
            )));
        }
        let digest = dataset_digest(source).with_context(|| format!("hashing dataset {source}"))?;
        entries.push(DatasetEntry {
            source: source.clone(),
            sha256: digest.sha256.clone(),
            rows: loaded.instances.len() as u64,
        });
        for row in loaded.instances {
            if !seen.insert(row.instance_id.clone()) {
                return Err(usage(format!(
                    "instance {} is in more than one dataset (or twice in one): give each task once",
                    row.instance_id
                )));
            }
            let image = image_for(&row, &args.image_template);
            tasks.push(HarvestTask {
                row,
                dataset_sha256: digest.sha256.clone(),
                image,
            });
        }
    }
    let unknown: Vec<&String> = args
        .instances
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(usage(format!(
            "unknown instance ids (in none of the datasets): {}",
            unknown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    tasks.retain(|task| {
        (args.instances.is_empty() || args.instances.contains(&task.row.instance_id))
            && args.shard.is_none_or(|(index, count)| {
                crate::trace::harvest::in_shard(&task.row.instance_id, index, count)
            })
    });
    if let Some(limit) = args.limit {
        tasks.truncate(limit);
    }

    let header = Header {
        format: FORMAT.to_owned(),
        config_hash: settings.config_hash(),
        config: settings.config(),
        datasets: entries,
        created_at: String::new(),
    };
    let out = args.out.clone();
    let max_shard_bytes = args.max_shard_bytes;
    let store =
        tokio::task::spawn_blocking(move || TraceStore::open(&out, header, max_shard_bytes))
            .await
            .context("opening the output directory")?;
    let store = match store {
        Ok(store) => store,
        Err(error) if error.is_usage() => return Err(usage(error.to_string())),
        Err(error) => return Err(error.into()),
    };
    let done_before = tasks
        .iter()
        .filter(|task| store.is_committed(&task.row.instance_id))
        .count() as u64;
    let store = Arc::new(Mutex::new(store));

    let engine = DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker: check that the engine runs (docker info)")?;
    sweep_orphans(&engine).await;
    if !args.json {
        eprintln!(
            "trace harvest into {}: {} tasks selected ({} already committed), {} workers, config {}",
            args.out.display(),
            tasks.len(),
            done_before,
            args.workers,
            &settings.config_hash()[..12]
        );
    }
    let bar = Bar::new(tasks.len() as u64, done_before);
    let work = run_harvest(
        &engine,
        Arc::clone(&store),
        tasks,
        &settings,
        |event, report| bar.update(event, report),
    );
    let outcome = tokio::select! {
        result = work => Some(result),
        () = interrupted() => None,
    };
    bar.bar.finish_and_clear();
    let Some(result) = outcome else {
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(&engine).await;
        let dir = args.out.clone();
        let _ = tokio::task::spawn_blocking(move || write_card(&dir)).await;
        eprintln!(
            "interrupted: committed tasks are kept; removed {removed} container(s) of this run; run the same command \
             again to go on"
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    // Again at the end: a container whose creation a killed earlier run had in flight can appear in the engine
    // after the first sweep (dockerd finishes a create request its client no longer waits for).
    sweep_orphans(&engine).await;
    let (report, code) = match result {
        Ok(report) => {
            let code = if report.failed > 0 {
                EXIT_FAILED
            } else {
                EXIT_OK
            };
            (report, code)
        }
        Err(error) => {
            eprintln!(
                "error: {error}; committed tasks are kept, run the same command again to go on"
            );
            (HarvestReport::default(), EXIT_INFRA)
        }
    };
    drop(store);
    let dir = args.out.clone();
    let card = tokio::task::spawn_blocking(move || write_card(&dir))
        .await
        .context("writing the data card")??;
    let elapsed = Duration::from_secs_f64(report.elapsed_secs);
    let traces_per_sec = rate(report.traces, elapsed);
    let frames_per_sec = rate(report.frames, elapsed);
    let bytes_per_frame = if report.frames > 0 {
        report.trace_bytes as f64 / report.frames as f64
    } else {
        0.0
    };
    if args.json {
        let value = serde_json::json!({
            "out": args.out,
            "exit_code": code,
            "invocation": report,
            "traces_per_sec": traces_per_sec,
            "frames_per_sec": frames_per_sec,
            "bytes_per_frame": bytes_per_frame,
            "card": card,
        });
        println!("{value}");
    } else {
        let row = |name: &str, value: String| eprintln!("  {name:<26} {value}");
        eprintln!("trace harvest summary ({}):", args.out.display());
        row(
            "tasks selected",
            format!("{} ({} already committed)", report.selected, report.skipped),
        );
        row("committed now", report.committed.to_string());
        row("failed now", report.failed.to_string());
        for (reason, count) in &report.failures {
            row(&format!("  {reason}"), count.to_string());
        }
        row("traces now", report.traces.to_string());
        row("frames now", report.frames.to_string());
        row("items now", report.items.to_string());
        row("traces/s", format!("{traces_per_sec:.1}"));
        row("frames/s", format!("{frames_per_sec:.1}"));
        row("bytes per frame", format!("{bytes_per_frame:.1}"));
        row(
            "directory total",
            format!(
                "{} tasks, {} traces, {} frames, {} items",
                card.tasks, card.traces, card.frames, card.items
            ),
        );
        eprintln!(
            "outputs: trace-harvest.json, shards/, manifest.jsonl, failures.jsonl, data_card.md, data_card.json"
        );
    }
    Ok(ExitCode::from(code))
}

/// Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Removes the containers of dead swe-env processes (a killed earlier run's), warning when that fails.
async fn sweep_orphans(engine: &DockerEngine) {
    if let Err(error) =
        swe_env_sandbox::collect_garbage(engine, swe_env_sandbox::GcScope::Orphans).await
    {
        eprintln!("warning: removing containers of dead swe-env processes failed: {error}");
    }
}
