//! A Python client whose stubs are generated from `proto/` by grpcio-tools at test time drives an episode over
//! the server's unix socket (tests/python/client_episode.py). The venv lives under the target directory and is
//! reused; without Python, pip or a reachable package index this test fails loudly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use swe_env::trajectory::{read_trajectory, EpisodeStatus};

use crate::common::assert_success;
use crate::server::{ServerProc, SPANS, TOKEN};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert_success(&output, what);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A venv with grpcio and grpcio-tools, created once under the target directory.
fn grpc_venv() -> PathBuf {
    crate::common::python_venv(
        "grpc-python-venv",
        &["grpcio", "grpcio-tools"],
        "import grpc, grpc_tools.protoc",
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn python_client_with_generated_stubs_drives_an_episode_over_a_unix_socket() {
    let python = tokio::task::spawn_blocking(grpc_venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stubs = dir.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto_root = repo_root().join("proto");
    run(
        Command::new(&python)
            .args(["-m", "grpc_tools.protoc", "-I"])
            .arg(&proto_root)
            .arg(format!("--python_out={}", stubs.display()))
            .arg(format!("--grpc_python_out={}", stubs.display()))
            .arg(proto_root.join("swe_env/v1/env.proto")),
        "generating the Python stubs from proto/",
    );
    assert!(stubs.join("swe_env/v1/env_pb2_grpc.py").exists());

    let socket = dir.path().join("swe-env.sock");
    let server = ServerProc::start(dir.path(), &["--unix-socket", socket.to_str().unwrap()]);
    assert_eq!(server.unix_socket.as_deref(), Some(socket.as_path()));
    let script = repo_root().join("tests/python/client_episode.py");
    let target = format!("unix:{}", socket.display());
    let stdout = tokio::task::spawn_blocking(move || {
        run(
            Command::new(&python)
                .arg(script)
                .args([target.as_str(), TOKEN, SPANS])
                .env("PYTHONPATH", &stubs),
            "the Python client",
        )
    })
    .await
    .unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a summary line")).unwrap();
    assert_eq!(summary["status"], "submitted", "{summary}");
    assert_eq!(summary["submission_has_fix"], true);
    assert_eq!(summary["n_steps"], 8);
    assert_eq!(summary["n_records"], 10);
    let id = summary["episode_id"].as_str().unwrap();
    let trajectory = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    assert_eq!(trajectory.end.unwrap().status, EpisodeStatus::Submitted);
    server.terminate(Duration::from_secs(30)).await;
    assert!(!socket.exists(), "the socket file is removed at shutdown");
}
