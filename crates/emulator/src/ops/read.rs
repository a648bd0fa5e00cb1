//! Get Blob, Get Blob Properties and Get Blob Metadata: ranges, the
//! response headers of a blob, and bodies streamed (and decrypted) frame by
//! frame.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::response::Builder;
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};

use super::request::{check_conditions, request_cpk};
use super::response::{crc64_b64, etag_headers, md5_b64, rfc1123, R};
use super::stored::committed_of;
use crate::cpk::{self, CpkKey};
use crate::error::ApiError;
use crate::http::{empty, full, Req, RespBody};
use crate::shared::Shared;
use crate::store::{Block, Committed};

/// Response bodies are sent (and decrypted) in frames of at most this many bytes, so
/// a frame is still in cache when TLS encrypts it, and a truncated response can cut
/// anywhere.
const CHUNK: u64 = 256 * 1024;

fn blob_headers(mut b: Builder, c: &Committed) -> Builder {
    b = etag_headers(b, &c.etag, &c.last_modified)
        .header("x-ms-creation-time", rfc1123(&c.created))
        .header("x-ms-blob-type", "BlockBlob")
        .header("x-ms-lease-status", "unlocked")
        .header("x-ms-lease-state", "available")
        .header("x-ms-server-encrypted", "true")
        .header("accept-ranges", "bytes")
        .header(
            "content-type",
            c.props
                .content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        );
    for (k, v) in &c.metadata {
        b = b.header(format!("x-ms-meta-{k}"), v.as_str());
    }
    if let Some(s) = &c.key_sha {
        b = b.header("x-ms-encryption-key-sha256", s.as_str());
    }
    if !c.tags.is_empty() {
        b = b.header("x-ms-tag-count", c.tags.len());
    }
    let p = &c.props;
    for (h, v) in [
        ("content-encoding", &p.content_encoding),
        ("content-language", &p.content_language),
        ("content-disposition", &p.content_disposition),
        ("cache-control", &p.cache_control),
    ] {
        if let Some(v) = v {
            b = b.header(h, v.as_str());
        }
    }
    if let Some(cp) = &c.copy {
        b = b
            .header("x-ms-copy-id", cp.id.as_str())
            .header("x-ms-copy-source", cp.source.as_str())
            .header("x-ms-copy-status", "success")
            .header("x-ms-copy-progress", cp.progress.as_str())
            .header("x-ms-copy-completion-time", rfc1123(&cp.completion));
    }
    b
}

/// Parse `bytes=a-b` / `bytes=a-`.
pub(crate) fn parse_range(v: &str) -> Option<(u64, Option<u64>)> {
    let r = v.trim().strip_prefix("bytes=")?;
    let (a, b) = r.split_once('-')?;
    let start = a.trim().parse::<u64>().ok()?;
    let end = if b.trim().is_empty() {
        None
    } else {
        Some(b.trim().parse::<u64>().ok()?)
    };
    if let Some(e) = end {
        if e < start {
            return None;
        }
    }
    Some((start, end))
}

/// Segments (block, offset in block, length) covering [start, end).
pub(crate) fn segments(c: &Committed, start: u64, end: u64) -> Vec<(Arc<Block>, u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    for (_, b) in &c.blocks {
        let (bs, be) = (pos, pos + b.len);
        pos = be;
        if be <= start || b.len == 0 {
            continue;
        }
        if bs >= end {
            break;
        }
        let s = start.max(bs);
        let e = end.min(be);
        let mut off = s - bs;
        let mut left = e - s;
        while left > 0 {
            let n = left.min(CHUNK);
            out.push((b.clone(), off, n));
            off += n;
            left -= n;
        }
    }
    out
}

fn stream_body(segs: Vec<(Arc<Block>, u64, u64)>, key: Option<Arc<CpkKey>>) -> RespBody {
    let q: VecDeque<_> = segs.into();
    let s = futures::stream::unfold((q, key), |(mut q, key)| async move {
        let (b, off, len) = q.pop_front()?;
        let r: Result<Frame<Bytes>, io::Error> = b
            .read(off, len as usize, key.as_deref())
            .await
            .map(Frame::data);
        Some((r, (q, key)))
    });
    StreamBody::new(s).boxed()
}

