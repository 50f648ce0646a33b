//! Write-back: sending a staged copy to the remote on flush/fsync/release, or later in a
//! batch when a write-back delay is configured.
//!
//! Upload routes, chosen per file at upload time:
//! - empty file, or a pending mtime (or a last write in an earlier second than the upload:
//!   delayed write-back) and the content fits an archive → `put_archive`
//!   (content, mode and mtime in one go; also what makes `touch`, `tar x`, `cp -p` and a
//!   second `rsync -a` work);
//! - up to `direct_upload_limit` → `upload`; the attributes are known without a `stat`
//!   when the mode is (an existing file keeps its mode; new files get the remote's default,
//!   learnt once), else `stat` (plus `chmod` if the mode differs from the wanted one);
//! - larger → `upload_large`, then `stat`; a pending mtime is kept in the session's cache
//!   only (the API cannot set it on large files).
//!
//! Mode and mtime set on a dirty file are kept pending and sent with its upload, so
//! write + futimens + fchmod + close costs one archive upload. The upload itself runs on
//! flush/fsync/release and close waits for it (close-to-open); a flush by a descriptor
//! that wrote nothing to an existing file leaves it to release (shell `dup2` patterns). On failure the staged copy
//! and its manifest stay, the path is logged and the error goes to close()/fsync().
//!
//! Delayed write-back (`writeback_delay` > 0): a small new file is queued at close; its
//! metadata ops (utimens, chmod, rename) stay pending locally; when due, the small new
//! files of one directory go out together in one archive. Inside the mount the file is
//! visible at once (close-to-open holds for other openers); the remote sees it after the
//! delay; fsync and unmount never wait for it; a failed delayed upload stays staged and is
//! retried. A closed file whose upload failed (close() returned the error) joins the same
//! queue: it is retried after `UPLOAD_RETRY_PAUSE`, doubling with each failure (at most
//! `UPLOAD_RETRY_PAUSE_MAX`), until the remote takes it, or at unmount.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracing::Instrument;

use super::handle::{FileMeta, OpenFile};
use super::{whole_seconds, Filesystem, InodeNo};
use crate::error::{FsError, FsResult};
use crate::remote::{ArchiveMember, ArchiveMemberKind, FileKind, RemoteFs, RemotePath, Stat};
use crate::staging::{StagedFile, StagedState};

/// Room for tar headers and end blocks around one member.
pub(super) const ARCHIVE_OVERHEAD: u64 = 4096;
/// Batches of delayed uploads sent at once.
const WRITEBACK_PARALLEL: usize = 4;
/// Pause before a failed upload of a closed file is tried again in the background (the first
/// time; it doubles with each further failure up to `UPLOAD_RETRY_PAUSE_MAX`).
pub(super) const UPLOAD_RETRY_PAUSE: Duration = Duration::from_secs(10);
const UPLOAD_RETRY_PAUSE_MAX: Duration = Duration::from_secs(80);

/// The pause before the next try of an upload that failed `failures` times in a row.
pub(super) fn retry_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (UPLOAD_RETRY_PAUSE * 2u32.pow(doublings)).min(UPLOAD_RETRY_PAUSE_MAX)
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

impl<R: RemoteFs> Filesystem<R> {
    pub(super) fn archive_fits(&self, size: u64) -> bool {
        size + ARCHIVE_OVERHEAD <= self.remote.capabilities().direct_upload_limit
    }

