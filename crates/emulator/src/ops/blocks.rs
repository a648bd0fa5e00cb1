//! Block operations: Put Block, Put Block List (its XML and how it resolves
//! against staged and committed blocks) and Get Block List.

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
use crate::http::{empty, full, Req};
use crate::shared::Shared;
use crate::store::{new_etag, next_seq, BlobEntry, Block, Committed};

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

pub(super) fn put_block(shared: &Shared, mut req: Req) -> R {
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

pub(super) fn put_block_list(shared: &Shared, req: Req) -> R {
    let key = request_cpk(shared, &req, true)?;
    let (md5, crc) = check_transactional(&req)?;
    let list = parse_block_list(&req.body)?;
    let tags = super::tags::from_header(&req)?;
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
        tags,
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

pub(super) fn get_block_list(shared: &Shared, req: Req) -> R {
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
    use crate::store::Props;
    use bytes::Bytes;

    fn blk(n: u64) -> Arc<Block> {
        Arc::new(Block {
            data: crate::store::BlockData::Mem(Bytes::from(vec![0u8; n as usize])),
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
            tags: vec![],
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
}
