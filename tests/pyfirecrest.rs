//! CSCS's own client as the judge: pyfirecrest's v2 client (unmodified) runs
//! `tests/pyfirecrest_check.py` against an in-process `f7tfs serve`: list, stat, mkdir, small
//! upload/download, chmod, symlink, mv/cp/rm jobs, and a staged upload and download of a file
//! larger than the direct limit, comparing bytes.
//!
//! Fails (does not skip) when pyfirecrest is missing: CI installs it with `pip install pyfirecrest`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::server::TestServer;

fn python() -> String {
    std::env::var("F7TFS_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

#[test]
fn pyfirecrest_v2_client_works_unmodified() {
    let probe = Command::new(python())
        .args([
            "-c",
            "import firecrest, firecrest.v2; print(firecrest.__version__)",
        ])
        .output()
        .expect("python3 must be installed to run the pyfirecrest check");
    assert!(
        probe.status.success(),
        "pyfirecrest is not importable with {}: run `pip install pyfirecrest` (stderr: {})",
        python(),
        String::from_utf8_lossy(&probe.stderr)
    );
    eprintln!(
        "pyfirecrest {}",
        String::from_utf8_lossy(&probe.stdout).trim()
    );

    let max_ops = 2 * 1024 * 1024;
    let srv = TestServer::with(|cfg| {
        cfg.max_ops_file_size = max_ops;
        // Several parts for the staged upload (pyfirecrest sends them one by one).
        cfg.max_part_size = 1024 * 1024 + 512;
        cfg.job_delay = Duration::from_millis(100);
    });
    let work = tempfile::tempdir().expect("local scratch dir");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyfirecrest_check.py");
    let out = Command::new(python())
        .arg(script)
        .env("FIRECREST_URL", srv.url())
        .env("FIRECREST_CLIENT_ID", "f7tfs")
        .env("FIRECREST_CLIENT_SECRET", "f7tfs")
        .env("AUTH_TOKEN_URL", srv.token_url())
        .env("FIRECREST_SYSTEM", srv.system())
        .env("F7TFS_ROOT", srv.path("."))
        .env("F7TFS_WORK", work.path())
        .env("F7TFS_MAX_OPS", max_ops.to_string())
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .output()
        .expect("run the pyfirecrest check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(
        out.status.success() && stdout.contains("PYFIRECREST CHECK PASSED"),
        "pyfirecrest check failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The staged paths really were used: parts went to the staging area and jobs were polled.
    let stats = srv.stats();
    assert!(
        stats.calls("PUT s3/part") >= 3,
        "staged upload in parts: {stats:?}"
    );
    assert!(
        stats.calls("POST s3/complete") == 1,
        "one completion: {stats:?}"
    );
    assert!(
        stats.calls("GET s3/object") >= 1,
        "staged download: {stats:?}"
    );
    assert!(
        stats.calls("GET compute/jobs") >= 4,
        "jobs polled: {stats:?}"
    );
}
