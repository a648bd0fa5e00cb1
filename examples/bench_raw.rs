//! Raw client ↔ emulator throughput over HTTPS with a customer-provided key.
//! Run by `scripts/bench-raw` (release build; the emulator is the release
//! `cpkfs-emulator` binary in its own process).
//!
//! Measures: ranged GET of a 1 GiB blob as 8 MiB ranges, Put Block of 1 GiB
//! in 8 MiB blocks (concurrency 1, 4, 8), and HEAD round trips per second on
//! a small blob (concurrency 1 and 8). Prints a markdown table.
//! `--random N` adds N random 4 KiB ranged GETs of the 1 GiB blob per unit
//! of concurrency (1 and 8), with latency percentiles: the raw side of
//! `scripts/bench-mount fio`.

use bytes::Bytes;
use cpkfs::blob::*;
use futures::stream::{self, StreamExt};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1024 * 1024;

struct Args {
    emulator: String,
    size_mib: u64,
    block_mib: u64,
    heads: u64,
    random: u64,
}

fn args() -> Args {
    let mut a = Args {
        emulator: "target/release/cpkfs-emulator".into(),
        size_mib: 1024,
        block_mib: 8,
        heads: 2000,
        random: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--emulator" => a.emulator = v,
            "--size-mib" => a.size_mib = v.parse().unwrap(),
            "--block-mib" => a.block_mib = v.parse().unwrap(),
            "--heads" => a.heads = v.parse().unwrap(),
            "--random" => a.random = v.parse().unwrap(),
            _ => {
                panic!("unknown option {k} (--emulator PATH --size-mib N --block-mib N --heads N --random N)")
            }
        }
    }
    a
}

