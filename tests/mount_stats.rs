//! `cpkfs stats` against a real mount over the bundled emulator: the mount's
//! own request counters agree with the emulator's `/__admin/stats`, request
//! by request and byte by byte; the last errors name a foreign-key file, the
//! service's 409 code and its request id; pending writes are listed.

mod common;
#[path = "common/mount.rs"]
mod mount;

use common::pattern;
use cpkfs::blob::{CommitOptions, CustomerKey};
use mount::{Mount, MountOptions};
use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;

const MIB: usize = 1024 * 1024;

fn cpkfs_stats(m: &Mount, json: bool) -> String {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cpkfs"));
    c.arg("stats");
    if json {
        c.arg("--json");
    }
    let out = c.arg(&m.mnt).output().unwrap();
    assert!(
        out.status.success(),
        "cpkfs stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot(m: &Mount) -> Value {
    serde_json::from_str(&cpkfs_stats(m, true)).unwrap()
}

/// Requests per operation, as the mount counts them.
fn mount_requests(s: &Value) -> BTreeMap<String, u64> {
    s["requests"]["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["operation"].as_str().unwrap().to_string(),
                o["requests"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Requests per operation, as the emulator counts them.
fn emulator_requests(s: &Value) -> BTreeMap<String, u64> {
    s["requests"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
        .collect()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

#[test]
fn stats_agree_with_the_emulator_request_by_request() {
    // 1 MiB blocks. Attributes trusted for a minute: on a loaded machine the
    // steps below can outlast the default 3 s, and the re-validation that
    // follows (requests of their own) is not what this test counts.
    let m = Mount::new(MountOptions {
        attr_ttl: "60".into(),
        ..Default::default()
    });
    let data = pattern(3 * MIB + 17, 7);
    std::fs::write(m.scratch.join("data"), &data).unwrap();
    // The mount is the emulator's only client from here on.
    let (emu0, ours0) = (m.stats(), snapshot(&m));
    m.sh("cp $S/data $M/data && cmp $S/data $M/data", 120);
    let (emu1, ours1) = (m.stats(), snapshot(&m));

    let emu = delta(&emulator_requests(&emu1), &emulator_requests(&emu0));
    let ours = delta(&mount_requests(&ours1), &mount_requests(&ours0));
    assert_eq!(
        ours, emu,
        "requests by operation: cpkfs stats vs /__admin/stats"
    );
    assert_eq!(ours.get("PutBlock"), Some(&4), "{ours:?}");
    assert_eq!(ours.get("PutBlockList"), Some(&1), "{ours:?}");
    assert!(ours.get("GetBlob").is_some_and(|n| *n >= 4), "{ours:?}");
    let n = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap();
    assert_eq!(
        n(&ours1, "/bytes/to_azure") - n(&ours0, "/bytes/to_azure"),
        n(&emu1, "/bytes_in") - n(&emu0, "/bytes_in"),
        "request bytes"
    );
    assert_eq!(
        n(&ours1, "/bytes/from_azure") - n(&ours0, "/bytes/from_azure"),
        n(&emu1, "/bytes_out") - n(&emu0, "/bytes_out"),
        "response bytes"
    );
    assert_eq!(
        n(&ours1, "/bytes/written_by_apps"),
        data.len() as u64,
        "{ours1:#}"
    );
    // The kernel decides how often it asks (its read-ahead may read a page
    // twice): at least the whole file went to cmp.
    assert!(n(&ours1, "/bytes/read_by_apps") >= data.len() as u64);
    // Every block read was a miss (fetched once), and none was fetched twice.
    assert_eq!(
        n(&ours1, "/memory_cache/misses"),
        ours["GetBlob"],
        "{ours1:#}"
    );
    assert_eq!(n(&ours1, "/requests/total/faults"), 0);
    // A second read of the cached file: hits only, and no request at all.
    m.sh("cat $M/data > /dev/null", 60);
    let ours2 = snapshot(&m);
    assert!(n(&ours2, "/memory_cache/hits") > n(&ours1, "/memory_cache/hits"));
    assert_eq!(
        n(&ours2, "/requests/total/requests"),
        n(&ours1, "/requests/total/requests"),
        "the cached re-read made requests"
    );

    let key = m.key.clone().unwrap();
    assert_eq!(ours1["keys"]["cpk_sha256"], key.sha256());
    assert_eq!(
        ours1["keys"]["account_key"],
        serde_json::json!({"kind": "shared_key", "in_use": 1, "of": 1})
    );
    assert!(ours1["disk_cache"].is_null(), "no disk tier in this mount");
    let ops = fuse_calls(&ours1);
    for op in ["create", "write", "flush", "release", "open", "read"] {
        assert!(ops.get(op).is_some_and(|n| *n > 0), "{op}: {ops:?}");
    }

    // A file open for writing with unwritten data is listed as pending. The
    // writer holds one descriptor and neither spawns nor redirects: every
    // close of a copy of it (a child's exit or exec, a shell restoring its
    // stdout after `>&3`) is a flush, which commits.
    let mut writer = Command::new("python3")
        .arg("-c")
        .arg(
            "import os, sys, time\n\
             fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n\
             os.write(fd, b'abc')\n\
             print('written', flush=True)\n\
             time.sleep(600)",
        )
        .arg(m.path("pending.txt"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "written\n");
    let pending = snapshot(&m);
    writer.kill().unwrap();
    writer.wait().unwrap();
    assert_eq!(pending["pending_writes"]["count"], 1, "{pending:#}");
    assert_eq!(pending["pending_writes"]["paths"][0], "pending.txt");
    assert_eq!(snapshot(&m)["pending_writes"]["count"], 0);

    // The table for people.
    let table = cpkfs_stats(&m, false);
    for want in [
        "account key 1 of 1",
        key.sha256(),
        "GetBlob",
        "PutBlockList",
        "memory",
        "files with pending writes: 0",
    ] {
        assert!(table.contains(want), "{want:?} missing in\n{table}");
    }
}

#[test]
fn last_errors_show_the_foreign_key_file_with_the_azure_code_and_request_id() {
    // Attributes trusted for an hour: the mount keeps believing a blob is
    // plain after another client re-wrote it under a foreign key, so its
    // read meets the service's 409.
    let m = Mount::new(MountOptions {
        attr_ttl: "3600".into(),
        ..Default::default()
    });
    let foreign = Arc::new(CustomerKey::from_raw([42u8; 32]));
    let fc = m.client(Some(foreign.clone()));
    let pc = m.client(None);
    let o = CommitOptions::default();
    m.block_on(pc.put_blob("victim.bin", pattern(100, 1).into(), &o, None))
        .unwrap();
    m.sh("stat $M/victim.bin > /dev/null", 30);
    m.block_on(fc.put_blob("victim.bin", pattern(100, 2).into(), &o, Some(&foreign)))
        .unwrap();
    m.block_on(fc.put_blob("foreign.bin", pattern(10, 3).into(), &o, Some(&foreign)))
        .unwrap();
    for f in ["victim.bin", "foreign.bin"] {
        let out = m.sh_status(&format!("cat $M/{f}"), 30);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "{f}: {err}"
        );
    }
    let s = snapshot(&m);
    // The request the service refused: its code and request id.
    let failed = s["requests"]["last_failures"].as_array().unwrap();
    let refusal = failed
        .iter()
        .find(|f| {
            f["operation"] == "GetBlob"
                && f["resource"] == format!("{}/victim.bin", m.container)
                && f["status"] == 409
        })
        .unwrap_or_else(|| panic!("no 409 GetBlob of victim.bin in {s:#}"));
    assert_eq!(refusal["code"], "BlobUsesCustomerSpecifiedEncryption");
    let rid = refusal["request_id"].as_str().unwrap();
    assert!(!rid.is_empty());
    // The same id the service sent (the mount's debug log has every answer).
    let log = std::fs::read_to_string(&m.log).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(rid) && l.contains("status=409")),
        "request id {rid} not in the log"
    );
    // What the applications got, with paths.
    let errors = s["last_errors"].as_array().unwrap();
    let victim = errors
        .iter()
        .find(|e| e["path"] == "victim.bin")
        .unwrap_or_else(|| panic!("victim.bin not among {s:#}"));
    assert_eq!(victim["errno"], "EACCES");
    let foreign_err = errors
        .iter()
        .find(|e| e["path"] == "foreign.bin")
        .unwrap_or_else(|| panic!("foreign.bin not among {s:#}"));
    assert_eq!(foreign_err["errno"], "EACCES");
    assert_eq!(foreign_err["kind"], "ForeignKey");
    assert!(foreign_err["message"]
        .as_str()
        .unwrap()
        .contains(foreign.sha256()));
    let kinds = s["errors_by_kind"].as_array().unwrap();
    assert!(
        kinds.iter().any(|k| k["errno"] == "EACCES"
            && k["kind"] == "ForeignKey"
            && k["count"].as_u64() >= Some(1)),
        "{kinds:?}"
    );
    let table = cpkfs_stats(&m, false);
    // Shown with --nocapture (README's example comes from here).
    println!("{table}");
    assert!(
        table.contains(&format!(
            "HTTP 409 code BlobUsesCustomerSpecifiedEncryption request id {rid}"
        )),
        "{table}"
    );
    assert!(table.contains("foreign.bin EACCES ForeignKey"), "{table}");
}

#[test]
fn stats_of_a_directory_that_is_not_a_mount_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
        .arg("stats")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not the root of a running cpkfs mount"),
        "{err}"
    );
}

#[test]
fn retries_and_faults_agree_with_the_faults_the_emulator_injected() {
    let m = Mount::emulator();
    let data = pattern(16 * MIB, 9);
    std::fs::write(m.scratch.join("data"), &data).unwrap();
    m.sh("cp $S/data $M/data", 120);
    let (emu0, ours0) = (m.stats(), snapshot(&m));
    // About a third of the GetBlobs (16 blocks) answered 503: each is met,
    // counted and retried.
    m.set_faults(Some(serde_json::json!({
        "rate": 0.3, "kinds": ["503"], "seed": 42, "operations": ["GetBlob"]
    })));
    m.sh("cmp $S/data $M/data", 120);
    m.set_faults(None);
    let (emu1, ours1) = (m.stats(), snapshot(&m));
    let n = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_u64).unwrap();
    let injected = n(&emu1, "/faults_injected") - n(&emu0, "/faults_injected");
    assert!(injected > 0, "no fault was injected: {emu1:#}");
    let get = |s: &Value, field: &str| {
        s["requests"]["operations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["operation"] == "GetBlob")
            .map(|o| o[field].as_u64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(get(&ours1, "faults") - get(&ours0, "faults"), injected);
    assert_eq!(get(&ours1, "retries") - get(&ours0, "retries"), injected);
    assert_eq!(
        get(&ours1, "failures"),
        get(&ours0, "failures"),
        "a retry gave up"
    );
    assert_eq!(
        delta(&mount_requests(&ours1), &mount_requests(&ours0)),
        delta(&emulator_requests(&emu1), &emulator_requests(&emu0)),
        "requests by operation, retries included"
    );
}

/// FUSE calls per operation, as the mount counts them.
fn fuse_calls(s: &Value) -> BTreeMap<String, u64> {
    s["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["op"].as_str().unwrap().to_string(),
                o["calls"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `ls -l` of a listed directory costs the kernel round trips it needs and
/// no more: readdirplus brings every entry's attributes (no LOOKUP per
/// entry), and security labels and POSIX ACLs are "not supported" (ls stops
/// asking after the first file) rather than "no such attribute" (two
/// GETXATTRs per file). Our own attribute still reads.
#[test]
fn ls_l_sends_no_lookup_or_getxattr_per_entry() {
    const N: usize = 200;
    let m = Mount::new(MountOptions {
        attr_ttl: "600".into(),
        ..Default::default()
    });
    m.sh(
        &format!("mkdir $M/d && cd $M/d && seq {N} | xargs touch"),
        120,
    );
    let out = m.sh_status("getfattr -n security.selinux $M/d/1", 30);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Operation not supported"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = m.sh_status("getfattr -n user.nothing $M/d/1", 30);
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such attribute"));
    let out = m.sh("getfattr --only-values -n user.cpkfs.key_sha256 $M/d/1", 30);
    assert_eq!(out, m.key.as_ref().unwrap().sha256());

    let before = fuse_calls(&snapshot(&m));
    let listed = m.sh("ls -l $M/d | tail -n +2 | wc -l", 60);
    assert_eq!(listed.trim(), N.to_string());
    let after = fuse_calls(&snapshot(&m));
    let calls = |op: &str| after.get(op).unwrap_or(&0) - before.get(op).unwrap_or(&0);
    assert!(calls("lookup") <= 2, "lookups: {}", calls("lookup"));
    assert!(calls("getxattr") <= 4, "getxattrs: {}", calls("getxattr"));
    assert!(calls("readdirplus") >= 1);
}
