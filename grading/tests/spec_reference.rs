//! Differential tests against the reference implementation (swebench 4.1.0, installed in a venv by
//! `grading/reference/setup.sh`): for all 500 SWE-bench Verified rows, our eval script, test command, directives,
//! reset files, test lists and parser family must equal the reference's; the spec table must equal the
//! reference's `MAP_REPO_VERSION_TO_SPECS` for every version of the 12 repositories; a parquet copy of the dataset
//! written by pyarrow must load to the same rows as the JSONL.
//!
//! Intended differences are normalised away before comparing, and only those (see grading/reference/README.md):
//! the recorded test exit code (two lines around the end marker) is removed from our default script; the script
//! built with `record_test_exit_code: false` is compared byte for byte with no normalisation at all.
//!
//! If the venv is missing, the test runs setup.sh itself; if python or pip cannot make it, the test fails.

mod common;

use common::{reference_python, repo_root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;
use swe_env_grading::dataset::{load_dataset_file, Instance};
use swe_env_grading::eval_script::{
    make_test_spec, EvalScriptConfig, END_TEST_OUTPUT, TEST_EXIT_CODE_MARKER, TEST_EXIT_CODE_VAR,
};
use swe_env_grading::specs::{
    python_repo_spec, python_repo_versions, ParserFamily, VERIFIED_REPOS,
};

fn verified_path() -> PathBuf {
    repo_root().join("../shared/datasets/swe-bench-verified.jsonl")
}

/// Runs grading/reference/dump_reference.py and parses its JSON.
fn dump_reference(dataset: &Path, patches: &[&str], repos: &[&str]) -> Value {
    static N_CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = N_CALLS.fetch_add(1, Ordering::SeqCst);
    let tmp = std::env::temp_dir().join(format!(
        "swe-env-ref-patches-{}-{call}.json",
        std::process::id()
    ));
    let payload = serde_json::to_string(patches).expect("patches serialise");
    std::fs::write(&tmp, payload).expect("write the patches file");
    let script = repo_root().join("grading/reference/dump_reference.py");
    let out = Command::new(reference_python())
        .arg(&script)
        .arg(dataset)
        .arg(&tmp)
        .args(repos)
        .output()
        .expect("run the reference python");
    let _ = std::fs::remove_file(&tmp);
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("reference output is json");
    assert_eq!(doc["swebench_version"], "4.1.0");
    doc
}

/// A readable diff of two scripts: the first differing line with a few lines of context on each side.
fn line_diff(ours: &str, reference: &str) -> String {
    let a: Vec<&str> = ours.split('\n').collect();
    let b: Vec<&str> = reference.split('\n').collect();
    let first = a
        .iter()
        .zip(&b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let lo = first.saturating_sub(3);
    let mut out = format!(
        "first difference at line {} (ours {} lines, reference {} lines)\n",
        first + 1,
        a.len(),
        b.len()
    );
    for i in lo..(first + 4) {
        let (x, y) = (a.get(i), b.get(i));
        if x == y {
            if let Some(x) = x {
                out.push_str(&format!("    {x}\n"));
            }
        } else {
            if let Some(y) = y {
                out.push_str(&format!("  - {y}   (reference)\n"));
            }
            if let Some(x) = x {
                out.push_str(&format!("  + {x}   (ours)\n"));
            }
        }
    }
    out
}

/// Removes exactly our recorded-exit-code lines: the capture right before the end marker and the echo right
/// after it. Anything else differing still fails.
fn strip_recorded_exit_code(script: &str) -> String {
    let capture = format!("{TEST_EXIT_CODE_VAR}=$?");
    let echo = format!("echo \"{TEST_EXIT_CODE_MARKER}: ${TEST_EXIT_CODE_VAR}\"");
    let end = format!(": '{END_TEST_OUTPUT}'");
    let lines: Vec<&str> = script.split('\n').collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let before_end = *line == capture && lines.get(i + 1) == Some(&end.as_str());
        let after_end = *line == echo && i > 0 && lines[i - 1] == end;
        if !(before_end || after_end) {
            out.push(*line);
        }
    }
    out.join("\n")
}

fn load_verified() -> Vec<Instance> {
    let loaded = load_dataset_file(&verified_path()).expect("load verified");
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    loaded.instances
}

#[test]
fn eval_scripts_match_the_reference_for_all_verified_rows() {
    let instances = load_verified();
    let reference = dump_reference(&verified_path(), &[], &[]);
    let rows = reference["instances"].as_array().expect("instances");
    assert_eq!(rows.len(), 500);
    assert_eq!(instances.len(), rows.len());

    let exact = EvalScriptConfig {
        record_test_exit_code: false,
        ..EvalScriptConfig::default()
    };
    let mut mismatches = Vec::new();
    for (inst, want) in instances.iter().zip(rows) {
        assert_eq!(want["instance_id"], inst.instance_id.as_str(), "row order");
        let id = &inst.instance_id;
        let ours_default = make_test_spec(inst, &EvalScriptConfig::default()).unwrap();
        let ours_exact = make_test_spec(inst, &exact).unwrap();
        let want_script = want["eval_script"].as_str().unwrap();

        let mut problems = Vec::new();
        if ours_exact.eval_script != want_script {
            problems.push(format!(
                "eval_script (no extensions):\n{}",
                line_diff(&ours_exact.eval_script, want_script)
            ));
        }
        let normalised = strip_recorded_exit_code(&ours_default.eval_script);
        if normalised != want_script {
            problems.push(format!(
                "eval_script (default, exit code stripped):\n{}",
                line_diff(&normalised, want_script)
            ));
        }
        if ours_default.eval_script == want_script {
            problems.push("default script lacks the recorded exit code".to_string());
        }
        let str_list = |v: &Value| -> Vec<String> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        let checks: [(&str, Vec<String>, Vec<String>); 4] = [
            (
                "directives",
                ours_exact.directives.clone(),
                str_list(&want["directives"]),
            ),
            (
                "test_files",
                ours_exact.test_files.clone(),
                str_list(&want["test_files"]),
            ),
            (
                "FAIL_TO_PASS",
                ours_exact.fail_to_pass.clone(),
                str_list(&want["FAIL_TO_PASS"]),
            ),
            (
                "PASS_TO_PASS",
                ours_exact.pass_to_pass.clone(),
                str_list(&want["PASS_TO_PASS"]),
            ),
        ];
        for (name, ours, theirs) in checks {
            if ours != theirs {
                problems.push(format!("{name}: ours {ours:?}\n  reference {theirs:?}"));
            }
        }
        if ours_exact.test_command != want["test_command"].as_str().unwrap() {
            problems.push(format!(
                "test_command: ours {:?} reference {}",
                ours_exact.test_command, want["test_command"]
            ));
        }
        let want_parser = ParserFamily::parse_lenient(want["parser"].as_str().unwrap()).unwrap();
        if ours_exact.parser != want_parser {
            problems.push(format!(
                "parser: ours {} reference {want_parser}",
                ours_exact.parser
            ));
        }
        if !problems.is_empty() {
            mismatches.push(format!("== {id}\n{}", problems.join("\n")));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} instances differ from swebench 4.1.0; first ones:\n{}",
        mismatches.len(),
        rows.len(),
        mismatches
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn spec_table_matches_the_reference_for_every_version() {
    let reference = dump_reference(&empty_dataset(), &[], &VERIFIED_REPOS);
    let known_keys = [
        "python",
        "packages",
        "install",
        "pre_install",
        "eval_commands",
        "pip_packages",
        "test_cmd",
        "no_use_env",
        "execute_test_as_nonroot",
        "nano_cpus",
    ];
    let mut problems = Vec::new();
    for repo in VERIFIED_REPOS {
        let want_parser =
            ParserFamily::parse_lenient(reference["parsers"][repo].as_str().unwrap()).unwrap();
        if ParserFamily::for_repo(repo) != Some(want_parser) {
            problems.push(format!(
                "{repo}: parser ours {:?} reference {want_parser}",
                ParserFamily::for_repo(repo)
            ));
        }
        let table = reference["specs"][repo].as_object().unwrap();
        let mut ours_versions: Vec<&str> = python_repo_versions(repo).unwrap().to_vec();
        let mut want_versions: Vec<&str> = table.keys().map(String::as_str).collect();
        ours_versions.sort_unstable();
        want_versions.sort_unstable();
        if ours_versions != want_versions {
            problems.push(format!(
                "{repo}: versions ours {ours_versions:?} reference {want_versions:?}"
            ));
        }
        for (version, want) in table {
            let Some(ours) = python_repo_spec(repo, version) else {
                continue;
            };
            let want = want.as_object().unwrap();
            for key in want.keys() {
                if !known_keys.contains(&key.as_str()) {
                    problems.push(format!(
                        "{repo} {version}: reference key {key} not modelled"
                    ));
                }
            }
            let ours_json: BTreeMap<&str, Value> = BTreeMap::from([
                ("python", Value::from(ours.python.clone())),
                (
                    "packages",
                    ours.packages.clone().map_or(Value::Null, Value::from),
                ),
                (
                    "install",
                    ours.install.clone().map_or(Value::Null, Value::from),
                ),
                ("pre_install", Value::from(ours.pre_install.clone())),
                ("eval_commands", Value::from(ours.eval_commands.clone())),
                ("pip_packages", Value::from(ours.pip_packages.clone())),
                ("test_cmd", Value::from(ours.test_cmd.clone())),
                ("no_use_env", Value::from(ours.no_use_env)),
                (
                    "execute_test_as_nonroot",
                    Value::from(ours.execute_test_as_nonroot),
                ),
                ("nano_cpus", ours.nano_cpus.map_or(Value::Null, Value::from)),
            ]);
            let empty_list = Value::Array(Vec::new());
            for (key, ours_value) in ours_json {
                let want_value = match (want.get(key), key) {
                    (Some(v), _) => v.clone(),
                    (None, "pre_install" | "eval_commands" | "pip_packages") => empty_list.clone(),
                    (None, "no_use_env" | "execute_test_as_nonroot") => Value::Bool(false),
                    (None, _) => Value::Null,
                };
                if ours_value != want_value {
                    problems.push(format!(
                        "{repo} {version} {key}: ours {ours_value} reference {want_value}"
                    ));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

fn empty_dataset() -> PathBuf {
    let path = std::env::temp_dir().join(format!("swe-env-empty-{}.jsonl", std::process::id()));
    std::fs::write(&path, "").expect("write an empty dataset");
    path
}

#[test]
fn modified_files_match_unidiff_on_every_verified_patch_and_edge_cases() {
    let instances = load_verified();
    let mut patches: Vec<&str> = instances.iter().map(|i| i.test_patch.as_str()).collect();
    patches.extend(instances.iter().map(|i| i.patch.as_str()));
    let edge_cases = [
        "diff --git a/t/old.py b/t/new.py\nsimilarity index 90%\nrename from t/old.py\nrename to t/new.py\n--- a/t/old.py\n+++ b/t/new.py\n@@ -1 +1 @@\n-x\n+y\n",
        "From abc Mon Sep 17 00:00:00 2001\nSubject: x\n\n---\n t.py | 1 +\n\ndiff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1 +1 @@\n-x\n+y\n-- \n2.30.0\n",
        "--- a/one.py\n+++ b/one.py\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n--- a/two.py\n+++ b/two.py\n@@ -3 +3 @@\n-d\n+e\n",
        "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1,2 +1,2 @@\n a\n-b\n\\ No newline at end of file\n+c\n\\ No newline at end of file\n",
        "diff --git \"a/t/sp ace.py\" \"b/t/sp ace.py\"\n--- \"a/t/sp ace.py\"\n+++ \"b/t/sp ace.py\"\n@@ -1 +1 @@\n-x\n+y\n",
        "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1,3 +1,3 @@\n a\n\n-b\n+c\n",
    ];
    patches.extend(edge_cases);
    let reference = dump_reference(&empty_dataset(), &patches, &[]);
    let want = reference["modified_files"].as_array().unwrap();
    assert_eq!(want.len(), patches.len());
    let mut problems = Vec::new();
    for (patch, want) in patches.iter().zip(want) {
        let want: Vec<String> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let ours = swe_env_grading::directives::modified_files(patch)
            .unwrap_or_else(|e| vec![format!("ERROR {e}")]);
        if ours != want {
            problems.push(format!(
                "ours {ours:?} reference {want:?} for patch starting {:?}",
                &patch[..patch.len().min(120)]
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn parquet_written_by_pyarrow_loads_like_the_jsonl() {
    let jsonl = load_verified();
    let out = std::env::temp_dir().join(format!("swe-env-verified-{}.parquet", std::process::id()));
    // string columns as large_string for half of them, as HF exports sometimes do; FAIL_TO_PASS as list<string>
    let program = r#"
import json, sys
import pyarrow as pa, pyarrow.parquet as pq
rows = [json.loads(l) for l in open(sys.argv[1], encoding="utf-8") if l.strip()]
cols = list(rows[0].keys())
arrays, fields = [], []
for i, c in enumerate(cols):
    values = [r.get(c) for r in rows]
    if c == "FAIL_TO_PASS":
        arrays.append(pa.array([json.loads(v) for v in values], type=pa.list_(pa.string())))
    else:
        arrays.append(pa.array(values, type=pa.large_string() if i % 2 else pa.string()))
    fields.append(c)
pq.write_table(pa.Table.from_arrays(arrays, names=fields), sys.argv[2])
"#;
    let status = Command::new(reference_python())
        .args(["-c", program])
        .arg(verified_path())
        .arg(&out)
        .output()
        .expect("run pyarrow");
    assert!(
        status.status.success(),
        "pyarrow failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let loaded = load_dataset_file(&out).expect("load parquet");
    let _ = std::fs::remove_file(&out);
    assert!(
        loaded.errors.is_empty(),
        "{:?}",
        &loaded.errors[..loaded.errors.len().min(3)]
    );
    assert_eq!(loaded.instances.len(), 500);
    for (a, b) in loaded.instances.iter().zip(&jsonl) {
        assert_eq!(a, b, "{}", a.instance_id);
    }
}
