//! The filesystem core: `Filesystem<R: RemoteFs>`, one async fn per FUSE op returning plain
//! reply structs, so tests drive it without a kernel (`tests/fs_core.rs`).
//!
//! Consistency model (DESIGN.md section 3): close-to-open (close/fsync return after the
//! remote confirmed), read-your-writes inside the mount (our mutations update the cache at
//! once, open files overlay their local state), remote changes visible after the TTLs.
//!
//! Calls: one `list` per directory fills the attribute cache for all entries; a lookup in a
//! freshly listed directory costs nothing; a second miss in an unlisted directory lists it
//! instead of stat'ing entry by entry (`ls -l`, `find`, `du` patterns). Concurrent identical
//! `list`/`stat` calls for one path are coalesced into one.
//!
//! Submodules: `inode` (inode table), `handle` (open files), `attr` (Stat → FileAttr),
//! `file` (open/create/write/flush/release), `read` (small and ranged reads), `writeback`
//! (upload routes, delayed batches), `remove` (deferred unlinks, one `rm` for `rm -r`),
//! `setattr`, `rename`.
//! Locks: see `handle` for the order; the maps here are `parking_lot` mutexes held briefly.

pub mod attr;
mod dir;
mod file;
pub mod handle;
pub mod inode;
mod read;
mod remove;
mod rename;
mod setattr;
mod writeback;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{FileAttr, FileType};
use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;

use crate::cache::content::ContentCache;
use crate::cache::{CachedAttr, Clock, Lookup, MetadataCache};
use crate::config::MountConfig;
use crate::error::{FsError, FsResult};
use crate::remote::{DirEntry, FileKind, RemoteError, RemoteFs, RemotePath, RemoteResult, Stat};
use crate::staging::{Leftover, StagingArea};

pub use attr::IdMap;
use handle::{HandleTable, OpenFile};
pub use inode::{InodeNo, ROOT_INO};
pub use setattr::SetAttr;

/// Misses in one unlisted directory after which we list it instead of stat'ing.
const LIST_AFTER_MISSES: u32 = 2;

/// A found entry: attributes plus how long the kernel may trust them.
#[derive(Clone, Debug)]
pub struct Entry {
    pub attr: FileAttr,
    pub ttl: Duration,
    pub generation: u64,
}

/// Answer of `lookup`: found, or absent with the negative TTL the kernel may cache.
#[derive(Clone, Debug)]
pub enum Looked {
    Found(Entry),
    Absent { ttl: Duration },
}

/// Attributes with their TTL.
#[derive(Clone, Debug)]
pub struct Attr {
    pub attr: FileAttr,
    pub ttl: Duration,
}

/// Answer of `open`/`opendir`.
#[derive(Clone, Copy, Debug)]
pub struct Opened {
    pub fh: u64,
    /// FOPEN_KEEP_CACHE: the file is unchanged since the last open.
    pub keep_cache: bool,
    /// The remote version differs from one the kernel may hold attributes of (size!):
    /// the adapter invalidates them, or reads would stop at the old size.
    pub changed: bool,
}

/// Answer of `create`.
#[derive(Clone, Debug)]
pub struct Created {
    pub entry: Entry,
    pub opened: Opened,
}

/// One `readdir` item; `offset` is the cookie of the *next* item.
#[derive(Clone, Debug)]
pub struct DirItem {
    pub ino: InodeNo,
    pub offset: i64,
    pub kind: FileType,
    pub name: String,
    /// Filled by `readdirplus` (one lookup counted per item).
    pub entry: Option<Entry>,
}

/// Synthetic `statfs` numbers.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A staged file whose changes did not reach the remote.
#[derive(Clone, Debug)]
pub struct Unsent {
    pub remote: RemotePath,
    pub staged: std::path::PathBuf,
    pub cause: String,
}

type Flight<T> = Shared<BoxFuture<'static, RemoteResult<T>>>;
type Flights<T> = Mutex<HashMap<RemotePath, Flight<T>>>;

