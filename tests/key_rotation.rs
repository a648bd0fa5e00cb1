//! Account key rotation under a running mount: a copy loop and a read loop
//! run through the mount while the emulator regenerates key 1, the key file
//! is updated, then key 2 is regenerated. Zero failed user operations, all
//! data intact, and the log says which key is in use (never the key).

mod common;
#[path = "common/mount.rs"]
mod mount;

use cpkfs_emulator::{DEV_KEY1, DEV_KEY2};
use mount::Mount;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn write_keys(path: &Path, keys: &[&str]) {
    // Replace atomically, as an operator's tooling would.
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, keys.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn regenerate(m: &Mount, which: u8) -> String {
    let url = m.admin_url.clone().unwrap();
    let pem = m.ca_pem.clone().unwrap();
    m.block_on(async move {
        let c = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
            .build()
            .unwrap();
        let body = c
            .post(format!(
                "{url}/__admin/accounts/devstoreaccount1/regenerate-key?key={which}"
            ))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["key"].as_str().unwrap().to_string()
    })
}

#[test]
fn account_keys_rotate_under_a_running_mount() {
    let mut m = Mount::emulator();
    let key_file = m.scratch.parent().unwrap().join("account.key");
    assert!(
        key_file.exists(),
        "the harness keeps the account key in {}",
        key_file.display()
    );
    // The operator's key file holds both of the account's keys.
    write_keys(&key_file, &[DEV_KEY1, DEV_KEY2]);
    std::thread::sleep(Duration::from_secs(3)); // the mount notices the file changed

    let src = m.scratch.join("src.bin");
    let data = common::pattern(300_000, 5);
    std::fs::write(&src, &data).unwrap();
    for i in 0..4 {
        std::fs::copy(&src, m.path(&format!("r{i}"))).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let copies = Arc::new(AtomicUsize::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let copier = {
        let (stop, failures, copies) = (stop.clone(), failures.clone(), copies.clone());
        let (src, mnt) = (src.clone(), m.mnt.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let ok = Command::new("cp")
                    .arg(&src)
                    .arg(mnt.join(format!("c{i}")))
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    copies.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
            i
        })
    };
    let reader = {
        let (stop, failures, reads) = (stop.clone(), failures.clone(), reads.clone());
        let (mnt, data) = (m.mnt.clone(), data.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for i in 0..4 {
                    // A fresh process each time: open, read, close.
                    let out = Command::new("cat")
                        .arg(mnt.join(format!("r{i}")))
                        .output()
                        .unwrap();
                    if out.status.success() && out.stdout == data {
                        reads.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };

    std::thread::sleep(Duration::from_secs(1));
    let new1 = regenerate(&m, 1); // key 1 stops working at once
    std::thread::sleep(Duration::from_secs(2));
    write_keys(&key_file, &[&new1, DEV_KEY2]);
    std::thread::sleep(Duration::from_secs(3));
    let new2 = regenerate(&m, 2); // now key 2 stops working
    std::thread::sleep(Duration::from_secs(2));
    write_keys(&key_file, &[&new1, &new2]);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let attempted = copier.join().unwrap();
    reader.join().unwrap();

    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "user operations failed during rotation; log:\n{}",
        m.log_tail()
    );
    assert!(
        copies.load(Ordering::Relaxed) >= 5 && reads.load(Ordering::Relaxed) >= 20,
        "the loops did too little to prove anything"
    );
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(
        log.contains("switching to key"),
        "no WARN about the key switch in the log"
    );
    for k in [DEV_KEY1, DEV_KEY2, new1.as_str(), new2.as_str()] {
        assert!(!log.contains(k), "an account key was logged");
    }

    // Everything written is intact, seen through a fresh mount (which reads
    // the updated key file).
    m.remount();
    for i in 0..attempted {
        let got = std::fs::read(m.path(&format!("c{i}"))).unwrap_or_default();
        assert!(got == data, "copy c{i} is not intact");
    }
}