fn rate(bytes: u64, d: Duration) -> (f64, f64) {
    let bps = bytes as f64 / d.as_secs_f64();
    (bps / 1e6, bps / 1e9)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = args();
    let dir = tempfile::tempdir()?;
    let ca = dir.path().join("ca.pem");
    let mut child = Command::new(&a.emulator)
        .args(["--listen", "127.0.0.1:0", "--ca-out"])
        .arg(&ca)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", a.emulator))?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("unexpected emulator output {line:?}"))?
        .to_string();

    let mut key_raw = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut key_raw[..]);
    let key = CustomerKey::from_raw(key_raw);
    let cred = Credential::SharedKey(Arc::new(SharedKeyCredential::new(
        DEV_ACCOUNT,
        vec![AccountKey::from_base64(DEV_ACCOUNT_KEY)?],
    )?));
    let mut cfg = ClientConfig::new(&url, DEV_ACCOUNT, "bench", cred);
    cfg.ca_pem = Some(std::fs::read(&ca)?);
    cfg.cpk = Some(Arc::new(key.clone()));
    let c = BlobClient::new(cfg)?;
    c.create_container().await?;

    let size = a.size_mib * MIB;
    let block = a.block_mib * MIB;
    let nblocks = size.div_ceil(block);
    let body: Bytes = (0..block)
        .map(|i| (i * 31 % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let ids = BlockIdGen::new();
    let mut rows: Vec<String> = Vec::new();

    // Put Block: 1 GiB of 8 MiB blocks, then commit (commit not timed).
    let mut kept: Option<String> = None;
    for conc in [1usize, 4, 8] {
        let name = format!("put-c{conc}");
        let t = Instant::now();
        let results: Vec<Result<(), BlobError>> = stream::iter(0..nblocks)
            .map(|i| {
                let (c, body, id, name, key) = (
                    c.clone(),
                    body.clone(),
                    ids.id(i),
                    name.clone(),
                    key.clone(),
                );
                async move { c.put_block(&name, &id, body, Some(&key)).await }
            })
            .buffer_unordered(conc)
            .collect()
            .await;
        let d = t.elapsed();
        for r in results {
            r?;
        }
        let refs: Vec<BlockRef> = (0..nblocks)
            .map(|i| BlockRef::Uncommitted(ids.id(i)))
            .collect();
        c.put_block_list(&name, &refs, &CommitOptions::default(), Some(&key))
            .await?;
        let (mb, gb) = rate(nblocks * block, d);
        rows.push(format!(
            "| Put Block {} MiB × {nblocks} | {conc} | {mb:.0} MB/s | {gb:.2} GB/s |",
            a.block_mib
        ));
        eprintln!("{}", rows.last().unwrap());
        match &kept {
            None => kept = Some(name),
            Some(_) => c.delete_blob(&name, &Conditions::default()).await?,
        }
    }
    let big = kept.unwrap();

    // Ranged GET of the 1 GiB blob as 8 MiB ranges.
    for conc in [1usize, 4, 8] {
        let t = Instant::now();
        let results: Vec<Result<usize, BlobError>> = stream::iter(0..nblocks)
            .map(|i| {
                let (c, big, key) = (c.clone(), big.clone(), key.clone());
                async move {
                    let r = ByteRange::new(i * block, ((i + 1) * block).min(size));
                    c.read_range(&big, r, Some(&key), &Conditions::default())
                        .await
                        .map(|(b, _)| b.len())
                }
            })
            .buffer_unordered(conc)
            .collect()
            .await;
        let d = t.elapsed();
        let mut total = 0u64;
        for r in results {
            total += r? as u64;
        }
        assert_eq!(total, size);
        let (mb, gb) = rate(total, d);
        rows.push(format!(
            "| GET {} MiB ranges of {} MiB | {conc} | {mb:.0} MB/s | {gb:.2} GB/s |",
            a.block_mib, a.size_mib
        ));
        eprintln!("{}", rows.last().unwrap());
    }

    // Random 4 KiB ranged GETs of the big blob: what fio's random reads
    // through the mount cost at the wire.
    if a.random > 0 {
        for conc in [1usize, 8] {
            rows.push(random_reads(&c, &big, &key, size, a.random * conc as u64, conc).await?);
            eprintln!("{}", rows.last().unwrap());
        }
    }

    // Tiny round trips: HEAD of a small CPK blob.
    c.put_blob(
        "small",
        Bytes::from_static(b"tiny"),
        &CommitOptions::default(),
        Some(&key),
    )
    .await?;
    for conc in [1usize, 8] {
        let n = a.heads * conc as u64;
        let t = Instant::now();
        let results: Vec<Result<BlobProperties, BlobError>> = stream::iter(0..n)
            .map(|_| {
                let (c, key) = (c.clone(), key.clone());
                async move {
                    c.get_blob_properties("small", Some(&key), &Conditions::default())
                        .await
                }
            })
            .buffer_unordered(conc)
            .collect()
            .await;
        let d = t.elapsed();
        for r in results {
            r?;
        }
        let per_s = n as f64 / d.as_secs_f64();
        rows.push(format!(
            "| HEAD (small CPK blob), {n} requests | {conc} | {per_s:.0} req/s | {:.2} ms/req |",
            d.as_secs_f64() * 1000.0 / n as f64 * conc as f64
        ));
        eprintln!("{}", rows.last().unwrap());
    }

    println!("| test | concurrency | rate | |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(())
}

/// `n` ranged GETs of 4 KiB at random 4 KiB-aligned offsets of `name`
/// (`size` bytes), `conc` at a time: a table row with IOPS and the latency
/// percentiles of single requests.
async fn random_reads(
    c: &BlobClient,
    name: &str,
    key: &CustomerKey,
    size: u64,
    n: u64,
    conc: usize,
) -> anyhow::Result<String> {
    const BS: u64 = 4096;
    let pages = size / BS;
    let offsets: Vec<u64> = (0..n)
        .map(|_| rand::Rng::gen_range(&mut rand::thread_rng(), 0..pages) * BS)
        .collect();
    let t = Instant::now();
    let results: Vec<Result<Duration, BlobError>> = stream::iter(offsets)
        .map(|off| {
            let (c, name, key) = (c.clone(), name.to_string(), key.clone());
            async move {
                let s = Instant::now();
                let (b, _) = c
                    .read_range(
                        &name,
                        ByteRange::new(off, off + BS),
                        Some(&key),
                        &Conditions::default(),
                    )
                    .await?;
                assert_eq!(b.len() as u64, BS);
                Ok(s.elapsed())
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let d = t.elapsed();
    let mut lat = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    lat.sort();
    let pct =
        |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e3;
    Ok(format!(
        "| random 4 KiB GET, {n} requests | {conc} | {:.0} IOPS | p50 {:.2} ms, p99 {:.2} ms |",
        n as f64 / d.as_secs_f64(),
        pct(0.50),
        pct(0.99)
    ))
}
