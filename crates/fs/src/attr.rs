//! POSIX attributes kept in blob metadata (so `rsync -a`, `cp -p`, `tar -x`
//! keep modes and times), and blobfuse2's markers for directories and symlinks.

use cpkfs_blob::{BlobProperties, Metadata};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const META_MODE: &str = "mode";
/// The metadata entries that describe a node, which are also its blob index
/// tags when attributes are kept in tags (fewer than the service's 10).
pub const ATTR_TAG_KEYS: [&str; 9] = [
    META_MODE,
    META_UID,
    META_GID,
    META_MTIME,
    META_ATIME,
    META_CTIME,
    META_FILE_TYPE,
    META_RDEV,
    META_SYMLINK,
];

/// The attribute entries of `md` (metadata or tags): what is stored in tags.
pub fn tag_subset(md: &cpkfs_blob::Metadata) -> cpkfs_blob::Metadata {
    md.iter()
        .filter(|(k, _)| ATTR_TAG_KEYS.iter().any(|a| k.eq_ignore_ascii_case(a)))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}
pub const META_UID: &str = "uid";
pub const META_GID: &str = "gid";
pub const META_MTIME: &str = "mtime";
/// Access time, set by utimensat (the mount is noatime: reads never move it).
pub const META_ATIME: &str = "atime";
/// Change time: every change of data or metadata made through cpkfs sets it.
/// Blobs without it show their Last-Modified.
pub const META_CTIME: &str = "ctime";
/// Special files (FIFOs, devices, sockets): a zero-byte blob whose metadata
/// says its type (`fifo`, `char`, `block`, `socket`) and, for devices, `rdev`.
pub const META_FILE_TYPE: &str = "file_type";
pub const META_RDEV: &str = "rdev";
/// blobfuse2's directory marker: a zero-byte blob with this metadata.
pub const META_FOLDER: &str = "hdi_isfolder";
/// blobfuse2's symlink convention: content is the target.
pub const META_SYMLINK: &str = "is_symlink";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    CharDev,
    BlockDev,
    Socket,
}

impl Kind {
    /// The special file types, as stored in `file_type` metadata.
    pub const SPECIAL: [(Kind, &'static str); 4] = [
        (Kind::Fifo, "fifo"),
        (Kind::CharDev, "char"),
        (Kind::BlockDev, "block"),
        (Kind::Socket, "socket"),
    ];

    pub fn is_special(self) -> bool {
        Self::SPECIAL.iter().any(|(k, _)| *k == self)
    }

    fn special_name(self) -> Option<&'static str> {
        Self::SPECIAL
            .iter()
            .find(|(k, _)| *k == self)
            .map(|(_, n)| *n)
    }

    /// The kind named by `S_IFMT` bits of a mode (None: not one we store).
    pub fn from_mode(mode: u32) -> Option<Kind> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(Kind::File),
            libc::S_IFDIR => Some(Kind::Dir),
            libc::S_IFLNK => Some(Kind::Symlink),
            libc::S_IFIFO => Some(Kind::Fifo),
            libc::S_IFCHR => Some(Kind::CharDev),
            libc::S_IFBLK => Some(Kind::BlockDev),
            libc::S_IFSOCK => Some(Kind::Socket),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    pub size: u64,
    /// Permission bits only (no file type bits).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: SystemTime,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Device number of a character or block device (0 otherwise).
    pub rdev: u32,
    /// 0 once unlinked (an open descriptor still reaches it), else 1 (2 for
    /// directories: hard links do not exist here).
    pub nlink: u32,
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

pub fn file_type(md: &Metadata) -> Option<Kind> {
    let v = meta_get(md, META_FILE_TYPE)?;
    Kind::SPECIAL
        .iter()
        .find(|(_, n)| v.eq_ignore_ascii_case(n))
        .map(|(k, _)| *k)
}

/// Times are stored as `seconds.nanoseconds` since the epoch, exactly (64-bit
/// seconds). Before the epoch the seconds are negative and floored, the
/// nanoseconds still count forward: -0.25 s is `-1.750000000`.
pub fn format_time(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => format!("{}.{:09}", d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (secs, nanos) = if d.subsec_nanos() == 0 {
                (d.as_secs(), 0)
            } else {
                (d.as_secs() + 1, 1_000_000_000 - d.subsec_nanos())
            };
            format!("-{secs}.{nanos:09}")
        }
    }
}

