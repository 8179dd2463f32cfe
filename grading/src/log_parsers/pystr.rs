//! Python `str` helpers whose whitespace rules differ from Rust's: the reference parsers call
//! `str.split()`, `str.strip()` and `str.lstrip()`, which use `str.isspace()`.

/// Whether `c` is whitespace for Python's `str.isspace()` (Rust's `char::is_whitespace` plus the
/// four ASCII information separators U+001C..U+001F).
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.split()` with no argument: runs of whitespace separate, empty fields dropped.
pub(crate) fn py_split(s: &str) -> Vec<&str> {
    s.split(is_py_space)
        .filter(|part| !part.is_empty())
        .collect()
}

/// Python's `s.strip()` with no argument.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.lstrip()` with no argument.
pub(crate) fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_py_space)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_python_whitespace_rules() {
        assert_eq!(
            py_split("  a\u{1c}b\t c\u{a0}d  "),
            vec!["a", "b", "c", "d"]
        );
        assert_eq!(py_split(""), Vec::<&str>::new());
        assert_eq!(py_strip("\u{1f} x \u{3000}"), "x");
        assert_eq!(py_lstrip("\u{1e} x "), "x ");
    }
}
