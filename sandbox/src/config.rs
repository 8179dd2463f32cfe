//! Knobs of a sandbox: resource limits, isolation and the shell's behaviour. Defaults are defined once, here.

use std::time::Duration;

/// How a container for one episode is created and how its shell behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxConfig {
    /// Docker network mode. Default `none`: agents get no network unless a task asks for it.
    pub network_mode: String,
    /// Memory limit in bytes (swap is disabled by setting memory-swap to the same value). Default 4 GiB.
    pub memory_bytes: i64,
    /// CPU limit in units of 1e-9 CPUs. Default 2 CPUs.
    pub nano_cpus: i64,
    /// Maximum number of processes in the container; stops fork bombs. Default 1024.
    pub pids_limit: i64,
    /// Directory the shell starts (and restarts) in. Default `/`: episodes and grading set the task's repository
    /// directory (`swe_env_grading::specs::SWE_BENCH_REPO_DIR`); this crate knows nothing of tasks.
    pub workdir: String,
    /// Shell lines run at session start and after every restart (e.g. the task's env activation).
    pub init_commands: Vec<String>,
    /// Extra environment variables for the shell (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Output kept per command (head + tail). Default 1 MiB.
    pub max_output_bytes: usize,
    /// How long after an interrupt we wait for the command to end before escalating. Default 2 s.
    pub interrupt_grace: Duration,
    /// How long a container may live before `gc` treats it as abandoned. Default 24 h.
    pub container_ttl: Duration,
    /// Timeout of individual Docker API calls. Default 120 s.
    pub docker_timeout: Duration,
    /// How the persistent shell's bytes travel. Default [`DataPath::Auto`].
    pub data_path: DataPath,
}

/// How the persistent shell's stdin/stdout travel between this process and `bash` in the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPath {
    /// [`DataPath::Fifo`] when the engine is a local unix socket and can bind-mount our directories, else
    /// [`DataPath::Attach`]. An engine that refuses the bind mount ("bind source path does not exist": a dockerd
    /// in another mount namespace or VM) is switched to attach for good, logged once.
    #[default]
    Auto,
    /// One attached exec per shell: every byte goes through dockerd and the containerd shim (works with any
    /// engine, remote ones included).
    Attach,
    /// Named pipes in a host directory bind-mounted read-only into the container (`crate::fifo`): one detached
    /// exec starts the shell, then bytes go through the kernel only. Needs a local engine that sees this host's
    /// files; creating a sandbox fails otherwise.
    Fifo,
}

impl DataPath {
    /// The name used in configuration and logs (`auto`, `attach`, `fifo`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Attach => "attach",
            Self::Fifo => "fifo",
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            network_mode: "none".to_owned(),
            memory_bytes: 4 << 30,
            nano_cpus: 2_000_000_000,
            pids_limit: 1024,
            workdir: "/".to_owned(),
            init_commands: Vec::new(),
            env: Vec::new(),
            max_output_bytes: 1 << 20,
            interrupt_grace: Duration::from_secs(2),
            container_ttl: Duration::from_secs(24 * 3600),
            docker_timeout: Duration::from_secs(120),
            data_path: DataPath::Auto,
        }
    }
}

/// Capabilities kept after dropping all: what git, pip and apt need (ownership changes, privilege drops to the
/// `_apt` user, signalling own processes). Docker's defaults minus raw sockets, mknod, chroot, audit and fcaps.
pub const KEPT_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];
