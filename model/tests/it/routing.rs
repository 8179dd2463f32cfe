//! Several endpoints round-robin, one down, and the per-endpoint concurrency limit.

use std::time::Duration;

use swe_env_model::scripted::{Script, ScriptedReply, ScriptedServer};
use swe_env_model::{ModelClient, ModelRequest};

use crate::client::fast_config;

/// A base URL on a loopback port nobody listens on.
pub async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    drop(listener);
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn round_robin_spreads_calls_over_live_endpoints() {
    let first = ScriptedServer::start(Script::default().with_fallback(ScriptedReply::text("one")))
        .await
        .unwrap();
    let second = ScriptedServer::start(Script::default().with_fallback(ScriptedReply::text("two")))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![first.base_url(), second.base_url()])).unwrap();
    for _ in 0..6 {
        client.call(&ModelRequest::prompt("p")).await.unwrap();
    }
    assert_eq!(first.request_count(), 3);
    assert_eq!(second.request_count(), 3);
}

#[tokio::test]
async fn round_robin_skips_an_endpoint_that_is_down() {
    let down = closed_port_url().await;
    let up = ScriptedServer::start(Script::default().with_fallback(ScriptedReply::text("up")))
        .await
        .unwrap();
    let mut config = fast_config(vec![down.clone(), up.base_url()]);
    config.endpoint_cooldown = Duration::from_secs(60);
    let client = ModelClient::new(config).unwrap();
    let mut total_attempts = 0;
    for _ in 0..8 {
        let completion = client.call(&ModelRequest::prompt("p")).await.unwrap();
        assert_eq!(completion.text, "up");
        assert_eq!(completion.endpoint, up.base_url());
        total_attempts += completion.attempts;
    }
    // The dead endpoint costs one failed attempt, then sits out its cooldown.
    assert_eq!(total_attempts, 9);
    assert_eq!(up.request_count(), 8);
}

#[tokio::test]
async fn concurrency_limit_per_endpoint_is_respected() {
    let slow = ScriptedReply::delayed(Duration::from_millis(150), ScriptedReply::text("ok"));
    let server = ScriptedServer::start(Script::default().with_fallback(slow))
        .await
        .unwrap();
    let mut config = fast_config(vec![server.base_url()]);
    config.max_in_flight_per_endpoint = 2;
    let client = std::sync::Arc::new(ModelClient::new(config).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..8 {
        let client = std::sync::Arc::clone(&client);
        tasks.spawn(async move {
            client
                .call(&ModelRequest::prompt(format!("p{index}")))
                .await
                .map(|completion| completion.text)
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        assert_eq!(result.unwrap().unwrap(), "ok");
        done += 1;
    }
    assert_eq!(done, 8);
    assert_eq!(server.request_count(), 8);
    assert_eq!(
        server.max_in_flight(),
        2,
        "the limit is 2 and 8 calls were waiting"
    );
}

#[tokio::test]
async fn concurrency_limit_applies_to_each_endpoint_separately() {
    let slow = || ScriptedReply::delayed(Duration::from_millis(150), ScriptedReply::text("ok"));
    let first = ScriptedServer::start(Script::default().with_fallback(slow()))
        .await
        .unwrap();
    let second = ScriptedServer::start(Script::default().with_fallback(slow()))
        .await
        .unwrap();
    let mut config = fast_config(vec![first.base_url(), second.base_url()]);
    config.max_in_flight_per_endpoint = 3;
    let client = std::sync::Arc::new(ModelClient::new(config).unwrap());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let client = std::sync::Arc::clone(&client);
        tasks.spawn(async move { client.call(&ModelRequest::prompt("p")).await.map(|_| ()) });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    assert_eq!(first.request_count() + second.request_count(), 12);
    assert_eq!(first.max_in_flight(), 3);
    assert_eq!(second.max_in_flight(), 3);
}
