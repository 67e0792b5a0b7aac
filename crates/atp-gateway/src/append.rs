//! `POST /audit/append` and `/audit/append:batch`.
//!
//! The gateway runs the same admission as the ingest worker to answer bad input at once
//! (Problem+JSON with the reason code), then forwards the event to `atp.ingress.<tenant>.<source>`
//! with its attestation. The ingest worker stays the authority: it checks everything again.

use std::time::Duration;

use atp_core::canonical::parse_submission;
use atp_core::event::{Channel, Submission, admit};
use atp_core::registry::SourceRegistration;
use atp_core::trace::TraceParent;
use atp_core::{PartitionKey, Rejection, SourceId, attestation};
use atp_nats::headers::IngressHeaders;
use atp_nats::{headers, subjects};
use atp_telemetry::telemetry;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap as HttpHeaders, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::auth::{Permission, Principal};
use crate::problem::{Problem, ProblemCode};
use crate::{Bus, Waiters};

/// Most events in one `append:batch` (CONTRACT §5).
pub const MAX_BATCH_ITEMS: usize = 1000;
/// Longest `Prefer: wait` honoured.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The short form of an event: the audit fields (CONTRACT §2's `data`) plus where and when.
/// The gateway makes the CloudEvent of it (`specversion` 1.0, the source's URI, `type`
/// `dev.atp.audit` unless given, `time` now unless given), unsigned and so attributed to the
/// caller. The audit fields are kept as JSON here and checked by admission, so that a bad one
/// is answered exactly as in a CloudEvent.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schema(as = ShortFormEvent)]
pub(crate) struct Simplified {
    /// The source, as registered for the caller's tenant.
    source_id: String,
    /// The event's id, unique per source. Optional when `X-Idempotency-Key` is sent: the key
    /// is then the event's id.
    #[serde(default)]
    id: Option<String>,
    /// RFC 3339; default: now.
    #[serde(default)]
    time: Option<String>,
    /// The CloudEvents `type`; default `dev.atp.audit`.
    #[serde(default, rename = "type")]
    ty: Option<String>,
    #[schema(value_type = crate::openapi::ActorSchema)]
    actor: Value,
    /// What was done: `CREATE`, `UPDATE`, `DELETE`, `READ`, `LOGIN`, ...
    #[schema(value_type = String)]
    action: Value,
    #[schema(value_type = crate::openapi::ResourceSchema)]
    resource: Value,
    #[serde(default)]
    #[schema(value_type = Option<crate::openapi::OutcomeSchema>)]
    outcome: Option<Value>,
    /// Flat JSON: string, number, boolean or null values only.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    attributes: Option<Value>,
}

/// A submission ATP has taken: on the ingress stream, not yet a record.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Accepted {
    /// `<tenant>:<source>:<id>`: what makes a repeat the same event.
    idempotency_key: String,
    /// Always `accepted-for-processing`.
    status: &'static str,
    /// Its sequence on the ingress stream.
    ingress_seq: u64,
}

/// The record an event became.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Appended {
    record_id: String,
    chain_index: i64,
    /// `sha256:<hex>` of the record's canonical bytes.
    digest: String,
    /// With a repeat (200): `<tenant>:<source>:<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    /// With a repeat (200): `true`, the event was recorded before.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotent: Option<bool>,
}

impl Appended {
    fn of(r: &atp_store::query::StoredRecord) -> Self {
        Self {
            record_id: r.record_id.clone(),
            chain_index: r.chain_index,
            digest: r.digest.to_string(),
            idempotency_key: None,
            idempotent: None,
        }
    }
}

/// What became of one event of a batch.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchItem {
    /// Its place in the batch, from 0.
    index: usize,
    /// 202 when taken, else the status its own request would have been answered with.
    status: u16,
    /// When taken: `<tenant>:<source>:<id>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    /// When taken: its sequence on the ingress stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress_seq: Option<u64>,
    /// When refused: the problem code.
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<crate::problem::ProblemCode>,
    /// When refused: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

/// One result per event of a batch, in order.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BatchResults {
    results: Vec<BatchItem>,
}

/// An event ready to publish.
pub(crate) struct Prepared {
    pub(crate) partition: PartitionKey,
    body: Vec<u8>,
    event_id: String,
    /// What makes a repeat of this id the same event (ADR 0013).
    fingerprint: atp_core::Digest,
}

