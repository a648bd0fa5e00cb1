//! Pending writes of one file, as a list of extents covering `[0, size)`.
//!
//! An extent is a committed block that can be re-used by id, bytes of the
//! current blob that must be copied, zeros, a dirty buffer, or a block being
//! (or already) staged with Put Block. Sequential writes fill a buffer and
//! stage it as soon as it reaches the block size, so a large copy streams;
//! random writes do read-modify-write of one block-sized piece. A commit
//! (flush/fsync/close) turns the extents into one Put Block List — the old
//! blob stays in place until that single request succeeds.

use super::buffers::BufferPool;
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
    /// Block buffers used again by the next block.
    pub buffers: Arc<BufferPool>,
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
        let buffers = ctx.buffers.clone();
        let task = tokio::spawn(async move {
            let r = client
                .put_block(&name, &bid, body.clone(), key.as_deref())
                .await;
            drop(permit);
            buffers.give(body);
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
                    state: ExtState::Dirty(ctx.buffers.take(want as usize)),
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

    /// Commit the session: wait for blocks in flight, then either one Put
    /// Blob (a small file made only of local bytes) or stage every block not
    /// staged yet and commit the list.
    async fn commit_inner(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        mut opts: CommitOptions,
        key: Option<&Arc<CustomerKey>>,
    ) -> FsResult<WriteResult> {
        self.ensure_layout(ctx, name).await?;
        self.await_uploads().await?;
        opts.conditions = self.commit_conditions(ctx);
        if let Some(body) = self.small_body(ctx.block_size) {
            return self.commit_small(ctx, name, body, opts, key).await;
        }
        self.split_into_blocks(ctx.block_size);
        if self.extents.len() > MAX_BLOCKS {
            return Err(FsError::TooLarge(format!(
                "{name}: {} blocks exceed Azure's limit of {MAX_BLOCKS}",
                self.extents.len()
            )));
        }
        let keyref = key.map(|k| &**k);
        self.stage_zero_blocks(ctx, name, keyref).await?;
        self.stage_pending(ctx, name, keyref).await?;
        let refs = self.block_refs();
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
        self.mark_committed(refs);
        Ok(r)
    }

    /// Stage 1: every block upload started early has finished (or failed the
    /// commit).
    async fn await_uploads(&mut self) -> FsResult<()> {
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
        Ok(())
    }

    /// Stage 2: the whole content, if the file is at most one block and made
    /// only of local bytes (dirty or zero): it then goes up in one Put Blob.
    fn small_body(&self, block_size: u64) -> Option<Bytes> {
        let all_local = self
            .extents
            .iter()
            .all(|e| matches!(e.state, ExtState::Dirty(_) | ExtState::Zero));
        if !all_local || self.size > block_size {
            return None;
        }
        let mut body = BytesMut::with_capacity(self.size as usize);
        for e in &self.extents {
            match &e.state {
                ExtState::Dirty(b) => body.extend_from_slice(b),
                _ => body.resize(body.len() + e.len as usize, 0),
            }
        }
        Some(body.freeze())
    }

    /// Stage 2': one Put Blob of `body`. On a conflict with another writer,
    /// keep both versions — theirs under the name, ours beside it — and fail.
    async fn commit_small(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        body: Bytes,
        opts: CommitOptions,
        key: Option<&Arc<CustomerKey>>,
    ) -> FsResult<WriteResult> {
        let r = match ctx
            .client
            .put_blob(name, body.clone(), &opts, key.map(|k| &**k))
            .await
        {
            Err(e) if is_conflict(&e) => {
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
        Ok(r)
    }

    /// Stage 3: zero and remote extents cut into pieces of at most one block
    /// (each becomes one block of the list); other extents are kept whole.
    fn split_into_blocks(&mut self, block_size: u64) {
        let mut pieces: Vec<Extent> = Vec::with_capacity(self.extents.len());
        for e in self.extents.drain(..) {
            match e.state {
                ExtState::Zero | ExtState::Remote => {
                    let mut s = e.start;
                    while s < e.end() {
                        let n = block_size.min(e.end() - s);
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
    }

    /// Stage 4: one staged block of zeros per distinct length of zero piece
    /// (the list may name a block any number of times).
    async fn stage_zero_blocks(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        key: Option<&CustomerKey>,
    ) -> FsResult<()> {
        let lens: Vec<u64> = self
            .extents
            .iter()
            .filter(|e| matches!(e.state, ExtState::Zero))
            .map(|e| e.len)
            .collect();
        for len in lens {
            if self.zero_ids.iter().any(|(l, _)| *l == len) {
                continue;
            }
            let id = self.ids.id(self.seq);
            self.seq += 1;
            ctx.client
                .put_block(name, &id, Bytes::from(vec![0u8; len as usize]), key)
                .await?;
            self.zero_ids.push((len, id));
        }
        Ok(())
    }

    /// Stage 5: stage every dirty piece, and every remote piece (read from
    /// the base version, pinned by its ETag, and re-staged — its committed
    /// block may span other bytes), four at a time.
    async fn stage_pending(
        &mut self,
        ctx: &WriteContext,
        name: &str,
        key: Option<&CustomerKey>,
    ) -> FsResult<()> {
        let mut work = vec![];
        for i in 0..self.extents.len() {
            if !matches!(self.extents[i].state, ExtState::Dirty(_) | ExtState::Remote) {
                continue;
            }
            let id = self.ids.id(self.seq);
            self.seq += 1;
            let e = &mut self.extents[i];
            let body = match std::mem::replace(&mut e.state, ExtState::Remote) {
                ExtState::Dirty(b) => Some(b.freeze()),
                _ => None,
            };
            work.push((i, id, e.start, e.len, body));
        }
        let base_etag = self.base_etag.clone();
        let base_cpk = self.base_cpk.clone();
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
                    client.put_block(name, &id, body, key).await?;
                    Ok::<_, FsError>((i, id))
                }
            })
            .buffer_unordered(4)
            .try_collect()
            .await?;
        for (i, id) in staged {
            self.extents[i].state = ExtState::Staged(id);
        }
        Ok(())
    }

    /// Stage 6: the block list, in file order, once everything is staged.
    fn block_refs(&self) -> Vec<BlockRef> {
        self.extents
            .iter()
            .map(|e| match &e.state {
                ExtState::Committed(id) => BlockRef::Committed(id.clone()),
                ExtState::Staged(id) => BlockRef::Uncommitted(id.clone()),
                ExtState::Zero => BlockRef::Latest(
                    self.zero_ids
                        .iter()
                        .find(|(l, _)| *l == e.len)
                        .expect("zero blocks are staged before the list is made")
                        .1
                        .clone(),
                ),
                _ => unreachable!("everything is staged by now"),
            })
            .collect()
    }

    /// Stage 7: after the commit the blob's committed list is exactly `refs`.
    fn mark_committed(&mut self, refs: Vec<BlockRef>) {
        for (e, r) in self.extents.iter_mut().zip(refs) {
            let (BlockRef::Committed(id) | BlockRef::Uncommitted(id) | BlockRef::Latest(id)) = r;
            e.state = ExtState::Committed(id);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use cpkfs_blob::{
        AccountKey, BlockListType, ClientConfig, Credential, SharedKeyCredential, DEV_ACCOUNT,
        DEV_ACCOUNT_KEY,
    };
    use cpkfs_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};

    fn ext(start: u64, len: u64, state: ExtState) -> Extent {
        Extent { start, len, state }
    }

    fn dirty(b: &[u8]) -> ExtState {
        ExtState::Dirty(BytesMut::from(b))
    }

    fn session(extents: Vec<Extent>) -> WriteSession {
        let mut s = WriteSession::new_empty(None);
        s.size = extents.last().map_or(0, |e| e.end());
        s.extents = extents;
        s
    }

    /// Shape of the extents: (start, len, state name).
    fn shape(s: &WriteSession) -> Vec<(u64, u64, &'static str)> {
        s.extents
            .iter()
            .map(|e| {
                let k = match e.state {
                    ExtState::Committed(_) => "committed",
                    ExtState::Remote => "remote",
                    ExtState::Zero => "zero",
                    ExtState::Dirty(_) => "dirty",
                    ExtState::Uploading(..) => "uploading",
                    ExtState::Staged(_) => "staged",
                };
                (e.start, e.len, k)
            })
            .collect()
    }

    #[test]
    fn small_body_is_local_bytes_and_zeros_up_to_one_block() {
        let s = session(vec![ext(0, 3, dirty(b"abc")), ext(3, 2, ExtState::Zero)]);
        assert_eq!(s.small_body(5).as_deref(), Some(&b"abc\0\0"[..]));
        assert_eq!(s.small_body(4), None, "larger than a block");
        let s = session(vec![ext(0, 3, dirty(b"abc")), ext(3, 2, ExtState::Remote)]);
        assert_eq!(s.small_body(1 << 20), None, "remote bytes are not local");
        assert_eq!(session(vec![]).small_body(4).as_deref(), Some(&b""[..]));
    }

    #[test]
    fn split_into_blocks_cuts_zero_and_remote_extents_only() {
        let mut s = session(vec![
            ext(0, 10, ExtState::Zero),
            ext(10, 5, ExtState::Remote),
            ext(15, 9, dirty(&[1; 9])),
            ext(24, 4, ExtState::Committed("c".into())),
        ]);
        s.split_into_blocks(4);
        assert_eq!(
            shape(&s),
            [
                (0, 4, "zero"),
                (4, 4, "zero"),
                (8, 2, "zero"),
                (10, 4, "remote"),
                (14, 1, "remote"),
                (15, 9, "dirty"),
                (24, 4, "committed"),
            ]
        );
    }

    #[test]
    fn block_refs_name_each_piece_and_share_zero_blocks() {
        let mut s = session(vec![
            ext(0, 4, ExtState::Committed("c0".into())),
            ext(4, 4, ExtState::Staged("s1".into())),
            ext(8, 4, ExtState::Zero),
            ext(12, 4, ExtState::Zero),
            ext(16, 2, ExtState::Zero),
        ]);
        s.zero_ids = vec![(4, "z4".into()), (2, "z2".into())];
        let refs = s.block_refs();
        assert_eq!(
            refs,
            [
                BlockRef::Committed("c0".into()),
                BlockRef::Uncommitted("s1".into()),
                BlockRef::Latest("z4".into()),
                BlockRef::Latest("z4".into()),
                BlockRef::Latest("z2".into()),
            ]
        );
        s.mark_committed(refs);
        assert!(s
            .extents
            .iter()
            .all(|e| matches!(e.state, ExtState::Committed(_))));
        assert_eq!(shape(&s).len(), 5);
    }

    async fn context() -> (EmulatorHandle, WriteContext) {
        let emu = emulator::start(EmulatorConfig::default()).await.unwrap();
        let cred = Credential::SharedKey(Arc::new(
            SharedKeyCredential::new(
                DEV_ACCOUNT,
                vec![AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
            )
            .unwrap(),
        ));
        let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, "stages", cred);
        cfg.ca_pem = emu.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
        let client = BlobClient::new(cfg).unwrap();
        client.create_container().await.unwrap();
        let ctx = WriteContext {
            client,
            block_size: 4,
            upload_slots: Arc::new(Semaphore::new(4)),
            max_dirty: 1 << 20,
            buffers: Arc::new(BufferPool::new(4, 4)),
            key_sha256: None,
            overwrite_conflicts: false,
        };
        (emu, ctx)
    }

    /// Stages 4 and 5 against the emulator: one zero block per distinct
    /// length; dirty pieces staged as they are and remote pieces read from the
    /// base version (pinned) and staged; the list then commits to the right
    /// bytes.
    #[tokio::test]
    async fn staging_and_commit_write_the_right_bytes() {
        let (_emu, ctx) = context().await;
        let key = CustomerKey::from_raw([3; 32]);
        let base = ctx
            .client
            .put_blob(
                "f",
                Bytes::from_static(b"ABCDEFGH"),
                &CommitOptions::default(),
                Some(&key),
            )
            .await
            .unwrap();
        let mut s = WriteSession::existing(base.etag.clone(), 8, Some(Arc::new(key.clone())));
        s.layout_known = true;
        s.extents = vec![
            ext(0, 6, ExtState::Remote),
            ext(6, 2, dirty(b"xy")),
            ext(8, 9, ExtState::Zero),
        ];
        s.size = 17;
        s.split_into_blocks(4);
        s.stage_zero_blocks(&ctx, "f", Some(&key)).await.unwrap();
        assert_eq!(s.zero_ids.len(), 2, "zero pieces of 4 and 1 bytes");
        s.stage_pending(&ctx, "f", Some(&key)).await.unwrap();
        let list = ctx
            .client
            .get_block_list("f", BlockListType::Uncommitted)
            .await
            .unwrap();
        // 2 zero blocks + 2 remote pieces (4 + 2 bytes) + 1 dirty piece.
        assert_eq!(list.uncommitted.len(), 5, "{list:?}");
        let refs = s.block_refs();
        let opts = CommitOptions {
            conditions: s.commit_conditions(&ctx),
            ..Default::default()
        };
        ctx.client
            .put_block_list("f", &refs, &opts, Some(&key))
            .await
            .unwrap();
        s.mark_committed(refs);
        let (got, _) = ctx
            .client
            .read_range("f", ByteRange::from(0), Some(&key), &Conditions::default())
            .await
            .unwrap();
        assert_eq!(&got[..], b"ABCDEFxy\0\0\0\0\0\0\0\0\0");
    }

    /// Stage 5 reads remote pieces pinned to the base version: a base
    /// replaced meanwhile fails the commit instead of mixing versions.
    #[tokio::test]
    async fn staging_a_remote_piece_of_a_replaced_base_fails() {
        let (_emu, ctx) = context().await;
        let base = ctx
            .client
            .put_blob(
                "g",
                Bytes::from_static(b"12345678"),
                &CommitOptions::default(),
                None,
            )
            .await
            .unwrap();
        ctx.client
            .put_blob(
                "g",
                Bytes::from_static(b"abcdefgh"),
                &CommitOptions::default(),
                None,
            )
            .await
            .unwrap();
        let mut s = WriteSession::existing(base.etag, 8, None);
        s.extents = vec![ext(0, 8, ExtState::Remote)];
        s.split_into_blocks(4);
        let e = s.stage_pending(&ctx, "g", None).await.unwrap_err();
        assert_eq!(e.errno(), libc::ESTALE, "{e}");
    }
}
