//! The plain-HTTP baseline: the same bytes a workload needs, fetched or sent with reqwest
//! straight from the FirecREST v2 API of the same server, one call after another like a
//! `curl` loop (no cache, no parallelism): `ops/ls` (recursive where a tree is walked),
//! `ops/download`/`ops/upload` per small file, the staged transfer (job + presigned S3 URL,
//! HTTP `Range`) for the large file.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{json, Value};

use crate::procs::{check_interrupt, Ctx, R};

/// A client of one server with a token.
pub struct Api {
    client: Client,
    base: String,
    system: String,
    token: String,
}

impl Api {
    /// Fetches a token with the client-credentials grant.
    pub async fn connect(base: &str, token_url: &str, system: &str) -> R<Self> {
        let client = Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(600))
            .build()
            .ctx("http client")?;
        let tok: Value = client
            .post(token_url)
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", "f7tfs"),
                ("client_secret", "f7tfs"),
            ])
            .send()
            .await
            .ctx("token")?
            .json()
            .await
            .ctx("token json")?;
        let token = tok["access_token"]
            .as_str()
            .ok_or("token answer without access_token")?
            .to_string();
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_string(),
            system: system.to_string(),
            token,
        })
    }

    fn ops(&self, op: &str) -> String {
        format!("{}/filesystem/{}/ops/{op}", self.base, self.system)
    }

    fn transfer(&self, op: &str) -> String {
        format!("{}/filesystem/{}/transfer/{op}", self.base, self.system)
    }

    async fn ok(r: reqwest::Response, what: &str) -> R<reqwest::Response> {
        if r.status().is_success() {
            Ok(r)
        } else {
            let st = r.status();
            Err(format!(
                "{what}: HTTP {st}: {}",
                r.text().await.unwrap_or_default()
            ))
        }
    }

    /// `ops/ls` (hidden files, numeric ids); the entries.
    pub async fn ls(&self, path: &str, recursive: bool) -> R<Vec<Value>> {
        let r = self
            .client
            .get(self.ops("ls"))
            .bearer_auth(&self.token)
            .query(&[
                ("path", path),
                ("showHidden", "true"),
                ("numericUid", "true"),
                ("recursive", if recursive { "true" } else { "false" }),
            ])
            .send()
            .await
            .ctx("ls")?;
        let v: Value = Self::ok(r, "ls").await?.json().await.ctx("ls json")?;
        Ok(v["output"].as_array().cloned().unwrap_or_default())
    }

    /// `ops/download` of one small file; its bytes.
    pub async fn download(&self, path: &str) -> R<bytes::Bytes> {
        let r = self
            .client
            .get(self.ops("download"))
            .bearer_auth(&self.token)
            .query(&[("path", path)])
            .send()
            .await
            .ctx("download")?;
        Self::ok(r, "download").await?.bytes().await.ctx("body")
    }

    /// `ops/upload` of one small file into `dir` as `name`.
    pub async fn upload(&self, dir: &str, name: &str, data: Vec<u8>) -> R<()> {
        let part = reqwest::multipart::Part::bytes(data).file_name(name.to_string());
        let form = reqwest::multipart::Form::new().part("file", part);
        let r = self
            .client
            .post(self.ops("upload"))
            .bearer_auth(&self.token)
            .query(&[("path", dir)])
            .multipart(form)
            .send()
            .await
            .ctx("upload")?;
        Self::ok(r, "upload").await.map(|_| ())
    }

    /// `ops/mkdir -p`.
    pub async fn mkdir(&self, path: &str) -> R<()> {
        let r = self
            .client
            .post(self.ops("mkdir"))
            .bearer_auth(&self.token)
            .json(&json!({"path": path, "parent": true}))
            .send()
            .await
            .ctx("mkdir")?;
        Self::ok(r, "mkdir").await.map(|_| ())
    }

    async fn wait_job(&self, job: &Value) -> R<()> {
        let id = match &job["jobId"] {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        let url = format!("{}/compute/{}/jobs/{id}", self.base, self.system);
        let started = Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            check_interrupt()?;
            let r = self
                .client
                .get(&url)
                .bearer_auth(&self.token)
                .send()
                .await
                .ctx("job")?;
            if r.status().is_success() {
                let v: Value = r.json().await.ctx("job json")?;
                let state = v["jobs"][0]["status"]["state"].to_string();
                if state.contains("COMPLETED") {
                    return Ok(());
                }
                if state.contains("FAILED") || state.contains("CANCELLED") {
                    return Err(format!("job {id}: {state}"));
                }
            }
            if started.elapsed() > Duration::from_secs(600) {
                return Err(format!("job {id} not done after 600 s"));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 3 / 2).min(Duration::from_secs(1));
        }
    }

    /// Stages `path` for download (job) and returns the presigned URL.
    pub async fn stage_download(&self, path: &str) -> R<String> {
        let r = self
            .client
            .post(self.transfer("download"))
            .bearer_auth(&self.token)
            .json(&json!({"path": path, "transferDirectives": {"transferMethod": "s3"}}))
            .send()
            .await
            .ctx("transfer/download")?;
        let v: Value = Self::ok(r, "transfer/download")
            .await?
            .json()
            .await
            .ctx("json")?;
        self.wait_job(&v["transferJob"]).await?;
        v["transferDirectives"]["downloadUrl"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "no downloadUrl".to_string())
    }

    /// GETs a whole URL, streaming; the byte count.
    pub async fn get_all(&self, url: &str) -> R<u64> {
        let mut r = Self::ok(self.client.get(url).send().await.ctx("GET")?, "GET").await?;
        let mut n = 0u64;
        while let Some(c) = r.chunk().await.ctx("GET body")? {
            n += c.len() as u64;
        }
        Ok(n)
    }

    /// One `Range` GET.
    pub async fn get_range(&self, url: &str, off: u64, len: u64) -> R<usize> {
        let r = self
            .client
            .get(url)
            .header("Range", format!("bytes={off}-{}", off + len - 1))
            .send()
            .await
            .ctx("range GET")?;
        Ok(Self::ok(r, "range GET")
            .await?
            .bytes()
            .await
            .ctx("body")?
            .len())
    }

    /// Staged multipart upload of a local file to `path`, waiting for the job.
    pub async fn staged_upload(&self, local: &Path, path: &str) -> R<()> {
        let size = std::fs::metadata(local).ctx("stat local")?.len();
        let r = self
            .client
            .post(self.transfer("upload"))
            .bearer_auth(&self.token)
            .json(&json!({"path": path,
                "transferDirectives": {"transferMethod": "s3", "fileSize": size}}))
            .send()
            .await
            .ctx("transfer/upload")?;
        let v: Value = Self::ok(r, "transfer/upload")
            .await?
            .json()
            .await
            .ctx("json")?;
        let d = &v["transferDirectives"];
        let part = d["maxPartSize"].as_u64().ok_or("no maxPartSize")?.max(1);
        let urls = d["partsUploadUrls"]
            .as_array()
            .ok_or("no partsUploadUrls")?;
        let complete = d["completeUploadUrl"]
            .as_str()
            .ok_or("no completeUploadUrl")?;
        let mut file = tokio::fs::File::open(local).await.ctx("open local")?;
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (i, url) in urls.iter().enumerate() {
            check_interrupt()?;
            let off = i as u64 * part;
            let len = part.min(size.saturating_sub(off)) as usize;
            let mut buf = vec![0u8; len];
            tokio::io::AsyncReadExt::read_exact(&mut file, &mut buf)
                .await
                .ctx("read local")?;
            let url = url.as_str().ok_or("part url")?;
            let r = self
                .client
                .put(url)
                .body(buf)
                .send()
                .await
                .ctx("PUT part")?;
            let r = Self::ok(r, "PUT part").await?;
            let etag = r
                .headers()
                .get("etag")
                .and_then(|e| e.to_str().ok())
                .unwrap_or_default()
                .to_string();
            xml.push_str(&format!(
                "<Part><PartNumber>{}</PartNumber><ETag>{etag}</ETag></Part>",
                i + 1
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let r = self
            .client
            .post(complete)
            .body(xml)
            .send()
            .await
            .ctx("complete")?;
        Self::ok(r, "complete").await?;
        self.wait_job(&v["transferJob"]).await
    }
}
