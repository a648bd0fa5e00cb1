//! Block buffers of sequential writers, kept for the next block once their
//! Put Block is done. A fresh buffer of a block's size is fresh pages from
//! the kernel (glibc maps anything that large on its own), each one faulted
//! in and cleared on first touch: 13 % of the mount's CPU when streaming a
//! large file (PERFORMANCE.md). A buffer used again costs neither.
//!
//! At most `max_idle` buffers wait here, and none once the mount's last
//! writable handle is released: a mount that stopped writing holds no
//! block buffer, and a burst of writers larger than that allocates as
//! before.

use bytes::{Bytes, BytesMut};
use std::sync::Mutex;

pub struct BufferPool {
    block_size: usize,
    max_idle: usize,
    idle: Mutex<Vec<BytesMut>>,
}

impl BufferPool {
    pub fn new(block_size: u64, max_idle: usize) -> Self {
        BufferPool {
            block_size: block_size as usize,
            max_idle,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An empty buffer of `capacity` bytes: one used before when that is a
    /// whole block.
    pub fn take(&self, capacity: usize) -> BytesMut {
        if capacity == self.block_size {
            if let Some(b) = self.idle.lock().unwrap().pop() {
                return b;
            }
        }
        BytesMut::with_capacity(capacity)
    }

    /// `body` was uploaded: keep its memory if nothing else holds it, it is
    /// a whole block's, and fewer than `max_idle` wait already.
    pub fn give(&self, body: Bytes) {
        let Ok(mut b) = body.try_into_mut() else {
            return;
        };
        if b.capacity() < self.block_size {
            return;
        }
        b.clear();
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.max_idle {
            idle.push(b);
        }
    }

    /// Writing stopped: the memory goes back.
    pub fn clear(&self) {
        self.idle.lock().unwrap().clear();
    }

    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block's buffer comes back empty, with its memory (the same
    /// pointer); smaller ones, shared ones and those beyond `max_idle` do
    /// not.
    #[test]
    fn whole_blocks_are_used_again() {
        let pool = BufferPool::new(1024, 2);
        let mut b = pool.take(1024);
        b.extend_from_slice(&[7; 1024]);
        let ptr = b.as_ptr();
        pool.give(b.freeze());
        assert_eq!(pool.idle(), 1);
        let again = pool.take(1024);
        assert!(again.is_empty() && again.capacity() >= 1024);
        assert_eq!(again.as_ptr(), ptr, "the same memory");
        assert_eq!(pool.idle(), 0);

        pool.give(pool.take(100).freeze());
        assert_eq!(pool.idle(), 0, "not a whole block");
        let shared = again.freeze();
        let other = shared.clone();
        pool.give(shared);
        assert_eq!(pool.idle(), 0, "still held elsewhere");
        drop(other);
        for _ in 0..3 {
            pool.give(BytesMut::zeroed(1024).freeze());
        }
        assert_eq!(pool.idle(), 2, "at most max_idle");
        assert_eq!(pool.take(512).capacity(), 512, "not a block: a new one");
        assert_eq!(pool.idle(), 2);
    }
}
