//! `swe-env export`: trajectories → training formats, one JSON object per episode per line (loadable by HF
//! `datasets`), with filters, dedup and a per-task cap (`crate::trajectory::filter`).
//!
//! Inputs: trajectory files, directories of them, run directories (their `trajectories/`) and harvest output
//! directories (`manifest.jsonl` + `shards/`: every committed rollout; the per-trajectory filters read the manifest
//! rows, so excluded rollouts are never decoded). A manifest is streamed, never held: without dedup or a cap
//! nothing is kept per row; with them, a first pass keeps a small summary of each row that passed the filters
//! (`trajectory::filter::Candidates`) and the second pass writes the kept rollouts in input order. Torn last lines (crashed episodes) are tolerated; corrupt files,
//! files holding more than one episode and trajectories without an `episode_start` are reported and skipped
//! (exit 1). At the end, stderr says how many rows were exported and how many trajectories were excluded, per
//! reason.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use crate::harvest::store::{
    for_each_row, read_rollout, ManifestRow, StoreError, MANIFEST_FILE, SHARDS_DIR,
};
use crate::trajectory::export::{
    to_cwm_transcript_with, to_openai_chat_with, ExportOptions, RolloutInfo,
};
use crate::trajectory::filter::{
    Candidates, Dedup, Exclusion, ExclusionCounts, Filters, RewardKey, Summary, TokenTotals,
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

/// One input, in the order given: a trajectory file, or a harvest directory whose manifest is streamed (its
/// committed rollouts, one input each, in commit order).
enum Source {
    File(PathBuf),
    Harvest(PathBuf),
}

fn is_harvest_dir(dir: &Path) -> bool {
    dir.join(MANIFEST_FILE).is_file() && dir.join(SHARDS_DIR).is_dir()
}

/// The sources named by `inputs`: files as given, directories' `*.jsonl` files, for a run directory (one with a
/// `trajectories/` sub-directory) its trajectories, harvest directories as themselves (read later, streaming). A
/// missing input is bad input (exit 2).
fn sources(inputs: &[PathBuf]) -> anyhow::Result<Vec<Source>> {
    let mut sources = Vec::new();
    for input in inputs {
        if !input.exists() {
            return Err(super::error::usage(format!(
                "{} does not exist: give trajectory files, a trajectories directory, a run directory or a harvest \
                 output directory",
                input.display()
            )));
        }
        if input.is_dir() && is_harvest_dir(input) {
            sources.push(Source::Harvest(input.clone()));
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
            sources.extend(found.into_iter().map(Source::File));
        } else {
            sources.push(Source::File(input.clone()));
        }
    }
    Ok(sources)
}

/// An unreadable manifest is bad input (exit 2).
fn manifest_error(dir: &Path, error: StoreError) -> anyhow::Error {
    super::error::usage(format!("harvest directory {}: {error}", dir.display()))
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

/// A trajectory with steps but no `episode_start` is not whole.
fn check_whole(trajectory: &ReadTrajectory) -> Result<(), String> {
    if trajectory.start.is_none() && !trajectory.steps.is_empty() {
        return Err(
            "steps without an episode_start: not a whole trajectory (was the file cut at the front?)".into(),
        );
    }
    Ok(())
}

/// Reads one trajectory file. Errors are messages for the "skipping" line.
async fn load_file(path: &Path) -> Result<ReadTrajectory, String> {
    let trajectory = read_trajectory(path)
        .await
        .map_err(|error| error.to_string())?;
    check_whole(&trajectory)?;
    Ok(trajectory)
}

/// Reads one committed rollout (blocking): its trajectory and its harvest ids.
fn load_rollout(dir: &Path, row: &ManifestRow) -> Result<(ReadTrajectory, RolloutInfo), String> {
    let line = read_rollout(dir, row).map_err(|error| error.to_string())?;
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
    check_whole(&trajectory)?;
    Ok((trajectory, info))
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

/// What the first pass (dedup or a cap asked) decided for an input, by its position in the input order. Rollouts
/// left out by a per-trajectory filter get no note (the second pass asks the filters again from the manifest row).
#[derive(Debug, Clone, Copy)]
enum Note {
    Keep,
    Exclude(Exclusion),
    /// Reported in the first pass.
    Unreadable,
}

/// The export's state through the passes: where rows go, the counts, the first pass's notes.
struct Exporter {
    output: Output,
    format: ExportFormat,
    include_task: bool,
    filters: Filters,
    excluded: ExclusionCounts,
    written: u64,
    unreadable: u64,
    /// Sorted by position; consumed in order by [`Exporter::note`].
    notes: Vec<(u64, Note)>,
    next_note: usize,
}

impl Exporter {
    fn skip(&mut self, name: &dyn std::fmt::Display, error: &str) {
        eprintln!("skipping {name}: {error}");
        self.unreadable += 1;
    }

    /// The first pass's note for the input at `position` (positions asked in ascending order).
    fn note(&mut self, position: u64) -> Option<Note> {
        while let Some(&(at, note)) = self.notes.get(self.next_note) {
            if at > position {
                break;
            }
            self.next_note += 1;
            if at == position {
                return Some(note);
            }
        }
        None
    }

    /// Converts and writes one trajectory.
    fn emit(
        &mut self,
        trajectory: &ReadTrajectory,
        rollout: Option<RolloutInfo>,
    ) -> anyhow::Result<()> {
        let options = ExportOptions {
            include_task: self.include_task,
            rollout,
        };
        let row = match self.format {
            ExportFormat::OpenaiChat => to_openai_chat_with(trajectory, &options),
            ExportFormat::Cwm => to_cwm_transcript_with(trajectory, &options),
        };
        if self.output.write(&row)? {
            self.written += 1;
        }
        Ok(())
    }

    /// The second pass over a harvest directory (blocking): every manifest row, up to `limit` rows when the first
    /// pass counted them (rows committed since are not in its decisions), checked against the manifest row or the
    /// notes, and the kept rollouts decoded and written. Returns the position after the last row.
    fn export_harvest(
        &mut self,
        dir: &Path,
        mut position: u64,
        limit: Option<u64>,
    ) -> anyhow::Result<u64> {
        let needs_all = self.filters.needs_all();
        let mut failure = None;
        let scanned = for_each_row(dir, |row| {
            if self.output.closed || limit.is_some_and(|limit| position >= limit) {
                return Err(stop_scan(dir));
            }
            let here = position;
            position += 1;
            let early = match needs_all.then(|| self.note(here)).flatten() {
                Some(Note::Keep) => None,
                Some(Note::Exclude(reason)) => Some(reason),
                Some(Note::Unreadable) => return Ok(()),
                None => self.filters.check(&row_summary(&row)),
            };
            if let Some(reason) = early {
                self.excluded.add(reason);
                return Ok(());
            }
            match load_rollout(dir, &row) {
                Ok((trajectory, info)) => {
                    if let Err(error) = self.emit(&trajectory, Some(info)) {
                        failure = Some(error);
                        return Err(stop_scan(dir));
                    }
                }
                Err(error) => self.skip(
                    &format_args!("{} rollout {}", dir.display(), row.rollout_id),
                    &error,
                ),
            }
            Ok(())
        });
        if let Some(error) = failure {
            return Err(error);
        }
        match scanned {
            Ok(()) => Ok(position),
            // Stopped on purpose: the reader went away, or the first pass's rows are done.
            Err(_) if self.output.closed || limit.is_some_and(|limit| position >= limit) => {
                Ok(position)
            }
            Err(error) => Err(manifest_error(dir, error)),
        }
    }
}

/// The error that ends a manifest scan early on purpose (never shown).
fn stop_scan(dir: &Path) -> StoreError {
    StoreError::Corrupt {
        path: dir.to_path_buf(),
        detail: "export stopped reading".into(),
    }
}

/// The first pass over a harvest directory when dedup or a cap is asked (blocking): the rows that pass the
/// per-trajectory filters go into `candidates` (a small summary each; nothing is kept of the others). Returns the
/// position after the last row.
fn summarise_harvest(
    dir: &Path,
    filters: &Filters,
    candidates: &mut Candidates,
    mut position: u64,
) -> anyhow::Result<u64> {
    for_each_row(dir, |row| {
        let summary = row_summary(&row);
        if filters.check(&summary).is_none() {
            candidates.push(position, &summary);
        }
        position += 1;
        Ok(())
    })
    .map_err(|error| manifest_error(dir, error))?;
    Ok(position)
}

/// Runs `work` on the blocking pool with `state` and gives the state back.
async fn blocking<S: Send + 'static, T: Send + 'static>(
    state: S,
    work: impl FnOnce(&mut S) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<(S, T)> {
    tokio::task::spawn_blocking(move || {
        let mut state = state;
        let result = work(&mut state);
        result.map(|value| (state, value))
    })
    .await
    .context("the export's reading thread failed")?
}

pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    args.check_ranges()?;
    let mut sources = sources(&args.inputs)?;
    // An earlier export written among the inputs (`-o runs/RUN/trajectories/chat.jsonl`) is not an input.
    if let Some(output) = args.output.as_ref().and_then(|o| o.canonicalize().ok()) {
        sources.retain(|source| {
            !matches!(source, Source::File(path) if path.canonicalize().is_ok_and(|p| p == output))
        });
    }
    let filters = args.filters();
    let needs_all = filters.needs_all();
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
    let mut exporter = Exporter {
        output: Output { out, closed: false },
        format: args.format,
        include_task: args.include_task,
        filters: filters.clone(),
        excluded: ExclusionCounts::default(),
        written: 0,
        unreadable: 0,
        notes: Vec::new(),
        next_note: 0,
    };

    // Dedup and the cap decide over the whole set: a first pass keeps a small summary of each input that passed
    // the per-trajectory filters (files are read twice, rollouts' manifest rows serve), then the second pass reads
    // the kept ones again and writes them in input order. Otherwise one pass. Harvest manifests are streamed.
    let mut limits: Vec<Option<u64>> = vec![None; sources.len()];
    if needs_all {
        let mut candidates = Candidates::new(&filters);
        let mut position = 0u64;
        for (index, source) in sources.iter().enumerate() {
            match source {
                Source::File(path) => {
                    match load_file(path).await {
                        Ok(trajectory) => {
                            let summary = Summary::of(&trajectory);
                            match filters.check(&summary) {
                                Some(reason) => {
                                    exporter.notes.push((position, Note::Exclude(reason)))
                                }
                                None => candidates.push(position, &summary),
                            }
                        }
                        Err(error) => {
                            exporter.skip(&path.display(), &error);
                            exporter.notes.push((position, Note::Unreadable));
                        }
                    }
                    position += 1;
                }
                Source::Harvest(dir) => {
                    let (dir, filters_copy) = (dir.clone(), filters.clone());
                    let (back, end) = blocking(candidates, move |candidates| {
                        summarise_harvest(&dir, &filters_copy, candidates, position)
                    })
                    .await?;
                    candidates = back;
                    position = end;
                    limits[index] = Some(end);
                }
            }
        }
        exporter.notes.extend(
            candidates
                .select()
                .into_iter()
                .map(|(at, decision)| (at, decision.map_or(Note::Keep, Note::Exclude))),
        );
        exporter.notes.sort_by_key(|(at, _)| *at);
    }

    let mut position = 0u64;
    for (source, limit) in sources.into_iter().zip(limits) {
        if exporter.output.closed {
            break;
        }
        match source {
            Source::File(path) => {
                let here = position;
                position += 1;
                let early = if needs_all {
                    match exporter.note(here) {
                        // Unreadable in the first pass: already reported.
                        Some(Note::Unreadable) => continue,
                        Some(Note::Exclude(reason)) => Some(reason),
                        Some(Note::Keep) | None => None,
                    }
                } else {
                    None
                };
                if let Some(reason) = early {
                    exporter.excluded.add(reason);
                    continue;
                }
                let trajectory = match load_file(&path).await {
                    Ok(trajectory) => trajectory,
                    Err(error) => {
                        exporter.skip(&path.display(), &error);
                        continue;
                    }
                };
                if !needs_all {
                    if let Some(reason) = filters.check(&Summary::of(&trajectory)) {
                        exporter.excluded.add(reason);
                        continue;
                    }
                }
                exporter.emit(&trajectory, None)?;
            }
            Source::Harvest(dir) => {
                let (back, end) = blocking(exporter, move |exporter| {
                    exporter.export_harvest(&dir, position, limit)
                })
                .await?;
                exporter = back;
                position = end;
            }
        }
    }
    exporter.output.flush()?;
    if exporter.output.closed {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "exported {}; excluded: {}; unreadable {} (of {position} inputs)",
        exporter.written, exporter.excluded, exporter.unreadable
    );
    Ok(ExitCode::from(if exporter.unreadable == 0 {
        super::EXIT_OK
    } else {
        super::EXIT_FAILED
    }))
}
