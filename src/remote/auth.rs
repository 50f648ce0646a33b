//! Access tokens for FirecREST: the OIDC client-credentials grant (form post,
//! `client_secret_post`), a token command (`FIRECREST_TOKEN_COMMAND`, stdout is the token) or a
//! token file. Tokens are refreshed well before expiry (when less than `max(60 s, lifetime/3)`
//! remains, never later than half-way: the v2 server refuses tokens with under 30 s left), one
//! refresh at a time (single flight through the async mutex), and once more after a 401
//! (`invalidate`). Tokens and secrets never appear in logs or errors.
//!
//! Lock: `state` is a `tokio::sync::Mutex` held across the fetch on purpose: that is the
//! single flight. Nothing else is locked inside it.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::config::Credentials;

use super::http::{error_chain, token_endpoint_error};
use super::v2::wire::TokenResponse;
use super::{RemoteError, RemoteResult};

/// A token whose lifetime we cannot read (opaque command or file token) is reused this long.
const OPAQUE_TOKEN_CACHE: Duration = Duration::from_secs(60);
/// The v2 server refuses tokens with less life left than this.
const SERVER_MIN_TTL: Duration = Duration::from_secs(30);
/// Attempts against the token endpoint on transient failures.
const TOKEN_ATTEMPTS: u32 = 3;

#[derive(Clone)]
struct Cached {
    token: String,
    refresh_at: Instant,
    /// Past this the server refuses the token (expiry minus its 30 s minimum), if known.
    usable_until: Option<Instant>,
    /// Token file: the mtime the token was read at (a change re-reads it).
    file_mtime: Option<SystemTime>,
}

/// Hands out a valid bearer token; see the module docs.
pub struct TokenProvider {
    credentials: Credentials,
    client: reqwest::Client,
    timeout: Duration,
    state: tokio::sync::Mutex<Option<Cached>>,
    fetches: std::sync::atomic::AtomicU64,
}

/// When to refresh a token that lives `lifetime`: `max(60 s, lifetime/3)` before expiry, but
/// never later than half-way through its life.
pub fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(60).max(lifetime / 3).min(lifetime / 2)
}

/// The `exp` claim of a JWT minus now, if the token is a readable JWT.
pub fn jwt_remaining(token: &str, now: SystemTime) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_f64()?;
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    Some(Duration::from_secs_f64((exp - now).max(0.0)))
}

fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl TokenProvider {
    /// A provider for `credentials`; nothing is fetched until the first `token()`.
    pub fn new(credentials: Credentials, timeout: Duration) -> RemoteResult<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| RemoteError::Protocol(format!("cannot build the HTTP client: {e}")))?;
        Ok(TokenProvider {
            credentials,
            client,
            timeout,
            state: tokio::sync::Mutex::new(None),
            fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How many tokens were fetched (for tests and `f7tfs status`).
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A token valid for a while yet.
    pub async fn token(&self) -> RemoteResult<String> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.as_ref() {
            if Instant::now() < c.refresh_at && !self.file_changed(c).await {
                return Ok(c.token.clone());
            }
        }
        match self.fetch().await {
            Ok(fresh) => {
                let token = fresh.token.clone();
                *state = Some(fresh);
                Ok(token)
            }
            // The token endpoint is down but the old token still works: keep using it.
            Err(e) if e.is_transient() => match state.as_ref() {
                Some(c) if c.usable_until.is_some_and(|u| Instant::now() < u) => {
                    tracing::warn!("token refresh failed, reusing the current token: {e}");
                    Ok(c.token.clone())
                }
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// The server refused `token` (401): forget it so the next `token()` fetches a new one.
    /// A token another task already replaced is left alone.
    pub async fn invalidate(&self, token: &str) {
        let mut state = self.state.lock().await;
        if state.as_ref().is_some_and(|c| c.token == token) {
            *state = None;
        }
    }

    async fn file_changed(&self, cached: &Cached) -> bool {
        match (&self.credentials, cached.file_mtime) {
            (Credentials::TokenFile(path), Some(old)) => tokio::fs::metadata(path)
                .await
                .and_then(|m| m.modified())
                .map(|m| m != old)
                .unwrap_or(true),
            _ => false,
        }
    }

    async fn fetch(&self) -> RemoteResult<Cached> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match &self.credentials {
            Credentials::ClientCredentials {
                token_url,
                client_id,
                client_secret,
            } => {
                self.client_credentials(token_url, client_id, client_secret)
                    .await
            }
            Credentials::TokenCommand(cmd) => {
                let token = self.run_command(cmd).await?;
                Ok(cache_opaque(token, None))
            }
            Credentials::TokenFile(path) => read_token_file(path).await,
        }
    }

    async fn client_credentials(
        &self,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
    ) -> RemoteResult<Cached> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        let mut last = RemoteError::Unavailable(format!("token endpoint {token_url}"));
        for attempt in 0..TOKEN_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(300 << attempt)).await;
            }
            let started = Instant::now();
            let response = match self.client.post(token_url).form(&form).send().await {
                Ok(r) => r,
                Err(e) => {
                    last = RemoteError::Unavailable(format!(
                        "cannot reach the token endpoint {token_url}: {}; check AUTH_TOKEN_URL \
                         and the network",
                        error_chain(&e)
                    ));
                    if e.is_builder() {
                        return Err(RemoteError::Unauthorized(format!(
                            "invalid token URL {token_url:?}; check AUTH_TOKEN_URL"
                        )));
                    }
                    continue;
                }
            };
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            if !status.is_success() {
                let err = token_endpoint_error(status.as_u16(), &body, token_url);
                if !err.is_transient() {
                    return Err(err);
                }
                last = err;
                continue;
            }
            let answer: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                RemoteError::Unauthorized(format!(
                    "the token endpoint {token_url} answered without an access_token; check \
                     AUTH_TOKEN_URL"
                ))
            })?;
            let lifetime = Duration::from_secs(answer.expires_in);
            let refresh_at = started + lifetime.saturating_sub(refresh_margin(lifetime));
            tracing::debug!(
                lifetime_s = answer.expires_in,
                "fetched an access token (client credentials)"
            );
            return Ok(Cached {
                token: answer.access_token,
                refresh_at,
                usable_until: (started + lifetime).checked_sub(SERVER_MIN_TTL),
                file_mtime: None,
            });
        }
        Err(last)
    }

    async fn run_command(&self, cmd: &str) -> RemoteResult<String> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let output = match tokio::time::timeout(self.timeout, child).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                return Err(RemoteError::Unauthorized(format!(
                    "cannot run the token command: {e}; check FIRECREST_TOKEN_COMMAND"
                )))
            }
            Err(_) => {
                return Err(RemoteError::Unauthorized(format!(
                    "the token command did not finish within {} s; check \
                     FIRECREST_TOKEN_COMMAND",
                    self.timeout.as_secs()
                )))
            }
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let first = stderr.lines().next().unwrap_or("").trim();
            return Err(RemoteError::Unauthorized(format!(
                "the token command failed ({}{}{}); check FIRECREST_TOKEN_COMMAND",
                output.status,
                if first.is_empty() { "" } else { ": " },
                first
            )));
        }
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if token.is_empty() || token.contains(char::is_whitespace) {
            return Err(RemoteError::Unauthorized(
                "the token command printed no single token; check FIRECREST_TOKEN_COMMAND".into(),
            ));
        }
        Ok(token)
    }
}

fn cache_opaque(token: String, file_mtime: Option<SystemTime>) -> Cached {
    let now = Instant::now();
    let left = jwt_remaining(&token, SystemTime::now());
    let keep = match left {
        Some(left) => left.saturating_sub(refresh_margin(left)),
        None => OPAQUE_TOKEN_CACHE,
    };
    Cached {
        token,
        refresh_at: now + keep,
        usable_until: left.and_then(|l| (now + l).checked_sub(SERVER_MIN_TTL)),
        file_mtime,
    }
}

