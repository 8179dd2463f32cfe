//! `swe-env trace harvest`: the FAIL_TO_PASS then PASS_TO_PASS tests of every task of a dataset traced (gold patch
//! applied) into a [`TraceStore`], `workers` tasks at a time, committed tasks skipped, failed ones recorded in
//! `failures.jsonl` and retried by the next invocation; then the data card.
//!
//! Cancellation: dropping the future of [`run_harvest`] drops the in-flight tasks (their sandboxes remove their
//! containers); a commit already handed to the blocking pool completes (a row is the commit, so it is whole or absent).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use swe_env_grading::dataset::Instance;
use swe_env_sandbox::DockerEngine;
use tracing::{info, warn};

use crate::fsio;
use crate::trace::format::LocalsStyle;
use crate::trace::run::{trace_tests, TraceError, TraceOptions, TraceRun};
use crate::trace::store::{
    config_hash, frame_bucket, now_rfc3339, read_failures, read_manifest, Failure, ManifestRow,
    StoreError, TaskCommit, TraceStore, FORMAT,
};
use crate::trajectory::digest::sha256_hex;

/// `data_card.json`.
pub const CARD_JSON: &str = "data_card.json";
/// `data_card.md`.
pub const CARD_MD: &str = "data_card.md";
/// Characters of a traced run's output kept in a failure.
const FAILURE_TAIL_CHARS: usize = 1_500;

/// What the harvest does for every task (all of it but `workers` is in the config hash).
#[derive(Debug, Clone)]
pub struct HarvestSettings {
    /// Caps, filters, state, timeouts of each traced run.
    pub options: TraceOptions,
    /// How the `"cwm"` field of each trace writes locals.
    pub locals: LocalsStyle,
    /// Tests traced per task (FAIL_TO_PASS first, then PASS_TO_PASS).
    pub max_tests_per_task: usize,
    /// Tasks traced at once.
    pub workers: usize,
}

impl HarvestSettings {
    /// The result-changing settings, as stored in the header.
    pub fn config(&self) -> Value {
        json!({
            "format": FORMAT,
            "options": self.options,
            "locals": self.locals,
            "max_tests_per_task": self.max_tests_per_task,
        })
    }

    /// sha256 of [`Self::config`].
    pub fn config_hash(&self) -> String {
        config_hash(&self.config())
    }
}

/// One task to harvest.
#[derive(Debug, Clone)]
pub struct HarvestTask {
    /// The dataset row.
    pub row: Instance,
    /// sha256 of its dataset.
    pub dataset_sha256: String,
    /// Its image.
    pub image: String,
}

/// Whether `instance_id` is in shard `index` of `count`: sha256(instance_id), its first 8 bytes as a big-endian
/// number, mod `count`.
pub fn in_shard(instance_id: &str, index: u64, count: u64) -> bool {
    if count <= 1 {
        return true;
    }
    let hex = sha256_hex(instance_id.as_bytes());
    let value = u64::from_str_radix(&hex[..16], 16).unwrap_or(0);
    value % count == index
}

/// The tests traced for `row`: FAIL_TO_PASS then PASS_TO_PASS, each once, at most `max`.
pub fn tests_for(row: &Instance, max: usize) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    row.fail_to_pass
        .iter()
        .chain(&row.pass_to_pass)
        .filter(|test| seen.insert(test.as_str()))
        .take(max)
        .cloned()
        .collect()
}

/// The closed reason of a failed traced run.
pub fn failure_reason(error: &TraceError) -> &'static str {
    match error {
        TraceError::PatchFailed { .. } => "apply_failed",
        TraceError::UnsupportedRunner { .. } => "unsupported_runner",
        TraceError::Spec { .. } => "no_test_spec",
        TraceError::Tracer { .. } => "tracer",
        TraceError::Event(_) => "bad_events",
        TraceError::Sandbox(_) => "docker",
        TraceError::Split(_) => "split",
        _ => "input",
    }
}

