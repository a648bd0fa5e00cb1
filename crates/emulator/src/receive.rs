//! Receiving a request body: one pass that copies it out of hyper's
//! buffers, digests it (CRC-64, MD5) and, for a block under a
//! customer-provided key, encrypts it on the way in.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cpk::{self, KeyStream};
use crate::error::ApiError;
use crate::shared::Shared;

/// Received request bodies are digested, copied and encrypted in pieces of this size.
const BODY_PIECE: usize = 64 * 1024;

/// A request body as the handlers get it (see [`Req`]).
pub(crate) struct Received {
    pub data: BytesMut,
    pub crc64: u64,
    pub md5: Option<[u8; 16]>,
    pub encrypted: Option<([u8; 16], String)>,
}

/// Read the body of a PUT or POST (any other request's is ignored), digesting
/// it, and encrypting it on the way in when it is a block under a
/// customer-provided key.
pub(crate) async fn receive_body(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    op: &str,
    body: Incoming,
) -> Result<Received, ApiError> {
    let mut buf = BytesMut::new();
    let mut crc = crc64fast_nvme::Digest::new();
    let mut md5: Option<md5::Md5> = None;
    let mut enc: Option<(KeyStream, [u8; 16], String)> = None;
    if method == Method::PUT || method == Method::POST {
        let len = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let Some(len) = len else {
            return Err(ApiError::new(
                411,
                "MissingContentLengthHeader",
                "Content-Length HTTP header is missing.",
            ));
        };
        if op == "PutBlob" || headers.contains_key("content-md5") {
            md5 = Some(<md5::Md5 as md5::Digest>::new());
        }
        enc = body_cipher(shared, headers, op);
        let data = copy_body(body, len, &mut crc, &mut md5, &mut enc).await?;
        buf = BytesMut::from(bytes::Bytes::from(data));
        shared
            .stats
            .bytes_in
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        if buf.len() != len {
            return Err(ApiError::invalid_input());
        }
    }
    Ok(Received {
        data: buf,
        crc64: crc.sum64(),
        md5: md5.map(|m| md5::Digest::finalize(m).into()),
        encrypted: enc.map(|(_, nonce, sha)| (nonce, sha)),
    })
}

/// Blocks are stored encrypted: encrypt while the data is still in cache
/// instead of in a second pass over the whole block. Only when the request
/// will pass the CPK checks; the operation re-validates the headers anyway.
fn body_cipher(
    shared: &Shared,
    headers: &HeaderMap,
    op: &str,
) -> Option<(KeyStream, [u8; 16], String)> {
    if (op == "PutBlock" || op == "PutBlob") && (shared.tls || shared.allow_cpk_over_http) {
        if let Ok(Some(k)) = cpk::parse(headers, true) {
            let nonce = cpk::new_nonce();
            return Some((k.keystream(&nonce, 0), nonce, k.sha.clone()));
        }
    }
    None
}

/// One pass over the data in the block buffer, sized up front: the copy out of
/// hyper's read buffer, fused with the digests and, when there is a key, the
/// encryption. Returns what arrived (at most `len` bytes).
async fn copy_body(
    mut body: Incoming,
    len: usize,
    crc: &mut crc64fast_nvme::Digest,
    md5: &mut Option<md5::Md5>,
    enc: &mut Option<(KeyStream, [u8; 16], String)>,
) -> Result<Vec<u8>, ApiError> {
    let mut data = alloc_body(len);
    let mut pos = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| {
            ApiError::new(
                400,
                "InvalidInput",
                "One of the request inputs is not valid.",
            )
        })?;
        let Ok(d) = frame.into_data() else { continue };
        if d.len() > len - pos {
            return Err(ApiError::invalid_input());
        }
        // Digest and copy/encrypt piece by piece while each piece is hot in cache.
        for piece in d.chunks(BODY_PIECE) {
            crc.write(piece);
            if let Some(m) = md5.as_mut() {
                md5::Digest::update(m, piece);
            }
            let dst = &mut data[pos..pos + piece.len()];
            match enc.as_mut() {
                Some((ks, _, _)) => ks.apply_to(piece, dst),
                None => dst.copy_from_slice(piece),
            }
            pos += piece.len();
        }
    }
    data.truncate(pos);
    Ok(data)
}

/// A zero-filled buffer for a request body of `len` bytes. Zeroed memory comes from
/// `calloc`, which for large sizes maps fresh pages without writing them, so the body
/// copy is the first (and only) pass over it. Large buffers are populated up front
/// with one `madvise(MADV_POPULATE_WRITE)` instead of taking a page fault per 4 KiB
/// while the body is copied in (on this VM that costs as much as the copy). Transparent
/// huge pages were tried too: their first-touch clearing cost far more.
fn alloc_body(len: usize) -> Vec<u8> {
    let v = vec![0u8; len];
    const PAGE: usize = 4096;
    // Not for huge declared lengths: the memory would be committed before any of the
    // body arrived.
    if (1 << 20..=64 << 20).contains(&len) {
        let addr = v.as_ptr() as usize;
        let start = addr.next_multiple_of(PAGE);
        let end = (addr + len) / PAGE * PAGE;
        if end > start {
            // SAFETY: advisory only (faults in pages of the live allocation `v`; their
            // contents stay zero). Failure (old kernels: EINVAL) is harmless.
            unsafe {
                libc::madvise(
                    start as *mut libc::c_void,
                    end - start,
                    libc::MADV_POPULATE_WRITE,
                );
            }
        }
    }
    v
}
