//! The CLI's error type: what went wrong, classified by the exit code it maps to (see [`CliError::exit_code`]).
//! Subcommands return `anyhow::Result`; an error whose cause chain holds a [`CliError`] or one of the typed input
//! errors below is bad usage / input (exit 2), anything else is infrastructure (exit 3).

use crate::agent::ModelAgentConfigError;
use crate::datasets::DatasetSourceError;

/// A failed command, by kind.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad usage: options that do not go together, a missing required option (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Bad input: a file that is missing or does not parse, an unknown task (exit 2).
    #[error("{0:#}")]
    Input(anyhow::Error),
    /// Infrastructure: Docker unreachable, disk full, a registry down (exit 3).
    #[error("{0:#}")]
    Infra(anyhow::Error),
}

impl CliError {
    /// The process exit code of this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Input(_) => super::EXIT_USAGE,
            Self::Infra(_) => super::EXIT_INFRA,
        }
    }

    /// Classifies an error by the types in its cause chain.
    pub fn classify(error: anyhow::Error) -> Self {
        if let Some(kind) = error.chain().find_map(|cause| {
            cause.downcast_ref::<CliError>().map(|e| match e {
                CliError::Usage(_) | CliError::Input(_) => true,
                CliError::Infra(_) => false,
            })
        }) {
            return if kind {
                Self::Input(error)
            } else {
                Self::Infra(error)
            };
        }
        let is_input = error.chain().any(|cause| {
            cause.is::<DatasetSourceError>()
                || cause.is::<ModelAgentConfigError>()
                || cause.is::<swe_env_grading::dataset::DatasetError>()
                || cause.is::<crate::cli::evaluate::PredictionsError>()
        });
        if is_input {
            Self::Input(error)
        } else {
            Self::Infra(error)
        }
    }
}

/// Wraps a message as a usage error inside an `anyhow::Error` (so `?` carries its exit code).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(CliError::Usage(message.into()))
}
