//! The Blob service operations (§4) with CPK enforcement (§3.7).

use std::collections::VecDeque;
use std::io;
use std::ops::Bound;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::response::Builder;
use http::Response;
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use md5::{Digest, Md5};

use super::cpk::{self, CpkKey};
use super::error::{xml_escape, ApiError};
use super::listing::{decode_marker, encode_marker, list_page, ListItem};
use super::server::{empty, full, Req, RespBody, Shared};
use super::store::{new_etag, next_seq, BlobEntry, Block, Committed, Container, CopyInfo, Props};

pub(crate) type R = Result<Response<RespBody>, ApiError>;

/// Response bodies are sent (and decrypted) in frames of at most this many bytes, so
/// a frame is still in cache when TLS encrypts it, and a truncated response can cut
/// anywhere.
const CHUNK: u64 = 256 * 1024;
const MAX_META: usize = 8 * 1024;

pub fn rfc1123(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

fn md5_b64(data: &[u8]) -> String {
    B64.encode(Md5::digest(data))
}

pub fn crc64(data: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(data);
    d.sum64()
}

pub fn crc64_b64(data: &[u8]) -> String {
    B64.encode(crc64(data).to_le_bytes())
}

pub async fn dispatch(shared: &Arc<Shared>, op: &str, req: Req) -> R {
    match op {
        "CreateContainer" => create_container(shared, req),
        "GetContainerProperties" | "GetContainerMetadata" => get_container_props(shared, req),
        "DeleteContainer" => delete_container(shared, req),
        "SetContainerMetadata" => set_container_metadata(shared, req),
        "ListBlobs" => list_blobs(shared, req),
        "ListContainers" => list_containers(shared, req),
        "GetBlob" => get_blob(shared, req, false).await,
        "GetBlobProperties" => get_blob(shared, req, true).await,
        "GetBlobMetadata" => get_blob_metadata(shared, req),
        "PutBlob" => put_blob(shared, req),
        "PutBlock" => put_block(shared, req),
        "PutBlockList" => put_block_list(shared, req),
        "GetBlockList" => get_block_list(shared, req),
        "DeleteBlob" => delete_blob(shared, req),
        "SetBlobMetadata" => set_blob_metadata(shared, req),
        "SetBlobProperties" => set_blob_properties(shared, req),
        "CopyBlob" => copy_blob(shared, req),
        "PutBlobFromUrl" => super::from_url::put_blob_from_url(shared, req).await,
        "PutBlockFromUrl" => super::from_url::put_block_from_url(shared, req).await,
        _ => Err(ApiError::unsupported()),
    }
}

// ---------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------

pub(crate) fn request_cpk(
    shared: &Shared,
    req: &Req,
    write: bool,
) -> Result<Option<CpkKey>, ApiError> {
    if cpk::any_cpk_header(&req.headers) && !req.tls && !shared.allow_cpk_over_http {
        return Err(ApiError::new(
            400,
            "AccountRequiresHttps",
            "The account being accessed does not support http.",
        ));
    }
    cpk::parse(&req.headers, write)
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `x-ms-meta-*` headers, validated (§1.5).
pub(crate) fn parse_metadata(req: &Req) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut total = 0usize;
    for name in req.headers.keys() {
        let Some(m) = name.as_str().strip_prefix("x-ms-meta-") else {
            continue;
        };
        if m.is_empty() {
            return Err(ApiError::new(
                400,
                "EmptyMetadataKey",
                "The key for one of the metadata key-value pairs is empty.",
            ));
        }
        let values: Vec<_> = req.headers.get_all(name).iter().collect();
        if !is_identifier(m) || values.len() > 1 {
            return Err(ApiError::new(
                400,
                "InvalidMetadata",
                "The metadata specified is invalid. It has characters that are not permitted.",
            ));
        }
        let v = String::from_utf8_lossy(values[0].as_bytes())
            .trim()
            .to_string();
        total += m.len() + v.len();
        out.push((m.to_string(), v));
    }
    if total > MAX_META {
        return Err(ApiError::new(
            400,
            "MetadataTooLarge",
            "The size of the request metadata exceeds the maximum size permitted.",
        ));
    }
    out.sort();
    Ok(out)
}

pub(crate) fn blob_props(req: &Req) -> Props {
    let g = |n: &str| req.h(n).map(str::to_string);
    Props {
        content_type: g("x-ms-blob-content-type"),
        content_encoding: g("x-ms-blob-content-encoding"),
        content_language: g("x-ms-blob-content-language"),
        content_disposition: g("x-ms-blob-content-disposition"),
        cache_control: g("x-ms-blob-cache-control"),
        content_md5: g("x-ms-blob-content-md5"),
    }
}

/// Verify an optional transactional Content-MD5 / x-ms-content-crc64 of the request
/// body (digests computed while it was received). Returns (md5 if given, crc64 base64).
fn check_transactional(req: &Req) -> Result<(Option<String>, String), ApiError> {
    let md5_hdr = req.h("content-md5");
    let crc_hdr = req.h("x-ms-content-crc64");
    if md5_hdr.is_some() && crc_hdr.is_some() {
        return Err(ApiError::new(
            400,
            "InvalidInput",
            "One of the request inputs is not valid.",
        )
        .with("HeaderName", "x-ms-content-crc64"));
    }
    let crc = B64.encode(req.body_crc64.to_le_bytes());
    if let Some(m) = md5_hdr {
        if B64.decode(m).map(|v| v.len() != 16).unwrap_or(true) {
            return Err(ApiError::new(
                400,
                "InvalidMd5",
                "The MD5 value specified in the request is invalid. The MD5 value must be 128 bits and Base64-encoded.",
            ));
        }
        let Some(digest) = req.body_md5 else {
            tracing::error!("body MD5 not computed");
            return Err(ApiError::internal());
        };
        let calc = B64.encode(digest);
        if calc != m {
            return Err(ApiError::new(
                400,
                "Md5Mismatch",
                "The MD5 value specified in the request did not match with the MD5 value calculated by the server.",
            )
            .with("UserSpecifiedMd5", m)
            .with("ServerCalculatedMd5", calc));
        }
        return Ok((Some(m.to_string()), crc));
    }
    if let Some(c) = crc_hdr {
        if c != crc {
            return Err(ApiError::new(
                400,
                "Crc64Mismatch",
                "The CRC64 value specified in the request did not match with the CRC64 value calculated by the server.",
            )
            .with("UserSpecifiedCrc64", c)
            .with("ServerCalculatedCrc64", crc.clone()));
        }
    }
    Ok((None, crc))
}

fn strip_quotes(s: &str) -> &str {
    s.trim().trim_matches('"')
}

fn etag_list_matches(list: &str, etag: &str) -> bool {
    list.split(',')
        .any(|e| strip_quotes(e) == "*" || strip_quotes(e) == etag)
}

/// Conditional headers (§4.16). `current` is the committed blob, if any.
pub(crate) fn check_conditions(
    req: &Req,
    current: Option<&Committed>,
    read: bool,
) -> Result<(), ApiError> {
    let if_match = req.h("if-match");
    let if_none = req.h("if-none-match");
    let ims = req
        .h("if-modified-since")
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let ius = req
        .h("if-unmodified-since")
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let Some(cur) = current else {
        if if_match.is_some() {
            return Err(ApiError::condition_not_met());
        }
        return Ok(());
    };
    let lm_secs = cur.last_modified.timestamp();
    let secs = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    };
    if let Some(m) = if_match {
        if !etag_list_matches(m, &cur.etag) {
            return Err(ApiError::condition_not_met());
        }
    }
    if let Some(t) = ius {
        if lm_secs > secs(t) {
            return Err(ApiError::condition_not_met());
        }
    }
    if let Some(n) = if_none {
        if strip_quotes(n) == "*" && !read {
            return Err(ApiError::blob_exists());
        }
        if etag_list_matches(n, &cur.etag) {
            return Err(if read {
                ApiError::not_modified()
            } else {
                ApiError::condition_not_met()
            });
        }
    }
    if let Some(t) = ims {
        if lm_secs <= secs(t) {
            return Err(if read {
                ApiError::not_modified()
            } else {
                ApiError::condition_not_met()
            });
        }
    }
    Ok(())
}

