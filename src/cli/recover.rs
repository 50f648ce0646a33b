//! `f7tfs recover`: lists the staged writes an earlier mount left behind (its upload failed,
//! or the daemon died with dirty files), uploads them, or discards them.
//!
//! A staged write is only sent when the remote file still is what the write started from
//! (size and mtime recorded in the manifest when the file was first changed; a file created
//! by the mount must still be absent); otherwise it is refused unless `--force`. The data is
//! removed from staging only once the remote confirmed it at the staged size.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::mount::{ConnectionArgs, MountArgs};
use crate::config::RemoteConfig;
use crate::mount::REMOTE_FILE;
use crate::remote::v2::V2Client;
use crate::remote::{RemoteError, RemoteFs, RemotePath, Stat};
use crate::staging::{in_use, list_manifests, BaseVersion, Leftover, StagingArea};

/// Remote mtimes within this of the recorded one count as unchanged (the recorded mtime of a
/// file the mount uploaded itself is the mount's clock, the remote's may be a second off).
const MTIME_SLACK_SECS: i64 = 2;

/// List, upload or discard staged writes an earlier mount could not send.
#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// System the staged files belong to (needed to upload; without it they are listed).
    pub system: Option<String>,
    /// Staging directory of the mount (default: every remote's own under ~/.cache/f7tfs/staging/,
    /// only SYSTEM's when it is given).
    #[arg(long)]
    pub staging_dir: Option<PathBuf>,
    /// Only list the staged writes.
    #[arg(long, conflicts_with_all = ["discard", "force"])]
    pub list: bool,
    /// Delete the staged writes instead of uploading them.
    #[arg(long)]
    pub discard: bool,
    /// Upload even when the remote file changed since the write began.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub conn: ConnectionArgs,
}

/// What `recover` did with one staged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Uploaded and confirmed; removed from staging.
    Uploaded,
    /// The remote already holds exactly these bytes (the write landed before the daemon
    /// died); removed from staging.
    AlreadyThere,
    /// The remote changed since the write began; kept (use `--force`).
    Conflict(String),
    /// The upload failed; kept.
    Failed(String),
}

/// The connection settings of these arguments, resolved as `f7tfs mount` resolves them
/// (environment, then the profile named like SYSTEM or given with --profile).
fn remote_config(args: &RecoverArgs, system: &str) -> Result<RemoteConfig, String> {
    let mount = MountArgs {
        source: Some(format!("{system}:/")),
        mountpoint: Some(PathBuf::from("/")),
        conn: args.conn.clone(),
        ..MountArgs::default()
    };
    Ok(mount.into_configs()?.0)
}

fn describe(l: &Leftover) -> String {
    let m = &l.manifest;
    let size = std::fs::metadata(&l.data_path).map_or(m.size, |md| md.len());
    let age = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        .saturating_sub(m.time);
    format!(
        "{} ({} bytes, {:?}, {} s ago{}) in {}",
        m.remote_path,
        size,
        m.state,
        age,
        m.cause
            .as_deref()
            .map(|c| format!(", cause: {c}"))
            .unwrap_or_default(),
        l.data_path.display()
    )
}

/// Whether the remote file (`None`: absent) is still what the staged write started from.
pub fn unchanged(base: Option<BaseVersion>, remote: Option<&Stat>) -> Result<(), String> {
    match (base, remote) {
        (None, None) => Ok(()),
        (None, Some(s)) => Err(format!(
            "it was created by the mount, but the remote now has a file there ({} bytes)",
            s.size
        )),
        (Some(b), None) => Err(format!(
            "the remote file ({} bytes when the write began) was removed since",
            b.size
        )),
        (Some(b), Some(s)) => {
            let now = BaseVersion::of(s.size, s.mtime);
            if now.size == b.size && (now.mtime - b.mtime).abs() <= MTIME_SLACK_SECS {
                Ok(())
            } else {
                Err(format!(
                    "the remote file changed since the write began (size {} → {}, mtime {} → {})",
                    b.size, now.size, b.mtime, now.mtime
                ))
            }
        }
    }
}

