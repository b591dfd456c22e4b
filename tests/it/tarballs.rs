//! `backup tar`: archives stored member by member, nightly gzipped tarballs that
//! deduplicate, equivalent archives back out, safe extraction, broken streams.

use super::harness::{noise, Env};
use std::path::Path;
use std::process::Command;

/// A config tree of 200 text files (2–30 KB each), a symlink, a hard link and an empty dir.
fn config_tree(root: &Path) {
    for i in 0..200u64 {
        let dir = root.join(format!("app/conf.d/group{}", i % 7));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 2_000 + (i as usize * 7_919) % 28_000;
        let text: String = noise(len / 2, i).iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(dir.join(format!("setting-{i}.conf")), text).unwrap();
    }
    std::fs::write(root.join("app/.env"), "DB_PASSWORD=hunter2\n").unwrap();
    std::fs::create_dir_all(root.join("app/empty")).unwrap();
    std::os::unix::fs::symlink("conf.d/group0/setting-0.conf", root.join("app/main.conf")).unwrap();
    std::fs::hard_link(root.join("app/.env"), root.join("app/env.link")).unwrap();
    // A path over 100 bytes: GNU long-name entries on the way in and out.
    let long = root.join(format!("app/{}/{}", "d".repeat(60), "f".repeat(70)));
    std::fs::create_dir_all(long.parent().unwrap()).unwrap();
    std::fs::write(long, "long\n").unwrap();
}

fn tar(args: &[&str], dir: &Path) {
    let status = Command::new("tar").args(args).current_dir(dir).status().unwrap();
    assert!(status.success(), "tar {args:?}");
}

