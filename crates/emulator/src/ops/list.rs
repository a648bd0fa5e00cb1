//! List Containers and List Blobs: the request's parameters and the XML of
//! a page. Which names a page holds is `page.rs`.

mod page;

use std::ops::Bound;

use page::{decode_marker, encode_marker, list_page, ListItem};

use super::response::{rfc1123, R};
use super::stored::container_mut;
use crate::error::{xml_escape, ApiError};
use crate::http::{xml_response, Req};
use crate::shared::Shared;
use crate::store::{BlobEntry, Committed};

pub(super) fn list_containers(shared: &Shared, req: Req) -> R {
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

pub(super) fn xml_name(name: &str) -> String {
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
    inc_tags: bool,
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
        let (inc_meta, inc_uncommitted, inc_tags) = parse_include(req)?;
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
            inc_tags,
        })
    }
}

/// List Blobs' `include`: (metadata, uncommittedblobs, tags). The other
/// datasets are accepted and have nothing to show here.
fn parse_include(req: &Req) -> Result<(bool, bool, bool), ApiError> {
    let mut inc_meta = false;
    let mut inc_uncommitted = false;
    let mut inc_tags = false;
    if let Some(inc) = req.q("include") {
        for i in inc.split(',').filter(|s| !s.is_empty()) {
            match i {
                "metadata" => inc_meta = true,
                "uncommittedblobs" => inc_uncommitted = true,
                "tags" => inc_tags = true,
                "snapshots"
                | "copy"
                | "deleted"
                | "versions"
                | "deletedwithversions"
                | "immutabilitypolicy"
                | "legalhold"
                | "permissions" => {}
                _ => return Err(ApiError::invalid_query("include", inc, "Invalid value")),
            }
        }
    }
    Ok((inc_meta, inc_uncommitted, inc_tags))
}

pub(super) fn list_blobs(shared: &Shared, req: Req) -> R {
    let q = ListQuery::parse(&req)?;
    let base = shared.base_url.lock().unwrap().clone();
    let mut st = shared.state.lock().unwrap();
    let c = container_mut(&mut st, &req)?;
    let blobs = &c.blobs;
    let inc_uncommitted = q.inc_uncommitted;
    // A range of the ordered map from each point the walk seeks to: the page
    // costs O(page), whatever the container holds (page.rs).
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
            ListItem::Blob(name) => push_blob_item(&mut x, name, &blobs[*name], &q),
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
fn push_blob_item(x: &mut String, name: &str, e: &BlobEntry, q: &ListQuery) {
    x.push_str("<Blob>");
    x.push_str(&xml_name(name));
    x.push_str("<Properties>");
    match &e.committed {
        Some(b) => {
            push_committed_props(x, b);
            x.push_str("</Properties>");
            if q.inc_meta {
                push_metadata(x, b);
            }
            if q.inc_tags {
                super::tags::push_listed(x, b);
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
            if q.inc_meta {
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
    if !b.tags.is_empty() {
        x.push_str(&format!("<TagCount>{}</TagCount>", b.tags.len()));
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
