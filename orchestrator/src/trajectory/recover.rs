//! Closing the trajectory of an episode whose process died (kill -9, OOM, power loss): an `episode_end` with status
//! `crashed` is appended (append-only: nothing before it is rewritten), so exports and resumes see a status. A torn
//! last line is ended with a newline in the same write, and the reader drops it.

use std::path::{Path, PathBuf};

use super::reader::{read_trajectory, TrajectoryReadError};
use super::record::{now_rfc3339, EpisodeEnd, EpisodeStart, EpisodeStatus, Record};
use super::writer::{TrajectoryWriteError, TrajectoryWriter};

/// Closing a crashed trajectory failed.
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryCloseError {
    /// The file could not be read (or is corrupt).
    #[error(transparent)]
    Read(#[from] TrajectoryReadError),
    /// The record could not be appended.
    #[error(transparent)]
    Write(#[from] TrajectoryWriteError),
    /// The file could not be read as bytes.
    #[error("cannot read trajectory {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A trajectory without an `episode_end`: its start record (when present) and step count.
#[derive(Debug, Clone)]
pub struct OpenTrajectory {
    /// The `episode_start` record, if the file has one.
    pub start: Option<EpisodeStart>,
    /// Steps recorded.
    pub n_steps: u32,
}

/// Reads `path`; `None` when it already has an `episode_end`.
pub async fn open_trajectory(path: &Path) -> Result<Option<OpenTrajectory>, TrajectoryReadError> {
    let read = read_trajectory(path).await?;
    if read.end.is_some() {
        return Ok(None);
    }
    Ok(Some(OpenTrajectory {
        start: read.start,
        n_steps: read.steps.len() as u32,
    }))
}

/// Appends `episode_end` with status `crashed` and `detail` to `path` unless it already has an end. The caller has
/// established that the process that drove the episode is dead. Returns the record appended, if any.
pub async fn close_crashed(
    path: &Path,
    detail: &str,
) -> Result<Option<EpisodeEnd>, TrajectoryCloseError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| TrajectoryCloseError::Io {
            path: path.to_owned(),
            source,
        })?;
    let read = super::reader::parse_trajectory(&bytes, path)?;
    if read.end.is_some() {
        return Ok(None);
    }
    let record = EpisodeEnd {
        status: EpisodeStatus::Crashed,
        detail: Some(detail.to_owned()),
        submission: None,
        final_answer: None,
        final_answer_tokens: None,
        final_answer_reasoning: None,
        n_steps: read.steps.len() as u32,
        rewards: None,
        grading: None,
        // Unknown: the process that timed the episode is gone.
        duration_ms: 0,
        ended_at: now_rfc3339(),
    };
    let torn = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let prefix: &[u8] = if torn { b"\n" } else { b"" };
    let mut writer = TrajectoryWriter::create(path).await?;
    writer
        .append_after(prefix, &Record::EpisodeEnd(record.clone()))
        .await?;
    Ok(Some(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: &str = r#"{"type":"step","step_idx":0,"raw_action":"a","parsed_call":null,"observation":"o","tool_ms":1,"at":"t"}"#;

    #[tokio::test]
    async fn a_torn_trajectory_is_closed_as_crashed_by_appending_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ep.jsonl");
        let original = format!("{STEP}\n{STEP}\n{{\"type\":\"st");
        std::fs::write(&path, &original).unwrap();
        let end = close_crashed(&path, "owner died").await.unwrap().unwrap();
        assert_eq!(end.status, EpisodeStatus::Crashed);
        assert_eq!(end.n_steps, 2);
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(after.starts_with(&original), "earlier bytes were rewritten");
        let read = read_trajectory(&path).await.unwrap();
        assert!(read.torn_tail);
        assert_eq!(read.steps.len(), 2);
        assert_eq!(read.end.unwrap().status, EpisodeStatus::Crashed);
        // Idempotent: a second close appends nothing.
        assert!(close_crashed(&path, "again").await.unwrap().is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), after);
    }

    #[tokio::test]
    async fn a_clean_trajectory_is_closed_and_corruption_elsewhere_is_still_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ep.jsonl");
        std::fs::write(&path, format!("{STEP}\n")).unwrap();
        close_crashed(&path, "owner died").await.unwrap().unwrap();
        let read = read_trajectory(&path).await.unwrap();
        assert!(!read.torn_tail);
        assert_eq!(read.end.unwrap().status, EpisodeStatus::Crashed);
        let corrupt = dir.path().join("bad.jsonl");
        std::fs::write(&corrupt, format!("garbage\n{STEP}\n")).unwrap();
        assert!(close_crashed(&corrupt, "x").await.is_err());
    }
}
