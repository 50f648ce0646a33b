//! Reads: small files whole (content cache, else one `download`), large ones through a
//! staged object with ranged reads: a sequential reader gets a read-ahead window growing
//! from 1 MiB to 64 MiB with several ranges in flight, a random read fetches only what is
//! asked. Staged objects are reused per (path, size, mtime) while their URL is valid.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::handle::{Handle, LargeReader};
use super::Filesystem;
use crate::error::FsResult;
use crate::remote::{RemoteFs, RemotePath, StagedObject, Stat};
use crate::staging::StagedFile;

/// First read-ahead window of a sequential reader, and its cap.
const READAHEAD_MIN: u64 = 1 << 20;
const READAHEAD_MAX: u64 = 64 << 20;
/// Ranged reads in flight for one window.
const RANGES_IN_FLIGHT: u64 = 4;
/// Chunk of a large file fetched into a staged copy.
const FETCH_CHUNK: u64 = 8 << 20;
/// A staged object is not used when it expires sooner than this.
const OBJECT_MARGIN: Duration = Duration::from_secs(60);

fn slice(data: &Bytes, offset: u64, size: u32) -> Bytes {
    let start = (offset as usize).min(data.len());
    let end = start.saturating_add(size as usize).min(data.len());
    data.slice(start..end)
}

impl<R: RemoteFs> Filesystem<R> {
    pub(super) fn is_small(&self, size: u64) -> bool {
        size <= self.remote.capabilities().direct_download_limit
    }

    /// A staged object for ranged reads of this version, reused while valid.
    pub(super) async fn staged_object(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
    ) -> FsResult<StagedObject> {
        let key = (path.clone(), size, mtime);
        if let Some(o) = self.staged_objects.lock().get(&key) {
            if o.expires > SystemTime::now() + OBJECT_MARGIN {
                return Ok(o.clone());
            }
        }
        let o = self.remote.stage_download(path, size).await?;
        let mut objects = self.staged_objects.lock();
        if objects.len() > 1000 {
            objects.clear();
        }
        objects.insert(key, o.clone());
        Ok(o)
    }

    /// Whole content of a small file of this version: content cache, else one `download`.
    pub(super) async fn small_content(
        &self,
        path: &RemotePath,
        size: u64,
        mtime: SystemTime,
    ) -> FsResult<Bytes> {
        if let Some(p) = self.content.get(path, size, mtime) {
            if let Ok(data) = std::fs::read(p) {
                return Ok(Bytes::from(data));
            }
        }
        let data = self.remote.download(path).await?;
        if data.len() as u64 == size {
            if let Err(e) = self.content.put(path, size, mtime, &data) {
                tracing::debug!("content cache put failed: {e}");
            }
        }
        Ok(data)
    }

    /// Copies the remote content of `path` into a staged file.
    pub(super) async fn fetch_into(
        &self,
        path: &RemotePath,
        stat: &Stat,
        sf: &StagedFile,
    ) -> FsResult<()> {
        if stat.size == 0 {
            return Ok(());
        }
        if self.is_small(stat.size) {
            let data = self.small_content(path, stat.size, stat.mtime).await?;
            sf.write_at(0, &data)?;
            return Ok(());
        }
        let object = self.staged_object(path, stat.size, stat.mtime).await?;
        let mut offset = 0;
        while offset < object.size {
            let len = FETCH_CHUNK.min(object.size - offset);
            let data = self.remote.read_range(&object, offset, len).await?;
            if data.is_empty() {
                break;
            }
            sf.write_at(offset, &data)?;
            offset += data.len() as u64;
        }
        Ok(())
    }

