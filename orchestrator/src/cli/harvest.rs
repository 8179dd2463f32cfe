//! `swe-env harvest`: K graded rollouts per task into size-bounded zstd shards with a manifest and a data card,
//! exactly once and resumable (see `crate::harvest`). Flags override the `--config` YAML; progress on stderr (a bar
//! on a terminal, periodic lines otherwise), a summary table or one JSON object (`--json`) on stdout.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::agent::ApiMode;
use crate::benchmark::{GradingNetwork, PullPolicy};
use crate::datasets::load_source;
use crate::grade::RuleSet;
use crate::harvest::config::{parse_temperatures, EndpointConfig, HarvestConfig};
use crate::harvest::runner::{
    run_harvest, DatasetInput, HarvestOutcome, HarvestProgress, RolloutEvent, Totals,
};
use swe_env_sandbox::DockerEngine;

use super::{EXIT_FAILED, EXIT_INFRA, EXIT_INTERRUPTED};

/// Arguments of `swe-env harvest`. Every flag overrides the key of the same name (`-` → `_`) in `--config`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    swe-env harvest --dataset fixtures --model-url http://127.0.0.1:8000/v1 --model NAME --samples 4 --out h1\n  \
    swe-env harvest --config harvest.yaml --out h1 --workers 16   # rerun the same command to resume\n  \
    swe-env harvest --config harvest.yaml --out h1 --print-config\n\n\
    Exit codes: 0 every planned rollout committed, 1 some rollouts failed, were given up or a budget stopped the \
    harvest (rerun to retry / continue), 2 usage or a configuration change on resume, 3 infrastructure (also: \
    --max-consecutive-failures infrastructure failures in a row), 130 interrupted (Ctrl-C or SIGTERM).")]
