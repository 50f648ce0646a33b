//! The binary driven as a user drives it: `f7tfs demo` comes up, serves files and leaves on
//! Ctrl-C; `f7tfs check` with good and bad settings (exit codes, one-line errors); the mount
//! helper form through `mount -t fuse.f7tfs` (mount(8) → mount.fuse3 → `f7tfs SRC DIR -o ..`);
//! the background daemon returning only once the mount is live; sd_notify READY/STOPPING on
//! a NOTIFY_SOCKET; the systemd units pass `systemd-analyze verify`; README's option list
//! matches `--help`. Every mount is undone in Drop.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::mount::is_mounted;
use common::server::TestServer;

const BIN: &str = env!("CARGO_BIN_EXE_f7tfs");

fn fusermount_uz(mp: &Path) {
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mp)
        .stderr(Stdio::null())
        .status();
}

/// A child process and the mount point it may hold: killed and unmounted in Drop.
struct Guard {
    child: Option<Child>,
    mp: PathBuf,
    pid: Option<i32>,
    symlink: Option<PathBuf>,
}

impl Guard {
    fn new(mp: &Path) -> Self {
        Guard {
            child: None,
            mp: mp.to_path_buf(),
            pid: None,
            symlink: None,
        }
    }

    /// `fusermount3 -u` of the mount, then waits for the daemon (its printed pid) to exit.
    fn unmount_and_wait(&mut self) {
        assert!(Command::new("fusermount3")
            .arg("-u")
            .arg(&self.mp)
            .status()
            .unwrap()
            .success());
        let pid = self.pid.expect("pid printed");
        wait_until("the daemon to exit", 30, || !pid_alive(pid));
        self.pid = None;
    }

