//! `f7tfs serve` arguments.

/// Serve arguments.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {}

/// Runs `f7tfs serve`.
pub fn run(_args: ServeArgs) -> Result<(), String> {
    Err("serve is not built yet".into())
}
