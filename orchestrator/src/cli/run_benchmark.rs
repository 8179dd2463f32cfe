//! `swe-env run-benchmark`: dataset → episodes → grading → resolved rate, resumable, with a live progress bar.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use swe_env_grading::dataset::Instance;

use crate::agent::BuiltinAgent;
use crate::benchmark::results::{InstanceResult, InstanceStatus};
use crate::benchmark::summary::render_table;
use crate::benchmark::{
    default_run_id, run_benchmark, AgentSpec, ModelAgent, Progress, PullPolicy, RunConfig,
    RunOutcome,
};
use crate::config::ConfigFile;
use crate::datasets::load_source;
use crate::episode::EpisodeConfig;
use crate::grade::GradeConfig;
use crate::scaling::report::render_scaling_table;
use crate::scaling::select::Selector;
use crate::scaling::{run_scaled, testgen, ScaledOutcome, ScalingConfig, MAX_SAMPLES};
use crate::task::OFFICIAL_IMAGE_TEMPLATE;
use swe_env_sandbox::DockerEngine;

use super::EXIT_INTERRUPTED;

pub use crate::benchmark::GradingNetwork;

/// Arguments shared by `run-benchmark` and `evaluate`: what to run and where results go.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Only these instance ids (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub instance_ids: Vec<String>,
    /// Instances run at once.
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub workers: usize,
    /// Run id (output sub-directory); rerunning the same id resumes it if its settings match (manifest.json).
    /// Default: the current time and a random suffix (`20261130-051500-3f9a`).
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,
    /// Where runs are written.
    #[arg(long, default_value = "runs")]
    pub output_dir: PathBuf,
    /// Image name template for rows without an `image` field (`{id}` = id with `__` → `_1776_`).
    #[arg(long, default_value = OFFICIAL_IMAGE_TEMPLATE)]
    pub image_template: String,
    /// When to pull images.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Network of grading containers.
    #[arg(long, value_enum, default_value_t = GradingNetwork::Bridge)]
    pub grading_network: GradingNetwork,
    /// Time limit of the tests at grading, seconds.
    #[arg(long, default_value_t = 1800, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_timeout: u64,
    /// Grading rules: `swebench-4.1` (the reference harness exactly), `swebench-5`, or `hardened` (reference +
    /// anti-spoofing: conftest.py restored, clean tree between apply attempts, exit-code cross-check).
    #[arg(long, value_enum, default_value_t = crate::grade::RuleSet::Swebench4_1)]
    pub rules: crate::grade::RuleSet,
    /// Re-run instances whose earlier result in this run was an error.
    #[arg(long)]
    pub retry_errors: bool,
    /// Resume this run even though result-changing settings differ from those it started with (agent, model
    /// config, dataset content, budgets, grading options); the differences are recorded in its manifest.json.
    #[arg(long)]
    pub force_resume: bool,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// What to run and where results go (`run-benchmark`): [`RunArgs`] with every value optional, so that a flag that