    /// Waits up to `secs` for the child to exit by itself.
    fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if is_mounted(&self.mp) {
            fusermount_uz(&self.mp);
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.pid {
            // SAFETY: kill(2) of the daemon this test started (its pid was printed to us).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(link) = self.symlink.take() {
            let _ = std::fs::remove_file(link);
        }
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// `f7tfs ARGS` with the test server's connection environment (or none).
fn f7tfs(args: &[&str], server: Option<&TestServer>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("FIRECREST_URL")
        .env_remove("FIRECREST_CLIENT_ID")
        .env_remove("FIRECREST_CLIENT_SECRET")
        .env_remove("AUTH_TOKEN_URL")
        .env_remove("FIRECREST_TOKEN_COMMAND")
        .env_remove("F7TFS_PROFILE")
        .env_remove("F7TFS_CONFIG")
        .env("XDG_CONFIG_HOME", "/nonexistent-f7tfs-test")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    if let Some(s) = server {
        cmd.env("FIRECREST_URL", s.url())
            .env("FIRECREST_CLIENT_ID", "f7tfs")
            .env("FIRECREST_CLIENT_SECRET", "f7tfs")
            .env("AUTH_TOKEN_URL", s.token_url());
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run f7tfs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn demo_comes_up_serves_files_and_ctrl_c_unmounts() {
    let home = tempfile::tempdir().unwrap();
    let mp = home.path().join("f7tfs-demo");
    let mut guard = Guard::new(&mp);
    let mut child = Command::new(BIN)
        .arg("demo")
        .current_dir(home.path())
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env("XDG_CACHE_HOME", home.path().join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start f7tfs demo");
    let stdout = child.stdout.take().unwrap();
    guard.child = Some(child);
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The announcement comes once the mount is live; it names the mount point and the exit.
    let mut said = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !said.contains("Ctrl-C") {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                said.push_str(&line);
                said.push('\n');
            }
            Err(_) => assert!(Instant::now() < deadline, "demo did not come up:\n{said}"),
        }
    }
    assert!(
        is_mounted(&mp),
        "announced before the mount was live:\n{said}"
    );
    assert!(said.contains(&mp.display().to_string()), "{said}");
    let samples = home.path().join("data/f7tfs/demo");

    // Files read through the mount equal the sample files, the 10 MB one via staging.
    let readme = std::fs::read_to_string(mp.join("README.md")).unwrap();
    assert!(readme.contains("f7tfs demo"));
    let big = std::fs::read(mp.join("data/measurements.csv")).unwrap();
    assert!(big.len() >= 10 << 20);
    assert_eq!(
        big,
        std::fs::read(samples.join("data/measurements.csv")).unwrap()
    );
    let png = std::fs::read(mp.join("images/gradient.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");
    let names: Vec<String> = std::fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for want in ["README.md", "notes", "code", "images", "data"] {
        assert!(names.iter().any(|n| n == want), "{names:?}");
    }
    // An edit lands in the served folder.
    // A new small file goes out with the default delayed write-back (2 s).
    std::fs::write(mp.join("notes/hello.txt"), "hello from the test\n").unwrap();
    let landed = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::read_to_string(samples.join("notes/hello.txt")).ok()
            == Some("hello from the test\n".to_string())
    });
    assert!(
        landed,
        "the edit did not reach the served folder within 10 s"
    );

    let pid = guard.child.as_ref().unwrap().id() as i32;
    // SAFETY: SIGINT to the demo process this test started (Ctrl-C).
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = guard.wait_exit(60).expect("demo exits after Ctrl-C");
    assert!(status.success(), "demo exit status {status}");
    assert!(!is_mounted(&mp), "the demo left its mount behind");
    let mut rest = said;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        rest.push_str(&line);
        rest.push('\n');
    }
    assert!(rest.contains("unmounted"), "{rest}");
}

#[test]
fn check_reports_and_exit_codes_tell_config_from_reachability() {
    let server = TestServer::start();
    std::fs::create_dir(server.root().join("sub")).unwrap();
    let sub = format!("{}:{}", server.system(), server.path("sub"));

    let ok = f7tfs(&["check", &sub, "--write"], Some(&server), &[]);
    let out = text(&ok.stdout);
    assert_eq!(ok.status.code(), Some(0), "{out}{}", text(&ok.stderr));
    for want in [
        "FirecREST v2, F7T-AppVersion",
        "user ",
        "limits",
        "latency",
        " ms",
        "writable     yes",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(out.contains("5.0 MiB"), "the server's limit:\n{out}");
    let left: Vec<_> = std::fs::read_dir(server.root().join("sub"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the write probe left {left:?}");

    // Wrong secret: credentials → 2, one line naming what to check.
    let bad = f7tfs(
        &["check", &sub],
        Some(&server),
        &[("FIRECREST_CLIENT_SECRET", "wrong")],
    );
    let err = text(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("FIRECREST_CLIENT_SECRET"), "{err}");

    // Unknown system: configuration → 2, naming the known ones.
    let sys = f7tfs(
        &["check", &format!("nosuch:{}", server.path("."))],
        Some(&server),
        &[],
    );
    assert_eq!(sys.status.code(), Some(2));
    assert!(text(&sys.stderr).contains(&server.system()));

    // Missing path: not usable → 1.
    let missing = f7tfs(
        &[
            "check",
            &format!("{}:{}", server.system(), server.path("nope")),
        ],
        Some(&server),
        &[],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("does not exist"));

    // Server down: not reachable → 1.
    let down = f7tfs(
        &["check", &sub],
        Some(&server),
        &[("FIRECREST_URL", "http://127.0.0.1:1")],
    );
    assert_eq!(down.status.code(), Some(1), "{}", text(&down.stderr));
    assert!(text(&down.stderr).contains("cannot reach"));

    // Not a URL at all: a configuration mistake → 2, naming the variable.
    let typo = f7tfs(
        &["check", &sub],
        Some(&server),
        &[("FIRECREST_URL", "api.cscs.ch/hpc/firecrest/v2")],
    );
    assert_eq!(typo.status.code(), Some(2), "{}", text(&typo.stderr));
    assert!(text(&typo.stderr).contains("not an http(s) URL: set FIRECREST_URL"));

    // Nothing configured → 2, naming the variable.
    let none = f7tfs(&["check", &sub], None, &[]);
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none.stderr).contains("FIRECREST_URL"));

    // The same through a profile of a config file (nothing in the environment).
    let cfg = tempfile::tempdir().unwrap();
    let secret = cfg.path().join("secret");
    std::fs::write(&secret, "f7tfs\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = cfg.path().join("config.toml");
    std::fs::write(
        &file,
        format!(
            "[profile.t]\nurl = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"f7tfs\"\n\
             client_secret_file = \"{}\"\nremote = \"{sub}\"\n",
            server.url(),
            server.token_url(),
            secret.display()
        ),
    )
    .unwrap();
    let p = f7tfs(
        &[
            "check",
            "--config",
            file.to_str().unwrap(),
            "--profile",
            "t",
        ],
        None,
        &[],
    );
    assert_eq!(p.status.code(), Some(0), "{}", text(&p.stderr));
    let unknown = f7tfs(
        &[
            "check",
            "--config",
            file.to_str().unwrap(),
            "--profile",
            "x",
        ],
        None,
        &[],
    );
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("profiles there: t"));

    let help = f7tfs(&["check", "--help"], None, &[]);
    assert!(text(&help.stdout).contains("EXIT STATUS"));
}

/// A profile file for `server` with staging and cache under `dir` (mount helpers get no
/// environment of ours).
fn helper_profile(server: &TestServer, dir: &Path) -> PathBuf {
    let secret = dir.join("secret");
    std::fs::write(&secret, "f7tfs").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = dir.join("config.toml");
    std::fs::write(
        &file,
        format!(
            "[profile.test]\nurl = \"{}\"\ntoken_url = \"{}\"\nclient_id = \"f7tfs\"\n\
             client_secret_file = \"{}\"\nstaging_dir = \"{}\"\ncache_dir = \"{}\"\n\
             log_file = \"{}\"\nrate_limit = 0\n",
            server.url(),
            server.token_url(),
            secret.display(),
            dir.join("staging").display(),
            dir.join("cache").display(),
            dir.join("mount.log").display(),
        ),
    )
    .unwrap();
    file
}

/// The pid the background start printed ("(pid N, log ...)").
fn printed_pid(stderr: &str) -> Option<i32> {
    let at = stderr.find("(pid ")? + 5;
    stderr[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn mount_t_fuse_f7tfs_and_an_fstab_line_go_through_mount_fuse3() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !Path::new("/sbin/mount.fuse3").exists() {
        eprintln!("SKIP: mount -t fuse.f7tfs needs root and mount.fuse3 (apt-get install fuse3)");
        return;
    }
    let server = TestServer::start();
    std::fs::write(server.root().join("hello.txt"), "through mount(8)\n").unwrap();
    let work = tempfile::tempdir().unwrap();
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let cfg = helper_profile(&server, work.path());
    let source = format!("{}:{}", server.system(), server.path("."));
    let opts = format!(
        "defaults,profile=test,config={},allow_other,_netdev,noauto,user,nofail",
        cfg.display()
    );
    let mut guard = Guard::new(&mp);

    // mount(8) runs helpers with no PATH of ours: the subtype binary must be in a standard
    // directory. Use /usr/local/bin/f7tfs when it is free, else call mount.fuse3 directly
    // (what mount(8) runs) with the test binary on PATH.
    let link = PathBuf::from("/usr/local/bin/f7tfs");
    let via_mount8 = match std::fs::symlink_metadata(&link) {
        Err(_) => std::os::unix::fs::symlink(BIN, &link).is_ok(),
        Ok(m)
            if m.file_type().is_symlink() && std::fs::read_link(&link).ok() == Some(BIN.into()) =>
        {
            true
        }
        Ok(_) => false,
    };
    if via_mount8 {
        guard.symlink = Some(link);
    }
    let bin_dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(BIN, bin_dir.path().join("f7tfs")).unwrap();
    let out = if via_mount8 {
        Command::new("mount")
            .args(["-t", "fuse.f7tfs", &source])
            .arg(&mp)
            .args(["-o", &opts])
            .env_clear()
            .output()
            .unwrap()
    } else {
        eprintln!("note: /usr/local/bin/f7tfs is taken; calling mount.fuse3 directly");
        Command::new("/sbin/mount.fuse3")
            .arg(&source)
            .arg(&mp)
            .args(["-t", "f7tfs", "-o", &opts])
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", bin_dir.path().display()),
            )
            .output()
            .unwrap()
    };
    let err = text(&out.stderr);
    guard.pid = printed_pid(&err);
    let log = std::fs::read_to_string(work.path().join("mount.log")).unwrap_or_default();
    assert!(out.status.success(), "mount failed: {err}\nlog:\n{log}");
    // The helper (a background start) returned only once the mount was live.
    assert!(
        is_mounted(&mp),
        "mount returned before the mount was live: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(mp.join("hello.txt")).unwrap(),
        "through mount(8)\n"
    );
    std::fs::write(mp.join("new.txt"), "written\n").unwrap();
    // A small new file goes out after the default write-back delay (2 s).
    wait_until("new.txt to reach the server", 10, || {
        std::fs::read_to_string(server.root().join("new.txt")).ok() == Some("written\n".into())
    });
    let log = std::fs::read_to_string(work.path().join("mount.log")).unwrap();
    assert!(
        log.contains("mounted"),
        "the profile's log_file is used:\n{log}"
    );

    let um = Command::new("umount").arg(&mp).output().unwrap();
    assert!(um.status.success(), "umount: {}", text(&um.stderr));
    assert!(!is_mounted(&mp));
    let pid = guard.pid.expect("the background start prints its pid");
    wait_until("the daemon to exit after umount", 30, || !pid_alive(pid));
    guard.pid = None;
    if !via_mount8 {
        return;
    }

    // The same as an fstab line (mount -T reads another fstab file than /etc/fstab).
    let fstab = work.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# f7tfs test\n{source} {} fuse.f7tfs {opts} 0 0\n",
            mp.display()
        ),
    )
    .unwrap();
    let out = Command::new("mount")
        .arg("-T")
        .arg(&fstab)
        .arg(&mp)
        .env_clear()
        .output()
        .unwrap();
    let err = text(&out.stderr);
    guard.pid = printed_pid(&err);
    assert!(out.status.success(), "mount via fstab line failed: {err}");
    assert!(is_mounted(&mp));
    assert_eq!(
        std::fs::read_to_string(mp.join("new.txt")).unwrap(),
        "written\n"
    );
    let um = Command::new("umount").arg(&mp).output().unwrap();
    assert!(um.status.success(), "umount: {}", text(&um.stderr));
    let pid = guard.pid.expect("pid printed");
    wait_until("the daemon to exit after umount", 30, || !pid_alive(pid));
    guard.pid = None;
}

