//! A Step, once accepted, completes and is recorded exactly once whatever the client does: a deadline, a dropped
//! call, a retry racing the original. A real `swe-env serve`, real tonic clients, real Docker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use swe_env::server::proto;
use swe_env::trajectory::read_trajectory;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::server::{
    bash, client, close, create, create_request, start_with_client, text_step, Client, ServerProc,
    SPANS,
};

fn with_id(mut request: proto::StepRequest, request_id: &str) -> proto::StepRequest {
    request.request_id = request_id.to_owned();
    request
}

/// A Step call with a gRPC deadline (`grpc-timeout`), which the server enforces by dropping the call.
fn with_deadline(
    request: proto::StepRequest,
    deadline: Duration,
) -> tonic::Request<proto::StepRequest> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(deadline);
    request
}

async fn step(client: &mut Client, request: proto::StepRequest) -> proto::StepResponse {
    client.step(request).await.unwrap().into_inner()
}

async fn output(client: &mut Client, request: proto::StepRequest) -> String {
    step(client, request).await.observation.unwrap().text
}

/// What a tool printed: the text inside `<output>…</output>`, trimmed.
fn body(observation: &str) -> &str {
    let start = observation
        .find("<output>\n")
        .map_or(0, |i| i + "<output>\n".len());
    let end = observation.rfind("</output>").unwrap_or(observation.len());
    observation[start..end.max(start)].trim()
}

/// Steps `episode_id` every 100 ms until `stop` (at most 100 steps, within the turn budget), checking every
/// reply; returns how many steps it took.
fn bystander(mut client: Client, episode_id: String, stop: Arc<AtomicBool>) -> JoinHandle<u32> {
    tokio::spawn(async move {
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) && n < 100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let text = output(&mut client, bash(&episode_id, &format!("echo by-{n}"))).await;
            assert!(
                text.contains(&format!("<output>\nby-{n}\n")),
                "bystander step {n}: {text}"
            );
            n += 1;
        }
        n
    })
}

/// A second episode of the fixture task that a [`bystander`] keeps stepping while a test works on its own.
struct Bystander {
    episode_id: String,
    stop: Arc<AtomicBool>,
    steps: JoinHandle<u32>,
}

impl Bystander {
    async fn start(client: &mut Client) -> Self {
        let episode_id = create(client, create_request(SPANS)).await.episode_id;
        let stop = Arc::new(AtomicBool::new(false));
        let steps = bystander(client.clone(), episode_id.clone(), stop.clone());
        Self {
            episode_id,
            stop,
            steps,
        }
    }

    /// Stops it and checks it kept stepping (at least 3 steps) and recorded each step once; then closes it.
    async fn finish(self, client: &mut Client, server: &ServerProc) {
        self.stop.store(true, Ordering::SeqCst);
        let by_steps = self.steps.await.unwrap();
        assert!(
            by_steps >= 3,
            "the bystander kept stepping ({by_steps} steps)"
        );
        assert_recorded_once(client, server, &self.episode_id).await;
        close(client, &self.episode_id).await;
    }
}

