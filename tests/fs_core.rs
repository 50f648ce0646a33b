//! Core tests without a kernel: `fs::Filesystem` ops called directly over `MemoryRemote`,
//! checking results, remote state and call counts.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use f7tfs::cache::ManualClock;
use f7tfs::config::MountConfig;
use f7tfs::fs::{Entry, Filesystem, IdMap, Looked, SetAttr, ROOT_INO};
use f7tfs::remote::memory::MemoryRemote;
use f7tfs::remote::{FileKind, RemoteError};
use fuser::TimeOrNow;
use tempfile::TempDir;

const ROOT: &str = "/home/u";

struct H {
    fs: Filesystem<MemoryRemote>,
    clock: ManualClock,
    dirs: TempDir,
}

fn ids() -> IdMap {
    IdMap {
        remote_uid: 5000,
        remote_gid: 5001,
        local_uid: 1000,
        local_gid: 1001,
    }
}

fn config(dirs: &TempDir) -> MountConfig {
    let mut c = MountConfig::new(ROOT, dirs.path().join("mnt"));
    c.staging.dir = dirs.path().join("staging");
    c.cache.cache_dir = dirs.path().join("cache");
    // Strict upload-at-close unless a test asks for the (default) delayed write-back.
    c.writeback_delay = Duration::ZERO;
    c
}

fn harness_with(remote: MemoryRemote) -> H {
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let fs = Filesystem::new(remote, &config(&dirs), ids(), Arc::new(clock.clone())).unwrap();
    H { fs, clock, dirs }
}

fn harness() -> H {
    harness_with(MemoryRemote::new(5000, 5001))
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn r(h: &H) -> &MemoryRemote {
    h.fs.remote()
}

fn path(rel: &str) -> String {
    format!("{ROOT}/{rel}")
}

async fn found(h: &H, parent: u64, name: &str) -> Entry {
    match h.fs.lookup(parent, os(name)).await.unwrap() {
        Looked::Found(e) => e,
        Looked::Absent { .. } => panic!("{name} not found"),
    }
}

async fn absent(h: &H, parent: u64, name: &str) -> bool {
    matches!(
        h.fs.lookup(parent, os(name)).await.unwrap(),
        Looked::Absent { .. }
    )
}

async fn write_new(h: &H, parent: u64, name: &str, data: &[u8]) -> u64 {
    let c =
        h.fs.create(parent, os(name), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    if !data.is_empty() {
        h.fs.write(c.opened.fh, 0, data).await.unwrap();
    }
    h.fs.flush(c.opened.fh).await.unwrap();
    h.fs.release(c.opened.fh).await.unwrap();
    c.entry.attr.ino
}

async fn read_all(h: &H, ino: u64) -> Vec<u8> {
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = h.fs.read(o.fh, out.len() as u64, 131072).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    h.fs.release(o.fh).await.unwrap();
    out
}

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[tokio::test]
async fn create_write_release_puts_content_on_the_remote() {
    let h = harness();
    let ino = write_new(&h, ROOT_INO, "a.txt", b"hello").await;
    assert_eq!(r(&h).content(&path("a.txt")).unwrap(), b"hello");
    assert_eq!(r(&h).get(&path("a.txt")).unwrap().perm, 0o644);
    assert_eq!(r(&h).calls("upload"), 1);
    assert_eq!(r(&h).calls("put_archive"), 0);
    let a = h.fs.getattr(ino).await.unwrap().attr;
    assert_eq!(a.size, 5);
    assert_eq!(
        (a.uid, a.gid),
        (1000, 1001),
        "remote ids map to the local user"
    );
    // Read right after close: served locally, no download.
    assert_eq!(read_all(&h, ino).await, b"hello");
    assert_eq!(r(&h).calls("download"), 0);
}

#[tokio::test]
async fn new_file_mode_is_applied() {
    let h = harness();
    let c =
        h.fs.create(ROOT_INO, os("x.sh"), 0o100755, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"#!/bin/sh\n").await.unwrap();
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).get(&path("x.sh")).unwrap().perm, 0o755);
}

#[tokio::test]
async fn empty_file_goes_through_the_archive_route() {
    let h = harness();
    let ino = write_new(&h, ROOT_INO, "empty", b"").await;
    assert_eq!(r(&h).content(&path("empty")).unwrap(), b"");
    assert_eq!(r(&h).calls("put_archive"), 1);
    assert_eq!(r(&h).calls("upload"), 0, "v2's empty upload hangs");
    assert_eq!(h.fs.getattr(ino).await.unwrap().attr.size, 0);
}

#[tokio::test]
async fn o_trunc_needs_no_download_but_partial_writes_fetch_first() {
    let h = harness();
    r(&h).put_file(&path("f"), b"0123456789", SystemTime::now());
    let e = found(&h, ROOT_INO, "f").await;
    let o =
        h.fs.open(e.attr.ino, libc::O_WRONLY | libc::O_TRUNC)
            .await
            .unwrap();
    h.fs.write(o.fh, 0, b"new").await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).calls("download"), 0);
    assert_eq!(r(&h).content(&path("f")).unwrap(), b"new");

    r(&h).put_file(&path("g"), b"0123456789", SystemTime::now());
    let e = found(&h, ROOT_INO, "g").await;
    let o = h.fs.open(e.attr.ino, libc::O_RDWR).await.unwrap();
    assert_eq!(r(&h).calls("download"), 1);
    h.fs.write(o.fh, 2, b"xy").await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("g")).unwrap(), b"01xy456789");
}

#[tokio::test]
async fn append_writes_at_the_end() {
    let h = harness();
    r(&h).put_file(&path("log"), b"one\n", SystemTime::now());
    let e = found(&h, ROOT_INO, "log").await;
    let o =
        h.fs.open(e.attr.ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
    h.fs.write(o.fh, 0, b"two\n").await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("log")).unwrap(), b"one\ntwo\n");
}

#[tokio::test]
async fn several_handles_share_one_staged_state() {
    let h = harness();
    r(&h).put_file(&path("s"), b"aaaa", SystemTime::now());
    let ino = found(&h, ROOT_INO, "s").await.attr.ino;
    let w = h.fs.open(ino, libc::O_RDWR).await.unwrap();
    let rd = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    h.fs.write(w.fh, 0, b"bb").await.unwrap();
    assert_eq!(&h.fs.read(rd.fh, 0, 10).await.unwrap()[..], b"bbaa");
    h.fs.release(w.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("s")).unwrap(), b"bbaa");
    h.fs.release(rd.fh).await.unwrap();
    // A new open after the close sees the new content.
    assert_eq!(read_all(&h, ino).await, b"bbaa");
}

#[tokio::test]
async fn readdir_of_2000_entries_plus_getattr_of_each_is_one_list_call() {
    let h = harness();
    r(&h).mkdir_all(&path("big"));
    for i in 0..2000 {
        r(&h).put_file(&path(&format!("big/f{i:04}")), b"x", SystemTime::now());
    }
    let dir = found(&h, ROOT_INO, "big").await.attr.ino;
    r(&h).reset_calls();
    let d = h.fs.opendir(dir).await.unwrap();
    let mut items = Vec::new();
    let mut off = 0;
    loop {
        let batch = h.fs.readdir(dir, d.fh, off).await.unwrap();
        if batch.is_empty() {
            break;
        }
        // Pretend the kernel buffer holds 100 entries per call.
        items.extend(batch.into_iter().take(100));
        off = items.last().unwrap().offset;
    }
    h.fs.releasedir(d.fh);
    assert_eq!(items.len(), 2002);
    for it in items.iter().skip(2) {
        let e = found(&h, dir, &it.name).await;
        h.fs.getattr(e.attr.ino).await.unwrap();
    }
    assert_eq!(r(&h).calls("list"), 1);
    assert_eq!(r(&h).total_calls(), 1);
    // Unknown names in a freshly listed dir cost nothing either.
    assert!(absent(&h, dir, "nope").await);
    assert_eq!(r(&h).total_calls(), 1);
}

#[tokio::test]
async fn readdirplus_counts_lookups_and_fits_the_buffer() {
    let h = harness();
    r(&h).mkdir_all(&path("d"));
    for i in 0..50 {
        r(&h).put_file(&path(&format!("d/file{i}")), b"x", SystemTime::now());
    }
    let dir = found(&h, ROOT_INO, "d").await.attr.ino;
    let d = h.fs.opendir(dir).await.unwrap();
    let first = h.fs.readdirplus(dir, d.fh, 0, 4096).await.unwrap();
    assert!(first.len() < 52 && first.len() > 2);
    let rest =
        h.fs.readdirplus(dir, d.fh, first.last().unwrap().offset, 1 << 20)
            .await
            .unwrap();
    assert_eq!(first.len() + rest.len(), 52);
    assert!(first.iter().chain(rest.iter()).all(|i| i.entry.is_some()));
    assert_eq!(r(&h).calls("list"), 1);
}

#[tokio::test]
async fn unlisted_dir_lookups_stat_once_then_list() {
    let h = harness();
    r(&h).mkdir_all(&path("d"));
    for n in ["a", "b", "c", "e"] {
        r(&h).put_file(&path(&format!("d/{n}")), b"x", SystemTime::now());
    }
    let dir = found(&h, ROOT_INO, "d").await.attr.ino;
    r(&h).reset_calls();
    found(&h, dir, "a").await;
    assert_eq!((r(&h).calls("stat"), r(&h).calls("list")), (1, 0));
    found(&h, dir, "b").await;
    assert_eq!(r(&h).calls("list"), 1);
    found(&h, dir, "c").await;
    found(&h, dir, "e").await;
    assert_eq!(r(&h).total_calls(), 2);
}

#[tokio::test]
async fn remote_changes_show_after_the_ttl() {
    let h = harness();
    r(&h).put_file(&path("job.out"), b"1", SystemTime::now());
    let ino = found(&h, ROOT_INO, "job.out").await.attr.ino;
    assert_eq!(h.fs.getattr(ino).await.unwrap().attr.size, 1);
    r(&h).put_file(
        &path("job.out"),
        b"12345",
        SystemTime::now() + Duration::from_secs(10),
    );
    h.clock.advance(Duration::from_secs(4));
    assert_eq!(
        h.fs.getattr(ino).await.unwrap().attr.size,
        1,
        "cached within TTL"
    );
    h.clock.advance(Duration::from_secs(2));
    assert_eq!(
        h.fs.getattr(ino).await.unwrap().attr.size,
        5,
        "revalidated after TTL"
    );
    assert_eq!(read_all(&h, ino).await, b"12345");
}

#[tokio::test]
async fn open_revalidates_after_ttl_and_keeps_cache_when_unchanged() {
    let h = harness();
    r(&h).put_file(&path("f"), b"v1", t(1_000_000));
    let ino = found(&h, ROOT_INO, "f").await.attr.ino;
    let o1 = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    h.fs.release(o1.fh).await.unwrap();
    let o2 = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(o2.keep_cache);
    h.fs.release(o2.fh).await.unwrap();
    r(&h).put_file(&path("f"), b"v2!", t(1_000_100));
    h.clock.advance(Duration::from_secs(6));
    let stats = r(&h).calls("stat");
    let o3 = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(r(&h).calls("stat"), stats + 1);
    assert!(!o3.keep_cache);
    assert_eq!(&h.fs.read(o3.fh, 0, 100).await.unwrap()[..], b"v2!");
    h.fs.release(o3.fh).await.unwrap();
}

