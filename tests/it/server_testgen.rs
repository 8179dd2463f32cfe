//! CheckTest over gRPC (issue 17): the generated-test check a trainer needs around its own test-writing episodes.
//! A real `swe-env serve`, real containers, the spans fixture: the validity check at the base commit (the
//! test-writing reward), a valid test run on the gold patch and on a patch that does not apply (test-based
//! selection), the server's bounds (time limit maximum and default, sizes, unknown task), the drain, and no
//! container left behind. The scripts are those of `testgen.rs`.

use std::process::Command;
use std::time::{Duration, Instant};

use swe_env::server::proto;
use swe_env::server::proto::check_test_request::Task;
use tonic::Code;

use crate::episode::fixture;
use crate::server::{client, containers_of, Client, ServerProc, SPANS};
use crate::testgen::{HANGS, RESOLVED_AT_BASE, UNAPPLIABLE_PATCH, VALID_TEST};

/// A server reading `yaml` as its config (grading without network), plus `extra` flags.
fn start_server(dir: &std::path::Path, yaml: &str, extra: &[&str]) -> ServerProc {
    let config = dir.join("serve.yaml");
    std::fs::write(&config, format!("grading:\n  network_mode: none\n{yaml}")).unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    ServerProc::start(dir, &args)
}

fn request(script: &str, patch: &str) -> proto::CheckTestRequest {
    proto::CheckTestRequest {
        task: Some(Task::TaskId(SPANS.into())),
        script: script.into(),
        patch: patch.into(),
        image: String::new(),
        timeout_secs: 0,
    }
}

async fn check(client: &mut Client, request: proto::CheckTestRequest) -> proto::CheckTestResponse {
    client.check_test(request).await.unwrap().into_inner()
}

