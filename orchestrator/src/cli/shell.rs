//! `swe-env shell`: an interactive sandbox for a person — see exactly what an agent would see.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::sandbox::{DockerEngine, SandboxConfig};

/// Arguments of `swe-env shell`.
#[derive(Debug, clap::Args)]
pub struct ShellArgs {
    /// Image to open (each input line is one bash command in the persistent shell).
    #[arg(long, default_value = "swe-env/base:bookworm")]
    image: String,
    /// Working directory the shell starts in.
    #[arg(long, default_value = "/")]
    workdir: String,
    /// Per-command timeout in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
}

pub async fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    let episode_id = format!("shell-{}", std::process::id());
    let config = SandboxConfig {
        workdir: args.workdir.clone(),
        ..SandboxConfig::default()
    };
    let sandbox = engine
        .create_sandbox(&args.image, &episode_id, config)
        .await
        .context("opening the sandbox")?;
    eprintln!(
        "sandbox ready: container {} (image {}); one bash command per line, Ctrl-D to quit",
        sandbox.id(),
        args.image
    );
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let outcome = loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break Ok(()),
            Err(error) => break Err(anyhow::Error::from(error).context("reading stdin")),
        };
        match sandbox.run_command(&line, timeout).await {
            Ok(out) => {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(&out.output);
                let _ = writeln!(
                    stdout,
                    "[exit {}{}{}{} in {} ms]",
                    out.exit_code.map_or("-".to_owned(), |c| c.to_string()),
                    if out.timed_out { ", timed out" } else { "" },
                    if out.truncated { ", truncated" } else { "" },
                    if out.restarted {
                        ", shell restarted"
                    } else {
                        ""
                    },
                    out.duration.as_millis()
                );
                let _ = stdout.flush();
            }
            Err(error) => break Err(anyhow::Error::from(error).context("running the command")),
        }
    };
    sandbox.remove().await.context("removing the sandbox")?;
    outcome?;
    Ok(ExitCode::SUCCESS)
}
