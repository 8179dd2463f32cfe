//! Generated reproduction tests: the test-generation episode's prompt, the validity check of a generated test
//! (fresh container at the base commit: parses, finishes within the time limit, prints `Issue reproduced` and
//! neither `Issue resolved` nor `Other issues`), and a run of a valid test against a candidate patch (fresh
//! container at the base commit, the patch applied with the reference chain and its file deleted, the test run).
//! The script runs as the prompt says: `python -u test_issue.py` from the repository directory, its stdout and
//! stderr to files in the container, the verdict lines found by a scan of the whole stdout there. No agent ever
//! acts in these containers; they are removed on every path.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use swe_env_grading::dataset::Instance;
use swe_env_grading::specs::SWE_BENCH_REPO_DIR;
use swe_env_sandbox::{DockerEngine, DockerSandbox, ExecOutput, SandboxConfig, SandboxError};
use tracing::{info, warn};

use super::{applied_method, apply_chain_script, ApplyChain};
use crate::task::activation_for;

/// The line a generated test prints when the issue is present.
pub const REPRODUCED: &str = "Issue reproduced";
/// The line a generated test prints when the issue is fixed.
pub const RESOLVED: &str = "Issue resolved";
/// The line a generated test prints when something else went wrong.
pub const OTHER_ISSUES: &str = "Other issues";

/// Default of `--testgen-timeout` (seconds one run of a generated test may take).
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Operator maximum of `--testgen-timeout`.
pub const MAX_TIMEOUT_SECS: u64 = 3600;
/// Largest generated test accepted (bytes); a larger submission is rejected `too_large`.
pub const MAX_SCRIPT_BYTES: usize = 256 * 1024;

/// The default user prompt of a test-generation episode (placeholders `issue`, `repo_root`, like the solving
/// prompt).
pub const DEFAULT_TESTGEN_TEMPLATE: &str = "\
Write a script that reproduces the issue below. Your task is the script, not a fix: the script is what you \
hand in.

<issue_description>
{{issue}}
</issue_description>

The repository is at {{repo_root}} with its dependencies installed, and the shell starts there. Read the \
code until you know what behaviour the issue describes and what the correct behaviour is, then write a \
standalone Python script, for example {{repo_root}}/test_issue.py, that tells the two apart:

* It is a plain script, run as `python test_issue.py` from {{repo_root}}: no test framework (no pytest, no \
unittest runner), and it imports the repository's code as installed, the way a user of the package would.
* For each case it checks it prints exactly one of these lines, alone on its line:
  - `Issue reproduced` when the behaviour described in the issue shows (the bug is there);
  - `Issue resolved` when the behaviour is the correct one (the bug is fixed);
  - `Other issues` when anything else happens, for example an unexpected exception or an outcome that is \
neither the bug nor the fix. Catch exceptions so that an unexpected one prints `Other issues`.
* On the code as it is now every case must print `Issue reproduced`; once the issue is fixed every case \
must print `Issue resolved`. Compare results with the exact values the issue expects, not just that the \
code runs.
* It must not modify the repository's code or files, must not need the network, and must finish within a \
few seconds.

Run the script and check that it prints `Issue reproduced` on the current code. You may try a fix in the \
repository to check that the script then prints `Issue resolved`; only the script is kept, and it is run \
later against the unchanged repository and against candidate fixes. When it is ready, give the script's \
path (for example {{repo_root}}/test_issue.py) to the submit tool. You may submit several times; the last \
submission counts. Then end with a short final report in markdown: what the issue is, what the script \
checks and what it printed.";

/// Limits of a generated test's runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestgenLimits {
    /// Time limit of one run of the script.
    pub timeout: Duration,
    /// Largest script accepted.
    pub max_script_bytes: usize,
}

impl Default for TestgenLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_script_bytes: MAX_SCRIPT_BYTES,
        }
    }
}

/// What one run of a generated test printed (each verdict line matched whole, surrounding whitespace ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptRun {
    /// A line `Issue reproduced` was printed (stdout).
    pub reproduced: bool,
    /// A line `Issue resolved` was printed.
    pub resolved: bool,
    /// A line `Other issues` was printed.
    pub other_issues: bool,
    /// The script's exit code (`None` when killed).
    pub exit_code: Option<i32>,
    /// Killed at the time limit.
    pub timed_out: bool,
    /// The end of its output (stdout then stderr, at most a few KiB), for the record.
    pub output_tail: String,
}

impl ScriptRun {
    /// Prints `Issue resolved` and neither other line, within the time limit.
    pub fn passed(&self) -> bool {
        self.resolved && !self.reproduced && !self.other_issues && !self.timed_out
    }
}