/// is not given leaves the config file's value (or the built-in default) in place.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchmarkRunArgs {
    /// Only these instance ids (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub instance_ids: Vec<String>,
    /// Instances run at once [default: 2].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=4096))]
    pub workers: Option<usize>,
    /// Run id (output sub-directory); rerunning the same id resumes it if its settings match (manifest.json).
    /// Default: the current time and a random suffix (`20261130-051500-3f9a`).
    #[arg(long, value_parser = parse_run_id)]
    pub run_id: Option<String>,
    /// Where runs are written [default: runs].
    #[arg(long)]
    pub output_dir: Option<PathBuf>,
    /// Image name template for rows without an `image` field (`{id}` = id with `__` → `_1776_`) [default: the
    /// official SWE-bench one].
    #[arg(long)]
    pub image_template: Option<String>,
    /// When to pull images [default: missing].
    #[arg(long, value_enum)]
    pub pull: Option<PullPolicy>,
    /// Network of grading containers [default: bridge].
    #[arg(long, value_enum)]
    pub grading_network: Option<GradingNetwork>,
    /// Time limit of the tests at grading, seconds [default: 1800].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_timeout: Option<u64>,
    /// Grading rules: `swebench-4.1` (the reference harness exactly), `swebench-5`, or `hardened` (reference +
    /// anti-spoofing: conftest.py restored, clean tree between apply attempts, exit-code cross-check)
    /// [default: swebench-4.1].
    #[arg(long, value_enum)]
    pub rules: Option<crate::grade::RuleSet>,
    /// Re-run instances whose earlier result in this run was an error.
    #[arg(long)]
    pub retry_errors: bool,
    /// Resume this run even though result-changing settings differ from those it started with (agent, model
    /// config, dataset content, budgets, grading options); the differences are recorded in its manifest.json.
    #[arg(long)]
    pub force_resume: bool,
    /// Print the final summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `swe-env run-benchmark`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env run-benchmark fixtures --agent gold\n  \
    swe-env run-benchmark fixtures --config swe-env.yaml --workers 4          # flags override the file\n  \
    swe-env run-benchmark fixtures --config swe-env.yaml --print-config       # the effective config, then exit\n  \
    swe-env run-benchmark verified --agent empty --instance-ids django__django-11099 --pull never\n  \
    swe-env run-benchmark tasks.jsonl --agent gold --workers 4 --run-id try1   # run again to resume\n  \
    swe-env run-benchmark fixtures --agent gold --samples 3                    # K samples, majority vote\n  \
    swe-env run-benchmark verified --model-url http://127.0.0.1:8000/v1 --model NAME --samples 8 \\\n    \
    --testgen-samples 4 --select tests,majority,oracle                          # test-time scaling"
)]
pub struct RunBenchmarkArgs {
    /// `verified`, `lite`, `full` (SWE-bench on the HF hub, cached), `fixtures` (built-in), or a JSONL/JSON/parquet path.
    pub dataset: String,
    /// Config file (YAML: sections `model`, `agent`, `budgets`, `sandbox`, `grading`, `benchmark`; other
    /// commands' sections are ignored); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (JSON, which is YAML: usable as --config) and exit without touching
    /// Docker or the model.
    #[arg(long)]
    pub print_config: bool,
    /// Built-in agent [default: gold, unless a model is configured].
    #[arg(long, value_enum, conflicts_with = "model_urls")]
    pub agent: Option<BuiltinAgent>,
    /// Maximum agent turns per episode [default: 128].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_turns: Option<u32>,
    /// Context window, tokens: the prompt tells the model this number and the episode stops at it [default: the
    /// window the model endpoint serves, else 131072].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub context_tokens: Option<u64>,
    /// Wall-clock limit of one episode, seconds [default: 3600].
    #[arg(long, alias = "timeout", value_parser = clap::value_parser!(u64).range(1..))]
    pub episode_timeout: Option<u64>,
    /// A model agent instead of a built-in one (`--model-url URL --model NAME`; `--agent` is then ignored).
    #[command(flatten)]
    pub model: super::model_args::ModelArgs,
    /// Test-time scaling: K rollouts, generated tests, selection.
    #[command(flatten)]
    pub scaling: ScalingArgs,
    #[command(flatten)]
    pub run: BenchmarkRunArgs,
}

