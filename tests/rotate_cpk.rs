//! `cpkfs rotate-cpk`: 200 blobs of mixed sizes under an old key end up under
//! the new key, byte-identical; a run killed midway completes when rerun;
//! --dry-run changes nothing; unencrypted blobs are left alone.

mod common;
use bytes::Bytes;
use common::*;
use cpkfs::blob::*;
use cpkfs_emulator::{start, EmulatorConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const OLD: &str = "MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=";
const NEW: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

fn size_of(i: usize) -> usize {
    // Mixed sizes: empty, tiny, around the 64 KiB block size, several blocks.
    [0, 1, 100, 65_535, 65_536, 65_537, 200_000, 300_001][i % 8]
}

async fn under_key(client: &BlobClient, sha: &str) -> usize {
    let page = client
        .list_blobs(&ListOptions {
            prefix: Some("r/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    page.blobs
        .iter()
        .filter(|b| b.properties.cpk_sha256.as_deref() == Some(sha))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_cpk_rotates_verifies_and_resumes() {
    let emu = start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem.as_ref().unwrap()).unwrap();
    let old = Arc::new(CustomerKey::from_base64(OLD, None).unwrap());
    let new = CustomerKey::from_base64(NEW, None).unwrap();
    let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, "rot", dev_credential());
    cfg.ca_pem = Some(emu.ca_pem.clone().unwrap().into_bytes());
    cfg.cpk = Some(old.clone());
    cfg.retry = fast_retry();
    let client = BlobClient::new(cfg).unwrap();
    client.create_container().await.unwrap();
    let mut md = Metadata::new();
    md.insert("mode".into(), "0640".into());
    for i in 0..200 {
        let opts = CommitOptions {
            content_type: Some("text/x-test".into()),
            metadata: md.clone(),
            // Some carry blob index tags (a mount with attrs_in_tags): a
            // re-key is a commit, which must carry them over.
            tags: (i % 10 == 0).then(|| md.clone()),
            ..Default::default()
        };
        let data = pattern(size_of(i), i as u64);
        if data.len() > 65_536 {
            client
                .upload(
                    &format!("r/b{i:03}"),
                    &data[..],
                    &opts,
                    Some(&old),
                    UploadOptions {
                        block_size: 65_536,
                        concurrency: 2,
                    },
                )
                .await
                .unwrap();
        } else {
            client
                .put_blob(&format!("r/b{i:03}"), Bytes::from(data), &opts, Some(&old))
                .await
                .unwrap();
        }
    }
    client
        .put_blob(
            "r/plain",
            Bytes::from_static(b"plain"),
            &CommitOptions::default(),
            None,
        )
        .await
        .unwrap();

    let key = secret(dir.path(), "acct", DEV_ACCOUNT_KEY);
    let ring = secret(
        dir.path(),
        "ring",
        &format!("{NEW}\n# older keys, for reading\n{OLD}\n"),
    );
    let args = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cpkfs"));
        c.args([
            "rotate-cpk",
            "--endpoint",
            &emu.url,
            "--account",
            DEV_ACCOUNT,
            "--container",
            "rot",
        ])
        .arg("--account-key-file")
        .arg(&key)
        .arg("--cpk-file")
        .arg(&ring)
        .arg("--ca-file")
        .arg(&ca)
        .args(["--block-size", "64K", "--prefix", "r/"])
        .args(extra);
        c
    };

    // Dry run: lists, changes nothing.
    let out = args(&["--dry-run"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("200 blob(s)"), "{text}");
    assert_eq!(text.matches("would re-encrypt").count(), 200);
    assert_eq!(under_key(&client, new.sha256()).await, 0);

    // A run killed midway...
    let mut child = args(&["--concurrency", "1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while under_key(&client, new.sha256()).await < 10 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "rotation made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let partial = under_key(&client, new.sha256()).await;
    assert!(
        partial < 200,
        "the run finished before it could be interrupted"
    );

    // ...completes when rerun, skipping what is done.
    let out = args(&[]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("{} already under it", partial))
            || text.contains("already under it"),
        "{text}"
    );
    assert!(text.contains("0 failed"), "{text}");
    assert_eq!(under_key(&client, new.sha256()).await, 200);
    assert_eq!(under_key(&client, old.sha256()).await, 0);

    // Byte-identical under the new key, properties kept; the old key no longer opens them.
    for i in 0..200 {
        let name = format!("r/b{i:03}");
        let (b, p) = client
            .read_range(
                &name,
                ByteRange::from(0),
                Some(&new),
                &Conditions::default(),
            )
            .await
            .unwrap();
        assert!(
            b[..] == pattern(size_of(i), i as u64)[..],
            "{name} differs after rotation"
        );
        assert_eq!(p.content_type.as_deref(), Some("text/x-test"), "{name}");
        assert_eq!(
            p.metadata.get("mode").map(String::as_str),
            Some("0640"),
            "{name}"
        );
        let tags = client.get_blob_tags(&name).await.unwrap();
        let want = if i % 10 == 0 {
            md.clone()
        } else {
            Metadata::new()
        };
        assert_eq!(tags, want, "{name}: tags after rotation");
        let e = client
            .get_blob_properties(&name, Some(&old), &Conditions::default())
            .await
            .unwrap_err();
        assert!(e.is_code("BlobCustomerSpecifiedEncryptionMismatch"), "{e}");
    }
    // The unencrypted blob is left as it is.
    let p = client
        .get_blob_properties("r/plain", None, &Conditions::default())
        .await
        .unwrap();
    assert!(p.cpk_sha256.is_none());

    // A third run has nothing to do.
    let out = args(&[]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 blob(s) (0 bytes) to re-encrypt"));
}

/// Against a service without version 2026-02-06 (the emulator's `--no-source-cpk`
/// mode) the first server-side re-key is refused: rotate-cpk says so once and
/// streams every blob instead, with the same result. With the feature on (the
/// test above), the service re-keys and rotate-cpk says nothing of the kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_cpk_streams_when_the_service_cannot_rekey() {
    let emu = start(EmulatorConfig {
        source_cpk: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem.as_ref().unwrap()).unwrap();
    let old = Arc::new(CustomerKey::from_base64(OLD, None).unwrap());
    let new = CustomerKey::from_base64(NEW, None).unwrap();
    let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, "rot", dev_credential());
    cfg.ca_pem = Some(emu.ca_pem.clone().unwrap().into_bytes());
    cfg.cpk = Some(old.clone());
    cfg.retry = fast_retry();
    let client = BlobClient::new(cfg).unwrap();
    client.create_container().await.unwrap();
    for i in 0..16 {
        client
            .put_blob(
                &format!("r/b{i:03}"),
                Bytes::from(pattern(size_of(i), i as u64)),
                &CommitOptions::default(),
                Some(&old),
            )
            .await
            .unwrap();
    }
    let key = secret(dir.path(), "acct", DEV_ACCOUNT_KEY);
    let ring = secret(dir.path(), "ring", &format!("{NEW}\n{OLD}\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .args([
            "rotate-cpk",
            "--endpoint",
            &emu.url,
            "--account",
            DEV_ACCOUNT,
            "--container",
            "rot",
            "--block-size",
            "64K",
            "--prefix",
            "r/",
        ])
        .arg("--account-key-file")
        .arg(&key)
        .arg("--cpk-file")
        .arg(&ring)
        .arg("--ca-file")
        .arg(&ca)
        .output()
        .unwrap();
    let (text, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{text}{err}");
    assert!(text.contains("0 failed"), "{text}");
    assert_eq!(
        err.matches("does not re-key blobs itself").count(),
        1,
        "logged once: {err}"
    );
    assert_eq!(under_key(&client, new.sha256()).await, 16);
    for i in 0..16 {
        let (b, _) = client
            .read_range(
                &format!("r/b{i:03}"),
                ByteRange::from(0),
                Some(&new),
                &Conditions::default(),
            )
            .await
            .unwrap();
        assert!(b[..] == pattern(size_of(i), i as u64)[..]);
    }
}