#[tokio::test]
async fn negative_lookups_are_cached_briefly() {
    let h = harness();
    assert!(absent(&h, ROOT_INO, "later").await);
    let calls = r(&h).total_calls();
    assert!(absent(&h, ROOT_INO, "later").await);
    assert_eq!(r(&h).total_calls(), calls);
    r(&h).put_file(&path("later"), b"x", SystemTime::now());
    h.clock.advance(Duration::from_secs(6));
    found(&h, ROOT_INO, "later").await;
}

#[tokio::test]
async fn zero_ttl_always_revalidates() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    remote.put_file(&path("f"), b"1", SystemTime::now());
    let dirs = tempfile::tempdir().unwrap();
    let mut cfg = config(&dirs);
    cfg.cache.attr_ttl = Duration::ZERO;
    cfg.cache.dir_ttl = Duration::ZERO;
    cfg.cache.negative_ttl = Duration::ZERO;
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(ManualClock::new())).unwrap();
    let ino = match fs.lookup(ROOT_INO, os("f")).await.unwrap() {
        Looked::Found(e) => e.attr.ino,
        _ => panic!(),
    };
    fs.remote().put_file(&path("f"), b"123", SystemTime::now());
    assert_eq!(fs.getattr(ino).await.unwrap().attr.size, 3);
}

#[tokio::test]
async fn our_own_mutations_show_at_once() {
    let h = harness();
    let d = h.fs.opendir(ROOT_INO).await.unwrap();
    assert_eq!(h.fs.readdir(ROOT_INO, d.fh, 0).await.unwrap().len(), 2);
    h.fs.releasedir(d.fh);
    write_new(&h, ROOT_INO, "n1", b"abc").await;
    h.fs.mkdir(ROOT_INO, os("sub"), 0o755, 0o022).await.unwrap();
    let d = h.fs.opendir(ROOT_INO).await.unwrap();
    let names: Vec<String> =
        h.fs.readdir(ROOT_INO, d.fh, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
    assert_eq!(names, vec![".", "..", "n1", "sub"]);
    assert_eq!(r(&h).calls("list"), 1);
    // A new directory is known empty: lookups inside cost nothing.
    let sub = found(&h, ROOT_INO, "sub").await.attr.ino;
    let before = r(&h).total_calls();
    assert!(absent(&h, sub, "x").await);
    assert_eq!(r(&h).total_calls(), before);
}

#[tokio::test]
async fn open_new_file_is_listed_before_its_upload() {
    let h = harness();
    let c =
        h.fs.create(ROOT_INO, os("inflight"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"12").await.unwrap();
    h.clock.advance(Duration::from_secs(10));
    let d = h.fs.opendir(ROOT_INO).await.unwrap();
    let items = h.fs.readdir(ROOT_INO, d.fh, 0).await.unwrap();
    assert!(items.iter().any(|i| i.name == "inflight"));
    assert_eq!(h.fs.getattr(c.entry.attr.ino).await.unwrap().attr.size, 2);
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("inflight")).unwrap(), b"12");
}

#[tokio::test]
async fn unlink_and_rmdir_check_first() {
    let h = harness();
    r(&h).mkdir_all(&path("full/inner"));
    r(&h).put_file(&path("full/inner/f"), b"x", SystemTime::now());
    r(&h).mkdir_all(&path("empty"));
    r(&h).put_file(&path("file"), b"x", SystemTime::now());
    let err = h.fs.rmdir(ROOT_INO, os("full")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    let err = h.fs.unlink(ROOT_INO, os("full")).await.unwrap_err();
    assert_eq!(err.errno(), libc::EISDIR);
    let err = h.fs.rmdir(ROOT_INO, os("file")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTDIR);
    assert_eq!(
        r(&h).calls("remove"),
        0,
        "rm is recursive: never called on a refusal"
    );
    assert!(r(&h).get(&path("full/inner/f")).is_some());
    h.fs.rmdir(ROOT_INO, os("empty")).await.unwrap();
    h.fs.unlink(ROOT_INO, os("file")).await.unwrap();
    assert!(r(&h).get(&path("empty")).is_none());
    assert!(r(&h).get(&path("file")).is_none());
    assert!(absent(&h, ROOT_INO, "file").await);
    let err = h.fs.unlink(ROOT_INO, os("file")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT);
}

#[tokio::test]
async fn rename_a_staged_file_is_local() {
    let h = harness();
    let c =
        h.fs.create(ROOT_INO, os(".tmp123"), 0o100600, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"draft").await.unwrap();
    h.fs.rename(ROOT_INO, os(".tmp123"), ROOT_INO, os("final"), 0)
        .await
        .unwrap();
    // Only the target's existence was checked (one stat: the root was never listed).
    assert_eq!(r(&h).total_calls(), r(&h).calls("stat"));
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("final")).unwrap(), b"draft");
    assert!(r(&h).get(&path(".tmp123")).is_none());
    assert_eq!(r(&h).get(&path("final")).unwrap().perm, 0o600);
    assert_eq!(r(&h).calls("rename"), 0);
    assert!(absent(&h, ROOT_INO, ".tmp123").await);
    found(&h, ROOT_INO, "final").await;
}

#[tokio::test]
async fn rename_a_symlink_recreates_it() {
    let h = harness();
    h.fs.symlink(ROOT_INO, os("l1"), Path::new("../rel/target"))
        .await
        .unwrap();
    h.fs.rename(ROOT_INO, os("l1"), ROOT_INO, os("l2"), 0)
        .await
        .unwrap();
    let n = r(&h).get(&path("l2")).unwrap();
    assert_eq!(n.kind, FileKind::Symlink);
    assert_eq!(n.link_target.as_deref(), Some("../rel/target"));
    assert!(r(&h).get(&path("l1")).is_none());
    assert_eq!(r(&h).calls("rename"), 0);
    let ino = found(&h, ROOT_INO, "l2").await.attr.ino;
    let calls = r(&h).total_calls();
    assert_eq!(h.fs.readlink(ino).await.unwrap(), "../rel/target");
    assert_eq!(r(&h).total_calls(), calls, "readlink served from cache");
}

#[tokio::test]
async fn rename_small_file_copies_with_mode_and_mtime() {
    let h = harness();
    r(&h).put_file(&path("small"), b"content", t(1_600_000_000));
    r(&h).get(&path("small")).unwrap();
    h.fs.rename(ROOT_INO, os("small"), ROOT_INO, os("moved"), 0)
        .await
        .unwrap();
    let n = r(&h).get(&path("moved")).unwrap();
    assert_eq!(n.content.as_ref(), b"content");
    assert_eq!(n.mtime, t(1_600_000_000));
    assert!(r(&h).get(&path("small")).is_none());
    assert_eq!(r(&h).calls("rename"), 0);
    assert_eq!(r(&h).calls("put_archive"), 1);
}

#[tokio::test]
async fn rename_large_file_or_dir_uses_remote_rename() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(1024, 8192));
    r(&h).put_file(&path("large"), &vec![7u8; 10_000], SystemTime::now());
    r(&h).mkdir_all(&path("dir/sub"));
    h.fs.rename(ROOT_INO, os("large"), ROOT_INO, os("large2"), 0)
        .await
        .unwrap();
    h.fs.rename(ROOT_INO, os("dir"), ROOT_INO, os("dir2"), 0)
        .await
        .unwrap();
    assert_eq!(r(&h).calls("rename"), 2);
    assert_eq!(r(&h).content(&path("large2")).unwrap().len(), 10_000);
    assert!(r(&h).get(&path("dir2/sub")).is_some());
    let d2 = found(&h, ROOT_INO, "dir2").await.attr.ino;
    found(&h, d2, "sub").await;
}

