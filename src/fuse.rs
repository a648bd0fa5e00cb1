//! Thin fuser adapter: translate kernel requests into calls on the fs core
//! and its results into replies. No callback blocks a FUSE thread on the
//! network: a request that may need the service becomes a task on the tokio
//! runtime, which replies when done. Those the core can answer from memory
//! (its `*_cached`/`*_now` methods: a fresh lookup or getattr, a read-only
//! open, a close with nothing to store, a create) are answered in the
//! callback itself: handing them to a task and back cost more than the
//! work (context switches between FUSE and tokio threads were the largest
//! item in the profile of `xargs touch`, docs/PERFORMANCE.md).

use crate::fs::attr::{Attr, Kind};
use crate::fs::{Fs, FsError, SetAttr};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The extended attribute that shows a file's key hash.
pub const XATTR_KEY_SHA256: &str = "user.cpkfs.key_sha256";
/// The virtual extended attribute of the mount's root that holds the mount's
/// live counters as JSON (`cpkfs stats` reads it; docs/SEMANTICS.md says why
/// an attribute rather than a socket). Not listed by listxattr, so tools that
/// copy attributes (`cp -a`, `rsync -X`) never copy it.
pub const XATTR_STATS: &str = "user.cpkfs.stats";

pub struct FuseAdapter {
    fs: Arc<Fs>,
    rt: tokio::runtime::Handle,
    ttl: Duration,
}

impl FuseAdapter {
    pub fn new(fs: Arc<Fs>, rt: tokio::runtime::Handle) -> Self {
        let ttl = fs.config().attr_ttl;
        FuseAdapter { fs, rt, ttl }
    }

    /// Run `work` on the runtime and answer with an empty reply or its errno.
    fn reply_empty<F>(&self, op: &'static str, at: At, reply: ReplyEmpty, work: F)
    where
        F: std::future::Future<Output = Result<(), FsError>> + Send + 'static,
    {
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match work.await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&fs, op, at, &e)),
            }
        });
    }

    /// Answer now with an empty reply or the errno of `res`.
    fn reply_now(&self, op: &'static str, at: At, reply: ReplyEmpty, res: Result<(), FsError>) {
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&self.fs, op, at, &e)),
        }
    }

    /// Run `work` on the runtime and answer with the entry or its errno.
    fn reply_entry<F>(&self, op: &'static str, at: At, reply: ReplyEntry, work: F)
    where
        F: std::future::Future<Output = Result<crate::fs::Entry, FsError>> + Send + 'static,
    {
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match work.await {
                Ok(e) => give_entry(&fs, reply, &ttl, &e),
                Err(e) => reply.error(errno(&fs, op, at, &e)),
            }
        });
    }

    /// Count one call of `op` (the counters `cpkfs stats` shows).
    fn count(&self, op: &'static str) {
        self.fs.stats().count_op(op);
    }
}

/// What a failed operation was about: an inode, or a name in a directory.
/// Resolved to a path only when the error is worth listing.
enum At {
    Ino(u64),
    Entry(u64, String),
}

impl At {
    fn path(&self, fs: &Fs) -> Option<String> {
        match self {
            At::Ino(i) => fs.path_for(*i),
            At::Entry(p, n) => fs.path_for(*p).map(|d| {
                if d.is_empty() {
                    n.clone()
                } else {
                    format!("{d}/{n}")
                }
            }),
        }
    }
}

/// Answer with entry `e`, counted first: the kernel holds it from the reply
/// until its FORGET.
fn give_entry(fs: &Fs, reply: ReplyEntry, ttl: &Duration, e: &crate::fs::Entry) {
    fs.remember(e.ino);
    reply.entry(ttl, &file_attr(e.ino, &e.attr), Generation(0));
}

fn file_type(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Socket => FileType::Socket,
    }
}

fn file_attr(ino: u64, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.atime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: file_type(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        // Large I/O per syscall: cp and friends size their buffers by it.
        blksize: 1024 * 1024,
        flags: 0,
    }
}

/// Log a failed operation once, with its cause, count it for `cpkfs stats`
/// and turn it into an errno.
fn errno(fs: &Fs, op: &str, at: At, e: &FsError) -> Errno {
    let path = if e.is_quiet() {
        tracing::debug!(op, error = %e, "operation failed");
        None
    } else {
        tracing::warn!(op, error = %e, "operation failed");
        at.path(fs)
    };
    fs.stats()
        .record_error(op, path.as_deref(), fs.client().container(), e);
    Errno::from_i32(e.errno())
}

