#!/usr/bin/env bash
# shellcheck disable=SC2002,SC2016  # the `cat file | tool` pipes are deliberate; single-quoted bash -c bodies
# compare.sh — cairn vs restic vs borgbackup on the same generated data.
#
# For each tool (fresh repositories, same order of steps):
#   tree:    (a) first backup, (b) unchanged re-backup, (c) re-backup after
#            `gen_data.py mutate`, (d) full restore of the latest snapshot into
#            an empty dir (verified with diff -r)
#   nightly: N pg_dump-like dumps, each piped in via `cat night-NN.sql | tool`,
#            into one repository; restore of the last night (verified with cmp)
# Measured with /usr/bin/time -f '%e %M' (wall seconds, peak RSS KiB);
# repository size = du -sb of the repository directory.
#
# Page caches are NOT dropped: every tool reads warm data (the whole data set
# fits in RAM), and every tool runs the same steps in the same order.
#
# Environment (defaults in brackets):
#   BENCH_WORK [/tmp/cairn-bench]   work dir (data, repositories, logs, results)
#   BENCH_NIGHTS [7]  BENCH_NIGHT_MB [200]  BENCH_TREE_MB [2000]
#   BENCH_SEED [1]    BENCH_MUTATE_SEED [2]
#   BENCH_TOOLS ["cairn restic borg"]
#   CAIRN_BIN         cairn binary; unset = `cargo build --release` in the repo
#   BENCH_KEEP [0]    1 = keep restored trees/files after verification
#   BENCH_REPEAT [3]  times each restore is timed (restores change nothing; the median
#                     time and the highest peak RSS are reported; backups run once)
#   BENCH_WARMUP [1]  untimed restores of each kind before the timed ones (see warm_up)
#   BENCH_RESTORE_FS  fresh | work: where trees are restored (see fresh_restore_fs)
#
# Usage:  bash bench/compare.sh
#         BENCH_NIGHTS=2 BENCH_NIGHT_MB=20 BENCH_TREE_MB=100 bash bench/compare.sh
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)

WORK=${BENCH_WORK:-/tmp/cairn-bench}
NIGHTS=${BENCH_NIGHTS:-7}
NIGHT_MB=${BENCH_NIGHT_MB:-200}
TREE_MB=${BENCH_TREE_MB:-2000}
SEED=${BENCH_SEED:-1}
MUTATE_SEED=${BENCH_MUTATE_SEED:-2}
TOOLS=${BENCH_TOOLS:-"cairn restic borg"}
KEEP=${BENCH_KEEP:-0}
REPEAT=${BENCH_REPEAT:-3}     # restores are timed this many times; the median counts
WARMUP=${BENCH_WARMUP:-1}     # untimed restores before the timed ones

DATA="$WORK/data"
TREE="$WORK/tree"            # the live tree every tool backs up (same path for all)
RUN="$WORK/run"              # per-tool repositories, caches, restores
LOGS="$WORK/logs"
STEPS_TSV="$WORK/steps.tsv"  # tool step secs rss_kib bytes
SIZES_TSV="$WORK/sizes.tsv"  # tool what bytes
CHECKS_TSV="$WORK/checks.tsv" # tool what OK|FAIL
RESULTS="$WORK/results.md"

export BENCH_PASSWORD="cairn-bench-password"   # not a secret: throwaway repositories
export RESTIC_PASSWORD="$BENCH_PASSWORD" CAIRN_PASSWORD="$BENCH_PASSWORD" BORG_PASSPHRASE="$BENCH_PASSWORD"
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_DISPLAY_PASSPHRASE=no

say()  { printf '%s\n' "$*" >&2; }
warn() { printf '\n!!! %s\n\n' "$*" >&2; }
banner() {
  printf '\n%s\n' "########################################################################" >&2
  printf '### %s\n' "$@" >&2
  printf '%s\n\n' "########################################################################" >&2
}

# ---------------------------------------------------------------------------
# setup
# ---------------------------------------------------------------------------

