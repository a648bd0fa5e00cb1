//! `cpkfs rotate-cpk`: re-encrypt every blob under a prefix from the older
//! keys of the ring to the current key, without a mount.
//!
//! The service re-keys each blob itself where it can: Put Blob From URL (≤ 5,000
//! MiB; larger blobs: Put Block From URL per range + Put Block List) from the
//! blob onto itself, with the old key as the source key and the current key for
//! the result (service version 2026-02-06), source pinned by its ETag. A service
//! without that version is detected on the first blob (400, logged once) and the
//! rest is streamed block by block — GET with the old key, Put Block with the new.
//! Either way the commit carries If-Match on the ETag the blob started from: a blob
//! changed meanwhile is skipped and reported. Each result is read back under the
//! new key and checked (size, and CRC-64 against the CRC of what was read with the
//! old key: computed while streaming, or reported by the service for what it
//! copied) before it counts as rotated. Reruns skip blobs already under the current
//! key, so an interrupted run completes when rerun.

use super::MountArgs;
use crate::blob::{
    BlobClient, BlobError, BlobProperties, BlockIdGen, BlockRef, ByteRange, CommitOptions,
    Conditions, CopySource, CustomerKey, ListOptions, WriteResult,
};
use crate::fs::KeyRing;
use anyhow::{bail, Result};
use clap::Args;
use futures::stream::{self, StreamExt};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Clone)]
pub struct RotateArgs {
    #[command(flatten)]
    pub common: MountArgs,
    /// Only blobs whose names start with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// List what would be re-encrypted, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Blobs re-encrypted at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

#[derive(Debug)]
enum Outcome {
    Rotated(u64),
    Changed,
    Failed(String),
}

/// The CRC-64 of each consecutive range of the content (end offset, CRC), as
/// read with the old key; the read-back under the new key must match range by
/// range.
type Expected = Vec<(u64, u64)>;

/// The service re-keys the blob onto itself. `Err(None)`: the service cannot
/// (stream instead); `Err(Some(outcome))`: a final outcome.
async fn rekey_on_server(
    client: &BlobClient,
    name: &str,
    props: &BlobProperties,
    old: &CustomerKey,
    new: &CustomerKey,
    opts: &CommitOptions,
) -> Result<(WriteResult, Expected), Option<BlobError>> {
    let src = CopySource {
        name,
        key: Some(old),
        if_match: Some(&props.etag),
    };
    let c = client
        .copy_from_url(name, &src, props.content_length, opts, Some(new))
        .await
        .map_err(Some)?;
    Ok((c.write, c.crcs))
}

/// Re-key one blob from its old key to the current key, then verify it.
async fn rotate_one(
    client: &BlobClient,
    name: &str,
    old: &CustomerKey,
    new: &CustomerKey,
    block: u64,
    streaming_only: &AtomicBool,
) -> Outcome {
    let props = match client
        .get_blob_properties(name, Some(old), &Conditions::default())
        .await
    {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let cond = Conditions::if_match(props.etag.clone());
    // A commit replaces the blob's index tags (a mount with attrs_in_tags
    // keeps attributes there): carry them over.
    let tags = if props.tag_count > 0 {
        match client.get_blob_tags(name).await {
            Ok(t) => Some(t),
            Err(e) => return Outcome::Failed(e.to_string()),
        }
    } else {
        None
    };
    let opts = CommitOptions {
        content_type: props.content_type.clone(),
        metadata: props.metadata.clone(),
        conditions: cond.clone(),
        tags,
    };
    let size = props.content_length;
    let mut on_server = None;
    if size > 0 && !streaming_only.load(Ordering::Relaxed) {
        match rekey_on_server(client, name, &props, old, new, &opts).await {
            Ok(r) => on_server = Some(r),
            Err(Some(e)) if e.is_source_cpk_unsupported() => {
                if !streaming_only.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "the service does not re-key blobs itself (service version 2026-02-06 refused): streaming every blob through this machine");
                }
            }
            Err(Some(e)) if matches!(e.status(), Some(412)) => return Outcome::Changed,
            Err(Some(e)) => return Outcome::Failed(e.to_string()),
            Err(None) => {}
        }
    }
    let (written, expected) = match on_server {
        Some(r) => r,
        None => match stream_one(client, name, size, old, new, block, &cond, &opts).await {
            Ok(r) => r,
            Err(o) => return o,
        },
    };
    verify(client, name, size, new, &written, &expected).await
}