#[tokio::test]
async fn rename_posix_errors_are_checked_before_any_move() {
    let h = harness();
    r(&h).mkdir_all(&path("full/x"));
    r(&h).mkdir_all(&path("d1"));
    r(&h).mkdir_all(&path("emptyd"));
    r(&h).put_file(&path("f1"), b"1", SystemTime::now());
    r(&h).put_file(&path("f2"), b"2", SystemTime::now());
    let e = |x: f7tfs::error::FsError| x.errno();
    assert_eq!(
        e(h.fs
            .rename(ROOT_INO, os("f1"), ROOT_INO, os("full"), 0)
            .await
            .unwrap_err()),
        libc::EISDIR
    );
    assert_eq!(
        e(h.fs
            .rename(ROOT_INO, os("d1"), ROOT_INO, os("f1"), 0)
            .await
            .unwrap_err()),
        libc::ENOTDIR
    );
    assert_eq!(
        e(h.fs
            .rename(ROOT_INO, os("d1"), ROOT_INO, os("full"), 0)
            .await
            .unwrap_err()),
        libc::ENOTEMPTY
    );
    assert_eq!(
        e(h.fs
            .rename(
                ROOT_INO,
                os("f1"),
                ROOT_INO,
                os("f2"),
                libc::RENAME_NOREPLACE
            )
            .await
            .unwrap_err()),
        libc::EEXIST
    );
    assert_eq!(
        e(h.fs
            .rename(
                ROOT_INO,
                os("f1"),
                ROOT_INO,
                os("f2"),
                libc::RENAME_EXCHANGE
            )
            .await
            .unwrap_err()),
        libc::EINVAL
    );
    let d1 = found(&h, ROOT_INO, "d1").await.attr.ino;
    assert_eq!(
        e(h.fs
            .rename(ROOT_INO, os("d1"), d1, os("inside"), 0)
            .await
            .unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        r(&h).calls("rename") + r(&h).calls("remove") + r(&h).calls("put_archive"),
        0
    );
    // Replace a file; replace an empty dir (not moved *into* it).
    h.fs.rename(ROOT_INO, os("f1"), ROOT_INO, os("f2"), 0)
        .await
        .unwrap();
    assert_eq!(r(&h).content(&path("f2")).unwrap(), b"1");
    h.fs.rename(ROOT_INO, os("d1"), ROOT_INO, os("emptyd"), 0)
        .await
        .unwrap();
    assert!(r(&h).get(&path("emptyd")).is_some());
    assert!(r(&h).get(&path("emptyd/d1")).is_none());
    assert!(r(&h).get(&path("d1")).is_none());
}

#[tokio::test]
async fn names_the_api_cannot_carry_are_refused() {
    let h = harness();
    for bad in ["it's", "new\nline", "tab\there"] {
        let err =
            h.fs.create(ROOT_INO, os(bad), 0o100644, 0, libc::O_WRONLY)
                .await
                .unwrap_err();
        assert_eq!(err.errno(), libc::EINVAL, "{bad:?}");
        assert_eq!(
            h.fs.mkdir(ROOT_INO, os(bad), 0o755, 0)
                .await
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
    }
    // A component longer than NAME_MAX is ENAMETOOLONG, as on a local disk (pjdfstest
    // *::enametoolong_component), for lookups and creations alike, without a call.
    let long = "n".repeat(256);
    let err = h.fs.lookup(ROOT_INO, os(&long)).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    let err =
        h.fs.create(ROOT_INO, os(&long), 0o100644, 0, libc::O_WRONLY)
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::ENAMETOOLONG);
    assert_eq!(r(&h).total_calls(), 0);
    write_new(&h, ROOT_INO, &"n".repeat(255), b"x").await;
    // Unicode, spaces and leading dots are fine.
    write_new(&h, ROOT_INO, "Grüße aus Zürich.txt", b"x").await;
    write_new(&h, ROOT_INO, ".hidden", b"y").await;
    assert!(r(&h).get(&path("Grüße aus Zürich.txt")).is_some());
}

#[tokio::test]
async fn utimens_on_small_file_sets_the_real_mtime_once() {
    let h = harness();
    r(&h).put_file(&path("f"), b"data", t(1_700_000_000));
    let ino = found(&h, ROOT_INO, "f").await.attr.ino;
    let req = SetAttr {
        mtime: Some(TimeOrNow::SpecificTime(t(1_500_000_000))),
        ..Default::default()
    };
    let a = h.fs.setattr(ino, req.clone()).await.unwrap();
    assert_eq!(a.attr.mtime, t(1_500_000_000));
    let n = r(&h).get(&path("f")).unwrap();
    assert_eq!(
        (n.mtime, n.content.as_ref()),
        (t(1_500_000_000), &b"data"[..])
    );
    assert_eq!(r(&h).calls("put_archive"), 1);
    // rsync's second run: the same mtime again costs nothing.
    h.fs.setattr(ino, req).await.unwrap();
    assert_eq!(r(&h).calls("put_archive"), 1);
}

#[tokio::test]
async fn write_utimens_chmod_close_is_one_archive_upload() {
    let h = harness();
    let c =
        h.fs.create(ROOT_INO, os("t.bin"), 0o100600, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    let ino = c.entry.attr.ino;
    h.fs.write(c.opened.fh, 0, b"payload").await.unwrap();
    h.fs.setattr(
        ino,
        SetAttr {
            mtime: Some(TimeOrNow::SpecificTime(t(1_234_567_890))),
            fh: Some(c.opened.fh),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    h.fs.setattr(
        ino,
        SetAttr {
            mode: Some(0o640),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    h.fs.flush(c.opened.fh).await.unwrap();
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).total_calls(), 1, "one put_archive");
    let n = r(&h).get(&path("t.bin")).unwrap();
    assert_eq!(
        (n.perm, n.mtime, n.content.as_ref()),
        (0o640, t(1_234_567_890), &b"payload"[..])
    );
    let a = h.fs.getattr(ino).await.unwrap().attr;
    assert_eq!((a.perm, a.mtime), (0o640, t(1_234_567_890)));
}

#[tokio::test]
async fn chmod_and_chown_are_direct_calls() {
    let h = harness();
    r(&h).put_file(&path("f"), b"x", SystemTime::now());
    let ino = found(&h, ROOT_INO, "f").await.attr.ino;
    let a =
        h.fs.setattr(
            ino,
            SetAttr {
                mode: Some(0o100700),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.attr.perm, 0o700);
    assert_eq!(r(&h).get(&path("f")).unwrap().perm, 0o700);
    h.fs.setattr(
        ino,
        SetAttr {
            gid: Some(4242),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let n = r(&h).get(&path("f")).unwrap();
    assert_eq!(
        (n.uid, n.gid),
        (5000, 4242),
        "chown sends both, uid mapped back"
    );
}

#[tokio::test]
async fn truncate_without_a_handle() {
    let h = harness();
    r(&h).put_file(&path("f"), b"0123456789", SystemTime::now());
    let ino = found(&h, ROOT_INO, "f").await.attr.ino;
    let a =
        h.fs.setattr(
            ino,
            SetAttr {
                size: Some(4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.attr.size, 4);
    assert_eq!(r(&h).content(&path("f")).unwrap(), b"0123");
    h.fs.setattr(
        ino,
        SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r(&h).content(&path("f")).unwrap(), b"");
}

#[tokio::test]
async fn failed_upload_keeps_the_bytes_and_reports_the_error() {
    let h = harness();
    r(&h).fail_always("upload", RemoteError::QuotaExceeded("quota".into()));
    let c =
        h.fs.create(ROOT_INO, os("precious"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"do not lose me").await.unwrap();
    let err = h.fs.flush(c.opened.fh).await.unwrap_err();
    assert_eq!(err.errno(), libc::EDQUOT);
    // close() had the error; release leaves the unchanged file to the retry queue.
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(h.fs.writeback_pending(), 1);
    let staging = h.dirs.path().join("staging");
    let manifests: Vec<_> = std::fs::read_dir(&staging)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(manifests.len(), 1);
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(manifests[0].path()).unwrap()).unwrap();
    assert_eq!(m["remote_path"], path("precious"));
    assert_eq!(m["state"], "failed");
    assert_eq!(m["size"], 14);
    assert!(m["cause"].as_str().unwrap().contains("quota"));
    let data = staging.join(m["data_file"].as_str().unwrap());
    assert_eq!(std::fs::read(&data).unwrap(), b"do not lose me");
    assert_eq!(h.fs.unsent().len(), 1);
    // A second mount on the same staging dir is refused (it would take this one's files);
    // the read-only listing (what a restart and `f7tfs recover` show) has it.
    let again = Filesystem::new(
        MemoryRemote::new(5000, 5001),
        &config(&h.dirs),
        ids(),
        Arc::new(ManualClock::new()),
    );
    assert!(again.is_err_and(|e| e.to_string().contains("in use by a running mount")));
    let listed = f7tfs::staging::list_manifests(&staging).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].manifest.remote_path, path("precious"));
    // Once the remote is back, the shutdown flush sends it.
    r(&h).clear_faults();
    assert!(h.fs.shutdown(Duration::from_secs(5)).await.is_empty());
    assert_eq!(r(&h).content(&path("precious")).unwrap(), b"do not lose me");
    assert!(h.fs.unsent().is_empty());
}

#[tokio::test]
async fn large_file_partial_reads_fetch_only_what_is_asked() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(64 * 1024, 128 * 1024));
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 251) as u8).collect();
    r(&h).put_file(&path("huge.bin"), &data, SystemTime::now());
    let ino = found(&h, ROOT_INO, "huge.bin").await.attr.ino;
    r(&h).reset_calls();
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    let peek = h.fs.read(o.fh, 10_000_000, 4096).await.unwrap();
    assert_eq!(&peek[..], &data[10_000_000..10_004_096]);
    assert_eq!(
        r(&h).range_bytes(),
        4096,
        "a random peek fetches only what is asked"
    );
    assert_eq!(r(&h).calls("stage_download"), 1);
    assert_eq!(r(&h).calls("download"), 0);
    h.fs.release(o.fh).await.unwrap();
    // Sequential read of everything is correct and reuses the staged object.
    r(&h).reset_calls();
    assert_eq!(read_all(&h, ino).await, data);
    assert_eq!(r(&h).calls("stage_download"), 0);
    assert!(
        r(&h).calls("read_range") < 60,
        "read-ahead grows: {}",
        r(&h).calls("read_range")
    );
}

#[tokio::test]
async fn large_file_ranges_stay_on_disk_and_reopen_needs_no_job() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(64 * 1024, 128 * 1024));
    let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
    r(&h).put_file(&path("big.bin"), &data, SystemTime::now());
    let ino = found(&h, ROOT_INO, "big.bin").await.attr.ino;
    // A random peek is kept: reading it again costs nothing.
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    h.fs.read(o.fh, 3_000_000, 4096).await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    r(&h).reset_calls();
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(o.keep_cache, "unchanged file: the kernel keeps its pages");
    let again = h.fs.read(o.fh, 3_000_000, 4096).await.unwrap();
    assert_eq!(&again[..], &data[3_000_000..3_004_096]);
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).calls("stage_download"), 0);
    assert_eq!(r(&h).range_bytes(), 0);
    // A full read, then reopening: from the disk cache, no job, no ranged read.
    assert_eq!(read_all(&h, ino).await, data);
    r(&h).reset_calls();
    assert_eq!(read_all(&h, ino).await, data);
    assert_eq!(r(&h).calls("stage_download"), 0);
    assert_eq!(r(&h).range_bytes(), 0);
    assert!(h.fs.content_stats().hits > 0);
    // Appending needs the content first: it comes from disk too.
    let o =
        h.fs.open(ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
    h.fs.write(o.fh, 0, b"tail").await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).range_bytes(), 0);
    assert_eq!(r(&h).calls("upload_large"), 1);
    let got = r(&h).content(&path("big.bin")).unwrap();
    assert_eq!(&got[..data.len()], &data[..]);
    assert_eq!(&got[data.len()..], b"tail");
    // Our own upload left the new version in the cache: reading it back costs nothing.
    r(&h).reset_calls();
    h.clock.advance(Duration::from_secs(10));
    let mut want = data.clone();
    want.extend_from_slice(b"tail");
    assert_eq!(read_all(&h, ino).await, want);
    assert_eq!(r(&h).range_bytes(), 0);
    assert_eq!(r(&h).calls("stage_download"), 0);
    // A version changed on the remote misses it.
    r(&h).put_file(
        &path("big.bin"),
        &data,
        SystemTime::now() + Duration::from_secs(5),
    );
    h.clock.advance(Duration::from_secs(10));
    assert_eq!(read_all(&h, ino).await, data);
    assert!(r(&h).range_bytes() > 0);
}

#[tokio::test]
async fn appending_to_an_uncached_large_file_fetches_it_once_in_ranges() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(64 * 1024, 128 * 1024));
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i % 249) as u8).collect();
    r(&h).put_file(&path("big.bin"), &data, SystemTime::now());
    let ino = found(&h, ROOT_INO, "big.bin").await.attr.ino;
    r(&h).reset_calls();
    let o =
        h.fs.open(ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
    h.fs.write(o.fh, 0, b"!").await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).calls("stage_download"), 1);
    assert_eq!(
        r(&h).range_bytes(),
        data.len() as u64,
        "each byte fetched once"
    );
    assert_eq!(r(&h).calls("read_range"), 3, "8 MiB ranges");
    let got = r(&h).content(&path("big.bin")).unwrap();
    assert_eq!(got.len(), data.len() + 1);
    assert!(got[..data.len()] == data[..]);
}

#[tokio::test]
async fn a_same_size_rewrite_within_one_second_is_not_read_from_the_old_cache() {
    // The remote's mtimes have whole seconds: a patch in place keeps the size and, within
    // that second, the mtime. What the mount reads next must still be the patch.
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(1024, 2048));
    let secs = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let mut within_one_second = false;
    for round in 0..3u8 {
        let start = secs();
        let name = format!("big{round}");
        let ino = write_new(&h, ROOT_INO, &name, &[1u8; 5000]).await;
        assert!(
            read_all(&h, ino).await == [1u8; 5000],
            "cached after this read"
        );
        let o = h.fs.open(ino, libc::O_WRONLY).await.unwrap();
        h.fs.write(o.fh, 100, b"PATCH").await.unwrap();
        h.fs.release(o.fh).await.unwrap();
        let mut want = vec![1u8; 5000];
        want[100..105].copy_from_slice(b"PATCH");
        assert!(r(&h).content(&path(&name)).unwrap() == want);
        assert!(
            read_all(&h, ino).await == want,
            "the patch is read back, not the old cache"
        );
        if secs() == start {
            within_one_second = true;
            break;
        }
    }
    assert!(within_one_second, "no round fell within one second");
}

