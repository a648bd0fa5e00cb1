//! Put Blob From URL and Put Block From URL (protocol reference §4.12, §3.8).
//!
//! The service reads the source itself: the bytes never pass through the client.
//! The source is authorized by its own SAS (in `x-ms-copy-source`) or by
//! `x-ms-copy-source-authorization: Bearer …` — the destination request's Shared Key
//! does not authorize the source, as on Azure.
//!
//! Source keys: from service version 2026-02-06 on, `x-ms-source-encryption-key`,
//! `-sha256` and `-algorithm` carry the source blob's customer-provided key, checked
//! against the source exactly like a GET (missing / wrong / unneeded key → the same
//! 409 codes). Older versions do not know these headers: they are ignored and a CPK
//! source fails like Copy Blob (409 `CannotVerifyCopySource`). The destination key
//! follows the rules of Put Blob (whole replacement) and Put Block (agree with the
//! blob's uncommitted blocks).
//!
//! Source failures carry `x-ms-copy-source-status-code` / `x-ms-copy-source-error-code`
//! (what a GET of the source would have answered) so a client can tell a source
//! problem from a destination one.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::{HeaderMap, Method, Response};

use super::blob::store_whole_blob;
use super::blocks::{block_id, stage_block};
use super::read::{parse_range, segments};
use super::request::{blob_props, parse_metadata, request_cpk};
use super::response::{etag_headers, write_cpk_headers, R};
use super::stored::container_mut;
use crate::cpk::{self, CpkKey};
use crate::error::ApiError;
use crate::http::{empty, Req};
use crate::shared::Shared;
use crate::store::{Block, Committed};

/// The first service version that accepts source keys on the From-URL operations.
pub const SOURCE_CPK_VERSION: &str = "2026-02-06";
/// Put Blob From URL copies sources up to 5,000 MiB (the Put Blob limit, ≥ 2019-12-12).
pub const MAX_PUT_BLOB_FROM_URL: u64 = 5000 << 20;
/// Put Block From URL stages at most 4,000 MiB (the block limit, ≥ 2019-12-12).
pub const MAX_BLOCK_FROM_URL: u64 = 4000 << 20;

pub const H_SRC_KEY: &str = "x-ms-source-encryption-key";
pub const H_SRC_SHA: &str = "x-ms-source-encryption-key-sha256";
pub const H_SRC_ALG: &str = "x-ms-source-encryption-algorithm";

/// A source problem: the status and code a GET of the source would have got,
/// reported as the operation's error with the copy-source headers.
fn source_error(status: u16, code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, code, message)
        .header("x-ms-copy-source-status-code", status.to_string())
        .header("x-ms-copy-source-error-code", code)
}

/// A source problem reported under Azure's umbrella code `CannotVerifyCopySource`
/// (authorization, existence, pre-2026-02-06 CPK sources).
fn cannot_verify(status: u16, source_code: &'static str, message: &str) -> ApiError {
    ApiError::new(status, "CannotVerifyCopySource", message)
        .header("x-ms-copy-source-status-code", status.to_string())
        .header("x-ms-copy-source-error-code", source_code)
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        413,
        "RequestBodyTooLarge",
        "The request body is too large and exceeds the maximum permissible limit.",
    )
    .with("MaxLimit", limit.to_string())
}

/// Does this request's version know the source-key headers?
pub fn version_has_source_cpk(version: &str) -> bool {
    version >= SOURCE_CPK_VERSION
}

/// The source key of the request, validated like a destination key (all three
/// headers, 32-byte key, matching hash, AES256), naming the source headers in errors.
fn source_key(shared: &Shared, req: &Req) -> Result<Option<CpkKey>, ApiError> {
    if !version_has_source_cpk(&req.version) {
        // Not part of this version's protocol: the service does not look at them.
        return Ok(None);
    }
    let present = [H_SRC_KEY, H_SRC_SHA, H_SRC_ALG]
        .iter()
        .any(|h| req.headers.contains_key(*h));
    if !present {
        return Ok(None);
    }
    if !req.tls && !shared.allow_cpk_over_http {
        return Err(ApiError::new(
            400,
            "AccountRequiresHttps",
            "The account being accessed does not support http.",
        ));
    }
    // Re-use the destination-key parser on the source headers renamed, and map the
    // header names in its errors back.
    let mut h = HeaderMap::new();
    for (src, dst) in [
        (H_SRC_KEY, cpk::H_KEY),
        (H_SRC_SHA, cpk::H_SHA),
        (H_SRC_ALG, cpk::H_ALG),
    ] {
        if let Some(v) = req.headers.get(src) {
            h.insert(dst, v.clone());
        }
    }
    cpk::parse(&h, true).map_err(|mut e| {
        for (_, v) in e.extra.iter_mut() {
            if let Some(rest) = v.strip_prefix("x-ms-encryption") {
                *v = format!("x-ms-source-encryption{rest}");
            }
        }
        e
    })
}