pub(crate) fn container_mut<'a>(
    st: &'a mut super::store::State,
    req: &Req,
) -> Result<&'a mut Container, ApiError> {
    st.accounts
        .get_mut(&req.account)
        .and_then(|a| a.containers.get_mut(&req.container))
        .ok_or_else(ApiError::container_not_found)
}

/// Clone the committed version of the addressed blob (lock held only for the lookup).
fn committed_of(shared: &Shared, req: &Req) -> Result<Arc<Committed>, ApiError> {
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, req)?;
    c.blobs
        .get(&req.blob)
        .and_then(|e| e.committed.clone())
        .ok_or_else(ApiError::blob_not_found)
}

pub(crate) fn persist_blob(
    shared: &Shared,
    req: &Req,
    entry: Option<&BlobEntry>,
) -> Result<(), ApiError> {
    shared
        .disk
        .save_blob(&req.account, &req.container, &req.blob, entry)
        .map_err(|e| {
            tracing::error!("persist: {e}");
            ApiError::internal()
        })
}

pub(crate) fn write_cpk_headers(b: Builder, key: Option<&CpkKey>) -> Builder {
    let b = b.header("x-ms-request-server-encrypted", "true");
    match key {
        Some(k) => b.header("x-ms-encryption-key-sha256", k.sha.as_str()),
        None => b,
    }
}

pub(crate) fn etag_headers(b: Builder, etag: &str, lm: &DateTime<Utc>) -> Builder {
    b.header("etag", format!("\"{etag}\""))
        .header("last-modified", rfc1123(lm))
}

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

pub fn new_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut n[..]);
    n
}

/// Encrypt (if keyed and not already encrypted on receipt, see `Req::body_encrypted`)
/// and store a received body as a block.
fn make_block(
    shared: &Shared,
    mut data: bytes::BytesMut,
    encrypted: Option<([u8; 16], String)>,
    key: Option<&CpkKey>,
) -> Result<Arc<Block>, ApiError> {
    let len = data.len() as u64;
    let nonce = match (key, encrypted) {
        (Some(k), Some((n, sha))) if sha == k.sha => Some(n),
        (Some(k), None) => {
            let n = new_nonce();
            k.apply(&n, 0, &mut data);
            Some(n)
        }
        (None, None) => None,
        _ => {
            tracing::error!("body encrypted on receipt with a key other than the request's");
            return Err(ApiError::internal());
        }
    };
    let stored = shared.disk.store_block(data.freeze()).map_err(|e| {
        tracing::error!("store block: {e}");
        ApiError::internal()
    })?;
    Ok(Arc::new(Block {
        data: stored,
        len,
        nonce,
        key_sha: key.map(|k| k.sha.clone()),
    }))
}

// ---------------------------------------------------------------------------------
// containers
// ---------------------------------------------------------------------------------

pub fn valid_container_name(n: &str) -> bool {
    let b = n.as_bytes();
    (3..=63).contains(&b.len())
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && !n.contains("--")
}

fn create_container(shared: &Shared, req: Req) -> R {
    if !valid_container_name(&req.container) {
        return Err(ApiError::new(
            400,
            "InvalidResourceName",
            "The specifed resource name contains invalid characters.",
        ));
    }
    let metadata = parse_metadata(&req)?;
    let mut st = shared.state.lock().unwrap();
    let acct = st
        .accounts
        .get_mut(&req.account)
        .ok_or_else(ApiError::container_not_found)?;
    if acct.containers.contains_key(&req.container) {
        return Err(ApiError::new(
            409,
            "ContainerAlreadyExists",
            "The specified container already exists.",
        ));
    }
    let c = Container {
        etag: new_etag(),
        last_modified: Utc::now(),
        metadata,
        blobs: Default::default(),
    };
    shared
        .disk
        .save_container(&req.account, &req.container, &c)
        .map_err(|_| ApiError::internal())?;
    let resp = etag_headers(Response::builder().status(201), &c.etag, &c.last_modified)
        .header("content-length", "0")
        .body(empty())
        .unwrap();
    acct.containers.insert(req.container.clone(), c);
    Ok(resp)
}

