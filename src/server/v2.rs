//! FirecREST v2 `status/*` and `filesystem/{system}/ops/*` handlers over the served directory.
//!
//! Each handler validates like the real server (system name, absolute path inside the
//! configured filesystem, parameter rules), confines symlinks to ROOT, runs the same command
//! the real server runs (as the served user, under `timeout`), and turns its output or stderr
//! into the real response: status chosen from the stderr text, message
//! `Remote process failed with exit status:N and error message:<stderr>`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::exec::{CmdOutput, Input, Sink};
use super::ls::{parse_id, parse_ls, parse_stat, LS_BASE, STAT_FORMAT};
use super::paths::{escaping_link, landing, lexically_inside, normpath};
use super::AppState;
use crate::remote::v2::wire::{
    Checksum, ChmodRequest, ChownRequest, CompressRequest, ContentWindow, ErrorBody,
    ExtractRequest, LsEntry, MkdirRequest, Output, SymlinkRequest,
};

pub(crate) type Shared = Arc<AppState>;
type ApiResult = Result<Response, ApiError>;
type Params = Query<HashMap<String, String>>;

/// A v2 error answer: `{"errorType","message","causedBy","data","user"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub message: String,
    pub data: Option<Value>,
    pub user: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>, user: Option<&str>) -> Self {
        Self {
            status,
            error_type: "error",
            message: message.into(),
            data: None,
            user: user.map(str::to_string),
        }
    }

    /// A request-validation error (`errorType: "validation"`, `data.fields`).
    pub(crate) fn validation(location: &str, name: &str, why: &str, user: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_type: "validation",
            message: format!(
                "1 validation error:\n  {{'type': 'value_error', 'loc': ('{location}', '{}'), 'msg': '{}'}}",
                name.to_lowercase(),
                why.to_lowercase()
            ),
            data: Some(json!({"fields": [{"location": location, "name": name, "message": why}]})),
            user: Some(user.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error_type: self.error_type.to_string(),
            message: self.message,
            caused_by: None,
            data: self.data,
            user: self.user,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Status of a failed remote command, chosen from its stderr like the real server.
pub(crate) fn status_for_stderr(stderr: &str) -> StatusCode {
    if stderr.contains("No such file or directory") {
        StatusCode::NOT_FOUND
    } else if stderr.contains("Permission denied") || stderr.contains("Operation not permitted") {
        StatusCode::FORBIDDEN
    } else if stderr.contains("File exists") || stderr.contains("invalid user") {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

/// The real failure message for exit status `status` and `stderr`.
pub(crate) fn failure_message(status: i32, stderr: &str) -> String {
    let mut m = format!("Remote process failed with exit status:{status}");
    if !stderr.is_empty() {
        m.push_str(" and error message:");
        m.push_str(stderr.trim());
    }
    m
}

impl AppState {
    pub(crate) fn user(&self) -> &str {
        &self.runner.ident.name
    }

    pub(crate) fn err(&self, status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError::new(status, message, Some(self.user()))
    }

    pub(crate) fn check_system(&self, system: &str) -> Result<(), ApiError> {
        if system.eq_ignore_ascii_case(&self.cfg.system) {
            Ok(())
        } else {
            Err(self.err(StatusCode::NOT_FOUND, "System not found"))
        }
    }

    fn outside(&self, shown: &str) -> ApiError {
        self.err(
            StatusCode::BAD_REQUEST,
            format!(
                "The provided path ({shown}) does not match any of the defined filesystem paths for the requested system ({}).",
                self.cfg.system
            ),
        )
    }

    /// Validates a request path like the real `ServiceAvailabilityDependency` and returns the
    /// path commands get: normalised, with a trailing slash kept (it changes `ls` on links).
    pub(crate) fn target(&self, raw: Option<&str>) -> Result<String, ApiError> {
        let raw = raw.ok_or_else(|| {
            self.err(
                StatusCode::BAD_REQUEST,
                "Unable to decode request and retreive the required path or source_path parameter.",
            )
        })?;
        if !raw.starts_with('/') {
            return Err(self.err(
                StatusCode::BAD_REQUEST,
                format!("The provided path ({raw}) is not an absolute path."),
            ));
        }
        let norm = normpath(raw);
        if !lexically_inside(&norm, &self.root) {
            return Err(self.outside(&norm));
        }
        if raw.len() > 1 && raw.ends_with('/') && norm != "/" {
            Ok(format!("{norm}/"))
        } else {
            Ok(norm)
        }
    }

    /// Refuses when the final landing place of `path` (following the last component when
    /// `follow`, or when the path ends with `/`) is outside ROOT.
    pub(crate) fn confine(&self, path: &str, follow: bool) -> Result<(), ApiError> {
        let trimmed = path.trim_end_matches('/');
        if trimmed.is_empty() || trimmed == self.root {
            return Ok(());
        }
        let follow = follow || path.ends_with('/');
        let land = landing(trimmed, follow);
        if land.starts_with(&self.root_path) {
            Ok(())
        } else {
            Err(self.outside(&land.to_string_lossy()))
        }
    }

    /// Refuses a dereferencing operation over `dir` whose links lead outside ROOT.
    pub(crate) async fn confine_tree(&self, dir: &str, recursive: bool) -> Result<(), ApiError> {
        let dir = landing(dir.trim_end_matches('/'), true);
        if !dir.is_dir() {
            return Ok(());
        }
        let root = self.root_path.clone();
        let found =
            tokio::task::spawn_blocking(move || escaping_link(&dir, &root, recursive, 200_000))
                .await
                .map_err(|e| self.err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        match found {
            Some(p) => Err(self.outside(&p.to_string_lossy())),
            None => Ok(()),
        }
    }

    /// The real server interpolates paths inside single quotes: a `'` breaks its shell.
    pub(crate) fn quote_quirk(&self, paths: &[&str]) -> Result<(), ApiError> {
        if self.cfg.allow_single_quote || !paths.iter().any(|p| p.contains('\'')) {
            return Ok(());
        }
        Err(self.err(
            StatusCode::INTERNAL_SERVER_ERROR,
            failure_message(
                2,
                "bash: -c: line 1: unexpected EOF while looking for matching `''",
            ),
        ))
    }

    /// Runs an ops command and maps a failure to the real error answer.
    pub(crate) async fn run_ok(&self, argv: &[&OsStr]) -> Result<CmdOutput, ApiError> {
        let out = self
            .runner
            .run(argv, self.cfg.max_ops_file_size as usize)
            .await
            .map_err(|e| self.err(StatusCode::INTERNAL_SERVER_ERROR, format!("('{e}',)")))?;
        self.check_output(out)
    }

    pub(crate) fn check_output(&self, out: CmdOutput) -> Result<CmdOutput, ApiError> {
        if out.overflow {
            return Err(self.err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Command output exceeded buffer limit.",
            ));
        }
        if out.status == 124 {
            return Err(self.err(
                StatusCode::REQUEST_TIMEOUT,
                failure_message(out.status, &out.stderr),
            ));
        }
        if out.status != 0 {
            return Err(self.err(
                status_for_stderr(&out.stderr),
                failure_message(out.status, &out.stderr),
            ));
        }
        Ok(out)
    }

    /// `ls -l -d` of one path: the answer of mkdir, chmod, chown and symlink.
    pub(crate) async fn ls_entry(&self, path: &str) -> Result<LsEntry, ApiError> {
        let mut argv: Vec<&OsStr> = vec![OsStr::new("ls")];
        argv.extend(LS_BASE.iter().map(OsStr::new));
        argv.extend([OsStr::new("-d"), OsStr::new("--"), OsStr::new(path)]);
        let out = self.run_ok(&argv).await?;
        parse_ls(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .next()
            .ok_or_else(|| self.err(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected ls output"))
    }

    fn bool_param(&self, q: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
        match q.get(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) => match v.as_str() {
                "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
                "false" | "0" | "no" | "off" | "f" | "n" | "" => Ok(false),
                _ => Err(ApiError::validation(
                    "query",
                    name,
                    "Input should be a valid boolean, unable to interpret input",
                    self.user(),
                )),
            },
        }
    }

    fn int_param(&self, q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
        match q.get(name) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| {
                ApiError::validation(
                    "query",
                    name,
                    "Input should be a valid integer, unable to parse string as an integer",
                    self.user(),
                )
            }),
        }
    }

    /// Parses a JSON body into `T`; no body or no path at all answers the real 400.
    pub(crate) fn json_body<T: DeserializeOwned>(&self, body: &Bytes) -> Result<T, ApiError> {
        let no_path = || {
            self.err(
                StatusCode::BAD_REQUEST,
                "Unable to decode request and retreive the required path or source_path parameter.",
            )
        };
        let v: Value = serde_json::from_slice(body).map_err(|_| no_path())?;
        if ["path", "sourcePath", "source_path"]
            .iter()
            .all(|k| v.get(k).is_none())
        {
            return Err(no_path());
        }
        serde_json::from_value(v).map_err(|e| {
            let field = e
                .to_string()
                .split('`')
                .nth(1)
                .unwrap_or("body")
                .to_string();
            ApiError::validation(
                "body",
                &field,
                &format!("Field required ({e})"),
                self.user(),
            )
        })
    }
}

fn json_ok<T: serde::Serialize>(status: StatusCode, v: T) -> Response {
    (status, Json(v)).into_response()
}

fn argv<'a>(parts: &'a [&'a str]) -> Vec<&'a OsStr> {
    parts.iter().map(OsStr::new).collect()
}

// ------------------------------------------------------------------------------- status

pub(crate) async fn systems(State(st): State<Shared>) -> Response {
    json_ok(StatusCode::OK, json!({"systems": [st.system_json()]}))
}

impl AppState {
    fn system_json(&self) -> Value {
        let now = jiff::Timestamp::now().to_string();
        let health = |kind: &str| json!({"serviceType": kind, "lastChecked": now, "latency": 0.001, "healthy": true, "message": null});
        let mut fs_health = health("filesystem");
        fs_health["path"] = json!(self.root);
        json!({
            "name": self.cfg.system,
            "ssh": {"host": "127.0.0.1", "port": 22, "proxyHost": null, "proxyPort": null,
                    "maxClients": 100,
                    "timeout": {"connection": 5, "login": 5,
                                "commandExecution": self.cfg.command_timeout.as_secs(),
                                "idleTimeout": 60, "keepAlive": 5}},
            "scheduler": {"type": "slurm", "connectionMode": "ssh", "version": "f7tfs",
                          "apiUrl": null, "apiVersion": null, "timeout": 10},
            "servicesHealth": [health("scheduler"), health("ssh"), fs_health, health("s3")],
            "probing": {"services": {"ssh": {"timeout": 5}, "filesystem": {"timeout": 5},
                                      "scheduler": {"timeout": 10}, "s3": {"timeout": 10}},
                        "intervalCheck": 60},
            "lastHealthCheck": now,
            "fileSystems": [{"path": self.root, "dataType": "users", "defaultWorkDir": true}],
            "dataOperation": {
                "datatransfer_jobs_directives": ["#SBATCH --nodes=1", "#SBATCH --time=0-00:15:00"],
                "max_ops_file_size": self.cfg.max_ops_file_size,
                "data_transfer": {
                    "serviceType": "s3", "name": "s3-storage", "privateUrl": "**********",
                    "publicUrl": format!("{}/_s3", self.base_url), "accessKeyId": "**********",
                    "secretAccessKey": "**********", "region": "us-east-1",
                    "ttl": self.cfg.s3_url_ttl.as_secs(), "tenant": null,
                    "multipart": {"use_split": false, "max_part_size": self.cfg.max_part_size,
                                  "parallel_runs": 3, "tmp_folder": "tmp"},
                    "bucketLifecycleConfiguration": {"days": 10}
                }
            }
        })
    }
}

pub(crate) async fn liveness(State(st): State<Shared>) -> Response {
    let now = jiff::Timestamp::now().to_string();
    json_ok(
        StatusCode::OK,
        json!({"healthcheckRuns": {st.cfg.system.clone(): now}, "lastUpdate": 0}),
    )
}

pub(crate) async fn partitions(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
) -> ApiResult {
    st.check_system(&system)?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(json_ok(
        StatusCode::OK,
        json!({"partitions": [{"name": "normal", "cpus": cpus, "totalNodes": 1, "partition": "UP"}]}),
    ))
}

pub(crate) async fn userinfo(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
) -> ApiResult {
    st.check_system(&system)?;
    let out = st.run_ok(&argv(&["id"])).await?;
    let id = parse_id(&String::from_utf8_lossy(&out.stdout))
        .ok_or_else(|| st.err(StatusCode::INTERNAL_SERVER_ERROR, "Unexpected id output"))?;
    let idname = |(i, n): &(String, String)| json!({"id": i, "name": n});
    Ok(json_ok(
        StatusCode::OK,
        json!({
            "user": idname(&id.user),
            "group": idname(&id.group),
            "groups": id.groups.iter().map(idname).collect::<Vec<_>>(),
            "accounts": [{"name": id.user.1, "default": true}],
        }),
    ))
}

// ------------------------------------------------------------------------------- ops: reads

pub(crate) async fn ls(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    let show_hidden = st.bool_param(&q, "showHidden")?;
    let numeric = st.bool_param(&q, "numericUid")?;
    let recursive = st.bool_param(&q, "recursive")?;
    let deref = st.bool_param(&q, "dereference")?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, deref)?;
    if deref {
        st.confine_tree(&path, recursive).await?;
    }
    let mut args: Vec<&str> = vec!["ls"];
    args.extend(LS_BASE);
    if show_hidden {
        args.push("-A");
    }
    if numeric {
        args.push("--numeric-uid-gid");
    }
    if recursive {
        args.push("-R");
    }
    if deref {
        args.push("-L");
    }
    args.extend(["--", &path]);
    let out = st.run_ok(&argv(&args)).await?;
    let entries = parse_ls(&String::from_utf8_lossy(&out.stdout));
    Ok(json_ok(StatusCode::OK, Output { output: entries }))
}

pub(crate) async fn stat(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    let deref = st.bool_param(&q, "dereference")?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, deref)?;
    let fmt = format!("--format={STAT_FORMAT}");
    let mut args = vec!["stat"];
    if deref {
        args.push("--dereference");
    }
    args.extend([fmt.as_str(), "--", &path]);
    let out = st.run_ok(&argv(&args)).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let s = parse_stat(&stdout).ok_or_else(|| {
        st.err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Invalid output: {stdout}"),
        )
    })?;
    Ok(json_ok(StatusCode::OK, Output { output: s }))
}

pub(crate) async fn download(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, true)?;
    let out = st.run_ok(&argv(&["base64", "--", &path])).await?;
    let bytes = super::ls::base64_decode(&out.stdout)
        .ok_or_else(|| st.err(StatusCode::INTERNAL_SERVER_ERROR, "Invalid base64 output"))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

pub(crate) async fn view(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    let max = st.cfg.max_ops_file_size as i64;
    let offset = st.int_param(&q, "offset")?.unwrap_or(0);
    let size = st.int_param(&q, "size")?.unwrap_or(max);
    if offset < 0 {
        return Err(st.err(
            StatusCode::BAD_REQUEST,
            "`offset` value must be an integer value equal or greater than 0",
        ));
    }
    if size <= 0 {
        return Err(st.err(
            StatusCode::BAD_REQUEST,
            "`size` value must be an integer value greater than 0",
        ));
    }
    if size > max {
        return Err(st.err(
            StatusCode::BAD_REQUEST,
            format!("`size` value must be less than {max} bytes"),
        ));
    }
    st.quote_quirk(&[&path])?;
    st.confine(&path, true)?;
    let (iff, bs, skip) = (
        format!("if={path}"),
        format!("bs={size}"),
        format!("skip={}", offset / size),
    );
    let out = st
        .run_ok(&argv(&["dd", &iff, &bs, &skip, "count=2"]))
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let start = (offset % size) as usize;
    let content: String = text.chars().skip(start).take(size as usize).collect();
    Ok(json_ok(StatusCode::OK, Output { output: content }))
}

async fn head_tail(st: &AppState, q: &HashMap<String, String>, tail: bool) -> ApiResult {
    let path = st.target(q.get("path").map(String::as_str))?;
    let bytes = st.int_param(q, "bytes")?;
    let lines = st.int_param(q, "lines")?;
    let skip = st.bool_param(q, if tail { "skipHeading" } else { "skipTrailing" })?;
    if bytes.is_some() && lines.is_some() {
        return Err(st.err(
            StatusCode::BAD_REQUEST,
            "Only one of `bytes` or `lines` can be specified.",
        ));
    }
    st.quote_quirk(&[&path])?;
    st.confine(&path, true)?;
    let (kind, n) = match (bytes, lines) {
        (Some(b), _) => ("bytes", b),
        (None, Some(l)) => ("lines", l),
        (None, None) => ("lines", 10),
    };
    let sign = match (skip, tail) {
        (false, _) => "",
        (true, false) => "-",
        (true, true) => "+",
    };
    let opt = format!("--{kind}={sign}{n}");
    let out = st
        .run_ok(&argv(&[
            if tail { "tail" } else { "head" },
            &opt,
            "--",
            &path,
        ]))
        .await?;
    let (start, end) = match (tail, skip) {
        (false, false) => (0, n),
        (false, true) => (0, -n),
        (true, false) => (-n, -1),
        (true, true) => (n, -1),
    };
    Ok(json_ok(
        StatusCode::OK,
        Output {
            output: ContentWindow {
                content: String::from_utf8_lossy(&out.stdout).into_owned(),
                content_type: kind.to_string(),
                start_position: start,
                end_position: end,
            },
        },
    ))
}

pub(crate) async fn head(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    head_tail(&st, &q, false).await
}

pub(crate) async fn tail(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    head_tail(&st, &q, true).await
}

pub(crate) async fn checksum(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, true)?;
    let out = st.run_ok(&argv(&["sha256sum", "--", &path])).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = stdout.split_whitespace().collect();
    if parts.len() != 2 {
        return Err(st.err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Invalid output: {stdout} "),
        ));
    }
    Ok(json_ok(
        StatusCode::OK,
        Output {
            output: Checksum {
                algorithm: "SHA256".into(),
                checksum: parts[0].to_string(),
            },
        },
    ))
}

