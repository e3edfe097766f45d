# shellcheck shell=bash
# Helpers the bench scripts share; sourced after `set -euo pipefail`. The
# sourcing script names itself in SCRIPT (for error messages) first.

die() { echo "$SCRIPT: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root (or sudo) to run: $*"; fi
}

# Installs Debian packages (apt-get update once per run).
APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
    if [ "$APT_UPDATED" -eq 0 ]; then
        echo "==> apt-get update" >&2
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    echo "==> apt-get install $*" >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# A work directory in WORK, removed on exit unless KEEP_WORK=1, and PIDS,
# the background processes killed on exit.
make_work() { # NAME
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/skyweave-$1.XXXXXX")
    PIDS=()
    trap cleanup_work EXIT
}
cleanup_work() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits up to 60 s for a port to accept connections; with a PID, fails as
# soon as that process has exited.
wait_port() { # PORT [PID]
    for _ in $(seq 1 600); do
        port_open "$1" && return 0
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            die "a process exited during start-up (logs in $WORK)"
        fi
        sleep 0.1
    done
    die "nothing listens on port $1 after 60 s (logs in $WORK)"
}
