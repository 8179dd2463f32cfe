//! Crash, restart and shutdown of `swe-env serve` (issue 11): a SIGKILLed server restarted while it is still a zombie,
//! `gc --dry-run`, the SIGTERM drain with a bystander, a container removed from outside, and mass close.

use std::process::Command;
use std::time::{Duration, Instant};

use swe_env::server::proto;
use swe_env::trajectory::{read_trajectory, EpisodeStatus};
use tonic::Code;

use crate::common::{assert_success, engine, gc_report, run_ok};
use crate::server::{
    bash, client, close, containers_of, create, create_request, start_with_client,
    trajectory_records, Client, ServerProc, SPANS,
};

/// The state letter of `/proc/PID/stat` (`Z` for a zombie), `None` once the pid is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Container ids of `episode_id`.
async fn containers_of_episode(
    engine: &swe_env_sandbox::DockerEngine,
    episode_id: &str,
) -> Vec<String> {
    engine
        .labelled_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.episode == episode_id)
        .map(|c| c.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_then_restart_while_the_old_server_is_a_zombie_removes_orphans_and_closes_trajectories_crashed(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut dead = ServerProc::start(dir.path(), &[]);
    let mut client_a = client(&dead.url()).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = create(&mut client_a, create_request(SPANS))
            .await
            .episode_id;
        client_a
            .step(bash(&id, &format!("echo step-{i}")))
            .await
            .unwrap();
        ids.push(id);
    }
    let dead_owner = dead.owner.clone();
    assert_eq!(containers_of(&dead_owner).await, 3);

    // SIGKILL without reaping: the old server stays a zombie (its pid and start time still in /proc).
    let pid = dead.child.id();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let killed_at = Instant::now();
    while proc_state(pid) != Some('Z') {
        assert!(killed_at.elapsed() < Duration::from_secs(5), "no zombie");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // `gc --dry-run` says why each would go, and removes nothing.
    let report = gc_report(&["--dry-run"], Vec::new());
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["removed"].as_array().unwrap().len(), 0, "{report}");
    let mine: Vec<&serde_json::Value> = report["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["owner"] == dead_owner.as_str())
        .collect();
    assert_eq!(mine.len(), 3, "{report}");
    for decision in &mine {
        assert_eq!(decision["action"], "would_remove", "{decision}");
        assert_eq!(decision["reason"]["kind"], "owner_dead", "{decision}");
        assert_eq!(decision["reason"]["because"], "zombie", "{decision}");
        assert!(
            decision["reason_text"]
                .as_str()
                .unwrap()
                .contains("owner dead: zombie"),
            "{decision}"
        );
    }
    assert_eq!(containers_of(&dead_owner).await, 3, "a dry run removed");
    let text = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["gc", "--dry-run"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("would remove"), "{text}");
    assert!(text.contains("nothing removed"), "{text}");

    // Restart within ~1 s of the kill, old server still a zombie: orphans go without a manual gc.
    let restarted = ServerProc::start(dir.path(), &[]);
    assert!(
        killed_at.elapsed() < Duration::from_secs(3),
        "restart took {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        proc_state(pid),
        Some('Z'),
        "the old server must still be a zombie"
    );
    assert_eq!(containers_of(&dead_owner).await, 0, "{}", restarted.log());
    for id in &ids {
        let trajectory = read_trajectory(&restarted.trajectory_dir().join(format!("{id}.jsonl")))
            .await
            .unwrap();
        let end = trajectory.end.expect("closed on restart");
        assert_eq!(end.status, EpisodeStatus::Crashed, "{id}");
        assert_eq!(end.n_steps, 1);
        assert!(end.detail.unwrap().contains("zombie"));
    }
    // Through the API too: GetTrajectory of an earlier run's episode ends `crashed`.
    let mut client_b = client(&restarted.url()).await;
    let last = trajectory_records(&mut client_b, &ids[0], proto::RecordEncoding::Unspecified)
        .await
        .pop();
    assert!(format!("{last:?}").contains("crashed"), "{last:?}");
    dead.child.wait().unwrap();
    restarted.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_servers_trajectories_are_never_closed_by_another_server_sharing_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let first = ServerProc::start(dir.path(), &["--shutdown-grace-secs", "1"]);
    let mut client_a = client(&first.url()).await;
    let id = create(&mut client_a, create_request(SPANS))
        .await
        .episode_id;
    let second = ServerProc::start(dir.path(), &["--reconcile-interval-secs", "1"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let trajectory = read_trajectory(&first.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    assert!(
        trajectory.end.is_none(),
        "closed a live server's trajectory"
    );
    client_a.step(bash(&id, "echo still-mine")).await.unwrap();
    assert_eq!(containers_of(&first.owner).await, 1);
    second.terminate(Duration::from_secs(30)).await;
    first.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drain_refuses_new_work_but_live_episodes_step_and_close_during_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &["--shutdown-grace-secs", "6"]);
    let url = server.url();
    let mut client = client(&url).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(create(&mut client, create_request(SPANS)).await.episode_id);
    }
    let owner = server.owner.clone();
    let trajectories = server.trajectory_dir();
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(crate::server::channel(&url).await);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();
    let not_serving = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "swe_env.v1.EnvService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == not_serving {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "health still SERVING"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New work: refused with a retry hint.
    let refused = client
        .create_episode(create_request(SPANS))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("shutting down"), "{refused:?}");
    assert!(refused
        .metadata()
        .get(swe_env::server::RETRY_AFTER_MS)
        .is_some());
    let refused = client
        .grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // The bystander keeps stepping, closes one episode and reads its trajectory during the grace.
    let reply = client
        .step(bash(&ids[0], "echo during-grace"))
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{reply:?}").contains("during-grace"), "{reply:?}");
    let closed = close(&mut client, &ids[1]).await;
    assert!(closed.episode.is_some());
    let records =
        trajectory_records(&mut client, &ids[0], proto::RecordEncoding::Unspecified).await;
    assert_eq!(records.len(), 2, "episode_start + the step");
    // A client still working keeps the server up past the quiet period (2 s), within the grace (6 s).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        client.step(bash(&ids[0], "echo still")).await.unwrap();
    }
    assert!(sent.elapsed() > Duration::from_secs(2));
    let log = server.terminate(Duration::from_secs(30)).await;
    assert_eq!(containers_of(&owner).await, 0, "{log}");
    let end = |id: &str| {
        let path = trajectories.join(format!("{id}.jsonl"));
        async move { read_trajectory(&path).await.unwrap().end.unwrap().status }
    };
    assert_eq!(end(&ids[0]).await, EpisodeStatus::Cancelled);
    assert_eq!(end(&ids[1]).await, EpisodeStatus::Closed);
}