#[test]
fn background_mount_returns_only_once_live_and_logs_to_the_file() {
    let server = TestServer::start();
    std::fs::write(server.root().join("a.txt"), "A").unwrap();
    let work = tempfile::tempdir().unwrap();
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let log = work.path().join("daemon.log");
    let mut guard = Guard::new(&mp);
    let source = format!("{}:{}", server.system(), server.path("."));
    let out = f7tfs(
        &[
            "mount",
            &source,
            mp.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
            "--staging-dir",
            work.path().join("staging").to_str().unwrap(),
            "--cache-dir",
            work.path().join("cache").to_str().unwrap(),
        ],
        Some(&server),
        &[],
    );
    let err = text(&out.stderr);
    guard.pid = printed_pid(&err);
    assert!(out.status.success(), "{err}");
    // No polling: at the moment the command returned, the mount was there.
    assert!(is_mounted(&mp), "returned before the mount was live: {err}");
    assert_eq!(std::fs::read_to_string(mp.join("a.txt")).unwrap(), "A");
    assert!(err.contains(log.to_str().unwrap()), "{err}");
    let text_log = std::fs::read_to_string(&log).unwrap();
    assert!(text_log.contains("mounted"), "{text_log}");

    // A second mount on the same point fails in the foreground of the caller, one line.
    let again = f7tfs(
        &["mount", &source, mp.to_str().unwrap()],
        Some(&server),
        &[],
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already a mount point"));

    guard.unmount_and_wait();
    assert!(std::fs::read_to_string(&log).unwrap().contains("unmounted"));
}

/// Two remotes (two profiles, two systemd instances) mounted side by side with the default
/// directories: each gets its own staging and content dir, named after its remote, and a
/// relative mount point is reported (and checked) as the absolute one.
#[test]
fn two_remotes_mount_side_by_side_with_default_directories() {
    let server = TestServer::start();
    std::fs::create_dir_all(server.root().join("one")).unwrap();
    std::fs::create_dir_all(server.root().join("two")).unwrap();
    std::fs::write(server.root().join("two/t.txt"), "T").unwrap();
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let env = [("XDG_CACHE_HOME", cache.to_str().unwrap())];
    let mut guards = Vec::new();
    for name in ["one", "two"] {
        let mp = work.path().join(format!("mnt-{name}"));
        std::fs::create_dir(&mp).unwrap();
        let mut guard = Guard::new(&mp);
        let source = format!("{}:{}", server.system(), server.path(name));
        let out = f7tfs(
            &["mount", &source, mp.to_str().unwrap()],
            Some(&server),
            &env,
        );
        let err = text(&out.stderr);
        guard.pid = printed_pid(&err);
        assert!(out.status.success(), "{name}: {err}");
        guards.push(guard);
    }
    assert_eq!(
        std::fs::read_to_string(work.path().join("mnt-two/t.txt")).unwrap(),
        "T"
    );
    for kind in ["staging", "content"] {
        let dirs: Vec<_> = std::fs::read_dir(cache.join("f7tfs").join(kind))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(dirs.len(), 2, "{kind}: {dirs:?}");
    }
    // Relative: the same point again is "already a mount point", not a staging conflict.
    let again = Command::new(BIN)
        .args([
            "mount",
            &format!("{}:{}", server.system(), server.path("one")),
            "mnt-one",
        ])
        .current_dir(work.path())
        .env("FIRECREST_URL", server.url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", server.token_url())
        .env("XDG_CACHE_HOME", &cache)
        .output()
        .unwrap();
    let err = text(&again.stderr);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(err.contains("already a mount point"), "{err}");
    assert!(
        err.contains(work.path().join("mnt-one").to_str().unwrap()),
        "{err}"
    );
    let listed = f7tfs(&["recover"], None, &env);
    assert!(text(&listed.stdout).contains("nothing to recover"));
    for g in &mut guards {
        g.unmount_and_wait();
    }
}

/// Mounts in the foreground with NOTIFY_SOCKET=`notify`, expects READY=1 once live, then
/// SIGTERM → STOPPING=1 and exit 0.
fn notify_round(sock: &UnixDatagram, notify: &str) {
    let server = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut guard = Guard::new(&mp);
    let child = Command::new(BIN)
        .args(["mount", "-f"])
        .arg(format!("{}:{}", server.system(), server.path(".")))
        .arg(&mp)
        .arg("--staging-dir")
        .arg(work.path().join("staging"))
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .env("FIRECREST_URL", server.url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", server.token_url())
        .env("NOTIFY_SOCKET", notify)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    guard.child = Some(child);
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 within 60 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    assert!(is_mounted(&mp), "READY=1 before the mount was live");
    // SAFETY: SIGTERM to the child this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(String::from_utf8_lossy(&buf[..n]), "STOPPING=1");
    let status = guard.wait_exit(60).expect("exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&mp));
}

#[test]
fn sd_notify_ready_once_live_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    notify_round(&sock, path.to_str().unwrap());

    // systemd also hands out abstract socket names ("@...").
    use std::os::linux::net::SocketAddrExt;
    let name = format!("f7tfs-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let abs = UnixDatagram::bind_addr(&addr).unwrap();
    notify_round(&abs, &format!("@{name}"));
}

#[test]
fn a_stale_mount_of_a_killed_daemon_is_cleared_by_the_next_mount() {
    let server = TestServer::start();
    std::fs::write(server.root().join("s.txt"), "S").unwrap();
    let work = tempfile::tempdir().unwrap();
    let mp = work.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut guard = Guard::new(&mp);
    let source = format!("{}:{}", server.system(), server.path("."));
    let args = |fg: bool| {
        let mut a = vec!["mount".to_string()];
        if fg {
            a.push("-f".into());
        }
        a.extend([
            source.clone(),
            mp.display().to_string(),
            "--staging-dir".into(),
            work.path().join("staging").display().to_string(),
            "--cache-dir".into(),
            work.path().join("cache").display().to_string(),
        ]);
        a
    };
    let child = Command::new(BIN)
        .args(args(true))
        .env("FIRECREST_URL", server.url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", server.token_url())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    guard.child = Some(child);
    wait_until("the first mount", 30, || is_mounted(&mp));
    // SIGKILL: no chance to unmount; the kernel keeps a dead mount.
    let mut first = guard.child.take().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    let err = std::fs::metadata(&mp).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotConnected, "{err}");

    let a = args(false);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let out = f7tfs(&a, Some(&server), &[]);
    let stderr = text(&out.stderr);
    guard.pid = printed_pid(&stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(std::fs::read_to_string(mp.join("s.txt")).unwrap(), "S");
    guard.unmount_and_wait();
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let files: Vec<PathBuf> = std::fs::read_dir(&units)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension()
                .is_some_and(|e| e == "service" || e == "mount" || e == "automount")
        })
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let service = std::fs::read_to_string(units.join("f7tfs@.service")).unwrap();
    // ExecStart uses flags that exist.
    let exec = service
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert!(exec.contains("mount --foreground --profile %i"), "{exec}");
    let help = text(&f7tfs(&["mount", "--help"], None, &[]).stdout);
    assert!(help.contains("--foreground") && help.contains("--profile"));
    assert!(service.contains("Type=notify"));

    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "SKIP: systemd-analyze is not installed (apt-get install systemd); units not verified"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tempfile::tempdir().unwrap();
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        // A template is verified as an instance; the binary path must exist for verify.
        let name = name.replace("@.", "@daint.");
        let body = std::fs::read_to_string(file)
            .unwrap()
            .replace("/usr/local/bin/f7tfs", BIN);
        let target = tmp.path().join(&name);
        std::fs::write(&target, body).unwrap();
        let user = name.ends_with(".service");
        let mut cmd = Command::new("systemd-analyze");
        if user {
            cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime.path());
        }
        let out = cmd
            .args(["verify", "--man=no"])
            .arg(&target)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{name}: {all}");
        // verify exits 0 on ignored settings too: any line naming the unit is a finding.
        assert!(!all.contains(&name), "{name}: {all}");
    }
}

#[test]
fn readme_documents_every_option_and_the_two_commands() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for sub in ["mount", "check", "demo", "serve"] {
        let help = text(&f7tfs(&[sub, "--help"], None, &[]).stdout);
        for flag in help
            .split_whitespace()
            .filter(|w| w.starts_with("--") && w.len() > 2)
            .map(|w| w.trim_end_matches([',', '.', ']', ')', ':']))
            .filter(|w| {
                w.chars()
                    .skip(2)
                    .all(|c| c.is_ascii_lowercase() || c == '-')
            })
        {
            if flag == "--help" || flag == "--version" {
                continue;
            }
            assert!(
                readme.contains(flag),
                "README does not mention `f7tfs {sub} {flag}`"
            );
        }
    }
    let ci =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/run")).unwrap();
    assert!(readme.contains("sudo .ci/install && cargo test"));
    assert!(ci.contains(".ci/install") && ci.contains("cargo test"));
    // `cargo run -- demo` needs to know which of the two binaries to run.
    assert!(readme.contains("cargo run -- demo"));
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("default-run = \"f7tfs\""),
        "Cargo.toml has a second binary: `cargo run` needs default-run = \"f7tfs\""
    );
    for heading in [
        "## f7tfs serve",
        "## Large files",
        "## Authentication and failures",
        "## Benchmarks",
        "## POSIX conformance",
    ] {
        assert!(readme.contains(heading), "README lacks {heading}");
    }
}
