//! What a running mount tells about itself: the registry of in-flight transfers (with
//! progress logged at info level, at most every few seconds: bytes, rate, ETA), and the state
//! file `f7tfs status` reads.
//!
//! The state file: `<run dir>/<pid>.json`, rewritten atomically every second by the daemon
//! (`Publisher`), removed at unmount. The run dir is `$XDG_RUNTIME_DIR/f7tfs/` when that is
//! set, else `~/.cache/f7tfs/run/`; it is created mode 0700 and files are 0600, so only the
//! mounting user can read them. A file whose pid is gone is stale and ignored (and removed by
//! `f7tfs status` when it may).
//!
//! Locks: `Transfers::map` and each transfer's `log` mutex are `parking_lot` mutexes held
//! briefly, never across `.await`; never both at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::cache::content::ContentStats;
use crate::remote::Progress;

/// How often a long transfer logs its progress.
pub const LOG_EVERY: Duration = Duration::from_secs(2);
/// How often the daemon rewrites its state file.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Which way bytes flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Upload,
    Download,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Upload => "upload",
            Direction::Download => "download",
        }
    }
}

struct Transfer {
    path: String,
    direction: Direction,
    total: u64,
    done: AtomicU64,
    started: Instant,
    phase: Mutex<&'static str>,
    /// (when, bytes done) of the last progress line.
    log: Mutex<(Instant, u64)>,
}

/// In-flight transfers of one mount.
#[derive(Default)]
pub struct Transfers {
    next: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Transfer>>>,
}

/// One row of `f7tfs status`: a transfer in flight.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TransferRow {
    pub path: String,
    pub direction: Direction,
    pub done: u64,
    pub total: u64,
    /// Average bytes per second since it started.
    pub rate: f64,
    /// What it waits for: "transfer" (bytes moving), "staging" (the remote job).
    pub phase: String,
    pub elapsed_secs: f64,
}

impl Transfers {
    /// Registers a transfer of `total` bytes; it is listed until the guard drops.
    pub fn start(self: &Arc<Self>, path: &str, direction: Direction, total: u64) -> TransferGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let t = Arc::new(Transfer {
            path: path.to_string(),
            direction,
            total,
            done: AtomicU64::new(0),
            started: now,
            phase: Mutex::new("transfer"),
            log: Mutex::new((now, 0)),
        });
        self.map.lock().insert(id, t.clone());
        tracing::debug!(
            path,
            direction = direction.as_str(),
            total,
            "transfer started"
        );
        TransferGuard {
            board: self.clone(),
            id,
            t,
            failed: false,
        }
    }

    /// The transfers in flight now.
    pub fn rows(&self) -> Vec<TransferRow> {
        let list: Vec<Arc<Transfer>> = self.map.lock().values().cloned().collect();
        list.iter()
            .map(|t| {
                let elapsed = t.started.elapsed().as_secs_f64();
                let done = t.done.load(Ordering::Relaxed).min(t.total);
                TransferRow {
                    path: t.path.clone(),
                    direction: t.direction,
                    done,
                    total: t.total,
                    rate: if elapsed > 0.0 {
                        done as f64 / elapsed
                    } else {
                        0.0
                    },
                    phase: t.phase.lock().to_string(),
                    elapsed_secs: elapsed,
                }
            })
            .collect()
    }
}

/// A registered transfer; dropping it ends the listing (and logs a summary of a long one).
pub struct TransferGuard {
    board: Arc<Transfers>,
    id: u64,
    t: Arc<Transfer>,
    failed: bool,
}

impl TransferGuard {
    /// Sets the bytes done so far.
    pub fn set(&self, done: u64) {
        self.t.done.store(done, Ordering::Relaxed);
        self.maybe_log(done);
    }

    /// Adds `n` bytes done.
    pub fn add(&self, n: u64) {
        let done = self.t.done.fetch_add(n, Ordering::Relaxed) + n;
        self.maybe_log(done);
    }

    /// The transfer did not complete (its error is logged where it is handled): no summary
    /// line that reads like a success.
    pub fn failed(mut self) {
        self.failed = true;
    }

    /// What the transfer waits for now ("staging", "transfer", "finishing").
    pub fn phase(&self, phase: &'static str) {
        *self.t.phase.lock() = phase;
    }

    /// A progress callback for the remote layer feeding this transfer; once every byte is
    /// sent the phase becomes "finishing" (the remote job still has to pick them up).
    pub fn progress(&self) -> Progress {
        let t = self.t.clone();
        Arc::new(move |done, total| {
            t.done.store(done, Ordering::Relaxed);
            if done >= total {
                *t.phase.lock() = "finishing";
            }
            log_progress(&t, done);
        })
    }

    fn maybe_log(&self, done: u64) {
        log_progress(&self.t, done);
    }
}

