//! `f7tfs serve`: a FirecREST v2-compatible server over a local directory, for tests, demos and
//! benchmarks. Remote paths are the local paths under the canonical ROOT (1:1).
//!
//! Layout: this module owns the configuration, the listener, the router and the shared state
//! plus the per-request middleware (stats, faults, latency, auth, `F7T-AppVersion`, one log
//! line); `v2` the status and `ops/*` handlers; `transfer` the transfer jobs; `s3` the S3-like
//! staging area; `token` the token endpoint; `faults` the fault plans and counters; `exec`
//! the subprocess runner (as `--as-user`); `ls` the output parsers; `paths` the path rules.
//!
//! Public API for tests: [`ServeConfig`], [`spawn`], [`ServerHandle`].

mod exec;
pub mod faults;
mod ls;
mod paths;
mod s3;
mod token;
mod transfer;
mod v2;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use parking_lot::Mutex;
use serde_json::json;

pub use faults::{EndpointStats, FaultPlan, Stats};

use exec::{Identity, Runner};
use faults::{Fault, StatsRecorder};
use token::TokenStore;
use v2::{ApiError, Shared};

/// The `F7T-AppVersion` header value (what the reference server reports).
pub const APP_VERSION: &str = "2.x.x";

/// Everything `f7tfs serve` can be told. Build with [`ServeConfig::new`] and adjust fields.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Directory served; canonicalised at spawn, advertised as the one filesystem.
    pub root: PathBuf,
    /// Listen address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// System name (case-insensitive in URLs).
    pub system: String,
    pub client_id: String,
    pub client_secret: String,
    /// Lifetime of issued tokens.
    pub token_lifetime: Duration,
    /// Tokens with less life left are refused (real: 30 s); capped at a quarter of the lifetime.
    pub min_token_ttl: Duration,
    /// Added to every API call (not to S3 calls).
    pub latency: Duration,
    /// Added to every S3 call.
    pub s3_latency: Duration,
    /// Delay before a transfer job starts (PENDING until then).
    pub job_delay: Duration,
    /// How often an upload job looks for the completed object (the real job: every 60 s).
    pub upload_poll_interval: Duration,
    /// `dataOperation.max_ops_file_size`: direct upload limit and command output buffer.
    pub max_ops_file_size: u64,
    /// `maxPartSize` of staged uploads.
    pub max_part_size: u64,
    /// Validity of presigned staging URLs.
    pub s3_url_ttl: Duration,
    /// `timeout N` around every ops command (real: 5 s).
    pub command_timeout: Duration,
    /// Run all file work as this local user (needs root).
    pub as_user: Option<String>,
    /// Injected faults (changeable at run time).
    pub faults: FaultPlan,
    /// Quirk switch: an empty direct upload succeeds at once (real: 408 after the timeout).
    pub fix_empty_upload: bool,
    /// Quirk switch: paths with `'` work (real: 500, broken remote shell quoting).
    pub allow_single_quote: bool,
    /// Quirk switch: chown with only an owner keeps the group (real: `owner:` resets it).
    pub fix_chown_group: bool,
    /// Base URL advertised in staging URLs (default `http://<bound address>`).
    pub public_url: Option<String>,
    /// Local time zone of the served machine, the zone `ls` prints times in (IANA name;
    /// default this process's `TZ`). CSCS's clusters are a zone with daylight saving time.
    pub timezone: Option<String>,
}

impl ServeConfig {
    /// Defaults of `f7tfs serve ROOT`: 127.0.0.1:8000, system `cluster`, client `f7tfs`/`f7tfs`,
    /// 300 s tokens, 5 MiB direct limit and part size, 1 s job delay, 200 ms upload polling.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            system: "cluster".into(),
            client_id: "f7tfs".into(),
            client_secret: "f7tfs".into(),
            token_lifetime: Duration::from_secs(300),
            min_token_ttl: Duration::from_secs(30),
            latency: Duration::ZERO,
            s3_latency: Duration::ZERO,
            job_delay: Duration::from_millis(1000),
            upload_poll_interval: Duration::from_millis(200),
            max_ops_file_size: 5 * 1024 * 1024,
            max_part_size: 5 * 1024 * 1024,
            s3_url_ttl: Duration::from_secs(604_800),
            command_timeout: Duration::from_secs(5),
            as_user: None,
            faults: FaultPlan::default(),
            fix_empty_upload: false,
            allow_single_quote: false,
            fix_chown_group: false,
            public_url: None,
            timezone: None,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot serve {path}: {source}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(String),
}

