"""Prints, as one JSON document, what swebench 4.1.0 computes for a dataset, for grading/tests/spec_reference.rs.

Per instance: the eval script (`TestSpec.eval_script`), the test command, the test directives, the files reset to
the base commit (`get_modified_files`), FAIL_TO_PASS / PASS_TO_PASS and the log parser's name. Also the spec
table (`MAP_REPO_VERSION_TO_SPECS`) of the requested repositories, and `get_modified_files` for extra patches.

The TestSpec is assembled from the reference's own functions exactly as `make_test_spec` does, except that
`env_script_list` is left empty: building it downloads requirements/environment files over the network, and the
environment script plays no part in the eval script.

usage: python dump_reference.py DATASET.jsonl [PATCHES.json] [REPO ...]
"""

import json
import sys

from swebench.harness.constants import MAP_REPO_TO_EXT, MAP_REPO_VERSION_TO_SPECS
from swebench.harness.log_parsers import MAP_REPO_TO_PARSER
from swebench.harness.test_spec.create_scripts import make_eval_script_list, make_repo_script_list
from swebench.harness.test_spec.python import get_test_directives
from swebench.harness.test_spec.test_spec import TestSpec
from swebench.harness.utils import get_modified_files


def from_json_or_obj(instance, key):
    value = instance.get(key, [])
    return json.loads(value) if isinstance(value, str) else value


def reference_row(instance):
    env_name = "testbed"
    repo_directory = f"/{env_name}"
    repo = instance["repo"]
    specs = MAP_REPO_VERSION_TO_SPECS[repo][instance["version"]]
    base_commit = instance["base_commit"]
    spec = TestSpec(
        instance_id=instance["instance_id"],
        repo=repo,
        version=instance["version"],
        repo_script_list=make_repo_script_list(specs, repo, repo_directory, base_commit, env_name),
        eval_script_list=make_eval_script_list(
            instance, specs, env_name, repo_directory, base_commit, instance["test_patch"]
        ),
        env_script_list=[],
        arch="x86_64",
        FAIL_TO_PASS=from_json_or_obj(instance, "FAIL_TO_PASS"),
        PASS_TO_PASS=from_json_or_obj(instance, "PASS_TO_PASS"),
        language=MAP_REPO_TO_EXT[repo],
        docker_specs=specs.get("docker_specs", {}),
        namespace=None,
    )
    directives = get_test_directives(instance)
    return {
        "instance_id": spec.instance_id,
        "eval_script": spec.eval_script,
        "test_command": " ".join([specs["test_cmd"], *directives]),
        "directives": directives,
        "test_files": get_modified_files(instance["test_patch"]),
        "FAIL_TO_PASS": spec.FAIL_TO_PASS,
        "PASS_TO_PASS": spec.PASS_TO_PASS,
        "parser": MAP_REPO_TO_PARSER[repo].__name__,
    }


def main(argv):
    dataset_path = argv[1]
    patches = json.load(open(argv[2], encoding="utf-8")) if len(argv) > 2 else []
    repos = argv[3:]
    with open(dataset_path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = {
        "swebench_version": __import__("swebench").__version__,
        "instances": [reference_row(row) for row in rows],
        "specs": {repo: MAP_REPO_VERSION_TO_SPECS[repo] for repo in repos},
        "parsers": {repo: MAP_REPO_TO_PARSER[repo].__name__ for repo in repos},
        "modified_files": [get_modified_files(p) for p in patches],
    }
    json.dump(out, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv)