fn log_progress(t: &Transfer, done: u64) {
    let mut last = t.log.lock();
    if last.0.elapsed() < LOG_EVERY || done >= t.total {
        return;
    }
    let elapsed = t.started.elapsed().as_secs_f64().max(0.001);
    let rate = done as f64 / elapsed;
    *last = (Instant::now(), done);
    drop(last);
    tracing::info!(
        "{} {}: {} of {} ({:.0}%), {}/s, ETA {}",
        t.direction.as_str(),
        t.path,
        human_bytes(done),
        human_bytes(t.total),
        percent(done, t.total),
        human_bytes(rate as u64),
        eta(done, t.total, rate)
    );
}

impl Drop for TransferGuard {
    fn drop(&mut self) {
        self.board.map.lock().remove(&self.id);
        let elapsed = self.t.started.elapsed();
        if self.failed {
            tracing::debug!(path = %self.t.path, "transfer failed after {:.1} s", elapsed.as_secs_f64());
        } else if elapsed >= LOG_EVERY {
            let done = self.t.done.load(Ordering::Relaxed).min(self.t.total);
            tracing::info!(
                "{} {}: {} in {:.1} s ({}/s)",
                self.t.direction.as_str(),
                self.t.path,
                human_bytes(done),
                elapsed.as_secs_f64(),
                human_bytes((done as f64 / elapsed.as_secs_f64().max(0.001)) as u64)
            );
        }
    }
}

/// `12.3 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    }
}

fn eta(done: u64, total: u64, rate: f64) -> String {
    if rate <= 0.0 || done >= total {
        return "-".into();
    }
    let secs = ((total - done) as f64 / rate).ceil() as u64;
    if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// A staged write the remote does not have yet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StagedRow {
    pub path: String,
    /// "waiting", "uploading", "retrying" (after a failure), "failed", or "from an earlier run".
    pub state: String,
    pub size: u64,
    pub cause: Option<String>,
}

/// Everything one daemon publishes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountState {
    pub pid: u32,
    pub mountpoint: String,
    /// `SYSTEM:/remote/path`.
    pub remote: String,
    /// Seconds since the epoch.
    pub started: u64,
    pub updated: u64,
    /// HTTP requests sent to FirecREST and the staging area (retries included).
    pub calls: u64,
    pub retries: u64,
    /// Attribute cache lookups answered without a call / with one.
    pub attr_hits: u64,
    pub attr_misses: u64,
    pub content: ContentStats,
    pub transfers: Vec<TransferRow>,
    pub staged: Vec<StagedRow>,
}

fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Where state files live: `$XDG_RUNTIME_DIR/f7tfs`, else `~/.cache/f7tfs/run`.
pub fn run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_dir()) {
        Some(d) => PathBuf::from(d).join("f7tfs"),
        None => crate::config::default_cache_root().join("run"),
    }
}

/// Writes `state` to `dir/<pid>.json` atomically, private to the user.
pub fn write_state(dir: &Path, state: &MountState) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join(format!("{}.json", state.pid));
    let tmp = dir.join(format!(".{}.json.tmp", state.pid));
    let text = serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&text)?;
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// State files of live daemons in `dir` (stale ones of dead pids are removed).
pub fn read_states(dir: &Path) -> std::io::Result<Vec<MountState>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_suffix(".json")
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let Ok(text) = std::fs::read(&path) else {
            continue;
        };
        if let Ok(state) = serde_json::from_slice::<MountState>(&text) {
            out.push(state);
        }
    }
    out.sort_by(|a, b| a.mountpoint.cmp(&b.mountpoint));
    Ok(out)
}

/// The daemon's side: rewrites the state file every second until dropped, then removes it.
pub struct Publisher {
    task: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl Publisher {
    /// Starts publishing what `collect` returns (called once per second on `rt`).
    pub fn start(
        rt: &tokio::runtime::Handle,
        collect: impl Fn() -> MountState + Send + Sync + 'static,
    ) -> Publisher {
        let dir = run_dir();
        let path = dir.join(format!("{}.json", std::process::id()));
        let task = rt.spawn(async move {
            let mut warned = false;
            loop {
                if let Err(e) = write_state(&dir, &collect()) {
                    if !warned {
                        tracing::warn!(
                            "cannot write the status file in {} ({e}); f7tfs status will not \
                             see this mount",
                            dir.display()
                        );
                        warned = true;
                    }
                }
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
        });
        Publisher { task, path }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Fields of a `MountState` that do not change while mounted.
#[derive(Clone, Debug)]
pub struct MountInfo {
    pub mountpoint: String,
    pub remote: String,
    pub started: SystemTime,
}

impl MountInfo {
    /// A state with these fields filled and the rest empty.
    pub fn state(&self) -> MountState {
        MountState {
            pid: std::process::id(),
            mountpoint: self.mountpoint.clone(),
            remote: self.remote.clone(),
            started: epoch_secs(self.started),
            updated: epoch_secs(SystemTime::now()),
            calls: 0,
            retries: 0,
            attr_hits: 0,
            attr_misses: 0,
            content: ContentStats::default(),
            transfers: Vec::new(),
            staged: Vec::new(),
        }
    }
}

/// A text progress bar of `width` cells.
pub fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done as u128 * width as u128) / total as u128) as usize
    };
    format!(
        "[{}{}]",
        "#".repeat(filled.min(width)),
        ".".repeat(width - filled.min(width))
    )
}

