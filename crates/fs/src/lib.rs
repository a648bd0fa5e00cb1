//! The cpkfs filesystem core. It knows nothing of FUSE: every operation is an
//! `async fn` taking inode numbers and returning plain data or an [`FsError`];
//! `src/fuse.rs` translates. It can be driven directly in tests.

pub mod attr;
pub mod buffers;
pub mod cache;
pub mod dir;
pub mod disk_cache;
pub mod error;
mod files;
pub mod inode;
pub mod keyring;
mod listing;
mod namespace;
pub mod stats;
pub mod write;

use attr::{Attr, AttrDefaults, Kind};
use cache::BlockCache;
use cpkfs_blob::{
    BlobClient, BlobItem, BlobProperties, Conditions, CustomerKey, ListOptions, Metadata,
};
use dir::{DirEntry, DirHandle};
pub use error::{FsError, FsResult};
use inode::{Inode, InodeState, InodeTable, ROOT_INO};
pub use keyring::KeyRing;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use write::WriteContext;

#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Read and write block size.
    pub block_size: u64,
    /// Bytes the block cache may hold.
    pub cache_size: u64,
    /// The encrypted disk tier under this directory (None: off).
    pub disk_cache_dir: Option<std::path::PathBuf>,
    /// Bytes of sealed blocks the disk tier may hold.
    pub disk_cache_size: u64,
    /// How long attributes and listings are trusted.
    pub attr_ttl: Duration,
    /// Upper bound on blocks read ahead for one sequential reader.
    pub max_readahead_blocks: u64,
    /// Blocks being uploaded at once, for the whole mount.
    pub upload_concurrency: usize,
    /// Parallel keyed HEADs used to learn CPK blobs' metadata during a listing.
    pub head_concurrency: usize,
    pub defaults: AttrDefaults,
    pub read_only: bool,
    /// The customer-provided keys: the current one writes, older ones are
    /// kept for reading blobs not yet rotated. The client holds none.
    pub keyring: KeyRing,
    /// Last writer wins instead of failing close on a concurrent change.
    pub overwrite_conflicts: bool,
    /// Also keep a CPK blob's attributes (mode, owner, times) in its blob
    /// index tags, which listings return unencrypted: a listing then needs
    /// no keyed HEAD per entry. Opt-in: anyone who can list sees them
    /// (docs/SEMANTICS.md).
    pub attrs_in_tags: bool,
    /// Entries per List Blobs page (the service's maximum, 5,000, unless
    /// a test wants many pages of few entries).
    pub list_page_size: u32,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            block_size: 8 * 1024 * 1024,
            cache_size: 256 * 1024 * 1024,
            disk_cache_dir: None,
            disk_cache_size: 4 << 30,
            attr_ttl: Duration::from_secs(3),
            max_readahead_blocks: 8,
            upload_concurrency: 8,
            head_concurrency: 32,
            defaults: AttrDefaults::default(),
            read_only: false,
            keyring: KeyRing::default(),
            overwrite_conflicts: false,
            attrs_in_tags: false,
            list_page_size: 5000,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub ino: u64,
    pub attr: Attr,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<std::time::SystemTime>,
    pub atime: Option<std::time::SystemTime>,
}

#[derive(Debug, Clone, Copy)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// Per-handle state of an open file.
pub struct FileHandle {
    pub ino: u64,
    pub writable: bool,
    /// ETag pinned at open; reads send If-Match with it.
    etag: Mutex<Option<String>>,
    size: Mutex<u64>,
    /// Key of the pinned version (None: a plain blob, or nothing committed).
    cpk: Mutex<Option<Arc<CustomerKey>>>,
    /// Sequential-read detector: next expected offset and read-ahead window.
    seq: Mutex<(u64, u64)>,
    wrote: std::sync::atomic::AtomicBool,
    /// Some bytes were returned through this handle: from then on it must
    /// not switch to another version of the blob.
    delivered: std::sync::atomic::AtomicBool,
}

pub struct Fs {
    client: BlobClient,
    key: Option<Arc<CustomerKey>>,
    cfg: FsConfig,
    inodes: InodeTable,
    cache: Arc<BlockCache>,
    /// Read-ahead fetches under way, for the whole mount: a block being
    /// fetched is memory the cache does not count yet, and 8 readers with
    /// 8 blocks of read-ahead each took a 256 MiB-cache mount to 800 MiB.
    readahead: Arc<tokio::sync::Semaphore>,
    wctx: WriteContext,
    handles: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<DirHandle>>>>,
    next_fh: AtomicU64,
    /// Blobs unlinked while a descriptor had them open, by inode: (name,
    /// ETag). The open descriptors keep reading them; this mount no longer
    /// shows them, and deletes them (If-Match) when the last one is released.
    deferred_deletes: Mutex<HashMap<u64, (String, String)>>,
    /// Whether the service copies CPK blobs itself (Put Blob/Block From URL with
    /// the source key, service version 2026-02-06): learnt from the first attempt,
    /// once per mount (`namespace.rs`).
    server_copy: namespace::ServerCopy,
    /// One listing of a directory at a time (`listing.rs`).
    relists: listing::Relists,
    /// Operations, errors and bytes, for `cpkfs stats`.
    stats: stats::MountStats,
}

