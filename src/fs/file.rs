//! Open-file ops of the core: open/create (writers get a staged copy; no fetch with
//! O_TRUNC or for new files), write into the staged copy, flush/fsync/release (write-back,
//! see `writeback`), and the life cycle of the shared `OpenFile` state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use super::handle::{FileMeta, Handle, OpenFile};
use super::writeback::retry_pause;
use super::{attr, whole_seconds, Created, Entry, Filesystem, InodeNo, Opened};
use crate::error::{FsError, FsResult};
use crate::remote::{FileKind, RemoteFs, RemotePath, Stat};
use crate::staging::{BaseVersion, StagedFile, StagedState};

impl<R: RemoteFs> Filesystem<R> {
    /// The shared state of `ino`, created if needed, with one more handle counted.
    pub(super) fn acquire_file(
        &self,
        ino: InodeNo,
        path: &RemotePath,
        base: &Stat,
    ) -> Arc<OpenFile> {
        let mut files = self.files.lock();
        let f = files.entry(ino).or_insert_with(|| {
            Arc::new(OpenFile {
                ino,
                meta: parking_lot::Mutex::new(FileMeta {
                    path: path.clone(),
                    handles: 0,
                    staged_size: None,
                    dirty: false,
                    new: false,
                    unlinked: false,
                    pending_mode: None,
                    pending_mtime: None,
                    base: base.clone(),
                    local_mtime: None,
                    upload_failures: 0,
                }),
                staged: tokio::sync::Mutex::new(None),
            })
        });
        f.meta.lock().handles += 1;
        f.clone()
    }

    /// One handle less on `file`; the last one of a clean file drops its staged copy.
    pub(super) async fn release_file(&self, file: &Arc<OpenFile>) {
        {
            let mut m = file.meta.lock();
            m.handles = m.handles.saturating_sub(1);
        }
        self.drop_if_idle(file).await;
    }

    /// One handle less on `file`; the last one out sends changes nobody sent yet (a
    /// truncate by path while the file's last handle was closing), then drops the copy.
    pub(super) async fn release_file_sending(&self, file: &Arc<OpenFile>) -> FsResult<()> {
        let last_dirty = {
            let mut m = file.meta.lock();
            m.handles = m.handles.saturating_sub(1);
            m.handles == 0 && m.dirty && !m.unlinked
        };
        let queued = self.writeback.lock().contains_key(&file.ino);
        let sent = if last_dirty && !queued {
            self.write_back(file).await
        } else {
            Ok(())
        };
        self.drop_if_idle(file).await;
        sent
    }

    /// Drops the staged copy and the shared state of a file nobody has open and whose
    /// changes are on the remote (or unlinked).
    pub(super) async fn drop_if_idle(&self, file: &Arc<OpenFile>) {
        let mut staged = file.staged.lock().await;
        let (idle, keep) = {
            let m = file.meta.lock();
            (m.handles == 0, m.dirty && !m.unlinked)
        };
        if !idle || keep {
            if idle && !self.writeback.lock().contains_key(&file.ino) {
                tracing::warn!(path = %file.meta.lock().path, "file closed with unsent changes; kept staged");
            }
            return;
        }
        if let Some(sf) = staged.take() {
            if let Err(e) = sf.discard() {
                tracing::warn!("could not remove a clean staged copy: {e}");
            }
        }
        file.meta.lock().staged_size = None;
        let mut files = self.files.lock();
        if files.get(&file.ino).is_some_and(|f| Arc::ptr_eq(f, file))
            && file.meta.lock().handles == 0
        {
            files.remove(&file.ino);
            drop(files);
            self.inodes.drop_unused(file.ino);
        }
    }

    /// Makes sure `file` has a staged copy (fetching the content unless `truncate`).
    pub(super) async fn ensure_staged(
        &self,
        file: &OpenFile,
        staged: &mut Option<StagedFile>,
        truncate: bool,
    ) -> FsResult<()> {
        let (path, base, new) = {
            let m = file.meta.lock();
            (m.path.clone(), m.base.clone(), m.new)
        };
        if staged.is_none() {
            let sf = self.staging.create(&path)?;
            if !truncate && !new {
                if let Err(e) = self.fetch_into(&path, &base, &sf).await {
                    let _ = sf.discard();
                    return Err(e);
                }
            }
            let len = sf.len()?;
            *staged = Some(sf);
            file.meta.lock().staged_size = Some(len);
        }
        if truncate {
            if let Some(sf) = staged.as_ref() {
                sf.set_len(0)?;
                self.mark_dirty(file, sf, 0)?;
            }
        }
        Ok(())
    }

