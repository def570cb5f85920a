//! Sandbox cleanup against a hostile sandbox: links everywhere, hard links to precious files,
//! non-UTF-8 names, deep trees, files changed after planning, and an attacker thread swapping
//! directories for links while the cleanup runs.
//!
//! Every attack ends with the same check: a manifest (SHA-256 of every file, link targets,
//! types, inodes and link counts, walked without following links) of everything outside
//! `logs/`, `tmp/` and `cache/` — the sandbox's `data/` and other entries, and a separate
//! "outside" directory on the same filesystem — is identical before and after. Tests run as
//! root, so permissions protect nothing here: the code has to.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, SystemTime};

use sentinel::domain::CleanupDir;
use sentinel::runtime::cleanup::{
    execute_cleanup, keep_within, plan_cleanup, purge_quarantine, restore, CleanupPlan,
    QUARANTINE_DIR,
};
use sentinel::runtime::sandbox::{largest_directories, sandbox_size};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use walkdir::WalkDir;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// A sandbox and, beside it on the same filesystem, an "outside" directory with precious
/// files that nothing may ever touch.
struct World {
    _temp: TempDir,
    sandbox: PathBuf,
    outside: PathBuf,
}

impl World {
    /// logs/ (nested), tmp/, cache/ to clean; data/, other/ and a root file to keep.
    fn new() -> World {
        let temp = tempfile::tempdir().expect("a temporary directory");
        let sandbox = temp.path().join("sandbox");
        let outside = temp.path().join("outside");
        let world = World {
            sandbox,
            outside,
            _temp: temp,
        };
        for (path, content) in [
            ("logs/app.log", &b"line 1\nline 2\n"[..]),
            ("logs/nested/worker.log", b"worker started\n"),
            ("logs/nested/deeper/old.log.1", b"rotated"),
            ("logs/empty.log", b""),
            ("tmp/upload.part", b"partial upload"),
            ("tmp/sess/abc", b"session"),
            ("cache/thumbs/1.png", b"\x89PNG fake"),
            ("cache/index.bin", &[7u8; 4096]),
            ("data/secret.txt", b"the crown jewels"),
            ("data/db/rows.bin", &[1u8; 8192]),
            ("other/keep.txt", b"not a cleanup directory"),
            ("config.toml", b"root file"),
        ] {
            write(&world.sandbox.join(path), content);
        }
        write(
            &world.outside.join("precious.txt"),
            b"precious outside file",
        );
        write(
            &world.outside.join("dir/inner.txt"),
            b"inside an outside directory",
        );
        world
    }

    fn logs(&self) -> PathBuf {
        self.sandbox.join("logs")
    }

    fn quarantine(&self, id: &str) -> PathBuf {
        self.sandbox.join(QUARANTINE_DIR).join(id)
    }

    /// Everything that is not to be cleaned, in the sandbox and outside it.
    fn protected(&self) -> (Manifest, Manifest) {
        (
            manifest(&self.sandbox, true),
            manifest(&self.outside, false),
        )
    }

    fn plan(&self) -> CleanupPlan {
        plan_cleanup(&self.sandbox, &CleanupDir::ALL).expect("a plan")
    }
}

type Manifest = BTreeMap<Vec<u8>, String>;

/// Every entry below `root`, walked without following links: files by SHA-256, size, inode
/// and link count; links by target; directories by mode. With `skip_cleanup_dirs`, the real
/// directories `logs`, `tmp`, `cache` and the quarantine at the top are left out (a link named
/// `tmp` is kept: it must survive).
fn manifest(root: &Path, skip_cleanup_dirs: bool) -> Manifest {
    let walker = WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            let name = entry.file_name().as_bytes();
            let cleanup = [&b"logs"[..], b"tmp", b"cache", QUARANTINE_DIR.as_bytes()];
            !(skip_cleanup_dirs
                && entry.depth() == 1
                && entry.file_type().is_dir()
                && cleanup.contains(&name))
        });
    let mut manifest = Manifest::new();
    for entry in walker {
        let entry = entry.expect("a readable tree");
        let metadata = entry.path().symlink_metadata().expect("metadata");
        let kind = entry.file_type();
        let description = if kind.is_symlink() {
            let target = fs::read_link(entry.path()).expect("a link");
            format!("link -> {}", target.display())
        } else if kind.is_file() {
            let hash = hex::encode(Sha256::digest(fs::read(entry.path()).expect("a file")));
            format!(
                "file {hash} len={} ino={} nlink={} mode={:o}",
                metadata.len(),
                metadata.ino(),
                metadata.nlink(),
                metadata.mode()
            )
        } else if kind.is_dir() {
            format!("dir mode={:o} ino={}", metadata.mode(), metadata.ino())
        } else {
            format!("other mode={:o}", metadata.mode())
        };
        let relative = entry.path().strip_prefix(root).expect("below the root");
        manifest.insert(relative.as_os_str().as_bytes().to_vec(), description);
    }
    manifest
}

/// The regular files below `root` (links not followed) with their content.
fn files_below(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !root.exists() {
        return files;
    }
    for entry in WalkDir::new(root).follow_links(false) {
        let entry = entry.expect("a readable tree");
        if entry.file_type().is_file() {
            let relative = entry.path().strip_prefix(root).expect("below the root");
            files.insert(
                relative.as_os_str().as_bytes().to_vec(),
                fs::read(entry.path()).expect("a file"),
            );
        }
    }
    files
}

/// The regular files of the cleanup directories, by path relative to the sandbox.
fn cleanable(world: &World) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut all = BTreeMap::new();
    for dir in ["logs", "tmp", "cache"] {
        let top = world.sandbox.join(dir);
        if top.symlink_metadata().is_ok_and(|m| m.is_dir()) {
            for (path, content) in files_below(&top) {
                all.insert([dir.as_bytes(), b"/", &path].concat(), content);
            }
        }
    }
    all
}