#[tokio::test]
async fn rewriting_a_large_file_keeps_only_its_latest_version_cached() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(1024, 2048));
    let mut ino = 0;
    for round in 1..=5u8 {
        let data = vec![round; 4000 + round as usize];
        let o = if round == 1 {
            ino = write_new(&h, ROOT_INO, "big", &data).await;
            None
        } else {
            Some(
                h.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC)
                    .await
                    .unwrap(),
            )
        };
        if let Some(o) = o {
            h.fs.write(o.fh, 0, &data).await.unwrap();
            h.fs.release(o.fh).await.unwrap();
        }
        h.clock.advance(Duration::from_secs(10));
        assert!(read_all(&h, ino).await == data);
    }
    let used = h.fs.content_stats().used;
    assert_eq!(used, 4005, "only the last version stays on disk");
}

#[tokio::test]
async fn large_file_writes_use_the_staged_upload() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(1024, 2048));
    let big = vec![9u8; 5000];
    write_new(&h, ROOT_INO, "big", &big).await;
    assert_eq!(r(&h).calls("upload_large"), 1);
    assert_eq!(r(&h).content(&path("big")).unwrap(), big);
    // Append to it: fetched through ranged reads first.
    let ino = found(&h, ROOT_INO, "big").await.attr.ino;
    let o =
        h.fs.open(ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
    h.fs.write(o.fh, 0, b"tail").await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    let got = r(&h).content(&path("big")).unwrap();
    assert_eq!(got.len(), 5004);
    assert_eq!(&got[5000..], b"tail");
}

#[tokio::test]
async fn concurrent_identical_calls_are_coalesced() {
    let h = Arc::new(harness());
    r(&h).mkdir_all(&path("d"));
    r(&h).set_delay("list", Duration::from_millis(200));
    let dir = found(&h, ROOT_INO, "d").await.attr.ino;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let d = h.fs.opendir(dir).await.unwrap();
            h.fs.readdir(dir, d.fh, 0).await.unwrap().len()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 2);
    }
    assert_eq!(r(&h).calls("list"), 1);
}

#[tokio::test]
async fn a_slow_upload_does_not_stall_listing() {
    let h = Arc::new(harness());
    r(&h).mkdir_all(&path("other"));
    r(&h).set_delay("upload", Duration::from_secs(3));
    let c =
        h.fs.create(ROOT_INO, os("slow"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"x").await.unwrap();
    let h2 = h.clone();
    let upload = tokio::spawn(async move { h2.fs.release(c.opened.fh).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let dir = found(&h, ROOT_INO, "other").await.attr.ino;
    let d = h.fs.opendir(dir).await.unwrap();
    h.fs.readdir(dir, d.fh, 0).await.unwrap();
    h.fs.getattr(c.entry.attr.ino).await.unwrap();
    assert!(
        !upload.is_finished(),
        "listing answered while the upload runs"
    );
    upload.await.unwrap().unwrap();
}

#[tokio::test]
async fn unlink_of_an_open_new_file_never_uploads() {
    let h = harness();
    let c =
        h.fs.create(ROOT_INO, os("gone"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"x").await.unwrap();
    h.fs.unlink(ROOT_INO, os("gone")).await.unwrap();
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).total_calls(), 0);
    assert!(r(&h).get(&path("gone")).is_none());
    let left: Vec<_> = std::fs::read_dir(h.dirs.path().join("staging"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".lock")
        .collect();
    assert!(left.is_empty(), "staging cleaned");
}

#[tokio::test]
async fn unsupported_ops_answer_clearly() {
    let h = harness();
    assert_eq!(h.fs.link().await.unwrap_err().errno(), libc::EPERM);
    assert_eq!(h.fs.xattr().unwrap_err().errno(), libc::ENOTSUP);
    let err =
        h.fs.mknod(ROOT_INO, os("fifo"), libc::S_IFIFO | 0o644, 0)
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::EPERM);
    h.fs.mknod(ROOT_INO, os("reg"), libc::S_IFREG | 0o644, 0)
        .await
        .unwrap();
    assert_eq!(r(&h).content(&path("reg")).unwrap(), b"");
    let s = h.fs.statfs();
    assert!(s.blocks > 1 << 30 && s.bavail > 0);
}

#[tokio::test]
async fn mkdir_symlink_readlink() {
    let h = harness();
    let e = h.fs.mkdir(ROOT_INO, os("d"), 0o40700, 0o022).await.unwrap();
    assert_eq!(e.attr.perm, 0o700);
    assert_eq!(r(&h).get(&path("d")).unwrap().perm, 0o700);
    let err = h.fs.mkdir(ROOT_INO, os("d"), 0o755, 0).await.unwrap_err();
    assert_eq!(err.errno(), libc::EEXIST);
    let l =
        h.fs.symlink(e.attr.ino, os("abs"), Path::new("/etc/hosts"))
            .await
            .unwrap();
    assert_eq!(l.attr.kind, fuser::FileType::Symlink);
    assert_eq!(h.fs.readlink(l.attr.ino).await.unwrap(), "/etc/hosts");
}

#[tokio::test]
async fn new_files_after_the_first_need_no_stat() {
    let h = harness();
    write_new(&h, ROOT_INO, "first", b"1").await;
    assert_eq!(r(&h).calls("stat"), 1, "learns the remote's default mode");
    r(&h).reset_calls();
    for i in 0..10 {
        write_new(&h, ROOT_INO, &format!("n{i}"), b"data").await;
    }
    assert_eq!(r(&h).calls("upload"), 10);
    assert_eq!(r(&h).total_calls(), 10, "one upload per file");
    // A different mode still gets checked and fixed.
    let c =
        h.fs.create(ROOT_INO, os("exe"), 0o100755, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"x").await.unwrap();
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).get(&path("exe")).unwrap().perm, 0o755);
}

#[tokio::test]
async fn flush_without_writes_defers_truncation_to_release() {
    let h = harness();
    r(&h).put_file(&path("f"), b"old content", SystemTime::now());
    let ino = found(&h, ROOT_INO, "f").await.attr.ino;
    // `echo x > f`: open(O_TRUNC), dup2 + close of the first descriptor (flush), write, close.
    let o =
        h.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC)
            .await
            .unwrap();
    h.fs.flush(o.fh).await.unwrap();
    assert_eq!(
        r(&h).content(&path("f")).unwrap(),
        b"old content",
        "no empty upload"
    );
    h.fs.write(o.fh, 0, b"x\n").await.unwrap();
    h.fs.flush(o.fh).await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("f")).unwrap(), b"x\n");
    assert_eq!(r(&h).calls("upload") + r(&h).calls("put_archive"), 1);
    // `: > f` (truncate only): sent at release.
    let o =
        h.fs.open(ino, libc::O_WRONLY | libc::O_TRUNC)
            .await
            .unwrap();
    h.fs.flush(o.fh).await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("f")).unwrap(), b"");
    // A new file is on the remote when close (flush) returns, even without writes.
    let c =
        h.fs.create(ROOT_INO, os("touched"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.flush(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("touched")).unwrap(), b"");
    h.fs.release(c.opened.fh).await.unwrap();
}

#[tokio::test]
async fn a_refused_archive_route_falls_back_to_plain_calls() {
    let h = harness();
    r(&h).fail_always(
        "put_archive",
        RemoteError::InvalidArgument("no tar here".into()),
    );
    // Empty file: the empty upload (which times out on v2) confirmed by stat.
    write_new(&h, ROOT_INO, "empty", b"").await;
    assert_eq!(r(&h).content(&path("empty")).unwrap(), b"");
    // Small-file rename: the remote rename instead.
    r(&h).put_file(&path("a"), b"A", t(1_600_000_000));
    h.fs.rename(ROOT_INO, os("a"), ROOT_INO, os("b"), 0)
        .await
        .unwrap();
    assert_eq!(r(&h).content(&path("b")).unwrap(), b"A");
    assert_eq!(r(&h).calls("rename"), 1);
    // utimens: accepted, kept for the session.
    let ino = found(&h, ROOT_INO, "b").await.attr.ino;
    let a =
        h.fs.setattr(
            ino,
            SetAttr {
                mtime: Some(TimeOrNow::SpecificTime(t(1_000_000_000))),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(a.attr.mtime, t(1_000_000_000));
    // Transient failures are not papered over: close reports them.
    r(&h).fail_always("put_archive", RemoteError::Unavailable("down".into()));
    let c =
        h.fs.create(ROOT_INO, os("e2"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    assert_eq!(
        h.fs.flush(c.opened.fh).await.unwrap_err().errno(),
        libc::EIO
    );
    r(&h).clear_faults();
    h.fs.release(c.opened.fh).await.unwrap();
    // The retry queue sends it once its pause is over.
    h.clock.advance(Duration::from_secs(11));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("e2")).unwrap(), b"");
}

#[tokio::test]
async fn delayed_writeback_turns_an_rsync_sequence_into_one_archive() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let mut cfg = config(&dirs);
    cfg.writeback_delay = Duration::from_secs(1);
    let clock = ManualClock::new();
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(clock.clone())).unwrap();
    let h = H { fs, clock, dirs };
    // rsync: temp file 0600, write, close, utimens, chmod, rename over the final name.
    let c =
        h.fs.create(
            ROOT_INO,
            os(".f.XyZ"),
            0o100600,
            0o022,
            libc::O_WRONLY | libc::O_EXCL,
        )
        .await
        .unwrap();
    let ino = c.entry.attr.ino;
    h.fs.write(c.opened.fh, 0, b"synced").await.unwrap();
    h.fs.flush(c.opened.fh).await.unwrap();
    h.fs.release(c.opened.fh).await.unwrap();
    h.fs.setattr(
        ino,
        SetAttr {
            mtime: Some(TimeOrNow::SpecificTime(t(1_111_111_111))),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    h.fs.setattr(
        ino,
        SetAttr {
            mode: Some(0o644),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    h.fs.rename(ROOT_INO, os(".f.XyZ"), ROOT_INO, os("f"), 0)
        .await
        .unwrap();
    // Other openers in the mount see it already (close-to-open inside the mount).
    assert_eq!(read_all(&h, ino).await, b"synced");
    let sent = |h: &H| {
        ["upload", "put_archive", "chmod", "remove", "rename"]
            .iter()
            .map(|m| r(h).calls(m))
            .sum::<u64>()
    };
    assert_eq!(sent(&h), 0, "nothing sent yet");
    h.fs.writeback_tick().await;
    assert_eq!(h.fs.writeback_pending(), 1, "not due yet");
    h.clock.advance(Duration::from_millis(1100));
    h.fs.writeback_tick().await;
    assert_eq!(h.fs.writeback_pending(), 0);
    assert_eq!(r(&h).calls("put_archive"), 1);
    assert_eq!(sent(&h), 1, "one archive upload, nothing else");
    let n = r(&h).get(&path("f")).unwrap();
    assert_eq!(
        (n.content.as_ref(), n.perm, n.mtime),
        (&b"synced"[..], 0o644, t(1_111_111_111))
    );
    assert!(r(&h).get(&path(".f.XyZ")).is_none());
    let left: Vec<_> = std::fs::read_dir(h.dirs.path().join("staging"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != ".lock")
        .collect();
    assert!(left.is_empty(), "staged copy dropped after the upload");
    // fsync never waits for the delay.
    let c =
        h.fs.create(ROOT_INO, os("g"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"now").await.unwrap();
    h.fs.fsync(c.opened.fh).await.unwrap();
    assert_eq!(r(&h).content(&path("g")).unwrap(), b"now");
    h.fs.release(c.opened.fh).await.unwrap();
    // Unmount sends what is still queued.
    write_new(&h, ROOT_INO, "late", b"L").await;
    assert!(r(&h).get(&path("late")).is_none());
    assert!(h.fs.shutdown(Duration::from_secs(5)).await.is_empty());
    assert_eq!(r(&h).content(&path("late")).unwrap(), b"L");
}

#[tokio::test]
async fn delayed_small_files_of_a_directory_share_one_archive() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let mut cfg = config(&dirs);
    cfg.writeback_delay = Duration::from_millis(500);
    let clock = ManualClock::new();
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(clock.clone())).unwrap();
    let h = H { fs, clock, dirs };
    let sub =
        h.fs.mkdir(ROOT_INO, os("sub"), 0o755, 0o022)
            .await
            .unwrap()
            .attr
            .ino;
    for i in 0..20 {
        write_new(
            &h,
            ROOT_INO,
            &format!("a{i}"),
            format!("content {i}").as_bytes(),
        )
        .await;
        write_new(&h, sub, &format!("b{i}"), b"").await;
    }
    assert_eq!(h.fs.writeback_pending(), 40);
    h.clock.advance(Duration::from_secs(1));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).calls("put_archive"), 2, "one archive per directory");
    assert_eq!(r(&h).calls("upload"), 0);
    for i in 0..20 {
        assert_eq!(
            r(&h).content(&path(&format!("a{i}"))).unwrap(),
            format!("content {i}").as_bytes()
        );
        assert_eq!(r(&h).content(&path(&format!("sub/b{i}"))).unwrap(), b"");
    }
    assert!(h.fs.unsent().is_empty());
    // A refused batch falls back to one upload per file.
    r(&h).fail_once("put_archive", RemoteError::InvalidArgument("nope".into()));
    write_new(&h, ROOT_INO, "x1", b"1").await;
    write_new(&h, ROOT_INO, "x2", b"2").await;
    h.clock.advance(Duration::from_secs(1));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("x1")).unwrap(), b"1");
    assert_eq!(r(&h).content(&path("x2")).unwrap(), b"2");
}

