//! Transfer jobs (`transfer/upload|download|mv|cp|rm|compress|extract`) and the S3-like staging
//! area under `/_s3/{bucket}/{uuid}/{name}` on the same listener.
//!
//! Jobs are tokio tasks: PENDING for `--job-delay-ms`, then RUNNING, then COMPLETED or FAILED,
//! read through `GET /compute/{system}/jobs/{id}` in the shape Slurm gives the real server.
//! Like the real job scripts they write `.f7t_file_handling_job[_error]_<uuid>.log` into the
//! working directory (`ROOT/<user>` if it exists, else ROOT), as the served user. mv, cp, rm,
//! compress and extract jobs end COMPLETED with exit code 0 even when their command failed (the
//! real scripts' `exit $?` after `echo` is 0); only the log tells.
//!
//! Staging objects and parts live in a server-owned temporary directory (mode 0700) and are
//! streamed in and out, never held whole in memory. Presigned URLs carry `X-Amz-Date`,
//! `X-Amz-Expires` and a signature (SHA-256 over a per-server random secret, the method, the
//! key and the query); expired or forged URLs get S3's XML 403.
//!
//! Lock order: `jobs`, `uploads` and `objects` are separate short `parking_lot` locks, never
//! held together and never across `.await`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::exec::{Input, Sink};
use super::v2::{compress_argv, extract_argv, ApiError, Shared};
use super::AppState;
use crate::remote::v2::wire::{
    CompressRequest, ExtractRequest, JobLogs, MoveRequest, TransferDirectives, TransferJob,
    TransferResponse,
};

/// The part of the state owned by this module.
pub(crate) struct Transfers {
    dir: tempfile::TempDir,
    secret: [u8; 32],
    next_job: AtomicU64,
    jobs: Mutex<HashMap<String, JobRecord>>,
    uploads: Mutex<HashMap<String, MultipartUpload>>,
    objects: Mutex<HashMap<String, StoredObject>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Running => "RUNNING",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Debug, Clone)]
struct JobRecord {
    name: &'static str,
    state: JobState,
    start: Option<i64>,
    end: Option<i64>,
    exit_code: Option<i64>,
    working_dir: String,
    cancel: bool,
}

struct MultipartUpload {
    key: String,
    parts: BTreeMap<u32, PartInfo>,
}

struct PartInfo {
    path: PathBuf,
    etag: String,
}

#[derive(Clone)]
struct StoredObject {
    path: PathBuf,
    size: u64,
    etag: String,
}

/// What a job does once it runs.
enum JobKind {
    Move {
        src: String,
        dst: String,
    },
    Copy {
        src: String,
        dst: String,
        deref: bool,
    },
    Delete {
        path: String,
    },
    Ingress {
        key: String,
        target: String,
    },
    Egress {
        key: String,
        src: String,
    },
    Tar {
        argv: Vec<String>,
        what: &'static str,
    },
}

