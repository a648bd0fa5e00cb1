//! `cpkfs doctor [settings] [--prefix P] [--clean] [--grace D]`: check a
//! container without a mount, through the same settings and connection as
//! `rotate-cpk` (`crate::connect`), and say what to do about what it finds:
//!
//! - which blobs are under which customer-provided key (listings name each
//!   CPK blob's key hash), and which the configured key ring cannot read;
//! - plain blobs among CPK ones (directory markers and special files are
//!   plain by design, docs/SEMANTICS.md);
//! - directory markers and symlinks that break the conventions: a marker with
//!   data, a marker under a key (listings then hide that it is a directory),
//!   an empty symlink, a folder blob whose name ends in `/` (cpkfs shows an
//!   empty directory that `rmdir` cannot remove), a file hidden by a
//!   directory of the same name, names the mount cannot show;
//! - blobs that have only uncommitted blocks (a writer staged blocks and never
//!   committed: a crashed mount or tool). `--clean` removes those older than
//!   the grace period (default 24 h; a live upload stages a block at least
//!   every few seconds) with an empty create-only commit and a conditional
//!   delete, so a writer that commits meanwhile wins.
//!
//! Only zero-byte CPK blobs get a keyed HEAD (to tell markers and empty
//! symlinks from empty files); everything else comes from listings.
//! Exit status: 0 nothing to fix, 1 something to fix (listed), 2 the check
//! could not run.

use super::stats::human_bytes;
use super::MountArgs;
use crate::blob::{BlobClient, BlobItem, BlockListType, CommitOptions, Conditions, ListOptions};
use crate::fs::KeyRing;
use anyhow::{bail, Result};
use clap::Args;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::IsTerminal;
use std::time::{Duration, SystemTime};

#[derive(Args, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub common: MountArgs,
    /// Only blobs whose names start with this prefix.
    #[arg(long, default_value = "")]
    pub prefix: String,
    /// Remove uncommitted blocks left by writers that never committed, once
    /// older than --grace.
    #[arg(long)]
    pub clean: bool,
    /// How old uncommitted blocks must be before --clean removes them: seconds, or with s/m/h/d.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub grace: Duration,
}

/// `90`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| Duration::from_secs(n * mult))
        .map_err(|_| format!("{s:?} is not a duration (e.g. 3600, 30m, 24h, 7d)"))
}

/// Names shown per finding; the counts are always complete.
const EXAMPLES: usize = 5;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Group {
    pub blobs: u64,
    pub bytes: u64,
    pub examples: Vec<String>,
}

impl Group {
    fn add(&mut self, name: &str, bytes: u64) {
        self.blobs += 1;
        self.bytes += bytes;
        if self.examples.len() < EXAMPLES {
            self.examples.push(name.to_string());
        }
    }
}

/// A blob that has only uncommitted blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncommitted {
    pub name: String,
    pub blocks: usize,
    pub bytes: u64,
    /// Since the last block was staged, when the service says.
    pub age: Option<Duration>,
    pub outcome: CleanOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanOutcome {
    /// Not asked to clean.
    Left,
    /// Younger than the grace period (or of unknown age).
    TooYoung,
    Cleaned,
    /// A writer committed (or staged more) meanwhile: left to it.
    InUse,
    Failed(String),
}

/// Everything one scan found. Filled by [`Scan`], reported by [`report`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub prefix: String,
    pub blobs: u64,
    pub bytes: u64,
    /// Key hash → blobs under it.
    pub by_key: BTreeMap<String, Group>,
    /// Regular files without a key.
    pub plain_files: Group,
    pub markers: u64,
    pub symlinks: u64,
    pub specials: u64,
    /// (name, problem)
    pub layout: Vec<(String, String)>,
    pub uncommitted: Vec<Uncommitted>,
    /// Zero-byte CPK blobs whose keyed HEAD failed (their kind is unknown).
    pub unchecked: Vec<(String, String)>,
}

/// What the mount could not show, or shows wrongly, about a name.
fn name_problem(name: &str) -> Option<&'static str> {
    if name.contains('\\') {
        return Some("contains '\\' (the mount refuses such names): invisible through cpkfs");
    }
    let parts: Vec<&str> = name.split('/').collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Some("has a '.' or '..' component: invisible through cpkfs");
    }
    if parts.iter().any(|p| p.len() > 255) {
        return Some("has a component longer than 255 bytes: invisible through cpkfs");
    }
    None
}