/// Runs `call` for `key` unless an identical call is in flight, in which case its result is
/// shared: a burst of lookups of one path costs one remote call.
async fn single_flight<T: Clone + Send + Sync + 'static>(
    flights: &Flights<T>,
    key: &RemotePath,
    call: impl FnOnce() -> BoxFuture<'static, RemoteResult<T>>,
) -> RemoteResult<T> {
    let flight = flights
        .lock()
        .entry(key.clone())
        .or_insert_with(|| call().shared())
        .clone();
    let result = flight.clone().await;
    let mut flights = flights.lock();
    // Only the flight just joined leaves: a newer one for the same key stays shared.
    if flights.get(key).is_some_and(|f| f.ptr_eq(&flight)) {
        flights.remove(key);
    }
    result
}

/// The filesystem core over one remote.
pub struct Filesystem<R: RemoteFs> {
    remote: Arc<R>,
    ids: IdMap,
    cache: MetadataCache,
    content: ContentCache,
    staging: StagingArea,
    inodes: inode::InodeTable,
    handles: HandleTable,
    files: Mutex<HashMap<InodeNo, Arc<OpenFile>>>,
    list_flights: Flights<Vec<DirEntry>>,
    stat_flights: Flights<Stat>,
    misses: Mutex<HashMap<RemotePath, u32>>,
    staged_objects: Mutex<HashMap<(RemotePath, u64, SystemTime), crate::remote::StagedObject>>,
    opened_versions: Mutex<HashMap<InodeNo, (u64, SystemTime)>>,
    /// Mode the remote gives a new file (learnt from the first upload's `stat`).
    new_file_perm: Mutex<Option<u32>>,
    /// Delay of the upload of small new files after their close (0: upload at close).
    writeback_delay: Duration,
    /// Files whose upload waits for the write-back delay, with their due time.
    writeback: Mutex<HashMap<InodeNo, (Arc<OpenFile>, std::time::Instant)>>,
    /// Unlinked files whose remote removal waits (`remove`).
    removals: remove::Removals,
    statfs: StatFs,
    leftovers: Vec<Leftover>,
    /// Until when the remote counts as unreachable: metadata answers come from the (stale)
    /// cache without asking it again (see `OFFLINE_GRACE`).
    offline_until: Mutex<Option<std::time::Instant>>,
    /// Large transfers in flight (progress for the log and `f7tfs status`).
    transfers: Arc<crate::status::Transfers>,
    /// Batched reads of small files (`read::Batches`).
    batches: read::Batches,
}

/// After a transient failure (unreachable, overloaded, deadline passed), metadata of paths
/// the cache knows is served stale for this long without asking the remote; then the next
/// call probes it again. A success ends it at once.
pub const OFFLINE_GRACE: Duration = Duration::from_secs(5);

/// Checks a name the kernel hands us: UTF-8, one component, nothing FirecREST cannot carry
/// (API.md section 3: `'` breaks the remote shell command; control characters and newlines
/// break `ls` parsing).
pub fn check_name(name: &OsStr) -> FsResult<&str> {
    let name = name
        .to_str()
        .ok_or_else(|| FsError::InvalidName(format!("not UTF-8: {name:?}")))?;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FsError::InvalidName(format!("not a file name: {name:?}")));
    }
    if name.len() > 255 {
        // ENAMETOOLONG like any local file system (pjdfstest *::enametoolong_component).
        return Err(FsError::NameTooLong(format!("{} bytes", name.len())));
    }
    if let Some(c) = name.chars().find(|c| *c == '\'' || c.is_control()) {
        return Err(FsError::InvalidName(format!(
            "{name:?} contains {c:?}, which FirecREST cannot carry"
        )));
    }
    Ok(name)
}

/// Whole seconds (what the remote stores).
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    crate::remote::memory::whole_seconds(t)
}

