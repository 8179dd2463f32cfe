//! The output directory of `swe-env mine`: `tasks.jsonl` (kept rows, run-benchmark-ready), `rejected.jsonl`,
//! `swerl.jsonl` (history only) and `summary.json`, each replaced whole (`crate::fsio`).
//!
//! The rule ([`prepare`]): a directory that does not exist is created; one that holds only a previous mine output (or
//! a temporary file of one, left by a crash) is accepted and that output removed, so that a failed run never leaves
//! stale results looking current; anything else is refused.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;
use swe_env_grading::dataset::Instance;

use crate::mine::issue_fix::RejectedRow;
use crate::mine::swerl::SweRlRecord;

/// Kept rows.
pub const TASKS: &str = "tasks.jsonl";
/// Rejected candidates / mutants.
pub const REJECTED: &str = "rejected.jsonl";
/// SWE-RL records (history).
pub const SWERL: &str = "swerl.jsonl";
/// Counts, timings, throughput.
pub const SUMMARY: &str = "summary.json";
/// Everything a mine run writes into its output directory (and may replace).
pub const OUTPUT_FILES: [&str; 4] = [TASKS, REJECTED, SWERL, SUMMARY];

/// The output directory cannot be used or written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The path exists and is not a directory (bad input).
    #[error("{} exists and is not a directory: give a new or empty directory", path.display())]
    NotADirectory { path: PathBuf },
    /// The directory holds something that is not a previous mine output (bad input).
    #[error(
        "{} holds files that are not a previous `swe-env mine` output ({}): give a new or empty directory (a previous \
         mine output there — {} — is replaced)",
        path.display(),
        shown(names),
        OUTPUT_FILES.join(", ")
    )]
    Foreign { path: PathBuf, names: Vec<String> },
    /// Reading, creating or writing failed (infrastructure: permissions, a full disk).
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A row could not be serialised.
    #[error("serialising {file}: {source}")]
    Json {
        file: &'static str,
        source: serde_json::Error,
    },
}

impl OutputError {
    /// Whether the error is the caller's input (the directory given), not the machine.
    pub fn is_input(&self) -> bool {
        matches!(self, Self::NotADirectory { .. } | Self::Foreign { .. })
    }
}

fn shown(names: &[String]) -> String {
    let mut text = names.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        text.push_str(", …");
    }
    text
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> OutputError {
    let path = path.to_path_buf();
    move |source| OutputError::Io {
        action,
        path,
        source,
    }
}

/// Applies the output directory rule (module docs) to `dir`.
pub fn prepare(dir: &Path) -> Result<(), OutputError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return std::fs::create_dir_all(dir).map_err(io("creating", dir));
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(OutputError::NotADirectory {
                path: dir.to_path_buf(),
            });
        }
        Err(error) => return Err(io("reading", dir)(error)),
    };
    let mut ours = Vec::new();
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        let is_output = OUTPUT_FILES
            .iter()
            .any(|output| name == *output || crate::fsio::is_temp_of(&name, output));
        if is_file && is_output {
            ours.push(entry.path());
        } else {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        return Err(OutputError::Foreign {
            path: dir.to_path_buf(),
            names: foreign,
        });
    }
    for path in ours {
        std::fs::remove_file(&path).map_err(io("removing the previous output", &path))?;
    }
    Ok(())
}

/// One `tasks.jsonl` line: the row with `FAIL_TO_PASS` / `PASS_TO_PASS` as JSON-encoded string lists, as the
/// dataset files (and the hub) carry them.
pub fn task_line(row: &Instance) -> serde_json::Result<String> {
    let mut value = serde_json::to_value(row)?;
    if let Value::Object(fields) = &mut value {
        for key in ["FAIL_TO_PASS", "PASS_TO_PASS"] {
            if let Some(list) = fields.get_mut(key) {
                *list = Value::String(serde_json::to_string(list)?);
            }
        }
    }
    serde_json::to_string(&value)
}

fn jsonl<T>(
    file: &'static str,
    rows: &[T],
    line: impl Fn(&T) -> serde_json::Result<String>,
) -> Result<Vec<u8>, OutputError> {
    let mut out = Vec::new();
    for row in rows {
        let text = line(row).map_err(|source| OutputError::Json { file, source })?;
        out.extend_from_slice(text.as_bytes());
        out.push(b'\n');
    }
    Ok(out)
}

