//! Data-subject requests and legal holds over HTTP (CONTRACT §8). The gateway queues an
//! access or erasure request and answers at once (202); the lifecycle role carries it out
//! (`atp_runtime::lifecycle`): an access request becomes an export of the subject's records
//! with the subject's values disclosed, an erasure destroys the subject's keys. Holds are rows
//! the lifecycle role consults before destroying anything.

use atp_core::producer::AdminAction;
use atp_nats::admin_trail;
use atp_store::privacy::{self as store, LegalHold, NewRequest};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use sqlx::PgPool;

use crate::Bus;
use crate::auth::{Permission, Principal};
use crate::problem::{Problem, ProblemCode};

/// Who may ask for access and erasure and see their progress.
const DPO: [Permission; 1] = [Permission::Privacy];
/// Who may place, list and release legal holds.
const HOLDERS: [Permission; 2] = [Permission::Privacy, Permission::Admin];
/// The longest subject id or hold reason accepted.
const MAX_TEXT: usize = 1024;

/// A data-subject request as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = PrivacyRequest)]
pub struct RequestView {
    pub request_id: String,
    /// `access` or `erasure`.
    pub kind: String,
    /// An erasure: `queued`, `keys_destroyed`, `scrubbed_once`, `scrubbed`, `done`; or
    /// `blocked` (a legal hold: see `detail`) or `failed`. An access request: `queued`,
    /// `exporting` (its export is known: `exportId`), `done` (the export completed) or
    /// `failed` (see `detail`).
    pub state: String,
    /// `sha256(subjectSalt ‖ subjectId)`, hex: how the attestation names the subject.
    pub subject_hash: String,
    pub subject_salt: String,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The subject keys the erasure destroys (recorded before the first is), or whose
    /// records and values the access request's export holds.
    pub key_ids: Vec<String>,
    /// How many of them are destroyed (all of them once past `queued`).
    pub keys_destroyed: usize,
    /// Records whose values were erased.
    pub records_affected: i64,
    /// The admin-trail event that attests the erasure, once done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation_event_id: Option<String>,
    /// Its record, once projected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attestation_record_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// An access request's export, once requested: follow it at `/exports/{exportId}`,
    /// download it at `/exports/{exportId}/download`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
}

fn subject_problem(tenant: &str, subject: &str) -> Result<(), Problem> {
    if subject.is_empty() || subject.len() > MAX_TEXT || subject.chars().any(char::is_control) {
        return Err(Problem::new(
            ProblemCode::InvalidRequest,
            format!("a subject id is 1 to {MAX_TEXT} bytes without control characters"),
        )
        .tenant(tenant));
    }
    Ok(())
}

/// Queues a request of `kind` about `subject_id` and answers its view (202, `Location`).
async fn queue(
    db: &PgPool,
    principal: &Principal,
    kind: &str,
    subject_id: &str,
) -> Result<Response, Problem> {
    let tenant = principal.tenant.to_string();
    let mut salt = [0u8; 16];
    rand::fill(&mut salt);
    let salt = hex::encode(salt);
    let hash = hex::encode(
        Sha256::new()
            .chain_update(salt.as_bytes())
            .chain_update(subject_id.as_bytes())
            .finalize(),
    );
    let request_id = ulid::Ulid::generate().to_string();
    let by = format!("privacy:{}", principal.subject);
    store::queue(
        db,
        &NewRequest {
            tenant_id: &tenant,
            request_id: &request_id,
            kind,
            subject_id,
            subject_hash: &hash,
            subject_salt: &salt,
            requested_by: &by,
        },
    )
    .await
    .map_err(|e| Problem::from(e).tenant(&tenant))?;
    tracing::info!(tenant = %tenant, request = %request_id, kind, by = %by, "data-subject request queued");
    let r = store::request(db, &tenant, &request_id)
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?
        .ok_or_else(|| Problem::not_found("the request just queued").tenant(&tenant))?;
    let mut resp = (StatusCode::ACCEPTED, Json(view(r, None))).into_response();
    if let Ok(v) = format!("/api/v1/privacy/requests/{request_id}").parse() {
        resp.headers_mut().insert(axum::http::header::LOCATION, v);
    }
    Ok(resp)
}

/// `POST /privacy/subjects/{subjectId}/access`.
#[utoipa::path(post, path = "/privacy/subjects/{subject_id}/access", tag = "privacy",
    params(("subject_id" = String, Path, description = "The data subject's id, as the policy's subject pointer finds it in events")),
    responses(
        (status = 202, description = "Queued; follow it at `/privacy/requests/{requestId}`, which names the export (`exportId`) of every record about the subject with the subject's values disclosed", body = RequestView, content_type = "application/json")))]
