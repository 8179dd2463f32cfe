//! `orchestrator/src/mine/mutate.py` (the stdlib-only mutation script piped into task containers) under every
//! Python task images use, 3.6 to 3.12 (pyenv's interpreters on this machine), plus the system Python: one test per
//! interpreter, so nextest runs them side by side. The cases are `tests/python/test_mutate.py` (every operator
//! exact, order, dedup, seed, caps, skips, f-strings, `apply` + `git apply` restoring the bytes, bad ids);
//! `tests/python/run_mutate_tests.sh` runs the same set by hand.

use std::path::Path;
use std::process::Command;

fn run_cases(python: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = Command::new(python)
        .arg("tests/python/test_mutate.py")
        .current_dir(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stderr.contains("\nOK"),
        "{} failed the mutation script's tests:\n{stderr}\n{}",
        python.display(),
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(stderr.contains("Ran 13 tests"), "{stderr}");
}

crate::common::per_python!("the mutation script", run_cases);
