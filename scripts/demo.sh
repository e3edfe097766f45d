#!/usr/bin/env bash
# The README's first command: installs the build dependencies if needed, then
# runs `skyweave demo` (three simulated clouds; routing and failover shown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec cargo run --release -p skyweave -- demo "$@"
