//! Real mounts over the bundled emulator (HTTPS, customer-provided key):
//! the tools users run (cp, rsync, tar, shells), checked through the mount
//! and behind its back over REST and the emulator's request counters.

mod common;
#[path = "common/mount.rs"]
mod mount;

use common::pattern;
use cpkfs::blob::{BlockRef, CommitOptions, Conditions, CustomerKey};
use mount::{sha256_file, Mount};
use std::sync::Arc;
use std::time::Instant;

const MIB: u64 = 1024 * 1024;

/// Read a whole blob over REST (not through the mount).
fn rest_read(m: &Mount, name: &str, key: Option<Arc<CustomerKey>>) -> (Vec<u8>, Option<String>) {
    let c = m.client(key.clone());
    m.block_on(async {
        let mut dl = c
            .get_blob(name, None, key.as_deref(), &Conditions::default())
            .await
            .unwrap_or_else(|e| panic!("GET {name}: {e}"));
        let mut out = Vec::new();
        while let Some(chunk) = dl.next_chunk().await.unwrap() {
            out.extend_from_slice(&chunk);
        }
        (out, dl.properties.cpk_sha256.clone())
    })
}

/// Test 1: cp of 0 B, 1 B, block−1, block, block+1 and 100 MiB files; after
/// close the blob read over REST is byte-identical and encrypted with the
/// mount's key.
#[test]
fn cp_sizes_round_trip_over_rest() {
    let t0 = Instant::now();
    let m = Mount::emulator(); // --block-size 1M
    let key = m.key.clone().unwrap();
    let sizes = [0, 1, MIB - 1, MIB, MIB + 1, 100 * MIB];
    for (i, &n) in sizes.iter().enumerate() {
        let data = pattern(n as usize, i as u64 + 1);
        std::fs::write(m.scratch.join(format!("f{n}")), &data).unwrap();
    }
    m.sh("mkdir $M/cp && for f in f*; do cp $f $M/cp/$f; done", 300);
    for (i, &n) in sizes.iter().enumerate() {
        let name = format!("cp/f{n}");
        let want = pattern(n as usize, i as u64 + 1);
        let (got, hash) = rest_read(&m, &name, Some(key.clone()));
        assert_eq!(got.len(), want.len(), "{name}: size over REST");
        assert!(got == want, "{name}: bytes over REST differ");
        assert_eq!(hash.as_deref(), Some(key.sha256()), "{name}: key hash");
        // The blob really is encrypted: a read without the key is refused.
        let c = m.client(None);
        let plain = m.block_on(c.get_blob_properties(&name, None, &Conditions::default()));
        assert!(plain.is_err(), "{name}: readable without the key");
    }
    // And through the mount, from a fresh open.
    m.sh("for f in f*; do cmp $f $M/cp/$f; done", 120);
    let ls = m.sh("stat -c '%n %s' $M/cp/f* | sort", 30);
    for n in sizes {
        assert!(
            ls.contains(&format!("/cp/f{n} {n}\n")),
            "size of f{n} in: {ls}"
        );
    }
    eprintln!("cp_sizes_round_trip_over_rest: {:?}", t0.elapsed());
}

/// A tree of `n` files in nested directories, with various modes and sizes,
/// symlinks (to files, to directories, dangling) and an empty directory.
fn make_tree(root: &std::path::Path, n: usize) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let modes = [0o644, 0o600, 0o755, 0o640, 0o700, 0o444];
    for i in 0..n {
        let dir = match i % 5 {
            0 => root.to_path_buf(),
            1 => root.join(format!("d{}", i % 3)),
            2 => root.join(format!("d{}/e{}", i % 3, i % 4)),
            3 => root.join(format!("d{}/e{}/f{}", i % 3, i % 4, i % 2)),
            _ => root.join("deep/a/b/c/d/e"),
        };
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(format!("file{i:04}.dat"));
        let size = (i * 7919) % 40_000;
        std::fs::write(&p, pattern(size, i as u64)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(modes[i % modes.len()]))
            .unwrap();
    }
    std::fs::create_dir_all(root.join("empty/dir")).unwrap();
    std::fs::set_permissions(root.join("d1"), std::fs::Permissions::from_mode(0o750)).unwrap();
    for i in 0..10 {
        symlink(
            format!("file{:04}.dat", i * 5),
            root.join(format!("link{i}")),
        )
        .unwrap();
    }
    symlink("d0/e0", root.join("dirlink")).unwrap();
    symlink("../../file0000.dat", root.join("d0/e0/uplink")).unwrap();
    symlink("does/not/exist", root.join("dangling")).unwrap();
}

