//! The S3-like staging area under `/_s3/{bucket}/{uuid}/{name}` on the server's listener:
//! presigned URLs, multipart part PUTs returning ETags, CompleteMultipartUpload with the XML
//! body real S3 takes, GET and HEAD with `Range`, and S3's XML errors.
//!
//! Objects and parts live in a server-owned temporary directory (mode 0700) and are streamed
//! in and out, never held whole in memory. Presigned URLs carry `X-Amz-Date`, `X-Amz-Expires`
//! and a signature (SHA-256 over a per-server random secret, the method, the key and the
//! upload id / part number); expired or forged URLs get S3's XML 403. ETags are the first 32
//! hex digits of the part's SHA-256 (S3 uses MD5; clients treat them as opaque).
//!
//! Lock order: `uploads` and `objects` are separate short `parking_lot` locks, never held
//! together and never across `.await`.

use std::collections::{BTreeMap, HashMap};
use std::io::SeekFrom;
use std::path::{Path, PathBuf};

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::StreamExt;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::transfer::now_epoch;
use super::v2::Shared;
use super::AppState;

/// The staging bucket: in-progress multipart uploads and completed objects.
pub(crate) struct Bucket {
    dir: tempfile::TempDir,
    secret: [u8; 32],
    uploads: Mutex<HashMap<String, MultipartUpload>>,
    objects: Mutex<HashMap<String, StoredObject>>,
}

pub(crate) struct MultipartUpload {
    key: String,
    parts: BTreeMap<u32, PartInfo>,
}

pub(crate) struct PartInfo {
    path: PathBuf,
    etag: String,
}

#[derive(Clone)]
pub(crate) struct StoredObject {
    pub path: PathBuf,
    pub size: u64,
    pub etag: String,
}

impl Bucket {
    pub(crate) fn new() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("f7tfs-s3-").tempdir()?;
        std::fs::create_dir(dir.path().join("parts"))?;
        std::fs::create_dir(dir.path().join("objects"))?;
        Ok(Self {
            dir,
            secret: rand::random(),
            uploads: Mutex::new(HashMap::new()),
            objects: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn sign(
        &self,
        method: &str,
        key: &str,
        upload: &str,
        part: &str,
        date: &str,
        expires: &str,
    ) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        for field in [method, key, upload, part, date, expires] {
            h.update(field.as_bytes());
            h.update(b"\n");
        }
        hex(&h.finalize())
    }

    /// A completed object, if any.
    pub(crate) fn object(&self, key: &str) -> Option<StoredObject> {
        self.objects.lock().get(key).cloned()
    }

    /// Makes an object visible under `key`.
    pub(crate) fn insert_object(&self, key: &str, object: StoredObject) {
        self.objects.lock().insert(key.to_string(), object);
    }

    /// A fresh path for an object file in the bucket directory.
    pub(crate) fn new_object_path(&self) -> PathBuf {
        self.dir
            .path()
            .join("objects")
            .join(uuid::Uuid::new_v4().to_string())
    }

    /// Starts a multipart upload for `key`; returns its upload id.
    pub(crate) fn create_upload(&self, key: &str) -> String {
        let upload_id = hex(&rand::random::<[u8; 20]>());
        self.uploads.lock().insert(
            upload_id.clone(),
            MultipartUpload {
                key: key.to_string(),
                parts: BTreeMap::new(),
            },
        );
        upload_id
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Percent-encodes a key for a URL path (`/` kept).
pub(crate) fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub(crate) async fn file_etag(path: &Path) -> std::io::Result<String> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize())[..32].to_string())
}

pub(crate) fn s3_routes() -> Router<Shared> {
    Router::new().route(
        "/_s3/{*key}",
        get(s3_get)
            .put(s3_put_part)
            .post(s3_complete)
            .layer(axum::extract::DefaultBodyLimit::disable()),
    )
}

impl AppState {
    /// A presigned URL for `method` on `key` (with upload id / part number when given).
    pub(crate) fn presign(&self, method: &str, key: &str, upload: &str, part: &str) -> String {
        let date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let expires = self.cfg.s3_url_ttl.as_secs().to_string();
        let sig = self
            .transfers
            .bucket
            .sign(method, key, upload, part, &date, &expires);
        let mut q = String::new();
        if !upload.is_empty() {
            q.push_str(&format!("uploadId={upload}&"));
        }
        if !part.is_empty() {
            q.push_str(&format!("partNumber={part}&"));
        }
        format!(
            "{}/_s3/{}?{q}X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=f7tfs%2F{}%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date={date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}",
            self.base_url,
            encode_key(key),
            &date[..8],
        )
    }
}

