//! FirecREST v2 client: `V2Client` implements `RemoteFs` over `/filesystem/{system}/ops/…`,
//! `/filesystem/{system}/transfer/…` and `/compute/{system}/jobs/…`.
//!
//! Connecting fetches a token, reads `/status/systems` (version check, the system, limits,
//! filesystems), `userinfo` (ids for tar members and named `ls` outputs) and fixes the time zone
//! of `ls` times. Every call then goes through `http::HttpClient` (retries, rate limit,
//! deadlines, error mapping); job-based operations (rename, staged transfers, the rm fallback)
//! poll `/compute/{system}/jobs/{id}` and verify their effect with `stat`, because a failed
//! `mv` job still reports COMPLETED (API.md 5.2).
//!
//! Files: `connect` (start-up), `jobs` (transfer jobs), `parse` (wire → domain), `wire` (serde
//! shapes shared with the server); this file holds the `RemoteFs` methods and their helpers.

mod connect;
mod jobs;
pub mod parse;
pub mod wire;

pub use connect::direct_download_limit;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use jiff::tz::TimeZone;
use parking_lot::RwLock;
use reqwest::Method;
use serde_json::json;

use self::jobs::{JOB_BOUND_LONG, JOB_BOUND_SHORT, STAGE_RATE};
use self::parse::IdMap;
use self::wire::{LsEntry, Output, StatOutput, UserInfo};
use super::http::{Body, Call, HttpClient, HttpStats};
use super::{
    transfer, ArchiveMember, ArchiveMemberKind, Capabilities, DirEntry, FetchedFile, FileKind,
    Progress, RemoteError, RemoteFs, RemotePath, RemoteResult, StagedObject, Stat,
};

/// Presigned URLs are used only until this long before they expire.
const URL_EXPIRY_MARGIN: Duration = Duration::from_secs(300);

/// FirecREST v2 implementation of `RemoteFs`. Cheap to clone.
#[derive(Clone)]
pub struct V2Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: HttpClient,
    url: String,
    system: String,
    caps: Capabilities,
    tz: RwLock<TimeZone>,
    tz_configured: bool,
    ids: IdMap,
    user: UserInfo,
    staging_ttl: Option<Duration>,
    /// Sent with transfer jobs when the system's job directives need `{account}`.
    account: Option<String>,
    parallelism: usize,
    op_deadline: Duration,
    /// The server's `F7T-AppVersion` header, if it sent one.
    app_version: Option<String>,
}

/// Characters the v2 server cannot carry in a path: `'` breaks its shell quoting, control
/// characters break `ls` parsing; job scripts additionally HTML-escape `& < > "` (API.md 3).
pub fn check_path_chars(path: &str, for_job: bool) -> RemoteResult<()> {
    let bad = path
        .chars()
        .find(|&c| c == '\'' || c.is_control() || (for_job && matches!(c, '&' | '<' | '>' | '"')));
    match bad {
        Some(c) => Err(RemoteError::InvalidName(format!(
            "{path:?} contains {c:?}, which FirecREST v2 cannot carry{}",
            if for_job {
                " through a transfer job"
            } else {
                ""
            }
        ))),
        None => Ok(()),
    }
}

/// Seconds of `X-Amz-Expires` in a presigned URL.
pub fn url_expires_in(url: &str) -> Option<Duration> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let secs = parsed
        .query_pairs()
        .find(|(k, _)| k.eq_ignore_ascii_case("X-Amz-Expires"))?
        .1
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_secs(secs))
}

