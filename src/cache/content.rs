//! `ContentCache`: file content on local disk, keyed by (path, size, mtime), bounded by size
//! with LRU eviction of whole entries. Small files are stored whole (`put`/`get`); large files
//! are stored sparsely as their ranges arrive (`write_range`/`read_range`): each entry is a
//! sparse file of the version's size plus the set of byte ranges present, so a later full
//! read does not refetch what a partial one brought, and a reopened unchanged file reads from
//! disk. A changed file (other size or mtime) simply misses; stale entries age out.
//!
//! Not persisted across mounts: each mount uses its own session directory below the
//! configured cache dir, removed on drop; directories of dead sessions are removed at startup.
//! (A (path, size, mtime) key is only as good as the remote's one-second mtime: a rewrite of
//! the same size within the same second is invisible to it. Inside one mount the attribute TTL
//! and our own writes bound that window; across mounts it would not be bounded.)
//!
//! Entries are files with a unique name per entry generation: an evicted file is unlinked,
//! and a reader or writer that still holds it open works on the old inode, never on a newer
//! entry's file. One `parking_lot` mutex guards the index; file I/O happens outside it.

use std::fs;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::remote::RemotePath;

/// Sorted, disjoint, non-adjacent `[start, end)` ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Adds `[start, end)`; returns how many bytes were not present before.
    pub fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let before = self.total();
        let (mut s, mut e) = (start, end);
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(a, b) in &self.0 {
            if b < s || a > e {
                out.push((a, b));
            } else {
                s = s.min(a);
                e = e.max(b);
            }
        }
        out.push((s, e));
        out.sort_unstable();
        self.0 = out;
        self.total() - before
    }

    /// Whether `[start, end)` is entirely present.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        start >= end || self.0.iter().any(|&(a, b)| a <= start && end <= b)
    }

    /// Bytes present.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }
}

struct Entry {
    /// File name in the session directory (unique per entry generation).
    file: String,
    present: RangeSet,
}

struct Index {
    lru: LruCache<String, Entry>,
    used: u64,
}

/// Hit and miss counters of the content cache (reads served from disk or not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContentStats {
    pub hits: u64,
    pub misses: u64,
    /// Bytes held on disk.
    pub used: u64,
    /// The bound.
    pub max_size: u64,
}

