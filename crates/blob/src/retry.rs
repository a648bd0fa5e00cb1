//! Retry policy: which failures are retried, and how long to wait.
//! Only transient answers are retried (reference §5.3): 408, 429, 500, 502,
//! 503, 504 and connection failures; a timeout only for idempotent calls.
//! Every attempt is re-signed by the caller.

use rand::Rng;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts, including the first.
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// No new attempt starts after this much time since the first.
    pub deadline: Duration,
    /// Time allowed for one attempt to produce response headers.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            deadline: Duration::from_secs(120),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with full jitter before retry number `retry`
    /// (1 = first retry), never less than the service's Retry-After.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(self.max_delay);
        let jittered =
            Duration::from_micros(rand::thread_rng().gen_range(0..=exp.as_micros() as u64));
        // Honour Retry-After, but never beyond max_delay: a filesystem call
        // must not hang for as long as a server asks.
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_delay)),
            None => jittered,
        }
    }
}

/// Statuses worth another attempt.
pub fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// Parse `Retry-After` (seconds) or `x-ms-retry-after-ms`.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("x-ms-retry-after-ms")
        .or_else(|| headers.get("retry-after-ms"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Duration::from_millis(ms));
    }
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(status_is_retryable(s), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 412, 416, 501, 505] {
            assert!(!status_is_retryable(s), "{s}");
        }
    }

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            ..Default::default()
        };
        for r in 1..20 {
            assert!(p.delay(r, None) <= Duration::from_secs(2));
        }
        assert!(p.delay(1, Some(Duration::from_secs(1))) >= Duration::from_secs(1));
        assert!(p.delay(1, Some(Duration::from_secs(60))) <= Duration::from_secs(2));
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("x-ms-retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
    }
}
