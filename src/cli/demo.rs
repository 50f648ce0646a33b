//! `f7tfs demo [MOUNTPOINT] [--root DIR]`: a first look in one process. The bundled FirecREST
//! server (`server::spawn` on 127.0.0.1:0, a fresh random client secret) serves a folder of
//! sample files, and the real mount code mounts it at MOUNTPOINT (default `./f7tfs-demo`,
//! created if missing). Ctrl-C unmounts cleanly, uploads finished, exit 0.
//!
//! Without `--root` the sample folder is `$XDG_DATA_HOME/f7tfs/demo` (or
//! `~/.local/share/f7tfs/demo`), created on first run: a README, notes, code, two PNG images
//! and an SVG, a small JSON file and a 10 MB CSV that is read through the staging area. Edits
//! made through the mount persist there between runs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Credentials, MountConfig, RemoteConfig};
use crate::server::{self, ServeConfig};

/// Try f7tfs: serve sample files with the bundled FirecREST server and mount them.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where to mount (created if missing).
    #[arg(default_value = "f7tfs-demo")]
    pub mountpoint: PathBuf,
    /// Serve this directory instead of the sample files (default: ~/.local/share/f7tfs/demo,
    /// created with sample files on first run).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Latency added to every API call, milliseconds (to feel a remote site; 0 = local speed).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
}

/// `$XDG_DATA_HOME/f7tfs/demo` or `~/.local/share/f7tfs/demo`.
pub fn default_root() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("f7tfs/demo");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/share/f7tfs/demo"),
        None => std::env::temp_dir().join("f7tfs-demo-root"),
    }
}

/// Runs `f7tfs demo` until Ctrl-C or SIGTERM.
pub fn run(args: DemoArgs) -> Result<(), String> {
    crate::logging::init_filtered(None, "warn,fuser=off");
    let root = match args.root {
        Some(r) => r,
        None => {
            let r = default_root();
            if !r.exists() {
                create_samples(&r).map_err(|e| {
                    format!("cannot create the sample files in {}: {e}", r.display())
                })?;
                eprintln!("f7tfs demo: created sample files in {}", r.display());
            }
            r
        }
    };
    let mountpoint = &args.mountpoint;
    if !mountpoint.exists() {
        std::fs::create_dir_all(mountpoint).map_err(|e| {
            format!(
                "cannot create the mount point {}: {e}",
                mountpoint.display()
            )
        })?;
    }
    let mountpoint = std::fs::canonicalize(mountpoint)
        .map_err(|e| format!("mount point {}: {e}", mountpoint.display()))?;

    let rt = crate::mount::runtime()?;
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let mut serve = ServeConfig::new(&root);
    serve.listen = ([127, 0, 0, 1], 0).into();
    serve.system = "demo".into();
    serve.client_secret = secret.clone();
    serve.job_delay = Duration::from_millis(100);
    serve.upload_poll_interval = Duration::from_millis(100);
    serve.latency = Duration::from_millis(args.latency_ms);
    let server = rt
        .block_on(server::spawn(serve))
        .map_err(|e| format!("cannot start the bundled server: {e}"))?;
    let served = server.root();

    let mut remote = RemoteConfig::new(
        server.url(),
        server.system(),
        Credentials::ClientCredentials {
            token_url: server.token_url(),
            client_id: "f7tfs".into(),
            client_secret: secret,
        },
    );
    remote.rate_per_minute = 0;
    let mut mount = MountConfig::new(served.to_string_lossy(), &mountpoint);
    mount.foreground = true;
    let state = crate::config::default_cache_root().join("demo");
    mount.staging.dir = state.join("staging");
    mount.cache.cache_dir = state.join("content");
    mount.validate()?;

    let (client, ids, fsname) = crate::mount::connect(&rt, &remote, &mount)?;
    let url = server.url();
    let shown = display_path(&mountpoint);
    let calls = crate::mount::call_counter(&client);
    let result = crate::mount::serve_mount(
        rt,
        client,
        &mount,
        ids,
        fsname,
        || {
            println!(
                "f7tfs demo: mounted {} at {}",
                served.display(),
                mountpoint.display()
            );
            println!("  served by the bundled FirecREST v2 server at {url} (system \"demo\")");
            println!("  try:   ls -l {shown}");
            println!("         cat {shown}/README.md");
            println!(
                "         head -3 {shown}/data/measurements.csv   # 10 MB: read through staging"
            );
            println!(
                "         echo hello > {shown}/notes/hello.txt    # lands in {}",
                served.display()
            );
            println!(
                "  leave: press Ctrl-C (unmounts cleanly; edits stay in {})",
                served.display()
            );
            let _ = std::io::stdout().flush();
        },
        calls,
    );
    drop(server);
    result?;
    println!("f7tfs demo: unmounted {}", mountpoint.display());
    Ok(())
}

