//! Running the commands a real FirecREST runs over SSH, here as local subprocesses, as the
//! served user (`--as-user`): uid, gid and supplementary groups are switched in the child
//! before `exec`, so permission errors are the kernel's own and their stderr texts are the
//! real ones. Every byte the server reads or writes under ROOT goes through such a child.
//!
//! Output is captured up to a cap (the real server's SSH buffer = `max_ops_file_size`);
//! beyond it the child is killed and the caller answers 413.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// The local user all file work runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Identity {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub home: PathBuf,
    /// Whether children must switch to this identity (we are someone else, i.e. root).
    pub switch: bool,
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

fn passwd_from(pw: &libc::passwd) -> Passwd {
    // SAFETY: getpwnam_r/getpwuid_r filled `pw` with pointers into our buffer, valid C strings.
    let (name, home) = unsafe {
        (
            CStr::from_ptr(pw.pw_name).to_string_lossy().into_owned(),
            CStr::from_ptr(pw.pw_dir).to_string_lossy().into_owned(),
        )
    };
    Passwd {
        name,
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        home: PathBuf::from(home),
    }
}

fn lookup_user(name: Option<&str>) -> io::Result<Option<Passwd>> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: zeroed passwd is a valid out-parameter; the buffer outlives the call and the
    // strings copied out of it in `passwd_from`.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = match name {
        Some(n) => {
            let c = CString::new(n).map_err(|_| io::Error::other("user name contains NUL"))?;
            // SAFETY: valid pointers and buffer length, see above.
            unsafe {
                libc::getpwnam_r(
                    c.as_ptr(),
                    &mut pw,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            }
        }
        // SAFETY: as above.
        None => unsafe {
            libc::getpwuid_r(
                libc::geteuid(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        },
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if result.is_null() {
        return Ok(None);
    }
    Ok(Some(passwd_from(&pw)))
}

fn group_list(name: &str, gid: u32) -> io::Result<Vec<u32>> {
    let c = CString::new(name).map_err(|_| io::Error::other("user name contains NUL"))?;
    let mut n: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; getgrouplist updates `count`.
        let rc = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return Ok(groups);
        }
        if count <= n {
            n *= 2;
        } else {
            n = count;
        }
        if n > 65536 {
            return Err(io::Error::other("too many groups"));
        }
    }
}

impl Identity {
    /// The user named `as_user`, or the server's own user. Switching to another user needs
    /// root; asking for it otherwise is an error.
    pub(crate) fn resolve(as_user: Option<&str>) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let pw = lookup_user(as_user)
            .map_err(|e| format!("cannot look up user: {e}"))?
            .ok_or_else(|| match as_user {
                Some(n) => format!("--as-user: no such local user {n:?}"),
                None => "the server's own user has no passwd entry".to_string(),
            })?;
        let switch = pw.uid != euid;
        if switch && euid != 0 {
            return Err(format!(
                "--as-user {} needs the server to run as root (it runs as uid {euid})",
                pw.name
            ));
        }
        let groups =
            group_list(&pw.name, pw.gid).map_err(|e| format!("cannot list groups: {e}"))?;
        Ok(Self {
            name: pw.name,
            uid: pw.uid,
            gid: pw.gid,
            groups,
            home: pw.home,
            switch,
        })
    }
}

/// What a child reads on stdin.
pub(crate) enum Input {
    Null,
    Bytes(Vec<u8>),
    /// A reader owned by the server (e.g. a staged S3 object), streamed in.
    Reader(Box<dyn AsyncRead + Send + Unpin>),
    /// Keep stdin open and never write: the child sees no EOF (the empty-upload quirk).
    Hang,
}

/// Where a child's stdout goes.
pub(crate) enum Sink {
    /// Capture up to this many bytes; more sets `overflow` and kills the child.
    Capture(usize),
    /// Stream into a server-owned file.
    File(PathBuf),
    /// Read and drop (job output that Slurm would write to the log).
    Discard,
}

/// The result of one command.
#[derive(Debug)]
pub(crate) struct CmdOutput {
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
    /// Stdout exceeded the capture cap (the child was killed).
    pub overflow: bool,
    /// Bytes written to a `Sink::File`.
    pub written: u64,
}

