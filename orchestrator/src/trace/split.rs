//! Events to traces: one candidate trace per call of a traced function (entry scope = that call).
//!
//! The [`Splitter`] is fed the tracer's records one by one and keeps only a stack of open scopes, each with its
//! candidate: every frame is appended to every open candidate; a candidate is complete when its entry frame
//! returns (or yields), or is left by an exception (an `exit` record); a candidate above
//! [`SplitOptions::max_frames`] is dropped at once (`too_long`); candidates still open at a cap, a test's end, a
//! tracer error or the end of the output are dropped (`incomplete`). Complete traces are deduplicated by their id
//! (the sha256 of their full rendering), counting occurrences. Entries in files matching
//! [`SplitOptions::entry_exclude`] (test files by default) open no candidate but are traced inside the others.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::collections::VecDeque;

use serde::Deserialize;
use serde::Serialize;

use crate::trace::context::build_context;
use crate::trace::event::parse_line;
use crate::trace::event::CodeId;
use crate::trace::event::CodeRecord;
use crate::trace::event::EventError;
use crate::trace::event::FrameId;
use crate::trace::event::Record;
use crate::trace::format::render;
use crate::trace::format::Entry;
use crate::trace::format::EntryOutcome;
use crate::trace::format::Frame;
use crate::trace::format::FrameKind;
use crate::trace::format::LocalsStyle;
use crate::trace::format::Trace;
use crate::trajectory::digest::sha256_hex;

/// Default of [`SplitOptions::max_frames`].
pub const DEFAULT_MAX_FRAMES: usize = 2000;
/// Default of [`SplitOptions::max_test_frames`].
pub const DEFAULT_MAX_TEST_FRAMES: u64 = 100_000;

/// Default of [`SplitOptions::entry_exclude`]: test files by the SWE-bench rule (a `test`/`tests`/`testing` path
/// component, `test_*.py`, `*_test.py`, `conftest.py`).
pub const DEFAULT_ENTRY_EXCLUDE: [&str; 9] = [
    "test/*",
    "*/test/*",
    "tests/*",
    "*/tests/*",
    "testing/*",
    "*/testing/*",
    "test_*.py",
    "*_test.py",
    "conftest.py",
];

/// How events are split into traces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOptions {
    /// A candidate with more frames is dropped (`too_long`).
    pub max_frames: usize,
    /// Frames of all the traces one test (or entry) keeps: every nested call of a deep recursion is a trace holding
    /// every frame under it (output quadratic in the depth), so once a test's kept traces reach this many frames its
    /// later new traces are dropped (`over_budget`).
    pub max_test_frames: u64,
    /// Globs of files whose functions open no trace (they are still traced inside other traces). A glob without
    /// `/` is matched against the file name, one with `/` against the whole path; `*` matches any characters
    /// (`/` included), `?` one character.
    pub entry_exclude: Vec<String>,
}

impl Default for SplitOptions {
    fn default() -> Self {
        Self {
            max_frames: DEFAULT_MAX_FRAMES,
            max_test_frames: DEFAULT_MAX_TEST_FRAMES,
            entry_exclude: DEFAULT_ENTRY_EXCLUDE
                .iter()
                .map(|glob| glob.to_string())
                .collect(),
        }
    }
}

impl SplitOptions {
    /// `file` (a code record's path) opens no trace.
    pub fn excludes_entry(&self, file: &str) -> bool {
        let name = file.rsplit('/').next().unwrap_or(file);
        self.entry_exclude.iter().any(|glob| {
            let target = if glob.contains('/') { file } else { name };
            glob_match(glob.as_bytes(), target.as_bytes())
        })
    }
}

/// fnmatch-style: `*` any bytes (`/` included), `?` one byte, anything else itself.
fn glob_match(glob: &[u8], text: &[u8]) -> bool {
    match glob.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => (0..=text.len()).any(|skip| glob_match(rest, &text[skip..])),
        Some((b'?', rest)) => !text.is_empty() && glob_match(rest, &text[1..]),
        Some((byte, rest)) => text.first() == Some(byte) && glob_match(rest, &text[1..]),
    }
}

/// Counts of one split (and of each test, in [`SplitStats::per_test`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCounts {
    /// Records of the test (or of the whole output).
    pub events: u64,
    /// Call, line, return and exception records.
    pub frames: u64,
    /// Complete traces, duplicates included.
    pub complete: u64,
    /// Complete traces equal to an earlier one (counted in its `occurrences`).
    pub duplicates: u64,
    /// Candidates dropped for having more than `max_frames` frames.
    pub too_long: u64,
    /// Candidates still open at a cap, a test's end, a tracer error or the end of the output.
    pub incomplete: u64,
    /// Frames whose line is outside their code record's block (or whose code record is missing): empty SOURCE.
    pub missing_source: u64,
    /// `return`/`exit` records of a frame that is not open.
    pub unmatched: u64,
    /// New complete traces dropped because their test's kept traces already held `max_test_frames` frames.
    #[serde(default)]
    pub over_budget: u64,
}

/// The counts of one test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCounts {
    pub nodeid: String,
    #[serde(flatten)]
    pub counts: SplitCounts,
}

/// Counts of a split: the whole output and each test.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitStats {
    #[serde(flatten)]
    pub total: SplitCounts,
    /// Unique traces (`complete - duplicates`).
    pub traces: u64,
    pub per_test: Vec<TestCounts>,
}