/// Which verdict lines `stdout` holds: `(reproduced, resolved, other_issues)`. A line (split on `\n`) counts when
/// it equals the phrase once the ASCII whitespace around it (space, `\t`, `\r`, `\v`, `\f`: the C locale's
/// `[[:space:]]`) is taken off; the in-container scan of a run's output ([`validate_test`], [`run_test_on_patch`])
/// applies exactly this rule.
pub fn verdict_lines(stdout: &[u8]) -> (bool, bool, bool) {
    let text = String::from_utf8_lossy(stdout);
    let (mut reproduced, mut resolved, mut other_issues) = (false, false, false);
    // `split('\n')` then the trim also takes a `\r` before the `\n`, a lone `\r` of progress output, indentation.
    for line in text.split('\n').map(|line| line.trim_matches(is_c_space)) {
        match line {
            REPRODUCED => reproduced = true,
            RESOLVED => resolved = true,
            OTHER_ISSUES => other_issues = true,
            _ => {}
        }
    }
    (reproduced, resolved, other_issues)
}

/// The C locale's `[[:space:]]` (what `grep` and `sed` of the in-container scan trim).
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Why a generated test is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// The episode submitted nothing.
    NoSubmission,
    /// Larger than [`TestgenLimits::max_script_bytes`].
    TooLarge,
    /// Python cannot compile it.
    SyntaxError,
    /// It did not finish within the time limit at the base commit.
    Timeout,
    /// It printed `Issue resolved` at the base commit (the issue is there: the test cannot tell).
    PrintsResolvedAtBase,
    /// It printed `Other issues` at the base commit.
    PrintsOtherIssues,
    /// It printed no `Issue reproduced` line at the base commit.
    NotReproduced,
}

impl Rejection {
    /// The snake_case name recorded in `testgen.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSubmission => "no_submission",
            Self::TooLarge => "too_large",
            Self::SyntaxError => "syntax_error",
            Self::Timeout => "timeout",
            Self::PrintsResolvedAtBase => "prints_resolved_at_base",
            Self::PrintsOtherIssues => "prints_other_issues",
            Self::NotReproduced => "not_reproduced",
        }
    }
}

/// The validity check of one generated test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validation {
    /// Valid: usable by `--select tests`.
    pub valid: bool,
    /// Why not (`None` when valid).
    pub reason: Option<Rejection>,
    /// What happened, in words (the compile error, the verdict lines seen, …).
    pub detail: String,
    /// The run at the base commit (`None` when it did not run: no submission, too large, syntax error).
    pub run: Option<ScriptRun>,
    /// Wall time of the container (create → removed), ms.
    pub container_ms: u64,
}

/// A valid test run against one candidate patch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairRun {
    /// The test passed on the patched tree (see [`ScriptRun::passed`]).
    pub passed: bool,
    /// The patch applied (the reference apply chain); when it did not, the test did not run and `passed` is false.
    pub patch_applied: bool,
    /// The run (`None` when the patch did not apply).
    pub run: Option<ScriptRun>,
    /// Wall time of the container, ms.
    pub container_ms: u64,
}