/// Test-time scaling options of `run-benchmark`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalingArgs {
    /// Solving rollouts per instance (K), each its own episode, seed and trajectory, all graded; above 1 the run
    /// reports pass@1, pass@K and selected@K (scaling.json) and report.json holds the selected patches.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SAMPLES)))]
    pub samples: u32,
    /// Test-generation episodes per instance (M): the agent writes a standalone script printing `Issue reproduced`
    /// / `Issue resolved` / `Other issues`; valid scripts rank the candidates for `--select tests` (needs a model).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_SAMPLES)))]
    pub testgen_samples: u32,
    /// Selectors, comma-separated: `tests` (generated tests, ties by majority), `majority` (vote over normalised
    /// patches), `oracle` (the real tests: pass@K, never report.json). The first non-oracle one is report.json's.
    /// Default: `tests,majority` with --testgen-samples, else `majority`.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub select: Vec<Selector>,
    /// Time limit of one run of a generated test, seconds [default: 60] (needs --testgen-samples).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=testgen::MAX_TIMEOUT_SECS))]
    pub testgen_timeout: Option<u64>,
    /// The test-generation episode's user prompt (a template with `{{issue}}` and `{{repo_root}}`) instead of the
    /// built-in one (needs --testgen-samples).
    #[arg(long, value_name = "FILE")]
    pub testgen_prompt: Option<PathBuf>,
    /// Base seed: rollout k of an instance samples with seed sha256(`{seed}\n{instance}\n{k}`) (generated tests
    /// with `{instance}#testgen`) [default: 0] (needs --samples > 1 or --testgen-samples).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl ScalingArgs {
    /// Whether the run is scaled (K > 1 or generated tests); a plain run keeps today's outputs exactly.
    pub fn is_scaled(&self) -> bool {
        self.samples > 1 || self.testgen_samples > 0 || !self.select.is_empty()
    }

    /// The scaling configuration, the prompt file read.
    pub fn config(&self) -> anyhow::Result<ScalingConfig> {
        if self.testgen_samples == 0 {
            for (given, flag) in [
                (self.testgen_timeout.is_some(), "--testgen-timeout"),
                (self.testgen_prompt.is_some(), "--testgen-prompt"),
            ] {
                if given {
                    return Err(super::error::usage(format!(
                        "{flag} applies to generated tests only: add --testgen-samples M, or leave {flag} out"
                    )));
                }
            }
        }
        let testgen_template = match &self.testgen_prompt {
            Some(path) => std::fs::read_to_string(path).map_err(|error| {
                super::error::usage(format!(
                    "cannot read --testgen-prompt {}: {error}",
                    path.display()
                ))
            })?,
            None => testgen::DEFAULT_TESTGEN_TEMPLATE.to_owned(),
        };
        let selectors = if self.select.is_empty() {
            if self.testgen_samples > 0 {
                vec![Selector::Tests, Selector::Majority]
            } else {
                vec![Selector::Majority]
            }
        } else {
            let mut seen = Vec::new();
            for selector in &self.select {
                if !seen.contains(selector) {
                    seen.push(*selector);
                }
            }
            seen
        };
        Ok(ScalingConfig {
            samples: self.samples,
            testgen_samples: self.testgen_samples,
            selectors,
            seed: self.seed.unwrap_or(0),
            testgen_template,
            limits: testgen::TestgenLimits {
                timeout: Duration::from_secs(
                    self.testgen_timeout
                        .unwrap_or(testgen::DEFAULT_TIMEOUT_SECS),
                ),
                ..testgen::TestgenLimits::default()
            },
        })
    }
}

/// The run's settings: defaults, then the config file, then the flags.
struct Resolved {
    agent: AgentSpec,
    episode: EpisodeConfig,
    run: RunArgs,
    /// The effective configuration as printed and stored (context window still unset when it is to be asked).
    effective: ConfigFile,
    /// Whether a model agent runs (then the context window may come from the endpoint).
    model: Option<swe_env_model::ClientConfig>,
    context_flag: Option<u64>,
    context_config: Option<u64>,
}

