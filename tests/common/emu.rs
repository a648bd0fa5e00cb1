//! The bundled emulator for tests: in-process (`Emu::start`) or as the
//! `cpkfs-emulator` binary in its own process (`Emu::spawn`), plus its admin
//! endpoints (stats, faults, key regeneration).

use super::{fast_retry, unique};
use cpkfs::blob::*;
use cpkfs_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::Duration;

enum Running {
    InProcess(EmulatorHandle),
    Process(Child),
}

pub struct Emu {
    running: Option<Running>,
    /// Base URL, e.g. `https://127.0.0.1:PORT` (the client appends the account).
    pub url: String,
    /// The emulator CA (None for plain http).
    pub ca_pem: Option<String>,
    admin: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// A random AES-256 customer-provided key.
pub fn random_key() -> CustomerKey {
    let mut raw = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut raw[..]);
    CustomerKey::from_raw(raw)
}

fn admin_client(ca_pem: Option<&str>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .timeout(Duration::from_secs(60));
    if let Some(pem) = ca_pem {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

impl Emu {
    /// In-process emulator, default config (https, dev account with two keys).
    pub async fn start() -> Emu {
        Self::start_with(EmulatorConfig::default()).await
    }

    pub async fn start_with(cfg: EmulatorConfig) -> Emu {
        let h = emulator::start(cfg).await.expect("emulator starts");
        Emu {
            url: h.url.clone(),
            ca_pem: h.ca_pem.clone(),
            admin: admin_client(h.ca_pem.as_deref()),
            running: Some(Running::InProcess(h)),
            _dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The `cpkfs-emulator` binary in its own process (HTTPS), so its logs
    /// and its runtime are separate from the test's.
    pub fn spawn() -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let (child, url) = super::exe::spawn_emulator(&ca, &[], Stdio::null());
        let ca_pem = std::fs::read_to_string(&ca).unwrap();
        Emu {
            url,
            admin: admin_client(Some(&ca_pem)),
            ca_pem: Some(ca_pem),
            running: Some(Running::Process(child)),
            _dir: dir,
        }
    }

    /// Write the CA PEM to a file (for the Python SDK) and return its path.
    pub fn ca_file(&self) -> std::path::PathBuf {
        let p = self._dir.path().join("ca-copy.pem");
        std::fs::write(&p, self.ca_pem.as_deref().expect("https emulator")).unwrap();
        p
    }

    pub fn config(&self, container: &str, credential: Credential) -> ClientConfig {
        let mut cfg = ClientConfig::new(&self.url, DEV_ACCOUNT, container, credential);
        cfg.ca_pem = self.ca_pem.as_ref().map(|p| p.as_bytes().to_vec());
        cfg.retry = fast_retry();
        cfg
    }

    /// A Shared Key client (dev account, key1) for `container`, with `cpk` as
    /// its configured key.
    pub fn client(&self, container: &str, cpk: Option<&CustomerKey>) -> BlobClient {
        let mut cfg = self.config(container, super::dev_credential());
        cfg.cpk = cpk.map(|k| Arc::new(k.clone()));
        BlobClient::new(cfg).unwrap()
    }

    /// A client on a freshly created container.
    pub async fn new_container(&self, prefix: &str) -> BlobClient {
        let c = self.client(&unique(prefix), None);
        c.create_container().await.unwrap();
        c
    }

    async fn admin_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> String {
        let mut r = self
            .admin
            .request(method.clone(), format!("{}{}", self.url, path));
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let resp = r.send().await.expect("admin request");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_success(),
            "admin {method} {path}: HTTP {status}: {text}"
        );
        text
    }

    pub async fn stats(&self) -> serde_json::Value {
        serde_json::from_str(
            &self
                .admin_call(reqwest::Method::GET, "/__admin/stats", None)
                .await,
        )
        .unwrap()
    }

    /// Requests of one operation (e.g. "GetBlob") since the last reset.
    pub async fn count(&self, op: &str) -> u64 {
        self.stats().await["requests"][op].as_u64().unwrap_or(0)
    }

    pub async fn total_requests(&self) -> u64 {
        self.stats().await["total_requests"].as_u64().unwrap()
    }

    pub async fn reset_stats(&self) {
        self.admin_call(reqwest::Method::DELETE, "/__admin/stats", None)
            .await;
    }

    pub async fn set_faults(&self, cfg: serde_json::Value) {
        self.admin_call(
            reqwest::Method::POST,
            "/__admin/faults",
            Some(cfg.to_string()),
        )
        .await;
    }

    pub async fn clear_faults(&self) {
        self.admin_call(reqwest::Method::DELETE, "/__admin/faults", None)
            .await;
    }

    /// Regenerate key 1 or 2 of the dev account; returns the new key.
    pub async fn regenerate_key(&self, which: u8) -> String {
        let v: serde_json::Value = serde_json::from_str(
            &self
                .admin_call(
                    reqwest::Method::POST,
                    &format!("/__admin/accounts/{DEV_ACCOUNT}/regenerate-key?key={which}"),
                    None,
                )
                .await,
        )
        .unwrap();
        assert_eq!(v["which"].as_u64(), Some(which as u64));
        v["key"].as_str().unwrap().to_string()
    }

    pub async fn shutdown(mut self) {
        match self.running.take() {
            Some(Running::InProcess(h)) => h.shutdown().await,
            Some(Running::Process(mut c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            None => {}
        }
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        if let Some(Running::Process(c)) = self.running.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Read a whole download through `next_chunk`.
pub async fn drain(mut dl: BlobDownload) -> Result<Vec<u8>, BlobError> {
    let mut v = Vec::new();
    while let Some(c) = dl.next_chunk().await? {
        v.extend_from_slice(&c);
    }
    Ok(v)
}
