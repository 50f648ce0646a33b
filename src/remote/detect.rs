//! Which FirecREST API a server speaks: a configured `api_version` wins; otherwise the
//! `F7T-AppVersion` header that every v2 answer carries (API.md 0) marks v2, and a server
//! answering `/status/parameters` the v1 way (`{"out": ...}`) is v1, which this client does not
//! support yet (a clear error instead of confusing 404s).

use reqwest::header::HeaderMap;

use super::{RemoteError, RemoteResult};
use crate::config::ApiVersion;

/// The v2 version header (case-insensitive in HTTP).
pub const V2_HEADER: &str = "f7t-appversion";

/// `Some(V2)` when the answer carries the v2 version header.
pub fn version_from_headers(headers: &HeaderMap) -> Option<ApiVersion> {
    headers.get(V2_HEADER).map(|_| ApiVersion::V2)
}

/// Whether a `/status/parameters` body looks like v1 (`{"out": ...}`).
pub fn looks_like_v1_parameters(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .is_some_and(|v| v.get("out").is_some())
}

/// The error for a v1 server.
pub fn v1_unsupported(url: &str) -> RemoteError {
    RemoteError::Unsupported(format!(
        "{url} is a FirecREST v1 server; FirecREST v1 is not supported yet (use a v2 URL, e.g. \
         https://api.cscs.ch/hpc/firecrest/v2)"
    ))
}

/// Checks a configured version before connecting.
pub fn check_configured(version: Option<ApiVersion>, url: &str) -> RemoteResult<()> {
    match version {
        Some(ApiVersion::V1) => Err(v1_unsupported(url)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn header_marks_v2() {
        let mut h = HeaderMap::new();
        assert_eq!(version_from_headers(&h), None);
        h.insert("F7T-AppVersion", HeaderValue::from_static("2.x.x"));
        assert_eq!(version_from_headers(&h), Some(ApiVersion::V2));
    }

    #[test]
    fn v1_is_recognised_and_refused() {
        assert!(looks_like_v1_parameters(
            br#"{"description":"x","out":{"general":[]}}"#
        ));
        assert!(!looks_like_v1_parameters(br#"{"systems":[]}"#));
        let e = check_configured(Some(ApiVersion::V1), "http://x").unwrap_err();
        assert!(e.to_string().contains("FirecREST v1 is not supported yet"));
        assert!(check_configured(Some(ApiVersion::V2), "http://x").is_ok());
    }
}
