//! The pytest-summary families: `pytest`, `pytest_options`, `pytest_v2` and `matplotlib`. All read
//! `STATUS name` lines (pytest's `-rA` short summary); they differ in how they clean the line.

use std::sync::LazyLock;

use regex::Regex;

use super::pystr::py_split;
use super::{StatusMap, TestStatus};

/// Whether `line` starts with one of the five status names.
fn starts_with_status(line: &str) -> bool {
    TestStatus::KNOWN
        .iter()
        .any(|status| line.starts_with(status.as_str()))
}

/// Whether `line` ends with one of the five status names.
fn ends_with_status(line: &str) -> bool {
    TestStatus::KNOWN
        .iter()
        .any(|status| line.ends_with(status.as_str()))
}

/// The shared line rule: a status-prefixed line, with ` - ` turned into a space on `FAILED` lines
/// (so the message's first word never sticks to the name), records `tokens[1] → tokens[0]`.
fn summary_line(line: &str) -> Option<(String, TestStatus)> {
    if !starts_with_status(line) {
        return None;
    }
    let replaced;
    let line = if line.starts_with("FAILED") {
        replaced = line.replace(" - ", " ");
        replaced.as_str()
    } else {
        line
    };
    let tokens = py_split(line);
    if tokens.len() <= 1 {
        return None;
    }
    Some((tokens[1].to_string(), TestStatus::from_token(tokens[0])))
}

/// Port of `parse_log_pytest`.
pub(crate) fn parse_pytest(log: &str) -> StatusMap {
    let mut map = StatusMap::new();
    for line in log.split('\n') {
        if let Some((name, status)) = summary_line(line) {
            map.insert(name, status);
        }
    }
    map
}

/// Port of `parse_log_matplotlib`: `MouseButton.LEFT`/`RIGHT` in ids become `1`/`3` first.
pub(crate) fn parse_matplotlib(log: &str) -> StatusMap {
    let mut map = StatusMap::new();
    for line in log.split('\n') {
        let line = line
            .replace("MouseButton.LEFT", "1")
            .replace("MouseButton.RIGHT", "3");
        if let Some((name, status)) = summary_line(&line) {
            map.insert(name, status);
        }
    }
    map
}

/// `(.*?)\[(.*)\]`: the name up to the first `[` that has a `]` after it, and the parameter id up
/// to the last `]` (anything after that is dropped, as in the reference).
static OPTION_PATTERN: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(.*?)\[(.*)\]").expect("constant regex is valid"));

/// Port of `parse_log_pytest_options`: a parameter id that looks like an absolute path
/// (`[/a/b/c]`, not `//` and without `*`) is shortened to its last component (`[/c]`).
pub(crate) fn parse_pytest_options(log: &str) -> StatusMap {
    let mut map = StatusMap::new();
    for line in log.split('\n') {
        let Some((raw_name, status)) = summary_line(line) else {
            continue;
        };
        let name = match OPTION_PATTERN.captures(&raw_name) {
            Some(captures) => {
                let main = captures.get(1).map_or("", |m| m.as_str());
                let option = captures.get(2).map_or("", |m| m.as_str());
                if option.starts_with('/') && !option.starts_with("//") && !option.contains('*') {
                    let last = option.rsplit('/').next().unwrap_or_default();
                    format!("{main}[/{last}]")
                } else {
                    format!("{main}[{option}]")
                }
            }
            None => raw_name,
        };
        map.insert(name, status);
    }
    map
}

/// `\[(\d+)m`: the tail of an SGR colour code such as `ESC[31m` (not `ESC[1;31m`).
static COLOUR_CODE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\[(\d+)m").expect("constant regex is valid"));

/// Port of `parse_log_pytest_v2`: strips `[Nm` colour tails and every control character
/// U+0001..U+001F (tabs and CR included), then reads `STATUS name` lines, or, failing that,
/// lines ending in a status name as `tokens[0] → tokens[1]` (older pytest's verbose form; note it
/// is the second token, not the last, that becomes the status).
pub(crate) fn parse_pytest_v2(log: &str) -> StatusMap {
    let mut map = StatusMap::new();
    for raw_line in log.split('\n') {
        let without_colour = COLOUR_CODE.replace_all(raw_line, "");
        let line: String = without_colour
            .chars()
            .filter(|c| !('\u{1}'..='\u{1f}').contains(c))
            .collect();
        if starts_with_status(&line) {
            let line = if line.starts_with("FAILED") {
                line.replace(" - ", " ")
            } else {
                line
            };
            let tokens = py_split(&line);
            if tokens.len() >= 2 {
                map.insert(tokens[1].to_string(), TestStatus::from_token(tokens[0]));
            }
        } else if ends_with_status(&line) {
            let tokens = py_split(&line);
            if tokens.len() >= 2 {
                map.insert(tokens[0].to_string(), TestStatus::from_token(tokens[1]));
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(map: &StatusMap, name: &str) -> Option<String> {
        map.get(name).map(|s| s.as_str().to_string())
    }

    #[test]
    fn pytest_reads_summary_lines_and_keeps_raw_tokens() {
        let log = "PASSED a.py::t1\nFAILED a.py::t2 - assert 1 == 2\nERRORS a.py::t3\nXFAIL a.py::t4 - why\nPASSED\n  PASSED a.py::indented";
        let map = parse_pytest(log);
        assert_eq!(status(&map, "a.py::t1").as_deref(), Some("PASSED"));
        assert_eq!(status(&map, "a.py::t2").as_deref(), Some("FAILED"));
        assert_eq!(status(&map, "a.py::t3").as_deref(), Some("ERRORS"));
        assert_eq!(status(&map, "a.py::t4").as_deref(), Some("XFAIL"));
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn failed_dash_message_glues_only_on_failed_lines() {
        let map = parse_pytest("FAILED t[a - b] - boom");
        assert_eq!(status(&map, "t[a").as_deref(), Some("FAILED"));
    }

    #[test]
    fn options_shorten_absolute_path_ids() {
        let log = "PASSED t.py::test_x[/tmp/a/b.txt]\nPASSED t.py::test_y[//net/p]\nPASSED t.py::test_z[/a/*.py]\nPASSED t.py::test_w[p[1]]tail";
        let map = parse_pytest_options(log);
        let names: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            vec![
                "t.py::test_w[p[1]]",
                "t.py::test_x[/b.txt]",
                "t.py::test_y[//net/p]",
                "t.py::test_z[/a/*.py]"
            ]
        );
    }

    #[test]
    fn v2_strips_colours_and_reads_suffix_form() {
        let log = "\u{1b}[32mPASSED\u{1b}[0m a.py::t1\na.py::t2 PASSED\n\u{1b}[1;31mFAILED\u{1b}[0m a.py::t3 - x\nt4 (mod.C) ... ERROR";
        let map = parse_pytest_v2(log);
        assert_eq!(status(&map, "a.py::t1").as_deref(), Some("PASSED"));
        assert_eq!(status(&map, "a.py::t2").as_deref(), Some("PASSED"));
        assert_eq!(status(&map, "t4").as_deref(), Some("(mod.C)"));
        // `[1;31m` is not a `[Nm` code, so the line does not start with FAILED.
        assert!(!map.contains_key("a.py::t3"));
    }

    #[test]
    fn matplotlib_rewrites_mouse_buttons() {
        let map = parse_matplotlib("PASSED t.py::test_click[MouseButton.LEFT-MouseButton.RIGHT]");
        assert!(map.contains_key("t.py::test_click[1-3]"));
    }
}
