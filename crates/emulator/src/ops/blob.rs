//! Writes to a blob as a whole: Put Blob, Set Blob Metadata/Properties,
//! Delete Blob and Copy Blob.

use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::Utc;
use http::Response;

use super::request::{
    blob_props, check_conditions, check_transactional, parse_metadata, request_cpk,
};
use super::response::{etag_headers, write_cpk_headers, R};
use super::stored::{container_mut, make_block, persist_blob};
use crate::cpk::{self, CpkKey};
use crate::error::ApiError;
use crate::http::{empty, Req};
use crate::shared::Shared;
use crate::store::{new_etag, Block, Committed, CopyInfo, Props};

pub(super) fn put_blob(shared: &Shared, mut req: Req) -> R {
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
    let tags = super::tags::from_header(req)?;
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
        tags,
    });
    entry.committed = Some(committed.clone());
    entry.uncommitted.clear();
    persist_blob(shared, req, Some(entry))?;
    Ok(committed)
}

pub(super) fn delete_blob(shared: &Shared, req: Req) -> R {
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
pub(super) fn update_committed(
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

pub(super) fn set_blob_metadata(shared: &Shared, req: Req) -> R {
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

pub(super) fn set_blob_properties(shared: &Shared, req: Req) -> R {
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

pub(super) fn copy_blob(shared: &Shared, req: Req) -> R {
    let tags = super::tags::from_header(&req)?;
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
        tags,
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
