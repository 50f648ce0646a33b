//! The S3 side of staged transfers (API.md 5.2): multipart part `PUT`s in parallel, streamed
//! from the local file, the `CompleteMultipartUpload` XML with the parts' quoted ETags, and
//! ranged `GET`s on a presigned download URL. Presigned URLs need no token; they go through
//! `HttpClient` for retries (a part `PUT` is idempotent) and the concurrency bound.

use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{ETAG, RANGE};
use reqwest::Method;
use tokio::io::AsyncReadExt;

use super::http::{range_past_end, Body, Call, HttpClient};
use super::{Progress, RemoteError, RemoteResult};

/// Read size of the streamed part bodies.
const CHUNK: usize = 256 * 1024;
/// Slowest link we still wait for when sizing a part's timeout (bytes per second).
const MIN_RATE: u64 = 512 * 1024;

/// Byte ranges `[start, end)` of the parts of a `size`-byte file cut at `part_size`.
pub fn part_ranges(size: u64, part_size: u64) -> RemoteResult<Vec<(u64, u64)>> {
    if part_size == 0 {
        return Err(RemoteError::Protocol(
            "server announced a part size of 0".into(),
        ));
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start < size {
        let end = (start + part_size).min(size);
        out.push((start, end));
        start = end;
    }
    Ok(out)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The `CompleteMultipartUpload` body: parts sorted by number, ETags kept (or made) quoted.
pub fn complete_xml(parts: &[(u32, String)]) -> String {
    let mut sorted: Vec<&(u32, String)> = parts.iter().collect();
    sorted.sort_by_key(|(n, _)| *n);
    let mut xml =
        String::from("<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (n, etag) in sorted {
        let quoted = if etag.starts_with('"') && etag.ends_with('"') && etag.len() >= 2 {
            etag.clone()
        } else {
            format!("\"{etag}\"")
        };
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{}</ETag></Part>",
            xml_escape(&quoted)
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

/// An S3 error document (`<Error><Code>..</Code><Message>..</Message></Error>`), which S3 may
/// send with status 200 for a completion.
pub fn s3_error_in(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<Error>") {
        return None;
    }
    let pick = |tag: &str| {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let a = text.find(&open)? + open.len();
        let b = text[a..].find(&close)? + a;
        Some(text[a..b].to_string())
    };
    Some(format!(
        "{}: {}",
        pick("Code").unwrap_or_else(|| "Error".into()),
        pick("Message").unwrap_or_default()
    ))
}

/// Shared progress accounting: total done and per-part bytes (reset when a part restarts).
struct Tracker {
    done: AtomicU64,
    per_part: Vec<AtomicU64>,
    total: u64,
    progress: Option<Progress>,
}

impl Tracker {
    fn add(&self, part: usize, n: u64) {
        if let Some(p) = self.per_part.get(part) {
            p.fetch_add(n, Ordering::Relaxed);
        }
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(cb) = &self.progress {
            cb(done.min(self.total), self.total);
        }
    }

    fn restart(&self, part: usize) {
        if let Some(p) = self.per_part.get(part) {
            let old = p.swap(0, Ordering::Relaxed);
            self.done.fetch_sub(old, Ordering::Relaxed);
        }
    }
}

/// A body factory streaming `[start, end)` of `local` in `CHUNK`s.
fn part_body(local: PathBuf, start: u64, end: u64, index: usize, tracker: Arc<Tracker>) -> Body {
    let len = end - start;
    let factory = move || -> std::io::Result<reqwest::Body> {
        tracker.restart(index);
        let mut file = std::fs::File::open(&local)?;
        file.seek(SeekFrom::Start(start))?;
        let reader = tokio::fs::File::from_std(file).take(len);
        let tracker = tracker.clone();
        let stream = futures_util::stream::try_unfold(reader, move |mut reader| {
            let tracker = tracker.clone();
            async move {
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = reader.read_buf(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                tracker.add(index, n as u64);
                Ok(Some((buf.freeze(), reader)))
            }
        });
        Ok(reqwest::Body::wrap_stream(stream))
    };
    Body::Stream {
        factory: Arc::new(factory),
        len,
    }
}

/// PUTs the parts of `local` (`size` bytes, cut at `part_size`) to `urls` (one per part, in
/// order), at most `parallelism` at a time; returns `(part number, ETag)` pairs.
pub async fn upload_parts(
    http: &HttpClient,
    urls: &[String],
    local: &Path,
    size: u64,
    part_size: u64,
    parallelism: usize,
    progress: Option<Progress>,
) -> RemoteResult<Vec<(u32, String)>> {
    let ranges = part_ranges(size, part_size)?;
    if ranges.len() != urls.len() {
        return Err(RemoteError::Protocol(format!(
            "server gave {} part URLs for {} parts of {part_size} bytes",
            urls.len(),
            ranges.len()
        )));
    }
    let tracker = Arc::new(Tracker {
        done: AtomicU64::new(0),
        per_part: ranges.iter().map(|_| AtomicU64::new(0)).collect(),
        total: size,
        progress,
    });
    let jobs: Vec<_> = ranges
        .into_iter()
        .zip(urls.iter().cloned())
        .enumerate()
        .map(|(i, ((start, end), url))| {
            let tracker = tracker.clone();
            let local = local.to_path_buf();
            async move {
                let len = end - start;
                let per_try = http.call_timeout() + Duration::from_secs(len / MIN_RATE);
                let mut call = Call::external(Method::PUT, url, true)
                    .body(part_body(local, start, end, i, tracker));
                call.timeout = Some(per_try);
                call.deadline = Some(per_try * 4 + Duration::from_secs(60));
                let reply = http.send(&call).await?;
                let etag = reply
                    .headers
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .ok_or_else(|| {
                        RemoteError::Protocol(format!("part {} answered without an ETag", i + 1))
                    })?;
                Ok::<_, RemoteError>((i as u32 + 1, etag))
            }
        })
        .collect();
    futures_util::stream::iter(jobs)
        .buffer_unordered(parallelism.max(1))
        .try_collect()
        .await
}

/// POSTs the completion of a multipart upload. Not replayed after it may have reached S3.
pub async fn complete_upload(
    http: &HttpClient,
    url: &str,
    parts: &[(u32, String)],
) -> RemoteResult<()> {
    let call = Call::external(Method::POST, url, false)
        .header(reqwest::header::CONTENT_TYPE, "application/xml")
        .body(Body::Raw(Bytes::from(complete_xml(parts))));
    let reply = http.send(&call).await?;
    match s3_error_in(&reply.body) {
        Some(e) => Err(RemoteError::Unavailable(format!(
            "completing the multipart upload failed: {e}"
        ))),
        None => Ok(()),
    }
}

/// `len` bytes at `offset` of a presigned object (shorter only at its end).
pub async fn read_range(
    http: &HttpClient,
    url: &str,
    offset: u64,
    len: u64,
) -> RemoteResult<Bytes> {
    if len == 0 {
        return Ok(Bytes::new());
    }
    let last = offset + len - 1;
    let mut call =
        Call::external(Method::GET, url, true).header(RANGE, format!("bytes={offset}-{last}"));
    // Big read-ahead windows on a slow link need more than one call timeout.
    let per_try = http.call_timeout() + Duration::from_secs(len / MIN_RATE);
    call.timeout = Some(per_try);
    call.deadline = Some(per_try * 4 + Duration::from_secs(60));
    match http.send(&call).await {
        Ok(reply) if reply.is_partial() => Ok(reply.body),
        Ok(reply) => {
            // 200: the server ignored the range and sent everything.
            let body = reply.body;
            let a = (offset as usize).min(body.len());
            let b = ((last + 1) as usize).min(body.len());
            Ok(body.slice(a..b))
        }
        // 416: the range starts at or after the end of the object.
        Err(e) if range_past_end(&e) => Ok(Bytes::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_cover_the_file() {
        assert_eq!(part_ranges(12, 5).unwrap(), vec![(0, 5), (5, 10), (10, 12)]);
        assert_eq!(part_ranges(10, 5).unwrap(), vec![(0, 5), (5, 10)]);
        assert!(part_ranges(0, 5).unwrap().is_empty());
        assert!(part_ranges(1, 0).is_err());
    }

    #[test]
    fn completion_xml_sorts_and_quotes() {
        let xml = complete_xml(&[
            (2, "\"bbb\"".into()),
            (1, "aaa".into()),
            (3, "\"c&c\"".into()),
        ]);
        assert_eq!(
            xml,
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Part><PartNumber>1</PartNumber><ETag>\"aaa\"</ETag></Part>\
             <Part><PartNumber>2</PartNumber><ETag>\"bbb\"</ETag></Part>\
             <Part><PartNumber>3</PartNumber><ETag>\"c&amp;c\"</ETag></Part>\
             </CompleteMultipartUpload>"
        );
    }

    #[test]
    fn s3_errors_are_found() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>InvalidPart</Code><Message>bad etag</Message></Error>";
        assert_eq!(s3_error_in(body).unwrap(), "InvalidPart: bad etag");
        assert_eq!(s3_error_in(b"<CompleteMultipartUploadResult/>"), None);
    }
}
