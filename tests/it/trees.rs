//! File trees: metadata, unchanged files, unreadable files, includes, excludes, tar.

use crate::harness::{noise, Env};
use predicates::prelude::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

fn make_tree(root: &Path) {
    std::fs::create_dir_all(root.join("etc/app/conf.d")).unwrap();
    std::fs::create_dir_all(root.join("logs")).unwrap();
    std::fs::write(root.join("etc/app/app.toml"), "port = 8080\n").unwrap();
    std::fs::write(root.join("etc/app/conf.d/secret.env"), "TOKEN=abc\n").unwrap();
    std::fs::write(root.join("big.bin"), noise(5 << 20, 9)).unwrap();
    // The same blobs twice in one file and once more in big.bin; read-only, so its mode can
    // only be set once every byte is written.
    std::fs::write(root.join("logs/twice.bin"), [noise(5 << 20, 9), noise(5 << 20, 9)].concat()).unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::write(root.join("logs/app.log"), "line\n".repeat(1000)).unwrap();
    std::fs::write(root.join("docker-compose.yml"), "services: {}\n").unwrap();
    std::os::unix::fs::symlink("etc/app/app.toml", root.join("current.toml")).unwrap();
    std::fs::set_permissions(root.join("etc/app/conf.d/secret.env"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(root.join("etc/app/conf.d"), std::fs::Permissions::from_mode(0o750)).unwrap();
    if cairn::process::is_root() {
        // Ownership is restored only as root; the tests run as root in CI.
        std::os::unix::fs::chown(root.join("docker-compose.yml"), Some(1234), Some(5678)).unwrap();
        // Set-user-ID and set-group-ID survive the restore's chown (which clears them).
        std::fs::set_permissions(root.join("docker-compose.yml"), std::fs::Permissions::from_mode(0o6755)).unwrap();
        std::os::unix::fs::lchown(root.join("current.toml"), Some(4321), Some(8765)).unwrap();
    }
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("etc/app/app.toml"), old).unwrap();
    filetime::set_file_mtime(root.join("logs/twice.bin"), old).unwrap();
    std::fs::set_permissions(root.join("logs/twice.bin"), std::fs::Permissions::from_mode(0o444)).unwrap();
}

fn restored(target: &Path, source: &Path) -> PathBuf {
    target.join(source.strip_prefix("/").unwrap())
}

fn assert_same(a: &Path, b: &Path) {
    let ma = std::fs::symlink_metadata(a).unwrap();
    let mb = std::fs::symlink_metadata(b).unwrap();
    assert_eq!(ma.file_type(), mb.file_type(), "{}", b.display());
    if !ma.file_type().is_symlink() {
        assert_eq!(ma.mode() & 0o7777, mb.mode() & 0o7777, "mode of {}", b.display());
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "owner of {}", b.display());
    }
    if ma.is_file() {
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "content of {}", b.display());
        assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()), "mtime of {}", b.display());
    }
    if ma.file_type().is_symlink() {
        assert_eq!(std::fs::read_link(a).unwrap(), std::fs::read_link(b).unwrap());
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "owner of symlink {}", b.display());
    }
    if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        assert_eq!(names(a), names(b), "entries of {}", b.display());
        for name in names(a) {
            assert_same(&a.join(&name), &b.join(&name));
        }
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of directory {}", b.display());
    }
}

#[test]
fn tree_round_trip_with_metadata_and_unchanged_files() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let first = env.cmd().args(["--json", "backup", "files", "--name", "cfg"]).arg(&src).assert().success();
    let first: serde_json::Value = serde_json::from_slice(&first.get_output().stdout).unwrap();
    assert_eq!(first["files"], 7);
    let target = env.path("out");
    env.cmd().args(["restore", "latest", "--to"]).arg(&target).assert().success();
    assert_same(&src, &restored(&target, &src));

    std::fs::write(src.join("logs/app.log"), "line\n".repeat(1001)).unwrap();
    let second = env.cmd().args(["--json", "backup", "files", "--name", "cfg"]).arg(&src).assert().success();
    let second: serde_json::Value = serde_json::from_slice(&second.get_output().stdout).unwrap();
    assert_eq!(second["unchanged_files"], 6, "{second}");
    assert!(second["added"].as_u64().unwrap() < 64 * 1024, "{second}");
    let target2 = env.path("out2");
    env.cmd().args(["restore", "latest", "--to"]).arg(&target2).assert().success();
    assert_same(&src, &restored(&target2, &src));
    env.check_read_data();
}

/// The data pass writes while the creator is still making the tree; when the creator
/// cannot make an entry the restore fails with its error, naming the path, and does not
/// wait for a file that will never exist.
#[test]
fn restore_fails_naming_an_entry_it_cannot_create() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.cmd().args(["backup", "files", "--name", "cfg"]).arg(&src).assert().success();
    let target = env.path("out");
    let blocked = restored(&target, &src).join("logs");
    std::fs::create_dir_all(blocked.parent().unwrap()).unwrap();
    std::fs::write(&blocked, "a file where the snapshot has a directory").unwrap();
    env.cmd()
        .args(["restore", "latest", "--to"])
        .arg(&target)
        .timeout(std::time::Duration::from_secs(120))
        .assert()
        .code(1)
        .stderr(predicate::str::contains(blocked.to_str().unwrap()));
    assert_eq!(std::fs::read_to_string(&blocked).unwrap(), "a file where the snapshot has a directory");
}

