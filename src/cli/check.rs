//! `f7tfs check SYSTEM:/path`: can this be mounted? Connects exactly as `f7tfs mount` does
//! (same flags, environment and profiles), then prints the API version, the token's user, the
//! server's limits, whether the path exists, is readable and writable (from its mode bits; with
//! `--write` by creating and removing a small probe file), and the latency of one call.
//! Exit codes: 0 usable, 1 not reachable or not usable, 2 configuration or credentials wrong.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::mount::{ConnectionArgs, MountArgs};
use crate::config::RemoteConfig;
use crate::remote::v2::V2Client;
use crate::remote::{FileKind, RemoteError, RemoteFs, RemotePath, Stat};

/// Exit code: everything checked is fine.
pub const EXIT_OK: i32 = 0;
/// Exit code: the server or the path cannot be reached or used.
pub const EXIT_UNUSABLE: i32 = 1;
/// Exit code: the configuration or the credentials are wrong.
pub const EXIT_CONFIG: i32 = 2;

const CHECK_HELP: &str = "\
EXIT STATUS:
  0  the server answered, the credentials work and the path is usable
     (with --write: a probe file was created and removed)
  1  not reachable or not usable: server down or unreachable, path missing, not
     accessible, not writable (--write), rate limited
  2  bad configuration or credentials: missing setting, unknown profile, wrong URL,
     token refused (401/403), unknown system, FirecREST v1 server

Connection settings come from the flags, the environment (FIRECREST_URL, ...) and the
profile, exactly as for `f7tfs mount` (see f7tfs mount --help).";

/// Check that SYSTEM:/path can be mounted: credentials, reachability, API version, limits,
/// access to the path and the latency of one call.
#[derive(Debug, clap::Args)]
#[command(after_help = CHECK_HELP)]
pub struct CheckArgs {
    /// What to check: SYSTEM:/absolute/remote/path (default: the profile's `remote`).
    pub source: Option<String>,
    /// Also test writing: create a small hidden file in the directory and remove it again.
    #[arg(long)]
    pub write: bool,
    #[command(flatten)]
    pub conn: ConnectionArgs,
    /// Mount options as for f7tfs mount (e.g. profile=NAME, remote_timezone=TZ).
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
}

impl CheckArgs {
    fn into_mount_args(self) -> MountArgs {
        MountArgs {
            source: self.source,
            conn: self.conn,
            options: self.options,
            // One call's latency is the point: no client-side rate limit in the way.
            rate_limit: Some(0),
            ..MountArgs::default()
        }
    }
}

/// A failed check: exit code and one line.
struct Failure(i32, String);

/// Runs `f7tfs check`; returns the exit code (the failure is one line on stderr).
pub fn run(args: CheckArgs) -> i32 {
    crate::logging::init_filtered(None, "warn");
    match check(args) {
        Ok(()) => EXIT_OK,
        Err(Failure(code, line)) => {
            eprintln!("f7tfs check: {line}");
            code
        }
    }
}