#[tokio::test]
async fn a_forgotten_inode_with_unsent_data_keeps_its_state() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let mut cfg = config(&dirs);
    cfg.writeback_delay = Duration::from_secs(60);
    let clock = ManualClock::new();
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(clock.clone())).unwrap();
    let h = H { fs, clock, dirs };
    let ino = write_new(&h, ROOT_INO, "waiting", b"12345").await;
    h.fs.forget(ino, 1);
    h.clock.advance(Duration::from_secs(30));
    let e = found(&h, ROOT_INO, "waiting").await;
    assert_eq!(
        (e.attr.ino, e.attr.size),
        (ino, 5),
        "local state still wins"
    );
    assert!(r(&h).get(&path("waiting")).is_none());
    h.clock.advance(Duration::from_secs(31));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("waiting")).unwrap(), b"12345");
}

#[tokio::test]
async fn our_entry_changes_move_the_parents_mtime_and_ctime() {
    // pjdfstest *::changed_time_fields_success, *::update_mtime_ctime_success_folder: after
    // mkdir/create/unlink/rename inside a directory, stat of that directory shows new times
    // at once (the kernel asks again right after such an op), not the cached ones.
    let h = harness();
    let a =
        h.fs.mkdir(ROOT_INO, os("a"), 0o755, 0)
            .await
            .unwrap()
            .attr
            .ino;
    let b =
        h.fs.mkdir(ROOT_INO, os("b"), 0o755, 0)
            .await
            .unwrap()
            .attr
            .ino;
    let times = |x: fuser::FileAttr| (x.mtime, x.ctime);
    let step = || tokio::time::sleep(Duration::from_millis(1100));

    let before = times(h.fs.getattr(a).await.unwrap().attr);
    step().await;
    h.fs.mkdir(a, os("sub"), 0o755, 0).await.unwrap();
    let after_mkdir = times(h.fs.getattr(a).await.unwrap().attr);
    assert!(after_mkdir.0 > before.0 && after_mkdir.1 > before.1);

    step().await;
    write_new(&h, a, "f", b"x").await;
    let after_create = times(h.fs.getattr(a).await.unwrap().attr);
    assert!(after_create.0 > after_mkdir.0 && after_create.1 > after_mkdir.1);

    let b_before = times(h.fs.getattr(b).await.unwrap().attr);
    step().await;
    h.fs.rename(a, os("f"), b, os("g"), 0).await.unwrap();
    let a_after = times(h.fs.getattr(a).await.unwrap().attr);
    let b_after = times(h.fs.getattr(b).await.unwrap().attr);
    assert!(
        a_after.0 > after_create.0,
        "source directory's mtime moves on"
    );
    assert!(b_after.0 > b_before.0, "target directory's mtime moves on");

    step().await;
    h.fs.unlink(b, os("g")).await.unwrap();
    h.fs.rmdir(a, os("sub")).await.unwrap();
    assert!(h.fs.getattr(b).await.unwrap().attr.mtime > b_after.0);
    assert!(h.fs.getattr(a).await.unwrap().attr.mtime > a_after.0);
}

/// A tiny tmpfs for the staging area (root only), unmounted on drop.
struct TinyDisk(std::path::PathBuf);

impl TinyDisk {
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| TinyDisk(dir.to_path_buf()))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test]
async fn a_full_staging_disk_is_enospc_on_write() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let Some(_disk) = TinyDisk::mount(&dirs.path().join("staging"), "64k") else {
        eprintln!(
            "SKIPPED a_full_staging_disk_is_enospc_on_write: cannot mount a tmpfs (needs root)"
        );
        return;
    };
    let cfg = config(&dirs);
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(ManualClock::new())).unwrap();
    let c = fs
        .create(ROOT_INO, os("big"), 0o100644, 0o022, libc::O_WRONLY)
        .await
        .unwrap();
    let chunk = vec![1u8; 16 * 1024];
    let mut err = None;
    for i in 0..16u64 {
        if let Err(e) = fs.write(c.opened.fh, i * chunk.len() as u64, &chunk).await {
            err = Some(e);
            break;
        }
    }
    let err = err.expect("a 64 KiB staging disk fills up");
    assert_eq!(err.errno(), libc::ENOSPC);
    // What fitted is still there and can be sent.
    let _ = fs.release(c.opened.fh).await;
}

#[tokio::test]
async fn truncate_by_path_racing_the_last_close_is_uploaded() {
    // pjdfstest truncate::shrink_not_empty found it: `close(fd); truncate(path, n)` lost the
    // truncation when the kernel's RELEASE of the closed fd was still running while the
    // SETATTR arrived: setattr saw the file as open, left the upload to that handle, whose
    // write-back had already found nothing to send.
    let h = harness();
    r(&h).put_file(&path("f"), &[7u8; 12345], t(1_700_000_000));
    let ino = found(&h, ROOT_INO, "f").await.attr.ino;
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    // The setattr's own lookup of the file waits on the remote; the release runs meanwhile.
    h.clock.advance(Duration::from_secs(60));
    r(&h).set_delay("stat", Duration::from_millis(200));
    r(&h).set_delay("list", Duration::from_millis(200));
    let grow = SetAttr {
        size: Some(23456),
        ..Default::default()
    };
    let (attr, released) = tokio::join!(h.fs.setattr(ino, grow), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        h.fs.release(o.fh).await
    });
    released.unwrap();
    assert_eq!(attr.unwrap().attr.size, 23456);
    let content = r(&h).content(&path("f")).unwrap();
    assert_eq!(content.len(), 23456, "the truncation reached the remote");
    assert!(content[..12345].iter().all(|b| *b == 7));
    assert!(content[12345..].iter().all(|b| *b == 0));
}

async fn nlink(h: &H, ino: u64) -> u32 {
    h.fs.getattr(ino).await.unwrap().attr.nlink
}

#[tokio::test]
async fn link_counts_and_ctime_follow_our_own_changes() {
    // pjdfstest rename::updates_link_parent, unlink::open_file_not_freed,
    // chmod::update_ctime.
    let h = harness();
    let a =
        h.fs.mkdir(ROOT_INO, os("a"), 0o755, 0)
            .await
            .unwrap()
            .attr
            .ino;
    let b =
        h.fs.mkdir(ROOT_INO, os("b"), 0o755, 0)
            .await
            .unwrap()
            .attr
            .ino;
    assert_eq!(nlink(&h, a).await, 2);
    h.fs.mkdir(a, os("sub"), 0o755, 0).await.unwrap();
    assert_eq!(nlink(&h, a).await, 3, "a subdirectory's `..` counts");
    h.fs.rename(a, os("sub"), b, os("moved"), 0).await.unwrap();
    assert_eq!((nlink(&h, a).await, nlink(&h, b).await), (2, 3));
    h.fs.rmdir(b, os("moved")).await.unwrap();
    assert_eq!(nlink(&h, b).await, 2);

    // An open file that was unlinked has no links left, and still works.
    let c =
        h.fs.create(ROOT_INO, os("f"), 0o100644, 0, libc::O_RDWR)
            .await
            .unwrap();
    h.fs.unlink(ROOT_INO, os("f")).await.unwrap();
    assert_eq!(nlink(&h, c.entry.attr.ino).await, 0);
    h.fs.write(c.opened.fh, 0, b"hello").await.unwrap();
    assert_eq!(&h.fs.read(c.opened.fh, 0, 5).await.unwrap()[..], b"hello");
    h.fs.release(c.opened.fh).await.unwrap();
    assert!(r(&h).get(&path("f")).is_none());

    // chmod moves ctime on.
    r(&h).put_file(&path("g"), b"data", t(1_700_000_000));
    let g = found(&h, ROOT_INO, "g").await.attr.ino;
    let before = h.fs.getattr(g).await.unwrap().attr.ctime;
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let after = h.fs.setattr(g, chmod).await.unwrap().attr;
    assert!(after.ctime > before, "{:?} > {before:?}", after.ctime);
    assert_eq!(after.perm, 0o600);

    // rename moves the moved entry's ctime on (pjdfstest rename::changed_ctime_success).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.fs.rename(ROOT_INO, os("g"), ROOT_INO, os("g2"), 0)
        .await
        .unwrap();
    let moved = found(&h, ROOT_INO, "g2").await.attr;
    assert!(
        moved.ctime > after.ctime,
        "{:?} > {:?}",
        moved.ctime,
        after.ctime
    );
}

