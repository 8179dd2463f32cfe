//! `swe-env mine history|mutate`: new validated tasks from a repository's history (issue-fix) or by injecting bugs
//! into tasks that already pass (mutate-fix). Arguments, the output directory (`tasks.jsonl`, `rejected.jsonl`,
//! `swerl.jsonl`, `summary.json`), a progress bar, then a summary table and throughput lines (or `--json`).

use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use swe_env_grading::dataset::Instance;
use swe_env_grading::log_parsers::LogParser;
use swe_env_sandbox::DockerEngine;
use tokio_util::sync::CancellationToken;

use crate::grade::{GradeConfig, RuleSet};
use crate::mine::env::{EnvError, Environment, Recipe, DEFAULT_LOG_PARSER, DEFAULT_TEST_CMD};
use crate::mine::history::{Limits, PathRules, RejectReason, RevRange};
use crate::mine::issue_fix::{
    mine_history_cancellable, HistoryOptions, MineProgress, MineRunError, RejectedRow,
};
use crate::mine::mutate::{mine_mutations, MutateOptions, PassingState};
use crate::mine::output::{self, REJECTED, TASKS};
use crate::mine::swerl;
use crate::mine::validate::ValidateConfig;
use crate::task::{CONDA_ACTIVATE, OFFICIAL_IMAGE_TEMPLATE};

use super::error::usage;
use super::EXIT_INTERRUPTED;

/// `swe-env mine`.
#[derive(Debug, clap::Subcommand)]
pub enum MineCommand {
    /// Issue-fix tasks from a repository's history: every first-parent commit that changes source and tests is a
    /// candidate; each is validated in Docker (tests fail before, pass after, twice each) and kept as a task row.
    ///
    /// Example: `swe-env mine history --repo ../retrykit --image swe-env/fixture-retrykit:latest --activate
    /// 'source /opt/venv/bin/activate' --out mined`.
    History(Box<HistoryArgs>),
    /// Mutate-fix tasks: bugs injected into the code of tasks whose tests pass (at the gold patch or at base);
    /// a mutant that breaks tests becomes a task whose gold patch reverts it.
    ///
    /// Example: `swe-env mine mutate --tasks fixtures --instance swe-env-fixtures__retrykit-1 --out mutants`.
    Mutate(MutateArgs),
}

/// Docker network of the validation containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MineNetwork {
    /// Docker's default bridge (tests may reach the network).
    Bridge,
    /// No network (only `lo`).
    None,
}

impl MineNetwork {
    fn as_docker_mode(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::None => "none",
        }
    }
}

/// Which working state the mutants are injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// The task's base commit with its gold patch applied (its FAIL_TO_PASS and PASS_TO_PASS tests pass).
    Gold,
    /// The task's base commit (its PASS_TO_PASS tests pass).
    Base,
}

/// Validation options shared by both subcommands.
#[derive(Debug, Clone, clap::Args)]
pub struct ValidateArgs {
    /// Test runs per side (without / with the patch); a test whose status differs between runs is flaky and dropped.
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=10))]
    pub runs: usize,
    /// Candidates (history) or mutants (mutate) validated at once.
    #[arg(long, default_value_t = 2, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub workers: usize,
    /// Time limit of one test run, seconds.
    #[arg(long, default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub test_timeout: u64,
    /// Network of the validation containers.
    #[arg(long, value_enum, default_value_t = MineNetwork::Bridge)]
    pub network: MineNetwork,
}

impl ValidateArgs {
    fn config(&self) -> ValidateConfig {
        ValidateConfig {
            grade: GradeConfig {
                network_mode: self.network.as_docker_mode().to_owned(),
                test_timeout: Duration::from_secs(self.test_timeout),
                image_template: OFFICIAL_IMAGE_TEMPLATE.to_owned(),
                ..GradeConfig::default()
            }
            .with_rules(RuleSet::Swebench4_1),
            runs: self.runs,
        }
    }
}

/// Arguments of `swe-env mine history`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    swe-env mine history --repo ../myrepo --image myrepo-env:latest --activate 'source /opt/venv/bin/activate' --out mined\n  \
    swe-env mine history --repo ../myrepo --recipe env.yaml --since 2024-01-01 --max-candidates 50 --out mined\n  \
    swe-env mine history --repo ../myrepo --no-validate --out walk   # candidates + swerl.jsonl only, no Docker\n\n\
    Output (DIR): tasks.jsonl (run-benchmark-ready rows), rejected.jsonl, swerl.jsonl, summary.json.\n\
    Exit codes: 0 done (also with 0 tasks kept), 2 bad input (repository, revision, recipe, output directory), \
    3 infrastructure (Docker), 130 interrupted (Ctrl-C or SIGTERM: candidates in flight dropped, containers removed, finished ones written with interrupted = true in summary.json).")]
