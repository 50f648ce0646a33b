//! The FUSE adapter: `impl fuser::Filesystem` over the core, TokioAdapter pattern.
//!
//! Each method opens a span, copies its arguments into owned values, spawns the core call on
//! the tokio runtime (bounded by a semaphore of in-flight ops) and moves the reply into the
//! task. Nothing else lives here: no caching, no paths, no HTTP. A panicking task drops its
//! reply, which fuser answers with EIO; the panic hook logs it. `init` runs on the FUSE
//! thread and only negotiates capabilities.

use std::ffi::{OsStr, OsString};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    consts, FileAttr, FileType, KernelConfig, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow,
};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::error::{FsError, FsResult};
use crate::fs::{Attr, Entry, Filesystem, Looked, SetAttr};
use crate::remote::RemoteFs;

/// The adapter handed to fuser.
pub struct FuseAdapter<R: RemoteFs> {
    fs: Arc<Filesystem<R>>,
    rt: Handle,
    permits: Arc<Semaphore>,
    notifier: Arc<std::sync::OnceLock<fuser::Notifier>>,
}

impl<R: RemoteFs> FuseAdapter<R> {
    /// Serves `fs` on `rt` with at most `max_in_flight` ops at once.
    pub fn new(fs: Arc<Filesystem<R>>, rt: Handle, max_in_flight: usize) -> Self {
        FuseAdapter {
            fs,
            rt,
            permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
            notifier: Arc::default(),
        }
    }

    /// Where the mount puts the session's notifier once the session exists (cache
    /// invalidations sent to the kernel).
    pub fn notifier_slot(&self) -> Arc<std::sync::OnceLock<fuser::Notifier>> {
        self.notifier.clone()
    }

    /// The in-flight bound, to wait for running ops at unmount.
    pub fn permits(&self) -> Arc<Semaphore> {
        self.permits.clone()
    }