/// The bounded on-disk content cache of one mount.
pub struct ContentCache {
    dir: PathBuf,
    max_size: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ContentCache {
    /// Opens (creates) a session directory below `root`, cleaning dead sessions' leftovers.
    pub fn new(root: &Path, max_size: u64) -> std::io::Result<Self> {
        fs::create_dir_all(root)?;
        if let Ok(entries) = fs::read_dir(root) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if let Some(pid) = name
                    .strip_prefix("session-")
                    .and_then(|r| r.split('-').next())
                {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        let _ = fs::remove_dir_all(e.path());
                    }
                }
            }
        }
        let dir = root.join(format!(
            "session-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&dir)?;
        Ok(ContentCache {
            dir,
            max_size,
            index: Mutex::new(Index {
                lru: LruCache::unbounded(),
                used: 0,
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn key(path: &RemotePath, size: u64, mtime: SystemTime) -> String {
        let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut h = Sha256::new();
        h.update(path.as_str().as_bytes());
        h.update(size.to_le_bytes());
        h.update(secs.to_le_bytes());
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn fresh_name(key: &str) -> String {
        format!("{key}-{}", uuid::Uuid::new_v4().simple())
    }

    fn count(&self, hit: bool) {
        let c = if hit { &self.hits } else { &self.misses };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// The cached file of this version when it is complete (marks it recently used).
    pub fn get(&self, path: &RemotePath, size: u64, mtime: SystemTime) -> Option<PathBuf> {
        let key = Self::key(path, size, mtime);
        let mut index = self.index.lock();
        let found = index
            .lru
            .get(&key)
            .filter(|e| e.present.covers(0, size))
            .map(|e| self.dir.join(&e.file));
        drop(index);
        self.count(found.is_some());
        found
    }

    /// Whether this version's whole content is cached (no hit or miss counted, recency
    /// unchanged).
    pub fn contains(&self, path: &RemotePath, size: u64, mtime: SystemTime) -> bool {
        let key = Self::key(path, size, mtime);
        self.index
            .lock()
            .lru
            .peek(&key)
            .is_some_and(|e| e.present.covers(0, size))
    }

    /// Removes LRU entries until the bound holds; returns the files to delete.
    fn evict(&self, index: &mut Index) -> Vec<String> {
        let mut gone = Vec::new();
        while index.used > self.max_size {
            match index.lru.pop_lru() {
                Some((_, e)) => {
                    index.used -= e.present.total();
                    gone.push(e.file);
                }
                None => break,
            }
        }
        gone
    }

    fn remove_files(&self, files: Vec<String>) {
        for f in files {
            let _ = fs::remove_file(self.dir.join(f));
        }
    }

    /// Stores a copy of file `src` (`size` bytes) as this version's whole content (our own
    /// upload of a large file: reading it back needs no transfer). Not kept beyond the bound.
    pub fn put_file(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
        src: &Path,
    ) -> std::io::Result<Option<PathBuf>> {
        if size > self.max_size {
            self.forget(path, size, mtime);
            return Ok(None);
        }
        let (key, name, dest, tmp) = self.new_entry_paths(path, size, mtime);
        let copied = fs::copy(src, &tmp).and_then(|n| {
            if n == size {
                Ok(())
            } else {
                Err(std::io::Error::other(format!(
                    "copied {n} bytes, expected {size}"
                )))
            }
        });
        if let Err(e) = copied {
            let _ = fs::remove_file(&tmp);
            self.forget(path, size, mtime);
            return Err(e);
        }
        fs::rename(&tmp, &dest)?;
        Ok(self.adopt(key, name, size).then_some(dest))
    }

    /// Key, file name, final path and temporary path of a new entry for this version.
    fn new_entry_paths(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
    ) -> (String, String, PathBuf, PathBuf) {
        let key = Self::key(path, size, mtime);
        let name = Self::fresh_name(&key);
        let dest = self.dir.join(&name);
        let tmp = self
            .dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        (key, name, dest, tmp)
    }

    /// Records `file` (already in place) as the whole content of `key`; evicts beyond the
    /// bound; whether the entry is kept.
    fn adopt(&self, key: String, file: String, size: u64) -> bool {
        let mut present = RangeSet::default();
        present.insert(0, size);
        let (gone, kept) = {
            let mut index = self.index.lock();
            let mut gone = Vec::new();
            if let Some(old) = index.lru.pop(&key) {
                index.used -= old.present.total();
                gone.push(old.file);
            }
            index.used += size;
            index.lru.put(key.clone(), Entry { file, present });
            index.lru.promote(&key);
            gone.extend(self.evict(&mut index));
            let kept = index.lru.contains(&key);
            (gone, kept)
        };
        self.remove_files(gone);
        kept
    }

    /// Stores `data` as this version's whole content; returns where it lives. Evicts the
    /// least recently used entries beyond the size bound. A file larger than the bound is not
    /// kept.
    pub fn put(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
        data: &[u8],
    ) -> std::io::Result<Option<PathBuf>> {
        if data.len() as u64 > self.max_size {
            return Ok(None);
        }
        let (key, name, dest, tmp) = self.new_entry_paths(path, size, mtime);
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
        }
        fs::rename(&tmp, &dest)?;
        Ok(self.adopt(key, name, data.len() as u64).then_some(dest))
    }

    /// Drops this version's entry (a same-size rewrite within the mtime's second looks like
    /// the version cached before it).
    pub fn forget(&self, path: &RemotePath, size: u64, mtime: SystemTime) {
        let key = Self::key(path, size, mtime);
        let mut index = self.index.lock();
        let Some(old) = index.lru.pop(&key) else {
            return;
        };
        index.used -= old.present.total();
        drop(index);
        self.remove_files(vec![old.file]);
    }

    /// `len` bytes at `offset` of this version when they are all on disk (shorter at EOF).
    pub fn read_range(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
        offset: u64,
        len: u64,
    ) -> Option<Vec<u8>> {
        let end = offset.saturating_add(len).min(size);
        if offset >= end {
            return None;
        }
        let key = Self::key(path, size, mtime);
        let file = {
            let mut index = self.index.lock();
            index
                .lru
                .get(&key)
                .filter(|e| e.present.covers(offset, end))
                .map(|e| e.file.clone())
        };
        let data = file.and_then(|name| {
            let f = fs::File::open(self.dir.join(name)).ok()?;
            let mut buf = vec![0; (end - offset) as usize];
            f.read_exact_at(&mut buf, offset).ok()?;
            Some(buf)
        });
        self.count(data.is_some());
        data
    }

    /// Whether `[offset, offset + len)` of this version is on disk (no use counted).
    pub fn has_range(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
        offset: u64,
        len: u64,
    ) -> bool {
        let end = offset.saturating_add(len).min(size);
        let key = Self::key(path, size, mtime);
        self.index
            .lock()
            .lru
            .peek(&key)
            .is_some_and(|e| e.present.covers(offset, end))
    }

    /// Records `data` at `offset` of this version (a sparse file of `size` bytes). Versions
    /// larger than the bound are not kept.
    pub fn write_range(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        let end = (offset + data.len() as u64).min(size);
        if size > self.max_size || offset >= end {
            return Ok(());
        }
        let data = &data[..(end - offset) as usize];
        let key = Self::key(path, size, mtime);
        let (name, created) = {
            let mut index = self.index.lock();
            match index.lru.get(&key) {
                Some(e) if e.present.covers(offset, end) => return Ok(()),
                Some(e) => (e.file.clone(), false),
                None => {
                    let name = Self::fresh_name(&key);
                    index.lru.put(
                        key.clone(),
                        Entry {
                            file: name.clone(),
                            present: RangeSet::default(),
                        },
                    );
                    (name, true)
                }
            }
        };
        let file_path = self.dir.join(&name);
        let written = (|| {
            let f = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&file_path)?;
            if created {
                f.set_len(size)?;
            }
            f.write_all_at(data, offset)
        })();
        let mut index = self.index.lock();
        let same = index.lru.peek(&key).is_some_and(|e| e.file == name);
        if written.is_err() || !same {
            if same && created {
                index.lru.pop(&key);
            }
            drop(index);
            if !same {
                // Evicted meanwhile: the file is an orphan.
                let _ = fs::remove_file(&file_path);
            }
            return written;
        }
        let added = index
            .lru
            .get_mut(&key)
            .map_or(0, |e| e.present.insert(offset, end));
        index.used += added;
        // Others go first; this entry only if it alone is over the bound.
        index.lru.promote(&key);
        let gone = self.evict(&mut index);
        drop(index);
        self.remove_files(gone);
        Ok(())
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.index.lock().used
    }

    /// The size bound.
    pub fn max_size(&self) -> u64 {
        self.max_size
    }

    /// Hits, misses, use and bound.
    pub fn stats(&self) -> ContentStats {
        ContentStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            used: self.used(),
            max_size: self.max_size,
        }
    }
}

impl Drop for ContentCache {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_by_version_and_bounded() {
        let root = tempfile::tempdir().unwrap();
        let c = ContentCache::new(root.path(), 10).unwrap();
        let p = RemotePath::new("/f").unwrap();
        let t = UNIX_EPOCH;
        c.put(&p, 6, t, b"abcdef").unwrap();
        assert!(c.get(&p, 6, t).is_some());
        assert!(c.get(&p, 7, t).is_none());
        let q = RemotePath::new("/g").unwrap();
        c.put(&q, 6, t, b"ghijkl").unwrap();
        assert!(c.get(&p, 6, t).is_none(), "evicted by LRU");
        assert_eq!(fs::read(c.get(&q, 6, t).unwrap()).unwrap(), b"ghijkl");
        assert_eq!(c.used(), 6);
        assert!(c.put(&q, 20, t, &[0; 20]).unwrap().is_none());
        // Only the live entry's file is on disk.
        let files = fs::read_dir(&c.dir).unwrap().count();
        assert_eq!(files, 1);
    }

    #[test]
    fn ranges_accumulate_into_a_sparse_copy() {
        let root = tempfile::tempdir().unwrap();
        let c = ContentCache::new(root.path(), 1000).unwrap();
        let p = RemotePath::new("/big").unwrap();
        let t = UNIX_EPOCH;
        let data: Vec<u8> = (0..100u8).collect();
        assert!(c.read_range(&p, 100, t, 0, 10).is_none());
        c.write_range(&p, 100, t, 10, &data[10..30]).unwrap();
        assert_eq!(c.read_range(&p, 100, t, 12, 5).unwrap(), &data[12..17]);
        assert!(c.read_range(&p, 100, t, 25, 10).is_none(), "partly present");
        c.write_range(&p, 100, t, 30, &data[30..]).unwrap();
        c.write_range(&p, 100, t, 0, &data[..10]).unwrap();
        assert_eq!(c.used(), 100);
        assert_eq!(c.read_range(&p, 100, t, 90, 50).unwrap(), &data[90..]);
        assert_eq!(fs::read(c.get(&p, 100, t).unwrap()).unwrap(), data);
        // Another version of the path misses.
        assert!(c
            .read_range(&p, 100, t + std::time::Duration::from_secs(1), 0, 1)
            .is_none());
        let s = c.stats();
        assert!(s.hits >= 3 && s.misses >= 2, "{s:?}");
    }

    #[test]
    fn range_entries_are_evicted_least_recently_used_first() {
        let root = tempfile::tempdir().unwrap();
        let c = ContentCache::new(root.path(), 150).unwrap();
        let t = UNIX_EPOCH;
        let a = RemotePath::new("/a").unwrap();
        let b = RemotePath::new("/b").unwrap();
        c.write_range(&a, 100, t, 0, &[1; 100]).unwrap();
        c.write_range(&b, 100, t, 0, &[2; 60]).unwrap();
        assert!(c.read_range(&a, 100, t, 0, 1).is_none(), "a evicted for b");
        assert_eq!(c.read_range(&b, 100, t, 0, 60).unwrap(), vec![2; 60]);
        assert_eq!(c.used(), 60);
        // Bigger than the bound: never kept.
        c.write_range(&a, 200, t, 0, &[1; 10]).unwrap();
        assert!(!c.has_range(&a, 200, t, 0, 10));
    }

    #[test]
    fn range_sets_merge() {
        let mut r = RangeSet::default();
        assert_eq!(r.insert(10, 20), 10);
        assert_eq!(r.insert(30, 40), 10);
        assert_eq!(r.insert(15, 35), 10);
        assert_eq!(r, RangeSet(vec![(10, 40)]));
        assert_eq!(r.insert(40, 50), 10);
        assert!(r.covers(10, 50) && !r.covers(9, 11));
        assert_eq!(r.insert(0, 5), 5);
        assert_eq!(r.total(), 45);
    }
}
