//! In-memory state of the emulator and its optional on-disk persistence.
//!
//! Block data lives either in memory (`Bytes`) or in a file under `data_dir/blocks`;
//! per-container and per-blob metadata is JSON written atomically (temp + rename).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::cpk::CpkKey;

#[derive(Debug)]
pub enum BlockData {
    Mem(Bytes),
    File(PathBuf),
}

/// One stored block (committed or uncommitted). Encrypted with AES-256-CTR when
/// `nonce` is set (CPK), plaintext otherwise.
#[derive(Debug)]
pub struct Block {
    pub data: BlockData,
    pub len: u64,
    pub nonce: Option<[u8; 16]>,
    pub key_sha: Option<String>,
}

impl Block {
    /// Read `len` bytes at `off` and decrypt with `key` if the block is encrypted.
    pub async fn read(&self, off: u64, len: usize, key: Option<&CpkKey>) -> io::Result<Bytes> {
        let raw = match &self.data {
            BlockData::Mem(b) => b.slice(off as usize..off as usize + len),
            BlockData::File(p) => {
                let p = p.clone();
                tokio::task::spawn_blocking(move || -> io::Result<Bytes> {
                    use std::os::unix::fs::FileExt;
                    let f = std::fs::File::open(p)?;
                    let mut buf = vec![0u8; len];
                    f.read_exact_at(&mut buf, off)?;
                    Ok(Bytes::from(buf))
                })
                .await
                .map_err(io::Error::other)??
            }
        };
        match (self.nonce, key) {
            (Some(nonce), Some(k)) => {
                // Decrypt straight from the stored bytes into the frame (one pass;
                // zeroed memory from calloc is not written twice).
                let mut buf = vec![0u8; raw.len()];
                k.apply_to(&nonce, off, &raw, &mut buf);
                Ok(Bytes::from(buf))
            }
            (Some(_), None) => Err(io::Error::other("encrypted block read without key")),
            _ => Ok(raw),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Props {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub content_language: Option<String>,
    pub content_disposition: Option<String>,
    pub cache_control: Option<String>,
    pub content_md5: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyInfo {
    pub id: String,
    pub source: String,
    #[serde(with = "ts")]
    pub completion: DateTime<Utc>,
    pub progress: String,
}

/// A committed blob version: immutable once created, shared by `Arc`.
#[derive(Debug, Clone)]
pub struct Committed {
    /// (block id, block); id "" for content written by Put Blob / Copy Blob.
    pub blocks: Vec<(String, Arc<Block>)>,
    pub size: u64,
    pub props: Props,
    pub metadata: Vec<(String, String)>,
    pub key_sha: Option<String>,
    pub etag: String,
    pub last_modified: DateTime<Utc>,
    pub created: DateTime<Utc>,
    pub copy: Option<CopyInfo>,
    /// Blob index tags (ops/tags.rs): set with the version, or replaced
    /// later without a new ETag.
    pub tags: Vec<(String, String)>,
}

impl Committed {
    /// The same version with other index tags (Set Blob Tags: ETag and
    /// Last-Modified stay).
    pub fn with_tags(&self, tags: Vec<(String, String)>) -> Committed {
        Committed {
            tags,
            ..self.clone()
        }
    }

    /// Copy with new properties/metadata and a fresh ETag (same content).
    pub fn with_changes(&self, props: Props, metadata: Vec<(String, String)>) -> Committed {
        Committed {
            props,
            metadata,
            etag: new_etag(),
            last_modified: Utc::now(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Default)]
pub struct BlobEntry {
    pub committed: Option<Arc<Committed>>,
    /// id → (upload sequence, block)
    pub uncommitted: HashMap<String, (u64, Arc<Block>)>,
    /// When a block was last staged: a blob with only uncommitted blocks is
    /// listed (`include=uncommittedblobs`) with it as Last-Modified, which is
    /// how a cleaner tells a crashed writer's leftovers from a live upload.
    pub staged_at: Option<DateTime<Utc>>,
}

impl BlobEntry {
    pub fn uncommitted_sorted(&self) -> Vec<(&String, &Arc<Block>)> {
        let mut v: Vec<_> = self
            .uncommitted
            .iter()
            .map(|(k, (s, b))| (k, s, b))
            .collect();
        v.sort_by_key(|(_, s, _)| **s);
        v.into_iter().map(|(k, _, b)| (k, b)).collect()
    }
}

#[derive(Debug)]
pub struct Container {
    pub etag: String,
    pub last_modified: DateTime<Utc>,
    pub metadata: Vec<(String, String)>,
    pub blobs: BTreeMap<String, BlobEntry>,
}

#[derive(Debug)]
pub struct Account {
    pub keys: [Vec<u8>; 2],
    pub containers: BTreeMap<String, Container>,
}

pub struct State {
    pub accounts: HashMap<String, Account>,
}

mod ts {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(t.timestamp_micros())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let v = i64::deserialize(d)?;
        DateTime::from_timestamp_micros(v).ok_or_else(|| serde::de::Error::custom("bad time"))
    }
}

static ETAG_CLOCK: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh, strictly increasing ETag value (unquoted), e.g. `0x8DC3A1B2C3D4E5F`.
pub fn new_etag() -> String {
    let now = (Utc::now().timestamp_nanos_opt().unwrap_or(0) / 100) as u64 & 0x000F_FFFF_FFFF_FFFF;
    let mut prev = ETAG_CLOCK.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match ETAG_CLOCK.compare_exchange(prev, next, Ordering::SeqCst, Ordering::Relaxed) {
            Ok(_) => return format!("0x8D{:013X}", next),
            Err(p) => prev = p,
        }
    }
}

pub fn next_seq() -> u64 {
    SEQ.fetch_add(1, Ordering::Relaxed)
}

// ---------------------------------------------------------------------------------
// Persistence
// ---------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct BlockMeta {
    id: String,
    len: u64,
    nonce: Option<String>,
    key_sha: Option<String>,
    file: String,
    #[serde(default)]
    seq: u64,
}

#[derive(Serialize, Deserialize)]
struct CommittedMeta {
    blocks: Vec<BlockMeta>,
    size: u64,
    props: Props,
    metadata: Vec<(String, String)>,
    key_sha: Option<String>,
    etag: String,
    #[serde(with = "ts")]
    last_modified: DateTime<Utc>,
    #[serde(with = "ts")]
    created: DateTime<Utc>,
    copy: Option<CopyInfo>,
    /// Absent in data directories written before tags existed.
    #[serde(default)]
    tags: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize)]
struct BlobMeta {
    name: String,
    committed: Option<CommittedMeta>,
    uncommitted: Vec<BlockMeta>,
    /// Milliseconds since the epoch (absent in older data directories).
    #[serde(default)]
    staged_at_ms: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct ContainerMeta {
    name: String,
    etag: String,
    #[serde(with = "ts")]
    last_modified: DateTime<Utc>,
    metadata: Vec<(String, String)>,
}

/// On-disk layout helper. All methods are no-ops for the in-memory store.
#[derive(Clone, Debug)]
pub struct Disk {
    root: Option<PathBuf>,
}

fn hex_name(name: &str) -> String {
    Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", next_seq()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

impl Disk {
    pub fn new(root: Option<PathBuf>) -> io::Result<Disk> {
        if let Some(r) = &root {
            std::fs::create_dir_all(r.join("blocks"))?;
            std::fs::create_dir_all(r.join("meta"))?;
        }
        Ok(Disk { root })
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    /// Turn a received (possibly encrypted) buffer into stored block data.
    pub fn store_block(&self, data: Bytes) -> io::Result<BlockData> {
        match &self.root {
            None => Ok(BlockData::Mem(data)),
            Some(r) => {
                let path = r
                    .join("blocks")
                    .join(uuid::Uuid::new_v4().simple().to_string());
                std::fs::write(&path, &data)?;
                Ok(BlockData::File(path))
            }
        }
    }

    fn container_dir(&self, account: &str, container: &str) -> Option<PathBuf> {
        self.root
            .as_ref()
            .map(|r| r.join("meta").join(account).join(container))
    }

    pub fn save_container(&self, account: &str, name: &str, c: &Container) -> io::Result<()> {
        let Some(dir) = self.container_dir(account, name) else {
            return Ok(());
        };
        let meta = ContainerMeta {
            name: name.to_string(),
            etag: c.etag.clone(),
            last_modified: c.last_modified,
            metadata: c.metadata.clone(),
        };
        write_atomic(
            &dir.join("container.json"),
            &serde_json::to_vec(&meta).map_err(io::Error::other)?,
        )
    }

    pub fn delete_container(&self, account: &str, name: &str) -> io::Result<()> {
        if let Some(dir) = self.container_dir(account, name) {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    }

    fn block_meta(id: &str, b: &Block, seq: u64) -> BlockMeta {
        let file = match &b.data {
            BlockData::File(p) => p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            BlockData::Mem(_) => String::new(),
        };
        BlockMeta {
            id: id.to_string(),
            len: b.len,
            nonce: b.nonce.map(|n| B64.encode(n)),
            key_sha: b.key_sha.clone(),
            file,
            seq,
        }
    }

    /// Save (or, if the entry is gone/empty, remove) one blob's metadata file.
    pub fn save_blob(
        &self,
        account: &str,
        container: &str,
        name: &str,
        entry: Option<&BlobEntry>,
    ) -> io::Result<()> {
        let Some(dir) = self.container_dir(account, container) else {
            return Ok(());
        };
        let path = dir.join("blobs").join(format!("{}.json", hex_name(name)));
        let entry = match entry {
            Some(e) if e.committed.is_some() || !e.uncommitted.is_empty() => e,
            _ => {
                let _ = std::fs::remove_file(path);
                return Ok(());
            }
        };
        let meta = BlobMeta {
            name: name.to_string(),
            committed: entry.committed.as_ref().map(|c| CommittedMeta {
                blocks: c
                    .blocks
                    .iter()
                    .map(|(id, b)| Self::block_meta(id, b, 0))
                    .collect(),
                size: c.size,
                props: c.props.clone(),
                metadata: c.metadata.clone(),
                key_sha: c.key_sha.clone(),
                etag: c.etag.clone(),
                last_modified: c.last_modified,
                created: c.created,
                copy: c.copy.clone(),
                tags: c.tags.clone(),
            }),
            uncommitted: entry
                .uncommitted
                .iter()
                .map(|(id, (seq, b))| Self::block_meta(id, b, *seq))
                .collect(),
            staged_at_ms: entry.staged_at.map(|t| t.timestamp_millis()),
        };
        write_atomic(&path, &serde_json::to_vec(&meta).map_err(io::Error::other)?)
    }

    /// Load all persisted state into `accounts` (accounts not configured are ignored).
    /// Unreferenced block files are removed.
    pub fn load(&self, accounts: &mut HashMap<String, Account>) -> io::Result<()> {
        let Some(root) = &self.root else {
            return Ok(());
        };
        let blocks_dir = root.join("blocks");
        let mut referenced: HashSet<String> = HashSet::new();
        let mut max_seq = 0u64;
        for (acct_name, acct) in accounts.iter_mut() {
            let adir = root.join("meta").join(acct_name);
            let Ok(rd) = std::fs::read_dir(&adir) else {
                continue;
            };
            for cdir in rd.flatten() {
                let cpath = cdir.path();
                let Ok(raw) = std::fs::read(cpath.join("container.json")) else {
                    continue;
                };
                let cm: ContainerMeta = serde_json::from_slice(&raw).map_err(io::Error::other)?;
                let mut container = Container {
                    etag: cm.etag,
                    last_modified: cm.last_modified,
                    metadata: cm.metadata,
                    blobs: BTreeMap::new(),
                };
                if let Ok(brd) = std::fs::read_dir(cpath.join("blobs")) {
                    for bf in brd.flatten() {
                        let p = bf.path();
                        if p.extension().and_then(|e| e.to_str()) != Some("json") {
                            let _ = std::fs::remove_file(&p);
                            continue;
                        }
                        let bm: BlobMeta = serde_json::from_slice(&std::fs::read(&p)?)
                            .map_err(io::Error::other)?;
                        let mk = |m: &BlockMeta, referenced: &mut HashSet<String>| {
                            referenced.insert(m.file.clone());
                            Arc::new(Block {
                                data: BlockData::File(blocks_dir.join(&m.file)),
                                len: m.len,
                                nonce: m.nonce.as_ref().and_then(|n| {
                                    B64.decode(n).ok().and_then(|v| v.try_into().ok())
                                }),
                                key_sha: m.key_sha.clone(),
                            })
                        };
                        let mut entry = BlobEntry {
                            staged_at: bm
                                .staged_at_ms
                                .and_then(DateTime::<Utc>::from_timestamp_millis),
                            ..Default::default()
                        };
                        if let Some(c) = bm.committed {
                            entry.committed = Some(Arc::new(Committed {
                                blocks: c
                                    .blocks
                                    .iter()
                                    .map(|m| (m.id.clone(), mk(m, &mut referenced)))
                                    .collect(),
                                size: c.size,
                                props: c.props,
                                metadata: c.metadata,
                                key_sha: c.key_sha,
                                etag: c.etag,
                                last_modified: c.last_modified,
                                created: c.created,
                                copy: c.copy,
                                tags: c.tags,
                            }));
                        }
                        for m in &bm.uncommitted {
                            max_seq = max_seq.max(m.seq);
                            entry
                                .uncommitted
                                .insert(m.id.clone(), (m.seq, mk(m, &mut referenced)));
                        }
                        container.blobs.insert(bm.name, entry);
                    }
                }
                acct.containers.insert(cm.name, container);
            }
        }
        SEQ.fetch_max(max_seq + 1, Ordering::Relaxed);
        if let Ok(rd) = std::fs::read_dir(&blocks_dir) {
            for f in rd.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !referenced.contains(&name) {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_increase() {
        let a = new_etag();
        let b = new_etag();
        assert!(a.starts_with("0x8D") && a.len() == 17);
        assert!(b > a);
    }
}
