//! `TestServer`: an in-process `f7tfs serve` on 127.0.0.1:0 over a fresh temporary directory,
//! running on its own thread and tokio runtime so that sync and async tests can both use it.
//! Dropping it stops the server and removes the directory.
//!
//! ```ignore
//! let srv = TestServer::with(|cfg| cfg.job_delay = Duration::ZERO);
//! let client = srv.client();
//! let resp = client.get(srv.ops("ls")).query(&[("path", srv.path("."))])
//!     .bearer_auth(srv.token()).send().await?;
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use f7tfs::server::{self, FaultPlan, ServeConfig, ServerHandle, Stats};

/// A running server over a temporary root.
pub struct TestServer {
    handle: Option<ServerHandle>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// The configuration, with the bound address (for `restart`).
    cfg: ServeConfig,
    // Declared last: removed after the server stopped.
    dir: tempfile::TempDir,
    root: PathBuf,
}

impl TestServer {
    /// Defaults of `ServeConfig::new`, a free port, and a short job delay (50 ms).
    pub fn start() -> Self {
        Self::with(|_| {})
    }

    /// Like `start`, with the configuration adjusted by `f` first.
    pub fn with(f: impl FnOnce(&mut ServeConfig)) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("f7tfs-test-root-")
            .tempdir()
            .expect("create the served temporary directory");
        // Other users (--as-user) must be able to reach the root.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod root");
        let root = dir.path().canonicalize().expect("canonical root");
        let mut cfg = ServeConfig::new(&root);
        cfg.listen = "127.0.0.1:0".parse().expect("address");
        cfg.job_delay = Duration::from_millis(50);
        cfg.upload_poll_interval = Duration::from_millis(50);
        f(&mut cfg);
        let (handle, stop, thread) = Self::spawn(cfg.clone());
        cfg.listen = handle.addr();
        Self {
            handle: Some(handle),
            stop: Some(stop),
            thread: Some(thread),
            cfg,
            dir,
            root,
        }
    }

    fn spawn(cfg: ServeConfig) -> (ServerHandle, mpsc::Sender<()>, JoinHandle<()>) {
        let (tx_handle, rx_handle) = mpsc::channel();
        let (tx_stop, rx_stop) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("test server runtime");
            let started = rt.block_on(server::spawn(cfg));
            let ok = started.is_ok();
            let _ = tx_handle.send(started);
            if ok {
                let _ = rx_stop.recv();
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        });
        let handle = rx_handle
            .recv()
            .expect("server thread answers")
            .unwrap_or_else(|e| panic!("f7tfs serve did not start: {e}"));
        (handle, tx_stop, thread)
    }

    /// Stops the server abruptly (its runtime and every open connection go away); the root
    /// stays. `restart` brings it back on the same port.
    pub fn kill(&mut self) {
        drop(self.handle.take());
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Starts the server again on the same address over the same root (issued tokens are
    /// forgotten, as after a real restart). Retries while the port is still held.
    pub fn restart(&mut self) {
        assert!(self.handle.is_none(), "restart of a running server");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let cfg = self.cfg.clone();
            let started = std::panic::catch_unwind(move || Self::spawn(cfg));
            match started {
                Ok((handle, stop, thread)) => {
                    self.handle = Some(handle);
                    self.stop = Some(stop);
                    self.thread = Some(thread);
                    return;
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    fn h(&self) -> &ServerHandle {
        self.handle.as_ref().expect("server running")
    }

    /// Base URL (`FIRECREST_URL`).
    pub fn url(&self) -> String {
        self.h().url()
    }
    /// Token endpoint URL.
    pub fn token_url(&self) -> String {
        self.h().token_url()
    }
    /// System name.
    pub fn system(&self) -> String {
        self.h().system()
    }
    /// The canonical served root (remote paths equal local paths under it).
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `root/rel` as a remote path string.
    pub fn path(&self, rel: &str) -> String {
        let rel = rel.trim_start_matches('/');
        if rel.is_empty() || rel == "." {
            self.root.to_string_lossy().into_owned()
        } else {
            self.root.join(rel).to_string_lossy().into_owned()
        }
    }
    /// `URL/filesystem/SYSTEM/ops/OP`.
    pub fn ops(&self, op: &str) -> String {
        format!("{}/filesystem/{}/ops/{op}", self.url(), self.system())
    }
    /// `URL/filesystem/SYSTEM/transfer/OP`.
    pub fn transfer(&self, op: &str) -> String {
        format!("{}/filesystem/{}/transfer/{op}", self.url(), self.system())
    }
    /// The user the server does file work as.
    pub fn user(&self) -> String {
        self.h().user()
    }
    /// A valid bearer token (issued in-process, default lifetime 300 s).
    pub fn token(&self) -> String {
        self.h().issue_token(Duration::from_secs(300))
    }
    /// A token valid for `ttl` (zero: already expired).
    pub fn token_for(&self, ttl: Duration) -> String {
        self.h().issue_token(ttl)
    }
    /// An async HTTP client (no proxies).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("http client")
    }
    /// Per-endpoint counters.
    pub fn stats(&self) -> Stats {
        self.h().stats()
    }
    /// Zeroes the counters.
    pub fn reset_stats(&self) {
        self.h().reset_stats()
    }
    /// Replaces the fault plan with `specs` (see `f7tfs serve --help`).
    pub fn set_faults(&self, specs: &[&str]) {
        self.h()
            .set_faults(FaultPlan::parse(specs).expect("valid fault specs"));
    }
    /// Changes the API latency.
    pub fn set_latency(&self, latency: Duration) {
        self.h().set_latency(latency)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates local user `name` if missing (idempotent); `false` when not root or `useradd`
/// is unavailable, so the caller can skip with a message.
pub fn ensure_user(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return false;
    }
    let exists = std::process::Command::new("id")
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        return true;
    }
    let created = std::process::Command::new("useradd")
        .args([
            "--no-create-home",
            "--shell",
            "/bin/sh",
            "--user-group",
            name,
        ])
        .status()
        .is_ok_and(|s| s.success());
    // Another test binary may have raced us to it.
    created
        || std::process::Command::new("id")
            .arg(name)
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}
