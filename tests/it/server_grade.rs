//! Rewards over gRPC: Grade on a patch, grade-on-submit in Step, and a server-driven episode (RunEpisode) against
//! the scripted model server, graded at the end. The server reads a YAML config (grading without network).

use std::time::Duration;

use swe_env::server::proto;
use swe_env::server::proto::run_episode_event::Event;
use swe_env_model::scripted::{Script, ScriptedServer};

use crate::episode::fixture;
use crate::server::{
    bash, client, close, containers_of, create, create_request, run_events, submit_diff, text_step,
    ServerProc, SPANS,
};

fn start_server(dir: &std::path::Path) -> ServerProc {
    start_server_with(dir, "")
}

/// Like [`start_server`], with more YAML (e.g. the `model_endpoints` RunEpisode may use).
fn start_server_with(dir: &std::path::Path, extra_yaml: &str) -> ServerProc {
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!("grading:\n  network_mode: none\n  test_timeout_secs: 300\nepisode:\n  cmd_timeout_secs: 60\n{extra_yaml}"),
    )
    .unwrap();
    ServerProc::start(dir, &["--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn grade_and_grade_on_submit_return_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let mut client = client(&server.url()).await;
    let gold = fixture(SPANS).patch;

    let graded = client
        .grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
            patch: gold.clone(),
            image: String::new(),
            rules: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(graded.resolved, "{}", graded.report_json);
    assert_eq!(graded.resolution, "FULL");
    assert_eq!(graded.rewards["execution"], 1.0);
    let report: serde_json::Value = serde_json::from_str(&graded.report_json).unwrap();
    assert_eq!(report["resolved"], true);

    let graded = client
        .grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
            patch: String::new(),
            image: String::new(),
            rules: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!graded.resolved);

    // Grade on submit: the submitting Step carries the reward; episode_end carries rewards and report.
    let id = create(
        &mut client,
        proto::CreateEpisodeRequest {
            grade_on_submit: true,
            ..create_request(SPANS)
        },
    )
    .await
    .episode_id;
    let out = client.step(bash(&id, "true")).await.unwrap().into_inner();
    assert_eq!(out.reward, None, "no reward before a submission");
    let edit = "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>";
    client.step(text_step(&id, edit)).await.unwrap();
    let edit = "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n        if merged and start < merged[-1][1]:\n=======\n        if merged and start <= merged[-1][1]:\n>>>>>>> REPLACE\n</tool>";
    client.step(text_step(&id, edit)).await.unwrap();
    let out = submit_diff(&mut client, &id).await;
    assert!(out.submitted);
    assert_eq!(out.reward, Some(1.0), "resolved submission earns +1");
    // Grading ended the episode: no Step can follow it.
    assert!(out.done, "grade-on-submit ends the episode");
    assert_eq!(out.end_status, "submitted");
    let refused = client.step(bash(&id, "true")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    let closed = close(&mut client, &id).await;
    assert_eq!(closed.episode.unwrap().status, "submitted");
    let trajectory =
        swe_env::trajectory::read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
            .await
            .unwrap();
    let end = trajectory.end.unwrap();
    assert_eq!(end.rewards.unwrap()["resolved"], true);
    assert_eq!(end.grading.unwrap()["resolved"], true);
    assert_eq!(containers_of(&server.owner).await, 0);
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_episode_streams_steps_of_a_model_driven_episode_then_the_graded_result() {
    let model = ScriptedServer::start(Script::new(crate::model_loop::text_script()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server_with(
        dir.path(),
        &format!(
            "model_endpoints:\n  scripted:\n    base_url: {}\n    models: [scripted]\n",
            model.base_url()
        ),
    );
    let mut client = client(&server.url()).await;

    // Bad model settings are refused before anything starts.
    let status = client
        .run_episode(proto::RunEpisodeRequest {
            episode: Some(create_request(SPANS)),
            model: Some(proto::ModelEndpoint {
                base_url: "ftp://x".into(),
                model: "m".into(),
                ..Default::default()
            }),
            grade: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("model.base_url"),
        "{}",
        status.message()
    );

    let events = run_events(
        &mut client,
        proto::RunEpisodeRequest {
            episode: Some(create_request(SPANS)),
            model: Some(proto::ModelEndpoint {
                endpoint: "scripted".into(),
                model: "scripted".into(),
                mode: "chat-text".into(),
                ..Default::default()
            }),
            grade: true,
            ..Default::default()
        },
    )
    .await;
    let Event::Started(started) = &events[0] else {
        panic!("first event {:?}", events[0])
    };
    assert_eq!(started.instance_id, SPANS);
    let steps: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Step(step) => Some(step),
            _ => None,
        })
        .collect();
    assert_eq!(steps.len(), 6);
    assert_eq!(steps[5].observation.as_ref().unwrap().tool, "submit");
    let Some(Event::Result(result)) = events.last() else {
        panic!("last event {:?}", events.last())
    };
    let episode = result.episode.as_ref().unwrap();
    assert_eq!(episode.status, "submitted");
    assert!(!episode.live);
    let grade = result.grade.as_ref().expect("graded");
    assert!(grade.resolved, "{}", grade.report_json);
    // The graded episode takes no more Steps.
    let refused = client
        .step(bash(&started.episode_id, "cat /eval.sh"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    let trajectory = swe_env::trajectory::read_trajectory(
        &server
            .trajectory_dir()
            .join(format!("{}.jsonl", started.episode_id)),
    )
    .await
    .unwrap();
    let end = trajectory.end.unwrap();
    assert!(end.final_answer.is_some());
    assert_eq!(end.rewards.unwrap()["resolved"], true);
    assert_eq!(containers_of(&server.owner).await, 0);
    server.terminate(Duration::from_secs(30)).await;
}
