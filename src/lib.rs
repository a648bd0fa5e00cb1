//! cpkfs: a FUSE filesystem over Azure Blob Storage with customer-provided keys.
//!
//! The layers are crates (docs/ARCHITECTURE.md): `cpkfs-blob` (clients),
//! `cpkfs-fs` (the core) and this crate (CLI and fuser adapter). They are
//! re-exported under their old module names so `cpkfs::blob::…`,
//! `cpkfs::keyvault::…` and `cpkfs::fs::…` keep working for tests and tools.
pub use cpkfs_blob as blob;
pub use cpkfs_blob::keyvault;
pub use cpkfs_fs as fs;

pub mod cli;
pub mod connect;
pub mod fuse;
