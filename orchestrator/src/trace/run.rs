//! Tracing in containers: one test run of a task ([`trace_tests`]) or one entry point of any file ([`trace_entry`]).
//!
//! Each run is a fresh container of the image (network `none`), the tracer piped on stdin into `python - MODE …`, its
//! JSON-lines events written to a file inside the container and read back with one `cat` exec, then split into traces
//! (on the blocking pool: the file can be tens of MB) and output-prediction items. The container is removed on every
//! path: explicitly when the run ends or fails, and by the sandbox's drop when the future is dropped (cancellation).

use std::path::Path;
use std::time::{Duration, Instant};

use swe_env_grading::dataset::Instance;
use swe_env_grading::specs::{spec_for_instance, SWE_BENCH_REPO_DIR};
use swe_env_sandbox::{DockerEngine, DockerSandbox, SandboxConfig, SandboxError};
use swe_env_tools::shell_quote;
use tracing::{info, warn};

use crate::task;
use crate::trace::event::EventError;
use crate::trace::format::{render, LocalsStyle, Trace};
use crate::trace::items::{self, PredictionItem};
use crate::trace::split::{split_str, SplitOptions, SplitOutput, DEFAULT_MAX_TEST_FRAMES};
use crate::trace::TRACER_PY;
use crate::trajectory::digest::sha256_hex;

/// Operator maximum of `--max-repr` (characters of one value's repr).
pub const MAX_MAX_REPR: usize = 10_000;
/// Operator maximum of `--max-locals` (locals per frame).
pub const MAX_MAX_LOCALS: usize = 1_000;
/// Operator maximum of `--max-events` (events per test).
pub const MAX_MAX_EVENTS: u64 = 10_000_000;
/// Operator maximum of `--time-cap` (seconds of tracing per test).
pub const MAX_TIME_CAP_SECS: u64 = 3_600;
/// Operator maximum of `--max-bytes` (bytes of the events file): 60 MiB, so the file is read back in one exec.
pub const MAX_MAX_BYTES: u64 = 60 << 20;
/// Operator maximum of `--max-frames` (frames of one trace).
pub const MAX_MAX_FRAMES: usize = 100_000;
/// Operator maximum of `--max-test-frames`.
pub const MAX_MAX_TEST_FRAMES: u64 = 10_000_000;
/// Operator maximum of `--timeout` (seconds of the whole traced run in the container).
pub const MAX_TIMEOUT_SECS: u64 = 24 * 3_600;

/// Which code the tests run against.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TraceState {
    /// The base commit with the gold patch and the test patch applied (the FAIL_TO_PASS tests pass).
    #[default]
    Gold,
    /// The base commit with only the test patch applied (the FAIL_TO_PASS tests fail).
    Base,
}

impl TraceState {
    /// `gold` / `base`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gold => "gold",
            Self::Base => "base",
        }
    }
}

/// Caps, filters and settings of one traced run (the tracer's options plus the splitter's and the container's).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TraceOptions {
    /// `--root`: directories whose code is traced (empty = the tracer's default, `/testbed`).
    pub roots: Vec<String>,
    /// `--include`: fnmatch globs on absolute paths; a file must match one when any is given.
    pub include: Vec<String>,
    /// `--exclude`: fnmatch globs on absolute paths, on top of the tracer's default excludes.
    pub exclude: Vec<String>,
    /// `--max-repr`: characters of one value's repr.
    pub max_repr: usize,
    /// `--max-locals`: locals per frame.
    pub max_locals: usize,
    /// `--max-events`: events per test before tracing stops for that test.
    pub max_events: u64,
    /// `--time-cap`: seconds of tracing per test before tracing stops for that test.
    pub time_cap_secs: u64,
    /// `--max-bytes`: bytes of the whole events file.
    pub max_bytes: u64,
    /// `--max-frames`: frames of one trace; longer candidates are dropped (`too_long`).
    pub max_frames: usize,
    /// `--max-test-frames`: frames of all the traces one test keeps; later new traces are dropped (`over_budget`).
    #[serde(default = "default_max_test_frames")]
    pub max_test_frames: u64,
    /// `--entry-exclude`: globs of files whose functions open no trace (None = the SWE-bench test-file rule).
    pub entry_exclude: Option<Vec<String>>,
    /// `--timeout`: seconds of the whole traced run in the container.
    pub timeout_secs: u64,
    /// `--state`: gold (default) or base.
    pub state: TraceState,
}

