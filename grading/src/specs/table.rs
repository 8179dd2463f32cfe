//! The install/test table of the 12 SWE-bench Verified repositories, as swebench 4.1.0 defines it
//! (`swebench/harness/constants/python.py`). Written as one function per repository that starts from the
//! repository's common entry and applies the per-version changes in the same order the reference does.
//! `tests/spec_reference.rs` compares every entry with the installed reference.

use super::RepoVersionSpec;

/// The repositories of SWE-bench Verified, which this table covers.
pub const VERIFIED_REPOS: [&str; 12] = [
    "astropy/astropy",
    "django/django",
    "matplotlib/matplotlib",
    "mwaskom/seaborn",
    "pallets/flask",
    "psf/requests",
    "pydata/xarray",
    "pylint-dev/pylint",
    "pytest-dev/pytest",
    "scikit-learn/scikit-learn",
    "sphinx-doc/sphinx",
    "sympy/sympy",
];

const TEST_PYTEST: &str = "pytest -rA";
const TEST_ASTROPY_PYTEST: &str = "pytest -rA -vv -o console_output_style=classic --tb=no";
const TEST_DJANGO: &str = "./tests/runtests.py --verbosity 2 --settings=test_sqlite --parallel 1";
const TEST_DJANGO_NO_PARALLEL: &str = "./tests/runtests.py --verbosity 2";
const TEST_SEABORN: &str = "pytest --no-header -rA";
const TEST_SPHINX: &str = "tox --current-env -epy39 -v --";
const TEST_SYMPY: &str =
    "PYTHONWARNINGS='ignore::UserWarning,ignore::SyntaxWarning' bin/test -C --verbose";

const PIP_INSTALL_EDITABLE: &str = "python -m pip install -e .";

const SKLEARN_VERSIONS: &[&str] = &["0.20", "0.21", "0.22", "1.3", "1.4", "1.5", "1.6"];
const FLASK_VERSIONS: &[&str] = &["2.0", "2.1", "2.2", "2.3", "3.0", "3.1"];
const DJANGO_VERSIONS: &[&str] = &[
    "1.7", "1.8", "1.9", "1.10", "1.11", "2.0", "2.1", "2.2", "1.4", "1.5", "1.6", "3.0", "3.1",
    "3.2", "4.0", "4.1", "4.2", "5.0", "5.1", "5.2",
];
const REQUESTS_VERSIONS: &[&str] = &[
    "0.7", "0.8", "0.9", "0.11", "0.13", "0.14", "1.1", "1.2", "2.0", "2.2", "2.3", "2.4", "2.5",
    "2.7", "2.8", "2.9", "2.10", "2.11", "2.12", "2.17", "2.18", "2.19", "2.22", "2.26", "2.25",
    "2.27", "2.31", "3.0",
];
const SEABORN_VERSIONS: &[&str] = &["0.11", "0.12", "0.13", "0.14"];
const PYTEST_VERSIONS: &[&str] = &[
    "4.4", "4.5", "4.6", "5.0", "5.1", "5.2", "5.3", "5.4", "6.0", "6.2", "6.3", "7.0", "7.1",
    "7.2", "7.4", "8.0", "8.1", "8.2", "8.3", "8.4",
];
const MATPLOTLIB_VERSIONS: &[&str] = &[
    "3.5", "3.6", "3.7", "3.8", "3.9", "3.1", "3.2", "3.3", "3.4", "3.0", "2.0", "2.1", "2.2",
    "1.0", "1.1", "1.2", "1.3", "1.4", "1.5",
];
const SPHINX_VERSIONS: &[&str] = &[
    "1.5", "1.6", "1.7", "1.8", "2.0", "2.1", "2.2", "2.3", "2.4", "3.0", "3.1", "3.2", "3.3",
    "3.4", "3.5", "4.0", "4.1", "4.2", "4.3", "4.4", "4.5", "5.0", "5.1", "5.2", "5.3", "6.0",
    "6.2", "7.0", "7.1", "7.2", "7.3", "7.4", "8.0", "8.1",
];
const ASTROPY_VERSIONS: &[&str] = &[
    "3.0", "3.1", "3.2", "4.1", "4.2", "4.3", "5.0", "5.1", "5.2", "v5.3", "0.1", "0.2", "0.3",
    "0.4", "1.1", "1.2", "1.3",
];
const SYMPY_VERSIONS: &[&str] = &[
    "0.7", "1.0", "1.1", "1.10", "1.11", "1.12", "1.2", "1.4", "1.5", "1.6", "1.7", "1.8", "1.9",
    "1.13", "1.14",
];
const PYLINT_VERSIONS: &[&str] = &[
    "2.10", "2.11", "2.13", "2.14", "2.15", "2.16", "2.17", "2.8", "2.9", "3.0", "3.1", "3.2",
    "3.3", "4.0",
];
const XARRAY_VERSIONS: &[&str] = &[
    "0.12", "0.18", "0.19", "0.20", "2022.03", "2022.06", "2022.09", "2023.07", "2024.05",
];

