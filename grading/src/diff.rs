//! The one unified-diff (git patch) parser: every consumer that reads a patch's structure goes through
//! [`parse`], which yields [`FileDiff`]s (old/new path, created/deleted/renamed/binary flags, hunks with their
//! lines and numbers, the byte span of the file's section).
//!
//! The consumers mirror three references that do **not** agree on what a patch is, so the parser takes the
//! reading as a [`Dialect`] instead of picking one:
//!
//! | question | [`Dialect::Unidiff`] (swebench `get_modified_files`) | [`Dialect::SweRl`] (SWE-RL similarity) | [`Dialect::GitApply`] (gold agent replay) |
//! |---|---|---|---|
//! | what starts a file | `diff --git` (three header regexes), a `---`/`+++` pair, a `Binary files` line | `diff --git`, or a `---` line directly followed by `+++` | only `diff --git`; lines before the first are ignored |
//! | `diff --git` paths | `a/…` and `b/…` as written (quotes kept) | the text after the **last** ` b/` | split at the **first** ` b/`, `a/` dropped |
//! | hunk header | `^@@ -N[,N] \+N[,N] @@`; other `@@` lines are plain lines | any line starting with `@@` must parse (ASCII digits) or it is an error | `@@ ` lines; unreadable counts are `0,0` |
//! | hunk body | read by its counts; a line starting with `\r` counts as context; one too many is an error | read by its counts; a bare empty line is context, `\r` is not | read by its counts, saturating; any unprefixed line is an empty context line; a `diff --git` line ends it |
//! | malformed input | errors as `unidiff.PatchSet` raises them ([`DiffError::Unexpected`]) | [`DiffError::BadHunkHeader`], [`DiffError::HunkWithoutFile`], [`DiffError::BadHunkBody`] | never an error |
//!
//! Hunk bodies are always consumed by their line counts, so a removed line that starts with `-- ` or an added line
//! `+diff --git …` is never taken for a header. The reference's test-directive regex, which *does* match inside
//! hunks, is a separate scan: [`git_header_targets_anywhere`].
//!
//! Lines are split after each `\n` (a `\r` stays part of the line, as in all three references).

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

/// Which reference's reading of a patch to follow (see the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `unidiff.PatchSet` 1.0.1, as swebench 4.1.0's `get_modified_files` uses it.
    Unidiff,
    /// SWE-RL's per-file diff bodies (`grading/reference-parsers/similarity_reference.py`).
    SweRl,
    /// What `git apply` needs to replay a patch file by file, leniently (the gold agent).
    GitApply,
}

/// A patch that cannot be read under the chosen [`Dialect`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    /// The patch is empty or only whitespace.
    #[error("patch is empty")]
    Empty,
    /// The patch has no hunk at all.
    #[error("patch has no hunks")]
    NoHunks,
    /// A hunk header could not be read ([`Dialect::SweRl`]).
    #[error("bad hunk header on patch line {line_number}: {line:?}")]
    BadHunkHeader {
        /// 1-based line number in the patch.
        line_number: usize,
        /// The line.
        line: String,
    },
    /// A hunk appears before any file header ([`Dialect::SweRl`]).
    #[error("hunk without a file header on patch line {line_number}")]
    HunkWithoutFile {
        /// 1-based line number in the patch.
        line_number: usize,
    },
    /// A hunk has fewer (or different) lines than its header announces ([`Dialect::SweRl`]).
    #[error("hunk ending on patch line {line_number} does not match its header counts")]
    BadHunkBody {
        /// 1-based line number in the patch where the hunk went wrong.
        line_number: usize,
    },
    /// What `unidiff.PatchSet` rejects ([`Dialect::Unidiff`]).
    #[error("patch cannot be parsed at line {line_no}: {reason}")]
    Unexpected {
        /// 1-based line number in the patch.
        line_no: usize,
        /// What the parser expected.
        reason: String,
    },
}

/// The kind of one hunk line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// ` text`: in both versions.
    Context,
    /// A context line without its leading space (an empty line: some tools strip trailing spaces; under
    /// [`Dialect::Unidiff`] also a line starting with `\r`; under [`Dialect::GitApply`] any unprefixed line).
    BareContext,
    /// `-text`: only in the old version.
    Removed,
    /// `+text`: only in the new version.
    Added,
    /// `\ No newline at end of file` (any line starting with `\`): the previous line has no newline.
    NoNewline,
}

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HunkLine {
    /// What the line is.
    pub kind: LineKind,
    /// The line as written in the patch, prefix included, with its `\n` (absent only on a patch's last line).
    pub raw: String,
    /// 1-based line number in the patch.
    pub line_no: usize,
}

impl HunkLine {
    /// The line without its trailing `\n` (a `\r` is kept).
    pub fn text(&self) -> &str {
        self.raw.strip_suffix('\n').unwrap_or(&self.raw)
    }

    /// The line's content in the file, `\n` included: the raw line without its prefix (`\n` for a bare line).
    pub fn content(&self) -> &str {
        match self.kind {
            LineKind::BareContext => "\n",
            _ => self.raw.get(1..).unwrap_or_default(),
        }
    }
}