/// Stream one blob: GET with the old key, Put Block with the new.
#[allow(clippy::too_many_arguments)]
async fn stream_one(
    client: &BlobClient,
    name: &str,
    size: u64,
    old: &CustomerKey,
    new: &CustomerKey,
    block: u64,
    cond: &Conditions,
    opts: &CommitOptions,
) -> Result<(WriteResult, Expected), Outcome> {
    let mut crc = crc64fast_nvme::Digest::new();
    let commit = if size == 0 {
        client
            .put_blob(name, bytes::Bytes::new(), opts, Some(new))
            .await
    } else {
        let ids = BlockIdGen::new();
        let mut refs = vec![];
        let mut off = 0;
        while off < size {
            let end = (off + block).min(size);
            let data = match client
                .read_range(name, ByteRange::new(off, end), Some(old), cond)
                .await
            {
                Ok((d, _)) => d,
                Err(e) if e.status() == Some(412) => return Err(Outcome::Changed),
                Err(e) => return Err(Outcome::Failed(e.to_string())),
            };
            crc.write(&data);
            let id = ids.id(refs.len() as u64);
            if let Err(e) = client.put_block(name, &id, data, Some(new)).await {
                return Err(Outcome::Failed(e.to_string()));
            }
            refs.push(BlockRef::Uncommitted(id));
            off = end;
        }
        client.put_block_list(name, &refs, opts, Some(new)).await
    };
    match commit {
        Ok(w) => Ok((w, vec![(size, crc.sum64())])),
        Err(e) if e.status() == Some(412) => Err(Outcome::Changed),
        Err(e) => Err(Outcome::Failed(e.to_string())),
    }
}

/// Read the new version back under the new key: its size, and its CRC-64 range by
/// range against `expected` (when the service reported no CRC for what it copied,
/// `expected` is empty and the check is the size and a complete, decryptable
/// read under the new key).
async fn verify(
    client: &BlobClient,
    name: &str,
    size: u64,
    new: &CustomerKey,
    written: &WriteResult,
    expected: &Expected,
) -> Outcome {
    let mut digest = crc64fast_nvme::Digest::new();
    let mut got = 0u64;
    let mut next = 0usize;
    let mut mismatch = false;
    let mut take = |mut c: &[u8], got: &mut u64, digest: &mut crc64fast_nvme::Digest| {
        while !c.is_empty() {
            let Some(&(end, want)) = expected.get(next) else {
                *got += c.len() as u64;
                return;
            };
            let n = ((end - *got) as usize).min(c.len());
            digest.write(&c[..n]);
            *got += n as u64;
            c = &c[n..];
            if *got == end {
                mismatch |= digest.sum64() != want;
                *digest = crc64fast_nvme::Digest::new();
                next += 1;
            }
        }
    };
    match client
        .get_blob(
            name,
            None,
            Some(new),
            &Conditions::if_match(written.etag.clone()),
        )
        .await
    {
        Ok(mut dl) => loop {
            match dl.next_chunk().await {
                Ok(Some(c)) => take(&c, &mut got, &mut digest),
                Ok(None) => break,
                Err(e) => return Outcome::Failed(format!("verification read failed: {e}")),
            }
        },
        Err(e) => return Outcome::Failed(format!("verification read failed: {e}")),
    }
    if got != size || mismatch || (size > 0 && !expected.is_empty() && next != expected.len()) {
        return Outcome::Failed(format!(
            "verification failed: {got} bytes read back of {size}, or content differs"
        ));
    }
    Outcome::Rotated(size)
}

/// What a listing found: blobs to re-key (name, size, their key), and the rest.
#[derive(Default)]
struct Inventory {
    todo: Vec<(String, u64, Arc<CustomerKey>)>,
    current: usize,
    plain: usize,
    /// (name, key hash) of blobs under keys not in the ring.
    unknown: Vec<(String, String)>,
}