/// The addressed source: (account, container, blob) from a path-style URL, with
/// the URL's query (its SAS).
struct SourceRef {
    account: String,
    container: String,
    blob: String,
    raw_path: String,
    query: Vec<(String, String)>,
}

fn parse_source(req: &Req) -> Result<SourceRef, ApiError> {
    let src = req
        .h("x-ms-copy-source")
        .ok_or_else(|| ApiError::missing_header("x-ms-copy-source"))?;
    let url = url::Url::parse(src)
        .map_err(|_| ApiError::invalid_header("x-ms-copy-source", "(not a URL)"))?;
    let raw_path = url.path().to_string();
    let mut it = raw_path.trim_start_matches('/').splitn(3, '/');
    let dec = |s: Option<&str>| {
        percent_encoding::percent_decode_str(s.unwrap_or(""))
            .decode_utf8_lossy()
            .into_owned()
    };
    let (account, container, blob) = (dec(it.next()), dec(it.next()), dec(it.next()));
    if account.is_empty() || container.is_empty() || blob.is_empty() {
        return Err(ApiError::invalid_header(
            "x-ms-copy-source",
            "(not a blob URL)",
        ));
    }
    Ok(SourceRef {
        account,
        container,
        blob,
        query: crate::http::parse_query(url.query().unwrap_or("")),
        raw_path,
    })
}

/// Authorize reading the source: its SAS, or a bearer token in
/// `x-ms-copy-source-authorization` (an emulator-issued token whose identity has
/// `blob/read`). Failures are the source's own 401/403.
fn authorize_source(shared: &Shared, req: &Req, s: &SourceRef) -> Result<(), ApiError> {
    if let Some(authz) = req.h("x-ms-copy-source-authorization") {
        let Some(token) = authz.strip_prefix("Bearer ") else {
            // Azure accepts only bearer tokens here.
            return Err(ApiError::invalid_header(
                "x-ms-copy-source-authorization",
                "(not a bearer token)",
            ));
        };
        let entra = shared.kv.entra.lock().unwrap();
        return match entra.check(token.trim()) {
            Ok(id) if id.allows("blob/read") => Ok(()),
            Ok(_) => Err(cannot_verify(
                403,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            )),
            Err(_) => Err(cannot_verify(
                401,
                "InvalidAuthenticationInfo",
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
            )),
        };
    }
    crate::auth::authenticate(
        shared,
        &Method::GET,
        &HeaderMap::new(),
        &s.query,
        &s.raw_path,
        &s.account,
        &s.container,
        &s.blob,
        "GetBlob",
    )
    .map(|_| ())
    .map_err(|e| {
        let status = e.status.as_u16();
        ApiError::new(status, "CannotVerifyCopySource", e.message.clone())
            .header("x-ms-copy-source-status-code", status.to_string())
            .header("x-ms-copy-source-error-code", e.code)
    })
}

/// `x-ms-source-if-*` against the source version (412 SourceConditionNotMet).
fn check_source_conditions(req: &Req, c: &Committed) -> Result<(), ApiError> {
    let failed = || {
        ApiError::new(
            412,
            "SourceConditionNotMet",
            "The source condition specified using HTTP conditional header(s) is not met.",
        )
    };
    let strip = |s: &str| s.trim().trim_matches('"').to_string();
    let matches = |list: &str| {
        list.split(',')
            .any(|e| strip(e) == "*" || strip(e) == c.etag)
    };
    let lm = c.last_modified.timestamp();
    let secs = |v: &str| {
        httpdate::parse_http_date(v).ok().map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        })
    };
    if let Some(m) = req.h("x-ms-source-if-match") {
        if !matches(m) {
            return Err(failed());
        }
    }
    if let Some(n) = req.h("x-ms-source-if-none-match") {
        if matches(n) {
            return Err(failed());
        }
    }
    if let Some(t) = req.h("x-ms-source-if-modified-since").and_then(secs) {
        if lm <= t {
            return Err(failed());
        }
    }
    if let Some(t) = req.h("x-ms-source-if-unmodified-since").and_then(secs) {
        if lm > t {
            return Err(failed());
        }
    }
    Ok(())
}

