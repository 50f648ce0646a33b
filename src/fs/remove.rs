//! Deferred removal: with a write-back delay, `unlink` of a file that is only on the remote
//! (no open handle, in a directory the remote user may write) answers at once and queues the
//! remote `rm`. `rmdir` of a directory whose entries went that way removes it with the one
//! recursive `rm` the API has, which takes the queued entries with it: `rm -r` of a directory
//! of N files costs one `ls` (is it empty on the remote, but for our queued entries?) and one
//! `rm` instead of N + 1 calls. Sending queued removals and an rmdir's check-and-remove
//! exclude each other (`Removals::sending`): the remote's `ls` fails while entries vanish.
//!
//! Until it is sent a queued path is absent inside the mount (lookups, stats and listings
//! skip it). Queued removals go out when due (side by side), before an op that reuses their
//! path or a parent of it (create, mkdir, symlink, rename), and at unmount. A removal the
//! remote refuses after all is logged and the file shows up again; the permission check at
//! `unlink` makes that rare.

use std::time::Instant;

use futures_util::StreamExt;

use super::Filesystem;
use crate::remote::{RemoteError, RemoteFs, RemotePath, Stat};

/// Queued removals sent at once.
const REMOVE_PARALLEL: usize = 8;
/// Queued removals sent per tick at most (the delayed uploads of the same tick are not held
/// up behind thousands of them).
const REMOVE_PER_TICK: usize = 64;

/// The mount user's bit of `perm` among owner/other (group membership is not known here:
/// a group-writable directory is not taken as writable).
fn may_write(perm: u32, owner: u32, me: u32) -> bool {
    if owner == me {
        perm & 0o200 != 0
    } else {
        perm & 0o002 != 0
    }
}

impl<R: RemoteFs> Filesystem<R> {
    /// Whether a removal of `path` waits in the queue.
    pub(super) fn removal_pending(&self, path: &RemotePath) -> bool {
        self.removals.pending.lock().contains_key(path)
    }

    /// Queues the remote removal of `path` (a file or symlink with attributes `stat`) when
    /// the remote will take it: a write-back delay is set and the parent directory is
    /// writable by us (and, if sticky, the file is ours). `false`: remove it now.
    pub(super) fn defer_removal(&self, path: &RemotePath, stat: &Stat) -> bool {
        if self.writeback_delay.is_zero() {
            return false;
        }
        let Some(parent) = path.parent() else {
            return false;
        };
        let Some(dir) = self.cache.attr_stale(&parent) else {
            tracing::debug!(%path, "unlink sent now: the directory's attributes are not known");
            return false;
        };
        let me = self.ids.remote_uid;
        let sticky_ok = dir.stat.perm & 0o1000 == 0 || stat.uid == me || dir.stat.uid == me;
        if !may_write(dir.stat.perm, dir.stat.uid, me) || !sticky_ok {
            tracing::debug!(%path, perm = format!("{:o}", dir.stat.perm), owner = dir.stat.uid, me, "unlink sent now: the directory may not be ours to write");
            return false;
        }
        // While unlinks keep coming in this directory (`rm -r` of a big one), its queued
        // removals wait for the rmdir that will take them all.
        let due = self.cache.now() + self.writeback_delay;
        let mut q = self.removals.pending.lock();
        for (p, at) in q.iter_mut() {
            if p.parent().as_ref() == Some(&parent) {
                *at = due;
            }
        }
        q.insert(path.clone(), due);
        true
    }

    /// Sends now the queued removals of `path` and of everything below it (before an op
    /// that puts something at `path` or moves it).
    pub(super) async fn settle_removals(&self, path: &RemotePath) {
        // Not queued again when unreachable: it must not reach the remote after the op
        // that reuses the path. The op itself will most likely fail the same way.
        for path in self.send_removals_below(path).await {
            tracing::warn!(%path, "removal dropped: the remote was unreachable before the path was reused");
        }
    }

    /// Sends the queued removals of `path` and below now; returns those the remote could
    /// not be asked about (out of the queue).
    async fn send_removals_below(&self, path: &RemotePath) -> Vec<RemotePath> {
        // Also waits for a batch being sent now, which may hold this very path.
        let _sending = self.removals.sending.lock().await;
        let now: Vec<RemotePath> = {
            let mut q = self.removals.pending.lock();
            let hit: Vec<RemotePath> = q.keys().filter(|p| p.starts_with(path)).cloned().collect();
            for p in &hit {
                q.remove(p);
            }
            hit
        };
        self.send_removals(now).await
    }

