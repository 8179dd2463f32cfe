//! Append-only trajectory writer: one JSON line per record, flushed and fsynced before `append` returns.

use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;

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
    file: tokio::fs::File,
    n_records: u64,
}

impl TrajectoryWriter {
    /// Creates `path` (and its parent directories). An existing file is appended to, never truncated.
    pub async fn create(path: &Path) -> Result<Self, TrajectoryWriteError> {
        let create_err = |source| TrajectoryWriteError::Create {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(create_err)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(create_err)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            n_records: 0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records appended through this writer.
    pub fn n_records(&self) -> u64 {
        self.n_records
    }

    /// Appends one record and makes it durable (write, flush, fdatasync) before returning.
    pub async fn append(&mut self, record: &Record) -> Result<(), TrajectoryWriteError> {
        self.append_after(b"", record).await
    }

    /// Appends `prefix` and one record in a single write (the crash closer ends a torn last line with a newline
    /// this way, so the record never shares a line with it), durable before returning.
    pub async fn append_after(
        &mut self,
        prefix: &[u8],
        record: &Record,
    ) -> Result<(), TrajectoryWriteError> {
        let mut line = prefix.to_vec();
        line.extend(serde_json::to_vec(record)?);
        line.push(b'\n');
        let append_err = |source| TrajectoryWriteError::Append {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).await.map_err(append_err)?;
        self.file.flush().await.map_err(append_err)?;
        self.file.sync_data().await.map_err(append_err)?;
        self.n_records += 1;
        Ok(())
    }
}
