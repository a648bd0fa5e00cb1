//! Listings held by the mount: the entries of one List Blobs page, and
//! listing a small directory again when its listing expired, so that lookups
//! in it (every create of a `cp -r` that outlasts `attr_ttl`, every unlink of
//! an `rm -r`) cost one request per directory and TTL instead of one per name.

use super::attr::Kind;
use super::error::FsResult;
use super::inode::InodeState;
use super::{check_name, join, Entry, Fs};
use cpkfs_blob::{Conditions, ListOptions, ListPage};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One listing per directory at a time: lookups that find its listing
/// expired wait for the one that lists it again instead of all listing.
/// A directory's entry lives while someone holds or waits for its turn (a
/// long-lived mount does not keep one for every directory it ever listed).
#[derive(Default)]
pub(crate) struct Relists(Mutex<HashMap<u64, DirTurns>>);

/// A directory's lock, and the parties holding or waiting for it.
type DirTurns = (Arc<tokio::sync::Mutex<()>>, usize);

/// One party holding or waiting for a directory's turn.
struct Party<'a> {
    relists: &'a Relists,
    dir: u64,
}

impl Drop for Party<'_> {
    fn drop(&mut self) {
        let mut m = self.relists.0.lock().unwrap();
        if let Some(e) = m.get_mut(&self.dir) {
            e.1 -= 1;
            if e.1 == 0 {
                m.remove(&self.dir);
            }
        }
    }
}

/// The turn to list a directory; fields drop in order: the lock, then the
/// party.
pub(crate) struct Turn<'a> {
    _held: tokio::sync::OwnedMutexGuard<()>,
    _party: Party<'a>,
}

impl Relists {
    /// Wait for the turn to list `dir` (cancel-safe: a waiter dropped
    /// leaves as a party).
    async fn turn(&self, dir: u64) -> Turn<'_> {
        let lock = {
            let mut m = self.0.lock().unwrap();
            let e = m.entry(dir).or_default();
            e.1 += 1;
            e.0.clone()
        };
        let party = Party { relists: self, dir };
        Turn {
            _held: lock.lock_owned().await,
            _party: party,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl Fs {
    /// The entries of one page of directory `ino` (prefix length `plen`),
    /// sorted by name, one per name: a directory (its marker before a bare
    /// prefix, whose attributes are only defaults) wins over a file of the
    /// same name.
    pub(crate) fn page_entries(
        &self,
        ino: u64,
        plen: usize,
        page: &ListPage,
    ) -> Vec<(String, InodeState)> {
        let mut entries: Vec<(String, InodeState)> = vec![];
        for p in &page.prefixes {
            let n = p[plen..].trim_end_matches('/').to_string();
            if n.is_empty() || check_name(&n).is_err() {
                continue;
            }
            entries.push((n.clone(), self.implicit_dir_state(ino, &n)));
        }
        for b in &page.blobs {
            let n = b.name[plen..].to_string();
            if n.is_empty()
                || n.contains('/')
                || check_name(&n).is_err()
                || self.is_unlinked_blob(&b.name, &b.properties.etag)
            {
                continue;
            }
            let known = !b.properties.metadata_encrypted;
            entries.push((
                n.clone(),
                self.state_from_props(ino, &n, &b.properties, known),
            ));
        }
        entries.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then((a.1.attr.kind != Kind::Dir).cmp(&(b.1.attr.kind != Kind::Dir)))
                .then(a.1.etag.is_none().cmp(&b.1.etag.is_none()))
        });
        entries.dedup_by(|later, first| later.0 == first.0);
        entries
    }