/// `./x` for paths under the working directory, else the absolute path.
fn display_path(p: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            p.strip_prefix(cwd)
                .ok()
                .map(|r| format!("./{}", r.display()))
        })
        .filter(|r| r != "./")
        .unwrap_or_else(|| p.display().to_string())
}

const README: &str = "# Welcome to the f7tfs demo

Everything in this folder travels through FirecREST, the REST API that HPC centres such as CSCS
put in front of their storage. `f7tfs demo` started a small FirecREST server on your machine and
mounted it here, exactly as `f7tfs mount daint:/capstor/scratch/cscs/$USER ~/scratch` mounts
your scratch space at CSCS.

Things to try:

    ls -l                         # one `ls` call per directory, however many files
    cat notes/todo.txt
    head -3 data/measurements.csv # 10 MB: staged by a transfer job, read in ranges
    echo 'hello' > notes/hello.txt  # on the server 2 s after close (write-back delay)
    cp -r code code-copy && rm -r code-copy
    vim notes/todo.txt            # editors' save-by-rename works

When you are done, press Ctrl-C where `f7tfs demo` runs: it unmounts and keeps your edits.
";

const TODO: &str = "- [x] mount the demo
- [ ] read the 10 MB CSV with `head` and `tail`
- [ ] edit this file and save
- [ ] mount real storage: f7tfs mount daint:/capstor/scratch/cscs/$USER ~/scratch
";

const HAIKU: &str = "files far in the Alps\nappear here as if local\nclose, and they are there\n";

const HELLO_PY: &str = "#!/usr/bin/env python3
\"\"\"Counts the rows of the demo's measurements per station.\"\"\"
import collections
import csv
import sys