impl<R: RemoteFs> Filesystem<R> {
    /// Builds the core: staging area (leftovers of earlier runs are listed and logged),
    /// content cache, caches with `clock`, the root inode at `config.remote_root`.
    pub fn new(
        remote: R,
        config: &MountConfig,
        ids: IdMap,
        clock: Arc<dyn Clock>,
    ) -> FsResult<Self> {
        let root = RemotePath::new(&config.remote_root)?;
        let staging = StagingArea::new(&config.staging.dir)?;
        let leftovers = staging.leftovers()?;
        for l in &leftovers {
            tracing::warn!(
                remote = %l.manifest.remote_path,
                staged = %l.data_path.display(),
                state = ?l.manifest.state,
                cause = l.manifest.cause.as_deref().unwrap_or(""),
                "staged write from an earlier run never reached the remote; \
                 it is kept (f7tfs recover re-sends it)"
            );
        }
        let content = ContentCache::new(&config.cache.cache_dir, config.cache.cache_max_size)?;
        let bsize = 4096u64;
        Ok(Filesystem {
            remote: Arc::new(remote),
            ids,
            cache: MetadataCache::new(&config.cache, clock),
            content,
            staging,
            inodes: inode::InodeTable::new(root),
            handles: HandleTable::default(),
            files: Mutex::new(HashMap::new()),
            list_flights: Mutex::new(HashMap::new()),
            stat_flights: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            staged_objects: Mutex::new(HashMap::new()),
            opened_versions: Mutex::new(HashMap::new()),
            new_file_perm: Mutex::new(None),
            writeback_delay: config.writeback_delay,
            writeback: Mutex::new(HashMap::new()),
            removals: Default::default(),
            statfs: StatFs {
                blocks: config.statfs_total_bytes / bsize,
                bfree: config.statfs_free_bytes / bsize,
                bavail: config.statfs_free_bytes / bsize,
                files: config.statfs_total_inodes,
                ffree: config.statfs_free_inodes,
                bsize: bsize as u32,
                namelen: 255,
                frsize: bsize as u32,
            },
            leftovers,
            offline_until: Mutex::new(None),
            transfers: Arc::default(),
            batches: read::Batches::new(config.batch_reads),
        })
    }

    /// The remote client.
    pub fn remote(&self) -> &R {
        &self.remote
    }

    /// Large transfers in flight.
    pub fn transfers(&self) -> &Arc<crate::status::Transfers> {
        &self.transfers
    }

    /// Content cache hits, misses and use.
    pub fn content_stats(&self) -> crate::cache::content::ContentStats {
        self.content.stats()
    }

    /// Attribute cache (hits, misses).
    pub fn attr_hit_counts(&self) -> (u64, u64) {
        self.cache.hit_counts()
    }

    /// Staged writes the remote does not have yet: dirty or failed files of this run, and
    /// leftovers of earlier runs.
    pub fn staged_rows(&self) -> Vec<crate::status::StagedRow> {
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        let mut rows: Vec<crate::status::StagedRow> = files
            .iter()
            .filter_map(|f| {
                let m = f.meta();
                if !m.dirty || m.unlinked {
                    return None;
                }
                // The staged lock is held while an upload runs (or a write is staged); else
                // the manifest tells whether the last upload failed, and why.
                let (state, cause) = match f.staged.try_lock() {
                    Err(_) if m.upload_failures > 0 => ("retrying".to_string(), None),
                    Err(_) => ("uploading".to_string(), None),
                    Ok(g) => g
                        .as_ref()
                        .and_then(|sf| std::fs::read(sf.manifest_path()).ok())
                        .and_then(|t| serde_json::from_slice::<crate::staging::Manifest>(&t).ok())
                        .filter(|man| man.state == crate::staging::StagedState::Failed)
                        .map_or(("waiting".to_string(), None), |man| {
                            ("failed".to_string(), man.cause)
                        }),
                };
                Some(crate::status::StagedRow {
                    path: m.path.to_string(),
                    state,
                    size: m.staged_size.unwrap_or(0),
                    cause,
                })
            })
            .collect();
        rows.extend(self.leftovers.iter().map(|l| crate::status::StagedRow {
            path: l.manifest.remote_path.clone(),
            state: "earlier run".into(),
            size: l.manifest.size,
            cause: l.manifest.cause.clone(),
        }));
        rows
    }

