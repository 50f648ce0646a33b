//! `setattr`: mode → chmod, uid/gid → chown (both ids always sent), size → truncate
//! through the staging area, times → pending on a dirty file (sent with its upload), else
//! the archive route for small files (content from the staged copy, the content cache or one
//! download) and session-only for directories, symlinks and large files.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use fuser::TimeOrNow;

use super::handle::OpenFile;
use super::writeback::archive_refused;
use super::{whole_seconds, Attr, Filesystem, InodeNo};
use crate::error::{FsError, FsResult};
use crate::remote::{FileKind, RemoteFs, RemotePath, Stat};

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

fn to_time(t: TimeOrNow) -> SystemTime {
    match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl<R: RemoteFs> Filesystem<R> {
    /// `setattr`: mode → chmod, uid/gid → chown (both), size → truncate through staging,
    /// times → pending on dirty files, else the archive route (small) or session-only (large).
    pub async fn setattr(&self, ino: InodeNo, req: SetAttr) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        tracing::debug!(%path, ?req, "setattr");
        let current = self.resolve(&path).await?.stat;
        if let Some(size) = req.size {
            if let Some(h) = req.fh.and_then(|fh| self.handles.file(fh)) {
                h.wrote.store(true, Ordering::Relaxed);
            }
            if current.kind == FileKind::Dir {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            self.truncate(ino, &path, &current, size).await?;
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
        if req.mode.is_some() || req.uid.is_some() || req.gid.is_some() || req.size.is_some() {
            // ctime moves on, as the remote's does (pjdfstest chmod::update_ctime).
            self.ctime_changed(&path);
        }
        self.getattr(ino).await
    }

    pub(super) async fn truncate(
        &self,
        ino: InodeNo,
        path: &RemotePath,
        current: &Stat,
        size: u64,
    ) -> FsResult<()> {
        // Our own reference, even when the file looks open: its last handle may be closing
        // right now, past its write-back (close(fd); truncate(path) races like that).
        let file = self.acquire_file(ino, path, current);
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
        match result {
            // Sent now unless a handle stays open (its close sends it).
            Ok(()) => self.release_file_sending(&file).await,
            Err(e) => {
                self.release_file(&file).await;
                Err(e)
            }
        }
    }

    /// chmod and/or set mtime of a file without unsent changes.
    pub(super) async fn apply_meta(
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
    pub(super) async fn apply_meta_plain(
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
            // Directories, symlinks and large files: the API cannot set the time; it is kept
            // for this session while the remote object stays as it is.
            if let Some(t) = mtime {
                let base = (stat.kind != FileKind::Dir).then_some((stat.size, stat.mtime));
                self.cache.keep_mtime(path, t, base);
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

    pub(super) async fn chown(
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
}
