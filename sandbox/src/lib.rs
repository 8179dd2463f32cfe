//! Sandboxes: where agent commands run. The [`Sandbox`] trait is the surface the tools need (persistent shell, byte-
//! exact file access); [`capture`] bounds a command's output whatever it prints; [`shell`] frames commands and
//! sentinels; [`UnisolatedHostSandbox`] runs on the host for fast tool tests (no isolation at all).
//!
//! With the `docker` feature (default): [`DockerSandbox`], one container per episode with a persistent shell (its
//! stdio on FIFOs in a bind-mounted host directory, [`fifo`], or over one attached exec: [`DataPath`]),
//! [`DockerEngine`], engine endpoints (`DOCKER_HOST`), container labels and orphan collection.
//! This crate is the only one in the workspace that depends on bollard; the tools crate uses it without `docker`.

#![warn(missing_docs)]

pub mod api;
pub mod capture;
pub mod error;
pub mod host;
pub mod shell;

#[cfg(feature = "docker")]
pub mod config;
#[cfg(feature = "docker")]
pub mod docker;
#[cfg(feature = "docker")]
pub mod endpoint;
#[cfg(feature = "docker")]
pub mod fifo;
#[cfg(feature = "docker")]
pub mod floor;
#[cfg(feature = "docker")]
pub mod gc;
#[cfg(feature = "docker")]
pub mod owner;

pub use api::{BoundedRead, CommandOutput, PathKind, Sandbox};
pub use error::SandboxError;
pub use host::{HostSandboxConfig, UnisolatedHostSandbox};

#[cfg(feature = "docker")]
pub use config::{DataPath, SandboxConfig};
#[cfg(feature = "docker")]
pub use docker::{DockerEngine, DockerSandbox, EngineFacts, ExecOutput, ImageInfo};
#[cfg(feature = "docker")]
pub use endpoint::EngineEndpoint;
#[cfg(feature = "docker")]
pub use gc::{collect_garbage, collect_garbage_with, GcReport, GcScope};