fn ratio(hits: u64, misses: u64) -> String {
    if hits + misses == 0 {
        "-".into()
    } else {
        format!("{:.0}%", hits as f64 * 100.0 / (hits + misses) as f64)
    }
}

fn duration_text(secs: u64) -> String {
    if secs >= 86_400 {
        format!("{}d{:02}h", secs / 86_400, secs % 86_400 / 3600)
    } else if secs >= 3600 {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    } else if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// The human table of one mount, as `f7tfs status` prints it.
pub fn render(s: &MountState) -> String {
    let mut out = String::new();
    let up = epoch_secs(SystemTime::now()).saturating_sub(s.started);
    out.push_str(&format!(
        "{}  {}  (pid {}, up {})\n",
        s.mountpoint,
        s.remote,
        s.pid,
        duration_text(up)
    ));
    out.push_str(&format!(
        "  calls {} ({} retries)   attribute cache hits {} of {}   content cache hits {} of {}, \
         {} of {} used\n",
        s.calls,
        s.retries,
        ratio(s.attr_hits, s.attr_misses),
        s.attr_hits + s.attr_misses,
        ratio(s.content.hits, s.content.misses),
        s.content.hits + s.content.misses,
        human_bytes(s.content.used),
        human_bytes(s.content.max_size)
    ));
    if s.transfers.is_empty() {
        out.push_str("  transfers in flight: none\n");
    } else {
        out.push_str(&format!(
            "  {:<9} {:<9} {:<30} {:>23} {:>12} {:>8}\n",
            "DIRECTION", "PHASE", "PROGRESS", "DONE / TOTAL", "RATE", "ETA"
        ));
        for t in &s.transfers {
            out.push_str(&format!(
                "  {:<9} {:<9} {} {:>4.0}% {:>23} {:>10}/s {:>8}  {}\n",
                t.direction.as_str(),
                t.phase,
                bar(t.done, t.total, 22),
                percent(t.done, t.total),
                format!("{} / {}", human_bytes(t.done), human_bytes(t.total)),
                human_bytes(t.rate as u64),
                eta(t.done, t.total, t.rate),
                t.path
            ));
        }
    }
    if s.staged.is_empty() {
        out.push_str("  staged writes waiting for the remote: none\n");
    } else {
        out.push_str(&format!(
            "  staged writes waiting for the remote: {}\n",
            s.staged.len()
        ));
        for w in &s.staged {
            out.push_str(&format!(
                "    {:<10} {:>10}  {}{}\n",
                w.state,
                human_bytes(w.size),
                w.path,
                w.cause
                    .as_deref()
                    .map(|c| format!("  ({c})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_listed_while_guarded() {
        let board = Arc::new(Transfers::default());
        let g = board.start("/x/big", Direction::Upload, 1000);
        g.add(250);
        (g.progress())(500, 1000);
        let rows = board.rows();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].done, 500);
        assert_eq!(rows[0].direction, Direction::Upload);
        drop(g);
        assert!(board.rows().is_empty());
    }

    #[test]
    fn state_files_round_trip_private_and_stale_ones_go() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let info = MountInfo {
            mountpoint: "/mnt/x".into(),
            remote: "cluster:/home".into(),
            started: SystemTime::now(),
        };
        let mut state = info.state();
        state.transfers.push(TransferRow {
            path: "/home/big".into(),
            direction: Direction::Download,
            done: 5 << 20,
            total: 10 << 20,
            rate: 1048576.0,
            phase: "transfer".into(),
            elapsed_secs: 5.0,
        });
        let p = write_state(&run, &state).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
            0o700
        );
        // A dead pid's file is removed.
        let mut dead = state.clone();
        dead.pid = u32::MAX - 1;
        write_state(&run, &dead).unwrap();
        let states = read_states(&run).unwrap();
        assert_eq!(states, vec![state.clone()]);
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 1);
        let text = render(&state);
        assert!(
            text.contains("/mnt/x") && text.contains("download"),
            "{text}"
        );
        assert!(
            text.contains("50%") && text.contains("5.0 MiB / 10.0 MiB"),
            "{text}"
        );
        assert!(text.contains("[###########...........]"), "{text}");
    }

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(eta(50, 100, 10.0), "5s");
        assert_eq!(eta(0, 100_000, 10.0), "2h46m");
    }
}
