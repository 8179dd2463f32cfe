//! A trace's CONTEXT: the source the reader needs to predict the trace.
//!
//! The blocks of every function the trace's frames use, grouped by file (the entry's file first, then by path),
//! a `# file: REL` line before each file group, blocks in line order, a block contained in another included block
//! left out (the outer one shows it), each enclosing header line (`class …:`, `def …:`) printed once before the
//! first block that needs it, one blank line between blocks, and the entry's `def` line marked with
//! [`START_OF_TRACE`]. Every frame's SOURCE is a line of the CONTEXT (the entry's `def` line with the marker).

use std::collections::BTreeSet;

use crate::trace::event::CodeId;
use crate::trace::event::CodeRecord;

/// Appended to the entry's `def` line in the CONTEXT (never in a frame's SOURCE).
pub const START_OF_TRACE: &str = "  # << START_OF_TRACE";

/// The CONTEXT of a trace whose frames use `codes`, entry `entry` (a code of `codes`; when it is not, no line is
/// marked).
pub fn build_context(codes: &[&CodeRecord], entry: CodeId) -> String {
    let entry_code = codes.iter().find(|code| code.id == entry);
    let entry_file = entry_code.map(|code| code.file.as_str());
    let mark = entry_code.map(|code| (code.file.as_str(), marker_line(code)));

    let mut files: Vec<&str> = codes.iter().map(|code| code.file.as_str()).collect();
    files.sort_by_key(|file| (Some(*file) != entry_file, *file));
    files.dedup();

    let mut out = String::new();
    for file in files {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("# file: {file}\n"));
        let mut blocks: Vec<&CodeRecord> = codes
            .iter()
            .copied()
            .filter(|code| code.file == file)
            .collect();
        // By first line, the widest first: a block contained in an earlier one is then left out.
        blocks.sort_by_key(|code| (code.first_line, std::cmp::Reverse(code.last_line())));
        let mut shown_until = 0;
        let mut headers_shown = BTreeSet::new();
        let mut first = true;
        for block in blocks {
            if block.last_line() <= shown_until {
                continue;
            }
            if !first {
                out.push('\n');
            }
            first = false;
            for header in &block.enclosing {
                if headers_shown.insert(header.line) {
                    push_line(&mut out, &header.text, false);
                }
            }
            for (line, text) in (block.first_line..).zip(&block.lines) {
                push_line(&mut out, text, mark == Some((file, line)));
            }
            shown_until = shown_until.max(block.last_line());
        }
    }
    out
}

/// The line that gets the marker: the `def` line, unless a comment cannot end it (a backslash continuation, or a
/// triple-quoted string left open, as in `def h(s="""x`): then the first later line of the block ending with `:`,
/// the signature's last line.
fn marker_line(code: &CodeRecord) -> u32 {
    let comment_safe = |text: &str| {
        let text = text.trim_end();
        !text.ends_with('\\')
            && text.matches("\"\"\"").count().is_multiple_of(2)
            && text.matches("'''").count().is_multiple_of(2)
    };
    if code.source(code.def_line).is_none_or(comment_safe) {
        return code.def_line;
    }
    (code.def_line + 1..=code.last_line())
        .find(|line| {
            code.source(*line)
                .is_some_and(|text| text.trim_end().ends_with(':'))
        })
        .unwrap_or(code.def_line)
}