impl Default for TraceOptions {
    fn default() -> Self {
        Self {
            roots: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            max_repr: 200,
            max_locals: 32,
            max_events: 200_000,
            time_cap_secs: 30,
            max_bytes: 48 << 20,
            max_frames: 2_000,
            max_test_frames: DEFAULT_MAX_TEST_FRAMES,
            entry_exclude: None,
            timeout_secs: 1_800,
            state: TraceState::Gold,
        }
    }
}

/// Why a traced run could not produce traces.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// An option is out of range.
    #[error("--{flag} {value} is out of range: it must be between {min} and {max}")]
    BadOption {
        /// The flag (without `--`).
        flag: &'static str,
        /// The value given.
        value: u64,
        /// The smallest accepted value.
        min: u64,
        /// The operator maximum.
        max: u64,
    },
    /// An option's text is not accepted (an empty root, a glob with a NUL, …).
    #[error("--{flag} {value:?} is not accepted: {reason}")]
    BadValue {
        /// The flag (without `--`).
        flag: &'static str,
        /// The value given.
        value: String,
        /// Why, and how to fix it.
        reason: &'static str,
    },
    /// The task's test command is not pytest.
    #[error(
        "task {instance_id}: its test command {test_cmd:?} is not pytest (`pytest …` or `python -m pytest …`); \
         only pytest test suites can be traced"
    )]
    UnsupportedRunner {
        /// The task.
        instance_id: String,
        /// Its test command.
        test_cmd: String,
    },
    /// The task has no test spec (no `test_cmd` and not a SWE-bench repository).
    #[error("task {instance_id}: {detail}")]
    Spec {
        /// The task.
        instance_id: String,
        /// What is missing.
        detail: String,
    },
    /// Bad input of `trace_entry` (a file that cannot be read, an empty entry).
    #[error("{0}")]
    Input(String),
    /// A patch of the task does not apply to its image.
    #[error("task {instance_id}: the {which} patch does not apply with git apply: {detail}")]
    PatchFailed {
        /// The task.
        instance_id: String,
        /// `gold` / `test`.
        which: &'static str,
        /// git's output (tail).
        detail: String,
    },
    /// The tracer did not run (python missing, killed, the events file unreadable).
    #[error("the tracer failed (exit {exit_code:?}): {detail}")]
    Tracer {
        /// The traced process's exit code.
        exit_code: Option<i64>,
        /// Its output (tail), or what is wrong with the events file.
        detail: String,
    },
    /// An events line does not parse (it names the line).
    #[error(transparent)]
    Event(#[from] EventError),
    /// Docker failed; check that the engine runs and the image exists.
    #[error("trace container failed: {0}")]
    Sandbox(SandboxError),
    /// The split task panicked or was cancelled.
    #[error("splitting the events failed: {0}")]
    Split(String),
}

// Not `#[from]`: the message already holds the sandbox error, which a `#[source]` would print a second time.
impl From<SandboxError> for TraceError {
    fn from(error: SandboxError) -> Self {
        Self::Sandbox(error)
    }
}

impl TraceError {
    /// The error is the caller's input (bad options, an unsupported task or one whose patch does not apply, a missing
    /// image or interpreter), as opposed to Docker or the tracer failing.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Self::BadOption { .. }
                | Self::BadValue { .. }
                | Self::UnsupportedRunner { .. }
                | Self::Spec { .. }
                | Self::Input(_)
                | Self::PatchFailed { .. }
                | Self::Sandbox(SandboxError::ImageNotFound { .. })
        )
    }
}

