//! `GET /audit/records`, `/audit/records/{id}`, `/audit/rejections`, `/producers/keys`.

use std::sync::Arc;
use std::time::Instant;

use atp_core::Digest;
use atp_nats::{registry, streams};
use atp_store::projection::{self, Watermark};
use atp_store::query::{self, RecordFilter, RejectionFilter, Selection, StoredRecord};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::Bus;
use crate::auth::{Permission, Principal};
use crate::problem::{Problem, ProblemCode};
use crate::redact::{self, Clearance};

/// Who reads records; what each sees in clear is the tenant policy's `readers`.
pub(crate) const READERS: [Permission; 3] =
    [Permission::Auditor, Permission::Admin, Permission::Privacy];

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RecordsParams {
    /// Records whose event time (`occurredAt`) is at or after this (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Records whose event time is before this (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Records of this source only.
    source_id: Option<String>,
    /// Exact match on `data.actor.id`.
    actor_id: Option<String>,
    /// Exact match on `data.action`.
    action: Option<String>,
    /// Exact match on `data.resource.type`.
    resource_type: Option<String>,
    /// Exact match on `data.resource.id`.
    resource_id: Option<String>,
    /// Free text: a case-insensitive substring of the values of `data.attributes` (not the
    /// actor, action or resource: filter those exactly). Values the caller may not read in
    /// clear are not searched.
    q: Option<String>,
    /// Records per page, 1 to 1000 (default 100).
    limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

/// A record, served only after its stored bytes were checked against its digest: altered
/// data is never served.
// The record itself is passed through as the stored bytes (`RawValue`), never parsed into a
// tree and printed again: that round trip was most of what a page of records cost the gateway.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Record)]
pub struct RecordView {
    /// The record's id (a ULID): what `/audit/records/{recordId}` and its proof take.
    pub record_id: String,
    pub tenant_id: String,
    pub source_id: String,
    /// Its place in the source's hash chain, from 0.
    pub chain_index: i64,
    /// `sha256:<hex>` of the record's canonical bytes (CONTRACT §3).
    pub digest: String,
    /// `sha256:<hex>`: SHA-256(prevHash ‖ digest).
    pub chain_hash: String,
    /// The event's `time` (RFC 3339, UTC).
    pub occurred_at: String,
    /// When ingest committed the record (RFC 3339, UTC).
    pub committed_at: String,
    /// The record as stored (CONTRACT §3), byte for byte, unless `redacted`.
    #[schema(value_type = Object)]
    pub record: Box<RawValue>,
    /// The record holds values stored in clear that the caller may not read: `record` shows
    /// them redacted, and so no longer hashes to `digest`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub redacted: bool,
    /// The event's `data` as the caller may see it (CONTRACT §8): each value in clear,
    /// `{"redacted": "<classification>"}` or `{"erased": true}`.
    #[schema(value_type = Object)]
    pub data: Value,
}

/// A page of records, newest first.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordPage {
    pub items: Vec<RecordView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// A refused submission: why, and the bytes as received (redacted as for any reader).
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Rejection)]
pub struct RejectionView {
    pub source_id: String,
    /// The reason code (CONTRACT §6), e.g. `SIGNATURE_INVALID`.
    pub reason: String,
    pub detail: String,
    /// The event's `id`, when it could be read.
    pub event_id: Option<String>,
    /// The submission's sequence on the ingress stream.
    pub ingress_seq: i64,
    pub received_at: String,
    pub rejected_at: String,
    /// `json` when `event` is the submission as JSON, `base64` when it was not JSON.
    pub event_encoding: Option<String>,
    /// The submission as received: JSON with the values the caller may not read redacted,
    /// or a base64 string when it was not JSON.
    #[schema(value_type = Option<Value>)]
    pub event: Option<Value>,
}

/// A page of rejections, newest first.
#[derive(Debug, serde::Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RejectionPage {
    pub items: Vec<RejectionView>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// One of a source's producer keys.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ProducerKey)]
