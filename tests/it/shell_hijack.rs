//! The persistent shell against an agent that redefines what the framing could use, odd directory names, NUL bytes
//! and interrupted jobs (issue 11).

use std::time::Duration;

use swe_env_sandbox::Sandbox;
use swe_env_tools::{run_tool, ToolCall, ToolConfig, ToolErrorKind};

use crate::common::{base_config, base_sandbox};

const T: Duration = Duration::from_secs(30);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every builtin, keyword-adjacent name and alias a framing could use, overridden one per entry.
fn hijacks() -> Vec<String> {
    let names = [
        "eval", "printf", "echo", "read", "trap", "command", "builtin", "cd", "pwd", "kill",
        "wait", "exec", "set", "shopt", "unset", "source", "test", "declare", "local", "return",
        "exit", "enable", "export", "true", "false", "type", "alias", "unalias", "typeset", "let",
        "hash", "history", "jobs", "disown",
    ];
    let mut all: Vec<String> = names
        .iter()
        .map(|n| format!("{n}() {{ '/bin/echo' hijacked-{n}; }}"))
        .collect();
    all.extend(
        names
            .iter()
            .map(|n| format!("alias {n}='/bin/echo alias-{n}'")),
    );
    for word in [
        "if", "then", "fi", "{", "}", "[[", "]]", "case", "for", "while", "!", "[", ".", "time",
    ] {
        all.push(format!("alias '{word}'='/bin/echo alias-word'"));
    }
    all.extend(
        [
            "enable -n printf eval set unset shopt trap echo cd pwd read test '[' kill wait",
            "enable -n builtin",
            "enable -n command type declare",
            "PROMPT_COMMAND='/bin/echo prompt-command'",
            "PS0=ps0; PS1='$(/bin/echo ps1)'; PS2=ps2; PS4='$(/bin/echo ps4)+ '",
            "set -x",
            "set -v",
            "set -e",
            "set -u; set -f; set -C; set -a; set -b; set -T; set -E",
            "shopt -s extdebug",
            "trap '/bin/echo debug-trap' DEBUG",
            "trap '/bin/echo return-trap' RETURN",
            "trap '/bin/echo exit-trap' EXIT",
            "IFS=/",
            "POSIXLY_CORRECT=1",
            "set -o posix",
            "BASH_ENV=/etc/passwd; ENV=/etc/passwd",
            "set -H; shopt -s xpg_echo nullglob failglob nocasematch",
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    all
}

/// A command that uses none of the hijacked names (the agent's definitions rightly apply to its own commands).
const PROBE: &str = "'/bin/echo' 'probe \"q\" $x'; '/bin/sh' -c 'exit 7'";

async fn assert_probe_runs(sb: &swe_env_sandbox::DockerSandbox, after: &str) {
    let out = sb.run_command(PROBE, T).await.unwrap();
    assert_eq!(
        text(&out.output),
        "probe \"q\" $x\n",
        "after {after:?}: {out:?}"
    );
    assert_eq!(out.exit_code, Some(7), "after {after:?}");
    assert!(!out.timed_out && !out.restarted, "after {after:?}: {out:?}");
    assert!(!text(&out.output).contains("__SWE_ENV"), "after {after:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn framing_survives_every_override_one_at_a_time_and_all_together() {
    let sb = base_sandbox("hijack", base_config()).await;
    for hijack in hijacks() {
        let out = sb.run_command(&hijack, T).await.unwrap();
        assert!(!out.timed_out && !out.restarted, "{hijack:?}: {out:?}");
        assert!(
            !text(&out.output).contains("__SWE_ENV"),
            "{hijack:?}: {out:?}"
        );
        assert_probe_runs(&sb, &hijack).await;
        assert_eq!(sb.cwd().await.unwrap(), "/root", "{hijack:?}");
        // Undo it for the next one; a new shell would hide interactions, so only the override is removed.
        let undo = "\\unalias -a; \\builtin unset -f eval printf echo read trap command cd pwd kill wait exec set \
                    shopt unset source test declare local return exit enable export true false type alias unalias \
                    typeset let hash history jobs disown 2>/dev/null; \\builtin enable -a";
        let _ = sb.run_command(undo, T).await.unwrap();
    }
    // All together, in one command.
    let all = hijacks().join("\n");
    let out = sb.run_command(&all, T).await.unwrap();
    assert!(!out.timed_out, "{out:?}");
    assert!(!text(&out.output).contains("__SWE_ENV"), "{out:?}");
    assert_probe_runs(&sb, "all of them").await;
    assert_probe_runs(&sb, "all of them, twice").await;
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shell_that_ignores_every_command_is_replaced_and_the_command_runs() {
    let sb = base_sandbox("hijack-debug", base_config()).await;
    // extdebug + a failing DEBUG trap makes bash skip every later simple command, the frame's included.
    let out = sb
        .run_command(
            "shopt -s extdebug; trap false DEBUG",
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(out.timed_out || out.restarted, "{out:?}");
    let out = sb.run_command("echo ran", T).await.unwrap();
    assert_eq!(text(&out.output), "ran\n");
    assert_eq!(out.exit_code, Some(0));
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn cwd_is_exact_for_odd_directory_names() {
    let sb = base_sandbox("hijack-cwd", base_config()).await;
    for (quoted, expected) in [
        ("$'/tmp/new\\nline'", "/tmp/new\nline"),
        ("$'/tmp/tab\\there'", "/tmp/tab\there"),
        ("$'/tmp/quo\\'te\"s'", "/tmp/quo'te\"s"),
        ("$'/tmp/trailing\\n'", "/tmp/trailing\n"),
        ("$'/tmp/bad\\xff'", "/tmp/bad\u{fffd}"),
    ] {
        let out = sb
            .run_command(&format!("mkdir -p {quoted} && cd {quoted}"), T)
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0), "{quoted}: {out:?}");
        assert_eq!(sb.cwd().await.unwrap(), expected, "{quoted}");
        let out = sb.run_command("echo next", T).await.unwrap();
        assert_eq!(text(&out.output), "next\n", "{quoted}: a stray line leaked");
        assert_eq!(sb.cwd().await.unwrap(), expected, "{quoted}");
    }
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn nul_byte_in_a_command_is_a_tool_error() {
    let sb = base_sandbox("hijack-nul", base_config()).await;
    let call = ToolCall::Bash {
        command: "touch /tmp/ran\0; echo rest".into(),
    };
    let result = run_tool(&sb, &call, &ToolConfig::default()).await.unwrap();
    assert_eq!(result.error, Some(ToolErrorKind::NulInCommand));
    assert!(
        result.text.contains("NUL byte (\\0) at offset 14"),
        "{}",
        result.text
    );
    let out = sb
        .run_command("test -e /tmp/ran; echo $?", T)
        .await
        .unwrap();
    assert_eq!(text(&out.output), "1\n");
    sb.remove().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_jobs_leave_no_noise_and_report_no_exit_code() {
    let sb = base_sandbox("hijack-int", base_config()).await;
    let config = ToolConfig {
        cmd_timeout: Duration::from_secs(1),
        show_exit_code: true,
        ..ToolConfig::default()
    };
    for command in [
        "true; sleep 100",
        "(exit 3); sleep 100",
        "set -m; sleep 100",
        "sleep 100 | cat",
    ] {
        let call = ToolCall::Bash {
            command: command.into(),
        };
        let result = run_tool(&sb, &call, &config).await.unwrap();
        assert_eq!(result.error, Some(ToolErrorKind::TimedOut), "{command}");
        assert_eq!(result.exit_code, None, "{command}: {result:?}");
        assert!(
            result
                .text
                .ends_with("[exit code: none, the command did not finish]"),
            "{command}: {}",
            result.text
        );
        for _ in 0..3 {
            let out = sb.run_command("echo clean", T).await.unwrap();
            assert_eq!(text(&out.output), "clean\n", "after {command:?}");
            assert_eq!(out.exit_code, Some(0));
        }
    }
    sb.remove().await.unwrap();
}

/// The shell's history never holds the frame (its markers would let the agent forge an end of command): history is
/// off at start and the guard turns it off again before each command, even after the agent turned it on.
#[tokio::test(flavor = "multi_thread")]
async fn history_never_shows_the_frame() {
    let sb = base_sandbox("history", base_config()).await;
    let t = Duration::from_secs(30);
    sb.run_command("echo one", t).await.unwrap();
    sb.run_command("echo two", t).await.unwrap();
    let out = sb
        .run_command("history; fc -l 2>&1 | head", t)
        .await
        .unwrap();
    let shown = text(&out.output);
    assert!(
        !shown.contains("SWE_ENV") && !shown.contains("swe_env"),
        "{shown}"
    );
    sb.run_command("set -o history", t).await.unwrap();
    sb.run_command("echo three", t).await.unwrap();
    let out = sb.run_command("history", t).await.unwrap();
    let shown = text(&out.output);
    assert!(
        !shown.contains("SWE_ENV") && !shown.contains("swe_env"),
        "{shown}"
    );
    let out = sb.run_command("echo still-framed", t).await.unwrap();
    assert_eq!(text(&out.output), "still-framed\n");
    sb.remove().await.unwrap();
}
