//! Differential test of the log parsers against swebench 4.1.0 itself.
//!
//! Every file under `grading/tests/logs/<family>/` is a case: the directory name is the parser
//! family (`pytest`, `pytest_options`, `pytest_v2`, `django`, `sympy`, `matplotlib`, `seaborn`), so
//! adding a log file adds a test case. Each log goes through (1) the family's parser on the whole
//! text and (2) the reference's `get_logs_eval` (markers, failure markers, whole-log fallback,
//! newline translation), on both sides; the maps, `found` flags and "the reference raises"
//! outcomes must be identical.
//!
//! The reference runs in the venv of `grading/reference/setup.sh` (`$SWE_ENV_REF_VENV`, default
//! `<repo>/target/swebench-ref-venv`), which this test creates when it is missing. It fails, never
//! skips, when python or the venv cannot be had.

#![allow(clippy::unwrap_used)] // Tests panic on unexpected failures by design.

mod common;

use common::{reference_python, repo_root};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use swe_env_grading::log_parsers::{evaluate_log, LogParser, StatusMap};

/// (family, path, text) for every corpus file, sorted by path.
fn corpus() -> Vec<(LogParser, PathBuf, String)> {
    let root = repo_root().join("grading/tests/logs");
    let mut cases = Vec::new();
    for family_dir in std::fs::read_dir(&root).unwrap() {
        let family_dir = family_dir.unwrap().path();
        if !family_dir.is_dir() {
            continue;
        }
        let family_name = family_dir
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let family: LogParser = family_name
            .parse()
            .unwrap_or_else(|e| panic!("{}: {e}", family_dir.display()));
        for file in std::fs::read_dir(&family_dir).unwrap() {
            let path = file.unwrap().path();
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is not UTF-8 text: {e}", path.display()));
            cases.push((family, path, text));
        }
    }
    cases.sort_by(|a, b| a.1.cmp(&b.1));
    cases
}

fn run_reference(python: &Path, requests: &[Value]) -> Vec<Value> {
    let script = repo_root().join("grading/reference-parsers/parse_reference.py");
    let mut child = Command::new(python)
        .arg(&script)
        .env("PYTHONUTF8", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
    let mut stdin = child.stdin.take().unwrap();
    let payload: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let writer = std::thread::spawn(move || stdin.write_all(payload.as_bytes()).unwrap());
    let answers: Vec<Value> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| serde_json::from_str(&line.unwrap()).unwrap())
        .collect();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success(), "parse_reference.py failed");
    assert_eq!(answers.len(), requests.len());
    answers
}

fn to_json(map: &StatusMap) -> Value {
    let as_strings: BTreeMap<&str, &str> =
        map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    json!(as_strings)
}

/// The reference map with keys sorted (Python keeps insertion order; only content matters).
fn sorted(value: &Value) -> Value {
    let object = value.as_object().unwrap();
    let as_map: BTreeMap<&String, &Value> = object.iter().collect();
    json!(as_map)
}

#[test]
fn parsers_match_swebench_4_1_0_on_the_log_corpus() {
    let cases = corpus();
    let families: std::collections::BTreeSet<LogParser> = cases.iter().map(|c| c.0).collect();
    assert_eq!(
        families.len(),
        LogParser::ALL.len(),
        "every family needs corpus logs"
    );
    let python = reference_python();
    let requests: Vec<Value> = cases
        .iter()
        .map(|(family, _, text)| json!({"family": family.name(), "log": text}))
        .collect();
    let answers = run_reference(python, &requests);

    let mut compared_tests = 0;
    for ((family, path, text), answer) in cases.iter().zip(&answers) {
        let label = path
            .strip_prefix(repo_root())
            .unwrap()
            .display()
            .to_string();
        // (1) The parser on the whole text.
        match (family.parse(text), answer["parse"].get("map")) {
            (Ok(ours), Some(theirs)) => {
                assert_eq!(
                    to_json(&ours),
                    sorted(theirs),
                    "{label}: parser maps differ"
                );
                compared_tests += ours.len();
            }
            (Err(_), None) => {}
            (ours, _) => panic!("{label}: ours {ours:?}, reference {}", answer["parse"]),
        }
        // (2) get_logs_eval.
        match (evaluate_log(text, *family), answer["eval"].get("map")) {
            (Ok(ours), Some(theirs)) => {
                assert_eq!(
                    to_json(&ours.status_map),
                    sorted(theirs),
                    "{label}: get_logs_eval maps differ"
                );
                assert_eq!(
                    Some(ours.found),
                    answer["eval"]["found"].as_bool(),
                    "{label}: found differs"
                );
            }
            (Err(_), None) => {}
            (ours, _) => panic!("{label}: ours {ours:?}, reference {}", answer["eval"]),
        }
    }
    eprintln!(
        "{} logs, {compared_tests} parsed test results compared",
        cases.len()
    );
}