/// One `@@ -a,b +c,d @@ section` header and the lines under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hunk {
    /// The old range as written, sign included (`-12,3`, `-1`).
    pub old_range: String,
    /// The new range as written (`+12,4`).
    pub new_range: String,
    /// First old line (0 with an empty old side).
    pub old_start: u64,
    /// Old line count (1 when omitted).
    pub old_count: u64,
    /// First new line.
    pub new_start: u64,
    /// New line count (1 when omitted).
    pub new_count: u64,
    /// 1-based patch line number of the header.
    pub line_no: usize,
    /// The body lines, in order.
    pub lines: Vec<HunkLine>,
}

impl Hunk {
    /// The old side: context and removed lines' contents, each with its `\n`.
    pub fn old_text(&self) -> String {
        self.side(LineKind::Removed)
    }

    /// The new side: context and added lines' contents.
    pub fn new_text(&self) -> String {
        self.side(LineKind::Added)
    }

    fn side(&self, own: LineKind) -> String {
        self.lines
            .iter()
            .filter(|l| {
                matches!(l.kind, LineKind::Context | LineKind::BareContext) || l.kind == own
            })
            .map(HunkLine::content)
            .collect()
    }
}

/// One file's section of a patch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileDiff {
    /// The old name exactly as the headers give it (`a/x.py`, `"a/x y.py"`, `/dev/null` for a created file);
    /// filled by [`Dialect::Unidiff`] (unidiff's `source_file`).
    pub source: Option<String>,
    /// The new name exactly as the headers give it (`b/x.py`, `/dev/null` for a deleted file); [`Dialect::Unidiff`].
    pub target: Option<String>,
    /// The path before, without its `a/` prefix; `None` for a created file (or a header the dialect cannot split).
    pub old_path: Option<String>,
    /// The path after, without its `b/` prefix; `None` for a deleted file.
    pub new_path: Option<String>,
    /// `new file mode` (or, for [`Dialect::GitApply`], `--- /dev/null`).
    pub new_file: bool,
    /// `deleted file mode` (or, for [`Dialect::GitApply`], `+++ /dev/null`).
    pub deleted_file: bool,
    /// `rename from` seen.
    pub renamed: bool,
    /// `copy from` seen.
    pub copied: bool,
    /// `old mode` / `new mode` seen.
    pub mode_changed: bool,
    /// `Binary files … differ` or `GIT binary patch`.
    pub binary: bool,
    /// A `\ No newline at end of file` marker.
    pub no_newline: bool,
    /// The hunks in patch order.
    pub hunks: Vec<Hunk>,
    /// Bytes of the patch from the line that opened this file up to the line that opened the next one (or the end).
    pub span: Range<usize>,
}

impl FileDiff {
    /// The name SWE-RL files a diff under: the new path, or the old one for a deletion.
    pub fn path(&self) -> Option<&str> {
        self.new_path.as_deref().or(self.old_path.as_deref())
    }
}

/// Parses `patch` into its files as `dialect` reads it.
pub fn parse(patch: &str, dialect: Dialect) -> Result<Vec<FileDiff>, DiffError> {
    let lines = Lines::new(patch);
    let mut files = match dialect {
        Dialect::Unidiff => parse_unidiff(&lines)?,
        Dialect::SweRl => parse_swe_rl(&lines)?,
        Dialect::GitApply => parse_git_apply(&lines),
    };
    // Each section runs to where the next one starts.
    for index in 1..files.len() {
        let next_start = files[index].span.start;
        files[index - 1].span.end = next_start;
    }
    if let Some(last) = files.last_mut() {
        last.span.end = patch.len();
    }
    Ok(files)
}

/// The captures of swebench's `re.findall(r"diff --git a/.* b/(.*)", patch)` (`get_test_directives`): on each
/// line, from the first `diff --git a/`, whatever follows the last ` b/` after it. The pattern is unanchored, so a
/// hunk line such as `+diff --git a/x b/y` counts too — the reference does so, and so must its directives.
pub fn git_header_targets_anywhere(patch: &str) -> Vec<String> {
    const HEAD: &str = "diff --git a/";
    let mut out = Vec::new();
    for line in patch.split('\n') {
        let Some(start) = line.find(HEAD) else {
            continue;
        };
        let rest = &line[start + HEAD.len()..];
        if let Some(b) = rest.rfind(" b/") {
            out.push(rest[b + 3..].to_string());
        }
    }
    out
}

/// The patch's lines, each with its `\n` and byte offset.
struct Lines<'a> {
    lines: Vec<&'a str>,
    offsets: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(patch: &'a str) -> Self {
        let lines: Vec<&str> = patch.split_inclusive('\n').collect();
        let mut offsets = Vec::with_capacity(lines.len());
        let mut offset = 0;
        for line in &lines {
            offsets.push(offset);
            offset += line.len();
        }
        Lines { lines, offsets }
    }

    fn len(&self) -> usize {
        self.lines.len()
    }

    /// The raw line (with `\n`).
    fn raw(&self, index: usize) -> &'a str {
        self.lines[index]
    }

    /// The line without its `\n`.
    fn text(&self, index: usize) -> &'a str {
        let raw = self.lines[index];
        raw.strip_suffix('\n').unwrap_or(raw)
    }

    fn file_at(&self, index: usize) -> FileDiff {
        FileDiff {
            span: self.offsets[index]..self.offsets[index],
            ..FileDiff::default()
        }
    }

    fn hunk_line(&self, index: usize, kind: LineKind) -> HunkLine {
        HunkLine {
            kind,
            raw: self.lines[index].to_string(),
            line_no: index + 1,
        }
    }
}

