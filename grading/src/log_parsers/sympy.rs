//! The sympy family: sympy's own `bin/test` runner, which prints `test_name ok|F|E` per test and a
//! `____ path.py:test_name ____` banner per failure.

use std::sync::LazyLock;

use regex::Regex;

use super::pystr::{py_split, py_strip};
use super::{StatusMap, TestStatus};

/// `(_*) (.*)\.py:(.*) (_*)`, searched over the whole log (`.` stops at newlines).
static FAILURE_BANNER: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(_*) (.*)\.py:(.*) (_*)").expect("constant regex is valid"));

/// Port of `parse_log_sympy`: every banner match records `path.py:name` as FAILED, then per-test
/// lines starting with `test_` record their first token by suffix (` E`, ` F`, ` ok`).
pub(crate) fn parse_sympy(log: &str) -> StatusMap {
    let mut map = StatusMap::new();
    for captures in FAILURE_BANNER.captures_iter(log) {
        let path = captures.get(2).map_or("", |m| m.as_str());
        let name = captures.get(3).map_or("", |m| m.as_str());
        map.insert(format!("{path}.py:{name}"), TestStatus::Failed);
    }
    for raw_line in log.split('\n') {
        let line = py_strip(raw_line);
        if !line.starts_with("test_") {
            continue;
        }
        // `line` starts with `test_`, so it has a first token.
        let first = py_split(line)
            .first()
            .map(|t| t.to_string())
            .unwrap_or_default();
        if line.ends_with(" E") {
            map.insert(first.clone(), TestStatus::Error);
        }
        if line.ends_with(" F") {
            map.insert(first.clone(), TestStatus::Failed);
        }
        if line.ends_with(" ok") {
            map.insert(first, TestStatus::Passed);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_results_and_failure_banners() {
        let log =
            "test_a ok\n  test_b F\ntest_c E\n______ sympy/core/tests/test_x.py:test_b ______\n";
        let map = parse_sympy(log);
        assert_eq!(map.get("test_a"), Some(&TestStatus::Passed));
        assert_eq!(map.get("test_b"), Some(&TestStatus::Failed));
        assert_eq!(map.get("test_c"), Some(&TestStatus::Error));
        assert_eq!(
            map.get("sympy/core/tests/test_x.py:test_b"),
            Some(&TestStatus::Failed)
        );
    }
}