/// The files held in quarantine `id`, without its record.
fn quarantined_files(world: &World, id: &str) -> usize {
    let files = files_below(&world.quarantine(id));
    files.len() - usize::from(files.contains_key(&b"cleanup.json"[..]))
}

fn write(path: &Path, content: &[u8]) {
    fs::create_dir_all(path.parent().expect("a parent")).expect("parent directories");
    fs::write(path, content).expect("a file written");
}

fn path_of(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

fn assert_protected(world: &World, before: &(Manifest, Manifest), when: &str) {
    let after = world.protected();
    assert_eq!(
        before.0, after.0,
        "the sandbox outside logs/tmp/cache changed {when}"
    );
    assert_eq!(before.1, after.1, "the outside directory changed {when}");
}

// ---------------------------------------------------------------- the normal case

#[test]
fn cleanup_moves_exactly_the_cleanable_files_and_restore_brings_them_back() {
    let world = World::new();
    let protected = world.protected();
    let files = cleanable(&world);

    let plan = world.plan();
    let planned: BTreeSet<Vec<u8>> = plan
        .files
        .iter()
        .map(|f| f.path.clone().into_bytes())
        .collect();
    assert_eq!(planned, files.keys().cloned().collect(), "{plan:#?}");
    let bytes: u64 = files.values().map(|c| c.len() as u64).sum();
    assert_eq!(plan.bytes, bytes);
    assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);

    let size_before = sandbox_size(&world.sandbox).unwrap();
    let report = execute_cleanup(&world.sandbox, &plan, "inc-1").unwrap();
    assert_eq!(report.moved_files, files.len() as u64, "{report:#?}");
    assert_eq!(report.moved_bytes, bytes);
    assert_eq!(report.skipped_count, 0, "{:?}", report.skipped);
    assert_eq!(
        report.quarantine,
        world.quarantine("inc-1").display().to_string()
    );
    assert_protected(&world, &protected, "by the cleanup");

    // Gone from the sandbox, the same bytes in the quarantine under the same paths.
    assert!(
        cleanable(&world).is_empty(),
        "{:?}",
        cleanable(&world).keys()
    );
    let mut quarantined = files_below(&world.quarantine("inc-1"));
    assert!(
        quarantined.remove(&b"cleanup.json"[..]).is_some(),
        "the quarantine's record"
    );
    assert_eq!(quarantined, files);
    // The directories stay.
    assert!(world.logs().join("nested/deeper").is_dir());

    // The quarantine is measured: moved (not yet compressed) files are still on the disk.
    let record = fs::metadata(world.quarantine("inc-1").join("cleanup.json"))
        .unwrap()
        .len();
    assert_eq!(sandbox_size(&world.sandbox).unwrap(), size_before + record);
    let listed = largest_directories(&world.sandbox, 10).unwrap();
    assert!(
        listed
            .iter()
            .any(|(path, size)| path.ends_with(QUARANTINE_DIR) && *size == bytes + record),
        "{listed:?}"
    );

    // The id is taken until the quarantine is gone.
    let again = execute_cleanup(&world.sandbox, &plan, "inc-1").unwrap_err();
    assert_eq!(again.kind(), io::ErrorKind::AlreadyExists);

    let restored = restore(&world.sandbox, "inc-1").unwrap();
    assert_eq!(restored.restored_files, files.len() as u64, "{restored:#?}");
    assert_eq!(restored.restored_bytes, bytes);
    assert!(restored.quarantine_removed);
    assert_eq!(cleanable(&world), files, "restored byte for byte");
    assert!(!world.quarantine("inc-1").exists());
    assert_eq!(sandbox_size(&world.sandbox).unwrap(), size_before);
    assert_protected(&world, &protected, "by the restore");

    let missing = restore(&world.sandbox, "inc-1").unwrap_err();
    assert_eq!(missing.kind(), io::ErrorKind::NotFound);
}

#[test]
fn only_the_requested_directories_are_planned() {
    let world = World::new();
    let plan = plan_cleanup(&world.sandbox, &[CleanupDir::Tmp]).unwrap();
    assert!(!plan.files.is_empty());
    assert!(
        plan.files.iter().all(|f| f.path.starts_with("tmp/")),
        "{plan:#?}"
    );
}

// ---------------------------------------------------------------- links

