//! The model agent loop end to end: a real HTTP scripted model server drives real episodes on a fixture task in
//! Docker, in all three API modes; format errors, endpoint failures and budgets end episodes with their named
//! statuses; the `run-episode` CLI works against the same server.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use swe_env::agent::{
    run_model_agent, start_info_for, ApiMode, ModelAgentConfig, ModelAgentOutcome, StepEvent,
};
use swe_env::episode::{Episode, EpisodeConfig};
use swe_env::trajectory::export::to_cwm_transcript;
use swe_env::trajectory::{read_trajectory, EpisodeStatus, ReadTrajectory};
use swe_env_model::scripted::{
    Script, ScriptedCompletion, ScriptedOptions, ScriptedReply, ScriptedServer,
};
use swe_env_model::{
    ChatMessage, ClientConfig, CwmLayout, ModelClient, SamplingParams, TokenLogprob, ToolCall,
    Usage,
};
use tokio::sync::mpsc;

use crate::common::{engine, unique_id};
use crate::episode::{fixture, fixtures_file};

const TASK: &str = "swe-env-fixtures__spans-1";
const FIX_LINE_1: &str = "+    for start, end in sorted(map(_check, ranges)):";
const FIX_LINE_2: &str = "+        if merged and start <= merged[-1][1]:";
const FINAL_ANSWER: &str = "## Fix\nSorted the ranges before merging and merged touching ranges.";

/// A completion carrying usage, token ids and logprobs derived from `seed`, so each step's record can be checked.
fn completion(seed: u32, text: &str, calls: &[(&str, &str)]) -> ScriptedReply {
    ScriptedReply::Completion(ScriptedCompletion {
        text: text.to_owned(),
        tool_calls: calls
            .iter()
            .enumerate()
            .map(|(index, (name, arguments))| ToolCall {
                id: format!("call_{seed}_{index}"),
                name: (*name).to_owned(),
                arguments: (*arguments).to_owned(),
            })
            .collect(),
        usage: Some(Usage {
            prompt_tokens: 1000 + 100 * u64::from(seed),
            completion_tokens: 10 + u64::from(seed),
        }),
        token_ids: Some(vec![seed, seed + 1, seed + 2]),
        prompt_token_ids: Some(vec![7, 7, seed]),
        logprobs: Some(vec![
            TokenLogprob {
                token: format!("t{seed}"),
                logprob: Some(-0.25 * f64::from(seed)),
                top_logprobs: Vec::new(),
            },
            TokenLogprob {
                token: "u".into(),
                logprob: Some(-1.5),
                top_logprobs: Vec::new(),
            },
        ]),
        ..ScriptedCompletion::default()
    })
}

/// The sampling part of a request body as the scripted server recorded it: every field but the conversation and
/// transport ones (what a step's `tokens.sampling` must equal).
fn sent_sampling(body: &Value) -> Value {
    let mut fields = body.as_object().unwrap().clone();
    for key in ["model", "messages", "prompt", "tools", "stream", "user"] {
        fields.remove(key);
    }
    Value::Object(fields)
}

fn text_reply(text: &str) -> ScriptedReply {
    ScriptedReply::text(text)
}

const GREP: &str = "grep -n 'for start, end' src/spans/ops.py";
const PYTEST: &str = "python -m pytest -q tests 2>&1 | tail -n 3";

/// The fix of spans-1 as CWM text actions (the same edits as the scripted episode test), then the final answer.
pub(crate) fn text_script() -> Vec<ScriptedReply> {
    let actions = [
        format!("<think>look first</think>\n<tool: bash>\n{GREP}\n</tool>"),
        "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n    for start, end in map(_check, ranges):\n=======\n    for start, end in sorted(map(_check, ranges)):\n>>>>>>> REPLACE\n</tool>".to_owned(),
        "<tool: edit>\nsrc/spans/ops.py\n<<<<<<< SEARCH\n        if merged and start < merged[-1][1]:\n=======\n        if merged and start <= merged[-1][1]:\n>>>>>>> REPLACE\n</tool>".to_owned(),
        format!("<tool: bash>\n{PYTEST}\n</tool>"),
        "<tool: bash>\ngit diff > /tmp/fix.patch\n</tool>".to_owned(),
        "<tool: submit>\n/tmp/fix.patch\n</tool>".to_owned(),
        format!("<think>tests pass</think>\n{FINAL_ANSWER}"),
    ];
    actions
        .iter()
        .enumerate()
        .map(|(seed, action)| completion(seed as u32, action, &[]))
        .collect()
}