/// `find` listing of a tree: type, mode, size, link target, mtime (seconds).
/// (Directory sizes are left out: they mean nothing on either side.)
const LISTING: &str = r#"find . -printf '%y %m %s %l %TY-%Tm-%Td %TH:%TM:%.2TS %p\n' | grep -v ' \.$' | awk '$1=="d"{$3="-"}1' | sort -k8"#;

/// Test 2: rsync -a of a tree of a few hundred files; a second rsync -ai
/// has nothing to transfer; diff -r is clean; modes, symlinks and times kept.
#[test]
fn rsync_tree_is_stable() {
    let t0 = Instant::now();
    let mut m = Mount::emulator();
    make_tree(&m.scratch.join("src"), 300);
    m.sh("rsync -a $S/src/ $M/dst/", 300);
    let again = m.sh("rsync -ai $S/src/ $M/dst/", 120);
    assert!(
        again.trim().is_empty(),
        "second rsync wants to transfer:\n{again}"
    );
    m.sh("diff -r --no-dereference $S/src $M/dst", 120);
    let local = m.sh(&format!("cd $S/src && {LISTING}"), 60);
    let mounted = m.sh(&format!("cd $M/dst && {LISTING}"), 60);
    assert_eq!(local, mounted, "modes/sizes/links/mtimes differ");
    // All of it is in the service, not only in the mount's memory.
    m.remount();
    let again = m.sh("rsync -ai $S/src/ $M/dst/", 120);
    assert!(
        again.trim().is_empty(),
        "after remount, rsync wants to transfer:\n{again}"
    );
    let mounted = m.sh(&format!("cd $M/dst && {LISTING}"), 60);
    assert_eq!(
        local, mounted,
        "after remount: modes/sizes/links/mtimes differ"
    );
    m.sh("diff -r --no-dereference $S/src $M/dst", 120);
    eprintln!("rsync_tree_is_stable: {:?}", t0.elapsed());
}

/// The same shell steps on a local directory and in the mount must leave
/// identical trees.
const SHELL_STEPS: &str = r#"
set -euo pipefail
D=$1
mkdir -p $D/p/q/r/s
test -d $D/p/q/r/s
echo one > $D/p/q/r/s/f
mkdir -p $D/p/q/r/s            # exists: no error
# appends, small and across block boundaries (block size 1M)
echo hello > $D/app
echo world >> $D/app
printf 'x%.0s' $(seq 1 10) >> $D/app
head -c 1500000 $S/blob > $D/bigapp
head -c 1200000 $S/blob2 >> $D/bigapp
cat $S/blob >> $D/bigapp
# truncate: grow (zeros), shrink, shrink to zero, grow an empty file
head -c 300000 $S/blob > $D/tr1
truncate -s 2500000 $D/tr1
truncate -s 1234567 $D/tr1
echo tail >> $D/tr1
head -c 2000000 $S/blob > $D/tr2
truncate -s 999999 $D/tr2
truncate -s 0 $D/tr3
truncate -s 4096 $D/tr3
# overwrite in the middle of an existing file, without truncating it
head -c 3000000 $S/blob2 > $D/mid
printf 'MIDDLE' | dd of=$D/mid bs=1 seek=1048570 conv=notrunc status=none
# mv of files and directories
mkdir -p $D/m1/sub
echo a > $D/m1/a
echo b > $D/m1/sub/b
head -c 2100000 $S/blob > $D/m1/sub/big
mv $D/m1/a $D/m1/a2
mv $D/m1 $D/m2
mv $D/m2/sub/b $D/p/b
mkdir $D/m3
mv $D/m2/sub $D/m3/
# rm -r
mkdir -p $D/gone/x/y
echo z > $D/gone/x/y/z
echo w > $D/gone/w
rm -r $D/gone
test ! -e $D/gone
"#;

