//! Test-log parsers: the seven Python log-parser families of SWE-bench (`swebench` 4.1.0), turning a
//! test run's output into a map from test name to status, quirks included, so that grading here
//! agrees with published SWE-bench numbers.
//!
//! Each parser is a faithful port of the reference function of the same name in
//! `swebench/harness/log_parsers/python.py`. Where the reference raises (an `IndexError` on a few
//! malformed lines) the port returns [`LogParseError::ReferenceRaises`]: the reference harness then
//! writes no report for the instance, which counts as an error instance.

mod django;
mod markers;
mod pystr;
mod pytest;
mod seaborn;
mod sympy;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use markers::{
    extract_test_output, parse_last_test_exit_code, parse_test_exit_code, MarkerError,
    END_TEST_OUTPUT, START_TEST_OUTPUT, TEST_EXIT_CODE,
};
pub use markers::{APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT};

/// Status of one test as the reference parsers record it.
///
/// The reference stores the raw first (or, for one pytest-v2 form, second) whitespace token of a
/// result line, so a line such as `ERRORS foo` yields the status `ERRORS`; such values are kept
/// verbatim in [`TestStatus::Other`] because grading treats them as neither passed nor failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TestStatus {
    /// `PASSED`
    Passed,
    /// `FAILED`
    Failed,
    /// `SKIPPED`
    Skipped,
    /// `ERROR`
    Error,
    /// `XFAIL` (graded like a pass)
    Xfail,
    /// Any other token the reference would have stored as a status.
    Other(String),
}

impl TestStatus {
    /// The five statuses of the reference's `TestStatus` enum, in its declaration order (the order
    /// in which its parsers test `startswith`/`endswith`).
    pub const KNOWN: [TestStatus; 5] = [
        TestStatus::Failed,
        TestStatus::Passed,
        TestStatus::Skipped,
        TestStatus::Error,
        TestStatus::Xfail,
    ];

    /// The status string as the reference writes it.
    pub fn as_str(&self) -> &str {
        match self {
            TestStatus::Passed => "PASSED",
            TestStatus::Failed => "FAILED",
            TestStatus::Skipped => "SKIPPED",
            TestStatus::Error => "ERROR",
            TestStatus::Xfail => "XFAIL",
            TestStatus::Other(raw) => raw,
        }
    }

    /// Maps a raw token to a status; unknown tokens become [`TestStatus::Other`].
    pub fn from_token(token: &str) -> TestStatus {
        match token {
            "PASSED" => TestStatus::Passed,
            "FAILED" => TestStatus::Failed,
            "SKIPPED" => TestStatus::Skipped,
            "ERROR" => TestStatus::Error,
            "XFAIL" => TestStatus::Xfail,
            other => TestStatus::Other(other.to_string()),
        }
    }
}

impl fmt::Display for TestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for TestStatus {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TestStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Ok(TestStatus::from_token(&raw))
    }
}

/// Test name → status, the result of parsing one log (the reference's `status_map`).
pub type StatusMap = BTreeMap<String, TestStatus>;

/// A reference parser would raise on this log instead of returning a map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogParseError {
    /// The reference indexes a missing whitespace token on this line (`IndexError`).
    #[error("the {parser} log parser of swebench 4.1.0 raises IndexError on line {line:?}")]
    ReferenceRaises {
        /// Which parser.
        parser: LogParser,
        /// The offending line, as the parser saw it.
        line: String,
    },
}

/// The seven Python log-parser families of SWE-bench (which repository uses which: [`LogParser::for_repo`],
/// in `specs`, where this enum is also named `ParserFamily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogParser {
    /// `parse_log_pytest` (flask, xarray, pytest, astroid, sqlfluff, pvlib, pyvista, marshmallow).
    Pytest,
    /// `parse_log_pytest_options` (requests, pylint, pydicom): normalises path-like parameter ids.
    PytestOptions,
    /// `parse_log_pytest_v2` (astropy, scikit-learn, sphinx): strips colour codes, accepts
    /// `name STATUS` lines.
    PytestV2,
    /// `parse_log_django`: Django's `test (module.Class) ... ok` runner output.
    Django,
    /// `parse_log_sympy`: sympy's own `bin/test` runner output.
    Sympy,
    /// `parse_log_matplotlib`: pytest with `MouseButton.*` ids rewritten to numbers.
    Matplotlib,
    /// `parse_log_seaborn`: pytest with `name PASSED` lines accepted.
    Seaborn,
}

impl LogParser {
    /// Every family, in a stable order.
    pub const ALL: [LogParser; 7] = [
        LogParser::Pytest,
        LogParser::PytestOptions,
        LogParser::PytestV2,
        LogParser::Django,
        LogParser::Sympy,
        LogParser::Matplotlib,
        LogParser::Seaborn,
    ];

    /// The family's name as accepted by [`FromStr`] (`pytest`, `pytest_options`, ...).
    pub fn name(self) -> &'static str {
        match self {
            LogParser::Pytest => "pytest",
            LogParser::PytestOptions => "pytest_options",
            LogParser::PytestV2 => "pytest_v2",
            LogParser::Django => "django",
            LogParser::Sympy => "sympy",
            LogParser::Matplotlib => "matplotlib",
            LogParser::Seaborn => "seaborn",
        }
    }

    /// Parses a log (normally the slice between the test-output markers) into a status map.
    pub fn parse(self, log: &str) -> Result<StatusMap, LogParseError> {
        match self {
            LogParser::Pytest => Ok(pytest::parse_pytest(log)),
            LogParser::PytestOptions => Ok(pytest::parse_pytest_options(log)),
            LogParser::PytestV2 => Ok(pytest::parse_pytest_v2(log)),
            LogParser::Django => django::parse_django(log),
            LogParser::Sympy => Ok(sympy::parse_sympy(log)),
            LogParser::Matplotlib => Ok(pytest::parse_matplotlib(log)),
            LogParser::Seaborn => seaborn::parse_seaborn(log),
        }
    }
}

