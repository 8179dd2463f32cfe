//! Test support, public so that other crates can run the same checks against their own sandboxes (the orchestrator
//! runs [`check_edit_roundtrip`] against a real container). Enabled by the `testing` feature.
//!
//! The edit property: for generated files (tabs, CRLF and mixed line endings, non-ASCII, missing final newline,
//! various modes) and SEARCH/REPLACE blocks (often taken from the file, sometimes duplicated or absent), the edit
//! tool must do exactly what a plain reference implementation does — same error kind, same bytes, same mode.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::time::Duration;

use crate::call::ToolCall;
use crate::tool::{run_tool, ToolConfig, ToolErrorKind};
use swe_env_sandbox::Sandbox;

/// Timeout for the helper shell commands (`chmod`, `stat`) a check runs.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// One generated edit scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditCase {
    /// The file's lines without terminators (never containing `\n` or `\r`).
    pub lines: Vec<String>,
    /// Per line: terminate with `\r\n` instead of `\n`.
    pub crlf: Vec<bool>,
    /// Whether the last line is terminated at all.
    pub final_newline: bool,
    /// The file's permission bits, e.g. `0o755`.
    pub mode: u32,
    /// The SEARCH lines (at least one).
    pub search: Vec<String>,
    /// The REPLACE lines (possibly none).
    pub replace: Vec<String>,
}

impl EditCase {
    /// The file's bytes.
    pub fn file_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (index, line) in self.lines.iter().enumerate() {
            out.push_str(line);
            let last = index + 1 == self.lines.len();
            if !last || self.final_newline {
                out.push_str(if self.crlf[index] { "\r\n" } else { "\n" });
            }
        }
        out.into_bytes()
    }
}

/// Lines likely to repeat (to exercise several-occurrence errors) mixed with arbitrary ones.
fn line_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "\tx = 1",
            "    return x",
            "ünïcödé ☃",
            "x = 1 ",
            "}"
        ])
        .prop_map(String::from),
        "[a-zé☃ \t{}=]{0,12}",
    ]
}

/// Generates [`EditCase`]s.
pub fn edit_case_strategy() -> impl Strategy<Value = EditCase> {
    (
        prop::collection::vec((line_strategy(), any::<bool>()), 1..12),
        0..3_u8,
        any::<bool>(),
    )
        .prop_flat_map(|(lines_eols, eol_style, final_newline)| {
            let n_lines = lines_eols.len();
            let lines: Vec<String> = lines_eols.iter().map(|(line, _)| line.clone()).collect();
            let crlf: Vec<bool> = lines_eols
                .iter()
                .map(|(_, random)| match eol_style {
                    0 => false,
                    1 => true,
                    _ => *random,
                })
                .collect();
            let from_file = (0..n_lines)
                .prop_flat_map(move |start| (Just(start), 1..=(n_lines - start).min(4)))
                .prop_map({
                    let lines = lines.clone();
                    move |(start, len)| lines[start..start + len].to_vec()
                });
            let search =
                prop_oneof![4 => from_file, 1 => prop::collection::vec(line_strategy(), 1..3)];
            (
                Just(lines),
                Just(crlf),
                Just(final_newline),
                prop::sample::select(vec![0o644_u32, 0o755, 0o600, 0o664]),
                search,
                prop::collection::vec(line_strategy(), 0..4),
            )
        })
        .prop_map(
            |(lines, crlf, final_newline, mode, search, replace)| EditCase {
                lines,
                crlf,
                final_newline,
                mode,
                search,
                replace,
            },
        )
}

/// What the reference implementation says an edit does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceOutcome {
    /// The file becomes these bytes.
    Edited(Vec<u8>),
    /// The SEARCH lines are absent.
    NotFound,
    /// The SEARCH lines start at these 1-based lines.
    Several(Vec<usize>),
}

