//! `MetadataCache`: attributes, directory listings and negative entries, each with its own
//! TTL read from an injectable `Clock`; and (in `content`) the on-disk cache of whole small
//! files keyed by path+size+mtime.
//!
//! Invariants: a listing is only trusted while its TTL runs and then answers "absent" for
//! every name it does not hold; our own mutations (create, mkdir, unlink, rename, setattr,
//! uploads) update the cache at once (read-your-writes), remote changes show after the TTL.
//! One `parking_lot` mutex guards all maps; it is never held across an `.await`.
//!
//! Modification times the API cannot set (directories, symlinks, large files) are kept for
//! the session (`keep_mtime`): every later answer of the remote about that path shows the
//! kept time as long as the remote object is unchanged (same size and mtime as when the time
//! was set; for directories, as first seen after it was set or after our own delayed uploads
//! into it landed). A different remote mtime, our own entry change in a directory, or removal
//! ends it.

pub mod clock;
pub mod content;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use crate::config::CacheConfig;
use crate::remote::{DirEntry, FileKind, RemotePath, Stat};

pub use clock::{Clock, ManualClock, SystemClock};

/// Entries kept before expired ones are purged (a soft bound on memory).
const MAX_ATTRS: usize = 500_000;

/// What the cache knows about one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedAttr {
    pub stat: Stat,
    /// The symlink's target, when the path is a symlink and we have seen it.
    pub link_target: Option<String>,
}

/// The answer to "does `parent/name` exist?" from the cache alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Found(CachedAttr),
    /// Known absent (negative entry or a fresh listing without the name).
    Absent,
    /// The cache cannot tell; ask the remote.
    Unknown,
}

struct AttrEntry {
    attr: CachedAttr,
    expires: Instant,
}

struct Listing {
    names: BTreeSet<String>,
    expires: Instant,
}

/// A modification time the remote cannot store, shown while the remote object is `base`
/// (size, remote mtime); `None`: adopt what the remote shows next.
struct KeptMtime {
    mtime: SystemTime,
    base: Option<(u64, SystemTime)>,
}

#[derive(Default)]
struct Inner {
    attrs: HashMap<RemotePath, AttrEntry>,
    negative: HashMap<RemotePath, Instant>,
    dirs: HashMap<RemotePath, Listing>,
    kept: HashMap<RemotePath, KeptMtime>,
}

impl Inner {
    /// Shows a kept mtime on `stat` (an answer about `path`) while the remote is unchanged.
    fn apply_kept(&mut self, path: &RemotePath, stat: &mut Stat) {
        let Some(k) = self.kept.get_mut(path) else {
            return;
        };
        if stat.mtime == k.mtime {
            return;
        }
        let now = (stat.size, stat.mtime);
        match k.base {
            None => k.base = Some(now),
            Some(b) if b == now || b.1 == now.1 && stat.kind == FileKind::Dir => {}
            Some(_) => {
                self.kept.remove(path);
                return;
            }
        }
        stat.mtime = k.mtime;
    }
}

