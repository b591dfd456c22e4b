//! `cairn run`: the configured nightly job, its report, metrics and exit codes.

use super::harness::{noise, Env, PASSWORD};
use std::path::Path;

/// Check that `text` is valid Prometheus text exposition format (the subset cairn
/// writes: HELP and TYPE comments, then samples with optional labels), and return the
/// samples as (name, labels, value).
pub fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut typed = std::collections::HashSet::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap();
            assert!(name_ok(name), "bad metric name in {line:?}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap();
            assert!(name_ok(name), "{line:?}");
            assert!(["gauge", "counter", "untyped"].contains(&parts.next().unwrap()), "{line:?}");
            assert!(typed.insert(name.to_string()), "TYPE given twice for {name}");
        } else {
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let (head, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
            let (name, labels) = match head.find('{') {
                Some(i) => {
                    let labels = &head[i..];
                    assert!(labels.ends_with('}'), "{line:?}");
                    for pair in labels[1..labels.len() - 1].split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("bad label in {line:?}"));
                        assert!(name_ok(k), "{line:?}");
                        assert!(!v.trim_end_matches('"').contains('\n'), "{line:?}");
                    }
                    (&head[..i], labels.to_string())
                }
                None => (head, String::new()),
            };
            assert!(name_ok(name) && typed.contains(name), "sample without TYPE: {line:?}");
            samples.push((name.to_string(), labels, value));
        }
    }
    samples
}

pub fn metric(samples: &[(String, String, f64)], name: &str, labels: &str) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| n == name && l.contains(labels))
        .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {samples:?}"))
        .2
}