/// A deliberately plain reference of the edit semantics, written independently of `edit.rs`.
pub fn reference_edit(file: &[u8], search: &[String], replace: &[String]) -> ReferenceOutcome {
    let text = String::from_utf8_lossy(file).into_owned();
    // Cut into (line text, terminator) by walking characters.
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut index = 0;
    while index < chars.len() {
        if chars[index] == '\n' {
            lines.push((std::mem::take(&mut current), "\n".to_owned()));
        } else if chars[index] == '\r' && chars.get(index + 1) == Some(&'\n') {
            lines.push((std::mem::take(&mut current), "\r\n".to_owned()));
            index += 1;
        } else {
            current.push(chars[index]);
        }
        index += 1;
    }
    if !current.is_empty() {
        lines.push((current, String::new()));
    }
    let mut starts = Vec::new();
    for start in 0..lines.len() {
        if start + search.len() <= lines.len()
            && (0..search.len()).all(|k| lines[start + k].0 == search[k])
        {
            starts.push(start);
        }
    }
    if starts.is_empty() {
        return ReferenceOutcome::NotFound;
    }
    if starts.len() > 1 {
        return ReferenceOutcome::Several(starts.iter().map(|start| start + 1).collect());
    }
    let start = starts[0];
    let n_crlf = lines.iter().filter(|(_, eol)| eol == "\r\n").count();
    let n_lf = lines.iter().filter(|(_, eol)| eol == "\n").count();
    let eol = if n_crlf > n_lf { "\r\n" } else { "\n" };
    let mut out = String::new();
    for (line, line_eol) in &lines[..start] {
        out += line;
        out += line_eol;
    }
    for line in replace {
        out += line;
        out += eol;
    }
    for (line, line_eol) in &lines[start + search.len()..] {
        out += line;
        out += line_eol;
    }
    let had_final_newline = text.ends_with('\n');
    if !had_final_newline && out.ends_with('\n') {
        out.pop();
        if out.ends_with('\r') {
            out.pop();
        }
    }
    ReferenceOutcome::Edited(out.into_bytes())
}

fn line_block(lines: &[String]) -> String {
    lines.iter().map(|line| format!("{line}\n")).collect()
}

/// Writes the case's file into `dir` (an absolute directory in the sandbox), runs the edit tool on it, and checks
/// error kind, resulting bytes and mode against [`reference_edit`]. `Err` describes the first mismatch (or a
/// sandbox failure).
pub async fn check_edit_roundtrip(
    sandbox: &dyn Sandbox,
    dir: &str,
    case: EditCase,
) -> Result<(), String> {
    let path = format!("{dir}/edit-case.txt");
    let original = case.file_bytes();
    let sandbox_failed = |error: swe_env_sandbox::SandboxError| format!("sandbox failed: {error}");
    sandbox
        .write_file(&path, &original)
        .await
        .map_err(sandbox_failed)?;
    let chmod = format!("chmod {:o} '{path}'", case.mode);
    let chmod_out = sandbox
        .run(&chmod, HELPER_TIMEOUT)
        .await
        .map_err(sandbox_failed)?;
    if chmod_out.exit_code != Some(0) {
        return Err(format!(
            "chmod failed: {}",
            String::from_utf8_lossy(&chmod_out.output)
        ));
    }
    let call = ToolCall::Edit {
        path: path.clone(),
        search: line_block(&case.search),
        replace: line_block(&case.replace),
    };
    let result = run_tool(sandbox, &call, &ToolConfig::default())
        .await
        .map_err(sandbox_failed)?;
    let after = sandbox.read_file(&path).await.map_err(sandbox_failed)?;
    let expected = reference_edit(&original, &case.search, &case.replace);
    match (&expected, result.error) {
        (ReferenceOutcome::Edited(bytes), None) => {
            if &after != bytes {
                return Err(format!(
                    "edited bytes differ: got {:?}, want {:?}",
                    String::from_utf8_lossy(&after),
                    String::from_utf8_lossy(bytes)
                ));
            }
            let n_lines = String::from_utf8_lossy(bytes).split_inclusive('\n').count();
            let plural = if n_lines == 1 { "" } else { "s" };
            if !result
                .text
                .contains(&format!("The file now has {n_lines} line{plural}."))
            {
                return Err(format!(
                    "success message lacks the line count {n_lines}: {}",
                    result.text
                ));
            }
        }
        (ReferenceOutcome::NotFound, Some(ToolErrorKind::SearchNotFound)) => {}
        (ReferenceOutcome::Several(line_numbers), Some(ToolErrorKind::SeveralOccurrences)) => {
            let listed: Vec<String> = line_numbers.iter().map(ToString::to_string).collect();
            if !result
                .text
                .contains(&format!("starting at lines {}", listed.join(", ")))
            {
                return Err(format!(
                    "several-occurrence message lacks lines {listed:?}: {}",
                    result.text
                ));
            }
        }
        (expected, actual) => {
            return Err(format!(
                "reference says {expected:?}, tool says {actual:?}: {}",
                result.text
            ));
        }
    }
    if !matches!(expected, ReferenceOutcome::Edited(_)) && after != original {
        return Err("a failed edit changed the file".to_owned());
    }
    let stat = sandbox
        .run(&format!("stat -c %a '{path}'"), HELPER_TIMEOUT)
        .await
        .map_err(sandbox_failed)?;
    let mode = String::from_utf8_lossy(&stat.output).trim().to_owned();
    if mode != format!("{:o}", case.mode) {
        return Err(format!("mode changed: got {mode}, want {:o}", case.mode));
    }
    Ok(())
}

