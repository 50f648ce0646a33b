//! Logging setup: `tracing` with the `F7TFS_LOG` env filter (default `info`, fuser quieter), a compact
//! format on stderr, and a panic hook that logs the panic with the current span. Tokens and
//! secrets are never logged: nothing here formats request headers or bodies.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are ignored).
pub fn init() {
    init_to(None);
}

/// Like [`init`], appending to `log_file` instead of stderr when given (no colours then).
/// If the file cannot be opened the logs go to stderr and the reason is printed there.
pub fn init_to(log_file: Option<&std::path::Path>) {
    // fuser's own unmount attempt after an external `fusermount3 -u` logs a spurious
    // "Unmount failed"; real mount errors reach us as `Session::new` errors anyway.
    init_filtered(log_file, "info,fuser=warn,fuser::mnt=off");
}

/// Like [`init_to`] with `default_filter` when `F7TFS_LOG` is unset.
pub fn init_filtered(log_file: Option<&std::path::Path>, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env("F7TFS_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    use std::io::IsTerminal;
    let file = log_file.and_then(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| eprintln!("f7tfs: cannot open the log file {}: {e}", path.display()))
            .ok()
    });
    match file {
        Some(file) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .with_target(false)
                .try_init();
        }
        None => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .with_target(false)
                .try_init();
        }
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        tracing::error!("panic: {info}");
        default_hook(info);
    }));
}

/// The current span's op name for messages (e.g. a watchdog naming what hung).
pub fn op_span(op: &'static str, ino: u64) -> tracing::Span {
    tracing::debug_span!("op", op, ino)
}
