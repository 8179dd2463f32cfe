//! `swe-env trace` end to end (issue 16), against the real Docker engine:
//! - golden traces of small programs (tests/trace_golden/golden.py) on a Python 3.11 and a Python 3.9 image, the
//!   expected frames written by hand below, plus one whole rendered CWM string (Diff locals);
//! - tracing the same test twice gives byte-identical traces, and the CLI prints its throughput lines;
//! - the pass/fail set of each fixture task's whole test suite is identical with and without the tracer.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use futures_util::FutureExt;
use serde_json::Value;
use swe_env::trace::format::{render, LocalsStyle, Trace};
use swe_env::trace::TRACER_PY;
use swe_env_grading::dataset::Instance;
use swe_env_grading::log_parsers::{LogParser, StatusMap, TestStatus};
use swe_env_sandbox::{DockerEngine, SandboxConfig};

use crate::common::{describe, engine, unique_id, BASE_IMAGE};

/// The Python 3.9 test image built by [`python39_image`].
pub const PYTHON39_IMAGE: &str = "swe-env-test/python:3.9";
/// The host interpreter copied into [`PYTHON39_IMAGE`] (at the same path, so its rpath and prefix hold).
const PYTHON39_PREFIX: &str = "/root/.pyenv/versions/3.9.18";
/// The label holding the digest of the image's inputs.
const INPUTS_LABEL: &str = "swe-env.test.inputs";
/// Bump when the recipe below changes.
const PYTHON39_RECIPE: &str =
    "v1: base + pyenv 3.9.18 (without lib/python3.9/test) + /usr/local/bin/python3{,.9}";

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `swe-env-test/python:3.9`: the base image with the host's pyenv Python 3.9.18 at /usr/local/bin/python3 (first
/// on PATH; /usr/bin/python3 stays 3.11). Built once per machine; rebuilt when the digest of its inputs (base image
/// id, recipe, the interpreter's file list with sizes) differs from the image's label. A file lock keeps tests
/// running at the same time from building it twice. Returns the image name.
pub fn python39_image() -> &'static str {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).unwrap();
    let lock = std::fs::File::create(root.join("python39-image.lock")).unwrap();
    lock.lock().unwrap();
    assert!(
        Path::new(PYTHON39_PREFIX).join("bin/python3.9").exists(),
        "{PYTHON39_PREFIX}/bin/python3.9 is missing: the 3.9 golden tests copy the host's pyenv Python 3.9.18"
    );
    let base_id = docker_ok(&["image", "inspect", "-f", "{{.Id}}", BASE_IMAGE]);
    let listing = Command::new("find")
        .args([PYTHON39_PREFIX, "-printf", "%P %s %y\n"])
        .output()
        .unwrap();
    let mut files: Vec<&[u8]> = listing.stdout.split(|b| *b == b'\n').collect();
    files.sort_unstable();
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(base_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(PYTHON39_RECIPE.as_bytes());
    for file in files {
        ctx.update(b"\0");
        ctx.update(file);
    }
    let digest: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let label = docker(&[
        "image",
        "inspect",
        "-f",
        &format!("{{{{ index .Config.Labels \"{INPUTS_LABEL}\" }}}}"),
        PYTHON39_IMAGE,
    ]);
    if label.status.success() && String::from_utf8_lossy(&label.stdout).trim() == digest {
        return PYTHON39_IMAGE;
    }
    let name = unique_id("py39-build");
    let python = format!("{PYTHON39_PREFIX}/bin/python3.9");
    let setup = format!(
        "set -e; ln -sf {python} /usr/local/bin/python3; ln -sf {python} /usr/local/bin/python3.9; \
         if ldd {python} | grep 'not found'; then exit 1; fi; \
         python3 -c 'import sys, json, runpy, ast, linecache; assert sys.version_info[:2] == (3, 9), sys.version'"
    );
    docker_ok(&["create", "--name", &name, BASE_IMAGE, "bash", "-c", &setup]);
    let built = (|| {
        let copy = Command::new("bash")
            .args([
                "-c",
                &format!(
                    "set -o pipefail; tar -C / --exclude={rel}/lib/python3.9/test -cf - {rel} | docker cp - {name}:/",
                    rel = PYTHON39_PREFIX.trim_start_matches('/')
                ),
            ])
            .output()
            .unwrap();
        if !copy.status.success() {
            return Err(format!("copy: {}", describe(&copy)));
        }
        let start = docker(&["start", "-a", &name]);
        if !start.status.success() {
            return Err(format!(
                "the interpreter does not run in the image: {}",
                describe(&start)
            ));
        }
        let commit = docker(&[
            "commit",
            "--change",
            "CMD [\"/bin/bash\"]",
            "--change",
            &format!("LABEL {INPUTS_LABEL}={digest}"),
            &name,
            PYTHON39_IMAGE,
        ]);
        if !commit.status.success() {
            return Err(format!("commit: {}", describe(&commit)));
        }
        Ok(())
    })();
    docker(&["rm", "-f", &name]);
    if let Err(e) = built {
        panic!("building {PYTHON39_IMAGE} failed: {e}");
    }
    PYTHON39_IMAGE
}

