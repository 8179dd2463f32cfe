//! The gRPC service end to end: a real `swe-env serve` process on a loopback port, real tonic clients, real
//! Docker. Shared helpers here; load / crash tests in `server_load.rs`, the Python client in `server_python.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use swe_env::server::proto;
use swe_env::server::proto::env_service_client::EnvServiceClient;
use swe_env::trajectory::{read_trajectory, EpisodeStatus};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

use crate::common::engine;
use crate::episode::fixtures_file;

pub const TOKEN: &str = "test-token-0123456789";
pub const SPANS: &str = "swe-env-fixtures__spans-1";

/// A `swe-env serve` child process.
pub struct ServerProc {
    pub child: Child,
    pub addr: String,
    pub owner: String,
    /// The node id the server printed (`node ID`): the prefix of its episode ids.
    pub node_id: String,
    pub unix_socket: Option<PathBuf>,
    /// The metrics URL (`http://ADDR/metrics`) when started with `--metrics-listen`.
    pub metrics_url: Option<String>,
    pub dir: PathBuf,
    stderr_path: PathBuf,
}

impl ServerProc {
    /// Starts a server with a token file, the fixture tasks and a trajectory dir under `dir`, plus `extra` flags.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// Like [`ServerProc::start`], with extra environment variables for the server process.
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Self {
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let stderr_path = dir.join(format!("server-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_swe-env"))
            .args(["serve", "--listen", "127.0.0.1:0", "--tasks"])
            .arg(fixtures_file())
            .arg("--token-file")
            .arg(&token_file)
            .arg("--trajectory-dir")
            .arg(dir.join("trajectories"))
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env_remove("SWE_ENV_TOKEN")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut addr, mut owner, mut unix_socket) = (None, None, None);
        let mut node_id = None;
        let mut metrics_url = None;
        while owner.is_none() {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("server exited before listening; its log:\n{log}");
            }
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("listening tcp ") {
                addr = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("listening unix ") {
                unix_socket = Some(PathBuf::from(rest));
            } else if let Some(rest) = line.strip_prefix("node ") {
                node_id = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("owner ") {
                owner = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("metrics ") {
                metrics_url = Some(rest.to_owned());
            }
        }
        Self {
            child,
            addr: addr.expect("tcp address line"),
            owner: owner.unwrap(),
            node_id: node_id.unwrap_or_default(),
            unix_socket,
            metrics_url,
            dir: dir.to_owned(),
            stderr_path,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn trajectory_dir(&self) -> PathBuf {
        self.dir.join("trajectories")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// SIGTERM, then waits (at most `limit`) for a clean exit. Async: polls with `tokio::time::sleep`, so the
    /// test's runtime keeps serving the other tasks (in-flight steps, streams) while the server drains.
    pub async fn terminate(mut self, limit: Duration) -> String {
        let pid = self.child.id().to_string();
        assert!(tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap()
            .success());
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "server exit {status}; log:\n{}",
                    self.log()
                );
                return self.log();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server did not stop within {limit:?} after SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn rand_suffix() -> String {
    format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// Adds the bearer token (or a given header value) to every call.
#[derive(Clone)]
pub struct Auth(pub Option<String>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
        }
        Ok(request)
    }
}

pub type Client = EnvServiceClient<InterceptedService<Channel, Auth>>;

pub async fn channel(url: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

pub async fn client(url: &str) -> Client {
    client_with(url, Some(format!("Bearer {TOKEN}"))).await
}

pub async fn client_with(url: &str, authorization: Option<String>) -> Client {
    EnvServiceClient::with_interceptor(channel(url).await, Auth(authorization))
}

pub fn create_request(task_id: &str) -> proto::CreateEpisodeRequest {
    proto::CreateEpisodeRequest {
        task: Some(proto::create_episode_request::Task::TaskId(
            task_id.to_owned(),
        )),
        ..Default::default()
    }
}

pub fn text_step(episode_id: &str, text: &str) -> proto::StepRequest {
    proto::StepRequest {
        episode_id: episode_id.to_owned(),
        action: Some(proto::step_request::Action::Text(text.to_owned())),
        ..Default::default()
    }
}

pub fn bash(episode_id: &str, command: &str) -> proto::StepRequest {
    text_step(episode_id, &format!("<tool: bash>\n{command}\n</tool>"))
}

/// Containers whose owner label is `owner`.
pub async fn containers_of(owner: &str) -> usize {
    engine()
        .await
        .labelled_containers()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.owner.as_ref().map(|o| o.to_label()).as_deref() == Some(owner))
        .count()
}

/// Creates an episode, retrying while the server answers RESOURCE_EXHAUSTED (honouring `retry-after-ms`).
/// Returns the reply and how many back-pressure answers it met.
pub async fn create_with_retry(
    client: &mut Client,
    request: proto::CreateEpisodeRequest,
) -> Result<(proto::CreateEpisodeResponse, u32), tonic::Status> {
    let mut backoffs = 0;
    loop {
        match client.create_episode(request.clone()).await {
            Ok(reply) => return Ok((reply.into_inner(), backoffs)),
            Err(status) if status.code() == Code::ResourceExhausted => {
                let wait: u64 = status
                    .metadata()
                    .get(swe_env::server::RETRY_AFTER_MS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .expect("RESOURCE_EXHAUSTED carries retry-after-ms");
                backoffs += 1;
                assert!(backoffs < 500, "still exhausted after {backoffs} retries");
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            Err(status) => return Err(status),
        }
    }
}

/// A fresh temp dir, a server started in it with `extra` flags, and a client holding the token. Keep the dir
/// alive as long as the server.
pub async fn start_with_client(extra: &[&str]) -> (tempfile::TempDir, ServerProc, Client) {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), extra);
    let client = client(&server.url()).await;
    (dir, server, client)
}

/// Opens an episode; panics on an error reply.
pub async fn create(
    client: &mut Client,
    request: proto::CreateEpisodeRequest,
) -> proto::CreateEpisodeResponse {
    client.create_episode(request).await.unwrap().into_inner()
}

/// Closes `episode_id` with no final answer; panics on an error reply.
pub async fn close(client: &mut Client, episode_id: &str) -> proto::CloseEpisodeResponse {
    client
        .close_episode(proto::CloseEpisodeRequest {
            episode_id: episode_id.to_owned(),
            final_answer: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Saves the working tree's diff to /tmp/fix.patch and submits that file; returns the submitting step's reply.
pub async fn submit_diff(client: &mut Client, episode_id: &str) -> proto::StepResponse {
    client
        .step(bash(episode_id, "git diff > /tmp/fix.patch"))
        .await
        .unwrap();
    client
        .step(text_step(
            episode_id,
            "<tool: submit>\n/tmp/fix.patch\n</tool>",
        ))
        .await
        .unwrap()
        .into_inner()
}

/// Runs an episode with RunEpisode and collects every event of its stream (each must come within 300 s).
pub async fn run_events(
    client: &mut Client,
    request: proto::RunEpisodeRequest,
) -> Vec<proto::run_episode_event::Event> {
    let mut stream = client.run_episode(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(300), stream.message())
        .await
        .expect("RunEpisode progresses")
        .unwrap()
    {
        events.push(event.event.unwrap());
    }
    events
}

/// Every record GetTrajectory streams for `episode_id` in `encoding`; panics on an error reply.
pub async fn trajectory_records(
    client: &mut Client,
    episode_id: &str,
    encoding: proto::RecordEncoding,
) -> Vec<proto::TrajectoryRecord> {
    let mut stream = client
        .get_trajectory(proto::GetTrajectoryRequest {
            episode_id: episode_id.to_owned(),
            encoding: encoding as i32,
        })
        .await
        .unwrap()
        .into_inner();
    let mut records = Vec::new();
    while let Some(record) = stream.message().await.unwrap() {
        records.push(record);
    }
    records
}

const EDIT_SORT: &str = "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>";

#[tokio::test(flavor = "multi_thread")]
async fn rust_client_fixes_a_fixture_and_reads_the_trajectory() {
    let (_dir, server, mut client) = start_with_client(&[]).await;

    let tasks = client
        .list_tasks(proto::ListTasksRequest {
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tasks.tasks.len(), 2);
    assert!(tasks.total_size >= 5);
    assert!(!tasks.next_page_token.is_empty());
    let rest = client
        .list_tasks(proto::ListTasksRequest {
            page_size: 100,
            page_token: tasks.next_page_token.clone(),
            include_rows: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.tasks.len() + 2, tasks.total_size as usize);
    assert!(rest.next_page_token.is_empty());
    assert!(rest.tasks.iter().all(|t| t.row_json.starts_with('{')));

    let created = create(&mut client, create_request(SPANS)).await;
    let id = created.episode_id.clone();
    assert_eq!(created.instance_id, SPANS);
    assert!(created.problem_statement.len() > 20);
    assert!(created.tool_specs_text.contains("<tool: bash>"));
    let tools: serde_json::Value = serde_json::from_str(&created.openai_tools_json).unwrap();
    assert_eq!(tools.as_array().unwrap().len(), 4);
    assert_eq!(created.budget.unwrap().remaining_turns, 128);

    let out = client
        .step(bash(&id, "grep -n 'for start, end' src/spans/ops.py"))
        .await
        .unwrap()
        .into_inner();
    let obs = out.observation.unwrap();
    assert!(
        obs.text.contains("for start, end in map(_check, ranges):"),
        "{}",
        obs.text
    );
    assert_eq!(obs.exit_code, Some(0));
    assert_eq!(obs.tool, "bash");
    assert_eq!(out.step_idx, 0);

    // A format error is an observation, not a gRPC error.
    let out = client
        .step(text_step(&id, "I will now edit the file."))
        .await
        .unwrap()
        .into_inner();
    let obs = out.observation.unwrap();
    assert!(obs.text.starts_with("FormatError:"), "{}", obs.text);
    assert!(!obs.format_error.is_empty());
    assert!(!out.done);

    let out = client
        .step(text_step(&id, EDIT_SORT))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.observation.unwrap().tool_error, "");
    // The second edit as a structured (OpenAI function-calling) call.
    let args = serde_json::json!({
        "path": "src/spans/ops.py",
        "search": "        if merged and start < merged[-1][1]:",
        "replace": "        if merged and start <= merged[-1][1]:",
    });
    let out = client
        .step(proto::StepRequest {
            episode_id: id.clone(),
            action: Some(proto::step_request::Action::ToolCall(proto::ToolCall {
                name: "edit".into(),
                arguments_json: args.to_string(),
                call_id: "call_1".into(),
            })),
            model_turn: Some(proto::ModelTurn {
                model_ms: Some(12),
                completion_tokens: Some(40),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let obs = out.observation.unwrap();
    assert_eq!(obs.tool, "edit");
    assert_eq!(obs.tool_error, "", "{}", obs.text);

    let out = client
        .step(bash(&id, "python -m pytest -q tests 2>&1 | tail -n 3"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.observation.unwrap().exit_code, Some(0));
    let out = submit_diff(&mut client, &id).await;
    // A plain submit keeps the episode live (`done` = the server ended it): the agent may revise.
    assert!(out.submitted && !out.done, "{:?}", out.observation);
    assert_eq!(out.end_status, "");

    let listed = client
        .list_episodes(proto::ListEpisodesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let info = listed
        .episodes
        .iter()
        .find(|e| e.episode_id == id)
        .expect("live episode listed");
    assert!(info.live);
    assert_eq!(info.n_steps, 7);
    // Listings carry the submission's size and hash; the patch comes from GetSubmission.
    #[allow(deprecated)]
    let listed_patch = info.submission.clone();
    assert_eq!(listed_patch, "", "no patch in listings");
    let submission = client
        .get_submission(proto::GetSubmissionRequest {
            episode_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(submission
        .submission
        .contains("sorted(map(_check, ranges))"));
    assert_eq!(info.submission_bytes, submission.submission.len() as u64);
    assert_eq!(info.submission_bytes, submission.submission_bytes);
    assert_eq!(info.submission_sha256, submission.submission_sha256);
    assert_eq!(info.submission_sha256.len(), 64);

    let closed = client
        .close_episode(proto::CloseEpisodeRequest {
            episode_id: id.clone(),
            final_answer: "Sorted the ranges and merged touching ones.".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .episode
        .unwrap();
    assert!(!closed.live);
    assert_eq!(closed.status, "submitted");
    // Closing again is not an error.
    let again = close(&mut client, &id).await;
    assert_eq!(again.episode.unwrap().status, "submitted");
    assert_eq!(containers_of(&server.owner).await, 0);

    // The trajectory back, as JSON lines and typed.
    let mut lines = Vec::new();
    for record in trajectory_records(&mut client, &id, proto::RecordEncoding::Json).await {
        match record.record.unwrap() {
            proto::trajectory_record::Record::Json(line) => lines.push(line),
            other => panic!("json requested, got {other:?}"),
        }
    }
    assert_eq!(lines.len(), 1 + 7 + 1);
    let records: Vec<swe_env::trajectory::Record> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    match records.last().unwrap() {
        swe_env::trajectory::Record::EpisodeEnd(end) => {
            assert_eq!(end.status, EpisodeStatus::Submitted);
            assert_eq!(
                end.final_answer.as_deref(),
                Some("Sorted the ranges and merged touching ones.")
            );
        }
        other => panic!("last record {other:?}"),
    }
    let typed: Vec<_> = trajectory_records(&mut client, &id, proto::RecordEncoding::Typed)
        .await
        .into_iter()
        .map(|record| record.record.unwrap())
        .collect();
    use proto::trajectory_record::Record as R;
    assert!(
        matches!(&typed[0], R::Start(s) if s.instance_id == SPANS && s.image_id.starts_with("sha256:"))
    );
    assert!(
        matches!(&typed[4], R::Step(s) if s.tool_call_id == "call_1" && s.model_ms == Some(12))
    );
    assert!(
        matches!(&typed[8], R::End(e) if e.status == "submitted" && e.submission.contains("sorted("))
    );

    // The same file on disk.
    let on_disk = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    assert_eq!(on_disk.steps.len(), 7);

    let log = server.terminate(Duration::from_secs(30)).await;
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_is_required_health_is_open_and_bad_input_gets_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProc::start(dir.path(), &[]);
    let url = server.url();

    // No token, a wrong token, a malformed header: UNAUTHENTICATED, on every kind of call.
    for authorization in [
        None,
        Some("Bearer wrong".to_owned()),
        Some(TOKEN.to_owned()),
    ] {
        let mut anon = client_with(&url, authorization.clone()).await;
        let status = anon
            .list_tasks(proto::ListTasksRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{authorization:?}");
        let status = anon
            .create_episode(create_request(SPANS))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        let status = anon.step(bash("ep-x", "true")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // Health needs no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&url).await);
    let check = |service: &str| tonic_health::pb::HealthCheckRequest {
        service: service.to_owned(),
    };
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(
        health.check(check("")).await.unwrap().into_inner().status,
        serving
    );
    assert_eq!(
        health
            .check(check("swe_env.v1.EnvService"))
            .await
            .unwrap()
            .into_inner()
            .status,
        serving
    );
    // Reflection (v1 and v1alpha) lists the service, with the token.
    let services = reflection_services(&url).await;
    assert!(
        services.contains(&"swe_env.v1.EnvService".to_owned()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );

    let mut client = client(&url).await;
    let code_of = |result: Result<tonic::Response<_>, tonic::Status>| -> (Code, String) {
        let status = result.map(|_: tonic::Response<()>| ()).unwrap_err();
        (status.code(), status.message().to_owned())
    };
    let mut cases: Vec<(&str, Code, &str, (Code, String))> = Vec::new();
    macro_rules! case {
        ($name:expr, $code:expr, $needle:expr, $call:expr) => {
            cases.push((
                $name,
                $code,
                $needle,
                code_of($call.await.map(|r| r.map(|_| ()))),
            ));
        };
    }
    case!(
        "no task",
        Code::InvalidArgument,
        "task",
        client.create_episode(proto::CreateEpisodeRequest::default())
    );
    case!(
        "unknown task",
        Code::NotFound,
        "no-such-task",
        client.create_episode(create_request("no-such-task"))
    );
    case!(
        "inline task not json",
        Code::InvalidArgument,
        "task_json",
        client.create_episode(proto::CreateEpisodeRequest {
            task: Some(proto::create_episode_request::Task::TaskJson(
                "{not json".into()
            )),
            ..Default::default()
        })
    );
    case!(
        "inline task missing field",
        Code::InvalidArgument,
        "task_json",
        client.create_episode(proto::CreateEpisodeRequest {
            task: Some(proto::create_episode_request::Task::TaskJson(
                r#"{"instance_id": "x"}"#.into()
            )),
            ..Default::default()
        })
    );
    case!(
        "zero turns",
        Code::InvalidArgument,
        "budgets.max_turns",
        client.create_episode(proto::CreateEpisodeRequest {
            budgets: Some(proto::Budgets {
                max_turns: Some(0),
                ..Default::default()
            }),
            ..create_request(SPANS)
        })
    );
    case!(
        "negative memory",
        Code::InvalidArgument,
        "limits.memory_bytes",
        client.create_episode(proto::CreateEpisodeRequest {
            limits: Some(proto::Limits {
                memory_bytes: Some(-1),
                ..Default::default()
            }),
            ..create_request(SPANS)
        })
    );
    case!(
        "bad tool format",
        Code::InvalidArgument,
        "tool_format",
        client.create_episode(proto::CreateEpisodeRequest {
            tool_format: 7,
            ..create_request(SPANS)
        })
    );
    case!(
        "bad model json",
        Code::InvalidArgument,
        "model_json",
        client.create_episode(proto::CreateEpisodeRequest {
            model_json: "[".into(),
            ..create_request(SPANS)
        })
    );
    case!(
        "missing image",
        Code::FailedPrecondition,
        "swe-env/does-not-exist",
        client.create_episode(proto::CreateEpisodeRequest {
            image: "swe-env/does-not-exist:latest".into(),
            ..create_request(SPANS)
        })
    );
    case!(
        "step unknown episode",
        Code::NotFound,
        "ep-unknown",
        client.step(bash("ep-unknown", "true"))
    );
    case!(
        "step bad episode id",
        Code::InvalidArgument,
        "episode_id",
        client.step(bash("../../etc/passwd", "true"))
    );
    case!(
        "step no episode id",
        Code::InvalidArgument,
        "episode_id",
        client.step(bash("", "true"))
    );
    case!(
        "step no action",
        Code::InvalidArgument,
        "action",
        client.step(proto::StepRequest {
            episode_id: "ep-unknown".into(),
            ..Default::default()
        })
    );
    case!(
        "trajectory unknown",
        Code::NotFound,
        "ep-unknown",
        client.get_trajectory(proto::GetTrajectoryRequest {
            episode_id: "ep-unknown".into(),
            encoding: 0
        })
    );
    case!(
        "trajectory bad encoding",
        Code::InvalidArgument,
        "encoding",
        client.get_trajectory(proto::GetTrajectoryRequest {
            episode_id: "ep-unknown".into(),
            encoding: 9
        })
    );
    case!(
        "close unknown",
        Code::NotFound,
        "ep-unknown",
        client.close_episode(proto::CloseEpisodeRequest {
            episode_id: "ep-unknown".into(),
            final_answer: String::new()
        })
    );
    case!(
        "bad page token",
        Code::InvalidArgument,
        "page_token",
        client.list_tasks(proto::ListTasksRequest {
            page_token: "zzz".into(),
            ..Default::default()
        })
    );
    case!(
        "bad episodes page token",
        Code::InvalidArgument,
        "page_token",
        client.list_episodes(proto::ListEpisodesRequest {
            page_token: "-1".into(),
            ..Default::default()
        })
    );
    case!(
        "grade no task",
        Code::InvalidArgument,
        "task",
        client.grade(proto::GradeRequest::default())
    );
    case!(
        "grade unknown task",
        Code::NotFound,
        "nope",
        client.grade(proto::GradeRequest {
            task: Some(proto::grade_request::Task::TaskId("nope".into())),
            ..Default::default()
        })
    );
    case!(
        "run episode without episode",
        Code::InvalidArgument,
        "episode",
        client.run_episode(proto::RunEpisodeRequest::default())
    );

    // A closed episode refuses steps.
    let created = create(&mut client, create_request(SPANS)).await;
    close(&mut client, &created.episode_id).await;
    case!(
        "step closed episode",
        Code::FailedPrecondition,
        "closed",
        client.step(bash(&created.episode_id, "true"))
    );

    let mut failures = Vec::new();
    for (name, code, needle, (got, message)) in &cases {
        if got != code || !message.contains(needle) {
            failures.push(format!(
                "{name}: expected {code:?} naming `{needle}`, got {got:?}: {message}"
            ));
        }
        assert!(
            !message.contains("/var/lib/docker") && !message.contains("panicked"),
            "{name}: {message}"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Still healthy, still serving.
    assert_eq!(
        health.check(check("")).await.unwrap().into_inner().status,
        serving
    );
    client
        .list_tasks(proto::ListTasksRequest::default())
        .await
        .unwrap();
    let log = server.terminate(Duration::from_secs(30)).await;
    assert!(!log.contains("panicked"), "{log}");
}

async fn reflection_services(url: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    let mut reflection = ServerReflectionClient::with_interceptor(
        channel(url).await,
        Auth(Some(format!("Bearer {TOKEN}"))),
    );
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    // v1alpha answers too (older grpcurl versions use it).
    {
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as Alpha;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest as AlphaReflectionRequest;
        let mut alpha =
            Alpha::with_interceptor(channel(url).await, Auth(Some(format!("Bearer {TOKEN}"))));
        let request = AlphaReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut responses = alpha
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .unwrap()
            .into_inner();
        assert!(responses.message().await.unwrap().is_some());
    }
    list.service.into_iter().map(|s| s.name).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn step_with_the_same_request_id_runs_once() {
    let (_dir, server, mut client) = start_with_client(&[]).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;
    let mut append = bash(&id, "echo ran >> /tmp/count; sleep 0.3; wc -l < /tmp/count");
    append.request_id = "req-1".into();

    // Sequential retry: the stored outcome comes back, marked replayed.
    let first = client.step(append.clone()).await.unwrap().into_inner();
    let again = client.step(append.clone()).await.unwrap().into_inner();
    assert!(!first.replayed && again.replayed);
    assert_eq!(first.observation, again.observation);
    assert_eq!(first.step_idx, again.step_idx);

    // Concurrent duplicates (a retry racing the original): still one run.
    append.request_id = "req-2".into();
    let mut other = client.clone();
    let (a, b) = tokio::join!(client.step(append.clone()), other.step(append.clone()));
    let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
    assert!(a.replayed != b.replayed, "exactly one of the two ran");

    let count = client
        .step(bash(&id, "wc -l < /tmp/count"))
        .await
        .unwrap()
        .into_inner()
        .observation
        .unwrap();
    assert!(
        count.text.contains("<output>\n2\n"),
        "two distinct request ids ran, once each: {}",
        count.text
    );

    // The trajectory holds each request id once.
    close(&mut client, &id).await;
    let trajectory = read_trajectory(&server.trajectory_dir().join(format!("{id}.jsonl")))
        .await
        .unwrap();
    let ids: Vec<_> = trajectory
        .steps
        .iter()
        .filter_map(|s| s.request_id.clone())
        .collect();
    assert_eq!(ids, ["req-1", "req-2"]);
    // A retry after the episode ended still gets its stored reply.
    append.request_id = "req-2".into();
    assert!(client.step(append).await.unwrap().into_inner().replayed);
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn admission_limit_answers_resource_exhausted_and_idle_episodes_are_reaped() {
    let (_dir, server, mut client) =
        start_with_client(&["--max-episodes", "1", "--idle-ttl-secs", "2"]).await;
    let first = create(&mut client, create_request(SPANS)).await;
    let status = client
        .create_episode(create_request(SPANS))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let hint: u64 = status
        .metadata()
        .get(swe_env::server::RETRY_AFTER_MS)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(hint > 0);
    // Idle for longer than the TTL: the reaper ends it (cancelled), which frees the slot.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let status = client
        .step(bash(&first.episode_id, "true"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("cancelled"),
        "{}",
        status.message()
    );
    let (second, _) = create_with_retry(&mut client, create_request(SPANS))
        .await
        .unwrap();
    let trajectory = read_trajectory(
        &server
            .trajectory_dir()
            .join(format!("{}.jsonl", first.episode_id)),
    )
    .await
    .unwrap();
    assert_eq!(trajectory.end.unwrap().status, EpisodeStatus::Cancelled);
    close(&mut client, &second.episode_id).await;
    server.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_cancels_in_flight_steps_finishes_trajectories_and_removes_containers() {
    let (_dir, server, mut client) = start_with_client(&["--shutdown-grace-secs", "1"]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(create(&mut client, create_request(SPANS)).await.episode_id);
    }
    client.step(bash(&ids[0], "echo before")).await.unwrap();
    assert_eq!(containers_of(&server.owner).await, 3);
    // A long step in flight.
    let mut slow = client.clone();
    let slow_id = ids[1].clone();
    let in_flight = tokio::spawn(async move { slow.step(bash(&slow_id, "sleep 60")).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let owner = server.owner.clone();
    let trajectories = server.trajectory_dir();
    let started = std::time::Instant::now();
    let log = server.terminate(Duration::from_secs(30)).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "drain took {:?}",
        started.elapsed()
    );
    let status = in_flight.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(containers_of(&owner).await, 0, "{log}");
    for id in &ids {
        let trajectory = read_trajectory(&trajectories.join(format!("{id}.jsonl")))
            .await
            .unwrap();
        assert_eq!(
            trajectory.end.unwrap().status,
            EpisodeStatus::Cancelled,
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn get_capacity_names_the_node_counts_slots_and_reports_the_drain() {
    let (_dir, server, mut client) = start_with_client(&[
        "--node-id",
        "n-cap",
        "--max-episodes",
        "3",
        "--shutdown-grace-secs",
        "5",
    ])
    .await;
    assert_eq!(server.node_id, "n-cap");
    let capacity = |client: &mut Client| {
        let mut client = client.clone();
        async move {
            client
                .get_capacity(proto::GetCapacityRequest {})
                .await
                .unwrap()
                .into_inner()
        }
    };
    let idle = capacity(&mut client).await;
    assert_eq!(
        (
            idle.node_id.as_str(),
            idle.max_episodes,
            idle.live_episodes,
            idle.free_episodes,
            idle.draining
        ),
        ("n-cap", 3, 0, 3, false)
    );
    assert_eq!(idle.instance_id, server.owner);

    let first = create(&mut client, create_request(SPANS)).await.episode_id;
    let second = create(&mut client, create_request(SPANS)).await.episode_id;
    for id in [&first, &second] {
        assert!(id.starts_with("n-cap.ep-"), "{id}");
    }
    let busy = capacity(&mut client).await;
    assert_eq!((busy.live_episodes, busy.free_episodes), (2, 1));

    // A call for another node's episode is NOT_FOUND naming both nodes (a misrouted client learns where to go).
    let foreign = "n-other.ep-0123456789abcdef0123456789abcdef";
    let status = client.step(bash(foreign, "true")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(
        status
            .message()
            .contains("belongs to node n-other; this is node n-cap"),
        "{}",
        status.message()
    );
    let status = client
        .get_trajectory(proto::GetTrajectoryRequest {
            episode_id: foreign.into(),
            encoding: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("node n-other"), "{status:?}");

    close(&mut client, &second).await;
    assert_eq!(capacity(&mut client).await.live_episodes, 1);

    // SIGTERM with a live episode: during the grace period the node reports draining with no free slot.
    let owner = server.owner.clone();
    let terminating = tokio::spawn(server.terminate(Duration::from_secs(30)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let draining = loop {
        let report = capacity(&mut client).await;
        if report.draining || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(draining.draining, "{draining:?}");
    assert_eq!((draining.free_episodes, draining.live_episodes), (0, 1));
    let status = client
        .create_episode(create_request(SPANS))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    close(&mut client, &first).await;
    terminating.await.unwrap();
    assert_eq!(containers_of(&owner).await, 0);
}

#[test]
fn a_node_id_that_is_not_a_dns_label_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["serve", "--listen", "127.0.0.1:0", "--node-id", "Node_1"])
        .arg("--trajectory-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node_id") && stderr.contains("DNS label"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_node_restarted_under_its_id_refuses_its_lost_episodes_and_removes_their_containers(
) {
    let dir = tempfile::tempdir().unwrap();
    let flags = ["--node-id", "n-restart"];
    let mut first = ServerProc::start(dir.path(), &flags);
    let mut before = client(&first.url()).await;
    let lost = create(&mut before, create_request(SPANS)).await.episode_id;
    before.step(bash(&lost, "echo before")).await.unwrap();
    let old_owner = first.owner.clone();
    assert_eq!(containers_of(&old_owner).await, 1);
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // The same node again (same id, same trajectory directory): its start-up reconcile removes the dead
    // process's container and closes the trajectory; the lost episode is refused as one of an earlier run.
    let second = ServerProc::start(dir.path(), &flags);
    assert_eq!(second.node_id, "n-restart");
    assert_ne!(second.owner, old_owner);
    let mut client = client(&second.url()).await;
    for status in [
        client.step(bash(&lost, "echo after")).await.unwrap_err(),
        client
            .close_episode(proto::CloseEpisodeRequest {
                episode_id: lost.clone(),
                final_answer: String::new(),
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(
            status
                .message()
                .contains("ran on an earlier run of node n-restart"),
            "{}",
            status.message()
        );
    }
    let trajectory = read_trajectory(&second.trajectory_dir().join(format!("{lost}.jsonl")))
        .await
        .unwrap();
    assert_eq!(trajectory.steps.len(), 1);
    assert_eq!(trajectory.end.unwrap().status, EpisodeStatus::Crashed);
    assert_eq!(containers_of(&old_owner).await, 0);
    // An id this node never made is still NOT_FOUND.
    let status = client
        .step(bash(
            "n-restart.ep-00000000000000000000000000000000",
            "true",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    second.terminate(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_quiet_secs_keeps_a_slow_trainers_episode_alive_through_the_drain() {
    // A trainer that thinks 4 s between steps (a model call): with the default 2 s quiet period its idle episode
    // would be cancelled at once; with `drain_quiet_secs: 6` it steps and closes during the grace period.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("serve.yaml");
    std::fs::write(&config, "shutdown_grace_secs: 20\ndrain_quiet_secs: 6\n").unwrap();
    let server = ServerProc::start(dir.path(), &["--config", config.to_str().unwrap()]);
    let mut client = client(&server.url()).await;
    let id = create(&mut client, create_request(SPANS)).await.episode_id;
    let owner = server.owner.clone();
    let started = std::time::Instant::now();
    let terminating = tokio::spawn(server.terminate(Duration::from_secs(60)));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reply = client
        .step(bash(&id, "echo still-here"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        reply.observation.unwrap().text.contains("still-here"),
        "the step ran during the drain"
    );
    close(&mut client, &id).await;
    terminating.await.unwrap();
    // Closed, then quiet: the drain ended well before the 20 s grace.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(containers_of(&owner).await, 0);
}