pub fn parse_time(s: &str) -> Option<SystemTime> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (secs, nanos) = match s.split_once('.') {
        Some((a, b)) if !b.is_empty() && b.len() <= 9 => (
            a.parse::<u64>().ok()?,
            format!("{b:0<9}").parse::<u32>().ok()?,
        ),
        Some(_) => return None,
        None => (s.parse::<u64>().ok()?, 0),
    };
    if neg {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs))?
            .checked_add(Duration::from_nanos(nanos as u64))
    } else {
        UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
    }
}

impl Attr {
    /// Attributes of a blob from its properties and (if known) metadata.
    pub fn from_blob(p: &BlobProperties, defaults: &AttrDefaults) -> Attr {
        let md = &p.metadata;
        let kind = if is_folder_marker(md) {
            Kind::Dir
        } else if is_symlink(md) {
            Kind::Symlink
        } else if let Some(k) = file_type(md).filter(|_| p.content_length == 0) {
            // Only a zero-byte blob is a special file: one with content is
            // data some tool wrote, and stays readable as a file.
            k
        } else {
            Kind::File
        };
        let lm = p.last_modified.unwrap_or(UNIX_EPOCH);
        let default_perm = match kind {
            Kind::Dir => defaults.dir_perm,
            Kind::Symlink => 0o777,
            Kind::File => defaults.file_perm,
            _ => defaults.file_perm,
        };
        let mtime = meta_get(md, META_MTIME).and_then(parse_time).unwrap_or(lm);
        Attr {
            kind,
            size: if kind == Kind::Dir || kind.is_special() {
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
            // Blobs written before atime was stored: atime was mtime.
            atime: meta_get(md, META_ATIME)
                .and_then(parse_time)
                .unwrap_or(mtime),
            mtime,
            ctime: meta_get(md, META_CTIME).and_then(parse_time).unwrap_or(lm),
            rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                meta_get(md, META_RDEV)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            } else {
                0
            },
            nlink: if kind == Kind::Dir { 2 } else { 1 },
        }
    }

