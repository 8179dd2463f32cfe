//! The gRPC service (`swe-env serve`): episodes for remote trainers over `swe_env.v1.EnvService`, plus
//! `grpc.health.v1` and reflection (v1 and v1alpha). **API boundary:** the only user of the generated `proto`
//! types, and the only place a `tonic::Status` is made (`error`).
//!
//! Modules: `config` (YAML + defaults), `auth` (bearer token), `admission` (limits), `tasks` (loaded datasets),
//! `registry` (episode slots, idempotent replies), `convert` (wire ↔ crate types, validation), `state` (what each
//! call does, drain), `run` (server-driven episodes: the model agent loop), `service` (the handlers), `shutdown`
//! (signals, idle reaper), `metrics` (Prometheus endpoint, `--metrics-listen`).

pub mod admission;
pub mod auth;
pub mod config;
pub mod convert;
pub mod error;
pub mod metrics;
pub mod proto;
pub mod recover;
pub mod registry;
pub mod run;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod tasks;

pub use config::{ConfigError, ServerConfig};
pub use error::{ServiceError, RETRY_AFTER_MS};
pub use state::DrainReport;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{info, warn};

use self::auth::BearerAuth;
use self::proto::env_service_server::EnvServiceServer;
use self::service::EnvServiceImpl;
use self::state::ServerState;
use self::tasks::TaskCatalog;
use swe_env_sandbox::{DockerEngine, SandboxError};

/// Timeout of individual Docker API calls made by the server.
pub const DOCKER_API_TIMEOUT: Duration = Duration::from_secs(120);
/// How long stopped listeners may take to close their connections after the drain.
pub const LISTENER_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration or token file.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A task source could not be loaded.
    #[error(transparent)]
    Tasks(#[from] crate::datasets::DatasetSourceError),
    /// The Docker engine is unreachable.
    #[error(transparent)]
    Engine(#[from] SandboxError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    MetricsBind(#[from] metrics::MetricsBindError),
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address or socket path.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The trajectory directory could not be created.
    #[error("cannot create trajectory directory {path}: {source}")]
    TrajectoryDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reflection service could not be built.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
}

/// A server accepting calls. Stop it with [`RunningServer::shutdown`] (or [`RunningServer::run_until_signal`]).
#[must_use = "dropping the handle leaves the server running without a way to drain it"]
pub struct RunningServer {
    state: Arc<ServerState>,
    tcp_addr: Option<SocketAddr>,
    unix_path: Option<PathBuf>,
    stop_accepting: CancellationToken,
    listeners: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    reaper: JoinHandle<()>,
    reconciler: JoinHandle<()>,
    health: tonic_health::server::HealthReporter,
    metrics: Option<metrics::MetricsServer>,
}

/// Loads tasks, connects to Docker, removes orphaned containers, binds the listeners and starts serving.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let token = config.resolve_token()?;
    let tasks = TaskCatalog::load(&config.tasks).await?;
    std::fs::create_dir_all(&config.trajectory_dir).map_err(|source| {
        ServerError::TrajectoryDir {
            path: config.trajectory_dir.clone(),
            source,
        }
    })?;
    let engine = DockerEngine::connect(DOCKER_API_TIMEOUT).await?;
    let auth = BearerAuth::new(token);
    if !auth.enabled() {
        warn!(
            "no bearer token configured (--token-file or SWE_ENV_TOKEN): every client is admitted"
        );
    }
    info!(tasks = tasks.len(), "tasks loaded");
    let state = Arc::new(ServerState::new(config, engine, tasks));
    // Before serving: orphans of dead owners (a zombie owner is dead) and trajectories of crashed episodes.
    let mut reconciled = std::collections::HashSet::new();
    shutdown::reconcile(&state, &mut reconciled).await;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<EnvServiceServer<EnvServiceImpl>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServerError::Reflection(e.to_string()))?;
    let routes = Routes::new(health_service)
        .add_service(InterceptedService::new(
            EnvServiceServer::new(EnvServiceImpl::new(state.clone())),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth));

    let stop_accepting = CancellationToken::new();
    // Metrics first: a bad metrics address fails the start before any gRPC listener runs.
    let metrics = match &state.config.metrics_listen {
        Some(address) => Some(
            metrics::MetricsServer::start(
                address,
                metrics::render_state(Arc::downgrade(&state)),
                stop_accepting.clone(),
            )
            .await?,
        ),
        None => None,
    };
    let mut listeners = Vec::new();
    let mut tcp_addr = None;
    if let Some(listen) = &state.config.listen {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| ServerError::Bind {
                address: listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind {
            address: listen.clone(),
            source,
        })?;
        tcp_addr = Some(addr);
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = Server::builder()
            .add_routes(routes.clone())
            .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
        listeners.push(tokio::spawn(server));
        info!(%addr, "listening (tcp)");
    }
    let unix_path = state.config.unix_socket.clone();
    if let Some(path) = &unix_path {
        remove_stale_socket(path);
        let listener =
            tokio::net::UnixListener::bind(path).map_err(|source| ServerError::Bind {
                address: path.display().to_string(),
                source,
            })?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let server = Server::builder()
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stop_accepting.clone().cancelled_owned());
        listeners.push(tokio::spawn(server));
        info!(path = %path.display(), "listening (unix socket)");
    }
    let reaper = tokio::spawn(shutdown::run_reaper(state.clone()));
    let reconciler = tokio::spawn(shutdown::run_reconciler(state.clone(), reconciled));
    Ok(RunningServer {
        state,
        tcp_addr,
        unix_path,
        stop_accepting,
        listeners,
        reaper,
        reconciler,
        health,
        metrics,
    })
}