pub struct HistoryArgs {
    /// The repository (a work tree or a `.git` directory) on this machine.
    #[arg(long)]
    pub repo: PathBuf,
    /// Walk `FROM..TO` only (FROM and its ancestors excluded); default: the whole first-parent history.
    #[arg(long, conflicts_with_all = ["since", "until"])]
    pub from: Option<String>,
    /// Walk back from this revision.
    #[arg(long, default_value = "HEAD")]
    pub to: String,
    /// Only commits at or after this time (committer time): RFC 3339 or YYYY-MM-DD (that day's start, UTC).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<i64>,
    /// Only commits at or before this time: RFC 3339 or YYYY-MM-DD (that whole day, UTC).
    #[arg(long, value_parser = parse_until)]
    pub until: Option<i64>,
    /// Image holding the repository's environment (its /testbed is moved to each task's base commit).
    #[arg(long, conflicts_with = "recipe", required_unless_present_any = ["recipe", "no_validate"])]
    pub image: Option<String>,
    /// Shell line activating the environment in --image [default: the SWE-bench conda line].
    #[arg(long, requires = "image")]
    pub activate: Option<String>,
    /// Test command in --image (test files are appended) [default: pytest -rA -p no:cacheprovider].
    #[arg(long, requires = "image")]
    pub test_cmd: Option<String>,
    /// Log parser of the test output in --image [default: pytest].
    #[arg(long, requires = "image")]
    pub log_parser: Option<String>,
    /// Command re-run in /testbed at each base commit under the activation line (repeatable; e.g. a
    /// non-editable `pip install .`, an in-place extension build), so build products and installed copies are the
    /// base's and not the image's later code [default: none].
    #[arg(long = "install", value_name = "CMD", requires = "image")]
    pub install: Vec<String>,
    /// Environment recipe YAML (base_image, install, activate, test_cmd, log_parser, network) instead of --image.
    #[arg(long)]
    pub recipe: Option<PathBuf>,
    /// `owner/name` written into rows and instance ids [default: local/<repository directory name>].
    #[arg(long, value_parser = parse_repo_name)]
    pub repo_name: Option<String>,
    /// More test files: a glob over the whole path (`*`, `?` within a component, `**` across); repeatable.
    #[arg(long = "test-glob")]
    pub test_globs: Vec<String>,
    /// Validate at most this many candidates (newest first).
    #[arg(long)]
    pub max_candidates: Option<usize>,
    /// Walk only: write the candidates' SWE-RL records and the rejected commits, no Docker.
    #[arg(long)]
    pub no_validate: bool,
    #[command(flatten)]
    pub validate: ValidateArgs,
    /// Output directory (created; a previous mine output in it is replaced, anything else refuses it).
    #[arg(long)]
    pub out: PathBuf,
    /// Print summary.json on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `swe-env mine mutate`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    swe-env mine mutate --tasks fixtures --out mutants\n  \
    swe-env mine mutate --tasks mined/tasks.jsonl --instance local__repo-0123456789ab --state base --max-mutants 4 --out m2\n\n\
    Output (DIR): tasks.jsonl (run-benchmark-ready rows), rejected.jsonl, summary.json.\n\
    Exit codes: 0 done (also with 0 tasks kept), 2 bad input (--tasks, --instance, output directory), \
    3 infrastructure (Docker), 130 interrupted (Ctrl-C or SIGTERM: mutants in flight dropped, containers removed).")]
pub struct MutateArgs {
    /// Source tasks: `fixtures`, `verified`, `lite`, `full` or a JSONL/JSON/parquet path.
    #[arg(long)]
    pub tasks: String,
    /// Only these instance ids (repeatable or comma-separated).
    #[arg(long = "instance", value_delimiter = ',')]
    pub instances: Vec<String>,
    /// State the mutants are injected into.
    #[arg(long, value_enum, default_value_t = StateArg::Gold)]
    pub state: StateArg,
    /// Mutation operators (comma-separated; see mine/mutate.py) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub operators: Option<Vec<String>>,
    /// Most mutants listed per function (0: no cap).
    #[arg(long, default_value_t = 1)]
    pub max_per_function: usize,
    /// Most mutants listed per file (0: no cap).
    #[arg(long, default_value_t = 4)]
    pub max_per_file: usize,
    /// Most mutants tried per source task.
    #[arg(long = "max-mutants", default_value_t = 8, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_mutants: usize,
    /// Seed of the mutant sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub validate: ValidateArgs,
    /// Output directory (created; a previous mine output in it is replaced, anything else refuses it).
    #[arg(long)]
    pub out: PathBuf,
    /// Print summary.json on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(command: MineCommand) -> anyhow::Result<ExitCode> {
    match command {
        MineCommand::History(args) => history(*args).await,
        MineCommand::Mutate(args) => mutate(args).await,
    }
}

async fn history(args: HistoryArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let repo = args.repo.clone();
    let repository = git2::Repository::open(&repo).map_err(|e| {
        usage(format!(
            "--repo {}: not a git repository ({}): give the path of a clone on this machine",
            repo.display(),
            e.message()
        ))
    })?;
    for (flag, rev) in [
        ("--from", args.from.as_deref()),
        ("--to", Some(args.to.as_str())),
    ] {
        if let Some(rev) = rev {
            repository
                .revparse_single(rev)
                .and_then(|object| object.peel_to_commit())
                .map_err(|e| {
                    usage(format!(
                        "{flag} {rev}: not a commit of {} ({}): give a branch, tag or commit sha",
                        repo.display(),
                        e.message()
                    ))
                })?;
        }
    }
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since > until {
            return Err(usage(
                "--since is after --until: no commit can match; swap them",
            ));
        }
    }
    let repo_name = match &args.repo_name {
        Some(name) => name.clone(),
        None => default_repo_name(&repository, &repo),
    };
    drop(repository);
    let environment = match (&args.recipe, &args.image) {
        (Some(path), _) => {
            Environment::Recipe(Recipe::load(path).map_err(|e| usage(format!("--recipe: {e}")))?)
        }
        (None, image) => Environment::Image {
            image: image.clone().unwrap_or_default(),
            activate: args
                .activate
                .clone()
                .unwrap_or_else(|| CONDA_ACTIVATE.to_owned()),
            test_cmd: args
                .test_cmd
                .clone()
                .unwrap_or_else(|| DEFAULT_TEST_CMD.to_owned()),
            log_parser: args
                .log_parser
                .clone()
                .unwrap_or_else(|| DEFAULT_LOG_PARSER.to_owned()),
            install: args.install.clone(),
        },
    };
    if let Err(error) = LogParser::parse_lenient(environment.log_parser()) {
        return Err(usage(format!("--log-parser: {error}")));
    }
    let range = if args.since.is_some() || args.until.is_some() {
        RevRange::Dates {
            to: args.to.clone(),
            since: args.since,
            until: args.until,
        }
    } else {
        RevRange::Revs {
            from: args.from.clone(),
            to: args.to.clone(),
        }
    };
    let options = HistoryOptions {
        repo: repo.clone(),
        range,
        rules: PathRules {
            extra_test_globs: args.test_globs.clone(),
            ..PathRules::default()
        },
        limits: Limits::default(),
        repo_name: repo_name.clone(),
        environment,
        validate: args.validate.config(),
        workers: args.validate.workers,
        max_candidates: args.max_candidates,
        validate_tasks: !args.no_validate,
    };
    let engine = if args.no_validate {
        None
    } else {
        Some(connect().await?)
    };
    let inputs: Vec<&Path> = [Some(repo.as_path()), args.recipe.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    prepare_out(&args.out, &inputs)?;
    eprintln!(
        "mine history of {} ({repo_name}) into {}{}",
        repo.display(),
        args.out.display(),
        if args.no_validate {
            " (walk only, no validation)"
        } else {
            ""
        }
    );
    let cancel = CancellationToken::new();
    super::cancel_on_stop_signal(
        cancel.clone(),
        "candidates in flight dropped, containers removed, finished ones written",
    );
    let bar = Bar::new("candidates");
    let outcome = mine_history_cancellable(
        engine.as_ref(),
        &options,
        &|progress| bar.update(progress),
        &cancel,
    )
    .await;
    bar.finish();
    let report = match outcome {
        Ok(report) => report,
        Err(MineRunError::Cancelled) => {
            eprintln!(
                "interrupted before every candidate was validated: nothing written to {}; rerun to mine again",
                args.out.display()
            );
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        // The environment itself is wrong (an image that is not there, a recipe whose install fails): input.
        Err(MineRunError::Env(error @ (EnvError::ImageMissing { .. } | EnvError::Step { .. }))) => {
            return Err(usage(format!("environment: {error}")));
        }
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("mining the history of {}", repo.display())))
        }
    };

    let validated_ids: HashSet<String> = report
        .tasks
        .iter()
        .map(|task| task.instance_id.clone())
        .collect();
    let records = swerl::records(&repo, &repo_name, &report.candidates, &validated_ids)
        .with_context(|| format!("reading SWE-RL code context from {}", repo.display()))?;
    let validated = validated_count(report.tasks.len(), &report.rejected);
    let layer_bytes = match &engine {
        Some(engine) => history_layer_bytes(engine, &report.tasks).await,
        None => Vec::new(),
    };
    let images_made = report
        .tasks
        .iter()
        .filter_map(|task| task.image.as_deref())
        .collect::<HashSet<_>>()
        .len();
    let summary = Summary {
        kind: "history",
        validation: !args.no_validate,
        source: repo.display().to_string(),
        repo: Some(repo_name),
        out: args.out.display().to_string(),
        scanned: Some(report.scanned),
        candidates: Some(report.candidates.len()),
        validated,
        mutants_listed: None,
        mutants_tried: None,
        kept: report.tasks.len(),
        rejected: report.rejected.len(),
        rejected_by_reason: by_reason(&report.rejected),
        swerl_records: Some(records.len()),
        walk_secs: Some(report.walk_secs),
        validate_secs: report.validate_secs,
        total_secs: started.elapsed().as_secs_f64(),
        throughput: Throughput {
            commits_scanned_per_sec: Some(per(report.scanned, report.walk_secs, 1.0)),
            candidates_validated_per_hour: (!args.no_validate)
                .then(|| per(validated, report.validate_secs, 3600.0)),
            mutants_tried_per_hour: None,
            kept_per_hour: per(report.tasks.len(), started.elapsed().as_secs_f64(), 3600.0),
            container_runs: report.container_runs,
            images_made,
            image_layer_bytes_median: median(&layer_bytes),
        },
        image_layer_bytes: layer_bytes,
    };
    if report.interrupted || cancel.is_cancelled() {
        // The candidates finished before the signal are written; the summary says the run was cut short.
        let summary = InterruptedSummary {
            summary: &summary,
            interrupted: true,
        };
        output::write(
            &args.out,
            &report.tasks,
            &report.rejected,
            Some(&records),
            &summary,
        )
        .map_err(output_error)?;
        if args.json {
            println!("{}", serde_json::to_string(&summary)?);
        } else {
            print_summary(summary.summary, false)?;
        }
        eprintln!(
            "interrupted: the {} finished candidate(s) are written to {} (\"interrupted\": true in summary.json); \
             rerun to mine the rest",
            validated,
            args.out.display()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    }
    output::write(
        &args.out,
        &report.tasks,
        &report.rejected,
        Some(&records),
        &summary,
    )
    .map_err(output_error)?;
    print_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// `summary.json` of an interrupted `mine history`: the summary plus `"interrupted": true`.
#[derive(Serialize)]
struct InterruptedSummary<'a> {
    #[serde(flatten)]
    summary: &'a Summary,
    interrupted: bool,
}