fn resolve(mut args: RunBenchmarkArgs) -> anyhow::Result<Resolved> {
    let loaded = crate::config::Loaded::load(args.config.as_deref())
        .map_err(|error| super::error::usage(error.to_string()))?;
    let file = loaded.file;
    args.model.apply_file(&file);
    let use_model = args.agent.is_none() && args.model.is_set();
    let (agent, client) = if use_model {
        let config = args
            .model
            .agent_config()
            .map_err(|e| super::error::usage(format!("{e:#}")))?;
        let client_config = args.model.client_config();
        let client = swe_env_model::ModelClient::new(client_config.clone())
            .map_err(|e| super::error::usage(format!("model client: {e}")))?;
        (
            AgentSpec::Model(Arc::new(ModelAgent {
                client: Arc::new(client),
                client_config: client_config.clone(),
                config,
            })),
            Some(client_config),
        )
    } else {
        let agent = match args.agent.unwrap_or(BuiltinAgent::Gold) {
            BuiltinAgent::Gold => AgentSpec::Gold,
            BuiltinAgent::Empty => AgentSpec::Empty,
        };
        (agent, None)
    };
    let bench = &file.benchmark;
    let flags = args.run;
    let defaults = EpisodeConfig::default();
    let grade_defaults = GradeConfig::default();
    let run = RunArgs {
        instance_ids: if flags.instance_ids.is_empty() {
            bench.instance_ids.clone()
        } else {
            flags.instance_ids
        },
        workers: flags.workers.or(bench.workers).unwrap_or(2),
        run_id: flags.run_id,
        output_dir: flags
            .output_dir
            .or_else(|| bench.output_dir.clone())
            .unwrap_or_else(|| PathBuf::from("runs")),
        image_template: flags
            .image_template
            .or_else(|| bench.image_template.clone())
            .unwrap_or_else(|| OFFICIAL_IMAGE_TEMPLATE.to_owned()),
        pull: flags.pull.or(bench.pull).unwrap_or_default(),
        grading_network: flags
            .grading_network
            .or(file.grading.network)
            .unwrap_or_default(),
        test_timeout: flags
            .test_timeout
            .or(file.grading.test_timeout)
            .unwrap_or(grade_defaults.test_timeout.as_secs()),
        rules: flags.rules.or(file.grading.rules).unwrap_or_default(),
        retry_errors: flags.retry_errors,
        force_resume: flags.force_resume,
        json: flags.json,
    };
    if !(1..=4096).contains(&run.workers) {
        return Err(super::error::usage(format!(
            "benchmark.workers is {}: give 1 to 4096",
            run.workers
        )));
    }
    if run.test_timeout == 0 {
        return Err(super::error::usage(
            "grading.test_timeout is 0: give at least 1 second",
        ));
    }
    let mut episode = EpisodeConfig {
        max_turns: args
            .max_turns
            .or(file.budgets.max_turns)
            .unwrap_or(defaults.max_turns),
        wall_clock: Duration::from_secs(
            args.episode_timeout
                .or(file.budgets.episode_timeout)
                .unwrap_or(defaults.wall_clock.as_secs()),
        ),
        image_template: run.image_template.clone(),
        ..EpisodeConfig::default()
    };
    if episode.max_turns == 0 || episode.wall_clock.is_zero() {
        return Err(super::error::usage(
            "budgets.max_turns and budgets.episode_timeout must be at least 1",
        ));
    }
    file.sandbox.apply(&mut episode);
    let context_flag = args.context_tokens;
    let context_config = file.budgets.context_tokens;
    if context_config == Some(0) {
        return Err(super::error::usage(
            "budgets.context_tokens is 0: give at least 1 (or leave it out)",
        ));
    }
    let effective = ConfigFile {
        model: if use_model {
            args.model.model_section()
        } else {
            crate::config::ModelSection::default()
        },
        agent: match &agent {
            AgentSpec::Model(model) => Some(model.config.clone()),
            _ => None,
        },
        budgets: crate::config::BudgetsSection {
            max_turns: Some(episode.max_turns),
            context_tokens: context_flag.or(context_config),
            episode_timeout: Some(episode.wall_clock.as_secs()),
        },
        sandbox: crate::config::SandboxSection::of(&episode),
        grading: crate::config::GradingSection {
            rules: Some(run.rules),
            network: Some(run.grading_network),
            test_timeout: Some(run.test_timeout),
        },
        benchmark: crate::config::BenchmarkSection {
            workers: Some(run.workers),
            output_dir: Some(run.output_dir.clone()),
            image_template: Some(run.image_template.clone()),
            pull: Some(run.pull),
            instance_ids: run.instance_ids.clone(),
        },
        harvest: None,
        serve: None,
    };
    Ok(Resolved {
        agent,
        episode,
        run,
        effective,
        model: client,
        context_flag,
        context_config,
    })
}

