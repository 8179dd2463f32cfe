//! The Docker sandbox: persistent shell, timeouts, output caps, limits, isolation.

use std::time::Duration;

use swe_env_sandbox::SandboxConfig;
use swe_env_sandbox::{PathKind, Sandbox};

use crate::common::{base_config, base_sandbox, run_ok};

const T: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_state_persists_and_exit_codes_are_reported() {
    let sb = base_sandbox("state", base_config()).await;
    let out = sb
        .run_command(
            "cd /tmp && export FOO=bar && greet() { echo \"hi $1\"; }",
            T,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert_eq!(sb.cwd().await.unwrap(), "/tmp");
    let out = sb
        .run_command("pwd; echo $FOO; greet you", T)
        .await
        .unwrap();
    assert_eq!(text(&out.output), "/tmp\nbar\nhi you\n");
    let out = sb.run_command("false", T).await.unwrap();
    assert_eq!(out.exit_code, Some(1));
    let out = sb.run_command("(exit 42)", T).await.unwrap();
    assert_eq!(out.exit_code, Some(42));
    let out = sb
        .run_command("echo err >&2; printf 'no newline'", T)
        .await
        .unwrap();
    assert_eq!(text(&out.output), "err\nno newline");
    // A syntax error is a failed command, not a stuck shell.
    let out = sb.run_command("echo \"unbalanced", T).await.unwrap();
    assert_eq!(out.exit_code, Some(2));
    assert!(!out.restarted);
    let out = sb.run_command("echo still alive", T).await.unwrap();
    assert_eq!(text(&out.output), "still alive\n");
    // Commands cannot read the protocol stream.
    let out = sb.run_command("cat; echo after-cat", T).await.unwrap();
    assert_eq!(text(&out.output), "after-cat\n");
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_returns_partial_output_and_keeps_the_session() {
    let sb = base_sandbox("timeout", base_config()).await;
    sb.run_command("cd /tmp && export KEEP=1", T).await.unwrap();
    let out = sb
        .run_command("echo before; sleep 100; echo never", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(out.timed_out);
    assert!(
        !out.restarted,
        "a sleeping child is interruptible; the shell must survive"
    );
    assert_eq!(text(&out.output), "before\n");
    assert!(out.duration < Duration::from_secs(10), "{:?}", out.duration);
    let out = sb.run_command("echo $KEEP; pwd", T).await.unwrap();
    assert_eq!(text(&out.output), "1\n/tmp\n");
    // A child that ignores SIGINT is killed on escalation.
    let out = sb
        .run_command("bash -c 'trap \"\" INT; sleep 100'", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(out.timed_out);
    let out = sb.run_command("echo ok", T).await.unwrap();
    assert_eq!(text(&out.output), "ok\n");
    // A busy builtin loop runs in the shell itself: Ctrl-C semantics stop it without a restart.
    let out = sb
        .run_command("while :; do :; done", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(out.timed_out && !out.restarted, "{out:?}");
    let out = sb.run_command("echo $KEEP", T).await.unwrap();
    assert_eq!(text(&out.output), "1\n");
    // A shell that ignores SIGINT while looping is wedged: it is restarted, and says so.
    let out = sb
        .run_command("trap '' INT; while :; do :; done", Duration::from_secs(1))
        .await
        .unwrap();
    assert!(out.timed_out && out.restarted, "{out:?}");
    let out = sb.run_command("echo ${KEEP:-reset}; pwd", T).await.unwrap();
    assert_eq!(text(&out.output), "reset\n/root\n");
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn background_jobs_do_not_hang_the_next_command() {
    let sb = base_sandbox("bg", base_config()).await;
    let out = sb
        .run_command("sleep 1000 & echo started", T)
        .await
        .unwrap();
    // Like a terminal, the interactive shell announces the job: "[1] PID".
    assert!(
        text(&out.output).starts_with("[1] "),
        "{}",
        text(&out.output)
    );
    assert!(
        text(&out.output).ends_with("\nstarted\n"),
        "{}",
        text(&out.output)
    );
    assert!(out.duration < Duration::from_secs(5));
    let out = sb.run_command("echo next", T).await.unwrap();
    assert_eq!(text(&out.output), "next\n");
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_restarts_the_shell_and_reports_it() {
    let sb = base_sandbox("exit", base_config()).await;
    sb.run_command("cd /tmp", T).await.unwrap();
    let out = sb.run_command("echo bye; exit 3", T).await.unwrap();
    assert!(out.restarted);
    assert_eq!(out.exit_code, None);
    assert_eq!(text(&out.output), "bye\nexit\n");
    let out = sb.run_command("pwd", T).await.unwrap();
    assert_eq!(text(&out.output), "/root\n");
    assert!(!out.restarted);
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_output_is_capped_and_binary_is_safe() {
    let config = SandboxConfig {
        max_output_bytes: 64 * 1024,
        ..base_config()
    };
    let sb = base_sandbox("huge", config).await;
    let out = sb
        .run_command(
            "yes | head -c 2G; echo; echo tail-marker",
            Duration::from_secs(300),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(0));
    assert!(out.truncated);
    assert!(out.output.len() < 70 * 1024, "{}", out.output.len());
    let shown = text(&out.output);
    assert!(shown.starts_with("y\ny\n"));
    assert!(shown.contains("bytes of output omitted"));
    assert!(shown.ends_with("tail-marker\n"));
    let out = sb
        .run_command("printf '\\xff\\xfe\\x00\\x01abc'", T)
        .await
        .unwrap();
    assert_eq!(out.output, b"\xff\xfe\x00\x01abc");
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_byte_exact_with_mode() {
    let sb = base_sandbox("files", base_config()).await;
    let content: &[u8] = b"\tline one\r\nline two\r\n\xc3\xa9\xff no final newline";
    sb.write_file("/root/a.txt", content).await.unwrap();
    assert_eq!(sb.read_file("/root/a.txt").await.unwrap(), content);
    sb.run_command("chmod 755 /root/a.txt", T).await.unwrap();
    sb.write_file("/root/a.txt", b"#!/bin/sh\necho hi\n")
        .await
        .unwrap();
    let out = sb
        .run_command("stat -c %a /root/a.txt; /root/a.txt", T)
        .await
        .unwrap();
    assert_eq!(text(&out.output), "755\nhi\n");
    sb.write_file("/root/empty", b"").await.unwrap();
    assert_eq!(sb.read_file("/root/empty").await.unwrap(), b"");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    sb.write_file("/root/big.bin", &big).await.unwrap();
    assert_eq!(sb.read_file("/root/big.bin").await.unwrap(), big);
    assert_eq!(sb.path_kind("/root").await.unwrap(), PathKind::Directory);
    assert_eq!(sb.path_kind("/root/a.txt").await.unwrap(), PathKind::File);
    assert_eq!(sb.path_kind("/root/nope").await.unwrap(), PathKind::Missing);
    let err = sb.read_file("/root/nope").await.unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
    let err = sb.write_file("/no/such/dir/x", b"x").await.unwrap_err();
    assert!(err.to_string().contains("/no/such/dir/x"), "{err}");
    let out = sb
        .exec(&["sh", "-c", "cat | wc -c"], Some(b"12345"), T)
        .await
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "5");
    assert_eq!(out.exit_code, Some(0));
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_network_inside() {
    let sb = base_sandbox("net", base_config()).await;
    let out = sb.run_command("ls /sys/class/net", T).await.unwrap();
    assert_eq!(text(&out.output), "lo\n");
    // 192.0.2.1 is TEST-NET-1 (documentation only): with no route the connect fails locally, no packet leaves.
    let probe =
        "python3 -c \"import socket; socket.create_connection(('192.0.2.1', 80), timeout=3)\"";
    let out = sb.run_command(probe, T).await.unwrap();
    assert_ne!(out.exit_code, Some(0));
    assert!(
        text(&out.output).contains("unreachable"),
        "{}",
        text(&out.output)
    );
    sb.remove().await.unwrap();
}

fn docker_cli(args: &[&str]) -> String {
    let out = run_ok(std::process::Command::new("docker").args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_hardening_are_visible_in_docker_inspect() {
    let config = SandboxConfig {
        memory_bytes: 512 << 20,
        nano_cpus: 1_500_000_000,
        pids_limit: 321,
        ..base_config()
    };
    let sb = base_sandbox("inspect", config).await;
    let inspect: serde_json::Value =
        serde_json::from_str(&docker_cli(&["inspect", sb.id()])).unwrap();
    let host = &inspect[0]["HostConfig"];
    assert_eq!(host["Memory"], 512 << 20);
    assert_eq!(host["MemorySwap"], 512 << 20);
    assert_eq!(host["NanoCpus"], 1_500_000_000i64);
    assert_eq!(host["PidsLimit"], 321);
    assert_eq!(host["NetworkMode"], "none");
    assert_eq!(
        host["SecurityOpt"],
        serde_json::json!(["no-new-privileges"])
    );
    assert_eq!(host["CapDrop"], serde_json::json!(["ALL"]));
    assert!(!host["CapAdd"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c == "NET_RAW" || c == "SYS_ADMIN"));
    let labels = &inspect[0]["Config"]["Labels"];
    for label in ["swe-env.episode", "swe-env.owner", "swe-env.expires"] {
        assert!(labels[label].is_string(), "missing label {label}: {labels}");
    }
    // no-new-privileges is in force for the shell.
    let out = sb
        .run_command("grep NoNewPrivs /proc/self/status", T)
        .await
        .unwrap();
    assert_eq!(text(&out.output).split_whitespace().last(), Some("1"));
    sb.remove().await.unwrap();
    // Removal is real and idempotent.
    sb.remove().await.unwrap();
    let gone = std::process::Command::new("docker")
        .args(["inspect", sb.id()])
        .output()
        .unwrap();
    assert!(!gone.status.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn fork_bomb_is_contained_by_the_pids_limit() {
    let config = SandboxConfig {
        pids_limit: 64,
        nano_cpus: 500_000_000,
        ..base_config()
    };
    let sb = base_sandbox("forkbomb", config).await;
    let started = std::time::Instant::now();
    let out = sb
        .run_command(
            "bomb() { bomb | bomb & }; bomb; sleep 3",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bomb handling took {:?}",
        started.elapsed()
    );
    // The pids limit held while the bomb ran (count the container's processes from the engine side).
    let top = docker_cli(&["top", sb.id()]);
    assert!(
        top.lines().count() <= 64 + 1,
        "more processes than the limit:\n{top}"
    );
    let _ = out;
    // The sandbox recovers: all processes are killed, the filesystem is kept, a new shell answers.
    sb.run_command("echo kept > /root/kept.txt", T)
        .await
        .unwrap();
    sb.reset_processes().await.unwrap();
    let out = sb
        .run_command("cat /root/kept.txt; ps -e --no-headers | wc -l", T)
        .await
        .unwrap();
    let shown = text(&out.output);
    assert!(shown.starts_with("kept\n"), "{shown}");
    let n_procs: usize = shown.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(n_procs < 10, "bomb survived the reset: {n_procs} processes");
    // The orchestrator is unharmed: another sandbox works.
    let other = base_sandbox("after-bomb", base_config()).await;
    assert_eq!(
        text(&other.run_command("echo fine", T).await.unwrap().output),
        "fine\n"
    );
    other.remove().await.unwrap();
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_on_one_session_are_serialized() {
    let sb = base_sandbox("serial", base_config()).await;
    let mut handles = Vec::new();
    for i in 0..8 {
        let sb = sb.clone();
        handles.push(tokio::spawn(async move {
            let command = format!("echo start-{i}; sleep 0.05; echo end-{i}");
            (i, sb.run_command(&command, T).await.unwrap())
        }));
    }
    for handle in handles {
        let (i, out) = handle.await.unwrap();
        // Each command's output is exactly its own, never interleaved with another's.
        assert_eq!(text(&out.output), format!("start-{i}\nend-{i}\n"));
    }
    sb.remove().await.unwrap();
}
