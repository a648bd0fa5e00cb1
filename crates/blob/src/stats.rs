//! Request counters of one client: per Blob operation, the attempts sent, the
//! retries, the transient faults met and the final failures, with the bytes
//! each way; the account-key switches; and the last failed requests with the
//! Azure error code and request id. Plain atomics the send loop updates (a
//! counter costs one relaxed add per request); whoever shows them (`cpkfs
//! stats`) takes a [`RequestStats::snapshot`].

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

/// The operations the client sends, by the names the emulator's
/// `/__admin/stats` and [`crate::ServiceError::operation`] use.
pub const OPERATIONS: [&str; 15] = [
    "CreateContainer",
    "GetContainerProperties",
    "ListBlobs",
    "GetBlobProperties",
    "GetBlob",
    "PutBlob",
    "PutBlock",
    "PutBlockList",
    "GetBlockList",
    "DeleteBlob",
    "SetBlobMetadata",
    "SetBlobProperties",
    "PutBlobFromUrl",
    "PutBlockFromUrl",
    "CopyBlob",
];

/// How many failed requests are remembered.
pub const RECENT_FAILURES: usize = 10;

#[derive(Debug, Default)]
pub struct OpCounters {
    /// Attempts sent (every retry and key switch is one more).
    pub requests: AtomicU64,
    /// Attempts made again after a transient failure.
    pub retries: AtomicU64,
    /// Transient failures met: 408/429/5xx answers, connection failures,
    /// timeouts, bodies cut off (whether or not they were retried).
    pub faults: AtomicU64,
    /// Requests that ended in an error returned to the caller.
    pub failures: AtomicU64,
    /// Request body bytes sent.
    pub bytes_out: AtomicU64,
    /// Response body bytes received (blob data, listings, error bodies).
    pub bytes_in: AtomicU64,
}

/// A request that ended in an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRequest {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    pub operation: String,
    /// `container/blob` (or the container).
    pub resource: String,
    /// None: no answer (connection, TLS, timeout).
    pub status: Option<u16>,
    pub code: Option<String>,
    pub request_id: Option<String>,
    pub attempts: u32,
}

#[derive(Debug, Default)]
pub struct RequestStats {
    ops: [OpCounters; OPERATIONS.len()],
    /// Anything not in [`OPERATIONS`] (none today; kept so a new operation is
    /// never lost from the totals).
    other: OpCounters,
    /// Times the client moved to another account key after a rejection.
    pub key_switches: AtomicU64,
    recent: Mutex<VecDeque<FailedRequest>>,
}

/// One operation's counters at one instant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpSnapshot {
    pub operation: String,
    pub requests: u64,
    pub retries: u64,
    pub faults: u64,
    pub failures: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSnapshot {
    /// Operations with at least one request, in [`OPERATIONS`] order.
    pub operations: Vec<OpSnapshot>,
    /// The sum over every operation.
    pub total: OpSnapshot,
    pub key_switches: u64,
    /// Oldest first, at most [`RECENT_FAILURES`].
    pub last_failures: Vec<FailedRequest>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OpCounters {
    fn snapshot(&self, name: &str) -> OpSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OpSnapshot {
            operation: name.to_string(),
            requests: g(&self.requests),
            retries: g(&self.retries),
            faults: g(&self.faults),
            failures: g(&self.failures),
            bytes_out: g(&self.bytes_out),
            bytes_in: g(&self.bytes_in),
        }
    }
}

impl RequestStats {
    /// The counters of operation `op`.
    pub fn op(&self, op: &str) -> &OpCounters {
        OPERATIONS
            .iter()
            .position(|o| *o == op)
            .map(|i| &self.ops[i])
            .unwrap_or(&self.other)
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Remember a request that failed for good.
    pub(crate) fn failed(&self, f: FailedRequest) {
        Self::add(&self.op(&f.operation).failures, 1);
        let mut r = self.recent.lock().unwrap();
        if r.len() == RECENT_FAILURES {
            r.pop_front();
        }
        r.push_back(f);
    }

    pub(crate) fn failure_now(
        operation: &str,
        resource: &str,
        status: Option<u16>,
        code: Option<&str>,
        request_id: Option<&str>,
        attempts: u32,
    ) -> FailedRequest {
        FailedRequest {
            at_unix: unix_now(),
            operation: operation.to_string(),
            resource: resource.to_string(),
            status,
            code: code.map(str::to_string),
            request_id: request_id.map(str::to_string),
            attempts,
        }
    }

    pub fn snapshot(&self) -> RequestSnapshot {
        let mut operations = vec![];
        let mut total = OpSnapshot {
            operation: "total".into(),
            ..Default::default()
        };
        let all = OPERATIONS
            .iter()
            .zip(self.ops.iter())
            .chain(std::iter::once((&"Other", &self.other)));
        for (name, c) in all {
            let s = c.snapshot(name);
            total.requests += s.requests;
            total.retries += s.retries;
            total.faults += s.faults;
            total.failures += s.failures;
            total.bytes_out += s.bytes_out;
            total.bytes_in += s.bytes_in;
            if s.requests > 0 || s.failures > 0 {
                operations.push(s);
            }
        }
        RequestSnapshot {
            operations,
            total,
            key_switches: self.key_switches.load(Ordering::Relaxed),
            last_failures: self.recent.lock().unwrap().iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_totals() {
        let s = RequestStats::default();
        RequestStats::add(&s.op("GetBlob").requests, 3);
        RequestStats::add(&s.op("GetBlob").bytes_in, 100);
        RequestStats::add(&s.op("PutBlock").requests, 2);
        RequestStats::add(&s.op("PutBlock").retries, 1);
        RequestStats::add(&s.op("PutBlock").faults, 1);
        RequestStats::add(&s.op("PutBlock").bytes_out, 50);
        let snap = s.snapshot();
        let names: Vec<&str> = snap
            .operations
            .iter()
            .map(|o| o.operation.as_str())
            .collect();
        assert_eq!(
            names,
            ["GetBlob", "PutBlock"],
            "OPERATIONS order, idle ones left out"
        );
        assert_eq!(snap.total.requests, 5);
        assert_eq!(snap.total.retries, 1);
        assert_eq!(snap.total.bytes_in, 100);
        assert_eq!(snap.total.bytes_out, 50);
    }

    #[test]
    fn keeps_the_last_ten_failures_and_counts_them() {
        let s = RequestStats::default();
        for i in 0..12 {
            s.failed(RequestStats::failure_now(
                "GetBlob",
                &format!("c/f{i}"),
                Some(409),
                Some("BlobUsesCustomerSpecifiedEncryption"),
                Some(&format!("rid-{i}")),
                1,
            ));
        }
        let snap = s.snapshot();
        assert_eq!(snap.last_failures.len(), RECENT_FAILURES);
        assert_eq!(
            snap.last_failures[0].resource, "c/f2",
            "oldest dropped first"
        );
        assert_eq!(snap.last_failures[9].request_id.as_deref(), Some("rid-11"));
        assert_eq!(snap.operations[0].failures, 12);
    }
}
