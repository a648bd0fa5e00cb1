//! The CPK keyring through a real mount: blobs under an older key are read
//! with it (chosen by hash), `user.cpkfs.key_sha256` shows the key, a rewrite
//! moves a file to the current key, and `cpkfs rotate-cpk` runs while the
//! mount keeps reading every file: zero failed reads, everything ends under
//! the current key, byte-identical.

mod common;
#[path = "common/mount.rs"]
mod mount;

use bytes::Bytes;
use common::pattern;
use cpkfs::blob::{ByteRange, CommitOptions, Conditions, CustomerKey};
use mount::Mount;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

const OLD: &str = "MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=";

fn size_of(i: usize) -> usize {
    [0, 5, 4096, 1_048_575, 1_048_577, 2_500_000][i % 6]
}

#[test]
fn keyring_reads_old_keys_and_survives_rotation_under_a_mount() {
    let mut m = Mount::emulator();
    let dir = m.scratch.parent().unwrap().to_path_buf();
    let new = m.key.clone().expect("an emulator mount has a key");
    let old = Arc::new(CustomerKey::from_base64(OLD, None).unwrap());
    // Blobs written by an earlier generation, under the old key.
    let c_old = m.client(Some(old.clone()));
    for i in 0..30 {
        let data = pattern(size_of(i), i as u64);
        m.block_on(c_old.put_blob(
            &format!("k/f{i:02}"),
            Bytes::from(data),
            &CommitOptions::default(),
            Some(&old),
        ))
        .unwrap();
    }
    // The ring: current key first, the old key kept for reading.
    let ring = dir.join("cpk.key");
    let current = std::fs::read_to_string(&ring).unwrap();
    std::fs::write(&ring, format!("{}\n{OLD}\n", current.trim())).unwrap();
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o600)).unwrap();
    m.remount();

    for i in 0..30 {
        let got = std::fs::read(m.path(&format!("k/f{i:02}"))).unwrap();
        assert!(
            got == pattern(size_of(i), i as u64),
            "f{i:02} read with the old key differs"
        );
    }
    let x = Command::new("getfattr")
        .args(["--only-values", "-n", "user.cpkfs.key_sha256"])
        .arg(m.path("k/f01"))
        .output();
    if let Ok(x) = x {
        if x.status.success() {
            assert_eq!(String::from_utf8_lossy(&x.stdout).trim(), old.sha256());
        }
    }
    // A rewrite stores the file under the current key.
    m.sh("echo appended >> $M/k/f01", 30);
    let c_new = m.client(Some(new.clone()));
    let p = m
        .block_on(c_new.get_blob_properties("k/f01", Some(&new), &Conditions::default()))
        .unwrap();
    assert_eq!(p.cpk_sha256.as_deref(), Some(new.sha256()));

    // mv of a file under the old key: the service copies it with the old key
    // as the source key and the current key for the copy (one Put Blob From
    // URL, no bytes through the mount), so the new name is under the current key.
    let old_data = pattern(2_500_000, 77);
    m.block_on(c_old.put_blob(
        "old-src",
        Bytes::from(old_data.clone()),
        &CommitOptions::default(),
        Some(&old),
    ))
    .unwrap();
    m.reset_stats();
    m.sh("mv $M/old-src $M/old-dst", 60);
    let st = m.stats();
    assert_eq!(st["requests"]["PutBlobFromUrl"], 1, "{st}");
    assert!(st["bytes_in"].as_u64().unwrap() < 64 * 1024, "{st}");
    let p = m
        .block_on(c_new.get_blob_properties("old-dst", Some(&new), &Conditions::default()))
        .unwrap();
    assert_eq!(p.cpk_sha256.as_deref(), Some(new.sha256()), "not re-keyed");
    assert!(std::fs::read(m.path("old-dst")).unwrap() == old_data);
    assert!(!m.path("old-src").exists());

    // rotate-cpk while the mount reads every file in a loop.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let stale = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (stop, failures, reads, stale, mnt) = (
            stop.clone(),
            failures.clone(),
            reads.clone(),
            stale.clone(),
            m.mnt.clone(),
        );
        std::thread::spawn(move || {
            let mut detail = String::new();
            while !stop.load(Ordering::Relaxed) {
                for i in (0..30).filter(|i| *i != 1) {
                    let out = Command::new("cat")
                        .arg(mnt.join(format!("k/f{i:02}")))
                        .output()
                        .unwrap();
                    let ok = |o: &std::process::Output| {
                        o.status.success() && o.stdout == pattern(size_of(i), i as u64)
                    };
                    if ok(&out) {
                        reads.fetch_add(1, Ordering::Relaxed);
                    } else if String::from_utf8_lossy(&out.stderr).contains("Stale file handle")
                        && ok(&Command::new("cat")
                            .arg(mnt.join(format!("k/f{i:02}")))
                            .output()
                            .unwrap())
                    {
                        // SEMANTICS: a descriptor that has returned bytes
                        // fails with ESTALE when the blob is re-keyed under
                        // it (a multi-block file re-keyed mid-read); a
                        // reopen reads the new version. Anything else fails.
                        stale.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                        detail = format!("f{i:02}: {}", String::from_utf8_lossy(&out.stderr));
                    }
                }
            }
            detail
        })
    };
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args([
            "rotate-cpk",
            "--endpoint",
            &m.endpoint,
            "--account",
            "devstoreaccount1",
            "--container",
            &m.container,
        ])
        .arg("--account-key-file")
        .arg(dir.join("account.key"))
        .arg("--cpk-file")
        .arg(&ring)
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .args(["--block-size", "1M", "--concurrency", "1"])
        .output()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(4)); // beyond the attribute TTL
    stop.store(true, Ordering::Relaxed);
    let detail = reader.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rotate-cpk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 failed"), "{text}");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "reads through the mount failed during rotation ({detail}); log:\n{}",
        m.log_tail()
    );
    eprintln!(
        "rotation under reads: {} reads, {} ESTALE mid-read then a good reopen",
        reads.load(Ordering::Relaxed),
        stale.load(Ordering::Relaxed)
    );
    assert!(
        reads.load(Ordering::Relaxed) >= 29,
        "the reader did too little"
    );

    // Everything is under the current key and identical, over REST and through the mount.
    let page = m.block_on(c_new.list_blobs(&Default::default())).unwrap();
    for b in page.blobs.iter().filter(|b| b.name.starts_with("k/")) {
        assert_eq!(
            b.properties.cpk_sha256.as_deref(),
            Some(new.sha256()),
            "{} not rotated",
            b.name
        );
    }
    for i in (0..30).filter(|i| *i != 1) {
        let (b, _) = m
            .block_on(c_new.read_range(
                &format!("k/f{i:02}"),
                ByteRange::from(0),
                Some(&new),
                &Conditions::default(),
            ))
            .unwrap();
        assert!(
            b[..] == pattern(size_of(i), i as u64)[..],
            "f{i:02} differs after rotation"
        );
        assert!(
            std::fs::read(m.path(&format!("k/f{i:02}"))).unwrap() == pattern(size_of(i), i as u64)
        );
    }
}
