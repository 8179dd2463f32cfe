//! Quoting for the bash command lines swe-env builds (the one place this is written).

/// `text` single-quoted for bash: every byte literal, `'` written as `'\''`.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes_survive_a_real_bash() {
        for text in [
            "plain",
            "it's",
            "a b",
            "$(rm -rf /)",
            "'",
            "",
            "new\nline",
            "\\",
        ] {
            let out = std::process::Command::new("bash")
                .args(["-c", &format!("printf %s {}", shell_quote(text))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), text);
        }
    }
}
