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
    let listed: Vec<String> = list_dir(&fs, 1).await.into_iter().map(|e| e.name).collect();
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

/// The operations the emulator counted, without the zeros.
fn ops(s: &serde_json::Value) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = s["requests"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .filter(|(_, n)| *n > 0)
        .collect();
    v.sort();
    v
}

fn want(pairs: &[(&str, u64)]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = pairs.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    v.sort();
    v
}

/// Every name in directory `ino`, paging through readdir as the kernel does.
async fn list_names(fs: &cpkfs_fs::Fs, ino: u64) -> Vec<String> {
    list_dir(fs, ino)
        .await
        .into_iter()
        .map(|e| e.name)
        .collect()
}

/// `touch` as the kernel drives it: LOOKUP of the new name (a miss), CREATE,
/// SETATTR of the times, FLUSH at close, then RELEASE.
async fn touch(fs: &cpkfs_fs::Fs, dir: u64, name: &str) {
    assert!(matches!(
        fs.lookup(dir, name).await,
        Err(cpkfs_fs::FsError::NotFound)
    ));
    let (e, fh) = fs
        .create(dir, name, libc::S_IFREG | 0o644, 0, 0)
        .await
        .unwrap();
    let now = std::time::SystemTime::now();
    let times = cpkfs_fs::SetAttr {
        mtime: Some(now),
        atime: Some(now),
        ..Default::default()
    };
    fs.setattr(e.ino, times).await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
}

/// A create must not list: in a directory made by this mount, whose empty
/// listing it holds, each `touch` of a new name costs exactly one Put Blob
/// (CPK) — the lookup miss is answered from memory, the close stores the
/// empty file once and RELEASE sends nothing. Then `rm -r` of it costs
/// one Delete Blob per file, one listing for readdir and one for rmdir.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_in_a_new_directory_make_one_put_blob_each() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let fs = mount(&client);
    let d = fs.mkdir(1, "d", 0o755, 0, 0).await.unwrap();
    const N: u64 = 40;
    stats.reset().await;
    for i in 0..N {
        touch(&fs, d.ino, &format!("f{i:03}")).await;
    }
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("PutBlob", N)]), "{s}");

    // They are stored: a fresh mount lists them, empty and under the key.
    let other = mount(&client);
    let od = other.lookup(1, "d").await.unwrap();
    let names = list_names(&other, od.ino).await;
    assert_eq!(names.len() as u64, N, "{names:?}");
    let e = other.lookup(od.ino, "f007").await.unwrap();
    assert_eq!((e.attr.size, e.attr.perm), (0, 0o644));

    // rm -r: readdir (one page), N unlinks, rmdir.
    stats.reset().await;
    let names = list_names(&fs, d.ino).await;
    for n in &names {
        fs.unlink(d.ino, n).await.unwrap();
    }
    fs.rmdir(1, "d").await.unwrap();
    let s = stats.requests().await;
    assert_eq!(
        ops(&s),
        want(&[("ListBlobs", 2), ("DeleteBlob", N + 1)]),
        "{s}"
    );
}

/// A lookup miss in a directory whose complete listing the mount holds
/// (fresh within attr_ttl) is answered from it: the create that follows
/// costs its Put Blob and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_in_a_listed_directory_makes_no_request() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    {
        let fs = mount(&client);
        put_file(&fs, "a", b"a").await;
        put_file(&fs, "b", b"b").await;
    }
    let fs = mount(&client);
    assert_eq!(list_names(&fs, 1).await, ["a", "b"]);
    stats.reset().await;
    let (e, fh) = {
        assert!(fs.lookup(1, "c").await.is_err());
        fs.create(1, "c", libc::S_IFREG | 0o644, 0, 0)
            .await
            .unwrap()
    };
    fs.write(e.ino, fh, 0, b"cc").await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("PutBlob", 1)]), "{s}");
}

