//! What the responses of every resource share: the result type, the date
//! format, ETag and CPK headers, and the digests sent with ranges.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chrono::{DateTime, Utc};
use http::response::Builder;
use http::Response;
use md5::{Digest, Md5};

use crate::cpk::CpkKey;
use crate::error::ApiError;
use crate::http::RespBody;

pub(crate) type R = Result<Response<RespBody>, ApiError>;

pub fn rfc1123(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

pub(crate) fn md5_b64(data: &[u8]) -> String {
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
}
