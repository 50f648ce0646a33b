//! Remote `Stat` → `fuser::FileAttr`: file type and permission bits, the uid/gid mapping of
//! the remote account onto the mounting user (like sshfs `idmap=user`), block counts.

use std::time::SystemTime;

use fuser::{FileAttr, FileType};

use crate::remote::{FileKind, Stat};

/// Maps the token's remote account to the local mounting user; other ids pass through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMap {
    pub remote_uid: u32,
    pub remote_gid: u32,
    pub local_uid: u32,
    pub local_gid: u32,
}

impl IdMap {
    /// Remote uid → local uid.
    pub fn uid_to_local(&self, uid: u32) -> u32 {
        if uid == self.remote_uid {
            self.local_uid
        } else {
            uid
        }
    }

    /// Remote gid → local gid.
    pub fn gid_to_local(&self, gid: u32) -> u32 {
        if gid == self.remote_gid {
            self.local_gid
        } else {
            gid
        }
    }

    /// Local uid → remote uid.
    pub fn uid_to_remote(&self, uid: u32) -> u32 {
        if uid == self.local_uid {
            self.remote_uid
        } else {
            uid
        }
    }

    /// Local gid → remote gid.
    pub fn gid_to_remote(&self, gid: u32) -> u32 {
        if gid == self.local_gid {
            self.remote_gid
        } else {
            gid
        }
    }
}

/// The FUSE file type of a remote kind.
pub fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        // Listed, never opened: shown as a regular file would invite opens; a fifo does not.
        FileKind::Other => FileType::NamedPipe,
    }
}

/// Builds the kernel's attributes of `ino` from a remote `Stat`.
pub fn to_file_attr(ino: u64, stat: &Stat, ids: &IdMap) -> FileAttr {
    let mtime = stat.mtime;
    let kind = file_type(stat.kind);
    FileAttr {
        ino,
        size: stat.size,
        blocks: stat.size.div_ceil(512),
        atime: stat.atime.unwrap_or(mtime),
        mtime,
        ctime: stat.ctime.unwrap_or(mtime),
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm: (stat.perm & 0o7777) as u16,
        nlink: stat
            .nlink
            .unwrap_or(if kind == FileType::Directory { 2 } else { 1 }),
        uid: ids.uid_to_local(stat.uid),
        gid: ids.gid_to_local(stat.gid),
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_map_both_ways_and_others_pass() {
        let m = IdMap {
            remote_uid: 5000,
            remote_gid: 6000,
            local_uid: 1000,
            local_gid: 100,
        };
        assert_eq!(m.uid_to_local(5000), 1000);
        assert_eq!(m.uid_to_local(42), 42);
        assert_eq!(m.gid_to_local(6000), 100);
        assert_eq!(m.uid_to_remote(1000), 5000);
        assert_eq!(m.gid_to_remote(100), 6000);
        assert_eq!(m.gid_to_remote(7), 7);
    }

    #[test]
    fn attr_from_stat() {
        let s = Stat {
            kind: FileKind::File,
            perm: 0o755,
            uid: 1,
            gid: 2,
            size: 1025,
            mtime: SystemTime::UNIX_EPOCH,
            atime: None,
            ctime: None,
            ino: None,
            nlink: None,
        };
        let ids = IdMap {
            remote_uid: 1,
            remote_gid: 2,
            local_uid: 10,
            local_gid: 20,
        };
        let a = to_file_attr(9, &s, &ids);
        assert_eq!((a.ino, a.size, a.blocks, a.perm), (9, 1025, 3, 0o755));
        assert_eq!(
            (a.uid, a.gid, a.kind, a.nlink),
            (10, 20, FileType::RegularFile, 1)
        );
    }
}
