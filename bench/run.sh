#!/usr/bin/env bash
# Side-by-side benchmark of the skyweave gateway.
#
# Same machine, same run, same upstream emulator: requests go
#   direct   -> skyweave-emulator
#   nginx    -> nginx (proxy_pass, upstream keepalive) -> skyweave-emulator
#   skyweave -> skyweave serve                          -> skyweave-emulator
# with two kinds of load:
#   closed loop: 64 connections each sending as fast as it can (throughput,
#                CPU per request; on 2 CPUs this saturates the machine);
#   fixed rate:  open loop, requests sent at a fixed rate well below
#                saturation, latency measured from each intended send time
#                (the added-latency targets are judged on these);
# non-streaming and streaming each, then 1,000 slow streams are held open
# through each proxy to read resident memory.
#
# Prints a table and writes bench/RESULTS.md. See bench/README.md.
# Every setting below can be overridden from the environment, e.g.
#   DURATION=30s CONNECTIONS=128 RATE=8000 PIN=none bench/run.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CONNECTIONS=${CONNECTIONS:-64}             # closed loop, non-streaming
STREAM_CONNECTIONS=${STREAM_CONNECTIONS:-64} # closed loop, streaming
RATE=${RATE:-5000}                         # fixed rate, non-streaming: requests/s
RATE_CONNECTIONS=${RATE_CONNECTIONS:-64}
STREAM_RATE=${STREAM_RATE:-2000}           # fixed rate, streaming: streams/s
STREAM_RATE_CONNECTIONS=${STREAM_RATE_CONNECTIONS:-64}
DURATION=${DURATION:-10s}                  # measured time per run
WARMUP=${WARMUP:-2s}                       # load before measuring
ROUNDS=${ROUNDS:-3}                        # runs per case and target; the median run is reported
HOLD_STREAMS=${HOLD_STREAMS:-1000}
GATEWAY_THREADS=${GATEWAY_THREADS:-2}      # skyweave runtime threads = nginx worker_processes
EMU_CHUNKS=${EMU_CHUNKS:-4}
EMU_STREAM_ARGS=${EMU_STREAM_ARGS:---ttft-ms 0 --inter-chunk-ms 0}
SLOW_ARGS=${SLOW_ARGS:---ttft-ms 0 --inter-chunk-ms 1000 --chunks 30}
# PIN=split: proxy under test on CPU 0, emulator and load generator on CPU 1.
# PIN=none:  no pinning, the scheduler places everything.
PIN=${PIN:-split}
# A run during which other processes used more than this much CPU (% of one
# CPU) is flagged as disturbed; a fixed-rate latency verdict is withheld when
# the load generator's own pacer lag p99 exceeds PACER_LAG_MAX_MS.
OTHER_CPU_MAX=${OTHER_CPU_MAX:-10}
# Seconds the whole run may spend waiting for other processes to quieten
# before a run, and re-running (once) a run they disturbed.
QUIET_BUDGET=${QUIET_BUDGET:-300}
# RT_LOAD=1: run the fixed-rate load generator at real-time priority
# (chrt -f 1), so that the emulator sharing its CPU cannot delay its timers.
RT_LOAD=${RT_LOAD:-1}
PACER_LAG_MAX_MS=${PACER_LAG_MAX_MS:-0.25}
SKIP_BUILD=${SKIP_BUILD:-0}
RESULTS=${RESULTS:-$ROOT/bench/RESULTS.md}

PORT_EMU=${PORT_EMU:-19001}
PORT_SLOW=${PORT_SLOW:-19002}
PORT_SKY=${PORT_SKY:-18080}
PORT_NGINX=${PORT_NGINX:-18081}
PORT_SKY_SLOW=${PORT_SKY_SLOW:-18082}
PORT_NGINX_SLOW=${PORT_NGINX_SLOW:-18083}
PORT_NGINX_STREAM=${PORT_NGINX_STREAM:-18084}

TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
API_PATH=/v1/chat/completions
BODY='{"model":"bench-model","messages":[{"role":"user","content":"hi"}]}'
STREAM_BODY='{"model":"bench-model","messages":[{"role":"user","content":"hi"}],"stream":true}'

SCRIPT=run.sh
. bench/lib.sh
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }

find_nginx() { command -v nginx || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true; }

