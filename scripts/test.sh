#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need and runs
# every check CI runs: formatting, lints, and all tests (unit tests beside the
# code, the emulator crate's tests, and the integration-test binary that drives
# the real CLI over real sockets, including the official `openai` Python SDK).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
venv="$target_dir/test-venv"
requirements=crates/skyweave/tests/python/requirements.txt
if ! "$venv/bin/python" -c "import openai" >/dev/null 2>&1 \
    || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo "== installing the Python test dependencies into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
export SKYWEAVE_TEST_PYTHON="$venv/bin/python"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