async fn read_token_file(path: &PathBuf) -> RemoteResult<Cached> {
    let fail = |e: std::io::Error| {
        RemoteError::Unauthorized(format!(
            "cannot read the token file {}: {e}; check the token file setting",
            path.display()
        ))
    };
    let mtime = tokio::fs::metadata(path)
        .await
        .and_then(|m| m.modified())
        .map_err(fail)?;
    let text = tokio::fs::read_to_string(path).await.map_err(fail)?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(RemoteError::Unauthorized(format!(
            "the token file {} is empty",
            path.display()
        )));
    }
    Ok(cache_opaque(token, Some(mtime)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_margin_follows_lifetime() {
        // CSCS: 5 min tokens are refreshed with 100 s left.
        assert_eq!(
            refresh_margin(Duration::from_secs(300)),
            Duration::from_secs(100)
        );
        // An hour: 20 min before expiry.
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(1200)
        );
        // Two minutes: at least 60 s before expiry.
        assert_eq!(
            refresh_margin(Duration::from_secs(120)),
            Duration::from_secs(60)
        );
        // Very short test tokens: half-way.
        assert_eq!(
            refresh_margin(Duration::from_secs(20)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn jwt_expiry_is_read() {
        // {"alg":"none"} . {"exp": 1000, "sub": "x"}
        let header = "eyJhbGciOiJub25lIn0";
        let payload = "eyJleHAiOjEwMDAsInN1YiI6IngifQ";
        let token = format!("{header}.{payload}.sig");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(900);
        assert_eq!(jwt_remaining(&token, now), Some(Duration::from_secs(100)));
        assert_eq!(jwt_remaining("opaque-token", now), None);
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
    }

    #[tokio::test]
    async fn token_command_is_cached_and_errors_are_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("n");
        let cmd = format!("echo x >> {0}; echo tok-$(wc -l < {0})", counter.display());
        let p = TokenProvider::new(Credentials::TokenCommand(cmd), Duration::from_secs(5)).unwrap();
        assert_eq!(p.token().await.unwrap(), "tok-1");
        assert_eq!(p.token().await.unwrap(), "tok-1");
        p.invalidate("tok-1").await;
        assert_eq!(p.token().await.unwrap(), "tok-2");
        let bad = TokenProvider::new(
            Credentials::TokenCommand("echo nope >&2; exit 3".into()),
            Duration::from_secs(5),
        )
        .unwrap();
        let e = bad.token().await.unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("FIRECREST_TOKEN_COMMAND") && !e.contains('\n'));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_callers_share_one_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let counter = dir.path().join("n");
        let cmd = format!("sleep 0.2; echo x >> {0}; echo tok", counter.display());
        let p = std::sync::Arc::new(
            TokenProvider::new(Credentials::TokenCommand(cmd), Duration::from_secs(5)).unwrap(),
        );
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let p = p.clone();
                tokio::spawn(async move { p.token().await.unwrap() })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), "tok");
        }
        assert_eq!(
            std::fs::read_to_string(&counter).unwrap().lines().count(),
            1
        );
        assert_eq!(p.fetch_count(), 1);
    }

    #[tokio::test]
    async fn token_file_is_reread_when_changed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        std::fs::write(&f, "first\n").unwrap();
        let p =
            TokenProvider::new(Credentials::TokenFile(f.clone()), Duration::from_secs(5)).unwrap();
        assert_eq!(p.token().await.unwrap(), "first");
        std::fs::write(&f, "second\n").unwrap();
        let t = std::time::SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(p.token().await.unwrap(), "second");
    }

    #[tokio::test]
    async fn unreachable_token_url_names_the_setting() {
        let p = TokenProvider::new(
            Credentials::ClientCredentials {
                token_url: "http://127.0.0.1:9/token".into(),
                client_id: "id".into(),
                client_secret: "s3cret-value".into(),
            },
            Duration::from_secs(2),
        )
        .unwrap();
        let e = p.token().await.unwrap_err().to_string();
        assert!(e.contains("AUTH_TOKEN_URL"), "{e}");
        assert!(!e.contains("s3cret-value") && !e.contains('\n'));
    }
}
