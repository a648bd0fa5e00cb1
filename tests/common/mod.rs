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

/// Blob index tags, the same checks against any service (the bundled
/// emulator, Azurite): set with a commit (Put Blob and Put Block List), read
/// back by Get Blob Tags, by a listing with `include=tags` (with
/// `TagCount`) and by HEAD's count; Set Blob Tags replaces them and keeps
/// the ETag; a commit without tags leaves none. `c` must have a container.
pub async fn blob_tags_round_trip(c: &BlobClient, key: Option<&CustomerKey>) {
    let tags = |pairs: &[(&str, &str)]| -> Metadata {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let t1 = tags(&[
        ("mode", "0640"),
        ("mtime", "1700000000.123456789"),
        ("a b", "x/y:z=1+2_-."),
    ]);
    let opts = CommitOptions {
        tags: Some(t1.clone()),
        ..Default::default()
    };
    let w = c
        .put_blob("tagged/f", bytes::Bytes::from_static(b"hello"), &opts, key)
        .await
        .unwrap();
    assert_eq!(c.get_blob_tags("tagged/f").await.unwrap(), t1);
    let p = c
        .get_blob_properties("tagged/f", key, &Conditions::default())
        .await
        .unwrap();
    assert_eq!(p.tag_count, 3);

    // Put Block List carries them too.
    c.put_block("tagged/g", "YQ==", bytes::Bytes::from_static(b"abc"), key)
        .await
        .unwrap();
    let t2 = tags(&[("uid", "1000")]);
    c.put_block_list(
        "tagged/g",
        &[BlockRef::Uncommitted("YQ==".into())],
        &CommitOptions {
            tags: Some(t2.clone()),
            ..Default::default()
        },
        key,
    )
    .await
    .unwrap();

    let list = |tags: bool| ListOptions {
        prefix: Some("tagged/".into()),
        include_metadata: true,
        include_tags: tags,
        ..Default::default()
    };
    let page = c.list_blobs(&list(true)).await.unwrap();
    let got: Vec<(String, Option<Metadata>, u32)> = page
        .blobs
        .iter()
        .map(|b| {
            (
                b.name.clone(),
                b.properties.tags.clone(),
                b.properties.tag_count,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("tagged/f".into(), Some(t1.clone()), 3),
            ("tagged/g".into(), Some(t2.clone()), 1)
        ]
    );
    let page = c.list_blobs(&list(false)).await.unwrap();
    assert!(page.blobs.iter().all(|b| b.properties.tags.is_none()));

    // Set Blob Tags replaces them without a new version.
    let t3 = tags(&[("mode", "0600")]);
    c.set_blob_tags("tagged/f", &t3).await.unwrap();
    assert_eq!(c.get_blob_tags("tagged/f").await.unwrap(), t3);
    let p = c
        .get_blob_properties("tagged/f", key, &Conditions::default())
        .await
        .unwrap();
    assert_eq!(p.etag, w.etag, "Set Blob Tags keeps the ETag");

    // Invalid tags are refused before anything is sent.
    let e = c
        .set_blob_tags("tagged/f", &tags(&[("bad,key", "v")]))
        .await
        .unwrap_err();
    assert!(matches!(e, BlobError::Config(_)), "{e}");

    // A commit without tags replaces the blob: no tags left.
    c.put_blob(
        "tagged/f",
        bytes::Bytes::from_static(b"again"),
        &CommitOptions::default(),
        key,
    )
    .await
    .unwrap();
    assert_eq!(c.get_blob_tags("tagged/f").await.unwrap(), Metadata::new());
    let e = c.get_blob_tags("tagged/none").await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
}
