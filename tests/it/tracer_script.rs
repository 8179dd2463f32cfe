//! `orchestrator/src/trace/tracer.py` (the stdlib-only tracer of `swe-env trace`, piped into task containers) under
//! every Python task images use, 3.6 to 3.12 (pyenv's interpreters on this machine), plus the system Python: one
//! test per interpreter, so nextest runs them side by side. The cases are `tests/python/test_tracer.py` (exact record
//! sequences of loops, recursion, generators, exceptions caught/uncaught, try/finally, class methods,
//! comprehensions, lambdas, decorators; code records; caps; deterministic reprs; literal flags; exit codes).
//! Its pytest-mode case needs pytest, which no host interpreter has: `pytest_mode` runs it in a venv of the system
//! Python with pytest installed; the Docker tests (tests/it/trace.rs) cover it in the fixture images.

use std::path::Path;
use std::process::Command;

use crate::common::python_venv;

/// Test methods in tests/python/test_tracer.py.
const CASES: usize = 28;

/// Runs `tests/python/test_tracer.py [args]` under `python`; returns unittest's report (stderr).
fn run_cases(python: &Path, args: &[&str]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(python)
        .arg("tests/python/test_tracer.py")
        .args(args)
        .current_dir(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success() && stderr.contains("\nOK"),
        "{} failed the tracer's tests:\n{stderr}\n{}",
        python.display(),
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

fn all_cases(python: &Path) {
    let report = run_cases(python, &[]);
    assert!(report.contains(&format!("Ran {CASES} tests")), "{report}");
}

crate::common::per_python!("the tracer", all_cases);

/// The pytest mode on a tiny project (a passing, a failing and a skipped test): outcomes recorded, exit code equal
/// to plain `python -m pytest`. Must not be skipped here.
#[test]
fn pytest_mode() {
    let python = python_venv("tracer-pytest-venv", &["pytest"], "import pytest");
    let report = run_cases(&python, &["-v", "PytestMode"]);
    assert!(report.contains("Ran 1 test"), "{report}");
    assert!(
        !report.contains("skipped"),
        "the pytest case was skipped:\n{report}"
    );
}