/// `-a[,b]` or `+c[,d]` → (start, count); the count is 1 when omitted; ASCII digits only.
fn range(range: &str, sign: char) -> Option<(u64, u64)> {
    let digits = range.strip_prefix(sign)?;
    let (start, count) = match digits.split_once(',') {
        Some((start, count)) => (start, Some(count)),
        None => (digits, None),
    };
    let start = ascii_number(start)?;
    let count = match count {
        Some(count) => ascii_number(count)?,
        None => 1,
    };
    Some((start, count))
}

/// A non-empty run of ASCII digits as a number (`str::parse` alone would accept a `+` sign).
fn ascii_number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// `@@ -a,b +c,d @@…` read strictly (the section heading after ` @@` is ignored).
fn strict_hunk_header(line: &str, line_no: usize) -> Option<Hunk> {
    let rest = line.strip_prefix("@@ ")?;
    let (ranges, _section) = rest.split_once(" @@")?;
    let (old_range, new_range) = ranges.split_once(' ')?;
    let (old_start, old_count) = range(old_range, '-')?;
    let (new_start, new_count) = range(new_range, '+')?;
    Some(Hunk {
        old_range: old_range.to_string(),
        new_range: new_range.to_string(),
        old_start,
        old_count,
        new_start,
        new_count,
        line_no,
        lines: Vec::new(),
    })
}

