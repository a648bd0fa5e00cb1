//! Directory handles: a listing is paged through List Blobs with the `/`
//! delimiter, one page at a time, so a directory of any size works without
//! loading the container. FUSE offsets are entry ordinals.

use super::attr::Attr;
use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub attr: Attr,
    /// Offset of the *next* entry (what FUSE wants with each entry).
    pub next_offset: u64,
}

pub struct DirHandle {
    pub ino: u64,
    pub prefix: String,
    /// Entries from `base` on, not yet consumed.
    pub window: VecDeque<DirEntry>,
    /// Ordinal of `window[0]`.
    pub base: u64,
    /// Ordinal the next produced entry gets.
    pub produced: u64,
    pub marker: Option<String>,
    /// List Blobs pages fetched so far, and when the first was asked for.
    pub pages: u32,
    pub started: Option<std::time::Instant>,
    pub listing_done: bool,
    /// Everything (including local-only entries) emitted.
    pub finished: bool,
    pub seen: HashSet<String>,
}

impl DirHandle {
    pub fn new(ino: u64, prefix: String) -> Self {
        DirHandle {
            ino,
            prefix,
            window: VecDeque::new(),
            base: 0,
            produced: 0,
            marker: None,
            pages: 0,
            started: None,
            listing_done: false,
            finished: false,
            seen: HashSet::new(),
        }
    }

    pub fn reset(&mut self) {
        let (ino, prefix) = (self.ino, std::mem::take(&mut self.prefix));
        *self = DirHandle::new(ino, prefix);
    }

    pub fn push(&mut self, ino: u64, name: String, attr: Attr) {
        self.produced += 1;
        let next_offset = self.produced;
        self.window.push_back(DirEntry {
            ino,
            name,
            attr,
            next_offset,
        });
    }

    /// Drop entries before `offset` (they were consumed by the kernel).
    pub fn consume_to(&mut self, offset: u64) {
        while self.base < offset && !self.window.is_empty() {
            self.window.pop_front();
            self.base += 1;
        }
    }
}
