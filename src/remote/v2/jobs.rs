//! Transfer jobs of the v2 client: submitting them (with `account` where the system needs
//! one), polling `/compute/{system}/jobs/{id}` to a terminal state, reading a failed job's error
//! log, removing the log files the jobs leave in the user's directories, and the `rm` fallback
//! through `transfer/rm` when a direct `rm` times out.

use std::time::{Duration, Instant};

use reqwest::Method;

use super::wire::{JobsResponse, TransferJob, TransferResponse};
use super::{check_path_chars, V2Client};
use crate::remote::http::{Body, Call};
use crate::remote::{RemoteError, RemotePath, RemoteResult};

/// A job may be unknown to the scheduler right after submission (404 "Job not found").
pub(super) const JOB_APPEAR_GRACE: Duration = Duration::from_secs(20);
pub(super) const JOB_POLL_START: Duration = Duration::from_millis(100);
pub(super) const JOB_POLL_CAP: Duration = Duration::from_secs(2);
/// Bound of short jobs (mv, rm, download staging) beyond the op deadline.
pub(super) const JOB_BOUND_SHORT: Duration = Duration::from_secs(15 * 60);
/// Bound of staged uploads: the upload job polls the bucket only every 60 s and may queue.
pub(super) const JOB_BOUND_LONG: Duration = Duration::from_secs(6 * 3600);
/// Slowest staging copy we still wait for (bytes per second).
pub(super) const STAGE_RATE: u64 = 10 * 1024 * 1024;
/// Scheduler states after which a job will not change any more (API.md 5.2).
pub(super) const TERMINAL_STATES: &[&str] = &[
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "F",
];

pub(super) fn state_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

pub(super) fn is_terminal(state: &str) -> bool {
    state
        .split(',')
        .any(|s| TERMINAL_STATES.contains(&s.trim()))
}

impl V2Client {
    /// Submits a transfer job, adding `account` where the system needs one.
    pub(super) async fn submit_transfer(&self, mut call: Call) -> RemoteResult<TransferResponse> {
        if let Some(account) = &self.inner.account {
            match &mut call.body {
                Body::Json(serde_json::Value::Object(map)) => {
                    map.insert("account".into(), account.clone().into());
                }
                _ => call.query.push(("account", account.clone())),
            }
        }
        self.inner.http.send(&call).await?.json()
    }

    /// Polls a job to a terminal state; returns that state.
    pub(super) async fn wait_job(
        &self,
        job: &TransferJob,
        bound: Duration,
    ) -> RemoteResult<String> {
        let started = Instant::now();
        let mut last_answer = Instant::now();
        let mut delay = JOB_POLL_START;
        let path = format!("/compute/{}/jobs/{}", self.inner.system, job.job_id);
        loop {
            match self
                .inner
                .http
                .send(&Call::api(Method::GET, path.clone(), true))
                .await
            {
                Ok(reply) => {
                    last_answer = Instant::now();
                    let jobs: JobsResponse = reply.json()?;
                    if let Some(j) = jobs.jobs.iter().find(|j| j.job_id == job.job_id) {
                        let state = state_text(&j.status.state);
                        if is_terminal(&state) {
                            return Ok(state);
                        }
                    }
                }
                Err(RemoteError::NotFound(_)) if started.elapsed() < JOB_APPEAR_GRACE => {}
                Err(RemoteError::NotFound(m)) => {
                    return Err(RemoteError::Protocol(format!(
                        "transfer job {} is unknown to the scheduler: {m}",
                        job.job_id
                    )))
                }
                Err(e)
                    if e.is_transient()
                        && started.elapsed() < bound
                        && last_answer.elapsed() < self.inner.op_deadline =>
                {
                    tracing::debug!(job = %job.job_id, "polling failed, will retry: {e}");
                }
                Err(e) => return Err(e),
            }
            if started.elapsed() >= bound {
                return Err(RemoteError::Timeout(format!(
                    "transfer job {} did not finish within {} s",
                    job.job_id,
                    bound.as_secs()
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay.mul_f64(1.5)).min(JOB_POLL_CAP);
        }
    }

    /// The error a failed job left in its error log, classified; `None` when unreadable or
    /// unrecognised.
    pub(super) async fn job_log_error(&self, job: &TransferJob) -> Option<RemoteError> {
        let path = RemotePath::new(&job.logs.error_log).ok()?;
        if !self.in_filesystems(&path) {
            return None;
        }
        let call = Call::api(Method::GET, self.ops("download"), true).query("path", path.as_str());
        let body = self.inner.http.send(&call).await.ok()?.body;
        let text = String::from_utf8_lossy(&body);
        let line = text
            .lines()
            .rev()
            .find(|l| RemoteError::from_message(l).is_some())?;
        RemoteError::from_message(line.trim())
    }

    /// Removes a job's log files when they sit inside the filesystems (best effort).
    pub(super) async fn remove_job_logs(&self, job: &TransferJob) {
        for log in [&job.logs.output_log, &job.logs.error_log] {
            let Ok(path) = RemotePath::new(log) else {
                continue;
            };
            if self.in_filesystems(&path) {
                if let Err(e) = self.rm_direct(&path).await {
                    tracing::debug!(log = %path, "cannot remove a transfer job log: {e}");
                }
            }
        }
    }

    pub(super) async fn job_failed(
        &self,
        job: &TransferJob,
        state: &str,
        what: &str,
    ) -> RemoteError {
        match self.job_log_error(job).await {
            Some(e) => e,
            None => RemoteError::Unavailable(format!(
                "{what}: transfer job {} ended {state}",
                job.job_id
            )),
        }
    }

    pub(super) async fn remove_by_job(&self, path: &RemotePath) -> RemoteResult<()> {
        check_path_chars(path.as_str(), true)?;
        let call =
            Call::api(Method::DELETE, self.transfer("rm"), false).query("path", path.as_str());
        let resp = self.submit_transfer(call).await?;
        let job = resp.transfer_job;
        let state = self
            .wait_job(&job, self.inner.op_deadline + JOB_BOUND_SHORT)
            .await?;
        let result = match self.stat_raw(path).await {
            Err(RemoteError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Err(self.job_failed(&job, &state, &format!("rm {path}")).await),
        };
        self.remove_job_logs(&job).await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_states() {
        assert!(is_terminal("COMPLETED"));
        assert!(is_terminal(&state_text(&json!(["CANCELLED", "X"]))));
        assert!(!is_terminal("PENDING"));
        assert!(!is_terminal(&state_text(&json!(["RUNNING"]))));
    }

    #[test]
    fn recorded_transfer_answers_parse() {
        let up: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/v2/transfer_upload_12MiB_3parts__1_create.json"
        ))
        .unwrap();
        let r: TransferResponse = serde_json::from_value(up["response_body"].clone()).unwrap();
        let d = r.transfer_directives.unwrap();
        assert_eq!(d.parts_upload_urls.unwrap().len(), 3);
        assert_eq!(d.max_part_size, Some(5242880));
        let job: serde_json::Value = serde_json::from_str(include_str!(
            "../../../tests/fixtures/v2/transfer_mv_missing_source__job_final.json"
        ))
        .unwrap();
        let j: JobsResponse = serde_json::from_value(job["response_body"].clone()).unwrap();
        assert_eq!(state_text(&j.jobs[0].status.state), "COMPLETED");
    }
}
