//! Property test: random op sequences (including changes made on the remote behind the
//! mount's back) applied to the core over `MemoryRemote` and to a `BTreeMap` model; after
//! every step the whole tree seen through the core, and the remote itself, equal the model.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use f7tfs::cache::ManualClock;
use f7tfs::config::MountConfig;
use f7tfs::fs::{Filesystem, IdMap, Looked, SetAttr, ROOT_INO};
use f7tfs::remote::memory::MemoryRemote;
use f7tfs::remote::FileKind;
use proptest::prelude::*;

const ROOT: &str = "/r";

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

#[derive(Clone, Debug)]
enum Op {
    Write(String, Vec<u8>),
    Append(String, Vec<u8>),
    Truncate(String, usize),
    Unlink(String),
    Mkdir(String),
    Rmdir(String),
    Rename(String, String),
    RemoteWrite(String, Vec<u8>),
    RemoteDelete(String),
}

fn path_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["a", "b", "d1", "d2"]).prop_map(str::to_string),
        (
            prop::sample::select(vec!["d1", "d2"]),
            prop::sample::select(vec!["a", "b", "d3"])
        )
            .prop_map(|(d, n)| format!("{d}/{n}")),
    ]
}

fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..40)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (path_strategy(), data()).prop_map(|(p, d)| Op::Write(p, d)),
        1 => (path_strategy(), data()).prop_map(|(p, d)| Op::Append(p, d)),
        1 => (path_strategy(), 0usize..50).prop_map(|(p, n)| Op::Truncate(p, n)),
        1 => path_strategy().prop_map(Op::Unlink),
        2 => path_strategy().prop_map(Op::Mkdir),
        1 => path_strategy().prop_map(Op::Rmdir),
        2 => (path_strategy(), path_strategy()).prop_map(|(a, b)| Op::Rename(a, b)),
        1 => (path_strategy(), data()).prop_map(|(p, d)| Op::RemoteWrite(p, d)),
        1 => path_strategy().prop_map(Op::RemoteDelete),
    ]
}

struct World {
    fs: Filesystem<MemoryRemote>,
    clock: ManualClock,
    model: BTreeMap<String, Node>,
    /// Remote writes so far: each gets its own mtime (a rewrite with the same size and mtime
    /// is invisible by design: the content cache is keyed by size and mtime).
    remote_writes: u64,
    _dirs: tempfile::TempDir,
}

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

fn name(p: &str) -> &str {
    p.rsplit_once('/').map_or(p, |(_, n)| n)
}

impl World {
    fn new() -> Self {
        Self::with_delay(Duration::ZERO)
    }

    fn with_delay(delay: Duration) -> Self {
        let remote = MemoryRemote::new(7, 7);
        remote.mkdir_all(ROOT);
        let dirs = tempfile::tempdir().unwrap();
        let mut cfg = MountConfig::new(ROOT, dirs.path().join("mnt"));
        cfg.staging.dir = dirs.path().join("staging");
        cfg.cache.cache_dir = dirs.path().join("cache");
        cfg.writeback_delay = delay;
        let ids = IdMap {
            remote_uid: 7,
            remote_gid: 7,
            local_uid: 1,
            local_gid: 1,
        };
        let clock = ManualClock::new();
        let fs = Filesystem::new(remote, &cfg, ids, Arc::new(clock.clone())).unwrap();
        World {
            fs,
            clock,
            model: BTreeMap::new(),
            remote_writes: 0,
            _dirs: dirs,
        }
    }

    fn parent_is_dir(&self, p: &str) -> bool {
        match parent(p) {
            None => true,
            Some(d) => self.model.get(d) == Some(&Node::Dir),
        }
    }

