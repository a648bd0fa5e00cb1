//! `Fs` on a fresh container of the in-process emulator, with a
//! customer-provided key, and the emulator's request counters.
#![allow(dead_code)]

use cpkfs_blob::*;
use cpkfs_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
use cpkfs_fs::{Fs, FsConfig, KeyRing};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Small blocks, so that a few KiB span several of them.
pub const BLOCK: u64 = 4096;

pub async fn emulator() -> EmulatorHandle {
    emulator::start(EmulatorConfig::default()).await.unwrap()
}

/// A client with its own new container (names unique within the process).
pub async fn client(emu: &EmulatorHandle) -> BlobClient {
    static N: AtomicU64 = AtomicU64::new(0);
    let container = format!(
        "fs{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let cred = Credential::SharedKey(Arc::new(
        SharedKeyCredential::new(
            DEV_ACCOUNT,
            vec![AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
        )
        .unwrap(),
    ));
    let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, &container, cred);
    cfg.ca_pem = emu.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
    cfg.retry.base_delay = Duration::from_millis(10);
    let client = BlobClient::new(cfg).unwrap();
    client.create_container().await.unwrap();
    client
}

/// The configuration every test mount starts from: test-sized blocks, a
/// customer-provided key, attributes and listings trusted for 10 minutes.
fn config() -> FsConfig {
    FsConfig {
        block_size: BLOCK,
        attr_ttl: Duration::from_secs(600),
        keyring: KeyRing::new(vec![Arc::new(CustomerKey::from_raw([9; 32]))]),
        ..FsConfig::default()
    }
}

/// A new mount of `client`'s container with a customer-provided key:
/// nothing cached. Attributes and listings are trusted for 10 minutes, so a
/// test sees the mount's own view.
pub fn mount(client: &BlobClient) -> Arc<Fs> {
    Fs::new(client.clone(), config())
}

/// The emulator's request counters (`GET /__admin/stats`), and a reset.
pub struct Stats {
    http: reqwest::Client,
    url: String,
}

impl Stats {
    pub fn new(emu: &EmulatorHandle) -> Stats {
        let mut b = reqwest::Client::builder().use_rustls_tls().no_proxy();
        if let Some(pem) = &emu.ca_pem {
            b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
        }
        Stats {
            http: b.build().unwrap(),
            url: format!("{}/__admin/stats", emu.url),
        }
    }

    /// Requests by operation name since the last reset.
    pub async fn requests(&self) -> serde_json::Value {
        let text = self
            .http
            .get(&self.url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub async fn reset(&self) {
        let r = self.http.delete(&self.url).send().await.unwrap();
        assert!(r.status().is_success());
    }
}

/// Deterministic bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The whole content of `name` in the root, read through a fresh read-only
/// handle of `fs`.
pub async fn read_all(fs: &Fs, name: &str) -> Vec<u8> {
    let e = fs.lookup(1, name).await.unwrap();
    let fh = fs.open(e.ino, false, false).await.unwrap();
    let data = fs.read(e.ino, fh, 0, e.attr.size as u32 + 1).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
    data.to_vec()
}

/// Create `name` in the root with `data`, committed (close).
pub async fn put_file(fs: &Fs, name: &str, data: &[u8]) {
    let (e, fh) = fs
        .create(1, name, libc::S_IFREG | 0o644, 0, 0)
        .await
        .unwrap();
    fs.write(e.ino, fh, 0, data).await.unwrap();
    fs.flush(e.ino, fh).await.unwrap();
    fs.release(e.ino, fh).await.unwrap();
}

/// Like [`mount`], with attributes and listings trusted for `ttl` only.
pub fn mount_with_ttl(client: &BlobClient, ttl: Duration) -> Arc<Fs> {
    Fs::new(
        client.clone(),
        FsConfig {
            attr_ttl: ttl,
            ..config()
        },
    )
}

/// Like [`mount`], with a block cache of `blocks` blocks.
pub fn mount_with_cache(client: &BlobClient, blocks: u64) -> Arc<Fs> {
    Fs::new(
        client.clone(),
        FsConfig {
            cache_size: blocks * BLOCK,
            ..config()
        },
    )
}

/// Like [`mount_with_ttl`], listing `page` entries per List Blobs page.
pub fn mount_with_pages(client: &BlobClient, ttl: Duration, page: u32) -> Arc<Fs> {
    Fs::new(
        client.clone(),
        FsConfig {
            attr_ttl: ttl,
            list_page_size: page,
            ..config()
        },
    )
}

/// Like [`mount`], keeping CPK files' attributes in blob index tags too
/// (`attrs_in_tags`) or not.
pub fn mount_attrs_in_tags(client: &BlobClient, on: bool) -> Arc<Fs> {
    Fs::new(
        client.clone(),
        FsConfig {
            attrs_in_tags: on,
            ..config()
        },
    )
}

/// Every entry of directory `ino` (without `.` and `..`), read to the end.
pub async fn list_dir(fs: &Fs, ino: u64) -> Vec<cpkfs_fs::dir::DirEntry> {
    let fh = fs.opendir(ino).unwrap();
    let mut all = vec![];
    let mut offset = 0;
    loop {
        let batch = fs.readdir(ino, fh, offset).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.next_offset;
        all.extend(batch);
    }
    fs.releasedir(fh);
    all.retain(|e| e.name != "." && e.name != "..");
    all
}