/// The versions the table knows for a repository, or `None` for a repository outside the table.
pub fn python_repo_versions(repo: &str) -> Option<&'static [&'static str]> {
    Some(match repo {
        "astropy/astropy" => ASTROPY_VERSIONS,
        "django/django" => DJANGO_VERSIONS,
        "matplotlib/matplotlib" => MATPLOTLIB_VERSIONS,
        "mwaskom/seaborn" => SEABORN_VERSIONS,
        "pallets/flask" => FLASK_VERSIONS,
        "psf/requests" => REQUESTS_VERSIONS,
        "pydata/xarray" => XARRAY_VERSIONS,
        "pylint-dev/pylint" => PYLINT_VERSIONS,
        "pytest-dev/pytest" => PYTEST_VERSIONS,
        "scikit-learn/scikit-learn" => SKLEARN_VERSIONS,
        "sphinx-doc/sphinx" => SPHINX_VERSIONS,
        "sympy/sympy" => SYMPY_VERSIONS,
        _ => return None,
    })
}

/// The spec of `repo` at `version`, or `None` when the table has no such entry.
pub fn python_repo_spec(repo: &str, version: &str) -> Option<RepoVersionSpec> {
    if !python_repo_versions(repo)?.contains(&version) {
        return None;
    }
    let v = version;
    Some(match repo {
        "astropy/astropy" => astropy(v),
        "django/django" => django(v),
        "matplotlib/matplotlib" => matplotlib(v),
        "mwaskom/seaborn" => seaborn(v),
        "pallets/flask" => flask(v),
        "psf/requests" => base(
            "3.9",
            Some("pytest"),
            "python -m pip install .",
            TEST_PYTEST,
        ),
        "pydata/xarray" => xarray(),
        "pylint-dev/pylint" => pylint(v),
        "pytest-dev/pytest" => pytest(v),
        "scikit-learn/scikit-learn" => sklearn(v),
        "sphinx-doc/sphinx" => sphinx(v),
        "sympy/sympy" => sympy(v),
        _ => return None,
    })
}