pub struct HarvestArgs {
    /// Task source: `fixtures`, `verified`, `lite`, `full` or a JSONL/JSON/parquet path; repeatable.
    #[arg(long = "dataset")]
    pub datasets: Vec<String>,
    /// Base URL of an OpenAI-compatible endpoint ending in /v1; repeatable (round-robin). Replaces the config's
    /// `endpoints`.
    #[arg(long = "model-url")]
    pub model_urls: Vec<String>,
    /// Most requests in flight per `--model-url` endpoint [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: Option<u64>,
    /// Served model name.
    #[arg(long)]
    pub model: Option<String>,
    /// Rollouts per task (K) [default: 1].
    #[arg(long)]
    pub samples: Option<u32>,
    /// Output directory (created, or resumed when it holds a harvest of the same configuration).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Config file (YAML): the unified file (shared sections `model`, `agent`, `budgets`, `grading`, and the
    /// `harvest` section: every flag's key, `endpoints: [{url, max_in_flight}]`, `agent:` inline), or a file holding
    /// only the harvest section. Flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Rollouts in flight [default: 4].
    #[arg(long)]
    pub workers: Option<usize>,
    /// Only these instance ids (comma-separated or repeated).
    #[arg(long, value_delimiter = ',')]
    pub instance_ids: Vec<String>,
    /// Temperatures: sample k gets temperatures[k % len] (e.g. 0.2,0.6,1.0).
    #[arg(long, conflicts_with = "temperature_schedule")]
    pub temperatures: Option<String>,
    /// FROM:TO, linear over the sample index (e.g. 0.2:1.0).
    #[arg(long)]
    pub temperature_schedule: Option<String>,
    /// Base seed [default: 0]; each rollout's seed mixes it with the task and sample index.
    #[arg(long)]
    pub seed: Option<u64>,
    /// API mode (overrides the agent config's).
    #[arg(long, value_enum)]
    pub mode: Option<ApiMode>,
    /// Agent config YAML (mode, sampling, prompts, format-error limit).
    #[arg(long)]
    pub agent_config: Option<PathBuf>,
    /// Name of the environment variable holding the API key.
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Time allowed for one model request, seconds [default: 600].
    #[arg(long, alias = "request-timeout-secs")]
    pub request_timeout: Option<u64>,
    /// Most attempts per model call (1 = no retry) [default: 5].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Maximum agent turns per rollout [default: 128].
    #[arg(long)]
    pub max_turns: Option<u32>,
    /// Most output tokens per model call.
    #[arg(long)]
    pub max_tokens: Option<u32>,
    /// Context window of one rollout, tokens [default: the window the first endpoint serves, else 131072].
    #[arg(long, alias = "rollout-token-budget")]
    pub context_tokens: Option<u64>,
    /// Wall-clock limit of one rollout (episode), seconds [default: 3600].
    #[arg(long, alias = "rollout-time-budget-secs")]
    pub episode_timeout: Option<u64>,
    /// Tokens per task over all its rollouts (then its remaining rollouts are not started).
    #[arg(long)]
    pub task_token_budget: Option<u64>,
    /// Turns per task over all its rollouts.
    #[arg(long)]
    pub task_turn_budget: Option<u64>,
    /// Rollout wall time per task (summed), seconds.
    #[arg(long)]
    pub task_time_budget_secs: Option<u64>,
    /// Tokens over the whole harvest (all invocations).
    #[arg(long)]
    pub token_budget: Option<u64>,
    /// Turns over the whole harvest (all invocations).
    #[arg(long)]
    pub turn_budget: Option<u64>,
    /// Wall-clock seconds of this invocation.
    #[arg(long)]
    pub time_budget_secs: Option<u64>,
    /// Network of grading containers [default: bridge].
    #[arg(long, value_enum)]
    pub grading_network: Option<GradingNetwork>,
    /// Grading rules [default: swebench-4.1].
    #[arg(long, value_enum)]
    pub rules: Option<RuleSet>,
    /// Time limit of the tests at grading, seconds [default: 1800].
    #[arg(long)]
    pub test_timeout: Option<u64>,
    /// Image name template for rows without an `image` field.
    #[arg(long)]
    pub image_template: Option<String>,
    /// When to pull images [default: missing].
    #[arg(long, value_enum)]
    pub pull: Option<PullPolicy>,
    /// Shard size limit, bytes [default: 268435456].
    #[arg(long)]
    pub max_shard_bytes: Option<u64>,
    /// A rollout that failed this many times (failures.jsonl, all invocations) is not run again [default: 3].
    #[arg(long)]
    pub max_rollout_failures: Option<u32>,
    /// Stop the harvest (exit 3) after this many rollout failures in a row of the model endpoint or Docker
    /// [default: 8].
    #[arg(long)]
    pub max_consecutive_failures: Option<u32>,
    /// Run the given-up rollouts (see --max-rollout-failures) once more.
    #[arg(long)]
    pub retry_given_up: bool,
    /// What is recorded of each model call (not part of the config hash).
    #[command(flatten)]
    pub recording: super::model_args::RecordingArgs,
    /// Print one JSON object with the outcome on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print the effective configuration (JSON, which is also YAML: usable as --config, under `harvest:`) and
    /// exit without touching Docker or the model.
    #[arg(long)]
    pub print_config: bool,
}