fn check_range(flag: &'static str, value: u64, min: u64, max: u64) -> Result<(), TraceError> {
    if value < min || value > max {
        return Err(TraceError::BadOption {
            flag,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn check_texts(flag: &'static str, values: &[String]) -> Result<(), TraceError> {
    for value in values {
        if value.trim().is_empty() {
            return Err(TraceError::BadValue {
                flag,
                value: value.clone(),
                reason: "it is empty; give a non-empty value or leave the flag out",
            });
        }
        if value.contains('\0') || value.contains('\n') {
            return Err(TraceError::BadValue {
                flag,
                value: value.clone(),
                reason: "it holds a NUL or a line break; remove it",
            });
        }
    }
    Ok(())
}

impl TraceOptions {
    /// Checks every number against its operator maximum (`MAX_*`) and every text option.
    pub fn validate(&self) -> Result<(), TraceError> {
        check_range("max-repr", self.max_repr as u64, 8, MAX_MAX_REPR as u64)?;
        check_range(
            "max-locals",
            self.max_locals as u64,
            0,
            MAX_MAX_LOCALS as u64,
        )?;
        check_range("max-events", self.max_events, 1, MAX_MAX_EVENTS)?;
        check_range("time-cap", self.time_cap_secs, 1, MAX_TIME_CAP_SECS)?;
        check_range("max-bytes", self.max_bytes, 4_096, MAX_MAX_BYTES)?;
        check_range(
            "max-frames",
            self.max_frames as u64,
            2,
            MAX_MAX_FRAMES as u64,
        )?;
        check_range(
            "max-test-frames",
            self.max_test_frames,
            1,
            MAX_MAX_TEST_FRAMES,
        )?;
        check_range("timeout", self.timeout_secs, 1, MAX_TIMEOUT_SECS)?;
        check_texts("root", &self.roots)?;
        for root in &self.roots {
            if !root.starts_with('/') {
                return Err(TraceError::BadValue {
                    flag: "root",
                    value: root.clone(),
                    reason:
                        "it is not an absolute path inside the container; give one such as /testbed",
                });
            }
        }
        check_texts("include", &self.include)?;
        check_texts("exclude", &self.exclude)?;
        if let Some(globs) = &self.entry_exclude {
            check_texts("entry-exclude", globs)?;
        }
        Ok(())
    }

    /// The splitter's options: `max_frames`, and `entry_exclude` or the SWE-bench test-file rule.
    pub fn split_options(&self) -> SplitOptions {
        let mut options = SplitOptions {
            max_frames: self.max_frames,
            max_test_frames: self.max_test_frames,
            ..SplitOptions::default()
        };
        if let Some(globs) = &self.entry_exclude {
            options.entry_exclude = globs.clone();
        }
        options
    }

    /// The time limit of the traced run.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

fn default_max_test_frames() -> u64 {
    DEFAULT_MAX_TEST_FRAMES
}

/// Where the tracer's files live inside a container.
pub const TRACE_DIR: &str = "/tmp/swe-env-trace";
/// A fresh name for the tracer's events file inside a container (`events-<64 random bits>.jsonl`): a traced program
/// that writes to a fixed path cannot clobber it by accident. (It runs as the same user, so one that looks for it can
/// still find it: traces of hostile code are not evidence.)
fn events_path() -> String {
    format!("{TRACE_DIR}/events-{:016x}.jsonl", rand::random::<u64>())
}
/// Time limit of each set-up step in a container (patch apply, file write, reading the events back).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Characters of the traced process's output kept for errors and the summary.
const OUTPUT_TAIL_CHARS: usize = 4_000;

/// How a task's tests are started: environment assignments that come before the runner, then pytest's arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PytestCommand {
    /// `NAME=value` words before the runner (kept, shell-quoted, before `python - pytest`).
    pub env: Vec<String>,
    /// The words after `pytest` / `python -m pytest`.
    pub args: Vec<String>,
}

/// Splits `text` into words as a POSIX shell does for plain words and quotes (`'…'`, `"…"` with `\` escapes of
/// `"`, `\`, `$`, `` ` ``, and `\` outside quotes). `None` when a quote is not closed or the text holds shell syntax
/// this cannot run as one command (`;`, `&`, `|`, `<`, `>`, `$`, `` ` ``, parentheses outside quotes).
pub fn shell_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' | '\n' => words.extend(word.take()),
            '\'' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        other => current.push(other),
                    }
                }
            }
            '"' => {
                let current = word.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            escaped @ ('"' | '\\' | '$' | '`') => current.push(escaped),
                            '\n' => {}
                            other => {
                                current.push('\\');
                                current.push(other);
                            }
                        },
                        '$' | '`' => return None,
                        other => current.push(other),
                    }
                }
            }
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(other) => word.get_or_insert_with(String::new).push(other),
                None => return None,
            },
            ';' | '&' | '|' | '<' | '>' | '$' | '`' | '(' | ')' => return None,
            other => word.get_or_insert_with(String::new).push(other),
        }
    }
    words.extend(word);
    Some(words)
}