/// The same fix as native tool calls; the submit has no path (the repository's changes are submitted).
fn tools_script() -> Vec<ScriptedReply> {
    let calls: [(&str, Value); 5] = [
        ("bash", serde_json::json!({"command": GREP})),
        (
            "edit",
            serde_json::json!({"path": "src/spans/ops.py", "search": "    for start, end in map(_check, ranges):",
                "replace": "    for start, end in sorted(map(_check, ranges)):"}),
        ),
        (
            "edit",
            serde_json::json!({"path": "src/spans/ops.py", "search": "        if merged and start < merged[-1][1]:",
                "replace": "        if merged and start <= merged[-1][1]:"}),
        ),
        ("bash", serde_json::json!({"command": PYTEST})),
        ("submit", serde_json::json!({})),
    ];
    let mut replies: Vec<ScriptedReply> = calls
        .iter()
        .enumerate()
        .map(|(seed, (name, arguments))| {
            completion(seed as u32, "", &[(name, &arguments.to_string())])
        })
        .collect();
    replies.push(completion(calls.len() as u32, FINAL_ANSWER, &[]));
    replies
}

fn client_for(server: &ScriptedServer, max_attempts: u32, timeout: Duration) -> ModelClient {
    let mut config = ClientConfig::new(server.base_url(), "scripted-model");
    config.request_timeout = timeout;
    config.retry.max_attempts = max_attempts;
    config.retry.min_delay = Duration::from_millis(10);
    config.retry.max_delay = Duration::from_millis(50);
    config.retry.jitter = false;
    ModelClient::new(config).unwrap()
}

fn episode_config(dir: &Path, mode: ApiMode) -> EpisodeConfig {
    EpisodeConfig {
        trajectory_dir: dir.to_owned(),
        tool_format: mode.tool_format(),
        ..EpisodeConfig::default()
    }
}

async fn start_episode(id: &str, agent: &ModelAgentConfig, config: EpisodeConfig) -> Episode {
    let instance = fixture(TASK);
    let info = start_info_for(&instance, agent, &config).unwrap();
    Episode::start(&engine().await, id, instance, config, info)
        .await
        .unwrap()
}

/// Runs the loop with an event channel, finishes the episode and returns the outcome, the events and the
/// trajectory as read back from disk.
async fn run_and_finish(
    episode: &mut Episode,
    client: &ModelClient,
    agent: &ModelAgentConfig,
) -> (ModelAgentOutcome, Vec<StepEvent>, ReadTrajectory) {
    let (sender, mut receiver) = mpsc::channel(8);
    let collector = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(event) = receiver.recv().await {
            events.push(event);
        }
        events
    });
    let outcome = run_model_agent(episode, client, agent, Some(sender))
        .await
        .unwrap();
    let events = collector.await.unwrap();
    episode.finish(outcome.end_info()).await.unwrap();
    let trajectory = read_trajectory(&episode.trajectory_path()).await.unwrap();
    (outcome, events, trajectory)
}

fn cwm_messages(trajectory: &ReadTrajectory) -> Vec<ChatMessage> {
    let export = to_cwm_transcript(trajectory);
    export["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            let content = message["content"].as_str().unwrap().to_owned();
            match message["role"].as_str().unwrap() {
                "system" => ChatMessage::system(content),
                "user" => ChatMessage::user(content),
                "assistant" => ChatMessage::assistant(content),
                role => ChatMessage::tool_output(role.strip_prefix("tool: ").unwrap(), content),
            }
        })
        .collect()
}

