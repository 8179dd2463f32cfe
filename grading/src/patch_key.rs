//! The normalised form of a patch that decides whether two final patches are "near-identical" (export dedup, the
//! harvest manifest's `patch_hash`, majority vote): what the patch adds and removes, file by file, with formatting
//! and position taken out.
//!
//! [`normalize`] reads the patch with the one diff parser ([`crate::diff`]: [`Dialect::Unidiff`], falling back to
//! the lenient [`Dialect::GitApply`] when unidiff refuses it) and keeps, per file (files sorted by path; a path
//! that appears in several sections keeps their lines in patch order):
//! - only added (`+`) and removed (`-`) lines, in patch order; hunk headers, line offsets and context are ignored;
//! - each line's leading indentation kept exactly as written (Python indentation is semantic, and a tab is not
//!   eight spaces: Python 3 refuses inconsistent mixes with `TabError`); in Python files the whitespace between
//!   tokens removed — except one space between two word characters (`not found` ≠ `notfound`) and everything
//!   inside a one-line `'…'` / `"…"` literal (`"a b"` ≠ `"ab"`) —, so `a=b` vs `a = b` and `f(x, y)` vs `f(x,y)`
//!   are formatting; in other files each whitespace run kept as one space (YAML's `- a: b` and a shell's `rm -rf /
//!   tmp` are not formatting); trailing whitespace never counts;
//! - in Python files (`.py`, `.pyi`, `.pyx`), a trailing `#` comment cut (a `#` outside a one-line string literal; a string opened on an earlier
//!   line is not tracked, so a `#` inside a triple-quoted string cuts the line there too);
//! - lines left blank dropped, and files left without a line dropped (a whitespace- or comment-only change to a
//!   file does not count), except binary files, which keep a `binary` marker.
//!
//! Text that is not a diff at all (no file section) normalises to `not a diff` and its own squeezed,
//! non-blank lines, so two different non-diffs still differ; empty or blank text normalises to the empty string. The output is plain text (`file <path>\n` then `+line\n` / `-line\n`); callers
//! hash it (SHA-256 hex in the harvest manifest).

use crate::diff::{parse, Dialect, FileDiff, LineKind};

