//! Generated reproduction tests (issue 17) on the spans fixture, in real containers: the validity check at the base
//! commit (each rejection reason from a hand-written script) and a valid test run against the gold patch, a partial
//! fix and a patch that does not apply; a verdict line in the middle of a huge output, the script run as
//! `python test_issue.py` from /testbed (and under another name when a candidate adds that file), the candidate's
//! patch file out of the script's sight, the in-container scan agreeing with `verdict_lines`. Every container is
//! removed.

use std::time::{Duration, Instant};

use swe_env::scaling::testgen::{
    run_test_on_patch, validate_test, Rejection, TestgenLimits, Validation,
};
use swe_env_grading::dataset::Instance;
use swe_env_sandbox::DockerEngine;

use crate::common::{engine, unique_id};
use crate::episode::fixture;

const SPANS: &str = "swe-env-fixtures__spans-1";

/// Checks both halves of the issue (unsorted input, adjacent ranges): `Issue reproduced` at the base commit,
/// `Issue resolved` only once both are fixed.
pub(crate) const VALID_TEST: &str = r#"
from spans import merge, total_length

try:
    unsorted = merge([(5, 8), (1, 3), (2, 6)])
    adjacent = merge([(1, 3), (3, 5)])
    length = total_length([(5, 8), (1, 3), (2, 6)])
except Exception as error:
    print(f"unexpected: {error!r}")
    print("Other issues")
else:
    if unsorted == [(1, 8)] and adjacent == [(1, 5)] and length == 7:
        print("Issue resolved")
    else:
        print(f"unsorted={unsorted} adjacent={adjacent} length={length}")
        print("Issue reproduced")
"#;

/// Gets the expected value backwards: says "resolved" on the buggy code.
pub(crate) const RESOLVED_AT_BASE: &str = r#"
from spans import merge
if merge([(1, 3), (3, 5)]) == [(1, 3), (3, 5)]:
    print("Issue resolved")
else:
    print("Issue reproduced")
"#;

const SYNTAX_ERROR: &str = "from spans import merge\ndef broken(:\n    print('Issue reproduced')\n";

pub(crate) const HANGS: &str = "while True:\n    pass\n";

/// Ignores the TERM of the time limit: only the KILL that follows ends it.
const HANGS_IGNORING_TERM: &str =
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    time.sleep(0.1)\n";

const PRINTS_NOTHING: &str = "from spans import merge\nmerge([(1, 3), (3, 5)])\n";

/// Decorated lines do not count either.
const PRINTS_DECORATED: &str = "print('Issue reproduced!')\nprint('Result: Issue reproduced')\n";

const OTHER_ISSUES: &str = r#"
try:
    from spans import no_such_function
except ImportError:
    print("Other issues")
"#;

fn limits(timeout_secs: u64) -> TestgenLimits {
    TestgenLimits {
        timeout: Duration::from_secs(timeout_secs),
        ..TestgenLimits::default()
    }
}

fn spans() -> (Instance, String) {
    let instance = fixture(SPANS);
    let image = instance.image.clone().unwrap();
    (instance, image)
}

/// The gold patch with only its first change (`sorted`): adjacent ranges still stay apart.
fn partial_patch(gold: &str) -> String {
    let adjacent = "-        if merged and start < merged[-1][1]:\n+        if merged and start <= merged[-1][1]:\n";
    assert!(gold.contains(adjacent), "the gold patch changed: {gold}");
    let partial = gold.replace(adjacent, "         if merged and start < merged[-1][1]:\n");
    assert!(partial.contains("+    for start, end in sorted(map(_check, ranges)):"));
    partial
}

/// A patch whose file does not exist: no method of the chain applies it.
pub(crate) const UNAPPLIABLE_PATCH: &str =
    "diff --git a/src/spans/missing.py b/src/spans/missing.py
--- a/src/spans/missing.py
+++ b/src/spans/missing.py
@@ -1,3 +1,3 @@
 def f():
-    return 1
+    return 2
 
";

