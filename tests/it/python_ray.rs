//! `swe_env.ray` (clients/python/src/swe_env/ray.py) tested by its pytest suite (`clients/python/tests_ray`) on a
//! Ray multi-node test cluster on this machine: three logical Ray nodes, one supervised `swe-env serve` each (this
//! build's binary), real Docker. The venv lives under the target directory and is reused (Ray from PyPI, pinned);
//! the client package is reinstalled from the current sources on every run. Without Python, pip or a reachable
//! package index this test fails loudly.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use crate::common::describe;
use crate::python_client::{client_dir, client_venv_with, summary_count};
use crate::server::{SPANS, TOKEN};

/// The Ray release the venv installs (the newest 2.x with wheels for this Python; `ray[default]`).
const RAY: &str = "ray[default]==2.60.0";

/// The number of tests in clients/python/tests_ray: every one must run and pass.
const EXPECTED_PASSED: u32 = 5;

/// The client's venv with Ray added (the client package reinstalled from the current sources on every run).
fn ray_venv() -> PathBuf {
    client_venv_with("python-ray", &[RAY], ", ray")
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
