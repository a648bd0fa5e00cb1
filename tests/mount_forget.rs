//! A long-lived mount's memory follows what exists, seen through `cpkfs
//! stats` on a real mount. Its own test binary: it drops the kernel's
//! dentry and inode caches (`drop_caches`), which are machine-wide, and
//! must not run beside tests that count requests of a warm mount.

mod common;
#[path = "common/mount.rs"]
mod mount;

use mount::{Mount, MountOptions};
use serde_json::Value;
use std::process::Command;

fn snapshot(m: &Mount) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args(["stats", "--json"])
        .arg(&m.mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cpkfs stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The mount's tables as `cpkfs stats --json` shows them.
fn tables(m: &Mount) -> (u64, u64) {
    let t = &snapshot(m)["tables"];
    let n = |k: &str| t[k].as_u64().unwrap();
    (n("inodes"), n("negative_names"))
}

/// A long-lived mount's memory follows what exists: a tree created, listed,
/// renamed over and removed leaves no inodes behind
/// once the kernel forgets them (FORGET), while files that still exist stay
/// readable after the kernel drops its caches.
#[test]
fn files_created_and_removed_leave_no_inodes_behind() {
    let m = Mount::new(MountOptions::default());
    m.sh(
        "mkdir $M/keep && for i in $(seq 20); do echo keep$i > $M/keep/$i; done",
        60,
    );
    let (base, _) = tables(&m);
    for round in 0..2 {
        m.sh(
            "mkdir $M/d && cd $M/d && seq 300 | xargs touch && ls -l >/dev/null \
             && mv 1 2 && echo x > 3 && cd / && rm -r $M/d",
            120,
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let (inodes, negative) = loop {
            let t = tables(&m);
            // FORGETs are queued by the kernel: they may trail the rm.
            if t.0 <= base || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        };
        assert!(
            inodes <= base,
            "round {round}: {inodes} inodes, {base} before the tree"
        );
        assert!(negative <= 20, "round {round}: {negative} negative names");
    }
    m.sh("sync; echo 2 > /proc/sys/vm/drop_caches", 60);
    let out = m.sh("cat $(seq -f \"$M/keep/%g\" 20) | sort | tr '\\n' ' '", 60);
    let mut want: Vec<String> = (1..=20).map(|i| format!("keep{i}")).collect();
    want.sort();
    assert_eq!(out.trim(), want.join(" "));
}
