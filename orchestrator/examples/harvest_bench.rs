//! Harvest throughput with a scripted model: rollouts per hour on this machine, and where the time goes.
//!
//! Starts a scripted OpenAI-compatible server whose replies resolve every task of the dataset (each rollout
//! writes the task's gold patch, applies it, submits it and answers; stateless per episode prefix, so every sample
//! gets the same replies), runs `swe-env harvest --json` over dataset × `--samples` with `--workers`, and prints
//! rollouts/hour, tokens/s and the shares of the rollouts' time spent starting containers, waiting for the model,
//! running tools and grading (the harvest's own `--json` figures).
//!
//! `cargo run -p swe-env --example harvest_bench -- --exe target/debug/swe-env [--samples 4] [--workers 4]
//! [--model-delay-ms 0] [--dataset fixtures] [--out target/harvest-bench]`
//!
//! Build the binary first (`cargo build -p swe-env`, or `--release` and `--exe target/release/swe-env`). The
//! dataset's images must exist (fixtures: `scripts/setup.sh`). `--model-delay-ms` adds a wait before every
//! model reply (a stand-in for generation time; 0 measures the environment alone).

use std::error::Error;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;
use swe_env_model::scripted::{Script, ScriptedCompletion, ScriptedReply, ScriptedServer};
use swe_env_model::Usage;

#[derive(Parser)]
struct Args {
    /// The `swe-env` binary to measure (debug or release).
    #[arg(long, default_value = "target/debug/swe-env")]
    exe: PathBuf,
    /// Dataset source (`fixtures`, an alias or a path); every row needs its gold `patch` and its image.
    #[arg(long, default_value = "fixtures")]
    dataset: String,
    /// Rollouts per task.
    #[arg(long, default_value_t = 4)]
    samples: u32,
    /// Rollouts in flight.
    #[arg(long, default_value_t = 4)]
    workers: u32,
    /// Wait before every model reply, in milliseconds.
    #[arg(long, default_value_t = 0)]
    model_delay_ms: u64,
    /// Output directory of the harvest (an earlier harvest there is replaced; any other non-empty directory is
    /// refused).
    #[arg(long, default_value = "target/harvest-bench")]
    out: PathBuf,
    /// Extra arguments passed to `swe-env harvest` as they are (after `--`).
    #[arg(last = true)]
    extra: Vec<String>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

/// A reply reporting usage (so tokens/s means something), after the configured delay.
fn reply(text: String, delay: Duration) -> ScriptedReply {
    let reply = ScriptedReply::Completion(ScriptedCompletion {
        usage: Some(Usage {
            prompt_tokens: 1500,
            completion_tokens: 60,
        }),
        text,
        ..ScriptedCompletion::default()
    });
    if delay.is_zero() {
        reply
    } else {
        ScriptedReply::delayed(delay, reply)
    }
}

/// The three turns that resolve a task: write and apply the gold patch, submit it, answer.
fn resolving_turns(patch: &str, delay: Duration) -> Vec<ScriptedReply> {
    let patch = if patch.ends_with('\n') {
        patch.to_owned()
    } else {
        format!("{patch}\n")
    };
    vec![
        reply(
            format!(
                "<tool: bash>\ncat > /tmp/fix.patch <<'SWE_ENV_PATCH_EOF'\n{patch}SWE_ENV_PATCH_EOF\ngit apply \
                 /tmp/fix.patch && git status --short\n</tool>"
            ),
            delay,
        ),
        reply("<tool: submit>\n/tmp/fix.patch\n</tool>".into(), delay),
        reply("Applied the fix and submitted it.".into(), delay),
    ]
}

async fn run(args: Args) -> Result<(), Box<dyn Error>> {
    if !args.exe.is_file() {
        return Err(format!(
            "{} does not exist: build it (`cargo build -p swe-env`) or pass --exe PATH",
            args.exe.display()
        )
        .into());
    }
    let dataset = swe_env::datasets::load_source(&args.dataset).await?;
    let delay = Duration::from_millis(args.model_delay_ms);
    let mut script = Script::default();
    for instance in &dataset.instances {
        script = script.with_episode_turns(
            format!("{}.", instance.instance_id),
            resolving_turns(&instance.patch, delay),
        );
    }
    let server = ScriptedServer::start(script).await?;
    // Only a missing directory or an earlier harvest (one with `harvest.json`) is replaced: anything else named
    // by `--out` is refused, never deleted.
    if args.out.exists() {
        let empty = std::fs::read_dir(&args.out)?.next().is_none();
        if !empty && !args.out.join("harvest.json").exists() {
            return Err(format!(
                "{} is not empty and is not a harvest directory: give a new --out",
                args.out.display()
            )
            .into());
        }
        std::fs::remove_dir_all(&args.out)?;
    }
    let planned = dataset.instances.len() as u64 * u64::from(args.samples);
    eprintln!(
        "harvest_bench: {} × {} tasks × {} samples = {planned} rollouts, {} workers, model delay {} ms",
        args.exe.display(),
        dataset.instances.len(),
        args.samples,
        args.workers,
        args.model_delay_ms
    );
    let output = tokio::process::Command::new(&args.exe)
        .args(["harvest", "--dataset", &args.dataset])
        .args([
            "--model-url",
            &server.base_url(),
            "--model",
            "harvest-bench",
        ])
        .args(["--mode", "chat-text", "--grading-network", "none", "--json"])
        .args(["--samples", &args.samples.to_string()])
        .args(["--workers", &args.workers.to_string(), "--out"])
        .arg(&args.out)
        .args(&args.extra)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
    else {
        return Err(format!(
            "no --json summary from the harvest ({}): {stdout}",
            output.status
        )
        .into());
    };
    let summary: Value = serde_json::from_str(line)?;
    print_report(&summary, args.workers, server.request_count());
    if !output.status.success() {
        return Err(format!("the harvest exited with {}", output.status).into());
    }
    Ok(())
}

fn print_report(summary: &Value, workers: u32, model_calls: usize) {
    let number = |value: &Value| value.as_f64().unwrap_or(0.0);
    let committed = number(&summary["committed_new"]);
    let wall_secs = number(&summary["wall_secs"]);
    println!(
        "rollouts: {committed} committed ({} resolved, {} failed) in {wall_secs:.1} s with {workers} workers",
        summary["resolved_total"], summary["failed"]
    );
    println!(
        "throughput: {:.0} rollouts/hour, {:.0} tokens/s, {model_calls} model calls",
        number(&summary["rollouts_per_hour"]),
        number(&summary["tokens_per_sec"])
    );
    let phases = ["start", "model", "tool", "grade"];
    let times: Vec<f64> = phases
        .iter()
        .map(|phase| number(&summary["time_ms"][phase]))
        .collect();
    let busy: f64 = times.iter().sum();
    // Worker time not inside a phase: waiting for a worker slot's next rollout, committing, cleaning up.
    let capacity = wall_secs * 1000.0 * f64::from(workers);
    let per_rollout = |ms: f64| if committed > 0.0 { ms / committed } else { 0.0 };
    println!("where the time goes (sums over the rollouts; share of the phases' total):");
    for (phase, ms) in phases.iter().zip(&times) {
        let share = if busy > 0.0 { 100.0 * ms / busy } else { 0.0 };
        println!(
            "  {phase:<6} {share:5.1}%  {:8.0} ms per rollout",
            per_rollout(*ms)
        );
    }
    println!(
        "  phases cover {:.1}% of worker time (wall × workers); the rest is scheduling, commit and clean-up",
        if capacity > 0.0 { 100.0 * busy / capacity } else { 0.0 }
    );
    println!("{summary}");
}
