//! The edit tool: replace one unique block of whole lines in an existing file, byte-exact.
//!
//! Semantics (documented to the model in the tool specs):
//! - A file is a sequence of lines; a line's terminator is `\r\n`, `\n`, or nothing (the last line of a file with no
//!   final newline). SEARCH lines are compared with the file's lines *without* their terminators, verbatim
//!   (indentation, tabs, trailing spaces, non-ASCII all count), so CRLF files match LF-written SEARCH text.
//! - The match must be unique. Everything outside the matched lines is written back byte for byte.
//! - Replacement lines get the file's dominant terminator (`\r\n` when CRLF lines outnumber LF lines, else `\n`).
//!   Whether the file ends with a newline is preserved.
//! - An empty SEARCH (no lines) is an error: there is nothing to anchor the edit to. Inserting is done by searching
//!   for a neighbouring line and repeating it in REPLACE; new files are made with create.
//! - Files that are not UTF-8 are refused with an explanation (bash can still change them).
//! - The file's mode is kept because [`Sandbox::write_file`] keeps it.

use crate::call::ToolName;
use crate::tool::{resolve_path, ToolConfig, ToolErrorKind, ToolResult};
use swe_env_sandbox::{BoundedRead, PathKind, Sandbox, SandboxError};

/// How many occurrence line numbers a several-occurrences message lists at most.
const MAX_LISTED_OCCURRENCES: usize = 20;

/// One line of a file: its text and its terminator (`"\r\n"`, `"\n"` or `""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    pub(crate) text: &'a str,
    pub(crate) eol: &'a str,
}

/// Splits `content` into lines with their terminators; `""` has no lines, `"a\n"` one, `"a\nb"` two.
pub(crate) fn split_lines(content: &str) -> Vec<Line<'_>> {
    content
        .split_inclusive('\n')
        .map(|piece| {
            if let Some(text) = piece.strip_suffix("\r\n") {
                Line { text, eol: "\r\n" }
            } else if let Some(text) = piece.strip_suffix('\n') {
                Line { text, eol: "\n" }
            } else {
                Line {
                    text: piece,
                    eol: "",
                }
            }
        })
        .collect()
}

/// Number of lines as [`split_lines`] counts them.
pub(crate) fn count_lines(content: &str) -> usize {
    content.split_inclusive('\n').count()
}

/// The lines of a line block (`"a\nb\n"` → `["a", "b"]`, `""` → `[]`, `"\n"` → `[""]`).
fn block_lines(block: &str) -> Vec<&str> {
    match block.strip_suffix('\n') {
        Some(body) => body.split('\n').collect(),
        None if block.is_empty() => Vec::new(),
        None => block.split('\n').collect(),
    }
}

/// Start indexes (0-based) where `needle` matches consecutive lines of `lines` under `same`.
fn find_blocks(
    lines: &[Line<'_>],
    needle: &[&str],
    same: impl Fn(&str, &str) -> bool,
) -> Vec<usize> {
    if needle.is_empty() || needle.len() > lines.len() {
        return Vec::new();
    }
    (0..=lines.len() - needle.len())
        .filter(|&start| {
            needle
                .iter()
                .enumerate()
                .all(|(offset, want)| same(lines[start + offset].text, want))
        })
        .collect()
}

/// Outcome of applying an edit to file text, before any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// The new content, the 0-based first line of the match, matched and inserted line counts.
    Done {
        content: String,
        start: usize,
        n_search: usize,
        n_replace: usize,
    },
    /// No occurrence; `hint` explains a near miss.
    NotFound { hint: Option<String> },
    /// Several occurrences, 1-based first lines.
    Several { line_numbers: Vec<usize> },
}

