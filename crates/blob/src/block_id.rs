//! Fixed-length block ids. All ids of one blob must have the same length, and
//! uncommitted ids share one namespace with any concurrent writer, so an id is
//! a random 8-byte session tag plus an 8-byte big-endian sequence number:
//! 16 bytes → always 24 base64 characters.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockIdGen {
    session: [u8; 8],
}

impl BlockIdGen {
    pub fn new() -> Self {
        BlockIdGen {
            session: rand::random(),
        }
    }

    pub fn id(&self, seq: u64) -> String {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.session);
        raw[8..].copy_from_slice(&seq.to_be_bytes());
        B64.encode(raw)
    }
}

impl Default for BlockIdGen {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_length_and_unique() {
        let g = BlockIdGen::new();
        let ids: Vec<String> = [0u64, 1, 255, 50_000, u64::MAX]
            .iter()
            .map(|&n| g.id(n))
            .collect();
        assert!(ids.iter().all(|i| i.len() == 24));
        let mut d = ids.clone();
        d.dedup();
        assert_eq!(d.len(), ids.len());
        assert_ne!(BlockIdGen::new().id(0), g.id(0));
    }
}
