//! Issue #5's data-safety promises, through real mounts:
//! - two mounts edit one file: the second close fails, both versions exist;
//! - 10 % injected faults of every kind: cp, rsync -a and fsx finish with
//!   zero errors and byte-identical data.

mod common;
#[path = "common/mount.rs"]
mod mount;

use mount::{is_mounted, Mount};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A second `cpkfs mount` of the first one's container, key and emulator.
struct Second {
    child: Child,
    mnt: PathBuf,
}

impl Second {
    fn new(m: &Mount, extra: &[&str]) -> Second {
        let dir = m.scratch.parent().unwrap();
        let mnt = dir.join("mnt2");
        std::fs::create_dir_all(&mnt).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
            .args([
                "mount",
                "--foreground",
                "--endpoint",
                &m.endpoint,
                "--account",
                "devstoreaccount1",
            ])
            .args(["--container", &m.container])
            .arg("--account-key-file")
            .arg(dir.join("account.key"))
            .arg("--cpk-file")
            .arg(dir.join("cpk.key"))
            .arg("--ca-file")
            .arg(dir.join("ca.pem"))
            .args(["--attr-ttl", "0", "--log-file"])
            .arg(dir.join("second.log"))
            .args(extra)
            .arg(&mnt)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while !is_mounted(&mnt) {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "second mount did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Second { child, mnt }
    }
}

impl Drop for Second {
    fn drop(&mut self) {
        for _ in 0..20 {
            if Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.wait();
    }
}

/// Open `path` for writing, write `text`, print "written", wait for `go` to
/// exist, close. Prints "closed ok" or "close failed: <errno name>".
fn slow_writer(path: &Path, text: &str, go: &Path) -> Child {
    let py = r#"
import os, sys, time
p, text, go = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
os.write(fd, text.encode())
print("written", flush=True)
while not os.path.exists(go):
    time.sleep(0.05)
try:
    os.close(fd)
    print("closed ok")
except OSError as e:
    print("close failed: " + os.strerror(e.errno))
"#;
    Command::new("python3")
        .args(["-c", py])
        .arg(path)
        .arg(text)
        .arg(go)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until the writer has opened and written (so its version is pinned).
fn wait_written(child: &mut Child) -> std::io::BufReader<std::process::ChildStdout> {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "written",
        "the writer could not open and write"
    );
    r
}

fn rest_of(mut r: std::io::BufReader<std::process::ChildStdout>, mut child: Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    r.read_to_string(&mut s).unwrap();
    child.wait().unwrap();
    s
}

#[test]
fn two_writers_never_clobber_each_other_silently() {
    let m = Mount::emulator();
    std::fs::write(m.path("doc.txt"), "version 0\n").unwrap();
    let second = Second::new(&m, &[]);
    assert_eq!(
        std::fs::read_to_string(second.mnt.join("doc.txt")).unwrap(),
        "version 0\n"
    );

    // Mount 1 opens and writes but has not closed yet; mount 2 writes and closes.
    let go = m.scratch.join("go");
    let mut a = slow_writer(&m.path("doc.txt"), "version A (mount 1)\n", &go);
    let ra = wait_written(&mut a);
    std::fs::write(second.mnt.join("doc.txt"), "version B (mount 2)\n")
        .expect("the first close to commit wins");
    std::fs::write(&go, "").unwrap();
    let said = rest_of(ra, a);
    assert!(
        said.contains("close failed: Input/output error"),
        "mount 1's close should fail, it said: {said}"
    );

    // Both versions exist: B under the name, A beside it; the log names it.
    let c = m.client(m.key.clone());
    let page = m.block_on(c.list_blobs(&Default::default())).unwrap();
    let names: Vec<&str> = page.blobs.iter().map(|b| b.name.as_str()).collect();
    let conflict = names
        .iter()
        .find(|n| n.starts_with("doc.txt.cpkfs-conflict-"))
        .unwrap_or_else(|| panic!("no conflict copy in {names:?}"));
    let read = |n: &str| {
        String::from_utf8(
            m.block_on(c.read_range(
                n,
                cpkfs::blob::ByteRange::from(0),
                m.key.as_deref(),
                &Default::default(),
            ))
            .unwrap()
            .0
            .to_vec(),
        )
        .unwrap()
    };
    assert_eq!(read("doc.txt"), "version B (mount 2)\n");
    assert_eq!(read(conflict), "version A (mount 1)\n");
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(log.contains(conflict), "the log does not name {conflict}");

    // With conflict=overwrite, last writer wins and close succeeds.
    drop(second);
    let second = Second::new(&m, &["--conflict", "overwrite"]);
    let go2 = m.scratch.join("go2");
    std::thread::sleep(Duration::from_millis(200));
    let mut b = slow_writer(
        &second.mnt.join("doc.txt"),
        "version C (mount 2, overwrite)\n",
        &go2,
    );
    let rb = wait_written(&mut b);
    // Someone else replaces the file meanwhile (over REST: deterministic).
    m.block_on(c.put_blob(
        "doc.txt",
        bytes::Bytes::from_static(b"version D (REST)\n"),
        &Default::default(),
        m.key.as_deref(),
    ))
    .unwrap();
    std::fs::write(&go2, "").unwrap();
    assert!(rest_of(rb, b).contains("closed ok"));
    assert_eq!(read("doc.txt"), "version C (mount 2, overwrite)\n");
}

const FSX_CONFIG: &str = "[weights]\nread = 1.0\nwrite = 1.0\nmapread = 0.3\nmapwrite = 0.3\ntruncate = 1.0\nclose_open = 0.2\nfsync = 0.1\npunch_hole = 0.0\n";

#[test]
fn ten_percent_faults_lose_nothing() {
    // Short waits between attempts keep the test quick; the number of
    // attempts is the default's, so every fault is really survived.
    let m = Mount::new(mount::MountOptions {
        extra: vec!["--retry-max-delay".into(), "0.05".into()],
        ..Default::default()
    });
    m.sh(
        r#"
        mkdir -p $S/src/a/b $S/src/c
        for i in $(seq 1 40); do head -c $((i * 9973)) /dev/urandom > $S/src/a/f$i; done
        for i in $(seq 1 20); do echo "small $i" > $S/src/a/b/s$i; chmod 600 $S/src/a/b/s$i; done
        head -c 5000000 /dev/urandom > $S/src/c/big
        ln -s ../a/f1 $S/src/c/link
        "#,
        60,
    );
    m.set_faults(Some(serde_json::json!({
        "rate": 0.1, "seed": 7, "slow_ms": 20,
        "kinds": ["500", "503", "408", "reset", "slow", "truncate"]
    })));
    m.sh(
        "cp $S/src/c/big $M/big.copy && cmp $S/src/c/big $M/big.copy",
        300,
    );
    m.sh(
        "rsync -a $S/src/ $M/tree/ && diff -r --no-dereference $S/src $M/tree",
        600,
    );
    let fsx = [
        "fsx",
        &format!(
            "{}/.cargo/bin/fsx",
            std::env::var("HOME").unwrap_or_default()
        ),
    ]
    .into_iter()
    .find(|p| {
        Command::new(p)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
    .expect("fsx not installed (cargo install --locked fsx --version 0.3.2)")
    .to_string();
    std::fs::write(m.scratch.join("fsx.toml"), FSX_CONFIG).unwrap();
    let out = m.sh(
        &format!("{fsx} -N 10000 -S 42 -f $S/fsx.toml -P $S/fsx-art $M/fsx.bin 2>&1 | tail -5"),
        900,
    );
    assert!(
        out.contains("All operations completed A-OK!"),
        "fsx under faults:\n{out}\n{}",
        m.log_tail()
    );
    let injected = m.stats()["faults_injected"].as_u64().unwrap_or(0);
    assert!(
        injected > 50,
        "only {injected} faults were injected: the test proves little"
    );
    m.set_faults(None);
    // Through a fresh mount (no caches), everything is still identical.
    let mut m = m;
    m.remount();
    m.sh(
        "cmp $S/src/c/big $M/big.copy && diff -r --no-dereference $S/src $M/tree",
        300,
    );
}
