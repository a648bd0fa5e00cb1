//! The inode table: numbers ↔ (parent, name), each with cached attributes.
//!
//! Lock order: the table lock is taken alone, never across an await; an
//! inode's own `state` lock is taken after the table lock when both are
//! needed. Write sessions live behind a separate async lock (write.rs).

use super::attr::{Attr, Kind};
use super::write::WriteSession;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ROOT_INO: u64 = 1;

#[derive(Debug, Clone)]
pub struct InodeState {
    pub parent: u64,
    pub name: String,
    pub attr: Attr,
    /// ETag of the committed blob; None when no blob backs this inode (an
    /// implicit directory, or a file not committed yet).
    pub etag: Option<String>,
    pub cpk_sha256: Option<String>,
    /// Attributes are trusted until then.
    pub expires: Instant,
    /// False when a listing withheld a CPK blob's metadata: mode/uid/mtime are
    /// defaults until a keyed HEAD.
    pub meta_known: bool,
    pub unlinked: bool,
    /// The ETag our own last commit produced: open handles follow it.
    pub local_etag: Option<String>,
    /// A directory whose mtime/ctime moved here (an entry was created,
    /// removed or renamed in it) and are not stored yet: they win over what
    /// the service says until the marker is next written (see SEMANTICS.md).
    pub local_times: bool,
}

pub struct Inode {
    pub ino: u64,
    pub state: Mutex<InodeState>,
    /// Pending writes of this file, shared by all its handles.
    pub write: tokio::sync::Mutex<Option<WriteSession>>,
}

impl Inode {
    pub fn snapshot(&self) -> InodeState {
        self.state.lock().unwrap().clone()
    }
    pub fn kind(&self) -> Kind {
        self.state.lock().unwrap().attr.kind
    }
}

#[derive(Default)]
struct Tables {
    by_ino: HashMap<u64, Arc<Inode>>,
    /// Names by directory.
    children: HashMap<u64, HashMap<String, u64>>,
    /// Names known not to exist, by directory, until the instant.
    negative: HashMap<u64, HashMap<String, Instant>>,
    /// Entries in `negative`, and the count at which expired ones are next
    /// swept out (names unlinked here and never asked about again would
    /// otherwise stay forever).
    negatives: usize,
    sweep_negatives_at: usize,
    /// What keeps an inode without a name alive, by inode (absent: none):
    /// the lookups the kernel was answered and has not forgotten, and the
    /// open handles of this mount. An inode without a name and without
    /// references is dropped; one with a name stays, as the attribute
    /// cache of that name.
    refs: HashMap<u64, u64>,
    /// Directories whose last complete listing is known: until when it is
    /// trusted, and what listing it again would cost against asking about
    /// names one by one ([`InodeTable::relist_is_due`]).
    listed: HashMap<u64, Listed>,
}

/// The last complete listing of a directory.
#[derive(Clone, Copy)]
struct Listed {
    until: Instant,
    /// List Blobs pages it took.
    pages: u32,
    /// Names asked about one by one in this directory since (each one
    /// request).
    lookups: u32,
    /// How long the listing took, first request to last answer.
    took: Duration,
}

/// A directory whose listing expired is listed again once the names asked
/// about one by one since its last listing reach this many per page of that
/// listing. A page (up to 5,000 entries with metadata) costs the service
/// and the link more than a lookup of one name, so a directory of one page
/// is listed again at the first lookup (the lookup costs one request either
/// way), and a big one only when its names are being walked: `find` or `ls
/// -l` of 100,000 files whose listing outlasted `attr_ttl` then costs 20
/// pages each TTL instead of a request per name, and a program that stats a
/// few names of a big directory never lists it whole. (Renting until the
/// rent paid equals the price of buying: at most about twice the cheaper
/// of the two.) Except a directory whose last listing took more than half
/// of `attr_ttl`: listed again, its first entries would expire about as soon
/// as the last arrived (100,000 CPK files with tags behind a loaded service:
/// `find` spent 232 s re-listing), so it is asked about name by name.
pub const RELIST_AFTER_LOOKUPS_PER_PAGE: u32 = 16;

/// Expired negative entries are swept once there are this many, and then
/// whenever their number doubles since the last sweep.
const FIRST_NEGATIVE_SWEEP: usize = 1024;

impl Tables {
    fn child_ino(&self, parent: u64, name: &str) -> Option<u64> {
        self.children.get(&parent)?.get(name).copied()
    }