/// Where the mount holds no listing, a lookup asks the service once: one
/// List Blobs tells both whether the blob exists and whether the name is a
/// directory. Only more siblings sorting between `name` and `name/` than
/// one small page holds (`f.0` … `f.39`) take a second listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_the_mount_cannot_answer_is_one_listing() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    {
        let fs = mount(&client);
        put_file(&fs, "a", b"a").await;
        put_file(&fs, "a.txt", b"t").await;
        let f = fs.mkdir(1, "f", 0o755, 0, 0).await.unwrap();
        put_file(&fs, "f.keep", b"k").await;
        for i in 0..40 {
            put_file(&fs, &format!("f.{i}"), b"x").await;
        }
        let (e, fh) = fs.create(f.ino, "in", 0o644, 0, 0).await.unwrap();
        fs.write(e.ino, fh, 0, b"in").await.unwrap();
        fs.release(e.ino, fh).await.unwrap();
        let g = fs.mkdir(1, "g", 0o755, 0, 0).await.unwrap();
        let (e, fh) = fs.create(g.ino, "in", 0o644, 0, 0).await.unwrap();
        fs.release(e.ino, fh).await.unwrap();
    }
    let fs = mount(&client);
    stats.reset().await;
    assert!(matches!(
        fs.lookup(1, "zzz").await,
        Err(cpkfs_fs::FsError::NotFound)
    ));
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("ListBlobs", 1)]), "miss: {s}");

    // A CPK file of ours: the listing, and a keyed HEAD for its metadata.
    stats.reset().await;
    let e = fs.lookup(1, "a").await.unwrap();
    assert_eq!(e.attr.size, 1);
    let s = stats.requests().await;
    assert_eq!(
        ops(&s),
        want(&[("ListBlobs", 1), ("GetBlobProperties", 1)]),
        "file: {s}"
    );

    // A directory (marker and blobs under it) with one sibling before `g/`.
    stats.reset().await;
    let e = fs.lookup(1, "g").await.unwrap();
    assert_eq!(e.attr.kind, cpkfs_fs::attr::Kind::Dir);
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("ListBlobs", 1)]), "directory: {s}");

    // 41 siblings between `f` and `f/`: a second listing settles it.
    stats.reset().await;
    let e = fs.lookup(1, "f").await.unwrap();
    assert_eq!(e.attr.kind, cpkfs_fs::attr::Kind::Dir);
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("ListBlobs", 2)]), "crowded directory: {s}");
    assert_eq!(list_names(&fs, e.ino).await, ["in"]);
}

/// `echo x > new`: the shell's first close (after dup2) flushes before the
/// write, and stores the empty file (close() returning 0 means it exists);
/// the last one stores the data; a flush or release with nothing new since
/// the last commit sends nothing. fsync of a new empty file stores it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_store_once_per_change() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let fs = mount(&client);
    assert!(fs.lookup(1, "new").await.is_err());
    stats.reset().await;
    let (e, fh) = fs
        .create(1, "new", libc::S_IFREG | 0o644, 0, 0)
        .await
        .unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(
        ops(&s),
        want(&[("PutBlob", 1)]),
        "close of the empty new file: {s}"
    );
    assert!(
        mount(&client).lookup(1, "new").await.is_ok(),
        "not stored at close"
    );
    stats.reset().await;
    fs.write(e.ino, fh, 0, b"x\n").await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("PutBlob", 1)]), "the data, once: {s}");
    assert_eq!(read_all(&mount(&client), "new").await, b"x\n");

    stats.reset().await;
    let (e, fh) = fs
        .create(1, "synced", libc::S_IFREG | 0o644, 0, 0)
        .await
        .unwrap();
    fs.fsync(e.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("PutBlob", 1)]), "fsync: {s}");
    fs.release(e.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("PutBlob", 1)]), "release after fsync: {s}");
    assert!(mount(&client).lookup(1, "synced").await.is_ok());
}

/// unlink of a file the mount knows is one Delete Blob; the name is then
/// absent without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_is_one_delete_blob() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let fs = mount(&client);
    put_file(&fs, "u", b"gone soon").await;
    stats.reset().await;
    fs.unlink(1, "u").await.unwrap();
    assert!(matches!(
        fs.lookup(1, "u").await,
        Err(cpkfs_fs::FsError::NotFound)
    ));
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("DeleteBlob", 1)]), "{s}");
    assert!(matches!(
        mount(&client).lookup(1, "u").await,
        Err(cpkfs_fs::FsError::NotFound)
    ));
}

