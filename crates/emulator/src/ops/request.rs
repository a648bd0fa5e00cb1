//! Reading and validating what a request says in its headers: the
//! customer-provided key, metadata, blob properties, transactional digests
//! and the conditional headers (§1.5, §3.7, §4.16).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use crate::cpk::{self, CpkKey};
use crate::error::ApiError;
use crate::http::Req;
use crate::shared::Shared;
use crate::store::{Committed, Props};

const MAX_META: usize = 8 * 1024;

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

pub(super) fn is_identifier(name: &str) -> bool {
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
pub(super) fn check_transactional(req: &Req) -> Result<(Option<String>, String), ApiError> {
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
