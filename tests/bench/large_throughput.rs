//! Throughput of one large file through the mount next to a plain HTTP client moving the
//! same bytes through the same server's staging area, in one run, as a ratio (issue 4).
//!
//! ```text
//! cargo build --release --bin f7tfs --example large_throughput
//! target/release/examples/large_throughput [SIZE_MB]      # default 300
//! ```
//!
//! It starts `f7tfs serve` in-process over a temporary directory (defaults of `f7tfs serve`:
//! 5 MiB direct limit and part size; job delay lowered to 200 ms for both sides), mounts it
//! with the `f7tfs` binary next to this example, then:
//! - write: `std::fs::copy` of a local random file into the mount (close returns once the
//!   remote has it) vs. the plain client: `transfer/upload`, the parts PUT one after the
//!   other (as curl would), the completion, polling the job;
//! - read: reading a file the mount has never seen into a sha256 vs. the plain client:
//!   `transfer/download`, polling the job, one GET of the whole object.
//!
//! Both sides check sha256. A benchmark, never a test: it prints, it does not assert speed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use f7tfs::server::{ServeConfig, ServerHandle};
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Mount {
    child: Child,
    mp: PathBuf,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mp).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("fusermount3")
            .args(["-u", "-z"])
            .arg(&self.mp)
            .status();
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha_file(p: &Path) -> Res<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn mb_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

struct Plain {
    http: reqwest::Client,
    base: String,
    system: String,
    token: String,
}