async fn fix_in_mode(mode: ApiMode) {
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id(&format!("loop-{}", mode.as_str()));
    let script = match mode {
        ApiMode::ChatTools => tools_script(),
        ApiMode::ChatText | ApiMode::Completions => text_script(),
    };
    let n_calls = script.len();
    let server = ScriptedServer::start(Script::default().with_episode(id.clone(), script))
        .await
        .unwrap();
    let client = client_for(&server, 2, Duration::from_secs(30));
    let agent = ModelAgentConfig {
        mode,
        ..ModelAgentConfig::default()
    };
    let mut episode = start_episode(&id, &agent, episode_config(dir.path(), mode)).await;
    let (outcome, events, trajectory) = run_and_finish(&mut episode, &client, &agent).await;

    // The submission holds the fix, and the final answer ended the episode.
    assert_eq!(
        outcome.agent.status,
        EpisodeStatus::Submitted,
        "{mode:?}: {outcome:?}"
    );
    let submission = outcome.agent.submission.clone().unwrap();
    assert!(
        submission.contains(FIX_LINE_1) && submission.contains(FIX_LINE_2),
        "{submission}"
    );
    assert_eq!(outcome.final_answer.as_deref(), Some(FINAL_ANSWER));
    assert_eq!(outcome.n_model_calls as usize, n_calls);
    assert_eq!(outcome.n_format_errors, 0);
    let n_steps = n_calls - 1;
    assert_eq!(outcome.agent.n_steps as usize, n_steps);
    let expect_prompt: u64 = (0..n_calls as u64).map(|seed| 1000 + 100 * seed).sum();
    assert_eq!(outcome.prompt_tokens, expect_prompt);
    assert_eq!(
        outcome
            .final_answer_tokens
            .as_ref()
            .unwrap()
            .token_ids
            .as_ref()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(server.remaining(), 0, "every scripted reply was used");
    // The final answer's tokens and every step's prompt token ids land in the trajectory.
    let end = trajectory.end.as_ref().unwrap();
    let final_tokens = end.final_answer_tokens.as_ref().unwrap();
    let last_seed = (n_calls - 1) as i64;
    assert_eq!(
        final_tokens.token_ids.as_deref(),
        Some(&[last_seed, last_seed + 1, last_seed + 2][..])
    );
    for (seed, step) in trajectory.steps.iter().enumerate() {
        assert_eq!(
            step.tokens.prompt_token_ids.as_deref(),
            Some(&[7, 7, seed as i64][..]),
            "step {seed}"
        );
    }

    // Events: one per call and per step, then the end.
    let n_called = events
        .iter()
        .filter(|e| matches!(e, StepEvent::ModelCalled { .. }))
        .count();
    let n_stepped = events
        .iter()
        .filter(|e| matches!(e, StepEvent::Step { .. }))
        .count();
    assert_eq!((n_called, n_stepped), (n_calls, n_steps));
    assert!(matches!(
        events.last(),
        Some(StepEvent::Finished {
            status: EpisodeStatus::Submitted,
            submitted: true,
            ..
        })
    ));

    // The trajectory: steps, the tool results, and each call's tokens, ids and logprobs on its step.
    assert_eq!(trajectory.steps.len(), n_steps);
    let end = trajectory.end.as_ref().unwrap();
    assert_eq!(end.status, EpisodeStatus::Submitted);
    assert_eq!(end.final_answer.as_deref(), Some(FINAL_ANSWER));
    let start = trajectory.start.as_ref().unwrap();
    assert_eq!(start.tool_format, mode.tool_format().as_str());
    assert_eq!(start.model.as_ref().unwrap()["api_mode"], mode.as_str());
    for (seed, step) in trajectory.steps.iter().enumerate() {
        let seed = seed as u32;
        assert!(step.format_error.is_none(), "{step:?}");
        assert!(step.tool_error.is_none(), "{step:?}");
        assert!(step.model_ms.is_some());
        assert_eq!(step.tokens.prompt, Some(1000 + 100 * u64::from(seed)));
        assert_eq!(step.tokens.completion, Some(10 + u64::from(seed)));
        let ids: Vec<i64> = [seed, seed + 1, seed + 2]
            .iter()
            .map(|&id| i64::from(id))
            .collect();
        assert_eq!(step.tokens.token_ids.as_ref(), Some(&ids));
        assert_eq!(
            step.tokens.logprobs.as_ref(),
            Some(&vec![-0.25 * f64::from(seed), -1.5])
        );
        assert_eq!(
            step.tokens.tokens.as_ref(),
            Some(&vec![format!("t{seed}"), "u".to_owned()])
        );
    }
    let pytest = trajectory
        .steps
        .iter()
        .find(|step| {
            step.parsed_call
                .as_ref()
                .is_some_and(|c| c["command"] == PYTEST)
        })
        .unwrap();
    assert_eq!(pytest.exit_code, Some(0), "{}", pytest.observation);
    assert!(trajectory.steps[0]
        .observation
        .contains("for start, end in map(_check, ranges):"));
    assert_eq!(
        trajectory.steps.last().unwrap().tool.as_deref(),
        Some("submit")
    );

    // What went over the wire in each mode.
    let requests = server.requests();
    assert_eq!(requests.len(), n_calls);
    for request in &requests {
        assert_eq!(request.episode.as_deref(), Some(id.as_str()));
    }
    // By default every call asks for logprobs and token ids, and each call's record holds the sampling exactly as
    // sent, why generation stopped and who answered.
    let sent: Vec<Value> = requests.iter().map(|r| sent_sampling(&r.body)).collect();
    let step_finish = if mode == ApiMode::ChatTools {
        "tool_calls"
    } else {
        "stop"
    };
    let recorded: Vec<Value> = trajectory
        .steps
        .iter()
        .map(|step| (&step.tokens, step_finish))
        .chain([(final_tokens, "stop")])
        .map(|(tokens, finish)| {
            assert_eq!(tokens.endpoint.as_deref(), Some(server.base_url().as_str()));
            assert_eq!(tokens.finish_reason.as_deref(), Some(finish));
            tokens.sampling.clone().unwrap()
        })
        .collect();
    assert_eq!(recorded, sent);
    for sampling in &sent {
        assert_eq!(sampling["return_token_ids"], true, "{sampling}");
        match mode {
            ApiMode::Completions => assert_eq!(sampling["logprobs"], 0, "{sampling}"),
            _ => {
                assert_eq!(sampling["logprobs"], true, "{sampling}");
                assert_eq!(sampling["top_logprobs"], 0, "{sampling}");
            }
        }
    }
    let last = &requests.last().unwrap().body;
    match mode {
        ApiMode::ChatTools => {
            assert!(requests[0].path.ends_with("/chat/completions"));
            assert_eq!(last["tools"].as_array().unwrap().len(), 4);
            let messages = last["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 2 + 2 * n_steps);
            let call = &messages[messages.len() - 2];
            assert_eq!(call["role"], "assistant");
            assert_eq!(call["tool_calls"][0]["function"]["name"], "submit");
            let result = &messages[messages.len() - 1];
            assert_eq!(result["role"], "tool");
            assert_eq!(result["tool_call_id"], format!("call_{}_0", n_steps - 1));
            assert!(result["content"].as_str().unwrap().contains("<submission>"));
            assert!(messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("function-calling"));
        }
        ApiMode::ChatText => {
            assert!(requests[0].path.ends_with("/chat/completions"));
            assert!(last.get("tools").is_none());
            let messages = last["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 2 + 2 * n_steps);
            for pair in messages[2..].chunks(2) {
                assert_eq!(pair[0]["role"], "assistant");
                assert_eq!(pair[1]["role"], "user");
                assert!(pair[1]["content"].as_str().unwrap().starts_with("<output>"));
            }
            assert!(messages[0]["content"]
                .as_str()
                .unwrap()
                .contains("<tool: edit>"));
        }
        ApiMode::Completions => {
            assert!(requests[0].path.ends_with("/completions"));
            assert!(!requests[0].path.ends_with("/chat/completions"));
            assert_eq!(last["stop"], serde_json::json!(["<|eot_id|>"]));
            let prompt = last["prompt"].as_str().unwrap();
            assert!(prompt.contains("<|start_header_id|>tool: edit<|end_header_id|>"));
            // The exported CWM transcript (minus the final answer) renders to exactly the last prompt sent.
            let mut messages = cwm_messages(&trajectory);
            assert_eq!(messages.pop().unwrap().content, FINAL_ANSWER);
            assert_eq!(
                CwmLayout::default().render_prompt(&messages).unwrap(),
                prompt
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scripted_model_fixes_a_fixture_in_all_three_modes() {
    tokio::join!(
        fix_in_mode(ApiMode::ChatTools),
        fix_in_mode(ApiMode::ChatText),
        fix_in_mode(ApiMode::Completions),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn format_errors_go_back_to_the_model_and_too_many_end_the_episode() {
    let dir = tempfile::tempdir().unwrap();

    // Text format: a reply with no call is a format error and the episode goes on; three in a row end it.
    let text_id = unique_id("loop-fmt-text");
    let text_replies = vec![
        text_reply("I will now edit the file."),
        text_reply("<tool: bash>\necho still here\n</tool>"),
        text_reply("<tool: bash>\necho unclosed\n"),
        text_reply("<tool: nope>\nx\n</tool>"),
        text_reply("<tool: bash>\nls\n</tool>\n<tool: bash>\npwd\n</tool>"),
        text_reply("<tool: bash>\necho never sent\n</tool>"),
    ];
    // Native tools: two calls in one reply, bad JSON arguments, then no call at all.
    let tools_id = unique_id("loop-fmt-tools");
    let tools_replies = vec![
        ScriptedReply::tool_calls(&[
            ("bash", "{\"command\": \"ls\"}"),
            ("bash", "{\"command\": \"pwd\"}"),
        ]),
        ScriptedReply::tool_calls(&[("bash", "{\"command\": \"echo hi there\"}")]),
        ScriptedReply::tool_calls(&[("bash", "{not json")]),
        text_reply("Let me think about it."),
    ];
    let server = ScriptedServer::start(
        Script::default()
            .with_episode(text_id.clone(), text_replies)
            .with_episode(tools_id.clone(), tools_replies),
    )
    .await
    .unwrap();
    let client = client_for(&server, 1, Duration::from_secs(30));

    let text_agent = ModelAgentConfig {
        mode: ApiMode::ChatText,
        max_consecutive_format_errors: 3,
        ..ModelAgentConfig::default()
    };
    let tools_agent = ModelAgentConfig {
        mode: ApiMode::ChatTools,
        max_consecutive_format_errors: 2,
        ..ModelAgentConfig::default()
    };
    let (mut text_episode, mut tools_episode) = tokio::join!(
        start_episode(
            &text_id,
            &text_agent,
            episode_config(dir.path(), ApiMode::ChatText)
        ),
        start_episode(
            &tools_id,
            &tools_agent,
            episode_config(dir.path(), ApiMode::ChatTools)
        ),
    );
    let ((text, _, text_trajectory), (tools, _, tools_trajectory)) = tokio::join!(
        run_and_finish(&mut text_episode, &client, &text_agent),
        run_and_finish(&mut tools_episode, &client, &tools_agent),
    );

    assert_eq!(text.agent.status, EpisodeStatus::FormatErrors, "{text:?}");
    assert_eq!(text.agent.n_steps, 5);
    assert_eq!(text.n_format_errors, 4);
    assert!(
        text.detail.as_deref().unwrap().contains("3 consecutive"),
        "{:?}",
        text.detail
    );
    let steps = &text_trajectory.steps;
    assert!(
        steps[0]
            .observation
            .starts_with("FormatError: no tool call found"),
        "{}",
        steps[0].observation
    );
    assert!(steps[1].format_error.is_none());
    assert!(steps[1].observation.contains("still here"));
    assert!(steps[2]
        .format_error
        .as_deref()
        .unwrap()
        .contains("unbalanced"));
    assert!(steps[3]
        .format_error
        .as_deref()
        .unwrap()
        .contains("unknown tool"));
    assert!(steps[4]
        .format_error
        .as_deref()
        .unwrap()
        .contains("exactly one tool call"));
    assert_eq!(
        text_trajectory.end.as_ref().unwrap().status,
        EpisodeStatus::FormatErrors
    );

    assert_eq!(tools.agent.status, EpisodeStatus::FormatErrors, "{tools:?}");
    assert_eq!(tools.agent.n_steps, 4);
    let steps = &tools_trajectory.steps;
    assert!(steps[0]
        .observation
        .starts_with("FormatError: expected exactly one tool call per turn but found 2"));
    let raw: Value = serde_json::from_str(&steps[0].raw_action).unwrap();
    assert_eq!(
        raw.as_array().unwrap().len(),
        2,
        "the raw action keeps both calls"
    );
    assert!(steps[1].format_error.is_none());
    assert!(steps[1].observation.contains("hi there"));
    assert!(steps[2]
        .format_error
        .as_deref()
        .unwrap()
        .contains("not valid JSON"));
    assert!(steps[3]
        .observation
        .starts_with("FormatError: no tool call found"));

    // Both calls of the rejected turn were answered with the error, as the chat API requires.
    let requests: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|request| request.episode.as_deref() == Some(tools_id.as_str()))
        .collect();
    assert_eq!(requests.len(), 4);
    let messages = requests[1].body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 5);
    assert_eq!(messages[2]["tool_calls"].as_array().unwrap().len(), 2);
    for (message, call_id) in messages[3..].iter().zip(["call_0", "call_1"]) {
        assert_eq!(message["role"], "tool");
        assert_eq!(message["tool_call_id"], call_id);
        assert!(message["content"]
            .as_str()
            .unwrap()
            .starts_with("FormatError:"));
    }
    // The bad-JSON call is answered by its own tool message; the plain-text reply by a user message.
    let messages = requests[3].body["messages"].as_array().unwrap();
    assert_eq!(messages.last().unwrap()["role"], "tool");
    assert!(messages.last().unwrap()["content"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_failures_are_retried_then_end_with_model_error() {
    let dir = tempfile::tempdir().unwrap();
    let agent = ModelAgentConfig::default();
    let failing_id = unique_id("loop-500");
    let slow_id = unique_id("loop-timeout");
    let slow = || ScriptedReply::delayed(Duration::from_secs(3), text_reply("too late"));
    let server = ScriptedServer::start(
        Script::default()
            .with_episode(
                failing_id.clone(),
                vec![ScriptedReply::status(500), ScriptedReply::status(500)],
            )
            .with_episode(
                slow_id.clone(),
                vec![
                    ScriptedReply::status(503),
                    text_reply("<tool: bash>\necho recovered\n</tool>"),
                    slow(),
                    slow(),
                ],
            ),
    )
    .await
    .unwrap();
    let client = client_for(&server, 2, Duration::from_millis(400));
    let (mut failing, mut slow_episode) = tokio::join!(
        start_episode(
            &failing_id,
            &agent,
            episode_config(dir.path(), ApiMode::ChatText)
        ),
        start_episode(
            &slow_id,
            &agent,
            episode_config(dir.path(), ApiMode::ChatText)
        ),
    );
    let ((failed, _, failed_trajectory), (timed_out, events, _)) = tokio::join!(
        run_and_finish(&mut failing, &client, &agent),
        run_and_finish(&mut slow_episode, &client, &agent),
    );

    assert_eq!(failed.agent.status, EpisodeStatus::ModelError, "{failed:?}");
    assert_eq!(failed.agent.n_steps, 0);
    assert_eq!(failed.n_model_calls, 0);
    let detail = failed.detail.as_deref().unwrap();
    assert!(
        detail.contains("HTTP 500") && detail.contains("2 attempts"),
        "{detail}"
    );
    assert_eq!(
        failed_trajectory.end.as_ref().unwrap().detail.as_deref(),
        Some(detail)
    );

    // A 503 is retried and the episode goes on; two timeouts in a row end it.
    assert_eq!(
        timed_out.agent.status,
        EpisodeStatus::ModelError,
        "{timed_out:?}"
    );
    assert_eq!(timed_out.agent.n_steps, 1);
    assert!(
        timed_out.detail.as_deref().unwrap().contains("timed out"),
        "{:?}",
        timed_out.detail
    );
    assert!(
        matches!(events[0], StepEvent::ModelCalled { attempts: 2, .. }),
        "{:?}",
        events[0]
    );
    let per_episode = |id: &str| {
        server
            .requests()
            .iter()
            .filter(|r| r.episode.as_deref() == Some(id))
            .count()
    };
    assert_eq!(per_episode(&failing_id), 2);
    assert_eq!(per_episode(&slow_id), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn budgets_end_the_episode_with_their_status() {
    let dir = tempfile::tempdir().unwrap();
    let bash = |seed: u32, prompt: u64| {
        let ScriptedReply::Completion(mut reply) = completion(
            seed,
            &format!("<tool: bash>\necho step {seed}\n</tool>"),
            &[],
        ) else {
            unreachable!()
        };
        reply.usage = Some(Usage {
            prompt_tokens: prompt,
            completion_tokens: 30,
        });
        ScriptedReply::Completion(reply)
    };
    let context_id = unique_id("loop-context");
    let overflow_id = unique_id("loop-overflow");
    let turns_id = unique_id("loop-turns");
    let server = ScriptedServer::start(
        Script::default()
            .with_episode(context_id.clone(), vec![bash(0, 3000), bash(1, 17000), bash(2, 19990)])
            .with_episode(
                overflow_id.clone(),
                vec![ScriptedReply::Status {
                    status: 400,
                    retry_after: None,
                    body: "{\"error\": {\"message\": \"This model's maximum context length is 4096 tokens\"}}".into(),
                }],
            )
            .with_episode(turns_id.clone(), vec![bash(0, 100), bash(1, 200), bash(2, 300)]),
    )
    .await
    .unwrap();
    let client = client_for(&server, 1, Duration::from_secs(30));
    let mut agent = ModelAgentConfig::default();
    agent.sampling.max_tokens = Some(4000);
    let mut small_context = episode_config(dir.path(), ApiMode::ChatText);
    small_context.context_tokens = 20_000;
    let mut two_turns = episode_config(dir.path(), ApiMode::ChatText);
    two_turns.max_turns = 2;
    let (mut context, mut overflow, mut turns) = tokio::join!(
        start_episode(&context_id, &agent, small_context),
        start_episode(
            &overflow_id,
            &agent,
            episode_config(dir.path(), ApiMode::ChatText)
        ),
        start_episode(&turns_id, &agent, two_turns),
    );
    let ((context, _, context_trajectory), (overflow, _, _), (turns, _, _)) = tokio::join!(
        run_and_finish(&mut context, &client, &agent),
        run_and_finish(&mut overflow, &client, &agent),
        run_and_finish(&mut turns, &client, &agent),
    );

    // Usage from the server sets the context used: 17030 after the second call, 20020 (over 20000) after the third.
    assert_eq!(
        context.agent.status,
        EpisodeStatus::ContextExhausted,
        "{context:?}"
    );
    assert_eq!(context.agent.n_steps, 3);
    assert!(
        context.detail.as_deref().unwrap().contains("20000 tokens"),
        "{:?}",
        context.detail
    );
    assert_eq!(
        context_trajectory.end.as_ref().unwrap().status,
        EpisodeStatus::ContextExhausted
    );
    // The per-turn output cap shrinks to the context left.
    let bodies: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|r| r.episode.as_deref() == Some(context_id.as_str()))
        .map(|r| r.body)
        .collect();
    assert_eq!(bodies[0]["max_tokens"], 4000);
    let third = bodies[2]["max_tokens"].as_u64().unwrap();
    assert!(third < 20_000 - 17_030, "max_tokens {third}");

    assert_eq!(
        overflow.agent.status,
        EpisodeStatus::ContextExhausted,
        "{overflow:?}"
    );
    assert!(overflow
        .detail
        .as_deref()
        .unwrap()
        .contains("maximum context length"));

    assert_eq!(turns.agent.status, EpisodeStatus::MaxTurns, "{turns:?}");
    assert_eq!(turns.agent.n_steps, 2);
    assert_eq!(turns.n_model_calls, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_episode_cli_drives_a_fixture_to_a_submission() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(Script::new(text_script()))
        .await
        .unwrap();
    let episode_id = unique_id("loop-cli");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["run-episode", "--task", TASK, "--tasks"])
        .arg(fixtures_file())
        .args([
            "--model-url",
            &server.base_url(),
            "--model",
            "scripted-model",
            "--mode",
            "completions",
            "--logprobs",
            "off",
            "--return-token-ids",
            "false",
        ])
        .args([
            "--max-turns",
            "20",
            "--episode-id",
            &episode_id,
            "--json",
            "--trajectory-dir",
        ])
        .arg(dir.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["status"], "submitted", "{result}");
    assert_eq!(result["submitted"], true);
    assert_eq!(result["n_steps"], 6);
    assert_eq!(result["n_model_calls"], 7);
    assert_eq!(result["final_answer"], FINAL_ANSWER);
    // The live view: a line per model call and per step.
    assert!(stderr.contains("model #0:"), "{stderr}");
    assert!(stderr.contains("step 0: bash grep -n"), "{stderr}");
    assert!(
        stderr.contains("step 5: submit /tmp/fix.patch (") && stderr.contains("[submitted]"),
        "{stderr}"
    );
    let trajectory = read_trajectory(&dir.path().join(format!("{episode_id}.jsonl")))
        .await
        .unwrap();
    let end = trajectory.end.unwrap();
    assert_eq!(end.status, EpisodeStatus::Submitted);
    assert!(end.submission.unwrap().contains(FIX_LINE_1));
    assert_eq!(
        trajectory.start.unwrap().model.unwrap()["name"],
        "scripted-model"
    );
    // --logprobs off / --return-token-ids false: neither is asked for.
    for request in server.requests() {
        assert!(request.body.get("logprobs").is_none(), "{}", request.body);
        assert!(
            request.body.get("return_token_ids").is_none(),
            "{}",
            request.body
        );
    }

    // A bad --logprobs value is a usage error (exit 2).
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["run-episode", "--task", TASK, "--tasks"])
        .arg(fixtures_file())
        .args([
            "--model-url",
            &server.base_url(),
            "--model",
            "m",
            "--logprobs",
            "lots",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auto"), "{stderr}");

    // Bad input is a usage error (exit 2) before any container starts.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["run-episode", "--task", "no-such-task", "--tasks"])
        .arg(fixtures_file())
        .args(["--model-url", &server.base_url(), "--model", "m"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_submission_the_model_may_keep_working_or_only_answer() {
    let dir = tempfile::tempdir().unwrap();
    let replies = |n: usize| -> Vec<ScriptedReply> {
        [
            "<tool: create>\nnotes_a.txt\none\n\n</tool>",
            "<tool: submit>\n\n</tool>",
            "<tool: create>\nnotes_b.txt\ntwo\n\n</tool>",
            "<tool: submit>\n\n</tool>",
            "Done: both notes are in.",
        ][..n]
            .iter()
            .map(|text| text_reply(text))
            .collect()
    };
    let keep_id = unique_id("loop-keep");
    let answer_id = unique_id("loop-answer-only");
    let server = ScriptedServer::start(
        Script::default()
            .with_episode(keep_id.clone(), replies(5))
            .with_episode(answer_id.clone(), replies(3)),
    )
    .await
    .unwrap();
    let client = client_for(&server, 1, Duration::from_secs(30));
    let keep_agent = ModelAgentConfig::default();
    let answer_agent = ModelAgentConfig {
        after_submit: swe_env::agent::AfterSubmit::FinalAnswerOnly,
        ..ModelAgentConfig::default()
    };
    let (mut keep, mut answer) = tokio::join!(
        start_episode(
            &keep_id,
            &keep_agent,
            episode_config(dir.path(), ApiMode::ChatText)
        ),
        start_episode(
            &answer_id,
            &answer_agent,
            episode_config(dir.path(), ApiMode::ChatText)
        ),
    );
    let ((keep, _, _), (answer, _, answer_trajectory)) = tokio::join!(
        run_and_finish(&mut keep, &client, &keep_agent),
        run_and_finish(&mut answer, &client, &answer_agent),
    );

    // Default: after the first submit the model kept working, submitted again, then answered.
    assert_eq!(keep.agent.status, EpisodeStatus::Submitted, "{keep:?}");
    assert_eq!(keep.agent.n_steps, 4);
    assert_eq!(
        keep.final_answer.as_deref(),
        Some("Done: both notes are in.")
    );
    let submission = keep.agent.submission.unwrap();
    assert!(
        submission.contains("notes_a.txt") && submission.contains("notes_b.txt"),
        "{submission}"
    );

    // Final-answer-only: the tool call after the submit is not run and the episode ends as submitted.
    assert_eq!(answer.agent.status, EpisodeStatus::Submitted, "{answer:?}");
    assert_eq!((answer.agent.n_steps, answer.n_model_calls), (2, 3));
    assert_eq!(answer.final_answer, None);
    assert!(answer.detail.as_deref().unwrap().contains("not run"));
    let submission = answer.agent.submission.unwrap();
    assert!(
        submission.contains("notes_a.txt") && !submission.contains("notes_b.txt"),
        "{submission}"
    );
    assert_eq!(answer_trajectory.steps.len(), 2);
}

/// A reply cut off by `max_tokens` is recorded as such; each call's record holds the sampling exactly as sent
/// (max_tokens lowered to the context left, extra_body fields included); and an endpoint that rejects
/// `return_token_ids` costs one 400, after which calls go without it and logprobs are still recorded.
#[tokio::test(flavor = "multi_thread")]
async fn model_calls_record_finish_reason_and_sampling_and_survive_a_strict_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let id = unique_id("loop-record");
    let cut = ScriptedReply::Completion(ScriptedCompletion {
        text: "<think>let me look</think>\n<tool: bash>\ngrep -n 'for st".into(),
        finish_reason: Some("length".into()),
        reasoning: Some("separated thinking".into()),
        logprobs: Some(vec![TokenLogprob {
            token: "st".into(),
            logprob: Some(-0.75),
            top_logprobs: Vec::new(),
        }]),
        ..ScriptedCompletion::default()
    });
    let mut replies = vec![cut];
    replies.extend(text_script());
    let n_calls = replies.len();
    // Stateless turns: the 400 and its re-send are the same turn and get the same reply.
    let server = ScriptedServer::start_with(
        Script::default().with_episode_turns(id.clone(), replies),
        ScriptedOptions {
            reject_fields: vec!["return_token_ids".into()],
        },
    )
    .await
    .unwrap();
    let client = client_for(&server, 2, Duration::from_secs(30));
    let agent = ModelAgentConfig {
        mode: ApiMode::ChatText,
        sampling: SamplingParams {
            temperature: Some(0.7),
            max_tokens: Some(1_000_000),
            extra_body: Some(serde_json::json!({"top_k": 20})),
            ..SamplingParams::default()
        },
        ..ModelAgentConfig::default()
    };
    let mut episode =
        start_episode(&id, &agent, episode_config(dir.path(), ApiMode::ChatText)).await;
    let (outcome, _events, trajectory) = run_and_finish(&mut episode, &client, &agent).await;
    assert_eq!(
        outcome.agent.status,
        EpisodeStatus::Submitted,
        "{outcome:?}"
    );
    assert_eq!(outcome.n_model_calls as usize, n_calls);

    // The server saw one rejected request, then every call without return_token_ids but with logprobs.
    let requests = server.requests();
    assert_eq!(requests.len(), n_calls + 1);
    assert_eq!(requests[0].body["return_token_ids"], true);
    for request in &requests[1..] {
        assert!(
            request.body.get("return_token_ids").is_none(),
            "{}",
            request.body
        );
        assert_eq!(request.body["logprobs"], true);
        assert_eq!(request.body["top_logprobs"], 0);
        assert_eq!(request.body["temperature"], 0.7);
        assert_eq!(request.body["top_k"], 20);
        let max_tokens = request.body["max_tokens"].as_u64().unwrap();
        assert!(
            max_tokens <= 131_072,
            "lowered to the context left: {max_tokens}"
        );
    }

    // The trajectory: the cut-off reply is tellable apart, every call's sampling is what was sent.
    let steps = &trajectory.steps;
    assert_eq!(steps[0].tokens.finish_reason.as_deref(), Some("length"));
    assert!(steps[0].format_error.is_some(), "{:?}", steps[0]);
    assert_eq!(steps[0].tokens.logprobs.as_deref(), Some(&[-0.75][..]));
    // Text mode keeps the server's separated reasoning in the step, apart from the action text.
    assert_eq!(steps[0].reasoning.as_deref(), Some("separated thinking"));
    assert!(!steps[0].raw_action.contains("separated thinking"));
    for step in &steps[1..] {
        assert_eq!(step.tokens.finish_reason.as_deref(), Some("stop"));
        assert!(step.tokens.logprobs.is_some(), "logprobs still recorded");
    }
    let end = trajectory.end.as_ref().unwrap();
    let final_tokens = end.final_answer_tokens.as_ref().unwrap();
    assert_eq!(final_tokens.finish_reason.as_deref(), Some("stop"));
    let recorded: Vec<Value> = steps
        .iter()
        .map(|step| step.tokens.sampling.clone().unwrap())
        .chain([final_tokens.sampling.clone().unwrap()])
        .collect();
    let sent: Vec<Value> = requests[1..]
        .iter()
        .map(|r| sent_sampling(&r.body))
        .collect();
    assert_eq!(recorded, sent);
    assert!(recorded[0].get("return_token_ids").is_none());
    // The episode_start says what was asked: logprobs and token ids in auto mode.
    let model = trajectory.start.as_ref().unwrap().model.clone().unwrap();
    assert_eq!(model["sampling"]["logprobs"], "auto");
    assert_eq!(model["sampling"]["return_token_ids"], "auto");
}
