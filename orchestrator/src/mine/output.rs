//! The output directory of `swe-env mine`: `tasks.jsonl` (kept rows, run-benchmark-ready), `rejected.jsonl`,
//! `swerl.jsonl` (history only) and `summary.json`, each replaced whole (`crate::fsio`).
//!
//! The rule ([`prepare`]): a directory that does not exist is created; one that holds (or is) an input of the run
//! (`--tasks`, `--repo`, `--recipe`, compared as canonical paths) is refused; an empty one is accepted; one that
//! holds only the known file names (and temp files of them, left by a crash) is accepted only when its
//! `summary.json` says `"kind": "history"` or `"mutate"` — a previous mine output; anything else is refused.
//! `prepare` removes nothing: [`write`] serialises every file, replaces each whole, writes `summary.json` last and
//! only then removes the known files this run did not produce (`swerl.jsonl` after a mutate run) and stray temp
//! files. An interrupted run leaves the directory as it was.

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
    /// The directory holds (or is) one of the run's inputs (bad input).
    #[error("{} holds the input {}: give an output directory that does not contain the run's inputs", path.display(), input.display())]
    HoldsInput { path: PathBuf, input: PathBuf },
    /// The directory holds files named like a mine output without the `summary.json` (`kind` history or mutate)
    /// that marks one (bad input: they may be a user's files).
    #[error(
        "{} holds {} but no {SUMMARY} of a `swe-env mine` run (with \"kind\": \"history\" or \"mutate\"), so they \
         are not replaced: give a new or empty directory, or move those files away",
        path.display(),
        shown(names)
    )]
    NotAnOutput { path: PathBuf, names: Vec<String> },
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
        matches!(
            self,
            Self::NotADirectory { .. }
                | Self::Foreign { .. }
                | Self::HoldsInput { .. }
                | Self::NotAnOutput { .. }
        )
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

