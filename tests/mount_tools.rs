//! Real tools on a real mount: cp -r in and out, tar x, rsync twice, editor saves, sed -i,
//! git; with upload at close, with a short write-back delay, and a real doc tree with the defaults.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::mount::MountedFs;

/// A small tree with nested dirs, sizes from 0 to 200 KiB, an executable, a relative
/// symlink inside the tree, hidden files and old mtimes.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("src/deep/deeper")).unwrap();
    fs::create_dir_all(root.join("docs")).unwrap();
    for i in 0..40 {
        let dir = match i % 3 {
            0 => "src",
            1 => "src/deep",
            _ => "docs",
        };
        let size = (i * 5000) % 200_000;
        let data: Vec<u8> = (0..size).map(|b| ((b * 7 + i) % 251) as u8).collect();
        let p = root.join(format!("{dir}/file{i}.dat"));
        fs::write(&p, data).unwrap();
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000 + i as u64 * 3600);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    fs::write(root.join("src/deep/deeper/.hidden"), "h").unwrap();
    fs::write(root.join("empty"), "").unwrap();
    fs::write(root.join("run.sh"), "#!/bin/sh\necho ok\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("src/file0.dat", root.join("link-to-file0")).unwrap();
}

fn tools(m: &MountedFs) {
    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let s = src.path().display();

    // cp -r in and out, identical.
    m.sh(&format!("cp -r {s} cp-in"));
    let out = tempfile::tempdir().unwrap();
    m.sh(&format!("cp -r cp-in {}/back", out.path().display()));
    m.sh(&format!("diff -r --no-dereference {s} cp-in"));
    m.sh(&format!(
        "diff -r --no-dereference {s} {}/back",
        out.path().display()
    ));

    // tar x keeps mtimes, no "Cannot utime".
    let tarball = out.path().join("t.tar");
    m.sh(&format!("tar cf {} -C {s} .", tarball.display()));
    fs::create_dir(m.p("tar-x")).unwrap();
    let err = m.sh(&format!("tar xf {} -C tar-x 2>&1", tarball.display()));
    assert!(err.is_empty(), "tar said: {err}");
    let a = fs::metadata(src.path().join("src/file3.dat"))
        .unwrap()
        .modified()
        .unwrap();
    let b = fs::metadata(m.p("tar-x/src/file3.dat"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(a, b);

    // rsync -a twice: the second run transfers nothing (mtimes really set).
    m.sh(&format!("rsync -a {s}/ rs/"));
    let stats = m.sh(&format!("rsync -a --stats {s}/ rs/"));
    assert!(
        stats.contains("Number of regular files transferred: 0"),
        "second rsync transferred files:\n{stats}"
    );
    m.sh("rsync -a --inplace rs/docs/ inplace/");
    m.sh(&format!("diff -r {s}/docs inplace"));

    // Editor saves keep content and mode and leave no temp files.
    fs::create_dir(m.p("ed")).unwrap();
    fs::write(m.p("ed/f.txt"), "line one\nline two\n").unwrap();
    fs::set_permissions(m.p("ed/f.txt"), fs::Permissions::from_mode(0o640)).unwrap();
    m.sh("cd ed && timeout 60 vim -u NONE -N -es '+%s/one/ONE/' '+wq' f.txt");
    m.sh("cd ed && sed -i 's/two/TWO/' f.txt");
    m.sh(
        "cd ed && cp -p f.txt .f.txt.tmp && echo 'line three' >> .f.txt.tmp && mv .f.txt.tmp f.txt",
    );
    assert_eq!(
        fs::read_to_string(m.p("ed/f.txt")).unwrap(),
        "line ONE\nline TWO\nline three\n"
    );
    assert_eq!(
        fs::metadata(m.p("ed/f.txt")).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let names: Vec<String> = fs::read_dir(m.p("ed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["f.txt".to_string()], "leftover temp files");

    // git
    m.sh(
        "mkdir repo && cd repo && git init -q . && echo hi > a && git add a \
          && git -c user.email=t@e -c user.name=t commit -qm first && echo more >> a \
          && git -c user.email=t@e -c user.name=t commit -qam second",
    );
    let log = m.sh("cd repo && git log --oneline | wc -l");
    assert_eq!(log.trim(), "2");
    assert_eq!(m.sh("cd repo && git status --porcelain"), "");

    // rename over a non-empty directory fails, nothing moved.
    fs::create_dir_all(m.p("full/x")).unwrap();
    fs::create_dir(m.p("other")).unwrap();
    let err = fs::rename(m.p("other"), m.p("full")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTEMPTY));
    assert!(m.remote("other").is_dir() && m.remote("full/x").is_dir());
}

fn same_on_remote(m: &MountedFs) {
    for dir in ["cp-in", "rs", "tar-x/src"] {
        let local = m.p(dir);
        let remote = m.remote(dir);
        let out = std::process::Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(&local)
            .arg(&remote)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn tools_with_upload_at_close() {
    let m = MountedFs::start();
    tools(&m);
    same_on_remote(&m);
}

#[test]
fn tools_with_delayed_writeback() {
    let mut m = MountedFs::start_with(&["--writeback-delay", "0.3"], |_| {});
    tools(&m);
    let files = 46 * 4;
    m.unmount().expect("daemon exits");
    let stats = m.server().stats();
    assert!(
        stats.calls("POST ops/upload") < files,
        "batched archives should need fewer uploads than files: {stats:?}"
    );
    // After unmount everything is on the remote.
    let remote = m.remote_root().to_path_buf();
    for dir in ["cp-in", "rs", "tar-x/src"] {
        assert!(remote.join(dir).is_dir(), "{dir} missing on the remote");
    }
    let out = std::process::Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(remote.join("cp-in"))
        .arg(remote.join("rs"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A real tree of this machine (issue 3: "cp -r a real tree in and out, e.g. /usr/share/doc"),
/// through the mount's own defaults (delayed write-back, batched reads): in, out, identical,
/// and a second `rsync -a` transfers nothing.
#[test]
fn a_real_doc_tree_with_the_default_options() {
    let docs: Vec<String> = ["git", "rsync", "tar", "fuse3", "python3"]
        .iter()
        .map(|p| format!("/usr/share/doc/{p}"))
        .filter(|p| Path::new(p).is_dir())
        .collect();
    assert!(
        !docs.is_empty(),
        "no /usr/share/doc tree to copy: run .ci/install (git, rsync, fuse3)"
    );
    let mut m = MountedFs::start_with(&["--writeback-delay", "2"], |_| {});
    let src = tempfile::tempdir().unwrap();
    let s = src.path().display();
    for d in &docs {
        // `cp -a` of the package's docs, so the comparison below does not depend on the
        // machine's own copy changing underneath.
        let copied = std::process::Command::new("cp")
            .args(["-a", d.as_str()])
            .arg(src.path())
            .status()
            .unwrap();
        assert!(copied.success(), "cp -a {d} failed");
    }
    m.sh(&format!("cp -r {s}/. doc-in"));
    let out = tempfile::tempdir().unwrap();
    m.sh(&format!("cp -r doc-in {}/back", out.path().display()));
    m.sh(&format!("diff -r --no-dereference {s} doc-in"));
    m.sh(&format!(
        "diff -r --no-dereference {s} {}/back",
        out.path().display()
    ));
    m.sh(&format!("rsync -a {s}/ doc-rs/"));
    let stats = m.sh(&format!("rsync -a --stats {s}/ doc-rs/"));
    assert!(
        stats.contains("Number of regular files transferred: 0"),
        "second rsync transferred files:\n{stats}"
    );
    m.unmount().expect("daemon exits");
    let remote = m.remote_root().to_path_buf();
    for dir in ["doc-in", "doc-rs"] {
        let out = std::process::Command::new("diff")
            .args(["-r", "--no-dereference"])
            .arg(src.path())
            .arg(remote.join(dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{dir} on the remote differs:\n{}\ndaemon's warnings:\n{}",
            String::from_utf8_lossy(&out.stdout),
            warnings(&m.log())
        );
    }
}

/// The daemon log's WARN and ERROR lines (what explains debris or a difference).
fn warnings(log: &str) -> String {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect::<Vec<_>>()
        .join("\n")
}
