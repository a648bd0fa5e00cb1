//! Pending writes of one file, as a list of extents covering `[0, size)`.
//!
//! An extent is a committed block that can be re-used by id, bytes of the
//! current blob that must be copied, zeros, a dirty buffer, or a block being
//! (or already) staged with Put Block. Sequential writes fill a buffer and
//! stage it as soon as it reaches the block size, so a large copy streams;
//! random writes do read-modify-write of one block-sized piece. A commit
//! (flush/fsync/close) turns the extents into one Put Block List — the old
//! blob stays in place until that single request succeeds.

use super::error::{FsError, FsResult};
use bytes::{Bytes, BytesMut};
use cpkfs_blob::{
    BlobClient, BlobError, BlockIdGen, BlockListType, BlockRef, ByteRange, CommitOptions,
    Conditions, CustomerKey, WriteResult,
};
use futures::stream::{self, StreamExt, TryStreamExt};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Azure's limit on committed blocks.
pub const MAX_BLOCKS: usize = 50_000;
/// Azure's limit on one block (since 2019-12-12).
const MAX_BLOCK_SIZE: u64 = 4000 * 1024 * 1024;

enum ExtState {
    Committed(String),
    Remote,
    Zero,
    Dirty(BytesMut),
    Uploading(String, JoinHandle<Result<(), BlobError>>),
    Staged(String),
}

struct Extent {
    start: u64,
    len: u64,
    state: ExtState,
}

impl Extent {
    fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// What the caller must do before the operation can proceed.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// The operation touches bytes already staged (not readable back from the
    /// service): commit, re-open the session on the new blob, and retry.
    NeedsCommit,
}

/// Shared limits for all files of a mount.
pub struct WriteContext {
    pub client: BlobClient,
    pub block_size: u64,
    /// Bounds blocks being uploaded at once (and so their memory).
    pub upload_slots: Arc<Semaphore>,
    /// Dirty bytes of one file above which full dirty blocks are staged early.
    pub max_dirty: u64,
    /// SHA-256 of the key commits are written with (None: no CPK).
    pub key_sha256: Option<String>,
    /// Last writer wins: commits carry no If-Match / If-None-Match.
    pub overwrite_conflicts: bool,
}

fn is_conflict(e: &BlobError) -> bool {
    e.status() == Some(412) || e.is_code("BlobAlreadyExists")
}

