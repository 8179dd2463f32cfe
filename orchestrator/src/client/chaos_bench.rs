//! `swe-env bench chaos`: injects the faults a long RL run meets (clients that time out or cancel mid-step, agents
//! that hijack the shell, containers removed behind the server's back, hostile limits, a server killed and
//! restarted, a drain) against a real `swe-env serve` child process, while a bystander episode keeps stepping, and
//! prints one row per fault: did the service behave as specified, how many step records were lost or duplicated
//! (acknowledged steps vs the trajectory file), how many containers leaked.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::server::proto;
use crate::server::proto::env_service_client::EnvServiceClient;
use swe_env_sandbox::DockerEngine;

use super::grpc_bench::{Bearer, Client};

/// Arguments of `swe-env bench chaos`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  swe-env bench chaos --json")]
pub struct ChaosBenchArgs {
    /// Tasks file or source for the server (`fixtures`, a path, an alias).
    #[arg(long, default_value = "fixtures")]
    tasks: String,
    /// Task the episodes run.
    #[arg(long, default_value = "swe-env-fixtures__spans-1")]
    task: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One fault's outcome.
#[derive(Debug, Clone, serde::Serialize)]
struct FaultRow {
    fault: &'static str,
    survived: bool,
    /// Acknowledged steps missing from the trajectory plus steps recorded twice.
    lost_records: u64,
    leaked_containers: usize,
    detail: String,
}

/// A `swe-env serve` child process.
struct Server {
    child: Child,
    url: String,
    owner: String,
}

struct Lab {
    exe: PathBuf,
    dir: PathBuf,
    tasks: PathBuf,
    token: String,
    task: String,
    engine: DockerEngine,
}

impl Lab {
    async fn start_server(&self) -> anyhow::Result<Server> {
        let config = self.dir.join("serve.yaml");
        tokio::fs::write(
            &config,
            "shutdown_grace_secs: 8\ngrading:\n  network_mode: none\nepisode:\n  cmd_timeout_secs: 30\n",
        )
        .await?;
        let log = std::fs::File::create(self.dir.join("server.log"))?;
        let mut child = Command::new(&self.exe)
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&config)
            .arg("--tasks")
            .arg(&self.tasks)
            .arg("--token-file")
            .arg(self.dir.join("token"))
            .arg("--trajectory-dir")
            .arg(self.trajectory_dir())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting `swe-env serve`")?;
        let stdout = child.stdout.take().context("server stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut owner) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(60);
        while owner.is_none() || addr.is_none() {
            let line = tokio::time::timeout_at(deadline.into(), lines.next_line())
                .await
                .context("the server did not start within 60 s")??
                .context("the server exited before listening (see server.log)")?;
            if let Some(rest) = line.strip_prefix("listening tcp ") {
                addr = Some(rest.trim().to_owned());
            } else if let Some(rest) = line.strip_prefix("owner ") {
                owner = Some(rest.trim().to_owned());
            }
        }
        Ok(Server {
            child,
            url: format!("http://{}", addr.unwrap_or_default()),
            owner: owner.unwrap_or_default(),
        })
    }

    fn trajectory_dir(&self) -> PathBuf {
        self.dir.join("trajectories")
    }

    async fn client(&self, server: &Server) -> anyhow::Result<Client> {
        let channel = tonic::transport::Endpoint::from_shared(server.url.clone())?
            .connect()
            .await?;
        let bearer = Bearer(Some(format!("Bearer {}", self.token).parse()?));
        Ok(EnvServiceClient::with_interceptor(channel, bearer))
    }

    async fn create(&self, client: &mut Client) -> anyhow::Result<String> {
        self.create_with(client, None).await
    }

    /// An episode of the lab's task with these budgets (server defaults when `None`).
    async fn create_with(
        &self,
        client: &mut Client,
        budgets: Option<proto::Budgets>,
    ) -> anyhow::Result<String> {
        let reply = client
            .create_episode(proto::CreateEpisodeRequest {
                task: Some(proto::create_episode_request::Task::TaskId(
                    self.task.clone(),
                )),
                budgets,
                ..Default::default()
            })
            .await?
            .into_inner();
        Ok(reply.episode_id)
    }

