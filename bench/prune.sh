#!/usr/bin/env bash
# prune.sh — removal at scale: cairn prune vs restic forget --prune on a repository of
# about a million blobs, same data, same run.
#
# Data: BENCH_FILES small files (default 1,000,000; 60–260 bytes each, all different) in
# directories of 1,000, so every file is one blob in either tool. Both tools back up the
# tree, then half the directories are deleted and both back it up again; then the first
# snapshot is forgotten and the tools remove what only it needed:
#   cairn:  cairn forget --keep-last 1, then `cairn prune` three times, each timed (the
#           first repacks and marks, the second deletes, the third should find nothing:
#           cairn's two-phase removal, docs/operations.md); the time reported is that of
#           the runs up to the first that finds nothing left to do;
#   restic: restic forget --keep-last 1 --prune (one run does everything).
# Measured with /usr/bin/time -f '%e %M' (wall seconds, peak RSS KiB).
#
# Environment: BENCH_WORK [/tmp/cairn-prune-bench], BENCH_FILES [1000000],
#              CAIRN_BIN (default: target/release/cairn, built if missing)
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
WORK=${BENCH_WORK:-/tmp/cairn-prune-bench}
FILES=${BENCH_FILES:-1000000}
CAIRN=${CAIRN_BIN:-$REPO_ROOT/target/release/cairn}
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench CAIRN_KDF_MEMORY_MIB=8

if ! command -v restic >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq && $sudo apt-get install -y -qq restic
fi
[ -x "$CAIRN" ] || (cd "$REPO_ROOT" && cargo build --release)

rm -rf "$WORK" && mkdir -p "$WORK"
TREE=$WORK/tree
python3 - "$TREE" "$FILES" <<'PY'
import os, sys, random
root, n = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:05d}")
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i}"), "wb") as f:
        f.write(f"{i}\n".encode() + rnd.randbytes(rnd.randint(50, 250)))
PY
RESULTS=$WORK/results.tsv
: > "$RESULTS"
timed() { # label command...
  local label=$1; shift
  /usr/bin/time -f '%e %M' -o "$WORK/time.out" "$@" > "$WORK/$label.log" 2>&1
  printf '%s\t%s\n' "$label" "$(cat "$WORK/time.out")" | tee -a "$RESULTS"
}

export CAIRN_REPO=$WORK/cairn-repo CAIRN_CACHE_DIR=$WORK/cairn-cache RESTIC_REPOSITORY=$WORK/restic-repo
RESTIC_CACHE=$WORK/restic-cache
"$CAIRN" init -q
restic init -q --cache-dir "$RESTIC_CACHE"
timed cairn-backup-1 "$CAIRN" backup files "$TREE" --name tree -q
timed restic-backup-1 restic backup -q --cache-dir "$RESTIC_CACHE" "$TREE"
# Half the directories go.
find "$TREE" -mindepth 1 -maxdepth 1 -name 'd*[13579]' -exec rm -rf {} +
timed cairn-backup-2 "$CAIRN" backup files "$TREE" --name tree -q
timed restic-backup-2 restic backup -q --cache-dir "$RESTIC_CACHE" "$TREE"
"$CAIRN" --json stats > "$WORK/cairn-stats-before.json"
"$CAIRN" forget --keep-last 1 -q > /dev/null
for run in 1 2 3; do
  timed "cairn-prune-$run" "$CAIRN" prune
done
timed restic-forget-prune restic forget -q --cache-dir "$RESTIC_CACHE" --keep-last 1 --prune
"$CAIRN" --json stats > "$WORK/cairn-stats-after.json"
timed cairn-check "$CAIRN" check
timed restic-check restic check -q --cache-dir "$RESTIC_CACHE"
du -sb "$WORK/cairn-repo" "$WORK/restic-repo" | tee -a "$RESULTS"
python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
before = json.load(open(f"{w}/cairn-stats-before.json"))
after = json.load(open(f"{w}/cairn-stats-after.json"))
print(f"cairn blobs before prune: {before.get('blobs')}, after: {after.get('blobs')}")
rows = [l.split("\t") for l in open(f"{w}/results.tsv") if "\t" in l and " " in l.split("\t")[1]]
t = {k: tuple(map(float, v.split())) for k, v in rows}
# Runs that did work: up to the first run that found nothing to delete, mark or repack.
work = []
for i in (1, 2, 3):
    text = open(f"{w}/cairn-prune-{i}.log").read()
    if "deleted 0 packs" in text and "marked 0 packs" in text and "repacked" not in text:
        break
    work.append(i)
cairn = sum(t[f"cairn-prune-{i}"][0] for i in work)
peak = max(t[f"cairn-prune-{i}"][1] for i in (1, 2, 3))
r = t["restic-forget-prune"]
print(f"prune: cairn {len(work)} runs until nothing is left to do, {cairn:.1f} s (all three runs: "
      f"{sum(t[f'cairn-prune-{i}'][0] for i in (1, 2, 3)):.1f} s), peak {peak/1024:.0f} MiB; "
      f"restic {r[0]:.1f} s, peak {r[1]/1024:.0f} MiB")
print(f"time ratio restic/cairn {r[0]/cairn:.2f}, memory ratio restic/cairn {r[1]/peak:.2f}")
PY
