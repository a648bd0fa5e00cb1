//! The client against Microsoft's Azurite: every non-CPK operation. Azurite
//! was written by others, so it keeps our signer and parsers honest.

mod common;
use bytes::Bytes;
use common::*;
use cpkfs::blob::*;
use std::collections::BTreeMap;

fn client(az: &azurite::Azurite, container: &str) -> BlobClient {
    let mut cfg = ClientConfig::new(&az.url, DEV_ACCOUNT, container, dev_credential());
    cfg.retry = fast_retry();
    BlobClient::new(cfg).unwrap()
}

fn md(pairs: &[(&str, &str)]) -> Metadata {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<BTreeMap<_, _>>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_non_cpk_operation_against_azurite() {
    let az = azurite::Azurite::start();
    let c = client(&az, &unique("az"));
    c.create_container().await.unwrap();
    let e = c.create_container().await.unwrap_err();
    assert!(e.is_code("ContainerAlreadyExists"), "{e}");
    c.get_container_properties().await.unwrap();

    // Put Blob with content type and metadata whose service order differs
    // from byte order (i_ before i0): Azurite rejects a byte-order signature.
    let opts = CommitOptions {
        content_type: Some("text/plain".into()),
        metadata: md(&[("i0", "b"), ("i_", "a"), ("mode", "0644")]),
        ..Default::default()
    };
    let w = c
        .put_blob("dir/a.txt", Bytes::from_static(b"Hello World"), &opts, None)
        .await
        .unwrap();
    assert!(w.etag.starts_with('"'));
    let p = c
        .get_blob_properties("dir/a.txt", None, &Conditions::default())
        .await
        .unwrap();
    assert_eq!(p.content_length, 11);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.metadata.get("i_").map(String::as_str), Some("a"));
    assert_eq!(p.metadata.get("mode").map(String::as_str), Some("0644"));
    assert_eq!(p.etag, w.etag);

    // Whole and ranged reads, If-Match.
    let (b, _) = c
        .read_range(
            "dir/a.txt",
            ByteRange::new(6, 11),
            None,
            &Conditions::if_match(&w.etag),
        )
        .await
        .unwrap();
    assert_eq!(&b[..], b"World");
    let mut dl = c
        .get_blob("dir/a.txt", None, None, &Conditions::default())
        .await
        .unwrap();
    let mut all = vec![];
    while let Some(ch) = dl.next_chunk().await.unwrap() {
        all.extend_from_slice(&ch);
    }
    assert_eq!(all, b"Hello World");
    let e = c
        .read_range(
            "dir/a.txt",
            ByteRange::new(0, 5),
            None,
            &Conditions::if_match("\"0x1\""),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(412), "{e}");

    // Create-only and conditional overwrite.
    let e = c
        .put_blob(
            "dir/a.txt",
            Bytes::new(),
            &CommitOptions {
                conditions: Conditions::create_only(),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(e.is_code("BlobAlreadyExists"), "{e}");

    // Blocks: stage, list uncommitted, commit with mixed refs, re-use committed.
    let name = "dir/sub/blocks.bin";
    let ids = BlockIdGen::new();
    let data: Vec<Vec<u8>> = (0..3).map(|i| pattern(100_000 + i * 7, i as u64)).collect();
    for (i, d) in data.iter().enumerate() {
        c.put_block(name, &ids.id(i as u64), Bytes::from(d.clone()), None)
            .await
            .unwrap();
    }
    let bl = c.get_block_list(name, BlockListType::All).await.unwrap();
    assert_eq!(bl.uncommitted.len(), 3);
    assert!(bl.committed.is_empty());
    let refs: Vec<BlockRef> = (0..3).map(|i| BlockRef::Uncommitted(ids.id(i))).collect();
    let opts2 = CommitOptions {
        content_type: Some("application/x-test".into()),
        metadata: md(&[("mtime", "1700000000")]),
        ..Default::default()
    };
    let w2 = c.put_block_list(name, &refs, &opts2, None).await.unwrap();
    let bl = c
        .get_block_list(name, BlockListType::Committed)
        .await
        .unwrap();
    assert_eq!(
        bl.committed.iter().map(|b| b.size).sum::<u64>(),
        data.iter().map(|d| d.len() as u64).sum::<u64>()
    );
    // Replace the middle block, keep the others by committed id.
    let new_mid = pattern(5000, 99);
    c.put_block(name, &ids.id(10), Bytes::from(new_mid.clone()), None)
        .await
        .unwrap();
    let refs = vec![
        BlockRef::Committed(ids.id(0)),
        BlockRef::Uncommitted(ids.id(10)),
        BlockRef::Latest(ids.id(2)),
    ];
    let opts3 = CommitOptions {
        conditions: Conditions::if_match(&w2.etag),
        ..opts2.clone()
    };
    c.put_block_list(name, &refs, &opts3, None).await.unwrap();
    let (got, props) = c
        .read_range(name, ByteRange::from(0), None, &Conditions::default())
        .await
        .unwrap();
    let expect: Vec<u8> = [data[0].clone(), new_mid, data[2].clone()].concat();
    assert_eq!(got.len(), expect.len());
    assert!(got[..] == expect[..]);
    assert_eq!(props.content_type.as_deref(), Some("application/x-test"));
    // A stale If-Match commit is refused.
    let e = c
        .put_block_list(name, &[BlockRef::Committed(ids.id(0))], &opts3, None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(412), "{e}");

    // Metadata and properties.
    c.set_blob_metadata(
        "dir/a.txt",
        &md(&[("uid", "1000"), ("foo_bar", "x"), ("foo2_bar", "y")]),
        None,
        &Conditions::default(),
    )
    .await
    .unwrap();
    let p = c
        .get_blob_properties("dir/a.txt", None, &Conditions::default())
        .await
        .unwrap();
    assert_eq!(p.metadata.get("uid").map(String::as_str), Some("1000"));
    assert!(
        !p.metadata.contains_key("mode"),
        "Set Blob Metadata replaces all"
    );
    c.set_blob_properties(
        "dir/a.txt",
        Some("application/json"),
        &Conditions::default(),
    )
    .await
    .unwrap();
    let p = c
        .get_blob_properties("dir/a.txt", None, &Conditions::default())
        .await
        .unwrap();
    assert_eq!(p.content_type.as_deref(), Some("application/json"));

    // Copy (non-CPK source).
    let cr = c.copy_blob("copy/a.txt", "dir/a.txt", None).await.unwrap();
    assert!(cr.copy_status.is_some());
    let (b, _) = c
        .read_range(
            "copy/a.txt",
            ByteRange::from(0),
            None,
            &Conditions::default(),
        )
        .await
        .unwrap();
    assert_eq!(&b[..], b"Hello World");

    // Empty blob: a ranged read falls back to a whole read.
    c.put_blob("empty", Bytes::new(), &CommitOptions::default(), None)
        .await
        .unwrap();
    let (b, p) = c
        .read_range("empty", ByteRange::new(0, 8), None, &Conditions::default())
        .await
        .unwrap();
    assert!(b.is_empty());
    assert_eq!(p.content_length, 0);

    // Names needing escapes.
    for n in ["sp ace/x+y=z.txt", "ünï/çødé", "q?#%&.txt"] {
        c.put_blob(n, Bytes::from_static(b"x"), &CommitOptions::default(), None)
            .await
            .unwrap();
        let p = c
            .get_blob_properties(n, None, &Conditions::default())
            .await
            .unwrap();
        assert_eq!(p.content_length, 1, "{n}");
    }

    // Listing: prefix, delimiter, paging with maxresults, metadata.
    let mut pager = c.list_pager(ListOptions {
        delimiter: Some("/".into()),
        max_results: Some(2),
        include_metadata: true,
        ..Default::default()
    });
    let (mut blobs, mut prefixes) = (vec![], vec![]);
    let mut pages = 0;
    while let Some(p) = pager.next_page().await.unwrap() {
        pages += 1;
        blobs.extend(p.blobs.into_iter().map(|b| b.name));
        prefixes.extend(p.prefixes);
    }
    assert!(pages >= 3, "paging with maxresults=2 took {pages} pages");
    blobs.sort();
    prefixes.sort();
    assert_eq!(blobs, vec!["empty", "q?#%&.txt"]);
    assert_eq!(prefixes, vec!["copy/", "dir/", "sp ace/", "ünï/"]);
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
    assert_eq!(
        page.blobs[0]
            .properties
            .metadata
            .get("uid")
            .map(String::as_str),
        Some("1000")
    );
    assert_eq!(
        page.blobs[1]
            .properties
            .metadata
            .get("mtime")
            .map(String::as_str),
        Some("1700000000")
    );

    // Streamed multi-block upload and download.
    let big = pattern(5 * 1024 * 1024 + 17, 7);
    let up = UploadOptions {
        block_size: 1024 * 1024,
        concurrency: 3,
    };
    c.upload("big.bin", &big[..], &CommitOptions::default(), None, up)
        .await
        .unwrap();
    let bl = c
        .get_block_list("big.bin", BlockListType::Committed)
        .await
        .unwrap();
    assert_eq!(bl.committed.len(), 6);
    let (got, _) = c
        .read_range("big.bin", ByteRange::from(0), None, &Conditions::default())
        .await
        .unwrap();
    assert!(got[..] == big[..]);

    // Delete; 404 afterwards.
    c.delete_blob("dir/a.txt", &Conditions::default())
        .await
        .unwrap();
    let e = c
        .get_blob_properties("dir/a.txt", None, &Conditions::default())
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
    let e = c
        .delete_blob("dir/a.txt", &Conditions::default())
        .await
        .unwrap_err();
    assert!(e.is_code("BlobNotFound"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_sas_against_azurite() {
    let az = azurite::Azurite::start();
    let container = unique("az");
    let good = client(&az, &container);
    good.create_container().await.unwrap();

    // A wrong account key: 403 AuthorizationFailure, not retried, named.
    let wrong = AccountKey::from_base64(
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0+Pw==",
    )
    .unwrap();
    let cred = Credential::SharedKey(std::sync::Arc::new(
        SharedKeyCredential::new(DEV_ACCOUNT, vec![wrong.clone()]).unwrap(),
    ));
    let mut cfg = ClientConfig::new(&az.url, DEV_ACCOUNT, &container, cred);
    cfg.retry = fast_retry();
    let bad = BlobClient::new(cfg).unwrap();
    let e = bad.get_container_properties().await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("refused the credentials"), "{e}");

    // With both keys known, the client moves to the one that works.
    let cred = Credential::SharedKey(std::sync::Arc::new(
        SharedKeyCredential::new(
            DEV_ACCOUNT,
            vec![wrong, AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap()],
        )
        .unwrap(),
    ));
    let mut cfg = ClientConfig::new(&az.url, DEV_ACCOUNT, &container, cred);
    cfg.retry = fast_retry();
    BlobClient::new(cfg)
        .unwrap()
        .get_container_properties()
        .await
        .unwrap();

    // An account SAS generated by us is accepted by Azurite.
    let key = AccountKey::from_base64(DEV_ACCOUNT_KEY).unwrap();
    let expiry = (chrono::Utc::now() + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let token = cpkfs::blob::sas::AccountSas {
        account: DEV_ACCOUNT,
        permissions: "rwdlac",
        services: "b",
        resource_types: "sco",
        start: None,
        expiry: &expiry,
        ip: None,
        protocol: "https,http",
        version: API_VERSION,
    }
    .token(&key);
    let mut cfg = ClientConfig::new(
        &az.url,
        DEV_ACCOUNT,
        &container,
        Credential::Sas(SasToken::parse(&token).unwrap()),
    );
    cfg.retry = fast_retry();
    let sas = BlobClient::new(cfg).unwrap();
    sas.put_blob(
        "s.txt",
        Bytes::from_static(b"sas"),
        &CommitOptions::default(),
        None,
    )
    .await
    .unwrap();
    let (b, _) = sas
        .read_range("s.txt", ByteRange::from(0), None, &Conditions::default())
        .await
        .unwrap();
    assert_eq!(&b[..], b"sas");
    let page = sas.list_blobs(&ListOptions::default()).await.unwrap();
    assert_eq!(page.blobs.len(), 1);
}

/// The fallback's detection against a service that lacks server-side copies of
/// CPK blobs: Azurite (over HTTPS, so the client sends keys at all) answers a
/// Put Blob From URL / Put Block From URL with a source key (service version
/// 2026-02-06) with an error the client classes as "source keys unsupported",
/// which makes the mount stream instead (tests/mount_emulator.rs covers the
/// streaming itself against `--no-source-cpk`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_key_copies_are_recognised_as_unsupported_by_azurite() {
    let az = azurite::Azurite::start_https();
    let container = unique("azurl");
    let mut cfg = ClientConfig::new(&az.url, DEV_ACCOUNT, &container, dev_credential());
    cfg.retry = fast_retry();
    cfg.ca_pem = Some(az.ca_pem());
    let c = BlobClient::new(cfg).unwrap();
    c.create_container().await.unwrap();
    c.put_blob(
        "src",
        Bytes::from_static(b"plain"),
        &CommitOptions::default(),
        None,
    )
    .await
    .unwrap();
    let key = CustomerKey::from_raw([7; 32]);
    let source = CopySource {
        name: "src",
        key: Some(&key),
        if_match: None,
    };
    let e = c
        .put_blob_from_url("dst", &source, &CommitOptions::default(), Some(&key))
        .await
        .unwrap_err();
    assert!(e.is_source_cpk_unsupported(), "not recognised: {e}");
    let e = c
        .put_block_from_url(
            "dst",
            &BlockIdGen::new().id(0),
            &source,
            ByteRange::new(0, 5),
            Some(&key),
        )
        .await
        .unwrap_err();
    assert!(e.is_source_cpk_unsupported(), "not recognised: {e}");
    eprintln!("Azurite's answer: {e}");
    // Nothing was written under the new name.
    let e = c
        .get_blob_properties("dst", None, &Conditions::default())
        .await
        .unwrap_err();
    assert!(e.is_not_found(), "{e}");
}

/// Blob index tags as Azurite (Microsoft's emulator) implements them: the
/// same checks the bundled emulator passes (tests/emulator_client.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_index_tags_against_azurite() {
    let az = azurite::Azurite::start();
    let c = client(&az, &unique("aztags"));
    c.create_container().await.unwrap();
    blob_tags_round_trip(&c, None).await;
}
