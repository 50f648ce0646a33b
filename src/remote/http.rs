//! Shared reqwest plumbing of the FirecREST client: base URL, bearer token, retries with
//! exponential backoff and jitter, `Retry-After`, a client-side token-bucket rate limit, a global
//! concurrency bound, per-call timeouts and the overall operation deadline.
//!
//! This is the only module that knows HTTP status codes: `error_for_status` turns a failed
//! answer into a semantic `RemoteError` (the v2 `message` first, then the status), and
//! `token_endpoint_error` does the same for the OIDC token endpoint.
//!
//! Retry rules (`retry_delay`): connection failures (the request provably never left) are
//! retried for every call; 5xx, 408, resets and timeouts only for idempotent calls; 429 for every
//! call (the gateway refused it before it was processed); a 401 once after a token refresh.
//! Locks: the rate limiter's `parking_lot` mutex is held only for arithmetic, never across
//! `.await`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use tokio::sync::Semaphore;

use super::auth::TokenProvider;
use super::v2::wire::ErrorBody;
use super::{RemoteError, RemoteResult};
use crate::config::RemoteConfig;

/// Backoff of the first retry; doubles per attempt up to `BACKOFF_CAP`.
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Longest `Retry-After` we wait for before giving up with `RateLimited`.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(120);
/// 429 without `Retry-After`/`RateLimit-Reset`: wait this long (API.md 7).
const RATE_LIMIT_DEFAULT_WAIT: Duration = Duration::from_secs(10);

/// Where a call goes: the FirecREST API (bearer token, rate limit) or a presigned URL of the
/// staging area (no token, no FirecREST rate limit).
#[derive(Clone, Debug)]
pub enum Target {
    /// Path below the base URL, starting with `/`.
    Api(String),
    /// A complete URL (presigned S3).
    External(String),
}

/// Produces a fresh streaming body for every attempt (a stream cannot be replayed).
pub type BodyFactory = Arc<dyn Fn() -> std::io::Result<reqwest::Body> + Send + Sync>;

/// A request body that can be rebuilt for each attempt.
#[derive(Clone)]
pub enum Body {
    Empty,
    Json(serde_json::Value),
    /// `multipart/form-data` with one file field.
    Multipart {
        field: &'static str,
        filename: String,
        data: Bytes,
    },
    Raw(Bytes),
    Stream {
        factory: BodyFactory,
        len: u64,
    },
}

/// One logical call; `send` may issue it several times.
#[derive(Clone)]
pub struct Call {
    pub method: Method,
    pub target: Target,
    pub query: Vec<(&'static str, String)>,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Body,
    /// Safe to replay after the request may have reached the server.
    pub idempotent: bool,
    /// Overrides `RemoteConfig::call_timeout` for one attempt (large part uploads).
    pub timeout: Option<Duration>,
    /// Overrides `RemoteConfig::op_deadline` for the whole call including retries.
    pub deadline: Option<Duration>,
    /// A delete: a 404 after a retry means an earlier attempt already did it.
    pub absent_ok_on_retry: bool,
}

impl Call {
    /// A FirecREST API call with no body.
    pub fn api(method: Method, path: impl Into<String>, idempotent: bool) -> Self {
        Call {
            method,
            target: Target::Api(path.into()),
            query: Vec::new(),
            headers: Vec::new(),
            body: Body::Empty,
            idempotent,
            timeout: None,
            deadline: None,
            absent_ok_on_retry: false,
        }
    }

    /// A call to a presigned URL.
    pub fn external(method: Method, url: impl Into<String>, idempotent: bool) -> Self {
        Call {
            target: Target::External(url.into()),
            ..Call::api(method, String::new(), idempotent)
        }
    }

    /// Adds a query parameter.
    pub fn query(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.query.push((key, value.into()));
        self
    }

    /// Sets a JSON body.
    pub fn json(mut self, value: serde_json::Value) -> Self {
        self.body = Body::Json(value);
        self
    }

    /// Sets any body.
    pub fn body(mut self, body: Body) -> Self {
        self.body = body;
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Api(p) => format!("{} {p}", self.method),
            // Presigned URLs carry signatures: log only scheme, host and path.
            Target::External(u) => {
                let short = u.split('?').next().unwrap_or_default();
                format!("{} {short}", self.method)
            }
        }
    }
}

