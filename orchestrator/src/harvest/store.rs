//! The harvest output directory (`--out DIR`): the header `harvest.json`, zstd shards of whole rollouts
//! (`shards/shard-NNNNN.jsonl.zst`, one frame per rollout, one JSON line per frame), the commit log
//! `manifest.jsonl`, the failures log `failures.jsonl`, `work/` for in-flight episodes, and at the end of an
//! invocation `manifest.parquet` ([`super::parquet`]) and the data card ([`super::card`]).
//!
//! A rollout is committed iff its [`ManifestRow`] is a complete line of `manifest.jsonl`. [`HarvestStore::commit`]
//! appends the frame to the current shard and fdatasyncs it, then appends the row and fdatasyncs the manifest, so a
//! kill at any moment leaves at most one uncommitted frame and a torn row behind; a commit that fails undoes itself
//! (the row cut first, then the frame; the next frame overwrites it anyway), and when the row cannot be cut the
//! store refuses every later commit. [`HarvestStore::open`] refuses a directory that is neither missing, empty nor a
//! harvest ([`StoreError::NotHarvest`], before touching it), takes the directory's lock (`.lock`, the run-directory
//! lock of `benchmark::manifest`), writes the header first on a new directory and checks it on an old one (a
//! different config hash or dataset set is [`StoreError::ConfigChanged`]), and repairs: the manifest is truncated
//! after its last complete, parseable line, every shard to the end of the last frame a row points into (shards no
//! row points into are removed), `failures.jsonl` after its last newline; `work/` and temp files of a killed
//! invocation are removed. Kill -9 anywhere: no committed rollout lost, none twice, and every line of every shard
//! is a committed rollout.
//!
//! Memory does not grow with the rows: the manifest is read line by line, and the store keeps only an index (ids
//! as 128-bit numbers, token/turn/time totals overall and per task: about 40 bytes a rollout plus ~100 per
//! task); `finish` streams the manifest once into parquet row groups and the card's counters.
//! All file work runs on the blocking pool, never on an async worker.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::benchmark::manifest::{
    diff_settings, lock_run_dir, FieldDiff, RunStartError, LOCK_FILE,
};
use crate::trajectory::digest::sha256_hex;
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

pub use crate::benchmark::manifest::DatasetEntry;

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
    /// Its command line (values of options naming a key, token, secret or password redacted, and the user-info and
    /// query string of every URL; long ones cut).
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

/// Time summed over rollouts, ms: the same fields as one rollout's [`RolloutTiming`].
pub type TimeSums = RolloutTiming;

impl RolloutTiming {
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
    /// Rollouts not planned by this invocation because they failed `max_rollout_failures` times
    /// (`{instance} s{k}: {n} failures, last {kind}`).
    #[serde(default)]
    pub given_up: Vec<String>,
}

/// Sums over committed rollouts (all of them, or one task's): what the runner's budgets and resume need, kept by
/// the store without holding the rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Committed rollouts.
    pub rollouts: u64,
    /// `total_tokens` summed.
    pub tokens: u64,
    /// `n_turns` summed.
    pub turns: u64,
    /// `wall_ms` summed.
    pub wall_ms: u64,
    /// Rollouts graded resolved.
    pub resolved: u64,
}

impl Totals {
    fn add(&mut self, row: &ManifestRow) {
        self.rollouts += 1;
        self.tokens += row.total_tokens;
        self.turns += u64::from(row.n_turns);
        self.wall_ms += row.wall_ms;
        self.resolved += u64::from(row.resolved);
    }
}

/// The compact index of the committed rollouts kept in memory: ids as 128-bit numbers (a rollout id is 32 hex
/// chars) and totals per task and overall: about 40 bytes a rollout (200k rows: 7.7 MB), not the ~2.7 KB of a row.
#[derive(Debug, Default)]
struct Index {
    ids: HashSet<u128>,
    per_task: HashMap<String, Totals>,
    total: Totals,
}

impl Index {
    /// Adds a row; false when its id was already there (the row is then not counted).
    fn add(&mut self, row: &ManifestRow) -> bool {
        if !self.ids.insert(id_key(&row.rollout_id)) {
            return false;
        }
        self.total.add(row);
        if let Some(task) = self.per_task.get_mut(&row.instance_id) {
            task.add(row);
        } else {
            let mut task = Totals::default();
            task.add(row);
            self.per_task.insert(row.instance_id.clone(), task);
        }
        true
    }

    fn contains(&self, rollout_id: &str) -> bool {
        self.ids.contains(&id_key(rollout_id))
    }
}