/// Spawns commands as the served user.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    pub ident: Identity,
    /// `timeout N` wrapped around ops commands (the real `ssh.timeout.command_execution`).
    pub timeout: Duration,
    /// `TZ` of the commands: the served machine's local time zone.
    pub tz: Option<String>,
}

impl Runner {
    fn command(&self, argv: &[&OsStr], with_timeout: bool) -> Command {
        let mut cmd = if with_timeout {
            let mut c = Command::new("timeout");
            c.arg(self.timeout.as_secs().max(1).to_string());
            c.args(argv);
            c
        } else {
            let mut c = Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        };
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LANG", "C.UTF-8")
            .env("LC_ALL", "C.UTF-8")
            .env("HOME", &self.ident.home)
            .env("USER", &self.ident.name)
            .env("LOGNAME", &self.ident.name)
            .current_dir("/")
            .kill_on_drop(true);
        if let Some(tz) = &self.tz {
            cmd.env("TZ", tz);
        }
        if self.ident.switch {
            let (uid, gid) = (self.ident.uid, self.ident.gid);
            let groups: Vec<libc::gid_t> = self.ident.groups.clone();
            // SAFETY: the closure runs in the forked child before exec and only calls the
            // async-signal-safe setgroups/setgid/setuid; std's own uid/gid switching is not
            // used because it runs after pre_exec hooks would need the groups dropped.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setgroups(groups.len(), groups.as_ptr()) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setgid(gid) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if libc::setuid(uid) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Runs an ops command wrapped in `timeout`, stdin closed, stdout captured up to `cap`.
    pub(crate) async fn run(&self, argv: &[&OsStr], cap: usize) -> io::Result<CmdOutput> {
        self.run_with(argv, Input::Null, Sink::Capture(cap), true)
            .await
    }

    /// Runs a command with the given stdin and stdout handling.
    pub(crate) async fn run_with(
        &self,
        argv: &[&OsStr],
        input: Input,
        sink: Sink,
        with_timeout: bool,
    ) -> io::Result<CmdOutput> {
        let mut cmd = self.command(argv, with_timeout);
        cmd.stdin(match input {
            Input::Null => Stdio::null(),
            _ => Stdio::piped(),
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr pipe"))?;

        let feed = async move {
            let Some(mut stdin) = stdin else {
                return Ok::<_, io::Error>(None);
            };
            match input {
                Input::Null => {}
                Input::Bytes(b) => {
                    // A child that exits early (bad target dir) closes the pipe: not our error.
                    let _ = stdin.write_all(&b).await;
                }
                Input::Reader(mut r) => {
                    let _ = tokio::io::copy(&mut r, &mut stdin).await;
                }
                Input::Hang => return Ok(Some(stdin)),
            }
            drop(stdin);
            Ok(None)
        };
        let read_err = async move {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf).await;
            buf
        };
        let read_out = async move {
            let mut overflow = false;
            let mut written = 0u64;
            let mut captured = Vec::new();
            match sink {
                Sink::Capture(cap) => {
                    let mut chunk = vec![0u8; 64 * 1024];
                    loop {
                        let n = stdout.read(&mut chunk).await?;
                        if n == 0 {
                            break;
                        }
                        if captured.len() + n > cap {
                            overflow = true;
                            break;
                        }
                        captured.extend_from_slice(&chunk[..n]);
                    }
                }
                Sink::Discard => {
                    written = tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await?;
                }
                Sink::File(path) => {
                    let mut f = tokio::fs::File::create(&path).await?;
                    written = tokio::io::copy(&mut stdout, &mut f).await?;
                    f.flush().await?;
                }
            }
            Ok::<_, io::Error>((captured, overflow, written))
        };
        let (held_stdin, err_bytes, out) = tokio::join!(feed, read_err, read_out);
        let (stdout_bytes, overflow, written) = out?;
        if overflow {
            let _ = child.start_kill();
        }
        let status = child.wait().await?;
        drop(held_stdin);
        Ok(CmdOutput {
            status: exit_code(status),
            stdout: stdout_bytes,
            stderr: String::from_utf8_lossy(&err_bytes).into_owned(),
            overflow,
            written,
        })
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