/// Test 3: tar out of and into the mount; mkdir -p, rm -r, mv of files and
/// directories, >> appends, truncate grow/shrink — compared with the same
/// steps on a local directory, and again after a remount.
#[test]
fn tar_and_shell_operations() {
    let t0 = Instant::now();
    let mut m = Mount::emulator();
    std::fs::write(m.scratch.join("blob"), pattern(3 * MIB as usize, 7)).unwrap();
    std::fs::write(m.scratch.join("blob2"), pattern(3 * MIB as usize, 8)).unwrap();
    std::fs::write(m.scratch.join("steps.sh"), SHELL_STEPS).unwrap();
    m.sh("mkdir local && bash steps.sh $S/local", 60);
    m.sh("bash steps.sh $M", 180);
    m.sh("diff -r --no-dereference $S/local $M", 60);
    assert_eq!(
        std::fs::read_to_string(m.path("app")).unwrap(),
        "hello\nworld\nxxxxxxxxxx"
    );

    // tar: extract into the mount, create from it, compare.
    make_tree(&m.scratch.join("tree"), 60);
    m.sh(
        "tar -C $S -cf $S/in.tar tree && tar -C $M -xf $S/in.tar",
        120,
    );
    m.sh("diff -r --no-dereference $S/tree $M/tree", 60);
    m.sh(
        "tar -C $M -cf $S/out.tar tree && mkdir out && tar -C out -xf out.tar",
        120,
    );
    m.sh("diff -r --no-dereference $S/tree $S/out/tree", 60);
    // tar -x kept modes and mtimes.
    let a = m.sh(&format!("cd $S/tree && {LISTING}"), 30);
    let b = m.sh(&format!("cd $M/tree && {LISTING}"), 30);
    assert_eq!(a, b, "tar -x into the mount lost modes/times");

    m.remount();
    m.sh("diff -r --no-dereference $S/local/p $M/p", 60);
    m.sh(
        "for f in app bigapp tr1 tr2 tr3 mid m2/a2 m3/sub/big; do cmp $S/local/$f $M/$f; done",
        60,
    );
    m.sh("diff -r --no-dereference $S/tree $M/tree", 60);
    m.sh("rm -r $M/tree $M/m2 $M/m3 && test ! -e $M/tree", 60);
    let left = m.sh("ls $M | sort | tr '\\n' ' '", 30);
    assert_eq!(left, "app bigapp mid p tr1 tr2 tr3 ");
    eprintln!("tar_and_shell_operations: {:?}", t0.elapsed());
}

/// Test 5: four processes reading one 200 MiB file at once get the same bytes.
#[test]
fn four_parallel_readers_of_200mib() {
    let t0 = Instant::now();
    let mut m = Mount::emulator();
    m.sh(
        "head -c 200M /dev/urandom > $S/big && cp $S/big $M/big",
        300,
    );
    let want = sha256_file(&m.scratch.join("big"));
    std::fs::remove_file(m.scratch.join("big")).unwrap();
    // Cold caches: the readers really go through the mount and the service.
    m.remount();
    let out = m.sh(
        "for i in 1 2 3 4; do sha256sum $M/big > sum$i & done; wait; cat sum1 sum2 sum3 sum4",
        300,
    );
    let sums: Vec<&str> = out.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(sums.len(), 4);
    for s in sums {
        assert_eq!(s, want, "a reader got different bytes");
    }
    eprintln!("four_parallel_readers_of_200mib: {:?}", t0.elapsed());
}

