//! The Docker backend: one container per episode, one persistent `bash` per container — its stdio on FIFOs in a
//! bind-mounted host directory ([`crate::fifo`], local engines) or over a single attached exec (remote engines) —
//! file bytes through exec stdin/stdout. The only module that talks to the engine (bollard).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions,
    RestartContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant as TokioInstant;
use tracing::{debug, info, warn};

use crate::api::{BoundedRead, CommandOutput, PathKind, Sandbox};
use crate::capture::{CappedOutput, ScanEvent, SentinelScanner};
use crate::config::{DataPath, SandboxConfig, KEPT_CAPABILITIES};
use crate::error::SandboxError;
use crate::fifo::{self, ContainerDir};
use crate::owner::{container_labels, Owner, LABEL_EPISODE, LABEL_EXPIRES, LABEL_OWNER};
use crate::shell;

/// Largest file the sandbox reads for the tools (edit needs the whole file in memory).
pub const MAX_FILE_BYTES: usize = 64 << 20;

/// Environment every shell gets: no pagers, no colour-hungry terminal.
const SHELL_ENV: &[&str] = &[
    "PAGER=cat",
    "GIT_PAGER=cat",
    "MANPAGER=cat",
    "TERM=dumb",
    "LESS=-R",
    "PS1=",
    "PS2=",
];

/// How long a new shell may take to print its start-up sentinel.
const SHELL_START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the guard of a command may take to print START (it runs builtins only, in microseconds); a shell
/// that does not print it ignores commands (e.g. `extdebug` with a failing DEBUG trap) and is replaced.
const GUARD_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to a Docker engine, and the owner identity stamped on every container it creates.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    owner: Owner,
    /// The engine is a local unix socket: it may see our directories (the FIFO data path).
    local: bool,
    /// This engine's io root (FIFO data path), when it is local.
    io_root: Option<fifo::IoRoot>,
    /// Set once the engine refused a bind mount of our io directory: [`DataPath::Auto`] means attach from then on.
    fifo_refused: Arc<AtomicBool>,
}

/// One container known to the engine that carries our labels.
#[derive(Debug, Clone)]
pub struct LabelledContainer {
    /// Container id.
    pub id: String,
    /// Container name, without the leading `/` (empty when the engine gave none).
    pub name: String,
    /// Episode id label.
    pub episode: String,
    /// Parsed owner label (`None` when malformed).
    pub owner: Option<Owner>,
    /// Expiry (unix seconds) label, 0 when malformed.
    pub expires_unix: u64,
}

/// Facts about the engine itself (`swe-env doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineFacts {
    /// The engine's version (`docker version --format {{.Server.Version}}`), empty when it gave none.
    pub server_version: String,
    /// The API version it speaks, empty when it gave none.
    pub api_version: String,
    /// Where the engine keeps images and containers (`docker info` DockerRootDir), on the engine's host.
    pub docker_root_dir: String,
    /// Whether the engine is on this host (a unix socket), so its data root can be measured here.
    pub local: bool,
}

/// Facts about an image, recorded in trajectories so a run can be reproduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Content-addressed image id (`sha256:…`).
    pub id: String,
    /// Registry digests, when the image was pulled.
    pub repo_digests: Vec<String>,
    /// The image's labels (`swe-env mine` reuses a derived image only when they match).
    pub labels: HashMap<String, String>,
    /// Total size in bytes (`docker image inspect` Size; 0 when the engine gave none).
    pub size: u64,
}

impl DockerEngine {
    /// Connects to the engine the environment names, as the Docker CLI reads it (`DOCKER_HOST` = `unix://` or
    /// `tcp://`, TLS with `DOCKER_TLS_VERIFY` + `DOCKER_CERT_PATH`; the default socket when unset), and checks that
    /// it answers. A `DOCKER_HOST` that cannot be honoured is an error, never the local socket.
    pub async fn connect(api_timeout: Duration) -> Result<Self, SandboxError> {
        Self::connect_to(&crate::EngineEndpoint::from_env()?, api_timeout).await
    }

