//! The Python client package (`clients/python`), installed with pip from its directory as a user would, tested by
//! its own pytest suite (`clients/python/tests`) against real servers: one on TCP and a unix socket, one admitting a
//! single episode (retry tests). The venv lives under the target directory and is reused; the package is
//! reinstalled from the current sources on every run. Without Python, pip or a reachable package index this test
//! fails loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{describe, run_ok};
use crate::server::{ServerProc, SPANS, TOKEN};

/// The number of tests in clients/python/tests: every one must run and pass.
const EXPECTED_PASSED: u32 = 22;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/python")
        .canonicalize()
        .expect("clients/python exists")
}

/// A venv with the client installed by `pip install ./clients/python` (isolated build: pip fetches grpcio-tools
/// for the build, which generates the stubs from proto/) and pytest, made once; then the package is reinstalled
/// from the current sources (no build isolation: the venv's grpcio-tools builds it), so the test never runs a
/// stale client.
fn client_venv() -> PathBuf {
    let dir = client_dir();
    let package = dir.to_str().expect("a UTF-8 path");
    let python = crate::common::python_venv(
        "py-client-venv",
        &[package, "pytest", "grpcio-tools", "setuptools"],
        "import swe_env, pytest, grpc_tools, setuptools",
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

/// The count before `word` in pytest's summary line (`18 passed, 2 failed in 40.1s`), 0 when absent.
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
async fn python_client_package_passes_its_tests_against_real_servers() {
    let python = tokio::task::spawn_blocking(client_venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let main_dir = dir.path().join("main");
    let limited_dir = dir.path().join("limited");
    std::fs::create_dir_all(&main_dir).unwrap();
    std::fs::create_dir_all(&limited_dir).unwrap();
    let socket = dir.path().join("swe-env.sock");
    let server = ServerProc::start(&main_dir, &["--unix-socket", socket.to_str().unwrap()]);
    let limited = ServerProc::start(&limited_dir, &["--max-episodes", "1"]);

    let tests = client_dir().join("tests");
    let mut command = Command::new(&python);
    command
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"])
        .arg(&tests)
        .current_dir(dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("SWE_ENV_TCP", &server.addr)
        .env("SWE_ENV_UNIX", &socket)
        .env("SWE_ENV_TOKEN", TOKEN)
        .env("SWE_ENV_LIMITED_TCP", &limited.addr)
        .env("SWE_ENV_TASK", SPANS)
        .env("SWE_ENV_BIN", env!("CARGO_BIN_EXE_swe-env"))
        .env("SWE_ENV_TRAJECTORIES", server.trajectory_dir());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client's tests failed: {}\nmain server log:\n{}",
        describe(&output),
        server.log()
    );
    assert_eq!(
        summary_count(&stdout, "passed"),
        EXPECTED_PASSED,
        "every client test must run and pass: {stdout}"
    );
    server.terminate(Duration::from_secs(30)).await;
    limited.terminate(Duration::from_secs(30)).await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}

#[test]
fn summary_counts_are_read_from_pytests_last_line() {
    let out = "....F.\nFAILED x.py::t - boom\n1 failed, 5 passed, 2 warnings in 3.21s\n";
    assert_eq!(summary_count(out, "passed"), 5);
    assert_eq!(summary_count(out, "failed"), 1);
    assert_eq!(summary_count("20 passed in 41.0s\n", "passed"), 20);
    assert_eq!(summary_count("no tests ran in 0.01s\n", "passed"), 0);
}