/// What happened to one task.
#[derive(Debug, Clone)]
pub enum TaskEvent {
    /// Committed.
    Committed(Box<ManifestRow>),
    /// Failed (recorded in `failures.jsonl`; retried next time).
    Failed(Failure),
}

/// Counts of one invocation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HarvestReport {
    /// Tasks selected (after shard, ids and limit).
    pub selected: u64,
    /// Of those, already committed before this invocation.
    pub skipped: u64,
    /// Committed by this invocation.
    pub committed: u64,
    /// Failed in this invocation.
    pub failed: u64,
    /// Traces committed by this invocation.
    pub traces: u64,
    /// Frames of those traces.
    pub frames: u64,
    /// Items committed by this invocation.
    pub items: u64,
    /// Uncompressed bytes of the traces lines committed by this invocation.
    pub trace_bytes: u64,
    /// Compressed bytes of the traces frames committed by this invocation.
    pub trace_bytes_compressed: u64,
    /// Failures by reason.
    pub failures: BTreeMap<String, u64>,
    /// Wall time, seconds.
    pub elapsed_secs: f64,
}

impl HarvestReport {
    fn add(&mut self, event: &TaskEvent) {
        match event {
            TaskEvent::Committed(row) => {
                self.committed += 1;
                self.traces += row.traces;
                self.frames += row.frames;
                self.items += row.items;
                self.trace_bytes += row.traces_at.bytes;
                self.trace_bytes_compressed += row.traces_at.length;
            }
            TaskEvent::Failed(failure) => {
                self.failed += 1;
                *self.failures.entry(failure.reason.clone()).or_default() += 1;
            }
        }
    }
}

/// Why the harvest stopped.
#[derive(Debug, thiserror::Error)]
pub enum HarvestError {
    /// The store failed (disk full, …): committed tasks stay, run again to go on.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking pool lost a commit.
    #[error("a commit task failed: {0}")]
    Join(String),
}