impl HarvestArgs {
    /// The configuration: the YAML file (if any) with every given flag applied.
    fn config(&self) -> anyhow::Result<HarvestConfig> {
        let mut config = crate::config::Loaded::load_with_section(
            self.config.as_deref(),
            &crate::config::HARVEST_OWN_KEYS,
        )
        .and_then(|loaded| loaded.harvest())
        .map_err(|e| super::error::usage(e.to_string()))?;
        if !self.datasets.is_empty() {
            config.datasets = self.datasets.clone();
        }
        if !self.model_urls.is_empty() {
            config.endpoints = self
                .model_urls
                .iter()
                .map(|url| EndpointConfig {
                    url: url.clone(),
                    max_in_flight: self.max_in_flight.map(|n| n as usize),
                })
                .collect();
        } else if let Some(limit) = self.max_in_flight {
            for endpoint in &mut config.endpoints {
                endpoint.max_in_flight = Some(limit as usize);
            }
        }
        if !self.instance_ids.is_empty() {
            config.instance_ids = self.instance_ids.clone();
        }
        if let Some(text) = &self.temperatures {
            config.temperatures = parse_temperatures(text)
                .map_err(|e| super::error::usage(format!("--temperatures: {e}")))?;
            config.temperature_schedule = None;
        }
        if let Some(schedule) = &self.temperature_schedule {
            config.temperature_schedule = Some(schedule.clone());
            config.temperatures.clear();
        }
        if self.retry_given_up {
            config.retry_given_up = true;
        }
        if let Some(logprobs) = self.recording.logprobs {
            config.logprobs = Some(logprobs);
        }
        if let Some(return_token_ids) = self.recording.return_token_ids {
            config.return_token_ids = Some(return_token_ids);
        }
        if self.agent_config.is_some() {
            config.agent_config = self.agent_config.clone();
            config.agent = None;
        }
        macro_rules! set {
            ($($field:ident),*) => {
                $(if let Some(value) = &self.$field {
                    config.$field = value.clone();
                })*
            };
        }
        macro_rules! set_option {
            ($($field:ident),*) => {
                $(if let Some(value) = &self.$field {
                    config.$field = Some(value.clone());
                })*
            };
        }
        set!(
            model,
            samples,
            workers,
            seed,
            request_timeout,
            max_attempts,
            max_turns,
            episode_timeout,
            grading_network,
            rules,
            test_timeout,
            image_template,
            pull,
            max_shard_bytes,
            max_rollout_failures,
            max_consecutive_failures
        );
        set_option!(
            out,
            mode,
            api_key_env,
            max_tokens,
            context_tokens,
            task_token_budget,
            task_turn_budget,
            task_time_budget_secs,
            token_budget,
            turn_budget,
            time_budget_secs
        );
        Ok(config)
    }
}

pub async fn run(args: HarvestArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.config()?;
    if config.context_tokens.is_none() && !args.print_config {
        if let Some(endpoint) = config.endpoints.first() {
            let mut client =
                swe_env_model::ClientConfig::new(endpoint.url.clone(), config.model.clone());
            client.api_key_env = config.api_key_env.clone();
            if let Some(served) = super::model_args::served_context_window(&client).await {
                eprintln!("context window: {served} tokens, as the model endpoint serves");
                config.context_tokens = Some(served);
            }
        }
    }
    let resolved = config
        .resolve()
        .map_err(|e| super::error::usage(e.to_string()))?;
    if args.print_config {
        let mut effective = resolved.config.clone();
        effective.agent = Some(resolved.agent.clone());
        effective.agent_config = None;
        let printed = serde_json::json!({ "harvest": effective });
        println!("{}", serde_json::to_string_pretty(&printed)?);
        eprintln!("config_hash: {}", resolved.config_hash);
        return Ok(ExitCode::SUCCESS);
    }
    let Some(out) = resolved.config.out.clone() else {
        return Err(super::error::usage("no output directory: give --out DIR"));
    };
    let datasets = load_datasets(&resolved.config).await?;
    let engine = DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker")?;
    let cancel = tokio_util::sync::CancellationToken::new();
    // SIGTERM (a scheduler or `kill`) is an interrupt like Ctrl-C: containers removed, card and parquet written.
    super::cancel_on_stop_signal(
        cancel.clone(),
        "in-flight rollouts are dropped (they run again next time) and their containers removed",
    );
    let progress = Arc::new(Display::new());
    // Without a terminal, a progress line every LINE_EVERY even while no rollout ends.
    let ticker = progress.bar.is_none().then(|| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(LINE_EVERY);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            loop {
                interval.tick().await;
                progress.tick();
            }
        })
    });
    eprintln!(
        "harvest into {}: {} datasets, K={}, {} workers, config {}",
        out.display(),
        datasets.len(),
        resolved.config.samples,
        resolved.config.workers,
        &resolved.config_hash[..12]
    );
    let outcome = run_harvest(
        &engine,
        out.clone(),
        resolved,
        datasets,
        progress.clone(),
        cancel,
    )
    .await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let outcome = outcome.map_err(|error| {
        if error.is_usage() {
            super::error::usage(error.to_string())
        } else {
            anyhow::Error::new(error).context(format!("harvesting into {}", out.display()))
        }
    })?;
    progress.finish();
    let code = exit_code(&outcome);
    if args.json {
        println!("{}", serde_json::to_string(&outcome_json(&outcome, code))?);
    } else {
        println!("{}", render_summary(&outcome));
    }
    if let Some(message) = &outcome.budget_stop {
        eprintln!("stopped by a budget: {message}");
    }
    if let Some(message) = &outcome.circuit_break {
        eprintln!("error: the harvest stopped: {message}");
    }
    if !outcome.given_up.is_empty() {
        eprintln!(
            "{} rollouts given up after failing --max-rollout-failures times for a reason of their own (failures.jsonl; \
             --retry-given-up runs them once more): {}{}",
            outcome.totals.given_up,
            outcome.given_up.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
            if outcome.given_up.len() > 5 { "; …" } else { "" }
        );
    }
    if let Some(error) = &outcome.store_error {
        eprintln!(
            "error: the harvest stopped: {error}; fix it and rerun the same command to continue"
        );
    }
    if outcome.interrupted {
        eprintln!("interrupted: committed rollouts are kept; rerun the same command to resume");
    } else if outcome.totals.failed > 0 {
        eprintln!(
            "{} rollouts failed (failures.jsonl); rerun the same command to retry them (one that has failed \
             --max-rollout-failures times for a reason of its own, not an outage, is given up)",
            outcome.totals.failed
        );
    }
    Ok(ExitCode::from(code))
}

