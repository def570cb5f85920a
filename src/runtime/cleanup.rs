//! Sandbox cleanup: the only code in Sentinel that removes files, and how it is undone.
//!
//! In: the sandbox root (`sandbox_dir`) and the cleanup directories of an
//! `ActionPlan::SandboxCleanup`. Out: a [`CleanupPlan`] (the snapshot of what would go),
//! a [`CleanupReport`] (what went), a [`RestoreReport`] (what came back), and the number of
//! expired quarantines [`purge_quarantine`] removed.
//!
//! Nothing is deleted outright. [`execute_cleanup`] *moves* each planned file into
//! `<sandbox>/.sentinel-quarantine/<cleanup-id>/`, under the same relative path
//! (`logs/app/x.log` → `.sentinel-quarantine/<id>/logs/app/x.log`), where [`restore`] finds it
//! for a rollback and [`purge_quarantine`] deletes it once `[actions] quarantine_retention`
//! has passed. The quarantine is inside the sandbox so that a move is a `rename` on the same
//! filesystem; `runtime::sandbox` does not measure it, so a cleanup shrinks the measured size.
//!
//! The rules (SPEC §5), and how they hold even against someone who changes the tree while
//! Sentinel works in it:
//!
//! - only regular files below `<sandbox>/logs/`, `tmp/` and `cache/` are planned and moved;
//!   directories are left in place (empty or not), everything else (symbolic links, sockets,
//!   FIFOs, devices) is reported and left alone. Files are never opened, so a FIFO cannot
//!   block and no file's content is ever read or written;
//! - no symbolic link is ever followed, at any level. Every directory is opened relative to its
//!   parent's descriptor with `openat(O_DIRECTORY | O_NOFOLLOW)`, one component at a time, and
//!   every entry is examined with `fstatat(AT_SYMLINK_NOFOLLOW)`. A `logs` that is a link is
//!   skipped as a whole; a link inside is reported, not moved, not followed. Because each
//!   directory is held by descriptor, swapping a directory for a link after it was checked
//!   changes nothing: the next operation still happens in the directory that was checked;
//! - the walk stays on the root's mount: each directory opened is checked against the root's
//!   `st_dev` and (with `statx`) mount id, so mount points, bind mounts included, are skipped;
//!   `rename` itself refuses to cross a mount (`EXDEV`);
//! - a planned file is moved only if it is still the same file: same device, inode and size,
//!   still a regular file, reached through real directories. The move is
//!   `renameat2(RENAME_NOREPLACE)`, and the quarantined entry is checked again afterwards: an
//!   entry swapped in during the move is put back. A file that changed is skipped and counted;
//! - [`restore`] never replaces an existing file (`RENAME_NOREPLACE`) and reaches the original
//!   place through the same no-follow walk, recreating missing directories;
//! - [`purge_quarantine`] deletes only directories named like cleanup ids inside the
//!   quarantine, and unlinks links inside them instead of following them.
//!
//! What it cannot prevent: someone who can write both in the cleanup directories and elsewhere
//! on the same filesystem can move a directory that Sentinel already holds open to that other
//! place while the operation runs; Sentinel then acts on the directory it checked, wherever it
//! now is: it moves only the planned files (same inode) out of it and restores only into it
//! without replacing anything. That person could have done the same by hand.
//!
//! The walks are iterative (a tree thousands of levels deep cannot overflow the stack) and
//! hold at most [`MAX_OPEN_DIRS`] directory descriptors per walk: a directory whose descriptor
//! was given up is reopened from a held ancestor, the same no-follow way, and must still be
//! the same directory (device and inode) or its subtree is skipped. Trees deeper than
//! [`MAX_DEPTH`] are not entered. Everything is synchronous: callers use `spawn_blocking`.

use std::cmp::Ordering;
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{
    fstat, mkdirat, openat, renameat_with, statat, statx, unlinkat, AtFlags, Dir, FileType, Mode,
    OFlags, RenameFlags, Stat, StatxFlags,
};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

use crate::domain::CleanupDir;

/// The quarantine's name, directly below the sandbox root.
pub const QUARANTINE_DIR: &str = ".sentinel-quarantine";

/// The record each quarantine holds; its modification time is the cleanup's time.
const MARKER: &str = "cleanup.json";

/// The record of what a cleanup deleted for good: `{"files": n, "bytes": n}`.
const DELETED: &str = "deleted.json";

/// The directory of a quarantine holding its files compressed, under their paths.
const ZSTD_DIR: &str = "zstd";

/// The scratch file of a quarantine: a file being compressed or unpacked, renamed into place
/// only once complete, so an interrupted run never leaves half a file under a real name.
const PARTIAL: &str = "partial";

/// Directory descriptors a walk keeps open at most (see the module documentation).
pub const MAX_OPEN_DIRS: usize = 64;

/// Levels below a cleanup directory that are walked at most.
pub const MAX_DEPTH: usize = 1024;

/// Skipped entries listed in a plan or a report at most; the rest are only counted.
const MAX_LISTED: usize = 1000;

/// The name of one cleanup's quarantine: 1 to 128 ASCII letters, digits and `-`. It becomes a
/// directory name, so nothing else (no `/`, no `.`, nothing empty) is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CleanupId(String);

impl CleanupId {
    pub fn parse(id: &str) -> io::Result<CleanupId> {
        let valid = !id.is_empty()
            && id.len() <= 128
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if valid {
            Ok(CleanupId(id.to_owned()))
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{id:?} is not a cleanup id (letters, digits and '-', at most 128)"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn c_name(&self) -> CString {
        CString::new(self.0.as_bytes()).expect("a cleanup id has no NUL")
    }
}

impl fmt::Display for CleanupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a cleanup would move: the snapshot taken before executing (SPEC §4).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupPlan {
    /// In walk order, sorted by path.
    pub files: Vec<PlannedFile>,
    /// The sum of the files' sizes.
    pub bytes: u64,
    /// What was found and will not be touched, with the reason (at most 1000 listed).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// How many entries were skipped, listed or not.
    #[serde(default)]
    pub skipped_count: u64,
}

/// One regular file a cleanup would move, and the identity it must still have when it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedFile {
    /// Relative to the sandbox, e.g. `logs/app.log`; lossy when the name is not UTF-8.
    pub path: String,
    /// The exact bytes of the relative path, present only when `path` is lossy (hex in JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_bytes")]
    pub raw_path: Option<Vec<u8>>,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    /// Modification time, nanoseconds since the Unix epoch: the newest files are the ones the
    /// quarantine keeps first.
    #[serde(default)]
    pub modified_ns: i64,
}

impl PlannedFile {
    /// The exact relative path.
    pub fn path_bytes(&self) -> &[u8] {
        self.raw_path.as_deref().unwrap_or(self.path.as_bytes())
    }
}

/// What [`execute_cleanup`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub moved_files: u64,
    pub moved_bytes: u64,
    /// Planned files not moved, with the reason (at most 1000 listed).
    pub skipped: Vec<String>,
    pub skipped_count: u64,
    /// Where the files went: `<sandbox>/.sentinel-quarantine/<cleanup-id>`.
    pub quarantine: String,
}

/// What the quarantine would keep of a plan, estimated before execution from the files'
/// sizes (the compression ratio is unknown until the files are compressed, so this assumes
/// none: more may stay restorable, never less unless the files grow).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepEstimate {
    pub restorable_files: u64,
    pub restorable_bytes: u64,
    pub deleted_files: u64,
    pub deleted_bytes: u64,
}

