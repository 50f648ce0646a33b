//! `MemoryRemote`: an in-memory `RemoteFs` with FirecREST's real semantics, for the core
//! tests (no HTTP, no kernel).
//!
//! What it keeps faithful: `remove` is `rm -r`; `rename` is `mv` (moves *into* an existing
//! directory); `upload` keeps an existing file's mode and gives new files 0644; an empty
//! `upload` creates/truncates the file and then fails with a timeout (v2's 408);
//! `put_archive` sets content, mode and mtime and replaces existing files; `download` refuses
//! files above the direct limit; times are whole seconds. Test knobs: per-method call
//! counters, bytes served by `read_range`, failure injection per method (once or always) and
//! an added delay per method, plus direct access to the tree to change things "behind the
//! mount's back".

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    ArchiveMember, ArchiveMemberKind, Capabilities, DirEntry, FetchedFile, FileKind, Progress,
    RemoteError, RemoteFs, RemotePath, RemoteResult, StagedObject, Stat,
};

/// One object in the in-memory tree.
#[derive(Clone, Debug)]
pub struct MemNode {
    pub kind: FileKind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub content: Bytes,
    pub link_target: Option<String>,
}

impl MemNode {
    fn stat(&self) -> Stat {
        let size = match self.kind {
            FileKind::Symlink => self.link_target.as_ref().map_or(0, |t| t.len() as u64),
            FileKind::Dir => 4096,
            _ => self.content.len() as u64,
        };
        Stat {
            kind: self.kind,
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            size,
            mtime: self.mtime,
            atime: None,
            ctime: None,
            ino: None,
            nlink: None,
        }
    }
}

/// How an injected failure behaves.
#[derive(Clone, Debug)]
enum Fault {
    Once(RemoteError),
    Always(RemoteError),
}

/// The in-memory FirecREST stand-in. Cheap to share behind an `Arc`.
pub struct MemoryRemote {
    caps: Capabilities,
    uid: u32,
    gid: u32,
    tree: Mutex<BTreeMap<String, MemNode>>,
    staged: Mutex<HashMap<String, Bytes>>,
    calls: Mutex<HashMap<&'static str, u64>>,
    faults: Mutex<HashMap<&'static str, Fault>>,
    delays: Mutex<HashMap<&'static str, Duration>>,
    range_bytes: AtomicU64,
    next_object: AtomicU64,
}

/// Whole seconds, as `ls`/`stat` report them.
pub fn whole_seconds(t: SystemTime) -> SystemTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    UNIX_EPOCH + Duration::from_secs(secs)
}

impl MemoryRemote {
    /// An empty tree holding only `/` (and whatever `mkdir_all` adds), owned by `uid`/`gid`.
    pub fn new(uid: u32, gid: u32) -> Self {
        let caps = Capabilities {
            api_version: "memory",
            direct_download_limit: 3_670_016,
            direct_upload_limit: 5_242_880,
            max_part_size: 5_242_880,
            sync_rename: false,
            relative_symlinks: true,
            filesystems: vec![RemotePath::root()],
        };
        let remote = MemoryRemote {
            caps,
            uid,
            gid,
            tree: Mutex::new(BTreeMap::new()),
            staged: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            faults: Mutex::new(HashMap::new()),
            delays: Mutex::new(HashMap::new()),
            range_bytes: AtomicU64::new(0),
            next_object: AtomicU64::new(1),
        };
        remote
            .tree
            .lock()
            .insert("/".into(), remote.node(FileKind::Dir, 0o755));
        remote
    }

    /// Overrides the direct transfer limits (to test the large-file routes with small data).
    pub fn with_limits(mut self, download: u64, upload: u64) -> Self {
        self.caps.direct_download_limit = download;
        self.caps.direct_upload_limit = upload;
        self
    }

    fn node(&self, kind: FileKind, perm: u32) -> MemNode {
        MemNode {
            kind,
            perm,
            uid: self.uid,
            gid: self.gid,
            mtime: whole_seconds(SystemTime::now()),
            content: Bytes::new(),
            link_target: None,
        }
    }