#[test]
fn links_inside_the_cleanup_directories_are_neither_followed_nor_moved() {
    let world = World::new();
    let logs = world.logs();
    let links = [
        ("to-outside-file", world.outside.join("precious.txt")),
        ("to-outside-dir", world.outside.join("dir")),
        ("to-data", PathBuf::from("../data")),
        ("to-secret", world.sandbox.join("data/secret.txt")),
        ("nested/up-to-data", PathBuf::from("../../data")),
        ("dangling", PathBuf::from("/nonexistent/x")),
        ("loop", PathBuf::from("loop")),
    ];
    for (name, target) in &links {
        symlink(target, logs.join(name)).unwrap();
    }
    // Not regular files either: left alone (and never opened, so a FIFO cannot block).
    rustix::fs::mknodat(
        rustix::fs::CWD,
        logs.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(logs.join("socket")).unwrap();
    let protected = world.protected();

    let plan = world.plan();
    assert!(
        plan.files.iter().all(|f| f.path.starts_with("logs/")
            || f.path.starts_with("tmp/")
            || f.path.starts_with("cache/")),
        "{plan:#?}"
    );
    for (name, _) in &links {
        let path = format!("logs/{name}");
        assert!(plan.files.iter().all(|f| f.path != path), "{path} planned");
        assert!(
            plan.skipped
                .iter()
                .any(|s| s == &format!("{path}: a symbolic link, not followed")),
            "{path} not reported: {:?}",
            plan.skipped
        );
    }
    for (name, kind) in [("fifo", "a FIFO"), ("socket", "a socket")] {
        let note = format!("logs/{name}: {kind}, not a regular file");
        assert!(plan.skipped.contains(&note), "{:?}", plan.skipped);
    }
    // Nothing reached through a link: not data/'s files, not the outside's.
    assert!(plan
        .files
        .iter()
        .all(|f| !f.path.contains("secret") && !f.path.contains("inner")));

    let report = execute_cleanup(&world.sandbox, &plan, "links").unwrap();
    assert_eq!(report.skipped_count, 0, "{:?}", report.skipped);
    assert_protected(&world, &protected, "by the cleanup");
    for (name, target) in &links {
        assert_eq!(
            &fs::read_link(logs.join(name)).unwrap(),
            target,
            "{name} was touched"
        );
    }
    assert!(logs.join("fifo").symlink_metadata().is_ok());
    assert!(logs.join("socket").symlink_metadata().is_ok());
    restore(&world.sandbox, "links").unwrap();
    assert_protected(&world, &protected, "by the restore");
}

#[test]
fn a_cleanup_directory_that_is_a_link_is_skipped_entirely() {
    let world = World::new();
    fs::remove_dir_all(world.sandbox.join("tmp")).unwrap();
    symlink(&world.outside, world.sandbox.join("tmp")).unwrap();
    fs::remove_dir_all(world.sandbox.join("cache")).unwrap();
    symlink("data", world.sandbox.join("cache")).unwrap();
    let protected = world.protected();

    let plan = world.plan();
    assert!(
        plan.files.iter().all(|f| f.path.starts_with("logs/")),
        "{plan:#?}"
    );
    assert!(!plan.files.is_empty());
    for dir in ["tmp", "cache"] {
        let note = format!("{dir}: a symbolic link, not followed");
        assert!(plan.skipped.contains(&note), "{:?}", plan.skipped);
    }
    execute_cleanup(&world.sandbox, &plan, "linked-dirs").unwrap();
    assert_protected(&world, &protected, "by the cleanup");
    restore(&world.sandbox, "linked-dirs").unwrap();
    assert_protected(&world, &protected, "by the restore");

    // A plan written before the swap is refused at the link, not followed.
    let world = World::new();
    let plan = world.plan();
    fs::rename(world.sandbox.join("tmp"), world.outside.join("old-tmp")).unwrap();
    symlink(world.outside.join("old-tmp"), world.sandbox.join("tmp")).unwrap();
    let protected = world.protected();
    let report = execute_cleanup(&world.sandbox, &plan, "swapped").unwrap();
    assert_eq!(report.skipped_count, 2, "{report:#?}");
    assert!(
        report
            .skipped
            .iter()
            .all(|s| s.contains("tmp: a symbolic link, not followed")),
        "{report:#?}"
    );
    assert_protected(&world, &protected, "by the cleanup");
}

#[test]
fn hard_links_are_moved_as_names_and_the_other_names_keep_their_content() {
    let world = World::new();
    let precious = world.outside.join("precious.txt");
    let secret = world.sandbox.join("data/secret.txt");
    fs::hard_link(&precious, world.logs().join("hl-outside")).unwrap();
    fs::hard_link(&secret, world.logs().join("nested/hl-secret")).unwrap();
    let precious_before = (
        fs::read(&precious).unwrap(),
        precious.metadata().unwrap().ino(),
    );
    let secret_before = (fs::read(&secret).unwrap(), secret.metadata().unwrap().ino());
    assert_eq!(precious.metadata().unwrap().nlink(), 2);
    let protected = world.protected();

    let plan = world.plan();
    assert!(plan.files.iter().any(|f| f.path == "logs/hl-outside"));
    let report = execute_cleanup(&world.sandbox, &plan, "hardlinks").unwrap();
    assert_eq!(report.skipped_count, 0, "{:?}", report.skipped);
    // A rename moves a name: the other name, its content, inode and link count are unchanged
    // (the quarantine holds the second link).
    assert_protected(&world, &protected, "by the cleanup");
    let moved = world.quarantine("hardlinks").join("logs/hl-outside");
    assert_eq!(moved.metadata().unwrap().ino(), precious_before.1);
    assert!(!world.logs().join("hl-outside").exists());

    restore(&world.sandbox, "hardlinks").unwrap();
    assert_protected(&world, &protected, "by the restore");
    assert_eq!(
        world.logs().join("hl-outside").metadata().unwrap().ino(),
        precious_before.1
    );

    // Purging a quarantine drops its names only.
    execute_cleanup(&world.sandbox, &world.plan(), "hardlinks-2").unwrap();
    let purged = purge_quarantine(&world.sandbox, DAY, SystemTime::now() + 2 * DAY).unwrap();
    assert_eq!(purged, 1);
    for (path, (content, ino)) in [(&precious, &precious_before), (&secret, &secret_before)] {
        let metadata = path.symlink_metadata().unwrap();
        assert_eq!(&fs::read(path).unwrap(), content, "{}", path.display());
        assert_eq!((metadata.ino(), metadata.nlink()), (*ino, 1));
    }
}

// ---------------------------------------------------------------- names and depth

#[test]
fn names_that_are_not_utf8_are_moved_and_restored() {
    let world = World::new();
    let bad_file = world.logs().join(OsStr::from_bytes(b"bad\xffname.log"));
    let bad_dir = world.logs().join(OsStr::from_bytes(b"dir\xfe"));
    write(&bad_file, b"latin-1 name");
    write(
        &bad_dir.join(OsStr::from_bytes(b"\x80.log")),
        b"inside a latin-1 directory",
    );
    let files = cleanable(&world);
    let protected = world.protected();

    let plan = world.plan();
    let raw = plan
        .files
        .iter()
        .find(|f| f.path_bytes() == b"logs/bad\xffname.log")
        .expect("the non-UTF-8 file is planned");
    assert_eq!(raw.path, "logs/bad\u{fffd}name.log");
    // The snapshot is stored as JSON and read back before executing.
    let stored: CleanupPlan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
    assert_eq!(stored, plan);

    let report = execute_cleanup(&world.sandbox, &stored, "latin").unwrap();
    assert_eq!(report.moved_files, files.len() as u64, "{report:#?}");
    assert!(!bad_file.exists());
    assert!(world
        .quarantine("latin")
        .join(path_of(b"logs/dir\xfe/\x80.log"))
        .is_file());
    let restored = restore(&world.sandbox, "latin").unwrap();
    assert_eq!(restored.restored_files, files.len() as u64, "{restored:#?}");
    assert_eq!(cleanable(&world), files);
    assert_protected(&world, &protected, "by cleanup and restore");
}

#[test]
fn a_deep_tree_is_cleaned_and_restored_without_recursion() {
    const DEPTH: usize = 200;
    let world = World::new();
    let mut dir = world.logs();
    for level in 0..DEPTH {
        dir.push("d");
        write(
            &dir.join(format!("f{level}.log")),
            format!("level {level}").as_bytes(),
        );
    }
    let files = cleanable(&world);
    let protected = world.protected();
    let sandbox = world.sandbox.clone();
    // A small stack: a recursive walk 200 levels deep would not fit.
    let (plan, report, restored) = thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(move || {
            let plan = plan_cleanup(&sandbox, &CleanupDir::ALL).unwrap();
            let report = execute_cleanup(&sandbox, &plan, "deep").unwrap();
            let restored = restore(&sandbox, "deep").unwrap();
            (plan, report, restored)
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(plan.files.len(), files.len());
    assert!(plan.files.iter().any(|f| f.path.ends_with("/f199.log")));
    assert_eq!(
        report.moved_files,
        files.len() as u64,
        "{:?}",
        report.skipped
    );
    assert_eq!(
        restored.restored_files,
        files.len() as u64,
        "{:?}",
        restored.skipped
    );
    assert!(restored.quarantine_removed);
    assert_eq!(cleanable(&world), files);
    assert_protected(&world, &protected, "by cleanup and restore");
}

// ---------------------------------------------------------------- changes after planning

#[test]
fn files_changed_after_planning_are_skipped() {
    let world = World::new();
    let logs = world.logs();
    write(&logs.join("replaced-by-link.log"), b"a");
    write(&logs.join("replaced-by-file.log"), b"b");
    write(&logs.join("grown.log"), b"c");
    write(&logs.join("deleted.log"), b"d");
    write(&logs.join("moved-dir/x.log"), b"x");
    // The outside holds a second name of x.log: same inode, same size. Following the link
    // that will replace moved-dir would find a file that passes every identity check.
    fs::create_dir(world.outside.join("decoy")).unwrap();
    fs::hard_link(
        logs.join("moved-dir/x.log"),
        world.outside.join("decoy/x.log"),
    )
    .unwrap();
    let plan = world.plan();

    fs::remove_file(logs.join("replaced-by-link.log")).unwrap();
    symlink(
        world.outside.join("precious.txt"),
        logs.join("replaced-by-link.log"),
    )
    .unwrap();
    write(&logs.join("new.tmp"), b"b");
    fs::rename(logs.join("new.tmp"), logs.join("replaced-by-file.log")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(logs.join("grown.log"))
        .unwrap()
        .write_all(b"more")
        .unwrap();
    fs::remove_file(logs.join("deleted.log")).unwrap();
    fs::remove_dir_all(logs.join("moved-dir")).unwrap();
    symlink(world.outside.join("decoy"), logs.join("moved-dir")).unwrap();
    let protected = world.protected();

    let report = execute_cleanup(&world.sandbox, &plan, "changed").unwrap();
    let expected = [
        "logs/deleted.log: gone since planning",
        "logs/grown.log: changed size since planning (still being written?)",
        "logs/moved-dir/x.log: logs/moved-dir: a symbolic link, not followed",
        "logs/replaced-by-file.log: replaced by another file since planning",
        "logs/replaced-by-link.log: now a symbolic link, not moved",
    ];
    let mut skipped = report.skipped.clone();
    skipped.sort();
    assert_eq!(skipped, expected);
    assert_eq!(report.moved_files, plan.files.len() as u64 - 5);
    assert_protected(&world, &protected, "by the cleanup");
    assert_eq!(fs::read(logs.join("replaced-by-file.log")).unwrap(), b"b");
    assert_eq!(fs::read(logs.join("grown.log")).unwrap(), b"cmore");
    assert!(logs
        .join("replaced-by-link.log")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
}

#[test]
fn a_plan_naming_anything_else_is_refused_before_anything_moves() {
    let world = World::new();
    let secret = world.sandbox.join("data/secret.txt").metadata().unwrap();
    let protected = world.protected();
    for path in [
        "data/secret.txt",
        "logs/../data/secret.txt",
        "./logs/../data/secret.txt",
        "/etc/passwd",
        "logs",
        ".sentinel-quarantine/x/logs/a",
        "other/keep.txt",
    ] {
        let mut plan = world.plan();
        let mut bad = plan.files[0].clone();
        bad.path = path.to_owned();
        (bad.dev, bad.ino, bad.size) = (secret.dev(), secret.ino(), secret.len());
        plan.files.push(bad);
        let err = execute_cleanup(&world.sandbox, &plan, "tampered").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path}: {err}");
    }
    assert!(!world.sandbox.join(QUARANTINE_DIR).exists());
    assert!(!cleanable(&world).is_empty());
    assert_protected(&world, &protected, "by a tampered plan");
}

#[test]
fn invalid_cleanup_ids_are_refused() {
    let world = World::new();
    let plan = world.plan();
    for id in ["../x", "a/b", "", ".", "..", "x y", "../../outside", "a\0b"] {
        let err = execute_cleanup(&world.sandbox, &plan, id).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{id:?}");
        let err = restore(&world.sandbox, id).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{id:?}");
    }
    assert!(!world.sandbox.join(QUARANTINE_DIR).exists());
}

// ---------------------------------------------------------------- restore

#[test]
fn restore_never_replaces_a_file_and_never_follows_a_link() {
    let world = World::new();
    write(&world.logs().join("nested/again.log"), b"again");
    let plan = world.plan();
    execute_cleanup(&world.sandbox, &plan, "r1").unwrap();

    // The application wrote a new app.log; logs/nested became a link outside; tmp too.
    write(&world.logs().join("app.log"), b"new content");
    fs::remove_dir_all(world.logs().join("nested")).unwrap();
    symlink(world.outside.join("dir"), world.logs().join("nested")).unwrap();
    fs::remove_dir_all(world.sandbox.join("tmp")).unwrap();
    symlink(&world.outside, world.sandbox.join("tmp")).unwrap();
    let protected = world.protected();

    let report = restore(&world.sandbox, "r1").unwrap();
    assert_protected(&world, &protected, "by the restore");
    assert_eq!(
        fs::read(world.logs().join("app.log")).unwrap(),
        b"new content"
    );
    let mut skipped = report.skipped.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "logs/app.log: already exists; left in the quarantine",
            "logs/nested/again.log: logs/nested: a symbolic link, not followed; left in the quarantine",
            "logs/nested/deeper/old.log.1: logs/nested: a symbolic link, not followed; left in the quarantine",
            "logs/nested/worker.log: logs/nested: a symbolic link, not followed; left in the quarantine",
            "tmp/sess/abc: tmp: a symbolic link, not followed; left in the quarantine",
            "tmp/upload.part: tmp: a symbolic link, not followed; left in the quarantine",
        ]
    );
    // What could come back did; the rest waits in the quarantine.
    assert!(world.logs().join("empty.log").is_file());
    assert!(world.sandbox.join("cache/index.bin").is_file());
    assert!(!report.quarantine_removed);
    assert!(world.quarantine("r1").join("logs/app.log").is_file());
    assert!(world.quarantine("r1").join("tmp/upload.part").is_file());
}

#[test]
fn restore_recreates_directories_that_were_removed() {
    let world = World::new();
    let files = cleanable(&world);
    execute_cleanup(&world.sandbox, &world.plan(), "gone").unwrap();
    fs::remove_dir_all(world.logs()).unwrap();
    fs::remove_dir_all(world.sandbox.join("tmp/sess")).unwrap();
    let report = restore(&world.sandbox, "gone").unwrap();
    assert_eq!(report.skipped_count, 0, "{:?}", report.skipped);
    assert_eq!(cleanable(&world), files);
}

// ---------------------------------------------------------------- the quarantine itself

#[test]
fn a_quarantine_that_is_a_link_is_refused() {
    let world = World::new();
    symlink(&world.outside, world.sandbox.join(QUARANTINE_DIR)).unwrap();
    let protected = world.protected();
    let files = cleanable(&world);
    let plan = world.plan();
    assert!(execute_cleanup(&world.sandbox, &plan, "q").is_err());
    assert!(restore(&world.sandbox, "q").is_err());
    assert!(purge_quarantine(&world.sandbox, Duration::ZERO, SystemTime::now() + DAY).is_err());
    assert_eq!(cleanable(&world), files, "nothing moved");
    assert_protected(&world, &protected, "through a linked quarantine");
    assert!(world
        .sandbox
        .join(QUARANTINE_DIR)
        .symlink_metadata()
        .unwrap()
        .is_symlink());
}

#[test]
fn purge_removes_expired_quarantines_only_and_follows_no_link() {
    let world = World::new();
    execute_cleanup(&world.sandbox, &world.plan(), "old").unwrap();
    write(&world.logs().join("later.log"), b"later");
    execute_cleanup(&world.sandbox, &world.plan(), "new").unwrap();
    let now = SystemTime::now();
    // "old" happened two days ago.
    fs::File::options()
        .write(true)
        .open(world.quarantine("old").join("cleanup.json"))
        .unwrap()
        .set_modified(now - 2 * DAY)
        .unwrap();
    // Traps: links inside an expired quarantine, and entries that are not quarantines.
    let old = world.quarantine("old");
    symlink(&world.outside, old.join("logs/to-outside")).unwrap();
    symlink(world.outside.join("precious.txt"), old.join("to-precious")).unwrap();
    symlink(world.sandbox.join("data"), old.join("logs/nested/to-data")).unwrap();
    let quarantines = world.sandbox.join(QUARANTINE_DIR);
    write(&quarantines.join("notes.txt"), b"not a quarantine");
    symlink(&world.outside, quarantines.join("inc-link")).unwrap();
    fs::create_dir(quarantines.join("not.an.id")).unwrap();
    let protected = world.protected();

    assert_eq!(purge_quarantine(&world.sandbox, DAY, now).unwrap(), 1);
    assert!(!old.exists());
    assert!(world.quarantine("new").join("logs/later.log").is_file());
    assert!(quarantines.join("notes.txt").is_file());
    assert!(quarantines
        .join("inc-link")
        .symlink_metadata()
        .unwrap()
        .is_symlink());
    assert!(quarantines.join("not.an.id").is_dir());
    assert_protected(&world, &protected, "by the purge");

    // Nothing else is old enough yet; a day later "new" goes too.
    assert_eq!(purge_quarantine(&world.sandbox, DAY, now).unwrap(), 0);
    assert_eq!(
        purge_quarantine(&world.sandbox, DAY, now + DAY + DAY / 2).unwrap(),
        1
    );
    assert!(!world.quarantine("new").exists());
    assert_protected(&world, &protected, "by the second purge");
    // No quarantine at all is not an error.
    let empty = World::new();
    assert_eq!(purge_quarantine(&empty.sandbox, DAY, now).unwrap(), 0);
}

// ---------------------------------------------------------------- the race

/// Swaps each of `dirs` in turn for a link to `target` and back, as fast as it can, until
/// stopped; returns once it is under way. The thread returns how many swaps it made.
fn swap_for_link_until(
    stop: Arc<AtomicBool>,
    dirs: Vec<PathBuf>,
    target: PathBuf,
) -> thread::JoinHandle<u64> {
    let started = Arc::new(AtomicBool::new(false));
    let under_way = started.clone();
    let attacker = thread::spawn(move || {
        let mut swaps = 0;
        for dir in dirs.iter().cycle() {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let aside = dir.with_extension("real");
            // Every step may fail when the code under attack changed something in between.
            if fs::rename(dir, &aside).is_ok() {
                let _ = symlink(&target, dir);
                thread::yield_now();
                let _ = fs::remove_file(dir);
                let _ = fs::rename(&aside, dir);
                swaps += 1;
                started.store(true, Ordering::Relaxed);
            }
            thread::yield_now();
        }
        // Leave the real directories in place.
        for dir in &dirs {
            if dir.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
                let _ = fs::remove_file(dir);
            }
            let _ = fs::rename(dir.with_extension("real"), dir);
        }
        swaps
    });
    while !under_way.load(Ordering::Relaxed) && !attacker.is_finished() {
        thread::yield_now();
    }
    attacker
}

#[test]
fn swapping_a_directory_for_a_link_during_cleanup_and_restore_reaches_nothing_outside() {
    const FILES: usize = 2000;
    for round in 0..5 {
        let world = World::new();
        let sub = world.logs().join("sub");
        let decoy = world.outside.join("decoy");
        let empty = world.outside.join("empty");
        fs::create_dir_all(&decoy).unwrap();
        fs::create_dir_all(&empty).unwrap();
        for i in 0..FILES {
            let name = format!("f{i:04}.log");
            write(&sub.join(&name), name.as_bytes());
            // The decoy holds second names of the same inodes: following the link would find
            // files that pass every identity check.
            fs::hard_link(sub.join(&name), decoy.join(&name)).unwrap();
        }
        let files_before = cleanable(&world).len();
        let plan = world.plan();
        assert_eq!(plan.files.len(), files_before);
        let protected = world.protected();

        let stop = Arc::new(AtomicBool::new(false));
        let attacker = swap_for_link_until(stop.clone(), vec![sub.clone()], decoy.clone());
        let report = execute_cleanup(&world.sandbox, &plan, "race").unwrap();
        stop.store(true, Ordering::Relaxed);
        let swaps = attacker.join().unwrap();
        assert_protected(
            &world,
            &protected,
            &format!("by the cleanup in round {round}"),
        );
        assert_eq!(
            files_below(&decoy).len(),
            FILES,
            "decoy names moved in round {round}"
        );

        // Every file is either still in the sandbox or in the quarantine: none lost, none
        // duplicated.
        let quarantined = quarantined_files(&world, "race");
        let remaining = cleanable(&world).len();
        assert_eq!(report.moved_files as usize, quarantined, "{report:?}");
        assert_eq!(quarantined + remaining, files_before, "round {round}");
        eprintln!(
            "round {round}: {swaps} swaps during the cleanup, {} moved, {} skipped {:?}",
            report.moved_files,
            report.skipped_count,
            report.skipped.iter().take(3).collect::<Vec<_>>()
        );

        // Restore while the directory is swapped for a link to an empty outside directory.
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = swap_for_link_until(stop.clone(), vec![sub.clone()], empty.clone());
        let restored = restore(&world.sandbox, "race").unwrap();
        stop.store(true, Ordering::Relaxed);
        let swaps = attacker.join().unwrap();
        assert_protected(
            &world,
            &protected,
            &format!("by the restore in round {round}"),
        );
        assert!(
            files_below(&empty).is_empty(),
            "restored through the link in round {round}"
        );
        let back = cleanable(&world).len();
        let still_quarantined = quarantined_files(&world, "race");
        assert_eq!(
            restored.restored_files as usize,
            back - remaining,
            "round {round}"
        );
        assert_eq!(
            back + still_quarantined,
            files_before,
            "round {round}: {restored:?}"
        );
        eprintln!(
            "round {round}: {swaps} swaps during the restore, {} restored, {} skipped",
            restored.restored_files, restored.skipped_count
        );
    }
}

#[test]
fn swapping_a_shallow_directory_of_a_deep_tree_is_caught_when_it_is_reopened() {
    // Deeper than the walk's budget of open directories, so shallow levels are given up and
    // reopened (and checked to be the same directory) while the attacker swaps one of them
    // for a link to a decoy copy whose files are second names of the same inodes.
    const DEPTH: usize = 100;
    for round in 0..3 {
        let world = World::new();
        let decoy = world.outside.join("decoy");
        let mut real = world.logs();
        let mut fake = decoy.clone();
        for level in 0..DEPTH {
            real.push("d");
            fake.push("d");
            let name = format!("f{level:03}.log");
            write(&real.join(&name), name.as_bytes());
            fs::create_dir_all(&fake).unwrap();
            fs::hard_link(real.join(&name), fake.join(&name)).unwrap();
        }
        let files_before = cleanable(&world).len();
        let plan = world.plan();
        let protected = world.protected();
        let swapped = world.logs().join("d/d");
        let target = decoy.join("d/d");

        let stop = Arc::new(AtomicBool::new(false));
        let attacker = swap_for_link_until(stop.clone(), vec![swapped.clone()], target.clone());
        let report = execute_cleanup(&world.sandbox, &plan, "deep-race").unwrap();
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        assert_protected(
            &world,
            &protected,
            &format!("by the cleanup in round {round}"),
        );
        let quarantined = quarantined_files(&world, "deep-race");
        assert_eq!(report.moved_files as usize, quarantined);
        assert_eq!(quarantined + cleanable(&world).len(), files_before);

        let stop = Arc::new(AtomicBool::new(false));
        let attacker = swap_for_link_until(stop.clone(), vec![swapped.clone()], target.clone());
        let restored = restore(&world.sandbox, "deep-race").unwrap();
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        assert_protected(
            &world,
            &protected,
            &format!("by the restore in round {round}"),
        );
        let still = quarantined_files(&world, "deep-race");
        assert_eq!(
            cleanable(&world).len() + still,
            files_before,
            "{restored:?}"
        );
        eprintln!(
            "deep round {round}: {} moved, {} skipped; {} restored, {} skipped",
            report.moved_files,
            report.skipped_count,
            restored.restored_files,
            restored.skipped_count
        );
    }
}

#[test]
fn swapping_directories_during_purge_deletes_nothing_outside() {
    const DIRECTORIES: usize = 200;
    const FILES: usize = 10;
    for round in 0..3 {
        let world = World::new();
        let sub = world.logs().join("sub");
        let names: Vec<String> = (0..FILES).map(|i| format!("f{i:02}.log")).collect();
        for d in 0..DIRECTORIES {
            for name in &names {
                write(&sub.join(format!("d{d:03}")).join(name), b"x");
            }
        }
        execute_cleanup(&world.sandbox, &world.plan(), "expired").unwrap();
        // A decoy outside with the same names.
        let decoy = world.outside.join("decoy");
        for name in &names {
            write(&decoy.join(name), b"precious");
        }
        let protected = world.protected();

        let in_quarantine = world.quarantine("expired").join("logs/sub");
        let dirs = (0..DIRECTORIES)
            .map(|d| in_quarantine.join(format!("d{d:03}")))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let attacker = swap_for_link_until(stop.clone(), dirs, decoy.clone());
        let purged = purge_quarantine(&world.sandbox, DAY, SystemTime::now() + 2 * DAY).unwrap();
        stop.store(true, Ordering::Relaxed);
        let swaps = attacker.join().unwrap();
        assert_protected(
            &world,
            &protected,
            &format!("by the purge in round {round}"),
        );
        assert_eq!(files_below(&decoy).len(), FILES);
        // Whatever the attacker kept from the purge goes with the next one.
        let again = purge_quarantine(&world.sandbox, DAY, SystemTime::now() + 2 * DAY).unwrap();
        assert_eq!(purged + again, 1, "round {round}");
        assert!(!world.quarantine("expired").exists());
        assert_protected(
            &world,
            &protected,
            &format!("by the second purge in round {round}"),
        );
        eprintln!("purge round {round}: {swaps} swaps");
    }
}

// ---------------------------------------------------------------- the quarantine's budget

const MB: u64 = 1_000_000;

/// `n` files of `size` random (incompressible) bytes under `logs/big/`, `f00` the oldest,
/// one minute apart; their SHA-256 by relative path.
fn random_logs(world: &World, n: usize, size: usize) -> BTreeMap<String, Vec<u8>> {
    use rand::RngCore;
    let mut digests = BTreeMap::new();
    let now = SystemTime::now();
    let mut content = vec![0u8; size];
    for i in 0..n {
        rand::rng().fill_bytes(&mut content);
        let path = format!("logs/big/f{i:02}.log");
        write(&world.sandbox.join(&path), &content);
        let file = fs::File::options()
            .write(true)
            .open(world.sandbox.join(&path))
            .unwrap();
        file.set_modified(now - Duration::from_secs(60 * (n - i) as u64))
            .unwrap();
        digests.insert(path, Sha256::digest(&content).to_vec());
    }
    digests
}

/// A world whose cleanup directories are empty (its data/, other/ and outside stay).
fn bare_world() -> World {
    let world = World::new();
    for dir in ["logs", "tmp", "cache"] {
        fs::remove_dir_all(world.sandbox.join(dir)).unwrap();
    }
    world
}

/// Bytes of the regular files below `root`, by a walk of the test's own (no link followed).
fn walked_bytes(root: &Path) -> u64 {
    WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn digest_of(path: &Path) -> Option<Vec<u8>> {
    fs::read(path).ok().map(|c| Sha256::digest(&c).to_vec())
}

#[test]
fn the_quarantine_keeps_the_newest_files_within_its_budget_and_deletes_the_rest() {
    let world = bare_world();
    let protected = world.protected();
    let digests = random_logs(&world, 12, 10 * MB as usize);
    let plan = world.plan();
    // Before: the estimate assumes no compression (random bytes have none to give).
    let estimate = plan.estimate(50 * MB);
    assert_eq!(
        (estimate.restorable_files, estimate.restorable_bytes),
        (5, 50 * MB),
        "{estimate:?}"
    );
    assert_eq!(estimate.deleted_files, 7);
    let before = walked_bytes(&world.sandbox);
    assert!((120 * MB..121 * MB).contains(&before), "{before}");

    let moved = execute_cleanup(&world.sandbox, &plan, "inc-budget").unwrap();
    let kept = keep_within(&world.sandbox, "inc-budget", 50 * MB).unwrap();
    assert_protected(&world, &protected, "by the cleanup within a budget");
    let quarantine = world.quarantine("inc-budget");
    let stored = walked_bytes(&quarantine.join("zstd"));
    let after = walked_bytes(&world.sandbox);
    eprintln!(
        "sandbox {before} bytes before, {after} after (a walk); quarantine holds {stored} \
         compressed bytes for {} files ({} bytes); deleted {} files ({} bytes)",
        kept.restorable_files, kept.restorable_bytes, kept.deleted_files, kept.deleted_bytes
    );
    // The figures are what is on disk, and within the budget.
    assert_eq!(kept.stored_bytes, stored, "{kept:?}");
    assert!(stored <= 50 * MB, "{stored}");
    assert_eq!(kept.others_bytes, 0);
    assert_eq!(kept.restorable_files + kept.deleted_files, 12, "{kept:?}");
    assert_eq!(
        kept.restorable_bytes + kept.deleted_bytes,
        moved.moved_bytes
    );
    // zstd adds a few bytes to incompressible data: 4 of the 10 MB files fit, not 5.
    assert_eq!(kept.restorable_files, 4, "{kept:?}");
    assert!(after < 100 * MB, "{after} bytes left in the sandbox");
    assert_eq!(sandbox_size(&world.sandbox).unwrap(), after);
    assert_eq!(
        sentinel::runtime::cleanup::quarantine_bytes(&world.sandbox).unwrap(),
        stored
    );
    // Nothing uncompressed is left in the quarantine's moved tree.
    assert!(!quarantine.join("logs").exists());
    // The newest are the ones kept.
    let kept_names: BTreeSet<String> = files_below(&quarantine.join("zstd/logs/big"))
        .into_keys()
        .map(|k| String::from_utf8(k).unwrap())
        .collect();
    let newest: BTreeSet<String> = (8..12).map(|i| format!("f{i:02}.log")).collect();
    assert_eq!(kept_names, newest);

    // A rollback brings back exactly those, byte for byte, and says what it could not.
    let restored = restore(&world.sandbox, "inc-budget").unwrap();
    assert_eq!(restored.restored_files, 4, "{restored:?}");
    assert_eq!(restored.restored_bytes, kept.restorable_bytes);
    assert_eq!(
        (restored.deleted_files, restored.deleted_bytes),
        (kept.deleted_files, kept.deleted_bytes)
    );
    assert_eq!(restored.skipped_count, 0, "{:?}", restored.skipped);
    assert!(restored.quarantine_removed);
    for (path, digest) in &digests {
        let now = digest_of(&world.sandbox.join(path));
        if newest.iter().any(|n| path.ends_with(n.as_str())) {
            assert_eq!(now.as_ref(), Some(digest), "{path} restored byte for byte");
        } else {
            assert_eq!(now, None, "{path} was deleted for good");
        }
    }
    let mtime = fs::metadata(world.sandbox.join("logs/big/f11.log"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(SystemTime::now().duration_since(mtime).unwrap() >= Duration::from_secs(55));
    assert_protected(&world, &protected, "by the restore");
}

#[test]
fn compressible_files_all_fit_and_a_full_quarantine_keeps_nothing() {
    let world = bare_world();
    let text = "GET /healthz 200 0.3ms user-agent=kube-probe/1.30\n".repeat(400_000);
    write(&world.logs().join("access.log"), text.as_bytes());
    let original = Sha256::digest(text.as_bytes()).to_vec();
    let plan = world.plan();
    execute_cleanup(&world.sandbox, &plan, "inc-zip").unwrap();
    let kept = keep_within(&world.sandbox, "inc-zip", MB).unwrap();
    assert_eq!(kept.deleted_files, 0, "{kept:?}");
    assert_eq!(kept.restorable_bytes, plan.bytes);
    assert!(kept.stored_bytes < MB / 10, "{kept:?}");

    // A second cleanup finds the budget taken by the first: nothing of it stays.
    write(&world.logs().join("later.log"), b"later");
    let second = world.plan();
    assert_eq!(second.estimate(0).deleted_files, 1);
    execute_cleanup(&world.sandbox, &second, "inc-full").unwrap();
    let full = keep_within(&world.sandbox, "inc-full", kept.stored_bytes).unwrap();
    assert_eq!(full.others_bytes, kept.stored_bytes);
    assert_eq!(
        (full.restorable_files, full.deleted_files),
        (0, 1),
        "{full:?}"
    );
    let nothing = restore(&world.sandbox, "inc-full").unwrap();
    assert_eq!((nothing.restored_files, nothing.deleted_files), (0, 1));
    assert!(!world.logs().join("later.log").exists());

    let back = restore(&world.sandbox, "inc-zip").unwrap();
    assert_eq!(back.restored_files, 1, "{back:?}");
    assert_eq!(
        digest_of(&world.logs().join("access.log")),
        Some(original),
        "restored byte for byte"
    );
}

#[test]
fn the_quarantine_follows_no_link_swapped_into_it() {
    let world = World::new();
    let protected = world.protected();
    let plan = world.plan();
    execute_cleanup(&world.sandbox, &plan, "inc-swap").unwrap();
    // Someone replaces a moved file with a link to a precious file, and a directory with a
    // link to the outside.
    let moved = world.quarantine("inc-swap");
    fs::remove_file(moved.join("logs/app.log")).unwrap();
    symlink(
        world.outside.join("precious.txt"),
        moved.join("logs/app.log"),
    )
    .unwrap();
    fs::remove_dir_all(moved.join("logs/nested")).unwrap();
    symlink(world.outside.join("dir"), moved.join("logs/nested")).unwrap();
    let kept = keep_within(&world.sandbox, "inc-swap", 50 * MB).unwrap();
    assert_protected(&world, &protected, "by compressing a tampered quarantine");
    assert!(kept.skipped_count >= 2, "{kept:?}");
    assert!(fs::symlink_metadata(moved.join("logs/app.log"))
        .unwrap()
        .file_type()
        .is_symlink());
    let restored = restore(&world.sandbox, "inc-swap").unwrap();
    assert_protected(&world, &protected, "by restoring a tampered quarantine");
    assert!(!restored.quarantine_removed, "the links stay: {restored:?}");
}