/// Appends `text` as one line (its `"\n"` ensured), with the marker before the newline when `marked`.
fn push_line(out: &mut String, text: &str, marked: bool) {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let body = body.strip_suffix('\r').unwrap_or(body);
    out.push_str(body);
    if marked {
        out.push_str(START_OF_TRACE);
    }
    out.push_str(&text[body.len()..]);
    if !text.ends_with('\n') {
        out.push('\n');
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trace::event::Enclosing;

    #[test]
    fn the_marker_goes_where_a_comment_is_legal() {
        let continued = code(
            1,
            "m.py",
            "f",
            1,
            &["def f(a, \\\n", "      b):\n", "    return a + b\n"],
            &[],
        );
        assert_eq!(
            build_context(&[&continued], 1),
            "# file: m.py\ndef f(a, \\\n      b):  # << START_OF_TRACE\n    return a + b\n"
        );
        let open_string = code(
            2,
            "m.py",
            "h",
            1,
            &["def h(s=\"\"\"x\n", "y\"\"\"):\n", "    return s\n"],
            &[],
        );
        assert_eq!(
            build_context(&[&open_string], 2),
            "# file: m.py\ndef h(s=\"\"\"x\ny\"\"\"):  # << START_OF_TRACE\n    return s\n"
        );
    }

    /// A code record of `file` whose block starts at `first_line` (the `def` line is the first line not starting,
    /// after indentation, with `@`).
    pub(crate) fn code(
        id: CodeId,
        file: &str,
        name: &str,
        first_line: u32,
        lines: &[&str],
        enclosing: &[(u32, &str)],
    ) -> CodeRecord {
        let decorators = lines
            .iter()
            .take_while(|line| line.trim_start().starts_with('@'))
            .count();
        CodeRecord {
            id,
            file: file.into(),
            name: name.into(),
            def_line: first_line + decorators as u32,
            first_line,
            lines: lines.iter().map(|line| line.to_string()).collect(),
            enclosing: enclosing
                .iter()
                .map(|(line, text)| Enclosing {
                    line: *line,
                    text: text.to_string(),
                })
                .collect(),
            generator: false,
        }
    }

    fn assert_sources_in_context(context: &str, codes: &[&CodeRecord]) {
        let context_lines: BTreeSet<String> = context
            .split_inclusive('\n')
            .map(|line| line.replace(START_OF_TRACE, ""))
            .collect();
        for code in codes {
            for line in &code.lines {
                assert!(context_lines.contains(line), "{line:?} not in\n{context}");
            }
        }
    }

    #[test]
    fn class_headers_once_entry_marked_blocks_by_line() {
        // pkg/shapes.py:
        // 1 class Shape:
        // 2     def __init__(self, w):
        // 3         self.w = w
        // 4
        // 5     @property
        // 6     def area(self):
        // 7         return self.w * self.w
        let init = code(
            1,
            "pkg/shapes.py",
            "Shape.__init__",
            2,
            &["    def __init__(self, w):\n", "        self.w = w\n"],
            &[(1, "class Shape:\n")],
        );
        let area = code(
            2,
            "pkg/shapes.py",
            "Shape.area",
            5,
            &[
                "    @property\n",
                "    def area(self):\n",
                "        return self.w * self.w\n",
            ],
            &[(1, "class Shape:\n")],
        );
        let codes = [&area, &init];
        let context = build_context(&codes, 2);
        assert_eq!(
            context,
            "# file: pkg/shapes.py\n\
             class Shape:\n    def __init__(self, w):\n        self.w = w\n\
             \n    @property\n    def area(self):  # << START_OF_TRACE\n        return self.w * self.w\n"
        );
        assert_eq!(context.matches(START_OF_TRACE).count(), 1);
        assert_sources_in_context(&context, &codes);
    }

    #[test]
    fn nested_functions_are_shown_inside_their_outer_block() {
        // 1 def outer(xs):
        // 2     def inner(x):
        // 3         return x + 1
        // 4     return [inner(x) for x in xs]
        let outer = code(
            1,
            "m.py",
            "outer",
            1,
            &[
                "def outer(xs):\n",
                "    def inner(x):\n",
                "        return x + 1\n",
                "    return [inner(x) for x in xs]\n",
            ],
            &[],
        );
        let inner = code(
            2,
            "m.py",
            "outer.<locals>.inner",
            2,
            &["    def inner(x):\n", "        return x + 1\n"],
            &[(1, "def outer(xs):\n")],
        );
        let codes = [&inner, &outer];
        // Entry the inner function: it is marked inside the outer block, which is shown once.
        let context = build_context(&codes, 2);
        assert_eq!(
            context,
            "# file: m.py\ndef outer(xs):\n    def inner(x):  # << START_OF_TRACE\n        return x + 1\n    return [inner(x) for x in xs]\n"
        );
        assert_sources_in_context(&context, &codes);
        // The inner block alone: its enclosing def header is printed (first line only).
        let context = build_context(&[&inner], 2);
        assert_eq!(context, "# file: m.py\ndef outer(xs):\n    def inner(x):  # << START_OF_TRACE\n        return x + 1\n");
    }

    #[test]
    fn files_are_grouped_entry_file_first_then_by_path() {
        let entry = code(
            1,
            "z/main.py",
            "run",
            10,
            &["def run(a):\n", "    return helper(a)\n"],
            &[],
        );
        let helper = code(
            2,
            "a/util.py",
            "helper",
            3,
            &["def helper(a):\n", "    return b.twice(a)\n"],
            &[],
        );
        let twice = code(
            3,
            "b.py",
            "B.twice",
            8,
            &["    def twice(self, a):\n", "        return 2 * a\n"],
            &[(1, "class B(Base):\n")],
        );
        let no_newline = code(4, "b.py", "last", 20, &["def last():\n", "    pass"], &[]);
        let codes = [&twice, &helper, &entry, &no_newline];
        let context = build_context(&codes, 1);
        assert_eq!(
            context,
            "# file: z/main.py\ndef run(a):  # << START_OF_TRACE\n    return helper(a)\n\
             \n# file: a/util.py\ndef helper(a):\n    return b.twice(a)\n\
             \n# file: b.py\nclass B(Base):\n    def twice(self, a):\n        return 2 * a\n\ndef last():\n    pass\n"
        );
        assert_eq!(context.matches("# file: ").count(), 3);
    }
}
