#!/usr/bin/env bash
# Makes a small Python repository with real history for trying `swe-env mine history` (README) and for measuring its
# throughput: N commits that each fix one bug and add the test that shows it (valid issue-fix candidates), one
# source-only commit (no_tests) and one test-only commit (no_source). Its tests run with pytest in any fixture
# image (`--image swe-env/fixture-retrykit:latest --activate 'source /opt/venv/bin/activate'`).
#
# Usage: scripts/mine-demo-repo.sh DIR [N]   (DIR must not exist; N fix commits, default 6)
set -euo pipefail
dir=${1:?usage: scripts/mine-demo-repo.sh DIR [N]}
n=${2:-6}
if [ -e "$dir" ]; then
    echo "error: $dir exists; give a new directory" >&2
    exit 2
fi
mkdir -p "$dir/demo" "$dir/tests"
cd "$dir"
git init -q -b main
export GIT_AUTHOR_NAME=demo GIT_AUTHOR_EMAIL=demo@example.invalid GIT_COMMITTER_NAME=demo \
    GIT_COMMITTER_EMAIL=demo@example.invalid
day=0
commit() {
    day=$((day + 1))
    GIT_AUTHOR_DATE="2024-01-$(printf %02d "$day")T12:00:00Z" GIT_COMMITTER_DATE="2024-01-$(printf %02d "$day")T12:00:00Z" \
        git commit -q -m "$1"
}
# Function i should return i * x; each is wrong (returns i + x) until its fix commit.
{
    echo '"""Demo functions for swe-env mine."""'
    for i in $(seq 1 "$n"); do
        printf '\n\ndef scale%d(x):\n    """Return x scaled by %d."""\n    return x + %d\n' "$i" "$i" "$i"
    done
} > demo/__init__.py
: > conftest.py
printf 'import demo\n\n\ndef test_import():\n    assert demo.__doc__\n' > tests/test_base.py
git add -A
commit "Initial demo package"
for i in $(seq 1 "$n"); do
    sed -i "s/    return x + $i\$/    return x * $i/" demo/__init__.py
    printf 'from demo import scale%d\n\n\ndef test_scale%d():\n    assert scale%d(3) == %d\n\n\ndef test_scale%d_zero():\n    assert scale%d(0) == 0\n' \
        "$i" "$i" "$i" "$((3 * i))" "$i" "$i" > "tests/test_scale$i.py"
    git add -A
    commit "Fix scale$i: it added instead of multiplying

scale$i(3) returned $((3 + i)); it should return $((3 * i))."
done
printf '\n\ndef version():\n    return "1.0"\n' >> demo/__init__.py
git add -A
commit "Add version() (no test)"
printf '\n\ndef test_import_again():\n    assert demo\n' >> tests/test_base.py
git add -A
commit "More import tests"
echo "made $dir: $((n + 3)) commits, $n valid candidates"
