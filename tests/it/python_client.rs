//! The Python client package (`clients/python`), installed with pip from its directory as a user would, tested by
//! its own pytest suite (`clients/python/tests`) against real servers: one on TCP and a unix socket, one admitting a
//! single episode (retry tests), a fleet of three (`--node-id fleet-N`, unequal `--max-episodes`; placement
//! tests, one of which SIGKILLs the third: this test then checks that a survivor's reconcile removed the dead
//! server's containers), and a fourth fleet server that a test SIGTERMs (a 20 s grace: it must drain and exit
//! cleanly). test_fleet.py starts one more server itself, with another token. The venv lives under the target directory and is reused; the package is
//! reinstalled from the current sources on every run. Without Python, pip or a reachable package index this test
//! fails loudly.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{describe, run_ok};
use crate::server::{ServerProc, SPANS, TOKEN};

/// The number of tests in clients/python/tests: every one must run and pass.
const EXPECTED_PASSED: u32 = 41;

/// `--max-episodes` of the three fleet servers (`test_fleet.py`): unequal, so placement by free capacity shows.
const FLEET_MAX: [u32; 3] = [2, 3, 4];

pub(crate) fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../clients/python")
        .canonicalize()
        .expect("clients/python exists")
}

fn client_venv() -> PathBuf {
    client_venv_with("py-client-venv", &[], "")
}

/// A venv `name` with the client installed by `pip install ./clients/python` (isolated build: pip fetches
/// grpcio-tools for the build, which generates the stubs from proto/), pytest and the `extra` packages (`import_extra`
/// imports them), made once; then the package is reinstalled from the current sources (no build isolation: the
/// venv's grpcio-tools builds it), so a test never runs a stale client.
pub(crate) fn client_venv_with(name: &str, extra: &[&str], import_extra: &str) -> PathBuf {
    let dir = client_dir();
    let package = dir.to_str().expect("a UTF-8 path");
    let mut packages = vec![package, "pytest", "grpcio-tools", "setuptools"];
    packages.extend_from_slice(extra);
    let import_check = format!("import swe_env, pytest, grpc_tools, setuptools{import_extra}");
    let python = crate::common::python_venv(name, &packages, &import_check);
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
pub(crate) fn summary_count(stdout: &str, word: &str) -> u32 {
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
    let mut fleet: Vec<ServerProc> = FLEET_MAX
        .iter()
        .enumerate()
        .map(|(i, max)| {
            let node_dir = dir.path().join(format!("fleet-{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            ServerProc::start(
                &node_dir,
                &[
                    "--node-id",
                    &format!("fleet-{i}"),
                    "--max-episodes",
                    &max.to_string(),
                    "--reconcile-interval-secs",
                    "2",
                ],
            )
        })
        .collect();
    // The draining node: test_fleet.py SIGTERMs it with an episode live on it; the drain must wait for that
    // episode's client (grace 20 s, a quiet period as long) instead of ending after the default 2 s quiet.
    let drain_dir = dir.path().join("fleet-drain");
    std::fs::create_dir_all(&drain_dir).unwrap();
    let drain_config = drain_dir.join("serve.yaml");
    std::fs::write(&drain_config, "drain_quiet_secs: 20\n").unwrap();
    let mut drain = ServerProc::start(
        &drain_dir,
        &[
            "--config",
            drain_config.to_str().unwrap(),
            "--node-id",
            "fleet-drain",
            "--max-episodes",
            "3",
            "--shutdown-grace-secs",
            "20",
        ],
    );
    let joined =
        |f: &dyn Fn(&ServerProc) -> String| fleet.iter().map(f).collect::<Vec<_>>().join(",");
    let fleet_addrs = joined(&|s| s.addr.clone());
    let fleet_nodes = joined(&|s| s.node_id.clone());
    let fleet_pids = joined(&|s| s.child.id().to_string());
    let fleet_max = FLEET_MAX.map(|m| m.to_string()).join(",");

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
        .env("SWE_ENV_TRAJECTORIES", server.trajectory_dir())
        .env("SWE_ENV_FLEET", &fleet_addrs)
        .env("SWE_ENV_FLEET_NODES", &fleet_nodes)
        .env("SWE_ENV_FLEET_MAX", &fleet_max)
        .env("SWE_ENV_FLEET_PIDS", &fleet_pids)
        .env("SWE_ENV_DRAIN", &drain.addr)
        .env("SWE_ENV_DRAIN_NODE", &drain.node_id)
        .env("SWE_ENV_DRAIN_PID", drain.child.id().to_string());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client's tests failed: {}\nmain server log:\n{}\nfleet logs:\n{}\ndraining node log:\n{}",
        describe(&output),
        server.log(),
        fleet
            .iter()
            .map(ServerProc::log)
            .collect::<Vec<_>>()
            .join("\n----\n"),
        drain.log()
    );
    assert_eq!(
        summary_count(&stdout, "passed"),
        EXPECTED_PASSED,
        "every client test must run and pass: {stdout}"
    );
    // test_fleet.py SIGTERMed the draining node and closed its episodes: it has exited, cleanly, leaving nothing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = drain.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the draining node did not exit: {}",
            drain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        status.success(),
        "the drained node's exit: {status}\n{}",
        drain.log()
    );
    assert_eq!(crate::server::containers_of(&drain.owner).await, 0);
    // test_fleet.py SIGKILLed the third fleet server: reap it (a zombie's containers are orphans too), then a
    // survivor's reconcile (every 2 s) must remove every container it left.
    let mut victim = fleet.pop().unwrap();
    let status = victim.child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the killed fleet server died of SIGKILL: {status}"
    );
    let filter = format!("label=swe-env.owner={}", victim.owner);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ps = tokio::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .await
            .unwrap();
        assert!(ps.status.success(), "docker ps: {ps:?}");
        let left = String::from_utf8_lossy(&ps.stdout).trim().to_owned();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "containers of the killed server {} are still there after 60 s: {left}\nsurvivor logs:\n{}",
            victim.owner,
            fleet.iter().map(ServerProc::log).collect::<Vec<_>>().join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for node in fleet {
        node.terminate(Duration::from_secs(30)).await;
    }
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