fn system_time_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl V2Client {
    /// The base URL connected to.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The system name as the server spells it.
    pub fn system(&self) -> &str {
        &self.inner.system
    }

    /// The server's FirecREST version (`F7T-AppVersion`), if it reports one.
    pub fn app_version(&self) -> Option<&str> {
        self.inner.app_version.as_deref()
    }

    /// The identity the token maps to (from `userinfo` at connect time).
    pub fn user(&self) -> &UserInfo {
        &self.inner.user
    }

    /// `GET /status/{system}/userinfo`: uid/gid/name of the token's user, fresh.
    pub async fn userinfo(&self) -> RemoteResult<UserInfo> {
        self.inner
            .http
            .send(&Call::api(
                Method::GET,
                format!("/status/{}/userinfo", self.inner.system),
                true,
            ))
            .await?
            .json()
    }

    /// HTTP counters (attempts, retries).
    pub fn http_stats(&self) -> &HttpStats {
        self.inner.http.stats()
    }

    /// How many tokens were fetched so far.
    pub fn token_fetches(&self) -> u64 {
        self.inner.http.auth().fetch_count()
    }

    /// The zone `ls` times are read in.
    pub fn timezone(&self) -> TimeZone {
        self.inner.tz.read().clone()
    }

    /// Checks that `path` lies inside one of the system's filesystems and exists; returns its
    /// attributes. For `f7tfs check` and mount start-up.
    pub async fn check_path(&self, path: &RemotePath) -> RemoteResult<Stat> {
        let fss = &self.inner.caps.filesystems;
        if !fss.is_empty() && !fss.iter().any(|fs| path.starts_with(fs)) {
            let list: Vec<String> = fss.iter().map(|f| f.to_string()).collect();
            return Err(RemoteError::InvalidArgument(format!(
                "{path} is outside the filesystems of {} ({}); pick a path below one of them",
                self.inner.system,
                list.join(", ")
            )));
        }
        self.stat(path).await
    }

    /// Finds the zone of `ls` times from up to three entries of `dir` (a winter and a summer
    /// one when there are: `parse::pick_probes`), each `lastModified` against `stat`'s mtime
    /// (the stats run side by side). A configured `remote_timezone` wins (nothing is called).
    pub async fn detect_timezone(&self, dir: &RemotePath) -> RemoteResult<()> {
        if self.inner.tz_configured {
            return Ok(());
        }
        let entries = self.ls_raw(dir).await?;
        let civils: Vec<&str> = entries.iter().map(|e| e.last_modified.as_str()).collect();
        let mut candidates: Vec<(RemotePath, String)> = Vec::new();
        for i in parse::pick_probes(&civils) {
            let e = &entries[i];
            if let Ok(p) = dir.join(&parse::decode_c_escapes(&e.name)) {
                candidates.push((p, e.last_modified.clone()));
            }
        }
        if candidates.is_empty() {
            // An empty directory: find it in its parent's listing instead.
            if let Some(parent) = dir.parent() {
                for e in self.ls_raw(&parent).await.unwrap_or_default() {
                    if parse::decode_c_escapes(&e.name) == dir.file_name() {
                        candidates.push((dir.clone(), e.last_modified));
                    }
                }
            }
        }
        let stats =
            futures_util::future::join_all(candidates.iter().map(|(p, _)| self.stat_raw(p))).await;
        let mut found: Vec<(i64, jiff::tz::Offset)> = Vec::new();
        let mut probe = None;
        for ((path, civil), st) in candidates.into_iter().zip(stats) {
            let Ok(st) = st else {
                continue;
            };
            if let Some(offset) = parse::offset_from_pair(&civil, st.mtime) {
                found.push((st.mtime, offset));
                probe.get_or_insert(path);
            }
        }
        if let (Some(&(_, offset)), Some(probe)) = (found.first(), probe) {
            let zone = parse::choose_zone(&found, &TimeZone::system());
            match zone.iana_name() {
                Some(name) if zone != TimeZone::fixed(offset) => tracing::info!(
                    %offset,
                    zone = name,
                    probe = %probe,
                    "remote ls times match this time zone; using it"
                ),
                _ => tracing::info!(
                    %offset,
                    probe = %probe,
                    "remote ls times are in a fixed offset (set remote_timezone for a zone \
                     with daylight saving time)"
                ),
            }
            *self.inner.tz.write() = zone;
            return Ok(());
        }
        Err(RemoteError::NotFound(format!(
            "no entry in {dir} to compare ls and stat times"
        )))
    }

    // ------------------------------------------------------------------ helpers

    fn ops(&self, op: &str) -> String {
        format!("/filesystem/{}/ops/{op}", self.inner.system)
    }

    fn transfer(&self, op: &str) -> String {
        format!("/filesystem/{}/transfer/{op}", self.inner.system)
    }

    fn in_filesystems(&self, path: &RemotePath) -> bool {
        self.inner
            .caps
            .filesystems
            .iter()
            .any(|fs| path.starts_with(fs))
    }

    async fn ls_raw(&self, path: &RemotePath) -> RemoteResult<Vec<LsEntry>> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::GET, self.ops("ls"), true)
            .query("path", path.as_str())
            .query("showHidden", "true")
            .query("numericUid", "true");
        let out: Output<Vec<LsEntry>> = self.inner.http.send(&call).await?.json()?;
        Ok(out.output)
    }

    async fn stat_raw(&self, path: &RemotePath) -> RemoteResult<StatOutput> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::GET, self.ops("stat"), true).query("path", path.as_str());
        let out: Output<StatOutput> = self.inner.http.send(&call).await?.json()?;
        Ok(out.output)
    }

    /// An `ls` entry answered by mkdir/chmod/chown → `Stat`; falls back to `stat` when the
    /// entry carries names we cannot map to ids.
    async fn entry_stat(&self, path: &RemotePath, entry: &LsEntry) -> RemoteResult<Stat> {
        let tz = self.timezone();
        match parse::entry_to_dir_entry(entry, &tz, &self.inner.ids) {
            Ok(d) => Ok(d.stat),
            Err(_) => self.stat(path).await,
        }
    }

    async fn upload_named(&self, dir: &RemotePath, name: &str, data: Bytes) -> RemoteResult<()> {
        check_path_chars(dir.as_str(), false)?;
        check_path_chars(name, false)?;
        if data.len() as u64 > self.inner.caps.direct_upload_limit {
            return Err(RemoteError::TooLarge(format!(
                "{dir}/{name}: {} bytes (direct limit {})",
                data.len(),
                self.inner.caps.direct_upload_limit
            )));
        }
        // Replaying an upload writes the same bytes again: idempotent.
        let call = Call::api(Method::POST, self.ops("upload"), true)
            .query("path", dir.as_str())
            .body(Body::Multipart {
                field: "file",
                filename: name.to_string(),
                data,
            });
        self.inner.http.send(&call).await?;
        Ok(())
    }

    async fn rm_direct(&self, path: &RemotePath) -> RemoteResult<()> {
        let mut call = Call::api(Method::DELETE, self.ops("rm"), true).query("path", path.as_str());
        call.absent_ok_on_retry = true;
        self.inner.http.send(&call).await.map(|_| ())
    }

    /// Empty content: `ops/upload` hangs on it (408), so it goes through the archive route,
    /// keeping the mode of an existing file.
    async fn upload_empty(&self, path: &RemotePath) -> RemoteResult<()> {
        let dir = path
            .parent()
            .ok_or_else(|| RemoteError::IsADirectory(path.to_string()))?;
        let perm = match self.stat(path).await {
            Ok(st) if st.kind == FileKind::Dir => {
                return Err(RemoteError::IsADirectory(path.to_string()))
            }
            Ok(st) => st.perm,
            Err(RemoteError::NotFound(_)) => 0o644,
            Err(e) => return Err(e),
        };
        self.put_archive(
            &dir,
            vec![ArchiveMember {
                name: path.file_name().to_string(),
                kind: ArchiveMemberKind::File(Bytes::new()),
                perm,
                mtime: SystemTime::now(),
            }],
        )
        .await
    }

    fn build_tar(&self, members: &[ArchiveMember]) -> RemoteResult<Vec<u8>> {
        let user = &self.inner.user;
        let uid: u64 = user.user.id.parse().unwrap_or(0);
        let gid: u64 = user.group.id.parse().unwrap_or(0);
        let io = |e: std::io::Error| RemoteError::InvalidName(format!("cannot archive: {e}"));
        let mut builder = tar::Builder::new(Vec::new());
        for m in members {
            if m.name.is_empty() || m.name == "." || m.name == ".." || m.name.contains('/') {
                return Err(RemoteError::InvalidName(format!(
                    "archive member {:?} is not a single name",
                    m.name
                )));
            }
            check_path_chars(&m.name, false)?;
            let mut h = tar::Header::new_gnu();
            h.set_mode(m.perm & 0o7777);
            h.set_mtime(system_time_secs(m.mtime));
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_username(&user.user.name).map_err(io)?;
            h.set_groupname(&user.group.name).map_err(io)?;
            match &m.kind {
                ArchiveMemberKind::File(data) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(data.len() as u64);
                    builder
                        .append_data(&mut h, &m.name, data.as_ref())
                        .map_err(io)?;
                }
                ArchiveMemberKind::Symlink(target) => {
                    if target.is_empty() {
                        return Err(RemoteError::InvalidArgument("empty symlink target".into()));
                    }
                    check_path_chars(target, false)?;
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    builder.append_link(&mut h, &m.name, target).map_err(io)?;
                }
            }
        }
        builder.into_inner().map_err(io)
    }
}