path = sys.argv[1] if len(sys.argv) > 1 else \"../data/measurements.csv\"
counts = collections.Counter(row[\"station\"] for row in csv.DictReader(open(path)))
for station, n in sorted(counts.items()):
    print(f\"{station}: {n} rows\")
";

const FIB_RS: &str = "//! Prints the first Fibonacci numbers.
fn main() {
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..20 {
        print!(\"{a} \");
        (a, b) = (b, a + b);
    }
    println!();
}
";

const MAKEFILE: &str = "fib: fib.rs\n\trustc -O fib.rs\n\nstations: hello.py\n\tpython3 hello.py\n";

const LOGO_SVG: &str = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"200\" height=\"120\" viewBox=\"0 0 200 120\">
  <rect width=\"200\" height=\"120\" rx=\"14\" fill=\"#16324f\"/>
  <path d=\"M20 95 L70 35 L95 65 L120 40 L180 95 Z\" fill=\"#e8eef5\"/>
  <text x=\"100\" y=\"28\" font-family=\"sans-serif\" font-size=\"20\" fill=\"#f5b942\"
        text-anchor=\"middle\">f7tfs</text>
</svg>
";

/// Writes the sample tree into a fresh directory beside `root`, then renames it into place.
pub fn create_samples(root: &Path) -> std::io::Result<()> {
    let parent = root.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(".f7tfs-demo-")
        .tempdir_in(parent)?;
    let t = tmp.path();
    for dir in ["notes", "code", "images", "data", "empty"] {
        std::fs::create_dir(t.join(dir))?;
    }
    std::fs::write(t.join("README.md"), README)?;
    std::fs::write(t.join("notes/todo.txt"), TODO)?;
    std::fs::write(t.join("notes/haiku.txt"), HAIKU)?;
    std::fs::write(t.join("code/hello.py"), HELLO_PY)?;
    std::fs::write(t.join("code/fib.rs"), FIB_RS)?;
    std::fs::write(t.join("code/Makefile"), MAKEFILE)?;
    std::fs::write(t.join("images/logo.svg"), LOGO_SVG)?;
    std::fs::write(
        t.join("images/gradient.png"),
        png(160, 100, |x, y| {
            [(x * 255 / 159) as u8, (y * 255 / 99) as u8, 180]
        }),
    )?;
    std::fs::write(
        t.join("images/checkers.png"),
        png(96, 96, |x, y| {
            if (x / 12 + y / 12) % 2 == 0 {
                [22, 50, 79]
            } else {
                [245, 185, 66]
            }
        }),
    )?;
    std::fs::write(
        t.join("data/stations.json"),
        "{\n  \"stations\": [\n    {\"id\": \"station-01\", \"site\": \"Lugano\"},\n    \
         {\"id\": \"station-02\", \"site\": \"Davos\"},\n    {\"id\": \"station-03\", \"site\": \
         \"Zurich\"}\n  ]\n}\n",
    )?;
    write_measurements(&t.join("data/measurements.csv"), 10 * 1024 * 1024)?;
    std::os::unix::fs::symlink("notes/todo.txt", t.join("todo-link"))?;
    std::fs::set_permissions(t, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let kept = tmp.keep();
    std::fs::rename(&kept, root).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&kept);
    })
}

/// About `bytes` of CSV rows: time, station, temperature, humidity (deterministic).
fn write_measurements(path: &Path, bytes: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(b"time,station,temperature_c,humidity_pct\n")?;
    let mut written = 0u64;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut i: u64 = 0;
    while written < bytes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let secs = 1_767_225_600 + i * 60;
        let t = jiff::Timestamp::from_second(secs as i64).unwrap_or_default();
        let station = 1 + i % 3;
        let temp = (seed % 3500) as f64 / 100.0 - 5.0;
        let hum = 20 + (seed >> 20) % 80;
        let line = format!(
            "{},station-{station:02},{temp:.2},{hum}\n",
            t.strftime("%Y-%m-%dT%H:%M:%SZ")
        );
        out.write_all(line.as_bytes())?;
        written += line.len() as u64;
        i += 1;
    }
    out.flush()
}

/// A truecolour PNG of `w`×`h` pixels from `pixel(x, y)`.
fn png(w: u32, h: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut raw = Vec::with_capacity(((w * 3 + 1) * h) as usize);
    for y in 0..h {
        raw.push(0); // filter: none
        for x in 0..w {
            raw.extend_from_slice(&pixel(x, y));
        }
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    // Writing into a Vec cannot fail.
    let _ = z.write_all(&raw);
    let idat = z.finish().unwrap_or_default();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, no interlace
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_complete_and_pngs_are_valid() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("demo");
        create_samples(&root).unwrap();
        let csv = std::fs::metadata(root.join("data/measurements.csv")).unwrap();
        assert!(csv.len() >= 10 * 1024 * 1024, "{}", csv.len());
        assert!(std::fs::read_to_string(root.join("README.md"))
            .unwrap()
            .contains("f7tfs"));
        let png = std::fs::read(root.join("images/gradient.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        // IHDR's CRC over type + data, as a PNG reader checks it.
        let mut crc = flate2::Crc::new();
        crc.update(&png[12..29]);
        assert_eq!(crc.sum().to_be_bytes(), png[29..33]);
        assert!(png.ends_with(b"IEND\xae\x42\x60\x82"));
        let csv_head = std::fs::read_to_string(root.join("data/measurements.csv")).unwrap();
        assert!(csv_head.starts_with(
            "time,station,temperature_c,humidity_pct\n2026-01-01T00:00:00Z,station-01,"
        ));
    }
}