/// Names the service cannot store or that would break the tree.
fn check_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name == "." || name == ".." {
        return Err(FsError::InvalidName(name.into(), "reserved name"));
    }
    if name.contains('\\') {
        return Err(FsError::InvalidName(
            name.into(),
            "the service turns '\\' into '/'",
        ));
    }
    if name.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

/// Items the lookup probe asks for: enough for the siblings that sort
/// between `name` and `name/` (`name.txt`, `name-1`) in all but odd
/// directories, small enough to cost no more than a one-item listing.
const PROBE_PAGE: u32 = 32;

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

impl Fs {
    pub fn new(client: BlobClient, cfg: FsConfig) -> Arc<Fs> {
        let readahead = readahead_budget(&cfg);
        // The keys belong to the ring alone. A client configured with a key
        // (tests, older callers) next to an empty ring would make this mount
        // write plain blobs without a word: refuse that mistake loudly.
        assert!(
            client.cpk().is_none() || !cfg.keyring.is_empty(),
            "Fs::new: the client carries a customer-provided key but FsConfig.keyring is empty; \
             put the keys in FsConfig.keyring"
        );
        let key = cfg.keyring.current().cloned();
        let root = Attr::new_dir(&cfg.defaults);
        let wctx = WriteContext {
            client: client.clone(),
            block_size: cfg.block_size,
            upload_slots: Arc::new(tokio::sync::Semaphore::new(cfg.upload_concurrency.max(1))),
            max_dirty: cfg.block_size * 8,
            // As many as can be in flight (a steady stream then allocates
            // no block buffer after its first few), within 64 MiB; emptied
            // when the last writer of the mount is released.
            buffers: Arc::new(buffers::BufferPool::new(
                cfg.block_size,
                ((64 << 20) / cfg.block_size.max(1) as usize)
                    .clamp(1, cfg.upload_concurrency.max(1)),
            )),
            key_sha256: key.as_ref().map(|k| k.sha256().to_string()),
            overwrite_conflicts: cfg.overwrite_conflicts,
        };
        let disk = cfg.disk_cache_dir.as_deref().and_then(|dir| {
            match disk_cache::DiskCache::open(dir, cfg.disk_cache_size, cfg.keyring.clone()) {
                Ok(d) => Some(d),
                Err(e) => {
                    // The mount command checks the directory first; this is
                    // a race with its removal. Reads work without the tier.
                    tracing::error!(error = %e, "disk cache not started; reads go to the service");
                    None
                }
            }
        });
        let mount_stats = stats::MountStats::default();
        if let Some(d) = &disk {
            // `cpkfs stats` reads the disk tier's own counters. Weak: the
            // statistics must not keep the tier (and its directory) alive.
            let d = Arc::downgrade(d);
            mount_stats.set_disk_tier(Arc::new(move || {
                d.upgrade()
                    .map(|d| {
                        let s = d.stats();
                        stats::TierStat {
                            hits: s.hits,
                            misses: s.misses,
                            bytes: Some(s.bytes),
                            capacity: Some(s.capacity),
                        }
                    })
                    .unwrap_or_default()
            }));
        }
        Arc::new(Fs {
            client,
            key,
            cache: Arc::new(BlockCache::with_disk(cfg.cache_size as usize, disk)),
            inodes: InodeTable::new(root),
            wctx,
            cfg,
            handles: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            deferred_deletes: Mutex::new(HashMap::new()),
            readahead: Arc::new(tokio::sync::Semaphore::new(readahead)),
            server_copy: namespace::ServerCopy::default(),
            relists: listing::Relists::default(),
            stats: mount_stats,
        })
    }

    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }
    pub fn client(&self) -> &BlobClient {
        &self.client
    }
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }
    pub fn stats(&self) -> &stats::MountStats {
        &self.stats
    }

    /// The kernel is about to be given `ino` as an entry (lookup, create,
    /// mkdir, mknod, symlink, or an entry of readdirplus other than `.` and
    /// `..`): it holds the inode until it sends as many forgets.
    pub fn remember(&self, ino: u64) {
        self.inodes.hold(ino);
    }

    /// The kernel forgot `n` lookups of `ino`. An inode neither named nor
    /// held any more (unlinked, renamed over) is dropped: a long-lived
    /// mount's memory follows what exists, not what ever existed.
    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.release(ino, n);
    }

    /// The blob path of an inode ("" for the root), if it is known.
    pub fn path_for(&self, ino: u64) -> Option<String> {
        self.inodes.path(ino)
    }

    /// Everything `cpkfs stats` shows, now. Takes no lock that a request
    /// holds across the network: a file whose write lock is busy (a write or
    /// commit under way) counts as having pending writes.
    pub fn stats_snapshot(&self) -> stats::StatsSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let requests = self.client.stats().snapshot();
        let account_key = match self.client.credential() {
            cpkfs_blob::Credential::SharedKey(c) => stats::AccountKeyInUse::SharedKey {
                in_use: c.current().0 + 1,
                of: c.key_count(),
            },
            cpkfs_blob::Credential::Sas(_) => stats::AccountKeyInUse::Sas,
        };
        let keys = stats::KeysInUse {
            account_key,
            cpk_sha256: self.cfg.keyring.current().map(|k| k.sha256().to_string()),
            older_cpk_sha256: self
                .cfg
                .keyring
                .older()
                .iter()
                .map(|k| k.sha256().to_string())
                .collect(),
        };
        let pending: Vec<String> = self
            .inodes
            .all()
            .into_iter()
            .filter(|n| match n.write.try_lock() {
                Ok(w) => w.as_ref().is_some_and(|ws| ws.is_dirty()),
                Err(_) => true,
            })
            .filter_map(|n| self.inodes.path(n.ino))
            .collect();
        let cache = self.cache.stats();
        let counters = self.cache.counters();
        stats::StatsSnapshot {
            version: stats::SNAPSHOT_VERSION,
            container: self.client.container().to_string(),
            uptime_secs: self.stats.uptime_secs(),
            keys,
            operations: self.stats.operations(),
            errors_by_kind: self.stats.error_kinds(),
            memory_cache: stats::TierStat {
                hits: counters.hits.load(Relaxed),
                misses: counters.misses.load(Relaxed),
                bytes: Some(cache.bytes as u64),
                capacity: Some(self.cache.capacity() as u64),
            },
            disk_cache: self.stats.disk_tier(),
            bytes: stats::ByteCounts {
                read_by_apps: self.stats.bytes_read.load(Relaxed),
                written_by_apps: self.stats.bytes_written.load(Relaxed),
                from_azure: requests.total.bytes_in,
                to_azure: requests.total.bytes_out,
            },
            requests,
            pending_writes: stats::PendingWrites::from_paths(pending),
            tables: stats::TableCounts {
                inodes: self.inodes.count() as u64,
                negative_names: self.inodes.negative_count() as u64,
            },
            last_errors: self.stats.recent_errors(),
        }
    }

    fn node(&self, ino: u64) -> FsResult<Arc<Inode>> {
        self.inodes.get(ino).ok_or(FsError::NotFound)
    }

    fn path_of(&self, ino: u64) -> FsResult<String> {
        self.inodes.path(ino).ok_or(FsError::NotFound)
    }

    fn expiry(&self) -> Instant {
        Instant::now() + self.cfg.attr_ttl
    }

    /// The key to send for a blob encrypted with `sha256`, or EACCES when the
    /// mount does not hold it.
    fn key_for(&self, path: &str, sha256: Option<&str>) -> FsResult<Option<Arc<CustomerKey>>> {
        let Some(h) = sha256 else { return Ok(None) };
        match self.ring_key(h) {
            Some(k) => Ok(Some(k)),
            None => {
                tracing::warn!(
                    path,
                    key_sha256 = h,
                    "blob is encrypted with a customer-provided key this mount does not hold"
                );
                Err(FsError::ForeignKey {
                    path: path.into(),
                    sha256: h.into(),
                })
            }
        }
    }

    /// The key of the ring (current key first, then older keys kept for
    /// reading) whose SHA-256 is `h`: chosen by hash, never by trial requests.
    fn ring_key(&self, h: &str) -> Option<Arc<CustomerKey>> {
        self.cfg.keyring.find(h).cloned()
    }

    fn state_from_props(
        &self,
        parent: u64,
        name: &str,
        p: &BlobProperties,
        meta_known: bool,
    ) -> InodeState {
        InodeState {
            parent,
            name: name.to_string(),
            attr: Attr::from_blob(p, &self.cfg.defaults),
            etag: Some(p.etag.clone()),
            cpk_sha256: p.cpk_sha256.clone(),
            expires: self.expiry(),
            meta_known,
            unlinked: false,
            local_etag: None,
            local_times: false,
        }
    }

    fn implicit_dir_state(&self, parent: u64, name: &str) -> InodeState {
        InodeState {
            parent,
            name: name.to_string(),
            attr: Attr::new_dir(&self.cfg.defaults),
            etag: None,
            cpk_sha256: None,
            expires: self.expiry(),
            meta_known: true,
            unlinked: false,
            local_etag: None,
            local_times: false,
        }
    }

    /// The metadata of CPK blob `item` of directory `dir` as this mount
    /// knows it without a HEAD: that of the inode its name holds, if it
    /// describes this version (learnt by a HEAD, or stored by our own commit
    /// or chmod). Rebuilt from the attributes (they round-trip), so the
    /// mount keeps no second copy of every CPK blob's metadata.
    fn known_metadata(&self, dir: u64, item: &BlobItem) -> Option<Metadata> {
        let name = item.name.rsplit('/').next()?;
        let s = self.inodes.child(dir, name)?.snapshot();
        (s.meta_known && s.etag.as_deref() == Some(item.properties.etag.as_str()))
            .then(|| s.attr.to_metadata())
    }

    /// Fill in hidden metadata of the CPK blobs `items` of directory `dir`
    /// (bounded parallel keyed HEADs, skipped for a version whose metadata
    /// is known). `fetch` false: only what is known, no request.
    async fn reveal_cpk_metadata(&self, dir: u64, items: &mut [BlobItem], fetch: bool) {
        use futures::stream::{self, StreamExt};
        let mut todo = vec![];
        for (i, it) in items.iter_mut().enumerate() {
            let p = &mut it.properties;
            if !p.metadata_encrypted {
                continue;
            }
            let Some(key) = p.cpk_sha256.as_deref().and_then(|h| self.ring_key(h)) else {
                continue;
            };
            if let Some(md) = self.attrs_from_tags(p) {
                p.metadata = md;
                p.metadata_encrypted = false;
                continue;
            }
            if let Some(md) = self.known_metadata(dir, it) {
                let p = &mut it.properties;
                p.metadata = md;
                p.metadata_encrypted = false;
                continue;
            }
            todo.push((i, key));
        }
        if todo.is_empty() || !fetch {
            return;
        }
        let results: Vec<(usize, Option<BlobProperties>)> = stream::iter(todo)
            .map(|(i, key)| {
                let name = items[i].name.clone();
                async move {
                    let r = self
                        .client
                        .get_blob_properties(&name, Some(&key), &Conditions::default())
                        .await;
                    (i, r.ok())
                }
            })
            .buffer_unordered(self.cfg.head_concurrency.max(1))
            .collect()
            .await;
        for (i, r) in results {
            if let Some(p) = r {
                let it = &mut items[i];
                if p.etag == it.properties.etag {
                    it.properties.metadata = p.metadata;
                    it.properties.metadata_encrypted = false;
                }
            }
        }
    }

    /// The tags a commit of a CPK blob carries when `attrs_in_tags` is on:
    /// the attribute entries of its metadata (at most 9 of the service's 10
    /// tags). `None` when off, or for blobs stored without a key (their
    /// metadata is listed anyway).
    fn attr_tags(&self, md: &cpkfs_blob::Metadata, keyed: bool) -> Option<cpkfs_blob::Metadata> {
        (self.cfg.attrs_in_tags && keyed).then(|| attr::tag_subset(md))
    }

    /// A listed CPK blob's attributes from its tags, when the mount keeps
    /// them there and these tags hold them (a mode at least).
    fn attrs_from_tags(&self, p: &BlobProperties) -> Option<cpkfs_blob::Metadata> {
        if !self.cfg.attrs_in_tags {
            return None;
        }
        let tags = p.tags.as_ref()?;
        tags.contains_key(attr::META_MODE)
            .then(|| attr::tag_subset(tags))
    }

    // ------------------------------------------------------------------ lookup

    /// The answer to a lookup when memory holds it: a fresh entry, a file
    /// created here and not committed yet, a name known to be absent, or an
    /// invalid request. `None`: only the service can tell ([`Fs::lookup`]).
    /// Synchronous, so the FUSE adapter answers these without a task.
    pub fn lookup_cached(&self, parent: u64, name: &str) -> Option<FsResult<Entry>> {
        if let Err(e) = check_name(name) {
            return Some(Err(e));
        }
        let pnode = match self.node(parent) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if pnode.kind() != Kind::Dir {
            return Some(Err(FsError::NotDir));
        }
        if let Some(child) = self.inodes.child(parent, name) {
            let s = child.snapshot();
            // Files not yet committed exist only here; fresh entries are trusted.
            if ((s.etag.is_none() && s.attr.kind == Kind::File && !s.unlinked)
                || s.expires > Instant::now())
                && s.meta_known
            {
                return Some(Ok(Entry {
                    ino: child.ino,
                    attr: s.attr,
                }));
            }
            None
        } else if self.inodes.is_negative(parent, name) || self.inodes.is_listed(parent) {
            Some(Err(FsError::NotFound))
        } else {
            None
        }
    }

    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Entry> {
        if let Some(answer) = self.lookup_cached(parent, name) {
            return answer;
        }
        if let Some(answer) = self.lookup_by_relisting(parent, name).await? {
            return answer;
        }
        let dir_path = self.path_of(parent)?;
        let path = join(&dir_path, name);
        self.inodes.count_lookup(parent);
        self.lookup_remote(parent, name, &path).await
    }

    /// Ask the service what `path` is: a blob (file, marker, symlink) and/or a
    /// prefix (directory) — see [`Fs::probe`]. A CPK blob of ours also needs
    /// a keyed HEAD for its metadata.
    async fn lookup_remote(&self, parent: u64, name: &str, path: &str) -> FsResult<Entry> {
        let (blob, is_dir_prefix) = self.probe(path).await?;
        if let Some(mut item) = blob {
            if item.properties.metadata_encrypted {
                self.reveal_cpk_metadata(parent, std::slice::from_mut(&mut item), true)
                    .await;
            }
            let known = !item.properties.metadata_encrypted;
            let st = self.state_from_props(parent, name, &item.properties, known);
            // A file and a directory of the same name: the directory wins.
            if !(is_dir_prefix && st.attr.kind != Kind::Dir) {
                let node = self.inodes.upsert(parent, name, st);
                let attr = node.snapshot().attr;
                return Ok(Entry {
                    ino: node.ino,
                    attr,
                });
            }
        }
        if is_dir_prefix {
            let node = self
                .inodes
                .upsert(parent, name, self.implicit_dir_state(parent, name));
            let attr = node.snapshot().attr;
            return Ok(Entry {
                ino: node.ino,
                attr,
            });
        }
        if let Some(old) = self.inodes.child(parent, name) {
            let s = old.snapshot();
            if s.etag.is_none() && s.attr.kind == Kind::File && !s.unlinked {
                // Created here, not committed yet.
                return Ok(Entry {
                    ino: old.ino,
                    attr: s.attr,
                });
            }
            self.inodes.remove_child(parent, name);
        }
        self.inodes.set_negative(parent, name, self.expiry());
        Err(FsError::NotFound)
    }

    /// The blob named `path` (if any, and not unlinked here while open) and
    /// whether `path/` is a prefix, usually in one List Blobs: prefix `path`
    /// with the `/` delimiter lists, in name order, the blob `path` itself,
    /// then siblings such as `path.txt` (`.` and `-` sort before `/`), then
    /// the prefix `path/`. The answer is complete once the page reaches a name
    /// at or after `path/` or the listing ends; only when more than a page of
    /// such siblings stands in the way does a second listing ask about the
    /// prefix directly.
    async fn probe(&self, path: &str) -> FsResult<(Option<BlobItem>, bool)> {
        let dir = format!("{path}/");
        let page = self
            .client
            .list_blobs(&ListOptions {
                prefix: Some(path.to_string()),
                delimiter: Some("/".into()),
                max_results: Some(PROBE_PAGE),
                include_metadata: true,
                include_tags: self.cfg.attrs_in_tags,
                ..Default::default()
            })
            .await?;
        let complete = page.next_marker.is_none()
            || page.prefixes.iter().any(|p| *p >= dir)
            || page.blobs.iter().any(|b| b.name >= dir);
        let is_dir = if complete {
            page.prefixes.contains(&dir)
        } else {
            let d = self
                .client
                .list_blobs(&ListOptions {
                    prefix: Some(dir),
                    max_results: Some(1),
                    ..Default::default()
                })
                .await?;
            !d.blobs.is_empty() || !d.prefixes.is_empty()
        };
        let blob = page
            .blobs
            .into_iter()
            .find(|x| x.name == path && !self.is_unlinked_blob(&x.name, &x.properties.etag));
        Ok((blob, is_dir))
    }

    /// Attributes memory can answer with: the root, a fresh or unlinked
    /// inode, a file created or being written here (its local size). `None`:
    /// they expired and must be re-learnt from the service ([`Fs::getattr`]).
    pub fn getattr_cached(&self, ino: u64) -> Option<FsResult<Entry>> {
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let s = node.snapshot();
        if ino == ROOT_INO
            || s.expires > Instant::now()
            || s.unlinked
            || s.etag.is_none() && s.attr.kind == Kind::File
        {
            let mut attr = s.attr;
            if let Some(ws) = node
                .write
                .try_lock()
                .ok()
                .and_then(|w| w.as_ref().map(|w| w.size()))
            {
                attr.size = ws;
            }
            return Some(Ok(Entry { ino, attr }));
        }
        // A file being written keeps its local view.
        let local_size = match node.write.try_lock() {
            Ok(w) => w.as_ref().map(|ws| ws.size()),
            Err(_) => Some(s.attr.size),
        };
        local_size.map(|size| {
            let mut attr = s.attr;
            attr.size = size;
            Ok(Entry { ino, attr })
        })
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Entry> {
        if let Some(answer) = self.getattr_cached(ino) {
            return answer;
        }
        let node = self.node(ino)?;
        let s = node.snapshot();
        let path = self.path_of(ino)?;
        // Expired: learnt again as a lookup of its name would be (with its
        // directory's listing when that is due).
        let answer = match self.lookup_by_relisting(s.parent, &s.name).await? {
            Some(answer) => answer,
            None => {
                self.inodes.count_lookup(s.parent);
                self.lookup_remote(s.parent, &s.name, &path).await
            }
        };
        match answer {
            Ok(e) if e.ino == ino => Ok(e),
            Ok(_) => Err(FsError::Stale(format!(
                "{path}: replaced by an object of another kind"
            ))),
            Err(e) => Err(e),
        }
    }

    // ----------------------------------------------------------------- readdir

    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        let node = self.node(ino)?;
        if node.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = self.path_of(ino)?;
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().unwrap().insert(
            fh,
            Arc::new(tokio::sync::Mutex::new(DirHandle::new(ino, prefix))),
        );
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().unwrap().remove(&fh);
    }

    /// Entries from `offset` on; the caller takes as many as fit and asks
    /// again with the offset of the next one.
    pub async fn readdir(&self, ino: u64, fh: u64, offset: u64) -> FsResult<Vec<DirEntry>> {
        let h = self
            .dirs
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut h = h.lock().await;
        if offset < h.base {
            h.reset();
        }
        if h.produced == 0 && !h.listing_done {
            let node = self.node(ino)?;
            let parent = node.snapshot().parent;
            let a = node.snapshot().attr;
            h.push(ino, ".".into(), a);
            let pa = self.node(parent).map(|n| n.snapshot().attr).unwrap_or(a);
            h.push(parent, "..".into(), pa);
        }
        loop {
            h.consume_to(offset);
            if offset < h.base + h.window.len() as u64 || h.finished {
                let skip = (offset - h.base) as usize;
                return Ok(h.window.iter().skip(skip).cloned().collect());
            }
            self.fill_page(ino, &mut h).await?;
        }
    }

    async fn fill_page(&self, ino: u64, h: &mut DirHandle) -> FsResult<()> {
        if h.listing_done {
            // Files created here but not committed yet are listed too.
            let mut local: Vec<(String, Arc<Inode>)> = self
                .inodes
                .children_of(ino)
                .into_iter()
                .filter(|(n, node)| {
                    let s = node.snapshot();
                    s.etag.is_none()
                        && !s.unlinked
                        && s.attr.kind == Kind::File
                        && !h.seen.contains(n)
                })
                .collect();
            local.sort_by(|a, b| a.0.cmp(&b.0));
            for (n, node) in local {
                let attr = node.snapshot().attr;
                h.push(node.ino, n, attr);
            }
            h.finished = true;
            return Ok(());
        }
        let opts = ListOptions {
            prefix: (!h.prefix.is_empty()).then(|| h.prefix.clone()),
            delimiter: Some("/".into()),
            marker: h.marker.clone(),
            max_results: Some(self.cfg.list_page_size),
            include_metadata: true,
            include_tags: self.cfg.attrs_in_tags,
            ..Default::default()
        };
        h.started.get_or_insert_with(Instant::now);
        let mut page = self.client.list_blobs(&opts).await?;
        h.pages += 1;
        self.reveal_cpk_metadata(ino, &mut page.blobs, true).await;
        let entries = self.page_entries(ino, h.prefix.len(), &page);
        for (n, st) in entries {
            if h.seen.contains(&n) {
                continue;
            }
            h.seen.insert(n.clone());
            let node = self.inodes.upsert(ino, &n, st);
            let attr = node.snapshot().attr;
            h.push(node.ino, n, attr);
        }
        match page.next_marker {
            Some(m) => h.marker = Some(m),
            None => {
                h.listing_done = true;
                let took = h.started.map(|s| s.elapsed()).unwrap_or_default();
                self.inodes.mark_listed(ino, self.expiry(), h.pages, took);
            }
        }
        Ok(())
    }

    pub fn statfs(&self) -> StatFs {
        // Blob storage has no meaningful capacity; report 1 PiB free so tools
        // that check free space proceed.
        let bsize = 4096u64;
        let blocks = (1u64 << 50) / bsize;
        StatFs {
            blocks,
            bfree: blocks,
            bavail: blocks,
            files: 1 << 32,
            ffree: 1 << 32,
            bsize: bsize as u32,
            namelen: 255,
        }
    }

    /// Commit every file with pending writes, and store the times of
    /// directories whose entries changed (used at unmount).
    pub async fn flush_all(&self) -> Vec<(String, FsError)> {
        let mut failures = vec![];
        let deferred: Vec<u64> = self
            .deferred_deletes
            .lock()
            .unwrap()
            .keys()
            .copied()
            .collect();
        for ino in deferred {
            self.delete_deferred(ino).await;
        }
        let mut dirs = vec![];
        for node in self.inodes.all() {
            if let Err(e) = self.commit_inode(&node).await {
                let p = self.inodes.path(node.ino).unwrap_or_default();
                failures.push((p, e));
            }
            let s = node.snapshot();
            // Implicit directories (no marker) and the root keep theirs in
            // memory only: storing would create a marker they never had.
            if s.local_times && s.etag.is_some() && !s.unlinked && node.ino != ROOT_INO {
                dirs.push(node);
            }
        }
        use futures::stream::{self, StreamExt};
        let stored: Vec<(u64, FsResult<()>)> = stream::iter(dirs)
            .map(|n| async move { (n.ino, self.persist_dir_times(&n).await) })
            .buffer_unordered(self.cfg.head_concurrency.max(1))
            .collect()
            .await;
        for (ino, r) in stored {
            if let Err(e) = r {
                failures.push((self.inodes.path(ino).unwrap_or_default(), e));
            }
        }
        failures
    }

    /// Was this version of this blob unlinked here while open (so it is
    /// still stored, but gone for this mount)?
    fn is_unlinked_blob(&self, name: &str, etag: &str) -> bool {
        self.deferred_deletes
            .lock()
            .unwrap()
            .values()
            .any(|(n, e)| n == name && e == etag)
    }

    /// Delete the blob an unlink left for open descriptors (the last one is
    /// gone, or the mount ends). If-Match: a newer blob of that name stays.
    async fn delete_deferred(&self, ino: u64) {
        let Some((path, etag)) = self.deferred_deletes.lock().unwrap().remove(&ino) else {
            return;
        };
        match self
            .client
            .delete_blob(&path, &Conditions::if_match(etag))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_not_found() || e.status() == Some(412) => {}
            Err(e) => {
                tracing::error!(path = %path, error = %e, "could not delete a blob unlinked while open")
            }
        }
    }

    /// `path` is being created again: a blob of that name left for open
    /// descriptors of an unlinked file goes now, or the new object's commit
    /// (If-None-Match) would meet it. Those descriptors keep what they hold
    /// in memory; uncached reads of the old content then fail (ESTALE).
    async fn reclaim_name(&self, path: &str) {
        let inos: Vec<u64> = self
            .deferred_deletes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (n, _))| n == path)
            .map(|(i, _)| *i)
            .collect();
        for ino in inos {
            self.delete_deferred(ino).await;
        }
    }

    /// Is a blob of `ino` (unlinked while open) waiting for its last
    /// descriptor? Releases of such files take the async path.
    fn has_deferred_delete(&self, ino: u64) -> bool {
        self.deferred_deletes.lock().unwrap().contains_key(&ino)
    }

    /// Is a blob of the name `name` in `parent` waiting for the last
    /// descriptor of an unlinked file? A create of that name must delete it
    /// first. Usually none waits: then no path is built.
    fn name_has_deferred_delete(&self, parent: u64, name: &str) -> bool {
        if self.deferred_deletes.lock().unwrap().is_empty() {
            return false;
        }
        let Some(dir) = self.inodes.path(parent) else {
            return false;
        };
        let path = join(&dir, name);
        self.deferred_deletes
            .lock()
            .unwrap()
            .values()
            .any(|(n, _)| *n == path)
    }

    /// A descriptor of `ino` was released: if it was the last one of a file
    /// unlinked while open, delete its blob now.
    async fn release_unlinked(&self, ino: u64) {
        if !self.deferred_deletes.lock().unwrap().contains_key(&ino) {
            return;
        }
        let still_open = self.handles.lock().unwrap().values().any(|h| h.ino == ino);
        if !still_open {
            self.delete_deferred(ino).await;
        }
    }

    /// An entry of directory `ino` was created, removed or renamed: its
    /// mtime and ctime move (POSIX). They are kept in memory and stored with
    /// the directory's next marker write (its chmod/chown/utimens, or at
    /// unmount), so creating a file costs no extra request.
    fn dir_changed(&self, ino: u64) {
        if let Some(n) = self.inodes.get(ino) {
            let now = std::time::SystemTime::now();
            let mut s = n.state.lock().unwrap();
            s.attr.mtime = now;
            s.attr.ctime = now;
            s.local_times = true;
        }
    }

    /// Rewrite a directory marker with the directory's current attributes,
    /// if it is still the marker we know (If-Match: a directory removed or
    /// changed by another client meanwhile is left alone).
    async fn persist_dir_times(&self, node: &Inode) -> FsResult<()> {
        let path = self.path_of(node.ino)?;
        let s = node.snapshot();
        let Some(etag) = s.etag else { return Ok(()) };
        let opts = cpkfs_blob::CommitOptions {
            content_type: None,
            metadata: s.attr.to_metadata(),
            conditions: Conditions::if_match(etag),
            tags: None,
        };
        let r = match self
            .client
            .put_blob(&path, bytes::Bytes::new(), &opts, None)
            .await
        {
            Ok(r) => r,
            Err(e) if e.is_not_found() || e.status() == Some(412) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let mut st = node.state.lock().unwrap();
        st.etag = Some(r.etag);
        st.local_times = false;
        Ok(())
    }
}