pub async fn run(args: RunBenchmarkArgs) -> anyhow::Result<ExitCode> {
    let print_config = args.print_config;
    let dataset = args.dataset.clone();
    let scaling_args = args.scaling.clone();
    let resolved = resolve(args)?;
    if print_config {
        println!("{}", serde_json::to_string_pretty(&resolved.effective)?);
        return Ok(ExitCode::SUCCESS);
    }
    let Resolved {
        agent,
        mut episode,
        run,
        mut effective,
        model,
        context_flag,
        context_config,
    } = resolved;
    let served = match (&model, context_flag.or(context_config)) {
        (Some(client), _) => super::model_args::served_context_window(client).await,
        (None, _) => None,
    };
    let (tokens, source, warning) =
        crate::config::context_window(context_flag, context_config, served);
    if let Some(warning) = warning {
        eprintln!("warning: {warning}");
    }
    episode.context_tokens = tokens;
    effective.budgets.context_tokens = Some(tokens);
    if !scaling_args.is_scaled() && scaling_args.seed.is_some() {
        return Err(super::error::usage(
            "--seed applies to scaled runs only: add --samples K (K > 1) or --testgen-samples M, or leave --seed out",
        ));
    }
    let scaling = if scaling_args.is_scaled() {
        let scaling = scaling_args.config()?;
        scaling
            .validate(&agent)
            .map_err(|error| super::error::usage(error.to_string()))?;
        Some(scaling)
    } else {
        None
    };
    let instances = select(load_tasks(&dataset).await?, &run.instance_ids, &dataset)?;
    execute_instances_recorded(
        instances,
        RunScope {
            dataset: dataset.clone(),
            ..RunScope::default()
        },
        agent,
        episode,
        &run,
        LogsLayout::InRun,
        scaling,
        crate::benchmark::manifest::Invocation {
            config: serde_json::to_value(&effective).ok(),
            context_tokens_source: Some(source.as_str().to_owned()),
        },
    )
    .await
}

/// Where per-instance grading logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogsLayout {
    /// `<output>/<run>/logs/<instance>/` (run-benchmark).
    InRun,
    /// `<output>/logs/run_evaluation/<run>/<model>/<instance>/`, the reference harness's layout (evaluate).
    Reference,
}

/// Loads a task source (`fixtures`, an alias, a path: see [`load_source`]); bad rows are warned about and skipped.
/// A source that cannot be loaded is an input error (exit 2).
pub(super) async fn load_tasks(dataset: &str) -> anyhow::Result<Vec<Instance>> {
    let loaded = load_source(dataset).await?;
    for error in &loaded.errors {
        eprintln!("warning: skipped a bad dataset row: {error}");
    }
    Ok(loaded.instances)
}

/// Dataset rows outside the graded set that the run summary still counts.
#[derive(Debug, Clone, Default)]
pub struct RunScope {
    /// The dataset source as given (recorded in the run's manifest.json with the sha256 of its content).
    pub dataset: String,
    /// Selected rows that are not run (evaluate: no prediction); report.json counts them as incomplete.
    pub ungraded_ids: Vec<String>,
    /// Prediction ids that are not in the dataset (warned about, counted in the summary).
    pub unknown_prediction_ids: Vec<String>,
}

