//! The workloads (issue 7), their lower bounds, how each target runs them (shell steps on a
//! mount; reqwest calls for the HTTP baseline; `tests/bench/pyfirecrest_bench.py` jobs), the
//! measuring loop (server counters reset before and read after every step) and the report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use f7tfs::server::Stats;
use tokio::runtime::Runtime;

use crate::http::Api;
use crate::procs::{check_interrupt, run_cmd, Ctx, Outcome, R};
use crate::proxy::DelayProxy;
use crate::setup::{self, Endpoint, Server, Sizes};
use crate::Args;

/// `f7tfs serve`'s default maxPartSize (staged uploads), bytes.
const PART: u64 = 5 * 1024 * 1024;

/// One measured step.
struct StepDef {
    id: &'static str,
    /// Steps of one group share a mount (fresh for every group).
    group: u32,
    title: &'static str,
    lower: u64,
    why: String,
}

fn steps(big: u64) -> Vec<StepDef> {
    let parts = big.div_ceil(PART);
    let s = |id, group, title, lower, why: &str| StepDef {
        id,
        group,
        title,
        lower,
        why: why.to_string(),
    };
    vec![
        s("ls-cold", 1, "ls -l, 2,000 files, cold", 1, "one ops/ls of the directory"),
        s("ls-warm", 1, "ls -l, 2,000 files, warm", 0, "attributes still valid (TTL): no call"),
        s("find", 2, "find, 200 dirs / 5,000 files", 1,
          "one recursive ops/ls (201 with one ls per directory)"),
        s("du", 3, "du -s, same tree", 1, "one recursive ops/ls (201 with one ls per directory)"),
        s("cat500", 4, "cat 500 x 4 KiB", 4,
          "ls + ops/compress + ops/download of the archive + ops/rm (archive route)"),
        s("cp-out", 5, "cp -r 500 x 4 KiB out", 4, "same as cat: ls + compress + download + rm"),
        s("cp-in", 6, "cp -r 500 x 4 KiB in", 4,
          "ls of the parent + ops/upload of one tar + ops/extract + ops/rm"),
        s("seq-read", 7, "sequential read, big file", 4,
          "ls + transfer/download + 1 job poll + 1 S3 GET"),
        s("rand-read", 8, "1,000 random 4 KiB reads", 4,
          "as seq-read, whole file once (or 3 + 1,000 range GETs for 4 MB)"),
        StepDef {
            id: "seq-write",
            group: 9,
            title: "sequential write, big file",
            lower: 3 + parts + 1,
            why: format!(
                "ls + transfer/upload + {parts} S3 part PUTs ({} MiB parts) + complete + 1 job poll",
                PART >> 20
            ),
        },
        s("rsync1", 10, "rsync -a 1,000 files in", 4,
          "ls of the parent + ops/upload of one tar (~3 MB) + ops/extract + ops/rm"),
        s("rsync2", 10, "rsync -a again, no change", 1,
          "one recursive ops/ls (11 with one per directory); nothing sent"),
        s("vim", 11, "vim save, 1 MB file", 3,
          "ls + ops/download + ops/upload (swap and backup files stay local)"),
    ]
}

/// Writing steps, rerun in strict mode (upload at close).
const WB_STEPS: [&str; 4] = ["cp-in", "rsync1", "rsync2", "vim"];

/// What one target measured for one step.
#[derive(Default, Clone)]
struct Measure {
    secs: Option<f64>,
    calls: Option<u64>,
    bytes: Option<u64>,
    note: String,
    breakdown: String,
}

