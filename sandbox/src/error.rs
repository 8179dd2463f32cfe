//! Errors of the sandbox layer. Tool-level failures (non-zero exits, timeouts) are never errors: they are data.

/// The `DOCKER_HOST` forms swe-env supports, for error messages.
pub const SUPPORTED_FORMS: &str = "unix:///path/to/docker.sock, tcp://HOST[:PORT] (plain, DOCKER_TLS_VERIFY unset), \
     or tcp://HOST[:PORT] with DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH holding ca.pem, cert.pem and key.pem";

/// Infrastructure failures of a sandbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The Docker engine could not be reached.
    #[error("cannot reach the Docker engine ({detail}): is dockerd running? start it, or set DOCKER_HOST")]
    EngineUnavailable {
        /// What the client said.
        detail: String,
    },
    /// `DOCKER_HOST` (or a TLS variable) names something swe-env cannot use; nothing is connected instead.
    #[error(
        "{variable}={value:?} cannot be used: {reason}. Supported DOCKER_HOST forms: {forms}",
        forms = SUPPORTED_FORMS
    )]
    EngineConfig {
        /// The environment variable at fault.
        variable: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused, and what to do.
        reason: String,
    },
    /// `DOCKER_TLS_VERIFY` is set and a certificate or key is missing or unusable.
    #[error(
        "TLS material for the Docker engine, {}: {detail}. DOCKER_TLS_VERIFY is set, so DOCKER_CERT_PATH (default \
         ~/.docker) must hold ca.pem, cert.pem and key.pem in PEM form, as for the Docker CLI",
        path.display()
    )]
    EngineTls {
        /// The file (or certificate directory) at fault.
        path: std::path::PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The task image is not present locally.
    #[error("image {image} not found: build it (`swe-env images build`) or pull it")]
    ImageNotFound {
        /// The image reference.
        image: String,
    },
    /// The container vanished (removed behind our back, or the engine restarted).
    #[error("container {container} was removed outside swe-env; the episode is over ({detail})")]
    ContainerGone {
        /// Container id or name.
        container: String,
        /// What the engine said.
        detail: String,
    },
    /// The shell could not be started or restarted.
    #[error("shell in container {container} failed: {detail}")]
    Shell {
        /// Container id or name.
        container: String,
        /// What went wrong.
        detail: String,
    },
    /// A file operation failed (path named).
    #[error("{op} {path}: {detail}")]
    File {
        /// `read` or `write`.
        op: &'static str,
        /// Absolute path in the container.
        path: String,
        /// What the command printed.
        detail: String,
    },
    /// The sandbox was sealed for grading: test material may be inside, so no agent action may run there again.
    #[error(
        "container {container} was sealed for grading: the episode is over and its agent can no longer act in it \
         (start a new episode)"
    )]
    Sealed {
        /// Container id.
        container: String,
    },
    /// The unisolated host sandbox (tests) failed: a host process or file operation.
    #[error("{detail}")]
    Host {
        /// What failed, and why.
        detail: String,
    },
    /// Any other engine error.
    #[error("docker {op} failed: {detail}")]
    Docker {
        /// The API operation.
        op: &'static str,
        /// What the engine said.
        detail: String,
    },
}

#[cfg(feature = "docker")]
impl SandboxError {
    /// Classifies a bollard error from operation `op`.
    pub(crate) fn docker(op: &'static str, error: bollard::errors::Error) -> Self {
        use bollard::errors::Error as E;
        match error {
            E::DockerResponseServerError { message, .. } => Self::Docker {
                op,
                detail: message,
            },
            E::IOError { err } => Self::EngineUnavailable {
                detail: err.to_string(),
            },
            // hyper's own message is only "client error (Connect)": the cause (refused, TLS) is in the chain.
            E::HyperResponseError { err } => Self::EngineUnavailable {
                detail: with_causes(&err),
            },
            E::HyperLegacyError { err } => Self::EngineUnavailable {
                detail: with_causes(&err),
            },
            E::SocketNotFoundError(path) => Self::EngineUnavailable {
                detail: format!("no socket at {path}"),
            },
            E::RequestTimeoutError => Self::Docker {
                op,
                detail: "request timed out".into(),
            },
            other => Self::Docker {
                op,
                detail: other.to_string(),
            },
        }
    }
}

/// `error: cause: cause…`, each distinct message once.
#[cfg(feature = "docker")]
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}
