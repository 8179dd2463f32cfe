//! The eval script run in the grading container, built as swebench 4.1.0 builds `make_test_spec(...).eval_script`
//! for Python repositories, plus the [`TestSpec`] that carries it to the orchestrator and the grader.
//!
//! The script: activate the environment, `cd` to the repository, run the spec's eval-time commands (locale and
//! encoding exports), print `git status` / `git show` / `git diff <base>` for the record, activate again, re-run
//! the install command, reset the files the test patch touches to the base commit, apply the test patch from a
//! heredoc, run the test command between the `>>>>> Start Test Output` / `>>>>> End Test Output` markers, and
//! reset the test files again. It runs under `set -uxo pipefail` (no `-e`: the final reset must run).
//!
//! Intended differences from the reference, each behind [`EvalScriptConfig`]:
//! - **Recorded test exit code** (on by default): `SWEBENCH_TEST_EXIT_CODE=$?` right after the test command and
//!   `echo ">>>>> Test Exit Code: $SWEBENCH_TEST_EXIT_CODE"` right after the end marker (the exact lines
//!   swebench 5 adds), so a grader can cross-check the parsed log against the command's real status. The value is
//!   printed outside the parsed region; a log can still contain a forged copy inside the test output, so a grader
//!   should read the line that follows the end marker, not the first match in the log.
//! - **Grading network `none`**: the install step runs with pip told not to reach any index and not to retry
//!   (`PIP_NO_INDEX=1`, `PIP_RETRIES=0`, `PIP_TIMEOUT=1`), is announced by `>>>>> Install Ran Offline` and its
//!   status is printed as `>>>>> Install Exit Code: N`, so the report can say the install could not run.
//! - **v5 semantics**: a row that ships its own `eval_script` (swebench 5 datasets) is used as given (shebang and
//!   `set` line stripped and re-added, as swebench 5 does), with the exit code always recorded.

use serde::{Deserialize, Serialize};

use crate::dataset::Instance;
use crate::diff::DiffError;
use crate::directives::{modified_files, test_directives};
use crate::specs::{spec_for_instance, ParserFamily, SpecError, TaskSpec};

/// Marker before the test command's output (printed by `set -x` tracing a `:` no-op).
pub const START_TEST_OUTPUT: &str = ">>>>> Start Test Output";
/// Marker after the test command's output.
pub const END_TEST_OUTPUT: &str = ">>>>> End Test Output";
/// Prefix of the line carrying the test command's exit status (same text as swebench 5).
pub const TEST_EXIT_CODE_MARKER: &str = ">>>>> Test Exit Code";
/// Shell variable holding the test command's `$?` (same name as swebench 5).
pub const TEST_EXIT_CODE_VAR: &str = "SWEBENCH_TEST_EXIT_CODE";
/// Printed before the install step when it runs with the grading network off.
pub const INSTALL_OFFLINE_MARKER: &str = ">>>>> Install Ran Offline";
/// Prefix of the line carrying the offline install step's exit status.
pub const INSTALL_EXIT_CODE_MARKER: &str = ">>>>> Install Exit Code";
/// Shell variable holding the offline install step's `$?`.
pub const INSTALL_EXIT_CODE_VAR: &str = "SWE_ENV_INSTALL_EXIT_CODE";
/// The heredoc delimiter the reference uses for the test patch.
pub const TEST_PATCH_HEREDOC_DELIMITER: &str = "EOF_114329324912";

const SHEBANG: &str = "#!/bin/bash";
const SET_FLAGS: &str = "set -uxo pipefail";
const OFFLINE_PIP_ENV: [(&str, &str); 4] = [
    ("PIP_NO_INDEX", "1"),
    ("PIP_RETRIES", "0"),
    ("PIP_TIMEOUT", "1"),
    ("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
];

/// Which reference version's script shape to follow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Semantics {
    /// swebench 4.1.0: the script is built from the repository spec (the default).
    #[default]
    V4_1_0,
    /// swebench 5: a row's own `eval_script` is used when present, with the exit code recorded.
    V5,
}