/// Shared state of one running server.
pub(crate) struct AppState {
    pub cfg: ServeConfig,
    /// Canonical ROOT as text (the advertised filesystem path) and as a path.
    pub root: String,
    pub root_path: PathBuf,
    pub base_url: String,
    pub tokens: TokenStore,
    pub runner: Runner,
    pub faults: Mutex<FaultPlan>,
    pub stats: StatsRecorder,
    pub latency_ms: AtomicU64,
    pub s3_latency_ms: AtomicU64,
    pub transfers: transfer::Transfers,
}

/// A running server; dropping it without [`ServerHandle::shutdown`] stops it as well.
pub struct ServerHandle {
    addr: SocketAddr,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// Base URL, e.g. `http://127.0.0.1:PORT` (FIRECREST_URL).
    pub fn url(&self) -> String {
        self.state.base_url.clone()
    }
    /// Token endpoint URL (AUTH_TOKEN_URL).
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.state.base_url)
    }
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The canonical served root.
    pub fn root(&self) -> PathBuf {
        self.state.root_path.clone()
    }
    /// The system name.
    pub fn system(&self) -> String {
        self.state.cfg.system.clone()
    }
    /// The user file work runs as.
    pub fn user(&self) -> String {
        self.state.runner.ident.name.clone()
    }
    /// Snapshot of the per-endpoint counters.
    pub fn stats(&self) -> Stats {
        self.state.stats.snapshot()
    }
    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.state.stats.reset();
    }
    /// Replaces the fault plan.
    pub fn set_faults(&self, plan: FaultPlan) {
        *self.state.faults.lock() = plan;
    }
    /// Changes the API latency at run time.
    pub fn set_latency(&self, latency: Duration) {
        self.state
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }
    /// Issues a bearer token directly, valid for `ttl` (zero: already expired).
    pub fn issue_token(&self, ttl: Duration) -> String {
        self.state.tokens.issue(Some(ttl))
    }
    /// Stops accepting, lets the server task end.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds, builds the state and serves in a tokio task.
pub async fn spawn(config: ServeConfig) -> Result<ServerHandle, ServeError> {
    let root_path = std::fs::canonicalize(&config.root).map_err(|source| ServeError::Root {
        path: config.root.clone(),
        source,
    })?;
    if !root_path.is_dir() {
        return Err(ServeError::NotADirectory(root_path));
    }
    let ident = Identity::resolve(config.as_user.as_deref()).map_err(ServeError::Config)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.listen,
        source,
    })?;
    let base_url = config
        .public_url
        .clone()
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{addr}"));
    let transfers = transfer::Transfers::new().map_err(|e| ServeError::Config(e.to_string()))?;
    let state = Arc::new(AppState {
        root: root_path.to_string_lossy().into_owned(),
        root_path,
        base_url,
        tokens: TokenStore::new(
            config.client_id.clone(),
            config.client_secret.clone(),
            config.token_lifetime,
            config.min_token_ttl,
        ),
        runner: Runner {
            ident,
            timeout: config.command_timeout,
            tz: config.timezone.clone().or_else(|| std::env::var("TZ").ok()),
        },
        faults: Mutex::new(config.faults.clone()),
        stats: StatsRecorder::default(),
        latency_ms: AtomicU64::new(config.latency.as_millis() as u64),
        s3_latency_ms: AtomicU64::new(config.s3_latency.as_millis() as u64),
        transfers,
        cfg: config,
    });
    let app = router(state.clone());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!("server stopped: {e}");
        }
    });
    Ok(ServerHandle {
        addr,
        state,
        stop: Some(tx),
        task: Some(task),
    })
}

fn router(state: Shared) -> Router {
    let fs = "/filesystem/{system}";
    let api = Router::new()
        .route("/status/systems", get(v2::systems))
        .route("/status/{system}/userinfo", get(v2::userinfo))
        .route("/status/{system}/partitions", get(v2::partitions))
        .route(&format!("{fs}/ops/ls"), get(v2::ls))
        .route(&format!("{fs}/ops/stat"), get(v2::stat))
        .route(&format!("{fs}/ops/download"), get(v2::download))
        .route(&format!("{fs}/ops/view"), get(v2::view))
        .route(&format!("{fs}/ops/head"), get(v2::head))
        .route(&format!("{fs}/ops/tail"), get(v2::tail))
        .route(&format!("{fs}/ops/checksum"), get(v2::checksum))
        .route(&format!("{fs}/ops/file"), get(v2::file))
        .route(
            &format!("{fs}/ops/upload"),
            post(v2::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(&format!("{fs}/ops/mkdir"), post(v2::mkdir))
        .route(&format!("{fs}/ops/symlink"), post(v2::symlink))
        .route(&format!("{fs}/ops/compress"), post(v2::compress))
        .route(&format!("{fs}/ops/extract"), post(v2::extract))
        .route(&format!("{fs}/ops/chmod"), put(v2::chmod))
        .route(&format!("{fs}/ops/chown"), put(v2::chown))
        .route(&format!("{fs}/ops/rm"), delete(v2::rm))
        .merge(transfer::api_routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth_mw));
    let open = Router::new()
        .route("/status/liveness", get(v2::liveness))
        .route("/status/liveness/", get(v2::liveness))
        .route("/auth/token", post(token_endpoint))
        .merge(s3::s3_routes());
    let control = Router::new()
        .route("/_f7tfs/stats", get(stats_get).delete(stats_reset))
        .route("/_f7tfs/stats/reset", post(stats_reset))
        .route(
            "/_f7tfs/faults",
            get(faults_get).post(faults_set).delete(faults_clear),
        );
    Router::new()
        .merge(api)
        .merge(open)
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), common_mw))
        .merge(control)
        .layer(middleware::map_response(version_header))
        .with_state(state)
}