    /// Give `name` of `parent` to `ino`; an inode it named before loses it.
    fn set_child(&mut self, parent: u64, name: &str, ino: u64) {
        let old = self
            .children
            .entry(parent)
            .or_default()
            .insert(name.to_string(), ino);
        if let Some(old) = old.filter(|o| *o != ino) {
            self.drop_if_unused(old);
        }
    }

    fn take_child(&mut self, parent: u64, name: &str) -> Option<u64> {
        let names = self.children.get_mut(&parent)?;
        let ino = names.remove(name);
        if names.is_empty() {
            self.children.remove(&parent);
        }
        ino
    }

    fn negative_until(&self, parent: u64, name: &str) -> Option<Instant> {
        self.negative.get(&parent)?.get(name).copied()
    }

    fn remove_negative(&mut self, parent: u64, name: &str) {
        if let Some(names) = self.negative.get_mut(&parent) {
            if names.remove(name).is_some() {
                self.negatives -= 1;
            }
            if names.is_empty() {
                self.negative.remove(&parent);
            }
        }
    }

    fn sweep_negatives(&mut self) {
        let now = Instant::now();
        self.negative.retain(|_, names| {
            names.retain(|_, until| *until > now);
            !names.is_empty()
        });
        self.negatives = self.negative.values().map(HashMap::len).sum();
        self.sweep_negatives_at = (self.negatives * 2).max(FIRST_NEGATIVE_SWEEP);
    }

    /// Drop `ino` if nothing holds it: no name, no reference. A directory
    /// dropped takes what the table knew under it (its names, negative
    /// entries and listing); inodes it named follow the same rule.
    fn drop_if_unused(&mut self, ino: u64) {
        let mut todo = vec![ino];
        while let Some(ino) = todo.pop() {
            if ino == ROOT_INO || self.refs.contains_key(&ino) {
                continue;
            }
            let Some(node) = self.by_ino.get(&ino) else {
                continue;
            };
            let named = {
                let s = node.state.lock().unwrap();
                self.child_ino(s.parent, &s.name) == Some(ino)
            };
            if named {
                continue;
            }
            self.by_ino.remove(&ino);
            self.listed.remove(&ino);
            if let Some(names) = self.negative.remove(&ino) {
                self.negatives -= names.len();
            }
            if let Some(names) = self.children.remove(&ino) {
                todo.extend(names.into_values());
            }
        }
    }
}

pub struct InodeTable {
    t: Mutex<Tables>,
    next: AtomicU64,
}

impl InodeTable {
    pub fn new(root_attr: Attr) -> Self {
        let table = InodeTable {
            t: Mutex::new(Tables::default()),
            next: AtomicU64::new(ROOT_INO + 1),
        };
        let root = Arc::new(Inode {
            ino: ROOT_INO,
            state: Mutex::new(InodeState {
                parent: ROOT_INO,
                name: String::new(),
                attr: root_attr,
                etag: None,
                cpk_sha256: None,
                expires: Instant::now() + std::time::Duration::from_secs(u32::MAX as u64),
                meta_known: true,
                unlinked: false,
                local_etag: None,
                local_times: false,
            }),
            write: tokio::sync::Mutex::new(None),
        });
        table.t.lock().unwrap().by_ino.insert(ROOT_INO, root);
        table
    }

    pub fn get(&self, ino: u64) -> Option<Arc<Inode>> {
        self.t.lock().unwrap().by_ino.get(&ino).cloned()
    }

    pub fn child(&self, parent: u64, name: &str) -> Option<Arc<Inode>> {
        let t = self.t.lock().unwrap();
        t.child_ino(parent, name)
            .and_then(|i| t.by_ino.get(&i))
            .cloned()
    }

    /// Blob path of an inode ("" for the root).
    pub fn path(&self, ino: u64) -> Option<String> {
        let t = self.t.lock().unwrap();
        let mut parts = vec![];
        let mut cur = ino;
        while cur != ROOT_INO {
            let node = t.by_ino.get(&cur)?;
            let s = node.state.lock().unwrap();
            parts.push(s.name.clone());
            cur = s.parent;
        }
        parts.reverse();
        Some(parts.join("/"))
    }

