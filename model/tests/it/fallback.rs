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
