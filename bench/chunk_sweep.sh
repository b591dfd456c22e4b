#!/usr/bin/env bash
# shellcheck disable=SC2016  # single-quoted bash -c bodies are intended
# chunk_sweep.sh — choose cairn's default chunk size and zstd level.
#
# For every (average chunk size, zstd level) pair: a fresh repository
#   cairn init --repo DIR --chunk-avg SIZE --compression-level L
# then all nightly dumps piped in (`cat night-NN.sql | cairn backup stdin`),
# then a restore of the last night (timed, verified with cmp).
# Reports total backup wall time, throughput, peak RSS, repository size
# (du -sb), and the bytes added by the last night (and on average by nights
# 2..N) as reported by `cairn snapshots --repo DIR --json`.
#
# Environment (defaults in brackets):
#   BENCH_WORK [/tmp/cairn-bench]  work dir (shares data/nightly with compare.sh)
#   BENCH_NIGHTS [7]  BENCH_NIGHT_MB [200]  BENCH_SEED [1]
#   SWEEP_SIZES ["64KiB 128KiB 256KiB 512KiB 1MiB"]   SWEEP_LEVELS ["1 3 6"]
#   CAIRN_BIN      cairn binary; unset = `cargo build --release` in the repo
#
# Usage:  bash bench/chunk_sweep.sh
#         SWEEP_SIZES="128KiB 1MiB" SWEEP_LEVELS=3 BENCH_NIGHT_MB=50 bash bench/chunk_sweep.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)

WORK=${BENCH_WORK:-/tmp/cairn-bench}
NIGHTS=${BENCH_NIGHTS:-7}
NIGHT_MB=${BENCH_NIGHT_MB:-200}
SEED=${BENCH_SEED:-1}
SIZES=${SWEEP_SIZES:-"64KiB 128KiB 256KiB 512KiB 1MiB"}
LEVELS=${SWEEP_LEVELS:-"1 3 6"}

DATA="$WORK/data"
SWEEP="$WORK/sweep"
RESULTS="$WORK/sweep-results.md"
export CAIRN_PASSWORD="cairn-bench-password"   # not a secret: throwaway repositories

say()  { printf '%s\n' "$*" >&2; }
warn() { printf '\n!!! %s\n\n' "$*" >&2; }

setup() {
  if [[ ! -x /usr/bin/time ]]; then
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    $sudo apt-get update
    $sudo apt-get install -y time
  fi
  if [[ -z "${CAIRN_BIN:-}" ]]; then
    command -v cargo >/dev/null || { warn "cargo not found and CAIRN_BIN unset"; exit 1; }
    say "building cairn: cargo build --release (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release)
    CAIRN_BIN="$REPO_ROOT/target/release/cairn"
  fi
  [[ -x "$CAIRN_BIN" ]] || { warn "cairn binary not found at CAIRN_BIN=$CAIRN_BIN — nothing to sweep"; exit 1; }
  CAIRN_BIN=$(readlink -f "$CAIRN_BIN")
}

generate_nightly() {
  local gen
  gen=$(sha256sum "$BENCH_DIR/gen_data.py" | cut -c1-12)   # regenerate when the generator changes
  local want="nights=$NIGHTS mb=$NIGHT_MB seed=$SEED gen=$gen"
  mkdir -p "$DATA"
  if [[ "$(cat "$DATA/nightly.params" 2>/dev/null)" != "$want" ]]; then
    say "generating nightly dumps ($want)"
    rm -rf "$DATA/nightly" "$DATA/nightly.params"
    python3 "$BENCH_DIR/gen_data.py" nightly --out "$DATA/nightly" --nights "$NIGHTS" \
      --size-mb "$NIGHT_MB" --seed "$SEED"
    echo "$want" >"$DATA/nightly.params"
  else
    say "nightly dumps already present ($want)"
  fi
}

night_file() { printf '%s/nightly/night-%02d.sql' "$DATA" "$1"; }

# timed CMD... — run under /usr/bin/time; prints "SECS RSS_KIB"; output goes to $LOG
timed() {
  local tf
  tf=$(mktemp)
  if ! /usr/bin/time -f '%e %M' -o "$tf" bash -o pipefail -c '"$@"' _ "$@" >>"$LOG" 2>&1; then
    rm -f "$tf"
    return 1
  fi
  tail -n 1 "$tf"
  rm -f "$tf"
}

