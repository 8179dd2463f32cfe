//! Operators set the limits, clients ask within them: every client-settable number above the server's `maxima` is
//! INVALID_ARGUMENT naming the field and the maximum (one case per maximum, with a positive control at the
//! maximum); RunEpisode only calls endpoints the operator listed, and an endpoint's API key only ever reaches that
//! endpoint; a command cannot outlive the episode's wall-clock budget. All through a real `swe-env serve`.

use std::time::{Duration, Instant};

use swe_env::server::proto;
use swe_env::server::proto::run_episode_event::Event;
use swe_env_model::scripted::{Script, ScriptedServer};
use tonic::Code;

use crate::server::{
    bash, client, close, containers_of, create, create_request, run_events, Client, ServerProc,
    SPANS,
};

fn start_with_yaml(dir: &std::path::Path, yaml: &str, env: &[(&str, String)]) -> ServerProc {
    let config = dir.join("serve.yaml");
    std::fs::write(&config, yaml).unwrap();
    ServerProc::start_with_env(dir, &["--config", config.to_str().unwrap()], env)
}

/// Maxima below the built-in defaults (so each case is distinct), with episode defaults under them. `cpus` is left
/// at its default: the host's CPU count.
const MAXIMA_YAML: &str = "\
episode:
  memory_bytes: 268435456
  pids_limit: 256
maxima:
  memory_bytes: 536870912
  pids_limit: 512
  cmd_timeout_secs: 300
  max_turns: 200
  context_tokens: 200000
  observation_cap_bytes: 200000
  wall_clock_secs: 7200
  labels: 4
  label_bytes: 32
  prompt_messages: 3
  prompt_bytes: 4096
  model_json_bytes: 1024
  task_json_bytes: 65536
  page_size: 50
  model_max_tokens: 4096
";

/// The status is INVALID_ARGUMENT and names the field, the maximum and the config key.
#[track_caller]
fn assert_above_maximum(case: &str, status: &tonic::Status, field: &str, max: &str, key: &str) {
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "{case}: {}",
        status.message()
    );
    let message = status.message();
    for needle in [
        format!("`{field}`"),
        format!("above the server maximum {max}"),
        format!("`maxima.{key}`"),
    ] {
        assert!(
            message.contains(&needle),
            "{case}: `{needle}` not in {message}"
        );
    }
}

fn limits(limits: proto::Limits) -> proto::CreateEpisodeRequest {
    proto::CreateEpisodeRequest {
        limits: Some(limits),
        ..create_request(SPANS)
    }
}

fn budgets(budgets: proto::Budgets) -> proto::CreateEpisodeRequest {
    proto::CreateEpisodeRequest {
        budgets: Some(budgets),
        ..create_request(SPANS)
    }
}

