#!/usr/bin/env bash
# What limits HiGHS on the planner benchmark's batch program (see
# bench/README.md, "Why 1 s is out of reach with HiGHS on seeds 1 and 3"):
#
#   1. builds skyweave-plan-bench in release mode;
#   2. writes the 1,000-job batch program of seed SEED in MPS format
#      (`skyweave-plan-bench --runs 0 --write-program`);
#   3. installs highspy (the HiGHS release the planner links) from PyPI in a
#      virtualenv under VENV, once (python3-venv from Debian if missing);
#   4. runs bench/plan_program.py on the program: solve times without a
#      start, with the optimal plan as the start, with HiGHS's own improving
#      plans as starts, with a $1,000 gap tolerance; what each tight row
#      closes of the LP gap; an arc-flow formulation of the small rows.
#
# Settings: SEED=1 JOBS=1000 SKIP_BUILD=0 KEEP_WORK=0
#           VENV=~/.cache/skyweave/highspy-venv
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SEED=${SEED:-1}
JOBS=${JOBS:-1000}
SKIP_BUILD=${SKIP_BUILD:-0}
VENV=${VENV:-$HOME/.cache/skyweave/highspy-venv}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
HIGHSPY_VERSION=1.15.1  # HiGHS 1.15, as built by highs-sys 1.15

SCRIPT=plan_program.sh
. bench/lib.sh

if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release -p skyweave-bench --bin skyweave-plan-bench
fi
[ -x "$BIN/skyweave-plan-bench" ] || die "$BIN/skyweave-plan-bench missing: run without SKIP_BUILD=1"

if ! "$VENV/bin/python" -c "import highspy, numpy" 2>/dev/null; then
    python3 -c "import ensurepip" 2>/dev/null || apt_install python3-venv
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "highspy==$HIGHSPY_VERSION" numpy
fi

make_work plan-program
"$BIN/skyweave-plan-bench" --jobs "$JOBS" --runs 0 --seed "$SEED" --write-program "$WORK/program.mps"
echo "== seed $SEED, $(nproc) CPUs, highspy $HIGHSPY_VERSION"
"$VENV/bin/python" bench/plan_program.py "$WORK/program.mps"
