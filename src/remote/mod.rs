//! The one seam between the filesystem core and FirecREST: `trait RemoteFs`, the domain types
//! it speaks (`RemotePath`, `Stat`, `DirEntry`, `Capabilities`, `StagedObject`) and the
//! semantic `RemoteError`.
//!
//! Everything that knows about HTTP, JSON field names, v1 versus v2 or the staging area lives
//! below this module (`http`, `auth`, `transfer`, `v2`, `v1`); everything above it (`fs`,
//! `cache`, `staging`) sees only what is declared here. A difference in what a flavour *can do*
//! is a `Capabilities` value, never an extra method.
//!
//! Paths crossing the seam are absolute remote paths (`RemotePath`); a name the API cannot
//! carry safely (API.md section 3) is refused with `RemoteError::InvalidName` before any call.

pub mod archive;
pub mod auth;
pub mod detect;
pub mod http;
pub mod memory;
pub mod transfer;
pub mod v2;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// An absolute, normalised remote path: starts with `/`, no `.`/`..`/empty components, no
/// trailing slash (except the root itself).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RemotePath(String);

impl RemotePath {
    /// Normalises `raw` (which must be absolute). `..` never climbs above `/`.
    pub fn new(raw: &str) -> Result<Self, RemoteError> {
        if !raw.starts_with('/') {
            return Err(RemoteError::InvalidName(format!(
                "not an absolute path: {raw}"
            )));
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in raw.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        Ok(RemotePath(format!("/{}", parts.join("/"))))
    }

    /// The root `/`.
    pub fn root() -> Self {
        RemotePath("/".to_string())
    }

    /// `self/name` for a single component `name` (no `/`, not `.`/`..`).
    pub fn join(&self, name: &str) -> Result<Self, RemoteError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(RemoteError::InvalidName(format!(
                "not a single path component: {name}"
            )));
        }
        if self.0 == "/" {
            Ok(RemotePath(format!("/{name}")))
        } else {
            Ok(RemotePath(format!("{}/{name}", self.0)))
        }
    }

    /// The parent directory; `None` for `/`.
    pub fn parent(&self) -> Option<RemotePath> {
        if self.0 == "/" {
            return None;
        }
        let idx = self.0.rfind('/').unwrap_or(0);
        Some(RemotePath(if idx == 0 {
            "/".to_string()
        } else {
            self.0[..idx].to_string()
        }))
    }

    /// The last component (`""` for `/`).
    pub fn file_name(&self) -> &str {
        match self.0.rfind('/') {
            Some(idx) => &self.0[idx + 1..],
            None => &self.0,
        }
    }

    /// Whether `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &RemotePath) -> bool {
        other.0 == "/" || self.0 == other.0 || self.0.starts_with(&format!("{}/", other.0))
    }

    /// The path as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RemotePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What kind of object a path names (first character of the `ls` mode string, or the
/// file-type bits of `stat`'s mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// Devices, fifos, sockets: listed, never opened.
    Other,
}

/// Attributes of one remote object as far as the API tells them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub kind: FileKind,
    /// Permission bits only (`& 0o7777`).
    pub perm: u32,
    /// Numeric remote ids (`ls` is always called with `numericUid`).
    pub uid: u32,
    pub gid: u32,
    /// Bytes; for a symlink the length of its target (lstat semantics).
    pub size: u64,
    /// Modification time. Whole seconds: neither `ls` nor `stat` gives more.
    pub mtime: SystemTime,
    /// Only `stat` reports these; `ls` leaves them `None`.
    pub atime: Option<SystemTime>,
    pub ctime: Option<SystemTime>,
    pub ino: Option<u64>,
    pub nlink: Option<u32>,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// A single component (never `.`/`..`).
    pub name: String,
    pub stat: Stat,
    /// The link's target as stored, for symlinks.
    pub link_target: Option<String>,
}

