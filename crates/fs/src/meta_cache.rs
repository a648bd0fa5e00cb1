//! Metadata of CPK blobs learnt here (by a keyed HEAD, or stored by our own
//! commit or chmod): a listing hides it, so a listing answered from this
//! cache costs no HEAD. One entry per blob path, for the version (ETag) it
//! describes: a newer version replaces it, and an unlink or rename removes
//! it, so the cache follows what exists rather than every version ever seen.

use cpkfs_blob::Metadata;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::sync::Mutex;

pub struct MetaCache {
    entries: Mutex<LruCache<String, (String, Metadata)>>,
}

impl MetaCache {
    pub fn new(capacity: usize) -> Self {
        MetaCache {
            entries: Mutex::new(LruCache::new(NonZeroUsize::new(capacity.max(1)).unwrap())),
        }
    }

    /// The metadata of `path` if what is known is of version `etag`.
    pub fn get(&self, path: &str, etag: &str) -> Option<Metadata> {
        let mut e = self.entries.lock().unwrap();
        match e.get(path) {
            Some((known, md)) if known == etag => Some(md.clone()),
            _ => None,
        }
    }

    pub fn put(&self, path: &str, etag: &str, md: Metadata) {
        self.entries
            .lock()
            .unwrap()
            .put(path.to_string(), (etag.to_string(), md));
    }

    /// `path` no longer names what was known (unlinked, renamed away).
    pub fn remove(&self, path: &str) {
        self.entries.lock().unwrap().pop(path);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(mode: &str) -> Metadata {
        let mut m = Metadata::new();
        m.insert("cpkfs_mode".into(), mode.into());
        m
    }

    /// One entry per path: a new version replaces the old one, whose
    /// metadata is no longer answered; a removed path answers nothing.
    #[test]
    fn one_version_per_path() {
        let c = MetaCache::new(10);
        c.put("a", "e1", md("644"));
        assert_eq!(c.get("a", "e1"), Some(md("644")));
        c.put("a", "e2", md("600"));
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a", "e1"), None, "an older version");
        assert_eq!(c.get("a", "e2"), Some(md("600")));
        c.remove("a");
        assert!(c.is_empty());
        assert_eq!(c.get("a", "e2"), None);
    }
}
