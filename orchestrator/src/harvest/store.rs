//! The harvest output directory (`--out DIR`): the header `harvest.json`, zstd shards of whole rollouts
//! (`shards/shard-NNNNN.jsonl.zst`, one frame per rollout, one JSON line per frame), the commit log
//! `manifest.jsonl`, the failures log `failures.jsonl`, `work/` for in-flight episodes, and at the end of an
//! invocation `manifest.parquet` ([`super::parquet`]) and the data card ([`super::card`]).
//!
//! A rollout is committed iff its [`ManifestRow`] is a complete line of `manifest.jsonl`. [`HarvestStore::commit`]
//! appends the frame to the current shard and fdatasyncs it, then appends the row and fdatasyncs the manifest, so a
//! kill at any moment leaves at most one uncommitted frame and a torn row behind. [`HarvestStore::open`] takes the
//! directory's lock (`.lock`, the run-directory lock of `benchmark::manifest`), checks the header (a different
//! config hash or dataset set is [`StoreError::ConfigChanged`]), and repairs: the manifest is truncated after its
//! last complete, parseable line, every shard to the end of the last frame a row points into (shards no row points
//! into are removed), `failures.jsonl` after its last newline; `work/` is cleared. Kill -9 anywhere: no committed
//! rollout lost, none twice, and every line of every shard is a committed rollout.
//! All file work runs on the blocking pool, never on an async worker.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::benchmark::manifest::{
    diff_settings, lock_run_dir, sha256_hex, FieldDiff, RunStartError,
};
use crate::trajectory::record::{now_rfc3339, Record, StepTokens};

/// Format tag of `harvest.json`.
pub const FORMAT: &str = "swe-env-harvest/1";
/// The header file.
pub const HEADER_FILE: &str = "harvest.json";
/// The commit log.
pub const MANIFEST_FILE: &str = "manifest.jsonl";
/// Rollouts that produced no gradable trajectory (retried by the next invocation).
pub const FAILURES_FILE: &str = "failures.jsonl";
/// The directory of shards.
pub const SHARDS_DIR: &str = "shards";
/// In-flight episode files; cleared on open.
pub const WORK_DIR: &str = "work";
/// The manifest as parquet, rewritten by [`HarvestStore::finish`].
pub const PARQUET_FILE: &str = "manifest.parquet";
/// Default shard size limit: 256 MiB (compressed bytes).
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 256 << 20;
/// zstd level of the frames.
const ZSTD_LEVEL: i32 = 3;

/// Time spent on one rollout, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTiming {
    /// Whole rollout, from picking it up to its commit.
    pub wall_ms: u64,
    /// Sandbox start (image, container, episode set-up).
    pub start_ms: u64,
    /// Model calls.
    pub model_ms: u64,
    /// Tool executions.
    pub tool_ms: u64,
    /// Grading.
    pub grade_ms: u64,
}

/// One line of a shard: a whole rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutLine {
    /// See [`rollout_id`].
    pub rollout_id: String,
    /// sha256 of the dataset file the task came from.
    pub dataset_sha256: String,
    /// sha256 of the result-changing config.
    pub config_hash: String,
    /// The task.
    pub instance_id: String,
    /// The task's repository (`owner/name`).
    pub repo: String,
    /// Sample index `0..K`.
    pub sample_idx: u32,
    /// The seed sent as `sampling.seed`, when any.
    pub seed: Option<u64>,
    /// The sampling temperature, when set.
    pub temperature: Option<f64>,
    /// Model name.
    pub model: String,
    /// The grading verdict (false when not graded).
    pub resolved: bool,
    /// Time spent.
    pub timing: RolloutTiming,
    /// The full trajectory: `episode_start`, steps…, `episode_end`.
    pub records: Vec<Record>,
}

/// One row of `manifest.jsonl` / `manifest.parquet`: a committed rollout, summarized ([`summarize`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRow {
    /// See [`rollout_id`].
    pub rollout_id: String,
    /// sha256 of the dataset file the task came from.
    pub dataset_sha256: String,
    /// sha256 of the result-changing config.
    pub config_hash: String,
    /// The task.
    pub instance_id: String,
    /// The task's repository.
    pub repo: String,
    /// Sample index.
    pub sample_idx: u32,
    /// The seed sent, when any.
    pub seed: Option<u64>,
    /// The temperature, when set.
    pub temperature: Option<f64>,
    /// Model name.
    pub model: String,
    /// The episode id of the committed attempt.
    pub episode_id: String,
    /// `episode_end.status` (`submitted`, `max_turns`, `format_errors`, …).
    pub status: String,
    /// The grading verdict.
    pub resolved: bool,
    /// The primary scalar reward: `rewards.execution` of the episode (`swe_env_grading::rewards::Rewards`:
    /// `resolved_reward` when resolved, else `unresolved_reward`; +1 / -1 with the default reward config). `None`
    /// when the episode was not graded (no rewards recorded).
    pub reward: Option<f64>,
    /// `episode_end.rewards` as recorded (parquet: a JSON string column).
    pub rewards: Option<Value>,
    /// Steps.
    pub n_turns: u32,
    /// Steps whose action could not be parsed.
    pub n_format_errors: u32,
    /// Model calls with `finish_reason` `length` (steps and the final answer).
    pub n_length_cut: u32,
    /// Prompt tokens summed over the model calls (steps and final answer).
    pub prompt_tokens: u64,
    /// Completion tokens summed over the model calls.
    pub completion_tokens: u64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: u64,
    /// Observation bytes summed over the steps.
    pub obs_bytes_total: u64,
    /// The largest observation, bytes.
    pub obs_bytes_max: u64,
    /// Bytes of the submission (0 without one).
    pub patch_bytes: u64,
    /// sha256 hex of the normalized submission ([`patch_hash`]); `None` without a (non-empty) submission.
    pub patch_hash: Option<String>,
    /// sha256 hex of the conversation content ([`trajectory_hash`]).
    pub trajectory_hash: String,
    /// See [`RolloutTiming`].
    pub wall_ms: u64,
    /// See [`RolloutTiming`].
    pub start_ms: u64,
    /// See [`RolloutTiming`].
    pub model_ms: u64,
    /// See [`RolloutTiming`].
    pub tool_ms: u64,
    /// See [`RolloutTiming`].
    pub grade_ms: u64,
    /// Uncompressed line length (JSON + `\n`).
    pub bytes: u64,
    /// Shard file name, e.g. `shard-00000.jsonl.zst`.
    pub shard: String,
    /// Byte offset of the frame in the compressed shard.
    pub offset: u64,
    /// Byte length of the frame.
    pub length: u64,
    /// Commit time (RFC 3339, ms).
    pub created_at: String,
}

/// A rollout that produced no gradable trajectory (`failures.jsonl`); not committed, so retried next time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutFailure {
    /// See [`rollout_id`].
    pub rollout_id: String,
    /// The task.
    pub instance_id: String,
    /// Sample index.
    pub sample_idx: u32,
    /// Closed set chosen by the runner (`image_missing`, `model_unavailable`, `sandbox`, `grading`, …).
    pub error_kind: String,
    /// The error, for a person.
    pub error: String,
    /// When (RFC 3339, ms).
    pub at: String,
}

