//! Per-repository, per-version test specifications: how a task's environment was installed, what the eval script
//! re-runs, which test command is run and which log-parser family reads its output.
//!
//! The SWE-bench table mirrors swebench 4.1.0's `MAP_REPO_VERSION_TO_SPECS` for the 12 repositories of SWE-bench
//! Verified (every version the reference lists for them, not only the ones Verified uses) and its
//! `MAP_REPO_TO_PARSER`. Tasks outside those repositories (our fixtures, other datasets) carry their own
//! `test_cmd` / `log_parser` / `activate` in the row; [`spec_for_instance`] builds their spec from those fields.

mod table;

use serde::{Deserialize, Serialize};

use crate::dataset::Instance;
use crate::log_parsers::LogParser;

pub use table::{python_repo_spec, python_repo_versions, VERIFIED_REPOS};

/// The log-parser family a spec names is the parser that reads its logs: one enum, [`LogParser`], under the
/// name the specs use.
pub type ParserFamily = LogParser;

impl LogParser {
    /// The reference's `MAP_REPO_TO_PARSER` (4.1.0, plus the SWE-bench repositories outside Verified).
    pub fn for_repo(repo: &str) -> Option<Self> {
        let family = match repo {
            "astropy/astropy" | "scikit-learn/scikit-learn" | "sphinx-doc/sphinx" => {
                LogParser::PytestV2
            }
            "django/django" => LogParser::Django,
            "matplotlib/matplotlib" => LogParser::Matplotlib,
            "mwaskom/seaborn" => LogParser::Seaborn,
            "sympy/sympy" => LogParser::Sympy,
            "psf/requests" | "pylint-dev/pylint" | "pydicom/pydicom" => LogParser::PytestOptions,
            "pallets/flask"
            | "pydata/xarray"
            | "pytest-dev/pytest"
            | "pylint-dev/astroid"
            | "marshmallow-code/marshmallow"
            | "pvlib/pvlib-python"
            | "pyvista/pyvista"
            | "sqlfluff/sqlfluff" => LogParser::Pytest,
            _ => return None,
        };
        Some(family)
    }
}

/// How a repository version's environment is built and tested (one entry of `MAP_REPO_VERSION_TO_SPECS`).
///
/// Fields the eval script uses: `eval_commands`, `install`, `test_cmd`. The others describe the image build and
/// are kept for completeness and for rebuilding environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoVersionSpec {
    /// Python version of the conda environment.
    pub python: String,
    /// conda packages, or `requirements.txt` / `environment.yml` meaning "from the repository's file".
    pub packages: Option<String>,
    /// Install command, run at image build and again in the eval script.
    pub install: Option<String>,
    /// Commands run before `install` at image build time.
    pub pre_install: Vec<String>,
    /// Commands the eval script runs right after activation (locale and encoding exports, locale generation).
    pub eval_commands: Vec<String>,
    /// Extra pip packages installed into the environment.
    pub pip_packages: Vec<String>,
    /// The test command; the test directives are appended to it.
    pub test_cmd: String,
    /// `environment.yml` environments are created with `conda create` + `conda env update` instead of
    /// `conda env create`.
    pub no_use_env: bool,
    /// The reference marks these versions to run tests as a non-root user.
    pub execute_test_as_nonroot: bool,
    /// CPU quota (in billionths of a CPU) the reference asks for when running these versions.
    pub nano_cpus: Option<u64>,
}

impl RepoVersionSpec {
    /// Environment variables the eval script exports (`export NAME=value` lines of `eval_commands`).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.eval_commands
            .iter()
            .filter_map(|cmd| cmd.strip_prefix("export "))
            .filter_map(|assign| assign.split_once('='))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }
}

/// How the eval script activates the task's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// The SWE-bench convention: `source /opt/miniconda3/bin/activate` then `conda activate <env>`.
    Conda {
        /// The conda environment (`testbed` in every SWE-bench image).
        env_name: String,
    },
    /// Shell lines given by the task row (`activate`), run as they are; empty means nothing to activate.
    Lines(Vec<String>),
}