/// Test 6: the block cache and the listing cache, by the emulator's counters.
#[test]
fn caches_save_requests() {
    let m = Mount::emulator();
    m.sh("head -c 5M /dev/urandom > $S/f && cp $S/f $M/f", 60);
    // First read: GETs. Second read (the kernel drops its page cache on
    // every open): served from the block cache, no GET.
    m.reset_stats();
    m.sh("cmp $S/f $M/f", 30);
    let first = m.op_count("GetBlob");
    assert!(first > 0, "first read made no GET: {}", m.stats());
    m.reset_stats();
    m.sh("cmp $S/f $M/f && cat $M/f > /dev/null", 30);
    assert_eq!(m.op_count("GetBlob"), 0, "second read: {}", m.stats());

    // Plain (non-CPK) blobs written by another tool: a listing carries their
    // metadata, so `ls -l` after `ls` needs no HEAD at all.
    let plain = m.client(None);
    m.block_on(async {
        for i in 0..50 {
            let mut opts = cpkfs::blob::CommitOptions::default();
            if i % 2 == 0 {
                opts.metadata.insert("mode".into(), "33188".into());
            }
            plain
                .put_blob(
                    &format!("plain/p{i:02}"),
                    bytes::Bytes::from(vec![b'x'; i]),
                    &opts,
                    None,
                )
                .await
                .unwrap();
        }
    });
    m.reset_stats();
    m.sh("ls $M/plain > /dev/null", 30);
    let out = m.sh("ls -l $M/plain", 30);
    assert_eq!(
        out.lines().filter(|l| l.contains(" p")).count(),
        50,
        "{out}"
    );
    let s = m.stats();
    assert_eq!(
        m.op_count("GetBlobProperties"),
        0,
        "ls / ls -l of plain blobs made HEADs: {s}"
    );
    assert!(m.op_count("ListBlobs") >= 1, "no listing? {s}");
    // Within the attribute TTL a second `ls -l` makes no HEAD or GET either
    // (readdir itself lists again: the kernel does not cache directories).
    m.reset_stats();
    m.sh("ls -l $M/plain > /dev/null", 30);
    let s = m.stats();
    assert_eq!(
        m.op_count("GetBlobProperties") + m.op_count("GetBlob"),
        0,
        "{s}"
    );
    assert!(m.op_count("ListBlobs") <= 1, "{s}");
}

/// Test 7: a blob under a foreign CPK is listed with its size but cannot be
/// read (EACCES); a plain blob written by another tool is readable.
#[test]
fn foreign_key_and_plain_blobs() {
    let m = Mount::emulator();
    let foreign = Arc::new(CustomerKey::from_raw([42u8; 32]));
    let fc = m.client(Some(foreign.clone()));
    let pc = m.client(None);
    let fdata = pattern(1234, 99);
    m.block_on(async {
        let o = cpkfs::blob::CommitOptions::default();
        fc.put_blob("foreign.bin", fdata.clone().into(), &o, Some(&foreign))
            .await
            .unwrap();
        pc.put_blob("dir/plain.txt", "plain text\n".into(), &o, None)
            .await
            .unwrap();
    });
    let ls = m.sh("ls -l $M", 30);
    assert!(
        ls.lines()
            .any(|l| l.contains(" 1234 ") && l.ends_with("foreign.bin")),
        "{ls}"
    );
    let stat = m.sh("stat -c %s $M/foreign.bin", 30);
    assert_eq!(stat.trim(), "1234");
    let out = m.sh_status("cat $M/foreign.bin", 30);
    assert!(!out.status.success(), "read a foreign-key blob");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "not EACCES: {err}");
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("foreign.bin") && l.contains(foreign.sha256())),
        "the log does not name the blob and its key hash"
    );
    assert_eq!(m.sh("cat $M/dir/plain.txt", 30), "plain text\n");
    // Writing into the foreign blob is refused too, and leaves it intact.
    let out = m.sh_status("echo x >> $M/foreign.bin", 30);
    assert!(!out.status.success(), "appended to a foreign-key blob");
    let (got, hash) = rest_read(&m, "foreign.bin", Some(foreign.clone()));
    assert_eq!(got, fdata);
    assert_eq!(hash.as_deref(), Some(foreign.sha256()));
}