/// A server, a client, and an episode that has run one step; with the episode's id and its container's id.
async fn episode_with_container() -> (tempfile::TempDir, ServerProc, Client, String, String) {
    let (dir, server, mut client) = start_with_client(&[]).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;
    client.step(bash(&id, "echo before")).await.unwrap();
    let container = containers_of_episode(&engine().await, &id)
        .await
        .pop()
        .unwrap();
    (dir, server, client, id, container)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_removed_from_outside_ends_the_episode_with_a_clear_error() {
    let (_dir, server, mut client, id, container) = episode_with_container().await;
    run_ok(Command::new("docker").args(["rm", "-f", &container]));
    let status = client.step(bash(&id, "echo after")).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::FailedPrecondition | Code::Unavailable),
        "{status:?}"
    );
    assert!(
        status.message().contains("was removed outside swe-env")
            && status.message().contains("the episode is over"),
        "{status:?}"
    );
    let trajectory = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    let end = trajectory.end.unwrap();
    assert_eq!(end.status, EpisodeStatus::SandboxError);
    assert!(
        end.detail.unwrap().contains("was removed outside swe-env"),
        "detail names the cause"
    );
    // The server stays healthy: a new episode works.
    let other = create(&mut client, create_request(SPANS)).await.episode_id;
    client.step(bash(&other, "echo fine")).await.unwrap();
    server.terminate(Duration::from_secs(30)).await;
}

/// Found by an independent tester: a `docker rm -f` that lands while a command runs answered INTERNAL (the shell
/// failed and its restart hit "container is marked for removal"). It is the same clear FAILED_PRECONDITION as a
/// removal between steps.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_removed_during_a_running_step_ends_the_episode_with_a_clear_error() {
    let (_dir, server, mut client, id, container) = episode_with_container().await;
    let remover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        Command::new("docker")
            .args(["rm", "-f", &container])
            .output()
            .unwrap()
    });
    let status = client
        .step(bash(&id, "sleep 20; echo never"))
        .await
        .unwrap_err();
    let removed = remover.join().unwrap();
    assert_success(&removed, "docker rm -f during the step");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("was removed outside swe-env"),
        "{status:?}"
    );
    let trajectory = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    assert_eq!(trajectory.end.unwrap().status, EpisodeStatus::SandboxError);
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn mass_close_answers_ok_only_after_docker_confirms_every_removal() {
    const N: usize = 128;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(
        dir.path(),
        &["--max-episodes", "256", "--max-concurrent-starts", "8"],
    );
    let url = server.url();
    let creates = (0..N).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = client(&url).await;
            crate::server::create_with_retry(&mut client, create_request(SPANS))
                .await
                .unwrap()
                .0
                .episode_id
        })
    });
    let mut ids = Vec::new();
    for create in creates {
        ids.push(create.await.unwrap());
    }
    assert_eq!(containers_of(&server.owner).await, N);
    let engine = engine().await;
    let closes = ids.iter().cloned().map(|id| {
        let url = url.clone();
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut client = client(&url).await;
            let reply = client
                .close_episode(proto::CloseEpisodeRequest {
                    episode_id: id.clone(),
                    ..Default::default()
                })
                .await;
            // OK means gone: the engine no longer knows the episode's container.
            let left = containers_of_episode(&engine, &id).await;
            (id, reply.map(|_| ()), left)
        })
    });
    for close in closes {
        let (id, reply, left) = close.await.unwrap();
        reply.unwrap_or_else(|status| panic!("close {id}: {status:?}"));
        assert!(
            left.is_empty(),
            "close of {id} answered OK before removal: {left:?}"
        );
    }
    assert_eq!(containers_of(&server.owner).await, 0);
    let log = server.terminate(Duration::from_secs(60)).await;
    assert!(!log.contains("panicked"), "{log}");
}
