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
    swe-env serve --config swe-env.yaml --print-config   # the effective config, then exit\n  \
    grpcurl -plaintext -H 'authorization: Bearer TOKEN' 127.0.0.1:50051 list"
)]
pub struct ServeArgs {
    /// Config file (YAML): the unified file (the `serve` section, with `budgets`, `sandbox` and `grading` as the
    /// episode and grading defaults; other sections ignored), or a file holding only the serve section (every key
    /// optional; the keys are listed in the README's serve section). Flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the configuration (JSON, which is YAML: usable as --config) and exit without listening or touching
    /// Docker: the keys the file and the flags set, under `serve:` (every other key has its documented default).
    #[arg(long)]
    print_config: bool,
    /// TCP address to listen on (`host:port`; port 0 picks a free port). Default 127.0.0.1:50051.
    #[arg(long)]
    listen: Option<String>,
    /// Serve Prometheus metrics over HTTP at `host:port` (GET /metrics; no auth: use loopback or a private
    /// network; port 0 picks a free port).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// This server's node id in a fleet (a DNS label: lower-case letters, digits, `-`); every episode id it makes
    /// starts with `<ID>.`. Default: the host name (a Kubernetes pod's name). Several servers on one host need
    /// distinct ids.
    #[arg(long)]
    node_id: Option<String>,
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
        let loaded = crate::config::Loaded::load_with_section(
            self.config.as_deref(),
            &crate::config::SERVE_OWN_KEYS,
        )?;
        let mut config = match &self.config {
            Some(path) if !loaded.unified => ServerConfig::from_yaml_file(path)?,
            Some(path) => {
                crate::config::server_config(loaded.serve_value()?, &path.display().to_string())?
            }
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
        if self.metrics_listen.is_some() {
            config.metrics_listen = self.metrics_listen;
        }
        if self.node_id.is_some() {
            config.node_id = self.node_id;
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

impl ServeArgs {
    /// The configuration the file and the flags set, as printed by `--print-config` (`{"serve": {…}}`).
    fn printed(&self) -> anyhow::Result<serde_json::Value> {
        let loaded = crate::config::Loaded::load_with_section(
            self.config.as_deref(),
            &crate::config::SERVE_OWN_KEYS,
        )?;
        let mut value = loaded.serve_value()?;
        let mut flags = serde_json::Map::new();
        let mut put = |key: &str, given: Option<serde_json::Value>| {
            if let Some(given) = given {
                flags.insert(key.to_owned(), given);
            }
        };
        use serde_json::json;
        match (&self.listen, &self.unix_socket) {
            (Some(listen), _) => put("listen", Some(json!(listen))),
            (None, Some(_)) => put("listen", Some(serde_json::Value::Null)),
            (None, None) => {}
        }
        put("unix_socket", self.unix_socket.as_ref().map(|p| json!(p)));
        put(
            "metrics_listen",
            self.metrics_listen.as_ref().map(|v| json!(v)),
        );
        put("node_id", self.node_id.as_ref().map(|v| json!(v)));
        put("tasks", (!self.tasks.is_empty()).then(|| json!(self.tasks)));
        put("token_file", self.token_file.as_ref().map(|p| json!(p)));
        put("max_episodes", self.max_episodes.map(|v| json!(v)));
        put(
            "max_concurrent_starts",
            self.max_concurrent_starts.map(|v| json!(v)),
        );
        put("idle_ttl_secs", self.idle_ttl_secs.map(|v| json!(v)));
        put(
            "trajectory_dir",
            self.trajectory_dir.as_ref().map(|p| json!(p)),
        );
        put(
            "shutdown_grace_secs",
            self.shutdown_grace_secs.map(|v| json!(v)),
        );
        put(
            "reconcile_interval_secs",
            self.reconcile_interval_secs.map(|v| json!(v)),
        );
        crate::config::merge(&mut value, serde_json::Value::Object(flags));
        Ok(json!({ "serve": value }))
    }
}

/// Runs the server until a stop signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.print_config {
        return match args.printed().and_then(|value| {
            let text = serde_json::to_string_pretty(&value)?;
            // Checked like a start would: the printed config is one `serve --config` accepts.
            args.resolve()?.validate()?;
            Ok(text)
        }) {
            Ok(text) => {
                println!("{text}");
                Ok(ExitCode::SUCCESS)
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                Ok(ExitCode::from(super::EXIT_USAGE))
            }
        };
    }
    // What the file and the flags set (the rest is default), logged once the config is known to be valid.
    let printed = args.printed().ok();
    let config = match args.resolve() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error:#}");
            return Ok(ExitCode::from(super::EXIT_USAGE));
        }
    };
    if let Some(printed) = printed {
        tracing::info!(config = %printed, "serve configuration (keys not shown have their defaults)");
    }
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
    if let Some(addr) = running.metrics_addr() {
        println!("metrics http://{addr}/metrics");
    }
    println!("node {}", running.node_id());
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