/// Fixed locations of one run.
struct World<'a> {
    args: &'a Args,
    root: PathBuf,
    local: PathBuf,
    out: PathBuf,
    work: PathBuf,
    big: u64,
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// The shell command of a step on mount `m`, for target `tag`.
fn mount_script(w: &World, id: &str, m: &Path, tag: &str) -> String {
    let m = |rel: &str| sh_quote(&m.join(rel));
    let l = |rel: &str| sh_quote(&w.local.join(rel));
    let o = |rel: &str| sh_quote(&w.out.join(rel));
    let src_big = sh_quote(&w.local.join("big.bin"));
    match id {
        "ls-cold" | "ls-warm" => format!("ls -l {} | wc -l", m("ls2000")),
        "find" => format!("find {} | wc -l", m("tree")),
        "du" => format!("du -s {}", m("tree")),
        "cat500" => format!("cat {}/* | wc -c", m("small500")),
        "cp-out" => format!("cp -r {} {}", m("small500"), o(&format!("cpout_{tag}"))),
        "cp-in" => format!("cp -r {} {}", l("small500"), m(&format!("cpin_{tag}"))),
        "seq-read" => format!("cat {} | wc -c", m("big.bin")),
        "rand-read" => format!(
            "{} -c 'import os,random,sys\n\
             fd=os.open(sys.argv[1],os.O_RDONLY); size=os.fstat(fd).st_size; r=random.Random(7)\n\
             print(sum(len(os.pread(fd,4096,r.randrange(0,size//4096)*4096)) for _ in range(1000)))' {}",
            w.args.python,
            m("big.bin")
        ),
        "seq-write" => format!(
            "dd if={src_big} of={} bs=1M status=none",
            m(&format!("write_{tag}.bin"))
        ),
        "rsync1" => format!("rsync -a {}/ {}/", l("rs1000"), m(&format!("rsync_{tag}"))),
        "rsync2" => format!(
            "rsync -a --stats {}/ {}/ | grep 'regular files transferred'",
            l("rs1000"),
            m(&format!("rsync_{tag}"))
        ),
        "vim" => format!(
            "vim -Es -N -u NONE -i NONE -c 'normal Ax' -c wq {}",
            m(&format!("vim_{tag}.txt"))
        ),
        _ => "false".into(),
    }
}

/// A check of the remote side after a writing step (not timed): empty output means ok.
fn verify_script(w: &World, id: &str, tag: &str) -> Option<String> {
    let r = |rel: &str| sh_quote(&w.root.join(rel));
    let l = |rel: &str| sh_quote(&w.local.join(rel));
    Some(match id {
        "cp-out" => format!(
            "diff -r {} {}",
            r("small500"),
            sh_quote(&w.out.join(format!("cpout_{tag}")))
        ),
        "cp-in" => format!("diff -r {} {}", l("small500"), r(&format!("cpin_{tag}"))),
        "seq-write" => format!("cmp {} {}", l("big.bin"), r(&format!("write_{tag}.bin"))),
        "rsync1" | "rsync2" => format!("diff -r {} {}", l("rs1000"), r(&format!("rsync_{tag}"))),
        "vim" => {
            let f = r(&format!("vim_{tag}.txt"));
            format!(
                "[ \"$(tail -c 2 {f} | head -c 1)\" = x ] || echo 'edit missing'; \
                 ls -A {} | grep -E '^(\\.?vim_{tag}\\.txt.|4913$)' || true",
                r(".")
            )
        }
        _ => return None,
    })
}

fn stats(rt: &Runtime, url: &str) -> R<Stats> {
    let url = format!("{url}/_f7tfs/stats");
    rt.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .ctx("client")?
            .get(url)
            .send()
            .await
            .ctx("GET stats")?
            .json::<Stats>()
            .await
            .ctx("stats json")
    })
}

fn reset_stats(rt: &Runtime, url: &str) -> R<()> {
    let url = format!("{url}/_f7tfs/stats/reset");
    rt.block_on(async {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .ctx("client")?
            .post(url)
            .send()
            .await
            .ctx("reset stats")
            .map(|_| ())
    })
}

/// Calls (without the token endpoint), bytes in+out, and a short per-endpoint breakdown.
fn summarize(s: &Stats) -> (u64, u64, String) {
    let mut calls = 0;
    let mut bytes = 0;
    let mut parts: Vec<(u64, String)> = Vec::new();
    for (k, e) in &s.endpoints {
        bytes += e.bytes_in + e.bytes_out;
        if k.ends_with("auth/token") {
            continue;
        }
        calls += e.calls;
        parts.push((e.calls, format!("{k} x{}", e.calls)));
    }
    parts.sort_by_key(|p| std::cmp::Reverse(p.0));
    let breakdown = parts
        .into_iter()
        .map(|(_, s)| s)
        .collect::<Vec<_>>()
        .join(", ");
    (calls, bytes, breakdown)
}

/// A mounted target: how to mount it and where its counters are.
enum Target<'a> {
    F7tfs {
        tag: &'static str,
        ep: Endpoint,
        stats_url: String,
        /// Extra mount arguments of this target.
        extra: String,
        /// Count the time until the remote check passes (delayed write-back hands data to the
        /// remote after `close()`).
        wait_remote: bool,
    },
    Sshfs {
        sshd: &'a setup::Sshd,
        proxy: &'a DelayProxy,
    },
}

