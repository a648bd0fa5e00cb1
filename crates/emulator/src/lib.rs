//! `cpkfs-emulator`: a CPK-aware Azure Blob Storage emulator (path-style URLs,
//! Shared Key + SAS, customer-provided keys, admin stats and fault injection).
//!
//! Run it in-process with [`start`], or as the `cpkfs-emulator` binary.

pub mod admin;
pub mod auth;
pub mod cpk;
pub mod error;
pub mod faults;
pub mod http;
pub mod keyvault;
pub mod link;
pub mod ops;
pub mod receive;
pub mod server;
pub mod shared;
pub mod store;
pub mod token;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use shared::{Shared, Stats};
use store::{Account, Disk, State};

/// The well-known emulator account name.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// The well-known emulator account key (key1).
pub const DEV_KEY1: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// A fixed second key for the emulator account (64 bytes `0x40..0x7f`).
pub const DEV_KEY2: &str =
    "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl9gYWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+fw==";

#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    pub listen: SocketAddr,
    /// false = plain http (`--http`).
    pub tls: bool,
    /// (account name, [key1, key2]) with base64 64-byte keys.
    pub accounts: Vec<(String, [String; 2])>,
    /// Persist state here (default: in memory).
    pub data_dir: Option<PathBuf>,
    /// Accept CPK headers on the plain-http listener (tests only).
    pub allow_cpk_over_http: bool,
    /// Serve versions ≥ 2026-02-06 (source keys on Put Blob/Block From URL);
    /// false answers them like an older service (`--no-source-cpk`).
    pub source_cpk: bool,
    /// Key Vault identities (`keyvault.rs`, `token.rs`).
    pub vault_identities: Vec<token::Identity>,
    /// Lifetime of issued tokens in seconds [default: 3600].
    pub vault_token_lifetime: Option<u64>,
    /// Key Vaults, each served at the root of its own listener (`--vault
    /// NAME=ADDR`), the first being the default. Empty: one vault
    /// [`keyvault::DEFAULT_VAULT`] on a free port of the main listener's address.
    pub vaults: Vec<(String, SocketAddr)>,
    /// Response bodies share a link of this many MB/s (`--bandwidth`; None:
    /// loopback speed). See `link.rs`.
    pub bandwidth_mb_s: Option<f64>,
    /// Added before every blob request is answered (`--latency`).
    pub latency: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls: true,
            accounts: vec![(
                DEV_ACCOUNT.to_string(),
                [DEV_KEY1.to_string(), DEV_KEY2.to_string()],
            )],
            data_dir: None,
            allow_cpk_over_http: false,
            source_cpk: true,
            vault_identities: Vec::new(),
            vault_token_lifetime: None,
            vaults: Vec::new(),
            bandwidth_mb_s: None,
            latency: Duration::ZERO,
        }
    }
}

pub struct EmulatorHandle {
    /// Base URL, e.g. `https://127.0.0.1:10000` (append `/{account}/...`).
    pub url: String,
    /// PEM of the self-signed CA that issued the server certificate (TLS only).
    pub ca_pem: Option<String>,
    /// The Key Vaults and their base URLs, the default vault first.
    pub vaults: Vec<keyvault::VaultSite>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EmulatorHandle {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The default vault's base URL (what `https://NAME.vault.azure.net` is in Azure).
    pub fn vault_url(&self) -> &str {
        &self.vaults[0].url
    }

    /// Stop accepting, close connections (after in-flight requests, up to 5 s) and return.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct TlsMaterial {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

fn make_tls() -> anyhow::Result<TlsMaterial> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cpkfs-emulator CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key)?;

    let leaf_key = KeyPair::generate()?;
    let mut leaf_params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "cpkfs-emulator");
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca.der().clone()], key_der)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca.pem(),
        config: Arc::new(config),
    })
}