/// When the listing of a small directory expires (attr_ttl), the next
/// lookup the mount cannot answer lists the directory again — one request —
/// and the lookups after it (existing names and misses alike) are answered
/// from that listing. What other clients changed meanwhile shows: a name
/// they removed is asked about on its own and is gone, one they added is
/// found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_listing_is_renewed_with_one_request() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let ttl = std::time::Duration::from_secs(2);
    let fs = mount_with_ttl(&client, ttl);
    let names: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    for n in &names {
        put_file(&fs, n, n.as_bytes()).await;
    }
    assert_eq!(list_names(&fs, 1).await.len(), names.len());
    // Another client adds one name and removes another.
    let other = mount(&client);
    put_file(&other, "added", b"new").await;
    other.unlink(1, "a3").await.unwrap();
    // Wait for the listing to expire (a wait, not a measurement).
    tokio::time::sleep(ttl + std::time::Duration::from_millis(200)).await;

    stats.reset().await;
    for n in names.iter().filter(|n| *n != "a3") {
        assert_eq!(fs.lookup(1, n).await.unwrap().attr.size, n.len() as u64);
    }
    for i in 0..10 {
        assert!(matches!(
            fs.lookup(1, &format!("missing{i}")).await,
            Err(cpkfs_fs::FsError::NotFound)
        ));
    }
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("ListBlobs", 1)]), "{s}");

    assert!(matches!(
        fs.lookup(1, "a3").await,
        Err(cpkfs_fs::FsError::NotFound)
    ));
    // Found in the new listing, its metadata hidden (CPK): one keyed HEAD.
    assert_eq!(fs.lookup(1, "added").await.unwrap().attr.size, 3);
    let s = stats.requests().await;
    assert_eq!(
        ops(&s),
        want(&[("ListBlobs", 2), ("GetBlobProperties", 1)]),
        "{s}"
    );
}

/// A big directory whose listing expired, as when `find` or `ls -l` of
/// 100,000 CPK files takes longer than `attr_ttl`: stat of every entry asks
/// about names one by one only until that has cost
/// `RELIST_AFTER_LOOKUPS_PER_PAGE` requests per page of its listing, then
/// lists the directory again (no keyed HEAD: each name's inode keeps the
/// metadata of its ETag) and answers the rest from memory. Before, every entry
/// cost a request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_in_a_big_directory_whose_listing_expired_list_it_again() {
    const FILES: u64 = 1000;
    const PAGE: u32 = 50;
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    {
        let fs = mount(&client);
        for i in 0..FILES {
            put_file(&fs, &format!("f{i:04}"), &pattern(i as usize % 7, 1)).await;
        }
    }
    let ttl = std::time::Duration::from_secs(1);
    let fs = mount_with_pages(&client, ttl, PAGE);
    let entries = list_dir(&fs, 1).await;
    assert_eq!(entries.len() as u64, FILES);
    // Wait for the listing to expire (a wait, not a measurement).
    tokio::time::sleep(ttl + std::time::Duration::from_millis(200)).await;

    stats.reset().await;
    for e in &entries {
        let i: u64 = e.name[1..].parse().unwrap();
        assert_eq!(
            fs.getattr(e.ino).await.unwrap().attr.size,
            i % 7,
            "{}",
            e.name
        );
    }
    let pages = FILES / PAGE as u64;
    let one_by_one = cpkfs_fs::inode::RELIST_AFTER_LOOKUPS_PER_PAGE as u64 * pages;
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("ListBlobs", one_by_one + pages)]), "{s}");
    assert!(one_by_one + pages < FILES / 2);
}

/// A sequential read larger than the block cache does not push out what
/// others still need: each block it has read to the end is the first to go,
/// so a small file read before it is still cached after it (a second read:
/// 0 GetBlob), and the stream fetches each of its blocks once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_larger_than_the_cache_keeps_other_files_cached() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    let small = pattern(BLOCK as usize, 3);
    let big = pattern(8 * BLOCK as usize, 4);
    {
        let fs = mount(&client);
        put_file(&fs, "small", &small).await;
        put_file(&fs, "big", &big).await;
    }
    let fs = mount_with_cache(&client, 4);
    assert_eq!(read_all(&fs, "small").await, small);
    // The stream, one block per read as a sequential reader asks for it.
    let e = fs.lookup(1, "big").await.unwrap();
    stats.reset().await;
    let fh = fs.open(e.ino, false, false).await.unwrap();
    let mut got = vec![];
    for i in 0..8 {
        let b = fs.read(e.ino, fh, i * BLOCK, BLOCK as u32).await.unwrap();
        got.extend_from_slice(&b);
    }
    fs.release(e.ino, fh).await.unwrap();
    assert_eq!(got, big);
    let s = stats.requests().await;
    assert_eq!(ops(&s), want(&[("GetBlob", 8)]), "{s}");

    stats.reset().await;
    assert_eq!(read_all(&fs, "small").await, small);
    let s = stats.requests().await;
    assert_eq!(
        s["total_requests"], 0,
        "the small file is still cached: {s}"
    );
}