fn s3_error(status: StatusCode, code: &str, message: &str, resource: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{}</Resource><RequestId>f7tfs</RequestId></Error>",
        xml_escape(resource)
    );
    (status, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Checks a presigned URL; `Some` is the S3 403 answer.
fn check_signature(
    st: &AppState,
    method: &str,
    key: &str,
    q: &HashMap<String, String>,
) -> Option<Response> {
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let (date, expires, sig) = (
        get("X-Amz-Date"),
        get("X-Amz-Expires"),
        get("X-Amz-Signature"),
    );
    let expected = st.transfers.bucket.sign(
        method,
        key,
        get("uploadId"),
        get("partNumber"),
        date,
        expires,
    );
    let resource = format!("/{key}");
    if sig.is_empty() || sig != expected {
        return Some(s3_error(
            StatusCode::FORBIDDEN,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
            &resource,
        ));
    }
    let issued = jiff::civil::DateTime::strptime("%Y%m%dT%H%M%SZ", date)
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_second());
    let ttl: i64 = expires.parse().unwrap_or(0);
    match issued {
        Some(t) if now_epoch() <= t + ttl => None,
        _ => Some(s3_error(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Request has expired",
            &resource,
        )),
    }
}

async fn s3_put_part(
    State(st): State<Shared>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    if let Some(r) = check_signature(&st, "PUT", &key, &q) {
        return r;
    }
    let upload_id = q.get("uploadId").cloned().unwrap_or_default();
    let Some(part_no) = q
        .get("partNumber")
        .and_then(|p| p.parse::<u32>().ok())
        .filter(|n| (1..=10_000).contains(n))
    else {
        return s3_error(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "Part number must be an integer between 1 and 10000, inclusive",
            &key,
        );
    };
    if !st.transfers.bucket.uploads.lock().contains_key(&upload_id) {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified multipart upload does not exist.",
            &key,
        );
    }
    let path = st
        .transfers
        .bucket
        .dir
        .path()
        .join("parts")
        .join(format!("{upload_id}.{part_no}"));
    let written = async {
        let mut f = tokio::fs::File::create(&path).await?;
        let mut h = Sha256::new();
        let mut stream = req.into_body().into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            h.update(&chunk);
            f.write_all(&chunk).await?;
        }
        f.flush().await?;
        Ok::<_, std::io::Error>(hex(&h.finalize())[..32].to_string())
    }
    .await;
    let etag = match written {
        Ok(e) => e,
        Err(e) => {
            let _ = tokio::fs::remove_file(&path).await;
            return s3_error(
                StatusCode::BAD_REQUEST,
                "IncompleteBody",
                &e.to_string(),
                &key,
            );
        }
    };
    match st.transfers.bucket.uploads.lock().get_mut(&upload_id) {
        Some(u) => {
            u.parts.insert(
                part_no,
                PartInfo {
                    path,
                    etag: etag.clone(),
                },
            );
        }
        None => {
            return s3_error(
                StatusCode::NOT_FOUND,
                "NoSuchUpload",
                "The specified multipart upload does not exist.",
                &key,
            )
        }
    }
    let mut resp = StatusCode::OK.into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

/// `(part number, etag without quotes)` pairs of a CompleteMultipartUpload body.
pub(crate) fn parse_complete_xml(body: &str) -> Option<Vec<(u32, String)>> {
    fn inner<'a>(s: &'a str, tag: &str) -> Option<&'a str> {
        let open = format!("<{tag}>");
        let close = format!("</{tag}>");
        let a = s.find(&open)? + open.len();
        let b = s[a..].find(&close)? + a;
        Some(&s[a..b])
    }
    if !body.contains("CompleteMultipartUpload") {
        return None;
    }
    let mut parts = Vec::new();
    let mut rest = body;
    while let Some(start) = rest.find("<Part>") {
        let end = rest[start..].find("</Part>")? + start;
        let block = &rest[start..end];
        let n: u32 = inner(block, "PartNumber")?.trim().parse().ok()?;
        let etag = inner(block, "ETag")?
            .trim()
            .replace("&quot;", "\"")
            .replace("&#34;", "\"")
            .trim_matches('"')
            .to_string();
        parts.push((n, etag));
        rest = &rest[end + "</Part>".len()..];
    }
    Some(parts)
}

