//! `FsError`, the one error type of the filesystem core, and `FsError::errno()`: the only
//! errno table in the crate. `From<RemoteError>` and `From<std::io::Error>` live here too, so
//! a remote or staging failure turns into an errno in exactly one place.
//!
//! The match in `errno()` is exhaustive with no `_` arm, on purpose: a new variant must
//! choose its errno here, and the tests below pin one errno per variant.

use crate::remote::RemoteError;

/// Every way a filesystem operation can fail, as the core sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The remote answered with a semantic error.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// A name or path that does not exist (also negative-cache hits).
    #[error("no such file or directory: {0}")]
    NotFound(String),
    /// The inode number is unknown (forgotten, or never handed out).
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// The file handle is unknown.
    #[error("unknown file handle {0}")]
    BadHandle(u64),
    /// The target exists (create with O_EXCL, RENAME_NOREPLACE, mkdir over a name).
    #[error("file exists: {0}")]
    Exists(String),
    #[error("not a directory: {0}")]
    NotADirectory(String),
    #[error("is a directory: {0}")]
    IsADirectory(String),
    /// rmdir or rename over a directory that still has entries.
    #[error("directory not empty: {0}")]
    NotEmpty(String),
    /// A name FirecREST cannot carry safely (API.md section 3); never sent.
    #[error("name not supported: {0}")]
    InvalidName(String),
    /// A name component longer than NAME_MAX (255 bytes), as a local file system says it.
    #[error("file name too long: {0}")]
    NameTooLong(String),
    /// Flags or arguments we do not support (RENAME_EXCHANGE, bad offsets).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Hard links, device nodes: the API cannot create them.
    #[error("operation not permitted: {0}")]
    NotPermitted(String),
    /// Extended attributes: not supported, so `cp -a` goes on.
    #[error("extended attributes not supported")]
    XattrUnsupported,
    /// The handle was not opened for this kind of access.
    #[error("bad file descriptor mode: {0}")]
    BadAccess(String),
    /// The local staging disk is full.
    #[error("staging disk full: {0}")]
    StagingFull(String),
    /// A local I/O failure in the staging area or content cache.
    #[error("local I/O error: {0}")]
    LocalIo(String),
}

impl FsError {
    /// The errno reported to the kernel. The only errno table in the crate.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Remote(err) => remote_errno(err),
            FsError::NotFound(_) => libc::ENOENT,
            FsError::UnknownInode(_) => libc::ENOENT,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::Exists(_) => libc::EEXIST,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::NotEmpty(_) => libc::ENOTEMPTY,
            FsError::InvalidName(_) => libc::EINVAL,
            FsError::NameTooLong(_) => libc::ENAMETOOLONG,
            FsError::InvalidArgument(_) => libc::EINVAL,
            FsError::NotPermitted(_) => libc::EPERM,
            FsError::XattrUnsupported => libc::ENOTSUP,
            FsError::BadAccess(_) => libc::EBADF,
            FsError::StagingFull(_) => libc::ENOSPC,
            FsError::LocalIo(_) => libc::EIO,
        }
    }

    /// Whether this failure is an expected answer (ENOENT on lookup, EEXIST, ...) that is
    /// logged at debug level rather than as a warning.
    pub fn is_expected(&self) -> bool {
        matches!(
            self,
            FsError::NotFound(_)
                | FsError::Remote(RemoteError::NotFound(_))
                | FsError::Exists(_)
                | FsError::NotEmpty(_)
                | FsError::XattrUnsupported
                // Hard links, device nodes: by design (git tries a link, then renames).
                | FsError::NotPermitted(_)
                | FsError::NotADirectory(_)
                | FsError::IsADirectory(_)
                | FsError::NameTooLong(_)
        )
    }
}

fn remote_errno(err: &RemoteError) -> i32 {
    match err {
        RemoteError::NotFound(_) => libc::ENOENT,
        RemoteError::PermissionDenied(_) => libc::EACCES,
        RemoteError::NotPermitted(_) => libc::EPERM,
        RemoteError::Exists(_) => libc::EEXIST,
        RemoteError::NotADirectory(_) => libc::ENOTDIR,
        RemoteError::IsADirectory(_) => libc::EISDIR,
        RemoteError::NotEmpty(_) => libc::ENOTEMPTY,
        RemoteError::NoSpace(_) => libc::ENOSPC,
        RemoteError::QuotaExceeded(_) => libc::EDQUOT,
        RemoteError::ReadOnly(_) => libc::EROFS,
        RemoteError::NameTooLong(_) => libc::ENAMETOOLONG,
        RemoteError::Loop(_) => libc::ELOOP,
        RemoteError::InvalidName(_) => libc::EINVAL,
        RemoteError::InvalidArgument(_) => libc::EINVAL,
        RemoteError::TooLarge(_) => libc::EFBIG,
        RemoteError::Timeout(_) => libc::ETIMEDOUT,
        RemoteError::Unauthorized(_) => libc::EACCES,
        RemoteError::RateLimited(_) => libc::EAGAIN,
        RemoteError::Unavailable(_) => libc::EIO,
        RemoteError::Unsupported(_) => libc::EPERM,
        RemoteError::Protocol(_) => libc::EIO,
        RemoteError::LocalIo(_) => libc::EIO,
    }
}

