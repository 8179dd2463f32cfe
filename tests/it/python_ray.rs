//! `swe_env.ray` (clients/python/src/swe_env/ray.py) tested by its pytest suite (`clients/python/tests_ray`) on a
//! Ray multi-node test cluster on this machine: three logical Ray nodes, one supervised `swe-env serve` each (this
//! build's binary), real Docker. The venv lives under the target directory and is reused (Ray from PyPI, pinned);
//! the client package is reinstalled from the current sources on every run. Without Python, pip or a reachable
//! package index this test fails loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common::{describe, run_ok};
use crate::server::{SPANS, TOKEN};

/// The Ray release the venv installs (the newest 2.x with wheels for this Python; `ray[default]`).
const RAY: &str = "ray[default]==2.60.0";

/// The number of tests in clients/python/tests_ray: every one must run and pass.
const EXPECTED_PASSED: u32 = 5;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/python")
        .canonicalize()
        .expect("clients/python exists")
}

/// A venv with the client (from clients/python, as a user installs it), Ray and pytest, made once; then the
/// client is reinstalled from the current sources so the test never runs a stale client.
fn ray_venv() -> PathBuf {
    let dir = client_dir();
    let package = dir.to_str().expect("a UTF-8 path");
    let python = crate::common::python_venv(
        "python-ray",
        &[package, RAY, "pytest", "grpcio-tools", "setuptools"],
        "import ray, swe_env, pytest, grpc_tools, setuptools",
    );
    run_ok(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--force-reinstall",
            ])
            .arg(&dir),
    );
    python
}

/// The count before `word` in pytest's summary line (`3 passed, 1 failed in 40.1s`), 0 when absent.
fn summary_count(stdout: &str, word: &str) -> u32 {
    let Some(line) = stdout.lines().rev().find(|l| l.contains(" in ")) else {
        return 0;
    };
    line.split(',')
        .filter_map(|part| {
            let mut words = part.split_whitespace().map(|w| w.trim_matches('='));
            let number = words.next()?.parse::<u32>().ok()?;
            (words.next()? == word).then_some(number)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn ray_pool_supervises_one_server_per_node_and_places_episodes_across_them() {
    let python = tokio::task::spawn_blocking(ray_venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(&python);
    command
        .args(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-rfE"])
        .arg(client_dir().join("tests_ray"))
        .arg("--basetemp")
        .arg(dir.path().join("pytest"))
        .current_dir(dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SWE_ENV_BIN", env!("CARGO_BIN_EXE_swe-env"))
        .env("SWE_ENV_FIXTURES", crate::episode::fixtures_file())
        .env("SWE_ENV_TASK", SPANS)
        .env("SWE_ENV_TOKEN", TOKEN)
        // Ray's temp dir (sockets, logs) under this test's directory: nothing is left in /tmp/ray.
        .env("RAY_TMPDIR", dir.path())
        .env("RAY_USAGE_STATS_ENABLED", "0");
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Ray tests failed: {}",
        describe(&output)
    );
    assert_eq!(
        summary_count(&stdout, "passed"),
        EXPECTED_PASSED,
        "every Ray test must run and pass: {stdout}"
    );
    eprintln!(
        "clients/python/tests_ray: {EXPECTED_PASSED} passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