/// The network the grading container has; it decides how the install step behaves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GradingNetwork {
    /// Docker's default bridge, as the reference harness grades (the default; matches published numbers).
    #[default]
    Bridge,
    /// No network: pip fails fast and the script records that the install ran offline.
    None,
}

/// Knobs of the eval script. `Default` is reference fidelity plus the recorded exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalScriptConfig {
    /// Script shape; default [`Semantics::V4_1_0`].
    pub semantics: Semantics,
    /// Record the test command's exit code after the end marker; default `true` (always on under v5).
    pub record_test_exit_code: bool,
    /// Grading network; default [`GradingNetwork::Bridge`].
    pub grading_network: GradingNetwork,
}

impl Default for EvalScriptConfig {
    fn default() -> Self {
        Self {
            semantics: Semantics::V4_1_0,
            record_test_exit_code: true,
            grading_network: GradingNetwork::Bridge,
        }
    }
}

/// Everything needed to grade one task: the eval script and what the grader reads its output with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSpec {
    /// The task.
    pub instance_id: String,
    /// Its repository.
    pub repo: String,
    /// Its version key.
    pub version: String,
    /// Commit the test files are reset to.
    pub base_commit: String,
    /// The full script (`#!/bin/bash`, `set -uxo pipefail`, then `eval_script_list`, newline-terminated).
    pub eval_script: String,
    /// The script's commands, one entry per command (a heredoc is one entry).
    pub eval_script_list: Vec<String>,
    /// The test command with its directives.
    pub test_command: String,
    /// Test directives taken from the test patch.
    pub directives: Vec<String>,
    /// Files reset to the base commit before and after the tests.
    pub test_files: Vec<String>,
    /// The log parser family for the test output.
    pub parser: ParserFamily,
    /// Shell lines activating the environment.
    pub activation: Vec<String>,
    /// Repository directory in the container.
    pub repo_dir: String,
    /// Image override from the row, if any.
    pub image: Option<String>,
    /// Tests that must go from failing to passing.
    pub fail_to_pass: Vec<String>,
    /// Tests that must keep passing.
    pub pass_to_pass: Vec<String>,
    /// The options the script was built with.
    pub config: EvalScriptConfig,
}

/// Why no eval script can be built for a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalScriptError {
    /// No spec for the task's repository/version.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The test patch does not parse.
    #[error("instance {instance_id}: test patch: {source}")]
    TestPatch {
        /// The task.
        instance_id: String,
        /// The parser's error.
        #[source]
        source: DiffError,
    },
    /// The test patch contains the heredoc delimiter line, which would cut the heredoc short.
    #[error("instance {instance_id}: test patch contains the heredoc delimiter line {TEST_PATCH_HEREDOC_DELIMITER}")]
    HeredocCollision {
        /// The task.
        instance_id: String,
    },
}

