//! The inputs of `view` / `show` read into a [`Report`]: a run directory (results, manifest, trajectories, grading
//! logs) or trajectory files, through the readers of `benchmark` and `trajectory`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ViewError;
use crate::benchmark::manifest::{RunManifest, MANIFEST_FILE};
use crate::benchmark::results::{read_results, InstanceResult, InstanceStatus};
use crate::trajectory::{read_trajectory, ReadTrajectory};

/// The results file of a run directory.
const RESULTS_FILE: &str = "results.jsonl";
/// Where a run keeps its trajectories.
const TRAJECTORIES_DIR: &str = "trajectories";
/// Where a run keeps its per-instance grading logs (the reference layout).
const LOGS_DIR: &str = "logs";

/// Everything `view` and `show` display.
#[derive(Debug, Clone)]
pub struct Report {
    /// `run <id>` or `trajectories`.
    pub title: String,
    /// The inputs as given.
    pub inputs: Vec<PathBuf>,
    /// Whether the input is a run directory (rows are its results) or trajectory files (rows are episodes).
    pub is_run: bool,
    /// One row per instance of a run, or per episode of trajectory files; sorted by instance id, then episode.
    pub rows: Vec<IndexRow>,
    /// The episodes, by page name.
    pub episodes: BTreeMap<String, EpisodeView>,
    /// Counts over `rows`.
    pub summary: Summary,
    /// What could not be read (a run's unreadable trajectory), named, for the reader to see.
    pub problems: Vec<String>,
}

/// One line of the index.
#[derive(Debug, Clone, Serialize)]
pub struct IndexRow {
    /// Task id.
    pub instance_id: String,
    /// A run's `resolved` / `unresolved` / `error`; for trajectory files the episode's ending (`submitted`,
    /// `max_turns`, …, `unfinished` without an `episode_end`).
    pub status: String,
    /// Graded and resolved; `None` when not graded.
    pub resolved: Option<bool>,
    /// Agent steps.
    pub turns: u32,
    /// Prompt + completion tokens.
    pub tokens: u64,
    /// Wall time, ms.
    pub time_ms: u64,
    /// The error (a run's error, or an episode's detail when it did not end by submitting).
    pub error: Option<String>,
    /// Page names of the episodes of this row (a scaled run has several per instance), the main one first.
    pub episodes: Vec<String>,
}

/// Counts of the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Rows.
    pub total: usize,
    /// Rows graded and resolved.
    pub resolved: usize,
    /// Rows graded and not resolved.
    pub unresolved: usize,
    /// Rows with an error.
    pub errors: usize,
    /// Rows not graded.
    pub not_graded: usize,
}

/// One episode and what the run knows of it.
#[derive(Debug, Clone)]
pub struct EpisodeView {
    /// The page's file stem (`episodes/<page>.html`): the episode id with unsafe characters replaced.
    pub page: String,
    /// Episode id (from the `episode_start`, else the file stem).
    pub episode_id: String,
    /// Task id.
    pub instance_id: String,
    /// The trajectory file.
    pub path: PathBuf,
    /// Its records.
    pub trajectory: ReadTrajectory,
    /// The run's result of the instance, for a run's main episode.
    pub result: Option<InstanceResult>,
    /// The grading's test output (`logs/<instance>/test_output.txt`), when the run kept it.
    pub test_output: Option<String>,
}

impl EpisodeView {
    /// Prompt + completion tokens of every model turn.
    pub fn tokens(&self) -> u64 {
        let steps = self.trajectory.steps.iter().map(|s| &s.tokens);
        let final_turn = self
            .trajectory
            .end
            .as_ref()
            .and_then(|end| end.final_answer_tokens.as_ref());
        steps
            .chain(final_turn)
            .map(|t| t.prompt.unwrap_or(0) + t.completion.unwrap_or(0))
            .sum()
    }

    /// The grading's resolved flag (rewards, else the grading report), when graded.
    pub fn resolved(&self) -> Option<bool> {
        let end = self.trajectory.end.as_ref()?;
        let from = |value: &Option<serde_json::Value>| {
            value
                .as_ref()
                .and_then(|v| v.get("resolved"))
                .and_then(serde_json::Value::as_bool)
        };
        from(&end.rewards).or_else(|| from(&end.grading))
    }

    /// How the episode ended, `unfinished` without an `episode_end`.
    pub fn status(&self) -> &'static str {
        self.trajectory
            .end
            .as_ref()
            .map_or("unfinished", |end| end.status.as_str())
    }
}

/// Reads `inputs`: one run directory, or trajectory files and directories of them.
pub async fn load_report(inputs: &[PathBuf]) -> Result<Report, ViewError> {
    let Some(first) = inputs.first() else {
        return Err(ViewError::NoInput);
    };
    for input in inputs {
        if is_run_dir(input).await {
            if inputs.len() > 1 {
                return Err(ViewError::RunWithOthers {
                    path: input.clone(),
                });
            }
            return load_run(first).await;
        }
    }
    load_trajectories(inputs).await
}

