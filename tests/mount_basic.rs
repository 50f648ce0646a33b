//! First real mounts: the `f7tfs` binary mounted over `f7tfs serve`, driven with std::fs and
//! shell tools; remote effects checked in the server's backing directory, call counts from
//! the server's counters.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::mount::{is_mounted, MountedFs};

#[test]
fn everyday_file_operations() {
    let m = MountedFs::start();
    // mkdir, write with shell tools, read back.
    fs::create_dir(m.p("proj")).unwrap();
    m.sh("echo 'hello mount' > proj/hello.txt");
    assert_eq!(
        fs::read_to_string(m.p("proj/hello.txt")).unwrap(),
        "hello mount\n"
    );
    assert_eq!(
        fs::read_to_string(m.remote("proj/hello.txt")).unwrap(),
        "hello mount\n"
    );
    assert_eq!(m.sh("cat proj/hello.txt"), "hello mount\n");
    let ls = m.sh("ls -l proj");
    assert!(ls.contains("hello.txt") && ls.contains(" 12 "), "{ls}");

    // rename
    m.sh("mv proj/hello.txt proj/renamed.txt");
    assert!(!m.remote("proj/hello.txt").exists());
    assert_eq!(
        fs::read_to_string(m.remote("proj/renamed.txt")).unwrap(),
        "hello mount\n"
    );

    // rmdir of a non-empty directory: ENOTEMPTY, nothing removed.
    let err = fs::remove_dir(m.p("proj")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    assert!(m.remote("proj/renamed.txt").exists());

    // rm, then rmdir works.
    fs::remove_file(m.p("proj/renamed.txt")).unwrap();
    assert!(!m.remote("proj/renamed.txt").exists());
    fs::remove_dir(m.p("proj")).unwrap();
    assert!(!m.remote("proj").exists());

    // chmod +x and execute
    fs::write(m.p("run.sh"), "#!/bin/sh\necho it-ran\n").unwrap();
    m.sh("chmod +x run.sh");
    assert_eq!(
        fs::metadata(m.remote("run.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(m.sh("./run.sh"), "it-ran\n");

    // symlink / readlink (relative target)
    fs::write(m.p("target.txt"), "T").unwrap();
    std::os::unix::fs::symlink("target.txt", m.p("link")).unwrap();
    assert_eq!(
        fs::read_link(m.p("link")).unwrap().to_str(),
        Some("target.txt")
    );
    assert_eq!(
        fs::read_link(m.remote("link")).unwrap().to_str(),
        Some("target.txt")
    );
    assert_eq!(fs::read_to_string(m.p("link")).unwrap(), "T");

    // empty file
    m.sh("touch empty && : > empty2");
    assert_eq!(fs::metadata(m.remote("empty")).unwrap().len(), 0);
    assert_eq!(fs::metadata(m.remote("empty2")).unwrap().len(), 0);
    assert_eq!(fs::metadata(m.p("empty")).unwrap().len(), 0);

    // unicode and spaces
    let name = "Grüße aus Zürich – 日本.txt";
    fs::write(m.p(name), "u").unwrap();
    assert_eq!(fs::read_to_string(m.remote(name)).unwrap(), "u");
    let names: Vec<String> = fs::read_dir(m.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().any(|n| n == name), "{names:?}");

    // hidden files, append
    fs::write(m.p(".hidden"), "a").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.p(".hidden"))
        .unwrap();
    f.write_all(b"b").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(m.remote(".hidden")).unwrap(), "ab");

    // a path that does not exist
    let err = fs::metadata(m.p("no/such/file")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);

    // a name the API cannot carry
    let err = fs::write(m.p("it's.txt"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
}

#[test]
fn remote_changes_show_after_the_ttl() {
    let m = MountedFs::start_with(
        &["--attr-ttl", "1", "--dir-ttl", "1", "--negative-ttl", "1"],
        |_| {},
    );
    fs::write(m.remote("job.out"), "step 1\n").unwrap();
    assert_eq!(fs::read_to_string(m.p("job.out")).unwrap(), "step 1\n");
    // A job appends on the remote side.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.remote("job.out"))
        .unwrap();
    f.write_all(b"step 2\n").unwrap();
    drop(f);
    // Push the mtime forward so the change is visible even within the same second.
    let later = SystemTime::now() + Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(m.remote("job.out"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    fs::write(m.remote("new-on-remote"), "n").unwrap();
    std::thread::sleep(Duration::from_millis(1600));
    let mut s = String::new();
    fs::File::open(m.p("job.out"))
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    assert_eq!(s, "step 1\nstep 2\n");
    assert_eq!(fs::read_to_string(m.p("new-on-remote")).unwrap(), "n");
    // ls and stat agree on the time.
    let st = fs::metadata(m.p("job.out")).unwrap();
    let secs = st
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let remote_secs = fs::metadata(m.remote("job.out"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(secs, remote_secs);
}

#[test]
fn ls_l_find_du_of_2000_files_cost_one_listing() {
    let m = MountedFs::start();
    fs::create_dir(m.remote("many")).unwrap();
    for i in 0..2000 {
        fs::write(m.remote(&format!("many/file-{i:04}.dat")), b"0123456789").unwrap();
    }
    // The directory itself (and the mount root) are looked up once; then only the listing.
    m.sh("stat many > /dev/null");
    m.server().reset_stats();
    let out = m.sh("ls -l many | wc -l");
    assert_eq!(out.trim(), "2001");
    let stats = m.server().stats();
    assert_eq!(stats.calls("GET ops/ls"), 1, "{stats:?}");
    assert_eq!(stats.calls("GET ops/stat"), 0, "{stats:?}");
    // `ls` (times from the listing) and the remote's own mtime agree.
    let line = m.sh("ls -l --time-style=+%s many/file-0007.dat");
    let ls_secs: u64 = line.split_whitespace().nth(5).unwrap().parse().unwrap();
    let remote_secs = fs::metadata(m.remote("many/file-0007.dat"))
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(ls_secs, remote_secs, "{line}");
    let found = m.sh("find many -type f | wc -l");
    assert_eq!(found.trim(), "2000");
    m.sh("du -s many");
    let stats = m.server().stats();
    assert!(stats.calls("GET ops/ls") <= 2, "{stats:?}");
    assert_eq!(stats.calls("GET ops/stat"), 0, "{stats:?}");
}

/// `rm -r` with the default write-back delay: the unlinks wait and the rmdir's one recursive
/// `rm` takes them all, an `ls` and an `rm` instead of 2,001 calls, and the tree is gone when
/// rm returns.
#[test]
fn rm_r_of_2000_files_is_one_remote_rm() {
    let m = MountedFs::start_with(&["--writeback-delay", "2"], |_| {});
    fs::create_dir_all(m.remote("many/sub")).unwrap();
    for i in 0..2000 {
        fs::write(m.remote(&format!("many/file-{i:04}.dat")), b"0123456789").unwrap();
    }
    fs::write(m.remote("many/sub/inner"), b"x").unwrap();
    fs::write(m.remote("kept"), b"x").unwrap();
    m.sh("ls many > /dev/null");
    m.server().reset_stats();
    m.sh("rm -r many");
    assert!(
        !m.remote("many").exists(),
        "gone on the remote when rm returns"
    );
    let stats = m.server().stats();
    assert_eq!(
        stats.calls("DELETE ops/rm"),
        2,
        "many/sub and many: {stats:?}"
    );
    // Plus one `ls` per rmdir (empty on the remote itself?) and rm's own listing of sub.
    assert!(stats.total_calls() <= 6, "{stats:?}");
    // A lone unlink goes out after the delay; the mount never shows it meanwhile.
    m.sh("rm kept; test ! -e kept");
    let asked = std::time::Instant::now();
    while m.remote("kept").exists() && asked.elapsed() < std::time::Duration::from_secs(30) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(!m.remote("kept").exists(), "not sent after the delay");
}

#[test]
fn unmount_is_clean_and_data_is_on_the_remote() {
    let mut m = MountedFs::start();
    fs::write(m.p("last.txt"), "before unmount").unwrap();
    let status = m.unmount().expect("daemon exits by itself");
    assert!(status.success(), "{status:?}\n{}", m.log());
    assert!(!is_mounted(m.path()));
    assert_eq!(
        fs::read_to_string(m.remote("last.txt")).unwrap(),
        "before unmount"
    );
}

#[test]
fn sigterm_unmounts_and_exits_zero() {
    let mut m = MountedFs::start();
    fs::write(m.p("f"), "x").unwrap();
    let out = Command::new("pkill")
        .arg("-TERM")
        .arg("-f")
        .arg(format!("mount -f .* {}$", m.path().display()))
        .status();
    // pkill is not everywhere; fall back to fusermount in unmount() otherwise.
    if out.is_ok_and(|s| s.success()) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while is_mounted(m.path()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!is_mounted(m.path()), "{}", m.log());
    }
    let status = m.unmount().expect("daemon exits");
    assert!(status.success(), "{status:?}\n{}", m.log());
}

#[test]
fn without_f_it_backgrounds_and_returns_once_mounted() {
    let srv = common::server::TestServer::start();
    let mnt = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_f7tfs"))
        .arg("mount")
        .arg(format!("{}:{}", srv.system(), srv.root().display()))
        .arg(mnt.path())
        .arg("--staging-dir")
        .arg(work.path().join("staging"))
        .arg("--cache-dir")
        .arg(work.path().join("cache"))
        .args(["--rate-limit", "0", "--writeback-delay", "0"])
        .env("XDG_CACHE_HOME", work.path())
        .env("FIRECREST_URL", srv.url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", srv.token_url())
        .output()
        .unwrap();
    let mounted = is_mounted(mnt.path());
    let guard = scopeguard(mnt.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(mounted, "the command returned before the mount was live");
    fs::write(mnt.path().join("bg.txt"), "daemon").unwrap();
    assert_eq!(
        fs::read_to_string(srv.root().join("bg.txt")).unwrap(),
        "daemon"
    );
    drop(guard);
    assert!(!is_mounted(mnt.path()));
    // The daemon exits by itself after the unmount (its log says so).
    let log = work.path().join("f7tfs/logs");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let text: String = fs::read_dir(&log)
            .unwrap()
            .map(|e| fs::read_to_string(e.unwrap().path()).unwrap_or_default())
            .collect();
        if text.contains("unmounted") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "daemon did not finish:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Unmounts `mp` on drop (lazily if needed), so a failed assertion leaves no mount behind.
fn scopeguard(mp: &std::path::Path) -> impl Drop + '_ {
    struct G<'a>(&'a std::path::Path);
    impl Drop for G<'_> {
        fn drop(&mut self) {
            if is_mounted(self.0) {
                let ok = Command::new("fusermount3").arg("-u").arg(self.0).status();
                if !ok.is_ok_and(|s| s.success()) {
                    let _ = Command::new("fusermount3")
                        .args(["-u", "-z"])
                        .arg(self.0)
                        .status();
                }
            }
        }
    }
    G(mp)
}

/// Writes and closes explicitly, returning close()'s error (std's drop ignores it).
fn write_and_close(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::fd::IntoRawFd;
    let mut f = fs::File::create(path)?;
    f.write_all(data)?;
    let fd = f.into_raw_fd();
    // SAFETY: `fd` was just released from the File and is closed exactly once.
    if unsafe { libc::close(fd) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

trait OrLog {
    fn unwrap_err_or_log(self, m: &MountedFs) -> std::io::Error;
}

impl OrLog for std::io::Result<()> {
    fn unwrap_err_or_log(self, m: &MountedFs) -> std::io::Error {
        match self {
            Err(e) => e,
            Ok(()) => panic!(
                "expected an error; remote has it: {}\n{}",
                m.remote("refused.txt").exists(),
                m.log()
            ),
        }
    }
}

#[test]
fn permission_denied_on_the_remote_is_eacces() {
    const USER: &str = "fireuser";
    if !common::server::ensure_user(USER) {
        eprintln!("SKIPPED permission_denied_on_the_remote_is_eacces: needs root to create {USER}");
        return;
    }
    let m = MountedFs::start_with(&[], |c| c.as_user = Some(USER.into()));
    // A directory the server's user may not enter.
    fs::create_dir(m.remote("secret")).unwrap();
    fs::set_permissions(m.remote("secret"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(m.remote("secret/inside"), "x").unwrap();
    let err = fs::read_dir(m.p("secret")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    // The served root belongs to root: a new file there is refused when it is closed.
    let err = write_and_close(&m.p("refused.txt"), b"data").unwrap_err_or_log(&m);
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    assert!(!m.remote("refused.txt").exists());
    // mkdir is refused at once.
    let err = fs::create_dir(m.p("nodir")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
}

#[test]
fn a_failed_upload_is_the_error_of_close_and_the_bytes_stay_staged() {
    let mut m = MountedFs::start();
    // Every upload fails (after the client's retries), so close() must report it.
    m.server().set_faults(&["ops/upload:500=1.0"]);
    let err = write_and_close(&m.p("precious.txt"), b"keep me").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(!m.remote("precious.txt").exists());
    let manifests: Vec<String> = fs::read_dir(m.staging_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert!(manifests[0].contains("precious.txt") && manifests[0].contains("failed"));
    // Inside the mount the data is still readable (read-your-writes).
    assert_eq!(fs::read_to_string(m.p("precious.txt")).unwrap(), "keep me");
    // Once the server works again, unmount sends it.
    m.server().set_faults(&[]);
    let status = m.unmount().expect("daemon exits");
    assert!(status.success());
    assert_eq!(
        fs::read_to_string(m.remote("precious.txt")).unwrap(),
        "keep me"
    );
}

/// A file that grows on the remote is read whole once the mount sees the new version, never
/// cut at the size the kernel cached for the old one (the open that finds the new version
/// drops the kernel's attributes).
#[test]
fn a_file_grown_on_the_remote_is_never_read_cut_at_its_old_size() {
    let m = MountedFs::start_with(&["--attr-ttl", "1", "--dir-ttl", "1"], |_| {});
    fs::create_dir(m.remote("rc")).unwrap();
    let mut previous = String::from("start\n");
    fs::write(m.remote("rc/h"), &previous).unwrap();
    m.sh("cat rc/h > /dev/null");
    for round in 0..6u8 {
        let content = format!(
            "{}\n",
            char::from(b'a' + round)
                .to_string()
                .repeat(20 + 8 * usize::from(round))
        );
        fs::write(m.remote("rc/h"), &content).unwrap();
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(2500) {
            let got = fs::read_to_string(m.p("rc/h")).unwrap();
            assert!(
                got == previous || got == content,
                "round {round}: read {got:?}, remote had {previous:?} then {content:?}"
            );
            m.sh("ls -l rc > /dev/null");
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        assert_eq!(
            fs::read_to_string(m.p("rc/h")).unwrap(),
            content,
            "round {round}"
        );
        previous = content;
    }
}

/// Python's open() asks isatty (an ioctl) of every file, tools fsync directories and try
/// copy_file_range: answered quietly, not one "[Not Implemented]" warning each.
#[test]
fn unsupported_requests_are_answered_quietly() {
    let m = MountedFs::start();
    m.sh("python3 -c \"open('p.txt', 'w').write('x'); print(open('p.txt').read())\"");
    m.sh("python3 -c \"import os; fd = os.open('.', os.O_RDONLY); os.fsync(fd); os.close(fd)\"");
    m.sh("cp p.txt q.txt && cmp p.txt q.txt");
    let log = m.log();
    assert!(!log.contains("Not Implemented"), "{log}");
}