async fn mutate(args: MutateArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let all = super::run_benchmark::load_tasks(&args.tasks).await?;
    let rows = select_rows(all, &args.instances, &args.tasks)?;
    let options = MutateOptions {
        state: match args.state {
            StateArg::Gold => PassingState::Gold,
            StateArg::Base => PassingState::Base,
        },
        operators: args.operators.clone(),
        max_per_function: args.max_per_function,
        max_per_file: args.max_per_file,
        max_mutants_per_task: args.max_mutants,
        seed: args.seed,
        validate: args.validate.config(),
        workers: args.validate.workers,
        image_template: OFFICIAL_IMAGE_TEMPLATE.to_owned(),
    };
    let engine = connect().await?;
    prepare_out(&args.out, &[Path::new(&args.tasks)])?;
    eprintln!(
        "mine mutate: {} source tasks from {} into {}",
        rows.len(),
        args.tasks,
        args.out.display()
    );
    let bar = Bar::new("mutants");
    let cancel = CancellationToken::new();
    super::cancel_on_stop_signal(
        cancel.clone(),
        "mutants in flight are dropped and this process's containers removed",
    );
    let on_progress = |progress| bar.update(progress);
    let outcome = tokio::select! {
        outcome = mine_mutations(&engine, &rows, &options, &on_progress) => Some(outcome),
        _ = cancel.cancelled() => None,
    };
    bar.finish();
    let Some(outcome) = outcome else {
        // The mining future is dropped: its containers' removals are in flight; sweep whatever this process owns.
        let removed = swe_env_sandbox::gc::remove_owned_until_quiet(&engine).await;
        eprintln!(
            "interrupted: {removed} container(s) removed; nothing written to {}; rerun to mine again",
            args.out.display()
        );
        return Ok(ExitCode::from(EXIT_INTERRUPTED));
    };
    let report = outcome.context("mining mutations")?;
    let secs = started.elapsed().as_secs_f64();
    let summary = Summary {
        kind: "mutate",
        validation: true,
        source: args.tasks.clone(),
        repo: None,
        out: args.out.display().to_string(),
        scanned: None,
        candidates: None,
        validated: report.tried,
        mutants_listed: Some(report.listed),
        mutants_tried: Some(report.tried),
        kept: report.tasks.len(),
        rejected: report.rejected.len(),
        rejected_by_reason: by_reason(&report.rejected),
        swerl_records: None,
        walk_secs: None,
        validate_secs: report.secs,
        total_secs: secs,
        throughput: Throughput {
            commits_scanned_per_sec: None,
            candidates_validated_per_hour: None,
            mutants_tried_per_hour: Some(per(report.tried, report.secs, 3600.0)),
            kept_per_hour: per(report.tasks.len(), secs, 3600.0),
            container_runs: report.container_runs,
            images_made: report.image_layer_bytes.len(),
            image_layer_bytes_median: median(&report.image_layer_bytes),
        },
        image_layer_bytes: report.image_layer_bytes.clone(),
    };
    output::write(&args.out, &report.tasks, &report.rejected, None, &summary)
        .map_err(output_error)?;
    print_summary(&summary, args.json)?;
    Ok(ExitCode::SUCCESS)
}

