//! The end of a run: `predictions.jsonl` (the swebench harness's input format), `report.json` (the reference's run
//! summary schema), `summary.md`, and the table printed to the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use swe_env_grading::report::{make_run_summary, InstanceReport, RunSummary};

use super::results::{InstanceResult, InstanceStatus};
use super::RunConfig;

/// Aggregates of a run, printed as a table and written as `stats.json`. The instance counts (total, submitted,
/// completed, resolved, unresolved, empty patch, error, incomplete) are copied from the run's report.json
/// ([`make_run_summary`], the reference harness's counting), so the three never disagree.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    /// Run id.
    pub run_id: String,
    /// Agent or model name.
    pub model: String,
    /// Instances in the run's dataset selection (report.json `total_instances`).
    pub total: usize,
    /// Instances with a prediction (report.json `submitted_instances`).
    pub submitted: usize,
    /// Instances graded with a report (report.json `completed_instances`).
    pub completed: usize,
    /// Resolved instances (report.json `resolved_instances`).
    pub resolved: usize,
    /// Completed and not resolved (report.json `unresolved_instances`).
    pub unresolved: usize,
    /// Predictions with an empty or null patch (report.json `empty_patch_instances`).
    pub empty_patch: usize,
    /// Predictions with a patch but no report (report.json `error_instances`).
    pub error: usize,
    /// Instances without a prediction (report.json `incomplete_ids`, counted).
    pub incomplete: usize,
    /// Predictions whose instance id is not in the dataset (not graded).
    pub unknown_predictions: usize,
    /// Instances with a result in `results.jsonl` (this run and earlier attempts).
    pub finished: usize,
    /// Resolved / total, in percent.
    pub resolved_pct: f64,
    /// Per repository: instances finished and resolved.
    pub per_repo: BTreeMap<String, RepoStats>,
    /// Instances whose run failed (`status: error` in results.jsonl), by kind. Those with a submission are
    /// report.json errors, those without are incomplete.
    pub errors_by_kind: BTreeMap<String, usize>,
    /// Mean agent turns over finished instances.
    pub mean_turns: f64,
    /// Total model tokens.
    pub tokens: u64,
    /// Sum of per-instance wall times, s.
    pub instance_seconds: f64,
    /// Wall time of the run (this invocation), s.
    pub wall_seconds: f64,
}

/// One repository's line of the breakdown.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RepoStats {
    /// Instances finished.
    pub finished: usize,
    /// Instances resolved.
    pub resolved: usize,
}

/// The predictions (`instance_id → patch`) and reports of `results`, as the reference harness's run report sees
/// them: an instance whose run failed before it had a submission has no prediction.
fn predictions_and_reports(
    results: &[InstanceResult],
) -> (
    BTreeMap<String, Option<String>>,
    BTreeMap<String, InstanceReport>,
) {
    let mut predictions = BTreeMap::new();
    let mut reports = BTreeMap::new();
    for result in results {
        if result.status == InstanceStatus::Error && result.submission.is_none() {
            continue;
        }
        predictions.insert(result.instance_id.clone(), result.submission.clone());
        if let Some(report) = &result.report {
            reports.insert(result.instance_id.clone(), report.clone());
        }
    }
    (predictions, reports)
}

/// The run's report.json: `dataset_ids` are every selected row (run or not).
pub fn run_summary(dataset_ids: &[String], results: &[InstanceResult]) -> RunSummary {
    let (predictions, reports) = predictions_and_reports(results);
    make_run_summary(dataset_ids, &predictions, &reports)
}

/// Computes the aggregates of `results`; the instance counts come from `summary` (see [`run_summary`]).
pub fn run_stats(
    run_id: &str,
    model: &str,
    summary: &RunSummary,
    unknown_predictions: usize,
    results: &[InstanceResult],
    wall_seconds: f64,
) -> RunStats {
    let mut per_repo: BTreeMap<String, RepoStats> = BTreeMap::new();
    let mut errors_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for result in results {
        let entry = per_repo.entry(result.repo.clone()).or_default();
        entry.finished += 1;
        if result.status == InstanceStatus::Resolved {
            entry.resolved += 1;
        }
        if let Some(kind) = &result.error_kind {
            *errors_by_kind.entry(kind.clone()).or_default() += 1;
        }
    }
    let finished = results.len();
    let total = summary.total_instances;
    RunStats {
        run_id: run_id.to_owned(),
        model: model.to_owned(),
        total,
        submitted: summary.submitted_instances,
        completed: summary.completed_instances,
        resolved: summary.resolved_instances,
        unresolved: summary.unresolved_instances,
        empty_patch: summary.empty_patch_instances,
        error: summary.error_instances,
        incomplete: summary.incomplete_ids.len(),
        unknown_predictions,
        finished,
        resolved_pct: if total == 0 {
            0.0
        } else {
            100.0 * summary.resolved_instances as f64 / total as f64
        },
        per_repo,
        errors_by_kind,
        mean_turns: if finished == 0 {
            0.0
        } else {
            results.iter().map(|r| f64::from(r.n_steps)).sum::<f64>() / finished as f64
        },
        tokens: results.iter().map(|r| r.tokens).sum(),
        instance_seconds: results.iter().map(|r| r.total_ms as f64 / 1e3).sum(),
        wall_seconds,
    }
}