impl RemoteFs for V2Client {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    async fn list(&self, dir: &RemotePath) -> RemoteResult<Vec<DirEntry>> {
        let raw = self.ls_raw(dir).await?;
        // `ls` of a file or symlink answers one entry named with the path as given.
        if raw.len() == 1 && raw[0].name == dir.as_str() {
            return Err(RemoteError::NotADirectory(dir.to_string()));
        }
        let tz = self.timezone();
        let mut out = Vec::with_capacity(raw.len());
        for e in &raw {
            let d = match parse::entry_to_dir_entry(e, &tz, &self.inner.ids) {
                Ok(d) => d,
                Err(err) => {
                    tracing::warn!(dir = %dir, "skipping an entry: {err}");
                    continue;
                }
            };
            if d.name.is_empty() || d.name.contains('/') || d.name == "." || d.name == ".." {
                tracing::warn!(dir = %dir, name = ?d.name, "skipping an entry with an unusable name");
                continue;
            }
            out.push(d);
        }
        Ok(out)
    }

    async fn stat(&self, path: &RemotePath) -> RemoteResult<Stat> {
        Ok(parse::stat_output_to_stat(&self.stat_raw(path).await?))
    }

    async fn checksum(&self, path: &RemotePath) -> RemoteResult<String> {
        // The real server cannot split sha256sum's output for a path with spaces (500).
        check_path_chars(path.as_str(), false)?;
        if path.as_str().contains(' ') {
            return Err(RemoteError::Unsupported(format!(
                "checksum of {path}: a space in the path"
            )));
        }
        let call = Call::api(Method::GET, self.ops("checksum"), true).query("path", path.as_str());
        let out: Output<wire::Checksum> = self.inner.http.send(&call).await?.json()?;
        Ok(out.output.checksum.to_ascii_lowercase())
    }

