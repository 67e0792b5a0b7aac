//! `POST /ingest/webhooks/{sourceId}?tenant=…`: events from systems that can only call
//! webhooks, authenticated per source by a Standard Webhooks signature
//! (`atp_core::webhook`) instead of a bearer token.
//!
//! The signature is the identity: it must verify with a webhook secret (`v1`) or producer key
//! (`v1a`) of the source the path names, in the tenant the query names, before anything else
//! is read. Then the request is an append like `POST /audit/append` for that source: the same
//! admission, rate limit (the tenant's append rate), repeat answers, `Prefer: wait` and
//! rejections; the record's `producer` says `webhook:hmac` or `webhook:ed25519` with the
//! secret or key id. The body is the short form (its `sourceId` may be left out) or a
//! CloudEvent of that source; an event without an id takes the `webhook-id`, so a sender's
//! retry of one delivery is answered as the record it already made.

use atp_core::canonical::parse_submission;
use atp_core::edition::Edition;
use atp_core::webhook::{self, Headers};
use atp_core::{PartitionKey, SourceId, TenantId};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap as HttpHeaders;
use axum::response::Response;
use bytes::Bytes;
use serde_json::Value;

use crate::GatewayState;
use crate::append::{append_prepared, prepare};
use crate::auth::{Permission, Principal};
use crate::limits::{Class, Verdict, limited};
use crate::problem::{Problem, ProblemCode};

/// The tenant the webhook's source belongs to (a source id is unique only within its tenant).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WebhookQuery {
    /// The tenant whose source the path names.
    tenant: String,
}

#[utoipa::path(post, operation_id = "ingest_webhook", path = "/ingest/webhooks/{source_id}", tag = "audit", security(()),
    request_body(content = crate::openapi::AppendBody, content_type = "application/json",
        description = "The short form `{id?, actor, action, resource, ...}` (its `sourceId`, if given, must be the path's) or a CloudEvent of the source; without an `id`, the `webhook-id` is the event's id"),
    params(
        ("source_id" = String, Path, description = "The source, registered with a webhook secret (`atp producer add --webhook-secret`) or producer keys"),
        WebhookQuery,
        ("webhook-id" = String, Header, description = "Standard Webhooks: the delivery's id, the same on every retry of it"),
        ("webhook-timestamp" = String, Header, description = "Standard Webhooks: seconds since the Unix epoch, within 5 minutes of ATP's clock"),
        ("webhook-signature" = String, Header, description = "Standard Webhooks: space-separated `v1,<base64 HMAC-SHA256>` or `v1a,<base64 Ed25519>` over `{webhook-id}.{webhook-timestamp}.{body}`"),
        ("Prefer" = Option<String>, Header, description = "`wait=<seconds>` (at most 30): answer once the record is queryable"),
    ),
    responses(
        (status = 200, description = "A repeat of a recorded event: its record, with `idempotent: true`", body = crate::append::Appended, content_type = "application/json"),
        (status = 201, description = "The record (with `Prefer: wait`)", body = crate::append::Appended, content_type = "application/json"),
        (status = 202, description = "Accepted: on the ingress stream", body = crate::append::Accepted, content_type = "application/json"),
    ))]
pub async fn ingest(
    State(state): State<GatewayState>,
    Path(source_id): Path<String>,
    query: Result<Query<WebhookQuery>, axum::extract::rejection::QueryRejection>,
    headers: HttpHeaders,
    body: Bytes,
) -> Result<Response, Problem> {
    let GatewayState {
        bus,
        db,
        waiters,
        limits,
        ..
    } = state;
    let refused = |detail: String| Problem::new(ProblemCode::WebhookUnauthenticated, detail);
    let Query(query) = query.map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()))?;
    let (Ok(tenant), Ok(source)) = (
        TenantId::new(query.tenant.as_str()),
        SourceId::new(source_id.as_str()),
    ) else {
        return Err(refused(
            "no source of that tenant verifies this webhook".to_owned(),
        ));
    };
    let partition = PartitionKey::new(tenant.clone(), source.clone());
    // Unknown tenants and sources are answered as a signature that does not verify: a stranger
    // learns nothing of which sources exist.
    let registration = bus
        .registry
        .lookup(&partition)
        .await
        .map_err(|e| Problem::unavailable("the producer registry", e))?
        .ok_or_else(|| refused(webhook::WebhookError::NoMatch.to_string()))?;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signer = webhook::verify(
        &registration,
        Headers {
            id: text(webhook::ID_HEADER),
            timestamp: text(webhook::TIMESTAMP_HEADER),
            signature: text(webhook::SIGNATURE_HEADER),
        },
        &body,
        chrono::Utc::now(),
    )
    .map_err(|e| refused(e.to_string()))?;
    let tenant_str = tenant.to_string();
    if let Verdict::Limited { limit, retry_after } = limits.check(&tenant_str, Class::Append) {
        atp_telemetry::metrics::metrics().rate_limited.add(
            1,
            &[atp_telemetry::metrics::label(
                "class",
                Class::Append.as_str(),
            )],
        );
        return Ok(limited(&tenant_str, Class::Append, limit, retry_after));
    }
    tracing::Span::current().record("tenant.id", tenant_str.as_str());

    let mut value = parse_submission(&body)
        .map_err(|e| Problem::new(ProblemCode::Malformed, e.to_string()).tenant(&tenant_str))?;
    if let Value::Object(obj) = &mut value
        && !obj.contains_key("specversion")
    {
        let named = obj
            .entry("sourceId")
            .or_insert_with(|| Value::String(source.to_string()));
        if named.as_str() != Some(source.as_str()) {
            return Err(Problem::new(
                ProblemCode::SourceMismatch,
                format!(
                    "the body's sourceId is not the path's {:?}",
                    source.as_str()
                ),
            )
            .tenant(&tenant_str));
        }
    }
    let principal = Principal {
        subject: webhook::gateway_subject(&signer),
        tenant: tenant.clone(),
        roles: vec![Permission::Producer],
        edition: Edition::default(),
    };
    let webhook_id = text(webhook::ID_HEADER).unwrap_or_default();
    atp_store::as_tenant(&tenant_str, async {
        let prepared = prepare(&principal, &bus, value, Some(webhook_id)).await?;
        if prepared.partition != partition {
            return Err(Problem::new(
                ProblemCode::SourceMismatch,
                format!(
                    "the event's source is not the webhook's ({:?})",
                    source.as_str()
                ),
            )
            .tenant(&tenant_str));
        }
        append_prepared(&principal, &bus, &db, &waiters, &headers, prepared).await
    })
    .await
}
