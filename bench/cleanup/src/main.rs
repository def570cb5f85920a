//! How fast a sandbox cleanup goes: 100 000 small files under a temporary sandbox's `logs/`
//! (100 directories of 1 000), planned, moved to the quarantine, restored, moved again and
//! purged. Run with
//! `cargo run --release --manifest-path bench/cleanup/Cargo.toml --target-dir target`;
//! everything is made in a temporary directory and removed at the end.

use std::fs;
use std::time::{Duration, Instant, SystemTime};

use sentinel::domain::CleanupDir;
use sentinel::runtime::cleanup::{execute_cleanup, plan_cleanup, purge_quarantine, restore};

const DIRECTORIES: usize = 100;
const FILES_PER_DIRECTORY: usize = 1_000;

fn main() {
    let temp = tempfile::tempdir().expect("a temporary directory");
    let sandbox = temp.path().join("sandbox");
    let started = Instant::now();
    for d in 0..DIRECTORIES {
        let dir = sandbox.join(format!("logs/app-{d:03}"));
        fs::create_dir_all(&dir).expect("a directory");
        for f in 0..FILES_PER_DIRECTORY {
            fs::write(dir.join(format!("{f:04}.log")), b"a small log line\n").expect("a file");
        }
    }
    let files = DIRECTORIES * FILES_PER_DIRECTORY;
    println!("created {files} files in {:.2?}", started.elapsed());

    let started = Instant::now();
    let plan = plan_cleanup(&sandbox, &CleanupDir::ALL).expect("a plan");
    let planned = started.elapsed();
    assert_eq!(plan.files.len(), files);
    report("plan_cleanup", files, planned);

    let started = Instant::now();
    let moved = execute_cleanup(&sandbox, &plan, "bench-1").expect("a cleanup");
    let executed = started.elapsed();
    assert_eq!(moved.moved_files as usize, files);
    report("execute_cleanup", files, executed);
    report("plan + execute", files, planned + executed);

    let started = Instant::now();
    let restored = restore(&sandbox, "bench-1").expect("a restore");
    assert_eq!(restored.restored_files as usize, files);
    report("restore", files, started.elapsed());

    let plan = plan_cleanup(&sandbox, &CleanupDir::ALL).expect("a plan");
    execute_cleanup(&sandbox, &plan, "bench-2").expect("a cleanup");
    let started = Instant::now();
    let later = SystemTime::now() + Duration::from_secs(2 * 24 * 3600);
    let purged =
        purge_quarantine(&sandbox, Duration::from_secs(24 * 3600), later).expect("a purge");
    assert_eq!(purged, 1);
    report("purge_quarantine", files, started.elapsed());
}

fn report(what: &str, files: usize, took: Duration) {
    let rate = files as f64 / took.as_secs_f64();
    println!("{what:>18}: {files} files in {took:>10.2?} = {rate:>10.0} files/s");
}