/// List the prefix and sort every blob by its key (names and key hashes
/// only; listing pages are lazy).
async fn inventory(
    client: &BlobClient,
    ring: &KeyRing,
    current: &CustomerKey,
    prefix: &str,
) -> Result<Inventory> {
    let mut inv = Inventory::default();
    let mut pager = client.list_pager(ListOptions {
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        max_results: Some(5000),
        ..Default::default()
    });
    while let Some(page) = pager.next_page().await? {
        for b in page.blobs {
            match b.properties.cpk_sha256.as_deref() {
                None => inv.plain += 1,
                Some(h) if h == current.sha256() => inv.current += 1,
                Some(h) => match ring.find(h) {
                    Some(k) => inv
                        .todo
                        .push((b.name, b.properties.content_length, k.clone())),
                    None => inv.unknown.push((b.name, h.to_string())),
                },
            }
        }
    }
    Ok(inv)
}

/// A byte-count progress bar on a terminal; one line per blob otherwise.
fn progress_bar(total_bytes: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(total_bytes);
    b.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(b)
}

/// Re-key every blob of `todo`, `concurrency` at a time, reporting each.
async fn rotate_all(
    client: &BlobClient,
    todo: Vec<(String, u64, Arc<CustomerKey>)>,
    current: &Arc<CustomerKey>,
    block: u64,
    concurrency: usize,
) -> Vec<(String, Outcome)> {
    let bar = progress_bar(todo.iter().map(|t| t.1).sum());
    let streaming_only = Arc::new(AtomicBool::new(false));
    let results = stream::iter(todo)
        .map(|(name, _, old)| {
            let (bar, streaming_only) = (bar.clone(), streaming_only.clone());
            async move {
                let o = rotate_one(client, &name, &old, current, block, &streaming_only).await;
                match (&o, &bar) {
                    (Outcome::Rotated(sz), Some(b)) => {
                        b.inc(*sz);
                        b.set_message(name.clone());
                    }
                    (Outcome::Rotated(sz), None) => println!("re-encrypted {name} ({sz} bytes)"),
                    (Outcome::Changed, _) => println!(
                        "skipped {name}: it changed during the rotation (rerun to rotate it)"
                    ),
                    (Outcome::Failed(e), _) => println!("FAILED {name}: {e}"),
                }
                (name, o)
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    results
}

pub fn run(a: RotateArgs) -> Result<()> {
    let (settings, crate::connect::Connection { client, keys: ring }) =
        crate::connect::offline(&a.common)?;
    let Some(current) = ring.current().cloned() else {
        bail!(
            "rotate-cpk needs cpk_file with the current key on its first line and older keys below"
        );
    };
    let block = settings
        .block_size
        .as_ref()
        .map(|b| b.bytes())
        .transpose()?
        .unwrap_or(8 << 20);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    rt.block_on(async move {
        let inv = inventory(&client, &ring, &current, &a.prefix).await?;
        let total_bytes: u64 = inv.todo.iter().map(|t| t.1).sum();
        println!(
            "{} blob(s) ({} bytes) to re-encrypt to key {}; {} already under it; {} not encrypted (left as they are); {} under keys not in the ring",
            inv.todo.len(),
            total_bytes,
            current.sha256(),
            inv.current,
            inv.plain,
            inv.unknown.len()
        );
        for (n, h) in &inv.unknown {
            println!("cannot rotate {n}: encrypted with key {h}, which is not in the ring");
        }
        let unknown = inv.unknown.len();
        if a.dry_run {
            for (n, size, k) in &inv.todo {
                println!("would re-encrypt {n} ({size} bytes) from key {}", k.sha256());
            }
            return if unknown == 0 { Ok(()) } else { bail!("{unknown} blob(s) are under keys not in the ring") };
        }
        let n = inv.todo.len();
        let results = rotate_all(&client, inv.todo, &current, block, a.concurrency).await;
        let count = |f: fn(&Outcome) -> bool| results.iter().filter(|r| f(&r.1)).count();
        let rotated = count(|o| matches!(o, Outcome::Rotated(_)));
        let changed = count(|o| matches!(o, Outcome::Changed));
        let failed = count(|o| matches!(o, Outcome::Failed(_)));
        println!(
            "summary: {rotated} of {n} re-encrypted and verified, {changed} changed meanwhile (skipped), {failed} failed, {unknown} under unknown keys"
        );
        if failed > 0 || unknown > 0 {
            bail!("{} blob(s) could not be rotated", failed + unknown);
        }
        Ok(())
    })
}
