//! The three request modes round-trip, and what the server returns is parsed into the result.

use std::time::Duration;

use serde_json::json;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::{
    AgentPromptConfig, ChatMessage, ClientConfig, LogprobsSetting, ModelClient, ModelRequest,
    RetryConfig, SamplingParams, TokenIdsSetting, TokenLogprob, ToolSpec, TopLogprob, Usage,
};

pub fn fast_config(endpoints: Vec<String>) -> ClientConfig {
    ClientConfig {
        endpoints,
        model: "test-model".into(),
        request_timeout: Duration::from_secs(10),
        retry: RetryConfig {
            max_attempts: 3,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            ..RetryConfig::default()
        },
        ..ClientConfig::new("http://unused/v1", "test-model")
    }
}

fn bash_spec() -> ToolSpec {
    ToolSpec {
        name: "bash".into(),
        description: "Run commands in the persistent shell".into(),
        parameters: json!({"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}),
    }
}

#[tokio::test]
async fn chat_with_native_tools_round_trips() {
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::Completion(ScriptedCompletion {
            text: "Let me look.".into(),
            reasoning: Some("the repo first".into()),
            usage: Some(Usage {
                prompt_tokens: 11,
                completion_tokens: 7,
            }),
            ..match ScriptedReply::tool_calls(&[("bash", r#"{"command": "ls"}"#)]) {
                ScriptedReply::Completion(completion) => completion,
                _ => unreachable!(),
            }
        }),
        ScriptedReply::text("done"),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let mut messages = vec![ChatMessage::system("sys"), ChatMessage::user("fix it")];
    let request =
        ModelRequest::chat(messages.clone(), vec![bash_spec()]).with_sampling(SamplingParams {
            temperature: Some(0.2),
            top_p: Some(0.9),
            max_tokens: Some(256),
            seed: Some(7),
            ..SamplingParams::default()
        });
    let first = client.call(&request).await.unwrap();
    assert_eq!(first.text, "Let me look.");
    assert_eq!(first.reasoning.as_deref(), Some("the repo first"));
    assert_eq!(first.tool_calls.len(), 1);
    assert_eq!(first.tool_calls[0].name, "bash");
    assert_eq!(
        first.tool_calls[0].arguments_json().unwrap(),
        json!({"command": "ls"})
    );
    assert_eq!(first.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        first.usage,
        Some(Usage {
            prompt_tokens: 11,
            completion_tokens: 7
        })
    );
    assert_eq!(first.attempts, 1);
    assert_eq!(first.endpoint, server.base_url());
    assert!(first.latency <= first.total_duration);

    messages.push(ChatMessage::assistant_with_tool_calls(
        first.text.clone(),
        first.tool_calls.clone(),
    ));
    messages.push(ChatMessage::tool_result(
        first.tool_calls[0].id.clone(),
        "bash",
        "a.py\nb.py",
    ));
    let second = client
        .call(&ModelRequest::chat(messages, vec![bash_spec()]))
        .await
        .unwrap();
    assert_eq!(second.text, "done");
    assert!(second.tool_calls.is_empty());

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].path, "/v1/chat/completions");
    let body = &requests[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["tools"][0]["function"]["name"], "bash");
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["max_tokens"], 256);
    assert_eq!(body["seed"], 7);
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "fix it"})
    );
    let history = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(history.len(), 4);
    assert_eq!(history[2]["tool_calls"][0]["id"], "call_0");
    assert_eq!(
        history[3],
        json!({"role": "tool", "content": "a.py\nb.py", "tool_call_id": "call_0"})
    );
}

#[tokio::test]
async fn chat_with_cwm_text_format_round_trips() {
    let reply = "I will list files.\n<tool: bash>\nls -la\n</tool>";
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text(reply)]))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let request = ModelRequest::chat(
        vec![
            ChatMessage::system("tools: <tool: bash>"),
            ChatMessage::user("issue"),
        ],
        vec![],
    );
    let completion = client.call(&request).await.unwrap();
    assert_eq!(completion.text, reply);
    assert!(completion.tool_calls.is_empty());
    assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    let body = &server.requests()[0].body;
    assert!(
        body.get("tools").is_none(),
        "text-format chat must not offer native tools: {body}"
    );
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn raw_completion_of_cwm_transcript_round_trips() {
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text(
        "<tool: submit>\n/tmp/fix.patch\n</tool>",
    )]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let prompts = AgentPromptConfig::default();
    let transcript = vec![
        ChatMessage::system("sys"),
        ChatMessage::user("issue"),
        ChatMessage::assistant("<tool: bash>\nls\n</tool>"),
        ChatMessage::tool_output("bash", "<output>\nx\n</output>"),
    ];
    let prompt = prompts.cwm_layout.render_prompt(&transcript).unwrap();
    let request = ModelRequest::prompt(prompt.clone()).with_sampling(SamplingParams {
        stop: prompts.cwm_layout.stop.clone(),
        max_tokens: Some(64),
        ..SamplingParams::default()
    });
    let completion = client.call(&request).await.unwrap();
    assert_eq!(completion.text, "<tool: submit>\n/tmp/fix.patch\n</tool>");
    let recorded = &server.requests()[0];
    assert_eq!(recorded.path, "/v1/completions");
    assert_eq!(recorded.body["prompt"], prompt);
    assert_eq!(recorded.body["stop"], json!(["<|eot_id|>"]));
    assert!(recorded.body["prompt"]
        .as_str()
        .unwrap()
        .ends_with("<|start_header_id|>assistant<|end_header_id|>\n\n"));
    assert!(recorded.body.get("messages").is_none());
}