pub struct ProducerKeyView {
    source_id: String,
    /// The CloudEvents `source` the producer's events carry.
    source_uri: String,
    key_id: String,
    /// Always `Ed25519`.
    algorithm: String,
    /// The raw 32-byte public key, base64.
    public_key: String,
    created_at: String,
    revoked_at: Option<String>,
    revoked: bool,
}

/// The tenant's producer keys, every source's, revoked ones included.
#[derive(Debug, serde::Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProducerKeys {
    tenant_id: String,
    keys: Vec<ProducerKeyView>,
}

/// The record, after checking its bytes against their stored digest.
pub(crate) fn record_view(r: &StoredRecord, clearance: &Clearance) -> Result<RecordView, Problem> {
    let stored = r.digest;
    if Digest::of(&r.record) != stored {
        tracing::error!(tenant = %r.tenant_id, source = %r.source_id, chain_index = r.chain_index, "stored record does not match its digest");
        return Err(Problem::new(
            ProblemCode::IntegrityError,
            format!(
                "record {} does not match its digest; it is withheld",
                r.record_id
            ),
        )
        .tenant(&r.tenant_id));
    }
    let shown = redact::show(r, clearance).map_err(|e| {
        Problem::new(
            ProblemCode::IntegrityError,
            format!("record is not JSON: {e}"),
        )
    })?;
    let text = match &shown.record {
        Some(redacted) => serde_json::to_string(redacted)
            .map_err(|_| Problem::new(ProblemCode::IntegrityError, "record is not JSON"))?,
        None => String::from_utf8(r.record.clone())
            .map_err(|_| Problem::new(ProblemCode::IntegrityError, "record is not UTF-8"))?,
    };
    let raw = RawValue::from_string(text)
        .map_err(|_| Problem::new(ProblemCode::IntegrityError, "record is not JSON"))?;
    Ok(RecordView {
        record_id: r.record_id.clone(),
        tenant_id: r.tenant_id.clone(),
        source_id: r.source_id.clone(),
        chain_index: r.chain_index,
        digest: stored.to_string(),
        chain_hash: r.chain_hash.to_string(),
        occurred_at: atp_core::record::timestamp(r.occurred_at),
        committed_at: atp_core::record::timestamp(r.committed_at),
        record: raw,
        redacted: shown.record.is_some(),
        data: shown.data,
    })
}

/// `X-Watermark` and `X-Lag` from the records watermark and the ledger's last message.
/// How long the freshness headers are reused: every query would otherwise ask NATS and
/// PostgreSQL again for figures that move in milliseconds and are read in seconds.
const FRESHNESS_TTL: std::time::Duration = std::time::Duration::from_millis(250);

