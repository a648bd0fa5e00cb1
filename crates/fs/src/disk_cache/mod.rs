//! The disk tier of the block cache (`disk_cache_dir`, `disk_cache_size`):
//! blocks evicted from the memory LRU are sealed (`seal.rs`: AES-256-GCM under
//! a key that exists only in this process) and written to this mount's own
//! directory (`dir.rs`), LRU by size. A later miss in memory looks here before
//! going to the network. Nothing on disk is plaintext; a block that fails
//! authentication is deleted and fetched again.
//!
//! Faults never fail a read: an I/O error (disk full, the directory removed,
//! …) disables the tier with one log line and reads go to the network.
//! Disk I/O and sealing run on tokio's blocking pool, never on a worker
//! thread, and never in a FUSE callback.
//!
//! Lock order: `state` is a leaf lock, never held across I/O or an await.

mod dir;
mod seal;

use bytes::Bytes;
use lru::LruCache;
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cache::BlockKey;
use crate::keyring::KeyRing;
use dir::MountDir;
use seal::{Sealer, Tampered};

/// Blocks waiting to be written may hold this many bytes (they are the
/// blocks just evicted from memory, so this bounds the memory the tier adds).
/// A reader about to evict waits for room ([`DiskCache::wait_for_room`]);
/// an eviction that finds no room anyway is not cached on disk (`skipped`).
const MAX_PENDING_BYTES: usize = 128 << 20;

/// What the tier has done since the mount started; for `cpkfs stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskCacheStats {
    /// false once a fault (disk full, directory gone, I/O error) turned it off.
    pub enabled: bool,
    /// Lookups answered from disk (or from a block still being written).
    pub hits: u64,
    /// Lookups that found nothing usable (including blocks that failed
    /// authentication).
    pub misses: u64,
    /// Bytes of sealed block files written (plaintext + 28 per block).
    pub bytes_written: u64,
    /// Bytes of sealed block files read.
    pub bytes_read: u64,
    /// Blocks deleted to stay within `disk_cache_size`.
    pub evictions: u64,
    /// I/O errors (the first one disables the tier).
    pub errors: u64,
    /// Blocks that failed authentication (tampered with, truncated or
    /// misplaced): deleted and fetched again.
    pub auth_failures: u64,
    /// Evicted blocks not written because the write queue was full.
    pub skipped: u64,
    /// Sealed bytes and blocks on disk now, and the bound.
    pub bytes: u64,
    pub blocks: u64,
    pub capacity: u64,
}

/// Why the disk tier cannot start. Never reaches an errno: a mount without
/// its disk tier still works (`src/cli/mount.rs` refuses to start instead).
#[derive(Debug, thiserror::Error)]
pub enum DiskCacheError {
    #[error("disk cache directory {dir}: {source}")]
    Dir { dir: PathBuf, source: io::Error },
    #[error("disk_cache_size {0} is smaller than one block")]
    TooSmall(u64),
}

/// Why a block could not be read back.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tampered(#[from] Tampered),
}

#[derive(Clone)]
struct Stored {
    file: Arc<str>,
    len: u64,
}

struct State {
    index: LruCache<BlockKey, Stored>,
    bytes: u64,
    /// Evicted from memory, being sealed and written: still served from here.
    pending: HashMap<BlockKey, Bytes>,
    pending_bytes: usize,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_written: AtomicU64,
    bytes_read: AtomicU64,
    evictions: AtomicU64,
    errors: AtomicU64,
    auth_failures: AtomicU64,
    skipped: AtomicU64,
}

pub struct DiskCache {
    dir: MountDir,
    capacity: u64,
    sealer: Sealer,
    /// The mount's key ring: a block is served only if the ring holds the
    /// key its blob is under (the same check an open makes).
    ring: KeyRing,
    enabled: AtomicBool,
    state: Mutex<State>,
    counters: Counters,
    /// Signalled whenever a write finishes ([`DiskCache::settle`]).
    written: tokio::sync::Notify,
}

impl std::fmt::Debug for DiskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskCache")
            .field("dir", &self.dir.path())
            .field("capacity", &self.capacity)
            .field("sealer", &self.sealer)
            .finish_non_exhaustive()
    }
}