impl Transfers {
    pub(crate) fn new() -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("f7tfs-s3-").tempdir()?;
        std::fs::create_dir(dir.path().join("parts"))?;
        std::fs::create_dir(dir.path().join("objects"))?;
        Ok(Self {
            dir,
            secret: rand::random(),
            next_job: AtomicU64::new(1),
            jobs: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashMap::new()),
            objects: Mutex::new(HashMap::new()),
        })
    }

    fn sign(
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

    fn object(&self, key: &str) -> Option<StoredObject> {
        self.objects.lock().get(key).cloned()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_epoch() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// Percent-encodes a key for a URL path (`/` kept).
fn encode_key(key: &str) -> String {
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

pub(crate) fn api_routes() -> Router<Shared> {
    let t = "/filesystem/{system}/transfer";
    Router::new()
        .route(&format!("{t}/upload"), post(upload))
        .route(&format!("{t}/download"), post(download))
        .route(&format!("{t}/mv"), post(mv))
        .route(&format!("{t}/cp"), post(cp))
        .route(&format!("{t}/rm"), delete(rm))
        .route(&format!("{t}/compress"), post(compress))
        .route(&format!("{t}/extract"), post(extract))
        .route(
            "/compute/{system}/jobs/{id}",
            get(job_get).delete(job_cancel),
        )
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

// ------------------------------------------------------------------------------- jobs

impl AppState {
    fn working_dir(&self) -> String {
        let home = self.root_path.join(self.user());
        if home.is_dir() {
            home.to_string_lossy().into_owned()
        } else {
            self.root.clone()
        }
    }

    /// Registers a job, starts its task, and returns the `transferJob` answer.
    fn submit(self: &Arc<Self>, name: &'static str, kind: JobKind) -> TransferJob {
        let t = &self.transfers;
        let id = t.next_job.fetch_add(1, Ordering::Relaxed).to_string();
        let wd = self.working_dir();
        let uuid = uuid::Uuid::new_v4();
        let logs = JobLogs {
            output_log: format!("{wd}/.f7t_file_handling_job_{uuid}.log"),
            error_log: format!("{wd}/.f7t_file_handling_job_error_{uuid}.log"),
        };
        t.jobs.lock().insert(
            id.clone(),
            JobRecord {
                name,
                state: JobState::Pending,
                start: None,
                end: None,
                exit_code: None,
                working_dir: wd.clone(),
                cancel: false,
            },
        );
        let st = self.clone();
        let (jid, jlogs) = (id.clone(), logs.clone());
        tokio::spawn(async move {
            tokio::time::sleep(st.cfg.job_delay).await;
            {
                let mut jobs = st.transfers.jobs.lock();
                let Some(j) = jobs.get_mut(&jid) else { return };
                if j.cancel {
                    j.state = JobState::Cancelled;
                    j.end = Some(now_epoch());
                    return;
                }
                j.state = JobState::Running;
                j.start = Some(now_epoch());
            }
            let exit = st.run_job(&jid, kind, &jlogs).await;
            let mut jobs = st.transfers.jobs.lock();
            if let Some(j) = jobs.get_mut(&jid) {
                j.state = if exit == 0 {
                    JobState::Completed
                } else {
                    JobState::Failed
                };
                j.exit_code = Some(exit);
                j.end = Some(now_epoch());
            }
        });
        TransferJob {
            job_id: id,
            system: self.cfg.system.clone(),
            working_directory: wd,
            logs,
        }
    }

    /// Appends `text` to a log file as the served user.
    async fn log(&self, path: &str, text: &str) {
        let _ = self
            .runner
            .run_with(
                &[
                    OsStr::new("bash"),
                    OsStr::new("-c"),
                    OsStr::new("cat >> \"$1\""),
                    OsStr::new("bash"),
                    OsStr::new(path),
                ],
                Input::Bytes(text.as_bytes().to_vec()),
                Sink::Capture(0),
                false,
            )
            .await;
    }

    async fn run_plain(&self, argv: &[&str]) -> (i32, String) {
        let refs: Vec<&OsStr> = argv.iter().map(OsStr::new).collect();
        match self
            .runner
            .run_with(&refs, Input::Null, Sink::Capture(1 << 20), false)
            .await
        {
            Ok(o) => (o.status, o.stderr),
            Err(e) => (127, e.to_string()),
        }
    }

    /// Runs one job body; returns the job's exit code.
    async fn run_job(&self, id: &str, kind: JobKind, logs: &JobLogs) -> i64 {
        let date = || {
            jiff::Zoned::now()
                .strftime("%a %b %e %H:%M:%S UTC %Y")
                .to_string()
        };
        let (out, err) = (&logs.output_log, &logs.error_log);
        // Slurm creates both files when the job starts.
        self.log(err, "").await;
        // mv/cp/rm/tar: the scripts end `exit $?` after an `echo`, i.e. 0 even on failure.
        let simple = |title: &'static str, verb: &'static str| (title, verb);
        let (title, verb, argv): (&str, &str, Vec<String>) = match kind {
            JobKind::Move { src, dst } => {
                let (t, v) = simple("Move Files Job", "moved");
                (t, v, vec!["mv".into(), "--".into(), src, dst])
            }
            JobKind::Copy { src, dst, deref } => {
                let (t, v) = simple("Copy Files Job", "copied");
                let mode = if deref { "-RL" } else { "-dR" };
                (
                    t,
                    v,
                    vec![
                        "cp".into(),
                        "--force".into(),
                        mode.into(),
                        "--preserve=all".into(),
                        "--".into(),
                        src,
                        dst,
                    ],
                )
            }
            JobKind::Delete { path } => {
                let (t, v) = simple("Delete Files Job", "deleted");
                (t, v, vec!["rm".into(), "-R".into(), "--".into(), path])
            }
            JobKind::Tar { argv, what } => ("Compress/Extract Files Job", what, argv),
            JobKind::Ingress { key, target } => {
                return self.ingress(id, &key, &target, out, err).await
            }
            JobKind::Egress { key, src } => return self.egress(id, &key, &src, out, err).await,
        };
        self.log(out, &format!("{} {title} (id:{id})\n", date()))
            .await;
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, stderr) = self.run_plain(&refs).await;
        if code == 0 {
            self.log(
                out,
                &format!("{} Files were successfully {verb}.\n", date()),
            )
            .await;
        } else {
            self.log(
                err,
                &format!(
                    "{stderr}{} Unable to {} files exit code:{code} error: \n",
                    date(),
                    verb.trim_end_matches('d').trim_end_matches('e')
                ),
            )
            .await;
        }
        0
    }

    /// Upload job: wait for the completed object, then write it to `target` as the user.
    async fn ingress(&self, id: &str, key: &str, target: &str, out: &str, err: &str) -> i64 {
        let date = || {
            jiff::Zoned::now()
                .strftime("%a %b %e %H:%M:%S UTC %Y")
                .to_string()
        };
        self.log(
            out,
            &format!("{} Ingress File Transfer Job (id:{id})\n", date()),
        )
        .await;
        self.log(
            out,
            &format!("{} Waiting till file to tranfer is available...\n", date()),
        )
        .await;
        let mut found = None;
        for _ in 0..1440 {
            if let Some(o) = self.transfers.object(key) {
                found = Some(o);
                break;
            }
            tokio::time::sleep(self.cfg.upload_poll_interval).await;
        }
        let Some(obj) = found else {
            return 1;
        };
        self.log(
            out,
            &format!("{} File to transfer found in S3 bucket\n", date()),
        )
        .await;
        self.log(
            out,
            &format!("{} Downloading file to: {target} ...\n", date()),
        )
        .await;
        let file = match tokio::fs::File::open(&obj.path).await {
            Ok(f) => f,
            Err(e) => {
                self.log(err, &format!("{} Download failed: {e}\n", date()))
                    .await;
                return 1;
            }
        };
        let res = self
            .runner
            .run_with(
                &[
                    OsStr::new("bash"),
                    OsStr::new("-c"),
                    OsStr::new(
                        "if [ -d \"$1\" ]; then exit 3; fi; rm -f -- \"$1\" && cat > \"$1\"",
                    ),
                    OsStr::new("bash"),
                    OsStr::new(target),
                ],
                Input::Reader(Box::new(file)),
                Sink::Capture(1 << 20),
                false,
            )
            .await;
        match res {
            Ok(o) if o.status == 0 => {
                self.log(
                    out,
                    &format!(
                        "{} Received {} bytes\n{} File was successfully downloaded (size: {:.3}MB)\n",
                        date(),
                        obj.size,
                        date(),
                        obj.size as f64 / 1024.0 / 1024.0
                    ),
                )
                .await;
                0
            }
            Ok(o) => {
                self.log(
                    err,
                    &format!("{}{} Download failed: part 1\n", o.stderr, date()),
                )
                .await;
                i64::from(o.status)
            }
            Err(e) => {
                self.log(err, &format!("{} Download failed: {e}\n", date()))
                    .await;
                1
            }
        }
    }

    /// Download job: read `src` as the user into the staging object, then make it visible.
    async fn egress(&self, id: &str, key: &str, src: &str, out: &str, err: &str) -> i64 {
        let date = || {
            jiff::Zoned::now()
                .strftime("%a %b %e %H:%M:%S UTC %Y")
                .to_string()
        };
        self.log(
            out,
            &format!("{} Outgress File Transfer Job (id:{id})\n", date()),
        )
        .await;
        let path = self
            .transfers
            .dir
            .path()
            .join("objects")
            .join(uuid::Uuid::new_v4().to_string());
        let res = self
            .runner
            .run_with(
                &[OsStr::new("cat"), OsStr::new("--"), OsStr::new(src)],
                Input::Null,
                Sink::File(path.clone()),
                false,
            )
            .await;
        match res {
            Ok(o) if o.status == 0 => {
                let etag = match file_etag(&path).await {
                    Ok(e) => e,
                    Err(_) => return 1,
                };
                self.transfers.objects.lock().insert(
                    key.to_string(),
                    StoredObject {
                        path,
                        size: o.written,
                        etag,
                    },
                );
                self.log(
                    out,
                    &format!("{} Multipart file upload successfully completed\n", date()),
                )
                .await;
                0
            }
            Ok(o) => {
                let _ = tokio::fs::remove_file(&path).await;
                self.log(
                    err,
                    &format!("{}{} File not found or not readable\n", o.stderr, date()),
                )
                .await;
                34
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                self.log(err, &format!("{} {e}\n", date())).await;
                1
            }
        }
    }

    fn presign(&self, method: &str, key: &str, upload: &str, part: &str) -> String {
        let date = jiff::Timestamp::now()
            .strftime("%Y%m%dT%H%M%SZ")
            .to_string();
        let expires = self.cfg.s3_url_ttl.as_secs().to_string();
        let sig = self
            .transfers
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

    fn new_key(&self, path: &str) -> String {
        let name = Path::new(path.trim_end_matches('/'))
            .file_name()
            .map_or("object".to_string(), |n| n.to_string_lossy().into_owned());
        format!("{}/{}/{}", self.user(), uuid::Uuid::new_v4(), name)
    }
}

async fn file_etag(path: &Path) -> std::io::Result<String> {
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

fn created(resp: TransferResponse, status: StatusCode) -> Response {
    (status, Json(resp)).into_response()
}

/// Parses a transfer request body: `path` (or `sourcePath`) and `transferDirectives`.
fn transfer_body(st: &AppState, body: &Bytes) -> Result<(String, Value), ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|_| {
        st.err(
            StatusCode::BAD_REQUEST,
            "Unable to decode request and retreive the required path or source_path parameter.",
        )
    })?;
    let path = ["path", "sourcePath", "source_path"]
        .iter()
        .find_map(|k| v.get(k).and_then(Value::as_str))
        .map(str::to_string);
    let path = st.target(path.as_deref())?;
    let directives = v
        .get("transferDirectives")
        .or_else(|| v.get("transfer_directives"))
        .cloned()
        .ok_or_else(|| {
            let mut e = ApiError::validation("body", "transferDirectives", "Field required", st.user());
            e.message = format!(
                "1 validation error:\n  {{'type': 'missing', 'loc': ('body', 'transferdirectives'), 'msg': 'field required', 'input': {v}}}"
            );
            e
        })?;
    let method = directives
        .get("transferMethod")
        .or_else(|| directives.get("transfer_method"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if method != "s3" {
        let mut e = ApiError::validation(
            "body",
            "transferDirectives",
            "Input should be <DataTransferType.s3: 's3'>",
            st.user(),
        );
        e.message = format!(
            "1 validation error:\n  {{'type': 'literal_error', 'loc': ('body', 'transferdirectives', 's3transferrequest', 'transfermethod'), 'msg': \"input should be <datatransfertype.s3: 's3'>\", 'input': '{method}'}}"
        );
        return Err(e);
    }
    Ok((path, directives))
}

async fn upload(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let (target, directives) = transfer_body(&st, &body)?;
    let Some(size) = directives
        .get("fileSize")
        .or_else(|| directives.get("file_size"))
        .and_then(Value::as_u64)
    else {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "(\"unsupported operand type(s) for /: 'NoneType' and 'int'\",)",
            None,
        ));
    };
    st.quote_quirk(&[&target])?;
    st.confine(&target, true)?;
    let key = st.new_key(&target);
    let upload_id = hex(&rand::random::<[u8; 20]>());
    st.transfers.uploads.lock().insert(
        upload_id.clone(),
        MultipartUpload {
            key: key.clone(),
            parts: BTreeMap::new(),
        },
    );
    let part = st.cfg.max_part_size.max(1);
    let n_parts = size.div_ceil(part);
    let urls = (1..=n_parts)
        .map(|i| st.presign("PUT", &key, &upload_id, &i.to_string()))
        .collect();
    let complete = st.presign("POST", &key, &upload_id, "");
    let job = st.submit("IngressFileTransfer", JobKind::Ingress { key, target });
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: Some(TransferDirectives {
                transfer_method: "s3".into(),
                parts_upload_urls: Some(urls),
                complete_upload_url: Some(complete),
                max_part_size: Some(part),
                ..Default::default()
            }),
        },
        StatusCode::CREATED,
    ))
}