    async fn read_link(&self, path: &RemotePath) -> RemoteResult<String> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::GET, self.ops("ls"), true).query("path", path.as_str());
        let out: Output<Vec<LsEntry>> = self.inner.http.send(&call).await?.json()?;
        match out.output.as_slice() {
            [e] if e.kind == "l" => e
                .link_target
                .as_deref()
                .map(parse::decode_c_escapes)
                .ok_or_else(|| RemoteError::Protocol(format!("{path}: link without target"))),
            _ => Err(RemoteError::InvalidArgument(format!(
                "{path} is not a symlink"
            ))),
        }
    }

    async fn download(&self, path: &RemotePath) -> RemoteResult<Bytes> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::GET, self.ops("download"), true).query("path", path.as_str());
        Ok(self.inner.http.send(&call).await?.body)
    }

    async fn upload(&self, path: &RemotePath, data: Bytes) -> RemoteResult<()> {
        if data.is_empty() {
            return self.upload_empty(path).await;
        }
        let dir = path
            .parent()
            .ok_or_else(|| RemoteError::IsADirectory(path.to_string()))?;
        self.upload_named(&dir, path.file_name(), data).await
    }

    async fn put_archive(&self, dir: &RemotePath, members: Vec<ArchiveMember>) -> RemoteResult<()> {
        check_path_chars(dir.as_str(), false)?;
        let tar = self.build_tar(&members)?;
        let tar_name = format!("{ARCHIVE_PREFIX}{}.tar", uuid::Uuid::new_v4());
        let tar_path = dir.join(&tar_name)?;
        let cleanup = ArchiveCleanup::new(self, &tar_path);
        self.upload_named(dir, &tar_name, Bytes::from(tar)).await?;
        // Extracting the same archive twice has the same effect: idempotent.
        let call = Call::api(Method::POST, self.ops("extract"), true).json(json!({
            "sourcePath": tar_path.as_str(),
            "targetPath": dir.as_str(),
            "compression": "none",
        }));
        let extracted = self.inner.http.send(&call).await.map(|_| ());
        cleanup.now().await;
        extracted
    }

    async fn fetch_files(&self, dir: &RemotePath) -> RemoteResult<Vec<FetchedFile>> {
        check_path_chars(dir.as_str(), false)?;
        // The remote runs `cd PARENT; find . -type f -regex PATTERN | tar -cz`: members are
        // `./BASE/NAME`. The pattern keeps BASE's own files only.
        let base = dir.file_name();
        let pattern = batch_pattern(base).ok_or_else(|| {
            RemoteError::Unsupported(format!("batched reads of {dir}: name not in the safe set"))
        })?;
        let tar_name = format!("{ARCHIVE_PREFIX}{}.tgz", uuid::Uuid::new_v4().simple());
        let tar_path = dir.join(&tar_name)?;
        let cleanup = ArchiveCleanup::new(self, &tar_path);
        let call = Call::api(Method::POST, self.ops("compress"), false).json(json!({
            "sourcePath": dir.as_str(),
            "targetPath": tar_path.as_str(),
            "compression": "gzip",
            "matchPattern": pattern,
        }));
        let result = match self.inner.http.send(&call).await {
            Ok(_) => {
                let limit = self.capabilities().direct_download_limit;
                let dl = Call::api(Method::GET, self.ops("download"), true)
                    .query("path", tar_path.as_str());
                match self.inner.http.send(&dl).await {
                    Ok(resp) => crate::remote::archive::unpack_flat(
                        &resp.body,
                        &format!("{base}/"),
                        limit.saturating_mul(4),
                    ),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        // Always remove the archive (a failed compress may have left a partial one).
        cleanup.now().await;
        result
    }

    async fn mkdir(&self, path: &RemotePath) -> RemoteResult<Stat> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::POST, self.ops("mkdir"), false)
            .json(json!({"path": path.as_str(), "parent": false}));
        let out: Output<LsEntry> = self.inner.http.send(&call).await?.json()?;
        self.entry_stat(path, &out.output).await
    }

    async fn remove(&self, path: &RemotePath) -> RemoteResult<()> {
        check_path_chars(path.as_str(), false)?;
        match self.rm_direct(path).await {
            Err(RemoteError::Timeout(m)) => {
                tracing::info!(path = %path, "rm timed out ({m}); removing through a transfer job");
                self.remove_by_job(path).await
            }
            other => other,
        }
    }

    async fn chmod(&self, path: &RemotePath, perm: u32) -> RemoteResult<Stat> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::PUT, self.ops("chmod"), true).json(json!({
            "path": path.as_str(),
            "mode": format!("{:o}", perm & 0o7777),
        }));
        let out: Output<LsEntry> = self.inner.http.send(&call).await?.json()?;
        self.entry_stat(path, &out.output).await
    }

    async fn chown(&self, path: &RemotePath, uid: u32, gid: u32) -> RemoteResult<Stat> {
        check_path_chars(path.as_str(), false)?;
        let call = Call::api(Method::PUT, self.ops("chown"), true).json(json!({
            "path": path.as_str(),
            "owner": uid.to_string(),
            "group": gid.to_string(),
        }));
        let out: Output<LsEntry> = self.inner.http.send(&call).await?.json()?;
        // The answer names owner and group; they are what we just set.
        let mut entry = out.output;
        entry.user = uid.to_string();
        entry.group = gid.to_string();
        self.entry_stat(path, &entry).await
    }

    async fn symlink(&self, target: &str, link: &RemotePath) -> RemoteResult<()> {
        check_path_chars(link.as_str(), false)?;
        check_path_chars(target, false)?;
        if target.is_empty() {
            return Err(RemoteError::InvalidArgument("empty symlink target".into()));
        }
        let direct = target.starts_with('/')
            && RemotePath::new(target)
                .is_ok_and(|t| t.as_str() == target && self.in_filesystems(&t));
        if direct {
            let call = Call::api(Method::POST, self.ops("symlink"), false)
                .json(json!({"path": target, "linkPath": link.as_str()}));
            return match self.inner.http.send(&call).await {
                Ok(_) => Ok(()),
                // Older servers answer 404 for a dangling target but create the link.
                Err(RemoteError::NotFound(m)) => match self.read_link(link).await {
                    Ok(t) if t == target => Ok(()),
                    _ => Err(RemoteError::NotFound(m)),
                },
                Err(e) => Err(e),
            };
        }
        let dir = link
            .parent()
            .ok_or_else(|| RemoteError::Exists(link.to_string()))?;
        self.put_archive(
            &dir,
            vec![ArchiveMember {
                name: link.file_name().to_string(),
                kind: ArchiveMemberKind::Symlink(target.to_string()),
                perm: 0o777,
                mtime: SystemTime::now(),
            }],
        )
        .await
    }

    async fn rename(&self, from: &RemotePath, to: &RemotePath) -> RemoteResult<()> {
        check_path_chars(from.as_str(), true)?;
        check_path_chars(to.as_str(), true)?;
        let call = Call::api(Method::POST, self.transfer("mv"), false).json(json!({
            "path": from.as_str(),
            "targetPath": to.as_str(),
        }));
        let job = self.submit_transfer(call).await?.transfer_job;
        let state = self
            .wait_job(&job, self.inner.op_deadline + JOB_BOUND_SHORT)
            .await?;
        // The job says COMPLETED even when mv failed: look at the effect.
        let source = self.stat_raw(from).await;
        let target = self.stat_raw(to).await;
        let what = format!("mv {from} {to}");
        let result = match (source, target) {
            (Err(RemoteError::NotFound(_)), Ok(_)) => Ok(()),
            (Err(RemoteError::NotFound(_)), Err(RemoteError::NotFound(_))) => {
                Err(match self.job_log_error(&job).await {
                    Some(e) => e,
                    None => RemoteError::NotFound(from.to_string()),
                })
            }
            (Err(e), _) if !matches!(e, RemoteError::NotFound(_)) => Err(e),
            (_, Err(e)) if !matches!(e, RemoteError::NotFound(_)) => Err(e),
            _ => Err(match self.job_log_error(&job).await {
                Some(e) => e,
                None => RemoteError::Protocol(format!(
                    "{what}: transfer job {} ended {state} but {from} is still there",
                    job.job_id
                )),
            }),
        };
        self.remove_job_logs(&job).await;
        result
    }

    async fn stage_download(&self, path: &RemotePath, size: u64) -> RemoteResult<StagedObject> {
        check_path_chars(path.as_str(), true)?;
        let call = Call::api(Method::POST, self.transfer("download"), false).json(json!({
            "path": path.as_str(),
            "transferDirectives": {"transferMethod": "s3"},
        }));
        let submitted_at = SystemTime::now();
        let resp = self.submit_transfer(call).await?;
        let job = resp.transfer_job;
        let url = resp
            .transfer_directives
            .and_then(|d| d.download_url)
            .ok_or_else(|| {
                RemoteError::Protocol(format!("transfer/download of {path}: no downloadUrl"))
            })?;
        // The job copies the whole file into the bucket first.
        let bound =
            self.inner.op_deadline + JOB_BOUND_SHORT + Duration::from_secs(size / STAGE_RATE);
        let state = self.wait_job(&job, bound).await;
        let result = match state {
            Ok(s) if s == "COMPLETED" => Ok(()),
            Ok(s) => Err(self.job_failed(&job, &s, &format!("staging {path}")).await),
            Err(e) => Err(e),
        };
        self.remove_job_logs(&job).await;
        result?;
        let ttl = match (self.inner.staging_ttl, url_expires_in(&url)) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => Duration::from_secs(3600),
        };
        let margin = URL_EXPIRY_MARGIN.min(ttl / 10);
        Ok(StagedObject {
            url,
            size,
            expires: submitted_at + ttl.saturating_sub(margin),
        })
    }

    async fn read_range(
        &self,
        object: &StagedObject,
        offset: u64,
        len: u64,
    ) -> RemoteResult<Bytes> {
        if offset >= object.size {
            return Ok(Bytes::new());
        }
        let len = len.min(object.size - offset);
        transfer::read_range(&self.inner.http, &object.url, offset, len).await
    }

    async fn upload_large(
        &self,
        path: &RemotePath,
        local: &Path,
        size: u64,
        progress: Option<Progress>,
    ) -> RemoteResult<()> {
        check_path_chars(path.as_str(), true)?;
        let local_len = tokio::fs::metadata(local)
            .await
            .map_err(|e| RemoteError::LocalIo(format!("{}: {e}", local.display())))?
            .len();
        if local_len != size {
            return Err(RemoteError::LocalIo(format!(
                "{} has {local_len} bytes, expected {size}",
                local.display()
            )));
        }
        if size == 0 {
            return self.upload_empty(path).await;
        }
        let call = Call::api(Method::POST, self.transfer("upload"), false).json(json!({
            "path": path.as_str(),
            "transferDirectives": {"transferMethod": "s3", "fileSize": size},
        }));
        let resp = self.submit_transfer(call).await?;
        let job = resp.transfer_job;
        let directives = resp.transfer_directives.unwrap_or_default();
        let result = async {
            let urls = directives.parts_upload_urls.clone().ok_or_else(|| {
                RemoteError::Protocol(format!("transfer/upload of {path}: no partsUploadUrls"))
            })?;
            let complete = directives.complete_upload_url.clone().ok_or_else(|| {
                RemoteError::Protocol(format!("transfer/upload of {path}: no completeUploadUrl"))
            })?;
            let part_size = directives
                .max_part_size
                .unwrap_or(self.inner.caps.max_part_size);
            let parts = transfer::upload_parts(
                &self.inner.http,
                &urls,
                local,
                size,
                part_size,
                self.inner.parallelism,
                progress.clone(),
            )
            .await?;
            transfer::complete_upload(&self.inner.http, &complete, &parts).await?;
            let state = self.wait_job(&job, JOB_BOUND_LONG).await?;
            if state != "COMPLETED" {
                return Err(self
                    .job_failed(&job, &state, &format!("upload of {path}"))
                    .await);
            }
            let st = self.stat(path).await?;
            if st.size != size {
                return Err(RemoteError::Protocol(format!(
                    "{path} has {} bytes after the staged upload, expected {size}",
                    st.size
                )));
            }
            if let Some(cb) = &progress {
                cb(size, size);
            }
            Ok(())
        }
        .await;
        self.remove_job_logs(&job).await;
        result
    }
}

