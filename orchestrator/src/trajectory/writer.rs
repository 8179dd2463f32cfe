//! Append-only trajectory writer: one JSON line per record, durable before `append` returns as the file's
//! [`Durability`] says (default `per-step`: written and fdatasynced).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

    async fn append_line(&self, line: Vec<u8>) -> std::io::Result<()> {
        if let Some((committer, dev)) = &self.committer {
            return committer.append(Arc::clone(&self.file), *dev, line).await;
        }
        let file = Arc::clone(&self.file);
        let sync = self.durability == Durability::PerStep;
        // One blocking-pool round trip for the write and its fdatasync.
        tokio::task::spawn_blocking(move || {
            (&*file).write_all(&line)?;
            if sync {
                file.sync_data()?;
            }
            Ok(())
        })
        .await
        .map_err(|join| std::io::Error::other(join.to_string()))?
    }
}