/// Start the emulator; returns once it is listening.
pub async fn start(config: EmulatorConfig) -> anyhow::Result<EmulatorHandle> {
    let mut accounts = HashMap::new();
    for (name, keys) in &config.accounts {
        let k1 = B64
            .decode(&keys[0])
            .with_context(|| format!("key1 of account {name} is not base64"))?;
        let k2 = B64
            .decode(&keys[1])
            .with_context(|| format!("key2 of account {name} is not base64"))?;
        accounts.insert(
            name.clone(),
            Account {
                keys: [k1, k2],
                containers: BTreeMap::new(),
            },
        );
    }
    let disk = Disk::new(config.data_dir.clone()).context("data dir")?;
    disk.load(&mut accounts)
        .context("loading persisted state")?;

    let tls = if config.tls { Some(make_tls()?) } else { None };
    let (listener, url) = bind(config.listen, config.tls).await?;
    let addr = listener.local_addr()?;
    let vault_addrs = if config.vaults.is_empty() {
        vec![(
            keyvault::DEFAULT_VAULT.to_string(),
            SocketAddr::new(config.listen.ip(), 0),
        )]
    } else {
        config.vaults.clone()
    };
    let mut vault_listeners = Vec::new();
    for (name, vaddr) in &vault_addrs {
        let (l, vurl) = bind(*vaddr, config.tls)
            .await
            .with_context(|| format!("vault {name}"))?;
        vault_listeners.push((
            l,
            keyvault::VaultSite {
                name: name.clone(),
                url: vurl,
            },
        ));
    }

    let shared = Arc::new(Shared {
        state: Mutex::new(State { accounts }),
        disk,
        tls: config.tls,
        allow_cpk_over_http: config.allow_cpk_over_http,
        source_cpk: config.source_cpk,
        stats: Stats::default(),
        faults: Mutex::new(None),
        base_url: Mutex::new(url.clone()),
        kv: keyvault::KvState::new(config.vault_identities.clone(), config.vault_token_lifetime),
        link: config.bandwidth_mb_s.map(link::Link::new),
        latency: config.latency,
    });
    let sites: Vec<keyvault::VaultSite> = vault_listeners.iter().map(|(_, s)| s.clone()).collect();
    shared.kv.set_sites(sites.clone());
    let (stop_tx, stop_rx) = watch::channel(false);
    let acceptor = tls
        .as_ref()
        .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
    let mut loops = tokio::task::JoinSet::new();
    for (l, site) in vault_listeners {
        let shared = shared.clone();
        let site = Arc::new(site);
        let svc = move |req| {
            let (shared, site) = (shared.clone(), site.clone());
            async move {
                let base = shared.base_url.lock().unwrap().clone();
                Ok::<_, std::io::Error>(keyvault::handle_vault(&shared.kv, &base, &site, req).await)
            }
        };
        loops.spawn(accept_loop(l, acceptor.clone(), svc, stop_rx.clone()));
    }
    let svc = move |req| server::handle(shared.clone(), req);
    loops.spawn(accept_loop(listener, acceptor, svc, stop_rx));
    let task = tokio::spawn(async move { while loops.join_next().await.is_some() {} });
    Ok(EmulatorHandle {
        url,
        ca_pem: tls.map(|t| t.ca_pem),
        vaults: sites,
        addr,
        stop: stop_tx,
        task,
    })
}

/// Bind `addr`; returns the listener and its base URL.
async fn bind(addr: SocketAddr, tls: bool) -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    let scheme = if tls { "https" } else { "http" };
    let host = match bound {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    };
    Ok((listener, format!("{scheme}://{host}:{}", bound.port())))
}

/// Read buffer between the socket and rustls (HTTPS only).
const TLS_READ_BUF: usize = 256 * 1024;

/// One listener's connections; `svc` answers each request (the blob
/// service and admin on the main listener, a vault on a vault listener).
async fn accept_loop<S, F>(
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    svc: S,
    mut stop: watch::Receiver<bool>,
) where
    S: Fn(hyper::Request<hyper::body::Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<hyper::Response<http::RespBody>, std::io::Error>>
        + Send
        + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            r = listener.accept() => {
                let Ok((tcp, _peer)) = r else { continue };
                let _ = tcp.set_nodelay(true);
                let svc = svc.clone();
                let acceptor = acceptor.clone();
                let stop = stop.clone();
                conns.spawn(async move {
                    match acceptor {
                        Some(acc) => {
                            // rustls reads the socket 4 KiB at a time; a buffer below it
                            // turns that into few large reads (fewer syscalls and ACKs).
                            let tcp = tokio::io::BufReader::with_capacity(TLS_READ_BUF, tcp);
                            if let Ok(tls) = acc.accept(tcp).await {
                                serve(TokioIo::new(tls), svc, stop).await;
                            }
                        }
                        None => serve(TokioIo::new(tcp), svc, stop).await,
                    }
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
}

async fn serve<I, S, F>(io: TokioIo<I>, svc: S, mut stop: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Fn(hyper::Request<hyper::body::Incoming>) -> F + Send + 'static,
    F: std::future::Future<Output = Result<hyper::Response<http::RespBody>, std::io::Error>>
        + Send
        + 'static,
{
    let svc = hyper::service::service_fn(svc);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(512 << 10)
        .writev(true)
        .keep_alive(true);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
