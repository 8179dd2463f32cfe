//! The eval script's log markers: the test-output slice between start and end markers, the
//! failure markers that make the reference refuse a log, and the exit-code line.

/// Printed by the eval script right before the test command's output.
pub const START_TEST_OUTPUT: &str = ">>>>> Start Test Output";
/// Printed by the eval script right after the test command's output.
pub const END_TEST_OUTPUT: &str = ">>>>> End Test Output";
/// Printed after [`END_TEST_OUTPUT`] with the test command's exit status (`>>>>> Test Exit Code: N`),
/// the marker swebench 5.x introduced; swe-env's eval script prints it too.
pub const TEST_EXIT_CODE: &str = ">>>>> Test Exit Code";
/// Failure marker: the patch did not apply.
pub const APPLY_PATCH_FAIL: &str = ">>>>> Patch Apply Failed";
/// Failure marker: resetting the test files failed.
pub const RESET_FAILED: &str = ">>>>> Reset Failed";
/// Failure marker: the tests errored.
pub const TESTS_ERROR: &str = ">>>>> Tests Errored";
/// Failure marker: the tests timed out.
pub const TESTS_TIMEOUT: &str = ">>>>> Tests Timed Out";

/// The failure markers in the order the reference checks them.
const FAILURE_MARKERS: [&str; 4] = [APPLY_PATCH_FAIL, RESET_FAILED, TESTS_ERROR, TESTS_TIMEOUT];

/// Why a log has no usable test-output slice; in every case the reference grades the instance
/// with an empty status map and `patch_successfully_applied = false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MarkerError {
    /// A failure marker occurs anywhere in the log (the first one in the reference's order).
    #[error("test log contains the failure marker {0:?}")]
    FailureMarker(&'static str),
    /// The start or the end marker (or both) never occurs.
    #[error("test log lacks its markers (start found: {start_found}, end found: {end_found})")]
    MissingMarkers {
        /// Whether [`START_TEST_OUTPUT`] occurs.
        start_found: bool,
        /// Whether [`END_TEST_OUTPUT`] occurs.
        end_found: bool,
    },
}

/// The part of a log the reference parses: `content.split(START)[1].split(END)[0]`, i.e. from the
/// first start marker to the next end marker, cut short at a second start marker if one comes
/// first. Refuses logs exactly as `get_logs_eval` does (failure markers first, then markers).
pub fn extract_test_output(content: &str) -> Result<&str, MarkerError> {
    if let Some(marker) = FAILURE_MARKERS.iter().find(|m| content.contains(*m)) {
        return Err(MarkerError::FailureMarker(marker));
    }
    let start_found = content.contains(START_TEST_OUTPUT);
    let end_found = content.contains(END_TEST_OUTPUT);
    if !(start_found && end_found) {
        return Err(MarkerError::MissingMarkers {
            start_found,
            end_found,
        });
    }
    let after_start = content.split(START_TEST_OUTPUT).nth(1).unwrap_or_default();
    Ok(after_start
        .split(END_TEST_OUTPUT)
        .next()
        .unwrap_or_default())
}

/// The recorded exit status of the test command: the first `>>>>> Test Exit Code: N` anywhere in
/// the log (any whitespace after the colon, an optional minus sign, ASCII digits), as swebench
/// 5.x's `parse_test_exit_code` reads it. `None` when absent. A number beyond `i64` saturates,
/// which keeps it non-zero.
pub fn parse_test_exit_code(content: &str) -> Option<i64> {
    let mut rest = content;
    while let Some(position) = rest.find(TEST_EXIT_CODE) {
        let after = &rest[position + TEST_EXIT_CODE.len()..];
        if let Some(code) = after.strip_prefix(':').and_then(leading_integer) {
            return Some(code);
        }
        rest = &rest[position + 1..];
    }
    None
}

/// The last `>>>>> Test Exit Code: N` line of the log. The eval script prints its line after all
/// test output, so a test that prints a fake exit-code line earlier cannot hide the real one;
/// swe-env's own exit-code cross-check uses this reading.
pub fn parse_last_test_exit_code(content: &str) -> Option<i64> {
    content
        .match_indices(TEST_EXIT_CODE)
        .filter_map(|(position, marker)| {
            content[position + marker.len()..]
                .strip_prefix(':')
                .and_then(leading_integer)
        })
        .last()
}

/// `\s*(-?\d+)` at the start of `text`.
fn leading_integer(text: &str) -> Option<i64> {
    let text = text.trim_start_matches(super::pystr::is_py_space);
    let (negative, digits_start) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let digits_len = digits_start
        .bytes()
        .take_while(|byte| byte.is_ascii_digit())
        .count();
    if digits_len == 0 {
        return None;
    }
    let digits = &digits_start[..digits_len];
    let value = digits.parse::<i64>().unwrap_or(i64::MAX);
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_is_between_first_start_and_next_end() {
        let log =
            "pre\n>>>>> Start Test Output\nA\n>>>>> End Test Output\nB\n>>>>> End Test Output";
        assert_eq!(extract_test_output(log), Ok("\nA\n"));
        let twice = ">>>>> Start Test Output\nA\n>>>>> Start Test Output\nB\n>>>>> End Test Output";
        assert_eq!(extract_test_output(twice), Ok("\nA\n"));
        let end_first = ">>>>> End Test Output\nX\n>>>>> Start Test Output\nY";
        assert_eq!(extract_test_output(end_first), Ok("\nY"));
    }

    #[test]
    fn missing_markers_and_failure_markers_are_reported() {
        assert_eq!(
            extract_test_output("+ : '>>>>> Start Test Output'\nPASSED x"),
            Err(MarkerError::MissingMarkers {
                start_found: true,
                end_found: false
            })
        );
        let log = ">>>>> Start Test Output\n>>>>> End Test Output\n>>>>> Tests Errored\n>>>>> Reset Failed";
        assert_eq!(
            extract_test_output(log),
            Err(MarkerError::FailureMarker(RESET_FAILED))
        );
    }

    #[test]
    fn exit_code_line_is_parsed() {
        assert_eq!(
            parse_test_exit_code("x\n>>>>> Test Exit Code: 0\n"),
            Some(0)
        );
        assert_eq!(parse_test_exit_code(">>>>> Test Exit Code:\t-2"), Some(-2));
        assert_eq!(
            parse_test_exit_code(">>>>> Test Exit Code:1\n>>>>> Test Exit Code: 0"),
            Some(1)
        );
        assert_eq!(
            parse_test_exit_code(">>>>> Test Exit Code: x\n>>>>> Test Exit Code: 3"),
            Some(3)
        );
        assert_eq!(parse_test_exit_code("no marker"), None);
        assert_eq!(
            parse_last_test_exit_code(">>>>> Test Exit Code: 0\n>>>>> Test Exit Code: 2\n"),
            Some(2)
        );
        assert_eq!(
            parse_test_exit_code(">>>>> Test Exit Code: 99999999999999999999999"),
            Some(i64::MAX)
        );
    }
}