/// Sends one staged write to `remote` (see the module docs); removes it from staging once
/// the remote holds it.
pub async fn recover_one<R: RemoteFs>(remote: &R, l: &Leftover, force: bool) -> Outcome {
    let path = match RemotePath::new(&l.manifest.remote_path) {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let current = match remote.stat(&path).await {
        Ok(s) => Some(s),
        Err(RemoteError::NotFound(_)) => None,
        Err(e) => return Outcome::Failed(format!("cannot stat the remote file: {e}")),
    };
    if !force {
        if let Err(why) = unchanged(l.manifest.base, current.as_ref()) {
            return match current {
                Some(s) if same_content(remote, &path, &s, l).await => {
                    let _ = std::fs::remove_file(&l.manifest_path);
                    let _ = std::fs::remove_file(&l.data_path);
                    Outcome::AlreadyThere
                }
                _ => Outcome::Conflict(why),
            };
        }
    }
    let size = match std::fs::metadata(&l.data_path) {
        Ok(m) => m.len(),
        Err(e) => return Outcome::Failed(format!("cannot read the staged data: {e}")),
    };
    let sent = if size <= remote.capabilities().direct_upload_limit && size > 0 {
        match std::fs::read(&l.data_path) {
            Ok(data) => remote.upload(&path, Bytes::from(data)).await,
            Err(e) => return Outcome::Failed(format!("cannot read the staged data: {e}")),
        }
    } else if size == 0 {
        // The direct route cannot send an empty file; the archive route can.
        match path.parent() {
            Some(dir) => {
                remote
                    .put_archive(
                        &dir,
                        vec![crate::remote::ArchiveMember {
                            name: path.file_name().to_string(),
                            kind: crate::remote::ArchiveMemberKind::File(Bytes::new()),
                            perm: current.as_ref().map_or(0o644, |s| s.perm),
                            mtime: SystemTime::now(),
                        }],
                    )
                    .await
            }
            None => return Outcome::Failed("cannot write the root".into()),
        }
    } else {
        remote.upload_large(&path, &l.data_path, size, None).await
    };
    if let Err(e) = sent {
        return Outcome::Failed(e.to_string());
    }
    match remote.stat(&path).await {
        Ok(s) if s.size == size => {}
        Ok(s) => {
            return Outcome::Failed(format!(
                "the remote holds {} bytes after the upload, not {size}",
                s.size
            ))
        }
        Err(e) => return Outcome::Failed(format!("cannot confirm the upload: {e}")),
    }
    let _ = std::fs::remove_file(&l.manifest_path);
    let _ = std::fs::remove_file(&l.data_path);
    Outcome::Uploaded
}

/// Whether the remote file `stat` holds exactly the staged bytes (same size, then the
/// remote's SHA-256 against the staged copy's). `false` when it cannot tell.
async fn same_content<R: RemoteFs>(
    remote: &R,
    path: &RemotePath,
    stat: &Stat,
    l: &Leftover,
) -> bool {
    let Ok(meta) = std::fs::metadata(&l.data_path) else {
        return false;
    };
    if stat.kind != crate::remote::FileKind::File || meta.len() != stat.size {
        return false;
    }
    let local = match crate::staging::sha256_of(&l.data_path) {
        Ok(s) => s,
        Err(_) => return false,
    };
    match remote.checksum(path).await {
        Ok(sum) => sum == local,
        Err(e) => {
            tracing::debug!(%path, "cannot compare with the remote's checksum: {e}");
            false
        }
    }
}

/// The staging dirs `recover` looks at: the one given, else every remote's own directory
/// under the default base (for `SYSTEM`, only that system's) and the base itself (where
/// earlier versions and explicit settings kept staged files).
fn staging_dirs(args: &RecoverArgs) -> Vec<PathBuf> {
    if let Some(d) = &args.staging_dir {
        return vec![d.clone()];
    }
    let base = crate::config::StagingConfig::default().dir;
    let mut dirs = vec![base.clone()];
    // A remote's own dir names its remote in `.remote` (SYSTEM:/path); for SYSTEM, only
    // that system's dirs (and those that name none).
    let belongs = |dir: &Path| match (&args.system, std::fs::read_to_string(dir.join(REMOTE_FILE)))
    {
        (Some(system), Ok(remote)) => remote.split_once(':').is_some_and(|(s, _)| s == system),
        _ => true,
    };
    if let Ok(entries) = std::fs::read_dir(&base) {
        let mut subs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .filter(|d| belongs(d))
            .collect();
        subs.sort();
        dirs.extend(subs);
    }
    dirs
}

/// Runs `f7tfs recover`.
pub fn run(args: RecoverArgs) -> Result<(), String> {
    crate::logging::init();
    let dirs: Vec<PathBuf> = staging_dirs(&args)
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    let listing = args.list || args.system.is_none() && !args.discard;
    let mut found_any = false;
    let mut client = None;
    let mut kept = 0;
    for dir in &dirs {
        if listing {
            found_any |= list_dir(dir, args.list)?;
        } else {
            let (found, not_sent) = recover_dir(&args, dir, &mut client)?;
            found_any |= found;
            kept += not_sent;
        }
    }
    if !found_any {
        let where_ = match &args.staging_dir {
            Some(d) => d.display().to_string(),
            None => crate::config::StagingConfig::default()
                .dir
                .display()
                .to_string(),
        };
        println!("nothing to recover in {where_}");
    }
    if let Some((rt, _)) = client {
        rt.shutdown_timeout(Duration::from_secs(2));
    }
    if kept > 0 {
        return Err(format!(
            "{kept} staged write(s) were not uploaded and stay in the staging dir"
        ));
    }
    Ok(())
}

/// Prints the staged writes of `dir` (read only: fine next to a live mount); true when there
/// were any.
fn list_dir(dir: &Path, list_only: bool) -> Result<bool, String> {
    let found = list_manifests(dir)
        .map_err(|e| format!("cannot read the staging dir {}: {e}", dir.display()))?;
    if found.is_empty() {
        return Ok(false);
    }
    println!("{} staged write(s) in {}:", found.len(), dir.display());
    for l in &found {
        println!("  {}", describe(l));
    }
    // The mount records which remote the dir belongs to (`SYSTEM:/path`).
    let system = std::fs::read_to_string(dir.join(REMOTE_FILE))
        .ok()
        .and_then(|s| s.split(':').next().map(str::trim).map(str::to_string))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "SYSTEM".into());
    if in_use(dir) {
        println!(
            "a running mount holds this staging dir: it sends the files it wrote; those of an \
             earlier run wait until it is unmounted and `f7tfs recover {system}` uploads them"
        );
    } else if !list_only {
        println!(
            "upload them with `f7tfs recover {system}`, or delete them with \
             `f7tfs recover --discard`"
        );
    }
    Ok(true)
}

