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
    /// The records are not one episode in order: a second `episode_start`, steps before the start, or a record
    /// after the `episode_end` (two trajectories concatenated, or a writer bug). Never merged.
    #[error("trajectory {path} line {line}: {error}")]
    Order {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the offending record.
        line: usize,
        /// What is out of order.
        error: RecordOrderError,
    },
}

/// Records that do not form one episode in order (`episode_start`, steps, at most one `episode_end` last).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordOrderError {
    /// A second `episode_start`.
    #[error(
        "a second episode_start (episode {second:?}; the first, {first:?}, started earlier): one file or shard \
         line holds one episode; split the trajectories instead of concatenating them"
    )]
    SecondStart {
        /// Episode id of the first start.
        first: String,
        /// Episode id of the second one.
        second: String,
    },
    /// An `episode_start` after steps: the steps came before the start. (A file with steps and no start at all,
    /// a headless fragment, still reads: it has no start to be out of order with.)
    #[error(
        "an episode_start after {steps} step record(s): the trajectory's first record must be its episode_start"
    )]
    BeforeStart {
        /// Steps read before the start.
        steps: usize,
    },
    /// A record after the `episode_end`.
    #[error("a record ({kind}) after the episode_end: nothing may follow the end of an episode")]
    AfterEnd {
        /// `episode_start`, `step` or `episode_end`.
        kind: &'static str,
    },
}

fn kind_of(record: &Record) -> &'static str {
    match record {
        Record::EpisodeStart(_) => "episode_start",
        Record::Step(_) => "step",
        Record::EpisodeEnd(_) => "episode_end",
    }
}

impl ReadTrajectory {
    /// The trajectory of `records` (a shard line's records, in order). Errors name the 1-based index of the
    /// offending record: a second `episode_start`, a start after steps, a record after the end.
    pub fn from_records(records: Vec<Record>) -> Result<ReadTrajectory, (usize, RecordOrderError)> {
        let mut out = ReadTrajectory::default();
        for (index, record) in records.into_iter().enumerate() {
            out.push(record).map_err(|error| (index + 1, error))?;
        }
        Ok(out)
    }

    /// Appends the next record, refusing what would make it more (or other) than one episode in order.
    fn push(&mut self, record: Record) -> Result<(), RecordOrderError> {
        if self.end.is_some() {
            return Err(RecordOrderError::AfterEnd {
                kind: kind_of(&record),
            });
        }
        match record {
            Record::EpisodeStart(start) => {
                if let Some(first) = &self.start {
                    return Err(RecordOrderError::SecondStart {
                        first: first.episode_id.clone(),
                        second: start.episode_id,
                    });
                }
                if !self.steps.is_empty() {
                    return Err(RecordOrderError::BeforeStart {
                        steps: self.steps.len(),
                    });
                }
                self.start = Some(start);
            }
            Record::Step(step) => self.steps.push(step),
            // An `episode_end` alone is allowed: the crash closer ends a file whose start was never written.
            Record::EpisodeEnd(end) => self.end = Some(end),
        }
        Ok(())
    }
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
/// line). Any other bad line is corruption, and so are records that are not one episode in order (a second
/// `episode_start`, a start after steps, a record after the end: [`RecordOrderError`], naming the line).
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
            Ok(record) => out
                .push(record)
                .map_err(|error| TrajectoryReadError::Order {
                    path: path.to_owned(),
                    line: idx + 1,
                    error,
                })?,
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

    const STEP: &str = r#"{"type":"step","step_idx":0,"raw_action":"a","parsed_call":null,"observation":"o","tool_ms":1,"at":"t"}"#;
    const END: &str =
        r#"{"type":"episode_end","status":"submitted","n_steps":1,"duration_ms":1,"ended_at":"t"}"#;

    fn start(id: &str) -> String {
        serde_json::json!({
            "type": "episode_start", "schema_version": 1, "episode_id": id, "instance_id": "i", "task": {},
            "image": "img", "image_id": "", "tool_format": "text", "limits": {}, "versions": {}, "started_at": "t",
        })
        .to_string()
    }

    #[test]
    fn torn_last_line_is_dropped_but_corruption_is_an_error() {
        let start = start("a");
        let text = format!("{start}\n{STEP}\n{STEP}\n{{\"type\":\"st");
        let read = parse_trajectory(text.as_bytes(), Path::new("x")).unwrap();
        assert_eq!(read.steps.len(), 2);
        assert!(read.torn_tail);
        let text = format!("{start}\n{STEP}\ngarbage\n{STEP}\n");
        let err = parse_trajectory(text.as_bytes(), Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
    }

    #[test]
    fn two_episodes_in_one_file_are_an_error_naming_the_line_never_merged() {
        let (a, b) = (start("ep-a"), start("ep-b"));
        let cases = [
            (
                format!("{a}\n{STEP}\n{b}\n{STEP}\n"),
                3,
                "second episode_start",
            ),
            (
                format!("{a}\n{STEP}\n{END}\n{b}\n{STEP}\n{END}\n"),
                4,
                "after the episode_end",
            ),
            (format!("{a}\n{END}\n{STEP}\n"), 3, "after the episode_end"),
            (format!("{STEP}\n{a}\n{END}\n"), 2, "after 1 step record"),
        ];
        for (text, line, what) in cases {
            let err = parse_trajectory(text.as_bytes(), Path::new("f.jsonl")).unwrap_err();
            assert!(
                matches!(err, TrajectoryReadError::Order { line: l, .. } if l == line),
                "{err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains(&format!("f.jsonl line {line}")) && message.contains(what),
                "{message}"
            );
        }
        // The same rules for a shard line's record list, by record number.
        let records: Vec<Record> = [a.as_str(), STEP, b.as_str()]
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let (index, error) = ReadTrajectory::from_records(records).unwrap_err();
        assert_eq!(index, 3);
        assert_eq!(
            error,
            RecordOrderError::SecondStart {
                first: "ep-a".into(),
                second: "ep-b".into()
            }
        );
        let records: Vec<Record> = [a.as_str(), STEP, STEP, END]
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let read = ReadTrajectory::from_records(records).unwrap();
        assert_eq!(read.steps.len(), 2);
        assert!(read.end.is_some());
        // An end alone (a crash closer's record for a file whose start was never written) is readable.
        let read = parse_trajectory(format!("{END}\n").as_bytes(), Path::new("x")).unwrap();
        assert!(read.start.is_none() && read.end.is_some());
    }
}
