#!/usr/bin/env bash
# Builds every image the project needs: the base image (images/base/build.sh), then one image per fixture task
# (images/fixtures/<task>/, recipe images/fixtures/Dockerfile), named swe-env/fixture-<task>:latest.
#
# Idempotent: a fixture image is skipped when it exists and was built from the same inputs (its label
# swe-env.context-digest covers the task's tree, the set-up scripts and the base image id); it is rebuilt when
# any of those changed, or always with FORCE=1.
#
# Env:
#   FORCE=1          rebuild the fixture images even when up to date (Docker's layer cache still applies)
#   NO_CACHE=1       build without Docker's layer cache (implies nothing about FORCE; combine for a clean rebuild)
#   FORCE_BASE=1     rebuild the base image too (slow: debootstrap); passed to images/base/build.sh as FORCE
#   CA_BUNDLE=path   CA bundle copied into each build as setup/ca.crt and exported to pip/git/ssl during set-up
#                    (default: /etc/ssl/certs/ca-certificates.crt when present, else none). Needed only if a
#                    set-up step reaches a package registry through a TLS-intercepting proxy; the fixtures
#                    themselves install offline.
#   BUILD_NETWORK    network for RUN steps (default none, which proves the builds are offline; set to default
#                    together with CA_BUNDLE for a fixture that must download something)
#   TASKS="a b"      build only these fixture tasks (default: all)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/fixtures"
BUILD_NETWORK=${BUILD_NETWORK:-none}
BASE_IMAGE=swe-env/base:bookworm

if [ -z "${CA_BUNDLE+x}" ]; then
    CA_BUNDLE=""
    [ -f /etc/ssl/certs/ca-certificates.crt ] && CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
elif [ -n "$CA_BUNDLE" ] && [ ! -f "$CA_BUNDLE" ]; then
    echo "error: CA_BUNDLE $CA_BUNDLE is not a file" >&2
    exit 1
fi

now_ms() { date +%s%3N; }
secs_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }
started=$(now_ms)
FORCE="${FORCE_BASE:-0}" IMAGE="$BASE_IMAGE" "$here/base/build.sh"
base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")

# The rows in tasks.jsonl must describe what we are about to build.
python3 "$fixtures/gen_tasks.py" --check >/dev/null || {
    echo "error: images/fixtures/tasks.jsonl is out of date; run python3 images/fixtures/gen_tasks.py" >&2
    exit 1
}

work=$(mktemp -d "${TMPDIR:-/tmp}/swe-env-fixtures.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Digest of a build context (all files but the CA bundle, which does not change the image's behaviour) plus the
# base image id; stored as a label to decide whether an existing image is up to date.
context_digest() {
    (
        cd "$1"
        find . -type f ! -path ./setup/ca.crt -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        echo "base $base_id"
    ) | sha256sum | cut -d' ' -f1
}

selected=" ${TASKS:-} "
built=0
skipped=0
while read -r task env image; do
    if [ -n "${TASKS:-}" ] && [[ "$selected" != *" $task "* ]]; then
        continue
    fi
    ctx="$work/$task"
    mkdir -p "$ctx/setup"
    python3 "$fixtures/gen_tasks.py" export "$task" "$ctx"
    mv "$ctx/commit.env" "$ctx/setup/commit.env"
    cp "$fixtures/Dockerfile" "$ctx/Dockerfile"
    cp "$fixtures/env/setup.sh" "$fixtures/env/conda-activate" "$ctx/setup/"
    if [ -n "$CA_BUNDLE" ]; then
        cp "$CA_BUNDLE" "$ctx/setup/ca.crt"
    else
        : >"$ctx/setup/ca.crt"
    fi
    digest=$(context_digest "$ctx")
    if [ "${FORCE:-0}" != 1 ]; then
        current=$(docker image inspect --format '{{index .Config.Labels "swe-env.context-digest"}}' "$image" 2>/dev/null || true)
        if [ "$current" = "$digest" ]; then
            echo "$image is up to date (FORCE=1 rebuilds)"
            skipped=$((skipped + 1))
            continue
        fi
    fi
    # shellcheck disable=SC1091
    base_commit=$(. "$ctx/setup/commit.env" && echo "$BASE_COMMIT")
    t0=$(now_ms)
    cache_flag=()
    [ "${NO_CACHE:-0}" = 1 ] && cache_flag=(--no-cache)
    if ! docker build --network "$BUILD_NETWORK" "${cache_flag[@]}" \
        --label "swe-env.fixture=$task" \
        --label "swe-env.env-style=$env" \
        --label "swe-env.base-commit=$base_commit" \
        --label "swe-env.context-digest=$digest" \
        -t "$image" "$ctx" >"$work/$task.log" 2>&1; then
        tail -n 40 "$work/$task.log" >&2
        echo "error: building $image failed" >&2
        exit 1
    fi
    echo "built $image ($env env, base ${base_commit:0:12}) in $(secs_since "$t0")s"
    built=$((built + 1))
done < <(python3 "$fixtures/gen_tasks.py" list)

echo "fixture images: $built built, $skipped up to date ($(secs_since "$started")s total)"