async fn download(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let (src, _) = transfer_body(&st, &body)?;
    st.quote_quirk(&[&src])?;
    st.confine(&src, true)?;
    st.run_ok(&[
        OsStr::new("stat"),
        OsStr::new("--dereference"),
        OsStr::new("--format=%s"),
        OsStr::new("--"),
        OsStr::new(&src),
    ])
    .await?;
    let key = st.new_key(&src);
    let url = st.presign("GET", &key, "", "");
    let job = st.submit("OutgressFileTransfer", JobKind::Egress { key, src });
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: Some(TransferDirectives {
                transfer_method: "s3".into(),
                download_url: Some(url),
                ..Default::default()
            }),
        },
        StatusCode::CREATED,
    ))
}

fn move_request(st: &AppState, body: &Bytes) -> Result<(MoveRequest, String, String), ApiError> {
    let req: MoveRequest = st.json_body(body)?;
    let src = st.target(Some(&req.path))?;
    let dst = st.target(Some(&req.target_path))?;
    st.quote_quirk(&[&src, &dst])?;
    Ok((req, src, dst))
}

async fn mv(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let (_, src, dst) = move_request(&st, &body)?;
    st.confine(&src, false)?;
    st.confine(&dst, true)?;
    let job = st.submit("MoveFiles", JobKind::Move { src, dst });
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: None,
        },
        StatusCode::CREATED,
    ))
}