    /// Staged writes of earlier runs found at startup.
    pub fn leftovers(&self) -> &[Leftover] {
        &self.leftovers
    }

    /// The staging directory.
    pub fn staging_dir(&self) -> &std::path::Path {
        self.staging.dir()
    }

    /// Inodes known (tests).
    pub fn inode_count(&self) -> usize {
        self.inodes.len()
    }

    // ----- helpers -------------------------------------------------------------------------

    fn path_of(&self, ino: InodeNo) -> FsResult<RemotePath> {
        self.inodes.path(ino).ok_or(FsError::UnknownInode(ino))
    }

    fn child(&self, parent: InodeNo, name: &OsStr) -> FsResult<RemotePath> {
        let name = check_name(name)?;
        Ok(self.path_of(parent)?.join(name)?)
    }

    fn entry(&self, path: &RemotePath, stat: &Stat) -> Entry {
        let ino = self.inodes.lookup(path);
        Entry {
            attr: attr::to_file_attr(ino, stat, &self.ids),
            ttl: self.cache.attr_ttl(),
            generation: 0,
        }
    }

    fn open_file_by_path(&self, path: &RemotePath) -> Option<Arc<OpenFile>> {
        let ino = self.inodes.peek(path)?;
        let f = self.files.lock().get(&ino).cloned()?;
        let m = f.meta.lock();
        (m.path == *path && !m.unlinked).then(|| f.clone())
    }

    /// Local attributes of an open file that must win over the remote's.
    fn local_stat(&self, path: &RemotePath) -> Option<Stat> {
        let f = self.open_file_by_path(path)?;
        let m = f.meta.lock();
        m.is_local().then(|| m.overlay())
    }

    /// A stat of the remote user's own new object, as our mutation knows it.
    fn own_stat(&self, kind: FileKind, perm: u32, size: u64, mtime: SystemTime) -> Stat {
        Stat {
            kind,
            perm: perm & 0o7777,
            uid: self.ids.remote_uid,
            gid: self.ids.remote_gid,
            size,
            mtime: whole_seconds(mtime),
            atime: None,
            ctime: None,
            ino: None,
            nlink: None,
        }
    }

    /// Whether the remote failed transiently within the last `OFFLINE_GRACE`.
    fn remote_offline(&self) -> bool {
        self.offline_until
            .lock()
            .is_some_and(|until| self.cache.now() < until)
    }

    /// Records how the last metadata call went (a transient failure starts the grace).
    fn note_remote(&self, err: Option<&RemoteError>) {
        match err {
            None => *self.offline_until.lock() = None,
            Some(e) if e.is_transient() => {
                let mut until = self.offline_until.lock();
                if until.is_none_or(|u| u <= self.cache.now()) {
                    tracing::warn!(
                        "FirecREST is unreachable ({e}); cached metadata is served stale for \
                         {} s before the next try",
                        OFFLINE_GRACE.as_secs()
                    );
                }
                *until = Some(self.cache.now() + OFFLINE_GRACE);
            }
            Some(_) => {}
        }
    }

    /// `list` of `dir`, coalesced with concurrent identical calls; fills the cache. While
    /// the remote is unreachable, the last listing is served (stale).
    async fn list_dir(&self, dir: &RemotePath) -> FsResult<Vec<DirEntry>> {
        if self.remote_offline() {
            if let Some(entries) = self.cache.listing_stale(dir) {
                return Ok(entries);
            }
        }
        let result = single_flight(&self.list_flights, dir, || {
            let (remote, dir) = (self.remote.clone(), dir.clone());
            async move { remote.list(&dir).await }.boxed()
        })
        .await;
        match result {
            Ok(mut entries) => {
                self.note_remote(None);
                // The hidden archives of batched reads and archive uploads are ours, and
                // short-lived: a listing never shows them.
                entries.retain(|e| !read::is_archive_name(&e.name));
                // Our unlinks waiting to be sent are gone already.
                entries.retain(|e| {
                    dir.join(&e.name)
                        .map_or(true, |p| !self.removal_pending(&p))
                });
                self.cache.put_listing(dir, &mut entries);
                self.misses.lock().remove(dir);
                Ok(entries)
            }
            Err(e) => {
                self.note_remote(Some(&e));
                if e.is_transient() {
                    if let Some(entries) = self.cache.listing_stale(dir) {
                        tracing::debug!(%dir, "remote unreachable: stale listing served");
                        return Ok(entries);
                    }
                }
                if matches!(e, RemoteError::NotFound(_)) {
                    self.cache.put_negative(dir);
                }
                Err(e.into())
            }
        }
    }