impl CleanupPlan {
    /// The files [`keep_within`] would keep with `room` bytes left in the quarantine, newest
    /// first, each at its own size (see [`KeepEstimate`]).
    pub fn estimate(&self, room: u64) -> KeepEstimate {
        let mut files: Vec<&PlannedFile> = self.files.iter().collect();
        files.sort_by(|a, b| {
            newest_first(a.modified_ns, b.modified_ns, a.path_bytes(), b.path_bytes())
        });
        let mut estimate = KeepEstimate::default();
        let mut room = room;
        for file in files {
            if file.size <= room {
                room -= file.size;
                estimate.restorable_files += 1;
                estimate.restorable_bytes += file.size;
            } else {
                estimate.deleted_files += 1;
                estimate.deleted_bytes += file.size;
            }
        }
        estimate
    }
}

/// What [`keep_within`] did with the files of one quarantine: figures measured on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepReport {
    /// Files kept, compressed, and their original size: what a rollback can restore.
    pub restorable_files: u64,
    pub restorable_bytes: u64,
    /// What those files take in the quarantine, compressed.
    pub stored_bytes: u64,
    /// Files deleted for good because they did not fit, and their size.
    pub deleted_files: u64,
    pub deleted_bytes: u64,
    /// What the quarantine held for other cleanups before this one (against the same budget).
    pub others_bytes: u64,
    /// Entries left as they were, with the reason (at most 1000 listed).
    pub skipped: Vec<String>,
    pub skipped_count: u64,
}

/// What [`restore`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    pub restored_files: u64,
    pub restored_bytes: u64,
    /// What the cleanup deleted for good (it did not fit in the quarantine): never restorable.
    #[serde(default)]
    pub deleted_files: u64,
    #[serde(default)]
    pub deleted_bytes: u64,
    /// Quarantined entries left where they are, with the reason (at most 1000 listed).
    pub skipped: Vec<String>,
    pub skipped_count: u64,
    /// Everything came back and the emptied quarantine was removed.
    pub quarantine_removed: bool,
}

/// The snapshot: every regular file below the given cleanup directories of `sandbox`, found
/// under the rules of the module documentation. Changes nothing.
pub fn plan_cleanup(sandbox: &Path, dirs: &[CleanupDir]) -> io::Result<CleanupPlan> {
    let root = Root::open(sandbox)?;
    let mut planner = Planner {
        fs: root.fs,
        plan: CleanupPlan::default(),
    };
    let mut dirs = dirs.to_vec();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let name = CString::new(dir.as_str()).expect("no NUL in a cleanup directory name");
        walk(root.fd.as_fd(), root.fs, &name, &mut planner);
    }
    let mut plan = planner.plan;
    plan.files
        .sort_by(|a, b| compare_paths(a.path_bytes(), b.path_bytes()));
    Ok(plan)
}

/// Moves the planned files that are still the same into the quarantine `cleanup_id`, which
/// must not exist yet. Anything changed since planning is skipped and counted. A plan naming
/// anything outside `logs/`, `tmp/` or `cache/` (or with `.`, `..` or empty components) is
/// refused as a whole before anything moves.
pub fn execute_cleanup(
    sandbox: &Path,
    plan: &CleanupPlan,
    cleanup_id: &str,
) -> io::Result<CleanupReport> {
    let id = CleanupId::parse(cleanup_id)?;
    let mut files = Vec::with_capacity(plan.files.len());
    for file in &plan.files {
        let components = planned_components(file.path_bytes()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the plan names {:?}, outside logs/, tmp/ and cache/",
                    file.path
                ),
            )
        })?;
        files.push((components, file));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));

    let root = Root::open(sandbox)?;
    let quarantine = root.create_quarantine(&id)?;
    let mut report = CleanupReport {
        quarantine: sandbox
            .join(QUARANTINE_DIR)
            .join(id.as_str())
            .display()
            .to_string(),
        ..CleanupReport::default()
    };
    let mut skipped = Skips::default();
    let mut source = Chain::new(root.fd.as_fd(), root.fs);
    let mut target = Chain::new(quarantine.as_fd(), root.fs);
    for (components, file) in files {
        let (name, parents) = components
            .split_last()
            .expect("a planned path has components");
        match move_planned(&mut source, &mut target, parents, name, file, root.fs) {
            Ok(()) => {
                report.moved_files += 1;
                report.moved_bytes = report.moved_bytes.saturating_add(file.size);
            }
            Err(why) => skipped.push(format!("{}: {why}", file.path)),
        }
    }
    report.skipped = skipped.list;
    report.skipped_count = skipped.count;
    Ok(report)
}

/// Moves the files of quarantine `cleanup_id` back where they were, never over an existing
/// file and never through a link; missing directories are recreated. When everything came
/// back the quarantine is removed. A quarantine that does not exist is `NotFound`.
pub fn restore(sandbox: &Path, cleanup_id: &str) -> io::Result<RestoreReport> {
    let id = CleanupId::parse(cleanup_id)?;
    let root = Root::open(sandbox)?;
    let quarantines = root
        .open_quarantine()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no quarantine {id}")))?;
    let own = open_dir(quarantines.as_fd(), &id.c_name(), root.fs)
        .map_err(|why| io::Error::new(io::ErrorKind::NotFound, format!("quarantine {id}: {why}")))?
        .fd;
    // The compressed files first, back into the moved tree; then all of it home.
    let mut unpacker = Unpacker {
        own: own.as_fd(),
        target: Chain::new(own.as_fd(), root.fs),
        skipped: Skips::default(),
    };
    let zstd_dir = CString::new(ZSTD_DIR).expect("no NUL");
    walk(own.as_fd(), root.fs, &zstd_dir, &mut unpacker);
    let Unpacker {
        skipped: unpack_skipped,
        ..
    } = unpacker;
    let (deleted_files, deleted_bytes) = read_deleted(own.as_fd());
    let mut restorer = Restorer {
        target: Chain::new(root.fd.as_fd(), root.fs),
        report: RestoreReport {
            deleted_files,
            deleted_bytes,
            ..RestoreReport::default()
        },
        skipped: unpack_skipped,
    };
    for dir in CleanupDir::ALL {
        let name = CString::new(dir.as_str()).expect("no NUL in a cleanup directory name");
        walk(own.as_fd(), root.fs, &name, &mut restorer);
    }
    let mut report = restorer.report;
    report.skipped = restorer.skipped.list;
    report.skipped_count = restorer.skipped.count;
    // Only the records left: the quarantine is empty.
    let _ = unlinkat(&own, PARTIAL, AtFlags::empty());
    let emptied = entry_names(own.as_fd()).is_ok_and(|names| {
        names.iter().all(|name| {
            name.to_bytes() == MARKER.as_bytes() || name.to_bytes() == DELETED.as_bytes()
        })
    });
    if emptied {
        let _ = unlinkat(&own, DELETED, AtFlags::empty());
        let _ = unlinkat(&own, MARKER, AtFlags::empty());
        report.quarantine_removed = unlinkat(&quarantines, id.c_name(), AtFlags::REMOVEDIR).is_ok();
    }
    Ok(report)
}