/// Infrastructure failures (the verdicts above are data, never errors).
#[derive(Debug, thiserror::Error)]
pub enum TestgenError {
    /// The container could not be created or used.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// Checks `script` in a fresh container of `image` (network none) at the task's base commit: size, compiles,
/// then runs it as the prompt says, `python -u test_issue.py` in the repository directory (the script written to
/// `<repo>/test_issue.py`; `<repo>/test_issue_swe_env.py` when the repository already has a file of that name),
/// under the task's activation, within `limits.timeout`. Its stdout and stderr go to files in the container, so a
/// verdict line counts wherever it is in an output of any size.
/// `name` names the container (unique per call; characters Docker refuses in a name become `-`). No submission
/// and too large are decided without a container (`container_ms` 0). Errors are infrastructure only: Docker, or an
/// environment in which `python` cannot be started at all (exit 126/127 under the task's activation).
pub async fn validate_test(
    engine: &DockerEngine,
    instance: &Instance,
    image: &str,
    script: Option<&str>,
    limits: &TestgenLimits,
    name: &str,
) -> Result<Validation, TestgenError> {
    let instance_id = instance.instance_id.as_str();
    let Some(script) = script.filter(|script| !script.trim().is_empty()) else {
        info!(
            instance_id,
            reason = "no_submission",
            "generated test rejected"
        );
        return Ok(rejected(
            Rejection::NoSubmission,
            "the test-generation episode submitted no script (nothing, or only whitespace)"
                .to_owned(),
            None,
            0,
        ));
    };
    if script.len() > limits.max_script_bytes {
        info!(
            instance_id,
            bytes = script.len(),
            reason = "too_large",
            "generated test rejected"
        );
        return Ok(rejected(
            Rejection::TooLarge,
            format!(
                "the script is {} bytes, more than the limit of {} bytes",
                script.len(),
                limits.max_script_bytes
            ),
            None,
            0,
        ));
    }
    let started = Instant::now();
    let sandbox = engine
        .create_sandbox(image, &episode_name(name), container_config())
        .await?;
    info!(instance_id, container = sandbox.id(), %image, "validating a generated test");
    let checked = async {
        let name = place_script(&sandbox, script).await?;
        if let Some(failure) = compile_script(&sandbox, instance, limits, &name).await? {
            return Ok(Err(failure));
        }
        let run = run_script(&sandbox, instance, limits, &name).await?;
        Ok::<_, SandboxError>(Ok((run, name)))
    }
    .await;
    remove_container(&sandbox, instance_id).await;
    let container_ms = elapsed_ms(started);
    let validation = match checked? {
        Err(CompileFailure::TimedOut) => rejected(
            Rejection::Timeout,
            format!(
                "compiling the script did not finish within {}: it was killed",
                seconds(limits.timeout)
            ),
            None,
            container_ms,
        ),
        Err(CompileFailure::Error(detail)) => rejected(
            Rejection::SyntaxError,
            format!("Python cannot compile the script: {detail}"),
            None,
            container_ms,
        ),
        Ok((run, name)) => {
            let (reason, mut detail) = classify(&run, limits);
            if name != SCRIPT_NAMES[0] {
                detail.push_str(&renamed_note(&name));
            }
            Validation {
                valid: reason.is_none(),
                reason,
                detail,
                run: Some(run),
                container_ms,
            }
        }
    };
    info!(
        instance_id,
        valid = validation.valid,
        container = sandbox.id(),
        reason = validation.reason.map(Rejection::as_str),
        container_ms,
        "generated test checked"
    );
    Ok(validation)
}

/// Runs the (valid) test `script` against `patch` in a fresh container of `image` (network none) at the base
/// commit: the patch applied with the reference apply chain from a temporary file outside the repository that is
/// deleted before the script runs (the script cannot tell a candidate run from the validity run by looking for
/// it), then the script as in [`validate_test`] (no compile check: the script is a valid one; written only after
/// the patch applied, so a candidate that adds its own `test_issue.py` keeps it and the script runs as
/// `test_issue_swe_env.py`). A zero-length patch applies trivially, as in grading.
pub async fn run_test_on_patch(
    engine: &DockerEngine,
    instance: &Instance,
    image: &str,
    patch: &str,
    script: &str,
    limits: &TestgenLimits,
    name: &str,
) -> Result<PairRun, TestgenError> {
    let instance_id = instance.instance_id.as_str();
    let started = Instant::now();
    let sandbox = engine
        .create_sandbox(image, &episode_name(name), container_config())
        .await?;
    info!(instance_id, container = sandbox.id(), %image, "running a generated test on a candidate patch");
    let outcome = async {
        if !apply_patch(&sandbox, patch).await? {
            return Ok(None);
        }
        let name = place_script(&sandbox, script).await?;
        if name != SCRIPT_NAMES[0] {
            info!(
                instance_id,
                script = %name,
                "the candidate patch has its own test_issue.py: the generated test runs under another name"
            );
        }
        run_script(&sandbox, instance, limits, &name).await.map(Some)
    }
    .await;
    remove_container(&sandbox, instance_id).await;
    let container_ms = elapsed_ms(started);
    let pair = match outcome? {
        None => PairRun {
            passed: false,
            patch_applied: false,
            run: None,
            container_ms,
        },
        Some(run) => PairRun {
            passed: run.passed(),
            patch_applied: true,
            run: Some(run),
            container_ms,
        },
    };
    info!(
        instance_id,
        passed = pair.passed,
        container = sandbox.id(),
        patch_applied = pair.patch_applied,
        container_ms,
        "generated test run on a candidate patch"
    );
    Ok(pair)
}

/// The script's file names in the repository directory, in order of preference: the first that does not exist
/// yet (a candidate patch may add a `test_issue.py`; never overwritten). When all of these exist,
/// `test_issue_swe_env_<n>.py` with the first free `n`.
const SCRIPT_NAMES: [&str; 2] = ["test_issue.py", "test_issue_swe_env.py"];
/// Where a run's stdout and stderr go (made fresh before the run).
const RUN_DIR: &str = "/tmp/swe-env-testgen-run";
/// The script's stdout.
const STDOUT_PATH: &str = "/tmp/swe-env-testgen-run/stdout";
/// The script's stderr.
const STDERR_PATH: &str = "/tmp/swe-env-testgen-run/stderr";
/// The temporary directory of the candidate patch: deleted (with anything the apply chain left in it) once the
/// patch applied or failed, before the script runs.
const PATCH_DIR: &str = "/tmp/swe-env-apply-candidate";
/// The candidate patch's path inside a container.
const PATCH_PATH: &str = "/tmp/swe-env-apply-candidate/candidate.patch";
/// The in-container scan of the script's stdout for verdict lines: every whole line that is a verdict phrase with
/// only `[[:space:]]` around it, trimmed, deduplicated (at most three short lines come back, whatever the
/// output's size). C locale: byte-wise, whitespace = space, `\t`, `\n`, `\v`, `\f`, `\r` (the rule of
/// [`verdict_lines`]). Only the bytes written when the scan starts are read (a process the script left behind
/// cannot keep it going). Exit status: grep's (0 found, 1 none, 2 error).
const VERDICT_SCAN: &str = "export LC_ALL=C\n\
size=$(stat -c %s \"$1\") || exit 2\n\
head -c \"$size\" \"$1\" \
| grep -a -x -E '[[:space:]]*(Issue reproduced|Issue resolved|Other issues)[[:space:]]*' \
| sed -E 's/^[[:space:]]+//; s/[[:space:]]+$//' | sort -u\n\
exit \"${PIPESTATUS[1]}\"\n";
/// Time limit of each set-up step (directory, patch apply).
const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Seconds between the TERM and the KILL of `timeout -k`.
const KILL_GRACE_SECS: u64 = 5;
/// How long past the in-container limit the exec itself may take before it is abandoned (a backstop: the
/// container is removed right after, which kills whatever still runs).
const EXEC_BACKSTOP: Duration = Duration::from_secs(30);
/// Time allowed to read a run's output back (the verdict scan, the tails): honest output is bounded by what a
/// script can write within its time limit; a file the script made unreadable in time (a FIFO, a huge sparse
/// file) counts as printing no verdict line.
const READ_BACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of output kept in [`ScriptRun::output_tail`].
const OUTPUT_TAIL_BYTES: usize = 4 * 1024;
/// Lines of the compiler's message kept in a `syntax_error` detail.
const COMPILE_DETAIL_LINES: usize = 8;

/// A fresh container: no network, started in `/` (nothing of the agent's runs there).
fn container_config() -> SandboxConfig {
    SandboxConfig {
        network_mode: "none".to_owned(),
        workdir: "/".to_owned(),
        ..SandboxConfig::default()
    }
}

/// `name` as a container-name part: characters Docker refuses in a name become `-`.
fn episode_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if cleaned.is_empty() {
        "testgen".to_owned()
    } else {
        cleaned
    }
}