# snapshots JSON on stdin -> "LAST_ADDED MEAN_ADDED_2_N" for the 'nightly' snapshots
added_bytes() {
  python3 -c '
import json, sys
snaps = [s for s in json.load(sys.stdin) if s.get("name") == "nightly"]
snaps.sort(key=lambda s: s["time"])
added = [int(s["added"]) for s in snaps]
later = added[1:] or added
print(added[-1] if added else 0, sum(later) // max(len(later), 1))
'
}

# one setting -> one TSV row on stdout
run_setting() {
  local size=$1 level=$2
  local dir="$SWEEP/$size-z$level"
  rm -rf "$dir"
  mkdir -p "$dir"
  LOG="$dir/log.txt"
  local repo="$dir/repo" cache="$dir/cache"
  local common=(--repo "$repo" --cache-dir "$cache")
  "$CAIRN_BIN" init "${common[@]}" --chunk-avg "$size" --compression-level "$level" >>"$LOG" 2>&1
  local n f secs rss total=0 maxrss=0 bytes=0
  for ((n = 1; n <= NIGHTS; n++)); do
    f=$(night_file "$n")
    read -r secs rss < <(timed bash -o pipefail -c 'cat "$1" | "$2" backup stdin --name nightly --repo "$3" --cache-dir "$4"' \
      _ "$f" "$CAIRN_BIN" "$repo" "$cache")
    [[ -n "${secs:-}" ]] || return 1
    total=$(awk -v a="$total" -v b="$secs" 'BEGIN {print a + b}')
    ((rss > maxrss)) && maxrss=$rss
    bytes=$((bytes + $(stat -c %s "$f")))
    say "  $size z$level night $n: ${secs}s"
  done
  local repo_bytes last_added mean_added
  repo_bytes=$(du -sb "$repo" | cut -f1)
  read -r last_added mean_added < <("$CAIRN_BIN" snapshots "${common[@]}" --json 2>>"$LOG" | added_bytes) ||
    { warn "$size z$level: could not read 'added' from cairn snapshots --json"; last_added=NA; mean_added=NA; }
  f=$(night_file "$NIGHTS")
  local rsecs verify=FAIL
  read -r rsecs _ < <(timed bash -o pipefail -c '"$1" restore latest --name nightly --stdout --repo "$2" --cache-dir "$3" >"$4"' \
    _ "$CAIRN_BIN" "$repo" "$cache" "$dir/restore.sql") || rsecs=FAIL
  if cmp -s "$f" "$dir/restore.sql"; then verify=OK; else warn "$size z$level: RESTORE OF LAST NIGHT DIFFERS"; fi
  rm -f "$dir/restore.sql"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$level" "$total" "$bytes" "$maxrss" \
    "$repo_bytes" "$last_added" "$mean_added" "${rsecs:-FAIL}" "$verify"
}

render() {  # TSV file -> markdown
  python3 - "$1" "$NIGHTS" <<'PY'
import sys
path, nights = sys.argv[1], int(sys.argv[2])
print(f"| chunk avg | zstd level | backup s ({nights} nights) | MB/s | peak RSS MiB | repo MB | "
      "logical/repo | last night added MB | mean added MB (nights 2..N) | restore last s | verify |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for line in open(path):
    f = line.rstrip("\n").split("\t")
    if f[2] == "FAIL":
        print(f"| {f[0]} | {f[1]} | FAIL | – | – | – | – | – | – | – | – |")
        continue
    size, lvl, secs, b, rss, repo, last, mean, rsecs, ok = f
    secs, b, repo = float(secs), int(b), int(repo)
    mb = lambda x: f"{int(x) / 1e6:.2f}" if x.isdigit() else x
    print(f"| {size} | {lvl} | {secs:.1f} | {b / 1e6 / max(secs, 0.01):.1f} | {int(rss) / 1024:.0f} | "
          f"{repo / 1e6:.1f} | {b / repo:.2f}× | {mb(last)} | {mb(mean)} | {rsecs} | {ok} |")
PY
}

main() {
  local t0=$SECONDS
  setup
  generate_nightly
  mkdir -p "$SWEEP"
  local tsv="$SWEEP/results.tsv" size level row failed=0
  : >"$tsv"
  for size in $SIZES; do
    for level in $LEVELS; do
      say "== chunk-avg $size, zstd level $level"
      set +e
      row=$(
        set -e
        run_setting "$size" "$level"
      )
      local rc=$?
      set -e
      if [[ $rc -ne 0 || -z "$row" ]]; then
        warn "setting $size / level $level FAILED — see $SWEEP/$size-z$level/log.txt"
        tail -n 10 "$SWEEP/$size-z$level/log.txt" >&2 || true
        printf '%s\t%s\tFAIL\n' "$size" "$level" >>"$tsv"
        failed=1
      else
        printf '%s\n' "$row" >>"$tsv"
      fi
    done
  done
  {
    echo "## cairn chunk-size / zstd-level sweep"
    echo
    echo "- $(date -u '+%Y-%m-%d %H:%M:%S UTC'); \`$(uname -srm)\`; nproc $(nproc); $("$CAIRN_BIN" --version 2>/dev/null | head -n1 || echo cairn)"
    echo "- data: $NIGHTS nightly dumps × ~$NIGHT_MB MB (seed $SEED), piped via stdin; warm page cache"
    echo "- MB = 10^6 bytes; 'added' = the \`added\` field of \`cairn snapshots --json\`"
    echo
    render "$tsv"
    echo
    echo "Total sweep time: $((SECONDS - t0)) s"
  } >"$RESULTS"
  echo
  cat "$RESULTS"
  say "results written to $RESULTS"
  if ((failed)) || grep -q 'FAIL' "$tsv"; then
    warn "SOME SETTINGS FAILED OR DID NOT RESTORE BYTE-EXACT"
    exit 1
  fi
}

main "$@"
