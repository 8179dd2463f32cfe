//! `run-episode` with a model, as a user sees it: Jinja prompt templates reach the model with the task row's
//! fields, per-episode token and cost limits end episodes with their own statuses and record the cost, `-v` shows
//! whole replies, and a slow model call is reported while it is in flight. Real binary, real Docker episodes on
//! a fixture task, the scripted OpenAI-compatible server.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use swe_env::trajectory::{read_trajectory, EpisodeStatus};
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;

use crate::common::{describe, unique_id};
use crate::episode::fixtures_file;

const TASK: &str = "swe-env-fixtures__spans-1";
const MODEL: &str = "scripted-model";

/// A CWM text-call reply running `command`, reporting 1000 prompt and 100 completion tokens.
fn bash_reply(command: &str) -> ScriptedReply {
    ScriptedReply::Completion(ScriptedCompletion {
        text: format!("<tool: bash>\n{command}\n</tool>"),
        usage: Some(Usage {
            prompt_tokens: 1000,
            completion_tokens: 100,
        }),
        ..ScriptedCompletion::default()
    })
}

/// Runs `swe-env [global] run-episode` on `tasks` against `server` with `extra` arguments; returns the output and the
/// JSON result line (Null when there is none).
async fn run_episode(
    server: &ScriptedServer,
    tasks: &Path,
    dir: &Path,
    episode_id: &str,
    global: &[&str],
    extra: &[&str],
) -> (Output, Value) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(global)
        .args(["run-episode", "--task", TASK, "--tasks"])
        .arg(tasks)
        .args(["--model-url", &server.base_url(), "--model", MODEL])
        .args([
            "--mode",
            "chat-text",
            "--logprobs",
            "off",
            "--return-token-ids",
            "false",
        ])
        .args(["--max-turns", "20", "--episode-id", episode_id, "--json"])
        .arg("--trajectory-dir")
        .arg(dir)
        .args(extra)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (output, result)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cost_limit_ends_the_episode_with_cost_limit_and_records_the_cost() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(Script::default().with_fallback(bash_reply("ls")))
        .await
        .unwrap();
    // 1000 prompt tokens at $1/M + 100 completion tokens at $2/M = $0.0012 per call: the second call reaches $0.002.
    let config = write(
        dir.path(),
        "agent.yaml",
        &format!("prices:\n  {MODEL}: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}\n"),
    );
    let episode_id = unique_id("ux-cost");
    let (output, result) = run_episode(
        &server,
        &fixtures_file(),
        dir.path(),
        &episode_id,
        &[],
        &[
            "--agent-config",
            config.to_str().unwrap(),
            "--cost-limit",
            "0.002",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(result["status"], "cost_limit", "{result}");
    assert_eq!(result["n_model_calls"], 2, "{result}");
    assert_eq!(result["cost_usd"], 0.0024, "{result}");
    assert_eq!(server.request_count(), 2, "no call after the limit");

    let trajectory = read_trajectory(&dir.path().join(format!("{episode_id}.jsonl")))
        .await
        .unwrap();
    let costs: Vec<(Option<f64>, Option<f64>)> = trajectory
        .steps
        .iter()
        .map(|step| (step.tokens.cost_usd, step.tokens.episode_cost_usd))
        .collect();
    assert_eq!(
        costs,
        [(Some(0.0012), Some(0.0012)), (Some(0.0012), Some(0.0024))]
    );
    let end = trajectory.end.unwrap();
    assert_eq!(end.status, EpisodeStatus::CostLimit);
    assert_eq!(
        end.detail.as_deref(),
        Some("the cost limit ($0.002) was reached: $0.002400 spent, 2200 tokens used")
    );
    let model = trajectory.start.unwrap().model.unwrap();
    assert_eq!(model["limits"]["cost_usd"], 0.002, "{model}");
    assert_eq!(model["prices"][MODEL]["output_per_mtok"], 2.0, "{model}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_limit_ends_the_episode_with_token_limit_before_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(Script::default().with_fallback(bash_reply("ls")))
        .await
        .unwrap();
    let episode_id = unique_id("ux-tokens");
    // 1100 tokens per call: the limit 3000 is reached by the third call, and no fourth call is made.
    let (output, result) = run_episode(
        &server,
        &fixtures_file(),
        dir.path(),
        &episode_id,
        &[],
        &["--token-limit", "3000"],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    assert_eq!(result["status"], "token_limit", "{result}");
    assert_eq!(result["n_steps"], 3, "{result}");
    assert_eq!(
        result["cost_usd"],
        Value::Null,
        "no price, no cost: {result}"
    );
    assert_eq!(server.request_count(), 3);
    let trajectory = read_trajectory(&dir.path().join(format!("{episode_id}.jsonl")))
        .await
        .unwrap();
    let end = trajectory.end.unwrap();
    assert_eq!(end.status, EpisodeStatus::TokenLimit);
    assert!(
        end.detail
            .as_deref()
            .unwrap()
            .starts_with("the token limit (3000 tokens) was reached: 3300 tokens used"),
        "{:?}",
        end.detail
    );
    assert!(trajectory
        .steps
        .iter()
        .all(|step| step.tokens.cost_usd.is_none()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cost_limit_without_a_price_for_the_model_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = ScriptedServer::start(Script::default()).await.unwrap();
    let (output, _) = run_episode(
        &server,
        &fixtures_file(),
        dir.path(),
        &unique_id("ux-noprice"),
        &[],
        &["--cost-limit", "1"],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no price for model \"scripted-model\"") && stderr.contains("prices:"),
        "{stderr}"
    );
    assert_eq!(server.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jinja_template_with_dataset_fields_reaches_the_first_request() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture row with hints, as a one-row task file.
    let rows = std::fs::read_to_string(fixtures_file()).unwrap();
    let mut row: Value = rows
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|row| row["instance_id"] == TASK)
        .unwrap();
    row["hints_text"] = "Look at how merge() orders the ranges.".into();
    row["difficulty"] = "15 min".into();
    let tasks = write(dir.path(), "tasks.jsonl", &format!("{row}\n"));
    // Jinja renders a boolean as Python does (`True`), which is what users of Jinja templates expect.
    let config = write(
        dir.path(),
        "agent.yaml",
        "prompts:\n  user_template: |\n    Repo {{ repo }} v{{ version }} ({{ instance.difficulty }}).\n    \
         {% if hints_text %}Hints: {{ hints_text }}{% endif %}\n    Issue at {{ repo_root }}: {{ issue | length > 0 }}\n",
    );
    let server = ScriptedServer::start(Script::default().with_fallback(bash_reply("ls")))
        .await
        .unwrap();
    let (output, result) = run_episode(
        &server,
        &tasks,
        dir.path(),
        &unique_id("ux-template"),
        &[],
        &[
            "--agent-config",
            config.to_str().unwrap(),
            "--token-limit",
            "1",
        ],
    )
    .await;
    assert_eq!(result["status"], "token_limit", "{}", describe(&output));
    let first = &server.requests()[0].body;
    assert_eq!(
        first["messages"][1]["content"],
        format!(
            "Repo {} v{} (15 min).\nHints: Look at how merge() orders the ranges.\nIssue at /testbed: True\n",
            row["repo"].as_str().unwrap(),
            row["version"].as_str().unwrap()
        ),
        "{first}"
    );

    // A typo in a variable name is refused before anything runs, naming the variable and the template.
    let typo = write(
        dir.path(),
        "typo.yaml",
        "prompts:\n  user_template: \"{{ hint_text }}\"\n",
    );
    let (output, _) = run_episode(
        &server,
        &tasks,
        dir.path(),
        &unique_id("ux-typo"),
        &[],
        &["--agent-config", typo.to_str().unwrap()],
    )
    .await;
    assert_eq!(output.status.code(), Some(2), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("template user_template uses unknown variable `hint_text`"),
        "{stderr}"
    );
    assert_eq!(server.request_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn verbose_shows_whole_replies_and_a_slow_call_is_reported_while_it_waits() {
    let dir = tempfile::tempdir().unwrap();
    let long = format!("echo {}", "abcdefghij".repeat(30));
    // The first reply takes 11 s: past the 10 s after which stderr (not a terminal) reports the wait once.
    let server = ScriptedServer::start(Script::new(vec![ScriptedReply::Delayed {
        delay: Duration::from_secs(11),
        reply: Box::new(bash_reply(&long)),
    }]))
    .await
    .unwrap();
    let (output, result) = run_episode(
        &server,
        &fixtures_file(),
        dir.path(),
        &unique_id("ux-verbose"),
        &["-v"],
        &["--token-limit", "1"],
    )
    .await;
    assert_eq!(result["status"], "token_limit", "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The whole reply, 300 characters of argument, between markers; the step line still cuts it.
    assert!(
        stderr.contains(&format!(
            "----- model reply (step 0) -----\n[action]\n<tool: bash>\n{long}\n</tool>\n-----"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("step 0: bash echo abcdefghij"), "{stderr}");
    let prefix = format!("waiting for model {MODEL} at {}: ", server.base_url());
    let waits: Vec<u64> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix(prefix.as_str()))
        .map(|rest| rest.trim_end_matches(" s").parse().unwrap())
        .collect();
    assert_eq!(waits.len(), 1, "one report in 11 s: {stderr}");
    assert!((10..=11).contains(&waits[0]), "{waits:?}");
}
