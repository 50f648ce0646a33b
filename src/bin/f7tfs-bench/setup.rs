//! The benchmark's world: fixture trees written straight into the served root (the remote
//! side) and a local source copy, the `f7tfs serve` processes, the f7tfs and sshfs mounts, and
//! the private sshd (own host key, own authorized key, loopback port; the system's sshd and its
//! configuration are never touched).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};

use crate::procs::{sleep, tail, Ctx, Mount, Proc, R};

/// Fixture sizes.
pub struct Sizes {
    /// Size of the large file, bytes.
    pub big: u64,
}

fn write_file(p: &Path, data: &[u8]) -> R<()> {
    std::fs::write(p, data).ctx(&format!("write {}", p.display()))
}

/// Writes the fixtures: in `root` (served) and in `local` (sources for copies into the mount).
pub fn fixtures(root: &Path, local: &Path, sizes: &Sizes, targets: &[&str]) -> R<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    // 1: a directory of 2,000 files.
    let d = root.join("ls2000");
    std::fs::create_dir_all(&d).ctx("mkdir ls2000")?;
    for i in 0..2000 {
        let n = rng.random_range(0..200usize);
        write_file(&d.join(format!("file-{i:04}.txt")), &vec![b'a'; n])?;
    }
    // 2: 200 directories (10 x 20) holding 5,000 files (25 each).
    for a in 0..10 {
        for b in 0..20 {
            let d = root.join(format!("tree/d{a:02}/s{b:02}"));
            std::fs::create_dir_all(&d).ctx("mkdir tree")?;
            for f in 0..25 {
                let n = rng.random_range(0..2048usize);
                write_file(&d.join(format!("f{f:02}.dat")), &vec![b'x'; n])?;
            }
        }
    }
    // 3: 500 files of 4 KiB, on both sides.
    for side in [root, local] {
        let d = side.join("small500");
        std::fs::create_dir_all(&d).ctx("mkdir small500")?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for i in 0..500 {
            let mut buf = vec![0u8; 4096];
            rng.fill_bytes(&mut buf);
            write_file(&d.join(format!("s{i:03}.bin")), &buf)?;
        }
    }
    // 4/5: the large file (random, so nothing on the way can compress it).
    {
        let p = root.join("big.bin");
        let mut f = std::io::BufWriter::new(std::fs::File::create(&p).ctx("create big")?);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = sizes.big;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            rng.fill_bytes(&mut buf[..n]);
            f.write_all(&buf[..n]).ctx("write big")?;
            left -= n as u64;
        }
        f.flush().ctx("flush big")?;
    }
    // 6: the rsync source, 1,000 files in 10 directories, 1-3 KiB.
    for a in 0..10 {
        let d = local.join(format!("rs1000/dir{a}"));
        std::fs::create_dir_all(&d).ctx("mkdir rs1000")?;
        for f in 0..100 {
            let mut buf = vec![0u8; rng.random_range(1024..3072usize)];
            rng.fill_bytes(&mut buf);
            write_file(&d.join(format!("r{f:03}.bin")), &buf)?;
        }
    }
    // 7: a 1 MB text file per target (each edits its own copy).
    let mut text = String::new();
    let mut i = 0;
    while text.len() < 1_000_000 {
        text.push_str(&format!(
            "line {i:06} the quick brown fox jumps over the lazy dog\n"
        ));
        i += 1;
    }
    for t in targets {
        write_file(&root.join(format!("vim_{t}.txt")), text.as_bytes())?;
    }
    Ok(())
}

/// A running `f7tfs serve` and the environment it printed.
pub struct Server {
    /// FIRECREST_URL.
    pub url: String,
    /// AUTH_TOKEN_URL.
    pub token_url: String,
    /// FIRECREST_SYSTEM.
    pub system: String,
    _proc: Proc,
}

impl Server {
    /// Starts `f7tfs serve ROOT --listen 127.0.0.1:PORT ...` (0: any free port) and waits for
    /// its `export` lines (which carry `--public-url` when one is given).
    pub fn start(
        bin: &Path,
        root: &Path,
        work: &Path,
        name: &str,
        port: u16,
        extra: &[String],
    ) -> R<Self> {
        let out = work.join(format!("{name}.out"));
        let err = work.join(format!("{name}.log"));
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg(root)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("F7TFS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).ctx("server stdout")?)
            .stderr(std::fs::File::create(&err).ctx("server log")?);
        let mut proc = Proc::spawn(name, &mut cmd)?;
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if text.contains("FIRECREST_SYSTEM=") {
                let get = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                        .map(str::to_string)
                        .ok_or_else(|| format!("{name}: no {k} in its output"))
                };
                return Ok(Server {
                    url: get("FIRECREST_URL")?,
                    token_url: get("AUTH_TOKEN_URL")?,
                    system: get("FIRECREST_SYSTEM")?,
                    _proc: proc,
                });
            }
            if let Some(s) = proc.exited() {
                return Err(format!("{name} exited ({s}):\n{}", tail(&err, 10)));
            }
            if Instant::now() > end {
                return Err(format!("{name}: no address after 20 s"));
            }
            sleep(Duration::from_millis(20))?;
        }
    }
}