impl Plain {
    async fn wait_job(&self, id: &str) -> Res<()> {
        let url = format!("{}/compute/{}/jobs/{id}", self.base, self.system);
        loop {
            let r = self.http.get(&url).bearer_auth(&self.token).send().await?;
            if r.status().is_success() {
                let v: Value = r.json().await?;
                let state = v["jobs"][0]["status"]["state"].to_string();
                if state.contains("COMPLETED") {
                    return Ok(());
                }
                if state.contains("FAILED") || state.contains("CANCELLED") {
                    return Err(format!("job {id} ended {state}").into());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn download(&self, path: &str) -> Res<String> {
        let v: Value = self
            .http
            .post(format!(
                "{}/filesystem/{}/transfer/download",
                self.base, self.system
            ))
            .bearer_auth(&self.token)
            .json(&json!({"path": path, "transferDirectives": {"transferMethod": "s3"}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let url = v["transferDirectives"]["downloadUrl"]
            .as_str()
            .ok_or("no downloadUrl")?
            .to_string();
        self.wait_job(v["transferJob"]["jobId"].as_str().ok_or("no jobId")?)
            .await?;
        let mut resp = self.http.get(url).send().await?.error_for_status()?;
        let mut h = Sha256::new();
        while let Some(chunk) = resp.chunk().await? {
            h.update(&chunk);
        }
        Ok(hex(&h.finalize()))
    }

    async fn upload(&self, path: &str, local: &Path) -> Res<()> {
        let size = std::fs::metadata(local)?.len();
        let v: Value = self
            .http
            .post(format!(
                "{}/filesystem/{}/transfer/upload",
                self.base, self.system
            ))
            .bearer_auth(&self.token)
            .json(&json!({"path": path,
                "transferDirectives": {"transferMethod": "s3", "fileSize": size}}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let d = &v["transferDirectives"];
        let part = d["maxPartSize"].as_u64().ok_or("no maxPartSize")?;
        let urls = d["partsUploadUrls"].as_array().ok_or("no part URLs")?;
        let mut f = std::fs::File::open(local)?;
        let mut xml = String::from(
            "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">",
        );
        for (i, url) in urls.iter().enumerate() {
            let len = part.min(size - i as u64 * part) as usize;
            let mut buf = vec![0u8; len];
            f.read_exact(&mut buf)?;
            let r = self
                .http
                .put(url.as_str().ok_or("bad URL")?)
                .body(buf)
                .send()
                .await?
                .error_for_status()?;
            let etag = r
                .headers()
                .get("etag")
                .and_then(|e| e.to_str().ok())
                .ok_or("no ETag")?
                .to_string();
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        self.http
            .post(d["completeUploadUrl"].as_str().ok_or("no completion URL")?)
            .body(xml)
            .send()
            .await?
            .error_for_status()?;
        self.wait_job(v["transferJob"]["jobId"].as_str().ok_or("no jobId")?)
            .await
    }
}

fn mount(server: &ServerHandle, root: &Path, work: &Path) -> Res<Mount> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("f7tfs"))
        .ok_or("no binary dir")?;
    if !bin.exists() {
        return Err(format!(
            "{} missing: cargo build --release --bin f7tfs",
            bin.display()
        )
        .into());
    }
    let mp = work.join("mnt");
    std::fs::create_dir_all(&mp)?;
    let child = Command::new(bin)
        .arg("mount")
        .arg("-f")
        .arg(format!("{}:{}", server.system(), root.display()))
        .arg(&mp)
        .arg("--staging-dir")
        .arg(work.join("staging"))
        .arg("--cache-dir")
        .arg(work.join("cache"))
        .args(["--rate-limit", "0"])
        .env("FIRECREST_URL", server.url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", server.token_url())
        .env("F7TFS_LOG", "info")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(work.join("daemon.log"))?)
        .spawn()?;
    let m = Mount { child, mp };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f7tfs::mount::is_mounted(&m.mp) {
        if Instant::now() > deadline {
            return Err("mount not live after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(m)
}

fn main() -> Res<()> {
    let size_mb: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(300);
    let size = size_mb * 1_000_000;
    let work = tempfile::Builder::new().prefix("f7tfs-bench-").tempdir()?;
    let root = work.path().join("root");
    std::fs::create_dir_all(&root)?;
    let root = root.canonicalize()?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut cfg = ServeConfig::new(&root);
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.job_delay = Duration::from_millis(200);
    cfg.upload_poll_interval = Duration::from_millis(50);
    let server = rt.block_on(f7tfs::server::spawn(cfg))?;
    let plain = Plain {
        http: reqwest::Client::builder().no_proxy().build()?,
        base: server.url(),
        system: server.system(),
        token: server.issue_token(Duration::from_secs(3600)),
    };

    // Source data: random, so nothing compresses or dedups.
    let src = work.path().join("src.bin");
    {
        let mut data = vec![0u8; size as usize];
        rand::rngs::StdRng::seed_from_u64(4).fill_bytes(&mut data);
        std::fs::write(&src, &data)?;
    }
    let want = sha_file(&src)?;
    std::fs::copy(&src, root.join("read-plain.bin"))?;
    std::fs::copy(&src, root.join("read-mount.bin"))?;
    let m = mount(&server, &root, work.path())?;

    // Write.
    server.reset_stats();
    let t = Instant::now();
    std::fs::copy(&src, m.mp.join("write-mount.bin"))?;
    let mount_write = t.elapsed();
    let mount_write_calls = server.stats().total_calls();
    let t = Instant::now();
    rt.block_on(plain.upload(&format!("{}/write-plain.bin", root.display()), &src))?;
    let plain_write = t.elapsed();
    for f in ["write-mount.bin", "write-plain.bin"] {
        if sha_file(&root.join(f))? != want {
            return Err(format!("{f}: wrong content on the server").into());
        }
    }

    // Read.
    server.reset_stats();
    let t = Instant::now();
    let got = sha_file(&m.mp.join("read-mount.bin"))?;
    let mount_read = t.elapsed();
    let mount_read_calls = server.stats().total_calls();
    let t = Instant::now();
    let got_plain = rt.block_on(plain.download(&format!("{}/read-plain.bin", root.display())))?;
    let plain_read = t.elapsed();
    if got != want || got_plain != want {
        return Err("read: sha256 mismatch".into());
    }
    drop(m);

    println!("large-file throughput, {size_mb} MB random file, f7tfs serve on loopback (job delay 200 ms)");
    println!(
        "{:<6} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "", "mount s", "mount MB/s", "plain s", "plain MB/s", "ratio"
    );
    for (name, a, b) in [
        ("write", mount_write, plain_write),
        ("read", mount_read, plain_read),
    ] {
        println!(
            "{name:<6} {:>12.2} {:>12.1} {:>12.2} {:>12.1} {:>8.2}",
            a.as_secs_f64(),
            mb_s(size, a),
            b.as_secs_f64(),
            mb_s(size, b),
            mb_s(size, a) / mb_s(size, b)
        );
    }
    println!(
        "calls through the mount: write {mount_write_calls}, read {mount_read_calls} \
         (ratio = mount MB/s / plain MB/s; plain = transfer job + sequential part PUTs, or \
         transfer job + one GET)"
    );
    drop(server);
    Ok(())
}
