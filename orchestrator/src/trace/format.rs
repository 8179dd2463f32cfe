//! The structured traces and their exact CWM rendering.
//!
//! A [`Trace`] keeps every frame's locals in full; only the rendering applies CWM's diff-based representation
//! ([`LocalsStyle::Diff`]): a line frame writes `".."` for a local whose repr equals the one in the previous
//! emitted call/line frame, provided no call or return frame was emitted in between (an exception frame does not
//! break the chain); call frames are always written in full. JSON is written exactly as Python's `json.dumps`
//! with its default settings writes it (`", "`, `": "`, `ensure_ascii`).

use serde::Deserialize;
use serde::Serialize;

/// Starts a trace prompt.
pub const BEGIN_OF_TEXT: &str = "<|begin_of_text|>";
/// Precedes the CONTEXT.
pub const TRACE_CONTEXT_START: &str = "<|trace_context_start|>";
/// Follows the CONTEXT and every frame.
pub const FRAME_SEP: &str = "<|frame_sep|>";
/// Starts a call frame.
pub const CALL_SEP: &str = "<|call_sep|>";
/// Starts a line frame.
pub const LINE_SEP: &str = "<|line_sep|>";
/// Starts a return frame.
pub const RETURN_SEP: &str = "<|return_sep|>";
/// Starts an exception frame.
pub const EXCEPTION_SEP: &str = "<|exception_sep|>";
/// Separates a frame's observation from its action (the source line).
pub const ACTION_SEP: &str = "<|action_sep|>";
/// Separates a return/exception frame's source line from its value.
pub const ARG_SEP: &str = "<|arg_sep|>";
/// Ends a trace once the entry scope is left.
pub const END_OF_TEXT: &str = "<|end_of_text|>";
/// How a line frame writes a local unchanged since the previous frame.
pub const UNCHANGED: &str = "..";

/// What a frame records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Call,
    Line,
    Return,
    Exception,
}

/// One frame: an observation (locals, or a value) and an action (a source line).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: FrameKind,
    pub file: String,
    /// Qualified name of the function the line belongs to.
    pub function: String,
    pub line: u32,
    /// The source line exactly as in the file, indentation kept, with its `"\n"` (empty when unknown).
    pub source: String,
    /// Call and line frames: every local in the tracer's order, `[name, repr]`, always in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locals: Option<Vec<(String, String)>>,
    /// Return and exception frames: the repr of the returned (yielded) value or of the exception.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A return frame that is a `yield`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_yield: bool,
}

/// One trace: the frames of one call of a repo function, from its call frame until its scope is left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Trace {
    /// Lower-case hex sha256 of [`render`] with [`LocalsStyle::Full`]: the deduplication key.
    pub id: String,
    pub entry: Entry,
    /// The source the reader needs, entry `def` line marked (see [`crate::trace::context`]).
    pub context: String,
    pub frames: Vec<Frame>,
    /// The Python version that ran it.
    pub python: String,
    /// The pytest node id, or `entry` for an entry-point run.
    pub test: String,
    /// How many times this exact trace occurred in its run.
    pub occurrences: u64,
}

/// The call a trace starts with and how its scope was left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub file: String,
    pub function: String,
    /// The `def` line.
    pub line: u32,
    /// Positional parameter names, then the `*args`/`**kwargs` names.
    pub args: Vec<String>,
    /// Every argument is a Python literal that round-trips through `ast.literal_eval`.
    pub literal_args: bool,
    pub outcome: EntryOutcome,
    /// The entry is a generator, coroutine or async generator (its trace is one run or resume of it, and a call of
    /// it gives an object: no output-prediction item).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub generator: bool,
}

/// How the entry scope was left.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryOutcome {
    /// Returned `value` (a repr); `literal` when it round-trips through `ast.literal_eval`.
    Returned { value: String, literal: bool },
    /// Left by the exception whose repr is `value`.
    Raised { value: String },
    /// A generator yielded `value`.
    Yielded { value: String, literal: bool },
}

/// How the rendering writes locals.
#[derive(clap::ValueEnum, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LocalsStyle {
    /// CWM's diff-based representation: `".."` for a local unchanged since the previous frame.
    #[default]
    Diff,
    /// Every local of every frame written in full.
    Full,
}

