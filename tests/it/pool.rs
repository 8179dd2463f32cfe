//! Warm pools through a real `swe-env serve`: Prewarm, episodes from pooled containers (latency, identity, never
//! reused), equivalence with cold episodes, limits applied at take time, clean-up after kill -9 and SIGTERM, the
//! automatic policy and the Prewarm maximum.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use swe_env::server::proto;
use swe_env::trajectory::read_trajectory;
use tonic::Code;

use crate::common::engine;
use crate::server::{bash, client, close, create, create_request, Client, ServerProc, SPANS};

/// Starts a server whose config file is `yaml` (plus the test flags).
fn start_with_config(dir: &Path, yaml: &str) -> ServerProc {
    let path = dir.join("serve.yaml");
    std::fs::write(&path, yaml).unwrap();
    ServerProc::start(dir, &["--config", path.to_str().unwrap()])
}

/// `(container id, episode label)` of every container of `server`.
async fn containers(server: &ServerProc) -> Vec<(String, String)> {
    engine()
        .await
        .labelled_containers()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| {
            c.owner.as_ref().map(|o| o.to_label()).as_deref() == Some(server.owner.as_str())
        })
        .map(|c| (c.id, c.episode))
        .collect()
}

/// Ids of the pooled containers of `server` not taken yet: labelled with an episode id that has no trajectory.
async fn pooled_containers(server: &ServerProc) -> Vec<String> {
    containers(server)
        .await
        .into_iter()
        .filter(|(_, episode)| {
            !server
                .trajectory_dir()
                .join(format!("{episode}.jsonl"))
                .exists()
        })
        .map(|(id, _)| id)
        .collect()
}

fn prewarm_request(task_id: &str, count: u32, wait: bool) -> proto::PrewarmRequest {
    proto::PrewarmRequest {
        task: Some(proto::prewarm_request::Task::TaskId(task_id.to_owned())),
        count,
        wait,
        ..Default::default()
    }
}

/// The output of a bash step.
async fn run(client: &mut Client, episode_id: &str, command: &str) -> String {
    let reply = client
        .step(bash(episode_id, command))
        .await
        .unwrap()
        .into_inner();
    reply.observation.unwrap().text
}

