//! Logprobs and token ids are asked for by default; an endpoint that rejects one of them gets calls without it.

use serde_json::json;
use swe_env_model::scripted::{
    Script, ScriptedCompletion, ScriptedOptions, ScriptedReply, ScriptedServer,
};
use swe_env_model::{
    ChatMessage, LogprobsSetting, ModelClient, ModelError, ModelRequest, SamplingParams,
    TokenIdsSetting, TokenLogprob,
};

use crate::client::fast_config;

fn reply_with_logprobs() -> ScriptedReply {
    ScriptedReply::Completion(ScriptedCompletion {
        text: "ok".into(),
        logprobs: Some(vec![TokenLogprob {
            token: "ok".into(),
            logprob: Some(-0.25),
            top_logprobs: Vec::new(),
        }]),
        ..ScriptedCompletion::default()
    })
}

fn strict(fields: &[&str]) -> ScriptedOptions {
    ScriptedOptions {
        reject_fields: fields.iter().map(|field| field.to_string()).collect(),
    }
}

#[tokio::test]
async fn a_default_endpoint_gets_logprobs_and_token_ids_and_records_what_was_sent() {
    let server = ScriptedServer::start(Script::default().with_fallback(reply_with_logprobs()))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let request = ModelRequest::chat(vec![ChatMessage::user("hi")], Vec::new())
        .with_sampling(SamplingParams {
            temperature: Some(0.3),
            extra_body: Some(json!({"top_k": 5})),
            ..SamplingParams::default()
        })
        .with_user("ep");
    let completion = client.call(&request).await.unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let body = &requests[0].body;
    assert_eq!(body["logprobs"], true);
    assert_eq!(body["top_logprobs"], 0);
    assert_eq!(body["return_token_ids"], true);
    assert_eq!(
        completion.sampling,
        json!({"temperature": 0.3, "top_k": 5, "logprobs": true, "top_logprobs": 0,
               "return_token_ids": true})
    );
    assert_eq!(completion.logprobs.unwrap()[0].logprob, Some(-0.25));
}

#[tokio::test]
async fn a_strict_endpoint_loses_only_the_rejected_field_once_and_for_all() {
    let server = ScriptedServer::start_with(
        Script::default().with_fallback(reply_with_logprobs()),
        strict(&["return_token_ids"]),
    )
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    for prompt in ["one", "two", "three"] {
        let completion = client.call(&ModelRequest::prompt(prompt)).await.unwrap();
        assert_eq!(completion.attempts, 1, "the re-send spends no retry");
        assert_eq!(completion.sampling, json!({"logprobs": 0}));
        assert!(completion.logprobs.is_some(), "logprobs still asked for");
    }
    let requests = server.requests();
    let with_ids: Vec<bool> = requests
        .iter()
        .map(|request| request.body.get("return_token_ids").is_some())
        .collect();
    assert_eq!(
        with_ids,
        [true, false, false, false],
        "one 400, then every call goes without the field"
    );
}

#[tokio::test]
async fn a_server_rejecting_logprobs_gets_chat_calls_without_logprobs_and_top_logprobs() {
    let server = ScriptedServer::start_with(
        Script::default().with_fallback(ScriptedReply::text("ok")),
        strict(&["top_logprobs"]),
    )
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let request = ModelRequest::chat(vec![ChatMessage::user("hi")], Vec::new());
    let completion = client.call(&request).await.unwrap();
    assert_eq!(completion.sampling, json!({"return_token_ids": true}));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].body.get("logprobs").is_none());
    assert!(requests[1].body.get("top_logprobs").is_none());
}

