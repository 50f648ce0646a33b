//! Command line: `f7tfs mount | serve | demo | check | status | recover`. clap derive structs
//! only; each subcommand's `*Args` converts itself into the config the rest of the crate sees.
//! `main()` runs the chosen subcommand and turns a failure into one line on stderr + exit code.
//!
//! Mount helper form: mount.fuse3 runs `f7tfs SOURCE MOUNTPOINT -o OPTS` (no subcommand);
//! `main()` reads a first argument that is not a subcommand or a flag as `f7tfs mount ...`.

pub mod check;
pub mod demo;
pub mod mount;
pub mod profile;
pub mod serve;

use std::ffi::OsString;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Try f7tfs: a bundled server over sample files, mounted at MOUNTPOINT (Ctrl-C ends it).
    Demo(Box<demo::DemoArgs>),
    /// Check that SYSTEM:/path can be mounted: credentials, API, limits, access, latency.
    Check(Box<check::CheckArgs>),
}

/// `f7tfs SRC DIR -o OPTS` (as mount.fuse3 calls it) → `f7tfs mount SRC DIR -o OPTS`.
pub fn helper_argv(argv: Vec<OsString>) -> Vec<OsString> {
    let Some(first) = argv.get(1).and_then(|a| a.to_str()) else {
        return argv;
    };
    let known = Cli::command()
        .get_subcommands()
        .any(|c| c.get_name() == first || c.get_all_aliases().any(|a| a == first))
        || first == "help";
    if known || first.starts_with('-') {
        return argv;
    }
    let mut out = Vec::with_capacity(argv.len() + 1);
    let mut it = argv.into_iter();
    out.extend(it.next());
    out.push("mount".into());
    out.extend(it);
    out
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse_from(helper_argv(std::env::args_os().collect()));
    let result = match cli.command {
        Command::Mount(args) => mount::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Demo(args) => demo::run(*args),
        Command::Check(args) => return check::run(*args),
    };
    match result {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("f7tfs: {err}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn mount_helper_argv_becomes_mount() {
        assert_eq!(
            helper_argv(v(&["f7tfs", "daint:/p", "/mnt", "-o", "rw,profile=daint"])),
            v(&[
                "f7tfs",
                "mount",
                "daint:/p",
                "/mnt",
                "-o",
                "rw,profile=daint"
            ])
        );
        for keep in [
            &["f7tfs", "mount", "d:/p", "/m"][..],
            &["f7tfs", "check", "d:/p"][..],
            &["f7tfs", "--help"][..],
            &["f7tfs", "help"][..],
            &["f7tfs"][..],
        ] {
            assert_eq!(helper_argv(v(keep)), v(keep));
        }
        let cli = Cli::try_parse_from(helper_argv(v(&[
            "f7tfs",
            "daint:/p",
            "/mnt",
            "-o",
            "rw,nosuid,nodev,_netdev,noauto,user,profile=daint,allow_other",
        ])))
        .unwrap();
        assert!(matches!(cli.command, Command::Mount(_)));
    }
}
