//! The HTTP vocabulary every handler shares: the request as the handlers
//! see it ([`Req`]), the response body type and a few response helpers.
//! A leaf: it uses nothing else of this crate, so any module may use it
//! without an import loop.

use std::convert::Infallible;
use std::io;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type RespBody = BoxBody<Bytes, io::Error>;

pub fn full(b: impl Into<Bytes>) -> RespBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> RespBody {
    full(Bytes::new())
}

/// Request facts handed to the operation handlers.
pub struct Req {
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Vec<(String, String)>,
    pub account: String,
    pub container: String,
    pub blob: String,
    /// The request body: plaintext, unless `body_encrypted` is set.
    pub body: BytesMut,
    /// CRC-64 (NVMe) of the plaintext body, computed while it was received.
    pub body_crc64: u64,
    /// MD5 of the plaintext body (computed for Put Blob and when Content-MD5 is sent).
    pub body_md5: Option<[u8; 16]>,
    /// Put Block / Put Blob with a valid customer-provided key: the body was
    /// AES-256-CTR-encrypted as it arrived, with this nonce under the key whose
    /// SHA-256 (base64) is given.
    pub body_encrypted: Option<([u8; 16], String)>,
    pub tls: bool,
    pub version: String,
}

impl Req {
    pub fn q(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn h(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn xml_response(status: u16, body: String) -> Response<RespBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/xml")
        .header("content-length", body.len())
        .body(full(body))
        .unwrap()
}

pub fn content_length(resp: &Response<RespBody>) -> Option<u64> {
    resp.headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}

pub fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parse a raw query string into decoded (name, value) pairs.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