/// `n_steps` as ListEpisodes reports it.
async fn listed_n_steps(client: &mut Client, episode_id: &str) -> u32 {
    let listing = client
        .list_episodes(proto::ListEpisodesRequest {
            include_ended: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    listing
        .episodes
        .iter()
        .find(|e| e.episode_id == episode_id)
        .unwrap()
        .n_steps
}

/// The episode's trajectory holds each step once, numbered 0.., and ListEpisodes counts exactly those; returns
/// the request ids recorded, in order.
async fn assert_recorded_once(
    client: &mut Client,
    server: &ServerProc,
    episode_id: &str,
) -> Vec<String> {
    let trajectory = read_trajectory(&server.trajectory_dir().join(format!("{episode_id}.jsonl")))
        .await
        .unwrap();
    let indices: Vec<u32> = trajectory.steps.iter().map(|s| s.step_idx).collect();
    let expected: Vec<u32> = (0..indices.len() as u32).collect();
    assert_eq!(indices, expected, "each step recorded once, in order");
    assert_eq!(
        listed_n_steps(client, episode_id).await as usize,
        trajectory.steps.len(),
        "n_steps agrees with the trajectory"
    );
    for step in &trajectory.steps {
        assert!(
            !step.observation.contains("__SWE_ENV"),
            "no shell sentinel in a recorded observation: {}",
            step.observation
        );
    }
    trajectory
        .steps
        .iter()
        .filter_map(|s| s.request_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_whose_client_gave_up_completes_once_and_the_retry_gets_its_reply() {
    let (_dir, server, mut client) = start_with_client(&[]).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;
    let bystander = Bystander::start(&mut client).await;

    // A deadline shorter than the command: the call fails, the step goes on.
    let slow = with_id(
        bash(&id, "echo ran >> /tmp/runs; sleep 2; echo done-1"),
        "slow-1",
    );
    let status = client
        .step(with_deadline(slow.clone(), Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    // The retry arrives while the first still runs: it waits for it and gets its reply.
    let retry = step(&mut client, slow.clone()).await;
    assert!(retry.replayed, "the retry is the stored reply: {retry:?}");
    let text = retry.observation.as_ref().unwrap().text.clone();
    assert_eq!(body(&text), "done-1", "{text}");
    let again = step(&mut client, slow.clone()).await;
    assert!(again.replayed);
    assert_eq!(again.observation, retry.observation);
    assert_eq!(again.step_idx, retry.step_idx);

    let count = output(&mut client, bash(&id, "wc -l < /tmp/runs")).await;
    assert_eq!(body(&count), "1", "ran exactly once: {count}");
    assert!(!count.contains("__SWE_ENV"), "no sentinel leaks: {count}");

    // The client drops the call (no deadline sent): the same.
    let dropped = with_id(
        bash(&id, "echo ran >> /tmp/runs; sleep 1; echo done-2"),
        "slow-2",
    );
    let mut other = client.clone();
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), other.step(dropped.clone())).await;
    assert!(gave_up.is_err(), "the call was still running when dropped");
    let next = output(&mut client, bash(&id, "echo next; wc -l < /tmp/runs")).await;
    assert_eq!(body(&next), "next\n2", "{next}");
    assert!(!next.contains("__SWE_ENV"), "{next}");
    let retry = step(&mut client, dropped).await;
    assert!(retry.replayed);
    assert!(retry.observation.unwrap().text.contains("done-2"));

    bystander.finish(&mut client, &server).await;
    let ids = assert_recorded_once(&mut client, &server, &id).await;
    assert_eq!(ids, ["slow-1", "slow-2"]);
    assert_eq!(listed_n_steps(&mut client, &id).await, 4);
    close(&mut client, &id).await;
    server.terminate(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_edit_of_a_large_file_never_leaves_it_partial() {
    const SIZE: usize = 40_000_000;
    let dir = tempfile::tempdir().unwrap();
    // Edits of files up to 48 MiB (the default bound is 8 MiB).
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, "memory:\n  max_file_bytes: 50331648\n").unwrap();
    let server = ServerProc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let mut client = client(&server.url()).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;
    let bystander = Bystander::start(&mut client).await;

    let setup = output(
        &mut client,
        bash(
            &id,
            &format!(
                "mkdir -p /tmp/big && cd /tmp/big && chmod 0750 . && \
                 yes 'filler line 0123456789 abcdefghijklmnopqrstuvwxyz' | head -c {SIZE} > big.txt && \
                 echo MARKER-A >> big.txt && chmod 0640 big.txt && \
                 sha256sum < big.txt && sed '$ s/MARKER-A/MARKER-B/' big.txt | sha256sum"
            ),
        ),
    )
    .await;
    let hashes: Vec<String> = setup
        .split_whitespace()
        .filter(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
        .collect();
    assert_eq!(hashes.len(), 2, "{setup}");
    let (hash_a, hash_b) = (hashes[0].clone(), hashes[1].clone());

    let edit_step = |i: u32, current_a: bool| {
        let (from, to) = if current_a { ("A", "B") } else { ("B", "A") };
        with_id(
            text_step(
                &id,
                &format!(
                    "<tool: edit>\n/tmp/big/big.txt\n<<<<<<< SEARCH\nMARKER-{from}\n=======\nMARKER-{to}\n>>>>>>> REPLACE\n</tool>"
                ),
            ),
            &format!("edit-{i}"),
        )
    };
    // One edit to time it.
    let started = std::time::Instant::now();
    let first = step(&mut client, edit_step(0, true)).await;
    let edit_time = started.elapsed();
    assert!(first.observation.unwrap().tool_error.is_empty());
    let mut current_a = false;

    // Drop edits at points spread over the second half of their run (reading, editing, writing the file).
    let mut dropped_accepted = 0;
    for i in 1..=12u32 {
        let edit = edit_step(i, current_a);
        let deadline = edit_time * (12 + i) / 24;
        let mut other = client.clone();
        let first = tokio::time::timeout(deadline, other.step(edit.clone())).await;
        let after = output(
            &mut client,
            bash(
                &id,
                "sha256sum < /tmp/big/big.txt; stat -c 'mode=%a' /tmp/big/big.txt; ls -A /tmp/big",
            ),
        )
        .await;
        let now_a = after.contains(&hash_a);
        assert!(
            now_a || after.contains(&hash_b),
            "edit-{i} dropped after {deadline:?} left the file neither old nor new: {after}"
        );
        assert!(after.contains("mode=640"), "the mode is kept: {after}");
        assert_eq!(
            body(&after).lines().skip(2).collect::<Vec<_>>(),
            ["big.txt"],
            "the directory holds only the file, no temporary: {after}"
        );
        // The retry tells whether the server had accepted the dropped call: then it is the stored reply, and
        // the edit was complete before the next step ran; else the retry runs the edit now.
        let retry = step(&mut client, edit).await;
        let completed = matches!(first, Ok(Ok(_)));
        assert!(retry.replayed || !completed, "a completed call is replayed");
        let accepted = retry.replayed;
        assert_eq!(
            now_a,
            current_a != accepted,
            "edit-{i}: an accepted edit is complete before the next step, one never accepted did not run: {after}"
        );
        if accepted && !completed {
            dropped_accepted += 1;
        }
        let tool_error = retry.observation.unwrap().tool_error;
        assert!(tool_error.is_empty(), "the edit succeeded: {tool_error}");
        current_a = !current_a;
    }
    assert!(
        dropped_accepted >= 3,
        "only {dropped_accepted} calls were dropped after the server accepted them"
    );

    bystander.finish(&mut client, &server).await;
    let ids = assert_recorded_once(&mut client, &server, &id).await;
    assert_eq!(ids.len(), 13, "{ids:?}");
    close(&mut client, &id).await;
    server.terminate(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_id_reused_for_another_action_is_invalid_argument() {
    let (_dir, server, mut client) = start_with_client(&[]).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;

    let first = with_id(bash(&id, "echo a >> /tmp/runs; echo a"), "r-1");
    let reply = step(&mut client, first.clone()).await;
    assert!(!reply.replayed);

    let other_action = with_id(bash(&id, "echo b >> /tmp/runs; echo b"), "r-1");
    let status = client.step(other_action).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("request_id"), "{status:?}");

    let mut other_turn = first.clone();
    other_turn.model_turn = Some(proto::ModelTurn {
        model_ms: Some(12),
        ..Default::default()
    });
    let status = client.step(other_turn).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("request_id"), "{status:?}");

    // The same request again is still the stored reply; nothing ran twice.
    let again = step(&mut client, first).await;
    assert!(again.replayed);
    assert_eq!(again.observation, reply.observation);
    let runs = output(&mut client, bash(&id, "cat /tmp/runs")).await;
    assert_eq!(body(&runs), "a", "{runs}");
    assert_eq!(
        assert_recorded_once(&mut client, &server, &id).await,
        ["r-1"]
    );
    close(&mut client, &id).await;
    server.terminate(Duration::from_secs(60)).await;
}

/// The file write under edit/create: a write dropped half-way (its exec's stdin cut) leaves the old content and no
/// temporary file; a completed one keeps the mode of the file it replaced, and a new file gets 0644.
#[tokio::test(flavor = "multi_thread")]
async fn write_bytes_is_atomic_and_keeps_the_mode() {
    let sandbox = crate::common::base_sandbox("atomic-write", crate::common::base_config()).await;
    let sh = |script: &str| {
        let sandbox = sandbox.clone();
        let script = script.to_owned();
        async move {
            let out = sandbox
                .exec(&["sh", "-c", &script], None, Duration::from_secs(60))
                .await
                .unwrap();
            String::from_utf8(out.stdout).unwrap()
        }
    };
    sh("mkdir -p /tmp/w && printf old > /tmp/w/f && chmod 0600 /tmp/w/f").await;
    let big = vec![b'n'; 48 << 20];
    let mut cut = 0;
    for i in 1..=10u64 {
        let write = sandbox.write_bytes("/tmp/w/f", &big);
        if tokio::time::timeout(Duration::from_millis(30 * i), write)
            .await
            .is_err()
        {
            cut += 1;
        }
        // The cut exec notices its closed stdin and cleans up.
        let mut listing = String::new();
        for _ in 0..50 {
            listing = sh("ls -A /tmp/w; wc -c < /tmp/w/f").await;
            if listing.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let size: usize = listing.lines().last().unwrap().trim().parse().unwrap();
        assert!(
            listing.starts_with("f\n") && (size == 3 || size == big.len()),
            "write {i}: the file is old or new, alone in its directory: {listing}"
        );
        sh("printf old > /tmp/w/f").await;
    }
    assert!(cut >= 3, "only {cut} writes were cut short");
    sandbox.write_bytes("/tmp/w/f", b"new").await.unwrap();
    sandbox.write_bytes("/tmp/w/g", b"fresh").await.unwrap();
    let modes = sh("stat -c '%n %a' /tmp/w/f /tmp/w/g; cat /tmp/w/f").await;
    assert_eq!(modes, "/tmp/w/f 600\n/tmp/w/g 644\nnew");
    sandbox.remove().await.unwrap();
}

/// A step a shutdown interrupts after its grace period is neither recorded nor counted: `episode_end.n_steps`
/// equals the steps in the trajectory.
#[tokio::test(flavor = "multi_thread")]
async fn a_step_cut_by_shutdown_is_not_counted() {
    let (_dir, server, mut client) = start_with_client(&["--shutdown-grace-secs", "1"]).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;
    output(&mut client, bash(&id, "echo before")).await;
    let mut slow = client.clone();
    let slow_request = with_id(bash(&id, "sleep 60"), "slow");
    let in_flight = tokio::spawn(async move { slow.step(slow_request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let trajectories = server.trajectory_dir();
    server.terminate(Duration::from_secs(30)).await;
    let status = in_flight.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let trajectory = read_trajectory(&trajectories.join(format!("{id}.jsonl")))
        .await
        .unwrap();
    let end = trajectory.end.unwrap();
    assert_eq!(trajectory.steps.len(), 1);
    assert_eq!(end.n_steps, 1, "the interrupted step is not counted");
}

/// Found by an independent tester: once a reply was evicted from the bounded per-episode cache, a retry with its
/// request_id ran the command a second time. Now it is FAILED_PRECONDITION naming the step, and nothing runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_whose_reply_was_evicted_never_runs_again() {
    let (_dir, server, mut client) = start_with_client(&[]).await;
    let id = create(
        &mut client,
        proto::CreateEpisodeRequest {
            budgets: Some(proto::Budgets {
                observation_cap_bytes: Some(1 << 20),
                context_tokens: Some(1 << 20),
                ..Default::default()
            }),
            ..create_request(SPANS)
        },
    )
    .await
    .episode_id;
    let counted = "echo x >> /tmp/evict-count; wc -l < /tmp/evict-count";
    let first = step(&mut client, with_id(bash(&id, counted), "evict-a")).await;
    assert!(first.observation.unwrap().text.contains("\n1\n"));
    // Five ~1 MB observations push the first reply out of the 4 MiB cache (the client reports its own context use,
    // as a trainer does, so the context budget does not end the episode first).
    for i in 0..5 {
        let mut big = with_id(
            bash(&id, "head -c 1000000 /dev/zero | tr '\\0' a"),
            &format!("evict-big-{i}"),
        );
        big.model_turn = Some(proto::ModelTurn {
            context_tokens_used: Some(10),
            ..Default::default()
        });
        let shown = step(&mut client, big).await.observation.unwrap().text.len();
        assert!(shown > 900_000, "observation of {shown} bytes");
    }
    let retry = client
        .step(with_id(bash(&id, counted), "evict-a"))
        .await
        .unwrap_err();
    assert_eq!(retry.code(), Code::FailedPrecondition, "{retry:?}");
    assert!(retry.message().contains("step 0"), "{}", retry.message());
    let count = step(&mut client, bash(&id, "wc -l < /tmp/evict-count")).await;
    assert!(
        count.observation.unwrap().text.contains("\n1\n"),
        "ran twice"
    );
    close(&mut client, &id).await;
    server.terminate(Duration::from_secs(30)).await;
}