#[test]
fn several_paths_include_and_exclude() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    let app = src.join("etc/app");
    let compose = src.join("docker-compose.yml");
    env.cmd()
        .args(["backup", "files", "--name", "config", "--exclude", "*.env"])
        .arg(&app)
        .arg(&compose)
        .assert()
        .success();
    let all = env.path("all");
    env.cmd().args(["restore", "latest", "--to"]).arg(&all).assert().success();
    assert!(restored(&all, &app).join("app.toml").exists());
    assert!(restored(&all, &compose).exists());
    assert!(!restored(&all, &app).join("conf.d/secret.env").exists(), "excluded file was stored");
    assert!(!restored(&all, &src).join("big.bin").exists());

    let one = env.path("one");
    env.cmd().args(["restore", "latest", "--to"]).arg(&one).arg("--include").arg(&compose).assert().success();
    assert!(restored(&one, &compose).exists());
    assert!(!restored(&one, &app).exists(), "--include restored more than asked");
}

#[test]
fn unreadable_file_is_a_warning_with_exit_3() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    // Even root cannot read this write-only sysctl file.
    let unreadable = Path::new("/proc/sys/vm/compact_memory");
    let out = env.cmd().args(["--json", "backup", "files", "--name", "w"]).arg(&src).arg(unreadable).assert().code(3);
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(stderr.contains("warning") && stderr.contains("compact_memory"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["files"], 7, "the unreadable file must not be counted: {report}");
    assert_eq!(env.snapshots().len(), 1, "the snapshot is still written");
    let target = env.path("out");
    env.cmd().args(["restore", "latest", "--to"]).arg(&target).assert().success();
    assert!(restored(&target, &src).join("big.bin").exists());
    env.cmd()
        .args(["backup", "files", "--name", "w"])
        .arg(env.path("does-not-exist"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("does-not-exist"));
}

#[test]
fn tar_output_lists_every_member() {
    let env = Env::new();
    let src = env.path("src");
    make_tree(&src);
    env.cmd().args(["backup", "files", "--name", "t"]).arg(&src).assert().success();
    let tar_path = env.path("out.tar");
    env.cmd().args(["restore", "latest", "--tar"]).arg(&tar_path).assert().success();
    let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
    let mut seen = std::collections::BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        seen.insert(path, (entry.header().entry_type(), data));
    }
    let base = src.strip_prefix("/").unwrap().display().to_string();
    assert_eq!(seen[&format!("{base}/big.bin")].1, noise(5 << 20, 9));
    assert_eq!(seen[&format!("{base}/etc/app/app.toml")].1, b"port = 8080\n");
    assert!(seen[&format!("{base}/current.toml")].0.is_symlink());
    assert!(seen[&format!("{base}/etc/app/conf.d")].0.is_dir());
    // The same through stdout.
    let out = env.cmd().args(["restore", "latest", "--tar", "-"]).assert().success();
    assert_eq!(out.get_output().stdout, std::fs::read(&tar_path).unwrap());
}

/// A file over 64 MiB is streamed into the tar through a bounded channel, not buffered;
/// it comes out whole, before and after a smaller neighbour.
#[test]
fn tar_output_streams_a_file_over_64_mib() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = noise(65 << 20 | 12345, 31);
    std::fs::write(src.join("a-big.bin"), &big).unwrap();
    std::fs::write(src.join("b-small.txt"), "after\n").unwrap();
    env.cmd().args(["backup", "files", "--name", "t"]).arg(&src).assert().success();
    let out = env.cmd().args(["restore", "latest", "--tar", "-"]).assert().success();
    let mut archive = tar::Archive::new(&out.get_output().stdout[..]);
    let mut files = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            files.push(data);
        }
    }
    assert_eq!(files.len(), 2);
    assert!(files[0] == big, "the large file comes out whole");
    assert_eq!(files[1], b"after\n");
}

/// `/` itself is a valid path: its tree becomes the snapshot's root (it was once empty).
#[test]
fn backing_up_the_root_directory() {
    let env = Env::new();
    let keep_only_etc_host = ["/[!e]*", "/e[!t]*", "/etc/[!h]*", "/etc/h[!o]*", "/etc/hos[!t]*"];
    let mut cmd = env.cmd();
    cmd.args(["backup", "files", "/", "--name", "root"]);
    for glob in keep_only_etc_host {
        cmd.args(["--exclude", glob]);
    }
    cmd.assert().success();
    let target = env.path("out");
    env.cmd().args(["restore", "latest", "--to"]).arg(&target).assert().success();
    assert_eq!(std::fs::read(target.join("etc/hostname")).unwrap(), std::fs::read("/etc/hostname").unwrap());
    assert!(!target.join("usr").exists());
}

