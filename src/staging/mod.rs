//! `StagingArea`: the on-disk write-back area where staged bytes are kept until the remote
//! confirmed them ("staged bytes are sacred").
//!
//! One data file per staged file (`<id>.data`) plus, once it holds changes the remote does
//! not have, a small JSON manifest (`<id>.json`: remote path, size, sha256, time, state,
//! cause). The data is fsync'd before an upload starts and before `fsync` is acknowledged; a
//! staged file is deleted only after its upload was confirmed (or the file was unlinked). A
//! failed upload keeps both files and logs where they are. At startup, manifests left by an
//! earlier run are listed (`leftovers`); data files without a manifest were clean copies and
//! are removed.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::remote::RemotePath;

/// Where a staged file stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StagedState {
    /// Holds changes not yet sent.
    Dirty,
    /// An upload is running.
    Uploading,
    /// The last upload failed; the data waits for a retry or `f7tfs recover`.
    Failed,
}

/// The manifest beside a staged file with changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub remote_path: String,
    pub size: u64,
    /// Hex sha256 of the data (empty until an upload was attempted).
    pub sha256: String,
    /// Seconds since the epoch of the last manifest update.
    pub time: u64,
    pub state: StagedState,
    pub cause: Option<String>,
    /// Name of the data file in the staging dir.
    pub data_file: String,
    /// The remote file when the write began (`None`: it did not exist); `f7tfs recover`
    /// refuses to overwrite a remote file that no longer matches it.
    #[serde(default)]
    pub base: Option<BaseVersion>,
}

/// Size and mtime (whole seconds since the epoch) of the remote file a write started from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseVersion {
    pub size: u64,
    pub mtime: i64,
}

impl BaseVersion {
    /// The version of a remote file with `size` and `mtime`.
    pub fn of(size: u64, mtime: SystemTime) -> Self {
        let mtime = match mtime.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        };
        BaseVersion { size, mtime }
    }
}

/// A manifest found at startup and where its data lives.
#[derive(Clone, Debug)]
pub struct Leftover {
    pub manifest: Manifest,
    pub data_path: PathBuf,
    pub manifest_path: PathBuf,
}

/// The staging directory of a mount, locked for the life of the value (`.lock`, `flock`): a
/// second mount (or `f7tfs recover`) on the same directory would take the first one's files.
pub struct StagingArea {
    dir: PathBuf,
    _lock: File,
}

/// Takes the exclusive lock of `dir` (created if needed); fails with `WouldBlock` and a text
/// naming the fix when a live mount holds it.
fn lock_dir(dir: &Path) -> std::io::Result<File> {
    fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    // SAFETY: flock(2) on a descriptor we own; no memory is shared.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::WouldBlock {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!(
                    "the staging dir {} is in use by a running mount; unmount it first, or \
                     give this one its own with --staging-dir",
                    dir.display()
                ),
            ));
        }
        return Err(e);
    }
    Ok(lock)
}

/// Whether a running mount holds the staging dir `dir`.
pub fn in_use(dir: &Path) -> bool {
    matches!(lock_dir(dir), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// The manifests in `dir` (staged writes that never reached the remote), read only: nothing
/// is locked or removed (for `f7tfs status` and `recover --list` next to a live mount).
pub fn list_manifests(dir: &Path) -> std::io::Result<Vec<Leftover>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir)?.flatten() {
        let path = e.path();
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let Ok(manifest) = serde_json::from_str::<Manifest>(&text) else {
            tracing::warn!(path = %path.display(), "unreadable staging manifest left as is");
            continue;
        };
        out.push(Leftover {
            data_path: dir.join(&manifest.data_file),
            manifest,
            manifest_path: path,
        });
    }
    out.sort_by(|a, b| a.manifest.remote_path.cmp(&b.manifest.remote_path));
    Ok(out)
}

