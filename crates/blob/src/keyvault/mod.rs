//! Azure Key Vault client (reference §7): Entra ID tokens ([`credential`]),
//! secrets and key operations with the 401 challenge flow ([`client`]),
//! wrapped customer-provided key files ([`wrapped`]) and a blocking front end
//! for synchronous callers ([`blocking`]).
//!
//! Secrets and tokens are held in [`crate::secret`] types: Debug and
//! Display print `<redacted>`, and nothing here logs them.

pub mod blocking;
pub mod client;
pub mod credential;
pub mod wrapped;

pub use blocking::BlockingVault;
pub use client::{ObjectUrl, VaultClient, VaultOptions};
pub use credential::{TokenCredential, TokenSource};
pub use wrapped::WrappedKey;

/// Key Vault data-plane API version (reference §7.1).
pub const API_VERSION: &str = "7.4";
/// The audience of Key Vault tokens.
pub const VAULT_RESOURCE: &str = "https://vault.azure.net";

/// Why a Key Vault operation failed. Each case has its own message; none
/// carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Key Vault {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("Key Vault refused {permission} for identity {identity} (403 Forbidden): {message}")]
    Forbidden {
        permission: &'static str,
        identity: String,
        message: String,
    },
    #[error("Key Vault rejected the token of identity {identity} (401 Unauthorized): {message}")]
    Unauthorized { identity: String, message: String },
    #[error("Key Vault: {what} is disabled (403 Forbidden): {message}")]
    Disabled { what: String, message: String },
    #[error("Key Vault: {what} was not found (deleted, or a wrong name or version?) (404 {code}): {message}")]
    NotFound {
        what: String,
        code: String,
        message: String,
    },
    #[error("cannot get a Key Vault token from {source_name} for identity {identity}: {detail}")]
    Token {
        source_name: &'static str,
        identity: String,
        detail: String,
    },
    #[error("Key Vault challenge refused: {0}")]
    Challenge(String),
    #[error("Key Vault {operation} failed ({status} {code}): {message}")]
    Service {
        operation: &'static str,
        status: u16,
        code: String,
        message: String,
    },
    #[error("unexpected Key Vault response to {operation}: {detail}")]
    BadResponse {
        operation: &'static str,
        detail: String,
    },
    #[error("Key Vault configuration: {0}")]
    Config(String),
}
