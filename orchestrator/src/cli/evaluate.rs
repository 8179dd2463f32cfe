//! `swe-env evaluate`: grade given predictions (or the gold / empty patches) like the reference harness, with
//! workers and resume, writing `logs/run_evaluation/<run_id>/<model>/<instance>/…` and the run summary.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;

use super::run_benchmark::{execute, LogsLayout, RunArgs};
use crate::benchmark::AgentSpec;
use crate::episode::EpisodeConfig;

/// Arguments of `swe-env evaluate`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env evaluate --predictions gold --dataset fixtures\n  \
    swe-env evaluate --predictions preds.jsonl --dataset verified --workers 8 --run-id eval1"
)]
pub struct EvaluateArgs {
    /// A predictions file (JSONL or JSON list of {instance_id, model_name_or_path, model_patch}), or `gold`/`empty`.
    #[arg(long)]
    predictions: String,
    /// `verified`, `lite`, `full`, `fixtures`, or a dataset path.
    #[arg(long, default_value = "verified")]
    dataset: String,
    #[command(flatten)]
    run: RunArgs,
}

pub async fn run(args: EvaluateArgs) -> anyhow::Result<ExitCode> {
    let (predictions, model) = match args.predictions.as_str() {
        "gold" | "empty" => (None, args.predictions.clone()),
        path => {
            let text = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("reading predictions {path}"))?;
            let (map, model) =
                parse_predictions(&text).with_context(|| format!("parsing predictions {path}"))?;
            (Some(map), model)
        }
    };
    let dataset = args.dataset.clone();
    let mut run = args.run;
    let run_id = run
        .run_id
        .clone()
        .unwrap_or_else(crate::benchmark::default_run_id);
    run.run_id = Some(run_id.clone());
    let agent = match (predictions, model.as_str()) {
        (Some(map), _) => AgentSpec::Predictions {
            name: model.clone(),
            patches: Arc::new(map),
        },
        (None, "gold") => AgentSpec::Gold,
        (None, _) => AgentSpec::Empty,
    };
    let code = execute(
        &dataset,
        agent,
        EpisodeConfig::default(),
        &run,
        LogsLayout::Reference,
    )
    .await?;
    // The reference harness also leaves the run summary as `<model with / → __>.<run_id>.json`.
    let summary = run.output_dir.join(&run_id).join("report.json");
    let reference_name = format!("{}.{run_id}.json", model.replace('/', "__"));
    if tokio::fs::try_exists(&summary).await.unwrap_or(false) {
        tokio::fs::copy(&summary, run.output_dir.join(&reference_name))
            .await
            .with_context(|| format!("writing {reference_name}"))?;
    }
    Ok(code)
}

/// Parses predictions: `instance_id → patch` (a null patch stays `None`) and the model name.
fn parse_predictions(text: &str) -> anyhow::Result<(HashMap<String, Option<String>>, String)> {
    let rows: Vec<serde_json::Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text)?
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("line {}", i + 1)))
            .collect::<anyhow::Result<_>>()?
    };
    let mut map = HashMap::new();
    let mut model = String::from("predictions");
    for (i, row) in rows.iter().enumerate() {
        let id = row["instance_id"]
            .as_str()
            .with_context(|| format!("prediction {} has no instance_id", i + 1))?;
        if let Some(name) = row["model_name_or_path"].as_str() {
            model = name.to_owned();
        }
        map.insert(
            id.to_owned(),
            row["model_patch"].as_str().map(str::to_owned),
        );
    }
    Ok((map, model))
}