# ---------------------------------------------------------------- tools
command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs)"
NGINX=$(find_nginx)
[ -n "$NGINX" ] || { apt_install nginx; NGINX=$(find_nginx); }
[ -n "$NGINX" ] || die "nginx still not found after installing it"
command -v jq >/dev/null || apt_install jq
command -v taskset >/dev/null || apt_install util-linux

NPROC=$(nproc)
if [ "$PIN" = split ] && [ "$NPROC" -lt 2 ]; then
    log "only $NPROC CPU: not pinning"
    PIN=none
fi
case "$PIN" in
    split) PIN_PROXY=(taskset -c 0); PIN_UPSTREAM=(taskset -c 1); PIN_LOAD=(taskset -c 1) ;;
    none) PIN_PROXY=(); PIN_UPSTREAM=(); PIN_LOAD=() ;;
    *) die "PIN must be split or none, not $PIN" ;;
esac

RT_PREFIX=()
if [ "$RT_LOAD" = 1 ]; then
    if chrt -f 1 true 2>/dev/null; then
        RT_PREFIX=(chrt -f 1)
    else
        log "cannot use real-time priority (chrt -f 1): fixed-rate load runs at normal priority"
        RT_LOAD=0
    fi
fi

# 1,000 streams need ~2,000 sockets in the gateway and 1,000 in each peer.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" = unlimited ] || [ "$(ulimit -n)" -ge $((HOLD_STREAMS * 2 + 100)) ] ||
    log "warning: open-file limit $(ulimit -n) is low for $HOLD_STREAMS streams"

# ---------------------------------------------------------------- build
if [ "$SKIP_BUILD" != 1 ]; then
    log "building release binaries"
    cargo build --release -p skyweave -p skyweave-emulators -p skyweave-bench
fi
for b in skyweave skyweave-emulator skyweave-load; do
    [ -x "$BIN/$b" ] || die "$BIN/$b missing: build it (cargo build --release -p skyweave -p skyweave-emulators -p skyweave-bench)"
done
LOAD=("${PIN_LOAD[@]}" "$BIN/skyweave-load")

# ---------------------------------------------------------------- processes
WORK=$(mktemp -d "${TMPDIR:-/tmp}/skyweave-bench.XXXXXX")
chmod 755 "$WORK"
PIDS=()
CHILD=
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in $CHILD "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
        log "configs, logs and raw results kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs a command in the background and waits for it, so that a signal to
# this script is acted on at once rather than after the command ends.
run_fg() {
    "$@" &
    CHILD=$!
    wait "$CHILD"
}

port_free() { ! port_open "$1"; }
for p in "$PORT_EMU" "$PORT_SLOW" "$PORT_SKY" "$PORT_NGINX" "$PORT_SKY_SLOW" "$PORT_NGINX_SLOW" "$PORT_NGINX_STREAM"; do
    port_free "$p" || die "port $p on 127.0.0.1 is already in use (override the PORT_* variables)"
done

# Status code of GET http://127.0.0.1:PORT/PATH, or 000; bash only, no curl.
http_status() {
    local reply
    reply=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
        printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3 &&
        timeout 2 head -n 1 <&3) 2>/dev/null) || true
    reply=${reply#HTTP/1.? }
    printf '%s' "${reply:0:3}" | tr -cd 0-9 | sed 's/^$/000/'
}

# wait_ready NAME PID LOGFILE CHECK...: poll CHECK until it succeeds.
wait_ready() {
    local name=$1 pid=$2 logfile=$3
    shift 3
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            sed 's/^/    /' "$logfile" >&2 || true
            die "$name exited during start-up (log above)"
        fi
        if "$@"; then return 0; fi
        sleep 0.1
    done
    sed 's/^/    /' "$logfile" >&2 || true
    die "$name not ready after 30s (log above)"
}
log_has() { grep -q "$2" "$1" 2>/dev/null; }
healthy() { [ "$(http_status "$1" /healthz)" = 200 ]; }

start_emulator() { # NAME PORT ARGS...
    local name=$1 port=$2
    shift 2
    "${PIN_UPSTREAM[@]}" "$BIN/skyweave-emulator" --listen "127.0.0.1:$port" --dialect openai "$@" \
        >"$WORK/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready "$name" "$STARTED" "$WORK/$name.log" log_has "$WORK/$name.log" "listening on"
}