/// One dataset of the harvest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetEntry {
    /// The source as given (`fixtures`, alias, path).
    pub source: String,
    /// sha256 of the dataset bytes (`benchmark::manifest::dataset_digest`).
    pub sha256: String,
    /// Rows in it.
    pub rows: u64,
}

/// What an invocation brings to `harvest.json`: compared with the stored header on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HarvestHeader {
    /// The datasets.
    pub datasets: Vec<DatasetEntry>,
    /// sha256 hex of the canonical JSON of `config`.
    pub config_hash: String,
    /// The effective result-changing config.
    pub config: Value,
}

/// One invocation that opened the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invocation {
    /// When it opened the store.
    pub at: String,
    /// Its pid.
    pub pid: u32,
    /// Its command line (values of options naming a key, token, secret or password redacted; long ones cut).
    pub argv_summary: String,
    /// Rows committed before it started.
    pub committed_before: u64,
}

/// `harvest.json` as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeaderFile {
    /// [`FORMAT`].
    pub format: String,
    /// The datasets (as first recorded).
    pub datasets: Vec<DatasetEntry>,
    /// The config hash.
    pub config_hash: String,
    /// The config.
    pub config: Value,
    /// When the directory was created.
    pub created_at: String,
    /// Every invocation, oldest first.
    pub invocations: Vec<Invocation>,
}

/// Store settings that do not change results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// A shard is closed once its compressed size reaches this; the next frame opens a new shard.
    pub max_shard_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
        }
    }
}

/// Time summed over rollouts, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSums {
    /// Rollout wall time.
    pub wall_ms: u64,
    /// Sandbox start.
    pub start_ms: u64,
    /// Model calls.
    pub model_ms: u64,
    /// Tools.
    pub tool_ms: u64,
    /// Grading.
    pub grade_ms: u64,
}

impl TimeSums {
    /// Adds one rollout's timing.
    pub fn add(&mut self, timing: &RolloutTiming) {
        self.wall_ms += timing.wall_ms;
        self.start_ms += timing.start_ms;
        self.model_ms += timing.model_ms;
        self.tool_ms += timing.tool_ms;
        self.grade_ms += timing.grade_ms;
    }
}

/// What one invocation spent (filled by the runner, shown by the data card beside the totals of all rows).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpentSummary {
    /// Wall-clock time of the invocation, ms.
    pub invocation_wall_ms: u64,
    /// Rollouts committed by this invocation.
    pub committed_new: u64,
    /// Time summed over this invocation's rollouts (committed and failed, as far as measured).
    pub time: TimeSums,
    /// Prompt tokens spent by this invocation (failed rollouts included when known).
    pub prompt_tokens: u64,
    /// Completion tokens spent by this invocation.
    pub completion_tokens: u64,
    /// This invocation's failures by `error_kind`.
    pub failures_by_kind: BTreeMap<String, u64>,
}

/// Errors of the harvest store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the directory's lock.
    #[error(
        "harvest directory {} is in use by another swe-env process ({}): wait for it to end, or use another --out",
        dir.display(),
        pid.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}"))
    )]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid, when readable.
        pid: Option<u32>,
    },
    /// The stored header's config or dataset set differs from this invocation's.
    #[error(
        "harvest directory {} was started with a different configuration; resuming would mix rollouts of two \
         configurations:\n{}\nTo proceed: rerun with the stored configuration (in {}), or use another --out",
        dir.display(),
        fields.iter().map(|d| format!("  {d}")).collect::<Vec<_>>().join("\n"),
        dir.join(HEADER_FILE).display()
    )]
    ConfigChanged {
        /// The directory.
        dir: PathBuf,
        /// Every differing field (`config_hash`, `config.…`, `datasets`).
        fields: Vec<FieldDiff>,
    },
    /// A stored file does not parse.
    #[error("cannot read {}: {detail}; restore it from a backup, or use another --out", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A rollout given to `commit` does not belong in this store.
    #[error("cannot commit rollout {rollout_id}: {detail}")]
    Rejected {
        /// The rollout.
        rollout_id: String,
        /// Why.
        detail: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Bad usage or input (exit 2: directory in use, configuration changed, a stored file unreadable), as opposed
    /// to an infrastructure failure (`Io`, exit 3) or a runner bug (`Rejected`, exit 3).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::InUse { .. } | Self::ConfigChanged { .. } | Self::Corrupt { .. }
        )
    }

    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { op, path, source }
    }
}

/// `rollout_id`: the first 32 hex chars of sha256(`{dataset_sha256}\n{instance_id}\n{sample_idx}\n{config_hash}`).
pub fn rollout_id(
    dataset_sha256: &str,
    instance_id: &str,
    sample_idx: u32,
    config_hash: &str,
) -> String {
    let mut hash = sha256_hex(
        format!("{dataset_sha256}\n{instance_id}\n{sample_idx}\n{config_hash}").as_bytes(),
    );
    hash.truncate(32);
    hash
}

/// sha256 hex of `swe_env_grading::patch_key::normalize(submission)`: equal for near-identical patches (same
/// change, other context, offsets, whitespace or trailing Python comments); `None` when the submission normalizes
/// to nothing. The one definition is the export's (`trajectory::filter::patch_hash`), so manifest and export agree.
pub fn patch_hash(submission: &str) -> Option<String> {
    crate::trajectory::filter::patch_hash(submission)
}

