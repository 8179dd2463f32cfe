//! The Docker engine goes away under a running server: calls that need it answer UNAVAILABLE with a retry hint,
//! the server stays up, and it works again when the engine is back. The server reaches the engine through a
//! unix-socket proxy this test owns (`DOCKER_HOST`), so "down" is real for the server and harmless for the rest.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tonic::Code;

use crate::server::{client, close, create, create_request, ServerProc, SPANS};

/// Forwards connections from `path` to the real engine socket until dropped.
struct EngineProxy {
    path: PathBuf,
    tasks: JoinSet<()>,
}

impl EngineProxy {
    fn start(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = UnixStream::connect("/var/run/docker.sock").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            path: path.to_owned(),
            tasks,
        }
    }

    /// Stops accepting and cuts every forwarded connection: the engine is "down" for whoever used the proxy.
    async fn stop(mut self) {
        self.tasks.shutdown().await;
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_down_answers_unavailable_and_the_server_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("engine.sock");
    let proxy = EngineProxy::start(&socket);
    let docker_host = format!("unix://{}", socket.display());
    let server = ServerProc::start_with_env(dir.path(), &[], &[("DOCKER_HOST", docker_host)]);
    let mut client = client(&server.url()).await;

    // Up: an episode starts and closes.
    let created = create(&mut client, create_request(SPANS)).await;
    close(&mut client, &created.episode_id).await;

    // Down: the same call is UNAVAILABLE, with a retry hint, and says nothing of internals.
    proxy.stop().await;
    let status = client
        .create_episode(create_request(SPANS))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .metadata()
            .get(swe_env::server::RETRY_AFTER_MS)
            .is_some(),
        "{status:?}"
    );
    assert!(
        !status.message().contains("hyper") && !status.message().contains("engine.sock"),
        "{}",
        status.message()
    );

    // Back: the server never went down and serves again.
    let _proxy = EngineProxy::start(&socket);
    let created = create(&mut client, create_request(SPANS)).await;
    assert!(!created.episode_id.is_empty());
    close(&mut client, &created.episode_id).await;
    server.terminate(Duration::from_secs(30)).await;
}
