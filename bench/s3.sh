#!/usr/bin/env bash
# s3.sh — cairn to a loopback S3 server (moto) vs cairn to a local directory vs restic to
# the same S3 server, on the same data in the same run; counts requests per GB from the
# server's request log.
#
# Steps per target (fresh repositories): N nightly dumps piped in one after the other,
# restore of the last night (verified with cmp); a first tree backup, a full tree restore
# (verified with diff -r); check, and check --read-data.
#
# Environment (defaults in brackets):
#   BENCH_WORK [/tmp/cairn-bench-s3]  BENCH_NIGHTS [3]  BENCH_NIGHT_MB [200]
#   BENCH_TREE_MB [500]  BENCH_SEED [1]  CAIRN_BIN [target/release/cairn, built if missing]
#   BENCH_LATENCY_MS [0]  BENCH_ONLY_S3 [unset: also cairn to a local directory]
#
# Usage: bash bench/s3.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
WORK=${BENCH_WORK:-/tmp/cairn-bench-s3}
NIGHTS=${BENCH_NIGHTS:-3}
NIGHT_MB=${BENCH_NIGHT_MB:-200}
TREE_MB=${BENCH_TREE_MB:-500}
SEED=${BENCH_SEED:-1}
CAIRN=${CAIRN_BIN:-$REPO_ROOT/target/release/cairn}
[ -x "$CAIRN" ] || (cd "$REPO_ROOT" && cargo build --release)

DATA="$WORK/data" TREE="$WORK/tree" RUN="$WORK/run" LOGS="$WORK/logs"
STEPS="$WORK/steps.tsv"   # target step secs rss_kib requests gets puts posts lists heads deletes
mkdir -p "$DATA" "$LOGS"
rm -rf "$RUN" && mkdir -p "$RUN"
: > "$STEPS"

export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_ALLOW_HTTP=true

if [ ! -f "$DATA/night-$(printf %02d "$NIGHTS").sql" ]; then
  python3 "$BENCH_DIR/gen_data.py" nightly --out "$DATA" --nights "$NIGHTS" --size-mb "$NIGHT_MB" --seed "$SEED"
fi
if [ ! -d "$TREE" ]; then
  python3 "$BENCH_DIR/gen_data.py" tree --out "$TREE" --size-mb "$TREE_MB" --seed "$SEED"
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
MOTO_LOG="$LOGS/moto.log"
moto_server -H 127.0.0.1 -p "$PORT" > "$MOTO_LOG" 2>&1 &
MOTO_PID=$!
trap 'kill $MOTO_PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
curl -s -o /dev/null -X PUT "http://127.0.0.1:$PORT/bench"
# BENCH_LATENCY_MS (default 0): every request waits this long in a proxy in front of the
# server (bench/latency_proxy.py), as a distant bucket would.
LATENCY=${BENCH_LATENCY_MS:-0}
ENDPOINT_PORT=$PORT
if [ "$LATENCY" != 0 ]; then
  ENDPOINT_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  python3 "$BENCH_DIR/latency_proxy.py" "$ENDPOINT_PORT" "$PORT" "$LATENCY" &
  PROXY_PID=$!
  trap 'kill $MOTO_PID $PROXY_PID 2>/dev/null || true' EXIT
  sleep 0.5
fi
export AWS_ENDPOINT_URL="http://127.0.0.1:$ENDPOINT_PORT"

# count METHOD in the server log after line $1
count() { tail -n +"$(( $1 + 1 ))" "$MOTO_LOG" | grep -c "\"$2 " || true; }

# step TARGET STEP CMD...: time it, count the requests it made
step() {
  local target=$1 name=$2; shift 2
  local before; before=$(wc -l < "$MOTO_LOG")
  sync
  /usr/bin/time -f '%e %M' -o "$LOGS/time" "$@" > "$LOGS/$target-$name.out" 2> "$LOGS/$target-$name.err"
  local t rss; read -r t rss < <(tail -1 "$LOGS/time")
  local g p po l h d
  g=$(count "$before" GET); p=$(count "$before" PUT); po=$(count "$before" POST)
  h=$(count "$before" HEAD); d=$(count "$before" DELETE)
  l=$(tail -n +"$(( before + 1 ))" "$MOTO_LOG" | grep -c '"GET [^ ]*?list-type=2\|"GET [^ ]*?prefix=\|"GET [^ ]*?delimiter=' || true)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$name" "$t" "$rss" $((g + p + po + h + d)) "$g" "$p" "$po" "$l" "$h" >> "$STEPS"
  printf '%-12s %-14s %7ss %8s KiB  %6s requests\n' "$target" "$name" "$t" "$rss" $((g + p + po + h + d)) >&2
}