/// Loads every dataset, hashes it and applies `instance_ids` (an id in none of them is a usage error).
async fn load_datasets(config: &HarvestConfig) -> anyhow::Result<Vec<DatasetInput>> {
    let wanted: HashSet<&str> = config.instance_ids.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut sources = HashSet::new();
    let mut digests: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for source in &config.datasets {
        if !sources.insert(source.as_str()) {
            return Err(super::error::usage(format!(
                "--dataset {source} is given twice: give each dataset once"
            )));
        }
        let loaded = load_source(source).await?;
        for error in &loaded.errors {
            eprintln!("warning: {source}: skipped a bad dataset row: {error}");
        }
        if loaded.instances.is_empty() {
            return Err(super::error::usage(format!(
                "no instances in {source}: check the dataset path or alias"
            )));
        }
        let digest = crate::benchmark::manifest::dataset_digest(source)
            .with_context(|| format!("hashing dataset {source}"))?;
        if let Some(first) = digests.insert(digest.sha256.clone(), source.clone()) {
            return Err(super::error::usage(format!(
                "--dataset {first} and --dataset {source} have the same content (sha256 {}): every rollout would \
                 be planned twice; give the dataset once",
                digest.sha256
            )));
        }
        let rows = loaded.instances.len() as u64;
        let instances: Vec<_> = loaded
            .instances
            .into_iter()
            .filter(|i| wanted.is_empty() || wanted.contains(i.instance_id.as_str()))
            .collect();
        seen.extend(instances.iter().map(|i| i.instance_id.clone()));
        out.push(DatasetInput {
            source: source.clone(),
            sha256: digest.sha256,
            rows,
            instances,
        });
    }
    check_unique_ids(&out)?;
    let mut unknown: Vec<&str> = wanted
        .iter()
        .filter(|id| !seen.contains(**id))
        .copied()
        .collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(super::error::usage(format!(
            "unknown instance ids (in none of the datasets): {}",
            unknown.join(", ")
        )));
    }
    Ok(out)
}

