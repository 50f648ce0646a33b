//! Child processes and mounts of the benchmark, each a guard that cleans up in `Drop`:
//! `Proc` (SIGTERM, then SIGKILL after a grace period), `Mount` (`fusermount3 -u`, lazy
//! `-uz` when busy, then its daemon's `Proc`), the Ctrl-C/SIGTERM flag every wait loop checks,
//! and `run_cmd`, a bounded shell step that is killed on deadline or interruption.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Result with a human-readable error.
pub type R<T> = Result<T, String>;

/// Adds context to any displayable error.
pub trait Ctx<T> {
    /// Maps the error to `"{what}: {err}"`.
    fn ctx(self, what: &str) -> R<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> R<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the interruption flag (the guards then clean up on the way out).
pub fn install_signal_flag() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Whether Ctrl-C or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Err when interrupted, so `?` unwinds through the guards.
pub fn check_interrupt() -> R<()> {
    if interrupted() {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Sleeps in small steps, returning early (Err) on interruption.
pub fn sleep(d: Duration) -> R<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_millis(20).min(end - Instant::now()));
    }
    Ok(())
}

/// Spawns `cmd` in its own process group, so a terminal Ctrl-C reaches only us and we stop
/// children in a known order.
pub fn detach(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0)
}

/// A child process stopped (TERM, then KILL) when dropped.
pub struct Proc {
    /// Short name for messages.
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    /// Spawns `cmd` (in its own process group).
    pub fn spawn(name: &str, cmd: &mut Command) -> R<Self> {
        let child = detach(cmd).spawn().ctx(&format!("start {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// Exit status if it already ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `grace` for the process to end by itself; kills it after that.
    pub fn wait_or_kill(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let end = Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// SIGTERM, then SIGKILL after 5 s.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
        self.wait_or_kill(Duration::from_secs(5));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether `mp` is a mount point now.
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

/// A live FUSE mount and the daemon serving it; unmounted when dropped.
pub struct Mount {
    /// The mount point.
    pub path: PathBuf,
    /// The daemon's log file.
    pub log: PathBuf,
    daemon: Option<Proc>,
}

/// Last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Mount {
    /// Spawns the daemon (`cmd`, logging to `log`) and waits until `mp` is mounted.
    pub fn start(name: &str, cmd: &mut Command, mp: &Path, log: &Path) -> R<Self> {
        std::fs::create_dir_all(mp).ctx("create mount point")?;
        let logf = File::create(log).ctx("create log")?;
        let errf = logf.try_clone().ctx("clone log")?;
        cmd.stdin(Stdio::null()).stdout(logf).stderr(errf);
        let daemon = Proc::spawn(name, cmd)?;
        let mut me = Mount {
            path: mp.to_path_buf(),
            log: log.to_path_buf(),
            daemon: Some(daemon),
        };
        let end = Instant::now() + Duration::from_secs(30);
        while !is_mounted(mp) {
            if let Some(s) = me.daemon.as_mut().and_then(|d| d.exited()) {
                return Err(format!(
                    "{name} exited ({s}) before mounting:\n{}",
                    tail(log, 20)
                ));
            }
            if Instant::now() > end {
                return Err(format!(
                    "{name}: not mounted after 30 s:\n{}",
                    tail(log, 20)
                ));
            }
            sleep(Duration::from_millis(20))?;
        }
        Ok(me)
    }

    /// Unmounts and waits for the daemon to exit (it finishes pending uploads first).
    pub fn unmount(&mut self) {
        if is_mounted(&self.path) && !fusermount(&["-u"], &self.path) {
            std::thread::sleep(Duration::from_millis(300));
            if is_mounted(&self.path) && !fusermount(&["-u"], &self.path) {
                fusermount(&["-u", "-z"], &self.path);
            }
        }
        if let Some(mut d) = self.daemon.take() {
            if d.wait_or_kill(Duration::from_secs(30)).is_none() {
                eprintln!("bench: {} did not exit after unmount; killed", d.name);
            }
        }
        if is_mounted(&self.path) {
            fusermount(&["-u", "-z"], &self.path);
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.unmount();
    }
}

/// How a bounded step ended.
pub enum Outcome {
    /// Exit status 0; captured stdout.
    Ok(String),
    /// Non-zero exit; message with stderr tail.
    Failed(String),
    /// Killed at the deadline.
    Timeout,
}

/// Runs `sh -c script` with a deadline; kills its process group on timeout or Ctrl-C.
/// Stdout is captured (to a file under `scratch`), stderr kept for the failure message.
pub fn run_cmd(script: &str, deadline: Duration, scratch: &Path) -> R<(Outcome, Duration)> {
    let out = scratch.join("step.out");
    let err = scratch.join("step.err");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(File::create(&out).ctx("step stdout")?)
        .stderr(File::create(&err).ctx("step stderr")?);
    let started = Instant::now();
    let mut child = detach(&mut cmd).spawn().ctx("spawn sh")?;
    let kill_group = |child: &mut Child| {
        // SAFETY: kill(2) of the process group we created for this child.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
    };
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let took = started.elapsed();
                let stdout = std::fs::read_to_string(&out).unwrap_or_default();
                return Ok(if status.success() {
                    (Outcome::Ok(stdout), took)
                } else {
                    (
                        Outcome::Failed(format!("{status}: {}", tail(&err, 3))),
                        took,
                    )
                });
            }
            Ok(None) => {}
            Err(e) => return Err(format!("wait for step: {e}")),
        }
        if interrupted() {
            kill_group(&mut child);
            return Err("interrupted".into());
        }
        if started.elapsed() > deadline {
            kill_group(&mut child);
            return Ok((Outcome::Timeout, started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A free loopback port (bound and released; the race is harmless on a quiet machine).
pub fn free_port() -> R<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").ctx("bind 127.0.0.1:0")?;
    Ok(l.local_addr().ctx("local addr")?.port())
}
