//! The directory of `swe-env trace harvest`: a header (`trace-harvest.json`, written first, checked on reopen), one
//! zstd frame per committed task in `shards/traces-NNNNN.jsonl.zst` and one in `shards/items-NNNNN.jsonl.zst`, a
//! manifest row per committed task (`manifest.jsonl`), `failures.jsonl` (retried by the next invocation) and the data
//! card. Same discipline as `harvest::store`: the directory lock, each frame appended and fdatasynced before its row
//! is appended and fdatasynced (the row is the commit), and a repair on open (the manifest cut after its last
//! complete line, each shard cut to the end of the last frame a row points to, shards no row points to emptied).

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{info, warn};

use crate::benchmark::manifest::{lock_run_dir, RunStartError, LOCK_FILE};
use crate::fsio;
use crate::trajectory::digest::sha256_hex;

/// Format tag of the header.
pub const FORMAT: &str = "swe-env-trace-harvest/1";
/// The header file.
pub const HEADER_FILE: &str = "trace-harvest.json";
/// One row per committed task.
pub const MANIFEST_FILE: &str = "manifest.jsonl";
/// One line per failed attempt of a task (not committed: retried by a later invocation).
pub const FAILURES_FILE: &str = "failures.jsonl";
/// The shards' directory.
pub const SHARDS_DIR: &str = "shards";
/// Default size at which a shard is closed and the next one opened.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 256 << 20;
/// zstd level of the frames.
const ZSTD_LEVEL: i32 = 9;

pub use crate::benchmark::manifest::DatasetEntry;

/// `trace-harvest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// sha256 hex of the canonical JSON of `config` ([`config_hash`]).
    pub config_hash: String,
    /// The result-changing settings (caps, filters, locals style, tests per task).
    pub config: Value,
    /// The datasets.
    pub datasets: Vec<DatasetEntry>,
    /// When the directory was created (RFC 3339).
    #[serde(default)]
    pub created_at: String,
}

/// sha256 hex of the JSON of `config` (serde_json maps are sorted: the text is canonical).
pub fn config_hash(config: &Value) -> String {
    sha256_hex(config.to_string().as_bytes())
}

/// Where one frame lies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameAt {
    /// Shard file name (in `shards/`).
    pub shard: String,
    /// Byte offset of the zstd frame.
    pub offset: u64,
    /// Compressed length.
    pub length: u64,
    /// Uncompressed length (the JSON lines).
    pub bytes: u64,
}

/// One committed task (a line of `manifest.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRow {
    /// The task.
    pub instance_id: String,
    /// Its repository.
    pub repo: String,
    /// sha256 of the dataset it came from.
    pub dataset_sha256: String,
    /// The container's Python version.
    pub python: String,
    /// Tests traced.
    pub tests: u64,
    /// Test outcomes (`passed`, `failed`, `skipped`, …) -> count.
    pub outcomes: BTreeMap<String, u64>,
    /// Traces committed (deduplicated).
    pub traces: u64,
    /// Frames over those traces.
    pub frames: u64,
    /// Traces per frame-count bucket ([`frame_bucket`]).
    pub frame_buckets: BTreeMap<String, u64>,
    /// Output-prediction items committed.
    pub items: u64,
    /// Caps the tracer hit, by reason (`events`, `time`, `bytes`) plus the splitter's `too_long` / `incomplete`.
    pub caps: BTreeMap<String, u64>,
    /// Size of the tracer's events file.
    pub events_bytes: u64,
    /// Exit code of the traced pytest.
    pub pytest_exit: Option<i64>,
    /// Wall time of the traced run, ms.
    pub elapsed_ms: u64,
    /// The traces frame.
    pub traces_at: FrameAt,
    /// The items frame.
    pub items_at: FrameAt,
    /// When it was committed (RFC 3339).
    pub committed_at: String,
}

/// The bucket of a trace with `frames` frames: `1-4`, `5-16`, `17-64`, `65-256`, `257-1024`, `1025+`.
pub fn frame_bucket(frames: usize) -> &'static str {
    match frames {
        0..=4 => "1-4",
        5..=16 => "5-16",
        17..=64 => "17-64",
        65..=256 => "65-256",
        257..=1024 => "257-1024",
        _ => "1025+",
    }
}

