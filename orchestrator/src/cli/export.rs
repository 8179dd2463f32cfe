//! `swe-env export`: trajectories → training formats, one JSON object per episode per line (loadable by HF
//! `datasets`), with filters, dedup and a per-task cap (`crate::trajectory::filter`).
//!
//! Inputs: trajectory files, directories of them, run directories (their `trajectories/`) and harvest output
//! directories (`manifest.jsonl` + `shards/`: every committed rollout; the per-trajectory filters read the manifest
//! rows, so excluded rollouts are never decoded). Torn last lines (crashed episodes) are tolerated; corrupt files,
//! files holding more than one episode and trajectories without an `episode_start` are reported and skipped
//! (exit 1). At the end, stderr says how many rows were exported and how many trajectories were excluded, per
//! reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::harvest::store::{read_manifest, read_rollout, ManifestRow, MANIFEST_FILE, SHARDS_DIR};
use crate::trajectory::export::{
    to_cwm_transcript_with, to_openai_chat_with, ExportOptions, RolloutInfo,
};
use crate::trajectory::filter::{
    select, Dedup, Exclusion, ExclusionCounts, Filters, RewardKey, Summary, TokenTotals,
};
use crate::trajectory::{read_trajectory, EpisodeStatus, ReadTrajectory};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// OpenAI chat messages (`system`, `user`, `assistant` with `reasoning_content`, `tool` with tool_call_id for
    /// native calls) and the episode's `tools`.
    OpenaiChat,
    /// CWM transcript (roles `system`, `user`, `assistant`, `tool: NAME`) with a token view and loss mask when
    /// token ids were recorded.
    Cwm,
}