    /// A new object of `kind` made through this mount now.
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32) -> Attr {
        let now = SystemTime::now();
        Attr {
            kind,
            size: 0,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            rdev: 0,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
        }
    }

    pub fn new_dir(defaults: &AttrDefaults) -> Attr {
        Attr::new(Kind::Dir, defaults.dir_perm, defaults.uid, defaults.gid)
    }

    /// The metadata a commit of this object carries (a commit replaces all).
    pub fn to_metadata(&self) -> Metadata {
        let mut md = Metadata::new();
        md.insert(META_MODE.into(), format!("{:04o}", self.perm));
        md.insert(META_UID.into(), self.uid.to_string());
        md.insert(META_GID.into(), self.gid.to_string());
        md.insert(META_MTIME.into(), format_time(self.mtime));
        md.insert(META_ATIME.into(), format_time(self.atime));
        md.insert(META_CTIME.into(), format_time(self.ctime));
        match self.kind {
            Kind::Dir => {
                md.insert(META_FOLDER.into(), "true".into());
            }
            Kind::Symlink => {
                md.insert(META_SYMLINK.into(), "true".into());
            }
            Kind::File => {}
            k => {
                md.insert(META_FILE_TYPE.into(), k.special_name().unwrap().into());
                if matches!(k, Kind::CharDev | Kind::BlockDev) {
                    md.insert(META_RDEV.into(), self.rdev.to_string());
                }
            }
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
            atime: t,
            mtime: t,
            ctime: t,
            rdev: 0,
            nlink: 1,
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

    #[test]
    fn special_files_round_trip_with_type_rdev_and_mode() {
        let d = AttrDefaults::default();
        for (kind, name) in Kind::SPECIAL {
            let mut a = Attr::new(kind, 0o640, 7, 8);
            a.rdev = if matches!(kind, Kind::CharDev | Kind::BlockDev) {
                0x0801
            } else {
                0
            };
            let md = a.to_metadata();
            assert_eq!(meta_get(&md, META_FILE_TYPE), Some(name));
            let p = BlobProperties {
                content_length: 0,
                metadata: md.clone(),
                ..Default::default()
            };
            let b = Attr::from_blob(&p, &d);
            assert_eq!(b.kind, kind);
            assert_eq!((b.perm, b.uid, b.gid, b.rdev), (0o640, 7, 8, a.rdev));
            assert_eq!((b.atime, b.mtime, b.ctime), (a.atime, a.mtime, a.ctime));
            // A blob with content keeps being a readable file whatever its
            // metadata says.
            let p = BlobProperties {
                content_length: 3,
                metadata: md,
                ..Default::default()
            };
            assert_eq!(Attr::from_blob(&p, &d).kind, Kind::File);
        }
        assert_eq!(Kind::from_mode(libc::S_IFIFO | 0o644), Some(Kind::Fifo));
        assert_eq!(Kind::from_mode(libc::S_IFSOCK), Some(Kind::Socket));
        assert_eq!(Kind::from_mode(0o170000), None);
    }

    #[test]
    fn times_are_kept_exactly_including_64_bit_and_pre_epoch() {
        for (secs, nanos) in [
            (0i64, 0u32),
            (1_900_000_000, 1),
            (2_147_483_648, 0),
            (4_294_967_296, 999_999_999),
            (-1, 0),
            (-2, 750_000_000),
        ] {
            let t = if secs >= 0 {
                UNIX_EPOCH + Duration::new(secs as u64, nanos)
            } else {
                UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                    + Duration::from_nanos(nanos as u64)
            };
            assert_eq!(parse_time(&format_time(t)), Some(t), "{secs}.{nanos}");
        }
        // -0.25 s: floored seconds, forward nanoseconds.
        let t = UNIX_EPOCH - Duration::from_millis(250);
        assert_eq!(format_time(t), "-1.750000000");
        assert_eq!(parse_time("1.5x"), None);
        assert_eq!(parse_time("1.0123456789"), None);
    }

    #[test]
    fn atime_and_ctime_are_independent_of_mtime() {
        let mut a = Attr::new(Kind::File, 0o644, 0, 0);
        a.atime = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        a.mtime = UNIX_EPOCH + Duration::from_secs(1_950_000_000);
        a.ctime = UNIX_EPOCH + Duration::new(1_960_000_000, 5);
        let lm = UNIX_EPOCH + Duration::from_secs(1_000);
        let p = BlobProperties {
            metadata: a.to_metadata(),
            last_modified: Some(lm),
            ..Default::default()
        };
        let b = Attr::from_blob(&p, &AttrDefaults::default());
        assert_eq!((b.atime, b.mtime, b.ctime), (a.atime, a.mtime, a.ctime));
        // Blobs written before atime/ctime were stored: atime is mtime and
        // ctime the blob's Last-Modified.
        let mut md = Metadata::new();
        md.insert(META_MTIME.into(), "1950000000.0".into());
        let p = BlobProperties {
            metadata: md,
            last_modified: Some(lm),
            ..Default::default()
        };
        let c = Attr::from_blob(&p, &AttrDefaults::default());
        assert_eq!((c.atime, c.mtime, c.ctime), (a.mtime, a.mtime, lm));
    }
}