/// The container id prefix (the hostname) an episode runs in.
async fn container_of(client: &mut Client, episode_id: &str) -> String {
    let text = run(client, episode_id, "cat /etc/hostname").await;
    let start = text.find("<output>").map_or(0, |i| i + "<output>".len());
    text[start..]
        .trim_start()
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

async fn timed_create(
    client: &mut Client,
    request: proto::CreateEpisodeRequest,
) -> (proto::CreateEpisodeResponse, Duration) {
    let started = Instant::now();
    let reply = create(client, request).await;
    (reply, started.elapsed())
}

fn p50(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

const NO_AUTO: &str = "pool:\n  auto:\n    enabled: false\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarmed_episodes_start_from_the_pool_in_milliseconds_and_are_never_handed_out_twice() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(dir.path(), NO_AUTO);
    let mut client = client(&server.url()).await;

    let warmed = client
        .prewarm(prewarm_request(SPANS, 4, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warmed.ready, 4, "{warmed:?}");
    assert_eq!(warmed.pool_key.len(), 16);
    let pooled: HashSet<String> = pooled_containers(&server).await.into_iter().collect();
    assert_eq!(pooled.len(), 4);
    let labels: std::collections::HashMap<String, String> =
        containers(&server).await.into_iter().collect();

    // Interleaved: warm, cold, warm, cold … (the cold ones first drain nothing: the pool has 4 and auto is off).
    let (mut warm_times, mut cold_times) = (Vec::new(), Vec::new());
    let mut warm_ids = Vec::new();
    let mut used_containers = HashSet::new();
    let mut episodes = Vec::new();
    for _ in 0..4 {
        let (reply, took) = timed_create(&mut client, create_request(SPANS)).await;
        assert!(reply.warm, "a prewarmed task starts warm");
        warm_times.push(took);
        let container = container_of(&mut client, &reply.episode_id).await;
        assert_eq!(container.len(), 12);
        let pooled_id = pooled
            .iter()
            .find(|id| id.starts_with(&container))
            .expect("the episode runs in a pooled container");
        assert_eq!(
            labels[pooled_id], reply.episode_id,
            "the episode adopts the id its container was labelled with"
        );
        assert!(used_containers.insert(container.clone()));
        warm_ids.push(reply.episode_id.clone());
        episodes.push(reply.episode_id);

        // A cold start of another task for comparison (the pool has nothing for it).
        let (cold, took) =
            timed_create(&mut client, create_request("swe-env-fixtures__retrykit-1")).await;
        assert!(!cold.warm);
        cold_times.push(took);
        episodes.push(cold.episode_id);
    }
    for took in &warm_times {
        assert!(
            *took < Duration::from_millis(150),
            "CreateEpisode from the pool took {took:?} (target p50 ≤ 50 ms)"
        );
    }
    eprintln!(
        "CreateEpisode ready: warm p50 {:?} (all {:?}), cold p50 {:?} (all {:?})",
        p50(warm_times.clone()),
        warm_times,
        p50(cold_times.clone()),
        cold_times
    );
    // Nothing new was pooled (auto is off): one container per live episode.
    assert!(pooled_containers(&server).await.is_empty());
    assert_eq!(containers(&server).await.len(), 8);
    for id in &episodes {
        close(&mut client, id).await;
    }
    // Their episodes removed them.
    assert!(containers(&server).await.is_empty());

    // The pool is empty and its containers are gone with their episodes: a fifth episode gets a new container.
    let (fifth, _) = timed_create(&mut client, create_request(SPANS)).await;
    assert!(!fifth.warm);
    let container = container_of(&mut client, &fifth.episode_id).await;
    assert!(!used_containers.contains(&container));
    assert!(!pooled.iter().any(|id| id.starts_with(&container)));
    close(&mut client, &fifth.episode_id).await;

    // The trajectories of the warm episodes are complete and name their episode.
    for id in &warm_ids {
        let trajectory = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
            .await
            .unwrap();
        assert_eq!(trajectory.start.unwrap().episode_id, *id);
    }
    let owner = server.owner.clone();
    server.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

/// What the agent can observe of its repository and environment.
const PROBE: &str =
    "pwd; git status --porcelain --untracked-files=all | sort; git log --oneline | wc -l; \
                     git remote -v; git tag; git branch -a; git reflog | wc -l; git stash list; \
                     which python; echo $VIRTUAL_ENV; id -u; ulimit -u";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_episode_from_the_pool_is_indistinguishable_and_gets_its_own_limits() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(dir.path(), NO_AUTO);
    let mut client = client(&server.url()).await;
    let warmed = client
        .prewarm(prewarm_request(SPANS, 1, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warmed.ready, 1);

    // Other limits than the pool's (server defaults): applied at take time.
    let limits = proto::Limits {
        memory_bytes: Some(1 << 30),
        pids_limit: Some(300),
        cpus: Some(1.0),
        ..Default::default()
    };
    let mut request = create_request(SPANS);
    request.limits = Some(limits);
    let (warm, took) = timed_create(&mut client, request.clone()).await;
    assert!(warm.warm);
    eprintln!("warm CreateEpisode with a limit update: {took:?}");
    let (cold, _) = timed_create(&mut client, request).await;
    assert!(!cold.warm);

    let warm_probe = run(&mut client, &warm.episode_id, PROBE).await;
    let cold_probe = run(&mut client, &cold.episode_id, PROBE).await;
    assert_eq!(warm_probe, cold_probe, "the agent sees the same repository");
    assert!(
        !warm_probe.contains("origin"),
        "anti-leak ran: {warm_probe}"
    );

    for episode_id in [&warm.episode_id, &cold.episode_id] {
        let container = container_of(&mut client, episode_id).await;
        let inspect = std::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}",
                &container,
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&inspect.stdout).trim(),
            "1073741824 1073741824 1000000000 300",
            "limits of {episode_id}"
        );
        let start = read_trajectory(&server.trajectory_dir().join(format!("{episode_id}.jsonl")))
            .await
            .unwrap()
            .start
            .unwrap();
        assert_eq!(start.limits["memory_bytes"], 1u64 << 30);
        assert_eq!(start.limits["pids_limit"], 300);
        assert_eq!(start.limits["nano_cpus"], 1_000_000_000u64);
        assert!(start.image_id.starts_with("sha256:"));
    }
    let warm_start = read_trajectory(
        &server
            .trajectory_dir()
            .join(format!("{}.jsonl", warm.episode_id)),
    )
    .await
    .unwrap()
    .start
    .unwrap();
    let cold_start = read_trajectory(
        &server
            .trajectory_dir()
            .join(format!("{}.jsonl", cold.episode_id)),
    )
    .await
    .unwrap()
    .start
    .unwrap();
    assert_eq!(warm_start.limits, cold_start.limits);
    assert_eq!(warm_start.image_id, cold_start.image_id);

    // The same edit and a path-less submit give the same patch (pre-existing untracked files left out alike).
    let mut patches = Vec::new();
    for episode_id in [&warm.episode_id, &cold.episode_id] {
        run(
            &mut client,
            episode_id,
            "echo '# edited' >> README.md; echo new > added.txt",
        )
        .await;
        let reply = client
            .step(crate::server::text_step(
                episode_id,
                "<tool: submit>\n\n</tool>",
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(reply.submitted, "{reply:?}");
        let submission = client
            .get_submission(proto::GetSubmissionRequest {
                episode_id: episode_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        patches.push(submission.submission);
    }
    assert_eq!(patches[0], patches[1]);
    assert!(patches[0].contains("added.txt"));
    close(&mut client, &warm.episode_id).await;
    close(&mut client, &cold.episode_id).await;
    let owner = server.owner.clone();
    server.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_warm_pool_leaves_no_container_after_kill9_and_restart_nor_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_with_config(dir.path(), NO_AUTO);
    let mut client1 = client(&first.url()).await;
    let warmed = client1
        .prewarm(prewarm_request(SPANS, 3, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warmed.ready, 3);
    // One more being prepared at the kill.
    client1
        .prewarm(prewarm_request(SPANS, 4, false))
        .await
        .unwrap();
    let first_owner = first.owner.clone();
    assert!(pooled_containers(&first).await.len() >= 3);
    first.kill9();

    // The restarted server's start-up reconcile removes the dead server's pool.
    let second = start_with_config(dir.path(), NO_AUTO);
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::server::containers_of(&first_owner).await > 0 {
        assert!(
            Instant::now() < deadline,
            "pooled containers of a killed server left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM drains the pool: ready ones and one still being prepared.
    let mut client2 = client(&second.url()).await;
    let warmed = client2
        .prewarm(prewarm_request(SPANS, 2, true))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warmed.ready, 2);
    client2
        .prewarm(prewarm_request(SPANS, 3, false))
        .await
        .unwrap();
    let owner = second.owner.clone();
    let log = second.terminate(Duration::from_secs(60)).await;
    assert!(log.contains("warm pool drained"), "{log}");
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_auto_policy_refills_a_used_task_and_empties_after_keep_secs() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(
        dir.path(),
        "pool:\n  auto:\n    enabled: true\n    size: 2\n    min_uses: 1\n    keep_secs: 15\n",
    );
    let mut client = client(&server.url()).await;
    let (first, _) = timed_create(&mut client, create_request(SPANS)).await;
    assert!(!first.warm);
    // Refilled for this task, bounded by `size`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut most = 0;
    loop {
        let n = pooled_containers(&server).await.len();
        most = most.max(n);
        assert!(n <= 2, "the auto policy keeps at most `size` containers");
        if n == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no refill after a CreateEpisode");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (second, took) = timed_create(&mut client, create_request(SPANS)).await;
    assert!(second.warm, "the next episode of the task is warm");
    eprintln!("auto-warmed CreateEpisode: {took:?}");
    close(&mut client, &first.episode_id).await;
    close(&mut client, &second.episode_id).await;
    // keep_secs after the last use the key is no longer warm: its containers are removed.
    let deadline = Instant::now() + Duration::from_secs(90);
    while !pooled_containers(&server).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "pool not emptied after keep_secs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(most <= 2);
    let owner = server.owner.clone();
    server.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarm_over_the_maximum_is_invalid_argument_naming_field_and_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(
        dir.path(),
        "pool:\n  max_containers: 8\n  auto:\n    enabled: false\nmaxima:\n  prewarm: 3\n",
    );
    let mut client = client(&server.url()).await;
    let status = client
        .prewarm(prewarm_request(SPANS, 4, false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("count"), "{}", status.message());
    assert!(
        status.message().contains("maxima.prewarm") && status.message().contains('3'),
        "{}",
        status.message()
    );
    let status = client
        .prewarm(prewarm_request(SPANS, 0, false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A missing image is named, not retried forever in the background.
    let mut missing = prewarm_request(SPANS, 1, true);
    missing.image = "swe-env/no-such-image:never".into();
    let status = client.prewarm(missing).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("no-such-image"),
        "{}",
        status.message()
    );
    assert!(pooled_containers(&server).await.is_empty());
    server.terminate(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_right_after_prewarm_waits_for_the_warming_containers_instead_of_starting_cold_ones(
) {
    const K: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(
        dir.path(),
        "pool:\n  max_concurrent_fills: 2\n  take_wait_ms: 120000\n  auto:\n    enabled: false\n",
    );
    let client = client(&server.url()).await;
    let burst = |task: &'static str| {
        let client = client.clone();
        async move {
            let started = Instant::now();
            let creates = (0..K).map(|_| {
                let mut client = client.clone();
                async move { timed_create(&mut client, create_request(task)).await }
            });
            let replies = futures_util::future::join_all(creates).await;
            (replies, started.elapsed())
        }
    };
    // A burst for a task nobody warmed (first, so the warm burst does not profit from a warmed-up engine).
    let (cold, cold_total) = burst("swe-env-fixtures__retrykit-1").await;
    // K rollouts of one task: Prewarm(task, K) without waiting, then K CreateEpisode at once. Only
    // `max_concurrent_fills` (2) are being prepared when the burst arrives: the others wait for fills not started yet.
    let mut prewarm_client = client.clone();
    let warming = prewarm_client
        .prewarm(prewarm_request(SPANS, K as u32, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warming.ready + warming.warming, 2, "{warming:?}");
    let (warm, warm_total) = burst(SPANS).await;
    assert!(
        warm.iter().all(|(reply, _)| reply.warm),
        "every episode of the burst took a warming container"
    );
    assert!(cold.iter().all(|(reply, _)| !reply.warm));
    eprintln!(
        "burst of {K} right after Prewarm({K}, wait=false) with 2 fills at a time: {warm_total:?} (each {:?}); the same burst cold: {cold_total:?} (each {:?})",
        warm.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        cold.iter().map(|(_, t)| *t).collect::<Vec<_>>()
    );
    let mut client = client.clone();
    for (reply, _) in warm.iter().chain(&cold) {
        close(&mut client, &reply.episode_id).await;
    }
    let owner = server.owner.clone();
    server.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

/// Runs `rounds` RL-style groups of `k` concurrent CreateEpisode of `task` (closing each group before the next,
/// with `pause` between), returning every ready latency and how many were warm.
async fn rollout_round(client: &Client, task: &'static str, k: usize) -> (Vec<Duration>, usize) {
    let creates = (0..k).map(|_| {
        let mut client = client.clone();
        async move { timed_create(&mut client, create_request(task)).await }
    });
    let replies = futures_util::future::join_all(creates).await;
    let mut client = client.clone();
    for (reply, _) in &replies {
        close(&mut client, &reply.episode_id).await;
    }
    let warm = replies.iter().filter(|(r, _)| r.warm).count();
    (replies.into_iter().map(|(_, t)| t).collect(), warm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_auto_policy_leaves_a_once_used_task_cold_and_warms_repeated_rollouts() {
    let dir_on = tempfile::tempdir().unwrap();
    let dir_off = tempfile::tempdir().unwrap();
    // The automatic policy at its default settings (size 2, min_uses 2) against pools off, interleaved round by
    // round.
    let on = start_with_config(dir_on.path(), "pool:\n  auto:\n    enabled: true\n");
    let off = start_with_config(dir_off.path(), "pool:\n  max_containers: 0\n");
    let client_on = client(&on.url()).await;
    let client_off = client(&off.url()).await;

    // A task used once (an evaluation sweep) costs no pooled container.
    let (_, warm) = rollout_round(&client_on, "swe-env-fixtures__retrykit-1", 1).await;
    assert_eq!(warm, 0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(pooled_containers(&on).await.is_empty());

    const ROUNDS: usize = 4;
    const K: usize = 4;
    let (mut with_auto, mut without) = (Vec::new(), Vec::new());
    let mut warm_total = 0;
    for round in 0..ROUNDS {
        let (times, warm) = rollout_round(&client_on, SPANS, K).await;
        if round > 0 {
            with_auto.extend(times);
            warm_total += warm;
        }
        let (times, warm) = rollout_round(&client_off, SPANS, K).await;
        assert_eq!(warm, 0);
        if round > 0 {
            without.extend(times);
        }
        // The trainer's model time between groups.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "rounds 2..{ROUNDS} of {K} concurrent CreateEpisode: pool.auto on p50 {:?}, {warm_total} of {} warm; pools off p50 {:?}",
        p50(with_auto.clone()),
        with_auto.len(),
        p50(without.clone())
    );
    assert!(warm_total > 0, "repeated rollouts get warm containers");
    let (owner_on, owner_off) = (on.owner.clone(), off.owner.clone());
    on.terminate(Duration::from_secs(60)).await;
    off.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner_on).await, 0);
    assert_eq!(crate::server::containers_of(&owner_off).await, 0);
}

/// An inline task row of the spans fixture whose base commit (part of the pool key) is `base_commit`.
fn inline_spans(base_commit: &str) -> proto::prewarm_request::Task {
    proto::prewarm_request::Task::TaskJson(
        serde_json::json!({
            "instance_id": "swe-env-fixtures__spans-inline", "repo": "swe-env-fixtures/spans",
            "base_commit": base_commit, "problem_statement": "p", "version": "1",
            "image": "swe-env/fixture-spans:latest", "patch": "p", "test_patch": "t",
            "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]"
        })
        .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prewarm_over_many_tasks_is_bounded_by_pool_max_keys_and_fills_ignore_the_clients_limits() {
    // No fill ever starts (the host never has that much memory available): every key stays empty, so a new key
    // replaces the least recently used one.
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(
        dir.path(),
        "pool:\n  max_keys: 2\n  min_host_available_bytes: 1000000000000000000\n  auto:\n    enabled: false\n",
    );
    let mut client = client(&server.url()).await;
    for i in 0..10 {
        let reply = client
            .prewarm(proto::PrewarmRequest {
                task: Some(inline_spans(&format!("{i:040x}"))),
                count: 1,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.pool_keys as usize, (i + 1).min(2), "{reply:?}");
    }
    server.terminate(Duration::from_secs(60)).await;

    // One key, with a ready container: a second key has no room.
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(
        dir.path(),
        "episode:\n  cpus: 1\npool:\n  max_keys: 1\n  auto:\n    enabled: false\n",
    );
    let mut client = crate::server::client(&server.url()).await;
    // A client asking for 1% of a CPU does not slow the fills: pooled containers get the server's defaults.
    let mut request = prewarm_request(SPANS, 1, true);
    request.limits = Some(proto::Limits {
        cpus: Some(0.01),
        ..Default::default()
    });
    let started = Instant::now();
    let warmed = client.prewarm(request).await.unwrap().into_inner();
    assert_eq!(warmed.ready, 1, "{warmed:?}");
    assert_eq!(warmed.pool_keys, 1);
    eprintln!(
        "Prewarm(1, wait) with limits.cpus 0.01: {:?}",
        started.elapsed()
    );
    let pooled = pooled_containers(&server).await;
    assert_eq!(pooled.len(), 1);
    let inspect = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.NanoCpus}}", &pooled[0]])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "1000000000",
        "pooled containers have the server's default CPUs"
    );
    let status = client
        .prewarm(proto::PrewarmRequest {
            task: Some(inline_spans("0123")),
            count: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("pool.max_keys"),
        "{}",
        status.message()
    );
    // The tracked key itself is still served.
    let again = client
        .prewarm(prewarm_request(SPANS, 1, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.pool_keys, 1);
    let owner = server.owner.clone();
    server.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_create_cancelled_while_waiting_for_a_warming_container_does_not_stop_later_ones_waiting()
{
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_config(
        dir.path(),
        "pool:\n  max_concurrent_fills: 1\n  take_wait_ms: 120000\n  auto:\n    enabled: false\n",
    );
    let mut client = client(&server.url()).await;
    // One container being prepared.
    let warming = client
        .prewarm(prewarm_request(SPANS, 1, false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(warming.warming, 1, "{warming:?}");
    // A CreateEpisode that waits for it but gives up (client deadline) before it is ready.
    let mut request = tonic::Request::new(create_request(SPANS));
    request.set_timeout(Duration::from_millis(100));
    let status = client.create_episode(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The server drops the abandoned call when the stream's reset reaches it, a moment after the client gave up; a
    // CreateEpisode arriving before that still counts it as a waiter and starts cold (seen once in CI). The fill
    // takes far longer than this pause, so the container is still being prepared below.
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The next CreateEpisode of the task still waits for the container rather than starting a cold one.
    let (reply, took) = timed_create(&mut client, create_request(SPANS)).await;
    eprintln!(
        "CreateEpisode after a cancelled waiter: {took:?}, warm {}",
        reply.warm
    );
    assert!(reply.warm, "the cancelled waiter was forgotten");
    close(&mut client, &reply.episode_id).await;
    let owner = server.owner.clone();
    server.terminate(Duration::from_secs(60)).await;
    assert_eq!(crate::server::containers_of(&owner).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_limits_changes_limits_and_refuses_to_lift_a_memory_or_cpu_limit() {
    let limited = swe_env_sandbox::SandboxConfig {
        memory_bytes: 512 << 20,
        nano_cpus: 500_000_000,
        pids_limit: 100,
        ..crate::common::base_config()
    };
    let sandbox = crate::common::base_sandbox("update-limits", limited.clone()).await;
    // Other limits: applied, as the engine reports them; a process limit of 0 lifts it.
    let other = swe_env_sandbox::SandboxConfig {
        memory_bytes: 1 << 30,
        nano_cpus: 1_000_000_000,
        pids_limit: 0,
        ..limited.clone()
    };
    let now = sandbox.update_limits(&other).await.unwrap();
    assert_eq!(
        (
            now.memory_bytes,
            now.memory_swap_bytes,
            now.nano_cpus,
            now.pids_limit
        ),
        (1 << 30, 1 << 30, 1_000_000_000, 0)
    );
    // No memory limit wanted: the engine would keep the old one ("0 = unchanged"), so it is an error (the server
    // then starts a new container), and the container keeps its limits.
    for (memory_bytes, nano_cpus) in [(0, 1_000_000_000), (1 << 30, 0)] {
        let lifted = swe_env_sandbox::SandboxConfig {
            memory_bytes,
            nano_cpus,
            ..other.clone()
        };
        let error = sandbox.update_limits(&lifted).await.unwrap_err();
        assert!(error.to_string().contains("cannot lift"), "{error}");
    }
    sandbox.remove().await.unwrap();
}
