//! `cpkfs stats MOUNTPOINT [--json]`: the live counters of a running mount,
//! read from the virtual extended attribute `user.cpkfs.stats` of its root
//! (no network port, no socket file: whoever may read the mount's root may
//! read its counters; see docs/SEMANTICS.md). `--json` prints the snapshot as
//! the mount wrote it (pretty-printed); the default is a table.

use crate::fs::stats::{AccountKeyInUse, StatsSnapshot, TierStat};
use crate::fuse::XATTR_STATS;
use anyhow::{bail, Context, Result};
use clap::Args;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Clone)]
pub struct StatsArgs {
    /// The mount point of a running cpkfs mount.
    pub mountpoint: PathBuf,
    /// Machine-readable JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// The largest value an extended attribute can have on Linux (XATTR_SIZE_MAX):
/// the snapshot is kept below it (recent lists are bounded, paths cut).
const XATTR_MAX: usize = 64 * 1024;

/// Read the raw snapshot. One call with the largest buffer: asking for the
/// size first would race with the counters growing in between.
pub fn read_raw(mountpoint: &Path) -> Result<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .context("the mount point contains a NUL byte")?;
    let name = std::ffi::CString::new(XATTR_STATS).expect("no NUL");
    let mut buf = vec![0u8; XATTR_MAX];
    // SAFETY: both strings are NUL-terminated and the buffer is as long as
    // the size passed.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => bail!(
                "{} is not the root of a running cpkfs mount (it has no {XATTR_STATS} attribute)",
                mountpoint.display()
            ),
            _ => {
                return Err(err).with_context(|| {
                    format!("cannot read the counters of {}", mountpoint.display())
                })
            }
        }
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn run(a: StatsArgs) -> Result<()> {
    let raw = read_raw(&a.mountpoint)?;
    let snap: StatsSnapshot =
        serde_json::from_slice(&raw).context("the mount's counters are not valid JSON")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&snap)?);
    } else {
        print!("{}", render(&snap));
    }
    Ok(())
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Seconds since the epoch → `2026-12-03T07:20:01Z`.
pub fn utc(secs: u64) -> String {
    crate::blob::client::iso8601(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

fn ratio(t: &TierStat) -> String {
    let all = t.hits + t.misses;
    if all == 0 {
        "-".into()
    } else {
        format!("{:.1} %", t.hits as f64 * 100.0 / all as f64)
    }
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

/// The human table of a snapshot.
pub fn render(s: &StatsSnapshot) -> String {
    let mut o = String::new();
    let w = &mut o;
    let _ = writeln!(
        w,
        "cpkfs mount of container {}, up {}",
        s.container,
        duration(s.uptime_secs)
    );
    let account = match s.keys.account_key {
        AccountKeyInUse::SharedKey { in_use, of } => format!("account key {in_use} of {of}"),
        AccountKeyInUse::Sas => "SAS token".to_string(),
    };
    let _ = writeln!(w, "credential: {account}");
    match &s.keys.cpk_sha256 {
        Some(h) => {
            let _ = writeln!(w, "customer-provided key (writes): SHA-256 {h}");
            for o in &s.keys.older_cpk_sha256 {
                let _ = writeln!(w, "older key (reads only):        SHA-256 {o}");
            }
        }
        None => {
            let _ = writeln!(
                w,
                "customer-provided key: none (this mount writes plain blobs)"
            );
        }
    }

    let _ = writeln!(w, "\n{:<18} {:>10} {:>8}", "operation", "calls", "errors");
    if s.operations.is_empty() {
        let _ = writeln!(w, "  (none yet)");
    }
    for op in &s.operations {
        let _ = writeln!(w, "  {:<16} {:>10} {:>8}", op.op, op.calls, op.errors);
    }
    if !s.errors_by_kind.is_empty() {
        let _ = writeln!(w, "\n{:<14} {:<48} {:>8}", "errno", "kind", "count");
        for e in &s.errors_by_kind {
            let _ = writeln!(w, "  {:<12} {:<48} {:>8}", e.errno, e.kind, e.count);
        }
    }

    let _ = writeln!(
        w,
        "\n{:<24} {:>9} {:>8} {:>7} {:>9} {:>12} {:>12}",
        "Blob request", "requests", "retries", "faults", "failures", "sent", "received"
    );
    for r in s
        .requests
        .operations
        .iter()
        .chain(std::iter::once(&s.requests.total))
    {
        let _ = writeln!(
            w,
            "  {:<22} {:>9} {:>8} {:>7} {:>9} {:>12} {:>12}",
            r.operation,
            r.requests,
            r.retries,
            r.faults,
            r.failures,
            human_bytes(r.bytes_out),
            human_bytes(r.bytes_in)
        );
    }
    let _ = writeln!(w, "  account key switches: {}", s.requests.key_switches);

    let _ = writeln!(
        w,
        "\n{:<14} {:>10} {:>10} {:>8}   held",
        "cache", "hits", "misses", "hit rate"
    );
    let m = &s.memory_cache;
    let _ = writeln!(
        w,
        "  {:<12} {:>10} {:>10} {:>8}   {} of {}",
        "memory",
        m.hits,
        m.misses,
        ratio(m),
        human_bytes(m.bytes.unwrap_or(0)),
        human_bytes(m.capacity.unwrap_or(0))
    );
    match &s.disk_cache {
        Some(d) => {
            let held = match (d.bytes, d.capacity) {
                (Some(b), Some(c)) => format!("{} of {}", human_bytes(b), human_bytes(c)),
                _ => "-".into(),
            };
            let _ = writeln!(
                w,
                "  {:<12} {:>10} {:>10} {:>8}   {held}",
                "disk",
                d.hits,
                d.misses,
                ratio(d)
            );
        }
        None => {
            let _ = writeln!(w, "  {:<12} off", "disk");
        }
    }

    let b = &s.bytes;
    let _ = writeln!(
        w,
        "\nbytes: {} read and {} written by applications; {} from Azure, {} to Azure",
        human_bytes(b.read_by_apps),
        human_bytes(b.written_by_apps),
        human_bytes(b.from_azure),
        human_bytes(b.to_azure)
    );
    let t = &s.tables;
    let _ = writeln!(
        w,
        "in memory: {} inodes, {} names known absent",
        t.inodes, t.negative_names
    );
    let p = &s.pending_writes;
    if p.count == 0 {
        let _ = writeln!(w, "files with pending writes: 0");
    } else {
        let more = if p.count > p.paths.len() {
            format!(", and {} more", p.count - p.paths.len())
        } else {
            String::new()
        };
        let _ = writeln!(
            w,
            "files with pending writes: {} ({}{more})",
            p.count,
            p.paths.join(", ")
        );
    }

    let _ = writeln!(w, "\nlast errors returned to applications (oldest first):");
    if s.last_errors.is_empty() {
        let _ = writeln!(w, "  none");
    }
    for e in &s.last_errors {
        let _ = writeln!(
            w,
            "  {} {} {} {} {} code {} request id {}\n      {}",
            utc(e.at_unix),
            e.op,
            if e.path.is_empty() { "-" } else { &e.path },
            e.errno,
            e.kind,
            opt(&e.code),
            opt(&e.request_id),
            e.message
        );
    }
    let _ = writeln!(w, "\nlast failed Blob requests (oldest first):");
    if s.requests.last_failures.is_empty() {
        let _ = writeln!(w, "  none");
    }
    for f in &s.requests.last_failures {
        let status = f
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "no answer".into());
        let _ = writeln!(
            w,
            "  {} {} {} HTTP {} code {} request id {} ({} attempt{})",
            utc(f.at_unix),
            f.operation,
            f.resource,
            status,
            opt(&f.code),
            opt(&f.request_id),
            f.attempts,
            if f.attempts == 1 { "" } else { "s" }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::stats::{FailedRequest, OpSnapshot};
    use crate::blob::RequestSnapshot;
    use crate::fs::stats::*;

    fn sample() -> StatsSnapshot {
        StatsSnapshot {
            version: SNAPSHOT_VERSION,
            container: "data".into(),
            uptime_secs: 3725,
            keys: KeysInUse {
                account_key: AccountKeyInUse::SharedKey { in_use: 2, of: 2 },
                cpk_sha256: Some("NEW=".into()),
                older_cpk_sha256: vec!["OLD=".into()],
            },
            operations: vec![OpStat {
                op: "read".into(),
                calls: 7,
                errors: 1,
            }],
            errors_by_kind: vec![ErrorKindStat {
                errno: "EACCES".into(),
                kind: "ForeignKey".into(),
                count: 1,
            }],
            requests: RequestSnapshot {
                operations: vec![OpSnapshot {
                    operation: "GetBlob".into(),
                    requests: 3,
                    retries: 1,
                    faults: 1,
                    failures: 1,
                    bytes_out: 0,
                    bytes_in: 3 << 20,
                }],
                total: OpSnapshot {
                    operation: "total".into(),
                    requests: 3,
                    retries: 1,
                    faults: 1,
                    failures: 1,
                    bytes_out: 0,
                    bytes_in: 3 << 20,
                },
                key_switches: 1,
                last_failures: vec![FailedRequest {
                    at_unix: 1_796_282_401,
                    operation: "GetBlob".into(),
                    resource: "data/f.bin".into(),
                    status: Some(409),
                    code: Some("BlobUsesCustomerSpecifiedEncryption".into()),
                    request_id: Some("rid-9".into()),
                    attempts: 1,
                }],
            },
            memory_cache: TierStat {
                hits: 3,
                misses: 1,
                bytes: Some(8 << 20),
                capacity: Some(256 << 20),
            },
            disk_cache: None,
            bytes: ByteCounts {
                read_by_apps: 1536,
                written_by_apps: 0,
                from_azure: 3 << 20,
                to_azure: 0,
            },
            pending_writes: PendingWrites {
                count: 3,
                paths: vec!["a".into(), "b".into()],
            },
            tables: TableCounts {
                inodes: 12,
                negative_names: 4,
            },
            last_errors: vec![ErrorRecord {
                at_unix: 1_796_282_401,
                op: "read".into(),
                path: "f.bin".into(),
                errno: "EACCES".into(),
                kind: "ForeignKey".into(),
                message: "f.bin: encrypted with a key this mount does not hold".into(),
                code: None,
                request_id: None,
            }],
        }
    }

    #[test]
    fn units_and_times() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_709_164_800 + 3661), "2024-02-29T01:01:01Z");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3725), "1h02m");
    }

    #[test]
    fn the_table_shows_every_section() {
        let t = render(&sample());
        for want in [
            "container data, up 1h02m",
            "account key 2 of 2",
            "SHA-256 NEW=",
            "older key (reads only):        SHA-256 OLD=",
            "  read                      7        1",
            "EACCES       ForeignKey",
            "  GetBlob                        3        1       1         1          0 B      3.0 MiB",
            "account key switches: 1",
            "75.0 %   8.0 MiB of 256.0 MiB",
            "  disk         off",
            "1.5 KiB read and 0 B written by applications; 3.0 MiB from Azure",
            "files with pending writes: 3 (a, b, and 1 more)",
            "in memory: 12 inodes, 4 names known absent",
            "read f.bin EACCES ForeignKey code - request id -",
            "GetBlob data/f.bin HTTP 409 code BlobUsesCustomerSpecifiedEncryption request id rid-9 (1 attempt)",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
    }

    #[test]
    fn json_round_trips_and_names_the_disk_tier_slot() {
        let s = sample();
        let j = serde_json::to_value(&s).unwrap();
        assert!(j.get("disk_cache").is_some_and(|d| d.is_null()));
        assert_eq!(j["keys"]["account_key"]["kind"], "shared_key");
        let back: StatsSnapshot = serde_json::from_value(j).unwrap();
        assert_eq!(back, s);
        let mut with_disk = s;
        with_disk.disk_cache = Some(TierStat {
            hits: 1,
            misses: 1,
            bytes: None,
            capacity: None,
        });
        assert!(render(&with_disk).contains("  disk                  1          1   50.0 %   -"));
    }
}