/// Arguments of `swe-env export`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:\n  \
    swe-env export runs/20261125-211430/trajectories --format openai-chat -o chat.jsonl\n  \
    swe-env export runs/*/trajectories --format cwm --status submitted -o cwm.jsonl\n  \
    swe-env export harvest-out --resolved true --dedup both --per-task-cap 2 -o sft.jsonl\n\
    \nWithout --include-unfinished, trajectories with no episode_end or no step are left out. The counts of \
    exported rows and of exclusions per reason are printed on stderr.")]
pub struct ExportArgs {
    /// Trajectory files, directories of them, run directories or harvest output directories.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExportFormat::OpenaiChat)]
    format: ExportFormat,
    /// Output file (JSONL); standard output when absent.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Keep only episodes that ended with this status (repeatable: any of them).
    #[arg(
        long = "status",
        visible_alias = "only-status",
        value_enum,
        value_name = "STATUS"
    )]
    statuses: Vec<EpisodeStatus>,
    /// Keep only episodes whose grading verdict is this (`true` / `false`; ungraded episodes count as false).
    #[arg(long, value_name = "true|false", conflicts_with = "only_resolved")]
    resolved: Option<bool>,
    /// Same as `--resolved true`.
    #[arg(long)]
    only_resolved: bool,
    /// Keep only episodes whose reward (`--reward-key`) is at least this; ungraded episodes have none.
    #[arg(long, allow_negative_numbers = true)]
    min_reward: Option<f64>,
    /// Keep only episodes whose reward (`--reward-key`) is at most this; ungraded episodes have none.
    #[arg(long, allow_negative_numbers = true)]
    max_reward: Option<f64>,
    /// Which reward `--min-reward` / `--max-reward` read.
    #[arg(long, value_enum, default_value_t = RewardKey::Execution)]
    reward_key: RewardKey,
    /// Keep only tasks of this repository (`owner/name`; repeatable: any of them).
    #[arg(long = "repo", value_name = "OWNER/NAME")]
    repos: Vec<String>,
    /// Keep only episodes with at least this many steps.
    #[arg(long)]
    min_turns: Option<u32>,
    /// Keep only episodes with at most this many steps.
    #[arg(long)]
    max_turns: Option<u32>,
    /// Keep only episodes that spent at least this many tokens (prompt + completion over every model call).
    #[arg(long)]
    min_tokens: Option<u64>,
    /// Keep only episodes that spent at most this many tokens.
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Drop duplicates within a task: identical conversations (`trajectory`), near-identical final patches
    /// (`patch`: the same normalised diff), or `both`. The first in the cap order is kept.
    #[arg(long, value_enum, default_value_t = Dedup::None)]
    dedup: Dedup,
    /// Keep at most N episodes per task: resolved first, then by rollout id (episode id outside a harvest).
    #[arg(long, value_name = "N")]
    per_task_cap: Option<usize>,
    /// Keep trajectories with no episode_end or no step (left out by default).
    #[arg(long)]
    include_unfinished: bool,
    /// Put the full task row and the grading report into each row's `metadata`. They hold the gold patch, the
    /// test patch and the FAIL_TO_PASS / PASS_TO_PASS lists: never feed them to training as inputs.
    #[arg(long)]
    include_task: bool,
}

impl ExportArgs {
    /// A range whose lower bound is above its upper bound selects nothing: refused as a usage error (exit 2).
    fn check_ranges(&self) -> anyhow::Result<()> {
        let empty = |name: &str, min: String, max: String| {
            super::error::usage(format!(
                "--min-{name} {min} is above --max-{name} {max}: nothing could be exported; swap or fix the bounds"
            ))
        };
        if let (Some(min), Some(max)) = (self.min_reward, self.max_reward) {
            if min > max {
                return Err(empty("reward", min.to_string(), max.to_string()));
            }
        }
        if let (Some(min), Some(max)) = (self.min_turns, self.max_turns) {
            if min > max {
                return Err(empty("turns", min.to_string(), max.to_string()));
            }
        }
        if let (Some(min), Some(max)) = (self.min_tokens, self.max_tokens) {
            if min > max {
                return Err(empty("tokens", min.to_string(), max.to_string()));
            }
        }
        Ok(())
    }

    fn filters(&self) -> Filters {
        Filters {
            include_unfinished: self.include_unfinished,
            statuses: self.statuses.clone(),
            resolved: self.resolved.or(self.only_resolved.then_some(true)),
            reward_key: self.reward_key,
            min_reward: self.min_reward,
            max_reward: self.max_reward,
            repos: self.repos.clone(),
            min_turns: self.min_turns,
            max_turns: self.max_turns,
            min_tokens: self.min_tokens,
            max_tokens: self.max_tokens,
            dedup: self.dedup,
            per_task_cap: self.per_task_cap,
        }
    }
}

/// One trajectory to consider: a file, or a committed rollout of a harvest directory.
enum Item {
    File(PathBuf),
    Rollout { dir: PathBuf, row: Box<ManifestRow> },
}

impl Item {
    fn name(&self) -> String {
        match self {
            Item::File(path) => path.display().to_string(),
            Item::Rollout { dir, row } => format!("{} rollout {}", dir.display(), row.rollout_id),
        }
    }
}

fn is_harvest_dir(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file() && dir.join(SHARDS_DIR).is_dir()
}

/// The items named by `inputs`: files as given, directories' `*.jsonl` files, for a run directory (one with a
/// `trajectories/` sub-directory) its trajectories, for a harvest directory its committed rollouts. A missing input
/// or an unreadable manifest is bad input (exit 2).
fn items(inputs: &[PathBuf]) -> anyhow::Result<Vec<Item>> {
    let mut items = Vec::new();
    for input in inputs {
        if !input.exists() {
            return Err(super::error::usage(format!(
                "{} does not exist: give trajectory files, a trajectories directory, a run directory or a harvest \
                 output directory",
                input.display()
            )));
        }
        if input.is_dir() && is_harvest_dir(input) {
            let rows = read_manifest(input).map_err(|error| {
                super::error::usage(format!("harvest directory {}: {error}", input.display()))
            })?;
            items.extend(rows.into_iter().map(|row| Item::Rollout {
                dir: input.clone(),
                row: Box::new(row),
            }));
        } else if input.is_dir() {
            let nested = input.join("trajectories");
            let dir = if nested.is_dir() {
                nested
            } else {
                input.clone()
            };
            let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|path| path.extension().is_some_and(|ext| ext == "jsonl"))
                .collect();
            found.sort();
            items.extend(found.into_iter().map(Item::File));
        } else {
            items.push(Item::File(input.clone()));
        }
    }
    Ok(items)
}

/// The filters' view of a harvest manifest row (no decoding; its hashes are the ones [`Summary::of`] computes).
fn row_summary(row: &ManifestRow) -> Summary {
    Summary {
        episode_id: row.episode_id.clone(),
        instance_id: row.instance_id.clone(),
        repo: Some(row.repo.clone()).filter(|r| !r.is_empty()),
        // The store writes `unknown` for a rollout without an `episode_end`: unfinished.
        status: Some(row.status.clone())
            .filter(|s| <EpisodeStatus as clap::ValueEnum>::from_str(s, false).is_ok()),
        n_turns: row.n_turns,
        rewards: row.rewards.clone(),
        resolved: row.resolved,
        tokens: TokenTotals {
            prompt: row.prompt_tokens,
            completion: row.completion_tokens,
        },
        rollout_id: Some(row.rollout_id.clone()),
        trajectory_hash: Some(row.trajectory_hash.clone()),
        patch_hash: row.patch_hash.clone(),
    }
}

/// Reads one item: its trajectory and its harvest ids. Errors are messages for the "skipping" line.
async fn load(item: &Item) -> Result<(ReadTrajectory, Option<RolloutInfo>), String> {
    let (trajectory, rollout) = match item {
        Item::File(path) => (
            read_trajectory(path)
                .await
                .map_err(|error| error.to_string())?,
            None,
        ),
        Item::Rollout { dir, row } => {
            let (dir, row) = (dir.clone(), row.as_ref().clone());
            let line = tokio::task::spawn_blocking(move || read_rollout(&dir, &row))
                .await
                .map_err(|error| format!("reading the rollout failed: {error}"))?
                .map_err(|error| error.to_string())?;
            let info = RolloutInfo {
                rollout_id: line.rollout_id,
                sample_idx: line.sample_idx,
                seed: line.seed,
                temperature: line.temperature,
                dataset_sha256: line.dataset_sha256,
                config_hash: line.config_hash,
            };
            let trajectory = ReadTrajectory::from_records(line.records)
                .map_err(|(record, error)| format!("record {record} of the shard line: {error}"))?;
            (trajectory, Some(info))
        }
    };
    if trajectory.start.is_none() && !trajectory.steps.is_empty() {
        return Err(
            "steps without an episode_start: not a whole trajectory (was the file cut at the front?)".into(),
        );
    }
    Ok((trajectory, rollout))
}

/// Where the export goes.
struct Output {
    out: Box<dyn Write + Send>,
    closed: bool,
}

impl Output {
    /// Writes one row; `false` once the reader went away (`| head`): stop quietly, as command-line tools do.
    fn write(&mut self, row: &serde_json::Value) -> anyhow::Result<bool> {
        match writeln!(self.out, "{row}") {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(error) => Err(anyhow::Error::from(error).context("writing the export")),
        }
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match self.out.flush() {
            Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(anyhow::Error::from(error).context("writing the export"))
            }
            _ => Ok(()),
        }
    }
}

pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    args.check_ranges()?;
    let mut items = items(&args.inputs)?;
    // An earlier export written among the inputs (`-o runs/RUN/trajectories/chat.jsonl`) is not an input.
    if let Some(output) = args.output.as_ref().and_then(|o| o.canonicalize().ok()) {
        items.retain(|item| {
            !matches!(item, Item::File(path) if path.canonicalize().is_ok_and(|p| p == output))
        });
    }
    let filters = args.filters();
    let out: Box<dyn Write + Send> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| {
                super::error::usage(format!(
                    "cannot create the output {}: {e} (check the directory exists and is writable)",
                    path.display()
                ))
            })?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut output = Output { out, closed: false };
    let mut excluded = ExclusionCounts::default();
    let (mut written, mut unreadable) = (0u64, 0u64);
    let mut skip = |item: &Item, error: &str| {
        eprintln!("skipping {}: {error}", item.name());
        unreadable += 1;
    };
    let export = |trajectory: &ReadTrajectory, rollout: Option<RolloutInfo>| {
        let options = ExportOptions {
            include_task: args.include_task,
            rollout,
        };
        match args.format {
            ExportFormat::OpenaiChat => to_openai_chat_with(trajectory, &options),
            ExportFormat::Cwm => to_cwm_transcript_with(trajectory, &options),
        }
    };

    // Dedup and the cap decide over the whole set: summaries first (files are read twice, rollouts' manifest rows
    // serve), then the kept ones are read again and written in input order. Otherwise one pass.
    let mut decided: Vec<Option<Option<Exclusion>>> = Vec::new();
    if filters.needs_all() {
        let mut summaries = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let summary = match item {
                Item::Rollout { row, .. } => row_summary(row),
                Item::File(_) => match load(item).await {
                    Ok((trajectory, _)) => Summary::of(&trajectory),
                    Err(error) => {
                        skip(item, &error);
                        continue;
                    }
                },
            };
            summaries.push(summary);
            positions.push(index);
        }
        decided = vec![None; items.len()];
        for (position, decision) in positions.into_iter().zip(select(&filters, &summaries)) {
            decided[position] = Some(decision);
        }
    }
    for (index, item) in items.iter().enumerate() {
        if output.closed {
            break;
        }
        let early = if filters.needs_all() {
            match decided[index] {
                // Unreadable in the first pass: already reported.
                None => continue,
                Some(decision) => decision,
            }
        } else if let Item::Rollout { row, .. } = item {
            filters.check(&row_summary(row))
        } else {
            None
        };
        if let Some(reason) = early {
            excluded.add(reason);
            continue;
        }
        let (trajectory, rollout) = match load(item).await {
            Ok(loaded) => loaded,
            Err(error) => {
                skip(item, &error);
                continue;
            }
        };
        if !filters.needs_all() && matches!(item, Item::File(_)) {
            if let Some(reason) = filters.check(&Summary::of(&trajectory)) {
                excluded.add(reason);
                continue;
            }
        }
        if output.write(&export(&trajectory, rollout))? {
            written += 1;
        }
    }
    output.flush()?;
    if output.closed {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "exported {written}; excluded: {excluded}; unreadable {unreadable} (of {} inputs)",
        items.len()
    );
    Ok(ExitCode::from(if unreadable == 0 {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    }))
}