/// Traces `tasks` (those not committed yet) into `store`, `settings.workers` at a time; `on_event` is called after
/// each task with the running report. Returns the report (the store stays open in the caller's `Arc`).
pub async fn run_harvest(
    engine: &DockerEngine,
    store: Arc<Mutex<TraceStore>>,
    tasks: Vec<HarvestTask>,
    settings: &HarvestSettings,
    mut on_event: impl FnMut(&TaskEvent, &HarvestReport),
) -> Result<HarvestReport, HarvestError> {
    let started = Instant::now();
    let mut report = HarvestReport {
        selected: tasks.len() as u64,
        ..HarvestReport::default()
    };
    let todo: Vec<HarvestTask> = {
        let guard = store
            .lock()
            .map_err(|error| HarvestError::Join(error.to_string()))?;
        tasks
            .into_iter()
            .filter(|task| !guard.is_committed(&task.row.instance_id))
            .collect()
    };
    report.skipped = report.selected - todo.len() as u64;
    info!(
        selected = report.selected,
        skipped = report.skipped,
        workers = settings.workers,
        "trace harvest starts"
    );
    let mut pending = todo.into_iter();
    let mut running = FuturesUnordered::new();
    let workers = settings.workers.max(1);
    loop {
        while running.len() < workers {
            let Some(task) = pending.next() else { break };
            running.push(trace_task(engine, task, settings));
        }
        let Some(outcome) = running.next().await else {
            break;
        };
        let store = Arc::clone(&store);
        let event = tokio::task::spawn_blocking(move || -> Result<TaskEvent, StoreError> {
            let mut guard = store.lock().map_err(|error| StoreError::Io {
                op: "lock",
                path: std::path::PathBuf::from("the store"),
                source: std::io::Error::other(error.to_string()),
            })?;
            match outcome {
                Ok(commit) => Ok(TaskEvent::Committed(Box::new(guard.commit(commit)?))),
                Err(failure) => {
                    guard.record_failure(&failure)?;
                    Ok(TaskEvent::Failed(failure))
                }
            }
        })
        .await
        .map_err(|error| HarvestError::Join(error.to_string()))??;
        report.add(&event);
        report.elapsed_secs = started.elapsed().as_secs_f64();
        on_event(&event, &report);
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Traces one task and turns the run into what it commits, or a failure.
async fn trace_task(
    engine: &DockerEngine,
    task: HarvestTask,
    settings: &HarvestSettings,
) -> Result<TaskCommit, Failure> {
    let row = &task.row;
    let fail = |reason: &str, error: String| Failure {
        instance_id: row.instance_id.clone(),
        repo: row.repo.clone(),
        reason: reason.to_owned(),
        error,
        at: now_rfc3339(),
    };
    let tests = tests_for(row, settings.max_tests_per_task);
    if tests.is_empty() {
        return Err(fail(
            "no_tests",
            "the task lists no FAIL_TO_PASS or PASS_TO_PASS test".to_owned(),
        ));
    }
    let run = match trace_tests(engine, row, &task.image, &tests, &settings.options).await {
        Ok(run) => run,
        Err(error) => {
            warn!(instance_id = %row.instance_id, %error, "tracing a task failed");
            return Err(fail(failure_reason(&error), error.to_string()));
        }
    };
    if run.split.traces.is_empty() {
        let tail: String = {
            let skip = run
                .output_tail
                .chars()
                .count()
                .saturating_sub(FAILURE_TAIL_CHARS);
            run.output_tail.chars().skip(skip).collect()
        };
        return Err(fail(
            "no_traces",
            format!(
                "{} tests ran (pytest exit {:?}) but no trace completed; output ends: {tail}",
                run.split.tests.len(),
                run.pytest_exit
            ),
        ));
    }
    let locals = settings.locals;
    let dataset_sha256 = task.dataset_sha256.clone();
    let (instance_id, repo) = (row.instance_id.clone(), row.repo.clone());
    let built = tokio::task::spawn_blocking(move || {
        build_commit(run, locals, instance_id, repo, dataset_sha256)
    })
    .await;
    match built {
        Ok(Ok(commit)) => Ok(commit),
        Ok(Err(error)) => Err(fail("serialize", error)),
        Err(error) => Err(fail("serialize", error.to_string())),
    }
}

/// The JSON lines and the row of a traced run.
fn build_commit(
    run: TraceRun,
    locals: LocalsStyle,
    instance_id: String,
    repo: String,
    dataset_sha256: String,
) -> Result<TaskCommit, String> {
    // One layout for every traces file: `TraceRun::traces_jsonl` (the trace's fields in order, then "cwm").
    let traces_jsonl = String::from_utf8(
        run.traces_jsonl(locals)
            .map_err(|error| error.to_string())?,
    )
    .map_err(|error| error.to_string())?;
    let items_jsonl = String::from_utf8(run.items_jsonl().map_err(|error| error.to_string())?)
        .map_err(|error| error.to_string())?;
    let mut frames = 0u64;
    let mut frame_buckets: BTreeMap<String, u64> = BTreeMap::new();
    for trace in &run.split.traces {
        frames += trace.frames.len() as u64;
        *frame_buckets
            .entry(frame_bucket(trace.frames.len()).to_owned())
            .or_default() += 1;
    }
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    for test in &run.split.tests {
        *outcomes.entry(test.outcome.clone()).or_default() += 1;
    }
    let mut caps: BTreeMap<String, u64> = BTreeMap::new();
    for cap in &run.split.caps {
        *caps.entry(cap.reason.clone()).or_default() += 1;
    }
    for (name, count) in [
        ("too_long", run.split.stats.total.too_long),
        ("over_budget", run.split.stats.total.over_budget),
        ("incomplete", run.split.stats.total.incomplete),
    ] {
        if count > 0 {
            caps.insert(name.to_owned(), count);
        }
    }
    if run.timed_out {
        caps.insert("timeout".to_owned(), 1);
    }
    let empty = crate::trace::store::FrameAt {
        shard: String::new(),
        offset: 0,
        length: 0,
        bytes: 0,
    };
    Ok(TaskCommit {
        row: ManifestRow {
            instance_id,
            repo,
            dataset_sha256,
            python: run.split.python.clone(),
            tests: run.split.tests.len() as u64,
            outcomes,
            traces: run.split.traces.len() as u64,
            frames,
            frame_buckets,
            items: run.items.len() as u64,
            caps,
            events_bytes: run.events_bytes,
            pytest_exit: run.pytest_exit,
            elapsed_ms: u64::try_from(run.elapsed.as_millis()).unwrap_or(u64::MAX),
            traces_at: empty.clone(),
            items_at: empty,
            committed_at: String::new(),
        },
        traces_jsonl,
        items_jsonl,
    })
}

/// Counts of one repository in the data card.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoCounts {
    /// Tasks committed.
    pub tasks: u64,
    /// Traces.
    pub traces: u64,
    /// Frames.
    pub frames: u64,
    /// Items.
    pub items: u64,
}

/// `data_card.json`: what the directory holds (every committed row, every failure).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DataCard {
    /// Tasks committed.
    pub tasks: u64,
    /// Traces.
    pub traces: u64,
    /// Frames.
    pub frames: u64,
    /// Traces per frame-count bucket.
    pub frames_per_trace: BTreeMap<String, u64>,
    /// Output-prediction items.
    pub items: u64,
    /// Uncompressed bytes of the traces lines.
    pub trace_bytes: u64,
    /// Compressed bytes of the traces frames.
    pub trace_bytes_compressed: u64,
    /// Uncompressed trace bytes per frame (0 without frames).
    pub bytes_per_frame: f64,
    /// Compressed trace bytes per frame.
    pub compressed_bytes_per_frame: f64,
    /// Tests traced.
    pub tests: u64,
    /// Test outcomes.
    pub test_outcomes: BTreeMap<String, u64>,
    /// Caps hit (tracer caps by reason, splitter drops, timeouts).
    pub caps: BTreeMap<String, u64>,
    /// Per repository.
    pub per_repo: BTreeMap<String, RepoCounts>,
    /// Tasks whose latest attempt failed and that are not committed, by reason.
    pub failed_tasks: BTreeMap<String, u64>,
    /// Failed attempts recorded, by reason (including tasks committed later).
    pub failed_attempts: BTreeMap<String, u64>,
}