/// One failed attempt (a line of `failures.jsonl`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The task.
    pub instance_id: String,
    /// Its repository.
    pub repo: String,
    /// A closed reason (`apply_failed`, `unsupported_runner`, `no_traces`, `no_tests`, `tracer`, `docker`, …).
    pub reason: String,
    /// The error, for a person.
    pub error: String,
    /// When (RFC 3339).
    pub at: String,
}

/// What a task commits: its row (without the frame locations) and the two JSON-lines texts.
#[derive(Debug, Clone)]
pub struct TaskCommit {
    /// The row; `traces_at`, `items_at` and `committed_at` are filled in by [`TraceStore::commit`].
    pub row: ManifestRow,
    /// One JSON line per trace (each with `"cwm"`).
    pub traces_jsonl: String,
    /// One JSON line per item (may be empty).
    pub items_jsonl: String,
}

/// Why the store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the directory.
    #[error("{dir} is in use by another swe-env (pid {pid:?}); wait for it to end or choose another --out")]
    InUse {
        /// The directory.
        dir: PathBuf,
        /// The holder's pid.
        pid: Option<u32>,
    },
    /// The directory holds files that are not a trace harvest.
    #[error(
        "{dir} holds files that are not a trace harvest; choose an empty or new --out directory"
    )]
    NotStore {
        /// The directory.
        dir: PathBuf,
    },
    /// The settings differ from the ones the directory was created with.
    #[error(
        "{dir} was harvested with other settings (changed: {fields}); resume with the same flags and datasets, or \
         choose another --out"
    )]
    ConfigChanged {
        /// The directory.
        dir: PathBuf,
        /// What changed.
        fields: String,
    },
    /// A file of the directory does not parse.
    #[error("{path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A task is committed twice.
    #[error("task {instance_id} is already committed in this directory")]
    Duplicate {
        /// The task.
        instance_id: String,
    },
    /// A file operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was done.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl StoreError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { op, path, source }
    }

    /// The error is the caller's (another --out, other flags), not the disk's.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Self::InUse { .. } | Self::NotStore { .. } | Self::ConfigChanged { .. }
        )
    }
}

/// Shard file names of index `index`: (traces, items).
pub fn shard_names(index: u32) -> (String, String) {
    (
        format!("traces-{index:05}.jsonl.zst"),
        format!("items-{index:05}.jsonl.zst"),
    )
}

fn shard_index(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("traces-")
        .or_else(|| name.strip_prefix("items-"))?;
    rest.strip_suffix(".jsonl.zst")?.parse().ok()
}

pub use crate::trajectory::record::now_rfc3339;

/// An open trace-harvest directory (locked while this value lives).
#[derive(Debug)]
pub struct TraceStore {
    dir: PathBuf,
    header: Header,
    committed: HashSet<String>,
    max_shard_bytes: u64,
    index: u32,
    traces: Option<File>,
    items: Option<File>,
    traces_len: u64,
    items_len: u64,
    manifest: File,
    manifest_len: u64,
    _lock: File,
}

