//! Reference-model property test of the filesystem core, in the style of
//! mountpoint-s3's reftests: proptest generates sequences of create, write at
//! an offset, truncate, rename, unlink, mkdir, rmdir, chmod (setattr), flush
//! (close) and remount, runs each against `Fs` (no kernel, the in-process
//! emulator with a customer-provided key) and against a deliberately simple
//! in-memory tree, and after every step compares the namespace, kinds, sizes,
//! permissions and bytes. A remount drops every cache, so the comparison that
//! follows it reads what was stored.
//!
//! The harness calls `Fs` the way the kernel does: it resolves paths with
//! `lookup`, answers what the VFS answers itself (EEXIST for an exclusive
//! create of an existing name, EISDIR for opening a directory for writing,
//! EINVAL for moving a directory into itself), and closes descriptors of a
//! path before removing or renaming it (an unlinked but open file is
//! outside the model).
//!
//! Runs `CPKFS_REFTEST_CASES` cases (default 256) of 50 to 80 operations.
//! The seed is printed; `CPKFS_REFTEST_SEED=N` replays a run. A shrunk
//! failure is printed as the operation list: keep it as a `regression_*`
//! test below.

mod common;

use common::{client, emulator, mount as new_fs, BLOCK};
use cpkfs_blob::BlobClient;
use cpkfs_emulator::EmulatorHandle;
use cpkfs_fs::{Fs, FsError, SetAttr};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
/// The paths operations pick from: few enough that names collide (a name is
/// a file in one step and a directory in the next), nested one level.
const PATHS: [&str; 8] = ["a", "b", "d", "d/a", "d/b", "d/d", "e", "e/a"];

#[derive(Debug, Clone)]
enum Op {
    Create(usize),
    Write {
        path: usize,
        offset: u64,
        len: u64,
        seed: u8,
    },
    Truncate(usize, u64),
    Chmod(usize, u16),
    Flush(usize),
    Rename(usize, usize),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Remount,
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        3 => p.clone().prop_map(Op::Create),
        6 => (p.clone(), 0..3 * BLOCK, 1..2 * BLOCK, any::<u8>())
            .prop_map(|(path, offset, len, seed)| Op::Write { path, offset, len, seed }),
        2 => (p.clone(), 0..3 * BLOCK).prop_map(|(i, s)| Op::Truncate(i, s)),
        1 => (p.clone(), prop::sample::select(vec![0o600u16, 0o640, 0o755]))
            .prop_map(|(i, m)| Op::Chmod(i, m)),
        3 => p.clone().prop_map(Op::Flush),
        2 => (p.clone(), p.clone()).prop_map(|(a, b)| Op::Rename(a, b)),
        2 => p.clone().prop_map(Op::Unlink),
        2 => p.clone().prop_map(Op::Mkdir),
        1 => p.clone().prop_map(Op::Rmdir),
        1 => Just(Op::Remount),
    ]
}

