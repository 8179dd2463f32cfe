#!/usr/bin/env python3
"""Reference side of swe-env's log-parser differential test (grading/tests/parse_reference.rs).

Runs inside the swebench==4.1.0 venv made by grading/reference/setup.sh. Reads JSON lines
{"family": NAME, "log": TEXT} on stdin and writes one JSON line per input:
  {"parse": RESULT, "eval": RESULT}
where "parse" is the family's parser applied to the whole text, and "eval" is the reference's
get_logs_eval() on the text written to a file (markers, failure markers, fallback, newline
translation on read). RESULT is {"map": {test: status}, "found": bool} ("found" only for eval)
or {"raises": "ExceptionName"} when the reference raises.
"""

import json
import os
import sys
import tempfile
import types

from swebench.harness.constants import MAP_REPO_VERSION_TO_SPECS
from swebench.harness.grading import get_logs_eval
from swebench.harness.log_parsers import MAP_REPO_TO_PARSER
from swebench.harness.log_parsers import python as parsers

# Family name -> (parser function, one repository that uses it).
FAMILIES = {
    "pytest": (parsers.parse_log_pytest, "pytest-dev/pytest"),
    "pytest_options": (parsers.parse_log_pytest_options, "psf/requests"),
    "pytest_v2": (parsers.parse_log_pytest_v2, "astropy/astropy"),
    "django": (parsers.parse_log_django, "django/django"),
    "sympy": (parsers.parse_log_sympy, "sympy/sympy"),
    "matplotlib": (parsers.parse_log_matplotlib, "matplotlib/matplotlib"),
    "seaborn": (parsers.parse_log_seaborn, "mwaskom/seaborn"),
}

for name, (function, repo) in FAMILIES.items():
    assert MAP_REPO_TO_PARSER[repo] is function, (name, repo)


def run(callable_):
    try:
        return {"map": callable_()}
    except Exception as error:  # the reference's own exception, reported as data
        return {"raises": type(error).__name__}


def evaluate(family, log):
    function, repo = FAMILIES[family]
    version = next(iter(MAP_REPO_VERSION_TO_SPECS[repo]))
    spec = types.SimpleNamespace(repo=repo, version=version)
    fd, path = tempfile.mkstemp(suffix=".log")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(log)
        status_map, found = get_logs_eval(spec, path)
        return {"map": status_map, "found": found}
    except Exception as error:
        return {"raises": type(error).__name__}
    finally:
        os.unlink(path)


def main():
    for line in sys.stdin:
        request = json.loads(line)
        family, log = request["family"], request["log"]
        function, _ = FAMILIES[family]
        out = {"parse": run(lambda: function(log, None)), "eval": evaluate(family, log)}
        sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