impl TraceStore {
    /// Opens (creating when new) `dir` for `header`; refuses a directory of other settings; repairs what a killed
    /// invocation left.
    pub fn open(dir: &Path, header: Header, max_shard_bytes: u64) -> Result<Self, StoreError> {
        refuse_foreign(dir)?;
        std::fs::create_dir_all(dir).map_err(StoreError::io("create", dir))?;
        let lock = lock_run_dir(dir, "").map_err(|error| match error {
            RunStartError::InUse { pid, .. } => StoreError::InUse {
                dir: dir.to_path_buf(),
                pid,
            },
            other => StoreError::Io {
                op: "lock",
                path: dir.to_path_buf(),
                source: std::io::Error::other(other.to_string()),
            },
        })?;
        let header_path = dir.join(HEADER_FILE);
        let header = match std::fs::read(&header_path) {
            Ok(bytes) => {
                let stored: Header =
                    serde_json::from_slice(&bytes).map_err(|error| StoreError::Corrupt {
                        path: header_path.clone(),
                        detail: error.to_string(),
                    })?;
                check_same(dir, &stored, &header)?;
                stored
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let header = Header {
                    format: FORMAT.to_owned(),
                    created_at: now_rfc3339(),
                    ..header
                };
                let mut text = serde_json::to_string_pretty(&header).map_err(|error| {
                    StoreError::io("serialize", &header_path)(std::io::Error::other(error))
                })?;
                text.push('\n');
                fsio::write_atomically(&header_path, text.as_bytes())
                    .map_err(StoreError::io("write", &header_path))?;
                header
            }
            Err(error) => return Err(StoreError::io("read", &header_path)(error)),
        };
        let shards = dir.join(SHARDS_DIR);
        std::fs::create_dir_all(&shards).map_err(StoreError::io("create", &shards))?;
        // The manifest: its good prefix (complete lines that parse), the rest cut off.
        let manifest_path = dir.join(MANIFEST_FILE);
        let mut committed = HashSet::new();
        let mut ends: BTreeMap<String, u64> = BTreeMap::new();
        let mut last_index = 0u32;
        let manifest_len = scan_rows(&manifest_path, |row| {
            committed.insert(row.instance_id.clone());
            for at in [&row.traces_at, &row.items_at] {
                let end = at.offset + at.length;
                let entry = ends.entry(at.shard.clone()).or_insert(0);
                *entry = (*entry).max(end);
                last_index = last_index.max(shard_index(&at.shard).unwrap_or(0));
            }
        })?;
        let manifest = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&manifest_path)
            .map_err(StoreError::io("open", &manifest_path))?;
        if manifest
            .metadata()
            .map_err(StoreError::io("stat", &manifest_path))?
            .len()
            != manifest_len
        {
            warn!(manifest = %manifest_path.display(), len = manifest_len, "torn manifest tail cut off");
            manifest
                .set_len(manifest_len)
                .and_then(|()| manifest.sync_data())
                .map_err(StoreError::io("repair", &manifest_path))?;
        }
        repair_failures(&dir.join(FAILURES_FILE))?;
        // Shards: each cut to the end of its last committed frame (an unreferenced one to nothing).
        for entry in std::fs::read_dir(&shards).map_err(StoreError::io("list", &shards))? {
            let entry = entry.map_err(StoreError::io("list", &shards))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if shard_index(&name).is_none() {
                continue;
            }
            let path = entry.path();
            let keep = ends.get(&name).copied().unwrap_or(0);
            let len = entry
                .metadata()
                .map_err(StoreError::io("stat", &path))?
                .len();
            if len > keep {
                warn!(shard = %path.display(), len, keep, "uncommitted shard tail cut off");
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(StoreError::io("open", &path))?;
                file.set_len(keep)
                    .and_then(|()| file.sync_data())
                    .map_err(StoreError::io("repair", &path))?;
            }
        }
        let (traces_name, items_name) = shard_names(last_index);
        let traces_len = ends.get(&traces_name).copied().unwrap_or(0);
        let items_len = ends.get(&items_name).copied().unwrap_or(0);
        info!(dir = %dir.display(), committed = committed.len(), shard = last_index, "trace harvest store opened");
        let mut store = Self {
            dir: dir.to_path_buf(),
            header,
            committed,
            max_shard_bytes: max_shard_bytes.max(1),
            index: last_index,
            traces: None,
            items: None,
            traces_len,
            items_len,
            manifest,
            manifest_len,
            _lock: lock,
        };
        if traces_len > 0 || items_len > 0 {
            store.open_shards(false)?;
        }
        Ok(store)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether `instance_id` is committed.
    pub fn is_committed(&self, instance_id: &str) -> bool {
        self.committed.contains(instance_id)
    }

    /// Tasks committed.
    pub fn committed_count(&self) -> usize {
        self.committed.len()
    }

