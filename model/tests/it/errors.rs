//! Failures: what is retried, what is not, and the named error each ends with.

use std::time::{Duration, Instant};

use swe_env_model::scripted::{Script, ScriptedReply, ScriptedServer};
use swe_env_model::{ModelClient, ModelError, ModelRequest, SamplingParams};

use crate::client::fast_config;

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::status(500),
        ScriptedReply::status(503),
        ScriptedReply::text("finally"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let completion = client.call(&ModelRequest::prompt("p")).await.unwrap();
    assert_eq!(completion.text, "finally");
    assert_eq!(completion.attempts, 3);
    assert_eq!(server.request_count(), 3);
}

#[tokio::test]
async fn persistent_500_gives_the_named_status_error() {
    let server = ScriptedServer::start(Script::default().with_fallback(ScriptedReply::status(500)))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    match &error {
        ModelError::HttpStatus {
            status,
            attempts,
            body_snippet,
            ..
        } => {
            assert_eq!(*status, 500);
            assert_eq!(*attempts, 3);
            assert!(
                body_snippet.contains("scripted status 500"),
                "{body_snippet}"
            );
        }
        other => panic!("expected HttpStatus, got {other:?}"),
    }
    assert_eq!(server.request_count(), 3);
    let text = error.to_string();
    assert!(text.contains("HTTP 500 after 3 attempts"), "{text}");
    assert!(text.contains("check its logs"), "{text}");
}

#[tokio::test]
async fn timeouts_are_retried_then_named() {
    let slow = ScriptedReply::delayed(Duration::from_secs(5), ScriptedReply::text("too late"));
    let server = ScriptedServer::start(Script::default().with_fallback(slow))
        .await
        .unwrap();
    let mut config = fast_config(vec![server.base_url()]);
    config.request_timeout = Duration::from_millis(200);
    config.retry.max_attempts = 2;
    let client = ModelClient::new(config).unwrap();
    let started = Instant::now();
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    assert!(
        matches!(error, ModelError::TimedOut { attempts: 2, timeout, .. } if timeout == Duration::from_millis(200)),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "each attempt must stop at the timeout"
    );
    assert_eq!(server.request_count(), 2);
    assert!(error
        .to_string()
        .contains("timed out after 2 attempts of 0.2s each"));
}

#[tokio::test]
async fn timeout_then_success_counts_attempts() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::delayed(Duration::from_secs(5), ScriptedReply::text("late")),
        ScriptedReply::text("fast"),
    ]))
    .await
    .unwrap();
    let mut config = fast_config(vec![server.base_url()]);
    config.request_timeout = Duration::from_millis(200);
    let client = ModelClient::new(config).unwrap();
    let completion = client.call(&ModelRequest::prompt("p")).await.unwrap();
    assert_eq!(completion.text, "fast");
    assert_eq!(completion.attempts, 2);
    assert!(completion.latency < Duration::from_millis(200));
    assert!(completion.total_duration >= Duration::from_millis(200));
}

#[tokio::test]
async fn retry_after_on_429_is_honoured() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::rate_limited(1),
        ScriptedReply::text("ok"),
    ]))
    .await
    .unwrap();
    // Backoff alone would wait at most 40 ms; the server asks for 1 s.
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let started = Instant::now();
    let completion = client.call(&ModelRequest::prompt("p")).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(completion.text, "ok");
    assert_eq!(completion.attempts, 2);
    assert!(
        waited >= Duration::from_millis(950),
        "waited only {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "waited {waited:?}");
}

#[tokio::test]
async fn retry_after_is_capped_by_config() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::rate_limited(3600),
        ScriptedReply::text("ok"),
    ]))
    .await
    .unwrap();
    let mut config = fast_config(vec![server.base_url()]);
    config.retry.max_retry_after = Duration::from_millis(100);
    let client = ModelClient::new(config).unwrap();
    let started = Instant::now();
    client.call(&ModelRequest::prompt("p")).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn non_retryable_400_fails_at_once() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::Status {
            status: 400,
            retry_after: None,
            body: r#"{"error":{"message":"This model's maximum context length is 8192 tokens"}}"#
                .into(),
        },
        ScriptedReply::text("never served"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    assert_eq!(error.status(), Some(400));
    assert_eq!(error.attempts(), 1);
    assert_eq!(server.request_count(), 1);
    assert_eq!(server.remaining(), 1);
    let text = error.to_string();
    assert!(text.contains("maximum context length"), "{text}");
    assert!(text.contains("check the model name"), "{text}");
}