/// The gold agent's reading of a hunk header: whitespace-separated ranges, a count is what follows the comma (1
/// without one); unreadable counts make an empty `0,0` hunk.
fn lenient_hunk_header(line: &str, line_no: usize) -> Hunk {
    let mut parts = line.split_whitespace().skip(1);
    let old = parts.next().unwrap_or_default();
    let new = parts.next().unwrap_or_default();
    let count = |spec: &str| -> Option<u64> {
        match spec.split_once(',') {
            Some((_, n)) => n.parse().ok(),
            None => Some(1),
        }
    };
    let start = |spec: &str, sign: char| -> u64 {
        let spec = spec.trim_start_matches(sign);
        spec.split(',')
            .next()
            .unwrap_or_default()
            .parse()
            .unwrap_or(0)
    };
    let (old_count, new_count) = match (
        count(old.trim_start_matches('-')),
        count(new.trim_start_matches('+')),
    ) {
        (Some(o), Some(n)) if !old.is_empty() && !new.is_empty() => (o, n),
        _ => (0, 0),
    };
    Hunk {
        old_range: old.to_string(),
        new_range: new.to_string(),
        old_start: start(old, '-'),
        old_count,
        new_start: start(new, '+'),
        new_count,
        line_no,
        lines: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Dialect::SweRl

/// A path from a `---`/`+++` line: the text after the marker, cut at a tab (timestamps), with git's `a/`/`b/`
/// prefix removed; `None` for `/dev/null`.
fn swe_rl_header_path(rest: &str) -> Option<String> {
    let path = rest
        .split('\t')
        .next()
        .unwrap_or_default()
        .trim_end_matches('\r');
    if path == "/dev/null" {
        return None;
    }
    let path = path
        .strip_prefix("a/")
        .or_else(|| path.strip_prefix("b/"))
        .unwrap_or(path);
    Some(path.to_string())
}

fn parse_swe_rl(lines: &Lines) -> Result<Vec<FileDiff>, DiffError> {
    let mut files: Vec<FileDiff> = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines.text(index);
        let line_number = index + 1;
        if line.starts_with("@@") {
            let Some(mut hunk) = strict_hunk_header(line, line_number) else {
                return Err(DiffError::BadHunkHeader {
                    line_number,
                    line: line.to_string(),
                });
            };
            let Some(file) = files.last_mut().filter(|f| f.path().is_some()) else {
                return Err(DiffError::HunkWithoutFile { line_number });
            };
            index = read_swe_rl_body(lines, index + 1, &mut hunk)?;
            file.hunks.push(hunk);
            continue;
        }
        if let Some(rest) = line.strip_prefix("diff --git ") {
            let mut file = lines.file_at(index);
            if let Some(position) = rest.rfind(" b/") {
                let old = &rest[..position];
                file.old_path = Some(
                    old.strip_prefix("a/")
                        .unwrap_or(old)
                        .trim_end_matches('\r')
                        .to_string(),
                );
                file.new_path = Some(rest[position + 3..].trim_end_matches('\r').to_string());
            }
            files.push(file);
        } else if let (Some(old), Some(new)) = (
            line.strip_prefix("--- "),
            (index + 1 < lines.len())
                .then(|| lines.text(index + 1))
                .and_then(|next| next.strip_prefix("+++ ")),
        ) {
            // The pair names the file a `diff --git` line just opened, or opens one of its own.
            if !files.last().is_some_and(|f| f.hunks.is_empty()) {
                files.push(lines.file_at(index));
            }
            if let Some(file) = files.last_mut() {
                file.old_path = swe_rl_header_path(old);
                file.new_path = swe_rl_header_path(new);
                file.new_file = file.old_path.is_none();
                file.deleted_file = file.new_path.is_none();
            }
            index += 1;
        }
        index += 1;
    }
    Ok(files)
}

/// Reads a hunk body by its counts; returns the index of the first line after it.
fn read_swe_rl_body(lines: &Lines, start: usize, hunk: &mut Hunk) -> Result<usize, DiffError> {
    let (mut old_left, mut new_left) = (hunk.old_count, hunk.new_count);
    let mut index = start;
    while old_left > 0 || new_left > 0 {
        if index >= lines.len() {
            return Err(DiffError::BadHunkBody {
                line_number: lines.len(),
            });
        }
        let kind = match lines.text(index).chars().next() {
            None if old_left > 0 && new_left > 0 => LineKind::BareContext,
            Some(' ') if old_left > 0 && new_left > 0 => LineKind::Context,
            Some('-') if old_left > 0 => LineKind::Removed,
            Some('+') if new_left > 0 => LineKind::Added,
            Some('\\') => LineKind::NoNewline,
            _ => {
                return Err(DiffError::BadHunkBody {
                    line_number: index + 1,
                })
            }
        };
        match kind {
            LineKind::Context | LineKind::BareContext => {
                old_left -= 1;
                new_left -= 1;
            }
            LineKind::Removed => old_left -= 1,
            LineKind::Added => new_left -= 1,
            LineKind::NoNewline => {}
        }
        hunk.lines.push(lines.hunk_line(index, kind));
        index += 1;
    }
    Ok(index)
}

// ---------------------------------------------------------------------------------------------------------------
// Dialect::GitApply

fn parse_git_apply(lines: &Lines) -> Vec<FileDiff> {
    let mut files: Vec<FileDiff> = Vec::new();
    // Lines still expected by the open hunk (old, new).
    let mut remaining = (0u64, 0u64);
    for index in 0..lines.len() {
        let line = lines.raw(index);
        if let Some(rest) = line.strip_prefix("diff --git ") {
            remaining = (0, 0);
            let mut file = lines.file_at(index);
            // `a/PATH b/PATH`; paths with spaces are ambiguous in this header, so split at the first " b/".
            if let Some((a, b)) = rest.trim_end_matches(['\n', '\r']).split_once(" b/") {
                file.old_path = Some(a.trim_start_matches("a/").to_owned());
                file.new_path = Some(b.to_owned());
            }
            files.push(file);
            continue;
        }
        let Some(file) = files.last_mut() else {
            continue;
        };
        if remaining != (0, 0) {
            if let Some(hunk) = file.hunks.last_mut() {
                let kind = match line.as_bytes().first() {
                    Some(b' ') => LineKind::Context,
                    Some(b'-') => LineKind::Removed,
                    Some(b'+') => LineKind::Added,
                    Some(b'\\') => LineKind::NoNewline,
                    _ => LineKind::BareContext,
                };
                match kind {
                    LineKind::Context | LineKind::BareContext => {
                        remaining = (remaining.0.saturating_sub(1), remaining.1.saturating_sub(1));
                    }
                    LineKind::Removed => remaining.0 = remaining.0.saturating_sub(1),
                    LineKind::Added => remaining.1 = remaining.1.saturating_sub(1),
                    LineKind::NoNewline => file.no_newline = true,
                }
                hunk.lines.push(lines.hunk_line(index, kind));
                continue;
            }
        }
        if line.starts_with("\\ No newline") {
            file.no_newline = true;
        } else if line.starts_with("@@ ") {
            let hunk = lenient_hunk_header(line, index + 1);
            remaining = (hunk.old_count, hunk.new_count);
            file.hunks.push(hunk);
        } else if line.starts_with("--- /dev/null") {
            file.old_path = None;
            file.new_file = true;
        } else if line.starts_with("+++ /dev/null") {
            file.new_path = None;
            file.deleted_file = true;
        } else if line.starts_with("GIT binary patch") || line.starts_with("Binary files") {
            file.binary = true;
        } else if line.starts_with("old mode") || line.starts_with("new mode") {
            file.mode_changed = true;
        } else if line.starts_with("rename from") {
            file.renamed = true;
        } else if line.starts_with("copy from") {
            file.copied = true;
        } else if line.starts_with("new file mode") {
            file.old_path = None;
            file.new_file = true;
        } else if line.starts_with("deleted file mode") {
            file.new_path = None;
            file.deleted_file = true;
        }
    }
    files
}

// ---------------------------------------------------------------------------------------------------------------
// Dialect::Unidiff: a port of the file-level state machine of `unidiff.PatchSet` (1.0.1).

const DEV_NULL: &str = "/dev/null";

static GIT_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"^diff --git ("?a/[^\t\n]+"?) ("?b/[^\t\n]+"?)"#).expect("static regex")
});
static GIT_HEADER_URI: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^diff --git (.*://[^\t\n]+) (.*://[^\t\n]+)").expect("static regex")
});
static GIT_HEADER_NO_PREFIX: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^diff --git ([^\t\n]+) ([^\t\n]+)").expect("static regex"));
static NEW_FILE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^new file mode \d+$").expect("static regex"));
static DELETED_FILE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^deleted file mode \d+$").expect("static regex"));
static MODE_OR_INDEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(old mode \d+|new mode \d+|index [0-9a-f]+\.\.[0-9a-f]+ \d+)$")
        .expect("static regex")
});
static SOURCE_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^--- ("?[^\t\n]*"?)"#).expect("static regex"));
static TARGET_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"^\+\+\+ ("?[^\t\n]*"?)"#).expect("static regex"));
static HUNK_HEADER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@").expect("static regex")
});
static BINARY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^Binary files? ([^\t]+?)(?:\t[\s0-9:+-]+)?(?: and ([^\t]+?)(?:\t[\s0-9:+-]+)?)? (?:differ|has changed)",
    )
    .expect("static regex")
});

