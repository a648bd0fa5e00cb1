//! A Key Vault client for synchronous callers (mount set-up, the account-key
//! reloader of [`crate::SharedKeyCredential`]).
//!
//! It owns a small runtime of its own, so the HTTP client's connections live
//! on a runtime that outlives every call. Each call runs on a short-lived
//! plain thread that blocks on that runtime: this works from any context,
//! including from inside another runtime's worker (where `block_on` would
//! panic), at the price of blocking the calling thread for the duration of
//! the call, which is what a synchronous API means.

use super::client::VaultClient;
use std::future::Future;
use std::sync::Arc;

struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        // Dropping a runtime inside an async context panics; this does not.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

#[derive(Clone)]
pub struct BlockingVault {
    rt: Arc<Rt>,
    client: Arc<VaultClient>,
}

impl std::fmt::Debug for BlockingVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.client.fmt(f)
    }
}

impl BlockingVault {
    /// `make` builds the client inside the runtime (reqwest wants one around).
    pub fn new<E>(make: impl FnOnce() -> Result<VaultClient, E>) -> Result<Self, E> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cpkfs-keyvault")
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let client = {
            let _g = rt.enter();
            make()?
        };
        Ok(BlockingVault {
            rt: Arc::new(Rt(Some(rt))),
            client: Arc::new(client),
        })
    }

    pub fn client(&self) -> &Arc<VaultClient> {
        &self.client
    }

    /// Run `f(client)` to completion and return its output.
    pub fn run<T, F, Fut>(&self, f: F) -> T
    where
        T: Send,
        F: FnOnce(Arc<VaultClient>) -> Fut + Send,
        Fut: Future<Output = T>,
    {
        let rt = self.rt.0.as_ref().expect("runtime");
        let client = self.client.clone();
        std::thread::scope(|s| {
            s.spawn(move || rt.block_on(f(client)))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}
