//! Orphan reconciliation: containers of a SIGKILLed owner are found by label and removed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{engine, BASE_IMAGE};

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_containers_of_a_killed_owner() {
    let exe = env!("CARGO_BIN_EXE_swe-env");
    let mut children = Vec::new();
    let mut container_ids = Vec::new();
    for _ in 0..3 {
        let mut child = Command::new(exe)
            .args(["shell", "--image", BASE_IMAGE])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn swe-env shell");
        let mut banner = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        let id = banner
            .split("container ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_owned);
        container_ids.push(id.unwrap_or_else(|| panic!("no container id in banner {banner:?}")));
        children.push(child);
    }
    for child in &mut children {
        child.kill().unwrap(); // SIGKILL: no chance to clean up.
        child.wait().unwrap();
    }
    let engine = engine().await;
    let labelled = engine.labelled_containers().await.unwrap();
    for id in &container_ids {
        assert!(
            labelled.iter().any(|c| &c.id == id),
            "container {id} should still exist after SIGKILL"
        );
    }
    let out = Command::new(exe).args(["gc", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "gc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for id in &container_ids {
        assert!(
            removed.contains(&id.as_str()),
            "gc did not remove {id}: {report}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let labelled = engine.labelled_containers().await.unwrap();
    for id in &container_ids {
        assert!(
            !labelled.iter().any(|c| &c.id == id),
            "container {id} survived gc"
        );
    }
}