/// A unidiff name without git's prefix: `None` for `/dev/null`.
fn unidiff_path(name: &str, prefix: &str) -> Option<String> {
    (name != DEV_NULL).then(|| name.strip_prefix(prefix).unwrap_or(name).to_string())
}

fn unidiff_file(lines: &Lines, index: usize, source: String, target: String) -> FileDiff {
    FileDiff {
        source: Some(source),
        target: Some(target),
        ..lines.file_at(index)
    }
}

/// Hunk bodies are consumed by their line counts so that diff-looking lines inside them are never taken for headers.
fn parse_unidiff(lines: &Lines) -> Result<Vec<FileDiff>, DiffError> {
    let mut files = parse_unidiff_files(lines)?;
    for file in &mut files {
        file.old_path = file.source.as_deref().and_then(|s| unidiff_path(s, "a/"));
        file.new_path = file.target.as_deref().and_then(|t| unidiff_path(t, "b/"));
        file.new_file |= file.source.as_deref() == Some(DEV_NULL);
        file.deleted_file |= file.target.as_deref() == Some(DEV_NULL);
    }
    Ok(files)
}

fn parse_unidiff_files(lines: &Lines) -> Result<Vec<FileDiff>, DiffError> {
    let mut files: Vec<FileDiff> = Vec::new();
    let mut current: Option<usize> = None;
    // The reference's `patch_info is not None`: inside a header block, before any hunk.
    let mut in_info = false;
    let mut pending_source: Option<String> = None;
    let err = |idx: usize, reason: &str| DiffError::Unexpected {
        line_no: idx + 1,
        reason: reason.to_string(),
    };

    let mut idx = 0;
    while idx < lines.len() {
        let raw = lines.raw(idx);
        let line = lines.text(idx);
        let header = GIT_HEADER
            .captures(line)
            .or_else(|| GIT_HEADER_URI.captures(line))
            .or_else(|| GIT_HEADER_NO_PREFIX.captures(line));
        if let Some(caps) = header {
            in_info = true;
            files.push(unidiff_file(
                lines,
                idx,
                caps[1].to_string(),
                caps[2].to_string(),
            ));
            current = Some(files.len() - 1);
            idx += 1;
            continue;
        }
        let created = NEW_FILE.is_match(line);
        if created || DELETED_FILE.is_match(line) {
            let (Some(c), true) = (current, in_info) else {
                let what = if created { "new file" } else { "deleted file" };
                return Err(err(idx, &format!("unexpected {what} mode line")));
            };
            let file = &mut files[c];
            if created {
                file.source = Some(DEV_NULL.to_string());
                file.new_file = true;
            } else {
                file.target = Some(DEV_NULL.to_string());
                file.deleted_file = true;
            }
            idx += 1;
            continue;
        }
        if let (Some(c), true, true) = (current, in_info, MODE_OR_INDEX.is_match(line)) {
            files[c].mode_changed |= !line.starts_with("index ");
            idx += 1;
            continue;
        }
        if let Some(caps) = SOURCE_NAME.captures(line) {
            pending_source = Some(caps[1].to_string());
            if current.is_some() && !in_info {
                current = None;
            }
            idx += 1;
            continue;
        }
        if let Some(caps) = TARGET_NAME.captures(line) {
            let target = caps[1].to_string();
            match current {
                Some(c) if files[c].target.as_deref() != Some(target.as_str()) => {
                    return Err(err(idx, "target without source"))
                }
                Some(_) => {}
                None => {
                    let Some(source) = pending_source.take() else {
                        return Err(err(idx, "target without source"));
                    };
                    files.push(unidiff_file(lines, idx, source, target));
                    current = Some(files.len() - 1);
                    in_info = false;
                }
            }
            idx += 1;
            continue;
        }
        if let Some(caps) = HUNK_HEADER.captures(line) {
            in_info = false;
            let Some(c) = current else {
                return Err(err(idx, "unexpected hunk"));
            };
            let number = |i: usize, default: u64| {
                caps.get(i)
                    .map_or(Ok(default), |m| m.as_str().parse::<u64>())
            };
            let (Ok(old_count), Ok(new_count)) = (number(2, 1), number(4, 1)) else {
                return Err(err(idx, "hunk header length out of range"));
            };
            let mut hunk = Hunk {
                old_range: line[3..].split(' ').next().unwrap_or_default().to_string(),
                new_range: line[3..].split(' ').nth(1).unwrap_or_default().to_string(),
                old_start: number(1, 0).unwrap_or(0),
                old_count,
                new_start: number(3, 0).unwrap_or(0),
                new_count,
                line_no: idx + 1,
                lines: Vec::new(),
            };
            idx = read_unidiff_body(lines, idx + 1, &mut hunk)
                .map_err(|(at, reason)| err(at, reason))?;
            files[c].no_newline |= hunk.lines.iter().any(|l| l.kind == LineKind::NoNewline);
            files[c].hunks.push(hunk);
            continue;
        }
        if line.starts_with("\\ No newline at end of file") {
            let Some(c) = current else {
                return Err(err(idx, "unexpected no-newline marker"));
            };
            files[c].no_newline = true;
            idx += 1;
            continue;
        }
        if raw == "\n" && current.is_some_and(|c| !files[c].hunks.is_empty()) {
            idx += 1;
            continue;
        }
        if !in_info {
            current = None;
            in_info = true;
        }
        if let Some(caps) = BINARY.captures(line) {
            match current {
                None => {
                    let source = caps[1].to_string();
                    let target = caps
                        .get(2)
                        .map_or_else(|| source.clone(), |m| m.as_str().to_string());
                    let mut file = unidiff_file(lines, idx, source, target);
                    file.binary = true;
                    files.push(file);
                }
                Some(c) => files[c].binary = true,
            }
            in_info = false;
            current = None;
            idx += 1;
            continue;
        }
        if raw == "GIT binary patch\n" {
            let Some(c) = current else {
                return Err(err(idx, "unexpected binary patch marker"));
            };
            files[c].binary = true;
            in_info = false;
            current = None;
        } else if let Some(c) = current.filter(|_| in_info) {
            files[c].renamed |= line.starts_with("rename from ");
            files[c].copied |= line.starts_with("copy from ");
        }
        idx += 1;
    }
    Ok(files)
}

