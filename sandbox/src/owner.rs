//! Who owns a container, and whether that owner is still alive. Containers carry labels naming their episode,
//! their owner process and an expiry time, so that any later process (`swe-env gc`, a restarted server) can find
//! and remove orphans without any state besides the Docker engine itself.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Label holding the episode id.
pub const LABEL_EPISODE: &str = "swe-env.episode";
/// Label holding the owner identity (`host:pid:start_ticks`).
pub const LABEL_OWNER: &str = "swe-env.owner";
/// Label holding the unix time (seconds) after which the container is abandoned whatever its owner.
pub const LABEL_EXPIRES: &str = "swe-env.expires";

/// Identity of a live process: host name, pid and the kernel's start time of that pid (guards against pid reuse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// Host name of the owning process.
    pub host: String,
    /// Process id on that host.
    pub pid: u32,
    /// Start time of the process in clock ticks since boot (`/proc/PID/stat` field 22); 0 when unknown.
    pub start_ticks: u64,
}

impl Owner {
    /// The current process.
    pub fn current() -> Self {
        let pid = std::process::id();
        Self {
            host: host_name(),
            pid,
            start_ticks: process_start_ticks(pid).unwrap_or(0),
        }
    }

    /// Label form, `host:pid:start_ticks`.
    pub fn to_label(&self) -> String {
        format!("{}:{}:{}", self.host, self.pid, self.start_ticks)
    }

    /// Parses the label form; `None` when malformed.
    pub fn from_label(label: &str) -> Option<Self> {
        let mut parts = label.rsplitn(3, ':');
        let start_ticks = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let host = parts.next()?.to_owned();
        Some(Self {
            host,
            pid,
            start_ticks,
        })
    }

    /// Whether this owner is known to be dead. Owners on other hosts are never known dead (only expiry applies).
    pub fn is_dead_here(&self) -> bool {
        matches!(self.liveness(), Liveness::Dead(_))
    }

    /// Whether this owner is alive, dead (and why) or on another host. A zombie (state `Z`: killed, not yet
    /// reaped by its parent) is dead: it holds its pid and start time until reaped, but runs nothing.
    pub fn liveness(&self) -> Liveness {
        if self.host != host_name() {
            return Liveness::OtherHost;
        }
        match process_stat(self.pid) {
            None => Liveness::Dead(DeadBecause::PidGone),
            Some(stat) if self.start_ticks != 0 && stat.start_ticks != self.start_ticks => {
                Liveness::Dead(DeadBecause::StartTimeDiffers)
            }
            Some(stat) if matches!(stat.state, 'Z' | 'X' | 'x') => {
                Liveness::Dead(DeadBecause::Zombie)
            }
            Some(_) => Liveness::Alive,
        }
    }
}

/// What is known of an owner process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running on this host.
    Alive,
    /// Dead on this host.
    Dead(DeadBecause),
    /// On another host: its liveness cannot be checked here.
    OtherHost,
}

/// Why an owner on this host is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeadBecause {
    /// No process has that pid.
    PidGone,
    /// The pid is a zombie (killed, not reaped yet).
    Zombie,
    /// The pid was reused by another process (its start time differs).
    StartTimeDiffers,
}

impl DeadBecause {
    /// Human-readable form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PidGone => "pid gone",
            Self::Zombie => "zombie",
            Self::StartTimeDiffers => "start time differs (pid reused)",
        }
    }
}

/// The labels for a new container of `episode_id`.
pub fn container_labels(episode_id: &str, owner: &Owner, ttl: Duration) -> HashMap<String, String> {
    let expires = SystemTime::now()
        .checked_add(ttl)
        .unwrap_or(SystemTime::now());
    HashMap::from([
        (LABEL_EPISODE.to_owned(), episode_id.to_owned()),
        (LABEL_OWNER.to_owned(), owner.to_label()),
        (LABEL_EXPIRES.to_owned(), unix_seconds(expires).to_string()),
    ])
}

/// Seconds since the epoch (0 for times before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned())
}

fn process_start_ticks(pid: u32) -> Option<u64> {
    process_stat(pid).map(|stat| stat.start_ticks)
}

/// The fields of `/proc/PID/stat` the owner check needs.
struct ProcStat {
    /// Field 3: R, S, D, Z (zombie), X (dead)…
    state: char,
    /// Field 22: start time in clock ticks since boot.
    start_ticks: u64,
}

fn process_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

fn parse_stat(stat: &str) -> Option<ProcStat> {
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after_comm = stat.get(stat.rfind(')')? + 2..)?;
    // after_comm starts at field 3 (state); starttime is field 22.
    let mut fields = after_comm.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(22 - 4)?.parse().ok()?;
    Some(ProcStat { state, start_ticks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_label_round_trips() {
        let owner = Owner {
            host: "a:b".into(),
            pid: 42,
            start_ticks: 7,
        };
        assert_eq!(Owner::from_label(&owner.to_label()), Some(owner));
        assert_eq!(Owner::from_label("garbage"), None);
    }

    #[test]
    fn current_process_is_alive_and_pid_reuse_is_detected() {
        let me = Owner::current();
        assert!(me.start_ticks > 0);
        assert!(!me.is_dead_here());
        let reused = Owner {
            start_ticks: me.start_ticks + 1,
            ..me.clone()
        };
        assert!(reused.is_dead_here());
        let other_host = Owner {
            host: "elsewhere".into(),
            pid: u32::MAX,
            start_ticks: 1,
        };
        assert!(!other_host.is_dead_here());
        assert_eq!(other_host.liveness(), Liveness::OtherHost);
    }

    #[test]
    fn stat_parsing_reads_state_and_start_time() {
        let stat = "1234 (a (weird) name) Z 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!(parsed.state, 'Z');
        assert_eq!(parsed.start_ticks, 987654);
    }

    #[test]
    fn a_zombie_owner_is_dead() {
        // A child killed and not waited for stays a zombie: its pid and start time are still in /proc.
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let owner = Owner {
            host: host_name(),
            pid: child.id(),
            start_ticks: process_start_ticks(child.id()).unwrap(),
        };
        assert_eq!(owner.liveness(), Liveness::Alive);
        child.kill().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while process_stat(child.id()).map(|s| s.state) != Some('Z') {
            assert!(std::time::Instant::now() < deadline, "no zombie");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(owner.liveness(), Liveness::Dead(DeadBecause::Zombie));
        assert!(owner.is_dead_here());
        child.wait().unwrap();
        assert_eq!(owner.liveness(), Liveness::Dead(DeadBecause::PidGone));
    }
}