/// Store `body` as `name.cpkfs-conflict-<unix time>[-n]`, never replacing
/// anything. Returns the name used.
async fn save_beside(
    ctx: &WriteContext,
    name: &str,
    body: Bytes,
    mut opts: CommitOptions,
    key: Option<&Arc<CustomerKey>>,
) -> FsResult<String> {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    opts.conditions = Conditions::create_only();
    for n in 0..100 {
        let alt = if n == 0 {
            format!("{name}.cpkfs-conflict-{t}")
        } else {
            format!("{name}.cpkfs-conflict-{t}-{n}")
        };
        match ctx
            .client
            .put_blob(&alt, body.clone(), &opts, key.map(|k| &**k))
            .await
        {
            Ok(_) => return Ok(alt),
            Err(e) if e.is_code("BlobAlreadyExists") => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(FsError::Failed(format!("{name}: no free conflict name")))
}

pub struct WriteSession {
    /// ETag of the blob the extents describe (None: a new file).
    base_etag: Option<String>,
    base_cpk: Option<Arc<CustomerKey>>,
    extents: Vec<Extent>,
    size: u64,
    ids: BlockIdGen,
    seq: u64,
    zero_ids: Vec<(u64, String)>,
    dirty: bool,
    failed: Option<String>,
    layout_known: bool,
}

impl WriteSession {
    /// A session for a new (or truncated-to-zero) file.
    pub fn new_empty(base_etag: Option<String>) -> Self {
        WriteSession {
            base_etag,
            base_cpk: None,
            extents: vec![],
            size: 0,
            ids: BlockIdGen::new(),
            seq: 0,
            zero_ids: vec![],
            dirty: true,
            failed: None,
            layout_known: true,
        }
    }

    /// A session over an existing blob of `size` bytes; the block layout is
    /// learnt on the first modification.
    pub fn existing(etag: String, size: u64, base_cpk: Option<Arc<CustomerKey>>) -> Self {
        WriteSession {
            base_etag: Some(etag),
            base_cpk,
            extents: vec![],
            size,
            ids: BlockIdGen::new(),
            seq: 0,
            zero_ids: vec![],
            dirty: false,
            failed: None,
            layout_known: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
    pub fn base_etag(&self) -> Option<&str> {
        self.base_etag.as_deref()
    }
    pub fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }
    /// A commit replaces the version this session started from, or creates
    /// the blob if it started from nothing — unless the mount was configured
    /// for last-writer-wins.
    fn commit_conditions(&self, ctx: &WriteContext) -> Conditions {
        if ctx.overwrite_conflicts {
            return Conditions::default();
        }
        match &self.base_etag {
            Some(e) => Conditions::if_match(e.clone()),
            None => Conditions::create_only(),
        }
    }

    /// The blob's ETag changed without its content changing (Set Blob
    /// Metadata): the committed block list, and so the layout, still holds.
    pub fn set_base_etag(&mut self, etag: String) {
        self.base_etag = Some(etag);
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// Learn the committed block list so unchanged blocks can be re-used.
    async fn ensure_layout(&mut self, ctx: &WriteContext, name: &str) -> FsResult<()> {
        if self.layout_known {
            return Ok(());
        }
        let mut extents = vec![];
        if self.size > 0 {
            let list = ctx
                .client
                .get_block_list(name, BlockListType::Committed)
                .await?;
            let total: u64 = list.committed.iter().map(|b| b.size).sum();
            let id_len = self.ids.id(0).len();
            // A commit may only reference blocks encrypted with its own key
            // (the service answers 409 otherwise): blocks of a blob under an
            // older key, or without one, are copied instead of re-used.
            let same_key = self.base_cpk.as_ref().map(|k| k.sha256().to_string()) == ctx.key_sha256;
            let reusable = same_key
                && total == self.size
                && list.etag.as_deref() == self.base_etag.as_deref()
                && list.committed.iter().all(|b| b.id.len() == id_len);
            if reusable {
                let mut pos = 0;
                for b in list.committed {
                    extents.push(Extent {
                        start: pos,
                        len: b.size,
                        state: ExtState::Committed(b.id),
                    });
                    pos += b.size;
                }
            } else {
                extents.push(Extent {
                    start: 0,
                    len: self.size,
                    state: ExtState::Remote,
                });
            }
        }
        self.extents = extents;
        self.layout_known = true;
        Ok(())
    }

    fn find(&self, pos: u64) -> Option<usize> {
        let i = self.extents.partition_point(|e| e.end() <= pos);
        (i < self.extents.len() && self.extents[i].start <= pos).then_some(i)
    }

    /// Split the extent containing `pos` so that an extent starts at `pos`.
    fn split_at(&mut self, pos: u64) -> Result<(), ()> {
        let Some(i) = self.find(pos) else {
            return Ok(());
        };
        let e = &mut self.extents[i];
        if e.start == pos {
            return Ok(());
        }
        let left_len = pos - e.start;
        let right_state = match &mut e.state {
            ExtState::Committed(_) => {
                e.state = ExtState::Remote;
                ExtState::Remote
            }
            ExtState::Remote => ExtState::Remote,
            ExtState::Zero => ExtState::Zero,
            ExtState::Dirty(buf) => ExtState::Dirty(buf.split_off(left_len as usize)),
            ExtState::Uploading(..) | ExtState::Staged(_) => return Err(()),
        };
        let right = Extent {
            start: pos,
            len: e.len - left_len,
            state: right_state,
        };
        e.len = left_len;
        self.extents.insert(i + 1, right);
        Ok(())
    }

    /// Block size for a new extent: grows past 10,000 blocks so a file never
    /// hits Azure's 50,000-block limit before ~1 TiB (with 8 MiB blocks).
    fn grow_size(&self, ctx: &WriteContext) -> u64 {
        (ctx.block_size * (1 + self.extents.len() as u64 / 10_000)).min(MAX_BLOCK_SIZE)
    }

    fn dirty_bytes(&self) -> u64 {
        self.extents
            .iter()
            .filter(|e| matches!(e.state, ExtState::Dirty(_)))
            .map(|e| e.len)
            .sum()
    }

    async fn start_upload(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        i: usize,
        key: Option<&Arc<CustomerKey>>,
    ) {
        let id = self.ids.id(self.seq);
        self.seq += 1;
        let ExtState::Dirty(buf) = std::mem::replace(&mut self.extents[i].state, ExtState::Remote)
        else {
            unreachable!("only dirty extents are uploaded")
        };
        let permit = ctx
            .upload_slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let client = ctx.client.clone();
        let (name, key, bid) = (name.to_string(), key.cloned(), id.clone());
        let body = buf.freeze();
        let task = tokio::spawn(async move {
            let r = client.put_block(&name, &bid, body, key.as_deref()).await;
            drop(permit);
            r
        });
        self.extents[i].state = ExtState::Uploading(id, task);
    }

    /// Load the bytes of `[start, start+len)` of the base blob.
    async fn load(
        &self,
        ctx: &WriteContext,
        name: &str,
        start: u64,
        len: u64,
    ) -> FsResult<BytesMut> {
        let cond = Conditions::if_match(self.base_etag.clone().unwrap_or_default());
        let (bytes, _) = ctx
            .client
            .read_range(
                name,
                ByteRange::new(start, start + len),
                self.base_cpk.as_deref(),
                &cond,
            )
            .await?;
        if bytes.len() as u64 != len {
            return Err(FsError::Stale(format!(
                "{name}: short read while loading a block for modification"
            )));
        }
        Ok(BytesMut::from(&bytes[..]))
    }

    /// Make the extent covering `pos` a dirty buffer of at most one block.
    async fn make_dirty(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        pos: u64,
    ) -> FsResult<Option<usize>> {
        let i = self.find(pos).expect("pos inside the file");
        if matches!(self.extents[i].state, ExtState::Dirty(_)) {
            return Ok(Some(i));
        }
        if matches!(
            self.extents[i].state,
            ExtState::Uploading(..) | ExtState::Staged(_)
        ) {
            return Ok(None);
        }
        let e = &self.extents[i];
        let b = ctx.block_size;
        let g0 = (pos / b * b).max(e.start);
        let g1 = (g0 + b).min(e.end());
        // An extent of exactly one committed block is loaded whole.
        let (g0, g1) = if e.len <= b {
            (e.start, e.end())
        } else {
            (g0, g1)
        };
        if self.split_at(g0).is_err() || self.split_at(g1).is_err() {
            return Ok(None);
        }
        let i = self.find(g0).unwrap();
        let len = self.extents[i].len;
        let buf = match self.extents[i].state {
            ExtState::Zero => BytesMut::zeroed(len as usize),
            _ => self.load(ctx, name, g0, len).await?,
        };
        self.extents[i].state = ExtState::Dirty(buf);
        Ok(Some(i))
    }

    /// Append zeros up to `new_size`.
    fn extend_zero(&mut self, ctx: &WriteContext, new_size: u64) {
        while self.size < new_size {
            let gap = new_size - self.size;
            let cap = self.grow_size(ctx);
            if let Some(last) = self.extents.last_mut() {
                if let ExtState::Dirty(buf) = &mut last.state {
                    let room = cap.saturating_sub(last.len);
                    if room > 0 {
                        let n = room.min(gap);
                        buf.resize(buf.len() + n as usize, 0);
                        last.len += n;
                        self.size += n;
                        continue;
                    }
                }
                if let ExtState::Zero = last.state {
                    last.len += gap;
                    self.size += gap;
                    continue;
                }
            }
            self.extents.push(Extent {
                start: self.size,
                len: gap,
                state: ExtState::Zero,
            });
            self.size += gap;
        }
    }

    pub async fn write(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        offset: u64,
        data: &[u8],
        key: Option<&Arc<CustomerKey>>,
    ) -> FsResult<Outcome> {
        if let Some(f) = &self.failed {
            return Err(FsError::Failed(f.clone()));
        }
        self.ensure_layout(ctx, name).await?;
        let end = offset + data.len() as u64;
        if offset > self.size {
            self.extend_zero(ctx, offset);
        }
        // Overwrite within the current size.
        let mut pos = offset;
        while pos < end.min(self.size) {
            let Some(i) = self.make_dirty(ctx, name, pos).await? else {
                return Ok(Outcome::NeedsCommit);
            };
            let e = &mut self.extents[i];
            let upto = end.min(e.end());
            let ExtState::Dirty(buf) = &mut e.state else {
                unreachable!()
            };
            let from = (pos - e.start) as usize;
            buf[from..from + (upto - pos) as usize]
                .copy_from_slice(&data[(pos - offset) as usize..(upto - offset) as usize]);
            pos = upto;
        }
        // Append.
        while pos < end {
            let cap = self.grow_size(ctx);
            let need_new = match self.extents.last() {
                Some(Extent {
                    state: ExtState::Dirty(_),
                    len,
                    ..
                }) => *len >= cap,
                _ => true,
            };
            if need_new {
                // A large write, or a file already past one block, is a
                // streaming writer: take the whole block now rather than
                // growing the buffer 1→2→4→8 MiB (each growth copies it).
                // Small files keep small buffers.
                let streaming = end - pos >= 512 * 1024 || self.size >= ctx.block_size;
                let want = if streaming {
                    cap
                } else {
                    (end - pos).max(64 * 1024).min(cap)
                };
                self.extents.push(Extent {
                    start: self.size,
                    len: 0,
                    state: ExtState::Dirty(BytesMut::with_capacity(want as usize)),
                });
            }
            let last = self.extents.last_mut().unwrap();
            let n = (cap - last.len).min(end - pos);
            let ExtState::Dirty(buf) = &mut last.state else {
                unreachable!()
            };
            buf.extend_from_slice(&data[(pos - offset) as usize..(pos - offset + n) as usize]);
            last.len += n;
            self.size += n;
            pos += n;
            if last.len >= cap {
                let i = self.extents.len() - 1;
                self.start_upload(ctx, name, i, key).await;
            }
        }
        self.dirty = true;
        // Bound memory under random writes: stage full dirty blocks early.
        if self.dirty_bytes() > ctx.max_dirty {
            for i in 0..self.extents.len() {
                let full = matches!(self.extents[i].state, ExtState::Dirty(_))
                    && self.extents[i].len >= ctx.block_size;
                if full {
                    self.start_upload(ctx, name, i, key).await;
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// The common case of a sequential writer, done without awaiting: append
    /// `data` at the end of the file into the last dirty block when it fits
    /// without filling the block (filling it starts an upload, which may
    /// wait for a slot). Returns false, changing nothing, otherwise.
    pub fn try_append(&mut self, ctx: &WriteContext, offset: u64, data: &[u8]) -> bool {
        if self.failed.is_some() || !self.layout_known || offset != self.size || data.is_empty() {
            return false;
        }
        let cap = self.grow_size(ctx);
        let Some(last) = self.extents.last_mut() else {
            return false;
        };
        let ExtState::Dirty(buf) = &mut last.state else {
            return false;
        };
        if last.len + (data.len() as u64) >= cap {
            return false;
        }
        buf.extend_from_slice(data);
        last.len += data.len() as u64;
        self.size += data.len() as u64;
        self.dirty = true;
        true
    }

    pub async fn truncate(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        new_size: u64,
    ) -> FsResult<Outcome> {
        if let Some(f) = &self.failed {
            return Err(FsError::Failed(f.clone()));
        }
        if new_size == self.size {
            self.dirty = true;
            return Ok(Outcome::Done);
        }
        if new_size == 0 {
            self.abandon();
            self.extents.clear();
            self.size = 0;
            self.layout_known = true;
            self.dirty = true;
            return Ok(Outcome::Done);
        }
        self.ensure_layout(ctx, name).await?;
        if new_size > self.size {
            self.extend_zero(ctx, new_size);
        } else {
            if self.split_at(new_size).is_err() {
                return Ok(Outcome::NeedsCommit);
            }
            let keep = self.extents.partition_point(|e| e.end() <= new_size);
            for e in self.extents.drain(keep..) {
                if let ExtState::Uploading(_, t) = e.state {
                    t.abort();
                }
            }
            self.size = new_size;
        }
        self.dirty = true;
        Ok(Outcome::Done)
    }

    fn abandon(&mut self) {
        for e in self.extents.drain(..) {
            if let ExtState::Uploading(_, t) = e.state {
                t.abort();
            }
        }
    }

    /// Bytes for a read of `[offset, offset+len)` from local state: Some(bytes)
    /// when every touched extent is local, otherwise a list of what to do.
    pub fn read_plan(&self, offset: u64, len: u64) -> Result<Vec<ReadPiece>, Outcome> {
        let end = (offset + len).min(self.size);
        let mut out = vec![];
        if !self.layout_known {
            if offset < end {
                out.push(ReadPiece::Base(offset, end));
            }
            return Ok(out);
        }
        let mut pos = offset;
        while pos < end {
            let Some(i) = self.find(pos) else { break };
            let e = &self.extents[i];
            let upto = end.min(e.end());
            match &e.state {
                ExtState::Dirty(buf) => {
                    let a = (pos - e.start) as usize;
                    out.push(ReadPiece::Data(Bytes::copy_from_slice(
                        &buf[a..a + (upto - pos) as usize],
                    )));
                }
                ExtState::Zero => out.push(ReadPiece::Data(Bytes::from(vec![
                    0u8;
                    (upto - pos) as usize
                ]))),
                ExtState::Committed(_) | ExtState::Remote => out.push(ReadPiece::Base(pos, upto)),
                ExtState::Uploading(..) | ExtState::Staged(_) => return Err(Outcome::NeedsCommit),
            }
            pos = upto;
        }
        Ok(out)
    }

    /// Commit everything with one Put Block List (or a Put Blob for a small
    /// file written whole). On failure the session is marked failed and every
    /// later flush reports it.
    pub async fn commit(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        opts: CommitOptions,
        key: Option<&Arc<CustomerKey>>,
    ) -> FsResult<WriteResult> {
        if let Some(f) = &self.failed {
            return Err(FsError::Failed(f.clone()));
        }
        match self.commit_inner(ctx, name, opts, key).await {
            Ok(r) => {
                self.base_etag = Some(r.etag.clone());
                self.base_cpk = key.cloned();
                self.dirty = false;
                // Zero blocks were consumed by the commit; stage anew next time.
                self.zero_ids.clear();
                Ok(r)
            }
            Err(e) => {
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    async fn commit_inner(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        mut opts: CommitOptions,
        key: Option<&Arc<CustomerKey>>,
    ) -> FsResult<WriteResult> {
        self.ensure_layout(ctx, name).await?;
        // Wait for blocks in flight.
        for e in self.extents.iter_mut() {
            if let ExtState::Uploading(..) = e.state {
                let ExtState::Uploading(id, task) =
                    std::mem::replace(&mut e.state, ExtState::Remote)
                else {
                    unreachable!()
                };
                match task.await {
                    Ok(Ok(())) => e.state = ExtState::Staged(id),
                    Ok(Err(err)) => return Err(err.into()),
                    Err(join) => {
                        return Err(FsError::Failed(format!("block upload task failed: {join}")))
                    }
                }
            }
        }
        // A small file made only of local bytes goes up in one Put Blob.
        let all_local = self
            .extents
            .iter()
            .all(|e| matches!(e.state, ExtState::Dirty(_) | ExtState::Zero));
        if all_local && self.size <= ctx.block_size {
            let mut body = BytesMut::with_capacity(self.size as usize);
            for e in &self.extents {
                match &e.state {
                    ExtState::Dirty(b) => body.extend_from_slice(b),
                    _ => body.resize(body.len() + e.len as usize, 0),
                }
            }
            opts.conditions = self.commit_conditions(ctx);
            let body = body.freeze();
            let r = match ctx
                .client
                .put_blob(name, body.clone(), &opts, key.map(|k| &**k))
                .await
            {
                Err(e) if is_conflict(&e) => {
                    // Another writer got there first: keep both versions —
                    // theirs under the name, ours beside it — and fail close.
                    let saved = save_beside(ctx, name, body, opts, key).await?;
                    return Err(FsError::Conflict {
                        path: name.to_string(),
                        saved_as: Some(saved),
                    });
                }
                other => other?,
            };
            // The blob has no committed block list: later edits copy it.
            self.extents = vec![];
            self.layout_known = self.size == 0;
            return Ok(r);
        }
        // Split zero and remote extents into block-sized pieces.
        let mut pieces: Vec<Extent> = Vec::with_capacity(self.extents.len());
        for e in self.extents.drain(..) {
            match e.state {
                ExtState::Zero | ExtState::Remote => {
                    let mut s = e.start;
                    while s < e.end() {
                        let n = ctx.block_size.min(e.end() - s);
                        let st = match e.state {
                            ExtState::Zero => ExtState::Zero,
                            _ => ExtState::Remote,
                        };
                        pieces.push(Extent {
                            start: s,
                            len: n,
                            state: st,
                        });
                        s += n;
                    }
                }
                _ => pieces.push(e),
            }
        }
        self.extents = pieces;
        if self.extents.len() > MAX_BLOCKS {
            return Err(FsError::TooLarge(format!(
                "{name}: {} blocks exceed Azure's limit of {MAX_BLOCKS}",
                self.extents.len()
            )));
        }
        // Stage what is not staged yet, a few blocks at a time.
        let keyref = key.map(|k| &**k);
        let mut jobs = vec![];
        for (i, e) in self.extents.iter().enumerate() {
            match &e.state {
                ExtState::Dirty(_) | ExtState::Remote => jobs.push(i),
                ExtState::Zero if !self.zero_ids.iter().any(|(l, _)| *l == e.len) => {
                    let id = self.ids.id(self.seq);
                    self.seq += 1;
                    ctx.client
                        .put_block(name, &id, Bytes::from(vec![0u8; e.len as usize]), keyref)
                        .await?;
                    self.zero_ids.push((e.len, id));
                }
                _ => {}
            }
        }
        let base_etag = self.base_etag.clone();
        let base_cpk = self.base_cpk.clone();
        let mut work = vec![];
        for i in jobs {
            let id = self.ids.id(self.seq);
            self.seq += 1;
            let e = &mut self.extents[i];
            let body = match std::mem::replace(&mut e.state, ExtState::Remote) {
                ExtState::Dirty(b) => Some(b.freeze()),
                _ => None,
            };
            work.push((i, id, e.start, e.len, body));
        }
        let client = &ctx.client;
        let staged: Vec<(usize, String)> = stream::iter(work)
            .map(|(i, id, start, len, body)| {
                let base_etag = base_etag.clone();
                let base_cpk = base_cpk.clone();
                async move {
                    let body = match body {
                        Some(b) => b,
                        None => {
                            let cond = Conditions::if_match(base_etag.unwrap_or_default());
                            client
                                .read_range(
                                    name,
                                    ByteRange::new(start, start + len),
                                    base_cpk.as_deref(),
                                    &cond,
                                )
                                .await?
                                .0
                        }
                    };
                    client.put_block(name, &id, body, keyref).await?;
                    Ok::<_, FsError>((i, id))
                }
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for (i, id) in staged {
            self.extents[i].state = ExtState::Staged(id);
        }
        let mut refs = Vec::with_capacity(self.extents.len());
        for e in &self.extents {
            refs.push(match &e.state {
                ExtState::Committed(id) => BlockRef::Committed(id.clone()),
                ExtState::Staged(id) => BlockRef::Uncommitted(id.clone()),
                ExtState::Zero => BlockRef::Latest(
                    self.zero_ids
                        .iter()
                        .find(|(l, _)| *l == e.len)
                        .unwrap()
                        .1
                        .clone(),
                ),
                _ => unreachable!("everything is staged by now"),
            });
        }
        opts.conditions = self.commit_conditions(ctx);
        let r = ctx
            .client
            .put_block_list(name, &refs, &opts, keyref)
            .await
            .map_err(|e| {
                if is_conflict(&e) {
                    // The staged blocks belong to this blob name and cannot be
                    // committed under another one: the version is not kept.
                    FsError::Conflict {
                        path: name.to_string(),
                        saved_as: None,
                    }
                } else {
                    e.into()
                }
            })?;
        // The new blob's committed list is exactly `refs`.
        for (e, r) in self.extents.iter_mut().zip(refs) {
            let (BlockRef::Committed(id) | BlockRef::Uncommitted(id) | BlockRef::Latest(id)) = r;
            e.state = ExtState::Committed(id);
        }
        Ok(r)
    }
}

impl Drop for WriteSession {
    fn drop(&mut self) {
        self.abandon();
    }
}

pub enum ReadPiece {
    Data(Bytes),
    /// Read `[start, end)` of the base blob.
    Base(u64, u64),
}