/// The normalised form of `patch` (see the module documentation). Equal for the same change written with
/// different context, hunk offsets, whitespace or trailing Python comments; different for different changes.
pub fn normalize(patch: &str) -> String {
    let files = match parse(patch, Dialect::Unidiff) {
        Ok(files) if !files.is_empty() => files,
        _ => parse(patch, Dialect::GitApply).unwrap_or_default(),
    };
    if files.is_empty() {
        return not_a_diff(patch);
    }
    let mut keyed: Vec<(String, Vec<String>)> = Vec::new();
    for file in &files {
        let path = file.path().unwrap_or_default().to_owned();
        let lines = changed_lines(file, is_python(&path));
        match keyed.iter_mut().find(|(p, _)| *p == path) {
            Some((_, existing)) => existing.extend(lines),
            None => keyed.push((path, lines)),
        }
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    for (path, lines) in keyed {
        if lines.is_empty() {
            continue;
        }
        out.push_str("file ");
        out.push_str(&path);
        out.push('\n');
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn is_python(path: &str) -> bool {
    [".py", ".pyi", ".pyx"]
        .iter()
        .any(|ext| path.ends_with(ext))
}

fn changed_lines(file: &FileDiff, python: bool) -> Vec<String> {
    let mut out = Vec::new();
    if file.binary {
        out.push("binary".to_owned());
    }
    for hunk in &file.hunks {
        for line in &hunk.lines {
            let sign = match line.kind {
                LineKind::Added => '+',
                LineKind::Removed => '-',
                _ => continue,
            };
            let text = line.content();
            let text = if python { strip_comment(text) } else { text };
            if let Some(key) = line_key(text, python) {
                out.push(format!("{sign}{key}"));
            }
        }
    }
    out
}

/// The key of one added or removed line: its indentation exactly as written (a tab is not eight spaces: Python 3
/// refuses inconsistent mixes with `TabError`, so a re-indented line is another change), then the rest — in a
/// Python file [`squeeze`]d (whitespace between tokens does not count, whitespace inside a string literal or
/// between two words does), in any other file with each whitespace run as one space (YAML's `- a: b` and a shell's
/// `rm -rf / tmp` are not formatting). `None` for a blank line; trailing whitespace never counts.
fn line_key(text: &str, python: bool) -> Option<String> {
    let start = text
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(text.len(), |(index, _)| index);
    let (indent, rest) = text.split_at(start);
    let squeezed = if python {
        squeeze(rest)
    } else {
        rest.split_whitespace().collect::<Vec<_>>().join(" ")
    };
    if squeezed.is_empty() {
        return None;
    }
    Some(format!("{indent}{squeezed}"))
}

/// `text` with the whitespace between tokens taken out: a run of whitespace outside a `'…'` / `"…"` literal
/// disappears, except that one space stays between two word characters (letters, digits, `_`), so `a = b(x, y)`
/// equals `a=b(x,y)` while `not found` and `notfound` stay different; inside a literal (backslash escapes honoured,
/// one line) every character is kept, so `"a b"` and `"ab"` differ.
fn squeeze(text: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut pending_space = false;
    for c in text.chars() {
        if let Some(open) = quote {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        if c.is_whitespace() {
            pending_space = true;
            continue;
        }
        if pending_space && out.chars().last().is_some_and(is_word) && is_word(c) {
            out.push(' ');
        }
        pending_space = false;
        if c == '\'' || c == '"' {
            quote = Some(c);
        }
        out.push(c);
    }
    out
}

/// `line` up to a `#` that starts a Python comment: one outside a `'…'` / `"…"` literal on this line (backslash
/// escapes honoured). A literal opened on an earlier line (triple quotes) is not tracked.
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (index, c) in line.char_indices() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' => return &line[..index],
            None => {}
        }
    }
    line
}

fn not_a_diff(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let squeezed = squeeze(line);
        if !squeezed.is_empty() {
            out.push_str(&squeezed);
            out.push('\n');
        }
    }
    if out.is_empty() {
        // Empty or blank: no change at all.
        return out;
    }
    format!("not a diff\n{out}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "diff --git a/pkg/mod.py b/pkg/mod.py
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -10,7 +10,7 @@ def f(x):
     a = 1
     b = 2
     c = 3
-    return x + 1
+    return x + 2
     d = 4
     e = 5
     f = 6
diff --git a/docs/notes.txt b/docs/notes.txt
--- a/docs/notes.txt
+++ b/docs/notes.txt
@@ -1,1 +1,2 @@
 intro
+# a heading, not a comment
";

    /// The same change: files in the other order, one line of context instead of three, other offsets, other
    /// spacing inside lines, trailing whitespace, a trailing comment, an added blank line (indentation is the
    /// same: it counts).
    const SAME: &str = "diff --git a/docs/notes.txt b/docs/notes.txt
--- a/docs/notes.txt
+++ b/docs/notes.txt
@@ -5,1 +5,2 @@
 intro
+#   a heading,   not a comment
diff --git a/pkg/mod.py b/pkg/mod.py
--- a/pkg/mod.py
+++ b/pkg/mod.py
@@ -40,3 +40,4 @@ def f(x):
   \tc = 3
-    return x+1
+    return x  +  2   # the fix\t
+
 \td = 4
";

    #[test]
    fn the_same_change_written_differently_normalises_equal() {
        assert_eq!(normalize(BASE), normalize(SAME));
        assert_eq!(
            normalize(BASE),
            "file docs/notes.txt\n+# a heading, not a comment\nfile pkg/mod.py\n-    return x+1\n+    return x+2\n"
        );
    }

    #[test]
    fn a_different_change_normalises_differently() {
        let other_value = BASE.replace("+    return x + 2", "+    return x + 3");
        assert_ne!(normalize(BASE), normalize(&other_value));
        let other_file = BASE.replace("pkg/mod.py", "pkg/other.py");
        assert_ne!(normalize(BASE), normalize(&other_file));
        // Removing instead of adding is another change.
        let reversed = BASE
            .replace("-    return x + 1", "+    return x + 1#")
            .replace("+    return x + 2", "-    return x + 2");
        assert_ne!(normalize(BASE), normalize(&reversed));
        // A `#` inside a string is code, not a comment.
        let in_string = BASE.replace("+    return x + 2", "+    return '#x' + 2");
        assert_ne!(normalize(BASE), normalize(&in_string));
        assert_ne!(
            normalize(&in_string),
            normalize(&in_string.replace("#x", "#y"))
        );
    }

    #[test]
    fn comment_and_whitespace_only_changes_vanish_and_non_diffs_still_differ() {
        let only_comment = "--- a/x.py\n+++ b/x.py\n@@ -1 +1 @@\n-a = 1  # old\n+a  =  1 # new\n";
        assert_eq!(normalize(only_comment), "file x.py\n-a=1\n+a=1\n");
        let blank_only = "--- a/x.py\n+++ b/x.py\n@@ -1 +1,2 @@\n a = 1\n+   \n";
        assert_eq!(normalize(blank_only), "");
        assert_ne!(normalize("not a patch"), normalize("another text"));
        assert_eq!(normalize("not  a patch\n\n"), normalize("not a\tpatch"));
        assert_ne!(normalize("not  a patch\n\n"), normalize("notapatch"));
        assert_eq!(normalize(""), "");
        assert_eq!(normalize(" \n\t\n"), "");
    }

    /// Whitespace between two words and inside string literals is part of the change: a regex with a space, a
    /// message with one, `not found` vs `notfound` (a hostile review found these voted together).
    #[test]
    fn whitespace_that_changes_meaning_counts() {
        let at = |line: &str| format!("--- a/m.py\n+++ b/m.py\n@@ -1 +1,2 @@\n x = 1\n+{line}\n");
        assert_ne!(
            normalize(&at(r#"    pattern = re.compile(r"[^a-z 0-9]+")"#)),
            normalize(&at(r#"    pattern = re.compile(r"[^a-z0-9]+")"#))
        );
        assert_ne!(
            normalize(&at("    return not found")),
            normalize(&at("    return notfound"))
        );
        assert_ne!(
            normalize(&at("    s = 'a \\' b'")),
            normalize(&at("    s = 'a \\'b'"))
        );
        assert_eq!(
            normalize(&at("    s = 'a b'  +  name")),
            normalize(&at("    s = 'a b'+name"))
        );
        assert_eq!(
            normalize(&at("    s = 'a b'  +  name")),
            "file m.py\n+    s='a b'+name\n"
        );
    }

    /// Outside Python, whitespace inside a line is not formatting: it is kept, each run as one space.
    #[test]
    fn other_files_keep_their_inner_whitespace_as_single_spaces() {
        let yaml =
            |line: &str| format!("--- a/ci.yml\n+++ b/ci.yml\n@@ -1 +1,2 @@\n x: 1\n+{line}\n");
        assert_ne!(
            normalize(&yaml("- run: make")),
            normalize(&yaml("-run:make"))
        );
        assert_eq!(
            normalize(&yaml("- run:   make  ")),
            normalize(&yaml("- run: make"))
        );
        let sh = |line: &str| format!("--- a/b.sh\n+++ b/b.sh\n@@ -1 +1,2 @@\n x=1\n+{line}\n");
        assert_ne!(
            normalize(&sh("rm -rf /tmp/build")),
            normalize(&sh("rm -rf / tmp/build"))
        );
    }

    /// Python indentation is semantic: the same statement inside an `if` and at function level is another
    /// change. A tab is the spaces up to the next multiple of 8 (as Python reads it); trailing whitespace and
    /// whitespace after the indentation do not count.
    #[test]
    fn indentation_counts_exactly_as_written() {
        let at = |line: &str| format!("--- a/m.py\n+++ b/m.py\n@@ -1 +1,2 @@\n x = 1\n+{line}\n");
        assert_ne!(
            normalize(&at("        return y")),
            normalize(&at("    return y"))
        );
        assert_eq!(normalize(&at("    return y")), "file m.py\n+    return y\n");
        // A tab is not eight spaces: a tab-indented line among space-indented ones is a TabError in Python 3 (a
        // second hostile review saw such a patch vote with the correct one).
        assert_ne!(
            normalize(&at("\treturn y")),
            normalize(&at("        return y"))
        );
        assert_eq!(normalize(&at("\treturn y")), "file m.py\n+\treturn y\n");
        assert_eq!(
            normalize(&at("    return  y  \t")),
            normalize(&at("    return y"))
        );
        assert_eq!(normalize(&at("    a=b")), normalize(&at("    a = b")));
        assert_eq!(
            normalize(&at("    f(x, y) [ 1 ]")),
            normalize(&at("    f(x,y)[1]"))
        );
        assert_ne!(normalize(&at("    a=b")), normalize(&at("a = b")));
    }

    #[test]
    fn strip_comment_respects_quotes_and_escapes() {
        assert_eq!(strip_comment("x = 1 # c\n"), "x = 1 ");
        assert_eq!(strip_comment("s = \"a#b\" # c"), "s = \"a#b\" ");
        assert_eq!(strip_comment("s = 'it\\'s #1' # c"), "s = 'it\\'s #1' ");
        assert_eq!(strip_comment("# whole line"), "");
    }
}
