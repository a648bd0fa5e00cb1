//! Blob index tags: `x-ms-tags` on a commit, Set/Get Blob Tags, and what a
//! listing (`include=tags`) and HEAD (`x-ms-tag-count`) show. Tags belong to
//! the current version but are not part of it: setting them keeps the ETag
//! and Last-Modified [docs]. They are never encrypted with a customer key,
//! and a commit without `x-ms-tags` leaves the new version without tags
//! [inferred: a commit replaces the blob].

use hyper::Response;

use crate::error::{xml_escape, ApiError};
use crate::http::{empty, xml_response, Req};
use crate::shared::Shared;
use crate::store::Committed;

use super::response::R;
use super::stored::committed_of;

pub type Tags = Vec<(String, String)>;

const MAX_TAGS: usize = 10;

fn invalid(detail: &str) -> ApiError {
    ApiError::new(
        400,
        "InvalidTag",
        format!("The tags specified are invalid. It contains characters that are not permitted. {detail}"),
    )
}

/// The service's rules: at most 10 tags, keys of 1–128 and values of 0–256
/// characters from letters, digits, space and `+ - . / : = _`, no key twice.
pub(crate) fn validate(tags: &Tags) -> Result<(), ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::new(
            400,
            "TooManyTags",
            "The number of tags exceeds the maximum permitted.",
        ));
    }
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || " +-./:=_".contains(c))
    };
    for (i, (k, v)) in tags.iter().enumerate() {
        if k.is_empty() || k.chars().count() > 128 || !ok(k) {
            return Err(invalid(&format!("key {k:?}")));
        }
        if v.chars().count() > 256 || !ok(v) {
            return Err(invalid(&format!("value of {k:?}")));
        }
        if tags[..i].iter().any(|(o, _)| o == k) {
            return Err(invalid(&format!("key {k:?} given twice")));
        }
    }
    Ok(())
}

/// `x-ms-tags` of a commit: a query string `k=v&k2=v2`, percent-encoded.
/// Absent: no tags.
pub(crate) fn from_header(req: &Req) -> Result<Tags, ApiError> {
    let Some(raw) = req.h("x-ms-tags") else {
        return Ok(vec![]);
    };
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| invalid("not UTF-8"))
    };
    let mut tags = Tags::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        tags.push((dec(k)?, dec(v)?));
    }
    validate(&tags)?;
    tags.sort();
    Ok(tags)
}

/// The body of Set Blob Tags: `<Tags><TagSet><Tag><Key/><Value/></Tag>…`.
fn from_body(body: &[u8]) -> Result<Tags, ApiError> {
    use quick_xml::events::Event;
    let bad = || {
        ApiError::new(
            400,
            "InvalidXmlDocument",
            "XML specified is not syntactically valid.",
        )
    };
    let mut r = quick_xml::Reader::from_reader(body);
    let mut tags = Tags::new();
    let (mut key, mut value, mut field) = (None::<String>, String::new(), "");
    let mut buf = vec![];
    loop {
        match r.read_event_into(&mut buf).map_err(|_| bad())? {
            Event::Start(e) => match e.name().as_ref() {
                b"Tag" => (key, value) = (None, String::new()),
                b"Key" => field = "key",
                b"Value" => field = "value",
                _ => field = "",
            },
            Event::Text(t) => {
                let t = t.unescape().map_err(|_| bad())?.into_owned();
                match field {
                    "key" => key = Some(t),
                    "value" => value = t,
                    _ => {}
                }
            }
            Event::End(e) => {
                if e.name().as_ref() == b"Tag" {
                    tags.push((key.take().ok_or_else(bad)?, std::mem::take(&mut value)));
                }
                field = "";
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    validate(&tags)?;
    tags.sort();
    Ok(tags)
}

/// The `<Tags>` element: the body of Get Blob Tags and one blob's tags in
/// a listing.
fn push_tags(x: &mut String, tags: &Tags) {
    x.push_str("<Tags><TagSet>");
    for (k, v) in tags {
        x.push_str(&format!(
            "<Tag><Key>{}</Key><Value>{}</Value></Tag>",
            xml_escape(k),
            xml_escape(v)
        ));
    }
    x.push_str("</TagSet></Tags>");
}

fn body_of(tags: &Tags) -> String {
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
    push_tags(&mut x, tags);
    x
}

/// `<Tags>` of one blob in a listing with `include=tags` (nothing when it
/// has none).
pub(crate) fn push_listed(x: &mut String, b: &Committed) {
    if !b.tags.is_empty() {
        push_tags(x, &b.tags);
    }
}

/// Set Blob Tags: replace the current version's tags; ETag unchanged.
pub(super) fn set_blob_tags(shared: &Shared, req: Req) -> R {
    let tags = from_body(&req.body)?;
    super::blob::update_committed(shared, &req, |cur| Ok(cur.with_tags(tags)))?;
    Ok(Response::builder()
        .status(204)
        .header("content-length", "0")
        .body(empty())
        .unwrap())
}

/// Get Blob Tags.
pub(super) fn get_blob_tags(shared: &Shared, req: Req) -> R {
    let c = committed_of(shared, &req)?;
    Ok(xml_response(200, body_of(&c.tags)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(pairs: &[(&str, &str)]) -> Tags {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn body_round_trip_and_limits() {
        let tags = t(&[("a b", "x/y:z=1+2"), ("mode", "0644"), ("z", "")]);
        assert_eq!(from_body(body_of(&tags).as_bytes()).unwrap(), tags);
        assert!(validate(&t(&[("k", "a,b")])).is_err());
        assert!(validate(&t(&[("", "v")])).is_err());
        assert!(validate(&t(&[("k", "1"), ("k", "2")])).is_err());
        let many: Tags = (0..11).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(validate(&many).unwrap_err().code, "TooManyTags");
    }
}
