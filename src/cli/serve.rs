//! `f7tfs serve ROOT`: arguments, conversion into [`ServeConfig`], and the blocking run loop
//! (print the client environment, serve until Ctrl-C or SIGTERM).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::{self, FaultPlan, ServeConfig};

/// Serve the FirecREST v2 API over a local directory (remote paths = local paths under ROOT).
#[derive(Debug, clap::Args)]
#[command(after_help = FAULT_HELP)]
pub struct ServeArgs {
    /// Directory to serve; advertised as the system's one filesystem (canonical path).
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,
    /// System name served (case-insensitive in URLs).
    #[arg(long, default_value = "cluster")]
    pub system: String,
    /// Client id accepted by the token endpoint.
    #[arg(long, env = "F7TFS_CLIENT_ID", default_value = "f7tfs")]
    pub client_id: String,
    /// Client secret accepted by the token endpoint.
    #[arg(
        long,
        env = "F7TFS_CLIENT_SECRET",
        default_value = "f7tfs",
        hide_env_values = true
    )]
    pub client_secret: String,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long, default_value_t = 300)]
    pub token_lifetime: u64,
    /// Tokens with less life left are refused like the real server (seconds); capped at a
    /// quarter of --token-lifetime so short-lived test tokens stay usable.
    #[arg(long, default_value_t = 30)]
    pub min_token_ttl: u64,
    /// Run all file work as this local user (uid, gid and groups); needs root.
    #[arg(long)]
    pub as_user: Option<String>,
    /// dataOperation.max_ops_file_size: direct upload limit and command output buffer, bytes.
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    pub max_ops_file_size: u64,
    /// maxPartSize of staged uploads, bytes (the real default is larger).
    #[arg(long, default_value_t = 5 * 1024 * 1024)]
    pub max_part_size: u64,
    /// Delay before a transfer job starts running, milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub job_delay_ms: u64,
    /// How often an upload job looks for the completed object, milliseconds (the real job
    /// polls every 60 s).
    #[arg(long, default_value_t = 200)]
    pub upload_poll_ms: u64,
    /// Validity of presigned staging URLs, seconds.
    #[arg(long, default_value_t = 604_800)]
    pub s3_url_ttl: u64,
    /// Timeout of every ops command, seconds (real: 5).
    #[arg(long, default_value_t = 5)]
    pub command_timeout: u64,
    /// Latency added to every API call (not S3), milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Latency added to every S3 staging call, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub s3_latency_ms: u64,
    /// Inject faults; repeatable. See FAULTS below.
    #[arg(long = "fault", value_name = "SPEC")]
    pub faults: Vec<String>,
    /// Base URL put into staging URLs (default: http://<listen address>).
    #[arg(long)]
    pub public_url: Option<String>,
    /// Quirk off: an empty direct upload succeeds at once (real: creates the file, then 408
    /// after the command timeout).
    #[arg(long)]
    pub fix_empty_upload: bool,
    /// Quirk off: paths containing ' work (real: 500, the remote shell quoting breaks).
    #[arg(long)]
    pub allow_single_quote: bool,
    /// Quirk off: chown with an owner but no group keeps the group (real: `owner:` also sets
    /// the owner's login group).
    #[arg(long)]
    pub fix_chown_group: bool,
    /// Local time zone of the served machine, the zone of `ls` times (IANA name, e.g.
    /// Europe/Zurich as at CSCS; default: this process's TZ).
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
}

