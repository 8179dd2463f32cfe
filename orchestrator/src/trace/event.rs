//! The tracer's output: one JSON object a line, tagged by `k` (see the tracer's header in `tracer.py`).
//!
//! [`parse_line`] turns one line into a [`Record`]; a line that is not one of the records below is an
//! [`EventError`] naming the line (when known) and what is wrong, an unknown kind included.

use serde::Deserialize;
use serde::Serialize;

/// A code object's id, unique within one tracer output (`code.id`, `call.c`).
pub type CodeId = u64;
/// A frame activation's id, unique within one tracer output; a generator keeps its id across resumes.
pub type FrameId = u64;

/// The kinds of record the tracer writes (the value of `k`).
pub const KINDS: [&str; 12] = [
    "start",
    "code",
    "call",
    "line",
    "return",
    "exception",
    "exit",
    "test",
    "test_end",
    "cap",
    "error",
    "end",
];

/// One line of the tracer's output.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum Record {
    /// First line: the Python version and the tracer's format version.
    Start { python: String, tracer: u32 },
    /// A code object, written once before the first event that uses it.
    Code(CodeRecord),
    /// A function scope is entered (a first call or a generator resume).
    Call {
        f: FrameId,
        c: CodeId,
        l: u32,
        loc: Vec<(String, String)>,
        /// Positional parameter names, then the `*args`/`**kwargs` names.
        args: Vec<String>,
        /// Every argument value is a Python literal that round-trips through `ast.literal_eval`.
        lit: bool,
    },
    /// The next line of a traced scope is about to run.
    Line {
        f: FrameId,
        c: CodeId,
        l: u32,
        loc: Vec<(String, String)>,
    },
    /// A scope returns (or yields, with `yield: true`) the value `v`.
    Return {
        f: FrameId,
        c: CodeId,
        l: u32,
        v: String,
        lit: bool,
        #[serde(rename = "yield", default, skip_serializing_if = "std::ops::Not::not")]
        is_yield: bool,
    },
    /// An exception is raised in (or propagates through) a scope; `v` is its repr.
    Exception {
        f: FrameId,
        c: CodeId,
        l: u32,
        v: String,
    },
    /// A scope is left by an exception (no frame of its own).
    Exit { f: FrameId },
    /// A test starts (`entry` in entry mode).
    Test { nodeid: String },
    /// A test ended with `outcome` (`passed`, `failed`, `skipped`).
    TestEnd { nodeid: String, outcome: String },
    /// Tracing stopped: `events` or `time` for the rest of one test, `bytes` for the rest of the run.
    Cap {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        nodeid: Option<String>,
    },
    /// The tracer failed and disabled itself; the program ran on untraced.
    Error { detail: String },
    /// Last line when the tracer finished normally.
    End,
}

/// A traced code object: where it is and its whole source block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CodeRecord {
    pub id: CodeId,
    /// Path relative to the root it is under (absolute when under none).
    pub file: String,
    /// Qualified name (`Class.method`, `outer.<locals>.inner`, `<lambda>`).
    pub name: String,
    /// The `def` line.
    pub def_line: u32,
    /// The first line of the block (the first decorator's line, else `def_line`).
    pub first_line: u32,
    /// The block's source lines, `first_line` onwards, each with its `"\n"`.
    pub lines: Vec<String>,
    /// The header lines of the blocks enclosing this one, outermost first.
    #[serde(default)]
    pub enclosing: Vec<Enclosing>,
    /// A generator, coroutine or async generator (`"gen": true`): calling it gives an object, not what its frames
    /// return, so its traces give no output-prediction item.
    #[serde(default, rename = "gen", skip_serializing_if = "std::ops::Not::not")]
    pub generator: bool,
}

impl CodeRecord {
    /// The source of line `line` (with its `"\n"`), if it is inside the block.
    pub fn source(&self, line: u32) -> Option<&str> {
        let index = line.checked_sub(self.first_line)?;
        self.lines.get(index as usize).map(String::as_str)
    }

    /// The block's last line number.
    pub fn last_line(&self) -> u32 {
        let len = u32::try_from(self.lines.len()).unwrap_or(u32::MAX);
        (self.first_line + len)
            .saturating_sub(1)
            .max(self.first_line)
    }
}

/// The header line of an enclosing `class`/`def` block, as in the file (indentation kept).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Enclosing {
    pub line: u32,
    pub text: String,
}

/// A line of tracer output that is not a record.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("tracer output{}: {source} (the line starts {snippet:?}); the tracer and swe-env disagree on the format: use the tracer built into this swe-env", at(*.line))]
    Malformed {
        line: Option<usize>,
        snippet: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("tracer output{}: unknown record kind {kind:?} (known: {}); the tracer and swe-env disagree on the format: use the tracer built into this swe-env", at(*.line), KINDS.join(", "))]
    UnknownKind { line: Option<usize>, kind: String },
}

