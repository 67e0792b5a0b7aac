//! `POST /exports`, `GET /exports/{id}`, `GET /exports/{id}/download` (with `Range`), the
//! tenant's completion webhook, and `POST /integrity/verify/export`.

use atp_telemetry::failpoint;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use atp_bundle::verify::{self as bundle_verify, Trust};
use atp_core::edition::Feature;
use atp_delivery::cold::ColdStore;
use atp_delivery::object_key;
use atp_delivery::webhook::{self, WebhookPolicy};
use atp_nats::exports::{self as bus_exports, Webhook};
use atp_nats::signing_keys;
use atp_store::exports::{self, ExportRequest, ExportRow, ExportStatus};
use atp_store::query::Selection;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Permission, Principal};
use crate::problem::{Problem, ProblemCode};
use crate::query::READERS;
use crate::{Bus, GatewayState};

/// The gateway's side of exports, shared like [`Bus`].
#[derive(Clone)]
pub struct ExportsApi(Arc<ExportsParts>);

impl ExportsApi {
    pub fn new(parts: ExportsParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for ExportsApi {
    type Target = ExportsParts;
    fn deref(&self) -> &ExportsParts {
        &self.0
    }
}

pub struct ExportsParts {
    pub cold: ColdStore,
    pub webhooks: async_nats::jetstream::kv::Store,
    pub limits: Arc<ExportLimits>,
    pub webhook_policy: WebhookPolicy,
    /// Where `verify/export` puts a stored bundle while it checks it (the export spool):
    /// a disk the operator sized for bundles, not the host's `/tmp`.
    pub scratch: std::path::PathBuf,
}

/// Per-tenant caps on exports queued or running at once.
#[derive(Debug, Clone)]
pub struct ExportLimits {
    pub concurrent: i64,
    pub per_tenant: HashMap<String, i64>,
}

impl Default for ExportLimits {
    fn default() -> Self {
        Self {
            concurrent: 2,
            per_tenant: HashMap::new(),
        }
    }
}

impl ExportLimits {
    pub fn cap(&self, tenant: &str) -> i64 {
        self.per_tenant
            .get(tenant)
            .copied()
            .unwrap_or(self.concurrent)
    }
}

impl axum::extract::FromRef<GatewayState> for ExportsApi {
    fn from_ref(s: &GatewayState) -> Self {
        s.exports.clone()
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExportBody {
    /// The `/audit/records` filters (no limit or cursor).
    #[serde(default)]
    #[schema(value_type = Object)]
    selection: Selection,
    #[serde(default)]
    format: Option<String>,
    /// Optional; if given it must be the caller's own tenant.
    #[serde(default)]
    tenant_id: Option<String>,
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[utoipa::path(post, path = "/exports", tag = "exports", request_body = ExportBody,
    responses((status = 202, description = "Queued: `{exportId, status, statusUrl, downloadUrl}`", body = serde_json::Value, content_type = "application/json")))]
pub async fn create(
    principal: Principal,
    State(state): State<GatewayState>,
    body: JsonBody<ExportBody>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let Json(body) =
        body.map_err(|e| Problem::new(ProblemCode::InvalidRequest, e.body_text()).tenant(&tenant))?;
    if body.tenant_id.as_ref().is_some_and(|t| *t != tenant) {
        return Err(Problem::new(
            ProblemCode::CrossTenant,
            "an export can only select the caller's own tenant",
        )
        .tenant(&tenant));
    }
    let format = body.format.unwrap_or_else(|| "tar".to_owned());
    if format != "tar" {
        return Err(Problem::new(
            ProblemCode::InvalidRequest,
            format!("format {format:?} is not offered; use \"tar\""),
        )
        .tenant(&tenant));
    }
    // The caller's clearance travels with the request: the exporter matches the filters and
    // discloses sealed values by it, as `/audit/records` would show them to this caller now.
    let clearance = crate::redact::Clearance::of(&state.bus, &principal).await?;
    let req = ExportRequest {
        export_id: ulid::Ulid::generate().to_string(),
        tenant_id: tenant.clone(),
        requested_by: principal.subject.clone(),
        requested_at: Utc::now(),
        selection: body.selection,
        format,
        edition: principal.edition,
        readable: Some(clearance.0),
        subject_keys: None,
    };
    let cap = state.exports.limits.cap(&tenant);
    let lock = exports::lock_tenant(&state.db, &tenant)
        .await
        .map_err(|e| Problem::store("the export registry", e))?;
    if lock.active >= cap {
        let mut resp = Problem::new(
            ProblemCode::ExportLimit,
            format!(
                "{} exports are already queued or running; the limit is {cap}",
                lock.active
            ),
        )
        .tenant(&tenant)
        .into_response();
        let h = resp.headers_mut();
        for (k, v) in [
            ("retry-after", "30".to_owned()),
            ("x-ratelimit-limit", cap.to_string()),
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset", "30".to_owned()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.insert(k, v);
            }
        }
        return Ok(resp);
    }
    let payload =
        serde_json::to_vec(&req).map_err(|e| Problem::unavailable("the export request", e))?;
    bus_exports::publish(
        &state.bus.js,
        bus_exports::ExportEvent::Requested,
        &principal.tenant,
        &req.export_id,
        payload,
        atp_telemetry::telemetry::traceparent_of(&tracing::Span::current())
            .map(|t| t.header())
            .as_deref(),
    )
    .await
    .map_err(|e| Problem::unavailable("the export queue", e))?;
    failpoint::crash_point(failpoint::GATEWAY_BEFORE_EXPORT_ROW);
    lock.admit(&req)
        .await
        .map_err(|e| Problem::store("the export registry", e))?;
    let location = format!("/api/v1/exports/{}", req.export_id);
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({
            "exportId": req.export_id,
            "status": "queued",
            "statusUrl": location,
            "downloadUrl": format!("{location}/download"),
        })),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

async fn load(state: &GatewayState, principal: &Principal, id: &str) -> Result<ExportRow, Problem> {
    let tenant = principal.tenant.as_str();
    exports::get(&state.db, tenant, id)
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found(format!("no export {id:?}")).tenant(tenant))
}

fn status_json(row: &ExportRow) -> Value {
    let mut v = json!({
        "exportId": row.export_id,
        "tenantId": row.tenant_id,
        "status": row.status,
        "format": row.format,
        "selection": row.selection,
        "requestedBy": row.requested_by,
        "requestedAt": atp_core::record::timestamp(row.requested_at),
        "attempts": row.attempts,
    });
    if let Some(at) = row.started_at {
        v["startedAt"] = json!(atp_core::record::timestamp(at));
    }
    if matches!(row.status, ExportStatus::Running | ExportStatus::Queued) {
        v["progress"] = json!({
            "recordsDone": row.records_done,
            "recordsTotal": row.records_total,
        });
    }
    if let Some(at) = row.finished_at {
        v["finishedAt"] = json!(atp_core::record::timestamp(at));
    }
    if row.status == ExportStatus::Completed {
        v["recordCount"] = json!(row.record_count);
        v["bytes"] = json!(row.bytes);
        v["manifestSha256"] = json!(row.manifest_sha256);
        v["bundleSha256"] = json!(row.bundle_sha256);
        v["downloadUrl"] = json!(format!("/api/v1/exports/{}/download", row.export_id));
    }
    if row.status == ExportStatus::Failed {
        v["failure"] = json!({ "code": row.failure_code, "detail": row.failure_detail });
    }
    if let Some(readable) = &row.readable {
        v["readable"] = json!(readable);
    }
    if row.subject_keys.is_some() {
        v["kind"] = json!("subject-access");
    }
    if let Some(s) = &row.webhook_status {
        v["webhook"] = json!({
            "status": s,
            "attempts": row.webhook_attempts,
            "lastError": row.webhook_error,
            "lastAttemptAt": row.webhook_at.map(atp_core::record::timestamp),
            "nextAttemptAt": row.webhook_next_at.filter(|_| s == "pending").map(atp_core::record::timestamp),
        });
    }
    v
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    limit: Option<i64>,
}

/// `GET /exports`: the tenant's 20 (up to 100) most recent exports, newest first.
#[utoipa::path(get, path = "/exports", tag = "exports", params(ListParams),
    responses((status = 200, description = "The tenant's recent exports", body = serde_json::Value, content_type = "application/json")))]
pub async fn list(
    principal: Principal,
    State(state): State<GatewayState>,
    params: Result<axum::extract::Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let axum::extract::Query(p) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let rows = exports::list(&state.db, &tenant, p.limit.unwrap_or(20))
        .await
        .map_err(Problem::from)?;
    Ok(Json(json!({ "items": rows.iter().map(status_json).collect::<Vec<_>>() })).into_response())
}

#[utoipa::path(get, path = "/exports/{export_id}", tag = "exports", params(("export_id" = String, Path)),
    responses((status = 200, description = "The export's status", body = serde_json::Value, content_type = "application/json")))]