/// Response headers: (name, value).
type Headers = Vec<(&'static str, String)>;

/// The freshness headers last computed, and when, shared by the gateway's requests.
#[derive(Clone, Default)]
pub struct FreshnessCache(Arc<std::sync::Mutex<Option<(Instant, Headers)>>>);

async fn freshness(bus: &Bus, db: &PgPool) -> Vec<(&'static str, String)> {
    if let Ok(cached) = bus.freshness.0.lock()
        && let Some((at, headers)) = cached.as_ref()
        && at.elapsed() < FRESHNESS_TTL
    {
        return headers.clone();
    }
    let headers = measure_freshness(bus, db).await;
    if let Ok(mut cached) = bus.freshness.0.lock() {
        *cached = Some((Instant::now(), headers.clone()));
    }
    headers
}

async fn measure_freshness(bus: &Bus, db: &PgPool) -> Vec<(&'static str, String)> {
    let wm: Option<Watermark> = projection::watermark(db, projection::RECORDS)
        .await
        .ok()
        .flatten();
    let mut out = Vec::new();
    if let Some(at) = wm.and_then(|w| w.last_committed_at) {
        out.push(("x-watermark", atp_core::record::timestamp(at)));
    }
    // Fetching the stream handle already fetched its state.
    let ledger = bus.js.get_stream(streams::LEDGER).await.ok().map(|s| {
        let state = &s.cached_info().state;
        (state.last_sequence, state.last_timestamp)
    });
    if let Some((last_seq, last_ts)) = ledger {
        let projected = wm.map_or(0, |w| w.stream_seq);
        let lag = if projected >= last_seq {
            0.0
        } else {
            let last = crate_time(last_ts);
            let seen = wm
                .and_then(|w| w.last_committed_at)
                .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
            ((last - seen).num_milliseconds().max(0) as f64) / 1000.0
        };
        out.push(("x-lag", format!("{lag:.3}")));
    }
    out
}

/// How long the oldest message of `stream` not yet in `projection` may have waited: 0 when
/// caught up, else now minus the commit time of the newest projected message (which grows
/// while a projector is stalled). `None` when NATS or PostgreSQL cannot say.
pub(crate) async fn projection_lag(
    bus: &Bus,
    db: &PgPool,
    projection: &str,
    stream: &str,
) -> Option<f64> {
    let wm = projection::watermark(db, projection).await.ok()?;
    let last_seq = bus
        .js
        .get_stream(stream)
        .await
        .ok()?
        .info()
        .await
        .ok()?
        .state
        .last_sequence;
    let projected = wm.map_or(0, |w| w.stream_seq);
    if projected >= last_seq {
        return Some(0.0);
    }
    let seen = wm
        .and_then(|w| w.last_committed_at)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    Some(((Utc::now() - seen).num_milliseconds().max(0) as f64) / 1000.0)
}

fn crate_time(t: time::OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(i64::try_from(t.unix_timestamp_nanos()).unwrap_or(i64::MAX))
}

fn with_headers(mut resp: Response, headers: Vec<(&'static str, String)>) -> Response {
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

#[utoipa::path(get, path = "/audit/records", tag = "audit", params(RecordsParams),
    responses((status = 200, description = "A page of records, newest first",
        headers(("X-Watermark" = String, description = "The commit time of the newest record the read model holds"),
            ("X-Lag" = String, description = "Seconds the read model is behind the ledger")),
        body = RecordPage, content_type = "application/json")))]
pub async fn list_records(
    principal: Principal,
    State(bus): State<Bus>,
    State(db): State<PgPool>,
    params: Result<Query<RecordsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let Query(p) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    if p.limit
        .is_some_and(|l| !(1..=query::MAX_LIMIT).contains(&l))
    {
        return Err(Problem::new(
            ProblemCode::InvalidQuery,
            format!("limit must be 1..={}", query::MAX_LIMIT),
        )
        .tenant(&tenant));
    }
    let clearance = Clearance::of(&bus, &principal).await?;
    let filter = RecordFilter {
        readable: clearance.indices(),
        selection: Selection {
            from: p.from,
            to: p.to,
            source_id: p.source_id,
            actor_id: p.actor_id,
            action: p.action,
            resource_type: p.resource_type,
            resource_id: p.resource_id,
            q: p.q,
        },
        limit: p.limit,
        cursor: p.cursor,
    };
    let headers = freshness(&bus, &db).await;
    let page = query::records(&db, &tenant, &filter)
        .await
        .map_err(Problem::from)?;
    let items = page
        .items
        .iter()
        .map(|r| record_view(r, &clearance))
        .collect::<Result<Vec<_>, _>>()?;
    let resp = Json(RecordPage {
        items,
        next_cursor: page.next_cursor,
    })
    .into_response();
    Ok(with_headers(resp, headers))
}

#[utoipa::path(get, path = "/audit/records/{record_id}", tag = "audit",
    params(("record_id" = String, Path, description = "The record's id (`recordId`)")),
    responses((status = 200, description = "One record", body = RecordView, content_type = "application/json")))]
