//! `backup tar`: archives stored member by member, nightly gzipped tarballs that
//! deduplicate, equivalent archives back out, safe extraction, broken streams.

use super::harness::{noise, Env};
use predicates::prelude::*;
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

/// A 50 MiB file with three islands of data; what GNU tar's `-S` makes of it.
fn sparse_file(path: &Path) -> Vec<u8> {
    let mut content = vec![0u8; 50 << 20];
    content[..4096].copy_from_slice(&noise(4096, 1));
    content[20 << 20..(20 << 20) + 6].copy_from_slice(b"island");
    let end = content.len();
    content[end - 100..].copy_from_slice(&noise(100, 2));
    let file = std::fs::File::create(path).unwrap();
    file.set_len(content.len() as u64).unwrap();
    use std::os::unix::fs::FileExt;
    for (at, len) in [(0usize, 4096usize), (20 << 20, 6), (end - 100, 100)] {
        file.write_all_at(&content[at..at + len], at as u64).unwrap();
    }
    content
}

/// GNU sparse members (`tar -S`: the old GNU format, GNU tar's default, and PAX 0.0, 0.1
/// and 1.0) were dropped or stored as their condensed data. Each now restores byte for
/// byte, sparse on disk, and `restore --tar` gives GNU tar an archive it extracts to the
/// same bytes, first or last member alike.
#[test]
fn sparse_members_of_every_gnu_format_restore_byte_for_byte() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let content = sparse_file(&src.join("sparse.img"));
    std::fs::write(src.join("after.txt"), "after\n").unwrap();
    let formats: [&[&str]; 4] = [
        &["--format=gnu"],
        &["--format=posix", "--sparse-version=0.0"],
        &["--format=posix", "--sparse-version=0.1"],
        &["--format=posix", "--sparse-version=1.0"],
    ];
    for (i, format) in formats.iter().enumerate() {
        for order in [["sparse.img", "after.txt"], ["after.txt", "sparse.img"]] {
            let name = format!("a{i}-{}.tar", order[0]);
            let archive = env.path(&name);
            let mut args = vec!["-S", "-cf", archive.to_str().unwrap()];
            args.extend_from_slice(format);
            args.extend_from_slice(&order);
            tar(&args, &src);
            env.cmd().args(["backup", "tar", "--name", &name]).arg(&archive).assert().success();
            let out = env.path(&format!("out-{name}"));
            env.cmd().args(["restore", "latest", "--name", &name, "--to"]).arg(&out).assert().success();
            let restored = out.join("sparse.img");
            assert_eq!(std::fs::read(&restored).unwrap(), content, "{format:?} {order:?}");
            assert_eq!(std::fs::read(out.join("after.txt")).unwrap(), b"after\n");
            let on_disk = std::fs::metadata(&restored).unwrap().blocks() * 512;
            assert!(on_disk < 1 << 20, "{format:?}: restored sparse, {on_disk} bytes on disk");
            assert!(!out.read_dir().unwrap().any(|e| e.unwrap().file_name().to_string_lossy().contains("GNUSparse")));
            // Back out as a tar: GNU tar extracts the same bytes.
            let again = env.path(&format!("again-{name}"));
            env.cmd().args(["restore", "latest", "--name", &name, "--tar"]).arg(&again).assert().success();
            let x = env.path(&format!("x-{name}"));
            std::fs::create_dir_all(&x).unwrap();
            tar(&["-xf", again.to_str().unwrap()], &x);
            assert_eq!(std::fs::read(x.join("sparse.img")).unwrap(), content, "{format:?} via --tar");
            // ... and the archive is sparse again: GNU tar lists the member at its full size
            // while the archive holds little more than its data.
            let archived = std::fs::metadata(&again).unwrap().len();
            assert!(archived < 1 << 20, "{format:?}: --tar wrote {archived} bytes");
            assert!(listing(&again).contains("52428800"), "{}", listing(&again));
            let on_disk = std::fs::metadata(x.join("sparse.img")).unwrap().blocks() * 512;
            assert!(on_disk < 1 << 20, "{format:?}: GNU tar extracted it sparse");
        }
    }
}

/// A tar written by hand (Python's tarfile): members GNU tar would not produce.
fn handmade(env: &Env, name: &str, script: &str) -> std::path::PathBuf {
    let path = env.path(name);
    let program = format!(
        "import tarfile, io, sys\nt = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n{script}\nt.close()\n"
    );
    let status = Command::new("python3").arg("-c").arg(program).arg(&path).status().unwrap();
    assert!(status.success());
    path
}

