//! POSIX attributes kept in blob metadata (so `rsync -a`, `cp -p`, `tar -x`
//! keep modes and times), and blobfuse2's markers for directories and symlinks.

use cpkfs_blob::{BlobProperties, Metadata};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const META_MODE: &str = "mode";
pub const META_UID: &str = "uid";
pub const META_GID: &str = "gid";
pub const META_MTIME: &str = "mtime";
/// blobfuse2's directory marker: a zero-byte blob with this metadata.
pub const META_FOLDER: &str = "hdi_isfolder";
/// blobfuse2's symlink convention: content is the target.
pub const META_SYMLINK: &str = "is_symlink";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only (no file type bits).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// Defaults when a blob carries no POSIX metadata.
#[derive(Debug, Clone, Copy)]
pub struct AttrDefaults {
    pub uid: u32,
    pub gid: u32,
    pub file_perm: u16,
    pub dir_perm: u16,
}

impl Default for AttrDefaults {
    fn default() -> Self {
        AttrDefaults {
            uid: unsafe { libc::geteuid() },
            gid: unsafe { libc::getegid() },
            file_perm: 0o644,
            dir_perm: 0o755,
        }
    }
}

pub fn meta_get<'a>(md: &'a Metadata, name: &str) -> Option<&'a str> {
    md.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn is_folder_marker(md: &Metadata) -> bool {
    meta_get(md, META_FOLDER).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

pub fn is_symlink(md: &Metadata) -> bool {
    meta_get(md, META_SYMLINK).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `mtime` is stored as `seconds.nanoseconds` since the epoch.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    let (secs, nanos) = match s.split_once('.') {
        Some((a, b)) => (
            a.parse::<u64>().ok()?,
            format!("{b:0<9}")[..9].parse::<u32>().ok()?,
        ),
        None => (s.parse::<u64>().ok()?, 0),
    };
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

impl Attr {
    /// Attributes of a blob from its properties and (if known) metadata.
    pub fn from_blob(p: &BlobProperties, defaults: &AttrDefaults) -> Attr {
        let md = &p.metadata;
        let kind = if is_folder_marker(md) {
            Kind::Dir
        } else if is_symlink(md) {
            Kind::Symlink
        } else {
            Kind::File
        };
        let lm = p.last_modified.unwrap_or(UNIX_EPOCH);
        let default_perm = match kind {
            Kind::Dir => defaults.dir_perm,
            Kind::Symlink => 0o777,
            Kind::File => defaults.file_perm,
        };
        Attr {
            kind,
            size: if kind == Kind::Dir {
                0
            } else {
                p.content_length
            },
            perm: meta_get(md, META_MODE)
                .and_then(|m| u32::from_str_radix(m, 8).ok())
                .map(|m| (m & 0o7777) as u16)
                .unwrap_or(default_perm),
            uid: meta_get(md, META_UID)
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.uid),
            gid: meta_get(md, META_GID)
                .and_then(|v| v.parse().ok())
                .unwrap_or(defaults.gid),
            mtime: meta_get(md, META_MTIME).and_then(parse_time).unwrap_or(lm),
            ctime: lm,
        }
    }

    pub fn new_dir(defaults: &AttrDefaults) -> Attr {
        let now = SystemTime::now();
        Attr {
            kind: Kind::Dir,
            size: 0,
            perm: defaults.dir_perm,
            uid: defaults.uid,
            gid: defaults.gid,
            mtime: now,
            ctime: now,
        }
    }

    /// The metadata a commit of this object carries (a commit replaces all).
    pub fn to_metadata(&self) -> Metadata {
        let mut md = Metadata::new();
        md.insert(META_MODE.into(), format!("{:04o}", self.perm));
        md.insert(META_UID.into(), self.uid.to_string());
        md.insert(META_GID.into(), self.gid.to_string());
        md.insert(META_MTIME.into(), format_time(self.mtime));
        match self.kind {
            Kind::Dir => {
                md.insert(META_FOLDER.into(), "true".into());
            }
            Kind::Symlink => {
                md.insert(META_SYMLINK.into(), "true".into());
            }
            Kind::File => {}
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trip() {
        let d = AttrDefaults {
            uid: 1,
            gid: 2,
            file_perm: 0o600,
            dir_perm: 0o700,
        };
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let a = Attr {
            kind: Kind::Symlink,
            size: 5,
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            mtime: t,
            ctime: t,
        };
        let p = BlobProperties {
            content_length: 5,
            metadata: a.to_metadata(),
            ..Default::default()
        };
        let b = Attr::from_blob(&p, &d);
        assert_eq!(b.kind, Kind::Symlink);
        assert_eq!(b.perm, 0o4755);
        assert_eq!((b.uid, b.gid, b.mtime, b.size), (1000, 100, t, 5));
        // No metadata: defaults, mtime from Last-Modified.
        let p = BlobProperties {
            content_length: 9,
            last_modified: Some(t),
            ..Default::default()
        };
        let c = Attr::from_blob(&p, &d);
        assert_eq!((c.kind, c.perm, c.uid, c.mtime), (Kind::File, 0o600, 1, t));
        // blobfuse2 marker.
        let mut md = Metadata::new();
        md.insert("hdi_isfolder".into(), "true".into());
        let p = BlobProperties {
            metadata: md,
            ..Default::default()
        };
        assert_eq!(Attr::from_blob(&p, &d).kind, Kind::Dir);
        assert_eq!(parse_time("12"), Some(UNIX_EPOCH + Duration::from_secs(12)));
        assert_eq!(
            parse_time("12.5"),
            Some(UNIX_EPOCH + Duration::new(12, 500_000_000))
        );
    }
}
