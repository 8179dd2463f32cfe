//! Orphan reconciliation: containers of a SIGKILLed owner are found by label and removed.

use std::time::Duration;

use crate::common::{engine, gc_report, removed_ids, spawn_shell};

#[tokio::test(flavor = "multi_thread")]
async fn gc_removes_containers_of_a_killed_owner() {
    let mut children = Vec::new();
    let mut container_ids = Vec::new();
    for _ in 0..3 {
        let (child, id) = spawn_shell(Vec::new());
        container_ids.push(id);
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
    let report = gc_report(&[], Vec::new());
    let removed = removed_ids(&report);
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