/// `tar -tv` of an archive: name, type, mode, owner, size, mtime and link target per member.
fn listing(archive: &Path) -> String {
    let out = Command::new("tar").args(["--numeric-owner", "-tvf"]).arg(archive).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn added(report: &serde_json::Value) -> u64 {
    report["added"].as_u64().unwrap()
}

#[test]
fn nightly_gzipped_tarballs_deduplicate_member_by_member() {
    let env = Env::new();
    let src = env.path("src");
    config_tree(&src);
    tar(&["-czf", "../night1.tgz", "."], &src);
    // About 1 % of the bytes change: two files edited, one added.
    for i in [17u64, 123] {
        let path = src.join(format!("app/conf.d/group{}/setting-{i}.conf", i % 7));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.replace_range(100..140, "edited=yes;edited=yes;edited=yes;edited=");
        std::fs::write(&path, text).unwrap();
    }
    std::fs::write(src.join("app/conf.d/new.conf"), "listen 8080\n".repeat(100)).unwrap();
    tar(&["-czf", "../night2.tgz", "."], &src);

    let first =
        env.cmd().args(["--json", "backup", "tar", "--name", "etc"]).arg(env.path("night1.tgz")).assert().success();
    let first: serde_json::Value = serde_json::from_slice(&first.get_output().stdout).unwrap();
    let second =
        env.cmd().args(["--json", "backup", "tar", "--name", "etc"]).arg(env.path("night2.tgz")).assert().success();
    let second: serde_json::Value = serde_json::from_slice(&second.get_output().stdout).unwrap();
    eprintln!("night 1 stored {} bytes, night 2 {} bytes", added(&first), added(&second));
    assert!(added(&first) > 1_000_000, "{first}");
    assert!(
        added(&second) * 10 < added(&first),
        "second night stored {} of {} bytes: not under 10 %",
        added(&second),
        added(&first)
    );
    assert_eq!(
        second["files"], 203,
        "200 settings, .env, the long name and new.conf (the hard link is not a second file)"
    );

    // Each night gives back an equivalent archive: same members, order, modes, owners,
    // mtimes and link targets (tar -tv lists them all), and the same contents.
    for (night, snapshot) in [("night1.tgz", &first), ("night2.tgz", &second)] {
        let out = env.path(&format!("{night}.out.tar"));
        let id = snapshot["id"].as_str().unwrap();
        env.cmd().args(["restore", id, "--tar"]).arg(&out).assert().success();
        assert_eq!(listing(&out), listing(&env.path(night)), "{night}");
        let a = env.path(&format!("{night}.a"));
        let b = env.path(&format!("{night}.b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        tar(&["-xf", out.to_str().unwrap()], &a);
        tar(&["-xzf", env.path(night).to_str().unwrap()], &b);
        let diff = Command::new("diff").arg("-r").arg(&a).arg(&b).output().unwrap();
        assert!(diff.status.success(), "{}", String::from_utf8_lossy(&diff.stdout));
    }
    env.check_read_data();
}

#[test]
fn plain_and_zstd_archives_from_stdin_and_selective_restore() {
    let env = Env::new();
    let src = env.path("src");
    config_tree(&src);
    tar(&["-cf", "../plain.tar", "app"], &src);
    let plain = std::fs::read(env.path("plain.tar")).unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    env.cmd().args(["backup", "tar", "--name", "p", "-"]).write_stdin(plain.clone()).assert().success();
    let out = env.cmd().args(["--json", "backup", "tar", "--name", "z"]).write_stdin(zst).assert().success();
    let z: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert!(added(&z) < 20_000, "the zstd copy of the same archive stored {} bytes", added(&z));
    let back = env.cmd().args(["restore", "latest", "--name", "z", "--tar", "-"]).assert().success();
    std::fs::write(env.path("z.tar"), &back.get_output().stdout).unwrap();
    assert_eq!(listing(&env.path("z.tar")), listing(&env.path("plain.tar")));
    // --include narrows a tar restore and an extraction alike.
    let one = env.path("one");
    env.cmd().args(["restore", "latest", "--name", "p", "--include", "app/.env", "--to"]).arg(&one).assert().success();
    assert_eq!(std::fs::read(one.join("app/.env")).unwrap(), b"DB_PASSWORD=hunter2\n");
    assert!(!one.join("app/conf.d").exists());
}

/// An archive built member by member, with hostile names and links.
fn hostile_archive() -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |name: &[u8], kind: tar::EntryType, link: Option<&[u8]>, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.as_mut_bytes()[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        if let Some(link) = link {
            h.as_mut_bytes()[157..157 + link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        builder.append(&h, data).unwrap();
    };
    add(b"etc/app/ok.conf", tar::EntryType::Regular, None, b"fine\n");
    add(b"/abs/key.pem", tar::EntryType::Regular, None, b"absolute\n");
    add(b"../../escape.txt", tar::EntryType::Regular, None, b"climbing\n");
    add(b"etc/app/passwd", tar::EntryType::Symlink, Some(b"/etc/passwd"), b"");
    add(b"etc/app/up", tar::EntryType::Symlink, Some(b"../../../outside"), b"");
    add(b"etc/app/inside", tar::EntryType::Symlink, Some(b"ok.conf"), b"");
    builder.into_inner().unwrap()
}

#[test]
fn hostile_members_never_leave_the_target() {
    let env = Env::new();
    let out = env.cmd().args(["backup", "tar", "--name", "h"]).write_stdin(hostile_archive()).assert().code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("../../escape.txt") && err.contains("not stored"), "{err}");

    let target = env.path("deep/target");
    let out = env.cmd().args(["restore", "latest", "--to"]).arg(&target).assert().code(3);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(err.contains("/etc/passwd") && err.contains("points outside"), "{err}");
    assert!(err.contains("../../../outside"), "{err}");
    assert_eq!(std::fs::read(target.join("etc/app/ok.conf")).unwrap(), b"fine\n");
    // An absolute name lands inside the target.
    assert_eq!(std::fs::read(target.join("abs/key.pem")).unwrap(), b"absolute\n");
    assert!(std::fs::symlink_metadata(target.join("etc/app/passwd")).is_err());
    assert!(std::fs::symlink_metadata(target.join("etc/app/up")).is_err());
    assert_eq!(std::fs::read_link(target.join("etc/app/inside")).unwrap(), Path::new("ok.conf"));
    assert!(!env.path("escape.txt").exists() && !env.path("deep/escape.txt").exists());
    // --tar gives the absolute name back as it was.
    let back = env.cmd().args(["restore", "latest", "--tar", "-"]).assert().success();
    let mut archive = tar::Archive::new(&back.get_output().stdout[..]);
    let names: Vec<Vec<u8>> = archive.entries().unwrap().map(|e| e.unwrap().path_bytes().into_owned()).collect();
    assert_eq!(
        names,
        vec![
            b"etc/app/ok.conf".to_vec(),
            b"/abs/key.pem".to_vec(),
            b"etc/app/passwd".to_vec(),
            b"etc/app/up".to_vec(),
            b"etc/app/inside".to_vec()
        ]
    );
}

#[test]
fn truncated_or_corrupt_streams_store_no_snapshot_and_name_the_offset() {
    let env = Env::new();
    let src = env.path("src");
    config_tree(&src);
    tar(&["-czf", "../full.tgz", "app"], &src);
    tar(&["-cf", "../full.tar", "app"], &src);
    let tgz = std::fs::read(env.path("full.tgz")).unwrap();
    let plain = std::fs::read(env.path("full.tar")).unwrap();
    // Cut inside the gzip stream, inside a member, and exactly after a member.
    let first_member_end = {
        let mut archive = tar::Archive::new(&plain[..]);
        let entry = archive.entries().unwrap().nth(3).unwrap().unwrap();
        (entry.raw_file_position() + entry.size().div_ceil(512) * 512) as usize
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("gzip cut", tgz[..tgz.len() / 2].to_vec(), "of the gzip input"),
        ("member cut", plain[..plain.len() / 2 + 100].to_vec(), "at byte"),
        ("boundary cut", plain[..first_member_end].to_vec(), "end-of-archive"),
        ("garbage", noise(4096, 9), "truncated or corrupt"),
        ("empty", Vec::new(), "empty"),
    ];
    for (what, bytes, expect) in cases {
        let out = env.cmd().args(["backup", "tar", "--name", "t"]).write_stdin(bytes).assert().code(1);
        let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: {err}");
        assert!(err.chars().all(|c| !c.is_control() || c == '\n'), "{what}: {err:?}");
    }
    assert!(env.snapshots().is_empty());
    env.check_read_data();
}
