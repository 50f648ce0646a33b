//! Plain configuration structs with defaults; the CLI (`cli/`) and the config file build them,
//! everything else only reads them. `RemoteConfig` is what a `RemoteFs` client needs to
//! connect; mount, cache and staging settings live beside it.

use std::path::PathBuf;
use std::time::Duration;

/// Default of `MountConfig::writeback_delay` (see there for why it is not 0).
pub const DEFAULT_WRITEBACK_DELAY: Duration = Duration::from_secs(2);

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
            // 20 requests/s sustained, bursts of 600 (a `cp -r` of a few hundred small files
            // runs at full speed); a 429 from the gateway is honoured on top (Retry-After).
            rate_per_minute: 1200,
            rate_burst: 600,
            remote_timezone: None,
            transfer_parallelism: 4,
            max_concurrent_requests: 16,
        }
    }
}

/// Attribute, listing and content caching.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// How long a file's attributes are trusted (also the kernel's attr/entry TTL).
    pub attr_ttl: Duration,
    /// How long "this name does not exist" is trusted.
    pub negative_ttl: Duration,
    /// How long a directory listing is trusted (lookups of unlisted names answer ENOENT
    /// without a call while it is fresh).
    pub dir_ttl: Duration,
    /// Where whole small files are cached, keyed by path+size+mtime.
    pub cache_dir: PathBuf,
    /// Upper bound of the content cache on disk (LRU by size).
    pub cache_max_size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            attr_ttl: Duration::from_secs(5),
            negative_ttl: Duration::from_secs(2),
            dir_ttl: Duration::from_secs(5),
            cache_dir: default_cache_root().join("content"),
            cache_max_size: 10 * 1024 * 1024 * 1024,
        }
    }
}

/// The write-back staging area.
#[derive(Clone, Debug)]
pub struct StagingConfig {
    /// One data file + one manifest per staged file live here.
    pub dir: PathBuf,
    /// How long unmount waits for uploads still running before it leaves them staged.
    pub unmount_wait: Duration,
}

impl Default for StagingConfig {
    fn default() -> Self {
        StagingConfig {
            dir: default_cache_root().join("staging"),
            unmount_wait: Duration::from_secs(60),
        }
    }
}

/// Everything `f7tfs mount` needs besides the connection.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// The remote directory shown at the mount point's root.
    pub remote_root: String,
    pub mountpoint: PathBuf,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Let other local users in (`allow_other`); off by default.
    pub allow_other: bool,
    /// Mount read-only.
    pub read_only: bool,
    /// Bound of FUSE operations served at once.
    pub max_in_flight_ops: usize,
    /// Delayed write-back: a small new file is uploaded this long after its close, so the
    /// utimens/chmod/rename that rsync, tar and `cp -p` send next join one archive upload.
    /// Default 2 s: `f7tfs-bench` measured `rsync -a` of 1,000 files at 75 calls with it against
    /// 11,261 without. 0 uploads at close: close() returns only once the remote has the data.
    pub writeback_delay: Duration,
    /// Batched reads: a small file read from a directory of many small files brings all of
    /// them in one archive (compress + download + rm) instead of one download each.
    pub batch_reads: bool,
    /// Synthetic `statfs` numbers: total and free bytes, total and free inodes.
    pub statfs_total_bytes: u64,
    pub statfs_free_bytes: u64,
    pub statfs_total_inodes: u64,
    pub statfs_free_inodes: u64,
    pub cache: CacheConfig,
    pub staging: StagingConfig,
}

impl MountConfig {
    /// Defaults for everything but what to mount where.
    pub fn new(remote_root: impl Into<String>, mountpoint: impl Into<PathBuf>) -> Self {
        MountConfig {
            remote_root: remote_root.into(),
            mountpoint: mountpoint.into(),
            foreground: false,
            allow_other: false,
            read_only: false,
            max_in_flight_ops: 64,
            writeback_delay: DEFAULT_WRITEBACK_DELAY,
            batch_reads: true,
            statfs_total_bytes: 1 << 50,
            statfs_free_bytes: 1 << 49,
            statfs_total_inodes: 1 << 32,
            statfs_free_inodes: 1 << 31,
            cache: CacheConfig::default(),
            staging: StagingConfig::default(),
        }
    }

    /// Checks values that would make the mount misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if !self.remote_root.starts_with('/') {
            return Err(format!(
                "remote path must be absolute, got {:?} (write SYSTEM:/path)",
                self.remote_root
            ));
        }
        if self.max_in_flight_ops == 0 {
            return Err("max_in_flight_ops must be at least 1".into());
        }
        if self.staging.dir == self.cache.cache_dir {
            return Err("staging dir and cache dir must differ".into());
        }
        Ok(())
    }
}

/// The name of a remote's own staging and content directories: `SYSTEM:/remote/root` in
/// file-name-safe characters (`daint-capstor_scratch_me`) plus a short hash of the exact
/// text, so different remotes never share one.
pub fn remote_key(system: &str, remote_root: &str) -> String {
    use sha2::{Digest, Sha256};
    let safe = |s: &str| -> String {
        s.chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' => c,
                _ => '_',
            })
            .collect()
    };
    let root = safe(remote_root.trim_matches('/'));
    let readable: String = format!("{}-{root}", safe(system))
        .chars()
        .take(80)
        .collect();
    let hash = Sha256::digest(format!("{system}:{remote_root}").as_bytes());
    let short: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{readable}-{short}")
}

/// `$XDG_CACHE_HOME/f7tfs` or `~/.cache/f7tfs` (or `/tmp/f7tfs-cache` without a home).
pub fn default_cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("f7tfs");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("f7tfs"),
        None => std::env::temp_dir().join("f7tfs-cache"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_keys_are_readable_and_distinct() {
        let k = remote_key("daint", "/capstor/scratch/cscs/me");
        assert!(k.starts_with("daint-capstor_scratch_cscs_me-"), "{k}");
        assert_ne!(remote_key("a", "/b/c"), remote_key("a", "/b_c"));
        assert_ne!(remote_key("a", "/"), remote_key("b", "/"));
        assert!(!remote_key("x y", "/ü/../z").contains(['/', ' ']));
    }
}
