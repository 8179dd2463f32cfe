//! `swe-env bench grading`: where the time of grading and of a benchmark instance goes, on the fixture tasks.
//! Overheads are reported next to the test time measured in the same run, so the ratio is meaningful on a noisy
//! machine.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::bench::{print_rows, stats, GradingBenchArgs, Stats};
use crate::benchmark::results::InstanceResult;
use crate::benchmark::{run_benchmark, AgentSpec, Progress, PullPolicy, RunConfig};
use crate::datasets::load_source;
use crate::episode::EpisodeConfig;
use crate::grade::{grade_patch, GradeConfig};
use swe_env_sandbox::DockerEngine;

struct Quiet;

impl Progress for Quiet {
    fn finished(&self, _: &InstanceResult, _: usize, _: usize, _: usize) {}
    fn note(&self, _: &str) {}
}

pub async fn run(args: GradingBenchArgs) -> anyhow::Result<ExitCode> {
    let engine = DockerEngine::connect(Duration::from_secs(60))
        .await
        .context("connecting to Docker")?;
    let instances = load_source("fixtures").await?.instances;
    let grade_config = GradeConfig {
        network_mode: "none".into(),
        ..GradeConfig::default()
    };

    // Grading alone: fresh container + apply + anti-spoof + eval script + parse + report.
    let (mut grade_total, mut grade_tests, mut grade_overhead) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for instance in &instances {
            let id = format!(
                "bench-grade-{}-{round}-{}",
                std::process::id(),
                instance.instance_id
            );
            let outcome =
                grade_patch(&engine, instance, Some(&instance.patch), &grade_config, &id).await?;
            anyhow::ensure!(
                outcome.resolved,
                "gold did not resolve {}",
                instance.instance_id
            );
            grade_total.push(Duration::from_millis(outcome.total_ms));
            grade_tests.push(Duration::from_millis(outcome.test_ms));
            grade_overhead.push(Duration::from_millis(
                outcome.total_ms.saturating_sub(outcome.test_ms),
            ));
        }
    }

    // Whole instances through the benchmark runner with the gold agent, one at a time.
    let dir = std::env::temp_dir().join(format!("swe-env-bench-{}", std::process::id()));
    let (mut inst_total, mut inst_tests, mut inst_overhead) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let run_id = format!("round{round}");
        let config = RunConfig {
            run_id: run_id.clone(),
            dir: dir.join(&run_id),
            logs_dir: dir.join(&run_id).join("logs"),
            model_name: "gold".into(),
            agent: AgentSpec::Gold,
            workers: 1,
            pull: PullPolicy::Never,
            episode: EpisodeConfig::default(),
            grade: grade_config.clone(),
            retry_errors: false,
            ungraded_ids: Vec::new(),
            unknown_prediction_ids: Vec::new(),
            extra_settings: None,
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let outcome =
            run_benchmark(&engine, instances.clone(), config, Arc::new(Quiet), cancel).await?;
        for result in &outcome.results {
            inst_total.push(Duration::from_millis(result.total_ms));
            inst_tests.push(Duration::from_millis(result.test_ms));
            inst_overhead.push(Duration::from_millis(
                result
                    .total_ms
                    .saturating_sub(result.test_ms)
                    .saturating_sub(result.model_ms),
            ));
        }
    }
    let _ = tokio::fs::remove_dir_all(&dir).await;

    let rows: Vec<(&str, Stats)> = vec![
        ("grading: total", stats(grade_total)),
        ("grading: test command (eval script)", stats(grade_tests)),
        ("grading: overhead (total - tests)", stats(grade_overhead)),
        ("instance (gold): total", stats(inst_total)),
        ("instance (gold): tests", stats(inst_tests)),
        (
            "instance (gold): overhead (total-model-tests)",
            stats(inst_overhead),
        ),
    ];
    print_rows(&rows, args.json, 1)?;
    Ok(ExitCode::SUCCESS)
}
