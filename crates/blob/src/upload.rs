//! Streaming upload: read a source block by block, stage blocks with bounded
//! concurrency (so memory stays at `concurrency × block_size`), then commit.

use super::block_id::BlockIdGen;
use super::client::BlobClient;
use super::cpk::CustomerKey;
use super::error::BlobError;
use super::models::{BlockRef, CommitOptions, WriteResult};
use bytes::BytesMut;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    pub block_size: usize,
    pub concurrency: usize,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            block_size: 8 * 1024 * 1024,
            concurrency: 4,
        }
    }
}

async fn fill<R: AsyncRead + Unpin>(reader: &mut R, size: usize) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(size);
    while buf.len() < size {
        let n = reader.read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf)
}

impl BlobClient {
    /// Upload everything `reader` yields. Content that fits in one block goes
    /// up with a single Put Blob; anything larger with Put Block + Put Block List.
    pub async fn upload<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        mut reader: R,
        opts: &CommitOptions,
        key: Option<&CustomerKey>,
        up: UploadOptions,
    ) -> Result<WriteResult, BlobError> {
        let io_err =
            |e: std::io::Error| BlobError::Config(format!("reading the upload source failed: {e}"));
        let first = fill(&mut reader, up.block_size).await.map_err(io_err)?;
        if first.len() < up.block_size {
            return self.put_blob(name, first.freeze(), opts, key).await;
        }
        let ids = BlockIdGen::new();
        let mut refs = Vec::new();
        let mut inflight = FuturesUnordered::new();
        let mut next = Some(first);
        let mut seq = 0u64;
        loop {
            while inflight.len() < up.concurrency.max(1) {
                let Some(buf) = next.take() else { break };
                let id = ids.id(seq);
                seq += 1;
                refs.push(BlockRef::Uncommitted(id.clone()));
                let client = self.clone();
                let body = buf.freeze();
                inflight.push(async move { client.put_block(name, &id, body, key).await });
                let buf = fill(&mut reader, up.block_size).await.map_err(io_err)?;
                if !buf.is_empty() {
                    next = Some(buf);
                }
            }
            match inflight.next().await {
                Some(r) => r?,
                None => break,
            }
        }
        self.put_block_list(name, &refs, opts, key).await
    }
}