/// The own layer size of each distinct derived image of `tasks`: its size over the environment image it was made
/// from (`extra.swe_env_mined.env_image`). An image that cannot be inspected is left out (logged).
async fn history_layer_bytes(engine: &DockerEngine, tasks: &[Instance]) -> Vec<u64> {
    let mut pairs: Vec<(&str, &str)> = tasks
        .iter()
        .filter_map(|task| {
            let env_image = task
                .extra
                .get("swe_env_mined")?
                .get("env_image")?
                .as_str()?;
            Some((task.image.as_deref()?, env_image))
        })
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut sizes = Vec::new();
    for (image, env_image) in pairs {
        match (
            engine.image_info(image).await,
            engine.image_info(env_image).await,
        ) {
            (Ok(Some(made)), Ok(Some(from))) => sizes.push(made.size.saturating_sub(from.size)),
            (made, from) => {
                tracing::warn!(%image, %env_image, ?made, ?from, "cannot measure a derived image's layer")
            }
        }
    }
    sizes
}

async fn connect() -> anyhow::Result<DockerEngine> {
    DockerEngine::connect(Duration::from_secs(120))
        .await
        .context("connecting to Docker")
}

/// `--since`: RFC 3339, or YYYY-MM-DD meaning that day's first second (UTC); seconds since the epoch.
fn parse_since(text: &str) -> Result<i64, String> {
    parse_date(text, false)
}