/// Applies the SEARCH/REPLACE line blocks to `content` (pure; `search` must be non-empty).
pub(crate) fn apply_edit(content: &str, search: &str, replace: &str) -> Applied {
    let lines = split_lines(content);
    let needle = block_lines(search);
    let starts = find_blocks(&lines, &needle, |have, want| have == want);
    match starts.as_slice() {
        [] => Applied::NotFound {
            hint: near_miss_hint(&lines, &needle),
        },
        [start] => {
            let start = *start;
            let n_crlf = lines.iter().filter(|line| line.eol == "\r\n").count();
            let n_lf = lines.iter().filter(|line| line.eol == "\n").count();
            let eol = if n_crlf > n_lf { "\r\n" } else { "\n" };
            let replacement = block_lines(replace);
            let mut out = String::with_capacity(content.len() + replace.len());
            for line in &lines[..start] {
                out.push_str(line.text);
                out.push_str(line.eol);
            }
            for text in &replacement {
                out.push_str(text);
                out.push_str(eol);
            }
            for line in &lines[start + needle.len()..] {
                out.push_str(line.text);
                out.push_str(line.eol);
            }
            if !content.ends_with('\n') {
                // Keep "no newline at end of file" when the last line was replaced or removed.
                if let Some(stripped) = out.strip_suffix('\n') {
                    let stripped_len = stripped.strip_suffix('\r').unwrap_or(stripped).len();
                    out.truncate(stripped_len);
                }
            }
            Applied::Done {
                content: out,
                start,
                n_search: needle.len(),
                n_replace: replacement.len(),
            }
        }
        several => Applied::Several {
            line_numbers: several.iter().map(|start| start + 1).collect(),
        },
    }
}

/// A hint for a search that failed only because of whitespace.
fn near_miss_hint(lines: &[Line<'_>], needle: &[&str]) -> Option<String> {
    let loose = find_blocks(lines, needle, |have, want| have.trim() == want.trim());
    if let Some(first) = loose.first() {
        return Some(format!(
            "The SEARCH lines do match line {} onwards when leading and trailing whitespace is ignored: copy the \
             indentation and whitespace of the file exactly (tabs vs spaces included).",
            first + 1
        ));
    }
    let first_line = needle.iter().find(|line| !line.trim().is_empty())?;
    let hits: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(_, line)| line.text.trim() == first_line.trim())
        .map(|(index, _)| (index + 1).to_string())
        .take(MAX_LISTED_OCCURRENCES)
        .collect();
    if hits.is_empty() {
        return None;
    }
    Some(format!(
        "The first non-blank SEARCH line appears (ignoring surrounding whitespace) at line(s) {}, but the lines \
         after it differ: view the file and copy the lines exactly.",
        hits.join(", ")
    ))
}