/// The metadata cache of one mount.
pub struct MetadataCache {
    clock: Arc<dyn Clock>,
    attr_ttl: Duration,
    negative_ttl: Duration,
    dir_ttl: Duration,
    inner: Mutex<Inner>,
    /// Lookups answered by the cache / not (for `f7tfs status`).
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl MetadataCache {
    /// An empty cache with the TTLs of `config`.
    pub fn new(config: &CacheConfig, clock: Arc<dyn Clock>) -> Self {
        MetadataCache {
            clock,
            attr_ttl: config.attr_ttl,
            negative_ttl: config.negative_ttl,
            dir_ttl: config.dir_ttl,
            inner: Mutex::new(Inner::default()),
            hits: Default::default(),
            misses: Default::default(),
        }
    }

    /// (hits, misses) of `attr` and `lookup` so far.
    pub fn hit_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    fn count(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The attribute TTL (also what the kernel is told).
    pub fn attr_ttl(&self) -> Duration {
        self.attr_ttl
    }

    /// The negative TTL (also the kernel's TTL for negative entries).
    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// "Now" as the cache sees it.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Fresh attributes of `path`, if any.
    pub fn attr(&self, path: &RemotePath) -> Option<CachedAttr> {
        let now = self.clock.now();
        let inner = self.inner.lock();
        let found = inner
            .attrs
            .get(path)
            .filter(|e| e.expires > now)
            .map(|e| e.attr.clone());
        drop(inner);
        self.count(found.is_some());
        found
    }

    /// Attributes of `path` even if expired (to compare versions after a revalidation).
    pub fn attr_stale(&self, path: &RemotePath) -> Option<CachedAttr> {
        self.inner.lock().attrs.get(path).map(|e| e.attr.clone())
    }

    /// What the cache alone says about `path`.
    pub fn lookup(&self, path: &RemotePath) -> Lookup {
        let answer = self.lookup_inner(path);
        self.count(!matches!(answer, Lookup::Unknown));
        answer
    }

    fn lookup_inner(&self, path: &RemotePath) -> Lookup {
        let now = self.clock.now();
        let inner = self.inner.lock();
        if let Some(e) = inner.attrs.get(path).filter(|e| e.expires > now) {
            return Lookup::Found(e.attr.clone());
        }
        if inner.negative.get(path).is_some_and(|t| *t > now) {
            return Lookup::Absent;
        }
        if let Some(parent) = path.parent() {
            if let Some(l) = inner.dirs.get(&parent).filter(|l| l.expires > now) {
                if !l.names.contains(path.file_name()) {
                    return Lookup::Absent;
                }
            }
        }
        Lookup::Unknown
    }

    /// Records attributes learnt from the remote or from our own mutation.
    /// Returns the attributes as recorded (with a kept mtime shown).
    pub fn put_attr(&self, path: &RemotePath, mut stat: Stat, link_target: Option<String>) -> Stat {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        Self::purge_if_big(&mut inner, now);
        inner.negative.remove(path);
        inner.apply_kept(path, &mut stat);
        let link_target = link_target.or_else(|| {
            inner
                .attrs
                .get(path)
                .filter(|e| e.attr.stat.kind == stat.kind && e.attr.stat.size == stat.size)
                .and_then(|e| e.attr.link_target.clone())
        });
        inner.attrs.insert(
            path.clone(),
            AttrEntry {
                attr: CachedAttr {
                    stat: stat.clone(),
                    link_target,
                },
                expires: now + self.attr_ttl,
            },
        );
        if let Some(parent) = path.parent() {
            if let Some(l) = inner.dirs.get_mut(&parent) {
                l.names.insert(path.file_name().to_string());
            }
        }
        stat
    }

    /// Records a whole listing of `dir`: every entry's attributes and the set of names (kept
    /// mtimes are shown in `entries` too).
    pub fn put_listing(&self, dir: &RemotePath, entries: &mut [DirEntry]) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        Self::purge_if_big(&mut inner, now);
        let mut names = BTreeSet::new();
        for e in entries {
            let Ok(path) = dir.join(&e.name) else {
                continue;
            };
            inner.negative.remove(&path);
            inner.apply_kept(&path, &mut e.stat);
            inner.attrs.insert(
                path,
                AttrEntry {
                    attr: CachedAttr {
                        stat: e.stat.clone(),
                        link_target: e.link_target.clone(),
                    },
                    expires: now + self.attr_ttl,
                },
            );
            names.insert(e.name.clone());
        }
        inner.dirs.insert(
            dir.clone(),
            Listing {
                names,
                expires: now + self.dir_ttl,
            },
        );
    }

    /// A fresh listing of `dir` with fresh attributes for every entry, if the cache has one.
    pub fn listing(&self, dir: &RemotePath) -> Option<Vec<(String, CachedAttr)>> {
        let now = self.clock.now();
        let inner = self.inner.lock();
        let l = inner.dirs.get(dir).filter(|l| l.expires > now)?;
        let mut out = Vec::with_capacity(l.names.len());
        for name in &l.names {
            let path = dir.join(name).ok()?;
            let e = inner.attrs.get(&path).filter(|e| e.expires > now)?;
            out.push((name.clone(), e.attr.clone()));
        }
        Some(out)
    }

    /// The last listing of `dir` even if expired, with whatever attributes are still known
    /// (served while the remote is unreachable).
    pub fn listing_stale(&self, dir: &RemotePath) -> Option<Vec<DirEntry>> {
        let inner = self.inner.lock();
        let l = inner.dirs.get(dir)?;
        let mut out = Vec::with_capacity(l.names.len());
        for name in &l.names {
            let path = dir.join(name).ok()?;
            let e = inner.attrs.get(&path)?;
            out.push(DirEntry {
                name: name.clone(),
                stat: e.attr.stat.clone(),
                link_target: e.attr.link_target.clone(),
            });
        }
        Some(out)
    }

    /// Whether a fresh listing says `dir` has no entries (`None`: unknown).
    pub fn is_empty_dir(&self, dir: &RemotePath) -> Option<bool> {
        let now = self.clock.now();
        let inner = self.inner.lock();
        inner
            .dirs
            .get(dir)
            .filter(|l| l.expires > now)
            .map(|l| l.names.is_empty())
    }

    /// Records that `path` does not exist.
    pub fn put_negative(&self, path: &RemotePath) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        inner.attrs.remove(path);
        inner.negative.insert(path.clone(), now + self.negative_ttl);
        if let Some(parent) = path.parent() {
            if let Some(l) = inner.dirs.get_mut(&parent) {
                l.names.remove(path.file_name());
            }
        }
    }