pub async fn get_record(
    principal: Principal,
    State(bus): State<Bus>,
    State(db): State<PgPool>,
    Path(record_id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let r = query::record(&db, &tenant, &record_id)
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found(format!("no record {record_id:?}")).tenant(&tenant))?;
    let clearance = Clearance::of(&bus, &principal).await?;
    Ok(Json(record_view(&r, &clearance)?).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RejectionsParams {
    /// Rejections of this source only.
    source_id: Option<String>,
    /// Rejections with this reason code only (e.g. `SIGNATURE_INVALID`).
    reason: Option<String>,
    /// Rejected at or after this (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Rejected before this (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Rejections per page, 1 to 1000 (default 100).
    limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    cursor: Option<String>,
}

#[utoipa::path(get, path = "/audit/rejections", tag = "audit", params(RejectionsParams),
    responses((status = 200, description = "A page of refused submissions with their reason, newest first: `{items, nextCursor}`; at most `limit` items and about 4 MiB of them, so a page may hold fewer than `limit` and still have a `nextCursor`", body = RejectionPage, content_type = "application/json")))]
pub async fn list_rejections(
    principal: Principal,
    State(bus): State<Bus>,
    State(db): State<PgPool>,
    params: Result<Query<RejectionsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    principal.require(&[
        Permission::Producer,
        Permission::Auditor,
        Permission::Admin,
        Permission::Privacy,
    ])?;
    let tenant = principal.tenant.to_string();
    let Query(p) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let filter = RejectionFilter {
        source_id: p.source_id,
        reason: p.reason,
        from: p.from,
        to: p.to,
        limit: p.limit,
        cursor: p.cursor,
    };
    let (clearance, policy) = Clearance::with_policy(&bus, &principal).await?;
    // Bounded in rows and in bytes (`query::REJECTION_PAGE_BYTES`): a page of envelopes is
    // read whole into memory here.
    let page = query::rejections(&db, &tenant, &filter)
        .await
        .map_err(Problem::from)?;
    let items = page
        .items
        .iter()
        .map(|r| {
            let envelope: Value = serde_json::from_slice(&r.envelope).unwrap_or(Value::Null);
            RejectionView {
                source_id: r.source_id.clone(),
                reason: r.reason.clone(),
                detail: r.detail.clone(),
                event_id: r.event_id.clone(),
                ingress_seq: r.ingress_seq,
                received_at: atp_core::record::timestamp(r.received_at),
                rejected_at: atp_core::record::timestamp(r.rejected_at),
                event_encoding: envelope
                    .get("eventEncoding")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                event: redact::submission(
                    envelope.get("event"),
                    envelope.get("eventEncoding"),
                    &r.source_id,
                    &policy,
                    &clearance,
                ),
            }
        })
        .collect();
    Ok(Json(RejectionPage {
        items,
        next_cursor: page.next_cursor,
    })
    .into_response())
}

#[utoipa::path(get, path = "/producers/keys", tag = "audit",
    responses((status = 200, description = "The tenant's producer keys", body = ProducerKeys, content_type = "application/json")))]
pub async fn producer_keys(
    principal: Principal,
    State(bus): State<Bus>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Producer, Permission::Auditor, Permission::Admin])?;
    let regs = registry::list_tenant(&bus.producers, &principal.tenant)
        .await
        .map_err(|e| Problem::unavailable("the producer registry", e))?;
    let mut keys = Vec::new();
    for r in regs {
        for k in &r.keys {
            keys.push(ProducerKeyView {
                source_id: r.source_id.to_string(),
                source_uri: r.source_uri.clone(),
                key_id: k.key_id.clone(),
                algorithm: "Ed25519".to_owned(),
                public_key: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    k.public_key,
                ),
                created_at: atp_core::record::timestamp(k.created_at),
                revoked_at: k.revoked_at.map(atp_core::record::timestamp),
                revoked: k.revoked_at.is_some(),
            });
        }
    }
    Ok(Json(ProducerKeys {
        tenant_id: principal.tenant.to_string(),
        keys,
    })
    .into_response())
}