/// (instance, sample) must be unique in a harvest: an instance id in two datasets is refused.
fn check_unique_ids(datasets: &[DatasetInput]) -> anyhow::Result<()> {
    let mut owner: HashMap<&str, usize> = HashMap::new();
    let mut repeated = Vec::new();
    for (index, dataset) in datasets.iter().enumerate() {
        for instance in &dataset.instances {
            match owner.get(instance.instance_id.as_str()) {
                Some(&first) if first != index => {
                    repeated.push((instance.instance_id.as_str(), first, index))
                }
                Some(_) => {}
                None => {
                    owner.insert(&instance.instance_id, index);
                }
            }
        }
    }
    if repeated.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = repeated
        .iter()
        .take(5)
        .map(|(id, a, b)| {
            format!(
                "{id} (in {} and {})",
                datasets[*a].source, datasets[*b].source
            )
        })
        .collect();
    Err(super::error::usage(format!(
        "{} instance ids are in more than one dataset: {}{}; an (instance, sample) must be unique in a harvest: \
         remove the repeated rows from one of the files, or pass --instance-ids with the ids to harvest",
        repeated.len(),
        named.join(", "),
        if repeated.len() > 5 { ", …" } else { "" }
    )))
}

fn exit_code(outcome: &HarvestOutcome) -> u8 {
    if outcome.interrupted {
        EXIT_INTERRUPTED
    } else if outcome.store_error.is_some() || outcome.circuit_break.is_some() {
        EXIT_INFRA
    } else if outcome.totals.failed > 0
        || outcome.totals.skipped_budget > 0
        || outcome.totals.given_up > 0
    {
        EXIT_FAILED
    } else {
        super::EXIT_OK
    }
}

/// The `--json` object (contract section 6).
fn outcome_json(outcome: &HarvestOutcome, exit_code: u8) -> serde_json::Value {
    let t = &outcome.totals;
    serde_json::json!({
        "out": outcome.out.display().to_string(),
        "planned": t.planned,
        "committed_before": t.committed_before,
        "committed_new": t.committed_new,
        "committed_total": outcome.committed_total,
        "failed": t.failed,
        "failed_by_kind": t.failed_by_kind,
        "resolved_total": t.resolved_total,
        "skipped_budget": t.skipped_budget,
        "given_up": t.given_up,
        "given_up_rollouts": outcome.given_up,
        "circuit_break": outcome.circuit_break,
        "rollouts_per_hour": outcome.rollouts_per_hour(),
        "tokens_per_sec": outcome.tokens_per_sec(),
        "wall_secs": outcome.wall.as_secs_f64(),
        "time_ms": {
            "start": t.time.start_ms,
            "model": t.time.model_ms,
            "tool": t.time.tool_ms,
            "grade": t.time.grade_ms,
        },
        "tokens": t.tokens,
        "interrupted": outcome.interrupted,
        "budget_stop": outcome.budget_stop,
        "exit_code": exit_code,
    })
}

/// The summary table printed at the end (without `--json`).
fn render_summary(outcome: &HarvestOutcome) -> String {
    let t = &outcome.totals;
    let mut lines = vec![format!("harvest {}", outcome.out.display())];
    let mut row = |name: &str, value: String| lines.push(format!("  {name:<20} {value}"));
    row("planned", t.planned.to_string());
    row(
        "committed",
        format!(
            "{} (before {}, new {})",
            outcome.committed_total, t.committed_before, t.committed_new
        ),
    );
    let rate = if outcome.committed_total > 0 {
        100.0 * t.resolved_total as f64 / outcome.committed_total as f64
    } else {
        0.0
    };
    row("resolved", format!("{} ({rate:.1}%)", t.resolved_total));
    row(
        "failed",
        format!("{}{}", t.failed, kinds(&t.failed_by_kind)),
    );
    row("skipped (budget)", t.skipped_budget.to_string());
    row("given up", t.given_up.to_string());
    row(
        "rollouts/hour",
        format!("{:.1}", outcome.rollouts_per_hour()),
    );
    row("tokens/s", format!("{:.1}", outcome.tokens_per_sec()));
    row("wall", format!("{:.1} s", outcome.wall.as_secs_f64()));
    let parts = [
        ("container start", t.time.start_ms),
        ("model", t.time.model_ms),
        ("tools", t.time.tool_ms),
        ("grading", t.time.grade_ms),
    ];
    let sum: u64 = t.time.wall_ms.max(parts.iter().map(|p| p.1).sum());
    let share = |ms: u64| {
        if sum > 0 {
            100.0 * ms as f64 / sum as f64
        } else {
            0.0
        }
    };
    let where_ = parts
        .iter()
        .map(|(name, ms)| format!("{name} {:.1} s ({:.0}%)", *ms as f64 / 1e3, share(*ms)))
        .collect::<Vec<_>>()
        .join(", ");
    row(
        "time (rollout sums)",
        format!(
            "{where_}; rollout wall {:.1} s",
            t.time.wall_ms as f64 / 1e3
        ),
    );
    lines.push(format!(
        "outputs: shards/, manifest.jsonl, manifest.parquet, data_card.md, data_card.json{}",
        if t.failed > 0 { ", failures.jsonl" } else { "" }
    ));
    lines.join("\n")
}

