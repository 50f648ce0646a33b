//! `f7tfs mount SYSTEM:/remote/path MOUNTPOINT [options]`: clap arguments and their
//! conversion into `RemoteConfig` + `MountConfig`. Connection settings come from the
//! environment names pyfirecrest uses (FIRECREST_URL, FIRECREST_CLIENT_ID,
//! FIRECREST_CLIENT_SECRET, AUTH_TOKEN_URL, FIRECREST_TOKEN_COMMAND), overridable by flags;
//! the client secret never comes from the command line (environment or `--client-secret-file`).
//! What the command line and the environment leave unset comes from a profile of the
//! configuration file (`profile.rs`): `--profile NAME`, `-o profile=NAME`, or implicitly the
//! profile named like the SYSTEM of `SYSTEM:/path`.
//!
//! Also the mount helper: `mount -t fuse.f7tfs SRC DIR -o OPTS` runs `f7tfs SRC DIR -o OPTS`
//! (`cli::main` adds the `mount`), so every option mount(8) and mount.fuse3 pass is accepted.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::profile;
use crate::config::{ApiVersion, Credentials, MountConfig, RemoteConfig};

/// Mount a FirecREST path as a local folder.
#[derive(Debug, Default, clap::Args)]
#[command(after_help = MOUNT_HELP)]
pub struct MountArgs {
    /// What to mount: SYSTEM:/absolute/remote/path (default: the profile's `remote`).
    pub source: Option<String>,
    /// Where to mount it, an existing directory (default: the profile's `mountpoint`).
    pub mountpoint: Option<PathBuf>,
    /// Stay in the foreground (logs to stderr; Ctrl-C unmounts). Without it f7tfs returns once
    /// the mount is live and keeps serving in the background, logging to --log-file or
    /// ~/.cache/f7tfs/logs/.
    #[arg(short = 'f', long)]
    pub foreground: bool,
    /// Write the log to this file (appending) instead of stderr (also -o log_file=FILE).
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Set once the profile was folded in (it is applied once).
    #[arg(skip)]
    pub(crate) profile_resolved: bool,
    /// Mount options, comma separated: profile=NAME, config=FILE, log_file=FILE, attr_ttl=S, negative_ttl=S, dir_ttl=S, staging_dir=D,
    /// cache_dir=D, cache_max_size=SIZE, remote_timezone=TZ, api_version=v2, allow_other, ro,
    /// rw, writeback_delay=S, batch_reads=BOOL, statfs_size=SIZE, statfs_free=SIZE (what df
    /// shows), rate_limit=N, max_requests=N, timeout=S, max_in_flight=N. Options of mount(8)
    /// and fstab (dev, suid, exec, _netdev, noauto, user, nofail, default_permissions,
    /// x-systemd.*, ...) are accepted and ignored.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Attribute cache TTL in seconds (0 = always revalidate).
    #[arg(long)]
    pub attr_ttl: Option<f64>,
    /// Negative lookup TTL in seconds.
    #[arg(long)]
    pub negative_ttl: Option<f64>,
    /// Directory listing TTL in seconds.
    #[arg(long)]
    pub dir_ttl: Option<f64>,
    /// Write-back staging directory (default ~/.cache/f7tfs/staging/SYSTEM-PATH-HASH, one per
    /// remote).
    #[arg(long)]
    pub staging_dir: Option<PathBuf>,
    /// Content cache directory (default ~/.cache/f7tfs/content/SYSTEM-PATH-HASH, one per remote).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Bound of the content cache, e.g. 10G, 500M.
    #[arg(long)]
    pub cache_max_size: Option<String>,
    /// IANA time zone of the remote's `ls` times (default: detected).
    #[arg(long)]
    pub remote_timezone: Option<String>,
    /// Let other local users access the mount.
    #[arg(long)]
    pub allow_other: bool,
    /// Delayed write-back in seconds (default 2): small new files are uploaded this long after
    /// close, so the utimens/chmod/rename that follow (rsync, tar, cp -p) join one archive
    /// upload; fsync forces it; unlinks wait as long, so rm -r is one remote rm per directory.
    /// 0: close returns only once the remote has the data.
    #[arg(long)]
    pub writeback_delay: Option<f64>,
    /// Batched reads (default true): reading a small file of a directory holding many small
    /// files fetches all of them in one archive (3 calls) instead of one download each.
    #[arg(long, value_name = "BOOL")]
    pub batch_reads: Option<bool>,
    /// Client-side request rate limit in requests per minute (0 = unlimited).
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Concurrent HTTP requests at most.
    #[arg(long)]
    pub max_requests: Option<usize>,
    /// Seconds a file operation may wait for FirecREST (retries included) before it fails
    /// with EIO (default 120; also bounds each HTTP request).
    #[arg(long)]
    pub timeout: Option<f64>,
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// How to reach FirecREST and authenticate: the flags `mount`, `check` and `recover` share.
/// Unset ones come from the environment, then from the profile.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConnectionArgs {
    /// Profile of the configuration file to use (mount: also -o profile=NAME). Default: the
    /// profile named like SYSTEM, if there is one.
    #[arg(long, env = "F7TFS_PROFILE")]
    pub profile: Option<String>,
    /// Configuration file (mount: also -o config=FILE) [default: ~/.config/f7tfs/config.toml,
    /// then /etc/f7tfs/config.toml].
    #[arg(long, env = "F7TFS_CONFIG")]
    pub config: Option<PathBuf>,
    /// FirecREST API version (only v2 is implemented).
    #[arg(long)]
    pub api_version: Option<String>,
    /// FirecREST base URL.
    #[arg(long, env = "FIRECREST_URL")]
    pub url: Option<String>,
    /// OIDC client id.
    #[arg(long, env = "FIRECREST_CLIENT_ID")]
    pub client_id: Option<String>,
    /// File holding the OIDC client secret (else $FIRECREST_CLIENT_SECRET).
    #[arg(long)]
    pub client_secret_file: Option<PathBuf>,
    /// OIDC token endpoint.
    #[arg(long, env = "AUTH_TOKEN_URL")]
    pub token_url: Option<String>,
    /// A command printing an access token (instead of client credentials).
    #[arg(long, env = "FIRECREST_TOKEN_COMMAND")]
    pub token_command: Option<String>,
    /// A file holding an access token (instead of client credentials).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

const MOUNT_HELP: &str = "\
ENVIRONMENT (as pyfirecrest; flags win, a profile fills the rest):
  FIRECREST_URL, FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET, AUTH_TOKEN_URL,
  FIRECREST_TOKEN_COMMAND, F7TFS_PROFILE, F7TFS_CONFIG, F7TFS_LOG (log filter, e.g. debug)

CONFIGURATION FILE (~/.config/f7tfs/config.toml):
  [profile.daint]
  url = \"https://api.cscs.ch/hpc/firecrest/v2\"
  token_url = \"https://auth.cscs.ch/auth/realms/firecrest-clients/protocol/openid-connect/token\"
  client_id = \"...\"
  client_secret_file = \"~/.config/f7tfs/daint.secret\"
  remote = \"daint:/capstor/scratch/cscs/alice\"
  mountpoint = \"~/scratch\"
  attr_ttl = 5                      # any -o option as a key

MOUNT HELPER (f7tfs on PATH, e.g. /usr/local/bin/f7tfs):
  mount -t fuse.f7tfs daint:/capstor/scratch/cscs/alice /mnt/scratch -o profile=daint,allow_other
  /etc/fstab:
  daint:/capstor/scratch/cscs/alice /mnt/scratch fuse.f7tfs profile=daint,allow_other,_netdev,noauto,user 0 0

Unmount with `fusermount3 -u MOUNTPOINT` (or `umount` as root); pending uploads finish first.";

/// Refuses a URL the client could never reach, naming the setting that holds it.
fn http_url(url: &str, setting: &str, example: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(()),
        _ => Err(format!(
            "{url:?} is not an http(s) URL: set {setting} to one, e.g. {example}"
        )),
    }
}