/// Consumes one hunk body starting at `start`; returns the index of the first line after it.
fn read_unidiff_body(
    lines: &Lines,
    start: usize,
    hunk: &mut Hunk,
) -> Result<usize, (usize, &'static str)> {
    let (source_len, target_len) = (hunk.old_count, hunk.new_count);
    let (mut n_source, mut n_target) = (0u64, 0u64);
    let mut idx = start;
    if source_len == 0 && target_len == 0 {
        // The reference still reads one line before checking the counts.
        if idx < lines.len() {
            return match unidiff_line_kind(lines.raw(idx)) {
                None => Err((idx, "hunk diff line expected")),
                Some(LineKind::NoNewline) => {
                    hunk.lines.push(lines.hunk_line(idx, LineKind::NoNewline));
                    Ok(idx + 1)
                }
                Some(_) => Err((idx, "hunk is longer than expected")),
            };
        }
        return Ok(idx);
    }
    while idx < lines.len() {
        let Some(kind) = unidiff_line_kind(lines.raw(idx)) else {
            return Err((idx, "hunk diff line expected"));
        };
        match kind {
            LineKind::Added => n_target += 1,
            LineKind::Removed => n_source += 1,
            LineKind::Context | LineKind::BareContext => {
                n_source += 1;
                n_target += 1;
            }
            LineKind::NoNewline => {}
        }
        if n_source > source_len || n_target > target_len {
            return Err((idx, "hunk is longer than expected"));
        }
        hunk.lines.push(lines.hunk_line(idx, kind));
        idx += 1;
        if n_source == source_len && n_target == target_len {
            return Ok(idx);
        }
    }
    Err((idx.saturating_sub(1), "hunk is shorter than expected"))
}