    /// Our own removal of `path` (and everything below it).
    pub fn remove(&self, path: &RemotePath) {
        {
            let mut inner = self.inner.lock();
            inner.attrs.retain(|p, _| !p.starts_with(path));
            inner.dirs.retain(|p, _| !p.starts_with(path));
            inner.kept.retain(|p, _| !p.starts_with(path));
            inner
                .negative
                .retain(|p, _| !p.starts_with(path) || p == path);
        }
        self.put_negative(path);
    }

    /// Forgets the listing of `dir` (the next readdir asks the remote).
    pub fn forget_listing(&self, dir: &RemotePath) {
        self.inner.lock().dirs.remove(dir);
    }

    /// Stops trusting what we know about `path` itself (e.g. after a failed upload): the next
    /// lookup asks the remote, but the attributes stay for the stale answers given while the
    /// remote is unreachable (a listing of the directory keeps working offline).
    pub fn invalidate(&self, path: &RemotePath) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        if let Some(e) = inner.attrs.get_mut(path) {
            e.expires = e.expires.min(now);
        }
        inner.negative.remove(path);
    }

    /// Our own entry change inside `dir` (create, mkdir, unlink, rmdir, symlink, rename):
    /// its cached mtime and ctime become `when`, as the remote's do, and its link count moves
    /// by `subdirs` (each subdirectory's `..`), so `stat` of the directory right after shows
    /// the change (POSIX; the kernel asks again at once).
    pub fn touch_dir(&self, dir: &RemotePath, when: SystemTime, subdirs: i32) {
        let mut inner = self.inner.lock();
        inner.kept.remove(dir);
        if let Some(e) = inner.attrs.get_mut(dir) {
            let st = &mut e.attr.stat;
            st.mtime = st.mtime.max(when);
            st.ctime = Some(st.ctime.map_or(when, |c| c.max(when)));
            if subdirs != 0 {
                let n = i64::from(st.nlink.unwrap_or(2)) + i64::from(subdirs);
                st.nlink = Some(u32::try_from(n.max(2)).unwrap_or(2));
            }
        }
    }

    /// Our own metadata change of `path` (chmod, chown, truncate, utimens): its cached ctime
    /// becomes `when`.
    pub fn touch_ctime(&self, path: &RemotePath, when: SystemTime) {
        if let Some(e) = self.inner.lock().attrs.get_mut(path) {
            let st = &mut e.attr.stat;
            st.ctime = Some(st.ctime.map_or(when, |c| c.max(when)).max(st.mtime));
        }
    }

    /// Forgets the listing of `dir`.
    pub fn invalidate_dir(&self, dir: &RemotePath) {
        self.inner.lock().dirs.remove(dir);
    }

    /// Our own rename: moves attributes and listings of `from`'s subtree under `to`.
    pub fn rename(&self, from: &RemotePath, to: &RemotePath) {
        let now = self.clock.now();
        let mut inner = self.inner.lock();
        // Whatever was at `to` is replaced.
        inner.attrs.retain(|p, _| !p.starts_with(to));
        inner.dirs.retain(|p, _| !p.starts_with(to));
        let moved: Vec<RemotePath> = inner
            .attrs
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in moved {
            if let (Some(e), Some(new)) = (inner.attrs.remove(&old), rebase(&old, from, to)) {
                inner.attrs.insert(new, e);
            }
        }
        let moved: Vec<RemotePath> = inner
            .dirs
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in moved {
            if let (Some(l), Some(new)) = (inner.dirs.remove(&old), rebase(&old, from, to)) {
                inner.dirs.insert(new, l);
            }
        }
        inner.kept.retain(|p, _| !p.starts_with(to));
        let moved: Vec<RemotePath> = inner
            .kept
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for old in moved {
            if let (Some(k), Some(new)) = (inner.kept.remove(&old), rebase(&old, from, to)) {
                inner.kept.insert(new, k);
            }
        }
        inner.negative.retain(|p, _| !p.starts_with(to));
        inner.negative.insert(from.clone(), now + self.negative_ttl);
        if let Some(parent) = from.parent() {
            if let Some(l) = inner.dirs.get_mut(&parent) {
                l.names.remove(from.file_name());
            }
        }
        if let Some(parent) = to.parent() {
            if let Some(l) = inner.dirs.get_mut(&parent) {
                l.names.insert(to.file_name().to_string());
            }
        }
    }

    /// Keeps `mtime` for `path` for the session (the API cannot set it), while the remote
    /// object stays `base` (its size and remote mtime now; `None`: as the remote shows it
    /// next, for directories whose cached mtime may be our own estimate).
    pub fn keep_mtime(
        &self,
        path: &RemotePath,
        mtime: SystemTime,
        base: Option<(u64, SystemTime)>,
    ) {
        let mut inner = self.inner.lock();
        // Set again: the remote object is still the one first kept.
        let base = inner.kept.get(path).map_or(base, |k| k.base);
        inner.kept.insert(path.clone(), KeptMtime { mtime, base });
        if let Some(e) = inner.attrs.get_mut(path) {
            e.attr.stat.mtime = mtime;
        }
    }

    /// Our own delayed changes inside `dir` reached the remote (its remote mtime moved on
    /// because of them): a kept mtime of `dir` adopts the next remote answer.
    pub fn own_changes_landed(&self, dir: &RemotePath) {
        if let Some(k) = self.inner.lock().kept.get_mut(dir) {
            k.base = None;
        }
    }

    fn purge_if_big(inner: &mut Inner, now: Instant) {
        if inner.attrs.len() < MAX_ATTRS {
            return;
        }
        inner.attrs.retain(|_, e| e.expires > now);
        inner.negative.retain(|_, t| *t > now);
        inner.dirs.retain(|_, l| l.expires > now);
        if inner.attrs.len() >= MAX_ATTRS {
            inner.attrs.clear();
            inner.dirs.clear();
        }
    }
}