/// Runs `instances`, prints the summary; shared with `evaluate`.
pub async fn execute_instances(
    instances: Vec<Instance>,
    scope: RunScope,
    agent: AgentSpec,
    episode: EpisodeConfig,
    args: &RunArgs,
    layout: LogsLayout,
    scaling: Option<ScalingConfig>,
) -> anyhow::Result<ExitCode> {
    execute_instances_recorded(
        instances,
        scope,
        agent,
        episode,
        args,
        layout,
        scaling,
        crate::benchmark::manifest::Invocation::default(),
    )
    .await
}

/// [`execute_instances`] with what the manifest records of this invocation (its effective configuration).
#[allow(clippy::too_many_arguments)]
pub async fn execute_instances_recorded(
    instances: Vec<Instance>,
    scope: RunScope,
    agent: AgentSpec,
    episode: EpisodeConfig,
    args: &RunArgs,
    layout: LogsLayout,
    scaling: Option<ScalingConfig>,
    invocation: crate::benchmark::manifest::Invocation,
) -> anyhow::Result<ExitCode> {
    let engine = DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker")?;
    // Containers of earlier swe-env processes that died (e.g. a killed run being resumed) go first.
    match swe_env_sandbox::collect_garbage(&engine, swe_env_sandbox::GcScope::Orphans).await {
        Ok(report) if !report.removed.is_empty() => {
            eprintln!(
                "removed {} orphaned containers of dead swe-env processes",
                report.removed.len()
            )
        }
        Ok(_) => {}
        Err(error) => eprintln!("warning: orphan clean-up failed: {error}"),
    }
    let run_id = args.run_id.clone().unwrap_or_else(default_run_id);
    let dir = args.output_dir.join(&run_id);
    let logs_dir = match layout {
        LogsLayout::InRun => dir.join("logs"),
        LogsLayout::Reference => args
            .output_dir
            .join("logs/run_evaluation")
            .join(&run_id)
            .join(crate::benchmark::log_dir_name(agent.name())),
    };
    // The progress bar shows the workers waiting on the model.
    let model_client = match &agent {
        AgentSpec::Model(model) => Some(model.client.clone()),
        _ => None,
    };
    let config = RunConfig {
        run_id: run_id.clone(),
        logs_dir: logs_dir.clone(),
        dir: dir.clone(),
        model_name: agent.name().to_owned(),
        agent,
        workers: args.workers,
        pull: args.pull,
        episode,
        grade: GradeConfig {
            network_mode: args.grading_network.as_docker_mode().to_owned(),
            test_timeout: Duration::from_secs(args.test_timeout),
            image_template: args.image_template.clone(),
            ..GradeConfig::default()
        }
        .with_rules(args.rules),
        retry_errors: args.retry_errors,
        ungraded_ids: scope.ungraded_ids,
        unknown_prediction_ids: scope.unknown_prediction_ids,
        extra_settings: scaling.as_ref().map(ScalingConfig::settings),
    };
    // Held until the run ends: a second process on this run directory fails fast.
    let instance_ids = instances.iter().map(|i| i.instance_id.clone()).collect();
    let _run_lock = crate::benchmark::manifest::begin_run(
        &config,
        &scope.dataset,
        instance_ids,
        args.force_resume,
        invocation,
    )
    .await
    .map_err(|error| {
        if error.is_usage() {
            super::error::usage(error.to_string())
        } else {
            anyhow::Error::new(error)
        }
    })?;
    let cancel = tokio_util::sync::CancellationToken::new();
    super::cancel_on_stop_signal(
        cancel.clone(),
        "in-flight instances are cancelled and their containers removed",
    );
    let units = match &scaling {
        Some(scaling) => instances.len() * (scaling.samples + scaling.testgen_samples) as usize,
        None => instances.len(),
    };
    let progress = Arc::new(BarProgress::new(units as u64));
    if let Some(client) = model_client {
        tokio::spawn(show_model_waits(progress.clone(), client));
    }
    eprintln!(
        "run {run_id}: {} instances, {} workers, output {}",
        instances.len(),
        args.workers,
        dir.display()
    );
    if let Some(scaling) = scaling {
        let outcome = run_scaled(
            &engine,
            instances,
            config,
            scaling,
            progress.clone(),
            cancel,
        )
        .await
        .with_context(|| format!("writing run outputs under {}", dir.display()))?;
        progress.bar.finish_and_clear();
        print_scaled(&outcome, args.json, &dir)?;
        if outcome.failures > 0 && !outcome.interrupted {
            return Ok(ExitCode::from(super::EXIT_FAILED));
        }
        return Ok(exit_code(&outcome.results, outcome.interrupted));
    }
    let outcome = run_benchmark(&engine, instances, config, progress.clone(), cancel)
        .await
        .with_context(|| format!("writing run outputs under {}", dir.display()))?;
    progress.bar.finish_and_clear();
    print_outcome(&outcome, args.json, &dir, &logs_dir)?;
    Ok(exit_code(&outcome.results, outcome.interrupted))
}