async fn refused(client: &mut Client, request: proto::CheckTestRequest) -> tonic::Status {
    client.check_test(request).await.unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
async fn check_test_rewards_a_valid_test_and_runs_it_on_candidate_patches() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "", &[]);
    let mut client = client(&server.url()).await;
    let gold = fixture(SPANS).patch;

    // Validity check at the base commit: the test-writing reward.
    let valid = check(&mut client, request(VALID_TEST, "")).await;
    assert!(valid.valid, "{valid:?}");
    assert_eq!(valid.reason, "");
    assert!(
        valid.reproduced && !valid.resolved && !valid.other_issues,
        "{valid:?}"
    );
    assert!(!valid.timed_out);
    assert_eq!(valid.exit_code, Some(0));
    assert!(
        valid
            .output_tail
            .contains("unsorted=[(5, 8)] adjacent=[(1, 3), (3, 5)] length=3"),
        "{valid:?}"
    );
    assert!(valid.detail.contains("Issue reproduced"), "{valid:?}");
    assert!(valid.container_ms > 0);
    assert!(
        !valid.passed && !valid.patch_applied,
        "no patch mode: {valid:?}"
    );

    let backwards = check(&mut client, request(RESOLVED_AT_BASE, "")).await;
    assert!(!backwards.valid, "{backwards:?}");
    assert_eq!(backwards.reason, "prints_resolved_at_base");
    assert!(backwards.resolved && !backwards.reproduced, "{backwards:?}");
    assert!(!backwards.detail.is_empty());

    // Nothing submitted: rejected without a container.
    let empty = check(&mut client, request("  \n", "")).await;
    assert!(!empty.valid);
    assert_eq!(empty.reason, "no_submission");
    assert_eq!(empty.container_ms, 0);
    assert_eq!(empty.exit_code, None);

    // Larger than a generated test may be (256 KiB) but within the server's submission maximum: rejected
    // `too_large` without a container.
    let huge = format!("{VALID_TEST}\n# {}\n", "x".repeat(300 << 10));
    let too_large = check(&mut client, request(&huge, "")).await;
    assert!(!too_large.valid, "{too_large:?}");
    assert_eq!(too_large.reason, "too_large");
    assert_eq!(too_large.container_ms, 0);

    // The same check on an inline task row answers the same.
    let row = std::fs::read_to_string(crate::episode::fixtures_file())
        .unwrap()
        .lines()
        .find(|line| line.contains(SPANS))
        .unwrap()
        .to_owned();
    let inline = check(
        &mut client,
        proto::CheckTestRequest {
            task: Some(Task::TaskJson(row)),
            ..request(VALID_TEST, "")
        },
    )
    .await;
    assert!(inline.valid, "{inline:?}");

    // Test-based selection: the valid test passes the gold patch.
    let passed = check(&mut client, request(VALID_TEST, &gold)).await;
    assert!(passed.passed && passed.patch_applied, "{passed:?}");
    assert!(
        passed.resolved && !passed.reproduced && !passed.other_issues,
        "{passed:?}"
    );
    assert!(passed.output_tail.contains("Issue resolved"), "{passed:?}");
    assert!(
        !passed.valid && passed.reason.is_empty(),
        "patch mode: {passed:?}"
    );
    assert!(passed.detail.contains("passed"), "{passed:?}");
    assert!(passed.container_ms > 0);

    // A patch that does not apply: the test does not run.
    let unapplied = check(&mut client, request(VALID_TEST, UNAPPLIABLE_PATCH)).await;
    assert!(
        !unapplied.patch_applied && !unapplied.passed,
        "{unapplied:?}"
    );
    assert!(
        !unapplied.reproduced && !unapplied.resolved,
        "{unapplied:?}"
    );
    assert_eq!(unapplied.exit_code, None);
    assert!(unapplied.detail.contains("did not apply"), "{unapplied:?}");

    assert_eq!(
        containers_of(&server.owner).await,
        0,
        "a CheckTest container was left behind"
    );
    let log = server.terminate(Duration::from_secs(30)).await;
    assert!(
        log.contains("checktest-"),
        "container names in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_test_bounds_the_time_limit_and_sizes_and_answers_unknown_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(
        dir.path(),
        "  testgen_timeout_secs: 2\nmaxima:\n  testgen_timeout_secs: 30\nmemory:\n  max_submission_bytes: 4096\n",
        &[],
    );
    let mut client = client(&server.url()).await;

    let status = refused(
        &mut client,
        proto::CheckTestRequest {
            timeout_secs: 31,
            ..request(VALID_TEST, "")
        },
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("timeout_secs"), "{status:?}");
    assert!(status.message().contains("30"), "{status:?}");

    let status = refused(
        &mut client,
        proto::CheckTestRequest {
            task: Some(Task::TaskId("no-such-task".into())),
            ..request(VALID_TEST, "")
        },
    )
    .await;
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = refused(
        &mut client,
        proto::CheckTestRequest {
            image: "swe-env/no-such-image:latest".into(),
            ..request(VALID_TEST, "")
        },
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("no-such-image"), "{status:?}");

    let large = format!("{VALID_TEST}\n# {}\n", "x".repeat(5000));
    let status = refused(&mut client, request(&large, "")).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`script`"), "{status:?}");
    let large_patch = format!("{UNAPPLIABLE_PATCH}{}", "+x\n".repeat(2000));
    let status = refused(&mut client, request(VALID_TEST, &large_patch)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`patch`"), "{status:?}");
    let status = refused(&mut client, request("", UNAPPLIABLE_PATCH)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("`script`"), "{status:?}");

    // No `timeout_secs`: the configured default (2 s) kills a script that never ends.
    let started = Instant::now();
    let hung = check(&mut client, request(HANGS, "")).await;
    assert!(!hung.valid, "{hung:?}");
    assert_eq!(hung.reason, "timeout");
    assert!(hung.timed_out, "{hung:?}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the 2 s default was not applied: {:?}",
        started.elapsed()
    );

    assert_eq!(
        containers_of(&server.owner).await,
        0,
        "a CheckTest container was left behind"
    );
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_test_is_refused_during_the_drain_and_a_check_in_flight_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), "", &["--shutdown-grace-secs", "30"]);
    let mut client = client(&server.url()).await;
    // Reproduces the issue after a few seconds: still running when the drain starts.
    let slow = format!("import time\ntime.sleep(4)\n{VALID_TEST}");
    let mut in_flight_client = client.clone();
    let in_flight = tokio::spawn(async move {
        in_flight_client
            .check_test(request(&slow, ""))
            .await
            .map(tonic::Response::into_inner)
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pid = server.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let sent = Instant::now();
    loop {
        // Before the server saw the signal, an empty script is answered (rejected `no_submission` without a
        // container); only a refusal ends the loop.
        match client.check_test(request("", "")).await {
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(status.message().contains("shutting down"), "{status:?}");
                break;
            }
            Ok(reply) => assert!(
                sent.elapsed() < Duration::from_secs(3),
                "CheckTest still admitted: {reply:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = in_flight.await.unwrap().unwrap();
    assert!(finished.valid, "{finished:?}");
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop after the drain:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "server exit {exit}; log:\n{}", server.log());
    assert_eq!(
        containers_of(&server.owner).await,
        0,
        "a CheckTest container was left behind"
    );
}
