#!/usr/bin/env bash
# What limits HiGHS on the planner benchmark's batch program (see
# bench/README.md, "Why 1 s is out of reach with HiGHS on seeds 1 and 3"):
#
#   1. builds skyweave-plan-bench in release mode;
#   2. writes the 1,000-job batch program of seed SEED in MPS format
#      (`skyweave-plan-bench --runs 0 --write-program`);
#   3. installs highspy (the HiGHS release the planner links) from PyPI in a
#      virtualenv under VENV, once;
#   4. runs bench/plan_program.py on the program: solve times without a
#      start, with the optimal plan as the start, with HiGHS's own improving
#      plans as starts, with a $1,000 gap tolerance; what each tight row
#      closes of the LP gap; an arc-flow formulation of the small rows.
#
# Settings: SEED=1 JOBS=1000 SKIP_BUILD=0 VENV=~/.cache/skyweave/highspy-venv
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SEED=${SEED:-1}
JOBS=${JOBS:-1000}
SKIP_BUILD=${SKIP_BUILD:-0}
VENV=${VENV:-$HOME/.cache/skyweave/highspy-venv}
BIN=${BIN:-$ROOT/target/release}
HIGHSPY_VERSION=1.15.1  # HiGHS 1.15, as built by highs-sys 1.15

die() { echo "plan_program.sh: $*" >&2; exit 1; }

if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release -p skyweave-bench --bin skyweave-plan-bench
fi
[ -x "$BIN/skyweave-plan-bench" ] || die "$BIN/skyweave-plan-bench missing: run without SKIP_BUILD=1"

if ! "$VENV/bin/python" -c "import highspy, numpy" 2>/dev/null; then
    python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet "highspy==$HIGHSPY_VERSION" numpy
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/skyweave-plan-program.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
"$BIN/skyweave-plan-bench" --jobs "$JOBS" --runs 0 --seed "$SEED" --write-program "$WORK/program.mps"
echo "== seed $SEED, $(nproc) CPUs, highspy $HIGHSPY_VERSION"
"$VENV/bin/python" bench/plan_program.py "$WORK/program.mps"