/// No container whose episode label starts with `prefix` exists.
async fn assert_no_containers(engine: &DockerEngine, prefix: &str) {
    for container in engine.labelled_containers().await.unwrap() {
        assert!(
            !container.episode.starts_with(prefix),
            "container {} ({}) left behind",
            container.id,
            container.episode
        );
    }
}

async fn validate(
    engine: &DockerEngine,
    script: Option<&str>,
    limits: &TestgenLimits,
    name: &str,
) -> Validation {
    let (instance, image) = spans();
    validate_test(engine, &instance, &image, script, limits, name)
        .await
        .unwrap()
}

fn assert_rejected(validation: &Validation, reason: Rejection, what: &str) {
    assert!(!validation.valid, "{what}: {validation:?}");
    assert_eq!(validation.reason, Some(reason), "{what}: {validation:?}");
    assert!(!validation.detail.is_empty(), "{what}: {validation:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_valid_test_passes_the_gold_patch_and_no_other() {
    let engine = engine().await;
    let prefix = unique_id("testgen-valid");
    let (instance, image) = spans();
    let limits = limits(60);

    let validation = validate(&engine, Some(VALID_TEST), &limits, &format!("{prefix}.v")).await;
    assert!(validation.valid, "{validation:?}");
    assert_eq!(validation.reason, None);
    let run = validation.run.as_ref().unwrap();
    assert!(
        run.reproduced && !run.resolved && !run.other_issues && !run.timed_out,
        "{run:?}"
    );
    assert_eq!(run.exit_code, Some(0));
    assert!(
        run.output_tail
            .contains("unsorted=[(5, 8)] adjacent=[(1, 3), (3, 5)] length=3"),
        "{run:?}"
    );
    assert!(
        validation.detail.contains("Issue reproduced"),
        "{}",
        validation.detail
    );
    assert!(validation.container_ms > 0);

    let gold = run_test_on_patch(
        &engine,
        &instance,
        &image,
        &instance.patch,
        VALID_TEST,
        &limits,
        &format!("{prefix}.gold"),
    )
    .await
    .unwrap();
    assert!(gold.passed && gold.patch_applied, "{gold:?}");
    let gold_run = gold.run.as_ref().unwrap();
    assert!(gold_run.resolved && !gold_run.reproduced, "{gold_run:?}");
    assert!(gold_run.output_tail.contains("Issue resolved"));
    assert!(gold.container_ms > 0);

    let partial = run_test_on_patch(
        &engine,
        &instance,
        &image,
        &partial_patch(&instance.patch),
        VALID_TEST,
        &limits,
        &format!("{prefix}.partial"),
    )
    .await
    .unwrap();
    assert!(partial.patch_applied, "{partial:?}");
    assert!(!partial.passed, "{partial:?}");
    let partial_run = partial.run.as_ref().unwrap();
    assert!(
        partial_run.reproduced && !partial_run.resolved,
        "{partial_run:?}"
    );
    // Only the adjacent case is still wrong.
    assert!(
        partial_run
            .output_tail
            .contains("unsorted=[(1, 8)] adjacent=[(1, 3), (3, 5)] length=7"),
        "{partial_run:?}"
    );

    let unapplied = run_test_on_patch(
        &engine,
        &instance,
        &image,
        UNAPPLIABLE_PATCH,
        VALID_TEST,
        &limits,
        &format!("{prefix}.unapplied"),
    )
    .await
    .unwrap();
    assert!(
        !unapplied.patch_applied && !unapplied.passed,
        "{unapplied:?}"
    );
    assert_eq!(unapplied.run, None);

    // An empty candidate applies trivially (as in grading) and leaves the bug in place.
    let empty = run_test_on_patch(
        &engine,
        &instance,
        &image,
        "",
        VALID_TEST,
        &limits,
        &format!("{prefix}.empty"),
    )
    .await
    .unwrap();
    assert!(empty.patch_applied && !empty.passed, "{empty:?}");
    assert!(empty.run.as_ref().unwrap().reproduced, "{empty:?}");

    // The same container is never reused: the gold run left nothing for the next one (the partial run above saw
    // the base code plus only its own change).
    assert_no_containers(&engine, &prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_tests_are_rejected_with_their_reason() {
    let engine = engine().await;
    let prefix = unique_id("testgen-invalid");
    let limits = limits(60);

    let resolved = validate(
        &engine,
        Some(RESOLVED_AT_BASE),
        &limits,
        &format!("{prefix}.r"),
    )
    .await;
    assert_rejected(
        &resolved,
        Rejection::PrintsResolvedAtBase,
        "resolved at base",
    );
    assert!(
        resolved
            .detail
            .contains("printed `Issue resolved` at the base commit"),
        "{}",
        resolved.detail
    );
    assert!(resolved.run.as_ref().unwrap().resolved);

    let syntax = validate(&engine, Some(SYNTAX_ERROR), &limits, &format!("{prefix}.s")).await;
    assert_rejected(&syntax, Rejection::SyntaxError, "syntax error");
    assert!(syntax.detail.contains("SyntaxError"), "{}", syntax.detail);
    assert_eq!(
        syntax.run, None,
        "a script that does not compile is not run"
    );

    let nothing = validate(
        &engine,
        Some(PRINTS_NOTHING),
        &limits,
        &format!("{prefix}.n"),
    )
    .await;
    assert_rejected(&nothing, Rejection::NotReproduced, "prints nothing");
    assert_eq!(nothing.run.as_ref().unwrap().exit_code, Some(0));

    let decorated = validate(
        &engine,
        Some(PRINTS_DECORATED),
        &limits,
        &format!("{prefix}.d"),
    )
    .await;
    assert_rejected(&decorated, Rejection::NotReproduced, "decorated lines");

    let other = validate(&engine, Some(OTHER_ISSUES), &limits, &format!("{prefix}.o")).await;
    assert_rejected(&other, Rejection::PrintsOtherIssues, "other issues");
    assert!(other.run.as_ref().unwrap().other_issues);

    // No container for these two.
    for script in [None, Some(""), Some("  \n\t\n")] {
        let none = validate(&engine, script, &limits, &format!("{prefix}.x")).await;
        assert_rejected(&none, Rejection::NoSubmission, "no submission");
        assert_eq!((none.run, none.container_ms), (None, 0));
    }
    let small = TestgenLimits {
        max_script_bytes: 64,
        ..limits
    };
    let large = format!("print('Issue reproduced')\n{}", "#".repeat(64));
    let too_large = validate(&engine, Some(&large), &small, &format!("{prefix}.l")).await;
    assert_rejected(&too_large, Rejection::TooLarge, "too large");
    assert_eq!((too_large.run, too_large.container_ms), (None, 0));
    assert!(too_large.detail.contains("64"), "{}", too_large.detail);
    // At the limit it is accepted (and runs).
    let at_limit = format!("print('Issue reproduced')\n{}", "#".repeat(64 - 26));
    assert_eq!(at_limit.len(), 64);
    let fits = validate(&engine, Some(&at_limit), &small, &format!("{prefix}.f")).await;
    assert!(fits.valid, "{fits:?}");

    assert_no_containers(&engine, &prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_test_is_killed_at_the_time_limit() {
    let engine = engine().await;
    let prefix = unique_id("testgen-hang");
    let limits = limits(3);

    for (script, what) in [(HANGS, "busy loop"), (HANGS_IGNORING_TERM, "ignores TERM")] {
        let started = Instant::now();
        let validation = validate(&engine, Some(script), &limits, &format!("{prefix}.h")).await;
        let elapsed = started.elapsed();
        assert_rejected(&validation, Rejection::Timeout, what);
        let run = validation.run.as_ref().unwrap();
        assert!(run.timed_out && run.exit_code.is_none(), "{what}: {run:?}");
        assert!(
            validation.detail.contains("within 3 s"),
            "{}",
            validation.detail
        );
        assert!(elapsed >= Duration::from_secs(3), "{what}: {elapsed:?}");
        assert!(
            elapsed < Duration::from_secs(30),
            "{what}: took {elapsed:?}"
        );
    }

    // A valid test that hangs once the patch is applied does not pass.
    let (instance, image) = spans();
    let hangs_when_fixed = format!(
        "from spans import merge\nif merge([(1, 3), (3, 5)]) == [(1, 5)]:\n    print('Issue resolved')\n    {}\nelse:\n    print('Issue reproduced')\n",
        "while True: pass"
    );
    let validation = validate(
        &engine,
        Some(&hangs_when_fixed),
        &limits,
        &format!("{prefix}.v"),
    )
    .await;
    assert!(validation.valid, "{validation:?}");
    let started = Instant::now();
    let pair = run_test_on_patch(
        &engine,
        &instance,
        &image,
        &instance.patch,
        &hangs_when_fixed,
        &limits,
        &format!("{prefix}.p"),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(pair.patch_applied && !pair.passed, "{pair:?}");
    let run = pair.run.as_ref().unwrap();
    assert!(run.timed_out && run.resolved, "{run:?}");

    assert_no_containers(&engine, &prefix).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_environment_without_python_is_an_infrastructure_error() {
    let engine = engine().await;
    let prefix = unique_id("testgen-nopython");
    let (mut instance, image) = spans();
    // The image has no `python` outside its venv.
    instance.activate = Some("true".to_owned());
    let error = validate_test(
        &engine,
        &instance,
        &image,
        Some(VALID_TEST),
        &limits(60),
        &format!("{prefix}.v"),
    )
    .await
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("cannot run `python`") && message.contains("activate"),
        "{message}"
    );
    assert_no_containers(&engine, &prefix).await;
}

/// 40 MiB of noise, a verdict line, 40 MiB more, another verdict line: the middle line is past what an exec
/// capture keeps (head + tail), yet it counts.
fn huge_output_script(middle: &str, last: &str) -> String {
    format!(
        "import sys\nsys.stdout.write('x' * (40 << 20) + '\\n')\nprint({middle:?})\nsys.stdout.write('y' * (40 << 20) + '\\n')\nprint({last:?})\nsys.stderr.write('stderr end\\n')\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_verdict_line_in_the_middle_of_a_huge_output_counts() {
    let engine = engine().await;
    let prefix = unique_id("testgen-huge");
    let (instance, image) = spans();
    let limits = limits(60);

    // `Issue resolved` in the middle at the base commit: not a valid test.
    let script = huge_output_script("Issue resolved", "Issue reproduced");
    let validation = validate(&engine, Some(&script), &limits, &format!("{prefix}.v")).await;
    assert_rejected(
        &validation,
        Rejection::PrintsResolvedAtBase,
        "resolved in the middle",
    );
    let run = validation.run.as_ref().unwrap();
    assert!(run.reproduced && run.resolved && !run.timed_out, "{run:?}");
    assert!(run.output_tail.len() <= 4096, "{}", run.output_tail.len());
    assert!(
        run.output_tail.ends_with("Issue reproduced\nstderr end\n"),
        "{:?}",
        tail_of(&run.output_tail)
    );

    // `Issue reproduced` in the middle on a candidate that fixes nothing: it does not pass.
    let script = huge_output_script("Issue reproduced", "Issue resolved");
    let pair = run_test_on_patch(
        &engine,
        &instance,
        &image,
        "",
        &script,
        &limits,
        &format!("{prefix}.p"),
    )
    .await
    .unwrap();
    assert!(pair.patch_applied && !pair.passed, "{pair:?}");
    let run = pair.run.as_ref().unwrap();
    assert!(run.reproduced && run.resolved, "{run:?}");
    assert_eq!(run.exit_code, Some(0));

    assert_no_containers(&engine, &prefix).await;
}

fn tail_of(text: &str) -> &str {
    &text[text.len().saturating_sub(200)..]
}

/// Imports the code through the repository directory (works only when run as `python test_issue.py` from
/// /testbed, where `sys.path[0]` is /testbed) and says where it ran.
const IMPORTS_FROM_THE_REPO_DIR: &str = r#"
import os, sys
print(f"cwd={os.getcwd()} file={os.path.abspath(__file__)} path0={sys.path[0]}")
if os.path.exists("/testbed/test_issue.py") and os.path.abspath(__file__) != "/testbed/test_issue.py":
    print("candidate file: " + open("/testbed/test_issue.py").read().strip())
from src.spans.ops import merge
if merge([(1, 3), (3, 5)]) == [(1, 5)]:
    print("Issue resolved")
else:
    print("Issue reproduced")
"#;

/// A candidate that adds its own `test_issue.py` (and fixes nothing).
const ADDS_TEST_ISSUE_PY: &str = "diff --git a/test_issue.py b/test_issue.py
new file mode 100644
--- /dev/null
+++ b/test_issue.py
@@ -0,0 +1 @@
+print('the candidate file')
";

#[tokio::test(flavor = "multi_thread")]
async fn the_script_runs_as_python_test_issue_py_from_the_repository() {
    let engine = engine().await;
    let prefix = unique_id("testgen-cwd");
    let (instance, image) = spans();
    let limits = limits(60);

    let validation = validate(
        &engine,
        Some(IMPORTS_FROM_THE_REPO_DIR),
        &limits,
        &format!("{prefix}.v"),
    )
    .await;
    assert!(validation.valid, "{validation:?}");
    let run = validation.run.as_ref().unwrap();
    assert!(
        run.output_tail
            .contains("cwd=/testbed file=/testbed/test_issue.py path0=/testbed"),
        "{run:?}"
    );
    assert!(
        !validation.detail.contains("run as"),
        "{}",
        validation.detail
    );

    let gold = run_test_on_patch(
        &engine,
        &instance,
        &image,
        &instance.patch,
        IMPORTS_FROM_THE_REPO_DIR,
        &limits,
        &format!("{prefix}.gold"),
    )
    .await
    .unwrap();
    assert!(gold.passed, "{gold:?}");

    // The candidate's own test_issue.py is left alone: the script runs under another name.
    let pair = run_test_on_patch(
        &engine,
        &instance,
        &image,
        ADDS_TEST_ISSUE_PY,
        IMPORTS_FROM_THE_REPO_DIR,
        &limits,
        &format!("{prefix}.own"),
    )
    .await
    .unwrap();
    assert!(pair.patch_applied && !pair.passed, "{pair:?}");
    let run = pair.run.as_ref().unwrap();
    assert!(run.reproduced, "{run:?}");
    assert!(
        run.output_tail
            .contains("cwd=/testbed file=/testbed/test_issue_swe_env.py path0=/testbed"),
        "{run:?}"
    );
    assert!(
        run.output_tail
            .contains("candidate file: print('the candidate file')"),
        "{run:?}"
    );

    assert_no_containers(&engine, &prefix).await;
}

/// Says "resolved" whenever a patch file is anywhere under /tmp: would pass every candidate if the candidate's
/// patch were visible.
const LOOKS_FOR_THE_PATCH: &str = r#"
import os
found = [os.path.join(d, f) for d, _, files in os.walk("/tmp") for f in files if f.endswith((".patch", ".rej", ".diff"))]
print(f"found={found}")
print("Issue resolved" if found else "Issue reproduced")
"#;

#[tokio::test(flavor = "multi_thread")]
async fn the_candidate_patch_is_not_visible_to_the_test() {
    let engine = engine().await;
    let prefix = unique_id("testgen-hidden");
    let (instance, image) = spans();
    let limits = limits(60);

    let validation = validate(
        &engine,
        Some(LOOKS_FOR_THE_PATCH),
        &limits,
        &format!("{prefix}.v"),
    )
    .await;
    assert!(validation.valid, "{validation:?}");
    for (patch, what) in [
        (partial_patch(&instance.patch), "partial fix"),
        (ADDS_TEST_ISSUE_PY.to_owned(), "no fix"),
    ] {
        let pair = run_test_on_patch(
            &engine,
            &instance,
            &image,
            &patch,
            LOOKS_FOR_THE_PATCH,
            &limits,
            &format!("{prefix}.p"),
        )
        .await
        .unwrap();
        assert!(pair.patch_applied, "{what}: {pair:?}");
        assert!(!pair.passed, "{what}: {pair:?}");
        assert!(
            pair.run.as_ref().unwrap().output_tail.contains("found=[]"),
            "{what}: {pair:?}"
        );
    }

    assert_no_containers(&engine, &prefix).await;
}

/// Writes `bytes` (a Python bytes literal) to stdout as they are.
fn writes_bytes(bytes: &str) -> String {
    format!("import sys\nsys.stdout.buffer.write({bytes})\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_in_container_scan_reads_lines_as_verdict_lines_does() {
    let engine = engine().await;
    let prefix = unique_id("testgen-scan");
    let (instance, image) = spans();
    let limits = limits(60);

    // (Python bytes literal, the same bytes in Rust.)
    let cases: [(&str, &[u8]); 2] = [
        (
            r"b'\x0b Issue reproduced\x0c\r\n\xc2\xa0Issue resolved\nIssue resolved\x00\nIssue resolved!\nIssue resolved\rIssue resolved\n\xff\tOther issues\n\tOther issues \r'",
            b"\x0b Issue reproduced\x0c\r\n\xc2\xa0Issue resolved\nIssue resolved\x00\nIssue resolved!\nIssue resolved\rIssue resolved\n\xff\tOther issues\n\tOther issues \r",
        ),
        (
            r"b'\r\rIssue resolved\r\r\n\xe3\x80\x80Issue reproduced\n issue reproduced\nOther  issues\n'",
            b"\r\rIssue resolved\r\r\n\xe3\x80\x80Issue reproduced\n issue reproduced\nOther  issues\n",
        ),
    ];
    let expected = [(true, false, true), (false, true, false)];
    for (index, (literal, bytes)) in cases.iter().enumerate() {
        assert_eq!(
            swe_env::scaling::testgen::verdict_lines(bytes),
            expected[index]
        );
        let pair = run_test_on_patch(
            &engine,
            &instance,
            &image,
            "",
            &writes_bytes(literal),
            &limits,
            &format!("{prefix}.{index}"),
        )
        .await
        .unwrap();
        let run = pair.run.as_ref().unwrap();
        assert_eq!(run.exit_code, Some(0), "{run:?}");
        assert_eq!(
            (run.reproduced, run.resolved, run.other_issues),
            expected[index],
            "case {index}: {run:?}"
        );
    }

    assert_no_containers(&engine, &prefix).await;
}

/// A script has the container to itself: one that removes its own output files (or the tools that read them back)
/// is rejected — it printed no verdict line that can be read — never an infrastructure error that a retry would
/// repeat; one that exits 124 by itself, well within the limit, did not time out (a second hostile review).
#[tokio::test(flavor = "multi_thread")]
async fn a_script_that_sabotages_its_own_output_is_rejected_and_exit_124_is_no_timeout() {
    let engine = engine().await;
    let prefix = unique_id("testgen-sabotage");
    let limits = limits(20);
    let removes_its_output =
        "import shutil\nprint('Issue reproduced')\nshutil.rmtree('/tmp/swe-env-testgen-run')\n";
    let validation = validate(
        &engine,
        Some(removes_its_output),
        &limits,
        &format!("{prefix}.r"),
    )
    .await;
    assert_rejected(&validation, Rejection::NotReproduced, "output removed");
    let run = validation.run.as_ref().unwrap();
    assert!(
        run.output_tail.contains("could not be read back"),
        "{run:?}"
    );
    let removes_tail = "import os\nprint('Issue reproduced')\nos.remove('/usr/bin/tail')\n";
    let validation = validate(&engine, Some(removes_tail), &limits, &format!("{prefix}.t")).await;
    // The verdict scan still read stdout; only the tails are missing.
    assert!(validation.valid, "{validation:?}");
    let exits_124 = "import sys\nprint('Issue reproduced')\nsys.exit(124)\n";
    let started = std::time::Instant::now();
    let validation = validate(&engine, Some(exits_124), &limits, &format!("{prefix}.e")).await;
    assert!(validation.valid, "{validation:?}");
    let run = validation.run.as_ref().unwrap();
    assert!(!run.timed_out, "{run:?}");
    assert_eq!(run.exit_code, Some(124), "{run:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_no_containers(&engine, &prefix).await;
}
