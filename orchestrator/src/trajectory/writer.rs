//! Append-only trajectory writer: one JSON line per record, durable before `append` returns as the file's
//! [`Durability`] says (default `per-step`: written and fdatasynced).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;

use super::commit::{device_of, Durability, GroupCommitter};
use super::record::Record;

/// Writing a trajectory failed (disk full, permissions): the path is named.
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryWriteError {
    /// Creating the file or its directory failed.
    #[error("cannot create trajectory {path}: {source} (check the output directory exists, is writable and has space)")]
    Create {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Appending or syncing failed.
    #[error("cannot append to trajectory {path}: {source} (is the disk full?)")]
    Append {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A record did not serialise (a bug).
    #[error("cannot serialise a trajectory record: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// An open trajectory file.
#[derive(Debug)]
pub struct TrajectoryWriter {
    path: PathBuf,
    file: Arc<File>,
    durability: Durability,
    /// The committer and the file's device, in `batched` mode.
    committer: Option<(Arc<GroupCommitter>, u64)>,
    /// The blocking write of an append whose caller stopped waiting (a cancelled step): the next append waits for
    /// it first, so records land in the order they were appended (the committer of `batched` keeps order itself).
    pending: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    n_records: u64,
}

impl TrajectoryWriter {
    /// Creates `path` (and its parent directories), `per-step` durability. An existing file is appended to, never
    /// truncated.
    pub async fn create(path: &Path) -> Result<Self, TrajectoryWriteError> {
        Self::create_with(path, Durability::PerStep).await
    }

    /// Creates `path` (and its parent directories) with the given durability; `batched` uses the process's shared
    /// committer ([`GroupCommitter::global`]).
    pub async fn create_with(
        path: &Path,
        durability: Durability,
    ) -> Result<Self, TrajectoryWriteError> {
        let committer =
            match durability {
                Durability::Batched => Some(GroupCommitter::global().map_err(|source| {
                    TrajectoryWriteError::Create {
                        path: path.to_owned(),
                        source,
                    }
                })?),
                Durability::PerStep | Durability::Os => None,
            };
        Self::open(path, durability, committer).await
    }

    /// Creates `path` in `batched` mode on the given committer (tests and benchmarks read its [`CommitStats`]).
    ///
    /// [`CommitStats`]: super::commit::CommitStats
    pub async fn create_batched(
        path: &Path,
        committer: Arc<GroupCommitter>,
    ) -> Result<Self, TrajectoryWriteError> {
        Self::open(path, Durability::Batched, Some(committer)).await
    }

    async fn open(
        path: &Path,
        durability: Durability,
        committer: Option<Arc<GroupCommitter>>,
    ) -> Result<Self, TrajectoryWriteError> {
        let create_err = |source| TrajectoryWriteError::Create {
            path: path.to_owned(),
            source,
        };
        let owned = path.to_owned();
        let (file, dev) = tokio::task::spawn_blocking(move || -> std::io::Result<(File, u64)> {
            if let Some(parent) = owned.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&owned)?;
            let dev = device_of(&file)?;
            Ok((file, dev))
        })
        .await
        .map_err(|join| create_err(std::io::Error::other(join.to_string())))?
        .map_err(create_err)?;
        Ok(Self {
            path: path.to_owned(),
            file: Arc::new(file),
            durability,
            committer: committer.map(|c| (c, dev)),
            pending: None,
            n_records: 0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How this writer makes records durable.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Records appended through this writer.
    pub fn n_records(&self) -> u64 {
        self.n_records
    }

    /// Appends one record; it is durable as [`Self::durability`] says when this returns (`per-step`, `batched`: on
    /// disk; `os`: in the page cache).
    pub async fn append(&mut self, record: &Record) -> Result<(), TrajectoryWriteError> {
        self.append_after(b"", record).await
    }

    /// Appends `prefix` and one record in a single write (the crash closer ends a torn last line with a newline
    /// this way, so the record never shares a line with it), durable as [`Self::append`] says.
    pub async fn append_after(
        &mut self,
        prefix: &[u8],
        record: &Record,
    ) -> Result<(), TrajectoryWriteError> {
        let mut line = prefix.to_vec();
        line.extend(serde_json::to_vec(record)?);
        line.push(b'\n');
        self.append_line(line)
            .await
            .map_err(|source| TrajectoryWriteError::Append {
                path: self.path.clone(),
                source,
            })?;
        self.n_records += 1;
        Ok(())
    }

    async fn append_line(&mut self, line: Vec<u8>) -> std::io::Result<()> {
        if let Some((committer, dev)) = &self.committer {
            return committer.append(Arc::clone(&self.file), *dev, line).await;
        }
        if let Some(earlier) = self.pending.as_mut() {
            // Its caller is gone and nobody reads its outcome; only its completion matters here.
            let _ = earlier.await;
            self.pending = None;
        }
        let file = Arc::clone(&self.file);
        let sync = self.durability == Durability::PerStep;
        // One blocking-pool round trip for the write and its fdatasync.
        let write = self.pending.insert(tokio::task::spawn_blocking(move || {
            (&*file).write_all(&line)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        }));
        let joined = write.await;
        self.pending = None;
        joined.map_err(|join| std::io::Error::other(join.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trajectory::record::{EpisodeEnd, EpisodeStatus, Record};

    /// A record told apart by the start of its `detail`.
    fn end(tag: &str, padding: usize) -> Record {
        Record::EpisodeEnd(EpisodeEnd {
            status: EpisodeStatus::Cancelled,
            detail: Some(format!("{tag}{}", " ".repeat(padding))),
            submission: None,
            final_answer: None,
            final_answer_tokens: None,
            final_answer_reasoning: None,
            n_steps: 0,
            rewards: None,
            grading: None,
            duration_ms: 0,
            ended_at: String::new(),
        })
    }

    /// A step cancelled during its append (client gone after the grace, shutdown) must not let the next record
    /// land before or inside its own: the next append waits for the abandoned write. The "file" is a FIFO whose
    /// reader starts late, so the first write blocks half-way (a pipe holds 64 KiB) when it is cancelled; without
    /// the wait, the second record is written into the middle of the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_appended_after_a_cancelled_append_lands_after_it() {
        for durability in [Durability::Os, Durability::PerStep] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("t.jsonl");
            rustix::fs::mkfifoat(
                rustix::fs::CWD,
                &path,
                rustix::fs::Mode::from_raw_mode(0o600),
            )
            .unwrap();
            let reader_path = path.clone();
            let reader = std::thread::spawn(move || {
                let mut file = std::fs::File::open(&reader_path).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(500));
                let mut text = String::new();
                std::io::Read::read_to_string(&mut file, &mut text).unwrap();
                text
            });
            let mut writer = TrajectoryWriter::create_with(&path, durability)
                .await
                .unwrap();
            let big = end("first", 1 << 20);
            let cancelled =
                tokio::time::timeout(Duration::from_millis(100), writer.append(&big)).await;
            assert!(cancelled.is_err(), "the append was cancelled while blocked");
            // PerStep's fdatasync on a FIFO fails (EINVAL); what matters is where the bytes went.
            let _ = writer.append(&end("second", 0)).await;
            drop(writer);
            let text = reader.join().unwrap();
            let tags: Vec<String> = text
                .lines()
                .map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{durability:?}: a torn line ({e})"));
                    value["detail"].as_str().unwrap().trim_end().to_owned()
                })
                .collect();
            assert_eq!(tags, ["first", "second"], "{durability:?}");
        }
    }
}