/// A successful answer, body read completely.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON of type `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> RemoteResult<T> {
        serde_json::from_slice(&self.body).map_err(|e| {
            let head = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).to_string();
            RemoteError::Protocol(format!("cannot parse answer ({e}): {head}"))
        })
    }

    /// `206 Partial Content`.
    pub fn is_partial(&self) -> bool {
        self.status == StatusCode::PARTIAL_CONTENT
    }
}

/// Counters for `f7tfs status` and the tests.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// HTTP attempts sent (including retries).
    pub attempts: AtomicU64,
    /// Attempts that were retries.
    pub retries: AtomicU64,
    /// Retries after a 401 with a fresh token.
    pub auth_retries: AtomicU64,
}

/// What became of one attempt, as far as the retry policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The connection could not be established: the request never left.
    ConnectFailed,
    /// Sent (maybe partly): reset, broken body, timeout.
    TransportFailed,
    /// The server answered with this status.
    Status(u16),
}

/// Retry policy knobs.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// Exponential backoff with jitter for retry number `attempt` (0-based): a random value in
    /// `[d/2, d]` where `d = min(cap, base * 2^attempt)`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let d = exp.min(self.cap);
        let half = d / 2;
        let jitter = rand::random::<f64>();
        half + half.mul_f64(jitter)
    }
}

/// Whether (and after how long) an attempt that ended with `outcome` is retried.
/// `retry_after` is the server's hint; `None` means: give up.
pub fn retry_delay(
    policy: &RetryPolicy,
    outcome: Outcome,
    idempotent: bool,
    attempt: u32,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    // 429 is the gateway saying "later", not a failure: it is waited out for as long as the
    // operation's deadline allows (`attempt` then counts 429s only), while `max_retries`
    // bounds real failures.
    if attempt >= policy.max_retries && outcome != Outcome::Status(429) {
        return None;
    }
    let retryable = match outcome {
        Outcome::ConnectFailed => true,
        Outcome::TransportFailed => idempotent,
        // 429: rejected by the gateway before processing; safe for every call.
        Outcome::Status(429) => true,
        // The remote command ran out of its (fixed) time: once more may help, five times not.
        Outcome::Status(408) => idempotent && attempt == 0,
        // 424: the server's SSH connection to the cluster failed.
        Outcome::Status(s) if (500..600).contains(&s) || s == 424 => idempotent,
        Outcome::Status(_) => false,
    };
    if !retryable {
        return None;
    }
    let backoff = policy.backoff(attempt);
    match (outcome, retry_after) {
        (_, Some(hint)) if hint > RETRY_AFTER_CAP => None,
        (_, Some(hint)) => Some(hint.max(backoff.min(Duration::from_millis(50)))),
        (Outcome::Status(429), None) => Some(RATE_LIMIT_DEFAULT_WAIT.min(backoff * 4)),
        _ => Some(backoff),
    }
}

/// Parses `Retry-After` (delta seconds or an HTTP date) relative to `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Ok(secs) = v.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Some(Duration::from_secs_f64(secs));
        }
    }
    let when = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let now = jiff::Timestamp::try_from(now).ok()?;
    let delta = now.until(when).ok()?.total(jiff::Unit::Millisecond).ok()?;
    Some(Duration::from_millis(delta.max(0.0) as u64))
}

fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    let from = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
    };
    from(RETRY_AFTER.as_str()).or_else(|| from("ratelimit-reset"))
}

/// Strips the v2 wrapper `Remote process failed with exit status:N and error message:`.
fn clean_message(msg: &str) -> &str {
    const MARK: &str = "error message:";
    match msg.find(MARK) {
        Some(i) if msg.starts_with("Remote process failed") => msg[i + MARK.len()..].trim(),
        _ => msg.trim(),
    }
}

