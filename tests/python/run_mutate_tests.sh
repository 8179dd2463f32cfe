#!/usr/bin/env bash
# Runs tests/python/test_mutate.py under every Python the mutation script must support that is on this machine:
# /root/.pyenv/versions/3.{6..12}*/bin/python3 and /usr/bin/python3. Prints which ran; fails if any fails or none ran.
set -uo pipefail
cd "$(dirname "$0")/../.."
pythons=()
for p in /root/.pyenv/versions/3.{6,7,8,9,10,11,12}*/bin/python3 /usr/bin/python3; do
  [ -x "$p" ] && pythons+=("$p")
done
if [ ${#pythons[@]} -eq 0 ]; then
  echo "run_mutate_tests: no Python found" >&2
  exit 1
fi
failed=()
for p in "${pythons[@]}"; do
  v=$("$p" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?')
  log=$(mktemp)
  if "$p" tests/python/test_mutate.py >"$log" 2>&1; then
    echo "PASS python $v ($p): $(grep -E '^Ran ' "$log")"
  else
    echo "FAIL python $v ($p)"
    cat "$log"
    failed+=("$v")
  fi
  rm -f "$log"
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "run_mutate_tests: failed under ${failed[*]}" >&2
  exit 1
fi
echo "run_mutate_tests: all ${#pythons[@]} interpreters passed"
