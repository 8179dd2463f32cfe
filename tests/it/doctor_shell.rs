//! `swe-env doctor` on this machine and on a missing engine; `swe-env shell` manners (problem statement, a prompt with
//! the cwd, Ctrl-C interrupts the running command only, SIGTERM and end of input leave without a leftover container);
//! help texts name no source module and every `bench` subcommand has an example; no ANSI codes when piped.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{describe, engine, run_ok, BASE_IMAGE};
use crate::episode::fixtures_file;

const EXE: &str = env!("CARGO_BIN_EXE_swe-env");
const SPANS: &str = "swe-env-fixtures__spans-1";

/// The bytes a child wrote to one of its streams so far, filled by a reader thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn spawn_reader(mut stream: impl Read + Send + 'static) -> Self {
        let captured = Self::default();
        let sink = captured.clone();
        std::thread::spawn(move || {
            let mut chunk = [0_u8; 4096];
            while let Ok(n) = stream.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.0.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        captured
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until `needle` occurs at least `count` times; panics naming `what` with everything seen after `limit`.
    fn wait_for(&self, needle: &str, count: usize, limit: Duration, what: &str) {
        let start = Instant::now();
        while self.text().matches(needle).count() < count {
            assert!(
                start.elapsed() < limit,
                "{what}: no {needle:?} (x{count}) within {limit:?}; seen:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `swe-env shell` with its streams captured; its banner (first stderr line) already read.
struct ShellSession {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Captured,
    stderr: Captured,
    banner: String,
}

impl ShellSession {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(EXE)
            .arg("shell")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn swe-env shell");
        let stdout = Captured::spawn_reader(child.stdout.take().unwrap());
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut banner = String::new();
        stderr.read_line(&mut banner).unwrap();
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            stdout,
            stderr: Captured::spawn_reader(stderr),
            banner,
        }
    }

    /// The container id the banner names.
    fn container_id(&self) -> String {
        self.banner
            .split("container ")
            .nth(1)
            .and_then(|s| s.split([' ', ',']).next())
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| panic!("no container id in banner {:?}", self.banner))
            .to_owned()
    }

    fn write(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {name} failed");
    }

    /// Waits for the process to end (at most `limit`) and returns its exit code.
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "swe-env shell did not end within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout.text(),
                    self.stderr.text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Asserts that no container with `id` is left (the engine's own list of labelled containers).
async fn assert_removed(id: &str) {
    let labelled = engine().await.labelled_containers().await.unwrap();
    assert!(
        !labelled.iter().any(|c| c.id == id),
        "container {id} was left behind"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_ctrl_c_interrupts_the_command_only_and_the_prompt_shows_the_cwd() {
    let mut shell = ShellSession::spawn(&["--image", BASE_IMAGE, "--workdir", "/root"]);
    assert!(
        shell.banner.starts_with("sandbox ready"),
        "{}",
        shell.banner
    );
    let id = shell.container_id();
    let limit = Duration::from_secs(20);
    shell.stdout.wait_for("/root $ ", 1, limit, "first prompt");
    shell.write("cd /tmp\n");
    shell
        .stdout
        .wait_for("/tmp $ ", 1, limit, "prompt after cd");

    // Ctrl-C while a command runs: that command stops, with status 130, and the shell stays.
    shell.write("sleep 30; echo not-interrupted\n");
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    shell.signal("-INT");
    shell.stdout.wait_for(
        "[exit 130, interrupted",
        1,
        Duration::from_secs(10),
        "interrupt",
    );
    assert!(
        sent.elapsed() < Duration::from_secs(10),
        "{:?}",
        sent.elapsed()
    );
    assert!(
        !shell.stdout.text().contains("not-interrupted"),
        "the rest of the line ran: {}",
        shell.stdout.text()
    );
    shell.write("echo alive; pwd\n");
    shell
        .stdout
        .wait_for("alive\n/tmp\n[exit 0", 1, limit, "the next command");

    // Ctrl-C at the prompt: only a hint.
    shell.signal("-INT");
    shell
        .stdout
        .wait_for("press Ctrl-D to leave", 1, limit, "hint at the prompt");
    shell.write("echo still-here\n");
    shell
        .stdout
        .wait_for("still-here\n[exit 0", 1, limit, "after the hint");

    // End of input leaves, exit 0, container removed.
    drop(shell.stdin.take());
    let code = shell.wait(Duration::from_secs(30));
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        shell.stdout.text(),
        shell.stderr.text()
    );
    assert_removed(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_sigterm_during_a_command_leaves_with_130_and_removes_the_container() {
    let mut shell = ShellSession::spawn(&["--image", BASE_IMAGE]);
    let id = shell.container_id();
    shell
        .stdout
        .wait_for("/ $ ", 1, Duration::from_secs(20), "first prompt");
    shell.write("sleep 60\n");
    std::thread::sleep(Duration::from_millis(700));
    shell.signal("-TERM");
    let code = shell.wait(Duration::from_secs(20));
    assert_eq!(code, Some(130), "stderr:\n{}", shell.stderr.text());
    assert!(
        shell.stderr.text().contains("SIGTERM: leaving"),
        "{}",
        shell.stderr.text()
    );
    assert_removed(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_sigterm_at_the_prompt_leaves_with_130_though_stdin_stays_open() {
    let mut shell = ShellSession::spawn(&["--image", BASE_IMAGE]);
    let id = shell.container_id();
    shell
        .stdout
        .wait_for("/ $ ", 1, Duration::from_secs(20), "first prompt");
    // stdin stays open and silent: a read blocked on it must not keep the process alive.
    shell.signal("-TERM");
    let code = shell.wait(Duration::from_secs(20));
    assert_eq!(code, Some(130), "stderr:\n{}", shell.stderr.text());
    assert_removed(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_with_a_task_prints_the_problem_statement_first_then_a_prompt_with_the_cwd() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = fixtures_file();
    let statement = std::fs::read_to_string(&tasks)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|row| row["instance_id"] == SPANS)
        .unwrap()["problem_statement"]
        .as_str()
        .unwrap()
        .trim_end()
        .to_owned();
    let mut shell = ShellSession::spawn(&[
        "--task",
        SPANS,
        "--tasks",
        tasks.to_str().unwrap(),
        "--trajectory-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        shell.banner.starts_with("episode ready"),
        "{}",
        shell.banner
    );
    let id = shell.container_id();
    let limit = Duration::from_secs(30);
    shell.stdout.wait_for("tool> ", 1, limit, "first prompt");
    let text = shell.stdout.text();
    assert!(
        text.starts_with(&format!("Task {SPANS} (repository ")),
        "{text}"
    );
    let at_statement = text.find(&statement).expect("problem statement printed");
    let at_prompt = text.find("/testbed tool> ").expect("prompt with the cwd");
    assert!(at_statement < at_prompt, "{text}");

    shell.write("<tool: bash>\ncd src && echo moved\n</tool>\n");
    shell.stdout.wait_for("moved", 1, limit, "a step");
    shell
        .stdout
        .wait_for("/testbed/src tool> ", 1, limit, "prompt follows cd");

    // Ctrl-C during a tool call interrupts its command long before the 120 s timeout; the session stays.
    shell.write("<tool: bash>\nsleep 60; echo not-interrupted\n</tool>\n");
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    shell.signal("-INT");
    shell.stderr.wait_for(
        "^C interrupting the running command",
        1,
        limit,
        "Ctrl-C in a step",
    );
    shell.stdout.wait_for(
        "timed out",
        1,
        Duration::from_secs(10),
        "the interrupted step",
    );
    assert!(sent.elapsed() < Duration::from_secs(10));
    assert!(!shell.stdout.text().contains("not-interrupted"));
    shell.write("<tool: bash>\necho alive\n</tool>\n");
    shell.stdout.wait_for("alive", 1, limit, "the next step");

    drop(shell.stdin.take());
    let code = shell.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0), "stderr:\n{}", shell.stderr.text());
    assert_removed(&id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_with_a_task_ends_cancelled_on_sigterm_in_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = fixtures_file();
    let mut shell = ShellSession::spawn(&[
        "--task",
        SPANS,
        "--tasks",
        tasks.to_str().unwrap(),
        "--trajectory-dir",
        dir.path().to_str().unwrap(),
    ]);
    let id = shell.container_id();
    shell
        .stdout
        .wait_for("tool> ", 1, Duration::from_secs(30), "first prompt");
    shell.write("<tool: bash>\nsleep 60\n</tool>\n");
    std::thread::sleep(Duration::from_millis(700));
    shell.signal("-TERM");
    let code = shell.wait(Duration::from_secs(30));
    assert_eq!(code, Some(130), "stderr:\n{}", shell.stderr.text());
    assert_removed(&id).await;
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let trajectory = swe_env::trajectory::read_trajectory(&files[0])
        .await
        .unwrap();
    assert_eq!(
        trajectory.end.unwrap().status,
        swe_env::trajectory::EpisodeStatus::Cancelled
    );
}

/// `swe-env doctor --json` with `env` added; returns the exit code, the report and the raw output.
fn doctor_json(env: &[(&str, &str)]) -> (Option<i32>, serde_json::Value, std::process::Output) {
    let output = Command::new(EXE)
        .args(["doctor", "--json"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", describe(&output)));
    (output.status.code(), report, output)
}

fn check<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report:#}"))
}

#[test]
fn doctor_reports_the_real_docker_version_and_the_fixture_images() {
    let (code, report, output) = doctor_json(&[]);
    let docker = check(&report, "docker");
    assert_eq!(docker["status"], "ok", "{report:#}");
    let version =
        run_ok(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]));
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    assert!(!version.is_empty());
    assert_eq!(docker["data"]["server_version"], version.as_str());
    assert!(docker["detail"].as_str().unwrap().contains(&version));
    let fixtures = check(&report, "fixture images");
    assert_eq!(fixtures["status"], "ok", "{report:#}");
    assert!(
        fixtures["data"]["total"].as_u64().unwrap() >= 5,
        "{report:#}"
    );
    assert_eq!(fixtures["data"]["present"], fixtures["data"]["total"]);
    assert_eq!(check(&report, "base image")["status"], "ok");
    for name in [
        "dataset cache",
        "disk of Docker data",
        "disk of current dir",
        "open-file limit",
        "leftover containers",
    ] {
        let found = check(&report, name);
        assert!(
            ["ok", "warn", "fail"].contains(&found["status"].as_str().unwrap()),
            "{found}"
        );
        if found["status"] != "ok" {
            assert!(
                found["fix"].as_str().is_some_and(|f| !f.is_empty()),
                "{found}"
            );
        }
    }
    let disk = check(&report, "disk of current dir");
    assert!(disk["data"]["free_bytes"].as_u64().unwrap() > 0, "{disk}");
    let any_failed = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "fail");
    let expected = if any_failed { 1 } else { 0 };
    assert_eq!(code, Some(expected), "{}", describe(&output));
    assert_eq!(report["exit_code"], expected);
}

#[test]
fn doctor_with_an_unreachable_engine_fails_the_docker_check_with_the_fix_and_exit_3() {
    let env = [("DOCKER_HOST", "unix:///nonexistent.sock")];
    let (code, report, output) = doctor_json(&env);
    assert_eq!(code, Some(3), "{}", describe(&output));
    let docker = check(&report, "docker");
    assert_eq!(docker["status"], "fail");
    assert!(
        docker["detail"]
            .as_str()
            .unwrap()
            .contains("/nonexistent.sock"),
        "{docker}"
    );
    let fix = docker["fix"].as_str().unwrap();
    assert!(
        fix.contains("start the Docker engine") && fix.contains("DOCKER_HOST"),
        "{fix}"
    );
    // The checks that need no engine still ran.
    assert_eq!(check(&report, "open-file limit")["status"], "ok");
    assert!(
        check(&report, "disk of current dir")["data"]["free_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );

    // Human output, piped: one line per check in plain words, the fix below, no symbols or colour codes.
    let output = Command::new(EXE)
        .args(["-vv", "doctor"])
        .envs(env)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{}", describe(&output));
    let text = String::from_utf8_lossy(&output.stdout);
    let docker_line = text.lines().next().unwrap();
    assert!(docker_line.starts_with("FAIL docker "), "{text}");
    assert!(
        text.lines()
            .nth(1)
            .unwrap()
            .trim_start()
            .starts_with("fix: start the Docker engine"),
        "{text}"
    );
    assert!(!text.contains('✗') && !text.contains('✓'), "{text}");
    assert_no_ansi(&output, "doctor");
}

fn assert_no_ansi(output: &std::process::Output, what: &str) {
    for (stream, bytes) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
        assert!(
            !bytes.windows(2).any(|w| w == b"\x1b["),
            "{what}: ANSI escape in piped {stream}: {}",
            describe(output)
        );
    }
}

/// Runs `swe-env ARGS --help` and returns its text.
fn help(args: &[&str]) -> String {
    let output = run_ok(Command::new(EXE).args(args).arg("--help"));
    assert_no_ansi(&output, &format!("{args:?} --help"));
    String::from_utf8(output.stdout).unwrap()
}

/// The subcommand names of a help text's `Commands:` section (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter(|line| !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}

/// A reference to the source code in help text: a `src/` path, a `.rs` file, or a Rust path (`a::b`). A pytest
/// node id (`tests/test_x.py::test_y`) is not one.
fn source_references(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for word in text.split(|c: char| c.is_whitespace() || "`'\"(),".contains(c)) {
        let rust_path = word
            .split_once("::")
            .is_some_and(|(before, _)| !before.ends_with(".py"));
        if word.contains("src/") || word.ends_with(".rs") || rust_path {
            found.push(word.to_owned());
        }
    }
    found
}

#[test]
fn no_help_text_names_a_source_module_and_every_bench_subcommand_has_an_example() {
    let mut offenders = Vec::new();
    let mut queue: Vec<Vec<String>> = vec![Vec::new()];
    let mut seen = 0;
    while let Some(path) = queue.pop() {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let text = help(&args);
        seen += 1;
        for reference in source_references(&text) {
            offenders.push(format!("swe-env {} --help: {reference}", args.join(" ")));
        }
        if path.first().is_some_and(|c| c == "bench") && path.len() == 2 {
            assert!(
                text.contains("Example"),
                "swe-env {} --help has no example:\n{text}",
                args.join(" ")
            );
        }
        for name in subcommands(&text) {
            let mut next = path.clone();
            next.push(name);
            queue.push(next);
        }
    }
    assert!(seen > 20, "only {seen} help texts found");
    let bench = subcommands(&help(&["bench"]));
    assert_eq!(
        bench,
        ["sandbox", "grpc", "scale", "grading", "chaos", "fleet"],
        "bench subcommands changed: check their examples"
    );
    assert!(offenders.is_empty(), "{offenders:#?}");
}

#[test]
fn commands_print_no_ansi_codes_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let env = [("DOCKER_HOST", "unix:///nonexistent.sock")];
    for args in [
        vec!["-vv", "gc"],
        vec![
            "-vv",
            "run-benchmark",
            "fixtures",
            "--agent",
            "gold",
            "--output-dir",
            out,
        ],
        vec!["-vv", "doctor"],
        vec!["-vv", "shell", "--image", BASE_IMAGE],
    ] {
        let output = Command::new(EXE)
            .args(&args)
            .envs(env)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(!output.stderr.is_empty() || !output.stdout.is_empty());
        assert_no_ansi(&output, &format!("{args:?}"));
    }
}

#[test]
fn a_gold_run_gc_and_doctor_print_no_ansi_codes_when_piped() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    for args in [
        vec![
            "-v",
            "run-benchmark",
            "fixtures",
            "--agent",
            "gold",
            "--instance-ids",
            SPANS,
            "--output-dir",
            out,
        ],
        vec!["-v", "gc", "--dry-run"],
        vec!["-v", "doctor"],
    ] {
        let output = Command::new(EXE)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_ne!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            describe(&output)
        );
        assert!(!output.stdout.is_empty(), "{args:?}: {}", describe(&output));
        assert_no_ansi(&output, &format!("{args:?}"));
    }
}
