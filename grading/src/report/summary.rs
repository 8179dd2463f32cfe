//! The run summary (`<model>.<run_id>.json`) in the schema of swebench's `make_run_report`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::InstanceReport;

/// The reference's run report, schema version 2, keys in the reference's order. (The reference
/// adds `unstopped_instances`, `unstopped_containers` and `unremoved_images` only when it is called
/// without a Docker client, which its evaluation entry point never does; they are left out.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Instances in the dataset (duplicates counted).
    pub total_instances: usize,
    /// Predictions submitted (including ids not in the dataset).
    pub submitted_instances: usize,
    /// Instances with a report.
    pub completed_instances: usize,
    /// Completed and resolved.
    pub resolved_instances: usize,
    /// Completed and not resolved.
    pub unresolved_instances: usize,
    /// Predictions whose patch is missing or empty (not run).
    pub empty_patch_instances: usize,
    /// Predictions with a non-empty patch but no report (the harness failed on them).
    pub error_instances: usize,
    /// Sorted ids of completed instances.
    pub completed_ids: Vec<String>,
    /// Sorted ids of dataset instances without a prediction.
    pub incomplete_ids: Vec<String>,
    /// Sorted ids of empty-patch predictions.
    pub empty_patch_ids: Vec<String>,
    /// Sorted ids of all predictions.
    pub submitted_ids: Vec<String>,
    /// Sorted ids of resolved instances.
    pub resolved_ids: Vec<String>,
    /// Sorted ids of unresolved instances.
    pub unresolved_ids: Vec<String>,
    /// Sorted ids of error instances.
    pub error_ids: Vec<String>,
    /// Always 2.
    pub schema_version: u32,
}

/// Port of `make_run_report` (the counting part). `predictions` maps instance id → model patch
/// (`None` for a null patch); `reports` maps instance id → its report. A report whose
/// `swe_env.harness_error` is set counts as missing, because the reference writes no report.json
/// in those cases (patch did not apply, tests timed out, parser raised).
pub fn make_run_summary(
    dataset_ids: &[String],
    predictions: &BTreeMap<String, Option<String>>,
    reports: &BTreeMap<String, InstanceReport>,
) -> RunSummary {
    let mut completed = BTreeSet::new();
    let mut resolved = BTreeSet::new();
    let mut unresolved = BTreeSet::new();
    let mut errors = BTreeSet::new();
    let mut incomplete = BTreeSet::new();
    let mut empty_patch = BTreeSet::new();
    for instance_id in dataset_ids {
        let Some(patch) = predictions.get(instance_id) else {
            incomplete.insert(instance_id.clone());
            continue;
        };
        if patch.as_deref().is_none_or(str::is_empty) {
            empty_patch.insert(instance_id.clone());
            continue;
        }
        match reports.get(instance_id) {
            Some(report) if !report.reference_writes_no_report() => {
                completed.insert(instance_id.clone());
                if report.resolved {
                    resolved.insert(instance_id.clone());
                } else {
                    unresolved.insert(instance_id.clone());
                }
            }
            _ => {
                errors.insert(instance_id.clone());
            }
        }
    }
    let sorted = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
    RunSummary {
        total_instances: dataset_ids.len(),
        submitted_instances: predictions.len(),
        completed_instances: completed.len(),
        resolved_instances: resolved.len(),
        unresolved_instances: unresolved.len(),
        empty_patch_instances: empty_patch.len(),
        error_instances: errors.len(),
        completed_ids: sorted(completed),
        incomplete_ids: sorted(incomplete),
        empty_patch_ids: sorted(empty_patch),
        submitted_ids: predictions.keys().cloned().collect(),
        resolved_ids: sorted(resolved),
        unresolved_ids: sorted(unresolved),
        error_ids: sorted(errors),
        schema_version: 2,
    }
}