/// Extended attribute namespaces this filesystem has no handler for: the
/// kernel's own (`security.*`: SELinux/SMACK labels, capabilities; `system.*`:
/// POSIX ACLs) and `trusted.*`. Only `user.*` names exist here.
fn name_is_unsupported_namespace(name: &OsStr) -> bool {
    let n = name.as_encoded_bytes();
    n.starts_with(b"security.") || n.starts_with(b"system.") || n.starts_with(b"trusted.")
}

fn time_or_now(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn name_str(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_string).ok_or(Errno::EINVAL)
}

macro_rules! name_or_reply {
    ($name:expr, $reply:expr) => {
        match name_str($name) {
            Ok(n) => n,
            Err(e) => return $reply.error(e),
        }
    };
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.add_capabilities(
            // Always readdirplus (no READDIRPLUS_AUTO): a listing brings
            // every entry's attributes at no extra cost, while plain
            // readdir makes `ls -l` and `find` send a LOOKUP per entry.
            InitFlags::FUSE_DO_READDIRPLUS
                | InitFlags::FUSE_PARALLEL_DIROPS
                | InitFlags::FUSE_ASYNC_READ
                | InitFlags::FUSE_BIG_WRITES,
        );
        let _ = config.set_max_write(1024 * 1024);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.count("lookup");
        let name = name_or_reply!(name, reply);
        let at = At::Entry(parent.0, name.clone());
        match self.fs.lookup_cached(parent.0, &name) {
            Some(Ok(e)) => return give_entry(&self.fs, reply, &self.ttl, &e),
            Some(Err(e)) => return reply.error(errno(&self.fs, "lookup", at, &e)),
            None => {}
        }
        let fs = self.fs.clone();
        self.reply_entry("lookup", at, reply, async move {
            fs.lookup(parent.0, &name).await
        });
    }

    // BATCH_FORGET comes here too (fuser's default; its ForgetOne type is
    // not public in 0.18).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.count("getattr");
        match self.fs.getattr_cached(ino.0) {
            Some(Ok(e)) => return reply.attr(&self.ttl, &file_attr(e.ino, &e.attr)),
            Some(Err(e)) => return reply.error(errno(&self.fs, "getattr", At::Ino(ino.0), &e)),
            None => {}
        }
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.getattr(ino.0).await {
                Ok(e) => reply.attr(&ttl, &file_attr(e.ino, &e.attr)),
                Err(e) => reply.error(errno(&fs, "getattr", At::Ino(ino.0), &e)),
            }
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.count("setattr");
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            mtime: mtime.map(time_or_now),
            atime: atime.map(time_or_now),
        };
        match self.fs.setattr_now(ino.0, set) {
            Some(Ok(e)) => return reply.attr(&self.ttl, &file_attr(e.ino, &e.attr)),
            Some(Err(e)) => return reply.error(errno(&self.fs, "setattr", At::Ino(ino.0), &e)),
            None => {}
        }
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.setattr(ino.0, set).await {
                Ok(e) => reply.attr(&ttl, &file_attr(e.ino, &e.attr)),
                Err(e) => reply.error(errno(&fs, "setattr", At::Ino(ino.0), &e)),
            }
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.count("readlink");
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readlink(ino.0).await {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(errno(&fs, "readlink", At::Ino(ino.0), &e)),
            }
        });
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.count("mknod");
        let name = name_or_reply!(name, reply);
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        let (uid, gid) = (req.uid(), req.gid());
        let at = At::Entry(parent.0, name.clone());
        match Kind::from_mode(mode) {
            Some(Kind::File) => {}
            Some(kind) if kind.is_special() => {
                return self.reply_entry("mknod", at, reply, async move {
                    fs.mknod(parent.0, &name, kind, mode & !umask, rdev, uid, gid)
                        .await
                });
            }
            _ => return reply.error(Errno::EINVAL),
        }
        self.rt.spawn(async move {
            let res = async {
                let (e, fh) = fs.create(parent.0, &name, mode & !umask, uid, gid).await?;
                fs.release(e.ino, fh).await?;
                Ok::<_, FsError>(e)
            }
            .await;
            match res {
                Ok(e) => give_entry(&fs, reply, &ttl, &e),
                Err(e) => reply.error(errno(&fs, "mknod", at, &e)),
            }
        });
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.count("mkdir");
        let name = name_or_reply!(name, reply);
        let fs = self.fs.clone();
        let (uid, gid) = (req.uid(), req.gid());
        let at = At::Entry(parent.0, name.clone());
        self.reply_entry("mkdir", at, reply, async move {
            fs.mkdir(parent.0, &name, mode & !umask, uid, gid).await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count("unlink");
        let name = name_or_reply!(name, reply);
        let fs = self.fs.clone();
        self.reply_empty(
            "unlink",
            At::Entry(parent.0, name.clone()),
            reply,
            async move { fs.unlink(parent.0, &name).await },
        );
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.count("rmdir");
        let name = name_or_reply!(name, reply);
        let fs = self.fs.clone();
        self.reply_empty(
            "rmdir",
            At::Entry(parent.0, name.clone()),
            reply,
            async move { fs.rmdir(parent.0, &name).await },
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.count("symlink");
        let name = name_or_reply!(link_name, reply);
        let Some(target) = target.to_str().map(str::to_string) else {
            return reply.error(Errno::EINVAL);
        };
        let fs = self.fs.clone();
        let (uid, gid) = (req.uid(), req.gid());
        let at = At::Entry(parent.0, name.clone());
        self.reply_entry("symlink", at, reply, async move {
            fs.symlink(parent.0, &name, &target, uid, gid).await
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.count("rename");
        let name = name_or_reply!(name, reply);
        let newname = name_or_reply!(newname, reply);
        if flags.intersects(!RenameFlags::RENAME_NOREPLACE) {
            // RENAME_EXCHANGE / WHITEOUT cannot be done atomically on blobs.
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let fs = self.fs.clone();
        let at = At::Entry(parent.0, name.clone());
        self.rt.spawn(async move {
            match fs
                .rename(parent.0, &name, newparent.0, &newname, noreplace)
                .await
            {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&fs, "rename", at, &e)),
            }
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // Blob storage has no hard links.
        self.count("link");
        reply.error(Errno::EPERM);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.count("open");
        let acc = flags.0 & libc::O_ACCMODE;
        let write = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let trunc = flags.0 & libc::O_TRUNC != 0;
        match self.fs.open_cached(ino.0, write) {
            Some(Ok(fh)) => return reply.opened(FileHandle(fh), FopenFlags::empty()),
            Some(Err(e)) => return reply.error(errno(&self.fs, "open", At::Ino(ino.0), &e)),
            None => {}
        }
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.open(ino.0, write, trunc).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(&fs, "open", At::Ino(ino.0), &e)),
            }
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.count("read");
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.read(ino.0, fh.0, offset, size).await {
                Ok(b) => {
                    fs.stats().add_read(b.len() as u64);
                    reply.data(&b)
                }
                Err(e) => reply.error(errno(&fs, "read", At::Ino(ino.0), &e)),
            }
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _wf: WriteFlags,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // Appending into a block buffer with room needs no I/O: do it here,
        // from the kernel's buffer, saving a copy and a task per write.
        self.count("write");
        if let Some(n) = self.fs.try_write_now(ino.0, fh.0, offset, data) {
            self.fs.stats().add_written(n as u64);
            return reply.written(n);
        }
        let fs = self.fs.clone();
        let data = data.to_vec();
        self.rt.spawn(async move {
            match fs.write(ino.0, fh.0, offset, &data).await {
                Ok(n) => {
                    fs.stats().add_written(n as u64);
                    reply.written(n)
                }
                Err(e) => reply.error(errno(&fs, "write", At::Ino(ino.0), &e)),
            }
        });
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.count("flush");
        if let Some(res) = self.fs.flush_cached(ino.0, fh.0) {
            return self.reply_now("flush", At::Ino(ino.0), reply, res);
        }
        let fs = self.fs.clone();
        self.reply_empty("flush", At::Ino(ino.0), reply, async move {
            fs.flush(ino.0, fh.0).await
        });
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.count("release");
        if let Some(res) = self.fs.release_now(ino.0, fh.0) {
            return self.reply_now("release", At::Ino(ino.0), reply, res);
        }
        let fs = self.fs.clone();
        self.reply_empty("release", At::Ino(ino.0), reply, async move {
            fs.release(ino.0, fh.0).await
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.count("fsync");
        let fs = self.fs.clone();
        self.reply_empty("fsync", At::Ino(ino.0), reply, async move {
            fs.fsync(ino.0, fh.0).await
        });
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.count("fallocate");
        let fs = self.fs.clone();
        self.reply_empty("fallocate", At::Ino(ino.0), reply, async move {
            fs.fallocate(ino.0, fh.0, offset, length, mode).await
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        self.count("copy_file_range");
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs
                .copy_file_range(
                    ino_in.0, fh_in.0, offset_in, ino_out.0, fh_out.0, offset_out, len,
                )
                .await
            {
                Ok(n) => {
                    fs.stats().add_written(n as u64);
                    reply.written(n)
                }
                Err(e) => reply.error(errno(&fs, "copy_file_range", At::Ino(ino_out.0), &e)),
            }
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.count("opendir");
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(&self.fs, "opendir", At::Ino(ino.0), &e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.count("readdir");
        let fs = self.fs.clone();
        self.rt.spawn(async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for e in entries {
                        let kind = file_type(e.attr.kind);
                        if reply.add(INodeNo(e.ino), e.next_offset, kind, &e.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&fs, "readdir", At::Ino(ino.0), &e)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.count("readdirplus");
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        self.rt.spawn(async move {
            match fs.readdir(ino.0, fh.0, offset).await {
                Ok(entries) => {
                    for e in entries {
                        // The kernel takes a lookup of every entry but `.`
                        // and `..`; counted before it can forget it.
                        let counted = e.name != "." && e.name != "..";
                        if counted {
                            fs.remember(e.ino);
                        }
                        let full = reply.add(
                            INodeNo(e.ino),
                            e.next_offset,
                            &e.name,
                            &ttl,
                            &file_attr(e.ino, &e.attr),
                            Generation(0),
                        );
                        if full {
                            // Not sent: the next readdirplus brings it.
                            if counted {
                                fs.forget(e.ino, 1);
                            }
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(errno(&fs, "readdirplus", At::Ino(ino.0), &e)),
            }
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.count("releasedir");
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Directory operations are committed when they return.
        self.count("fsyncdir");
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.count("statfs");
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.count("getxattr");
        let value = if name == XATTR_STATS && ino.0 == crate::fs::inode::ROOT_INO {
            // Built from counters and in-memory state only: no request.
            match serde_json::to_vec(&self.fs.stats_snapshot()) {
                Ok(v) => v,
                Err(_) => return reply.error(Errno::EIO),
            }
        } else if name == XATTR_KEY_SHA256 {
            match self.fs.key_sha256_of(ino.0) {
                Ok(Some(h)) => h.into_bytes(),
                Ok(None) => b"none (not encrypted with a customer-provided key)".to_vec(),
                Err(e) => return reply.error(errno(&self.fs, "getxattr", At::Ino(ino.0), &e)),
            }
        } else if name_is_unsupported_namespace(name) {
            // No security labels or POSIX ACLs here: say "not supported",
            // not "no such attribute". `ls -l` then stops asking (coreutils
            // remembers ENOTSUP per device) instead of sending two
            // GETXATTRs per file listed.
            return reply.error(Errno::from_i32(libc::EOPNOTSUPP));
        } else {
            return reply.error(Errno::from_i32(libc::ENODATA));
        };
        if size == 0 {
            reply.size(value.len() as u32);
        } else if (size as usize) < value.len() {
            reply.error(Errno::from_i32(libc::ERANGE));
        } else {
            reply.data(&value);
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.count("listxattr");
        let data = format!("{XATTR_KEY_SHA256}\0");
        if size == 0 {
            reply.size(data.len() as u32);
        } else if (size as usize) < data.len() {
            reply.error(Errno::from_i32(libc::ERANGE));
        } else {
            reply.data(data.as_bytes());
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.count("setxattr");
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.count("removexattr");
        reply.error(Errno::from_i32(libc::ENOTSUP));
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permission checks are the kernel's (mounted with default_permissions).
        self.count("access");
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        self.count("create");
        let name = name_or_reply!(name, reply);
        let (fs, ttl) = (self.fs.clone(), self.ttl);
        let (uid, gid) = (req.uid(), req.gid());
        let at = At::Entry(parent.0, name.clone());
        let created = move |reply: ReplyCreate,
                            res: Result<(crate::fs::Entry, u64), FsError>,
                            fs: &Fs,
                            at| match res {
            Ok((e, fh)) => {
                fs.remember(e.ino);
                reply.created(
                    &ttl,
                    &file_attr(e.ino, &e.attr),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => reply.error(errno(fs, "create", at, &e)),
        };
        if let Some(res) = fs.create_now(parent.0, &name, mode & !umask, uid, gid) {
            return created(reply, res, &fs, at);
        }
        self.rt.spawn(async move {
            let res = fs.create(parent.0, &name, mode & !umask, uid, gid).await;
            created(reply, res, &fs, at)
        });
    }
}