    fn spawn<F, Fut>(&self, op: &'static str, ino: u64, f: F)
    where
        F: FnOnce(Arc<Filesystem<R>>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let permits = self.permits.clone();
        let span = tracing::debug_span!("op", op, ino);
        let fut = f(self.fs.clone());
        self.rt.spawn(
            async move {
                let _permit = permits.acquire_owned().await;
                fut.await
            }
            .instrument(span),
        );
    }
}

/// Logs a failed op once, at the level its error chooses; returns the errno.
fn fail(op: &str, err: FsError) -> i32 {
    if err.is_expected() {
        tracing::debug!(op, "{err}");
    } else {
        tracing::warn!(op, "{err}");
    }
    err.errno()
}

/// A fuser reply answered with a core result: the value on success, the logged errno on
/// failure. One place for the `match` every op would otherwise repeat.
trait Answer<T> {
    fn answer(self, op: &str, result: FsResult<T>);
}

impl Answer<Entry> for ReplyEntry {
    fn answer(self, op: &str, result: FsResult<Entry>) {
        match result {
            Ok(e) => self.entry(&e.ttl, &e.attr, e.generation),
            Err(e) => self.error(fail(op, e)),
        }
    }
}

impl Answer<Attr> for ReplyAttr {
    fn answer(self, op: &str, result: FsResult<Attr>) {
        match result {
            Ok(a) => self.attr(&a.ttl, &a.attr),
            Err(e) => self.error(fail(op, e)),
        }
    }
}

impl Answer<()> for ReplyEmpty {
    fn answer(self, op: &str, result: FsResult<()>) {
        match result {
            Ok(()) => self.ok(),
            Err(e) => self.error(fail(op, e)),
        }
    }
}

impl<D: AsRef<[u8]>> Answer<D> for ReplyData {
    fn answer(self, op: &str, result: FsResult<D>) {
        match result {
            Ok(d) => self.data(d.as_ref()),
            Err(e) => self.error(fail(op, e)),
        }
    }
}

impl Answer<u32> for ReplyWrite {
    fn answer(self, op: &str, result: FsResult<u32>) {
        match result {
            Ok(n) => self.written(n),
            Err(e) => self.error(fail(op, e)),
        }
    }
}

fn negative_attr() -> FileAttr {
    FileAttr {
        ino: 0,
        size: 0,
        blocks: 0,
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

impl<R: RemoteFs> fuser::Filesystem for FuseAdapter<R> {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), i32> {
        // O_TRUNC arrives with open (no fetch of content about to be discarded);
        // readdirplus lets `ls -l` get all attributes from the one listing.
        let _ = config.add_capabilities(consts::FUSE_ATOMIC_O_TRUNC | consts::FUSE_DO_READDIRPLUS);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let name = name.to_owned();
        self.spawn("lookup", parent, |fs| async move {
            match fs.lookup(parent, &name).await {
                Ok(Looked::Found(e)) => reply.entry(&e.ttl, &e.attr, e.generation),
                Ok(Looked::Absent { ttl }) if !ttl.is_zero() => {
                    reply.entry(&ttl, &negative_attr(), 0)
                }
                Ok(Looked::Absent { .. }) => reply.error(FsError::NotFound(String::new()).errno()),
                Err(e) => reply.error(fail("lookup", e)),
            }
        });
    }

    fn forget(&mut self, _req: &Request<'_>, ino: u64, nlookup: u64) {
        self.fs.forget(ino, nlookup);
    }

    fn batch_forget(&mut self, _req: &Request<'_>, nodes: &[fuser::fuse_forget_one]) {
        for n in nodes {
            self.fs.forget(n.nodeid, n.nlookup);
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        self.spawn("getattr", ino, |fs| async move {
            reply.answer("getattr", fs.getattr(ino).await)
        });
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let req = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            fh,
        };
        self.spawn("setattr", ino, |fs| async move {
            reply.answer("setattr", fs.setattr(ino, req).await)
        });
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        self.spawn("readlink", ino, |fs| async move {
            reply.answer("readlink", fs.readlink(ino).await)
        });
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        self.spawn("mknod", parent, |fs| async move {
            reply.answer("mknod", fs.mknod(parent, &name, mode, umask).await)
        });
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = name.to_owned();
        self.spawn("mkdir", parent, |fs| async move {
            reply.answer("mkdir", fs.mkdir(parent, &name, mode, umask).await)
        });
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn("unlink", parent, |fs| async move {
            reply.answer("unlink", fs.unlink(parent, &name).await)
        });
    }

    fn rmdir(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let name = name.to_owned();
        self.spawn("rmdir", parent, |fs| async move {
            reply.answer("rmdir", fs.rmdir(parent, &name).await)
        });
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target): (OsString, PathBuf) = (link_name.to_owned(), target.to_owned());
        self.spawn("symlink", parent, |fs| async move {
            reply.answer("symlink", fs.symlink(parent, &name, &target).await)
        });
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name.to_owned(), newname.to_owned());
        self.spawn("rename", parent, |fs| async move {
            reply.answer(
                "rename",
                fs.rename(parent, &name, newparent, &newname, flags).await,
            )
        });
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _newparent: u64,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.spawn("link", ino, |fs| async move {
            reply.answer("link", fs.link().await)
        });
    }

    fn open(&mut self, req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let pid = req.pid();
        let notifier = self.notifier.clone();
        self.spawn("open", ino, |fs| async move {
            match fs.open(ino, flags).await {
                Ok(o) => {
                    fs.set_opener(o.fh, pid);
                    if o.changed {
                        // The kernel's size of the old version would cut reads short: drop
                        // its attributes (only), so the read past that size asks again.
                        if let Some(n) = notifier.get() {
                            if let Err(e) = n.inval_inode(ino, -1, 0) {
                                tracing::debug!(
                                    ino,
                                    "cannot invalidate the kernel's attributes: {e}"
                                );
                            }
                        }
                    }
                    let keep = if o.keep_cache {
                        consts::FOPEN_KEEP_CACHE
                    } else {
                        0
                    };
                    reply.opened(o.fh, keep)
                }
                Err(e) => reply.error(fail("open", e)),
            }
        });
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        self.spawn("read", ino, |fs| async move {
            reply.answer("read", fs.read(fh, offset.max(0) as u64, size).await)
        });
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.spawn("write", ino, |fs| async move {
            reply.answer("write", fs.write(fh, offset.max(0) as u64, &data).await)
        });
    }

    fn flush(&mut self, req: &Request<'_>, ino: u64, fh: u64, _lock_owner: u64, reply: ReplyEmpty) {
        let pid = req.pid();
        self.spawn("flush", ino, |fs| async move {
            reply.answer("flush", fs.flush_by(fh, pid).await)
        });
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("release", ino, |fs| async move {
            reply.answer("release", fs.release(fh).await)
        });
    }

