//! Prompt templates in Jinja syntax (rendered by `minijinja`): the one way a prompt template is rendered.
//!
//! - Strict about names: a template that names a variable the caller does not supply is refused when the
//!   config is checked ([`check_template`]), naming the variable and the template; printing an undefined value
//!   at render time is an error too (`{% if x is defined %}` and `{% if x %}` on a missing attribute still work).
//! - Values are inserted verbatim and never rescanned, so an issue text containing `{{x}}` is safe; nothing is
//!   HTML-escaped; a template's trailing newline is kept.
//! - Templates cannot read files (`include` / `import` / `extends` are not even statements) or run code, and rendering
//!   stops after [`TEMPLATE_FUEL`] instructions.

use std::collections::BTreeSet;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// Instructions one rendering may execute before it is stopped (a runaway loop in a template is an error, not a
/// hang). The default prompts take a few dozen.
pub const TEMPLATE_FUEL: u64 = 10_000_000;

/// Why a template could not be checked or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// The template names a variable that is not one of the known ones.
    #[error(
        "template {template} uses unknown variable `{name}`; known variables: {known} (extra dataset columns \
         are under `instance`, e.g. {{{{ instance.{name} }}}})"
    )]
    UnknownVariable {
        /// Which template (e.g. `system_template`).
        template: String,
        /// The unknown name.
        name: String,
        /// The names that would work, comma separated.
        known: String,
    },
    /// The template names a field of the task row that is never shown to the model (the answer or its tests).
    #[error(
        "template {template} uses `{name}`, a hidden field of the task (the gold patch and its tests never \
         reach the model); remove it from the template"
    )]
    HiddenField {
        /// Which template.
        template: String,
        /// The hidden field.
        name: String,
    },
    /// The template is not valid Jinja.
    #[error("template {template} has a syntax error: {detail}")]
    Syntax {
        /// Which template.
        template: String,
        /// minijinja's message, with the line.
        detail: String,
    },
    /// Rendering failed (an undefined value printed, a filter applied to the wrong type, the fuel ran out).
    #[error("template {template} could not be rendered: {detail}")]
    Render {
        /// Which template.
        template: String,
        /// minijinja's message, with the line.
        detail: String,
    },
}

/// The environment every template renders in: strict undefined, no escaping, trailing newline kept, no loader.
fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Only the delimiters could make this fail, and they are the defaults.
    if let Ok(syntax) = SyntaxConfig::builder().keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.set_fuel(Some(TEMPLATE_FUEL));
    env
}

/// minijinja's message with its location (`(in user_template:3)`), without the multi-line source dump.
fn describe(error: &minijinja::Error) -> String {
    error.to_string()
}

/// Renders `template` (named `template_name` in errors) with `context`, a JSON object whose keys are the
/// variables.
pub fn render_template(
    template_name: &str,
    template: &str,
    context: &serde_json::Value,
) -> Result<String, TemplateError> {
    let env = environment();
    let compiled = env
        .template_from_named_str(template_name, template)
        .map_err(|error| TemplateError::Syntax {
            template: template_name.to_owned(),
            detail: describe(&error),
        })?;
    compiled
        .render(minijinja::Value::from(minijinja::value::Serde(context)))
        .map_err(|error| TemplateError::Render {
            template: template_name.to_owned(),
            detail: describe(&error),
        })
}