/// A test and how it ended (`passed`, `failed`, `skipped`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestOutcome {
    pub nodeid: String,
    pub outcome: String,
}

/// A cap the tracer hit: `events` or `time` (for the rest of test `nodeid`), `bytes` (for the rest of the run).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cap {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodeid: Option<String>,
}

/// What a split gives.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOutput {
    /// Unique complete traces, in order of first completion.
    pub traces: Vec<Trace>,
    pub stats: SplitStats,
    pub tests: Vec<TestOutcome>,
    pub caps: Vec<Cap>,
    /// The tracer's own errors (`error` records).
    pub errors: Vec<String>,
    /// The Python version of the `start` record.
    pub python: String,
    /// The output ended with an `end` record (the tracer was not killed).
    pub ended: bool,
}

/// An open scope of the stack.
struct Scope {
    frame: FrameId,
    /// The exception that last went through this scope.
    exception: Option<String>,
    /// `None` when its entry is excluded, or it was dropped for being too long.
    candidate: Option<Candidate>,
}

struct Candidate {
    code: CodeId,
    args: Vec<String>,
    literal_args: bool,
    /// Position of its call frame in the frame log: its frames are the log from there on.
    start: u64,
}

/// Turns tracer records into traces; see the module docs.
pub struct Splitter {
    options: SplitOptions,
    codes: HashMap<CodeId, CodeRecord>,
    scopes: Vec<Scope>,
    /// The frames since the oldest open candidate's call (each with its code), shared by every open candidate:
    /// never more than `max_frames + 1`.
    log: VecDeque<(Frame, CodeId)>,
    /// Position of `log[0]` in the whole output's frames.
    log_start: u64,
    test: String,
    /// Between a `test` record and its `test_end`: counts also go to the test's.
    in_test: bool,
    /// Frames of the traces kept for the current test (see [`SplitOptions::max_test_frames`]).
    test_frames: u64,
    seen: HashMap<String, usize>,
    out: SplitOutput,
}

impl Splitter {
    /// A splitter with `options`.
    pub fn new(options: SplitOptions) -> Self {
        Self {
            options,
            codes: HashMap::new(),
            scopes: Vec::new(),
            log: VecDeque::new(),
            log_start: 0,
            test: String::new(),
            test_frames: 0,
            in_test: false,
            seen: HashMap::new(),
            out: SplitOutput::default(),
        }
    }

    /// Feeds one record.
    pub fn push(&mut self, record: Record) {
        if !matches!(record, Record::Test { .. }) {
            self.count(|c| c.events += 1);
        }
        match record {
            Record::Start { python, .. } => self.out.python = python,
            Record::Code(code) => {
                self.codes.insert(code.id, code);
            }
            Record::Call {
                f,
                c,
                l,
                loc,
                args,
                lit,
            } => {
                // A first call's line is the def line (settrace gives the first decorator's); a resume keeps its own.
                let line = self.codes.get(&c).map_or(l, |code| l.max(code.def_line));
                let frame = self.frame(FrameKind::Call, c, line, Some(loc), None, false);
                // Its frames start with this call frame, appended once its scope is open.
                let start = self.log_start + self.log.len() as u64;
                let excluded = self
                    .codes
                    .get(&c)
                    .is_none_or(|code| self.options.excludes_entry(&code.file));
                let candidate = (!excluded).then_some(Candidate {
                    code: c,
                    args,
                    literal_args: lit,
                    start,
                });
                self.scopes.push(Scope {
                    frame: f,
                    exception: None,
                    candidate,
                });
                self.append(frame, c);
            }
            Record::Line { c, l, loc, .. } => {
                let frame = self.frame(FrameKind::Line, c, l, Some(loc), None, false);
                self.append(frame, c);
            }
            Record::Exception { f, c, l, v } => {
                let frame = self.frame(FrameKind::Exception, c, l, None, Some(v.clone()), false);
                self.append(frame, c);
                if let Some(scope) = self.scopes.iter_mut().rev().find(|scope| scope.frame == f) {
                    scope.exception = Some(v);
                }
            }
            Record::Return {
                f,
                c,
                l,
                v,
                lit,
                is_yield,
            } => {
                let frame = self.frame(FrameKind::Return, c, l, None, Some(v.clone()), is_yield);
                self.append(frame, c);
                let outcome = if is_yield {
                    EntryOutcome::Yielded {
                        value: v,
                        literal: lit,
                    }
                } else {
                    EntryOutcome::Returned {
                        value: v,
                        literal: lit,
                    }
                };
                self.close(f, |_| outcome);
            }
            Record::Exit { f } => self.close(f, |scope| EntryOutcome::Raised {
                value: scope.exception.clone().unwrap_or_default(),
            }),
            Record::Test { nodeid } => {
                self.drop_open();
                self.out.stats.per_test.push(TestCounts {
                    nodeid: nodeid.clone(),
                    ..TestCounts::default()
                });
                self.test = nodeid;
                self.in_test = true;
                self.test_frames = 0;
                // The record itself counts for its test.
                self.count(|c| c.events += 1);
            }
            Record::TestEnd { nodeid, outcome } => {
                self.drop_open();
                self.in_test = false;
                self.out.tests.push(TestOutcome { nodeid, outcome });
            }
            Record::Cap { reason, nodeid } => {
                self.drop_open();
                self.out.caps.push(Cap { reason, nodeid });
            }
            Record::Error { detail } => {
                self.drop_open();
                self.out.errors.push(detail);
            }
            Record::End => {
                self.drop_open();
                self.out.ended = true;
            }
        }
    }