/// The pytest invocation of a task's `test_cmd`: `[NAME=value …] pytest ARGS…`, `py.test ARGS…` or
/// `[NAME=value …] python[3[.X]] -m pytest ARGS…`. Any other runner (Django's `runtests.py`, sympy's `bin/test`,
/// tox, a command list) is [`TraceError::UnsupportedRunner`].
pub fn pytest_command(instance_id: &str, test_cmd: &str) -> Result<PytestCommand, TraceError> {
    let unsupported = || TraceError::UnsupportedRunner {
        instance_id: instance_id.to_owned(),
        test_cmd: test_cmd.to_owned(),
    };
    let words = shell_words(test_cmd).ok_or_else(unsupported)?;
    let is_assignment = |word: &str| {
        word.split_once('=').is_some_and(|(name, _)| {
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    };
    let runner_at = words
        .iter()
        .position(|w| !is_assignment(w))
        .ok_or_else(unsupported)?;
    let (env, rest) = words.split_at(runner_at);
    let runner = rest[0].rsplit('/').next().unwrap_or(&rest[0]);
    let is_python = runner == "python"
        || runner.strip_prefix("python").is_some_and(|version| {
            !version.is_empty() && version.chars().all(|c| c.is_ascii_digit() || c == '.')
        });
    let args = if runner == "pytest" || runner == "py.test" {
        &rest[1..]
    } else if is_python
        && rest.get(1).map(String::as_str) == Some("-m")
        && rest.get(2).map(String::as_str) == Some("pytest")
    {
        &rest[3..]
    } else {
        return Err(unsupported());
    };
    Ok(PytestCommand {
        env: env.to_vec(),
        args: args.to_vec(),
    })
}

/// The tracer's option flags for `opts` (shell-quoted, each with a leading space).
fn tracer_flags(opts: &TraceOptions, events: &str) -> String {
    let mut flags = format!(
        " --out {events} --max-repr {} --max-locals {} --max-events {} --time-cap {} --max-bytes {}",
        opts.max_repr, opts.max_locals, opts.max_events, opts.time_cap_secs, opts.max_bytes
    );
    for (flag, values) in [
        ("--root", &opts.roots),
        ("--include", &opts.include),
        ("--exclude", &opts.exclude),
    ] {
        for value in values {
            flags.push_str(&format!(" {flag} {}", shell_quote(value)));
        }
    }
    flags
}

/// The end of `text`, at most [`OUTPUT_TAIL_CHARS`] characters.
fn output_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(stderr));
    let skip = text.chars().count().saturating_sub(OUTPUT_TAIL_CHARS);
    text.chars().skip(skip).collect()
}

/// The traces of one run and what the run measured.
#[derive(Debug, Clone)]
pub struct TraceRun {
    /// What the split gave: the complete, deduplicated traces (in the order they completed), the counts, each
    /// traced test and its outcome, the caps hit, the tracer's own errors, the Python version, whether it ended.
    pub split: SplitOutput,
    /// Output-prediction items derived from the traces (those that qualify).
    pub items: Vec<PredictionItem>,
    /// Exit code of the traced process (pytest's, or 1 when the entry expression raised); `None` on a timeout.
    pub pytest_exit: Option<i64>,
    /// The traced process ran past `--timeout` (the events up to then are used).
    pub timed_out: bool,
    /// Size of the events file.
    pub events_bytes: u64,
    /// The end of the traced process's output (stdout then stderr).
    pub output_tail: String,
    /// Wall time of the whole run (container, set-up, tracing, split).
    pub elapsed: Duration,
}

/// One trace as a line of a traces file: the structured trace plus its CWM string.
#[derive(serde::Serialize)]
struct TraceLine<'a> {
    #[serde(flatten)]
    trace: &'a Trace,
    cwm: String,
}

impl TraceRun {
    /// The traces as JSON lines (the one layout of `swe-env trace --out` and of harvest shards): each trace's fields
    /// in their declaration order, then `"cwm"` = the trace rendered with `locals`.
    pub fn traces_jsonl(&self, locals: LocalsStyle) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = Vec::new();
        for trace in &self.split.traces {
            let cwm = render(trace, locals);
            serde_json::to_writer(&mut bytes, &TraceLine { trace, cwm })?;
            bytes.push(b'\n');
        }
        Ok(bytes)
    }

    /// The output-prediction items as JSON lines.
    pub fn items_jsonl(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut bytes = Vec::new();
        for item in &self.items {
            serde_json::to_writer(&mut bytes, item)?;
            bytes.push(b'\n');
        }
        Ok(bytes)
    }

    /// Frames of all traces.
    pub fn frames(&self) -> u64 {
        self.split
            .traces
            .iter()
            .map(|trace| trace.frames.len() as u64)
            .sum()
    }
}

/// What the traced process left in its container.
struct RawRun {
    events: Vec<u8>,
    exit_code: Option<i64>,
    timed_out: bool,
    output_tail: String,
}