async fn s3_complete(
    State(st): State<Shared>,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    if let Some(r) = check_signature(&st, "POST", &key, &q) {
        return r;
    }
    let upload_id = q.get("uploadId").cloned().unwrap_or_default();
    let Some(parts) = parse_complete_xml(&String::from_utf8_lossy(&body)).filter(|p| !p.is_empty())
    else {
        return s3_error(StatusCode::BAD_REQUEST, "MalformedXML", "The XML you provided was not well-formed or did not validate against our published schema.", &key);
    };
    if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
        return s3_error(StatusCode::BAD_REQUEST, "InvalidPartOrder", "The list of parts was not in ascending order. The parts list must be specified in order by part number.", &key);
    }
    let files: Vec<(PathBuf, String)> = {
        let uploads = st.transfers.bucket.uploads.lock();
        let Some(u) = uploads.get(&upload_id).filter(|u| u.key == key) else {
            return s3_error(
                StatusCode::NOT_FOUND,
                "NoSuchUpload",
                "The specified multipart upload does not exist.",
                &key,
            );
        };
        let mut files = Vec::new();
        for (n, etag) in &parts {
            match u.parts.get(n) {
                Some(p) if &p.etag == etag => files.push((p.path.clone(), p.etag.clone())),
                _ => {
                    return s3_error(StatusCode::BAD_REQUEST, "InvalidPart", "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.", &key)
                }
            }
        }
        files
    };
    let object = st
        .transfers
        .bucket
        .dir
        .path()
        .join("objects")
        .join(uuid::Uuid::new_v4().to_string());
    let obj2 = object.clone();
    let srcs: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    let joined = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        let mut out = std::fs::File::create(&obj2)?;
        let mut total = 0;
        for p in &srcs {
            let mut f = std::fs::File::open(p)?;
            total += std::io::copy(&mut f, &mut out)?;
        }
        out.sync_all()?;
        Ok(total)
    })
    .await;
    let size = match joined {
        Ok(Ok(n)) => n,
        _ => {
            return s3_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "could not assemble the object",
                &key,
            )
        }
    };
    let mut h = Sha256::new();
    for (_, e) in &files {
        h.update(e.as_bytes());
    }
    let etag = format!("{}-{}", &hex(&h.finalize())[..32], files.len());
    let removed = st.transfers.bucket.uploads.lock().remove(&upload_id);
    if let Some(u) = removed {
        for p in u.parts.values() {
            let _ = std::fs::remove_file(&p.path);
        }
    }
    st.transfers.bucket.objects.lock().insert(
        key.clone(),
        StoredObject {
            path: object,
            size,
            etag: etag.clone(),
        },
    );
    let (bucket, rest) = key.split_once('/').unwrap_or((&key, ""));
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>{}/_s3/{}</Location><Bucket>{}</Bucket><Key>{}</Key><ETag>\"{etag}\"</ETag></CompleteMultipartUploadResult>",
        st.base_url,
        xml_escape(&encode_key(&key)),
        xml_escape(bucket),
        xml_escape(rest)
    );
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/xml")],
        body,
    )
        .into_response()
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` → inclusive range within `size`; `Err` = unsatisfiable.
pub(crate) fn parse_range(value: &str, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        if start >= size {
            return Err(());
        }
        let end = if b.is_empty() {
            size - 1
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(size - 1)
        };
        if end < start {
            return Err(());
        }
        (start, end)
    };
    Ok(Some(range))
}

async fn s3_get(
    State(st): State<Shared>,
    method: Method,
    UrlPath(key): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    // A GET-signed URL is also accepted for HEAD (the real one is not; see API.md).
    if let Some(r) = check_signature(&st, "GET", &key, &q) {
        return r;
    }
    let Some(obj) = st.transfers.bucket.object(&key) else {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
            &key,
        );
    };
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) => match parse_range(r, obj.size) {
            Ok(r) => r,
            Err(()) => {
                let mut resp = s3_error(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                    &key,
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", obj.size)) {
                    resp.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return resp;
            }
        },
        None => None,
    };
    let (status, start, len) = match range {
        Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        None => (StatusCode::OK, 0, obj.size),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", obj.etag));
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", start, start + len - 1, obj.size),
        );
    }
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        match tokio::fs::File::open(&obj.path).await {
            Ok(mut f) => {
                if f.seek(SeekFrom::Start(start)).await.is_err() {
                    return s3_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "seek failed",
                        &key,
                    );
                }
                let reader = f.take(len);
                let stream = futures_util::stream::unfold(reader, |mut r| async move {
                    let mut buf = vec![0u8; 256 * 1024];
                    match r.read(&mut buf).await {
                        Ok(0) => None,
                        Ok(n) => {
                            buf.truncate(n);
                            Some((Ok::<_, std::io::Error>(Bytes::from(buf)), r))
                        }
                        Err(e) => Some((Err(e), r)),
                    }
                });
                Body::from_stream(stream)
            }
            Err(_) => {
                return s3_error(
                    StatusCode::NOT_FOUND,
                    "NoSuchKey",
                    "The specified key does not exist.",
                    &key,
                )
            }
        }
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_xml_parsing() {
        let xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
<Part><PartNumber>1</PartNumber><ETag>\"abc\"</ETag></Part>\n\
<Part><ETag>&quot;def&quot;</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(
            parse_complete_xml(xml).unwrap(),
            vec![(1, "abc".to_string()), (2, "def".to_string())]
        );
        assert!(parse_complete_xml("<Other/>").is_none());
        assert!(parse_complete_xml("<CompleteMultipartUpload><Part><PartNumber>x</PartNumber><ETag>a</ETag></Part></CompleteMultipartUpload>").is_none());
        assert_eq!(
            parse_complete_xml("<CompleteMultipartUpload></CompleteMultipartUpload>").unwrap(),
            vec![]
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-0", 10), Ok(Some((0, 0))));
        assert_eq!(parse_range("bytes=5-", 10), Ok(Some((5, 9))));
        assert_eq!(parse_range("bytes=-3", 10), Ok(Some((7, 9))));
        assert_eq!(parse_range("bytes=8-100", 10), Ok(Some((8, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Err(()));
        assert_eq!(parse_range("bytes=4-2", 10), Err(()));
        assert_eq!(parse_range("items=1-2", 10), Ok(None));
    }

    #[test]
    fn key_encoding() {
        assert_eq!(encode_key("u/id/a b☃.txt"), "u/id/a%20b%E2%98%83.txt");
    }
}