/// Deletes the quarantines whose cleanup happened at least `older_than` before `now`, and
/// returns how many it removed entirely. Only directories named like a cleanup id are
/// considered; links inside them are unlinked, never followed; a mount inside is left.
pub fn purge_quarantine(sandbox: &Path, older_than: Duration, now: SystemTime) -> io::Result<u64> {
    let root = Root::open(sandbox)?;
    let Some(quarantines) = root.open_quarantine()? else {
        return Ok(0);
    };
    let mut removed = 0;
    for name in entry_names(quarantines.as_fd())? {
        let Some(id) = name.to_str().ok().and_then(|s| CleanupId::parse(s).ok()) else {
            continue;
        };
        let Ok(own) = open_dir(quarantines.as_fd(), &name, root.fs) else {
            continue;
        };
        // The record's modification time, else the directory's.
        let stat = match statat(&own.fd, MARKER, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => stat,
            _ => match fstat(&own.fd) {
                Ok(stat) => stat,
                Err(_) => continue,
            },
        };
        let created = modified(&stat);
        let expired = now
            .duration_since(created)
            .is_ok_and(|age| age >= older_than);
        if !expired {
            continue;
        }
        drop(own);
        let mut purger = Purger { failed: false };
        walk(quarantines.as_fd(), root.fs, &id.c_name(), &mut purger);
        if !purger.failed && statat(&quarantines, &name, AtFlags::SYMLINK_NOFOLLOW).is_err() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The bytes the quarantine holds against `[actions] quarantine_max_bytes`: every file in
/// `.sentinel-quarantine` but the cleanups' records (`cleanup.json`, `deleted.json`, a few
/// hundred bytes each). Links are not followed; 0 when there is no quarantine.
pub fn quarantine_bytes(sandbox: &Path) -> io::Result<u64> {
    let root = Root::open(sandbox)?;
    let Some(quarantines) = root.open_quarantine()? else {
        return Ok(0);
    };
    Ok(usage(quarantines.as_fd(), root.fs, None))
}

/// Makes quarantine `cleanup_id` (as [`execute_cleanup`] left it: the moved files under
/// their paths) fit the budget: newest file first, each is compressed with zstd into
/// `<id>/zstd/<path>` while the whole quarantine stays within `max_bytes` (what other
/// cleanups keep counts too); a file that does not fit is deleted for good, and the next,
/// older ones are still tried. Afterwards the cleanup's moved files are all either
/// compressed (restorable) or gone (counted in `<id>/deleted.json` for [`restore`]).
///
/// Only files inside the quarantine are opened: each must still be the regular file that
/// was moved there (checked on the open descriptor: no link followed, a FIFO cannot block).
pub fn keep_within(sandbox: &Path, cleanup_id: &str, max_bytes: u64) -> io::Result<KeepReport> {
    let id = CleanupId::parse(cleanup_id)?;
    let root = Root::open(sandbox)?;
    let quarantines = root
        .open_quarantine()?
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no quarantine {id}")))?;
    let own = open_dir(quarantines.as_fd(), &id.c_name(), root.fs)
        .map_err(|why| io::Error::new(io::ErrorKind::NotFound, format!("quarantine {id}: {why}")))?
        .fd;
    let mut report = KeepReport {
        others_bytes: usage(quarantines.as_fd(), root.fs, Some(&id)),
        ..KeepReport::default()
    };
    let mut room = max_bytes.saturating_sub(report.others_bytes);

    let mut collector = Collector::default();
    for dir in CleanupDir::ALL {
        let name = CString::new(dir.as_str()).expect("no NUL in a cleanup directory name");
        walk(own.as_fd(), root.fs, &name, &mut collector);
    }
    let mut skipped = collector.skipped;
    let mut files = collector.files;
    files.sort_by(|a, b| newest_first(a.modified_ns, b.modified_ns, &a.path, &b.path));

    let mut source = Chain::new(own.as_fd(), root.fs);
    let mut target = Chain::new(own.as_fd(), root.fs);
    for file in files {
        let mut components: Vec<CString> = file
            .path
            .split(|&b| b == b'/')
            .map(|c| CString::new(c).expect("an entry name has no NUL"))
            .collect();
        let name = components.pop().expect("a walked path has a name");
        let path = lossy(&file.path);
        let outcome = keep_one(
            &mut source,
            &mut target,
            own.as_fd(),
            &components,
            &name,
            &file,
            room,
        );
        match outcome {
            Ok(Kept::Compressed(stored)) => {
                room = room.saturating_sub(stored);
                report.restorable_files += 1;
                report.restorable_bytes = report.restorable_bytes.saturating_add(file.size);
                report.stored_bytes = report.stored_bytes.saturating_add(stored);
            }
            Ok(Kept::Deleted) => {
                report.deleted_files += 1;
                report.deleted_bytes = report.deleted_bytes.saturating_add(file.size);
            }
            Err(why) => skipped.push(format!("{path}: {why}")),
        }
    }
    drop(source);
    drop(target);
    // The moved tree is empty now, but for what was skipped: its directories go.
    for dir in CleanupDir::ALL {
        let name = CString::new(dir.as_str()).expect("no NUL in a cleanup directory name");
        walk(own.as_fd(), root.fs, &name, &mut Pruner);
    }
    if report.deleted_files > 0 {
        let (files, bytes) = read_deleted(own.as_fd());
        write_record(
            own.as_fd(),
            DELETED,
            &serde_json::json!({
                "files": files + report.deleted_files,
                "bytes": bytes + report.deleted_bytes,
            }),
        )?;
    }
    report.skipped = skipped.list;
    report.skipped_count = skipped.count;
    Ok(report)
}

/// What became of one moved file.
enum Kept {
    /// Compressed into the quarantine, taking this many bytes.
    Compressed(u64),
    /// It did not fit: deleted for good.
    Deleted,
}

/// Compresses `<own>/<parents>/<name>` into `<own>/zstd/<parents>/<name>` within `room`
/// bytes, or deletes it when it does not fit. `Err`: left as it was, and why.
fn keep_one(
    source: &mut Chain<'_>,
    target: &mut Chain<'_>,
    own: BorrowedFd<'_>,
    parents: &[CString],
    name: &CStr,
    file: &Moved,
    room: u64,
) -> Result<Kept, String> {
    let from = source.goto(parents, None)?;
    let input = open_regular(from, name, (file.dev, file.ino))?;
    if room > 0 {
        if let Some(stored) = store_compressed(input, target, own, parents, name, room)? {
            let from = source.goto(parents, None)?;
            unlinkat(from, name, AtFlags::empty())
                .map_err(|e| format!("compressed, but cannot be removed: {e}"))?;
            return Ok(Kept::Compressed(stored));
        }
    }
    let from = source.goto(parents, None)?;
    unlinkat(from, name, AtFlags::empty()).map_err(|e| format!("cannot be deleted: {e}"))?;
    Ok(Kept::Deleted)
}

/// Compresses `input` into `<own>/partial`, then renames it to `<own>/zstd/<parents>/<name>`.
/// `Some(bytes stored)`, or `None` when the compressed file would need more than `room`.
fn store_compressed(
    input: OwnedFd,
    target: &mut Chain<'_>,
    own: BorrowedFd<'_>,
    parents: &[CString],
    name: &CStr,
    room: u64,
) -> Result<Option<u64>, String> {
    let stat = fstat(&input).map_err(|e| format!("cannot be examined: {e}"))?;
    let _ = unlinkat(own, PARTIAL, AtFlags::empty());
    let output = openat(
        own,
        PARTIAL,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|e| format!("cannot write to the quarantine: {e}"))?;
    let output = match compress_within(File::from(input), File::from(output), room) {
        Ok(Some(output)) => output,
        Ok(None) => {
            let _ = unlinkat(own, PARTIAL, AtFlags::empty());
            return Ok(None);
        }
        Err(e) => {
            let _ = unlinkat(own, PARTIAL, AtFlags::empty());
            return Err(format!("cannot be compressed: {e}"));
        }
    };
    copy_metadata(&output, &stat);
    let stored = fstat(&output).map(|st| file_size(&st)).unwrap_or(0);
    drop(output);
    let mut components = vec![CString::new(ZSTD_DIR).expect("no NUL")];
    components.extend(parents.iter().cloned());
    let stored_in = target.goto(&components, Some(Mode::from_raw_mode(0o700)));
    let renamed = stored_in.and_then(|to| {
        match renameat_with(own, PARTIAL, to, name, RenameFlags::NOREPLACE) {
            Ok(()) => Ok(()),
            Err(Errno::INVAL) => rustix::fs::renameat(own, PARTIAL, to, name)
                .map_err(|e| format!("cannot be stored: {e}")),
            Err(e) => Err(format!("cannot be stored: {e}")),
        }
    });
    if let Err(why) = renamed {
        let _ = unlinkat(own, PARTIAL, AtFlags::empty());
        return Err(why);
    }
    Ok(Some(stored))
}

/// The zstd level: fast, and most of what zstd can gain on logs.
const ZSTD_LEVEL: i32 = 3;

/// Compresses `input` into `output`, stopping as soon as more than `room` bytes would be
/// written. `Some(output)` when it fit, `None` when it did not.
fn compress_within(mut input: File, output: File, room: u64) -> io::Result<Option<File>> {
    let bounded = Bounded {
        inner: output,
        room,
        written: 0,
        over: false,
    };
    let mut encoder = zstd::stream::Encoder::new(bounded, ZSTD_LEVEL)?;
    // A checksum in the frame: restore verifies every byte it brings back.
    encoder.include_checksum(true)?;
    // The end of the frame is written by `do_finish`, which may be what overflows.
    let written = io::copy(&mut input, &mut encoder).and_then(|_| encoder.do_finish());
    match written {
        Err(_) if encoder.get_ref().over => Ok(None),
        Err(e) => Err(e),
        Ok(()) => Ok(Some(encoder.finish()?.inner)),
    }
}

/// A writer that refuses to go past `room` bytes.
struct Bounded {
    inner: File,
    room: u64,
    written: u64,
    /// Set when a write was refused for the room.
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written.saturating_add(buf.len() as u64) > self.room {
            self.over = true;
            return Err(io::Error::other("the quarantine is full"));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens `name` in `dir` for reading if it is still the regular file `(dev, ino)`: never
/// through a link, never blocking on a FIFO, checked on the descriptor itself.
fn open_regular(dir: BorrowedFd<'_>, name: &CStr, expected: (u64, u64)) -> Result<OwnedFd, String> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = match openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) => return Err("now a symbolic link, not followed".to_owned()),
        Err(Errno::NOENT) => return Err("gone from the quarantine".to_owned()),
        Err(e) => return Err(format!("cannot be opened: {e}")),
    };
    let stat = fstat(&fd).map_err(|e| format!("cannot be examined: {e}"))?;
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(format!("now {}, left alone", describe(kind)));
    }
    if identity(&stat) != expected {
        return Err("replaced by another file, left alone".to_owned());
    }
    Ok(fd)
}

/// Gives `file` the permissions and times of `like` (best effort: the content is what counts).
fn copy_metadata(file: &File, like: &Stat) {
    let _ = rustix::fs::fchmod(file, Mode::from_raw_mode(like.st_mode & 0o7777));
    let times = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: like.st_atime as _,
            tv_nsec: like.st_atime_nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: like.st_mtime as _,
            tv_nsec: like.st_mtime_nsec as _,
        },
    };
    let _ = rustix::fs::futimens(file, &times);
}

