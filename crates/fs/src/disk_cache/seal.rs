//! Sealing blocks for the disk tier: AES-256-GCM under a key drawn at mount
//! that exists only in this process's memory, a random 96-bit nonce per
//! block, and the block's identity (blob name, ETag, block index, SHA-256 of
//! the customer-provided key it is under) as associated data — so a block
//! that was changed, or moved to another block's file, fails to open. File
//! names are an HMAC of the same identity under a second ephemeral key: a
//! listing of the cache directory reveals no blob name.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::cache::BlockKey;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Bytes a sealed block adds to its plaintext.
pub const OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Hex characters of a block file's name (128 bits of the HMAC).
pub const NAME_LEN: usize = 32;

/// A sealed block that does not open: tampered with, truncated, or the file
/// of another block.
#[derive(Debug, thiserror::Error)]
#[error("the cached block failed authentication (tampered with, truncated or misplaced)")]
pub struct Tampered;

/// The mount's ephemeral keys. Never written anywhere; wiped on drop (the
/// AES key schedule and GHASH key by the ciphers' `zeroize` feature, the
/// HMAC key by `Zeroizing`).
pub struct Sealer {
    aead: Aes256Gcm,
    name_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { keys: <redacted> }")
    }
}

impl Sealer {
    /// Fresh random keys from the operating system's generator.
    pub fn random() -> Sealer {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        let aead = Aes256Gcm::new_from_slice(&k[..]).expect("32-byte key");
        let mut name_key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut name_key[..]);
        Sealer { aead, name_key }
    }

    /// The block's identity, unambiguously encoded (length-prefixed fields).
    pub fn associated_data(key: &BlockKey) -> Vec<u8> {
        let mut ad = Vec::with_capacity(64 + key.name.len() + key.etag.len());
        ad.extend_from_slice(b"cpkfs-disk-cache-v1\0");
        for field in [key.name.as_bytes(), key.etag.as_bytes()] {
            ad.extend_from_slice(&(field.len() as u64).to_be_bytes());
            ad.extend_from_slice(field);
        }
        ad.extend_from_slice(&key.index.to_be_bytes());
        match &key.cpk_sha256 {
            Some(h) => {
                ad.push(1);
                ad.extend_from_slice(&(h.len() as u64).to_be_bytes());
                ad.extend_from_slice(h.as_bytes());
            }
            None => ad.push(0),
        }
        ad
    }

    /// The block's file name: hex of an HMAC-SHA-256 of its identity.
    pub fn file_name(&self, ad: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.name_key[..]).expect("any key length");
        mac.update(ad);
        let tag = mac.finalize().into_bytes();
        tag[..NAME_LEN / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + OVERHEAD);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), ad, &mut out[NONCE_LEN..])
            .expect("a block is far below AES-GCM's 64 GiB limit");
        out.extend_from_slice(&tag);
        out
    }

    /// The plaintext of `sealed`, or [`Tampered`]. Decrypted in place: no copy.
    pub fn open(&self, ad: &[u8], mut sealed: Vec<u8>) -> Result<Bytes, Tampered> {
        if sealed.len() < OVERHEAD {
            return Err(Tampered);
        }
        let end = sealed.len() - TAG_LEN;
        let tag = *Tag::from_slice(&sealed[end..]);
        let nonce = *Nonce::from_slice(&sealed[..NONCE_LEN]);
        self.aead
            .decrypt_in_place_detached(&nonce, ad, &mut sealed[NONCE_LEN..end], &tag)
            .map_err(|_| Tampered)?;
        Ok(Bytes::from(sealed).slice(NONCE_LEN..end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(name: &str, etag: &str, index: u64, cpk: Option<&str>) -> BlockKey {
        BlockKey {
            name: name.into(),
            etag: etag.into(),
            index,
            cpk_sha256: cpk.map(Arc::from),
        }
    }

    #[test]
    fn a_sealed_block_opens_only_as_itself() {
        let s = Sealer::random();
        let k = key("dir/file.bin", "\"0x1\"", 3, Some("hashA"));
        let ad = Sealer::associated_data(&k);
        let plain = b"the quick brown fox jumps over the lazy dog".repeat(100);
        let sealed = s.seal(&ad, &plain);
        assert_eq!(sealed.len(), plain.len() + OVERHEAD);
        assert!(
            !sealed.windows(16).any(|w| w == &plain[..16]),
            "ciphertext must not contain the plaintext"
        );
        assert_eq!(&s.open(&ad, sealed.clone()).unwrap()[..], &plain[..]);

        // Any other identity — block, version, blob, key — does not open it.
        for other in [
            key("dir/file.bin", "\"0x1\"", 4, Some("hashA")),
            key("dir/file.bin", "\"0x2\"", 3, Some("hashA")),
            key("dir/file.bim", "\"0x1\"", 3, Some("hashA")),
            key("dir/file.bin", "\"0x1\"", 3, Some("hashB")),
            key("dir/file.bin", "\"0x1\"", 3, None),
        ] {
            assert!(s
                .open(&Sealer::associated_data(&other), sealed.clone())
                .is_err());
        }
        // A flipped bit anywhere, or a cut, fails.
        for i in [0, NONCE_LEN, sealed.len() / 2, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(s.open(&ad, t).is_err(), "flip at {i}");
        }
        assert!(s.open(&ad, sealed[..sealed.len() - 1].to_vec()).is_err());
        assert!(s.open(&ad, vec![0; 5]).is_err());
        // Another mount's keys open nothing.
        assert!(Sealer::random().open(&ad, sealed).is_err());
    }

    #[test]
    fn nonces_differ_and_names_hide_the_blob() {
        let s = Sealer::random();
        let k = key("secret-project/payroll.xlsx", "\"e\"", 0, None);
        let ad = Sealer::associated_data(&k);
        let (a, b) = (s.seal(&ad, b"same"), s.seal(&ad, b"same"));
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN], "a fresh nonce per block");
        let name = s.file_name(&ad);
        assert_eq!(name.len(), NAME_LEN);
        assert!(name.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(name, s.file_name(&ad), "stable within a mount");
        assert_ne!(name, Sealer::random().file_name(&ad), "keyed per mount");
        assert_ne!(
            name,
            s.file_name(&Sealer::associated_data(&key(
                "secret-project/payroll.xlsx",
                "\"e\"",
                1,
                None
            )))
        );
        assert_eq!(format!("{s:?}"), "Sealer { keys: <redacted> }");
    }
}
