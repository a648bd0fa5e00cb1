//! The client under injected faults (emulator `/__admin/faults`): transient
//! failures are retried until the bytes are identical, non-transient ones fail
//! at once, truncated downloads resume, and a blob that changes between
//! resumptions is reported as changed. Proved by counting requests.

mod common;
use bytes::Bytes;
use common::emu::{drain, random_key, Emu};
use common::*;
use cpkfs::blob::*;
use serde_json::json;
use std::sync::Arc;

const MIB: usize = 1024 * 1024;

fn none() -> Conditions {
    Conditions::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_reads_survive_30_percent_faults() {
    let emu = Emu::start().await;
    let c = emu.new_container("faults").await;
    let key = random_key();
    let data = pattern(64 * MIB, 64);
    emu.reset_stats().await;
    emu.set_faults(json!({
        "rate": 0.3,
        "kinds": ["500", "503", "408", "reset", "slow", "truncate"],
        "seed": 42,
        "slow_ms": 200
    }))
    .await;

    let opts = CommitOptions {
        content_type: Some("application/x-faults".into()),
        ..Default::default()
    };
    let up = UploadOptions {
        block_size: 4 * MIB,
        concurrency: 4,
    };
    let w = c
        .upload("big.bin", &data[..], &opts, Some(&key), up)
        .await
        .expect("upload under faults");
    assert_eq!(w.cpk_sha256.as_deref(), Some(key.sha256()));
    let after_upload = emu.stats().await;

    // Ranged reads, whole-into-memory and streamed, at odd offsets.
    let len = data.len() as u64;
    let mut x = 0x9e3779b97f4a7c15u64;
    for i in 0..24u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let start = x % (len - 1);
        let size = 1 + (x >> 20) % (3 * MIB as u64);
        let end = (start + size).min(len);
        let got = if i % 2 == 0 {
            c.read_range("big.bin", ByteRange::new(start, end), Some(&key), &none())
                .await
                .unwrap_or_else(|e| panic!("read_range {start}..{end}: {e}"))
                .0
                .to_vec()
        } else {
            let dl = c
                .get_blob(
                    "big.bin",
                    Some(ByteRange::new(start, end)),
                    Some(&key),
                    &none(),
                )
                .await
                .unwrap_or_else(|e| panic!("get_blob {start}..{end}: {e}"));
            assert_eq!(dl.remaining(), end - start);
            drain(dl)
                .await
                .unwrap_or_else(|e| panic!("stream {start}..{end}: {e}"))
        };
        assert!(
            got[..] == data[start as usize..end as usize],
            "range {start}..{end} differs"
        );
    }
    // The whole blob, streamed.
    let dl = c
        .get_blob("big.bin", None, Some(&key), &none())
        .await
        .unwrap();
    assert_eq!(
        dl.properties.content_type.as_deref(),
        Some("application/x-faults")
    );
    let got = drain(dl).await.expect("whole stream");
    assert!(got == data, "whole download differs");

    let stats = emu.stats().await;
    emu.clear_faults().await;
    let faults = stats["faults_injected"].as_u64().unwrap();
    let put_blocks = after_upload["requests"]["PutBlock"].as_u64().unwrap();
    let gets = stats["requests"]["GetBlob"].as_u64().unwrap();
    assert!(
        after_upload["faults_injected"].as_u64().unwrap() > 0,
        "no fault hit the upload: {after_upload}"
    );
    assert!(faults > 0, "{stats}");
    assert!(
        put_blocks > 16,
        "16 blocks, no retried PutBlock: {after_upload}"
    );
    assert!(gets > 25, "25 downloads, no retried GetBlob: {stats}");
    // The committed blob is exactly 16 blocks of 4 MiB (retries left no extras).
    let bl = c
        .get_block_list("big.bin", BlockListType::All)
        .await
        .unwrap();
    assert_eq!(bl.committed.len(), 16);
    assert!(bl.committed.iter().all(|b| b.size == 4 * MIB as u64));
    assert!(bl.uncommitted.is_empty());
}