/// Name prefix of the hidden archives this client puts in a directory for a moment.
const ARCHIVE_PREFIX: &str = ".f7tfs-";

/// Removes one of our hidden archives from the remote: `now()` on the normal path; if the
/// call that made it is dropped half-way (a cancelled write-back at unmount, a bounded wait
/// running out), in a task of its own, so no `.f7tfs-*` debris stays in the user's directory.
struct ArchiveCleanup {
    armed: Option<(V2Client, RemotePath)>,
}

impl ArchiveCleanup {
    fn new(client: &V2Client, archive: &RemotePath) -> Self {
        Self {
            armed: Some((client.clone(), archive.clone())),
        }
    }

    async fn now(mut self) {
        if let Some((client, archive)) = self.armed.take() {
            remove_archive(&client, &archive).await;
        }
    }
}

impl Drop for ArchiveCleanup {
    fn drop(&mut self) {
        let Some((client, archive)) = self.armed.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { remove_archive(&client, &archive).await });
            }
            Err(_) => tracing::warn!(%archive, "cannot remove our archive: no runtime left"),
        }
    }
}

/// Absent is fine: a failed `compress` may not have made the archive at all.
async fn remove_archive(client: &V2Client, archive: &RemotePath) {
    match client.rm_direct(archive).await {
        Ok(()) | Err(RemoteError::NotFound(_)) => {}
        Err(e) => tracing::warn!(%archive, "cannot remove our archive: {e}"),
    }
}