    /// `stat` of `path`, coalesced; fills the cache (negative on ENOENT).
    async fn stat_path(&self, path: &RemotePath) -> FsResult<Stat> {
        if self.removal_pending(path) {
            return Err(FsError::NotFound(path.to_string()));
        }
        if self.remote_offline() {
            if let Some(a) = self.cache.attr_stale(path) {
                return Ok(a.stat);
            }
        }
        let result = single_flight(&self.stat_flights, path, || {
            let (remote, path) = (self.remote.clone(), path.clone());
            async move { remote.stat(&path).await }.boxed()
        })
        .await;
        match result {
            Ok(stat) => {
                self.note_remote(None);
                Ok(self.cache.put_attr(path, stat, None))
            }
            Err(RemoteError::NotFound(m)) => {
                self.note_remote(None);
                self.cache.put_negative(path);
                Err(FsError::NotFound(m))
            }
            Err(e) => {
                self.note_remote(Some(&e));
                if e.is_transient() {
                    if let Some(a) = self.cache.attr_stale(path) {
                        tracing::debug!(%path, "remote unreachable: stale attributes served");
                        return Ok(a.stat);
                    }
                }
                Err(e.into())
            }
        }
    }

    /// Attributes of `path`: local open-file state, then the cache, then the remote.
    async fn resolve(&self, path: &RemotePath) -> FsResult<CachedAttr> {
        if let Some(stat) = self.local_stat(path) {
            return Ok(CachedAttr {
                stat,
                link_target: None,
            });
        }
        if self.removal_pending(path) {
            return Err(FsError::NotFound(path.to_string()));
        }
        match self.cache.lookup(path) {
            Lookup::Found(a) => return Ok(a),
            Lookup::Absent => return Err(FsError::NotFound(path.to_string())),
            Lookup::Unknown => {}
        }
        if self.remote_offline() {
            if let Some(answer) = self.resolve_stale(path) {
                return answer;
            }
        }
        match self.resolve_remote(path).await {
            Err(FsError::Remote(e)) if e.is_transient() => match self.resolve_stale(path) {
                Some(answer) => answer,
                None => Err(FsError::Remote(e)),
            },
            other => other,
        }
    }

    /// What the last listing of the parent says about `path` (the remote is unreachable):
    /// its attributes, or not found; `None` when the parent was never listed.
    fn resolve_stale(&self, path: &RemotePath) -> Option<FsResult<CachedAttr>> {
        let entries = self.cache.listing_stale(&path.parent()?)?;
        Some(
            match entries.into_iter().find(|e| e.name == path.file_name()) {
                Some(e) => Ok(CachedAttr {
                    stat: e.stat,
                    link_target: e.link_target,
                }),
                None => Err(FsError::NotFound(path.to_string())),
            },
        )
    }

    /// `resolve` past the cache: a listing of the parent after repeated misses, else a stat.
    async fn resolve_remote(&self, path: &RemotePath) -> FsResult<CachedAttr> {
        if let Some(parent) = path.parent().filter(|p| self.inodes.peek(p).is_some()) {
            let list_it = {
                let mut misses = self.misses.lock();
                if misses.len() > 10_000 {
                    misses.clear();
                }
                let n = misses.entry(parent.clone()).or_insert(0);
                *n += 1;
                *n >= LIST_AFTER_MISSES
            };
            if list_it {
                let entries = self.list_dir(&parent).await?;
                return match entries.iter().find(|e| e.name == path.file_name()) {
                    Some(e) => Ok(CachedAttr {
                        stat: e.stat.clone(),
                        link_target: e.link_target.clone(),
                    }),
                    None => Err(FsError::NotFound(path.to_string())),
                };
            }
        }
        let stat = self.stat_path(path).await?;
        Ok(self.cache.attr_stale(path).unwrap_or(CachedAttr {
            stat,
            link_target: None,
        }))
    }