pub(crate) async fn file(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, false)?;
    let out = st.run_ok(&argv(&["file", "-b", "--", &path])).await?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(json_ok(StatusCode::OK, Output { output: text }))
}

// ------------------------------------------------------------------------------- ops: writes

pub(crate) async fn mkdir(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    st.check_system(&system)?;
    let req: MkdirRequest = st.json_body(&body)?;
    let path = st.target(Some(&req.path))?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, false)?;
    let mut args = vec!["mkdir"];
    if req.parent {
        args.push("-p");
    }
    args.extend(["--", &path]);
    st.run_ok(&argv(&args)).await?;
    let entry = st.ls_entry(&path).await?;
    Ok(json_ok(StatusCode::CREATED, Output { output: entry }))
}

pub(crate) async fn chmod(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    st.check_system(&system)?;
    let req: ChmodRequest = st.json_body(&body)?;
    let path = st.target(Some(&req.path))?;
    st.quote_quirk(&[&path, &req.mode])?;
    st.confine(&path, true)?;
    // `--` first: a mode or owner starting with `-` must not become an option.
    st.run_ok(&argv(&["chmod", "--", &req.mode, &path])).await?;
    let entry = st.ls_entry(&path).await?;
    Ok(json_ok(StatusCode::OK, Output { output: entry }))
}

