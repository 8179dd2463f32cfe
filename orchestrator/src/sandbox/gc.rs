//! Orphan reconciliation: remove containers whose owner process is dead or whose expiry has passed. Used by
//! `swe-env gc` and at server start-up; the labels are the only state it needs.

use std::time::SystemTime;

use tracing::{info, warn};

use super::docker::{DockerEngine, LabelledContainer};
use super::error::SandboxError;
use super::owner::unix_seconds;

/// Which labelled containers to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GcScope {
    /// Containers of dead owners on this host, and expired ones (the default).
    #[default]
    Orphans,
    /// Every container carrying swe-env labels, alive owner or not (a hard reset).
    All,
}

/// What a gc pass did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Labelled containers seen.
    pub seen: usize,
    /// Ids removed.
    pub removed: Vec<String>,
    /// Ids whose removal failed, with the reason.
    pub failed: Vec<(String, String)>,
}

/// Why a container is an orphan, or `None` when it should be kept.
pub fn orphan_reason(container: &LabelledContainer, now_unix: u64) -> Option<&'static str> {
    if container.expires_unix != 0 && container.expires_unix <= now_unix {
        return Some("expired");
    }
    match &container.owner {
        None => Some("malformed owner label"),
        Some(owner) if owner.is_dead_here() => Some("owner process is gone"),
        Some(_) => None,
    }
}

/// Removes orphaned (or, with [`GcScope::All`], all) labelled containers.
pub async fn collect_garbage(
    engine: &DockerEngine,
    scope: GcScope,
) -> Result<GcReport, SandboxError> {
    let containers = engine.labelled_containers().await?;
    let now = unix_seconds(SystemTime::now());
    let mut report = GcReport {
        seen: containers.len(),
        ..Default::default()
    };
    for container in &containers {
        let reason = match scope {
            GcScope::All => Some("gc --all"),
            GcScope::Orphans => orphan_reason(container, now),
        };
        let Some(reason) = reason else { continue };
        match engine.remove_container(&container.id).await {
            Ok(()) => {
                info!(container = %container.id, episode = %container.episode, reason, "removed orphan container");
                report.removed.push(container.id.clone());
            }
            Err(error) => {
                warn!(container = %container.id, %error, "could not remove orphan container");
                report
                    .failed
                    .push((container.id.clone(), error.to_string()));
            }
        }
    }
    Ok(report)
}

/// Removes every container owned by this process (used after an interrupt, when dropped tasks had no chance to
/// clean up). Returns how many were removed.
pub async fn remove_owned(engine: &DockerEngine) -> Result<usize, SandboxError> {
    let me = engine.owner().clone();
    let mut removed = 0;
    for container in engine.labelled_containers().await? {
        if container.owner.as_ref() == Some(&me) {
            engine.remove_container(&container.id).await?;
            removed += 1;
        }
    }
    Ok(removed)
}