const FAULT_HELP: &str = "\
FAULTS (--fault SPEC, also POST /_f7tfs/faults {\"faults\": [SPEC...]}):
  SPEC = ENDPOINTS:ACTION=PROB[:retry-after=SECS][:times=N]
  ENDPOINTS  * (all API and S3 calls, not the token endpoint) or a comma list of
             ops/upload, transfer/mv, compute/jobs, status/systems, s3/part, s3/complete,
             s3/object, auth/token; a trailing * matches a prefix (ops/*); a method may
             precede the name (\"PUT s3/part\")
  ACTION     5xx (random 500/502/503/504), 500..599, 429 (with Retry-After), drop (close
             the connection without an answer)
  PROB       share of matching calls hit, 0..1
  examples   --fault 'ops/upload:5xx=0.3'  --fault '*:429=0.2:retry-after=1'
             --fault 's3/part:drop=0.5'    --fault 'ops/ls:503=1:times=2'

CONTROL (no token needed):
  GET /_f7tfs/stats, POST /_f7tfs/stats/reset (or DELETE /_f7tfs/stats),
  GET|POST|DELETE /_f7tfs/faults (POST may also set latency_ms, s3_latency_ms)

Log: one line per request at info; filter with F7TFS_LOG (e.g. F7TFS_LOG=warn).";

impl ServeArgs {
    /// Converts the arguments into the server configuration.
    pub fn into_config(self) -> Result<ServeConfig, String> {
        let faults = FaultPlan::parse(&self.faults)?;
        if self.max_part_size == 0 || self.max_ops_file_size == 0 {
            return Err("--max-part-size and --max-ops-file-size must be positive".into());
        }
        let mut cfg = ServeConfig::new(self.root);
        cfg.listen = self.listen;
        cfg.system = self.system;
        cfg.client_id = self.client_id;
        cfg.client_secret = self.client_secret;
        cfg.token_lifetime = Duration::from_secs(self.token_lifetime);
        cfg.min_token_ttl = Duration::from_secs(self.min_token_ttl);
        cfg.as_user = self.as_user;
        cfg.max_ops_file_size = self.max_ops_file_size;
        cfg.max_part_size = self.max_part_size;
        cfg.job_delay = Duration::from_millis(self.job_delay_ms);
        cfg.upload_poll_interval = Duration::from_millis(self.upload_poll_ms.max(1));
        cfg.s3_url_ttl = Duration::from_secs(self.s3_url_ttl);
        cfg.command_timeout = Duration::from_secs(self.command_timeout.max(1));
        cfg.latency = Duration::from_millis(self.latency_ms);
        cfg.s3_latency = Duration::from_millis(self.s3_latency_ms);
        cfg.faults = faults;
        cfg.public_url = self.public_url;
        cfg.fix_empty_upload = self.fix_empty_upload;
        cfg.allow_single_quote = self.allow_single_quote;
        cfg.fix_chown_group = self.fix_chown_group;
        if let Some(tz) = &self.timezone {
            jiff::tz::TimeZone::get(tz).map_err(|e| {
                format!("--timezone {tz:?} is not a known time zone ({e}); use an IANA name such as Europe/Zurich")
            })?;
        }
        cfg.timezone = self.timezone;
        Ok(cfg)
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("F7TFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Another subscriber may already be set (tests, the main binary): keep it.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Runs `f7tfs serve` until Ctrl-C or SIGTERM.
pub fn run(args: ServeArgs) -> Result<(), String> {
    init_logging();
    let cfg = args.into_config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    rt.block_on(async move {
        let (id, secret, system) = (
            cfg.client_id.clone(),
            cfg.client_secret.clone(),
            cfg.system.clone(),
        );
        // Watch SIGTERM before announcing anything: a supervisor may stop us right away.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
        let handle = server::spawn(cfg).await.map_err(|e| e.to_string())?;
        println!(
            "# f7tfs serve: FirecREST v2 on {} serving {} as user {}",
            handle.url(),
            handle.root().display(),
            handle.user()
        );
        println!("export FIRECREST_URL={}", handle.url());
        println!("export FIRECREST_CLIENT_ID={id}");
        println!("export FIRECREST_CLIENT_SECRET={secret}");
        println!("export AUTH_TOKEN_URL={}", handle.token_url());
        println!("export FIRECREST_SYSTEM={system}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        handle.shutdown().await;
        Ok(())
    })
}