/// Longest `X-Idempotency-Key`: `<tenant>:<source>:<id>` is at most 63 + 1 + 63 + 1 + 128.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// The caller's `X-Idempotency-Key`, checked: printable ASCII, at most 256 bytes. It never
/// reaches JetStream: ATP's idempotency key is always `(tenant, source, id)` (ADR 0013).
fn caller_key(h: &HttpHeaders, tenant: &str) -> Result<Option<String>, Problem> {
    let Some(v) = h.get("x-idempotency-key") else {
        return Ok(None);
    };
    let ok = |s: &&str| {
        !s.is_empty()
            && s.len() <= MAX_IDEMPOTENCY_KEY
            && s.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    };
    v.to_str()
        .ok()
        .filter(ok)
        .map(|s| Some(s.to_owned()))
        .ok_or_else(|| {
            Problem::new(ProblemCode::Malformed,
                format!("X-Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters"),
            )
            .tenant(tenant)
        })
}

/// A caller's key may only name the event it comes with: its id, or its full idempotency key
/// `<tenant>:<source>:<id>`. Anything else would let one request's key stand for another event.
fn key_matches(key: Option<&str>, p: &Prepared, tenant: &str) -> Result<(), Problem> {
    match key {
        None => Ok(()),
        Some(k) if k == p.event_id || k == format!("{}:{}", p.partition, p.event_id) => Ok(()),
        Some(k) => Err(Problem::new(
            ProblemCode::IdempotencyKeyMismatch,
            format!(
                "X-Idempotency-Key {k:?} is neither the event's id {:?} nor its key {:?}; \
                 ATP deduplicates by (tenant, source, id)",
                p.event_id,
                format!("{}:{}", p.partition, p.event_id)
            ),
        )
        .tenant(tenant)),
    }
}

fn content_type_ok(h: &HttpHeaders, batch: bool) -> Result<(), Problem> {
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    let ok = if batch {
        matches!(
            base,
            "application/json" | "application/cloudevents-batch+json"
        )
    } else {
        matches!(base, "application/json" | "application/cloudevents+json")
    };
    if ok {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemCode::UnsupportedMediaType,
            format!("content-type {ct:?} is not accepted here"),
        ))
    }
}

pub(crate) async fn prepare(
    p: &Principal,
    bus: &Bus,
    event: Value,
    caller_key: Option<&str>,
) -> Result<Prepared, Problem> {
    let tenant = p.tenant.as_str();
    let Value::Object(obj) = event else {
        return Err(
            Problem::new(ProblemCode::Malformed, "an event must be a JSON object").tenant(tenant),
        );
    };
    let unknown = |what: String| Problem::new(ProblemCode::UnknownSource, what).tenant(tenant);
    let (registration, body): (std::sync::Arc<SourceRegistration>, Vec<u8>) =
        if obj.contains_key("specversion") {
            let uri = obj
                .get("source")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let reg = bus
                .registry
                .find_by_uri(&p.tenant, &uri)
                .await
                .map_err(|e| Problem::unavailable("the producer registry", e))?
                .ok_or_else(|| {
                    unknown(format!(
                        "no source of tenant {tenant:?} is registered with source URI {uri:?}"
                    ))
                })?;
            let body = serde_json::to_vec(&Value::Object(obj))
                .map_err(|e| Problem::new(ProblemCode::Malformed, e.to_string()))?;
            (reg, body)
        } else {
            let s: Simplified = serde_json::from_value(Value::Object(obj)).map_err(|e| {
                Problem::new(ProblemCode::SchemaValidationFailed, e.to_string()).tenant(tenant)
            })?;
            let source = SourceId::new(&s.source_id).map_err(|e| {
                Problem::new(ProblemCode::SchemaValidationFailed, e.to_string()).tenant(tenant)
            })?;
            let key = PartitionKey::new(p.tenant.clone(), source);
            let reg = bus
                .registry
                .lookup(&key)
                .await
                .map_err(|e| Problem::unavailable("the producer registry", e))?
                .ok_or_else(|| {
                    unknown(format!(
                        "source {:?} is not registered for tenant {tenant:?}",
                        s.source_id
                    ))
                })?;
            let id =
                s.id.or_else(|| caller_key.map(str::to_owned))
                    .ok_or_else(|| {
                        Problem::new(
                            ProblemCode::SchemaValidationFailed,
                            "missing field `id` (or send X-Idempotency-Key, which then is the id)",
                        )
                        .tenant(tenant)
                    })?;
            let mut data = Map::new();
            data.insert("actor".into(), s.actor);
            data.insert("action".into(), s.action);
            data.insert("resource".into(), s.resource);
            if let Some(o) = s.outcome {
                data.insert("outcome".into(), o);
            }
            if let Some(a) = s.attributes {
                data.insert("attributes".into(), a);
            }
            let time = s
                .time
                .unwrap_or_else(|| atp_core::record::timestamp(chrono::Utc::now()));
            let ce = json!({
                "specversion": "1.0",
                "id": id,
                "source": reg.source_uri,
                "type": s.ty.unwrap_or_else(|| "dev.atp.audit".to_owned()),
                "time": time,
                "datacontenttype": "application/json",
                "data": data,
            });
            let body = serde_json::to_vec(&ce)
                .map_err(|e| Problem::new(ProblemCode::Malformed, e.to_string()))?;
            (reg, body)
        };
    let partition = PartitionKey::new(
        registration.tenant_id.clone(),
        registration.source_id.clone(),
    );
    let sub = Submission {
        body: &body,
        content_type: Some("application/cloudevents+json"),
        ce_headers: vec![],
        repeated: vec![],
        unmappable: None,
        channel: Channel::Gateway {
            subject: p.subject.clone(),
        },
    };
    let admitted = admit(&partition, &sub, Some(&registration))
        .map_err(|r: Rejection| Problem::from_rejection(&r).tenant(tenant))?;
    Ok(Prepared {
        partition,
        event_id: admitted.id,
        fingerprint: admitted.fingerprint,
        body,
    })
}