#[tokio::test]
async fn ctime_moves_on_for_files_still_waiting_for_delayed_write_back() {
    // pjdfstest chmod::update_ctime::regular and rename::changed_ctime_success::regular
    // with --writeback-delay: the new file is still local when chmod/rename come.
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let mut cfg = config(&dirs);
    cfg.writeback_delay = Duration::from_secs(60);
    let clock = ManualClock::new();
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(clock.clone())).unwrap();
    let h = H { fs, clock, dirs };
    let ino = write_new(&h, ROOT_INO, "f", b"data").await;
    assert!(r(&h).get(&path("f")).is_none(), "still waiting");
    let before = h.fs.getattr(ino).await.unwrap().attr.ctime;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let chmod = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let after = h.fs.setattr(ino, chmod).await.unwrap().attr;
    assert!(
        after.ctime > before,
        "chmod: {:?} > {before:?}",
        after.ctime
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    h.fs.rename(ROOT_INO, os("f"), ROOT_INO, os("g"), 0)
        .await
        .unwrap();
    let moved = found(&h, ROOT_INO, "g").await.attr;
    assert!(
        moved.ctime > after.ctime,
        "rename: {:?} > {:?}",
        moved.ctime,
        after.ctime
    );
    assert_eq!(moved.perm, 0o600);
}

// ---- batched reads ----

/// Lists `dir` through opendir/readdir (as `cp -r` does) and returns the names seen.
async fn list_names(h: &H, dir: u64) -> Vec<String> {
    let d = h.fs.opendir(dir).await.unwrap();
    let mut names = Vec::new();
    let mut off = 0;
    loop {
        let items = h.fs.readdir(dir, d.fh, off).await.unwrap();
        if items.is_empty() {
            break;
        }
        off = items.last().unwrap().offset;
        names.extend(items.into_iter().map(|i| i.name));
    }
    h.fs.releasedir(d.fh);
    names.retain(|n| n != "." && n != "..");
    names
}

fn small_content(i: usize) -> Vec<u8> {
    format!("file {i} ").repeat(100 + i * 37).into_bytes()
}

/// `n` files `d/fNN` of `small_content`, mtimes a second apart; returns d's inode, listed.
async fn small_dir(h: &H, n: usize) -> u64 {
    r(h).mkdir_all(&path("d"));
    for i in 0..n {
        r(h).put_file(
            &path(&format!("d/f{i:02}")),
            &small_content(i),
            t(1_700_000_000 + i as u64),
        );
    }
    let dir = found(h, ROOT_INO, "d").await.attr.ino;
    assert_eq!(list_names(h, dir).await.len(), n);
    dir
}

#[tokio::test]
async fn reading_twenty_small_files_of_a_directory_is_one_batch() {
    let h = harness();
    let dir = small_dir(&h, 20).await;
    r(&h).reset_calls();
    for i in 0..20 {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i), "f{i:02}");
    }
    assert_eq!(r(&h).calls("fetch_files"), 1);
    assert_eq!(r(&h).calls("download"), 0);
    assert_eq!(r(&h).total_calls(), 1);
}

#[tokio::test]
async fn concurrent_readers_share_one_batch() {
    let h = harness();
    let dir = small_dir(&h, 12).await;
    r(&h).set_delay("fetch_files", Duration::from_millis(100));
    r(&h).reset_calls();
    let mut inos = Vec::new();
    for i in 0..12 {
        inos.push(found(&h, dir, &format!("f{i:02}")).await.attr.ino);
    }
    let reads = futures_util::future::join_all(inos.iter().map(|&ino| read_all(&h, ino))).await;
    for (i, data) in reads.into_iter().enumerate() {
        assert_eq!(data, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 1);
    assert_eq!(r(&h).calls("download"), 0);
}

#[tokio::test]
async fn a_file_changed_since_the_listing_falls_back_to_its_own_download() {
    let h = harness();
    let dir = small_dir(&h, 10).await;
    // Same size, other mtime: the archive's copy does not match the listing.
    let changed: Vec<u8> = small_content(3).iter().map(|b| b ^ 1).collect();
    r(&h).put_file(&path("d/f03"), &changed, t(1_800_000_000));
    r(&h).reset_calls();
    let e = found(&h, dir, "f03").await;
    assert_eq!(read_all(&h, e.attr.ino).await, changed);
    assert_eq!(r(&h).calls("fetch_files"), 1);
    assert_eq!(r(&h).calls("download"), 1);
    for i in [0, 1, 2, 4, 5, 6, 7, 8, 9] {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 1);
    assert_eq!(r(&h).calls("download"), 1);
}

#[tokio::test]
async fn an_unsupported_batch_falls_back_and_is_not_retried() {
    let h = harness();
    let dir = small_dir(&h, 20).await;
    r(&h).fail_always(
        "fetch_files",
        RemoteError::Unsupported("no compress here".into()),
    );
    r(&h).reset_calls();
    for i in 0..20 {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 1);
    assert_eq!(r(&h).calls("download"), 20);
}

#[tokio::test]
async fn big_files_and_directories_over_the_limit_are_not_batched() {
    // Files above the per-file bound of a batch.
    let h = harness();
    r(&h).mkdir_all(&path("d"));
    let big = vec![7u8; 300 << 10];
    for i in 0..6 {
        r(&h).put_file(&path(&format!("d/b{i}")), &big, t(1_700_000_000));
    }
    let dir = found(&h, ROOT_INO, "d").await.attr.ino;
    list_names(&h, dir).await;
    r(&h).reset_calls();
    for i in 0..6 {
        let e = found(&h, dir, &format!("b{i}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, big);
    }
    assert_eq!(r(&h).calls("fetch_files"), 0);
    assert_eq!(r(&h).calls("download"), 6);

    // Small files that together exceed the direct download limit.
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(20_000, 5_242_880));
    let dir = small_dir(&h, 20).await;
    r(&h).reset_calls();
    for i in 0..20 {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 0);
    assert_eq!(r(&h).calls("download"), 20);
}

#[tokio::test]
async fn batch_reads_can_be_turned_off() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut c = config(&dirs);
    c.batch_reads = false;
    let fs = Filesystem::new(remote, &c, ids(), Arc::new(clock.clone())).unwrap();
    let h = H { fs, clock, dirs };
    let dir = small_dir(&h, 8).await;
    r(&h).reset_calls();
    for i in 0..8 {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 0);
    assert_eq!(r(&h).calls("download"), 8);
}

#[tokio::test]
async fn hidden_archives_never_show_in_listings() {
    let h = harness();
    r(&h).mkdir_all(&path("d"));
    r(&h).put_file(&path("d/a"), b"a", t(1_700_000_000));
    let tgz = format!(".f7tfs-{}.tgz", uuid::Uuid::new_v4().simple());
    let tar = format!(".f7tfs-{}.tar", uuid::Uuid::new_v4());
    r(&h).put_file(&path(&format!("d/{tgz}")), b"z", t(1_700_000_000));
    r(&h).put_file(&path(&format!("d/{tar}")), b"z", t(1_700_000_000));
    // Look-alikes that are not ours stay visible.
    r(&h).put_file(&path("d/.f7tfs-notes.tgz"), b"n", t(1_700_000_000));
    let dir = found(&h, ROOT_INO, "d").await.attr.ino;
    let mut names = list_names(&h, dir).await;
    names.sort();
    assert_eq!(names, vec![".f7tfs-notes.tgz".to_string(), "a".to_string()]);
}

#[tokio::test]
async fn a_directory_too_big_for_the_content_cache_is_not_batched() {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut c = config(&dirs);
    // The 20 files hold about 75 KB: a batch would not fit half of this cache.
    c.cache.cache_max_size = 64 << 10;
    let fs = Filesystem::new(remote, &c, ids(), Arc::new(clock.clone())).unwrap();
    let h = H { fs, clock, dirs };
    let dir = small_dir(&h, 20).await;
    r(&h).reset_calls();
    for i in 0..20 {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 0);
    assert_eq!(r(&h).calls("download"), 20);
}

#[tokio::test]
async fn files_not_matching_a_recent_batch_do_not_start_another() {
    let h = harness();
    let dir = small_dir(&h, 12).await;
    // Seven files change behind the listing's back: the batch cannot use them.
    for i in 0..7 {
        r(&h).put_file(
            &path(&format!("d/f{i:02}")),
            &small_content(i),
            t(1_900_000_000),
        );
    }
    r(&h).reset_calls();
    for i in 0..12 {
        let e = found(&h, dir, &format!("f{i:02}")).await;
        assert_eq!(read_all(&h, e.attr.ino).await, small_content(i));
    }
    assert_eq!(r(&h).calls("fetch_files"), 1);
    assert_eq!(r(&h).calls("download"), 7);
}

/// Times the API cannot set (directories, large files) last the session, past the attribute
/// TTL, while the remote object is unchanged; a remote rewrite, or our own new entry in the
/// directory, ends them.
#[tokio::test]
async fn unsettable_mtimes_last_the_session_until_the_remote_changes() {
    let h = harness_with(MemoryRemote::new(5000, 5001).with_limits(1024, 8192));
    r(&h).mkdir_all(&path("d"));
    r(&h).put_file(&path("large"), &vec![7u8; 10_000], t(1_700_000_000));
    let d = found(&h, ROOT_INO, "d").await.attr.ino;
    let large = found(&h, ROOT_INO, "large").await.attr.ino;
    let old = t(1_500_000_000);
    for ino in [d, large] {
        let req = SetAttr {
            mtime: Some(TimeOrNow::SpecificTime(old)),
            ..Default::default()
        };
        assert_eq!(h.fs.setattr(ino, req).await.unwrap().attr.mtime, old);
    }
    assert_eq!(r(&h).calls("put_archive"), 0);
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(found(&h, ROOT_INO, "d").await.attr.mtime, old);
    assert_eq!(found(&h, ROOT_INO, "large").await.attr.mtime, old);
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(found(&h, ROOT_INO, "large").await.attr.mtime, old);
    // Rewritten on the remote: its own mtime shows again.
    r(&h).put_file(&path("large"), &vec![8u8; 10_000], t(1_800_000_000));
    h.clock.advance(Duration::from_secs(60));
    assert_eq!(
        found(&h, ROOT_INO, "large").await.attr.mtime,
        t(1_800_000_000)
    );
    // Our own new entry in the directory moves its mtime on, as on a local disk.
    write_new(&h, d, "new", b"x").await;
    h.clock.advance(Duration::from_secs(60));
    assert_ne!(found(&h, ROOT_INO, "d").await.attr.mtime, old);
}

/// The default write-back delay (here 2 s) with the remote tree `tree/{f00..f29, sub/{g0..g4}}`.
async fn removal_harness() -> H {
    let remote = MemoryRemote::new(5000, 5001);
    remote.mkdir_all(&path("tree/sub"));
    for i in 0..30 {
        remote.put_file(&path(&format!("tree/f{i:02}")), b"x", t(1_000));
    }
    for i in 0..5 {
        remote.put_file(&path(&format!("tree/sub/g{i}")), b"y", t(1_000));
    }
    remote.mkdir_all(ROOT);
    let dirs = tempfile::tempdir().unwrap();
    let mut cfg = config(&dirs);
    cfg.writeback_delay = Duration::from_secs(2);
    let clock = ManualClock::new();
    let fs = Filesystem::new(remote, &cfg, ids(), Arc::new(clock.clone())).unwrap();
    H { fs, clock, dirs }
}

/// `rm -r`'s pattern on one directory: list it, unlink each file, rmdir what is left.
async fn rm_r(h: &H, parent: u64, name: &str) {
    let dir = found(h, parent, name).await.attr.ino;
    let d = h.fs.opendir(dir).await.unwrap();
    let items = h.fs.readdir(dir, d.fh, 0).await.unwrap();
    h.fs.releasedir(d.fh);
    for it in items.iter().filter(|i| i.name != "." && i.name != "..") {
        let e = found(h, dir, &it.name).await;
        if e.attr.kind == fuser::FileType::Directory {
            Box::pin(rm_r(h, dir, &it.name)).await;
        } else {
            h.fs.unlink(dir, os(&it.name)).await.unwrap();
        }
    }
    h.fs.rmdir(parent, os(name)).await.unwrap();
}

#[tokio::test]
async fn rm_r_of_a_tree_costs_one_remove_per_directory_with_a_writeback_delay() {
    let h = removal_harness().await;
    h.fs.getattr(ROOT_INO).await.unwrap();
    r(&h).reset_calls();
    rm_r(&h, ROOT_INO, "tree").await;
    assert!(r(&h).get(&path("tree")).is_none());
    assert_eq!(r(&h).calls("remove"), 2, "one rm for sub, one for tree");
    assert!(h.fs.pending_removals().is_empty());
    assert!(absent(&h, ROOT_INO, "tree").await);
    // Nothing left to send later.
    h.clock.advance(Duration::from_secs(5));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).calls("remove"), 2);
}