async fn cp(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let (req, src, dst) = move_request(&st, &body)?;
    let deref = req.dereference.unwrap_or(false);
    st.confine(&src, deref)?;
    if deref {
        st.confine_tree(&src, true).await?;
    }
    st.confine(&dst, true)?;
    let job = st.submit("CopyFiles", JobKind::Copy { src, dst, deref });
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: None,
        },
        StatusCode::CREATED,
    ))
}

async fn rm(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, false)?;
    let job = st.submit("DeleteFiles", JobKind::Delete { path });
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: None,
        },
        StatusCode::OK,
    ))
}

async fn compress(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let req: CompressRequest = st.json_body(&body)?;
    let argv = compress_argv(&st, &req).await?;
    let job = st.submit(
        "CompressFiles",
        JobKind::Tar {
            argv,
            what: "compressed",
        },
    );
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: None,
        },
        StatusCode::CREATED,
    ))
}

async fn extract(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let req: ExtractRequest = st.json_body(&body)?;
    let argv = extract_argv(&st, &req).await?;
    let job = st.submit(
        "ExtractFiles",
        JobKind::Tar {
            argv,
            what: "extracted",
        },
    );
    Ok(created(
        TransferResponse {
            transfer_job: job,
            transfer_directives: None,
        },
        StatusCode::CREATED,
    ))
}