/// With faults off, 403/404/409 fail after exactly one request and the
/// error's Display names the Azure code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_transient_errors_fail_at_once() {
    let emu = Emu::start().await;
    let c = emu.new_container("once").await;
    let key = random_key();
    c.put_blob(
        "cpk",
        Bytes::from_static(b"x"),
        &CommitOptions::default(),
        Some(&key),
    )
    .await
    .unwrap();
    let wrong = AccountKey::from_base64(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==",
    )
    .unwrap();
    let bad = BlobClient::new(emu.config(
        c.container(),
        Credential::SharedKey(Arc::new(
            SharedKeyCredential::new(DEV_ACCOUNT, vec![wrong]).unwrap(),
        )),
    ))
    .unwrap();

    struct Case {
        op: &'static str,
        status: u16,
        code: &'static str,
    }
    let cases = [
        Case {
            op: "GetBlob",
            status: 403,
            code: "AuthenticationFailed",
        },
        Case {
            op: "GetBlobProperties",
            status: 404,
            code: "BlobNotFound",
        },
        Case {
            op: "GetBlob",
            status: 404,
            code: "BlobNotFound",
        },
        Case {
            op: "DeleteBlob",
            status: 404,
            code: "BlobNotFound",
        },
        Case {
            op: "GetBlob",
            status: 409,
            code: "BlobUsesCustomerSpecifiedEncryption",
        },
        Case {
            op: "GetBlobProperties",
            status: 409,
            code: "BlobCustomerSpecifiedEncryptionMismatch",
        },
        Case {
            op: "PutBlob",
            status: 409,
            code: "BlobAlreadyExists",
        },
    ];
    let other = random_key();
    for (i, case) in cases.iter().enumerate() {
        emu.reset_stats().await;
        let r: Result<(), BlobError> = match i {
            0 => bad
                .get_blob("cpk", None, Some(&key), &none())
                .await
                .map(|_| ()),
            1 => c
                .get_blob_properties("nope", None, &none())
                .await
                .map(|_| ()),
            2 => c.get_blob("nope", None, None, &none()).await.map(|_| ()),
            3 => c.delete_blob("nope", &none()).await,
            4 => c.get_blob("cpk", None, None, &none()).await.map(|_| ()),
            5 => c
                .get_blob_properties("cpk", Some(&other), &none())
                .await
                .map(|_| ()),
            _ => c
                .put_blob(
                    "cpk",
                    Bytes::new(),
                    &CommitOptions {
                        conditions: Conditions::create_only(),
                        ..Default::default()
                    },
                    Some(&key),
                )
                .await
                .map(|_| ()),
        };
        let e = r.expect_err(case.code);
        assert_eq!(e.status(), Some(case.status), "{e}");
        assert_eq!(e.code(), Some(case.code), "{e}");
        assert!(
            e.to_string().contains(case.code),
            "Display lacks the code: {e}"
        );
        assert!(e.service().unwrap().request_id.is_some(), "{e:?}");
        let stats = emu.stats().await;
        assert_eq!(
            stats["total_requests"].as_u64(),
            Some(1),
            "case {} {}: {stats}",
            case.op,
            case.code
        );
        assert_eq!(stats["requests"][case.op].as_u64(), Some(1), "{stats}");
    }
}

/// Every GetBlob answer is cut in half once; the download resumes from the
/// byte it reached (one more request each time) and yields identical bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_downloads_resume() {
    let emu = Emu::start().await;
    let c = emu.new_container("trunc").await;
    let key = random_key();
    let data = pattern(8 * MIB + 3, 8);
    c.upload(
        "b.bin",
        &data[..],
        &CommitOptions::default(),
        Some(&key),
        // Small blocks: the emulator sends one body frame per block, and
        // its truncation fault needs several frames to deliver the headers
        // before cutting (see the report on the emulator's Truncate body).
        UploadOptions {
            block_size: 64 * 1024,
            concurrency: 4,
        },
    )
    .await
    .unwrap();

    // Exactly one truncation: the first answer is cut, then faults go off.
    emu.reset_stats().await;
    emu.set_faults(
        json!({"rate": 1.0, "kinds": ["truncate"], "seed": 1, "operations": ["GetBlob"]}),
    )
    .await;
    let dl = c
        .get_blob("b.bin", None, Some(&key), &none())
        .await
        .unwrap();
    emu.clear_faults().await;
    let got = drain(dl).await.expect("resumed download");
    assert!(got == data, "resumed bytes differ");
    let stats = emu.stats().await;
    assert_eq!(stats["faults_injected"].as_u64(), Some(1), "{stats}");
    assert_eq!(stats["requests"]["GetBlob"].as_u64(), Some(2), "{stats}");

    // Seeded 50% truncation over many reads: all identical.
    emu.reset_stats().await;
    emu.set_faults(
        json!({"rate": 0.5, "kinds": ["truncate"], "seed": 7, "operations": ["GetBlob"]}),
    )
    .await;
    for i in 0..8u64 {
        let start = i * 1_000_003;
        let end = start + MIB as u64 + i;
        let (b, _) = c
            .read_range("b.bin", ByteRange::new(start, end), Some(&key), &none())
            .await
            .unwrap();
        assert!(b[..] == data[start as usize..end as usize], "read {i}");
    }
    let stats = emu.stats().await;
    emu.clear_faults().await;
    let faults = stats["faults_injected"].as_u64().unwrap();
    assert!(faults > 0, "{stats}");
    assert_eq!(
        stats["requests"]["GetBlob"].as_u64(),
        Some(8 + faults),
        "{stats}"
    );
}