start_skyweave() { # NAME LISTEN_PORT UPSTREAM_PORT
    local name=$1 port=$2 upstream=$3
    cat >"$WORK/$name.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
# Like nginx's access_log off: the proxy alone. LEDGER=true measures it with
# the usage ledger recording every request.
ledger = ${LEDGER:-false}

[[deployment]]
name = "bench@local"
model = "bench-model"
provider = "openai"
cloud = "local"
region = "local"
endpoint = "http://127.0.0.1:$upstream/v1"
EOF
    RUST_LOG=warn TOKIO_WORKER_THREADS=$GATEWAY_THREADS \
        "${PIN_PROXY[@]}" "$BIN/skyweave" serve --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready "$name" "$STARTED" "$WORK/$name.log" healthy "$port"
}

start_nginx() {
    local temps="" kind
    for kind in client_body proxy fastcgi uwsgi scgi; do
        local flag=${kind/client_body/client-body}
        if "$NGINX" -V 2>&1 | grep -q -- "--http-$flag-temp-path"; then
            mkdir -p "$WORK/nginx/$kind"
            temps+="    ${kind}_temp_path $WORK/nginx/$kind;"$'\n'
        fi
    done
    local user_line=""
    [ "$(id -u)" -eq 0 ] && user_line="user root;"
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx.conf" <<EOF
# generated by bench/run.sh
$user_line
worker_processes $GATEWAY_THREADS;
worker_rlimit_nofile 65536;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx-error.log warn;
events {
    worker_connections 8192;
}
http {
    access_log off;
$temps
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream emulator {
        server 127.0.0.1:$PORT_EMU;
        keepalive 128;
        keepalive_requests 1000000;
    }
    upstream slow_emulator {
        server 127.0.0.1:$PORT_SLOW;
        keepalive 128;
        keepalive_requests 1000000;
    }
    # Non-streaming case: nginx defaults (response buffering on).
    server {
        listen 127.0.0.1:$PORT_NGINX;
        location / {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    # Streaming case: chunks are passed on as they arrive.
    server {
        listen 127.0.0.1:$PORT_NGINX_STREAM;
        location / {
            proxy_pass http://emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }
    }
    # 1,000 held streams.
    server {
        listen 127.0.0.1:$PORT_NGINX_SLOW;
        location / {
            proxy_pass http://slow_emulator;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
    "$NGINX" -t -q -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" ||
        die "generated nginx config rejected: $WORK/nginx.conf"
    "${PIN_PROXY[@]}" "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" \
        -g 'daemon off; master_process on;' >"$WORK/nginx.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
    wait_ready nginx "$STARTED" "$WORK/nginx-error.log" port_open "$PORT_NGINX_SLOW"
}

# Each start_* leaves the new process id in STARTED (and in PIDS, for the trap).
log "starting upstream emulators"
# shellcheck disable=SC2086 # the *_ARGS variables are lists of flags
start_emulator emulator "$PORT_EMU" --chunks "$EMU_CHUNKS" $EMU_STREAM_ARGS
EMU_PID=$STARTED
# shellcheck disable=SC2086
start_emulator slow-emulator "$PORT_SLOW" $SLOW_ARGS
SLOW_EMU_PID=$STARTED
log "starting nginx"
start_nginx
NGINX_PID=$STARTED
log "starting skyweave"
start_skyweave skyweave "$PORT_SKY" "$PORT_EMU"
SKY_PID=$STARTED
start_skyweave skyweave-slow "$PORT_SKY_SLOW" "$PORT_SLOW"
SKY_SLOW_PID=$STARTED

# The process whose CPU time is reported for each target.
pid_args() { # TARGET
    case "$1" in
        direct) echo "--pid $EMU_PID" ;;
        nginx) echo "--pid $NGINX_PID --include-children" ;;
        skyweave) echo "--pid $SKY_PID" ;;
    esac
}

url_of() { # TARGET CASE
    case "$1:$2" in
        direct:*) echo "http://127.0.0.1:$PORT_EMU$API_PATH" ;;
        nginx:stream) echo "http://127.0.0.1:$PORT_NGINX_STREAM$API_PATH" ;;
        nginx:*) echo "http://127.0.0.1:$PORT_NGINX$API_PATH" ;;
        skyweave:*) echo "http://127.0.0.1:$PORT_SKY$API_PATH" ;;
    esac
}