/// The synchronous answers the FUSE adapter gives without a task
/// (`*_cached`, `*_now`): each either answers from memory with 0 requests,
/// or says it cannot (`None`) exactly where a request or a wait is due — a
/// new file's close must store it, so its flush is not answered from memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_answers_make_no_requests_and_defer_what_needs_the_service() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    {
        let fs = mount(&client);
        put_file(&fs, "old", b"old bytes").await;
    }
    let fs = mount(&client);
    stats.reset().await;

    // Nothing is known of the root's entries yet: only the service can say.
    assert!(fs.lookup_cached(1, "old").is_none());
    assert!(fs.lookup_cached(1, "new").is_none());
    assert!(matches!(
        fs.lookup_cached(1, "a\\b"),
        Some(Err(cpkfs_fs::FsError::InvalidName(..)))
    ));
    assert_eq!(stats.requests().await["total_requests"], 0);

    // Once looked up, the entry, its attributes and a read-only open are
    // answered from memory; so are that handle's close and release.
    let old = fs.lookup(1, "old").await.unwrap();
    stats.reset().await;
    let e = fs.lookup_cached(1, "old").unwrap().unwrap();
    assert_eq!((e.ino, e.attr.size), (old.ino, 9));
    assert_eq!(fs.getattr_cached(old.ino).unwrap().unwrap().attr.size, 9);
    assert!(
        fs.open_cached(old.ino, true).is_none(),
        "writable opens go async"
    );
    let rfh = fs.open_cached(old.ino, false).unwrap().unwrap();
    assert!(fs.flush_cached(old.ino, rfh).unwrap().is_ok());
    assert!(fs.release_now(old.ino, rfh).unwrap().is_ok());
    assert!(matches!(
        fs.release_now(old.ino, rfh),
        Some(Err(cpkfs_fs::FsError::BadHandle))
    ));

    // A create is done in memory; its close is not (it stores the file),
    // and once stored, a second close and the release are.
    let (n, fh) = fs.create_now(1, "new", 0o600, 0, 0).unwrap().unwrap();
    assert_eq!(stats.requests().await["total_requests"], 0);
    assert_eq!(fs.lookup_cached(1, "new").unwrap().unwrap().ino, n.ino);
    assert_eq!(fs.getattr_cached(n.ino).unwrap().unwrap().attr.perm, 0o600);
    // touch's futimens of the file it created goes with the file's commit.
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    let set = cpkfs_fs::SetAttr {
        mtime: Some(t),
        atime: Some(t),
        ..Default::default()
    };
    assert_eq!(fs.setattr_now(n.ino, set).unwrap().unwrap().attr.mtime, t);
    assert_eq!(stats.requests().await["total_requests"], 0);
    assert!(
        fs.flush_cached(n.ino, fh).is_none(),
        "a new file's close stores it"
    );
    fs.flush(n.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(ops(&s), vec![("PutBlob".to_string(), 1)], "{s}");
    assert!(fs.flush_cached(n.ino, fh).unwrap().is_ok());
    assert!(fs.release_now(n.ino, fh).unwrap().is_ok());
    // Stored: a chmod now must reach the service, so it is not done here.
    let chmod = cpkfs_fs::SetAttr {
        mode: Some(0o640),
        ..Default::default()
    };
    assert!(fs.setattr_now(n.ino, chmod).is_none());
    assert_eq!(
        mount(&client).lookup(1, "new").await.unwrap().attr.mtime,
        t,
        "the time set before the close was stored with the file"
    );
    stats.reset().await;
    // Dirty again: the release must commit, so it is not done in memory.
    let fh = fs.open(n.ino, true, false).await.unwrap();
    fs.write(n.ino, fh, 0, b"x").await.unwrap();
    assert!(fs.release_now(n.ino, fh).is_none());
    fs.release(n.ino, fh).await.unwrap();
    let s = stats.requests().await;
    assert_eq!(ops(&s), vec![("PutBlob".to_string(), 1)], "{s}");
    assert_eq!(read_all(&fs, "new").await, b"x");
}