/// The prompt: `<|begin_of_text|><|trace_context_start|>CONTEXT<|frame_sep|>`.
pub fn render_prompt(trace: &Trace) -> String {
    format!(
        "{BEGIN_OF_TEXT}{TRACE_CONTEXT_START}{}{FRAME_SEP}",
        trace.context
    )
}

/// The frames, each followed by `<|frame_sep|>`, then `<|end_of_text|>`.
pub fn render_frames(trace: &Trace, style: LocalsStyle) -> String {
    let mut out = String::new();
    // Locals of the previous call/line frame, while no call or return frame came after it.
    let mut previous: Option<&[(String, String)]> = None;
    for frame in &trace.frames {
        let locals = frame.locals.as_deref().unwrap_or_default();
        let value = python_json_string(frame.value.as_deref().unwrap_or_default());
        match frame.kind {
            FrameKind::Call => {
                out.push_str(CALL_SEP);
                out.push_str(&python_json_object(locals));
                previous = Some(locals);
            }
            FrameKind::Line => {
                out.push_str(LINE_SEP);
                match (style, previous) {
                    (LocalsStyle::Diff, Some(previous)) => {
                        out.push_str(&diff_object(locals, previous))
                    }
                    _ => out.push_str(&python_json_object(locals)),
                }
                previous = Some(locals);
            }
            FrameKind::Return => {
                out.push_str(RETURN_SEP);
                previous = None;
            }
            FrameKind::Exception => out.push_str(EXCEPTION_SEP),
        }
        out.push_str(ACTION_SEP);
        out.push_str(&frame.source);
        if matches!(frame.kind, FrameKind::Return | FrameKind::Exception) {
            out.push_str(ARG_SEP);
            out.push_str(&value);
        }
        out.push_str(FRAME_SEP);
    }
    out.push_str(END_OF_TEXT);
    out
}

/// The whole trace: [`render_prompt`] then [`render_frames`].
pub fn render(trace: &Trace, style: LocalsStyle) -> String {
    render_prompt(trace) + &render_frames(trace, style)
}

/// `locals` as a JSON object, `".."` for a value equal to the same name's value in `previous`.
fn diff_object(locals: &[(String, String)], previous: &[(String, String)]) -> String {
    let pairs = locals.iter().map(|(name, value)| {
        let unchanged = previous
            .iter()
            .any(|(old_name, old)| old_name == name && old == value);
        (
            name.as_str(),
            if unchanged { UNCHANGED } else { value.as_str() },
        )
    });
    object_of(pairs)
}

/// `s` as Python's `json.dumps(s)` writes it: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, every other character
/// outside printable ASCII as `\u00XX` (lower-case hex), astral characters as a surrogate pair.
pub fn python_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

/// `pairs` as Python's `json.dumps(dict(pairs))` writes it (keys in the given order; `{}` when empty).
pub fn python_json_object(pairs: &[(String, String)]) -> String {
    object_of(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str())),
    )
}

