//! Errors of the service and their one mapping to gRPC statuses. Messages sent to clients name the input at fault
//! and never carry internals (engine messages, paths, stack details): those go to the server log only.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};
use tracing::error;

use crate::episode::EpisodeError;
use crate::grade::GradeError;
use crate::trajectory::TrajectoryReadError;
use swe_env_sandbox::SandboxError;

/// Metadata key of the retry hint sent with RESOURCE_EXHAUSTED (and UNAVAILABLE when the engine is down).
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// A request field is malformed.
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument {
        /// The field (dotted path in the request).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No such task.
    #[error("task {task_id} not found (see ListTasks)")]
    TaskNotFound {
        /// The id asked for.
        task_id: String,
    },
    /// No such episode.
    #[error("episode {episode_id} not found")]
    EpisodeNotFound {
        /// The id asked for.
        episode_id: String,
    },
    /// The id names another node of the fleet (a misrouted call).
    #[error("episode {episode_id} belongs to node {node}; this is node {this_node} (send its calls to {node})")]
    EpisodeOnOtherNode {
        /// The id asked for.
        episode_id: String,
        /// The node the id names.
        node: String,
        /// This server's node id.
        this_node: String,
    },
    /// The episode was live on an earlier run of this node (the process stopped; its trajectory is kept).
    #[error(
        "episode {episode_id} is not live: it ran on an earlier run of node {node}, which stopped (killed or \
         restarted), and cannot continue; its trajectory is kept (GetTrajectory); create a new episode"
    )]
    EpisodeFromEarlierRun {
        /// The episode.
        episode_id: String,
        /// This node.
        node: String,
    },
    /// The episode has ended.
    #[error("episode {episode_id} has ended ({status}); create a new episode")]
    EpisodeEnded {
        /// The episode.
        episode_id: String,
        /// How it ended.
        status: String,
    },
    /// The task image is not present on the server's engine.
    #[error("image {image} is not available on the server")]
    ImageMissing {
        /// The image reference.
        image: String,
    },
    /// An admission limit is reached.
    #[error("{what}; retry after {} ms", retry_after.as_millis())]
    Exhausted {
        /// Which limit.
        what: String,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// A retried Step already ran, but its stored reply was evicted to bound memory: it is not run again.
    #[error(
        "the Step with request_id {request_id} already ran (step {step_idx}) but its reply is no longer stored \
         (the per-episode reply cache is bounded); it was not run again: read step {step_idx} from GetTrajectory"
    )]
    ReplyEvicted {
        /// The request id.
        request_id: String,
        /// The step it ran as.
        step_idx: u32,
    },
    /// The episode's container was removed from outside swe-env (`docker rm -f`): the episode is over.
    #[error("container {container} was removed outside swe-env; the episode is over (create a new episode)")]
    SandboxGone {
        /// The container id.
        container: String,
    },
    /// The server is shutting down.
    #[error(
        "the server is shutting down and accepts no new work; retry on another server or after it restarts"
    )]
    ShuttingDown,
    /// The Docker engine cannot be reached.
    #[error("the server's container engine is unavailable; retry later")]
    EngineUnavailable,
    /// A reserved feature is not provided by this build.
    #[error("{what} is not implemented by this server")]
    Unimplemented {
        /// The feature.
        what: String,
    },
    /// The task cannot be graded (no test spec for its repo/version, bad test patch).
    #[error("task {instance_id} cannot be graded: {reason}")]
    Ungradable {
        /// The task.
        instance_id: String,
        /// Why (derived from the task row, safe to show).
        reason: String,
    },
    /// Anything else; `detail` is logged, never sent.
    #[error("internal error while {context}")]
    Internal {
        /// What the server was doing.
        context: &'static str,
        /// The cause, for the log.
        detail: String,
    },
}