    fn fsync(&mut self, _req: &Request<'_>, ino: u64, fh: u64, _datasync: bool, reply: ReplyEmpty) {
        self.spawn("fsync", ino, |fs| async move {
            reply.answer("fsync", fs.fsync(fh).await)
        });
    }

    fn opendir(&mut self, _req: &Request<'_>, ino: u64, _flags: i32, reply: ReplyOpen) {
        self.spawn("opendir", ino, |fs| async move {
            match fs.opendir(ino).await {
                Ok(o) => reply.opened(o.fh, 0),
                Err(e) => reply.error(fail("opendir", e)),
            }
        });
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn("readdir", ino, |fs| async move {
            match fs.readdir(ino, fh, offset).await {
                Ok(items) => {
                    for it in items {
                        if reply.add(it.ino, it.offset, it.kind, &it.name) {
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(fail("readdir", e)),
            }
        });
    }

    fn readdirplus(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        mut reply: ReplyDirectoryPlus,
    ) {
        // fuser does not pass the buffer size; this is what the kernel asks for (one page
        // per request without FUSE_MAX_PAGES negotiated for readdir).
        const READDIR_BUF: u32 = 4096;
        self.spawn("readdirplus", ino, |fs| async move {
            match fs.readdirplus(ino, fh, offset, READDIR_BUF).await {
                Ok(items) => {
                    for it in items {
                        let Some(e) = it.entry else { continue };
                        if reply.add(it.ino, it.offset, &it.name, &e.ttl, &e.attr, e.generation) {
                            tracing::warn!("readdirplus buffer full before the computed budget");
                            break;
                        }
                    }
                    reply.ok()
                }
                Err(e) => reply.error(fail("readdirplus", e)),
            }
        });
    }

    fn releasedir(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh);
        reply.ok();
    }

    fn fsyncdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn("fsyncdir", ino, |fs| async move {
            reply.answer("fsyncdir", fs.fsyncdir(ino).await)
        });
    }

    // Answered here, quietly, rather than by fuser's defaults (which log a warning each
    // time): Python's open() asks isatty (TCGETS) on every file.

    fn ioctl(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _flags: u32,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(libc::ENOTTY);
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _length: i64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // Callers (posix_fallocate, rsync --preallocate) fall back to writing.
        reply.error(libc::EOPNOTSUPP);
    }

    fn lseek(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _whence: i32,
        reply: ReplyLseek,
    ) {
        // The kernel then seeks itself (SEEK_DATA/SEEK_HOLE: no holes).
        reply.error(libc::ENOSYS);
    }

    fn copy_file_range(
        &mut self,
        _req: &Request<'_>,
        _ino_in: u64,
        _fh_in: u64,
        _offset_in: i64,
        _ino_out: u64,
        _fh_out: u64,
        _offset_out: i64,
        _len: u64,
        _flags: u32,
        reply: ReplyWrite,
    ) {
        // The kernel falls back to reading and writing.
        reply.error(libc::ENOSYS);
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        reply.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }

    fn setxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(self.fs.xattr().err().map_or(0, |e| e.errno()));
    }

    fn getxattr(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(self.fs.xattr().err().map_or(0, |e| e.errno()));
    }

    fn listxattr(&mut self, _req: &Request<'_>, _ino: u64, size: u32, reply: ReplyXattr) {
        // No attributes: an empty list, so `ls -l`, `cp -a` and `rsync -X` carry on.
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn removexattr(&mut self, _req: &Request<'_>, _ino: u64, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(self.fs.xattr().err().map_or(0, |e| e.errno()));
    }

    fn create(
        &mut self,
        req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = name.to_owned();
        let pid = req.pid();
        self.spawn("create", parent, |fs| async move {
            match fs.create(parent, &name, mode, umask, flags).await {
                Ok(c) => {
                    fs.set_opener(c.opened.fh, pid);
                    reply.created(
                        &c.entry.ttl,
                        &c.entry.attr,
                        c.entry.generation,
                        c.opened.fh,
                        0,
                    )
                }
                Err(e) => reply.error(fail("create", e)),
            }
        });
    }

    fn destroy(&mut self) {
        tracing::debug!("FUSE session ends");
    }
}

/// How long `mount.rs` waits for running ops to finish after the session ended.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
