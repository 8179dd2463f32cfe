//! A test-generation episode over gRPC (issue 17): RunEpisode with kind `EPISODE_KIND_TESTGEN` against the scripted
//! model server, on the spans fixture. The model is given the built-in test-generation prompt and a submit tool that
//! takes a file as is; it creates a script, submits its path and ends; with `grade` the result carries the script's
//! validity check (a fresh container at the base commit), never a grading against the task's tests. A valid script
//! and one that prints `Issue resolved` at the base commit; an unknown kind and `grade_on_submit` with the kind are
//! refused; no container is left behind.

use std::time::Duration;

use swe_env::server::proto;
use swe_env::server::proto::run_episode_event::Event;
use swe_env_model::scripted::{Script, ScriptedReply, ScriptedServer};
use tonic::Code;

use crate::server::{client, containers_of, create_request, run_events, Client, ServerProc, SPANS};
use crate::testgen::{RESOLVED_AT_BASE, VALID_TEST};

const TEST_PATH: &str = "/testbed/test_issue.py";

/// The model's turns: `script` created at [`TEST_PATH`], its path submitted, a final answer.
fn testgen_turns(script: &str) -> Vec<ScriptedReply> {
    [
        format!("<tool: create>\n{TEST_PATH}\n{script}\n</tool>"),
        format!("<tool: submit>\n{TEST_PATH}\n</tool>"),
        "## Reproduction\nThe script prints `Issue reproduced` on the current code.".to_owned(),
    ]
    .into_iter()
    .map(ScriptedReply::text)
    .collect()
}

fn request(endpoint: &str, kind: i32, grade_on_submit: bool) -> proto::RunEpisodeRequest {
    let mut episode = create_request(SPANS);
    episode.grade_on_submit = grade_on_submit;
    proto::RunEpisodeRequest {
        episode: Some(episode),
        model: Some(proto::ModelEndpoint {
            endpoint: endpoint.into(),
            model: "scripted".into(),
            mode: "chat-text".into(),
            ..Default::default()
        }),
        grade: true,
        kind,
    }
}

/// Runs `request` to its end; the result and the started episode's id.
async fn run(
    client: &mut Client,
    request: proto::RunEpisodeRequest,
) -> (proto::RunEpisodeResult, String) {
    let events = run_events(client, request).await;
    let Event::Started(started) = &events[0] else {
        panic!("first event {:?}", events[0])
    };
    let Some(Event::Result(result)) = events.last() else {
        panic!("last event {:?}", events.last())
    };
    (result.clone(), started.episode_id.clone())
}

/// The content of message `index` of a recorded chat request.
fn message(request: &swe_env_model::scripted::RecordedRequest, index: usize) -> (String, String) {
    let message = &request.body["messages"][index];
    (
        message["role"].as_str().unwrap_or_default().to_owned(),
        message["content"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn run_episode_testgen_checks_the_submitted_script_instead_of_grading() {
    let valid_model = ScriptedServer::start(Script::new(testgen_turns(VALID_TEST)))
        .await
        .unwrap();
    let resolved_model = ScriptedServer::start(Script::new(testgen_turns(RESOLVED_AT_BASE)))
        .await
        .unwrap();
    // A model that answers without writing or submitting anything.
    let silent_model = ScriptedServer::start(Script::new(vec![ScriptedReply::text(
        "## Report\nI could not reproduce the issue.",
    )]))
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "grading:\n  network_mode: none\n  testgen_timeout_secs: 30\nepisode:\n  cmd_timeout_secs: 60\n\
             model_endpoints:\n  valid:\n    base_url: {}\n    models: [scripted]\n  \
             resolved:\n    base_url: {}\n    models: [scripted]\n  \
             silent:\n    base_url: {}\n    models: [scripted]\n",
            valid_model.base_url(),
            resolved_model.base_url(),
            silent_model.base_url()
        ),
    )
    .unwrap();
    let server = ServerProc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let mut client = client(&server.url()).await;
    let testgen = proto::EpisodeKind::Testgen as i32;

    // Refused before anything starts: grading a script against the real tests, and an unknown kind.
    let status = client
        .run_episode(request("valid", testgen, true))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("grade_on_submit"),
        "{}",
        status.message()
    );
    let status = client
        .run_episode(request("valid", 7, false))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("kind"), "{}", status.message());
    assert_eq!(valid_model.request_count(), 0);

    // A valid reproduction script.
    let (result, episode_id) = run(&mut client, request("valid", testgen, false)).await;
    let episode = result.episode.as_ref().unwrap();
    assert_eq!(episode.status, "submitted", "{episode:?}");
    assert!(
        result.grade.is_none(),
        "a testgen episode is never graded: {result:?}"
    );
    let check = result.check.as_ref().expect("the script was checked");
    assert!(check.valid, "{check:?}");
    assert_eq!(check.reason, "");
    assert!(
        check.reproduced && !check.resolved && !check.other_issues,
        "{check:?}"
    );
    assert!(check.container_ms > 0, "{check:?}");
    // The submission is the script file as is, not a diff of the repository.
    let submission = client
        .get_submission(proto::GetSubmissionRequest {
            episode_id: episode_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .submission;
    assert_eq!(submission.trim(), VALID_TEST.trim());
    // The model was given the test-generation prompt and the file submit tool.
    let requests = valid_model.requests();
    assert_eq!(requests.len(), 3);
    let (role, system) = message(&requests[0], 0);
    assert_eq!(role, "system");
    assert!(system.contains("Submits the file [path]"), "{system}");
    assert!(!system.contains("Submits the patch file"), "{system}");
    let (role, user) = message(&requests[0], 1);
    assert_eq!(role, "user");
    assert!(user.contains("Issue reproduced"), "{user}");
    assert!(user.contains("reproduces the issue"), "{user}");
    assert!(user.contains("/testbed/test_issue.py"), "{user}");
    let trajectory = swe_env::trajectory::read_trajectory(
        &server.trajectory_dir().join(format!("{episode_id}.jsonl")),
    )
    .await
    .unwrap();
    let end = trajectory.end.unwrap();
    assert!(
        end.rewards.is_none(),
        "no grading rewards: {:?}",
        end.rewards
    );

    // A script that prints `Issue resolved` on the buggy code is not valid.
    let (result, _) = run(&mut client, request("resolved", testgen, false)).await;
    assert!(result.grade.is_none(), "{result:?}");
    let check = result.check.as_ref().expect("the script was checked");
    assert!(!check.valid, "{check:?}");
    assert_eq!(check.reason, "prints_resolved_at_base", "{check:?}");
    assert!(check.resolved, "{check:?}");

    // No submission still gets a verdict (the trainer's reward is never missing).
    let (result, _) = run(&mut client, request("silent", testgen, false)).await;
    assert!(result.grade.is_none(), "{result:?}");
    let check = result
        .check
        .as_ref()
        .expect("a missing script is checked too");
    assert!(!check.valid, "{check:?}");
    assert_eq!(check.reason, "no_submission", "{check:?}");

    assert_eq!(containers_of(&server.owner).await, 0);
    server.terminate(Duration::from_secs(30)).await;
}