fn check(args: CheckArgs) -> Result<(), Failure> {
    let write = args.write;
    let (cfg, root) = args
        .into_mount_args()
        .into_remote()
        .map_err(|e| Failure(EXIT_CONFIG, e))?;
    let path = RemotePath::new(&root).map_err(|e| Failure(EXIT_CONFIG, e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(EXIT_UNUSABLE, format!("cannot start the runtime: {e}")))?;
    rt.block_on(check_remote(&cfg, &path, write))
}

async fn check_remote(cfg: &RemoteConfig, path: &RemotePath, write: bool) -> Result<(), Failure> {
    let client = V2Client::connect(cfg).await.map_err(|e| {
        let code = match e {
            RemoteError::Unauthorized(_)
            | RemoteError::InvalidArgument(_)
            | RemoteError::Unsupported(_)
            | RemoteError::NotFound(_)
            | RemoteError::PermissionDenied(_) => EXIT_CONFIG,
            _ => EXIT_UNUSABLE,
        };
        Failure(code, crate::mount::connect_error(cfg, e))
    })?;
    let caps = client.capabilities().clone();
    let user = client.user().clone();
    println!(
        "server       {} (FirecREST {}{})",
        client.url(),
        caps.api_version,
        client
            .app_version()
            .map(|v| format!(", F7T-AppVersion {v}"))
            .unwrap_or_default()
    );
    println!("system       {}", client.system());
    println!(
        "user         {} (uid {}, group {} gid {})",
        user.user.name, user.user.id, user.group.name, user.group.id
    );
    println!(
        "limits       direct transfers up to {} (downloads {}); larger files are staged in \
         parts of {}",
        human(caps.direct_upload_limit),
        human(caps.direct_download_limit),
        human(caps.max_part_size)
    );
    let fss: Vec<String> = caps.filesystems.iter().map(|f| f.to_string()).collect();
    println!("filesystems  {}", fss.join(", "));

    let started = Instant::now();
    let fresh = client
        .userinfo()
        .await
        .map_err(|e| Failure(EXIT_UNUSABLE, format!("the server stopped answering: {e}")))?;
    let latency = started.elapsed();
    println!("latency      {} (one userinfo call)", millis(latency));

    let stat = client
        .check_path(path)
        .await
        .map_err(|e| Failure(EXIT_UNUSABLE, crate::mount::path_error(cfg, path, e)))?;
    let kind = match stat.kind {
        FileKind::Dir => "directory",
        FileKind::File => "file",
        FileKind::Symlink => "symlink",
        FileKind::Other => "special file",
    };
    println!(
        "path         {path}: {kind}, mode {:04o}, owner uid {} gid {}",
        stat.perm, stat.uid, stat.gid
    );
    let ids = Ids::of(&fresh);
    let readable = ids.may(&stat, 4);
    let writable = ids.may(&stat, 2);
    println!(
        "readable     {} (mode bits)",
        if readable { "yes" } else { "no" }
    );
    if write && stat.kind == FileKind::Dir {
        probe_write(&client, path).await.map_err(|e| {
            println!("writable     no (probe failed)");
            Failure(
                EXIT_UNUSABLE,
                format!("{}:{path} is not writable: {e}", cfg.system),
            )
        })?;
        println!("writable     yes (created and removed a probe file)");
    } else {
        println!(
            "writable     {} (mode bits{})",
            if writable { "yes" } else { "no" },
            if stat.kind == FileKind::Dir {
                "; --write tests it with a probe file"
            } else {
                ""
            }
        );
    }
    if !readable {
        return Err(Failure(
            EXIT_UNUSABLE,
            format!(
                "{}:{path} is not readable by {} (mode {:04o})",
                cfg.system, user.user.name, stat.perm
            ),
        ));
    }
    if stat.kind != FileKind::Dir {
        // `f7tfs mount` would refuse it: say so here, with the path that works.
        let parent = path
            .parent()
            .map_or_else(|| "/".to_string(), |p| p.to_string());
        return Err(Failure(
            EXIT_UNUSABLE,
            format!(
                "{}:{path} is a {kind}, and f7tfs mounts directories; use its directory: {}:{parent}",
                cfg.system, cfg.system
            ),
        ));
    }
    println!("ok: {}:{path} can be mounted", cfg.system);
    Ok(())
}

/// Creates a small hidden file in `dir`, checks it arrived, removes it (also on failure).
async fn probe_write(client: &V2Client, dir: &RemotePath) -> Result<(), RemoteError> {
    let name = format!(".f7tfs-check-{}", uuid::Uuid::new_v4().simple());
    let probe = dir.join(&name)?;
    let data = Bytes::from_static(b"f7tfs check write probe\n");
    let result = async {
        client.upload(&probe, data.clone()).await?;
        let st = client.stat(&probe).await?;
        if st.size != data.len() as u64 {
            return Err(RemoteError::Protocol(format!(
                "the probe file has {} bytes, expected {}",
                st.size,
                data.len()
            )));
        }
        Ok(())
    }
    .await;
    let removed = client.remove(&probe).await;
    match (result, removed) {
        (Err(e), _) => {
            // It may exist half-written: one more try to leave nothing behind.
            let _ = client.remove(&probe).await;
            Err(e)
        }
        (Ok(()), Err(e)) => Err(RemoteError::Protocol(format!(
            "the probe file {probe} was written but could not be removed ({e}); remove it by hand"
        ))),
        (Ok(()), Ok(())) => Ok(()),
    }
}

/// The token user's ids, for a mode-bit access check.
struct Ids {
    uid: Option<u32>,
    gids: Vec<u32>,
}

impl Ids {
    fn of(info: &crate::remote::v2::wire::UserInfo) -> Self {
        let mut gids: Vec<u32> = info
            .groups
            .iter()
            .filter_map(|g| g.id.parse().ok())
            .collect();
        gids.extend(info.group.id.parse::<u32>().ok());
        Ids {
            uid: info.user.id.parse().ok(),
            gids,
        }
    }

    /// Whether `bit` (4 read, 2 write) is granted by `stat`'s mode to this user.
    fn may(&self, stat: &Stat, bit: u32) -> bool {
        if self.uid == Some(0) {
            return true;
        }
        let shift = if self.uid == Some(stat.uid) {
            6
        } else if self.gids.contains(&stat.gid) {
            3
        } else {
            0
        };
        stat.perm >> shift & bit != 0
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::v2::wire::{IdName, UserInfo};

    fn stat(perm: u32, uid: u32, gid: u32) -> Stat {
        Stat {
            kind: FileKind::Dir,
            perm,
            uid,
            gid,
            size: 0,
            mtime: std::time::UNIX_EPOCH,
            atime: None,
            ctime: None,
            ino: None,
            nlink: None,
        }
    }

    fn ids(uid: &str, gid: &str, groups: &[&str]) -> Ids {
        let id = |i: &str| IdName {
            id: i.into(),
            name: "n".into(),
        };
        Ids::of(&UserInfo {
            user: id(uid),
            group: id(gid),
            groups: groups.iter().map(|g| id(g)).collect(),
            accounts: None,
        })
    }

    #[test]
    fn mode_bits_decide_by_owner_then_group_then_others() {
        let me = ids("1000", "100", &["200"]);
        assert!(me.may(&stat(0o700, 1000, 5), 2));
        assert!(
            !me.may(&stat(0o577, 1000, 5), 2),
            "owner bits rule for the owner"
        );
        assert!(me.may(&stat(0o070, 1, 200), 2), "supplementary group");
        assert!(!me.may(&stat(0o755, 1, 100), 2));
        assert!(me.may(&stat(0o755, 1, 100), 4));
        assert!(me.may(&stat(0o002, 1, 1), 2));
        assert!(ids("0", "0", &[]).may(&stat(0o000, 1, 1), 2), "root");
    }

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(millis(Duration::from_micros(1500)), "1.5 ms");
    }
}
