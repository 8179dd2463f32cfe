//! `swe-env images`: build the local images (base + fixtures) and pre-pull task images with bounded concurrency.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::Semaphore;

use crate::datasets::load_source;
use crate::task::{image_for, OFFICIAL_IMAGE_TEMPLATE};
use swe_env_sandbox::DockerEngine;

/// Image commands.
#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Build the base image (debootstrap → docker import) and the fixture task images.
    ///
    /// Example: `swe-env images build` (FORCE=1 in the environment rebuilds).
    Build(BuildArgs),
    /// Pull the task images of a dataset, several at once, skipping those present.
    ///
    /// Example: `swe-env images pull verified --concurrency 4`.
    Pull(PullArgs),
}

/// Arguments of `swe-env images build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The `images/` directory of a swe-env checkout.
    #[arg(long, default_value = "images")]
    images_dir: PathBuf,
}

/// Arguments of `swe-env images pull`.
#[derive(Debug, clap::Args)]
pub struct PullArgs {
    /// `verified`, `lite`, `full`, `fixtures`, or a dataset path.
    dataset: String,
    /// Only these instance ids (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    instance_ids: Vec<String>,
    /// Pulls at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Image name template for rows without an `image` field.
    #[arg(long, default_value = OFFICIAL_IMAGE_TEMPLATE)]
    image_template: String,
}

pub async fn run(command: ImagesCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImagesCommand::Build(args) => build(args).await,
        ImagesCommand::Pull(args) => pull(args).await,
    }
}

async fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let script = args.images_dir.join("build.sh");
    anyhow::ensure!(
        script.exists(),
        "{} not found: run from a swe-env checkout or pass --images-dir",
        script.display()
    );
    let status = tokio::process::Command::new("bash")
        .arg(&script)
        .status()
        .await
        .context("running images/build.sh")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILED)
    })
}

async fn pull(args: PullArgs) -> anyhow::Result<ExitCode> {
    let loaded = load_source(&args.dataset).await?;
    let wanted: BTreeSet<&str> = args.instance_ids.iter().map(String::as_str).collect();
    let images: BTreeSet<String> = loaded
        .instances
        .iter()
        .filter(|i| wanted.is_empty() || wanted.contains(i.instance_id.as_str()))
        .map(|i| image_for(i, &args.image_template))
        .collect();
    let engine = DockerEngine::connect(Duration::from_secs(600))
        .await
        .context("connecting to Docker")?;
    let multi = MultiProgress::new();
    let overall = multi.add(ProgressBar::new(images.len() as u64));
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} images {msg}")
    {
        overall.set_style(style.progress_chars("=> "));
    }
    let semaphore = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for image in images {
        let engine = engine.clone();
        let semaphore = semaphore.clone();
        let line = multi.add(ProgressBar::new_spinner());
        let overall = overall.clone();
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let result = match engine.image_info(&image).await {
                Ok(Some(_)) => Ok("present"),
                _ => engine
                    .pull_image(&image, |status| {
                        line.set_message(format!("{image}: {status}"))
                    })
                    .await
                    .map(|()| "pulled"),
            };
            line.finish_and_clear();
            overall.inc(1);
            (image, result)
        });
    }
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((image, Ok(what))) => println!("{what:>8}  {image}"),
            Ok((image, Err(error))) => {
                failed += 1;
                println!("{:>8}  {image}: {error}", "FAILED");
            }
            Err(error) => {
                failed += 1;
                println!("a pull task failed: {error}");
            }
        }
    }
    overall.finish();
    eprintln!("{failed} image(s) failed");
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(super::EXIT_FAILED)
    })
}