async fn remove_container(sandbox: &DockerSandbox, instance_id: &str) {
    if let Err(error) = sandbox.remove().await {
        warn!(
            instance_id,
            container = sandbox.id(),
            %error,
            "removing a generated-test container failed; `swe-env gc` will remove it"
        );
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn rejected(
    reason: Rejection,
    detail: String,
    run: Option<ScriptRun>,
    container_ms: u64,
) -> Validation {
    Validation {
        valid: false,
        reason: Some(reason),
        detail,
        run,
        container_ms,
    }
}

/// `3 s`, `2.5 s`.
fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if duration.subsec_millis() == 0 {
        format!("{} s", duration.as_secs())
    } else {
        format!("{secs:.3} s")
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The end of stdout then stderr.
fn output_tail(out: &ExecOutput) -> String {
    joined_tail(&out.stdout, &out.stderr)
}

/// The last [`OUTPUT_TAIL_BYTES`] of `stdout` then `stderr` (each possibly already a tail: a character cut at
/// its start is dropped, not shown as a replacement character).
fn joined_tail(stdout: &[u8], stderr: &[u8]) -> String {
    let mut text = String::from_utf8_lossy(skip_continuation(stdout)).into_owned();
    text.push_str(&String::from_utf8_lossy(skip_continuation(stderr)));
    tail(&text, OUTPUT_TAIL_BYTES).to_owned()
}

/// `bytes` without the UTF-8 continuation bytes it starts with (at most 3: the rest of a character cut off).
fn skip_continuation(bytes: &[u8]) -> &[u8] {
    let cut = bytes
        .iter()
        .take(3)
        .take_while(|byte| (**byte & 0xC0) == 0x80)
        .count();
    &bytes[cut..]
}

/// A `SandboxError` for a set-up step that failed inside the container.
fn step_failed(sandbox: &DockerSandbox, what: &str, out: &ExecOutput) -> SandboxError {
    SandboxError::Shell {
        container: sandbox.id().to_owned(),
        detail: format!(
            "{what} failed (exit {:?}{}): {}; the image {} must have bash and coreutils, grep, sed and a writable /tmp",
            out.exit_code,
            if out.timed_out { ", timed out" } else { "" },
            output_tail(out).trim(),
            sandbox.image()
        ),
    }
}

/// Makes the run directory fresh, picks the script's file name in the repository directory (the first of
/// [`SCRIPT_NAMES`] that does not exist) and writes the script there (atomically, an exact byte count). Returns
/// the file name.
async fn place_script(sandbox: &DockerSandbox, script: &str) -> Result<String, SandboxError> {
    let names = SCRIPT_NAMES.join(" ");
    let pick = format!(
        "rm -rf {RUN_DIR} && mkdir -p {RUN_DIR} && cd {SWE_BENCH_REPO_DIR} || exit 1\n\
         for f in {names}; do\n\
         if [ ! -e \"$f\" ] && [ ! -L \"$f\" ]; then echo \"$f\"; exit 0; fi\n\
         done\n\
         n=2\n\
         while [ -e \"test_issue_swe_env_$n.py\" ] || [ -L \"test_issue_swe_env_$n.py\" ]; do n=$((n + 1)); done\n\
         echo \"test_issue_swe_env_$n.py\"\n"
    );
    let out = sandbox
        .exec(&["bash", "-c", &pick], None, STEP_TIMEOUT)
        .await?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.exit_code != Some(0) || name.is_empty() {
        return Err(step_failed(
            sandbox,
            "preparing the run directory and the script's name",
            &out,
        ));
    }
    sandbox
        .write_bytes(&format!("{SWE_BENCH_REPO_DIR}/{name}"), script.as_bytes())
        .await?;
    Ok(name)
}

/// What the detail says when the script did not run as `test_issue.py`.
fn renamed_note(name: &str) -> String {
    format!(
        " (run as `python {name}`: the repository already has a file named {}, left as it is)",
        SCRIPT_NAMES[0]
    )
}

/// Applies `patch` in the repository with the reference apply chain; whether it applied. The patch file lives in
/// a temporary directory outside the repository that is deleted afterwards, whatever happened, so the script
/// never sees it. A zero-length patch applies trivially (as in grading: the test then runs on the unchanged
/// repository).
async fn apply_patch(sandbox: &DockerSandbox, patch: &str) -> Result<bool, SandboxError> {
    if patch.is_empty() {
        return Ok(true);
    }
    let out = sandbox
        .exec(
            &[
                "sh",
                "-c",
                &format!("rm -rf {PATCH_DIR} && mkdir -p {PATCH_DIR}"),
            ],
            None,
            STEP_TIMEOUT,
        )
        .await?;
    if out.exit_code != Some(0) {
        return Err(step_failed(sandbox, "making the patch's directory", &out));
    }
    sandbox.write_bytes(PATCH_PATH, patch.as_bytes()).await?;
    let script = apply_chain_script(SWE_BENCH_REPO_DIR, PATCH_PATH, ApplyChain::Reference);
    let applied = sandbox
        .exec(&["bash", "-c", &script], None, STEP_TIMEOUT)
        .await;
    // Deleted before the outcome is looked at: also when the apply failed (the test does not run then, but
    // nothing of the candidate stays behind either way).
    let removed = sandbox
        .exec(&["rm", "-rf", PATCH_DIR], None, STEP_TIMEOUT)
        .await?;
    if removed.exit_code != Some(0) {
        return Err(step_failed(
            sandbox,
            "deleting the patch's directory",
            &removed,
        ));
    }
    let out = applied?;
    Ok(out.exit_code == Some(0) && applied_method(&String::from_utf8_lossy(&out.stdout)).is_some())
}

/// `command` under the task's activation in the repository, killed (TERM, then KILL) at `limit`; the exec
/// itself gives up [`EXEC_BACKSTOP`] later. Returns the output and whether the limit was hit.
async fn run_bounded(
    sandbox: &DockerSandbox,
    instance: &Instance,
    command: &str,
    limit: Duration,
) -> Result<(ExecOutput, bool), SandboxError> {
    // `timeout 0` would mean no limit at all.
    let limit = limit.max(Duration::from_millis(1));
    let script = format!(
        "{}\ncd {SWE_BENCH_REPO_DIR} && timeout -k {KILL_GRACE_SECS} {:.3} {command}",
        activation_for(instance),
        limit.as_secs_f64(),
    );
    let started = Instant::now();
    let out = sandbox
        .exec(&["bash", "-c", &script], None, limit + EXEC_BACKSTOP)
        .await?;
    // 124: the limit fired (TERM); 137: the KILL that follows a TERM it ignored. A script may exit 124 or 137 by
    // itself, so either counts only once the limit has passed.
    let timed_out =
        out.timed_out || (matches!(out.exit_code, Some(124 | 137)) && started.elapsed() >= limit);
    Ok((out, timed_out))
}

/// Why the compile check failed.
enum CompileFailure {
    /// Python's message (its last lines).
    Error(String),
    /// Compiling ran past the time limit.
    TimedOut,
}

/// `None` when Python compiles the script.
async fn compile_script(
    sandbox: &DockerSandbox,
    instance: &Instance,
    limits: &TestgenLimits,
    name: &str,
) -> Result<Option<CompileFailure>, SandboxError> {
    // Bytes, so a PEP 263 coding line is honoured as when the script runs.
    let command = format!(
        "python -c 'import sys; p = sys.argv[1]; compile(open(p, \"rb\").read(), p, \"exec\")' {name}"
    );
    let (out, timed_out) = run_bounded(sandbox, instance, &command, limits.timeout).await?;
    if timed_out {
        return Ok(Some(CompileFailure::TimedOut));
    }
    if out.exit_code == Some(0) {
        return Ok(None);
    }
    // 126/127: bash could not run `python` at all: the task's environment is broken, not the script.
    if let Some(code @ (126 | 127)) = out.exit_code {
        return Err(SandboxError::Shell {
            container: sandbox.id().to_owned(),
            detail: format!(
                "the task's environment cannot run `python` (exit {code}): {}; check the row's `activate` \
                 field and the image {}",
                output_tail(&out).trim(),
                sandbox.image()
            ),
        });
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message = if stderr.trim().is_empty() {
        String::from_utf8_lossy(&out.stdout).into_owned()
    } else {
        stderr.into_owned()
    };
    let lines: Vec<&str> = message.trim_end().lines().collect();
    let last = lines[lines.len().saturating_sub(COMPILE_DETAIL_LINES)..].join("\n");
    let detail = if last.trim().is_empty() {
        format!("exit code {:?} and no message", out.exit_code)
    } else {
        last
    };
    Ok(Some(CompileFailure::Error(detail)))
}

/// Runs the script `name` (in the repository directory) once, its stdout and stderr to files, then reads its
/// verdict lines with a bounded scan of the whole stdout in the container and the ends of both files.
async fn run_script(
    sandbox: &DockerSandbox,
    instance: &Instance,
    limits: &TestgenLimits,
    name: &str,
) -> Result<ScriptRun, SandboxError> {
    // Unbuffered: what a script printed before it was killed at the limit is still in the record.
    let command = format!("python -u {name} >{STDOUT_PATH} 2>{STDERR_PATH}");
    let (out, timed_out) = run_bounded(sandbox, instance, &command, limits.timeout).await?;
    // The script had the container to itself (as root): it may have removed or replaced its output files or the
    // tools that read them. Output that cannot be read back is the script's doing — it counts as no verdict line
    // (a rejection, or a candidate not passed), never as an infrastructure error; only the engine failing is one.
    let mut unreadable = Vec::new();
    let scan = sandbox
        .exec(
            &["bash", "-c", VERDICT_SCAN, "bash", STDOUT_PATH],
            None,
            READ_BACK_TIMEOUT,
        )
        .await?;
    let (reproduced, resolved, other_issues) = if !matches!(scan.exit_code, Some(0 | 1))
        || scan.timed_out
    {
        unreadable.push(step_failed(sandbox, "scanning the script's output", &scan).to_string());
        (false, false, false)
    } else {
        verdict_lines(&scan.stdout)
    };
    let tail_bytes = OUTPUT_TAIL_BYTES.to_string();
    let mut tails = Vec::with_capacity(2);
    for path in [STDOUT_PATH, STDERR_PATH] {
        let read = sandbox
            .exec(&["tail", "-c", &tail_bytes, path], None, READ_BACK_TIMEOUT)
            .await?;
        if read.exit_code != Some(0) || read.timed_out {
            unreadable.push(
                step_failed(sandbox, "reading the end of the script's output", &read).to_string(),
            );
            tails.push(Vec::new());
            continue;
        }
        tails.push(read.stdout);
    }
    if !unreadable.is_empty() {
        warn!(container = sandbox.id(), problems = ?unreadable, "a generated test's output could not be read back; it counts as printing no verdict line");
        let note = format!(
            "\n[swe-env: the script's output could not be read back, so it counts as printing no verdict line: {}]",
            unreadable.join("; ")
        );
        tails[1].extend_from_slice(note.as_bytes());
    }
    // What the shell itself said (e.g. `timeout` or a redirection failing) comes after the script's own output.
    let mut stderr = std::mem::take(&mut tails[1]);
    stderr.extend_from_slice(&out.stdout);
    stderr.extend_from_slice(&out.stderr);
    let output_tail = joined_tail(&tails[0], &stderr);
    Ok(ScriptRun {
        reproduced,
        resolved,
        other_issues,
        exit_code: if timed_out {
            None
        } else {
            out.exit_code.and_then(|code| i32::try_from(code).ok())
        },
        timed_out,
        output_tail,
    })
}

/// The verdict lines a run printed, in words.
fn lines_seen(run: &ScriptRun) -> String {
    let seen: Vec<String> = [
        (run.reproduced, REPRODUCED),
        (run.resolved, RESOLVED),
        (run.other_issues, OTHER_ISSUES),
    ]
    .iter()
    .filter(|(printed, _)| *printed)
    .map(|(_, line)| format!("`{line}`"))
    .collect();
    if seen.is_empty() {
        "no verdict line".to_owned()
    } else {
        seen.join(", ")
    }
}

fn exit_text(run: &ScriptRun) -> String {
    match run.exit_code {
        Some(code) => format!("exit code {code}"),
        None => "no exit code".to_owned(),
    }
}

/// The rejection of a run at the base commit (priority: timeout, resolved, other issues, not reproduced) and
/// what was seen, in words.
fn classify(run: &ScriptRun, limits: &TestgenLimits) -> (Option<Rejection>, String) {
    if run.timed_out {
        return (
            Some(Rejection::Timeout),
            format!(
                "did not finish within {} at the base commit and was killed (printed {} before that)",
                seconds(limits.timeout),
                lines_seen(run)
            ),
        );
    }
    if run.resolved {
        return (
            Some(Rejection::PrintsResolvedAtBase),
            format!(
                "printed `{RESOLVED}` at the base commit, where the issue is present: the script cannot tell the bug \
                 from the fix (printed {}, {})",
                lines_seen(run),
                exit_text(run)
            ),
        );
    }
    if run.other_issues {
        return (
            Some(Rejection::PrintsOtherIssues),
            format!(
                "printed `{OTHER_ISSUES}` at the base commit: the script fails in a way that is not the issue \
                 (printed {}, {}; see the output)",
                lines_seen(run),
                exit_text(run)
            ),
        );
    }
    if !run.reproduced {
        return (
            Some(Rejection::NotReproduced),
            format!(
                "printed no `{REPRODUCED}` line at the base commit, where the issue is present ({}, {}): the \
                 script does not show the issue",
                lines_seen(run),
                exit_text(run)
            ),
        );
    }
    (
        None,
        format!(
            "printed `{REPRODUCED}` at the base commit and neither `{RESOLVED}` nor `{OTHER_ISSUES}` ({})",
            exit_text(run)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test-generation prompt renders through the one Jinja renderer, byte for byte as the old
    /// `{{placeholder}}` renderer did (the golden file is its output for these inputs).
    #[test]
    fn testgen_template_renders_as_before() {
        let prompts = swe_env_model::AgentPromptConfig {
            user_template: DEFAULT_TESTGEN_TEMPLATE.to_owned(),
            ..swe_env_model::AgentPromptConfig::default()
        };
        prompts.validate().unwrap();
        let user = prompts
            .render_user(&swe_env_model::UserPromptInputs {
                issue: "Crash on {{ empty }} input {% if x %}\nsecond line\n".into(),
                repo_root: "/testbed".into(),
            })
            .unwrap();
        assert_eq!(user, include_str!("golden/testgen.golden"));
    }

    #[test]
    fn verdict_lines_match_whole_lines_after_trimming() {
        assert_eq!(verdict_lines(b""), (false, false, false));
        assert_eq!(verdict_lines(b"Issue reproduced\n"), (true, false, false));
        assert_eq!(verdict_lines(b"Issue reproduced"), (true, false, false));
        assert_eq!(
            verdict_lines(b"  Issue resolved \r\n"),
            (false, true, false)
        );
        assert_eq!(verdict_lines(b"  Issue resolved \r"), (false, true, false));
        assert_eq!(verdict_lines(b"\tOther issues\t\n"), (false, false, true));
        assert_eq!(
            verdict_lines(b"case 1\nIssue reproduced\ncase 2\nIssue resolved\nOther issues\n"),
            (true, true, true)
        );
        // Not whole lines: decorated, prefixed, different case, inside a longer line.
        for text in [
            "Issue reproduced!",
            "Issue reproduced: x",
            "issue reproduced",
            "ISSUE RESOLVED",
            "Result: Issue resolved",
            "Other issues found",
            "Issue  reproduced",
            "'Issue reproduced'",
        ] {
            assert_eq!(
                verdict_lines(text.as_bytes()),
                (false, false, false),
                "{text:?}"
            );
        }
        // The C locale's whitespace only (what the in-container scan trims): `\v` and `\f` yes, a no-break or
        // ideographic space no; a `\r` inside a line or a NUL keeps it from counting.
        assert_eq!(
            verdict_lines(b"\x0bIssue reproduced\x0c\n"),
            (true, false, false)
        );
        for text in [
            "\u{a0}Issue reproduced",
            "Issue resolved\u{3000}",
            "Issue resolved\rIssue resolved",
            "Other issues\0",
        ] {
            assert_eq!(
                verdict_lines(text.as_bytes()),
                (false, false, false),
                "{text:?}"
            );
        }
        // Bytes that are not UTF-8 elsewhere do not hide a line.
        assert_eq!(
            verdict_lines(b"\xff\xfe garbage\nIssue reproduced\n"),
            (true, false, false)
        );
    }

    #[test]
    fn passed_needs_resolved_alone_within_the_limit() {
        let resolved = ScriptRun {
            resolved: true,
            exit_code: Some(0),
            ..ScriptRun::default()
        };
        assert!(resolved.passed());
        for run in [
            ScriptRun {
                reproduced: true,
                ..resolved.clone()
            },
            ScriptRun {
                other_issues: true,
                ..resolved.clone()
            },
            ScriptRun {
                timed_out: true,
                ..resolved.clone()
            },
            ScriptRun::default(),
        ] {
            assert!(!run.passed(), "{run:?}");
        }
    }

    #[test]
    fn classification_follows_the_priority() {
        let limits = TestgenLimits::default();
        let run = |reproduced, resolved, other_issues, timed_out| ScriptRun {
            reproduced,
            resolved,
            other_issues,
            timed_out,
            exit_code: (!timed_out).then_some(0),
            output_tail: String::new(),
        };
        let reason = |r: &ScriptRun| classify(r, &limits).0;
        assert_eq!(
            reason(&run(true, true, true, true)),
            Some(Rejection::Timeout)
        );
        assert_eq!(
            reason(&run(false, false, false, true)),
            Some(Rejection::Timeout)
        );
        assert_eq!(
            reason(&run(true, true, true, false)),
            Some(Rejection::PrintsResolvedAtBase)
        );
        assert_eq!(
            reason(&run(true, false, true, false)),
            Some(Rejection::PrintsOtherIssues)
        );
        assert_eq!(
            reason(&run(false, false, false, false)),
            Some(Rejection::NotReproduced)
        );
        assert_eq!(reason(&run(true, false, false, false)), None);
        let (_, detail) = classify(&run(false, true, false, false), &limits);
        assert!(
            detail.contains("printed `Issue resolved` at the base commit"),
            "{detail}"
        );
        let (_, detail) = classify(&run(false, false, false, true), &limits);
        assert!(detail.contains("within 60 s"), "{detail}");
    }

    #[test]
    fn tails_and_names_are_safe() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 2), "ef");
        // Never a cut inside a character.
        assert_eq!(tail("aé", 1), "");
        assert_eq!(tail("aé", 2), "é");
        assert_eq!(
            episode_name("run-1-org__repo-1.t0/v"),
            "run-1-org__repo-1.t0-v"
        );
        assert_eq!(episode_name(""), "testgen");
        // A tail cut inside a character drops the rest of it instead of showing a replacement character.
        assert_eq!(joined_tail(b"\xa9t\xc3\xa9", b"\x80\x80err"), "t\u{e9}err");
        assert_eq!(joined_tail(b"", b""), "");
        assert_eq!(joined_tail(&[b'a'; 5000], b"end").len(), OUTPUT_TAIL_BYTES);
        assert!(renamed_note("test_issue_swe_env.py").contains("`python test_issue_swe_env.py`"));
        assert_eq!(seconds(Duration::from_secs(3)), "3 s");
        assert_eq!(seconds(Duration::from_millis(2500)), "2.500 s");
    }
}