/// Checks that `template` is valid Jinja and only uses variables from `known` (or minijinja's built-in
/// functions such as `range`); names in `hidden` get their own error. Used when a config is loaded, so mistakes
/// surface before the first episode.
pub fn check_template(
    template_name: &str,
    template: &str,
    known: &[&str],
    hidden: &[&str],
) -> Result<(), TemplateError> {
    let env = environment();
    let compiled = env
        .template_from_named_str(template_name, template)
        .map_err(|error| TemplateError::Syntax {
            template: template_name.to_owned(),
            detail: describe(&error),
        })?;
    let globals: BTreeSet<&str> = env.globals().map(|(name, _)| name).collect();
    let used: BTreeSet<String> = compiled.undeclared_variables(false).into_iter().collect();
    for name in used {
        if known.contains(&name.as_str()) || globals.contains(name.as_str()) {
            continue;
        }
        if hidden.contains(&name.as_str()) {
            return Err(TemplateError::HiddenField {
                template: template_name.to_owned(),
                name,
            });
        }
        return Err(TemplateError::UnknownVariable {
            template: template_name.to_owned(),
            name,
            known: known.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(template: &str, context: serde_json::Value, expect: Result<&str, &str>) {
        let got = render_template("t", template, &context).map_err(|error| error.to_string());
        match expect {
            Ok(text) => assert_eq!(got.as_deref(), Ok(text)),
            Err(needle) => {
                let error = got.unwrap_err();
                assert!(error.contains(needle), "{error}");
            }
        }
    }

    #[test]
    fn substitutes_and_keeps_values_literal() {
        check(
            "a {{x}} b {{ y }}",
            json!({"x": "1", "y": "{{x}} {% if %}"}),
            Ok("a 1 b {{x}} {% if %}"),
        );
        check("no placeholders", json!({}), Ok("no placeholders"));
        check("{{x}}{{x}}", json!({"x": "é"}), Ok("éé"));
        check("single { brace }", json!({}), Ok("single { brace }"));
        check("<{{ x }}>&\n", json!({"x": "<b>&"}), Ok("<<b>&>&\n"));
        check("n={{ n }}", json!({"n": 131072}), Ok("n=131072"));
    }

    #[test]
    fn conditionals_and_filters_work() {
        let template = "{% if hints_text %}Hints: {{ hints_text }}{% else %}No hints{% endif %}.";
        check(
            template,
            json!({"hints_text": "use x"}),
            Ok("Hints: use x."),
        );
        check(template, json!({"hints_text": ""}), Ok("No hints."));
        check(
            "{{ repo | upper }} {% if instance.difficulty is defined %}{{ instance.difficulty }}{% endif %}",
            json!({"repo": "o/r", "instance": {"difficulty": "easy"}}),
            Ok("O/R easy"),
        );
        check(
            "{% if instance.difficulty %}yes{% else %}no{% endif %}",
            json!({"instance": {}}),
            Ok("no"),
        );
    }

    #[test]
    fn undefined_and_broken_templates_are_errors() {
        check(
            "hi {{ nope }}",
            json!({"issue": ""}),
            Err("undefined value"),
        );
        check(
            "{{ instance.nope }}",
            json!({"instance": {}}),
            Err("undefined"),
        );
        check(
            "ab {{x",
            json!({"x": ""}),
            Err("template t has a syntax error"),
        );
        check("{% if x %}open", json!({"x": ""}), Err("syntax error"));
        check(
            "{% include 'other' %}",
            json!({}),
            Err("unknown statement include"),
        );
        check("{% import 'other' as o %}", json!({}), Err("syntax error"));
        check(
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            json!({}),
            Err("fuel"),
        );
    }

    #[test]
    fn check_names_the_unknown_variable_and_the_template() {
        assert!(
            check_template("t", "{{a}} {% if b %}{{ b }}{% endif %}", &["a", "b"], &[]).is_ok()
        );
        assert!(
            check_template("t", "{% for i in range(3) %}{{ i }}{% endfor %}", &[], &[]).is_ok()
        );
        let error = check_template("user_template", "{{ hint_text }}", &["hints_text"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("template user_template uses unknown variable `hint_text`; known variables: hints_text"),
            "{error}"
        );
        let error = check_template("t", "{{ patch }}", &["a"], &["patch"]).unwrap_err();
        assert!(
            matches!(error, TemplateError::HiddenField { .. }),
            "{error}"
        );
        let error = check_template("t", "{{ a", &["a"], &[]).unwrap_err();
        assert!(matches!(error, TemplateError::Syntax { .. }), "{error}");
    }
}