/// The end of a run: computes report.json once and derives the stats from it, then writes predictions.jsonl,
/// report.json, stats.json and summary.md into the run directory. `run_ids` are the instances that were run;
/// the config's ungraded rows are added to the report's dataset.
pub async fn finish_run(
    config: &RunConfig,
    run_ids: &[String],
    results: &[InstanceResult],
    wall: Duration,
) -> std::io::Result<RunStats> {
    let mut dataset_ids = run_ids.to_vec();
    dataset_ids.extend(config.ungraded_ids.iter().cloned());
    let summary = run_summary(&dataset_ids, results);
    let stats = run_stats(
        &config.run_id,
        &config.model_name,
        &summary,
        config.unknown_prediction_ids.len(),
        results,
        wall.as_secs_f64(),
    );
    write_run_outputs(&config.dir, &config.model_name, results, &summary, &stats).await?;
    Ok(stats)
}

/// The terminal table (also the body of summary.md).
pub fn render_table(stats: &RunStats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {} · {}", stats.run_id, stats.model);
    let _ = writeln!(
        out,
        "resolved {}/{} ({:.1}%) · finished {} · run failures {} · mean turns {:.1} · tokens {} · wall {:.1}s",
        stats.resolved,
        stats.total,
        stats.resolved_pct,
        stats.finished,
        stats.errors_by_kind.values().sum::<usize>(),
        stats.mean_turns,
        stats.tokens,
        stats.wall_seconds
    );
    let _ = writeln!(
        out,
        "report.json (harness counts): total {} · submitted {} · completed {} · resolved {} · unresolved {} · \
         empty patch {} · error {} · incomplete {}{}",
        stats.total,
        stats.submitted,
        stats.completed,
        stats.resolved,
        stats.unresolved,
        stats.empty_patch,
        stats.error,
        stats.incomplete,
        if stats.unknown_predictions > 0 {
            format!(
                " · predictions for unknown instances {}",
                stats.unknown_predictions
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "| repo | finished | resolved | % |");
    let _ = writeln!(out, "|---|---:|---:|---:|");
    for (repo, line) in &stats.per_repo {
        let (n, resolved) = (line.finished, line.resolved);
        let pct = if n == 0 {
            0.0
        } else {
            100.0 * resolved as f64 / n as f64
        };
        let _ = writeln!(out, "| {repo} | {n} | {resolved} | {pct:.1} |");
    }
    if !stats.errors_by_kind.is_empty() {
        let _ = writeln!(out);
        let _ = writeln!(out, "| run failure kind | count |");
        let _ = writeln!(out, "|---|---:|");
        for (kind, count) in &stats.errors_by_kind {
            let _ = writeln!(out, "| {kind} | {count} |");
        }
    }
    out
}

/// Writes predictions.jsonl, report.json, stats.json and summary.md into `dir`.
pub async fn write_run_outputs(
    dir: &Path,
    model: &str,
    results: &[InstanceResult],
    summary: &RunSummary,
    stats: &RunStats,
) -> std::io::Result<()> {
    let (predictions, _) = predictions_and_reports(results);
    let mut predictions_text = String::new();
    for (instance_id, patch) in &predictions {
        let line = serde_json::json!({
            "instance_id": instance_id,
            "model_name_or_path": model,
            "model_patch": patch.clone().unwrap_or_default(),
        });
        predictions_text.push_str(&line.to_string());
        predictions_text.push('\n');
    }
    tokio::fs::write(dir.join("predictions.jsonl"), predictions_text).await?;
    let report_text = serde_json::to_string_pretty(summary).map_err(std::io::Error::other)?;
    tokio::fs::write(dir.join("report.json"), report_text).await?;
    let stats_text = serde_json::to_string_pretty(stats).map_err(std::io::Error::other)?;
    tokio::fs::write(dir.join("stats.json"), stats_text).await?;
    let markdown = format!("# swe-env run {}\n\n{}", stats.run_id, render_table(stats));
    tokio::fs::write(dir.join("summary.md"), markdown).await?;
    Ok(())
}
