//! Nothing derived from a task's tests is reachable by an agent that can still act, over every grading path: a
//! hostile agent starts a watcher that copies grading material out as soon as it appears, and after grading it
//! searches the whole filesystem for the lines the test patch adds. In-place grading seals the container (all
//! processes killed, shell and tools closed); grade-on-submit ends the episode; Grade and RunEpisode grade in a
//! fresh container; `run-benchmark` removes the episode's container before grading (`benchmark::attempt::run_agent`).

use std::time::Duration;

use swe_env::episode::{Action, EndInfo, StepMeta};
use swe_env::grade::{grade_submission, GradeConfig};
use swe_env::server::proto;
use swe_env::trajectory::EpisodeStatus;
use swe_env_sandbox::SandboxError;

use crate::common::{engine, start_episode, unique_id};
use crate::episode::fixture;
use crate::server::{
    bash, client, close, containers_of, create, create_request, text_step, ServerProc, SPANS,
};

/// The lines the test patch adds (long enough to be specific): what an agent would need to game the tests.
fn needles(test_patch: &str) -> Vec<String> {
    let needles: Vec<String> = test_patch
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(|l| l[1..].trim().to_owned())
        .filter(|l| l.len() >= 12)
        .collect();
    assert!(needles.len() >= 3, "too few needles in {test_patch}");
    needles
}

/// `text` as a `printf %b` argument of `\xHH` escapes: it never appears in plain form in a command line.
fn escaped(text: &str) -> String {
    text.bytes().map(|b| format!("\\x{b:02x}")).collect()
}

/// The hostile search: every needle found anywhere on the filesystem is printed as `LEAK:<needle>`. The needles
/// travel escaped through a pipe, so the search itself never writes them into a file it would then find.
fn search_command(needles: &[String]) -> String {
    let encoded = escaped(&(needles.join("\n") + "\n"));
    format!(
        "grep -rhoF -f <(printf %b '{encoded}') / --exclude-dir=proc --exclude-dir=sys \
         --exclude-dir=dev 2>/dev/null | sort -u | sed 's/^/LEAK:/'; echo SEARCH-DONE"
    )
}

/// A watcher that copies every grading file it can see to /var/tmp/.leak, its pid in /var/tmp/.leak.pid.
const WATCHER: &str =
    "(while :; do cat /eval.sh /tmp/swe_env_model.patch /tmp/patch.diff >> /var/tmp/.leak \
    2>/dev/null; sleep 0.02; done) >/dev/null 2>&1 & echo $! > /var/tmp/.leak.pid; echo started";