/// ATP's idempotency key of an event: `<tenant>:<source>:<id>` (CONTRACT §2).
fn idempotency_key(p: &Prepared) -> String {
    format!("{}:{}", p.partition, p.event_id)
}

/// How a repeat is answered: the record it repeats, marked `idempotent` (200), or 409 when the
/// id was recorded with other content.
fn repeat_of(
    r: &atp_store::query::StoredRecord,
    p: &Prepared,
    tenant: &str,
) -> Result<Response, Problem> {
    if atp_core::event::record_fingerprint(&r.record).is_some_and(|f| f != p.fingerprint) {
        let conflict =
            atp_core::event::idempotency_conflict(&p.event_id, r.chain_index, &r.record_id);
        return Err(Problem::from_rejection(&conflict).tenant(tenant));
    }
    let repeat = Appended {
        idempotency_key: Some(idempotency_key(p)),
        idempotent: Some(true),
        ..Appended::of(r)
    };
    Ok((StatusCode::OK, Json(repeat)).into_response())
}

/// The trace a submission joins, so every record can be followed from here to the read model:
/// the request's server span when traces are on, else the caller's valid `traceparent` (and
/// `tracestate`), else a new one.
fn trace_context(h: &HttpHeaders) -> (String, Option<String>) {
    let parent = telemetry::traceparent_of(&tracing::Span::current()).or_else(|| {
        h.get(headers::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
    });
    match parent {
        Some(t) => {
            let state = h
                .get(headers::TRACESTATE)
                .and_then(|v| v.to_str().ok())
                .filter(|v| v.len() <= 512)
                .map(str::to_owned);
            (t.header(), state)
        }
        None => {
            let mut random = [0u8; 24];
            rand::fill(&mut random);
            (TraceParent::start(random).header(), None)
        }
    }
}

/// Publishes to ingress; resolves to the ingress stream sequence once JetStream has it.
///
/// No `Nats-Msg-Id`: JetStream's duplicate window spans the whole ingress stream, so a message
/// id is a key any tenant could take first. Repeats are ingest's to recognise, per partition
/// (ADR 0013).
async fn publish(
    bus: &Bus,
    principal: &Principal,
    p: &Prepared,
    trace: &(String, Option<String>),
) -> Result<async_nats::jetstream::context::PublishAckFuture, Problem> {
    let subject = subjects::ingress(&p.partition);
    let sig = attestation::sign(&bus.attestation_key, &subject, &principal.subject, &p.body);
    let mut h = IngressHeaders::structured();
    h.attested(&principal.subject, &sig)
        .and_then(|h| h.traceparent(&trace.0))
        .map_err(|e| Problem::new(ProblemCode::Malformed, e.to_string()))?;
    if let Some(state) = &trace.1
        && h.tracestate(state).is_err()
    {
        tracing::debug!("tracestate not forwarded: not a printable header value");
    }
    bus.js
        .publish_with_headers(subject, h.into_map(), Bytes::from(p.body.clone()))
        .await
        .map_err(|e| Problem::unavailable("the event bus", e))
}

fn prefer_wait(h: &HttpHeaders) -> Option<Duration> {
    let v = h.get("prefer")?.to_str().ok()?;
    let secs = v.split([',', ';']).find_map(|part| {
        part.trim()
            .strip_prefix("wait=")?
            .trim()
            .parse::<u64>()
            .ok()
    })?;
    Some(Duration::from_secs(secs).min(MAX_WAIT))
}

fn created(r: &atp_store::query::StoredRecord) -> Response {
    (StatusCode::CREATED, Json(Appended::of(r))).into_response()
}

#[utoipa::path(post, path = "/audit/append", tag = "audit",
    request_body(content = crate::openapi::AppendBody, content_type = "application/json",
        description = "A signed CloudEvent (structured mode, also as application/cloudevents+json) or the short form"),
    params(("Prefer" = Option<String>, Header, description = "`wait=<seconds>` (at most 30): answer once the record is queryable"),
        ("X-Idempotency-Key" = Option<String>, Header, description = "The event's `id` or its key `<tenant>:<source>:<id>`; in the short form it may stand in for a missing `id`")),
    responses(
        (status = 200, description = "A repeat of a recorded event: its record, with `idempotent: true`", body = Appended, content_type = "application/json"),
        (status = 201, description = "The record (with `Prefer: wait`)", body = Appended, content_type = "application/json"),
        (status = 202, description = "Accepted: on the ingress stream (a 409 `IDEMPOTENCY_CONFLICT` problem when the id was recorded with other content)", body = Accepted, content_type = "application/json"),
    ))]