fn run_mount_target(
    w: &World,
    rt: &Runtime,
    target: &Target,
    defs: &[StepDef],
    results: &mut HashMap<(String, String), Measure>,
) -> R<()> {
    let tag = match target {
        Target::F7tfs { tag, .. } => *tag,
        Target::Sshfs { .. } => "sshfs",
    };
    let mut groups: Vec<u32> = defs.iter().map(|d| d.group).collect();
    groups.dedup();
    for g in groups {
        check_interrupt()?;
        let mp = w.work.join(format!("mnt-{tag}-{g}"));
        let mounted = match target {
            Target::F7tfs { ep, extra, .. } => setup::mount_f7tfs(
                &w.args.f7tfs,
                ep,
                &w.root,
                &mp,
                &w.work,
                &format!("{} {extra}", w.args.mount_args),
            ),
            Target::Sshfs { sshd, proxy } => {
                setup::mount_sshfs(&sshd.key, proxy.addr.port(), &w.root, &mp, &w.work)
            }
        };
        let mut mount = match mounted {
            Ok(m) => m,
            Err(e) => {
                eprintln!("bench: {tag}: mount failed: {e}");
                for d in defs.iter().filter(|d| d.group == g) {
                    let m = Measure {
                        note: "mount failed".into(),
                        ..Default::default()
                    };
                    results.insert((d.id.into(), tag.into()), m);
                }
                continue;
            }
        };
        let mut ran = Vec::new();
        for d in defs.iter().filter(|d| d.group == g) {
            let script = mount_script(w, d.id, &mount.path, tag);
            let before = match target {
                Target::F7tfs { stats_url, .. } => {
                    reset_stats(rt, stats_url)?;
                    0
                }
                Target::Sshfs { proxy, .. } => proxy.bytes(),
            };
            eprintln!("bench: {tag}: {} ...", d.id);
            let (outcome, mut took) =
                run_cmd(&script, Duration::from_secs(w.args.step_timeout), &w.work)?;
            if let (
                Target::F7tfs {
                    wait_remote: true, ..
                },
                Outcome::Ok(_),
                Some(v),
            ) = (target, &outcome, verify_script(w, d.id, tag))
            {
                took += wait_until_remote(w, &v)?;
            }
            let mut m = Measure::default();
            match target {
                Target::F7tfs { stats_url, .. } => {
                    let (c, b, bd) = summarize(&stats(rt, stats_url)?);
                    m.calls = Some(c);
                    m.bytes = Some(b);
                    m.breakdown = bd;
                }
                Target::Sshfs { proxy, .. } => m.bytes = Some(proxy.bytes() - before),
            }
            match outcome {
                Outcome::Ok(out) => {
                    m.secs = Some(took.as_secs_f64());
                    m.note = out.trim().lines().last().unwrap_or("").to_string();
                }
                Outcome::Failed(e) => m.note = format!("FAILED {e}"),
                Outcome::Timeout => m.note = format!("TIMEOUT after {} s", took.as_secs()),
            }
            if m.secs.is_none() {
                eprintln!(
                    "bench: {tag}: daemon log tail:\n{}",
                    crate::procs::tail(&mount.log, 8)
                );
            }
            eprintln!(
                "bench: {tag}: {} {:.2} s {} calls {}",
                d.id,
                took.as_secs_f64(),
                m.calls.map_or("-".into(), |c| c.to_string()),
                m.note
            );
            results.insert((d.id.into(), tag.into()), m);
            ran.push(d.id);
        }
        // Unmount waits for the daemon (pending uploads finish); not timed.
        mount.unmount();
        drop(mount);
        for id in ran {
            if let Some(v) = verify_script(w, id, tag) {
                let (o, _) = run_cmd(&v, Duration::from_secs(120), &w.work)?;
                let bad = match o {
                    Outcome::Ok(s) if s.trim().is_empty() => None,
                    Outcome::Ok(s) => Some(s.lines().next().unwrap_or("").to_string()),
                    Outcome::Failed(e) => Some(e),
                    Outcome::Timeout => Some("verify timeout".into()),
                };
                if let Some(bad) = bad {
                    eprintln!("bench: {tag}: {id}: remote check FAILED: {bad}");
                    if let Some(m) = results.get_mut(&(id.to_string(), tag.to_string())) {
                        m.note = format!("{} [remote check FAILED: {bad}]", m.note);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Polls a remote check until it passes (bounded by the step timeout); the time it took.
fn wait_until_remote(w: &World, check: &str) -> R<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(w.args.step_timeout) {
        if let (Outcome::Ok(out), _) = run_cmd(check, Duration::from_secs(60), &w.work)? {
            if out.trim().is_empty() {
                break;
            }
        }
        crate::procs::sleep(Duration::from_millis(50))?;
    }
    Ok(started.elapsed())
}

/// The plain-HTTP version of a step; `None` when it has no HTTP equivalent.
async fn http_step(api: &Api, w: &World<'_>, id: &str) -> Option<R<String>> {
    let root = w.root.display().to_string();
    let p = |rel: &str| format!("{root}/{rel}");
    let res = async {
        match id {
            "ls-cold" => Ok(format!(
                "{} entries",
                api.ls(&p("ls2000"), false).await?.len()
            )),
            "find" | "du" | "rsync2" => {
                let dir = if id == "rsync2" {
                    p("rsync_http")
                } else {
                    p("tree")
                };
                Ok(format!("{} entries", api.ls(&dir, true).await?.len()))
            }
            "cat500" | "cp-out" => {
                let mut n = 0;
                for e in api.ls(&p("small500"), false).await? {
                    check_interrupt()?;
                    let name = e["name"].as_str().unwrap_or_default();
                    n += api.download(&p(&format!("small500/{name}"))).await?.len();
                }
                Ok(format!("{n} bytes"))
            }
            "cp-in" => {
                let dest = p("cpin_http");
                api.mkdir(&dest).await?;
                upload_tree(api, &w.local.join("small500"), &dest).await
            }
            "rsync1" => upload_tree(api, &w.local.join("rs1000"), &p("rsync_http")).await,
            "seq-read" => {
                let url = api.stage_download(&p("big.bin")).await?;
                Ok(format!("{} bytes", api.get_all(&url).await?))
            }
            "rand-read" => {
                let url = api.stage_download(&p("big.bin")).await?;
                let mut rng: rand::rngs::StdRng = rand::SeedableRng::seed_from_u64(7);
                let mut n = 0;
                for _ in 0..1000 {
                    check_interrupt()?;
                    let off = rand::Rng::random_range(&mut rng, 0..w.big / 4096) * 4096;
                    n += api.get_range(&url, off, 4096).await?;
                }
                Ok(format!("{n} bytes"))
            }
            "seq-write" => {
                api.staged_upload(&w.local.join("big.bin"), &p("write_http.bin"))
                    .await?;
                Ok(String::new())
            }
            "vim" => {
                let mut data = api.download(&p("vim_http.txt")).await?.to_vec();
                if data.last() == Some(&b'\n') {
                    data.pop();
                }
                data.extend_from_slice(b"x\n");
                api.upload(&root, "vim_http.txt", data).await?;
                Ok(String::new())
            }
            _ => Err("n/a".to_string()),
        }
    };
    match id {
        "ls-warm" => None,
        _ => Some(res.await),
    }
}

/// mkdir + `ops/upload` of every file of a local tree, one after another.
async fn upload_tree(api: &Api, src: &Path, dest: &str) -> R<String> {
    let mut n = 0;
    let mut stack = vec![(src.to_path_buf(), dest.to_string())];
    while let Some((dir, rdir)) = stack.pop() {
        api.mkdir(&rdir).await?;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .ctx("read_dir")?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            check_interrupt()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                stack.push((e.path(), format!("{rdir}/{name}")));
            } else {
                let data = std::fs::read(e.path()).ctx("read local")?;
                api.upload(&rdir, &name, data).await?;
                n += 1;
            }
        }
    }
    Ok(format!("{n} files"))
}

/// The pyfirecrest job of a step, as script arguments; `None` when it has none.
fn py_job(w: &World, id: &str) -> Option<Vec<String>> {
    let root = w.root.display().to_string();
    let p = |rel: &str| format!("{root}/{rel}");
    let o = |rel: &str| w.out.join(rel).display().to_string();
    let l = |rel: &str| w.local.join(rel).display().to_string();
    let v = |a: &[String]| Some(a.to_vec());
    match id {
        "ls-cold" => v(&["ls".into(), p("ls2000")]),
        "find" | "du" => v(&["lsr".into(), p("tree")]),
        "rsync2" => v(&["lsr".into(), p("rsync_py")]),
        "cat500" => v(&["dl-many".into(), p("small500"), o("cat_py")]),
        "cp-out" => v(&["dl-many".into(), p("small500"), o("cpout_py")]),
        "cp-in" => v(&["up-many".into(), l("small500"), p("cpin_py")]),
        "rsync1" => v(&["up-many".into(), l("rs1000"), p("rsync_py")]),
        "seq-read" => v(&["dl-big".into(), p("big.bin"), o("big_py.bin")]),
        "seq-write" => v(&[
            "up-big".into(),
            l("big.bin"),
            root.clone(),
            "write_py.bin".into(),
        ]),
        "vim" => v(&["edit".into(), p("vim_py.txt"), o("vim_py.txt")]),
        _ => None,
    }
}

fn fmt_secs(m: Option<&Measure>) -> String {
    match m {
        Some(Measure { secs: Some(s), .. }) => format!("{s:.2}"),
        Some(m) if !m.note.is_empty() => {
            let n: String = m.note.chars().take(12).collect();
            n
        }
        _ => "n/a".into(),
    }
}

fn ratio(f7: Option<&Measure>, base: Option<&Measure>) -> String {
    match (f7.and_then(|m| m.secs), base.and_then(|m| m.secs)) {
        (Some(a), Some(b)) if b > 0.0 => format!(" (x{:.2})", a / b),
        _ => String::new(),
    }
}

fn fmt_bytes(b: Option<u64>) -> String {
    match b {
        None => "-".into(),
        Some(b) if b >= 10 << 20 => format!("{:.0} MiB", b as f64 / (1 << 20) as f64),
        Some(b) if b >= 10 << 10 => format!("{:.0} KiB", b as f64 / 1024.0),
        Some(b) => format!("{b} B"),
    }
}

fn calls(m: Option<&Measure>) -> String {
    m.and_then(|m| m.calls)
        .map_or("-".into(), |c| c.to_string())
}

fn report(w: &World, defs: &[StepDef], res: &HashMap<(String, String), Measure>) {
    let get = |id: &str, t: &str| res.get(&(id.to_string(), t.to_string()));
    let a = w.args;
    println!();
    println!(
        "f7tfs-bench: latency {} ms per API/S3 call (proxy: {} ms each way), big file {} MiB, \
         job delay {} ms, mount args {:?}",
        a.latency_ms,
        a.latency_ms / 2,
        a.big_mb,
        a.job_delay_ms,
        a.mount_args
    );
    println!("times in seconds; (xR) = f7tfs time / baseline time, below 1 means f7tfs is faster");
    println!();
    println!(
        "| workload | lower bound calls | f7tfs calls | f7tfs bytes | f7tfs s | HTTP s (calls) | \
         pyfirecrest s (calls) | sshfs s (bytes) | f7tfs via proxy s (calls) | f7tfs strict, \
         upload at close s (calls) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for d in defs {
        let f7 = get(d.id, "f7tfs");
        let h = get(d.id, "http");
        let py = get(d.id, "pyfirecrest");
        let ss = get(d.id, "sshfs");
        let px = get(d.id, "f7tfs-proxy");
        let wb = get(d.id, "f7tfs-strict");
        println!(
            "| {} | {} | {} | {} | {} | {}{} [{}] | {}{} [{}] | {}{} [{}] | {} [{}] | {} [{}] |",
            d.title,
            d.lower,
            calls(f7),
            fmt_bytes(f7.and_then(|m| m.bytes)),
            fmt_secs(f7),
            fmt_secs(h),
            ratio(f7, h),
            calls(h),
            fmt_secs(py),
            ratio(f7, py),
            calls(py),
            fmt_secs(ss),
            ratio(f7, ss),
            fmt_bytes(ss.and_then(|m| m.bytes)),
            fmt_secs(px),
            calls(px),
            fmt_secs(wb),
            calls(wb),
        );
    }
    println!();
    println!("| workload | lower bound: why | f7tfs calls by endpoint | f7tfs output |");
    println!("|---|---|---|---|");
    for d in defs {
        let f7 = get(d.id, "f7tfs");
        println!(
            "| {} | {} | {} | {} |",
            d.id,
            d.why,
            f7.map_or("", |m| m.breakdown.as_str()),
            f7.map_or("", |m| m.note.as_str()).replace('|', "/"),
        );
    }
    let notes: Vec<String> = res
        .iter()
        .filter(|(_, m)| m.secs.is_none() && !m.note.is_empty())
        .map(|((id, t), m)| format!("- {t} / {id}: {}", m.note))
        .collect();
    if !notes.is_empty() {
        println!();
        println!("Failures:");
        for n in notes {
            println!("{n}");
        }
    }
}

fn machine() -> String {
    let sh = |c: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(c)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} cores ({}), {} memory, kernel {}",
        sh("nproc"),
        sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'"),
        sh("free -h | awk '/^Mem:/ {print $2}'"),
        sh("uname -r")
    )
}

/// Runs everything; all guards are locals here, dropped (unmounted, stopped, removed) on the
/// way out whatever happens.
pub fn run(args: &Args, rt: &Runtime) -> R<()> {
    if !args.f7tfs.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --bin f7tfs)",
            args.f7tfs.display()
        ));
    }
    // Declared first: removed last, after every mount and process below is gone.
    let base = tempfile::Builder::new()
        .prefix("f7tfs-bench-")
        .tempdir()
        .ctx("temp dir")?;
    let dir = |n: &str| -> R<PathBuf> {
        let p = base.path().join(n);
        std::fs::create_dir_all(&p).ctx("mkdir")?;
        p.canonicalize().ctx("canonicalize")
    };
    let w = World {
        args,
        root: dir("root")?,
        local: dir("local")?,
        out: dir("out")?,
        work: dir("work")?,
        big: args.big_mb << 20,
    };
    let mut defs = steps(w.big);
    if !args.only.is_empty() {
        defs.retain(|d| args.only.iter().any(|o| o == d.id));
    }
    let tags = [
        "f7tfs",
        "f7tfs-strict",
        "f7tfs-proxy",
        "sshfs",
        "http",
        "py",
    ];
    eprintln!(
        "bench: writing fixtures under {} ...",
        base.path().display()
    );
    let t = Instant::now();
    setup::fixtures(&w.root, &w.local, &Sizes { big: w.big }, &tags)?;
    std::fs::copy(w.root.join("big.bin"), w.local.join("big.bin")).ctx("copy big")?;
    eprintln!("bench: fixtures in {:.1} s", t.elapsed().as_secs_f64());
    let lat = args.latency_ms.to_string();
    let jd = args.job_delay_ms.to_string();
    let server = Server::start(
        &args.f7tfs,
        &w.root,
        &w.work,
        "serve",
        0,
        &[
            "--latency-ms".into(),
            lat.clone(),
            "--s3-latency-ms".into(),
            lat,
            "--job-delay-ms".into(),
            jd.clone(),
        ],
    )?;
    let mut results: HashMap<(String, String), Measure> = HashMap::new();

    // 1. f7tfs against the server's own added latency.
    let ep = || Endpoint {
        url: server.url.clone(),
        token_url: server.token_url.clone(),
        system: server.system.clone(),
    };
    let direct = Target::F7tfs {
        tag: "f7tfs",
        ep: ep(),
        stats_url: server.url.clone(),
        extra: String::new(),
        wait_remote: true,
    };
    run_mount_target(&w, rt, &direct, &defs, &mut results)?;

    // 1b. The writing workloads again in strict mode: `close()` returns once the remote has it.
    if !args.no_strict_run {
        let t = Target::F7tfs {
            tag: "f7tfs-strict",
            ep: ep(),
            stats_url: server.url.clone(),
            extra: "--writeback-delay 0".into(),
            wait_remote: false,
        };
        let writing: Vec<StepDef> = steps(w.big)
            .into_iter()
            .filter(|d| WB_STEPS.contains(&d.id) && defs.iter().any(|x| x.id == d.id))
            .collect();
        run_mount_target(&w, rt, &t, &writing, &mut results)?;
    }

    // 2. The plain HTTP client on the same server.
    {
        let api = rt.block_on(Api::connect(&server.url, &server.token_url, &server.system))?;
        for d in &defs {
            check_interrupt()?;
            reset_stats(rt, &server.url)?;
            let started = Instant::now();
            let limit = Duration::from_secs(args.step_timeout);
            let step = rt.block_on(async {
                tokio::time::timeout(limit, http_step(&api, &w, d.id))
                    .await
                    .unwrap_or(Some(Err("timeout".into())))
            });
            let Some(r) = step else {
                continue;
            };
            let took = started.elapsed().as_secs_f64();
            let (c, b, bd) = summarize(&stats(rt, &server.url)?);
            let m = match r {
                Ok(note) => Measure {
                    secs: Some(took),
                    calls: Some(c),
                    bytes: Some(b),
                    note,
                    breakdown: bd,
                },
                Err(e) => Measure {
                    note: format!("FAILED {e}"),
                    ..Default::default()
                },
            };
            eprintln!("bench: http: {} {:.2} s {c} calls {}", d.id, took, m.note);
            results.insert((d.id.into(), "http".into()), m);
        }
    }

    // 3. pyfirecrest on the same server.
    if !args.no_pyfirecrest {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/bench/pyfirecrest_bench.py"
        );
        for d in &defs {
            check_interrupt()?;
            let Some(job) = py_job(&w, d.id) else {
                continue;
            };
            reset_stats(rt, &server.url)?;
            let cmd = format!(
                "FIRECREST_URL={} FIRECREST_CLIENT_ID=f7tfs FIRECREST_CLIENT_SECRET=f7tfs \
                 AUTH_TOKEN_URL={} FIRECREST_SYSTEM={} NO_PROXY=127.0.0.1 no_proxy=127.0.0.1 \
                 {} {} {}",
                server.url,
                server.token_url,
                server.system,
                args.python,
                script,
                job.iter()
                    .map(|a| sh_quote(Path::new(a)))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            let (o, took) = run_cmd(&cmd, Duration::from_secs(args.step_timeout), &w.work)?;
            let (c, b, bd) = summarize(&stats(rt, &server.url)?);
            let mut m = Measure {
                calls: Some(c),
                bytes: Some(b),
                breakdown: bd,
                ..Default::default()
            };
            match o {
                Outcome::Ok(out) => {
                    let v: serde_json::Value =
                        serde_json::from_str(out.trim().lines().last().unwrap_or("{}"))
                            .unwrap_or_default();
                    m.secs = Some(v["seconds"].as_f64().unwrap_or(took.as_secs_f64()));
                }
                Outcome::Failed(e) => m.note = format!("FAILED {e}"),
                Outcome::Timeout => m.note = "TIMEOUT".into(),
            }
            eprintln!(
                "bench: pyfirecrest: {} {} s {c} calls {}",
                d.id,
                m.secs.map_or("-".into(), |s| format!("{s:.2}")),
                m.note
            );
            results.insert((d.id.into(), "pyfirecrest".into()), m);
        }
    }

    // 4. sshfs through the delay proxy.
    let one_way = Duration::from_millis(args.latency_ms / 2);
    if !args.no_sshfs {
        let sshd = setup::Sshd::start(&w.work.join("ssh"))?;
        let (proxy, set) = rt.block_on(DelayProxy::bind(one_way)).ctx("bind proxy")?;
        rt.block_on(set.send(([127, 0, 0, 1], sshd.port).into()))
            .ctx("proxy upstream")?;
        let t = Target::Sshfs {
            sshd: &sshd,
            proxy: &proxy,
        };
        run_mount_target(&w, rt, &t, &defs, &mut results)?;
    }

    // 5. f7tfs through the same proxy, against a second server without added latency.
    if !args.no_proxy_run {
        let (proxy, set) = rt.block_on(DelayProxy::bind(one_way)).ctx("bind proxy")?;
        let public = format!("http://{}", proxy.addr);
        // The server prints the public (proxy) URL; its own address is the port chosen here.
        let port = crate::procs::free_port()?;
        let plain = Server::start(
            &args.f7tfs,
            &w.root,
            &w.work,
            "serve-plain",
            port,
            &[
                "--public-url".into(),
                public.clone(),
                "--job-delay-ms".into(),
                jd,
            ],
        )?;
        let up: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        rt.block_on(set.send(up)).ctx("proxy upstream")?;
        let t = Target::F7tfs {
            tag: "f7tfs-proxy",
            ep: Endpoint {
                url: plain.url.clone(),
                token_url: plain.token_url.clone(),
                system: plain.system.clone(),
            },
            stats_url: format!("http://{up}"),
            extra: String::new(),
            wait_remote: true,
        };
        run_mount_target(&w, rt, &t, &defs, &mut results)?;
    }

    println!("machine: {}", machine());
    report(&w, &defs, &results);
    Ok(())
}
