//! Namespace operations: mkdir, rmdir, unlink, symlink, readlink, rename.

use super::attr::{Attr, Kind};
use super::error::{FsError, FsResult};
use super::inode::InodeState;
use super::{check_name, join, Entry, Fs};
use bytes::Bytes;
use cpkfs_blob::{BlockIdGen, BlockRef, ByteRange, CommitOptions, Conditions, ListOptions};
use std::time::{Instant, SystemTime};

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
        let path = join(&self.path_of(parent)?, name);
        let attr = Attr::new(Kind::Dir, (mode & 0o7777) as u16, uid, gid);
        // Markers are written without the CPK so listings (which hide CPK
        // blobs' metadata) still show `hdi_isfolder`; they hold no data.
        let opts = CommitOptions {
            content_type: None,
            metadata: attr.to_metadata(),
            conditions: Conditions::default(),
        };
        let r = self
            .client
            .put_blob(&path, Bytes::new(), &opts, None)
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
        let opts = CommitOptions {
            content_type: None,
            metadata: attr.to_metadata(),
            conditions: Conditions::default(),
        };
        let r = self
            .client
            .put_blob(&path, Bytes::new(), &opts, None)
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
        let opts = CommitOptions {
            content_type: None,
            metadata: attr.to_metadata(),
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

    /// Copy one blob to a new name. Non-CPK blobs are copied server-side;
    /// CPK blobs cannot be (the service refuses), so they are streamed block
    /// by block through the client and re-committed with the mount's key.
    /// `set`: metadata to store over the source's (a non-CPK copy then
    /// stores exactly it).
    async fn copy_one(
        &self,
        src: &str,
        dst: &str,
        cpk_sha256: Option<&str>,
        set: Option<&cpkfs_blob::Metadata>,
    ) -> FsResult<String> {
        match cpk_sha256 {
            None => {
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
            Some(h) => {
                let key = self.key_for(src, Some(h))?;
                let props = self
                    .client
                    .get_blob_properties(src, key.as_deref(), &Conditions::default())
                    .await?;
                let mut metadata = props.metadata.clone();
                metadata.extend(set.cloned().unwrap_or_default());
                let opts = CommitOptions {
                    content_type: props.content_type.clone(),
                    metadata,
                    conditions: Conditions::default(),
                };
                let cond = Conditions::if_match(props.etag.clone());
                let b = self.cfg.block_size;
                if props.content_length <= b {
                    let (data, _) = self
                        .client
                        .read_range(src, ByteRange::from(0), key.as_deref(), &cond)
                        .await?;
                    return Ok(self
                        .client
                        .put_blob(dst, data, &opts, self.key.as_deref())
                        .await?
                        .etag);
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
                Ok(self
                    .client
                    .put_block_list(dst, &refs, &opts, self.key.as_deref())
                    .await?
                    .etag)
            }
        }
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
            if noreplace {
                return Err(FsError::Exists);
            }
            match (src.attr.kind == Kind::Dir, d.attr.kind == Kind::Dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) => {
                    let dpath = join(&self.path_of(new_parent)?, new_name);
                    if !self.dir_is_empty(d.ino, &dpath).await? {
                        return Err(FsError::NotEmpty);
                    }
                }
                _ => {}
            }
        }
        let src_path = join(&self.path_of(parent)?, name);
        let dst_path = join(&self.path_of(new_parent)?, new_name);
        if src.attr.kind == Kind::Dir && (dst_path.starts_with(&format!("{src_path}/"))) {
            return Err(FsError::Invalid("cannot move a directory into itself"));
        }
        let node = self.node(src.ino)?;
        if src.attr.kind == Kind::Dir {
            self.rename_dir(&src_path, &dst_path).await?;
            if let Some(d) = &dst {
                if let Ok(dn) = self.node(d.ino) {
                    let mut ds = dn.state.lock().unwrap();
                    ds.unlinked = true;
                    ds.attr.nlink = 0;
                }
                // The empty destination directory's marker is replaced.
            }
            self.inodes.remove_child(new_parent, new_name);
            self.inodes.rename(parent, name, new_parent, new_name);
            // Everything below now lives under new names: re-learn it.
            for n in self.inodes.all() {
                n.state.lock().unwrap().expires = Instant::now();
            }
            node.state.lock().unwrap().etag = None;
            self.dir_changed(parent);
            self.dir_changed(new_parent);
            return Ok(());
        }
        // A file or symlink: make sure its content is committed first.
        self.commit_inode(&node).await?;
        let s = node.snapshot();
        if let Some(etag) = &s.etag {
            // A rename changes the object's ctime (as on Linux filesystems).
            // Stored with the copy where the metadata is known whole: our
            // CPK blobs (merged over what the copy reads) and special files;
            // for other tools' plain blobs (their metadata is kept as is) it
            // stays in memory.
            let ctime = SystemTime::now();
            let set = (s.meta_known && (s.cpk_sha256.is_some() || s.attr.kind.is_special()))
                .then(|| Attr { ctime, ..s.attr }.to_metadata());
            let new_etag = self
                .copy_one(&src_path, &dst_path, s.cpk_sha256.as_deref(), set.as_ref())
                .await?;
            match self
                .client
                .delete_blob(&src_path, &Conditions::if_match(etag.clone()))
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::error!(from = %src_path, to = %dst_path, error = %e, "rename copied the blob but could not delete the source");
                    return Err(e.into());
                }
            }
            let mut st = node.state.lock().unwrap();
            st.etag = Some(new_etag.clone());
            st.local_etag = Some(new_etag);
            if st.cpk_sha256.is_some() {
                st.cpk_sha256 = self.key.as_ref().map(|k| k.sha256().to_string());
            }
        }
        if let Some(d) = &dst {
            if let Ok(dn) = self.node(d.ino) {
                let mut ds = dn.state.lock().unwrap();
                ds.unlinked = true;
                ds.attr.nlink = 0;
            }
        }
        self.inodes.remove_child(new_parent, new_name);
        self.inodes.rename(parent, name, new_parent, new_name);
        self.inodes.set_negative(parent, name, self.expiry());
        node.state.lock().unwrap().attr.ctime = SystemTime::now();
        self.dir_changed(parent);
        self.dir_changed(new_parent);
        Ok(())
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
            max_results: Some(5000),
            ..Default::default()
        });
        let mut failures = 0usize;
        let mut moved = 0usize;
        while let Some(page) = pager.next_page().await? {
            for b in page.blobs {
                let to = format!("{dst}{}", &b.name[src.len()..]);
                let res = async {
                    self.copy_one(&b.name, &to, b.properties.cpk_sha256.as_deref(), None)
                        .await?;
                    match self
                        .client
                        .delete_blob(&b.name, &Conditions::default())
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
                self.copy_one(src, dst, None, None).await?;
                let _ = self.client.delete_blob(src, &Conditions::default()).await;
            }
            Err(e) if e.is_not_found() => {
                // Implicit source: keep the destination a directory even if empty.
                let attr = Attr::new_dir(&self.cfg.defaults);
                let opts = CommitOptions {
                    content_type: None,
                    metadata: attr.to_metadata(),
                    conditions: Conditions::default(),
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