pub async fn append_one(
    principal: Principal,
    State(bus): State<Bus>,
    State(db): State<PgPool>,
    State(waiters): State<Waiters>,
    headers: HttpHeaders,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Producer, Permission::Admin])?;
    content_type_ok(&headers, false)?;
    let tenant = principal.tenant.to_string();
    let value = parse_submission(&body)
        .map_err(|e| Problem::new(ProblemCode::Malformed, e.to_string()).tenant(&tenant))?;
    let key = caller_key(&headers, &tenant)?;
    let prepared = prepare(&principal, &bus, value, key.as_deref()).await?;
    key_matches(key.as_deref(), &prepared, &tenant)?;
    append_prepared(&principal, &bus, &db, &waiters, &headers, prepared).await
}

/// Appends an event that passed the gateway's admission: answers a repeat with its record,
/// publishes anything else with the gateway's attestation for `principal`, and with
/// `Prefer: wait` waits for its record (or rejection).
pub(crate) async fn append_prepared(
    principal: &Principal,
    bus: &Bus,
    db: &PgPool,
    waiters: &Waiters,
    headers: &HttpHeaders,
    prepared: Prepared,
) -> Result<Response, Problem> {
    let tenant = principal.tenant.to_string();
    let idem = idempotency_key(&prepared);
    let wait = prefer_wait(headers);
    let source = prepared.partition.source.to_string();
    // A repeat answers the record it repeats (or 409 for other content under its id), without a
    // second submission. One index probe; a repeat not yet projected is ingest's to recognise.
    if let Some(r) = atp_store::query::record_by_event(db, &tenant, &source, &prepared.event_id)
        .await
        .map_err(Problem::from)?
    {
        return repeat_of(&r, &prepared, &tenant);
    }
    let ack = publish(bus, principal, &prepared, &trace_context(headers))
        .await?
        .await
        .map_err(|e| Problem::unavailable("the event bus", e))?;
    if let Some(within) = wait {
        let event_id = prepared.event_id.clone();
        let outcome = waiters
            .until(within, || {
                let (db, tenant, source, event_id) =
                    (db.clone(), tenant.clone(), source.clone(), event_id.clone());
                async move {
                    if let Some(r) =
                        atp_store::query::record_by_event(&db, &tenant, &source, &event_id).await?
                    {
                        return Ok::<_, atp_store::StoreError>(Some(Ok(r)));
                    }
                    Ok(
                        atp_store::query::rejection_by_ingress(&db, &tenant, ack.sequence)
                            .await?
                            .map(Err),
                    )
                }
            })
            .await
            .map_err(Problem::from)?;
        match outcome {
            Some(Ok(r)) => return Ok(created(&r)),
            Some(Err(rej)) => {
                match atp_core::Reason::ALL
                    .into_iter()
                    .find(|r| r.code() == rej.reason)
                {
                    Some(reason) => {
                        return Err(Problem::from_rejection(&Rejection::new(reason, rej.detail))
                            .tenant(&tenant));
                    }
                    // A reason this gateway does not know (a newer ingest wrote it) has no code
                    // to answer with: the submission is answered as accepted, as when the wait
                    // runs out, and its rejection is on `GET /audit/rejections`.
                    None => {
                        tracing::warn!(reason = %rej.reason, "a rejection reason this gateway does not know");
                    }
                }
            }
            None => {}
        }
    }
    let accepted = Accepted {
        idempotency_key: idem,
        status: "accepted-for-processing",
        ingress_seq: ack.sequence,
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

#[utoipa::path(post, path = "/audit/append:batch", tag = "audit",
    request_body(content = Vec<crate::openapi::AppendBody>, content_type = "application/json",
        description = "Up to 1000 events, each a signed CloudEvent or the short form (also as application/cloudevents-batch+json)"),
    responses(
        (status = 202, description = "Every event accepted", body = BatchResults, content_type = "application/json"),
        (status = 207, description = "One result per event, some refused", body = BatchResults, content_type = "application/json"),
    ))]
