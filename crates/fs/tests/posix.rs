//! POSIX behaviours of the filesystem core, driven directly (no FUSE, no
//! kernel) against the in-process emulator with a customer-provided key:
//! special files, directory times on entry changes, atime/mtime/ctime,
//! 64-bit times, unlink while open. A second `Fs` on the same container
//! stands for a remount: it knows only what the service stores. Through the
//! kernel, the same is checked by tests/mount_posix.rs at the root and by
//! pjdfstest (scripts/posix-conformance).

use cpkfs_blob::*;
use cpkfs_emulator::{EmulatorConfig, EmulatorHandle};
use cpkfs_fs::attr::{Kind, META_FILE_TYPE, META_RDEV};
use cpkfs_fs::{Fs, FsConfig, FsError, KeyRing, SetAttr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const ROOT: u64 = 1;

struct World {
    emu: EmulatorHandle,
    container: String,
    key: CustomerKey,
    admin: reqwest::Client,
}

impl World {
    async fn new() -> World {
        let emu = cpkfs_emulator::start(EmulatorConfig::default())
            .await
            .unwrap();
        let admin = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .add_root_certificate(
                reqwest::Certificate::from_pem(emu.ca_pem.as_deref().unwrap().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        // Any fixed key will do: each test has its own emulator.
        let w = World {
            emu,
            container: "posix".into(),
            key: CustomerKey::from_raw([0x5a; 32]),
            admin,
        };
        w.rest(false).create_container().await.unwrap();
        w
    }

    fn client(&self, cpk: Option<&CustomerKey>) -> BlobClient {
        let cred = Credential::SharedKey(Arc::new(
            SharedKeyCredential::new(
                DEV_ACCOUNT,
                vec![AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
            )
            .unwrap(),
        ));
        let mut cfg = ClientConfig::new(&self.emu.url, DEV_ACCOUNT, &self.container, cred);
        cfg.ca_pem = self.emu.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
        cfg.cpk = cpk.map(|k| Arc::new(k.clone()));
        cfg.retry.base_delay = Duration::from_millis(10);
        BlobClient::new(cfg).unwrap()
    }

    /// A fresh mount of the container: nothing cached.
    fn mount(&self) -> Arc<Fs> {
        self.mount_with(FsConfig::default())
    }

    /// The mount's key comes in its ring; the client carries none.
    fn mount_with(&self, cfg: FsConfig) -> Arc<Fs> {
        let cfg = FsConfig {
            keyring: KeyRing::new(vec![Arc::new(self.key.clone())]),
            ..cfg
        };
        Fs::new(self.client(None), cfg)
    }

    /// Plain REST access behind the mount's back.
    fn rest(&self, key: bool) -> BlobClient {
        self.client(key.then_some(&self.key))
    }

    async fn reset_stats(&self) {
        let url = format!("{}/__admin/stats", self.emu.url);
        let r = self.admin.delete(url).send().await.unwrap();
        assert!(r.status().is_success());
    }

    /// Requests of one operation since the last reset.
    async fn count(&self, op: &str) -> u64 {
        let url = format!("{}/__admin/stats", self.emu.url);
        let r = self.admin.get(url).send().await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
        v["requests"][op].as_u64().unwrap_or(0)
    }
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

async fn write_file(fs: &Fs, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (e, fh) = fs.create(parent, name, 0o644, 0, 0).await.unwrap();
    fs.write(e.ino, fh, 0, data).await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
    e.ino
}

async fn list(fs: &Fs, dir: u64) -> Vec<(String, Kind)> {
    let fh = fs.opendir(dir).unwrap();
    let mut out = vec![];
    let mut off = 0;
    loop {
        let page = fs.readdir(dir, fh, off).await.unwrap();
        if page.is_empty() {
            break;
        }
        for e in page {
            off = e.next_offset;
            if e.name != "." && e.name != ".." {
                out.push((e.name, e.attr.kind));
            }
        }
    }
    fs.releasedir(fh);
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn special_files_round_trip_through_a_remount_and_over_rest() {
    let w = World::new().await;
    let fs = w.mount();
    let d = fs.mkdir(ROOT, "dev", 0o755, 0, 0).await.unwrap().ino;
    let kinds = [
        ("fifo", Kind::Fifo, 0u32),
        ("chr", Kind::CharDev, (1 << 8) | 3),
        ("blk", Kind::BlockDev, (8 << 8) | 1),
        ("sock", Kind::Socket, 0),
    ];
    for (name, kind, rdev) in kinds {
        let e = fs
            .mknod(d, name, kind, 0o640, rdev, 1000, 100)
            .await
            .unwrap();
        assert_eq!((e.attr.kind, e.attr.perm, e.attr.rdev), (kind, 0o640, rdev));
        assert_eq!(e.attr.size, 0);
        // A second mknod of the name: EEXIST.
        let again = fs.mknod(d, name, kind, 0o640, rdev, 0, 0).await;
        assert!(matches!(again, Err(FsError::Exists)), "{again:?}");
    }
    // Over REST: zero-byte blobs, no key needed (like directory markers),
    // metadata naming type, mode, owner and rdev.
    let rest = w.rest(false);
    for (name, _, rdev) in kinds {
        let p = rest
            .get_blob_properties(&format!("dev/{name}"), None, &Conditions::default())
            .await
            .unwrap();
        assert_eq!(p.content_length, 0);
        let md = &p.metadata;
        let want = match name {
            "fifo" => "fifo",
            "chr" => "char",
            "blk" => "block",
            _ => "socket",
        };
        assert_eq!(md.get(META_FILE_TYPE).map(String::as_str), Some(want));
        assert_eq!(md.get("mode").map(String::as_str), Some("0640"));
        assert_eq!(md.get("uid").map(String::as_str), Some("1000"));
        if rdev != 0 {
            assert_eq!(md.get(META_RDEV), Some(&rdev.to_string()));
        }
    }
    // chmod, chown, rename, unlink through the core.
    let fifo = fs.lookup(d, "fifo").await.unwrap();
    fs.setattr(
        fifo.ino,
        SetAttr {
            mode: Some(0o600),
            uid: Some(7),
            gid: Some(8),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    fs.rename(d, "chr", d, "chr2", false).await.unwrap();
    fs.unlink(d, "sock").await.unwrap();

    // A remount sees the same thing, from listings and from lookups.
    let fs2 = w.mount();
    let d2 = fs2.lookup(ROOT, "dev").await.unwrap().ino;
    assert_eq!(
        list(&fs2, d2).await,
        vec![
            ("blk".to_string(), Kind::BlockDev),
            ("chr2".to_string(), Kind::CharDev),
            ("fifo".to_string(), Kind::Fifo),
        ]
    );
    let f = fs2.lookup(d2, "fifo").await.unwrap().attr;
    assert_eq!((f.kind, f.perm, f.uid, f.gid), (Kind::Fifo, 0o600, 7, 8));
    let c = fs2.lookup(d2, "chr2").await.unwrap().attr;
    assert_eq!(
        (c.kind, c.rdev, c.perm),
        (Kind::CharDev, (1 << 8) | 3, 0o640)
    );
    let b = fs2.lookup(d2, "blk").await.unwrap().attr;
    assert_eq!((b.kind, b.rdev), (Kind::BlockDev, (8 << 8) | 1));
    assert!(matches!(
        fs2.lookup(d2, "sock").await,
        Err(FsError::NotFound)
    ));
    // The kernel does their I/O; the core refuses to open them.
    assert!(fs2
        .open(f_ino(&fs2, d2, "fifo").await, false, false)
        .await
        .is_err());
}

async fn f_ino(fs: &Fs, dir: u64, name: &str) -> u64 {
    fs.lookup(dir, name).await.unwrap().ino
}

#[tokio::test]
async fn directory_times_move_on_entry_changes_without_extra_requests() {
    let w = World::new().await;
    let fs = w.mount();
    let d = fs.mkdir(ROOT, "d", 0o755, 0, 0).await.unwrap().ino;
    let sub = fs.mkdir(ROOT, "other", 0o755, 0, 0).await.unwrap().ino;
    let mut last = fs.getattr(d).await.unwrap().attr;
    let step = || tokio::time::sleep(Duration::from_millis(20));
    let mut check = |what: &str, a: cpkfs_fs::attr::Attr| {
        assert!(a.mtime > last.mtime, "{what}: mtime did not move");
        assert!(a.ctime > last.ctime, "{what}: ctime did not move");
        last = a;
    };

    step().await;
    w.reset_stats().await;
    write_file(&fs, d, "f", b"x").await;
    // The create cost its commit only: no marker rewrite per entry change.
    assert_eq!(w.count("PutBlob").await, 1);
    check("create", fs.getattr(d).await.unwrap().attr);
    step().await;
    fs.mkdir(d, "sub", 0o755, 0, 0).await.unwrap();
    check("mkdir", fs.getattr(d).await.unwrap().attr);
    step().await;
    fs.symlink(d, "l", "f", 0, 0).await.unwrap();
    check("symlink", fs.getattr(d).await.unwrap().attr);
    step().await;
    fs.mknod(d, "p", Kind::Fifo, 0o644, 0, 0, 0).await.unwrap();
    check("mknod", fs.getattr(d).await.unwrap().attr);
    step().await;
    fs.rename(d, "f", d, "g", false).await.unwrap();
    check("rename within", fs.getattr(d).await.unwrap().attr);
    step().await;
    let before_other = fs.getattr(sub).await.unwrap().attr;
    fs.rename(d, "g", sub, "g", false).await.unwrap();
    check("rename out", fs.getattr(d).await.unwrap().attr);
    assert!(fs.getattr(sub).await.unwrap().attr.mtime > before_other.mtime);
    step().await;
    fs.unlink(d, "l").await.unwrap();
    check("unlink", fs.getattr(d).await.unwrap().attr);
    step().await;
    fs.rmdir(d, "sub").await.unwrap();
    check("rmdir", fs.getattr(d).await.unwrap().attr);

    // A refresh from the service (attributes expire) does not take the
    // times back: the marker still holds the mkdir times.
    let fresh = w.mount_with(FsConfig {
        attr_ttl: Duration::ZERO,
        ..Default::default()
    });
    let fd = fresh.lookup(ROOT, "d").await.unwrap().ino;
    let stored = fresh.getattr(fd).await.unwrap().attr;
    assert!(stored.mtime < last.mtime, "not stored per entry change");
    write_file(&fresh, fd, "h", b"y").await;
    let moved = fresh.getattr(fd).await.unwrap().attr;
    let again = fresh.getattr(fd).await.unwrap().attr; // re-learnt (TTL 0)
    assert_eq!(moved.mtime, again.mtime);
    assert!(again.mtime > stored.mtime);

    // Unmount stores them (one marker write per changed directory).
    assert!(fs.flush_all().await.is_empty());
    let remount = w.mount();
    let rd = remount.lookup(ROOT, "d").await.unwrap().attr;
    assert_eq!((rd.mtime, rd.ctime), (last.mtime, last.ctime));
}

#[tokio::test]
async fn atime_mtime_ctime_are_independent_exact_and_64_bit() {
    let w = World::new().await;
    let fs = w.mount();
    let ino = write_file(&fs, ROOT, "t", b"hello").await;
    // utimensat/00.t: atime 1900000000, mtime 1950000000.
    let e = fs
        .setattr(
            ino,
            SetAttr {
                atime: Some(at(1_900_000_000, 0)),
                mtime: Some(at(1_950_000_000, 0)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(e.attr.atime, at(1_900_000_000, 0));
    assert_eq!(e.attr.mtime, at(1_950_000_000, 0));
    // Beyond 2^32 s, with nanoseconds; only atime changes (UTIME_OMIT mtime).
    fs.setattr(
        ino,
        SetAttr {
            atime: Some(at(4_294_967_296, 123_456_789)),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let remount = w.mount();
    let a = remount.lookup(ROOT, "t").await.unwrap().attr;
    assert_eq!(a.atime, at(4_294_967_296, 123_456_789));
    assert_eq!(a.mtime, at(1_950_000_000, 0));

    // ctime moves on chmod, chown, utimens, write and truncate — and is
    // stored exactly (a remount sees what stat showed).
    let step = || tokio::time::sleep(Duration::from_millis(20));
    let ops: [(&str, SetAttr); 4] = [
        (
            "chmod",
            SetAttr {
                mode: Some(0o600),
                ..Default::default()
            },
        ),
        (
            "chown",
            SetAttr {
                uid: Some(5),
                gid: Some(6),
                ..Default::default()
            },
        ),
        (
            "utimens",
            SetAttr {
                mtime: Some(at(100, 0)),
                ..Default::default()
            },
        ),
        (
            "truncate",
            SetAttr {
                size: Some(2),
                ..Default::default()
            },
        ),
    ];
    let mut last = fs.getattr(ino).await.unwrap().attr.ctime;
    for (what, set) in ops {
        step().await;
        let c = fs.setattr(ino, set).await.unwrap().attr.ctime;
        assert!(c > last, "{what}: ctime did not move");
        last = c;
        let r = w.mount().lookup(ROOT, "t").await.unwrap().attr;
        assert_eq!(r.ctime, c, "{what}: stored ctime");
    }
    step().await;
    let fh = fs.open(ino, true, false).await.unwrap();
    fs.write(ino, fh, 0, b"ab").await.unwrap();
    let c = fs.getattr(ino).await.unwrap().attr.ctime;
    assert!(c > last, "write: ctime did not move");
    fs.release(ino, fh).await.unwrap();
    let r = w.mount().lookup(ROOT, "t").await.unwrap().attr;
    assert_eq!(r.ctime, c, "write: stored ctime");
    // The mount is noatime: reading leaves atime alone.
    let fh = fs.open(ino, false, false).await.unwrap();
    assert_eq!(&fs.read(ino, fh, 0, 10).await.unwrap()[..], b"ab");
    fs.release(ino, fh).await.unwrap();
    assert_eq!(
        fs.getattr(ino).await.unwrap().attr.atime,
        at(4_294_967_296, 123_456_789)
    );
}

#[tokio::test]
async fn unlink_while_open_keeps_the_data_for_the_descriptor() {
    let w = World::new().await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    write_file(&w.mount(), ROOT, "u", &data).await;
    // A fresh mount, so the read really goes to the service.
    let fs = w.mount();
    let ino = fs.lookup(ROOT, "u").await.unwrap().ino;
    let fh = fs.open(ino, false, false).await.unwrap();
    let w_fh = fs.open(ino, true, false).await.unwrap();
    fs.unlink(ROOT, "u").await.unwrap();
    // fstat of the open descriptor: nlink 0.
    assert_eq!(fs.getattr(ino).await.unwrap().attr.nlink, 0);
    // The name is gone for this mount (other clients see the blob until the
    // last descriptor is released: SEMANTICS.md)…
    assert!(matches!(fs.lookup(ROOT, "u").await, Err(FsError::NotFound)));
    assert!(list(&fs, ROOT).await.is_empty());
    // …while the descriptors keep reading and writing it.
    let got = fs.read(ino, fh, 0, 200_000).await.unwrap();
    assert!(got[..] == data[..], "read after unlink");
    fs.write(ino, w_fh, 0, b"NEW").await.unwrap();
    assert_eq!(&fs.read(ino, fh, 0, 3).await.unwrap()[..], b"NEW");
    fs.flush(ino, w_fh).await.unwrap();
    fs.release(ino, w_fh).await.unwrap();
    let rest = w.rest(true);
    let exists = |rest: BlobClient| async move {
        match rest
            .get_blob_properties("u", Some(&key_of(&rest)), &Conditions::default())
            .await
        {
            Ok(p) => Some(p.content_length),
            Err(e) if e.is_not_found() => None,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(exists(rest.clone()).await, Some(100_000), "kept while open");
    fs.release(ino, fh).await.unwrap();
    assert_eq!(
        exists(rest.clone()).await,
        None,
        "deleted at the last release"
    );

    // A name re-used while the unlinked file is still open: the new file
    // is stored, and the old descriptor's release leaves it alone.
    write_file(&fs, ROOT, "u", b"old").await;
    let ino = fs.lookup(ROOT, "u").await.unwrap().ino;
    let fh = fs.open(ino, false, false).await.unwrap();
    fs.unlink(ROOT, "u").await.unwrap();
    write_file(&fs, ROOT, "u", b"other").await;
    fs.release(ino, fh).await.unwrap();
    assert_eq!(exists(rest.clone()).await, Some(5));
    let names: Vec<String> = list(&w.mount(), ROOT)
        .await
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, vec!["u".to_string()]);

    // Unlinked with nothing open: gone at once.
    fs.unlink(ROOT, "u").await.unwrap();
    assert_eq!(exists(rest).await, None);
}

/// The key a REST client was configured with.
fn key_of(c: &BlobClient) -> CustomerKey {
    c.cpk().map(|k| (**k).clone()).expect("a keyed client")
}