    /// Records a local change; the first one writes the manifest.
    pub(super) fn mark_dirty(&self, file: &OpenFile, sf: &StagedFile, size: u64) -> FsResult<()> {
        let first = {
            let mut m = file.meta.lock();
            // An unlinked file's writes are never sent: no manifest for `recover`.
            let first = !m.dirty && !m.unlinked;
            m.dirty = true;
            m.upload_failures = 0;
            m.staged_size = Some(size);
            m.local_mtime = Some(whole_seconds(SystemTime::now()));
            first
        };
        if first {
            let (new, base) = {
                let m = file.meta.lock();
                (m.new, m.base.clone())
            };
            sf.set_base((!new).then(|| BaseVersion::of(base.size, base.mtime)));
            sf.write_manifest(StagedState::Dirty, "", None, false)?;
        }
        self.opened_versions.lock().remove(&file.ino);
        Ok(())
    }

    /// `open`: revalidates expired attributes; writers get a staged copy (no fetch with
    /// O_TRUNC).
    pub async fn open(&self, ino: InodeNo, flags: i32) -> FsResult<Opened> {
        let path = self.path_of(ino)?;
        tracing::debug!(%path, flags = format_args!("{flags:#o}"), "open");
        let known = self
            .cache
            .attr_stale(&path)
            .map(|a| (a.stat.size, a.stat.mtime));
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = write && flags & libc::O_TRUNC != 0;
        // A writer that keeps the content (append, patch) starts from the remote's version
        // of now, not of up to a TTL ago (NFS's close-to-open): a change made on the remote
        // a moment before is not overwritten with the older content.
        let local = self
            .open_file_by_path(&path)
            .is_some_and(|f| f.meta.lock().is_local());
        let stat = if write && !truncate && !local {
            self.stat_path(&path).await?
        } else {
            self.revalidate(&path).await?
        };
        match stat.kind {
            FileKind::Dir => return Err(FsError::IsADirectory(path.to_string())),
            FileKind::File => {}
            _ => return Err(FsError::NotPermitted(format!("cannot open {path}"))),
        }
        let file = self.acquire_file(ino, &path, &stat);
        if !file.meta.lock().is_local() {
            file.meta.lock().base = stat.clone();
        }
        if write {
            let mut staged = file.staged.lock().await;
            if let Err(e) = self.ensure_staged(&file, &mut staged, truncate).await {
                drop(staged);
                self.release_file(&file).await;
                return Err(e);
            }
        }
        let version = (stat.size, stat.mtime);
        let dirty = file.meta.lock().dirty;
        let (keep_cache, changed) = {
            let mut versions = self.opened_versions.lock();
            let same = versions.get(&ino) == Some(&version) && !dirty;
            let changed = !dirty
                && (known.is_some_and(|k| k != version)
                    || versions.get(&ino).is_some_and(|v| *v != version));
            versions.insert(ino, version);
            (same && !write, changed)
        };
        let fh = self.handles.next_fh();
        self.handles.insert_file(Arc::new(Handle {
            fh,
            ino,
            file,
            write,
            append: flags & libc::O_APPEND != 0,
            wrote: AtomicBool::new(false),
            opener: std::sync::atomic::AtomicU32::new(0),
            version,
            small: tokio::sync::Mutex::new(None),
            reader: tokio::sync::Mutex::new(None),
        }));
        Ok(Opened {
            fh,
            keep_cache,
            changed,
        })
    }

    /// `create`: a new local file, created on the remote by its first upload.
    pub async fn create(
        &self,
        parent: InodeNo,
        name: &std::ffi::OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
    ) -> FsResult<Created> {
        let path = self.child(parent, name)?;
        self.settle_removals(&path).await;
        if flags & libc::O_EXCL != 0 && self.resolve(&path).await.is_ok() {
            return Err(FsError::Exists(path.to_string()));
        }
        let parent_path = self.path_of(parent)?;
        if let Some(parent_attr) = self.cache.attr(&parent_path) {
            if parent_attr.stat.kind != FileKind::Dir {
                return Err(FsError::NotADirectory(path.to_string()));
            }
        }
        // A directory removed on the remote (a shell still has it as its cwd): the file
        // could never be uploaded.
        if matches!(
            self.cache.lookup(&parent_path),
            crate::cache::Lookup::Absent
        ) {
            return Err(FsError::NotFound(parent_path.to_string()));
        }
        let perm = mode & !umask & 0o7777;
        let now = SystemTime::now();
        let stat = self.own_stat(FileKind::File, perm, 0, now);
        let entry: Entry = self.entry(&path, &stat);
        let ino = entry.attr.ino;
        let file = self.acquire_file(ino, &path, &stat);
        {
            let mut staged = file.staged.lock().await;
            {
                let mut m = file.meta.lock();
                m.path = path.clone();
                m.unlinked = false;
                if !m.dirty && staged.is_none() {
                    m.new = true;
                    m.base = stat.clone();
                    m.pending_mode = Some(perm);
                }
            }
            if let Err(e) = self.ensure_staged(&file, &mut staged, true).await {
                drop(staged);
                self.release_file(&file).await;
                return Err(e);
            }
        }
        self.cache.put_attr(&path, stat.clone(), None);
        self.parent_changed(&path, 0);
        let fh = self.handles.next_fh();
        self.handles.insert_file(Arc::new(Handle {
            fh,
            ino,
            file,
            write: true,
            append: flags & libc::O_APPEND != 0,
            wrote: AtomicBool::new(false),
            opener: std::sync::atomic::AtomicU32::new(0),
            version: (0, stat.mtime),
            small: tokio::sync::Mutex::new(None),
            reader: tokio::sync::Mutex::new(None),
        }));
        Ok(Created {
            entry,
            opened: Opened {
                fh,
                keep_cache: false,
                changed: false,
            },
        })
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.file(fh).ok_or(FsError::BadHandle(fh))
    }