fn object_of<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let members: Vec<String> = pairs
        .map(|(name, value)| {
            format!(
                "{}: {}",
                python_json_string(name),
                python_json_string(value)
            )
        })
        .collect();
    format!("{{{}}}", members.join(", "))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn locals(pairs: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
        Some(
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect(),
        )
    }

    pub(crate) fn frame(
        kind: FrameKind,
        line: u32,
        source: &str,
        locals: Option<Vec<(String, String)>>,
        value: Option<&str>,
    ) -> Frame {
        Frame {
            kind,
            file: "m.py".into(),
            function: "f".into(),
            line,
            source: source.into(),
            locals,
            value: value.map(str::to_string),
            is_yield: false,
        }
    }

    fn trace(context: &str, frames: Vec<Frame>) -> Trace {
        Trace {
            id: String::new(),
            entry: Entry {
                file: "m.py".into(),
                function: "f".into(),
                line: 1,
                args: vec!["x".into()],
                literal_args: true,
                outcome: EntryOutcome::Returned {
                    value: "3".into(),
                    literal: true,
                },
                generator: false,
            },
            context: context.into(),
            frames,
            python: "3.11.2".into(),
            test: "entry".into(),
            occurrences: 1,
        }
    }

    /// `def f(x):\n    y = x + 1\n    return y\n` called as `f(2)`, written by hand from the CWM guide.
    #[test]
    fn a_two_line_function_renders_exactly() {
        let t = trace(
            "def f(x):  # << START_OF_TRACE\n    y = x + 1\n    return y\n",
            vec![
                frame(
                    FrameKind::Call,
                    1,
                    "def f(x):\n",
                    locals(&[("x", "2")]),
                    None,
                ),
                frame(
                    FrameKind::Line,
                    2,
                    "    y = x + 1\n",
                    locals(&[("x", "2")]),
                    None,
                ),
                frame(
                    FrameKind::Line,
                    3,
                    "    return y\n",
                    locals(&[("x", "2"), ("y", "3")]),
                    None,
                ),
                frame(FrameKind::Return, 3, "    return y\n", None, Some("3")),
            ],
        );
        let prompt = "<|begin_of_text|><|trace_context_start|>def f(x):  # << START_OF_TRACE\n    y = x + 1\n    return y\n<|frame_sep|>";
        assert_eq!(render_prompt(&t), prompt);
        let diff = "<|call_sep|>{\"x\": \"2\"}<|action_sep|>def f(x):\n<|frame_sep|>\
                    <|line_sep|>{\"x\": \"..\"}<|action_sep|>    y = x + 1\n<|frame_sep|>\
                    <|line_sep|>{\"x\": \"..\", \"y\": \"3\"}<|action_sep|>    return y\n<|frame_sep|>\
                    <|return_sep|><|action_sep|>    return y\n<|arg_sep|>\"3\"<|frame_sep|><|end_of_text|>";
        assert_eq!(render_frames(&t, LocalsStyle::Diff), diff);
        let full = "<|call_sep|>{\"x\": \"2\"}<|action_sep|>def f(x):\n<|frame_sep|>\
                    <|line_sep|>{\"x\": \"2\"}<|action_sep|>    y = x + 1\n<|frame_sep|>\
                    <|line_sep|>{\"x\": \"2\", \"y\": \"3\"}<|action_sep|>    return y\n<|frame_sep|>\
                    <|return_sep|><|action_sep|>    return y\n<|arg_sep|>\"3\"<|frame_sep|><|end_of_text|>";
        assert_eq!(render_frames(&t, LocalsStyle::Full), full);
        assert_eq!(render(&t, LocalsStyle::Diff), format!("{prompt}{diff}"));
    }

    /// A string value repr (`'a'`) and an exception: JSON escapes and the exception frame's shape.
    #[test]
    fn exception_frames_and_string_reprs_render_exactly() {
        let t = trace(
            "def g(s):  # << START_OF_TRACE\n    raise ValueError(s)\n",
            vec![
                frame(
                    FrameKind::Call,
                    1,
                    "def g(s):\n",
                    locals(&[("s", "'a\"b'")]),
                    None,
                ),
                frame(
                    FrameKind::Line,
                    2,
                    "    raise ValueError(s)\n",
                    locals(&[("s", "'a\"b'")]),
                    None,
                ),
                frame(
                    FrameKind::Exception,
                    2,
                    "    raise ValueError(s)\n",
                    None,
                    Some("ValueError('a\"b')"),
                ),
            ],
        );
        let expected = "<|call_sep|>{\"s\": \"'a\\\"b'\"}<|action_sep|>def g(s):\n<|frame_sep|>\
                        <|line_sep|>{\"s\": \"..\"}<|action_sep|>    raise ValueError(s)\n<|frame_sep|>\
                        <|exception_sep|><|action_sep|>    raise ValueError(s)\n<|arg_sep|>\"ValueError('a\\\"b')\"<|frame_sep|><|end_of_text|>";
        assert_eq!(render_frames(&t, LocalsStyle::Diff), expected);
        assert_eq!(python_json_object(&[]), "{}");
    }

    /// The diff chain is broken by call and return frames, not by exception frames; call frames are always full.
    #[test]
    fn diff_rule_across_call_return_and_exception_boundaries() {
        let a1 = || locals(&[("a", "1")]);
        let t = trace(
            "",
            vec![
                frame(FrameKind::Call, 1, "def f(a):\n", a1(), None),
                frame(FrameKind::Line, 2, "    try:\n", a1(), None), // after a call: diffed against it
                frame(FrameKind::Line, 3, "        g(a)\n", a1(), None),
                frame(FrameKind::Call, 5, "def g(a):\n", a1(), None), // a call is always full
                frame(FrameKind::Line, 6, "    raise E\n", a1(), None),
                frame(FrameKind::Exception, 6, "    raise E\n", None, Some("E()")),
                frame(FrameKind::Exception, 3, "        g(a)\n", None, Some("E()")),
                frame(FrameKind::Line, 4, "    except E:\n", a1(), None), // exceptions keep the chain
                frame(FrameKind::Line, 7, "    return h(a)\n", a1(), None),
                frame(FrameKind::Call, 9, "def h(a):\n", a1(), None),
                frame(FrameKind::Return, 9, "def h(a):\n", None, Some("1")),
                frame(FrameKind::Line, 7, "    return h(a)\n", a1(), None), // after a return: full
                frame(FrameKind::Line, 8, "    x\n", locals(&[("a", "2")]), None), // changed: full value
            ],
        );
        let rendered = render_frames(&t, LocalsStyle::Diff);
        let observations: Vec<&str> = rendered
            .split(FRAME_SEP)
            .map(|frame| frame.split(ACTION_SEP).next().unwrap())
            .collect();
        assert_eq!(
            observations,
            [
                "<|call_sep|>{\"a\": \"1\"}",
                "<|line_sep|>{\"a\": \"..\"}",
                "<|line_sep|>{\"a\": \"..\"}",
                "<|call_sep|>{\"a\": \"1\"}",
                "<|line_sep|>{\"a\": \"..\"}",
                "<|exception_sep|>",
                "<|exception_sep|>",
                "<|line_sep|>{\"a\": \"..\"}",
                "<|line_sep|>{\"a\": \"..\"}",
                "<|call_sep|>{\"a\": \"1\"}",
                "<|return_sep|>",
                "<|line_sep|>{\"a\": \"1\"}",
                "<|line_sep|>{\"a\": \"2\"}",
                "<|end_of_text|>",
            ]
        );
        // The structured frames keep full locals: the diff is only in the rendering.
        assert!(t
            .frames
            .iter()
            .all(|f| f.locals.as_ref().is_none_or(|l| l[0].1 != UNCHANGED)));
    }

    /// The structured record: locals as `[name, repr]` pairs in order, absent fields left out.
    #[test]
    fn structured_frames_serialize_as_pairs_and_round_trip() {
        let call = frame(
            FrameKind::Call,
            1,
            "def f(b, a):\n",
            locals(&[("b", "1"), ("a", "'x'")]),
            None,
        );
        let json = serde_json::to_string(&call).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"call","file":"m.py","function":"f","line":1,"source":"def f(b, a):\n","locals":[["b","1"],["a","'x'"]]}"#
        );
        let mut yielded = frame(FrameKind::Return, 2, "    yield a\n", None, Some("'x'"));
        yielded.is_yield = true;
        let json = serde_json::to_string(&yielded).unwrap();
        assert!(
            json.ends_with(r#""value":"'x'","is_yield":true}"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Frame>(&json).unwrap(), yielded);
        let t = trace("", vec![call]);
        let json = serde_json::to_value(&t).unwrap();
        assert_eq!(
            json["entry"]["outcome"],
            serde_json::json!({"kind": "returned", "value": "3", "literal": true})
        );
        assert_eq!(serde_json::from_value::<Trace>(json).unwrap(), t);
    }

    /// Non-ASCII, astral, control characters and escapes, checked against the host Python's `json.dumps`.
    #[test]
    fn json_strings_match_python_json_dumps() {
        let cases = [
            "plain",
            "quote \" backslash \\ slash /",
            "\n\r\t\u{8}\u{c}",
            "\u{0}\u{1}\u{1f}\u{7f}\u{80}\u{9f}",
            "héllo wörld ñ",
            "日本語",
            "emoji 😀 and 𝄞",
            "\u{fffd}\u{2028}\u{2029}\u{feff}",
            "'repr' <A object at 0x?>",
            "",
        ];
        let input = serde_json::to_string(&cases).unwrap();
        let output = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import json,sys\nfor s in json.loads(sys.stdin.read()): print(json.dumps(s))\n\
                 print(json.dumps(dict(zip(['a','ü'],['1','😀']))))",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(input.as_bytes())?;
                child.wait_with_output()
            })
            .unwrap();
        assert!(output.status.success());
        let reference = String::from_utf8(output.stdout).unwrap();
        let mut lines = reference.lines();
        for case in cases {
            assert_eq!(python_json_string(case), lines.next().unwrap(), "{case:?}");
        }
        let pairs = [
            ("a".to_string(), "1".to_string()),
            ("ü".to_string(), "😀".to_string()),
        ];
        assert_eq!(python_json_object(&pairs), lines.next().unwrap());
    }
}