async fn read_all(
    segs: Vec<(Arc<Block>, u64, u64)>,
    key: Option<&CpkKey>,
) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    for (b, off, len) in segs {
        let d = b
            .read(off, len as usize, key)
            .await
            .map_err(|_| ApiError::internal())?;
        out.extend_from_slice(&d);
    }
    Ok(out)
}

pub(super) async fn get_blob(shared: &Shared, req: Req, head: bool) -> R {
    let key = request_cpk(shared, &req, false)?;
    let c = committed_of(shared, &req)?;
    cpk::check(c.key_sha.as_deref(), key.as_ref())?;
    check_conditions(&req, Some(&c), true)?;
    let b = blob_headers(Response::builder(), &c);
    if head {
        let mut b = b.status(200).header("content-length", c.size);
        if let Some(m) = &c.props.content_md5 {
            b = b.header("content-md5", m.as_str());
        }
        return Ok(b.body(empty()).unwrap());
    }
    let range = req
        .h("x-ms-range")
        .map(|v| ("x-ms-range", v))
        .or_else(|| req.h("range").map(|v| ("range", v)));
    let want_md5 = req.h("x-ms-range-get-content-md5") == Some("true");
    let want_crc = req.h("x-ms-range-get-content-crc64") == Some("true");
    if want_md5 && want_crc {
        return Err(ApiError::invalid_header(
            "x-ms-range-get-content-crc64",
            "true",
        ));
    }
    let key = key.map(Arc::new);
    let Some((hname, hval)) = range else {
        if want_md5 || want_crc {
            let h = if want_md5 {
                "x-ms-range-get-content-md5"
            } else {
                "x-ms-range-get-content-crc64"
            };
            return Err(ApiError::invalid_header(h, "true"));
        }
        let mut b = b.status(200).header("content-length", c.size);
        if let Some(m) = &c.props.content_md5 {
            b = b.header("content-md5", m.as_str());
        }
        let segs = segments(&c, 0, c.size);
        return Ok(b.body(stream_body(segs, key)).unwrap());
    };
    let Some((start, end)) = parse_range(hval) else {
        return Err(ApiError::invalid_header(hname, hval));
    };
    if start >= c.size {
        return Err(ApiError::new(
            416,
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
        )
        .header("content-range", format!("bytes */{}", c.size)));
    }
    let last = end.unwrap_or(c.size - 1).min(c.size - 1);
    let len = last - start + 1;
    let mut b = b
        .status(206)
        .header("content-length", len)
        .header("content-range", format!("bytes {start}-{last}/{}", c.size));
    if let Some(m) = &c.props.content_md5 {
        b = b.header("x-ms-blob-content-md5", m.as_str());
    }
    let segs = segments(&c, start, last + 1);
    if want_md5 || want_crc {
        if len > 4 * 1024 * 1024 {
            return Err(ApiError::new(
                400,
                "OutOfRangeInput",
                "One of the request inputs is out of range.",
            ));
        }
        let data = read_all(segs, key.as_deref()).await?;
        b = if want_md5 {
            b.header("content-md5", md5_b64(&data))
        } else {
            b.header("x-ms-content-crc64", crc64_b64(&data))
        };
        return Ok(b.body(full(data)).unwrap());
    }
    Ok(b.body(stream_body(segs, key)).unwrap())
}

pub(super) fn get_blob_metadata(shared: &Shared, req: Req) -> R {
    let key = request_cpk(shared, &req, false)?;
    let c = committed_of(shared, &req)?;
    cpk::check(c.key_sha.as_deref(), key.as_ref())?;
    check_conditions(&req, Some(&c), true)?;
    let mut b = etag_headers(Response::builder().status(200), &c.etag, &c.last_modified)
        .header("content-length", "0");
    for (k, v) in &c.metadata {
        b = b.header(format!("x-ms-meta-{k}"), v.as_str());
    }
    if let Some(s) = &c.key_sha {
        b = b.header("x-ms-encryption-key-sha256", s.as_str());
    }
    Ok(b.body(empty()).unwrap())
}