    /// Insert or refresh the child `name` of `parent` with what the backend
    /// said. An existing inode keeps its number unless its kind changed.
    pub fn upsert(&self, parent: u64, name: &str, fresh: InodeState) -> Arc<Inode> {
        let mut t = self.t.lock().unwrap();
        t.remove_negative(parent, name);
        if let Some(ino) = t.child_ino(parent, name) {
            if let Some(node) = t.by_ino.get(&ino).cloned() {
                let mut s = node.state.lock().unwrap();
                if s.attr.kind == fresh.attr.kind {
                    // A file with local writes keeps its local size and times:
                    // one never committed, or one whose write session holds
                    // changes not committed yet (a listing of the stored blob
                    // must not undo a truncate or extend made here). A session
                    // busy right now (a commit in flight) counts as writing.
                    let writing = s.attr.kind == Kind::File
                        && node
                            .write
                            .try_lock()
                            .map_or(true, |w| w.as_ref().is_some_and(|ws| ws.is_dirty()));
                    let keep_local = (s.etag.is_none() && fresh.etag.is_none()) || writing;
                    if !keep_local {
                        let meta_known = fresh.meta_known || (s.meta_known && s.etag == fresh.etag);
                        let attr = if fresh.meta_known || !meta_known {
                            fresh.attr
                        } else {
                            // Same ETag: keep the metadata learnt by HEAD.
                            Attr {
                                size: fresh.attr.size,
                                ..s.attr
                            }
                        };
                        let local_etag = s.local_etag.clone();
                        let mut attr = attr;
                        let local_times = s.local_times && fresh.attr.kind == Kind::Dir;
                        if local_times {
                            // Entry changes made here are newer than the
                            // stored marker: keep their times.
                            attr.mtime = attr.mtime.max(s.attr.mtime);
                            attr.ctime = attr.ctime.max(s.attr.ctime);
                        }
                        *s = InodeState {
                            attr,
                            meta_known,
                            local_etag,
                            local_times,
                            ..fresh
                        };
                    } else {
                        s.expires = fresh.expires;
                    }
                    drop(s);
                    return node;
                }
            }
        }
        let ino = self.next.fetch_add(1, Ordering::Relaxed);
        let node = Arc::new(Inode {
            ino,
            state: Mutex::new(fresh),
            write: tokio::sync::Mutex::new(None),
        });
        t.by_ino.insert(ino, node.clone());
        t.set_child(parent, name, ino);
        node
    }

    /// Forget the name (after unlink/rmdir or when the backend says it's
    /// gone). The inode it named is dropped too unless the kernel or an
    /// open handle still holds it; the caller's `Arc` stays usable.
    pub fn remove_child(&self, parent: u64, name: &str) -> Option<Arc<Inode>> {
        let mut t = self.t.lock().unwrap();
        let ino = t.take_child(parent, name)?;
        let node = t.by_ino.get(&ino).cloned();
        t.drop_if_unused(ino);
        node
    }

    /// Move a name (rename). Replaces whatever the destination named.
    pub fn rename(&self, parent: u64, name: &str, new_parent: u64, new_name: &str) {
        let mut t = self.t.lock().unwrap();
        if let Some(ino) = t.take_child(parent, name) {
            if let Some(node) = t.by_ino.get(&ino) {
                let mut s = node.state.lock().unwrap();
                s.parent = new_parent;
                s.name = new_name.to_string();
            }
            t.set_child(new_parent, new_name, ino);
            t.remove_negative(new_parent, new_name);
        }
        t.listed.remove(&parent);
        t.listed.remove(&new_parent);
    }

    /// One more reference to `ino`: a lookup the kernel is answered (it
    /// sends FORGET for each), or a handle opened here.
    pub fn hold(&self, ino: u64) {
        let mut t = self.t.lock().unwrap();
        if t.by_ino.contains_key(&ino) {
            *t.refs.entry(ino).or_default() += 1;
        }
    }

    /// `n` references to `ino` are gone; without any left, and without a
    /// name, it is dropped.
    pub fn release(&self, ino: u64, n: u64) {
        let mut t = self.t.lock().unwrap();
        let Some(refs) = t.refs.get_mut(&ino) else {
            return;
        };
        *refs = refs.saturating_sub(n);
        if *refs == 0 {
            t.refs.remove(&ino);
            t.drop_if_unused(ino);
        }
    }

    pub fn set_negative(&self, parent: u64, name: &str, until: Instant) {
        let mut t = self.t.lock().unwrap();
        let fresh = t
            .negative
            .entry(parent)
            .or_default()
            .insert(name.to_string(), until)
            .is_none();
        if fresh {
            t.negatives += 1;
            if t.negatives >= t.sweep_negatives_at.max(FIRST_NEGATIVE_SWEEP) {
                t.sweep_negatives();
            }
        }
    }