/// `--until`: RFC 3339, or YYYY-MM-DD meaning that day's last second (UTC), so the day is included.
fn parse_until(text: &str) -> Result<i64, String> {
    parse_date(text, true)
}

/// `YYYY-MM-DD` (UTC; its last second when `end_of_day`) or RFC 3339 `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, as
/// seconds since the epoch (a fraction is dropped).
fn parse_date(text: &str, end_of_day: bool) -> Result<i64, String> {
    let bad = || {
        format!(
            "`{text}` is not a date: give YYYY-MM-DD (UTC) or an RFC 3339 time such as 2024-05-01T12:00:00Z"
        )
    };
    let number = |part: &str| -> Result<i64, String> {
        if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let text = text.trim();
    let (date, rest) = if text.len() > 10 && text.is_char_boundary(10) {
        text.split_at(10)
    } else {
        (text, "")
    };
    let fields: Vec<&str> = date.split('-').collect();
    let [year, month, day] = fields.as_slice() else {
        return Err(bad());
    };
    if year.len() != 4 || month.len() != 2 || day.len() != 2 {
        return Err(bad());
    }
    let month = time::Month::try_from(number(month)? as u8).map_err(|_| bad())?;
    let date = time::Date::from_calendar_date(number(year)? as i32, month, number(day)? as u8)
        .map_err(|_| bad())?;
    let midnight = date.midnight().assume_utc().unix_timestamp();
    if rest.is_empty() {
        return Ok(if end_of_day {
            midnight + 86_399
        } else {
            midnight
        });
    }
    let Some(clock) = rest.strip_prefix(['T', 't', ' ']) else {
        return Err(bad());
    };
    let (clock, offset) = if let Some(clock) = clock.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = clock.rfind(['+', '-']).ok_or_else(bad)?;
        let (clock, zone) = clock.split_at(at);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let Some((hours, minutes)) = zone[1..].split_once(':') else {
            return Err(bad());
        };
        if hours.len() != 2 || minutes.len() != 2 || number(hours)? > 23 || number(minutes)? > 59 {
            return Err(bad());
        }
        (
            clock,
            sign * (number(hours)? * 3600 + number(minutes)? * 60),
        )
    };
    let clock = clock.split_once('.').map_or(clock, |(whole, fraction)| {
        if fraction.bytes().all(|b| b.is_ascii_digit()) && !fraction.is_empty() {
            whole
        } else {
            ""
        }
    });
    let parts: Vec<&str> = clock.split(':').collect();
    let [hour, minute, second] = parts.as_slice() else {
        return Err(bad());
    };
    if [hour, minute, second].iter().any(|part| part.len() != 2) {
        return Err(bad());
    }
    let (hour, minute, second) = (number(hour)?, number(minute)?, number(second)?);
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    Ok(midnight + hour * 3600 + minute * 60 + second - offset)
}