/// A config tree, a tarball, a SQLite database, a key, and a config naming them all,
/// with `extra` appended.
fn setup(env: &Env, extra: &str) -> std::path::PathBuf {
    let d = env.dir.path();
    std::fs::create_dir_all(d.join("etc/app")).unwrap();
    for i in 0..20u64 {
        let text: String = noise(20_000, i).iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(d.join(format!("etc/app/f{i}.conf")), text).unwrap();
    }
    let status = std::process::Command::new("tar").args(["-czf", "cfg.tgz", "etc"]).current_dir(d).status().unwrap();
    assert!(status.success());
    let db = rusqlite::Connection::open(d.join("q.db")).unwrap();
    db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);").unwrap();
    drop(db);
    std::fs::create_dir_all(d.join("keys")).unwrap();
    std::fs::write(d.join("keys/id"), "PRIVATE").unwrap();
    std::fs::write(d.join("pass"), format!("{PASSWORD}\n")).unwrap();
    std::fs::write(d.join("spass"), "secrets password\n").unwrap();
    env.cmd().args(["key", "init-secrets"]).env("CAIRN_SECRETS_PASSWORD", "secrets password").assert().success();
    let config = format!(
        r#"
[repository]
url = "{repo}"
password_file = "{d}/pass"
secrets_password_file = "{d}/spass"

[[source]]
name = "config"
kind = "files"
paths = ["{d}/etc/app"]
retention = {{ keep_last = 2 }}

[[source]]
name = "cfg-tar"
kind = "tar"
path = "{d}/cfg.tgz"

[[source]]
name = "quota"
kind = "sqlite"
path = "{d}/q.db"

[[source]]
name = "keys"
kind = "secrets"
paths = ["{d}/keys"]

[[source]]
name = "export"
kind = "command"
command = "cat {d}/etc/app/f1.conf {d}/etc/app/f2.conf"

[check]
read_all_every_days = 1

[run]
metrics_file = "{d}/cairn.prom"
{extra}
"#,
        repo = env.repo.display(),
        d = d.display()
    );
    let path = d.join("cairn.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn run(env: &Env, config: &Path) -> (i32, serde_json::Value, String) {
    let out = env.bare().args(["--json", "run", "--config"]).arg(config).output().unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap(), report, String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn two_nights_of_every_file_kind_with_metrics() {
    let env = Env::new();
    let config = setup(&env, "");
    let (code, first, err) = run(&env, &config);
    assert_eq!(code, 0, "{err}\n{first}");
    let metrics1 = parse_prometheus(&std::fs::read_to_string(env.path("cairn.prom")).unwrap());
    let added1 = metric(&metrics1, "cairn_source_added_bytes", "source=\"config\"");
    assert!(added1 > 300_000.0, "{added1}");
    // Second night: one file of the tree changes a little.
    let f = env.path("etc/app/f3.conf");
    let mut text = std::fs::read_to_string(&f).unwrap();
    text.replace_range(0..10, "changed!!!");
    std::fs::write(&f, text).unwrap();
    let (code, second, err) = run(&env, &config);
    assert_eq!(code, 0, "{err}\n{second}");
    let text = std::fs::read_to_string(env.path("cairn.prom")).unwrap();
    let metrics2 = parse_prometheus(&text);
    for source in ["config", "cfg-tar", "quota", "keys", "export"] {
        assert_eq!(metric(&metrics2, "cairn_source_success", &format!("source=\"{source}\"")), 1.0, "{source}");
        assert!(
            metric(&metrics2, "cairn_source_last_success_timestamp_seconds", &format!("source=\"{source}\"")) > 1e9
        );
    }
    let added2 = metric(&metrics2, "cairn_source_added_bytes", "source=\"config\"");
    assert!(added2 * 5.0 < added1, "the second night is mostly deduplicated: {added1} then {added2}");
    let sqlite2 = metric(&metrics2, "cairn_source_added_bytes", "source=\"quota\"");
    assert!(sqlite2 < 1000.0, "the unchanged database deduplicates: {sqlite2}");
    assert!(metric(&metrics2, "cairn_repository_dedup_ratio", "") > 1.0);
    assert_eq!(metric(&metrics2, "cairn_check_errors", ""), 0.0);
    assert!(metric(&metrics2, "cairn_check_packs_read", "") > 0.0, "read_all_every_days = 1 reads every pack");
    assert_eq!(metric(&metrics2, "cairn_run_exit_code", ""), 0.0);
    assert_eq!(second["prune"]["status"], "ok", "{second}");
    assert_eq!(second["check"]["status"], "ok", "{second}");
    // A third night: retention keeps the two newest of `config`.
    let (code, third, _) = run(&env, &config);
    assert_eq!(code, 0);
    assert_eq!(third["sources"][0]["forgotten"], 1, "{third}");
    let configs = env.snapshots().iter().filter(|s| s["name"] == "config").count();
    assert_eq!(configs, 2);
    env.check_read_data();
}

#[test]
fn a_failing_source_or_offsite_does_the_rest_and_prunes_nothing() {
    let env = Env::new();
    let extra = format!(
        r#"
[[offsite]]
url = "{}/no-such-repository"
password_file = "{}/pass"
"#,
        env.dir.path().display(),
        env.dir.path().display()
    );
    let config = setup(&env, &extra);
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "[check]",
        "[[source]]\nname = \"db-down\"\nkind = \"pg\"\ndbname = \"host=127.0.0.1 port=9 dbname=app connect_timeout=3\"\n\n[check]",
    );
    std::fs::write(&config, text).unwrap();
    let (code, report, err) = run(&env, &config);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("source db-down") && err.contains("127.0.0.1"), "the database that is down is named: {err}");
    assert!(err.contains("no-such-repository"), "{err}");
    let sources = report["sources"].as_array().unwrap();
    assert_eq!(sources.iter().filter(|s| s["status"] == "ok").count(), 5, "{report}");
    assert_eq!(report["prune"]["status"], "skipped", "a failed source: nothing is pruned");
    assert_eq!(report["offsite"][0][1]["status"], "failed");
    let metrics = parse_prometheus(&std::fs::read_to_string(env.path("cairn.prom")).unwrap());
    assert_eq!(metric(&metrics, "cairn_source_success", "source=\"db-down\""), 0.0);
    assert_eq!(metric(&metrics, "cairn_run_exit_code", ""), 1.0);
    assert_eq!(env.snapshots().len(), 5);
}

