//! Copy a blob inside the service, re-keying it on the way: one Put Blob From
//! URL for a small blob, Put Block From URL ranges + Put Block List for a large
//! one. No blob bytes pass through the client. Used by renames of CPK files
//! and by `rotate-cpk`.

use super::block_id::BlockIdGen;
use super::client::BlobClient;
use super::cpk::CustomerKey;
use super::error::BlobError;
use super::models::{BlockRef, ByteRange, CommitOptions, CopySource, WriteResult};
use base64::Engine;
use futures::stream::{self, StreamExt, TryStreamExt};

/// The most one From-URL request carries. The service answers only once it
/// has copied the bytes, and every attempt must finish within the retry
/// policy's attempt timeout (60 s by default), so a request is kept small
/// enough to need no more than ~4.3 MB/s of copying inside the service —
/// far below Azure's, where one Put Blob From URL of the permitted 5,000 MiB
/// could outlast any sensible timeout and be retried forever.
pub const FROM_URL_RANGE: u64 = 256 << 20;
/// Ranges of one large blob copied at once.
const RANGE_CONCURRENCY: usize = 4;

/// What a server-side copy wrote.
#[derive(Debug, Clone)]
pub struct ServerCopy {
    pub write: WriteResult,
    /// (end offset, CRC-64) of each consecutive range as the service read it
    /// under the source key, when it reported one for every range; empty
    /// otherwise. A re-keyed copy can be verified against it.
    pub crcs: Vec<(u64, u64)>,
}

/// `x-ms-content-crc64` (base64 of 8 little-endian bytes) as a number.
pub fn crc64_from_header(v: &str) -> Option<u64> {
    let raw = base64::engine::general_purpose::STANDARD.decode(v).ok()?;
    Some(u64::from_le_bytes(raw.try_into().ok()?))
}

impl BlobClient {
    /// Copy `size` bytes of `src` (with its own key, pinned by its ETag if
    /// given) to `dest` under `key`, with `opts`' metadata and content type.
    pub async fn copy_from_url(
        &self,
        dest: &str,
        src: &CopySource<'_>,
        size: u64,
        opts: &CommitOptions,
        key: Option<&CustomerKey>,
    ) -> Result<ServerCopy, BlobError> {
        self.copy_from_url_in_ranges(dest, src, size, opts, key, FROM_URL_RANGE)
            .await
    }

    /// [`BlobClient::copy_from_url`] with ranges of `range` bytes (tests use
    /// small ones to cover the ranged path with small blobs).
    pub async fn copy_from_url_in_ranges(
        &self,
        dest: &str,
        src: &CopySource<'_>,
        size: u64,
        opts: &CommitOptions,
        key: Option<&CustomerKey>,
        range: u64,
    ) -> Result<ServerCopy, BlobError> {
        if size <= range {
            let (write, crc) = self.put_blob_from_url(dest, src, opts, key).await?;
            let crcs = crc
                .as_deref()
                .and_then(crc64_from_header)
                .map(|c| vec![(size, c)])
                .unwrap_or_default();
            return Ok(ServerCopy { write, crcs });
        }
        let ids = BlockIdGen::new();
        let ranges: Vec<(String, ByteRange)> = (0..size.div_ceil(range))
            .map(|i| {
                let start = i * range;
                (ids.id(i), ByteRange::new(start, (start + range).min(size)))
            })
            .collect();
        // `buffered` keeps the ranges' order for the CRC list.
        // Futures built up front from owned ids: a closure over borrowed
        // items would make the stream's future not `Send` for every lifetime.
        let stages: Vec<_> = ranges
            .iter()
            .cloned()
            .map(|(id, r)| async move {
                let crc = self.put_block_from_url(dest, &id, src, r, key).await?;
                Ok::<_, BlobError>(crc.as_deref().and_then(crc64_from_header))
            })
            .collect();
        let crcs: Vec<Option<u64>> = stream::iter(stages)
            .buffered(RANGE_CONCURRENCY)
            .try_collect()
            .await?;
        let refs: Vec<BlockRef> = ranges
            .iter()
            .map(|(id, _)| BlockRef::Uncommitted(id.clone()))
            .collect();
        let write = self.put_block_list(dest, &refs, opts, key).await?;
        // Without a CRC for every range there is nothing to compare range by range.
        let crcs = crcs
            .into_iter()
            .zip(&ranges)
            .map(|(c, (_, r))| c.map(|c| (r.end.unwrap_or(size), c)))
            .collect::<Option<Vec<_>>>()
            .unwrap_or_default();
        Ok(ServerCopy { write, crcs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_header_is_eight_little_endian_bytes() {
        let v = 0x0123_4567_89ab_cdefu64;
        let h = base64::engine::general_purpose::STANDARD.encode(v.to_le_bytes());
        assert_eq!(crc64_from_header(&h), Some(v));
        assert_eq!(crc64_from_header("AAAA"), None);
        assert_eq!(crc64_from_header("not base64!"), None);
    }
}
