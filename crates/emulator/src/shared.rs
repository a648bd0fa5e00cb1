//! The state every request handler shares: the store, the listener's
//! settings, request statistics, the fault injector, the Key Vault and the
//! link model.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::faults::{FaultKind, Faults};
use crate::keyvault::KvState;
use crate::link::Link;
use crate::store::{Disk, State};

#[derive(Default)]
pub struct Stats {
    pub requests: Mutex<BTreeMap<String, u64>>,
    pub total: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub faults: AtomicU64,
}

pub struct Shared {
    pub state: Mutex<State>,
    pub disk: Disk,
    pub tls: bool,
    pub allow_cpk_over_http: bool,
    /// Serve service version 2026-02-06 and later (source keys on the From-URL
    /// operations). Off: those versions are refused like an older service does.
    pub source_cpk: bool,
    pub stats: Stats,
    pub faults: Mutex<Option<Faults>>,
    pub base_url: Mutex<String>,
    /// Key Vault and Entra ID endpoints (`keyvault.rs`).
    pub kv: KvState,
    /// A slow link for response bodies (`--bandwidth`), and added latency
    /// (`--latency`): `link.rs`.
    pub link: Option<Arc<Link>>,
    pub latency: Duration,
}

impl Shared {
    /// Count a request for `op` (admin stats).
    pub(crate) fn count(&self, op: &str) {
        self.stats.total.fetch_add(1, Ordering::Relaxed);
        *self
            .stats
            .requests
            .lock()
            .unwrap()
            .entry(op.to_string())
            .or_default() += 1;
    }

    /// Whether the request for `op` fails by an injected fault, and how
    /// (counted in the statistics).
    pub(crate) fn decide_fault(&self, op: &str) -> Option<FaultKind> {
        let kind = self.faults.lock().unwrap().as_mut()?.decide(op)?;
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        Some(kind)
    }
}
