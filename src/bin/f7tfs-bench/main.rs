//! `f7tfs-bench`: mounts f7tfs against `f7tfs serve` with added latency, runs the workloads of
//! issue 7 on it and on the baselines (the API's lower bound, a plain HTTP client, pyfirecrest,
//! sshfs through a delay proxy, and f7tfs through the same proxy), and prints one table of
//! calls, bytes, wall times and ratios. Figures only: nothing here asserts on time.
//!
//! `cargo run --release --features bench --bin f7tfs-bench -- [--big-mb 200] [--latency-ms 20]`
//! (needs `target/release/f7tfs`, `sshfs`, `sshd`, `rsync`, `vim`, `python3` with pyfirecrest).
//! Every mount, process and temporary directory is removed on exit, failure or Ctrl-C.

mod http;
mod procs;
mod proxy;
mod setup;
mod workloads;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use procs::R;

/// Benchmark f7tfs against its baselines (see README "Benchmarks").
#[derive(Debug, Parser)]
#[command(name = "f7tfs-bench")]
pub struct Args {
    /// Latency added to every API and staging call (server side), milliseconds; the delay
    /// proxy adds half of it each way, so one request/response round trip costs the same.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    /// Size of the large file, MiB.
    #[arg(long, default_value_t = 1024)]
    pub big_mb: u64,
    /// Deadline of one workload step, seconds (then it is killed and reported as timeout).
    #[arg(long, default_value_t = 600)]
    pub step_timeout: u64,
    /// The f7tfs binary to benchmark.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/f7tfs"))]
    pub f7tfs: PathBuf,
    /// Python interpreter with pyfirecrest.
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Skip the sshfs baseline.
    #[arg(long)]
    pub no_sshfs: bool,
    /// Skip the pyfirecrest baseline.
    #[arg(long)]
    pub no_pyfirecrest: bool,
    /// Skip the run of f7tfs through the delay proxy.
    #[arg(long)]
    pub no_proxy_run: bool,
    /// Run only these workload ids (comma separated, e.g. ls-cold,find).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Extra `f7tfs mount` arguments (whitespace separated). The default lifts the client-side
    /// rate limit, which no baseline has; everything else is `f7tfs mount`'s own defaults
    /// (2 s delayed write-back of small new files, batched small reads), and writing steps are
    /// timed until the remote has the result.
    #[arg(long, default_value = "--rate-limit 0", allow_hyphen_values = true)]
    pub mount_args: String,
    /// Skip the rerun of the writing workloads (cp -r in, rsync, vim) in strict mode
    /// (`--writeback-delay 0`: every `close()` returns once the remote has the file).
    #[arg(long)]
    pub no_strict_run: bool,
    /// Delay of `f7tfs serve`'s transfer jobs (PENDING time), milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub job_delay_ms: u64,
}

fn main() {
    let args = Args::parse();
    procs::install_signal_flag();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("f7tfs-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let result: R<()> = workloads::run(&args, &rt);
    rt.shutdown_timeout(Duration::from_secs(2));
    if let Err(e) = result {
        eprintln!("f7tfs-bench: {e}");
        std::process::exit(1);
    }
}