/// `(files, bytes)` from a quarantine's `deleted.json`, zeros when there is none.
fn read_deleted(own: BorrowedFd<'_>) -> (u64, u64) {
    let Ok(fd) = openat(
        own,
        DELETED,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) else {
        return (0, 0);
    };
    let mut text = String::new();
    let read = File::from(fd).take(64 * 1024).read_to_string(&mut text);
    let value: serde_json::Value = match read {
        Ok(_) => serde_json::from_str(&text).unwrap_or_default(),
        Err(_) => serde_json::Value::Null,
    };
    (
        value["files"].as_u64().unwrap_or(0),
        value["bytes"].as_u64().unwrap_or(0),
    )
}

/// Writes a record in a quarantine, replacing it (never through a link).
fn write_record(own: BorrowedFd<'_>, name: &str, record: &serde_json::Value) -> io::Result<()> {
    let _ = unlinkat(own, PARTIAL, AtFlags::empty());
    let fd = openat(
        own,
        PARTIAL,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    File::from(fd).write_all(format!("{record}\n").as_bytes())?;
    rustix::fs::renameat(own, PARTIAL, own, name)?;
    Ok(())
}

/// The bytes below `quarantines` that count against the budget: all files but the records,
/// and (with `except`) but that cleanup's own moved files, which are being decided on.
fn usage(quarantines: BorrowedFd<'_>, fs: Fs, except: Option<&CleanupId>) -> u64 {
    let Ok(names) = entry_names(quarantines) else {
        return 0;
    };
    let mut sum = Sum {
        bytes: 0,
        except: except.map(|id| id.as_str().as_bytes().to_vec()),
    };
    for name in names {
        match statat(quarantines, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Directory => {
                walk(quarantines, fs, &name, &mut sum);
            }
            Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {
                sum.bytes = sum.bytes.saturating_add(file_size(&stat));
            }
            _ => {}
        }
    }
    sum.bytes
}

/// Adds up the quarantine's files for [`usage`].
struct Sum {
    bytes: u64,
    /// A cleanup id whose moved files (`<id>/logs/…`, `tmp/…`, `cache/…`) are left out.
    except: Option<Vec<u8>>,
}

impl Visitor for Sum {
    fn entry(&mut self, _dir: BorrowedFd<'_>, path: &[u8], _name: &CStr, stat: &Stat) {
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return;
        }
        let mut parts = path.splitn(3, |&b| b == b'/');
        let (id, top, rest) = (parts.next(), parts.next(), parts.next());
        if rest.is_none()
            && matches!(top, Some(t) if t == MARKER.as_bytes() || t == DELETED.as_bytes())
        {
            return;
        }
        let own_moved = rest.is_some()
            && self.except.as_deref() == id
            && CleanupDir::ALL
                .iter()
                .any(|d| Some(d.as_str().as_bytes()) == top);
        if !own_moved {
            self.bytes = self.bytes.saturating_add(file_size(stat));
        }
    }

    fn skip(&mut self, _path: &[u8], _why: &str) {}
}

/// One file moved into a quarantine, as [`keep_within`] found it.
struct Moved {
    /// Relative to the quarantine, e.g. `logs/app.log`.
    path: Vec<u8>,
    size: u64,
    dev: u64,
    ino: u64,
    modified_ns: i64,
}

/// Collects the regular files of a quarantine's moved tree.
#[derive(Default)]
struct Collector {
    files: Vec<Moved>,
    skipped: Skips,
}

