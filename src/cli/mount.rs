//! `f7tfs mount` arguments.

/// Mount arguments.
#[derive(Debug, clap::Args)]
pub struct MountArgs {}

/// Runs `f7tfs mount`.
pub fn run(_args: MountArgs) -> Result<(), String> {
    Err("mount is not built yet".into())
}
