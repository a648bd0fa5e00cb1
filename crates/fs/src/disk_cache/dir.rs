//! The disk tier's directories. Each mount owns one subdirectory of
//! `disk_cache_dir`, `cpkfs-mount-<32 hex>`, holding an exclusive `flock`
//! on its `lock` file for as long as the process lives. The kernel drops the
//! lock when the process dies, however it dies, so the next mount can tell a
//! dead mount's directory (lockable) from a live one's (locked) and remove
//! it: its blocks are sealed under a key that died with the process.
//!
//! Only what cpkfs made is ever deleted: directories with that name pattern,
//! and inside them only files named like ours. A directory holding anything
//! else is left in place (and logged).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::seal::NAME_LEN;

const PREFIX: &str = "cpkfs-mount-";
/// A directory being set up carries this suffix until its lock is held, so a
/// sweeper never mistakes it for a dead mount's.
const INIT_SUFFIX: &str = ".init";
const LOCK: &str = "lock";
pub(super) const TMP_SUFFIX: &str = ".tmp";
/// A `.init` directory older than this was left by a mount that died while
/// setting up.
const INIT_GRACE: Duration = Duration::from_secs(60);

/// This mount's directory; removed (our files only) when dropped.
pub(super) struct MountDir {
    path: PathBuf,
    /// Holds the flock. Closing it (drop, or the process dying) releases it.
    _lock: File,
}

impl MountDir {
    /// Create `root` if needed (0700), remove what dead mounts left in it,
    /// and make this mount's directory.
    pub fn create(root: &Path) -> io::Result<MountDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)?;
        sweep_dead(root);
        let tag = random_hex();
        let init = root.join(format!("{PREFIX}{tag}{INIT_SUFFIX}"));
        let path = root.join(format!("{PREFIX}{tag}"));
        fs::DirBuilder::new().mode(0o700).create(&init)?;
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(init.join(LOCK))?;
        flock(&lock, libc::LOCK_EX | libc::LOCK_NB)?;
        // The lock follows the inode through the rename.
        fs::rename(&init, &path)?;
        Ok(MountDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Delete every block file (not the lock): the tier is being disabled
    /// and its space should go back.
    pub fn remove_blocks(&self) {
        remove_ours(&self.path, false);
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        remove_ours(&self.path, true);
    }
}

fn random_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// A file the disk tier writes: a block, a block being written, or the lock.
fn is_our_file(name: &str) -> bool {
    name == LOCK || is_hex(name.strip_suffix(TMP_SUFFIX).unwrap_or(name), NAME_LEN)
}

/// `Some(true)`: a mount directory; `Some(false)`: one being set up.
fn mount_dir_kind(name: &str) -> Option<bool> {
    let rest = name.strip_prefix(PREFIX)?;
    match rest.strip_suffix(INIT_SUFFIX) {
        Some(tag) if is_hex(tag, 32) => Some(false),
        None if is_hex(rest, 32) => Some(true),
        _ => None,
    }
}

/// Remove our files in `dir` (and the lock and the directory itself when
/// `whole`). Anything else makes the directory stay.
fn remove_ours(dir: &Path, whole: bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_our_file(name) && (whole || name != LOCK) {
            let _ = fs::remove_file(e.path());
        }
    }
    if whole {
        if let Err(e) = fs::remove_dir(dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "disk cache: left a cache directory that holds files cpkfs did not write");
            }
        }
    }
}

/// Remove the directories of mounts that are no longer running. Returns how
/// many were removed.
pub(super) fn sweep_dead(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(kind) = name.to_str().and_then(mount_dir_kind) else {
            continue;
        };
        // A real directory, not a symlink planted to make us delete elsewhere.
        let Ok(meta) = fs::symlink_metadata(e.path()) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        let dead = if kind {
            owner_is_dead(&e.path())
        } else {
            meta.modified()
                .ok()
                .and_then(|m| SystemTime::now().duration_since(m).ok())
                .is_some_and(|age| age > INIT_GRACE)
        };
        if dead {
            remove_ours(&e.path(), true);
            if !e.path().exists() {
                removed += 1;
            }
        }
    }
    if removed > 0 {
        tracing::info!(dir = %root.display(), removed, "disk cache: removed the cache directories of mounts no longer running (unreadable: their keys died with them)");
    }
    removed
}

/// Whether nobody holds the directory's lock. A directory without a lock
/// file lost it to something other than cpkfs; it is dead too.
fn owner_is_dead(dir: &Path) -> bool {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(LOCK))
    {
        // Our test lock is released when `f` is closed at the end of this block.
        Ok(f) => flock(&f, libc::LOCK_EX | libc::LOCK_NB).is_ok(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_we_recognise() {
        let h = "0123456789abcdef0123456789abcdef";
        assert!(is_our_file(h) && is_our_file(&format!("{h}.tmp")) && is_our_file("lock"));
        assert!(!is_our_file("notes.txt") && !is_our_file(&h.to_uppercase()));
        assert_eq!(mount_dir_kind(&format!("cpkfs-mount-{h}")), Some(true));
        assert_eq!(
            mount_dir_kind(&format!("cpkfs-mount-{h}.init")),
            Some(false)
        );
        assert_eq!(mount_dir_kind("cpkfs-mount-x"), None);
        assert_eq!(mount_dir_kind(h), None);
    }

    #[test]
    fn a_live_directory_is_kept_and_removed_when_dropped() {
        let root = tempfile::tempdir().unwrap();
        let a = MountDir::create(root.path()).unwrap();
        fs::write(a.path().join(format!("{:032x}", 7)), b"x").unwrap();
        // A second mount on the same root sees `a` alive.
        let b = MountDir::create(root.path()).unwrap();
        assert!(a.path().is_dir() && b.path().is_dir());
        assert_eq!(sweep_dead(root.path()), 0);
        let pa = a.path().to_path_buf();
        drop(a);
        assert!(!pa.exists(), "a clean unmount removes its directory");
        assert!(b.path().is_dir());
    }

    #[test]
    fn only_our_files_are_deleted() {
        let root = tempfile::tempdir().unwrap();
        let dead = root.path().join(format!("cpkfs-mount-{:032x}", 1));
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        fs::write(dead.join(format!("{:032x}", 2)), b"sealed").unwrap();
        fs::write(dead.join("precious.txt"), b"not ours").unwrap();
        fs::write(root.path().join("other-tool.db"), b"not ours").unwrap();
        assert_eq!(sweep_dead(root.path()), 0, "kept: it holds a foreign file");
        assert!(dead.join("precious.txt").exists());
        assert!(!dead.join(format!("{:032x}", 2)).exists());
        assert!(root.path().join("other-tool.db").exists());
        fs::remove_file(dead.join("precious.txt")).unwrap();
        assert_eq!(sweep_dead(root.path()), 1);
        assert!(!dead.exists());
    }
}