pub async fn request_access(
    principal: Principal,
    State(db): State<PgPool>,
    Path(subject_id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&DPO)?;
    subject_problem(principal.tenant.as_str(), &subject_id)?;
    queue(&db, &principal, "access", &subject_id).await
}

/// `POST /privacy/subjects/{subjectId}/erasure`.
#[utoipa::path(post, path = "/privacy/subjects/{subject_id}/erasure", tag = "privacy",
    params(("subject_id" = String, Path, description = "The data subject's id, as the policy's subject pointer finds it in events")),
    responses(
        (status = 202, description = "Queued; follow it at `/privacy/requests/{requestId}`. 409 `LEGAL_HOLD` when a hold names the subject", body = RequestView, content_type = "application/json")))]
pub async fn request_erasure(
    principal: Principal,
    State(db): State<PgPool>,
    Path(subject_id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&DPO)?;
    let tenant = principal.tenant.to_string();
    subject_problem(&tenant, &subject_id)?;
    let holds = store::holds_on_subject(&db, &tenant, &subject_id)
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?;
    if let Some(hold) = holds.first() {
        return Err(Problem::new(
            ProblemCode::LegalHold,
            format!("legal hold {hold} covers this subject: release it before erasing"),
        )
        .tenant(&tenant));
    }
    queue(&db, &principal, "erasure", &subject_id).await
}

fn view(r: store::PrivacyRequest, attestation_record_id: Option<String>) -> RequestView {
    let keys_destroyed = match (r.kind.as_str(), r.state.as_str()) {
        ("erasure", store::state::QUEUED | store::state::BLOCKED) => 0,
        ("erasure", _) => r.key_ids.len(),
        _ => 0,
    };
    RequestView {
        request_id: r.request_id,
        kind: r.kind,
        state: r.state,
        subject_hash: r.subject_hash,
        subject_salt: r.subject_salt,
        requested_at: r.requested_at,
        updated_at: r.updated_at,
        keys_destroyed,
        key_ids: r.key_ids,
        records_affected: r.records_affected,
        attestation_event_id: r.attestation_event_id,
        attestation_record_id,
        detail: r.detail,
        export_id: r.export_id,
    }
}

/// `GET /privacy/requests/{requestId}`.
#[utoipa::path(get, path = "/privacy/requests/{request_id}", tag = "privacy",
    params(("request_id" = String, Path, description = "The request's id (`requestId`)")),
    responses((status = 200, description = "The request's progress", body = RequestView, content_type = "application/json")))]
pub async fn request_status(
    principal: Principal,
    State(db): State<PgPool>,
    Path(request_id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Privacy, Permission::Admin])?;
    let tenant = principal.tenant.to_string();
    let r = store::request(&db, &tenant, &request_id)
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?
        .ok_or_else(|| {
            Problem::not_found(format!("no privacy request {request_id:?}")).tenant(&tenant)
        })?;
    let record_id = match &r.attestation_event_id {
        Some(event) => atp_store::query::record_by_event(
            &db,
            &tenant,
            atp_core::registry::SYSTEM_SOURCE,
            event,
        )
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?
        .map(|rec| rec.record_id),
        None => None,
    };
    Ok(Json(view(r, record_id)).into_response())
}

/// A legal hold to place: any of a subject, a source and a time range, all that are given.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewHold {
    pub subject_id: Option<String>,
    pub source_id: Option<String>,
    /// Records whose event time is at or after this.
    pub from: Option<DateTime<Utc>>,
    /// Records whose event time is before this.
    pub to: Option<DateTime<Utc>>,
    pub reason: String,
}

async fn trail(bus: &Bus, principal: &Principal, action: &str, hold: &LegalHold) {
    let mut attributes = Map::new();
    attributes.insert("holdId".into(), Value::from(hold.hold_id.clone()));
    attributes.insert("reason".into(), Value::from(hold.reason.clone()));
    // The subject's id stays out of the trail: its hash, salted with the hold id.
    if let Some(s) = &hold.subject_id {
        let h = Sha256::new()
            .chain_update(hold.hold_id.as_bytes())
            .chain_update(s.as_bytes())
            .finalize();
        attributes.insert("subjectHash".into(), Value::from(hex::encode(h)));
    }
    for (k, v) in [
        ("sourceId", hold.source_id.clone()),
        ("from", hold.from_at.map(atp_core::record::timestamp)),
        ("to", hold.to_at.map(atp_core::record::timestamp)),
    ] {
        if let Some(v) = v {
            attributes.insert(k.into(), Value::from(v));
        }
    }
    let actor = format!(
        "{}:{}",
        principal.roles.first().map_or("privacy", |p| p.as_str()),
        principal.subject
    );
    let a = AdminAction {
        actor: &actor,
        action,
        resource_type: "legal-hold",
        resource_id: &hold.hold_id,
        attributes,
    };
    if let Err(e) = admin_trail::record(&bus.js, &principal.tenant, &a).await {
        tracing::error!(tenant = %principal.tenant, hold = %hold.hold_id, action, error = %e, "a legal-hold change is not on the admin trail");
    }
}