/// The v2 error `message` of a body, if it has one.
pub fn error_message(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.message)
        .or_else(|| {
            let v: serde_json::Value = serde_json::from_slice(body).ok()?;
            v.get("message")
                .or_else(|| v.get("detail"))
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
}

/// THE mapping of a failed answer to a semantic error: the message text first (API.md 6.3),
/// then the status. `context` names what was asked (a path or an endpoint).
pub fn error_for_status(status: u16, body: &[u8], context: &str) -> RemoteError {
    let message = error_message(body);
    if let Some(m) = message.as_deref() {
        if let Some(e) = RemoteError::from_message(clean_message(m)) {
            return e;
        }
    }
    let text = match message.as_deref() {
        Some(m) => format!("{context}: {} (HTTP {status})", clean_message(m)),
        None => format!("{context} (HTTP {status})"),
    };
    match status {
        400 | 422 => RemoteError::InvalidArgument(text),
        401 => RemoteError::Unauthorized(text),
        403 => RemoteError::PermissionDenied(text),
        404 => RemoteError::NotFound(text),
        405 | 501 => RemoteError::Unsupported(text),
        408 | 504 => RemoteError::Timeout(text),
        409 => RemoteError::Exists(text),
        413 => RemoteError::TooLarge(text),
        416 => RemoteError::InvalidArgument(text),
        429 => RemoteError::RateLimited(text),
        500..=599 | 424 => RemoteError::Unavailable(text),
        _ => RemoteError::Protocol(text),
    }
}

/// Whether `e` is the 416 of a range starting at or after the end of an object.
pub fn range_past_end(e: &RemoteError) -> bool {
    matches!(e, RemoteError::InvalidArgument(m) if m.ends_with("(HTTP 416)"))
}

/// Maps a failed answer of the OIDC token endpoint to a one-line error naming cause and fix.
pub fn token_endpoint_error(status: u16, body: &[u8], token_url: &str) -> RemoteError {
    let oidc_error = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string));
    match status {
        400 | 401 | 403 => {
            let what = oidc_error.unwrap_or_else(|| format!("HTTP {status}"));
            RemoteError::Unauthorized(format!(
                "the token endpoint refused the client id or secret ({what}); check \
                 FIRECREST_CLIENT_ID and FIRECREST_CLIENT_SECRET"
            ))
        }
        404 | 405 => RemoteError::Unauthorized(format!(
            "no token endpoint at {token_url} (HTTP {status}); check AUTH_TOKEN_URL"
        )),
        429 => RemoteError::RateLimited(format!("token endpoint {token_url} (HTTP 429)")),
        s if s >= 500 => RemoteError::Unavailable(format!(
            "token endpoint {token_url} failed (HTTP {status}); try again later"
        )),
        _ => RemoteError::Unauthorized(format!(
            "unexpected answer from the token endpoint {token_url} (HTTP {status}); check \
             AUTH_TOKEN_URL"
        )),
    }
}

/// Whether an answer is a 401 (the token provider refreshes once on it).
fn is_unauthorized(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED
}

