//! Customer-provided keys: header validation (§3.1, §3.6) and at-rest encryption.

use aes::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::error::ApiError;

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

pub const H_KEY: &str = "x-ms-encryption-key";
pub const H_SHA: &str = "x-ms-encryption-key-sha256";
pub const H_ALG: &str = "x-ms-encryption-algorithm";

/// A validated request key. The raw key is zeroized when the request is done.
pub struct CpkKey {
    key: Zeroizing<[u8; 32]>,
    /// base64 SHA-256 of the raw key.
    pub sha: String,
}

impl CpkKey {
    pub fn from_raw(raw: &[u8; 32]) -> CpkKey {
        CpkKey {
            key: Zeroizing::new(*raw),
            sha: B64.encode(Sha256::digest(raw)),
        }
    }

    /// XOR `data` (located at byte `offset` of a stored block) with the AES-256-CTR
    /// keystream for `nonce`. Encryption and decryption are the same operation.
    pub fn apply(&self, nonce: &[u8; 16], offset: u64, data: &mut [u8]) {
        self.keystream(nonce, offset).apply(data);
    }

    /// Like [`CpkKey::apply`], but reads `src` and writes the result to `dst` (same
    /// length) in one pass.
    pub fn apply_to(&self, nonce: &[u8; 16], offset: u64, src: &[u8], dst: &mut [u8]) {
        self.keystream(nonce, offset).apply_to(src, dst);
    }

    /// A running AES-256-CTR keystream starting at byte `offset` of a block with `nonce`,
    /// for data that arrives in pieces.
    pub fn keystream(&self, nonce: &[u8; 16], offset: u64) -> KeyStream {
        let mut c = Aes256Ctr::new((&*self.key).into(), nonce.into());
        c.seek(offset);
        KeyStream(c)
    }
}

/// AES-256-CTR state that advances with every byte it is applied to (AES-NI when the
/// CPU has it: the `aes` crate detects it at run time).
pub struct KeyStream(Aes256Ctr);

impl KeyStream {
    /// XOR `data` in place with the next `data.len()` keystream bytes.
    pub fn apply(&mut self, data: &mut [u8]) {
        self.0.apply_keystream(data);
    }

    /// `dst = src XOR` the next `src.len()` keystream bytes.
    pub fn apply_to(&mut self, src: &[u8], dst: &mut [u8]) {
        self.0
            .apply_keystream_b2b(src, dst)
            .expect("keystream buffers of equal length");
    }
}

impl std::fmt::Debug for CpkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpkKey({})", self.sha)
    }
}

fn hv<'a>(h: &'a HeaderMap, n: &str) -> Option<&'a str> {
    h.get(n).map(|v| v.to_str().unwrap_or("\u{fffd}"))
}

pub fn any_cpk_header(h: &HeaderMap) -> bool {
    h.contains_key(H_KEY) || h.contains_key(H_SHA) || h.contains_key(H_ALG)
}

/// Parse and validate the CPK headers. `write`: all three are required once any is sent.
pub fn parse(h: &HeaderMap, write: bool) -> Result<Option<CpkKey>, ApiError> {
    if !any_cpk_header(h) {
        return Ok(None);
    }
    let key = hv(h, H_KEY);
    let sha = hv(h, H_SHA);
    let alg = hv(h, H_ALG);
    let Some(key) = key else {
        return Err(ApiError::missing_header(H_KEY));
    };
    let Some(sha) = sha else {
        return Err(ApiError::missing_header(H_SHA));
    };
    if write && alg.is_none() {
        return Err(ApiError::missing_header(H_ALG));
    }
    let raw = B64
        .decode(key)
        .ok()
        .filter(|k| k.len() == 32)
        .ok_or_else(|| ApiError::invalid_header(H_KEY, key))?;
    let mut arr = Zeroizing::new([0u8; 32]);
    arr.copy_from_slice(&raw);
    drop(Zeroizing::new(raw));
    let k = CpkKey::from_raw(&arr);
    let given = B64
        .decode(sha)
        .ok()
        .filter(|s| s.len() == 32)
        .ok_or_else(|| ApiError::invalid_header(H_SHA, sha))?;
    if B64.encode(given) != k.sha {
        return Err(ApiError::invalid_header(H_SHA, sha));
    }
    if let Some(a) = alg {
        if a != "AES256" {
            return Err(ApiError::invalid_header(H_ALG, a));
        }
    }
    Ok(Some(k))
}

/// Compare a stored key state with the request's key (§3.7).
pub fn check(stored: Option<&str>, req: Option<&CpkKey>) -> Result<(), ApiError> {
    match (stored, req) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(ApiError::uses_cpk()),
        (Some(h), Some(k)) if h == k.sha => Ok(()),
        (Some(_), Some(_)) => Err(ApiError::cpk_mismatch()),
        (None, Some(_)) => Err(ApiError::not_cpk()),
    }
}

/// A fresh random nonce (IV) for AES-256-CTR under a customer-provided key.
pub fn new_nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut n[..]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hash_vectors() {
        let k = CpkKey::from_raw(b"01234567012345670123456701234567");
        assert_eq!(k.sha, "3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE=");
        let mut raw = [0u8; 32];
        for (i, b) in raw.iter_mut().enumerate() {
            *b = i as u8;
        }
        let k = CpkKey::from_raw(&raw);
        assert_eq!(k.sha, "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=");
        assert_eq!(
            B64.encode(raw),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
    }

    #[test]
    fn header_validation() {
        let mut h = HeaderMap::new();
        h.insert(
            H_KEY,
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
                .parse()
                .unwrap(),
        );
        h.insert(
            H_SHA,
            "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0="
                .parse()
                .unwrap(),
        );
        assert!(parse(&h, false).unwrap().is_some());
        assert_eq!(parse(&h, true).unwrap_err().code, "MissingRequiredHeader");
        h.insert(H_ALG, "AES256".parse().unwrap());
        assert!(parse(&h, true).unwrap().is_some());
        h.insert(H_ALG, "AES128".parse().unwrap());
        let e = parse(&h, true).unwrap_err();
        assert_eq!(e.code, "InvalidHeaderValue");
        assert_eq!(e.extra[0].1, H_ALG);
        h.insert(H_ALG, "AES256".parse().unwrap());
        h.insert(
            H_SHA,
            "3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE="
                .parse()
                .unwrap(),
        );
        assert_eq!(parse(&h, true).unwrap_err().extra[0].1, H_SHA);
        h.insert(H_KEY, "AAEC".parse().unwrap());
        assert_eq!(parse(&h, true).unwrap_err().extra[0].1, H_KEY);
    }

    #[test]
    fn ctr_seek_roundtrip() {
        let k = CpkKey::from_raw(&[7u8; 32]);
        let nonce = [0xffu8; 16]; // counter wraps
        let plain: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut enc = plain.clone();
        k.apply(&nonce, 0, &mut enc);
        assert_ne!(enc, plain);
        let mut part = enc[1234..5678].to_vec();
        k.apply(&nonce, 1234, &mut part);
        assert_eq!(part, &plain[1234..5678]);
        // piecewise (odd sizes) == whole
        let mut ks = k.keystream(&nonce, 0);
        let mut pieces = plain.clone();
        for c in pieces.chunks_mut(77) {
            ks.apply(c);
        }
        assert_eq!(pieces, enc);
        let mut out = vec![0u8; 4444];
        k.apply_to(&nonce, 1234, &enc[1234..5678], &mut out);
        assert_eq!(out, &plain[1234..5678]);
    }
}