/// The blob is overwritten while a download is in progress; the connection
/// is then cut, and the resumption (If-Match on the first ETag) must report
/// `BlobError::Changed` instead of splicing two versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_changed_between_resumptions() {
    let emu = Emu::start().await;
    let c = emu.new_container("changed").await;
    let key = random_key();
    let v1 = pattern(4 * MIB, 1);
    let v2 = pattern(4 * MIB, 2);
    c.upload(
        "f",
        &v1[..],
        &CommitOptions::default(),
        Some(&key),
        UploadOptions {
            block_size: 64 * 1024,
            concurrency: 4,
        },
    )
    .await
    .unwrap();

    emu.reset_stats().await;
    emu.set_faults(
        json!({"rate": 1.0, "kinds": ["truncate"], "seed": 3, "operations": ["GetBlob"]}),
    )
    .await;
    let mut dl = c.get_blob("f", None, Some(&key), &none()).await.unwrap();
    emu.clear_faults().await;
    let first = dl.next_chunk().await.unwrap().expect("a first chunk");
    assert!(first[..] == v1[..first.len()]);
    c.put_blob("f", Bytes::from(v2), &CommitOptions::default(), Some(&key))
        .await
        .unwrap();
    let mut got = first.to_vec();
    let err = loop {
        match dl.next_chunk().await {
            Ok(Some(ch)) => got.extend_from_slice(&ch),
            Ok(None) => panic!("download finished across an overwrite"),
            Err(e) => break e,
        }
    };
    assert!(matches!(err, BlobError::Changed { .. }), "{err}");
    assert!(err.to_string().contains("changed"), "{err}");
    assert!(got.len() <= 2 * MIB, "the cut is at most half the body");
    assert!(got[..] == v1[..got.len()], "bytes before the cut are v1's");
    assert_eq!(emu.count("GetBlob").await, 2, "one resumption attempt");
}

/// A commit whose first attempt succeeded but whose answer was lost (the
/// connection dropped after the service committed) must not fail the upload:
/// the retry finds its own block list committed. Faults hit only
/// PutBlockList, seeded, 50%: some commits lose their first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_with_lost_answer_is_recognised() {
    let emu = Emu::start().await;
    let c = emu.new_container("lost").await;
    let key = random_key();
    emu.set_faults(
        json!({"rate": 0.5, "kinds": ["truncate"], "seed": 11, "operations": ["PutBlockList"]}),
    )
    .await;
    let mut lost_first = 0;
    for i in 0..8u64 {
        let data = pattern(3 * 64 * 1024, i);
        emu.reset_stats().await;
        let r = c
            .upload(
                &format!("f{i}"),
                &data[..],
                &CommitOptions::default(),
                Some(&key),
                UploadOptions {
                    block_size: 64 * 1024,
                    concurrency: 2,
                },
            )
            .await;
        let stats = emu.stats().await;
        let commits = stats["requests"]["PutBlockList"].as_u64().unwrap();
        if commits > 1 {
            lost_first += 1;
        }
        r.unwrap_or_else(|e| panic!("upload {i} ({commits} PutBlockList requests): {e}"));
        let (b, _) = c
            .read_range(&format!("f{i}"), ByteRange::from(0), Some(&key), &none())
            .await
            .unwrap();
        assert!(b[..] == data[..]);
    }
    emu.clear_faults().await;
    assert!(lost_first > 0, "the seed never dropped a commit answer");
}