/// Runs the edit tool on `path` (relative to the shell's current directory).
pub(crate) async fn run_edit(
    sandbox: &dyn Sandbox,
    path: &str,
    search: &str,
    replace: &str,
    config: &ToolConfig,
) -> Result<ToolResult, SandboxError> {
    let failed = |kind, text| Ok(ToolResult::failed(ToolName::Edit, kind, text));
    if search.is_empty() {
        return failed(
            ToolErrorKind::EmptySearch,
            format!(
                "No replacement was performed: the SEARCH block for {path} is empty. Put at least one existing line \
                 in SEARCH (to insert, repeat that line in REPLACE next to the new lines); use create for new files."
            ),
        );
    }
    let abs_path = resolve_path(&sandbox.cwd().await?, path);
    match sandbox.path_kind(&abs_path).await? {
        PathKind::File => {}
        PathKind::Missing => {
            return failed(
                ToolErrorKind::PathMissing,
                format!("The path {path} does not exist (resolved to {abs_path}). Give the path of an existing file."),
            )
        }
        PathKind::Directory => {
            return failed(
                ToolErrorKind::PathIsDirectory,
                format!("The path {path} is a directory; edit needs a file."),
            )
        }
        PathKind::Other => {
            return failed(
                ToolErrorKind::NotARegularFile,
                format!("The path {path} is not a regular file (a device, socket or dangling link); edit needs a file."),
            )
        }
    }
    let limit = config.max_file_bytes;
    let bytes = match sandbox.read_file_at_most(&abs_path, limit).await {
        Ok(BoundedRead::Whole(bytes)) => bytes,
        Ok(BoundedRead::TooLarge { size }) => {
            return failed(
                ToolErrorKind::TooLarge,
                format!(
                    "Cannot edit {path}: it is {size} bytes, over the {limit}-byte limit of the edit tool. Change \
                     large files with bash instead (sed -i, or a short python script)."
                ),
            );
        }
        Err(error) => {
            return failed(
                ToolErrorKind::Unreadable,
                format!("Could not read {path}: {}", error),
            );
        }
    };
    let content = match String::from_utf8(bytes) {
        Ok(content) => content,
        Err(error) => {
            return failed(
                ToolErrorKind::NotUtf8,
                format!(
                    "Cannot edit {path}: it is not UTF-8 text (invalid byte at offset {}). Use bash to change it.",
                    error.utf8_error().valid_up_to()
                ),
            )
        }
    };
    match apply_edit(&content, search, replace) {
        Applied::NotFound { hint } => {
            let mut text = format!(
                "No replacement was performed: the SEARCH lines do not appear verbatim as consecutive whole lines \
                 in {path}."
            );
            if let Some(hint) = hint {
                text.push(' ');
                text.push_str(&hint);
            }
            failed(ToolErrorKind::SearchNotFound, text)
        }
        Applied::Several { line_numbers } => {
            let listed: Vec<String> = line_numbers
                .iter()
                .take(MAX_LISTED_OCCURRENCES)
                .map(ToString::to_string)
                .collect();
            let more = if line_numbers.len() > MAX_LISTED_OCCURRENCES {
                ", …"
            } else {
                ""
            };
            failed(
                ToolErrorKind::SeveralOccurrences,
                format!(
                    "No replacement was performed: the SEARCH lines occur {} times in {path}, starting at lines {}{more}. \
                     Include more surrounding lines so that they match exactly once.",
                    line_numbers.len(),
                    listed.join(", ")
                ),
            )
        }
        Applied::Done {
            content: new_content,
            start,
            n_search,
            n_replace,
        } => {
            if new_content.len() > limit {
                return failed(
                    ToolErrorKind::TooLarge,
                    format!(
                        "No replacement was performed: {path} would be {} bytes after the edit, over the \
                         {limit}-byte limit of the edit tool. Change large files with bash instead.",
                        new_content.len()
                    ),
                );
            }
            if let Err(error) = sandbox.write_file(&abs_path, new_content.as_bytes()).await {
                return failed(
                    ToolErrorKind::WriteFailed,
                    format!("Could not write {path}: {}", error),
                );
            }
            let text = success_text(
                path,
                &new_content,
                start,
                n_search,
                n_replace,
                config.edit_context_lines,
            );
            Ok(ToolResult::ok(ToolName::Edit, text))
        }
    }
}

/// `lines 3-5` / `line 3`.
fn describe_range(first: usize, count: usize) -> String {
    match count {
        1 => format!("line {first}"),
        _ => format!("lines {first}-{}", first + count - 1),
    }
}

