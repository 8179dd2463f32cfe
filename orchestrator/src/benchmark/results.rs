//! Per-instance results of a run: one JSON line each in `results.jsonl`, appended and fsynced as instances
//! finish, so a killed run resumes exactly where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use swe_env_grading::report::InstanceReport;
use swe_env_grading::rewards::Rewards;
use tokio::io::AsyncWriteExt;

/// How an instance ended in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    /// Graded and resolved.
    Resolved,
    /// Graded and not resolved (including a patch that did not apply or tests that timed out).
    Unresolved,
    /// Could not be run or graded (missing image, sandbox failure, model endpoint down, …); see `error_kind`.
    Error,
}

/// One instance's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceResult {
    /// Task id.
    pub instance_id: String,
    /// Repository (for per-repo breakdowns).
    pub repo: String,
    /// Outcome.
    pub status: InstanceStatus,
    /// Error kind (`image_missing`, `sandbox`, `model`, `grading_spec`, `trajectory`, …) when `status` is error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Error message (what and how to fix) when `status` is error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How the episode ended (`submitted`, `max_turns`, …), when an episode ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episode_status: Option<String>,
    /// The submitted patch (`None` = no prediction).
    #[serde(default)]
    pub submission: Option<String>,
    /// Agent steps.
    #[serde(default)]
    pub n_steps: u32,
    /// Prompt + completion tokens spent by the model.
    #[serde(default)]
    pub tokens: u64,
    /// Time in model calls, ms.
    #[serde(default)]
    pub model_ms: u64,
    /// Time in the eval script (tests), ms.
    #[serde(default)]
    pub test_ms: u64,
    /// Total time of the instance, ms.
    #[serde(default)]
    pub total_ms: u64,
    /// report.json entry, when graded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<InstanceReport>,
    /// Rewards, when graded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
}

impl InstanceResult {
    /// An error result.
    pub fn error(instance_id: &str, repo: &str, kind: &str, error: String) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            repo: repo.to_owned(),
            status: InstanceStatus::Error,
            error_kind: Some(kind.to_owned()),
            error: Some(error),
            episode_status: None,
            submission: None,
            n_steps: 0,
            tokens: 0,
            model_ms: 0,
            test_ms: 0,
            total_ms: 0,
            report: None,
            rewards: None,
        }
    }
}

/// The append-only results file of a run.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    file: tokio::fs::File,
}

impl ResultsFile {
    /// Opens (creating) `path` for appending.
    pub async fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }

    /// Appends one result durably.
    pub async fn append(&mut self, result: &InstanceResult) -> std::io::Result<()> {
        self.append_json(result).await
    }

    /// Appends one JSON line durably (written, flushed, fdatasynced before it returns).
    pub async fn append_json<T: Serialize>(&mut self, value: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(value).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line).await?;
        self.file.flush().await?;
        self.file.sync_data().await
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads the results of earlier attempts (last record per instance wins; a torn last line is ignored).
pub async fn read_results(path: &Path) -> std::io::Result<BTreeMap<String, InstanceResult>> {
    let mut results = BTreeMap::new();
    for result in read_json_lines::<InstanceResult>(path).await? {
        results.insert(result.instance_id.clone(), result);
    }
    Ok(results)
}

/// The records of an append-only JSON-lines file written by [`ResultsFile`], in order; a missing file is empty,
/// and a line that does not parse (a torn last line after a crash) is skipped.
pub async fn read_json_lines<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> std::io::Result<Vec<T>> {
    let text = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<T>(line).ok())
        .collect())
}