/// Token bucket: `rate_per_minute` tokens per minute, at most `burst` stored.
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `rate_per_minute == 0` disables the limit.
    pub fn new(rate_per_minute: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateLimiter {
            per_sec: f64::from(rate_per_minute) / 60.0,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes one token at `now`; returns how long to wait before the request may go.
    /// The token is reserved either way (the balance may go negative).
    pub fn reserve(&self, now: Instant) -> Duration {
        if self.per_sec <= 0.0 {
            return Duration::ZERO;
        }
        let mut st = self.state.lock();
        let elapsed = now.saturating_duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.per_sec).min(self.burst);
        st.1 = now;
        st.0 -= 1.0;
        if st.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-st.0 / self.per_sec)
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        let wait = self.reserve(Instant::now());
        if !wait.is_zero() {
            tracing::debug!(wait_ms = wait.as_millis() as u64, "client-side rate limit");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The HTTP client every FirecREST call goes through.
pub struct HttpClient {
    client: reqwest::Client,
    base: String,
    auth: Arc<TokenProvider>,
    limiter: RateLimiter,
    permits: Semaphore,
    policy: RetryPolicy,
    call_timeout: Duration,
    op_deadline: Duration,
    stats: HttpStats,
}

impl HttpClient {
    /// Builds the client for `config`; the token comes from `auth`.
    pub fn new(config: &RemoteConfig, auth: Arc<TokenProvider>) -> RemoteResult<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.call_timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("f7tfs/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(HttpClient {
            client,
            base: config.url.trim_end_matches('/').to_string(),
            auth,
            limiter: RateLimiter::new(config.rate_per_minute, config.rate_burst),
            permits: Semaphore::new(config.max_concurrent_requests.max(1)),
            policy: RetryPolicy {
                max_retries: config.max_retries,
                base: BACKOFF_BASE,
                cap: BACKOFF_CAP,
            },
            call_timeout: config.call_timeout,
            op_deadline: config.op_deadline,
            stats: HttpStats::default(),
        })
    }

    /// Counters (attempts, retries).
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// The token provider.
    pub fn auth(&self) -> &Arc<TokenProvider> {
        &self.auth
    }

    /// The configured per-call timeout.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// Sends `call` with retries until it succeeds (2xx) or fails for good; the whole thing
    /// is bounded by the op deadline.
    pub async fn send(&self, call: &Call) -> RemoteResult<Reply> {
        let deadline = call.deadline.unwrap_or(self.op_deadline);
        match tokio::time::timeout(deadline, self.send_with_retries(call)).await {
            Ok(r) => r,
            // Unavailable, not Timeout: the file operation fails with EIO (the remote is
            // unreachable or stuck), as the mount documents.
            Err(_) => Err(RemoteError::Unavailable(format!(
                "{} did not finish within {} s (FirecREST unreachable or overloaded)",
                call.describe(),
                deadline.as_secs()
            ))),
        }
    }

    async fn send_with_retries(&self, call: &Call) -> RemoteResult<Reply> {
        let mut attempt: u32 = 0;
        let mut throttled: u32 = 0;
        let mut auth_retried = false;
        loop {
            let token = match call.target {
                Target::Api(_) => Some(self.auth.token().await?),
                Target::External(_) => None,
            };
            let (outcome, result, retry_after) = self.attempt(call, token.as_deref()).await;
            match result {
                Ok(reply) => return Ok(reply),
                Err(RemoteError::NotFound(_)) if attempt > 0 && call.absent_ok_on_retry => {
                    return Ok(Reply {
                        status: StatusCode::NO_CONTENT,
                        headers: HeaderMap::new(),
                        body: Bytes::new(),
                    });
                }
                Err(err) => {
                    if let (Outcome::Status(401), Some(tok)) = (outcome, token.as_deref()) {
                        if !auth_retried {
                            // Rejected before processing: refresh once and replay.
                            auth_retried = true;
                            self.stats.auth_retries.fetch_add(1, Ordering::Relaxed);
                            self.auth.invalidate(tok).await;
                            continue;
                        }
                        return Err(err);
                    }
                    let tries = if outcome == Outcome::Status(429) {
                        throttled
                    } else {
                        attempt
                    };
                    match retry_delay(&self.policy, outcome, call.idempotent, tries, retry_after) {
                        Some(wait) => {
                            tracing::debug!(
                                call = %call.describe(),
                                attempt,
                                ?outcome,
                                wait_ms = wait.as_millis() as u64,
                                "retrying: {err}"
                            );
                            self.stats.retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(wait).await;
                            if outcome == Outcome::Status(429) {
                                throttled += 1;
                            } else {
                                attempt += 1;
                            }
                        }
                        None => {
                            if attempt > 0 {
                                tracing::debug!(call = %call.describe(), attempt, "giving up: {err}");
                            }
                            return Err(err);
                        }
                    }
                }
            }
        }
    }

    /// One attempt: rate limit, concurrency permit, request, whole body.
    async fn attempt(
        &self,
        call: &Call,
        token: Option<&str>,
    ) -> (Outcome, RemoteResult<Reply>, Option<Duration>) {
        let context = call.describe();
        if matches!(call.target, Target::Api(_)) {
            self.limiter.acquire().await;
        }
        let _permit = match self.permits.acquire().await {
            Ok(p) => p,
            Err(_) => {
                return (
                    Outcome::ConnectFailed,
                    Err(RemoteError::Unavailable("client is shutting down".into())),
                    None,
                )
            }
        };
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let url = match &call.target {
            Target::Api(p) => format!("{}{p}", self.base),
            Target::External(u) => u.clone(),
        };
        let mut rb = self
            .client
            .request(call.method.clone(), &url)
            .timeout(call.timeout.unwrap_or(self.call_timeout));
        if !call.query.is_empty() {
            rb = rb.query(&call.query);
        }
        if let Some(tok) = token {
            rb = rb.bearer_auth(tok);
        }
        for (name, value) in &call.headers {
            match HeaderValue::from_str(value) {
                Ok(v) => rb = rb.header(name.clone(), v),
                Err(_) => {
                    return (
                        Outcome::Status(400),
                        Err(RemoteError::InvalidArgument(format!("bad header {name}"))),
                        None,
                    )
                }
            }
        }
        rb = match &call.body {
            Body::Empty => rb,
            Body::Json(v) => rb.json(v),
            Body::Raw(b) => rb.body(b.clone()),
            Body::Multipart {
                field,
                filename,
                data,
            } => {
                let part = reqwest::multipart::Part::stream_with_length(
                    reqwest::Body::from(data.clone()),
                    data.len() as u64,
                )
                .file_name(filename.clone());
                let part = match part.mime_str("application/octet-stream") {
                    Ok(p) => p,
                    Err(e) => {
                        return (
                            Outcome::Status(400),
                            Err(RemoteError::Protocol(e.to_string())),
                            None,
                        )
                    }
                };
                rb.multipart(reqwest::multipart::Form::new().part(*field, part))
            }
            Body::Stream { factory, len } => match factory() {
                Ok(body) => rb
                    .header(reqwest::header::CONTENT_LENGTH, len.to_string())
                    .body(body),
                Err(e) => {
                    return (
                        Outcome::Status(400),
                        Err(RemoteError::LocalIo(e.to_string())),
                        None,
                    )
                }
            },
        };
        let started = Instant::now();
        let response = match rb.send().await {
            Ok(r) => r,
            Err(e) => return transport_failure(&context, &e),
        };
        let status = response.status();
        tracing::debug!(
            call = %context,
            status = status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "http"
        );
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return transport_failure(&context, &e),
        };
        if status.is_success() {
            return (
                Outcome::Status(status.as_u16()),
                Ok(Reply {
                    status,
                    headers,
                    body,
                }),
                None,
            );
        }
        let retry_after = retry_after_of(&headers);
        let err = if is_unauthorized(status) && token.is_some() {
            let msg = error_message(&body).unwrap_or_else(|| "not authenticated".into());
            RemoteError::Unauthorized(format!("{context}: {msg}"))
        } else {
            error_for_status(status.as_u16(), &body, &context)
        };
        // A recognised remote-command failure is final, even on a 5xx.
        let outcome = if matches!(err, RemoteError::Unavailable(_) | RemoteError::Timeout(_))
            || status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::UNAUTHORIZED
        {
            Outcome::Status(status.as_u16())
        } else {
            Outcome::Status(400)
        };
        (outcome, Err(err), retry_after)
    }
}