    /// Drops the open candidates (`incomplete`) and gives the result.
    pub fn finish(mut self) -> SplitOutput {
        self.drop_open();
        let total = &self.out.stats.total;
        self.out.stats.traces = total.complete - total.duplicates;
        self.out
    }

    /// Adds to the whole output's counts and the current test's.
    fn count(&mut self, f: impl Fn(&mut SplitCounts)) {
        f(&mut self.out.stats.total);
        if let Some(test) = self.out.stats.per_test.last_mut().filter(|_| self.in_test) {
            f(&mut test.counts);
        }
    }

    fn frame(
        &mut self,
        kind: FrameKind,
        code: CodeId,
        line: u32,
        locals: Option<Vec<(String, String)>>,
        value: Option<String>,
        is_yield: bool,
    ) -> Frame {
        self.count(|c| c.frames += 1);
        let record = self.codes.get(&code);
        let source = record
            .and_then(|record| record.source(line))
            .map(str::to_string);
        let frame = Frame {
            kind,
            file: record.map(|record| record.file.clone()).unwrap_or_default(),
            function: record.map(|record| record.name.clone()).unwrap_or_default(),
            line,
            source: source.clone().unwrap_or_default(),
            locals,
            value,
            is_yield,
        };
        if source.is_none() {
            self.count(|c| c.missing_source += 1);
        }
        frame
    }

    /// Appends `frame` (of code `code`) to every open candidate (to the log), dropping those that become too long.
    fn append(&mut self, frame: Frame, code: CodeId) {
        self.log.push_back((frame, code));
        let end = self.log_start + self.log.len() as u64;
        let max_frames = self.options.max_frames as u64;
        let mut too_long = 0;
        // The oldest candidates are the longest: stop at the first that is not too long.
        for scope in &mut self.scopes {
            match &scope.candidate {
                Some(candidate) if end - candidate.start > max_frames => {
                    scope.candidate = None;
                    too_long += 1;
                }
                Some(_) => break,
                None => {}
            }
        }
        if too_long > 0 {
            self.count(|c| c.too_long += too_long);
        }
        self.trim_log();
    }

    /// Forgets the frames before the oldest open candidate's call.
    fn trim_log(&mut self) {
        let oldest = self
            .scopes
            .iter()
            .find_map(|scope| scope.candidate.as_ref().map(|candidate| candidate.start));
        let keep_from = oldest.unwrap_or(self.log_start + self.log.len() as u64);
        let forget = (keep_from.saturating_sub(self.log_start) as usize).min(self.log.len());
        self.log.drain(..forget);
        self.log_start += forget as u64;
    }

    /// The scope of frame `frame` is left: scopes above it (never closed) are dropped, its candidate completes.
    fn close(&mut self, frame: FrameId, outcome: impl FnOnce(&Scope) -> EntryOutcome) {
        let Some(index) = self.scopes.iter().rposition(|scope| scope.frame == frame) else {
            self.count(|c| c.unmatched += 1);
            return;
        };
        let above = self.scopes.split_off(index + 1);
        let dropped = above
            .iter()
            .filter(|scope| scope.candidate.is_some())
            .count() as u64;
        self.count(|c| c.incomplete += dropped);
        let Some(scope) = self.scopes.pop() else {
            return;
        };
        let outcome = outcome(&scope);
        if let Some(candidate) = scope.candidate {
            self.complete(candidate, outcome);
        }
        self.trim_log();
    }

    fn complete(&mut self, candidate: Candidate, outcome: EntryOutcome) {
        let from = candidate.start.saturating_sub(self.log_start) as usize;
        let (frames, used): (Vec<Frame>, BTreeSet<CodeId>) =
            self.log.range(from..).cloned().unzip();
        let codes: Vec<&CodeRecord> = used.iter().filter_map(|id| self.codes.get(id)).collect();
        let entry_code = self.codes.get(&candidate.code);
        let mut trace = Trace {
            id: String::new(),
            entry: Entry {
                file: entry_code.map(|code| code.file.clone()).unwrap_or_default(),
                function: entry_code.map(|code| code.name.clone()).unwrap_or_default(),
                line: entry_code.map_or(0, |code| code.def_line),
                args: candidate.args,
                literal_args: candidate.literal_args,
                outcome,
                generator: entry_code.is_some_and(|code| code.generator),
            },
            context: build_context(&codes, candidate.code),
            frames,
            python: self.out.python.clone(),
            test: self.test.clone(),
            occurrences: 1,
        };
        trace.id = sha256_hex(render(&trace, LocalsStyle::Full).as_bytes());
        self.count(|c| c.complete += 1);
        match self.seen.get(&trace.id) {
            Some(&index) => {
                self.out.traces[index].occurrences += 1;
                self.count(|c| c.duplicates += 1);
            }
            None => {
                let frames = trace.frames.len() as u64;
                if self.test_frames + frames > self.options.max_test_frames {
                    self.count(|c| c.over_budget += 1);
                    return;
                }
                self.test_frames += frames;
                self.seen.insert(trace.id.clone(), self.out.traces.len());
                self.out.traces.push(trace);
            }
        }
    }

