#!/usr/bin/env bash
# The main job on the embedded defaults, on a fresh machine: set-up (packages, dockerd, images), then the gold agent
# on the fixture tasks end to end (episodes → submissions → grading in fresh containers → resolved rate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
exec ./target/release/swe-env run-benchmark fixtures --agent gold "$@"