/// Resolve, authorize and key-check the source; returns its committed version
/// (immutable: the copy reads exactly this version even if the source changes
/// meanwhile) and the source key.
fn open_source(shared: &Shared, req: &Req) -> Result<(Arc<Committed>, Option<CpkKey>), ApiError> {
    let s = parse_source(req)?;
    let key = source_key(shared, req)?;
    authorize_source(shared, req, &s)?;
    let committed = {
        let st = shared.state.lock().unwrap();
        let cont = st
            .accounts
            .get(&s.account)
            .and_then(|a| a.containers.get(&s.container))
            .ok_or_else(|| {
                cannot_verify(
                    404,
                    "ContainerNotFound",
                    "The specified container does not exist.",
                )
            })?;
        cont.blobs
            .get(&s.blob)
            .and_then(|e| e.committed.clone())
            .ok_or_else(|| {
                cannot_verify(404, "BlobNotFound", "The specified blob does not exist.")
            })?
    };
    match (committed.key_sha.as_deref(), &key) {
        (Some(_), None) if !version_has_source_cpk(&req.version) => {
            // What Azure answers for CPK sources before the source headers existed.
            return Err(cannot_verify(
                409,
                "BlobUsesCustomerSpecifiedEncryption",
                "The blob is encrypted with customer specified encryption, but it was not provided in the request.",
            ));
        }
        (stored, k) => cpk::check(stored, k.as_ref())
            .map_err(|e| source_error(e.status.as_u16(), e.code, &e.message))?,
    }
    check_source_conditions(req, &committed)?;
    Ok((committed, key))
}

/// Read `[start, end)` of the source with its key and store it as one block under
/// the destination key. Checks `x-ms-source-content-md5` / `-crc64` when given.
/// Returns the block and the CRC-64 of the plaintext.
async fn copy_range(
    shared: &Shared,
    req: &Req,
    src: &Committed,
    src_key: Option<&CpkKey>,
    start: u64,
    end: u64,
    dest_key: Option<&CpkKey>,
) -> Result<(Arc<Block>, u64), ApiError> {
    let len = (end - start) as usize;
    let mut out = vec![0u8; len];
    let nonce = dest_key.map(|_| cpk::new_nonce());
    let mut ks = match (dest_key, &nonce) {
        (Some(k), Some(n)) => Some(k.keystream(n, 0)),
        _ => None,
    };
    let mut crc = crc64fast_nvme::Digest::new();
    let mut md5 = req
        .h("x-ms-source-content-md5")
        .map(|_| <md5::Md5 as md5::Digest>::new());
    let mut pos = 0usize;
    for (b, off, n) in segments(src, start, end) {
        let plain = b.read(off, n as usize, src_key).await.map_err(|e| {
            tracing::error!("reading a copy source: {e}");
            ApiError::internal()
        })?;
        crc.write(&plain);
        if let Some(m) = md5.as_mut() {
            md5::Digest::update(m, &plain);
        }
        let dst = &mut out[pos..pos + plain.len()];
        match ks.as_mut() {
            Some(ks) => ks.apply_to(&plain, dst),
            None => dst.copy_from_slice(&plain),
        }
        pos += plain.len();
    }
    if pos != len {
        tracing::error!("copy source shorter than its size");
        return Err(ApiError::internal());
    }
    let crc = crc.sum64();
    if let (Some(want), Some(m)) = (req.h("x-ms-source-content-md5"), md5) {
        let got = B64.encode(md5::Digest::finalize(m));
        if got != want {
            return Err(ApiError::new(
                400,
                "Md5Mismatch",
                "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
            )
            .with("UserSpecifiedMd5", want)
            .with("ServerCalculatedMd5", got));
        }
    }
    if let Some(want) = req.h("x-ms-source-content-crc64") {
        let got = B64.encode(crc.to_le_bytes());
        if got != want {
            return Err(ApiError::new(
                400,
                "Crc64Mismatch",
                "The CRC64 value specified in the request did not match with the CRC64 value calculated by the server.",
            )
            .with("UserSpecifiedCrc64", want)
            .with("ServerCalculatedCrc64", got));
        }
    }
    let stored = shared
        .disk
        .store_block(bytes::Bytes::from(out))
        .map_err(|e| {
            tracing::error!("store block: {e}");
            ApiError::internal()
        })?;
    Ok((
        Arc::new(Block {
            data: stored,
            len: len as u64,
            nonce,
            key_sha: dest_key.map(|k| k.sha.clone()),
        }),
        crc,
    ))
}