fn leaks(output: &str) -> Vec<&str> {
    assert!(
        output.contains("SEARCH-DONE"),
        "the search did not run: {output}"
    );
    output.lines().filter(|l| l.starts_with("LEAK:")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_place_grading_seals_the_container_before_any_test_material_enters() {
    let engine = engine().await;
    let dir = tempfile::tempdir().unwrap();
    let instance = fixture(SPANS);
    let needles = needles(&instance.test_patch);
    let mut episode = start_episode(
        &engine,
        dir.path(),
        &unique_id("leak-inplace"),
        instance.clone(),
    )
    .await;
    let sandbox = episode.sandbox().unwrap().clone();
    let search = search_command(&needles);
    let baseline = sandbox
        .run_command(&search, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(
        leaks(&String::from_utf8_lossy(&baseline.output)),
        Vec::<&str>::new(),
        "the task image itself must not hold the test patch"
    );
    let started = sandbox
        .run_command(WATCHER, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&started.output).contains("started"));

    let grade = GradeConfig {
        in_place: true,
        network_mode: "none".into(),
        ..GradeConfig::default()
    };
    let graded = grade_submission(
        &engine,
        Some(&sandbox),
        &instance,
        Some(&instance.patch),
        &grade,
        &unique_id("g"),
    )
    .await
    .unwrap();
    assert!(graded.resolved, "{}", graded.test_output);

    // The agent can no longer act: not through the shell, not through a tool step.
    let refused = sandbox
        .run_command(&search, Duration::from_secs(120))
        .await
        .unwrap_err();
    assert!(matches!(refused, SandboxError::Sealed { .. }), "{refused}");
    let step = episode
        .step(
            Action::Text(format!("<tool: bash>\n{search}\n</tool>")),
            StepMeta::default(),
        )
        .await;
    match step {
        Err(_) => {}
        Ok(outcome) => {
            let text = &outcome.record.observation;
            assert!(
                !text.contains("LEAK:") && !text.contains("SEARCH-DONE"),
                "a step ran after grading: {text}"
            );
        }
    }
    // The grader's own view (not the agent's): the watcher died before the material arrived, and the material
    // IS there, so the search above would have found it (the positive control).
    let check = sandbox
        .exec(
            &[
                "bash",
                "-c",
                "kill -0 \"$(cat /var/tmp/.leak.pid)\" 2>/dev/null && echo ALIVE; wc -c < /var/tmp/.leak 2>/dev/null || echo 0",
            ],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let check = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        !check.contains("ALIVE"),
        "the agent's watcher survived: {check}"
    );
    assert_eq!(check.trim(), "0", "the watcher copied grading material");
    let control = sandbox
        .exec(&["bash", "-c", &search], None, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(
        !leaks(&String::from_utf8_lossy(&control.stdout)).is_empty(),
        "positive control: the search must find the eval script the grader left"
    );
    episode
        .finish(EndInfo::status(EpisodeStatus::Submitted))
        .await
        .unwrap();
}

fn start_server(dir: &std::path::Path, in_place: bool) -> ServerProc {
    let config = dir.join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "grading:\n  network_mode: none\n  in_place: {in_place}\n  test_timeout_secs: 300\n\
             episode:\n  cmd_timeout_secs: 120\n"
        ),
    )
    .unwrap();
    ServerProc::start(dir, &["--config", config.to_str().unwrap()])
}

async fn step_text(client: &mut crate::server::Client, request: proto::StepRequest) -> String {
    client
        .step(request)
        .await
        .unwrap()
        .into_inner()
        .observation
        .unwrap()
        .text
}

/// Grade-on-submit (fresh or in place) ends the episode, so the hostile search after grading is refused; a Grade
/// call of the same task leaves nothing in a live episode of it.
async fn grade_paths_leave_nothing_reachable(in_place: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), in_place);
    let mut client = client(&server.url()).await;
    let instance = fixture(SPANS);
    let search = search_command(&needles(&instance.test_patch));

    // Grade-on-submit.
    let id = create(
        &mut client,
        proto::CreateEpisodeRequest {
            grade_on_submit: true,
            ..create_request(SPANS)
        },
    )
    .await
    .episode_id;
    let baseline = step_text(&mut client, bash(&id, &search)).await;
    assert_eq!(leaks(&baseline), Vec::<&str>::new());
    assert!(step_text(&mut client, bash(&id, WATCHER))
        .await
        .contains("started"));
    let patch = escaped(&instance.patch);
    step_text(
        &mut client,
        bash(&id, &format!("printf %b '{patch}' > /tmp/fix.patch")),
    )
    .await;
    let out = client
        .step(text_step(&id, "<tool: submit>\n/tmp/fix.patch\n</tool>"))
        .await
        .unwrap()
        .into_inner();
    assert!(out.submitted && out.done, "{:?}", out.observation);
    assert_eq!(out.end_status, "submitted");
    assert_eq!(out.reward, Some(1.0));
    for _ in 0..2 {
        let refused = client.step(bash(&id, &search)).await.unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
    }
    let trajectory =
        swe_env::trajectory::read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
            .await
            .unwrap();
    assert_eq!(trajectory.steps.len(), 4, "no step after the graded submit");
    assert_eq!(
        trajectory.end.unwrap().grading.unwrap()["swe_env"]["rule_set"],
        "swebench-4.1"
    );

    // Grade RPC while an episode of the same task is live: nothing reaches the episode's container.
    let live = create(&mut client, create_request(SPANS)).await.episode_id;
    assert!(step_text(&mut client, bash(&live, WATCHER))
        .await
        .contains("started"));
    let graded = client
        .grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
            patch: instance.patch.clone(),
            image: String::new(),
            rules: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(graded.resolved);
    let after = step_text(&mut client, bash(&live, &search)).await;
    assert_eq!(leaks(&after), Vec::<&str>::new(), "{after}");
    let copied = step_text(&mut client, bash(&live, "wc -c < /var/tmp/.leak")).await;
    assert!(copied.contains("\n0\n"), "{copied}");
    close(&mut client, &live).await;
    assert_eq!(containers_of(&server.owner).await, 0);
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_grading_paths_leave_nothing_for_the_agent_fresh_containers() {
    grade_paths_leave_nothing_reachable(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_grading_paths_leave_nothing_for_the_agent_in_place() {
    grade_paths_leave_nothing_reachable(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grade_rules_are_selectable_per_call_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path(), false);
    let mut client = client(&server.url()).await;
    let instance = fixture(SPANS);
    for rules in ["swebench-4.1", "swebench-5", "hardened"] {
        let graded = client
            .grade(proto::GradeRequest {
                task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
                patch: instance.patch.clone(),
                image: String::new(),
                rules: rules.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(graded.resolved, "{rules}: {}", graded.report_json);
        let report: serde_json::Value = serde_json::from_str(&graded.report_json).unwrap();
        assert_eq!(report["swe_env"]["rule_set"], rules, "{report}");
    }
    let refused = client
        .grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
            patch: instance.patch.clone(),
            image: String::new(),
            rules: "swebench-4".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("rules"), "{}", refused.message());
    server.terminate(Duration::from_secs(30)).await;
}