install_tools() {
  local missing=()
  [[ -x /usr/bin/time ]] || missing+=(time)
  [[ " $TOOLS " == *" restic "* ]] && ! command -v restic >/dev/null && missing+=(restic)
  [[ " $TOOLS " == *" borg "* ]] && ! command -v borg >/dev/null && missing+=(borgbackup)
  if ((${#missing[@]})); then
    local sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    say "installing: ${missing[*]}"
    $sudo apt-get update
    $sudo apt-get install -y "${missing[@]}"
  fi
}

# Sets CAIRN_BIN, or returns 1 when cairn is unavailable.
setup_cairn() {
  if [[ -n "${CAIRN_BIN:-}" ]]; then
    [[ -x "$CAIRN_BIN" ]] || { warn "CAIRN_BIN=$CAIRN_BIN is not an executable: skipping cairn"; return 1; }
  else
    command -v cargo >/dev/null || { warn "cargo not found and CAIRN_BIN unset: skipping cairn"; return 1; }
    say "building cairn: cargo build --release (in $REPO_ROOT)"
    (cd "$REPO_ROOT" && cargo build --release) || { warn "cargo build --release failed: skipping cairn"; return 1; }
    CAIRN_BIN="$REPO_ROOT/target/release/cairn"
    [[ -x "$CAIRN_BIN" ]] || { warn "$CAIRN_BIN missing after build: skipping cairn"; return 1; }
  fi
  CAIRN_BIN=$(readlink -f "$CAIRN_BIN")
  export CAIRN_BIN
}

tool_available() {
  case "$1" in
    cairn)  setup_cairn ;;
    restic) command -v restic >/dev/null || { warn "restic not found: skipping restic"; return 1; } ;;
    borg)   command -v borg >/dev/null || { warn "borg not found: skipping borg"; return 1; } ;;
    *)      warn "unknown tool '$1': skipping"; return 1 ;;
  esac
}

tool_version() {
  case "$1" in
    cairn)  "$CAIRN_BIN" --version 2>/dev/null | head -n1 || echo "cairn (version unknown)" ;;
    restic) restic version | head -n1 ;;
    borg)   borg --version | head -n1 ;;
  esac
}

generate_data() {
  mkdir -p "$DATA"
  local gen
  gen=$(sha256sum "$BENCH_DIR/gen_data.py" | cut -c1-12)   # regenerate when the generator changes
  local want="nights=$NIGHTS mb=$NIGHT_MB seed=$SEED gen=$gen"
  if [[ "$(cat "$DATA/nightly.params" 2>/dev/null)" != "$want" ]]; then
    say "generating nightly dumps ($want)"
    rm -rf "$DATA/nightly" "$DATA/nightly.params"
    python3 "$BENCH_DIR/gen_data.py" nightly --out "$DATA/nightly" --nights "$NIGHTS" \
      --size-mb "$NIGHT_MB" --seed "$SEED"
    echo "$want" >"$DATA/nightly.params"
  else
    say "nightly dumps already present ($want)"
  fi
  want="mb=$TREE_MB seed=$SEED gen=$gen"
  if [[ "$(cat "$DATA/tree.params" 2>/dev/null)" != "$want" ]]; then
    say "generating tree ($want)"
    rm -rf "$DATA/tree-base" "$DATA/tree.params"
    python3 "$BENCH_DIR/gen_data.py" tree --out "$DATA/tree-base" --size-mb "$TREE_MB" --seed "$SEED"
    echo "$want" >"$DATA/tree.params"
  else
    say "tree already present ($want)"
  fi
}

tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {printf "%d\n", s}'; }
dir_bytes()  { du -sb "$1" | cut -f1; }
night_file() { printf '%s/nightly/night-%02d.sql' "$DATA" "$1"; }

# ---------------------------------------------------------------------------
# tool adapters: TOOL_init REPO | TOOL_backup_tree REPO PATH LABEL |
#   TOOL_backup_stdin REPO LABEL FILE | TOOL_restore_tree REPO OUTDIR LABEL |
#   TOOL_restore_stdin REPO OUTFILE LABEL
# They run under /usr/bin/time via `bash -c`, hence `export -f` below.
# ---------------------------------------------------------------------------

# --- cairn ---
cairn_cache() { printf '%s/run/cairn/cache' "$WORK"; }
cairn_init()  { "$CAIRN_BIN" init --repo "$1" --cache-dir "$(cairn_cache)"; }
cairn_backup_tree()  { "$CAIRN_BIN" backup files "$2" --repo "$1" --name tree --cache-dir "$(cairn_cache)"; }
cairn_backup_stdin() { cat "$3" | "$CAIRN_BIN" backup stdin --repo "$1" --name nightly --cache-dir "$(cairn_cache)"; }
cairn_restore_tree() { "$CAIRN_BIN" restore latest --repo "$1" --name tree --to "$2" --cache-dir "$(cairn_cache)"; }
cairn_restore_stdin() { "$CAIRN_BIN" restore latest --repo "$1" --name nightly --stdout --cache-dir "$(cairn_cache)" >"$2"; }