    /// `write` into the staged copy (O_APPEND writes at its end).
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        if !h.write {
            return Err(FsError::BadAccess("not opened for writing".into()));
        }
        let staged = h.file.staged.lock().await;
        let sf = staged
            .as_ref()
            .ok_or_else(|| FsError::BadAccess("no staged copy".into()))?;
        let at = if h.append { sf.len()? } else { offset };
        sf.write_at(at, data)?;
        h.wrote.store(true, Ordering::Relaxed);
        let len = sf.len()?;
        self.mark_dirty(&h.file, sf, len)?;
        h.file.meta.lock().pending_mtime = None;
        Ok(data.len() as u32)
    }

    /// `flush` (every close of a descriptor): uploads the file when dirty and this handle
    /// wrote to it, so close() gets the upload's error. A handle that only truncated an
    /// existing file leaves the upload to `release` (shells `dup2` and close the first
    /// descriptor of `echo x > f` before writing: uploading there would first send an empty
    /// file). A new file is always sent, so `touch f` is on the remote when close returns.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        if !h.wrote.load(Ordering::Relaxed) && !h.file.meta.lock().new {
            return Ok(());
        }
        self.write_back(&h.file).await
    }

    /// Records which process opened `fh` (the kernel's pid of the open request).
    pub fn set_opener(&self, fh: u64, pid: u32) {
        if let Some(h) = self.handles.file(fh) {
            h.opener.store(tgid_of(pid), Ordering::Relaxed);
        }
    }

    /// `flush` as the kernel sends it, with the pid of the closing task. A close by another
    /// process does not upload: the kernel also flushes when a child that inherited the
    /// descriptor (fork) closes it at exec (O_CLOEXEC), which would send a half-written large
    /// file in the middle of a copy, and could deadlock a process that both writes to the
    /// mount and serves its remote. The writer's own close (or the release) uploads.
    pub async fn flush_by(&self, fh: u64, pid: u32) -> FsResult<()> {
        let h = self.handle(fh)?;
        let opener = h.opener.load(Ordering::Relaxed);
        if opener != 0 && pid != 0 && pid != opener && tgid_of(pid) != opener {
            tracing::debug!(
                fh,
                pid,
                opener,
                "flush by another process: upload left to the writer"
            );
            return Ok(());
        }
        self.flush(fh).await
    }

    /// `fsync`: the staged data is made durable on local disk, then uploaded; returns once
    /// the remote confirmed (a clean file is already on the remote).
    pub async fn fsync(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        self.writeback.lock().remove(&h.ino);
        self.upload(&h.file, true).await
    }

    /// `release`: uploads when still dirty, then drops the handle.
    pub async fn release(&self, fh: u64) -> FsResult<()> {
        let h = self.handles.remove_file(fh).ok_or(FsError::BadHandle(fh))?;
        let failed_unchanged = {
            let m = h.file.meta.lock();
            m.dirty && m.upload_failures > 0 && !m.unlinked
        };
        if failed_unchanged {
            if h.file.meta.lock().handles <= 1 {
                self.retry_later(&h.file);
            }
            self.release_file(&h.file).await;
            return Ok(());
        }
        match self.write_back(&h.file).await {
            Err(e) => {
                if h.file.meta.lock().handles <= 1 {
                    self.retry_later(&h.file);
                }
                self.release_file(&h.file).await;
                Err(e)
            }
            Ok(()) => {
                // Changes made between our write-back and now (a racing truncate by path) go
                // too.
                let sent = self.release_file_sending(&h.file).await;
                if sent.is_err() {
                    self.retry_later(&h.file);
                }
                sent
            }
        }
    }

    /// A closed file whose upload failed: nobody else will send it, so it is retried in the
    /// background until the remote takes it (or at unmount); the staged copy and its manifest
    /// stay meanwhile.
    pub(super) fn retry_later(&self, file: &Arc<OpenFile>) {
        let failures = {
            let m = file.meta.lock();
            if !m.dirty || m.unlinked {
                return;
            }
            m.upload_failures
        };
        let due = self.cache.now() + retry_pause(failures);
        self.writeback
            .lock()
            .entry(file.ino)
            .or_insert((file.clone(), due));
    }

    /// The kernel's attributes of `ino` now (used by the adapter after writes).
    pub fn attr_of(&self, ino: InodeNo, stat: &Stat) -> fuser::FileAttr {
        attr::to_file_attr(ino, stat, &self.ids)
    }
}

/// The thread-group id (process id) of task `pid`, from /proc; `pid` itself when unknown.
fn tgid_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(pid)
}
