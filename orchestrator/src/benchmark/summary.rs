//! The end of a run: `predictions.jsonl` (the swebench harness's input format), `report.json` (the reference's run
//! summary schema), `summary.md`, and the table printed to the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;
use swe_env_grading::report::{make_run_summary, RunSummary};

use super::results::{InstanceResult, InstanceStatus};

/// Aggregates of a run, printed as a table and written as JSON.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    /// Run id.
    pub run_id: String,
    /// Agent or model name.
    pub model: String,
    /// Instances selected.
    pub total: usize,
    /// Instances with a result.
    pub finished: usize,
    /// Resolved instances.
    pub resolved: usize,
    /// Resolved / total, in percent.
    pub resolved_pct: f64,
    /// Per repository: instances finished and resolved.
    pub per_repo: BTreeMap<String, RepoStats>,
    /// Errors by kind.
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

/// Computes the aggregates of `results` over `total` selected instances.
pub fn run_stats(
    run_id: &str,
    model: &str,
    total: usize,
    results: &[InstanceResult],
    wall_seconds: f64,
) -> RunStats {
    let resolved = results
        .iter()
        .filter(|r| r.status == InstanceStatus::Resolved)
        .count();
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
    RunStats {
        run_id: run_id.to_owned(),
        model: model.to_owned(),
        total,
        finished,
        resolved,
        resolved_pct: if total == 0 {
            0.0
        } else {
            100.0 * resolved as f64 / total as f64
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

/// The terminal table (also the body of summary.md).
pub fn render_table(stats: &RunStats) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "run {} · {}", stats.run_id, stats.model);
    let _ = writeln!(
        out,
        "resolved {}/{} ({:.1}%) · finished {} · mean turns {:.1} · tokens {} · wall {:.1}s",
        stats.resolved,
        stats.total,
        stats.resolved_pct,
        stats.finished,
        stats.mean_turns,
        stats.tokens,
        stats.wall_seconds
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
        let _ = writeln!(out, "| error kind | count |");
        let _ = writeln!(out, "|---|---:|");
        for (kind, count) in &stats.errors_by_kind {
            let _ = writeln!(out, "| {kind} | {count} |");
        }
    }
    out
}

/// Writes predictions.jsonl, report.json and summary.md into `dir`.
pub async fn write_run_outputs(
    dir: &Path,
    dataset_ids: &[String],
    model: &str,
    results: &[InstanceResult],
    stats: &RunStats,
) -> std::io::Result<RunSummary> {
    let mut predictions_text = String::new();
    let mut predictions = BTreeMap::new();
    let mut reports = BTreeMap::new();
    for result in results {
        if result.status == InstanceStatus::Error && result.submission.is_none() {
            continue;
        }
        let line = serde_json::json!({
            "instance_id": result.instance_id,
            "model_name_or_path": model,
            "model_patch": result.submission.clone().unwrap_or_default(),
        });
        predictions_text.push_str(&line.to_string());
        predictions_text.push('\n');
        predictions.insert(result.instance_id.clone(), result.submission.clone());
        if let Some(report) = &result.report {
            reports.insert(result.instance_id.clone(), report.clone());
        }
    }
    let summary = make_run_summary(dataset_ids, &predictions, &reports);
    tokio::fs::write(dir.join("predictions.jsonl"), predictions_text).await?;
    let report_text = serde_json::to_string_pretty(&summary).map_err(std::io::Error::other)?;
    tokio::fs::write(dir.join("report.json"), report_text).await?;
    let stats_text = serde_json::to_string_pretty(stats).map_err(std::io::Error::other)?;
    tokio::fs::write(dir.join("stats.json"), stats_text).await?;
    let markdown = format!("# swe-env run {}\n\n{}", stats.run_id, render_table(stats));
    tokio::fs::write(dir.join("summary.md"), markdown).await?;
    Ok(summary)
}