/// sha256 hex of the conversation content, the same bytes as the export's `trajectory::filter::conversation_hash`
/// (a test holds them equal; this one reads records, not a parsed trajectory): for every step its raw action and its observation, then the final
/// answer, each length-prefixed (`A<len>:…`, `O<len>:…`, `F<len>:…`) so no concatenation is ambiguous. Ids, times,
/// tokens and the prompt are left out: two rollouts that said and saw the same things hash the same.
pub fn trajectory_hash(records: &[Record]) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    let mut part = |tag: &str, text: &str| {
        context.update(format!("{tag}{}:", text.len()).as_bytes());
        context.update(text.as_bytes());
    };
    for record in records {
        match record {
            Record::Step(step) => {
                part("A", &step.raw_action);
                part("O", &step.observation);
            }
            Record::EpisodeEnd(end) => {
                if let Some(answer) = &end.final_answer {
                    part("F", answer);
                }
            }
            Record::EpisodeStart(_) => {}
        }
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where a frame lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameLocation {
    /// Shard file name.
    pub shard: String,
    /// Offset of the frame.
    pub offset: u64,
    /// Length of the frame.
    pub length: u64,
    /// Uncompressed line length.
    pub bytes: u64,
}

/// The manifest row of `line` stored at `location`: the one place a row is computed.
pub fn summarize(line: &RolloutLine, location: FrameLocation) -> ManifestRow {
    let mut episode_id = String::new();
    let mut status = String::from("unknown");
    let mut rewards = None;
    let mut submission: Option<&str> = None;
    let (mut n_turns, mut n_format_errors, mut n_length_cut) = (0u32, 0u32, 0u32);
    let (mut prompt_tokens, mut completion_tokens) = (0u64, 0u64);
    let (mut obs_bytes_total, mut obs_bytes_max) = (0u64, 0u64);
    let mut count_tokens = |tokens: &StepTokens, n_length_cut: &mut u32| {
        prompt_tokens += tokens.prompt.unwrap_or(0);
        completion_tokens += tokens.completion.unwrap_or(0);
        if tokens.finish_reason.as_deref() == Some("length") {
            *n_length_cut += 1;
        }
    };
    for record in &line.records {
        match record {
            Record::EpisodeStart(start) => episode_id.clone_from(&start.episode_id),
            Record::Step(step) => {
                n_turns += 1;
                if step.format_error.is_some() {
                    n_format_errors += 1;
                }
                count_tokens(&step.tokens, &mut n_length_cut);
                let obs = step.observation.len() as u64;
                obs_bytes_total += obs;
                obs_bytes_max = obs_bytes_max.max(obs);
            }
            Record::EpisodeEnd(end) => {
                status = end.status.as_str().to_owned();
                rewards.clone_from(&end.rewards);
                submission = end.submission.as_deref();
                if let Some(tokens) = &end.final_answer_tokens {
                    count_tokens(tokens, &mut n_length_cut);
                }
            }
        }
    }
    let reward = rewards
        .as_ref()
        .and_then(|r| r.get("execution"))
        .and_then(Value::as_f64);
    ManifestRow {
        rollout_id: line.rollout_id.clone(),
        dataset_sha256: line.dataset_sha256.clone(),
        config_hash: line.config_hash.clone(),
        instance_id: line.instance_id.clone(),
        repo: line.repo.clone(),
        sample_idx: line.sample_idx,
        seed: line.seed,
        temperature: line.temperature,
        model: line.model.clone(),
        episode_id,
        status,
        resolved: line.resolved,
        reward,
        rewards,
        n_turns,
        n_format_errors,
        n_length_cut,
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
        obs_bytes_total,
        obs_bytes_max,
        patch_bytes: submission.map_or(0, |s| s.len() as u64),
        patch_hash: submission.and_then(patch_hash),
        trajectory_hash: trajectory_hash(&line.records),
        wall_ms: line.timing.wall_ms,
        start_ms: line.timing.start_ms,
        model_ms: line.timing.model_ms,
        tool_ms: line.timing.tool_ms,
        grade_ms: line.timing.grade_ms,
        bytes: location.bytes,
        shard: location.shard,
        offset: location.offset,
        length: location.length,
        created_at: now_rfc3339(),
    }
}

/// `shard-00007.jsonl.zst`.
fn shard_name(index: u32) -> String {
    format!("shard-{index:05}.jsonl.zst")
}

/// The index of a shard file name.
fn shard_index(name: &str) -> Option<u32> {
    name.strip_prefix("shard-")?
        .strip_suffix(".jsonl.zst")?
        .parse()
        .ok()
}

/// The open files of a store (moved into blocking calls and back).
#[derive(Debug)]
struct Files {
    shard: Option<File>,
    shard_index: u32,
    shard_len: u64,
    manifest: File,
    manifest_len: u64,
    failures: Option<File>,
}

/// An open harvest directory: holds its lock until [`finish`](HarvestStore::finish) or drop.
#[derive(Debug)]
pub struct HarvestStore {
    dir: PathBuf,
    options: StoreOptions,
    header: HeaderFile,
    rows: Vec<ManifestRow>,
    ids: HashSet<String>,
    dataset_hashes: HashSet<String>,
    files: Option<Files>,
    _lock: File,
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    dir: &Path,
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Io {
            op: "run file work for",
            path: dir.to_path_buf(),
            source: std::io::Error::other(error.to_string()),
        })?
}