fn kinds(by_kind: &BTreeMap<String, u64>) -> String {
    if by_kind.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    format!(" ({})", parts.join(", "))
}

/// Progress on stderr: an indicatif bar on a terminal, a plain line every 10 s (and one per failure) otherwise.
struct Display {
    bar: Option<ProgressBar>,
    started: Instant,
    last_line: Mutex<Instant>,
    /// The counts of the latest report (`None` before the plan is known).
    latest: Mutex<Option<Totals>>,
}

/// Seconds between plain progress lines.
const LINE_EVERY: Duration = Duration::from_secs(10);

impl Display {
    fn new() -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {pos}/{len} ETA {eta} {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_line: Mutex::new(Instant::now()),
            latest: Mutex::new(None),
        }
    }

    fn status(&self, totals: &Totals) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        format!(
            "{:.0} rollouts/h, {:.0} tok/s, resolved {}, errors {}{}",
            totals.committed_new as f64 * 3600.0 / secs,
            totals.tokens as f64 / secs,
            totals.resolved_total,
            totals.failed,
            kinds(&totals.failed_by_kind)
        )
    }

    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// The periodic line without a terminal: printed when none was for LINE_EVERY (rollouts may take minutes).
    fn tick(&self) {
        let Some(totals) = self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
        else {
            return;
        };
        let mut last = self
            .last_line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if last.elapsed() + Duration::from_millis(100) >= LINE_EVERY {
            *last = Instant::now();
            eprintln!(
                "progress {}/{}: {}",
                totals.done(),
                totals.to_run(),
                self.status(&totals)
            );
        }
    }

    fn remember(&self, totals: &Totals) {
        *self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(totals.clone());
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl HarvestProgress for Display {
    fn begin(&self, totals: &Totals) {
        self.remember(totals);
        if let Some(bar) = &self.bar {
            bar.set_length(totals.to_run());
        }
        self.say(&format!(
            "planned {} rollouts: {} committed before, {} given up, {} to run",
            totals.planned,
            totals.committed_before,
            totals.given_up,
            totals.to_run()
        ));
    }

    fn rollout(&self, event: &RolloutEvent, totals: &Totals) {
        self.remember(totals);
        if let RolloutEvent::Failed {
            instance_id,
            sample_idx,
            kind,
            error,
        } = event
        {
            self.say(&format!(
                "failed {instance_id} s{sample_idx} [{kind}]: {}",
                error.lines().next().unwrap_or_default()
            ));
        }
        match &self.bar {
            Some(bar) => {
                bar.set_position(totals.done());
                bar.set_message(self.status(totals));
            }
            None => {
                let mut last = self
                    .last_line
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if last.elapsed() >= LINE_EVERY || totals.done() == totals.to_run() {
                    *last = Instant::now();
                    eprintln!(
                        "progress {}/{}: {}",
                        totals.done(),
                        totals.to_run(),
                        self.status(totals)
                    );
                }
            }
        }
    }

    fn note(&self, message: &str) {
        self.say(message);
    }
}
