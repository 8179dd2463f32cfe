//! Per-repository, per-version test specifications: how a task's environment was installed, what the eval script
//! re-runs, which test command is run and which log-parser family reads its output.
//!
//! The SWE-bench table mirrors swebench 4.1.0's `MAP_REPO_VERSION_TO_SPECS` for the 12 repositories of SWE-bench
//! Verified (every version the reference lists for them, not only the ones Verified uses) and its
//! `MAP_REPO_TO_PARSER`. Tasks outside those repositories (our fixtures, other datasets) carry their own
//! `test_cmd` / `log_parser` / `activate` in the row; [`spec_for_instance`] builds their spec from those fields.

mod table;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::dataset::Instance;
use crate::log_parsers::LogParser;

pub use table::{python_repo_spec, python_repo_versions, VERIFIED_REPOS};

/// The seven Python log-parser families of SWE-bench; each repository's test output is read by one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParserFamily {
    /// `parse_log_pytest`: `STATUS test_id` lines of pytest's `-rA` summary.
    Pytest,
    /// `parse_log_pytest_options`: pytest, with path-like parameter ids normalised.
    PytestOptions,
    /// `parse_log_pytest_v2`: pytest, colour codes stripped, `test_id STATUS` lines accepted too.
    PytestV2,
    /// `parse_log_django`: Django's own runner (`test (module.Class) ... ok`).
    Django,
    /// `parse_log_sympy`: sympy's `bin/test` runner.
    Sympy,
    /// `parse_log_matplotlib`: pytest, with `MouseButton.*` in ids rewritten to numbers.
    Matplotlib,
    /// `parse_log_seaborn`: pytest, with `test_id PASSED` lines accepted.
    Seaborn,
}

impl ParserFamily {
    /// Every family, in a stable order.
    pub const ALL: [ParserFamily; 7] = [
        ParserFamily::Pytest,
        ParserFamily::PytestOptions,
        ParserFamily::PytestV2,
        ParserFamily::Django,
        ParserFamily::Sympy,
        ParserFamily::Matplotlib,
        ParserFamily::Seaborn,
    ];

    /// The family's canonical name (`pytest`, `pytest_options`, `pytest_v2`, ...).
    pub fn name(self) -> &'static str {
        match self {
            ParserFamily::Pytest => "pytest",
            ParserFamily::PytestOptions => "pytest_options",
            ParserFamily::PytestV2 => "pytest_v2",
            ParserFamily::Django => "django",
            ParserFamily::Sympy => "sympy",
            ParserFamily::Matplotlib => "matplotlib",
            ParserFamily::Seaborn => "seaborn",
        }
    }

    /// The family swebench 4.1.0 uses for a repository (`MAP_REPO_TO_PARSER`, Python repositories).
    pub fn for_repo(repo: &str) -> Option<Self> {
        let family = match repo {
            "astropy/astropy" | "scikit-learn/scikit-learn" | "sphinx-doc/sphinx" => {
                ParserFamily::PytestV2
            }
            "django/django" => ParserFamily::Django,
            "matplotlib/matplotlib" => ParserFamily::Matplotlib,
            "mwaskom/seaborn" => ParserFamily::Seaborn,
            "sympy/sympy" => ParserFamily::Sympy,
            "psf/requests" | "pylint-dev/pylint" | "pydicom/pydicom" => ParserFamily::PytestOptions,
            "pallets/flask"
            | "pydata/xarray"
            | "pytest-dev/pytest"
            | "pylint-dev/astroid"
            | "marshmallow-code/marshmallow"
            | "pvlib/pvlib-python"
            | "pyvista/pyvista"
            | "sqlfluff/sqlfluff" => ParserFamily::Pytest,
            _ => return None,
        };
        Some(family)
    }

    /// The log parser implementing this family.
    pub fn log_parser(self) -> LogParser {
        match self {
            ParserFamily::Pytest => LogParser::Pytest,
            ParserFamily::PytestOptions => LogParser::PytestOptions,
            ParserFamily::PytestV2 => LogParser::PytestV2,
            ParserFamily::Django => LogParser::Django,
            ParserFamily::Sympy => LogParser::Sympy,
            ParserFamily::Matplotlib => LogParser::Matplotlib,
            ParserFamily::Seaborn => LogParser::Seaborn,
        }
    }
}

impl fmt::Display for ParserFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `log_parser` value that names no family.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log parser family {0:?} (expected one of pytest, pytest_options, pytest_v2, django, sympy, matplotlib, seaborn)")]
pub struct UnknownParserFamily(pub String);

impl FromStr for ParserFamily {
    type Err = UnknownParserFamily;

    /// Accepts the canonical names, `-` for `_`, and the reference's function names (`parse_log_pytest_v2`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        let norm = norm.strip_prefix("parse_log_").unwrap_or(&norm);
        ParserFamily::ALL
            .into_iter()
            .find(|f| f.name() == norm)
            .ok_or_else(|| UnknownParserFamily(s.to_string()))
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

/// Where the repository lives in every SWE-bench image.
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
        Some(name) => Some(
            name.parse::<ParserFamily>()
                .map_err(|e| SpecError::BadLogParser {
                    instance_id: instance.instance_id.clone(),
                    reason: e.to_string(),
                })?,
        ),
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
            assert_eq!(family.log_parser().name(), family.name());
        }
        assert_eq!(
            "pytest-v2".parse::<ParserFamily>().unwrap(),
            ParserFamily::PytestV2
        );
        assert_eq!(
            "parse_log_django".parse::<ParserFamily>().unwrap(),
            ParserFamily::Django
        );
        assert!("junit".parse::<ParserFamily>().is_err());
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
