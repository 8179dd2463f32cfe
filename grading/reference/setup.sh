#!/usr/bin/env bash
# Creates the Python venv holding the reference implementation (swebench 4.1.0) for the differential tests in
# grading/tests/spec_reference.rs. Idempotent: an existing, working venv is left alone.
#
#   SWE_ENV_REF_VENV  venv path (default: <repo>/target/swebench-ref-venv)
#   PYTHON            interpreter used to create it (default: python3)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$here/../.." && pwd)
venv=${SWE_ENV_REF_VENV:-$repo_root/target/swebench-ref-venv}
python=${PYTHON:-python3}

ready() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import swebench.harness.test_spec.test_spec' 2>/dev/null; }
if ready; then
    echo "reference venv ready: $venv"
    exit 0
fi

# Test binaries run in parallel and each may call this script: one builds, the others wait and then find it
# ready (a second build would replace the venv under a test that is already using it).
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if ready; then
    echo "reference venv ready: $venv"
    exit 0
fi

# Build beside the final path and move it in place at the end, so a half-built venv is never taken as ready.
partial="$venv.partial.$$"
trap 'rm -rf "$partial"' EXIT
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$partial"
"$partial/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps swebench==4.1.0
cp "$here/requirements.txt" "$partial/requirements.txt"
"$partial/bin/python" -m pip install --quiet --disable-pip-version-check -r "$partial/requirements.txt"
"$partial/bin/python" -c 'import swebench, swebench.harness.test_spec.test_spec; assert swebench.__version__ == "4.1.0", swebench.__version__'

# Only `bin/python -m ...` is used, which keeps working after a move (console-script shebangs would not).
rm -rf "$venv"
mv "$partial" "$venv"
trap - EXIT
echo "reference venv ready: $venv"