/// The `find -regex` (emacs syntax, as the server runs it) pattern matching the own files of
/// directory `base` as `find .` in its parent names them, except our hidden archives: the
/// batch's own archive is written into that directory while `find` lists it, and tar would
/// otherwise read it as it grows ("file changed as we read it", exit 1). `None` when `base`
/// holds characters we do not quote.
fn batch_pattern(base: &str) -> Option<String> {
    if base.is_empty() {
        return None;
    }
    let mut out = String::from("[.]/");
    for c in base.chars() {
        match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | ',' | '@' | '=' | ':' => out.push(c),
            '.' | '+' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => return None,
        }
    }
    out.push('/');
    out.push_str(&name_without_prefix(ARCHIVE_PREFIX));
    Some(out)
}

/// An emacs regex for a file name (no `/`) that does not start with `prefix` (characters of
/// `prefix` must be safe inside and outside brackets; `.` is bracketed): either it differs
/// from the prefix at some position, or it is a proper prefix of it.
fn name_without_prefix(prefix: &str) -> String {
    let lit = |c: char| {
        if c == '.' {
            "[.]".to_string()
        } else {
            c.to_string()
        }
    };
    let chars: Vec<char> = prefix.chars().collect();
    let mut alternatives = Vec::new();
    for i in 0..chars.len() {
        let head: String = chars[..i].iter().map(|&c| lit(c)).collect();
        alternatives.push(format!("{head}[^{}/][^/]*", chars[i]));
        if i > 0 {
            alternatives.push(head);
        }
    }
    format!("\\({}\\)", alternatives.join("\\|"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_characters_are_checked() {
        assert!(check_path_chars("/home/u/ok name é.txt", true).is_ok());
        assert!(check_path_chars("/home/u/it's", false).is_err());
        assert!(check_path_chars("/home/u/a\nb", false).is_err());
        assert!(check_path_chars("/home/u/a&b", false).is_ok());
        assert!(check_path_chars("/home/u/a&b", true).is_err());
        assert!(check_path_chars("/home/u/a\"b", true).is_err());
    }

    /// The pattern as the server's `find . -type f -regex` applies it, in the parent of `d`.
    #[test]
    fn batch_pattern_keeps_own_files_but_not_our_archives() {
        let parent = tempfile::tempdir().unwrap();
        let d = parent.path().join("my.dir-1");
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let keep = [
            "a",
            "plain.tgz",
            ".hidden",
            ".f",
            ".f7",
            ".f7tfs",
            ".f7tfsx",
            ".f7tfs.tgz",
            "f7tfs-",
            "with space",
            "-dash",
        ];
        let skip = [".f7tfs-1234.tgz", ".f7tfs-x.tar", ".f7tfs-", "sub/inner"];
        for n in keep.iter().chain(&skip) {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        std::fs::write(parent.path().join("beside"), b"x").unwrap();
        let pattern = batch_pattern("my.dir-1").unwrap();
        let out = std::process::Command::new("find")
            .args([".", "-type", "f", "-regex", &pattern])
            .current_dir(parent.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut found: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_start_matches("./my.dir-1/").to_string())
            .collect();
        found.sort();
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(found, want, "pattern {pattern}");
        assert_eq!(batch_pattern("odd(name)"), None);
    }

    #[test]
    fn limits_and_url_expiry() {
        let url = "http://127.0.0.1:9000/b/k?X-Amz-Date=20261203T163147Z&X-Amz-Expires=604800&X-Amz-Signature=x";
        assert_eq!(url_expires_in(url), Some(Duration::from_secs(604800)));
        assert_eq!(url_expires_in("http://h/k"), None);
    }
}
