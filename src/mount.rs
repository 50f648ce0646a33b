//! Wiring of `f7tfs mount`: connect the remote client (one-line errors naming cause and fix),
//! check the remote path, build the core and the FUSE session, serve until Ctrl-C, SIGTERM or
//! an external `fusermount3 -u`, then unmount cleanly: running ops drained, dirty files
//! uploaded (bounded wait), files whose upload failed left in staging and reported.
//!
//! The flavour is chosen here, once (`run_with` is generic over `RemoteFs`).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fuser::MountOption;
use tokio::runtime::Runtime;

use crate::cache::SystemClock;
use crate::config::{MountConfig, RemoteConfig};
use crate::fs::{Filesystem, IdMap};
use crate::fuse::{FuseAdapter, DRAIN_TIMEOUT};
use crate::remote::v2::V2Client;
use crate::remote::{FileKind, RemoteError, RemoteFs, RemotePath};

/// File in a staging dir naming its remote (`SYSTEM:/remote/root`).
pub const REMOTE_FILE: &str = ".remote";

/// Connects, mounts and serves until unmounted. Errors are one line naming cause and fix.
pub fn run(remote_cfg: RemoteConfig, mount_cfg: MountConfig) -> Result<(), String> {
    let rt = runtime()?;
    let (client, ids, fsname) = connect(&rt, &remote_cfg, &mount_cfg)?;
    let calls = call_counter(&client);
    serve_mount(rt, client, &mount_cfg, ids, fsname, || {}, calls)
}

/// (requests sent, retries) of the remote client, for `f7tfs status`.
pub type CallCounter = Arc<dyn Fn() -> (u64, u64) + Send + Sync>;

/// The request counters of a v2 client, for `serve_mount`.
pub fn call_counter(client: &V2Client) -> CallCounter {
    let client = client.clone();
    Arc::new(move || {
        let s = client.http_stats();
        (
            s.attempts.load(std::sync::atomic::Ordering::Relaxed),
            s.retries.load(std::sync::atomic::Ordering::Relaxed),
        )
    })
}

/// The multi-threaded runtime a mount runs on.
pub fn runtime() -> Result<Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("f7tfs-worker")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Checks the mount point, connects the client and checks the remote root (a directory);
/// returns the client, the id mapping and the mount's `fsname`.
pub fn connect(
    rt: &Runtime,
    remote_cfg: &RemoteConfig,
    mount_cfg: &MountConfig,
) -> Result<(V2Client, IdMap, String), String> {
    check_mountpoint(&mount_cfg.mountpoint)?;
    let root = RemotePath::new(&mount_cfg.remote_root).map_err(|e| e.to_string())?;
    let client = rt
        .block_on(V2Client::connect(remote_cfg))
        .map_err(|e| connect_error(remote_cfg, e))?;
    let stat = rt
        .block_on(client.check_path(&root))
        .map_err(|e| path_error(remote_cfg, &root, e))?;
    if stat.kind != FileKind::Dir {
        return Err(format!(
            "{}:{root} is not a directory; mount a directory",
            remote_cfg.system
        ));
    }
    let user = client.user().clone();
    let ids =
        IdMap {
            remote_uid: user
                .user
                .id
                .parse()
                .map_err(|_| format!("the server reported a non-numeric uid {:?}", user.user.id))?,
            remote_gid: user.group.id.parse().map_err(|_| {
                format!("the server reported a non-numeric gid {:?}", user.group.id)
            })?,
            // SAFETY: getuid/getgid have no preconditions and cannot fail.
            local_uid: unsafe { libc::getuid() },
            local_gid: unsafe { libc::getgid() },
        };
    tracing::info!(
        system = %remote_cfg.system,
        root = %root,
        remote_user = %user.user.name,
        tz = ?client.timezone(),
        "connected"
    );
    Ok((client, ids, format!("{}:{}", remote_cfg.system, root)))
}

