//! The reference harness's per-instance log layout: `<dir>/<instance>/{eval.sh, patch.diff, test_output.txt,
//! report.json}` (plus our `apply.log`), written so tools built for the reference read ours.

use std::path::{Path, PathBuf};

use super::GradeOutcome;

/// Writes the grading logs of one instance under `dir/<instance_id>/` and returns that directory.
pub async fn write_instance_logs(
    dir: &Path,
    outcome: &GradeOutcome,
    patch: Option<&str>,
) -> std::io::Result<PathBuf> {
    let instance_dir = dir.join(&outcome.instance_id);
    tokio::fs::create_dir_all(&instance_dir).await?;
    tokio::fs::write(instance_dir.join("eval.sh"), &outcome.eval_script).await?;
    tokio::fs::write(instance_dir.join("patch.diff"), patch.unwrap_or("")).await?;
    tokio::fs::write(instance_dir.join("test_output.txt"), &outcome.test_output).await?;
    tokio::fs::write(instance_dir.join("apply.log"), &outcome.apply_log).await?;
    let report = serde_json::json!({ outcome.instance_id.clone(): outcome.report });
    let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    tokio::fs::write(instance_dir.join("report.json"), text).await?;
    Ok(instance_dir)
}
