//! Phase 1 of an instance: make its image available according to the pull policy (one pull per image even
//! with many workers), with a typed [`ImageError`] whose `kind` is the result's `error_kind`.

use swe_env_grading::dataset::Instance;
use tracing::warn;

use super::{PullPolicy, SandboxError, Shared};
use crate::task::image_for;

/// Phase 1 of an instance (`attempt.rs`): makes its image available.
pub(super) async fn prepare_image(shared: &Shared, instance: &Instance) -> Result<(), ImageError> {
    let image = image_for(instance, &shared.episode_config.image_template);
    ensure_image(shared, &image).await
}

/// Why an instance's image is not available; [`ImageError::kind`] is the `error_kind` of its result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    /// Not present locally and `--pull never`.
    #[error(
        "image {image} is not present and --pull never forbids pulling: build or pull it first \
         (`swe-env images pull …`), or use --pull missing"
    )]
    NotPresent {
        /// The image.
        image: String,
    },
    /// The registry has no such image (or tag).
    #[error("image {image} does not exist in its registry ({detail}): check the name and --image-template")]
    NotFound {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// The registry refused the credentials (or the repository is private).
    #[error(
        "pulling {image} was denied ({detail}): `docker login` to its registry, or check the name"
    )]
    Auth {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// The registry could not be reached (DNS, connection refused, TLS, timeout).
    #[error("the registry of {image} is unreachable ({detail}): check the network, proxy and registry host")]
    RegistryUnreachable {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// Any other pull failure.
    #[error("cannot pull {image}: {detail} (check the image name template and registry access)")]
    Pull {
        /// The image.
        image: String,
        /// What the engine said.
        detail: String,
    },
    /// The Docker engine itself failed.
    #[error("{0}")]
    Engine(String),
}

impl ImageError {
    /// The `error_kind` recorded in results.jsonl.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotPresent { .. } | Self::NotFound { .. } => "image_missing",
            Self::Auth { .. } => "registry_auth",
            Self::RegistryUnreachable { .. } => "registry_unreachable",
            Self::Pull { .. } => "pull_failed",
            Self::Engine(_) => super::attempt::KIND_DOCKER_UNAVAILABLE,
        }
    }

    /// Classifies a failed pull of `image` by what the engine reported.
    fn from_pull(image: &str, error: SandboxError) -> Self {
        let detail = match error {
            SandboxError::ImageNotFound { image: what } => {
                return Self::NotFound {
                    image: image.to_owned(),
                    detail: what,
                }
            }
            SandboxError::EngineUnavailable { .. } => return Self::Engine(error.to_string()),
            SandboxError::Docker { detail, .. } => detail,
            other => other.to_string(),
        };
        let lower = detail.to_ascii_lowercase();
        let image = image.to_owned();
        if lower.contains("unauthorized")
            || lower.contains("authentication required")
            || lower.contains("pull access denied")
            || lower.contains("denied:")
        {
            Self::Auth { image, detail }
        } else if lower.contains("manifest unknown")
            || lower.contains("not found")
            || lower.contains("does not exist")
        {
            Self::NotFound { image, detail }
        } else if lower.contains("connection refused")
            || lower.contains("no such host")
            || lower.contains("dial tcp")
            || lower.contains("i/o timeout")
            || lower.contains("tls:")
            || lower.contains("timeout")
            || lower.contains("http: server gave http response to https client")
        {
            Self::RegistryUnreachable { image, detail }
        } else {
            Self::Pull { image, detail }
        }
    }
}

/// Makes `image` available according to the pull policy; one pull per image even with many workers.
async fn ensure_image(shared: &Shared, image: &str) -> Result<(), ImageError> {
    let present = shared
        .engine
        .image_info(image)
        .await
        .map_err(|e| ImageError::Engine(e.to_string()))?
        .is_some();
    match shared.config.pull {
        PullPolicy::Never if present => return Ok(()),
        PullPolicy::Never => {
            return Err(ImageError::NotPresent {
                image: image.to_owned(),
            })
        }
        PullPolicy::Missing if present => return Ok(()),
        _ => {}
    }
    let cell = shared
        .pulls
        .lock()
        .await
        .entry(image.to_owned())
        .or_default()
        .clone();
    cell.get_or_init(|| async {
        shared.progress.note(&format!("pulling {image}"));
        let pulled = shared.engine.pull_image(image, |_| {}).await;
        if let Err(error) = &pulled {
            warn!(image, %error, "pull failed");
        }
        pulled.map_err(|e| ImageError::from_pull(image, e))
    })
    .await
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pull_error(detail: &str) -> ImageError {
        ImageError::from_pull(
            "reg.example/x:1",
            SandboxError::Docker {
                op: "pull image",
                detail: detail.to_owned(),
            },
        )
    }

    #[test]
    fn pull_failures_keep_their_kind() {
        let kinds = [
            (
                "Get \"https://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused",
                "registry_unreachable",
            ),
            (
                "pull access denied for x, repository does not exist or may require 'docker login'",
                "registry_auth",
            ),
            ("unauthorized: authentication required", "registry_auth"),
            (
                "manifest for reg.example/x:1 not found: manifest unknown",
                "image_missing",
            ),
            ("something else entirely", "pull_failed"),
        ];
        for (detail, kind) in kinds {
            assert_eq!(pull_error(detail).kind(), kind, "{detail}");
        }
        let not_found =
            ImageError::from_pull("x", SandboxError::ImageNotFound { image: "x".into() });
        assert_eq!(not_found.kind(), "image_missing");
    }
}
