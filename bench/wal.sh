#!/usr/bin/env bash
# wal.sh — WAL archiving speed: `cairn wal push` vs `pgbackrest archive-push`, the way
# PostgreSQL calls them (one process per WAL file, one after the other), on the same
# real WAL segments, into local repositories, in the same run.
#
# A PostgreSQL 15 cluster (pg_config --bindir) runs pgbench with archive_command copying
# segments aside; then each tool archives those copies. Both run as the postgres user.
#
# Environment: BENCH_WORK [/tmp/cairn-bench-wal]  BENCH_SCALE [60] (pgbench scale)
#              CAIRN_BIN [target/release/cairn, built if missing]
# Usage: bash bench/wal.sh        (needs: apt-get install pgbackrest)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
WORK=${BENCH_WORK:-/tmp/cairn-bench-wal}
SCALE=${BENCH_SCALE:-60}
CAIRN=${CAIRN_BIN:-$REPO_ROOT/target/release/cairn}
[ -x "$CAIRN" ] || (cd "$REPO_ROOT" && cargo build --release)
command -v pgbackrest >/dev/null || { echo "install pgbackrest (apt-get install pgbackrest)" >&2; exit 1; }
BIN=$(pg_config --bindir)
as_pg() { runuser -u postgres -- "$@"; }

if [ -d "$WORK/data" ]; then as_pg "$BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; fi
rm -rf "$WORK" && mkdir -p "$WORK/segments" "$WORK/sock"
cp "$CAIRN" "$WORK/cairn"
chown -R postgres:postgres "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

as_pg "$BIN/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
wal_level = replica
archive_mode = on
archive_command = 'cp %p $WORK/segments/%f'
EOF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
trap 'as_pg "$BIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true' EXIT
as_pg "$BIN/pgbench" -h "$WORK/sock" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
as_pg "$BIN/psql" -h "$WORK/sock" -p "$PORT" -U postgres -Atc 'select pg_switch_wal()' postgres >/dev/null
sleep 3
N=$(ls "$WORK/segments" | grep -c '^[0-9A-F]\{24\}$')
BYTES=$(du -sb "$WORK/segments" | cut -f1)
echo "segments: $N ($BYTES bytes)" >&2

# pgBackRest: a stanza on this cluster per configuration, each with a local repository.
for variant in gz zst; do
  cat > "$WORK/pgbackrest-$variant.conf" <<EOF
[global]
repo1-path=$WORK/pgbr-$variant
log-path=$WORK
lock-path=$WORK
spool-path=$WORK

[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK/sock
pg1-port=$PORT
EOF
  chown postgres:postgres "$WORK/pgbackrest-$variant.conf"
  as_pg pgbackrest --config="$WORK/pgbackrest-$variant.conf" --stanza=bench --log-level-console=warn stanza-create
done

# cairn: a repository opened by a key file (what docs/postgres.md recommends).
as_pg "$WORK/cairn" --repo "$WORK/cairn-repo" --key-file "$WORK/cairn.key" --cache-dir "$WORK/cache" init >/dev/null 2>&1

# push_all NAME COMMAND-PREFIX: archive every segment in order, one process each.
push_all() {
  local name=$1; shift
  as_pg bash -c '
    start=$(date +%s.%N)
    for f in $(ls '"$WORK"'/segments | grep "^[0-9A-F]\{24\}$" | sort); do
      '"$*"' '"$WORK"'/segments/$f >/dev/null
    done
    end=$(date +%s.%N)
    echo "$start $end"' | {
    read -r start end
    python3 -c "
n=$N; t=$end-$start
print(f'| $name | {n} | {t:.2f} | {n/t:.1f} | {1000*t/n:.1f} |')"
  }
}

{
  echo "# WAL push benchmark ($(date -u +%F), $N segments of 16 MiB from pgbench -i -s $SCALE)"
  echo
  echo "| tool | files | seconds | files/s | ms per file |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  push_all "cairn wal push (zstd 1, AES-GCM)" "$WORK/cairn --repo $WORK/cairn-repo --key-file $WORK/cairn.key wal push --source bench"
  push_all "pgbackrest archive-push (default: gz 6)" "pgbackrest --config=$WORK/pgbackrest-gz.conf --stanza=bench --log-level-console=warn archive-push"
  push_all "pgbackrest archive-push (zst 1)" "pgbackrest --config=$WORK/pgbackrest-zst.conf --stanza=bench --log-level-console=warn --compress-type=zst --compress-level=1 archive-push"
  echo
  echo "stored: cairn $(du -sb "$WORK/cairn-repo/wal" | cut -f1) bytes; pgbackrest gz $(du -sb "$WORK/pgbr-gz/archive" | cut -f1) bytes; pgbackrest zst 1 $(du -sb "$WORK/pgbr-zst/archive" | cut -f1) bytes; input $BYTES bytes"
} | tee "$WORK/results.md"