fn container_config() -> SandboxConfig {
    SandboxConfig {
        network_mode: "none".to_owned(),
        workdir: "/".to_owned(),
        ..SandboxConfig::default()
    }
}

async fn remove_container(sandbox: &DockerSandbox) {
    if let Err(error) = sandbox.remove().await {
        warn!(container = sandbox.id(), %error, "removing a trace container failed; `swe-env gc` will remove it");
    }
}

/// Runs `script` (bash) with the tracer on its stdin, then reads the events file back with one `cat`.
async fn run_tracer(
    sandbox: &DockerSandbox,
    script: &str,
    events: &str,
    opts: &TraceOptions,
) -> Result<RawRun, TraceError> {
    let out = sandbox
        .exec(
            &["bash", "-c", script],
            Some(TRACER_PY.as_bytes()),
            opts.timeout(),
        )
        .await?;
    let tail = output_tail(&out.stdout, &out.stderr);
    let read = sandbox.exec(&["cat", events], None, STEP_TIMEOUT).await?;
    if read.exit_code != Some(0) && out.exit_code == Some(127) {
        return Err(TraceError::Input(format!(
            "the interpreter (or a command before it) was not found in the image (exit 127): {}",
            tail.trim_end()
        )));
    }
    if read.exit_code != Some(0) {
        return Err(TraceError::Tracer {
            exit_code: out.exit_code,
            detail: format!(
                "it wrote no events file ({}); its output ends: {tail}",
                String::from_utf8_lossy(&read.stderr).trim()
            ),
        });
    }
    if read.stdout_truncated {
        return Err(TraceError::Tracer {
            exit_code: out.exit_code,
            detail: format!(
                "the events file is larger than this swe-env reads in one go; lower --max-bytes (at most {MAX_MAX_BYTES})"
            ),
        });
    }
    Ok(RawRun {
        events: read.stdout,
        exit_code: out.exit_code,
        timed_out: out.timed_out,
        output_tail: tail,
    })
}

/// Parses and splits the events on the blocking pool, derives the items, and assembles the run.
async fn finish_run(
    raw: RawRun,
    opts: &TraceOptions,
    started: Instant,
) -> Result<TraceRun, TraceError> {
    let split_options = opts.split_options();
    let RawRun {
        events,
        exit_code,
        timed_out,
        output_tail,
    } = raw;
    let events_bytes = events.len() as u64;
    let output = tokio::task::spawn_blocking(move || {
        split_str(&String::from_utf8_lossy(&events), split_options)
    })
    .await
    .map_err(|error| TraceError::Split(error.to_string()))??;
    // One item per distinct (code, call, output): two traces of the same call often give the same item.
    let mut seen = std::collections::HashSet::new();
    let items = output
        .traces
        .iter()
        .filter_map(items::items)
        .filter(|item| seen.insert(item.id.clone()))
        .collect();
    Ok(TraceRun {
        split: output,
        items,
        pytest_exit: exit_code,
        timed_out,
        events_bytes,
        output_tail,
        elapsed: started.elapsed(),
    })
}

/// Traces the tests `nodeids` of task `row` in a fresh container of `image`: the gold patch (unless
/// `opts.state` is `Base`) and the test patch applied, the task's activation, pytest with the task's own arguments
/// run in-process by the tracer. The container is removed on every path (dropping the future removes it too).
pub async fn trace_tests(
    engine: &DockerEngine,
    row: &Instance,
    image: &str,
    nodeids: &[String],
    opts: &TraceOptions,
) -> Result<TraceRun, TraceError> {
    let started = Instant::now();
    opts.validate()?;
    if nodeids.is_empty() {
        return Err(TraceError::Input(format!(
            "task {}: no test to trace; give at least one test node id",
            row.instance_id
        )));
    }
    let test_cmd = match &row.test_cmd {
        Some(test_cmd) => test_cmd.clone(),
        None => {
            spec_for_instance(row)
                .map_err(|error| TraceError::Spec {
                    instance_id: row.instance_id.clone(),
                    detail: error.to_string(),
                })?
                .spec
                .test_cmd
        }
    };
    let command = pytest_command(&row.instance_id, &test_cmd)?;
    let quote_all = |words: &[String]| {
        words
            .iter()
            .map(|word| format!(" {}", shell_quote(word)))
            .collect::<String>()
    };
    let events = events_path();
    let script = format!(
        "{}\ncd {SWE_BENCH_REPO_DIR} && mkdir -p {TRACE_DIR} && {}python - pytest{} --{}{}",
        task::activation_for(row),
        command
            .env
            .iter()
            .map(|assignment| format!("{} ", shell_quote_assignment(assignment)))
            .collect::<String>(),
        tracer_flags(opts, &events),
        quote_all(&command.args),
        quote_all(nodeids),
    );
    let episode = format!(
        "trace-{}",
        &sha256_hex(format!("{}\n{}", row.instance_id, nodeids.join("\n")).as_bytes())[..12]
    );
    info!(instance_id = %row.instance_id, %image, tests = nodeids.len(), state = opts.state.as_str(), "tracing tests");
    let sandbox = engine
        .create_sandbox(image, &episode, container_config())
        .await?;
    let raw = async {
        if opts.state == TraceState::Gold {
            apply_patch(&sandbox, row, "gold", &row.patch).await?;
        }
        apply_patch(&sandbox, row, "test", &row.test_patch).await?;
        run_tracer(&sandbox, &script, &events, opts).await
    }
    .await;
    remove_container(&sandbox).await;
    finish_run(raw?, opts, started).await
}

