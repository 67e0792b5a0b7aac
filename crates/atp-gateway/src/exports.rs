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
use serde_json::Value;
use utoipa::ToSchema;

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

/// An export just queued, and where to follow it.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportQueued {
    pub export_id: String,
    /// Always `queued`.
    #[schema(value_type = crate::openapi::ExportStatusSchema)]
    pub status: ExportStatus,
    /// `/api/v1/exports/{exportId}` (also the `Location` header).
    pub status_url: String,
    /// Where the bundle will be, once `completed`.
    pub download_url: String,
}

/// How far a running export is.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportProgress {
    pub records_done: i64,
    /// Known once the export's snapshot is taken.
    pub records_total: Option<i64>,
}

/// Why an export failed.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct ExportFailure {
    pub code: Option<String>,
    pub detail: Option<String>,
}

/// The delivery of an export's completion webhook.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
    /// While `pending`: when it is tried next.
    pub next_attempt_at: Option<String>,
}

/// An export and where it is.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Export)]
pub struct ExportView {
    pub export_id: String,
    pub tenant_id: String,
    #[schema(value_type = crate::openapi::ExportStatusSchema)]
    pub status: ExportStatus,
    /// `tar`.
    pub format: String,
    /// The `/audit/records` filters it selects by.
    #[schema(value_type = Object)]
    pub selection: Value,
    pub requested_by: String,
    pub requested_at: String,
    pub attempts: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// While `queued` or `running`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<ExportProgress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Once `completed`: the records in the bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_count: Option<i64>,
    /// Once `completed`: the bundle's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Once `completed`: hex SHA-256 of the bundle's `manifest.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
    /// Once `completed`: hex SHA-256 of the whole bundle (what `sha256sum` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle_sha256: Option<String>,
    /// Once `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download_url: Option<String>,
    /// Once `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<ExportFailure>,
    /// The classifications the requester reads in clear, disclosed in the bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readable: Option<Vec<String>>,
    /// `subject-access` for a data-subject access export.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookDelivery>,
}

/// The tenant's recent exports, newest first.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
pub struct ExportList {
    pub items: Vec<ExportView>,
}

/// The tenant's export webhook, just set: the secret is shown this once.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct WebhookSet {
    url: String,
    /// Base64 of the 32-byte HMAC key.
    secret: String,
    /// How deliveries are signed.
    signature: &'static str,
}

/// Whether the tenant has an export webhook, and where.
#[derive(Debug, serde::Serialize, ToSchema)]
pub struct WebhookState {
    configured: bool,
    url: Option<String>,
}

/// A bundle verified against the deployment's published signing keys.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportVerification {
    /// Every check passed.
    verified: bool,
    #[schema(value_type = Option<crate::openapi::BundleFailureSchema>)]
    first_failure: Option<bundle_verify::Failure>,
    /// Every check `atp verify` makes, as it reports them.
    #[schema(value_type = crate::openapi::BundleReportSchema)]
    report: bundle_verify::Report,
}

type JsonBody<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

#[utoipa::path(post, operation_id = "create_export", path = "/exports", tag = "exports", request_body = ExportBody,
    responses((status = 202, description = "Queued",
        headers(("Location" = String, description = "The export's status URL")),
        body = ExportQueued, content_type = "application/json")))]
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
        Json(ExportQueued {
            export_id: req.export_id.clone(),
            status: ExportStatus::Queued,
            download_url: format!("{location}/download"),
            status_url: location.clone(),
        }),
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

