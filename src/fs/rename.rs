//! `rename` with POSIX semantics over an API whose `mv` moves *into* existing directories
//! and (v2) runs as a transfer job.
//!
//! Checks first (no call when they fail): RENAME_EXCHANGE/WHITEOUT → EINVAL, RENAME_NOREPLACE with an
//! existing target → EEXIST, dir over non-dir → ENOTDIR, non-dir over dir → EISDIR, over a
//! non-empty dir → ENOTEMPTY, a dir into itself → EINVAL. Then the cheapest route:
//! (a) a file with unsent changes or not yet on the remote: renamed locally, uploaded under
//!     its new name by its next upload (the old remote copy, if any, is removed now);
//! (b) a symlink: recreated under the new name, then the old one removed;
//! (c) a small file: copied through the archive route under the new name with its mode and
//!     mtime (content from the staged copy, the content cache or one download), then the
//!     source removed;
//! (d) anything else: the remote `rename` (transfer job, verified by the client).
//! A target that would make `mv` move *into* it (a directory, or a symlink) is removed first;
//! a target file is simply overwritten.

use std::ffi::OsStr;
use std::sync::Arc;

use super::handle::OpenFile;
use super::writeback::archive_refused;
use super::{Filesystem, InodeNo};
use crate::cache::rebase;
use crate::error::{FsError, FsResult};
use crate::remote::{FileKind, RemoteError, RemoteFs, RemotePath, Stat};

/// Characters the v2 transfer-job templates mangle (API.md section 3).
const JOB_UNSAFE: [char; 4] = ['&', '<', '>', '"'];

