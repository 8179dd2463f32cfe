//! Output-prediction items (CruxEval-style): a function's source and a call with literal arguments, the value it
//! returned to predict.
//!
//! Only traces that returned (neither yielded nor raised), whose arguments and value are all Python literals
//! that round-trip through `ast.literal_eval`, whose signature has no `*` (no `*args`, `**kwargs`, keyword-only
//! parameters: every parameter can then be passed positionally) and whose function can be called by its
//! qualified name from module scope (no `<locals>`, no `<lambda>`).

use serde::Deserialize;
use serde::Serialize;

use crate::trace::context::START_OF_TRACE;
use crate::trace::format::EntryOutcome;
use crate::trace::format::FrameKind;
use crate::trace::format::Trace;
use crate::trajectory::digest::sha256_hex;

/// One output-prediction item.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PredictionItem {
    /// Lower-case hex sha256 of `code`, `call` and `output` (equal items have equal ids).
    pub id: String,
    /// The trace's CONTEXT without the `START_OF_TRACE` marker.
    pub code: String,
    /// The function's qualified name (`f`, `Class.static_method`).
    pub function: String,
    /// The arguments as written in the call: `1, 'a'`.
    pub input: String,
    /// The call: `f(1, 'a')`.
    pub call: String,
    /// The repr of the returned value.
    pub output: String,
    pub trace_id: String,
    pub test: String,
    pub python: String,
}

/// The item of `trace`, when it qualifies (see the module docs).
pub fn items(trace: &Trace) -> Option<PredictionItem> {
    let entry = &trace.entry;
    let EntryOutcome::Returned {
        value,
        literal: true,
    } = &entry.outcome
    else {
        return None;
    };
    if !entry.literal_args
        || entry.generator
        || entry.function.contains('<')
        || signature(&trace.context)?.contains('*')
        || defines_twice(&trace.context, &entry.function)
    {
        return None;
    }
    let call_frame = trace
        .frames
        .first()
        .filter(|frame| frame.kind == FrameKind::Call)?;
    let locals = call_frame.locals.as_ref()?;
    let arguments: Option<Vec<&str>> = entry
        .args
        .iter()
        .map(|name| {
            locals
                .iter()
                .find(|(local, _)| local == name)
                .map(|(_, value)| value.as_str())
        })
        .collect();
    let input = arguments?.join(", ");
    let call = format!("{}({input})", entry.function);
    let code = trace.context.replacen(START_OF_TRACE, "", 1);
    let id = sha256_hex(format!("{code}\0{call}\0{value}").as_bytes());
    Some(PredictionItem {
        id,
        code,
        function: entry.function.clone(),
        input,
        call,
        output: value.clone(),
        trace_id: trace.id.clone(),
        test: trace.test.clone(),
        python: trace.python.clone(),
    })
}

/// `context` (several files' functions) defines the entry's own name more than once (`converter.convert` and
/// `temperature.convert`): run as one program, the last definition would win, so the item would be ambiguous.
fn defines_twice(context: &str, qualname: &str) -> bool {
    let name = qualname.rsplit('.').next().unwrap_or(qualname);
    let def = format!("def {name}(");
    context
        .lines()
        .map(str::trim_start)
        .filter(|line| {
            line.strip_prefix("async ")
                .unwrap_or(line)
                .starts_with(def.as_str())
        })
        .count()
        > 1
}

