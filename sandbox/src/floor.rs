//! The Docker floor: what a plain Docker API user pays to run a first command in a new container — create and
//! start a bare `sleep infinity` container, then one exec of `true` — with none of swe-env's shell set-up. The
//! benchmarks (`swe-env bench sandbox`, `swe-env bench scale --ceiling`) print swe-env's starts against it.
//! Containers carry the usual labels (so `gc` collects them after a crash); the caller removes them.

use std::time::{Duration, Instant};

use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, StartContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::docker::create_container_error;
use crate::error::SandboxError;
use crate::owner::{container_labels, Owner};

/// A connection used to time bare container starts through the Docker API.
#[derive(Clone)]
pub struct FloorProbe {
    docker: Docker,
    owner: Owner,
}

/// One bare start: the container created (remove it with `DockerEngine::remove_container`) and how long create +
/// start + the first exec took.
#[derive(Debug, Clone)]
pub struct FloorStart {
    /// Container id.
    pub container: String,
    /// Create + start + exec `true` to its exit.
    pub elapsed: Duration,
}

impl FloorProbe {
    /// Connects to the engine the environment names (as [`crate::DockerEngine::connect`] does).
    pub async fn connect(api_timeout: Duration) -> Result<Self, SandboxError> {
        let docker = crate::EngineEndpoint::from_env()?
            .client()?
            .with_timeout(api_timeout)
            .negotiate_version()
            .await
            .map_err(|e| SandboxError::docker("negotiate version", e))?;
        Ok(Self {
            docker,
            owner: Owner::current(),
        })
    }

    /// Creates and starts a container of `image` (`sleep infinity`, network `none`, labelled for `episode_id`),
    /// then runs `true` in it through one exec and waits for its exit. On an error after the container was
    /// created, the container is removed before returning.
    pub async fn start_and_first_exec(
        &self,
        image: &str,
        episode_id: &str,
    ) -> Result<FloorStart, SandboxError> {
        let started = Instant::now();
        let body = ContainerCreateBody {
            image: Some(image.to_owned()),
            entrypoint: Some(vec!["sleep".to_owned()]),
            cmd: Some(vec!["infinity".to_owned()]),
            labels: Some(container_labels(
                episode_id,
                &self.owner,
                Duration::from_secs(3600),
            )),
            host_config: Some(HostConfig {
                network_mode: Some("none".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions {
            name: Some(format!(
                "swe-env-floor-{episode_id}-{:04x}",
                rand::random::<u16>()
            )),
            ..Default::default()
        };
        let created = match self.docker.create_container(Some(options), body).await {
            Ok(created) => created,
            Err(e) => return Err(create_container_error(image, e)),
        };
        match self.start_and_exec(&created.id).await {
            Ok(()) => Ok(FloorStart {
                container: created.id,
                elapsed: started.elapsed(),
            }),
            Err(error) => {
                let options = RemoveContainerOptions {
                    force: true,
                    v: true,
                    ..Default::default()
                };
                let _ = self
                    .docker
                    .remove_container(&created.id, Some(options))
                    .await;
                Err(error)
            }
        }
    }

    async fn start_and_exec(&self, id: &str) -> Result<(), SandboxError> {
        self.docker
            .start_container(id, None::<StartContainerOptions>)
            .await
            .map_err(|e| SandboxError::docker("start container", e))?;
        let options = CreateExecOptions::<String> {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["true".to_owned()]),
            ..Default::default()
        };
        let exec = self
            .docker
            .create_exec(id, options)
            .await
            .map_err(|e| SandboxError::docker("create exec", e))?;
        let start = StartExecOptions {
            detach: false,
            tty: false,
            output_capacity: None,
        };
        match self.docker.start_exec(&exec.id, Some(start)).await {
            Ok(StartExecResults::Attached { mut output, .. }) => {
                while let Some(frame) = output.next().await {
                    if frame.is_err() {
                        break;
                    }
                }
            }
            Ok(StartExecResults::Detached) => {}
            Err(e) => return Err(SandboxError::docker("start exec", e)),
        }
        // The engine may report the exec running for a moment after its output closed.
        for _ in 0..200 {
            let inspect = self
                .docker
                .inspect_exec(&exec.id)
                .await
                .map_err(|e| SandboxError::docker("inspect exec", e))?;
            if inspect.running != Some(true) {
                return match inspect.exit_code {
                    Some(0) => Ok(()),
                    other => Err(SandboxError::Docker {
                        op: "first exec",
                        detail: format!("`true` exited {other:?} in container {id}"),
                    }),
                };
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(SandboxError::Docker {
            op: "first exec",
            detail: format!("`true` still running after 1 s in container {id}"),
        })
    }
}
