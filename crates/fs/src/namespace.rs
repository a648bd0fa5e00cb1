//! Namespace operations: mkdir, rmdir, unlink, symlink, readlink, rename.

use super::attr::{Attr, Kind, META_CTIME};
use super::error::{FsError, FsResult};
use super::inode::{Inode, InodeState};
use super::{check_name, join, Entry, Fs};
use bytes::Bytes;
use cpkfs_blob::{
    BlobProperties, BlockIdGen, BlockRef, ByteRange, CommitOptions, Conditions, CopySource,
    CustomerKey, ListOptions,
};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Instant, SystemTime};

/// Copies of a CPK blob whose source keeps changing under the copy, before
/// the rename gives up with ESTALE.
const COPY_ATTEMPTS: u32 = 3;

/// What the mount knows about server-side copies of CPK blobs.
pub(crate) struct ServerCopy(AtomicU8);

impl Default for ServerCopy {
    fn default() -> Self {
        ServerCopy(AtomicU8::new(COPY_UNKNOWN))
    }
}

const COPY_UNKNOWN: u8 = 0;
const COPY_WORKS: u8 = 1;
const COPY_UNSUPPORTED: u8 = 2;

impl ServerCopy {
    fn unsupported(&self) -> bool {
        self.0.load(Ordering::Relaxed) == COPY_UNSUPPORTED
    }
    /// Record the outcome; true the first time the service is found wanting
    /// (the caller logs it, once per mount).
    fn record(&self, works: bool) -> bool {
        if works {
            self.0.store(COPY_WORKS, Ordering::Relaxed);
            false
        } else {
            self.0.swap(COPY_UNSUPPORTED, Ordering::Relaxed) != COPY_UNSUPPORTED
        }
    }
}

impl Fs {
    fn child_state(
        &self,
        parent: u64,
        name: &str,
        attr: Attr,
        etag: String,
        cpk: Option<String>,
    ) -> InodeState {
        InodeState {
            parent,
            name: name.to_string(),
            attr,
            etag: Some(etag.clone()),
            cpk_sha256: cpk,
            expires: self.expiry(),
            meta_known: true,
            unlinked: false,
            local_etag: Some(etag),
            local_times: false,
        }
    }

