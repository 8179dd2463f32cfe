//! Every command that takes tasks reads them the one way (`datasets::load_source`), so `fixtures` works in all of
//! them: also `serve` (flag and config file `tasks:`) and `bench grpc`, which used to write the embedded fixture
//! file into the cache first and refused `fixtures` when the cache could not be written.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use swe_env::server::proto;

use crate::server::{client, TOKEN};

/// Fixture tasks in `images/fixtures/tasks.jsonl`.
const FIXTURE_TASKS: usize = 5;
const SPANS: &str = "swe-env-fixtures__spans-1";

/// A cache directory below a regular file: nothing can be written there, whoever runs the test.
fn unwritable_cache(dir: &Path) -> PathBuf {
    let file = dir.join("a-file");
    std::fs::write(&file, "").unwrap();
    file.join("cache")
}

fn swe_env(cache: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(args)
        .env("SWE_ENV_CACHE", cache)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts `swe-env serve` with `args`, lists its tasks over gRPC, then stops it with SIGTERM.
async fn serve_and_list(dir: &Path, cache: &Path, args: &[&str]) -> Vec<proto::Task> {
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let log_path = dir.join("serve.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["serve", "--listen", "127.0.0.1:0", "--token-file"])
        .arg(&token_file)
        .arg("--trajectory-dir")
        .arg(dir.join("trajectories"))
        .args(args)
        .env("SWE_ENV_CACHE", cache)
        .env_remove("SWE_ENV_TOKEN")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            panic!("serve {args:?} exited ({status}) before listening:\n{log}");
        }
        if let Some(addr) = line.trim().strip_prefix("listening tcp ") {
            break addr.to_owned();
        }
    };
    let tasks = client(&format!("http://{addr}"))
        .await
        .list_tasks(proto::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .tasks;
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks
}

#[tokio::test(flavor = "multi_thread")]
async fn fixtures_is_accepted_by_every_command_that_takes_tasks_even_with_an_unwritable_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = unwritable_cache(dir.path());
    let out = dir.path().join("runs");
    let out = out.to_str().unwrap();
    let loaded = format!("task nope is not in fixtures ({FIXTURE_TASKS} tasks loaded)");
    let unknown = "unknown instance ids (not in fixtures): nope";
    // Each command loads `fixtures`, then stops at a check that needs the loaded tasks (an unknown id), or
    // finishes (images pull of one fixture image, which is local).
    let cases: [(&[&str], i32, &str); 6] = [
        (
            &[
                "run-episode",
                "--tasks",
                "fixtures",
                "--task",
                "nope",
                "--model-url",
                "http://127.0.0.1:9/v1",
                "--model",
                "m",
            ],
            2,
            &loaded,
        ),
        (
            &["shell", "--tasks", "fixtures", "--task", "nope"],
            2,
            &loaded,
        ),
        (
            &[
                "run-benchmark",
                "fixtures",
                "--instance-ids",
                "nope",
                "--output-dir",
                out,
            ],
            2,
            unknown,
        ),
        (
            &[
                "evaluate",
                "--predictions",
                "gold",
                "--dataset",
                "fixtures",
                "--instance-ids",
                "nope",
                "--output-dir",
                out,
            ],
            2,
            unknown,
        ),
        (
            &["images", "pull", "fixtures", "--instance-ids", SPANS],
            0,
            "swe-env/fixture-spans",
        ),
        // The in-process server of `bench grpc` loaded the fixtures: the unknown task is its CreateEpisode's answer.
        (
            &["bench", "grpc", "--tasks", "fixtures", "--task", "nope"],
            3,
            "task nope not found",
        ),
    ];
    for (args, code, needle) in cases {
        let (status, stdout, stderr) = swe_env(&cache, args);
        let all = format!("{stdout}{stderr}");
        assert_eq!(status, Some(code), "{args:?}: {all}");
        assert!(all.contains(needle), "{args:?}: {all}");
        assert!(!all.contains("cannot load tasks"), "{args:?}: {all}");
    }

    // The server, from the flag and from its config file.
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, "tasks: [fixtures]\n").unwrap();
    let config = config.to_str().unwrap();
    for args in [&["--tasks", "fixtures"][..], &["--config", config][..]] {
        let tasks = serve_and_list(dir.path(), &cache, args).await;
        assert_eq!(tasks.len(), FIXTURE_TASKS, "{args:?}");
        assert!(tasks.iter().any(|t| t.instance_id == SPANS), "{args:?}");
        assert!(
            tasks.iter().all(|t| t.dataset == "tasks.jsonl"),
            "{args:?}: {:?}",
            tasks.iter().map(|t| &t.dataset).collect::<Vec<_>>()
        );
    }
}