impl Fs {
    /// The customer-provided key hash a file is encrypted with (None: plain).
    pub fn key_sha256_of(&self, ino: u64) -> FsResult<Option<String>> {
        Ok(self.node(ino)?.snapshot().cpk_sha256)
    }
}

/// Named points where a test can hold an operation (`arm`), to run another
/// operation in exactly the interleaving a race needs. Compiled into tests
/// only; a point nobody armed costs one lock. Points that every test passes
/// through carry the blob's path in their name, so a test arms them for its
/// own file only (unit tests run in parallel).
#[cfg(test)]
pub(crate) mod pause {
    use std::sync::Mutex;
    use tokio::sync::oneshot;

    /// (point, subject, reached, resume); a `None` subject matches any.
    type Gate = (
        &'static str,
        Option<String>,
        oneshot::Sender<()>,
        oneshot::Receiver<()>,
    );
    static GATES: Mutex<Vec<Gate>> = Mutex::new(Vec::new());

    /// The next task reaching `point` signals the first receiver, then waits
    /// until the returned sender is used.
    pub fn arm(point: &'static str) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        arm_gate(point, None)
    }

    /// As [`arm`], for the next task reaching `point` about `subject` only
    /// (tests run in parallel in one process: a name keeps them apart).
    pub fn arm_on(
        point: &'static str,
        subject: &str,
    ) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        arm_gate(point, Some(subject.to_string()))
    }

    fn arm_gate(
        point: &'static str,
        subject: Option<String>,
    ) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (resume_tx, resume_rx) = oneshot::channel();
        GATES
            .lock()
            .unwrap()
            .push((point, subject, reached_tx, resume_rx));
        (reached_rx, resume_tx)
    }

    pub async fn point(name: &'static str) {
        point_on(name, "").await
    }

    pub async fn point_on(name: &'static str, subject: &str) {
        let gate = {
            let mut g = GATES.lock().unwrap();
            g.iter()
                .position(|(n, s, ..)| *n == name && s.as_deref().is_none_or(|s| s == subject))
                .map(|i| g.swap_remove(i))
        };
        if let Some((_, _, reached, resume)) = gate {
            let _ = reached.send(());
            let _ = resume.await;
        }
    }
}

