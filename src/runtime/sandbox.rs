//! The sandbox's size, measured without following symbolic links.
//!
//! In: the sandbox root (`sandbox_dir`). Out: the total length in bytes of the regular files
//! under it ([`sandbox_size`]), and its top-level subdirectories by size
//! ([`largest_directories`]) for the analyzer.
//!
//! The rules, the same for both:
//!
//! - symbolic links below the root are never followed and never counted: a link to a huge
//!   file elsewhere, or a link loop, adds nothing and cannot hang the walk. The root itself
//!   is configuration, not content: if it is a link to a directory, that directory is walked;
//! - the walk stays on the root's filesystem (another filesystem mounted inside is skipped);
//! - a file with several hard links inside the measured tree counts once;
//! - the quarantine, `<root>/.sentinel-quarantine` (`runtime::cleanup::QUARANTINE_DIR`,
//!   where cleanup keeps what it removed, compressed, within `[actions]
//!   quarantine_max_bytes`), is measured like any other directory: its bytes are on the
//!   sandbox's disk, so a cleanup "verifies" only when what it freed is really free;
//! - a subdirectory that cannot be read (or a file that vanishes during the walk) is skipped;
//!   a root that is missing, is not a directory, or cannot be read is an error, which the
//!   caller reports as "unavailable".
//!
//! It only reads metadata: it must never open, write or delete anything (removing files is
//! `runtime::cleanup`'s job). It is synchronous and may take a while on a big tree: callers
//! run it in `spawn_blocking`.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use walkdir::{DirEntry, WalkDir};

/// Total length in bytes of the regular files under `root`.
pub fn sandbox_size(root: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut linked = HashSet::new();
    walk(root, |_, metadata| {
        let Some(metadata) = metadata else { return };
        if counts_once(&mut linked, metadata) {
            total = total.saturating_add(metadata.len());
        }
    })?;
    Ok(total)
}

/// The top-level subdirectories of `root` (not links to directories), largest first (ties by
/// path), at most `n` of them, each with the total length of the regular files under it.
/// Files directly in `root` belong to no subdirectory and are not listed.
pub fn largest_directories(root: &Path, n: usize) -> io::Result<Vec<(PathBuf, u64)>> {
    // Per top-level directory name: its size, and its multiply-linked files already counted.
    let mut directories: BTreeMap<PathBuf, (u64, HashSet<(u64, u64)>)> = BTreeMap::new();
    walk(root, |entry, metadata| {
        if entry.depth() == 1 && entry.file_type().is_dir() {
            directories.entry(entry.path().to_path_buf()).or_default();
        }
        let Some(metadata) = metadata else { return };
        if entry.depth() < 2 {
            return;
        }
        // Below depth 1 means inside a top-level directory, which was yielded (and added)
        // before its contents.
        let top = entry.path().ancestors().nth(entry.depth() - 1);
        if let Some((size, linked)) = top.and_then(|top| directories.get_mut(top)) {
            if counts_once(linked, metadata) {
                *size = size.saturating_add(metadata.len());
            }
        }
    })?;
    let mut sizes: Vec<(PathBuf, u64)> = directories
        .into_iter()
        .map(|(path, (size, _))| (path, size))
        .collect();
    sizes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    sizes.truncate(n);
    Ok(sizes)
}

/// `true` the first time a file is seen; a file with one link is always new.
fn counts_once(linked: &mut HashSet<(u64, u64)>, metadata: &fs::Metadata) -> bool {
    metadata.nlink() <= 1 || linked.insert((metadata.dev(), metadata.ino()))
}

/// Whether `sandbox` is on the filesystem mounted at (or holding) `mount`: the same device.
/// `false` when either cannot be examined.
pub fn on_mount(sandbox: &Path, mount: &Path) -> bool {
    match (fs::metadata(sandbox), fs::metadata(mount)) {
        (Ok(sandbox), Ok(mount)) => sandbox.dev() == mount.dev(),
        _ => false,
    }
}

/// Walks `root` under the rules above, calling `visit` with every entry and, for regular
/// files, their own (not followed) metadata.
fn walk(root: &Path, mut visit: impl FnMut(&DirEntry, Option<&fs::Metadata>)) -> io::Result<()> {
    let with_path = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", root.display()));
    let metadata = fs::metadata(root).map_err(with_path)?;
    if !metadata.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", root.display()),
        ));
    }
    let walker = WalkDir::new(root)
        .follow_links(false)
        .follow_root_links(true)
        .same_file_system(true)
        .into_iter();
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            // The root itself could not be read.
            Err(e) if e.depth() == 0 => return Err(e.into()),
            // Unreadable, or gone since it was listed.
            Err(_) => continue,
        };
        if !entry.file_type().is_file() {
            visit(&entry, None);
            continue;
        }
        // Not following links, this is the entry's own metadata (lstat).
        if let Ok(metadata) = entry.metadata() {
            visit(&entry, Some(&metadata));
        }
    }
    Ok(())
}
