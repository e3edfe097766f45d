#!/usr/bin/env bash
# Planner benchmark: how long `skyweave plan` takes to place one job and a
# batch of 1,000 on the shipped catalog, with quotas, private capacity and
# commitments that bind (see bench/README.md, "Planner benchmark").
#
#   1. builds skyweave and skyweave-plan-bench in release mode;
#   2. skyweave-plan-bench times Planner::plan in process (RUNS runs per
#      size; min and median) and writes the largest batch as a job file and
#      an estate file;
#   3. times `skyweave plan --estate E --json JOBS` on those files once, end
#      to end (process start, catalog and file parsing, planning, JSON out).
#
# Settings: JOBS="1 1000" RUNS=5 SEED=1 TARGET_SECONDS=1 SKIP_BUILD=0 KEEP_WORK=0
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

JOBS=${JOBS:-1 1000}
RUNS=${RUNS:-5}
SEED=${SEED:-1}
TARGET_SECONDS=${TARGET_SECONDS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
BIN=${BIN:-$ROOT/target/release}  # where the built binaries are

die() { echo "plan.sh: $*" >&2; exit 1; }

if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release -p skyweave -p skyweave-bench --bin skyweave --bin skyweave-plan-bench
fi
for b in skyweave skyweave-plan-bench; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: run without SKIP_BUILD=1"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/skyweave-plan-bench.XXXXXX")
cleanup() {
    if [ "$KEEP_WORK" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

sizes=()
for n in $JOBS; do sizes+=(--jobs "$n"); done

echo "== Planner::plan in process ($(nproc) CPUs, $(uname -m))"
bench_status=0
"$BIN/skyweave-plan-bench" "${sizes[@]}" --runs "$RUNS" --seed "$SEED" \
    --target-seconds "$TARGET_SECONDS" \
    --write-jobs "$WORK/jobs.toml" --write-estate "$WORK/estate.toml" || bench_status=$?
[ "$bench_status" -le 1 ] || die "skyweave-plan-bench failed ($bench_status)"

echo
echo "== skyweave plan end to end, once (largest batch)"
start=$(date +%s%N)
cli_status=0
# The workload's commitments run through 2026; plan as of a day inside them.
SKYWEAVE_TODAY=2026-06-30 "$BIN/skyweave" plan --estate "$WORK/estate.toml" --json "$WORK/jobs.toml" > "$WORK/plan.json" \
    || cli_status=$?
end=$(date +%s%N)
# 0: every job placed; 3: some jobs cannot be placed (expected: the batch has
# jobs whose residency or deadline no offering meets).
[ "$cli_status" -eq 0 ] || [ "$cli_status" -eq 3 ] || die "skyweave plan failed ($cli_status)"
field() { grep -m1 "^  \"$1\": " "$WORK/plan.json" | sed 's/.*: //; s/,$//'; }
awk -v ns="$((end - start))" -v code="$cli_status" -v placed="$(field placed)" \
    -v unplaced="$(field unplaced)" -v objective="$(field objective_usd)" 'BEGIN {
        printf "skyweave plan: %.3f s wall (exit %d); %s placed, %s unplaced; objective %.2f USD\n",
            ns / 1e9, code, placed, unplaced, objective
    }'
exit "$bench_status"
