//! Account credentials: Shared Key (one or both of the account's keys) or a
//! SAS token. Keys are redacted in Debug and zeroized on drop.

use super::secret::{SecretBytes, SecretString};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    #[error("the account key is not valid base64 (copy it from the portal's Access keys page)")]
    KeyNotBase64,
    #[error("the account key decodes to {0} bytes; Azure account keys are 64 bytes")]
    KeyWrongLength(usize),
    #[error("no account key was given")]
    NoKey,
    #[error("the SAS token is empty or malformed (expected `sv=...&sig=...`)")]
    BadSas,
}

/// One decoded 64-byte storage account key.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountKey(SecretBytes);

impl AccountKey {
    pub fn from_base64(text: &str) -> Result<Self, CredentialError> {
        let raw = B64
            .decode(text.trim().as_bytes())
            .map_err(|_| CredentialError::KeyNotBase64)?;
        if raw.len() != 64 {
            return Err(CredentialError::KeyWrongLength(raw.len()));
        }
        Ok(AccountKey(SecretBytes::new(raw)))
    }

    /// base64(HMAC-SHA256(key, message)).
    pub fn sign(&self, message: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.expose()).expect("any key length");
        mac.update(message.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccountKey(<redacted>)")
    }
}

/// Re-reads the key source (file, vault…) when the service rejects the
/// current key. Returns the keys now known, current first.
pub type KeyReloader = Arc<dyn Fn() -> Result<Vec<AccountKey>, String> + Send + Sync>;

/// Shared Key credential holding every key known for the account, so a
/// running client survives key rotation: on a MAC mismatch it moves to the
/// next key (and re-reads the source if one was given).
pub struct SharedKeyCredential {
    account: String,
    keys: RwLock<Vec<AccountKey>>,
    current: AtomicUsize,
    reloader: Option<KeyReloader>,
}

impl SharedKeyCredential {
    pub fn new(account: impl Into<String>, keys: Vec<AccountKey>) -> Result<Self, CredentialError> {
        if keys.is_empty() {
            return Err(CredentialError::NoKey);
        }
        Ok(SharedKeyCredential {
            account: account.into(),
            keys: RwLock::new(keys),
            current: AtomicUsize::new(0),
            reloader: None,
        })
    }

    pub fn with_reloader(mut self, reloader: KeyReloader) -> Self {
        self.reloader = Some(reloader);
        self
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The key in use and its index (the index is what logs may show).
    pub fn current(&self) -> (usize, AccountKey) {
        let keys = self.keys.read().unwrap();
        let i = self.current.load(Ordering::Relaxed) % keys.len();
        (i, keys[i].clone())
    }

    /// Replace the known keys (the key file changed). The key in use stays
    /// current if it is still among them.
    pub fn set_keys(&self, keys: Vec<AccountKey>) {
        if keys.is_empty() {
            return;
        }
        let (_, cur) = self.current();
        let idx = keys.iter().position(|k| *k == cur).unwrap_or(0);
        *self.keys.write().unwrap() = keys;
        self.current.store(idx, Ordering::Relaxed);
    }

    pub fn key_count(&self) -> usize {
        self.keys.read().unwrap().len()
    }

    /// Called after the service rejected the key with index `failed`: re-read
    /// the source if any, then move to a key not yet tried. Returns the index
    /// of the key to try next, or None if every known key has failed.
    pub fn rotate_after_failure(
        &self,
        failed: &AccountKey,
        tried: &mut Vec<AccountKey>,
    ) -> Option<usize> {
        if !tried.contains(failed) {
            tried.push(failed.clone());
        }
        if let Some(reload) = &self.reloader {
            match reload() {
                Ok(new_keys) if !new_keys.is_empty() => *self.keys.write().unwrap() = new_keys,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not re-read the account key source"),
            }
        }
        let keys = self.keys.read().unwrap();
        let next = keys.iter().position(|k| !tried.contains(k))?;
        self.current.store(next, Ordering::Relaxed);
        tracing::warn!(
            account = %self.account,
            key_index = next + 1,
            "the service rejected the account key in use; switching to key #{} of {}",
            next + 1,
            keys.len()
        );
        Some(next)
    }
}

impl fmt::Debug for SharedKeyCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedKeyCredential")
            .field("account", &self.account)
            .field("keys", &self.key_count())
            .finish()
    }
}

/// A SAS token (the query string without a leading `?`).
#[derive(Clone, Debug)]
pub struct SasToken(SecretString);

impl SasToken {
    pub fn parse(text: &str) -> Result<Self, CredentialError> {
        let t = text.trim().trim_start_matches('?');
        if t.is_empty() || !t.contains("sig=") {
            return Err(CredentialError::BadSas);
        }
        Ok(SasToken(SecretString::new(t)))
    }
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// How requests are authorized.
#[derive(Debug, Clone)]
pub enum Credential {
    SharedKey(Arc<SharedKeyCredential>),
    Sas(SasToken),
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str =
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

    #[test]
    fn key_validation_and_redaction() {
        let k = AccountKey::from_base64(K).unwrap();
        assert_eq!(format!("{k:?}"), "AccountKey(<redacted>)");
        assert_eq!(
            AccountKey::from_base64("!!"),
            Err(CredentialError::KeyNotBase64)
        );
        assert_eq!(
            AccountKey::from_base64("AAAA"),
            Err(CredentialError::KeyWrongLength(3))
        );
    }

    #[test]
    fn rotation_walks_untried_keys() {
        let k1 = AccountKey::from_base64(K).unwrap();
        let k2 = AccountKey::from_base64(crate::DEV_ACCOUNT_KEY).unwrap();
        let c = SharedKeyCredential::new("a", vec![k1.clone(), k2.clone()]).unwrap();
        let mut tried = vec![];
        assert_eq!(c.current().0, 0);
        assert_eq!(c.rotate_after_failure(&k1, &mut tried), Some(1));
        assert_eq!(c.current().1, k2);
        assert_eq!(c.rotate_after_failure(&k2, &mut tried), None);
    }
}
