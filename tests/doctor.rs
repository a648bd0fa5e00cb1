//! `cpkfs doctor` against a prepared container on the bundled emulator: blobs
//! under the current key, an older ring key and a key not in the ring, a plain
//! blob, a folder blob whose name ends in `/`, an orphan uncommitted block.
//! Every finding is checked, with the exit status; `--clean` leaves blocks
//! younger than the grace period and removes them with `--grace 0`.

mod common;
use bytes::Bytes;
use common::*;
use cpkfs::blob::*;
use cpkfs_emulator::{start, EmulatorConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const OLD: &str = "MDEyMzQ1NjcwMTIzNDU2NzAxMjM0NTY3MDEyMzQ1Njc=";
const NEW: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn secret(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_finds_each_problem_and_cleans_uncommitted_blocks() {
    let emu = start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem.as_ref().unwrap()).unwrap();
    let old = Arc::new(CustomerKey::from_base64(OLD, None).unwrap());
    let new = Arc::new(CustomerKey::from_base64(NEW, None).unwrap());
    let foreign = Arc::new(CustomerKey::from_raw([42u8; 32]));
    let mut cfg = ClientConfig::new(&emu.url, DEV_ACCOUNT, "doc", dev_credential());
    cfg.ca_pem = Some(emu.ca_pem.clone().unwrap().into_bytes());
    cfg.retry = fast_retry();
    let c = BlobClient::new(cfg).unwrap();
    c.create_container().await.unwrap();
    let put =
        |name: &'static str, len: usize, key: Option<Arc<CustomerKey>>, md: &[(&str, &str)]| {
            let c = c.clone();
            let opts = CommitOptions {
                metadata: md
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            };
            async move {
                c.put_blob(name, Bytes::from(pattern(len, 1)), &opts, key.as_deref())
                    .await
                    .unwrap();
            }
        };
    put("ok/current.bin", 1000, Some(new.clone()), &[]).await;
    put("ok/dir", 0, None, &[("hdi_isfolder", "true")]).await;
    put("ok/dir/inner", 10, Some(new.clone()), &[]).await;
    put("old.bin", 2000, Some(old.clone()), &[]).await;
    for n in ["lost/1", "lost/2", "lost/3"] {
        put(n, 1024, Some(foreign.clone()), &[]).await;
    }
    put("plain.txt", 5, None, &[]).await;
    put("dangling/", 0, None, &[("hdi_isfolder", "true")]).await;
    // A writer that staged two blocks and never committed.
    let ids = BlockIdGen::new();
    for i in 0..2 {
        c.put_block(
            "orphan.bin",
            &ids.id(i),
            Bytes::from(pattern(4096, i)),
            Some(&new),
        )
        .await
        .unwrap();
    }

    let acct = secret(dir.path(), "acct", DEV_ACCOUNT_KEY);
    let ring = secret(dir.path(), "ring", &format!("{NEW}\n{OLD}\n"));
    let doctor = |container: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cpkfs"))
            .args(["doctor", "--endpoint", &emu.url, "--account", DEV_ACCOUNT])
            .args(["--container", container])
            .arg("--account-key-file")
            .arg(&acct)
            .arg("--cpk-file")
            .arg(&ring)
            .arg("--ca-file")
            .arg(&ca)
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let (code, out, err) = doctor("doc", &[]);
    assert_eq!(code, Some(1), "{out}\n{err}");
    println!("{out}"); // shown with --nocapture (README's example comes from here)
    let has = |want: &str| assert!(out.contains(want), "{want:?} missing in\n{out}");
    has("checked 9 blob(s)");
    has(&format!(
        "ok       {}  current key (line 1): 2 blob(s)",
        new.sha256()
    ));
    has(&format!("ok       {}  older key (line 2): 1 blob(s), 2.0 KiB; readable, and `cpkfs rotate-cpk` re-encrypts them", old.sha256()));
    has(&format!(
        "PROBLEM  {}  not in cpk_file: 3 blob(s), 3.0 KiB cannot be read (lost/1, lost/2, lost/3): add the old key to cpk_file (below the first line) or run rotate-cpk from a machine that has it",
        foreign.sha256()
    ));
    has("PROBLEM  1 file(s), 5 B, are not encrypted with a customer-provided key (plain.txt)");
    has("2 marker(s)");
    has("PROBLEM  dangling/: a folder blob whose name ends in '/'");
    has("PROBLEM  orphan.bin: 2 uncommitted block(s), 8.0 KiB, last staged ");
    has("`cpkfs doctor --clean` removes them once older than the grace period (1 d)");
    // The listing dated the uncommitted blob (when its last block was staged).
    assert!(!out.contains("at an unknown time"), "{out}");
    has("4 thing(s) to fix");
    assert!(
        !out.contains("ok/dir"),
        "a marker by the conventions is fine:\n{out}"
    );

    // --clean honours the grace period: the blocks were staged just now.
    let (code, out, _) = doctor("doc", &["--clean", "--grace", "1h"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("younger than the grace period (1 h)"), "{out}");
    let l = c
        .get_block_list("orphan.bin", BlockListType::All)
        .await
        .unwrap();
    assert_eq!(l.uncommitted.len(), 2, "removed inside the grace period");

    let (code, out, _) = doctor("doc", &["--clean", "--grace", "0"]);
    assert_eq!(code, Some(1), "the other problems remain:\n{out}");
    assert!(
        out.contains("cleaned  orphan.bin: 2 uncommitted block(s)"),
        "{out}"
    );
    let gone = c.get_block_list("orphan.bin", BlockListType::All).await;
    assert!(
        gone.as_ref().is_err_and(|e| e.is_not_found()),
        "uncommitted blocks left: {gone:?}"
    );
    let listed = c
        .list_blobs(&ListOptions {
            prefix: Some("orphan".into()),
            include_uncommitted: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(listed.blobs.is_empty(), "{listed:?}");
    assert!(out.contains("3 thing(s) to fix"), "{out}");

    // A healthy part of the container: exit 0.
    let (code, out, _) = doctor("doc", &["--prefix", "ok/"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with("nothing to fix\n"), "{out}");
    assert!(out.contains("checked 3 blob(s)"), "{out}");

    // A check that cannot run: exit 2.
    let (code, _, err) = doctor("nosuchcontainer", &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("ContainerNotFound"), "{err}");
}