    /// `fsyncdir`: what this mount still holds back for directory `dir` reaches the remote:
    /// its queued removals and the delayed uploads of its new files.
    pub async fn fsyncdir(&self, ino: super::InodeNo) -> crate::error::FsResult<()> {
        let dir = self.path_of(ino)?;
        let unreachable = self.send_removals_below(&dir).await;
        if !unreachable.is_empty() {
            // Kept for the next tick; the caller learns they are not on the remote yet.
            let retry = self.cache.now() + super::writeback::UPLOAD_RETRY_PAUSE;
            let n = unreachable.len();
            let mut q = self.removals.pending.lock();
            for p in unreachable {
                q.entry(p).or_insert(retry);
            }
            return Err(crate::error::FsError::Remote(RemoteError::Unavailable(
                format!("{n} removal(s) in {dir} not sent: the remote is unreachable"),
            )));
        }
        let queued: Vec<std::sync::Arc<super::handle::OpenFile>> = {
            let mut q = self.writeback.lock();
            let inos: Vec<super::InodeNo> = q
                .iter()
                .filter(|(_, (f, _))| f.meta.lock().path.parent().as_ref() == Some(&dir))
                .map(|(ino, _)| *ino)
                .collect();
            inos.iter()
                .filter_map(|i| q.remove(i).map(|(f, _)| f))
                .collect()
        };
        let mut result = Ok(());
        for f in queued {
            if let Err(e) = self.upload(&f, true).await {
                self.retry_later(&f);
                result = Err(e);
            } else {
                self.drop_if_idle(&f).await;
            }
        }
        result
    }

    /// Held by `rmdir` around its emptiness check and its `rm` (see `Removals::sending`).
    pub(super) async fn removal_gate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.removals.sending.lock().await
    }

    /// `path` is gone on the remote with everything below it (a recursive `rm` of a
    /// directory): its queued removals are done.
    pub(super) fn removals_done_below(&self, path: &RemotePath) {
        self.removals
            .pending
            .lock()
            .retain(|p, _| !p.starts_with(path));
    }

    /// Sends the removals that are due (up to `REMOVE_PER_TICK`); one that fails because the
    /// remote is unreachable waits `UPLOAD_RETRY_PAUSE` and is tried again. `all` (unmount):
    /// everything now, once; returns what could not be sent.
    pub(super) async fn removal_tick(&self, all: bool) -> Vec<RemotePath> {
        let now = self.cache.now();
        let any_due = || {
            self.removals
                .pending
                .lock()
                .values()
                .any(|at| all || *at <= now)
        };
        if !any_due() {
            return Vec::new();
        }
        let _sending = self.removals.sending.lock().await;
        let due: Vec<RemotePath> = {
            let mut q = self.removals.pending.lock();
            let due: Vec<RemotePath> = q
                .iter()
                .filter(|(_, at)| all || **at <= now)
                .map(|(p, _)| p.clone())
                .take(if all { usize::MAX } else { REMOVE_PER_TICK })
                .collect();
            for p in &due {
                q.remove(p);
            }
            due
        };
        let unreachable = self.send_removals(due).await;
        if all {
            return unreachable;
        }
        let retry = self.cache.now() + super::writeback::UPLOAD_RETRY_PAUSE;
        let mut q = self.removals.pending.lock();
        for p in unreachable {
            q.entry(p).or_insert(retry);
        }
        Vec::new()
    }

    /// Removes `paths` on the remote (side by side); returns those the remote could not be
    /// asked about (transient failures). A refusal is logged and the file shows up again.
    /// The caller holds `Removals::sending` from taking `paths` out of the queue on, so an
    /// `rmdir` never sees them neither queued nor gone.
    async fn send_removals(&self, paths: Vec<RemotePath>) -> Vec<RemotePath> {
        let unreachable = parking_lot::Mutex::new(Vec::new());
        futures_util::stream::iter(paths)
            .for_each_concurrent(REMOVE_PARALLEL, |path| {
                let unreachable = &unreachable;
                async move {
                    match self.remote.remove(&path).await {
                        // A listing made while it was being sent may have shown it again.
                        Ok(()) | Err(RemoteError::NotFound(_)) => self.cache.put_negative(&path),
                        Err(e) if e.is_transient() => {
                            tracing::warn!(%path, "removal not sent yet: {e}");
                            unreachable.lock().push(path);
                        }
                        Err(e) => {
                            tracing::warn!(%path, "the remote refused the removal ({e}); the file shows up again");
                            self.cache.invalidate(&path);
                            if let Some(parent) = path.parent() {
                                self.cache.forget_listing(&parent);
                            }
                        }
                    }
                }
            })
            .await;
        unreachable.into_inner()
    }

    /// Paths whose removal waits (for `status` and tests).
    pub fn pending_removals(&self) -> Vec<RemotePath> {
        self.removals.pending.lock().keys().cloned().collect()
    }
}

/// Queued removals, and the gate that keeps sending them apart from an `rmdir`.
#[derive(Default)]
pub(super) struct Removals {
    /// Path → when its `rm` is due.
    pending: parking_lot::Mutex<std::collections::BTreeMap<RemotePath, Instant>>,
    /// Held while removals are sent and while `rmdir` checks and removes a directory: the
    /// remote's `ls` of a directory fails while entries vanish under it.
    sending: tokio::sync::Mutex<()>,
}

#[cfg(test)]
mod tests {
    use super::may_write;

    #[test]
    fn writable_means_the_owner_bit_for_the_owner_else_the_other_bit() {
        assert!(may_write(0o755, 1000, 1000));
        assert!(!may_write(0o555, 1000, 1000));
        assert!(!may_write(0o775, 0, 1000));
        assert!(may_write(0o1777, 0, 1000));
        assert!(!may_write(0o577, 1000, 1000));
    }
}