    /// Creates a directory and its parents (test setup; no call counted).
    pub fn mkdir_all(&self, path: &str) {
        let mut tree = self.tree.lock();
        let mut cur = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            cur = format!("{cur}/{part}");
            tree.entry(cur.clone())
                .or_insert_with(|| self.node(FileKind::Dir, 0o755));
        }
    }

    /// Writes a file directly (test setup or "a job changed it"); no call counted.
    pub fn put_file(&self, path: &str, content: &[u8], mtime: SystemTime) {
        let mut node = self.node(FileKind::File, 0o644);
        if let Some(old) = self.tree.lock().get(path) {
            node.perm = old.perm;
        }
        node.content = Bytes::copy_from_slice(content);
        node.mtime = whole_seconds(mtime);
        self.tree.lock().insert(path.to_string(), node);
    }

    /// Removes a path (and its subtree) directly; no call counted.
    pub fn delete(&self, path: &str) {
        let prefix = format!("{path}/");
        self.tree
            .lock()
            .retain(|k, _| k != path && !k.starts_with(&prefix));
    }

    /// Changes a node's permission bits directly (test setup); no call counted.
    pub fn set_perm(&self, path: &str, perm: u32) {
        if let Some(node) = self.tree.lock().get_mut(path) {
            node.perm = perm & 0o7777;
        }
    }

    /// A copy of a node, if present.
    pub fn get(&self, path: &str) -> Option<MemNode> {
        self.tree.lock().get(path).cloned()
    }

    /// A file's content, if it is a file.
    pub fn content(&self, path: &str) -> Option<Vec<u8>> {
        self.get(path)
            .filter(|n| n.kind == FileKind::File)
            .map(|n| n.content.to_vec())
    }

    /// How often `method` (the `RemoteFs` method name) was called.
    pub fn calls(&self, method: &str) -> u64 {
        self.calls.lock().get(method).copied().unwrap_or(0)
    }

    /// All calls of all methods.
    pub fn total_calls(&self) -> u64 {
        self.calls.lock().values().sum()
    }

    /// Forgets all counters.
    pub fn reset_calls(&self) {
        self.calls.lock().clear();
        self.range_bytes.store(0, Ordering::SeqCst);
    }

    /// Bytes served by `read_range` since the last reset.
    pub fn range_bytes(&self) -> u64 {
        self.range_bytes.load(Ordering::SeqCst)
    }

    /// The next call of `method` fails with `err`.
    pub fn fail_once(&self, method: &'static str, err: RemoteError) {
        self.faults.lock().insert(method, Fault::Once(err));
    }

    /// Every call of `method` fails with `err` until `clear_faults`.
    pub fn fail_always(&self, method: &'static str, err: RemoteError) {
        self.faults.lock().insert(method, Fault::Always(err));
    }

    /// Removes all injected failures.
    pub fn clear_faults(&self) {
        self.faults.lock().clear();
    }

    /// Every call of `method` first sleeps `delay`.
    pub fn set_delay(&self, method: &'static str, delay: Duration) {
        self.delays.lock().insert(method, delay);
    }

    async fn enter(&self, method: &'static str) -> RemoteResult<()> {
        *self.calls.lock().entry(method).or_insert(0) += 1;
        let delay = self.delays.lock().get(method).copied();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let mut faults = self.faults.lock();
        match faults.get(method).cloned() {
            Some(Fault::Once(err)) => {
                faults.remove(method);
                Err(err)
            }
            Some(Fault::Always(err)) => Err(err),
            None => Ok(()),
        }
    }

    fn parent_dir(tree: &BTreeMap<String, MemNode>, path: &RemotePath) -> RemoteResult<()> {
        let parent = path
            .parent()
            .ok_or_else(|| RemoteError::InvalidArgument(path.to_string()))?;
        match tree.get(parent.as_str()) {
            Some(n) if n.kind == FileKind::Dir => Ok(()),
            Some(_) => Err(RemoteError::NotADirectory(parent.to_string())),
            None => Err(RemoteError::NotFound(parent.to_string())),
        }
    }

    fn write_file(&self, path: &RemotePath, data: Bytes) -> RemoteResult<()> {
        let mut tree = self.tree.lock();
        Self::parent_dir(&tree, path)?;
        let mut node = self.node(FileKind::File, 0o644);
        if let Some(old) = tree.get(path.as_str()) {
            if old.kind == FileKind::Dir {
                return Err(RemoteError::IsADirectory(path.to_string()));
            }
            node.perm = old.perm;
            node.uid = old.uid;
            node.gid = old.gid;
        }
        node.content = data;
        tree.insert(path.as_str().to_string(), node);
        Ok(())
    }

    fn lookup(&self, path: &RemotePath) -> RemoteResult<MemNode> {
        self.tree
            .lock()
            .get(path.as_str())
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(path.to_string()))
    }
}