/// Blocks of read-ahead the whole mount may be fetching at once: at most
/// 64 MiB (the memory allowed beyond the block cache), at least one block,
/// and no more than one reader's own window.
fn readahead_budget(cfg: &FsConfig) -> usize {
    let by_bytes = (64 << 20) / cfg.block_size.max(1);
    by_bytes.clamp(1, cfg.max_readahead_blocks.max(1)) as usize
}

#[cfg(test)]
mod readahead_budget_tests {
    use super::*;

    #[test]
    fn the_mount_wide_readahead_budget_is_64_mib_of_blocks_within_one_window() {
        let mib = 1 << 20;
        let cfg = |block: u64, window: u64| FsConfig {
            block_size: block,
            max_readahead_blocks: window,
            ..FsConfig::default()
        };
        assert_eq!(readahead_budget(&cfg(8 * mib, 8)), 8, "defaults: 64 MiB");
        assert_eq!(
            readahead_budget(&cfg(64 << 10, 8)),
            8,
            "small blocks: one window"
        );
        assert_eq!(readahead_budget(&cfg(32 * mib, 8)), 2);
        assert_eq!(
            readahead_budget(&cfg(256 * mib, 8)),
            1,
            "at least one block"
        );
        assert_eq!(readahead_budget(&cfg(8 * mib, 0)), 1);
    }
}