/// `NAME=value` with the value shell-quoted.
fn shell_quote_assignment(assignment: &str) -> String {
    match assignment.split_once('=') {
        Some((name, value)) => format!("{name}={}", shell_quote(value)),
        None => shell_quote(assignment),
    }
}

/// `git apply -v` of `patch` (on stdin) in the repository; an empty patch is nothing to apply.
async fn apply_patch(
    sandbox: &DockerSandbox,
    row: &Instance,
    which: &'static str,
    patch: &str,
) -> Result<(), TraceError> {
    if patch.trim().is_empty() {
        return Ok(());
    }
    let script = format!("cd {SWE_BENCH_REPO_DIR} && git apply -v -");
    let out = sandbox
        .exec(
            &["bash", "-c", &script],
            Some(patch.as_bytes()),
            STEP_TIMEOUT,
        )
        .await?;
    if out.exit_code != Some(0) {
        return Err(TraceError::PatchFailed {
            instance_id: row.instance_id.clone(),
            which,
            detail: output_tail(&out.stdout, &out.stderr),
        });
    }
    Ok(())
}

/// Traces `entry` (a Python expression, e.g. `main([1, 2])`) evaluated in the globals of `host_file`, run as a
/// module in a fresh container of `image` with `python` (a program name or path in the image). The file is
/// written into the container at `/tmp/swe-env-trace/<basename>`, whose directory is traced along with the roots.
pub async fn trace_entry(
    engine: &DockerEngine,
    image: &str,
    host_file: &Path,
    entry: &str,
    python: &str,
    opts: &TraceOptions,
) -> Result<TraceRun, TraceError> {
    let started = Instant::now();
    opts.validate()?;
    // The file the user names is the code under study: the test-file rule (`test_*.py`, …) that keeps a task's
    // test functions from opening traces does not apply to it unless --entry-exclude says so.
    let mut entry_opts = opts.clone();
    entry_opts.entry_exclude.get_or_insert_with(Vec::new);
    let opts = &entry_opts;
    if entry.trim().is_empty() {
        return Err(TraceError::Input(
            "--entry is empty; give a Python expression such as `main()`".to_owned(),
        ));
    }
    if python.trim().is_empty() {
        return Err(TraceError::Input(
            "--python is empty; give the interpreter's name or path in the image, such as python3"
                .to_owned(),
        ));
    }
    let name = host_file
        .file_name()
        .and_then(|name| name.to_str())
        .filter(|name| !name.starts_with("events-"))
        .ok_or_else(|| {
            TraceError::Input(format!(
                "{}: not a file name swe-env can copy into the container; rename it (e.g. main.py)",
                host_file.display()
            ))
        })?
        .to_owned();
    let source = tokio::fs::read(host_file).await.map_err(|error| {
        TraceError::Input(format!("cannot read {}: {error}", host_file.display()))
    })?;
    let container_file = format!("{TRACE_DIR}/{name}");
    let events = events_path();
    let script = format!(
        "cd {TRACE_DIR} && {} - entry{} --file {} --entry {}",
        shell_quote(python),
        tracer_flags(opts, &events),
        shell_quote(&container_file),
        shell_quote(entry),
    );
    let episode = format!(
        "trace-entry-{}",
        &sha256_hex(format!("{image}\n{name}\n{entry}").as_bytes())[..12]
    );
    info!(%image, file = %host_file.display(), %entry, "tracing an entry point");
    let sandbox = engine
        .create_sandbox(image, &episode, container_config())
        .await?;
    let raw = async {
        let out = sandbox
            .exec(&["mkdir", "-p", TRACE_DIR], None, STEP_TIMEOUT)
            .await?;
        if out.exit_code != Some(0) {
            return Err(TraceError::Tracer {
                exit_code: out.exit_code,
                detail: format!(
                    "cannot create {TRACE_DIR}: {}",
                    output_tail(&out.stdout, &out.stderr)
                ),
            });
        }
        sandbox.write_bytes(&container_file, &source).await?;
        run_tracer(&sandbox, &script, &events, opts).await
    }
    .await;
    remove_container(&sandbox).await;
    finish_run(raw?, opts, started).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_options_are_valid_and_every_maximum_is_accepted() {
        TraceOptions::default().validate().unwrap();
        let at_max = TraceOptions {
            max_repr: MAX_MAX_REPR,
            max_locals: MAX_MAX_LOCALS,
            max_events: MAX_MAX_EVENTS,
            time_cap_secs: MAX_TIME_CAP_SECS,
            max_bytes: MAX_MAX_BYTES,
            max_frames: MAX_MAX_FRAMES,
            max_test_frames: MAX_MAX_TEST_FRAMES,
            timeout_secs: MAX_TIMEOUT_SECS,
            roots: words(&["/testbed", "/opt/lib"]),
            include: words(&["*/src/*"]),
            exclude: words(&["*/vendor/*"]),
            entry_exclude: Some(words(&["*/_compat.py"])),
            state: TraceState::Base,
        };
        at_max.validate().unwrap();
    }

    #[test]
    fn options_above_the_maximum_name_the_flag_and_the_maximum() {
        type Set = fn(&mut TraceOptions);
        let cases: [(&str, Set, u64); 8] = [
            (
                "max-repr",
                |o| o.max_repr = MAX_MAX_REPR + 1,
                MAX_MAX_REPR as u64,
            ),
            (
                "max-locals",
                |o| o.max_locals = MAX_MAX_LOCALS + 1,
                MAX_MAX_LOCALS as u64,
            ),
            (
                "max-events",
                |o| o.max_events = MAX_MAX_EVENTS + 1,
                MAX_MAX_EVENTS,
            ),
            (
                "time-cap",
                |o| o.time_cap_secs = MAX_TIME_CAP_SECS + 1,
                MAX_TIME_CAP_SECS,
            ),
            (
                "max-bytes",
                |o| o.max_bytes = MAX_MAX_BYTES + 1,
                MAX_MAX_BYTES,
            ),
            (
                "max-frames",
                |o| o.max_frames = MAX_MAX_FRAMES + 1,
                MAX_MAX_FRAMES as u64,
            ),
            (
                "max-test-frames",
                |o| o.max_test_frames = MAX_MAX_TEST_FRAMES + 1,
                MAX_MAX_TEST_FRAMES,
            ),
            (
                "timeout",
                |o| o.timeout_secs = MAX_TIMEOUT_SECS + 1,
                MAX_TIMEOUT_SECS,
            ),
        ];
        for (flag, set, max) in cases {
            let mut options = TraceOptions::default();
            set(&mut options);
            let error = options.validate().unwrap_err();
            assert!(error.is_input(), "{flag}: {error}");
            let message = error.to_string();
            assert!(message.starts_with(&format!("--{flag} ")), "{message}");
            assert!(message.contains(&max.to_string()), "{message}");
        }
        // Zero caps make no sense either.
        for set in [
            (|o: &mut TraceOptions| o.max_events = 0) as fn(&mut TraceOptions),
            |o| o.time_cap_secs = 0,
            |o| o.timeout_secs = 0,
            |o| o.max_frames = 0,
        ] {
            let mut options = TraceOptions::default();
            set(&mut options);
            assert!(options.validate().is_err());
        }
    }

    #[test]
    fn bad_texts_are_refused_with_the_flag_named() {
        let cases = [
            (
                TraceOptions {
                    roots: words(&["testbed"]),
                    ..TraceOptions::default()
                },
                "--root \"testbed\"",
            ),
            (
                TraceOptions {
                    include: words(&[""]),
                    ..TraceOptions::default()
                },
                "--include",
            ),
            (
                TraceOptions {
                    exclude: words(&["a\nb"]),
                    ..TraceOptions::default()
                },
                "--exclude",
            ),
            (
                TraceOptions {
                    entry_exclude: Some(words(&[" "])),
                    ..TraceOptions::default()
                },
                "--entry-exclude",
            ),
        ];
        for (options, flag) in cases {
            let message = options.validate().unwrap_err().to_string();
            assert!(message.starts_with(flag), "{message}");
        }
    }

    #[test]
    fn entry_exclude_defaults_to_the_test_file_rule() {
        let options = TraceOptions::default().split_options();
        assert!(options.excludes_entry("tests/test_ops.py"));
        assert!(!options.excludes_entry("src/spans/ops.py"));
        let custom = TraceOptions {
            entry_exclude: Some(words(&["*/ops.py"])),
            max_frames: 7,
            ..TraceOptions::default()
        }
        .split_options();
        assert_eq!(custom.max_frames, 7);
        assert!(custom.excludes_entry("src/spans/ops.py"));
        assert!(!custom.excludes_entry("tests/test_ops.py"));
    }

    #[test]
    fn pytest_arguments_come_from_the_task_test_command() {
        let ok = |cmd: &str| pytest_command("t", cmd).unwrap();
        assert_eq!(
            ok("pytest -rA -p no:cacheprovider").args,
            words(&["-rA", "-p", "no:cacheprovider"])
        );
        assert_eq!(ok("pytest").args, Vec::<String>::new());
        assert_eq!(ok("python -m pytest -rA").args, words(&["-rA"]));
        assert_eq!(ok("python3.9 -m pytest -x").args, words(&["-x"]));
        assert_eq!(ok("/opt/venv/bin/pytest -q").args, words(&["-q"]));
        assert_eq!(ok("py.test --tb=short").args, words(&["--tb=short"]));
        assert_eq!(
            ok("pytest --no-header -rA --tb=no -p no:cacheprovider -W 'ignore::DeprecationWarning'").args,
            words(&["--no-header", "-rA", "--tb=no", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning"])
        );
        let with_env = ok("PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' DJANGO_X=1 pytest -k \"a and b\"");
        assert_eq!(
            with_env.env,
            words(&[
                "PYTHONWARNINGS=ignore::UserWarning,ignore::SyntaxWarning",
                "DJANGO_X=1"
            ])
        );
        assert_eq!(with_env.args, words(&["-k", "a and b"]));
        assert_eq!(
            shell_quote_assignment(&with_env.env[0]),
            "PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning'"
        );
    }

    #[test]
    fn other_runners_are_unsupported_and_name_the_command() {
        for cmd in [
            "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1",
            "PYTHONWARNINGS='ignore::UserWarning' bin/test -C --verbose",
            "tox --current-env -epy39 -v --",
            "python -m unittest",
            "python pytest",
            "pytest -rA; rm -rf /",
            "pytest -rA && echo done",
            "pytest $ARGS",
            "pytest 'unclosed",
            "",
            "A=1",
        ] {
            let error = pytest_command("task-1", cmd).unwrap_err();
            assert!(
                matches!(error, TraceError::UnsupportedRunner { .. }),
                "{cmd}: {error}"
            );
            assert!(error.is_input());
            let message = error.to_string();
            assert!(
                message.contains("task-1") && message.contains(&format!("{cmd:?}")),
                "{message}"
            );
        }
    }

    #[test]
    fn shell_words_follow_posix_quoting() {
        assert_eq!(
            shell_words(r#"a 'b c' "d \"e\" \$" f\ g"#).unwrap(),
            words(&["a", "b c", "d \"e\" $", "f g"])
        );
        assert_eq!(shell_words("''").unwrap(), words(&[""]));
        assert_eq!(shell_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(shell_words(r#""a\b""#).unwrap(), words(&["a\\b"]));
        assert!(shell_words("a \"b").is_none());
    }

    #[test]
    fn tracer_flags_quote_every_value() {
        let options = TraceOptions {
            roots: words(&["/testbed"]),
            include: words(&["*/it's/*"]),
            ..TraceOptions::default()
        };
        let events = events_path();
        let flags = tracer_flags(&options, &events);
        assert!(flags.contains(" --root '/testbed'"), "{flags}");
        assert!(flags.contains(r#" --include '*/it'\''s/*'"#), "{flags}");
        assert!(flags.contains(" --max-bytes 50331648"), "{flags}");
        assert!(flags.starts_with(&format!(" --out {events} ")), "{flags}");
        // A fresh name each run, in the tracer's directory.
        assert!(events.starts_with("/tmp/swe-env-trace/events-") && events.ends_with(".jsonl"));
        assert_ne!(events, events_path());
    }
}