/// A runtime and a connected client, made on first need.
type Client = Option<(tokio::runtime::Runtime, V2Client)>;

/// Uploads (or discards) the staged writes of `dir`; (whether there were any, how many were
/// not sent). Takes the dir's lock: never behind a live mount.
fn recover_dir(
    args: &RecoverArgs,
    dir: &Path,
    client: &mut Client,
) -> Result<(bool, usize), String> {
    if list_manifests(dir).is_ok_and(|l| l.is_empty()) {
        return Ok((false, 0));
    }
    // Walking every remote's dir: one in use is skipped; a dir named with --staging-dir is
    // refused below with the reason.
    if args.staging_dir.is_none() && in_use(dir) {
        let staged = list_manifests(dir).map_or(0, |l| l.len());
        println!(
            "skipped {}: a running mount holds it (it sends the files it wrote; those of an \
             earlier run wait): unmount it, then run `f7tfs recover` again",
            dir.display()
        );
        return Ok((true, staged));
    }
    let area = StagingArea::new(dir).map_err(|e| e.to_string())?;
    let leftovers = area
        .leftovers()
        .map_err(|e| format!("cannot read the staging dir {}: {e}", dir.display()))?;
    if leftovers.is_empty() {
        return Ok((false, 0));
    }
    if args.discard {
        for l in &leftovers {
            let _ = std::fs::remove_file(&l.manifest_path);
            let _ = std::fs::remove_file(&l.data_path);
            println!("discarded {}", l.manifest.remote_path);
        }
        return Ok((true, 0));
    }
    let Some(system) = args.system.clone() else {
        return Err("name the SYSTEM to upload to".into());
    };
    if client.is_none() {
        let cfg = remote_config(args, &system)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let c = rt
            .block_on(V2Client::connect(&cfg))
            .map_err(|e| format!("cannot connect to {} (system {system}): {e}", cfg.url))?;
        *client = Some((rt, c));
    }
    let Some((rt, client)) = client.as_ref() else {
        return Err("no client".into());
    };
    let mut kept = 0;
    for l in &leftovers {
        let outcome = rt.block_on(recover_one(client, l, args.force));
        match &outcome {
            Outcome::Uploaded => println!("uploaded {}", l.manifest.remote_path),
            Outcome::AlreadyThere => println!(
                "{} already holds these bytes on the remote; staged copy removed",
                l.manifest.remote_path
            ),
            Outcome::Conflict(why) => {
                kept += 1;
                println!(
                    "refused {}: {why}; kept in {} (--force uploads it anyway)",
                    l.manifest.remote_path,
                    l.data_path.display()
                )
            }
            Outcome::Failed(why) => {
                kept += 1;
                println!(
                    "failed {}: {why}; kept in {}",
                    l.manifest.remote_path,
                    l.data_path.display()
                )
            }
        }
    }
    Ok((true, kept))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::memory::MemoryRemote;
    use crate::staging::{Manifest, StagedState};

    fn leftover(dir: &Path, remote_path: &str, data: &[u8]) -> Leftover {
        let data_path = dir.join("x.data");
        let manifest_path = dir.join("x.json");
        std::fs::write(&data_path, data).unwrap();
        std::fs::write(&manifest_path, b"{}").unwrap();
        Leftover {
            manifest: Manifest {
                remote_path: remote_path.into(),
                size: data.len() as u64,
                sha256: String::new(),
                time: 0,
                state: StagedState::Uploading,
                cause: None,
                data_file: "x.data".into(),
                base: None,
            },
            data_path,
            manifest_path,
        }
    }

    /// The daemon died after its upload landed (the manifest still says uploading): the
    /// remote "changed", but to exactly these bytes, so nothing is refused or sent.
    #[tokio::test]
    async fn a_staged_copy_the_remote_already_holds_is_released_not_refused() {
        let remote = MemoryRemote::new(1, 1);
        remote.mkdir_all("/home/u");
        remote.put_file("/home/u/big", b"the same bytes", SystemTime::now());
        let dir = tempfile::tempdir().unwrap();
        let l = leftover(dir.path(), "/home/u/big", b"the same bytes");
        let outcome = recover_one(&remote, &l, false).await;
        assert!(matches!(outcome, Outcome::AlreadyThere), "{outcome:?}");
        assert!(!l.data_path.exists() && !l.manifest_path.exists());
        assert_eq!(remote.calls("upload"), 0);

        // Same size, other bytes: still a conflict, kept.
        let l = leftover(dir.path(), "/home/u/big", b"other  content");
        let outcome = recover_one(&remote, &l, false).await;
        assert!(matches!(outcome, Outcome::Conflict(_)), "{outcome:?}");
        assert!(l.data_path.exists());
    }
}