#[tokio::test]
async fn a_queued_unlink_is_invisible_then_sent_when_due() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    r(&h).reset_calls();
    h.fs.unlink(tree, os("f00")).await.unwrap();
    h.fs.unlink(tree, os("f01")).await.unwrap();
    assert_eq!(r(&h).calls("remove"), 0);
    assert!(
        r(&h).get(&path("tree/f00")).is_some(),
        "still on the remote"
    );
    assert!(absent(&h, tree, "f00").await);
    // A listing made after the TTL still leaves it out.
    h.clock.advance(Duration::from_millis(1_500));
    h.fs.writeback_tick().await;
    let d = h.fs.opendir(tree).await.unwrap();
    let names: Vec<String> =
        h.fs.readdir(tree, d.fh, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
    h.fs.releasedir(d.fh);
    assert!(!names.contains(&"f00".to_string()) && names.contains(&"f02".to_string()));
    assert!(r(&h).get(&path("tree/f00")).is_some());
    h.clock.advance(Duration::from_secs(1));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).calls("remove"), 2);
    assert!(r(&h).get(&path("tree/f00")).is_none() && r(&h).get(&path("tree/f01")).is_none());
    // rmdir of a directory that still has entries is refused as before.
    assert!(h.fs.rmdir(ROOT_INO, os("tree")).await.is_err());
    assert!(r(&h).get(&path("tree/f02")).is_some());
}

#[tokio::test]
async fn a_name_reused_before_its_unlink_is_sent_keeps_the_new_file() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    h.fs.unlink(tree, os("f00")).await.unwrap();
    write_new(&h, tree, "f00", b"new").await;
    h.fs.unlink(tree, os("f01")).await.unwrap();
    h.fs.mkdir(tree, os("f01"), 0o755, 0o022).await.unwrap();
    // mv over a queued name, and a rename of the directory holding queued unlinks.
    h.fs.unlink(tree, os("f02")).await.unwrap();
    write_new(&h, ROOT_INO, "other", b"moved").await;
    h.fs.rename(ROOT_INO, os("other"), tree, os("f02"), 0)
        .await
        .unwrap();
    h.fs.unlink(tree, os("f03")).await.unwrap();
    h.fs.rename(ROOT_INO, os("tree"), ROOT_INO, os("renamed"), 0)
        .await
        .unwrap();
    for _ in 0..3 {
        h.clock.advance(Duration::from_secs(3));
        h.fs.writeback_tick().await;
    }
    assert_eq!(r(&h).content(&path("renamed/f00")).unwrap(), b"new");
    assert_eq!(r(&h).get(&path("renamed/f01")).unwrap().kind, FileKind::Dir);
    assert_eq!(r(&h).content(&path("renamed/f02")).unwrap(), b"moved");
    assert!(r(&h).get(&path("renamed/f03")).is_none());
    assert!(r(&h).get(&path("tree")).is_none());
    assert_eq!(r(&h).content(&path("renamed/f04")).unwrap(), b"x");
}

#[tokio::test]
async fn unlink_in_a_directory_we_may_not_write_is_not_deferred() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    r(&h).set_perm(&path("tree"), 0o555);
    h.clock.advance(Duration::from_secs(10));
    let tree_attr = h.fs.getattr(tree).await.unwrap();
    assert_eq!(tree_attr.attr.perm & 0o777, 0o555);
    r(&h).reset_calls();
    // The memory remote does not enforce modes; the call going out at once is the point.
    h.fs.unlink(tree, os("f00")).await.unwrap();
    assert_eq!(r(&h).calls("remove"), 1);
    assert!(h.fs.pending_removals().is_empty());
}

#[tokio::test]
async fn a_queued_unlink_waits_out_an_unreachable_remote_and_a_refusal_brings_the_file_back() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    h.fs.unlink(tree, os("f00")).await.unwrap();
    r(&h).fail_always("remove", RemoteError::Unavailable("down".into()));
    h.clock.advance(Duration::from_secs(3));
    h.fs.writeback_tick().await;
    assert!(r(&h).get(&path("tree/f00")).is_some());
    assert!(absent(&h, tree, "f00").await, "still gone inside the mount");
    r(&h).clear_faults();
    h.clock.advance(Duration::from_secs(11));
    h.fs.writeback_tick().await;
    assert!(
        r(&h).get(&path("tree/f00")).is_none(),
        "sent once the remote is back"
    );

    h.fs.unlink(tree, os("f01")).await.unwrap();
    r(&h).fail_once("remove", RemoteError::PermissionDenied("no".into()));
    h.clock.advance(Duration::from_secs(3));
    h.fs.writeback_tick().await;
    assert!(r(&h).get(&path("tree/f01")).is_some());
    assert!(
        h.fs.pending_removals().is_empty(),
        "a refusal is not retried"
    );
    found(&h, tree, "f01").await;
}

#[tokio::test]
async fn release_after_a_failed_close_leaves_the_file_to_the_retry_queue() {
    let h = harness();
    r(&h).fail_always("upload", RemoteError::Unavailable("down".into()));
    let c =
        h.fs.create(ROOT_INO, os("precious"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"keep me").await.unwrap();
    assert!(h.fs.flush(c.opened.fh).await.is_err(), "close() reports it");
    let tried = r(&h).calls("upload");
    h.fs.release(c.opened.fh).await.unwrap();
    assert_eq!(
        r(&h).calls("upload"),
        tried,
        "not sent again at once by release"
    );
    assert_eq!(h.fs.writeback_pending(), 1);
    r(&h).clear_faults();
    h.clock.advance(Duration::from_secs(11));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("precious")).unwrap(), b"keep me");
    assert_eq!(h.fs.writeback_pending(), 0);
}

#[tokio::test]
async fn open_says_when_the_remote_version_changed_under_the_kernel() {
    let h = harness();
    r(&h).put_file(&path("h"), b"old", t(1_000));
    let ino = found(&h, ROOT_INO, "h").await.attr.ino;
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(!o.changed);
    h.fs.release(o.fh).await.unwrap();
    r(&h).put_file(&path("h"), b"longer", t(2_000));
    h.clock.advance(Duration::from_secs(10));
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(o.changed && !o.keep_cache);
    h.fs.release(o.fh).await.unwrap();
    let o = h.fs.open(ino, libc::O_RDONLY).await.unwrap();
    assert!(!o.changed && o.keep_cache);
    h.fs.release(o.fh).await.unwrap();
}

/// A delayed upload keeps the mtime the mount showed (the last write), not the second the
/// upload happened in: `make` and `find -newer` see no jump.
#[tokio::test]
async fn a_delayed_upload_keeps_the_mtime_of_the_last_write() {
    let h = removal_harness().await;
    let a = write_new(&h, ROOT_INO, "a", b"one").await;
    let b = write_new(&h, ROOT_INO, "b", b"two").await;
    let lone = found(&h, ROOT_INO, "tree").await.attr.ino;
    let c = write_new(&h, lone, "c", b"three").await;
    let shown = |ino| {
        let fs = &h.fs;
        async move { fs.getattr(ino).await.unwrap().attr.mtime }
    };
    let (ma, mb, mc) = (shown(a).await, shown(b).await, shown(c).await);
    // The upload happens in a later second than the writes.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    h.clock.advance(Duration::from_secs(3));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("a")).unwrap(), b"one");
    assert_eq!(r(&h).content(&path("tree/c")).unwrap(), b"three");
    assert_eq!(r(&h).get(&path("a")).unwrap().mtime, ma, "batch of a and b");
    assert_eq!(r(&h).get(&path("b")).unwrap().mtime, mb);
    assert_eq!(r(&h).get(&path("tree/c")).unwrap().mtime, mc, "a lone file");
    assert_eq!(shown(a).await, ma);
    assert_eq!(shown(c).await, mc);
}

#[tokio::test]
async fn create_in_a_directory_removed_on_the_remote_is_enoent() {
    let h = harness();
    r(&h).mkdir_all(&path("gone/deeper"));
    let gone = found(&h, ROOT_INO, "gone").await.attr.ino;
    let deeper = found(&h, gone, "deeper").await.attr.ino;
    r(&h).delete(&path("gone"));
    h.clock.advance(Duration::from_secs(10));
    // `ls .` in the shell's cwd finds it gone...
    assert!(h.fs.opendir(deeper).await.is_err());
    // ...and a new file there is refused at once instead of being retried forever.
    let err =
        h.fs.create(deeper, os("newfile"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT);
}

#[tokio::test]
async fn a_failing_background_upload_is_retried_less_and_less_often() {
    let h = harness();
    r(&h).fail_always("upload", RemoteError::QuotaExceeded("quota".into()));
    let c =
        h.fs.create(ROOT_INO, os("big"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"data").await.unwrap();
    assert!(h.fs.flush(c.opened.fh).await.is_err());
    h.fs.release(c.opened.fh).await.unwrap();
    let tries = |h: &H| r(h).calls("upload");
    assert_eq!(tries(&h), 1);
    // Retries after 10 s, then 20 s, then 40 s.
    let mut seen = Vec::new();
    for _ in 0..80 {
        h.clock.advance(Duration::from_secs(1));
        h.fs.writeback_tick().await;
        seen.push(tries(&h));
    }
    let at = |n: u64| seen.iter().position(|&t| t == n).map(|i| i + 1);
    assert_eq!(
        (at(2), at(3), at(4)),
        (Some(10), Some(30), Some(70)),
        "{seen:?}"
    );
    r(&h).clear_faults();
    h.clock.advance(Duration::from_secs(80));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("big")).unwrap(), b"data");
}