/// What the connected server can do and its limits; read once at startup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// `"v2"` or `"v1"`, for logs and `f7tfs check`.
    pub api_version: &'static str,
    /// Largest file `download` fetches directly (≈ 3.5 MiB on a 5 MiB server: base64).
    pub direct_download_limit: u64,
    /// Largest content `upload` sends directly (the advertised `max_ops_file_size`).
    pub direct_upload_limit: u64,
    /// Part size of staged multipart uploads.
    pub max_part_size: u64,
    /// A synchronous rename exists (v1); v2 moves through a transfer job.
    pub sync_rename: bool,
    /// Symlink targets may be relative (v1); v2 needs absolute ones inside a filesystem,
    /// relative ones go through the archive route.
    pub relative_symlinks: bool,
    /// The mount points the server advertises (`fileSystems[].path`).
    pub filesystems: Vec<RemotePath>,
}

/// A file (or set of files) packed client-side for the archive route (API.md 12.1).
#[derive(Clone, Debug)]
pub struct ArchiveMember {
    /// Name relative to the target directory (one component for now).
    pub name: String,
    pub kind: ArchiveMemberKind,
    pub perm: u32,
    pub mtime: SystemTime,
}

#[derive(Clone, Debug)]
pub enum ArchiveMemberKind {
    /// A regular file with this content (may be empty).
    File(Bytes),
    /// A symlink with this (possibly relative) target.
    Symlink(String),
}

/// A remote file staged for ranged reads (v2: transfer/download job + presigned URL; v1:
/// xfer-external task + temp URL). Valid until `expires`, for the file at `size`/`mtime`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedObject {
    pub url: String,
    pub size: u64,
    pub expires: SystemTime,
}

/// One regular file of a directory, fetched in a batch (`fetch_files`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedFile {
    /// A single component: the file's name in the directory.
    pub name: String,
    pub content: Bytes,
    /// Permission bits.
    pub perm: u32,
    /// Modification time, whole seconds.
    pub mtime: SystemTime,
}

/// Progress callback for long transfers: (bytes done, bytes total).
pub type Progress = std::sync::Arc<dyn Fn(u64, u64) + Send + Sync>;

/// Semantic remote failures; `error.rs` turns them into errno, nothing else does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    #[error("file exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    #[error("no space left on the remote: {0}")]
    NoSpace(String),
    #[error("disk quota exceeded on the remote: {0}")]
    QuotaExceeded(String),
    #[error("read-only remote filesystem: {0}")]
    ReadOnly(String),
    #[error("name too long: {0}")]
    NameTooLong(String),
    #[error("too many levels of symbolic links: {0}")]
    Loop(String),
    /// A name or argument FirecREST cannot carry safely (checked locally, never sent).
    #[error("name not supported by FirecREST: {0}")]
    InvalidName(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Above a direct-operation limit (413): use the staging area.
    #[error("too large for a direct transfer: {0}")]
    TooLarge(String),
    /// The remote command or the call's deadline ran out (408, or our own deadline).
    #[error("timed out: {0}")]
    Timeout(String),
    /// 401 after a token refresh, or the token endpoint refused our credentials.
    #[error("authentication failed: {0}")]
    Unauthorized(String),
    /// 429 after the retries ran out.
    #[error("rate limited by the server: {0}")]
    RateLimited(String),
    /// Connection refused/reset, 5xx after retries, 503/424: the server or network is down.
    #[error("server unavailable: {0}")]
    Unavailable(String),
    /// The operation cannot be done through this API (hard links, devices, ...).
    #[error("not supported by FirecREST: {0}")]
    Unsupported(String),
    /// An answer we could not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// A local I/O failure while reading or writing a staged file.
    #[error("local I/O error: {0}")]
    LocalIo(String),
}