/// `--repo-name`: `owner/name`, both non-empty, no more slashes.
fn parse_repo_name(text: &str) -> Result<String, String> {
    match text.split_once('/') {
        Some((owner, name)) if !owner.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(text.to_owned())
        }
        _ => Err(format!("`{text}` is not owner/name (e.g. psf/requests)")),
    }
}

/// `local/<directory name of the work tree>` (the repository's own directory for a bare or `.git` path).
fn default_repo_name(repository: &git2::Repository, given: &Path) -> String {
    let dir = repository
        .workdir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| given.to_path_buf());
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name != ".git")
        .or_else(|| {
            dir.parent()
                .and_then(Path::file_name)
                .map(|name| name.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "repo".to_owned());
    format!("local/{}", name.trim_end_matches(".git"))
}

/// The rows of `--instance` (all rows when none is given); an id the source does not hold is a usage error.
fn select_rows(
    all: Vec<Instance>,
    wanted: &[String],
    source: &str,
) -> anyhow::Result<Vec<Instance>> {
    if all.is_empty() {
        return Err(usage(format!(
            "--tasks {source}: no task rows: check the path or alias"
        )));
    }
    if wanted.is_empty() {
        return Ok(all);
    }
    let known: HashSet<&str> = all.iter().map(|row| row.instance_id.as_str()).collect();
    let unknown: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|id| !known.contains(id))
        .collect();
    if !unknown.is_empty() {
        return Err(usage(format!(
            "--instance {}: not in {source}: check the ids (`instance_id` of the rows)",
            unknown.join(", ")
        )));
    }
    let wanted: HashSet<&str> = wanted.iter().map(String::as_str).collect();
    Ok(all
        .into_iter()
        .filter(|row| wanted.contains(row.instance_id.as_str()))
        .collect())
}

/// The reasons of the history walk (a commit that never reached validation).
fn is_walk_reason(reason: &str) -> bool {
    [
        RejectReason::NoTests,
        RejectReason::NoSource,
        RejectReason::Binary,
        RejectReason::TooLarge,
        RejectReason::MergeWithoutChanges,
        RejectReason::Empty,
        RejectReason::NoParent,
    ]
    .iter()
    .any(|walk| walk.as_str() == reason)
}

/// Rows that went through Docker validation: the kept ones and those rejected by validation.
fn validated_count(kept: usize, rejected: &[RejectedRow]) -> usize {
    kept + rejected
        .iter()
        .filter(|row| !is_walk_reason(&row.reason))
        .count()
}

fn by_reason(rejected: &[RejectedRow]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for row in rejected {
        *counts.entry(row.reason.clone()).or_insert(0) += 1;
    }
    counts
}

/// `count` per `seconds`, scaled by `unit` (1 = per second, 3600 = per hour); 0 when no time passed.
fn per(count: usize, seconds: f64, unit: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds * unit
    } else {
        0.0
    }
}

fn median(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted.get(sorted.len() / 2).copied()
}

/// `summary.json` (and `--json`'s output).
#[derive(Debug, Clone, Serialize)]
struct Summary {
    /// `history` or `mutate`.
    kind: &'static str,
    /// Whether candidates were validated in Docker (false: `--no-validate`, a walk only).
    validation: bool,
    /// The repository path (history) or the `--tasks` source (mutate).
    source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    repo: Option<String>,
    out: String,
    /// Commits walked (history).
    #[serde(skip_serializing_if = "Option::is_none")]
    scanned: Option<usize>,
    /// Commits that change source and tests (history).
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates: Option<usize>,
    /// Candidates or mutants that went through Docker validation.
    validated: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutants_listed: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutants_tried: Option<usize>,
    kept: usize,
    rejected: usize,
    rejected_by_reason: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    swerl_records: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    walk_secs: Option<f64>,
    validate_secs: f64,
    total_secs: f64,
    throughput: Throughput,
    /// Layer sizes of the images made, bytes (when the pipeline measures them).
    image_layer_bytes: Vec<u64>,
}

#[derive(Debug, Clone, Serialize)]
struct Throughput {
    #[serde(skip_serializing_if = "Option::is_none")]
    commits_scanned_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    candidates_validated_per_hour: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mutants_tried_per_hour: Option<f64>,
    kept_per_hour: f64,
    container_runs: usize,
    images_made: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_layer_bytes_median: Option<u64>,
}

