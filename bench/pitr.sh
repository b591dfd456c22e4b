#!/usr/bin/env bash
# pitr.sh — base backup and point-in-time recovery: `cairn backup pg-base` + `cairn pitr`
# vs `pgbackrest backup` + `pgbackrest restore`, on the same PostgreSQL 15 cluster, in
# the same run, into local repositories.
#
# The cluster (pgbench -i -s $BENCH_SCALE, about 1.7 GB at 110) archives into both tools
# at once (archive_command runs cairn wal push into two repositories, then pgbackrest
# archive-push). cairn takes a full base backup through pg_basebackup into one and with
# --pgdata into the other, pgBackRest one; pgbench then writes $BENCH_TX transactions;
# cairn (from the --pgdata base) and pgBackRest recover to the latest WAL, and the time is taken until the server is promoted and
# answers a query (cairn: `pitr --latest --start`; pgBackRest: `restore --type=default`,
# `pg_ctl start`, then polling `select pg_is_in_recovery()` until false).
#
# Environment: BENCH_WORK [/tmp/cairn-bench-pitr]  BENCH_SCALE [110]  BENCH_TX [20000]
#              CAIRN_BIN [target/release/cairn, built if missing]
# Usage: bash bench/pitr.sh        (needs: apt-get install pgbackrest)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$BENCH_DIR/.." && pwd)
WORK=${BENCH_WORK:-/tmp/cairn-bench-pitr}
SCALE=${BENCH_SCALE:-110}
TX=${BENCH_TX:-20000}
CAIRN=${CAIRN_BIN:-$REPO_ROOT/target/release/cairn}
[ -x "$CAIRN" ] || (cd "$REPO_ROOT" && cargo build --release)
command -v pgbackrest >/dev/null || { echo "install pgbackrest (apt-get install pgbackrest)" >&2; exit 1; }
BIN=$(pg_config --bindir)
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for d in data cairn-restore pgbr-restore; do
  [ -d "$WORK/$d" ] && as_pg "$BIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true
done
rm -rf "$WORK" && mkdir -p "$WORK/sock"
cp "$CAIRN" "$WORK/cairn"
chown -R postgres:postgres "$WORK"
PORT=$(free_port)

as_pg "$WORK/cairn" --repo "$WORK/cairn-repo" --key-file "$WORK/cairn.key" init >/dev/null 2>&1
as_pg "$WORK/cairn" --repo "$WORK/cairn-direct" --key-file "$WORK/cairn-direct.key" init >/dev/null 2>&1
CAIRN_OPTS="--repo $WORK/cairn-repo --key-file $WORK/cairn.key --cache-dir $WORK/cache"
DIRECT_OPTS="--repo $WORK/cairn-direct --key-file $WORK/cairn-direct.key --cache-dir $WORK/cache"
cat > "$WORK/pgbackrest.conf" <<EOF
[global]
repo1-path=$WORK/pgbr
log-path=$WORK
lock-path=$WORK
spool-path=$WORK
compress-type=zst
compress-level=1
process-max=2
start-fast=y

