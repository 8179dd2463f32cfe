//! Recovery after a crash, at start and periodically: trajectories of episodes whose driving process died are closed
//! `crashed`, and containers this server failed to remove are removed again (orphans of dead owners are
//! `sandbox::gc`'s job).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::trajectory::close_crashed;
use crate::trajectory::recover::open_trajectory;
use swe_env_sandbox::owner::{Liveness, Owner};

/// What a pass over the trajectory directory did.
#[derive(Debug, Default)]
pub struct CrashCloseReport {
    /// Episode ids closed `crashed`.
    pub closed: Vec<String>,
    /// Files that could not be read or closed.
    pub failed: usize,
}

/// Closes, with an `episode_end` of status `crashed`, every trajectory in `dir` that has no end, whose episode is
/// not live here (`is_live`), and whose recorded owner is dead on this host. A trajectory of another live server
/// sharing the directory, of this process, or without an owner record (older files) is never touched. `done` holds
/// files known to need nothing more (ended, or closed); it is updated so periodic passes skip them.
pub async fn close_crashed_trajectories(
    dir: &Path,
    me: &Owner,
    is_live: impl Fn(&str) -> bool,
    done: &mut HashSet<PathBuf>,
) -> CrashCloseReport {
    let mut report = CrashCloseReport::default();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(error) => {
            warn!(dir = %dir.display(), %error, "cannot list the trajectory directory for crash recovery");
            return report;
        }
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("jsonl") || done.contains(&path) {
            continue;
        }
        // A live episode of this server (files are `<episode_id>.jsonl`): not read at all while it lives.
        if path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .is_some_and(&is_live)
        {
            continue;
        }
        let open = match open_trajectory(&path).await {
            Ok(Some(open)) => open,
            Ok(None) => {
                done.insert(path);
                continue;
            }
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read a trajectory for crash recovery; left as is");
                done.insert(path);
                report.failed += 1;
                continue;
            }
        };
        let Some(start) = open.start else { continue };
        let Some(owner) = start.owner.as_deref().and_then(Owner::from_label) else {
            continue;
        };
        if &owner == me {
            // This process never crash-closes its own episodes: nothing more to do with the file.
            done.insert(path);
            continue;
        }
        if is_live(&start.episode_id) {
            continue;
        }
        let Liveness::Dead(because) = owner.liveness() else {
            continue;
        };
        let detail = format!(
            "the process driving this episode ({}) died before it ended ({}); closed by the server {} after the crash",
            owner.to_label(),
            because.as_str(),
            me.to_label()
        );
        match close_crashed(&path, &detail).await {
            Ok(Some(_)) => {
                info!(episode_id = %start.episode_id, owner = %owner.to_label(), n_steps = open.n_steps, "closed the trajectory of a crashed episode");
                report.closed.push(start.episode_id);
                done.insert(path);
            }
            Ok(None) => {
                done.insert(path);
            }
            Err(error) => {
                warn!(episode_id = %start.episode_id, %error, "cannot close the trajectory of a crashed episode");
                report.failed += 1;
            }
        }
    }
    report
}