# --- restic (defaults: repository format "stable", compression "auto") ---
restic_cache() { printf '%s/run/restic/cache' "$WORK"; }
restic_init()  { restic init -r "$1" --cache-dir "$(restic_cache)"; }
restic_backup_tree()  { restic backup -r "$1" --cache-dir "$(restic_cache)" "$2"; }
restic_backup_stdin() { cat "$3" | restic backup -r "$1" --cache-dir "$(restic_cache)" --stdin --stdin-filename night.sql; }
restic_restore_tree() { restic restore latest -r "$1" --cache-dir "$(restic_cache)" --target "$2"; }
restic_restore_stdin() { restic dump latest /night.sql -r "$1" --cache-dir "$(restic_cache)" >"$2"; }

# --- borg (repokey-blake2, zstd level 3; BORG_BASE_DIR keeps cache/keys in the work dir) ---
borg_init()  { borg init -e repokey-blake2 "$1"; }
borg_backup_tree()  { borg create --compression zstd,3 "$1::$3" "$2"; }
borg_backup_stdin() { cat "$3" | borg create --compression zstd,3 --stdin-name night.sql "$1::$2" -; }
borg_restore_tree() { cd "$2" && borg extract "$1::$3"; }
borg_restore_stdin() { borg extract --stdout "$1::$3" >"$2"; }

export -f cairn_cache cairn_init cairn_backup_tree cairn_backup_stdin cairn_restore_tree cairn_restore_stdin
export -f restic_cache restic_init restic_backup_tree restic_backup_stdin restic_restore_tree restic_restore_stdin
export -f borg_init borg_backup_tree borg_backup_stdin borg_restore_tree borg_restore_stdin
export WORK

# ---------------------------------------------------------------------------
# measurement
# ---------------------------------------------------------------------------

# measure TOOL STEP BYTES FUNC ARGS... — run FUNC under /usr/bin/time, record a row.
measure() {
  local tool=$1 step=$2 bytes=$3
  shift 3
  local tf="$RUN/$tool/time.out"
  printf '\n=== %s %s: %s\n' "$tool" "$step" "$*" >>"$LOGS/$tool.log"
  # Untimed: flush what earlier steps (or the tree copy) left dirty, so no tool pays for
  # another's writeback.
  sync
  if ! /usr/bin/time -f '%e %M' -o "$tf" bash -o pipefail -c '"$@"' _ "$@" >>"$LOGS/$tool.log" 2>&1; then
    printf '%s\t%s\tFAIL\t0\t%s\n' "$tool" "$step" "$bytes" >>"$STEPS_TSV"
    warn "$tool: step '$step' FAILED — see $LOGS/$tool.log"
    tail -n 15 "$LOGS/$tool.log" >&2
    return 1
  fi
  local secs rss
  read -r secs rss < <(tail -n 1 "$tf")
  printf '%s\t%s\t%s\t%s\t%s\n' "$tool" "$step" "$secs" "$rss" "$bytes" >>"$STEPS_TSV"
  awk -v t="$tool" -v s="$step" -v e="$secs" -v m="$rss" -v b="$bytes" 'BEGIN {
    printf "  %-7s %-16s %8.2f s %9.1f MB/s  peak RSS %7.1f MiB\n", t, s, e, (e > 0 ? b / 1e6 / e : 0), m / 1024 }' >&2
}

# warm_up TOOL FUNC ARGS... — run FUNC once, untimed, before a step's timed runs. This VM
# backs guest memory lazily: the first restore after memory was freed (the filesystem
# of the previous restore unmounted, caches of the previous tool dropped) pays the host's
# page faults in every copy into the page cache, which showed up as 2–3 times the system
# time of the same restore repeated (docs/PERFORMANCE.md). Every tool gets the same.
warm_up() {
  local tool=$1
  shift
  ((WARMUP > 0)) || return 0
  printf '\n=== %s warm-up (untimed): %s\n' "$tool" "$*" >>"$LOGS/$tool.log"
  sync
  bash -o pipefail -c '"$@"' _ "$@" >>"$LOGS/$tool.log" 2>&1 || warn "$tool: warm-up '$1' failed — see $LOGS/$tool.log"
}

