//! SWE-RL's patch-similarity reward: a bit-exact port of Python's
//! `difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()` and the per-file mean over two
//! patches' diff bodies.

mod patch;
mod sequence_matcher;

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::diff::DiffError;

pub use patch::file_diff_bodies;
pub use sequence_matcher::{ratio, MatchingBlock, SequenceMatcher};

/// The similarity of one file's diff bodies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileSimilarity {
    /// The file's path (new path, or old path for deletions).
    pub path: String,
    /// `ratio(predicted body, gold body)`; `0.0` when the file is only in one of the patches.
    pub similarity: f64,
}

/// The SWE-RL similarity of a predicted patch to the gold patch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchSimilarity {
    /// Mean of the per-file similarities, or `-1.0` when the predicted patch is empty or
    /// unparsable (SWE-RL's format-error reward).
    pub reward: f64,
    /// Per-file similarities in path order (empty on a format error).
    pub files: Vec<FileSimilarity>,
    /// Why the predicted patch was rejected, when it was.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub format_error: Option<String>,
}

/// The gold patch itself could not be parsed: a dataset problem, not the model's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gold patch cannot be split into file diffs: {0}")]
pub struct GoldPatchError(#[from] pub DiffError);

/// SWE-RL's reward for a predicted patch against the gold patch.
///
/// Both patches are split into per-file diff bodies ([`file_diff_bodies`]); for every path in the
/// union the similarity is `ratio(pred_body, gold_body)`, where a path missing from one side
/// scores `0.0` (SWE-RL's explicit rule, which is also `ratio("", non-empty)`); the reward is the
/// mean. The sum runs left to right in path order, the way `sum()` on Python ≤ 3.11 adds a list
/// (SWE-RL iterates a `set`, so its own order varies; 3.12's compensated `sum()` can differ in
/// the last bit for three or more files). An empty or unparsable prediction scores `-1.0`.
pub fn swe_rl_similarity(
    predicted_patch: &str,
    gold_patch: &str,
) -> Result<PatchSimilarity, GoldPatchError> {
    let gold = file_diff_bodies(gold_patch)?;
    let predicted = match file_diff_bodies(predicted_patch) {
        Ok(bodies) => bodies,
        Err(error) => {
            return Ok(PatchSimilarity {
                reward: -1.0,
                files: Vec::new(),
                format_error: Some(error.to_string()),
            })
        }
    };
    let paths: BTreeSet<&String> = gold.keys().chain(predicted.keys()).collect();
    let files: Vec<FileSimilarity> = paths
        .into_iter()
        .map(|path| {
            let similarity = match (predicted.get(path), gold.get(path)) {
                (Some(predicted_body), Some(gold_body)) => ratio(predicted_body, gold_body),
                _ => 0.0,
            };
            FileSimilarity {
                path: path.clone(),
                similarity,
            }
        })
        .collect();
    let mut total = 0.0f64;
    for file in &files {
        total += file.similarity;
    }
    Ok(PatchSimilarity {
        reward: total / files.len() as f64,
        files,
        format_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLD: &str = "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n x\n-y\n+z\n--- a/b.py\n+++ b/b.py\n@@ -1 +1 @@\n-p\n+q\n";

    #[test]
    fn identical_patches_score_one() {
        let result = swe_rl_similarity(GOLD, GOLD).unwrap();
        assert_eq!(result.reward, 1.0);
        assert_eq!(result.files.len(), 2);
    }

    #[test]
    fn missing_and_extra_files_score_zero() {
        let predicted = "--- a/a.py\n+++ b/a.py\n@@ -1,2 +1,2 @@\n x\n-y\n+z\n--- a/c.py\n+++ b/c.py\n@@ -1 +1 @@\n-p\n+q\n";
        let result = swe_rl_similarity(predicted, GOLD).unwrap();
        let scores: Vec<f64> = result.files.iter().map(|f| f.similarity).collect();
        assert_eq!(scores, vec![1.0, 0.0, 0.0]);
        assert_eq!(result.reward, 1.0 / 3.0);
    }

    #[test]
    fn empty_or_broken_predictions_score_minus_one() {
        assert_eq!(swe_rl_similarity("", GOLD).unwrap().reward, -1.0);
        let broken =
            swe_rl_similarity("--- a/a.py\n+++ b/a.py\n@@ -1,5 +1,5 @@\n x\n", GOLD).unwrap();
        assert_eq!(broken.reward, -1.0);
        assert!(broken.format_error.is_some());
        assert!(swe_rl_similarity(GOLD, "not a diff").is_err());
    }
}
