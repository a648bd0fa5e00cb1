//! The block cache: an LRU of fixed-size blocks bounded in bytes, keyed by
//! (blob name, ETag, block index, key hash) so bytes of two versions never
//! mix. Concurrent requests for the same block share one fetch. With a disk
//! tier (`disk_cache/`), blocks evicted from memory are sealed to disk and a
//! memory miss looks there before the network. Hits and misses
//! are counted for `cpkfs stats`: a miss is a block fetched from below the
//! cache (read-ahead included), a hit a block served without a new fetch
//! (joining a fetch already under way counts as a hit).
//!
//! A block being fetched counts against the capacity from the moment its
//! fetch starts (its buffer fills as the body arrives): the cache makes room
//! for it first, so the blocks held plus the blocks on their way stay within
//! the bound. Otherwise read-ahead (64 MiB in flight per mount) came on top
//! of it, and reading a 20 GiB file from a slow backend peaked at cache +
//! 99 MiB.

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use lru::LruCache;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::disk_cache::{DiskCache, DiskCacheStats};
use super::stats::TierCounters;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockKey {
    pub name: Arc<str>,
    pub etag: Arc<str>,
    pub index: u64,
    /// SHA-256 (base64) of the customer-provided key the blob is under, as
    /// the service reports it; None for a plain blob. Taken from a key the
    /// mount's ring holds (`Fs::key_for`), so it names a key this mount has.
    pub cpk_sha256: Option<Arc<str>>,
}

pub type FetchResult = Result<Bytes, Arc<super::error::FsError>>;
type Inflight = Shared<BoxFuture<'static, FetchResult>>;

struct Inner {
    lru: LruCache<BlockKey, Bytes>,
    bytes: usize,
    inflight: HashMap<BlockKey, Inflight>,
}

