//! `/admin/dlq`: a tenant administrator's view of the tenant's dead letters, and their replay.
//! The tenant is the caller's; letters of other tenants do not exist here (404).

use atp_core::deadletter::DeadRole;
use atp_nats::dlq::{self, DlqError, Entry, Filter};
use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::GatewayState;
use crate::auth::{Permission, Principal};
use crate::problem::{Problem, ProblemCode};

/// At most this many letters per answer (and per replay request).
const MAX_LETTERS: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// `projector` or `exporter`.
    #[param(value_type = Option<String>)]
    role: Option<DeadRole>,
    /// Letters that died at or after this (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Letters that died before this (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// At most this many letters, 1 to 500 (default 100).
    limit: Option<usize>,
}

fn dlq_problem(tenant: &str) -> impl Fn(DlqError) -> Problem + '_ {
    move |e| match e {
        DlqError::NotFound(seq) => {
            Problem::not_found(format!("no dead letter {seq}")).tenant(tenant)
        }
        other => Problem::unavailable("the dead-letter queue", other).tenant(tenant),
    }
}

/// The tenant's dead letters, each with its last replay.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    #[schema(value_type = Vec<crate::openapi::DeadLetterEntrySchema>)]
    items: Vec<Entry>,
}

/// What a replay did, letter by letter.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplayResults {
    /// Nothing was written: each result says what would have happened.
    dry_run: bool,
    #[schema(value_type = Vec<crate::openapi::ReplayedSchema>)]
    results: Vec<atp_ops::dlq::Replayed>,
}

/// `GET /admin/dlq`: the tenant's letters, oldest first, each with its last replay.
#[utoipa::path(get, operation_id = "list_dead_letters", path = "/admin/dlq", tag = "admin", params(ListParams),
    responses((status = 200, description = "The tenant's dead letters, oldest first", body = DeadLetters, content_type = "application/json")))]
pub async fn list(
    principal: Principal,
    State(state): State<GatewayState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    let tenant = principal.tenant.to_string();
    let Query(p) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let filter = Filter {
        tenant: Some(tenant.clone()),
        role: p.role,
        from: p.from,
        to: p.to,
        limit: p.limit.unwrap_or(100).clamp(1, MAX_LETTERS),
    };
    let items = dlq::list(&state.bus.js, &filter)
        .await
        .map_err(dlq_problem(&tenant))?;
    Ok(Json(DeadLetters { items }).into_response())
}

async fn own(state: &GatewayState, tenant: &str, seq: u64) -> Result<Entry, Problem> {
    let entry = dlq::get(&state.bus.js, seq)
        .await
        .map_err(dlq_problem(tenant))?;
    if entry.letter.tenant_id != tenant {
        return Err(Problem::not_found(format!("no dead letter {seq}")).tenant(tenant));
    }
    Ok(entry)
}

/// `GET /admin/dlq/{seq}`: one letter.
#[utoipa::path(get, operation_id = "get_dead_letter", path = "/admin/dlq/{seq}", tag = "admin", params(("seq" = u64, Path, description = "The letter's sequence (`seq`)")),
    responses((status = 200, description = "One dead letter", body = crate::openapi::DeadLetterEntrySchema, content_type = "application/json")))]
pub async fn show(
    principal: Principal,
    State(state): State<GatewayState>,
    Path(seq): Path<u64>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    let entry = own(&state, principal.tenant.as_str(), seq).await?;
    Ok(Json(entry).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplayBody {
    /// These letters; without, every letter the filters select.
    #[serde(default)]
    seqs: Vec<u64>,
    /// `projector` or `exporter`.
    #[schema(value_type = Option<String>)]
    role: Option<DeadRole>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /admin/dlq/replay`: handles letters again; one result per letter.
#[utoipa::path(post, operation_id = "replay_dead_letters", path = "/admin/dlq/replay", tag = "admin", request_body = ReplayBody,
    responses((status = 200, description = "One result per letter", body = ReplayResults, content_type = "application/json")))]
pub async fn replay(
    principal: Principal,
    State(state): State<GatewayState>,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<Response, Problem> {
    principal.require(&[Permission::Admin])?;
    let tenant = principal.tenant.to_string();
    let Json(body) =
        body.map_err(|e| Problem::new(ProblemCode::InvalidRequest, e.body_text()).tenant(&tenant))?;
    if body.seqs.len() > MAX_LETTERS {
        return Err(Problem::new(
            ProblemCode::InvalidRequest,
            format!("at most {MAX_LETTERS} letters per replay"),
        )
        .tenant(&tenant));
    }
    let entries = if body.seqs.is_empty() {
        let filter = Filter {
            tenant: Some(tenant.clone()),
            role: body.role,
            from: body.from,
            to: body.to,
            limit: MAX_LETTERS,
        };
        dlq::list(&state.bus.js, &filter)
            .await
            .map_err(dlq_problem(&tenant))?
    } else {
        let mut v = Vec::with_capacity(body.seqs.len());
        for seq in &body.seqs {
            v.push(own(&state, &tenant, *seq).await?);
        }
        v
    };
    let by = format!("admin:{}", principal.subject);
    let mut results = Vec::with_capacity(entries.len());
    for entry in &entries {
        let r = atp_ops::dlq::replay(&state.bus.js, &state.ops_db, entry, &by, body.dry_run)
            .await
            .map_err(dlq_problem(&tenant))?;
        results.push(r);
    }
    Ok(Json(ReplayResults {
        dry_run: body.dry_run,
        results,
    })
    .into_response())
}