/// The output directory rule ([`output::prepare`]); a directory that cannot be used is bad input (exit 2).
fn prepare_out(dir: &Path, inputs: &[&Path]) -> anyhow::Result<()> {
    output::prepare(dir, inputs).map_err(output_error)
}

fn output_error(error: output::OutputError) -> anyhow::Error {
    if error.is_input() {
        usage(format!("--out {error}"))
    } else {
        anyhow::Error::new(error)
    }
}

fn print_summary(summary: &Summary, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!("{}", render_summary(summary));
    }
    if summary.kept == 0 && summary.validation {
        eprintln!(
            "warning: no task kept ({} rejected; see {}/{REJECTED})",
            summary.rejected, summary.out
        );
    }
    Ok(())
}

/// The console summary: counts per reason, then the throughput lines.
fn render_summary(summary: &Summary) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut count = |label: &str, value: usize| rows.push((label.to_owned(), value.to_string()));
    if let Some(scanned) = summary.scanned {
        count("commits scanned", scanned);
    }
    if let Some(candidates) = summary.candidates {
        count("candidates", candidates);
    }
    if let Some(listed) = summary.mutants_listed {
        count("mutants listed", listed);
    }
    if let Some(tried) = summary.mutants_tried {
        count("mutants tried", tried);
    }
    count("validated", summary.validated);
    count("kept", summary.kept);
    count("rejected", summary.rejected);
    for (reason, n) in &summary.rejected_by_reason {
        rows.push((format!("  {reason}"), n.to_string()));
    }
    let throughput = &summary.throughput;
    let rate = |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    rows.push((String::new(), String::new()));
    rows.push((
        "commits scanned/s".into(),
        rate(throughput.commits_scanned_per_sec),
    ));
    rows.push((
        "candidates validated/hour".into(),
        rate(throughput.candidates_validated_per_hour),
    ));
    rows.push((
        "mutants tried/hour".into(),
        rate(throughput.mutants_tried_per_hour),
    ));
    rows.push(("kept/hour".into(), rate(Some(throughput.kept_per_hour))));
    rows.push((
        "container runs".into(),
        throughput.container_runs.to_string(),
    ));
    rows.push((
        "images made (layer bytes median)".into(),
        match throughput.image_layer_bytes_median {
            Some(bytes) => format!("{} ({})", throughput.images_made, human_bytes(bytes)),
            None => format!("{} (-)", throughput.images_made),
        },
    ));
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    let mut out = format!(
        "mine {}: {} kept of {} validated → {}/{TASKS} ({:.1}s)\n",
        summary.kind, summary.kept, summary.validated, summary.out, summary.total_secs
    );
    for (label, value) in rows {
        if label.is_empty() {
            out.push('\n');
        } else {
            out.push_str(&format!("{label:<width$}  {value:>10}\n"));
        }
    }
    out.truncate(out.trim_end().len());
    out
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The progress bar on stderr (hidden when stderr is not a terminal): done/total with ETA and the kept count.
struct Bar {
    bar: ProgressBar,
}

impl Bar {
    fn new(what: &str) -> Self {
        let bar = if std::io::stderr().is_terminal() {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        if let Ok(style) = ProgressStyle::with_template(&format!(
            "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}, ETA {{eta}}, {{msg}}"
        )) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(250));
        Self { bar }
    }