pub struct BlockCache {
    inner: Mutex<Inner>,
    /// Bytes of the fetches under way (their expected lengths), released
    /// by each fetch as it ends.
    reserved: Arc<AtomicUsize>,
    capacity: usize,
    counters: TierCounters,
    disk: Option<Arc<DiskCache>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub bytes: usize,
    pub blocks: usize,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        Self::with_disk(capacity_bytes, None)
    }

    /// A memory LRU of `capacity_bytes` over an optional disk tier.
    pub fn with_disk(capacity_bytes: usize, disk: Option<Arc<DiskCache>>) -> Self {
        BlockCache {
            inner: Mutex::new(Inner {
                lru: LruCache::unbounded(),
                bytes: 0,
                inflight: HashMap::new(),
            }),
            reserved: Arc::new(AtomicUsize::new(0)),
            capacity: capacity_bytes,
            counters: TierCounters::default(),
            disk,
        }
    }

    /// The disk tier, if this mount has one.
    pub fn disk(&self) -> Option<&Arc<DiskCache>> {
        self.disk.as_ref()
    }

    /// The disk tier's counters (None: no disk tier configured).
    pub fn disk_stats(&self) -> Option<DiskCacheStats> {
        self.disk.as_ref().map(|d| d.stats())
    }

    /// Whether the disk tier holds `key` (a read of it costs no request).
    pub fn on_disk(&self, key: &BlockKey) -> bool {
        self.disk.as_ref().is_some_and(|d| d.holds(key))
    }

    /// Hits and misses so far.
    pub fn counters(&self) -> &TierCounters {
        &self.counters
    }

    /// A read's look into the cache: like [`get`](Self::get), counted as a
    /// hit or a miss.
    pub fn lookup(&self, key: &BlockKey) -> Option<Bytes> {
        let b = self.get(key);
        match &b {
            Some(_) => self.counters.hit(),
            None => self.counters.miss(),
        }
        b
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn get(&self, key: &BlockKey) -> Option<Bytes> {
        self.inner.lock().unwrap().lru.get(key).cloned()
    }

    pub fn contains(&self, key: &BlockKey) -> bool {
        let g = self.inner.lock().unwrap();
        g.lru.contains(key) || g.inflight.contains_key(key)
    }

    pub fn insert(&self, key: BlockKey, data: Bytes) {
        if data.len() > self.capacity {
            if let Some(d) = &self.disk {
                d.spill(key, data);
            }
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut g = self.inner.lock().unwrap();
            let len = data.len();
            if let Some(old) = g.lru.put(key, data) {
                g.bytes -= old.len();
            }
            g.bytes += len;
            self.evict_to_fit(&mut g, &mut evicted);
        }
        self.spill(evicted);
    }

    /// Evict least recently used blocks until the blocks held and the
    /// fetches under way fit in the capacity.
    fn evict_to_fit(&self, g: &mut Inner, evicted: &mut Vec<(BlockKey, Bytes)>) {
        while g.bytes + self.reserved.load(Ordering::Relaxed) > self.capacity {
            match g.lru.pop_lru() {
                Some(kv) => {
                    g.bytes -= kv.1.len();
                    evicted.push(kv);
                }
                None => break,
            }
        }
    }

    /// Blocks evicted from memory go to the disk tier, if any (outside the
    /// lock: spilling only queues the write).
    fn spill(&self, evicted: Vec<(BlockKey, Bytes)>) {
        if let Some(d) = &self.disk {
            for (k, v) in evicted {
                d.spill(k, v);
            }
        }
    }

    /// Make `key` the first block to be evicted (a sequential reader is
    /// done with it).
    pub fn demote(&self, key: &BlockKey) {
        self.inner.lock().unwrap().lru.demote(key);
    }

    /// Drop every block of `name` (after a local write made them stale).
    pub fn invalidate(&self, name: &str) {
        let mut g = self.inner.lock().unwrap();
        let keys: Vec<BlockKey> = g
            .lru
            .iter()
            .filter(|(k, _)| &*k.name == name)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(v) = g.lru.pop(&k) {
                g.bytes -= v.len();
            }
        }
    }

    /// Return the cached block, or join/start its fetch, which is expected
    /// to bring `len` bytes (room is made for them first).
    pub async fn get_or_fetch<F>(&self, key: BlockKey, len: usize, fetch: F) -> FetchResult
    where
        F: FnOnce() -> BoxFuture<'static, FetchResult>,
    {
        let mut evicted = Vec::new();
        let fut = {
            let mut g = self.inner.lock().unwrap();
            if let Some(b) = g.lru.get(&key) {
                self.counters.hit();
                return Ok(b.clone());
            }
            match g.inflight.get(&key) {
                Some(f) => {
                    self.counters.hit();
                    f.clone()
                }
                None => {
                    self.counters.miss();
                    // Reserved until the fetch ends, however it ends (the
                    // future runs to its end once started: its callers are
                    // spawned tasks).
                    let len = len.min(self.capacity);
                    self.reserved.fetch_add(len, Ordering::Relaxed);
                    self.evict_to_fit(&mut g, &mut evicted);
                    let reserved = self.reserved.clone();
                    let net = fetch();
                    let f = match self.disk.clone() {
                        // The disk tier first; the network only if it
                        // does not hold the block (or it fails to open).
                        Some(disk) => {
                            let k = key.clone();
                            async move {
                                match disk.get(&k).await {
                                    Some(b) => Ok(b),
                                    None => net.await,
                                }
                            }
                            .boxed()
                        }
                        None => net,
                    }
                    .map(move |r| {
                        reserved.fetch_sub(len, Ordering::Relaxed);
                        r
                    })
                    .boxed()
                    .shared();
                    g.inflight.insert(key.clone(), f.clone());
                    f
                }
            }
        };
        self.spill(evicted);
        let res = fut.await;
        {
            let mut g = self.inner.lock().unwrap();
            g.inflight.remove(&key);
        }
        if let Ok(b) = &res {
            // (`contains`, not `get`: whoever inserts second must not make
            // the block recent again — its reader may have demoted it.)
            if !self.inner.lock().unwrap().lru.contains(&key) {
                if let Some(d) = &self.disk {
                    d.wait_for_room(b.len()).await;
                }
                self.insert(key, b.clone());
            }
        }
        res
    }

    pub fn stats(&self) -> CacheStats {
        let g = self.inner.lock().unwrap();
        CacheStats {
            bytes: g.bytes,
            blocks: g.lru.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(i: u64) -> BlockKey {
        BlockKey {
            name: "f".into(),
            etag: "\"e\"".into(),
            index: i,
            cpk_sha256: None,
        }
    }

    #[test]
    fn bounded_in_bytes_lru_order() {
        let c = BlockCache::new(300);
        for i in 0..3 {
            c.insert(key(i), Bytes::from(vec![0u8; 100]));
        }
        assert!(c.get(&key(0)).is_some()); // 0 is now most recent
        c.insert(key(3), Bytes::from(vec![0u8; 100]));
        assert!(c.get(&key(1)).is_none(), "least recently used goes first");
        assert!(c.get(&key(0)).is_some());
        assert_eq!(
            c.stats(),
            CacheStats {
                bytes: 300,
                blocks: 3
            }
        );
        c.invalidate("f");
        assert_eq!(c.stats(), CacheStats::default());
    }

    #[test]
    fn a_demoted_block_is_evicted_first() {
        let c = BlockCache::new(300);
        for i in 0..3 {
            c.insert(key(i), Bytes::from(vec![0u8; 100]));
        }
        c.demote(&key(2));
        c.insert(key(3), Bytes::from(vec![0u8; 100]));
        assert!(c.get(&key(2)).is_none(), "the demoted block went first");
        assert!(c.get(&key(0)).is_some() && c.get(&key(1)).is_some());
    }

    #[tokio::test]
    async fn concurrent_fetches_of_one_block_share_one_request() {
        let c = Arc::new(BlockCache::new(1 << 20));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = vec![];
        for _ in 0..8 {
            let c = c.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                c.get_or_fetch(key(7), 5, move || {
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok(Bytes::from_static(b"block"))
                    }
                    .boxed()
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(&t.await.unwrap().unwrap()[..], b"block");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // One fetch: one miss; the seven that joined it were served without one.
        assert_eq!(c.counters().misses.load(Ordering::Relaxed), 1);
        assert_eq!(c.counters().hits.load(Ordering::Relaxed), 7);
        assert!(c.lookup(&key(7)).is_some());
        assert!(c.lookup(&key(8)).is_none());
        assert_eq!(c.counters().hits.load(Ordering::Relaxed), 8);
        assert_eq!(c.counters().misses.load(Ordering::Relaxed), 2);
    }

    /// A fetch under way counts against the capacity: starting it evicts
    /// the least recently used blocks to make room, and what the cache
    /// holds plus what is on its way never exceeds the capacity. The
    /// reservation ends with the fetch, failed ones too.
    #[tokio::test]
    async fn a_fetch_under_way_counts_against_the_capacity() {
        let c = Arc::new(BlockCache::new(300));
        for i in 0..3 {
            c.insert(key(i), Bytes::from(vec![0u8; 100]));
        }
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let fetching = {
            let c = c.clone();
            tokio::spawn(async move {
                c.get_or_fetch(key(9), 100, move || {
                    async move {
                        rx.await.unwrap();
                        Ok(Bytes::from(vec![1u8; 100]))
                    }
                    .boxed()
                })
                .await
            })
        };
        // Until the fetch has started (a wait, not a measurement).
        while c.reserved.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(c.get(&key(0)).is_none(), "room was made for the fetch");
        assert_eq!(c.stats().bytes, 200);
        // Nothing inserted meanwhile pushes past the bound.
        c.insert(key(5), Bytes::from(vec![0u8; 100]));
        assert_eq!(c.stats().bytes + c.reserved.load(Ordering::Relaxed), 300);
        tx.send(()).unwrap();
        assert_eq!(fetching.await.unwrap().unwrap().len(), 100);
        assert_eq!(c.reserved.load(Ordering::Relaxed), 0);
        assert_eq!(c.stats().bytes, 300);
        assert!(c.get(&key(9)).is_some());

        let failed = c
            .get_or_fetch(key(10), 100, || {
                async { Err(Arc::new(crate::error::FsError::NotFound)) }.boxed()
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            c.reserved.load(Ordering::Relaxed),
            0,
            "a failed fetch releases its room"
        );
    }
}