    /// Connects to `endpoint` and checks that it answers.
    pub async fn connect_to(
        endpoint: &crate::EngineEndpoint,
        api_timeout: Duration,
    ) -> Result<Self, SandboxError> {
        let at_endpoint = |error: SandboxError| match error {
            SandboxError::EngineUnavailable { detail } => SandboxError::EngineUnavailable {
                detail: format!("{endpoint}: {detail}"),
            },
            other => other,
        };
        let docker = endpoint
            .client()
            .map_err(at_endpoint)?
            .with_timeout(api_timeout);
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| at_endpoint(SandboxError::docker("negotiate version", e)))?;
        docker
            .ping()
            .await
            .map_err(|e| at_endpoint(SandboxError::docker("ping", e)))?;
        debug!(engine = %endpoint, "connected to the Docker engine");
        Ok(Self {
            docker,
            owner: Owner::current(),
            local: matches!(endpoint, crate::EngineEndpoint::Unix { .. }),
            io_root: match endpoint {
                crate::EngineEndpoint::Unix { path } => Some(fifo::IoRoot::for_socket(path)),
                _ => None,
            },
            fifo_refused: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The data path a new sandbox with `wanted` gets on this engine ([`DataPath::Attach`] or [`DataPath::Fifo`]).
    pub fn resolve_data_path(&self, wanted: DataPath) -> Result<DataPath, SandboxError> {
        match wanted {
            DataPath::Attach => Ok(DataPath::Attach),
            DataPath::Auto if self.local && !self.fifo_refused.load(Ordering::Relaxed) => {
                Ok(DataPath::Fifo)
            }
            DataPath::Auto => Ok(DataPath::Attach),
            DataPath::Fifo if self.local => Ok(DataPath::Fifo),
            DataPath::Fifo => Err(SandboxError::Docker {
                op: "create container",
                detail: "data path `fifo` needs a local engine (unix socket) that sees this host's files; \
                         use data path `auto` or `attach` with a remote engine"
                    .into(),
            }),
        }
    }

    /// Remembers that this engine cannot bind-mount our directories (logged once).
    fn refuse_fifo(&self, detail: &str) {
        if !self.fifo_refused.swap(true, Ordering::Relaxed) {
            warn!(detail, "the Docker engine cannot bind-mount this host's directories; the shell data path falls back to attach (through dockerd) for this engine");
        }
    }

    /// This engine's io root (the FIFO data path's host directories); `None` for a remote engine.
    pub fn io_root(&self) -> Option<&fifo::IoRoot> {
        self.io_root.as_ref()
    }

    /// The identity stamped on containers this engine handle creates.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The engine's version and data root (`docker version` / `docker info`), for `swe-env doctor`.
    pub async fn engine_facts(&self) -> Result<EngineFacts, SandboxError> {
        let version = self
            .docker
            .version()
            .await
            .map_err(|e| SandboxError::docker("version", e))?;
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| SandboxError::docker("info", e))?;
        Ok(EngineFacts {
            server_version: version.version.unwrap_or_default(),
            api_version: version.api_version.unwrap_or_default(),
            docker_root_dir: info.docker_root_dir.unwrap_or_default(),
            local: self.local,
        })
    }

    /// Inspects an image; `Ok(None)` when it is not present locally.
    pub async fn image_info(&self, image: &str) -> Result<Option<ImageInfo>, SandboxError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(ImageInfo {
                id: inspect.id.unwrap_or_default(),
                repo_digests: inspect.repo_digests.unwrap_or_default(),
                labels: inspect
                    .config
                    .and_then(|config| config.labels)
                    .unwrap_or_default(),
                size: inspect.size.map_or(0, |size| size.max(0) as u64),
            })),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(SandboxError::docker("inspect image", e)),
        }
    }

    /// Removes the image `reference` (`docker rmi`, not forced: an image a container still uses stays). `Ok(false)`
    /// when no such image exists.
    pub async fn remove_image(&self, reference: &str) -> Result<bool, SandboxError> {
        match self
            .docker
            .remove_image(
                reference,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(SandboxError::docker("remove image", e)),
        }
    }

    /// Pulls `image` from its registry, reporting each status line (layer progress) to `on_status`.
    pub async fn pull_image(
        &self,
        image: &str,
        mut on_status: impl FnMut(&str) + Send,
    ) -> Result<(), SandboxError> {
        let (from_image, tag) = split_image_tag(image);
        let options = CreateImageOptions {
            from_image: Some(from_image.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut stream = self.docker.create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| match e {
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    message,
                } => SandboxError::ImageNotFound {
                    image: format!("{image} ({message})"),
                },
                other => SandboxError::docker("pull image", other),
            })?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(SandboxError::Docker {
                    op: "pull image",
                    detail: format!("{image}: {error}"),
                });
            }
            if let Some(status) = info.status {
                let line = match info.id {
                    Some(id) => format!("{id}: {status}"),
                    None => status,
                };
                on_status(&line);
            }
        }
        Ok(())
    }

    /// Creates and starts a container for `episode_id` from `image`, and opens its shell.
    pub async fn create_sandbox(
        &self,
        image: &str,
        episode_id: &str,
        config: SandboxConfig,
    ) -> Result<DockerSandbox, SandboxError> {
        let started = Instant::now();
        // A random suffix: two runs may reuse an episode id (same run id in two output directories, a rerun while
        // an orphan still exists); the `swe-env.episode` label keeps the id itself.
        let name = format!("swe-env-{episode_id}-{:04x}", rand::random::<u16>());
        let wanted = config.data_path;
        let mut io_dir = match self.resolve_data_path(wanted)? {
            DataPath::Fifo => match self
                .io_root
                .as_ref()
                .map(|root| ContainerDir::create(root, &name))
            {
                Some(Ok(dir)) => Some(dir),
                None => None,
                Some(Err(error)) if wanted == DataPath::Auto => {
                    warn!(container = %name, %error, "no io directory for the FIFO data path; using attach");
                    None
                }
                Some(Err(error)) => {
                    return Err(SandboxError::Docker {
                        op: "create container",
                        detail: error.to_string(),
                    })
                }
            },
            _ => None,
        };
        // The directory goes when creation fails; once the sandbox exists, with the container.
        let mut cleanup = DirGuard(
            self.io_root
                .clone()
                .zip(io_dir.as_ref().map(|d| d.container_name().to_owned())),
        );
        let host_config = HostConfig {
            network_mode: Some(config.network_mode.clone()),
            memory: Some(config.memory_bytes),
            memory_swap: Some(config.memory_bytes),
            nano_cpus: Some(config.nano_cpus),
            pids_limit: Some(config.pids_limit),
            init: Some(true),
            cap_drop: Some(vec!["ALL".to_owned()]),
            cap_add: Some(KEPT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect()),
            security_opt: Some(vec!["no-new-privileges".to_owned()]),
            mounts: io_dir.as_ref().map(|dir| vec![io_mount(dir)]),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["sleep".to_owned()]),
            cmd: Some(vec!["infinity".to_owned()]),
            labels: Some(container_labels(
                episode_id,
                &self.owner,
                config.container_ttl,
            )),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let mut created = self
            .docker
            .create_container(Some(options.clone()), body.clone())
            .await;
        let refusal = match (&io_dir, &created) {
            (Some(_), Err(bollard::errors::Error::DockerResponseServerError { message, .. }))
                if wanted == DataPath::Auto && is_bind_source_refusal(message) =>
            {
                Some(message.clone())
            }
            _ => None,
        };
        if let Some(message) = refusal {
            self.refuse_fifo(&message);
            io_dir = None;
            cleanup.remove_now();
            if let Some(host_config) = body.host_config.as_mut() {
                host_config.mounts = None;
            }
            created = self.docker.create_container(Some(options), body).await;
        }
        let created = match created {
            Ok(created) => created,
            Err(e) => return Err(create_container_error(image, e)),
        };
        cleanup.0 = None;
        let sandbox = DockerSandbox {
            inner: Arc::new(Inner {
                docker: self.docker.clone(),
                container_id: created.id,
                io_dir,
                image: image.to_owned(),
                config,
                session: tokio::sync::Mutex::new(None),
                cwd: std::sync::Mutex::new(String::new()),
                removed: AtomicBool::new(false),
                sealed: AtomicBool::new(false),
                interrupt: tokio::sync::Notify::new(),
            }),
        };
        // From here on, dropping `sandbox` on an error path removes the container.
        self.docker
            .start_container(&sandbox.inner.container_id, None::<StartContainerOptions>)
            .await
            .map_err(|e| SandboxError::docker("start container", e))?;
        let session = sandbox.inner.start_session().await?;
        *sandbox.inner.session.lock().await = Some(session);
        info!(episode_id, container = %sandbox.id(), image, data_path = sandbox.data_path().as_str(), ready_ms = started.elapsed().as_millis() as u64, "sandbox ready");
        Ok(sandbox)
    }

    /// Containers carrying our labels (any owner), running or not.
    pub async fn labelled_containers(&self) -> Result<Vec<LabelledContainer>, SandboxError> {
        let filters = HashMap::from([("label".to_owned(), vec![LABEL_OWNER.to_owned()])]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        let list = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| SandboxError::docker("list containers", e))?;
        Ok(list
            .into_iter()
            .filter_map(|summary| {
                let labels = summary.labels.unwrap_or_default();
                let name = summary
                    .names
                    .as_ref()
                    .and_then(|names| names.first())
                    .map(|name| name.trim_start_matches('/').to_owned())
                    .unwrap_or_default();
                Some(LabelledContainer {
                    id: summary.id?,
                    name,
                    episode: labels.get(LABEL_EPISODE).cloned().unwrap_or_default(),
                    owner: labels.get(LABEL_OWNER).and_then(|l| Owner::from_label(l)),
                    expires_unix: labels
                        .get(LABEL_EXPIRES)
                        .and_then(|e| e.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect())
    }

    /// Removes io directories (FIFO data path) of this engine whose container is not in `existing` (the labelled
    /// containers listed before the sweep) and that were idle for `min_age` (left behind when a process died
    /// between removing a container and its directory); returns how many. Nothing on a remote engine: its
    /// containers' directories, if any, are not on this host. Other engines' directories are in their own io roots.
    pub fn sweep_io_dirs(&self, existing: &[LabelledContainer], min_age: Duration) -> usize {
        let Some(root) = self.io_root.as_ref().filter(|_| self.local) else {
            return 0;
        };
        let live: std::collections::HashSet<&str> =
            existing.iter().map(|c| c.name.as_str()).collect();
        let mut removed = 0;
        for name in fifo::idle_dir_names(root, min_age) {
            if !live.contains(name.as_str()) {
                fifo::remove_container_dir(root, &name);
                info!(container = %name, "removed the io directory of a container that no longer exists");
                removed += 1;
            }
        }
        removed
    }

    /// Force-removes a container by id (and its anonymous volumes), and its io directory if it has one. Missing
    /// containers are not an error.
    pub async fn remove_container(&self, id: &str) -> Result<(), SandboxError> {
        // The io directory is named after the container: learn the name first (only if there may be one).
        let root = self
            .io_root
            .as_ref()
            .filter(|root| self.local && root.exists());
        let name = if root.is_some() {
            self.docker
                .inspect_container(id, None)
                .await
                .ok()
                .and_then(|inspect| inspect.name)
        } else {
            None
        };
        remove_container(&self.docker, id).await?;
        if let (Some(root), Some(name)) = (root, name) {
            fifo::remove_container_dir(root, &name);
        }
        Ok(())
    }
}

/// The read-only bind mount of a container's io directory.
fn io_mount(dir: &ContainerDir) -> Mount {
    Mount {
        target: Some(fifo::MOUNT_POINT.to_owned()),
        source: Some(dir.path().display().to_string()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }
}

/// Whether a create error says the engine cannot see the bind mount's source (a dockerd in another mount
/// namespace or VM).
fn is_bind_source_refusal(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    message.contains("bind source path does not exist")
        || (message.contains("invalid mount config") && message.contains("bind"))
}

/// Removes an io directory on drop unless disarmed (creation failed before a sandbox owned it).
struct DirGuard(Option<(fifo::IoRoot, String)>);

impl DirGuard {
    fn remove_now(&mut self) {
        if let Some((root, name)) = self.0.take() {
            fifo::remove_container_dir(&root, &name);
        }
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        self.remove_now();
    }
}

/// Splits `name[:tag]` (a registry host may carry a port: `host:5000/name:tag`), defaulting the tag to `latest`.
fn split_image_tag(image: &str) -> (&str, &str) {
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].rfind(':') {
        Some(colon) => (
            &image[..last_slash + colon],
            &image[last_slash + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

/// At most this many container removals run at once in this process: under mass close, dockerd fails far more
/// removals ("directory not empty", "did not receive an exit event") when hundreds run together.
pub const MAX_CONCURRENT_REMOVALS: usize = 32;
/// How long one removal may keep retrying transient engine errors before it is reported failed.
pub const REMOVAL_DEADLINE: Duration = Duration::from_secs(120);

fn removal_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(MAX_CONCURRENT_REMOVALS))
}

/// What a failed remove call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemovalRetry {
    /// 404: the container does not exist (any more): removal confirmed.
    Gone,
    /// 409 "removal … already in progress": someone else is removing it; NOT a confirmation — poll until the
    /// engine says 404, and remove again if that removal failed.
    InProgress,
    /// A transient engine failure seen under load; retry with backoff.
    Transient,
    /// Anything else: report it.
    Fatal,
}

/// Classifies the error of a force-remove call.
pub fn classify_removal_error(error: &bollard::errors::Error) -> RemovalRetry {
    use bollard::errors::Error as E;
    match error {
        E::DockerResponseServerError {
            status_code: 404, ..
        } => RemovalRetry::Gone,
        E::DockerResponseServerError {
            status_code,
            message,
        } => classify_removal_message(*status_code, message),
        E::RequestTimeoutError => RemovalRetry::Transient,
        // The connection broke mid-call (the engine is overloaded or restarting): the next call says more.
        E::IOError { .. } | E::HyperResponseError { .. } | E::HyperLegacyError { .. } => {
            RemovalRetry::Transient
        }
        _ => RemovalRetry::Fatal,
    }
}

/// Classifies a remove error answered by the engine with `status_code` and `message`.
pub fn classify_removal_message(status_code: u16, message: &str) -> RemovalRetry {
    let message = message.to_ascii_lowercase();
    if status_code == 404 || message.contains("no such container") {
        return RemovalRetry::Gone;
    }
    if message.contains("already in progress") {
        return RemovalRetry::InProgress;
    }
    const TRANSIENT: &[&str] = &[
        "unable to remove filesystem",
        "directory not empty",
        "device or resource busy",
        "could not kill running container",
        "did not receive an exit event",
        "request timed out",
        "timeout",
        "context deadline exceeded",
    ];
    if status_code == 409 || TRANSIENT.iter().any(|t| message.contains(t)) {
        return RemovalRetry::Transient;
    }
    RemovalRetry::Fatal
}

/// Force-removes a container (and its anonymous volumes) and returns only once the engine confirms it is gone
/// (the remove call succeeded, or the container is 404). Transient engine errors are retried with backoff until
/// [`REMOVAL_DEADLINE`]; at most [`MAX_CONCURRENT_REMOVALS`] removals run at once.
async fn remove_container(docker: &Docker, id: &str) -> Result<(), SandboxError> {
    let _permit = removal_permits()
        .acquire()
        .await
        .map_err(|_| SandboxError::Docker {
            op: "remove container",
            detail: "the removal limiter is closed".into(),
        })?;
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    let deadline = Instant::now() + REMOVAL_DEADLINE;
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let error = match docker.remove_container(id, Some(options.clone())).await {
            Ok(()) => {
                if attempt > 1 {
                    info!(container = %id, attempt, "container removed after retries");
                }
                return Ok(());
            }
            Err(error) => error,
        };
        match classify_removal_error(&error) {
            RemovalRetry::Gone => return Ok(()),
            RemovalRetry::Fatal => return Err(SandboxError::docker("remove container", error)),
            RemovalRetry::InProgress => {
                debug!(container = %id, "removal already in progress elsewhere; waiting for the engine to confirm");
                if wait_until_gone(docker, id, deadline).await {
                    return Ok(());
                }
            }
            RemovalRetry::Transient => {
                debug!(container = %id, attempt, %error, "transient removal failure; retrying");
            }
        }
        if Instant::now() + backoff >= deadline {
            warn!(container = %id, attempt, %error, "container removal still failing; giving up for now");
            return Err(SandboxError::docker("remove container", error));
        }
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 + 1));
        tokio::time::sleep(backoff + jitter / 2).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Polls until the engine answers 404 for `id` (true), or another removal attempt is due (false): the
/// concurrent removal failed (the container is `dead`) or is taking long.
async fn wait_until_gone(docker: &Docker, id: &str, deadline: Instant) -> bool {
    let until = (Instant::now() + Duration::from_secs(10)).min(deadline);
    loop {
        match docker.inspect_container(id, None).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => return true,
            Ok(inspect) => {
                let state = inspect.state.as_ref();
                let removing = state.and_then(|s| s.status)
                    == Some(bollard::models::ContainerStateStatusEnum::REMOVING);
                if !removing && state.and_then(|s| s.dead) == Some(true) {
                    // The other removal gave up and left a dead container: remove it again now.
                    return false;
                }
            }
            Err(_) => {}
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod removal_tests {
    use super::*;

    #[test]
    fn removal_errors_seen_under_mass_close_are_retried_and_in_progress_is_not_confirmation() {
        use RemovalRetry::*;
        let cases = [
            (404, "No such container: abc", Gone),
            (
                409,
                "removal of container abc is already in progress",
                InProgress,
            ),
            (
                500,
                "unable to remove filesystem for abc: unlinkat /var/lib/docker/containers/abc: directory not empty",
                Transient,
            ),
            (
                500,
                "could not kill running container abc, cannot remove - tried to kill container, but did not receive an exit event",
                Transient,
            ),
            (500, "request timed out", Transient),
            (
                409,
                "You cannot remove a running container abc. Stop the container before attempting removal",
                Transient,
            ),
            (500, "invalid container name or id", Fatal),
            (400, "bad parameter", Fatal),
        ];
        for (status, message, expected) in cases {
            assert_eq!(
                classify_removal_message(status, message),
                expected,
                "{status} {message}"
            );
            let error = bollard::errors::Error::DockerResponseServerError {
                status_code: status,
                message: message.to_owned(),
            };
            assert_eq!(
                classify_removal_error(&error),
                expected,
                "{status} {message}"
            );
        }
        assert_eq!(
            classify_removal_error(&bollard::errors::Error::RequestTimeoutError),
            Transient
        );
    }
}

type OutputStream = Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>;

/// The persistent `bash`: its stdin, its merged output, and its pid inside the container.
struct Session {
    input: Pin<Box<dyn AsyncWrite + Send>>,
    output: ShellOutput,
    shell_pid: u32,
}

/// Where the shell's output comes from: the attach stream (through dockerd), or the read end of its stdout FIFO.
enum ShellOutput {
    Attach(OutputStream),
    Fifo {
        pipe: tokio::net::unix::pipe::Receiver,
        /// Read-write descriptors of both FIFOs, held until the start-up sentinel arrived (so reads see no EOF
        /// before bash opened its stdout); dropped then, so that a dead shell reads as EOF and writes fail.
        keepers: Vec<std::fs::File>,
        buf: bytes::BytesMut,
    },
}

impl ShellOutput {
    /// The next bytes the shell printed; `None` at the end of its output. Cancel-safe.
    async fn next_chunk(&mut self) -> Option<std::io::Result<bytes::Bytes>> {
        match self {
            Self::Attach(stream) => loop {
                return match stream.next().await? {
                    Ok(LogOutput::StdOut { message })
                    | Ok(LogOutput::StdErr { message })
                    | Ok(LogOutput::Console { message }) => Some(Ok(message)),
                    Ok(LogOutput::StdIn { .. }) => continue,
                    Err(error) => Some(Err(std::io::Error::other(error))),
                };
            },
            Self::Fifo { pipe, buf, .. } => {
                buf.reserve(64 * 1024);
                match pipe.read_buf(buf).await {
                    Ok(0) => None,
                    Ok(_) => Some(Ok(buf.split().freeze())),
                    Err(error) => Some(Err(error)),
                }
            }
        }
    }
}

/// How reading towards a command's START marker ended.
enum StartEnd {
    /// START seen; the bytes that followed it in the same read.
    Started(Vec<u8>),
    Deadline,
    Eof,
}

/// Writes a frame to the shell's stdin, never waiting longer than `stall` for room in the pipe (the deadline is
/// pushed back whenever bytes go through, so a large script that the shell reads slowly still goes through whole)
/// nor past `deadline`. A shell that stops reading (stopped by `kill -STOP`, or its stdin filled by a background
/// job) is a `TimedOut` error: the caller treats it like a dead shell and replaces it.
async fn write_script(
    session: &mut Session,
    script: &str,
    stall: Duration,
    deadline: TokioInstant,
) -> std::io::Result<()> {
    let mut rest = script.as_bytes();
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the shell stopped reading its stdin",
        )
    };
    while !rest.is_empty() {
        let until = deadline.min(TokioInstant::now() + stall);
        match tokio::time::timeout_at(until, session.input.write(rest)).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(error)) => return Err(error),
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => rest = &rest[n..],
        }
    }
    let until = deadline.min(TokioInstant::now() + stall);
    tokio::time::timeout_at(until, session.input.flush())
        .await
        .map_err(|_| timed_out())?
}

/// How reading towards a sentinel ended.
enum ReadEnd {
    Done(Vec<u8>),
    Deadline,
    Eof,
}

/// A live container with its persistent shell. Cloning shares the same container; it is removed by
/// [`DockerSandbox::remove`] or, as a safety net, when the last clone is dropped inside a tokio runtime.
#[derive(Clone)]
pub struct DockerSandbox {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    container_id: String,
    /// The host directory of the FIFO data path; `None` on the attach path.
    io_dir: Option<ContainerDir>,
    image: String,
    config: SandboxConfig,
    session: tokio::sync::Mutex<Option<Session>>,
    cwd: std::sync::Mutex<String>,
    removed: AtomicBool,
    /// Set by [`DockerSandbox::seal_for_grading`]: every agent-facing operation (the shell and the tools'
    /// file access) is refused from then on; only the grader's own execs run.
    sealed: AtomicBool,
    /// Wakes the command running in the shell to interrupt it ([`DockerSandbox::interrupt_command`]).
    interrupt: tokio::sync::Notify,
}

/// The script behind [`DockerSandbox::write_bytes`] (`$1` = byte count, `$2` = path). `head -c N` reads exactly N
/// bytes, so completion does not depend on stdin being half-closed; the length check catches a stdin cut short;
/// the temporary file is removed on every failure (and on SIGTERM/SIGHUP/SIGINT/SIGPIPE).
const ATOMIC_WRITE_SCRIPT: &str = r#"target=$2
if [ -L "$target" ]; then target=$(readlink -f -- "$target") || exit 1; fi
if [ -d "$target" ]; then echo "$target is a directory" >&2; exit 1; fi
tmp="${target%/*}/.${target##*/}.swe-env-write.$$"
trap 'rm -f -- "$tmp"' EXIT
trap 'exit 1' HUP INT TERM PIPE
head -c "$1" > "$tmp" || exit 1
n=$(wc -c < "$tmp") || exit 1
if [ "$n" -ne "$1" ]; then echo "only $n of $1 bytes arrived; the file was left unchanged" >&2; exit 1; fi
if [ -e "$target" ]; then
  chmod "$(stat -c %a -- "$target")" "$tmp" || exit 1
  chown "$(stat -c %u:%g -- "$target")" "$tmp" 2>/dev/null || true
else
  chmod 0644 "$tmp" || exit 1
fi
mv -f -- "$tmp" "$target" || exit 1
trap - EXIT
"#;

/// Result of a one-shot exec (not in the persistent shell).
#[derive(Debug, Clone, Default)]
pub struct ExecOutput {
    /// Standard output (capped).
    pub stdout: Vec<u8>,
    /// Standard error (capped).
    pub stderr: Vec<u8>,
    /// Stdout was longer than the cap and was cut.
    pub stdout_truncated: bool,
    /// Exit status; `None` if it could not be read (timeout).
    pub exit_code: Option<i64>,
    /// The exec did not finish within its timeout.
    pub timed_out: bool,
}

impl DockerSandbox {
    /// Container id.
    pub fn id(&self) -> &str {
        &self.inner.container_id
    }

    /// The image the container was created from.
    pub fn image(&self) -> &str {
        &self.inner.image
    }

    /// The configuration it was created with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The data path its shell uses: [`DataPath::Fifo`] or [`DataPath::Attach`] (never `Auto`).
    pub fn data_path(&self) -> DataPath {
        match self.inner.io_dir {
            Some(_) => DataPath::Fifo,
            None => DataPath::Attach,
        }
    }

    /// The host directory bind-mounted read-only at [`fifo::MOUNT_POINT`] (FIFO data path only).
    pub fn io_dir(&self) -> Option<&std::path::Path> {
        self.inner.io_dir.as_ref().map(|dir| dir.path())
    }

    /// Ends the agent's tenure of this container before test material is copied in (in-place grading): kills
    /// every process in it by restarting the container (the filesystem is kept; background jobs, daemons and
    /// anything the agent left running are gone) and refuses every later agent-facing operation — the shell
    /// ([`Self::run_command`]) and the tools' file access ([`Sandbox`]) answer
    /// [`SandboxError::Sealed`]. One-shot [`Self::exec`] / [`Self::write_bytes`], the grader's own tools, keep
    /// working. Irreversible.
    pub async fn seal_for_grading(&self) -> Result<(), SandboxError> {
        self.inner.sealed.store(true, Ordering::SeqCst);
        let mut guard = self.inner.session.lock().await;
        *guard = None;
        self.inner.restart_container().await
    }

    /// Whether [`Self::seal_for_grading`] ran.
    pub fn is_sealed(&self) -> bool {
        self.inner.sealed.load(Ordering::SeqCst)
    }

    fn ensure_unsealed(&self) -> Result<(), SandboxError> {
        if self.is_sealed() {
            return Err(SandboxError::Sealed {
                container: self.inner.container_id.clone(),
            });
        }
        Ok(())
    }

    /// Runs a command in the persistent shell. See [`Sandbox::run`].
    pub async fn run_command(
        &self,
        command: &str,
        timeout: Duration,
    ) -> Result<CommandOutput, SandboxError> {
        self.ensure_unsealed()?;
        // Made before the command starts, so an [`DockerSandbox::interrupt_command`] from now on reaches it.
        let interrupted = self.inner.interrupt.notified();
        self.inner
            .run_in_shell(
                command,
                timeout,
                self.inner.config.max_output_bytes,
                interrupted,
            )
            .await
    }

    /// Interrupts the command running in the shell now, if one is (no effect otherwise): it is stopped as its
    /// timeout would stop it (the same escalation: SIGINT to the shell and its children, the sentinel rewritten,
    /// then SIGKILL to the children) and the shell stays for the next command. Its output then reads as timed out,
    /// with no exit code. `swe-env shell` calls this on Ctrl-C.
    pub fn interrupt_command(&self) {
        self.inner.interrupt.notify_waiters();
    }

    /// Runs `argv` as a separate process (not in the shell), optionally feeding `stdin`, with a timeout.
    pub async fn exec(
        &self,
        argv: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<ExecOutput, SandboxError> {
        self.inner.exec(argv, stdin, timeout, MAX_FILE_BYTES).await
    }

    /// Writes exactly `bytes` to `path` (absolute), atomically: the bytes go to a temporary file in the same
    /// directory, which replaces `path` by a rename only once all of them arrived, so an interrupted or failed
    /// write leaves the old file (or no file) and never a partial one. An existing file keeps its mode (and owner
    /// where permitted), a new one gets 0644; a symlink is written through to the file it names. One exec.
    pub async fn write_bytes(&self, path: &str, bytes: &[u8]) -> Result<(), SandboxError> {
        let len = bytes.len().to_string();
        let argv = ["sh", "-c", ATOMIC_WRITE_SCRIPT, "sh", &len, path];
        let result = self
            .exec(&argv, Some(bytes), Duration::from_secs(60))
            .await?;
        if result.exit_code != Some(0) {
            let mut detail = String::from_utf8_lossy(&result.stderr).trim().to_owned();
            if result.timed_out {
                detail = format!("timed out after 60 s; the file was left unchanged. {detail}");
            }
            return Err(SandboxError::File {
                op: "write",
                path: path.to_owned(),
                detail,
            });
        }
        Ok(())
    }

    /// Kills every process in the container by restarting it (the filesystem is kept), then opens a new shell.
    /// The last resort when even a second exec cannot start (e.g. the pids limit is exhausted).
    pub async fn reset_processes(&self) -> Result<(), SandboxError> {
        self.ensure_unsealed()?;
        let mut guard = self.inner.session.lock().await;
        *guard = None;
        self.inner.restart_container().await?;
        *guard = Some(self.inner.start_session().await?);
        Ok(())
    }

    /// Classifies a failure of the agent's tools in this container: [`SandboxError::ContainerGone`] when the engine
    /// no longer knows the container or is removing it behind swe-env's back (`docker rm -f`); else the error as it
    /// was (an error that already says what happened — sealed, gone, engine unreachable — is not even checked).
    pub async fn classify_failure(&self, error: SandboxError) -> SandboxError {
        if matches!(
            error,
            SandboxError::Sealed { .. }
                | SandboxError::ContainerGone { .. }
                | SandboxError::EngineUnavailable { .. }
        ) {
            return error;
        }
        let detail = error.to_string();
        let id = &self.inner.container_id;
        match self.inner.docker.inspect_container(id, None).await {
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => SandboxError::ContainerGone {
                container: id.clone(),
                detail: "no such container".into(),
            },
            // Being removed (a `docker rm -f` that landed during a command) while swe-env never asked for it.
            Ok(info)
                if !self.inner.removed.load(Ordering::SeqCst)
                    && (detail.contains("marked for removal")
                        || matches!(
                            info.state.as_ref().and_then(|state| state.status),
                            Some(
                                bollard::models::ContainerStateStatusEnum::REMOVING
                                    | bollard::models::ContainerStateStatusEnum::DEAD
                            )
                        )) =>
            {
                SandboxError::ContainerGone {
                    container: id.clone(),
                    detail,
                }
            }
            _ => error,
        }
    }

    /// Saves the container's filesystem as the image `reference` (`repo:tag`; `docker commit`) and returns the new
    /// image's id. The image carries `labels`; the episode, owner and expiry labels of this container and every
    /// other `swe-env.*` label of the source image that `labels` does not set are blanked (Docker cannot remove an
    /// inherited label; a container made from the image gets its own at creation). The container keeps running. Used to make
    /// derived task images (`swe-env mine`): one small layer over the source image.
    pub async fn commit_image(
        &self,
        reference: &str,
        labels: HashMap<String, String>,
    ) -> Result<String, SandboxError> {
        let (repo, tag) = split_image_tag(reference);
        let mut all: HashMap<String, String> = [LABEL_EPISODE, LABEL_OWNER, LABEL_EXPIRES]
            .iter()
            .map(|key| ((*key).to_owned(), String::new()))
            .collect();
        all.extend(labels);
        let options = bollard::query_parameters::CommitContainerOptions {
            container: Some(self.inner.container_id.clone()),
            repo: Some(repo.to_owned()),
            tag: Some(tag.to_owned()),
            pause: true,
            ..Default::default()
        };
        // The container runs `sleep infinity` (every sandbox does); the image keeps its source image's own
        // entrypoint and command, so `docker run IMAGE CMD` behaves as on the source image.
        let source = self
            .inner
            .docker
            .inspect_image(&self.inner.image)
            .await
            .map_err(|e| SandboxError::docker("inspect image", e))?;
        let source_config = source.config.unwrap_or_default();
        // Docker merges the source image's labels into the new image's; a derived image must not carry the
        // source's `swe-env.*` facts (e.g. a base commit it is no longer at): blank every one the caller does not set.
        for key in source_config.labels.iter().flat_map(|labels| labels.keys()) {
            if key.starts_with("swe-env.") && !all.contains_key(key) {
                all.insert(key.clone(), String::new());
            }
        }
        let config = bollard::models::ContainerConfig {
            labels: Some(all),
            entrypoint: Some(source_config.entrypoint.unwrap_or_default()),
            cmd: Some(
                source_config
                    .cmd
                    .filter(|cmd| !cmd.is_empty())
                    .unwrap_or_else(|| vec!["bash".to_owned()]),
            ),
            ..Default::default()
        };
        let response = self
            .inner
            .docker
            .commit_container(options, config)
            .await
            .map_err(|e| SandboxError::docker("commit container", e))?;
        Ok(response.id)
    }

    /// Removes the container. Idempotent.
    pub async fn remove(&self) -> Result<(), SandboxError> {
        if self.inner.removed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        *self.inner.session.lock().await = None;
        let result = remove_container(&self.inner.docker, &self.inner.container_id).await;
        if result.is_ok() {
            if let Some(dir) = &self.inner.io_dir {
                dir.remove();
            }
        }
        if result.is_err() {
            // Not confirmed gone: the drop safety net (and the server's reconcile, or `swe-env gc`) try again.
            self.inner.removed.store(false, Ordering::SeqCst);
        }
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.removed.load(Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            warn!(container = %self.container_id, "sandbox dropped outside a runtime; `swe-env gc` will remove it");
            return;
        };
        let docker = self.docker.clone();
        let id = self.container_id.clone();
        let io_dir = self.io_dir.take();
        runtime.spawn(async move {
            match remove_container(&docker, &id).await {
                Ok(()) => {
                    if let Some(dir) = io_dir {
                        dir.remove();
                    }
                }
                Err(error) => {
                    warn!(container = %id, %error, "removing dropped sandbox failed; `swe-env gc` will remove it")
                }
            }
        });
    }
}

impl Inner {
    /// Starts a new shell (a new FIFO pair on the FIFO path) and waits for its start-up sentinel.
    async fn start_session(&self) -> Result<Session, SandboxError> {
        let mut env: Vec<String> = SHELL_ENV.iter().map(|s| (*s).to_owned()).collect();
        env.extend(self.config.env.iter().cloned());
        match &self.io_dir {
            None => {
                let options = CreateExecOptions::<String> {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    // The interactive shell's own stderr (job-control warnings at start-up, prompts) goes nowhere
                    // from its first byte: the engine copies stdout and stderr independently, so anything written
                    // there could arrive after the start-up sentinel and leak into the first command's output.
                    cmd: Some(vec![
                        "bash".into(),
                        "-c".into(),
                        "exec bash --noprofile --norc --noediting -i 2>/dev/null".into(),
                    ]),
                    env: Some(env),
                    ..Default::default()
                };
                let (_, output, input) = self.attach_exec(options).await?;
                self.finish_start(input, ShellOutput::Attach(output), None)
                    .await
            }
            Some(dir) => {
                let pair = dir
                    .new_pair()
                    .map_err(|e| self.shell_error(e.to_string()))?;
                let (in_name, out_name) = (pair.in_name.clone(), pair.out_name.clone());
                let started = self.start_fifo_shell(pair, env).await;
                // bash has opened both ends (or never will): the names are no longer needed by anyone.
                dir.unlink(&in_name);
                dir.unlink(&out_name);
                started
            }
        }
    }

    /// Starts `bash` on a FIFO pair with one detached exec (no stream is attached), then waits for its sentinel.
    async fn start_fifo_shell(
        &self,
        pair: fifo::FifoPair,
        env: Vec<String>,
    ) -> Result<Session, SandboxError> {
        use tokio::net::unix::pipe;
        // The paths go in the environment, not on the command line (`/proc/<pid>/cmdline` is world-readable on the
        // host, `environ` is not), and are unset before the interactive shell starts so it does not inherit them.
        let script = "i=$SWE_ENV_IN o=$SWE_ENV_OUT; unset SWE_ENV_IN SWE_ENV_OUT; \
                      exec bash --noprofile --norc --noediting -i 2>/dev/null <\"$i\" >\"$o\""
            .to_owned();
        let mut env = env;
        env.push(format!("SWE_ENV_IN={}", pair.in_path));
        env.push(format!("SWE_ENV_OUT={}", pair.out_path));
        let input = pipe::Sender::from_file(pair.input)
            .map_err(|e| self.shell_error(format!("stdin FIFO: {e}")))?;
        let output = pipe::Receiver::from_file(pair.output)
            .map_err(|e| self.shell_error(format!("stdout FIFO: {e}")))?;
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(false),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            tty: Some(false),
            cmd: Some(vec!["bash".into(), "-c".into(), script]),
            env: Some(env),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(&self.container_id, options)
            .await
            .map_err(|e| self.gone_or(e))?;
        let start = StartExecOptions {
            detach: true,
            tty: false,
            output_capacity: None,
        };
        match self.docker.start_exec(&exec.id, Some(start)).await {
            Ok(StartExecResults::Detached) => {}
            Ok(StartExecResults::Attached { .. }) => {
                return Err(self.shell_error("the engine attached a detached exec"))
            }
            Err(e) => return Err(self.gone_or(e)),
        }
        let output = ShellOutput::Fifo {
            pipe: output,
            keepers: pair.keepers,
            buf: bytes::BytesMut::new(),
        };
        self.finish_start(Box::pin(input), output, Some(exec.id))
            .await
    }

    /// Writes the start-up script and reads up to its sentinel (pid + cwd). `exec_id` (FIFO path) is polled while
    /// waiting: a shell that could not start never closes the kept-open FIFO.
    async fn finish_start(
        &self,
        mut input: Pin<Box<dyn AsyncWrite + Send>>,
        output: ShellOutput,
        exec_id: Option<String>,
    ) -> Result<Session, SandboxError> {
        let marker = shell::new_marker();
        let script =
            shell::startup_script(&self.config.workdir, &self.config.init_commands, &marker);
        let deadline = TokioInstant::now() + SHELL_START_TIMEOUT;
        let write = async {
            input.write_all(script.as_bytes()).await?;
            input.flush().await
        };
        match tokio::time::timeout_at(deadline, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.shell_error(format!("writing start-up: {e}"))),
            Err(_) => return Err(self.shell_error("bash did not read its start-up within 30 s")),
        }
        let mut session = Session {
            input,
            output,
            shell_pid: 0,
        };
        let mut scanner = SentinelScanner::new(marker.as_bytes(), shell::TRAILER_END);
        let mut out = CappedOutput::new(64 * 1024);
        let end = loop {
            let slice = match exec_id {
                Some(_) => deadline.min(TokioInstant::now() + Duration::from_millis(500)),
                None => deadline,
            };
            match read_until(&mut session.output, &mut scanner, &mut out, slice).await {
                ReadEnd::Deadline if slice < deadline => {
                    if let Some(id) = &exec_id {
                        if let Ok(inspect) = self.docker.inspect_exec(id).await {
                            if inspect.running == Some(false) {
                                break ReadEnd::Eof;
                            }
                        }
                    }
                }
                other => break other,
            }
        };
        match end {
            ReadEnd::Done(trailer) => {
                let (pid, cwd) = shell::parse_trailer(&trailer).ok_or_else(|| {
                    self.shell_error(format!(
                        "bad start-up line {:?}",
                        String::from_utf8_lossy(&trailer)
                    ))
                })?;
                session.shell_pid = u32::try_from(pid).unwrap_or(0);
                self.set_cwd(&cwd);
                if let ShellOutput::Fifo { keepers, .. } = &mut session.output {
                    // bash holds both ends now: from here on its death reads as EOF and writes fail.
                    keepers.clear();
                }
                Ok(session)
            }
            ReadEnd::Deadline => Err(self.shell_error("bash did not start within 30 s")),
            ReadEnd::Eof => Err(self.shell_error(format!(
                "bash exited during start-up (is bash installed in the image?): {}",
                String::from_utf8_lossy(&out.into_bytes())
            ))),
        }
    }

    async fn run_in_shell(
        &self,
        command: &str,
        timeout: Duration,
        cap_bytes: usize,
        interrupt: tokio::sync::futures::Notified<'_>,
    ) -> Result<CommandOutput, SandboxError> {
        let started = Instant::now();
        tokio::pin!(interrupt);
        let mut guard = self.session.lock().await;
        let mut restarted = false;
        if guard.is_none() {
            *guard = Some(self.start_session().await?);
            restarted = true;
        }
        let marker = shell::new_marker();
        let script = shell::command_script(command, &marker);
        let mut scanner = SentinelScanner::new(marker.as_bytes(), shell::TRAILER_END);
        let mut out = CappedOutput::new(cap_bytes);
        let mut timed_out = false;
        let deadline = TokioInstant::now() + timeout;

        // Up to two attempts: a shell whose state makes it ignore the guard (it never prints START) has not run the
        // command; it is replaced and the command runs in the new shell.
        let mut end = ReadEnd::Eof;
        for attempt in 0..2 {
            let Some(session) = guard.as_mut() else {
                break;
            };
            if let Err(error) = write_script(session, &script, GUARD_TIMEOUT, deadline).await {
                debug!(container = %self.container_id, %error, "writing the command failed");
                end = ReadEnd::Eof;
                break;
            }
            let start_deadline = deadline.min(TokioInstant::now() + GUARD_TIMEOUT);
            match self.read_start(session, &marker, start_deadline).await {
                StartEnd::Started(first) => {
                    if let ScanEvent::Done(trailer) = scanner.feed(&first, &mut out) {
                        end = ReadEnd::Done(trailer);
                        break;
                    }
                }
                StartEnd::Eof => {
                    end = ReadEnd::Eof;
                    break;
                }
                StartEnd::Deadline if attempt == 0 && TokioInstant::now() < deadline => {
                    warn!(container = %self.container_id, "the shell ignored the command guard (its state blocks every command); replacing it");
                    let old_pid = session.shell_pid;
                    *guard = None;
                    *guard = Some(self.restart_session(old_pid).await?);
                    restarted = true;
                    continue;
                }
                StartEnd::Deadline => {
                    end = ReadEnd::Deadline;
                    timed_out = true;
                    break;
                }
            }
            let read = read_until(&mut session.output, &mut scanner, &mut out, deadline);
            // An interrupt ends the wait as the deadline does (reading is cancel-safe: the deadline cancels it too).
            let read_end = tokio::select! {
                end = read => end,
                () = &mut interrupt => ReadEnd::Deadline,
            };
            end = match read_end {
                ReadEnd::Deadline => {
                    timed_out = true;
                    self.interrupt(session, &marker, &mut scanner, &mut out)
                        .await
                }
                other => other,
            };
            break;
        }

        let exit_code = match end {
            ReadEnd::Done(trailer) => match shell::parse_trailer(&trailer) {
                Some((code, cwd)) => {
                    self.set_cwd(&cwd);
                    // An interrupted command has no status of its own: `$?` would be whatever ran last.
                    (!timed_out).then_some(code)
                }
                None => None,
            },
            ReadEnd::Deadline | ReadEnd::Eof => {
                out.push(&scanner.take_pending());
                let old_pid = guard.as_ref().map(|s| s.shell_pid).unwrap_or(0);
                *guard = None;
                warn!(container = %self.container_id, timed_out, "shell lost; restarting it");
                *guard = Some(self.restart_session(old_pid).await?);
                restarted = true;
                None
            }
        };
        let truncated = out.is_truncated();
        Ok(CommandOutput {
            output: out.into_bytes(),
            exit_code,
            timed_out,
            truncated,
            restarted,
            duration: started.elapsed(),
        })
    }

    /// Reads up to the command's START marker, dropping what comes before it: bytes a background job printed
    /// between commands, a late sentinel of an interrupted command, hooks of the agent's. None of it is this
    /// command's output.
    async fn read_start(
        &self,
        session: &mut Session,
        marker: &str,
        deadline: TokioInstant,
    ) -> StartEnd {
        let start = shell::start_marker(marker);
        let mut scanner = SentinelScanner::new(start.as_bytes(), shell::TRAILER_END);
        let mut dropped = CappedOutput::new(4096);
        // START's trailer is empty: what follows its NUL is the command's output.
        let found =
            match read_until(&mut session.output, &mut scanner, &mut dropped, deadline).await {
                ReadEnd::Done(_) => StartEnd::Started(scanner.take_rest()),
                ReadEnd::Deadline => StartEnd::Deadline,
                ReadEnd::Eof => StartEnd::Eof,
            };
        if dropped.total_bytes() > 0 {
            debug!(container = %self.container_id, bytes = dropped.total_bytes(), "dropped shell output printed between commands");
        }
        found
    }

    /// Escalates after a timeout: SIGINT the shell and its children (Ctrl-C: the shell drops the rest of the command
    /// line and reads the next), write a line that prints the sentinel in place of the dropped one, then SIGKILL the
    /// children; each step waits for the sentinel.
    async fn interrupt(
        &self,
        session: &mut Session,
        marker: &str,
        scanner: &mut SentinelScanner,
        out: &mut CappedOutput,
    ) -> ReadEnd {
        for (signal, include_shell) in [("INT", true), ("KILL", false)] {
            let script = shell::kill_descendants_script(session.shell_pid, signal, include_shell);
            let killed = self
                .exec(
                    &["bash", "-c", &script],
                    None,
                    Duration::from_secs(10),
                    64 * 1024,
                )
                .await;
            debug!(container = %self.container_id, signal, ok = killed.is_ok(), "interrupting command");
            if killed.is_err() {
                // Cannot even start a process (e.g. pids limit): the caller will restart the container.
                return ReadEnd::Deadline;
            }
            if include_shell {
                let grace = self.config.interrupt_grace.max(Duration::from_secs(1));
                let until = TokioInstant::now() + grace;
                let recovery = shell::recovery_script(marker);
                if let Err(error) = write_script(session, &recovery, grace, until).await {
                    // A stopped shell with a full stdin: only a new shell helps (its kill -9 works on a stopped one).
                    warn!(container = %self.container_id, %error, "the interrupted shell does not read; replacing it");
                    return ReadEnd::Eof;
                }
            }
            let deadline = TokioInstant::now() + self.config.interrupt_grace;
            match read_until(&mut session.output, scanner, out, deadline).await {
                ReadEnd::Deadline => continue,
                other => return other,
            }
        }
        ReadEnd::Deadline
    }

    /// Kills the old shell (if any) and starts a new one; restarts the container when the engine cannot even run a
    /// `kill` or a new shell inside it.
    async fn restart_session(&self, old_pid: u32) -> Result<Session, SandboxError> {
        if old_pid > 0 {
            let kill = format!("kill -9 {old_pid} 2>/dev/null; true");
            if self
                .exec(&["sh", "-c", &kill], None, Duration::from_secs(10), 4096)
                .await
                .is_err()
            {
                self.restart_container().await?;
            }
        }
        match self.start_session().await {
            Ok(session) => Ok(session),
            Err(error) => {
                warn!(container = %self.container_id, %error, "new shell failed; restarting the container");
                self.restart_container().await?;
                self.start_session().await
            }
        }
    }

    async fn restart_container(&self) -> Result<(), SandboxError> {
        let options = RestartContainerOptions {
            t: Some(0),
            ..Default::default()
        };
        self.docker
            .restart_container(&self.container_id, Some(options))
            .await
            .map_err(|e| self.gone_or(e))
    }

    async fn exec(
        &self,
        argv: &[&str],
        stdin: Option<&[u8]>,
        timeout: Duration,
        cap_bytes: usize,
    ) -> Result<ExecOutput, SandboxError> {
        let options = CreateExecOptions::<String> {
            attach_stdin: Some(stdin.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            cmd: Some(argv.iter().map(|a| (*a).to_owned()).collect()),
            ..Default::default()
        };
        let (exec_id, mut output, mut input) = self.attach_exec(options).await?;
        let deadline = TokioInstant::now() + timeout;
        let feed = async {
            if let Some(bytes) = stdin {
                // Commands we run read an exact byte count, so a failed half-close is harmless.
                input.write_all(bytes).await?;
                input.flush().await?;
                let _ = input.shutdown().await;
            }
            Ok::<(), std::io::Error>(())
        };
        let mut stdout = CappedOutput::new(cap_bytes);
        let mut stderr = CappedOutput::new(64 * 1024);
        let collect = async {
            while let Some(frame) = output.next().await {
                match frame {
                    Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                        stdout.push(&message)
                    }
                    Ok(LogOutput::StdErr { message }) => stderr.push(&message),
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(error) => {
                        debug!(%error, "exec stream ended with an error");
                        break;
                    }
                }
            }
        };
        let both = async {
            let (fed, ()) = tokio::join!(feed, collect);
            fed
        };
        let timed_out = match tokio::time::timeout_at(deadline, both).await {
            Ok(Ok(())) => false,
            Ok(Err(error)) => {
                return Err(SandboxError::Shell {
                    container: self.container_id.clone(),
                    detail: format!("writing stdin of {:?}: {error}", argv.first()),
                })
            }
            Err(_) => true,
        };
        let exit_code = if timed_out {
            None
        } else {
            self.exec_exit_code(&exec_id).await?
        };
        let stdout_truncated = stdout.is_truncated();
        Ok(ExecOutput {
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
            stdout_truncated,
            exit_code,
            timed_out,
        })
    }

    /// Creates an exec and attaches to its streams: (exec id, merged output, stdin).
    async fn attach_exec(
        &self,
        options: CreateExecOptions<String>,
    ) -> Result<(String, OutputStream, Pin<Box<dyn AsyncWrite + Send>>), SandboxError> {
        let exec = self
            .docker
            .create_exec(&self.container_id, options)
            .await
            .map_err(|e| self.gone_or(e))?;
        let start = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: Some(64 * 1024),
        };
        match self.docker.start_exec(&exec.id, Some(start)).await {
            Ok(StartExecResults::Attached { output, input }) => Ok((exec.id, output, input)),
            Ok(StartExecResults::Detached) => Err(self.shell_error("exec started detached")),
            Err(e) => Err(self.gone_or(e)),
        }
    }

    /// The engine may report an exec as running for a moment after its output closed; poll briefly.
    async fn exec_exit_code(&self, exec_id: &str) -> Result<Option<i64>, SandboxError> {
        for _ in 0..200 {
            let inspect = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(|e| SandboxError::docker("inspect exec", e))?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(None)
    }

    /// Records the shell's cwd. A directory name that is not UTF-8 cannot be a tool path: it is kept with U+FFFD in
    /// place of the bad bytes (relative edit/create paths then fail to resolve rather than land elsewhere).
    fn set_cwd(&self, cwd: &[u8]) {
        if let Ok(mut guard) = self.cwd.lock() {
            *guard = String::from_utf8_lossy(cwd).into_owned();
        }
    }

    fn cwd(&self) -> String {
        self.cwd.lock().map(|g| g.clone()).unwrap_or_default()
    }

    fn shell_error(&self, detail: impl Into<String>) -> SandboxError {
        SandboxError::Shell {
            container: self.container_id.clone(),
            detail: detail.into(),
        }
    }

    fn gone_or(&self, error: bollard::errors::Error) -> SandboxError {
        match error {
            bollard::errors::Error::DockerResponseServerError {
                status_code: 404 | 409,
                message,
            } => SandboxError::ContainerGone {
                container: self.container_id.clone(),
                detail: message,
            },
            other => SandboxError::docker("exec", other),
        }
    }
}

async fn read_until(
    output: &mut ShellOutput,
    scanner: &mut SentinelScanner,
    out: &mut CappedOutput,
    deadline: TokioInstant,
) -> ReadEnd {
    loop {
        let bytes = match tokio::time::timeout_at(deadline, output.next_chunk()).await {
            Err(_) => return ReadEnd::Deadline,
            Ok(None) => return ReadEnd::Eof,
            Ok(Some(Err(error))) => {
                debug!(%error, "shell stream failed");
                return ReadEnd::Eof;
            }
            Ok(Some(Ok(bytes))) => bytes,
        };
        if let ScanEvent::Done(trailer) = scanner.feed(&bytes, out) {
            return ReadEnd::Done(trailer);
        }
    }
}

#[async_trait::async_trait]
impl Sandbox for DockerSandbox {
    async fn run(&self, command: &str, timeout: Duration) -> Result<CommandOutput, SandboxError> {
        self.run_command(command, timeout).await
    }

    async fn cwd(&self) -> Result<String, SandboxError> {
        Ok(self.inner.cwd())
    }

    async fn path_kind(&self, path: &str) -> Result<PathKind, SandboxError> {
        self.ensure_unsealed()?;
        let quoted = shell::ansi_c_quote(path.as_bytes());
        let probe = format!(
            "if [ -d {quoted} ]; then echo d; elif [ -f {quoted} ]; then echo f; \
             elif [ -e {quoted} ] || [ -L {quoted} ]; then echo o; else echo m; fi"
        );
        let result = self
            .exec(&["bash", "-c", &probe], None, Duration::from_secs(30))
            .await?;
        Ok(match result.stdout.first() {
            Some(b'd') => PathKind::Directory,
            Some(b'f') => PathKind::File,
            Some(b'o') => PathKind::Other,
            _ => PathKind::Missing,
        })
    }

    async fn read_file(&self, path: &str) -> Result<Vec<u8>, SandboxError> {
        self.ensure_unsealed()?;
        let result = self
            .exec(&["cat", "--", path], None, Duration::from_secs(60))
            .await?;
        if result.exit_code != Some(0) {
            let detail = String::from_utf8_lossy(&result.stderr).trim().to_owned();
            return Err(SandboxError::File {
                op: "read",
                path: path.to_owned(),
                detail,
            });
        }
        if result.stdout_truncated {
            let detail = format!("file is larger than {MAX_FILE_BYTES} bytes");
            return Err(SandboxError::File {
                op: "read",
                path: path.to_owned(),
                detail,
            });
        }
        Ok(result.stdout)
    }

    async fn read_file_at_most(
        &self,
        path: &str,
        max_bytes: usize,
    ) -> Result<BoundedRead, SandboxError> {
        self.ensure_unsealed()?;
        // The size first (one line), then at most limit + 1 bytes: `head` stops reading there, so a huge file is
        // never streamed to the host, and the capture holds at most the limit (never more than MAX_FILE_BYTES).
        let limit = max_bytes.min(MAX_FILE_BYTES);
        let take = (limit + 1).to_string();
        let limit_text = limit.to_string();
        let script = "size=$(stat -L -c %s -- \"$1\") || exit; echo \"$size\"; \
                      [ \"$size\" -gt \"$2\" ] || exec head -c \"$3\" -- \"$1\"";
        let argv = ["sh", "-c", script, "sh", path, &limit_text, &take];
        let result = self
            .inner
            .exec(&argv, None, Duration::from_secs(60), limit + 64)
            .await?;
        let newline = result.stdout.iter().position(|byte| *byte == b'\n');
        let size = newline.and_then(|end| {
            std::str::from_utf8(&result.stdout[..end])
                .ok()?
                .parse::<u64>()
                .ok()
        });
        let (Some(end), Some(size), Some(0)) = (newline, size, result.exit_code) else {
            let detail = String::from_utf8_lossy(&result.stderr).trim().to_owned();
            return Err(SandboxError::File {
                op: "read",
                path: path.to_owned(),
                detail,
            });
        };
        let limit_u64 = limit as u64;
        if size > limit_u64 || result.stdout.len() - end - 1 > limit || result.stdout_truncated {
            return Ok(BoundedRead::TooLarge {
                size: size.max(limit_u64 + 1),
            });
        }
        let mut content = result.stdout;
        content.drain(..=end);
        Ok(BoundedRead::Whole(content))
    }

    async fn write_file(&self, path: &str, bytes: &[u8]) -> Result<(), SandboxError> {
        self.ensure_unsealed()?;
        self.write_bytes(path, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::{is_bind_source_refusal, split_image_tag};

    #[test]
    fn an_engine_that_cannot_see_the_io_directory_is_recognised() {
        // What dockerd answers when the bind source is not in its mount namespace.
        assert!(is_bind_source_refusal(
            "invalid mount config for type \"bind\": bind source path does not exist: /tmp/swe-env-io-0/x"
        ));
        assert!(!is_bind_source_refusal(
            "No such image: swe-env/base:bookworm"
        ));
        assert!(!is_bind_source_refusal(
            "Conflict. The container name \"/x\" is already in use"
        ));
    }

    #[test]
    fn image_tags_split_after_the_last_path_segment() {
        assert_eq!(
            split_image_tag("swebench/sweb.eval.x86_64.a_1776_b-1:latest"),
            ("swebench/sweb.eval.x86_64.a_1776_b-1", "latest")
        );
        assert_eq!(
            split_image_tag("127.0.0.1:5000/x/y"),
            ("127.0.0.1:5000/x/y", "latest")
        );
        assert_eq!(
            split_image_tag("127.0.0.1:5000/x/y:v2"),
            ("127.0.0.1:5000/x/y", "v2")
        );
    }
}

/// The resource limits a container really has (read back from the engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerLimits {
    /// Memory limit, bytes.
    pub memory_bytes: i64,
    /// Memory + swap limit, bytes (equal to `memory_bytes`: no swap).
    pub memory_swap_bytes: i64,
    /// CPU limit in units of 1e-9 CPUs.
    pub nano_cpus: i64,
    /// Process limit.
    pub pids_limit: i64,
}

impl DockerSandbox {
    /// Sets the limits Docker can change on a running container (memory = memory-swap, CPUs, processes) to those of
    /// `config` — one engine call, and only when they differ from the container's — and returns the limits the
    /// container has afterwards, as the engine reports them (a warm-pool container taken for an episode that asked
    /// for other limits than the pool's). The sandbox's own [`Self::config`] keeps its creation-time values. A memory
    /// or CPU limit cannot be lifted (0 wanted where the container has one): that is an error, and the caller
    /// starts a new container instead.
    pub async fn update_limits(
        &self,
        config: &SandboxConfig,
    ) -> Result<ContainerLimits, SandboxError> {
        let id = &self.inner.container_id;
        let read = || async {
            let info = self
                .inner
                .docker
                .inspect_container(id, None)
                .await
                .map_err(|e| SandboxError::docker("inspect container", e))?;
            let host = info.host_config.unwrap_or_default();
            Ok::<_, SandboxError>(ContainerLimits {
                memory_bytes: host.memory.unwrap_or(0),
                memory_swap_bytes: host.memory_swap.unwrap_or(0),
                nano_cpus: host.nano_cpus.unwrap_or(0),
                pids_limit: host.pids_limit.unwrap_or(0),
            })
        };
        let wanted = ContainerLimits {
            memory_bytes: config.memory_bytes,
            memory_swap_bytes: config.memory_bytes,
            nano_cpus: config.nano_cpus,
            pids_limit: config.pids_limit,
        };
        let created = &self.inner.config;
        if created.memory_bytes == wanted.memory_bytes
            && created.nano_cpus == wanted.nano_cpus
            && created.pids_limit == wanted.pids_limit
        {
            // Created with exactly these (memory-swap is always set to memory at creation).
            return Ok(wanted);
        }
        // The engine reads 0 as "unchanged" for memory and CPUs and refuses -1 ("Minimum memory limit allowed is
        // 6MB", "Range of CPUs is from 0.01 …"): a limit cannot be lifted from a running container. Refused here so
        // the caller starts a new container rather than run the episode under a limit it did not ask for. (A
        // process limit of 0 is applied: it lifts the limit.)
        let lifted = |created: i64, wanted: i64| created != 0 && wanted == 0;
        if lifted(created.memory_bytes, wanted.memory_bytes)
            || lifted(created.nano_cpus, wanted.nano_cpus)
        {
            return Err(SandboxError::Docker {
                op: "update container limits",
                detail: format!(
                    "the container was created with memory {} bytes and {} nano-CPUs; the engine cannot lift a \
                     memory or CPU limit of a running container (0 means \"unchanged\" to it), so a container \
                     without them must be created",
                    created.memory_bytes, created.nano_cpus
                ),
            });
        }
        let update = bollard::models::ContainerUpdateBody {
            memory: Some(wanted.memory_bytes),
            memory_swap: Some(wanted.memory_swap_bytes),
            nano_cpus: Some(wanted.nano_cpus),
            pids_limit: Some(wanted.pids_limit),
            ..Default::default()
        };
        self.inner
            .docker
            .update_container(id, update)
            .await
            .map_err(|e| SandboxError::docker("update container limits", e))?;
        let now = read().await?;
        debug!(container = %id, ?now, "container limits updated");
        Ok(now)
    }
}

/// The error of a failed container create: a 404 is the image missing (pull or build it), anything else the engine's
/// own error.
pub(crate) fn create_container_error(image: &str, error: bollard::errors::Error) -> SandboxError {
    match error {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        } => SandboxError::ImageNotFound {
            image: image.to_owned(),
        },
        e => SandboxError::docker("create container", e),
    }
}