impl RemoteError {
    /// Classifies a remote command's error text (v1 `error`, v2 `message`), API.md 6.3.
    /// `None` when the text names no known cause.
    pub fn from_message(text: &str) -> Option<RemoteError> {
        let t = text.to_string();
        type Rule = (&'static str, fn(String) -> RemoteError);
        let rules: [Rule; 14] = [
            ("No such file or directory", RemoteError::NotFound),
            ("Permission denied", RemoteError::PermissionDenied),
            ("Operation not permitted", RemoteError::NotPermitted),
            ("File exists", RemoteError::Exists),
            ("Not a directory", RemoteError::NotADirectory),
            ("Is a directory", RemoteError::IsADirectory),
            ("Directory not empty", RemoteError::NotEmpty),
            ("Disk quota exceeded", RemoteError::QuotaExceeded),
            ("No space left", RemoteError::NoSpace),
            ("Read-only file system", RemoteError::ReadOnly),
            ("File name too long", RemoteError::NameTooLong),
            ("Too many levels of symbolic links", RemoteError::Loop),
            ("Invalid argument", RemoteError::InvalidArgument),
            ("invalid mode", RemoteError::InvalidArgument),
        ];
        rules
            .iter()
            .find(|(needle, _)| text.contains(needle))
            .map(|(_, make)| make(t))
    }

    /// Worth retrying later (server down, rate limited, timed out): the mount keeps data
    /// staged and reports, rather than treating it as a final answer.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RemoteError::Timeout(_) | RemoteError::RateLimited(_) | RemoteError::Unavailable(_)
        )
    }
}

/// Result alias for the remote layer.
pub type RemoteResult<T> = Result<T, RemoteError>;

/// Everything the filesystem core may ask of FirecREST. Implemented by `v2::V2Client`, and by
/// `memory::MemoryRemote` for tests without a server.
///
/// All calls are lstat-flavoured (a final symlink is not followed) and take absolute paths.
/// Implementations retry transient failures themselves (only idempotent calls blindly) and
/// refresh the token; an `Err` is final for this attempt.
pub trait RemoteFs: Send + Sync + 'static {
    /// Limits and abilities, fixed at connect time.
    fn capabilities(&self) -> &Capabilities;

    /// `ls -A --numeric-uid-gid` of a directory: every entry with its attributes, one call.
    fn list(&self, dir: &RemotePath) -> impl Future<Output = RemoteResult<Vec<DirEntry>>> + Send;

    /// `stat` without dereferencing: exact epoch times and numeric ids.
    fn stat(&self, path: &RemotePath) -> impl Future<Output = RemoteResult<Stat>> + Send;

    /// The target of a symlink (one `ls` of the link itself).
    fn read_link(&self, path: &RemotePath) -> impl Future<Output = RemoteResult<String>> + Send;

    /// Whole content of a file no larger than `direct_download_limit`.
    fn download(&self, path: &RemotePath) -> impl Future<Output = RemoteResult<Bytes>> + Send;

    /// Creates or overwrites a file with non-empty `data` (≤ `direct_upload_limit`). The mode
    /// of an existing file is kept; a new file gets the remote umask's mode.
    fn upload(
        &self,
        path: &RemotePath,
        data: Bytes,
    ) -> impl Future<Output = RemoteResult<()>> + Send;

    /// The archive route: packs `members` into a tar, uploads it under a unique hidden name in
    /// `dir`, extracts it there (content, mode and mtime as given; existing files replaced) and
    /// always removes the tar. The total must stay under `direct_upload_limit`.
    fn put_archive(
        &self,
        dir: &RemotePath,
        members: Vec<ArchiveMember>,
    ) -> impl Future<Output = RemoteResult<()>> + Send;

    /// The batched read (archive route the other way, API.md 12.1): every top-level regular
    /// file of `dir` with its content, mode and mtime, in a few calls however many files
    /// there are. The caller makes sure the directory's regular files together fit
    /// `direct_download_limit`. Flavours or directories that cannot do it answer an error
    /// (`Unsupported` by default) and the caller reads file by file.
    fn fetch_files(
        &self,
        dir: &RemotePath,
    ) -> impl Future<Output = RemoteResult<Vec<FetchedFile>>> + Send {
        let dir = dir.to_string();
        async move { Err(RemoteError::Unsupported(format!("batched reads of {dir}"))) }
    }

    /// SHA-256 of a remote file's content, lower-case hex (one call; `recover` compares a
    /// staged copy with what the remote already holds).
    fn checksum(&self, path: &RemotePath) -> impl Future<Output = RemoteResult<String>> + Send {
        let path = path.to_string();
        async move { Err(RemoteError::Unsupported(format!("checksum of {path}"))) }
    }

    /// `mkdir` (no parents); returns the new directory's attributes.
    fn mkdir(&self, path: &RemotePath) -> impl Future<Output = RemoteResult<Stat>> + Send;

    /// `rm -r`: removes a file, a symlink or a whole tree. Callers check emptiness first.
    fn remove(&self, path: &RemotePath) -> impl Future<Output = RemoteResult<()>> + Send;

    /// Sets permission bits; returns the new attributes.
    fn chmod(
        &self,
        path: &RemotePath,
        perm: u32,
    ) -> impl Future<Output = RemoteResult<Stat>> + Send;

    /// Sets owner and group (both always sent); returns the new attributes.
    fn chown(
        &self,
        path: &RemotePath,
        uid: u32,
        gid: u32,
    ) -> impl Future<Output = RemoteResult<Stat>> + Send;

    /// Creates symlink `link` pointing at `target` (absolute or, where the flavour allows or
    /// through the archive route, relative).
    fn symlink(
        &self,
        target: &str,
        link: &RemotePath,
    ) -> impl Future<Output = RemoteResult<()>> + Send;

    /// `mv -- from to` as the remote does it (moves *into* an existing directory: callers
    /// check the destination first). Waits until done and verifies the effect.
    fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
    ) -> impl Future<Output = RemoteResult<()>> + Send;

    /// Stages a large file for ranged reads; waits until the object is readable.
    fn stage_download(
        &self,
        path: &RemotePath,
        size: u64,
    ) -> impl Future<Output = RemoteResult<StagedObject>> + Send;

    /// `len` bytes at `offset` of a staged object (HTTP `Range`); shorter only at EOF.
    fn read_range(
        &self,
        object: &StagedObject,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = RemoteResult<Bytes>> + Send;

    /// Uploads a local file of any size above the direct limit through the staging area
    /// (multipart, parallel parts) and waits until the remote has it at `size` bytes.
    fn upload_large(
        &self,
        path: &RemotePath,
        local: &Path,
        size: u64,
        progress: Option<Progress>,
    ) -> impl Future<Output = RemoteResult<()>> + Send;
}

