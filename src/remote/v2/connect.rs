//! Connecting a `V2Client`: the token, the version check (`F7T-AppVersion`, or a clear error
//! for a v1 server), the system (case-insensitive, unknown → the list of known ones), the
//! capabilities from `dataOperation`, the user's ids from `userinfo` and the zone of `ls` times.

use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use parking_lot::RwLock;
use reqwest::Method;

use super::parse::IdMap;
use super::wire::{SystemsResponse, UserInfo};
use super::{Inner, V2Client};
use crate::config::RemoteConfig;
use crate::remote::auth::TokenProvider;
use crate::remote::http::{Call, HttpClient};
use crate::remote::{detect, Capabilities, RemoteError, RemotePath, RemoteResult};

/// Direct-download limit for a server's `max_ops_file_size`: the file travels base64-encoded
/// inside the output cap (3/4), with a margin: 0.7 × the cap.
pub fn direct_download_limit(max_ops_file_size: u64) -> u64 {
    max_ops_file_size / 10 * 7
}

impl V2Client {
    /// Connects to `config`: token, version and system check, capabilities, ids, time zone.
    pub async fn connect(config: &RemoteConfig) -> RemoteResult<V2Client> {
        detect::check_configured(config.api_version, &config.url)?;
        let auth = Arc::new(TokenProvider::new(
            config.credentials.clone(),
            config.call_timeout,
        )?);
        let http = HttpClient::new(config, auth)?;
        // A token first: a wrong secret must say so, not "server error".
        http.auth().token().await?;

        let systems_reply = match http
            .send(&Call::api(Method::GET, "/status/systems", true))
            .await
        {
            Ok(r) => r,
            Err(RemoteError::NotFound(_)) if config.api_version.is_none() => {
                return Err(probe_v1(&http, &config.url).await);
            }
            Err(RemoteError::Unavailable(m)) => {
                return Err(RemoteError::Unavailable(format!(
                    "{m}; check FIRECREST_URL ({})",
                    config.url
                )))
            }
            Err(e) => return Err(e),
        };
        let is_v2 = detect::version_from_headers(&systems_reply.headers).is_some();
        let app_version = systems_reply
            .headers
            .get(detect::V2_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if !is_v2
            && config.api_version.is_none()
            && detect::looks_like_v1_parameters(&systems_reply.body)
        {
            return Err(detect::v1_unsupported(&config.url));
        }
        let systems: SystemsResponse = systems_reply.json()?;
        let Some(system) = systems
            .systems
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(&config.system))
        else {
            let names: Vec<&str> = systems.systems.iter().map(|s| s.name.as_str()).collect();
            return Err(RemoteError::InvalidArgument(format!(
                "unknown system {:?} at {}; available: {}",
                config.system,
                config.url,
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            )));
        };
        let data_op = system.data_operation.as_ref().ok_or_else(|| {
            RemoteError::Protocol(format!("system {} has no dataOperation", system.name))
        })?;
        let max_ops = data_op.max_ops_file_size;
        let data_transfer = data_op.data_transfer.clone().unwrap_or_default();
        let max_part_size = data_transfer
            .pointer("/multipart/max_part_size")
            .or_else(|| data_transfer.pointer("/multipart/maxPartSize"))
            .and_then(|v| v.as_u64())
            .unwrap_or(1 << 30);
        let staging_ttl = data_transfer
            .get("ttl")
            .and_then(|v| v.as_u64())
            .map(Duration::from_secs);
        let mut filesystems = Vec::new();
        for fs in &system.file_systems {
            filesystems.push(RemotePath::new(&fs.path)?);
        }
        let caps = Capabilities {
            api_version: "v2",
            direct_download_limit: direct_download_limit(max_ops),
            direct_upload_limit: max_ops,
            max_part_size,
            sync_rename: false,
            relative_symlinks: false,
            filesystems,
        };
        let system_name = system.name.clone();
        let needs_account = data_op
            .datatransfer_jobs_directives
            .iter()
            .any(|d| d.contains("{account}"));

        let user: UserInfo = http
            .send(&Call::api(
                Method::GET,
                format!("/status/{system_name}/userinfo"),
                true,
            ))
            .await?
            .json()?;

        let (tz, tz_configured) = match &config.remote_timezone {
            Some(name) => (
                TimeZone::get(name).map_err(|e| {
                    RemoteError::InvalidArgument(format!(
                        "unknown remote time zone {name:?} ({e}); use an IANA name such as \
                         Europe/Zurich"
                    ))
                })?,
                true,
            ),
            None => (TimeZone::UTC, false),
        };
        let account = if needs_account {
            default_account(&user)
        } else {
            None
        };
        let client = V2Client {
            inner: Arc::new(Inner {
                ids: IdMap::from_userinfo(&user),
                http,
                url: config.url.clone(),
                system: system_name,
                caps,
                tz: RwLock::new(tz),
                tz_configured,
                user,
                staging_ttl,
                account,
                parallelism: config.transfer_parallelism.max(1),
                op_deadline: config.op_deadline,
                app_version,
            }),
        };
        if !tz_configured {
            if let Some(first) = client.inner.caps.filesystems.first().cloned() {
                if let Err(e) = client.detect_timezone(&first).await {
                    tracing::warn!("cannot detect the remote time zone ({e}); assuming UTC");
                }
            }
        } else {
            tracing::info!(
                zone = config.remote_timezone.as_deref().unwrap_or(""),
                "remote time zone configured"
            );
        }
        Ok(client)
    }
}

/// The default (else the first) account of `userinfo.accounts`.
fn default_account(user: &UserInfo) -> Option<String> {
    let accounts = user.accounts.as_ref()?.as_array()?;
    let name = |a: &serde_json::Value| a.get("name").and_then(|n| n.as_str()).map(str::to_string);
    accounts
        .iter()
        .find(|a| a.get("default").and_then(|d| d.as_bool()) == Some(true))
        .and_then(name)
        .or_else(|| accounts.first().and_then(name))
}

async fn probe_v1(http: &HttpClient, url: &str) -> RemoteError {
    match http
        .send(&Call::api(Method::GET, "/status/parameters", true))
        .await
    {
        Ok(r) if detect::looks_like_v1_parameters(&r.body) => detect::v1_unsupported(url),
        // A configuration mistake, told as such (not as a missing remote path).
        _ => RemoteError::InvalidArgument(format!(
            "{url} is not a FirecREST v2 API ({url}/status/systems does not exist): check \
             FIRECREST_URL (e.g. https://api.cscs.ch/hpc/firecrest/v2)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn default_account_from_userinfo() {
        let info: UserInfo = serde_json::from_value(json!({
            "user": {"id": "1", "name": "u"}, "group": {"id": "1", "name": "g"},
            "accounts": [{"name": "a1", "default": false}, {"name": "a2", "default": true}]
        }))
        .unwrap();
        assert_eq!(default_account(&info).as_deref(), Some("a2"));
        let info: UserInfo = serde_json::from_value(json!({
            "user": {"id": "1", "name": "u"}, "group": {"id": "1", "name": "g"}
        }))
        .unwrap();
        assert_eq!(default_account(&info), None);
    }

    #[test]
    fn direct_limit_is_seven_tenths() {
        assert_eq!(direct_download_limit(5 * 1024 * 1024), 3670016);
    }
}
