//! The inode table: `InodeNo` ↔ `RemotePath`, with the kernel's lookup counts.
//!
//! Invariants: the root inode (1) always maps to the mounted remote path and is never
//! forgotten; every other inode lives while the kernel holds lookups on it; a rename moves
//! the inode and the paths of everything below it; an unlinked path loses its mapping but
//! its inode stays until forgotten. One `parking_lot` mutex, never held across `.await`.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use parking_lot::Mutex;

use crate::cache::rebase;
use crate::remote::RemotePath;

/// An inode number as the kernel sees it.
pub type InodeNo = u64;

/// The root inode number (FUSE_ROOT_ID).
pub const ROOT_INO: InodeNo = 1;

struct Node {
    path: RemotePath,
    lookups: u64,
}

struct Inner {
    by_ino: HashMap<InodeNo, Node>,
    by_path: HashMap<RemotePath, InodeNo>,
    next: InodeNo,
}

/// The inode table of one mount.
pub struct InodeTable {
    inner: Mutex<Inner>,
}

impl InodeTable {
    /// A table holding only the root, mapped to `root`.
    pub fn new(root: RemotePath) -> Self {
        let mut by_ino = HashMap::new();
        let mut by_path = HashMap::new();
        by_ino.insert(
            ROOT_INO,
            Node {
                path: root.clone(),
                lookups: 1,
            },
        );
        by_path.insert(root, ROOT_INO);
        InodeTable {
            inner: Mutex::new(Inner {
                by_ino,
                by_path,
                next: ROOT_INO + 1,
            }),
        }
    }

    /// The path of `ino`, if known.
    pub fn path(&self, ino: InodeNo) -> Option<RemotePath> {
        self.inner.lock().by_ino.get(&ino).map(|n| n.path.clone())
    }

    /// The inode of `path`, if one was handed out.
    pub fn peek(&self, path: &RemotePath) -> Option<InodeNo> {
        self.inner.lock().by_path.get(path).copied()
    }

    /// The inode of `path` (new if needed), counting one kernel lookup.
    pub fn lookup(&self, path: &RemotePath) -> InodeNo {
        let mut inner = self.inner.lock();
        if let Some(&ino) = inner.by_path.get(path) {
            if let Some(n) = inner.by_ino.get_mut(&ino) {
                n.lookups += 1;
            }
            return ino;
        }
        let ino = inner.next;
        inner.next += 1;
        inner.by_ino.insert(
            ino,
            Node {
                path: path.clone(),
                lookups: 1,
            },
        );
        inner.by_path.insert(path.clone(), ino);
        ino
    }

    /// An inode number for a `readdir` entry: the real one when handed out, else a stable
    /// number derived from the path (the kernel does not keep it).
    pub fn readdir_ino(&self, path: &RemotePath) -> InodeNo {
        if let Some(ino) = self.peek(path) {
            return ino;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut h);
        h.finish() | (1 << 63)
    }

    /// The kernel dropped `n` lookups of `ino`. With `keep`, the mapping survives a count
    /// of zero (the core still holds state for it, e.g. a staged file waiting for its
    /// upload); `drop_unused` removes it later.
    pub fn forget(&self, ino: InodeNo, n: u64, keep: bool) {
        if ino == ROOT_INO {
            return;
        }
        let mut inner = self.inner.lock();
        let gone = match inner.by_ino.get_mut(&ino) {
            Some(node) => {
                node.lookups = node.lookups.saturating_sub(n);
                node.lookups == 0 && !keep
            }
            None => false,
        };
        if gone {
            if let Some(node) = inner.by_ino.remove(&ino) {
                if inner.by_path.get(&node.path) == Some(&ino) {
                    inner.by_path.remove(&node.path);
                }
            }
        }
    }

    /// Removes `ino` if the kernel holds no lookups on it any more.
    pub fn drop_unused(&self, ino: InodeNo) {
        if ino == ROOT_INO {
            return;
        }
        let mut inner = self.inner.lock();
        let gone = inner.by_ino.get(&ino).is_some_and(|n| n.lookups == 0);
        if gone {
            if let Some(node) = inner.by_ino.remove(&ino) {
                if inner.by_path.get(&node.path) == Some(&ino) {
                    inner.by_path.remove(&node.path);
                }
            }
        }
    }

    /// `path` (and everything below it) no longer exists; their inodes stay until forgotten.
    pub fn unlink(&self, path: &RemotePath) {
        let mut inner = self.inner.lock();
        inner.by_path.retain(|p, _| !p.starts_with(path));
    }

    /// Moves `from`'s inode and its descendants to `to`; what was at `to` is unlinked.
    pub fn rename(&self, from: &RemotePath, to: &RemotePath) {
        let mut inner = self.inner.lock();
        inner.by_path.retain(|p, _| !p.starts_with(to));
        let moved: Vec<(RemotePath, InodeNo)> = inner
            .by_path
            .iter()
            .filter(|(p, _)| p.starts_with(from))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            inner.by_path.remove(&old);
            if let Some(new) = rebase(&old, from, to) {
                if let Some(node) = inner.by_ino.get_mut(&ino) {
                    node.path = new.clone();
                }
                inner.by_path.insert(new, ino);
            }
        }
    }

    /// Inodes currently known (for tests and status).
    pub fn len(&self) -> usize {
        self.inner.lock().by_ino.len()
    }

    /// Whether only the root is known.
    pub fn is_empty(&self) -> bool {
        self.len() <= 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::new(s).unwrap()
    }

    #[test]
    fn lookup_forget_and_rename() {
        let t = InodeTable::new(p("/r"));
        assert_eq!(t.path(ROOT_INO).unwrap(), p("/r"));
        let a = t.lookup(&p("/r/a"));
        let f = t.lookup(&p("/r/a/f"));
        assert_eq!(t.lookup(&p("/r/a")), a);
        t.rename(&p("/r/a"), &p("/r/b"));
        assert_eq!(t.path(a).unwrap(), p("/r/b"));
        assert_eq!(t.path(f).unwrap(), p("/r/b/f"));
        assert_eq!(t.peek(&p("/r/a")), None);
        t.forget(a, 1, false);
        assert!(t.path(a).is_some());
        t.forget(a, 1, true);
        assert!(t.path(a).is_some(), "kept while the core holds state");
        t.drop_unused(a);
        assert!(t.path(a).is_none());
        t.forget(ROOT_INO, 10, false);
        assert!(t.path(ROOT_INO).is_some());
    }

    #[test]
    fn unlink_keeps_inode_until_forget() {
        let t = InodeTable::new(p("/"));
        let a = t.lookup(&p("/a"));
        t.unlink(&p("/a"));
        assert_eq!(t.peek(&p("/a")), None);
        assert_eq!(t.path(a).unwrap(), p("/a"));
        assert_ne!(t.lookup(&p("/a")), a);
        assert!(t.readdir_ino(&p("/zz")) >= 1 << 63);
    }
}
