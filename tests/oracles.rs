//! The established oracles on a real mount, run from `cargo test`: pjdfstest (POSIX
//! conformance, failing on any failure not listed in
//! `tests/oracles/pjdfstest-expected-failures.txt`), fsx (10,000 random operations with a
//! fixed seed, every byte checked) and a real file manager (pcmanfm under Xvfb, counting
//! the server's calls). The work is done by the scripts in `tests/oracles/`, which also run
//! by hand; each script starts its own `f7tfs serve`, mounts it with this build's binary
//! under a watchdog and cleans up whatever happens.
//!
//! A tool that is missing is installed with `cargo install --locked` (`.ci/install` does it
//! ahead of time); a test is skipped, saying why, only when that is impossible or it needs
//! root, `/dev/fuse` or a display server that cannot be had.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Exit code of a script that cannot run here (missing tool, not root, no display).
const SKIP: i32 = 77;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/oracles")
        .join(name)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The tool's path, installing it with `cargo install --locked` if it is missing.
fn tool(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|p| p.join("bin").join(name));
    let find = || {
        let on_path = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
        on_path.or_else(|| cargo_bin.clone().filter(|p| p.exists()))
    };
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("{name} is missing; trying `cargo install --locked {name}` (takes minutes)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args(["install", "--locked", name])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("`cargo install --locked {name}` failed");
    }
    find()
}

/// Runs `tests/oracles/NAME` with `args`; returns false when the script says it must skip.
fn run(name: &str, args: &[&str], env: &[(&str, &Path)]) -> bool {
    let mut cmd = Command::new("bash");
    cmd.arg(script(name))
        .args(args)
        .env("F7TFS_BIN", env!("CARGO_BIN_EXE_f7tfs"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    if out.status.code() == Some(SKIP) {
        eprintln!("SKIPPED {name}: {}", stdout.lines().last().unwrap_or(""));
        return false;
    }
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    true
}

fn preconditions(what: &str) -> bool {
    if !is_root() {
        eprintln!("SKIPPED {what}: needs root (pjdfstest switches users; tests run as root in CI)");
        return false;
    }
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: mounted tests need FUSE"
    );
    true
}

#[test]
fn pjdfstest_every_group_on_a_mount() {
    if !preconditions("pjdfstest") {
        return;
    }
    let Some(bin) = tool("pjdfstest") else {
        eprintln!("SKIPPED pjdfstest: not installed and `cargo install --locked pjdfstest` failed");
        return;
    };
    run("pjdfstest.sh", &[], &[("PJDFSTEST", &bin)]);
}

#[test]
fn fsx_ten_thousand_operations_on_a_mount() {
    if !preconditions("fsx") {
        return;
    }
    let Some(bin) = tool("fsx") else {
        eprintln!("SKIPPED fsx: not installed and `cargo install --locked fsx` failed");
        return;
    };
    run("fsx.sh", &[], &[("FSX", &bin)]);
}

#[test]
fn pcmanfm_browses_a_mount_with_one_listing_and_no_whole_large_downloads() {
    if !preconditions("pcmanfm") {
        return;
    }
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pcmanfm-on-f7tfs.png");
    if run("filemanager.sh", &[shot.to_str().expect("utf-8 path")], &[]) {
        assert!(shot.exists(), "no screenshot at {}", shot.display());
    }
}