impl DiskCache {
    /// Set up the tier under `root` (created 0700 if missing): removes what
    /// dead mounts left there, draws fresh keys, makes this mount's directory.
    /// Blocking (file system calls): call it at mount, not from a worker.
    pub fn open(
        root: &Path,
        capacity: u64,
        ring: KeyRing,
    ) -> Result<Arc<DiskCache>, DiskCacheError> {
        if capacity < 64 * 1024 {
            return Err(DiskCacheError::TooSmall(capacity));
        }
        let dir = MountDir::create(root).map_err(|source| DiskCacheError::Dir {
            dir: root.to_path_buf(),
            source,
        })?;
        tracing::info!(dir = %dir.path().display(), capacity, "disk cache: sealed blocks go to this mount's directory");
        Ok(Arc::new(DiskCache {
            dir,
            capacity,
            sealer: Sealer::random(),
            ring,
            enabled: AtomicBool::new(true),
            state: Mutex::new(State {
                index: LruCache::unbounded(),
                bytes: 0,
                pending: HashMap::new(),
                pending_bytes: 0,
            }),
            counters: Counters::default(),
            written: tokio::sync::Notify::new(),
        }))
    }

    /// This mount's directory (under `disk_cache_dir`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> DiskCacheStats {
        let c = &self.counters;
        let (bytes, blocks) = {
            let s = self.state.lock().unwrap();
            (s.bytes, s.index.len() as u64)
        };
        DiskCacheStats {
            enabled: self.is_enabled(),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            auth_failures: c.auth_failures.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            bytes,
            blocks,
            capacity: self.capacity,
        }
    }

    /// The key check: blocks of a CPK blob are served only while the ring
    /// holds its key.
    fn key_held(&self, key: &BlockKey) -> bool {
        key.cpk_sha256
            .as_deref()
            .is_none_or(|h| self.ring.find(h).is_some())
    }

    /// Whether a lookup of `key` would find it (on disk or being written).
    pub fn holds(&self, key: &BlockKey) -> bool {
        if !self.is_enabled() || !self.key_held(key) {
            return false;
        }
        let s = self.state.lock().unwrap();
        s.pending.contains_key(key) || s.index.contains(key)
    }

    /// A block evicted from memory: seal and write it in the background
    /// (the blocking pool). Returns at once; never fails.
    pub fn spill(self: &Arc<Self>, key: BlockKey, data: Bytes) {
        if !self.is_enabled() || data.len() as u64 + seal::OVERHEAD as u64 > self.capacity {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.counters.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        {
            let mut s = self.state.lock().unwrap();
            if s.index.get(&key).is_some() || s.pending.contains_key(&key) {
                // Already on disk (promoted in its LRU) or on its way.
                return;
            }
            if !s.pending.is_empty() && s.pending_bytes + data.len() > MAX_PENDING_BYTES {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            s.pending_bytes += data.len();
            s.pending.insert(key.clone(), data.clone());
        }
        let this = self.clone();
        rt.spawn_blocking(move || this.write_block(key, data));
    }

    /// Runs on the blocking pool.
    fn write_block(&self, key: BlockKey, data: Bytes) {
        let ad = Sealer::associated_data(&key);
        let name: Arc<str> = self.sealer.file_name(&ad).into();
        let sealed = self.sealer.seal(&ad, &data);
        let res = write_file(self.dir.path(), &name, &sealed);
        let mut victims = Vec::new();
        {
            let mut s = self.state.lock().unwrap();
            s.pending.remove(&key);
            s.pending_bytes -= data.len();
            if res.is_ok() && self.is_enabled() {
                let len = sealed.len() as u64;
                s.bytes += len;
                if let Some(old) = s.index.put(
                    key,
                    Stored {
                        file: name.clone(),
                        len,
                    },
                ) {
                    s.bytes -= old.len;
                }
                while s.bytes > self.capacity {
                    let Some((_, v)) = s.index.pop_lru() else {
                        break;
                    };
                    s.bytes -= v.len;
                    victims.push(v.file);
                }
            }
        }
        match res {
            Ok(()) => {
                self.counters
                    .bytes_written
                    .fetch_add(sealed.len() as u64, Ordering::Relaxed);
                if !self.is_enabled() {
                    // Disabled while this block was being written.
                    let _ = std::fs::remove_file(self.dir.path().join(&*name));
                }
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.disable(&format!("writing a block failed: {e}"));
            }
        }
        for v in victims {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::remove_file(self.dir.path().join(&*v));
        }
        self.written.notify_waiters();
    }

    /// The block, if this tier holds it and it authenticates; None otherwise
    /// (the caller fetches it from the service).
    pub async fn get(self: &Arc<Self>, key: &BlockKey) -> Option<Bytes> {
        if !self.is_enabled() {
            return None;
        }
        if !self.key_held(key) {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let stored = {
            let mut s = self.state.lock().unwrap();
            if let Some(b) = s.pending.get(key) {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                return Some(b.clone());
            }
            s.index.get(key).cloned()
        };
        let Some(stored) = stored else {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let this = self.clone();
        let k = key.clone();
        tokio::task::spawn_blocking(move || this.read_block(&k, &stored))
            .await
            .ok()
            .flatten()
    }

    /// Runs on the blocking pool: read and open the block; on failure drop
    /// the entry and count why (a fault disables the tier).
    fn read_block(&self, key: &BlockKey, stored: &Stored) -> Option<Bytes> {
        let path = self.dir.path().join(&*stored.file);
        let res = std::fs::read(&path)
            .map_err(ReadError::from)
            .and_then(|sealed| Ok(self.sealer.open(&Sealer::associated_data(key), sealed)?));
        let e = match res {
            Ok(b) => {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_read
                    .fetch_add(stored.len, Ordering::Relaxed);
                return Some(b);
            }
            Err(e) => e,
        };
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        self.forget(key, &stored.file);
        match e {
            ReadError::Tampered(_) => {
                self.counters.auth_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    file = %path.display(),
                    "disk cache: a block failed authentication (tampered with or misplaced); deleted, fetching it again"
                );
                let _ = std::fs::remove_file(&path);
            }
            // Evicted and deleted between the lookup and the read.
            ReadError::Io(e) if e.kind() == io::ErrorKind::NotFound && self.dir.path().is_dir() => {
            }
            ReadError::Io(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.disable(&format!("reading a block failed: {e}"));
            }
        }
        None
    }

    /// Drop `key`'s entry if it still names `file`.
    fn forget(&self, key: &BlockKey, file: &str) {
        let mut s = self.state.lock().unwrap();
        if s.index.peek(key).is_some_and(|v| &*v.file == file) {
            if let Some(v) = s.index.pop(key) {
                s.bytes -= v.len;
            }
        }
    }

    /// Turn the tier off for the rest of the mount: one log line, the index
    /// emptied, our block files deleted (best effort: a full disk gets its
    /// space back). Blocks still being written finish and are deleted.
    fn disable(&self, why: &str) {
        {
            let mut s = self.state.lock().unwrap();
            if !self.enabled.swap(false, Ordering::Relaxed) {
                return;
            }
            s.index.clear();
            s.bytes = 0;
        }
        tracing::warn!(dir = %self.dir.path().display(), "disk cache disabled for this mount ({why}); reads go to the service");
        self.dir.remove_blocks();
    }

    /// Wait until the write queue has room for `len` more bytes: a reader
    /// whose block will evict another waits here, so a disk slower than the
    /// network slows reads down instead of losing blocks.
    pub async fn wait_for_room(&self, len: usize) {
        loop {
            let notified = self.written.notified();
            {
                let s = self.state.lock().unwrap();
                if !self.is_enabled()
                    || s.pending.is_empty()
                    || s.pending_bytes + len <= MAX_PENDING_BYTES
                {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Wait until every block handed to [`DiskCache::spill`] so far is
    /// written (or dropped). For tests and benchmarks that inspect the
    /// directory; reads never need it (pending blocks are served).
    pub async fn settle(&self) {
        loop {
            let notified = self.written.notified();
            if self.state.lock().unwrap().pending.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// Write `data` as `dir/name`, atomically (a reader sees the old file or
/// the new one, never a partial one), mode 0600. No fsync: a cache that does
/// not survive a crash is removed at the next mount anyway.
fn write_file(dir: &Path, name: &str, data: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}{}", dir::TMP_SUFFIX));
    let res = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpkfs_blob::CustomerKey;

    fn key(i: u64, cpk: Option<&CustomerKey>) -> BlockKey {
        BlockKey {
            name: "a/b".into(),
            etag: "\"e\"".into(),
            index: i,
            cpk_sha256: cpk.map(|k| Arc::from(k.sha256())),
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap() != "lock")
            .collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lru_by_size_within_the_bound() {
        let root = tempfile::tempdir().unwrap();
        let block = 64 * 1024;
        let per_file = (block + seal::OVERHEAD) as u64;
        let c = DiskCache::open(root.path(), 3 * per_file, KeyRing::default()).unwrap();
        // One at a time: writes run in parallel, and finish in any order.
        for i in 0..3 {
            c.spill(key(i, None), Bytes::from(vec![i as u8; block]));
            c.settle().await;
        }
        assert_eq!(files(c.dir()).len(), 3);
        // Block 0 is used, so 1 is the least recently used when 3 arrives.
        assert!(c.get(&key(0, None)).await.is_some());
        c.spill(key(3, None), Bytes::from(vec![3u8; block]));
        c.settle().await;
        assert!(c.get(&key(1, None)).await.is_none());
        for i in [0, 2, 3] {
            assert_eq!(c.get(&key(i, None)).await.unwrap(), vec![i as u8; block]);
        }
        let s = c.stats();
        assert_eq!((s.blocks, s.bytes, s.evictions), (3, 3 * per_file, 1));
        assert_eq!((s.hits, s.misses), (4, 1));
        assert_eq!(s.bytes_written, 4 * per_file);
        assert_eq!(s.bytes_read, 4 * per_file);
        assert_eq!(files(c.dir()).len(), 3, "the evicted block's file is gone");
        // A spill of a block already on disk writes nothing.
        c.spill(key(0, None), Bytes::from(vec![0u8; block]));
        c.settle().await;
        assert_eq!(c.stats().bytes_written, 4 * per_file);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn served_only_while_the_ring_holds_the_blobs_key() {
        let root = tempfile::tempdir().unwrap();
        let held = CustomerKey::from_raw([1; 32]);
        let foreign = CustomerKey::from_raw([2; 32]);
        let ring = KeyRing::new(vec![Arc::new(held.clone())]);
        let c = DiskCache::open(root.path(), 1 << 20, ring).unwrap();
        c.spill(key(0, Some(&held)), Bytes::from_static(b"held"));
        c.spill(key(0, Some(&foreign)), Bytes::from_static(b"foreign"));
        c.settle().await;
        assert_eq!(c.stats().blocks, 2);
        assert_eq!(&c.get(&key(0, Some(&held))).await.unwrap()[..], b"held");
        assert!(!c.holds(&key(0, Some(&foreign))));
        assert!(c.get(&key(0, Some(&foreign))).await.is_none());
        // The same block of a plain blob is another entry.
        assert!(c.get(&key(0, None)).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vanished_directory_disables_the_tier() {
        let root = tempfile::tempdir().unwrap();
        let c = DiskCache::open(root.path(), 1 << 20, KeyRing::default()).unwrap();
        c.spill(key(0, None), Bytes::from_static(b"zero"));
        c.settle().await;
        std::fs::remove_dir_all(root.path()).unwrap();
        // Reading the indexed block finds the directory gone.
        assert!(c.get(&key(0, None)).await.is_none());
        assert!(!c.is_enabled());
        c.spill(key(1, None), Bytes::from_static(b"one"));
        c.settle().await;
        let s = c.stats();
        assert_eq!((s.enabled, s.blocks, s.errors), (false, 0, 1));
        assert!(c.get(&key(1, None)).await.is_none());
    }

    #[test]
    fn too_small_is_refused_and_debug_is_redacted() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            DiskCache::open(root.path(), 1000, KeyRing::default()),
            Err(DiskCacheError::TooSmall(1000))
        ));
        let c = DiskCache::open(root.path(), 1 << 20, KeyRing::default()).unwrap();
        let d = format!("{c:?}");
        assert!(d.contains("<redacted>"), "{d}");
    }
}