/// The entry's signature in `context`: from the marked `def` line to the line where its parentheses close.
fn signature(context: &str) -> Option<String> {
    let start = context.find(START_OF_TRACE)?;
    let line_start = context[..start].rfind('\n').map_or(0, |at| at + 1);
    // The marker is on the `def` line unless a comment cannot end it (then the signature is not read: no item).
    let marked = context[line_start..].trim_start();
    if !(marked.starts_with("def ") || marked.starts_with("async def ")) {
        return None;
    }
    let mut depth = 0i32;
    let mut signature = String::new();
    for line in context[line_start..].lines() {
        let line = line.replacen(START_OF_TRACE, "", 1);
        depth += line.matches(['(', '[', '{']).count() as i32
            - line.matches([')', ']', '}']).count() as i32;
        signature.push_str(&line);
        if depth <= 0 {
            return Some(signature);
        }
    }
    Some(signature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::format::Entry;
    use crate::trace::format::Frame;

    fn trace(
        context: &str,
        function: &str,
        args: &[(&str, &str)],
        literal_args: bool,
        outcome: EntryOutcome,
    ) -> Trace {
        let locals = args
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Trace {
            id: "t1".into(),
            entry: Entry {
                file: "m.py".into(),
                function: function.into(),
                line: 1,
                args: args.iter().map(|(name, _)| name.to_string()).collect(),
                literal_args,
                outcome,
                generator: false,
            },
            context: context.into(),
            frames: vec![Frame {
                kind: FrameKind::Call,
                file: "m.py".into(),
                function: function.into(),
                line: 1,
                source: String::new(),
                locals: Some(locals),
                value: None,
                is_yield: false,
            }],
            python: "3.11.2".into(),
            test: "tests/test_m.py::test_f".into(),
            occurrences: 1,
        }
    }

    fn returned(value: &str, literal: bool) -> EntryOutcome {
        EntryOutcome::Returned {
            value: value.into(),
            literal,
        }
    }

    const CONTEXT: &str = "# file: m.py\ndef f(a, b='x'):  # << START_OF_TRACE\n    return b * a\n";

    #[test]
    fn a_literal_call_that_returned_is_an_item() {
        let item = items(&trace(
            CONTEXT,
            "f",
            &[("a", "2"), ("b", "'ab'")],
            true,
            returned("'abab'", true),
        ))
        .unwrap();
        assert_eq!(
            item.code,
            "# file: m.py\ndef f(a, b='x'):\n    return b * a\n"
        );
        assert_eq!(item.input, "2, 'ab'");
        assert_eq!(item.call, "f(2, 'ab')");
        assert_eq!(item.output, "'abab'");
        assert_eq!(
            (
                item.function.as_str(),
                item.trace_id.as_str(),
                item.python.as_str()
            ),
            ("f", "t1", "3.11.2")
        );
        assert_eq!(item.id.len(), 64);
        // No arguments: `f()`.
        let item = items(&trace(
            "def g():  # << START_OF_TRACE\n    return 1\n",
            "g",
            &[],
            true,
            returned("1", true),
        ));
        assert_eq!(item.unwrap().call, "g()");
        // A static method is called by its qualified name.
        let context =
            "class A:\n    @staticmethod\n    def s(x):  # << START_OF_TRACE\n        return x\n";
        let item = items(&trace(
            context,
            "A.s",
            &[("x", "[1, 2]")],
            true,
            returned("[1, 2]", true),
        ))
        .unwrap();
        assert_eq!(item.call, "A.s([1, 2])");
    }

    #[test]
    fn traces_that_do_not_qualify_give_no_item() {
        let args = [("a", "2"), ("b", "'ab'")];
        let no_item = |trace: Trace| assert_eq!(items(&trace), None, "{:?}", trace.entry);
        // A generator's (or coroutine's) run or resume: a call of it gives an object, not this return value.
        let mut generator = trace(CONTEXT, "f", &args, true, returned("'abab'", true));
        assert!(items(&generator).is_some());
        generator.entry.generator = true;
        no_item(generator);
        // Two functions of that name in the context (two files): which one `f(2, 'ab')` calls is ambiguous.
        let twice = format!("{CONTEXT}\n# file: n.py\ndef f(a, b):\n    return a\n");
        no_item(trace(&twice, "f", &args, true, returned("'abab'", true)));
        // Not returned, or a value or argument that is no literal.
        no_item(trace(
            CONTEXT,
            "f",
            &args,
            true,
            EntryOutcome::Raised {
                value: "ValueError()".into(),
            },
        ));
        no_item(trace(
            CONTEXT,
            "f",
            &args,
            true,
            EntryOutcome::Yielded {
                value: "1".into(),
                literal: true,
            },
        ));
        no_item(trace(
            CONTEXT,
            "f",
            &args,
            true,
            returned("<A object at 0x?>", false),
        ));
        no_item(trace(CONTEXT, "f", &args, false, returned("'abab'", true)));
        // *args, **kwargs, keyword-only parameters (also on a later line of a multi-line signature).
        for context in [
            "def f(a, *b):  # << START_OF_TRACE\n    return a\n",
            "def f(a, **b):  # << START_OF_TRACE\n    return a\n",
            "def f(a, *, b):  # << START_OF_TRACE\n    return a\n",
            "def f(a,  # << START_OF_TRACE\n      *b):\n    return a\n",
            "def f(  # << START_OF_TRACE\n    a,\n    *b,\n):\n    return a\n",
        ] {
            no_item(trace(context, "f", &args, true, returned("2", true)));
        }
        // Not callable from module scope.
        no_item(trace(
            CONTEXT,
            "outer.<locals>.f",
            &args,
            true,
            returned("2", true),
        ));
        no_item(trace(CONTEXT, "<lambda>", &args, true, returned("2", true)));
    }
}
