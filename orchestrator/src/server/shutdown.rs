//! Termination signals, the idle reaper and the periodic reconcile: the background concerns of a running server.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{info, warn};

use super::state::ServerState;
use swe_env_sandbox::{collect_garbage, GcScope};

/// Which signal asked the server to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (service managers, `kill`).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

/// SIGTERM and SIGINT handlers, installed when this value is made. Install them *before* telling anyone the process
/// is ready (the `listening …` line, a child's pid handed out): a signal that arrives earlier than the handler takes
/// the default action and kills the process instead of stopping it cleanly.
pub struct StopSignals {
    handlers: Option<(Signal, Signal)>,
}

impl StopSignals {
    /// Installs the handlers now. If they cannot be installed, [`StopSignals::recv`] waits for Ctrl-C only.
    pub fn install() -> Self {
        let handlers = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => Some((term, int)),
            (Err(error), _) | (_, Err(error)) => {
                warn!(%error, "cannot install signal handlers; only Ctrl-C stops the process");
                None
            }
        };
        Self { handlers }
    }

    /// Waits for the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) -> StopSignal {
        match &mut self.handlers {
            Some((term, int)) => tokio::select! {
                _ = term.recv() => StopSignal::Terminate,
                _ = int.recv() => StopSignal::Interrupt,
            },
            None => {
                let _ = tokio::signal::ctrl_c().await;
                StopSignal::Interrupt
            }
        }
    }
}

/// How often the reaper looks for idle episodes: a quarter of the TTL, within 100 ms ..= 30 s.
pub fn reap_period(idle_ttl: Duration) -> Duration {
    (idle_ttl / 4).clamp(Duration::from_millis(100), Duration::from_secs(30))
}

/// Runs the idle reaper until the server drains.
pub async fn run_reaper(state: Arc<ServerState>) {
    let period = reap_period(state.config.idle_ttl());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = state.draining() => return,
        }
        let reaped = state.reap_idle().await;
        if reaped > 0 {
            info!(reaped, "ended idle episodes");
        }
    }
}

/// One reconcile pass: removes orphaned containers of dead owners (and expired ones), retries removals of this
/// server's containers that failed, and closes the trajectories of crashed episodes (`done`: files known to need
/// nothing more).
pub async fn reconcile(state: &ServerState, done: &mut HashSet<PathBuf>) {
    match collect_garbage(&state.engine, GcScope::Orphans).await {
        Ok(report) if !report.removed.is_empty() || !report.failed.is_empty() => info!(
            removed = report.removed.len(),
            failed = report.failed.len(),
            "reconciled orphaned containers"
        ),
        Ok(_) => {}
        Err(error) => warn!(%error, "orphan reconciliation failed"),
    }
    let retried = state.retry_failed_removals().await;
    if retried > 0 {
        info!(retried, "removed containers whose first removal failed");
    }
    let closed = super::recover::close_crashed_trajectories(
        &state.config.trajectory_dir,
        state.engine.owner(),
        |episode_id| {
            state
                .registry
                .get(episode_id)
                .is_some_and(|slot| slot.summary().status.is_none())
        },
        done,
    )
    .await;
    if !closed.closed.is_empty() {
        info!(
            closed = closed.closed.len(),
            "closed trajectories of crashed episodes"
        );
    }
}

/// Runs [`reconcile`] every `reconcile_interval` until the server drains.
pub async fn run_reconciler(state: Arc<ServerState>, mut done: HashSet<PathBuf>) {
    let period = state.config.reconcile_interval();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = state.draining() => return,
        }
        reconcile(&state, &mut done).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reap_period_is_bounded() {
        assert_eq!(
            reap_period(Duration::from_secs(2)),
            Duration::from_millis(500)
        );
        assert_eq!(
            reap_period(Duration::from_millis(10)),
            Duration::from_millis(100)
        );
        assert_eq!(
            reap_period(Duration::from_secs(3600)),
            Duration::from_secs(30)
        );
    }
}