/// Builds the [`TestSpec`] (and its eval script) for a task.
pub fn make_test_spec(
    instance: &Instance,
    config: &EvalScriptConfig,
) -> Result<TestSpec, EvalScriptError> {
    let task = spec_for_instance(instance)?;
    let directives = test_directives(&instance.repo, &instance.test_patch);
    let test_command = std::iter::once(task.spec.test_cmd.as_str())
        .chain(directives.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let test_files =
        modified_files(&instance.test_patch).map_err(|source| EvalScriptError::TestPatch {
            instance_id: instance.instance_id.clone(),
            source,
        })?;
    if instance
        .test_patch
        .split('\n')
        .any(|line| line == TEST_PATCH_HEREDOC_DELIMITER)
    {
        return Err(EvalScriptError::HeredocCollision {
            instance_id: instance.instance_id.clone(),
        });
    }

    let row_script = match (config.semantics, instance.eval_script.as_deref()) {
        (Semantics::V5, Some(script)) => Some(parse_eval_script(script)),
        _ => None,
    };
    let record_exit_code = config.record_test_exit_code || config.semantics == Semantics::V5;
    let mut list = match row_script {
        Some(list) => list,
        None => reference_eval_script_list(instance, &task, &test_files, &test_command),
    };
    if let Some(install) = task.spec.install.as_deref() {
        if config.grading_network == GradingNetwork::None {
            list = offline_install(list, install);
        }
    }
    if record_exit_code {
        list = record_test_exit_code(list);
    }
    Ok(TestSpec {
        instance_id: instance.instance_id.clone(),
        repo: instance.repo.clone(),
        version: instance.version.clone(),
        base_commit: instance.base_commit.clone(),
        eval_script: join_script(&list),
        eval_script_list: list,
        test_command,
        directives,
        test_files,
        parser: task.parser,
        activation: task.activation.lines(),
        repo_dir: task.repo_dir.clone(),
        image: instance.image.clone(),
        fail_to_pass: instance.fail_to_pass.clone(),
        pass_to_pass: instance.pass_to_pass.clone(),
        config: *config,
    })
}

/// The reference's `make_eval_script_list_py`, for any activation.
fn reference_eval_script_list(
    instance: &Instance,
    task: &TaskSpec,
    test_files: &[String],
    test_command: &str,
) -> Vec<String> {
    let repo_dir = &task.repo_dir;
    let base = &instance.base_commit;
    let activation = task.activation.lines();
    // The reference joins with a space even when there are no files, leaving a trailing space.
    let reset_tests = format!("git checkout {base} {}", test_files.join(" "));
    let apply_test_patch = format!(
        "git apply -v - <<'{TEST_PATCH_HEREDOC_DELIMITER}'\n{}\n{TEST_PATCH_HEREDOC_DELIMITER}",
        instance.test_patch
    );

    let mut list = activation.clone();
    list.push(format!("cd {repo_dir}"));
    list.extend(task.spec.eval_commands.iter().cloned());
    list.push(format!(
        "git config --global --add safe.directory {repo_dir}"
    ));
    list.push(format!("cd {repo_dir}"));
    list.push("git status".to_string());
    list.push("git show".to_string());
    list.push(format!("git -c core.fileMode=false diff {base}"));
    list.extend(activation);
    if let Some(install) = &task.spec.install {
        list.push(install.clone());
    }
    list.push(reset_tests.clone());
    list.push(apply_test_patch);
    list.push(format!(": '{START_TEST_OUTPUT}'"));
    list.push(test_command.to_string());
    list.push(format!(": '{END_TEST_OUTPUT}'"));
    list.push(reset_tests);
    list
}

/// swebench 5's `parse_eval_script`: strip, split into lines, drop the shebang and `set` lines.
fn parse_eval_script(script: &str) -> Vec<String> {
    script
        .trim()
        .split('\n')
        .filter(|line| *line != SHEBANG && *line != SET_FLAGS)
        .map(str::to_string)
        .collect()
}

/// Inserts the exit-code capture right before the end marker and its echo right after (swebench 5's
/// `record_test_exit_code`); a script without an end marker is left as it is.
pub fn record_test_exit_code(list: Vec<String>) -> Vec<String> {
    let Some(end) = list.iter().position(|l| l.contains(END_TEST_OUTPUT)) else {
        return list;
    };
    let mut out = Vec::with_capacity(list.len() + 2);
    let mut rest = list.into_iter();
    out.extend(rest.by_ref().take(end));
    out.push(format!("{TEST_EXIT_CODE_VAR}=$?"));
    out.extend(rest.next());
    out.push(format!(
        "echo \"{TEST_EXIT_CODE_MARKER}: ${TEST_EXIT_CODE_VAR}\""
    ));
    out.extend(rest);
    out
}

/// Wraps the first occurrence of the install command so pip cannot reach an index, does not retry, and the
/// outcome is printed.
fn offline_install(list: Vec<String>, install: &str) -> Vec<String> {
    let Some(at) = list.iter().position(|l| l == install) else {
        return list;
    };
    let names: Vec<&str> = OFFLINE_PIP_ENV.iter().map(|(n, _)| *n).collect();
    let exports: Vec<String> = OFFLINE_PIP_ENV
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect();
    let mut out = Vec::with_capacity(list.len() + 5);
    let mut rest = list.into_iter();
    out.extend(rest.by_ref().take(at));
    out.push(format!(
        "echo '{INSTALL_OFFLINE_MARKER} (grading network: none)'"
    ));
    out.push(format!("export {}", exports.join(" ")));
    out.extend(rest.next());
    out.push(format!("{INSTALL_EXIT_CODE_VAR}=$?"));
    out.push(format!("unset {}", names.join(" ")));
    out.push(format!(
        "echo \"{INSTALL_EXIT_CODE_MARKER}: ${INSTALL_EXIT_CODE_VAR}\""
    ));
    out.extend(rest);
    out
}

/// `TestSpec.eval_script`: shebang, `set -uxo pipefail`, the commands, a final newline.
fn join_script(list: &[String]) -> String {
    let mut script = format!("{SHEBANG}\n{SET_FLAGS}");
    for line in list {
        script.push('\n');
        script.push_str(line);
    }
    script.push('\n');
    script
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::instance_from_value;
    use serde_json::json;

    const PATCH: &str = "diff --git a/tests/test_a.py b/tests/test_a.py\n--- a/tests/test_a.py\n+++ b/tests/test_a.py\n@@ -1 +1,2 @@\n x\n+y\n";

    fn instance(extra: serde_json::Value) -> Instance {
        let mut v = json!({"repo": "pytest-dev/pytest", "instance_id": "pytest-dev__pytest-1", "base_commit": "abc",
            "test_patch": PATCH, "version": "5.4", "FAIL_TO_PASS": "[\"t1\"]"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        instance_from_value(v).unwrap()
    }

    #[test]
    fn reference_shape_without_extensions() {
        let config = EvalScriptConfig {
            record_test_exit_code: false,
            ..EvalScriptConfig::default()
        };
        let spec = make_test_spec(&instance(json!({})), &config).unwrap();
        let expected = "#!/bin/bash\nset -uxo pipefail\nsource /opt/miniconda3/bin/activate\nconda activate testbed\n\
cd /testbed\ngit config --global --add safe.directory /testbed\ncd /testbed\ngit status\ngit show\n\
git -c core.fileMode=false diff abc\nsource /opt/miniconda3/bin/activate\nconda activate testbed\n\
python -m pip install -e .\ngit checkout abc tests/test_a.py\ngit apply -v - <<'EOF_114329324912'\n"
            .to_string()
            + PATCH
            + "\nEOF_114329324912\n: '>>>>> Start Test Output'\npytest -rA tests/test_a.py\n: '>>>>> End Test Output'\n\
git checkout abc tests/test_a.py\n";
        assert_eq!(spec.eval_script, expected);
        assert_eq!(spec.test_command, "pytest -rA tests/test_a.py");
        assert_eq!(spec.parser, ParserFamily::Pytest);
        assert_eq!(spec.fail_to_pass, vec!["t1"]);
    }

    #[test]
    fn exit_code_is_recorded_around_the_end_marker() {
        let spec = make_test_spec(&instance(json!({})), &EvalScriptConfig::default()).unwrap();
        let l = &spec.eval_script_list;
        let end = l
            .iter()
            .position(|x| x == ": '>>>>> End Test Output'")
            .unwrap();
        assert_eq!(l[end - 2], "pytest -rA tests/test_a.py");
        assert_eq!(l[end - 1], "SWEBENCH_TEST_EXIT_CODE=$?");
        assert_eq!(
            l[end + 1],
            "echo \">>>>> Test Exit Code: $SWEBENCH_TEST_EXIT_CODE\""
        );
    }

    #[test]
    fn offline_install_is_fenced_and_marked() {
        let config = EvalScriptConfig {
            grading_network: GradingNetwork::None,
            ..EvalScriptConfig::default()
        };
        let spec = make_test_spec(&instance(json!({})), &config).unwrap();
        let l = &spec.eval_script_list;
        let at = l
            .iter()
            .position(|x| x == "python -m pip install -e .")
            .unwrap();
        assert!(l[at - 2].contains(INSTALL_OFFLINE_MARKER));
        assert!(l[at - 1].starts_with("export PIP_NO_INDEX=1 PIP_RETRIES=0"));
        assert_eq!(l[at + 1], "SWE_ENV_INSTALL_EXIT_CODE=$?");
        assert!(l[at + 2].starts_with("unset PIP_NO_INDEX"));
        assert!(l[at + 3].contains(INSTALL_EXIT_CODE_MARKER));
    }

    #[test]
    fn v5_uses_the_row_script_and_records_the_exit_code() {
        let row = "#!/bin/bash\nset -uxo pipefail\ncd /testbed\n: '>>>>> Start Test Output'\nmake test\n: '>>>>> End Test Output'\n";
        let config = EvalScriptConfig {
            semantics: Semantics::V5,
            record_test_exit_code: false,
            ..EvalScriptConfig::default()
        };
        let spec = make_test_spec(&instance(json!({"eval_script": row})), &config).unwrap();
        assert_eq!(
            spec.eval_script,
            "#!/bin/bash\nset -uxo pipefail\ncd /testbed\n: '>>>>> Start Test Output'\nmake test\n\
SWEBENCH_TEST_EXIT_CODE=$?\n: '>>>>> End Test Output'\necho \">>>>> Test Exit Code: $SWEBENCH_TEST_EXIT_CODE\"\n"
        );
        // Under the default semantics the row's script is ignored.
        let spec = make_test_spec(
            &instance(json!({"eval_script": row})),
            &EvalScriptConfig::default(),
        )
        .unwrap();
        assert!(spec.eval_script.contains("git apply -v -"));
    }

    #[test]
    fn fixture_rows_use_their_own_command_and_activation() {
        let inst = instance(
            json!({"repo": "swe-env/calc", "test_cmd": "python -m pytest -rA", "log_parser": "pytest",
            "activate": ". /opt/venv/bin/activate"}),
        );
        let spec = make_test_spec(&inst, &EvalScriptConfig::default()).unwrap();
        assert_eq!(spec.test_command, "python -m pytest -rA tests/test_a.py");
        assert_eq!(spec.eval_script_list[0], ". /opt/venv/bin/activate");
        assert!(!spec.eval_script.contains("conda"));
        assert!(!spec.eval_script.contains("pip install"));
    }

    #[test]
    fn heredoc_delimiter_in_the_patch_is_refused() {
        let bad = format!("{TEST_PATCH_HEREDOC_DELIMITER}\n{PATCH}");
        let err = make_test_spec(
            &instance(json!({"test_patch": bad})),
            &EvalScriptConfig::default(),
        )
        .unwrap_err();
        assert!(
            matches!(err, EvalScriptError::HeredocCollision { .. }),
            "{err}"
        );
        // A `+EOF…` line is not the delimiter line and is fine.
        let fine = format!("{PATCH}+{TEST_PATCH_HEREDOC_DELIMITER}\n");
        assert!(make_test_spec(
            &instance(json!({"test_patch": fine})),
            &EvalScriptConfig::default()
        )
        .is_ok());
        let broken = "--- a/t.py\n+++ b/t.py\n@@ -1 +1,2 @@\n x\n";
        let err = make_test_spec(
            &instance(json!({"test_patch": broken})),
            &EvalScriptConfig::default(),
        )
        .unwrap_err();
        assert!(matches!(err, EvalScriptError::TestPatch { .. }), "{err}");
    }
}
