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
for variant in gz zst zst3enc; do
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
  if [ "$variant" = zst3enc ]; then
    printf 'repo1-cipher-type=aes-256-cbc\nrepo1-cipher-pass=benchmark-passphrase\n' >> "$WORK/pgbackrest-$variant.conf"
    sed -i 's/^\[global\]$/[global]\ncompress-type=zst\ncompress-level=3/' "$WORK/pgbackrest-$variant.conf"
  fi
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

# A pg_wal of the copies, with archive_status/*.ready, for `wal push --async`: its
# pusher reads the ready files the way it reads the server's.
mkdir -p "$WORK/pg_wal/archive_status"
for f in $(ls "$WORK/segments" | grep '^[0-9A-F]\{24\}$'); do
  cp "$WORK/segments/$f" "$WORK/pg_wal/$f" && : > "$WORK/pg_wal/archive_status/$f.ready"
done
chown -R postgres:postgres "$WORK/pg_wal"
as_pg "$WORK/cairn" --repo "$WORK/cairn-async-repo" --key-file "$WORK/cairn-async.key" init >/dev/null 2>&1

# async_push_all: one `wal push --async` per file in order, as the archiver calls it;
# each marks its file done (.ready -> .done) on success, as PostgreSQL does.
async_push_all() {
  as_pg bash -c '
    start=$(date +%s.%N)
    for f in $(ls '"$WORK"'/pg_wal | grep "^[0-9A-F]\{24\}$" | sort); do
      '"$WORK"'/cairn --repo '"$WORK"'/cairn-async-repo --key-file '"$WORK"'/cairn-async.key wal push '"$WORK"'/pg_wal/$f --source bench --async --spool '"$WORK"'/push-spool >/dev/null || exit 1
      mv '"$WORK"'/pg_wal/archive_status/$f.ready '"$WORK"'/pg_wal/archive_status/$f.done
    done
    end=$(date +%s.%N)
    echo "$start $end"' | {
    read -r start end
    python3 -c "
n=$N; t=$end-$start
print(f'| cairn wal push --async (pusher: 4 at a time) | {n} | {t:.2f} | {n/t:.1f} | {1000*t/n:.1f} |')"
  }
}

# fetch_all NAME PREFIX SUFFIX: restore every segment in order, one process each, as
# restore_command is called (%f %p), into one RECOVERYXLOG.
fetch_all() {
  local name=$1 prefix=$2 suffix=$3
  rm -rf "$WORK/restore" "$WORK/fetch-spool" && as_pg mkdir -p "$WORK/restore"
  as_pg bash -c '
    start=$(date +%s.%N)
    for f in $(ls '"$WORK"'/segments | grep "^[0-9A-F]\{24\}$" | sort); do
      '"$prefix"' $f '"$WORK"'/restore/RECOVERYXLOG '"$suffix"' >/dev/null || exit 1
    done
    end=$(date +%s.%N)
    echo "$start $end"' | {
    read -r start end
    python3 -c "
n=$N; t=$end-$start
print(f'| $name | {n} | {t:.2f} | {n/t:.1f} | {1000*t/n:.1f} |')"
  }
}

# pgBackRest's encrypted zst 3 repository for archive-get, filled without timing.
for f in $(ls "$WORK/segments" | grep '^[0-9A-F]\{24\}$' | sort); do
  as_pg pgbackrest --config="$WORK/pgbackrest-zst3enc.conf" --stanza=bench --log-level-console=warn archive-push "$WORK/segments/$f"
done

{
  echo "# WAL push benchmark ($(date -u +%F), $N segments of 16 MiB from pgbench -i -s $SCALE)"
  echo
  echo "| tool | files | seconds | files/s | ms per file |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  push_all "cairn wal push (zstd 1, AES-GCM)" "$WORK/cairn --repo $WORK/cairn-repo --key-file $WORK/cairn.key wal push --source bench"
  push_all "pgbackrest archive-push (default: gz 6)" "pgbackrest --config=$WORK/pgbackrest-gz.conf --stanza=bench --log-level-console=warn archive-push"
  push_all "pgbackrest archive-push (zst 1)" "pgbackrest --config=$WORK/pgbackrest-zst.conf --stanza=bench --log-level-console=warn --compress-type=zst --compress-level=1 archive-push"
  async_push_all
  echo
  echo "# WAL fetch benchmark (restore_command, one process per segment, in order)"
  echo
  echo "| tool | files | seconds | files/s | ms per file |"
  echo "| --- | ---: | ---: | ---: | ---: |"
  CAIRN_FETCH="$WORK/cairn --repo $WORK/cairn-repo --key-file $WORK/cairn.key wal fetch"
  fetch_all "cairn wal fetch (key file)" "$CAIRN_FETCH" "--source bench"
  fetch_all "cairn wal fetch --prefetch 8" "$CAIRN_FETCH" "--source bench --prefetch 8 --spool $WORK/fetch-spool"
  fetch_all "pgbackrest archive-get (zst 3, aes-256-cbc)" "pgbackrest --config=$WORK/pgbackrest-zst3enc.conf --stanza=bench --log-level-console=warn archive-get" ""
  fetch_all "pgbackrest archive-get (zst 1)" "pgbackrest --config=$WORK/pgbackrest-zst.conf --stanza=bench --log-level-console=warn archive-get" ""
  echo
  echo "stored: cairn $(du -sb "$WORK/cairn-repo/wal" | cut -f1) bytes; pgbackrest gz $(du -sb "$WORK/pgbr-gz/archive" | cut -f1) bytes; pgbackrest zst 1 $(du -sb "$WORK/pgbr-zst/archive" | cut -f1) bytes; input $BYTES bytes"
} | tee "$WORK/results.md"