record_size()  { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SIZES_TSV"; }

record_check() {  # TOOL WHAT OK|FAIL
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$CHECKS_TSV"
  if [[ $3 == OK ]]; then say "  $1 $2: restore verified byte-exact"; else banner "$1 $2: RESTORE VERIFICATION FAILED"; fi
}

# The restored tree may be nested under its absolute path (restic, borg) or not.
restored_root() {  # OUTDIR ORIGINAL
  if [[ -d "$1$2" ]]; then printf '%s' "$1$2"
  elif [[ -d "$1/$(basename "$2")" ]]; then printf '%s/%s' "$1" "$(basename "$2")"
  else printf '%s' "$1"; fi
}

# ---------------------------------------------------------------------------
# one tool: the same steps, in the same order, for every tool
# ---------------------------------------------------------------------------

# Where the tree is restored. With BENCH_RESTORE_FS=fresh (the default when root may
# make loop filesystems) every tool restores into a newly made ext4 (mkfs defaults, with
# its journal) mounted at the restore directory, so no tool pays for what the steps before
# it deleted. On a filesystem without a journal, as this project's reference VM's root is,
# ext4 skips inodes freed in the last minutes on every allocation, one buffer lookup each:
# after the benchmark's own `rm -rf` of 47 000 files, inode allocation then dominated every
# tool's restore (docs/PERFORMANCE.md). BENCH_RESTORE_FS=work restores under $WORK as before.
RESTORE_FS=${BENCH_RESTORE_FS:-}
if [[ -z $RESTORE_FS ]]; then
  if [[ $(id -u) -eq 0 ]] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; then
    RESTORE_FS=fresh
  else
    RESTORE_FS=work
  fi
fi

fresh_restore_fs() {  # DIR: mount a new ext4 there (BENCH_RESTORE_FS=fresh)
  [[ $RESTORE_FS == fresh ]] || return 0
  # One image for every tool, made anew each time. Its inode tables and journal are
  # written now (untimed) rather than by ext4's background initialisation during the
  # restore, and nothing is discarded, so no tool competes with leftover disk work.
  local image="$WORK/restore-fs.img"
  # Allocated up front, so that no restore pays for the host filesystem filling holes.
  [[ -f $image ]] || fallocate -l "$((TREE_MB * 3 + 1024))M" "$image" || truncate -s "$((TREE_MB * 3 + 1024))M" "$image"
  mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$image"
  mount -o loop "$image" "$1"
}

release_restore_fs() {  # DIR: unmount what fresh_restore_fs mounted
  [[ $RESTORE_FS == fresh ]] || return 0
  umount "$1"
}

# Tree steps (a)-(d) on the live tree $TREE.

run_tree() {
  local tool=$1
  local dir="$RUN/$tool"
  export BORG_BASE_DIR="$dir/borg-base"
  say "[$tool] preparing live tree $TREE (copy of the generated tree)"
  rm -rf "$TREE"
  cp -a "$DATA/tree-base" "$TREE"
  local bytes repo="$dir/repo-tree"
  bytes=$(tree_bytes "$TREE")
  "${tool}_init" "$repo" >>"$LOGS/$tool.log" 2>&1
  measure "$tool" tree_first "$bytes" "${tool}_backup_tree" "$repo" "$TREE" tree-1
  record_size "$tool" repo_tree_first "$(dir_bytes "$repo")"
  measure "$tool" tree_unchanged "$bytes" "${tool}_backup_tree" "$repo" "$TREE" tree-2
  say "[$tool] mutating the tree (gen_data.py mutate --seed $MUTATE_SEED)"
  python3 "$BENCH_DIR/gen_data.py" mutate --tree "$TREE" --seed "$MUTATE_SEED" 2>>"$LOGS/$tool.log"
  bytes=$(tree_bytes "$TREE")
  measure "$tool" tree_changed "$bytes" "${tool}_backup_tree" "$repo" "$TREE" tree-3
  record_size "$tool" repo_tree "$(dir_bytes "$repo")"
  local out="$dir/restore-tree" i
  for ((i = 1; i <= WARMUP; i++)); do
    rm -rf "$out"
    mkdir -p "$out"
    fresh_restore_fs "$out"
    warm_up "$tool" "${tool}_restore_tree" "$repo" "$out" tree-3
    release_restore_fs "$out"
  done
  for ((i = 1; i <= REPEAT; i++)); do
    rm -rf "$out"
    mkdir -p "$out"
    fresh_restore_fs "$out"
    measure "$tool" tree_restore "$bytes" "${tool}_restore_tree" "$repo" "$out" tree-3
    ((i == REPEAT)) || { release_restore_fs "$out"; rm -rf "$out"; }
  done
  if diff -r "$TREE" "$(restored_root "$out" "$TREE")" >"$dir/tree.diff" 2>&1; then
    record_check "$tool" tree OK
  else
    record_check "$tool" tree FAIL
    head -n 20 "$dir/tree.diff" >&2
  fi
  [[ $KEEP == 1 ]] || { release_restore_fs "$out"; rm -rf "$out"; }
  if [[ $tool == cairn ]]; then
    { echo "=== cairn stats (tree repo)"; "$CAIRN_BIN" stats --repo "$repo" --json --cache-dir "$(cairn_cache)"; } \
      >"$dir/stats-tree.json" 2>&1 || warn "cairn stats failed (tree repo)"
  fi
}

# The nightly dump series, each night piped in from stdin, into one repository.
run_nightly() {
  local tool=$1
  local dir="$RUN/$tool"
  export BORG_BASE_DIR="$dir/borg-base"
  local repo="$dir/repo-nightly"
  "${tool}_init" "$repo" >>"$LOGS/$tool.log" 2>&1
  local n f
  for ((n = 1; n <= NIGHTS; n++)); do
    f=$(night_file "$n")
    measure "$tool" "$(printf 'night_%02d' "$n")" "$(stat -c %s "$f")" \
      "${tool}_backup_stdin" "$repo" "$(printf 'night-%02d' "$n")" "$f"
    if [[ $n -eq 1 ]]; then record_size "$tool" repo_nightly_first "$(dir_bytes "$repo")"; fi
  done
  record_size "$tool" repo_nightly "$(dir_bytes "$repo")"
  f=$(night_file "$NIGHTS")
  local i
  for ((i = 1; i <= WARMUP; i++)); do
    rm -f "$dir/restore-night.sql"
    warm_up "$tool" "${tool}_restore_stdin" "$repo" "$dir/restore-night.sql" "$(printf 'night-%02d' "$NIGHTS")"
  done
  for ((i = 1; i <= REPEAT; i++)); do
    rm -f "$dir/restore-night.sql"
    measure "$tool" nightly_restore "$(stat -c %s "$f")" \
      "${tool}_restore_stdin" "$repo" "$dir/restore-night.sql" "$(printf 'night-%02d' "$NIGHTS")"
  done
  if cmp "$f" "$dir/restore-night.sql" >&2; then
    record_check "$tool" nightly OK
  else
    record_check "$tool" nightly FAIL
  fi
  [[ $KEEP == 1 ]] || rm -f "$dir/restore-night.sql"
  if [[ $tool == cairn ]]; then
    { echo "=== cairn stats (nightly repo)"; "$CAIRN_BIN" stats --repo "$repo" --json --cache-dir "$(cairn_cache)"; } \
      >"$dir/stats-nightly.json" 2>&1 || warn "cairn stats failed (nightly repo)"
  fi
}

# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

system_info() {
  echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "- uname: \`$(uname -a)\`"
  echo "- nproc: $(nproc); CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "- memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "- work dir filesystem: $(df -hT "$WORK" | awk 'NR == 2 {print $2 ", " $3 " total, " $5 " free"}')"
  echo "- data: $NIGHTS nightly dumps × ~$NIGHT_MB MB, tree ~$TREE_MB MB (seed $SEED, mutate seed $MUTATE_SEED)"
  echo "- caches: page cache not dropped — every tool reads warm data; every tool runs the same steps in the same order; \`sync\` (untimed) before every step"
  echo "- restores: each timed $REPEAT times; the median time and the highest peak RSS are reported"
  echo "- tree restore target: $RESTORE_FS ($([[ $RESTORE_FS == fresh ]] && echo 'a newly made ext4 per tool, mounted at the restore directory' || echo 'a directory under the work dir'))"
  echo "- MB = 10^6 bytes; throughput = logical input bytes / wall seconds"
}

render_report() {  # TOOLS... -> markdown on stdout
  python3 - "$STEPS_TSV" "$SIZES_TSV" "$CHECKS_TSV" "$NIGHTS" "$@" <<'PY'
import sys
steps_f, sizes_f, checks_f, nights = sys.argv[1:5]
tools = sys.argv[5:]
nights = int(nights)
steps, sizes, checks = {}, {}, {}
def rows(path):
    try:
        with open(path) as f:
            return [l.rstrip("\n").split("\t") for l in f if l.strip()]
    except FileNotFoundError:
        return []
runs = {}
for t, s, secs, rss, b in rows(steps_f):
    runs.setdefault((t, s), []).append((None if secs == "FAIL" else float(secs), int(rss), int(b)))
# A step timed several times (the restores) counts with its median time and its highest RSS.
for key, rs in runs.items():
    if any(r[0] is None for r in rs):
        steps[key] = (None, max(r[1] for r in rs), rs[0][2])
    else:
        times = sorted(r[0] for r in rs)
        steps[key] = (times[len(times) // 2], max(r[1] for r in rs), rs[0][2])
for t, w, b in rows(sizes_f):
    sizes[(t, w)] = int(b)
for t, w, v in rows(checks_f):
    checks[(t, w)] = v
night_keys = [f"night_{n:02d}" for n in range(1, nights + 1)]
# aggregate the nightly series
for t in tools:
    vals = [steps.get((t, k)) for k in night_keys]
    if vals and all(v and v[0] is not None for v in vals):
        steps[(t, "nightly_all")] = (sum(v[0] for v in vals), max(v[1] for v in vals), sum(v[2] for v in vals))
def inp(k):  # logical input bytes of a step (identical for every tool that ran it)
    return next((steps[(t, k)][2] for t in tools if (t, k) in steps), 0)
labels = [("tree_first", "tree: (a) first backup"), ("tree_unchanged", "tree: (b) unchanged re-backup"),
          ("tree_changed", "tree: (c) changed re-backup"), ("tree_restore", "tree: (d) full restore")]
labels += [(k, f"nightly: night {k[-2:]} (stdin)") for k in night_keys]
labels += [("nightly_all", f"nightly: all {nights} nights"), ("nightly_restore", "nightly: restore last night")]
def get(t, k):
    v = steps.get((t, k))
    return v if v and v[0] is not None else None
def fmt_ratio(a, b):
    return f"{a / b:.2f}×" if a and b else "–"
others = [t for t in tools if t != "cairn"]
out = []
hdr = ["step", "input MB"] + [x for t in tools for x in (f"{t} s", f"{t} MB/s")]
hdr += [f"cairn/{o} MB/s" for o in others] if "cairn" in tools else []
out.append("### Wall time and throughput\n")
out.append("| " + " | ".join(hdr) + " |")
out.append("|" + "---|" * len(hdr))
for k, lab in labels:
    anyv = [steps.get((t, k)) for t in tools if steps.get((t, k))]
    if not anyv:
        continue
    cells = [lab, f"{inp(k) / 1e6:.1f}"]
    thr = {}
    for t in tools:
        v = get(t, k)
        if (t, k) in steps and v is None:
            cells += ["FAIL", "–"]
        elif v is None:
            cells += ["–", "–"]
        else:
            thr[t] = v[2] / 1e6 / v[0] if v[0] > 0 else float("inf")
            cells += [f"{v[0]:.2f}", f"{thr[t]:.1f}"]
    if "cairn" in tools:
        cells += [fmt_ratio(thr.get("cairn"), thr.get(o)) for o in others]
    out.append("| " + " | ".join(cells) + " |")
out.append("\nRatios > 1× mean cairn has the higher throughput.\n")
# repository sizes
tree_in = inp("tree_changed")
night_in = sum(inp(k) for k in night_keys)
out.append("### Repository size (du -sb)\n")
hdr = ["repository", "logical MB (all snapshots)"] + [f"{t} MB" for t in tools] + [f"cairn/{o}" for o in others if "cairn" in tools]
out.append("| " + " | ".join(hdr) + " |")
out.append("|" + "---|" * len(hdr))
first_tree = inp("tree_first")
first_night = inp("night_01")
for key, lab, inp in [("repo_tree_first", "tree after (a)", first_tree),
                      ("repo_tree", "tree after (a)+(b)+(c)", first_tree + tree_in + tree_in),
                      ("repo_nightly_first", "nightly after night 1", first_night),
                      ("repo_nightly", f"nightly after {nights} nights", night_in)]:
    if not any((t, key) in sizes for t in tools):
        continue
    cells = [lab, f"{inp / 1e6:.1f}"]
    for t in tools:
        b = sizes.get((t, key))
        cells.append(f"{b / 1e6:.1f} ({inp / b:.1f}×)" if b else "–")
    if "cairn" in tools:
        for o in others:
            a, b = sizes.get(("cairn", key)), sizes.get((o, key))
            cells.append(f"{a / b:.2f}" if a and b else "–")
    out.append("| " + " | ".join(cells) + " |")
out.append("\n(N×) = logical bytes / repository bytes (higher is better). cairn/X ratios < 1 mean cairn's repository is smaller.\n")
# peak RSS
out.append("### Peak RSS (MiB)\n")
hdr = ["step"] + tools
out.append("| " + " | ".join(hdr) + " |")
out.append("|" + "---|" * len(hdr))
for k, lab in labels:
    if k in night_keys:
        continue
    if not any(steps.get((t, k)) for t in tools):
        continue
    cells = [lab]
    for t in tools:
        v = steps.get((t, k))
        cells.append(f"{v[1] / 1024:.0f}" if v and v[0] is not None else "–")
    out.append("| " + " | ".join(cells) + " |")
# verification
out.append("\n### Restore verification\n")
out.append("| tool | tree (diff -r) | last night (cmp) |")
out.append("|---|---|---|")
def check(t, what, step):
    if (t, what) in checks:
        return checks[(t, what)]
    v = steps.get((t, step))
    return "FAIL (restore command failed)" if v and v[0] is None else "not run"
for t in tools:
    out.append(f"| {t} | {check(t, 'tree', 'tree_restore')} | {check(t, 'nightly', 'nightly_restore')} |")
print("\n".join(out))
PY
}

# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

main() {
  local t0=$SECONDS
  install_tools
  mkdir -p "$WORK" "$RUN" "$LOGS"
  : >"$STEPS_TSV"
  : >"$SIZES_TSV"
  : >"$CHECKS_TSV"

  local ran=() versions=() failed=() tool rc
  for tool in $TOOLS; do
    if tool_available "$tool"; then
      ran+=("$tool")
      versions+=("- $tool: $(tool_version "$tool")")
    fi
  done
  ((${#ran[@]})) || { warn "no tool available"; exit 1; }

  generate_data

  local part
  for tool in "${ran[@]}"; do
    banner "$tool"
    rm -rf "${RUN:?}/$tool"
    mkdir -p "$RUN/$tool"
    : >"$LOGS/$tool.log"
    for part in tree nightly; do
      set +e
      (
        set -e
        "run_$part" "$tool"
      )
      rc=$?
      set -e
      if [[ $rc -ne 0 ]]; then
        failed+=("$tool/$part")
        banner "$tool: $part PART ABORTED (exit $rc) — see $LOGS/$tool.log"
      fi
    done
  done
  rm -rf "$TREE"
  rm -f "$WORK/restore-fs.img"

  {
    echo "## cairn benchmark: cairn vs restic vs borg"
    echo
    system_info
    echo
    echo "Tool versions:"
    echo
    printf '%s\n' "${versions[@]}"
    echo
    echo "Settings: restic defaults (repository format 'stable', compression 'auto'); borg \`init -e repokey-blake2\`, \`create --compression zstd,3\`; cairn defaults."
    echo
    render_report "${ran[@]}"
    if grep -q FAIL "$CHECKS_TSV" || ((${#failed[@]})); then
      echo
      local bad
      bad=$(grep FAIL "$CHECKS_TSV" | cut -f1,2 | tr '\t\n' ': ' || true)
      echo "**FAILURES:** aborted parts: ${failed[*]:-none}; failed restore checks: ${bad:-none}"
    fi
    local sf
    for sf in "$RUN/cairn/stats-tree.json" "$RUN/cairn/stats-nightly.json"; do
      if [[ " ${ran[*]} " == *" cairn "* && -s "$sf" ]]; then
        printf '\n```\n%s\n```\n' "$(cat "$sf")"
      fi
    done
    echo
    echo "Total benchmark time: $((SECONDS - t0)) s"
  } >"$RESULTS"

  echo
  cat "$RESULTS"
  echo
  say "results written to $RESULTS (raw rows: $STEPS_TSV, $SIZES_TSV; tool logs: $LOGS/)"
  if grep -q FAIL "$CHECKS_TSV" || ((${#failed[@]})); then
    banner "SOME STEPS OR RESTORE CHECKS FAILED — see above"
    exit 1
  fi
}

main "$@"