/// A commit the service refuses surfaces at close() as an error and leaves
/// the previous version of the blob in place.
#[test]
fn failed_commit_fails_close() {
    let t0 = Instant::now();
    let m = Mount::emulator();
    m.sh("echo old > $M/f", 30);
    m.set_faults(Some(serde_json::json!({
        "rate": 1.0, "kinds": ["500"], "operations": ["PutBlockList", "PutBlob"]
    })));
    // The mount retries (default policy, about 6 s of back-off) then fails.
    let out = m.sh_status("echo new > $M/f", 120);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let out2 = m.sh_status("head -c 3M /dev/urandom > $M/g", 120);
    m.set_faults(None);
    assert!(!out.status.success(), "close reported success");
    assert!(err.contains("Input/output error"), "{err}");
    assert!(
        !out2.status.success(),
        "close of a multi-block file succeeded"
    );
    let (got, _) = rest_read(&m, "f", m.key.clone());
    assert_eq!(got, b"old\n", "the old version was replaced");
    // Once the service is healthy again, a new write works.
    m.sh("echo newer > $M/f", 30);
    assert_eq!(rest_read(&m, "f", m.key.clone()).0, b"newer\n");
    eprintln!("failed_commit_fails_close: {:?}", t0.elapsed());
}

/// mv of a CPK file and of a directory through the mount: the service copies the
/// blobs itself (Put Blob From URL with the source key, service version
/// 2026-02-06), so almost nothing moves between the mount and the service; the
/// data is intact afterwards.
#[test]
fn mv_of_cpk_files_is_copied_by_the_service() {
    let m = Mount::emulator();
    m.sh(
        "head -c 5000000 /dev/urandom > $S/f && cp $S/f $M/f && mkdir $M/d && cp $S/f $M/d/g && echo small > $M/d/h",
        60,
    );
    m.reset_stats();
    m.sh("mv $M/f $M/f2 && mv $M/d $M/d2", 60);
    let st = m.stats();
    assert_eq!(st["requests"]["PutBlobFromUrl"], 3, "{st}");
    let moved = st["bytes_in"].as_u64().unwrap() + st["bytes_out"].as_u64().unwrap();
    assert!(
        moved < 1 << 20,
        "{moved} bytes moved for 10 MB renamed: {st}"
    );
    m.sh("cmp $S/f $M/f2 && cmp $S/f $M/d2/g && test \"$(cat $M/d2/h)\" = small && test ! -e $M/f && test ! -e $M/d", 60);
}

/// The same mv against a service without version 2026-02-06 (`--no-source-cpk`):
/// the first CPK rename is refused with 400, the mount logs that once and streams
/// from then on (the data goes through it); the result is the same.
#[test]
fn mv_of_cpk_files_streams_when_the_service_cannot_copy_them() {
    let m = Mount::new(mount::MountOptions {
        emulator_args: vec!["--no-source-cpk".into()],
        ..Default::default()
    });
    m.sh(
        "head -c 3000000 /dev/urandom > $S/f && cp $S/f $M/f && cp $S/f $M/g",
        60,
    );
    m.reset_stats();
    m.sh("mv $M/f $M/f2 && mv $M/g $M/g2", 60);
    let st = m.stats();
    assert_eq!(st["requests"]["PutBlobFromUrl"], 1, "asked once: {st}");
    assert!(st["bytes_in"].as_u64().unwrap() >= 6_000_000, "{st}");
    m.sh("cmp $S/f $M/f2 && cmp $S/f $M/g2", 60);
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert_eq!(
        log.matches("does not copy blobs with customer-provided keys")
            .count(),
        1,
        "{log}"
    );
}