impl<R: RemoteFs> Filesystem<R> {
    /// `rename(parent/name → newparent/newname, flags)`.
    pub async fn rename(
        &self,
        parent: InodeNo,
        name: &OsStr,
        newparent: InodeNo,
        newname: &OsStr,
        flags: u32,
    ) -> FsResult<()> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(FsError::InvalidArgument(format!(
                "rename flags {flags:#x} (RENAME_EXCHANGE, RENAME_WHITEOUT) are not supported"
            )));
        }
        let from = self.child(parent, name)?;
        let to = self.child(newparent, newname)?;
        // Queued unlinks below `from` or at/below `to` go out first: the remote must not
        // apply them after the rename (to other or new objects).
        self.settle_removals(&from).await;
        self.settle_removals(&to).await;
        let src = self.resolve(&from).await?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&from) {
            return Err(FsError::InvalidArgument(format!("{from} into itself")));
        }
        let dst = match self.resolve(&to).await {
            Ok(a) => Some(a.stat),
            Err(FsError::NotFound(_)) | Err(FsError::Remote(RemoteError::NotFound(_))) => None,
            Err(e) => return Err(e),
        };
        if let Some(d) = &dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(FsError::Exists(to.to_string()));
            }
            match (src.stat.kind == FileKind::Dir, d.kind == FileKind::Dir) {
                (true, false) => return Err(FsError::NotADirectory(to.to_string())),
                (false, true) => return Err(FsError::IsADirectory(to.to_string())),
                (true, true) => {
                    if self.dir_has_entries(&to).await? {
                        return Err(FsError::NotEmpty(to.to_string()));
                    }
                }
                (false, false) => {}
            }
        }
        let local = self.open_file_by_path(&from);
        let local_pending = local.as_ref().is_some_and(|f| {
            let m = f.meta.lock();
            m.dirty || m.new
        });
        let new_stat = if let (true, Some(f)) = (local_pending, &local) {
            self.rename_local(f, &from, &to, dst.as_ref()).await?
        } else if src.stat.kind == FileKind::Symlink {
            self.rename_symlink(&from, &to, &src.stat, src.link_target, dst.as_ref())
                .await?
        } else if src.stat.kind == FileKind::File && self.is_small_copy(src.stat.size) {
            match self
                .rename_copy(&from, &to, &src.stat, local.as_ref(), dst.as_ref())
                .await?
            {
                Some(stat) => stat,
                None => {
                    self.rename_remote(&from, &to, &src.stat, dst.as_ref())
                        .await?
                }
            }
        } else {
            self.rename_remote(&from, &to, &src.stat, dst.as_ref())
                .await?
        };
        self.finish_rename(&from, &to, new_stat);
        // A rename changes the moved entry's ctime, as on the remote.
        self.ctime_changed(&to);
        let moved_dir = src.stat.kind == FileKind::Dir;
        let replaced_dir = dst.as_ref().is_some_and(|d| d.kind == FileKind::Dir);
        self.parent_changed(&from, -i32::from(moved_dir));
        self.parent_changed(&to, i32::from(moved_dir) - i32::from(replaced_dir));
        Ok(())
    }

    fn is_small_copy(&self, size: u64) -> bool {
        let caps = self.remote.capabilities();
        size <= caps.direct_download_limit && size + 4096 <= caps.direct_upload_limit
    }

    /// Removes a target `mv`/`symlink` would not replace (a directory or a symlink).
    async fn remove_blocking_target(&self, to: &RemotePath, dst: Option<&Stat>) -> FsResult<()> {
        if let Some(d) = dst {
            if d.kind == FileKind::Dir || d.kind == FileKind::Symlink {
                self.remote.remove(to).await?;
            }
        }
        Ok(())
    }

    async fn rename_local(
        &self,
        f: &Arc<OpenFile>,
        from: &RemotePath,
        to: &RemotePath,
        dst: Option<&Stat>,
    ) -> FsResult<Stat> {
        let mut staged = f.staged.lock().await;
        let was_new = f.meta.lock().new;
        // Whether `to` is on the remote now (a file this one will overwrite): then an unlink
        // or another rename before the upload must remove it there.
        let target_on_remote = dst.is_some_and(|d| d.kind == FileKind::File)
            && !self
                .open_file_by_path(to)
                .is_some_and(|t| !Arc::ptr_eq(&t, f) && t.meta.lock().new);
        if dst.is_some_and(|d| d.kind != FileKind::File) {
            self.remote.remove(to).await?;
        }
        if let Some(d) = dst.filter(|d| d.kind == FileKind::File) {
            // Overwritten by the upload; keep our mode, not the target's.
            let _ = d;
        }
        if !was_new {
            match self.remote.remove(from).await {
                // Gone already (what replaced it was removed behind the mount): the rename
                // goes on, the staged copy is what counts.
                Ok(()) | Err(RemoteError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(sf) = staged.as_mut() {
            sf.set_remote(to.clone());
            let size = sf.len()?;
            let mut m = f.meta.lock();
            m.path = to.clone();
            m.new = !target_on_remote;
            m.dirty = true;
            m.staged_size = Some(size);
            if m.pending_mode.is_none() {
                m.pending_mode = Some(m.base.perm);
            }
            if let Some(d) = dst.filter(|_| target_on_remote) {
                // What the remote holds at `to` until the upload (whose mode it keeps).
                m.base = d.clone();
                sf.set_base(Some(crate::staging::BaseVersion::of(d.size, d.mtime)));
            } else if m.new {
                sf.set_base(None);
            }
        }
        let stat = f.meta.lock().overlay();
        Ok(stat)
    }

    async fn rename_symlink(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        stat: &Stat,
        target: Option<String>,
        dst: Option<&Stat>,
    ) -> FsResult<Stat> {
        let target = match target {
            Some(t) => t,
            None => self.remote.read_link(from).await?,
        };
        if dst.is_some() {
            self.remote.remove(to).await?;
        }
        self.remote.symlink(&target, to).await?;
        self.remote.remove(from).await?;
        self.cache.put_attr(to, stat.clone(), Some(target));
        Ok(stat.clone())
    }

    async fn rename_copy(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        stat: &Stat,
        local: Option<&Arc<OpenFile>>,
        dst: Option<&Stat>,
    ) -> FsResult<Option<Stat>> {
        let data = self.content_for_copy(from, stat, local).await?;
        self.remove_blocking_target(to, dst).await?;
        match self
            .put_file_archive(to, data.clone(), stat.perm, stat.mtime)
            .await
        {
            Ok(()) => {}
            Err(e) if archive_refused(&e) => {
                tracing::warn!(%from, %to, "archive route refused ({e}); moving with the remote rename");
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        self.remote.remove(from).await?;
        let mut new = stat.clone();
        new.size = data.len() as u64;
        let _ = self.content.put(to, new.size, new.mtime, &data);
        Ok(Some(new))
    }

    /// Route (d): the remote `rename` (a transfer job on v2, verified by the client).
    async fn rename_remote(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        stat: &Stat,
        dst: Option<&Stat>,
    ) -> FsResult<Stat> {
        if from.as_str().contains(JOB_UNSAFE) || to.as_str().contains(JOB_UNSAFE) {
            return Err(FsError::InvalidName(format!(
                "renaming {from} to {to} needs a transfer job, which mangles & < > \""
            )));
        }
        self.remove_blocking_target(to, dst).await?;
        self.remote.rename(from, to).await?;
        // `mv` keeps the mtime: what was cached of a replaced target of the same size and
        // second would pass for this file.
        self.forget_version(to, stat.size, stat.mtime);
        Ok(stat.clone())
    }

    /// Moves caches, inodes and open files from `from` to `to`.
    fn finish_rename(&self, from: &RemotePath, to: &RemotePath, stat: Stat) {
        let link = self.cache.attr_stale(to).and_then(|a| a.link_target);
        self.cache.rename(from, to);
        self.cache.put_attr(to, stat, link);
        if let Some(ino) = self.inodes.peek(to) {
            // The replaced target keeps its inode until forgotten, but no path.
            if let Some(f) = self.files.lock().get(&ino) {
                f.meta.lock().unlinked = true;
            }
        }
        self.inodes.rename(from, to);
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        for f in files {
            if let Ok(mut staged) = f.staged.try_lock() {
                let mut m = f.meta.lock();
                if m.path.starts_with(from) && !m.unlinked {
                    if let Some(p) = rebase(&m.path, from, to) {
                        if let Some(sf) = staged.as_mut() {
                            sf.set_remote(p.clone());
                        }
                        m.path = p;
                    }
                }
            } else {
                let mut m = f.meta.lock();
                if m.path.starts_with(from) && !m.unlinked {
                    if let Some(p) = rebase(&m.path, from, to) {
                        m.path = p;
                    }
                }
            }
        }
    }
}