pub(crate) async fn chown(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    st.check_system(&system)?;
    let req: ChownRequest = st.json_body(&body)?;
    let path = st.target(Some(&req.path))?;
    st.quote_quirk(&[&path, &req.owner, &req.group])?;
    st.confine(&path, true)?;
    // Real: `chown 'OWNER':'GROUP'`; with only OWNER, GNU chown also resets the group.
    let spec = if st.cfg.fix_chown_group && req.group.is_empty() {
        req.owner.clone()
    } else {
        format!("{}:{}", req.owner, req.group)
    };
    st.run_ok(&argv(&["chown", "--", &spec, &path])).await?;
    let entry = st.ls_entry(&path).await?;
    Ok(json_ok(StatusCode::OK, Output { output: entry }))
}

pub(crate) async fn symlink(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    st.check_system(&system)?;
    let req: SymlinkRequest = st.json_body(&body)?;
    let target = st.target(Some(&req.path))?;
    let link = st.target(Some(&req.link_path))?;
    st.quote_quirk(&[&target, &link])?;
    st.confine(&link, true)?;
    st.run_ok(&argv(&["ln", "-s", "--", &target, &link]))
        .await?;
    let entry = st.ls_entry(&link).await?;
    Ok(json_ok(StatusCode::CREATED, Output { output: entry }))
}