fn children<'a>(
    tree: &'a BTreeMap<String, MemNode>,
    dir: &str,
) -> impl Iterator<Item = (&'a str, &'a MemNode)> + 'a {
    let prefix = if dir == "/" {
        "/".to_string()
    } else {
        format!("{dir}/")
    };
    let plen = prefix.len();
    tree.range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .filter_map(move |(k, n)| {
            let rest = &k[plen..];
            (!rest.is_empty() && !rest.contains('/')).then_some((rest, n))
        })
}

impl RemoteFs for MemoryRemote {
    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    async fn list(&self, dir: &RemotePath) -> RemoteResult<Vec<DirEntry>> {
        self.enter("list").await?;
        let tree = self.tree.lock();
        match tree.get(dir.as_str()) {
            None => return Err(RemoteError::NotFound(dir.to_string())),
            Some(n) if n.kind != FileKind::Dir => {
                return Err(RemoteError::NotADirectory(dir.to_string()))
            }
            Some(_) => {}
        }
        Ok(children(&tree, dir.as_str())
            .map(|(name, n)| DirEntry {
                name: name.to_string(),
                stat: n.stat(),
                link_target: n.link_target.clone(),
            })
            .collect())
    }

    async fn stat(&self, path: &RemotePath) -> RemoteResult<Stat> {
        self.enter("stat").await?;
        Ok(self.lookup(path)?.stat())
    }

    async fn read_link(&self, path: &RemotePath) -> RemoteResult<String> {
        self.enter("read_link").await?;
        self.lookup(path)?
            .link_target
            .ok_or_else(|| RemoteError::InvalidArgument(format!("not a symlink: {path}")))
    }