impl From<std::io::Error> for FsError {
    fn from(err: std::io::Error) -> Self {
        match err.raw_os_error() {
            Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => {
                FsError::StagingFull(err.to_string())
            }
            _ => FsError::LocalIo(err.to_string()),
        }
    }
}

/// Result alias of the core.
pub type FsResult<T> = Result<T, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> String {
        "x".to_string()
    }

    #[test]
    fn core_variants_have_their_errno() {
        assert_eq!(FsError::NotFound(s()).errno(), libc::ENOENT);
        assert_eq!(FsError::UnknownInode(7).errno(), libc::ENOENT);
        assert_eq!(FsError::BadHandle(7).errno(), libc::EBADF);
        assert_eq!(FsError::Exists(s()).errno(), libc::EEXIST);
        assert_eq!(FsError::NotADirectory(s()).errno(), libc::ENOTDIR);
        assert_eq!(FsError::IsADirectory(s()).errno(), libc::EISDIR);
        assert_eq!(FsError::NotEmpty(s()).errno(), libc::ENOTEMPTY);
        assert_eq!(FsError::InvalidName(s()).errno(), libc::EINVAL);
        assert_eq!(FsError::NameTooLong(s()).errno(), libc::ENAMETOOLONG);
        assert_eq!(FsError::InvalidArgument(s()).errno(), libc::EINVAL);
        assert_eq!(FsError::NotPermitted(s()).errno(), libc::EPERM);
        assert_eq!(FsError::XattrUnsupported.errno(), libc::ENOTSUP);
        assert_eq!(FsError::BadAccess(s()).errno(), libc::EBADF);
        assert_eq!(FsError::StagingFull(s()).errno(), libc::ENOSPC);
        assert_eq!(FsError::LocalIo(s()).errno(), libc::EIO);
    }

    #[test]
    fn remote_variants_have_their_errno() {
        let cases: Vec<(RemoteError, i32)> = vec![
            (RemoteError::NotFound(s()), libc::ENOENT),
            (RemoteError::PermissionDenied(s()), libc::EACCES),
            (RemoteError::NotPermitted(s()), libc::EPERM),
            (RemoteError::Exists(s()), libc::EEXIST),
            (RemoteError::NotADirectory(s()), libc::ENOTDIR),
            (RemoteError::IsADirectory(s()), libc::EISDIR),
            (RemoteError::NotEmpty(s()), libc::ENOTEMPTY),
            (RemoteError::NoSpace(s()), libc::ENOSPC),
            (RemoteError::QuotaExceeded(s()), libc::EDQUOT),
            (RemoteError::ReadOnly(s()), libc::EROFS),
            (RemoteError::NameTooLong(s()), libc::ENAMETOOLONG),
            (RemoteError::Loop(s()), libc::ELOOP),
            (RemoteError::InvalidName(s()), libc::EINVAL),
            (RemoteError::InvalidArgument(s()), libc::EINVAL),
            (RemoteError::TooLarge(s()), libc::EFBIG),
            (RemoteError::Timeout(s()), libc::ETIMEDOUT),
            (RemoteError::Unauthorized(s()), libc::EACCES),
            (RemoteError::RateLimited(s()), libc::EAGAIN),
            (RemoteError::Unavailable(s()), libc::EIO),
            (RemoteError::Unsupported(s()), libc::EPERM),
            (RemoteError::Protocol(s()), libc::EIO),
            (RemoteError::LocalIo(s()), libc::EIO),
        ];
        for (err, errno) in cases {
            assert_eq!(FsError::Remote(err.clone()).errno(), errno, "{err:?}");
        }
    }

    #[test]
    fn io_errors_map_enospc_to_staging_full() {
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(FsError::from(full).errno(), libc::ENOSPC);
        let other = std::io::Error::other("boom");
        assert_eq!(FsError::from(other).errno(), libc::EIO);
    }

    #[test]
    fn expected_errors_are_quiet() {
        assert!(FsError::NotFound(s()).is_expected());
        assert!(FsError::NotPermitted(s()).is_expected());
        assert!(!FsError::LocalIo(s()).is_expected());
    }
}