impl Visitor for Collector {
    fn entry(&mut self, _dir: BorrowedFd<'_>, path: &[u8], _name: &CStr, stat: &Stat) {
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return self.skip(path, &format!("{}, left in the quarantine", describe(kind)));
        }
        self.files.push(Moved {
            path: path.to_vec(),
            size: file_size(stat),
            dev: identity(stat).0,
            ino: identity(stat).1,
            modified_ns: modified_ns(stat),
        });
    }

    fn skip(&mut self, path: &[u8], why: &str) {
        self.skipped.push(format!("{}: {why}", lossy(path)));
    }
}

/// Removes the directories of a walked tree once they are empty; touches no file.
struct Pruner;

impl Visitor for Pruner {
    fn entry(&mut self, _dir: BorrowedFd<'_>, _path: &[u8], _name: &CStr, _stat: &Stat) {}

    fn skip(&mut self, _path: &[u8], _why: &str) {}

    fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) {
        // Fails, harmlessly, when something is left in it.
        let _ = unlinkat(parent, name, AtFlags::REMOVEDIR);
    }
}

/// Decompresses a quarantine's `zstd/` tree back into its moved tree (`zstd/logs/a.log` →
/// `logs/a.log`), from where [`Restorer`] moves the files home.
struct Unpacker<'r> {
    own: BorrowedFd<'r>,
    target: Chain<'r>,
    skipped: Skips,
}

impl Visitor for Unpacker<'_> {
    fn entry(&mut self, dir: BorrowedFd<'_>, path: &[u8], name: &CStr, stat: &Stat) {
        // `zstd/<cleanup dir>/…`: anything else is not a quarantined file.
        let Some(relative) = path
            .strip_prefix(ZSTD_DIR.as_bytes())
            .and_then(|p| p.strip_prefix(b"/"))
        else {
            return self.skip(path, "not a quarantined file, left in the quarantine");
        };
        let Some(mut components) = planned_components(relative) else {
            return self.skip(path, "not a quarantined file, left in the quarantine");
        };
        components.pop();
        if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return self.skip(path, "not a regular file, left in the quarantine");
        }
        let unpacked = (|| -> Result<(), String> {
            let input = open_regular(dir, name, identity(stat))?;
            let _ = unlinkat(self.own, PARTIAL, AtFlags::empty());
            let output = openat(
                self.own,
                PARTIAL,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(|e| format!("cannot write to the quarantine: {e}"))?;
            let mut output = File::from(output);
            if let Err(e) = zstd::stream::copy_decode(File::from(input), &mut output) {
                let _ = unlinkat(self.own, PARTIAL, AtFlags::empty());
                return Err(format!("cannot be decompressed: {e}"));
            }
            copy_metadata(&output, stat);
            let to = self
                .target
                .goto(&components, Some(Mode::from_raw_mode(0o700)))?;
            match renameat_with(self.own, PARTIAL, to, name, RenameFlags::NOREPLACE) {
                // The uncompressed copy is there already (an interrupted run): it is complete.
                Ok(()) | Err(Errno::EXIST) => {}
                Err(Errno::INVAL) => rustix::fs::renameat(self.own, PARTIAL, to, name)
                    .map_err(|e| format!("cannot be unpacked: {e}"))?,
                Err(e) => return Err(format!("cannot be unpacked: {e}")),
            }
            let _ = unlinkat(self.own, PARTIAL, AtFlags::empty());
            unlinkat(dir, name, AtFlags::empty())
                .map_err(|e| format!("unpacked, but the compressed copy stays: {e}"))
        })();
        if let Err(why) = unpacked {
            self.skip(path, &format!("{why}; left in the quarantine"));
        }
    }

    fn skip(&mut self, path: &[u8], why: &str) {
        self.skipped.push(format!("{}: {why}", lossy(path)));
    }

    fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) {
        let _ = unlinkat(parent, name, AtFlags::REMOVEDIR);
    }
}

/// The sandbox root, opened once; every operation is relative to this descriptor. The root is
/// configuration, not content: a root that is itself a link is followed (as
/// `runtime::sandbox` does).
struct Root {
    fd: OwnedFd,
    fs: Fs,
}

impl Root {
    fn open(sandbox: &Path) -> io::Result<Root> {
        let fd = openat(
            rustix::fs::CWD,
            sandbox,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!("{}: {e}", sandbox.display()),
            )
        })?;
        let fs = Fs::of(fd.as_fd())?;
        Ok(Root { fd, fs })
    }

    /// `.sentinel-quarantine`, if it exists; an error if it is anything but a directory on
    /// the sandbox's mount.
    fn open_quarantine(&self) -> io::Result<Option<OwnedFd>> {
        let name = CString::new(QUARANTINE_DIR).expect("no NUL");
        if let Err(Errno::NOENT) = statat(&self.fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
            return Ok(None);
        }
        open_dir(self.fd.as_fd(), &name, self.fs)
            .map(|dir| Some(dir.fd))
            .map_err(|why| io::Error::other(format!("{QUARANTINE_DIR}: {why}")))
    }

    /// Creates `.sentinel-quarantine/<id>` (which must not exist) with its record.
    fn create_quarantine(&self, id: &CleanupId) -> io::Result<OwnedFd> {
        let name = CString::new(QUARANTINE_DIR).expect("no NUL");
        match mkdirat(&self.fd, &name, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("{QUARANTINE_DIR}: {e}"),
                ))
            }
        }
        let quarantines = self
            .open_quarantine()?
            .ok_or_else(|| io::Error::other(format!("{QUARANTINE_DIR} vanished")))?;
        match mkdirat(&quarantines, id.c_name(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("quarantine {id} already exists"),
                ))
            }
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("quarantine {id}: {e}"),
                ))
            }
        }
        let own = open_dir(quarantines.as_fd(), &id.c_name(), self.fs)
            .map_err(|why| io::Error::other(format!("quarantine {id}: {why}")))?
            .fd;
        let marker = openat(
            &own,
            MARKER,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let record = serde_json::json!({"cleanup_id": id.as_str(), "created_unix": created});
        File::from(marker).write_all(format!("{record}\n").as_bytes())?;
        Ok(own)
    }
}

/// Moves one planned file from `<sandbox>/<parents>/<name>` to the same place in the
/// quarantine, if it is still the planned file. `Err` is the reason it was not moved.
fn move_planned(
    source: &mut Chain<'_>,
    target: &mut Chain<'_>,
    parents: &[CString],
    name: &CStr,
    file: &PlannedFile,
    fs: Fs,
) -> Result<(), String> {
    if file.dev != fs.dev {
        return Err("planned on another filesystem".to_owned());
    }
    let from = source.goto(parents, None)?;
    let stat = match statat(from, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Err("gone since planning".to_owned()),
        Err(e) => return Err(format!("cannot be examined: {e}")),
    };
    let kind = FileType::from_raw_mode(stat.st_mode);
    if kind != FileType::RegularFile {
        return Err(format!("now {}, not moved", describe(kind)));
    }
    if identity(&stat) != (file.dev, file.ino) {
        return Err("replaced by another file since planning".to_owned());
    }
    if file_size(&stat) != file.size {
        return Err("changed size since planning (still being written?)".to_owned());
    }
    let to = target
        .goto(parents, Some(Mode::from_raw_mode(0o700)))
        .map_err(|why| format!("quarantine: {why}"))?;
    match renameat_with(from, name, to, name, RenameFlags::NOREPLACE) {
        Ok(()) => {}
        // A filesystem without RENAME_NOREPLACE: the quarantine path is new, nothing to replace.
        Err(Errno::INVAL) => rustix::fs::renameat(from, name, to, name)
            .map_err(|e| format!("cannot be moved: {e}"))?,
        Err(Errno::XDEV) | Err(Errno::BUSY) => return Err("a mount point, not moved".to_owned()),
        Err(Errno::NOENT) => return Err("gone since planning".to_owned()),
        Err(e) => return Err(format!("cannot be moved: {e}")),
    }
    // Swapped between the check and the move: put it back.
    let moved = statat(to, name, AtFlags::SYMLINK_NOFOLLOW);
    let same = moved.is_ok_and(|st| identity(&st) == (file.dev, file.ino));
    if !same {
        return match renameat_with(to, name, from, name, RenameFlags::NOREPLACE) {
            Ok(()) => Err("replaced during the move; put back".to_owned()),
            Err(_) => Err("replaced during the move; left in the quarantine".to_owned()),
        };
    }
    Ok(())
}