#[tokio::test]
async fn malformed_body_is_named_and_not_retried() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::Raw("<html>gateway says hi</html>".into()),
        ScriptedReply::text("never served"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    match &error {
        ModelError::MalformedResponse {
            body_snippet,
            detail,
            ..
        } => {
            assert!(body_snippet.contains("gateway says hi"));
            assert!(detail.starts_with("not a text completion"), "{detail}");
        }
        other => panic!("expected MalformedResponse, got {other:?}"),
    }
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn unreachable_endpoint_is_retried_then_named() {
    let closed = crate::routing::closed_port_url().await;
    let mut config = fast_config(vec![closed.clone()]);
    config.retry.max_attempts = 2;
    let client = ModelClient::new(config).unwrap();
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    match &error {
        ModelError::Unreachable {
            endpoint, attempts, ..
        } => {
            assert_eq!(endpoint, &closed);
            assert_eq!(*attempts, 2);
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(error
        .to_string()
        .contains("check that the server is running"));
}

#[tokio::test]
async fn non_object_extra_body_is_rejected_before_sending() {
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text("unused")]))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let request = ModelRequest::prompt("p").with_sampling(SamplingParams {
        extra_body: Some(serde_json::json!([1, 2])),
        ..SamplingParams::default()
    });
    let error = client.call(&request).await.unwrap_err();
    assert!(matches!(error, ModelError::InvalidRequest(_)), "{error:?}");
    assert_eq!(server.request_count(), 0);
}

#[tokio::test]
async fn scripted_server_stops_when_dropped() {
    let server = ScriptedServer::start(Script::default().with_fallback(ScriptedReply::text("up")))
        .await
        .unwrap();
    let url = server.base_url();
    let mut config = fast_config(vec![url]);
    config.retry.max_attempts = 1;
    let client = ModelClient::new(config).unwrap();
    client.call(&ModelRequest::prompt("p")).await.unwrap();
    drop(server);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    assert!(matches!(error, ModelError::Unreachable { .. }), "{error:?}");
}

#[tokio::test]
async fn a_100_mb_body_is_a_named_error_read_no_further_than_the_limit() {
    let huge = "x".repeat(100 << 20);
    let server = ScriptedServer::start(
        Script::new(vec![ScriptedReply::text(huge)]).with_fallback(ScriptedReply::text("small")),
    )
    .await
    .unwrap();
    let config = fast_config(vec![server.base_url()]);
    assert_eq!(
        config.max_response_bytes,
        swe_env_model::DEFAULT_MAX_RESPONSE_BYTES
    );
    let client = ModelClient::new(config).unwrap();
    let error = client
        .call(&ModelRequest::prompt("p"))
        .await
        .expect_err("a body over the limit fails");
    assert!(
        matches!(&error, ModelError::ResponseTooLarge { limit, .. } if *limit == 32 << 20),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        format!(
            "model response body over 33554432 bytes from {}; reading stopped there. Lower max_tokens or the \
             logprobs asked for, or raise the client's max_response_bytes",
            server.base_url()
        )
    );
    assert_eq!(server.request_count(), 1, "not retried");
    assert_eq!(error.attempts(), 1);

    // The next reply is small and goes through; a tight limit refuses it too.
    let completion = client.call(&ModelRequest::prompt("p")).await.unwrap();
    assert_eq!(completion.text, "small");
    let tight = swe_env_model::ClientConfig {
        max_response_bytes: 64,
        ..fast_config(vec![server.base_url()])
    };
    let error = ModelClient::new(tight)
        .unwrap()
        .call(&ModelRequest::prompt("p"))
        .await
        .expect_err("over 64 bytes");
    assert!(
        matches!(error, ModelError::ResponseTooLarge { limit: 64, .. }),
        "{error:?}"
    );
}
