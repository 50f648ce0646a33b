//! The `f7tfs` binary: parse the command line, run the subcommand, and on failure print one
//! line naming the cause and the fix, then exit non-zero.

fn main() {
    std::process::exit(f7tfs::cli::main());
}