    async fn checksum(&self, path: &RemotePath) -> RemoteResult<String> {
        use sha2::Digest;
        self.enter("checksum").await?;
        let node = self.lookup(path)?;
        if node.kind == FileKind::Dir {
            return Err(RemoteError::IsADirectory(path.to_string()));
        }
        let digest = sha2::Sha256::digest(&node.content);
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    async fn download(&self, path: &RemotePath) -> RemoteResult<Bytes> {
        self.enter("download").await?;
        let node = self.lookup(path)?;
        if node.kind == FileKind::Dir {
            return Err(RemoteError::IsADirectory(path.to_string()));
        }
        if node.content.len() as u64 > self.caps.direct_download_limit {
            return Err(RemoteError::TooLarge(path.to_string()));
        }
        Ok(node.content)
    }

    /// One call: the directory's regular files packed and unpacked as the v2 client does,
    /// refused when the archive exceeds the direct download limit.
    async fn fetch_files(&self, dir: &RemotePath) -> RemoteResult<Vec<FetchedFile>> {
        self.enter("fetch_files").await?;
        let node = self.lookup(dir)?;
        if node.kind != FileKind::Dir {
            return Err(RemoteError::NotADirectory(dir.to_string()));
        }
        let files: Vec<FetchedFile> = {
            let tree = self.tree.lock();
            children(&tree, dir.as_str())
                .filter(|(_, n)| n.kind == FileKind::File)
                .map(|(name, n)| FetchedFile {
                    name: name.to_string(),
                    content: n.content.clone(),
                    perm: n.perm,
                    mtime: n.mtime,
                })
                .collect()
        };
        let tgz = super::archive::pack_flat(&files, "d/")?;
        if tgz.len() as u64 > self.caps.direct_download_limit {
            return Err(RemoteError::TooLarge(format!("archive of {dir}")));
        }
        super::archive::unpack_flat(&tgz, "d/", self.caps.direct_download_limit * 4)
    }

    async fn upload(&self, path: &RemotePath, data: Bytes) -> RemoteResult<()> {
        self.enter("upload").await?;
        if data.len() as u64 > self.caps.direct_upload_limit {
            return Err(RemoteError::TooLarge(path.to_string()));
        }
        let empty = data.is_empty();
        self.write_file(path, data)?;
        if empty {
            // v2: an empty upload creates the file, then the command times out (408).
            return Err(RemoteError::Timeout(format!("empty upload of {path}")));
        }
        Ok(())
    }

    async fn put_archive(&self, dir: &RemotePath, members: Vec<ArchiveMember>) -> RemoteResult<()> {
        self.enter("put_archive").await?;
        let total: u64 = members
            .iter()
            .map(|m| match &m.kind {
                ArchiveMemberKind::File(b) => b.len() as u64 + 1024,
                ArchiveMemberKind::Symlink(_) => 1024,
            })
            .sum();
        if total > self.caps.direct_upload_limit {
            return Err(RemoteError::TooLarge(format!("archive for {dir}")));
        }
        let mut tree = self.tree.lock();
        match tree.get(dir.as_str()) {
            Some(n) if n.kind == FileKind::Dir => {}
            Some(_) => return Err(RemoteError::NotADirectory(dir.to_string())),
            None => return Err(RemoteError::NotFound(dir.to_string())),
        }
        for m in members {
            let path = dir.join(&m.name)?;
            if let Some(old) = tree.get(path.as_str()) {
                if old.kind == FileKind::Dir {
                    return Err(RemoteError::IsADirectory(path.to_string()));
                }
            }
            let mut node = self.node(FileKind::File, m.perm & 0o7777);
            node.mtime = whole_seconds(m.mtime);
            match m.kind {
                ArchiveMemberKind::File(b) => node.content = b,
                ArchiveMemberKind::Symlink(t) => {
                    node.kind = FileKind::Symlink;
                    node.perm = 0o777;
                    node.link_target = Some(t);
                }
            }
            tree.insert(path.as_str().to_string(), node);
        }
        Ok(())
    }

    async fn mkdir(&self, path: &RemotePath) -> RemoteResult<Stat> {
        self.enter("mkdir").await?;
        let mut tree = self.tree.lock();
        Self::parent_dir(&tree, path)?;
        if tree.contains_key(path.as_str()) {
            return Err(RemoteError::Exists(path.to_string()));
        }
        let node = self.node(FileKind::Dir, 0o755);
        let stat = node.stat();
        tree.insert(path.as_str().to_string(), node);
        Ok(stat)
    }

    async fn remove(&self, path: &RemotePath) -> RemoteResult<()> {
        self.enter("remove").await?;
        if !self.tree.lock().contains_key(path.as_str()) {
            return Err(RemoteError::NotFound(path.to_string()));
        }
        self.delete(path.as_str());
        Ok(())
    }

    async fn chmod(&self, path: &RemotePath, perm: u32) -> RemoteResult<Stat> {
        self.enter("chmod").await?;
        let mut tree = self.tree.lock();
        let node = tree
            .get_mut(path.as_str())
            .ok_or_else(|| RemoteError::NotFound(path.to_string()))?;
        node.perm = perm & 0o7777;
        Ok(node.stat())
    }

    async fn chown(&self, path: &RemotePath, uid: u32, gid: u32) -> RemoteResult<Stat> {
        self.enter("chown").await?;
        let mut tree = self.tree.lock();
        let node = tree
            .get_mut(path.as_str())
            .ok_or_else(|| RemoteError::NotFound(path.to_string()))?;
        node.uid = uid;
        node.gid = gid;
        Ok(node.stat())
    }

    async fn symlink(&self, target: &str, link: &RemotePath) -> RemoteResult<()> {
        self.enter("symlink").await?;
        let mut tree = self.tree.lock();
        Self::parent_dir(&tree, link)?;
        if tree.contains_key(link.as_str()) {
            return Err(RemoteError::Exists(link.to_string()));
        }
        let mut node = self.node(FileKind::Symlink, 0o777);
        node.link_target = Some(target.to_string());
        tree.insert(link.as_str().to_string(), node);
        Ok(())
    }

    async fn rename(&self, from: &RemotePath, to: &RemotePath) -> RemoteResult<()> {
        self.enter("rename").await?;
        let mut tree = self.tree.lock();
        let src = tree
            .get(from.as_str())
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(from.to_string()))?;
        // mv moves *into* an existing directory.
        let dest = match tree.get(to.as_str()) {
            Some(n) if n.kind == FileKind::Dir => to.join(from.file_name())?,
            Some(_) if src.kind == FileKind::Dir => {
                return Err(RemoteError::NotADirectory(to.to_string()))
            }
            _ => to.clone(),
        };
        Self::parent_dir(&tree, &dest)?;
        if dest.starts_with(from) && dest != *from {
            return Err(RemoteError::InvalidArgument(format!("{from} into itself")));
        }
        if let Some(n) = tree.get(dest.as_str()) {
            if n.kind == FileKind::Dir {
                if children(&tree, dest.as_str()).next().is_some() {
                    return Err(RemoteError::NotEmpty(dest.to_string()));
                }
                if src.kind != FileKind::Dir {
                    return Err(RemoteError::IsADirectory(dest.to_string()));
                }
            }
        }
        let prefix = format!("{}/", from.as_str());
        let moved: Vec<(String, MemNode)> = tree
            .iter()
            .filter(|(k, _)| k.as_str() == from.as_str() || k.starts_with(&prefix))
            .map(|(k, n)| (k.clone(), n.clone()))
            .collect();
        let dest_prefix = format!("{}/", dest.as_str());
        tree.retain(|k, _| k != dest.as_str() && !k.starts_with(&dest_prefix));
        for (k, _) in &moved {
            tree.remove(k);
        }
        for (k, n) in moved {
            let new_key = format!("{}{}", dest.as_str(), &k[from.as_str().len()..]);
            tree.insert(new_key, n);
        }
        Ok(())
    }