/// The components of a planned path, if it is one a cleanup may touch: below `logs`, `tmp`
/// or `cache`, with no empty, `.` or `..` component and no NUL.
fn planned_components(path: &[u8]) -> Option<Vec<CString>> {
    let components: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let top = components.first()?;
    if components.len() < 2
        || !CleanupDir::ALL
            .iter()
            .any(|d| d.as_str().as_bytes() == *top)
    {
        return None;
    }
    components
        .into_iter()
        .map(|c| match c {
            b"" | b"." | b".." => None,
            c => CString::new(c).ok(),
        })
        .collect()
}

/// Path order component by component, so that a directory's files are together.
fn compare_paths(a: &[u8], b: &[u8]) -> Ordering {
    a.split(|&b| b == b'/').cmp(b.split(|&b| b == b'/'))
}

fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice | FileType::BlockDevice => "a device",
        FileType::Unknown => "of an unknown type",
    }
}

/// `(st_dev, st_ino)`, whose integer types differ between targets.
#[allow(clippy::unnecessary_cast)]
fn identity(stat: &Stat) -> (u64, u64) {
    (stat.st_dev as u64, stat.st_ino as u64)
}

fn file_size(stat: &Stat) -> u64 {
    u64::try_from(stat.st_size).unwrap_or(0)
}

#[allow(clippy::unnecessary_cast)]
fn modified_ns(stat: &Stat) -> i64 {
    (stat.st_mtime as i64)
        .saturating_mul(1_000_000_000)
        .saturating_add(stat.st_mtime_nsec as i64)
}

/// Newest first; among equals, path order (so the choice is the same every time).
fn newest_first(a: i64, b: i64, a_path: &[u8], b_path: &[u8]) -> Ordering {
    b.cmp(&a).then_with(|| compare_paths(a_path, b_path))
}

fn modified(stat: &Stat) -> SystemTime {
    let secs = u64::try_from(stat.st_mtime).unwrap_or(0);
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// The names in a directory, without `.` and `..`.
fn entry_names(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// A bounded list of skipped entries, with the full count.
#[derive(Default)]
struct Skips {
    list: Vec<String>,
    count: u64,
}

impl Skips {
    fn push(&mut self, entry: String) {
        self.count += 1;
        if self.list.len() < MAX_LISTED {
            self.list.push(entry);
        }
    }
}

/// The mount everything must stay on: the root's device and, where `statx` tells it, mount id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fs {
    dev: u64,
    mount: Option<u64>,
}

impl Fs {
    fn of(fd: BorrowedFd<'_>) -> io::Result<Fs> {
        let stat = fstat(fd)?;
        Ok(Fs {
            dev: identity(&stat).0,
            mount: mount_id(fd),
        })
    }
}

fn mount_id(fd: BorrowedFd<'_>) -> Option<u64> {
    let statx = statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID).ok()?;
    (statx.stx_mask & StatxFlags::MNT_ID.bits() != 0).then_some(statx.stx_mnt_id)
}

/// A directory opened without following a link, checked to be on `fs`.
struct OpenDir {
    fd: OwnedFd,
    dev: u64,
    ino: u64,
}

/// Opens `name` in `parent` as a directory: never through a link (`O_NOFOLLOW`), never
/// anything but a directory (`O_DIRECTORY`), never on another mount. `Err` says why not.
fn open_dir(parent: BorrowedFd<'_>, name: &CStr, fs: Fs) -> Result<OpenDir, String> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::LOOP) | Err(Errno::NOTDIR) => {
            return Err(match statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => {
                    "a symbolic link, not followed".to_owned()
                }
                _ => "not a directory".to_owned(),
            })
        }
        Err(Errno::NOENT) => return Err("does not exist".to_owned()),
        Err(e) => return Err(format!("cannot be opened: {e}")),
    };
    let stat = fstat(&fd).map_err(|e| format!("cannot be examined: {e}"))?;
    if identity(&stat).0 != fs.dev {
        return Err("on another filesystem, not entered".to_owned());
    }
    if let (Some(expected), Some(found)) = (fs.mount, mount_id(fd.as_fd())) {
        if expected != found {
            return Err("a mount point, not entered".to_owned());
        }
    }
    Ok(OpenDir {
        fd,
        dev: identity(&stat).0,
        ino: identity(&stat).1,
    })
}

/// One directory of a [`Chain`]: its name in its parent, its identity, and its descriptor
/// while held.
struct Level {
    name: CString,
    dev: u64,
    ino: u64,
    fd: Option<OwnedFd>,
}

/// A path of directories below a base directory, each opened from its parent with
/// [`open_dir`]. At most [`MAX_OPEN_DIRS`] descriptors are held (the deepest ones); a
/// directory whose descriptor was given up is reopened from its nearest held ancestor and must
/// be the same directory as before.
struct Chain<'b> {
    base: BorrowedFd<'b>,
    fs: Fs,
    levels: Vec<Level>,
    open: usize,
}

impl<'b> Chain<'b> {
    fn new(base: BorrowedFd<'b>, fs: Fs) -> Chain<'b> {
        Chain {
            base,
            fs,
            levels: Vec::new(),
            open: 0,
        }
    }

    fn depth(&self) -> usize {
        self.levels.len()
    }

    /// The path of the chain's directories, and `name` below them, for messages.
    fn display(&self, name: Option<&CStr>) -> String {
        let mut path = Vec::new();
        for level in self.levels.iter().map(|l| l.name.as_c_str()).chain(name) {
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(level.to_bytes());
        }
        lossy(&path)
    }

    /// The deepest directory, reopened if its descriptor was given up.
    fn top(&mut self) -> Result<BorrowedFd<'_>, String> {
        let Some(last) = self.levels.len().checked_sub(1) else {
            return Ok(self.base);
        };
        if self.levels[last].fd.is_none() {
            let held = self.levels.iter().rposition(|l| l.fd.is_some());
            let from = held.map_or(0, |i| i + 1);
            for k in from..=last {
                let parent = match k {
                    0 => self.base,
                    _ => self.levels[k - 1].fd.as_ref().expect("held").as_fd(),
                };
                let dir = open_dir(parent, &self.levels[k].name, self.fs)
                    .map_err(|why| format!("{}: {why}", self.display_to(k)))?;
                if (dir.dev, dir.ino) != (self.levels[k].dev, self.levels[k].ino) {
                    return Err(format!("{}: replaced during the walk", self.display_to(k)));
                }
                self.levels[k].fd = Some(dir.fd);
                self.open += 1;
                self.trim();
            }
        }
        Ok(self.levels[last].fd.as_ref().expect("just opened").as_fd())
    }