/// Removes a leftover socket file (never any other kind of file).
fn remove_stale_socket(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl RunningServer {
    /// The bound TCP address (with the real port when configured with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The bound address of the metrics endpoint (`--metrics-listen`), when serving one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|m| m.addr)
    }

    /// The unix socket path, when serving on one.
    pub fn unix_path(&self) -> Option<&std::path::Path> {
        self.unix_path.as_deref()
    }

    /// This server's node id (the prefix of its episode ids).
    pub fn node_id(&self) -> &str {
        self.state.episode_ids.node_id()
    }

    /// The owner label of this server's containers (`host:pid:start_ticks`).
    pub fn owner_label(&self) -> String {
        self.state.engine.owner().to_label()
    }

    /// Waits for SIGTERM or SIGINT on `signals` (installed before the server was announced), then shuts down with
    /// the configured grace period.
    pub async fn run_until_signal(self, mut signals: shutdown::StopSignals) -> DrainReport {
        let signal = signals.recv().await;
        info!(?signal, "stop signal received; draining");
        let grace = self.state.config.shutdown_grace();
        self.shutdown(grace).await
    }

    /// Turns health NOT_SERVING, refuses new work, lets live episodes Step and Close and calls in flight finish
    /// within `grace`, cancels the rest, ends live episodes with status `cancelled` (trajectories finished,
    /// containers removed) and stops the listeners.
    pub async fn shutdown(self, grace: Duration) -> DrainReport {
        // Health first, so balancers stop routing here; the listeners keep serving during the grace period so
        // clients can Step and Close their live episodes (new work is refused with UNAVAILABLE).
        self.health
            .set_not_serving::<EnvServiceServer<EnvServiceImpl>>()
            .await;
        // The whole server too (service name ""): what load balancers and Kubernetes probes ask.
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let report = self.state.drain(grace).await;
        self.stop_accepting.cancel();
        self.reaper.abort();
        self.reconciler.abort();
        for listener in self.listeners {
            let abort = listener.abort_handle();
            match tokio::time::timeout(LISTENER_CLOSE_TIMEOUT, listener).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => warn!(%error, "listener ended with an error"),
                Ok(Err(error)) => warn!(%error, "listener task failed"),
                Err(_) => {
                    warn!("connections still open after the drain; closing them");
                    abort.abort();
                }
            }
        }
        if let Some(metrics) = self.metrics {
            metrics.stopped(LISTENER_CLOSE_TIMEOUT).await;
        }
        if let Some(path) = &self.unix_path {
            remove_stale_socket(path);
        }
        info!(?report, "server stopped");
        report
    }
}