fn transport_failure(
    context: &str,
    e: &reqwest::Error,
) -> (Outcome, RemoteResult<Reply>, Option<Duration>) {
    // Never print the URL: presigned URLs carry signatures.
    let text = error_chain(e);
    if e.is_connect() {
        (
            Outcome::ConnectFailed,
            Err(RemoteError::Unavailable(format!(
                "{context}: cannot connect: {text}"
            ))),
            None,
        )
    } else if e.is_timeout() {
        (
            Outcome::TransportFailed,
            Err(RemoteError::Unavailable(format!(
                "{context}: no answer in time"
            ))),
            None,
        )
    } else {
        (
            Outcome::TransportFailed,
            Err(RemoteError::Unavailable(format!(
                "{context}: connection failed: {text}"
            ))),
            None,
        )
    }
}

/// The causes of a transport error without the URL (presigned URLs carry signatures).
pub fn error_chain(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = String::new();
    let mut source = e.source();
    while let Some(s) = source {
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.is_empty() {
        "transport error".to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_retries: 3,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
        }
    }

    #[test]
    fn idempotent_calls_retry_5xx_408_and_resets() {
        let p = policy();
        for o in [
            Outcome::Status(500),
            Outcome::Status(424),
            Outcome::Status(503),
            Outcome::Status(408),
            Outcome::TransportFailed,
            Outcome::ConnectFailed,
            Outcome::Status(429),
        ] {
            assert!(retry_delay(&p, o, true, 0, None).is_some(), "{o:?}");
        }
        for o in [
            Outcome::Status(404),
            Outcome::Status(400),
            Outcome::Status(403),
        ] {
            assert!(retry_delay(&p, o, true, 0, None).is_none(), "{o:?}");
        }
    }

    #[test]
    fn non_idempotent_calls_retry_only_when_provably_unsent() {
        let p = policy();
        assert!(retry_delay(&p, Outcome::ConnectFailed, false, 0, None).is_some());
        assert!(retry_delay(&p, Outcome::Status(429), false, 0, None).is_some());
        assert!(retry_delay(&p, Outcome::TransportFailed, false, 0, None).is_none());
        assert!(retry_delay(&p, Outcome::Status(500), false, 0, None).is_none());
        assert!(retry_delay(&p, Outcome::Status(408), false, 0, None).is_none());
    }

    #[test]
    fn retries_stop_after_max_and_honour_retry_after() {
        let p = policy();
        assert!(retry_delay(&p, Outcome::Status(503), true, 3, None).is_none());
        // 429s are waited out past the failure budget (the op deadline bounds them).
        assert!(retry_delay(&p, Outcome::Status(429), false, 7, None).is_some());
        assert!(retry_delay(&p, Outcome::Status(408), true, 1, None).is_none());
        let d = retry_delay(
            &p,
            Outcome::Status(429),
            true,
            0,
            Some(Duration::from_secs(3)),
        );
        assert_eq!(d, Some(Duration::from_secs(3)));
        assert!(retry_delay(
            &p,
            Outcome::Status(429),
            true,
            0,
            Some(Duration::from_secs(9999))
        )
        .is_none());
    }

    #[test]
    fn backoff_grows_with_jitter_and_cap() {
        let p = policy();
        for attempt in 0..10 {
            let full = (p.base * (1 << attempt)).min(p.cap);
            for _ in 0..20 {
                let d = p.backoff(attempt);
                assert!(d >= full / 2 && d <= full, "{attempt}: {d:?} vs {full:?}");
            }
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784111777);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        // 784111777 = Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:27 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn status_mapping_prefers_the_message() {
        let body = br#"{"errorType":"error","message":"Remote process failed with exit status:1 and error message:rm: cannot remove 'x': Directory not empty","causedBy":null,"data":null,"user":"u"}"#;
        assert_eq!(
            error_for_status(500, body, "rm /x"),
            RemoteError::NotEmpty("rm: cannot remove 'x': Directory not empty".into())
        );
        let body = br#"{"errorType":"error","message":"Command execution timeout limit exceeded.","causedBy":null,"data":null,"user":"u"}"#;
        assert!(matches!(
            error_for_status(408, body, "x"),
            RemoteError::Timeout(_)
        ));
        // Never NotFound for 5xx or 408.
        assert!(matches!(
            error_for_status(500, b"", "x"),
            RemoteError::Unavailable(_)
        ));
        assert!(matches!(
            error_for_status(404, b"{}", "x"),
            RemoteError::NotFound(_)
        ));
        assert!(matches!(
            error_for_status(413, b"", "x"),
            RemoteError::TooLarge(_)
        ));
        assert!(matches!(
            error_for_status(429, b"", "x"),
            RemoteError::RateLimited(_)
        ));
        assert!(matches!(
            error_for_status(403, b"", "x"),
            RemoteError::PermissionDenied(_)
        ));
    }

    #[test]
    fn token_endpoint_errors_name_the_fix() {
        let e = token_endpoint_error(401, br#"{"error":"invalid_client"}"#, "http://t/token");
        let text = e.to_string();
        assert!(matches!(e, RemoteError::Unauthorized(_)));
        assert!(text.contains("invalid_client") && text.contains("FIRECREST_CLIENT_SECRET"));
        assert!(!text.contains('\n'));
        let e = token_endpoint_error(404, b"", "http://t/token");
        assert!(e.to_string().contains("AUTH_TOKEN_URL"));
    }

    #[test]
    fn rate_limiter_allows_burst_then_paces() {
        let rl = RateLimiter::new(60, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rl.reserve(t0), Duration::ZERO);
        }
        let w = rl.reserve(t0);
        assert!(
            w > Duration::from_millis(900) && w <= Duration::from_millis(1000),
            "{w:?}"
        );
        // After 5 s the bucket refilled (to at most the burst).
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(rl.reserve(t1), Duration::ZERO);
        let unlimited = RateLimiter::new(0, 1);
        for _ in 0..100 {
            assert_eq!(unlimited.reserve(t0), Duration::ZERO);
        }
    }
}