impl Activation {
    /// The shell lines that activate the environment.
    pub fn lines(&self) -> Vec<String> {
        match self {
            Activation::Conda { env_name } => vec![
                "source /opt/miniconda3/bin/activate".to_string(),
                format!("conda activate {env_name}"),
            ],
            Activation::Lines(lines) => lines.clone(),
        }
    }
}

/// The conda environment name of every SWE-bench image.
pub const SWE_BENCH_ENV_NAME: &str = "testbed";

/// Where the repository lives in every SWE-bench image: the one definition (the orchestrator's episodes, agents,
/// grading and prompts use it too).
pub const SWE_BENCH_REPO_DIR: &str = "/testbed";

/// Where a task's spec came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecSource {
    /// The SWE-bench table (repo + version).
    SweBench,
    /// The row's own `test_cmd` / `log_parser` / `activate` fields.
    Row,
}

/// Everything the eval script and the grader need to know about one task's repository and version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Where the spec came from.
    pub source: SpecSource,
    /// The install/test spec.
    pub spec: RepoVersionSpec,
    /// Which parser reads the test output.
    pub parser: ParserFamily,
    /// How the environment is activated.
    pub activation: Activation,
    /// Repository directory inside the container.
    pub repo_dir: String,
}

/// Why no spec can be built for a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    /// The repository is known but this version is not in the table.
    #[error("no test spec for {repo} version {version:?} (instance {instance_id})")]
    UnknownVersion {
        /// The task.
        instance_id: String,
        /// Its repository.
        repo: String,
        /// Its version.
        version: String,
    },
    /// The repository is not one of the SWE-bench repositories and the row has no `test_cmd`.
    #[error("no test spec for repository {repo} (instance {instance_id}): not a SWE-bench repository and the row has no test_cmd")]
    UnknownRepo {
        /// The task.
        instance_id: String,
        /// Its repository.
        repo: String,
    },
    /// The row's `log_parser` names no family, or is missing for a repository outside the table.
    #[error("instance {instance_id}: {reason}")]
    BadLogParser {
        /// The task.
        instance_id: String,
        /// What is wrong.
        reason: String,
    },
}