/// Sends `state` (e.g. `READY=1`) to the service manager when `$NOTIFY_SOCKET` is set
/// (systemd `Type=notify`); a path, or an abstract name starting with `@`. Returns whether a
/// datagram was sent. Failures are logged, never fatal.
pub fn sd_notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()) else {
        return false;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let sock = UnixDatagram::unbound()?;
        let bytes = socket.as_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            sock.send_to_addr(state.as_bytes(), &SocketAddr::from_abstract_name(name)?)?;
        } else {
            sock.send_to(state.as_bytes(), Path::new(&socket))?;
        }
        Ok(())
    })();
    match sent {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!("cannot notify the service manager ({state:?}): {e}");
            false
        }
    }
}

/// The mount point exists, is a directory and is not mounted yet (one-line error otherwise).
pub fn check_mountpoint(mp: &Path) -> Result<(), String> {
    let mut meta = std::fs::metadata(mp);
    if meta
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::NotConnected)
    {
        // A FUSE mount whose daemon died (the kernel still holds it): nothing can be served
        // through it any more, so it is cleared (a crashed mount restarted by systemd).
        tracing::warn!(mountpoint = %mp.display(), "clearing a stale mount left by a dead daemon");
        unmount(mp);
        meta = std::fs::metadata(mp);
    }
    let meta = meta.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotConnected {
            return format!(
                "{} is a stale mount (its f7tfs is gone); clear it with fusermount3 -uz {}",
                mp.display(),
                mp.display()
            );
        }
        format!(
            "mount point {} is not usable ({e}); create it with mkdir -p",
            mp.display()
        )
    })?;
    if !meta.is_dir() {
        return Err(format!("mount point {} is not a directory", mp.display()));
    }
    if is_mounted(mp) {
        return Err(format!(
            "{} is already a mount point; unmount it first (fusermount3 -u {})",
            mp.display(),
            mp.display()
        ));
    }
    if std::fs::read_dir(mp).is_ok_and(|mut d| d.next().is_some()) {
        tracing::warn!(
            "mount point {} is not empty: its own files are hidden while f7tfs is mounted there",
            mp.display()
        );
    }
    Ok(())
}

pub fn connect_error(cfg: &RemoteConfig, e: RemoteError) -> String {
    match e {
        // The client's own texts already name the fix (which variable to check).
        RemoteError::Unauthorized(m) => format!("authentication failed: {m}"),
        RemoteError::Unavailable(m) if m.contains("token endpoint") => {
            format!("authentication failed: {m}")
        }
        RemoteError::InvalidArgument(m) | RemoteError::Unsupported(m) => m,
        RemoteError::Unavailable(m) | RemoteError::Timeout(m) if m.contains("FIRECREST_URL") => {
            format!("cannot reach FirecREST at {}: {m}", cfg.url)
        }
        RemoteError::Unavailable(m) | RemoteError::Timeout(m) => format!(
            "cannot reach FirecREST at {}: {m} (check FIRECREST_URL and the network)",
            cfg.url
        ),
        other => format!(
            "cannot connect to {} (system {}): {other}",
            cfg.url, cfg.system
        ),
    }
}

pub fn path_error(cfg: &RemoteConfig, root: &RemotePath, e: RemoteError) -> String {
    match e {
        RemoteError::NotFound(_) => format!(
            "{}:{root} does not exist (check the path after {}:)",
            cfg.system, cfg.system
        ),
        RemoteError::PermissionDenied(_) => format!(
            "{}:{root} is not accessible to the token's user (permission denied)",
            cfg.system
        ),
        // Already names the path and the fix (outside the system's filesystems).
        RemoteError::InvalidArgument(m) => m,
        other => format!("{}:{root}: {other}", cfg.system),
    }
}

/// Whether `mp` is a mount point right now (from /proc/self/mountinfo).
pub fn is_mounted(mp: &Path) -> bool {
    let Ok(canon) = std::fs::canonicalize(mp) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = canon.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|m| m == want))
}