/// Bytes of a write, reproducible from its seed.
fn bytes(len: u64, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ---------------------------------------------------------------- the model

#[derive(Debug, Clone, PartialEq)]
enum Node {
    File { data: Vec<u8>, perm: u16 },
    Dir { perm: u16 },
}

/// The tree as POSIX says it should be: path → node ("" is the root).
#[derive(Debug, Default)]
struct Model {
    nodes: BTreeMap<String, Node>,
}

type Errno = i32;

fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

impl Model {
    fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || matches!(self.nodes.get(p), Some(Node::Dir { .. }))
    }
    fn children(&self, dir: &str) -> Vec<(&str, &Node)> {
        self.nodes
            .iter()
            .filter(|(p, _)| !p.is_empty() && parent_of(p) == dir)
            .map(|(p, n)| (p.rsplit('/').next().unwrap(), n))
            .collect()
    }
    /// ENOENT / ENOTDIR for a path whose parent cannot hold it.
    fn check_parent(&self, p: &str) -> Result<(), Errno> {
        let d = parent_of(p);
        if d.is_empty() || self.is_dir(d) {
            Ok(())
        } else if self.nodes.contains_key(d) {
            Err(libc::ENOTDIR)
        } else {
            Err(libc::ENOENT)
        }
    }
    fn file(&mut self, p: &str) -> Result<&mut Vec<u8>, Errno> {
        self.check_parent(p)?;
        match self.nodes.get_mut(p) {
            Some(Node::File { data, .. }) => Ok(data),
            Some(Node::Dir { .. }) => Err(libc::EISDIR),
            None => Err(libc::ENOENT),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), Errno> {
        match *op {
            Op::Create(i) => {
                let p = PATHS[i];
                self.check_parent(p)?;
                if self.nodes.contains_key(p) {
                    return Err(libc::EEXIST);
                }
                let file = Node::File {
                    data: vec![],
                    perm: 0o644,
                };
                self.nodes.insert(p.into(), file);
            }
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => {
                let data = self.file(PATHS[path])?;
                let end = (offset + len) as usize;
                if data.len() < end {
                    data.resize(end, 0);
                }
                data[offset as usize..end].copy_from_slice(&bytes(len, seed));
            }
            Op::Truncate(i, size) => self.file(PATHS[i])?.resize(size as usize, 0),
            Op::Chmod(i, m) => {
                let p = PATHS[i];
                self.check_parent(p)?;
                match self.nodes.get_mut(p) {
                    Some(Node::File { perm, .. }) | Some(Node::Dir { perm }) => *perm = m,
                    None => return Err(libc::ENOENT),
                }
            }
            Op::Flush(_) | Op::Remount => {}
            Op::Mkdir(i) => {
                let p = PATHS[i];
                self.check_parent(p)?;
                if self.nodes.contains_key(p) {
                    return Err(libc::EEXIST);
                }
                self.nodes.insert(p.into(), Node::Dir { perm: 0o755 });
            }
            Op::Unlink(i) => {
                let p = PATHS[i];
                self.file(p)?;
                self.nodes.remove(p);
            }
            Op::Rmdir(i) => {
                let p = PATHS[i];
                self.check_parent(p)?;
                match self.nodes.get(p) {
                    None => return Err(libc::ENOENT),
                    Some(Node::File { .. }) => return Err(libc::ENOTDIR),
                    Some(Node::Dir { .. }) if !self.children(p).is_empty() => {
                        return Err(libc::ENOTEMPTY)
                    }
                    Some(Node::Dir { .. }) => {
                        self.nodes.remove(p);
                    }
                }
            }
            Op::Rename(a, b) => self.rename(PATHS[a], PATHS[b])?,
        }
        Ok(())
    }

    fn rename(&mut self, src: &str, dst: &str) -> Result<(), Errno> {
        self.check_parent(src)?;
        let Some(s) = self.nodes.get(src).cloned() else {
            return Err(libc::ENOENT);
        };
        self.check_parent(dst)?;
        if src == dst {
            return Ok(());
        }
        let src_is_dir = matches!(s, Node::Dir { .. });
        if src_is_dir && dst.starts_with(&format!("{src}/")) {
            return Err(libc::EINVAL);
        }
        match (self.nodes.get(dst), src_is_dir) {
            (Some(Node::Dir { .. }), false) => return Err(libc::EISDIR),
            (Some(Node::File { .. }), true) => return Err(libc::ENOTDIR),
            (Some(Node::Dir { .. }), true) if !self.children(dst).is_empty() => {
                return Err(libc::ENOTEMPTY)
            }
            _ => {}
        }
        self.nodes.remove(dst);
        let prefix = format!("{src}/");
        let moved: Vec<String> = self
            .nodes
            .keys()
            .filter(|k| *k == src || k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in moved {
            let n = self.nodes.remove(&k).unwrap();
            self.nodes.insert(format!("{dst}{}", &k[src.len()..]), n);
        }
        Ok(())
    }
}

// ------------------------------------------------------------ the real thing

struct Real {
    client: BlobClient,
    fs: Arc<Fs>,
    /// Open writable descriptors by path: writes go through them until a
    /// Flush (close), a remount, or a rename/unlink/rmdir touching the path.
    open: HashMap<String, (u64, u64)>,
}

fn errno(e: FsError) -> Errno {
    e.errno()
}

impl Real {
    /// The inode of `p`, resolved component by component as the kernel does.
    async fn resolve(&self, p: &str) -> Result<(u64, cpkfs_fs::attr::Attr), Errno> {
        let mut ino = 1;
        let mut attr = self.fs.getattr(1).await.map_err(errno)?.attr;
        for c in p.split('/').filter(|c| !c.is_empty()) {
            if attr.kind != cpkfs_fs::attr::Kind::Dir {
                return Err(libc::ENOTDIR);
            }
            let e = self.fs.lookup(ino, c).await.map_err(errno)?;
            ino = e.ino;
            attr = e.attr;
        }
        Ok((ino, attr))
    }

    async fn parent_and_name<'p>(&self, p: &'p str) -> Result<(u64, &'p str), Errno> {
        let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
        let (ino, attr) = self.resolve(dir).await?;
        if attr.kind != cpkfs_fs::attr::Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok((ino, name))
    }

    /// close() of the descriptors on `p` and everything under it.
    async fn close_under(&mut self, p: &str) -> Result<(), Errno> {
        let prefix = format!("{p}/");
        let paths: Vec<String> = self
            .open
            .keys()
            .filter(|k| *k == p || k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in paths {
            self.close(&k).await?;
        }
        Ok(())
    }

    async fn close(&mut self, p: &str) -> Result<(), Errno> {
        if let Some((ino, fh)) = self.open.remove(p) {
            let flushed = self.fs.flush(ino, fh).await;
            self.fs.release(ino, fh).await.map_err(errno)?;
            flushed.map_err(errno)?;
        }
        Ok(())
    }

    async fn writable(&mut self, p: &str) -> Result<(u64, u64), Errno> {
        if let Some(h) = self.open.get(p) {
            return Ok(*h);
        }
        let (ino, attr) = self.resolve(p).await?;
        if attr.kind == cpkfs_fs::attr::Kind::Dir {
            return Err(libc::EISDIR);
        }
        let fh = self.fs.open(ino, true, false).await.map_err(errno)?;
        self.open.insert(p.to_string(), (ino, fh));
        Ok((ino, fh))
    }

    async fn apply(&mut self, op: &Op) -> Result<(), Errno> {
        match *op {
            Op::Create(i) => {
                let p = PATHS[i];
                let (parent, name) = self.parent_and_name(p).await?;
                match self.fs.lookup(parent, name).await {
                    Ok(_) => return Err(libc::EEXIST),
                    Err(FsError::NotFound) => {}
                    Err(e) => return Err(errno(e)),
                }
                let (e, fh) = self
                    .fs
                    .create(parent, name, libc::S_IFREG | 0o644, 0, 0)
                    .await
                    .map_err(errno)?;
                self.open.insert(p.to_string(), (e.ino, fh));
            }
            Op::Write {
                path,
                offset,
                len,
                seed,
            } => {
                let (ino, fh) = self.writable(PATHS[path]).await?;
                let n = self
                    .fs
                    .write(ino, fh, offset, &bytes(len, seed))
                    .await
                    .map_err(errno)?;
                assert_eq!(n as u64, len, "short write");
            }
            Op::Truncate(i, size) => {
                let (ino, attr) = self.resolve(PATHS[i]).await?;
                if attr.kind == cpkfs_fs::attr::Kind::Dir {
                    return Err(libc::EISDIR);
                }
                let set = SetAttr {
                    size: Some(size),
                    ..SetAttr::default()
                };
                self.fs.setattr(ino, set).await.map_err(errno)?;
            }
            Op::Chmod(i, m) => {
                let (ino, _) = self.resolve(PATHS[i]).await?;
                let set = SetAttr {
                    mode: Some(m as u32),
                    ..SetAttr::default()
                };
                self.fs.setattr(ino, set).await.map_err(errno)?;
            }
            Op::Flush(i) => self.close(PATHS[i]).await?,
            Op::Remount => {
                let paths: Vec<String> = self.open.keys().cloned().collect();
                for p in paths {
                    self.close(&p).await?;
                }
                self.fs = new_fs(&self.client);
            }
            Op::Mkdir(i) => {
                let p = PATHS[i];
                let (parent, name) = self.parent_and_name(p).await?;
                match self.fs.lookup(parent, name).await {
                    Ok(_) => return Err(libc::EEXIST),
                    Err(FsError::NotFound) => {}
                    Err(e) => return Err(errno(e)),
                }
                self.fs
                    .mkdir(parent, name, libc::S_IFDIR | 0o755, 0, 0)
                    .await
                    .map_err(errno)?;
            }
            Op::Unlink(i) => {
                let p = PATHS[i];
                self.close_under(p).await?;
                let (parent, name) = self.parent_and_name(p).await?;
                self.fs.unlink(parent, name).await.map_err(errno)?;
            }
            Op::Rmdir(i) => {
                let p = PATHS[i];
                let (parent, name) = self.parent_and_name(p).await?;
                self.fs.rmdir(parent, name).await.map_err(errno)?;
            }
            Op::Rename(a, b) => {
                let (src, dst) = (PATHS[a], PATHS[b]);
                let (sp, sn) = self.parent_and_name(src).await?;
                let (_, s_attr) = self.resolve(src).await?;
                let (dp, dn) = self.parent_and_name(dst).await?;
                if src == dst {
                    return Ok(());
                }
                if s_attr.kind == cpkfs_fs::attr::Kind::Dir && dst.starts_with(&format!("{src}/")) {
                    return Err(libc::EINVAL);
                }
                self.close_under(src).await?;
                self.close_under(dst).await?;
                self.fs.rename(sp, sn, dp, dn, false).await.map_err(errno)?;
            }
        }
        Ok(())
    }

    /// Every name, kind, size, permission and byte the model holds, read
    /// back through `Fs` (listings with opendir/readdir, bytes through the
    /// open descriptor if there is one, else a fresh read-only one).
    async fn check(&self, model: &Model) -> Result<(), String> {
        let mut dirs = vec![String::new()];
        dirs.extend(
            model
                .nodes
                .iter()
                .filter(|(_, n)| matches!(n, Node::Dir { .. }))
                .map(|(p, _)| p.clone()),
        );
        for d in dirs {
            let (ino, _) = self.resolve(&d).await.map_err(|e| format!("{d:?}: {e}"))?;
            let fh = self
                .fs
                .opendir(ino)
                .map_err(|e| format!("opendir {d:?}: {e}"))?;
            let mut listed = BTreeMap::new();
            let mut offset = 0;
            loop {
                let batch = self
                    .fs
                    .readdir(ino, fh, offset)
                    .await
                    .map_err(|e| format!("readdir {d:?}: {e}"))?;
                let Some(last) = batch.last() else { break };
                offset = last.next_offset;
                for e in batch {
                    if e.name != "." && e.name != ".." {
                        listed.insert(e.name, e.attr.kind == cpkfs_fs::attr::Kind::Dir);
                    }
                }
            }
            self.fs.releasedir(fh);
            let expected: BTreeMap<String, bool> = model
                .children(&d)
                .into_iter()
                .map(|(n, node)| (n.to_string(), matches!(node, Node::Dir { .. })))
                .collect();
            if listed != expected {
                return Err(format!(
                    "listing of {d:?}: got {listed:?} (name → is dir), model {expected:?}"
                ));
            }
        }
        for (p, node) in &model.nodes {
            let (ino, attr) = self.resolve(p).await.map_err(|e| format!("{p}: {e}"))?;
            let perm = match node {
                Node::File { perm, .. } | Node::Dir { perm } => *perm,
            };
            if attr.perm != perm {
                return Err(format!("{p}: perm {:o}, model {perm:o}", attr.perm));
            }
            let Node::File { data, .. } = node else {
                continue;
            };
            if attr.size != data.len() as u64 {
                return Err(format!("{p}: size {}, model {}", attr.size, data.len()));
            }
            let (fh, fresh) = match self.open.get(p.as_str()) {
                Some(&(_, fh)) => (fh, false),
                None => (
                    self.fs
                        .open(ino, false, false)
                        .await
                        .map_err(|e| format!("open {p}: {e}"))?,
                    true,
                ),
            };
            let got = self.fs.read(ino, fh, 0, data.len() as u32 + 1).await;
            if fresh {
                self.fs.release(ino, fh).await.map_err(|e| format!("{e}"))?;
            }
            let got = got.map_err(|e| format!("read {p}: {e}"))?;
            if got[..] != data[..] {
                let at = got.iter().zip(data).position(|(a, b)| a != b);
                return Err(format!(
                    "{p}: {} bytes read, model {}; first difference at {at:?}",
                    got.len(),
                    data.len()
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- the runs

async fn run(emu: &EmulatorHandle, ops: &[Op]) -> Result<(), String> {
    let client = client(emu).await;
    let mut real = Real {
        fs: new_fs(&client),
        client,
        open: HashMap::new(),
    };
    let mut model = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let expected = model.apply(op);
        let got = real.apply(op).await;
        if got != expected {
            return Err(format!(
                "step {step} {op:?}: Fs returned {got:?}, the model {expected:?}"
            ));
        }
        real.check(&model)
            .await
            .map_err(|e| format!("after step {step} {op:?}: {e}"))?;
    }
    // What is stored, not what is cached: close everything and remount.
    real.apply(&Op::Remount)
        .await
        .map_err(|e| format!("final remount: errno {e}"))?;
    real.check(&model)
        .await
        .map_err(|e| format!("after the final remount: {e}"))
}

fn runtime_and_emulator() -> (tokio::runtime::Runtime, EmulatorHandle) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let emu = rt.block_on(emulator());
    (rt, emu)
}

fn replay(ops: &[Op]) {
    let (rt, emu) = runtime_and_emulator();
    if let Err(e) = rt.block_on(run(&emu, ops)) {
        panic!("{e}");
    }
}

#[test]
fn reference_model() {
    let cases: u32 = std::env::var("CPKFS_REFTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let seed: u64 = std::env::var("CPKFS_REFTEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("reftest: {cases} cases, seed {seed} (replay: CPKFS_REFTEST_SEED={seed})");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new_with_rng(
        config,
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let (rt, emu) = runtime_and_emulator();
    let result = runner.run(&prop::collection::vec(op(), 50..80), |ops| {
        rt.block_on(run(&emu, &ops)).map_err(TestCaseError::fail)
    });
    match result {
        Ok(()) => {}
        Err(TestError::Fail(why, ops)) => {
            // proptest keeps at least 50 operations; drop every one that is
            // not needed for the failure, so the case can be read.
            let ops = rt.block_on(minimise(&emu, ops));
            let why_now = rt.block_on(run(&emu, &ops)).unwrap_err();
            panic!("seed {seed}: {why}\nminimal case ({why_now}):\n{ops:#?}");
        }
        Err(e) => panic!("seed {seed}: {e}"),
    }
}

/// Remove operations one at a time while the run still fails.
async fn minimise(emu: &EmulatorHandle, mut ops: Vec<Op>) -> Vec<Op> {
    let mut i = 0;
    while i < ops.len() {
        let mut shorter = ops.clone();
        shorter.remove(i);
        if run(emu, &shorter).await.is_err() {
            ops = shorter;
        } else {
            i += 1;
        }
    }
    ops
}

// Shrunk failures found by `reference_model`, kept as named cases.

/// The first block was committed in the background; truncate(0) through
/// setattr while the file was still open for writing set the local size to
/// 0, and the next listing (readdir) replaced it with the stored blob's
/// 4096 bytes, because only never-committed files kept their local size.
#[test]
fn regression_truncate_to_zero_while_open_for_writing() {
    replay(&[
        Op::Create(0),
        Op::Write {
            path: 0,
            offset: 0,
            len: BLOCK,
            seed: 0,
        },
        Op::Truncate(0, 0),
    ]);
}