/// Writes a run's files into `dir` (prepared with [`prepare`]), each replaced whole; `swerl.jsonl` only when
/// `records` is given.
pub fn write(
    dir: &Path,
    tasks: &[Instance],
    rejected: &[RejectedRow],
    records: Option<&[SweRlRecord]>,
    summary: &impl Serialize,
) -> Result<(), OutputError> {
    for task in tasks {
        let missing: Vec<&str> = [
            ("image", task.image.is_none()),
            ("activate", task.activate.is_none()),
            ("test_cmd", task.test_cmd.is_none()),
            ("log_parser", task.log_parser.is_none()),
        ]
        .into_iter()
        .filter_map(|(field, missing)| missing.then_some(field))
        .collect();
        if !missing.is_empty() {
            tracing::warn!(instance_id = %task.instance_id, ?missing, "a mined row lacks environment fields");
        }
    }
    let put = |name: &'static str, bytes: Vec<u8>| -> Result<(), OutputError> {
        let path = dir.join(name);
        crate::fsio::write_atomically(&path, &bytes).map_err(io("writing", &path))
    };
    put(TASKS, jsonl(TASKS, tasks, task_line)?)?;
    put(REJECTED, jsonl(REJECTED, rejected, serde_json::to_string)?)?;
    if let Some(records) = records {
        put(SWERL, jsonl(SWERL, records, serde_json::to_string)?)?;
    }
    let mut text = serde_json::to_string_pretty(summary).map_err(|source| OutputError::Json {
        file: SUMMARY,
        source,
    })?;
    text.push('\n');
    put(SUMMARY, text.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absent → created; empty or a previous output → accepted (old outputs removed); anything else → refused.
    #[test]
    fn the_output_directory_rule() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        prepare(&fresh).unwrap();
        assert!(fresh.is_dir());
        prepare(&fresh).unwrap();

        for name in OUTPUT_FILES {
            std::fs::write(fresh.join(name), "old").unwrap();
        }
        let temp = crate::fsio::temp_path(&fresh.join(TASKS));
        std::fs::write(&temp, "").unwrap();
        prepare(&fresh).unwrap();
        assert_eq!(
            std::fs::read_dir(&fresh).unwrap().count(),
            0,
            "previous outputs removed"
        );

        std::fs::write(fresh.join(TASKS), "old").unwrap();
        std::fs::write(fresh.join("notes.txt"), "mine").unwrap();
        let error = prepare(&fresh).unwrap_err();
        assert!(error.is_input(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("notes.txt") && message.contains("new or empty"),
            "{message}"
        );
        assert!(
            fresh.join("notes.txt").exists() && fresh.join(TASKS).exists(),
            "nothing removed"
        );

        // A directory, even one named like an output, is not an output.
        std::fs::remove_file(fresh.join("notes.txt")).unwrap();
        std::fs::create_dir(fresh.join(SUMMARY)).unwrap();
        assert!(matches!(
            prepare(&fresh),
            Err(OutputError::Foreign { names, .. }) if names == [SUMMARY]
        ));

        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = prepare(&file).unwrap_err();
        assert!(
            matches!(error, OutputError::NotADirectory { .. }) && error.is_input(),
            "{error}"
        );
    }

    fn row(id: &str) -> Instance {
        let mut row = swe_env_grading::dataset::instance_from_value(serde_json::json!({
            "repo": "local/demo", "instance_id": id, "base_commit": "0123456789abcdef0123456789abcdef01234567",
            "patch": "diff --git a/a.py b/a.py\n", "test_patch": "diff --git a/tests/t.py b/tests/t.py\n",
            "problem_statement": "fix it", "FAIL_TO_PASS": ["tests/t.py::test_a", "tests/t.py::test_b"],
            "PASS_TO_PASS": [], "image": "swe-env-mined/local-demo:0123456789ab",
            "activate": "source /opt/venv/bin/activate", "test_cmd": "pytest -rA", "log_parser": "pytest",
        }))
        .unwrap();
        row.extra.insert(
            "swe_env_mined".into(),
            serde_json::json!({"kind": "history", "commit": "fedcba"}),
        );
        row
    }

    /// tasks.jsonl lines carry the lists as JSON strings (the dataset files' form), keep the environment fields and
    /// the provenance, and load back through the dataset loader as the same rows.
    #[test]
    fn task_lines_load_back_as_the_same_rows() {
        let rows = vec![
            row("local__demo-0123456789ab"),
            row("local__demo-0123456789cd"),
        ];
        let text = String::from_utf8(jsonl(TASKS, &rows, task_line).unwrap()).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first["FAIL_TO_PASS"],
            Value::String(r#"["tests/t.py::test_a","tests/t.py::test_b"]"#.into())
        );
        assert_eq!(first["PASS_TO_PASS"], Value::String("[]".into()));
        for key in ["image", "activate", "test_cmd", "log_parser"] {
            assert!(first[key].is_string(), "{key}");
        }
        assert_eq!(first["swe_env_mined"]["kind"], "history");
        let loaded = swe_env_grading::dataset::load_jsonl_str(&text);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.instances, rows);
    }

    #[test]
    fn writes_every_file_and_a_rerun_accepts_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let rejected = vec![RejectedRow {
            id: "aaa".into(),
            instance_id: None,
            reason: "no_tests".into(),
            detail: String::new(),
        }];
        write(
            dir.path(),
            &[row("local__demo-1")],
            &rejected,
            Some(&[]),
            &serde_json::json!({"kept": 1}),
        )
        .unwrap();
        let tasks = std::fs::read_to_string(dir.path().join(TASKS)).unwrap();
        assert_eq!(
            swe_env_grading::dataset::load_jsonl_str(&tasks)
                .instances
                .len(),
            1
        );
        let rejected: Value = serde_json::from_str(
            std::fs::read_to_string(dir.path().join(REJECTED))
                .unwrap()
                .trim(),
        )
        .unwrap();
        assert_eq!(rejected["reason"], "no_tests");
        assert_eq!(std::fs::read_to_string(dir.path().join(SWERL)).unwrap(), "");
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(SUMMARY)).unwrap())
                .unwrap();
        assert_eq!(summary["kept"], 1);
        prepare(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