pub(crate) async fn rm(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
) -> ApiResult {
    st.check_system(&system)?;
    let path = st.target(q.get("path").map(String::as_str))?;
    st.quote_quirk(&[&path])?;
    st.confine(&path, false)?;
    st.run_ok(&argv(&["rm", "-r", "--interactive=never", "--", &path]))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) fn tar_flag(st: &AppState, compression: Option<&str>) -> Result<&'static str, ApiError> {
    match compression.unwrap_or("gzip") {
        "none" => Ok(""),
        "gzip" => Ok("z"),
        "bzip2" => Ok("j"),
        "xz" => Ok("J"),
        _ => Err(st.err(
            StatusCode::NOT_IMPLEMENTED,
            "The requested compression type is not implemented.",
        )),
    }
}

/// Checks a compress request and returns the tar command line.
pub(crate) async fn compress_argv(
    st: &AppState,
    req: &CompressRequest,
) -> Result<Vec<String>, ApiError> {
    let src = st.target(Some(&req.source_path))?;
    let dst = st.target(Some(&req.target_path))?;
    st.quote_quirk(&[&src, &dst])?;
    st.confine(&src, req.dereference)?;
    if req.dereference {
        st.confine_tree(&src, true).await?;
    }
    st.confine(&dst, true)?;
    let flag = tar_flag(st, req.compression.as_deref())?;
    let dir = Path::new(&src)
        .parent()
        .map_or("/".to_string(), |p| p.to_string_lossy().into_owned());
    let base = Path::new(src.trim_end_matches('/'))
        .file_name()
        .map_or(".".to_string(), |n| n.to_string_lossy().into_owned());
    let deref = if req.dereference { "--dereference" } else { "" };
    Ok(match &req.match_pattern {
        // As the real server: with a pattern the archive is always gzipped, whatever
        // `compression` says.
        Some(pattern) => vec![
            "bash".into(),
            "-c".into(),
            format!(
                "cd \"$1\" && find . -type f -regex \"$2\" -print0 | tar {deref} -czvf \"$3\" --null --files-from -"
            ),
            "bash".into(),
            dir,
            pattern.clone(),
            dst,
        ],
        None => {
            let mut v = vec!["tar".to_string()];
            if req.dereference {
                v.push("--dereference".into());
            }
            v.extend([format!("-c{flag}vf"), dst, "-C".into(), dir, base]);
            v
        }
    })
}