fn get_container_props(shared: &Shared, req: Req) -> R {
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, &req)?;
    let mut b = etag_headers(Response::builder().status(200), &c.etag, &c.last_modified)
        .header("x-ms-lease-status", "unlocked")
        .header("x-ms-lease-state", "available")
        .header("x-ms-has-immutability-policy", "false")
        .header("x-ms-has-legal-hold", "false")
        .header("content-length", "0");
    for (k, v) in &c.metadata {
        b = b.header(format!("x-ms-meta-{k}"), v.as_str());
    }
    Ok(b.body(empty()).unwrap())
}

fn set_container_metadata(shared: &Shared, req: Req) -> R {
    let metadata = parse_metadata(&req)?;
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, &req)?;
    c.metadata = metadata;
    c.etag = new_etag();
    c.last_modified = Utc::now();
    shared
        .disk
        .save_container(&req.account, &req.container, c)
        .map_err(|_| ApiError::internal())?;
    Ok(
        etag_headers(Response::builder().status(200), &c.etag, &c.last_modified)
            .header("content-length", "0")
            .body(empty())
            .unwrap(),
    )
}

fn delete_container(shared: &Shared, req: Req) -> R {
    let mut st = shared.state.lock().unwrap();
    let acct = st
        .accounts
        .get_mut(&req.account)
        .ok_or_else(ApiError::container_not_found)?;
    if acct.containers.remove(&req.container).is_none() {
        return Err(ApiError::container_not_found());
    }
    let _ = shared.disk.delete_container(&req.account, &req.container);
    Ok(Response::builder()
        .status(202)
        .header("content-length", "0")
        .body(empty())
        .unwrap())
}

fn list_containers(shared: &Shared, req: Req) -> R {
    let prefix = req.q("prefix").unwrap_or("").to_string();
    let st = shared.state.lock().unwrap();
    let acct = st
        .accounts
        .get(&req.account)
        .ok_or_else(ApiError::container_not_found)?;
    let base = shared.base_url.lock().unwrap().clone();
    let mut x = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{}/{}/\">",
        xml_escape(&base),
        xml_escape(&req.account)
    );
    if !prefix.is_empty() {
        x.push_str(&format!("<Prefix>{}</Prefix>", xml_escape(&prefix)));
    }
    x.push_str("<Containers>");
    for (name, c) in acct
        .containers
        .iter()
        .filter(|(n, _)| n.starts_with(&prefix))
    {
        x.push_str(&format!(
            "<Container><Name>{}</Name><Properties><Last-Modified>{}</Last-Modified><Etag>\"{}\"</Etag><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><HasImmutabilityPolicy>false</HasImmutabilityPolicy><HasLegalHold>false</HasLegalHold></Properties></Container>",
            xml_escape(name),
            rfc1123(&c.last_modified),
            c.etag
        ));
    }
    x.push_str("</Containers><NextMarker /></EnumerationResults>");
    Ok(xml_response(200, x))
}

fn xml_response(status: u16, body: String) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .header("content-length", body.len())
        .body(full(body))
        .unwrap()
}

// ---------------------------------------------------------------------------------
// listing
// ---------------------------------------------------------------------------------

fn xml_name(name: &str) -> String {
    let bad = name.chars().any(|c| {
        (c < ' ' && c != '\t' && c != '\n' && c != '\r') || c == '\u{fffe}' || c == '\u{ffff}'
    });
    if bad {
        const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~')
            .remove(b'/');
        format!(
            "<Name Encoded=\"true\">{}</Name>",
            percent_encoding::utf8_percent_encode(name, SET)
        )
    } else {
        format!("<Name>{}</Name>", xml_escape(name))
    }
}

fn opt_el(x: &mut String, name: &str, v: &Option<String>) {
    match v {
        Some(v) if !v.is_empty() => x.push_str(&format!("<{name}>{}</{name}>", xml_escape(v))),
        _ => x.push_str(&format!("<{name} />")),
    }
}

/// The query of a List Blobs request, validated.
struct ListQuery {
    prefix: String,
    delimiter: String,
    /// The marker as sent (echoed in `<Marker>`) and the name it resumes at.
    marker_raw: String,
    marker: String,
    max: usize,
    inc_meta: bool,
    inc_uncommitted: bool,
}

impl ListQuery {
    fn parse(req: &Req) -> Result<ListQuery, ApiError> {
        let prefix = req.q("prefix").unwrap_or("").to_string();
        let delimiter = req.q("delimiter").unwrap_or("").to_string();
        let marker_raw = req.q("marker").unwrap_or("").to_string();
        let max = match req.q("maxresults") {
            None => 5000,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n <= 0 => return Err(ApiError::out_of_range_query("maxresults", v)),
                Ok(n) => n.min(5000) as usize,
                Err(_) => return Err(ApiError::invalid_query("maxresults", v, "Invalid integer")),
            },
        };
        let (inc_meta, inc_uncommitted) = parse_include(req)?;
        let marker = if marker_raw.is_empty() {
            String::new()
        } else {
            decode_marker(&marker_raw)
                .ok_or_else(|| ApiError::invalid_query("marker", &marker_raw, "Invalid marker"))?
        };
        Ok(ListQuery {
            prefix,
            delimiter,
            marker_raw,
            marker,
            max,
            inc_meta,
            inc_uncommitted,
        })
    }
}