    /// A lookup the mount cannot answer in a directory whose last complete
    /// listing expired, when listing it again is due
    /// ([`InodeTable::relist_is_due`](super::inode::InodeTable::relist_is_due):
    /// it fit in one page, or enough of its names were asked about one by
    /// one since): list the directory again and answer from that. None: not such a directory,
    /// or the listing leaves this name to a lookup of its own (a name that
    /// vanished from it, or a CPK blob whose metadata needs a keyed HEAD).
    pub(crate) async fn lookup_by_relisting(
        &self,
        parent: u64,
        name: &str,
    ) -> FsResult<Option<FsResult<Entry>>> {
        if !self.inodes.relist_is_due(parent, self.cfg.attr_ttl) {
            return Ok(None);
        }
        self.relist(parent).await?;
        match self.inodes.child(parent, name) {
            None => Ok(Some(Err(super::FsError::NotFound))),
            Some(child) => {
                let s = child.snapshot();
                if s.expires <= Instant::now() || s.unlinked {
                    return Ok(None);
                }
                if s.meta_known {
                    return Ok(Some(Ok(Entry {
                        ino: child.ino,
                        attr: s.attr,
                    })));
                }
                // Listed, but a CPK blob hides its metadata: a keyed HEAD
                // of that version is all that is missing.
                let (Some(etag), Some(sha)) = (s.etag, s.cpk_sha256) else {
                    return Ok(None);
                };
                let Some(key) = self.ring_key(&sha) else {
                    // Under a key this mount does not hold: the listing's
                    // size and times are all anyone can know (open says EACCES).
                    return Ok(Some(Ok(Entry {
                        ino: child.ino,
                        attr: s.attr,
                    })));
                };
                let path = join(&self.path_of(parent)?, name);
                let p = self
                    .client
                    .get_blob_properties(&path, Some(&key), &Conditions::if_match(etag))
                    .await;
                match p {
                    Ok(p) => {
                        let node = self.inodes.upsert(
                            parent,
                            name,
                            self.state_from_props(parent, name, &p, true),
                        );
                        let attr = node.snapshot().attr;
                        Ok(Some(Ok(Entry {
                            ino: node.ino,
                            attr,
                        })))
                    }
                    // Changed since the listing: ask about the name afresh.
                    Err(e) if e.status() == Some(412) || e.is_not_found() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// List directory `dir` again, unless another task just did: refresh
    /// every entry it names and hold the listing for `attr_ttl` (counted
    /// from before the request). CPK metadata is taken from the inode of
    /// each name when it describes the same ETag, and never fetched here: an
    /// entry whose metadata is unknown is left to its own lookup.
    async fn relist(&self, dir: u64) -> FsResult<()> {
        let _turn = self.relists.turn(dir).await;
        if self.inodes.is_listed(dir) {
            return Ok(());
        }
        let until = self.expiry();
        let started = Instant::now();
        let path = self.path_of(dir)?;
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut marker = None;
        let mut pages = 0;
        loop {
            let mut page = self
                .client
                .list_blobs(&ListOptions {
                    prefix: (!prefix.is_empty()).then(|| prefix.clone()),
                    delimiter: Some("/".into()),
                    marker: marker.take(),
                    max_results: Some(self.cfg.list_page_size),
                    include_metadata: true,
                    include_tags: self.cfg.attrs_in_tags,
                    ..Default::default()
                })
                .await?;
            pages += 1;
            self.reveal_cpk_metadata(dir, &mut page.blobs, false).await;
            for (n, st) in self.page_entries(dir, prefix.len(), &page) {
                self.inodes.upsert(dir, &n, st);
            }
            match page.next_marker {
                Some(m) => marker = Some(m),
                None => break,
            }
        }
        self.inodes
            .mark_listed(dir, until, pages, started.elapsed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parties of one directory take turns; the entry goes with the last
    /// one, also when a waiter gives up.
    #[tokio::test]
    async fn a_directory_entry_lives_while_a_party_does() {
        let r = Relists::default();
        let first = r.turn(7).await;
        assert_eq!(r.len(), 1);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), r.turn(7)).await;
        assert!(waiting.is_err(), "the second waits for the first");
        assert_eq!(r.0.lock().unwrap()[&7].1, 1, "the one that gave up left");
        drop(first);
        assert_eq!(r.len(), 0);
        let a = r.turn(7).await;
        let b = r.turn(8).await;
        assert_eq!(r.len(), 2);
        drop((a, b));
        assert_eq!(r.len(), 0);
    }
}
