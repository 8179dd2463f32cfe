//! Loads the whole SWE-bench Verified file (shared/datasets, beside the repository) and checks what it holds:
//! 500 rows, the per-repository counts, and that every row gets a spec and an eval script.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use swe_env_grading::dataset::load_dataset_file;
use swe_env_grading::eval_script::{
    make_test_spec, EvalScriptConfig, END_TEST_OUTPUT, START_TEST_OUTPUT,
};
use swe_env_grading::specs::VERIFIED_REPOS;

fn verified_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/swe-bench-verified.jsonl")
}

#[test]
fn verified_loads_all_rows_with_the_known_repo_counts() {
    let loaded = load_dataset_file(&verified_path()).expect("read verified");
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert_eq!(loaded.instances.len(), 500);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for inst in &loaded.instances {
        *counts.entry(inst.repo.as_str()).or_default() += 1;
        assert_eq!(
            inst.environment_setup_commit.len(),
            40,
            "{}",
            inst.instance_id
        );
        assert!(!inst.fail_to_pass.is_empty(), "{}", inst.instance_id);
    }
    let expected: BTreeMap<&str, usize> = BTreeMap::from([
        ("astropy/astropy", 22),
        ("django/django", 231),
        ("matplotlib/matplotlib", 34),
        ("mwaskom/seaborn", 2),
        ("pallets/flask", 1),
        ("psf/requests", 8),
        ("pydata/xarray", 22),
        ("pylint-dev/pylint", 10),
        ("pytest-dev/pytest", 19),
        ("scikit-learn/scikit-learn", 32),
        ("sphinx-doc/sphinx", 44),
        ("sympy/sympy", 75),
    ]);
    assert_eq!(counts, expected);
    assert_eq!(
        counts.keys().copied().collect::<Vec<_>>(),
        VERIFIED_REPOS.to_vec()
    );
    assert_eq!(
        loaded
            .get("django__django-11099")
            .map(|i| i.version.as_str()),
        Some("3.0")
    );
}

#[test]
fn every_verified_row_gets_an_eval_script_with_markers() {
    let loaded = load_dataset_file(&verified_path()).expect("read verified");
    for inst in &loaded.instances {
        let spec = make_test_spec(inst, &EvalScriptConfig::default())
            .unwrap_or_else(|e| panic!("{}: {e}", inst.instance_id));
        let start = spec
            .eval_script
            .find(START_TEST_OUTPUT)
            .expect("start marker");
        let end = spec.eval_script.find(END_TEST_OUTPUT).expect("end marker");
        assert!(start < end, "{}", inst.instance_id);
        assert!(
            spec.eval_script[start..end].contains(&spec.test_command),
            "{}",
            inst.instance_id
        );
    }
}

#[test]
fn fixture_tasks_build_row_defined_specs() {
    use swe_env_grading::specs::{spec_for_instance, ParserFamily, SpecSource};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/fixtures/tasks.jsonl");
    let loaded = load_dataset_file(&path).expect("read fixture tasks");
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    assert!(!loaded.instances.is_empty());
    for inst in &loaded.instances {
        let task = spec_for_instance(inst).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(task.source, SpecSource::Row);
        assert_eq!(task.parser, ParserFamily::Pytest);
        let spec = make_test_spec(inst, &EvalScriptConfig::default()).expect("eval script");
        let test_cmd = inst
            .test_cmd
            .as_deref()
            .expect("fixture rows carry test_cmd");
        assert!(
            spec.test_command.starts_with(test_cmd),
            "{}",
            inst.instance_id
        );
        assert!(!spec.directives.is_empty(), "{}", inst.instance_id);
        match &inst.activate {
            Some(activate) => assert_eq!(
                spec.eval_script_list[0],
                activate.trim(),
                "{}",
                inst.instance_id
            ),
            None => assert_eq!(
                spec.eval_script_list[..2],
                [
                    "source /opt/miniconda3/bin/activate",
                    "conda activate testbed"
                ],
                "{}",
                inst.instance_id
            ),
        }
        assert!(
            spec.eval_script.contains(">>>>> Test Exit Code"),
            "{}",
            inst.instance_id
        );
        assert_eq!(spec.image, inst.image);
    }
}