run_cairn() {  # target repo-url
  local target=$1 url=$2 cache="$RUN/$1-cache"
  step "$target" init "$CAIRN" --repo "$url" --cache-dir "$cache" init
  for n in $(seq -f %02g 1 "$NIGHTS"); do
    step "$target" "night-$n" bash -c "cat '$DATA/night-$n.sql' | '$CAIRN' --repo '$url' --cache-dir '$cache' backup stdin --name shop"
  done
  step "$target" restore-night bash -c "'$CAIRN' --repo '$url' --cache-dir '$cache' restore latest --name shop --stdout > '$RUN/$target-night.sql'"
  cmp "$RUN/$target-night.sql" "$DATA/night-$(printf %02d "$NIGHTS").sql" && rm "$RUN/$target-night.sql"
  step "$target" tree-backup "$CAIRN" --repo "$url" --cache-dir "$cache" backup files "$TREE" --name tree
  step "$target" tree-restore "$CAIRN" --repo "$url" --cache-dir "$cache" restore latest --name tree --to "$RUN/$target-tree"
  diff -r "$TREE" "$RUN/$target-tree$TREE" > /dev/null && rm -rf "$RUN/$target-tree"
  step "$target" check "$CAIRN" --repo "$url" --cache-dir "$cache" check
  step "$target" check-read-data "$CAIRN" --repo "$url" --cache-dir "$cache" check --read-data
}

run_restic() {
  local target=restic-s3 url="s3:http://127.0.0.1:$ENDPOINT_PORT/bench/restic" cache="$RUN/restic-cache"
  step "$target" init restic -r "$url" --cache-dir "$cache" init
  for n in $(seq -f %02g 1 "$NIGHTS"); do
    step "$target" "night-$n" bash -c "cat '$DATA/night-$n.sql' | restic -r '$url' --cache-dir '$cache' backup --stdin --stdin-filename shop.sql"
  done
  step "$target" restore-night bash -c "restic -r '$url' --cache-dir '$cache' dump latest shop.sql > '$RUN/$target-night.sql'"
  cmp "$RUN/$target-night.sql" "$DATA/night-$(printf %02d "$NIGHTS").sql" && rm "$RUN/$target-night.sql"
  step "$target" tree-backup restic -r "$url" --cache-dir "$cache" backup "$TREE"
  step "$target" tree-restore restic -r "$url" --cache-dir "$cache" restore latest --path "$TREE" --target "$RUN/$target-tree"
  diff -r "$TREE" "$RUN/$target-tree$TREE" > /dev/null && rm -rf "$RUN/$target-tree"
  step "$target" check restic -r "$url" --cache-dir "$cache" check
  step "$target" check-read-data restic -r "$url" --cache-dir "$cache" check --read-data
}

[ -n "${BENCH_ONLY_S3:-}" ] || run_cairn cairn-local "$RUN/cairn-local-repo"
run_cairn cairn-s3 "s3://bench/cairn"
run_restic

night_bytes=$(stat -c %s "$DATA"/night-*.sql | paste -sd+ | bc)
tree_bytes=$(du -sb "$TREE" | cut -f1)
{
  echo "# cairn S3 benchmark ($(date -u +%F), $NIGHTS nights x $NIGHT_MB MB, tree $TREE_MB MB, $LATENCY ms added per request)"
  echo
  echo "| target | step | seconds | peak RSS MiB | requests | GET | PUT | POST | LIST | HEAD |"
  echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
  awk -F'\t' '{ printf "| %s | %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4/1024, $5, $6, $7, $8, $9, $10 }' "$STEPS"
  echo
  echo "nightly input: $night_bytes bytes; tree: $tree_bytes bytes"
} > "$WORK/results.md"
cat "$WORK/results.md"