/// List Blobs' `include`: (metadata, uncommittedblobs). The other datasets
/// are accepted and have nothing to show here.
fn parse_include(req: &Req) -> Result<(bool, bool), ApiError> {
    let mut inc_meta = false;
    let mut inc_uncommitted = false;
    if let Some(inc) = req.q("include") {
        for i in inc.split(',').filter(|s| !s.is_empty()) {
            match i {
                "metadata" => inc_meta = true,
                "uncommittedblobs" => inc_uncommitted = true,
                "snapshots"
                | "copy"
                | "deleted"
                | "tags"
                | "versions"
                | "deletedwithversions"
                | "immutabilitypolicy"
                | "legalhold"
                | "permissions" => {}
                _ => return Err(ApiError::invalid_query("include", inc, "Invalid value")),
            }
        }
    }
    Ok((inc_meta, inc_uncommitted))
}

fn list_blobs(shared: &Shared, req: Req) -> R {
    let q = ListQuery::parse(&req)?;
    let base = shared.base_url.lock().unwrap().clone();
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, &req)?;
    let blobs = &c.blobs;
    let inc_uncommitted = q.inc_uncommitted;
    // A range of the ordered map from each point the walk seeks to: the page
    // costs O(page), whatever the container holds (listing.rs).
    let visible_from = |start: &str| {
        blobs
            .range::<str, _>((Bound::Included(start), Bound::Unbounded))
            .filter(move |(_, e)| {
                e.committed.is_some() || (inc_uncommitted && !e.uncommitted.is_empty())
            })
            .map(|(n, _)| n.as_str())
    };
    let (items, next) = list_page(visible_from, &q.marker, &q.prefix, &q.delimiter, q.max);

    let mut x = String::with_capacity(512 + items.len() * 700);
    push_list_head(&mut x, &req, &base, &q);
    x.push_str("<Blobs>");
    for item in &items {
        match item {
            ListItem::Prefix(p) => {
                x.push_str("<BlobPrefix>");
                x.push_str(&xml_name(p));
                x.push_str("</BlobPrefix>");
            }
            ListItem::Blob(name) => push_blob_item(&mut x, name, &blobs[*name], q.inc_meta),
        }
    }
    x.push_str("</Blobs>");
    match next {
        Some(n) => x.push_str(&format!("<NextMarker>{}</NextMarker>", encode_marker(&n))),
        None => x.push_str("<NextMarker />"),
    }
    x.push_str("</EnumerationResults>");
    drop(st);
    Ok(xml_response(200, x))
}

/// The XML declaration, `<EnumerationResults>` and the echo of the
/// parameters that were sent.
fn push_list_head(x: &mut String, req: &Req, base: &str, q: &ListQuery) {
    x.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><EnumerationResults ServiceEndpoint=\"{}/{}/\" ContainerName=\"{}\">",
        xml_escape(base),
        xml_escape(&req.account),
        xml_escape(&req.container)
    ));
    if req.q("prefix").is_some() {
        x.push_str(&format!("<Prefix>{}</Prefix>", xml_escape(&q.prefix)));
    }
    if req.q("marker").is_some() {
        x.push_str(&format!("<Marker>{}</Marker>", xml_escape(&q.marker_raw)));
    }
    if req.q("maxresults").is_some() {
        x.push_str(&format!("<MaxResults>{}</MaxResults>", q.max));
    }
    if req.q("delimiter").is_some() {
        x.push_str(&format!(
            "<Delimiter>{}</Delimiter>",
            xml_escape(&q.delimiter)
        ));
    }
}

/// One `<Blob>` of a listing.
fn push_blob_item(x: &mut String, name: &str, e: &BlobEntry, inc_meta: bool) {
    x.push_str("<Blob>");
    x.push_str(&xml_name(name));
    x.push_str("<Properties>");
    match &e.committed {
        Some(b) => {
            push_committed_props(x, b);
            x.push_str("</Properties>");
            if inc_meta {
                push_metadata(x, b);
            }
        }
        None => {
            // Only uncommitted blocks: Last-Modified is when the
            // last one was staged.
            if let Some(t) = &e.staged_at {
                x.push_str(&format!(
                    "<Creation-Time>{0}</Creation-Time><Last-Modified>{0}</Last-Modified>",
                    rfc1123(t)
                ));
            }
            x.push_str("<Content-Length>0</Content-Length><BlobType>BlockBlob</BlobType><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted></Properties>");
            if inc_meta {
                x.push_str("<Metadata />");
            }
        }
    }
    x.push_str("</Blob>");
}

/// The `<Properties>` elements of a committed blob (without the closing tag).
fn push_committed_props(x: &mut String, b: &Committed) {
    x.push_str(&format!(
        "<Creation-Time>{}</Creation-Time><Last-Modified>{}</Last-Modified><Etag>{}</Etag><Content-Length>{}</Content-Length>",
        rfc1123(&b.created),
        rfc1123(&b.last_modified),
        b.etag,
        b.size
    ));
    let p = &b.props;
    x.push_str(&format!(
        "<Content-Type>{}</Content-Type>",
        xml_escape(
            p.content_type
                .as_deref()
                .unwrap_or("application/octet-stream")
        )
    ));
    opt_el(x, "Content-Encoding", &p.content_encoding);
    opt_el(x, "Content-Language", &p.content_language);
    x.push_str("<Content-CRC64 />");
    opt_el(x, "Content-MD5", &p.content_md5);
    opt_el(x, "Cache-Control", &p.cache_control);
    opt_el(x, "Content-Disposition", &p.content_disposition);
    x.push_str("<BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier><AccessTierInferred>true</AccessTierInferred><LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState><ServerEncrypted>true</ServerEncrypted>");
    if let Some(s) = &b.key_sha {
        x.push_str(&format!(
            "<CustomerProvidedKeySha256>{s}</CustomerProvidedKeySha256>"
        ));
    }
    if let Some(cp) = &b.copy {
        x.push_str(&format!(
            "<CopyId>{}</CopyId><CopyStatus>success</CopyStatus><CopySource>{}</CopySource><CopyProgress>{}</CopyProgress><CopyCompletionTime>{}</CopyCompletionTime>",
            cp.id,
            xml_escape(&cp.source),
            cp.progress,
            rfc1123(&cp.completion)
        ));
    }
}

