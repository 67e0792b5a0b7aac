//! A client of ATP's HTTP API for the investigator's commands (`atp records`, `atp
//! rejections`, `atp export`): the gateway's own answer types, read back, so that the CLI and
//! the gateway of one version cannot disagree about a field.

use std::path::Path;
use std::time::Duration;

use atp_gateway::exports::{ExportQueued, ExportView};
use atp_gateway::integrity::RecordProof;
use atp_gateway::query::{RecordPage, RecordView, RejectionPage};
use serde::de::DeserializeOwned;
use tokio::io::AsyncWriteExt as _;

/// Where the gateway is and who is asking.
#[derive(Clone)]
pub struct ApiClient {
    base: reqwest::Url,
    token: String,
    http: reqwest::Client,
}

/// An error answer of the API (RFC 9457 Problem+JSON), or no answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{status} {code}: {detail}")]
    Problem {
        status: u16,
        code: String,
        detail: String,
    },
    #[error("the gateway at {url} did not answer: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the gateway's answer is not what this version of atp reads: {0}")]
    Unexpected(String),
    #[error("{0}")]
    Local(String),
}

/// The part of a Problem+JSON answer the CLI shows.
#[derive(serde::Deserialize)]
struct ProblemBody {
    #[serde(default)]
    code: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    title: String,
}

/// A request's query: `(name, value)` pairs, the set ones only.
pub type Query = Vec<(&'static str, String)>;

impl ApiClient {
    /// A client of the gateway at `url` (e.g. `http://127.0.0.1:8080`) with a bearer token.
    pub fn new(url: &str, token: &str) -> Result<Self, ApiError> {
        let mut base = reqwest::Url::parse(url)
            .map_err(|e| ApiError::Local(format!("ATP_URL {url:?} is not a URL: {e}")))?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ApiError::Local(e.to_string()))?;
        Ok(Self {
            base,
            token: token.to_owned(),
            http,
        })
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ApiError> {
        self.base
            .join(&format!("api/v1/{}", path.trim_start_matches('/')))
            .map_err(|e| ApiError::Local(e.to_string()))
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| ApiError::Unreachable {
                url: self.base.to_string(),
                source,
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        Err(match serde_json::from_slice::<ProblemBody>(&body) {
            Ok(p) => ApiError::Problem {
                status,
                code: p.code,
                detail: if p.detail.is_empty() {
                    p.title
                } else {
                    p.detail
                },
            },
            Err(_) => ApiError::Problem {
                status,
                code: String::new(),
                detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
            },
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &Query) -> Result<T, ApiError> {
        let resp = self
            .send(self.http.get(self.url(path)?).query(query))
            .await?;
        read(resp).await
    }

    /// One page of records, newest first.
    pub async fn records(&self, query: &Query) -> Result<RecordPage, ApiError> {
        self.get("audit/records", query).await
    }

    /// One record, its digest re-checked by the gateway.
    pub async fn record(&self, record_id: &str) -> Result<RecordView, ApiError> {
        self.get(
            &format!("audit/records/{}", segment(record_id)?),
            &Query::new(),
        )
        .await
    }

    /// A record's inclusion proof against the newest checkpoint covering it.
    pub async fn proof(&self, record_id: &str) -> Result<RecordProof, ApiError> {
        self.get(
            &format!("audit/records/{}/proof", segment(record_id)?),
            &Query::new(),
        )
        .await
    }

    /// The same proof as the C2SP tlog-proof text.
    pub async fn proof_text(&self, record_id: &str) -> Result<String, ApiError> {
        let url = self.url(&format!("audit/records/{}/proof", segment(record_id)?))?;
        let resp = self
            .send(self.http.get(url).header("accept", "text/plain"))
            .await?;
        resp.text()
            .await
            .map_err(|e| ApiError::Unexpected(e.to_string()))
    }

    /// One page of rejections, newest first.
    pub async fn rejections(&self, query: &Query) -> Result<RejectionPage, ApiError> {
        self.get("audit/rejections", query).await
    }

    /// Queues an export of what `selection` (the records filters) selects.
    pub async fn create_export(
        &self,
        selection: serde_json::Value,
    ) -> Result<ExportQueued, ApiError> {
        let body = serde_json::json!({ "selection": selection, "format": "tar" });
        let resp = self
            .send(self.http.post(self.url("exports")?).json(&body))
            .await?;
        read(resp).await
    }

    /// An export's status.
    pub async fn export(&self, export_id: &str) -> Result<ExportView, ApiError> {
        self.get(&format!("exports/{}", segment(export_id)?), &Query::new())
            .await
    }

    /// Writes a completed export's bundle to `to`, streamed; returns its size.
    pub async fn download(&self, export_id: &str, to: &Path) -> Result<u64, ApiError> {
        let url = self.url(&format!("exports/{}/download", segment(export_id)?))?;
        let mut resp = self.send(self.http.get(url)).await?;
        let local = |e: std::io::Error| ApiError::Local(format!("{}: {e}", to.display()));
        let mut file = tokio::fs::File::create(to).await.map_err(local)?;
        let mut written = 0u64;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| ApiError::Unexpected(e.to_string()))?
        {
            file.write_all(&chunk).await.map_err(local)?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(local)?;
        file.sync_all().await.map_err(local)?;
        Ok(written)
    }
}

async fn read<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
    let body = resp
        .bytes()
        .await
        .map_err(|e| ApiError::Unexpected(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::Unexpected(e.to_string()))
}

/// An id as one path segment: record, export and letter ids are ULIDs or digits, so anything
/// else (a `/`, a `?`, a placeholder pasted as it is) is refused here, before it becomes
/// another path.
fn segment(id: &str) -> Result<&str, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(ApiError::Local(format!(
            "{id:?} is not an id (letters, digits, - and _ only)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_stay_one_path_segment() {
        assert!(segment("01JF6Z3Q0000000000000000AB").is_ok());
        for bad in ["", "../exports", "a/b", "<recordId>", "x?y=1", "a b"] {
            assert!(segment(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_go_under_api_v1_of_the_base_whatever_its_trailing_slash() {
        for base in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://h/atp",
        ] {
            let c = ApiClient::new(base, "t").unwrap();
            let u = c.url("audit/records").unwrap();
            assert!(u.path().ends_with("/api/v1/audit/records"), "{u}");
        }
        assert_eq!(
            ApiClient::new("http://h/atp", "t")
                .unwrap()
                .url("exports")
                .unwrap()
                .as_str(),
            "http://h/atp/api/v1/exports"
        );
    }
}