impl HarvestStore {
    /// Creates or reopens `dir`: lock, crash repair, header check. A different `config_hash` or dataset set →
    /// [`StoreError::ConfigChanged`] naming what changed.
    pub async fn open(
        dir: &Path,
        header: HarvestHeader,
        options: StoreOptions,
    ) -> Result<HarvestStore, StoreError> {
        let owned = dir.to_path_buf();
        blocking(dir, move || open_blocking(owned, header, options)).await
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The header as stored (this invocation included).
    pub fn header(&self) -> &HeaderFile {
        &self.header
    }

    /// Rows committed so far (resume: skip these ids), in commit order.
    pub fn committed(&self) -> &[ManifestRow] {
        &self.rows
    }

    /// Whether `rollout_id` is committed.
    pub fn is_committed(&self, rollout_id: &str) -> bool {
        self.ids.contains(rollout_id)
    }

    /// Where in-flight episode files go (cleared on open).
    pub fn work_dir(&self) -> PathBuf {
        self.dir.join(WORK_DIR)
    }

    /// Commits one rollout: its frame appended to the current shard and fsynced, then its row appended to the
    /// manifest and fsynced. On an error nothing is committed (what was written is cut off again when possible;
    /// otherwise the next open repairs it).
    pub async fn commit(&mut self, line: RolloutLine) -> Result<ManifestRow, StoreError> {
        self.check_line(&line)?;
        let files = self.files.take().ok_or_else(|| StoreError::Io {
            op: "commit into",
            path: self.dir.clone(),
            source: std::io::Error::other(
                "the store lost its files after an earlier failure; reopen the directory",
            ),
        })?;
        let dir = self.dir.clone();
        let max = self.options.max_shard_bytes;
        let (files, result) = blocking(&self.dir.clone(), move || {
            Ok(commit_blocking(&dir, files, max, &line))
        })
        .await?;
        self.files = Some(files);
        let row = result?;
        self.ids.insert(row.rollout_id.clone());
        self.rows.push(row.clone());
        Ok(row)
    }

    /// Appends a failure to `failures.jsonl` (fsynced). Not a commit: the rollout is retried next time.
    pub async fn record_failure(&mut self, failure: RolloutFailure) -> Result<(), StoreError> {
        let Some(mut files) = self.files.take() else {
            return Err(StoreError::Io {
                op: "record a failure in",
                path: self.dir.clone(),
                source: std::io::Error::other("the store lost its files; reopen the directory"),
            });
        };
        let path = self.dir.join(FAILURES_FILE);
        let (files, result) = blocking(&self.dir.clone(), move || {
            let result = (|| {
                if files.failures.is_none() {
                    files.failures = Some(open_append(&path)?);
                }
                let mut text = serde_json::to_string(&failure).map_err(std::io::Error::other)?;
                text.push('\n');
                let file = files
                    .failures
                    .as_mut()
                    .ok_or_else(|| std::io::Error::other("no file"))?;
                file.write_all(text.as_bytes())?;
                file.sync_data()
            })()
            .map_err(StoreError::io("append to", &path));
            Ok((files, result))
        })
        .await?;
        self.files = Some(files);
        result
    }

    /// Ends the invocation: writes `manifest.parquet` and the data card (`data_card.json`, `data_card.md`) from
    /// every committed row, then releases the lock.
    pub async fn finish(self, spent: SpentSummary) -> Result<super::card::DataCard, StoreError> {
        let dir = self.dir.clone();
        let rows = self.rows;
        let lock = self._lock;
        blocking(&dir.clone(), move || {
            let failures = read_failures(&dir)?;
            super::parquet::write_manifest_parquet(&dir.join(PARQUET_FILE), &rows)?;
            let card = super::card::build(&rows, &failures, &spent);
            super::card::write(&dir, &card)?;
            drop(lock);
            Ok(card)
        })
        .await
    }

    fn check_line(&self, line: &RolloutLine) -> Result<(), StoreError> {
        let reject = |detail: String| StoreError::Rejected {
            rollout_id: line.rollout_id.clone(),
            detail,
        };
        if self.ids.contains(&line.rollout_id) {
            return Err(reject(
                "it is already committed (a rollout is committed once)".into(),
            ));
        }
        if line.config_hash != self.header.config_hash {
            return Err(reject(format!(
                "its config_hash {} is not the store's {}",
                line.config_hash, self.header.config_hash
            )));
        }
        if !self.dataset_hashes.contains(&line.dataset_sha256) {
            return Err(reject(format!(
                "its dataset_sha256 {} is not one of the store's datasets",
                line.dataset_sha256
            )));
        }
        let expected = rollout_id(
            &line.dataset_sha256,
            &line.instance_id,
            line.sample_idx,
            &line.config_hash,
        );
        if line.rollout_id != expected {
            return Err(reject(format!(
                "its id should be {expected} (see harvest::store::rollout_id)"
            )));
        }
        match (line.records.first(), line.records.last()) {
            (Some(Record::EpisodeStart(_)), Some(Record::EpisodeEnd(_))) => Ok(()),
            _ => Err(reject(
                "its records must start with episode_start and end with episode_end (a whole trajectory)".into(),
            )),
        }
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// One commit; always gives the files back.
fn commit_blocking(
    dir: &Path,
    mut files: Files,
    max_shard_bytes: u64,
    line: &RolloutLine,
) -> (Files, Result<ManifestRow, StoreError>) {
    let result = commit_inner(dir, &mut files, max_shard_bytes, line);
    (files, result)
}

fn commit_inner(
    dir: &Path,
    files: &mut Files,
    max_shard_bytes: u64,
    line: &RolloutLine,
) -> Result<ManifestRow, StoreError> {
    let mut text = serde_json::to_string(line).map_err(|error| StoreError::Rejected {
        rollout_id: line.rollout_id.clone(),
        detail: format!("it does not serialize: {error}"),
    })?;
    text.push('\n');
    let frame = zstd::bulk::compress(text.as_bytes(), ZSTD_LEVEL)
        .map_err(StoreError::io("compress a rollout for", dir))?;
    let shards = dir.join(SHARDS_DIR);
    if files.shard.is_none() || files.shard_len >= max_shard_bytes {
        if files.shard.is_some() {
            files.shard_index += 1;
        }
        let path = shards.join(shard_name(files.shard_index));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("create shard", &path))?;
        sync_dir(&shards).map_err(StoreError::io("sync", &shards))?;
        files.shard = Some(file);
        files.shard_len = 0;
    }
    let name = shard_name(files.shard_index);
    let shard_path = shards.join(&name);
    let offset = files.shard_len;
    let shard = files
        .shard
        .as_mut()
        .ok_or_else(|| StoreError::io("open", &shard_path)(std::io::Error::other("no shard")))?;
    let written = shard
        .seek(SeekFrom::Start(offset))
        .and_then(|_| shard.write_all(&frame))
        .and_then(|()| shard.sync_data());
    if let Err(error) = written {
        // Cut the partial frame off again (best effort; open repairs it otherwise).
        let _ = shard.set_len(offset);
        return Err(StoreError::io("append a frame to", &shard_path)(error));
    }
    files.shard_len = offset + frame.len() as u64;
    let row = summarize(
        line,
        FrameLocation {
            shard: name,
            offset,
            length: frame.len() as u64,
            bytes: text.len() as u64,
        },
    );
    let manifest_path = dir.join(MANIFEST_FILE);
    let mut row_text = serde_json::to_string(&row).map_err(|error| StoreError::Rejected {
        rollout_id: line.rollout_id.clone(),
        detail: format!("its row does not serialize: {error}"),
    })?;
    row_text.push('\n');
    let written = files
        .manifest
        .write_all(row_text.as_bytes())
        .and_then(|()| files.manifest.sync_data());
    if let Err(error) = written {
        // Not committed: cut the row and the frame off again, so no shard holds a line the manifest lacks (best
        // effort; open repairs it otherwise).
        let _ = files.manifest.set_len(files.manifest_len);
        if let Some(shard) = files.shard.as_mut() {
            if shard.set_len(offset).is_ok() {
                files.shard_len = offset;
            }
        }
        return Err(StoreError::io("append a row to", &manifest_path)(error));
    }
    files.manifest_len += row_text.len() as u64;
    Ok(row)
}

fn open_blocking(
    dir: PathBuf,
    header: HarvestHeader,
    options: StoreOptions,
) -> Result<HarvestStore, StoreError> {
    std::fs::create_dir_all(&dir).map_err(StoreError::io("create the harvest directory", &dir))?;
    let lock = lock_run_dir(&dir, "").map_err(|error| match error {
        RunStartError::InUse { pid, .. } => StoreError::InUse {
            dir: dir.clone(),
            pid,
        },
        RunStartError::Io { op, path, source } => StoreError::Io { op, path, source },
        other => StoreError::Io {
            op: "lock",
            path: dir.clone(),
            source: std::io::Error::other(other.to_string()),
        },
    })?;
    let header_path = dir.join(HEADER_FILE);
    let stored = match std::fs::read(&header_path) {
        Ok(bytes) => Some(
            serde_json::from_slice::<HeaderFile>(&bytes).map_err(|error| StoreError::Corrupt {
                path: header_path.clone(),
                detail: error.to_string(),
            })?,
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(StoreError::io("read", &header_path)(error)),
    };
    if let Some(stored) = &stored {
        if stored.format != FORMAT {
            return Err(StoreError::Corrupt {
                path: header_path,
                detail: format!(
                    "its format is {:?} but this swe-env reads {FORMAT:?}; use the swe-env that wrote it, or another --out",
                    stored.format
                ),
            });
        }
        let fields = diff_settings(
            &compared(&stored.config_hash, &stored.config, &stored.datasets),
            &compared(&header.config_hash, &header.config, &header.datasets),
        );
        if !fields.is_empty() {
            return Err(StoreError::ConfigChanged { dir, fields });
        }
    }
    let shards = dir.join(SHARDS_DIR);
    std::fs::create_dir_all(&shards).map_err(StoreError::io("create", &shards))?;
    let (rows, manifest_len) = repair_manifest(&dir)?;
    repair_failures(&dir)?;
    let (shard_index, shard_len) = repair_shards(&dir, &rows)?;
    let work = dir.join(WORK_DIR);
    match std::fs::remove_dir_all(&work) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(StoreError::io("clear", &work)(error)),
    }
    std::fs::create_dir_all(&work).map_err(StoreError::io("create", &work))?;

    let mut header_file = stored.unwrap_or_else(|| HeaderFile {
        format: FORMAT.to_owned(),
        datasets: header.datasets.clone(),
        config_hash: header.config_hash.clone(),
        config: header.config.clone(),
        created_at: now_rfc3339(),
        invocations: Vec::new(),
    });
    header_file.invocations.push(Invocation {
        at: now_rfc3339(),
        pid: std::process::id(),
        argv_summary: argv_summary(std::env::args()),
        committed_before: rows.len() as u64,
    });
    write_json_atomically(&header_path, &header_file)?;

    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest = open_append(&manifest_path).map_err(StoreError::io("open", &manifest_path))?;
    let shard = if shard_len > 0 && shard_len < options.max_shard_bytes {
        let path = shards.join(shard_name(shard_index));
        Some(
            OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(StoreError::io("open", &path))?,
        )
    } else {
        None
    };
    // A full last shard: the next commit opens the next index (Files::shard None → index used as is).
    let shard_index = if shard_len >= options.max_shard_bytes {
        shard_index + 1
    } else {
        shard_index
    };
    let ids = rows.iter().map(|row| row.rollout_id.clone()).collect();
    let dataset_hashes = header_file
        .datasets
        .iter()
        .map(|d| d.sha256.clone())
        .collect();
    info!(dir = %dir.display(), committed = rows.len(), shard_index, shard_len, "harvest store opened");
    Ok(HarvestStore {
        dir,
        options,
        header: header_file,
        rows,
        ids,
        dataset_hashes,
        files: Some(Files {
            shard,
            shard_index,
            shard_len: if shard_len >= options.max_shard_bytes {
                0
            } else {
                shard_len
            },
            manifest,
            manifest_len,
            failures: None,
        }),
        _lock: lock,
    })
}

/// What is compared on resume: the config hash, the config and the set of dataset hashes.
fn compared(config_hash: &str, config: &Value, datasets: &[DatasetEntry]) -> Value {
    let mut hashes: Vec<&str> = datasets.iter().map(|d| d.sha256.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    json!({"config_hash": config_hash, "config": config, "datasets": hashes})
}

/// The command line for the header: values of options naming a secret redacted, at most 2000 chars.
fn argv_summary(args: impl Iterator<Item = String>) -> String {
    const SECRET: [&str; 4] = ["key", "token", "secret", "password"];
    let mut out = Vec::new();
    let mut redact_next = false;
    for arg in args {
        if redact_next {
            out.push("<redacted>".to_owned());
            redact_next = false;
            continue;
        }
        let lower = arg.to_ascii_lowercase();
        let secret = lower.starts_with("--") && SECRET.iter().any(|s| lower.contains(s));
        if secret {
            match arg.split_once('=') {
                Some((name, _)) => out.push(format!("{name}=<redacted>")),
                None => {
                    out.push(arg);
                    redact_next = true;
                }
            }
        } else {
            out.push(arg);
        }
    }
    let text = out.join(" ");
    if text.chars().count() > 2000 {
        let head: String = text.chars().take(2000).collect();
        format!("{head}…")
    } else {
        text
    }
}

fn write_json_atomically(path: &Path, value: &impl Serialize) -> Result<(), StoreError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|error| StoreError::Io {
        op: "serialize",
        path: path.to_path_buf(),
        source: std::io::Error::other(error),
    })?;
    text.push('\n');
    write_atomically(path, text.as_bytes())
}

/// `bytes` to `path` through a temp file in the same directory + rename + directory fsync.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    })();
    result.map_err(|error| {
        let _ = std::fs::remove_file(&temp);
        StoreError::io("write", path)(error)
    })
}

