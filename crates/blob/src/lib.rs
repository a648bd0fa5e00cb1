//! Azure Blob Storage REST client. Knows nothing of inodes or FUSE.
//!
//! - [`credentials`], [`signing`], [`header_order`], [`sas`]: authorization
//! - [`cpk`]: customer-provided keys
//! - [`endpoint`]: URL building; [`xml`]: response bodies; [`models`]: data
//! - [`retry`]: what is retried and how long to wait; [`error`]: typed errors
//! - [`client`]: one method per REST operation; [`upload`]: streamed uploads;
//!   [`server_copy`]: copies and re-keying inside the service
//! - [`stats`]: request counters per operation, kept by the client

pub mod block_id;
pub mod client;
pub mod cpk;
pub mod crc64;
pub mod credentials;
pub mod endpoint;
pub mod error;
pub mod header_order;
pub mod models;
pub mod retry;
pub mod sas;
pub mod secret;
pub mod server_copy;
pub mod signing;
pub mod stats;
pub mod tags;
pub mod upload;
pub mod xml;

pub mod keyvault;

pub use block_id::BlockIdGen;
pub use client::{BlobClient, BlobDownload, ClientConfig, Clock, ListPager, SystemClock};
pub use cpk::{CpkError, CustomerKey};
pub use credentials::{AccountKey, Credential, CredentialError, SasToken, SharedKeyCredential};
pub use error::{BlobError, ServiceError, TransportKind};
pub use models::*;
pub use retry::RetryPolicy;
pub use server_copy::ServerCopy;
pub use stats::{RequestSnapshot, RequestStats};
pub use upload::UploadOptions;

/// The service version every request pins (reference §1.2): CPK, CRC-64 and
/// large blocks are on, and Azurite and the official SDK accept it.
pub const API_VERSION: &str = "2021-08-06";
/// The first service version that takes the source's customer-provided key on
/// Put Blob/Block From URL (server-side re-keying, reference §3.8). Sent only on
/// those requests, and only when the source has a key.
pub const SOURCE_CPK_VERSION: &str = "2026-02-06";

/// The storage emulators' well-known account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
pub const DEV_ACCOUNT_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