# ---------------------------------------------------------------- smoke test
for t in direct nginx skyweave; do
    for c in rps stream; do
        body=$BODY
        [ "$c" = stream ] && body=$STREAM_BODY
        out=$("${LOAD[@]}" "$c" --url "$(url_of "$t" "$c")" --body "$body" \
            --connections 1 --warmup 0s --duration 300ms --json) ||
            die "smoke test failed for $t ($c): $out"
        errors=$(jq -r .errors <<<"$out")
        [ "$errors" = 0 ] || die "smoke test for $t ($c) got $errors errors: $(jq -r .first_error <<<"$out")"
    done
done
log "smoke test passed: direct, nginx and skyweave all answer"

# ---------------------------------------------------------------- other load
# Other processes on the machine (someone's build, say) disturb the figures.
# Around every run, the machine's busy CPU time (user+nice+system in
# /proc/stat) is compared with what this benchmark's own processes used; the
# difference is "other CPU", in % of one CPU (USER_HZ is 100 ticks a second).
own_ticks() {
    local pids=("$EMU_PID" "$SLOW_EMU_PID" "$NGINX_PID" "$SKY_PID" "$SKY_SLOW_PID") kids f pid stat total=0
    for f in /proc/"$NGINX_PID"/task/*/children; do
        kids=()
        read -ra kids <"$f" 2>/dev/null || true
        pids+=("${kids[@]}")
    done
    for pid in "${pids[@]}"; do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }
        total=$((total + $(awk '{ print $12 + $13 }' <<<"$stat"))) # utime + stime
    done
    # The load generator runs are waited-for children of this shell.
    stat=$(cat "/proc/$$/stat")
    stat=${stat##*) }
    echo $((total + $(awk '{ print $14 + $15 }' <<<"$stat"))) # cutime + cstime
}
# "SECONDS BUSY STEAL OWN"
cpu_snapshot() { echo "$(date +%s.%N) $(awk '/^cpu / { print $2 + $3 + $4, $9 }' /proc/stat) $(own_ticks)"; }
# BEFORE AFTER -> "OTHER_PCT STEAL_PCT"
other_cpu() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        split(a, x, " "); split(b, y, " "); s = y[1] - x[1]
        o = (y[2] - x[2]) - (y[4] - x[4]); if (o < 0) o = 0
        printf "%.1f %.1f", o / s, (y[3] - x[3]) / s }'
}

# Before a run: wait, while the budget lasts, for a second in which other
# processes use at most OTHER_CPU_MAX.
QUIET_SPENT=0
wait_quiet() {
    local before other waited=0
    while [ "$QUIET_SPENT" -lt "$QUIET_BUDGET" ]; do
        before=$(cpu_snapshot)
        sleep 1
        read -r other _ <<<"$(other_cpu "$before" "$(cpu_snapshot)")"
        awk "BEGIN { exit !($other <= $OTHER_CPU_MAX) }" && return 0
        [ "$waited" -gt 0 ] || log "other processes are using ${other}% of a CPU: waiting for them to quieten"
        waited=$((waited + 1))
        QUIET_SPENT=$((QUIET_SPENT + 1))
    done
    [ "$waited" -eq 0 ] || log "quiet-wait budget (QUIET_BUDGET=${QUIET_BUDGET}s) used up: going on"
}

# ---------------------------------------------------------------- load cases
# Targets run one after the other, alternating per round, so that each sees
# the same machine state. With ROUNDS>1 the median run is kept: by req/s for
# the closed-loop cases, by the judged p99 for the fixed-rate ones.
#   rps, stream              closed loop, CONNECTIONS / STREAM_CONNECTIONS
#   rps-rate, stream-rate    open loop at RATE / STREAM_RATE
RUNS=$WORK/runs
mkdir -p "$RUNS"
run_case() { # CASE TARGET ROUND
    local c=$1 t=$2 r=$3 kind body=$BODY conns what
    local rate=() prio=()
    case "$c" in
        rps) kind=rps; conns=$CONNECTIONS ;;
        stream) kind=stream; body=$STREAM_BODY; conns=$STREAM_CONNECTIONS ;;
        rps-rate) kind=rps; conns=$RATE_CONNECTIONS; rate=(--rate "$RATE"); prio=("${RT_PREFIX[@]}") ;;
        stream-rate) kind=stream; body=$STREAM_BODY; conns=$STREAM_RATE_CONNECTIONS; rate=(--rate "$STREAM_RATE"); prio=("${RT_PREFIX[@]}") ;;
    esac
    what="$conns connections"
    [ ${#rate[@]} -eq 0 ] || what="${rate[1]}/s over $what"
    local f=$RUNS/$c-$t-$r.json before other steal started attempt
    for attempt in 1 2; do
        wait_quiet
        log "$c: $t (round $r/$ROUNDS, $what, ${WARMUP} warm-up + ${DURATION})"
        started=$SECONDS
        before=$(cpu_snapshot)
        # shellcheck disable=SC2046 # pid_args is a list of flags
        run_fg "${prio[@]}" "${LOAD[@]}" "$kind" --url "$(url_of "$t" "$kind")" --body "$body" --connections "$conns" \
            "${rate[@]}" --warmup "$WARMUP" --duration "$DURATION" $(pid_args "$t") --json >"$f" ||
            die "$c run against $t failed: $(cat "$f")"
        read -r other steal <<<"$(other_cpu "$before" "$(cpu_snapshot)")"
        jq --argjson o "$other" --argjson s "$steal" '. + {other_cpu_pct: $o, steal_pct: $s}' "$f" >"$f.tmp"
        mv "$f.tmp" "$f"
        awk "BEGIN { exit !($other > $OTHER_CPU_MAX) }" || return 0
        if [ "$attempt" -eq 1 ] && [ $((QUIET_SPENT + SECONDS - started)) -le "$QUIET_BUDGET" ]; then
            log "warning: other processes used ${other}% of a CPU during this run: running it again"
            QUIET_SPENT=$((QUIET_SPENT + SECONDS - started))
        else
            log "warning: other processes used ${other}% of a CPU during this run"
            return 0
        fi
    done
}
for c in rps stream rps-rate stream-rate; do
    case "$c" in
        rps | stream) key=.rps ;;
        rps-rate) key=.latency.p99_ms ;;
        stream-rate) key=.ttft.p99_ms ;;
    esac
    for r in $(seq 1 "$ROUNDS"); do
        for t in direct nginx skyweave; do run_case "$c" "$t" "$r"; done
    done
    for t in direct nginx skyweave; do
        jq -s "sort_by($key) | .[(length - 1) / 2 | floor]" "$RUNS/$c-$t-"*.json >"$RUNS/$c-$t.json"
    done
done

# ---------------------------------------------------------------- held streams
hold() { # NAME URL PID [extra args]
    local name=$1 url=$2 pid=$3
    shift 3
    log "hold: $HOLD_STREAMS streams through $name"
    run_fg "${LOAD[@]}" hold --url "$url" --body "$STREAM_BODY" --streams "$HOLD_STREAMS" \
        --pid "$pid" "$@" --json >"$RUNS/hold-$name.json" ||
        log "warning: hold through $name incomplete: $(jq -c '{streams_open,streams_failed,first_error}' "$RUNS/hold-$name.json" 2>/dev/null)"
    # Let the held upstream streams drain before the next case.
    sleep 1
}
hold skyweave "http://127.0.0.1:$PORT_SKY_SLOW$API_PATH" "$SKY_SLOW_PID"
hold nginx "http://127.0.0.1:$PORT_NGINX_SLOW$API_PATH" "$NGINX_PID" --include-children

# ---------------------------------------------------------------- report
j() { jq -r "$2" "$RUNS/$1.json"; }
fmt() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "" || v == "null") print "n/a"; else printf f, v }'; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
verdict() { awk "BEGIN { print (($1) ? \"PASS\" : \"FAIL\") }"; }
ms() { fmt "$(j "$1" "$2")" %.3f; }

rps_table=$(
    printf '| target | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU µs/req | other CPU %% |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'
    for t in direct nginx skyweave; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
            "$(fmt "$(j "rps-$t" .rps)" %.0f)" \
            "$(ms "rps-$t" .latency.p50_ms)" "$(ms "rps-$t" .latency.p90_ms)" \
            "$(ms "rps-$t" .latency.p99_ms)" "$(ms "rps-$t" .latency.max_ms)" \
            "$(j "rps-$t" .errors)" \
            "$(fmt "$(j "rps-$t" .cpu.us_per_request)" %.1f)" \
            "$(j "rps-$t" .other_cpu_pct)"
    done
)
stream_table=$(
    printf '| target | streams/s | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms | data lines/stream | errors | CPU µs/stream | other CPU %% |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
    for t in direct nginx skyweave; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
            "$(fmt "$(j "stream-$t" .rps)" %.0f)" \
            "$(ms "stream-$t" .ttft.p50_ms)" "$(ms "stream-$t" .ttft.p99_ms)" \
            "$(ms "stream-$t" .latency.p50_ms)" "$(ms "stream-$t" .latency.p99_ms)" \
            "$(fmt "$(j "stream-$t" .events_per_stream)" %.1f)" \
            "$(j "stream-$t" .errors)" \
            "$(fmt "$(j "stream-$t" .cpu.us_per_request)" %.1f)" \
            "$(j "stream-$t" .other_cpu_pct)"
    done
)
rps_rate_table=$(
    printf '| target | achieved req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | errors | CPU µs/req | pacer lag p99 ms | send lag p99 ms | other CPU %% |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
    for t in direct nginx skyweave; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
            "$(fmt "$(j "rps-rate-$t" .rps)" %.0f)" \
            "$(ms "rps-rate-$t" .latency.p50_ms)" "$(ms "rps-rate-$t" .latency.p90_ms)" \
            "$(ms "rps-rate-$t" .latency.p99_ms)" "$(ms "rps-rate-$t" .latency.p999_ms)" \
            "$(ms "rps-rate-$t" .latency.max_ms)" \
            "$(j "rps-rate-$t" .errors)" \
            "$(fmt "$(j "rps-rate-$t" .cpu.us_per_request)" %.1f)" \
            "$(ms "rps-rate-$t" .pacer_lag.p99_ms)" \
            "$(ms "rps-rate-$t" .send_delay.p99_ms)" \
            "$(j "rps-rate-$t" .other_cpu_pct)"
    done
)
stream_rate_table=$(
    printf '| target | achieved streams/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | TTFT p99.9 ms | TTFT max ms | total p99 ms | data lines/stream | errors | CPU µs/stream | pacer lag p99 ms | send lag p99 ms | other CPU %% |\n'
    printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n'
    for t in direct nginx skyweave; do
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$t" \
            "$(fmt "$(j "stream-rate-$t" .rps)" %.0f)" \
            "$(ms "stream-rate-$t" .ttft.p50_ms)" "$(ms "stream-rate-$t" .ttft.p90_ms)" \
            "$(ms "stream-rate-$t" .ttft.p99_ms)" "$(ms "stream-rate-$t" .ttft.p999_ms)" \
            "$(ms "stream-rate-$t" .ttft.max_ms)" "$(ms "stream-rate-$t" .latency.p99_ms)" \
            "$(fmt "$(j "stream-rate-$t" .events_per_stream)" %.1f)" \
            "$(j "stream-rate-$t" .errors)" \
            "$(fmt "$(j "stream-rate-$t" .cpu.us_per_request)" %.1f)" \
            "$(ms "stream-rate-$t" .pacer_lag.p99_ms)" \
            "$(ms "stream-rate-$t" .send_delay.p99_ms)" \
            "$(j "stream-rate-$t" .other_cpu_pct)"
    done
)
hold_table=$(
    printf '| through | streams open | idle RSS MiB | RSS with streams open MiB |\n'
    printf '|---|---:|---:|---:|\n'
    for t in skyweave nginx; do
        f=$RUNS/hold-$t.json
        if [ -s "$f" ]; then
            printf '| %s | %s / %s | %s | %s |\n' "$t" "$(jq -r .streams_open "$f")" "$HOLD_STREAMS" \
                "$(fmt "$(jq -r '.idle_rss_kib / 1024' "$f")" %.1f)" "$(fmt "$(jq -r .rss_mib "$f")" %.1f)"
        else
            printf '| %s | failed | | |\n' "$t"
        fi
    done
)

# A fixed-rate run held its rate if no scheduled request was left unfinished
# and the achieved rate is within 3% of the target.
held() { # RUN
    jq -e '.unfinished == 0 and .rps >= 0.97 * .target_rate' "$RUNS/$1.json" >/dev/null
}
# Whether other processes used more than OTHER_CPU_MAX during any of RUNS.
disturbed() { # RUN...
    local r
    for r in "$@"; do
        jq -e --argjson max "$OTHER_CPU_MAX" '.other_cpu_pct > $max' "$RUNS/$r.json" >/dev/null && return 0
    done
    return 1
}
# The largest pacer lag p99 (ms) among RUNS, and whether it is within bounds.
pacer_p99() { # RUN...
    local r
    for r in "$@"; do j "$r" .pacer_lag.p99_ms; done | sort -g | tail -n 1
}
# Verdict on a fixed-rate latency target: meaningful only if direct held the
# rate and the load generator itself kept time; skyweave fails outright if
# it did not hold the rate or had errors.
rate_verdict() { # CASE CONDITION
    local lag v
    lag=$(pacer_p99 "$1-direct" "$1-skyweave")
    if ! held "$1-direct"; then v="n/a (direct did not hold the rate)"
    elif awk "BEGIN { exit !($lag > $PACER_LAG_MAX_MS) }"; then
        v="n/a (load generator late: pacer lag p99 $lag ms > $PACER_LAG_MAX_MS ms)"
    elif ! held "$1-skyweave"; then v="FAIL (rate not held)"
    elif [ "$(j "$1-skyweave" .errors)" != 0 ]; then v="FAIL (errors)"
    else v=$(verdict "$2"); fi
    if disturbed "$1-direct" "$1-skyweave"; then v="n/a (disturbed run, see the warnings; as measured: $v)"; fi
    echo "$v"
}
added() { # CASE FIELD TARGET: TARGET's FIELD minus direct's, in ms
    calc %.3f "$(j "$1-$3" "$2") - $(j "$1-direct" "$2")"
}

rps_sky=$(j rps-skyweave .rps); rps_ngx=$(j rps-nginx .rps); rps_dir=$(j rps-direct .rps)
rss_sky=$(jq -r '.rss_mib // "null"' "$RUNS/hold-skyweave.json" 2>/dev/null || echo null)
open_sky=$(jq -r '.streams_open // 0' "$RUNS/hold-skyweave.json" 2>/dev/null || echo 0)

ratio=$(calc %.3f "$rps_sky / $rps_ngx")
added_p99=$(added rps-rate .latency.p99_ms skyweave)
added_ttft=$(added stream-rate .ttft.p99_ms skyweave)
if [ "$rss_sky" = null ] || [ "$open_sky" -lt "$HOLD_STREAMS" ]; then rss_ok=FAIL; else rss_ok=$(verdict "$rss_sky < 50"); fi
targets_table=$(
    printf '| figure | skyweave | nginx (reference) | target | verdict |\n'
    printf '|---|---:|---:|---|---|\n'
    printf '| req/s relative to nginx (closed loop, %s connections) | %s x | 1.000 x (direct: %s x) | >= 0.9 x | %s |\n' \
        "$CONNECTIONS" "$ratio" "$(calc %.3f "$rps_dir / $rps_ngx")" \
        "$(v=$(verdict "$ratio >= 0.9"); if disturbed rps-nginx rps-skyweave; then echo "n/a (disturbed run, see the warnings; as measured: $v)"; else echo "$v"; fi)"
    printf '| added p99 latency over direct (fixed rate, %s req/s over %s connections) | %s ms | %s ms | <= 0.5 ms | %s |\n' \
        "$RATE" "$RATE_CONNECTIONS" "$added_p99" "$(added rps-rate .latency.p99_ms nginx)" \
        "$(rate_verdict rps-rate "$added_p99 <= 0.5")"
    printf '| added TTFT p99 over direct (fixed rate, %s streams/s over %s connections) | %s ms | %s ms | <= 0.5 ms | %s |\n' \
        "$STREAM_RATE" "$STREAM_RATE_CONNECTIONS" "$added_ttft" "$(added stream-rate .ttft.p99_ms nginx)" \
        "$(rate_verdict stream-rate "$added_ttft <= 0.5")"
    printf '| RSS with %s open streams | %s MiB | %s MiB | < 50 MiB | %s |\n' "$HOLD_STREAMS" \
        "$(fmt "$rss_sky" %.1f)" "$(fmt "$(jq -r '.rss_mib // "null"' "$RUNS/hold-nginx.json" 2>/dev/null || echo null)" %.1f)" \
        "$rss_ok"
    printf '| *reference only:* added p99 latency over direct (closed loop, %s connections, saturated) | %s ms | %s ms | not judged | |\n' \
        "$CONNECTIONS" "$(added rps .latency.p99_ms skyweave)" "$(added rps .latency.p99_ms nginx)"
    printf '| *reference only:* added TTFT p99 over direct (closed loop, %s connections, saturated) | %s ms | %s ms | not judged | |\n' \
        "$STREAM_CONNECTIONS" "$(added stream .ttft.p99_ms skyweave)" "$(added stream .ttft.p99_ms nginx)"
)
rate_notes=""
for c in rps stream rps-rate stream-rate; do
    for t in direct nginx skyweave; do
        disturbed "$c-$t" && rate_notes+="- **Warning:** other processes used $(j "$c-$t" .other_cpu_pct)% of a CPU (steal $(j "$c-$t" .steal_pct)%) during the kept $c run against $t: its figures are disturbed."$'\n'
        case "$c" in *-rate) ;; *) continue ;; esac
        held "$c-$t" || rate_notes+="- **Warning:** $t did not hold the fixed rate in $c: achieved $(fmt "$(j "$c-$t" .rps)" %.0f)/s of $(j "$c-$t" .target_rate)/s, $(j "$c-$t" .unfinished) unfinished."$'\n'
    done
done

case "$PIN" in
    split) pin_note="pinned with taskset: proxy under test (nginx workers / skyweave) on CPU 0; emulator and load generator on CPU 1" ;;
    none) pin_note="not pinned: load generator, emulator and proxy share all $NPROC CPUs" ;;
esac
if [ "$RT_LOAD" = 1 ]; then rt_note="real-time priority (chrt -f 1)"; else rt_note="normal priority"; fi
cpu_model=$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//' || true)
[ -n "$cpu_model" ] || cpu_model=$(uname -m)
mem_total=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo 2>/dev/null || echo unknown)
nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
rustc_version=$(rustc --version 2>/dev/null || echo unknown)
git_rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || git_rev="$git_rev (with uncommitted changes)"

report=$(cat <<EOF
# skyweave benchmark results

Generated by \`bench/run.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC'). See \`bench/README.md\` for what each figure means.

- Machine: $NPROC CPUs, $cpu_model, $mem_total, Linux $(uname -r)
- Versions: skyweave $git_rev; $nginx_version; $rustc_version
- Load: keep-alive HTTP/1.1, $WARMUP warm-up then $DURATION measured, $ROUNDS round(s) per case and target, targets alternating; median run kept (by req/s for closed loop, by the judged p99 for fixed rate)
- Closed loop: each connection sends its next request as soon as the previous response is read; this saturates the machine. Fixed rate: open loop at a set arrival rate well below saturation, latencies from each request's intended send time; load generator at $rt_note.
- Upstream: skyweave-emulator (openai dialect, $EMU_CHUNKS chunks per stream); held streams: $SLOW_ARGS
- nginx: worker_processes $GATEWAY_THREADS, upstream keepalive, HTTP/1.1, access_log off, proxy_buffering off for streams; skyweave: $GATEWAY_THREADS runtime threads, RUST_LOG=warn, usage ledger ${LEDGER:-false}
- CPU placement: $pin_note. The load generator runs on the same machine, so absolute figures are lower than on separate hosts; compare within a run.

## Targets

Throughput is judged on the closed loop; the two latency targets on the fixed-rate runs, where the machine is not saturated so p99 is not mostly queueing. nginx's own figures are the reference for what a mature proxy adds on the same machine.

$targets_table
${rate_notes:+
$rate_notes}
## Fixed rate, non-streaming: $RATE req/s over $RATE_CONNECTIONS connections

Open loop: request *i* is due *i* / $RATE s after the start and goes out on the first free connection; latencies run from that intended time, so any queueing counts. *Send lag* is the time from the intended time until a connection took the request: the load generator's own timer lateness (the same for every target) plus any wait for a free connection.

$rps_rate_table

## Fixed rate, streaming: $STREAM_RATE streams/s over $STREAM_RATE_CONNECTIONS connections

$stream_rate_table

## Closed loop, non-streaming: $CONNECTIONS connections

CPU µs/req is the user+system CPU time of the proxy (nginx: master and workers) per request in the measured window; for direct it is the emulator's.

$rps_table

## Closed loop, streaming: $STREAM_CONNECTIONS connections

$stream_table

## $HOLD_STREAMS concurrent open streams (upstream sends one chunk a second)

$hold_table
EOF
)
printf '%s\n' "$report" >"$RESULTS"
printf '\n%s\n\n' "$report"
log "written to ${RESULTS#"$ROOT"/}"