impl StagingArea {
    /// Opens (creates) the staging directory and locks it (see the type docs).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let lock = lock_dir(dir)?;
        Ok(StagingArea {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Manifests left by earlier runs (changes that never reached the remote). Data files
    /// without a manifest were clean copies and are removed; the current run's files are not
    /// touched (call this before staging anything).
    pub fn leftovers(&self) -> std::io::Result<Vec<Leftover>> {
        let out = list_manifests(&self.dir)?;
        let with_manifest: std::collections::HashSet<&str> =
            out.iter().map(|l| l.manifest.data_file.as_str()).collect();
        for e in fs::read_dir(&self.dir)?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.ends_with(".data") && !with_manifest.contains(name.as_str()) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(out)
    }

    /// A new, empty staged file for `remote`.
    pub fn create(&self, remote: &RemotePath) -> std::io::Result<StagedFile> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let data_path = self.dir.join(format!("{id}.data"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&data_path)?;
        Ok(StagedFile {
            data_path,
            manifest_path: self.dir.join(format!("{id}.json")),
            data_file: format!("{id}.data"),
            file,
            remote: remote.clone(),
            base: parking_lot::Mutex::new(None),
        })
    }
}

/// One staged file: the local copy of a remote file being written (or read back after a
/// write). Dropping it keeps the files on disk; only `discard` deletes them.
pub struct StagedFile {
    data_path: PathBuf,
    manifest_path: PathBuf,
    data_file: String,
    file: File,
    remote: RemotePath,
    /// What the remote held when the unsent changes began (see `Manifest::base`).
    base: parking_lot::Mutex<Option<BaseVersion>>,
}

impl StagedFile {
    /// Where the data lives.
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Where the manifest lives (present only while there are unsent changes).
    pub fn manifest_path(&self) -> &Path {
        &self.manifest_path
    }

    /// The remote path the data belongs to.
    pub fn remote(&self) -> &RemotePath {
        &self.remote
    }

    /// Retargets the staged file (local rename before its upload).
    pub fn set_remote(&mut self, remote: RemotePath) {
        self.remote = remote;
        // A manifest already written names the old path: `recover` must send the data to
        // the new one (git's `index.lock` renamed to `index`), not re-create the old.
        let Ok(text) = fs::read(&self.manifest_path) else {
            return;
        };
        let Ok(mut manifest) = serde_json::from_slice::<Manifest>(&text) else {
            return;
        };
        manifest.remote_path = self.remote.as_str().to_string();
        let tmp = self.manifest_path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&manifest)
            .map_err(std::io::Error::other)
            .and_then(|t| fs::write(&tmp, t))
            .and_then(|()| fs::rename(&tmp, &self.manifest_path));
        if let Err(e) = written {
            tracing::warn!(manifest = %self.manifest_path.display(), "cannot record the new path: {e}");
        }
    }

    /// Records what the remote held when the unsent changes began (`None`: nothing).
    pub fn set_base(&self, base: Option<BaseVersion>) {
        *self.base.lock() = base;
    }

    /// Current length.
    pub fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Up to `len` bytes at `offset` (shorter at EOF).
    pub fn read_at(&self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let size = self.len()?;
        if offset >= size {
            return Ok(Vec::new());
        }
        let n = (len as u64).min(size - offset) as usize;
        let mut buf = vec![0; n];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Writes `data` at `offset` (extending the file as needed).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    /// Truncates or extends to `len`.
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    /// Forces the data to disk.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The whole content.
    pub fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let mut f = File::open(&self.data_path)?;
        f.read_to_end(&mut buf)?;
        Ok(buf)
    }

    /// Hex sha256 of the content.
    pub fn sha256(&self) -> std::io::Result<String> {
        sha256_of(&self.data_path)
    }

    /// Writes (atomically replaces) the manifest; `durable` also fsyncs it.
    pub fn write_manifest(
        &self,
        state: StagedState,
        sha256: &str,
        cause: Option<String>,
        durable: bool,
    ) -> std::io::Result<()> {
        let manifest = Manifest {
            remote_path: self.remote.as_str().to_string(),
            size: self.len()?,
            sha256: sha256.to_string(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            state,
            cause,
            data_file: self.data_file.clone(),
            base: *self.base.lock(),
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
        let tmp = self.manifest_path.with_extension("json.tmp");
        fs::write(&tmp, text)?;
        if durable {
            File::open(&tmp)?.sync_all()?;
        }
        fs::rename(&tmp, &self.manifest_path)?;
        if durable {
            File::open(self.dir_of_manifest())?.sync_all()?;
        }
        Ok(())
    }

    fn dir_of_manifest(&self) -> PathBuf {
        self.manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The remote confirmed the data: the manifest goes, the data stays as a clean copy.
    pub fn mark_clean(&self) -> std::io::Result<()> {
        match fs::remove_file(&self.manifest_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Deletes data and manifest (after a confirmed upload, or an unlink).
    pub fn discard(self) -> std::io::Result<()> {
        self.mark_clean()?;
        fs::remove_file(&self.data_path)
    }
}

/// Hex sha256 of a file's content (read in 1 MiB pieces).
pub fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_survive_and_clean_copies_go() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::new(dir.path()).unwrap();
        let dirty = area.create(&RemotePath::new("/a").unwrap()).unwrap();
        dirty.write_at(0, b"hello").unwrap();
        dirty
            .write_manifest(StagedState::Failed, "", Some("EIO".into()), true)
            .unwrap();
        let clean = area.create(&RemotePath::new("/b").unwrap()).unwrap();
        clean.write_at(3, b"x").unwrap();
        assert_eq!(clean.read_at(0, 10).unwrap(), b"\0\0\0x");
        let clean_path = clean.data_path().to_path_buf();
        drop(clean);
        drop(dirty);
        // While the area is open, the dir is locked: only the read-only listing works.
        assert!(in_use(dir.path()));
        let second = StagingArea::new(dir.path()).err().unwrap();
        assert_eq!(second.kind(), std::io::ErrorKind::WouldBlock);
        assert!(second.to_string().contains("--staging-dir"));
        let listed = list_manifests(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert!(clean_path.exists(), "the listing removes nothing");
        drop(area);
        assert!(!in_use(dir.path()));
        let left = StagingArea::new(dir.path()).unwrap().leftovers().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].manifest.remote_path, "/a");
        assert_eq!(left[0].manifest.size, 5);
        assert_eq!(left[0].manifest.state, StagedState::Failed);
        assert_eq!(fs::read(&left[0].data_path).unwrap(), b"hello");
        assert!(!clean_path.exists());
    }

    #[test]
    fn discard_removes_both() {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::new(dir.path()).unwrap();
        let f = area.create(&RemotePath::new("/a").unwrap()).unwrap();
        f.write_manifest(StagedState::Dirty, "", None, false)
            .unwrap();
        let (d, m) = (f.data_path().to_path_buf(), f.manifest_path().to_path_buf());
        f.discard().unwrap();
        assert!(!d.exists() && !m.exists());
        assert_eq!(
            f_sha_empty(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn f_sha_empty() -> String {
        let dir = tempfile::tempdir().unwrap();
        let area = StagingArea::new(dir.path()).unwrap();
        area.create(&RemotePath::root()).unwrap().sha256().unwrap()
    }
}