    async fn must_not_exist(&self, parent: u64, name: &str) -> FsResult<()> {
        match self.lookup(parent, name).await {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Entry> {
        check_name(name)?;
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        self.must_not_exist(parent, name).await?;
        // No blob lay under `name/` when the name was found absent, so the new
        // directory is empty as of then: its (empty) listing is held for as
        // long as that knowledge, and lookups of new names in it (every
        // create of a `cp -r` or `tar x`) are answered without a request.
        let empty_until = self.inodes.absent_until(parent, name);
        let path = join(&self.path_of(parent)?, name);
        let attr = Attr::new(Kind::Dir, (mode & 0o7777) as u16, uid, gid);
        let e = self.store_keyless_node(parent, name, &path, attr).await?;
        if let Some(until) = empty_until {
            self.inodes
                .mark_listed(e.ino, until, 1, std::time::Duration::ZERO);
        }
        Ok(e)
    }

    /// A FIFO, character or block device or unix socket: a zero-byte blob
    /// whose metadata says its type, mode, owner and `rdev` (the kernel does
    /// their I/O). Like directory markers they hold no data and are written
    /// without the key, so a listing shows what they are without a keyed HEAD.
    #[allow(clippy::too_many_arguments)]
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        kind: Kind,
        perm: u32,
        rdev: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<Entry> {
        check_name(name)?;
        if !kind.is_special() {
            return Err(FsError::Invalid(
                "mknod of a type that is not a special file",
            ));
        }
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        if self.node(parent)?.kind() != Kind::Dir {
            return Err(FsError::NotDir);
        }
        self.must_not_exist(parent, name).await?;
        let path = join(&self.path_of(parent)?, name);
        let attr = Attr {
            rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                rdev
            } else {
                0
            },
            ..Attr::new(kind, (perm & 0o7777) as u16, uid, gid)
        };
        self.store_keyless_node(parent, name, &path, attr).await
    }

    /// Write a zero-byte blob whose metadata is the whole node (a directory
    /// marker or a special file) and enter it in the tree. Written without
    /// the CPK so listings, which hide CPK blobs' metadata, still show what
    /// it is; such blobs hold no data.
    async fn store_keyless_node(
        &self,
        parent: u64,
        name: &str,
        path: &str,
        attr: Attr,
    ) -> FsResult<Entry> {
        let opts = CommitOptions {
            content_type: None,
            metadata: attr.to_metadata(),
            conditions: Conditions::default(),
            tags: None,
        };
        let r = self
            .client
            .put_blob(path, Bytes::new(), &opts, None)
            .await?;
        let node = self.inodes.upsert(
            parent,
            name,
            self.child_state(parent, name, attr, r.etag, None),
        );
        self.dir_changed(parent);
        Ok(Entry {
            ino: node.ino,
            attr,
        })
    }

    async fn dir_is_empty(&self, ino: u64, path: &str) -> FsResult<bool> {
        // Blobs unlinked while open are still stored but gone for this
        // mount: they do not count (a directory holds few of them, so one
        // small page tells).
        let page = self
            .client
            .list_blobs(&ListOptions {
                prefix: Some(format!("{path}/")),
                delimiter: Some("/".into()),
                max_results: Some(16),
                ..Default::default()
            })
            .await?;
        if !page.prefixes.is_empty()
            || page.next_marker.is_some()
            || page
                .blobs
                .iter()
                .any(|b| !self.is_unlinked_blob(&b.name, &b.properties.etag))
        {
            return Ok(false);
        }
        // Files created here but not committed yet count too.
        Ok(!self.inodes.children_of(ino).into_iter().any(|(_, n)| {
            let s = n.snapshot();
            !s.unlinked && s.etag.is_none() && s.attr.kind == Kind::File
        }))
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        let e = self.lookup(parent, name).await?;
        if e.attr.kind != Kind::Dir {
            return Err(FsError::NotDir);
        }
        let path = join(&self.path_of(parent)?, name);
        if !self.dir_is_empty(e.ino, &path).await? {
            return Err(FsError::NotEmpty);
        }
        // What is left are blobs unlinked while open: they go with it.
        let inside: Vec<u64> = self
            .deferred_deletes
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, (n, _))| n.starts_with(&format!("{path}/")))
            .map(|(i, _)| *i)
            .collect();
        for i in inside {
            self.delete_deferred(i).await;
        }
        match self.client.delete_blob(&path, &Conditions::default()).await {
            Ok(()) => {}
            Err(err) if err.is_not_found() => {} // an implicit directory
            Err(err) => return Err(err.into()),
        }
        if let Some(n) = self.inodes.remove_child(parent, name) {
            let mut s = n.state.lock().unwrap();
            s.unlinked = true;
            s.attr.nlink = 0;
        }
        self.inodes.set_negative(parent, name, self.expiry());
        self.dir_changed(parent);
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        let e = self.lookup(parent, name).await?;
        if e.attr.kind == Kind::Dir {
            return Err(FsError::IsDir);
        }
        let node = self.node(e.ino)?;
        let path = join(&self.path_of(parent)?, name);
        // A commit in flight (the RELEASE of a `touch`, which the kernel sends
        // after close() returned) decides whether there is a blob to delete:
        // wait for it, or the blob it stores would outlive the unlink.
        let _commit = node.write.lock().await;
        if let Some(etag) = node.snapshot().etag {
            let open = self
                .handles
                .lock()
                .unwrap()
                .values()
                .any(|h| h.ino == e.ino);
            if open {
                // Open descriptors keep reading it (POSIX): the blob goes
                // when the last one is released; this mount hides it now.
                self.deferred_deletes
                    .lock()
                    .unwrap()
                    .insert(e.ino, (path.clone(), etag));
            } else {
                match self.client.delete_blob(&path, &Conditions::default()).await {
                    Ok(()) => {}
                    Err(err) if err.is_not_found() => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        // Open handles keep working on their data; nothing is committed back.
        {
            let mut s = node.state.lock().unwrap();
            s.unlinked = true;
            // fstat of an open descriptor shows it is gone (no hard links:
            // this was the only name).
            s.attr.nlink = 0;
            s.attr.ctime = SystemTime::now();
        }
        self.inodes.remove_child(parent, name);
        self.inodes.set_negative(parent, name, self.expiry());
        self.dir_changed(parent);
        Ok(())
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> FsResult<Entry> {
        check_name(name)?;
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        self.must_not_exist(parent, name).await?;
        let path = join(&self.path_of(parent)?, name);
        let attr = Attr {
            size: target.len() as u64,
            ..Attr::new(Kind::Symlink, 0o777, uid, gid)
        };
        let metadata = attr.to_metadata();
        let opts = CommitOptions {
            content_type: None,
            tags: self.attr_tags(&metadata, self.key.is_some()),
            metadata,
            conditions: Conditions::default(),
        };
        let r = self
            .client
            .put_blob(
                &path,
                Bytes::copy_from_slice(target.as_bytes()),
                &opts,
                self.key.as_deref(),
            )
            .await?;
        let cpk = self.key.as_ref().map(|k| k.sha256().to_string());
        let node = self.inodes.upsert(
            parent,
            name,
            self.child_state(parent, name, attr, r.etag, cpk),
        );
        self.dir_changed(parent);
        Ok(Entry {
            ino: node.ino,
            attr,
        })
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Bytes> {
        let node = self.node(ino)?;
        let s = node.snapshot();
        if s.attr.kind != Kind::Symlink {
            return Err(FsError::Invalid("not a symlink"));
        }
        let path = self.path_of(ino)?;
        let cpk = self.key_for(&path, s.cpk_sha256.as_deref())?;
        let (b, _) = self
            .client
            .read_range(
                &path,
                ByteRange::from(0),
                cpk.as_deref(),
                &Conditions::default(),
            )
            .await?;
        Ok(b)
    }

    /// Copy a CPK blob to `dst` inside the service: one Put Blob From URL (≤ 256
    /// MiB) or Put Block From URL per range + Put Block List, reading the source
    /// with its own key (`src_key`, from the ring) and writing with the mount's
    /// current key — a blob under an old key is re-keyed on the way. The source is
    /// pinned by its ETag (`x-ms-source-if-match`): a blob replaced meanwhile fails
    /// the copy (412) instead of mixing versions. `Ok(None)`: the service cannot do
    /// it (no service version 2026-02-06 or no source keys), so the caller streams;
    /// this is learnt once per mount and logged once.
    async fn copy_on_server(
        &self,
        src: &str,
        dst: &str,
        props: &BlobProperties,
        src_key: Option<&CustomerKey>,
        opts: &CommitOptions,
    ) -> FsResult<Option<String>> {
        if self.server_copy.unsupported() {
            return Ok(None);
        }
        let source = CopySource {
            name: src,
            key: src_key,
            if_match: Some(&props.etag),
        };
        let res = self
            .client
            .copy_from_url(
                dst,
                &source,
                props.content_length,
                opts,
                self.key.as_deref(),
            )
            .await
            .map(|c| c.write.etag);
        match res {
            Ok(etag) => {
                self.server_copy.record(true);
                Ok(Some(etag))
            }
            Err(e) if e.is_source_cpk_unsupported() => {
                if self.server_copy.record(false) {
                    tracing::warn!(
                        error = %e,
                        "the service does not copy blobs with customer-provided keys (service version 2026-02-06 refused): renames and re-keying stream the data through this mount"
                    );
                }
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Copy one blob to a new name. Non-CPK blobs are copied server-side with
    /// Copy Blob; CPK blobs with Put Blob/Block From URL and the source's key
    /// where the service supports it ([`Fs::copy_on_server`]), otherwise they are
    /// streamed block by block through the client and re-committed with the
    /// mount's key.
    /// `set`: metadata to store over the source's (a non-CPK copy then
    /// stores exactly it).
    /// Returns the copy's ETag and, for CPK blobs, the ETag of the source
    /// version that was copied (the caller deletes exactly that version).
    async fn copy_one(
        &self,
        src: &str,
        dst: &str,
        cpk_sha256: Option<&str>,
        set: Option<&cpkfs_blob::Metadata>,
        known: Option<&str>,
    ) -> FsResult<(String, Option<String>)> {
        match cpk_sha256 {
            None => Ok((self.copy_plain(src, dst, set).await?, None)),
            Some(h) => {
                // A CPK copy is pinned to one version of the source, so a
                // writer replacing the source mid-copy fails it (412) rather
                // than mixing versions. The rename is of the name, not of a
                // version: copy the new version instead, a few times, before
                // giving up with ESTALE.
                let mut attempt = 1;
                loop {
                    match self.copy_cpk(src, dst, h, set, known).await {
                        Err(e) if e.is_source_changed() && attempt < COPY_ATTEMPTS => {
                            tracing::info!(from = %src, to = %dst, attempt, "the source changed during the copy; copying its new version");
                            attempt += 1;
                        }
                        Err(e) if e.is_source_changed() => {
                            return Err(FsError::Stale(format!(
                                "{src} kept changing while it was being renamed ({COPY_ATTEMPTS} attempts): {e}"
                            )))
                        }
                        r => return r.map(|(etag, source)| (etag, Some(source))),
                    }
                }
            }
        }
    }

    /// Server-side Copy Blob of a blob without CPK, waiting for a pending copy.
    async fn copy_plain(
        &self,
        src: &str,
        dst: &str,
        set: Option<&cpkfs_blob::Metadata>,
    ) -> FsResult<String> {
        let r = self.client.copy_blob(dst, src, set).await?;
        let mut status = r.copy_status.clone();
        let mut etag = r.etag.clone();
        let deadline = Instant::now() + std::time::Duration::from_secs(600);
        while status.as_deref() == Some("pending") {
            if Instant::now() > deadline {
                return Err(FsError::Failed(format!(
                    "copy of {src} to {dst} still pending after 10 minutes"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let p = self
                .client
                .get_blob_properties(dst, None, &Conditions::default())
                .await?;
            etag = Some(p.etag.clone());
            status = p.copy_status.clone();
            if status.as_deref() == Some("failed") || status.as_deref() == Some("aborted") {
                return Err(FsError::Failed(format!(
                    "copy of {src} to {dst} {}",
                    status.unwrap_or_default()
                )));
            }
        }
        Ok(etag.unwrap_or_default())
    }

    /// One attempt at copying the current version of a CPK blob: on the
    /// server where it can, else streamed. Every read of the source is pinned
    /// to the ETag its HEAD gave. Returns (copy's ETag, source ETag copied).
    /// `set` describes version `known` (the one the mount knew); another
    /// version keeps its own metadata, and only gets the rename's ctime.
    async fn copy_cpk(
        &self,
        src: &str,
        dst: &str,
        cpk_sha256: &str,
        set: Option<&cpkfs_blob::Metadata>,
        known: Option<&str>,
    ) -> FsResult<(String, String)> {
        let key = self.key_for(src, Some(cpk_sha256))?;
        let props = self
            .client
            .get_blob_properties(src, key.as_deref(), &Conditions::default())
            .await?;
        #[cfg(test)]
        super::pause::point_on("copy: source read", src).await;
        let mut metadata = props.metadata.clone();
        if let Some(set) = set {
            if known.is_none_or(|k| k == props.etag) {
                metadata.extend(set.clone());
            } else if let Some(ctime) = set.get(META_CTIME) {
                metadata.insert(META_CTIME.into(), ctime.clone());
            }
        }
        let opts = CommitOptions {
            content_type: props.content_type.clone(),
            tags: self.attr_tags(&metadata, key.is_some()),
            metadata,
            conditions: Conditions::default(),
        };
        if let Some(etag) = self
            .copy_on_server(src, dst, &props, key.as_deref(), &opts)
            .await?
        {
            return Ok((etag, props.etag));
        }
        let cond = Conditions::if_match(props.etag.clone());
        let b = self.cfg.block_size;
        if props.content_length <= b {
            let (data, _) = self
                .client
                .read_range(src, ByteRange::from(0), key.as_deref(), &cond)
                .await?;
            let w = self
                .client
                .put_blob(dst, data, &opts, self.key.as_deref())
                .await?;
            return Ok((w.etag, props.etag));
        }
        let ids = BlockIdGen::new();
        let mut refs = vec![];
        let mut off = 0;
        let mut seq = 0;
        while off < props.content_length {
            let end = (off + b).min(props.content_length);
            let (data, _) = self
                .client
                .read_range(src, ByteRange::new(off, end), key.as_deref(), &cond)
                .await?;
            let id = ids.id(seq);
            seq += 1;
            self.client
                .put_block(dst, &id, data, self.key.as_deref())
                .await?;
            refs.push(BlockRef::Uncommitted(id));
            off = end;
        }
        let w = self
            .client
            .put_block_list(dst, &refs, &opts, self.key.as_deref())
            .await?;
        Ok((w.etag, props.etag))
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        noreplace: bool,
    ) -> FsResult<()> {
        check_name(new_name)?;
        if self.cfg.read_only {
            return Err(FsError::ReadOnly);
        }
        let src = self.lookup(parent, name).await?;
        let dst = match self.lookup(new_parent, new_name).await {
            Ok(d) => Some(d),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if d.ino == src.ino {
                return Ok(());
            }
            self.check_replace(&src, d, new_parent, new_name, noreplace)
                .await?;
        }
        let src_path = join(&self.path_of(parent)?, name);
        let dst_path = join(&self.path_of(new_parent)?, new_name);
        if src.attr.kind == Kind::Dir && (dst_path.starts_with(&format!("{src_path}/"))) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        let node = self.node(src.ino)?;
        if src.attr.kind == Kind::Dir {
            self.rename_dir(&src_path, &dst_path).await?;
            // The empty destination directory's marker is replaced.
            self.mark_replaced(dst.as_ref());
            self.inodes.remove_child(new_parent, new_name);
            self.inodes.rename(parent, name, new_parent, new_name);
            // Everything below now lives under new names: re-learn it.
            for n in self.inodes.all() {
                n.state.lock().unwrap().expires = Instant::now();
            }
            node.state.lock().unwrap().etag = None;
        } else {
            // A file or symlink: make sure its content is committed first.
            self.commit_inode(&node).await?;
            self.move_file_blob(&node, &src_path, &dst_path).await?;
            self.mark_replaced(dst.as_ref());
            self.inodes.remove_child(new_parent, new_name);
            self.inodes.rename(parent, name, new_parent, new_name);
            self.inodes.set_negative(parent, name, self.expiry());
            node.state.lock().unwrap().attr.ctime = SystemTime::now();
        }
        self.dir_changed(parent);
        self.dir_changed(new_parent);
        Ok(())
    }

    /// Whether rename may replace `dst`, the entry at the new name, with
    /// `src` (rename(2)'s rules: a directory only by a directory, and only
    /// an empty one; nothing with RENAME_NOREPLACE).
    async fn check_replace(
        &self,
        src: &Entry,
        dst: &Entry,
        new_parent: u64,
        new_name: &str,
        noreplace: bool,
    ) -> FsResult<()> {
        if noreplace {
            return Err(FsError::Exists);
        }
        match (src.attr.kind == Kind::Dir, dst.attr.kind == Kind::Dir) {
            (true, false) => Err(FsError::NotDir),
            (false, true) => Err(FsError::IsDir),
            (true, true) => {
                let dpath = join(&self.path_of(new_parent)?, new_name);
                if !self.dir_is_empty(dst.ino, &dpath).await? {
                    return Err(FsError::NotEmpty);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The inode a rename replaced is gone: handles still open on it see
    /// an unlinked file.
    fn mark_replaced(&self, dst: Option<&Entry>) {
        if let Some(d) = dst {
            if let Ok(dn) = self.node(d.ino) {
                let mut ds = dn.state.lock().unwrap();
                ds.unlinked = true;
                ds.attr.nlink = 0;
            }
        }
    }

    /// Rename's move of a file's blob (committed by the caller): copy it to
    /// `dst_path`, delete the version copied, and point the inode at the
    /// copy. A file never stored (no ETag) has no blob to move.
    async fn move_file_blob(&self, node: &Inode, src_path: &str, dst_path: &str) -> FsResult<()> {
        let s = node.snapshot();
        let Some(etag) = &s.etag else {
            return Ok(());
        };
        // A rename changes the object's ctime (as on Linux filesystems).
        // Stored with the copy where the metadata is known whole: our
        // CPK blobs (merged over what the copy reads) and special files;
        // for other tools' plain blobs (their metadata is kept as is) it
        // stays in memory.
        let ctime = SystemTime::now();
        let set = (s.meta_known && (s.cpk_sha256.is_some() || s.attr.kind.is_special()))
            .then(|| Attr { ctime, ..s.attr }.to_metadata());
        let (new_etag, copied) = self
            .copy_one(
                src_path,
                dst_path,
                s.cpk_sha256.as_deref(),
                set.as_ref(),
                Some(etag.as_str()),
            )
            .await?;
        // Delete exactly the version that was copied: a source replaced
        // after the copy keeps its name (412), and nothing is lost.
        let copied = copied.unwrap_or_else(|| etag.clone());
        let other_version = copied != *etag;
        match self
            .client
            .delete_blob(src_path, &Conditions::if_match(copied))
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::error!(from = %src_path, to = %dst_path, error = %e, "rename copied the blob but could not delete the source");
                return Err(e.into());
            }
        }
        self.adopt_moved_blob(node, new_etag, other_version);
        Ok(())
    }

    /// Point a renamed file's inode at the blob written under its new name.
    fn adopt_moved_blob(&self, node: &Inode, new_etag: String, other_version: bool) {
        let mut st = node.state.lock().unwrap();
        st.etag = Some(new_etag.clone());
        st.local_etag = Some(new_etag);
        if other_version {
            // The blob moved was not the version this inode described
            // (replaced elsewhere or during the copy): re-learn it.
            st.expires = Instant::now();
            st.meta_known = false;
        }
        if st.cpk_sha256.is_some() {
            st.cpk_sha256 = self.key.as_ref().map(|k| k.sha256().to_string());
        }
    }

    /// Move every blob under `src/` to `dst/`, then the marker. Failures are
    /// logged per blob and reported as one error at the end.
    async fn rename_dir(&self, src: &str, dst: &str) -> FsResult<()> {
        // Pending writes below the directory go to the old names first.
        for n in self.inodes.all() {
            if let Some(p) = self.inodes.path(n.ino) {
                if p.starts_with(&format!("{src}/")) {
                    self.commit_inode(&n).await?;
                }
            }
        }
        let mut pager = self.client.list_pager(ListOptions {
            prefix: Some(format!("{src}/")),
            max_results: Some(self.cfg.list_page_size),
            ..Default::default()
        });
        let mut failures = 0usize;
        let mut moved = 0usize;
        while let Some(page) = pager.next_page().await? {
            for b in page.blobs {
                let to = format!("{dst}{}", &b.name[src.len()..]);
                let res = async {
                    let (_, copied) = self
                        .copy_one(&b.name, &to, b.properties.cpk_sha256.as_deref(), None, None)
                        .await?;
                    // Only the version copied (or, for a Copy Blob, the one
                    // listed) is deleted: a blob rewritten meanwhile keeps
                    // its old name and is reported, not lost.
                    let copied = copied.unwrap_or_else(|| b.properties.etag.clone());
                    match self
                        .client
                        .delete_blob(&b.name, &Conditions::if_match(copied))
                        .await
                    {
                        Ok(()) => Ok(()),
                        Err(e) if e.is_not_found() => Ok(()),
                        Err(e) => Err(FsError::from(e)),
                    }
                }
                .await;
                match res {
                    Ok(()) => moved += 1,
                    Err(e) => {
                        failures += 1;
                        tracing::error!(from = %b.name, to = %to, error = %e, "directory rename: could not move blob");
                    }
                }
            }
        }
        // The marker (if the directory has one).
        match self
            .client
            .get_blob_properties(src, None, &Conditions::default())
            .await
        {
            Ok(_) => {
                self.copy_one(src, dst, None, None, None).await?;
                let _ = self.client.delete_blob(src, &Conditions::default()).await;
            }
            Err(e) if e.is_not_found() => {
                // Implicit source: keep the destination a directory even if empty.
                let attr = Attr::new_dir(&self.cfg.defaults);
                let opts = CommitOptions {
                    content_type: None,
                    metadata: attr.to_metadata(),
                    conditions: Conditions::default(),
                    tags: None,
                };
                self.client.put_blob(dst, Bytes::new(), &opts, None).await?;
            }
            Err(e) => return Err(e.into()),
        }
        if failures > 0 {
            return Err(FsError::Failed(format!("directory rename {src} → {dst}: {failures} blob(s) could not be moved ({moved} moved); see the log")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Renames of CPK files against the in-process emulator, counting what moves
    //! over the wire (`/__admin/stats`).

    use super::super::{Fs, FsConfig};
    use cpkfs_blob::*;
    use cpkfs_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
    use std::sync::Arc;
    use std::time::Duration;

    struct Setup {
        emu: EmulatorHandle,
        fs: Arc<Fs>,
        /// A client of the same container holding the *old* key, to plant blobs
        /// under it and to read what the mount wrote.
        old: BlobClient,
        current: Arc<CustomerKey>,
        old_key: Arc<CustomerKey>,
        http: reqwest::Client,
    }

    fn client(emu: &EmulatorHandle, key: Arc<CustomerKey>) -> BlobClient {
        let cred = Credential::SharedKey(Arc::new(
            SharedKeyCredential::new(
                DEV_ACCOUNT,
                vec![AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
            )
            .unwrap(),
        ));
        let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, "rename", cred);
        cfg.ca_pem = emu.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
        cfg.cpk = Some(key);
        cfg.retry.base_delay = Duration::from_millis(10);
        BlobClient::new(cfg).unwrap()
    }

    async fn setup(emu_cfg: EmulatorConfig) -> Setup {
        let emu = emulator::start(emu_cfg).await.unwrap();
        let current = Arc::new(CustomerKey::from_raw([21; 32]));
        let old_key = Arc::new(CustomerKey::from_raw([12; 32]));
        let c = client(&emu, current.clone());
        c.create_container().await.unwrap();
        let fs = Fs::new(
            c,
            FsConfig {
                block_size: 256 * 1024,
                keyring: crate::KeyRing::new(vec![current.clone(), old_key.clone()]),
                ..FsConfig::default()
            },
        );
        let old = client(&emu, old_key.clone());
        let pem = emu.ca_pem.clone().unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
            .build()
            .unwrap();
        Setup {
            emu,
            fs,
            old,
            current,
            old_key,
            http,
        }
    }

    impl Setup {
        async fn reset_stats(&self) {
            let r = self
                .http
                .delete(format!("{}/__admin/stats", self.emu.url))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 204);
        }
        async fn stats(&self) -> serde_json::Value {
            let r = self
                .http
                .get(format!("{}/__admin/stats", self.emu.url))
                .send()
                .await
                .unwrap();
            serde_json::from_str(&r.text().await.unwrap()).unwrap()
        }
        async fn write_file(&self, parent: u64, name: &str, data: &[u8]) {
            let (e, fh) = self.fs.create(parent, name, 0o640, 0, 0).await.unwrap();
            self.fs.write(e.ino, fh, 0, data).await.unwrap();
            self.fs.flush(e.ino, fh).await.unwrap();
            self.fs.release(e.ino, fh).await.unwrap();
        }
        async fn read_file(&self, parent: u64, name: &str) -> Vec<u8> {
            let e = self.fs.lookup(parent, name).await.unwrap();
            let fh = self.fs.open(e.ino, false, false).await.unwrap();
            let mut out = Vec::new();
            loop {
                let b = self
                    .fs
                    .read(e.ino, fh, out.len() as u64, 1 << 20)
                    .await
                    .unwrap();
                if b.is_empty() {
                    break;
                }
                out.extend_from_slice(&b);
            }
            self.fs.release(e.ino, fh).await.unwrap();
            out
        }
        /// The key hash the service holds for `name` (a keyed HEAD with `key`).
        async fn key_of(&self, name: &str, key: &CustomerKey) -> Option<String> {
            self.old
                .get_blob_properties(name, Some(key), &Conditions::default())
                .await
                .unwrap()
                .cpk_sha256
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// A CPK file, a file under an old ring key and a directory are renamed by the
    /// service: no blob bytes move between the mount and the service, the data
    /// reads back, mode and mtime survive, and the old-key file ends under the
    /// current key.
    #[tokio::test]
    async fn rename_copies_cpk_blobs_on_the_server_and_rekeys() {
        let s = setup(EmulatorConfig::default()).await;
        let data = pattern(3 * 1024 * 1024 + 5, 1);
        s.write_file(1, "a.bin", &data).await;
        let before = s.fs.lookup(1, "a.bin").await.unwrap().attr;

        s.reset_stats().await;
        s.fs.rename(1, "a.bin", 1, "b.bin", false).await.unwrap();
        let st = s.stats().await;
        assert_eq!(st["requests"]["PutBlobFromUrl"], 1, "{st}");
        assert!(st["requests"].get("GetBlob").is_none(), "{st}");
        assert!(st["requests"].get("PutBlock").is_none(), "{st}");
        let moved = st["bytes_in"].as_u64().unwrap() + st["bytes_out"].as_u64().unwrap();
        assert!(moved < 64 * 1024, "{moved} bytes moved: {st}");
        assert!(s.read_file(1, "b.bin").await == data);
        assert!(matches!(
            s.fs.lookup(1, "a.bin").await,
            Err(super::FsError::NotFound)
        ));
        let after = s.fs.lookup(1, "b.bin").await.unwrap().attr;
        assert_eq!(after.perm, before.perm);
        assert_eq!(after.mtime, before.mtime);

        // A blob under the old key of the ring: renamed and re-keyed in one request.
        let old_data = pattern(700_000, 2);
        s.old
            .put_blob(
                "old.bin",
                bytes::Bytes::from(old_data.clone()),
                &CommitOptions::default(),
                Some(&s.old_key),
            )
            .await
            .unwrap();
        s.reset_stats().await;
        s.fs.rename(1, "old.bin", 1, "old-moved.bin", false)
            .await
            .unwrap();
        let st = s.stats().await;
        assert_eq!(st["requests"]["PutBlobFromUrl"], 1, "{st}");
        assert_eq!(st["bytes_in"], 0, "{st}");
        assert_eq!(
            s.key_of("old-moved.bin", &s.current).await.as_deref(),
            Some(s.current.sha256())
        );
        assert!(s.read_file(1, "old-moved.bin").await == old_data);

        // A directory with two CPK files.
        let d = s.fs.mkdir(1, "d", 0o755, 0, 0).await.unwrap();
        s.write_file(d.ino, "x", b"xx").await;
        s.write_file(d.ino, "y", &data).await;
        s.reset_stats().await;
        s.fs.rename(1, "d", 1, "e", false).await.unwrap();
        let st = s.stats().await;
        assert_eq!(st["requests"]["PutBlobFromUrl"], 2, "{st}");
        assert!(st["bytes_in"].as_u64().unwrap() < 64 * 1024, "{st}");
        let e = s.fs.lookup(1, "e").await.unwrap();
        assert!(s.read_file(e.ino, "y").await == data);
        assert_eq!(s.read_file(e.ino, "x").await, b"xx");
    }

    /// A service without version 2026-02-06: the first rename's Put Blob From URL
    /// is refused (400), the mount streams instead and never asks again.
    #[tokio::test]
    async fn rename_falls_back_to_streaming_once_per_mount() {
        let s = setup(EmulatorConfig {
            source_cpk: false,
            ..Default::default()
        })
        .await;
        let data = pattern(600_000, 3);
        s.write_file(1, "a", &data).await;
        s.write_file(1, "b", &data).await;
        s.reset_stats().await;
        s.fs.rename(1, "a", 1, "a2", false).await.unwrap();
        s.fs.rename(1, "b", 1, "b2", false).await.unwrap();
        let st = s.stats().await;
        assert_eq!(st["requests"]["PutBlobFromUrl"], 1, "asked once: {st}");
        assert!(st["requests"]["GetBlob"].as_u64().unwrap() >= 2, "{st}");
        assert!(
            st["bytes_in"].as_u64().unwrap() >= 2 * data.len() as u64,
            "{st}"
        );
        assert!(s.read_file(1, "a2").await == data);
        assert!(s.read_file(1, "b2").await == data);
    }

    /// The source is pinned by its ETag: a blob replaced after the mount learnt
    /// it is never copied in part. The copy fails (412) and nothing is written
    /// under the new name.
    #[tokio::test]
    async fn server_copy_refuses_a_source_that_changed() {
        let s = setup(EmulatorConfig::default()).await;
        let v1 = pattern(400_000, 4);
        s.old
            .put_blob(
                "f",
                bytes::Bytes::from(v1),
                &CommitOptions::default(),
                Some(&s.current),
            )
            .await
            .unwrap();
        let props = s
            .old
            .get_blob_properties("f", Some(&s.current), &Conditions::default())
            .await
            .unwrap();
        s.old
            .put_blob(
                "f",
                bytes::Bytes::from(pattern(400_000, 5)),
                &CommitOptions::default(),
                Some(&s.current),
            )
            .await
            .unwrap();
        let err =
            s.fs.copy_on_server(
                "f",
                "g",
                &props,
                Some(&s.current),
                &CommitOptions::default(),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("SourceConditionNotMet"), "{err}");
        let e = s
            .old
            .get_blob_properties("g", Some(&s.current), &Conditions::default())
            .await
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    /// A source replaced between the copy's HEAD and the copy itself (the
    /// pause point holds the rename there): the pinned copy fails, the rename
    /// copies the new version whole, on the server and when streaming, and
    /// deletes exactly that version. No mixed data, nothing left behind.
    #[tokio::test]
    async fn rename_of_a_source_replaced_mid_copy_moves_the_new_version_whole() {
        for (name, cfg) in [
            ("mid-copy-server", EmulatorConfig::default()),
            (
                "mid-copy-stream",
                EmulatorConfig {
                    source_cpk: false,
                    ..Default::default()
                },
            ),
        ] {
            let s = setup(cfg).await;
            let v1 = pattern(3 * 256 * 1024 + 7, 5);
            let v2 = pattern(2 * 256 * 1024 + 3, 6);
            s.write_file(1, name, &v1).await;
            let (reached, resume) = crate::pause::arm_on("copy: source read", name);
            let writer = async {
                reached.await.unwrap();
                s.old
                    .put_blob(
                        name,
                        bytes::Bytes::from(v2.clone()),
                        &CommitOptions::default(),
                        Some(&s.current),
                    )
                    .await
                    .unwrap();
                resume.send(()).unwrap();
            };
            s.reset_stats().await;
            let (r, ()) = tokio::join!(s.fs.rename(1, name, 1, "moved", false), writer);
            r.unwrap_or_else(|e| panic!("{name}: {e}"));
            let st = s.stats().await;
            // Two HEADs: the first copy was refused, the second copied v2.
            assert_eq!(st["requests"]["GetBlobProperties"], 2, "{name}: {st}");
            if name == "mid-copy-server" {
                assert_eq!(st["requests"]["PutBlobFromUrl"], 2, "{st}");
            }
            assert!(s.read_file(1, "moved").await == v2, "{name}: not v2 whole");
            let e = s
                .old
                .get_blob_properties(name, Some(&s.current), &Conditions::default())
                .await
                .unwrap_err();
            assert!(e.is_not_found(), "{name}: source left behind: {e}");
        }
    }
}