    fn open_shards(&mut self, create: bool) -> Result<(), StoreError> {
        let (traces, items) = shard_names(self.index);
        let shards = self.dir.join(SHARDS_DIR);
        let open = |name: &str| {
            let path = shards.join(name);
            OpenOptions::new()
                .create(true)
                .truncate(create)
                .write(true)
                .open(&path)
                .map_err(StoreError::io("open shard", &path))
        };
        self.traces = Some(open(&traces)?);
        self.items = Some(open(&items)?);
        if create {
            File::open(&shards)
                .and_then(|dir| dir.sync_all())
                .map_err(StoreError::io("sync", &shards))?;
        }
        Ok(())
    }

    /// Commits one task: the traces frame, then the items frame (each appended and fdatasynced), then its manifest
    /// row (appended and fdatasynced). On an error the task is not committed (the next open cuts what was written).
    pub fn commit(&mut self, commit: TaskCommit) -> Result<ManifestRow, StoreError> {
        let TaskCommit {
            mut row,
            traces_jsonl,
            items_jsonl,
        } = commit;
        if self.committed.contains(&row.instance_id) {
            return Err(StoreError::Duplicate {
                instance_id: row.instance_id,
            });
        }
        let full =
            self.traces_len >= self.max_shard_bytes || self.items_len >= self.max_shard_bytes;
        if self.traces.is_none() || full {
            if full {
                self.index += 1;
            }
            self.traces_len = 0;
            self.items_len = 0;
            self.open_shards(true)?;
        }
        let (traces_name, items_name) = shard_names(self.index);
        let shards = self.dir.join(SHARDS_DIR);
        row.traces_at = append_frame(
            self.traces.as_mut(),
            &shards.join(&traces_name),
            &traces_name,
            self.traces_len,
            &traces_jsonl,
        )?;
        row.items_at = match append_frame(
            self.items.as_mut(),
            &shards.join(&items_name),
            &items_name,
            self.items_len,
            &items_jsonl,
        ) {
            Ok(at) => at,
            Err(error) => {
                // Not committed: the traces frame is overwritten by the next commit (or cut on open).
                return Err(error);
            }
        };
        row.committed_at = now_rfc3339();
        let manifest_path = self.dir.join(MANIFEST_FILE);
        let mut text = serde_json::to_string(&row).map_err(|error| {
            StoreError::io("serialize a row for", &manifest_path)(std::io::Error::other(error))
        })?;
        text.push('\n');
        let written = self
            .manifest
            .write_all(text.as_bytes())
            .and_then(|()| self.manifest.sync_data());
        if let Err(error) = written {
            // Best effort: cut the row; if that fails too the next open cuts a torn line (a whole one stays valid:
            // its frames were synced first).
            let _ = self
                .manifest
                .set_len(self.manifest_len)
                .and_then(|()| self.manifest.sync_data());
            return Err(StoreError::io("append a row to", &manifest_path)(error));
        }
        self.manifest_len += text.len() as u64;
        self.traces_len = row.traces_at.offset + row.traces_at.length;
        self.items_len = row.items_at.offset + row.items_at.length;
        self.committed.insert(row.instance_id.clone());
        Ok(row)
    }

    /// Appends `failure` to `failures.jsonl` (fdatasynced).
    pub fn record_failure(&mut self, failure: &Failure) -> Result<(), StoreError> {
        let path = self.dir.join(FAILURES_FILE);
        let mut text = serde_json::to_string(failure).map_err(|error| {
            StoreError::io("serialize a failure for", &path)(std::io::Error::other(error))
        })?;
        text.push('\n');
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_data()
            })
            .map_err(StoreError::io("append to", &path))
    }
}

/// Compresses `text` into one zstd frame and writes it at `offset` of `file`, fdatasynced.
fn append_frame(
    file: Option<&mut File>,
    path: &Path,
    name: &str,
    offset: u64,
    text: &str,
) -> Result<FrameAt, StoreError> {
    let file =
        file.ok_or_else(|| StoreError::io("write", path)(std::io::Error::other("shard not open")))?;
    let frame = zstd::bulk::compress(text.as_bytes(), ZSTD_LEVEL)
        .map_err(StoreError::io("compress for", path))?;
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.write_all(&frame))
        .and_then(|()| file.sync_data())
        .map_err(|error| {
            let _ = file.set_len(offset);
            StoreError::io("append a frame to", path)(error)
        })?;
    Ok(FrameAt {
        shard: name.to_owned(),
        offset,
        length: frame.len() as u64,
        bytes: text.len() as u64,
    })
}