pub async fn status(
    principal: Principal,
    State(state): State<GatewayState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let row = load(&state, &principal, &id).await?;
    Ok(Json(status_json(&row)).into_response())
}

/// Parses a single `bytes=` range against a body of `size` bytes. `Ok(None)`: no (usable)
/// Range header, serve the whole; `Err`: unsatisfiable (416).
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<Range<u64>>, ()> {
    let Some(value) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges would need multipart/byteranges; the whole body is a valid answer.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end = if b.is_empty() {
                size
            } else {
                b.parse::<u64>()
                    .map_err(|_| ())?
                    .saturating_add(1)
                    .min(size)
            };
            start..end
        }
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            size.saturating_sub(n)..size
        }
        (true, true) => return Err(()),
    };
    if range.start >= size || range.start >= range.end {
        return Err(());
    }
    Ok(Some(range))
}

#[utoipa::path(get, path = "/exports/{export_id}/download", tag = "exports",
    params(("export_id" = String, Path), ("Range" = Option<String>, Header)),
    responses(
        (status = 200, description = "The signed bundle", body = Vec<u8>, content_type = "application/x-tar"),
        (status = 206, description = "A byte range of it", body = Vec<u8>, content_type = "application/x-tar"),
    ))]
pub async fn download(
    principal: Principal,
    State(state): State<GatewayState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let row = load(&state, &principal, &id).await?;
    if row.status != ExportStatus::Completed {
        let mut resp = Problem::new(
            ProblemCode::ExportNotReady,
            format!("export {id} is {}", row.status),
        )
        .tenant(&tenant)
        .into_response();
        if row.status != ExportStatus::Failed {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        return Ok(resp);
    }
    let key = row
        .object_key
        .clone()
        .unwrap_or_else(|| object_key(&tenant, &id));
    let size = state
        .exports
        .cold
        .size(&key)
        .await
        .map_err(|e| Problem::unavailable("the cold store", e))?
        .ok_or_else(|| {
            Problem::new(
                ProblemCode::ExportExpired,
                format!("the bundle of export {id} is no longer stored"),
            )
            .tenant(&tenant)
        })?;
    let (status, range) = match parse_range(&headers, size) {
        Ok(Some(r)) => (StatusCode::PARTIAL_CONTENT, r),
        Ok(None) => (StatusCode::OK, 0..size),
        Err(()) => {
            let mut resp = Problem::new(
                ProblemCode::RangeNotSatisfiable,
                format!("the bundle is {size} bytes"),
            )
            .tenant(&tenant)
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let stream = state
        .exports
        .cold
        .read(&key, range.clone())
        .await
        .map_err(|e| Problem::unavailable("the cold store", e))?;
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    let mut set = |k: header::HeaderName, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(k, v);
        }
    };
    set(header::CONTENT_TYPE, atp_bundle::MEDIA_TYPE.to_owned());
    set(
        header::CONTENT_LENGTH,
        (range.end - range.start).to_string(),
    );
    set(header::ACCEPT_RANGES, "bytes".to_owned());
    set(
        header::CONTENT_DISPOSITION,
        format!("attachment; filename=\"atp-export-{id}.tar\""),
    );
    if let Some(sha) = &row.bundle_sha256 {
        set(header::ETAG, format!("\"{sha}\""));
    }
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", range.start, range.end - 1),
        );
    }
    Ok(resp)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    url: String,
}