/// Parses the complete lines of a manifest; returns the rows and the byte length they span. A last complete
/// line that does not parse is a torn write (its bytes reached the disk out of order) and is left out; an
/// earlier one is corruption.
fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<(Vec<ManifestRow>, u64), StoreError> {
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    let mut end = 0usize;
    let lines: Vec<&[u8]> = bytes[..complete].split_inclusive(|&b| b == b'\n').collect();
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        match serde_json::from_slice::<ManifestRow>(line) {
            Ok(row) => {
                if seen.insert(row.rollout_id.clone()) {
                    rows.push(row);
                } else {
                    warn!(path = %path.display(), rollout_id = %row.rollout_id, "duplicate manifest row ignored");
                }
                end += line.len();
            }
            Err(error) if i + 1 == count => {
                warn!(path = %path.display(), %error, "torn last manifest line dropped");
            }
            Err(error) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    detail: format!("line {}: {error}", i + 1),
                })
            }
        }
    }
    Ok((rows, end as u64))
}

/// Truncates `manifest.jsonl` after its last good line (creating it when missing).
fn repair_manifest(dir: &Path) -> Result<(Vec<ManifestRow>, u64), StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(StoreError::io("read", &path)(error)),
    };
    let (rows, end) = parse_manifest(&path, &bytes)?;
    if end != bytes.len() as u64 || bytes.is_empty() {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        if end != bytes.len() as u64 {
            warn!(path = %path.display(), dropped_bytes = bytes.len() as u64 - end, "manifest tail repaired");
        }
        file.set_len(end)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("truncate", &path))?;
        sync_dir(dir).map_err(StoreError::io("sync", dir))?;
    }
    Ok((rows, end))
}

/// Truncates `failures.jsonl` after its last newline, so the next failure starts a line of its own.
fn repair_failures(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(FAILURES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("read", &path)(error)),
    };
    let end = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if end < bytes.len() {
        warn!(path = %path.display(), dropped_bytes = bytes.len() - end, "torn failures tail repaired");
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        file.set_len(end as u64)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("truncate", &path))?;
    }
    Ok(())
}

/// Truncates every shard to the end of the last frame a row points into (removing shards no row points into);
/// returns the index and length of the shard to continue.
fn repair_shards(dir: &Path, rows: &[ManifestRow]) -> Result<(u32, u64), StoreError> {
    let shards = dir.join(SHARDS_DIR);
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    for row in rows {
        let end = ends.entry(row.shard.clone()).or_default();
        *end = (*end).max(row.offset + row.length);
    }
    let mut present = BTreeMap::new();
    let entries = std::fs::read_dir(&shards).map_err(StoreError::io("list", &shards))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", &shards))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(index) = shard_index(&name) else {
            continue;
        };
        let path = entry.path();
        let len = entry
            .metadata()
            .map_err(StoreError::io("stat", &path))?
            .len();
        let end = ends.get(&name).copied().unwrap_or(0);
        if len < end {
            return Err(StoreError::Corrupt {
                path,
                detail: format!(
                    "the manifest points to byte {end} but the shard has {len} bytes (committed rollouts are lost)"
                ),
            });
        }
        if end == 0 {
            warn!(shard = %path.display(), bytes = len, "shard without committed rows removed");
            std::fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
            continue;
        }
        if len > end {
            warn!(shard = %path.display(), dropped_bytes = len - end, "uncommitted shard tail repaired");
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(StoreError::io("open", &path))?;
            file.set_len(end)
                .and_then(|()| file.sync_all())
                .map_err(StoreError::io("truncate", &path))?;
        }
        present.insert(index, end);
    }
    for name in ends.keys() {
        if shard_index(name).is_none_or(|index| !present.contains_key(&index)) {
            return Err(StoreError::Corrupt {
                path: shards.join(name),
                detail: "the manifest points into this shard but it is missing".into(),
            });
        }
    }
    sync_dir(&shards).map_err(StoreError::io("sync", &shards))?;
    Ok(present
        .last_key_value()
        .map_or((0, 0), |(&index, &len)| (index, len)))
}

/// The committed rows of a harvest directory (a torn tail ignored; nothing is modified, no lock taken).
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestRow>, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(StoreError::io("read", &path))?;
    Ok(parse_manifest(&path, &bytes)?.0)
}