#[test]
fn a_second_run_exits_11_and_bad_configs_name_the_line() {
    let env = Env::new();
    let config = setup(&env, "");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("command = \"cat ", "command = \"sleep 3; cat ")).unwrap();
    let mut first = env.spawnable().args(["run", "--config"]).arg(&config).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let started = std::time::Instant::now();
    let (code, _, err) = run(&env, &config);
    assert_eq!(code, 11, "{err}");
    assert!(err.contains("another `cairn run`"), "{err}");
    assert!(started.elapsed().as_secs() < 3, "the second run stopped at once");
    assert!(first.wait().unwrap().success());

    let bad = env.path("bad.toml");
    std::fs::write(
        &bad,
        "[repository]\nurl = \"/x\"\n\n[[source]]\nname = \"a\"\nkind = \"files\"\npathz = [\"/etc\"]\n",
    )
    .unwrap();
    let (code, _, err) = run(&env, &bad);
    assert_eq!(code, 1);
    assert!(err.contains("line 7") && err.contains("pathz") && err.contains("bad.toml"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    let (code, _, err) = run(&env, &env.path("missing.toml"));
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml"), "{err}");
}

/// A drill restores and verifies every source; after a pack is corrupted it fails with
/// exit 13, the metric says so, and its scratch space is gone.
#[test]
fn drills_pass_then_catch_a_corrupted_pack() {
    let env = Env::new();
    let d = env.dir.path().display().to_string();
    let config = setup(&env, &format!("report_file = \"{d}/run.md\"\n\n[drill]\nreport_file = \"{d}/drill.md\"\n"));
    let (code, _, err) = run(&env, &config);
    assert_eq!(code, 0, "{err}");
    let scratch = env.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let drill = |env: &Env| {
        let out = env
            .bare()
            .args(["--json", "drill", "--config"])
            .arg(&config)
            .arg("--scratch")
            .arg(&scratch)
            .arg("--metrics-file")
            .arg(env.path("drill.prom"))
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code().unwrap(), report, String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (code, report, err) = drill(&env);
    assert_eq!(code, 0, "{err}\n{report}");
    let reports = report.as_array().unwrap();
    assert_eq!(reports.len(), 5);
    for r in reports {
        assert_eq!(r["passed"], true, "{r}");
        assert!(r["rpo_seconds"].as_f64().unwrap() >= 0.0 && r["rto_seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
    let files = reports.iter().find(|r| r["source"] == "config").unwrap();
    assert!(files["details"][0].as_str().unwrap().contains("20 files"), "{files}");
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "scratch space is cleaned up");
    let metrics = crate::run::parse_prometheus(&std::fs::read_to_string(env.path("drill.prom")).unwrap());
    assert_eq!(metric(&metrics, "cairn_drill_success", "source=\"quota\""), 1.0);
    // The Markdown reports, for people.
    let run_md = std::fs::read_to_string(env.path("run.md")).unwrap();
    assert!(run_md.contains("| config | files | ok |") && run_md.contains("Exit code **0**"), "{run_md}");
    let drill_md = std::fs::read_to_string(env.path("drill.md")).unwrap();
    assert!(drill_md.contains("5 of 5 sources") && drill_md.contains("| quota | sqlite | passed |"), "{drill_md}");

    // Corrupt the largest pack (the config tree's data) in its middle.
    let pack = env.packs().into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).unwrap();
    let mut bytes = std::fs::read(&pack).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    let (code, report, err) = drill(&env);
    assert_eq!(code, 13, "{err}\n{report}");
    assert!(err.contains("FAILED"), "{err}");
    let failed: Vec<&serde_json::Value> = report.as_array().unwrap().iter().filter(|r| r["passed"] == false).collect();
    assert!(!failed.is_empty(), "{report}");
    let metrics = crate::run::parse_prometheus(&std::fs::read_to_string(env.path("drill.prom")).unwrap());
    let name = failed[0]["source"].as_str().unwrap();
    assert_eq!(metric(&metrics, "cairn_drill_success", &format!("source=\"{name}\"")), 0.0);
    assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0, "scratch space is cleaned up after a failure");
    assert!(std::fs::read_to_string(env.path("drill.md")).unwrap().contains("**FAILED**"));
}

/// check records what it read in the repository; a percentage subset reads the packs read
/// longest ago first, so three checks of 34 % cover every pack; stats reports the share;
/// check and backup write valid metrics files.
#[test]
fn check_coverage_rotates_through_every_pack() {
    let env = Env::new();
    for i in 0..6u64 {
        env.backup_stdin(&format!("s{i}"), &noise(3 << 20, 700 + i));
    }
    let share = |env: &Env| -> f64 {
        let out = env.cmd().args(["--json", "--no-cache", "stats", "--coverage-days", "1"]).assert().success();
        let stats: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        stats["coverage"]["share_read"].as_f64().unwrap()
    };
    assert_eq!(share(&env), 0.0);
    let packs = env.packs().len() as f64;
    let mut read = 0.0;
    for round in 1..=3 {
        let out = env
            .cmd()
            .args(["--json", "check", "--read-data-subset", "34%", "--metrics-file"])
            .arg(env.path("check.prom"))
            .assert()
            .success();
        let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        read += report["packs_read"].as_f64().unwrap();
        let covered = share(&env);
        assert!(
            (covered - (read / packs).min(1.0)).abs() < 1e-9,
            "round {round}: {covered} covered, {read} of {packs} packs read: the oldest are read first"
        );
    }
    assert_eq!(share(&env), 1.0, "three checks of 34 % read every pack");
    let metrics = parse_prometheus(&std::fs::read_to_string(env.path("check.prom")).unwrap());
    assert_eq!(metric(&metrics, "cairn_check_success", ""), 1.0);
    assert_eq!(metric(&metrics, "cairn_check_coverage_7d_ratio", ""), 1.0);
    let out = env
        .cmd()
        .args(["backup", "stdin", "--name", "m", "--metrics-file"])
        .arg(env.path("backup.prom"))
        .write_stdin(noise(10_000, 1))
        .assert()
        .success();
    drop(out);
    let metrics = parse_prometheus(&std::fs::read_to_string(env.path("backup.prom")).unwrap());
    assert_eq!(metric(&metrics, "cairn_backup_logical_bytes", "name=\"m\""), 10_000.0);
}