fn scripted_logprobs() -> Vec<TokenLogprob> {
    vec![
        TokenLogprob {
            token: "Hel".into(),
            logprob: Some(-0.25),
            top_logprobs: vec![
                TopLogprob {
                    token: "Hel".into(),
                    logprob: -0.25,
                },
                TopLogprob {
                    token: "Hi".into(),
                    logprob: -1.5,
                },
            ],
        },
        TokenLogprob {
            token: "lo".into(),
            logprob: Some(-0.01),
            top_logprobs: vec![],
        },
    ]
}

#[tokio::test]
async fn logprobs_and_token_ids_are_parsed_in_both_apis() {
    let completion = ScriptedCompletion {
        text: "Hello".into(),
        logprobs: Some(scripted_logprobs()),
        token_ids: Some(vec![9906, 385]),
        prompt_token_ids: Some(vec![128000, 128006, 882]),
        ..ScriptedCompletion::default()
    };
    let server = ScriptedServer::start(Script::new(vec![
        ScriptedReply::Completion(completion.clone()),
        ScriptedReply::Completion(completion),
    ]))
    .await
    .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let sampling = SamplingParams {
        logprobs: LogprobsSetting::Top(2),
        return_token_ids: TokenIdsSetting::On,
        ..SamplingParams::default()
    };
    let chat = client
        .call(
            &ModelRequest::chat(vec![ChatMessage::user("hi")], vec![])
                .with_sampling(sampling.clone()),
        )
        .await
        .unwrap();
    let text = client
        .call(&ModelRequest::prompt("hi").with_sampling(sampling))
        .await
        .unwrap();
    for result in [&chat, &text] {
        assert_eq!(
            result.logprobs.as_deref(),
            Some(scripted_logprobs().as_slice())
        );
        assert_eq!(result.token_ids, Some(vec![9906, 385]));
        assert_eq!(result.prompt_token_ids, Some(vec![128000, 128006, 882]));
    }
    let requests = server.requests();
    assert_eq!(requests[0].body["logprobs"], true);
    assert_eq!(requests[0].body["top_logprobs"], 2);
    assert_eq!(requests[0].body["return_token_ids"], true);
    assert_eq!(requests[1].body["logprobs"], 2);
    assert!(requests[1].body.get("top_logprobs").is_none());
}

#[tokio::test]
async fn unknown_response_fields_are_tolerated_and_kept() {
    let body = json!({
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "brand_new_top_level": {"nested": [1, 2]},
        "choices": [{
            "index": 0, "finish_reason": "stop", "stop_reason": 128008, "matched_stop": "<|eot_id|>",
            "message": {"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                        "reasoning": "thought", "annotations": [], "refusal": null, "audio": null}
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                  "prompt_tokens_details": {"cached_tokens": 0}}
    });
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::Json(body)]))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let completion = client
        .call(&ModelRequest::chat(vec![ChatMessage::user("hi")], vec![]))
        .await
        .unwrap();
    assert_eq!(completion.text, "ab");
    assert_eq!(completion.reasoning.as_deref(), Some("thought"));
    assert_eq!(completion.extra["stop_reason"], 128008);
    assert_eq!(completion.extra["matched_stop"], "<|eot_id|>");
    assert_eq!(
        completion.extra["brand_new_top_level"]["nested"],
        json!([1, 2])
    );
    assert!(completion.extra.contains_key("annotations"));
}

#[tokio::test]
async fn api_key_from_named_env_var_is_sent_as_bearer() {
    let var = "SWE_ENV_MODEL_IT_API_KEY";
    std::env::set_var(var, "sk-test-123");
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text("ok")]))
        .await
        .unwrap();
    let mut config = fast_config(vec![server.base_url()]);
    config.api_key_env = Some(var.into());
    let client = ModelClient::new(config).unwrap();
    client.call(&ModelRequest::prompt("x")).await.unwrap();
    let recorded = &server.requests()[0];
    assert_eq!(recorded.header("Authorization"), Some("Bearer sk-test-123"));
    assert_eq!(recorded.header("content-type"), Some("application/json"));

    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::text("ok")]))
        .await
        .unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    client.call(&ModelRequest::prompt("x")).await.unwrap();
    assert_eq!(server.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn episodes_get_their_own_scripts() {
    let script = Script::new(vec![])
        .with_episode(
            "ep-a",
            vec![ScriptedReply::text("a1"), ScriptedReply::text("a2")],
        )
        .with_episode("ep-b", vec![ScriptedReply::text("b1")]);
    let server = ScriptedServer::start(script).await.unwrap();
    let client = ModelClient::new(fast_config(vec![server.base_url()])).unwrap();
    let ask = |episode: &'static str| {
        let client = &client;
        async move {
            client
                .call(&ModelRequest::prompt("p").with_user(episode))
                .await
                .unwrap()
                .text
        }
    };
    assert_eq!(ask("ep-b").await, "b1");
    assert_eq!(ask("ep-a").await, "a1");
    assert_eq!(ask("ep-a").await, "a2");
    assert_eq!(server.remaining(), 0);
    assert_eq!(server.requests()[0].episode.as_deref(), Some("ep-b"));
    assert_eq!(server.requests()[0].body["user"], "ep-b");
}