/// The failures recorded in `failures.jsonl` (a torn tail ignored; none when the file is missing).
pub fn read_failures(dir: &Path) -> Result<Vec<RolloutFailure>, StoreError> {
    let path = dir.join(FAILURES_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StoreError::io("read", &path)(error)),
    };
    Ok(bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect())
}

/// One committed rollout: seeks to its frame and decodes it.
pub fn read_rollout(dir: &Path, row: &ManifestRow) -> Result<RolloutLine, StoreError> {
    let path = dir.join(SHARDS_DIR).join(&row.shard);
    let corrupt = |detail: String| StoreError::Corrupt {
        path: path.clone(),
        detail: format!(
            "frame of rollout {} at {}+{}: {detail}",
            row.rollout_id, row.offset, row.length
        ),
    };
    let length = usize::try_from(row.length).map_err(|_| corrupt("length too large".into()))?;
    let mut frame = vec![0u8; length];
    let mut file = File::open(&path).map_err(StoreError::io("open", &path))?;
    file.seek(SeekFrom::Start(row.offset))
        .and_then(|_| file.read_exact(&mut frame))
        .map_err(StoreError::io("read", &path))?;
    let text = zstd::stream::decode_all(frame.as_slice()).map_err(|e| corrupt(e.to_string()))?;
    let line: RolloutLine = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if line.rollout_id != row.rollout_id {
        return Err(corrupt(format!("holds rollout {}", line.rollout_id)));
    }
    Ok(line)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trajectory::record::{EpisodeEnd, EpisodeStart, EpisodeStatus, StepRecord};

    pub(crate) const DATASET: &str = "d0d0";
    pub(crate) const CONFIG_HASH: &str = "c0c0";
    const PATCH: &str = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n";

    pub(crate) fn header() -> HarvestHeader {
        HarvestHeader {
            datasets: vec![DatasetEntry {
                source: "fixtures".into(),
                sha256: DATASET.into(),
                rows: 3,
            }],
            config_hash: CONFIG_HASH.into(),
            config: json!({"model": "m", "sampling": {"temperature": 0.2}}),
        }
    }

    pub(crate) fn step(idx: u32, action: &str, observation: String) -> Record {
        Record::Step(StepRecord {
            step_idx: idx,
            request_id: None,
            raw_action: action.into(),
            reasoning: None,
            content: None,
            parsed_call: None,
            tool: Some("bash".into()),
            tool_call_id: None,
            format_error: None,
            tool_error: None,
            observation,
            exit_code: Some(0),
            timed_out: false,
            truncated: false,
            restarted: false,
            tool_ms: 1,
            model_ms: Some(2),
            tokens: StepTokens {
                prompt: Some(100),
                completion: Some(10),
                ..StepTokens::default()
            },
            at: "2026-01-01T00:00:00.000Z".into(),
        })
    }

    /// A whole synthetic rollout: `n_steps` steps with `obs_bytes`-byte observations, submitted and resolved when
    /// `sample_idx` is even.
    pub(crate) fn line(
        instance_id: &str,
        sample_idx: u32,
        n_steps: u32,
        obs_bytes: usize,
    ) -> RolloutLine {
        let id = rollout_id(DATASET, instance_id, sample_idx, CONFIG_HASH);
        let episode_id = format!("{instance_id}.s{sample_idx}.{}.abcd", &id[..8]);
        let mut records = vec![Record::EpisodeStart(EpisodeStart {
            schema_version: 1,
            episode_id,
            instance_id: instance_id.into(),
            task: json!({"instance_id": instance_id}),
            image: "img".into(),
            image_id: String::new(),
            image_digests: vec![],
            tool_format: "text".into(),
            limits: json!({}),
            model: None,
            prompt: vec![],
            versions: json!({}),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            owner: None,
        })];
        for i in 0..n_steps {
            let obs: String = (0..obs_bytes)
                .map(|k| char::from(b'a' + ((k as u32 * 7 + i + sample_idx) % 26) as u8))
                .collect();
            records.push(step(i, &format!("ls {i}"), obs));
        }
        let resolved = sample_idx.is_multiple_of(2);
        records.push(Record::EpisodeEnd(EpisodeEnd {
            status: EpisodeStatus::Submitted,
            detail: None,
            submission: Some(PATCH.into()),
            final_answer: None,
            final_answer_tokens: None,
            final_answer_reasoning: None,
            n_steps,
            rewards: Some(json!({"resolved": resolved, "execution": if resolved { 1.0 } else { -1.0 }, "similarity": null, "shaped": 0.0})),
            grading: None,
            duration_ms: 5,
            ended_at: "2026-01-01T00:00:01.000Z".into(),
        }));
        RolloutLine {
            rollout_id: id,
            dataset_sha256: DATASET.into(),
            config_hash: CONFIG_HASH.into(),
            instance_id: instance_id.into(),
            repo: "owner/repo".into(),
            sample_idx,
            seed: Some(u64::from(sample_idx) * 1000),
            temperature: Some(0.2),
            model: "m".into(),
            resolved,
            timing: RolloutTiming {
                wall_ms: 10,
                start_ms: 1,
                model_ms: 2,
                tool_ms: 3,
                grade_ms: 4,
            },
            records,
        }
    }

    fn options(max_shard_bytes: u64) -> StoreOptions {
        StoreOptions { max_shard_bytes }
    }

    fn shard_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join(SHARDS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn rollout_ids_are_32_hex_and_depend_on_every_part() {
        let id = rollout_id("d", "i", 0, "c");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, sha256_hex(b"d\ni\n0\nc")[..32]);
        assert_ne!(id, rollout_id("d", "i", 1, "c"));
        assert_ne!(id, rollout_id("d", "j", 0, "c"));
        assert_ne!(id, rollout_id("e", "i", 0, "c"));
        assert_ne!(id, rollout_id("d", "i", 0, "x"));
    }

    #[tokio::test]
    async fn commits_survive_a_reopen_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        let lines: Vec<RolloutLine> = (0..5).map(|k| line("inst-1", k, 3, 200)).collect();
        for l in &lines {
            let row = store.commit(l.clone()).await.unwrap();
            assert_eq!(row.rollout_id, l.rollout_id);
        }
        // Committing the same rollout again is refused: exactly once.
        let again = store.commit(lines[0].clone()).await.unwrap_err();
        assert!(matches!(again, StoreError::Rejected { .. }), "{again}");
        drop(store);

        let store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.committed().len(), 5);
        assert_eq!(store.header().invocations.len(), 2);
        assert_eq!(store.header().invocations[1].committed_before, 5);
        for (row, l) in store.committed().iter().zip(&lines) {
            assert_eq!(&read_rollout(dir.path(), row).unwrap(), l);
        }
        assert_eq!(read_manifest(dir.path()).unwrap(), store.committed());
        // The whole shard is a valid multi-frame zstd stream of the lines.
        let shard = std::fs::read(dir.path().join(SHARDS_DIR).join(shard_name(0))).unwrap();
        let text = String::from_utf8(zstd::stream::decode_all(shard.as_slice()).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 5);
        let row = &store.committed()[1];
        assert_eq!(
            (row.n_turns, row.n_format_errors, row.n_length_cut),
            (3, 0, 0)
        );
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens, row.total_tokens),
            (300, 30, 330)
        );
        assert_eq!((row.obs_bytes_total, row.obs_bytes_max), (600, 200));
        assert_eq!(row.reward, Some(-1.0));
        assert!(!row.resolved);
        assert_eq!(row.status, "submitted");
        assert_eq!(row.patch_bytes, PATCH.len() as u64);
        let normalized = swe_env_grading::patch_key::normalize(PATCH);
        assert!(normalized.contains("+b"), "{normalized}");
        assert_eq!(
            row.patch_hash.as_deref(),
            Some(sha256_hex(normalized.as_bytes()).as_str())
        );
        assert!(row.episode_id.starts_with("inst-1.s1."));
        assert_eq!(
            row.bytes,
            serde_json::to_string(&lines[1]).unwrap().len() as u64 + 1
        );
        assert_eq!(row.seed, Some(1000));
    }

    #[test]
    fn summarize_counts_format_errors_length_cuts_and_the_final_answer() {
        let mut l = line("i", 0, 3, 10);
        if let Record::Step(step) = &mut l.records[1] {
            step.format_error = Some("no tool call".into());
            step.tokens.finish_reason = Some("length".into());
        }
        if let Record::Step(step) = &mut l.records[2] {
            step.tokens.finish_reason = Some("stop".into());
            step.observation = "x".repeat(50);
        }
        if let Some(Record::EpisodeEnd(end)) = l.records.last_mut() {
            end.status = EpisodeStatus::FormatErrors;
            end.final_answer = Some("done".into());
            end.final_answer_tokens = Some(StepTokens {
                prompt: Some(7),
                completion: Some(3),
                finish_reason: Some("length".into()),
                ..StepTokens::default()
            });
            end.submission = None;
            end.rewards = None;
        }
        let row = summarize(
            &l,
            FrameLocation {
                shard: "s".into(),
                offset: 1,
                length: 2,
                bytes: 3,
            },
        );
        assert_eq!(
            (row.n_turns, row.n_format_errors, row.n_length_cut),
            (3, 1, 2)
        );
        assert_eq!((row.prompt_tokens, row.completion_tokens), (307, 33));
        assert_eq!((row.obs_bytes_total, row.obs_bytes_max), (70, 50));
        assert_eq!(
            (row.patch_bytes, row.patch_hash, row.reward),
            (0, None, None)
        );
        assert_eq!(row.status, "format_errors");
        // The trajectory hash sees actions, observations and the final answer, nothing else.
        let mut same = l.clone();
        if let Record::Step(step) = &mut same.records[1] {
            step.at = "other time".into();
            step.tool_ms = 999;
        }
        assert_eq!(trajectory_hash(&same.records), row.trajectory_hash);
        if let Record::Step(step) = &mut same.records[1] {
            step.observation.push('!');
        }
        assert_ne!(trajectory_hash(&same.records), row.trajectory_hash);
    }

    #[test]
    fn hashes_agree_with_the_export_filters() {
        use crate::trajectory::filter::conversation_hash;
        use crate::trajectory::ReadTrajectory;
        let mut l = line("i", 0, 3, 20);
        if let Some(Record::EpisodeEnd(end)) = l.records.last_mut() {
            end.final_answer = Some("done".into());
        }
        let trajectory = ReadTrajectory::from_records(l.records.clone()).unwrap();
        assert_eq!(trajectory_hash(&l.records), conversation_hash(&trajectory));
        l.records.pop();
        let trajectory = ReadTrajectory::from_records(l.records.clone()).unwrap();
        assert_eq!(trajectory_hash(&l.records), conversation_hash(&trajectory));
        for patch in [PATCH, "", "  \n", "not a diff"] {
            assert_eq!(
                patch_hash(patch),
                (!swe_env_grading::patch_key::normalize(patch)
                    .trim()
                    .is_empty())
                .then(|| sha256_hex(swe_env_grading::patch_key::normalize(patch).as_bytes()))
            );
        }
    }

    #[tokio::test]
    async fn torn_manifest_and_shard_tails_are_repaired_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        for k in 0..3 {
            store.commit(line("i", k, 2, 100)).await.unwrap();
        }
        drop(store);
        let shard_path = dir.path().join(SHARDS_DIR).join(shard_name(0));
        let committed_len = std::fs::metadata(&shard_path).unwrap().len();
        // A crash after the frame of rollout 3 was written but before its row: a whole frame, then garbage.
        let uncommitted = line("i", 3, 2, 100);
        let mut bytes = serde_json::to_string(&uncommitted).unwrap();
        bytes.push('\n');
        let frame = zstd::bulk::compress(bytes.as_bytes(), 3).unwrap();
        let mut shard = OpenOptions::new().append(true).open(&shard_path).unwrap();
        shard.write_all(&frame).unwrap();
        shard.write_all(b"\x28\xb5\x2f\xfd garbage").unwrap();
        // And a torn manifest line.
        let mut manifest = OpenOptions::new()
            .append(true)
            .open(dir.path().join(MANIFEST_FILE))
            .unwrap();
        manifest
            .write_all(br#"{"rollout_id":"abc","dataset"#)
            .unwrap();

        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.committed().len(), 3);
        assert_eq!(std::fs::metadata(&shard_path).unwrap().len(), committed_len);
        let manifest_text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(manifest_text.ends_with('\n') && manifest_text.lines().count() == 3);
        let row = store.commit(uncommitted.clone()).await.unwrap();
        assert_eq!(row.offset, committed_len);
        assert_eq!(read_rollout(dir.path(), &row).unwrap(), uncommitted);
        drop(store);

        // A complete last line that does not parse (its bytes reached the disk out of order) is torn too.
        let mut manifest = OpenOptions::new()
            .append(true)
            .open(dir.path().join(MANIFEST_FILE))
            .unwrap();
        manifest.write_all(b"\0\0\0\0}\n").unwrap();
        let store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.committed().len(), 4);
        for row in store.committed() {
            read_rollout(dir.path(), row).unwrap();
        }
        drop(store);

        // A bad line before the last one is corruption, not a crash: refused, named.
        let path = dir.path().join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("not json\n{text}")).unwrap();
        let error = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::Corrupt { detail, .. } if detail.starts_with("line 1:")),
            "{error}"
        );
    }

    #[tokio::test]
    async fn shards_roll_at_the_size_limit_and_a_reopen_continues_the_last_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), options(1500))
            .await
            .unwrap();
        let mut rows = Vec::new();
        for k in 0..8 {
            rows.push(store.commit(line("i", k, 4, 300)).await.unwrap());
        }
        drop(store);
        let names = shard_files(dir.path());
        assert!(names.len() >= 3, "{names:?}");
        for name in &names {
            let len = std::fs::metadata(dir.path().join(SHARDS_DIR).join(name))
                .unwrap()
                .len();
            // A shard only goes past the limit by its last frame.
            let last = rows.iter().rfind(|r| &r.shard == name).unwrap();
            assert!(last.offset < 1500, "{name}: {len}");
            assert_eq!(last.offset + last.length, len);
        }
        let last_shard = rows.last().unwrap().shard.clone();
        let last_len = rows.last().unwrap().offset + rows.last().unwrap().length;
        let mut store = HarvestStore::open(dir.path(), header(), options(1500))
            .await
            .unwrap();
        let row = store.commit(line("i", 8, 1, 10)).await.unwrap();
        if last_len < 1500 {
            assert_eq!(
                (row.shard.as_str(), row.offset),
                (last_shard.as_str(), last_len)
            );
        } else {
            assert_ne!(row.shard, last_shard);
            assert_eq!(row.offset, 0);
        }
        for row in store.committed() {
            read_rollout(dir.path(), row).unwrap();
        }
        // Limit 1: one frame per shard.
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), options(1))
            .await
            .unwrap();
        for k in 0..3 {
            store.commit(line("i", k, 1, 10)).await.unwrap();
        }
        drop(store);
        let mut store = HarvestStore::open(dir.path(), header(), options(1))
            .await
            .unwrap();
        store.commit(line("i", 3, 1, 10)).await.unwrap();
        assert_eq!(
            shard_files(dir.path()),
            (0..4).map(shard_name).collect::<Vec<_>>()
        );
        assert!(store.committed().iter().all(|r| r.offset == 0));
    }

    #[tokio::test]
    async fn a_changed_config_or_dataset_is_refused_naming_the_fields() {
        let dir = tempfile::tempdir().unwrap();
        drop(
            HarvestStore::open(dir.path(), header(), StoreOptions::default())
                .await
                .unwrap(),
        );
        let mut changed = header();
        changed.config = json!({"model": "m", "sampling": {"temperature": 0.7}});
        changed.config_hash = "c1c1".into();
        let error = HarvestStore::open(dir.path(), changed, StoreOptions::default())
            .await
            .unwrap_err();
        let StoreError::ConfigChanged { fields, .. } = &error else {
            panic!("{error}");
        };
        let names: Vec<&str> = fields.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(names, ["config.sampling.temperature", "config_hash"]);
        assert!(
            error
                .to_string()
                .contains("config.sampling.temperature: was 0.2, now 0.7"),
            "{error}"
        );

        let mut other_dataset = header();
        other_dataset.datasets[0].sha256 = "e0e0".into();
        let error = HarvestStore::open(dir.path(), other_dataset, StoreOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&error, StoreError::ConfigChanged { fields, .. } if fields[0].field == "datasets"),
            "{error}"
        );
        // The same dataset under another source name is the same harvest.
        let mut moved = header();
        moved.datasets[0].source = "/elsewhere/tasks.jsonl".into();
        HarvestStore::open(dir.path(), moved, StoreOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_second_open_while_locked_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        let error = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::InUse { pid: Some(pid), .. } if pid == std::process::id()),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("in use by another swe-env process"));
        drop(store);
        HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn commit_refuses_foreign_and_partial_rollouts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        let mut foreign = line("i", 0, 1, 1);
        foreign.config_hash = "other".into();
        assert!(store.commit(foreign).await.is_err());
        let mut wrong_id = line("i", 0, 1, 1);
        wrong_id.rollout_id = "0".repeat(32);
        assert!(store.commit(wrong_id).await.is_err());
        let mut partial = line("i", 0, 1, 1);
        partial.records.pop();
        assert!(store.commit(partial).await.is_err());
        assert!(store.committed().is_empty());
        store.commit(line("i", 0, 1, 1)).await.unwrap();
    }

    #[tokio::test]
    async fn finish_writes_parquet_and_the_data_card() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        store.commit(line("i", 0, 1, 1)).await.unwrap();
        store
            .record_failure(RolloutFailure {
                rollout_id: rollout_id(DATASET, "i", 1, CONFIG_HASH),
                instance_id: "i".into(),
                sample_idx: 1,
                error_kind: "image_missing".into(),
                error: "no image".into(),
                at: now_rfc3339(),
            })
            .await
            .unwrap();
        drop(store);
        // A torn failure line (killed mid-append) does not swallow the next failure.
        let mut failures = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FAILURES_FILE))
            .unwrap();
        failures.write_all(br#"{"rollout_id":"#).unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        store
            .record_failure(RolloutFailure {
                rollout_id: rollout_id(DATASET, "i", 2, CONFIG_HASH),
                instance_id: "i".into(),
                sample_idx: 2,
                error_kind: "grading".into(),
                error: "infra".into(),
                at: now_rfc3339(),
            })
            .await
            .unwrap();
        let card = store.finish(SpentSummary::default()).await.unwrap();
        assert_eq!(card.rollouts, 1);
        assert_eq!(card.failures.outstanding_by_kind["image_missing"], 1);
        assert_eq!(card.failures.outstanding_by_kind["grading"], 1);
        for file in [PARQUET_FILE, "data_card.json", "data_card.md"] {
            assert!(dir.path().join(file).exists(), "{file}");
        }
        assert_eq!(read_failures(dir.path()).unwrap().len(), 2);
        // The lock is released.
        HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
    }

    const CRASH_CHILD_ENV: &str = "SWE_ENV_HARVEST_CRASH_CHILD_DIR";

    /// Not a test on its own: the child of `kill_9_at_random_moments_loses_and_duplicates_nothing`, which runs
    /// this binary again with only this test and the directory in the environment. It commits until killed.
    #[tokio::test]
    async fn crash_child_commits_until_killed() {
        let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let mut store = HarvestStore::open(&dir, header(), options(64 << 10))
            .await
            .unwrap();
        let mut k = store.committed().len() as u32;
        loop {
            store.commit(line("crash", k, 5, 4000)).await.unwrap();
            k += 1;
        }
    }

    #[tokio::test]
    async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
        use rand::Rng;
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        let mut previous = 0usize;
        let mut rng = rand::rng();
        for round in 0..6 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "harvest::store::tests::crash_child_commits_until_killed",
                    "--nocapture",
                ])
                .env(CRASH_CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let wait = rng.random_range(150..700);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            assert!(
                child.try_wait().unwrap().is_none(),
                "the child ended by itself in round {round}"
            );
            child.kill().unwrap();
            child.wait().unwrap();

            let store = HarvestStore::open(dir.path(), header(), options(64 << 10))
                .await
                .unwrap();
            let rows = store.committed();
            let ids: HashSet<&str> = rows.iter().map(|r| r.rollout_id.as_str()).collect();
            assert_eq!(
                ids.len(),
                rows.len(),
                "duplicate rollout ids in round {round}"
            );
            assert!(
                rows.len() >= previous,
                "round {round}: {} < {previous}",
                rows.len()
            );
            for (k, row) in rows.iter().enumerate() {
                let line = read_rollout(dir.path(), row).unwrap();
                assert_eq!(line.sample_idx, k as u32, "round {round}");
            }
            // Every shard ends exactly at its last committed frame.
            for name in shard_files(dir.path()) {
                let len = std::fs::metadata(dir.path().join(SHARDS_DIR).join(&name))
                    .unwrap()
                    .len();
                let end = rows
                    .iter()
                    .filter(|r| r.shard == name)
                    .map(|r| r.offset + r.length)
                    .max()
                    .unwrap();
                assert_eq!(len, end, "round {round}: {name}");
            }
            previous = rows.len();
        }
        assert!(previous > 6, "the child committed only {previous} rollouts");
        assert!(shard_files(dir.path()).len() > 1, "no shard roll happened");
    }
}
