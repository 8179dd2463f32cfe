//! `{{placeholder}}` substitution for prompt templates: simple, literal and strict.
//!
//! Values are inserted verbatim and never rescanned, so an issue text containing `{{x}}` is safe.
//! A placeholder the caller does not supply is an error, not an empty string.

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template names a placeholder that is not one of the known ones.
    #[error(
        "template {template} uses unknown placeholder {{{{{name}}}}}; known placeholders: {known}"
    )]
    UnknownPlaceholder {
        /// Which template (e.g. `system_template`).
        template: String,
        /// The unknown name.
        name: String,
        /// The names that would work, comma separated.
        known: String,
    },
    /// A `{{` with no matching `}}`.
    #[error("template {template} has an unclosed {{{{ at byte {offset}")]
    Unclosed {
        /// Which template.
        template: String,
        /// Where the `{{` starts.
        offset: usize,
    },
}

/// Renders `template` (named `template_name` in errors), replacing each `{{name}}` (spaces inside
/// the braces allowed) with its value from `values`.
pub fn render_template(
    template_name: &str,
    template: &str,
    values: &[(&str, &str)],
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut consumed = 0;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            return Err(TemplateError::Unclosed {
                template: template_name.to_string(),
                offset: consumed + open,
            });
        };
        let name = after_open[..close].trim();
        match values.iter().find(|(key, _)| *key == name) {
            Some((_, value)) => out.push_str(value),
            None => {
                let known: Vec<&str> = values.iter().map(|(key, _)| *key).collect();
                return Err(TemplateError::UnknownPlaceholder {
                    template: template_name.to_string(),
                    name: name.to_string(),
                    known: known.join(", "),
                });
            }
        }
        let advance = open + 2 + close + 2;
        consumed += advance;
        rest = &rest[advance..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks that `template` only uses placeholders from `known` (used when a config is loaded, so
/// mistakes surface before the first episode).
pub fn check_template(
    template_name: &str,
    template: &str,
    known: &[&str],
) -> Result<(), TemplateError> {
    let values: Vec<(&str, &str)> = known.iter().map(|name| (*name, "")).collect();
    render_template(template_name, template, &values).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(template: &str, values: &[(&str, &str)], expect: Result<&str, &str>) {
        let got = render_template("t", template, values).map_err(|error| error.to_string());
        assert_eq!(got.as_deref(), expect.map_err(|e| e.to_string()).as_deref());
    }

    #[test]
    fn substitutes_and_keeps_values_literal() {
        check(
            "a {{x}} b {{ y }}",
            &[("x", "1"), ("y", "{{x}}")],
            Ok("a 1 b {{x}}"),
        );
        check("no placeholders", &[], Ok("no placeholders"));
        check("{{x}}{{x}}", &[("x", "é")], Ok("éé"));
        check("single { brace }", &[], Ok("single { brace }"));
    }

    #[test]
    fn unknown_and_unclosed_are_errors() {
        check(
            "hi {{nope}}",
            &[("issue", "")],
            Err("template t uses unknown placeholder {{nope}}; known placeholders: issue"),
        );
        check(
            "ab {{x",
            &[("x", "")],
            Err("template t has an unclosed {{ at byte 3"),
        );
        assert!(check_template("t", "{{a}} {{b}}", &["a", "b"]).is_ok());
        assert!(check_template("t", "{{c}}", &["a"]).is_err());
    }
}