/// `POST /legal-holds`.
#[utoipa::path(post, path = "/legal-holds", tag = "privacy", request_body = NewHold,
    responses((status = 201, description = "The hold, in force", body = crate::openapi::LegalHoldSchema, content_type = "application/json")))]
pub async fn create_hold(
    principal: Principal,
    State(db): State<PgPool>,
    State(bus): State<Bus>,
    body: Result<Json<NewHold>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    principal.require(&HOLDERS)?;
    let tenant = principal.tenant.to_string();
    let Json(h) =
        body.map_err(|e| Problem::new(ProblemCode::InvalidRequest, e.body_text()).tenant(&tenant))?;
    let bad = |m: &str| Problem::new(ProblemCode::InvalidRequest, m).tenant(&tenant);
    if h.subject_id.is_none() && h.source_id.is_none() && h.from.is_none() && h.to.is_none() {
        return Err(bad("a hold names a subject, a source or a time range"));
    }
    if h.reason.trim().is_empty() || h.reason.len() > MAX_TEXT {
        return Err(bad("a hold's reason is 1 to 1024 bytes"));
    }
    if let Some(s) = &h.subject_id {
        subject_problem(&tenant, s)?;
    }
    if let Some(s) = &h.source_id
        && atp_core::SourceId::new(s).is_err()
    {
        return Err(bad("sourceId is not a valid source id"));
    }
    if let (Some(f), Some(t)) = (h.from, h.to)
        && f >= t
    {
        return Err(bad("from must be before to"));
    }
    let hold = LegalHold {
        tenant_id: tenant.clone(),
        hold_id: ulid::Ulid::generate().to_string(),
        subject_id: h.subject_id,
        source_id: h.source_id,
        from_at: h.from,
        to_at: h.to,
        reason: h.reason,
        created_by: principal.subject.clone(),
        created_at: Utc::now(),
        released_by: None,
        released_at: None,
    };
    store::create_hold(&db, &hold)
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?;
    trail(&bus, &principal, "LEGAL_HOLD_PLACED", &hold).await;
    Ok((StatusCode::CREATED, Json(hold)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HoldsParams {
    /// Released holds too.
    all: Option<bool>,
}

/// The tenant's legal holds, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HoldList {
    #[schema(value_type = Vec<crate::openapi::LegalHoldSchema>)]
    items: Vec<LegalHold>,
}

/// `GET /legal-holds`.
#[utoipa::path(get, path = "/legal-holds", tag = "privacy", params(HoldsParams),
    responses((status = 200, description = "The tenant's holds, newest first", body = HoldList, content_type = "application/json")))]
pub async fn list_holds(
    principal: Principal,
    State(db): State<PgPool>,
    params: Result<Query<HoldsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    principal.require(&HOLDERS)?;
    let tenant = principal.tenant.to_string();
    let Query(p) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let items = store::holds(&db, &tenant, p.all.unwrap_or(false))
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?;
    Ok(Json(HoldList { items }).into_response())
}

/// `DELETE /legal-holds/{holdId}`: releases the hold.
#[utoipa::path(delete, path = "/legal-holds/{hold_id}", tag = "privacy",
    params(("hold_id" = String, Path, description = "The hold's id (`holdId`)")),
    responses((status = 200, description = "The released hold", body = crate::openapi::LegalHoldSchema, content_type = "application/json")))]
pub async fn release_hold(
    principal: Principal,
    State(db): State<PgPool>,
    State(bus): State<Bus>,
    Path(hold_id): Path<String>,
) -> Result<Response, Problem> {
    principal.require(&HOLDERS)?;
    let tenant = principal.tenant.to_string();
    let by = principal.subject.clone();
    if !store::release_hold(&db, &tenant, &hold_id, &by)
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?
    {
        return Err(
            Problem::not_found(format!("no active legal hold {hold_id:?}")).tenant(&tenant),
        );
    }
    let hold = store::holds(&db, &tenant, true)
        .await
        .map_err(|e| Problem::from(e).tenant(&tenant))?
        .into_iter()
        .find(|h| h.hold_id == hold_id)
        .ok_or_else(|| Problem::not_found(format!("no legal hold {hold_id:?}")).tenant(&tenant))?;
    trail(&bus, &principal, "LEGAL_HOLD_RELEASED", &hold).await;
    Ok(Json(hold).into_response())
}