fn at(line: Option<usize>) -> String {
    line.map(|line| format!(" line {line}")).unwrap_or_default()
}

impl EventError {
    /// The same error, saying it is on line `line` (1-based) of the output.
    pub fn at_line(self, line: usize) -> Self {
        match self {
            Self::Malformed {
                snippet, source, ..
            } => Self::Malformed {
                line: Some(line),
                snippet,
                source,
            },
            Self::UnknownKind { kind, .. } => Self::UnknownKind {
                line: Some(line),
                kind,
            },
        }
    }
}

/// Parses one line of tracer output.
pub fn parse_line(text: &str) -> Result<Record, EventError> {
    serde_json::from_str(text).map_err(|source| {
        #[derive(Deserialize)]
        struct Kind {
            k: String,
        }
        match serde_json::from_str::<Kind>(text) {
            Ok(Kind { k }) if !KINDS.contains(&k.as_str()) => EventError::UnknownKind {
                line: None,
                kind: k,
            },
            _ => EventError::Malformed {
                line: None,
                snippet: text.chars().take(80).collect(),
                source,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_of_the_contract_parses() {
        let lines = [
            r#"{"k":"start","python":"3.11.2","tracer":1}"#,
            r#"{"k":"code","id":1,"file":"pkg/m.py","name":"A.f","def_line":3,"first_line":2,"lines":["    @d\n","    def f(self):\n","        return 1\n"],"enclosing":[{"line":1,"text":"class A:\n"}]}"#,
            r#"{"k":"call","f":7,"c":1,"l":3,"loc":[["self","<A object at 0x?>"]],"args":["self"],"lit":false}"#,
            r#"{"k":"line","f":7,"c":1,"l":4,"loc":[["self","<A object at 0x?>"]]}"#,
            r#"{"k":"return","f":7,"c":1,"l":4,"v":"1","lit":true}"#,
            r#"{"k":"return","f":7,"c":1,"l":4,"v":"1","lit":true,"yield":true}"#,
            r#"{"k":"exception","f":7,"c":1,"l":4,"v":"ValueError('x')"}"#,
            r#"{"k":"exit","f":7}"#,
            r#"{"k":"test","nodeid":"tests/test_a.py::test_x"}"#,
            r#"{"k":"test_end","nodeid":"tests/test_a.py::test_x","outcome":"passed"}"#,
            r#"{"k":"cap","reason":"events","nodeid":"t"}"#,
            r#"{"k":"cap","reason":"bytes"}"#,
            r#"{"k":"error","detail":"boom"}"#,
            r#"{"k":"end"}"#,
        ];
        let records: Vec<Record> = lines.iter().map(|line| parse_line(line).unwrap()).collect();
        assert_eq!(
            records[1],
            Record::Code(CodeRecord {
                id: 1,
                file: "pkg/m.py".into(),
                name: "A.f".into(),
                def_line: 3,
                first_line: 2,
                lines: vec![
                    "    @d\n".into(),
                    "    def f(self):\n".into(),
                    "        return 1\n".into()
                ],
                enclosing: vec![Enclosing {
                    line: 1,
                    text: "class A:\n".into()
                }],
                generator: false,
            })
        );
        assert!(matches!(
            records[4],
            Record::Return {
                is_yield: false,
                ..
            }
        ));
        assert!(matches!(records[5], Record::Return { is_yield: true, .. }));
        assert_eq!(
            records[11],
            Record::Cap {
                reason: "bytes".into(),
                nodeid: None
            }
        );
        // Serializing gives the tracer's own shape back.
        for (line, record) in lines.iter().zip(&records) {
            assert_eq!(&serde_json::to_string(record).unwrap(), line);
        }
        let Record::Code(code) = &records[1] else {
            unreachable!()
        };
        assert_eq!(code.source(3), Some("    def f(self):\n"));
        assert_eq!(code.source(1), None);
        assert_eq!(code.source(5), None);
        assert_eq!(code.last_line(), 4);
    }

    #[test]
    fn unknown_kind_and_malformed_lines_say_which_and_why() {
        let error = parse_line(r#"{"k":"frob","x":1}"#).unwrap_err().at_line(12);
        let message = error.to_string();
        assert!(matches!(error, EventError::UnknownKind { .. }));
        assert!(
            message.contains("line 12") && message.contains("\"frob\""),
            "{message}"
        );

        let error = parse_line(r#"{"k":"call","f":1}"#).unwrap_err().at_line(3);
        let message = error.to_string();
        assert!(matches!(error, EventError::Malformed { .. }));
        assert!(
            message.contains("line 3") && message.contains("missing field"),
            "{message}"
        );

        let message = parse_line("not json").unwrap_err().to_string();
        assert!(
            message.starts_with("tracer output: ") && message.contains("\"not json\""),
            "{message}"
        );
    }
}
