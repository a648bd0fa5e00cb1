//! cpkfs: a FUSE filesystem over Azure Blob Storage with customer-provided keys.
pub mod blob;
pub mod cli;
pub mod emulator;
pub mod fs;
pub mod fuse;
pub mod keyvault;
