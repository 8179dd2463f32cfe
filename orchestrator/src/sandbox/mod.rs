//! Sandboxes: one container per episode, a persistent shell inside it, byte-exact file access, and orphan
//! cleanup. The only part of the code base that talks to the Docker engine.

pub mod capture;
pub mod config;
pub mod docker;
pub mod endpoint;
pub mod error;
pub mod gc;
pub mod owner;
pub mod shell;

pub use config::SandboxConfig;
pub use docker::{DockerEngine, DockerSandbox, ExecOutput, ImageInfo};
pub use endpoint::EngineEndpoint;
pub use error::SandboxError;
pub use gc::{collect_garbage, collect_garbage_with, GcReport, GcScope};