    pub fn is_negative(&self, parent: u64, name: &str) -> bool {
        let mut t = self.t.lock().unwrap();
        match t.negative_until(parent, name) {
            Some(until) if until > Instant::now() => true,
            Some(_) => {
                t.remove_negative(parent, name);
                false
            }
            None => false,
        }
    }

    /// Until when this mount may hold that `name` is absent from `parent`:
    /// the later of its negative entry and the parent's complete listing
    /// (None if neither is fresh).
    pub fn absent_until(&self, parent: u64, name: &str) -> Option<Instant> {
        let t = self.t.lock().unwrap();
        let now = Instant::now();
        let neg = t.negative_until(parent, name);
        let listed = t.listed.get(&parent).map(|l| l.until);
        neg.into_iter().chain(listed).filter(|u| *u > now).max()
    }

    pub fn clear_negative(&self, parent: u64, name: &str) {
        self.t.lock().unwrap().remove_negative(parent, name);
    }

    /// A complete listing of `dir`, of `pages` List Blobs pages, was just
    /// seen: names not in it are absent.
    /// `took`: from its first request to its last answer.
    pub fn mark_listed(&self, dir: u64, until: Instant, pages: u32, took: Duration) {
        let l = Listed {
            until,
            pages: pages.max(1),
            lookups: 0,
            took,
        };
        self.t.lock().unwrap().listed.insert(dir, l);
    }

    pub fn is_listed(&self, dir: u64) -> bool {
        self.t
            .lock()
            .unwrap()
            .listed
            .get(&dir)
            .is_some_and(|l| l.until > Instant::now())
    }

    /// Whether a name of `dir` the mount cannot answer should be learnt by
    /// listing `dir` again rather than by a lookup of its own: its last
    /// complete listing (fresh or not) fit in one page, or enough names were
    /// asked about one by one since ([`RELIST_AFTER_LOOKUPS_PER_PAGE`]) and
    /// that listing took at most half of `ttl`.
    pub fn relist_is_due(&self, dir: u64, ttl: Duration) -> bool {
        self.t.lock().unwrap().listed.get(&dir).is_some_and(|l| {
            l.pages == 1
                || (l.lookups >= RELIST_AFTER_LOOKUPS_PER_PAGE.saturating_mul(l.pages)
                    && l.took * 2 <= ttl)
        })
    }

    /// A name of `dir` was asked about on its own (one request).
    pub fn count_lookup(&self, dir: u64) {
        if let Some(l) = self.t.lock().unwrap().listed.get_mut(&dir) {
            l.lookups = l.lookups.saturating_add(1);
        }
    }

    pub fn invalidate_listing(&self, dir: u64) {
        self.t.lock().unwrap().listed.remove(&dir);
    }

    /// Children currently known under `dir` (name, inode).
    pub fn children_of(&self, dir: u64) -> Vec<(String, Arc<Inode>)> {
        let t = self.t.lock().unwrap();
        let Some(names) = t.children.get(&dir) else {
            return vec![];
        };
        names
            .iter()
            .filter_map(|(n, i)| t.by_ino.get(i).map(|node| (n.clone(), node.clone())))
            .collect()
    }

    pub fn count(&self) -> usize {
        self.t.lock().unwrap().by_ino.len()
    }

    /// Negative entries held (expired ones not swept yet included).
    pub fn negative_count(&self) -> usize {
        self.t.lock().unwrap().negatives
    }