/// Checks an extract request and returns the tar command line.
pub(crate) async fn extract_argv(
    st: &AppState,
    req: &ExtractRequest,
) -> Result<Vec<String>, ApiError> {
    let src = st.target(Some(&req.source_path))?;
    let dst = st.target(Some(&req.target_path))?;
    st.quote_quirk(&[&src, &dst])?;
    st.confine(&src, true)?;
    st.confine(&dst, true)?;
    let flag = tar_flag(st, req.compression.as_deref())?;
    // An existing link inside the target could make tar write through it: check where each
    // member's directory lands. Only the archive's own members matter, so a small archive
    // into a large tree stays cheap (the real server checks nothing here).
    let listing = st
        .run_ok(&[
            OsStr::new("tar"),
            OsStr::new(&format!("-t{flag}f")),
            OsStr::new(&src),
        ])
        .await?;
    for member in String::from_utf8_lossy(&listing.stdout).lines() {
        let member = member.trim_start_matches("./").trim_end_matches('/');
        if member.is_empty() {
            continue;
        }
        if member.starts_with('/') || member.split('/').any(|c| c == "..") {
            return Err(st.outside(&format!("{}/{member}", dst.trim_end_matches('/'))));
        }
        if let Some((parent, _)) = member.rsplit_once('/') {
            st.confine(&format!("{}/{parent}", dst.trim_end_matches('/')), true)?;
        }
    }
    Ok(vec![
        "tar".into(),
        format!("-x{flag}f"),
        src,
        "-C".into(),
        dst,
    ])
}

