//! Helpers shared by the differential tests: the repository root and the reference (swebench 4.1.0) venv.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root (the grading crate's parent directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the repository")
        .to_path_buf()
}

/// The reference venv's python, built with `grading/reference/setup.sh` when missing (once per test binary; the
/// script itself serialises concurrent builds). Fails loudly when python or pip cannot build it.
pub fn reference_python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = std::env::var_os("SWE_ENV_REF_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/swebench-ref-venv"));
        let python = venv.join("bin/python");
        let ready = python.exists()
            && Command::new(&python)
                .args([
                    "-c",
                    "import swebench.harness.grading, swebench.harness.test_spec.test_spec",
                ])
                .status()
                .is_ok_and(|s| s.success());
        if !ready {
            let setup = repo_root().join("grading/reference/setup.sh");
            let out = Command::new("bash")
                .arg(&setup)
                .env("SWE_ENV_REF_VENV", &venv)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", setup.display()));
            assert!(
                out.status.success(),
                "reference setup failed (python/pip unusable?): {}\n--- stdout\n{}\n--- stderr\n{}",
                setup.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        python
    })
}
