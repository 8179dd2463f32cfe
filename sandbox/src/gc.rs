//! Orphan reconciliation: remove containers whose owner process is dead or whose expiry has passed. Used by
//! `swe-env gc` (optionally as a dry run), at server start-up and periodically by a running server; the labels are
//! the only state it needs.

use std::time::SystemTime;

use tracing::{info, warn};

use crate::docker::{DockerEngine, LabelledContainer};
use crate::error::SandboxError;
use crate::owner::{unix_seconds, DeadBecause, Liveness};

/// An io directory whose container is gone is swept once it was idle this long (container creation takes far less).
pub const IO_DIR_MIN_IDLE: std::time::Duration = std::time::Duration::from_secs(600);

/// Which labelled containers to remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GcScope {
    /// Containers of dead owners on this host, and expired ones (the default).
    #[default]
    Orphans,
    /// Every container carrying swe-env labels, alive owner or not (a hard reset).
    All,
}

/// Why a container is (or would be) removed, or why it is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GcReason {
    /// Past its `swe-env.expires` label (unix seconds).
    Expired {
        /// The expiry, unix seconds.
        expires_unix: u64,
    },
    /// Its owner process on this host is dead.
    OwnerDead {
        /// How it is known dead.
        because: DeadBecause,
    },
    /// The owner label cannot be parsed.
    MalformedOwner,
    /// `gc --all`.
    All,
    /// Kept: the owner is alive on this host.
    OwnerAlive,
    /// Kept: the owner is on another host (only expiry applies there).
    OwnerOnOtherHost {
        /// That host.
        host: String,
    },
}

impl GcReason {
    /// Whether this reason removes the container.
    pub fn removes(&self) -> bool {
        !matches!(self, Self::OwnerAlive | Self::OwnerOnOtherHost { .. })
    }
}

impl std::fmt::Display for GcReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Expired { expires_unix } => write!(f, "expired at {expires_unix} (unix seconds)"),
            Self::OwnerDead { because } => write!(f, "owner dead: {}", because.as_str()),
            Self::MalformedOwner => f.write_str("malformed owner label"),
            Self::All => f.write_str("gc --all"),
            Self::OwnerAlive => f.write_str("kept: owner alive"),
            Self::OwnerOnOtherHost { host } => {
                write!(
                    f,
                    "kept: owner on another host ({host}); removed once expired"
                )
            }
        }
    }
}

/// What happened to one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcAction {
    /// Removed (Docker confirmed).
    Removed,
    /// Would be removed (dry run).
    WouldRemove,
    /// Kept.
    Kept,
    /// Removal failed.
    Failed,
}

/// One container's verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GcDecision {
    /// Container id.
    pub id: String,
    /// Its episode label.
    pub episode: String,
    /// Its owner label as parsed (`host:pid:start_ticks`), when well-formed.
    pub owner: Option<String>,
    /// What was done.
    pub action: GcAction,
    /// Why (structured).
    pub reason: GcReason,
    /// The same, human-readable.
    pub reason_text: String,
    /// The removal error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a gc pass did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GcReport {
    /// Labelled containers seen.
    pub seen: usize,
    /// Nothing was removed: `removed` is empty and `would_remove` lists the candidates.
    pub dry_run: bool,
    /// Ids removed.
    pub removed: Vec<String>,
    /// Ids that would be removed (dry run only).
    pub would_remove: Vec<String>,
    /// Ids whose removal failed, with the reason.
    pub failed: Vec<(String, String)>,
    /// Every container seen, with what was done and why.
    pub decisions: Vec<GcDecision>,
}

/// Why a container should be removed, or why it is kept.
pub fn gc_reason(container: &LabelledContainer, now_unix: u64) -> GcReason {
    if container.expires_unix != 0 && container.expires_unix <= now_unix {
        return GcReason::Expired {
            expires_unix: container.expires_unix,
        };
    }
    match &container.owner {
        None => GcReason::MalformedOwner,
        Some(owner) => match owner.liveness() {
            Liveness::Alive => GcReason::OwnerAlive,
            Liveness::Dead(because) => GcReason::OwnerDead { because },
            Liveness::OtherHost => GcReason::OwnerOnOtherHost {
                host: owner.host.clone(),
            },
        },
    }
}