fn prompt(n: usize, bytes: usize) -> Vec<proto::PromptMessage> {
    (0..n)
        .map(|_| proto::PromptMessage {
            role: "user".into(),
            content: "p".repeat(bytes),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_above_the_operator_maxima_are_invalid_argument_naming_field_and_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_yaml(dir.path(), MAXIMA_YAML, &[]);
    let mut client = client(&server.url()).await;
    let host_cpus = std::thread::available_parallelism().unwrap().get();

    // (case, request, field, maximum, config key): one per CreateEpisode maximum.
    let create_cases: Vec<(&str, proto::CreateEpisodeRequest, &str, String, &str)> = vec![
        (
            "memory",
            limits(proto::Limits {
                memory_bytes: Some(1 << 40),
                ..Default::default()
            }),
            "limits.memory_bytes",
            "536870912".into(),
            "memory_bytes",
        ),
        (
            "cpus above the host count (the default maximum)",
            limits(proto::Limits {
                cpus: Some(host_cpus as f64 + 1.0),
                ..Default::default()
            }),
            "limits.cpus",
            host_cpus.to_string(),
            "cpus",
        ),
        (
            "pids",
            limits(proto::Limits {
                pids_limit: Some(4_194_304),
                ..Default::default()
            }),
            "limits.pids_limit",
            "512".into(),
            "pids_limit",
        ),
        (
            "command timeout",
            limits(proto::Limits {
                cmd_timeout_secs: Some(24 * 3600),
                ..Default::default()
            }),
            "limits.cmd_timeout_secs",
            "300".into(),
            "cmd_timeout_secs",
        ),
        (
            "turns",
            budgets(proto::Budgets {
                max_turns: Some(201),
                ..Default::default()
            }),
            "budgets.max_turns",
            "200".into(),
            "max_turns",
        ),
        (
            "context tokens",
            budgets(proto::Budgets {
                context_tokens: Some(1 << 32),
                ..Default::default()
            }),
            "budgets.context_tokens",
            "200000".into(),
            "context_tokens",
        ),
        (
            "observation cap",
            budgets(proto::Budgets {
                observation_cap_bytes: Some(16 << 20),
                ..Default::default()
            }),
            "budgets.observation_cap_bytes",
            "200000".into(),
            "observation_cap_bytes",
        ),
        (
            "wall clock",
            budgets(proto::Budgets {
                wall_clock_secs: Some(7 * 24 * 3600),
                ..Default::default()
            }),
            "budgets.wall_clock_secs",
            "7200".into(),
            "wall_clock_secs",
        ),
        (
            "label count",
            proto::CreateEpisodeRequest {
                labels: (0..5).map(|i| (format!("k{i}"), "v".into())).collect(),
                ..create_request(SPANS)
            },
            "labels",
            "4 labels".into(),
            "labels",
        ),
        (
            "label size",
            proto::CreateEpisodeRequest {
                labels: [("run".to_owned(), "v".repeat(33))].into(),
                ..create_request(SPANS)
            },
            "labels",
            "32 bytes".into(),
            "label_bytes",
        ),
        (
            "prompt messages",
            proto::CreateEpisodeRequest {
                prompt: prompt(4, 1),
                ..create_request(SPANS)
            },
            "prompt",
            "3 messages".into(),
            "prompt_messages",
        ),
        (
            "prompt size",
            proto::CreateEpisodeRequest {
                prompt: prompt(2, 2048),
                ..create_request(SPANS)
            },
            "prompt",
            "4096 bytes".into(),
            "prompt_bytes",
        ),
        (
            "model_json size",
            proto::CreateEpisodeRequest {
                model_json: format!("{{\"name\": \"{}\"}}", "m".repeat(1100)),
                ..create_request(SPANS)
            },
            "model_json",
            "1024 bytes".into(),
            "model_json_bytes",
        ),
        (
            "inline task size",
            proto::CreateEpisodeRequest {
                task: Some(proto::create_episode_request::Task::TaskJson(
                    " ".repeat(65537),
                )),
                ..Default::default()
            },
            "task_json",
            "65536 bytes".into(),
            "task_json_bytes",
        ),
    ];
    for (case, request, field, max, key) in create_cases {
        let status = client.create_episode(request).await.unwrap_err();
        assert_above_maximum(case, &status, field, &max, key);
    }

    // The other calls with a client-settable size.
    let status = client
        .grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskJson(" ".repeat(65537))),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_above_maximum(
        "grade task",
        &status,
        "task_json",
        "65536 bytes",
        "task_json_bytes",
    );
    let status = client
        .list_tasks(proto::ListTasksRequest {
            page_size: 51,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_above_maximum("list tasks", &status, "page_size", "50", "page_size");
    let status = client
        .list_episodes(proto::ListEpisodesRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_above_maximum("list episodes", &status, "page_size", "50", "page_size");
    let status = client
        .run_episode(proto::RunEpisodeRequest {
            episode: Some(create_request(SPANS)),
            model: Some(proto::ModelEndpoint {
                endpoint: "any".into(),
                model: "m".into(),
                max_tokens: Some(4097),
                ..Default::default()
            }),
            grade: false,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_above_maximum(
        "run episode max_tokens",
        &status,
        "model.max_tokens",
        "4096",
        "model_max_tokens",
    );
    assert_eq!(
        containers_of(&server.owner).await,
        0,
        "no refused request started a container"
    );

    // Positive control: every limit and budget exactly at its maximum is accepted and in force.
    let created = client
        .create_episode(proto::CreateEpisodeRequest {
            limits: Some(proto::Limits {
                memory_bytes: Some(536_870_912),
                cpus: Some(1.0),
                pids_limit: Some(512),
                cmd_timeout_secs: Some(300),
            }),
            budgets: Some(proto::Budgets {
                max_turns: Some(200),
                context_tokens: Some(200_000),
                observation_cap_bytes: Some(200_000),
                wall_clock_secs: Some(7200),
            }),
            labels: (0..4).map(|i| (format!("k{i}"), "v".repeat(32))).collect(),
            prompt: prompt(3, 1000),
            model_json: "{}".into(),
            ..create_request(SPANS)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.budget.unwrap().remaining_turns, 200);
    client
        .list_tasks(proto::ListTasksRequest {
            page_size: 50,
            ..Default::default()
        })
        .await
        .unwrap();
    close(&mut client, &created.episode_id).await;
    let trajectory = swe_env::trajectory::read_trajectory(
        &server
            .trajectory_dir()
            .join(format!("{}.jsonl", created.episode_id)),
    )
    .await
    .unwrap();
    let limits = &trajectory.start.unwrap().limits;
    assert_eq!(limits["memory_bytes"], 536_870_912);
    assert_eq!(limits["pids_limit"], 512);
    assert_eq!(limits["nano_cpus"], 1_000_000_000);
    assert_eq!(limits["cmd_timeout_secs"], 300);
    assert_eq!(limits["wall_clock_secs"], 7200);
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_whose_defaults_exceed_its_maxima_or_that_sets_the_removed_global_key_is_refused()
{
    let dir = tempfile::tempdir().unwrap();
    for (yaml, needle) in [
        ("maxima:\n  memory_bytes: 1048576\n", "maxima.memory_bytes"),
        ("model_api_key_env: OPENAI_API_KEY\n", "model_api_key_env"),
        (
            "model_endpoints:\n  a:\n    base_url: http://127.0.0.1:9/v1\n    api_key_env: SWE_ENV_TEST_SURELY_UNSET_KEY\n",
            "SWE_ENV_TEST_SURELY_UNSET_KEY",
        ),
    ] {
        let config = dir.path().join("serve.yaml");
        std::fs::write(&config, yaml).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_swe-env"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .env_remove("SWE_ENV_TEST_SURELY_UNSET_KEY")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{yaml}: {stderr}");
        assert!(stderr.contains(needle), "{yaml}: {stderr}");
    }
}

const KEY_ENV: &str = "SWE_ENV_TEST_ENDPOINT_KEY";
const KEY: &str = "sk-operator-secret-0123";

/// Runs an episode to its end and returns the events.
async fn run_to_end(client: &mut Client, model: proto::ModelEndpoint) -> Vec<Event> {
    let events = run_events(
        client,
        proto::RunEpisodeRequest {
            episode: Some(create_request(SPANS)),
            model: Some(model),
            grade: false,
            ..Default::default()
        },
    )
    .await;
    assert!(
        matches!(events.last(), Some(Event::Result(_))),
        "{:?}",
        events.last()
    );
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn run_episode_sends_an_endpoint_key_only_to_that_endpoint_and_refuses_other_urls() {
    let allowed = ScriptedServer::start(Script::new(crate::model_loop::text_script()))
        .await
        .unwrap();
    let other = ScriptedServer::start(Script::new(crate::model_loop::text_script()))
        .await
        .unwrap();
    let endpoints = format!(
        "model_endpoints:\n  local:\n    base_url: {}\n    models: [scripted, other-model]\n    api_key_env: {KEY_ENV}\n    concurrency: 4\n",
        allowed.base_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_yaml(dir.path(), &endpoints, &[(KEY_ENV, KEY.to_owned())]);
    let mut client = client(&server.url()).await;

    // Refused before anything starts: a client URL, an unknown name, a model the endpoint does not allow, none.
    let refusals = [
        (
            proto::ModelEndpoint {
                base_url: other.base_url(),
                model: "scripted".into(),
                ..Default::default()
            },
            "model.base_url",
            "allow_client_base_urls",
        ),
        (
            proto::ModelEndpoint {
                endpoint: "nope".into(),
                model: "scripted".into(),
                ..Default::default()
            },
            "model.endpoint",
            "`local`",
        ),
        (
            proto::ModelEndpoint {
                endpoint: "local".into(),
                model: "gpt-4".into(),
                ..Default::default()
            },
            "model.model",
            "scripted, other-model",
        ),
        (
            proto::ModelEndpoint {
                endpoint: "local".into(),
                base_url: other.base_url(),
                ..Default::default()
            },
            "model.base_url",
            "not both",
        ),
        (proto::ModelEndpoint::default(), "model.endpoint", "`local`"),
    ];
    for (model, field, hint) in refusals {
        let status = client
            .run_episode(proto::RunEpisodeRequest {
                episode: Some(create_request(SPANS)),
                model: Some(model.clone()),
                grade: false,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{model:?}");
        assert!(
            status.message().contains(field) && status.message().contains(hint),
            "{model:?}: {}",
            status.message()
        );
    }
    assert_eq!(other.request_count(), 0, "a refused URL was called");
    assert_eq!(containers_of(&server.owner).await, 0);

    // By name (model defaulting to the endpoint's first): the key goes to the configured endpoint.
    let events = run_to_end(
        &mut client,
        proto::ModelEndpoint {
            endpoint: "local".into(),
            mode: "chat-text".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(events.iter().any(|e| matches!(e, Event::Step(_))));
    let requests = allowed.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(request.body["model"], "scripted");
    }
    assert_eq!(other.request_count(), 0);
    server.terminate(Duration::from_secs(30)).await;

    // With client URLs allowed, a client URL is called, and never with a key.
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_yaml(
        dir.path(),
        &format!("{endpoints}allow_client_base_urls: true\n"),
        &[(KEY_ENV, KEY.to_owned())],
    );
    let mut client = crate::server::client(&server.url()).await;
    run_to_end(
        &mut client,
        proto::ModelEndpoint {
            base_url: other.base_url(),
            model: "scripted".into(),
            mode: "chat-text".into(),
            ..Default::default()
        },
    )
    .await;
    let requests = other.requests();
    assert!(!requests.is_empty());
    for request in &requests {
        assert_eq!(request.header("authorization"), None, "{request:?}");
    }
    assert!(requests.iter().all(|r| !r.body.to_string().contains(KEY)));
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_command_cannot_outlive_the_wall_clock_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_with_yaml(dir.path(), "", &[]);
    let mut client = client(&server.url()).await;
    let created = create(
        &mut client,
        budgets(proto::Budgets {
            wall_clock_secs: Some(3),
            ..Default::default()
        }),
    )
    .await;
    let started = Instant::now();
    let out = client
        .step(bash(&created.episode_id, "sleep 30"))
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "sleep 30 ran {took:?} in a 3 s episode"
    );
    assert!(out.observation.unwrap().timed_out);
    assert!(out.done);
    assert_eq!(out.end_status, "wall_clock");
    let refused = client
        .step(bash(&created.episode_id, "true"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    server.terminate(Duration::from_secs(30)).await;
}
