//! The encrypted disk tier (`disk_cache_dir`), driven through `Fs` without a
//! kernel: data larger than the memory cache is read a second time with 0
//! GetBlob (the emulator's counters), no cache file holds a plaintext block,
//! tampered or misplaced blocks are detected and fetched again, a changed
//! ETag is never served stale, disk faults only disable the tier, and the
//! directory of a killed mount is removed by the next one.

mod common;
use common::*;
use cpkfs_blob::{BlobClient, CustomerKey};
use cpkfs_fs::{Fs, FsConfig, KeyRing};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// 64 blocks: 16 times the memory cache below.
const BLOCKS: usize = 64;
const MEMORY: u64 = 4 * BLOCK;

/// A mount whose memory cache holds 4 blocks, over a 1 MiB disk tier in `dir`.
fn mount_with_disk(client: &BlobClient, dir: &Path, attr_ttl: Duration) -> Arc<Fs> {
    Fs::new(
        client.clone(),
        FsConfig {
            block_size: BLOCK,
            cache_size: MEMORY,
            disk_cache_dir: Some(dir.to_path_buf()),
            disk_cache_size: 1 << 20,
            attr_ttl,
            keyring: KeyRing::new(vec![Arc::new(CustomerKey::from_raw([9; 32]))]),
            ..FsConfig::default()
        },
    )
}

/// Bytes in which every 32-byte window is unique (a xorshift stream), so a
/// block found anywhere would be found by its windows.
fn unique_data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Read `name` the way the kernel does: 16 KiB requests in order.
async fn read_chunked(fs: &Fs, name: &str) -> Vec<u8> {
    let e = fs.lookup(1, name).await.unwrap();
    let fh = fs.open(e.ino, false, false).await.unwrap();
    let mut out = Vec::new();
    loop {
        let b = fs
            .read(e.ino, fh, out.len() as u64, 16 * 1024)
            .await
            .unwrap();
        if b.is_empty() {
            break;
        }
        out.extend_from_slice(&b);
    }
    fs.release(e.ino, fh).await.unwrap();
    out
}

async fn settle(fs: &Fs) {
    fs.cache().disk().unwrap().settle().await;
}

