//! `ContentCache`: whole small files on local disk, keyed by (path, size, mtime), bounded by
//! size with LRU eviction. A changed file (other size or mtime) simply misses; stale entries
//! age out. Each mount uses its own session directory below the configured cache dir, removed
//! on drop; directories of dead sessions are removed at startup.
//!
//! One `parking_lot` mutex guards the index; file I/O happens outside it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use lru::LruCache;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use crate::remote::RemotePath;

struct Index {
    lru: LruCache<String, u64>,
    used: u64,
}

/// The bounded on-disk content cache of one mount.
pub struct ContentCache {
    dir: PathBuf,
    max_size: u64,
    index: Mutex<Index>,
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

    /// The cached file for this version, if present (marks it recently used).
    pub fn get(&self, path: &RemotePath, size: u64, mtime: SystemTime) -> Option<PathBuf> {
        let key = Self::key(path, size, mtime);
        let mut index = self.index.lock();
        index.lru.get(&key)?;
        Some(self.dir.join(key))
    }

    /// Stores `data` as this version's content; returns where it lives. Evicts the least
    /// recently used entries beyond the size bound. A file larger than the bound is not kept.
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
        let key = Self::key(path, size, mtime);
        let dest = self.dir.join(&key);
        let tmp = self
            .dir
            .join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(data)?;
        }
        fs::rename(&tmp, &dest)?;
        let evicted = {
            let mut index = self.index.lock();
            if let Some(old) = index.lru.put(key.clone(), data.len() as u64) {
                index.used -= old;
            }
            index.used += data.len() as u64;
            let mut evicted = Vec::new();
            while index.used > self.max_size {
                match index.lru.pop_lru() {
                    Some((k, sz)) => {
                        index.used -= sz;
                        evicted.push(k);
                    }
                    None => break,
                }
            }
            evicted
        };
        let mut kept = true;
        for k in evicted {
            kept &= k != key;
            let _ = fs::remove_file(self.dir.join(k));
        }
        Ok(kept.then_some(dest))
    }

    /// Bytes held.
    pub fn used(&self) -> u64 {
        self.index.lock().used
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
    }
}
