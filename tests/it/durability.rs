//! `episode.durability` end to end: a real `swe-env serve` per mode, episodes stepping concurrently, then kill -9
//! in the middle of the stream. Every step the server acknowledged is in the trajectory on disk, once and in
//! order, the file reads back (a torn last line tolerated), `episode_start.limits.durability` says how it was
//! written, and a restarted server closes it `crashed` and removes the orphans.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use swe_env::trajectory::{read_trajectory, EpisodeStatus};

use crate::server::{bash, client, containers_of, create, create_request, ServerProc, SPANS};

const EPISODES: usize = 4;

fn start(dir: &std::path::Path, durability: &str) -> ServerProc {
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!("episode:\n  durability: {durability}\n  anti_leak: off\n"),
    )
    .unwrap();
    ServerProc::start(dir, &["--config", config.to_str().unwrap()])
}

/// Starts a server in `durability` mode, steps `EPISODES` episodes concurrently until each has acknowledged at
/// least 5 steps, kills the server with SIGKILL mid-stream and checks the trajectories and the clean-up.
async fn acknowledged_steps_survive_kill9(durability: &'static str) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), durability);
    let url = server.url();
    let mut ids = Vec::new();
    {
        let mut c = client(&url).await;
        for _ in 0..EPISODES {
            ids.push(create(&mut c, create_request(SPANS)).await.episode_id);
        }
    }
    let acked: Arc<Vec<AtomicU32>> = Arc::new((0..EPISODES).map(|_| AtomicU32::new(0)).collect());
    let mut steppers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let (id, url, acked) = (id.clone(), url.clone(), Arc::clone(&acked));
        steppers.push(tokio::spawn(async move {
            let mut c = client(&url).await;
            for n in 0u32.. {
                // Ends when the server dies under us.
                if c.step(bash(&id, &format!("echo {n}"))).await.is_err() {
                    return;
                }
                acked[i].store(n + 1, Ordering::SeqCst);
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < 5) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "episodes do not step; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let owner = server.owner.clone();
    let trajectories = server.trajectory_dir();
    // Mid-stream: every episode has a step in flight.
    server.kill9();
    for stepper in steppers {
        stepper.await.unwrap();
    }
    // Replies that were on the wire at the kill count as acknowledged too.
    let acked_at_kill: Vec<u32> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();

    for (i, id) in ids.iter().enumerate() {
        let path = trajectories.join(format!("{id}.jsonl"));
        let read = read_trajectory(&path)
            .await
            .unwrap_or_else(|e| panic!("{durability}: unreadable after kill -9: {e}"));
        let start = read.start.expect("episode_start");
        assert_eq!(start.limits["durability"], durability, "{durability}");
        let idxs: Vec<u32> = read.steps.iter().map(|s| s.step_idx).collect();
        assert_eq!(
            idxs,
            (0..idxs.len() as u32).collect::<Vec<_>>(),
            "{durability}: a step lost, duplicated or out of order"
        );
        // Acknowledged steps are all there; at most the one in flight beyond them.
        let n = idxs.len() as u32;
        assert!(
            n >= acked_at_kill[i] && n <= acked_at_kill[i] + 1,
            "{durability}: episode {i}: {n} steps on disk, {} acknowledged",
            acked_at_kill[i]
        );
        for (k, step) in read.steps.iter().enumerate() {
            assert!(
                step.raw_action.contains(&format!("echo {k}\n")),
                "{}",
                step.raw_action
            );
        }
    }

    // A restarted server removes the orphans and closes the trajectories `crashed`, appending only.
    let restarted = start(dir.path(), durability);
    assert_eq!(containers_of(&owner).await, 0, "{}", restarted.log());
    for id in &ids {
        let read = read_trajectory(&trajectories.join(format!("{id}.jsonl")))
            .await
            .unwrap();
        assert_eq!(read.end.expect("closed").status, EpisodeStatus::Crashed);
    }
    restarted.terminate(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_stream_keeps_every_acknowledged_step_in_batched_mode() {
    acknowledged_steps_survive_kill9("batched").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_mid_stream_keeps_every_acknowledged_step_in_os_mode() {
    acknowledged_steps_survive_kill9("os").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_step_is_the_default_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let mut c = client(&server.url()).await;
    let id = create(&mut c, create_request(SPANS)).await.episode_id;
    c.step(bash(&id, "echo hi")).await.unwrap();
    let read = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    assert_eq!(read.start.unwrap().limits["durability"], "per-step");
    assert_eq!(read.steps.len(), 1);
    crate::server::close(&mut c, &id).await;
    server.terminate(Duration::from_secs(60)).await;
}
