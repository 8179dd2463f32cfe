//! `swe-env serve --metrics-listen`: a real server under a small load (concurrent episodes, steps of known tools,
//! failing calls, a Prewarm, gradings, RunEpisodes against the scripted model server), its `/metrics` scraped over a
//! real socket while episodes are live and after, every value checked exactly; and a bad metrics address refused
//! with exit 2 before anything starts.

use std::time::Duration;

use swe_env::server::proto;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::episode::{fixture, fixtures_file};
use crate::server::{bash, client, close, containers_of, create_request, run_events, text_step};
use crate::server::{ServerProc, SPANS};

/// Episodes created at once.
const EPISODES: usize = 4;

/// An HTTP/1.1 answer: status code, content type, body.
struct HttpReply {
    status: u16,
    content_type: String,
    body: String,
}

/// Sends `method path` to the metrics endpoint of `url` (`http://ADDR/metrics`) and reads the whole answer.
async fn http(url: &str, method: &str, path: &str) -> HttpReply {
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("metrics url {url}"));
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut raw))
        .await
        .expect("the metrics endpoint answers")
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("status line of {head}"));
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    HttpReply {
        status,
        content_type,
        body: body.to_owned(),
    }
}

/// A scrape of `/metrics`.
struct Scrape(String);

impl Scrape {
    async fn of(url: &str) -> Self {
        let reply = http(url, "GET", "/metrics").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.content_type,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
        Self(reply.body)
    }

    /// The value of the sample `series` (`name` or `name{labels}` exactly as exposed); panics when absent.
    fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no sample {series} in:\n{}", self.0))
    }

    /// The value of the sample `series`, when exposed.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(
                value
                    .split(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("sample line {line}")),
            )
        })
    }
}

fn run_request(endpoint: &str, max_turns: u32) -> proto::RunEpisodeRequest {
    let mut episode = create_request(SPANS);
    episode.budgets = Some(proto::Budgets {
        max_turns: Some(max_turns),
        ..Default::default()
    });
    proto::RunEpisodeRequest {
        episode: Some(episode),
        model: Some(proto::ModelEndpoint {
            endpoint: endpoint.into(),
            model: "scripted".into(),
            mode: "chat-text".into(),
            ..Default::default()
        }),
        grade: false,
        kind: proto::EpisodeKind::Solve as i32,
    }
}

