//! Bounded memory (issue 11): submission and file-size caps are tool errors the agent sees, listings carry a
//! submission's size and hash instead of the patch, GetSubmission returns it, and the server's RSS stays bounded
//! under concurrent over-cap edits.

use std::time::{Duration, Instant};

use swe_env::server::proto;

use crate::server::{
    bash, client, close, create, create_request, start_with_client, text_step, Client, ServerProc,
    SPANS,
};

/// The server process's resident set, bytes (`VmRSS` of `/proc/<pid>/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

async fn observe(client: &mut Client, request: proto::StepRequest) -> proto::StepResponse {
    client.step(request).await.unwrap().into_inner()
}

fn text_of(reply: &proto::StepResponse) -> String {
    reply
        .observation
        .as_ref()
        .map(|o| o.text.clone())
        .unwrap_or_default()
}

fn sha256_hex(bytes: &[u8]) -> String {
    swe_env::server::registry::sha256_hex(bytes)
}

/// A file of `bytes` bytes in the container, one line, made inside the container (nothing crosses the wire).
fn make_file(path: &str, bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' a > {path} && wc -c < {path}")
}

#[tokio::test(flavor = "multi_thread")]
async fn over_cap_submissions_are_tool_errors_and_listings_carry_size_and_hash() {
    let (dir, server, mut client) = start_with_client(&[]).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;

    // A 5 MB patch file: over the 4 MiB default, refused, the episode goes on.
    let made = observe(
        &mut client,
        bash(
            &id,
            "{ printf 'diff --git a/x b/x\\n'; head -c 5000000 /dev/zero | tr '\\0' x; } > /tmp/big.patch && wc -c < /tmp/big.patch",
        ),
    )
    .await;
    assert!(text_of(&made).contains("5000019"), "{}", text_of(&made));
    let refused = observe(
        &mut client,
        text_step(&id, "<tool: submit>\n/tmp/big.patch\n</tool>"),
    )
    .await;
    assert!(!refused.submitted && !refused.done, "{refused:?}");
    assert!(
        text_of(&refused).contains(
            "Failed to submit /tmp/big.patch: the submission is 5000019 bytes, over the 4194304-byte limit. A fix is \
             usually small: leave generated, binary or data files out of it"
        ),
        "{}",
        text_of(&refused)
    );

    // The computed submission (path-less submit) is capped the same way: a 6 MB new file in the repository.
    let made = observe(&mut client, bash(&id, &make_file("data.bin", 6_000_000))).await;
    assert!(text_of(&made).contains("6000000"), "{}", text_of(&made));
    let refused = observe(&mut client, text_step(&id, "<tool: submit>\n\n</tool>")).await;
    assert!(!refused.submitted, "{refused:?}");
    assert!(
        text_of(&refused).contains("over the 4194304-byte limit"),
        "{}",
        text_of(&refused)
    );

    // Without the big file, the fix goes through; the listing has size and hash, GetSubmission the patch.
    observe(&mut client, bash(&id, "rm data.bin")).await;
    let edit = "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n    \
                for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>";
    let edited = observe(&mut client, text_step(&id, edit)).await;
    assert!(text_of(&edited).contains("sorted("), "{}", text_of(&edited));
    let accepted = observe(&mut client, text_step(&id, "<tool: submit>\n\n</tool>")).await;
    assert!(accepted.submitted, "{}", text_of(&accepted));

    let got = client
        .get_submission(proto::GetSubmissionRequest {
            episode_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        got.submission.contains("sorted(map(_check, ranges))"),
        "{got:?}"
    );
    assert_eq!(got.submission_bytes, got.submission.len() as u64);
    assert_eq!(got.submission_sha256, sha256_hex(got.submission.as_bytes()));
    let listed = client
        .list_episodes(proto::ListEpisodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let info = listed.episodes.iter().find(|e| e.episode_id == id).unwrap();
    assert_eq!(info.submission_bytes, got.submission_bytes);
    assert_eq!(info.submission_sha256, got.submission_sha256);
    #[allow(deprecated)]
    let listed_patch = info.submission.clone();
    assert_eq!(listed_patch, "", "listings carry no patch");

    let closed = close(&mut client, &id).await.episode.unwrap();
    assert_eq!(closed.status, "submitted");
    assert_eq!(closed.submission_sha256, got.submission_sha256);

    // An episode the server does not know answers from its trajectory; an unknown one is NOT_FOUND.
    let missing = client
        .get_submission(proto::GetSubmissionRequest {
            episode_id: "ep-0000000000000000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    drop(server);
    let restarted = ServerProc::start(dir.path(), &[]);
    let mut client = crate::server::client(&restarted.url()).await;
    let again = client
        .get_submission(proto::GetSubmissionRequest { episode_id: id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, got, "from the trajectory of a previous server run");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_over_cap_edits_are_tool_errors_and_server_rss_stays_bounded() {
    const EPISODES: usize = 8;
    const FILE_BYTES: u64 = 60_000_000;
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let pid = server.child.id();
    let url = server.url();
    let mut ids = Vec::new();
    for _ in 0..EPISODES {
        let mut client = client(&url).await;
        let (reply, _) = crate::server::create_with_retry(&mut client, create_request(SPANS))
            .await
            .unwrap();
        let made = observe(
            &mut client,
            bash(&reply.episode_id, &make_file("/tmp/big.txt", FILE_BYTES)),
        )
        .await;
        assert!(text_of(&made).contains("60000000"), "{}", text_of(&made));
        ids.push(reply.episode_id);
    }
    let before = rss_bytes(pid);
    let started = Instant::now();
    let edits = ids.iter().map(|id| {
        let (url, id) = (url.clone(), id.clone());
        tokio::spawn(async move {
            let mut client = client(&url).await;
            let edit = "<tool: edit>\n/tmp/big.txt\n<<<<<<< SEARCH\naaaa\n=======\nb\n>>>>>>> REPLACE\n</tool>";
            observe(&mut client, text_step(&id, edit)).await
        })
    });
    let mut peak = before;
    let replies = futures_util::future::join_all(edits);
    tokio::pin!(replies);
    let replies = loop {
        tokio::select! {
            replies = &mut replies => break replies,
            () = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(rss_bytes(pid)),
        }
    };
    let after = rss_bytes(pid);
    peak = peak.max(after);
    for reply in replies {
        let reply = reply.unwrap();
        assert!(
            text_of(&reply).contains(
                "Cannot edit /tmp/big.txt: it is 60000000 bytes, over the 8388608-byte limit of the edit tool."
            ),
            "{}",
            text_of(&reply)
        );
    }
    println!(
        "{EPISODES} concurrent edits of {FILE_BYTES}-byte files in {:?}: server RSS before {} MiB, peak {} MiB, after {} MiB",
        started.elapsed(),
        before >> 20,
        peak >> 20,
        after >> 20
    );
    // Refused before reading: no file content reaches the server (8 x 60 MB would be ~0.5-1.5 GB).
    assert!(
        peak < before + (64 << 20),
        "server RSS grew from {before} to a peak of {peak} bytes"
    );
    // The episodes go on.
    let mut client = client(&url).await;
    let ok = observe(&mut client, bash(&ids[0], "echo alive")).await;
    assert!(text_of(&ok).contains("alive"));
}

/// The memory figure of issue 11, small enough for CI by default: `SWE_ENV_FIGURE_EPISODES` live episodes (default
/// 4) each edit a file of `SWE_ENV_FIGURE_BYTES` bytes (default 6 MB; edit cap `SWE_ENV_FIGURE_EDIT_CAP`, default the
/// 8 MiB default) and submit a patch of that size (submission cap raised to 64 MiB), all at once, edits first (a big
/// submission fills the context budget, which ends the episode); prints server VmRSS and checks it stays within a
/// constant factor of the bytes in flight. The figure in the closing note:
/// `SWE_ENV_FIGURE_EPISODES=16 SWE_ENV_FIGURE_BYTES=50000000 cargo nextest run -p swe-env --test it
/// memory_bounds::figure --no-capture`
#[tokio::test(flavor = "multi_thread")]
async fn figure_server_rss_under_big_submissions_and_edits() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let episodes = env("SWE_ENV_FIGURE_EPISODES", 4) as usize;
    let bytes = env("SWE_ENV_FIGURE_BYTES", 6_000_000);
    let edit_cap = env("SWE_ENV_FIGURE_EDIT_CAP", 8 << 20);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "max_episodes: {episodes}\nmemory:\n  max_submission_bytes: {}\n  max_file_bytes: {edit_cap}\n",
            64 << 20
        ),
    )
    .unwrap();
    let server = ServerProc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let (pid, url) = (server.child.id(), server.url());
    let idle = rss_bytes(pid);
    let started = Instant::now();
    let creates = (0..episodes).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = client(&url).await;
            let (reply, _) = crate::server::create_with_retry(&mut client, create_request(SPANS))
                .await
                .unwrap();
            let id = reply.episode_id;
            // The patch, then a file of `xxxx` lines and one `aaaa` line for the edit to find.
            let setup = format!(
                "{{ printf 'diff --git a/x b/x\\n'; head -c {bytes} /dev/zero | tr '\\0' x; }} > /tmp/big.patch && \
                 {{ yes xxxx | head -c {bytes}; echo aaaa; }} > /tmp/big.txt"
            );
            observe(&mut client, bash(&id, &setup)).await;
            id
        })
    });
    let ids: Vec<String> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let live = rss_bytes(pid);
    let create_time = started.elapsed();
    let mut rows = Vec::new();
    for (label, action) in [
        (
            "edit",
            "<tool: edit>\n/tmp/big.txt\n<<<<<<< SEARCH\naaaa\n=======\nb\n>>>>>>> REPLACE\n</tool>".to_owned(),
        ),
        ("submit", "<tool: submit>\n/tmp/big.patch\n</tool>".to_owned()),
    ] {
        let started = Instant::now();
        let calls = ids.iter().map(|id| {
            let (url, id, action) = (url.clone(), id.clone(), action.clone());
            tokio::spawn(async move {
                let mut client = client(&url).await;
                let reply = observe(&mut client, text_step(&id, &action)).await;
                reply.submitted || text_of(&reply).starts_with("<output>\nEdited")
            })
        });
        let mut peak = rss_bytes(pid);
        let all = futures_util::future::join_all(calls);
        tokio::pin!(all);
        let done = loop {
            tokio::select! {
                done = &mut all => break done,
                () = tokio::time::sleep(Duration::from_millis(20)) => peak = peak.max(rss_bytes(pid)),
            }
        };
        let accepted = done.into_iter().filter(|ok| *ok.as_ref().unwrap()).count();
        rows.push((label, accepted, peak, rss_bytes(pid), started.elapsed()));
    }
    println!("\n{episodes} live episodes, {bytes}-byte files, submission cap 64 MiB, edit cap {edit_cap} bytes");
    println!("| phase | accepted | server VmRSS peak MiB | after MiB | time |");
    println!("|---|---|---|---|---|");
    println!("| idle server | - | {} | {} | - |", idle >> 20, idle >> 20);
    println!(
        "| {episodes} episodes live | - | {} | {} | {create_time:.1?} |",
        live >> 20,
        live >> 20
    );
    // Bounded: a few copies of what is in flight (an edit holds the old text, the new text and the written bytes),
    // plus a constant.
    let in_flight = episodes as u64 * bytes;
    for (label, accepted, peak, after, time) in rows {
        println!(
            "| {episodes} concurrent {label}s | {accepted} | {} | {} | {time:.1?} |",
            peak >> 20,
            after >> 20
        );
        let limit = live + 6 * in_flight + (64 << 20);
        assert!(
            peak <= limit,
            "{label}: server VmRSS peaked at {} MiB, above {} MiB",
            peak >> 20,
            limit >> 20
        );
        if bytes <= edit_cap {
            assert_eq!(
                accepted, episodes,
                "{label}: every call under the caps is accepted"
            );
        }
    }
}
