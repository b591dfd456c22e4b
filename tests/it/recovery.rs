//! Point-in-time recovery that must never land short: gaps, timelines, missing keys,
//! unreadable files, the first base backup, archiving that stalls, exact stop times and
//! data directories of many files, each against real PostgreSQL 15 clusters.

use crate::pg::{base_backed_up, chown_postgres, text, Cluster, PgEnv};
use crate::s3server::free_port;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// `cairn [--json] pitr --source main --start --archive-mode off` into `<dir>/<name>`.
fn pitr(env: &PgEnv, name: &str, target: &[&str]) -> (Output, u16) {
    env.pitr(name, target)
}

/// Insert rows `from..=to` into t.
fn insert(cluster: &Cluster, from: u32, to: u32) {
    cluster.sql(&format!("insert into t select generate_series({from}, {to})"));
}

fn utc_now(cluster: &Cluster) -> String {
    cluster.sql("select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

fn base_backup(env: &PgEnv, cluster: &Cluster, extra: &[&str]) -> Output {
    env.cairn_cmd()
        .args(["--json", "backup", "pg-base", "--name", "base", "--source", "main", "--dbname"])
        .arg(cluster.conninfo("postgres"))
        .args(extra)
        .output()
        .unwrap()
}

fn snapshot_id(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["id"].as_str().unwrap().to_string()
}

fn drill_config(env: &PgEnv, cluster: &Cluster) -> std::path::PathBuf {
    let d = env.dir.path();
    let config = format!(
        "[repository]\nurl = \"{}\"\nkey_file = \"{}/key\"\ncache_dir = \"{}/cache-root\"\n\n\
         [[source]]\nname = \"base\"\nkind = \"pg-base\"\nwal_source = \"main\"\ndbname = \"{}\"\n",
        env.repo,
        d.display(),
        d.display(),
        cluster.conninfo("postgres")
    );
    std::fs::write(d.join("cairn.toml"), config).unwrap();
    d.join("cairn.toml")
}

fn drill(env: &PgEnv, config: &std::path::Path) -> (Output, serde_json::Value) {
    let out = env.cairn_cmd().args(["--json", "drill", "--config"]).arg(config).arg("base").output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, report)
}

/// One archived segment removed after the base's end: --latest, an LSN past it and the
/// drill refuse, naming it, before restoring anything (they used to stop at the gap
/// and report success with half the rows); a time target before it still recovers, with
/// a warning, from a relative --repo.
#[test]
fn a_gap_in_the_archive_is_refused_not_taken_for_its_end() {
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    insert(&main, 1, 100);
    let time = utc_now(&main);
    std::thread::sleep(Duration::from_millis(1100));
    insert(&main, 101, 150);
    main.switch_wal();
    insert(&main, 151, 250);
    let missing = main.switch_wal();
    insert(&main, 251, 300);
    let after = main.sql("select pg_current_wal_lsn()");
    let last = main.switch_wal();
    main.wait_archived(&last);
    std::fs::remove_file(env.path("repo/wal/main").join(&missing)).unwrap();

    let (out, _) = pitr(&env, "latest", &["--latest"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&format!("gap: {missing} is missing")), "{}", text(&out));
    assert!(!env.path("latest").exists(), "nothing was restored");
    let (out, _) = pitr(&env, "past", &["--target-lsn", &after]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&missing), "{}", text(&out));
    assert!(!env.path("past").exists(), "nothing was restored");

    let config = drill_config(&env, &main);
    let (out, report) = drill(&env, &config);
    assert_eq!(out.status.code(), Some(13), "{}", text(&out));
    assert_eq!(report[0]["passed"], false, "{report}");
    assert!(report[0]["error"].as_str().unwrap_or("").contains(&missing), "{report}");

    // Relative paths: the restore_command the server runs from its data directory must
    // still find the repository and the key.
    let port = free_port();
    let out = Command::new(&env.cairn)
        .current_dir(env.dir.path())
        .args(["--repo", "repo", "--key-file", "key", "--cache-dir", "cache-root"])
        .args(["pitr", "--source", "main", "--start", "--archive-mode", "off", "--pgdata", "by-time"])
        .args(["--port", &port.to_string(), "--target-time", &time])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("warning: {missing} is missing")), "{}", text(&out));
    assert_eq!(env.count_and_stop("by-time", port), "100");
    main.stop();
}

