#!/usr/bin/env bash
# wal_s3.sh — WAL archiving and fetching against a distant bucket: a loopback S3 server
# (moto) behind bench/latency_proxy.py adding LATENCY ms to every request, as a cloud
# bucket would. `cairn wal push` one process per segment against `wal push --async`, and
# `cairn wal fetch` one process per segment against `--prefetch 8`, on the real segments
# bench/wal.sh collected.
#
# Environment: BENCH_WORK [/tmp/cairn-bench-wal-s3]  LATENCY [40] (ms per request)
#              SEGMENTS [/tmp/cairn-bench-wal/segments]  CAIRN_BIN [target/release/cairn]
# Usage: bash bench/wal.sh && bash bench/wal_s3.sh      (needs: pip install 'moto[server]')
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
WORK=${BENCH_WORK:-/tmp/cairn-bench-wal-s3}
LATENCY=${LATENCY:-40}
SEGMENTS=${SEGMENTS:-/tmp/cairn-bench-wal/segments}
CAIRN=${CAIRN_BIN:-$REPO_ROOT/target/release/cairn}
[ -x "$CAIRN" ] || (cd "$REPO_ROOT" && cargo build --release)
[ -d "$SEGMENTS" ] || { echo "no segments in $SEGMENTS: run bench/wal.sh first" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

rm -rf "$WORK" && mkdir -p "$WORK/pg_wal/archive_status" "$WORK/restore"
PORT=$(free_port); PROXY=$(free_port)
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ALLOW_HTTP=true AWS_ENDPOINT_URL="http://127.0.0.1:$PROXY"
moto_server -H 127.0.0.1 -p "$PORT" > "$WORK/moto.log" 2>&1 &
MOTO=$!
python3 "$BENCH_DIR/latency_proxy.py" "$PROXY" "$PORT" "$LATENCY" &
LAT=$!
trap 'kill $MOTO $LAT 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s "http://127.0.0.1:$PORT" >/dev/null && break; sleep 0.2; done
python3 -c "
import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:$PORT').create_bucket(Bucket='bench')"

NAMES=$(ls "$SEGMENTS" | grep '^[0-9A-F]\{24\}$' | sort)
N=$(echo "$NAMES" | wc -l)
for f in $NAMES; do cp "$SEGMENTS/$f" "$WORK/pg_wal/$f"; : > "$WORK/pg_wal/archive_status/$f.ready"; done
C="$CAIRN --key-file $WORK/key"
$C --repo s3://bench/sync init >/dev/null 2>&1
$C --repo s3://bench/async init >/dev/null 2>&1
rate() { python3 -c "import sys; n, t = int(sys.argv[1]), float(sys.argv[2]) - float(sys.argv[3]); print(f'| {sys.argv[4]} | {n} | {t:.2f} | {n/t:.1f} | {1000*t/n:.1f} |')" "$N" "$2" "$1" "$3"; }

{
  echo "# WAL to S3 with ${LATENCY} ms per request ($(date -u +%F), $N segments of 16 MiB)"
  echo
  echo "| command | files | seconds | files/s | ms per file |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  t=$(date +%s.%N)
  for f in $NAMES; do $C --repo s3://bench/sync wal push "$WORK/pg_wal/$f" --source bench; done
  rate "$t" "$(date +%s.%N)" "cairn wal push"
  t=$(date +%s.%N)
  for f in $NAMES; do
    $C --repo s3://bench/async wal push "$WORK/pg_wal/$f" --source bench --async --spool "$WORK/push-spool"
    mv "$WORK/pg_wal/archive_status/$f.ready" "$WORK/pg_wal/archive_status/$f.done"
  done
  rate "$t" "$(date +%s.%N)" "cairn wal push --async"
  t=$(date +%s.%N)
  for f in $NAMES; do $C --repo s3://bench/sync wal fetch "$f" "$WORK/restore/RECOVERYXLOG" --source bench; done
  rate "$t" "$(date +%s.%N)" "cairn wal fetch"
  t=$(date +%s.%N)
  for f in $NAMES; do
    $C --repo s3://bench/sync wal fetch "$f" "$WORK/restore/RECOVERYXLOG" --source bench --prefetch 8 --spool "$WORK/fetch-spool"
  done
  rate "$t" "$(date +%s.%N)" "cairn wal fetch --prefetch 8"
} | tee "$WORK/results.md"
