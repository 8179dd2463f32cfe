//! Errors of the sandbox layer. Tool-level failures (non-zero exits, timeouts) are never errors: they are data.

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
    /// The task image is not present locally.
    #[error("image {image} not found: build it (`swe-env images build`) or pull it")]
    ImageNotFound {
        /// The image reference.
        image: String,
    },
    /// The container vanished (removed behind our back, or the engine restarted).
    #[error("container {container} is gone: {detail}")]
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
    /// Any other engine error.
    #[error("docker {op} failed: {detail}")]
    Docker {
        /// The API operation.
        op: &'static str,
        /// What the engine said.
        detail: String,
    },
}

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
            E::HyperResponseError { err } => Self::EngineUnavailable {
                detail: err.to_string(),
            },
            E::HyperLegacyError { err } => Self::EngineUnavailable {
                detail: err.to_string(),
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

impl From<SandboxError> for swe_env_tools::SandboxError {
    fn from(error: SandboxError) -> Self {
        swe_env_tools::SandboxError::new(error.to_string())
    }
}
