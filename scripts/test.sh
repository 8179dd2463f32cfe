#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: set-up (packages, dockerd, images), lints, then every test
# against the real Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The tools take the sandbox crate without its Docker backend: that configuration must build on its own too.
cargo clippy -p swe-env-sandbox --no-default-features --all-targets --quiet -- -D warnings
echo "==> fixture tasks file is in sync with images/fixtures"
python3 images/fixtures/gen_tasks.py --check
echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