/// The typical configuration set named in one command: a directory, a compose file and a
/// dotenv file; each restored on its own with --include.
#[test]
fn config_set_in_one_command_restores_selectively() {
    let env = Env::new();
    let app = env.path("etc/app");
    std::fs::create_dir_all(app.join("conf.d")).unwrap();
    std::fs::write(app.join("app.toml"), "port = 8080\n").unwrap();
    std::fs::write(app.join("conf.d/log.toml"), "level = 'info'\n").unwrap();
    let compose = env.path("opt/app/docker-compose.yml");
    std::fs::create_dir_all(compose.parent().unwrap()).unwrap();
    std::fs::write(&compose, "services: {}\n").unwrap();
    let dotenv = env.path("opt/app/.env");
    std::fs::write(&dotenv, "TOKEN=abc\n").unwrap();
    env.cmd().args(["backup", "files", "--name", "config"]).arg(&app).arg(&compose).arg(&dotenv).assert().success();
    for (only, present, absent) in [
        (&dotenv, vec![dotenv.clone()], vec![compose.clone(), app.clone()]),
        (&app, vec![app.join("conf.d/log.toml"), app.join("app.toml")], vec![compose.clone(), dotenv.clone()]),
    ] {
        let target = env.path(&format!("restore-{}", only.file_name().unwrap().to_string_lossy()));
        env.cmd()
            .args(["restore", "latest", "--name", "config", "--to"])
            .arg(&target)
            .arg("--include")
            .arg(only)
            .assert()
            .success();
        for p in present {
            assert_eq!(std::fs::read(restored(&target, &p)).unwrap(), std::fs::read(&p).unwrap(), "{}", p.display());
        }
        for p in absent {
            assert!(!restored(&target, &p).exists(), "{} restored without being asked for", p.display());
        }
    }
}

/// The node at `path` (relative to the snapshot's root tree), reading stored subtrees
/// with `cairn cat tree` and stepping into inline ones.
fn node_at(env: &Env, path: &Path) -> serde_json::Value {
    let cat = |what: &[&str]| -> serde_json::Value {
        let out = env.cmd().arg("cat").args(what).assert().success();
        serde_json::from_slice(&out.get_output().stdout).unwrap()
    };
    let snapshot = cat(&["snapshot", "latest"]);
    let mut tree = cat(&["tree", snapshot["snapshot"]["tree"].as_str().unwrap()]);
    let mut components = path.iter().filter(|c| *c != "/").peekable();
    while let Some(name) = components.next() {
        let node = tree["nodes"].as_array().unwrap().iter().find(|n| n["name"] == name.to_str().unwrap()).cloned();
        let node = node.unwrap_or_else(|| panic!("{name:?} not in {tree}"));
        if components.peek().is_none() {
            return node;
        }
        tree = match node.get("tree") {
            Some(inline) => inline.clone(),
            None => cat(&["tree", node["subtree"].as_str().unwrap()]),
        };
    }
    unreachable!("empty path")
}

/// Small directories are written inside their parent's tree, large ones as blobs of their
/// own; restore reaches both, and damage to a file inside an inline directory is named by
/// the file's path.
#[test]
fn small_directories_are_stored_inside_their_parents() {
    let env = Env::new();
    let src = env.path("src");
    std::fs::create_dir_all(src.join("a/b/c")).unwrap();
    std::fs::write(src.join("a/b/c/deep.txt"), "deep inside small directories\n").unwrap();
    std::fs::create_dir_all(src.join("wide")).unwrap();
    for i in 0..30 {
        std::fs::write(src.join(format!("wide/file-{i:02}")), format!("{i}\n")).unwrap();
    }
    env.cmd().args(["backup", "files", "--name", "t"]).arg(&src).assert().success();

    let small = node_at(&env, &src.join("a"));
    assert!(small.get("tree").is_some() && small.get("subtree").is_none(), "{small}");
    let wide = node_at(&env, &src.join("wide"));
    assert!(wide.get("subtree").is_some() && wide.get("tree").is_none(), "{wide}");

    let target = env.path("out");
    env.cmd().args(["restore", "latest", "--to"]).arg(&target).assert().success();
    assert_same(&src, &restored(&target, &src));
    env.check_read_data();

    // Flip a byte inside deep.txt's only blob.
    let deep = node_at(&env, &src.join("a/b/c/deep.txt"));
    let blob = deep["content"]["entries"][0][0].as_str().unwrap().to_string();
    let (pack, offset) = env
        .packs()
        .into_iter()
        .find_map(|pack| {
            let name = pack.file_name().unwrap().to_str().unwrap().to_string();
            let out = env.cmd().args(["cat", "pack", &name]).assert().success();
            let header: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
            let entry = header["blobs"].as_array().unwrap().iter().find(|b| b["id"] == blob.as_str()).cloned();
            entry.map(|e| (pack, e["offset"].as_u64().unwrap() as usize))
        })
        .expect("deep.txt's blob is in a pack");
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[offset + 14] ^= 0x40;
    std::fs::write(&pack, bytes).unwrap();
    env.cmd()
        .args(["check", "--read-data"])
        .assert()
        .code(13)
        .stderr(predicate::str::contains("a/b/c/deep.txt").and(predicate::str::contains(&blob[..16])));
}
