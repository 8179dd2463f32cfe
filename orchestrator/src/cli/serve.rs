//! `swe-env serve`: the gRPC service for remote trainers. Config from a YAML file, then flags; prints the bound
//! addresses on stdout (one `listening …` line each, for scripts), runs until SIGTERM/SIGINT, then drains.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::server::{self, ServerConfig};

/// Arguments of `swe-env serve`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  swe-env serve --tasks images/fixtures/tasks.jsonl --token-file token.txt\n  \
    swe-env serve --config serve.yaml --listen 0.0.0.0:50051\n  \
    grpcurl -plaintext -H 'authorization: Bearer TOKEN' 127.0.0.1:50051 list"
)]
pub struct ServeArgs {
    /// YAML config file (every field optional; see `server::config`); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// TCP address to listen on (`host:port`; port 0 picks a free port). Default 127.0.0.1:50051.
    #[arg(long)]
    listen: Option<String>,
    /// Serve on a unix socket only (no TCP unless --listen is also given).
    #[arg(long)]
    unix_socket: Option<PathBuf>,
    /// Tasks: `fixtures`, `verified`/`lite`/`full`, or a JSONL/JSON/parquet file (SWE-bench format); repeatable.
    #[arg(long = "tasks")]
    tasks: Vec<String>,
    /// File holding the bearer token (else SWE_ENV_TOKEN; with neither, auth is off).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Maximum live episodes.
    #[arg(long)]
    max_episodes: Option<usize>,
    /// Maximum containers starting at once.
    #[arg(long)]
    max_concurrent_starts: Option<usize>,
    /// End episodes idle for this many seconds.
    #[arg(long)]
    idle_ttl_secs: Option<u64>,
    /// Directory of trajectory files.
    #[arg(long)]
    trajectory_dir: Option<PathBuf>,
    /// Seconds in-flight calls get to finish on SIGTERM/SIGINT.
    #[arg(long)]
    shutdown_grace_secs: Option<u64>,
    /// Seconds between background reconciles (orphans of dead owners, failed removals, crashed trajectories).
    #[arg(long)]
    reconcile_interval_secs: Option<u64>,
}

impl ServeArgs {
    /// The config file (or defaults) with the flags applied.
    fn resolve(self) -> anyhow::Result<ServerConfig> {
        let mut config = match &self.config {
            Some(path) => ServerConfig::from_yaml_file(path)?,
            None => ServerConfig::default(),
        };
        match (self.listen, &self.unix_socket) {
            (Some(listen), _) => config.listen = Some(listen),
            (None, Some(_)) => config.listen = None,
            (None, None) => {}
        }
        if self.unix_socket.is_some() {
            config.unix_socket = self.unix_socket;
        }
        if !self.tasks.is_empty() {
            config.tasks = self.tasks;
        }
        if self.token_file.is_some() {
            config.token_file = self.token_file;
        }
        if let Some(v) = self.max_episodes {
            config.max_episodes = v;
        }
        if let Some(v) = self.max_concurrent_starts {
            config.max_concurrent_starts = v;
        }
        if let Some(v) = self.idle_ttl_secs {
            config.idle_ttl_secs = v;
        }
        if let Some(v) = self.trajectory_dir {
            config.trajectory_dir = v;
        }
        if let Some(v) = self.shutdown_grace_secs {
            config.shutdown_grace_secs = v;
        }
        if let Some(v) = self.reconcile_interval_secs {
            config.reconcile_interval_secs = v;
        }
        Ok(config)
    }
}

/// Runs the server until a stop signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = match args.resolve() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    // Handlers first: a SIGTERM sent as soon as the `listening` line appears must drain, not kill.
    let signals = server::shutdown::StopSignals::install();
    let running = match server::start(config).await {
        Ok(running) => running,
        Err(error @ (server::ServerError::Config(_) | server::ServerError::Tasks(_))) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
        Err(error) => return Err(error).context("starting the server"),
    };
    if let Some(addr) = running.tcp_addr() {
        println!("listening tcp {addr}");
    }
    if let Some(path) = running.unix_path() {
        println!("listening unix {}", path.display());
    }
    println!("owner {}", running.owner_label());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let report = running.run_until_signal(signals).await;
    eprintln!(
        "stopped: {} call(s) cancelled, {} episode(s) cancelled, {} container(s) swept",
        report.cancelled_calls, report.episodes_cancelled, report.containers_swept
    );
    Ok(ExitCode::SUCCESS)
}
