//! Customer-provided keys (CPK): parsing, hashing and the three request headers.

use super::secret::{SecretBytes, SecretString};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;

pub const HEADER_KEY: &str = "x-ms-encryption-key";
pub const HEADER_KEY_SHA256: &str = "x-ms-encryption-key-sha256";
pub const HEADER_ALGORITHM: &str = "x-ms-encryption-algorithm";
pub const ALGORITHM: &str = "AES256";

/// Why a key was refused. Messages name the problem without echoing the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpkError {
    #[error("the customer-provided key is not valid base64 (expected what `openssl rand -base64 32` prints)")]
    NotBase64,
    #[error("the customer-provided key decodes to {0} bytes; AES-256 needs exactly 32")]
    WrongLength(usize),
    #[error("the expected SHA-256 is not valid base64 of 32 bytes")]
    BadExpectedHash,
    #[error("the customer-provided key's SHA-256 is {actual}, but {expected} was expected: wrong key file?")]
    HashMismatch { expected: String, actual: String },
}

/// An AES-256 customer-provided key with its SHA-256 computed once.
/// Debug prints only the hash (which is not secret: Azure shows it in listings).
#[derive(Clone, PartialEq, Eq)]
pub struct CustomerKey {
    raw: SecretBytes,
    key_b64: SecretString,
    sha256_b64: String,
}

impl CustomerKey {
    /// Parse a base64 key (surrounding whitespace ignored). `expected_sha256`,
    /// when given, must equal base64(SHA-256(raw key)).
    pub fn from_base64(text: &str, expected_sha256: Option<&str>) -> Result<Self, CpkError> {
        let raw = B64
            .decode(text.trim().as_bytes())
            .map_err(|_| CpkError::NotBase64)?;
        Self::from_raw_checked(raw, expected_sha256)
    }

    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self::from_raw_checked(raw.to_vec(), None).expect("32 bytes")
    }

    fn from_raw_checked(raw: Vec<u8>, expected: Option<&str>) -> Result<Self, CpkError> {
        let raw = SecretBytes::new(raw);
        if raw.len() != 32 {
            return Err(CpkError::WrongLength(raw.len()));
        }
        let sha256_b64 = B64.encode(Sha256::digest(raw.expose()));
        if let Some(exp) = expected {
            let exp = exp.trim();
            match B64.decode(exp) {
                Ok(v) if v.len() == 32 => {}
                _ => return Err(CpkError::BadExpectedHash),
            }
            if exp != sha256_b64 {
                return Err(CpkError::HashMismatch {
                    expected: exp.to_string(),
                    actual: sha256_b64,
                });
            }
        }
        let key_b64 = SecretString::new(B64.encode(raw.expose()));
        Ok(CustomerKey {
            raw,
            key_b64,
            sha256_b64,
        })
    }

    /// base64(SHA-256(key)), as sent in `x-ms-encryption-key-sha256` and shown
    /// by List Blobs as `CustomerProvidedKeySha256`.
    pub fn sha256(&self) -> &str {
        &self.sha256_b64
    }

    /// The key as base64, for the `x-ms-encryption-key` header only.
    pub fn key_base64(&self) -> &SecretString {
        &self.key_b64
    }

    pub fn raw(&self) -> &SecretBytes {
        &self.raw
    }

    /// The three headers; the key header is marked sensitive so HTTP layers
    /// never print it.
    pub fn headers(&self) -> [(&'static str, http::HeaderValue); 3] {
        let mut key = http::HeaderValue::from_str(self.key_b64.expose()).expect("base64 is ASCII");
        key.set_sensitive(true);
        [
            (HEADER_KEY, key),
            (
                HEADER_KEY_SHA256,
                http::HeaderValue::from_str(&self.sha256_b64).expect("base64 is ASCII"),
            ),
            (HEADER_ALGORITHM, http::HeaderValue::from_static(ALGORITHM)),
        ]
    }
}

impl CustomerKey {
    /// The same key as the *source* of a From-URL request
    /// (`x-ms-source-encryption-*`, service version ≥ 2026-02-06).
    pub fn source_headers(&self) -> [(&'static str, http::HeaderValue); 3] {
        let [(_, key), (_, sha), (_, alg)] = self.headers();
        [
            ("x-ms-source-encryption-key", key),
            ("x-ms-source-encryption-key-sha256", sha),
            ("x-ms-source-encryption-algorithm", alg),
        ]
    }
}

impl fmt::Debug for CustomerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CustomerKey {{ sha256: {} }}", self.sha256_b64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors from the protocol reference §3.1.
    #[test]
    fn reference_vectors() {
        let k =
            CustomerKey::from_base64("MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=", None).unwrap();
        assert_eq!(k.sha256(), "3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE=");
        assert_eq!(k.raw().expose(), b"01234567012345670123456701234567");
        let raw: Vec<u8> = (0u8..32).collect();
        let k2 = CustomerKey::from_raw(raw.try_into().unwrap());
        assert_eq!(
            k2.key_base64().expose(),
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
        );
        assert_eq!(k2.sha256(), "Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=");
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(
            CustomerKey::from_base64("not base64!!", None),
            Err(CpkError::NotBase64)
        );
        assert_eq!(
            CustomerKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==", None),
            Err(CpkError::WrongLength(31))
        );
        let ok = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert!(CustomerKey::from_base64(
            &format!("  {ok}\n"),
            Some("Yw3NKWbEM2aRElRIu7JbT/QSpJxzLbLIq8G4WBvXEN0=")
        )
        .is_ok());
        assert!(matches!(
            CustomerKey::from_base64(ok, Some("3QFFFpRA5+XANHqwwbT4yXDmrT/2JaLt/FKHjzhOdoE=")),
            Err(CpkError::HashMismatch { .. })
        ));
        assert_eq!(
            CustomerKey::from_base64(ok, Some("abc")),
            Err(CpkError::BadExpectedHash)
        );
    }

    #[test]
    fn debug_shows_only_hash() {
        let k =
            CustomerKey::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", None).unwrap();
        let d = format!("{k:?}");
        assert!(!d.contains("AAECAwQF"));
        assert!(d.contains("Yw3NKWbEM2aR"));
        assert!(k.headers()[0].1.is_sensitive());
    }
}
