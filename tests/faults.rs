//! Issue 5: the mount survives faults and never loses a write. Against `f7tfs serve` with its
//! fault knobs: setup errors (one line, no secrets), 5xx storms and 429 bursts, connections
//! dropped during part uploads, tokens expiring mid-transfer, the server killed and restarted
//! behind a live mount, SIGKILL of the daemon with dirty files then `f7tfs recover`, SIGTERM
//! with uploads pending. Each test checks the errno, the message, and the bytes on the remote
//! (or in staging).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mount::MountedFs;
use common::server::TestServer;
use sha2::{Digest, Sha256};

/// Deterministic pseudo-random bytes.
fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` to `path` from another process and closes it there; the error of the
/// first failing call (open, write or close) comes back as `(call, errno)`.
///
/// Writes never happen in this process: a FUSE descriptor held here would be inherited (until
/// exec) by the in-process servers' subprocesses, whose exec flushes it, i.e. uploads it,
/// while that server's worker waits for the exec: a deadlock until the deadline.
fn py_write(path: &Path, data: &[u8]) -> Result<(), (String, i32)> {
    let src = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(src.path(), data).unwrap();
    let script = "import os, sys\n\
        dst, src = sys.argv[1], sys.argv[2]\n\
        data = open(src, 'rb').read()\n\
        step = 'open'\n\
        try:\n\
        \x20   fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
        \x20   step = 'write'\n\
        \x20   try:\n\
        \x20       while data:\n\
        \x20           data = data[os.write(fd, data):]\n\
        \x20   except OSError:\n\
        \x20       try:\n\
        \x20           os.close(fd)\n\
        \x20       except OSError:\n\
        \x20           pass\n\
        \x20       raise\n\
        \x20   step = 'close'\n\
        \x20   os.close(fd)\n\
        except OSError as e:\n\
        \x20   print(step, e.errno)\n\
        \x20   sys.exit(1)\n\
        print('ok')\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .arg(src.path())
        .stdin(Stdio::null())
        .output()
        .expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && text == "ok" {
        return Ok(());
    }
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(|n| n.parse().ok())) {
        (Some(step), Some(errno)) => Err((step.to_string(), errno)),
        _ => panic!(
            "the writer failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// `py_write` with the error as an `io::Error` (close()'s error included).
fn write_close(path: &Path, data: &[u8]) -> std::io::Result<()> {
    py_write(path, data).map_err(|(_, errno)| std::io::Error::from_raw_os_error(errno))
}

/// The manifests (`*.json`) in a staging dir, parsed.
fn manifests(dir: &Path) -> Vec<serde_json::Value> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
        .collect()
}

/// The manifest of the staged `suffix` once it records a failed upload (a retry may be
/// running when asked first).
fn failed_manifest(m: &MountedFs, suffix: &str) -> serde_json::Value {
    let mut found = None;
    let ok = wait_for(Duration::from_secs(30), || {
        found = manifests(&m.staging_dir()).into_iter().find(|v| {
            v["remote_path"]
                .as_str()
                .is_some_and(|p| p.ends_with(suffix))
                && v["state"] == "failed"
        });
        found.is_some()
    });
    assert!(
        ok,
        "no failed manifest for {suffix}: {:?}",
        manifests(&m.staging_dir())
    );
    found.unwrap_or_default()
}

fn wait_for(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Runs `f7tfs mount -f SOURCE MNT` expecting it to fail before mounting; returns its
/// stderr. Panics if it mounted or took longer than `limit`.
fn failing_mount(
    srv: &TestServer,
    source: &str,
    env: &[(&str, String)],
    limit: Duration,
) -> String {
    failing_mount_args(srv, source, &[], env, limit)
}

/// `failing_mount` with extra arguments.
fn failing_mount_args(
    srv: &TestServer,
    source: &str,
    args: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> String {
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_f7tfs"));
    cmd.arg("mount")
        .arg("-f")
        .arg(source)
        .arg(mnt.path())
        .arg("--staging-dir")
        .arg(work.path().join("s"))
        .arg("--cache-dir")
        .arg(work.path().join("c"))
        .args(args)
        .env("FIRECREST_URL", srv.url())
        .env("AUTH_TOKEN_URL", srv.token_url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env_remove("FIRECREST_TOKEN_COMMAND")
        .env("F7TFS_LOG", "debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if f7tfs::mount::is_mounted(mnt.path()) {
        let _ = Command::new("fusermount3")
            .arg("-uz")
            .arg(mnt.path())
            .status();
        panic!("{source} mounted although it should not: {stderr}");
    }
    assert!(!out.status.success(), "{source}: exit 0\n{stderr}");
    assert!(
        started.elapsed() < limit,
        "{source}: took {:?}\n{stderr}",
        started.elapsed()
    );
    stderr
}

/// The last `f7tfs: ` line (what the user sees) and that there is exactly one.
fn one_error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("f7tfs: "))
        .collect();
    assert_eq!(lines.len(), 1, "one error line expected:\n{stderr}");
    lines[0].to_string()
}

#[test]
fn setup_errors_stop_at_once_with_one_line_and_no_secrets() {
    let srv = TestServer::start();
    let source = format!("{}:{}", srv.system(), srv.root().display());
    let secret = "Sup3r-S3cret-value-4711".to_string();
    let limit = Duration::from_secs(20);

    let err = failing_mount(
        &srv,
        &source,
        &[("FIRECREST_CLIENT_SECRET", secret.clone())],
        limit,
    );
    let line = one_error_line(&err);
    assert!(line.contains("FIRECREST_CLIENT_SECRET"), "{line}");
    assert!(!err.contains(&secret), "the secret leaked:\n{err}");

    // The secret from a file others can read: a warning, and still never printed.
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).unwrap();
    std::fs::set_permissions(
        &secret_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let err = failing_mount_args(
        &srv,
        &source,
        &["--client-secret-file", &secret_file.display().to_string()],
        &[],
        limit,
    );
    let line = one_error_line(&err);
    assert!(line.contains("refused the client id or secret"), "{line}");
    assert!(err.contains("chmod 600"), "no permission warning:\n{err}");
    assert!(!err.contains(&secret), "the secret leaked:\n{err}");

    let err = failing_mount(
        &srv,
        &source,
        &[("AUTH_TOKEN_URL", format!("{}/auth/nope", srv.url()))],
        limit,
    );
    let line = one_error_line(&err);
    assert!(line.contains("AUTH_TOKEN_URL"), "{line}");

    let err = failing_mount(
        &srv,
        &source,
        &[("AUTH_TOKEN_URL", "http://127.0.0.1:9/token".into())],
        limit,
    );
    let line = one_error_line(&err);
    assert!(line.contains("AUTH_TOKEN_URL"), "{line}");

    // Token command: the token is used (debug logging on) but never printed.
    let token = srv.token();
    let cmd = [("FIRECREST_TOKEN_COMMAND", format!("echo {token}"))];
    let err = failing_mount(
        &srv,
        &format!("nosuchsystem:{}", srv.root().display()),
        &cmd,
        limit,
    );
    let line = one_error_line(&err);
    assert!(
        line.contains("unknown system") && line.contains(&srv.system()),
        "{line}"
    );
    assert!(!err.contains(&token), "the token leaked:\n{err}");

    let err = failing_mount(&srv, &format!("{}:/etc", srv.system()), &cmd, limit);
    let line = one_error_line(&err);
    assert!(line.contains("outside the filesystems"), "{line}");
    assert!(!err.contains(&token), "the token leaked:\n{err}");

    let err = failing_mount(&srv, &format!("{}/missing", source), &cmd, limit);
    let line = one_error_line(&err);
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn storms_of_5xx_and_429_bursts_lose_nothing() {
    let m = MountedFs::start_with(&[], |_| {});
    m.server().set_faults(&["*:5xx=0.3"]);
    let files: Vec<(String, Vec<u8>)> = (0..12)
        .map(|i| (format!("f{i}"), bytes(1000 + i * 777, i as u64)))
        .collect();
    for (name, data) in &files {
        write_close(&m.p(name), data).unwrap_or_else(|e| panic!("{name}: {e}\n{}", m.log()));
    }
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(m.p(name)).unwrap(),
            data,
            "{name} via the mount"
        );
    }
    let s = m.server().stats();
    let injected: u64 = s.endpoints.values().map(|e| e.faults).sum();
    assert!(injected > 0, "the storm injected nothing: {s:?}");
    m.server().set_faults(&[]);
    for (name, data) in &files {
        assert_eq!(
            &std::fs::read(m.remote(name)).unwrap(),
            data,
            "{name} on the remote"
        );
    }

    // A burst of 429s with Retry-After: waited out, nothing lost.
    m.server().set_faults(&["*:429=1:times=3:retry-after=1"]);
    let started = Instant::now();
    let data = bytes(5000, 99);
    write_close(&m.p("after429"), &data).unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After not honoured"
    );
    assert_eq!(std::fs::read(m.remote("after429")).unwrap(), data);
    assert!(m.log().contains("retrying"), "no retry logged");
}

#[test]
fn dropped_part_uploads_are_retried_or_kept_staged() {
    let m = MountedFs::start_with(&[], |cfg| {
        cfg.max_ops_file_size = 64 * 1024;
        cfg.max_part_size = 64 * 1024;
    });
    // A third of the part uploads lose their connection: retried, the file arrives whole.
    // (Two drops are certain, the rest random.)
    m.server()
        .set_faults(&["PUT s3/part:drop=1:times=2", "PUT s3/part:drop=0.3"]);
    let data = bytes(600 * 1024, 7);
    write_close(&m.p("big"), &data).unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert!(m.server().stats().endpoints["PUT s3/part"].faults > 0);
    assert_eq!(std::fs::read(m.remote("big")).unwrap(), data);

    // Every part upload dropped: close() fails with EIO, the data stays staged with a
    // manifest naming the cause, and the log says where it is.
    m.server().set_faults(&["PUT s3/part:drop=1"]);
    let data2 = bytes(300 * 1024, 8);
    let err = write_close(&m.p("big2"), &data2).expect_err("close must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let mine = failed_manifest(&m, "/big2");
    assert_eq!(mine["size"], 300 * 1024);
    assert_eq!(mine["sha256"], sha(&data2));
    assert!(mine["cause"].as_str().is_some_and(|c| !c.is_empty()));
    let staged = m.staging_dir().join(mine["data_file"].as_str().unwrap());
    assert_eq!(std::fs::read(&staged).unwrap(), data2);
    assert!(
        m.log().contains(&staged.display().to_string()),
        "the log names the staged copy"
    );
    // The remote has none of it.
    assert!(!m.remote("big2").exists());

    // Faults gone: the background retry sends it without a remount.
    m.server().set_faults(&[]);
    assert!(
        wait_for(Duration::from_secs(40), || std::fs::read(m.remote("big2"))
            .is_ok_and(|d| d == data2)),
        "not re-sent:\n{}",
        m.log()
    );
    assert!(
        wait_for(Duration::from_secs(5), || manifests(&m.staging_dir())
            .is_empty()),
        "manifest left after the upload"
    );
}

#[test]
fn tokens_expire_many_times_during_one_transfer() {
    // 3 s tokens; the transfer below takes several lifetimes (slow S3 and API).
    let m = MountedFs::start_with(&[], |cfg| {
        cfg.token_lifetime = Duration::from_secs(3);
        cfg.max_ops_file_size = 64 * 1024;
        cfg.max_part_size = 64 * 1024;
        cfg.s3_latency = Duration::from_millis(600);
        cfg.latency = Duration::from_millis(700);
    });
    m.server().reset_stats();
    let data = bytes(2 * 1024 * 1024, 3);
    let started = Instant::now();
    write_close(&m.p("long"), &data).unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    // Read it back through the staged download (the content cache is bypassed: evicted
    // by size, large files are read through ranges).
    let back = std::fs::read(m.remote("long")).unwrap();
    assert_eq!(back, data);
    let via_mount = std::fs::read(m.p("long")).unwrap();
    assert_eq!(via_mount, data);
    let took = started.elapsed();
    let s = m.server().stats();
    assert!(
        took > Duration::from_secs(6),
        "the transfer was too short to outlive tokens: {took:?}"
    );
    assert!(
        s.calls("POST auth/token") >= 2,
        "tokens were not refreshed during {took:?}: {s:?}"
    );
    let refused = s
        .endpoints
        .iter()
        .filter(|(k, _)| !k.contains("auth/token"))
        .map(|(_, e)| e.statuses.get("401").copied().unwrap_or(0))
        .sum::<u64>();
    assert_eq!(refused, 0, "a token expired in use: {s:?}");
}

#[test]
fn server_killed_and_restarted_behind_a_live_mount() {
    let mut m = MountedFs::start_with(&["--timeout", "6"], |_| {});
    let a = bytes(3000, 1);
    write_close(&m.p("a"), &a).unwrap();
    std::fs::create_dir(m.remote("d")).unwrap();
    std::fs::write(m.remote("d/behind"), b"x").unwrap();
    let listed = m.sh("ls");
    assert!(listed.contains('a') && listed.contains('d'), "{listed}");

    // A server that accepts but does not answer: EIO once --timeout (6 s) ran out.
    m.server().set_latency(Duration::from_secs(30));
    let started = Instant::now();
    let err = std::fs::metadata(m.p("d/behind")).expect_err("no answer: must fail");
    let took = started.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(12),
        "{took:?}"
    );
    m.server().set_latency(Duration::ZERO);

    m.server_mut().kill();
    // Cached directories still answer (stale); a write fails with EIO in bounded time and
    // stays staged; an uncached directory fails with EIO in bounded time.
    std::thread::sleep(Duration::from_secs(6)); // past every TTL
    let started = Instant::now();
    let listed = m.sh("ls -l");
    assert!(
        listed.contains(" a\n") && listed.contains(" d\n"),
        "{listed}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let b = bytes(4000, 2);
    let started = Instant::now();
    let err = write_close(&m.p("b"), &b).expect_err("no server: close must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "close took {:?}",
        started.elapsed()
    );
    let mine = failed_manifest(&m, "/b");
    assert_eq!(mine["sha256"], sha(&b));
    assert!(
        mine["cause"]
            .as_str()
            .is_some_and(|c| c.contains("connect")),
        "{mine}"
    );
    // A failed write to a listed file leaves its directory listable offline (its stale
    // attributes stay for stale answers).
    let a2 = bytes(3500, 4);
    let err = write_close(&m.p("a"), &a2).expect_err("no server: close must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    let listed = m.sh("ls -l");
    assert!(
        listed.contains(" a\n") && listed.contains(" d\n"),
        "{listed}"
    );
    let started = Instant::now();
    let err = std::fs::read_dir(m.p("d")).and_then(|mut r| r.next().transpose());
    match err {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}"),
        Ok(_) => panic!("an uncached directory listed without a server"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));

    m.server_mut().restart();
    // Everything works again without a remount: the failed write is re-sent, new writes
    // and listings go through (tokens of the old server are refused once, then renewed).
    assert!(
        wait_for(Duration::from_secs(40), || std::fs::read(m.remote("b"))
            .is_ok_and(|d| d == b)),
        "b not re-sent:\n{}",
        m.log()
    );
    // The restarted server forgot the old token: refused once (401), renewed, replayed.
    let s = m.server().stats();
    let refused: u64 = s
        .endpoints
        .values()
        .map(|e| e.statuses.get("401").copied().unwrap_or(0))
        .sum();
    assert!(refused >= 1 && s.calls("POST auth/token") >= 1, "{s:?}");
    let c = bytes(2000, 3);
    write_close(&m.p("c"), &c).unwrap_or_else(|e| panic!("{e}\n{}", m.log()));
    assert_eq!(std::fs::read(m.remote("c")).unwrap(), c);
    assert!(wait_for(Duration::from_secs(10), || m
        .sh("ls d")
        .contains("behind")));
    assert!(
        wait_for(Duration::from_secs(40), || std::fs::read(m.remote("a"))
            .is_ok_and(|d| d == a2)),
        "a not re-sent"
    );
    assert_eq!(std::fs::read(m.p("a")).unwrap(), a2);
}

fn recover(m: &MountedFs, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_f7tfs"))
        .arg("recover")
        .args(args)
        .arg("--staging-dir")
        .arg(m.staging_dir())
        .env("FIRECREST_URL", m.server().url())
        .env("AUTH_TOKEN_URL", m.server().token_url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env_remove("FIRECREST_TOKEN_COMMAND")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Writes `files` into the mount from another process that keeps them open (dirty, never
/// closed) until the returned guard is dropped. A FUSE descriptor held by this process would
/// be inherited (until exec) by the in-process server's subprocesses, whose exec then
/// flushes, i.e. uploads, it.
fn hold_dirty(m: &MountedFs, files: &[(&str, &[u8])]) -> Holder {
    let src = tempfile::tempdir().unwrap();
    let mut argv = Vec::new();
    for (name, data) in files {
        let local = src.path().join(name);
        std::fs::write(&local, data).unwrap();
        argv.push(m.p(name).display().to_string());
        argv.push(local.display().to_string());
    }
    let script = "import os, sys\n\
        a = sys.argv[1:]\n\
        fds = []\n\
        for dst, src in zip(a[0::2], a[1::2]):\n\
        \x20   fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)\n\
        \x20   data = open(src, 'rb').read()\n\
        \x20   while data:\n\
        \x20       data = data[os.write(fd, data):]\n\
        \x20   fds.append(fd)\n\
        print('ready', flush=True)\n\
        sys.stdin.read()\n";
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready", "{}", m.log());
    Holder(child)
}

/// The process holding dirty files open; killed on drop.
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn recover_refuses_a_live_mount_and_discards_on_request() {
    let mut m = MountedFs::start_with(&[], |_| {});
    let holder = hold_dirty(&m, &[("scratch", b"throw me away")]);
    m.kill9();
    drop(holder);
    m.remount();
    let (ok, out) = recover(&m, &["--discard"]);
    assert!(!ok && out.contains("in use by a running mount"), "{out}");
    let (ok, out) = recover(&m, &["--list"]);
    assert!(
        ok && out.contains("/scratch") && out.contains("running mount"),
        "{out}"
    );
    m.unmount();
    let (ok, out) = recover(&m, &["--discard"]);
    assert!(
        ok && out.contains("discarded") && out.contains("/scratch"),
        "{out}"
    );
    assert!(manifests(&m.staging_dir()).is_empty());
    assert!(!m.remote("scratch").exists());
}

#[test]
fn sigkill_with_dirty_files_then_recover() {
    // A 64 KiB direct limit: `new` (70 kB) is recovered through the staged multipart route.
    let mut m = MountedFs::start_with(&[], |cfg| {
        cfg.max_ops_file_size = 64 * 1024;
        cfg.max_part_size = 64 * 1024;
    });
    std::fs::write(m.remote("existing"), b"old remote content").unwrap();
    std::fs::write(m.remote("other"), b"another old one").unwrap();
    // Dirty, never closed: a new file and two existing files rewritten.
    let new_data = bytes(70_000, 11);
    let ex_data = bytes(5_000, 12);
    let other_data = bytes(6_000, 13);
    let holder = hold_dirty(
        &m,
        &[
            ("new", &new_data[..]),
            ("existing", &ex_data[..]),
            ("other", &other_data[..]),
        ],
    );
    m.kill9();
    drop(holder);
    assert!(!m.remote("new").exists());
    assert_eq!(
        std::fs::read(m.remote("existing")).unwrap(),
        b"old remote content"
    );

    // The next start lists them (and leaves them alone).
    m.remount();
    assert!(
        m.log().contains("staged write(s) of an earlier run"),
        "{}",
        m.log()
    );
    assert_eq!(manifests(&m.staging_dir()).len(), 3);
    m.unmount();

    // Listing names each of them.
    let (ok, out) = recover(&m, &["--list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("3 staged write(s)") && out.contains("/existing"),
        "{out}"
    );

    // Someone changes `other` behind our back: recover refuses it, sends the rest.
    std::fs::write(m.remote("other"), b"changed by someone else!").unwrap();
    let (ok, out) = recover(&m, &[&m.server().system()]);
    assert!(!ok, "a refused file must fail the run: {out}");
    assert!(
        out.contains("refused") && out.contains("/other") && out.contains("--force"),
        "{out}"
    );
    assert_eq!(std::fs::read(m.remote("new")).unwrap(), new_data);
    assert_eq!(std::fs::read(m.remote("existing")).unwrap(), ex_data);
    assert_eq!(
        std::fs::read(m.remote("other")).unwrap(),
        b"changed by someone else!"
    );
    assert_eq!(manifests(&m.staging_dir()).len(), 1);

    let (ok, out) = recover(&m, &[&m.server().system(), "--force"]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(m.remote("other")).unwrap(), other_data);
    assert!(manifests(&m.staging_dir()).is_empty());
    let (ok, out) = recover(&m, &[]);
    assert!(ok && out.contains("nothing to recover"), "{out}");
}

#[test]
fn sigterm_waits_for_pending_uploads_and_a_second_one_leaves_them_staged() {
    // Delayed write-back keeps closed files dirty: SIGTERM must send them before exiting.
    let mut m = MountedFs::start_with(&["--writeback-delay", "60"], |_| {});
    let data = bytes(3000, 21);
    write_close(&m.p("pending"), &data).unwrap();
    assert!(!m.remote("pending").exists());
    m.signal(libc::SIGTERM);
    let status = m.wait_exit(Duration::from_secs(30)).expect("daemon exits");
    assert!(status.success(), "{status:?}\n{}", m.log());
    assert_eq!(std::fs::read(m.remote("pending")).unwrap(), data);
    assert!(manifests(&m.staging_dir()).is_empty());

    // Now a server that hangs: the first SIGTERM waits, a second one exits at once and the
    // data stays staged for `recover`.
    m.remount();
    let data2 = bytes(4000, 22);
    write_close(&m.p("stuck"), &data2).unwrap();
    m.server().set_latency(Duration::from_secs(60));
    m.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        m.wait_exit(Duration::from_millis(100)).is_none(),
        "did not wait"
    );
    m.signal(libc::SIGTERM);
    let status = m
        .wait_exit(Duration::from_secs(10))
        .expect("second SIGTERM exits");
    assert!(!status.success());
    assert!(m.log().contains("second signal"), "{}", m.log());
    let man = manifests(&m.staging_dir());
    let mine = man
        .iter()
        .find(|v| {
            v["remote_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("/stuck"))
        })
        .unwrap_or_else(|| panic!("{man:?}"));
    let staged = m.staging_dir().join(mine["data_file"].as_str().unwrap());
    assert_eq!(std::fs::read(staged).unwrap(), data2);
    m.server().set_latency(Duration::ZERO);
    let (ok, out) = recover(&m, &[&m.server().system()]);
    assert!(ok, "{out}");
    assert_eq!(std::fs::read(m.remote("stuck")).unwrap(), data2);
}

/// A small tmpfs mounted over a directory; unmounted on drop.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> Option<TinyDisk> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TinyDisk(dir.to_path_buf()))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_staging_disk_is_enospc_on_write_through_the_mount() {
    let m = MountedFs::start_with(&[], |_| {});
    let Some(_disk) = TinyDisk::mount(&m.staging_dir(), "128k") else {
        eprintln!("SKIPPED: cannot mount a tmpfs (needs root)");
        return;
    };
    let err = py_write(&m.p("huge"), &bytes(1024 * 1024, 5))
        .expect_err("a 128 KiB staging disk fills up");
    assert_eq!(err, ("write".to_string(), libc::ENOSPC));
    // The mount goes on working.
    drop(_disk);
    let data = bytes(1000, 6);
    write_close(&m.p("small"), &data).unwrap();
    assert_eq!(std::fs::read(m.remote("small")).unwrap(), data);
}