    fn display_to(&self, k: usize) -> String {
        let names: Vec<&[u8]> = self.levels[..=k]
            .iter()
            .map(|l| l.name.to_bytes())
            .collect();
        lossy(&names.join(&b'/'))
    }

    /// Enters `name` below the deepest directory; with `create`, makes it first if missing.
    fn push(&mut self, name: &CStr, create: Option<Mode>) -> Result<(), String> {
        let fs = self.fs;
        let parent = self.top()?;
        if let Some(mode) = create {
            match mkdirat(parent, name, mode) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(format!(
                        "{}: cannot be created: {e}",
                        self.display(Some(name))
                    ))
                }
            }
        }
        let parent = self.top()?;
        let dir = open_dir(parent, name, fs)
            .map_err(|why| format!("{}: {why}", self.display(Some(name))))?;
        self.levels.push(Level {
            name: name.to_owned(),
            dev: dir.dev,
            ino: dir.ino,
            fd: Some(dir.fd),
        });
        self.open += 1;
        self.trim();
        Ok(())
    }

    /// Leaves the deepest directory; returns its name.
    fn pop(&mut self) -> Option<CString> {
        let level = self.levels.pop()?;
        if level.fd.is_some() {
            self.open -= 1;
        }
        Some(level.name)
    }

    /// Moves to `<base>/<components>` (reusing the directories already entered) and returns
    /// the directory; with `create`, missing directories are made.
    fn goto(
        &mut self,
        components: &[CString],
        create: Option<Mode>,
    ) -> Result<BorrowedFd<'_>, String> {
        let common = self
            .levels
            .iter()
            .zip(components)
            .take_while(|(level, name)| level.name == **name)
            .count();
        while self.depth() > common {
            self.pop();
        }
        for name in &components[common..] {
            self.push(name, create)?;
        }
        self.top()
    }

    /// Gives up the shallowest descriptors beyond the budget, never the deepest held one.
    fn trim(&mut self) {
        while self.open > MAX_OPEN_DIRS {
            let Some(shallowest) = self.levels.iter().position(|l| l.fd.is_some()) else {
                return;
            };
            let deepest = self.levels.iter().rposition(|l| l.fd.is_some());
            if Some(shallowest) == deepest {
                return;
            }
            self.levels[shallowest].fd = None;
            self.open -= 1;
        }
    }
}

/// What a walk reports.
trait Visitor {
    /// An entry that is not a directory (of any kind, links included) in `dir`, with its own
    /// (not followed) metadata; `path` is relative to the walk's base.
    fn entry(&mut self, dir: BorrowedFd<'_>, path: &[u8], name: &CStr, stat: &Stat);
    /// Something not walked into or not examined, and why.
    fn skip(&mut self, path: &[u8], why: &str);
    /// Every entry below directory `name` in `parent` has been visited.
    fn leave(&mut self, _parent: BorrowedFd<'_>, _name: &CStr) {}
}

/// Walks the tree `<base>/<top>` depth first, without recursion, without following links,
/// without leaving `fs`, at most [`MAX_DEPTH`] levels deep.
fn walk(base: BorrowedFd<'_>, fs: Fs, top: &CStr, visitor: &mut impl Visitor) {
    let mut chain = Chain::new(base, fs);
    let mut path: Vec<u8> = top.to_bytes().to_vec();
    // Per entered directory: the length of `path` up to it, its subdirectories still to enter.
    let mut frames: Vec<(usize, Vec<CString>)> = Vec::new();
    let mut entered = match chain.push(top, None) {
        Ok(()) => true,
        Err(why) if why.ends_with("does not exist") => return,
        Err(why) => {
            visitor.skip(&path, strip_prefix(&why, &path));
            return;
        }
    };
    loop {
        if entered {
            let subdirectories = list(&mut chain, &path, visitor);
            frames.push((path.len(), subdirectories));
            entered = false;
        }
        let Some((length, pending)) = frames.last_mut() else {
            return;
        };
        let length = *length;
        path.truncate(length);
        if let Some(name) = pending.pop() {
            path.push(b'/');
            path.extend_from_slice(name.to_bytes());
            if chain.depth() >= MAX_DEPTH {
                visitor.skip(
                    &path,
                    &format!("deeper than {MAX_DEPTH} levels, not entered"),
                );
                continue;
            }
            match chain.push(&name, None) {
                Ok(()) => entered = true,
                Err(why) => visitor.skip(&path, strip_prefix(&why, &path)),
            }
        } else {
            frames.pop();
            let name = chain.pop().expect("one level per frame");
            if let Ok(parent) = chain.top() {
                visitor.leave(parent, &name);
            }
            if let Some(separator) = path.iter().rposition(|&b| b == b'/') {
                path.truncate(separator);
            }
        }
    }
}

/// `why` without the path the chain put in front of it, when it is the same path.
fn strip_prefix<'a>(why: &'a str, path: &[u8]) -> &'a str {
    let prefix = format!("{}: ", lossy(path));
    why.strip_prefix(prefix.as_str()).unwrap_or(why)
}

/// Reports the entries of the chain's deepest directory and returns its subdirectories on
/// `fs`, to be entered.
fn list(chain: &mut Chain<'_>, path: &[u8], visitor: &mut impl Visitor) -> Vec<CString> {
    let fs = chain.fs;
    let dir = match chain.top() {
        Ok(dir) => dir,
        Err(why) => {
            visitor.skip(path, &why);
            return Vec::new();
        }
    };
    let mut subdirectories = Vec::new();
    // The whole listing first, then the entries: a visitor that moves or unlinks entries does
    // not disturb the reading of the directory.
    let names = match entry_names(dir) {
        Ok(names) => names,
        Err(e) => {
            visitor.skip(path, &format!("cannot be read: {e}"));
            return subdirectories;
        }
    };
    let mut child = path.to_vec();
    for name in &names {
        child.truncate(path.len());
        child.push(b'/');
        child.extend_from_slice(name.to_bytes());
        let stat = match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => continue,
            Err(e) => {
                visitor.skip(&child, &format!("cannot be examined: {e}"));
                continue;
            }
        };
        if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            if identity(&stat).0 == fs.dev {
                subdirectories.push(name.to_owned());
            } else {
                visitor.skip(&child, "on another filesystem, not entered");
            }
        } else {
            visitor.entry(dir, &child, name, &stat);
        }
    }
    // Popped from the end: entered in name order.
    subdirectories.sort_by(|a, b| b.cmp(a));
    subdirectories
}

/// Collects the regular files on the sandbox's filesystem.
struct Planner {
    fs: Fs,
    plan: CleanupPlan,
}

impl Visitor for Planner {
    fn entry(&mut self, _dir: BorrowedFd<'_>, path: &[u8], _name: &CStr, stat: &Stat) {
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            let why = match kind {
                FileType::Symlink => "a symbolic link, not followed".to_owned(),
                kind => format!("{}, not a regular file", describe(kind)),
            };
            return self.skip(path, &why);
        }
        if identity(stat).0 != self.fs.dev {
            return self.skip(path, "on another filesystem");
        }
        let (display, raw_path) = match std::str::from_utf8(path) {
            Ok(path) => (path.to_owned(), None),
            Err(_) => (lossy(path), Some(path.to_vec())),
        };
        let size = file_size(stat);
        self.plan.bytes = self.plan.bytes.saturating_add(size);
        self.plan.files.push(PlannedFile {
            path: display,
            raw_path,
            size,
            dev: identity(stat).0,
            ino: identity(stat).1,
            modified_ns: modified_ns(stat),
        });
    }

    fn skip(&mut self, path: &[u8], why: &str) {
        self.plan.skipped_count += 1;
        if self.plan.skipped.len() < MAX_LISTED {
            self.plan.skipped.push(format!("{}: {why}", lossy(path)));
        }
    }
}