/// mv of a file that another writer replaces while the service copies it:
/// the copy is pinned to the version the mount read (`x-ms-source-if-match`),
/// so it fails rather than mixing versions, and the rename copies the new
/// version whole. The source name is deleted only for the version copied.
#[test]
fn mv_of_a_file_replaced_during_the_copy_moves_one_whole_version() {
    let m = Mount::emulator();
    let v1 = pattern(3_000_000, 1);
    let v2 = pattern(2_000_001, 2);
    std::fs::write(m.scratch.join("v1"), &v1).unwrap();
    m.sh("cp $S/v1 $M/f", 60);
    // Every Put Blob From URL waits 2 s before the service handles it.
    m.set_faults(Some(serde_json::json!({
        "rate": 1.0, "kinds": ["slow"], "slow_ms": 2000, "operations": ["PutBlobFromUrl"]
    })));
    m.reset_stats();
    let mv = {
        let script = format!("mv {0}/f {0}/g", m.mnt.display());
        std::thread::spawn(move || {
            std::process::Command::new("sh")
                .args(["-c", &script])
                .output()
                .unwrap()
        })
    };
    // Replace the source over REST while the first copy is held.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while m.op_count("PutBlobFromUrl") == 0 {
        assert!(Instant::now() < deadline, "no copy started: {}", m.stats());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let c = m.client(m.key.clone());
    m.block_on(c.put_blob(
        "f",
        v2.clone().into(),
        &cpkfs::blob::CommitOptions::default(),
        m.key.as_deref(),
    ))
    .unwrap();
    let out = mv.join().unwrap();
    m.set_faults(None);
    assert!(
        out.status.success(),
        "mv failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = m.stats();
    assert_eq!(
        st["requests"]["PutBlobFromUrl"], 2,
        "one refused copy, one whole: {st}"
    );
    let (got, hash) = rest_read(&m, "g", m.key.clone());
    assert!(
        got == v2,
        "g is not the new version whole ({} bytes)",
        got.len()
    );
    assert_eq!(hash.as_deref(), m.key.as_ref().map(|k| k.sha256()));
    let gone = m.block_on(c.get_blob_properties("f", m.key.as_deref(), &Conditions::default()));
    assert!(gone.is_err_and(|e| e.is_not_found()), "the source is left");
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(log.contains("the source changed during the copy"), "{log}");
}

/// The old key of the re-keying benchmark rows (the ring's second line).
const OLD_KEY: &str = "MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=";

/// Write `size` bytes of random data to `name` over REST under `key` (8 MiB
/// Put Blocks, four in flight, then Put Block List): no file on disk, a few
/// blocks in memory. Returns the data's SHA-256 (hex).
fn rest_write_random(m: &Mount, name: &str, size: u64, key: &Arc<CustomerKey>) -> String {
    use base64::Engine;
    use futures::stream::{self, StreamExt, TryStreamExt};
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    const BLOCK: u64 = 8 * MIB;
    let c = m.client(Some(key.clone()));
    let n = size.div_ceil(BLOCK);
    let ids: Vec<String> = (0..n)
        .map(|i| base64::engine::general_purpose::STANDARD.encode(format!("bench{i:08}")))
        .collect();
    let mut h = Sha256::new();
    let mut rng = rand::thread_rng();
    m.block_on(async {
        // `map` runs in block order, so the hash sees the bytes in order.
        stream::iter(0..n)
            .map(|i| {
                let mut buf = vec![0u8; (size - i * BLOCK).min(BLOCK) as usize];
                rng.fill_bytes(&mut buf);
                h.update(&buf);
                let (c, id) = (c.clone(), ids[i as usize].clone());
                async move { c.put_block(name, &id, buf.into(), Some(&**key)).await }
            })
            .buffered(4)
            .try_collect::<Vec<()>>()
            .await
            .unwrap_or_else(|e| panic!("Put Block {name}: {e}"));
        let refs: Vec<BlockRef> = ids.iter().cloned().map(BlockRef::Uncommitted).collect();
        c.put_block_list(name, &refs, &CommitOptions::default(), Some(&**key))
            .await
            .unwrap_or_else(|e| panic!("Put Block List {name}: {e}"));
    });
    format!("{:x}", h.finalize())
}

/// Read `name` over REST under `key`, streamed: (SHA-256 hex, length, the key
/// hash the service reports).
fn rest_sha256(m: &Mount, name: &str, key: &Arc<CustomerKey>) -> (String, u64, Option<String>) {
    use sha2::{Digest, Sha256};
    let c = m.client(Some(key.clone()));
    m.block_on(async {
        let mut dl = c
            .get_blob(name, None, Some(&**key), &Conditions::default())
            .await
            .unwrap_or_else(|e| panic!("GET {name}: {e}"));
        let (mut h, mut len) = (Sha256::new(), 0u64);
        while let Some(chunk) = dl.next_chunk().await.unwrap() {
            h.update(&chunk);
            len += chunk.len() as u64;
        }
        (
            format!("{:x}", h.finalize()),
            len,
            dl.properties.cpk_sha256.clone(),
        )
    })
}

/// Benchmark (not run by default: `cargo test --test mount_emulator -- --ignored
/// bench_rename --nocapture`): mv of a 2 GiB CPK file through the mount, the
/// service copying it (Put Block From URL, 256 MiB ranges, four at a time) vs
/// the streaming fallback (`--no-source-cpk`), for a file under the mount's
/// current key and for one under an old key of its ring (the re-keying
/// rename: the service decrypts with the old key and encrypts with the
/// current one), with the bytes the emulator exchanged with the mount and the
/// CPU time of the emulator and the mount during the `mv`. Every row: the
/// file written over REST, the mount holding the ring [current, old]; after
/// the mv the new name is read over REST with the current key and its
/// SHA-256 compared. Figures in docs/PERFORMANCE.md.
#[test]
#[ignore]
fn bench_rename_2gib_server_copy_vs_streaming() {
    const SIZE: u64 = 2048 * MIB;
    let old = Arc::new(CustomerKey::from_base64(OLD_KEY, None).unwrap());
    for (label, args, rekey) in [
        ("same key, server copy (Put Block From URL)", vec![], false),
        (
            "same key, streaming fallback",
            vec!["--no-source-cpk".to_string()],
            false,
        ),
        ("re-key, server copy (Put Block From URL)", vec![], true),
        (
            "re-key, streaming fallback",
            vec!["--no-source-cpk".to_string()],
            true,
        ),
    ] {
        let mut m = Mount::new(mount::MountOptions {
            emulator_args: args,
            block_size: "8M".into(),
            ..Default::default()
        });
        let current = m.key.clone().unwrap();
        // The ring: the current key first, the old one kept for reading.
        let ring = m.scratch.parent().unwrap().join("cpk.key");
        let line = std::fs::read_to_string(&ring).unwrap();
        std::fs::write(&ring, format!("{}\n{OLD_KEY}\n", line.trim())).unwrap();
        m.remount();
        let src_key = if rekey { &old } else { &current };
        let t = Instant::now();
        let want = rest_write_random(&m, "big", SIZE, src_key);
        let put = t.elapsed().as_secs_f64();
        m.reset_stats();
        let (emu, fuse) = m.pids();
        let cpu = |p: Option<u32>| p.map(mount::cpu_secs).unwrap_or(0.0);
        let (emu0, fuse0) = (cpu(emu), cpu(fuse));
        let t = Instant::now();
        m.sh("mv $M/big $M/big2", 900);
        let secs = t.elapsed().as_secs_f64();
        let (emu_cpu, fuse_cpu) = (cpu(emu) - emu0, cpu(fuse) - fuse0);
        let st = m.stats();
        let t = Instant::now();
        let (got, len, hash) = rest_sha256(&m, "big2", &current);
        let check = t.elapsed().as_secs_f64();
        assert_eq!(len, SIZE, "{label}: size after mv");
        assert_eq!(got, want, "{label}: content after mv");
        assert_eq!(
            hash.as_deref(),
            Some(current.sha256()),
            "{label}: not under the current key"
        );
        let gone = m.block_on(m.client(Some(src_key.clone())).get_blob_properties(
            "big",
            Some(&**src_key),
            &Conditions::default(),
        ));
        assert!(
            gone.is_err_and(|e| e.is_not_found()),
            "{label}: the source is left"
        );
        println!(
            "BENCH rename 2 GiB, {label}: {secs:.2} s (CPU: emulator {emu_cpu:.2} s, mount {fuse_cpu:.2} s), bytes_in {} bytes_out {} requests {} [REST write {put:.1} s, check {check:.1} s]",
            st["bytes_in"], st["bytes_out"], st["requests"]
        );
    }
}
