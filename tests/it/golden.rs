//! Snapshot tests of what users read: every command's `--help`, and the one-line errors
//! of the commonest mistakes with their exit codes. The expected text is kept in
//! tests/golden/; a deliberate change is recorded by running with `CAIRN_BLESS=1` and
//! reviewing the diff.

use super::harness::Env;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.txt"))
}

/// Compare `have` with the golden file `name`, or write it under `CAIRN_BLESS`.
fn check(name: &str, have: &str, failures: &mut Vec<String>) {
    let path = golden(name);
    if std::env::var_os("CAIRN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, have).unwrap();
        return;
    }
    match std::fs::read_to_string(&path) {
        Ok(want) if want == have => {}
        Ok(_) => {
            let new = path.with_extension("new");
            std::fs::write(&new, have).unwrap();
            failures.push(format!("{name} differs from {}: the output is in {}", path.display(), new.display()));
        }
        Err(_) => failures.push(format!("{name}: no golden file {}; run with CAIRN_BLESS=1", path.display())),
    }
}

const COMMANDS: &[&[&str]] = &[
    &[],
    &["init"],
    &["key"],
    &["backup"],
    &["backup", "files"],
    &["backup", "stdin"],
    &["backup", "tar"],
    &["backup", "sqlite"],
    &["backup", "pg"],
    &["backup", "pg-base"],
    &["backup", "secrets"],
    &["snapshots"],
    &["restore"],
    &["check"],
    &["copy"],
    &["forget"],
    &["prune"],
    &["repair"],
    &["wal"],
    &["wal", "push"],
    &["wal", "fetch"],
    &["wal", "list"],
    &["key", "add"],
    &["pitr"],
    &["run"],
    &["drill"],
    &["stats"],
    &["cat"],
];

#[test]
fn every_commands_help_is_as_recorded() {
    let mut failures = Vec::new();
    for args in COMMANDS {
        // No environment but PATH: clap shows the value of every `env` option it finds.
        let mut cmd = assert_cmd::Command::cargo_bin("cairn").unwrap();
        cmd.env_clear().env("PATH", std::env::var_os("PATH").unwrap_or_default()).env("COLUMNS", "100");
        let out = cmd.args(*args).arg("--help").output().unwrap();
        assert!(out.status.success(), "cairn {args:?} --help failed");
        let name = if args.is_empty() { "help/cairn".to_string() } else { format!("help/{}", args.join("-")) };
        check(&name, &String::from_utf8(out.stdout).unwrap(), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A command's exit code and standard error, with the temporary directory's path
/// replaced by `<tmp>`.
fn outcome(env: &Env, cmd: &mut assert_cmd::Command) -> String {
    let out = cmd.env("COLUMNS", "100").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&env.dir.path().display().to_string(), "<tmp>");
    format!("exit {}\n{stderr}", out.status.code().unwrap_or(-1))
}

#[test]
fn the_commonest_mistakes_get_the_recorded_one_line_errors() {
    let env = Env::new();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a"), b"a").unwrap();
    env.cmd().args(["backup", "files", "--name", "docs"]).arg(&data).assert().success();
    env.cmd().args(["backup", "stdin", "--name", "notes"]).write_stdin("n").assert().success();
    let missing = Env::empty();
    let cases: Vec<(&str, assert_cmd::Command)> = vec![
        ("no-repository", {
            let mut c = missing.cmd();
            c.arg("snapshots");
            c
        }),
        ("wrong-password", {
            let mut c = env.cmd();
            c.env("CAIRN_PASSWORD", "wrong").arg("snapshots");
            c
        }),
        ("no-password", {
            let mut c = env.bare();
            c.env("CAIRN_REPO", &env.repo).arg("snapshots");
            c
        }),
        ("unknown-snapshot", {
            let mut c = env.cmd();
            c.args(["restore", "deadbeef", "--to"]).arg(env.path("out"));
            c
        }),
        ("unknown-name", {
            let mut c = env.cmd();
            c.args(["restore", "latest", "--name", "nosuch", "--to"]).arg(env.path("out"));
            c
        }),
        ("missing-source", {
            let mut c = env.cmd();
            c.args(["backup", "files", "--name", "docs"]).arg(env.path("nosuch"));
            c
        }),
        ("unknown-command", {
            let mut c = env.cmd();
            c.arg("restor");
            c
        }),
        ("bad-duration", {
            let mut c = env.cmd();
            c.args(["forget", "--keep-within", "2w"]);
            c
        }),
        ("latest-of-several-names", {
            let mut c = env.cmd();
            c.args(["restore", "latest", "--to"]).arg(env.path("out"));
            c
        }),
        ("empty-policy", {
            let mut c = env.cmd();
            c.arg("forget");
            c
        }),
    ];
    let mut failures = Vec::new();
    let missing_ref = &missing;
    for (name, mut cmd) in cases {
        let context = if name == "no-repository" { missing_ref } else { &env };
        check(&format!("errors/{name}"), &outcome(context, &mut cmd), &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
