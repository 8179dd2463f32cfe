//! Shared helpers: engine connection, unique ids, the base image.

use std::time::Duration;

use swe_env::sandbox::{DockerEngine, DockerSandbox, SandboxConfig};

/// The base image built by images/base/build.sh.
pub const BASE_IMAGE: &str = "swe-env/base:bookworm";

pub async fn engine() -> DockerEngine {
    DockerEngine::connect(Duration::from_secs(60))
        .await
        .expect("these tests need a running Docker engine (CI starts dockerd; see .ci/run)")
}

pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("test-{prefix}-{}-{nanos:08x}", std::process::id())
}

pub async fn base_sandbox(prefix: &str, config: SandboxConfig) -> DockerSandbox {
    let engine = engine().await;
    assert!(
        engine.image_info(BASE_IMAGE).await.unwrap().is_some(),
        "image {BASE_IMAGE} is missing: run images/build.sh first"
    );
    engine
        .create_sandbox(BASE_IMAGE, &unique_id(prefix), config)
        .await
        .unwrap()
}

pub fn base_config() -> SandboxConfig {
    SandboxConfig {
        workdir: "/root".into(),
        ..SandboxConfig::default()
    }
}
