//! Test 8: the non-CPK subset against Microsoft's Azurite over plain http
//! (mount without --cpk-file): cp round trip, mkdir -p / rm -r, rename, ls.
//! Needs `azurite-blob` (npm install -g azurite@3.37.0) or $AZURITE_BLOB.

mod common;
#[path = "common/mount.rs"]
mod mount;

use common::pattern;
use cpkfs::blob::Conditions;
use mount::{Mount, MountOptions, Service};
use std::time::Instant;

#[test]
fn azurite_without_cpk() {
    let t0 = Instant::now();
    let mut m = Mount::new(MountOptions {
        service: Service::Azurite,
        ..Default::default()
    });
    assert!(m.key.is_none());
    // cp round trip, small and multi-block (1 MiB blocks).
    std::fs::write(m.scratch.join("small"), b"hello azurite\n").unwrap();
    std::fs::write(m.scratch.join("big"), pattern(3 * 1024 * 1024 + 17, 5)).unwrap();
    m.sh("mkdir -p $M/a/b/c && cp small big $M/a/b/c/", 120);
    m.sh("cmp small $M/a/b/c/small && cmp big $M/a/b/c/big", 60);
    // The blobs are plain, byte-identical over REST.
    let c = m.client(None);
    let (data, props) = m.block_on(async {
        let mut dl = c
            .get_blob("a/b/c/big", None, None, &Conditions::default())
            .await
            .unwrap();
        let mut v = Vec::new();
        while let Some(ch) = dl.next_chunk().await.unwrap() {
            v.extend_from_slice(&ch);
        }
        (v, dl.properties)
    });
    assert!(
        data == pattern(3 * 1024 * 1024 + 17, 5),
        "bytes over REST differ"
    );
    assert_eq!(props.cpk_sha256, None);

    // rename of a file and of a directory; ls shows the result.
    m.sh("mv $M/a/b/c/small $M/a/small2 && mv $M/a/b $M/a/moved", 60);
    let ls = m.sh("ls -R $M/a", 30);
    assert!(ls.contains("small2"), "{ls}");
    assert!(!ls.contains("/a/b:"), "{ls}");
    m.sh("cmp big $M/a/moved/c/big && cmp small $M/a/small2", 60);
    let sizes = m.sh("stat -c '%s %n' $M/a/small2 $M/a/moved/c/big", 30);
    assert_eq!(
        sizes,
        format!(
            "14 {0}/a/small2\n{1} {0}/a/moved/c/big\n",
            m.mnt.display(),
            3 * 1024 * 1024 + 17
        )
    );
    // Appends and chmod survive a remount (they live in the service).
    m.sh("echo more >> $M/a/small2 && chmod 600 $M/a/small2", 30);
    m.remount();
    assert_eq!(
        m.sh("cat $M/a/small2 && stat -c %a $M/a/small2", 30),
        "hello azurite\nmore\n600\n"
    );
    // rm -r empties it all.
    m.sh("rm -r $M/a && test ! -e $M/a", 60);
    assert_eq!(m.sh("ls -A $M", 30), "");
    eprintln!("azurite_without_cpk: {:?}", t0.elapsed());
}
