//! Refusal tables: requests the gateway must refuse, each a row naming the request and the
//! problem it must be answered with, sent by one helper that checks every row and reports
//! every row that fails, by name, not just the first.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::Api;

/// What a row sends as its body.
pub enum Body {
    Empty,
    /// A JSON value, as `application/json`.
    Json(Value),
    /// These bytes, as `application/json`.
    Raw(Vec<u8>),
    /// These bytes, under this content type.
    Typed(&'static str, Vec<u8>),
}

/// One request the gateway must refuse, and the problem it must answer with.
pub struct Refusal {
    pub name: String,
    pub method: Method,
    pub path: String,
    /// The bearer token; `None` sends no `Authorization` header.
    pub token: Option<String>,
    pub body: Body,
    pub status: u16,
    pub code: &'static str,
    /// Text the problem's `detail` must hold.
    pub detail: Option<&'static str>,
    /// The problem's `tenantId`, where the row checks it.
    pub tenant: Option<&'static str>,
}

/// A row of a refusal table: `name` says what is wrong with the request.
pub fn refusal(
    name: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Body,
    status: u16,
    code: &'static str,
) -> Refusal {
    Refusal {
        name: name.to_owned(),
        method,
        path: path.to_owned(),
        token: token.map(str::to_owned),
        body,
        status,
        code,
        detail: None,
        tenant: None,
    }
}

impl Refusal {
    /// The problem's `detail` must hold `text` (it names the offender).
    pub fn detail_has(mut self, text: &'static str) -> Self {
        self.detail = Some(text);
        self
    }
    /// The problem must name `tenant` as its `tenantId`.
    pub fn tenant_is(mut self, tenant: &'static str) -> Self {
        self.tenant = Some(tenant);
        self
    }
}

/// What is missing from the headers every answer carries, errors included.
pub fn missing_security_headers(h: &HeaderMap) -> Vec<String> {
    let mut missing = Vec::new();
    if !h.contains_key("x-request-id") {
        missing.push("no x-request-id".to_owned());
    }
    for (name, wanted) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
    ] {
        if h.get(name).is_none_or(|v| v != wanted) {
            missing.push(format!("{name} is {:?}, not {wanted:?}", h.get(name)));
        }
    }
    let csp = h
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok());
    if !csp.is_some_and(|v| v.contains("default-src 'none'")) {
        missing.push(format!("content-security-policy is {csp:?}"));
    }
    missing
}

/// Panics naming every security header an answer lacks.
pub fn assert_secure_headers(h: &HeaderMap) {
    let missing = missing_security_headers(h);
    assert!(missing.is_empty(), "{}", missing.join("; "));
}

/// The status and Problem+JSON body of an answer, after checking it is Problem+JSON and
/// carries the security headers.
pub async fn problem(resp: reqwest::Response) -> (reqwest::StatusCode, Value) {
    let status = resp.status();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_secure_headers(resp.headers());
    (status, resp.json().await.unwrap())
}

impl Api {
    /// Sends every row in order and checks each answer: the row's status and code, as
    /// Problem+JSON with the security headers, a `traceId`, `status` in the body equal to the
    /// answer's, and the row's `detail` text and `tenantId` where it names them. Panics once,
    /// listing every row that failed and why.
    pub async fn assert_refusals(&self, rows: impl IntoIterator<Item = Refusal>) {
        let mut failed = Vec::new();
        let mut count = 0;
        for row in rows {
            count += 1;
            let wrong = self.refused(&row).await;
            if !wrong.is_empty() {
                failed.push(format!(
                    "{} ({} {}): {}",
                    row.name,
                    row.method,
                    row.path,
                    wrong.join("; ")
                ));
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {count} refusals were not as expected:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }

    /// What is wrong with the answer to `row` (nothing, if it was refused as the row says).
    async fn refused(&self, row: &Refusal) -> Vec<String> {
        let mut req = self
            .http
            .request(row.method.clone(), format!("{}{}", self.base, row.path));
        if let Some(token) = &row.token {
            req = req.bearer_auth(token);
        }
        req = match &row.body {
            Body::Empty => req,
            Body::Json(v) => req.json(v),
            Body::Raw(bytes) => req
                .header("content-type", "application/json")
                .body(bytes.clone()),
            Body::Typed(content_type, bytes) => req
                .header("content-type", *content_type)
                .body(bytes.clone()),
        };
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return vec![format!("not answered: {e}")],
        };
        let mut wrong = missing_security_headers(resp.headers());
        let status = resp.status().as_u16();
        let content_type = resp.headers().get("content-type").cloned();
        if content_type
            .as_ref()
            .is_none_or(|v| v != "application/problem+json")
        {
            wrong.push(format!("content-type {content_type:?}"));
        }
        let text = resp.text().await.unwrap_or_default();
        let Ok(p) = serde_json::from_str::<Value>(&text) else {
            wrong.push(format!("{status}, not JSON: {text:?}"));
            return wrong;
        };
        if (status, p["code"].as_str()) != (row.status, Some(row.code)) {
            wrong.push(format!(
                "answered {status} {}, not {} {:?}",
                p["code"], row.status, row.code
            ));
        }
        if p["status"] != status {
            wrong.push(format!("body status {} in a {status} answer", p["status"]));
        }
        if p["traceId"].as_str().is_none_or(str::is_empty) {
            wrong.push("no traceId".to_owned());
        }
        if let Some(text) = row.detail
            && !p["detail"].as_str().is_some_and(|d| d.contains(text))
        {
            wrong.push(format!("detail {} does not hold {text:?}", p["detail"]));
        }
        if let Some(tenant) = row.tenant
            && p["tenantId"] != tenant
        {
            wrong.push(format!("tenantId {}, not {tenant:?}", p["tenantId"]));
        }
        if !wrong.is_empty() {
            wrong.push(format!("the answer: {p}"));
        }
        wrong
    }
}
