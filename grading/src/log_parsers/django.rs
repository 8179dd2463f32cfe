//! The Django family: `test_name (module.Class) ... ok` lines from Django's test runner, with the
//! reference's workarounds for output that interrupts a result line.

use std::sync::LazyLock;

use regex::Regex;

use super::pystr::{py_lstrip, py_split, py_strip};
use super::{LogParseError, LogParser, StatusMap, TestStatus};

/// Suffixes that mark a pass, in the reference's order.
const PASS_SUFFIXES: [&str; 3] = [" ... ok", " ... OK", " ...  OK"];

/// The reference's one-instance fix (django__django-7188): a migration line glued in front.
const SITES_MIGRATION_PREFIX: &str = "Applying sites.0002_alter_domain_unique...test_no_migrations";

/// `\s` as Python's `re` reads it for `str` patterns (`str.isspace()`), written as a Rust class.
macro_rules! py_s {
    () => {
        r"[\s\x1C-\x1F]"
    };
}

/// Whole-log patterns for a result line split by a long message followed by `ok` on its own
/// line; Python's multiline `^`/`$` and non-dotall `.` are Rust's `(?m)` and default `.`.
static INTERRUPTED_PASS_PATTERNS: LazyLock<Vec<Regex>> = LazyLock::new(|| {
    [
        concat!(
            r"(?m)^(.*?)",
            py_s!(),
            r"\.\.\.",
            py_s!(),
            r"Testing against Django installed in ((?s:.*?)) silenced\)\.\nok$"
        ),
        concat!(
            r"(?m)^(.*?)",
            py_s!(),
            r"\.\.\.",
            py_s!(),
            r"Internal Server Error: /(.*)/\nok$"
        ),
        concat!(
            r"(?m)^(.*?)",
            py_s!(),
            r"\.\.\.",
            py_s!(),
            r"System check identified no issues \(0 silenced\)\nok$"
        ),
    ]
    .into_iter()
    .map(|pattern| Regex::new(pattern).expect("constant regex is valid"))
    .collect()
});

/// `line.split()[1]`, or the reference's `IndexError`.
fn second_token(line: &str) -> Result<String, LogParseError> {
    py_split(line)
        .get(1)
        .map(|token| token.to_string())
        .ok_or_else(|| LogParseError::ReferenceRaises {
            parser: LogParser::Django,
            line: line.to_string(),
        })
}

/// The text before the first occurrence of `separator` (Python's `s.split(sep)[0]`).
fn before_first<'a>(line: &'a str, separator: &str) -> &'a str {
    line.split(separator).next().unwrap_or_default()
}

/// Port of `parse_log_django`. Each stripped line is checked against every rule in turn (a later
/// rule overwrites an earlier one); a line starting with `ok` marks the test of the last line
/// containing ` ... ` as passed, whichever line that was.
pub(crate) fn parse_django(log: &str) -> Result<StatusMap, LogParseError> {
    let mut map = StatusMap::new();
    let mut prev_test: Option<String> = None;
    for raw_line in log.split('\n') {
        let mut line: String = py_strip(raw_line).to_string();

        if line.contains("--version is equivalent to version") {
            map.insert(
                "--version is equivalent to version".to_string(),
                TestStatus::Passed,
            );
        }
        if line.contains(" ... ") {
            prev_test = Some(before_first(&line, " ... ").to_string());
        }
        for suffix in PASS_SUFFIXES {
            if line.ends_with(suffix) {
                if py_strip(&line).starts_with(SITES_MIGRATION_PREFIX) {
                    let after = line
                        .split_once("...")
                        .map_or(line.as_str(), |(_, rest)| rest);
                    line = py_strip(after).to_string();
                }
                let test = match line.rfind(suffix) {
                    Some(position) => &line[..position],
                    None => line.as_str(),
                };
                map.insert(test.to_string(), TestStatus::Passed);
                break;
            }
        }
        if line.contains(" ... skipped") {
            map.insert(
                before_first(&line, " ... skipped").to_string(),
                TestStatus::Skipped,
            );
        }
        if line.ends_with(" ... FAIL") {
            map.insert(
                before_first(&line, " ... FAIL").to_string(),
                TestStatus::Failed,
            );
        }
        if line.starts_with("FAIL:") {
            map.insert(second_token(&line)?, TestStatus::Failed);
        }
        if line.ends_with(" ... ERROR") {
            map.insert(
                before_first(&line, " ... ERROR").to_string(),
                TestStatus::Error,
            );
        }
        if line.starts_with("ERROR:") {
            map.insert(second_token(&line)?, TestStatus::Error);
        }
        if py_lstrip(&line).starts_with("ok") {
            if let Some(test) = &prev_test {
                map.insert(test.clone(), TestStatus::Passed);
            }
        }
    }
    for pattern in INTERRUPTED_PASS_PATTERNS.iter() {
        for captures in pattern.captures_iter(log) {
            let name = captures.get(1).map_or("", |m| m.as_str());
            map.insert(name.to_string(), TestStatus::Passed);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ok_fail_error_skipped_lines() {
        let log = "test_a (m.T) ... ok\ntest_b (m.T) ... FAIL\ntest_c (m.T) ... ERROR\ntest_d (m.T) ... skipped 'no db'\nFAIL: test_e (m.T)\n";
        let map = parse_django(log).unwrap();
        assert_eq!(map.get("test_a (m.T)"), Some(&TestStatus::Passed));
        assert_eq!(map.get("test_b (m.T)"), Some(&TestStatus::Failed));
        assert_eq!(map.get("test_c (m.T)"), Some(&TestStatus::Error));
        assert_eq!(map.get("test_d (m.T)"), Some(&TestStatus::Skipped));
        assert_eq!(map.get("test_e"), Some(&TestStatus::Failed));
    }

    #[test]
    fn ok_on_a_later_line_passes_the_previous_test() {
        let log = "test_x (m.T)\nDocstring line ... some output\nok\n";
        let map = parse_django(log).unwrap();
        assert_eq!(map.get("Docstring line"), Some(&TestStatus::Passed));
    }

    #[test]
    fn interrupted_line_patterns_match_across_lines() {
        let log = "test_y (m.T) ... System check identified no issues (0 silenced)\nok\ntest_z (m.T) ... Internal Server Error: /x/\nok";
        let map = parse_django(log).unwrap();
        assert_eq!(map.get("test_y (m.T)"), Some(&TestStatus::Passed));
        assert_eq!(map.get("test_z (m.T)"), Some(&TestStatus::Passed));
    }

    #[test]
    fn bare_fail_line_raises_like_the_reference() {
        assert!(matches!(
            parse_django("FAIL:\n"),
            Err(LogParseError::ReferenceRaises { .. })
        ));
    }
}
