//! The one YAML config loader. Every YAML file swe-env reads (prompt templates here, the model agent and server
//! configs in the orchestrator) goes through [`load_file`] or [`parse_str`], so every config reports its errors the
//! same way: the file that could not be read, or the file, line and column of the first problem, what the parser
//! found, how to fix it, and the offending lines with a caret. Types are expected to use
//! `#[serde(default, deny_unknown_fields)]`: any key may be left out, and a misspelt key is an error rather than a
//! setting silently ignored. An empty document (or one holding only comments) is `T::default()`.
//!
//! It lives in the model crate because that is the lowest crate with a YAML config (`AgentPromptConfig`) and the
//! orchestrator already depends on it; the tools and grading crates read no YAML.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// The `origin` of YAML text that came from no file.
pub const INLINE: &str = "(inline)";

/// Why a YAML config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum YamlError {
    /// The file could not be read.
    #[error("cannot read {kind} {}: {error}; check the path", path.display())]
    Read {
        /// What the file is (`agent config`, `server config`, …).
        kind: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error (in the message, not a `source`, so that a printed cause chain does not repeat it).
        error: std::io::Error,
    },
    /// The text is not YAML, has an unknown key, or a value of the wrong type.
    #[error("invalid {kind} {origin}: {message}; {}{snippet}", hint_for(message))]
    Parse {
        /// What the file is (`agent config`, `server config`, …).
        kind: &'static str,
        /// The file, or `(inline)`.
        origin: String,
        /// `(line, column)` of the problem, 1-based, when known.
        position: Option<(u64, u64)>,
        /// The parser's message, ending with the position when known (`… at line 3, column 5`).
        message: String,
        /// The offending lines with a caret (`\n --> file:3:5` …), or empty.
        snippet: String,
    },
}

impl YamlError {
    /// `(line, column)` of a parse error, 1-based, when known.
    pub fn position(&self) -> Option<(u64, u64)> {
        match self {
            YamlError::Parse { position, .. } => *position,
            YamlError::Read { .. } => None,
        }
    }
}

/// Reads and parses the YAML file at `path` as a `T`; `kind` names the file in errors (`"agent config"`).
pub fn load_file<T: DeserializeOwned + Default>(
    path: &Path,
    kind: &'static str,
) -> Result<T, YamlError> {
    let text = std::fs::read_to_string(path).map_err(|error| YamlError::Read {
        kind,
        path: path.to_owned(),
        error,
    })?;
    parse_str(&text, kind, &path.display().to_string())
}

/// Parses YAML `text` as a `T`; `origin` (a path, or `(inline)`) and `kind` name it in errors.
pub fn parse_str<T: DeserializeOwned + Default>(
    text: &str,
    kind: &'static str,
    origin: &str,
) -> Result<T, YamlError> {
    if is_blank(text) {
        return Ok(T::default());
    }
    serde_saphyr::from_str(text).map_err(|error| parse_error(&error, kind, origin))
}

/// No content: only whitespace and `#` comments.
fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

fn parse_error(error: &serde_saphyr::Error, kind: &'static str, origin: &str) -> YamlError {
    let formatter = serde_saphyr::UserMessageFormatter;
    let message = error.render_with_options(serde_saphyr::render_options! {
        formatter: &formatter,
        snippets: serde_saphyr::SnippetMode::Off,
    });
    let rendered = error.render_with_options(serde_saphyr::render_options! {
        formatter: &formatter,
        source_name: Some(origin),
    });
    // The rendered form repeats the message on its first line (`error: line 3 column 5: …`); keep the lines after.
    let snippet = match rendered.split_once('\n') {
        Some((first, rest)) if first.starts_with("error:") && !rest.trim().is_empty() => {
            format!("\n{}", rest.trim_end())
        }
        _ => String::new(),
    };
    YamlError::Parse {
        kind,
        origin: origin.to_owned(),
        position: error.location().map(|l| (l.line(), l.column())),
        message: message.trim().to_owned(),
        snippet,
    }
}

/// How to fix a parse error, from the parser's message.
fn hint_for(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "correct or remove that key: every key is optional, and an unknown one is refused so that a misspelt \
         setting is never silently ignored"
    } else if message.contains("unknown variant") {
        "use one of the values listed"
    } else if message.contains("duplicate") {
        "keep only one of the repeated keys"
    } else {
        "fix the YAML syntax or the value's type at that position (the documented example of this file shows \
         every key)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        count: u32,
        inner: Inner,
        mode: Mode,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        name: String,
    }

    #[derive(Debug, Default, PartialEq, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        #[default]
        Fast,
        Slow,
    }

    fn parse(text: &str) -> Result<Sample, YamlError> {
        parse_str(text, "sample config", "/etc/sample.yaml")
    }

    #[test]
    fn empty_and_comment_only_documents_are_the_defaults() {
        assert_eq!(parse("").unwrap(), Sample::default());
        assert_eq!(parse("  \n# nothing set\n\n").unwrap(), Sample::default());
        let sample = parse("count: 3\ninner:\n  name: x\nmode: slow\n").unwrap();
        assert_eq!(sample.count, 3);
        assert_eq!(sample.inner.name, "x");
        assert_eq!(sample.mode, Mode::Slow);
    }

    #[test]
    fn an_unknown_nested_key_names_file_line_column_and_the_fix() {
        let error = parse("count: 3\ninner:\n  nmae: x\n").unwrap_err();
        assert_eq!(error.position(), Some((3, 3)));
        let text = error.to_string();
        assert!(
            text.starts_with("invalid sample config /etc/sample.yaml: unknown field `nmae`"),
            "{text}"
        );
        assert!(text.contains("expected one of name"), "{text}");
        assert!(text.contains("line 3, column 3"), "{text}");
        assert!(text.contains("correct or remove that key"), "{text}");
        assert!(text.contains("--> /etc/sample.yaml:3:3"), "{text}");
        assert!(text.contains("3 |   nmae: x"), "{text}");
    }

    #[test]
    fn bad_values_syntax_and_duplicates_are_located() {
        for (yaml, needle, position, hint) in [
            (
                "mode: medium\n",
                "unknown variant `medium`",
                (1, 7),
                "use one of",
            ),
            ("count: lots\n", "invalid", (1, 8), "value's type"),
            ("inner: \"open\n", "unclosed quote", (1, 8), "YAML syntax"),
            ("count: 1\ncount: 2\n", "duplicate", (2, 1), "keep only one"),
        ] {
            let error = parse(yaml).unwrap_err();
            let text = error.to_string();
            assert_eq!(error.position(), Some(position), "{yaml}: {text}");
            assert!(text.contains(needle), "{yaml}: {text}");
            assert!(text.contains(hint), "{yaml}: {text}");
            assert!(text.contains("/etc/sample.yaml"), "{yaml}: {text}");
        }
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let dir = std::env::temp_dir().join(format!("swe-env-yaml-{}", std::process::id()));
        let path = dir.join("absent.yaml");
        let error = load_file::<Sample>(&path, "sample config").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("cannot read sample config "), "{text}");
        assert!(text.ends_with("(os error 2); check the path"), "{text}");
        assert!(text.contains("absent.yaml"), "{text}");
        assert!(matches!(error, YamlError::Read { .. }));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&path, "count: 9\n").unwrap();
        assert_eq!(
            load_file::<Sample>(&path, "sample config").unwrap().count,
            9
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