/// A name whose blob still waits for the descriptors of an unlinked file is
/// not created in memory: the async create deletes that blob first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_of_a_name_unlinked_while_open_takes_the_async_path() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let fs = mount(&client);
    put_file(&fs, "f", b"first").await;
    let e = fs.lookup(1, "f").await.unwrap();
    let fh = fs.open(e.ino, false, false).await.unwrap();
    fs.unlink(1, "f").await.unwrap();
    assert!(fs.create_now(1, "f", 0o644, 0, 0).is_none());
    let (n, wfh) = fs.create(1, "f", 0o644, 0, 0).await.unwrap();
    fs.write(n.ino, wfh, 0, b"second").await.unwrap();
    fs.flush(n.ino, wfh).await.unwrap();
    fs.release(n.ino, wfh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
    assert_eq!(read_all(&mount(&client), "f").await, b"second");
}

/// With `attrs_in_tags`, a CPK file's mode, owner and times travel in its
/// blob index tags, so a fresh mount's first listing learns them with no
/// keyed HEAD — the same attributes a mount without tags learns with one
/// HEAD per file. chmod keeps the tags in step; a file stored without tags
/// (another mount, another tool) still costs its HEAD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_in_tags_make_a_first_listing_need_no_head() {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    const N: usize = 12;
    {
        let fs = mount_attrs_in_tags(&client, true);
        for i in 0..N {
            let (e, fh) = fs
                .create(1, &format!("f{i:02}"), 0o600 + i as u32, 1000 + i as u32, 7)
                .await
                .unwrap();
            fs.write(e.ino, fh, 0, &pattern(10 * i, 1)).await.unwrap();
            fs.release(e.ino, fh).await.unwrap();
        }
        fs.symlink(1, "link", "f00", 5, 6).await.unwrap();
    }
    let attrs = |v: Vec<cpkfs_fs::dir::DirEntry>| -> Vec<(String, u16, u32, u32, u64, std::time::SystemTime)> {
        v.into_iter()
            .map(|e| (e.name, e.attr.perm, e.attr.uid, e.attr.gid, e.attr.size, e.attr.mtime))
            .collect()
    };

    // The reference: a mount that does not read tags asks with keyed HEADs.
    stats.reset().await;
    let heads = attrs(list_dir(&mount_attrs_in_tags(&client, false), 1).await);
    let s = stats.requests().await;
    assert_eq!(s["requests"]["GetBlobProperties"], N as u64 + 1, "{s}");
    assert_eq!(heads.len(), N + 1);
    assert_eq!((heads[0].1, heads[0].2, heads[0].3), (0o600, 1000, 7));
    assert_eq!((heads[5].1, heads[5].2, heads[5].4), (0o605, 1005, 50));
    assert_eq!((&*heads[N].0, heads[N].1, heads[N].2), ("link", 0o777, 5));

    stats.reset().await;
    let fs = mount_attrs_in_tags(&client, true);
    let tagged = attrs(list_dir(&fs, 1).await);
    let s = stats.requests().await;
    assert_eq!(ops(&s), vec![("ListBlobs".to_string(), 1)], "{s}");
    assert_eq!(tagged, heads, "tags and metadata describe the same files");

    // chmod of a file this mount did not write: a HEAD (to keep metadata
    // other tools set, as without tags), the metadata, then the tags.
    let e = fs.lookup(1, "f03").await.unwrap();
    stats.reset().await;
    fs.setattr(
        e.ino,
        cpkfs_fs::SetAttr {
            mode: Some(0o751),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let s = stats.requests().await;
    assert_eq!(
        ops(&s),
        vec![
            ("GetBlobProperties".to_string(), 1),
            ("SetBlobMetadata".to_string(), 1),
            ("SetBlobTags".to_string(), 1)
        ],
        "{s}"
    );
    // A rename copies on the server and gives the copy the tags.
    fs.rename(1, "f01", 1, "g01", false).await.unwrap();
    // A file stored by a mount without tags.
    put_file(&mount_attrs_in_tags(&client, false), "untagged", b"x").await;

    stats.reset().await;
    let again = list_dir(&mount_attrs_in_tags(&client, true), 1).await;
    let s = stats.requests().await;
    assert_eq!(
        ops(&s),
        vec![
            ("GetBlobProperties".to_string(), 1),
            ("ListBlobs".to_string(), 1)
        ],
        "only the untagged file needs a HEAD: {s}"
    );
    let f03 = again.iter().find(|e| e.name == "f03").unwrap();
    assert_eq!(f03.attr.perm, 0o751);
    let g01 = again.iter().find(|e| e.name == "g01").unwrap();
    assert_eq!(
        (g01.attr.perm, g01.attr.uid, g01.attr.size),
        (0o601, 1001, 10)
    );
    let untagged = again.iter().find(|e| e.name == "untagged").unwrap();
    assert_eq!(untagged.attr.perm, 0o644);
}