fn reply_with_usage(text: &str, prompt_tokens: u64, completion_tokens: u64) -> ScriptedReply {
    ScriptedReply::Completion(ScriptedCompletion {
        text: text.to_owned(),
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens,
        }),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_episodes_steps_errors_gradings_pools_and_model_calls_under_load() {
    // Two model calls with known usage, then the turn budget (2) ends the episode; and a model that refuses.
    let model = ScriptedServer::start(Script::new(vec![
        reply_with_usage("<tool: bash>\necho one\n</tool>", 11, 5),
        reply_with_usage("<tool: bash>\necho two\n</tool>", 13, 6),
    ]))
    .await
    .unwrap();
    let refusing =
        ScriptedServer::start(Script::new(Vec::new()).with_fallback(ScriptedReply::status(400)))
            .await
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "pool:\n  min_host_available_bytes: 0\nmodel_endpoints:\n  ok:\n    base_url: {}\n    models: [scripted]\n  \
             refusing:\n    base_url: {}\n    models: [scripted]\n",
            model.base_url(),
            refusing.base_url()
        ),
    )
    .unwrap();
    let server = ServerProc::start(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let url = server
        .metrics_url
        .clone()
        .expect("a `metrics http://ADDR/metrics` line on stdout");
    let mut client = client(&server.url()).await;

    // Nothing yet: every closed label set is there at 0.
    let idle = Scrape::of(&url).await;
    assert_eq!(idle.value("swe_env_episodes_live"), 0.0);
    assert_eq!(idle.value("swe_env_episodes_created_total"), 0.0);
    for tool in ["bash", "edit", "create", "submit", "invalid"] {
        assert_eq!(
            idle.value(&format!(
                "swe_env_step_duration_seconds_count{{tool=\"{tool}\"}}"
            )),
            0.0
        );
    }
    assert_eq!(
        idle.value("swe_env_gradings_total{outcome=\"resolved\"}"),
        0.0
    );

    // Not /metrics, or not GET: 404.
    assert_eq!(http(&url, "GET", "/").await.status, 404);
    assert_eq!(http(&url, "GET", "/metrics/x").await.status, 404);
    assert_eq!(http(&url, "POST", "/metrics").await.status, 404);

    // A Prewarm of one container: ready in the task's pool gauge.
    let prewarmed = client
        .prewarm(proto::PrewarmRequest {
            task: Some(proto::prewarm_request::Task::TaskId(SPANS.into())),
            count: 1,
            wait: true,
            wait_timeout_ms: 120_000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(prewarmed.ready, 1, "{prewarmed:?}");
    let warm = Scrape::of(&url).await;
    let pool_ready = format!("swe_env_pool_ready_containers{{task=\"{SPANS}\"}}");
    assert_eq!(warm.value(&pool_ready), 1.0);
    assert_eq!(warm.value("swe_env_pool_fills_total{outcome=\"ok\"}"), 1.0);
    assert_eq!(
        warm.value("swe_env_pool_fills_total{outcome=\"error\"}"),
        0.0
    );

    // EPISODES episodes at once; one of them takes the pooled container.
    let creates = (0..EPISODES).map(|_| {
        let mut client = client.clone();
        async move {
            client
                .create_episode(create_request(SPANS))
                .await
                .unwrap()
                .into_inner()
        }
    });
    let episodes = futures_util::future::join_all(creates).await;
    let pooled = episodes.iter().filter(|e| e.warm).count();
    assert_eq!(pooled, 1, "the prewarmed container is taken once");

    // Per episode: two bash steps, a create, an action that does not parse; all at once across episodes.
    let steps = episodes.iter().map(|episode| {
        let mut client = client.clone();
        let id = episode.episode_id.clone();
        async move {
            for request in [
                bash(&id, "echo metrics"),
                text_step(&id, "<tool: create>\n/tmp/metrics.txt\nhello\n</tool>"),
                bash(&id, "cat /tmp/metrics.txt"),
                text_step(&id, "no tool call here"),
            ] {
                let reply = client.step(request).await.unwrap().into_inner();
                assert!(!reply.done, "{reply:?}");
            }
        }
    });
    futures_util::future::join_all(steps).await;

    // Failing calls: unknown task (NOT_FOUND), a malformed and an unknown episode id, bad grading rules.
    for _ in 0..2 {
        let status = client
            .create_episode(create_request("no-such-task-1"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    let status = client.step(bash("", "true")).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .step(bash("ep-00000000000000000000000000000000", "true"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let instance = fixture(SPANS);
    let grade = |patch: &str, rules: &str| proto::GradeRequest {
        task: Some(proto::grade_request::Task::TaskId(SPANS.into())),
        patch: patch.to_owned(),
        image: String::new(),
        rules: rules.to_owned(),
    };
    let status = client
        .grade(grade(&instance.patch, "no-such-rules"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // During: the live episodes, each step by its tool, each error by method and code, the pool emptied.
    let live = Scrape::of(&url).await;
    let n = EPISODES as f64;
    assert_eq!(live.value("swe_env_episodes_live"), n);
    assert_eq!(live.value("swe_env_episodes_created_total"), n);
    let step_count = |scrape: &Scrape, tool: &str| {
        scrape.value(&format!(
            "swe_env_step_duration_seconds_count{{tool=\"{tool}\"}}"
        ))
    };
    assert_eq!(step_count(&live, "bash"), 2.0 * n);
    assert_eq!(step_count(&live, "create"), n);
    assert_eq!(step_count(&live, "invalid"), n);
    assert_eq!(step_count(&live, "edit"), 0.0);
    assert_eq!(step_count(&live, "submit"), 0.0);
    // Every step lands in the +Inf bucket, and took some time.
    assert_eq!(
        live.value("swe_env_step_duration_seconds_bucket{le=\"+Inf\",tool=\"bash\"}"),
        2.0 * n
    );
    assert!(live.value("swe_env_step_duration_seconds_sum{tool=\"bash\"}") > 0.0);
    assert_eq!(
        live.value("swe_env_container_starts_total{source=\"pooled\"}"),
        1.0
    );
    assert_eq!(
        live.value("swe_env_container_starts_total{source=\"fresh\"}"),
        n - 1.0
    );
    assert_eq!(
        live.value("swe_env_container_start_duration_seconds_count{source=\"fresh\"}"),
        n - 1.0
    );
    assert_eq!(
        live.value("swe_env_rpc_errors_total{method=\"CreateEpisode\",code=\"NOT_FOUND\"}"),
        2.0
    );
    assert_eq!(
        live.value("swe_env_rpc_errors_total{method=\"Step\",code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(
        live.value("swe_env_rpc_errors_total{method=\"Step\",code=\"NOT_FOUND\"}"),
        1.0
    );
    assert_eq!(
        live.value("swe_env_rpc_errors_total{method=\"Grade\",code=\"INVALID_ARGUMENT\"}"),
        1.0
    );
    assert_eq!(live.value(&pool_ready), 0.0);
    assert_eq!(
        live.get("swe_env_episodes_ended_total{status=\"closed\"}"),
        None
    );

    // Gradings: the reference patch resolves, no patch does not.
    let resolved = client
        .grade(grade(&instance.patch, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(resolved.resolved, "{}", resolved.report_json);
    let unresolved = client.grade(grade("", "")).await.unwrap().into_inner();
    assert!(!unresolved.resolved, "{}", unresolved.report_json);

    for episode in &episodes {
        close(&mut client, &episode.episode_id).await;
    }

    // RunEpisode: two answered calls (tokens as reported) ending on the turn budget; a refused call.
    let events = run_events(&mut client, run_request("ok", 2)).await;
    let Some(proto::run_episode_event::Event::Result(result)) = events.last() else {
        panic!("last event {:?}", events.last())
    };
    assert_eq!(result.episode.as_ref().unwrap().status, "max_turns");
    let events = run_events(&mut client, run_request("refusing", 2)).await;
    let Some(proto::run_episode_event::Event::Result(result)) = events.last() else {
        panic!("last event {:?}", events.last())
    };
    assert_eq!(result.episode.as_ref().unwrap().status, "model_error");

    let after = Scrape::of(&url).await;
    assert_eq!(after.value("swe_env_episodes_live"), 0.0);
    assert_eq!(after.value("swe_env_episodes_created_total"), n + 2.0);
    assert_eq!(
        after.value("swe_env_episodes_ended_total{status=\"closed\"}"),
        n
    );
    assert_eq!(
        after.value("swe_env_episodes_ended_total{status=\"max_turns\"}"),
        1.0
    );
    assert_eq!(
        after.value("swe_env_episodes_ended_total{status=\"model_error\"}"),
        1.0
    );
    assert_eq!(
        after.value("swe_env_gradings_total{outcome=\"resolved\"}"),
        1.0
    );
    assert_eq!(
        after.value("swe_env_gradings_total{outcome=\"unresolved\"}"),
        1.0
    );
    assert_eq!(
        after.value("swe_env_gradings_total{outcome=\"error\"}"),
        0.0
    );
    assert_eq!(after.value("swe_env_grading_duration_seconds_count"), 2.0);
    assert!(after.value("swe_env_grading_duration_seconds_sum") > 0.0);
    assert_eq!(
        after.value("swe_env_model_calls_total{outcome=\"ok\"}"),
        2.0
    );
    assert_eq!(
        after.value("swe_env_model_calls_total{outcome=\"error\"}"),
        1.0
    );
    assert_eq!(
        after.value("swe_env_model_tokens_total{kind=\"prompt\"}"),
        24.0
    );
    assert_eq!(
        after.value("swe_env_model_tokens_total{kind=\"completion\"}"),
        11.0
    );
    // The RunEpisode steps are the model's (not gRPC Steps): the step histogram is unchanged.
    assert_eq!(step_count(&after, "bash"), 2.0 * n);
    assert_eq!(containers_of(&server.owner).await, 0);

    // The endpoint stops with the server.
    server.terminate(Duration::from_secs(60)).await;
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the metrics endpoint still accepts connections after the server stopped"
    );
}

#[test]
fn a_bad_metrics_address_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in ["nonsense", "127.0.0.1:99999", ":9464", "127.0.0.1"] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_swe-env"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tasks"])
            .arg(fixtures_file())
            .arg("--trajectory-dir")
            .arg(dir.path().join("trajectories"))
            .args(["--metrics-listen", bad])
            .env_remove("SWE_ENV_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("metrics_listen"), "{bad}: {stderr}");
        assert!(stderr.contains("host:port"), "{bad}: {stderr}");
        assert!(output.stdout.is_empty(), "{bad}: nothing was served");
    }
}