    /// Path walk as the kernel does it: only through directories.
    async fn walk(&self, p: &str) -> Option<(u64, fuser::FileType)> {
        let mut cur = (ROOT_INO, fuser::FileType::Directory);
        for part in p.split('/') {
            if cur.1 != fuser::FileType::Directory {
                return None;
            }
            match self.fs.lookup(cur.0, OsStr::new(part)).await.unwrap() {
                Looked::Found(e) => cur = (e.attr.ino, e.attr.kind),
                Looked::Absent { .. } => return None,
            }
        }
        Some(cur)
    }

    async fn ino(&self, p: &str) -> Option<u64> {
        self.walk(p).await.map(|(ino, _)| ino)
    }

    async fn parent_ino(&self, p: &str) -> Option<u64> {
        match parent(p) {
            None => Some(ROOT_INO),
            Some(d) => match self.walk(d).await {
                Some((ino, fuser::FileType::Directory)) => Some(ino),
                _ => None,
            },
        }
    }

    fn has_children(&self, p: &str) -> bool {
        let prefix = format!("{p}/");
        self.model.keys().any(|k| k.starts_with(&prefix))
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Write(p, d) => {
                let ok = self.parent_is_dir(p) && self.model.get(p) != Some(&Node::Dir);
                let Some(par) = self.parent_ino(p).await else {
                    assert!(!ok, "{p}: parent missing in the core only");
                    return;
                };
                let fh = match self.ino(p).await {
                    Some(ino) => match self.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC).await {
                        Ok(o) => o.fh,
                        Err(e) => {
                            assert!(!ok, "open {p}: {e}");
                            return;
                        }
                    },
                    None => match self
                        .fs
                        .create(par, OsStr::new(name(p)), 0o100644, 0o022, libc::O_WRONLY)
                        .await
                    {
                        Ok(c) => c.opened.fh,
                        Err(e) => {
                            assert!(!ok, "create {p}: {e}");
                            return;
                        }
                    },
                };
                assert!(ok, "write {p} succeeded but the model says it cannot");
                if !d.is_empty() {
                    self.fs.write(fh, 0, d).await.unwrap();
                }
                self.fs.release(fh).await.unwrap();
                self.model.insert(p.clone(), Node::File(d.clone()));
            }
            Op::Append(p, d) => {
                let Some(Node::File(old)) = self.model.get(p).cloned() else {
                    return;
                };
                let ino = self.ino(p).await.expect("file known to the model");
                let o = self
                    .fs
                    .open(ino, libc::O_WRONLY | libc::O_APPEND)
                    .await
                    .unwrap();
                self.fs.write(o.fh, 0, d).await.unwrap();
                self.fs.release(o.fh).await.unwrap();
                let mut new = old;
                new.extend_from_slice(d);
                self.model.insert(p.clone(), Node::File(new));
            }
            Op::Truncate(p, n) => {
                let Some(Node::File(mut old)) = self.model.get(p).cloned() else {
                    return;
                };
                let ino = self.ino(p).await.expect("file known to the model");
                let req = SetAttr {
                    size: Some(*n as u64),
                    ..Default::default()
                };
                self.fs.setattr(ino, req).await.unwrap();
                old.resize(*n, 0);
                self.model.insert(p.clone(), Node::File(old));
            }
            Op::Unlink(p) => {
                let par = self.parent_ino(p).await;
                let res = match par {
                    Some(par) => self
                        .fs
                        .unlink(par, OsStr::new(name(p)))
                        .await
                        .map_err(|e| e.errno()),
                    None => Err(libc::ENOENT),
                };
                match self.model.get(p) {
                    Some(Node::File(_)) => {
                        assert_eq!(res, Ok(()), "unlink {p}");
                        self.model.remove(p);
                    }
                    Some(Node::Dir) => assert_eq!(res, Err(libc::EISDIR), "unlink dir {p}"),
                    None => assert_eq!(res, Err(libc::ENOENT), "unlink missing {p}"),
                }
            }
            Op::Mkdir(p) => {
                let ok = self.parent_is_dir(p) && !self.model.contains_key(p);
                let res = match self.parent_ino(p).await {
                    Some(par) => self
                        .fs
                        .mkdir(par, OsStr::new(name(p)), 0o755, 0o022)
                        .await
                        .map(|_| ()),
                    None => Err(f7tfs::error::FsError::NotFound(p.clone())),
                };
                assert_eq!(res.is_ok(), ok, "mkdir {p}: {res:?}");
                if ok {
                    self.model.insert(p.clone(), Node::Dir);
                }
            }
            Op::Rmdir(p) => {
                let res = match self.parent_ino(p).await {
                    Some(par) => self
                        .fs
                        .rmdir(par, OsStr::new(name(p)))
                        .await
                        .map_err(|e| e.errno()),
                    None => Err(libc::ENOENT),
                };
                match self.model.get(p) {
                    Some(Node::Dir) if self.has_children(p) => {
                        assert_eq!(res, Err(libc::ENOTEMPTY), "rmdir {p}")
                    }
                    Some(Node::Dir) => {
                        assert_eq!(res, Ok(()), "rmdir {p}");
                        self.model.remove(p);
                    }
                    Some(Node::File(_)) => assert_eq!(res, Err(libc::ENOTDIR), "rmdir file {p}"),
                    None => assert_eq!(res, Err(libc::ENOENT), "rmdir missing {p}"),
                }
            }
            Op::Rename(a, b) => {
                let expected = self.rename_expectation(a, b);
                let (pa, pb) = (self.parent_ino(a).await, self.parent_ino(b).await);
                let res = match (pa, pb) {
                    (Some(pa), Some(pb)) => self
                        .fs
                        .rename(pa, OsStr::new(name(a)), pb, OsStr::new(name(b)), 0)
                        .await
                        .map_err(|e| e.errno()),
                    _ => Err(libc::ENOENT),
                };
                assert_eq!(
                    res.is_ok(),
                    expected.is_ok(),
                    "rename {a} -> {b}: {res:?} vs {expected:?}"
                );
                if let Err(want) = expected {
                    assert_eq!(res, Err(want), "rename {a} -> {b}");
                    return;
                }
                if a == b {
                    return;
                }
                let moved: Vec<(String, Node)> = self
                    .model
                    .iter()
                    .filter(|(k, _)| *k == a || k.starts_with(&format!("{a}/")))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                self.model.remove(b);
                for (k, v) in moved {
                    self.model.remove(&k);
                    self.model.insert(format!("{b}{}", &k[a.len()..]), v);
                }
            }
            Op::RemoteWrite(p, d) => {
                if !self.parent_is_dir(p) || self.model.get(p) == Some(&Node::Dir) {
                    return;
                }
                self.remote_writes += 1;
                let now = SystemTime::now() + Duration::from_secs(self.remote_writes * 7 + 100);
                self.fs.remote().put_file(&format!("{ROOT}/{p}"), d, now);
                self.model.insert(p.clone(), Node::File(d.clone()));
                self.clock.advance(Duration::from_secs(10));
            }
            Op::RemoteDelete(p) => {
                if !self.model.contains_key(p) {
                    return;
                }
                self.fs.remote().delete(&format!("{ROOT}/{p}"));
                let prefix = format!("{p}/");
                self.model.retain(|k, _| k != p && !k.starts_with(&prefix));
                self.clock.advance(Duration::from_secs(10));
            }
        }
    }

    fn rename_expectation(&self, a: &str, b: &str) -> Result<(), i32> {
        let Some(src) = self.model.get(a) else {
            return Err(libc::ENOENT);
        };
        if !self.parent_is_dir(b) {
            return Err(libc::ENOENT);
        }
        if a == b {
            return Ok(());
        }
        if b.starts_with(&format!("{a}/")) {
            return Err(libc::EINVAL);
        }
        match (src, self.model.get(b)) {
            (_, None) => Ok(()),
            (Node::Dir, Some(Node::File(_))) => Err(libc::ENOTDIR),
            (Node::File(_), Some(Node::Dir)) => Err(libc::EISDIR),
            (Node::Dir, Some(Node::Dir)) if self.has_children(b) => Err(libc::ENOTEMPTY),
            _ => Ok(()),
        }
    }

    /// The tree as the core shows it (readdir + read of every file).
    async fn seen(&self) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
        let mut stack = vec![(ROOT_INO, String::new())];
        while let Some((ino, prefix)) = stack.pop() {
            let d = self.fs.opendir(ino).await.unwrap();
            let items = self.fs.readdir(ino, d.fh, 0).await.unwrap();
            self.fs.releasedir(d.fh);
            for it in items.into_iter().skip(2) {
                let p = if prefix.is_empty() {
                    it.name.clone()
                } else {
                    format!("{prefix}/{}", it.name)
                };
                let e = match self.fs.lookup(ino, OsStr::new(&it.name)).await.unwrap() {
                    Looked::Found(e) => e,
                    Looked::Absent { .. } => panic!("{p} listed but not found"),
                };
                if e.attr.kind == fuser::FileType::Directory {
                    out.insert(p.clone(), Node::Dir);
                    stack.push((e.attr.ino, p));
                } else {
                    let o = self.fs.open(e.attr.ino, libc::O_RDONLY).await.unwrap();
                    let data = self.fs.read(o.fh, 0, 1 << 20).await.unwrap().to_vec();
                    self.fs.release(o.fh).await.unwrap();
                    assert_eq!(e.attr.size, data.len() as u64, "{p}: size vs content");
                    out.insert(p, Node::File(data));
                }
            }
        }
        out
    }

    fn remote_tree(&self) -> BTreeMap<String, Node> {
        let mut out = BTreeMap::new();
        let mut stack = vec![String::new()];
        while let Some(prefix) = stack.pop() {
            for n in ["a", "b", "d1", "d2", "d3"] {
                let p = if prefix.is_empty() {
                    n.to_string()
                } else {
                    format!("{prefix}/{n}")
                };
                if let Some(node) = self.fs.remote().get(&format!("{ROOT}/{p}")) {
                    match node.kind {
                        FileKind::Dir => {
                            out.insert(p.clone(), Node::Dir);
                            stack.push(p);
                        }
                        _ => {
                            out.insert(p, Node::File(node.content.to_vec()));
                        }
                    }
                }
            }
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_the_model(ops in prop::collection::vec(op_strategy(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut w = World::new();
            for op in &ops {
                w.apply(op).await;
                let seen = w.seen().await;
                assert_eq!(seen, w.model, "after {op:?}");
                assert_eq!(w.remote_tree(), w.model, "remote after {op:?}");
            }
        });
    }
}

fn local_op_strategy() -> impl Strategy<Value = Op> {
    op_strategy().prop_filter("local ops only", |op| {
        !matches!(op, Op::RemoteWrite(..) | Op::RemoteDelete(..))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With delayed write-back the mount shows the model at every step, and the remote
    /// catches up once the queued uploads ran.
    #[test]
    fn delayed_writeback_matches_the_model(ops in prop::collection::vec(local_op_strategy(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut w = World::with_delay(Duration::from_secs(1));
            for (i, op) in ops.iter().enumerate() {
                w.apply(op).await;
                assert_eq!(w.seen().await, w.model, "after {op:?}");
                if i % 3 == 2 {
                    w.clock.advance(Duration::from_millis(1500));
                    w.fs.writeback_tick().await;
                }
            }
            w.clock.advance(Duration::from_secs(2));
            w.fs.writeback_tick().await;
            assert_eq!(w.fs.writeback_pending(), 0);
            assert_eq!(w.remote_tree(), w.model, "remote after the queue drained");
            assert!(w.fs.unsent().is_empty());
        });
    }
}