/// `path` with its prefix `from` replaced by `to`.
pub fn rebase(path: &RemotePath, from: &RemotePath, to: &RemotePath) -> Option<RemotePath> {
    if path == from {
        return Some(to.clone());
    }
    let rest = path.as_str().strip_prefix(from.as_str())?;
    let rest = if from.as_str() == "/" {
        rest
    } else {
        rest.strip_prefix('/')?
    };
    RemotePath::new(&format!("{}/{}", to.as_str(), rest)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::FileKind;
    use std::time::SystemTime;

    fn p(s: &str) -> RemotePath {
        RemotePath::new(s).unwrap()
    }

    fn stat(kind: FileKind, size: u64) -> Stat {
        Stat {
            kind,
            perm: 0o644,
            uid: 1,
            gid: 1,
            size,
            mtime: SystemTime::UNIX_EPOCH,
            atime: None,
            ctime: None,
            ino: None,
            nlink: None,
        }
    }

    fn cache(clock: &ManualClock) -> MetadataCache {
        let cfg = CacheConfig {
            attr_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(2),
            dir_ttl: Duration::from_secs(5),
            ..CacheConfig::default()
        };
        MetadataCache::new(&cfg, Arc::new(clock.clone()))
    }

    #[test]
    fn listing_answers_absent_until_it_expires() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        let e = DirEntry {
            name: "a".into(),
            stat: stat(FileKind::File, 3),
            link_target: None,
        };
        c.put_listing(&p("/d"), &mut [e]);
        assert!(matches!(c.lookup(&p("/d/a")), Lookup::Found(_)));
        assert_eq!(c.lookup(&p("/d/b")), Lookup::Absent);
        assert_eq!(c.listing(&p("/d")).unwrap().len(), 1);
        clock.advance(Duration::from_secs(6));
        assert_eq!(c.lookup(&p("/d/b")), Lookup::Unknown);
        assert_eq!(c.lookup(&p("/d/a")), Lookup::Unknown);
        assert!(c.listing(&p("/d")).is_none());
    }

    #[test]
    fn negative_entries_expire() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        c.put_negative(&p("/x"));
        assert_eq!(c.lookup(&p("/x")), Lookup::Absent);
        clock.advance(Duration::from_secs(3));
        assert_eq!(c.lookup(&p("/x")), Lookup::Unknown);
    }

    #[test]
    fn rename_moves_subtree_and_updates_listings() {
        let clock = ManualClock::new();
        let c = cache(&clock);
        c.put_listing(&p("/"), &mut []);
        c.put_attr(&p("/a"), stat(FileKind::Dir, 0), None);
        c.put_attr(&p("/a/f"), stat(FileKind::File, 1), None);
        c.rename(&p("/a"), &p("/b"));
        assert!(matches!(c.lookup(&p("/b/f")), Lookup::Found(_)));
        assert_eq!(c.lookup(&p("/a")), Lookup::Absent);
        let names: Vec<String> = c
            .listing(&p("/"))
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(names, vec!["b".to_string()]);
    }

    #[test]
    fn zero_ttl_never_answers_from_cache() {
        let clock = ManualClock::new();
        let cfg = CacheConfig {
            attr_ttl: Duration::ZERO,
            negative_ttl: Duration::ZERO,
            dir_ttl: Duration::ZERO,
            ..CacheConfig::default()
        };
        let c = MetadataCache::new(&cfg, Arc::new(clock));
        c.put_attr(&p("/a"), stat(FileKind::File, 1), None);
        assert_eq!(c.lookup(&p("/a")), Lookup::Unknown);
    }

    #[test]
    fn rebase_paths() {
        assert_eq!(
            rebase(&p("/a/b/c"), &p("/a"), &p("/x")).unwrap(),
            p("/x/b/c")
        );
        assert_eq!(rebase(&p("/ab"), &p("/a"), &p("/x")), None);
        assert_eq!(rebase(&p("/a"), &p("/a"), &p("/x")).unwrap(), p("/x"));
    }
}