[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK/sock
pg1-port=$PORT
EOF
chown postgres:postgres "$WORK/pgbackrest.conf"
PGBR="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench --log-level-console=warn"

as_pg "$BIN/initdb" -D "$WORK/data" -A trust -U postgres --no-sync >/dev/null
cat >> "$WORK/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
wal_level = replica
archive_mode = on
archive_command = '$WORK/cairn $CAIRN_OPTS wal push %p --source bench && $WORK/cairn $DIRECT_OPTS wal push %p --source bench && $PGBR archive-push %p'
max_wal_size = 4GB
EOF
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
trap 'for d in data cairn-restore pgbr-restore; do as_pg "$BIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true; done' EXIT
as_pg $PGBR stanza-create
as_pg "$BIN/pgbench" -h "$WORK/sock" -p "$PORT" -U postgres -i -s "$SCALE" -q postgres >/dev/null 2>&1
as_pg "$BIN/psql" -h "$WORK/sock" -p "$PORT" -U postgres -Atc 'checkpoint' postgres >/dev/null
SIZE=$(du -sb "$WORK/data" | cut -f1)
echo "cluster: $SIZE bytes" >&2

t=$(now); as_pg "$WORK/cairn" $CAIRN_OPTS backup pg-base --name base --source bench --dbname "host=$WORK/sock port=$PORT" >/dev/null; CAIRN_BACKUP=$(since "$t")
t=$(now); as_pg "$WORK/cairn" $DIRECT_OPTS backup pg-base --name base --source bench --pgdata "$WORK/data" --dbname "host=$WORK/sock port=$PORT" >/dev/null; DIRECT_BACKUP=$(since "$t")
t=$(now); as_pg $PGBR backup --type=full >/dev/null; PGBR_BACKUP=$(since "$t")

as_pg "$BIN/pgbench" -h "$WORK/sock" -p "$PORT" -U postgres -c 2 -j 2 -t "$((TX / 2))" postgres >/dev/null 2>&1
EXPECTED=$(as_pg "$BIN/psql" -h "$WORK/sock" -p "$PORT" -U postgres -Atc 'select sum(abalance) from pgbench_accounts' postgres)
as_pg "$BIN/psql" -h "$WORK/sock" -p "$PORT" -U postgres -Atc 'select pg_switch_wal()' postgres >/dev/null
sleep 5
SEGMENTS=$(ls "$WORK/cairn-repo/wal/bench" | grep -c '^[0-9A-F]\{24\}$')
as_pg "$BIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null

# cairn: restore, recover to the latest archived WAL, promoted and queryable.
CPORT=$(free_port)
t=$(now)
as_pg "$WORK/cairn" $DIRECT_OPTS pitr --source bench --latest --start --archive-mode off --port "$CPORT" --pgdata "$WORK/cairn-restore" >/dev/null 2>&1
CAIRN_PITR=$(since "$t")
CAIRN_SUM=$(as_pg "$BIN/psql" -h "$WORK/cairn-restore" -p "$CPORT" -U postgres -Atc 'select sum(abalance) from pgbench_accounts' postgres)
as_pg "$BIN/pg_ctl" -D "$WORK/cairn-restore" -m fast -w stop >/dev/null

# pgBackRest: restore, start, wait until promoted and queryable.
PPORT=$(free_port)
t=$(now)
as_pg $PGBR restore --pg1-path="$WORK/pgbr-restore" --archive-mode=off >/dev/null
echo "port = $PPORT" >> "$WORK/pgbr-restore/postgresql.auto.conf"
echo "unix_socket_directories = '$WORK/pgbr-restore'" >> "$WORK/pgbr-restore/postgresql.auto.conf"
as_pg "$BIN/pg_ctl" -D "$WORK/pgbr-restore" -l "$WORK/pgbr-restore.log" start >/dev/null
until [ "$(as_pg "$BIN/psql" -h "$WORK/pgbr-restore" -p "$PPORT" -U postgres -Atc 'select pg_is_in_recovery()' postgres 2>/dev/null)" = f ]; do sleep 0.1; done
PGBR_PITR=$(since "$t")
PGBR_SUM=$(as_pg "$BIN/psql" -h "$WORK/pgbr-restore" -p "$PPORT" -U postgres -Atc 'select sum(abalance) from pgbench_accounts' postgres)
as_pg "$BIN/pg_ctl" -D "$WORK/pgbr-restore" -m fast -w stop >/dev/null

{
  echo "# Base backup and PITR benchmark ($(date -u +%F); pgbench -s $SCALE, $SIZE bytes; then $TX transactions, $SEGMENTS archived segments)"
  echo
  echo "| | cairn | pgBackRest 2.45 (zst 1, process-max 2) |"
  echo "| --- | ---: | ---: |"
  echo "| full base backup, through pg_basebackup (s) | $CAIRN_BACKUP | |"
  echo "| full base backup, reading PGDATA (\`--pgdata\`) (s) | $DIRECT_BACKUP | $PGBR_BACKUP |"
  echo "| recovery to the latest WAL, until promoted and queryable (s) | $CAIRN_PITR | $PGBR_PITR |"
  echo
  echo "sum(abalance): primary $EXPECTED; cairn $CAIRN_SUM; pgBackRest $PGBR_SUM"
  echo "stored: cairn $(du -sb "$WORK/cairn-repo" | cut -f1) bytes (--pgdata: $(du -sb "$WORK/cairn-direct" | cut -f1)); pgBackRest $(du -sb "$WORK/pgbr" | cut -f1) bytes"
} | tee "$WORK/results.md"
