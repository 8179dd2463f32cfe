//! Reading trajectories back, tolerating the one kind of damage a crash can cause: a torn last line.

use std::path::{Path, PathBuf};

use super::record::{EpisodeEnd, EpisodeStart, EpisodeStatus, Record, StepRecord};

/// A trajectory file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TrajectoryReadError {
    /// The file could not be opened or read.
    #[error("cannot read trajectory {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A complete line (not the last) is not a record: the file is corrupt, not merely torn.
    #[error("trajectory {path} line {line}: not a valid record: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parse error.
        detail: String,
    },
}

/// The records of one trajectory, split by kind.
#[derive(Debug, Clone, Default)]
pub struct ReadTrajectory {
    /// The `episode_start` record, if present.
    pub start: Option<EpisodeStart>,
    /// The steps, in order.
    pub steps: Vec<StepRecord>,
    /// The `episode_end` record, if the episode finished.
    pub end: Option<EpisodeEnd>,
    /// The last line was torn (incomplete) and was dropped.
    pub torn_tail: bool,
}

/// Parses trajectory text. A last line that does not parse is a torn write and is dropped; so is one followed only
/// by the `crashed` `episode_end` a later server appended after the crash (the closer starts its record on a new
/// line). Any other bad line is corruption.
pub fn parse_trajectory(text: &[u8], path: &Path) -> Result<ReadTrajectory, TrajectoryReadError> {
    let mut out = ReadTrajectory::default();
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let n_lines = lines.len();
    let parsed: Vec<(usize, Result<Record, serde_json::Error>)> = lines
        .into_iter()
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(idx, line)| (idx, serde_json::from_slice::<Record>(line)))
        .collect();
    let closed_after_crash = matches!(
        parsed.last(),
        Some((_, Ok(Record::EpisodeEnd(end)))) if end.status == EpisodeStatus::Crashed
    );
    let n_records = parsed.len();
    for (pos, (idx, record)) in parsed.into_iter().enumerate() {
        // No newline after it: the write may have been cut.
        let is_last = idx + 1 == n_lines;
        let torn_before_crash_close = closed_after_crash && pos + 2 == n_records;
        match record {
            Ok(Record::EpisodeStart(start)) => out.start = Some(start),
            Ok(Record::Step(step)) => out.steps.push(step),
            Ok(Record::EpisodeEnd(end)) => out.end = Some(end),
            Err(_) if is_last || torn_before_crash_close => out.torn_tail = true,
            Err(error) => {
                return Err(TrajectoryReadError::Corrupt {
                    path: path.to_owned(),
                    line: idx + 1,
                    detail: error.to_string(),
                })
            }
        }
    }
    Ok(out)
}

/// Reads and parses a trajectory file.
pub async fn read_trajectory(path: &Path) -> Result<ReadTrajectory, TrajectoryReadError> {
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| TrajectoryReadError::Io {
            path: path.to_owned(),
            source,
        })?;
    parse_trajectory(&bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_dropped_but_corruption_is_an_error() {
        let step = r#"{"type":"step","step_idx":0,"raw_action":"a","parsed_call":null,"observation":"o","tool_ms":1,"at":"t"}"#;
        let text = format!("{step}\n{step}\n{{\"type\":\"st");
        let read = parse_trajectory(text.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(read.steps.len(), 2);
        assert!(read.torn_tail);
        let text = format!("{step}\ngarbage\n{step}\n");
        let err = parse_trajectory(text.as_bytes(), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
