//! `backup sqlite` and SQLite restores: consistent snapshots of databases that another
//! process writes continuously, checks before storing and before replacing, safety copies.

use super::harness::Env;
use rusqlite::Connection;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Accounts start with 100 each; every transaction moves 1 between two accounts, appends
/// a log row and records its sequence number. In any committed state the balances sum to
/// `ACCOUNTS * 100` and the log has exactly `last_seq` rows.
const ACCOUNTS: i64 = 50;

fn create(path: &Path, journal_mode: &str) {
    let conn = Connection::open(path).unwrap();
    conn.query_row(&format!("PRAGMA journal_mode={journal_mode}"), [], |_| Ok(())).unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE accounts(id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
         CREATE TABLE log(seq INTEGER PRIMARY KEY, note TEXT NOT NULL);
         CREATE INDEX log_note ON log(note);
         CREATE TABLE meta(last_seq INTEGER NOT NULL);
         INSERT INTO meta VALUES (0);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS})
         INSERT INTO accounts SELECT i, 100 FROM n;
         PRAGMA user_version = 42;"
    ))
    .unwrap();
}

/// A separate process (python3's sqlite3) committing transactions as fast as it can.
fn start_writer(path: &Path) -> Child {
    let script = format!(
        r#"
import sqlite3, random, sys
c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
seq = c.execute("select last_seq from meta").fetchone()[0]
while True:
    seq += 1
    a, b = random.sample(range(1, {ACCOUNTS} + 1), 2)
    c.execute("begin immediate")
    c.execute("update accounts set balance = balance - 1 where id = ?", (a,))
    c.execute("insert into log values (?, ?)", (seq, "x" * random.randint(10, 400)))
    c.execute("update accounts set balance = balance + 1 where id = ?", (b,))
    c.execute("update meta set last_seq = ?", (seq,))
    c.execute("commit")
"#
    );
    Command::new("python3").arg("-c").arg(script).arg(path).stdout(Stdio::null()).spawn().expect("python3 runs")
}

/// Check a restored database: integrity_check passes and the invariants of a committed
/// state hold. Returns its `last_seq`.
fn committed_state(path: &Path) -> i64 {
    let conn = Connection::open(path).unwrap();
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    let sum: i64 = conn.query_row("SELECT sum(balance) FROM accounts", [], |r| r.get(0)).unwrap();
    assert_eq!(sum, ACCOUNTS * 100, "balances of {} are from a torn transaction", path.display());
    let (rows, max, last): (i64, Option<i64>, i64) = conn
        .query_row("SELECT count(*), max(seq), (SELECT last_seq FROM meta) FROM log", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!((rows, max.unwrap_or(0)), (last, last), "log and last_seq disagree in {}", path.display());
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 42);
    last
}

fn snapshots_under_a_writer(journal_mode: &str, rounds: usize) {
    let env = Env::new();
    let db = env.path("app.db");
    create(&db, journal_mode);
    let mut writer = start_writer(&db);
    let mut ids = Vec::new();
    for _ in 0..rounds {
        std::thread::sleep(std::time::Duration::from_millis(60));
        let out = env.cmd().args(["--json", "backup", "sqlite"]).arg(&db).args(["--name", "app"]).assert().success();
        let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        ids.push(report["id"].as_str().unwrap().to_string());
    }
    let _ = writer.kill();
    let _ = writer.wait();
    let mut seqs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let target = env.path(&format!("restored-{i}.db"));
        env.cmd().args(["restore", id, "--to"]).arg(&target).assert().success();
        seqs.push(committed_state(&target));
    }
    assert!(seqs.windows(2).all(|w| w[0] <= w[1]), "snapshots went back in time: {seqs:?}");
    assert!(seqs.last().unwrap() - seqs[0] > 10, "the writer made no progress between snapshots: {seqs:?}");
    let snapshot = &env.snapshots()[0];
    assert_eq!(snapshot["kind"], "sqlite");
    let meta = env.cmd().args(["cat", "snapshot", &ids[0]]).assert().success().get_output().stdout.clone();
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["snapshot"]["meta"]["journal_mode"], journal_mode);
    assert_eq!(meta["snapshot"]["meta"]["check_result"], "ok");
    assert_eq!(meta["snapshot"]["meta"]["user_version"], 42);
    assert!(meta["snapshot"]["meta"]["page_count"].as_i64().unwrap() > 1);
    assert_eq!(meta["snapshot"]["meta"]["page_size"], 4096);
}

#[test]
fn wal_database_under_a_continuous_writer_gives_20_committed_states() {
    snapshots_under_a_writer("wal", 20);
}

#[test]
fn rollback_journal_database_under_a_writer_gives_committed_states() {
    snapshots_under_a_writer("delete", 6);
}