/// Unmounts `mp`: `fusermount3 -u`, then lazily if busy (saying so: the daemon then serves
/// until the last process using the mount leaves it).
pub fn unmount(mp: &Path) -> bool {
    let run = |args: &[&str]| {
        Command::new("fusermount3")
            .args(args)
            .arg(mp)
            .output()
            .map_err(|e| format!("cannot run fusermount3: {e}"))
            .and_then(|o| match o.status.success() {
                true => Ok(()),
                false => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            })
    };
    let Err(why) = run(&["-u"]) else {
        return true;
    };
    match run(&["-u", "-z"]) {
        Ok(()) => {
            tracing::warn!(
                "{} is busy ({why}): detached it; f7tfs exits once the last process using it \
                 (a shell or file open there) leaves; Ctrl-C again exits now, leaving unsent \
                 data staged",
                mp.display()
            );
            true
        }
        Err(lazy) => {
            tracing::warn!("cannot unmount {}: {why}; {lazy}", mp.display());
            false
        }
    }
}

/// Mounts `client` at `mount_cfg.mountpoint` and serves until unmounted, calling `on_live` once
/// the mount is live (after `READY=1` went to systemd) and publishing `calls` (and the core's
/// state) for `f7tfs status`.
pub fn serve_mount<R: RemoteFs>(
    rt: Runtime,
    client: R,
    mount_cfg: &MountConfig,
    ids: IdMap,
    fsname: String,
    on_live: impl FnOnce(),
    calls: CallCounter,
) -> Result<(), String> {
    let fs = Arc::new(
        Filesystem::new(client, mount_cfg, ids, Arc::new(SystemClock))
            .map_err(|e| format!("cannot prepare the staging area or cache: {e}"))?,
    );
    // Which remote this staging dir belongs to, for `f7tfs recover SYSTEM`.
    if let Err(e) = std::fs::write(fs.staging_dir().join(REMOTE_FILE), &fsname) {
        tracing::warn!("cannot record the remote in the staging dir: {e}");
    }
    if !fs.leftovers().is_empty() {
        let dir = fs.staging_dir().display();
        let system = fsname.split(':').next().unwrap_or("SYSTEM");
        eprintln!(
            "f7tfs: {} staged write(s) of an earlier run never reached the remote; they are kept \
             in {dir} (after unmounting, `f7tfs recover --staging-dir {dir}` lists them and \
             `f7tfs recover --staging-dir {dir} {system}` uploads them)",
            fs.leftovers().len(),
        );
    }
    let adapter = FuseAdapter::new(fs.clone(), rt.handle().clone(), mount_cfg.max_in_flight_ops);
    let permits = adapter.permits();
    // Signals are watched before the mount exists: a SIGTERM right after READY=1 must
    // unmount cleanly, not kill the process with the default action.
    let (mut term, mut int) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _enter = rt.enter();
        let watch = |kind, name| signal(kind).map_err(|e| format!("cannot watch {name}: {e}"));
        (
            watch(SignalKind::terminate(), "SIGTERM")?,
            watch(SignalKind::interrupt(), "SIGINT")?,
        )
    };
    let fsname_status = fsname.clone();
    let mut options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype("f7tfs".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if mount_cfg.allow_other {
        options.push(MountOption::AllowOther);
    }
    options.push(if mount_cfg.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mp = mount_cfg.mountpoint.clone();
    let notifier_slot = adapter.notifier_slot();
    let mut session = fuser::Session::new(adapter, &mp, &options)
        .map_err(|e| format!("cannot mount at {}: {e}", mp.display()))?;
    let _ = notifier_slot.set(session.notifier());
    let unmounter = Arc::new(parking_lot::Mutex::new(session.unmount_callable()));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("f7tfs-fuse".into())
        .spawn(move || {
            let result = session.run();
            drop(session);
            let _ = done_tx.send(result);
        })
        .map_err(|e| format!("cannot start the FUSE thread: {e}"))?;
    tracing::info!(mountpoint = %mp.display(), "mounted");
    let publisher = {
        let info = crate::status::MountInfo {
            mountpoint: std::fs::canonicalize(&mp)
                .unwrap_or_else(|_| mp.clone())
                .display()
                .to_string(),
            remote: fsname_status.clone(),
            started: std::time::SystemTime::now(),
        };
        let fs = fs.clone();
        crate::status::Publisher::start(rt.handle(), move || {
            let mut s = info.state();
            (s.calls, s.retries) = calls();
            (s.attr_hits, s.attr_misses) = fs.attr_hit_counts();
            s.content = fs.content_stats();
            s.transfers = fs.transfers().rows();
            s.staged = fs.staged_rows();
            s
        })
    };
    // `Session::new` returned: the kernel mount exists (requests queue until the loop runs).
    sd_notify(&format!(
        "READY=1\nSTATUS=mounted {fsname_status} at {}",
        mp.display()
    ));
    on_live();
    // Stopped between ticks, never inside one: a batch cut between its upload and its
    // cleanup would leave its archive in the user's directory.
    let (stop_ticker, mut ticker_stopped) = tokio::sync::oneshot::channel::<()>();
    let ticker = {
        let fs = fs.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut ticker_stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                fs.writeback_tick().await;
            }
        })
    };

    let max_ops = mount_cfg.max_in_flight_ops.max(1) as u32;
    let wait = mount_cfg.staging.unmount_wait;
    let result: Result<(), String> = rt.block_on(async {
        let mut done_rx = done_rx;
        let ended = tokio::select! {
            _ = int.recv() => None,
            _ = term.recv() => None,
            r = &mut done_rx => Some(r),
        };
        sd_notify("STOPPING=1");
        let session_result = match ended {
            Some(r) => r,
            None => {
                tracing::info!("signal received: unmounting (a second signal leaves unsent data staged)");
                tokio::spawn(async {
                    let second = async {
                        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                            Ok(mut t) => {
                                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} }
                            }
                            Err(_) => {
                                let _ = tokio::signal::ctrl_c().await;
                            }
                        }
                    };
                    second.await;
                    eprintln!("f7tfs: second signal: exiting now; unsent data stays staged");
                    std::process::exit(1);
                });
                let mp2 = mp.clone();
                let unmounter = unmounter.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    // fuser's own unmount first (it then knows not to unmount again), then
                    // fusermount3, lazily if the mount is busy.
                    let _ = unmounter.lock().unmount();
                    if is_mounted(&mp2) {
                        unmount(&mp2);
                    }
                })
                .await;
                match tokio::time::timeout(wait, done_rx).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!("the FUSE session did not end within {wait:?}");
                        Ok(Ok(()))
                    }
                }
            }
        };
        if let Ok(Err(e)) = session_result {
            tracing::error!("FUSE session failed: {e}");
        }
        // Ops still running (e.g. a release uploading) finish first.
        if tokio::time::timeout(DRAIN_TIMEOUT, permits.acquire_many(max_ops))
            .await
            .is_err()
        {
            tracing::warn!("some operations were still running after {DRAIN_TIMEOUT:?}");
        }
        let _ = stop_ticker.send(());
        let ticker_abort = ticker.abort_handle();
        if tokio::time::timeout(wait, ticker).await.is_err() {
            tracing::warn!("the write-back tick still running after {wait:?} is cancelled: its uploads are sent again below; removals it held may stay on the remote");
            ticker_abort.abort();
        }
        let unsent = fs.shutdown(wait).await;
        for u in &unsent {
            tracing::error!(
                remote = %u.remote,
                staged = %u.staged.display(),
                "not uploaded: {}",
                u.cause
            );
            eprintln!(
                "f7tfs: {} was not uploaded ({}); the data is kept in {}",
                u.remote,
                u.cause,
                u.staged.display()
            );
        }
        Ok(())
    });
    drop(publisher);
    if thread.is_finished() {
        let _ = thread.join();
    }
    if is_mounted(&mount_cfg.mountpoint) {
        unmount(&mount_cfg.mountpoint);
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("unmounted");
    result
}
