//! Open-file state and the handle tables.
//!
//! Several handles on one inode share one `OpenFile`: its staged copy (behind a
//! `tokio::sync::Mutex`, held across uploads so a file is uploaded by one task at a time)
//! and a small `FileMeta` (behind a `parking_lot` mutex, never held across `.await`) that
//! `getattr`/`readdir` read without waiting for an upload. Lock order: `OpenFile::staged`,
//! then `OpenFile::meta`, then the tables' maps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use parking_lot::Mutex;

use super::inode::InodeNo;
use crate::remote::{RemotePath, StagedObject, Stat};
use crate::staging::StagedFile;

/// What `getattr` and friends may read about an open file without waiting for it.
#[derive(Clone, Debug)]
pub struct FileMeta {
    /// Current path (follows renames).
    pub path: RemotePath,
    /// Open handles (readers and writers).
    pub handles: usize,
    /// Length of the staged copy, when there is one.
    pub staged_size: Option<u64>,
    /// The staged copy holds changes the remote does not have.
    pub dirty: bool,
    /// The file does not exist on the remote yet (created here, not uploaded).
    pub new: bool,
    /// Unlinked while open: never uploaded, discarded on the last release.
    pub unlinked: bool,
    /// Mode to apply with the next upload.
    pub pending_mode: Option<u32>,
    /// Mtime to apply with the next upload (archive route).
    pub pending_mtime: Option<SystemTime>,
    /// Attributes as last known (remote or synthesised after our own upload).
    pub base: Stat,
    /// When the local copy was last written.
    pub local_mtime: Option<SystemTime>,
    /// Uploads of this content that failed in a row (0 after a change or a success): while
    /// non-zero `release` leaves the file to the retry queue rather than failing the same
    /// way again at once (its error went to the close() that just returned), and the retry
    /// pause grows with it.
    pub upload_failures: u32,
}

impl FileMeta {
    /// The attributes the mount shows for this file right now.
    pub fn overlay(&self) -> Stat {
        let mut s = self.base.clone();
        if let Some(size) = self.staged_size {
            s.size = size;
        }
        if let Some(m) = self.pending_mode {
            s.perm = m;
        }
        if let Some(t) = self.pending_mtime {
            s.mtime = t;
        } else if let (true, Some(t)) = (self.dirty, self.local_mtime) {
            s.mtime = t;
        }
        s
    }

    /// Whether the local state must be shown instead of the remote's.
    pub fn is_local(&self) -> bool {
        !self.unlinked && (self.new || self.dirty || self.staged_size.is_some())
    }
}

/// State shared by all handles of one inode.
pub struct OpenFile {
    pub ino: InodeNo,
    pub meta: Mutex<FileMeta>,
    pub staged: tokio::sync::Mutex<Option<StagedFile>>,
}

impl OpenFile {
    /// A snapshot of the metadata.
    pub fn meta(&self) -> FileMeta {
        self.meta.lock().clone()
    }
}

/// Per-handle state of a large file being read through the staging area.
pub struct LargeReader {
    /// Staged on the first fetch from the remote.
    pub object: Option<StagedObject>,
    pub buf_start: u64,
    pub buf: Bytes,
    /// Where a sequential reader is expected next.
    pub next: u64,
    /// Current read-ahead window.
    pub window: u64,
    /// The next window, being fetched in the background: (start, task).
    pub ahead: Option<(
        u64,
        tokio::task::JoinHandle<crate::remote::RemoteResult<Bytes>>,
    )>,
    /// Listed as a download in flight while the reader fetches from the remote.
    pub transfer: Option<crate::status::TransferGuard>,
}

impl Drop for LargeReader {
    fn drop(&mut self) {
        if let Some((_, task)) = self.ahead.take() {
            task.abort();
        }
    }
}

/// One open file handle.
pub struct Handle {
    pub fh: u64,
    pub ino: InodeNo,
    pub file: Arc<OpenFile>,
    /// Opened for writing.
    pub write: bool,
    /// Opened with O_APPEND.
    pub append: bool,
    /// Data was written (or the file truncated) through this handle.
    pub wrote: std::sync::atomic::AtomicBool,
    /// Thread-group id of the process that opened it (0: unknown), see `flush_by`.
    pub opener: std::sync::atomic::AtomicU32,
    /// (size, mtime) the file had when opened, for clean reads.
    pub version: (u64, SystemTime),
    /// Whole content of a small file, fetched on first read.
    pub small: tokio::sync::Mutex<Option<Bytes>>,
    /// Ranged reader of a large file.
    pub reader: tokio::sync::Mutex<Option<LargeReader>>,
}

/// One entry of a directory snapshot.
#[derive(Clone, Debug)]
pub struct DirSnapEntry {
    pub name: String,
    pub stat: Stat,
}

/// An open directory: the listing taken at `opendir` (again on rewinddir).
pub struct DirHandle {
    pub ino: InodeNo,
    pub path: RemotePath,
    pub entries: tokio::sync::Mutex<Option<Arc<Vec<DirSnapEntry>>>>,
    /// A `readdir` was answered already (offset 0 again means rewinddir).
    pub read: std::sync::atomic::AtomicBool,
}

/// The file and directory handle tables.
#[derive(Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: Mutex<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
}

impl HandleTable {
    /// A fresh handle number.
    pub fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn insert_file(&self, h: Arc<Handle>) {
        self.files.lock().insert(h.fh, h);
    }

    pub fn file(&self, fh: u64) -> Option<Arc<Handle>> {
        self.files.lock().get(&fh).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<Handle>> {
        self.files.lock().remove(&fh)
    }

    pub fn insert_dir(&self, h: Arc<DirHandle>) -> u64 {
        let fh = self.next_fh();
        self.dirs.lock().insert(fh, h);
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.lock().get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    /// Open file handles.
    pub fn open_files(&self) -> usize {
        self.files.lock().len()
    }
}
