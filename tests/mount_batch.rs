//! Batched reads on a real mount: `cp -r` out of a directory of 200 small files is
//! byte-identical and costs a handful of API calls (one listing, one compress + download + rm)
//! instead of one download per file, also for `cat` of 800 files; no hidden archive is left on
//! the server; with `--batch-reads false` every file is its own download.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::mount::MountedFs;

/// `n` files of 1-4 KiB (one empty) with distinct old mtimes, in the server's `dir`.
fn make_small_files(dir: &Path, n: u64) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let size = if i == 0 { 0 } else { 1024 + (i * 61) % 3072 };
        let data: Vec<u8> = (0..size).map(|b| ((b * 13 + i) % 251) as u8).collect();
        let p = dir.join(format!("small-{i:03}.txt"));
        fs::write(&p, data).unwrap();
        let mtime = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000 + i * 97);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
}

fn leftover_archives(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".f7tfs-"))
        .collect()
}

/// Copies `src` out of the mount and returns the calls it cost.
fn copy_out(m: &MountedFs) -> (u64, u64) {
    make_small_files(&m.remote("src"), 200);
    let out = tempfile::tempdir().unwrap();
    m.server().reset_stats();
    m.sh(&format!("cp -r src {}/back", out.path().display()));
    let stats = m.server().stats();
    m.sh(&format!(
        "diff -r {} {}/back",
        m.remote("src").display(),
        out.path().display()
    ));
    assert!(leftover_archives(&m.remote("src")).is_empty());
    assert!(leftover_archives(m.remote_root()).is_empty());
    eprintln!("cp -r of 200 small files: {:?}", stats.endpoints.keys());
    (stats.total_calls(), stats.calls("GET ops/download"))
}

#[test]
fn cp_r_of_200_small_files_is_a_few_calls() {
    let m = MountedFs::start();
    let (total, downloads) = copy_out(&m);
    eprintln!("batched: {total} calls, {downloads} downloads");
    assert!(total <= 10, "cp -r cost {total} calls");
    assert_eq!(downloads, 1);
    // The listing of the mount shows no archive either (none is left, none leaks).
    let names: Vec<String> = fs::read_dir(m.p("src"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 200);
    assert!(names.iter().all(|n| !n.starts_with(".f7tfs-")));
}

/// Hundreds of files: the batch's own archive, written into the directory while the server's
/// `find` lists it, must stay out of it (it used to fail the batch with HTTP 500).
#[test]
fn cat_of_800_small_files_is_one_download() {
    let m = MountedFs::start();
    make_small_files(&m.remote("many"), 800);
    m.server().reset_stats();
    let bytes = m.sh("cat many/* | wc -c");
    let stats = m.server().stats();
    let want: u64 = fs::read_dir(m.remote("many"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(bytes.trim(), want.to_string());
    assert_eq!(stats.calls("GET ops/download"), 1, "{:?}", stats.endpoints);
    assert!(stats.total_calls() <= 10, "{:?}", stats.endpoints);
    assert!(leftover_archives(&m.remote("many")).is_empty());
}

#[test]
fn without_batch_reads_every_file_is_a_download() {
    let m = MountedFs::start_with(&["--batch-reads", "false"], |_| {});
    let (total, downloads) = copy_out(&m);
    eprintln!("per file: {total} calls, {downloads} downloads");
    // The empty file needs no download.
    assert_eq!(downloads, 199);
}

#[test]
fn a_failing_compress_falls_back_to_downloads_once() {
    let m = MountedFs::start();
    m.server().set_faults(&["ops/compress:503=1"]);
    let (total, downloads) = copy_out(&m);
    eprintln!("compress failing: {total} calls, {downloads} downloads");
    assert_eq!(downloads, 199);
    // Tried once, then the directory is read file by file.
    assert_eq!(m.server().stats().calls("POST ops/compress"), 1);
}