/// A rollout id as a number: the 32 hex chars parsed; any other string (a hand-edited manifest) hashed.
fn id_key(rollout_id: &str) -> u128 {
    if rollout_id.len() == 32 {
        if let Ok(key) = u128::from_str_radix(rollout_id, 16) {
            return key;
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, rollout_id.as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_be_bytes(bytes)
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
    /// `--out` names a directory with files in it that is not a harvest directory (no `harvest.json`).
    #[error(
        "{} is not empty and is not a harvest directory: give a new or empty --out (nothing in it was changed)",
        dir.display()
    )]
    NotHarvest {
        /// The directory.
        dir: PathBuf,
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
    /// Bad usage or input (exit 2: directory in use or not a harvest, configuration changed, a stored file
    /// unreadable), as opposed to an infrastructure failure (`Io`, exit 3) or a runner bug (`Rejected`, exit 3).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::InUse { .. }
                | Self::ConfigChanged { .. }
                | Self::Corrupt { .. }
                | Self::NotHarvest { .. }
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
/// to nothing. The one definition is the export's, so manifest and export agree.
pub use crate::trajectory::filter::patch_hash;

/// sha256 hex of the conversation content, the same bytes as the export's `trajectory::filter::conversation_hash`
/// (both call `trajectory::filter::conversation_hash_of`; this one reads records, not a parsed trajectory): for every
/// step its raw action and its observation, then the final answer, each length-prefixed (`A<len>:…`, `O<len>:…`,
/// `F<len>:…`) so no concatenation is ambiguous. Ids, times, tokens and the prompt are left out: two rollouts that
/// said and saw the same things hash the same.
pub fn trajectory_hash(records: &[Record]) -> String {
    let steps = records.iter().filter_map(|record| match record {
        Record::Step(step) => Some(step),
        _ => None,
    });
    let final_answer = records.iter().find_map(|record| match record {
        Record::EpisodeEnd(end) => end.final_answer.as_deref(),
        _ => None,
    });
    crate::trajectory::filter::conversation_hash_of(steps, final_answer)
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
    /// Set when a failed commit could not be undone: every later commit is refused (the next open repairs).
    poisoned: Option<String>,
    /// Failure points a test makes fail (`manifest_write`, `manifest_cut`, `shard_cut`).
    #[cfg(test)]
    fail: Vec<&'static str>,
}

impl Files {
    /// An injected failure at `point` (tests only; always `Ok` otherwise).
    #[cfg(test)]
    fn injected(&self, point: &str) -> std::io::Result<()> {
        if self.fail.contains(&point) {
            return Err(std::io::Error::other(format!("injected failure: {point}")));
        }
        Ok(())
    }

    #[cfg(not(test))]
    #[allow(clippy::unused_self)]
    fn injected(&self, _point: &str) -> std::io::Result<()> {
        Ok(())
    }
}

/// An open harvest directory: holds its lock until [`finish`](HarvestStore::finish) or drop.
#[derive(Debug)]
pub struct HarvestStore {
    dir: PathBuf,
    options: StoreOptions,
    header: HeaderFile,
    index: Index,
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

    /// Whether `rollout_id` is committed.
    pub fn is_committed(&self, rollout_id: &str) -> bool {
        self.index.contains(rollout_id)
    }

    /// How many rollouts are committed.
    pub fn committed_count(&self) -> u64 {
        self.index.total.rollouts
    }

    /// Sums over the committed rollouts of one task (zero when it has none).
    pub fn task_totals(&self, instance_id: &str) -> Totals {
        self.index
            .per_task
            .get(instance_id)
            .copied()
            .unwrap_or_default()
    }

    /// Sums over all committed rollouts.
    pub fn totals(&self) -> Totals {
        self.index.total
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
        if let Some(reason) = self.files.as_ref().and_then(|f| f.poisoned.as_ref()) {
            return Err(StoreError::Io {
                op: "commit into",
                path: self.dir.clone(),
                source: std::io::Error::other(format!(
                    "{reason}; end this invocation and run it again (reopening repairs the directory)"
                )),
            });
        }
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
        self.index.add(&row);
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
        let lock = self._lock;
        // The finish pass builds its own id set (file order, duplicates skipped): the index is not needed.
        drop(self.index);
        blocking(&dir.clone(), move || {
            // One streaming pass over the manifest: parquet row groups and card counters, no row kept.
            let mut card = super::card::CardBuilder::default();
            let mut sink = super::parquet::ParquetSink::create(&dir.join(PARQUET_FILE))?;
            let mut seen = HashSet::new();
            scan_manifest(&dir.join(MANIFEST_FILE), |row| {
                if seen.insert(id_key(&row.rollout_id)) {
                    card.add(&row);
                    sink.push(row)?;
                }
                Ok(())
            })?;
            sink.finish()?;
            for_each_failure(&dir, |failure| {
                card.add_failure(&failure, seen.contains(&id_key(&failure.rollout_id)));
            })?;
            drop(seen);
            let card = card.build(&spent);
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
        if self.index.contains(&line.rollout_id) {
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
        .injected("manifest_write")
        .and_then(|()| files.manifest.write_all(row_text.as_bytes()))
        .and_then(|()| files.manifest.sync_data());
    if let Err(error) = written {
        // Not committed. The next frame goes to `offset` whatever happens below, overwriting this one, so no shard
        // line without a row can stay between two committed frames.
        files.shard_len = offset;
        // Cut the row off first (it may have reached the disk whole): only once that is synced may the frame go, or
        // a row could point past the end of its shard.
        let manifest_cut = files
            .injected("manifest_cut")
            .and_then(|()| files.manifest.set_len(files.manifest_len))
            .and_then(|()| files.manifest.sync_data());
        match manifest_cut {
            Ok(()) => {
                let shard_cut = files.injected("shard_cut");
                if let Some(shard) = files.shard.as_mut() {
                    // Best effort: a frame left here is overwritten by the next commit or cut by the next open.
                    if let Err(cut_error) = shard_cut.and_then(|()| shard.set_len(offset)) {
                        warn!(shard = %shard_path.display(), offset, error = %cut_error, "could not cut an uncommitted frame");
                    }
                }
            }
            Err(cut_error) => {
                // Whether the row is on disk is unknown: nothing may follow it in this process.
                warn!(manifest = %manifest_path.display(), error = %cut_error, "could not cut an uncommitted row; the store refuses further commits");
                files.poisoned = Some(format!("a failed commit could not be undone ({cut_error})"));
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
    // Before anything is created in it: a directory of someone else's files is refused, never cleared.
    refuse_foreign(&dir)?;
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
    remove_stale_temps(&dir)?;
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
    let fresh = stored.is_none();
    let mut header_file = match stored {
        Some(stored) => stored,
        None => {
            // Checked again under the lock; then the header is written first, so a kill anywhere later leaves a
            // directory the next open recognizes as a harvest.
            refuse_foreign(&dir)?;
            let mut header_file = HeaderFile {
                format: FORMAT.to_owned(),
                datasets: header.datasets.clone(),
                config_hash: header.config_hash.clone(),
                config: header.config.clone(),
                created_at: now_rfc3339(),
                invocations: Vec::new(),
            };
            header_file.invocations.push(invocation(0));
            write_json_atomically(&header_path, &header_file)?;
            header_file
        }
    };
    let shards = dir.join(SHARDS_DIR);
    std::fs::create_dir_all(&shards).map_err(StoreError::io("create", &shards))?;
    // One streaming pass: the index (ids, totals) and where the last committed frame of each shard ends.
    let mut index = Index::default();
    let mut ends: BTreeMap<String, u64> = BTreeMap::new();
    let manifest_len = repair_manifest(&dir, |row| {
        if !index.add(&row) {
            warn!(dir = %dir.display(), rollout_id = %row.rollout_id, "duplicate manifest row ignored");
            return Ok(());
        }
        let end = row.offset + row.length;
        match ends.get_mut(&row.shard) {
            Some(last) => *last = (*last).max(end),
            None => {
                ends.insert(row.shard, end);
            }
        }
        Ok(())
    })?;
    repair_failures(&dir)?;
    let (shard_index, shard_len) = repair_shards(&dir, &ends)?;
    let work = dir.join(WORK_DIR);
    match std::fs::remove_dir_all(&work) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(StoreError::io("clear", &work)(error)),
    }
    std::fs::create_dir_all(&work).map_err(StoreError::io("create", &work))?;

    if !fresh {
        header_file
            .invocations
            .push(invocation(index.total.rollouts));
        write_json_atomically(&header_path, &header_file)?;
    }

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
    let dataset_hashes = header_file
        .datasets
        .iter()
        .map(|d| d.sha256.clone())
        .collect();
    info!(dir = %dir.display(), committed = index.total.rollouts, tasks = index.per_task.len(), shard_index, shard_len, "harvest store opened");
    Ok(HarvestStore {
        dir,
        options,
        header: header_file,
        index,
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
            poisoned: None,
            #[cfg(test)]
            fail: Vec::new(),
        }),
        _lock: lock,
    })
}

/// This invocation, for the header.
fn invocation(committed_before: u64) -> Invocation {
    Invocation {
        at: now_rfc3339(),
        pid: std::process::id(),
        argv_summary: argv_summary(std::env::args()),
        committed_before,
    }
}

/// [`StoreError::NotHarvest`] unless `dir` is missing, empty, or a harvest directory (has `harvest.json`). The
/// lock file and our temp files count as empty: a first open killed before its header was renamed leaves them.
fn refuse_foreign(dir: &Path) -> Result<(), StoreError> {
    if dir.join(HEADER_FILE).exists() {
        return Ok(());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("list", dir)(error)),
    };
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != LOCK_FILE && !is_our_temp(&name) {
            return Err(StoreError::NotHarvest {
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Whether `name` is a temp file [`write_atomically`] (or the parquet writer) leaves when killed:
/// `.{file}.tmp.{pid}` of a file written whole.
fn is_our_temp(name: &str) -> bool {
    let whole = [
        HEADER_FILE,
        PARQUET_FILE,
        super::card::CARD_JSON,
        super::card::CARD_MD,
    ];
    whole.iter().any(|file| crate::fsio::is_temp_of(name, file))
}

/// Removes the temp files a killed invocation left (we hold the lock: no live writer owns them).
fn remove_stale_temps(dir: &Path) -> Result<(), StoreError> {
    let entries = std::fs::read_dir(dir).map_err(StoreError::io("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(StoreError::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_our_temp(&name) {
            let path = entry.path();
            warn!(path = %path.display(), "stale temp file of a killed invocation removed");
            std::fs::remove_file(&path).map_err(StoreError::io("remove", &path))?;
        }
    }
    Ok(())
}

/// What is compared on resume: the config hash, the config and the set of dataset hashes.
fn compared(config_hash: &str, config: &Value, datasets: &[DatasetEntry]) -> Value {
    let mut hashes: Vec<&str> = datasets.iter().map(|d| d.sha256.as_str()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    json!({"config_hash": config_hash, "config": config, "datasets": hashes})
}

/// The command line for the header: values of options naming a secret redacted, user-info and query strings of
/// URLs redacted ([`redact_urls`]), at most 2000 chars.
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
        let name = lower
            .split_once('=')
            .map_or(lower.as_str(), |(name, _)| name);
        // `--token-budget 500` and `--api-key-env NAME` carry no secret: their values are kept.
        let harmless = name.contains("budget") || name.ends_with("-env");
        let secret = name.starts_with("--") && !harmless && SECRET.iter().any(|s| name.contains(s));
        if secret {
            match arg.split_once('=') {
                Some((name, _)) => out.push(format!("{name}=<redacted>")),
                None => {
                    out.push(arg);
                    redact_next = true;
                }
            }
        } else {
            out.push(redact_urls(&arg));
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

/// `arg` with the user-info (`user:pass@`) and the query string of every URL in it (`scheme://…`, up to white
/// space or a comma) replaced by `<redacted>`: endpoints can carry credentials in either place.
fn redact_urls(arg: &str) -> String {
    let mut out = String::with_capacity(arg.len());
    let mut rest = arg;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == ',')
            .unwrap_or(tail.len());
        let (url, after) = tail.split_at(end);
        let authority_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (authority, path) = url.split_at(authority_end);
        match authority.rfind('@') {
            Some(i) => {
                out.push_str("<redacted>@");
                out.push_str(&authority[i + 1..]);
            }
            None => out.push_str(authority),
        }
        match path.find('?') {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str("?<redacted>");
                if let Some(fragment) = path[q..].find('#') {
                    out.push_str(&path[q + fragment..]);
                }
            }
            None => out.push_str(path),
        }
        rest = after;
    }
    out.push_str(rest);
    out
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
    crate::fsio::write_atomically(path, bytes).map_err(StoreError::io("write", path))
}

/// Reads the manifest at `path` line by line (never whole), calling `each` with every row of its good prefix in
/// file order (duplicates included); returns the byte length of that prefix. A last complete line that does not
/// parse is a torn write (its bytes reached the disk out of order) and is left out; an earlier one is corruption;
/// bytes after the last newline are a torn write too.
fn scan_manifest(
    path: &Path,
    mut each: impl FnMut(ManifestRow) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let file = File::open(path).map_err(StoreError::io("read", path))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    let mut end = 0u64;
    let mut number = 0u64;
    let mut pending: Option<(u64, String)> = None;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(StoreError::io("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        number += 1;
        if let Some((at, error)) = pending.take() {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("line {at}: {error}"),
            });
        }
        match serde_json::from_slice::<ManifestRow>(&line) {
            Ok(row) => {
                end += n as u64;
                each(row)?;
            }
            Err(error) => pending = Some((number, error.to_string())),
        }
    }
    if let Some((at, error)) = pending {
        warn!(path = %path.display(), line = at, %error, "torn last manifest line dropped");
    }
    Ok(end)
}

/// Truncates `manifest.jsonl` after its last good line (creating it when missing), calling `each` with every row
/// kept; returns the manifest's length.
fn repair_manifest(
    dir: &Path,
    each: impl FnMut(ManifestRow) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let len = match std::fs::metadata(&path) {
        Ok(metadata) => Some(metadata.len()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(StoreError::io("stat", &path)(error)),
    };
    let end = match len {
        Some(_) => scan_manifest(&path, each)?,
        None => 0,
    };
    if len != Some(end) {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        if let Some(len) = len {
            warn!(path = %path.display(), dropped_bytes = len - end, "manifest tail repaired");
        }
        file.set_len(end)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("truncate", &path))?;
        sync_dir(dir).map_err(StoreError::io("sync", dir))?;
    }
    Ok(end)
}

/// Truncates `failures.jsonl` after its last newline, so the next failure starts a line of its own (reads only
/// the tail, backwards).
fn repair_failures(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join(FAILURES_FILE);
    let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("open", &path)(error)),
    };
    let len = file
        .metadata()
        .map_err(StoreError::io("stat", &path))?
        .len();
    let mut buffer = vec![0u8; 1 << 16];
    let (mut pos, mut end) = (len, 0u64);
    while pos > 0 {
        let start = pos.saturating_sub(buffer.len() as u64);
        let chunk = &mut buffer[..(pos - start) as usize];
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(chunk))
            .map_err(StoreError::io("read", &path))?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        pos = start;
    }
    if end < len {
        warn!(path = %path.display(), dropped_bytes = len - end, "torn failures tail repaired");
        file.set_len(end)
            .and_then(|()| file.sync_all())
            .map_err(StoreError::io("truncate", &path))?;
    }
    Ok(())
}

/// Truncates every shard to the end of the last frame a row points into (removing shards no row points into);
/// returns the index and length of the shard to continue.
fn repair_shards(dir: &Path, ends: &BTreeMap<String, u64>) -> Result<(u32, u64), StoreError> {
    let shards = dir.join(SHARDS_DIR);
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

/// The committed rows of a harvest directory (a torn tail ignored; nothing is modified, no lock taken). All rows
/// in memory: a program that can go row by row should use [`for_each_row`].
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestRow>, StoreError> {
    let mut rows = Vec::new();
    for_each_row(dir, |row| {
        rows.push(row);
        Ok(())
    })?;
    Ok(rows)
}

/// Calls `each` with every committed row of a harvest directory in commit order, streaming (a torn tail ignored,
/// duplicate rows skipped; nothing is modified, no lock taken).
pub fn for_each_row(
    dir: &Path,
    mut each: impl FnMut(ManifestRow) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let path = dir.join(MANIFEST_FILE);
    let mut seen = HashSet::new();
    scan_manifest(&path, |row| {
        if seen.insert(id_key(&row.rollout_id)) {
            each(row)
        } else {
            warn!(path = %path.display(), rollout_id = %row.rollout_id, "duplicate manifest row ignored");
            Ok(())
        }
    })?;
    Ok(())
}

/// The failures recorded in `failures.jsonl` (a torn tail ignored; none when the file is missing).
pub fn read_failures(dir: &Path) -> Result<Vec<RolloutFailure>, StoreError> {
    let mut failures = Vec::new();
    for_each_failure(dir, |failure| failures.push(failure))?;
    Ok(failures)
}

/// Calls `each` with every failure of `failures.jsonl` in file order, streaming (lines that do not parse, such as
/// a torn tail, skipped; nothing when the file is missing).
pub fn for_each_failure(
    dir: &Path,
    mut each: impl FnMut(RolloutFailure),
) -> Result<(), StoreError> {
    let path = dir.join(FAILURES_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("read", &path)(error)),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(StoreError::io("read", &path))?;
        if n == 0 {
            return Ok(());
        }
        if let Ok(failure) = serde_json::from_slice(&line) {
            each(failure);
        }
    }
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
    let mut file = File::open(&path).map_err(StoreError::io("open", &path))?;
    // The row comes from a file on disk: check it fits the shard before allocating `length` bytes.
    let shard_len = file
        .metadata()
        .map_err(StoreError::io("stat", &path))?
        .len();
    let fits = row
        .offset
        .checked_add(row.length)
        .is_some_and(|end| end <= shard_len);
    if !fits {
        return Err(corrupt(format!(
            "lies past the end of the shard ({shard_len} bytes)"
        )));
    }
    let length = usize::try_from(row.length).map_err(|_| corrupt("length too large".into()))?;
    let mut frame = vec![0u8; length];
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

    impl HarvestStore {
        /// The committed rows, read back from the manifest.
        fn committed_rows(&self) -> Vec<ManifestRow> {
            read_manifest(&self.dir).unwrap()
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
    async fn a_row_past_the_end_of_its_shard_is_corrupt_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        let committed = line("inst-1", 0, 2, 100);
        store.commit(committed.clone()).await.unwrap();
        drop(store);

        // Hand-edit the manifest row: a huge length (read_rollout must not allocate it), then an offset that
        // overflows with the length, then a frame one byte longer than the shard.
        let manifest_path = dir.path().join(MANIFEST_FILE);
        let shard_len = std::fs::metadata(dir.path().join(SHARDS_DIR).join(shard_name(0)))
            .unwrap()
            .len();
        let original: Value =
            serde_json::from_str(std::fs::read_to_string(&manifest_path).unwrap().trim()).unwrap();
        for (offset, length) in [(0, u64::MAX / 2), (u64::MAX, 1), (0, shard_len + 1)] {
            let mut edited = original.clone();
            edited["offset"] = json!(offset);
            edited["length"] = json!(length);
            std::fs::write(&manifest_path, format!("{edited}\n")).unwrap();
            let rows = read_manifest(dir.path()).unwrap();
            let err = read_rollout(dir.path(), &rows[0]).unwrap_err();
            assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
            let text = err.to_string();
            assert!(text.contains(&committed.rollout_id), "{text}");
            assert!(text.contains("past the end of the shard"), "{text}");
        }
        // The unedited row still reads back.
        std::fs::write(&manifest_path, format!("{original}\n")).unwrap();
        let rows = read_manifest(dir.path()).unwrap();
        assert_eq!(read_rollout(dir.path(), &rows[0]).unwrap(), committed);
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
        assert_eq!(store.committed_rows().len(), 5);
        assert_eq!(store.header().invocations.len(), 2);
        assert_eq!(store.header().invocations[1].committed_before, 5);
        for (row, l) in store.committed_rows().iter().zip(&lines) {
            assert_eq!(&read_rollout(dir.path(), row).unwrap(), l);
        }
        assert_eq!(read_manifest(dir.path()).unwrap(), store.committed_rows());
        // The whole shard is a valid multi-frame zstd stream of the lines.
        let shard = std::fs::read(dir.path().join(SHARDS_DIR).join(shard_name(0))).unwrap();
        let text = String::from_utf8(zstd::stream::decode_all(shard.as_slice()).unwrap()).unwrap();
        assert_eq!(text.lines().count(), 5);
        let row = &store.committed_rows()[1];
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
        assert_eq!(store.committed_rows().len(), 3);
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
        assert_eq!(store.committed_rows().len(), 4);
        for row in store.committed_rows() {
            read_rollout(dir.path(), &row).unwrap();
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
        for row in store.committed_rows() {
            read_rollout(dir.path(), &row).unwrap();
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
        assert!(store.committed_rows().iter().all(|r| r.offset == 0));
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
        assert!(store.committed_rows().is_empty());
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
    /// this binary again with only this test (`--ignored --exact`) and the directory in the environment. It commits
    /// until killed. Ignored so a plain run does not count it as a passing test.
    #[tokio::test]
    #[ignore = "the child process of kill_9_at_random_moments_loses_and_duplicates_nothing; run by that test"]
    async fn crash_child_commits_until_killed() {
        let Some(dir) = std::env::var_os(CRASH_CHILD_ENV) else {
            return;
        };
        let dir = PathBuf::from(dir);
        let mut store = HarvestStore::open(&dir, header(), options(64 << 10))
            .await
            .unwrap();
        let mut k = store.committed_rows().len() as u32;
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
                    "--ignored",
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
            let rows = store.committed_rows();
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

    /// Every line of every shard, decoded as a whole stream (what `zstd -dc` gives).
    fn shard_lines(dir: &Path) -> Vec<RolloutLine> {
        let mut lines = Vec::new();
        for name in shard_files(dir) {
            let bytes = std::fs::read(dir.join(SHARDS_DIR).join(name)).unwrap();
            let text = zstd::stream::decode_all(bytes.as_slice()).unwrap();
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                lines.push(serde_json::from_slice(line).unwrap());
            }
        }
        lines
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_directory_that_is_not_a_harvest_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(WORK_DIR)).unwrap();
        std::fs::write(dir.path().join(WORK_DIR).join("thesis.tex"), "precious").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let error = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap_err();
        assert!(error.is_usage(), "{error}");
        assert!(
            error
                .to_string()
                .contains("is not empty and is not a harvest directory: give a new or empty --out"),
            "{error}"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(WORK_DIR).join("thesis.tex")).unwrap(),
            "precious"
        );
        // Nothing of ours is left in it (no lock file either).
        assert_eq!(entries(dir.path()), ["notes.txt", "work"]);

        // A missing directory is created; a real harvest directory gets its work/ cleared on reopen.
        let fresh = dir.path().join("new");
        let store = HarvestStore::open(&fresh, header(), StoreOptions::default())
            .await
            .unwrap();
        std::fs::write(store.work_dir().join("ep.jsonl"), "x").unwrap();
        drop(store);
        // Temp files a kill left behind (write_atomically's names) are removed on open.
        for stale in [
            ".harvest.json.tmp.99999",
            ".manifest.parquet.tmp.7",
            ".data_card.md.tmp.8",
            ".data_card.json.tmp.9",
        ] {
            std::fs::write(fresh.join(stale), "partial").unwrap();
        }
        let store = HarvestStore::open(&fresh, header(), StoreOptions::default())
            .await
            .unwrap();
        assert!(!store.work_dir().join("ep.jsonl").exists());
        assert_eq!(
            entries(&fresh),
            [
                ".lock",
                FAILURES_FILE,
                HEADER_FILE,
                MANIFEST_FILE,
                SHARDS_DIR,
                WORK_DIR
            ]
            .into_iter()
            .filter(|n| *n != FAILURES_FILE)
            .collect::<Vec<_>>()
        );
        drop(store);

        // A first open killed before its header was written leaves only the lock and a temp header: still ours.
        let killed = dir.path().join("killed");
        std::fs::create_dir(&killed).unwrap();
        std::fs::write(killed.join(".lock"), "12345\n").unwrap();
        std::fs::write(killed.join(".harvest.json.tmp.12345"), "{").unwrap();
        HarvestStore::open(&killed, header(), StoreOptions::default())
            .await
            .unwrap();
        assert!(!killed.join(".harvest.json.tmp.12345").exists());
    }

    #[test]
    fn argv_summary_strips_url_credentials_and_queries() {
        let args = [
            "swe-env",
            "harvest",
            "--model-url",
            "https://alice:pa55w0rd@models.example:8000/v1?api_key=abc123&x=1#frag",
            "--model-url=http://tok3n@10.0.0.1/v1",
            "--dataset",
            "s3://bucket/data.jsonl?X-Amz-Signature=s1gn",
            "--api-key",
            "sk-live",
            "--token-budget",
            "500",
            "--api-key-env",
            "MY_KEY",
            "--out",
            "runs/h1",
        ]
        .map(String::from);
        let summary = argv_summary(args.into_iter());
        for secret in ["alice", "pa55w0rd", "abc123", "tok3n", "s1gn", "sk-live"] {
            assert!(!summary.contains(secret), "{secret} in {summary}");
        }
        assert!(
            summary.contains("https://<redacted>@models.example:8000/v1?<redacted>#frag"),
            "{summary}"
        );
        assert!(
            summary.contains("--model-url=http://<redacted>@10.0.0.1/v1 "),
            "{summary}"
        );
        assert!(
            summary.contains("s3://bucket/data.jsonl?<redacted>"),
            "{summary}"
        );
        assert!(
            summary.contains("--token-budget 500 --api-key-env MY_KEY"),
            "harmless values are kept: {summary}"
        );
        assert!(summary.ends_with("--out runs/h1"), "{summary}");
    }

    #[tokio::test]
    async fn a_failed_commit_leaves_no_orphan_frame_even_when_the_shard_cannot_be_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        store.commit(line("i", 0, 1, 50)).await.unwrap();
        // The row cannot be written and the frame cannot be cut off again.
        store.files.as_mut().unwrap().fail = vec!["manifest_write", "shard_cut"];
        store.commit(line("i", 1, 1, 50)).await.unwrap_err();
        store.files.as_mut().unwrap().fail.clear();
        store.commit(line("i", 2, 1, 50)).await.unwrap();
        drop(store);
        let store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.committed_count(), 2);
        // Every line of the shard is a committed rollout: the failed one's frame was overwritten.
        let ids: Vec<u32> = shard_lines(dir.path())
            .iter()
            .map(|l| l.sample_idx)
            .collect();
        assert_eq!(ids, [0, 2]);
        drop(store);

        // The row cannot be cut off again either: the store refuses every later commit (it cannot know whether
        // the row reached the disk), and the next open sorts it out.
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        store.files.as_mut().unwrap().fail = vec!["manifest_write", "manifest_cut"];
        store.commit(line("i", 3, 1, 50)).await.unwrap_err();
        store.files.as_mut().unwrap().fail.clear();
        let error = store.commit(line("i", 4, 1, 50)).await.unwrap_err();
        assert!(error.to_string().contains("reopen"), "{error}");
        drop(store);
        let store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.committed_count(), 2);
        let ids: Vec<u32> = shard_lines(dir.path())
            .iter()
            .map(|l| l.sample_idx)
            .collect();
        assert_eq!(ids, [0, 2]);
    }

    /// Peak resident set size of this process (VmHWM), bytes.
    fn peak_rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Current resident set size (VmRSS), bytes.
    fn rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    }

    /// Open and finish over a manifest of `ROWS` rows stay within a memory bound that does not hold the rows: the
    /// index keeps ~50 bytes a row (id set, per-task totals), the card 48 (six u64 columns for the percentiles),
    /// the parquet writer one row group. The rows themselves (~2 KB each in memory) would need ~400 MB here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_large_manifest_opens_and_finishes_in_bounded_memory() {
        const ROWS: u64 = 200_000;
        const TASKS: u64 = 1_000;
        let dir = tempfile::tempdir().unwrap();
        let mut store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        let template = store.commit(line("i", 0, 3, 100)).await.unwrap();
        drop(store);
        {
            // ROWS rows, all pointing at the one frame (what repair and the card read), ids and tasks varied.
            let file = OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(dir.path().join(MANIFEST_FILE))
                .unwrap();
            let mut out = std::io::BufWriter::new(file);
            // One serialization, then markers replaced per row (serializing 200k rows in debug takes seconds).
            let mut row = template.clone();
            row.rollout_id = "@@ID@@".into();
            row.instance_id = "@@TASK@@".into();
            row.repo = "@@REPO@@".into();
            row.total_tokens = 4_242_424_242_424;
            let text = serde_json::to_string(&row).unwrap();
            for marker in ["@@ID@@", "@@TASK@@", "@@REPO@@", "4242424242424"] {
                assert_eq!(text.matches(marker).count(), 1, "{marker} in {text}");
            }
            for k in 0..ROWS {
                let line = text
                    .replace("@@ID@@", &format!("{:032x}", k + 1))
                    .replace("@@TASK@@", &format!("task-{}", k % TASKS))
                    .replace("@@REPO@@", &format!("owner/repo-{}", k % 7))
                    .replace("4242424242424", &k.to_string());
                out.write_all(line.as_bytes()).unwrap();
                out.write_all(b"\n").unwrap();
            }
            out.flush().unwrap();
        }
        let manifest_mb = std::fs::metadata(dir.path().join(MANIFEST_FILE))
            .unwrap()
            .len() as f64
            / 1e6;
        // Reset the peak to the current RSS where the kernel allows it (Linux ≥ 4.0); otherwise the peak so far is
        // the baseline, which only makes the check looser.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let before = rss();
        let started = std::time::Instant::now();
        let store = HarvestStore::open(dir.path(), header(), StoreOptions::default())
            .await
            .unwrap();
        assert_eq!(store.committed_count(), ROWS);
        let open_secs = started.elapsed().as_secs_f64();
        let after_open = peak_rss();
        let card = store.finish(SpentSummary::default()).await.unwrap();
        let total_secs = started.elapsed().as_secs_f64();
        let after_finish = peak_rss();
        assert_eq!(card.rollouts, ROWS);
        assert_eq!(card.instances, TASKS);
        assert_eq!(card.by_repo.len(), 7);
        assert_eq!(card.distributions["total_tokens"].max, ROWS - 1);
        let reader = parquet::file::reader::SerializedFileReader::new(
            File::open(dir.path().join(PARQUET_FILE)).unwrap(),
        )
        .unwrap();
        use parquet::file::reader::FileReader;
        assert_eq!(reader.metadata().file_metadata().num_rows(), ROWS as i64);
        // Written a row group at a time.
        assert_eq!(
            reader.metadata().num_row_groups(),
            (ROWS as usize).div_ceil(super::super::parquet::ROW_GROUP_ROWS)
        );
        let mb = |b: u64| b as f64 / 1e6;
        let open_growth = after_open.saturating_sub(before);
        let finish_growth = after_finish.saturating_sub(before);
        println!(
            "large manifest: {ROWS} rows ({manifest_mb:.0} MB jsonl), baseline RSS {:.1} MB, peak growth: open {:.1} MB, \
             open+finish {:.1} MB; open {open_secs:.1} s, open+finish {total_secs:.1} s",
            mb(before),
            mb(open_growth),
            mb(finish_growth)
        );
        // Bound: 40 MB fixed (a parquet row group of rows being encoded, allocator slack) + 250 bytes a row
        // (index, card columns, the finish pass's id set, growth doubling of each).
        let bound = (40 << 20) + 250 * ROWS;
        assert!(
            finish_growth < bound,
            "peak RSS grew {:.1} MB over {ROWS} rows (bound {:.1} MB)",
            mb(finish_growth),
            mb(bound)
        );
    }
}
