//! The mount's customer-provided keys, owned here and nowhere else: the
//! current key (every write) and older keys kept for reading blobs not yet
//! re-encrypted. A blob names its key by SHA-256, so a key is chosen by hash,
//! never by trial requests.

use cpkfs_blob::CustomerKey;
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    /// Current key first, then older keys; empty: no CPK.
    keys: Vec<Arc<CustomerKey>>,
}

impl KeyRing {
    /// `keys[0]` is the current key; the rest are read-only older keys.
    pub fn new(keys: Vec<Arc<CustomerKey>>) -> KeyRing {
        KeyRing { keys }
    }

    /// The key writes use (None: the mount writes plain blobs).
    pub fn current(&self) -> Option<&Arc<CustomerKey>> {
        self.keys.first()
    }

    /// The key whose SHA-256 (base64, as the service reports it) is `sha256`.
    pub fn find(&self, sha256: &str) -> Option<&Arc<CustomerKey>> {
        self.keys.iter().find(|k| k.sha256() == sha256)
    }

    /// The older keys, kept for reading.
    pub fn older(&self) -> &[Arc<CustomerKey>] {
        self.keys.get(1..).unwrap_or(&[])
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Arc<CustomerKey> {
        Arc::new(CustomerKey::from_raw([b; 32]))
    }

    #[test]
    fn first_key_is_current_and_every_key_is_found_by_hash() {
        let (a, b, c) = (key(1), key(2), key(3));
        let ring = KeyRing::new(vec![a.clone(), b.clone()]);
        assert_eq!(ring.current().unwrap().sha256(), a.sha256());
        assert_eq!(ring.older().len(), 1);
        assert_eq!(ring.find(b.sha256()).unwrap().sha256(), b.sha256());
        assert_eq!(ring.find(a.sha256()).unwrap().sha256(), a.sha256());
        assert!(ring.find(c.sha256()).is_none());
    }

    #[test]
    fn an_empty_ring_writes_plain_blobs() {
        let ring = KeyRing::default();
        assert!(ring.current().is_none() && ring.older().is_empty() && ring.is_empty());
    }
}
