//! The official Python SDK (azure-storage-blob 12.31.1) and our client
//! against the emulator over HTTPS with a customer-provided key: each reads
//! what the other wrote, byte for byte. The SDK side is tests/python/sdk_cpk.py.

mod common;
use common::emu::{drain, random_key, Emu};
use common::*;
use cpkfs::blob::*;
use cpkfs_emulator::DEV_KEY1;
use std::path::Path;

struct Sdk<'a> {
    emu: &'a Emu,
    ca: std::path::PathBuf,
    container: String,
    key: &'a CustomerKey,
    other: &'a CustomerKey,
}

impl Sdk<'_> {
    /// Run a subcommand of sdk_cpk.py; panics with its output on failure.
    async fn run(&self, args: &[&str]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_cpk.py");
        let out = tokio::process::Command::new("python3")
            .arg(&script)
            .args(args)
            .env(
                "EMU_ACCOUNT_URL",
                format!("{}/{}", self.emu.url, DEV_ACCOUNT),
            )
            .env("EMU_CA_FILE", &self.ca)
            .env("EMU_ACCOUNT", DEV_ACCOUNT)
            .env("EMU_ACCOUNT_KEY", DEV_KEY1)
            .env("EMU_CONTAINER", &self.container)
            .env("CPK", self.key.key_base64().expose())
            .env("CPK_SHA256", self.key.sha256())
            .env("CPK_OTHER", self.other.key_base64().expose())
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .output()
            .await
            .expect("python3 runs (install with scripts/setup)");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "sdk_cpk.py {args:?} failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_and_client_interoperate_with_cpk() {
    let emu = Emu::start().await;
    let c0 = emu.new_container("sdk").await;
    let key = random_key();
    let other = random_key();
    let c = emu.client(c0.container(), Some(&key));
    let dir = tempfile::tempdir().unwrap();
    let sdk = Sdk {
        emu: &emu,
        ca: emu.ca_file(),
        container: c.container().to_string(),
        key: &key,
        other: &other,
    };
    let file = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };

    // (a) The SDK uploads (Put Blob, and Put Block + Put Block List) with CPK
    // and metadata; our client reads the same bytes and sees the key hash.
    let single = pattern(1024 * 1024 + 5, 1);
    let staged = pattern(3 * 1024 * 1024 + 11, 2);
    emu.reset_stats().await;
    sdk.run(&["upload-single", "sdk/single.bin", &file("single", &single)])
        .await;
    sdk.run(&[
        "upload-staged",
        "sdk/staged.bin",
        &file("staged", &staged),
        "3",
    ])
    .await;
    let stats = emu.stats().await;
    assert_eq!(stats["requests"]["PutBlob"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["requests"]["PutBlock"].as_u64(), Some(3), "{stats}");
    assert_eq!(
        stats["requests"]["PutBlockList"].as_u64(),
        Some(1),
        "{stats}"
    );
    for (name, data) in [("sdk/single.bin", &single), ("sdk/staged.bin", &staged)] {
        let p = c
            .get_blob_properties(name, Some(&key), &Conditions::default())
            .await
            .unwrap();
        assert_eq!(p.cpk_sha256.as_deref(), Some(key.sha256()), "{name}");
        assert_eq!(p.content_length, data.len() as u64, "{name}");
        assert_eq!(p.metadata.get("origin").map(String::as_str), Some("sdk"));
        assert_eq!(p.metadata.get("mode").map(String::as_str), Some("0644"));
        let got = drain(
            c.get_blob(name, None, Some(&key), &Conditions::default())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(got == *data, "{name}: bytes differ");
        let (part, _) = c
            .read_range(
                name,
                ByteRange::new(1000, 70_000),
                Some(&key),
                &Conditions::default(),
            )
            .await
            .unwrap();
        assert!(part[..] == data[1000..70_000], "{name}: range differs");
        // And the SDK's blob really is CPK: no key → 409.
        let e = c
            .get_blob_properties(name, None, &Conditions::default())
            .await
            .unwrap_err();
        assert!(e.is_code("BlobUsesCustomerSpecifiedEncryption"), "{e}");
    }
    let bl = c
        .get_block_list("sdk/staged.bin", BlockListType::Committed)
        .await
        .unwrap();
    assert_eq!(bl.committed.len(), 3);

    // (b) Our client uploads several blocks; the SDK downloads with the key.
    let ours = pattern(5 * 1024 * 1024 + 123, 3);
    emu.reset_stats().await;
    c.upload(
        "rust/multi.bin",
        &ours[..],
        &CommitOptions {
            metadata: [("origin".to_string(), "rust".to_string())].into(),
            ..Default::default()
        },
        Some(&key),
        UploadOptions {
            block_size: 1024 * 1024,
            concurrency: 4,
        },
    )
    .await
    .unwrap();
    assert_eq!(emu.count("PutBlock").await, 6);
    assert_eq!(emu.count("PutBlockList").await, 1);
    let out = sdk
        .run(&["download", "rust/multi.bin", &file("ours", &ours)])
        .await;
    assert!(out.contains(&format!("ok {} bytes", ours.len())), "{out}");
    assert!(out.contains("'origin': 'rust'"), "{out}");
    assert!(
        emu.count("GetBlob").await >= 6,
        "the SDK did not read in ranges"
    );

    // (c) The SDK without a key / with another key gets the CPK error codes.
    sdk.run(&["errors", "rust/multi.bin"]).await;
    sdk.run(&["errors", "sdk/single.bin"]).await;

    // (d) The SDK's listing shows the key hash of every CPK blob.
    sdk.run(&[
        "list",
        "",
        "sdk/single.bin",
        "sdk/staged.bin",
        "rust/multi.bin",
    ])
    .await;
}

/// Server-side re-keying through the SDK (service version 2026-02-06): the SDK's
/// `upload_blob_from_url` / `stage_block_from_url` with `source_cpk=` and `cpk=`
/// against the emulator, from a blob our client wrote; our client reads the result
/// with the new key. No blob bytes pass through either client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_rekeys_from_url_with_source_key() {
    let emu = Emu::start().await;
    let c0 = emu.new_container("sdkurl").await;
    let key = random_key();
    let other = random_key();
    let c = emu.client(c0.container(), Some(&key));
    let dir = tempfile::tempdir().unwrap();
    let sdk = Sdk {
        emu: &emu,
        ca: emu.ca_file(),
        container: c.container().to_string(),
        key: &key,
        other: &other,
    };
    let data = pattern(3 * 1024 * 1024 + 77, 9);
    c.upload(
        "rust/src.bin",
        &data[..],
        &CommitOptions::default(),
        Some(&key),
        UploadOptions {
            block_size: 1024 * 1024,
            concurrency: 2,
        },
    )
    .await
    .unwrap();
    let path = dir.path().join("src");
    std::fs::write(&path, &data).unwrap();
    emu.reset_stats().await;
    let out = sdk
        .run(&[
            "rekey-from-url",
            "rust/src.bin",
            "sdk/rekeyed.bin",
            path.to_str().unwrap(),
        ])
        .await;
    assert!(out.contains("ok re-keyed"), "{out}");
    let stats = emu.stats().await;
    assert!(emu.count("PutBlobFromUrl").await >= 2, "{stats}");
    assert!(emu.count("PutBlockFromUrl").await >= 3, "{stats}");
    for name in ["sdk/rekeyed.bin", "sdk/rekeyed.bin.staged"] {
        let p = c
            .get_blob_properties(name, Some(&other), &Conditions::default())
            .await
            .unwrap();
        assert_eq!(p.cpk_sha256.as_deref(), Some(other.sha256()), "{name}");
        let got = drain(
            c.get_blob(name, None, Some(&other), &Conditions::default())
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert!(got == data, "{name}: bytes differ");
        let e = c
            .get_blob_properties(name, Some(&key), &Conditions::default())
            .await
            .unwrap_err();
        assert!(e.is_code("BlobCustomerSpecifiedEncryptionMismatch"), "{e}");
    }

    // The other way: our client re-keys the SDK's output back to `key` on the
    // server (Put Blob From URL; Put Block From URL in two ranges + Put Block
    // List), and the SDK downloads both with `key`.
    let source = CopySource {
        name: "sdk/rekeyed.bin",
        key: Some(&other),
        if_match: None,
    };
    emu.reset_stats().await;
    let (w, _) = c
        .put_blob_from_url(
            "rust/back.bin",
            &source,
            &CommitOptions::default(),
            Some(&key),
        )
        .await
        .unwrap();
    assert_eq!(w.cpk_sha256.as_deref(), Some(key.sha256()));
    let ids = BlockIdGen::new();
    let half = data.len() as u64 / 2;
    let mut refs = vec![];
    for (i, r) in [
        ByteRange::new(0, half),
        ByteRange::new(half, data.len() as u64),
    ]
    .into_iter()
    .enumerate()
    {
        let id = ids.id(i as u64);
        c.put_block_from_url("rust/back-staged.bin", &id, &source, r, Some(&key))
            .await
            .unwrap();
        refs.push(BlockRef::Uncommitted(id));
    }
    c.put_block_list(
        "rust/back-staged.bin",
        &refs,
        &CommitOptions::default(),
        Some(&key),
    )
    .await
    .unwrap();
    let st = emu.stats().await;
    assert_eq!(emu.count("PutBlobFromUrl").await, 1, "{st}");
    assert_eq!(emu.count("PutBlockFromUrl").await, 2, "{st}");
    assert!(
        st["bytes_in"].as_u64().unwrap() < 64 * 1024,
        "blob bytes went through the client: {st}"
    );
    for name in ["rust/back.bin", "rust/back-staged.bin"] {
        let out = sdk.run(&["download", name, path.to_str().unwrap()]).await;
        assert!(out.starts_with("ok "), "{name}: {out}");
    }
}