async fn job_get(
    State(st): State<Shared>,
    UrlPath((system, id)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let job = st
        .transfers
        .jobs
        .lock()
        .get(&id)
        .cloned()
        .ok_or_else(|| st.err(StatusCode::NOT_FOUND, "Job not found."))?;
    let user = st.user().to_string();
    let done = matches!(
        job.state,
        JobState::Completed | JobState::Failed | JobState::Cancelled
    );
    let status = json!({
        "state": job.state.as_str(),
        "stateReason": "None",
        "exitCode": job.exit_code,
        "interruptSignal": if done { Some(0) } else { None },
    });
    let elapsed = match (job.start, job.end) {
        (Some(s), Some(e)) => e - s,
        (Some(s), None) => now_epoch() - s,
        _ => 0,
    };
    let tasks = if job.start.is_some() {
        json!([{
            "id": format!("{id}.batch"), "name": "batch",
            "status": {"state": job.state.as_str(), "stateReason": null,
                       "exitCode": job.exit_code, "interruptSignal": if done { Some(0) } else { None }},
            "time": {"elapsed": elapsed, "start": job.start, "end": job.end, "suspended": 0, "limit": null}
        }])
    } else {
        json!([])
    };
    Ok(Json(json!({"jobs": [{
        "jobId": id,
        "name": job.name,
        "status": status,
        "tasks": tasks,
        "time": {"elapsed": elapsed, "start": job.start, "end": job.end,
                 "suspended": job.start.map(|_| 0), "limit": 900},
        "account": user,
        "allocationNodes": 1,
        "cluster": st.cfg.system,
        "group": user,
        "nodes": if job.start.is_some() { "localhost" } else { "" },
        "partition": "normal",
        "killRequestUser": null,
        "user": user,
        "workingDirectory": job.working_dir,
        "priority": 4294901760u64,
    }]}))
    .into_response())
}

async fn job_cancel(
    State(st): State<Shared>,
    UrlPath((system, id)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    st.check_system(&system)?;
    let mut jobs = st.transfers.jobs.lock();
    let job = jobs
        .get_mut(&id)
        .ok_or_else(|| st.err(StatusCode::NOT_FOUND, "Job not found."))?;
    job.cancel = true;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ------------------------------------------------------------------------------- S3

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
    let expected = st.transfers.sign(
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
    if !st.transfers.uploads.lock().contains_key(&upload_id) {
        return s3_error(
            StatusCode::NOT_FOUND,
            "NoSuchUpload",
            "The specified multipart upload does not exist.",
            &key,
        );
    }
    let path = st
        .transfers
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
    match st.transfers.uploads.lock().get_mut(&upload_id) {
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
        let uploads = st.transfers.uploads.lock();
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
    let removed = st.transfers.uploads.lock().remove(&upload_id);
    if let Some(u) = removed {
        for p in u.parts.values() {
            let _ = std::fs::remove_file(&p.path);
        }
    }
    st.transfers.objects.lock().insert(
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
    let Some(obj) = st.transfers.object(&key) else {
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
