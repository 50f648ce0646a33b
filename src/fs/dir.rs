//! Directory reading: `opendir` takes the listing (one `list`, or the cache while fresh,
//! merged with files created here and not yet uploaded), `readdir`/`readdirplus` page
//! through that snapshot; offset 0 after the first page is a rewinddir and lists again.

use std::sync::Arc;

use fuser::FileType;

use super::handle::{DirHandle, DirSnapEntry, OpenFile};
use super::{attr, DirItem, Entry, Filesystem, InodeNo, Opened, ROOT_INO};
use crate::error::{FsError, FsResult};
use crate::remote::{RemoteFs, RemotePath, Stat};

impl<R: RemoteFs> Filesystem<R> {
    /// Files created here and not yet on the remote, directly inside `dir`.
    pub(super) fn local_children(&self, dir: &RemotePath) -> Vec<(String, Stat)> {
        let files: Vec<Arc<OpenFile>> = self.files.lock().values().cloned().collect();
        files
            .iter()
            .filter_map(|f| {
                let m = f.meta.lock();
                (m.is_local() && m.path.parent().as_ref() == Some(dir))
                    .then(|| (m.path.file_name().to_string(), m.overlay()))
            })
            .collect()
    }

    pub(super) async fn snapshot(&self, dir: &RemotePath) -> FsResult<Vec<DirSnapEntry>> {
        let mut entries: Vec<DirSnapEntry> = match self.cache.listing(dir) {
            Some(l) => l
                .into_iter()
                .map(|(name, a)| DirSnapEntry { name, stat: a.stat })
                .collect(),
            None => self
                .list_dir(dir)
                .await?
                .into_iter()
                .map(|e| DirSnapEntry {
                    name: e.name,
                    stat: e.stat,
                })
                .collect(),
        };
        for (name, stat) in self.local_children(dir) {
            match entries.iter_mut().find(|e| e.name == name) {
                Some(e) => e.stat = stat,
                None => entries.push(DirSnapEntry { name, stat }),
            }
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// `opendir`.
    /// `opendir`: takes the listing now, so an unreadable directory fails here (as
    /// opendir(3) does) and the first `readdir` costs nothing more.
    pub async fn opendir(&self, ino: InodeNo) -> FsResult<Opened> {
        let path = self.path_of(ino)?;
        let entries = Arc::new(self.snapshot(&path).await?);
        let fh = self.handles.insert_dir(Arc::new(DirHandle {
            ino,
            path,
            entries: tokio::sync::Mutex::new(Some(entries)),
            read: std::sync::atomic::AtomicBool::new(false),
        }));
        Ok(Opened {
            fh,
            keep_cache: false,
            changed: false,
        })
    }

    pub(super) async fn dir_entries(
        &self,
        fh: u64,
        offset: i64,
    ) -> FsResult<(Arc<DirHandle>, Arc<Vec<DirSnapEntry>>)> {
        let dh = self.handles.dir(fh).ok_or(FsError::BadHandle(fh))?;
        let entries = {
            let mut guard = dh.entries.lock().await;
            // Offset 0 after the first read is a rewinddir: take a fresh listing.
            let rewind = offset == 0 && dh.read.swap(true, std::sync::atomic::Ordering::Relaxed);
            match guard.as_ref() {
                Some(e) if !rewind => e.clone(),
                _ => {
                    let e = Arc::new(self.snapshot(&dh.path).await?);
                    *guard = Some(e.clone());
                    e
                }
            }
        };
        Ok((dh, entries))
    }

    /// `readdir`: `.`, `..`, then the entries, from `offset` on.
    pub async fn readdir(&self, ino: InodeNo, fh: u64, offset: i64) -> FsResult<Vec<DirItem>> {
        let (dh, entries) = self.dir_entries(fh, offset).await?;
        let parent_ino = dh
            .path
            .parent()
            .and_then(|p| self.inodes.peek(&p))
            .filter(|_| ino != ROOT_INO)
            .unwrap_or(ROOT_INO);
        let mut items = vec![
            DirItem {
                ino,
                offset: 1,
                kind: FileType::Directory,
                name: ".".into(),
                entry: None,
            },
            DirItem {
                ino: parent_ino,
                offset: 2,
                kind: FileType::Directory,
                name: "..".into(),
                entry: None,
            },
        ];
        for (i, e) in entries.iter().enumerate() {
            let path = dh.path.join(&e.name)?;
            items.push(DirItem {
                ino: self.inodes.readdir_ino(&path),
                offset: i as i64 + 3,
                kind: attr::file_type(e.stat.kind),
                name: e.name.clone(),
                entry: None,
            });
        }
        Ok(items.into_iter().skip(offset.max(0) as usize).collect())
    }

    /// `readdirplus`: like `readdir` but with attributes; returns only what fits in `size`
    /// bytes of reply and counts one lookup per returned entry (never for `.`/`..`).
    pub async fn readdirplus(
        &self,
        ino: InodeNo,
        fh: u64,
        offset: i64,
        size: u32,
    ) -> FsResult<Vec<DirItem>> {
        let (dh, entries) = self.dir_entries(fh, offset).await?;
        let mut budget = size as usize;
        let mut items = Vec::new();
        let total = entries.len() as i64 + 2;
        let mut idx = offset.max(0);
        while idx < total {
            let name = match idx {
                0 => ".".to_string(),
                1 => "..".to_string(),
                i => entries[(i - 2) as usize].name.clone(),
            };
            // fuse_direntplus: entry_out (128) + dirent (24) + name, padded to 8 bytes.
            let need = (152 + name.len()).div_ceil(8) * 8;
            if need > budget {
                break;
            }
            budget -= need;
            let item = if idx < 2 {
                // The kernel skips `.` and `..` of readdirplus without counting a lookup.
                let a = self.getattr(ino).await?;
                DirItem {
                    ino: a.attr.ino,
                    offset: idx + 1,
                    kind: FileType::Directory,
                    name,
                    entry: Some(Entry {
                        attr: a.attr,
                        ttl: a.ttl,
                        generation: 0,
                    }),
                }
            } else {
                let e = &entries[(idx - 2) as usize];
                let path = dh.path.join(&e.name)?;
                let entry = self.entry(&path, &e.stat);
                DirItem {
                    ino: entry.attr.ino,
                    offset: idx + 1,
                    kind: entry.attr.kind,
                    name,
                    entry: Some(entry),
                }
            };
            items.push(item);
            idx += 1;
        }
        Ok(items)
    }

    /// `releasedir`.
    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }
}