    /// `read`: staged copy if any, else the small file's content or ranged reads.
    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        {
            let staged = h.file.staged.lock().await;
            if let Some(sf) = staged.as_ref() {
                return Ok(Bytes::from(sf.read_at(offset, size as usize)?));
            }
        }
        let (fsize, mtime) = h.version;
        if offset >= fsize {
            return Ok(Bytes::new());
        }
        let path = h.file.meta.lock().path.clone();
        if self.is_small(fsize) {
            let mut small = h.small.lock().await;
            if small.is_none() {
                *small = Some(self.small_content(&path, fsize, mtime).await?);
            }
            return Ok(small
                .as_ref()
                .map(|d| slice(d, offset, size))
                .unwrap_or_default());
        }
        self.read_large(&h, &path, offset, size).await
    }

    pub(super) async fn read_large(
        &self,
        h: &Handle,
        path: &RemotePath,
        offset: u64,
        size: u32,
    ) -> FsResult<Bytes> {
        let mut guard = h.reader.lock().await;
        if guard.is_none() {
            let object = self.staged_object(path, h.version.0, h.version.1).await?;
            *guard = Some(LargeReader {
                object,
                buf_start: 0,
                buf: Bytes::new(),
                next: 0,
                window: 0,
                ahead: None,
            });
        }
        let Some(r) = guard.as_mut() else {
            return Ok(Bytes::new());
        };
        let total = r.object.size;
        if offset >= total {
            return Ok(Bytes::new());
        }
        let end = (offset + size as u64).min(total);
        let mut buf_end = r.buf_start + r.buf.len() as u64;
        // The background window covers this read: it becomes the buffer.
        if !(offset >= r.buf_start && end <= buf_end) {
            if let Some((start, _)) = &r.ahead {
                let start = *start;
                if offset >= start && offset < start + r.window.max(1) {
                    if let Some((start, task)) = r.ahead.take() {
                        match task.await {
                            Ok(Ok(data)) => {
                                r.buf_start = start;
                                r.buf = data;
                                buf_end = r.buf_start + r.buf.len() as u64;
                            }
                            Ok(Err(e)) => return Err(e.into()),
                            Err(_) => {}
                        }
                    }
                }
            }
        }
        if offset >= r.buf_start && end <= buf_end {
            r.next = end;
            let out = r
                .buf
                .slice((offset - r.buf_start) as usize..(end - r.buf_start) as usize);
            self.prefetch(r, buf_end);
            return Ok(out);
        }
        // Sequential: right where the last read ended (or inside the window just fetched,
        // as the kernel's async reads may arrive slightly out of order).
        let sequential =
            offset == r.next || (offset >= r.buf_start && offset <= buf_end + r.window);
        let want = if sequential {
            r.window = if r.window == 0 {
                READAHEAD_MIN
            } else {
                (r.window * 2).min(READAHEAD_MAX)
            };
            r.window.max(end - offset)
        } else {
            if let Some((_, task)) = r.ahead.take() {
                task.abort();
            }
            r.window = 0;
            end - offset
        };
        let fetch_end = (offset + want).min(total);
        let parts = if sequential { RANGES_IN_FLIGHT } else { 1 };
        let data = fetch_ranges(
            self.remote.clone(),
            r.object.clone(),
            offset,
            fetch_end - offset,
            parts,
        )
        .await?;
        r.buf_start = offset;
        r.buf = data;
        r.next = end;
        let n = ((end - offset) as usize).min(r.buf.len());
        let out = r.buf.slice(0..n);
        if sequential {
            let buf_end = r.buf_start + r.buf.len() as u64;
            self.prefetch(r, buf_end);
        }
        Ok(out)
    }

    /// A sequential reader past half of its buffer gets the next window fetched in the
    /// background, so the link stays busy while the application consumes.
    fn prefetch(&self, r: &mut LargeReader, buf_end: u64) {
        let total = r.object.size;
        if r.window == 0 || r.ahead.is_some() || buf_end >= total {
            return;
        }
        let consumed = r.next.saturating_sub(r.buf_start);
        if consumed * 2 < r.buf.len() as u64 {
            return;
        }
        r.window = (r.window * 2).min(READAHEAD_MAX);
        let len = r.window.min(total - buf_end);
        let task = tokio::spawn(fetch_ranges(
            self.remote.clone(),
            r.object.clone(),
            buf_end,
            len,
            RANGES_IN_FLIGHT,
        ));
        r.ahead = Some((buf_end, task));
    }
}

/// `len` bytes at `offset` of a staged object, as `parts` ranged reads in flight at once.
async fn fetch_ranges<R: RemoteFs>(
    remote: std::sync::Arc<R>,
    object: StagedObject,
    offset: u64,
    len: u64,
    parts: u64,
) -> crate::remote::RemoteResult<Bytes> {
    let part = len.div_ceil(parts.max(1)).max(1);
    let mut futs = Vec::new();
    let mut at = offset;
    let end = offset + len;
    while at < end {
        let n = part.min(end - at);
        futs.push(remote.read_range(&object, at, n));
        at += n;
    }
    let chunks = futures_util::future::try_join_all(futs).await?;
    if chunks.len() == 1 {
        return Ok(chunks.into_iter().next().unwrap_or_default());
    }
    let mut buf = Vec::with_capacity(len as usize);
    for c in chunks {
        buf.extend_from_slice(&c);
    }
    Ok(Bytes::from(buf))
}