#[tokio::test]
async fn a_field_the_user_set_is_never_dropped() {
    let server = ScriptedServer::start_with(
        Script::default().with_fallback(ScriptedReply::text("ok")),
        strict(&["return_token_ids"]),
    )
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let explicit = ModelRequest::prompt("p").with_sampling(SamplingParams {
        return_token_ids: TokenIdsSetting::On,
        logprobs: LogprobsSetting::Off,
        ..SamplingParams::default()
    });
    let error = client.call(&explicit).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::HttpStatus { status: 400, body_snippet, .. }
            if body_snippet.contains("Unrecognized request argument supplied: return_token_ids")),
        "{error}"
    );
    assert_eq!(server.request_count(), 1, "a 400 is not retried");
    // The same field given through extra_body is the user's too.
    let extra = ModelRequest::prompt("p").with_sampling(SamplingParams {
        extra_body: Some(json!({"return_token_ids": true})),
        ..SamplingParams::default()
    });
    assert!(client.call(&extra).await.is_err());
    // With it off, the call goes through.
    let off = ModelRequest::prompt("p").with_sampling(SamplingParams {
        return_token_ids: TokenIdsSetting::Off,
        ..SamplingParams::default()
    });
    let completion = client.call(&off).await.unwrap();
    assert_eq!(completion.sampling, json!({"logprobs": 0}));
}

/// A 400 that quotes the request (an agent's output included) names the fields only in the quote, not in its
/// error message: nothing is dropped, the call fails as any 400 does, and the next call still asks for both.
#[tokio::test]
async fn field_names_quoted_outside_the_error_message_switch_nothing_off() {
    let quoting = json!({
        "error": {"message": "This model's prompt contains a banned phrase", "type": "invalid_request_error"},
        "input": "the agent wrote: set logprobs and return_token_ids off",
    });
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::Status {
            status: 400,
            retry_after: None,
            body: quoting.to_string(),
        },
        ScriptedReply::text("ok"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let request = ModelRequest::chat(vec![ChatMessage::user("hi")], Vec::new());
    let error = client.call(&request).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::HttpStatus { status: 400, .. }),
        "{error}"
    );
    assert_eq!(server.request_count(), 1, "no re-send without the fields");
    let completion = client.call(&request).await.unwrap();
    assert_eq!(completion.text, "ok");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for request in &requests {
        assert_eq!(request.body["logprobs"], true);
        assert_eq!(request.body["return_token_ids"], true);
    }
}

/// A 400 naming a field only inside a longer identifier (`my_return_token_ids_v2`) is not about that field.
#[tokio::test]
async fn a_field_name_inside_a_longer_identifier_is_not_a_rejection() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::Status {
            status: 400,
            retry_after: None,
            body: json!({"detail": "unknown option my_return_token_ids_v2"}).to_string(),
        },
        ScriptedReply::text("ok"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    assert!(client.call(&ModelRequest::prompt("p")).await.is_err());
    assert_eq!(server.request_count(), 1);
    client.call(&ModelRequest::prompt("p")).await.unwrap();
    assert_eq!(server.requests()[1].body["return_token_ids"], true);
}

/// The endpoint is marked only once the re-send without the field succeeded: when the re-send fails too, the field
/// was not the trouble, so the next call asks for it again.
#[tokio::test]
async fn a_failed_re_send_does_not_mark_the_endpoint() {
    let status = |message: &str| ScriptedReply::Status {
        status: 400,
        retry_after: None,
        body: json!({"error": {"message": message}}).to_string(),
    };
    let server = ScriptedServer::start(Script::new(vec![
        status("Unrecognized request argument supplied: return_token_ids"),
        status("prompt contains a banned phrase"),
        ScriptedReply::text("ok"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let error = client.call(&ModelRequest::prompt("p")).await.unwrap_err();
    assert!(
        matches!(&error, ModelError::HttpStatus { status: 400, body_snippet, .. }
            if body_snippet.contains("banned phrase")),
        "{error}"
    );
    let completion = client.call(&ModelRequest::prompt("p")).await.unwrap();
    assert_eq!(completion.text, "ok");
    let with_ids: Vec<bool> = server
        .requests()
        .iter()
        .map(|request| request.body.get("return_token_ids").is_some())
        .collect();
    assert_eq!(with_ids, [true, false, true]);
}