/// How to reach a server from a mount (possibly through the delay proxy).
pub struct Endpoint {
    /// FIRECREST_URL for the client.
    pub url: String,
    /// AUTH_TOKEN_URL for the client.
    pub token_url: String,
    /// System name.
    pub system: String,
}

/// Mounts `SYSTEM:ROOT` with `f7tfs mount -f` (fresh staging and cache directories).
pub fn mount_f7tfs(
    bin: &Path,
    ep: &Endpoint,
    root: &Path,
    mp: &Path,
    work: &Path,
    extra: &str,
) -> R<Mount> {
    static MOUNTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = MOUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = work.join(format!("mount-{n}"));
    std::fs::create_dir_all(&scratch).ctx("mount scratch")?;
    let mut cmd = Command::new(bin);
    cmd.arg("mount")
        .arg("-f")
        .arg(format!("{}:{}", ep.system, root.display()))
        .arg(mp)
        .arg("--staging-dir")
        .arg(scratch.join("staging"))
        .arg("--cache-dir")
        .arg(scratch.join("cache"))
        .args(extra.split_whitespace())
        .env("FIRECREST_URL", &ep.url)
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", &ep.token_url)
        .env_remove("FIRECREST_TOKEN_COMMAND")
        .env("F7TFS_LOG", "warn")
        .env("NO_COLOR", "1");
    Mount::start("f7tfs mount", &mut cmd, mp, &scratch.join("daemon.log"))
}

/// A private sshd on a loopback port, with its own keys under `dir`.
pub struct Sshd {
    /// Its port.
    pub port: u16,
    /// The client key for root.
    pub key: PathBuf,
    _proc: Proc,
}

fn keygen(path: &Path) -> R<()> {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .ctx("ssh-keygen")?
        .success();
    if ok {
        Ok(())
    } else {
        Err("ssh-keygen failed".into())
    }
}

impl Sshd {
    /// Starts `sshd -D -e -f DIR/sshd_config` on a free loopback port.
    pub fn start(dir: &Path) -> R<Self> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or("sshd not installed (apt-get install -y openssh-server sshfs)")?;
        std::fs::create_dir_all(dir).ctx("ssh dir")?;
        let host = dir.join("host_ed25519");
        let key = dir.join("id_ed25519");
        keygen(&host)?;
        keygen(&key)?;
        let pubkey = std::fs::read_to_string(dir.join("id_ed25519.pub")).ctx("read pub")?;
        write_file(&dir.join("authorized_keys"), pubkey.as_bytes())?;
        let sftp = [
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("internal-sftp");
        let port = crate::procs::free_port()?;
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PidFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             Subsystem sftp {sftp}\n",
            host.display(),
            dir.join("authorized_keys").display(),
            dir.join("sshd.pid").display()
        );
        write_file(&dir.join("sshd_config"), config.as_bytes())?;
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").ctx("mkdir /run/sshd")?;
        let log = dir.join("sshd.log");
        let mut cmd = Command::new(sshd);
        cmd.arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).ctx("sshd log")?);
        let mut proc = Proc::spawn("sshd", &mut cmd)?;
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(s) = proc.exited() {
                return Err(format!("sshd exited ({s}):\n{}", tail(&log, 10)));
            }
            if Instant::now() > end {
                return Err("sshd not listening after 10 s".into());
            }
            sleep(Duration::from_millis(20))?;
        }
        Ok(Self {
            port,
            key,
            _proc: proc,
        })
    }
}

/// Mounts `root@127.0.0.1:ROOT` with `sshfs -f` through `port` (the delay proxy), defaults
/// otherwise.
pub fn mount_sshfs(key: &Path, port: u16, root: &Path, mp: &Path, work: &Path) -> R<Mount> {
    let mut cmd = Command::new("sshfs");
    cmd.arg("-f")
        .arg(format!("root@127.0.0.1:{}", root.display()))
        .arg(mp)
        .arg("-p")
        .arg(port.to_string())
        .arg("-o")
        .arg(format!(
            "IdentityFile={},StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,\
             BatchMode=yes,LogLevel=ERROR",
            key.display()
        ));
    Mount::start("sshfs", &mut cmd, mp, &work.join("sshfs.log"))
}
