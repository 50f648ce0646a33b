//! Transfer jobs (`transfer/upload|download|mv|cp|rm|compress|extract`), read through
//! `GET /compute/{system}/jobs/{id}` in the shape Slurm gives the real server.
//!
//! Jobs are tokio tasks: PENDING for `--job-delay-ms`, then RUNNING, then COMPLETED or FAILED.
//! Like the real job scripts they write `.f7t_file_handling_job[_error]_<uuid>.log` into the
//! working directory (`ROOT/<user>` if it exists, else ROOT), as the served user. mv, cp, rm,
//! compress and extract jobs end COMPLETED with exit code 0 even when their command failed (the
//! real scripts' `exit $?` after `echo` is 0); only the log tells. The upload job polls the
//! staging bucket (`s3`) for the completed object every `--upload-poll-ms` (the real job: every
//! 60 s) and writes it to the target as the served user; the download job reads the source as
//! the served user into the bucket.
//!
//! Lock order: `jobs` is a short `parking_lot` lock, never held across `.await` nor together
//! with the bucket's locks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::exec::{Input, Sink};
use super::s3::{file_etag, Bucket, StoredObject};
use super::v2::{compress_argv, extract_argv, ApiError, Shared};
use super::AppState;
use crate::remote::v2::wire::{
    CompressRequest, ExtractRequest, JobLogs, MoveRequest, TransferDirectives, TransferJob,
    TransferResponse,
};

/// The part of the state owned by this module (and the staging bucket).
pub(crate) struct Transfers {
    pub(crate) bucket: Bucket,
    next_job: AtomicU64,
    jobs: Mutex<HashMap<String, JobRecord>>,
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
        compress: bool,
    },
}

impl Transfers {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(Self {
            bucket: Bucket::new()?,
            next_job: AtomicU64::new(1),
            jobs: Mutex::new(HashMap::new()),
        })
    }
}

pub(crate) fn now_epoch() -> i64 {
    jiff::Timestamp::now().as_second()
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
            .run_with(&refs, Input::Null, Sink::Discard, false)
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
        let (title, done, todo, argv): (&str, &str, &str, Vec<String>) = match kind {
            JobKind::Move { src, dst } => (
                "Move Files Job",
                "moved",
                "move",
                vec!["mv".into(), "--".into(), src, dst],
            ),
            JobKind::Copy { src, dst, deref } => (
                "Copy Files Job",
                "copied",
                "copy",
                vec![
                    "cp".into(),
                    "--force".into(),
                    (if deref { "-RL" } else { "-dR" }).into(),
                    "--preserve=all".into(),
                    "--".into(),
                    src,
                    dst,
                ],
            ),
            JobKind::Delete { path } => (
                "Delete Files Job",
                "deleted",
                "delete",
                vec!["rm".into(), "-R".into(), "--".into(), path],
            ),
            JobKind::Tar {
                argv,
                compress: true,
            } => ("Compress Files Job", "compressed", "compress", argv),
            JobKind::Tar {
                argv,
                compress: false,
            } => ("Extract Files Job", "extracted", "extract", argv),
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
                &format!("{} Files were successfully {done}.\n", date()),
            )
            .await;
        } else {
            self.log(
                err,
                &format!(
                    "{stderr}{} Unable to {todo} files exit code:{code} error: \n",
                    date()
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
            if let Some(o) = self.transfers.bucket.object(key) {
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
                Sink::Discard,
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
        let path = self.transfers.bucket.new_object_path();
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
                self.transfers.bucket.insert_object(
                    key,
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

    fn new_key(&self, path: &str) -> String {
        let name = Path::new(path.trim_end_matches('/'))
            .file_name()
            .map_or("object".to_string(), |n| n.to_string_lossy().into_owned());
        format!("{}/{}/{}", self.user(), uuid::Uuid::new_v4(), name)
    }
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
    let upload_id = st.transfers.bucket.create_upload(&key);
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
            compress: true,
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
            compress: false,
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
