//! What a long-lived mount keeps in memory follows what exists, not what
//! ever existed: files created and removed round after round, as `cp -r`
//! then `rm -r` do, leave no inodes and no negative entries
//! behind once the kernel forgets them. Driven as the kernel drives the
//! core: every entry it is given is remembered, and forgotten at the end.

mod common;
use common::*;
use cpkfs_fs::Fs;
use std::collections::HashMap;

/// The lookups the kernel would hold, by inode.
#[derive(Default)]
struct Kernel {
    held: HashMap<u64, u64>,
}

impl Kernel {
    fn remember(&mut self, fs: &Fs, ino: u64) -> u64 {
        fs.remember(ino);
        *self.held.entry(ino).or_default() += 1;
        ino
    }

    /// Dentry and inode caches dropped: every lookup forgotten.
    fn forget_all(&mut self, fs: &Fs) {
        for (ino, n) in self.held.drain() {
            fs.forget(ino, n);
        }
    }
}

const FILES: usize = 200;

async fn round(fs: &Fs, k: &mut Kernel) {
    let d = k.remember(fs, fs.mkdir(1, "tree", 0o755, 0, 0).await.unwrap().ino);
    for i in 0..FILES {
        let (e, fh) = fs
            .create(d, &format!("f{i}"), libc::S_IFREG | 0o644, 0, 0)
            .await
            .unwrap();
        k.remember(fs, e.ino);
        fs.write(e.ino, fh, 0, &pattern(100 + i, i as u8))
            .await
            .unwrap();
        fs.release(e.ino, fh).await.unwrap();
    }
    // readdirplus, as `ls -l` or `rm -r` reads the directory.
    for e in list_dir(fs, d).await {
        k.remember(fs, e.ino);
    }
    for i in 0..FILES {
        fs.unlink(d, &format!("f{i}")).await.unwrap();
    }
    fs.rmdir(1, "tree").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_created_and_removed_leave_nothing_behind() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let fs = mount(&client);
    let mut k = Kernel::default();
    for r in 0..3 {
        round(&fs, &mut k).await;
        let held = fs.stats_snapshot().tables;
        assert!(
            held.inodes > FILES as u64,
            "round {r}: the kernel still holds them: {held:?}"
        );
        k.forget_all(&fs);
        let t = fs.stats_snapshot().tables;
        assert_eq!(t.inodes, 1, "round {r}: only the root is left: {t:?}");
        assert_eq!(
            t.negative_names, 1,
            "round {r}: only `tree` itself (its own names went with it): {t:?}"
        );
    }
}

/// An unlinked file stays readable through a descriptor opened before,
/// after the kernel forgot its name, and is dropped at its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_unlinked_file_lives_until_its_release() {
    let emu = emulator().await;
    let client = client(&emu).await;
    let fs = mount(&client);
    let mut k = Kernel::default();
    let data = pattern(3 * BLOCK as usize, 7);
    put_file(&fs, "f", &data).await;
    let ino = k.remember(&fs, fs.lookup(1, "f").await.unwrap().ino);
    let fh = fs.open(ino, false, false).await.unwrap();
    fs.unlink(1, "f").await.unwrap();
    k.forget_all(&fs);
    assert_eq!(fs.stats_snapshot().tables.inodes, 2, "held by the handle");
    let got = fs.read(ino, fh, 0, data.len() as u32).await.unwrap();
    assert_eq!(&got[..], &data[..]);
    assert_eq!(fs.getattr(ino).await.unwrap().attr.nlink, 0);
    fs.release(ino, fh).await.unwrap();
    assert_eq!(fs.stats_snapshot().tables.inodes, 1);
    assert!(
        fs.getattr(ino).await.is_err(),
        "gone with its last reference"
    );
}
