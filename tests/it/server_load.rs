//! The service under load (many concurrent clients, back-pressure honoured, no leaked containers) and after a
//! crash (SIGKILL mid-load; the restarted server removes the dead one's containers; trajectories stay readable).

use std::time::{Duration, Instant};

use swe_env::server::proto;
use swe_env::trajectory::read_trajectory;
use tonic::Code;

use crate::server::{
    bash, client, containers_of, create, create_request, create_with_retry, trajectory_records,
    ServerProc, SPANS,
};

const CLIENTS: usize = 64;
const EPISODES_PER_CLIENT: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_clients_run_episodes_without_errors_or_leaks() {
    let dir = tempfile::tempdir().unwrap();
    // Fewer episode slots than clients, so admission back-pressure is part of the run.
    let server = ServerProc::start(
        dir.path(),
        &["--max-episodes", "48", "--max-concurrent-starts", "8"],
    );
    assert_eq!(containers_of(&server.owner).await, 0);
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let url = server.url();
        clients.push(tokio::spawn(async move {
            let mut client = client(&url).await;
            let mut backoffs = 0;
            let mut errors = Vec::new();
            for e in 0..EPISODES_PER_CLIENT {
                let (created, waited) =
                    match create_with_retry(&mut client, create_request(SPANS)).await {
                        Ok(created) => created,
                        Err(status) => {
                            errors.push(format!("create: {status:?}"));
                            continue;
                        }
                    };
                backoffs += waited;
                let id = created.episode_id;
                let run = async {
                    let out = client.step(bash(&id, "true")).await?.into_inner();
                    if out.observation.as_ref().and_then(|o| o.exit_code) != Some(0) {
                        return Err(tonic::Status::internal(format!("`true` failed: {out:?}")));
                    }
                    let marker = format!("client-{c}-episode-{e}");
                    let out = client
                        .step(bash(&id, &format!("echo {marker}")))
                        .await?
                        .into_inner();
                    let text = out.observation.map(|o| o.text).unwrap_or_default();
                    if !text.contains(&marker) {
                        return Err(tonic::Status::internal(format!(
                            "wrong observation: {text}"
                        )));
                    }
                    let closed = client
                        .close_episode(proto::CloseEpisodeRequest {
                            episode_id: id.clone(),
                            final_answer: String::new(),
                        })
                        .await?
                        .into_inner();
                    if closed.episode.map(|e| e.status) != Some("closed".to_owned()) {
                        return Err(tonic::Status::internal("close did not end the episode"));
                    }
                    Ok::<(), tonic::Status>(())
                };
                if let Err(status) = run.await {
                    errors.push(format!("episode {id}: {status:?}"));
                }
            }
            (errors, backoffs)
        }));
    }
    let mut errors = Vec::new();
    let mut backoffs = 0;
    for handle in clients {
        let (client_errors, client_backoffs) =
            tokio::time::timeout(Duration::from_secs(600), handle)
                .await
                .expect("load run bounded in time")
                .unwrap();
        errors.extend(client_errors);
        backoffs += client_backoffs;
    }
    let elapsed = started.elapsed();
    let n_episodes = CLIENTS * EPISODES_PER_CLIENT;
    eprintln!(
        "load: {n_episodes} episodes by {CLIENTS} clients in {elapsed:?} ({:.1} episodes/s), {backoffs} RESOURCE_EXHAUSTED back-offs",
        n_episodes as f64 / elapsed.as_secs_f64()
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(containers_of(&server.owner).await, 0, "leaked containers");
    let files = std::fs::read_dir(server.trajectory_dir()).unwrap().count();
    assert_eq!(files, n_episodes);
    let log = server.terminate(Duration::from_secs(30)).await;
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_then_restart_removes_the_dead_servers_containers() {
    let dir = tempfile::tempdir().unwrap();
    let dead = ServerProc::start(dir.path(), &[]);
    let mut ids = Vec::new();
    let mut in_flight = Vec::new();
    for i in 0..6 {
        let mut client = client(&dead.url()).await;
        let id = create(&mut client, create_request(SPANS)).await.episode_id;
        client
            .step(bash(&id, &format!("echo done-{i}")))
            .await
            .unwrap();
        ids.push(id.clone());
        // Half of them have a step in flight when the server dies.
        if i % 2 == 0 {
            in_flight.push(tokio::spawn(async move {
                client.step(bash(&id, "sleep 60")).await
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dead_owner = dead.owner.clone();
    assert_eq!(containers_of(&dead_owner).await, 6);
    dead.kill9();
    for call in in_flight {
        let status = call.await.unwrap().unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::Unavailable | Code::Unknown | Code::Internal
            ),
            "{status:?}"
        );
    }
    assert_eq!(
        containers_of(&dead_owner).await,
        6,
        "a SIGKILLed server cannot clean up"
    );

    // The restarted server reconciles at start-up: the dead owner's containers are gone before it listens.
    let restarted = ServerProc::start(dir.path(), &[]);
    assert_eq!(containers_of(&dead_owner).await, 0);
    let mut client = client(&restarted.url()).await;
    for (i, id) in ids.iter().enumerate() {
        // Readable from disk (at most a torn last line)…
        let trajectory = read_trajectory(&restarted.trajectory_dir().join(format!("{id}.jsonl")))
            .await
            .unwrap();
        assert!(trajectory.start.is_some());
        // Closed by the restarted server: the episode's process died (issue 11).
        assert_eq!(
            trajectory.end.as_ref().map(|e| e.status),
            Some(swe_env::trajectory::EpisodeStatus::Crashed)
        );
        assert_eq!(trajectory.steps.len(), 1);
        assert!(trajectory.steps[0]
            .observation
            .contains(&format!("done-{i}")));
        // …and through the new server, which never knew the episode.
        let records = trajectory_records(&mut client, id, proto::RecordEncoding::Unspecified).await;
        assert_eq!(records.len(), 3, "start + one step + the crashed end");
        // The old episode is not live on the new server, which says it was one of an earlier run of its node.
        let status = client.step(bash(id, "true")).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status.message().contains("ran on an earlier run of node"),
            "{}",
            status.message()
        );
    }
    restarted.terminate(Duration::from_secs(30)).await;
}
