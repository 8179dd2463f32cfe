//! The seaborn family: pytest output read as `FAILED name`, `name PASSED ...` or `PASSED name`.

use super::pystr::py_split;
use super::{LogParseError, LogParser, StatusMap, TestStatus};

/// `parts[index]`, or the reference's `IndexError`.
fn token<'a>(parts: &[&'a str], index: usize, line: &str) -> Result<&'a str, LogParseError> {
    parts
        .get(index)
        .copied()
        .ok_or_else(|| LogParseError::ReferenceRaises {
            parser: LogParser::Seaborn,
            line: line.to_string(),
        })
}

/// Port of `parse_log_seaborn`. `FAILED` lines keep their second token as the name (no ` - `
/// handling); a line containing ` PASSED ` counts only when `PASSED` is its second token.
pub(crate) fn parse_seaborn(log: &str) -> Result<StatusMap, LogParseError> {
    let mut map = StatusMap::new();
    for line in log.split('\n') {
        let parts = py_split(line);
        if line.starts_with("FAILED") {
            map.insert(token(&parts, 1, line)?.to_string(), TestStatus::Failed);
        } else if line.contains(" PASSED ") {
            if token(&parts, 1, line)? == "PASSED" {
                map.insert(parts[0].to_string(), TestStatus::Passed);
            }
        } else if line.starts_with("PASSED") {
            map.insert(token(&parts, 1, line)?.to_string(), TestStatus::Passed);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_three_line_forms() {
        let log =
            "FAILED t.py::a - boom\nt.py::b PASSED [ 50%]\nPASSED t.py::c\nx t.py::d PASSED [ 1%]";
        let map = parse_seaborn(log).unwrap();
        assert_eq!(map.get("t.py::a"), Some(&TestStatus::Failed));
        assert_eq!(map.get("t.py::b"), Some(&TestStatus::Passed));
        assert_eq!(map.get("t.py::c"), Some(&TestStatus::Passed));
        assert_eq!(map.len(), 3);
    }

    #[test]
    fn bare_status_lines_raise_like_the_reference() {
        assert!(parse_seaborn("FAILED\n").is_err());
        assert!(parse_seaborn(" PASSED \n").is_err());
        assert!(parse_seaborn("PASSED").is_err());
    }
}
