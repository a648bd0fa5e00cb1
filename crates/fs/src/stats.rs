//! What the mount is doing, for `cpkfs stats`: operations and their errors by
//! kind, the last errors returned to applications (path, errno, Azure code and
//! request id), bytes read and written by applications, and the cache tiers'
//! hits and misses. The client's own request counters live in
//! `cpkfs_blob::stats`; [`StatsSnapshot`] puts everything together at one
//! instant (`Fs::stats_snapshot`), as plain data that serializes to the JSON
//! `cpkfs stats --json` prints.

use crate::error::FsError;
use cpkfs_blob::{BlobError, RequestSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

/// Operations counted, by the names the kernel interface gives them.
pub const OPERATIONS: [&str; 31] = [
    "lookup",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "rename",
    "link",
    "open",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "fallocate",
    "copy_file_range",
    "opendir",
    "readdir",
    "readdirplus",
    "releasedir",
    "fsyncdir",
    "statfs",
    "getxattr",
    "listxattr",
    "setxattr",
    "removexattr",
    "access",
    "create",
];

/// How many errors returned to applications are remembered.
pub const RECENT_ERRORS: usize = 10;
/// Paths in the error list are cut to this many bytes: the whole snapshot
/// must fit in one extended attribute value (64 KiB).
const MAX_PATH_SHOWN: usize = 512;
/// Files with pending writes listed by name (the count is always exact).
const MAX_PENDING_SHOWN: usize = 20;

/// Hits and misses of one cache tier (the memory cache's own counters).
#[derive(Debug, Default)]
pub struct TierCounters {
    /// Blocks served from the tier.
    pub hits: AtomicU64,
    /// Blocks the tier did not hold (fetched from below it).
    pub misses: AtomicU64,
}

impl TierCounters {
    pub fn hit(&self) {
        self.hits.fetch_add(1, Ordering::Relaxed);
    }
    pub fn miss(&self) {
        self.misses.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct OpCount {
    calls: AtomicU64,
    errors: AtomicU64,
}

/// An error returned to an application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorRecord {
    /// Seconds since the Unix epoch.
    pub at_unix: u64,
    pub op: String,
    /// The blob path (no container), as far as it is known.
    pub path: String,
    pub errno: String,
    /// The error kind ([`kind_of`]).
    pub kind: String,
    pub message: String,
    /// The Azure error code and request id, when the service answered.
    pub code: Option<String>,
    pub request_id: Option<String>,
}

/// Where the snapshot reads a disk cache tier's figures from: the tier
/// registers it with [`MountStats::set_disk_tier`] when it starts (e.g. a
/// closure over its own statistics), and the snapshot calls it each time.
pub type DiskTierSource = Arc<dyn Fn() -> TierStat + Send + Sync>;

/// Counters of one running mount.
pub struct MountStats {
    started: Instant,
    ops: [OpCount; OPERATIONS.len()],
    /// (errno, kind) → count, for every failed operation (quiet ones too).
    errors: Mutex<BTreeMap<(String, String), u64>>,
    recent: Mutex<VecDeque<ErrorRecord>>,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// The disk cache tier's figures, once one registers (None: no disk tier).
    disk_tier: OnceLock<DiskTierSource>,
}

impl Default for MountStats {
    fn default() -> Self {
        MountStats {
            started: Instant::now(),
            ops: Default::default(),
            errors: Mutex::new(BTreeMap::new()),
            recent: Mutex::new(VecDeque::new()),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            disk_tier: OnceLock::new(),
        }
    }
}

/// A short name for the kind of an error: the variant, and for service
/// errors the status and Azure code (`409 BlobUsesCustomerSpecifiedEncryption`).
pub fn kind_of(e: &FsError) -> String {
    match e {
        FsError::NotFound => "NotFound".into(),
        FsError::Exists => "Exists".into(),
        FsError::NotEmpty => "NotEmpty".into(),
        FsError::NotDir => "NotDir".into(),
        FsError::IsDir => "IsDir".into(),
        FsError::InvalidName(..) => "InvalidName".into(),
        FsError::NameTooLong => "NameTooLong".into(),
        FsError::ForeignKey { .. } => "ForeignKey".into(),
        FsError::Stale(_) => "Stale".into(),
        FsError::Unsupported(_) => "Unsupported".into(),
        FsError::Invalid(_) => "Invalid".into(),
        FsError::BadHandle => "BadHandle".into(),
        FsError::ReadOnly => "ReadOnly".into(),
        FsError::TooLarge(_) => "TooLarge".into(),
        FsError::Conflict { .. } => "Conflict".into(),
        FsError::Failed(_) => "Failed".into(),
        FsError::Blob(BlobError::Service(s)) => match &s.code {
            Some(c) => format!("{} {c}", s.status),
            None => format!("HTTP {}", s.status),
        },
        FsError::Blob(BlobError::Transport { kind, .. }) => format!("Transport {kind:?}"),
        FsError::Blob(BlobError::CpkOverHttp) => "CpkOverHttp".into(),
        FsError::Blob(BlobError::Config(_)) => "Config".into(),
        FsError::Blob(BlobError::Protocol { .. }) => "Protocol".into(),
        FsError::Blob(BlobError::Changed { .. }) => "Changed".into(),
    }
}

/// The symbolic name of the errno values the core returns.
pub fn errno_name(errno: i32) -> String {
    use libc::*;
    let n = match errno {
        ENOENT => "ENOENT",
        EEXIST => "EEXIST",
        ENOTEMPTY => "ENOTEMPTY",
        ENOTDIR => "ENOTDIR",
        EISDIR => "EISDIR",
        EINVAL => "EINVAL",
        ENAMETOOLONG => "ENAMETOOLONG",
        EACCES => "EACCES",
        ESTALE => "ESTALE",
        ENOTSUP => "ENOTSUP",
        EBADF => "EBADF",
        EROFS => "EROFS",
        EFBIG => "EFBIG",
        EIO => "EIO",
        EPERM => "EPERM",
        ERANGE => "ERANGE",
        ENODATA => "ENODATA",
        _ => return format!("errno {errno}"),
    };
    n.to_string()
}

/// The Azure answer behind an error, if there was one: (code, request id).
fn service_of(e: &FsError) -> (Option<String>, Option<String>) {
    match e {
        FsError::Blob(b) => match b.service() {
            Some(s) => (s.code.clone(), s.request_id.clone()),
            None => (None, None),
        },
        _ => (None, None),
    }
}

/// The blob path an error names, if it names one.
fn path_in(e: &FsError) -> Option<String> {
    match e {
        FsError::ForeignKey { path, .. } | FsError::Conflict { path, .. } => Some(path.clone()),
        FsError::Blob(b) => match b {
            BlobError::Service(s) => Some(s.resource.clone()),
            BlobError::Transport { resource, .. }
            | BlobError::Protocol { resource, .. }
            | BlobError::Changed { resource, .. } => Some(resource.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MountStats {
    fn op_count(&self, op: &str) -> Option<&OpCount> {
        OPERATIONS
            .iter()
            .position(|o| *o == op)
            .map(|i| &self.ops[i])
    }

    /// One call of `op`.
    pub fn count_op(&self, op: &str) {
        if let Some(c) = self.op_count(op) {
            c.calls.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `op` failed with `e`. `path` is the blob path the operation was about
    /// (the error's own path wins when it names one). Expected outcomes (a
    /// lookup miss) are counted but not kept in the recent errors.
    pub fn record_error(&self, op: &str, path: Option<&str>, container: &str, e: &FsError) {
        if let Some(c) = self.op_count(op) {
            c.errors.fetch_add(1, Ordering::Relaxed);
        }
        let errno = errno_name(e.errno());
        let kind = kind_of(e);
        *self
            .errors
            .lock()
            .unwrap()
            .entry((errno.clone(), kind.clone()))
            .or_default() += 1;
        if e.is_quiet() {
            return;
        }
        // Service errors name `container/blob`: show the path in the mount.
        let path = path_in(e)
            .map(|p| match p.strip_prefix(container) {
                Some(rest) if rest.starts_with('/') => rest[1..].to_string(),
                _ => p,
            })
            .or_else(|| path.map(str::to_string))
            .unwrap_or_default();
        let (code, request_id) = service_of(e);
        let rec = ErrorRecord {
            at_unix: unix_now(),
            op: op.to_string(),
            path: cut(&path, MAX_PATH_SHOWN),
            errno,
            kind,
            message: cut(&e.to_string(), MAX_PATH_SHOWN * 2),
            code,
            request_id,
        };
        let mut r = self.recent.lock().unwrap();
        if r.len() == RECENT_ERRORS {
            r.pop_front();
        }
        r.push_back(rec);
    }

    /// The disk cache tier registers where its figures come from when it
    /// starts; the snapshot shows them from then on (until then `disk_cache`
    /// is null: no numbers are made up). A second registration is ignored.
    pub fn set_disk_tier(&self, source: DiskTierSource) {
        let _ = self.disk_tier.set(source);
    }

    pub fn add_read(&self, n: u64) {
        self.bytes_read.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_written(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub(crate) fn operations(&self) -> Vec<OpStat> {
        OPERATIONS
            .iter()
            .zip(self.ops.iter())
            .map(|(n, c)| OpStat {
                op: n.to_string(),
                calls: c.calls.load(Ordering::Relaxed),
                errors: c.errors.load(Ordering::Relaxed),
            })
            .filter(|o| o.calls > 0 || o.errors > 0)
            .collect()
    }

    pub(crate) fn error_kinds(&self) -> Vec<ErrorKindStat> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .map(|((errno, kind), count)| ErrorKindStat {
                errno: errno.clone(),
                kind: kind.clone(),
                count: *count,
            })
            .collect()
    }

    pub(crate) fn recent_errors(&self) -> Vec<ErrorRecord> {
        self.recent.lock().unwrap().iter().cloned().collect()
    }

    pub(crate) fn disk_tier(&self) -> Option<TierStat> {
        self.disk_tier.get().map(|source| source())
    }
}

// ------------------------------------------------------------------ snapshot

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpStat {
    pub op: String,
    pub calls: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorKindStat {
    pub errno: String,
    pub kind: String,
    pub count: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierStat {
    pub hits: u64,
    pub misses: u64,
    /// Bytes held and the bound, where the tier reports them.
    pub bytes: Option<u64>,
    pub capacity: Option<u64>,
}

/// Which account credential signs the requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountKeyInUse {
    /// Key `in_use` (1-based) of the `of` keys known.
    SharedKey {
        in_use: usize,
        of: usize,
    },
    Sas,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysInUse {
    pub account_key: AccountKeyInUse,
    /// The SHA-256 (base64, as Azure shows it) of the key every write uses;
    /// None: the mount writes plain blobs. Never the key itself.
    pub cpk_sha256: Option<String>,
    /// The older keys of the ring, kept for reading.
    pub older_cpk_sha256: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteCounts {
    /// Returned to applications by read / written by applications.
    pub read_by_apps: u64,
    pub written_by_apps: u64,
    /// Response and request bodies, over the network.
    pub from_azure: u64,
    pub to_azure: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingWrites {
    /// Files whose writes are not committed yet (exact count).
    pub count: usize,
    /// Their paths, the first few.
    pub paths: Vec<String>,
}

/// What the mount keeps in memory besides blocks, by count: each follows
/// what exists (and is held open), not what ever existed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounts {
    /// Inodes: named ones (the attribute cache) and ones the kernel or an
    /// open descriptor still holds.
    pub inodes: u64,
    /// Names known absent (expired ones are swept as they accumulate).
    pub negative_names: u64,
}

/// Everything `cpkfs stats` shows, at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Format version of this structure.
    pub version: u32,
    pub container: String,
    pub uptime_secs: u64,
    pub keys: KeysInUse,
    /// Operations with at least one call.
    pub operations: Vec<OpStat>,
    pub errors_by_kind: Vec<ErrorKindStat>,
    pub requests: RequestSnapshot,
    pub memory_cache: TierStat,
    /// The disk cache tier (None: no disk tier in this mount).
    pub disk_cache: Option<TierStat>,
    pub bytes: ByteCounts,
    pub pending_writes: PendingWrites,
    /// Absent in snapshots of older mounts.
    #[serde(default)]
    pub tables: TableCounts,
    /// Oldest first, at most [`RECENT_ERRORS`].
    pub last_errors: Vec<ErrorRecord>,
}

pub const SNAPSHOT_VERSION: u32 = 1;

impl PendingWrites {
    pub(crate) fn from_paths(mut paths: Vec<String>) -> Self {
        paths.sort();
        let count = paths.len();
        paths.truncate(MAX_PENDING_SHOWN);
        PendingWrites { count, paths }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cpkfs_blob::ServiceError;

    fn service(status: u16, code: &str, rid: &str) -> FsError {
        FsError::Blob(BlobError::Service(Box::new(ServiceError {
            operation: "GetBlob",
            resource: "cont/dir/f.bin".into(),
            status,
            code: Some(code.into()),
            message: String::new(),
            request_id: Some(rid.into()),
            mac_mismatch: false,
            attempts: 1,
        })))
    }

    #[test]
    fn errors_are_counted_by_kind_and_the_last_ten_kept_with_code_and_request_id() {
        let s = MountStats::default();
        s.count_op("read");
        s.record_error(
            "read",
            Some("dir/f.bin"),
            "cont",
            &service(409, "BlobUsesCustomerSpecifiedEncryption", "rid-1"),
        );
        for _ in 0..3 {
            s.record_error("lookup", Some("x"), "cont", &FsError::NotFound);
        }
        let ops = s.operations();
        assert_eq!(
            ops,
            vec![
                OpStat {
                    op: "lookup".into(),
                    calls: 0,
                    errors: 3
                },
                OpStat {
                    op: "read".into(),
                    calls: 1,
                    errors: 1
                }
            ]
        );
        let kinds = s.error_kinds();
        assert!(kinds.contains(&ErrorKindStat {
            errno: "EACCES".into(),
            kind: "409 BlobUsesCustomerSpecifiedEncryption".into(),
            count: 1
        }));
        assert!(kinds.contains(&ErrorKindStat {
            errno: "ENOENT".into(),
            kind: "NotFound".into(),
            count: 3
        }));
        // Lookup misses are expected: counted, not listed.
        let recent = s.recent_errors();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].path, "dir/f.bin", "container stripped");
        assert_eq!(
            recent[0].code.as_deref(),
            Some("BlobUsesCustomerSpecifiedEncryption")
        );
        assert_eq!(recent[0].request_id.as_deref(), Some("rid-1"));
        for i in 0..12 {
            s.record_error(
                "open",
                Some(&format!("f{i}")),
                "cont",
                &FsError::Stale(format!("f{i} changed")),
            );
        }
        let recent = s.recent_errors();
        assert_eq!(recent.len(), RECENT_ERRORS);
        assert_eq!(recent[0].path, "f2");
        assert_eq!(recent[9].errno, "ESTALE");
    }

    #[test]
    fn a_foreign_key_error_names_its_path_and_long_paths_are_cut() {
        let s = MountStats::default();
        s.record_error(
            "open",
            None,
            "cont",
            &FsError::ForeignKey {
                path: "a/b".into(),
                sha256: "h=".into(),
            },
        );
        let long = "é".repeat(400);
        s.record_error("unlink", Some(&long), "cont", &FsError::ReadOnly);
        let r = s.recent_errors();
        assert_eq!(r[0].path, "a/b");
        assert_eq!(r[0].kind, "ForeignKey");
        assert!(r[1].path.len() <= MAX_PATH_SHOWN + '…'.len_utf8());
        assert!(r[1].path.ends_with('…'));
    }

    #[test]
    fn the_disk_tier_shows_once_registered() {
        let s = MountStats::default();
        assert_eq!(s.disk_tier(), None);
        let c = Arc::new(TierCounters::default());
        let counters = c.clone();
        s.set_disk_tier(Arc::new(move || TierStat {
            hits: counters.hits.load(Ordering::Relaxed),
            misses: counters.misses.load(Ordering::Relaxed),
            bytes: None,
            capacity: None,
        }));
        c.hit();
        c.hit();
        c.miss();
        assert_eq!(
            s.disk_tier(),
            Some(TierStat {
                hits: 2,
                misses: 1,
                bytes: None,
                capacity: None
            })
        );
    }

    #[test]
    fn pending_writes_count_all_and_list_the_first() {
        let p = PendingWrites::from_paths((0..30).map(|i| format!("f{i:02}")).collect());
        assert_eq!(p.count, 30);
        assert_eq!(p.paths.len(), MAX_PENDING_SHOWN);
        assert_eq!(p.paths[0], "f00");
    }
}