/// Builds the spec for a task: row fields (`test_cmd`, `log_parser`, `activate`) win when present, otherwise the
/// SWE-bench table is used (with conda `testbed` activation).
///
/// A row with `test_cmd` gets a spec with that command and nothing to install; its parser is the row's
/// `log_parser`, else the repository's family, else an error. `activate` is split into lines (an empty value
/// activates nothing); without it, every task uses the SWE-bench activation (`source /opt/miniconda3/bin/activate`,
/// `conda activate testbed`), which the design makes the default for all task images.
pub fn spec_for_instance(instance: &Instance) -> Result<TaskSpec, SpecError> {
    let row_parser = match instance.log_parser.as_deref() {
        Some(name) => {
            Some(
                ParserFamily::parse_lenient(name).map_err(|e| SpecError::BadLogParser {
                    instance_id: instance.instance_id.clone(),
                    reason: e.to_string(),
                })?,
            )
        }
        None => None,
    };
    let row_activation = instance.activate.as_ref().map(|text| {
        Activation::Lines(
            text.lines()
                .map(str::trim_end)
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect(),
        )
    });
    let conda = || Activation::Conda {
        env_name: SWE_BENCH_ENV_NAME.to_string(),
    };

    if let Some(test_cmd) = instance.test_cmd.as_ref() {
        let parser = row_parser
            .or_else(|| ParserFamily::for_repo(&instance.repo))
            .ok_or_else(|| SpecError::BadLogParser {
                instance_id: instance.instance_id.clone(),
                reason: "the row has a test_cmd but no log_parser".to_string(),
            })?;
        let activation = row_activation.unwrap_or_else(conda);
        return Ok(TaskSpec {
            source: SpecSource::Row,
            spec: RepoVersionSpec {
                python: String::new(),
                packages: None,
                install: None,
                pre_install: Vec::new(),
                eval_commands: Vec::new(),
                pip_packages: Vec::new(),
                test_cmd: test_cmd.clone(),
                no_use_env: false,
                execute_test_as_nonroot: false,
                nano_cpus: None,
            },
            parser,
            activation,
            repo_dir: SWE_BENCH_REPO_DIR.to_string(),
        });
    }

    let Some(spec) = python_repo_spec(&instance.repo, &instance.version) else {
        return Err(if python_repo_versions(&instance.repo).is_some() {
            SpecError::UnknownVersion {
                instance_id: instance.instance_id.clone(),
                repo: instance.repo.clone(),
                version: instance.version.clone(),
            }
        } else {
            SpecError::UnknownRepo {
                instance_id: instance.instance_id.clone(),
                repo: instance.repo.clone(),
            }
        });
    };
    let parser = match row_parser {
        Some(p) => p,
        None => ParserFamily::for_repo(&instance.repo).ok_or_else(|| SpecError::BadLogParser {
            instance_id: instance.instance_id.clone(),
            reason: format!("no log parser family for repository {}", instance.repo),
        })?,
    };
    Ok(TaskSpec {
        source: SpecSource::SweBench,
        spec,
        parser,
        activation: row_activation.unwrap_or_else(conda),
        repo_dir: SWE_BENCH_REPO_DIR.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::instance_from_value;
    use serde_json::json;

    fn instance(extra: serde_json::Value) -> Instance {
        let mut v = json!({"repo": "django/django", "instance_id": "django__django-1", "base_commit": "abc",
            "test_patch": "x", "version": "3.0"});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        instance_from_value(v).unwrap()
    }

    #[test]
    fn parser_names_round_trip_and_accept_reference_spellings() {
        for family in ParserFamily::ALL {
            assert_eq!(family.name().parse::<ParserFamily>().unwrap(), family);
        }
        assert_eq!(
            ParserFamily::parse_lenient("pytest-v2").unwrap(),
            ParserFamily::PytestV2
        );
        assert_eq!(
            ParserFamily::parse_lenient("parse_log_django").unwrap(),
            ParserFamily::Django
        );
        assert!(ParserFamily::parse_lenient("junit").is_err());
    }

    #[test]
    fn swe_bench_rows_use_the_table_and_conda() {
        let spec = spec_for_instance(&instance(json!({}))).unwrap();
        assert_eq!(spec.source, SpecSource::SweBench);
        assert_eq!(spec.parser, ParserFamily::Django);
        assert_eq!(spec.activation.lines()[1], "conda activate testbed");
        assert_eq!(
            spec.spec.env_vars()[0],
            ("LANG".to_string(), "en_US.UTF-8".to_string())
        );
    }

    #[test]
    fn unknown_version_and_repo_are_errors() {
        let err = spec_for_instance(&instance(json!({"version": "0.1"}))).unwrap_err();
        assert!(matches!(err, SpecError::UnknownVersion { .. }), "{err}");
        let err = spec_for_instance(&instance(json!({"repo": "me/mine"}))).unwrap_err();
        assert!(matches!(err, SpecError::UnknownRepo { .. }), "{err}");
    }

    #[test]
    fn row_fields_build_a_fixture_spec() {
        let inst = instance(
            json!({"repo": "swe-env/calc", "test_cmd": "python -m pytest -rA",
            "log_parser": "pytest", "activate": ". /venv/bin/activate\n"}),
        );
        let spec = spec_for_instance(&inst).unwrap();
        assert_eq!(spec.source, SpecSource::Row);
        assert_eq!(spec.spec.test_cmd, "python -m pytest -rA");
        assert_eq!(spec.spec.install, None);
        assert_eq!(spec.activation.lines(), vec![". /venv/bin/activate"]);
        let no_parser = instance(json!({"repo": "swe-env/calc", "test_cmd": "t"}));
        assert!(matches!(
            spec_for_instance(&no_parser),
            Err(SpecError::BadLogParser { .. })
        ));
        let bad_parser = instance(json!({"log_parser": "junit"}));
        assert!(matches!(
            spec_for_instance(&bad_parser),
            Err(SpecError::BadLogParser { .. })
        ));
    }
}