    /// Steps of `episode` in its trajectory file.
    async fn recorded_steps(&self, episode: &str) -> u64 {
        let path = self.trajectory_dir().join(format!("{episode}.jsonl"));
        crate::trajectory::read_trajectory(&path)
            .await
            .map(|t| t.steps.len() as u64)
            .unwrap_or(0)
    }

    async fn end_status(&self, episode: &str) -> Option<String> {
        let path = self.trajectory_dir().join(format!("{episode}.jsonl"));
        let trajectory = crate::trajectory::read_trajectory(&path).await.ok()?;
        trajectory.end.map(|end| end.status.as_str().to_owned())
    }

    /// Containers of `episode` still present.
    async fn containers_of_episode(&self, episode: &str) -> usize {
        self.engine
            .labelled_containers()
            .await
            .map(|all| all.iter().filter(|c| c.episode == episode).count())
            .unwrap_or(usize::MAX)
    }

    async fn containers_of_owner(&self, owner: &str) -> usize {
        self.engine
            .labelled_containers()
            .await
            .map(|all| {
                all.iter()
                    .filter(|c| c.owner.as_ref().map(|o| o.to_label()).as_deref() == Some(owner))
                    .count()
            })
            .unwrap_or(usize::MAX)
    }
}

fn bash(episode: &str, command: &str, request_id: &str) -> proto::StepRequest {
    proto::StepRequest {
        episode_id: episode.to_owned(),
        request_id: request_id.to_owned(),
        action: Some(proto::step_request::Action::Text(format!(
            "<tool: bash>\n{command}\n</tool>"
        ))),
        ..Default::default()
    }
}

async fn step_text(client: &mut Client, request: proto::StepRequest) -> anyhow::Result<String> {
    let reply = client.step(request).await?.into_inner();
    Ok(reply.observation.map(|o| o.text).unwrap_or_default())
}

async fn close(client: &mut Client, episode: &str) {
    let _ = client
        .close_episode(proto::CloseEpisodeRequest {
            episode_id: episode.to_owned(),
            final_answer: String::new(),
        })
        .await;
}

/// Closes the episode and fills in the record and container counts of a row.
async fn settle(
    lab: &Lab,
    client: &mut Client,
    episode: &str,
    acknowledged: u64,
    fault: &'static str,
    survived: bool,
    detail: String,
) -> FaultRow {
    close(client, episode).await;
    let recorded = lab.recorded_steps(episode).await;
    FaultRow {
        fault,
        survived,
        lost_records: recorded.abs_diff(acknowledged),
        leaked_containers: lab.containers_of_episode(episode).await,
        detail: format!("{detail}; {acknowledged} steps acknowledged, {recorded} recorded"),
    }
}

const SENTINEL: &str = "__SWE_ENV";

async fn client_deadline(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let episode = lab.create(client).await?;
    let command = "sleep 1; echo x >> /tmp/chaos-count; wc -l < /tmp/chaos-count";
    let mut cut = tonic::Request::new(bash(&episode, command, "chaos-deadline-1"));
    cut.set_timeout(Duration::from_millis(200));
    let first = client.step(cut).await;
    let retried = client
        .step(bash(&episode, command, "chaos-deadline-1"))
        .await
        .map(|r| r.into_inner());
    let check = step_text(client, bash(&episode, "wc -l < /tmp/chaos-count", "")).await?;
    let replayed = retried.as_ref().map(|r| r.replayed).unwrap_or(false);
    let ran_once = check.contains("\n1\n");
    let clean = !check.contains(SENTINEL);
    let survived = first.is_err() && replayed && ran_once && clean;
    let detail = format!(
        "first call {}, retry replayed={replayed}, ran once={ran_once}, no sentinel={clean}",
        match &first {
            Ok(_) => "answered".to_owned(),
            Err(status) => format!("{:?}", status.code()),
        }
    );
    Ok(settle(
        lab,
        client,
        &episode,
        2,
        "client deadline mid-step",
        survived,
        detail,
    )
    .await)
}

async fn client_cancel_mid_write(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let episode = lab
        .create_with(
            client,
            Some(proto::Budgets {
                context_tokens: Some(1_000_000),
                ..Default::default()
            }),
        )
        .await?;
    let content = "0123456789abcdef\n".repeat(12_000); // ~200 KB; the action's text counts against the context budget
                                                       // Control: the same write, not cut, completes.
    let control = client
        .step(proto::StepRequest {
            episode_id: episode.clone(),
            action: Some(proto::step_request::Action::Text(format!(
                "<tool: create>\n/tmp/chaos-control.txt\n{content}</tool>"
            ))),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().observation.unwrap_or_default());
    let control_ok = match &control {
        Ok(observation) => observation.tool_error.is_empty(),
        Err(_) => false,
    };
    if !control_ok {
        let detail = format!("the uncut control write failed: {control:?}");
        return Ok(settle(
            lab,
            client,
            &episode,
            1,
            "client cancel mid-write",
            false,
            detail,
        )
        .await);
    }
    // What a complete write leaves: the control file's hash, as the tool wrote it.
    let control_sum = step_text(
        client,
        bash(&episode, "sha256sum < /tmp/chaos-control.txt", ""),
    )
    .await?;
    let Some(expected) = control_sum
        .split_whitespace()
        .find(|word| word.len() == 64 && word.chars().all(|c| c.is_ascii_hexdigit()))
        .map(str::to_owned)
    else {
        let detail = format!("cannot hash the control file: {control_sum:?}");
        return Ok(settle(
            lab,
            client,
            &episode,
            2,
            "client cancel mid-write",
            false,
            detail,
        )
        .await);
    };
    // Cut the call at growing deadlines, so some land while the file is being written.
    let (mut complete, mut absent, mut partial) = (0, 0, 0);
    let mut acknowledged = 2;
    for (i, deadline_ms) in [5u64, 15, 30, 60, 120].into_iter().enumerate() {
        let path = format!("/tmp/chaos-big-{i}.txt");
        let mut request = tonic::Request::new(proto::StepRequest {
            episode_id: episode.clone(),
            request_id: format!("chaos-write-{i}"),
            action: Some(proto::step_request::Action::Text(format!(
                "<tool: create>\n{path}\n{content}</tool>"
            ))),
            ..Default::default()
        });
        request.set_timeout(Duration::from_millis(deadline_ms));
        let _ = client.step(request).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let sum = step_text(
            client,
            bash(
                &episode,
                &format!("sha256sum < {path} 2>/dev/null || echo absent"),
                "",
            ),
        )
        .await?;
        acknowledged += 1;
        if sum.contains(&expected) {
            complete += 1;
            acknowledged += 1; // the write was accepted and must be recorded once
        } else if sum.contains("absent") {
            absent += 1;
        } else {
            partial += 1;
            acknowledged += 1;
        }
    }
    let detail = format!(
        "5 cut writes of 200 KB: {complete} complete, {absent} never started, {partial} PARTIAL"
    );
    Ok(settle(
        lab,
        client,
        &episode,
        acknowledged,
        "client cancel mid-write",
        partial == 0,
        detail,
    )
    .await)
}

/// A fault in two steps: what the hostile agent does (`setup`), then an ordinary command (`probe`) whose
/// observation `judge` reads.
async fn two_steps(
    lab: &Lab,
    client: &mut Client,
    fault: &'static str,
    setup: &str,
    probe: &str,
    judge: impl Fn(&str) -> (bool, String),
) -> anyhow::Result<FaultRow> {
    let episode = lab.create(client).await?;
    step_text(client, bash(&episode, setup, "")).await?;
    let after = step_text(client, bash(&episode, probe, "")).await?;
    let (survived, detail) = judge(&after);
    Ok(settle(lab, client, &episode, 2, fault, survived, detail).await)
}

async fn shell_hijack(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let setup = "eval() { echo hijacked; }; printf() { echo hijacked; }; builtin() { echo hijacked; }; echo defined";
    two_steps(
        lab,
        client,
        "agent redefines eval/printf/builtin",
        setup,
        "echo alive-$((6*7))",
        |after| {
            let survived = after.contains("alive-42")
                && !after.contains("hijacked")
                && !after.contains(SENTINEL);
            (
                survived,
                format!(
                    "next command's output: {:?}",
                    after.lines().take(3).collect::<Vec<_>>()
                ),
            )
        },
    )
    .await
}

async fn newline_cwd(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let setup = "mkdir -p $'/tmp/chaos\\ndir' && cd $'/tmp/chaos\\ndir'";
    two_steps(
        lab,
        client,
        "cd into a directory named with a newline",
        setup,
        "echo only-this-line",
        |after| {
            let stray = after
                .lines()
                .filter(|l| l.contains("dir") || l.contains(SENTINEL))
                .count();
            (
                after.contains("only-this-line") && stray == 0,
                format!("stray lines in the next observation: {stray}"),
            )
        },
    )
    .await
}

async fn nul_byte(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let episode = lab.create(client).await?;
    let reply = client
        .step(bash(&episode, "echo before\0after", ""))
        .await?
        .into_inner();
    let observation = reply.observation.unwrap_or_default();
    let refused = !observation.tool_error.is_empty() || observation.text.contains("NUL");
    let after = step_text(client, bash(&episode, "echo still-here", "")).await?;
    let survived = refused && after.contains("still-here");
    let detail = format!("tool error {:?}", observation.tool_error);
    Ok(settle(
        lab,
        client,
        &episode,
        2,
        "NUL byte in a command",
        survived,
        detail,
    )
    .await)
}

async fn container_removed(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let episode = lab.create(client).await?;
    step_text(client, bash(&episode, "true", "")).await?;
    let containers = lab.engine.labelled_containers().await?;
    for container in containers.iter().filter(|c| c.episode == episode) {
        lab.engine.remove_container(&container.id).await?;
    }
    let started = Instant::now();
    let next = tokio::time::timeout(
        Duration::from_secs(60),
        client.step(bash(&episode, "echo hello", "")),
    )
    .await;
    let (survived, detail) = match next {
        Err(_) => (false, "the next Step hung for 60 s".to_owned()),
        Ok(Ok(_)) => (
            false,
            "the next Step answered as if nothing happened".to_owned(),
        ),
        Ok(Err(status)) => {
            let message = status.message().to_lowercase();
            let clear = ["removed", "gone", "disappeared", "no such container"]
                .iter()
                .any(|w| message.contains(w));
            (
                clear,
                format!(
                    "{:?} after {} ms: {}",
                    status.code(),
                    started.elapsed().as_millis(),
                    status.message()
                ),
            )
        }
    };
    Ok(settle(
        lab,
        client,
        &episode,
        1,
        "container removed outside swe-env",
        survived,
        detail,
    )
    .await)
}

async fn hostile_limits(lab: &Lab, client: &mut Client) -> anyhow::Result<FaultRow> {
    let mut refused = Vec::new();
    let asks = [
        (
            "pids_limit 4194304",
            proto::Limits {
                pids_limit: Some(4_194_304),
                ..Default::default()
            },
        ),
        (
            "memory 1 TiB",
            proto::Limits {
                memory_bytes: Some(1 << 40),
                ..Default::default()
            },
        ),
        (
            "cmd timeout 24 h",
            proto::Limits {
                cmd_timeout_secs: Some(86_400),
                ..Default::default()
            },
        ),
        (
            "cpus 4096",
            proto::Limits {
                cpus: Some(4096.0),
                ..Default::default()
            },
        ),
    ];
    let mut leaked = 0;
    for (name, limits) in asks {
        let reply = client
            .create_episode(proto::CreateEpisodeRequest {
                task: Some(proto::create_episode_request::Task::TaskId(
                    lab.task.clone(),
                )),
                limits: Some(limits),
                ..Default::default()
            })
            .await;
        match reply {
            Err(status) if status.code() == tonic::Code::InvalidArgument => refused.push(name),
            Ok(reply) => {
                let id = reply.into_inner().episode_id;
                close(client, &id).await;
                leaked += lab.containers_of_episode(&id).await;
            }
            Err(_) => {}
        }
    }
    Ok(FaultRow {
        fault: "client asks for limits above the operator maxima",
        survived: refused.len() == 4,
        lost_records: 0,
        leaked_containers: leaked,
        detail: format!("refused with INVALID_ARGUMENT: {}", refused.join(", ")),
    })
}

/// A bystander episode stepping every 100 ms until told to stop; counts successes and failures.
struct Bystander {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// The first failures, for the report.
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    episode: String,
}

async fn start_bystander(lab: &Lab, server: &Server) -> anyhow::Result<Bystander> {
    let mut client = lab.client(server).await?;
    let episode = lab
        .create_with(
            &mut client,
            Some(proto::Budgets {
                max_turns: Some(1000),
                ..Default::default()
            }),
        )
        .await?;
    let (ok, failed, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = {
        let (ok, failed, stop, episode, errors) = (
            ok.clone(),
            failed.clone(),
            stop.clone(),
            episode.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                let expect = format!("tick-{i}");
                let error =
                    match step_text(&mut client, bash(&episode, &format!("echo {expect}"), ""))
                        .await
                    {
                        Ok(text) if text.contains(&expect) => None,
                        Ok(text) => Some(format!("wrong output {text:?}")),
                        Err(error) => Some(format!("{error:#}")),
                    };
                match error {
                    None => ok.fetch_add(1, Ordering::SeqCst),
                    Some(error) => {
                        if let Ok(mut errors) = errors.lock() {
                            if errors.len() < 3 {
                                errors.push(error);
                            }
                        }
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            close(&mut client, &episode).await;
        })
    };
    Ok(Bystander {
        ok,
        failed,
        errors,
        stop,
        task,
        episode,
    })
}

async fn crash_and_restart(lab: &Lab, server: Server) -> anyhow::Result<(FaultRow, Server)> {
    let mut client = lab.client(&server).await?;
    let mut episodes = Vec::new();
    for _ in 0..2 {
        let episode = lab.create(&mut client).await?;
        step_text(&mut client, bash(&episode, "echo before-crash", "")).await?;
        episodes.push(episode);
    }
    let old_owner = server.owner.clone();
    let mut child = server.child;
    child.start_kill()?;
    // Restart at once, while the old process may still be a zombie.
    let restarted = lab.start_server().await?;
    let _ = child.wait().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut leaked = lab.containers_of_owner(&old_owner).await;
    while leaked > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        leaked = lab.containers_of_owner(&old_owner).await;
    }
    let mut lost = 0;
    let mut statuses = Vec::new();
    for episode in &episodes {
        lost += lab.recorded_steps(episode).await.abs_diff(1);
        statuses.push(
            lab.end_status(episode)
                .await
                .unwrap_or_else(|| "none".into()),
        );
    }
    let survived = leaked == 0 && statuses.iter().all(|s| s == "crashed");
    let row = FaultRow {
        fault: "server kill -9, restarted at once",
        survived,
        lost_records: lost,
        leaked_containers: leaked,
        detail: format!("trajectories end {statuses:?}"),
    };
    Ok((row, restarted))
}

async fn drain(lab: &Lab, server: Server) -> anyhow::Result<FaultRow> {
    let mut client = lab.client(&server).await?;
    let episode = lab.create(&mut client).await?;
    let owner = server.owner.clone();
    let pid = server.child.id().context("server pid")?;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stepped = step_text(&mut client, bash(&episode, "echo during-grace", ""))
        .await
        .map(|t| t.contains("during-grace"))
        .unwrap_or(false);
    let refused = lab.create(&mut client).await.is_err();
    close(&mut client, &episode).await;
    let mut child = server.child;
    let exited = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let leaked = lab.containers_of_owner(&owner).await;
    let recorded = lab.recorded_steps(&episode).await;
    let expected = u64::from(stepped);
    Ok(FaultRow {
        fault: "SIGTERM drain with a live episode",
        survived: stepped && refused && exited.is_ok() && leaked == 0,
        lost_records: recorded.abs_diff(expected),
        leaked_containers: leaked,
        detail: format!(
            "step during grace {stepped}, new episode refused {refused}, exited {}",
            exited.is_ok()
        ),
    })
}

/// Runs every fault and prints the table.
/// Runs every fault; `Ok(true)` when the server survived them all with nothing lost or leaked.
pub async fn run(args: ChaosBenchArgs) -> anyhow::Result<bool> {
    let exe = std::env::current_exe().context("locating the swe-env binary")?;
    // `serve --tasks` reads any source (`fixtures`, an alias, a path) as every command does.
    let tasks = PathBuf::from(&args.tasks);
    let dir = std::env::temp_dir().join(format!("swe-env-bench-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).context("creating the work directory")?;
    let token = format!("{:032x}", rand::random::<u128>());
    std::fs::write(dir.join("token"), &token).context("writing the token file")?;
    let engine = DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker")?;
    let lab = Lab {
        exe,
        dir: dir.clone(),
        tasks,
        token,
        task: args.task.clone(),
        engine,
    };
    let rows = run_faults(&lab).await;
    let _ = std::fs::remove_dir_all(&dir);
    let rows = rows?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows);
    }
    Ok(rows
        .iter()
        .all(|r| r.survived && r.lost_records == 0 && r.leaked_containers == 0))
}

async fn run_faults(lab: &Lab) -> anyhow::Result<Vec<FaultRow>> {
    let server = lab.start_server().await?;
    let bystander = start_bystander(lab, &server).await?;
    let mut client = lab.client(&server).await?;
    let mut rows = Vec::new();
    type Fault = for<'a> fn(
        &'a Lab,
        &'a mut Client,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = anyhow::Result<FaultRow>> + Send + 'a>,
    >;
    let faults: [(&'static str, Fault); 7] = [
        ("client deadline mid-step", |l, c| {
            Box::pin(client_deadline(l, c))
        }),
        ("client cancel mid-write", |l, c| {
            Box::pin(client_cancel_mid_write(l, c))
        }),
        ("agent redefines eval/printf/builtin", |l, c| {
            Box::pin(shell_hijack(l, c))
        }),
        ("cd into a directory named with a newline", |l, c| {
            Box::pin(newline_cwd(l, c))
        }),
        ("NUL byte in a command", |l, c| Box::pin(nul_byte(l, c))),
        ("container removed outside swe-env", |l, c| {
            Box::pin(container_removed(l, c))
        }),
        (
            "client asks for limits above the operator maxima",
            |l, c| Box::pin(hostile_limits(l, c)),
        ),
    ];
    for (name, fault) in faults {
        rows.push(match fault(lab, &mut client).await {
            Ok(row) => row,
            Err(error) => FaultRow {
                fault: name,
                survived: false,
                lost_records: 0,
                leaked_containers: 0,
                detail: format!("the probe failed: {error:#}"),
            },
        });
    }
    bystander.stop.store(true, Ordering::SeqCst);
    let _ = bystander.task.await;
    let (ok, failed) = (
        bystander.ok.load(Ordering::SeqCst),
        bystander.failed.load(Ordering::SeqCst),
    );
    let recorded = lab.recorded_steps(&bystander.episode).await;
    rows.push(FaultRow {
        fault: "bystander episode stepping through all of the above",
        survived: failed == 0 && ok > 0,
        lost_records: recorded.abs_diff(ok + failed),
        leaked_containers: lab.containers_of_episode(&bystander.episode).await,
        detail: format!(
            "{ok} steps ok, {failed} failed{}",
            bystander
                .errors
                .lock()
                .map(|e| if e.is_empty() {
                    String::new()
                } else {
                    format!(": {}", e.join("; "))
                })
                .unwrap_or_default()
        ),
    });
    let (row, restarted) = crash_and_restart(lab, server).await?;
    rows.push(row);
    rows.push(drain(lab, restarted).await?);
    Ok(rows)
}

fn print_table(rows: &[FaultRow]) {
    println!("| fault | survived | lost records | leaked containers | detail |");
    println!("|---|---|---:|---:|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.fault,
            if row.survived { "yes" } else { "NO" },
            row.lost_records,
            row.leaked_containers,
            row.detail.replace('|', "\\|")
        );
    }
}
