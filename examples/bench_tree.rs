//! Benchmark helper for `scripts/bench-mount` and `scripts/bench-list`:
//! create N small blobs under a prefix (with or without a CPK), time listing
//! that prefix with the delimiter (what `ls` of the directory costs in List
//! Blobs requests alone), or time single pages (`pages`: the first page of
//! the prefix, the median of N further pages, and one page of the container's
//! root with the delimiter, which rolls the whole prefix into one entry).
//!
//! usage: bench_tree populate|list|pages ENDPOINT CA_FILE CONTAINER PREFIX N [CPK_FILE]
//!
//! Blobs carry the metadata a mount writes (mode, uid, gid, mtime). With
//! `BENCH_TREE_TAGS=1` they also carry it as blob index tags, and `list`
//! asks for the tags (`include=tags`), as a mount with `attrs_in_tags` does.

use bytes::Bytes;
use cpkfs::blob::*;
use futures::stream::{self, StreamExt};
use std::sync::Arc;
use std::time::Instant;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        eprintln!(
            "usage: bench_tree populate|list|pages ENDPOINT CA_FILE CONTAINER PREFIX N [CPK_FILE]"
        );
        std::process::exit(2);
    }
    let (mode, endpoint, ca, container, prefix) = (&a[1], &a[2], &a[3], &a[4], &a[5]);
    let n: usize = a[6].parse()?;
    let cred = Credential::SharedKey(Arc::new(SharedKeyCredential::new(
        DEV_ACCOUNT,
        vec![AccountKey::from_base64(DEV_ACCOUNT_KEY)?],
    )?));
    let mut cfg = ClientConfig::new(endpoint, DEV_ACCOUNT, container, cred);
    cfg.ca_pem = Some(std::fs::read(ca)?);
    if let Some(f) = a.get(7) {
        cfg.cpk = Some(Arc::new(CustomerKey::from_base64(
            std::fs::read_to_string(f)?.trim(),
            None,
        )?));
    }
    let client = BlobClient::new(cfg)?;
    let with_tags = std::env::var("BENCH_TREE_TAGS").is_ok_and(|v| v == "1");
    let metadata: Metadata = [
        ("mode", "0644"),
        ("uid", "0"),
        ("gid", "0"),
        ("mtime", "1700000000.000000000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    match mode.as_str() {
        "populate" => {
            let _ = client.create_container().await;
            let key = client.cpk().cloned();
            let t = Instant::now();
            let results: Vec<Result<WriteResult, BlobError>> = stream::iter(0..n)
                .map(|i| {
                    let client = client.clone();
                    let key = key.clone();
                    let name = format!("{prefix}/f{i:06}");
                    let opts = CommitOptions {
                        metadata: metadata.clone(),
                        tags: with_tags.then(|| metadata.clone()),
                        ..Default::default()
                    };
                    async move {
                        client
                            .put_blob(
                                &name,
                                Bytes::from(format!("file {i}\n")),
                                &opts,
                                key.as_deref(),
                            )
                            .await
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            for r in results {
                r?;
            }
            println!("populated {n} blobs in {:.2} s", t.elapsed().as_secs_f64());
        }
        "list" => {
            let t = Instant::now();
            let mut pager = client.list_pager(ListOptions {
                prefix: Some(format!("{prefix}/")),
                delimiter: Some("/".into()),
                include_metadata: true,
                include_tags: with_tags,
                max_results: Some(5000),
                ..Default::default()
            });
            let mut count = 0;
            let mut pages = 0;
            while let Some(p) = pager.next_page().await? {
                count += p.blobs.len() + p.prefixes.len();
                pages += 1;
            }
            println!(
                "listed {count} entries in {pages} pages in {:.3} s",
                t.elapsed().as_secs_f64()
            );
            if count < n {
                return Err(format!("expected {n} entries, listed {count}").into());
            }
        }
        "pages" => {
            let opts = ListOptions {
                prefix: Some(format!("{prefix}/")),
                delimiter: Some("/".into()),
                include_metadata: true,
                include_tags: with_tags,
                max_results: Some(5000),
                ..Default::default()
            };
            let mut pager = client.list_pager(opts);
            let mut times = vec![];
            while times.len() <= n {
                let t = Instant::now();
                let Some(p) = pager.next_page().await? else {
                    break;
                };
                times.push(t.elapsed().as_secs_f64());
                if p.next_marker.is_none() {
                    break;
                }
            }
            let first = times[0];
            let mut rest: Vec<f64> = times[1..].to_vec();
            rest.sort_by(f64::total_cmp);
            let median = rest.get(rest.len() / 2).copied().unwrap_or(first);
            let t = Instant::now();
            let root = client
                .list_blobs(&ListOptions {
                    delimiter: Some("/".into()),
                    max_results: Some(5000),
                    ..Default::default()
                })
                .await?;
            let root_s = t.elapsed().as_secs_f64();
            if !root.prefixes.contains(&format!("{prefix}/")) {
                return Err("the root listing lacks the prefix".into());
            }
            println!(
                "first page {first:.4} s; median of {} more pages {median:.4} s; root page {root_s:.4} s",
                rest.len()
            );
        }
        m => return Err(format!("unknown mode {m}").into()),
    }
    Ok(())
}