fn get_blobs(s: &serde_json::Value) -> u64 {
    s["requests"]["GetBlob"].as_u64().unwrap_or(0)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// This mount's block files (everything in its directory but the lock).
fn block_files(fs: &Fs) -> Vec<PathBuf> {
    files_under(fs.cache().disk().unwrap().dir())
        .into_iter()
        .filter(|p| p.file_name().unwrap() != "lock")
        .collect()
}

async fn setup(data: &[u8]) -> (cpkfs_emulator::EmulatorHandle, Stats, BlobClient) {
    let emu = emulator().await;
    let stats = Stats::new(&emu);
    let client = client(&emu).await;
    put_file(&mount(&client), "dataset.bin", data).await;
    (emu, stats, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_read_of_data_larger_than_memory_makes_no_get_and_disk_holds_no_plaintext() {
    let data = unique_data(BLOCKS * BLOCK as usize, 1);
    let (_emu, stats, client) = setup(&data).await;
    let cache = tempfile::tempdir().unwrap();
    let fs = mount_with_disk(&client, cache.path(), Duration::from_secs(600));

    stats.reset().await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    let first = stats.requests().await;
    assert_eq!(get_blobs(&first), BLOCKS as u64, "first pass: {first}");
    settle(&fs).await;
    let after_first = fs.cache().disk_stats().unwrap();
    assert!(after_first.enabled);
    // Every block left memory for disk, but for the last 4 (a block read
    // back from disk may be in both).
    assert!(after_first.blocks >= (BLOCKS - 4) as u64, "{after_first:?}");

    stats.reset().await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    let second = stats.requests().await;
    assert_eq!(get_blobs(&second), 0, "second pass: {second}");
    settle(&fs).await;
    let d = fs.cache().disk_stats().unwrap();
    assert!(d.hits >= (BLOCKS - 4) as u64, "{d:?}");
    assert_eq!((d.errors, d.auth_failures, d.skipped), (0, 0, 0), "{d:?}");
    // `cpkfs stats` shows the same counters.
    let shown = fs
        .stats_snapshot()
        .disk_cache
        .expect("the disk tier registered");
    assert_eq!(
        (shown.hits, shown.misses, shown.bytes, shown.capacity),
        (d.hits, d.misses, Some(d.bytes), Some(1 << 20))
    );

    // "grep the cache for known plaintext": no 32-byte window of any block
    // (at its start, middle and end) in any file under the cache directory,
    // and the blob's name in no file name or content.
    let files = files_under(cache.path());
    assert!(files.len() > BLOCKS / 2, "{files:?}");
    let needles: Vec<&[u8]> = data
        .chunks(BLOCK as usize)
        .flat_map(|b| [&b[..32], &b[2000..2032], &b[b.len() - 32..]])
        .collect();
    for f in &files {
        let content = std::fs::read(f).unwrap();
        for n in &needles {
            assert!(
                !content.windows(32).any(|w| w == *n),
                "{} holds plaintext",
                f.display()
            );
        }
        assert!(!content.windows(7).any(|w| w == b"dataset"));
        assert!(!f.to_string_lossy().contains("dataset"));
    }
}

/// Reads out of order (as several FUSE threads deliver them) take the
/// random-read path; with a disk tier they fetch whole blocks, so the
/// second pass still makes no GetBlob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_reads_are_cached_too() {
    let data = unique_data(BLOCKS * BLOCK as usize, 9);
    let (_emu, stats, client) = setup(&data).await;
    let cache = tempfile::tempdir().unwrap();
    let fs = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    let e = fs.lookup(1, "dataset.bin").await.unwrap();
    let chunk = 1024u64;
    for pass in 0..2 {
        stats.reset().await;
        let fh = fs.open(e.ino, false, false).await.unwrap();
        // Backwards, 1 KiB at a time: never sequential.
        for i in (0..data.len() as u64 / chunk).rev() {
            let b = fs.read(e.ino, fh, i * chunk, chunk as u32).await.unwrap();
            let at = (i * chunk) as usize;
            assert_eq!(&b[..], &data[at..at + chunk as usize]);
        }
        fs.release(e.ino, fh).await.unwrap();
        let s = stats.requests().await;
        let expected = if pass == 0 { BLOCKS as u64 } else { 0 };
        assert_eq!(get_blobs(&s), expected, "pass {pass}: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_block_is_detected_and_fetched_again() {
    let data = unique_data(BLOCKS * BLOCK as usize, 2);
    let (_emu, stats, client) = setup(&data).await;
    let cache = tempfile::tempdir().unwrap();
    let fs = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    settle(&fs).await;

    let files = block_files(&fs);
    let mut sealed = std::fs::read(&files[0]).unwrap();
    let mid = sealed.len() / 2;
    sealed[mid] ^= 0x40;
    std::fs::write(&files[0], &sealed).unwrap();

    stats.reset().await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    let s = stats.requests().await;
    assert_eq!(get_blobs(&s), 1, "only the tampered block is fetched: {s}");
    let d = fs.cache().disk_stats().unwrap();
    assert_eq!(
        (d.auth_failures, d.errors, d.enabled),
        (1, 0, true),
        "{d:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_moved_to_another_blocks_file_is_detected() {
    let data = unique_data(BLOCKS * BLOCK as usize, 3);
    let (_emu, stats, client) = setup(&data).await;
    let cache = tempfile::tempdir().unwrap();
    let fs = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    settle(&fs).await;

    // Swap two valid sealed blocks: each is intact, but in the wrong place.
    let files = block_files(&fs);
    let (a, b) = (
        std::fs::read(&files[0]).unwrap(),
        std::fs::read(&files[1]).unwrap(),
    );
    std::fs::write(&files[0], &b).unwrap();
    std::fs::write(&files[1], &a).unwrap();

    stats.reset().await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    let s = stats.requests().await;
    assert_eq!(get_blobs(&s), 2, "{s}");
    assert_eq!(fs.cache().disk_stats().unwrap().auth_failures, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etag_change_is_never_served_from_disk() {
    let v1 = unique_data(BLOCKS * BLOCK as usize, 4);
    let v2 = unique_data(BLOCKS * BLOCK as usize, 5);
    let (_emu, stats, client) = setup(&v1).await;
    let cache = tempfile::tempdir().unwrap();
    // Attributes not cached: the reader sees the other writer at once.
    let fs = mount_with_disk(&client, cache.path(), Duration::ZERO);
    assert_eq!(read_chunked(&fs, "dataset.bin").await, v1);
    settle(&fs).await;
    assert!(fs.cache().disk_stats().unwrap().blocks >= (BLOCKS - 4) as u64);

    // Another client replaces the blob (same size, same key): a new ETag.
    let other = mount(&client);
    let e = other.lookup(1, "dataset.bin").await.unwrap();
    let fh = other.open(e.ino, true, true).await.unwrap();
    other.write(e.ino, fh, 0, &v2).await.unwrap();
    other.flush(e.ino, fh).await.unwrap();
    other.release(e.ino, fh).await.unwrap();

    stats.reset().await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, v2);
    let s = stats.requests().await;
    assert_eq!(
        get_blobs(&s),
        BLOCKS as u64,
        "every block of v2 came from the service, none of v1 from disk: {s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_removed_mid_run_disables_the_tier_and_reads_go_on() {
    let data = unique_data(BLOCKS * BLOCK as usize, 6);
    let (_emu, stats, client) = setup(&data).await;
    let cache = tempfile::tempdir().unwrap();
    let fs = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    settle(&fs).await;

    std::fs::remove_dir_all(cache.path()).unwrap();
    stats.reset().await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    settle(&fs).await;
    let d = fs.cache().disk_stats().unwrap();
    assert!(!d.enabled, "{d:?}");
    // Writes or reads in flight when it failed may each count an error; the
    // first turned the tier off (one log line) and emptied it.
    assert!(d.errors >= 1, "{d:?}");
    assert_eq!((d.blocks, d.bytes), (0, 0), "{d:?}");
    let s = stats.requests().await;
    assert!(
        get_blobs(&s) >= BLOCKS as u64,
        "reads went to the service: {s}"
    );
}

/// A tmpfs of 64 KiB (room for about 8 sealed blocks) fills up during the
/// first pass: ENOSPC disables the tier, the blocks already written are
/// deleted (the space goes back), and every read still returns the data.
/// Mounting the tmpfs needs root, as the mount tests do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_disables_the_tier_and_reads_go_on() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let data = unique_data(BLOCKS * BLOCK as usize, 7);
    let (_emu, _stats, client) = setup(&data).await;
    let cache = tempfile::tempdir().unwrap();
    let tmpfs = TinyTmpfs::mount(cache.path(), "size=64k");
    let fs = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    settle(&fs).await;
    assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
    settle(&fs).await;
    let d = fs.cache().disk_stats().unwrap();
    assert!(!d.enabled, "{d:?}");
    assert!(d.errors >= 1, "{d:?}");
    assert_eq!(d.blocks, 0, "{d:?}");
    assert!(
        d.bytes_written > 0,
        "it wrote until the disk was full: {d:?}"
    );
    assert!(
        block_files(&fs).is_empty(),
        "the written blocks were deleted"
    );
    drop(fs);
    drop(tmpfs);
}

/// A tmpfs mounted on a directory for the test's life.
struct TinyTmpfs(std::ffi::CString);

impl TinyTmpfs {
    fn mount(at: &Path, opts: &str) -> TinyTmpfs {
        let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).unwrap();
        let opts = std::ffi::CString::new(opts).unwrap();
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        TinyTmpfs(target)
    }
}

impl Drop for TinyTmpfs {
    fn drop(&mut self) {
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
    }
}

const CHILD_ENV: &str = "CPKFS_TEST_DISK_CACHE_CHILD";

/// A mount in another process, killed with SIGKILL while its disk tier holds
/// blocks: its directory stays (nothing ran at exit) and is unreadable (its
/// key died); the next mount on the same `disk_cache_dir` removes it, and
/// leaves a live mount's directory and files that are not cpkfs's alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_mounts_cache_is_removed_at_the_next_mount() {
    let cache = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_mount_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, cache.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut dead_dir = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // libtest prints "test NAME ... " on the same line first.
        if let Some((_, d)) = line.split_once("disk cache ready in ") {
            dead_dir = Some(PathBuf::from(d));
            break;
        }
    }
    let dead_dir = dead_dir.expect("the child mount reported its cache directory");
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(
        files_under(&dead_dir).len() > 1,
        "the killed mount left its blocks"
    );

    let emu = emulator().await;
    let client = client(&emu).await;
    let live = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    let live_dir = live.cache().disk().unwrap().dir().to_path_buf();
    assert!(
        !dead_dir.exists(),
        "the first mount after the kill removed it"
    );
    std::fs::write(cache.path().join("README.not-cpkfs"), b"keep me").unwrap();

    let next = mount_with_disk(&client, cache.path(), Duration::from_secs(600));
    assert!(live_dir.is_dir(), "a running mount's directory is kept");
    assert!(cache.path().join("README.not-cpkfs").exists());
    let next_dir = next.cache().disk().unwrap().dir().to_path_buf();
    drop(next);
    drop(live);
    assert!(
        !next_dir.exists() && !live_dir.exists(),
        "removed at unmount"
    );
}

/// The killed mount of the test above, run in a child process.
#[test]
#[ignore = "helper: run in a child process by a_killed_mounts_cache_is_removed_at_the_next_mount"]
fn killed_mount_child() {
    let root = PathBuf::from(std::env::var_os(CHILD_ENV).expect("run by the parent test"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let data = unique_data(BLOCKS * BLOCK as usize, 8);
        let (_emu, _stats, client) = setup(&data).await;
        let fs = mount_with_disk(&client, &root, Duration::from_secs(600));
        assert_eq!(read_chunked(&fs, "dataset.bin").await, data);
        settle(&fs).await;
        println!(
            "disk cache ready in {}",
            fs.cache().disk().unwrap().dir().display()
        );
        // Killed here by the parent.
        tokio::time::sleep(Duration::from_secs(600)).await;
    });
}