/// The scaled run's report: the table (or scaling.json's content with `--json`), then where the outputs are.
fn print_scaled(outcome: &ScaledOutcome, json: bool, dir: &std::path::Path) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome.report)?);
        return Ok(());
    }
    println!("{}", render_scaling_table(&outcome.report));
    if outcome.interrupted {
        println!(
            "interrupted: the samples and generated tests finished so far are kept in {} (samples.jsonl, \
             testgen.jsonl, pairs.jsonl); no selection or report was written — run the same command again to \
             resume",
            dir.display()
        );
        return Ok(());
    }
    if outcome.failures > 0 {
        println!(
            "{} samples, generated tests or candidate x test runs failed on infrastructure: see error_kind / error \
             in samples.jsonl and testgen.jsonl; --retry-errors runs them again (failed test runs are retried anyway)",
            outcome.failures
        );
    }
    println!(
        "outputs: {} (scaling.json, selection.jsonl, samples.jsonl, testgen.jsonl, pairs.jsonl, report.json of the \
         `{}` selection, predictions.jsonl, trajectories/)",
        dir.display(),
        outcome.report.primary.as_str()
    );
    Ok(())
}

/// The instances named by `--instance-ids` (all when none); an unknown id or an empty selection is a usage error.
pub(super) fn select(
    instances: Vec<Instance>,
    ids: &[String],
    dataset: &str,
) -> anyhow::Result<Vec<Instance>> {
    if instances.is_empty() {
        return Err(super::error::usage(format!(
            "no instances in {dataset}: check the dataset path or alias"
        )));
    }
    if ids.is_empty() {
        return Ok(instances);
    }
    if ids.iter().any(|id| id.trim().is_empty()) {
        return Err(super::error::usage(
            "--instance-ids holds an empty id: give comma-separated instance ids, e.g. --instance-ids a__b-1,c__d-2",
        ));
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let known: HashSet<&str> = instances.iter().map(|i| i.instance_id.as_str()).collect();
    let unknown: Vec<&str> = wanted
        .iter()
        .filter(|id| !known.contains(*id))
        .copied()
        .collect();
    if !unknown.is_empty() {
        let mut unknown = unknown;
        unknown.sort_unstable();
        return Err(super::error::usage(format!(
            "unknown instance ids (not in {dataset}): {}",
            unknown.join(", ")
        )));
    }
    Ok(instances
        .into_iter()
        .filter(|i| wanted.contains(i.instance_id.as_str()))
        .collect())
}

fn print_outcome(
    outcome: &RunOutcome,
    json: bool,
    dir: &std::path::Path,
    logs_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&outcome.stats)?);
        return Ok(());
    }
    println!("{}", render_table(&outcome.stats));
    for result in outcome
        .results
        .iter()
        .filter(|r| r.status == InstanceStatus::Error)
    {
        println!(
            "error {} [{}]: {}",
            result.instance_id,
            result.error_kind.as_deref().unwrap_or("?"),
            result.error.as_deref().unwrap_or("")
        );
    }
    if outcome.interrupted {
        println!("interrupted: partial results kept; run the same command again to resume");
    }
    println!(
        "outputs: {} (predictions.jsonl, report.json, stats.json, summary.md{}); grading logs: {}",
        dir.display(),
        if dir.join("trajectories").exists() {
            ", trajectories/"
        } else {
            ""
        },
        logs_dir.display()
    );
    Ok(())
}