/// Applies the output directory rule (module docs) to `dir`; `inputs` are the run's input paths (`--tasks`,
/// `--repo`, `--recipe`; one that does not exist, such as a dataset alias, is skipped). Removes nothing.
pub fn prepare(dir: &Path, inputs: &[&Path]) -> Result<(), OutputError> {
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
    let canonical = std::fs::canonicalize(dir).map_err(io("resolving", dir))?;
    for input in inputs {
        if let Ok(input_path) = std::fs::canonicalize(input) {
            if input_path.starts_with(&canonical) {
                return Err(OutputError::HoldsInput {
                    path: dir.to_path_buf(),
                    input: input.to_path_buf(),
                });
            }
        }
    }
    let mut outputs = Vec::new();
    let mut foreign = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io("reading", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().is_ok_and(|kind| kind.is_file());
        if is_file && OUTPUT_FILES.contains(&name.as_str()) {
            outputs.push(name);
        } else if !(is_file
            && OUTPUT_FILES
                .iter()
                .any(|output| crate::fsio::is_temp_of(&name, output)))
        {
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
    if outputs.is_empty() {
        // Empty, or only temp files a crashed run left (fsio names: never a user's file).
        return Ok(());
    }
    outputs.sort();
    let summary = dir.join(SUMMARY);
    let kind = std::fs::read(&summary)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .and_then(|value| value.get("kind").and_then(Value::as_str).map(str::to_owned));
    match kind.as_deref() {
        Some("history" | "mutate") => Ok(()),
        _ => Err(OutputError::NotAnOutput {
            path: dir.to_path_buf(),
            names: outputs,
        }),
    }
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
    // Every file is serialised before the first one is written: a row that cannot be serialised leaves the
    // previous output as it was.
    let mut files: Vec<(&'static str, Vec<u8>)> = vec![
        (TASKS, jsonl(TASKS, tasks, task_line)?),
        (REJECTED, jsonl(REJECTED, rejected, serde_json::to_string)?),
    ];
    if let Some(records) = records {
        files.push((SWERL, jsonl(SWERL, records, serde_json::to_string)?));
    }
    let mut text = serde_json::to_string_pretty(summary).map_err(|source| OutputError::Json {
        file: SUMMARY,
        source,
    })?;
    text.push('\n');
    // summary.json last: it is what marks the directory as a mine output.
    files.push((SUMMARY, text.into_bytes()));
    for (name, bytes) in &files {
        let path = dir.join(name);
        crate::fsio::write_atomically(&path, bytes).map_err(io("writing", &path))?;
    }
    remove_stale(
        dir,
        &files.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
    )
}

/// Removes the known output files of an earlier run that this run did not write (`swerl.jsonl` after a mutate
/// run) and temp files crashed runs left; called once every new file is in place.
fn remove_stale(dir: &Path, written: &[&str]) -> Result<(), OutputError> {
    let entries = std::fs::read_dir(dir).map_err(io("reading", dir))?;
    for entry in entries {
        let entry = entry.map_err(io("reading", dir))?;
        if !entry.file_type().is_ok_and(|kind| kind.is_file()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = OUTPUT_FILES.iter().any(|output| {
            (name == *output && !written.contains(output)) || crate::fsio::is_temp_of(&name, output)
        });
        if stale {
            let path = entry.path();
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(io("removing the previous output", &path)(error)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Absent → created; empty or a previous output → accepted (old outputs removed); anything else → refused.
    #[test]
    fn the_output_directory_rule() {
        let root = tempfile::tempdir().unwrap();
        let fresh = root.path().join("a/b");
        prepare(&fresh, &[]).unwrap();
        assert!(fresh.is_dir());
        prepare(&fresh, &[]).unwrap();

        previous_output(&fresh, "history");
        let temp = crate::fsio::temp_path(&fresh.join(TASKS));
        std::fs::write(&temp, "").unwrap();
        prepare(&fresh, &[]).unwrap();
        assert_eq!(
            std::fs::read_dir(&fresh).unwrap().count(),
            5,
            "a previous output is accepted and kept until the new one is written"
        );

        std::fs::write(fresh.join("notes.txt"), "mine").unwrap();
        let error = prepare(&fresh, &[]).unwrap_err();
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
        std::fs::remove_file(fresh.join(SUMMARY)).unwrap();
        std::fs::create_dir(fresh.join(SUMMARY)).unwrap();
        assert!(matches!(
            prepare(&fresh, &[]),
            Err(OutputError::Foreign { names, .. }) if names == [SUMMARY]
        ));

        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        let error = prepare(&file, &[]).unwrap_err();
        assert!(
            matches!(error, OutputError::NotADirectory { .. }) && error.is_input(),
            "{error}"
        );
    }

    fn previous_output(dir: &Path, kind: &str) {
        std::fs::write(dir.join(TASKS), "old tasks\n").unwrap();
        std::fs::write(dir.join(REJECTED), "old rejected\n").unwrap();
        std::fs::write(dir.join(SWERL), "old swerl\n").unwrap();
        std::fs::write(
            dir.join(SUMMARY),
            serde_json::json!({ "kind": kind, "kept": 3 }).to_string(),
        )
        .unwrap();
    }

    fn listing(dir: &Path) -> Vec<(String, String)> {
        let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                let name = entry.file_name().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(entry.path()).unwrap())
            })
            .collect();
        files.sort();
        files
    }

    /// D3 (1): `--tasks out/tasks.jsonl --out out` over a previous mutate output: refused before anything is
    /// touched, naming the input, also when the input is given through another path to the same file.
    #[test]
    fn an_out_holding_an_input_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("out");
        std::fs::create_dir(&out).unwrap();
        previous_output(&out, "mutate");
        let before = listing(&out);
        let input = out.join("../out/./tasks.jsonl");
        let error = prepare(&out, &[input.as_path()]).unwrap_err();
        assert!(error.is_input(), "{error}");
        let message = error.to_string();
        assert!(
            message.contains("tasks.jsonl") && message.contains("input"),
            "{message}"
        );
        assert_eq!(listing(&out), before, "nothing removed");

        // An input directory (--repo) inside --out, or --out itself: refused too.
        let repo = out.join("repo");
        std::fs::create_dir(&repo).unwrap();
        for input in [repo.as_path(), out.as_path()] {
            let error = prepare(&out, &[input]).unwrap_err();
            assert!(matches!(error, OutputError::HoldsInput { .. }), "{error}");
        }
        std::fs::remove_dir(&repo).unwrap();
        // An input elsewhere (or one that does not exist: an alias such as `fixtures`) is no objection.
        let elsewhere = root.path().join("rows.jsonl");
        std::fs::write(&elsewhere, "").unwrap();
        prepare(&out, &[elsewhere.as_path(), Path::new("fixtures")]).unwrap();
        assert_eq!(listing(&out), before);
    }

    /// D3 (2): known file names alone do not make a previous output; its `summary.json` must say `kind`
    /// history or mutate.
    #[test]
    fn only_a_summary_with_a_mine_kind_marks_a_previous_output() {
        let root = tempfile::tempdir().unwrap();
        let summaries = [
            None,
            Some("not json".to_string()),
            Some(r#"{"kept": 1}"#.to_string()),
            Some(r#"{"kind": "evaluate"}"#.to_string()),
            Some(r#"["history"]"#.to_string()),
        ];
        for (n, summary) in summaries.iter().enumerate() {
            let dir = root.path().join(format!("refused{n}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join(TASKS), "user rows\n").unwrap();
            if let Some(summary) = summary {
                std::fs::write(dir.join(SUMMARY), summary).unwrap();
            }
            let before = listing(&dir);
            let error = prepare(&dir, &[]).unwrap_err();
            assert!(error.is_input(), "{summary:?}: {error}");
            assert!(error.to_string().contains(SUMMARY), "{error}");
            assert_eq!(listing(&dir), before, "{summary:?}: nothing removed");
        }
        for kind in ["history", "mutate"] {
            let dir = root.path().join(kind);
            std::fs::create_dir(&dir).unwrap();
            previous_output(&dir, kind);
            prepare(&dir, &[]).unwrap();
        }
    }

    /// D3 (3): `prepare` deletes nothing; `write` replaces the files it writes and only then removes the known
    /// files this run did not produce (swerl.jsonl after a mutate run, temp files of a crashed run).
    #[test]
    fn prepare_deletes_nothing_and_write_removes_stale_outputs_last() {
        let dir = tempfile::tempdir().unwrap();
        previous_output(dir.path(), "history");
        let temp = crate::fsio::temp_path(&dir.path().join(TASKS));
        let stale_temp = temp.with_file_name(format!(".{TASKS}.tmp.1"));
        std::fs::write(&stale_temp, "half").unwrap();
        let before = listing(dir.path());
        prepare(dir.path(), &[]).unwrap();
        assert_eq!(listing(dir.path()), before, "prepare removes nothing");

        write(
            dir.path(),
            &[row("local__demo-1")],
            &[],
            None,
            &serde_json::json!({"kind": "mutate"}),
        )
        .unwrap();
        let names: Vec<String> = listing(dir.path())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(
            names,
            [REJECTED, SUMMARY, TASKS],
            "swerl.jsonl and the temp file removed"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(REJECTED)).unwrap(),
            ""
        );
        prepare(dir.path(), &[]).unwrap();
    }

    /// D3 (3): a run that fails while writing leaves the previous output as it was (every file is serialised
    /// before the first one is written).
    #[test]
    fn a_failed_write_leaves_the_previous_output() {
        struct Unserialisable;
        impl Serialize for Unserialisable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        previous_output(dir.path(), "history");
        let before = listing(dir.path());
        let error = write(
            dir.path(),
            &[row("local__demo-1")],
            &[],
            None,
            &Unserialisable,
        )
        .unwrap_err();
        assert!(
            matches!(error, OutputError::Json { file: SUMMARY, .. }),
            "{error}"
        );
        assert_eq!(listing(dir.path()), before);
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
            &serde_json::json!({"kind": "history", "kept": 1}),
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
        prepare(dir.path(), &[]).unwrap();
    }
}
