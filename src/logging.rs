//! Logging setup: `tracing` with the `F7TFS_LOG` env filter (default `info`, fuser quieter), a compact
//! format on stderr, and a panic hook that logs the panic with the current span. Tokens and
//! secrets are never logged: nothing here formats request headers or bodies.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (once; later calls are ignored).
pub fn init() {
    // fuser's own unmount attempt after an external `fusermount3 -u` logs a spurious
    // "Unmount failed"; real mount errors reach us as `Session::new` errors anyway.
    let filter = EnvFilter::try_from_env("F7TFS_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,fuser=warn,fuser::mnt=off"));
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
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