/// `PUT /exports/webhook`: sets the tenant's completion webhook and answers a fresh secret, the
/// only time it is shown.
#[utoipa::path(put, path = "/exports/webhook", tag = "exports", request_body = WebhookBody,
    responses((status = 200, description = "Set; the secret is shown this once (enterprise edition)", body = serde_json::Value, content_type = "application/json")))]
pub async fn set_webhook(
    principal: Principal,
    State(state): State<GatewayState>,
    body: JsonBody<WebhookBody>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    principal.require_feature(Feature::ExportWebhooks)?;
    let tenant = principal.tenant.to_string();
    let Json(body) =
        body.map_err(|e| Problem::new(ProblemCode::InvalidRequest, e.body_text()).tenant(&tenant))?;
    // Resolved now so a URL aimed inward is refused at once; every delivery checks again and
    // connects only to the addresses it checked (DNS can change after this).
    webhook::vet_url(&body.url, &state.exports.webhook_policy)
        .await
        .map_err(|e| Problem::new(ProblemCode::InvalidWebhook, e.to_string()).tenant(&tenant))?;
    let mut secret = [0u8; 32];
    rand::fill(&mut secret);
    let hook = Webhook {
        url: body.url,
        secret: B64.encode(secret),
    };
    bus_exports::set_webhook(
        &state.exports.webhooks,
        &principal.tenant,
        principal.edition,
        Some(&hook),
    )
    .await
    .map_err(|e| webhook_problem(e, &tenant))?;
    tracing::info!(tenant = %tenant, by = %principal.subject, "export webhook set");
    Ok(Json(json!({
        "url": hook.url,
        "secret": hook.secret,
        "signature": "ATP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(base64-decoded secret, \"<t>.\" + body)>",
    }))
    .into_response())
}

