//! `MountedFs`: the real `f7tfs mount -f` binary mounted over a `TestServer`, unmounted in
//! Drop (`fusermount3 -u`, falling back to `-uz`, then the daemon is killed if it lingers).
//! A watchdog thread kills the daemon and lazily unmounts if a test hangs past its deadline
//! (`F7TFS_TEST_DEADLINE` seconds, default 180), printing the threads blocked in FUSE
//! requests (syscall number and kernel wait channel) and the tail of the daemon's log, so
//! the hanging op can be seen from both sides.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use f7tfs::server::ServeConfig;

use super::server::TestServer;

/// A live mount of a fresh `TestServer` root.
pub struct MountedFs {
    child: Option<Child>,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    mnt: tempfile::TempDir,
    work: tempfile::TempDir,
    log: PathBuf,
    /// Extra `f7tfs mount` arguments (for `remount`).
    args: Vec<String>,
    // Dropped last: the server outlives the mount.
    server: TestServer,
}

/// Whether `mp` is a mount point now (from /proc/self/mountinfo).
pub fn is_mounted(mp: &Path) -> bool {
    f7tfs::mount::is_mounted(mp)
}

fn fusermount(args: &[&str], mp: &Path) -> bool {
    Command::new("fusermount3")
        .args(args)
        .arg(mp)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// This test's threads blocked in a FUSE request (kernel wait channel
/// `request_wait_answer`) and processes with their cwd or an open file under `mp`, with the
/// syscall they are in: the hung operation, seen from the caller's side.
fn blocked_on(mp: &Path, daemon: i32) -> String {
    let mut out = String::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == daemon {
            continue;
        }
        let dir = p.path();
        let under = |l: &Path| std::fs::read_link(l).is_ok_and(|t| t.starts_with(mp));
        let uses = under(&dir.join("cwd"))
            || std::fs::read_dir(dir.join("fd"))
                .map(|fds| fds.flatten().any(|fd| under(&fd.path())))
                .unwrap_or(false);
        let cmd = std::fs::read_to_string(dir.join("cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        let Ok(tasks) = std::fs::read_dir(dir.join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            let wchan = read("wchan");
            let ours = pid == std::process::id() as i32;
            if !(uses || ours && wchan == "request_wait_answer") {
                continue;
            }
            out.push_str(&format!(
                "  pid {pid} tid {} wchan={wchan} syscall={} cmd={}\n",
                t.file_name().to_string_lossy(),
                read("syscall").split_whitespace().next().unwrap_or("?"),
                cmd.trim()
            ));
        }
    }
    if out.is_empty() {
        out.push_str("  (no blocked thread found)\n");
    }
    out
}

impl MountedFs {
    /// Mounts a fresh server root with default options.
    pub fn start() -> Self {
        Self::start_with(&[], |_| {})
    }

    /// Mounts with extra `f7tfs mount` arguments and a server configuration tweak.
    pub fn start_with(args: &[&str], server_cfg: impl FnOnce(&mut ServeConfig)) -> Self {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: mounted tests need FUSE (modprobe fuse, or run in a container \
             with --device /dev/fuse)"
        );
        let server = TestServer::with(server_cfg);
        let mnt = tempfile::Builder::new()
            .prefix("f7tfs-mnt-")
            .tempdir()
            .expect("mount point");
        let work = tempfile::Builder::new()
            .prefix("f7tfs-work-")
            .tempdir()
            .expect("work dir");
        let log = work.path().join("daemon.log");
        // A local test server needs no client-side rate limit unless a test sets one.
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        if !args.iter().any(|a| a.starts_with("--rate-limit")) {
            args.extend(["--rate-limit".to_string(), "0".to_string()]);
        }
        // Tests check the remote right after close(): strict close-to-open unless a test
        // asks for delayed write-back (the product default) itself.
        if !args.iter().any(|a| a.starts_with("--writeback-delay")) {
            args.extend(["--writeback-delay".to_string(), "0".to_string()]);
        }
        let mut me = MountedFs {
            child: None,
            watchdog: None,
            mnt,
            work,
            log,
            args,
            server,
        };
        me.spawn_daemon();
        me.wait_live();
        me.start_watchdog();
        me
    }

    fn spawn_daemon(&mut self) {
        let server = &self.server;
        let work = self.work.path();
        let source = format!("{}:{}", server.system(), server.root().display());
        // Appends: a remount keeps the earlier run's log above its own.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_f7tfs"))
            .arg("mount")
            .arg("-f")
            .arg(&source)
            .arg(self.mnt.path())
            .arg("--staging-dir")
            .arg(work.join("staging"))
            .arg("--cache-dir")
            .arg(work.join("cache"))
            .args(&self.args)
            .env("FIRECREST_URL", server.url())
            .env("FIRECREST_CLIENT_ID", "f7tfs")
            .env("FIRECREST_CLIENT_SECRET", "f7tfs")
            .env("AUTH_TOKEN_URL", server.token_url())
            .env_remove("FIRECREST_TOKEN_COMMAND")
            .env(
                "F7TFS_LOG",
                std::env::var("F7TFS_LOG").unwrap_or_else(|_| "info,f7tfs=debug".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(work.join("daemon.out")).expect("stdout file"))
            .stderr(log)
            .spawn()
            .expect("start f7tfs mount");
        self.child = Some(child);
    }

    /// SIGKILLs the daemon (dirty files stay staged) and lazily unmounts the dead mount.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        fusermount(&["-u", "-z"], self.mnt.path());
        if let Some((tx, handle)) = self.watchdog.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = self.child.as_ref() {
            // SAFETY: plain kill(2) of our own child process.
            unsafe {
                libc::kill(c.id() as i32, sig);
            }
        }
    }

    /// Waits up to `limit` for the daemon to exit; its status, or None if it still runs.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(Ok(Some(s))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Starts the daemon again (same server, mount point, staging dir and arguments).
    pub fn remount(&mut self) {
        assert!(self.child.is_none(), "remount while the daemon runs");
        self.spawn_daemon();
        self.wait_live();
        self.start_watchdog();
    }

    fn wait_live(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if is_mounted(self.mnt.path()) {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "f7tfs mount exited ({status}) before the mount was live:\n{}",
                        tail(&self.log, 30)
                    );
                }
            }
            if Instant::now() > deadline {
                panic!("mount not live after 30 s:\n{}", tail(&self.log, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_watchdog(&mut self) {
        let secs: u64 = std::env::var("F7TFS_TEST_DEADLINE")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180);
        let pid = self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0);
        let mp = self.mnt.path().to_path_buf();
        let log = self.log.clone();
        let (tx, rx) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                eprintln!(
                    "watchdog: test still running after {secs} s; killing the f7tfs daemon \
                     (pid {pid}) and unmounting {}.\nBlocked on the mount (wchan \
                     request_wait_answer = a FUSE request without answer):\n{}\nDaemon log \
                     tail (last op spans show what hung):\n{}",
                    mp.display(),
                    blocked_on(&mp, pid),
                    tail(&log, 40)
                );
                // SAFETY: plain kill(2) of our own child process.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
                fusermount(&["-u", "-z"], &mp);
            }
        });
        self.watchdog = Some((tx, handle));
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.mnt.path()
    }

    /// `path()/rel`.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.path().join(rel)
    }

    /// The local directory backing the server (the remote side, to change behind the mount).
    pub fn remote_root(&self) -> &Path {
        self.server.root()
    }

    /// `remote_root()/rel`.
    pub fn remote(&self, rel: &str) -> PathBuf {
        self.server.root().join(rel)
    }

    /// The server (stats, faults).
    pub fn server(&self) -> &TestServer {
        &self.server
    }

    /// The server, to stop and restart it behind the mount.
    pub fn server_mut(&mut self) -> &mut TestServer {
        &mut self.server
    }

    /// The daemon's pid (None once it exited or was reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The daemon's work directory (staging, cache, log).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Runs `sh -c script` inside the mount; panics with its output on failure; returns
    /// stdout.
    pub fn sh(&self, script: &str) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(self.path())
            .output()
            .expect("run sh");
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}{}\ndaemon log tail:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&self.log, 15)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The staging directory of the mount.
    pub fn staging_dir(&self) -> PathBuf {
        self.work.path().join("staging")
    }

    /// Unmounts and waits for the daemon; returns its exit status (None if it had to be
    /// killed).
    pub fn unmount(&mut self) -> Option<std::process::ExitStatus> {
        let mp = self.mnt.path().to_path_buf();
        if is_mounted(&mp) && !fusermount(&["-u"], &mp) {
            // Busy (a test left a file open): lazy, so Drop never leaves a mount behind.
            fusermount(&["-u", "-z"], &mp);
        }
        let mut status = None;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(s)) => {
                        status = Some(s);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        eprintln!(
                            "f7tfs daemon did not exit after unmount; killing it. Log tail:\n{}",
                            tail(&self.log, 20)
                        );
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        if is_mounted(&mp) {
            fusermount(&["-u", "-z"], &mp);
        }
        if let Some((tx, handle)) = self.watchdog.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
        status
    }
}

impl Drop for MountedFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