    /// Drops every open scope; their candidates are `incomplete`.
    fn drop_open(&mut self) {
        let open = self
            .scopes
            .drain(..)
            .filter(|scope| scope.candidate.is_some())
            .count() as u64;
        self.trim_log();
        if open > 0 {
            self.count(|c| c.incomplete += open);
        }
    }
}

/// Splits a whole tracer output (JSON lines). A last line without its newline that does not parse is the torn tail
/// of a killed tracer and is ignored (with a warning); any other bad line is an error naming the line.
pub fn split_str(text: &str, options: SplitOptions) -> Result<SplitOutput, EventError> {
    let mut splitter = Splitter::new(options);
    let mut lines = text.split_inclusive('\n').enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(line.trim_end_matches(['\n', '\r'])) {
            Ok(record) => splitter.push(record),
            Err(_) if lines.peek().is_none() && !line.ends_with('\n') => {
                tracing::warn!(
                    line = index + 1,
                    "the tracer output ends with a torn line; it is ignored"
                );
            }
            Err(error) => return Err(error.at_line(index + 1)),
        }
    }
    Ok(splitter.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::context::START_OF_TRACE;
    use crate::trace::format::render_frames;

    /// `m.py`:
    /// ```text
    ///  1 def add(a, b):
    ///  2     return a + b
    ///  3
    ///  4 def twice(x):
    ///  5     y = add(x, x)
    ///  6     return y
    /// ```
    const M_CODES: &str = r#"{"k":"start","python":"3.11.2","tracer":1}
{"k":"code","id":1,"file":"m.py","name":"add","def_line":1,"first_line":1,"lines":["def add(a, b):\n","    return a + b\n"],"enclosing":[]}
{"k":"code","id":2,"file":"m.py","name":"twice","def_line":4,"first_line":4,"lines":["def twice(x):\n","    y = add(x, x)\n","    return y\n"],"enclosing":[]}
{"k":"code","id":9,"file":"tests/test_m.py","name":"test_twice","def_line":3,"first_line":3,"lines":["def test_twice():\n","    assert twice(3) == 6\n"],"enclosing":[]}
"#;

    /// `twice(3)` called from the test `test_twice`, events as the tracer writes them.
    const TWICE_3: &str = r#"{"k":"call","f":100,"c":9,"l":3,"loc":[],"args":[],"lit":true}
{"k":"line","f":100,"c":9,"l":4,"loc":[]}
{"k":"call","f":1,"c":2,"l":4,"loc":[["x","3"]],"args":["x"],"lit":true}
{"k":"line","f":1,"c":2,"l":5,"loc":[["x","3"]]}
{"k":"call","f":2,"c":1,"l":1,"loc":[["a","3"],["b","3"]],"args":["a","b"],"lit":true}
{"k":"line","f":2,"c":1,"l":2,"loc":[["a","3"],["b","3"]]}
{"k":"return","f":2,"c":1,"l":2,"v":"6","lit":true}
{"k":"line","f":1,"c":2,"l":6,"loc":[["x","3"],["y","6"]]}
{"k":"return","f":1,"c":2,"l":6,"v":"6","lit":true}
{"k":"return","f":100,"c":9,"l":4,"v":"None","lit":true}
"#;

    /// Splits `text` with the default options, checking the invariants every trace keeps.
    fn split(text: &str) -> SplitOutput {
        let out = split_str(text, SplitOptions::default()).unwrap();
        for trace in &out.traces {
            check_invariants(trace);
        }
        out
    }

    /// Every frame's SOURCE is a line of the CONTEXT (the entry's def line with the marker); one marker; the
    /// rendering ends the trace once; the id is the full rendering's hash.
    fn check_invariants(trace: &Trace) {
        let marked = format!(
            "{}{START_OF_TRACE}\n",
            trace.frames[0].source.trim_end_matches('\n')
        );
        let lines: Vec<&str> = trace.context.split_inclusive('\n').collect();
        assert_eq!(
            trace.context.matches(START_OF_TRACE).count(),
            1,
            "{}",
            trace.context
        );
        for frame in trace.frames.iter().filter(|frame| !frame.source.is_empty()) {
            let found = lines.contains(&frame.source.as_str())
                || (frame.line == trace.entry.line && lines.contains(&marked.as_str()));
            assert!(found, "{:?} not in\n{}", frame.source, trace.context);
        }
        assert_eq!(trace.frames[0].kind, FrameKind::Call);
        assert_eq!(
            render(trace, LocalsStyle::Diff)
                .matches("<|end_of_text|>")
                .count(),
            1
        );
        assert_eq!(
            trace.id,
            sha256_hex(render(trace, LocalsStyle::Full).as_bytes())
        );
    }

    fn test_run(nodeid: &str, body: &str, outcome: &str) -> String {
        format!(
            "{{\"k\":\"test\",\"nodeid\":\"{nodeid}\"}}\n{body}{{\"k\":\"test_end\",\"nodeid\":\"{nodeid}\",\"outcome\":\"{outcome}\"}}\n"
        )
    }

    /// `(kind, line, source)` of each frame.
    fn shape(trace: &Trace) -> Vec<(FrameKind, u32, &str)> {
        trace
            .frames
            .iter()
            .map(|frame| (frame.kind, frame.line, frame.source.as_str()))
            .collect()
    }

    fn by_function<'a>(out: &'a SplitOutput, function: &str) -> Vec<&'a Trace> {
        out.traces
            .iter()
            .filter(|trace| trace.entry.function == function)
            .collect()
    }

    #[test]
    fn nested_calls_give_a_trace_per_call_the_outer_containing_the_inner() {
        let out = split(&format!(
            "{M_CODES}{}{{\"k\":\"end\"}}\n",
            test_run("t::a", TWICE_3, "passed")
        ));
        assert!(out.ended);
        assert_eq!(out.python, "3.11.2");
        assert_eq!(
            out.tests,
            [TestOutcome {
                nodeid: "t::a".into(),
                outcome: "passed".into()
            }]
        );
        // The test function (a test file) opens no trace; add completes first.
        let names: Vec<&str> = out
            .traces
            .iter()
            .map(|trace| trace.entry.function.as_str())
            .collect();
        assert_eq!(names, ["add", "twice"]);
        let (add, twice) = (&out.traces[0], &out.traces[1]);
        assert_eq!(
            shape(add),
            [
                (FrameKind::Call, 1, "def add(a, b):\n"),
                (FrameKind::Line, 2, "    return a + b\n"),
                (FrameKind::Return, 2, "    return a + b\n"),
            ]
        );
        assert_eq!(
            shape(twice),
            [
                (FrameKind::Call, 4, "def twice(x):\n"),
                (FrameKind::Line, 5, "    y = add(x, x)\n"),
                (FrameKind::Call, 1, "def add(a, b):\n"),
                (FrameKind::Line, 2, "    return a + b\n"),
                (FrameKind::Return, 2, "    return a + b\n"),
                (FrameKind::Line, 6, "    return y\n"),
                (FrameKind::Return, 6, "    return y\n"),
            ]
        );
        assert_eq!(&twice.frames[2..5], &add.frames[..]);
        assert_eq!(
            twice.entry.outcome,
            EntryOutcome::Returned {
                value: "6".into(),
                literal: true
            }
        );
        assert_eq!(
            (
                twice.entry.line,
                twice.entry.args.as_slice(),
                twice.entry.literal_args
            ),
            (4, &["x".to_string()][..], true)
        );
        assert_eq!(
            (
                twice.test.as_str(),
                twice.python.as_str(),
                twice.occurrences
            ),
            ("t::a", "3.11.2", 1)
        );
        assert_eq!(
            twice.context,
            "# file: m.py\ndef add(a, b):\n    return a + b\n\ndef twice(x):  # << START_OF_TRACE\n    y = add(x, x)\n    return y\n"
        );
        assert_eq!(
            add.context,
            "# file: m.py\ndef add(a, b):  # << START_OF_TRACE\n    return a + b\n"
        );
        assert_eq!(
            twice.id,
            sha256_hex(render(twice, LocalsStyle::Full).as_bytes())
        );
        assert!(render_frames(twice, LocalsStyle::Diff).ends_with("<|return_sep|><|action_sep|>    return y\n<|arg_sep|>\"6\"<|frame_sep|><|end_of_text|>"));
        let stats = &out.stats;
        assert_eq!(
            (
                stats.total.events,
                stats.total.frames,
                stats.total.complete,
                stats.traces
            ),
            (17, 10, 3 - 1, 2)
        );
        assert_eq!(
            (
                stats.total.incomplete,
                stats.total.too_long,
                stats.total.missing_source
            ),
            (0, 0, 0)
        );
        assert_eq!(stats.per_test.len(), 1);
        assert_eq!(
            (
                stats.per_test[0].nodeid.as_str(),
                stats.per_test[0].counts.events
            ),
            ("t::a", 12)
        );
    }

    #[test]
    fn the_same_call_twice_is_one_trace_with_two_occurrences() {
        let text = format!(
            "{M_CODES}{}{}",
            test_run("t::a", TWICE_3, "passed"),
            test_run("t::b", TWICE_3, "passed")
        );
        let out = split(&text);
        assert_eq!(out.traces.len(), 2);
        assert!(out
            .traces
            .iter()
            .all(|trace| trace.occurrences == 2 && trace.test == "t::a"));
        assert_eq!(
            (
                out.stats.total.complete,
                out.stats.total.duplicates,
                out.stats.traces
            ),
            (4, 2, 2)
        );
        assert_eq!(out.stats.per_test[1].counts.duplicates, 2);
        assert!(!out.ended);
        // Another argument is another trace.
        let other = TWICE_3.replace("[\"x\",\"3\"]", "[\"x\",\"4\"]");
        let out = split(&format!(
            "{M_CODES}{}{}",
            test_run("t::a", TWICE_3, "passed"),
            test_run("t::b", &other, "passed")
        ));
        assert_eq!(by_function(&out, "twice").len(), 2);
        assert_eq!(by_function(&out, "add").len(), 1);
    }

    #[test]
    fn recursion_gives_one_trace_per_depth() {
        // 1 def fact(n):
        // 2     return 1 if n <= 1 else n * fact(n - 1)
        let codes = r#"{"k":"code","id":1,"file":"r.py","name":"fact","def_line":1,"first_line":1,"lines":["def fact(n):\n","    return 1 if n <= 1 else n * fact(n - 1)\n"],"enclosing":[]}
"#;
        let events = r#"{"k":"call","f":1,"c":1,"l":1,"loc":[["n","2"]],"args":["n"],"lit":true}
{"k":"line","f":1,"c":1,"l":2,"loc":[["n","2"]]}
{"k":"call","f":2,"c":1,"l":1,"loc":[["n","1"]],"args":["n"],"lit":true}
{"k":"line","f":2,"c":1,"l":2,"loc":[["n","1"]]}
{"k":"return","f":2,"c":1,"l":2,"v":"1","lit":true}
{"k":"return","f":1,"c":1,"l":2,"v":"2","lit":true}
"#;
        let out = split(&format!("{codes}{}", test_run("t", events, "passed")));
        assert_eq!(out.traces.len(), 2);
        assert_eq!(out.traces[0].frames.len(), 3);
        assert_eq!(out.traces[1].frames.len(), 6);
        assert_eq!(
            out.traces[0].entry.outcome,
            EntryOutcome::Returned {
                value: "1".into(),
                literal: true
            }
        );
        assert_eq!(
            out.traces[1].entry.outcome,
            EntryOutcome::Returned {
                value: "2".into(),
                literal: true
            }
        );
        // One block in the context, shown once.
        assert_eq!(out.traces[1].context.matches("def fact").count(), 1);
    }

    #[test]
    fn generator_resumes_are_calls_and_yields_end_them() {
        // 1 @decorate
        // 2 def gen(n):
        // 3     for i in range(n):
        // 4         yield i
        let codes = r#"{"k":"code","id":1,"file":"g.py","name":"gen","def_line":2,"first_line":1,"lines":["@decorate\n","def gen(n):\n","    for i in range(n):\n","        yield i\n"],"enclosing":[]}
"#;
        let events = r#"{"k":"call","f":5,"c":1,"l":1,"loc":[["n","1"]],"args":["n"],"lit":true}
{"k":"line","f":5,"c":1,"l":3,"loc":[["n","1"]]}
{"k":"line","f":5,"c":1,"l":4,"loc":[["n","1"],["i","0"]]}
{"k":"return","f":5,"c":1,"l":4,"v":"0","lit":true,"yield":true}
{"k":"call","f":5,"c":1,"l":4,"loc":[["n","1"],["i","0"]],"args":["n"],"lit":true}
{"k":"line","f":5,"c":1,"l":3,"loc":[["n","1"],["i","0"]]}
{"k":"return","f":5,"c":1,"l":3,"v":"None","lit":true}
"#;
        let out = split(&format!("{codes}{}", test_run("t", events, "passed")));
        assert_eq!(out.traces.len(), 2);
        let (first, resume) = (&out.traces[0], &out.traces[1]);
        // The first call shows the def line (settrace gives the decorator's line); a resume keeps its line.
        assert_eq!(shape(first)[0], (FrameKind::Call, 2, "def gen(n):\n"));
        assert_eq!(
            first.entry.outcome,
            EntryOutcome::Yielded {
                value: "0".into(),
                literal: true
            }
        );
        assert!(first.frames[3].is_yield);
        assert_eq!(shape(resume)[0], (FrameKind::Call, 4, "        yield i\n"));
        assert_eq!(
            resume.entry.outcome,
            EntryOutcome::Returned {
                value: "None".into(),
                literal: true
            }
        );
        assert!(first.context.contains("def gen(n):  # << START_OF_TRACE\n"));
        assert!(first.context.starts_with("# file: g.py\n@decorate\n"));
    }

    /// 1 def inner(x):
    /// 2     raise ValueError(x)
    /// 3
    /// 4 def outer(x):
    /// 5     try:
    /// 6         inner(x)
    /// 7     except ValueError:
    /// 8         return 0
    const EXC_CODES: &str = r#"{"k":"code","id":1,"file":"e.py","name":"inner","def_line":1,"first_line":1,"lines":["def inner(x):\n","    raise ValueError(x)\n"],"enclosing":[]}
{"k":"code","id":2,"file":"e.py","name":"outer","def_line":4,"first_line":4,"lines":["def outer(x):\n","    try:\n","        inner(x)\n","    except ValueError:\n","        return 0\n"],"enclosing":[]}
"#;
    const INNER_RAISES: &str = r#"{"k":"call","f":2,"c":1,"l":1,"loc":[["x","1"]],"args":["x"],"lit":true}
{"k":"line","f":2,"c":1,"l":2,"loc":[["x","1"]]}
{"k":"exception","f":2,"c":1,"l":2,"v":"ValueError(1)"}
{"k":"exit","f":2}
"#;

    #[test]
    fn a_propagating_exception_ends_the_trace_with_its_exception_frame() {
        let out = split(&format!(
            "{EXC_CODES}{}",
            test_run("t", INNER_RAISES, "failed")
        ));
        assert_eq!(out.traces.len(), 1);
        let inner = &out.traces[0];
        assert_eq!(
            inner.entry.outcome,
            EntryOutcome::Raised {
                value: "ValueError(1)".into()
            }
        );
        assert_eq!(
            shape(inner).last(),
            Some(&(FrameKind::Exception, 2, "    raise ValueError(x)\n"))
        );
        assert!(render_frames(inner, LocalsStyle::Diff).ends_with(
            "<|exception_sep|><|action_sep|>    raise ValueError(x)\n<|arg_sep|>\"ValueError(1)\"<|frame_sep|><|end_of_text|>"
        ));
    }

    #[test]
    fn a_caught_exception_continues_the_outer_trace() {
        let events = format!(
            "{}{INNER_RAISES}{}",
            r#"{"k":"call","f":1,"c":2,"l":4,"loc":[["x","1"]],"args":["x"],"lit":true}
{"k":"line","f":1,"c":2,"l":5,"loc":[["x","1"]]}
{"k":"line","f":1,"c":2,"l":6,"loc":[["x","1"]]}
"#,
            r#"{"k":"exception","f":1,"c":2,"l":6,"v":"ValueError(1)"}
{"k":"line","f":1,"c":2,"l":7,"loc":[["x","1"]]}
{"k":"line","f":1,"c":2,"l":8,"loc":[["x","1"]]}
{"k":"return","f":1,"c":2,"l":8,"v":"0","lit":true}
"#
        );
        let out = split(&format!("{EXC_CODES}{}", test_run("t", &events, "passed")));
        let outer = by_function(&out, "outer")[0];
        assert_eq!(
            outer.entry.outcome,
            EntryOutcome::Returned {
                value: "0".into(),
                literal: true
            }
        );
        let kinds: Vec<FrameKind> = outer.frames.iter().map(|frame| frame.kind).collect();
        use FrameKind::*;
        assert_eq!(
            kinds,
            [Call, Line, Line, Call, Line, Exception, Exception, Line, Line, Return]
        );
        assert_eq!(
            by_function(&out, "inner")[0].entry.outcome,
            EntryOutcome::Raised {
                value: "ValueError(1)".into()
            }
        );
    }

    #[test]
    fn a_candidate_above_max_frames_is_dropped_the_outer_too() {
        let options = SplitOptions {
            max_frames: 4,
            ..SplitOptions::default()
        };
        let out = split_str(
            &format!("{M_CODES}{}", test_run("t", TWICE_3, "passed")),
            options,
        )
        .unwrap();
        // add has 3 frames, twice 7: twice is dropped as soon as its 5th frame comes.
        assert_eq!(out.traces.len(), 1);
        assert_eq!(out.traces[0].entry.function, "add");
        assert_eq!(
            (
                out.stats.total.too_long,
                out.stats.per_test[0].counts.too_long
            ),
            (1, 1)
        );
        let exact = SplitOptions {
            max_frames: 7,
            ..SplitOptions::default()
        };
        assert_eq!(
            split_str(
                &format!("{M_CODES}{}", test_run("t", TWICE_3, "passed")),
                exact
            )
            .unwrap()
            .traces
            .len(),
            2
        );
    }

    #[test]
    fn open_candidates_at_a_cap_or_the_end_are_incomplete() {
        // A cap after twice's call and add's call: both open, neither completes; the next test starts clean.
        let capped: String = TWICE_3
            .lines()
            .take(5)
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!(
            "{M_CODES}{}{}",
            test_run(
                "t::a",
                &format!("{capped}{{\"k\":\"cap\",\"reason\":\"events\",\"nodeid\":\"t::a\"}}\n"),
                "passed"
            ),
            test_run("t::b", TWICE_3, "passed"),
        );
        let out = split(&text);
        assert_eq!(out.traces.len(), 2);
        assert!(out.traces.iter().all(|trace| trace.test == "t::b"));
        assert_eq!(
            out.caps,
            [Cap {
                reason: "events".into(),
                nodeid: Some("t::a".into())
            }]
        );
        assert_eq!(
            (
                out.stats.total.incomplete,
                out.stats.per_test[0].counts.incomplete
            ),
            (2, 2)
        );
        // Killed mid-test: no end record, a torn last line; what was open is incomplete.
        let out = split(&format!(
            "{M_CODES}{{\"k\":\"test\",\"nodeid\":\"t\"}}\n{capped}{{\"k\":\"li"
        ));
        assert!(!out.ended && out.traces.is_empty());
        assert_eq!(out.stats.total.incomplete, 2);
        // A bad line that is not the torn tail is an error naming its line.
        let error = split_str(
            &format!("{M_CODES}{{\"k\":\"li\n{{\"k\":\"end\"}}\n"),
            SplitOptions::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("line 5"), "{error}");
    }

    #[test]
    fn test_boundaries_and_tracer_errors_close_what_is_open() {
        let open: String = TWICE_3
            .lines()
            .take(4)
            .map(|line| format!("{line}\n"))
            .collect();
        let text = format!(
            "{M_CODES}{}{{\"k\":\"test\",\"nodeid\":\"t::b\"}}\n{open}{{\"k\":\"error\",\"detail\":\"boom\"}}\n{}",
            test_run("t::a", &open, "failed"),
            test_run("t::c", TWICE_3, "passed"),
        );
        let out = split(&text);
        assert_eq!(out.errors, ["boom"]);
        let per_test: Vec<(&str, u64, u64)> = out
            .stats
            .per_test
            .iter()
            .map(|t| (t.nodeid.as_str(), t.counts.incomplete, t.counts.complete))
            .collect();
        assert_eq!(per_test, [("t::a", 1, 0), ("t::b", 1, 0), ("t::c", 0, 2)]);
        assert_eq!(out.tests.len(), 2);
    }

    #[test]
    fn entry_exclude_keeps_test_files_out_of_entries_but_not_out_of_traces() {
        let options = SplitOptions::default();
        for file in [
            "tests/test_m.py",
            "pkg/tests/helpers.py",
            "src/testing/u.py",
            "test_x.py",
            "a/b_test.py",
            "conftest.py",
            "/abs/test/x.py",
        ] {
            assert!(options.excludes_entry(file), "{file}");
        }
        for file in [
            "pkg/m.py",
            "pkg/contest.py",
            "pkg/attest.py",
            "latest/x.py",
            "pkg/testsuite.py",
        ] {
            assert!(!options.excludes_entry(file), "{file}");
        }
        // With no exclusion the test function is a trace too, containing twice's and add's frames.
        let none = SplitOptions {
            entry_exclude: vec![],
            ..SplitOptions::default()
        };
        let out = split_str(
            &format!("{M_CODES}{}", test_run("t", TWICE_3, "passed")),
            none,
        )
        .unwrap();
        let test_trace = by_function(&out, "test_twice")[0];
        assert_eq!(test_trace.frames.len(), 10);
        assert!(test_trace.context.starts_with("# file: tests/test_m.py\n"));
        assert!(test_trace.context.contains("\n# file: m.py\n"));
        // Excluding m.py by glob leaves no traces at all.
        let globs = SplitOptions {
            entry_exclude: vec!["m.py".into(), "tests/*".into()],
            ..SplitOptions::default()
        };
        assert!(split_str(
            &format!("{M_CODES}{}", test_run("t", TWICE_3, "passed")),
            globs
        )
        .unwrap()
        .traces
        .is_empty());
    }

    #[test]
    fn a_line_outside_its_block_has_an_empty_source_and_is_counted() {
        let events = TWICE_3.replace(r#""l":5,"#, r#""l":50,"#);
        let out = split(&format!("{M_CODES}{}", test_run("t", &events, "passed")));
        assert_eq!(out.stats.total.missing_source, 1);
        let twice = by_function(&out, "twice")[0];
        assert_eq!(shape(twice)[1], (FrameKind::Line, 50, ""));
    }

    #[test]
    fn a_test_keeps_at_most_max_test_frames_of_traces() {
        let text = format!("{M_CODES}{}", test_run("t", TWICE_3, "passed"));
        assert_eq!(split(&text).traces.len(), 2);
        // `add` (3 frames) completes first and fits; `twice` (7 frames, `add`'s included) would make 10.
        let budget = SplitOptions {
            max_test_frames: 5,
            ..SplitOptions::default()
        };
        let kept = split_str(&text, budget).unwrap();
        assert_eq!(kept.traces.len(), 1);
        assert_eq!(kept.traces[0].entry.function, "add");
        assert_eq!(kept.stats.total.over_budget, 1);
        assert_eq!(kept.stats.per_test[0].counts.over_budget, 1);
    }

    #[test]
    fn memory_holds_at_most_max_frames_of_the_open_candidates() {
        let records = |text: &str| -> Vec<Record> {
            text.lines().map(|line| parse_line(line).unwrap()).collect()
        };
        let mut splitter = Splitter::new(SplitOptions {
            max_frames: 4,
            ..SplitOptions::default()
        });
        for record in records(M_CODES) {
            splitter.push(record);
        }
        splitter.push(Record::Test { nodeid: "t".into() });
        // The test function (excluded) runs many lines: no candidate is open, nothing is kept.
        let mut lines = String::from(
            "{\"k\":\"call\",\"f\":100,\"c\":9,\"l\":3,\"loc\":[],\"args\":[],\"lit\":true}\n",
        );
        lines += &"{\"k\":\"line\",\"f\":100,\"c\":9,\"l\":4,\"loc\":[]}\n".repeat(50);
        for record in records(&lines) {
            splitter.push(record);
            assert!(splitter.log.is_empty());
        }
        // twice runs 50 lines: it is dropped after its 4th frame, and the log never holds more than 4 + 1 frames.
        let mut body = String::from("{\"k\":\"call\",\"f\":1,\"c\":2,\"l\":4,\"loc\":[[\"x\",\"3\"]],\"args\":[\"x\"],\"lit\":true}\n");
        body += &"{\"k\":\"line\",\"f\":1,\"c\":2,\"l\":5,\"loc\":[[\"x\",\"3\"]]}\n".repeat(50);
        for record in records(&body) {
            splitter.push(record);
            assert!(splitter.log.len() <= 5, "{}", splitter.log.len());
        }
        assert!(splitter.log.is_empty());
        // add(3, 3) completes inside the dropped twice with its own 3 frames.
        for record in records(
            &TWICE_3
                .lines()
                .skip(4)
                .take(3)
                .collect::<Vec<_>>()
                .join("\n"),
        ) {
            splitter.push(record);
        }
        let out = splitter.finish();
        assert_eq!(out.traces.len(), 1);
        assert_eq!(out.traces[0].frames.len(), 3);
        assert_eq!(
            (out.stats.total.too_long, out.stats.total.incomplete),
            (1, 0)
        );
    }
}
