//! Plain configuration structs with defaults; the CLI (`cli/`) and the config file build them,
//! everything else only reads them. `RemoteConfig` is what a `RemoteFs` client needs to
//! connect; mount, cache and staging settings live beside it.

use std::path::PathBuf;
use std::time::Duration;

/// Which FirecREST API the server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiVersion {
    V1,
    V2,
}

/// Where the client's access token comes from. Secrets are never logged (`Debug` redacts).
#[derive(Clone)]
pub enum Credentials {
    /// OIDC client-credentials grant against `token_url`.
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
    },
    /// A command whose stdout is the token (run again before expiry).
    TokenCommand(String),
    /// A file holding the token (re-read when it changes).
    TokenFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ClientCredentials {
                token_url,
                client_id,
                ..
            } => f
                .debug_struct("ClientCredentials")
                .field("token_url", token_url)
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
            Credentials::TokenCommand(cmd) => f.debug_tuple("TokenCommand").field(cmd).finish(),
            Credentials::TokenFile(p) => f.debug_tuple("TokenFile").field(p).finish(),
        }
    }
}

/// Everything a `RemoteFs` client needs to talk to one FirecREST system.
#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// Base URL, e.g. `https://api.cscs.ch/hpc/firecrest/v2` (no trailing slash).
    pub url: String,
    /// System name, e.g. `daint`.
    pub system: String,
    pub credentials: Credentials,
    /// `None`: detect once at connect time.
    pub api_version: Option<ApiVersion>,
    /// Deadline of one HTTP call (not of a whole transfer).
    pub call_timeout: Duration,
    /// Deadline of a whole operation including retries: after it the op fails with EIO.
    pub op_deadline: Duration,
    /// Retries of transient failures (idempotent calls only).
    pub max_retries: u32,
    /// Client-side rate limit, requests per minute (0 = unlimited), with this burst.
    pub rate_per_minute: u32,
    pub rate_burst: u32,
    /// IANA zone of the remote's `ls` times; `None`: detect from one `ls` + `stat` pair.
    pub remote_timezone: Option<String>,
    /// Parallel part uploads / range reads of one staged transfer.
    pub transfer_parallelism: usize,
    /// Upper bound of concurrent HTTP requests overall.
    pub max_concurrent_requests: usize,
}

impl RemoteConfig {
    /// Defaults for everything but where to connect.
    pub fn new(
        url: impl Into<String>,
        system: impl Into<String>,
        credentials: Credentials,
    ) -> Self {
        RemoteConfig {
            url: url.into().trim_end_matches('/').to_string(),
            system: system.into(),
            credentials,
            api_version: None,
            call_timeout: Duration::from_secs(30),
            op_deadline: Duration::from_secs(120),
            max_retries: 5,
            rate_per_minute: 1200,
            rate_burst: 60,
            remote_timezone: None,
            transfer_parallelism: 4,
            max_concurrent_requests: 16,
        }
    }
}