fn base(python: &str, packages: Option<&str>, install: &str, test_cmd: &str) -> RepoVersionSpec {
    RepoVersionSpec {
        python: python.to_string(),
        packages: packages.map(str::to_string),
        install: Some(install.to_string()),
        pre_install: Vec::new(),
        eval_commands: Vec::new(),
        pip_packages: Vec::new(),
        test_cmd: test_cmd.to_string(),
        no_use_env: false,
        execute_test_as_nonroot: false,
        nano_cpus: None,
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn is_in(version: &str, set: &[&str]) -> bool {
    set.contains(&version)
}

fn sklearn(v: &str) -> RepoVersionSpec {
    let install = "python -m pip install -v --no-use-pep517 --no-build-isolation -e .";
    if is_in(v, &["0.20", "0.21", "0.22"]) {
        RepoVersionSpec {
            pip_packages: strings(&["cython", "numpy==1.19.2", "setuptools", "scipy==1.5.2"]),
            ..base(
                "3.6",
                Some("numpy scipy cython pytest pandas matplotlib"),
                install,
                TEST_PYTEST,
            )
        }
    } else {
        RepoVersionSpec {
            pip_packages: strings(&["cython", "setuptools", "numpy", "scipy"]),
            ..base(
                "3.9",
                Some(
                    "'numpy==1.19.2' 'scipy==1.5.2' 'cython==3.0.10' pytest 'pandas<2.0.0' 'matplotlib<3.9.0' \
                     setuptools pytest joblib threadpoolctl",
                ),
                install,
                TEST_PYTEST,
            )
        }
    }
}

fn flask(v: &str) -> RepoVersionSpec {
    let newer = [
        "setuptools==70.0.0",
        "click==8.1.3",
        "itsdangerous==2.1.2",
        "Jinja2==3.1.2",
        "MarkupSafe==2.1.1",
        "Werkzeug==2.3.7",
    ];
    let (python, pip): (&str, &[&str]) = match v {
        "2.0" => (
            "3.9",
            &[
                "setuptools==70.0.0",
                "Werkzeug==2.3.7",
                "Jinja2==3.0.1",
                "itsdangerous==2.1.2",
                "click==8.0.1",
                "MarkupSafe==2.1.3",
            ],
        ),
        "2.1" => ("3.10", &newer),
        _ => ("3.11", &newer),
    };
    RepoVersionSpec {
        pip_packages: strings(pip),
        ..base(
            python,
            Some("requirements.txt"),
            PIP_INSTALL_EDITABLE,
            TEST_PYTEST,
        )
    }
}

fn django(v: &str) -> RepoVersionSpec {
    let utf8_exports = [
        "export LANG=en_US.UTF-8",
        "export LC_ALL=en_US.UTF-8",
        "export PYTHONIOENCODING=utf8",
        "export LANGUAGE=en_US:en",
    ];
    match v {
        "1.7" | "1.8" | "1.9" | "1.10" | "1.11" | "2.0" | "2.1" | "2.2" => RepoVersionSpec {
            pre_install: strings(&[
                "apt-get update && apt-get install -y locales",
                "echo 'en_US UTF-8' > /etc/locale.gen",
                "locale-gen en_US.UTF-8",
            ]),
            pip_packages: strings(&["setuptools"]),
            eval_commands: strings(&utf8_exports),
            ..base(
                "3.5",
                Some("requirements.txt"),
                "python setup.py install",
                if v == "1.9" {
                    TEST_DJANGO_NO_PARALLEL
                } else {
                    TEST_DJANGO
                },
            )
        },
        "1.4" | "1.5" | "1.6" => base("3.5", None, "python setup.py install", TEST_DJANGO),
        "3.0" | "3.1" | "3.2" => RepoVersionSpec {
            eval_commands: strings(&[
                "sed -i '/en_US.UTF-8/s/^# //g' /etc/locale.gen && locale-gen",
                "export LANG=en_US.UTF-8",
                "export LANGUAGE=en_US:en",
                "export LC_ALL=en_US.UTF-8",
            ]),
            ..base(
                "3.6",
                Some("requirements.txt"),
                PIP_INSTALL_EDITABLE,
                TEST_DJANGO,
            )
        },
        "4.0" => base(
            "3.8",
            Some("requirements.txt"),
            PIP_INSTALL_EDITABLE,
            TEST_DJANGO,
        ),
        "4.1" | "4.2" => base(
            "3.9",
            Some("requirements.txt"),
            PIP_INSTALL_EDITABLE,
            TEST_DJANGO,
        ),
        _ => base(
            "3.11",
            Some("requirements.txt"),
            PIP_INSTALL_EDITABLE,
            TEST_DJANGO,
        ),
    }
}

fn seaborn(v: &str) -> RepoVersionSpec {
    let pandas = if v == "0.11" {
        "pandas==1.3.5"
    } else {
        "pandas==2.0.0"
    };
    let install = if v == "0.11" {
        PIP_INSTALL_EDITABLE
    } else {
        "python -m pip install -e .[dev]"
    };
    RepoVersionSpec {
        pip_packages: strings(&[
            "contourpy==1.1.0",
            "cycler==0.11.0",
            "fonttools==4.42.1",
            "importlib-resources==6.0.1",
            "kiwisolver==1.4.5",
            "matplotlib==3.7.2",
            "numpy==1.25.2",
            "packaging==23.1",
            pandas,
            "pillow==10.0.0",
            "pyparsing==3.0.9",
            "pytest",
            "python-dateutil==2.8.2",
            "pytz==2023.3.post1",
            "scipy==1.11.2",
            "six==1.16.0",
            "tzdata==2023.1",
            "zipp==3.16.2",
        ]),
        ..base("3.9", None, install, TEST_SEABORN)
    }
}

fn pytest(v: &str) -> RepoVersionSpec {
    let pip: &[&str] = match v {
        "4.4" => &[
            "atomicwrites==1.4.1",
            "attrs==23.1.0",
            "more-itertools==10.1.0",
            "pluggy==0.13.1",
            "py==1.11.0",
            "setuptools==68.0.0",
            "six==1.16.0",
        ],
        "4.5" => &[
            "atomicwrites==1.4.1",
            "attrs==23.1.0",
            "more-itertools==10.1.0",
            "pluggy==0.11.0",
            "py==1.11.0",
            "setuptools==68.0.0",
            "six==1.16.0",
            "wcwidth==0.2.6",
        ],
        "4.6" => &[
            "atomicwrites==1.4.1",
            "attrs==23.1.0",
            "more-itertools==10.1.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
            "six==1.16.0",
            "wcwidth==0.2.6",
        ],
        "5.0" | "5.1" | "5.2" => &[
            "atomicwrites==1.4.1",
            "attrs==23.1.0",
            "more-itertools==10.1.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
            "wcwidth==0.2.6",
        ],
        "5.3" => &[
            "attrs==23.1.0",
            "more-itertools==10.1.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
            "wcwidth==0.2.6",
        ],
        "5.4" => &[
            "py==1.11.0",
            "packaging==23.1",
            "attrs==23.1.0",
            "more-itertools==10.1.0",
            "pluggy==0.13.1",
        ],
        "6.0" => &[
            "attrs==23.1.0",
            "iniconfig==2.0.0",
            "more-itertools==10.1.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
            "toml==0.10.2",
        ],
        "6.2" | "6.3" => &[
            "attrs==23.1.0",
            "iniconfig==2.0.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
            "toml==0.10.2",
        ],
        "7.0" => &[
            "attrs==23.1.0",
            "iniconfig==2.0.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
        ],
        "7.1" | "7.2" => &[
            "attrs==23.1.0",
            "iniconfig==2.0.0",
            "packaging==23.1",
            "pluggy==0.13.1",
            "py==1.11.0",
            "tomli==2.0.1",
        ],
        _ => &[
            "iniconfig==2.0.0",
            "packaging==23.1",
            "pluggy==1.3.0",
            "exceptiongroup==1.1.3",
            "tomli==2.0.1",
        ],
    };
    let pre_install = if v == "6.3" {
        strings(&["sed -i 's/>=>=/>=/' setup.cfg"])
    } else {
        Vec::new()
    };
    RepoVersionSpec {
        pip_packages: strings(pip),
        pre_install,
        ..base("3.9", None, PIP_INSTALL_EDITABLE, TEST_PYTEST)
    }
}

fn qhull_steps(apt_line: &str) -> Vec<String> {
    let mut steps = vec![apt_line.to_string()];
    steps.extend(strings(&[
        r#"QHULL_URL="http://www.qhull.org/download/qhull-2020-src-8.0.2.tgz""#,
        r#"QHULL_TAR="/tmp/qhull-2020-src-8.0.2.tgz""#,
        r#"QHULL_BUILD_DIR="/testbed/build""#,
        r#"wget -O "$QHULL_TAR" "$QHULL_URL""#,
        r#"mkdir -p "$QHULL_BUILD_DIR""#,
        r#"tar -xvzf "$QHULL_TAR" -C "$QHULL_BUILD_DIR""#,
    ]));
    steps
}

fn matplotlib(v: &str) -> RepoVersionSpec {
    match v {
        "3.5" | "3.6" | "3.7" | "3.8" | "3.9" => {
            let install = if is_in(v, &["3.8", "3.9"]) {
                r#"python -m pip install --no-build-isolation -e ".[dev]""#
            } else {
                PIP_INSTALL_EDITABLE
            };
            RepoVersionSpec {
                pre_install: qhull_steps(
                    "apt-get -y update && apt-get -y upgrade && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                     imagemagick ffmpeg texlive texlive-latex-extra texlive-fonts-recommended texlive-xetex \
                     texlive-luatex cm-super dvipng",
                ),
                pip_packages: strings(&[
                    "contourpy==1.1.0",
                    "cycler==0.11.0",
                    "fonttools==4.42.1",
                    "ghostscript",
                    "kiwisolver==1.4.5",
                    "numpy==1.25.2",
                    "packaging==23.1",
                    "pillow==10.0.0",
                    "pikepdf",
                    "pyparsing==3.0.9",
                    "python-dateutil==2.8.2",
                    "six==1.16.0",
                    "setuptools==68.1.2",
                    "setuptools-scm==7.1.0",
                    "typing-extensions==4.7.1",
                ]),
                ..base("3.11", Some("environment.yml"), install, TEST_PYTEST)
            }
        }
        "3.1" | "3.2" | "3.3" | "3.4" => RepoVersionSpec {
            pre_install: qhull_steps(
                "apt-get -y update && apt-get -y upgrade && DEBIAN_FRONTEND=noninteractive apt-get install -y \
                 imagemagick ffmpeg libfreetype6-dev pkg-config texlive texlive-latex-extra \
                 texlive-fonts-recommended texlive-xetex texlive-luatex cm-super",
            ),
            pip_packages: strings(&["pytest", "ipython"]),
            ..base("3.8", Some("requirements.txt"), PIP_INSTALL_EDITABLE, TEST_PYTEST)
        },
        "3.0" => RepoVersionSpec {
            pre_install: qhull_steps(
                "apt-get -y update && apt-get -y upgrade && apt-get install -y imagemagick ffmpeg \
                 libfreetype6-dev pkg-config",
            ),
            pip_packages: strings(&["pytest"]),
            ..base("3.7", Some("requirements.txt"), PIP_INSTALL_EDITABLE, TEST_PYTEST)
        },
        _ => RepoVersionSpec {
            // The reference's command really has the doubled `&& &&`.
            pre_install: strings(&["apt-get -y update && apt-get -y upgrade && && apt-get install -y imagemagick ffmpeg"]),
            pip_packages: strings(&["pytest"]),
            execute_test_as_nonroot: true,
            ..base("3.5", None, "python setup.py build; python setup.py install", TEST_PYTEST)
        },
    }
}

fn sphinx(v: &str) -> RepoVersionSpec {
    let mut pre_install = strings(&["sed -i 's/pytest/pytest -rA/' tox.ini"]);
    if is_in(
        v,
        &[
            "3.0", "3.1", "3.2", "3.3", "3.4", "3.5", "4.0", "4.1", "4.2", "4.3", "4.4",
        ],
    ) {
        pre_install.extend(strings(&[
            "sed -i 's/Jinja2>=2.3/Jinja2<3.0/' setup.py",
            "sed -i 's/sphinxcontrib-applehelp/sphinxcontrib-applehelp<=1.0.7/' setup.py",
            "sed -i 's/sphinxcontrib-devhelp/sphinxcontrib-devhelp<=1.0.5/' setup.py",
            "sed -i 's/sphinxcontrib-qthelp/sphinxcontrib-qthelp<=1.0.6/' setup.py",
            "sed -i 's/alabaster>=0.7,<0.8/alabaster>=0.7,<0.7.12/' setup.py",
            r#"sed -i "s/'packaging',/'packaging', 'markupsafe<=2.0.1',/" setup.py"#,
        ]));
        if is_in(v, &["4.2", "4.3", "4.4"]) {
            pre_install.extend(strings(&[
                "sed -i 's/sphinxcontrib-htmlhelp>=2.0.0/sphinxcontrib-htmlhelp>=2.0.0,<=2.0.4/' setup.py",
                "sed -i 's/sphinxcontrib-serializinghtml>=1.1.5/sphinxcontrib-serializinghtml>=1.1.5,<=1.1.9/' setup.py",
            ]));
        } else if v == "4.1" {
            pre_install.extend(strings(&[
                "grep -q 'sphinxcontrib-htmlhelp>=2.0.0' setup.py && \
                 sed -i 's/sphinxcontrib-htmlhelp>=2.0.0/sphinxcontrib-htmlhelp>=2.0.0,<=2.0.4/' setup.py || \
                 sed -i 's/sphinxcontrib-htmlhelp/sphinxcontrib-htmlhelp<=2.0.4/' setup.py",
                "grep -q 'sphinxcontrib-serializinghtml>=1.1.5' setup.py && \
                 sed -i 's/sphinxcontrib-serializinghtml>=1.1.5/sphinxcontrib-serializinghtml>=1.1.5,<=1.1.9/' setup.py || \
                 sed -i 's/sphinxcontrib-serializinghtml/sphinxcontrib-serializinghtml<=1.1.9/' setup.py",
            ]));
        } else {
            pre_install.extend(strings(&[
                "sed -i 's/sphinxcontrib-htmlhelp/sphinxcontrib-htmlhelp<=2.0.4/' setup.py",
                "sed -i 's/sphinxcontrib-serializinghtml/sphinxcontrib-serializinghtml<=1.1.9/' setup.py",
            ]));
        }
    }
    if is_in(v, &["7.2", "7.3", "7.4", "8.0", "8.1"]) {
        pre_install.push("apt-get update && apt-get install -y graphviz".to_string());
    }
    let python = if is_in(v, &["8.0", "8.1"]) {
        "3.10"
    } else {
        "3.9"
    };
    RepoVersionSpec {
        pip_packages: strings(&["tox==4.16.0", "tox-current-env==0.0.11", "Jinja2==3.0.3"]),
        pre_install,
        ..base(
            python,
            None,
            "python -m pip install -e .[test]",
            TEST_SPHINX,
        )
    }
}

fn astropy(v: &str) -> RepoVersionSpec {
    let install = "python -m pip install -e .[test] --verbose";
    if is_in(v, &["0.1", "0.2", "0.3", "0.4", "1.1", "1.2", "1.3"]) {
        return RepoVersionSpec {
            pip_packages: strings(&[
                "attrs==17.3.0",
                "exceptiongroup==0.0.0a0",
                "execnet==1.5.0",
                "hypothesis==3.44.2",
                "cython==0.27.3",
                "jinja2==2.10",
                "MarkupSafe==1.0",
                "numpy==1.16.0",
                "packaging==16.8",
                "pluggy==0.6.0",
                "psutil==5.4.2",
                "pyerfa==1.7.0",
                "pytest-arraydiff==0.1",
                "pytest-astropy-header==0.1",
                "pytest-astropy==0.2.1",
                "pytest-cov==2.5.1",
                "pytest-doctestplus==0.1.2",
                "pytest-filter-subpackage==0.1",
                "pytest-forked==0.2",
                "pytest-mock==1.6.3",
                "pytest-openfiles==0.2.0",
                "pytest-remotedata==0.2.0",
                "pytest-xdist==1.20.1",
                "pytest==3.3.1",
                "PyYAML==3.12",
                "sortedcontainers==1.5.9",
                "tomli==0.2.0",
            ]),
            ..base(
                "3.6",
                Some("setuptools==38.2.4"),
                install,
                TEST_ASTROPY_PYTEST,
            )
        };
    }
    let pre_install = if is_in(v, &["4.1", "4.2", "4.3", "5.0", "5.1", "5.2", "v5.3"]) {
        strings(&[
            r#"sed -i 's/requires = \["setuptools",/requires = \["setuptools==68.0.0",/' pyproject.toml"#,
        ])
    } else {
        Vec::new()
    };
    let python = if v == "v5.3" { "3.10" } else { "3.9" };
    RepoVersionSpec {
        pre_install,
        pip_packages: strings(&[
            "attrs==23.1.0",
            "exceptiongroup==1.1.3",
            "execnet==2.0.2",
            "hypothesis==6.82.6",
            "iniconfig==2.0.0",
            "numpy==1.25.2",
            "packaging==23.1",
            "pluggy==1.3.0",
            "psutil==5.9.5",
            "pyerfa==2.0.0.3",
            "pytest-arraydiff==0.5.0",
            "pytest-astropy-header==0.2.2",
            "pytest-astropy==0.10.0",
            "pytest-cov==4.1.0",
            "pytest-doctestplus==1.0.0",
            "pytest-filter-subpackage==0.1.2",
            "pytest-mock==3.11.1",
            "pytest-openfiles==0.5.0",
            "pytest-remotedata==0.4.0",
            "pytest-xdist==3.3.1",
            "pytest==7.4.0",
            "PyYAML==6.0.1",
            "setuptools==68.0.0",
            "sortedcontainers==2.4.0",
            "tomli==2.0.1",
        ]),
        ..base(python, None, install, TEST_PYTEST)
    }
}

fn sympy(v: &str) -> RepoVersionSpec {
    if is_in(v, &["1.13", "1.14"]) {
        RepoVersionSpec {
            pip_packages: strings(&["mpmath==1.3.0"]),
            ..base(
                "3.9",
                Some("requirements.txt"),
                PIP_INSTALL_EDITABLE,
                TEST_SYMPY,
            )
        }
    } else {
        RepoVersionSpec {
            pip_packages: strings(&["mpmath==1.3.0", "flake8-comprehensions"]),
            ..base(
                "3.9",
                Some("mpmath flake8"),
                PIP_INSTALL_EDITABLE,
                TEST_SYMPY,
            )
        }
    }
}

fn pylint(v: &str) -> RepoVersionSpec {
    let mut spec = base(
        "3.9",
        Some("requirements.txt"),
        PIP_INSTALL_EDITABLE,
        TEST_PYTEST,
    );
    if v == "2.8" {
        spec.pip_packages = strings(&["pyenchant==3.2"]);
        spec.pre_install =
            strings(&["apt-get update && apt-get install -y libenchant-2-dev hunspell-en-us"]);
    }
    if is_in(v, &["3.0", "3.1", "3.2", "3.3", "4.0"]) {
        spec.pip_packages = strings(&["astroid==3.0.0a6", "setuptools"]);
    }
    if is_in(
        v,
        &["2.14", "2.15", "2.17", "3.0", "3.1", "3.2", "3.3", "4.0"],
    ) {
        spec.nano_cpus = Some(2_000_000_000);
    }
    spec
}

fn xarray() -> RepoVersionSpec {
    RepoVersionSpec {
        pip_packages: strings(&[
            "numpy==1.23.0",
            "packaging==23.1",
            "pandas==1.5.3",
            "pytest==7.4.0",
            "python-dateutil==2.8.2",
            "pytz==2023.3",
            "six==1.16.0",
            "scipy==1.11.1",
            "setuptools==68.0.0",
            "dask==2022.8.1",
        ]),
        no_use_env: true,
        ..base(
            "3.10",
            Some("environment.yml"),
            PIP_INSTALL_EDITABLE,
            TEST_PYTEST,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_version_has_a_spec_and_others_do_not() {
        for repo in VERIFIED_REPOS {
            for version in python_repo_versions(repo).unwrap() {
                assert!(
                    python_repo_spec(repo, version).is_some(),
                    "{repo} {version}"
                );
            }
            assert!(python_repo_spec(repo, "99.9").is_none());
        }
        assert!(python_repo_versions("pallets/click").is_none());
    }

    #[test]
    fn spot_checks_against_the_reference_table() {
        let s = python_repo_spec("django/django", "1.9").unwrap();
        assert_eq!(s.test_cmd, "./tests/runtests.py --verbosity 2");
        let s = python_repo_spec("sphinx-doc/sphinx", "4.1").unwrap();
        assert_eq!(s.pre_install.len(), 9);
        let s = python_repo_spec("astropy/astropy", "v5.3").unwrap();
        assert_eq!(s.python, "3.10");
        let s = python_repo_spec("pylint-dev/pylint", "3.0").unwrap();
        assert_eq!(s.nano_cpus, Some(2_000_000_000));
        assert_eq!(s.pip_packages, vec!["astroid==3.0.0a6", "setuptools"]);
    }
}
