//! Test 4: fsx (file system exerciser) on a file in a CPK mount.
//!
//! Needs `fsx` 0.3.2 (`cargo install --locked fsx --version 0.3.2`), found
//! as `$FSX`, on PATH, or in ~/.cargo/bin.

mod common;
#[path = "common/mount.rs"]
mod mount;

use mount::Mount;
use std::path::PathBuf;
use std::time::Instant;

fn fsx_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FSX") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    for p in [PathBuf::from(home).join(".cargo/bin/fsx")] {
        if p.exists() {
            return p;
        }
    }
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v fsx"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    match found {
        Some(o) => String::from_utf8_lossy(&o.stdout).trim().into(),
        None => panic!("fsx not found: cargo install --locked fsx --version 0.3.2"),
    }
}

/// Every operation fsx has, except hole punching: FALLOC_FL_PUNCH_HOLE is
/// refused with EOPNOTSUPP (blobs have no holes), which fsx 0.3.2 treats as
/// a failure. posix_fallocate stays on: glibc falls back to writing zeros
/// when fallocate(2) is unsupported, so it exercises size-extending writes.
/// Mapped reads are down-weighted (fsx 0.3.2 never unmaps them, so they slow
/// long runs down).
const FSX_CONFIG: &str = r#"
[weights]
read = 1.0
write = 1.0
mapread = 0.5
mapwrite = 0.5
truncate = 1.0
close_open = 0.2
invalidate = 0.1
fsync = 0.1
fdatasync = 0.1
sendfile = 0.2
posix_fadvise = 0.1
copy_file_range = 0.2
posix_fallocate = 0.2
punch_hole = 0.0
"#;

#[test]
fn fsx_20000_ops() {
    let t0 = Instant::now();
    let m = Mount::emulator(); // CPK, 1 MiB blocks
    let fsx = fsx_bin();
    std::fs::write(m.scratch.join("fsx.toml"), FSX_CONFIG).unwrap();
    std::fs::create_dir(m.scratch.join("artifacts")).unwrap();
    let out = m.sh(
        &format!(
            "{} -N 20000 -S 20260101 -f $S/fsx.toml -P $S/artifacts $M/fsx.bin 2>&1 | tail -40",
            fsx.display()
        ),
        900,
    );
    assert!(
        out.contains("All operations completed A-OK!"),
        "fsx failed:\n{out}\n--- mount log\n{}",
        m.log_tail()
    );
    // What fsx left is in the service, encrypted with the mount's key.
    let key = m.key.clone().unwrap();
    let c = m.client(m.key.clone());
    let p = m
        .block_on(c.get_blob_properties("fsx.bin", Some(&key), &Default::default()))
        .unwrap();
    assert_eq!(p.cpk_sha256.as_deref(), Some(key.sha256()));
    let local = std::fs::metadata(m.path("fsx.bin")).unwrap().len();
    assert_eq!(p.content_length, local);
    eprintln!("fsx_20000_ops: {:?}", t0.elapsed());
}

/// copy_file_range and fallocate are the mount's own (issue #15), not the
/// kernel's read+write and glibc's zero-writing fallbacks: a copy of a file
/// whose blocks are cached makes no GET, posix_fallocate extends with zeros,
/// and hole punching stays refused with EOPNOTSUPP.
#[test]
fn copy_file_range_and_fallocate_are_served_by_the_mount() {
    let m = Mount::emulator(); // 1 MiB blocks
    let n = 3 * 1024 * 1024 + 5;
    let data = common::pattern(n, 15);
    std::fs::write(m.scratch.join("src"), &data).unwrap();
    // The source is written over REST, so the kernel's page cache does not
    // hold it: every byte the copies need comes through the mount.
    let key = m.key.clone().unwrap();
    let c = m.client(Some(key.clone()));
    m.block_on(c.put_blob("src", data.into(), &Default::default(), Some(&key)))
        .unwrap();
    let py = r#"
import os, sys
m = os.environ["M"]
n = os.path.getsize(m + "/src")
with open(m + "/src", "rb") as s, open(m + "/" + sys.argv[1], "wb") as d:
    done = 0
    while done < n:
        c = os.copy_file_range(s.fileno(), d.fileno(), n - done)
        if c == 0:
            break
        done += c
    assert done == n, (done, n)
print("ok")
"#;
    std::fs::write(m.scratch.join("cfr.py"), py).unwrap();
    m.reset_stats();
    let out = m.sh("python3 cfr.py dst", 120);
    assert!(out.contains("ok"), "{out}");
    // Each of the 4 blocks fetched once (read-ahead included), never twice.
    assert!(m.op_count("GetBlob") <= 4, "first copy: {}", m.stats());
    m.reset_stats();
    let out = m.sh("python3 cfr.py dst2", 120);
    assert!(out.contains("ok"), "{out}");
    assert_eq!(
        m.op_count("GetBlob"),
        0,
        "a copy from cached blocks made GETs: {}",
        m.stats()
    );
    m.sh("cmp src $M/dst && cmp src $M/dst2", 60);
    let py = r#"
import os
m = os.environ["M"]
with open(m + "/alloc", "wb") as f:
    f.write(b"head")
    os.posix_fallocate(f.fileno(), 0, 5 * 1024 * 1024)
    assert os.fstat(f.fileno()).st_size == 5 * 1024 * 1024
    # A range inside the file never shrinks it.
    os.posix_fallocate(f.fileno(), 0, 10)
    assert os.fstat(f.fileno()).st_size == 5 * 1024 * 1024
print("ok")
"#;
    std::fs::write(m.scratch.join("alloc.py"), py).unwrap();
    let out = m.sh("python3 alloc.py", 120);
    assert!(out.contains("ok"), "{out}");
    // What the service holds after close: the copy, and 5 MiB of "head" + zeros.
    let mut want = b"head".to_vec();
    want.resize(5 * 1024 * 1024, 0);
    std::fs::write(m.scratch.join("alloc.want"), &want).unwrap();
    m.sh("cmp alloc.want $M/alloc", 60);
    let p = m
        .block_on(c.get_blob_properties("alloc", Some(&key), &Default::default()))
        .unwrap();
    assert_eq!(p.content_length, 5 * 1024 * 1024);
    // Hole punching is refused, and the file is untouched.
    let punch = m.sh_status("fallocate -p -o 0 -l 4096 $M/alloc", 30);
    assert!(!punch.status.success(), "hole punching succeeded");
    let err = String::from_utf8_lossy(&punch.stderr);
    // util-linux words EOPNOTSUPP as "keep size mode is unsupported" for -p.
    assert!(
        err.contains("unsupported") || err.contains("not supported"),
        "{err}"
    );
    m.sh("cmp alloc.want $M/alloc", 60);
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(
        !log.contains("[Not Implemented] copy_file_range")
            && !log.contains("[Not Implemented] fallocate"),
        "the kernel fell back:\n{}",
        m.log_tail()
    );
}