    pub fn all(&self) -> Vec<Arc<Inode>> {
        self.t.lock().unwrap().by_ino.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh(parent: u64, name: &str, kind: Kind) -> InodeState {
        InodeState {
            parent,
            name: name.into(),
            attr: Attr::new(kind, 0o644, 0, 0),
            etag: Some("e".into()),
            cpk_sha256: None,
            expires: Instant::now(),
            meta_known: true,
            unlinked: false,
            local_etag: None,
            local_times: false,
        }
    }

    /// A child `name` of `parent` as a listing would bring it: its number.
    fn add(t: &InodeTable, parent: u64, name: &str, kind: Kind) -> u64 {
        t.upsert(parent, name, fresh(parent, name, kind)).ino
    }

    fn table() -> InodeTable {
        InodeTable::new(Attr::new(Kind::Dir, 0o755, 0, 0))
    }

    /// A named inode stays (it is the attribute cache of its name); one
    /// without a name goes when its last reference does, and at once if it
    /// had none.
    #[test]
    fn an_inode_goes_with_its_name_and_last_reference() {
        let t = table();
        let a = add(&t, ROOT_INO, "a", Kind::File);
        let b = add(&t, ROOT_INO, "b", Kind::File);
        t.hold(a);
        t.hold(a);
        t.release(a, 2);
        assert!(t.get(a).is_some(), "named: kept with no reference");
        t.hold(a);
        let gone = t.remove_child(ROOT_INO, "a").expect("it was there");
        assert_eq!(gone.ino, a);
        assert!(t.get(a).is_some(), "held by the kernel after unlink");
        t.release(a, 1);
        assert!(t.get(a).is_none(), "no name, no reference");
        t.remove_child(ROOT_INO, "b");
        assert!(t.get(b).is_none(), "never held: dropped with its name");
        t.release(b, 1);
        assert_eq!(t.count(), 1, "only the root");
    }

    /// A name given to another inode (rename over it, or a new object of
    /// another kind) leaves the old one to the same rule.
    #[test]
    fn an_inode_renamed_over_goes_when_released() {
        let t = table();
        let old = add(&t, ROOT_INO, "dst", Kind::File);
        let src = add(&t, ROOT_INO, "src", Kind::File);
        t.hold(old);
        t.rename(ROOT_INO, "src", ROOT_INO, "dst");
        assert_eq!(t.child(ROOT_INO, "dst").unwrap().ino, src);
        assert!(t.get(old).is_some());
        t.release(old, 1);
        assert!(t.get(old).is_none());
        let dir = add(&t, ROOT_INO, "dst", Kind::Dir);
        assert_ne!(dir, src);
        assert!(t.get(src).is_none(), "replaced by a directory, never held");
    }

    /// A directory dropped takes the names under it; inodes still held
    /// stay until released, then go too.
    #[test]
    fn a_directory_dropped_takes_its_names() {
        let t = table();
        let d = add(&t, ROOT_INO, "d", Kind::Dir);
        let f = add(&t, d, "f", Kind::File);
        let g = add(&t, d, "g", Kind::File);
        t.set_negative(d, "x", Instant::now() + Duration::from_secs(60));
        t.mark_listed(
            d,
            Instant::now() + Duration::from_secs(60),
            1,
            Duration::ZERO,
        );
        t.hold(g);
        t.remove_child(ROOT_INO, "d");
        assert!(t.get(d).is_none() && t.get(f).is_none());
        assert!(!t.is_listed(d));
        assert_eq!(t.negative_count(), 0);
        assert!(t.get(g).is_some(), "still held");
        t.release(g, 1);
        assert_eq!(t.count(), 1);
    }

    /// Negative entries of names never asked about again are swept once
    /// expired: their number stays near what is fresh.
    #[test]
    fn expired_negative_entries_are_swept() {
        let t = table();
        let past = Instant::now();
        for i in 0..100_000 {
            t.set_negative(ROOT_INO, &format!("n{i}"), past);
        }
        assert!(t.negative_count() < 2 * FIRST_NEGATIVE_SWEEP);
        let later = Instant::now() + Duration::from_secs(60);
        for i in 0..5_000 {
            t.set_negative(ROOT_INO, &format!("k{i}"), later);
        }
        assert!(t.negative_count() >= 5_000, "fresh ones are kept");
        assert!(t.is_negative(ROOT_INO, "k0"));
        assert!(!t.is_negative(ROOT_INO, "n0"));
    }

    /// When listing a directory again is due: one page, at once; more, after
    /// 16 single lookups per page, unless the last listing took more than
    /// half the TTL (a new one would be stale as soon as it was done).
    #[test]
    fn relisting_is_due_when_it_pays_and_can_stay_fresh() {
        let t = InodeTable::new(Attr::new(Kind::Dir, 0o755, 0, 0));
        let ttl = Duration::from_secs(3);
        let past = Instant::now();
        assert!(!t.relist_is_due(1, ttl), "never listed");
        t.mark_listed(1, past, 1, Duration::from_secs(10));
        assert!(t.relist_is_due(1, ttl), "one page: at the first lookup");
        t.mark_listed(1, past, 20, Duration::from_millis(1500));
        for _ in 0..RELIST_AFTER_LOOKUPS_PER_PAGE * 20 - 1 {
            t.count_lookup(1);
        }
        assert!(!t.relist_is_due(1, ttl));
        t.count_lookup(1);
        assert!(t.relist_is_due(1, ttl), "after 16 lookups per page");
        t.mark_listed(1, past, 20, Duration::from_millis(1501));
        for _ in 0..RELIST_AFTER_LOOKUPS_PER_PAGE * 100 {
            t.count_lookup(1);
        }
        assert!(!t.relist_is_due(1, ttl), "a listing slower than ttl / 2");
    }
}
