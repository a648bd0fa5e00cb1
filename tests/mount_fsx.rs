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
