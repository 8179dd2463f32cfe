//! `swe-env gc`: remove orphaned containers.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::sandbox::{collect_garbage, DockerEngine, GcScope};

/// Arguments of `swe-env gc`.
#[derive(Debug, clap::Args)]
pub struct GcArgs {
    /// Remove every swe-env container, including those of live processes.
    #[arg(long)]
    all: bool,
    /// Print the report as JSON.
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
    let report = collect_garbage(&engine, scope)
        .await
        .context("collecting orphaned containers")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "swe-env containers seen: {}, removed: {}, failed: {}",
            report.seen,
            report.removed.len(),
            report.failed.len()
        );
        for (id, error) in &report.failed {
            println!("  failed {id}: {error}");
        }
    }
    Ok(ExitCode::from(if report.failed.is_empty() {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    }))
}