/// Runs [`check_edit_roundtrip`] on `n_cases` cases generated deterministically from `seed` (no shrinking; for
/// async callers that cannot use the proptest runner). Returns the first failing case with its error.
pub async fn run_edit_property(
    sandbox: &dyn Sandbox,
    dir: &str,
    n_cases: u32,
    seed: u64,
) -> Result<(), String> {
    let mut seed_bytes = [0_u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let strategy = edit_case_strategy();
    for case_idx in 0..n_cases {
        let case = strategy
            .new_tree(&mut runner)
            .map_err(|error| format!("cannot generate a case: {error}"))?
            .current();
        check_edit_roundtrip(sandbox, dir, case.clone())
            .await
            .map_err(|error| format!("case {case_idx} failed: {error}\ncase: {case:?}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestCaseError;
    use swe_env_sandbox::host::UnisolatedHostSandbox;

    #[test]
    fn reference_examples() {
        let s = |items: &[&str]| {
            items
                .iter()
                .map(|item| item.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            reference_edit(b"a\r\nb\r\nc", &s(&["c"]), &s(&["d", "e"])),
            ReferenceOutcome::Edited(b"a\r\nb\r\nd\r\ne".to_vec())
        );
        assert_eq!(
            reference_edit(b"a\nb\na\n", &s(&["a"]), &[]),
            ReferenceOutcome::Several(vec![1, 3])
        );
        assert_eq!(
            reference_edit(b"ab\n", &s(&["a"]), &[]),
            ReferenceOutcome::NotFound
        );
    }

    #[test]
    fn edit_matches_reference_on_host() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let sandbox = runtime
            .block_on(UnisolatedHostSandbox::start_in_temp_dir())
            .unwrap();
        let dir = sandbox.root().to_str().unwrap().to_owned();
        let seen = std::cell::RefCell::new([0_usize; 3]);
        let mut runner = TestRunner::new(Config {
            cases: 300,
            ..Config::default()
        });
        runner
            .run(&edit_case_strategy(), |case| {
                let outcome = match reference_edit(&case.file_bytes(), &case.search, &case.replace)
                {
                    ReferenceOutcome::Edited(_) => 0,
                    ReferenceOutcome::NotFound => 1,
                    ReferenceOutcome::Several(_) => 2,
                };
                seen.borrow_mut()[outcome] += 1;
                runtime
                    .block_on(check_edit_roundtrip(&sandbox, &dir, case))
                    .map_err(TestCaseError::fail)
            })
            .unwrap();
        // The generator must exercise every outcome, or the property says little.
        let seen = seen.into_inner();
        assert!(
            seen.iter().all(|&count| count >= 10),
            "outcome counts (edited, not found, several): {seen:?}"
        );
    }

    #[tokio::test]
    async fn seeded_runner() {
        let sandbox = UnisolatedHostSandbox::start_in_temp_dir().await.unwrap();
        let dir = sandbox.root().to_str().unwrap().to_owned();
        run_edit_property(&sandbox, &dir, 30, 7).await.unwrap();
    }
}