/// Removes orphaned (or, with [`GcScope::All`], all) labelled containers; with `dry_run`, only reports what it
/// would remove and why.
pub async fn collect_garbage_with(
    engine: &DockerEngine,
    scope: GcScope,
    dry_run: bool,
) -> Result<GcReport, SandboxError> {
    let containers = engine.labelled_containers().await?;
    let now = unix_seconds(SystemTime::now());
    let mut report = GcReport {
        seen: containers.len(),
        dry_run,
        ..Default::default()
    };
    let verdicts: Vec<_> = containers
        .iter()
        .map(|container| {
            let reason = match scope {
                GcScope::All => GcReason::All,
                GcScope::Orphans => gc_reason(container, now),
            };
            (container, reason)
        })
        .collect();
    // Removals run concurrently (the engine bounds them) so a mass reconcile does not take minutes.
    let removals = verdicts.iter().map(|(container, reason)| async move {
        if !reason.removes() {
            return (GcAction::Kept, None);
        }
        if dry_run {
            return (GcAction::WouldRemove, None);
        }
        match engine.remove_container(&container.id).await {
            Ok(()) => {
                info!(container = %container.id, episode = %container.episode, %reason, "removed orphan container");
                (GcAction::Removed, None)
            }
            Err(error) => {
                warn!(container = %container.id, %error, "could not remove orphan container");
                (GcAction::Failed, Some(error.to_string()))
            }
        }
    });
    let outcomes = futures_util::future::join_all(removals).await;
    if !dry_run {
        // io directories (FIFO data path) of containers already gone, idle long enough not to be a creation in flight.
        engine.sweep_io_dirs(&containers, IO_DIR_MIN_IDLE);
    }
    for ((container, reason), (action, error)) in verdicts.into_iter().zip(outcomes) {
        match action {
            GcAction::Removed => report.removed.push(container.id.clone()),
            GcAction::WouldRemove => report.would_remove.push(container.id.clone()),
            GcAction::Failed => report
                .failed
                .push((container.id.clone(), error.clone().unwrap_or_default())),
            GcAction::Kept => {}
        }
        report.decisions.push(GcDecision {
            id: container.id.clone(),
            episode: container.episode.clone(),
            owner: container.owner.as_ref().map(|o| o.to_label()),
            action,
            reason_text: reason.to_string(),
            reason,
            error,
        });
    }
    Ok(report)
}

/// Removes orphaned (or, with [`GcScope::All`], all) labelled containers.
pub async fn collect_garbage(
    engine: &DockerEngine,
    scope: GcScope,
) -> Result<GcReport, SandboxError> {
    collect_garbage_with(engine, scope, false).await
}

/// Removes every container owned by this process (after an interrupt, or at a server's shutdown, when dropped tasks
/// had no chance to clean up). A container that cannot be removed is logged and the sweep goes on; returns how
/// many were removed. `Err` only when the containers cannot be listed.
pub async fn remove_owned(engine: &DockerEngine) -> Result<usize, SandboxError> {
    let me = engine.owner().clone();
    let mut removed = 0;
    for container in engine.labelled_containers().await? {
        if container.owner.as_ref() != Some(&me) {
            continue;
        }
        match engine.remove_container(&container.id).await {
            Ok(()) => {
                warn!(container = %container.id, episode = %container.episode, "removed a container left behind");
                removed += 1;
            }
            Err(error) => {
                warn!(container = %container.id, %error, "could not remove a container left behind")
            }
        }
    }
    Ok(removed)
}

/// Removes every container owned by this process until a pass finds none (at most 5 passes, 300 ms apart): a
/// create request dropped mid-flight (a cancelled task) may still land in the engine after the first pass. Used
/// after a run was stopped; a listing failure is logged and the sweep goes on. Returns how many were removed.
pub async fn remove_owned_until_quiet(engine: &DockerEngine) -> usize {
    let mut removed = 0;
    for pass in 0..5 {
        match remove_owned(engine).await {
            Ok(0) if pass > 0 => break,
            Ok(n) => removed += n,
            Err(error) => {
                warn!(%error, "could not list this process's containers; run `swe-env gc`")
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    removed
}