    async fn stage_download(&self, path: &RemotePath, size: u64) -> RemoteResult<StagedObject> {
        self.enter("stage_download").await?;
        let node = self.lookup(path)?;
        if node.kind != FileKind::File {
            return Err(RemoteError::IsADirectory(path.to_string()));
        }
        let id = self.next_object.fetch_add(1, Ordering::SeqCst);
        let url = format!("memory://object/{id}");
        let actual = node.content.len() as u64;
        self.staged.lock().insert(url.clone(), node.content);
        let _ = size;
        Ok(StagedObject {
            url,
            size: actual,
            expires: SystemTime::now() + Duration::from_secs(3600),
        })
    }

    async fn read_range(
        &self,
        object: &StagedObject,
        offset: u64,
        len: u64,
    ) -> RemoteResult<Bytes> {
        self.enter("read_range").await?;
        let data = self
            .staged
            .lock()
            .get(&object.url)
            .cloned()
            .ok_or_else(|| RemoteError::NotFound(object.url.clone()))?;
        let start = (offset as usize).min(data.len());
        let end = (offset.saturating_add(len) as usize).min(data.len());
        self.range_bytes
            .fetch_add((end - start) as u64, Ordering::SeqCst);
        Ok(data.slice(start..end))
    }

    async fn upload_large(
        &self,
        path: &RemotePath,
        local: &Path,
        size: u64,
        progress: Option<Progress>,
    ) -> RemoteResult<()> {
        self.enter("upload_large").await?;
        let data = std::fs::read(local).map_err(|e| RemoteError::LocalIo(e.to_string()))?;
        if data.len() as u64 != size {
            return Err(RemoteError::LocalIo(format!(
                "{} has {} bytes, expected {size}",
                local.display(),
                data.len()
            )));
        }
        if size == 0 {
            return Err(RemoteError::InvalidArgument(
                "zero-byte staged upload".into(),
            ));
        }
        self.write_file(path, Bytes::from(data))?;
        if let Some(p) = progress {
            p(size, size);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RemotePath {
        RemotePath::new(s).unwrap()
    }

    #[tokio::test]
    async fn mv_moves_into_existing_dir_and_rm_is_recursive() {
        let r = MemoryRemote::new(1000, 1000);
        r.mkdir_all("/a/b");
        r.mkdir_all("/d");
        r.put_file("/a/b/f", b"x", SystemTime::now());
        r.rename(&p("/a"), &p("/d")).await.unwrap();
        assert_eq!(r.content("/d/a/b/f").unwrap(), b"x");
        r.remove(&p("/d")).await.unwrap();
        assert!(r.get("/d/a/b/f").is_none());
        assert_eq!(r.calls("rename"), 1);
    }

    #[tokio::test]
    async fn upload_keeps_mode_and_empty_upload_times_out() {
        let r = MemoryRemote::new(1000, 1000);
        r.put_file("/f", b"old", SystemTime::now());
        r.chmod(&p("/f"), 0o600).await.unwrap();
        r.upload(&p("/f"), Bytes::from_static(b"new"))
            .await
            .unwrap();
        assert_eq!(r.get("/f").unwrap().perm, 0o600);
        let err = r.upload(&p("/e"), Bytes::new()).await.unwrap_err();
        assert!(matches!(err, RemoteError::Timeout(_)));
        assert_eq!(r.content("/e").unwrap(), b"");
    }

    #[tokio::test]
    async fn faults_fire_once() {
        let r = MemoryRemote::new(1000, 1000);
        r.fail_once("stat", RemoteError::Unavailable("down".into()));
        assert!(r.stat(&p("/")).await.is_err());
        assert!(r.stat(&p("/")).await.is_ok());
        assert_eq!(r.calls("stat"), 2);
    }
}