impl LogParser {
    /// Parses a name as dataset rows and the reference spell it: the canonical names in any case, `-` for `_`,
    /// and the reference's function names (`parse_log_pytest_v2`).
    pub fn parse_lenient(name: &str) -> Result<Self, UnknownLogParser> {
        let norm = name.trim().to_ascii_lowercase().replace('-', "_");
        let norm = norm.strip_prefix("parse_log_").unwrap_or(&norm);
        norm.parse().map_err(|_| UnknownLogParser(name.to_string()))
    }
}

impl fmt::Display for LogParser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown log-parser name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log parser {0:?} (expected one of pytest, pytest_options, pytest_v2, django, sympy, matplotlib, seaborn)")]
pub struct UnknownLogParser(pub String);

impl FromStr for LogParser {
    type Err = UnknownLogParser;

    /// Exactly the canonical names (see [`LogParser::parse_lenient`] for what dataset rows may say).
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        LogParser::ALL
            .into_iter()
            .find(|parser| parser.name() == name)
            .ok_or_else(|| UnknownLogParser(name.to_string()))
    }
}

/// What the reference's `get_logs_eval` makes of a whole test log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEval {
    /// The parsed status map (empty when `found` is false).
    pub status_map: StatusMap,
    /// The reference's second return value: false when a failure marker is present or the
    /// start/end markers are missing; `patch_successfully_applied` in the report copies it.
    pub found: bool,
    /// Why `found` is false, when it is.
    pub marker_error: Option<MarkerError>,
    /// True when the slice between the markers parsed to nothing and the whole log was parsed
    /// instead (the reference's fallback).
    pub parsed_whole_log: bool,
}

/// The text the reference grades: it writes the eval output to `test_output.txt` and reads it back
/// in text mode, whose universal newlines turn `\r\n` and a lone `\r` into `\n`.
pub fn as_reference_reads_it(content: &str) -> String {
    content.replace("\r\n", "\n").replace('\r', "\n")
}

/// Port of `get_logs_eval`: refuse logs with a failure marker or without both markers, parse the
/// slice between the markers, and fall back to the whole log when that yields nothing. `content`
/// is the raw eval output; newlines are first translated as the reference's file read does
/// ([`as_reference_reads_it`]).
pub fn evaluate_log(content: &str, parser: LogParser) -> Result<LogEval, LogParseError> {
    let content = as_reference_reads_it(content);
    let content = content.as_str();
    let slice = match extract_test_output(content) {
        Ok(slice) => slice,
        Err(marker_error) => {
            return Ok(LogEval {
                status_map: StatusMap::new(),
                found: false,
                marker_error: Some(marker_error),
                parsed_whole_log: false,
            })
        }
    };
    let status_map = parser.parse(slice)?;
    if !status_map.is_empty() {
        return Ok(LogEval {
            status_map,
            found: true,
            marker_error: None,
            parsed_whole_log: false,
        });
    }
    Ok(LogEval {
        status_map: parser.parse(content)?,
        found: true,
        marker_error: None,
        parsed_whole_log: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_names_round_trip() {
        for parser in LogParser::ALL {
            assert_eq!(parser.name().parse::<LogParser>(), Ok(parser));
            let json = serde_json::to_string(&parser).unwrap();
            assert_eq!(json, format!("\"{}\"", parser.name()));
        }
        assert!("pytest-v2".parse::<LogParser>().is_err());
    }

    #[test]
    fn status_tokens_round_trip() {
        for status in TestStatus::KNOWN {
            assert_eq!(TestStatus::from_token(status.as_str()), status);
        }
        assert_eq!(
            TestStatus::from_token("ERRORS"),
            TestStatus::Other("ERRORS".into())
        );
        let json = serde_json::to_string(&TestStatus::Other("ok".into())).unwrap();
        assert_eq!(json, "\"ok\"");
    }

    #[test]
    fn evaluate_log_falls_back_to_whole_log() {
        let log = "PASSED a.py::t\n>>>>> Start Test Output\nnothing\n>>>>> End Test Output\n";
        let eval = evaluate_log(log, LogParser::Pytest).unwrap();
        assert!(eval.found && eval.parsed_whole_log);
        assert_eq!(eval.status_map.get("a.py::t"), Some(&TestStatus::Passed));
    }

    #[test]
    fn evaluate_log_translates_newlines_like_a_text_mode_read() {
        let log = ">>>>> Start Test Output\r\nPASSED a\rPASSED b\r\n>>>>> End Test Output";
        let eval = evaluate_log(log, LogParser::Pytest).unwrap();
        assert_eq!(eval.status_map.len(), 2);
        assert_eq!(as_reference_reads_it("a\r\r\nb"), "a\n\nb");
    }

    #[test]
    fn evaluate_log_refuses_failure_markers() {
        let log = ">>>>> Start Test Output\nPASSED a\n>>>>> End Test Output\n>>>>> Tests Timed Out";
        let eval = evaluate_log(log, LogParser::Pytest).unwrap();
        assert!(!eval.found);
        assert!(eval.status_map.is_empty());
        assert_eq!(
            eval.marker_error,
            Some(MarkerError::FailureMarker(TESTS_TIMEOUT))
        );
    }
}