/// Builds the data card from the directory's files.
pub fn data_card(dir: &Path) -> Result<DataCard, StoreError> {
    let rows = read_manifest(dir)?;
    let mut card = DataCard::default();
    let mut committed = std::collections::HashSet::new();
    for row in &rows {
        committed.insert(row.instance_id.clone());
        card.tasks += 1;
        card.traces += row.traces;
        card.frames += row.frames;
        card.items += row.items;
        card.trace_bytes += row.traces_at.bytes;
        card.trace_bytes_compressed += row.traces_at.length;
        card.tests += row.tests;
        for (bucket, n) in &row.frame_buckets {
            *card.frames_per_trace.entry(bucket.clone()).or_default() += n;
        }
        for (outcome, n) in &row.outcomes {
            *card.test_outcomes.entry(outcome.clone()).or_default() += n;
        }
        for (cap, n) in &row.caps {
            *card.caps.entry(cap.clone()).or_default() += n;
        }
        let repo = card.per_repo.entry(row.repo.clone()).or_default();
        repo.tasks += 1;
        repo.traces += row.traces;
        repo.frames += row.frames;
        repo.items += row.items;
    }
    if card.frames > 0 {
        card.bytes_per_frame = card.trace_bytes as f64 / card.frames as f64;
        card.compressed_bytes_per_frame = card.trace_bytes_compressed as f64 / card.frames as f64;
    }
    let mut latest: BTreeMap<String, String> = BTreeMap::new();
    for failure in read_failures(dir)? {
        *card
            .failed_attempts
            .entry(failure.reason.clone())
            .or_default() += 1;
        latest.insert(failure.instance_id, failure.reason);
    }
    for (instance_id, reason) in latest {
        if !committed.contains(&instance_id) {
            *card.failed_tasks.entry(reason).or_default() += 1;
        }
    }
    Ok(card)
}