fn export_view(row: &ExportRow) -> ExportView {
    let completed = row.status == ExportStatus::Completed;
    ExportView {
        export_id: row.export_id.clone(),
        tenant_id: row.tenant_id.clone(),
        status: row.status,
        format: row.format.clone(),
        selection: row.selection.clone(),
        requested_by: row.requested_by.clone(),
        requested_at: atp_core::record::timestamp(row.requested_at),
        attempts: row.attempts,
        started_at: row.started_at.map(atp_core::record::timestamp),
        progress: matches!(row.status, ExportStatus::Running | ExportStatus::Queued).then(|| {
            ExportProgress {
                records_done: row.records_done,
                records_total: row.records_total,
            }
        }),
        finished_at: row.finished_at.map(atp_core::record::timestamp),
        record_count: row.record_count.filter(|_| completed),
        bytes: row.bytes.filter(|_| completed),
        manifest_sha256: row.manifest_sha256.clone().filter(|_| completed),
        bundle_sha256: row.bundle_sha256.clone().filter(|_| completed),
        download_url: completed.then(|| format!("/api/v1/exports/{}/download", row.export_id)),
        failure: (row.status == ExportStatus::Failed).then(|| ExportFailure {
            code: row.failure_code.clone(),
            detail: row.failure_detail.clone(),
        }),
        readable: row.readable.clone(),
        kind: row
            .subject_keys
            .as_ref()
            .map(|_| "subject-access".to_owned()),
        webhook: row.webhook_status.as_ref().map(|s| WebhookDelivery {
            status: s.clone(),
            attempts: row.webhook_attempts,
            last_error: row.webhook_error.clone(),
            last_attempt_at: row.webhook_at.map(atp_core::record::timestamp),
            next_attempt_at: row
                .webhook_next_at
                .filter(|_| s == "pending")
                .map(atp_core::record::timestamp),
        }),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// How many exports, newest first, 1 to 100 (default 20).
    limit: Option<i64>,
}

/// `GET /exports`: the tenant's 20 (up to 100) most recent exports, newest first.
#[utoipa::path(get, operation_id = "list_exports", path = "/exports", tag = "exports", params(ListParams),
    responses((status = 200, description = "The tenant's recent exports", body = ExportList, content_type = "application/json")))]
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
    Ok(Json(ExportList {
        items: rows.iter().map(export_view).collect(),
    })
    .into_response())
}

#[utoipa::path(get, operation_id = "get_export", path = "/exports/{export_id}", tag = "exports", params(("export_id" = String, Path, description = "The export's id (`exportId`)")),
    responses((status = 200, description = "The export's status", body = ExportView, content_type = "application/json")))]
pub async fn status(
    principal: Principal,
    State(state): State<GatewayState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let row = load(&state, &principal, &id).await?;
    Ok(Json(export_view(&row)).into_response())
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

#[utoipa::path(get, operation_id = "download_export", path = "/exports/{export_id}/download", tag = "exports",
    params(("export_id" = String, Path, description = "The export's id (`exportId`)"), ("Range" = Option<String>, Header, description = "One byte range, `bytes=<first>-[<last>]`, to resume a download")),
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
    responses((status = 200, description = "Set; the secret is shown this once (enterprise edition)", body = WebhookSet, content_type = "application/json")))]
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
    Ok(Json(WebhookSet {
        url: hook.url,
        secret: hook.secret,
        signature: "ATP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(base64-decoded secret, \"<t>.\" + body)>",
    })
    .into_response())
}

#[utoipa::path(get, path = "/exports/webhook", tag = "exports",
    responses((status = 200, description = "Whether a webhook is set, and its URL", body = WebhookState, content_type = "application/json")))]
pub async fn get_webhook(
    principal: Principal,
    State(state): State<GatewayState>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    let hook = bus_exports::webhook_of(&state.exports.webhooks, &principal.tenant)
        .await
        .map_err(|e| Problem::unavailable("the webhook registry", e))?;
    Ok(Json(WebhookState {
        configured: hook.is_some(),
        url: hook.map(|h| h.url),
    })
    .into_response())
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
#[utoipa::path(post, operation_id = "verify_export", path = "/integrity/verify/export", tag = "integrity",
    request_body(content = VerifyExportBody, content_type = "application/json",
        description = "A stored export by id (an uploaded bundle may be sent as application/x-tar)"),
    responses((status = 200, description = "The verification report", body = ExportVerification, content_type = "application/json")))]
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
    Ok(Json(ExportVerification {
        verified: report.ok,
        first_failure: report.first().cloned(),
        report,
    })
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