#[utoipa::path(get, path = "/exports/webhook", tag = "exports",
    responses((status = 200, description = "Whether a webhook is set, and its URL", body = serde_json::Value, content_type = "application/json")))]
pub async fn get_webhook(
    principal: Principal,
    State(state): State<GatewayState>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    let hook = bus_exports::webhook_of(&state.exports.webhooks, &principal.tenant)
        .await
        .map_err(|e| Problem::unavailable("the webhook registry", e))?;
    Ok(Json(json!({ "configured": hook.is_some(), "url": hook.map(|h| h.url) })).into_response())
}

#[utoipa::path(delete, path = "/exports/webhook", tag = "exports",
    responses((status = 204, description = "Removed")))]
pub async fn delete_webhook(
    principal: Principal,
    State(state): State<GatewayState>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    bus_exports::set_webhook(
        &state.exports.webhooks,
        &principal.tenant,
        principal.edition,
        None,
    )
    .await
    .map_err(|e| webhook_problem(e, principal.tenant.as_str()))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn webhook_problem(e: bus_exports::SetWebhookError, tenant: &str) -> Problem {
    match e {
        bus_exports::SetWebhookError::Edition(e) => crate::auth::edition_problem(&e),
        bus_exports::SetWebhookError::Bus(e) => Problem::unavailable("the webhook registry", e),
    }
    .tenant(tenant)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyExportBody {
    export_id: String,
}

/// `POST /integrity/verify/export`: `{ "exportId" }` verifies a stored bundle; a body of
/// `application/x-tar` (up to the request limit) verifies an uploaded one. Both against the
/// deployment's published signing keys.
#[utoipa::path(post, path = "/integrity/verify/export", tag = "integrity",
    request_body(content = VerifyExportBody, content_type = "application/json",
        description = "A stored export by id (an uploaded bundle may be sent as application/x-tar)"),
    responses((status = 200, description = "The verification report", body = serde_json::Value, content_type = "application/json")))]