    /// Fresh-enough attributes of an existing path, revalidated when the TTL ran out.
    async fn revalidate(&self, path: &RemotePath) -> FsResult<Stat> {
        if let Some(stat) = self.local_stat(path) {
            return Ok(stat);
        }
        match self.cache.attr(path) {
            Some(a) => Ok(a.stat),
            None => self.stat_path(path).await,
        }
    }

    // ----- namespace ops -------------------------------------------------------------------

    /// `lookup`: one kernel lookup counted when found.
    pub async fn lookup(&self, parent: InodeNo, name: &OsStr) -> FsResult<Looked> {
        let path = self.child(parent, name)?;
        match self.resolve(&path).await {
            Ok(a) => Ok(Looked::Found(self.entry(&path, &a.stat))),
            Err(FsError::NotFound(_)) | Err(FsError::Remote(RemoteError::NotFound(_))) => {
                Ok(Looked::Absent {
                    ttl: self.cache.negative_ttl(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// `forget`: the kernel dropped `n` lookups.
    pub fn forget(&self, ino: InodeNo, n: u64) {
        let open = self.files.lock().contains_key(&ino);
        self.inodes.forget(ino, n, open);
    }

    /// `getattr`.
    pub async fn getattr(&self, ino: InodeNo) -> FsResult<Attr> {
        let path = self.path_of(ino)?;
        if let Some(f) = self.files.lock().get(&ino).cloned() {
            let m = f.meta.lock();
            if m.is_local() || m.unlinked {
                let mut stat = m.overlay();
                if m.unlinked {
                    // Open but unlinked: no name left (pjdfstest unlink::open_file_not_freed).
                    stat.nlink = Some(0);
                }
                return Ok(Attr {
                    attr: attr::to_file_attr(ino, &stat, &self.ids),
                    ttl: self.cache.attr_ttl(),
                });
            }
        }
        let stat = match self.cache.attr(&path) {
            Some(a) => a.stat,
            None => self.stat_path(&path).await?,
        };
        Ok(Attr {
            attr: attr::to_file_attr(ino, &stat, &self.ids),
            ttl: self.cache.attr_ttl(),
        })
    }

    /// `readlink`: the cached target, else one call.
    pub async fn readlink(&self, ino: InodeNo) -> FsResult<String> {
        let path = self.path_of(ino)?;
        if let Some(a) = self.cache.attr(&path) {
            if a.stat.kind != FileKind::Symlink {
                return Err(FsError::InvalidArgument(format!("not a symlink: {path}")));
            }
            if let Some(t) = a.link_target {
                return Ok(t);
            }
        }
        let target = self.remote.read_link(&path).await?;
        if let Some(mut a) = self.cache.attr_stale(&path) {
            a.link_target = Some(target.clone());
            self.cache.put_attr(&path, a.stat, a.link_target);
        }
        Ok(target)
    }

    /// Our own change of an entry in `path`'s parent: the parent's mtime/ctime move on,
    /// its link count by `subdirs` (a directory made, removed or moved in or out).
    pub(crate) fn parent_changed(&self, path: &RemotePath, subdirs: i32) {
        if let Some(dir) = path.parent() {
            self.cache
                .touch_dir(&dir, whole_seconds(SystemTime::now()), subdirs);
        }
    }

    /// Our own metadata change of `path` (chmod, chown, truncate, rename): its ctime moves
    /// on, in the cache and on a staged file not yet sent.
    pub(crate) fn ctime_changed(&self, path: &RemotePath) {
        let now = whole_seconds(SystemTime::now());
        self.cache.touch_ctime(path, now);
        if let Some(f) = self.open_file_by_path(path) {
            f.meta.lock().base.ctime = Some(now);
        }
    }

    /// `mkdir`: one call (plus a chmod if the requested mode differs from the remote's).
    pub async fn mkdir(
        &self,
        parent: InodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        let path = self.child(parent, name)?;
        self.settle_removals(&path).await;
        if self.local_stat(&path).is_some() {
            return Err(FsError::Exists(path.to_string()));
        }
        let mut stat = self.remote.mkdir(&path).await?;
        let want = mode & !umask & 0o7777;
        if stat.perm != want {
            stat = self.remote.chmod(&path, want).await?;
        }
        self.cache.put_attr(&path, stat.clone(), None);
        self.cache.put_listing(&path, &mut []);
        self.parent_changed(&path, 1);
        Ok(self.entry(&path, &stat))
    }

    /// `mknod`: regular files only (created empty on the remote at once); others EPERM.
    pub async fn mknod(
        &self,
        parent: InodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> FsResult<Entry> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return Err(FsError::NotPermitted(
                "only regular files can be created".into(),
            ));
        }
        let created = self
            .create(parent, name, mode, umask, libc::O_WRONLY | libc::O_EXCL)
            .await?;
        self.release(created.opened.fh).await?;
        Ok(created.entry)
    }

    /// `unlink`: checks the type first (FirecREST's rm is recursive).
    pub async fn unlink(&self, parent: InodeNo, name: &OsStr) -> FsResult<()> {
        let path = self.child(parent, name)?;
        let local = self.open_file_by_path(&path);
        // An upload of this file in flight finishes first (it holds the staged lock): then
        // the file is on the remote and is removed there, not left behind.
        let staged = match &local {
            Some(f) => Some(f.staged.lock().await),
            None => None,
        };
        // Renamed away (with its directory) while we waited: not at `path` any more.
        if local.as_ref().is_some_and(|f| f.meta.lock().path != path) {
            return Err(FsError::NotFound(path.to_string()));
        }
        let on_remote = match &local {
            Some(f) => !f.meta.lock().new,
            None => true,
        };
        let mut deferred = false;
        if local.is_none() {
            let a = self.resolve(&path).await?;
            if a.stat.kind == FileKind::Dir {
                return Err(FsError::IsADirectory(path.to_string()));
            }
            deferred = self.defer_removal(&path, &a.stat);
        }
        if on_remote && !deferred {
            match self.remote.remove(&path).await {
                Ok(()) => {}
                Err(RemoteError::NotFound(_)) if local.is_some() => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(f) = &local {
            let mut m = f.meta.lock();
            m.unlinked = true;
            m.dirty = false;
        }
        // Its staged bytes are never to be sent: no manifest for `recover` to find.
        if let Some(sf) = staged.as_ref().and_then(|g| g.as_ref()) {
            if let Err(e) = sf.mark_clean() {
                tracing::warn!(%path, "cannot drop the staged manifest of an unlinked file: {e}");
            }
        }
        drop(staged);
        self.cache.remove(&path);
        self.inodes.unlink(&path);
        self.parent_changed(&path, 0);
        Ok(())
    }

    /// Whether `dir` has entries (local new files, a cached listing that has some, else one
    /// `list`: our queued removals do not count).
    async fn dir_has_entries(&self, dir: &RemotePath) -> FsResult<bool> {
        if !self.local_children(dir).is_empty() {
            return Ok(true);
        }
        if self.cache.is_empty_dir(dir) == Some(false) {
            return Ok(true);
        }
        // "Empty" is asked of the remote itself, never of a cached (or stale) listing: its
        // `rm` is recursive, and would take along a file a job wrote there a moment ago.
        // No answer, no removal.
        let mut entries = self.remote.list(dir).await?;
        entries.retain(|e| {
            !read::is_archive_name(&e.name)
                && dir
                    .join(&e.name)
                    .map_or(true, |p| !self.removal_pending(&p))
        });
        Ok(!entries.is_empty())
    }

    /// `rmdir`: ENOTEMPTY without calling rm when the directory has entries.
    pub async fn rmdir(&self, parent: InodeNo, name: &OsStr) -> FsResult<()> {
        let path = self.child(parent, name)?;
        let a = self.resolve(&path).await?;
        if a.stat.kind != FileKind::Dir {
            return Err(FsError::NotADirectory(path.to_string()));
        }
        // No queued removal is sent while the directory is checked and removed.
        let _gate = self.removal_gate().await;
        if self.dir_has_entries(&path).await? {
            return Err(FsError::NotEmpty(path.to_string()));
        }
        // The remote's `rm` is recursive: it takes our queued unlinks of entries with it.
        self.remote.remove(&path).await?;
        self.removals_done_below(&path);
        self.cache.remove(&path);
        self.inodes.unlink(&path);
        self.parent_changed(&path, -1);
        Ok(())
    }

    /// `symlink` (relative targets too: the client handles them).
    pub async fn symlink(
        &self,
        parent: InodeNo,
        name: &OsStr,
        target: &std::path::Path,
    ) -> FsResult<Entry> {
        let path = self.child(parent, name)?;
        self.settle_removals(&path).await;
        let target = target
            .to_str()
            .ok_or_else(|| FsError::InvalidName(format!("target not UTF-8: {target:?}")))?;
        if target.is_empty() || target.chars().any(|c| c == '\'' || c.is_control()) {
            return Err(FsError::InvalidName(format!(
                "symlink target {target:?} cannot be carried by FirecREST"
            )));
        }
        self.remote.symlink(target, &path).await?;
        let stat = self.own_stat(
            FileKind::Symlink,
            0o777,
            target.len() as u64,
            SystemTime::now(),
        );
        self.cache
            .put_attr(&path, stat.clone(), Some(target.to_string()));
        self.parent_changed(&path, 0);
        Ok(self.entry(&path, &stat))
    }

    /// `link`: hard links cannot be made through the API.
    pub async fn link(&self) -> FsResult<Entry> {
        Err(FsError::NotPermitted("hard links are not supported".into()))
    }

    /// `statfs`: large, stable synthetic numbers.
    pub fn statfs(&self) -> StatFs {
        self.statfs
    }

    /// Extended attributes are not supported (ENOTSUP, so `cp -a` goes on).
    pub fn xattr(&self) -> FsResult<()> {
        Err(FsError::XattrUnsupported)
    }

    /// Staged files that still hold changes the remote does not have.
    pub fn unsent(&self) -> Vec<RemotePath> {
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        files
            .iter()
            .filter_map(|f| {
                let m = f.meta.lock();
                (m.dirty && !m.unlinked).then(|| m.path.clone())
            })
            .collect()
    }

    /// At unmount: uploads every dirty file (each bounded by `wait`), returns what stayed
    /// staged.
    pub async fn shutdown(&self, wait: Duration) -> Vec<Unsent> {
        match tokio::time::timeout(wait, self.removal_tick(true)).await {
            Ok(unsent) => {
                for path in unsent {
                    tracing::error!(%path, "removed in the mount, but the remote could not be reached: the file stays there");
                }
            }
            Err(_) => {
                let left = self.pending_removals().len();
                tracing::error!("removals still running after {wait:?}: files removed in the mount may stay on the remote ({left} not sent)");
            }
        }
        self.writeback.lock().clear();
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        let mut unsent = Vec::new();
        for f in files {
            let (dirty, path) = {
                let m = f.meta.lock();
                (m.dirty && !m.unlinked, m.path.clone())
            };
            if !dirty {
                continue;
            }
            let result = tokio::time::timeout(wait, self.upload(&f, true)).await;
            let cause = match result {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("upload still running after {wait:?}"),
            };
            let staged = match f.staged.try_lock() {
                Ok(g) => g
                    .as_ref()
                    .map(|s| s.data_path().to_path_buf())
                    .unwrap_or_default(),
                Err(_) => self.staging.dir().to_path_buf(),
            };
            unsent.push(Unsent {
                remote: path,
                staged,
                cause,
            });
        }
        unsent
    }
}