pub(crate) async fn compress(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    st.check_system(&system)?;
    let req: CompressRequest = st.json_body(&body)?;
    let args = compress_argv(&st, &req).await?;
    let refs: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    st.run_ok(&refs).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn extract(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    st.check_system(&system)?;
    let req: ExtractRequest = st.json_body(&body)?;
    let args = extract_argv(&st, &req).await?;
    let refs: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    st.run_ok(&refs).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `bash: X` → `bash: line 1: X`, the text a `bash -c` over SSH prints on the real server.
fn bash_line_1(stderr: &str) -> String {
    match stderr.strip_prefix("bash: ") {
        Some(rest) if !rest.starts_with("line ") => format!("bash: line 1: {rest}"),
        _ => stderr.to_string(),
    }
}

pub(crate) async fn upload(
    State(st): State<Shared>,
    UrlPath(system): UrlPath<String>,
    Query(q): Params,
    req: axum::extract::Request,
) -> ApiResult {
    use axum::extract::FromRequest;
    st.check_system(&system)?;
    let dir = st.target(q.get("path").map(String::as_str))?;
    let missing_file = || {
        let mut e = ApiError::validation("body", "file", "Field required", st.user());
        e.message = "1 validation error:\n  {'type': 'missing', 'loc': ('body', 'file'), 'msg': 'field required', 'input': none}".into();
        e
    };
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|_| missing_file())?;
    let max = st.cfg.max_ops_file_size as usize;
    let mut file: Option<(String, Vec<u8>)> = None;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| st.err(StatusCode::BAD_REQUEST, e.body_text()))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().unwrap_or("").to_string();
        let mut data = Vec::new();
        while let Some(chunk) = field
            .chunk()
            .await
            .map_err(|e| st.err(StatusCode::BAD_REQUEST, e.body_text()))?
        {
            if data.len() + chunk.len() > max {
                // Read the rest (bounded) so the client sees the answer, not a reset.
                let mut rest = 0usize;
                while let Ok(Some(c)) = field.chunk().await {
                    rest += c.len();
                    if rest > 64 << 20 {
                        break;
                    }
                }
                return Err(st.err(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "File to upload is too large.",
                ));
            }
            data.extend_from_slice(&chunk);
        }
        file = Some((name, data));
        break;
    }
    let Some((name, data)) = file else {
        return Err(missing_file());
    };
    let raw_target = format!("{}/{}", dir.trim_end_matches('/'), name);
    let target = st.target(Some(&raw_target))?;
    st.quote_quirk(&[&target])?;
    st.confine(&target, true)?;
    let empty = data.is_empty();
    let input = if empty && !st.cfg.fix_empty_upload {
        Input::Hang
    } else {
        Input::Bytes(data)
    };
    let out = st
        .runner
        .run_with(
            &argv(&["bash", "-c", "cat > \"$1\"", "bash", &target]),
            input,
            Sink::Capture(max),
            true,
        )
        .await
        .map_err(|e| st.err(StatusCode::INTERNAL_SERVER_ERROR, format!("('{e}',)")))?;
    if out.status == 124 && empty {
        return Err(st.err(
            StatusCode::REQUEST_TIMEOUT,
            "Command execution timeout limit exceeded.",
        ));
    }
    let out = CmdOutput {
        stderr: bash_line_1(&out.stderr),
        ..out
    };
    st.check_output(out)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_classification() {
        assert_eq!(
            status_for_stderr("ls: cannot access 'x': No such file or directory"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_for_stderr("rm: cannot remove 'x': Permission denied"),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_for_stderr("chmod: changing permissions of 'x': Operation not permitted"),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_for_stderr("mkdir: cannot create directory ‘x’: File exists"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_for_stderr("chown: invalid user: ‘a:b’"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_for_stderr("base64: read error: Is a directory"),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            failure_message(2, "ls: x\n"),
            "Remote process failed with exit status:2 and error message:ls: x"
        );
        assert_eq!(
            failure_message(1, ""),
            "Remote process failed with exit status:1"
        );
        assert_eq!(
            bash_line_1("bash: /a/b: No such file or directory\n"),
            "bash: line 1: /a/b: No such file or directory\n"
        );
    }
}