fn meta_is(item: &BlobItem, key: &str, value: &str) -> bool {
    item.properties
        .metadata
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case(key) && v.eq_ignore_ascii_case(value))
}

fn special_kind(item: &BlobItem) -> bool {
    item.properties
        .metadata
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("file_type"))
        && item.properties.content_length == 0
}

/// Streaming checks over a listing in name order. Memory stays bounded by the
/// depth of the tree, not the size of the container.
#[derive(Default)]
pub struct Scan {
    pub f: Findings,
    /// Non-directory blobs that a later name may use as a directory: alive
    /// while the listing is still inside `name/`.
    open_files: BTreeSet<String>,
}

impl Scan {
    pub fn new(prefix: &str) -> Scan {
        Scan {
            f: Findings {
                prefix: prefix.to_string(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// One committed blob of the listing (metadata revealed by a keyed HEAD
    /// for zero-byte CPK blobs, where the caller could).
    pub fn blob(&mut self, item: &BlobItem) {
        let name = item.name.as_str();
        let p = &item.properties;
        self.f.blobs += 1;
        self.f.bytes += p.content_length;
        // A file blob `x` followed by names under `x/`: the directory wins.
        self.open_files.retain(|f| {
            let dir = format!("{f}/");
            name.starts_with(&dir) || name < dir.as_str()
        });
        let hidden: Vec<String> = self
            .open_files
            .iter()
            .filter(|f| name.starts_with(&format!("{f}/")))
            .cloned()
            .collect();
        for h in hidden {
            self.open_files.remove(&h);
            self.f.layout.push((
                h,
                "a file with the name of a directory: the directory wins, the file is hidden in the mount; rename one of them".into(),
            ));
        }
        if let Some(problem) = name_problem(name) {
            self.f.layout.push((name.into(), problem.into()));
        }
        let is_marker = meta_is(item, "hdi_isfolder", "true");
        let is_symlink = meta_is(item, "is_symlink", "true");
        if name.ends_with('/') || name.contains("//") {
            let what = if p.content_length == 0 {
                "a folder blob whose name ends in '/' (or has an empty component), from another tool: the mount shows an empty directory that rmdir cannot remove; delete this blob"
            } else {
                "a name with an empty component: invisible through cpkfs"
            };
            self.f.layout.push((name.into(), what.into()));
        }
        if let Some(h) = &p.cpk_sha256 {
            self.f
                .by_key
                .entry(h.clone())
                .or_default()
                .add(name, p.content_length);
        }
        if is_marker {
            self.f.markers += 1;
            if p.content_length > 0 {
                self.f.layout.push((
                    name.into(),
                    format!(
                        "a directory marker (hdi_isfolder) holding {} bytes: the mount shows a directory, the bytes are unreachable",
                        p.content_length
                    ),
                ));
            }
            if p.cpk_sha256.is_some() {
                self.f.layout.push((
                    name.into(),
                    "a directory marker under a customer-provided key: listings hide its hdi_isfolder, so every listing needs a keyed HEAD (cpkfs writes markers without the key); recreate it with mkdir through the mount".into(),
                ));
            }
            return;
        }
        if is_symlink {
            self.f.symlinks += 1;
            if p.content_length == 0 {
                self.f.layout.push((
                    name.into(),
                    "a symlink without a target (is_symlink with no content): readlink gives an empty path".into(),
                ));
            }
        } else if special_kind(item) {
            self.f.specials += 1;
        } else if p.cpk_sha256.is_none() {
            self.f.plain_files.add(name, p.content_length);
        }
        self.open_files.insert(name.to_string());
    }
}

/// How the ring sees a key hash.
fn key_role(ring: &KeyRing, sha: &str) -> Option<usize> {
    if ring.current().is_some_and(|k| k.sha256() == sha) {
        return Some(1);
    }
    ring.older()
        .iter()
        .position(|k| k.sha256() == sha)
        .map(|i| i + 2)
}

fn examples(g: &Group) -> String {
    let more = if g.blobs as usize > g.examples.len() {
        ", …"
    } else {
        ""
    };
    format!("{}{more}", g.examples.join(", "))
}

fn age(d: Option<Duration>) -> String {
    match d {
        None => "at an unknown time".into(),
        Some(d) => {
            let s = d.as_secs();
            match s {
                s if s < 120 => format!("{s} s ago"),
                s if s < 7200 => format!("{} min ago", s / 60),
                s if s < 172_800 => format!("{} h ago", s / 3600),
                s => format!("{} days ago", s / 86_400),
            }
        }
    }
}

/// The report and the number of things to fix.
pub fn report(f: &Findings, ring: &KeyRing, grace: Duration) -> (String, usize) {
    let mut out = String::new();
    let mut problems = 0;
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!(
        "checked {} blob(s), {}{}",
        f.blobs,
        human_bytes(f.bytes),
        if f.prefix.is_empty() {
            String::new()
        } else {
            format!(" under prefix {:?}", f.prefix)
        }
    ));
    line(String::new());
    line(format!(
        "keys ({}):",
        match ring.len() {
            0 => "no cpk_file: this configuration reads and writes plain blobs".to_string(),
            1 => "cpk_file holds 1 key".to_string(),
            n => format!("cpk_file holds {n} keys, the first writes"),
        }
    ));
    if f.by_key.is_empty() {
        line("  no blob is under a customer-provided key".into());
    }
    // The current key first, then older keys by line, then unknown keys.
    let mut keys: Vec<(&String, &Group)> = f.by_key.iter().collect();
    keys.sort_by_key(|(sha, _)| key_role(ring, sha).unwrap_or(usize::MAX));
    for (sha, g) in keys {
        let size = format!("{} blob(s), {}", g.blobs, human_bytes(g.bytes));
        match key_role(ring, sha) {
            Some(1) => line(format!("  ok       {sha}  current key (line 1): {size}")),
            Some(n) => line(format!(
                "  ok       {sha}  older key (line {n}): {size}; readable, and `cpkfs rotate-cpk` re-encrypts them under the current key"
            )),
            None => {
                problems += 1;
                line(format!(
                    "  PROBLEM  {sha}  not in cpk_file: {size} cannot be read ({}): add the old key to cpk_file (below the first line) or run rotate-cpk from a machine that has it",
                    examples(g)
                ));
            }
        }
    }
    line(String::new());
    line("plain blobs:".into());
    if f.plain_files.blobs == 0 {
        line("  ok       no file without a customer-provided key (markers and special files are plain by design)".into());
    } else if ring.is_empty() {
        line(format!(
            "  info     {} file(s), {}, without a customer-provided key",
            f.plain_files.blobs,
            human_bytes(f.plain_files.bytes)
        ));
    } else {
        problems += 1;
        line(format!(
            "  PROBLEM  {} file(s), {}, are not encrypted with a customer-provided key ({}): anyone with the account key can read them; written by another tool? Rewriting a file through the mount encrypts it",
            f.plain_files.blobs,
            human_bytes(f.plain_files.bytes),
            examples(&f.plain_files)
        ));
    }
    line(String::new());
    line(format!(
        "directory markers, symlinks, special files: {} marker(s), {} symlink(s), {} special file(s)",
        f.markers, f.symlinks, f.specials
    ));
    if f.layout.is_empty() {
        line("  ok       all follow the conventions of docs/SEMANTICS.md".into());
    }
    for (name, what) in &f.layout {
        problems += 1;
        line(format!("  PROBLEM  {name}: {what}"));
    }
    for (name, why) in &f.unchecked {
        problems += 1;
        line(format!(
            "  PROBLEM  {name}: could not read its metadata ({why})"
        ));
    }
    line(String::new());
    line("uncommitted blocks (staged by a writer that never committed):".into());
    if f.uncommitted.is_empty() {
        line("  ok       none".into());
    }
    for u in &f.uncommitted {
        let what = format!(
            "{}: {} uncommitted block(s), {}, last staged {}",
            u.name,
            u.blocks,
            human_bytes(u.bytes),
            age(u.age)
        );
        match &u.outcome {
            CleanOutcome::Cleaned => line(format!("  cleaned  {what}: removed")),
            CleanOutcome::Left => {
                problems += 1;
                line(format!(
                    "  PROBLEM  {what}: `cpkfs doctor --clean` removes them once older than the grace period ({}); the service drops them after a week",
                    human_duration(grace)
                ));
            }
            CleanOutcome::TooYoung => {
                problems += 1;
                line(format!(
                    "  PROBLEM  {what}: younger than the grace period ({}) or of unknown age, so perhaps a live upload: left alone (--grace 0 removes them anyway)",
                    human_duration(grace)
                ));
            }
            CleanOutcome::InUse => line(format!(
                "  ok       {what}: a writer is using it (it committed or staged more during the check): left alone"
            )),
            CleanOutcome::Failed(e) => {
                problems += 1;
                line(format!("  PROBLEM  {what}: could not remove them: {e}"));
            }
        }
    }
    line(String::new());
    line(if problems == 0 {
        "nothing to fix".to_string()
    } else {
        format!("{problems} thing(s) to fix (PROBLEM lines above)")
    });
    (out, problems)
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s > 0 && s.is_multiple_of(86_400) {
        format!("{} d", s / 86_400)
    } else if s > 0 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s > 0 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// Names of committed blobs, read lazily in listing order next to a listing
/// that also has uncommitted-only blobs: a name of that listing missing here
/// has no committed content.
struct CommittedNames {
    pager: crate::blob::ListPager,
    buf: VecDeque<String>,
    done: bool,
}

impl CommittedNames {
    async fn contains(&mut self, name: &str) -> Result<bool> {
        loop {
            while let Some(front) = self.buf.front() {
                if front.as_str() < name {
                    self.buf.pop_front();
                } else {
                    return Ok(front == name);
                }
            }
            if self.done {
                return Ok(false);
            }
            match self.pager.next_page().await? {
                Some(p) => self.buf.extend(p.blobs.into_iter().map(|b| b.name)),
                None => self.done = true,
            }
        }
    }
}

/// Reveal the metadata of zero-byte CPK blobs (markers, empty symlinks and
/// special files would be among them) with keyed HEADs, 32 at a time.
async fn reveal_empty_cpk(
    client: &BlobClient,
    ring: &KeyRing,
    items: &mut [BlobItem],
    unchecked: &mut Vec<(String, String)>,
) {
    use futures::stream::{self, StreamExt};
    let todo: Vec<(usize, std::sync::Arc<crate::blob::CustomerKey>)> = items
        .iter()
        .enumerate()
        .filter(|(_, it)| it.properties.metadata_encrypted && it.properties.content_length == 0)
        .filter_map(|(i, it)| {
            let k = ring.find(it.properties.cpk_sha256.as_deref()?)?;
            Some((i, k.clone()))
        })
        .collect();
    let results: Vec<_> = stream::iter(todo)
        .map(|(i, k)| {
            let name = items[i].name.clone();
            async move {
                let r = client
                    .get_blob_properties(&name, Some(&k), &Conditions::default())
                    .await;
                (i, r)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (i, r) in results {
        match r {
            Ok(p) => items[i].properties.metadata = p.metadata,
            Err(e) if e.is_not_found() => {}
            Err(e) => unchecked.push((items[i].name.clone(), e.to_string())),
        }
    }
}

/// Remove the uncommitted blocks of `name` if they are still exactly
/// `ids`: an empty create-only commit discards them (a writer that committed
/// meanwhile makes it fail), then the empty blob it made is deleted with
/// If-Match (a writer that committed right after is left alone).
async fn clean_one(client: &BlobClient, name: &str, ids: &[String]) -> CleanOutcome {
    match client.get_block_list(name, BlockListType::All).await {
        Ok(l) => {
            let now: Vec<&str> = l.uncommitted.iter().map(|b| b.id.as_str()).collect();
            if !l.committed.is_empty() || now != ids.iter().map(String::as_str).collect::<Vec<_>>()
            {
                return CleanOutcome::InUse;
            }
        }
        Err(e) if e.is_not_found() => return CleanOutcome::Cleaned,
        Err(e) => return CleanOutcome::Failed(e.to_string()),
    }
    let opts = CommitOptions {
        conditions: Conditions::create_only(),
        ..Default::default()
    };
    let w = match client.put_block_list(name, &[], &opts, None).await {
        Ok(w) => w,
        Err(e) if e.is_code("BlobAlreadyExists") || e.status() == Some(412) => {
            return CleanOutcome::InUse
        }
        Err(e) => return CleanOutcome::Failed(e.to_string()),
    };
    match client
        .delete_blob(name, &Conditions::if_match(w.etag))
        .await
    {
        Ok(()) => CleanOutcome::Cleaned,
        Err(e) if e.is_not_found() => CleanOutcome::Cleaned,
        Err(e) if e.status() == Some(412) => CleanOutcome::InUse,
        Err(e) => CleanOutcome::Failed(format!(
            "the blocks are gone, but the empty blob left in their place could not be deleted: {e}"
        )),
    }
}

/// Scan the container (and clean, if asked).
pub async fn check(
    client: &BlobClient,
    ring: &KeyRing,
    prefix: &str,
    clean: bool,
    grace: Duration,
) -> Result<Findings> {
    let progress = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new_spinner();
        b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        Some(b)
    } else {
        None
    };
    let opts = |uncommitted: bool| ListOptions {
        prefix: (!prefix.is_empty()).then(|| prefix.to_string()),
        max_results: Some(5000),
        include_metadata: !uncommitted,
        include_uncommitted: uncommitted,
        ..Default::default()
    };
    let mut scan = Scan::new(prefix);
    let mut pager = client.list_pager(opts(false));
    while let Some(mut page) = pager.next_page().await? {
        reveal_empty_cpk(client, ring, &mut page.blobs, &mut scan.f.unchecked).await;
        for item in &page.blobs {
            scan.blob(item);
        }
        if let Some(b) = &progress {
            b.set_message(format!("{} blobs checked", scan.f.blobs));
            b.tick();
        }
    }
    // A second listing, with uncommitted blobs, read beside the committed
    // names: the service's representation of an uncommitted-only blob in a
    // listing need not be relied on.
    let mut committed = CommittedNames {
        pager: client.list_pager(ListOptions {
            include_metadata: false,
            ..opts(false)
        }),
        buf: VecDeque::new(),
        done: false,
    };
    let mut all = client.list_pager(opts(true));
    let now = SystemTime::now();
    while let Some(page) = all.next_page().await? {
        for item in page.blobs {
            if committed.contains(&item.name).await? {
                continue;
            }
            let list = match client
                .get_block_list(&item.name, BlockListType::Uncommitted)
                .await
            {
                Ok(l) => l,
                // Committed or discarded since the listing.
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            if list.uncommitted.is_empty() {
                continue;
            }
            let age = item
                .properties
                .last_modified
                .and_then(|t| now.duration_since(t).ok());
            let ids: Vec<String> = list.uncommitted.iter().map(|b| b.id.clone()).collect();
            let outcome = if !clean {
                CleanOutcome::Left
            } else if grace.is_zero() || age.is_some_and(|a| a >= grace) {
                clean_one(client, &item.name, &ids).await
            } else {
                CleanOutcome::TooYoung
            };
            scan.f.uncommitted.push(Uncommitted {
                name: item.name.clone(),
                blocks: list.uncommitted.len(),
                bytes: list.uncommitted.iter().map(|b| b.size).sum(),
                age,
                outcome,
            });
            if let Some(b) = &progress {
                b.set_message(format!(
                    "{} blobs checked, {} with uncommitted blocks",
                    scan.f.blobs,
                    scan.f.uncommitted.len()
                ));
                b.tick();
            }
        }
    }
    if let Some(b) = progress {
        b.finish_and_clear();
    }
    Ok(scan.f)
}

/// Ok(true): nothing to fix.
pub fn run(a: DoctorArgs) -> Result<bool> {
    let (_, crate::connect::Connection { client, keys }) = crate::connect::offline(&a.common)?;
    if client.container().is_empty() {
        bail!("no container given");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()?;
    let findings = rt.block_on(check(&client, &keys, &a.prefix, a.clean, a.grace))?;
    let (text, problems) = report(&findings, &keys, a.grace);
    print!("{text}");
    Ok(problems == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{BlobProperties, CustomerKey, Metadata};
    use std::sync::Arc;

    fn item(name: &str, size: u64, cpk: Option<&str>, md: &[(&str, &str)]) -> BlobItem {
        BlobItem {
            name: name.into(),
            properties: BlobProperties {
                content_length: size,
                cpk_sha256: cpk.map(str::to_string),
                metadata: md
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Metadata>(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(human_duration(Duration::from_secs(86_400)), "1 d");
        assert_eq!(human_duration(Duration::from_secs(90)), "90 s");
    }

    #[test]
    fn scan_sorts_blobs_by_key_and_finds_layout_problems() {
        let mut s = Scan::new("");
        for it in [
            item("a", 10, Some("K1"), &[]),
            item("a-b", 1, Some("K1"), &[]),
            item("a/x", 5, Some("K2"), &[]),
            item("d", 0, None, &[("hdi_isfolder", "true")]),
            item("d/f", 3, None, &[]),
            item("fifo", 0, None, &[("file_type", "fifo")]),
            item("ghost/", 0, None, &[("hdi_isfolder", "true")]),
            item("heavy", 4, None, &[("hdi_isfolder", "true")]),
            item("link", 0, Some("K1"), &[("is_symlink", "true")]),
            item("w\\x", 1, Some("K1"), &[]),
        ] {
            s.blob(&it);
        }
        let f = s.f;
        assert_eq!(f.blobs, 10);
        assert_eq!(f.by_key["K1"].blobs, 4);
        assert_eq!(f.by_key["K2"].examples, vec!["a/x".to_string()]);
        assert_eq!(
            f.plain_files.blobs, 1,
            "d/f only: markers and FIFOs are plain by design"
        );
        assert_eq!((f.markers, f.symlinks, f.specials), (3, 1, 1));
        let problems: Vec<&str> = f.layout.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            problems,
            ["a", "ghost/", "heavy", "link", "w\\x"],
            "{:#?}",
            f.layout
        );
        assert!(f.layout[0].1.contains("hidden"));
        assert!(f.layout[1].1.contains("rmdir cannot remove"));
        assert!(f.layout[2].1.contains("holding 4 bytes"));
        assert!(f.layout[3].1.contains("without a target"));
    }

    #[test]
    fn report_names_unknown_keys_with_advice_and_counts_problems() {
        let cur = Arc::new(CustomerKey::from_raw([1; 32]));
        let old = Arc::new(CustomerKey::from_raw([2; 32]));
        let ring = KeyRing::new(vec![cur.clone(), old.clone()]);
        let mut f = Findings::default();
        f.by_key.entry(cur.sha256().into()).or_default().add("n", 1);
        f.by_key.entry(old.sha256().into()).or_default().add("o", 1);
        let g = f.by_key.entry("FOREIGN=".into()).or_default();
        for i in 0..12 {
            g.add(&format!("f{i}"), 1 << 20);
        }
        f.plain_files.add("p", 2);
        f.uncommitted.push(Uncommitted {
            name: "big".into(),
            blocks: 2,
            bytes: 16 << 20,
            age: Some(Duration::from_secs(7200)),
            outcome: CleanOutcome::Left,
        });
        f.uncommitted.push(Uncommitted {
            name: "gone".into(),
            blocks: 1,
            bytes: 1,
            age: None,
            outcome: CleanOutcome::Cleaned,
        });
        let (text, problems) = report(&f, &ring, Duration::from_secs(86_400));
        assert_eq!(problems, 3, "{text}");
        assert!(
            text.contains(&format!(
                "{}  current key (line 1): 1 blob(s)",
                cur.sha256()
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}  older key (line 2)", old.sha256())),
            "{text}"
        );
        assert!(text.contains("PROBLEM  FOREIGN=  not in cpk_file: 12 blob(s), 12.0 MiB cannot be read (f0, f1, f2, f3, f4, …): add the old key to cpk_file (below the first line) or run rotate-cpk from a machine that has it"), "{text}");
        assert!(
            text.contains("PROBLEM  1 file(s), 2 B, are not encrypted"),
            "{text}"
        );
        assert!(text.contains("big: 2 uncommitted block(s), 16.0 MiB, last staged 2 h ago: `cpkfs doctor --clean` removes them once older than the grace period (1 d)"), "{text}");
        assert!(text.contains("cleaned  gone"), "{text}");
        assert!(
            text.ends_with("3 thing(s) to fix (PROBLEM lines above)\n"),
            "{text}"
        );
        let (text, problems) = report(&Findings::default(), &KeyRing::default(), Duration::ZERO);
        assert_eq!(problems, 0);
        assert!(text.ends_with("nothing to fix\n"));
    }
}
