//! Many small files through the kernel, counted by the emulator
//! (`/__admin/stats`): a create does not list, `touch` and `echo x > f`
//! store each file with one Put Blob, `cp -r` of small files one Put Blob per
//! file, and `rm -r` one Delete Blob per file. The fs-core side, without a
//! kernel, is `crates/fs/tests/requests.rs`; the speed is measured by
//! `scripts/bench-mount` (docs/PERFORMANCE.md).
//!
//! The attribute TTL is 10 minutes here so the counts do not depend on how
//! fast this machine runs: with the default 3 s a listing held by the mount
//! expires sooner, and a miss after that asks the service again (one List
//! Blobs), as docs/SEMANTICS.md says.

mod common;
#[path = "common/mount.rs"]
mod mount;

use mount::{Mount, MountOptions};
use std::time::{Duration, Instant};

/// The operations the emulator counted since the last reset, zeros left out.
fn ops(m: &Mount) -> Vec<(String, u64)> {
    let s = m.stats();
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

/// The kernel sends RELEASE after close() returned, and RELEASE stores a
/// file that was created and never written (`touch`): wait until `n` Put
/// Blobs arrived. A wait, not a timed assertion: the deadline only stops a
/// hung test.
fn wait_for_put_blobs(m: &Mount, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while m.op_count("PutBlob") < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} Put Blobs arrived: {:?}\n{}",
            m.op_count("PutBlob"),
            ops(m),
            m.log_tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn small_files_cost_one_request_each() {
    const N: u64 = 300;
    let mut m = Mount::new(MountOptions {
        attr_ttl: "600".into(),
        ..Default::default()
    });
    m.sh("mkdir $M/d", 30);

    // `seq N | xargs touch` in a directory made by this mount: it holds the
    // directory's (empty) listing, so no lookup lists.
    m.reset_stats();
    m.sh(&format!("cd $M/d && seq {N} | xargs touch"), 300);
    wait_for_put_blobs(&m, N);
    assert_eq!(ops(&m), want(&[("PutBlob", N)]), "xargs touch");

    // `echo x > f`: bash flushes once before writing (open, dup2, close);
    // that flush stores nothing.
    m.reset_stats();
    m.sh("cd $M/d && echo x > echoed", 30);
    assert_eq!(ops(&m), want(&[("PutBlob", 1)]), "echo x > f");

    // `cp -r` of N 4-KiB files into a new directory: the lookup of the new
    // directory's name lists once, the marker and each file are one Put Blob.
    m.sh(
        &format!(
            "mkdir $S/src && cd $S/src && for i in $(seq {N}); do head -c 4096 /dev/urandom > f$i; done"
        ),
        120,
    );
    m.reset_stats();
    m.sh("cp -r $S/src $M/copy", 300);
    assert_eq!(
        ops(&m),
        want(&[("ListBlobs", 1), ("PutBlob", N + 1)]),
        "cp -r"
    );

    // `rm -r`: one Delete Blob per file, and rmdir's emptiness check and
    // marker delete. rm (fts) opens and reads the directory twice before it
    // unlinks: two listing pages.
    m.reset_stats();
    m.sh("rm -r $M/d", 300);
    assert_eq!(
        ops(&m),
        want(&[("ListBlobs", 3), ("DeleteBlob", N + 2)]),
        "rm -r"
    );

    // What was stored is what was written, through a fresh mount.
    m.remount();
    let out = m.sh(
        "ls $M && ls $M/copy | wc -l && diff -r $S/src $M/copy && echo same",
        120,
    );
    assert_eq!(out, format!("copy\n{N}\nsame\n"));
}
