//! Open files: open/create, the read path (block cache + read-ahead), the
//! write path (write sessions), flush/fsync/release, setattr.

use super::attr::{Attr, Kind};
use super::cache::BlockKey;
use super::error::{FsError, FsResult};
use super::inode::Inode;
use super::write::{Outcome, ReadPiece, WriteSession};
use super::{Entry, FileHandle, Fs, SetAttr};
use bytes::{Bytes, BytesMut};
use cpkfs_blob::{ByteRange, CommitOptions, Conditions, CustomerKey};
use futures::FutureExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// Most bytes one copy_file_range request copies (see `Fs::copy_file_range`).
const MAX_COPY: u64 = 1 << 30;

impl Fs {
    fn handle(&self, fh: u64) -> FsResult<Arc<FileHandle>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    fn new_handle(
        &self,
        ino: u64,
        writable: bool,
        etag: Option<String>,
        size: u64,
        cpk: Option<Arc<CustomerKey>>,
    ) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = FileHandle {
            ino,
            writable,
            etag: Mutex::new(etag),
            size: Mutex::new(size),
            cpk: Mutex::new(cpk),
            seq: Mutex::new((0, 0)),
            wrote: std::sync::atomic::AtomicBool::new(false),
            delivered: std::sync::atomic::AtomicBool::new(false),
        };
        // A handle holds its inode: an unlinked file stays readable
        // through it until its release, whatever the kernel forgets.
        self.inodes.hold(ino);
        self.handles.lock().unwrap().insert(fh, Arc::new(h));
        fh
    }

    /// The inode `open` may open: a regular file, and writable only on a
    /// read-write mount.
    fn openable(&self, ino: u64, write: bool) -> FsResult<Arc<Inode>> {
        let node = self.node(ino)?;
        match node.kind() {
            Kind::Dir => return Err(FsError::IsDir),
            Kind::Symlink => return Err(FsError::Invalid("open of a symlink")),
            // The kernel opens FIFOs and devices itself; never sent here.
            k if k.is_special() => return Err(FsError::Invalid("open of a special file")),
            _ => {}
        }
        if write && self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        Ok(node)
    }

    /// Must `open` re-learn the file's attributes from the service first?
    /// (They expired, and no write session holds a newer local view.)
    fn open_needs_refresh(node: &Inode) -> bool {
        let s = node.snapshot();
        s.etag.is_some()
            && s.expires <= Instant::now()
            && node.write.try_lock().map(|w| w.is_none()).unwrap_or(false)
    }

    /// A read-only handle pinned to the version the inode describes now.
    fn open_read_only(&self, node: &Inode) -> FsResult<u64> {
        let path = self.path_of(node.ino)?;
        let s = node.snapshot();
        let cpk = self.key_for(&path, s.cpk_sha256.as_deref())?;
        Ok(self.new_handle(node.ino, false, s.etag, s.attr.size, cpk))
    }

    /// `open` answered from memory: a read-only open of a file whose
    /// attributes are fresh. `None`: take [`Fs::open`].
    pub fn open_cached(&self, ino: u64, write: bool) -> Option<FsResult<u64>> {
        if write {
            return None;
        }
        let node = match self.openable(ino, false) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        if Self::open_needs_refresh(&node) {
            return None;
        }
        Some(self.open_read_only(&node))
    }

    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<u64> {
        let node = self.openable(ino, write)?;
        if Self::open_needs_refresh(&node) {
            self.getattr(ino).await?;
        }
        if !write {
            return self.open_read_only(&node);
        }
        let path = self.path_of(ino)?;
        let mut w = node.write.lock().await;
        // Read the state under the write lock: a commit by another handle
        // may have moved the ETag since any snapshot taken before it.
        let s = node.snapshot();
        let cpk = self.key_for(&path, s.cpk_sha256.as_deref())?;
        if w.is_none() {
            *w = Some(match &s.etag {
                Some(e) => WriteSession::existing(e.clone(), s.attr.size, cpk.clone()),
                None => WriteSession::new_empty(None),
            });
        }
        if truncate {
            let ws = w.as_mut().unwrap();
            if let Outcome::NeedsCommit = ws.truncate(&self.wctx, &path, 0).await? {
                unreachable!("truncation to zero never needs a commit");
            }
            let now = SystemTime::now();
            let mut st = node.state.lock().unwrap();
            st.attr.mtime = now;
            st.attr.ctime = now;
        }
        #[cfg(test)]
        super::pause::point("open: session decided").await;
        // Register the handle before the write lock is released: `release`
        // of another handle decides under this lock whether the session
        // still has writers, so it must see this one (issue #15: a handle
        // registered just after that check found no session and every
        // write through it failed with EBADF).
        Ok(self.new_handle(ino, true, s.etag, s.attr.size, cpk))
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Entry, u64)> {
        // The commit will carry If-None-Match: a blob left for descriptors
        // of an unlinked file of this name must go first.
        self.reclaim_name(&super::join(&self.path_of(parent)?, name))
            .await;
        let (node, attr) = self.create_node(parent, name, mode, uid, gid)?;
        let mut w = node.write.lock().await;
        Ok(self.open_created(&node, &mut w, parent, attr))
    }

    /// `create` done in memory, as it usually is: the new file is stored by
    /// its first close. `None` when a blob of this name still waits for the
    /// descriptors of an unlinked file (it must be deleted first), or the
    /// inode's write lock is busy: take [`Fs::create`].
    pub fn create_now(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Option<FsResult<(Entry, u64)>> {
        if self.name_has_deferred_delete(parent, name) {
            return None;
        }
        let (node, attr) = match self.create_node(parent, name, mode, uid, gid) {
            Ok(x) => x,
            Err(e) => return Some(Err(e)),
        };
        let mut w = node.write.try_lock().ok()?;
        Some(Ok(self.open_created(&node, &mut w, parent, attr)))
    }

    /// Check a create and put its inode in the table (uncommitted, so
    /// lookups find it). Doing this twice — the fast path, then the async
    /// one — leaves the same state.
    fn create_node(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(Arc<Inode>, Attr)> {
        super::check_name(name)?;
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        let pnode = self.node(parent)?;
        if pnode.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let attr = Attr::new(Kind::File, (mode & 0o7777) as u16, uid, gid);
        let st = super::inode::InodeState {
            parent,
            name: name.to_string(),
            attr,
            etag: None,
            cpk_sha256: self.key.as_ref().map(|k| k.sha256().to_string()),
            expires: self.expiry(),
            meta_known: true,
            unlinked: false,
            local_etag: None,
            local_times: false,
        };
        Ok((self.inodes.upsert(parent, name, st), attr))
    }

    /// Give a created inode its empty write session and a handle,
    /// registered under the write lock (`w`), as in `open`.
    fn open_created(
        &self,
        node: &Inode,
        w: &mut Option<WriteSession>,
        parent: u64,
        attr: Attr,
    ) -> (Entry, u64) {
        *w = Some(WriteSession::new_empty(None));
        let fh = self.new_handle(node.ino, true, None, 0, None);
        self.dir_changed(parent);
        (
            Entry {
                ino: node.ino,
                attr,
            },
            fh,
        )
    }

    /// (etag, size, key) a read of this handle uses: its pinned version, or
    /// the version our own last commit produced.
    fn read_version(
        &self,
        node: &Inode,
        h: &FileHandle,
    ) -> (Option<String>, u64, Option<Arc<CustomerKey>>) {
        let s = node.snapshot();
        let mut etag = h.etag.lock().unwrap();
        let mut cpk = h.cpk.lock().unwrap();
        if s.local_etag.is_some() && s.etag == s.local_etag && *etag != s.etag {
            *etag = s.etag.clone();
            *h.size.lock().unwrap() = s.attr.size;
            // Our commits are written with the mount's key, whatever the
            // pinned version had (none for a file created by this handle, or
            // a plain blob written by another tool): follow it, or the read
            // is refused (409 BlobUsesCustomerSpecifiedEncryption -> EACCES).
            *cpk = self.key.clone();
        }
        (etag.clone(), *h.size.lock().unwrap(), cpk.clone())
    }

    pub async fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let node = self.node(ino)?;
        let path = self.path_of(ino)?;
        {
            let mut w = node.write.lock().await;
            if let Some(ws) = w.as_mut() {
                if ws.is_dirty() {
                    return self.read_pending(&node, ws, &path, offset, size).await;
                }
            }
        }
        let (etag, fsize, cpk) = self.read_version(&node, &h);
        let Some(etag) = etag else {
            return Ok(Bytes::new());
        };
        match self
            .read_blob(&h, cpk, &path, &etag, fsize, offset, size as u64)
            .await
        {
            Ok(b) => {
                h.delivered.store(true, Ordering::Relaxed);
                Ok(b)
            }
            // Nothing was returned through this handle yet, and the version
            // it pinned is gone (replaced, or re-keyed by rotate-cpk, since
            // the attributes were cached): re-learn the blob and read the
            // current version. No bytes of two versions can mix.
            Err(e)
                if !h.delivered.load(Ordering::Relaxed)
                    && !matches!(e, FsError::NotFound | FsError::ForeignKey { .. }) =>
            {
                tracing::debug!(path = %path, error = %e, "first read failed; re-reading the blob's properties");
                match self
                    .reread_current(&node, &h, &path, &etag, offset, size as u64)
                    .await?
                {
                    Some(b) => {
                        h.delivered.store(true, Ordering::Relaxed);
                        Ok(b)
                    }
                    None => Err(e),
                }
            }
            Err(e) => {
                if matches!(e, FsError::Stale(_)) {
                    // This handle keeps failing (it has returned bytes of the
                    // old version), but the next open must not trust the
                    // cached attributes — nor serve the old version's cached
                    // blocks before failing in the same way.
                    let mut st = node.state.lock().unwrap();
                    if st.etag.as_deref() == Some(etag.as_str()) {
                        st.expires = Instant::now();
                    }
                }
                Err(e)
            }
        }
    }

    /// A read of a file with pending writes (the session locked by the
    /// caller): written ranges come from the session, the rest from the
    /// version it was based on. A plan that cannot be made (the layout is
    /// not known) commits first.
    async fn read_pending(
        &self,
        node: &Inode,
        ws: &mut WriteSession,
        path: &str,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let plan = match ws.read_plan(offset, size as u64) {
            Ok(p) => p,
            Err(_) => {
                self.commit_locked(node, ws, path).await?;
                ws.read_plan(offset, size as u64)
                    .map_err(|_| FsError::Failed("read after commit".into()))?
            }
        };
        let base = ws.base_etag().map(str::to_string);
        let mut out = BytesMut::with_capacity(size as usize);
        for p in plan {
            match p {
                ReadPiece::Data(b) => out.extend_from_slice(&b),
                ReadPiece::Base(a, b) => {
                    let cpk = self
                        .key_for(path, node.snapshot().cpk_sha256.as_deref())
                        .ok()
                        .flatten();
                    let (bytes, _) = self
                        .client
                        .read_range(
                            path,
                            ByteRange::new(a, b),
                            cpk.as_deref(),
                            &Conditions::if_match(base.clone().unwrap_or_default()),
                        )
                        .await?;
                    out.extend_from_slice(&bytes);
                }
            }
        }
        Ok(out.freeze())
    }

    /// The first read through `h` failed on the version `etag` it pinned:
    /// re-learn the blob and, if it is now another version, pin that one and
    /// read it. None: no other version to read (the first error stands).
    async fn reread_current(
        &self,
        node: &Inode,
        h: &FileHandle,
        path: &str,
        etag: &str,
        offset: u64,
        len: u64,
    ) -> FsResult<Option<Bytes>> {
        let s = node.snapshot();
        let fresh = self.lookup_remote(s.parent, &s.name, path).await?;
        if fresh.ino != node.ino {
            return Ok(None);
        }
        let s = node.snapshot();
        let cpk = self.key_for(path, s.cpk_sha256.as_deref())?;
        let Some(new_etag) = s.etag.clone() else {
            return Ok(None);
        };
        if new_etag == etag {
            return Ok(None);
        }
        *h.etag.lock().unwrap() = Some(new_etag.clone());
        *h.size.lock().unwrap() = s.attr.size;
        *h.cpk.lock().unwrap() = cpk.clone();
        let b = self
            .read_blob(h, cpk, path, &new_etag, s.attr.size, offset, len)
            .await?;
        Ok(Some(b))
    }

    /// `cpk` is the key the handle reads with, which came from the ring.
    fn block_key(&self, path: &str, etag: &str, index: u64, cpk: Option<&CustomerKey>) -> BlockKey {
        BlockKey {
            name: path.into(),
            etag: etag.into(),
            index,
            cpk_sha256: cpk.map(|k| k.sha256().into()),
        }
    }

    /// The length of block `index` of a file of `fsize` bytes.
    fn block_len(&self, fsize: u64, index: u64) -> usize {
        let b = self.cfg.block_size;
        (fsize.saturating_sub(index * b)).min(b) as usize
    }

    fn fetch_block(
        &self,
        path: &str,
        etag: &str,
        fsize: u64,
        index: u64,
        cpk: Option<Arc<CustomerKey>>,
    ) -> futures::future::BoxFuture<'static, super::cache::FetchResult> {
        let client = self.client.clone();
        let b = self.cfg.block_size;
        let (path, etag) = (path.to_string(), etag.to_string());
        async move {
            let start = index * b;
            let end = (start + b).min(fsize);
            match client.read_range(&path, ByteRange::new(start, end), cpk.as_deref(), &Conditions::if_match(etag.clone())).await {
                Ok((bytes, _)) if bytes.len() as u64 == end - start => Ok(bytes),
                Ok(_) => Err(Arc::new(FsError::Stale(format!("{path}: the blob is shorter than when it was opened")))),
                Err(e) if changed_under_pin(&e) => {
                    tracing::warn!(path = %path, etag = %etag, "blob changed since it was opened; failing the read with ESTALE");
                    Err(Arc::new(FsError::Stale(format!("{path}: the blob changed since it was opened (ETag {etag})"))))
                }
                Err(e) => Err(Arc::new(FsError::Blob(e))),
            }
        }
        .boxed()
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_blob(
        &self,
        h: &FileHandle,
        cpk: Option<Arc<CustomerKey>>,
        path: &str,
        etag: &str,
        fsize: u64,
        offset: u64,
        len: u64,
    ) -> FsResult<Bytes> {
        if offset >= fsize || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len).min(fsize);
        let window = self.readahead_window(h, offset, end);
        let b = self.cfg.block_size;
        let (first, last) = (offset / b, (end - 1) / b);
        if window == 0 && first == last {
            return self.read_random(path, etag, fsize, cpk, offset, end).await;
        }
        self.read_ahead(path, etag, fsize, &cpk, last, window);
        self.read_blocks(path, etag, fsize, cpk, offset, end, window > 0)
            .await
    }

    /// How many blocks to read ahead of a read of [offset, end) through
    /// `h`: doubling while its reads are sequential, 0 for a random read.
    fn readahead_window(&self, h: &FileHandle, offset: u64, end: u64) -> u64 {
        let b = self.cfg.block_size;
        let max_window = self
            .cfg
            .max_readahead_blocks
            .min((self.cfg.cache_size / b / 4).max(1));
        let mut seq = h.seq.lock().unwrap();
        let sequential = offset == 0 || offset == seq.0;
        let w = if sequential {
            (seq.1 * 2).clamp(1, max_window)
        } else {
            0
        };
        *seq = (end, w);
        w
    }

    /// A random read of [offset, end) within one block: serve it from the
    /// cache if the block is there (in memory, or on disk: a local read
    /// beats a round trip), otherwise fetch just the bytes asked for
    /// (without a disk tier).
    async fn read_random(
        &self,
        path: &str,
        etag: &str,
        fsize: u64,
        cpk: Option<Arc<CustomerKey>>,
        offset: u64,
        end: u64,
    ) -> FsResult<Bytes> {
        let first = offset / self.cfg.block_size;
        let key = self.block_key(path, etag, first, cpk.as_deref());
        let s = (offset - first * self.cfg.block_size) as usize;
        // With a disk tier, the block is served or fetched whole and
        // cached (memory, then disk when evicted): reads that arrive out
        // of order (several FUSE threads) would otherwise fetch ranges
        // that are never cached, and a second pass would fetch them
        // again. `get_or_fetch` looks in memory first and counts the
        // hit or miss once.
        if self.cache.on_disk(&key) || self.cache.disk().is_some_and(|d| d.is_enabled()) {
            let fetch = self.fetch_block(path, etag, fsize, first, cpk.clone());
            let len = self.block_len(fsize, first);
            let block = fetched(self.cache.get_or_fetch(key, len, move || fetch).await)?;
            return Ok(block.slice(s..s + (end - offset) as usize));
        }
        if let Some(block) = self.cache.lookup(&key) {
            return Ok(block.slice(s..s + (end - offset) as usize));
        }
        let (bytes, _) = self
            .client
            .read_range(
                path,
                ByteRange::new(offset, end),
                cpk.as_deref(),
                &Conditions::if_match(etag.to_string()),
            )
            .await
            .map_err(|e| {
                if changed_under_pin(&e) {
                    FsError::Stale(format!("{path}: the blob changed since it was opened"))
                } else {
                    e.into()
                }
            })?;
        Ok(bytes)
    }

    /// Start fetching the `window` blocks after block `last` into the
    /// cache, without waiting.
    fn read_ahead(
        &self,
        path: &str,
        etag: &str,
        fsize: u64,
        cpk: &Option<Arc<CustomerKey>>,
        last: u64,
        window: u64,
    ) {
        let nblocks = fsize.div_ceil(self.cfg.block_size);
        for i in last + 1..=(last + window).min(nblocks.saturating_sub(1)) {
            let key = self.block_key(path, etag, i, cpk.as_deref());
            if !self.cache.contains(&key) {
                // The mount's read-ahead budget is spent: the reader fetches
                // this block itself when it gets there.
                let Ok(permit) = self.readahead.clone().try_acquire_owned() else {
                    break;
                };
                let cache = self.cache.clone();
                let fetch = self.fetch_block(path, etag, fsize, i, cpk.clone());
                let len = self.block_len(fsize, i);
                tokio::spawn(async move {
                    let _ = cache.get_or_fetch(key, len, move || fetch).await;
                    drop(permit);
                });
            }
        }
    }

    /// [offset, end) from whole blocks, each from the cache or fetched into it.
    /// A `sequential` reader is done with a block once it has read its last
    /// byte: that block is evicted first (before blocks read ahead and not
    /// read yet, and before other files' blocks), so a stream larger than the
    /// cache neither pushes out what other readers still need nor costs
    /// parallel readers the blocks fetched ahead for them.
    #[allow(clippy::too_many_arguments)]
    async fn read_blocks(
        &self,
        path: &str,
        etag: &str,
        fsize: u64,
        cpk: Option<Arc<CustomerKey>>,
        offset: u64,
        end: u64,
        sequential: bool,
    ) -> FsResult<Bytes> {
        let b = self.cfg.block_size;
        let (first, last) = (offset / b, (end - 1) / b);
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for i in first..=last {
            let key = self.block_key(path, etag, i, cpk.as_deref());
            let fetch = self.fetch_block(path, etag, fsize, i, cpk.clone());
            let len = self.block_len(fsize, i);
            let block = fetched(
                self.cache
                    .get_or_fetch(key.clone(), len, move || fetch)
                    .await,
            )?;
            let bs = i * b;
            let s = offset.max(bs) - bs;
            let e = end.min(bs + block.len() as u64) - bs;
            if sequential && e == block.len() as u64 {
                self.cache.demote(&key);
            }
            if first == last {
                return Ok(block.slice(s as usize..e as usize));
            }
            out.extend_from_slice(&block[s as usize..e as usize]);
        }
        Ok(out.freeze())
    }

    /// A write that needs no waiting (see `WriteSession::try_append`), done
    /// on the caller's thread straight from the kernel's buffer; None when
    /// the write must go the async way.
    pub fn try_write_now(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> Option<u32> {
        let h = self.handle(fh).ok()?;
        if !h.writable {
            return None;
        }
        let node = self.node(ino).ok()?;
        let mut w = node.write.try_lock().ok()?;
        let ws = w.as_mut()?;
        if !ws.try_append(&self.wctx, offset, data) {
            return None;
        }
        Self::note_written(&node, &h, ws.size());
        Some(data.len() as u32)
    }

    pub async fn write(&self, ino: u64, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        let node = self.node(ino)?;
        let path = self.path_of(ino)?;
        let mut w = node.write.lock().await;
        let ws = w.as_mut().ok_or(FsError::BadHandle)?;
        loop {
            match ws
                .write(&self.wctx, &path, offset, data, self.key.as_ref())
                .await?
            {
                Outcome::Done => break,
                Outcome::NeedsCommit => {
                    let r = self.commit_locked(&node, ws, &path).await?;
                    let size = ws.size();
                    *ws = WriteSession::existing(r, size, self.key.clone());
                }
            }
        }
        Self::note_written(&node, &h, ws.size());
        Ok(data.len() as u32)
    }

    /// Set the size of the file whose session `ws` is (write lock held):
    /// extend with zeros or cut, committing first when the cut falls inside
    /// blocks already staged.
    async fn resize_locked(
        &self,
        node: &Inode,
        ws: &mut WriteSession,
        path: &str,
        size: u64,
    ) -> FsResult<()> {
        loop {
            match ws.truncate(&self.wctx, path, size).await? {
                Outcome::Done => return Ok(()),
                Outcome::NeedsCommit => {
                    let r = self.commit_locked(node, ws, path).await?;
                    let sz = ws.size();
                    *ws = WriteSession::existing(r, sz, self.key.clone());
                }
            }
        }
    }

    /// fallocate(2) on an open handle. Blob storage has no space to reserve
    /// and no holes, so mode 0 only extends the file with zeros to
    /// `offset + len` (never shrinks it) and `FALLOC_FL_KEEP_SIZE` alone has
    /// nothing to do. Punching holes and zeroing, collapsing or inserting
    /// ranges are refused with EOPNOTSUPP (callers such as glibc's
    /// posix_fallocate fall back on their own).
    pub async fn fallocate(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        len: u64,
        mode: i32,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.writable {
            return Err(FsError::BadHandle);
        }
        match mode {
            0 => {}
            libc::FALLOC_FL_KEEP_SIZE => return Ok(()),
            _ => {
                return Err(FsError::Unsupported(
                    "fallocate modes other than 0 and KEEP_SIZE (blobs have no holes)",
                ))
            }
        }
        let end = offset
            .checked_add(len)
            .ok_or(FsError::Invalid("fallocate range overflows"))?;
        let node = self.node(ino)?;
        let path = self.path_of(ino)?;
        let mut w = node.write.lock().await;
        let ws = w.as_mut().ok_or(FsError::BadHandle)?;
        if end > ws.size() {
            self.resize_locked(&node, ws, &path, end).await?;
            Self::note_written(&node, &h, ws.size());
        }
        Ok(())
    }

    /// copy_file_range(2) between two open handles of this mount: the
    /// source is read like `read` (block cache, read-ahead, or the pending
    /// writes of a file being written) and written into the destination's
    /// write session, so the bytes cross the FUSE boundary not at all instead
    /// of twice. Returns the bytes copied: fewer than asked at the source's
    /// end, and at most `MAX_COPY` per call (the kernel's reply is 32-bit and
    /// callers loop on short copies).
    #[allow(clippy::too_many_arguments)]
    pub async fn copy_file_range(
        &self,
        ino_in: u64,
        fh_in: u64,
        offset_in: u64,
        ino_out: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> FsResult<u32> {
        if !self.handle(fh_out)?.writable {
            return Err(FsError::BadHandle);
        }
        self.handle(fh_in)?;
        let len = len.min(MAX_COPY);
        let chunk = self.cfg.block_size.clamp(64 * 1024, MAX_COPY);
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(chunk);
            let data = self
                .read(ino_in, fh_in, offset_in + done, want as u32)
                .await?;
            if data.is_empty() {
                break;
            }
            self.write(ino_out, fh_out, offset_out + done, &data)
                .await?;
            done += data.len() as u64;
            if (data.len() as u64) < want {
                break; // the source ended
            }
        }
        Ok(done as u32)
    }

    /// After a write: the file's size and mtime, and the handle has written.
    fn note_written(node: &Inode, h: &FileHandle, size: u64) {
        let mut s = node.state.lock().unwrap();
        s.attr.size = size;
        let now = SystemTime::now();
        s.attr.mtime = now;
        s.attr.ctime = now;
        h.wrote.store(true, Ordering::Relaxed);
    }

    /// Commit the inode's pending writes, with its write lock held by the caller.
    /// Returns the new ETag.
    pub(super) async fn commit_locked(
        &self,
        node: &Inode,
        ws: &mut WriteSession,
        path: &str,
    ) -> FsResult<String> {
        let s = node.snapshot();
        if !ws.is_dirty() {
            return Ok(ws.base_etag().unwrap_or_default().to_string());
        }
        if s.unlinked {
            return Ok(String::new());
        }
        #[cfg(test)]
        super::pause::point_on("commit: sending", path).await;
        let mut attr = s.attr;
        attr.size = ws.size();
        let metadata = attr.to_metadata();
        let opts = CommitOptions {
            content_type: None,
            tags: self.attr_tags(&metadata, self.key.is_some()),
            metadata,
            conditions: Conditions::default(),
        };
        match ws.commit(&self.wctx, path, opts, self.key.as_ref()).await {
            Ok(r) => {
                tracing::debug!(path, etag = %r.etag, size = ws.size(), "committed");
                let mut st = node.state.lock().unwrap();
                st.etag = Some(r.etag.clone());
                st.local_etag = Some(r.etag.clone());
                st.cpk_sha256 = self.key.as_ref().map(|k| k.sha256().to_string());
                st.attr.size = ws.size();
                st.expires = self.expiry();
                st.meta_known = true;
                drop(st);
                self.inodes.clear_negative(s.parent, &s.name);
                Ok(r.etag)
            }
            Err(e) => {
                tracing::error!(path, error = %e, "commit failed: the previous version of the blob is unchanged");
                Err(e)
            }
        }
    }

    pub(super) async fn commit_inode(&self, node: &Inode) -> FsResult<()> {
        let mut w = node.write.lock().await;
        if let Some(ws) = w.as_mut() {
            if ws.is_dirty() || ws.failed().is_some() {
                let path = self.path_of(node.ino)?;
                self.commit_locked(node, ws, &path).await?;
            }
        }
        Ok(())
    }

    /// close() of one descriptor: commit what this file has pending, so that
    /// close returns 0 only when the data is committed — a new empty file
    /// (`touch`) included: its existence is what the caller was told. A shell's
    /// `echo x > f` therefore stores twice (its first close, after dup2, comes
    /// before the write); the kernel cannot tell that close from the last one.
    pub async fn flush(&self, ino: u64, fh: u64) -> FsResult<()> {
        if let Some(answer) = self.flush_cached(ino, fh) {
            return answer;
        }
        let node = self.node(ino)?;
        self.commit_inode(&node).await
    }

    /// A close with nothing to store: a read-only descriptor, or a file
    /// whose writes are all committed. `None`: something may be pending, or
    /// a commit is under way (its result is this close's) — take
    /// [`Fs::flush`].
    pub fn flush_cached(&self, ino: u64, fh: u64) -> Option<FsResult<()>> {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return Some(Err(e)),
        };
        if !h.writable {
            return Some(Ok(()));
        }
        let node = self.node(ino).ok()?;
        let w = node.write.try_lock().ok()?;
        match w.as_ref() {
            Some(ws) if ws.is_dirty() || ws.failed().is_some() => None,
            _ => Some(Ok(())),
        }
    }

    pub async fn fsync(&self, ino: u64, fh: u64) -> FsResult<()> {
        self.flush(ino, fh).await
    }

    /// A release with nothing to store and no blob to delete, done in
    /// memory. `None`: take [`Fs::release`].
    pub fn release_now(&self, ino: u64, fh: u64) -> Option<FsResult<()>> {
        let writable = match self.handles.lock().unwrap().get(&fh) {
            Some(h) => h.writable,
            None => return Some(Err(FsError::BadHandle)),
        };
        if self.has_deferred_delete(ino) {
            return None;
        }
        let node = match self.node(ino) {
            Ok(node) if writable => node,
            other => {
                self.handles.lock().unwrap().remove(&fh);
                self.inodes.release(ino, 1);
                return Some(other.map(|_| ()));
            }
        };
        // As in `release`: decided and unregistered under the write lock.
        let mut w = node.write.try_lock().ok()?;
        if w.as_ref()
            .is_some_and(|ws| ws.is_dirty() || ws.failed().is_some())
        {
            return None;
        }
        self.handles.lock().unwrap().remove(&fh);
        if !self.has_other_writer(ino) {
            *w = None;
            self.writing_stopped_maybe();
        }
        drop(w);
        self.inodes.release(ino, 1);
        Some(Ok(()))
    }

    /// The mount's last writable handle was just released: block buffers
    /// kept for the next block go back to the allocator.
    fn writing_stopped_maybe(&self) {
        if !self.handles.lock().unwrap().values().any(|h| h.writable) {
            self.wctx.buffers.clear();
        }
    }

    /// Does a writable handle of `ino` remain registered?
    fn has_other_writer(&self, ino: u64) -> bool {
        self.handles
            .lock()
            .unwrap()
            .values()
            .any(|o| o.ino == ino && o.writable)
    }

    pub async fn release(&self, ino: u64, fh: u64) -> FsResult<()> {
        let writable = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .map(|h| h.writable)
            .ok_or(FsError::BadHandle)?;
        let node = match self.node(ino) {
            Ok(node) if writable => node,
            other => {
                self.handles.lock().unwrap().remove(&fh);
                // The last descriptor of a file unlinked while open: its
                // blob goes now.
                self.release_unlinked(ino).await;
                self.inodes.release(ino, 1);
                return other.map(|_| ());
            }
        };
        // Commit and drop the session under one hold of the write lock: the
        // kernel sends RELEASE asynchronously after close(), so a chmod or
        // utimens (e.g. rsync's, right after closing its temp file) may
        // arrive meanwhile and only mark the session dirty for us to
        // commit. Releasing the lock in between would let that change be
        // dropped with the session.
        let mut w = node.write.lock().await;
        // Unregister under the write lock, the same lock `open` and `create`
        // register under: whether other writers remain is then decided on a
        // table no open can change meanwhile.
        self.handles.lock().unwrap().remove(&fh);
        let res = match w.as_mut() {
            Some(ws) if ws.is_dirty() || ws.failed().is_some() => match self.path_of(ino) {
                Ok(path) => self.commit_locked(&node, ws, &path).await.map(|_| ()),
                Err(e) => Err(e),
            },
            _ => Ok(()),
        };
        if !self.has_other_writer(ino) {
            *w = None;
            self.writing_stopped_maybe();
        }
        drop(w);
        self.release_unlinked(ino).await;
        // Last: the commit above still needed the inode's path.
        self.inodes.release(ino, 1);
        res
    }

    pub async fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Entry> {
        let node = self.node(ino)?;
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        let path = self.path_of(ino)?;
        let s = node.snapshot();
        if let Some(size) = set.size {
            if s.attr.kind != Kind::File {
                return Err(FsError::IsDir);
            }
            let cpk = self.key_for(&path, s.cpk_sha256.as_deref())?;
            let mut w = node.write.lock().await;
            let opened_here = w.is_none();
            if opened_here {
                *w = Some(match &s.etag {
                    Some(e) => WriteSession::existing(e.clone(), s.attr.size, cpk),
                    None => WriteSession::new_empty(None),
                });
            }
            let ws = w.as_mut().unwrap();
            self.resize_locked(&node, ws, &path, size).await?;
            {
                let now = SystemTime::now();
                let mut st = node.state.lock().unwrap();
                st.attr.size = size;
                st.attr.mtime = set.mtime.unwrap_or(now);
                st.attr.ctime = now;
            }
            if opened_here {
                let res = self.commit_locked(&node, ws, &path).await;
                *w = None;
                res?;
            }
        }
        if changes_meta(&set) {
            apply_meta(&node, &set);
            self.persist_attrs(&node, &path).await?;
        }
        let s = node.snapshot();
        let mut attr = s.attr;
        if let Ok(w) = node.write.try_lock() {
            if let Some(ws) = w.as_ref() {
                attr.size = ws.size();
            }
        }
        Ok(Entry { ino, attr })
    }

    /// A chmod/chown/utimens that memory completes: of a file whose pending
    /// writes (or whose creation) are not stored yet, so the change goes with
    /// their commit — `touch`'s futimens of the file it just created. `None`:
    /// a size change, or a change to store now ([`Fs::setattr`]).
    pub fn setattr_now(&self, ino: u64, set: SetAttr) -> Option<FsResult<Entry>> {
        if set.size.is_some() || !changes_meta(&set) {
            return None;
        }
        if self.cfg.read_only {
            return Some(Err(FsError::ReadOnly));
        }
        let node = match self.node(ino) {
            Ok(n) => n,
            Err(e) => return Some(Err(e)),
        };
        let mut w = node.write.try_lock().ok()?;
        let ws = w.as_mut()?;
        let pending = ws.base_etag().is_none() || ws.is_dirty() || ws.failed().is_some();
        if !pending || node.snapshot().unlinked {
            return None;
        }
        apply_meta(&node, &set);
        ws.mark_dirty();
        let mut attr = node.snapshot().attr;
        attr.size = ws.size();
        Some(Ok(Entry { ino, attr }))
    }

    /// Store the inode's mode/uid/gid/mtime in its blob's metadata.
    async fn persist_attrs(&self, node: &Inode, path: &str) -> FsResult<()> {
        if node.snapshot().unlinked {
            // fchmod/futimens of an unlinked file: nothing to store it in.
            return Ok(());
        }
        let mut w = node.write.lock().await;
        if let Some(ws) = w.as_mut() {
            match ws.base_etag() {
                // Content already committed (e.g. rsync's utimens between
                // close and release): change the metadata in place rather
                // than re-committing — which would copy the whole blob.
                Some(etag) if !ws.is_dirty() && ws.failed().is_none() => {
                    let etag = etag.to_string();
                    let new_etag = self.set_metadata_in_place(node, path, Some(etag)).await?;
                    ws.set_base_etag(new_etag);
                }
                // Pending writes: the metadata goes with their commit.
                _ => ws.mark_dirty(),
            }
            return Ok(());
        }
        drop(w);
        let s = node.snapshot();
        if node.ino == super::inode::ROOT_INO {
            return Ok(());
        }
        match (s.attr.kind, &s.etag) {
            (Kind::Dir, _) => {
                // Create or replace the directory marker (never encrypted, so
                // listings show it is a directory).
                let opts = CommitOptions {
                    content_type: None,
                    metadata: s.attr.to_metadata(),
                    conditions: Conditions::default(),
                    tags: None,
                };
                let r = self
                    .client
                    .put_blob(path, Bytes::new(), &opts, None)
                    .await?;
                let mut st = node.state.lock().unwrap();
                st.etag = Some(r.etag);
                st.expires = self.expiry();
                // The marker now holds the times entry changes moved.
                st.local_times = false;
            }
            (_, Some(_)) => {
                self.set_metadata_in_place(node, path, None).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Store the inode's mode/uid/gid/mtime with Set Blob Metadata and follow
    /// the new ETag (only metadata changed, so open handles may follow it).
    /// `etag`: the version to change; when it is one we committed ourselves
    /// all its metadata is ours, otherwise the current metadata is read first
    /// so what other tools set is kept. Returns the new ETag.
    async fn set_metadata_in_place(
        &self,
        node: &Inode,
        path: &str,
        etag: Option<String>,
    ) -> FsResult<String> {
        let s = node.snapshot();
        let cpk = self.key_for(path, s.cpk_sha256.as_deref())?;
        let mut md = s.attr.to_metadata();
        let target = match etag {
            Some(e) if s.local_etag.as_deref() == Some(e.as_str()) => e,
            other => {
                let cond = other.map(Conditions::if_match).unwrap_or_default();
                let current = self
                    .client
                    .get_blob_properties(path, cpk.as_deref(), &cond)
                    .await?;
                let mut merged = current.metadata;
                merged.extend(md);
                md = merged;
                current.etag
            }
        };
        let r = self
            .client
            .set_blob_metadata(path, &md, cpk.as_deref(), &Conditions::if_match(target))
            .await?;
        // Tags cannot be set in the same request; they follow, and a
        // failure fails the chmod/chown/utimens (the metadata, which a
        // keyed HEAD reads, is already right; SEMANTICS.md).
        if let Some(tags) = self.attr_tags(&md, cpk.is_some()) {
            self.client.set_blob_tags(path, &tags).await?;
        }
        let mut st = node.state.lock().unwrap();
        st.etag = Some(r.etag.clone());
        st.local_etag = Some(r.etag.clone());
        st.expires = self.expiry();
        Ok(r.etag)
    }
}

/// Does `set` change mode, owner or times?
fn changes_meta(set: &SetAttr) -> bool {
    set.mode.is_some()
        || set.uid.is_some()
        || set.gid.is_some()
        || set.mtime.is_some()
        || set.atime.is_some()
}

/// Apply the mode, owner and times of `set` to the inode (ctime moves).
fn apply_meta(node: &Inode, set: &SetAttr) {
    let mut st = node.state.lock().unwrap();
    if let Some(m) = set.mode {
        st.attr.perm = (m & 0o7777) as u16;
    }
    if let Some(u) = set.uid {
        st.attr.uid = u;
    }
    if let Some(g) = set.gid {
        st.attr.gid = g;
    }
    if let Some(t) = set.mtime {
        st.attr.mtime = t;
    }
    if let Some(t) = set.atime {
        st.attr.atime = t;
    }
    st.attr.ctime = SystemTime::now();
}

/// A block from the cache, its shared fetch error turned back into one of
/// this read's own, with the same errno.
fn fetched(r: super::cache::FetchResult) -> FsResult<Bytes> {
    r.map_err(|e| FsError::Failed(e.to_string()).with_errno_of(&e))
}

/// A read pinned with If-Match to the version a handle opened was refused
/// because that version is gone: 412, or a key mismatch — the key sent is the
/// one the pinned version was under, so a mismatch means the blob was
/// replaced or re-keyed since (rotate-cpk). The service may check the key
/// before the ETag, so both must read as ESTALE, not EACCES.
fn changed_under_pin(e: &cpkfs_blob::BlobError) -> bool {
    e.status() == Some(412)
        || e.is_code("BlobCustomerSpecifiedEncryptionMismatch")
        || matches!(e, cpkfs_blob::BlobError::Changed { .. })
}

impl FsError {
    /// Keep the errno of a shared (Arc) error when re-wrapping it.
    fn with_errno_of(self, e: &Arc<FsError>) -> FsError {
        match &**e {
            FsError::Stale(s) => FsError::Stale(s.clone()),
            FsError::ForeignKey { path, sha256 } => FsError::ForeignKey {
                path: path.clone(),
                sha256: sha256.clone(),
            },
            FsError::NotFound => FsError::NotFound,
            _ => self,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The write-handle bookkeeping driven directly (no kernel) against the
    //! in-process emulator.

    use super::super::pause;
    use super::super::{Fs, FsConfig};
    use cpkfs_blob::*;
    use cpkfs_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
    use std::sync::Arc;
    use std::time::Duration;

    async fn fs_on_emulator() -> (EmulatorHandle, Arc<Fs>) {
        let emu = emulator::start(EmulatorConfig::default()).await.unwrap();
        let cred = Credential::SharedKey(Arc::new(
            SharedKeyCredential::new(
                DEV_ACCOUNT,
                vec![AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
            )
            .unwrap(),
        ));
        let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, "handles", cred);
        cfg.ca_pem = emu.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
        cfg.retry.base_delay = Duration::from_millis(10);
        let client = BlobClient::new(cfg).unwrap();
        client.create_container().await.unwrap();
        let fs = Fs::new(
            client,
            FsConfig {
                block_size: 64 * 1024,
                keyring: crate::KeyRing::new(vec![Arc::new(CustomerKey::from_raw([7; 32]))]),
                ..FsConfig::default()
            },
        );
        (emu, fs)
    }

    /// Issue #15, the schedule fsx hit by chance: close() of one descriptor
    /// sends RELEASE asynchronously, and the next open() of the same file
    /// arrives meanwhile. The RELEASE is handled after the OPEN has decided
    /// to keep the existing write session but before the OPEN's handle was
    /// registered: with the session dropped, every write through the new
    /// descriptor failed with EBADF. The pause point holds the OPEN exactly
    /// there while the RELEASE runs as far as it can.
    #[tokio::test(flavor = "current_thread")]
    async fn release_racing_open_keeps_the_session_of_the_new_handle() {
        let (_emu, fs) = fs_on_emulator().await;
        let (e, a) = fs.create(1, "f", 0o644, 0, 0).await.unwrap();
        fs.write(e.ino, a, 0, b"first").await.unwrap();
        fs.flush(e.ino, a).await.unwrap();

        let (reached, resume) = pause::arm("open: session decided");
        let open_b = tokio::spawn({
            let fs = fs.clone();
            async move { fs.open(e.ino, true, false).await }
        });
        reached.await.unwrap();
        let release_a = tokio::spawn({
            let fs = fs.clone();
            async move { fs.release(e.ino, a).await }
        });
        // Let the RELEASE run until it finishes or waits for the write lock
        // (nothing else is runnable on this single-threaded runtime).
        for _ in 0..100 {
            if release_a.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        resume.send(()).unwrap();
        let b = open_b.await.unwrap().unwrap();
        release_a.await.unwrap().unwrap();

        fs.write(e.ino, b, 5, b" second").await.unwrap();
        fs.flush(e.ino, b).await.unwrap();
        let got = fs.read(e.ino, b, 0, 64).await.unwrap();
        assert_eq!(&got[..], b"first second");
        fs.release(e.ino, b).await.unwrap();
    }

    /// RELEASE commits what no flush did (writes after the last close of a
    /// dup, or through a mapping) asynchronously, after close() returned, so
    /// an UNLINK may arrive while that commit is in flight. The unlink waits
    /// for it and deletes what it stored: no blob outlives the name.
    #[tokio::test(flavor = "current_thread")]
    async fn unlink_waits_for_the_commit_of_a_release() {
        let (_emu, fs) = fs_on_emulator().await;
        let (e, a) = fs.create(1, "touched-then-rm", 0o644, 0, 0).await.unwrap();
        fs.write(e.ino, a, 0, b"pending").await.unwrap();

        let (reached, resume) = pause::arm_on("commit: sending", "touched-then-rm");
        let release = tokio::spawn({
            let fs = fs.clone();
            async move { fs.release(e.ino, a).await }
        });
        reached.await.unwrap();
        let unlink = tokio::spawn({
            let fs = fs.clone();
            async move { fs.unlink(1, "touched-then-rm").await }
        });
        // The commit is under way (the file is not unlinked yet): let the
        // UNLINK run until it finishes or waits for that commit.
        for _ in 0..100 {
            if unlink.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        resume.send(()).unwrap();
        release.await.unwrap().unwrap();
        unlink.await.unwrap().unwrap();
        let err = fs
            .client()
            .get_blob_properties("touched-then-rm", None, &Conditions::default())
            .await
            .unwrap_err();
        assert!(err.is_not_found(), "the blob outlived its unlink: {err}");
    }

    /// Two writable handles of one file: releasing one (after its close
    /// committed) leaves the other writing, and the last release ends the
    /// session after committing what is pending.
    #[tokio::test]
    async fn two_writers_share_one_session_until_the_last_release() {
        let (_emu, fs) = fs_on_emulator().await;
        let (e, a) = fs.create(1, "g", 0o644, 0, 0).await.unwrap();
        let b = fs.open(e.ino, true, false).await.unwrap();
        fs.write(e.ino, a, 0, b"aaaa").await.unwrap();
        fs.flush(e.ino, a).await.unwrap();
        fs.release(e.ino, a).await.unwrap();
        fs.write(e.ino, b, 4, b"bbbb").await.unwrap();
        // A write through a released handle is refused, not applied.
        assert!(matches!(
            fs.write(e.ino, a, 0, b"x").await,
            Err(super::FsError::BadHandle)
        ));
        fs.release(e.ino, b).await.unwrap();
        let r = fs.open(e.ino, false, false).await.unwrap();
        assert_eq!(&fs.read(e.ino, r, 0, 64).await.unwrap()[..], b"aaaabbbb");
        fs.release(e.ino, r).await.unwrap();
    }

    /// fallocate mode 0 extends with zeros and never shrinks; KEEP_SIZE is
    /// a no-op; hole punching is refused with EOPNOTSUPP.
    #[tokio::test]
    async fn fallocate_extends_only() {
        let (_emu, fs) = fs_on_emulator().await;
        let (e, a) = fs.create(1, "h", 0o644, 0, 0).await.unwrap();
        fs.write(e.ino, a, 0, b"head").await.unwrap();
        fs.fallocate(e.ino, a, 0, 100_000, 0).await.unwrap();
        fs.fallocate(e.ino, a, 0, 10, 0).await.unwrap();
        fs.fallocate(e.ino, a, 0, 500_000, libc::FALLOC_FL_KEEP_SIZE)
            .await
            .unwrap();
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let err = fs.fallocate(e.ino, a, 0, 4, punch).await.unwrap_err();
        assert_eq!(err.errno(), libc::EOPNOTSUPP);
        fs.release(e.ino, a).await.unwrap();
        assert_eq!(fs.getattr(e.ino).await.unwrap().attr.size, 100_000);
        let r = fs.open(e.ino, false, false).await.unwrap();
        let got = fs.read(e.ino, r, 0, 200_000).await.unwrap();
        let mut want = b"head".to_vec();
        want.resize(100_000, 0);
        assert!(got[..] == want[..], "fallocate: wrong content");
    }

    /// copy_file_range copies within one file and across files, and stops
    /// short at the source's end.
    #[tokio::test]
    async fn copy_file_range_copies_through_the_cache() {
        let (_emu, fs) = fs_on_emulator().await;
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (e, a) = fs.create(1, "src", 0o644, 0, 0).await.unwrap();
        fs.write(e.ino, a, 0, &data).await.unwrap();
        fs.release(e.ino, a).await.unwrap();
        let s = fs.open(e.ino, false, false).await.unwrap();
        let (d, w) = fs.create(1, "dst", 0o644, 0, 0).await.unwrap();
        // Asks for more than there is: the copy ends with the source.
        let n = fs
            .copy_file_range(e.ino, s, 0, d.ino, w, 0, 1 << 20)
            .await
            .unwrap();
        assert_eq!(n as usize, data.len());
        // Within one file, non-overlapping: dst[300000..300100] = dst[0..100].
        let n = fs
            .copy_file_range(d.ino, w, 0, d.ino, w, 300_000, 100)
            .await
            .unwrap();
        assert_eq!(n, 100);
        fs.release(d.ino, w).await.unwrap();
        let r = fs.open(d.ino, false, false).await.unwrap();
        let got = fs.read(d.ino, r, 0, 400_000).await.unwrap();
        let mut want = data.clone();
        want.extend_from_slice(&data[..100]);
        assert!(got[..] == want[..], "copy_file_range: wrong content");
    }

    /// A descriptor that has returned bytes of one version fails with ESTALE
    /// once the blob is replaced (or re-keyed) under it; the next open must
    /// read the new version whole, not the old version's cached blocks.
    #[tokio::test]
    async fn reopen_after_estale_reads_the_new_version() {
        let (_emu, fs) = fs_on_emulator().await;
        let key = Arc::new(CustomerKey::from_raw([7; 32]));
        let v1: Vec<u8> = (0..16 * 65536u32).map(|i| (i % 251) as u8).collect();
        let v2: Vec<u8> = (0..16 * 65536u32).map(|i| (i % 241) as u8).collect();
        let (e, fh) = fs.create(1, "r", 0o644, 0, 0).await.unwrap();
        fs.write(e.ino, fh, 0, &v1).await.unwrap();
        fs.release(e.ino, fh).await.unwrap();

        let a = fs.open(e.ino, false, false).await.unwrap();
        assert_eq!(
            &fs.read(e.ino, a, 0, 65536).await.unwrap()[..],
            &v1[..65536]
        );
        fs.client
            .put_blob("r", v2.clone().into(), &Default::default(), Some(&key))
            .await
            .unwrap();
        let err = fs.read(e.ino, a, 15 * 65536, 65536).await.unwrap_err();
        assert_eq!(err.errno(), libc::ESTALE, "{err}");
        fs.release(e.ino, a).await.unwrap();

        let b = fs.open(e.ino, false, false).await.unwrap();
        let mut got = Vec::new();
        loop {
            let chunk = fs.read(e.ino, b, got.len() as u64, 65536).await.unwrap();
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        fs.release(e.ino, b).await.unwrap();
        assert!(got == v2, "the reopened file is not the new version");
    }
}