impl ServiceError {
    /// An invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Classifies an episode failure while `context`.
    pub fn from_episode(context: &'static str, error: EpisodeError) -> Self {
        match error {
            EpisodeError::Sandbox(error) => Self::from_sandbox(context, error),
            EpisodeError::Ended { episode_id, status } => Self::EpisodeEnded {
                episode_id,
                status: status.to_owned(),
            },
            other => Self::Internal {
                context,
                detail: other.to_string(),
            },
        }
    }

    /// Classifies a sandbox failure while `context`.
    pub fn from_sandbox(context: &'static str, error: SandboxError) -> Self {
        match error {
            SandboxError::EngineUnavailable { .. } => Self::EngineUnavailable,
            SandboxError::ImageNotFound { image } => Self::ImageMissing { image },
            SandboxError::ContainerGone { container, .. } => Self::SandboxGone { container },
            other => Self::Internal {
                context,
                detail: other.to_string(),
            },
        }
    }

    /// Classifies a grading failure.
    pub fn from_grade(error: GradeError) -> Self {
        match error {
            GradeError::Spec {
                instance_id,
                detail,
            } => Self::Ungradable {
                instance_id,
                reason: detail,
            },
            GradeError::Sandbox(error) => Self::from_sandbox("grading", error),
        }
    }

    /// Classifies a trajectory read failure.
    pub fn from_trajectory(episode_id: &str, error: TrajectoryReadError) -> Self {
        match error {
            TrajectoryReadError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Self::EpisodeNotFound {
                    episode_id: episode_id.to_owned(),
                }
            }
            other => Self::Internal {
                context: "reading the trajectory",
                detail: other.to_string(),
            },
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::TaskNotFound { .. }
            | Self::EpisodeNotFound { .. }
            | Self::EpisodeOnOtherNode { .. } => Code::NotFound,
            Self::EpisodeEnded { .. }
            | Self::EpisodeFromEarlierRun { .. }
            | Self::ImageMissing { .. }
            | Self::Ungradable { .. }
            | Self::SandboxGone { .. }
            | Self::ReplyEvicted { .. } => Code::FailedPrecondition,
            Self::Exhausted { .. } => Code::ResourceExhausted,
            Self::ShuttingDown | Self::EngineUnavailable => Code::Unavailable,
            Self::Unimplemented { .. } => Code::Unimplemented,
            Self::Internal { .. } => Code::Internal,
        }
    }
}

/// The one place a [`ServiceError`] becomes a [`Status`].
impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Self {
        if let ServiceError::Internal { context, detail } = &error {
            error!(context, detail = %detail, "internal error answered to a client");
        }
        let mut status = Status::new(error.code(), error.to_string());
        let retry_after = match &error {
            ServiceError::Exhausted { retry_after, .. } => Some(*retry_after),
            ServiceError::EngineUnavailable => Some(Duration::from_secs(5)),
            ServiceError::ShuttingDown => Some(Duration::from_secs(1)),
            _ => None,
        };
        if let Some(retry_after) = retry_after {
            let value = MetadataValue::from(retry_after.as_millis() as u64);
            status.metadata_mut().insert(RETRY_AFTER_MS, value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_carry_codes_hints_and_no_internals() {
        let status = Status::from(ServiceError::invalid(
            "budgets.max_turns",
            "must be at least 1",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("budgets.max_turns"));

        let status = Status::from(ServiceError::Exhausted {
            what: "too many live episodes".into(),
            retry_after: Duration::from_millis(750),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status
                .metadata()
                .get(RETRY_AFTER_MS)
                .unwrap()
                .to_str()
                .unwrap(),
            "750"
        );

        let status = Status::from(ServiceError::from_sandbox(
            "starting",
            SandboxError::Docker {
                op: "create container",
                detail: "secret engine detail /var/lib/docker".into(),
            },
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"), "{}", status.message());

        let status = Status::from(ServiceError::from_sandbox(
            "starting",
            SandboxError::EngineUnavailable {
                detail: "no socket".into(),
            },
        ));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("socket"));
    }
}