fn exit_code(results: &[InstanceResult], interrupted: bool) -> ExitCode {
    if interrupted {
        ExitCode::from(EXIT_INTERRUPTED)
    } else if results.iter().any(|r| r.status == InstanceStatus::Error) {
        ExitCode::from(super::EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// A progress bar with the resolved-so-far count and the workers waiting on the model.
struct BarProgress {
    bar: ProgressBar,
    /// `resolved X/Y`, as last set.
    resolved: std::sync::Mutex<String>,
    /// `N waiting on model (longest S s)`, or empty.
    waiting: std::sync::Mutex<String>,
}

impl BarProgress {
    fn new(total: u64) -> Self {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(250));
        Self {
            bar,
            resolved: std::sync::Mutex::new(String::new()),
            waiting: std::sync::Mutex::new(String::new()),
        }
    }

    /// Sets one part of the message and redraws it.
    fn set_part(&self, part: &std::sync::Mutex<String>, text: String) {
        if let Ok(mut current) = part.lock() {
            *current = text;
        }
        let read =
            |part: &std::sync::Mutex<String>| part.lock().map(|t| t.clone()).unwrap_or_default();
        let parts: Vec<String> = [read(&self.resolved), read(&self.waiting)]
            .into_iter()
            .filter(|text| !text.is_empty())
            .collect();
        self.bar.set_message(parts.join(", "));
    }
}

/// Every second until the bar is finished: how many calls of `client` are in flight and the longest wait, in the
/// bar's message.
async fn show_model_waits(progress: Arc<BarProgress>, client: Arc<swe_env_model::ModelClient>) {
    while !progress.bar.is_finished() {
        let calls = client.calls_in_flight();
        let text = match calls.iter().map(|call| call.elapsed).max() {
            Some(longest) => format!(
                "{} waiting on model (longest {} s)",
                calls.len(),
                longest.as_secs()
            ),
            None => String::new(),
        };
        progress.set_part(&progress.waiting, text);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl BarProgress {
    /// Prints above the bar on a terminal, to stderr otherwise (the bar is hidden when not a TTY).
    fn say(&self, line: &str) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }
}

impl Progress for BarProgress {
    fn finished(
        &self,
        result: &InstanceResult,
        resolved_so_far: usize,
        done: usize,
        _total: usize,
    ) {
        self.bar.set_position(done as u64);
        self.set_part(&self.resolved, format!("resolved {resolved_so_far}/{done}"));
        let verdict = match result.status {
            InstanceStatus::Resolved => "resolved",
            InstanceStatus::Unresolved => "unresolved",
            InstanceStatus::Error => "error",
        };
        let line = format!(
            "{verdict:>10}  {}  ({:.1}s)",
            result.instance_id,
            result.total_ms as f64 / 1e3
        );
        self.say(&line);
    }

    fn note(&self, message: &str) {
        self.say(message);
    }

    fn advanced(&self, line: &str, done: usize, total: usize) {
        if self.bar.length() != Some(total as u64) {
            self.bar.set_length(total as u64);
        }
        self.bar.set_position(done as u64);
        self.say(line);
    }
}

/// A run id names a directory under `--output-dir` and goes into container names: 1–100 characters of
/// `[A-Za-z0-9._-]`, starting with a letter or digit (so never `.`, `..`, empty, or a path).
pub fn parse_run_id(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 100
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "`{text}` is not a run id: use 1-100 letters, digits, `.`, `_` or `-`, starting with a letter or digit \
             (it names a directory under --output-dir and goes into container names)"
        ))
    }
}
