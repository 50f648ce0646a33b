//! FirecREST v2 wire shapes, exactly as `shared/firecrest/openapi-v2.json` and the recorded
//! samples in `shared/firecrest/v2-samples/` show them. Shared by the v2 client
//! (`remote::v2`) and the bundled server (`server`), so both speak one shape; the contract
//! tests pin these structs to the recorded real responses so the two cannot drift together.
//!
//! Field casing is camelCase except inside `dataOperation` (snake_case, as the real server).
//! Transfer directives are answered in camelCase and read in either casing (firecrest-v2#162).

use serde::{Deserialize, Serialize};

/// `{"output": T}`, the success envelope of most `ops/*` endpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output<T> {
    pub output: T,
}

/// Error body of every failing v2 call.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// `"error"` or `"validation"`.
    pub error_type: String,
    pub message: String,
    pub caused_by: Option<serde_json::Value>,
    pub data: Option<serde_json::Value>,
    pub user: Option<String>,
}

/// One entry of `ops/ls` (also the output of mkdir, chmod, chown, symlink). Every field is a
/// string; `size` too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LsEntry {
    pub name: String,
    /// One character: `-`, `d`, `l`, `c`, `b`, `p`, `s`.
    #[serde(rename = "type")]
    pub kind: String,
    pub link_target: Option<String>,
    pub user: String,
    pub group: String,
    /// Nine mode characters (Lustre may append `+`/`.`).
    pub permissions: String,
    /// `YYYY-MM-DDTHH:MM:SS`, remote local time, no zone.
    pub last_modified: String,
    pub size: String,
}

/// Output of `ops/stat`: all integers, `mode` is the full decimal `st_mode`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatOutput {
    pub mode: u32,
    pub ino: u64,
    pub dev: u64,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: i64,
    pub ctime: i64,
    pub mtime: i64,
}

/// Output of `ops/head` and `ops/tail`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContentWindow {
    pub content: String,
    /// `"bytes"` or `"lines"`.
    pub content_type: String,
    pub start_position: i64,
    pub end_position: i64,
}

/// Output of `ops/checksum`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checksum {
    pub algorithm: String,
    pub checksum: String,
}

// ---------------------------------------------------------------- request bodies (JSON)

/// `POST ops/mkdir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MkdirRequest {
    #[serde(alias = "sourcePath", alias = "source_path")]
    pub path: String,
    #[serde(default)]
    pub parent: bool,
}

/// `PUT ops/chmod`; `mode` octal (`"755"`) or symbolic (`"u+x"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChmodRequest {
    #[serde(alias = "sourcePath", alias = "source_path")]
    pub path: String,
    pub mode: String,
}

/// `PUT ops/chown`; both fields default to `""`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChownRequest {
    #[serde(alias = "sourcePath", alias = "source_path")]
    pub path: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub group: String,
}

/// `POST ops/symlink`: `path` is what the link points to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SymlinkRequest {
    #[serde(alias = "sourcePath", alias = "source_path")]
    pub path: String,
    #[serde(alias = "link_path")]
    pub link_path: String,
}

/// `POST ops/compress` (and `transfer/compress`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompressRequest {
    #[serde(alias = "path", alias = "source_path")]
    pub source_path: String,
    #[serde(alias = "target_path")]
    pub target_path: String,
    #[serde(
        default,
        alias = "match_pattern",
        skip_serializing_if = "Option::is_none"
    )]
    pub match_pattern: Option<String>,
    #[serde(default)]
    pub dereference: bool,
    /// `none`, `gzip` (default), `bzip2`, `xz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// `POST ops/extract` (and `transfer/extract`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtractRequest {
    #[serde(alias = "path", alias = "source_path")]
    pub source_path: String,
    #[serde(alias = "target_path")]
    pub target_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

/// `POST transfer/mv` and `transfer/cp`: the source travels as `path` (alias `sourcePath`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MoveRequest {
    #[serde(alias = "sourcePath", alias = "source_path")]
    pub path: String,
    #[serde(alias = "target_path")]
    pub target_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dereference: Option<bool>,
}

/// `POST transfer/upload` and `transfer/download`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferRequest {
    #[serde(alias = "sourcePath", alias = "source_path")]
    pub path: String,
    #[serde(alias = "transfer_directives")]
    pub transfer_directives: TransferDirectives,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// Directives of a transfer, in the request and in the answer. Null fields are omitted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferDirectives {
    #[serde(alias = "transfer_method")]
    pub transfer_method: String,
    #[serde(default, alias = "file_size", skip_serializing_if = "Option::is_none")]
    pub file_size: Option<u64>,
    #[serde(
        default,
        alias = "download_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub download_url: Option<String>,
    #[serde(
        default,
        alias = "parts_upload_urls",
        skip_serializing_if = "Option::is_none"
    )]
    pub parts_upload_urls: Option<Vec<String>>,
    #[serde(
        default,
        alias = "complete_upload_url",
        skip_serializing_if = "Option::is_none"
    )]
    pub complete_upload_url: Option<String>,
    #[serde(
        default,
        alias = "max_part_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_part_size: Option<u64>,
}

// ---------------------------------------------------------------- transfer answers and jobs

/// Answer of every `transfer/*` endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferResponse {
    pub transfer_job: TransferJob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_directives: Option<TransferDirectives>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransferJob {
    pub job_id: String,
    pub system: String,
    pub working_directory: String,
    pub logs: JobLogs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobLogs {
    pub output_log: String,
    pub error_log: String,
}

/// `GET /compute/{system}/jobs/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobsResponse {
    pub jobs: Vec<Job>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    pub job_id: String,
    pub name: String,
    pub status: JobStatus,
    #[serde(default)]
    pub tasks: Vec<serde_json::Value>,
    pub time: JobTime,
    pub account: Option<String>,
    pub allocation_nodes: Option<u64>,
    pub cluster: Option<String>,
    pub group: Option<String>,
    pub nodes: Option<String>,
    pub partition: Option<String>,
    pub kill_request_user: Option<String>,
    pub user: Option<String>,
    pub working_directory: Option<String>,
    pub priority: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// A string, or on some schedulers a list of strings (join them).
    pub state: serde_json::Value,
    pub state_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub interrupt_signal: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobTime {
    pub elapsed: Option<i64>,
    pub start: Option<i64>,
    pub end: Option<i64>,
    pub suspended: Option<i64>,
    pub limit: Option<i64>,
}

// ---------------------------------------------------------------- status

/// `GET /status/systems`: only the parts a client reads are typed; the server fills the rest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SystemsResponse {
    pub systems: Vec<System>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct System {
    pub name: String,
    #[serde(default)]
    pub file_systems: Vec<FileSystem>,
    pub data_operation: Option<DataOperation>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileSystem {
    pub path: String,
    pub data_type: String,
    pub default_work_dir: bool,
}

/// snake_case inside, as the real server (and the `DataOperation` schema) has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataOperation {
    #[serde(default)]
    pub datatransfer_jobs_directives: Vec<String>,
    pub max_ops_file_size: u64,
    pub data_transfer: Option<serde_json::Value>,
}

/// `GET /status/{system}/userinfo`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    pub user: IdName,
    pub group: IdName,
    #[serde(default)]
    pub groups: Vec<IdName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accounts: Option<serde_json::Value>,
}

/// `{"id": "1001", "name": "fireuser"}`: the id is a string.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdName {
    pub id: String,
    pub name: String,
}

/// Token endpoint answer (OIDC client credentials).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub token_type: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, serde_json::Value>,
}