/// `F7T-AppVersion` on every answer, the control endpoints included.
async fn version_header(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert("f7t-appversion", HeaderValue::from_static(APP_VERSION));
    resp
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"detail": "Not Found"}))).into_response()
}

/// The stats key of a request: endpoint names as in fault specs.
fn endpoint_of(method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let lower = |s: &str| s.to_ascii_lowercase();
    match segs.as_slice() {
        ["filesystem", _, kind, op, ..] => format!("{}/{}", lower(kind), lower(op)),
        ["compute", _, "jobs", ..] => "compute/jobs".into(),
        ["status", "systems"] => "status/systems".into(),
        ["status", "liveness", ..] => "status/liveness".into(),
        ["status", _, what, ..] => format!("status/{}", lower(what)),
        ["auth", "token"] => "auth/token".into(),
        ["_s3", ..] => match *method {
            Method::PUT => "s3/part".into(),
            Method::POST => "s3/complete".into(),
            _ => "s3/object".into(),
        },
        _ => "other".into(),
    }
}

/// Stats, faults, latency, `F7T-AppVersion` and the request log line.
async fn common_mw(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let endpoint = endpoint_of(&method, req.uri().path());
    let key = format!("{method} {endpoint}");
    st.stats.call(&key);
    let fault = st
        .faults
        .lock()
        .pick(method.as_str(), &endpoint, rand::random::<f64>);
    let is_s3 = endpoint.starts_with("s3/");
    let delay = if is_s3 {
        st.s3_latency_ms.load(Ordering::Relaxed)
    } else if endpoint == "auth/token" {
        0
    } else {
        st.latency_ms.load(Ordering::Relaxed)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let resp = match fault {
        Some(Fault::Drop) => {
            st.stats.fault(&key);
            st.stats.status(&key, "drop");
            tracing::info!(%method, endpoint, status = "drop", ms = started.elapsed().as_millis() as u64, "request");
            // Unwinding the connection task closes the socket without an answer; resume_unwind
            // skips the panic hook, so nothing is printed. Other connections are unaffected.
            std::panic::resume_unwind(Box::new("f7tfs: injected connection drop"));
        }
        Some(Fault::Status(code)) => {
            st.stats.fault(&key);
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            ApiError::new(status, format!("Injected fault: HTTP {code}"), None).into_response()
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            st.stats.fault(&key);
            let mut r = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", None)
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        None => {
            let req = count_request_body(&st, &key, req);
            next.run(req).await
        }
    };
    st.stats.status(&key, resp.status().as_str());
    let ms = started.elapsed().as_millis() as u64;
    tracing::info!(%method, endpoint, status = resp.status().as_u16(), ms, "request");
    count_response_body(&st, key, resp)
}

fn count_request_body(st: &Shared, key: &str, req: Request) -> Request {
    if let Some(n) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        st.stats.bytes_in(key, n);
        return req;
    }
    let (parts, body) = req.into_parts();
    let st2 = st.clone();
    let key = key.to_string();
    let stream = body.into_data_stream().inspect_ok(move |chunk| {
        st2.stats.bytes_in(&key, chunk.len() as u64);
    });
    Request::from_parts(parts, Body::from_stream(stream))
}

fn count_response_body(st: &Shared, key: String, resp: Response) -> Response {
    use axum::body::HttpBody;
    if let Some(n) = resp.body().size_hint().exact() {
        st.stats.bytes_out(&key, n);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let st2 = st.clone();
    let stream = body.into_data_stream().inspect_ok(move |chunk| {
        st2.stats.bytes_out(&key, chunk.len() as u64);
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Bearer-token check for the API routes.
async fn auth_mw(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match st.tokens.check(header) {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError::new(StatusCode::UNAUTHORIZED, e.message(), None).into_response(),
    }
}

/// `POST /auth/token`: client credentials in the form body or HTTP Basic.
async fn token_endpoint(State(st): State<Shared>, req: Request) -> Response {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b| ls::base64_decode(b.trim().as_bytes()))
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        });
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Unreadable body",
            )
        }
    };
    let form: Vec<(String, String)> = form_urlencoded(&body);
    let get = |k: &str| form.iter().find(|(a, _)| a == k).map(|(_, b)| b.clone());
    if get("grant_type").as_deref() != Some("client_credentials") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Unsupported grant_type",
        );
    }
    let (id, secret) = match (get("client_id"), get("client_secret"), basic) {
        (Some(i), Some(s), _) => (i, s),
        (_, _, Some((i, s))) => (i, s),
        _ => {
            return oauth_error(
                StatusCode::UNAUTHORIZED,
                "unauthorized_client",
                "Invalid client or Invalid client credentials",
            )
        }
    };
    if !st.tokens.credentials_ok(&id, &secret) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized_client",
            "Invalid client or Invalid client credentials",
        );
    }
    let token = st.tokens.issue(None);
    Json(json!({
        "access_token": token,
        "expires_in": st.tokens.lifetime().as_secs(),
        "refresh_expires_in": 0,
        "token_type": "Bearer",
        "not-before-policy": 0,
        "scope": "profile email firecrest-v2",
    }))
    .into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

