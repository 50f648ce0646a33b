//! File content ops of the core: open/create, read (small files whole from the content
//! cache, large ones with ranged reads and read-ahead), write into the staged copy, and the
//! write-back on flush/fsync/release with its upload routes; setattr (chmod, chown,
//! truncate, utimens).
//!
//! Upload routes, chosen per file at upload time:
//! - empty file, or a pending mtime and the content fits an archive → `put_archive`
//!   (content, mode and mtime in one go; also what makes `touch`, `tar x`, `cp -p` and a
//!   second `rsync -a` work);
//! - up to `direct_upload_limit` → `upload`, then `stat` (plus `chmod` if the mode we want
//!   differs from what the remote gave a new file);
//! - larger → `upload_large`, then `stat`; a pending mtime is kept in the session's cache
//!   only (the API cannot set it on large files).
//!
//! Mode and mtime set on a dirty file are kept pending and sent with its upload, so
//! write + futimens + fchmod + close costs one archive upload. The upload itself runs on
//! flush/fsync/release and close waits for it (close-to-open). On failure the staged copy
//! and its manifest stay, the path is logged and the error goes to close()/fsync().

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fuser::TimeOrNow;
use tracing::Instrument;

use super::handle::{FileMeta, Handle, LargeReader, OpenFile};
use super::{attr, whole_seconds, Attr, Created, Entry, Filesystem, InodeNo, Opened};
use crate::error::{FsError, FsResult};
use crate::remote::{
    ArchiveMember, ArchiveMemberKind, FileKind, RemoteFs, RemotePath, StagedObject, Stat,
};
use crate::staging::{StagedFile, StagedState};

/// Room for tar headers and end blocks around one member.
const ARCHIVE_OVERHEAD: u64 = 4096;
/// First read-ahead window of a sequential reader, and its cap.
const READAHEAD_MIN: u64 = 1 << 20;
const READAHEAD_MAX: u64 = 64 << 20;
/// Ranged reads in flight for one window.
const RANGES_IN_FLIGHT: u64 = 4;
/// Batches of delayed uploads sent at once.
const WRITEBACK_PARALLEL: usize = 4;
/// Chunk of a large file fetched into a staged copy.
const FETCH_CHUNK: u64 = 8 << 20;
/// A staged object is not used when it expires sooner than this.
const OBJECT_MARGIN: Duration = Duration::from_secs(60);

/// The attribute changes of one `setattr`.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    pub fh: Option<u64>,
}

/// Whether the archive route was refused in a way a plain call may work around (not a
/// transient failure, not quota or permissions).
pub(super) fn archive_refused(e: &FsError) -> bool {
    matches!(
        e,
        FsError::Remote(
            crate::remote::RemoteError::InvalidArgument(_)
                | crate::remote::RemoteError::Unsupported(_)
                | crate::remote::RemoteError::Protocol(_)
                | crate::remote::RemoteError::TooLarge(_)
        )
    )
}

fn to_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

fn slice(data: &Bytes, offset: u64, size: u32) -> Bytes {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data.slice(start..end)
}

impl<R: RemoteFs> Filesystem<R> {
    fn archive_fits(&self, size: u64) -> bool {
        size + ARCHIVE_OVERHEAD <= self.remote.capabilities().direct_upload_limit
    }

    fn is_small(&self, size: u64) -> bool {
        size <= self.remote.capabilities().direct_download_limit
    }