fn secs(v: f64, what: &str) -> Result<Duration, String> {
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{what} must be a number of seconds >= 0, got {v}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn parse_secs(v: &str, what: &str) -> Result<Duration, String> {
    secs(
        v.parse::<f64>()
            .map_err(|_| format!("{what} must be seconds, got {v:?}"))?,
        what,
    )
}

/// `10G`, `500M`, `64K`, `1000` → bytes (binary units).
pub fn parse_size(v: &str) -> Result<u64, String> {
    let t = v.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let mult: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {v:?} (use K, M, G, T)")),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {v:?} (e.g. 10G)"))?;
    if n < 0.0 || !n.is_finite() {
        return Err(format!("not a size: {v:?}"));
    }
    Ok((n * mult as f64) as u64)
}

impl MountArgs {
    /// Folds `-o` options into the flags (flags given explicitly win).
    fn apply_options(&mut self, mount: &mut MountConfig) -> Result<(), String> {
        let options = std::mem::take(&mut self.options);
        for opt in &options {
            self.apply_option(opt.trim(), mount)?;
        }
        Ok(())
    }

    fn apply_option<'a>(&mut self, opt: &'a str, mount: &mut MountConfig) -> Result<(), String> {
        {
            if opt.is_empty() {
                return Ok(());
            }
            let (key, val) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let missing = format!("-o {key} needs a value ({key}=...)");
            let need = |v: Option<&'a str>| v.ok_or(missing.clone());
            match key {
                "attr_ttl" if self.attr_ttl.is_none() => {
                    mount.cache.attr_ttl = parse_secs(need(val)?, key)?
                }
                "negative_ttl" if self.negative_ttl.is_none() => {
                    mount.cache.negative_ttl = parse_secs(need(val)?, key)?
                }
                "dir_ttl" if self.dir_ttl.is_none() => {
                    mount.cache.dir_ttl = parse_secs(need(val)?, key)?
                }
                "staging_dir" if self.staging_dir.is_none() => {
                    mount.staging.dir = PathBuf::from(need(val)?)
                }
                "cache_dir" if self.cache_dir.is_none() => {
                    mount.cache.cache_dir = PathBuf::from(need(val)?)
                }
                "cache_max_size" if self.cache_max_size.is_none() => {
                    mount.cache.cache_max_size = parse_size(need(val)?)?
                }
                "remote_timezone" if self.remote_timezone.is_none() => {
                    self.remote_timezone = Some(need(val)?.to_string())
                }
                "api_version" if self.conn.api_version.is_none() => {
                    self.conn.api_version = Some(need(val)?.to_string())
                }
                "writeback_delay" if self.writeback_delay.is_none() => {
                    mount.writeback_delay = parse_secs(need(val)?, key)?
                }
                "writeback_delay" => {}
                "batch_reads" if self.batch_reads.is_none() => {
                    mount.batch_reads = match val.unwrap_or("true") {
                        "true" | "yes" | "on" | "1" => true,
                        "false" | "no" | "off" | "0" => false,
                        v => return Err(format!("batch_reads must be true or false, got {v:?}")),
                    }
                }
                "batch_reads" => {}
                "statfs_size" => mount.statfs_total_bytes = parse_size(need(val)?)?,
                "statfs_free" => mount.statfs_free_bytes = parse_size(need(val)?)?,
                "rate_limit" if self.rate_limit.is_none() => {
                    self.rate_limit = Some(
                        need(val)?
                            .parse()
                            .map_err(|_| "rate_limit must be requests per minute".to_string())?,
                    )
                }
                "max_requests" if self.max_requests.is_none() => {
                    self.max_requests = Some(
                        need(val)?
                            .parse()
                            .map_err(|_| "max_requests must be a number".to_string())?,
                    )
                }
                "timeout" if self.timeout.is_none() => {
                    self.timeout = Some(
                        need(val)?
                            .parse()
                            .map_err(|_| "timeout must be seconds".to_string())?,
                    )
                }
                "rate_limit" | "max_requests" | "timeout" => {}
                "max_in_flight" => {
                    mount.max_in_flight_ops = need(val)?
                        .parse()
                        .map_err(|_| "max_in_flight must be a number".to_string())?
                }
                "log_file" => {
                    let file = PathBuf::from(need(val)?);
                    self.log_file.get_or_insert(file);
                }
                // Consumed by `resolve_profile` already.
                "profile" | "config" => {}
                "allow_other" => mount.allow_other = true,
                "ro" => mount.read_only = true,
                "rw" => mount.read_only = false,
                "attr_ttl" | "negative_ttl" | "dir_ttl" | "staging_dir" | "cache_dir"
                | "cache_max_size" | "remote_timezone" | "api_version" => {}
                "dev"
                | "nodev"
                | "suid"
                | "nosuid"
                | "exec"
                | "noexec"
                | "auto"
                | "noauto"
                | "user"
                | "users"
                | "nofail"
                | "_netdev"
                | "default_permissions"
                | "atime"
                | "noatime"
                | "relatime"
                | "nouser"
                | "owner"
                | "group"
                | "sync"
                | "async"
                | "dirsync"
                | "lazytime"
                | "fsname"
                | "subtype"
                | "comment"
                | "defaults"
                | "diratime"
                | "nodiratime"
                | "strictatime"
                | "silent"
                | "loud" => {}
                other if other.starts_with("x-") => {}
                other => {
                    return Err(format!(
                        "unknown mount option -o {other} (see f7tfs mount --help)"
                    ))
                }
            }
        }
        Ok(())
    }

    fn credentials(&self) -> Result<Credentials, String> {
        if let Some(cmd) = self
            .conn
            .token_command
            .clone()
            .filter(|c| !c.trim().is_empty())
        {
            return Ok(Credentials::TokenCommand(cmd));
        }
        if let Some(file) = self.conn.token_file.clone() {
            return Ok(Credentials::TokenFile(file));
        }
        let client_id = self
            .conn
            .client_id
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or(
            "no credentials: set FIRECREST_CLIENT_ID, FIRECREST_CLIENT_SECRET and AUTH_TOKEN_URL \
             (or FIRECREST_TOKEN_COMMAND)",
        )?;
        let token_url = self
            .conn
            .token_url
            .clone()
            .filter(|s| !s.is_empty())
            .ok_or("no token endpoint: set AUTH_TOKEN_URL (or --token-url)")?;
        http_url(
            &token_url,
            "AUTH_TOKEN_URL (or --token-url)",
            "https://auth.cscs.ch/auth/realms/firecrest-clients/protocol/openid-connect/token",
        )?;
        let client_secret = match &self.conn.client_secret_file {
            Some(path) => {
                let (secret, warning) = crate::remote::auth::read_secret_file(path)?;
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
                secret
            }
            None => std::env::var("FIRECREST_CLIENT_SECRET").map_err(|_| {
                "no client secret: set FIRECREST_CLIENT_SECRET or pass --client-secret-file"
                    .to_string()
            })?,
        };
        Ok(Credentials::ClientCredentials {
            token_url,
            client_id,
            client_secret,
        })
    }

    /// Takes `profile=` and `config=` out of `-o`, then fills what the command line and the
    /// environment left unset from the profile (CLI > environment > profile).
    fn resolve_profile(&mut self) -> Result<(), String> {
        if std::mem::replace(&mut self.profile_resolved, true) {
            return Ok(());
        }
        let mut rest = Vec::new();
        for opt in std::mem::take(&mut self.options) {
            match opt.trim().split_once('=') {
                Some(("profile", v)) => {
                    self.conn.profile.get_or_insert(v.to_string());
                }
                Some(("config", v)) => {
                    self.conn.config.get_or_insert(PathBuf::from(v));
                }
                _ => rest.push(opt),
            }
        }
        self.options = rest;
        let explicit = self.conn.profile.clone().filter(|p| !p.is_empty());
        let file = profile::config_path(self.conn.config.as_deref());
        let (file, name) = match (file, explicit) {
            (Some(file), Some(name)) => {
                if !file.exists() {
                    return Err(format!(
                        "profile {name:?}: the config file {} does not exist",
                        file.display()
                    ));
                }
                (file, name)
            }
            (None, Some(name)) => {
                return Err(format!(
                    "profile {name:?}: no config file (create ~/.config/f7tfs/config.toml with a                      [profile.{name}] table, or pass --config FILE)"
                ))
            }
            (Some(file), None) => {
                // Implicitly the profile named like the source's SYSTEM, if it exists.
                let system = self
                    .source
                    .as_deref()
                    .and_then(|s| s.split_once(':'))
                    .map(|(sys, _)| sys.to_string());
                match system {
                    Some(sys) if profile::names(&file).contains(&sys) => (file, sys),
                    _ => return Ok(()),
                }
            }
            (None, None) => return Ok(()),
        };
        let p = profile::load(&file, &name)?.ok_or_else(|| {
            let known = profile::names(&file);
            format!(
                "no profile {name:?} in {} (profiles there: {})",
                file.display(),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })?;
        tracing::debug!(profile = %name, file = %file.display(), "using profile");
        self.apply_profile(p);
        Ok(())
    }

    fn apply_profile(&mut self, p: profile::Profile) {
        fn fill<T>(slot: &mut Option<T>, value: Option<T>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        let cli_credentials = self.conn.client_id.is_some()
            || self.conn.token_command.is_some()
            || self.conn.token_file.is_some();
        fill(&mut self.conn.url, p.url);
        fill(&mut self.conn.token_url, p.token_url);
        if !cli_credentials {
            fill(&mut self.conn.client_id, p.client_id);
            fill(&mut self.conn.token_command, p.token_command);
            fill(&mut self.conn.token_file, p.token_file);
        }
        // The environment's secret beats the profile's secret file.
        if std::env::var_os("FIRECREST_CLIENT_SECRET").is_none() {
            fill(&mut self.conn.client_secret_file, p.client_secret_file);
        }
        fill(&mut self.conn.api_version, p.api_version);
        fill(&mut self.log_file, p.log_file);
        fill(&mut self.mountpoint, p.mountpoint);
        let system = p.system.or_else(|| {
            p.remote
                .as_deref()
                .and_then(|r| r.split_once(':'))
                .map(|(s, _)| s.to_string())
        });
        match (&self.source, p.remote) {
            (None, remote) => self.source = remote,
            // `f7tfs mount --profile daint /path DIR`: the profile names the system.
            (Some(src), _) if !src.contains(':') => {
                if let Some(sys) = system {
                    self.source = Some(format!("{sys}:{src}"));
                }
            }
            _ => {}
        }
        // Profile options first: a later `-o` of the command line wins.
        let mut options = p.options;
        options.append(&mut self.options);
        self.options = options;
    }

    /// Profile, source and `-o` options: (system, remote root, mount config without a
    /// mount point).
    fn prepare(&mut self) -> Result<(String, MountConfig), String> {
        self.resolve_profile()?;
        let source = self.source.clone().ok_or(
            "nothing to mount: give SYSTEM:/remote/path (or `remote = ...` in a profile, see --profile)",
        )?;
        let (system, root) = source.split_once(':').ok_or_else(|| {
            format!("{source:?} is not SYSTEM:/remote/path (e.g. daint:/scratch/me)")
        })?;
        if system.is_empty() {
            return Err(format!("no system name in {source:?} (write SYSTEM:/path)"));
        }
        let root = if root.is_empty() { "/" } else { root };
        let mut mount = MountConfig::new(root, self.mountpoint.clone().unwrap_or_default());
        mount.foreground = self.foreground;
        self.apply_options(&mut mount)?;
        Ok((system.to_string(), mount))
    }

    /// The connection settings and the remote path alone (for `f7tfs check`).
    pub fn into_remote(mut self) -> Result<(RemoteConfig, String), String> {
        let (system, mount) = self.prepare()?;
        if !mount.remote_root.starts_with('/') {
            return Err(format!(
                "remote path must be absolute, got {:?} (write SYSTEM:/path)",
                mount.remote_root
            ));
        }
        Ok((self.remote_config(&system)?, mount.remote_root))
    }

    /// The connection and mount configuration these arguments describe.
    pub fn into_configs(mut self) -> Result<(RemoteConfig, MountConfig), String> {
        self.configs()
    }

    fn configs(&mut self) -> Result<(RemoteConfig, MountConfig), String> {
        let (system, mut mount) = self.prepare()?;
        let mountpoint = self.mountpoint.clone().ok_or(
            "no mount point: give MOUNTPOINT (or `mountpoint = ...` in a profile, see --profile)",
        )?;
        // Absolute, so that /proc/mounts, messages, log names and status agree on it.
        mount.mountpoint = mountpoint
            .canonicalize()
            .or_else(|_| std::path::absolute(&mountpoint))
            .unwrap_or(mountpoint);
        if let Some(v) = self.attr_ttl {
            mount.cache.attr_ttl = secs(v, "--attr-ttl")?;
        }
        if let Some(v) = self.negative_ttl {
            mount.cache.negative_ttl = secs(v, "--negative-ttl")?;
        }
        if let Some(v) = self.writeback_delay {
            mount.writeback_delay = secs(v, "--writeback-delay")?;
        }
        if let Some(v) = self.batch_reads {
            mount.batch_reads = v;
        }
        if let Some(v) = self.dir_ttl {
            mount.cache.dir_ttl = secs(v, "--dir-ttl")?;
        }
        // By default each remote gets its own staging and content directories, so mounts of
        // different remotes (profiles) run side by side.
        let key = crate::config::remote_key(&system, &mount.remote_root);
        mount.staging.dir = self
            .staging_dir
            .clone()
            .unwrap_or_else(|| mount.staging.dir.join(&key));
        mount.cache.cache_dir = self
            .cache_dir
            .clone()
            .unwrap_or_else(|| mount.cache.cache_dir.join(&key));
        if let Some(s) = &self.cache_max_size {
            mount.cache.cache_max_size = parse_size(s)?;
        }
        mount.allow_other |= self.allow_other;
        mount.statfs_free_bytes = mount.statfs_free_bytes.min(mount.statfs_total_bytes);
        mount.validate()?;
        let remote = self.remote_config(&system)?;
        Ok((remote, mount))
    }

    fn remote_config(&self, system: &str) -> Result<RemoteConfig, String> {
        let url = self
            .conn
            .url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or("no FirecREST URL: set FIRECREST_URL (or --url, or url in a profile)")?;
        http_url(
            &url,
            "FIRECREST_URL (or --url, or url in a profile)",
            "https://api.cscs.ch/hpc/firecrest/v2",
        )?;
        let mut remote = RemoteConfig::new(url, system, self.credentials()?);
        remote.api_version = match self.conn.api_version.as_deref() {
            None | Some("") | Some("auto") => None,
            Some("v2") | Some("2") => Some(ApiVersion::V2),
            Some("v1") | Some("1") => Some(ApiVersion::V1),
            Some(other) => return Err(format!("--api-version must be v1 or v2, got {other:?}")),
        };
        remote.remote_timezone = self.remote_timezone.clone();
        if let Some(r) = self.rate_limit {
            remote.rate_per_minute = r;
        }
        if let Some(t) = self.timeout {
            let t = secs(t, "--timeout")?;
            if t < Duration::from_secs(1) {
                return Err("--timeout must be at least 1 second".into());
            }
            remote.op_deadline = t;
            remote.call_timeout = remote.call_timeout.min(t);
        }
        if let Some(n) = self.max_requests {
            if n == 0 {
                return Err("--max-requests must be at least 1".into());
            }
            remote.max_concurrent_requests = n;
        }
        Ok(remote)
    }
}

/// Runs `f7tfs mount`.
pub fn run(mut args: MountArgs) -> Result<(), String> {
    // The profile may name the log file, so it is read before logging starts.
    let resolved = args.resolve_profile();
    let foreground = args.foreground;
    crate::logging::init_to(args.log_file.as_deref().filter(|_| foreground));
    resolved?;
    let (remote, mount) = args.configs()?;
    if !foreground {
        // Checked here too: the parent reports success when the mount point is mounted.
        crate::mount::check_mountpoint(&mount.mountpoint)?;
        return background(&mount, args.log_file.as_deref());
    }
    crate::mount::run(remote, mount)
}

/// What the daemon said to the user (its `f7tfs: ` lines) in its log since `start`.
fn daemon_lines(log_path: &Path, start: u64) -> Vec<String> {
    let all = std::fs::read(log_path).unwrap_or_default();
    let text = String::from_utf8_lossy(all.get(start as usize..).unwrap_or_default());
    text.lines()
        .filter_map(|l| l.strip_prefix("f7tfs: "))
        .map(str::to_string)
        .collect()
}

/// Without `-f`: runs this same command with `-f` in a new session, logging to `log_file` or
/// `~/.cache/f7tfs/logs/`, and returns once the mount is live (or with the child's error).
fn background(mount: &MountConfig, log_file: Option<&Path>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the f7tfs binary: {e}"))?;
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    argv.push("-f".into());
    let log_path = match log_file {
        Some(file) => file.to_path_buf(),
        None => {
            let logs = crate::config::default_cache_root().join("logs");
            std::fs::create_dir_all(&logs)
                .map_err(|e| format!("cannot create the log directory {}: {e}", logs.display()))?;
            let tag: String = mount
                .mountpoint
                .to_string_lossy()
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            logs.join(format!("mount{tag}.log"))
        }
    };
    // Append (the daemon appends too), but read only what this start writes.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open the log file {}: {e}", log_path.display()))?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let log2 = log
        .try_clone()
        .map_err(|e| format!("cannot use the log file: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(argv)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log2)
        .stderr(log);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the mount daemon: {e}"))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        if crate::mount::is_mounted(&mount.mountpoint) {
            // The daemon's notices for the user (staged writes of an earlier run) went to
            // the log: repeat them here, where the user looks.
            for notice in daemon_lines(&log_path, log_start) {
                eprintln!("f7tfs: {notice}");
            }
            eprintln!(
                "f7tfs: mounted at {} (pid {}, log {})",
                mount.mountpoint.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let line = daemon_lines(&log_path, log_start).pop().unwrap_or_else(|| {
                format!(
                    "the mount daemon exited ({status}); see {}",
                    log_path.display()
                )
            });
            return Err(line);
        }
        if std::time::Instant::now() > deadline {
            return Err(format!(
                "the mount did not come up within 5 minutes; see {}",
                log_path.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        m: MountArgs,
    }

    fn parse(args: &[&str]) -> Result<(RemoteConfig, MountConfig), String> {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        T::try_parse_from(all)
            .map_err(|e| e.to_string())?
            .m
            .into_configs()
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("500M").unwrap(), 500 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("42").unwrap(), 42);
        assert!(parse_size("12X").is_err());
    }

    #[test]
    fn options_and_flags() {
        let (r, m) = parse(&[
            "cluster:/scratch/me",
            "/mnt/x",
            "--url",
            "http://h",
            "--token-command",
            "echo t",
            "-o",
            "attr_ttl=0,dir_ttl=1.5,allow_other,cache_max_size=1G,statfs_size=2T,statfs_free=1T",
            "--negative-ttl",
            "3",
        ])
        .unwrap();
        assert_eq!(r.system, "cluster");
        assert_eq!(m.remote_root, "/scratch/me");
        assert_eq!(m.cache.attr_ttl, Duration::ZERO);
        assert_eq!(m.cache.dir_ttl, Duration::from_millis(1500));
        assert_eq!(m.cache.negative_ttl, Duration::from_secs(3));
        assert_eq!(m.cache.cache_max_size, 1 << 30);
        assert!(m.allow_other);
        assert_eq!(
            (m.statfs_total_bytes, m.statfs_free_bytes),
            (2 << 40, 1 << 40)
        );
        assert!(matches!(r.credentials, Credentials::TokenCommand(_)));
    }

    #[test]
    fn batch_reads_default_on_and_switch_off() {
        let base = ["c:/p", "/mnt", "--url", "http://u", "--token-command", "x"];
        assert!(parse(&base).unwrap().1.batch_reads);
        let with = |extra: &[&str]| {
            let mut a = base.to_vec();
            a.extend_from_slice(extra);
            parse(&a)
        };
        assert!(!with(&["-o", "batch_reads=false"]).unwrap().1.batch_reads);
        assert!(!with(&["--batch-reads", "false"]).unwrap().1.batch_reads);
        // The flag wins over -o.
        let m = with(&["--batch-reads", "true", "-o", "batch_reads=false"])
            .unwrap()
            .1;
        assert!(m.batch_reads);
        let e = with(&["-o", "batch_reads=maybe"]).unwrap_err();
        assert!(e.contains("batch_reads"), "{e}");
    }

    #[test]
    fn bad_input_names_the_fix() {
        let e = parse(&[
            "noколон",
            "/mnt",
            "--url",
            "http://u",
            "--token-command",
            "x",
        ])
        .unwrap_err();
        assert!(e.contains("SYSTEM:/remote/path"), "{e}");
        let e = parse(&[
            "c:/p",
            "/mnt",
            "--url",
            "u",
            "--token-command",
            "x",
            "-o",
            "bogus",
        ])
        .unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = parse(&["c:rel", "/mnt", "--url", "http://u", "--token-command", "x"]).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn profile_fills_what_cli_and_environment_leave_unset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[profile.daint]\nurl = \"http://profile\"\ntoken_command = \"echo t\"\n\
             remote = \"daint:/scratch/alice\"\nmountpoint = \"/mnt/p\"\nattr_ttl = 7\n\
             dir_ttl = 9\n\n[profile.eiger]\nsystem = \"eiger\"\nurl = \"http://e\"\n\
             token_command = \"echo t\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        // Everything from the profile.
        let (r, m) = parse(&["--config", f, "--profile", "daint"]).unwrap();
        assert_eq!(
            (r.url.as_str(), r.system.as_str()),
            ("http://profile", "daint")
        );
        assert_eq!(m.remote_root, "/scratch/alice");
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/p"));
        assert_eq!(m.cache.attr_ttl, Duration::from_secs(7));
        // The command line wins: flag, -o and positional arguments; `-o profile=`.
        let (r, m) = parse(&[
            "daint:/other",
            "/mnt/q",
            "--url",
            "http://cli",
            "-o",
            &format!("config={f},profile=daint,dir_ttl=1"),
            "--attr-ttl",
            "2",
        ])
        .unwrap();
        assert_eq!(r.url, "http://cli");
        assert_eq!(m.remote_root, "/other");
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/q"));
        assert_eq!(m.cache.attr_ttl, Duration::from_secs(2));
        assert_eq!(m.cache.dir_ttl, Duration::from_secs(1));
        // Implicitly the profile named like the system.
        let (r, _) = parse(&["--config", f, "daint:/x", "/mnt/x"]).unwrap();
        assert_eq!(r.url, "http://profile");
        // A profile's system completes a bare path.
        let (r, m) = parse(&["--config", f, "--profile", "eiger", "/store", "/mnt/e"]).unwrap();
        assert_eq!(
            (r.system.as_str(), m.remote_root.as_str()),
            ("eiger", "/store")
        );
        // Unknown profile: the known ones are listed.
        let e = parse(&["--config", f, "--profile", "nope", "a:/b", "/m"]).unwrap_err();
        assert!(e.contains("daint, eiger"), "{e}");
        let e = parse(&["--config", "/nonexistent/c.toml", "--profile", "x"]).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
    }
}