/// `<Metadata>` of a committed blob; a CPK blob's is encrypted, so the
/// service does not show it.
fn push_metadata(x: &mut String, b: &Committed) {
    if b.key_sha.is_some() {
        x.push_str("<Metadata Encrypted=\"true\" />");
    } else if b.metadata.is_empty() {
        x.push_str("<Metadata />");
    } else {
        x.push_str("<Metadata>");
        for (k, v) in &b.metadata {
            x.push_str(&format!("<{k}>{}</{k}>", xml_escape(v)));
        }
        x.push_str("</Metadata>");
    }
}

// ---------------------------------------------------------------------------------
// reads
// ---------------------------------------------------------------------------------

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

async fn get_blob(shared: &Shared, req: Req, head: bool) -> R {
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

fn get_blob_metadata(shared: &Shared, req: Req) -> R {
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

fn get_block_list(shared: &Shared, req: Req) -> R {
    let which = req
        .q("blocklisttype")
        .unwrap_or("committed")
        .to_ascii_lowercase();
    let (want_c, want_u) = match which.as_str() {
        "committed" => (true, false),
        "uncommitted" => (false, true),
        "all" => (true, true),
        other => {
            return Err(ApiError::invalid_query(
                "blocklisttype",
                other,
                "Invalid value",
            ))
        }
    };
    let mut st = shared.state.lock().unwrap();
    let cont = container_mut(&mut st, &req)?;
    let e = cont
        .blobs
        .get(&req.blob)
        .filter(|e| e.committed.is_some() || !e.uncommitted.is_empty())
        .ok_or_else(ApiError::blob_not_found)?;
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?><BlockList>");
    if want_c {
        let blocks = e
            .committed
            .iter()
            .flat_map(|c| c.blocks.iter())
            .filter(|(id, _)| !id.is_empty())
            .map(|(id, b)| (id.as_str(), b.len));
        push_block_list(&mut x, "CommittedBlocks", blocks);
    }
    if want_u {
        let blocks = e.uncommitted_sorted();
        push_block_list(
            &mut x,
            "UncommittedBlocks",
            blocks.iter().map(|(id, b)| (id.as_str(), b.len)),
        );
    }
    x.push_str("</BlockList>");
    let mut b = Response::builder()
        .status(200)
        .header("content-type", "application/xml")
        .header("content-length", x.len())
        .header(
            "x-ms-blob-content-length",
            e.committed.as_ref().map(|c| c.size).unwrap_or(0),
        );
    if let Some(c) = &e.committed {
        b = etag_headers(b, &c.etag, &c.last_modified);
    }
    Ok(b.body(full(x)).unwrap())
}

// ---------------------------------------------------------------------------------
// writes
// ---------------------------------------------------------------------------------

fn put_blob(shared: &Shared, mut req: Req) -> R {
    match req.h("x-ms-blob-type") {
        None => return Err(ApiError::missing_header("x-ms-blob-type")),
        Some("BlockBlob") => {}
        Some(v) => return Err(ApiError::invalid_header("x-ms-blob-type", v)),
    }
    let key = request_cpk(shared, &req, true)?;
    let metadata = parse_metadata(&req)?;
    let mut props = blob_props(&req);
    {
        let mut st = shared.state.lock().unwrap();
        container_mut(&mut st, &req)?;
    }
    let body = std::mem::take(&mut req.body);
    let (_, crc) = check_transactional(&req)?;
    let Some(md5) = req.body_md5.map(|d| B64.encode(d)) else {
        tracing::error!("body MD5 not computed");
        return Err(ApiError::internal());
    };
    if props.content_md5.is_none() {
        props.content_md5 = Some(md5.clone());
    }
    let size = body.len() as u64;
    let blocks = if body.is_empty() {
        vec![]
    } else {
        let enc = req.body_encrypted.take();
        vec![(String::new(), make_block(shared, body, enc, key.as_ref())?)]
    };
    let committed = store_whole_blob(shared, &req, blocks, size, props, metadata, key.as_ref())?;
    let resp = etag_headers(
        Response::builder().status(201),
        &committed.etag,
        &committed.last_modified,
    )
    .header("content-md5", md5)
    .header("x-ms-content-crc64", crc)
    .header("content-length", "0");
    Ok(write_cpk_headers(resp, key.as_ref()).body(empty()).unwrap())
}

/// Replace the blob's content as one commit (Put Blob, Put Blob From URL):
/// the request's conditions are checked against the current version, a blob
/// created only for the check is not left behind, staged blocks are dropped,
/// and the new version is persisted. Returns it.
pub fn store_whole_blob(
    shared: &Shared,
    req: &Req,
    blocks: Vec<(String, Arc<Block>)>,
    size: u64,
    props: Props,
    metadata: Vec<(String, String)>,
    key: Option<&CpkKey>,
) -> Result<Arc<Committed>, ApiError> {
    let mut st = shared.state.lock().unwrap();
    let cont = container_mut(&mut st, req)?;
    let entry = cont.blobs.entry(req.blob.clone()).or_default();
    if let Err(e) = check_conditions(req, entry.committed.as_deref(), false) {
        if entry.committed.is_none() && entry.uncommitted.is_empty() {
            cont.blobs.remove(&req.blob);
        }
        return Err(e);
    }
    let now = Utc::now();
    let committed = Arc::new(Committed {
        blocks,
        size,
        props,
        metadata,
        key_sha: key.map(|k| k.sha.clone()),
        etag: new_etag(),
        last_modified: now,
        created: entry.committed.as_ref().map(|c| c.created).unwrap_or(now),
        copy: None,
    });
    entry.committed = Some(committed.clone());
    entry.uncommitted.clear();
    persist_blob(shared, req, Some(entry))?;
    Ok(committed)
}

/// The `blockid` query of Put Block / Put Block From URL: base64 of at most
/// 64 bytes. Returns it as sent and decoded.
pub fn block_id(req: &Req) -> Result<(String, Vec<u8>), ApiError> {
    let id = req.q("blockid").unwrap_or("").to_string();
    let decoded = B64
        .decode(&id)
        .ok()
        .filter(|d| !id.is_empty() && d.len() <= 64)
        .ok_or_else(|| ApiError::invalid_query("blockid", &id, "Not a valid base64 string."))?;
    Ok((id, decoded))
}

fn put_block(shared: &Shared, mut req: Req) -> R {
    let (id, decoded) = block_id(&req)?;
    let key = request_cpk(shared, &req, true)?;
    {
        let mut st = shared.state.lock().unwrap();
        container_mut(&mut st, &req)?;
    }
    let body = std::mem::take(&mut req.body);
    let (md5, crc) = check_transactional(&req)?;
    let enc = req.body_encrypted.take();
    let block = make_block(shared, body, enc, key.as_ref())?;
    stage_block(shared, &req, id, decoded.len(), block, key.as_ref())?;
    let mut b = Response::builder()
        .status(201)
        .header("content-length", "0");
    b = match md5 {
        Some(m) => b.header("content-md5", m),
        None => b.header("x-ms-content-crc64", crc),
    };
    Ok(write_cpk_headers(b, key.as_ref()).body(empty()).unwrap())
}

/// Add a received or copied block to the blob's uncommitted blocks: the block IDs of
/// one blob must have one length, and the key must agree with the blocks already
/// staged (§3.7).
pub(crate) fn stage_block(
    shared: &Shared,
    req: &Req,
    id: String,
    id_len: usize,
    block: Arc<Block>,
    key: Option<&CpkKey>,
) -> Result<(), ApiError> {
    let mut st = shared.state.lock().unwrap();
    let cont = container_mut(&mut st, req)?;
    let entry = cont.blobs.entry(req.blob.clone()).or_default();
    let check = (|| {
        if let Some((other_id, (_, other))) = entry.uncommitted.iter().next() {
            let other_len = B64.decode(other_id).map(|d| d.len()).unwrap_or(0);
            if other_len != id_len {
                return Err(ApiError::new(
                    400,
                    "InvalidBlobOrBlock",
                    "The specified blob or block content is invalid.",
                ));
            }
            cpk::check(other.key_sha.as_deref(), key)?;
        }
        if !entry.uncommitted.contains_key(&id) && entry.uncommitted.len() >= 100_000 {
            return Err(ApiError::new(
                409,
                "BlockCountExceedsLimit",
                "The uncommitted block count cannot exceed the maximum limit of 100,000 blocks.",
            ));
        }
        Ok(())
    })();
    if let Err(e) = check {
        if entry.committed.is_none() && entry.uncommitted.is_empty() {
            cont.blobs.remove(&req.blob);
        }
        return Err(e);
    }
    entry.uncommitted.insert(id, (next_seq(), block));
    entry.staged_at = Some(Utc::now());
    persist_blob(shared, req, Some(entry))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ListKind {
    Committed,
    Uncommitted,
    Latest,
}

/// Parse a Put Block List body.
pub fn parse_block_list(body: &[u8]) -> Result<Vec<(ListKind, String)>, ApiError> {
    use quick_xml::events::Event;
    let bad = || {
        ApiError::new(
            400,
            "InvalidXmlDocument",
            "XML specified is not syntactically valid.",
        )
    };
    let mut r = quick_xml::Reader::from_reader(body);
    r.config_mut().trim_text(true);
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut root_seen = false;
    let mut current: Option<ListKind> = None;
    let mut text = String::new();
    loop {
        match r.read_event().map_err(|_| bad())? {
            Event::Start(e) => {
                depth += 1;
                let name = e.name();
                if depth == 1 {
                    if name.as_ref() != b"BlockList" {
                        return Err(bad());
                    }
                    root_seen = true;
                } else if depth == 2 {
                    current = match name.as_ref() {
                        b"Committed" => Some(ListKind::Committed),
                        b"Uncommitted" => Some(ListKind::Uncommitted),
                        b"Latest" => Some(ListKind::Latest),
                        _ => return Err(bad()),
                    };
                    text.clear();
                } else {
                    return Err(bad());
                }
            }
            Event::Text(t) if depth == 2 => {
                text.push_str(&t.unescape().map_err(|_| bad())?);
            }
            Event::End(_) => {
                if depth == 2 {
                    out.push((current.take().ok_or_else(bad)?, text.trim().to_string()));
                }
                depth = depth.checked_sub(1).ok_or_else(bad)?;
            }
            Event::Empty(e) => {
                if depth == 0 && e.name().as_ref() == b"BlockList" {
                    root_seen = true;
                } else if depth == 1 {
                    let kind = match e.name().as_ref() {
                        b"Committed" => ListKind::Committed,
                        b"Uncommitted" => ListKind::Uncommitted,
                        b"Latest" => ListKind::Latest,
                        _ => return Err(bad()),
                    };
                    out.push((kind, String::new()));
                } else {
                    return Err(bad());
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen || depth != 0 {
        return Err(bad());
    }
    Ok(out)
}

/// Resolve a block list against the blob's committed and uncommitted blocks.
pub fn resolve_block_list(
    list: &[(ListKind, String)],
    entry: &BlobEntry,
) -> Result<Vec<(String, Arc<Block>)>, ApiError> {
    let invalid = || {
        ApiError::new(
            400,
            "InvalidBlockList",
            "The specified block list is invalid.",
        )
    };
    let committed: std::collections::HashMap<&str, &Arc<Block>> = entry
        .committed
        .iter()
        .flat_map(|c| c.blocks.iter())
        .filter(|(id, _)| !id.is_empty())
        .map(|(id, b)| (id.as_str(), b))
        .collect();
    let mut out = Vec::with_capacity(list.len());
    for (kind, id) in list {
        let u = entry.uncommitted.get(id).map(|(_, b)| b);
        let c = committed.get(id.as_str()).copied();
        let b = match kind {
            ListKind::Committed => c,
            ListKind::Uncommitted => u,
            ListKind::Latest => u.or(c),
        }
        .ok_or_else(invalid)?;
        out.push((id.clone(), b.clone()));
    }
    Ok(out)
}

fn put_block_list(shared: &Shared, req: Req) -> R {
    let key = request_cpk(shared, &req, true)?;
    let (md5, crc) = check_transactional(&req)?;
    let list = parse_block_list(&req.body)?;
    if list.len() > 50_000 {
        return Err(ApiError::new(
            400,
            "BlockListTooLong",
            "The block list may not contain more than 50,000 blocks.",
        ));
    }
    let metadata = parse_metadata(&req)?;
    let props = blob_props(&req);
    let mut st = shared.state.lock().unwrap();
    let cont = container_mut(&mut st, &req)?;
    let empty_entry = BlobEntry::default();
    let entry_ref = cont.blobs.get(&req.blob).unwrap_or(&empty_entry);
    check_conditions(&req, entry_ref.committed.as_deref(), false)?;
    let blocks = resolve_block_list(&list, entry_ref)?;
    for (_, b) in &blocks {
        cpk::check(b.key_sha.as_deref(), key.as_ref())?;
    }
    let size = blocks.iter().map(|(_, b)| b.len).sum();
    let now = Utc::now();
    let created = entry_ref
        .committed
        .as_ref()
        .map(|c| c.created)
        .unwrap_or(now);
    let committed = Committed {
        blocks,
        size,
        props,
        metadata,
        key_sha: key.as_ref().map(|k| k.sha.clone()),
        etag: new_etag(),
        last_modified: now,
        created,
        copy: None,
    };
    let mut b = etag_headers(Response::builder().status(201), &committed.etag, &now)
        .header("content-length", "0");
    b = match md5 {
        Some(m) => b.header("content-md5", m),
        None => b.header("x-ms-content-crc64", crc),
    };
    let entry = cont.blobs.entry(req.blob.clone()).or_default();
    entry.committed = Some(Arc::new(committed));
    entry.uncommitted.clear();
    persist_blob(shared, &req, Some(entry))?;
    Ok(write_cpk_headers(b, key.as_ref()).body(empty()).unwrap())
}

fn delete_blob(shared: &Shared, req: Req) -> R {
    let mut st = shared.state.lock().unwrap();
    let cont = container_mut(&mut st, &req)?;
    let c = cont
        .blobs
        .get(&req.blob)
        .and_then(|e| e.committed.clone())
        .ok_or_else(ApiError::blob_not_found)?;
    check_conditions(&req, Some(&c), false)?;
    cont.blobs.remove(&req.blob);
    persist_blob(shared, &req, None)?;
    Ok(Response::builder()
        .status(202)
        .header("content-length", "0")
        .header("x-ms-delete-type-permanent", "true")
        .body(empty())
        .unwrap())
}

/// Replace the committed version of a blob by `f(current)` under the lock.
fn update_committed(
    shared: &Shared,
    req: &Req,
    f: impl FnOnce(&Committed) -> Result<Committed, ApiError>,
) -> Result<Arc<Committed>, ApiError> {
    let mut st = shared.state.lock().unwrap();
    let cont = container_mut(&mut st, req)?;
    let entry = cont
        .blobs
        .get_mut(&req.blob)
        .filter(|e| e.committed.is_some())
        .ok_or_else(ApiError::blob_not_found)?;
    let cur = entry.committed.clone().expect("checked");
    let new = Arc::new(f(&cur)?);
    entry.committed = Some(new.clone());
    persist_blob(shared, req, Some(entry))?;
    Ok(new)
}

fn set_blob_metadata(shared: &Shared, req: Req) -> R {
    let key = request_cpk(shared, &req, true)?;
    let metadata = parse_metadata(&req)?;
    let new = update_committed(shared, &req, |cur| {
        cpk::check(cur.key_sha.as_deref(), key.as_ref())?;
        check_conditions(&req, Some(cur), false)?;
        Ok(cur.with_changes(cur.props.clone(), metadata))
    })?;
    let b = etag_headers(
        Response::builder().status(200),
        &new.etag,
        &new.last_modified,
    )
    .header("content-length", "0");
    Ok(write_cpk_headers(b, key.as_ref()).body(empty()).unwrap())
}

fn set_blob_properties(shared: &Shared, req: Req) -> R {
    let props = blob_props(&req);
    let new = update_committed(shared, &req, |cur| {
        check_conditions(&req, Some(cur), false)?;
        Ok(cur.with_changes(props, cur.metadata.clone()))
    })?;
    Ok(etag_headers(
        Response::builder().status(200),
        &new.etag,
        &new.last_modified,
    )
    .header("content-length", "0")
    .body(empty())
    .unwrap())
}

fn copy_blob(shared: &Shared, req: Req) -> R {
    let src = req.h("x-ms-copy-source").unwrap_or("").to_string();
    let cannot =
        |status: u16, msg: &str| ApiError::new(status, "CannotVerifyCopySource", msg.to_string());
    let url =
        url::Url::parse(&src).map_err(|_| ApiError::invalid_header("x-ms-copy-source", &src))?;
    let path = url.path().trim_start_matches('/').to_string();
    let mut it = path.splitn(3, '/');
    let dec = |s: Option<&str>| {
        percent_encoding::percent_decode_str(s.unwrap_or(""))
            .decode_utf8_lossy()
            .into_owned()
    };
    let (sa, sc, sb) = (dec(it.next()), dec(it.next()), dec(it.next()));
    if sa != req.account || sc.is_empty() || sb.is_empty() {
        return Err(cannot(
            403,
            "Server failed to authenticate the request. Make sure the value of Authorization header is formed correctly including the signature.",
        ));
    }
    let metadata = parse_metadata(&req)?;
    let mut st = shared.state.lock().unwrap();
    let acct = st
        .accounts
        .get_mut(&req.account)
        .ok_or_else(ApiError::container_not_found)?;
    let source = acct
        .containers
        .get(&sc)
        .and_then(|c| c.blobs.get(&sb))
        .and_then(|e| e.committed.clone())
        .ok_or_else(|| cannot(404, "The specified blob does not exist."))?;
    if source.key_sha.is_some() {
        return Err(cannot(409, "The blob is encrypted with customer specified encryption, but it was not provided in the request."));
    }
    let cont = acct
        .containers
        .get_mut(&req.container)
        .ok_or_else(ApiError::container_not_found)?;
    let entry = cont.blobs.entry(req.blob.clone()).or_default();
    if let Err(e) = check_conditions(&req, entry.committed.as_deref(), false) {
        if entry.committed.is_none() && entry.uncommitted.is_empty() {
            cont.blobs.remove(&req.blob);
        }
        return Err(e);
    }
    let now = Utc::now();
    let copy_id = uuid::Uuid::new_v4().to_string();
    let new = Committed {
        blocks: source.blocks.clone(),
        size: source.size,
        props: source.props.clone(),
        metadata: if metadata.is_empty() {
            source.metadata.clone()
        } else {
            metadata
        },
        key_sha: None,
        etag: new_etag(),
        last_modified: now,
        created: entry.committed.as_ref().map(|c| c.created).unwrap_or(now),
        copy: Some(CopyInfo {
            id: copy_id.clone(),
            source: src.clone(),
            completion: now,
            progress: format!("{}/{}", source.size, source.size),
        }),
    };
    let resp = etag_headers(Response::builder().status(202), &new.etag, &now)
        .header("x-ms-copy-id", copy_id)
        .header("x-ms-copy-status", "success")
        .header("content-length", "0");
    entry.committed = Some(Arc::new(new));
    entry.uncommitted.clear();
    persist_blob(shared, &req, Some(entry))?;
    Ok(resp.body(empty()).unwrap())
}

/// `<Tag><Block><Name>id</Name><Size>n</Size></Block>…</Tag>`, or `<Tag />`
/// when there are none (Get Block List's two lists).
fn push_block_list<'a>(x: &mut String, tag: &str, blocks: impl Iterator<Item = (&'a str, u64)>) {
    let start = x.len();
    x.push_str(&format!("<{tag}>"));
    let mut any = false;
    for (id, len) in blocks {
        any = true;
        x.push_str(&format!(
            "<Block><Name>{id}</Name><Size>{len}</Size></Block>"
        ));
    }
    if any {
        x.push_str(&format!("</{tag}>"));
    } else {
        x.truncate(start);
        x.push_str(&format!("<{tag} />"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_vectors() {
        assert_eq!(crc64(b""), 0);
        assert_eq!(crc64_b64(b""), "AAAAAAAAAAA=");
        assert_eq!(crc64(b"123456789"), 0xAE8B14860A799888);
        assert_eq!(crc64_b64(b"123456789"), "iJh5CoYUi64=");
        assert_eq!(crc64_b64(b"Hello World"), "YeJLfssylmU=");
        assert_eq!(crc64(b"a"), 0x8C2F8445B4CBFC3C);
        assert_eq!(
            crc64_b64(b"The quick brown fox jumps over the lazy dog"),
            "Q8FUSQVUbNc="
        );
        assert_eq!(crc64_b64(b"AAAAAAAAAA"), "gNq19bVGDcs=");
        assert_eq!(crc64_b64(b"BBBBB"), "92gHawvjeks=");
        let big: Vec<u8> = (0..1048576u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(crc64(&big), 0x8821D9F150FEC9FC);
        assert_eq!(crc64_b64(&big), "/Mn+UPHZIYg=");
        assert_eq!(md5_b64(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    fn blk(n: u64) -> Arc<Block> {
        Arc::new(Block {
            data: super::super::store::BlockData::Mem(Bytes::from(vec![0u8; n as usize])),
            len: n,
            nonce: None,
            key_sha: None,
        })
    }

    #[test]
    fn block_list_resolution() {
        let body = br#"<?xml version="1.0" encoding="utf-8"?><BlockList><Committed>QQ==</Committed><Uncommitted>Qg==</Uncommitted><Latest>QQ==</Latest><Latest>Qw==</Latest><Uncommitted>Qg==</Uncommitted></BlockList>"#;
        let list = parse_block_list(body).unwrap();
        assert_eq!(list.len(), 5);
        assert_eq!(list[0], (ListKind::Committed, "QQ==".to_string()));
        let mut e = BlobEntry::default();
        let now = Utc::now();
        e.committed = Some(Arc::new(Committed {
            blocks: vec![("QQ==".into(), blk(1)), ("Qw==".into(), blk(3))],
            size: 4,
            props: Props::default(),
            metadata: vec![],
            key_sha: None,
            etag: new_etag(),
            last_modified: now,
            created: now,
            copy: None,
        }));
        e.uncommitted.insert("Qg==".into(), (1, blk(2)));
        e.uncommitted.insert("QQ==".into(), (2, blk(10)));
        let r = resolve_block_list(&list, &e).unwrap();
        let sizes: Vec<u64> = r.iter().map(|(_, b)| b.len).collect();
        // Latest QQ== picks the uncommitted (10), Committed QQ== the committed (1)
        assert_eq!(sizes, vec![1, 2, 10, 3, 2]);
        let bad =
            parse_block_list(b"<BlockList><Uncommitted>Qw==</Uncommitted></BlockList>").unwrap();
        assert_eq!(
            resolve_block_list(&bad, &e).unwrap_err().code,
            "InvalidBlockList"
        );
        assert!(parse_block_list(b"<Nope/>").is_err());
        assert!(parse_block_list(b"<BlockList><Foo>x</Foo></BlockList>").is_err());
        assert_eq!(parse_block_list(b"<BlockList/>").unwrap().len(), 0);
    }

    #[test]
    fn names() {
        assert!(valid_container_name("abc"));
        assert!(valid_container_name("a-b-1"));
        assert!(!valid_container_name("a--b"));
        assert!(!valid_container_name("Abc"));
        assert!(!valid_container_name("ab"));
        assert!(!valid_container_name("-ab"));
        assert!(is_identifier("_a1"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a-b"));
        assert_eq!(xml_name("a&b"), "<Name>a&amp;b</Name>");
        assert_eq!(xml_name("a\u{1}"), "<Name Encoded=\"true\">a%01</Name>");
    }
}