pub async fn verify(
    principal: Principal,
    State(state): State<GatewayState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let bad = |d: String| Problem::new(ProblemCode::InvalidRequest, d).tenant(&tenant);
    let is_tar = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(atp_bundle::MEDIA_TYPE));
    // A slot of the verification pool before anything is fetched or hashed.
    let _slot = match state.capacity.verify.try_enter(&tenant) {
        Ok(slot) => slot,
        Err(busy) => return Ok(busy.problem(&tenant)),
    };
    // An uploaded bundle is checked where it already is, in memory (bounded by the request
    // limit); a stored one is fetched into a scratch file that is removed when `Bundle` drops —
    // on every return, early ones and a timed-out request's included.
    let bundle = if is_tar {
        Bundle::Uploaded(body)
    } else {
        let req: VerifyExportBody = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("expected {{\"exportId\"}} or a tar: {e}")))?;
        let row = load(&state, &principal, &req.export_id).await?;
        if row.status != ExportStatus::Completed {
            return Err(Problem::new(
                ProblemCode::ExportNotReady,
                format!("export {} is {}", req.export_id, row.status),
            )
            .tenant(&tenant));
        }
        let key = row
            .object_key
            .unwrap_or_else(|| object_key(&tenant, &req.export_id));
        let file = scratch_file(&state.exports.scratch)
            .map_err(|e| Problem::unavailable("scratch space", e))?;
        state
            .exports
            .cold
            .download(&key, file.path())
            .await
            .map_err(|e| Problem::unavailable("the cold store", e))?;
        Bundle::Stored(Arc::new(file))
    };
    let trust = published_trust(&state.bus).await?;
    let checked = bundle.clone();
    let report = tokio::task::spawn_blocking(move || match &checked {
        Bundle::Uploaded(bytes) => {
            bundle_verify::verify(|| Ok(std::io::Cursor::new(bytes.clone())), &trust)
        }
        Bundle::Stored(file) => bundle_verify::verify(|| std::fs::File::open(file.path()), &trust),
    })
    .await
    .map_err(|e| Problem::unavailable("verification", e))?
    .map_err(|e| Problem::unavailable("verification", e));
    drop(bundle);
    let report = report?;
    if report.tenant_id.as_deref().is_some_and(|t| t != tenant) {
        return Err(Problem::new(
            ProblemCode::CrossTenant,
            "the bundle belongs to another tenant",
        )
        .tenant(&tenant));
    }
    let first = report.first().cloned();
    Ok(Json(json!({
        "verified": report.ok,
        "firstFailure": first,
        "report": report,
    }))
    .into_response())
}

/// The bundle `verify/export` checks. A stored one's scratch file is shared with the blocking
/// check and removed when the last holder drops it.
#[derive(Clone)]
enum Bundle {
    Uploaded(Bytes),
    Stored(Arc<tempfile::NamedTempFile>),
}

/// The prefix of `verify/export`'s scratch files.
pub const SCRATCH_PREFIX: &str = "atp-verify-";

/// A fresh scratch file in `dir`, removed when dropped.
fn scratch_file(dir: &std::path::Path) -> std::io::Result<tempfile::NamedTempFile> {
    std::fs::create_dir_all(dir)?;
    tempfile::Builder::new()
        .prefix(SCRATCH_PREFIX)
        .suffix(".tar")
        .tempfile_in(dir)
}

/// Every checkpoint key the deployment ever published.
async fn published_trust(bus: &Bus) -> Result<Trust, Problem> {
    let keys = signing_keys::list(&bus.signing_keys)
        .await
        .map_err(|e| Problem::unavailable("the signing-key registry", e))?;
    let verifiers = keys.iter().filter_map(|k| k.verifier().ok()).collect();
    Ok(Trust {
        verifiers,
        keys: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(v: &str, size: u64) -> Result<Option<Range<u64>>, ()> {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        parse_range(&h, size)
    }

    #[test]
    fn a_scratch_file_is_gone_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let file = scratch_file(dir.path()).unwrap();
        let path = file.path().to_owned();
        assert!(path.exists());
        let shared = Bundle::Stored(Arc::new(file));
        let held = shared.clone();
        drop(shared);
        assert!(path.exists(), "kept while the check still holds it");
        drop(held);
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(range("bytes=0-99", 1000), Ok(Some(0..100)));
        assert_eq!(range("bytes=500-", 1000), Ok(Some(500..1000)));
        assert_eq!(range("bytes=-100", 1000), Ok(Some(900..1000)));
        assert_eq!(range("bytes=900-5000", 1000), Ok(Some(900..1000)));
        assert_eq!(range("bytes=1000-", 1000), Err(()));
        assert_eq!(range("bytes=5-4", 1000), Err(()));
        assert_eq!(range("bytes=0-1,5-6", 1000), Ok(None));
        assert_eq!(range("items=0-1", 1000), Ok(None));
        assert_eq!(parse_range(&HeaderMap::new(), 10), Ok(None));
    }
}