    fn update(&self, progress: MineProgress) {
        self.bar.set_length(progress.total as u64);
        self.bar.set_position(progress.done as u64);
        self.bar.set_message(format!("kept {}", progress.kept));
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::Value;

    #[test]
    fn dates_are_rfc_3339_or_whole_days() {
        // 2024-05-01T00:00:00Z = 1714521600.
        assert_eq!(parse_since("2024-05-01"), Ok(1_714_521_600));
        assert_eq!(parse_until("2024-05-01"), Ok(1_714_521_600 + 86_399));
        assert_eq!(
            parse_since("2024-05-01T12:30:15Z"),
            Ok(1_714_521_600 + 45_015)
        );
        assert_eq!(
            parse_until("2024-05-01T12:30:15Z"),
            Ok(1_714_521_600 + 45_015)
        );
        assert_eq!(
            parse_since("2024-05-01t12:30:15.250z"),
            Ok(1_714_521_600 + 45_015)
        );
        assert_eq!(
            parse_since("2024-05-01T12:30:15+02:00"),
            Ok(1_714_521_600 + 45_015 - 7_200)
        );
        assert_eq!(
            parse_since("2024-05-01T12:30:15-01:30"),
            Ok(1_714_521_600 + 45_015 + 5_400)
        );
        assert_eq!(parse_since("1969-12-31"), Ok(-86_400));
        for bad in [
            "",
            "2024-5-1",
            "2024-02-30",
            "2024-13-01",
            "01-05-2024",
            "2024-05-01T12:30Z",
            "2024-05-01T25:00:00Z",
            "2024-05-01T12:30:15",
            "2024-05-01T12:30:15+0200",
            "2024-05-01T12:30:15.Z",
            "yesterday",
            "2024-05-01x",
        ] {
            let error = parse_since(bad).unwrap_err();
            assert!(error.contains("YYYY-MM-DD"), "{bad}: {error}");
        }
    }

    #[test]
    fn repo_names_are_owner_slash_name() {
        assert_eq!(parse_repo_name("psf/requests"), Ok("psf/requests".into()));
        for bad in ["requests", "/x", "x/", "a/b/c"] {
            assert!(parse_repo_name(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("My.Repo");
        let repository = git2::Repository::init(&work).unwrap();
        assert_eq!(default_repo_name(&repository, &work), "local/My.Repo");
        assert_eq!(
            default_repo_name(&repository, &work.join(".git")),
            "local/My.Repo"
        );
        let bare = git2::Repository::init_bare(dir.path().join("tool.git")).unwrap();
        assert_eq!(
            default_repo_name(&bare, &dir.path().join("tool.git")),
            "local/tool"
        );
    }

    #[test]
    fn outputs_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let rejected = vec![
            RejectedRow {
                id: "aaa".into(),
                instance_id: None,
                reason: "no_tests".into(),
                detail: String::new(),
            },
            RejectedRow {
                id: "bbb".into(),
                instance_id: Some("local__demo-bbb".into()),
                reason: "no_fail_to_pass".into(),
                detail: String::new(),
            },
            RejectedRow {
                id: "ccc".into(),
                instance_id: Some("local__demo-ccc".into()),
                reason: "no_fail_to_pass".into(),
                detail: String::new(),
            },
        ];
        assert_eq!(validated_count(1, &rejected), 3);
        let summary = Summary {
            kind: "history",
            validation: true,
            source: "/r".into(),
            repo: Some("local/demo".into()),
            out: dir.path().display().to_string(),
            scanned: Some(10),
            candidates: Some(3),
            validated: 3,
            mutants_listed: None,
            mutants_tried: None,
            kept: 1,
            rejected: 3,
            rejected_by_reason: by_reason(&rejected),
            swerl_records: Some(3),
            walk_secs: Some(0.5),
            validate_secs: 36.0,
            total_secs: 36.5,
            throughput: Throughput {
                commits_scanned_per_sec: Some(per(10, 0.5, 1.0)),
                candidates_validated_per_hour: Some(per(3, 36.0, 3600.0)),
                mutants_tried_per_hour: None,
                kept_per_hour: per(1, 36.0, 3600.0),
                container_runs: 12,
                images_made: 2,
                image_layer_bytes_median: median(&[300, 100, 5_000_000]),
            },
            image_layer_bytes: vec![300, 100, 5_000_000],
        };
        let table = render_summary(&summary);
        for line in [
            "commits scanned/s",
            "20.0",
            "candidates validated/hour",
            "300.0",
            "mutants tried/hour",
            "kept/hour",
            "100.0",
            "container runs",
            "images made (layer bytes median)",
            "2 (300 B)",
            "  no_fail_to_pass",
        ] {
            assert!(table.contains(line), "{line} in\n{table}");
        }
        assert_eq!(summary.rejected_by_reason["no_fail_to_pass"], 2);
        output::write(dir.path(), &[], &rejected, Some(&[]), &summary).unwrap();
        let written: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(output::SUMMARY)).unwrap(),
        )
        .unwrap();
        assert_eq!(written["throughput"]["container_runs"], 12);
        assert_eq!(written["rejected_by_reason"]["no_tests"], 1);
        assert_eq!(written["throughput"]["image_layer_bytes_median"], 300);
    }

    fn row(id: &str) -> Instance {
        swe_env_grading::dataset::instance_from_value(serde_json::json!({
            "repo": "local/demo", "instance_id": id, "base_commit": "0123456789abcdef0123456789abcdef01234567",
            "patch": "", "test_patch": "diff --git a/tests/t.py b/tests/t.py\n",
        }))
        .unwrap()
    }

    #[test]
    fn selecting_instances() {
        let rows = vec![row("a"), row("b")];
        assert_eq!(select_rows(rows.clone(), &[], "x").unwrap().len(), 2);
        assert_eq!(
            select_rows(rows.clone(), &["b".into()], "x").unwrap()[0].instance_id,
            "b"
        );
        let error = select_rows(rows, &["b".into(), "zz".into()], "x").unwrap_err();
        assert!(format!("{error:#}").contains("zz"));
        assert_eq!(
            super::super::CliError::classify(error).exit_code(),
            super::super::EXIT_USAGE
        );
        assert!(select_rows(Vec::new(), &[], "x").is_err());
    }
}