/// `PUT /{c}/{b}` with `x-ms-copy-source` and `x-ms-blob-type: BlockBlob`.
pub async fn put_blob_from_url(shared: &Shared, req: Req) -> R {
    match req.h("x-ms-blob-type") {
        Some("BlockBlob") => {}
        None => return Err(ApiError::missing_header("x-ms-blob-type")),
        Some(v) => return Err(ApiError::invalid_header("x-ms-blob-type", v)),
    }
    if !req.body.is_empty() {
        return Err(ApiError::invalid_header(
            "Content-Length",
            &req.body.len().to_string(),
        ));
    }
    let key = request_cpk(shared, &req, true)?;
    let metadata = parse_metadata(&req)?;
    {
        let mut st = shared.state.lock().unwrap();
        container_mut(&mut st, &req)?;
    }
    let (src, src_key) = open_source(shared, &req)?;
    if src.size > MAX_PUT_BLOB_FROM_URL {
        return Err(too_large(MAX_PUT_BLOB_FROM_URL));
    }
    // Same encryption on both sides: the stored blocks can be shared as they are
    // (what a re-key must not do; a rename under one key costs no copy).
    let same_key = src.key_sha == key.as_ref().map(|k| k.sha.clone());
    let (blocks, crc) = if same_key && req.h("x-ms-source-content-md5").is_none() {
        let blocks: Vec<(String, Arc<Block>)> = src
            .blocks
            .iter()
            .map(|(_, b)| (String::new(), b.clone()))
            .collect();
        (blocks, None)
    } else if src.size == 0 {
        (Vec::new(), Some(0))
    } else {
        let (b, crc) = copy_range(
            shared,
            &req,
            &src,
            src_key.as_ref(),
            0,
            src.size,
            key.as_ref(),
        )
        .await?;
        (vec![(String::new(), b)], Some(crc))
    };
    let props = if req.h("x-ms-copy-source-blob-properties") == Some("false") {
        blob_props(&req)
    } else {
        src.props.clone()
    };
    let committed = store_whole_blob(
        shared,
        &req,
        blocks,
        src.size,
        props,
        metadata,
        key.as_ref(),
    )?;
    let mut resp = etag_headers(
        Response::builder().status(201),
        &committed.etag,
        &committed.last_modified,
    )
    .header("content-length", "0");
    if let Some(crc) = crc {
        resp = resp.header("x-ms-content-crc64", B64.encode(crc.to_le_bytes()));
    }
    if let Some(m) = &committed.props.content_md5 {
        resp = resp.header("content-md5", m.as_str());
    }
    Ok(write_cpk_headers(resp, key.as_ref()).body(empty()).unwrap())
}

/// `PUT /{c}/{b}?comp=block&blockid=…` with `x-ms-copy-source` (and optionally
/// `x-ms-source-range: bytes=a-b`).
pub async fn put_block_from_url(shared: &Shared, req: Req) -> R {
    let (id, decoded) = block_id(&req)?;
    if !req.body.is_empty() {
        return Err(ApiError::invalid_header(
            "Content-Length",
            &req.body.len().to_string(),
        ));
    }
    let key = request_cpk(shared, &req, true)?;
    {
        let mut st = shared.state.lock().unwrap();
        container_mut(&mut st, &req)?;
    }
    let (src, src_key) = open_source(shared, &req)?;
    let (start, end) = match req.h("x-ms-source-range") {
        None => (0, src.size),
        Some(r) => {
            let (a, b) =
                parse_range(r).ok_or_else(|| ApiError::invalid_header("x-ms-source-range", r))?;
            if a >= src.size {
                return Err(source_error(
                    416,
                    "InvalidRange",
                    "The range specified is invalid for the current size of the resource.",
                ));
            }
            (a, b.map(|b| b + 1).unwrap_or(src.size).min(src.size))
        }
    };
    if end - start > MAX_BLOCK_FROM_URL {
        return Err(too_large(MAX_BLOCK_FROM_URL));
    }
    let (block, crc) = copy_range(
        shared,
        &req,
        &src,
        src_key.as_ref(),
        start,
        end,
        key.as_ref(),
    )
    .await?;
    stage_block(shared, &req, id, decoded.len(), block, key.as_ref())?;
    let b = Response::builder()
        .status(201)
        .header("content-length", "0")
        .header("x-ms-content-crc64", B64.encode(crc.to_le_bytes()));
    Ok(write_cpk_headers(b, key.as_ref()).body(empty()).unwrap())
}