#[test]
fn restore_moves_the_old_database_aside_and_verify_only_touches_nothing() {
    let env = Env::new();
    let db = env.path("q.db");
    create(&db, "wal");
    env.cmd().args(["backup", "sqlite"]).arg(&db).args(["--name", "q", "--check", "full"]).assert().success();
    // The live database moves on, with a -wal that holds committed rows.
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA wal_autocheckpoint=0; UPDATE meta SET last_seq = 7; INSERT INTO log VALUES (1, 'a');")
        .unwrap();
    let wal = env.path("q.db-wal");
    assert!(wal.exists());

    let out = env.cmd().args(["restore", "latest", "--verify-only"]).assert().success();
    let said = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(said.contains("quick_check ok"), "{said}");
    assert!(wal.exists(), "--verify-only touched the live database");

    env.cmd().args(["restore", "latest", "--to"]).arg(&db).assert().success();
    drop(conn);
    let aside: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("q.db.before-restore-"))
        .collect();
    assert_eq!(aside.len(), 2, "expected the safety copy and its -wal: {aside:?}");
    let safety = aside.iter().find(|n| !n.ends_with("-wal")).unwrap();
    assert!(aside.contains(&format!("{safety}-wal")));
    // The safety copy still holds what was committed after the backup.
    let old = Connection::open(env.path(safety)).unwrap();
    assert_eq!(old.query_row("SELECT last_seq FROM meta", [], |r| r.get::<_, i64>(0)).unwrap(), 7);
    // The restored database is the backed-up state.
    assert_eq!(committed_state(&db), 0);
}

#[test]
fn bad_databases_are_refused_with_a_clear_message() {
    let env = Env::new();
    let text = env.path("notes.txt");
    std::fs::write(&text, vec![b'x'; 8192]).unwrap();
    let out = env.cmd().args(["backup", "sqlite"]).arg(&text).args(["--name", "n"]).assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("is not a SQLite database") && err.contains("notes.txt"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let missing = env.path("missing.db");
    env.cmd().args(["backup", "sqlite"]).arg(&missing).args(["--name", "n"]).assert().code(1);
    assert!(!missing.exists(), "a missing database must not be created");

    // Corrupt the index's root page: the file still opens, the check fails.
    let db = env.path("broken.db");
    create(&db, "delete");
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("INSERT INTO log SELECT value, printf('note %d', value) FROM generate_series(1, 2000);")
        .unwrap_or_else(|_| {
            for i in 1..2000 {
                conn.execute("INSERT INTO log VALUES (?1, ?2)", rusqlite::params![i, format!("note {i}")]).unwrap();
            }
        });
    let root: i64 =
        conn.query_row("SELECT rootpage FROM sqlite_master WHERE name = 'log_note'", [], |r| r.get(0)).unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&db).unwrap();
    let start = (root as usize - 1) * 4096;
    for (i, b) in bytes[start + 8..start + 4096].iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    std::fs::write(&db, bytes).unwrap();
    let out = env.cmd().args(["backup", "sqlite"]).arg(&db).args(["--name", "b"]).assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("fails quick_check") && err.contains("--allow-corrupt"), "{err}");
    assert!(env.snapshots().is_empty(), "a failing database was stored");

    // A page whose header is garbage (its type byte 0): the check itself fails ("database
    // disk image is malformed"), and that is reported against the database given, never
    // against the scratch copy cairn checks.
    let header = env.path("header.db");
    create(&header, "delete");
    let conn = Connection::open(&header).unwrap();
    for i in 1..3000 {
        conn.execute("INSERT INTO log VALUES (?1, ?2)", rusqlite::params![i, format!("note {i}")]).unwrap();
    }
    let table: i64 = conn.query_row("SELECT rootpage FROM sqlite_master WHERE name = 'log'", [], |r| r.get(0)).unwrap();
    drop(conn);
    let mut bytes = std::fs::read(&header).unwrap();
    bytes[(table as usize - 1) * 4096] = 0;
    std::fs::write(&header, bytes).unwrap();
    let out = env.cmd().args(["backup", "sqlite"]).arg(&header).args(["--name", "h"]).assert().code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains(header.to_str().unwrap()) && !err.contains("cairn-sqlite-"), "{err}");
    assert!(err.contains("malformed"), "{err}");

    let out = env
        .cmd()
        .args(["--json", "backup", "sqlite"])
        .arg(&db)
        .args(["--name", "b", "--allow-corrupt"])
        .assert()
        .code(3);
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    let snapshot = &env.snapshots()[0];
    assert_eq!(snapshot["tags"], serde_json::json!(["corrupt"]));
    let id = report["id"].as_str().unwrap();
    let meta = env.cmd().args(["cat", "snapshot", id]).assert().success().get_output().stdout.clone();
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["snapshot"]["meta"]["corrupt"], true);
    assert_ne!(meta["snapshot"]["meta"]["check_result"], "ok");
    // Restoring it refuses to replace anything: the check fails first (exit 13).
    let target = env.path("target.db");
    std::fs::write(&target, b"precious").unwrap();
    env.cmd().args(["restore", id, "--to"]).arg(&target).assert().code(13);
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
}