    /// flush/release write-back: uploads now, or (with a write-back delay) queues a small
    /// new file so the metadata ops that usually follow (utimens, chmod, rename of
    /// rsync/tar/cp -p) join its one archive upload.
    pub(super) async fn write_back(&self, file: &Arc<OpenFile>) -> FsResult<()> {
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

    /// Sends the queued removals that are due (`remove`), then uploads queued files whose
    /// delay ran out (the mount calls this periodically; tests call it after advancing the
    /// clock). A failed upload stays staged and is retried
    /// after a longer pause.
    pub async fn writeback_tick(&self) {
        // Removals and uploads go out side by side: neither waits behind the other.
        tokio::join!(self.removal_tick(false), self.upload_tick());
    }

    /// The upload part of `writeback_tick`.
    async fn upload_tick(&self) {
        let now = self.cache.now();
        // Files that are due, plus the queued files of the same directories that have waited
        // at least half the delay (their utimens/chmod/rename have arrived by then): they
        // would go out a moment later anyway, and together they need one archive.
        let early = now + self.writeback_delay / 2;
        let due: Vec<Arc<OpenFile>> = {
            let mut q = self.writeback.lock();
            let dir_of = |f: &Arc<OpenFile>| f.meta.lock().path.parent();
            let due_dirs: std::collections::HashSet<Option<RemotePath>> = q
                .values()
                .filter(|(_, at)| *at <= now)
                .map(|(f, _)| dir_of(f))
                .collect();
            let ready: Vec<InodeNo> = q
                .iter()
                .filter(|(_, (f, at))| {
                    *at <= now || (*at <= early && due_dirs.contains(&dir_of(f)))
                })
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
                        Err(_) => files.clone(),
                    }
                } else {
                    self.upload_batch(&dir, &files).await
                };
                for f in &failed {
                    let (path, failures) = {
                        let m = f.meta.lock();
                        (m.path.clone(), m.upload_failures)
                    };
                    let pause = retry_pause(failures);
                    tracing::warn!(%path, "background upload failed ({failures} in a row); trying again in {} s", pause.as_secs());
                    let retry = self.cache.now() + pause;
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
    pub(super) async fn upload_batch(
        &self,
        dir: &RemotePath,
        files: &[Arc<OpenFile>],
    ) -> Vec<Arc<OpenFile>> {
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
            let mtime = whole_seconds(
                m.pending_mtime
                    .or(m.local_mtime)
                    .unwrap_or_else(SystemTime::now),
            );
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
                self.cache.own_changes_landed(dir);
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
                    if self.upload(&files[i], false).await.is_err() {
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
                if let Some(dir) = m.path.parent() {
                    self.cache.own_changes_landed(&dir);
                }
                sf.mark_clean()?;
                if m.upload_failures > 0 {
                    tracing::info!(remote = %m.path, "uploaded after {} failed tries; the staged copy is released", m.upload_failures);
                }
                {
                    let mut mm = file.meta.lock();
                    mm.dirty = false;
                    mm.new = false;
                    mm.pending_mode = None;
                    mm.pending_mtime = None;
                    mm.local_mtime = None;
                    mm.upload_failures = 0;
                    mm.base = stat.clone();
                    mm.staged_size = Some(size);
                }
                self.cache.put_attr(&m.path, stat.clone(), None);
                // The version this write replaced is gone for good; the cache now holds this
                // write's content, or nothing for this version.
                self.forget_version(&m.path, m.base.size, m.base.mtime);
                // A large one is copied from the staged file: reading back what was just
                // written (cp then cmp) needs no transfer job.
                self.staged_objects.lock().retain(|(p, ..), _| p != &m.path);
                let cached = match self.is_small(size).then(|| sf.read_all()) {
                    Some(Ok(data)) => self.content.put(&m.path, size, stat.mtime, &data),
                    Some(Err(e)) => Err(e),
                    None => self
                        .content
                        .put_file(&m.path, size, stat.mtime, sf.data_path()),
                };
                if cached.is_err() {
                    self.forget_version(&m.path, size, stat.mtime);
                }
                self.opened_versions.lock().remove(&file.ino);
                Ok(())
            }
            Err(e) => {
                let _ = sf.sync();
                let sha = sf.sha256().unwrap_or_default();
                let _ = sf.write_manifest(StagedState::Failed, &sha, Some(e.to_string()), true);
                file.meta.lock().upload_failures += 1;
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
    pub(super) async fn send(&self, m: &FileMeta, sf: &StagedFile, size: u64) -> FsResult<Stat> {
        let caps = self.remote.capabilities();
        let perm = m.pending_mode.unwrap_or(m.base.perm);
        // The mtime the mount has been showing: set, or that of the last write when the
        // remote would stamp another second (a delayed upload), so it does not jump later.
        let keep_mtime = m.pending_mtime.or_else(|| {
            m.local_mtime
                .filter(|t| whole_seconds(*t) != whole_seconds(SystemTime::now()))
        });
        if size == 0 || (keep_mtime.is_some() && self.archive_fits(size)) {
            let mtime = whole_seconds(keep_mtime.unwrap_or_else(SystemTime::now));
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
                if let Some(t) = keep_mtime {
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
            let transfer =
                self.transfers
                    .start(m.path.as_str(), crate::status::Direction::Upload, size);
            let sent = self
                .remote
                .upload_large(&m.path, sf.data_path(), size, Some(transfer.progress()))
                .await;
            match sent {
                Ok(()) => drop(transfer),
                Err(e) => {
                    transfer.failed();
                    return Err(e.into());
                }
            }
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
            // Large file: the API cannot set its mtime; kept for this session, while the
            // remote file stays the one just uploaded.
            let t = whole_seconds(t);
            self.cache
                .keep_mtime(&m.path, t, Some((stat.size, stat.mtime)));
            stat.mtime = t;
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
}
