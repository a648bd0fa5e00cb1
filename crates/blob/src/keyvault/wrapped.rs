//! Wrapped customer-provided key files: a CPK encrypted by a Key Vault key.
//!
//! ```json
//! {"kid": "https://VAULT/keys/NAME/VERSION", "alg": "RSA-OAEP-256",
//!  "wrapped_key": "<base64url>", "sha256": "<base64 SHA-256 of the plaintext key>"}
//! ```
//!
//! A file holds one such object or a JSON array of them (a keyring: the
//! first is the current key, the others older keys kept for reading).

use super::client::VaultClient;
use super::VaultError;
use crate::CustomerKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use serde::{Deserialize, Serialize};

pub const DEFAULT_ALG: &str = "RSA-OAEP-256";

fn default_alg() -> String {
    DEFAULT_ALG.to_string()
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WrappedKey {
    /// Key Vault key id with version.
    pub kid: String,
    #[serde(default = "default_alg")]
    pub alg: String,
    /// base64url (no padding) of the wrapped key.
    pub wrapped_key: String,
    /// base64 SHA-256 of the plaintext key (as in `x-ms-encryption-key-sha256`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Does this key-file text look like wrapped keys (JSON) rather than base64 lines?
pub fn looks_wrapped(text: &str) -> bool {
    matches!(text.trim_start().chars().next(), Some('{' | '['))
}

/// Parse one object or an array of them.
pub fn parse(text: &str) -> Result<Vec<WrappedKey>, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let list = match v {
        serde_json::Value::Array(a) => a,
        o @ serde_json::Value::Object(_) => vec![o],
        _ => return Err("expected a JSON object or array".into()),
    };
    let keys = list
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            serde_json::from_value::<WrappedKey>(v)
                .map_err(|e| format!("wrapped key #{}: {e}", i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Err("the file holds no wrapped key".into());
    }
    Ok(keys)
}

/// Why unwrapping into a CPK failed.
#[derive(Debug, thiserror::Error)]
pub enum UnwrapError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error("the wrapped_key of {kid} is not base64url")]
    NotBase64 { kid: String },
    #[error("unwrapping with {kid} gave {len} bytes, not the 32 of an AES-256 key: wrong key or algorithm?")]
    WrongLength { kid: String, len: usize },
    #[error("the key unwrapped with {kid} does not match the expected SHA-256: {0}", .source)]
    Hash {
        kid: String,
        source: crate::CpkError,
    },
}

impl WrappedKey {
    /// Unwrap with Key Vault and check length and hash. `expected_sha256`
    /// (e.g. the `cpk_sha256` setting) is checked too when given.
    pub async fn unwrap(
        &self,
        vault: &VaultClient,
        expected_sha256: Option<&str>,
    ) -> Result<CustomerKey, UnwrapError> {
        let wrapped = B64URL
            .decode(self.wrapped_key.trim().trim_end_matches('='))
            .map_err(|_| UnwrapError::NotBase64 {
                kid: self.kid.clone(),
            })?;
        let raw = vault.unwrap_key(&self.kid, &self.alg, &wrapped).await?;
        let raw: [u8; 32] = raw
            .expose()
            .try_into()
            .map_err(|_| UnwrapError::WrongLength {
                kid: self.kid.clone(),
                len: raw.len(),
            })?;
        let key = CustomerKey::from_raw(raw);
        for exp in [self.sha256.as_deref(), expected_sha256]
            .into_iter()
            .flatten()
        {
            if exp.trim() != key.sha256() {
                return Err(UnwrapError::Hash {
                    kid: self.kid.clone(),
                    source: crate::CpkError::HashMismatch {
                        expected: exp.trim().to_string(),
                        actual: key.sha256().to_string(),
                    },
                });
            }
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_object_and_array() {
        let one = r#"{"kid":"https://v.vault.azure.net/keys/k/1","wrapped_key":"AAAA"}"#;
        assert!(looks_wrapped(one));
        assert!(!looks_wrapped("q83vEjRWeJ..."));
        let k = parse(one).unwrap();
        assert_eq!(k[0].alg, DEFAULT_ALG);
        let two = format!("[{one}, {one}]");
        assert_eq!(parse(&two).unwrap().len(), 2);
        assert!(parse("[]").is_err());
        assert!(parse(r#"{"kid":"x"}"#).is_err());
        assert!(parse(r#"{"kid":"x","wrapped_key":"A","extra":1}"#).is_err());
    }
}
