//! Command line: `f7tfs mount | serve | demo | check | status | recover`. clap derive structs
//! only; each subcommand's `*Args` converts itself into the config the rest of the crate sees.
//! `main()` runs the chosen subcommand and turns a failure into one line on stderr + exit code.

pub mod mount;
pub mod serve;
pub mod status;

use clap::{Parser, Subcommand};

/// Mount HPC storage reached through FirecREST as a local folder.
#[derive(Debug, Parser)]
#[command(name = "f7tfs", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount SYSTEM:/remote/path at MOUNTPOINT.
    Mount(Box<mount::MountArgs>),
    /// Serve the FirecREST v2 API over a local directory (for tests, demos and benchmarks).
    Serve(Box<serve::ServeArgs>),
    /// Show live mounts, in-flight transfers with progress, cache use and staged writes.
    Status(status::StatusArgs),
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount(args) => mount::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Status(args) => match status::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("f7tfs: {err}");
            1
        }
    }
}
