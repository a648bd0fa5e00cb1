//! The client against the bundled emulator over HTTPS: every client operation
//! with and without a customer-provided key, every CPK rule of the protocol
//! reference §3.3, CPK over plain http, SAS, key failover and rotation.

mod common;
use bytes::Bytes;
use common::emu::{drain, random_key, Emu};
use common::*;
use cpkfs::blob::*;
use cpkfs_emulator::{EmulatorConfig, DEV_KEY1, DEV_KEY2};
use std::collections::BTreeMap;
use std::sync::Arc;

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
}

fn none() -> Conditions {
    Conditions::default()
}

/// The error is a service error with this status and code, carries the
/// service's request id, and names the code in its Display.
#[track_caller]
fn expect_code<T>(r: Result<T, BlobError>, status: u16, code: &str) -> BlobError {
    let Err(e) = r else {
        panic!("expected {status} {code}, got success")
    };
    let s = e
        .service()
        .unwrap_or_else(|| panic!("expected a service error {code}, got {e}"));
    assert_eq!(s.status, status, "{e}");
    assert_eq!(s.code(), code, "{e}");
    assert!(s.request_id.is_some(), "no request id in {e:?}");
    assert!(e.to_string().contains(code), "Display lacks the code: {e}");
    e
}

fn key_cred(keys: &[&str]) -> Credential {
    Credential::SharedKey(Arc::new(
        SharedKeyCredential::new(
            DEV_ACCOUNT,
            keys.iter()
                .map(|k| AccountKey::from_base64(k).unwrap())
                .collect(),
        )
        .unwrap(),
    ))
}

const OTHER_ACCOUNT_KEY: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==";

async fn commit(
    c: &BlobClient,
    name: &str,
    refs: &[BlockRef],
    opts: &CommitOptions,
    key: Option<&CustomerKey>,
) -> Result<WriteResult, BlobError> {
    c.put_block_list(name, refs, opts, key).await
}