/// Refuses a directory of other settings, naming what changed.
fn check_same(dir: &Path, stored: &Header, wanted: &Header) -> Result<(), StoreError> {
    if stored.format != FORMAT {
        return Err(StoreError::Corrupt {
            path: dir.join(HEADER_FILE),
            detail: format!(
                "its format is {:?}, this swe-env writes {FORMAT:?}; use the swe-env that wrote it or another --out",
                stored.format
            ),
        });
    }
    let mut fields = Vec::new();
    if stored.config_hash != wanted.config_hash {
        match (stored.config.as_object(), wanted.config.as_object()) {
            (Some(a), Some(b)) => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    if a.get(key) != b.get(key) {
                        fields.push(format!(
                            "{key}: {} -> {}",
                            a.get(key).unwrap_or(&Value::Null),
                            b.get(key).unwrap_or(&Value::Null)
                        ));
                    }
                }
            }
            _ => fields.push("config".to_owned()),
        }
        if fields.is_empty() {
            fields.push("config_hash".to_owned());
        }
    }
    let hashes = |h: &Header| {
        let mut v: Vec<String> = h.datasets.iter().map(|d| d.sha256.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    if hashes(stored) != hashes(wanted) {
        fields.push("datasets".to_owned());
    }
    if fields.is_empty() {
        return Ok(());
    }
    Err(StoreError::ConfigChanged {
        dir: dir.to_path_buf(),
        fields: fields.join(", "),
    })
}

/// Refuses a directory holding anything but a trace harvest (missing or empty is fine).
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
        if name != LOCK_FILE && !fsio::is_temp_of(&name, HEADER_FILE) {
            return Err(StoreError::NotStore {
                dir: dir.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Calls `each` with every row of the manifest's good prefix (complete lines that parse; duplicates of an
/// instance skipped with a warning); returns the prefix's length in bytes.
fn scan_rows(path: &Path, mut each: impl FnMut(ManifestRow)) -> Result<u64, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(StoreError::io("open", path)(error)),
    };
    let mut reader = BufReader::new(file);
    let mut good = 0u64;
    let mut seen = HashSet::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(StoreError::io("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let Ok(row) = serde_json::from_slice::<ManifestRow>(&line) else {
            warn!(manifest = %path.display(), offset = good, "a manifest line does not parse; it and what follows are cut off");
            break;
        };
        good += n as u64;
        if seen.insert(row.instance_id.clone()) {
            each(row);
        } else {
            warn!(instance_id = %row.instance_id, "duplicate manifest row ignored");
        }
    }
    Ok(good)
}

/// Cuts a torn last line of `failures.jsonl`.
fn repair_failures(path: &Path) -> Result<(), StoreError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file
            .read_to_end(&mut bytes)
            .map_err(StoreError::io("read", path))?,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StoreError::io("open", path)(error)),
    };
    let keep = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if keep < bytes.len() {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        file.set_len(keep as u64)
            .and_then(|()| file.sync_data())
            .map_err(StoreError::io("repair", path))?;
    }
    Ok(())
}

/// Every committed row of the directory at `dir` (good prefix, duplicates skipped).
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestRow>, StoreError> {
    let mut rows = Vec::new();
    scan_rows(&dir.join(MANIFEST_FILE), |row| rows.push(row))?;
    Ok(rows)
}