#[tokio::test]
async fn fsyncdir_sends_what_the_directory_holds_back() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    write_new(&h, tree, "new", b"fresh").await;
    h.fs.unlink(tree, os("f00")).await.unwrap();
    assert!(r(&h).get(&path("tree/new")).is_none() && r(&h).get(&path("tree/f00")).is_some());
    h.fs.fsyncdir(tree).await.unwrap();
    assert_eq!(r(&h).content(&path("tree/new")).unwrap(), b"fresh");
    assert!(r(&h).get(&path("tree/f00")).is_none());
    assert!(h.fs.pending_removals().is_empty());
    assert_eq!(h.fs.writeback_pending(), 0);
}

/// An append right after a change on the remote (within the attribute TTL) starts from the
/// remote's new version: the change is not overwritten by the cached older content.
#[tokio::test]
async fn an_append_within_the_ttl_keeps_a_change_made_on_the_remote() {
    let h = harness();
    r(&h).put_file(&path("conf"), b"base\n", t(1_000));
    let ino = found(&h, ROOT_INO, "conf").await.attr.ino;
    assert_eq!(read_all(&h, ino).await, b"base\n");
    r(&h).put_file(&path("conf"), b"base\nremote-line\n", t(2_000));
    let o =
        h.fs.open(ino, libc::O_WRONLY | libc::O_APPEND)
            .await
            .unwrap();
    h.fs.write(o.fh, 0, b"local-line\n").await.unwrap();
    h.fs.flush(o.fh).await.unwrap();
    h.fs.release(o.fh).await.unwrap();
    assert_eq!(
        r(&h).content(&path("conf")).unwrap(),
        b"base\nremote-line\nlocal-line\n"
    );
}

/// `tree/sub` listed and its files unlinked in the mount, then a job writes
/// `tree/sub/from-a-job` on the remote behind it. Returns the harness and `tree`'s inode.
async fn sub_emptied_then_a_job_writes() -> (H, u64) {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    let sub = found(&h, tree, "sub").await.attr.ino;
    let d = h.fs.opendir(sub).await.unwrap();
    h.fs.readdir(sub, d.fh, 0).await.unwrap();
    h.fs.releasedir(d.fh);
    for i in 0..5 {
        h.fs.unlink(sub, os(&format!("g{i}"))).await.unwrap();
    }
    r(&h).put_file(&path("tree/sub/from-a-job"), b"results", t(5_000));
    (h, tree)
}

/// The API's rm is recursive: rmdir asks the remote whether the directory is empty, so a
/// file a job wrote there behind the mount (fresh cached listing or not) is never taken along.
#[tokio::test]
async fn rmdir_never_takes_along_a_file_the_mount_did_not_know_of() {
    let (h, tree) = sub_emptied_then_a_job_writes().await;
    let err = h.fs.rmdir(tree, os("sub")).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOTEMPTY);
    assert_eq!(
        r(&h).content(&path("tree/sub/from-a-job")).unwrap(),
        b"results"
    );
    // Our own unlinks still reach the remote.
    h.clock.advance(Duration::from_secs(3));
    h.fs.writeback_tick().await;
    assert!(r(&h).get(&path("tree/sub/g0")).is_none());
    assert!(r(&h).get(&path("tree/sub/from-a-job")).is_some());
}

/// While unlinks keep coming in a directory (`rm -r` of a big one takes a while), its queued
/// removals wait for the rmdir instead of going out one by one.
#[tokio::test]
async fn queued_removals_of_a_directory_wait_while_unlinks_keep_coming() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    r(&h).reset_calls();
    for i in 0..30 {
        h.fs.unlink(tree, os(&format!("f{i:02}"))).await.unwrap();
        h.clock.advance(Duration::from_millis(500));
        h.fs.writeback_tick().await;
    }
    assert_eq!(r(&h).calls("remove"), 0, "15 s of unlinks, none sent yet");
    rm_r(&h, tree, "sub").await;
    h.fs.rmdir(ROOT_INO, os("tree")).await.unwrap();
    assert_eq!(r(&h).calls("remove"), 2);
    assert!(r(&h).get(&path("tree")).is_none());
}

/// A new file renamed over a remote one takes that one's place: removing or renaming it
/// before its upload must not bring the old remote file back (git's ref updates:
/// `master.lock` → `master`, then `pack-refs` deletes the loose ref).
#[tokio::test]
async fn a_file_renamed_over_a_remote_one_then_removed_leaves_nothing_behind() {
    let h = removal_harness().await;
    r(&h).put_file(&path("f"), b"old", t(1_000));
    r(&h).put_file(&path("g0"), b"old g", t(1_000));
    found(&h, ROOT_INO, "f").await;
    write_new(&h, ROOT_INO, "tmp", b"new").await;
    h.fs.rename(ROOT_INO, os("tmp"), ROOT_INO, os("f"), 0)
        .await
        .unwrap();
    h.fs.unlink(ROOT_INO, os("f")).await.unwrap();
    // mv over a remote file, then mv on: the first target goes too.
    found(&h, ROOT_INO, "g0").await;
    write_new(&h, ROOT_INO, "tmp2", b"newer").await;
    h.fs.rename(ROOT_INO, os("tmp2"), ROOT_INO, os("g0"), 0)
        .await
        .unwrap();
    h.fs.rename(ROOT_INO, os("g0"), ROOT_INO, os("g1"), 0)
        .await
        .unwrap();
    for _ in 0..3 {
        h.clock.advance(Duration::from_secs(3));
        h.fs.writeback_tick().await;
    }
    assert!(r(&h).get(&path("f")).is_none(), "the old f came back");
    assert!(r(&h).get(&path("tmp")).is_none());
    assert!(absent(&h, ROOT_INO, "f").await);
    assert!(r(&h).get(&path("g0")).is_none(), "the old g0 stayed");
    assert_eq!(r(&h).content(&path("g1")).unwrap(), b"newer");
}

/// unlink while the file's delayed upload is in flight: the upload finishes, then the file
/// is removed on the remote too (it did not come back), and nothing is left to `recover`.
#[tokio::test]
async fn unlink_during_an_upload_in_flight_removes_the_uploaded_file() {
    let h = removal_harness().await;
    write_new(&h, ROOT_INO, "u", b"data").await;
    r(&h).set_delay("upload", Duration::from_millis(300));
    r(&h).set_delay("put_archive", Duration::from_millis(300));
    h.clock.advance(Duration::from_secs(3));
    let unlink_soon = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.fs.unlink(ROOT_INO, os("u")).await.unwrap();
    };
    tokio::join!(h.fs.writeback_tick(), unlink_soon);
    for _ in 0..3 {
        h.clock.advance(Duration::from_secs(3));
        h.fs.writeback_tick().await;
    }
    assert!(
        r(&h).get(&path("u")).is_none(),
        "the unlinked file is on the remote"
    );
    assert!(absent(&h, ROOT_INO, "u").await);
    let manifests = std::fs::read_dir(h.dirs.path().join("staging"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0);
    assert_eq!(
        manifests, 0,
        "an unlinked file's staged copy must not be recovered"
    );
}

/// A small new file removed before its delayed upload leaves no manifest behind (unmount
/// within the delay, then `recover`, must not re-create it).
#[tokio::test]
async fn a_file_removed_before_its_delayed_upload_leaves_nothing_to_recover() {
    let h = removal_harness().await;
    write_new(&h, ROOT_INO, "quick", b"x").await;
    h.fs.unlink(ROOT_INO, os("quick")).await.unwrap();
    let unsent = h.fs.shutdown(Duration::from_secs(5)).await;
    assert!(unsent.is_empty());
    assert!(r(&h).get(&path("quick")).is_none());
    let manifests = std::fs::read_dir(h.dirs.path().join("staging"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .count();
    assert_eq!(manifests, 0);
}

/// A staged file renamed before it reached the remote (git's `index.lock` → `index` while
/// the server is down): its manifest names the new path, so `recover` sends it there.
#[tokio::test]
async fn a_staged_file_renamed_keeps_its_manifest_in_step() {
    let h = harness();
    r(&h).fail_always("upload", RemoteError::Unavailable("down".into()));
    r(&h).fail_always("put_archive", RemoteError::Unavailable("down".into()));
    let c =
        h.fs.create(ROOT_INO, os("index.lock"), 0o100644, 0o022, libc::O_WRONLY)
            .await
            .unwrap();
    h.fs.write(c.opened.fh, 0, b"idx").await.unwrap();
    assert!(h.fs.flush(c.opened.fh).await.is_err());
    h.fs.release(c.opened.fh).await.unwrap();
    let _ =
        h.fs.rename(ROOT_INO, os("index.lock"), ROOT_INO, os("index"), 0)
            .await;
    let names: Vec<String> = std::fs::read_dir(h.dirs.path().join("staging"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].contains("/index\"") && !names[0].contains("index.lock"),
        "{}",
        names[0]
    );
}

/// Thousands of queued removals (`find -delete`) do not hold up a delayed upload: one tick
/// sends a bounded share of them and the upload side by side.
#[tokio::test]
async fn queued_removals_do_not_hold_up_delayed_uploads() {
    let h = removal_harness().await;
    let tree = found(&h, ROOT_INO, "tree").await.attr.ino;
    for i in 0..30 {
        h.fs.unlink(tree, os(&format!("f{i:02}"))).await.unwrap();
    }
    write_new(&h, ROOT_INO, "urgent", b"now").await;
    r(&h).set_delay("remove", Duration::from_millis(20));
    h.clock.advance(Duration::from_secs(3));
    h.fs.writeback_tick().await;
    assert_eq!(r(&h).content(&path("urgent")).unwrap(), b"now");
    assert!(r(&h).calls("remove") <= 64);
    h.clock.advance(Duration::from_secs(1));
    h.fs.writeback_tick().await;
    assert!(r(&h).get(&path("tree/f29")).is_none());
}

/// rmdir while the remote cannot list the directory: no answer, no (recursive) removal,
/// even though a stale cached listing says it is empty.
#[tokio::test]
async fn rmdir_without_a_fresh_answer_from_the_remote_removes_nothing() {
    let (h, tree) = sub_emptied_then_a_job_writes().await;
    r(&h).fail_always("list", RemoteError::Unavailable("down".into()));
    assert!(h.fs.rmdir(tree, os("sub")).await.is_err());
    assert_eq!(r(&h).calls("remove"), 0);
    assert_eq!(
        r(&h).content(&path("tree/sub/from-a-job")).unwrap(),
        b"results"
    );
}