/// Hard links to symlinks, a name that is first a file and then a directory, an empty
/// name, and sub-second PAX mtimes.
#[test]
fn odd_members_are_stored_faithfully_or_refused_with_their_offset() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    let src = env.path("links");
    std::fs::create_dir_all(&src).unwrap();
    std::os::unix::fs::symlink("target.txt", src.join("soft")).unwrap();
    std::fs::write(src.join("target.txt"), "t\n").unwrap();
    // A hard link to a symlink: GNU tar stores the second name as a hard link to the first.
    std::fs::hard_link(src.join("soft"), src.join("hard")).unwrap();
    let filetime = "2024-01-02 03:04:05.123456789";
    assert!(Command::new("touch").args(["-h", "-d", filetime]).arg(src.join("target.txt")).status().unwrap().success());
    let archive = env.path("links.tar");
    tar(&["--format=posix", "-cf", archive.to_str().unwrap(), "soft", "hard", "target.txt"], &src);
    assert!(listing(&archive).contains("hard link to soft"), "{}", listing(&archive));
    env.cmd().args(["backup", "tar", "--name", "links"]).arg(&archive).assert().success();
    let out = env.path("links-out");
    env.cmd().args(["restore", "latest", "--name", "links", "--to"]).arg(&out).assert().success();
    for link in ["soft", "hard"] {
        assert_eq!(std::fs::read_link(out.join(link)).unwrap(), Path::new("target.txt"), "{link}");
    }
    let meta = std::fs::metadata(out.join("target.txt")).unwrap();
    assert_eq!(meta.mtime_nsec(), 123_456_789, "the PAX mtime keeps its nanoseconds");
    let again = env.path("links-again.tar");
    env.cmd().args(["restore", "latest", "--name", "links", "--tar"]).arg(&again).assert().success();
    let x = env.path("links-x");
    std::fs::create_dir_all(&x).unwrap();
    tar(&["-xf", again.to_str().unwrap()], &x);
    assert_eq!(std::fs::metadata(x.join("target.txt")).unwrap().mtime_nsec(), 123_456_789, "and so does --tar");

    // First a file, then a directory of the same name: the later member wins, as on
    // extraction, and the archive written back is one GNU tar accepts.
    let twice = handmade(
        &env,
        "twice.tar",
        "f = tarfile.TarInfo('x'); f.size = 3; t.addfile(f, io.BytesIO(b'abc'))\n\
         d = tarfile.TarInfo('x'); d.type = tarfile.DIRTYPE; t.addfile(d)\n\
         g = tarfile.TarInfo('x/in'); g.size = 2; t.addfile(g, io.BytesIO(b'in'))",
    );
    env.cmd().args(["backup", "tar", "--name", "twice"]).arg(&twice).assert().success();
    let back = env.path("twice-back.tar");
    env.cmd().args(["restore", "latest", "--name", "twice", "--tar"]).arg(&back).assert().success();
    let x = env.path("twice-x");
    std::fs::create_dir_all(&x).unwrap();
    tar(&["-xf", back.to_str().unwrap()], &x);
    assert_eq!(std::fs::read(x.join("x/in")).unwrap(), b"in");

    // A directory (with a member inside) and then a file of its name; a symlink and then
    // a file of its name: written back, GNU tar extracts what the later member made.
    let later = handmade(
        &env,
        "later.tar",
        "d = tarfile.TarInfo('x'); d.type = tarfile.DIRTYPE; t.addfile(d)\n\
         y = tarfile.TarInfo('x/y'); y.size = 1; t.addfile(y, io.BytesIO(b'y'))\n\
         f = tarfile.TarInfo('x'); f.size = 4; t.addfile(f, io.BytesIO(b'file'))\n\
         l = tarfile.TarInfo('l'); l.type = tarfile.SYMTYPE; l.linkname = 'X'; t.addfile(l)\n\
         g = tarfile.TarInfo('l'); g.size = 4; t.addfile(g, io.BytesIO(b'EVIL'))",
    );
    env.cmd().args(["backup", "tar", "--name", "later"]).arg(&later).assert().success();
    let back = env.path("later-back.tar");
    env.cmd().args(["restore", "latest", "--name", "later", "--tar"]).arg(&back).assert().success();
    let x = env.path("later-x");
    std::fs::create_dir_all(&x).unwrap();
    tar(&["-xf", back.to_str().unwrap()], &x);
    assert_eq!(std::fs::read(x.join("x")).unwrap(), b"file");
    assert_eq!(std::fs::read(x.join("l")).unwrap(), b"EVIL");
    assert!(std::fs::symlink_metadata(x.join("l")).unwrap().is_file());

    // A sparse member declaring 2^63 bytes in a few KB is refused at once, not chunked
    // for ever.
    let huge = handmade(
        &env,
        "huge.tar",
        "h = tarfile.TarInfo('GNUSparseFile.1/huge'); h.size = 1\n\
         h.pax_headers = {'GNU.sparse.size': str(2**63), 'GNU.sparse.map': '0,1', 'GNU.sparse.name': 'huge'}\n\
         t.addfile(h, io.BytesIO(b'h'))",
    );
    env.cmd()
        .args(["backup", "tar", "--name", "huge"])
        .arg(&huge)
        .timeout(std::time::Duration::from_secs(60))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("more than 1 TiB of holes"));

    // An empty name is refused, naming where its header is.
    let empty = handmade(
        &env,
        "empty.tar",
        "a = tarfile.TarInfo('a'); a.size = 1; t.addfile(a, io.BytesIO(b'a'))\n\
         e = tarfile.TarInfo(''); e.size = 1; t.addfile(e, io.BytesIO(b'e'))",
    );
    env.cmd()
        .args(["backup", "tar", "--name", "empty"])
        .arg(&empty)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("empty name").and(predicate::str::contains("at byte")));
}
