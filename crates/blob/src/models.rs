//! Plain data returned by the client.

use std::collections::BTreeMap;
use std::time::SystemTime;

/// User metadata (`x-ms-meta-*`). Names keep the case they were set with.
pub type Metadata = BTreeMap<String, String>;

/// Properties of a blob as seen by HEAD, GET or a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlobProperties {
    pub content_length: u64,
    /// Always in the quoted header form, e.g. `"0x8D81019E8E478ED"`.
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub creation_time: Option<SystemTime>,
    pub content_type: Option<String>,
    pub content_md5: Option<String>,
    /// base64 SHA-256 of the customer-provided key the blob is encrypted with.
    pub cpk_sha256: Option<String>,
    pub server_encrypted: bool,
    pub metadata: Metadata,
    /// True when a listing withheld the metadata because the blob is CPK-encrypted.
    pub metadata_encrypted: bool,
    /// `x-ms-copy-status` when the blob is the destination of a copy.
    pub copy_status: Option<String>,
    /// Blob index tags, from a listing with `include=tags` (`None`: not
    /// asked for, or the blob has none).
    pub tags: Option<Metadata>,
    /// How many index tags the blob has (`x-ms-tag-count` of HEAD/GET,
    /// `TagCount` of a listing); 0 when none or not reported.
    pub tag_count: u32,
}

/// One `<Blob>` of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobItem {
    pub name: String,
    pub properties: BlobProperties,
}

/// One page of List Blobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    pub blobs: Vec<BlobItem>,
    /// `<BlobPrefix>` names (ending with the delimiter).
    pub prefixes: Vec<String>,
    /// None on the last page.
    pub next_marker: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub delimiter: Option<String>,
    pub marker: Option<String>,
    pub max_results: Option<u32>,
    pub include_metadata: bool,
    /// Also list blobs that have only uncommitted blocks (a writer staged
    /// blocks and never committed): `include=uncommittedblobs`.
    pub include_uncommitted: bool,
    /// Also return each blob's index tags: `include=tags`.
    pub include_tags: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockInfo {
    pub id: String,
    pub size: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockList {
    pub committed: Vec<BlockInfo>,
    pub uncommitted: Vec<BlockInfo>,
    pub etag: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockListType {
    Committed,
    Uncommitted,
    All,
}

impl BlockListType {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockListType::Committed => "committed",
            BlockListType::Uncommitted => "uncommitted",
            BlockListType::All => "all",
        }
    }
}

/// An entry of a Put Block List body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockRef {
    Committed(String),
    Uncommitted(String),
    Latest(String),
}

/// Conditional headers for reads and writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
}

impl Conditions {
    pub fn if_match(etag: impl Into<String>) -> Self {
        Conditions {
            if_match: Some(etag.into()),
            if_none_match: None,
        }
    }
    /// Create-only: fail with 409 BlobAlreadyExists if the blob exists.
    pub fn create_only() -> Self {
        Conditions {
            if_match: None,
            if_none_match: Some("*".into()),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.if_match.is_none() && self.if_none_match.is_none()
    }
}

/// Properties sent with a commit (Put Blob / Put Block List): a commit replaces
/// all of them, so callers always pass the full set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitOptions {
    pub content_type: Option<String>,
    pub metadata: Metadata,
    pub conditions: Conditions,
    /// Blob index tags the commit sets (`x-ms-tags`); `None` sends none, and
    /// the new version has no tags.
    pub tags: Option<Metadata>,
}

/// The source of a Put Blob/Block From URL: a blob of the same container, its
/// customer-provided key (if it has one) and the ETag it must still have.
#[derive(Debug, Clone, Copy)]
pub struct CopySource<'a> {
    pub name: &'a str,
    pub key: Option<&'a crate::cpk::CustomerKey>,
    /// Sent as `x-ms-source-if-match`: the copy fails (412) rather than read
    /// another version.
    pub if_match: Option<&'a str>,
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteResult {
    pub etag: String,
    pub last_modified: Option<SystemTime>,
    pub cpk_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerProperties {
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    pub metadata: Metadata,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyResult {
    pub copy_id: Option<String>,
    pub copy_status: Option<String>,
    pub etag: Option<String>,
}

/// Inclusive-exclusive byte range `[start, end)`; `end = None` means to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl ByteRange {
    pub fn new(start: u64, end: u64) -> Self {
        ByteRange {
            start,
            end: Some(end),
        }
    }
    pub fn from(start: u64) -> Self {
        ByteRange { start, end: None }
    }
    /// The `x-ms-range` header value (inclusive end).
    pub fn header(&self) -> String {
        match self.end {
            Some(e) => format!("bytes={}-{}", self.start, e.saturating_sub(1)),
            None => format!("bytes={}-", self.start),
        }
    }
}

/// Quote an ETag if it is not already in header form.
pub fn quote_etag(e: &str) -> String {
    if e.starts_with('"') || e.starts_with("W/") {
        e.to_string()
    } else {
        format!("\"{e}\"")
    }
}
