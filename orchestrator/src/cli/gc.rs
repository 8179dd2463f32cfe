//! `swe-env gc`: remove orphaned containers (or, with `--dry-run`, say which and why).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use swe_env_sandbox::gc::GcAction;
use swe_env_sandbox::{collect_garbage_with, DockerEngine, GcScope};

/// Arguments of `swe-env gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Remove every swe-env container, including those of live processes.
    #[arg(long)]
    all: bool,
    /// Remove nothing: print which containers would be removed and why.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON (every container with its action and reason).
    #[arg(long)]
    json: bool,
}

pub async fn run(args: GcArgs) -> anyhow::Result<ExitCode> {
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    let scope = if args.all {
        GcScope::All
    } else {
        GcScope::Orphans
    };
    let report = collect_garbage_with(&engine, scope, args.dry_run)
        .await
        .context("collecting orphaned containers")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for decision in &report.decisions {
            let action = match decision.action {
                GcAction::Removed => "removed",
                GcAction::WouldRemove => "would remove",
                GcAction::Kept => "kept",
                GcAction::Failed => "FAILED to remove",
            };
            let id = decision.id.get(..12).unwrap_or(&decision.id);
            println!(
                "{action} {id} (episode {}, owner {}): {}{}",
                decision.episode,
                decision.owner.as_deref().unwrap_or("?"),
                decision.reason_text,
                decision
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            );
        }
        if args.dry_run {
            println!(
                "dry run: swe-env containers seen: {}, would remove: {} (nothing removed)",
                report.seen,
                report.would_remove.len()
            );
        } else {
            println!(
                "swe-env containers seen: {}, removed: {}, failed: {}",
                report.seen,
                report.removed.len(),
                report.failed.len()
            );
        }
    }
    Ok(ExitCode::from(if report.failed.is_empty() {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    }))
}