    /// The shared state of `ino`, created if needed, with one more handle counted.
    fn acquire_file(&self, ino: InodeNo, path: &RemotePath, base: &Stat) -> Arc<OpenFile> {
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
                }),
                staged: tokio::sync::Mutex::new(None),
            })
        });
        f.meta.lock().handles += 1;
        f.clone()
    }

    /// One handle less on `file`; the last one of a clean file drops its staged copy.
    async fn release_file(&self, file: &Arc<OpenFile>) {
        {
            let mut m = file.meta.lock();
            m.handles = m.handles.saturating_sub(1);
        }
        self.drop_if_idle(file).await;
    }

    /// Drops the staged copy and the shared state of a file nobody has open and whose
    /// changes are on the remote (or unlinked).
    async fn drop_if_idle(&self, file: &Arc<OpenFile>) {
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

    /// flush/release write-back: uploads now, or (with a write-back delay) queues a small
    /// new file so the metadata ops that usually follow (utimens, chmod, rename of
    /// rsync/tar/cp -p) join its one archive upload.
    async fn write_back(&self, file: &Arc<OpenFile>) -> FsResult<()> {
        if !self.writeback_delay.is_zero() {
            let defer = {
                let m = file.meta.lock();
                m.new
                    && m.dirty
                    && !m.unlinked
                    && m.staged_size.is_some_and(|s| self.archive_fits(s))
            };
            if defer {
                let due = self.cache.now() + self.writeback_delay;
                self.writeback
                    .lock()
                    .entry(file.ino)
                    .or_insert((file.clone(), due));
                return Ok(());
            }
        }
        self.upload(file, false).await
    }

    /// Uploads queued files whose delay ran out (the mount calls this periodically; tests
    /// call it after advancing the clock). A failed upload stays staged and is retried
    /// after a longer pause.
    pub async fn writeback_tick(&self) {
        let now = self.cache.now();
        let due: Vec<Arc<OpenFile>> = {
            let mut q = self.writeback.lock();
            let ready: Vec<InodeNo> = q
                .iter()
                .filter(|(_, (_, at))| *at <= now)
                .map(|(ino, _)| *ino)
                .collect();
            ready
                .into_iter()
                .filter_map(|ino| q.remove(&ino).map(|(f, _)| f))
                .collect()
        };
        if due.is_empty() {
            return;
        }
        // Small files of one directory travel together in one archive (within the direct
        // upload limit); batches of different directories run side by side.
        let limit = self.remote.capabilities().direct_upload_limit;
        let mut groups: std::collections::BTreeMap<RemotePath, Vec<Arc<OpenFile>>> =
            Default::default();
        for f in due {
            let parent = f.meta.lock().path.parent().unwrap_or_else(RemotePath::root);
            groups.entry(parent).or_default().push(f);
        }
        let mut batches: Vec<(RemotePath, Vec<Arc<OpenFile>>)> = Vec::new();
        for (dir, mut files) in groups {
            files.sort_by_key(|f| f.ino);
            let mut batch: Vec<Arc<OpenFile>> = Vec::new();
            let mut used = 0;
            for f in files {
                let size = f.meta.lock().staged_size.unwrap_or(0) + ARCHIVE_OVERHEAD;
                if !batch.is_empty() && used + size > limit {
                    batches.push((dir.clone(), std::mem::take(&mut batch)));
                    used = 0;
                }
                used += size;
                batch.push(f);
            }
            if !batch.is_empty() {
                batches.push((dir, batch));
            }
        }
        use futures_util::StreamExt;
        futures_util::stream::iter(batches)
            .for_each_concurrent(WRITEBACK_PARALLEL, |(dir, files)| async move {
                let failed = if files.len() == 1 {
                    match self.upload(&files[0], false).await {
                        Ok(()) => Vec::new(),
                        Err(e) => {
                            tracing::warn!("delayed upload failed, retrying in 30 s: {e}");
                            files.clone()
                        }
                    }
                } else {
                    self.upload_batch(&dir, &files).await
                };
                for f in &failed {
                    let retry = self.cache.now() + Duration::from_secs(30);
                    self.writeback.lock().insert(f.ino, (f.clone(), retry));
                }
                for f in &files {
                    if !failed.iter().any(|x| Arc::ptr_eq(x, f)) {
                        self.drop_if_idle(f).await;
                    }
                }
            })
            .await;
    }

    /// Uploads several small new files of `dir` in one archive; returns those that failed.
    async fn upload_batch(&self, dir: &RemotePath, files: &[Arc<OpenFile>]) -> Vec<Arc<OpenFile>> {
        let mut guards = Vec::with_capacity(files.len());
        for f in files {
            guards.push(f.staged.lock().await);
        }
        let mut members = Vec::new();
        let mut included: Vec<(usize, FileMeta, u64, SystemTime, u32, Bytes)> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let m = f.meta();
            let Some(sf) = guards[i].as_ref() else {
                continue;
            };
            if !m.dirty || m.unlinked || m.path.parent().as_ref() != Some(dir) {
                continue;
            }
            let data = match sf.read_all() {
                Ok(d) => Bytes::from(d),
                Err(e) => {
                    tracing::error!(path = %m.path, "cannot read the staged copy: {e}");
                    continue;
                }
            };
            let _ = sf.write_manifest(StagedState::Uploading, "", None, false);
            let perm = m.pending_mode.unwrap_or(m.base.perm);
            let mtime = whole_seconds(m.pending_mtime.unwrap_or_else(SystemTime::now));
            members.push(ArchiveMember {
                name: m.path.file_name().to_string(),
                kind: ArchiveMemberKind::File(data.clone()),
                perm,
                mtime,
            });
            let size = data.len() as u64;
            included.push((i, m, size, mtime, perm, data));
        }
        if members.is_empty() {
            return Vec::new();
        }
        let span = tracing::info_span!("upload_batch", dir = %dir, files = members.len());
        let result = self.remote.put_archive(dir, members).instrument(span).await;
        match result {
            Ok(()) => {
                for (i, m, size, mtime, perm, data) in included {
                    if let Some(sf) = guards[i].as_ref() {
                        let _ = sf.mark_clean();
                    }
                    let stat = self.own_stat(FileKind::File, perm, size, mtime);
                    {
                        let mut mm = files[i].meta.lock();
                        mm.dirty = false;
                        mm.new = false;
                        mm.pending_mode = None;
                        mm.pending_mtime = None;
                        mm.local_mtime = None;
                        mm.base = stat.clone();
                        mm.staged_size = Some(size);
                    }
                    self.cache.put_attr(&m.path, stat, None);
                    let _ = self.content.put(&m.path, size, mtime, &data);
                    self.opened_versions.lock().remove(&files[i].ino);
                }
                Vec::new()
            }
            Err(e) => {
                drop(guards);
                let e = FsError::from(e);
                tracing::warn!(%dir, "batched upload failed ({e}); sending the files one by one");
                let mut failed = Vec::new();
                for (i, ..) in included {
                    if let Err(e) = self.upload(&files[i], false).await {
                        tracing::warn!("delayed upload failed, retrying in 30 s: {e}");
                        failed.push(files[i].clone());
                    }
                }
                failed
            }
        }
    }

    /// Files waiting for their delayed upload.
    pub fn writeback_pending(&self) -> usize {
        self.writeback.lock().len()
    }

    /// A staged object for ranged reads of this version, reused while valid.
    async fn staged_object(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
    ) -> FsResult<StagedObject> {
        let key = (path.clone(), size, mtime);
        if let Some(o) = self.staged_objects.lock().get(&key) {
            if o.expires > SystemTime::now() + OBJECT_MARGIN {
                return Ok(o.clone());
            }
        }
        let o = self.remote.stage_download(path, size).await?;
        let mut objects = self.staged_objects.lock();
        if objects.len() > 1000 {
            objects.clear();
        }
        objects.insert(key, o.clone());
        Ok(o)
    }

    /// Whole content of a small file of this version: content cache, else one `download`.
    async fn small_content(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
    ) -> FsResult<Bytes> {
        if let Some(p) = self.content.get(path, size, mtime) {
            if let Ok(data) = std::fs::read(p) {
                return Ok(Bytes::from(data));
            }
        }
        let data = self.remote.download(path).await?;
        if data.len() as u64 == size {
            if let Err(e) = self.content.put(path, size, mtime, &data) {
                tracing::debug!("content cache put failed: {e}");
            }
        }
        Ok(data)
    }

    /// Copies the remote content of `path` into a staged file.
    async fn fetch_into(&self, path: &RemotePath, stat: &Stat, sf: &StagedFile) -> FsResult<()> {
        if stat.size == 0 {
            return Ok(());
        }
        if self.is_small(stat.size) {
            let data = self.small_content(path, stat.size, stat.mtime).await?;
            sf.write_at(0, &data)?;
            return Ok(());
        }
        let object = self.staged_object(path, stat.size, stat.mtime).await?;
        let mut offset = 0;
        while offset < object.size {
            let len = FETCH_CHUNK.min(object.size - offset);
            let data = self.remote.read_range(&object, offset, len).await?;
            if data.is_empty() {
                break;
            }
            sf.write_at(offset, &data)?;
            offset += data.len() as u64;
        }
        Ok(())
    }

    /// Makes sure `file` has a staged copy (fetching the content unless `truncate`).
    async fn ensure_staged(
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
    fn mark_dirty(&self, file: &OpenFile, sf: &StagedFile, size: u64) -> FsResult<()> {
        let first = {
            let mut m = file.meta.lock();
            let first = !m.dirty;
            m.dirty = true;
            m.staged_size = Some(size);
            m.local_mtime = Some(whole_seconds(SystemTime::now()));
            first
        };
        if first {
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
        let stat = self.revalidate(&path).await?;
        match stat.kind {
            FileKind::Dir => return Err(FsError::IsADirectory(path.to_string())),
            FileKind::File => {}
            _ => return Err(FsError::NotPermitted(format!("cannot open {path}"))),
        }
        let write = flags & libc::O_ACCMODE != libc::O_RDONLY;
        let truncate = write && flags & libc::O_TRUNC != 0;
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
        let keep_cache = {
            let mut versions = self.opened_versions.lock();
            let same = versions.get(&ino) == Some(&version) && !file.meta.lock().dirty;
            versions.insert(ino, version);
            same && !write
        };
        let fh = self.handles.next_fh();
        self.handles.insert_file(Arc::new(Handle {
            fh,
            ino,
            file,
            write,
            append: flags & libc::O_APPEND != 0,
            wrote: AtomicBool::new(false),
            version,
            small: tokio::sync::Mutex::new(None),
            reader: tokio::sync::Mutex::new(None),
        }));
        Ok(Opened { fh, keep_cache })
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
        if flags & libc::O_EXCL != 0 && self.resolve(&path).await.is_ok() {
            return Err(FsError::Exists(path.to_string()));
        }
        if let Some(parent_attr) = self.cache.attr(&self.path_of(parent)?) {
            if parent_attr.stat.kind != FileKind::Dir {
                return Err(FsError::NotADirectory(path.to_string()));
            }
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
        self.parent_changed(&path);
        let fh = self.handles.next_fh();
        self.handles.insert_file(Arc::new(Handle {
            fh,
            ino,
            file,
            write: true,
            append: flags & libc::O_APPEND != 0,
            wrote: AtomicBool::new(false),
            version: (0, stat.mtime),
            small: tokio::sync::Mutex::new(None),
            reader: tokio::sync::Mutex::new(None),
        }));
        Ok(Created {
            entry,
            opened: Opened {
                fh,
                keep_cache: false,
            },
        })
    }

    fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles.file(fh).ok_or(FsError::BadHandle(fh))
    }

    /// `read`: staged copy if any, else the small file's content or ranged reads.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        {
            let staged = h.file.staged.lock().await;
            if let Some(sf) = staged.as_ref() {
                return Ok(Bytes::from(sf.read_at(offset, size as usize)?));
            }
        }
        let (fsize, mtime) = h.version;
        if offset >= fsize {
            return Ok(Bytes::new());
        }
        let path = h.file.meta.lock().path.clone();
        if self.is_small(fsize) {
            let mut small = h.small.lock().await;
            if small.is_none() {
                *small = Some(self.small_content(&path, fsize, mtime).await?);
            }
            return Ok(small
                .as_ref()
                .map(|d| slice(d, offset, size))
                .unwrap_or_default());
        }
        self.read_large(&h, &path, offset, size).await
    }

    async fn read_large(
        &self,
        h: &Handle,
        path: &RemotePath,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let mut guard = h.reader.lock().await;
        if guard.is_none() {
            let object = self.staged_object(path, h.version.0, h.version.1).await?;
            *guard = Some(LargeReader {
                object,
                buf_start: 0,
                buf: Bytes::new(),
                next: 0,
                window: 0,
            });
        }
        let Some(r) = guard.as_mut() else {
            return Ok(Bytes::new());
        };
        let total = r.object.size;
        if offset >= total {
            return Ok(Bytes::new());
        }
        let end = (offset + size as u64).min(total);
        let buf_end = r.buf_start + r.buf.len() as u64;
        if offset >= r.buf_start && end <= buf_end {
            r.next = end;
            return Ok(r
                .buf
                .slice((offset - r.buf_start) as usize..(end - r.buf_start) as usize));
        }
        // Sequential: right where the last read ended (or inside the window just fetched,
        // as the kernel's async reads may arrive slightly out of order).
        let sequential =
            offset == r.next || (offset >= r.buf_start && offset <= buf_end + r.window);
        let want = if sequential {
            r.window = if r.window == 0 {
                READAHEAD_MIN
            } else {
                (r.window * 2).min(READAHEAD_MAX)
            };
            r.window.max(end - offset)
        } else {
            r.window = 0;
            end - offset
        };
        let fetch_end = (offset + want).min(total);
        let parts = if sequential { RANGES_IN_FLIGHT } else { 1 };
        let part = (fetch_end - offset).div_ceil(parts).max(1);
        let mut futs = Vec::new();
        let mut at = offset;
        while at < fetch_end {
            let len = part.min(fetch_end - at);
            futs.push(self.remote.read_range(&r.object, at, len));
            at += len;
        }
        let chunks = futures_util::future::try_join_all(futs).await?;
        let mut buf = Vec::with_capacity((fetch_end - offset) as usize);
        for c in chunks {
            buf.extend_from_slice(&c);
        }
        r.buf_start = offset;
        r.buf = Bytes::from(buf);
        r.next = end;
        let n = ((end - offset) as usize).min(r.buf.len());
        Ok(r.buf.slice(0..n))
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
        let result = self.write_back(&h.file).await;
        self.release_file(&h.file).await;
        result
    }

    /// Sends the staged copy of `file` if it holds changes; waits for the remote's answer.
    /// `durable`: fsync data and manifest before sending (the `fsync` op). Otherwise the
    /// page cache holds them, which survives a crash of the daemon; a failed upload always
    /// makes them durable before it returns.
    pub(super) async fn upload(&self, file: &OpenFile, durable: bool) -> FsResult<()> {
        let staged = file.staged.lock().await;
        let Some(sf) = staged.as_ref() else {
            return Ok(());
        };
        let m = file.meta();
        if !m.dirty || m.unlinked {
            return Ok(());
        }
        if durable {
            sf.sync()?;
        }
        sf.write_manifest(StagedState::Uploading, "", None, durable)?;
        let size = sf.len()?;
        let span = tracing::info_span!("upload", path = %m.path, size);
        match self.send(&m, sf, size).instrument(span).await {
            Ok(stat) => {
                sf.mark_clean()?;
                {
                    let mut mm = file.meta.lock();
                    mm.dirty = false;
                    mm.new = false;
                    mm.pending_mode = None;
                    mm.pending_mtime = None;
                    mm.local_mtime = None;
                    mm.base = stat.clone();
                    mm.staged_size = Some(size);
                }
                self.cache.put_attr(&m.path, stat.clone(), None);
                if self.is_small(size) {
                    if let Ok(data) = sf.read_all() {
                        let _ = self.content.put(&m.path, size, stat.mtime, &data);
                    }
                }
                self.opened_versions.lock().remove(&file.ino);
                Ok(())
            }
            Err(e) => {
                let _ = sf.sync();
                let sha = sf.sha256().unwrap_or_default();
                let _ = sf.write_manifest(StagedState::Failed, &sha, Some(e.to_string()), true);
                tracing::error!(
                    remote = %m.path,
                    staged = %sf.data_path().display(),
                    "upload failed, the data stays staged: {e}"
                );
                self.cache.invalidate(&m.path);
                Err(e)
            }
        }
    }

    /// The upload route for one file (see the module header).
    async fn send(&self, m: &FileMeta, sf: &StagedFile, size: u64) -> FsResult<Stat> {
        let caps = self.remote.capabilities();
        let perm = m.pending_mode.unwrap_or(m.base.perm);
        if size == 0 || (m.pending_mtime.is_some() && self.archive_fits(size)) {
            let mtime = whole_seconds(m.pending_mtime.unwrap_or_else(SystemTime::now));
            let data = Bytes::from(sf.read_all()?);
            match self.put_file_archive(&m.path, data, perm, mtime).await {
                Ok(()) => {
                    let mut stat = self.own_stat(FileKind::File, perm, size, mtime);
                    if !m.new {
                        stat.uid = m.base.uid;
                        stat.gid = m.base.gid;
                    }
                    return Ok(stat);
                }
                Err(e) if archive_refused(&e) => {
                    tracing::warn!(
                        path = %m.path,
                        "archive route refused ({e}); sending a plain upload instead (its mtime \
                         is kept for this session only)"
                    );
                }
                Err(e) => return Err(e),
            }
            if size == 0 {
                // v2 creates the file, then times out on an empty upload: confirm by stat.
                match self.remote.upload(&m.path, Bytes::new()).await {
                    Ok(()) | Err(crate::remote::RemoteError::Timeout(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                let mut stat = self.remote.stat(&m.path).await?;
                if stat.size != 0 {
                    return Err(FsError::LocalIo(format!(
                        "empty upload of {} left {} bytes",
                        m.path, stat.size
                    )));
                }
                if stat.perm != perm {
                    stat = self.remote.chmod(&m.path, perm).await?;
                }
                if let Some(t) = m.pending_mtime {
                    stat.mtime = whole_seconds(t);
                }
                return Ok(stat);
            }
        }
        if size <= caps.direct_upload_limit {
            let data = Bytes::from(sf.read_all()?);
            self.remote.upload(&m.path, data).await?;
            // What the remote now holds is known without a `stat` when the mode is: an
            // existing file keeps its mode; a new one gets the remote's default, learnt from
            // the first new file's `stat`. The mtime is our clock's (the remote's shows after
            // the attribute TTL).
            let known_perm = if m.new {
                *self.new_file_perm.lock()
            } else {
                Some(m.base.perm)
            };
            let want = m.pending_mode.unwrap_or(m.base.perm);
            if known_perm == Some(want) {
                let mtime = m.pending_mtime.unwrap_or_else(SystemTime::now);
                let mut stat = self.own_stat(FileKind::File, want, size, mtime);
                if !m.new {
                    stat.uid = m.base.uid;
                    stat.gid = m.base.gid;
                }
                return Ok(stat);
            }
        } else {
            self.remote
                .upload_large(&m.path, sf.data_path(), size, None)
                .await?;
        }
        let mut stat = self.remote.stat(&m.path).await?;
        if m.new {
            *self.new_file_perm.lock() = Some(stat.perm);
        }
        if let Some(want) = m.pending_mode {
            if stat.perm != want {
                stat = self.remote.chmod(&m.path, want).await?;
            }
        }
        if let Some(t) = m.pending_mtime {
            // Large file: the API cannot set its mtime; kept for this session only.
            stat.mtime = whole_seconds(t);
        }
        Ok(stat)
    }

    /// One file through the archive route, in its parent directory.
    pub(super) async fn put_file_archive(
        &self,
        path: &RemotePath,
        data: Bytes,
        perm: u32,
        mtime: SystemTime,
    ) -> FsResult<()> {
        let dir = path
            .parent()
            .ok_or_else(|| FsError::InvalidArgument("cannot write the root".into()))?;
        self.remote
            .put_archive(
                &dir,
                vec![ArchiveMember {
                    name: path.file_name().to_string(),
                    kind: ArchiveMemberKind::File(data),
                    perm,
                    mtime,
                }],
            )
            .await?;
        Ok(())
    }

    /// `setattr`: mode → chmod, uid/gid → chown (both), size → truncate through staging,
    /// times → pending on dirty files, else the archive route (small) or session-only (large).
    pub async fn setattr(&self, ino: InodeNo, req: SetAttr) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        tracing::debug!(%path, ?req, "setattr");
        let file = self.files.lock().get(&ino).cloned();
        let current = self.resolve(&path).await?.stat;
        if let Some(size) = req.size {
            if let Some(h) = req.fh.and_then(|fh| self.handles.file(fh)) {
                h.wrote.store(true, Ordering::Relaxed);
            }
            if current.kind == FileKind::Dir {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            self.truncate(ino, &path, &current, file.as_ref(), size)
                .await?;
        }
        let file = self.files.lock().get(&ino).cloned();
        let mtime = req.mtime.map(to_time).map(whole_seconds);
        let dirty = file.as_ref().is_some_and(|f| f.meta.lock().dirty);
        if dirty {
            if let Some(f) = &file {
                let mut m = f.meta.lock();
                if let Some(mode) = req.mode {
                    m.pending_mode = Some(mode & 0o7777);
                }
                if let Some(t) = mtime {
                    m.pending_mtime = Some(t);
                }
            }
        } else {
            self.apply_meta(&path, &current, file.as_ref(), req.mode, mtime)
                .await?;
        }
        if req.uid.is_some() || req.gid.is_some() {
            self.chown(&path, file.as_ref(), req.uid, req.gid).await?;
        }
        self.getattr(ino).await
    }

    async fn truncate(
        &self,
        ino: InodeNo,
        path: &RemotePath,
        current: &Stat,
        file: Option<&Arc<OpenFile>>,
        size: u64,
    ) -> FsResult<()> {
        let (file, internal) = match file {
            Some(f) => (f.clone(), false),
            None => (self.acquire_file(ino, path, current), true),
        };
        let result = async {
            let mut staged = file.staged.lock().await;
            self.ensure_staged(&file, &mut staged, size == 0).await?;
            if let Some(sf) = staged.as_ref() {
                sf.set_len(size)?;
                self.mark_dirty(&file, sf, size)?;
            }
            Ok::<(), FsError>(())
        }
        .await;
        if internal {
            let uploaded = match result {
                Ok(()) => self.upload(&file, false).await,
                Err(e) => Err(e),
            };
            self.release_file(&file).await;
            return uploaded;
        }
        result
    }

    /// chmod and/or set mtime of a file without unsent changes.
    async fn apply_meta(
        &self,
        path: &RemotePath,
        current: &Stat,
        file: Option<&Arc<OpenFile>>,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> FsResult<()> {
        let mode = mode.map(|m| m & 0o7777);
        let mtime_changes = mtime.is_some_and(|t| t != whole_seconds(current.mtime));
        if mtime_changes
            && current.kind == FileKind::File
            && self.is_small(current.size)
            && self.archive_fits(current.size)
        {
            let t = mtime.unwrap_or(current.mtime);
            let perm = mode.unwrap_or(current.perm);
            let data = self.content_for_copy(path, current, file).await?;
            let size = data.len() as u64;
            match self.put_file_archive(path, data.clone(), perm, t).await {
                Ok(()) => {}
                Err(e) if archive_refused(&e) => {
                    tracing::warn!(
                        %path,
                        "archive route refused ({e}); the new mtime is kept for this session only"
                    );
                    return self
                        .apply_meta_plain(path, current, file, mode, mtime)
                        .await;
                }
                Err(e) => return Err(e),
            }
            let mut stat = current.clone();
            stat.perm = perm;
            stat.mtime = t;
            stat.size = size;
            self.cache.put_attr(path, stat.clone(), None);
            let _ = self.content.put(path, size, t, &data);
            if let Some(f) = file {
                f.meta.lock().base = stat;
            }
            return Ok(());
        }
        self.apply_meta_plain(path, current, file, mode, mtime)
            .await
    }

    /// chmod through the API; an mtime kept for this session only.
    async fn apply_meta_plain(
        &self,
        path: &RemotePath,
        current: &Stat,
        file: Option<&Arc<OpenFile>>,
        mode: Option<u32>,
        mtime: Option<SystemTime>,
    ) -> FsResult<()> {
        let mode = mode.map(|m| m & 0o7777);
        let mtime_changes = mtime.is_some_and(|t| t != whole_seconds(current.mtime));
        let mode_changes = mode.is_some_and(|m| m != current.perm);
        let mut stat = current.clone();
        if mode_changes {
            if let Some(m) = mode {
                stat = self.remote.chmod(path, m).await?;
            }
        }
        if mtime_changes {
            // Directories, symlinks and large files: the API cannot set the time; keep it
            // for this session (until the attribute TTL runs out).
            if let Some(t) = mtime {
                stat.mtime = t;
            }
        }
        if mode_changes || mtime_changes {
            self.cache.put_attr(path, stat.clone(), None);
            if let Some(f) = file {
                f.meta.lock().base = stat;
            }
        }
        Ok(())
    }

    /// Content of a small file for a copy through the archive route: the staged copy if
    /// any, else the content cache, else one `download`.
    pub(super) async fn content_for_copy(
        &self,
        path: &RemotePath,
        current: &Stat,
        file: Option<&Arc<OpenFile>>,
    ) -> FsResult<Bytes> {
        if let Some(f) = file {
            if let Some(sf) = f.staged.lock().await.as_ref() {
                return Ok(Bytes::from(sf.read_all()?));
            }
        }
        self.small_content(path, current.size, current.mtime).await
    }

    async fn chown(
        &self,
        path: &RemotePath,
        file: Option<&Arc<OpenFile>>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> FsResult<()> {
        let current = self.resolve(path).await?.stat;
        let ruid = uid.map_or(current.uid, |u| self.ids.uid_to_remote(u));
        let rgid = gid.map_or(current.gid, |g| self.ids.gid_to_remote(g));
        if ruid == current.uid && rgid == current.gid {
            return Ok(());
        }
        if let Some(f) = file {
            if f.meta.lock().new {
                self.upload(f, false).await?;
            }
        }
        let stat = self.remote.chown(path, ruid, rgid).await?;
        self.cache.put_attr(path, stat.clone(), None);
        if let Some(f) = file {
            f.meta.lock().base = stat;
        }
        Ok(())
    }

    /// The kernel's attributes of `ino` now (used by the adapter after writes).
    pub fn attr_of(&self, ino: InodeNo, stat: &Stat) -> fuser::FileAttr {
        attr::to_file_attr(ino, stat, &self.ids)
    }
}
