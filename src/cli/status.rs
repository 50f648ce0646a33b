//! `f7tfs status [MOUNTPOINT] [--watch] [--json]`: reads the state files the mount daemons
//! publish (see `crate::status`) and prints, per live mount, the calls made, cache hit rates,
//! in-flight transfers with a progress bar, and staged writes not yet on the remote.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::status::{read_states, render, run_dir, MountState};

/// Exit code: no live f7tfs mount (matching MOUNTPOINT) was found.
pub const EXIT_NO_MOUNT: i32 = 2;

/// Show live mounts, in-flight transfers with progress, cache use and staged writes.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: 0 when at least one live mount was shown, 1 on an \
    error (unreadable state directory), 2 when no live f7tfs mount (at MOUNTPOINT) was found. \
    State files live in $XDG_RUNTIME_DIR/f7tfs/ (else ~/.cache/f7tfs/run/), readable only by \
    the mounting user; each daemon rewrites its own every second."
)]
pub struct StatusArgs {
    /// Only this mount, or the one holding this folder (default: all of this user's mounts).
    pub mountpoint: Option<PathBuf>,
    /// Refresh every second until interrupted.
    #[arg(long, short)]
    pub watch: bool,
    /// Print the raw state as JSON instead of the table.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
}

fn matching(args: &StatusArgs) -> Result<Vec<MountState>, String> {
    let dir = run_dir();
    let states = read_states(&dir)
        .map_err(|e| format!("cannot read the status directory {}: {e}", dir.display()))?;
    let Some(mp) = &args.mountpoint else {
        return Ok(states);
    };
    // A folder inside a mount names that mount (the innermost one, if mounts nest).
    let want = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.clone());
    let innermost = states
        .iter()
        .map(|s| std::path::Path::new(&s.mountpoint))
        .filter(|m| want.starts_with(m))
        .max_by_key(|m| m.components().count())
        .map(|m| m.to_path_buf());
    Ok(states
        .into_iter()
        .filter(|s| Some(std::path::Path::new(&s.mountpoint)) == innermost.as_deref())
        .collect())
}

fn none_text(args: &StatusArgs) -> String {
    match &args.mountpoint {
        Some(mp) => format!("no f7tfs mount at {}", mp.display()),
        None => "no f7tfs mounts".into(),
    }
}

/// Runs `f7tfs status`; returns the exit code.
pub fn run(args: StatusArgs) -> Result<i32, String> {
    if args.json {
        let states = matching(&args)?;
        let text = serde_json::to_string_pretty(&states).map_err(|e| e.to_string())?;
        println!("{text}");
        return Ok(if states.is_empty() { EXIT_NO_MOUNT } else { 0 });
    }
    loop {
        let states = matching(&args)?;
        let mut out = String::new();
        if args.watch {
            // Clear the screen and go home.
            out.push_str("\x1b[H\x1b[2J");
        }
        if states.is_empty() {
            out.push_str(&none_text(&args));
            out.push('\n');
        }
        for s in &states {
            out.push_str(&render(s));
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        if !args.watch {
            return Ok(if states.is_empty() { EXIT_NO_MOUNT } else { 0 });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