/// Every line of `failures.jsonl` that parses.
pub fn read_failures(dir: &Path) -> Result<Vec<Failure>, StoreError> {
    let path = dir.join(FAILURES_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(StoreError::io("read", &path)(error)),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The decompressed JSON lines of one frame.
pub fn read_frame(dir: &Path, at: &FrameAt) -> Result<String, StoreError> {
    let path = dir.join(SHARDS_DIR).join(&at.shard);
    let mut file = File::open(&path).map_err(StoreError::io("open", &path))?;
    let mut frame = vec![
        0u8;
        usize::try_from(at.length)
            .unwrap_or(usize::MAX)
            .min(1 << 32)
    ];
    file.seek(SeekFrom::Start(at.offset))
        .and_then(|_| file.read_exact(&mut frame))
        .map_err(StoreError::io("read a frame of", &path))?;
    let bytes = zstd::bulk::decompress(&frame, usize::try_from(at.bytes).unwrap_or(usize::MAX))
        .map_err(StoreError::io("decompress a frame of", &path))?;
    String::from_utf8(bytes).map_err(|error| StoreError::Corrupt {
        path,
        detail: error.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(config: Value) -> Header {
        Header {
            format: FORMAT.to_owned(),
            config_hash: config_hash(&config),
            config,
            datasets: vec![DatasetEntry {
                source: "fixtures".into(),
                sha256: "d".into(),
                rows: 2,
            }],
            created_at: String::new(),
        }
    }

    fn commit(id: &str) -> TaskCommit {
        let at = FrameAt {
            shard: String::new(),
            offset: 0,
            length: 0,
            bytes: 0,
        };
        TaskCommit {
            row: ManifestRow {
                instance_id: id.into(),
                repo: "r/r".into(),
                dataset_sha256: "d".into(),
                python: "3.11".into(),
                tests: 1,
                outcomes: BTreeMap::new(),
                traces: 1,
                frames: 3,
                frame_buckets: BTreeMap::new(),
                items: 0,
                caps: BTreeMap::new(),
                events_bytes: 10,
                pytest_exit: Some(0),
                elapsed_ms: 1,
                traces_at: at.clone(),
                items_at: at,
                committed_at: String::new(),
            },
            traces_jsonl: format!("{{\"id\":\"{id}\"}}\n"),
            items_jsonl: String::new(),
        }
    }

    #[test]
    fn commits_survive_torn_tails_and_config_changes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("h");
        let config = serde_json::json!({"max_frames": 2000});
        {
            let mut store = TraceStore::open(&out, header(config.clone()), 64).unwrap();
            store.commit(commit("a")).unwrap();
            store.commit(commit("b")).unwrap();
            assert!(matches!(
                store.commit(commit("a")),
                Err(StoreError::Duplicate { .. })
            ));
        }
        // A torn row and a torn frame, as a kill -9 leaves them.
        let rows = read_manifest(&out).unwrap();
        assert_eq!(rows.len(), 2);
        let last = &rows[1].traces_at;
        let shard = out.join(SHARDS_DIR).join(&last.shard);
        let mut file = OpenOptions::new().append(true).open(&shard).unwrap();
        file.write_all(b"garbage frame").unwrap();
        let mut manifest = OpenOptions::new()
            .append(true)
            .open(out.join(MANIFEST_FILE))
            .unwrap();
        manifest.write_all(b"{\"instance_id\":\"c\"").unwrap();
        {
            let mut store = TraceStore::open(&out, header(config.clone()), 64).unwrap();
            assert!(store.is_committed("a") && store.is_committed("b"));
            assert!(!store.is_committed("c"));
            // The torn frame is cut: the shard ends where the last committed frame ends.
            assert_eq!(
                std::fs::metadata(&shard).unwrap().len(),
                last.offset + last.length
            );
            let manifest_len = std::fs::metadata(out.join(MANIFEST_FILE)).unwrap().len();
            let text = std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap();
            assert_eq!(manifest_len as usize, text.len());
            assert!(text.ends_with("}\n"), "{text}");
            store.commit(commit("c")).unwrap();
        }
        let rows = read_manifest(&out).unwrap();
        assert_eq!(rows.len(), 3);
        for row in &rows {
            let text = read_frame(&out, &row.traces_at).unwrap();
            assert_eq!(text, format!("{{\"id\":\"{}\"}}\n", row.instance_id));
        }
        let changed =
            TraceStore::open(&out, header(serde_json::json!({"max_frames": 10})), 64).unwrap_err();
        assert!(
            changed.to_string().contains("max_frames: 2000 -> 10"),
            "{changed}"
        );
    }
}