pub async fn append_batch(
    principal: Principal,
    State(bus): State<Bus>,
    headers: HttpHeaders,
    body: Bytes,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Producer, Permission::Admin])?;
    content_type_ok(&headers, true)?;
    let tenant = principal.tenant.to_string();
    let Value::Array(items) = parse_submission(&body)
        .map_err(|e| Problem::new(ProblemCode::Malformed, e.to_string()).tenant(&tenant))?
    else {
        return Err(
            Problem::new(ProblemCode::Malformed, "a batch is a JSON array of events")
                .tenant(&tenant),
        );
    };
    if items.len() > MAX_BATCH_ITEMS {
        return Err(Problem::new(
            ProblemCode::TooLarge,
            format!(
                "{} events; a batch holds at most {MAX_BATCH_ITEMS}",
                items.len()
            ),
        )
        .tenant(&tenant));
    }
    let mut results: Vec<BatchItem> = Vec::with_capacity(items.len());
    let mut pending = Vec::new();
    // One request, one trace: every item of the batch joins it.
    let trace = trace_context(&headers);
    for (index, item) in items.into_iter().enumerate() {
        match prepare(&principal, &bus, item, None).await {
            Err(p) => results.push(item_refused(index, &p)),
            Ok(prep) => {
                let idem = idempotency_key(&prep);
                let fut = publish(&bus, &principal, &prep, &trace).await?;
                results.push(BatchItem {
                    index,
                    status: StatusCode::ACCEPTED.as_u16(),
                    idempotency_key: Some(idem),
                    ingress_seq: None,
                    code: None,
                    detail: None,
                });
                pending.push((index, fut));
            }
        }
    }
    for (index, fut) in pending {
        match fut.await {
            Ok(ack) => {
                if let Some(item) = results.get_mut(index) {
                    item.ingress_seq = Some(ack.sequence);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "batch item not acknowledged by JetStream");
                if let Some(item) = results.get_mut(index) {
                    *item = item_refused(
                        index,
                        &Problem::new(ProblemCode::Unavailable, "not stored; retry this item"),
                    );
                }
            }
        }
    }
    let all_ok = results
        .iter()
        .all(|r| r.status == StatusCode::ACCEPTED.as_u16());
    let status = if all_ok {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, Json(BatchResults { results })).into_response())
}

/// A batch item's result when it was not taken: the status, code and detail its own request
/// would have been answered with.
fn item_refused(index: usize, p: &Problem) -> BatchItem {
    BatchItem {
        index,
        status: p.status().as_u16(),
        idempotency_key: None,
        ingress_seq: None,
        code: Some(p.code),
        detail: Some(p.detail.clone()),
    }
}