async fn exists(path: &Path) -> bool {
    tokio::fs::try_exists(path).await.unwrap_or(false)
}

async fn is_run_dir(path: &Path) -> bool {
    exists(&path.join(RESULTS_FILE)).await || exists(&path.join(MANIFEST_FILE)).await
}

/// The `.jsonl` files directly in `dir`, sorted (hidden and temp files left out).
async fn jsonl_files(dir: &Path) -> Result<Vec<PathBuf>, ViewError> {
    let read_error = |source| ViewError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut entries = tokio::fs::read_dir(dir).await.map_err(read_error)?;
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(read_error)? {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".jsonl") {
            continue;
        }
        if entry.file_type().await.map_err(read_error)?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// A file name made of `[A-Za-z0-9._-]` only (so links need no escaping and cannot leave the directory),
/// unique among `taken`.
fn page_name(id: &str, taken: &BTreeSet<String>) -> String {
    let mut base: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if base.is_empty() || base.starts_with('.') {
        base.insert(0, '_');
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// Reads the trajectory at `path` into an episode named uniquely among `taken`.
async fn read_episode(
    path: &Path,
    taken: &mut BTreeSet<String>,
) -> Result<EpisodeView, crate::trajectory::TrajectoryReadError> {
    let trajectory = read_trajectory(path).await?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (episode_id, instance_id) = match &trajectory.start {
        Some(start) => (start.episode_id.clone(), start.instance_id.clone()),
        None => (stem.clone(), stem),
    };
    let page = page_name(&episode_id, taken);
    taken.insert(page.clone());
    Ok(EpisodeView {
        page,
        episode_id,
        instance_id,
        path: path.to_owned(),
        trajectory,
        result: None,
        test_output: None,
    })
}

fn summarize(rows: &[IndexRow]) -> Summary {
    let mut summary = Summary {
        total: rows.len(),
        ..Summary::default()
    };
    for row in rows {
        if row.status == "error" {
            summary.errors += 1;
        }
        match row.resolved {
            Some(true) => summary.resolved += 1,
            Some(false) => summary.unresolved += 1,
            None => summary.not_graded += 1,
        }
    }
    summary
}

fn episode_row(episode: &EpisodeView) -> IndexRow {
    let end = episode.trajectory.end.as_ref();
    let submitted = end.is_some_and(|e| e.status == crate::trajectory::EpisodeStatus::Submitted);
    IndexRow {
        instance_id: episode.instance_id.clone(),
        status: episode.status().to_owned(),
        resolved: episode.resolved(),
        turns: end.map_or(episode.trajectory.steps.len() as u32, |e| e.n_steps),
        tokens: episode.tokens(),
        time_ms: end.map_or(0, |e| e.duration_ms),
        error: end.filter(|_| !submitted).and_then(|e| e.detail.clone()),
        episodes: vec![episode.page.clone()],
    }
}

/// Trajectory files, and directories of them: one row per episode.
async fn load_trajectories(inputs: &[PathBuf]) -> Result<Report, ViewError> {
    let mut files = Vec::new();
    for input in inputs {
        let metadata = tokio::fs::metadata(input)
            .await
            .map_err(|source| ViewError::Read {
                path: input.clone(),
                source,
            })?;
        if metadata.is_dir() {
            let found = jsonl_files(input).await?;
            if found.is_empty() {
                return Err(ViewError::NotAnInput {
                    path: input.clone(),
                });
            }
            files.extend(found);
        } else if input.extension().is_some_and(|e| e == "jsonl") {
            files.push(input.clone());
        } else {
            return Err(ViewError::NotAnInput {
                path: input.clone(),
            });
        }
    }
    let mut taken = BTreeSet::new();
    let mut episodes = BTreeMap::new();
    for file in &files {
        let episode = read_episode(file, &mut taken).await?;
        episodes.insert(episode.page.clone(), episode);
    }
    let mut rows: Vec<IndexRow> = episodes.values().map(episode_row).collect();
    rows.sort_by(|a, b| (&a.instance_id, &a.episodes).cmp(&(&b.instance_id, &b.episodes)));
    Ok(Report {
        title: "trajectories".into(),
        inputs: inputs.to_vec(),
        is_run: false,
        summary: summarize(&rows),
        rows,
        episodes,
        problems: Vec::new(),
    })
}

/// An instance id that is one plain path component (so `logs/<id>/` stays inside the run directory).
fn is_plain_component(id: &str) -> bool {
    !id.is_empty() && id != "." && id != ".." && !id.contains(['/', '\\', '\0'])
}

/// The grading test output the run kept for `instance_id`, when any.
async fn test_output(dir: &Path, instance_id: &str) -> Option<String> {
    if !is_plain_component(instance_id) {
        return None;
    }
    let path = dir.join(LOGS_DIR).join(instance_id).join("test_output.txt");
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// A run directory: one row per result (and per instance with trajectories but no result yet).
async fn load_run(dir: &Path) -> Result<Report, ViewError> {
    // The manifest only names the run: one that does not read is reported, and the directory's name used.
    let mut problems = Vec::new();
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest: Option<RunManifest> = match tokio::fs::read(&manifest_path).await {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(manifest) => Some(manifest),
            Err(error) => {
                problems.push(format!(
                    "{}: not a run manifest ({error}); the run is named after its directory",
                    manifest_path.display()
                ));
                None
            }
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(ViewError::Read {
                path: manifest_path,
                source,
            })
        }
    };
    let run_id = manifest.as_ref().map_or_else(
        || {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        },
        |m| m.run_id.clone(),
    );
    let results_path = dir.join(RESULTS_FILE);
    let results = read_results(&results_path)
        .await
        .map_err(|source| ViewError::Read {
            path: results_path,
            source,
        })?;

    let trajectories_dir = dir.join(TRAJECTORIES_DIR);
    let files = if exists(&trajectories_dir).await {
        jsonl_files(&trajectories_dir).await?
    } else {
        Vec::new()
    };
    let mut taken = BTreeSet::new();
    let mut episodes: BTreeMap<String, EpisodeView> = BTreeMap::new();
    for file in &files {
        match read_episode(file, &mut taken).await {
            Ok(episode) => {
                episodes.insert(episode.page.clone(), episode);
            }
            Err(error) => problems.push(format!("not shown: {error}")),
        }
    }
    // Episodes of each instance: the run's own `<run id>-<instance>` first, then the others (samples) by id.
    let mut by_instance: BTreeMap<String, Vec<(bool, String, String)>> = BTreeMap::new();
    for episode in episodes.values() {
        let main = episode.episode_id == format!("{run_id}-{}", episode.instance_id);
        by_instance
            .entry(episode.instance_id.clone())
            .or_default()
            .push((!main, episode.episode_id.clone(), episode.page.clone()));
    }
    for list in by_instance.values_mut() {
        list.sort();
    }
    let pages_of = |instance: &str| -> Vec<String> {
        by_instance
            .get(instance)
            .map(|list| list.iter().map(|(_, _, page)| page.clone()).collect())
            .unwrap_or_default()
    };

    let mut rows = Vec::new();
    for (instance_id, result) in &results {
        let pages = pages_of(instance_id);
        if let Some(main) = pages.first().and_then(|page| episodes.get_mut(page)) {
            main.result = Some(result.clone());
            main.test_output = test_output(dir, instance_id).await;
        }
        rows.push(IndexRow {
            instance_id: instance_id.clone(),
            status: match result.status {
                InstanceStatus::Resolved => "resolved",
                InstanceStatus::Unresolved => "unresolved",
                InstanceStatus::Error => "error",
            }
            .to_owned(),
            resolved: match result.status {
                InstanceStatus::Resolved => Some(true),
                InstanceStatus::Unresolved => Some(false),
                InstanceStatus::Error => result.report.as_ref().map(|r| r.resolved),
            },
            turns: result.n_steps,
            tokens: result.tokens,
            time_ms: result.total_ms,
            error: result.error.as_ref().map(|error| match &result.error_kind {
                Some(kind) => format!("{kind}: {error}"),
                None => error.clone(),
            }),
            episodes: pages,
        });
    }
    // Instances with episodes but no result (in flight when the run stopped).
    for (instance_id, list) in &by_instance {
        if results.contains_key(instance_id) {
            continue;
        }
        if let Some(episode) = list.first().and_then(|(_, _, page)| episodes.get(page)) {
            let mut row = episode_row(episode);
            row.episodes = pages_of(instance_id);
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    Ok(Report {
        title: format!("run {run_id}"),
        inputs: vec![dir.to_owned()],
        is_run: true,
        summary: summarize(&rows),
        rows,
        episodes,
        problems,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_names_are_safe_and_unique() {
        let mut taken = BTreeSet::new();
        let a = page_name("run-a/../x y", &taken);
        assert_eq!(a, "run-a_.._x_y");
        taken.insert(a.clone());
        assert_eq!(page_name("run-a/../x y", &taken), "run-a_.._x_y-2");
        assert_eq!(page_name("..", &taken), "_..");
        assert_eq!(page_name("", &taken), "_");
        assert!(!is_plain_component(".."));
        assert!(!is_plain_component("a/b"));
        assert!(is_plain_component("swe-env-fixtures__spans-1"));
    }
}