/// The card as Markdown.
pub fn card_markdown(card: &DataCard) -> String {
    let mut md = String::from("# Trace harvest data card\n\n");
    md.push_str("| | |\n|---|---:|\n");
    for (name, value) in [
        ("tasks", card.tasks.to_string()),
        ("tests traced", card.tests.to_string()),
        ("traces", card.traces.to_string()),
        ("frames", card.frames.to_string()),
        ("output-prediction items", card.items.to_string()),
        ("trace bytes (uncompressed)", card.trace_bytes.to_string()),
        (
            "trace bytes (zstd)",
            card.trace_bytes_compressed.to_string(),
        ),
        ("bytes per frame", format!("{:.1}", card.bytes_per_frame)),
        (
            "zstd bytes per frame",
            format!("{:.1}", card.compressed_bytes_per_frame),
        ),
    ] {
        md.push_str(&format!("| {name} | {value} |\n"));
    }
    let table = |md: &mut String, title: &str, rows: Vec<(String, u64)>| {
        md.push_str(&format!("\n## {title}\n\n"));
        if rows.is_empty() {
            md.push_str("none\n");
            return;
        }
        md.push_str("| | count |\n|---|---:|\n");
        for (key, value) in rows {
            md.push_str(&format!("| {key} | {value} |\n"));
        }
    };
    let pairs =
        |map: &BTreeMap<String, u64>| map.iter().map(|(k, v)| (k.clone(), *v)).collect::<Vec<_>>();
    let buckets: Vec<(String, u64)> = ["1-4", "5-16", "17-64", "65-256", "257-1024", "1025+"]
        .iter()
        .map(|b| {
            (
                format!("{b} frames"),
                card.frames_per_trace.get(*b).copied().unwrap_or(0),
            )
        })
        .collect();
    table(&mut md, "Traces by length", buckets);
    table(&mut md, "Test outcomes", pairs(&card.test_outcomes));
    table(&mut md, "Caps hit", pairs(&card.caps));
    table(
        &mut md,
        "Failed tasks (not committed) by reason",
        pairs(&card.failed_tasks),
    );
    table(
        &mut md,
        "Failed attempts by reason",
        pairs(&card.failed_attempts),
    );
    md.push_str("\n## Per repository\n\n| repo | tasks | traces | frames | items |\n|---|---:|---:|---:|---:|\n");
    for (repo, c) in &card.per_repo {
        md.push_str(&format!(
            "| {repo} | {} | {} | {} | {} |\n",
            c.tasks, c.traces, c.frames, c.items
        ));
    }
    md
}

/// Writes `data_card.json` and `data_card.md` (atomically) and returns the card.
pub fn write_card(dir: &Path) -> Result<DataCard, StoreError> {
    let card = data_card(dir)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreError::Io {
            op: "write",
            path,
            source,
        }
    };
    let json_path = dir.join(CARD_JSON);
    let mut text = serde_json::to_string_pretty(&card)
        .map_err(|error| io(&json_path)(std::io::Error::other(error)))?;
    text.push('\n');
    fsio::write_atomically(&json_path, text.as_bytes()).map_err(io(&json_path))?;
    let md_path = dir.join(CARD_MD);
    fsio::write_atomically(&md_path, card_markdown(&card).as_bytes()).map_err(io(&md_path))?;
    Ok(card)
}

/// Wall time as seconds, never zero (for rates).
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_ids() {
        let ids: Vec<String> = (0..200).map(|i| format!("repo__task-{i}")).collect();
        for count in [1u64, 2, 3, 7] {
            let mut hits = vec![0u64; count as usize];
            for id in &ids {
                let owners: Vec<u64> = (0..count).filter(|i| in_shard(id, *i, count)).collect();
                assert_eq!(owners.len(), 1, "{id} in {owners:?} of {count}");
                hits[owners[0] as usize] += 1;
            }
            assert!(hits.iter().all(|h| *h > 0), "{hits:?}");
        }
    }
}
