#![allow(dead_code)]
pub mod azurite;
pub mod emu;
pub mod exe;

use cpkfs::blob::*;
use std::sync::Arc;
use std::time::Duration;

pub fn dev_credential() -> Credential {
    Credential::SharedKey(Arc::new(
        SharedKeyCredential::new(
            DEV_ACCOUNT,
            vec![AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
        )
        .unwrap(),
    ))
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 8,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(500),
        deadline: Duration::from_secs(60),
        attempt_timeout: Duration::from_secs(20),
    }
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