// ---------------------------------------------------------------------------------------------------------------
// Golden traces.

/// One expected frame: kind (`call`, `line`, `return`, `yield` = a return with `is_yield`, `exception`), line,
/// source text (without its "\n"), full locals (call/line frames), value (return/yield/exception frames).
type Row = (
    &'static str,
    u32,
    &'static str,
    &'static [(&'static str, &'static str)],
    Option<&'static str>,
);

fn golden_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/trace_golden/golden.py")
}

/// `swe-env trace --image IMG --file golden.py --entry main() --out F --locals full`: the traces it wrote.
fn trace_golden(image: &str, dir: &Path) -> Vec<Value> {
    let out_file = dir.join(format!("golden-{}.jsonl", image.replace(['/', ':'], "_")));
    let out = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["trace", "--image", image, "--file"])
        .arg(golden_file())
        .args([
            "--entry", "main()", "--python", "python3", "--locals", "full", "--out",
        ])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swe-env trace on {image}: {}",
        describe(&out)
    );
    let text = std::fs::read_to_string(&out_file).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad trace line {l:?}: {e}")))
        .collect()
}

/// The trace whose entry is `function` called with `args` (the call frame's locals).
fn find_trace<'a>(traces: &'a [Value], function: &str, args: &[(&str, &str)]) -> &'a Value {
    let want: Vec<Value> = args
        .iter()
        .map(|(n, v)| serde_json::json!([n, v]))
        .collect();
    let found: Vec<&Value> = traces
        .iter()
        .filter(|t| {
            t["entry"]["function"] == function && t["frames"][0]["locals"].as_array() == Some(&want)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one trace of {function}{args:?}; entries present: {:?}",
        traces
            .iter()
            .map(|t| (
                t["entry"]["function"].clone(),
                t["frames"][0]["locals"].clone()
            ))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// The frames of `trace` as rows comparable with a hand-written table (strings for readable diffs).
fn frame_rows(trace: &Value) -> Vec<String> {
    trace["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let mut kind = f["kind"].as_str().unwrap().to_owned();
            if f["is_yield"] == true {
                kind = "yield".into();
            }
            let locals: Vec<String> = f["locals"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| format!("{}={}", p[0].as_str().unwrap(), p[1].as_str().unwrap()))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "{kind} {} {:?} [{}] {}",
                f["line"],
                f["source"].as_str().unwrap(),
                locals.join(", "),
                f["value"]
                    .as_str()
                    .map(|v| format!("-> {v}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

fn expected_rows(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|(kind, line, source, locals, value)| {
            let locals: Vec<String> = locals.iter().map(|(n, v)| format!("{n}={v}")).collect();
            format!(
                "{kind} {line} {:?} [{}] {}",
                format!("{source}\n"),
                locals.join(", "),
                value.map(|v| format!("-> {v}")).unwrap_or_default()
            )
        })
        .collect()
}

const COUNTER: &str = "<__swe_env_entry__.Counter object at 0x?>";
const LAMBDA: &str = "<function apply_all.<locals>.<lambda> at 0x?>";

/// A call frame's arguments (its locals) as (name, repr) pairs.
type Args = &'static [(&'static str, &'static str)];

/// One golden case: the entry function, its call arguments (to pick the trace), the expected frames.
type Case = (&'static str, Args, Vec<Row>);

/// The golden cases: one table for both Pythons (the tracer drops what only one of them reports).
#[rustfmt::skip]
fn golden_cases() -> Vec<Case> {
    let total: Vec<Row> = vec![
        ("call", 4, "def total(n):", &[("n", "2")], None),
        ("line", 5, "    s = 0", &[("n", "2")], None),
        ("line", 6, "    for i in range(n):", &[("n", "2"), ("s", "0")], None),
        ("line", 7, "        s += i", &[("n", "2"), ("s", "0"), ("i", "0")], None),
        ("line", 6, "    for i in range(n):", &[("n", "2"), ("s", "0"), ("i", "0")], None),
        ("line", 7, "        s += i", &[("n", "2"), ("s", "0"), ("i", "1")], None),
        ("line", 6, "    for i in range(n):", &[("n", "2"), ("s", "1"), ("i", "1")], None),
        ("line", 8, "    return s", &[("n", "2"), ("s", "1"), ("i", "1")], None),
        ("return", 8, "    return s", &[], Some("1")),
    ];
    // Recursion: the inner activation's frames are part of the outer trace (and fact(1) is a trace of its own).
    let fact: Vec<Row> = vec![
        ("call", 11, "def fact(n):", &[("n", "2")], None),
        ("line", 12, "    if n <= 1:", &[("n", "2")], None),
        ("line", 14, "    return n * fact(n - 1)", &[("n", "2")], None),
        ("call", 11, "def fact(n):", &[("n", "1")], None),
        ("line", 12, "    if n <= 1:", &[("n", "1")], None),
        ("line", 13, "        return 1", &[("n", "1")], None),
        ("return", 13, "        return 1", &[], Some("1")),
        ("return", 14, "    return n * fact(n - 1)", &[], Some("2")),
    ];
    // A generator's resume is a call frame at the def line (the contract's rule for call frames) with the locals it
    // resumes with; a yield is a return frame marked is_yield; the generator's final return is a plain return.
    let use_gen: Vec<Row> = vec![
        ("call", 24, "def use_gen():", &[], None),
        ("line", 25, "    out = []", &[], None),
        ("line", 26, "    for v in count_up(2):", &[("out", "[]")], None),
        ("call", 17, "def count_up(n):", &[("n", "2")], None),
        ("line", 18, "    i = 0", &[("n", "2")], None),
        ("line", 19, "    while i < n:", &[("n", "2"), ("i", "0")], None),
        ("line", 20, "        yield i", &[("n", "2"), ("i", "0")], None),
        ("yield", 20, "        yield i", &[], Some("0")),
        ("line", 27, "        out.append(v)", &[("out", "[]"), ("v", "0")], None),
        ("line", 26, "    for v in count_up(2):", &[("out", "[0]"), ("v", "0")], None),
        ("call", 17, "def count_up(n):", &[("n", "2"), ("i", "0")], None),
        ("line", 21, "        i += 1", &[("n", "2"), ("i", "0")], None),
        ("line", 19, "    while i < n:", &[("n", "2"), ("i", "1")], None),
        ("line", 20, "        yield i", &[("n", "2"), ("i", "1")], None),
        ("yield", 20, "        yield i", &[], Some("1")),
        ("line", 27, "        out.append(v)", &[("out", "[0]"), ("v", "1")], None),
        ("line", 26, "    for v in count_up(2):", &[("out", "[0, 1]"), ("v", "1")], None),
        ("call", 17, "def count_up(n):", &[("n", "2"), ("i", "1")], None),
        ("line", 21, "        i += 1", &[("n", "2"), ("i", "1")], None),
        ("line", 19, "    while i < n:", &[("n", "2"), ("i", "2")], None),
        ("return", 19, "    while i < n:", &[], Some("None")),
        ("line", 28, "    return out", &[("out", "[0, 1]"), ("v", "1")], None),
        ("return", 28, "    return out", &[], Some("[0, 1]")),
    ];
    // 3.9 reports the StopIteration that ends the `for` loop as an exception event at the loop's FOR_ITER (3.10+
    // reports nothing); the tracer drops it, so both Pythons give this same table.
    // The generator's own trace ends at its first yield.
    let count_up: Vec<Row> = vec![
        ("call", 17, "def count_up(n):", &[("n", "2")], None),
        ("line", 18, "    i = 0", &[("n", "2")], None),
        ("line", 19, "    while i < n:", &[("n", "2"), ("i", "0")], None),
        ("line", 20, "        yield i", &[("n", "2"), ("i", "0")], None),
        ("yield", 20, "        yield i", &[], Some("0")),
    ];
    // Caught in the same frame.
    let parse: Vec<Row> = vec![
        ("call", 31, "def parse(s):", &[("s", "'x'")], None),
        ("line", 32, "    try:", &[("s", "'x'")], None),
        ("line", 33, "        return int(s)", &[("s", "'x'")], None),
        ("exception", 33, "        return int(s)", &[], Some("ValueError(\"invalid literal for int() with base 10: 'x'\")")),
        ("line", 34, "    except ValueError:", &[("s", "'x'")], None),
        ("line", 35, "        return -1", &[("s", "'x'")], None),
        ("return", 35, "        return -1", &[], Some("-1")),
    ];
    // Uncaught: the exception leaves the entry scope, so the trace ends with its exception frame.
    let check: Vec<Row> = vec![
        ("call", 38, "def check(x):", &[("x", "-1")], None),
        ("line", 39, "    if x < 0:", &[("x", "-1")], None),
        ("line", 40, "        raise ValueError(\"negative\")", &[("x", "-1")], None),
        ("exception", 40, "        raise ValueError(\"negative\")", &[], Some("ValueError('negative')")),
    ];
    // Caught by the caller: check's frame is left by the exception (no frame of its own), then the caller sees it.
    let guarded: Vec<Row> = vec![
        ("call", 44, "def guarded():", &[], None),
        ("line", 45, "    try:", &[], None),
        ("line", 46, "        check(-1)", &[], None),
        ("call", 38, "def check(x):", &[("x", "-1")], None),
        ("line", 39, "    if x < 0:", &[("x", "-1")], None),
        ("line", 40, "        raise ValueError(\"negative\")", &[("x", "-1")], None),
        ("exception", 40, "        raise ValueError(\"negative\")", &[], Some("ValueError('negative')")),
        ("exception", 46, "        check(-1)", &[], Some("ValueError('negative')")),
        ("line", 47, "    except ValueError:", &[], None),
        ("line", 48, "        return \"caught\"", &[], None),
        ("return", 48, "        return \"caught\"", &[], Some("'caught'")),
    ];
    // Methods: the object's address is normalised to 0x?.
    let use_counter: Vec<Row> = vec![
        ("call", 60, "def use_counter():", &[], None),
        ("line", 61, "    c = Counter(1)", &[], None),
        ("call", 52, "    def __init__(self, start):", &[("self", COUNTER), ("start", "1")], None),
        ("line", 53, "        self.value = start", &[("self", COUNTER), ("start", "1")], None),
        ("return", 53, "        self.value = start", &[], Some("None")),
        ("line", 62, "    return c.bump(2)", &[("c", COUNTER)], None),
        ("call", 55, "    def bump(self, by):", &[("self", COUNTER), ("by", "2")], None),
        ("line", 56, "        self.value += by", &[("self", COUNTER), ("by", "2")], None),
        ("line", 57, "        return self.value", &[("self", COUNTER), ("by", "2")], None),
        ("return", 57, "        return self.value", &[], Some("3")),
        ("return", 62, "    return c.bump(2)", &[], Some("3")),
    ];
    // The list comprehension is folded into `doubled`: no frames of its own, but the repo function it calls is
    // traced.
    let doubled: Vec<Row> = vec![
        ("call", 69, "def doubled(xs):", &[("xs", "[1, 2]")], None),
        ("line", 70, "    return [double(x) for x in xs]", &[("xs", "[1, 2]")], None),
        ("call", 65, "def double(x):", &[("x", "1")], None),
        ("line", 66, "    return x * 2", &[("x", "1")], None),
        ("return", 66, "    return x * 2", &[], Some("2")),
        ("call", 65, "def double(x):", &[("x", "2")], None),
        ("line", 66, "    return x * 2", &[("x", "2")], None),
        ("return", 66, "    return x * 2", &[], Some("4")),
        ("return", 70, "    return [double(x) for x in xs]", &[], Some("[2, 4]")),
    ];
    // A lambda is traced like a function; its call frame's source is the line that defines it.
    let apply_all: Vec<Row> = vec![
        ("call", 73, "def apply_all(xs):", &[("xs", "[5]")], None),
        ("line", 74, "    f = lambda v: v + 1", &[("xs", "[5]")], None),
        ("line", 75, "    return list(map(f, xs))", &[("xs", "[5]"), ("f", LAMBDA)], None),
        ("call", 74, "    f = lambda v: v + 1", &[("v", "5")], None),
        ("line", 74, "    f = lambda v: v + 1", &[("v", "5")], None),
        ("return", 74, "    f = lambda v: v + 1", &[], Some("6")),
        ("return", 75, "    return list(map(f, xs))", &[], Some("[6]")),
    ];
    vec![
        ("total", &[("n", "2")], total),
        ("fact", &[("n", "2")], fact),
        ("use_gen", &[], use_gen),
        ("count_up", &[("n", "2")], count_up),
        ("parse", &[("s", "'x'")], parse),
        ("check", &[("x", "-1")], check),
        ("guarded", &[], guarded),
        ("use_counter", &[], use_counter),
        ("doubled", &[("xs", "[1, 2]")], doubled),
        ("apply_all", &[("xs", "[5]")], apply_all),
    ]
}

/// Compares every golden case with the traces on `image`; one panic listing every mismatch.
fn check_golden(image: &str, python39: bool) {
    let dir = tempfile::tempdir().unwrap();
    let traces = trace_golden(image, dir.path());
    let version = if python39 { "3.9." } else { "3.11." };
    let mut failures = Vec::new();
    for trace in &traces {
        let python = trace["python"].as_str().unwrap_or_default();
        if !python.starts_with(version) {
            failures.push(format!("trace python {python:?} is not {version}x"));
            break;
        }
    }
    for (function, args, rows) in golden_cases() {
        let trace = find_trace(&traces, function, args);
        let (got, want) = (frame_rows(trace), expected_rows(&rows));
        if got != want {
            failures.push(format!(
                "{function}{args:?} on {image}:\n  got:\n    {}\n  want:\n    {}",
                got.join("\n    "),
                want.join("\n    ")
            ));
        }
        // Every SOURCE occurs as a line of the CONTEXT, and the entry is marked once.
        let context = trace["context"].as_str().unwrap();
        for frame in trace["frames"].as_array().unwrap() {
            let source = frame["source"].as_str().unwrap();
            if !context.contains(source.trim_end_matches('\n')) {
                failures.push(format!(
                    "{function}: source {source:?} is not in the context"
                ));
            }
        }
        if context.matches("  # << START_OF_TRACE").count() != 1 {
            failures.push(format!(
                "{function}: the context does not mark its entry once:\n{context}"
            ));
        }
    }
    // `--locals full`: each trace's "cwm" field is its Full rendering; the Diff rendering of `total(2)` is the
    // hand-written string (the same on both Pythons).
    for value in &traces {
        let trace: Trace = serde_json::from_value(value.clone()).unwrap();
        if value["cwm"].as_str() != Some(render(&trace, LocalsStyle::Full).as_str()) {
            failures.push(format!(
                "{}: \"cwm\" is not the Full rendering",
                trace.entry.function
            ));
        }
    }
    let total: Trace =
        serde_json::from_value(find_trace(&traces, "total", &[("n", "2")]).clone()).unwrap();
    let diff = render(&total, LocalsStyle::Diff);
    if diff != TOTAL_2_DIFF {
        failures.push(format!(
            "total(2) Diff rendering:\n  got:  {diff:?}\n  want: {TOTAL_2_DIFF:?}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The whole CWM string of `total(2)` with Diff locals, written out by hand: the prompt (CONTEXT with the entry
/// marked), then each frame; a line frame writes `".."` for a local unchanged since the previous call/line frame.
const TOTAL_2_DIFF: &str = concat!(
    "<|begin_of_text|><|trace_context_start|>",
    "# file: golden.py\n",
    "def total(n):  # << START_OF_TRACE\n",
    "    s = 0\n",
    "    for i in range(n):\n",
    "        s += i\n",
    "    return s\n",
    "<|frame_sep|>",
    "<|call_sep|>{\"n\": \"2\"}<|action_sep|>def total(n):\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\"}<|action_sep|>    s = 0\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\", \"s\": \"0\"}<|action_sep|>    for i in range(n):\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\", \"s\": \"..\", \"i\": \"0\"}<|action_sep|>        s += i\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\", \"s\": \"..\", \"i\": \"..\"}<|action_sep|>    for i in range(n):\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\", \"s\": \"..\", \"i\": \"1\"}<|action_sep|>        s += i\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\", \"s\": \"1\", \"i\": \"..\"}<|action_sep|>    for i in range(n):\n<|frame_sep|>",
    "<|line_sep|>{\"n\": \"..\", \"s\": \"..\", \"i\": \"..\"}<|action_sep|>    return s\n<|frame_sep|>",
    "<|return_sep|><|action_sep|>    return s\n<|arg_sep|>\"1\"<|frame_sep|>",
    "<|end_of_text|>",
);

#[test]
fn golden_programs_on_python_3_11() {
    check_golden(BASE_IMAGE, false);
}

#[test]
fn golden_programs_on_python_3_9() {
    check_golden(python39_image(), true);
}

/// An entry expression whose exception propagates to the top: the CLI still writes the trace (it ends with the
/// exception frame, then `<|end_of_text|>`), records the entry as raised, and reports the failed run.
#[test]
fn an_entry_that_raises_out_of_the_top_is_traced_to_its_exception_frame() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("raised.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args(["trace", "--image", BASE_IMAGE, "--file"])
        .arg(golden_file())
        .args(["--entry", "check(-1)", "--locals", "full", "--out"])
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "swe-env trace: {}", describe(&out));
    let text = std::fs::read_to_string(&out_file).unwrap();
    let traces: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(traces.len(), 1, "{text}");
    let (_, _, rows) = golden_cases()
        .into_iter()
        .find(|(f, _, _)| *f == "check")
        .unwrap();
    assert_eq!(frame_rows(&traces[0]), expected_rows(&rows));
    assert_eq!(traces[0]["entry"]["outcome"]["kind"], "raised");
    let cwm = traces[0]["cwm"].as_str().unwrap();
    assert!(
        cwm.ends_with(
            "<|exception_sep|><|action_sep|>        raise ValueError(\"negative\")\n\
             <|arg_sep|>\"ValueError('negative')\"<|frame_sep|><|end_of_text|>"
        ),
        "{cwm}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ValueError: negative"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------------------------
// Pass/fail identical with and without the tracer.

/// One fixture task's suite, run plain and traced: both status maps, both exit codes, the tracer's call events.
struct SuiteRuns {
    plain: StatusMap,
    traced: StatusMap,
    exit_codes: (Option<i64>, Option<i64>),
    calls: usize,
}

/// Runs the task's test command over its whole suite at the gold + test patch state, plain then traced (the tracer
/// piped on stdin, `python - pytest … -- ARGS`), in one container.
async fn plain_and_traced(engine: &DockerEngine, row: &Instance) -> SuiteRuns {
    let image = swe_env::task::image_for(row, swe_env::task::OFFICIAL_IMAGE_TEMPLATE);
    let config = SandboxConfig {
        network_mode: "none".into(),
        workdir: "/".into(),
        ..SandboxConfig::default()
    };
    let sandbox = engine
        .create_sandbox(&image, &unique_id("trace-passfail"), config)
        .await
        .unwrap();
    // Remove the container even when an assertion inside fails (a panic would skip the removal).
    let result = AssertUnwindSafe(async {
        sandbox.write_bytes("/tmp/gold.patch", row.patch.as_bytes()).await.unwrap();
        sandbox.write_bytes("/tmp/test.patch", row.test_patch.as_bytes()).await.unwrap();
        let apply = "cd /testbed && git apply -v /tmp/gold.patch && git apply -v /tmp/test.patch";
        let out = sandbox
            .exec(&["bash", "-c", apply], None, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(out.exit_code, Some(0), "{}: patches do not apply", row.instance_id);
        let activate = swe_env::task::activation_for(row);
        let test_cmd = row.test_cmd.as_deref().unwrap();
        let args = test_cmd
            .strip_prefix("pytest")
            .unwrap_or_else(|| panic!("{}: test_cmd {test_cmd:?} is not pytest", row.instance_id));
        let parser = LogParser::parse_lenient(row.log_parser.as_deref().unwrap()).unwrap();
        let plain = format!("{activate} && cd /testbed && {test_cmd}");
        let traced = format!(
            "{activate} && mkdir -p /tmp/swe-env-trace-check && cd /testbed && python - pytest --out /tmp/swe-env-trace-check/events.jsonl --{args}"
        );
        let mut maps = Vec::new();
        let mut exit_codes = Vec::new();
        for (script, stdin) in [(plain, None), (traced, Some(TRACER_PY.as_bytes()))] {
            let out = sandbox
                .exec(&["bash", "-c", &script], stdin, Duration::from_secs(300))
                .await
                .unwrap();
            let log = String::from_utf8_lossy(&out.stdout).into_owned();
            let map = parser.parse(&log).unwrap();
            assert!(
                !map.is_empty(),
                "{}: no test statuses in the log of {script:?} (exit {:?}):\n{log}\n{}",
                row.instance_id,
                out.exit_code,
                String::from_utf8_lossy(&out.stderr)
            );
            maps.push(map);
            exit_codes.push(out.exit_code);
        }
        let count = "grep -c '\"k\":\"call\"' /tmp/swe-env-trace-check/events.jsonl; \
                     tail -n 1 /tmp/swe-env-trace-check/events.jsonl";
        let out = sandbox
            .exec(&["bash", "-c", count], None, Duration::from_secs(60))
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        let calls: usize = lines.next().unwrap_or("0").trim().parse().unwrap_or(0);
        assert_eq!(
            lines.next(),
            Some("{\"k\":\"end\"}"),
            "{}: the events file does not end with the end record",
            row.instance_id
        );
        let traced = maps.pop().unwrap();
        let plain = maps.pop().unwrap();
        SuiteRuns {
            plain,
            traced,
            exit_codes: (exit_codes[0], exit_codes[1]),
            calls,
        }
    })
    .catch_unwind()
    .await;
    sandbox.remove().await.unwrap();
    result.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_fail_sets_are_identical_with_and_without_the_tracer() {
    let engine = engine().await;
    let rows = swe_env::datasets::load_source("fixtures")
        .await
        .unwrap()
        .instances;
    assert_eq!(rows.len(), 5, "the five fixture tasks");
    let results =
        futures_util::future::join_all(rows.iter().map(|row| plain_and_traced(&engine, row))).await;
    for (row, runs) in rows.iter().zip(results) {
        let SuiteRuns {
            plain,
            traced,
            exit_codes,
            calls,
        } = runs;
        assert_eq!(
            exit_codes.0, exit_codes.1,
            "{}: pytest exit codes differ with the tracer",
            row.instance_id
        );
        assert_eq!(
            plain, traced,
            "{}: statuses differ with the tracer",
            row.instance_id
        );
        assert!(
            calls > 0,
            "{}: the tracer recorded no call of repo code",
            row.instance_id
        );
        // The gold state passes its FAIL_TO_PASS tests: the map is not trivially all-failing.
        let passed = plain.values().filter(|s| **s == TestStatus::Passed).count();
        assert!(passed > 0, "{}: nothing passed: {plain:?}", row.instance_id);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Determinism and throughput lines (task mode on a fixture task).

fn trace_task(out_file: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_swe-env"))
        .args([
            "trace",
            "--tasks",
            "fixtures",
            "--task",
            "swe-env-fixtures__spans-1",
            "--test",
            "tests/test_ops.py::test_merge_unsorted",
            "--out",
        ])
        .arg(out_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "swe-env trace --task: {}",
        describe(&out)
    );
    out
}

/// The first number on the first line of `text` that mentions `label`.
fn figure(text: &str, label: &str) -> Option<f64> {
    let line = text.lines().find(|l| l.contains(label))?;
    let re = regex::Regex::new(r"[0-9]+(\.[0-9]+)?").unwrap();
    re.find(line)?.as_str().parse().ok()
}

#[test]
fn task_traces_are_byte_identical_twice_and_the_summary_reports_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let first = trace_task(&a);
    trace_task(&b);
    let (a, b) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(!a.is_empty(), "no traces written");
    assert!(a == b, "the two runs wrote different traces");
    let traces: Vec<Value> = String::from_utf8(a)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let functions: BTreeMap<&str, usize> = traces.iter().fold(BTreeMap::new(), |mut m, t| {
        *m.entry(t["entry"]["function"].as_str().unwrap())
            .or_default() += 1;
        m
    });
    assert!(
        traces.iter().all(|t| t["cwm"]
            .as_str()
            .is_some_and(|c| c.ends_with("<|end_of_text|>"))),
        "every trace carries its rendered CWM string"
    );
    assert!(!functions.is_empty());
    let summary = format!(
        "{}\n{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    for label in ["traces/s", "frames/s", "bytes per frame"] {
        assert!(
            figure(&summary, label).is_some(),
            "the summary has no {label:?} line with a number:\n{summary}"
        );
    }
}
