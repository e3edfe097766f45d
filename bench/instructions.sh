#!/usr/bin/env bash
# User-space instructions the gateway executes per proxied request and per
# relayed stream, counted by valgrind's callgrind: exact and repeatable where
# timings on a shared 2-CPU machine move by 10-20% from run to run. Use it
# to judge a hot-path change before the side-by-side benchmark (bench/run.sh)
# confirms it in requests per second.
#
#   1. starts skyweave-emulator (openai dialect, 4 chunks per stream) and
#      `skyweave serve` under callgrind;
#   2. warms up, zeroes the counters, sends closed-loop load (16
#      connections) for DURATION seconds, dumps the counters;
#   3. prints instructions per request (non-streaming) and per stream.
#
# Settings: DURATION=6 SKIP_BUILD=0 KEEP_WORK=0 TOKIO_WORKER_THREADS=2
# (KEEP_WORK=1 keeps the callgrind files for callgrind_annotate).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${DURATION:-6}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
PORT_EMU=${PORT_EMU:-19011}
PORT_SKY=${PORT_SKY:-18091}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release

SCRIPT=instructions.sh
. bench/lib.sh

if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    apt_install valgrind
fi
if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release -p skyweave -p skyweave-emulators -p skyweave-bench
fi
for b in skyweave skyweave-emulator skyweave-load; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: run without SKIP_BUILD=1"
done

make_work instructions

"$BIN/skyweave-emulator" --listen "127.0.0.1:$PORT_EMU" --dialect openai --chunks 4 \
    --ttft-ms 0 --inter-chunk-ms 0 >"$WORK/emulator.log" 2>&1 &
PIDS+=($!)
wait_port "$PORT_EMU" "$!"

cat >"$WORK/estate.toml" <<EOF
[server]
listen = "127.0.0.1:$PORT_SKY"
ledger = false

[[deployment]]
name = "bench@local"
model = "bench-model"
provider = "openai"
cloud = "local"
region = "local"
endpoint = "http://127.0.0.1:$PORT_EMU/v1"
EOF

URL=http://127.0.0.1:$PORT_SKY/v1/chat/completions
BODY='{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY='{"model":"bench-model","messages":[{"role":"user","content":"hi"}],"stream":true}'

measure() { # NAME MODE BODY
    local name=$1 mode=$2 body=$3 out=$WORK/callgrind.$1
    RUST_LOG=warn TOKIO_WORKER_THREADS=${TOKIO_WORKER_THREADS:-2} valgrind --tool=callgrind --callgrind-out-file="$out" \
        "$BIN/skyweave" serve --config "$WORK/estate.toml" >"$WORK/skyweave-$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port "$PORT_SKY" "$pid"
    "$BIN/skyweave-load" "$mode" --url "$URL" --body "$body" -c 16 -d 3s --warmup 0s >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$BIN/skyweave-load" "$mode" --url "$URL" --body "$body" -c 16 -d "${DURATION}s" --warmup 0s \
        >"$WORK/load-$name.txt"
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    local count instructions
    count=$(grep -oE '^(requests|streams): [0-9]+' "$WORK/load-$name.txt" | grep -oE '[0-9]+$')
    # The dump after zeroing is the file with a part number, `Trigger: dump`.
    instructions=$(grep -l '^desc: Trigger: dump' "$out".* | xargs grep -h '^summary:' | awk '{print $2}')
    [ -n "$count" ] && [ "$count" -gt 0 ] && [ -n "$instructions" ] ||
        die "no measurement for $name (files in $WORK)"
    printf "%-10s %8d measured, %8d instructions each\n" "$name" "$count" \
        "$((instructions / count))"
}

echo "== user-space instructions of skyweave serve (callgrind, 16 connections, ${DURATION}s)"
measure completion rps "$BODY"
measure stream stream "$STREAM_BODY"