/// The line type of a hunk body line for unidiff: `+`, `-`, ` `, `\`, and a line starting with `\r` or `\n`
/// (an empty context line).
fn unidiff_line_kind(raw: &str) -> Option<LineKind> {
    match raw.chars().next() {
        Some('+') => Some(LineKind::Added),
        Some('-') => Some(LineKind::Removed),
        Some(' ') => Some(LineKind::Context),
        Some('\\') => Some(LineKind::NoNewline),
        Some('\r' | '\n') => Some(LineKind::BareContext),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Dialect; 3] = [Dialect::Unidiff, Dialect::SweRl, Dialect::GitApply];

    fn files(patch: &str, dialect: Dialect) -> Vec<FileDiff> {
        parse(patch, dialect).unwrap_or_else(|e| panic!("{dialect:?}: {e}\n{patch}"))
    }

    #[test]
    fn a_modified_file_has_paths_hunks_line_numbers_and_its_span() {
        let patch = "diff --git a/x.py b/x.py\nindex 1..2 100644\n--- a/x.py\n+++ b/x.py\n\
@@ -1,3 +1,3 @@ def f():\n a\n-b\n+B\n c\n@@ -10 +10,2 @@\n x\n+y\n";
        for dialect in ALL {
            let files = files(patch, dialect);
            assert_eq!(files.len(), 1, "{dialect:?}");
            let file = &files[0];
            assert_eq!(file.old_path.as_deref(), Some("x.py"), "{dialect:?}");
            assert_eq!(file.new_path.as_deref(), Some("x.py"), "{dialect:?}");
            assert_eq!(file.span, 0..patch.len(), "{dialect:?}");
            assert_eq!(file.hunks.len(), 2, "{dialect:?}");
            let first = &file.hunks[0];
            assert_eq!((first.old_start, first.old_count), (1, 3), "{dialect:?}");
            assert_eq!((first.new_start, first.new_count), (1, 3), "{dialect:?}");
            assert_eq!(
                (first.old_range.as_str(), first.new_range.as_str()),
                ("-1,3", "+1,3")
            );
            assert_eq!(first.line_no, 5);
            assert_eq!(first.old_text(), "a\nb\nc\n");
            assert_eq!(first.new_text(), "a\nB\nc\n");
            let kinds: Vec<LineKind> = first.lines.iter().map(|l| l.kind).collect();
            use LineKind::*;
            assert_eq!(kinds, [Context, Removed, Added, Context]);
            assert_eq!(first.lines[1].line_no, 7);
            assert_eq!(first.lines[1].text(), "-b");
            // `@@ -10 +10,2 @@`: an omitted count is 1.
            let second = &file.hunks[1];
            assert_eq!((second.old_count, second.new_count), (1, 2), "{dialect:?}");
            assert_eq!(second.new_text(), "x\ny\n");
        }
        assert_eq!(
            files(patch, Dialect::Unidiff)[0].source.as_deref(),
            Some("a/x.py")
        );
        assert_eq!(
            files(patch, Dialect::Unidiff)[0].target.as_deref(),
            Some("b/x.py")
        );
    }

    #[test]
    fn created_deleted_renamed_and_binary_files() {
        let patch = "diff --git a/new.py b/new.py\nnew file mode 100644\nindex 0000000..e69de29\n\
--- /dev/null\n+++ b/new.py\n@@ -0,0 +1,2 @@\n+one\n+two\n\
diff --git a/gone.py b/gone.py\ndeleted file mode 100644\nindex 1111111..0000000\n\
--- a/gone.py\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n\
diff --git a/old name.py b/new name.py\nsimilarity index 100%\nrename from old name.py\nrename to new name.py\n\
diff --git a/img.png b/img.png\nindex 1111111..2222222 100644\nBinary files a/img.png and b/img.png differ\n\
diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n";
        for dialect in [Dialect::Unidiff, Dialect::GitApply] {
            let files = files(patch, dialect);
            assert_eq!(files.len(), 5, "{dialect:?}");
            let (new, gone, renamed, binary, mode) =
                (&files[0], &files[1], &files[2], &files[3], &files[4]);
            assert!(new.new_file && new.old_path.is_none(), "{dialect:?}");
            assert_eq!(new.new_path.as_deref(), Some("new.py"));
            assert_eq!(new.hunks[0].new_text(), "one\ntwo\n");
            assert!(gone.deleted_file && gone.new_path.is_none(), "{dialect:?}");
            assert_eq!(gone.old_path.as_deref(), Some("gone.py"));
            assert!(renamed.renamed && renamed.hunks.is_empty(), "{dialect:?}");
            assert_eq!(renamed.old_path.as_deref(), Some("old name.py"));
            assert_eq!(renamed.new_path.as_deref(), Some("new name.py"));
            assert!(binary.binary && binary.hunks.is_empty(), "{dialect:?}");
            assert!(mode.mode_changed && !mode.binary, "{dialect:?}");
            // Sections cover the patch, one after the other, each starting at its own header.
            let rebuilt: String = files.iter().map(|f| &patch[f.span.clone()]).collect();
            assert_eq!(rebuilt, patch, "{dialect:?}");
            for (file, header) in files.iter().zip([
                "diff --git a/new.py ",
                "diff --git a/gone.py ",
                "diff --git a/old name.py ",
                "diff --git a/img.png ",
                "diff --git a/run.sh ",
            ]) {
                assert!(
                    patch[file.span.clone()].starts_with(header),
                    "{dialect:?}: section {:?} does not start with {header:?}",
                    &patch[file.span.clone()]
                );
            }
        }
        let unidiff = files(patch, Dialect::Unidiff);
        assert_eq!(unidiff[0].source.as_deref(), Some("/dev/null"));
        assert_eq!(unidiff[1].target.as_deref(), Some("/dev/null"));
        // SWE-RL files a diff under its new path, a deletion under its old one; hunk-less files have no hunks.
        let swe_rl = files(patch, Dialect::SweRl);
        let paths: Vec<Option<&str>> = swe_rl.iter().map(FileDiff::path).collect();
        assert_eq!(
            paths,
            [
                Some("new.py"),
                Some("gone.py"),
                Some("new name.py"),
                Some("img.png"),
                Some("run.sh")
            ]
        );
        assert!(swe_rl[2..].iter().all(|f| f.hunks.is_empty()));
    }

    #[test]
    fn a_no_newline_marker_is_a_line_of_the_hunk_and_a_flag() {
        let patch = "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n";
        for dialect in ALL {
            let files = files(patch, dialect);
            let hunk = &files[0].hunks[0];
            assert_eq!(hunk.old_text(), "a\n", "{dialect:?}");
            assert_eq!(hunk.new_text(), "b\n", "{dialect:?}");
            assert_eq!(hunk.lines[1].kind, LineKind::NoNewline, "{dialect:?}");
            if dialect != Dialect::SweRl {
                assert!(files[0].no_newline, "{dialect:?}");
            }
        }
    }

    #[test]
    fn a_diff_git_line_inside_a_hunk_is_content_not_a_header() {
        let patch = "diff --git a/t.py b/t.py\n--- a/t.py\n+++ b/t.py\n@@ -1,2 +1,4 @@\n x\n+diff --git a/fake.py b/fake.py\n+--- a/fake.py\n y\n";
        for dialect in ALL {
            let files = files(patch, dialect);
            assert_eq!(files.len(), 1, "{dialect:?}");
            assert_eq!(
                files[0].hunks[0].new_text(),
                "x\ndiff --git a/fake.py b/fake.py\n--- a/fake.py\ny\n"
            );
        }
        // The reference's test-directive regex is unanchored and does see it.
        assert_eq!(git_header_targets_anywhere(patch), ["t.py", "fake.py"]);
    }

    #[test]
    fn crlf_lines_keep_their_carriage_return() {
        let patch =
            "diff --git a/x b/x\r\n--- a/x\r\n+++ b/x\r\n@@ -1,2 +1,2 @@\r\n a\r\n-b\r\n+c\r\n";
        for dialect in ALL {
            let files = files(patch, dialect);
            let hunk = &files[0].hunks[0];
            assert_eq!(hunk.old_text(), "a\r\nb\r\n", "{dialect:?}");
            assert_eq!(hunk.lines[2].text(), "+c\r", "{dialect:?}");
        }
        assert_eq!(files(patch, Dialect::SweRl)[0].path(), Some("x"));
        assert_eq!(
            files(patch, Dialect::GitApply)[0].new_path.as_deref(),
            Some("x")
        );
        // Unidiff keeps the `\r` of the `diff --git` line in the target, as the Python package does.
        assert_eq!(
            files(patch, Dialect::Unidiff)[0].source.as_deref(),
            Some("a/x")
        );
        assert_eq!(
            files(patch, Dialect::Unidiff)[0].target.as_deref(),
            Some("b/x\r")
        );
        // A bare `\r` line is an empty context line for unidiff and a broken hunk for SWE-RL.
        let bare = "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n\r\n-b\n+c\n";
        assert_eq!(
            files(bare, Dialect::Unidiff)[0].hunks[0].lines[0].kind,
            LineKind::BareContext
        );
        assert_eq!(
            parse(bare, Dialect::SweRl),
            Err(DiffError::BadHunkBody { line_number: 4 })
        );
    }

    #[test]
    fn paths_with_spaces_and_the_ambiguous_b_slash() {
        let patch = "diff --git a/my dir/a b/c.py b/my dir/a b/c.py\n--- a/my dir/a b/c.py\n+++ b/my dir/a b/c.py\n@@ -1 +1 @@\n-x\n+y\n";
        // unidiff's header regex is greedy: it takes `b/c.py` for the target, which the `+++` line contradicts
        // (the Python package fails the same way).
        assert_eq!(
            parse(patch, Dialect::Unidiff),
            Err(DiffError::Unexpected {
                line_no: 3,
                reason: "target without source".into()
            })
        );
        // SWE-RL's `---`/`+++` names are exact.
        assert_eq!(
            files(patch, Dialect::SweRl)[0].path(),
            Some("my dir/a b/c.py")
        );
        // From the `diff --git` line alone, SWE-RL splits at the last ` b/`, the gold agent at the first.
        let header_only = "diff --git a/my dir/a b/c.py b/my dir/a b/c.py\n@@ -1 +1 @@\n-x\n+y\n";
        assert_eq!(files(header_only, Dialect::SweRl)[0].path(), Some("c.py"));
        assert_eq!(
            files(header_only, Dialect::GitApply)[0].old_path.as_deref(),
            Some("my dir/a")
        );
        let spaced = "diff --git a/t/my file.py b/t/my file.py\n--- a/t/my file.py\n+++ b/t/my file.py\n@@ -1 +1 @@\n-x\n+y\n";
        for dialect in ALL {
            assert_eq!(
                files(spaced, dialect)[0].new_path.as_deref(),
                Some("t/my file.py"),
                "{dialect:?}"
            );
        }
    }

    #[test]
    fn hunk_headers_with_omitted_counts_and_sections() {
        let patch = "--- a/x\n+++ b/x\n@@ -1 +1 @@ fn main() {\n-a\n+b\n@@ -5,0 +6 @@\n+c\n";
        for dialect in [Dialect::Unidiff, Dialect::SweRl] {
            let hunks = &files(patch, dialect)[0].hunks;
            assert_eq!(
                (hunks[0].old_count, hunks[0].new_count),
                (1, 1),
                "{dialect:?}"
            );
            assert_eq!(
                (hunks[1].old_start, hunks[1].old_count),
                (5, 0),
                "{dialect:?}"
            );
            assert_eq!(
                (hunks[1].new_start, hunks[1].new_count),
                (6, 1),
                "{dialect:?}"
            );
        }
        // The gold reading starts at the first `diff --git`, so a plain diff has no files for it.
        assert!(files(patch, Dialect::GitApply).is_empty());
    }

    #[test]
    fn malformed_patches_fail_as_each_reference_fails() {
        let short = "--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n";
        assert_eq!(
            parse(short, Dialect::Unidiff),
            Err(DiffError::Unexpected {
                line_no: 4,
                reason: "hunk is shorter than expected".into()
            })
        );
        assert_eq!(
            parse(short, Dialect::SweRl),
            Err(DiffError::BadHunkBody { line_number: 4 })
        );
        let bad_header = "--- a/x\n+++ b/x\n@@ -x +1 @@\n";
        assert!(matches!(
            parse(bad_header, Dialect::SweRl),
            Err(DiffError::BadHunkHeader { line_number: 3, .. })
        ));
        // For unidiff an unreadable `@@` line is not a hunk header at all.
        assert_eq!(files(bad_header, Dialect::Unidiff)[0].hunks.len(), 0);
        assert_eq!(
            parse("@@ -1 +1 @@\n-a\n+b\n", Dialect::SweRl),
            Err(DiffError::HunkWithoutFile { line_number: 1 })
        );
        // The gold reading never fails: a short hunk is taken as far as it goes.
        let gold = "diff --git a/x b/x\n@@ -1,3 +1,3 @@\n a\n";
        assert_eq!(files(gold, Dialect::GitApply)[0].hunks[0].old_text(), "a\n");
    }
}
