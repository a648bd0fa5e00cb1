//! Write sessions under concurrency, without a kernel: two handles on one
//! file writing at once, and close/fsync racing writes. Whatever each
//! write() acknowledged must be in the blob once the last handle is closed.

mod common;
use common::*;
use std::sync::Arc;

/// Two writable handles on one file write interleaved blocks at the same
/// time (one session behind both); the stored file holds every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_write_disjoint_blocks_at_once() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let fs = mount(&client);
    put_file(&fs, "f", b"").await;
    let ino = fs.lookup(1, "f").await.unwrap().ino;
    let a = fs.open(ino, true, false).await.unwrap();
    let b = fs.open(ino, true, false).await.unwrap();
    let blocks = 16u64;
    let writer = |fh: u64, parity: u64| {
        let fs = fs.clone();
        tokio::spawn(async move {
            for i in (0..blocks).filter(|i| i % 2 == parity) {
                let data = pattern(BLOCK as usize, i as u8);
                fs.write(ino, fh, i * BLOCK, &data).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let (ra, rb) = tokio::join!(writer(a, 0), writer(b, 1));
    ra.unwrap();
    rb.unwrap();
    for fh in [a, b] {
        fs.flush(ino, fh).await.unwrap();
        fs.release(ino, fh).await.unwrap();
    }
    let expected: Vec<u8> = (0..blocks)
        .flat_map(|i| pattern(BLOCK as usize, i as u8))
        .collect();
    assert_eq!(read_all(&mount(&client), "f").await, expected);
}

/// A sequential writer and another task calling flush (close of a dup'ed
/// descriptor, fsync) on the same file over and over: every flush commits
/// a consistent prefix, and after the last close the blob is the whole file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_racing_writes_loses_nothing() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let fs = mount(&client);
    let (e, w) = fs
        .create(1, "f", libc::S_IFREG | 0o644, 0, 0)
        .await
        .unwrap();
    let ino = e.ino;
    let other = fs.open(ino, true, false).await.unwrap();
    let chunk = 1000usize;
    let chunks = 64usize;
    let expected = Arc::new(pattern(chunk * chunks, 7));
    let writer = {
        let (fs, expected) = (fs.clone(), expected.clone());
        tokio::spawn(async move {
            for i in 0..chunks {
                let at = i * chunk;
                let n = fs
                    .write(ino, w, at as u64, &expected[at..at + chunk])
                    .await
                    .unwrap();
                assert_eq!(n as usize, chunk);
                tokio::task::yield_now().await;
            }
        })
    };
    let flusher = {
        let fs = fs.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                fs.flush(ino, other).await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    writer.await.unwrap();
    flusher.await.unwrap();
    // What a flush committed midway is a prefix of the file.
    let midway = read_all(&mount(&client), "f").await;
    assert!(expected.starts_with(&midway), "{} bytes", midway.len());
    for fh in [w, other] {
        fs.flush(ino, fh).await.unwrap();
        fs.release(ino, fh).await.unwrap();
    }
    assert_eq!(read_all(&mount(&client), "f").await, *expected);
}
