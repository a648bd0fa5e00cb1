//! Caching proved by counting the emulator's requests, with no kernel in
//! between: what the core answers from memory costs nothing, and a small
//! rewrite stages only the block it touches.

mod common;
use common::*;

/// After a full listing, stat of every entry (lookup + getattr, as `ls -l`
/// does) is answered from the inode table: 0 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_after_listing_makes_no_requests() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let names = ["a", "b", "c", "d", "e"];
    {
        let fs = mount(&client);
        for (i, n) in names.iter().enumerate() {
            put_file(&fs, n, &pattern(100 * (i + 1), i as u8)).await;
        }
    }
    let fs = mount(&client);
    let fh = fs.opendir(1).unwrap();
    let mut listed = vec![];
    let mut offset = 0;
    loop {
        let batch = fs.readdir(1, fh, offset).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.next_offset;
        listed.extend(batch.into_iter().map(|e| e.name));
    }
    fs.releasedir(fh);
    listed.retain(|n| n != "." && n != "..");
    assert_eq!(listed, names);

    stats.reset().await;
    for (i, n) in names.iter().enumerate() {
        let e = fs.lookup(1, n).await.unwrap();
        assert_eq!(e.attr.size, 100 * (i as u64 + 1));
        assert_eq!(e.attr.perm, 0o644);
        assert_eq!(fs.getattr(e.ino).await.unwrap().attr.size, e.attr.size);
    }
    let s = stats.requests().await;
    assert_eq!(s["total_requests"], 0, "stat after a listing: {s}");
}

/// Rewriting 10 bytes inside the third of four blocks stages one block
/// (Put Block) and commits one list; the other three blocks are referenced,
/// not uploaded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_of_one_block_stages_one_block() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let mut expected = pattern(4 * BLOCK as usize, 1);
    {
        let fs = mount(&client);
        put_file(&fs, "f", &expected).await;
    }
    let fs = mount(&client);
    let e = fs.lookup(1, "f").await.unwrap();
    stats.reset().await;
    let fh = fs.open(e.ino, true, false).await.unwrap();
    let at = 2 * BLOCK as usize + 5;
    fs.write(e.ino, fh, at as u64, b"0123456789").await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(s["requests"]["PutBlock"], 1, "{s}");
    assert_eq!(s["requests"]["PutBlockList"], 1, "{s}");
    assert!(s["requests"].get("PutBlob").is_none(), "{s}");

    expected[at..at + 10].copy_from_slice(b"0123456789");
    assert_eq!(read_all(&mount(&client), "f").await, expected);
}