fn success_text(
    path: &str,
    content: &str,
    start: usize,
    n_search: usize,
    n_replace: usize,
    context: usize,
) -> String {
    let lines = split_lines(content);
    let first = start + 1;
    let what = if n_replace == 0 {
        format!(
            "deleted {} of the old file",
            describe_range(first, n_search)
        )
    } else {
        format!(
            "replaced {} of the old file with {} (now {})",
            describe_range(first, n_search),
            plural(n_replace, "line"),
            describe_range(first, n_replace)
        )
    };
    let shown_from = first.saturating_sub(context).max(1);
    let shown_to = (first + n_replace.max(1) - 1 + context).min(lines.len());
    let mut text = format!(
        "Edited {path}: {what}. The file now has {}.",
        plural(lines.len(), "line")
    );
    if shown_from <= shown_to {
        text.push_str(&format!(" Lines {shown_from}-{shown_to} after the edit:\n"));
        for (index, line) in lines.iter().enumerate().take(shown_to).skip(shown_from - 1) {
            text.push_str(&format!("{:>6}\t{}\n", index + 1, line.text));
        }
        text.push_str("Check that the change is what you intended.");
    }
    text
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{run_tool, ToolCall};
    use swe_env_sandbox::host::UnisolatedHostSandbox;

    #[test]
    fn lines_and_blocks() {
        assert_eq!(split_lines("").len(), 0);
        assert_eq!(
            split_lines("a\r\nb"),
            [
                Line {
                    text: "a",
                    eol: "\r\n"
                },
                Line { text: "b", eol: "" }
            ]
        );
        assert_eq!(block_lines(""), Vec::<&str>::new());
        assert_eq!(block_lines("\n"), [""]);
        assert_eq!(block_lines("a\nb\n"), ["a", "b"]);
        assert_eq!(count_lines("a\nb"), 2);
        assert_eq!(count_lines("a\nb\n"), 2);
    }

    fn check_apply(content: &str, search: &str, replace: &str, expect: &str) {
        let actual = match apply_edit(content, search, replace) {
            Applied::Done {
                content,
                start,
                n_search,
                n_replace,
            } => {
                format!("done {content:?} at {start} ({n_search}->{n_replace})")
            }
            Applied::NotFound { hint } => format!("not found {hint:?}"),
            Applied::Several { line_numbers } => format!("several {line_numbers:?}"),
        };
        assert_eq!(actual, expect);
    }

    #[test]
    fn apply_cases() {
        check_apply(
            "a\nb\nc\n",
            "b\n",
            "x\ny\n",
            r#"done "a\nx\ny\nc\n" at 1 (1->2)"#,
        );
        check_apply(
            "a\r\nb\r\nc",
            "b\nc\n",
            "z\n",
            r#"done "a\r\nz" at 1 (2->1)"#,
        );
        check_apply("a\nb", "b\n", "", r#"done "a" at 1 (1->0)"#);
        check_apply("a\r\nb", "b\n", "", r#"done "a" at 1 (1->0)"#);
        check_apply("a\nb\n", "a\nb\n", "", r#"done "" at 0 (2->0)"#);
        check_apply("\tx\n", "\tx\n", "\ty\n", r#"done "\ty\n" at 0 (1->1)"#);
        // Whole lines only: a prefix of a line is not a match.
        check_apply("foobar\n", "foo\n", "x\n", "not found None");
        check_apply("x\ny\nx\n", "x\n", "z\n", "several [1, 3]");
        check_apply(
            "\tif a:\n\t\treturn\n",
            "    if a:\n        return\n",
            "",
            "not found Some(\"The SEARCH lines do match line 1 onwards when leading and trailing whitespace is \
             ignored: copy the indentation and whitespace of the file exactly (tabs vs spaces included).\")",
        );
        check_apply(
            "def f():\n    return 1\n",
            "def f():\n    return 2\n",
            "",
            "not found Some(\"The first non-blank SEARCH line appears (ignoring surrounding whitespace) at line(s) 1, \
             but the lines after it differ: view the file and copy the lines exactly.\")",
        );
    }

    /// Runs an edit through the host sandbox and returns (error kind, text, file bytes after).
    async fn edit_on_host(
        initial: Option<&[u8]>,
        path: &str,
        search: &str,
        replace: &str,
    ) -> (Option<ToolErrorKind>, String, Option<Vec<u8>>) {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        if let Some(bytes) = initial {
            sandbox
                .write_file(&format!("{root}/f.txt"), bytes)
                .await
                .unwrap();
        }
        sandbox.run("mkdir sub", DEFAULT_TIMEOUT).await.unwrap();
        let call = ToolCall::Edit {
            path: path.into(),
            search: search.into(),
            replace: replace.into(),
        };
        let result = run_tool(&sandbox, &call, &ToolConfig::default())
            .await
            .unwrap();
        let after = sandbox.read_file(&format!("{root}/f.txt")).await.ok();
        (result.error, result.text, after)
    }

    const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

    #[tokio::test]
    async fn files_over_the_limit_are_refused_before_reading() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        let file = format!("{root}/f.txt");
        sandbox.write_file(&file, &[b'a'; 101]).await.unwrap();
        let config = ToolConfig {
            max_file_bytes: 100,
            ..ToolConfig::default()
        };
        let edit = |search: &str, replace: &str| ToolCall::Edit {
            path: "f.txt".into(),
            search: search.into(),
            replace: replace.into(),
        };
        let a101 = "a".repeat(101);
        let result = run_tool(&sandbox, &edit(&a101, "b"), &config)
            .await
            .unwrap();
        assert_eq!(result.error, Some(ToolErrorKind::TooLarge));
        assert_eq!(
            result.text,
            "Cannot edit f.txt: it is 101 bytes, over the 100-byte limit of the edit tool. Change large files with \
             bash instead (sed -i, or a short python script)."
        );
        assert_eq!(sandbox.read_file(&file).await.unwrap(), a101.as_bytes());

        // A file at the limit is edited; an edit that would grow it beyond the limit is refused.
        sandbox.write_file(&file, &[b'a'; 100]).await.unwrap();
        let a100 = "a".repeat(100);
        let grown = run_tool(&sandbox, &edit(&a100, &a101), &config)
            .await
            .unwrap();
        assert_eq!(grown.error, Some(ToolErrorKind::TooLarge));
        assert_eq!(
            grown.text,
            "No replacement was performed: f.txt would be 101 bytes after the edit, over the 100-byte limit of the \
             edit tool. Change large files with bash instead."
        );
        assert_eq!(sandbox.read_file(&file).await.unwrap(), a100.as_bytes());
        let shrunk = run_tool(&sandbox, &edit(&a100, "b"), &config)
            .await
            .unwrap();
        assert_eq!(shrunk.error, None, "{}", shrunk.text);
        assert_eq!(sandbox.read_file(&file).await.unwrap(), b"b");
    }

    #[tokio::test]
    async fn success_message() {
        let content: String = (1..=12).map(|n| format!("line {n}\n")).collect();
        let (error, text, after) = edit_on_host(
            Some(content.as_bytes()),
            "f.txt",
            "line 6\n",
            "six\nsix b\n",
        )
        .await;
        assert_eq!(error, None);
        assert_eq!(
            text,
            "Edited f.txt: replaced line 6 of the old file with 2 lines (now lines 6-7). The file now has 13 lines. \
             Lines 2-11 after the edit:\n     2\tline 2\n     3\tline 3\n     4\tline 4\n     5\tline 5\n     6\tsix\n     \
             7\tsix b\n     8\tline 7\n     9\tline 8\n    10\tline 9\n    11\tline 10\nCheck that the change is what \
             you intended."
        );
        assert_eq!(
            String::from_utf8(after.unwrap()).unwrap(),
            content.replace("line 6\n", "six\nsix b\n")
        );
    }

    #[tokio::test]
    async fn delete_message_and_relative_path() {
        let (error, text, after) = edit_on_host(Some(b"a\nb\nc\n"), "./f.txt", "a\nb\n", "").await;
        assert_eq!(error, None);
        assert_eq!(
            text,
            "Edited ./f.txt: deleted lines 1-2 of the old file. The file now has 1 line. Lines 1-1 after the edit:\n     \
             1\tc\nCheck that the change is what you intended."
        );
        assert_eq!(after.unwrap(), b"c\n");
        let (error, text, after) = edit_on_host(Some(b"only\n"), "f.txt", "only\n", "").await;
        assert_eq!(error, None);
        assert_eq!(
            text,
            "Edited f.txt: deleted line 1 of the old file. The file now has 0 lines."
        );
        assert_eq!(after.unwrap(), b"");
    }

    #[tokio::test]
    async fn failures() {
        let (error, text, after) = edit_on_host(Some(b"a\n"), "f.txt", "", "x\n").await;
        assert_eq!(error, Some(ToolErrorKind::EmptySearch));
        assert_eq!(
            text,
            "No replacement was performed: the SEARCH block for f.txt is empty. Put at least one existing line in \
             SEARCH (to insert, repeat that line in REPLACE next to the new lines); use create for new files."
        );
        assert_eq!(after.unwrap(), b"a\n");

        let (error, text, _) = edit_on_host(None, "nope.txt", "a\n", "b\n").await;
        assert_eq!(error, Some(ToolErrorKind::PathMissing));
        assert!(
            text.starts_with("The path nope.txt does not exist (resolved to /"),
            "{text}"
        );
        assert!(
            text.ends_with("/nope.txt). Give the path of an existing file."),
            "{text}"
        );

        let (error, text, _) = edit_on_host(None, "sub", "a\n", "b\n").await;
        assert_eq!(error, Some(ToolErrorKind::PathIsDirectory));
        assert_eq!(text, "The path sub is a directory; edit needs a file.");

        let (error, text, after) = edit_on_host(Some(b"x\ny\nx\n"), "f.txt", "x\n", "z\n").await;
        assert_eq!(error, Some(ToolErrorKind::SeveralOccurrences));
        assert_eq!(
            text,
            "No replacement was performed: the SEARCH lines occur 2 times in f.txt, starting at lines 1, 3. Include \
             more surrounding lines so that they match exactly once."
        );
        assert_eq!(after.unwrap(), b"x\ny\nx\n");

        let (error, text, _) =
            edit_on_host(Some(b"    x = 1\n"), "f.txt", "x = 1\n", "x = 2\n").await;
        assert_eq!(error, Some(ToolErrorKind::SearchNotFound));
        assert_eq!(
            text,
            "No replacement was performed: the SEARCH lines do not appear verbatim as consecutive whole lines in \
             f.txt. The SEARCH lines do match line 1 onwards when leading and trailing whitespace is ignored: copy \
             the indentation and whitespace of the file exactly (tabs vs spaces included)."
        );

        let (error, text, _) = edit_on_host(Some(b"abc\n"), "f.txt", "zzz\n", "y\n").await;
        assert_eq!(error, Some(ToolErrorKind::SearchNotFound));
        assert_eq!(
            text,
            "No replacement was performed: the SEARCH lines do not appear verbatim as consecutive whole lines in \
             f.txt."
        );

        let (error, text, after) =
            edit_on_host(Some(b"ok\n\xff\xfe\n"), "f.txt", "ok\n", "y\n").await;
        assert_eq!(error, Some(ToolErrorKind::NotUtf8));
        assert_eq!(text, "Cannot edit f.txt: it is not UTF-8 text (invalid byte at offset 3). Use bash to change it.");
        assert_eq!(after.unwrap(), b"ok\n\xff\xfe\n");
    }

    #[tokio::test]
    async fn odd_files_and_io_failures() {
        let inner = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = inner.root().to_str().unwrap().to_owned();
        inner
            .run("ln -s nowhere dangling && echo a > f.txt", DEFAULT_TIMEOUT)
            .await
            .unwrap();
        let edit = |path: &str| ToolCall::Edit {
            path: path.into(),
            search: "a\n".into(),
            replace: "b\n".into(),
        };
        let config = ToolConfig::default();
        let odd = run_tool(&inner, &edit("dangling"), &config).await.unwrap();
        assert_eq!(odd.error, Some(ToolErrorKind::NotARegularFile));
        assert_eq!(
            odd.text,
            "The path dangling is not a regular file (a device, socket or dangling link); edit needs a file."
        );

        let mut sandbox = crate::fault::FailingIo {
            inner,
            fail_reads: true,
            fail_writes: false,
        };
        let unreadable = run_tool(&sandbox, &edit("f.txt"), &config).await.unwrap();
        assert_eq!(unreadable.error, Some(ToolErrorKind::Unreadable));
        assert_eq!(
            unreadable.text,
            format!(
                "Could not read f.txt: cannot read {root}/f.txt: Permission denied (os error 13)"
            )
        );
        sandbox.fail_reads = false;
        sandbox.fail_writes = true;
        let unwritable = run_tool(&sandbox, &edit("f.txt"), &config).await.unwrap();
        assert_eq!(unwritable.error, Some(ToolErrorKind::WriteFailed));
        assert_eq!(
            unwritable.text,
            format!("Could not write f.txt: cannot write {root}/f.txt: Read-only file system (os error 30)")
        );
        assert_eq!(
            sandbox.read_file(&format!("{root}/f.txt")).await.unwrap(),
            b"a\n"
        );
    }

    #[tokio::test]
    async fn byte_exact_and_mode() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let root = sandbox.root().to_str().unwrap().to_owned();
        let file = format!("{root}/run.sh");
        sandbox
            .write_file(&file, "#!/bin/sh\r\n\techo 'héllo'\r\nexit 0".as_bytes())
            .await
            .unwrap();
        sandbox
            .run(&format!("chmod 755 {file}"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        let call = ToolCall::Edit {
            path: "run.sh".into(),
            search: "exit 0\n".into(),
            replace: "echo ünï\nexit 1\n".into(),
        };
        let result = run_tool(&sandbox, &call, &ToolConfig::default())
            .await
            .unwrap();
        assert_eq!(result.error, None, "{}", result.text);
        assert_eq!(
            sandbox.read_file(&file).await.unwrap(),
            "#!/bin/sh\r\n\techo 'héllo'\r\necho ünï\r\nexit 1".as_bytes()
        );
        let mode = sandbox
            .run(&format!("stat -c %a {file}"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(mode.output, b"755\n");
    }
}