/// Decodes `application/x-www-form-urlencoded`.
pub(crate) fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

// ------------------------------------------------------------------------------- /_f7tfs

async fn stats_get(State(st): State<Shared>) -> Response {
    Json(st.stats.snapshot()).into_response()
}

async fn stats_reset(State(st): State<Shared>) -> Response {
    st.stats.reset();
    StatusCode::NO_CONTENT.into_response()
}

async fn faults_get(State(st): State<Shared>) -> Response {
    let plan = st.faults.lock().clone();
    Json(json!({
        "faults": plan.rules.iter().map(|r| r.spec.clone()).collect::<Vec<_>>(),
        "rules": plan.rules,
        "latency_ms": st.latency_ms.load(Ordering::Relaxed),
        "s3_latency_ms": st.s3_latency_ms.load(Ordering::Relaxed),
    }))
    .into_response()
}

/// `POST /_f7tfs/faults` `{"faults": [SPEC...], "latency_ms"?: N, "s3_latency_ms"?: N}`:
/// replaces the plan (an absent `faults` keeps it) and optionally the latencies.
async fn faults_set(State(st): State<Shared>, body: axum::body::Bytes) -> Response {
    let v: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": e.to_string()})),
            )
                .into_response()
        }
    };
    if let Some(list) = v.get("faults") {
        let specs: Vec<String> = match serde_json::from_value(list.clone()) {
            Ok(s) => s,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": e.to_string()})),
                )
                    .into_response()
            }
        };
        match FaultPlan::parse(&specs) {
            Ok(plan) => *st.faults.lock() = plan,
            Err(e) => return (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response(),
        }
    }
    if let Some(ms) = v.get("latency_ms").and_then(|m| m.as_u64()) {
        st.latency_ms.store(ms, Ordering::Relaxed);
    }
    if let Some(ms) = v.get("s3_latency_ms").and_then(|m| m.as_u64()) {
        st.s3_latency_ms.store(ms, Ordering::Relaxed);
    }
    faults_get(State(st)).await
}

async fn faults_clear(State(st): State<Shared>) -> Response {
    *st.faults.lock() = FaultPlan::default();
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_keys() {
        assert_eq!(
            endpoint_of(&Method::GET, "/filesystem/CLUSTER/ops/ls"),
            "ops/ls"
        );
        assert_eq!(
            endpoint_of(&Method::POST, "/filesystem/c/transfer/mv"),
            "transfer/mv"
        );
        assert_eq!(
            endpoint_of(&Method::GET, "/compute/c/jobs/12"),
            "compute/jobs"
        );
        assert_eq!(
            endpoint_of(&Method::GET, "/status/c/userinfo"),
            "status/userinfo"
        );
        assert_eq!(endpoint_of(&Method::PUT, "/_s3/u/k/f"), "s3/part");
        assert_eq!(endpoint_of(&Method::HEAD, "/_s3/u/k/f"), "s3/object");
    }

    #[test]
    fn form_decoding() {
        let f = form_urlencoded(b"grant_type=client_credentials&client_id=a%2Bb&client_secret=x+y");
        assert_eq!(f[1], ("client_id".into(), "a+b".into()));
        assert_eq!(f[2], ("client_secret".into(), "x y".into()));
    }
}