/// A missing key file is a failed fetch (126), not "not archived" (1), so the server
/// stops instead of promoting on what it has; an unparseable fetch too. A key file the
/// server's user cannot read is found before anything is restored, in cairn's words.
#[test]
fn a_missing_or_unreadable_key_file_stops_recovery() {
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    insert(&main, 1, 100);
    let last = main.switch_wal();
    main.wait_archived(&last);
    main.stop();

    let dest = env.path("fetched");
    let out = Command::new(&env.cairn)
        .args(["--repo", &env.repo, "--key-file", "/nonexistent/key", "wal", "fetch", &last])
        .arg(&dest)
        .args(["--source", "main"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("/nonexistent/key"), "{}", text(&out));
    let out = env.cairn_cmd().args(["wal", "fetch", &last]).arg(&dest).args(["--sorce", "main"]).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "a fetch it cannot parse must stop recovery: {}", text(&out));
    assert!(!dest.exists());

    // The key vanishes between configuring recovery and starting the server.
    std::fs::copy(env.path("key"), env.path("key2")).unwrap();
    chown_postgres(&env.path("key2"));
    let out = Command::new(&env.cairn)
        .args(["--repo", &env.repo, "--key-file", env.path("key2").to_str().unwrap()])
        .args(["--cache-dir", env.path("cache-root").to_str().unwrap()])
        .args(["pitr", "--source", "main", "--latest", "--archive-mode", "off", "--pgdata"])
        .arg(env.path("vanished"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::remove_file(env.path("key2")).unwrap();
    let data = env.path("vanished");
    let log = data.join("server.log");
    let port = free_port().to_string();
    let _ = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(crate::pg::bindir().join("pg_ctl"))
        .args(["-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "-t", "60"])
        .args(["-o", &format!("-p {port} -k {}", data.display()), "start"])
        .output()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while data.join("postmaster.pid").exists() {
        assert!(Instant::now() < deadline, "the server kept running without its WAL");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("selected new timeline ID"), "never promoted: {log}");
    assert!(log.contains("FATAL:  could not restore file"), "{log}");

    // Root-only key file: readable by cairn (root), not by the server (postgres).
    std::fs::copy(env.path("key"), env.path("rootkey")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.path("rootkey"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new(&env.cairn)
        .args(["--repo", &env.repo, "--key-file", env.path("rootkey").to_str().unwrap()])
        .args(["--cache-dir", env.path("cache-root").to_str().unwrap()])
        .args(["pitr", "--source", "main", "--latest", "--start", "--pgdata"])
        .arg(env.path("rootonly"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("Permission denied") && said.contains("nothing was restored"), "{said}");
    assert_eq!(said.trim().lines().count(), 1, "one line: {said}");
    assert!(!env.path("rootonly").exists());
}

/// A clone recovered with archiving on branches timeline 2 into the same source; the
/// primary goes on along timeline 1 and takes a new base. --latest, a time target and the
/// drill still recover timeline 1 (PostgreSQL's own `latest` led them onto timeline 2 and
/// failed: "could not locate required checkpoint record"); timeline 2 is reached with
/// --target-timeline, by --latest and by an LSN on it that used to be refused.
#[test]
fn a_branch_in_the_same_source_never_breaks_recovery_of_another_timeline() {
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    insert(&main, 1, 100);
    main.sql("select pg_create_restore_point('r1')");
    let first = main.switch_wal();
    main.wait_archived(&first);

    // The clone: archiving preserved, so it pushes timeline 2 into source main.
    let port = free_port();
    let out = env
        .cairn_cmd()
        .args(["pitr", "--source", "main", "--start", "--port", &port.to_string(), "--pgdata"])
        .arg(env.path("clone"))
        .args(["--target-name", "r1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let clone = env.path("clone");
    let psql = |sql: &str| crate::pg::psql_at(&clone, port, sql);
    psql("insert into t select generate_series(1001, 2000)");
    let clone_lsn = psql("select pg_current_wal_lsn()");
    let clone_segment = psql("select pg_walfile_name(pg_switch_wal())");
    assert!(clone_segment.starts_with("00000002"), "{clone_segment}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql("select coalesce(last_archived_wal, '') from pg_stat_archiver") < clone_segment {
        assert!(Instant::now() < deadline, "the clone did not archive {clone_segment}");
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::pg::as_postgres("pg_ctl", &["-D", clone.to_str().unwrap(), "-m", "fast", "-w", "stop"]);

    // The primary goes on along timeline 1, with a base taken after the branch.
    insert(&main, 101, 200);
    main.switch_wal();
    let b2 = snapshot_id(&base_backup(&env, &main, &[]));
    insert(&main, 201, 250);
    let time = utc_now(&main);
    std::thread::sleep(Duration::from_millis(1100));
    insert(&main, 251, 300);
    let last = main.switch_wal();
    main.wait_archived(&last);

    let (out, port) = pitr(&env, "latest", &["--latest"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("follows timeline 1") && text(&out).contains(&b2[..8]), "{}", text(&out));
    assert!(text(&out).contains("not followed: timeline 2 (branched from 1 at"), "{}", text(&out));
    assert_eq!(env.count_and_stop("latest", port), "300");
    let (out, port) = pitr(&env, "by-time", &["--target-time", &time]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.count_and_stop("by-time", port), "250");
    let config = drill_config(&env, &main);
    let (out, report) = drill(&env, &config);
    assert!(out.status.success(), "{}", text(&out));
    assert!(report[0]["details"].to_string().contains("public.t=300"), "{report}");

    // Timeline 2, from the base before the branch.
    let (out, port) = pitr(&env, "tl2", &["--latest", "--target-timeline", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("follows timeline 2"), "{}", text(&out));
    assert_eq!(env.count_and_stop("tl2", port), "1100");
    let (out, port) = pitr(&env, "tl2-lsn", &["--target-lsn", &clone_lsn, "--target-timeline", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(env.count_and_stop("tl2-lsn", port), "1100");
    let (out, _) = pitr(&env, "tl2-b2", &["--latest", "--target-timeline", "2", "--base", &b2]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is not on the history of timeline"), "{}", text(&out));
    main.stop();
}

/// Right after `archive_mode = on` the first base backup works (a forced segment switch,
/// waited for). When archiving fails, the backup ends after --wal-timeout with a message
/// that points at the archiver, whether it waits for the first segment or pg_basebackup
/// waits at the end (it used to hang for as long as archiving failed), and commits nothing.
#[test]
fn the_first_base_backup_works_and_stalled_archiving_times_out() {
    let env = PgEnv::new();
    let mut fresh = env.cluster("fresh", &env.archiving("main"));
    fresh.start();
    let out = base_backup(&env, &fresh, &[]);
    assert!(out.status.success(), "the first base backup right after archive_mode = on: {}", text(&out));

    fresh.sql("alter system set archive_command = '/bin/false'");
    fresh.sql("select pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let out = base_backup(&env, &fresh, &["--wal-timeout", "4"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("archive_command") && text(&out).contains("failed attempts"), "{}", text(&out));
    assert!(started.elapsed() < Duration::from_secs(120), "the timeout fired: {:?}", started.elapsed());
    fresh.stop();

    let broken = env.path("broken-archive");
    let mut other = env.cluster("other", "wal_level = replica\narchive_mode = on\narchive_command = '/bin/false'\n");
    other.start();
    let out = env
        .cairn_cmd()
        .args(["backup", "pg-base", "--name", "other", "--source", "other", "--wal-timeout", "3", "--dbname"])
        .arg(other.conninfo("postgres"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("forced segment switch") && text(&out).contains("failed attempts"), "{}", text(&out));
    other.stop();
    let snaps: serde_json::Value =
        serde_json::from_slice(&env.cairn_cmd().args(["--json", "snapshots"]).output().unwrap().stdout).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 1, "only the first backup committed: {snaps}");
    assert!(!broken.exists());
}

/// Commits run throughout a second base backup. Its recorded stop time is sub-second
/// and never before the real stop, so a target just after the second its backup label
/// names picks the earlier base (a whole-second stop time picked this one, and recovery
/// failed: "requested recovery stop point is before consistent recovery point").
#[test]
fn a_target_inside_a_backups_last_second_picks_a_base_consistent_there() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    let b1 = snapshot_id(&base_backup(&env, &main, &[]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, conninfo) = (stop.clone(), main.conninfo("postgres"));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let _ = Command::new("psql")
                    .args(["-X", "-q", "--dbname", &conninfo, "-c", &format!("insert into t values ({n})")])
                    .output();
            }
        })
    };
    // Some commits land more than a second before the second base starts, so before the
    // target below (the second its label names, which can begin after a short backup
    // started: under the suite's load the first commits once fell after it, and the
    // recovery rightly had none of them).
    let deadline = Instant::now() + Duration::from_secs(60);
    while main.sql("select count(*) from t").parse::<u64>().unwrap() < 5 {
        assert!(Instant::now() < deadline, "the writer commits nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1100));
    let b2 = snapshot_id(&base_backup(&env, &main, &[]));
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let last = main.switch_wal();
    main.wait_archived(&last);

    let snaps: serde_json::Value =
        serde_json::from_slice(&env.cairn_cmd().args(["--json", "snapshots"]).output().unwrap().stdout).unwrap();
    let second = snaps.as_array().unwrap().iter().find(|s| s["id"] == b2.as_str()).unwrap();
    let stop_time = second["meta"]["stop_time"].as_str().unwrap();
    let label = second["meta"]["stop_time_text"].as_str().unwrap();
    let (civil, zone) = label.rsplit_once(' ').unwrap();
    assert_eq!(zone, "UTC", "the test cluster logs in UTC: {label}");
    let second_start = format!("{}Z", civil.replace(' ', "T"));
    let (recorded, whole): (jiff::Timestamp, jiff::Timestamp) =
        (stop_time.parse().unwrap(), second_start.parse().unwrap());
    assert!(
        recorded >= whole && recorded <= whole + jiff::SignedDuration::from_secs(1),
        "{stop_time} within {label}'s second"
    );
    let target = format!("{}.001Z", civil.replace(' ', "T"));
    let (out, port) = pitr(&env, "inside", &["--target-time", &target]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&b1[..8]), "the earlier base was chosen: {}", text(&out));
    let rows: u64 = env.count_and_stop("inside", port).parse().unwrap();
    assert!(rows > 0, "commits before the target {target} were replayed: {}", text(&out));
    main.stop();
}

/// 3,000 files under `ulimit -n 256`: a data directory of 3,000 tables recovers by PITR
/// (restores used to keep every file of a pack range open and fail at 1,024).
#[test]
fn pitr_of_thousands_of_files_stays_within_256_open_files() {
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    main.sql("do $$ begin for i in 1..3000 loop execute format('create table f%s as select %s as x', i, i); end loop; end $$");
    main.switch_wal();
    let b = base_backup(&env, &main, &[]);
    snapshot_id(&b);
    insert(&main, 1, 10);
    let last = main.switch_wal();
    main.wait_archived(&last);
    main.stop();
    let port = free_port();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=256:256").arg("--").arg(&env.cairn);
    for (k, _) in std::env::vars() {
        if k.starts_with("CAIRN_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["--repo", &env.repo, "--key-file", env.path("key").to_str().unwrap()])
        .args(["--cache-dir", env.path("cache-root").to_str().unwrap()])
        .args(["pitr", "--source", "main", "--latest", "--start", "--archive-mode", "off"])
        .args(["--port", &port.to_string(), "--pgdata"])
        .arg(env.path("many"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let files = crate::harness::walk(&env.path("many")).len();
    assert!(files > 3000, "{files} files restored");
    assert_eq!(env.count_and_stop("many", port), "10");
}

/// `backup pg --globals` keeps the roles (without passwords unless asked) with the dump;
/// `restore --to-db --create` into a fresh cluster applies them first, so ownership
/// restores (it used to fail on the missing role and leave a half-restored database),
/// and into a cluster that has them already, keeps them ("role postgres already
/// exists" used to stop it). --no-globals with --no-owner and --role restores without.
#[test]
fn roles_are_backed_up_with_a_dump_and_restored_before_it() {
    let env = PgEnv::new();
    let mut main = env.cluster("main", "");
    main.start();
    main.sql("create role app_owner login");
    main.sql("create role \"Odd \"\"Name\" login password 'hunter2'");
    main.sql("create database app owner app_owner");
    main.sql_in(
        "app",
        "set role app_owner; create table items (x int); insert into items select generate_series(1, 42)",
    );
    let backup = |extra: &[&str]| {
        let out = env
            .cairn_cmd()
            .args(["--json", "backup", "pg", "--name", "app", "--globals", "--dbname", &main.conninfo("app")])
            .args(extra)
            .output()
            .unwrap();
        snapshot_id(&out)
    };
    let plain = backup(&[]);
    let with_passwords = backup(&["--role-passwords"]);
    let snaps: serde_json::Value =
        serde_json::from_slice(&env.cairn_cmd().args(["--json", "snapshots"]).output().unwrap().stdout).unwrap();
    let globals = |id: &str| {
        let s = snaps.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap();
        s["meta"]["globals"].as_str().unwrap().to_string()
    };
    assert!(globals(&plain).contains("CREATE ROLE app_owner;"), "{}", globals(&plain));
    assert!(!globals(&plain).contains("SCRAM-SHA-256"), "no password hashes unless asked");
    assert!(globals(&with_passwords).contains("SCRAM-SHA-256"), "{}", globals(&with_passwords));

    let mut fresh = env.cluster("fresh", "");
    fresh.start();
    let out =
        env.cairn_cmd().args(["restore", &plain, "--to-db", &fresh.conninfo("postgres"), "--create"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        fresh.sql_in("app", "select tableowner, (select count(*) from items) from pg_tables where tablename = 'items'"),
        "app_owner|42"
    );
    assert_eq!(fresh.sql("select count(*) from pg_roles where rolname = 'Odd \"Name'"), "1");

    // Into the cluster it came from: every role exists already.
    main.sql("create database app2");
    let out = env.cairn_cmd().args(["restore", &plain, "--to-db", &main.conninfo("app2")]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(main.sql_in("app2", "select count(*) from items"), "42");

    let mut bare = env.cluster("bare", "");
    bare.start();
    let out = env
        .cairn_cmd()
        .args(["restore", &plain, "--to-db", &bare.conninfo("postgres"), "--create", "--no-globals", "--no-owner"])
        .args(["--no-privileges", "--role", "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bare.sql_in("app", "select tableowner from pg_tables where tablename = 'items'"), "postgres");
    assert_eq!(bare.sql("select count(*) from pg_roles where rolname = 'app_owner'"), "0");
    bare.stop();
    fresh.stop();
    main.stop();
}

/// Two ways an archive can hold every name and still end recovery early. A segment
/// stored under another's name is refused by fetch (its first page says where it
/// starts), and by push. A segment zeroed after its first 256 KiB ends replay in its middle,
/// which PostgreSQL takes for the end of the WAL and promotes: pitr's check after replay
/// stops the server and fails instead of reporting success.
#[test]
fn segments_that_end_replay_early_are_caught() {
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    insert(&main, 1, 100);
    let a = main.switch_wal();
    insert(&main, 101, 20000);
    let b = main.switch_wal();
    insert(&main, 20001, 20100);
    let c = main.switch_wal();
    main.wait_archived(&c);
    main.stop();
    let stored = |name: &str| env.path("repo/wal/main").join(name);

    // b's object under c's name.
    let original_c = std::fs::read(stored(&c)).unwrap();
    std::fs::copy(stored(&b), stored(&c)).unwrap();
    let dest = env.path("fetched");
    let out = env.cairn_cmd().args(["wal", "fetch", &c]).arg(&dest).args(["--source", "main"]).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("wrong name"), "{}", text(&out));
    std::fs::write(stored(&c), &original_c).unwrap();
    // The same object under timeline 2's name for that place, or a history file's name,
    // or in another source: each object names its own key, authenticated.
    let other_timeline = format!("00000002{}", &c[8..]);
    let moved_to = |object: &std::path::Path, name: &str, source: &str| {
        let dir = env.path("repo/wal").join(source);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(object, dir.join(name)).unwrap();
        chown_postgres(&env.path("repo"));
        env.cairn_cmd().args(["wal", "fetch", name]).arg(&dest).args(["--source", source]).output().unwrap()
    };
    for (name, source) in [(other_timeline.as_str(), "main"), ("00000002.history", "main")] {
        let out = moved_to(&stored(&c), name, source);
        assert_eq!(out.status.code(), Some(126), "{name}: {}", text(&out));
        assert!(text(&out).contains("holds the file archived as wal/main/"), "{}", text(&out));
        std::fs::remove_file(env.path("repo/wal").join(source).join(name)).unwrap();
    }
    // A source with nothing archived (a misspelt --source) is not the end of the archive.
    let out = env.cairn_cmd().args(["wal", "fetch", &c]).arg(&dest).args(["--source", "mian"]).output().unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(text(&out).contains("has nothing archived"), "{}", text(&out));
    // And push of a file whose name is not its place.
    let out = env.cairn_cmd().args(["wal", "fetch", &a]).arg(&dest).args(["--source", "main"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let misnamed = env.path("misnamed");
    std::fs::create_dir_all(&misnamed).unwrap();
    std::fs::copy(&dest, misnamed.join(&b)).unwrap();
    let out =
        env.cairn_cmd().args(["wal", "push"]).arg(misnamed.join(&b)).args(["--source", "other"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("wrong name"), "{}", text(&out));

    // b pushed again with its second half zeroed.
    let out = env.cairn_cmd().args(["wal", "fetch", &b]).arg(&dest).args(["--source", "main"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut bytes = std::fs::read(&dest).unwrap();
    bytes[256 << 10..].fill(0);
    let truncated = env.path("truncated");
    std::fs::create_dir_all(&truncated).unwrap();
    std::fs::write(truncated.join(&b), &bytes).unwrap();
    std::fs::remove_file(stored(&b)).unwrap();
    let out =
        env.cairn_cmd().args(["wal", "push"]).arg(truncated.join(&b)).args(["--source", "main"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    chown_postgres(&env.path("repo"));
    let (out, _) = pitr(&env, "short", &["--latest"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains(&format!("before the last archived segment {c}")), "{}", text(&out));
    assert!(!env.path("short/postmaster.pid").exists(), "the short server was stopped");
}

/// `wal fetch --prefetch 4 --spool DIR`: the first fetch starts a background process that
/// fills the spool with the next four segments; a later fetch is served from it even with
/// the repository's copy gone; a name the archive lacks is still "not archived" (exit 1)
/// from the storage itself; what replay has passed leaves the spool.
#[test]
fn prefetch_serves_replay_from_the_spool_and_never_invents_an_end() {
    let env = PgEnv::new();
    let mut main = base_backed_up(&env);
    let mut segments = Vec::new();
    for i in 0..6 {
        insert(&main, i * 100 + 1, i * 100 + 100);
        segments.push(main.switch_wal());
    }
    main.wait_archived(segments.last().unwrap());
    main.stop();
    let spool = env.path("spool");
    let dest = env.path("RECOVERYXLOG");
    let fetch = |name: &str| {
        env.cairn_cmd()
            .args(["wal", "fetch", name])
            .arg(&dest)
            .args(["--source", "main", "--prefetch", "4", "--spool"])
            .arg(&spool)
            .output()
            .unwrap()
    };
    let out = fetch(&segments[0]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !segments[1..5].iter().all(|s| spool.join(s).exists()) {
        assert!(
            Instant::now() < deadline,
            "the spool was not filled: {:?}",
            std::fs::read_dir(&spool).unwrap().count()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!spool.join(&segments[5]).exists(), "no more than four ahead");
    let stored = env.path("repo/wal/main").join(&segments[1]);
    std::fs::rename(&stored, env.path("moved")).unwrap();
    let out = fetch(&segments[1]);
    assert!(out.status.success(), "served from the spool: {}", text(&out));
    let archived = std::fs::read(env.path("moved")).unwrap();
    assert!(!archived.is_empty());
    std::fs::rename(env.path("moved"), &stored).unwrap();
    // The window moves on, and what was passed is dropped.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spool.join(&segments[5]).exists() || spool.join(&segments[1]).exists() {
        assert!(Instant::now() < deadline, "the window did not move");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = fetch("0000000100000000000000FF");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // A file planted in the spool that is not the segment is never served.
    let planted = &segments[2];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !spool.join(planted).exists() {
        assert!(Instant::now() < deadline, "{planted} was not prefetched");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(spool.join(planted), b"garbage").unwrap();
    let out = fetch(planted);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20, "the archive's copy, not the planted one");
    // A spool that holds another source's WAL is not used for this one.
    let other = env.path("other-spool");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join(".owner"), "somewhere else\nmain\n").unwrap();
    std::fs::write(other.join(&segments[3]), b"not this").unwrap();
    let out = env
        .cairn_cmd()
        .args(["wal", "fetch", &segments[3]])
        .arg(&dest)
        .args(["--source", "main", "--prefetch", "4", "--spool"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20, "fetched from the archive");
    assert!(other.join(&segments[3]).exists(), "another owner's spool is left alone");
    // Every segment replays byte for byte through the spool.
    for s in &segments[2..] {
        let out = fetch(s);
        assert!(out.status.success(), "{}", text(&out));
        let direct = env
            .cairn_cmd()
            .args(["wal", "fetch", s])
            .arg(env.path("direct"))
            .args(["--source", "main"])
            .output()
            .unwrap();
        assert!(direct.status.success());
        assert!(std::fs::read(&dest).unwrap() == std::fs::read(env.path("direct")).unwrap(), "{s}");
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&spool).unwrap().permissions().mode() & 0o777, 0o700);
    std::fs::remove_dir_all(&spool).unwrap();
}

/// `wal push --async`: the pusher's failure on a file reaches the archive_command that
/// waits for it, with the reason (PostgreSQL retries), and a file it archived is
/// reported archived even when asked for after the pusher finished.
#[test]
fn async_push_reports_the_pushers_verdict() {
    let env = PgEnv::new();
    let cluster = env.cluster("c", "");
    let pg_wal = env.path("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let good = "000000010000000000000001";
    std::fs::copy(cluster.data.join("pg_wal").join(good), pg_wal.join(good)).unwrap();
    let bad = "000000010000000000000002";
    std::fs::write(pg_wal.join(bad), vec![0u8; 16 << 20]).unwrap();
    for name in [good, bad] {
        std::fs::write(pg_wal.join("archive_status").join(format!("{name}.ready")), "").unwrap();
    }
    let push = |name: &str| {
        env.cairn_cmd()
            .args(["wal", "push"])
            .arg(pg_wal.join(name))
            .args(["--source", "db", "--async", "--wait", "30", "--spool"])
            .arg(env.path("spool"))
            .output()
            .unwrap()
    };
    // A verdict left by hand (or by another source, or for another file of that name)
    // is not taken for this file's: it is pushed for real.
    std::fs::create_dir_all(env.path("spool/ok")).unwrap();
    std::fs::write(env.path("spool/ok").join(bad), "").unwrap();
    let out = push(bad);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("long WAL page header"), "{}", text(&out));
    // The good one was pushed alongside; its verdict waits for its archive_command.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !env.path("spool/ok").join(good).exists() {
        assert!(Instant::now() < deadline, "the pusher did not archive {good}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = push(good);
    assert!(out.status.success(), "{}", text(&out));
    let out =
        env.cairn_cmd().args(["wal", "fetch", good]).arg(env.path("back")).args(["--source", "db"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read(env.path("back")).unwrap() == std::fs::read(pg_wal.join(good)).unwrap());
}

/// `backup pg-base --pgdata`: the data directory read directly between pg_backup_start
/// and pg_backup_stop, while pgbench writes; recovery to the latest WAL gives exactly the
/// primary's data. The label is stored as backup_label; WAL, postmaster.pid and runtime
/// state are left out; another directory than the server's is refused.
#[test]
fn a_direct_base_backup_under_load_recovers_exactly() {
    let env = PgEnv::new();
    let mut main = env.cluster("main", &env.archiving("main"));
    main.start();
    main.pgbench(&["-i", "-s", "2", "-q"]);
    let first = main.switch_wal();
    main.wait_archived(&first);
    let out = env
        .cairn_cmd()
        .args([
            "backup",
            "pg-base",
            "--name",
            "base",
            "--source",
            "main",
            "--pgdata",
            env.path("elsewhere").to_str().unwrap(),
        ])
        .args(["--dbname", &main.conninfo("postgres")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = env
        .cairn_cmd()
        .args(["backup", "pg-base", "--name", "base", "--source", "main", "--pgdata"])
        .arg(env.path("main"))
        .args(["--dbname", &main.conninfo("postgres")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "not the data directory: {}", text(&out));
    assert!(text(&out).contains("is not this server's data directory"), "{}", text(&out));

    let load = {
        let conninfo = main.conninfo("postgres");
        let bindir = crate::pg::bindir();
        std::thread::spawn(move || {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bindir.join("pgbench"))
                .args(["-T", "4", "-c", "2", &conninfo])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = base_backup(&env, &main, &["--pgdata", main.data.to_str().unwrap()]);
    let id = snapshot_id(&out);
    let pgbench = load.join().unwrap();
    assert!(pgbench.status.success(), "{}", text(&pgbench));
    let expected = main.sql("select sum(delta), count(*) from pgbench_history");
    let last = main.switch_wal();
    main.wait_archived(&last);
    main.stop();

    let snaps: serde_json::Value =
        serde_json::from_slice(&env.cairn_cmd().args(["--json", "snapshots"]).output().unwrap().stdout).unwrap();
    let snap = snaps.as_array().unwrap().iter().find(|s| s["id"] == id.as_str()).unwrap();
    assert_eq!(snap["meta"]["method"], "direct", "{snap}");
    let out = env.cairn_cmd().args(["restore", &id, "--to"]).arg(env.path("look")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let label = std::fs::read_to_string(env.path("look/backup_label")).unwrap();
    assert!(label.contains("START WAL LOCATION") && label.contains("BACKUP METHOD: streamed"), "{label}");
    assert!(!env.path("look/postmaster.pid").exists());
    assert_eq!(std::fs::read_dir(env.path("look/pg_wal")).unwrap().count(), 0, "no WAL in the backup");

    let (out, port) = pitr(&env, "direct", &["--latest"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&id[..8]), "{}", text(&out));
    let data = env.path("direct");
    let got = crate::pg::psql_at(&data, port, "select sum(delta), count(*) from pgbench_history");
    crate::pg::as_postgres("pg_ctl", &["-D", data.to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    assert_eq!(got, expected, "exactly the primary's data");
}