/// Attribute TTL-free helper: seconds since the epoch as `SystemTime`.
pub fn epoch(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_path_normalises() {
        assert_eq!(
            RemotePath::new("/a//b/./c/../d/").unwrap().as_str(),
            "/a/b/d"
        );
        assert_eq!(RemotePath::new("/../..").unwrap().as_str(), "/");
        assert!(RemotePath::new("rel").is_err());
    }

    #[test]
    fn remote_path_parent_join_name() {
        let p = RemotePath::new("/home/u").unwrap();
        assert_eq!(p.join("f").unwrap().as_str(), "/home/u/f");
        assert_eq!(p.parent().unwrap().as_str(), "/home");
        assert_eq!(
            RemotePath::new("/x").unwrap().parent().unwrap().as_str(),
            "/"
        );
        assert_eq!(RemotePath::root().parent(), None);
        assert_eq!(p.file_name(), "u");
        assert!(p.join("a/b").is_err());
        assert!(p.join("..").is_err());
        assert!(p.join("f").unwrap().starts_with(&p));
        assert!(!RemotePath::new("/home/uu").unwrap().starts_with(&p));
    }

    #[test]
    fn messages_classify() {
        let m = "Remote process failed with exit status:1 and error message:rm: cannot remove \
                 'x': Directory not empty";
        assert!(matches!(
            RemoteError::from_message(m),
            Some(RemoteError::NotEmpty(_))
        ));
        assert_eq!(RemoteError::from_message("something else"), None);
    }
}
