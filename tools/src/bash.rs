//! The bash tool: one command in the persistent shell, its merged output as the observation, plus plain notes when
//! it timed out, was cut, or the session had to be restarted.

use std::time::Duration;

use crate::call::ToolName;
use crate::tool::{ToolConfig, ToolErrorKind, ToolResult};
use swe_env_sandbox::{Sandbox, SandboxError};

/// Runs `command` with the configured timeout and turns the sandbox's output into a [`ToolResult`].
pub(crate) async fn run_bash(
    sandbox: &dyn Sandbox,
    command: &str,
    config: &ToolConfig,
) -> Result<ToolResult, SandboxError> {
    if let Some(offset) = command.bytes().position(|b| b == 0) {
        // bash reads a command as a C string: it would silently run only the part before the NUL.
        return Ok(ToolResult::failed(
            ToolName::Bash,
            ToolErrorKind::NulInCommand,
            format!(
                "command contains a NUL byte (\\0) at offset {offset}; bash cannot pass NUL bytes in a command: \
                 use printf '\\0' instead. Nothing was run."
            ),
        ));
    }
    let output = sandbox.run(command, config.cmd_timeout).await?;
    let mut text = String::from_utf8_lossy(&output.output).into_owned();
    let mut notes = Vec::new();
    if output.timed_out {
        notes.push(format!(
            "[The command timed out after {} and was interrupted; any output above is partial.]",
            describe_duration(config.cmd_timeout)
        ));
    }
    if output.truncated {
        notes.push(
            "[The output was too long: only its beginning and its end are shown.]".to_owned(),
        );
    }
    if output.restarted {
        notes.push(
            "[The shell session was restarted: the working directory was reset to the default and shell state \
             (variables, functions, activated environments) was lost.]"
                .to_owned(),
        );
    }
    if config.show_exit_code {
        match output.exit_code {
            Some(code) => notes.push(format!("[exit code: {code}]")),
            None => notes.push("[exit code: none, the command did not finish]".to_owned()),
        }
    }
    if !notes.is_empty() {
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&notes.join("\n"));
    }
    let error = if output.timed_out {
        Some(ToolErrorKind::TimedOut)
    } else if output.restarted {
        Some(ToolErrorKind::SessionRestarted)
    } else {
        None
    };
    Ok(ToolResult {
        tool: ToolName::Bash,
        error,
        text,
        exit_code: output.exit_code,
        timed_out: output.timed_out,
        truncated: output.truncated,
        restarted: output.restarted,
        duration: output.duration,
        submission: None,
    })
}

/// `120 seconds`, `1.5 seconds`.
fn describe_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{} seconds", duration.as_secs())
    } else {
        format!("{:.1} seconds", duration.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_tool, ToolCall};
    use swe_env_sandbox::host::{HostSandboxConfig, UnisolatedHostSandbox};

    fn bash(command: &str) -> ToolCall {
        ToolCall::Bash {
            command: command.into(),
        }
    }

    #[tokio::test]
    async fn output_and_state() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let config = ToolConfig {
            show_exit_code: true,
            ..ToolConfig::default()
        };
        let result = run_tool(
            &sandbox,
            &bash("mkdir d && cd d && export V=7\necho out; echo err >&2; false"),
            &config,
        )
        .await
        .unwrap();
        assert_eq!(result.error, None);
        assert_eq!(result.text, "out\nerr\n[exit code: 1]");
        assert_eq!(result.exit_code, Some(1));
        let again = run_tool(
            &sandbox,
            &bash("echo $V; basename \"$PWD\""),
            &ToolConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(again.text, "7\nd\n");
        assert_eq!(again.exit_code, Some(0));
        let lossy = run_tool(&sandbox, &bash("printf 'a\\377b'"), &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(lossy.text, "a\u{fffd}b");
    }

    #[tokio::test]
    async fn nul_byte_is_refused_and_nothing_runs() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let result = run_tool(
            &sandbox,
            &bash("touch ran\0; rm -rf /"),
            &ToolConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(result.error, Some(ToolErrorKind::NulInCommand));
        assert_eq!(
            result.text,
            "command contains a NUL byte (\\0) at offset 9; bash cannot pass NUL bytes in a command: use \
             printf '\\0' instead. Nothing was run."
        );
        assert!(!sandbox.root().join("ran").exists());
    }

    #[tokio::test]
    async fn timeout_note() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let config = ToolConfig {
            cmd_timeout: Duration::from_millis(500),
            ..ToolConfig::default()
        };
        let result = run_tool(&sandbox, &bash("cd /tmp; echo started; sleep 30"), &config)
            .await
            .unwrap();
        assert_eq!(result.error, Some(ToolErrorKind::TimedOut));
        assert!(result.timed_out && !result.restarted);
        assert_eq!(result.exit_code, None);
        // Between the two, bash reports the killed job (`bash: line N: PID Killed sleep 30`), as in a terminal.
        assert!(result.text.starts_with("started\n"), "{}", result.text);
        assert!(
            result.text.ends_with(
                "\n[The command timed out after 0.5 seconds and was interrupted; any output above is partial.]"
            ),
            "{}",
            result.text
        );
        assert!(
            result.duration < Duration::from_secs(5),
            "{:?}",
            result.duration
        );
        // The shell survived: its directory is still the one set before the timeout.
        let after = run_tool(&sandbox, &bash("pwd"), &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(after.text, "/tmp\n");
    }

    #[tokio::test]
    async fn restart_and_truncation_notes() {
        let config = HostSandboxConfig {
            max_output_bytes: 100,
            ..HostSandboxConfig::default()
        };
        let root = tempfile::tempdir().unwrap();
        let sandbox = UnisolatedHostSandbox::start(root.path(), config)
            .await
            .unwrap();
        let died = run_tool(
            &sandbox,
            &bash("cd /tmp; echo bye; exit 3"),
            &ToolConfig::default(),
        )
        .await
        .unwrap();
        assert_eq!(died.error, Some(ToolErrorKind::SessionRestarted));
        assert_eq!(
            died.text,
            "bye\n[The shell session was restarted: the working directory was reset to the default and shell state \
             (variables, functions, activated environments) was lost.]"
        );
        assert_eq!(
            sandbox.cwd().await.unwrap(),
            sandbox.root().to_str().unwrap()
        );

        let long = run_tool(&sandbox, &bash("seq 1 1000"), &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(long.error, None);
        assert!(long.truncated);
        assert!(long.text.starts_with("1\n2\n3\n"), "{}", long.text);
        assert!(
            long.text.contains("bytes of output omitted ...]"),
            "{}",
            long.text
        );
        assert!(
            long.text.ends_with(
                "999\n1000\n[The output was too long: only its beginning and its end are shown.]"
            ),
            "{}",
            long.text
        );
    }
}