/// Moves quarantined files back, and removes the quarantine's emptied directories.
struct Restorer<'r> {
    target: Chain<'r>,
    report: RestoreReport,
    skipped: Skips,
}

impl Visitor for Restorer<'_> {
    fn entry(&mut self, dir: BorrowedFd<'_>, path: &[u8], name: &CStr, stat: &Stat) {
        let kind = FileType::from_raw_mode(stat.st_mode);
        if kind != FileType::RegularFile {
            return self.skip(path, &format!("{}, left in the quarantine", describe(kind)));
        }
        // The walk's paths are made of real entry names: no empty, `.`, `..` or NUL component.
        let mut components: Vec<CString> = path
            .split(|&b| b == b'/')
            .map(|c| CString::new(c).expect("an entry name has no NUL"))
            .collect();
        components.pop();
        let target = match self
            .target
            .goto(&components, Some(Mode::from_raw_mode(0o755)))
        {
            Ok(target) => target,
            Err(why) => return self.skip(path, &format!("{why}; left in the quarantine")),
        };
        match move_without_replacing(dir, name, target) {
            Ok(()) => {
                self.report.restored_files += 1;
                self.report.restored_bytes =
                    self.report.restored_bytes.saturating_add(file_size(stat));
            }
            Err(Errno::EXIST) => self.skip(path, "already exists; left in the quarantine"),
            Err(e) => self.skip(
                path,
                &format!("cannot be moved back: {e}; left in the quarantine"),
            ),
        }
    }

    fn skip(&mut self, path: &[u8], why: &str) {
        self.skipped.push(format!("{}: {why}", lossy(path)));
    }

    fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) {
        // Fails, harmlessly, when something was left in it.
        let _ = unlinkat(parent, name, AtFlags::REMOVEDIR);
    }
}

/// `rename` that never replaces an existing `name` in `to`: `RENAME_NOREPLACE`, or, where the
/// filesystem lacks it, a hard link (which fails on an existing name) and an unlink.
fn move_without_replacing(
    from: BorrowedFd<'_>,
    name: &CStr,
    to: BorrowedFd<'_>,
) -> Result<(), Errno> {
    match renameat_with(from, name, to, name, RenameFlags::NOREPLACE) {
        Err(Errno::INVAL) => {
            rustix::fs::linkat(from, name, to, name, AtFlags::empty())?;
            unlinkat(from, name, AtFlags::empty())
        }
        result => result,
    }
}

/// Deletes a quarantine: unlinks every entry (a link is unlinked, not followed), removes every
/// directory once empty.
struct Purger {
    failed: bool,
}

impl Visitor for Purger {
    fn entry(&mut self, dir: BorrowedFd<'_>, _path: &[u8], name: &CStr, _stat: &Stat) {
        if unlinkat(dir, name, AtFlags::empty()).is_err() {
            self.failed = true;
        }
    }

    fn skip(&mut self, _path: &[u8], _why: &str) {
        self.failed = true;
    }

    fn leave(&mut self, parent: BorrowedFd<'_>, name: &CStr) {
        if unlinkat(parent, name, AtFlags::REMOVEDIR).is_err() {
            self.failed = true;
        }
    }
}

/// `Option<Vec<u8>>` as an optional hex string.
mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&hex::encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| hex::decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_ids_are_plain_names() {
        for good in ["inc-42", "a", "ABC-def-0123", &"x".repeat(128)] {
            assert!(CleanupId::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".",
            "..",
            "a b",
            "a\0b",
            "é",
            "a.b",
            &"x".repeat(129),
        ] {
            assert!(CleanupId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn planned_paths_stay_in_the_cleanup_directories() {
        let ok = |p: &[u8]| planned_components(p).is_some();
        assert!(ok(b"logs/a.log"));
        assert!(ok(b"tmp/x/y/z"));
        assert!(ok(b"cache/bad\xffname"));
        for bad in [
            &b"data/secret.txt"[..],
            b"logs",
            b"logs/",
            b"logs//a",
            b"logs/../data/x",
            b"logs/./a",
            b"/logs/a",
            b"./logs/a",
            b".sentinel-quarantine/x/logs/a",
            b"logs/a\0b",
            b"",
        ] {
            assert!(!ok(bad), "{:?} was accepted", lossy(bad));
        }
    }

    #[test]
    fn paths_sort_directory_by_directory() {
        let mut paths = vec![&b"logs/a0"[..], b"logs/a/z", b"logs/a.txt", b"logs/a/b"];
        paths.sort_by(|a, b| compare_paths(a, b));
        let expected: Vec<&[u8]> = vec![b"logs/a/b", b"logs/a/z", b"logs/a.txt", b"logs/a0"];
        assert_eq!(paths, expected);
    }

    #[test]
    fn non_utf8_paths_survive_json() {
        let file = PlannedFile {
            path: lossy(b"logs/bad\xffname.log"),
            raw_path: Some(b"logs/bad\xffname.log".to_vec()),
            size: 3,
            dev: 1,
            ino: 2,
            modified_ns: 5,
        };
        let json = serde_json::to_string(&file).unwrap();
        let back: PlannedFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back.path_bytes(), b"logs/bad\xffname.log");
        let plain = PlannedFile {
            path: "logs/a.log".into(),
            raw_path: None,
            ..file
        };
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("raw_path"), "{json}");
        assert_eq!(serde_json::from_str::<PlannedFile>(&json).unwrap(), plain);
    }

    #[test]
    fn skipped_lists_are_bounded_but_counted() {
        let mut skips = Skips::default();
        for i in 0..(MAX_LISTED + 5) {
            skips.push(i.to_string());
        }
        assert_eq!(skips.list.len(), MAX_LISTED);
        assert_eq!(skips.count, (MAX_LISTED + 5) as u64);
    }

    #[test]
    fn a_chain_deeper_than_its_budget_reopens_and_checks_its_directories() {
        let temp = tempfile::tempdir().unwrap();
        let mut path = temp.path().to_path_buf();
        for _ in 0..(MAX_OPEN_DIRS * 2) {
            path.push("d");
        }
        std::fs::create_dir_all(&path).unwrap();
        let root = Root::open(temp.path()).unwrap();
        let mut chain = Chain::new(root.fd.as_fd(), root.fs);
        let d = CString::new("d").unwrap();
        let names = vec![d.clone(); MAX_OPEN_DIRS * 2];
        chain.goto(&names, None).unwrap();
        assert_eq!(chain.open, MAX_OPEN_DIRS);
        // Back up to a level whose descriptor was given up: reopened, same directory.
        chain.goto(&names[..3], None).unwrap();
        assert!(chain.levels[2].fd.is_some());
        // Replace a level that is no longer held: the chain notices.
        chain.goto(&names, None).unwrap();
        let shallow = temp.path().join("d/d");
        std::fs::rename(&shallow, temp.path().join("moved")).unwrap();
        std::fs::create_dir(&shallow).unwrap();
        while chain.depth() > 3 {
            chain.pop();
        }
        let err = chain.top().unwrap_err();
        assert!(err.contains("d/d: replaced during the walk"), "{err}");
    }
}