/// Every operation of the client; `key` None = plain blobs, Some = CPK blobs.
async fn every_operation(emu: &Emu, key: Option<&CustomerKey>) {
    let c = emu.client(&unique("ops"), key);
    expect_code(c.get_container_properties().await, 404, "ContainerNotFound");
    c.create_container().await.unwrap();
    expect_code(c.create_container().await, 409, "ContainerAlreadyExists");
    c.get_container_properties().await.unwrap();
    let want_sha = key.map(|k| k.sha256().to_string());

    // Put Blob with content type and metadata (i_ before i0 in service order).
    let opts = CommitOptions {
        content_type: Some("text/plain".into()),
        metadata: md(&[("i0", "b"), ("i_", "a"), ("mode", "0644")]),
        ..Default::default()
    };
    let w = c
        .put_blob("dir/a.txt", Bytes::from_static(b"Hello World"), &opts, key)
        .await
        .unwrap();
    assert!(w.etag.starts_with('"'), "{w:?}");
    assert_eq!(w.cpk_sha256, want_sha);
    let p = c
        .get_blob_properties("dir/a.txt", key, &none())
        .await
        .unwrap();
    assert_eq!(p.content_length, 11);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.metadata, opts.metadata);
    assert_eq!(p.etag, w.etag);
    assert_eq!(p.cpk_sha256, want_sha);
    assert!(p.server_encrypted);

    // Whole, ranged and conditional reads.
    let (b, props) = c
        .read_range(
            "dir/a.txt",
            ByteRange::new(6, 11),
            key,
            &Conditions::if_match(&w.etag),
        )
        .await
        .unwrap();
    assert_eq!(&b[..], b"World");
    assert_eq!(props.content_length, 11, "size from Content-Range");
    assert_eq!(props.cpk_sha256, want_sha);
    let dl = c.get_blob("dir/a.txt", None, key, &none()).await.unwrap();
    assert_eq!(dl.remaining(), 11);
    assert_eq!(drain(dl).await.unwrap(), b"Hello World");
    let (b, _) = c
        .read_range("dir/a.txt", ByteRange::from(3), key, &none())
        .await
        .unwrap();
    assert_eq!(&b[..], b"lo World");
    expect_code(
        c.read_range(
            "dir/a.txt",
            ByteRange::new(0, 5),
            key,
            &Conditions::if_match("\"0x1\""),
        )
        .await,
        412,
        "ConditionNotMet",
    );
    expect_code(
        c.get_blob_properties("dir/nope", key, &none()).await,
        404,
        "BlobNotFound",
    );
    expect_code(
        c.read_range("dir/a.txt", ByteRange::from(11), key, &none())
            .await,
        416,
        "InvalidRange",
    );

    // Create-only and conditional overwrite with Put Blob.
    expect_code(
        c.put_blob(
            "dir/a.txt",
            Bytes::new(),
            &CommitOptions {
                conditions: Conditions::create_only(),
                ..Default::default()
            },
            key,
        )
        .await,
        409,
        "BlobAlreadyExists",
    );
    expect_code(
        c.put_blob(
            "dir/a.txt",
            Bytes::new(),
            &CommitOptions {
                conditions: Conditions::if_match("\"0x1\""),
                ..Default::default()
            },
            key,
        )
        .await,
        412,
        "ConditionNotMet",
    );

    // Blocks: stage, list uncommitted (no key needed), commit with metadata.
    let name = "dir/sub/blocks.bin";
    let ids = BlockIdGen::new();
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(100_000 + i * 7, i as u64)).collect();
    for (i, d) in data.iter().enumerate() {
        c.put_block(name, &ids.id(i as u64), Bytes::from(d.clone()), key)
            .await
            .unwrap();
    }
    let bl = c.get_block_list(name, BlockListType::All).await.unwrap();
    assert_eq!(
        bl.uncommitted
            .iter()
            .map(|b| b.id.clone())
            .collect::<Vec<_>>(),
        (0..3).map(|i| ids.id(i)).collect::<Vec<_>>()
    );
    assert!(bl.committed.is_empty());
    expect_code(
        c.get_blob_properties(name, key, &none()).await,
        404,
        "BlobNotFound",
    );
    let refs: Vec<BlockRef> = (0..3).map(|i| BlockRef::Uncommitted(ids.id(i))).collect();
    let opts2 = CommitOptions {
        content_type: Some("application/x-test".into()),
        metadata: md(&[("mtime", "1700000000")]),
        conditions: Conditions::create_only(),
        tags: None,
    };
    let w2 = commit(&c, name, &refs, &opts2, key).await.unwrap();
    assert_eq!(w2.cpk_sha256, want_sha);
    // Create-only again fails now that it exists.
    c.put_block(name, &ids.id(5), Bytes::from_static(b"zz"), key)
        .await
        .unwrap();
    expect_code(
        commit(&c, name, &[BlockRef::Uncommitted(ids.id(5))], &opts2, key).await,
        409,
        "BlobAlreadyExists",
    );
    let bl = c
        .get_block_list(name, BlockListType::Committed)
        .await
        .unwrap();
    assert_eq!(
        bl.committed.iter().map(|b| b.size).collect::<Vec<_>>(),
        data.iter().map(|d| d.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(bl.etag.as_deref(), Some(w2.etag.as_str()));
    assert!(bl.uncommitted.is_empty(), "a failed commit kept nothing?");

    // Replace the middle block; Committed, Uncommitted and Latest refs; If-Match.
    let new_mid = pattern(5000, 99);
    c.put_block(name, &ids.id(10), Bytes::from(new_mid.clone()), key)
        .await
        .unwrap();
    let new_last = pattern(777, 98);
    c.put_block(name, &ids.id(2), Bytes::from(new_last.clone()), key)
        .await
        .unwrap();
    let refs = vec![
        BlockRef::Committed(ids.id(0)),
        BlockRef::Uncommitted(ids.id(10)),
        BlockRef::Latest(ids.id(2)), // the uncommitted re-upload wins
        BlockRef::Committed(ids.id(0)),
    ];
    let opts3 = CommitOptions {
        content_type: Some("application/x-test2".into()),
        metadata: md(&[("uid", "1000")]),
        conditions: Conditions::if_match(&w2.etag),
        tags: None,
    };
    let w3 = commit(&c, name, &refs, &opts3, key).await.unwrap();
    let (got, props) = c
        .read_range(name, ByteRange::from(0), key, &none())
        .await
        .unwrap();
    let expect: Vec<u8> = [data[0].clone(), new_mid, new_last, data[0].clone()].concat();
    assert_eq!(got.len(), expect.len());
    assert!(got[..] == expect[..], "committed content differs");
    assert_eq!(props.content_type.as_deref(), Some("application/x-test2"));
    assert_eq!(
        props.metadata,
        md(&[("uid", "1000")]),
        "commit replaces all"
    );
    assert_eq!(props.etag, w3.etag);
    // A stale If-Match commit is refused; an unknown id is InvalidBlockList.
    expect_code(
        commit(&c, name, &[BlockRef::Committed(ids.id(0))], &opts3, key).await,
        412,
        "ConditionNotMet",
    );
    expect_code(
        commit(
            &c,
            name,
            &[BlockRef::Uncommitted(ids.id(77))],
            &CommitOptions::default(),
            key,
        )
        .await,
        400,
        "InvalidBlockList",
    );
    expect_code(
        commit(
            &c,
            name,
            &[BlockRef::Committed(ids.id(10))],
            &CommitOptions {
                conditions: Conditions {
                    if_match: None,
                    if_none_match: Some(w3.etag.clone()),
                },
                ..Default::default()
            },
            key,
        )
        .await,
        412,
        "ConditionNotMet",
    );

    // Set Blob Metadata (with the key for CPK blobs); replaces all.
    let wm = c
        .set_blob_metadata(
            "dir/a.txt",
            &md(&[("uid", "1000"), ("foo_bar", "x"), ("foo2_bar", "y")]),
            key,
            &none(),
        )
        .await
        .unwrap();
    assert_ne!(wm.etag, w.etag, "Set Blob Metadata changes the ETag");
    assert_eq!(wm.cpk_sha256, want_sha);
    let p = c
        .get_blob_properties("dir/a.txt", key, &none())
        .await
        .unwrap();
    assert_eq!(
        p.metadata,
        md(&[("uid", "1000"), ("foo_bar", "x"), ("foo2_bar", "y")])
    );
    // Set Blob Properties needs no key, even on CPK blobs.
    c.set_blob_properties("dir/a.txt", Some("application/json"), &none())
        .await
        .unwrap();
    let p = c
        .get_blob_properties("dir/a.txt", key, &none())
        .await
        .unwrap();
    assert_eq!(p.content_type.as_deref(), Some("application/json"));
    assert_eq!(p.metadata.len(), 3, "Set Blob Properties keeps metadata");

    // Empty blob: ranged read falls back to a whole read.
    c.put_blob("empty", Bytes::new(), &CommitOptions::default(), key)
        .await
        .unwrap();
    let (b, p) = c
        .read_range("empty", ByteRange::new(0, 8), key, &none())
        .await
        .unwrap();
    assert!(b.is_empty());
    assert_eq!(p.content_length, 0);

    // Names needing escapes.
    for n in ["sp ace/x+y=z.txt", "ünï/çødé", "q?#%&.txt"] {
        c.put_blob(n, Bytes::from_static(b"x"), &CommitOptions::default(), key)
            .await
            .unwrap();
        let p = c.get_blob_properties(n, key, &none()).await.unwrap();
        assert_eq!(p.content_length, 1, "{n}");
    }

    // Listing: delimiter + marker paging with maxresults=2.
    let mut pager = c.list_pager(ListOptions {
        delimiter: Some("/".into()),
        max_results: Some(2),
        include_metadata: true,
        ..Default::default()
    });
    let (mut blobs, mut prefixes, mut pages) = (vec![], vec![], 0);
    while let Some(p) = pager.next_page().await.unwrap() {
        pages += 1;
        assert!(
            p.blobs.len() + p.prefixes.len() <= 2,
            "page over maxresults"
        );
        if pages < 3 {
            assert!(p.next_marker.is_some(), "page {pages} has no NextMarker");
        }
        blobs.extend(p.blobs.into_iter().map(|b| b.name));
        prefixes.extend(p.prefixes);
    }
    assert_eq!(pages, 3, "5 entries at 2 per page");
    blobs.sort();
    prefixes.sort();
    assert_eq!(blobs, vec!["empty", "q?#%&.txt"]);
    assert_eq!(prefixes, vec!["dir/", "sp ace/", "ünï/"]);
    // A marker taken from a first page continues after it, no repeats.
    let first = c
        .list_blobs(&ListOptions {
            max_results: Some(3),
            ..Default::default()
        })
        .await
        .unwrap();
    let rest = c
        .list_blobs(&ListOptions {
            marker: first.next_marker.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut all: Vec<String> = first
        .blobs
        .iter()
        .chain(rest.blobs.iter())
        .map(|b| b.name.clone())
        .collect();
    assert_eq!(first.blobs.len(), 3);
    assert!(rest.next_marker.is_none());
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a name was listed twice");
    assert_eq!(n, 6, "{all:?}");
    // Prefix listing with metadata: plain blobs show it, CPK blobs hide it.
    let page = c
        .list_blobs(&ListOptions {
            prefix: Some("dir/".into()),
            include_metadata: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let names: Vec<&str> = page.blobs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, vec!["dir/a.txt", "dir/sub/blocks.bin"]);
    for b in &page.blobs {
        assert_eq!(b.properties.cpk_sha256, want_sha, "{}", b.name);
        assert_eq!(b.properties.metadata_encrypted, key.is_some(), "{}", b.name);
        if key.is_some() {
            assert!(b.properties.metadata.is_empty(), "CPK metadata leaked");
        }
    }
    if key.is_none() {
        assert_eq!(
            page.blobs[0]
                .properties
                .metadata
                .get("uid")
                .map(String::as_str),
            Some("1000")
        );
    }
    assert_eq!(page.blobs[1].properties.content_length, expect.len() as u64);

    // Streamed multi-block upload and download.
    let big = pattern(5 * 1024 * 1024 + 17, 7);
    let up = UploadOptions {
        block_size: 1024 * 1024,
        concurrency: 3,
    };
    let wb = c
        .upload("big.bin", &big[..], &CommitOptions::default(), key, up)
        .await
        .unwrap();
    assert_eq!(wb.cpk_sha256, want_sha);
    let bl = c
        .get_block_list("big.bin", BlockListType::Committed)
        .await
        .unwrap();
    assert_eq!(bl.committed.len(), 6);
    let got = drain(c.get_blob("big.bin", None, key, &none()).await.unwrap())
        .await
        .unwrap();
    assert!(got == big, "big download differs");

    // Copy: fine from a plain source, 409 CannotVerifyCopySource from a CPK one.
    let copied = c.copy_blob("copy/a.txt", "dir/a.txt", None).await;
    if key.is_some() {
        expect_code(copied, 409, "CannotVerifyCopySource");
    } else {
        let cr = copied.unwrap();
        assert_eq!(cr.copy_status.as_deref(), Some("success"));
        let (b, p) = c
            .read_range("copy/a.txt", ByteRange::from(0), None, &none())
            .await
            .unwrap();
        assert_eq!(&b[..], b"Hello World");
        assert_eq!(p.metadata.get("foo_bar").map(String::as_str), Some("x"));
        let cr = c
            .copy_blob("copy/b.txt", "dir/a.txt", Some(&md(&[("new", "1")])))
            .await
            .unwrap();
        assert!(cr.etag.is_some());
        let p = c
            .get_blob_properties("copy/b.txt", None, &none())
            .await
            .unwrap();
        assert_eq!(p.metadata, md(&[("new", "1")]));
    }

    // Delete (no key needed); 404 afterwards.
    c.delete_blob("dir/a.txt", &none()).await.unwrap();
    expect_code(
        c.get_blob_properties("dir/a.txt", key, &none()).await,
        404,
        "BlobNotFound",
    );
    expect_code(
        c.delete_blob("dir/a.txt", &none()).await,
        404,
        "BlobNotFound",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_without_cpk() {
    let emu = Emu::start().await;
    every_operation(&emu, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_with_cpk() {
    let emu = Emu::start().await;
    let key = random_key();
    every_operation(&emu, Some(&key)).await;
}

/// Reference §3.3, row by row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpk_rules_of_the_reference_matrix() {
    let emu = Emu::start().await;
    let c = emu.new_container("rules").await;
    let k = random_key();
    let k2 = random_key();
    let (k, k2) = (Some(&k), Some(&k2));
    let dflt = CommitOptions::default();
    let ids = BlockIdGen::new();

    c.put_blob("cpk", Bytes::from_static(b"secret"), &dflt, k)
        .await
        .unwrap();
    c.put_blob("plain", Bytes::from_static(b"public"), &dflt, None)
        .await
        .unwrap();

    // GET/HEAD of a CPK blob: no key, another key.
    let uses = "BlobUsesCustomerSpecifiedEncryption";
    let mismatch = "BlobCustomerSpecifiedEncryptionMismatch";
    let doesnt = "BlobDoesNotUseCustomerSpecifiedEncryption";
    expect_code(c.get_blob_properties("cpk", None, &none()).await, 409, uses);
    expect_code(
        c.get_blob_properties("cpk", k2, &none()).await,
        409,
        mismatch,
    );
    expect_code(c.get_blob("cpk", None, None, &none()).await, 409, uses);
    expect_code(c.get_blob("cpk", None, k2, &none()).await, 409, mismatch);
    expect_code(
        c.read_range("cpk", ByteRange::new(0, 3), None, &none())
            .await,
        409,
        uses,
    );
    expect_code(
        c.read_range("cpk", ByteRange::new(0, 3), k2, &none()).await,
        409,
        mismatch,
    );
    // Set Blob Metadata on a CPK blob needs the key.
    expect_code(
        c.set_blob_metadata("cpk", &md(&[("a", "b")]), None, &none())
            .await,
        409,
        uses,
    );
    expect_code(
        c.set_blob_metadata("cpk", &md(&[("a", "b")]), k2, &none())
            .await,
        409,
        mismatch,
    );
    // A key sent to a non-CPK blob: GET, HEAD, Set Blob Metadata.
    expect_code(
        c.get_blob_properties("plain", k, &none()).await,
        409,
        doesnt,
    );
    expect_code(c.get_blob("plain", None, k, &none()).await, 409, doesnt);
    expect_code(
        c.set_blob_metadata("plain", &md(&[("a", "b")]), k, &none())
            .await,
        409,
        doesnt,
    );
    // Reading with the right key works and reports the hash.
    let (b, p) = c
        .read_range("cpk", ByteRange::from(0), k, &none())
        .await
        .unwrap();
    assert_eq!(&b[..], b"secret");
    assert_eq!(p.cpk_sha256.as_deref(), Some(k.unwrap().sha256()));

    // Without the key: Get Block List, List, Set Blob Properties, Delete work.
    c.get_block_list("cpk", BlockListType::All).await.unwrap();
    let page = c
        .list_blobs(&ListOptions {
            include_metadata: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let item = page.blobs.iter().find(|b| b.name == "cpk").unwrap();
    assert_eq!(
        item.properties.cpk_sha256.as_deref(),
        Some(k.unwrap().sha256())
    );
    assert!(item.properties.metadata_encrypted);
    assert_eq!(item.properties.content_length, 6);
    let item = page.blobs.iter().find(|b| b.name == "plain").unwrap();
    assert_eq!(item.properties.cpk_sha256, None);
    assert!(!item.properties.metadata_encrypted);
    c.set_blob_properties("cpk", Some("text/x-secret"), &none())
        .await
        .unwrap();
    let p = c.get_blob_properties("cpk", k, &none()).await.unwrap();
    assert_eq!(p.content_type.as_deref(), Some("text/x-secret"));

    // Put Block with another key than the staged uncommitted blocks → 409.
    c.put_block("staged", &ids.id(0), Bytes::from_static(b"aa"), k)
        .await
        .unwrap();
    expect_code(
        c.put_block("staged", &ids.id(1), Bytes::from_static(b"bb"), k2)
            .await,
        409,
        mismatch,
    );
    expect_code(
        c.put_block("staged", &ids.id(1), Bytes::from_static(b"bb"), None)
            .await,
        409,
        uses,
    );
    // Non-CPK staged blocks and a keyed Put Block → 409 DoesNotUse.
    c.put_block("staged-plain", &ids.id(0), Bytes::from_static(b"aa"), None)
        .await
        .unwrap();
    expect_code(
        c.put_block("staged-plain", &ids.id(1), Bytes::from_static(b"bb"), k)
            .await,
        409,
        doesnt,
    );
    // Put Block List committing CPK-staged blocks without the key → 409;
    // with another key → mismatch; with the key → the blob is CPK.
    let refs = [BlockRef::Uncommitted(ids.id(0))];
    expect_code(
        c.put_block_list("staged", &refs, &dflt, None).await,
        409,
        uses,
    );
    expect_code(
        c.put_block_list("staged", &refs, &dflt, k2).await,
        409,
        mismatch,
    );
    let w = c.put_block_list("staged", &refs, &dflt, k).await.unwrap();
    assert_eq!(w.cpk_sha256.as_deref(), Some(k.unwrap().sha256()));
    // Committed refs of a CPK blob also need its key.
    expect_code(
        c.put_block_list("staged", &[BlockRef::Committed(ids.id(0))], &dflt, None)
            .await,
        409,
        uses,
    );
    expect_code(
        c.put_block_list("staged", &[BlockRef::Latest(ids.id(0))], &dflt, k2)
            .await,
        409,
        mismatch,
    );

    // Put Block on a blob whose committed content is not CPK is allowed, and
    // Put Block List then replaces the non-CPK blob with a CPK one.
    c.put_block("plain", &ids.id(0), Bytes::from_static(b"now secret"), k)
        .await
        .unwrap();
    let w = c
        .put_block_list("plain", &[BlockRef::Uncommitted(ids.id(0))], &dflt, k)
        .await
        .unwrap();
    assert_eq!(w.cpk_sha256.as_deref(), Some(k.unwrap().sha256()));
    expect_code(
        c.get_blob_properties("plain", None, &none()).await,
        409,
        uses,
    );
    let (b, _) = c
        .read_range("plain", ByteRange::from(0), k, &none())
        .await
        .unwrap();
    assert_eq!(&b[..], b"now secret");

    // Copy from a CPK source → 409 CannotVerifyCopySource.
    expect_code(
        c.copy_blob("copy-of-cpk", "cpk", None).await,
        409,
        "CannotVerifyCopySource",
    );

    // Delete needs no key.
    c.delete_blob("cpk", &none()).await.unwrap();
    expect_code(
        c.get_blob_properties("cpk", k, &none()).await,
        404,
        "BlobNotFound",
    );
}

/// The key really protects the data: only key A reads what key A wrote, and
/// the emulator's files on disk hold neither the plaintext nor the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpk_data_is_encrypted_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let emu = Emu::start_with(EmulatorConfig {
        data_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    let c = emu.new_container("enc").await;
    let a = random_key();
    let b = random_key();
    let marker = b"CPKFS-PLAINTEXT-MARKER-0123456789abcdef".repeat(2000);
    let plain_marker = b"CPKFS-VISIBLE-MARKER-0123456789abcdef".repeat(2000);
    c.put_blob(
        "a.bin",
        Bytes::from(marker.clone()),
        &CommitOptions::default(),
        Some(&a),
    )
    .await
    .unwrap();
    c.put_block(
        "blocks.bin",
        &BlockIdGen::new().id(0),
        Bytes::from(marker.clone()),
        Some(&a),
    )
    .await
    .unwrap();
    c.put_blob(
        "plain.bin",
        Bytes::from(plain_marker.clone()),
        &CommitOptions::default(),
        None,
    )
    .await
    .unwrap();

    let (got, p) = c
        .read_range("a.bin", ByteRange::from(0), Some(&a), &none())
        .await
        .unwrap();
    assert!(got[..] == marker[..]);
    assert_eq!(p.cpk_sha256.as_deref(), Some(a.sha256()));
    expect_code(
        c.get_blob_properties("a.bin", Some(&b), &none()).await,
        409,
        "BlobCustomerSpecifiedEncryptionMismatch",
    );
    expect_code(
        c.get_blob("a.bin", None, Some(&b), &none()).await,
        409,
        "BlobCustomerSpecifiedEncryptionMismatch",
    );

    // Scan every file the emulator wrote.
    let needle = &marker[..64];
    let plain_needle = &plain_marker[..64];
    let key_b64 = a.key_base64().expose().as_bytes().to_vec();
    let key_raw = a.raw().expose().to_vec();
    let (mut files, mut plain_seen) = (0, false);
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            files += 1;
            let data = std::fs::read(&path).unwrap();
            let has = |n: &[u8]| data.windows(n.len()).any(|w| w == n);
            assert!(!has(needle), "plaintext of a CPK blob in {path:?}");
            assert!(!has(&key_b64), "CPK (base64) stored in {path:?}");
            assert!(!has(&key_raw), "CPK (raw) stored in {path:?}");
            plain_seen |= has(plain_needle);
        }
    }
    assert!(files >= 3, "the emulator persisted only {files} files");
    assert!(
        plain_seen,
        "the scan did not find a non-CPK blob's bytes: scan broken?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpk_over_http_is_refused_by_client_and_emulator() {
    let emu = Emu::start_with(EmulatorConfig {
        tls: false,
        ..Default::default()
    })
    .await;
    assert!(emu.url.starts_with("http://"), "{}", emu.url);
    let key = random_key();

    // The client refuses at construction when a CPK is configured…
    let mut cfg = emu.config("c", dev_credential());
    cfg.cpk = Some(Arc::new(key.clone()));
    assert!(matches!(BlobClient::new(cfg), Err(BlobError::CpkOverHttp)));
    // …and per request, before sending anything.
    let c = emu.new_container("http").await;
    c.put_blob(
        "x",
        Bytes::from_static(b"x"),
        &CommitOptions::default(),
        None,
    )
    .await
    .unwrap();
    emu.reset_stats().await;
    let e = c
        .put_blob(
            "y",
            Bytes::from_static(b"y"),
            &CommitOptions::default(),
            Some(&key),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::CpkOverHttp), "{e}");
    assert!(e.to_string().contains("https"), "{e}");
    assert!(matches!(
        c.get_blob_properties("x", Some(&key), &none()).await,
        Err(BlobError::CpkOverHttp)
    ));
    assert!(matches!(
        c.put_block("y", &BlockIdGen::new().id(0), Bytes::new(), Some(&key))
            .await,
        Err(BlobError::CpkOverHttp)
    ));
    assert_eq!(
        emu.total_requests().await,
        0,
        "a CPK request reached the wire"
    );

    // The emulator answers a raw, correctly signed CPK request over http
    // with 400 AccountRequiresHttps.
    let url = url::Url::parse(&format!("{}/{}/{}/x", emu.url, DEV_ACCOUNT, c.container())).unwrap();
    let mut h = http::HeaderMap::new();
    h.insert(
        "x-ms-date",
        httpdate::fmt_http_date(std::time::SystemTime::now())
            .parse()
            .unwrap(),
    );
    h.insert("x-ms-version", API_VERSION.parse().unwrap());
    for (n, v) in key.headers() {
        h.insert(n, v);
    }
    let sts = cpkfs::blob::signing::string_to_sign(&http::Method::GET, &url, &h, DEV_ACCOUNT);
    let sig = AccountKey::from_base64(DEV_KEY1).unwrap().sign(&sts);
    h.insert(
        "authorization",
        format!("SharedKey {DEV_ACCOUNT}:{sig}").parse().unwrap(),
    );
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url.clone())
        .headers(h.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.headers()
            .get("x-ms-error-code")
            .and_then(|v| v.to_str().ok()),
        Some("AccountRequiresHttps")
    );
    assert!(resp.headers().contains_key("x-ms-request-id"));
    // Control: the same signed request without CPK headers is served.
    let mut plain = http::HeaderMap::new();
    plain.insert("x-ms-date", h["x-ms-date"].clone());
    plain.insert("x-ms-version", h["x-ms-version"].clone());
    let sts = cpkfs::blob::signing::string_to_sign(&http::Method::GET, &url, &plain, DEV_ACCOUNT);
    let sig = AccountKey::from_base64(DEV_KEY1).unwrap().sign(&sts);
    plain.insert(
        "authorization",
        format!("SharedKey {DEV_ACCOUNT}:{sig}").parse().unwrap(),
    );
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .headers(plain)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(&resp.bytes().await.unwrap()[..], b"x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sas_wrong_key_failover_and_rotation() {
    let emu = Emu::start().await;
    let owner = emu.new_container("sas").await;
    let container = owner.container().to_string();
    let cpk = random_key();
    let key1 = AccountKey::from_base64(DEV_KEY1).unwrap();
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(2))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();

    // Account SAS: writes (with a CPK), reads, lists.
    let token = sas::AccountSas {
        account: DEV_ACCOUNT,
        permissions: "rwdlac",
        services: "b",
        resource_types: "sco",
        start: None,
        expiry: &expiry,
        ip: None,
        protocol: "https",
        version: API_VERSION,
    }
    .token(&key1);
    let sas = BlobClient::new(emu.config(
        &container,
        Credential::Sas(SasToken::parse(&token).unwrap()),
    ))
    .unwrap();
    sas.put_blob(
        "s.txt",
        Bytes::from_static(b"sas"),
        &CommitOptions::default(),
        Some(&cpk),
    )
    .await
    .unwrap();
    let (b, _) = sas
        .read_range("s.txt", ByteRange::from(0), Some(&cpk), &none())
        .await
        .unwrap();
    assert_eq!(&b[..], b"sas");
    assert_eq!(
        sas.list_blobs(&ListOptions::default())
            .await
            .unwrap()
            .blobs
            .len(),
        1
    );

    // Container service SAS: read+list only → writes are refused.
    let token = sas::ServiceSas {
        account: DEV_ACCOUNT,
        container: &container,
        blob: None,
        permissions: "rl",
        start: None,
        expiry: &expiry,
        protocol: "https",
        version: API_VERSION,
    }
    .token(&key1);
    let csas = BlobClient::new(emu.config(
        &container,
        Credential::Sas(SasToken::parse(&token).unwrap()),
    ))
    .unwrap();
    let (b, _) = csas
        .read_range("s.txt", ByteRange::from(0), Some(&cpk), &none())
        .await
        .unwrap();
    assert_eq!(&b[..], b"sas");
    assert_eq!(
        csas.list_blobs(&ListOptions::default())
            .await
            .unwrap()
            .blobs
            .len(),
        1
    );
    expect_code(
        csas.put_blob("t.txt", Bytes::new(), &CommitOptions::default(), None)
            .await,
        403,
        "AuthorizationPermissionMismatch",
    );
    // A container SAS signed with a wrong key → 403 AuthenticationFailed.
    let token = sas::ServiceSas {
        account: DEV_ACCOUNT,
        container: &container,
        blob: None,
        permissions: "rl",
        start: None,
        expiry: &expiry,
        protocol: "https",
        version: API_VERSION,
    }
    .token(&AccountKey::from_base64(OTHER_ACCOUNT_KEY).unwrap());
    let bad_sas = BlobClient::new(emu.config(
        &container,
        Credential::Sas(SasToken::parse(&token).unwrap()),
    ))
    .unwrap();
    expect_code(
        bad_sas.list_blobs(&ListOptions::default()).await,
        403,
        "AuthenticationFailed",
    );

    // A wrong account key: 403 AuthenticationFailed, MAC mismatch, one request.
    emu.reset_stats().await;
    let bad = BlobClient::new(emu.config(&container, key_cred(&[OTHER_ACCOUNT_KEY]))).unwrap();
    let e = expect_code(
        bad.get_container_properties().await,
        403,
        "AuthenticationFailed",
    );
    assert!(e.service().unwrap().mac_mismatch, "{e:?}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    assert_eq!(emu.total_requests().await, 1, "a 403 was retried");

    // Key failover: first key wrong, second right → two requests, success,
    // and the client stays on the good key afterwards.
    emu.reset_stats().await;
    let fo =
        BlobClient::new(emu.config(&container, key_cred(&[OTHER_ACCOUNT_KEY, DEV_KEY2]))).unwrap();
    fo.get_container_properties().await.unwrap();
    assert_eq!(emu.total_requests().await, 2);
    fo.get_container_properties().await.unwrap();
    assert_eq!(
        emu.total_requests().await,
        3,
        "the client went back to the bad key"
    );

    // Regenerate key 1: the old key 1 now fails; a client knowing key 2 fails over.
    let only1 = BlobClient::new(emu.config(&container, key_cred(&[DEV_KEY1]))).unwrap();
    only1.get_container_properties().await.unwrap();
    let new1 = emu.regenerate_key(1).await;
    assert_ne!(new1, DEV_KEY1);
    let e = expect_code(
        only1.get_container_properties().await,
        403,
        "AuthenticationFailed",
    );
    assert!(e.service().unwrap().mac_mismatch);
    let both = BlobClient::new(emu.config(&container, key_cred(&[DEV_KEY1, DEV_KEY2]))).unwrap();
    both.get_container_properties().await.unwrap();
    let fresh = BlobClient::new(emu.config(&container, key_cred(&[&new1]))).unwrap();
    fresh.get_container_properties().await.unwrap();
    // SAS tokens signed with the old key 1 stop working too.
    expect_code(
        sas.list_blobs(&ListOptions::default()).await,
        403,
        "AuthenticationFailed",
    );
}

/// A server-side copy in ranges (`copy_from_url_in_ranges`, small ranges so a
/// small blob takes the large-blob path): re-keyed from key A to key B by
/// Put Block From URL per range (at most four at once) + Put Block List, no
/// blob bytes through the client, the service's CRC-64 of every range
/// returned in order and matching the data; a source replaced after its HEAD
/// fails the copy (412) and commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_url_in_ranges_rekeys_and_reports_each_range() {
    let emu = Emu::start().await;
    let c = emu.new_container("ranges").await;
    let a = random_key();
    let b = random_key();
    let data = pattern(3 * 1024 * 1024 + 500_000, 4);
    c.put_blob(
        "src",
        Bytes::from(data.clone()),
        &CommitOptions::default(),
        Some(&a),
    )
    .await
    .unwrap();
    let p = c
        .get_blob_properties("src", Some(&a), &none())
        .await
        .unwrap();
    let source = CopySource {
        name: "src",
        key: Some(&a),
        if_match: Some(&p.etag),
    };
    emu.reset_stats().await;
    let copy = c
        .copy_from_url_in_ranges(
            "dst",
            &source,
            p.content_length,
            &CommitOptions::default(),
            Some(&b),
            1024 * 1024,
        )
        .await
        .unwrap();
    assert_eq!(emu.count("PutBlockFromUrl").await, 4);
    assert_eq!(emu.count("PutBlockList").await, 1);
    let st = emu.stats().await;
    assert!(st["bytes_in"].as_u64().unwrap() < 16 * 1024, "{st}");
    assert_eq!(copy.write.cpk_sha256.as_deref(), Some(b.sha256()));
    let ends: Vec<u64> = copy.crcs.iter().map(|(e, _)| *e).collect();
    assert_eq!(ends, [1 << 20, 2 << 20, 3 << 20, data.len() as u64]);
    let mut start = 0;
    for (end, crc) in &copy.crcs {
        assert_eq!(
            *crc,
            cpkfs::blob::crc64::crc64(&data[start as usize..*end as usize]),
            "CRC of the range ending at {end}"
        );
        start = *end;
    }
    let got = drain(c.get_blob("dst", None, Some(&b), &none()).await.unwrap())
        .await
        .unwrap();
    assert!(got == data, "copied bytes differ");

    // The source replaced after its HEAD: 412, and nothing new under "dst2".
    c.put_blob(
        "src",
        Bytes::from_static(b"v2"),
        &CommitOptions::default(),
        Some(&a),
    )
    .await
    .unwrap();
    let e = c
        .copy_from_url_in_ranges(
            "dst2",
            &source,
            p.content_length,
            &CommitOptions::default(),
            Some(&b),
            1024 * 1024,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(412), "{e}");
    let e = c
        .get_blob_properties("dst2", Some(&b), &none())
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_index_tags_with_and_without_cpk() {
    let emu = Emu::start().await;
    let key = random_key();
    blob_tags_round_trip(&emu.new_container("tagsplain").await, None).await;
    blob_tags_round_trip(&emu.new_container("tagscpk").await, Some(&key)).await;
}
