//! Proofs and verification over HTTP (CONTRACT §4–§5): a record's inclusion proof, checkpoints,
//! consistency proofs, server-side verification of a record or a range, and the published
//! signing keys.
//!
//! Every proof is checked against its signed checkpoint before it is answered: a gateway never
//! serves a proof that does not verify. Every answer carries what a client needs to re-check it
//! offline (the signed checkpoint, the proof hashes, the published verifier keys).

use atp_core::checkpoint::{Checkpoint, TlogProof};
use atp_core::edition::Feature;
use atp_core::merkle::{self, ProofPlan};
use atp_core::names::{PartitionKey, SourceId, TenantId};
use atp_core::note::{self, Verifier};
use atp_core::{Digest, canonical, chain, record};
use atp_nats::signing_keys;
use atp_store::integrity::{self as store, StoredCheckpoint};
use atp_store::query::{self, StoredRecord};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::Bus;
use crate::auth::{Permission, Principal};
use crate::problem::{Problem, ProblemCode};
use crate::query::{READERS, RecordView, record_view};

/// Most records one `verify/range` call re-checks.
pub const MAX_RANGE: u64 = 100_000;

/// Records `verify/range` reads and hashes per step: one level-0 tile (256 leaves), so each
/// step reads one tile of leaf hashes. What a running verification holds is one chunk: at the
/// default event limit (64 KiB, records a little larger) at most ~18 MiB, whatever the range.
pub const RANGE_CHUNK: u64 = atp_core::tiles::TILE_WIDTH;

const ANY_ROLE: [Permission; 3] = [Permission::Producer, Permission::Auditor, Permission::Admin];

fn b64_all(hashes: &[Digest]) -> Vec<String> {
    hashes.iter().map(|h| B64.encode(h.0)).collect()
}

fn wants_text(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/plain") && !a.contains("application/json"))
}

fn text(body: String) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn integrity_error(tenant: &str, detail: String) -> Problem {
    tracing::error!(tenant.id = tenant, detail = %detail, "integrity check failed while answering");
    Problem::new(ProblemCode::IntegrityError, detail).tenant(tenant)
}

/// The stored hashes a proof is built from could not be read. A missing or malformed tile
/// means the proof cannot be checked, and an unchecked proof is never served: 500
/// `INTEGRITY_ERROR`, logged at ERROR (ADR 0004). A database outage is only that: 503, with a
/// WARN, so a blip neither pages anyone nor tells the caller that a retry is useless.
fn tiles_problem(tenant: &str, e: atp_store::StoreError) -> Problem {
    match e {
        e @ atp_store::StoreError::Corrupt(_) => integrity_error(tenant, e.to_string()),
        other => Problem::store("the read model", other).tenant(tenant),
    }
}

/// Not yet covered by a checkpoint: checkpoints follow within the configured interval.
fn pending(tenant: &str, detail: String) -> Response {
    let mut resp = Problem::new(ProblemCode::ProofPending, detail)
        .tenant(tenant)
        .into_response();
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The path's partition, which must belong to the caller's tenant.
fn own_partition(
    principal: &Principal,
    tenant: &str,
    source: &str,
) -> Result<PartitionKey, Problem> {
    let me = principal.tenant.as_str();
    if tenant != me {
        return Err(Problem::new(
            ProblemCode::TenantMismatch,
            "the path names another tenant than the token's",
        )
        .tenant(me));
    }
    let source = SourceId::new(source)
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.to_string()).tenant(me))?;
    Ok(PartitionKey::new(principal.tenant.clone(), source))
}

fn partition_of(r: &StoredRecord) -> Result<PartitionKey, Problem> {
    let tenant = TenantId::new(&r.tenant_id);
    let source = SourceId::new(&r.source_id);
    match (tenant, source) {
        (Ok(t), Ok(s)) => Ok(PartitionKey::new(t, s)),
        _ => Err(integrity_error(
            &r.tenant_id,
            "stored record names an invalid partition".into(),
        )),
    }
}

/// Every published signing key's verifier.
async fn known_keys(bus: &Bus) -> Result<Vec<Verifier>, Problem> {
    let keys = signing_keys::list(&bus.signing_keys)
        .await
        .map_err(|e| Problem::unavailable("the signing-key registry", e))?;
    Ok(keys.iter().filter_map(|k| k.verifier().ok()).collect())
}

async fn checkpoint_for(
    db: &PgPool,
    p: &PartitionKey,
    size: Option<u64>,
) -> Result<Option<StoredCheckpoint>, Problem> {
    store::checkpoint(db, p, size).await.map_err(Problem::from)
}

/// An inclusion proof for `r` against `cp`, checked before it is returned.
async fn inclusion(
    db: &PgPool,
    p: &PartitionKey,
    r: &StoredRecord,
    cp: &StoredCheckpoint,
) -> Result<TlogProof, Problem> {
    let tenant = p.tenant.as_str();
    let index = r.chain_index as u64;
    let plan = ProofPlan::inclusion(index, cp.size())
        .map_err(|e| integrity_error(tenant, e.to_string()))?;
    let mut conn = db
        .acquire()
        .await
        .map_err(|e| Problem::unavailable("the read model", e))?;
    let hashes = store::prove(&mut conn, p, &plan)
        .await
        .map_err(|e| tiles_problem(tenant, e))?;
    let root = cp
        .root()
        .map_err(|e| integrity_error(tenant, e.to_string()))?;
    merkle::verify_inclusion(
        index,
        cp.size(),
        &merkle::leaf_hash(&r.record),
        &hashes,
        &root,
    )
    .map_err(|e| {
        integrity_error(
            tenant,
            format!(
                "record {} does not prove against checkpoint {}: {e}",
                r.record_id,
                cp.size()
            ),
        )
    })?;
    Ok(TlogProof {
        extra: None,
        index,
        hashes,
        checkpoint: cp.note.clone(),
    })
}

/// A record's inclusion proof: the record (as the records query serves it, digest
/// re-checked), where it sits, the proof and the signed checkpoint it proves against.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordProof {
    pub record_id: String,
    pub tenant_id: String,
    pub source_id: String,
    /// The record as stored (CONTRACT §3), unless the caller may not read all of it.
    #[schema(value_type = Object)]
    pub record: Box<serde_json::value::RawValue>,
    /// `sha256:<hex>` of the record's canonical bytes.
    pub digest: String,
    /// The record's leaf in the source's Merkle log (its chain index).
    pub leaf_index: u64,
    /// The size of the tree the checkpoint signs.
    pub tree_size: u64,
    /// The RFC 9162 inclusion proof: the hashes from the leaf up, each base64.
    pub inclusion_proof: Vec<String>,
    /// The signed checkpoint (C2SP tlog-checkpoint, a signed note).
    pub checkpoint: String,
    /// The same proof as a C2SP tlog-proof text.
    pub tlog_proof: String,
}

fn record_proof_of(rec: RecordView, proof: &TlogProof, cp: &StoredCheckpoint) -> RecordProof {
    RecordProof {
        record_id: rec.record_id,
        tenant_id: rec.tenant_id,
        source_id: rec.source_id,
        record: rec.record,
        digest: rec.digest,
        leaf_index: proof.index,
        tree_size: cp.size(),
        inclusion_proof: b64_all(&proof.hashes),
        checkpoint: cp.note.clone(),
        tlog_proof: proof.to_text(),
    }
}

/// A signed checkpoint and what it says.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Checkpoint)]
pub struct CheckpointView {
    tenant_id: String,
    source_id: String,
    /// The log's origin line.
    origin: String,
    tree_size: u64,
    /// The Merkle tree's root hash, base64.
    root_hash: String,
    /// The signing key's id (8 hex digits), as `GET /integrity/keys` lists it.
    key_id: String,
    issued_at: String,
    /// The signed note itself (C2SP tlog-checkpoint).
    checkpoint: String,
}

/// Proof that one tree extends another.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsistencyProof {
    tenant_id: String,
    source_id: String,
    from_size: u64,
    to_size: u64,
    /// The smaller tree's root hash, base64.
    from_root: String,
    /// The larger tree's root hash, base64.
    to_root: String,
    /// The RFC 9162 consistency proof, each hash base64.
    consistency_proof: Vec<String>,
    /// The signed checkpoint of the smaller tree, when one was issued at that size.
    from_checkpoint: Option<String>,
    /// The signed checkpoint of the larger tree, when one was issued at that size.
    to_checkpoint: Option<String>,
}

/// One check of a verification.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = VerificationCheck)]
pub struct Check {
    /// E.g. `storedDigest`, `chainLink`, `inclusion`, `checkpointSignature`.
    check: &'static str,
    ok: bool,
    detail: String,
}

/// A stored record re-checked end to end.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordVerification {
    /// Every check passed.
    verified: bool,
    record_id: String,
    tenant_id: String,
    source_id: String,
    chain_index: i64,
    checks: Vec<Check>,
    /// The inclusion proof, once a checkpoint covers the record.
    proof: Option<RecordProof>,
}

/// The first record of a range that failed a check.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeFailure {
    chain_index: u64,
    /// `record`, `sequence`, `digest`, `chainLink` or `leaf`.
    check: &'static str,
    detail: String,
}

/// A range of a partition re-walked as stored.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RangeVerification {
    /// Every check passed.
    verified: bool,
    tenant_id: String,
    source_id: String,
    from_index: u64,
    to_index: u64,
    /// How many records were checked.
    checked: u64,
    first_failure: Option<RangeFailure>,
    checks: Vec<Check>,
    tree_size: u64,
    /// The checkpoint's root hash, base64.
    root_hash: String,
    checkpoint: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProofParams {
    /// Prove against the checkpoint of this size instead of the newest.
    tree_size: Option<u64>,
}

/// `GET /audit/records/{recordId}/proof`.
#[utoipa::path(get, path = "/audit/records/{record_id}/proof", tag = "integrity",
    params(("record_id" = String, Path, description = "The record's id (`recordId`)"), ProofParams),
    responses((status = 200, description = "Inclusion proof against a signed checkpoint (as a C2SP tlog-proof with `Accept: text/plain`)",
        content((RecordProof = "application/json"), (String = "text/plain")))))]
pub async fn record_proof(
    principal: Principal,
    State(db): State<PgPool>,
    State(bus): State<Bus>,
    Path(record_id): Path<String>,
    params: Result<Query<ProofParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let Query(params) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let r = query::record(&db, &tenant, &record_id)
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found(format!("no record {record_id:?}")).tenant(&tenant))?;
    let clearance = crate::redact::Clearance::of(&bus, &principal).await?;
    let rec = record_view(&r, &clearance)?;
    let p = partition_of(&r)?;
    let Some(cp) = checkpoint_for(&db, &p, params.tree_size).await? else {
        return Ok(match params.tree_size {
            Some(n) => Problem::not_found(format!("no checkpoint of size {n}"))
                .tenant(&tenant)
                .into_response(),
            None => pending(
                &tenant,
                format!("record {record_id} is not yet covered by a checkpoint"),
            ),
        });
    };
    if cp.size() <= r.chain_index as u64 {
        return Ok(pending(
            &tenant,
            format!(
                "record {record_id} (chain index {}) is not yet covered: the checkpoint has {} records",
                r.chain_index,
                cp.size()
            ),
        ));
    }
    let proof = inclusion(&db, &p, &r, &cp).await?;
    if wants_text(&headers) {
        return Ok(text(proof.to_text()));
    }
    Ok(Json(record_proof_of(rec, &proof, &cp)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SizeParams {
    /// The checkpoint of this tree size; default: the newest.
    size: Option<u64>,
}

/// `GET /integrity/checkpoints/{tenantId}/{sourceId}` (newest, or `?size=n`).
#[utoipa::path(get, operation_id = "get_checkpoint", path = "/integrity/checkpoints/{tenant_id}/{source_id}", tag = "integrity",
    params(("tenant_id" = String, Path, description = "The caller's own tenant"), ("source_id" = String, Path, description = "The source (one hash chain and Merkle log)"), SizeParams),
    responses((status = 200, description = "A signed checkpoint (the signed note alone with `Accept: text/plain`)",
        content((CheckpointView = "application/json"), (String = "text/plain")))))]
pub async fn checkpoint(
    principal: Principal,
    State(db): State<PgPool>,
    Path((tenant, source)): Path<(String, String)>,
    params: Result<Query<SizeParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    principal.require(&ANY_ROLE)?;
    let p = own_partition(&principal, &tenant, &source)?;
    let Query(params) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let cp = checkpoint_for(&db, &p, params.size)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no checkpoint for {p}")).tenant(&tenant))?;
    if wants_text(&headers) {
        return Ok(text(cp.note));
    }
    let body = note::split(&cp.note)
        .map_err(|e| e.to_string())
        .and_then(|(text, _)| Checkpoint::parse(text).map_err(|e| e.to_string()))
        .map_err(|e| integrity_error(&tenant, format!("stored checkpoint is malformed: {e}")))?;
    Ok(Json(CheckpointView {
        tenant_id: cp.tenant_id.clone(),
        source_id: cp.source_id.clone(),
        origin: body.origin.to_string(),
        tree_size: cp.size(),
        root_hash: B64.encode(body.root.0),
        key_id: cp.key_id.clone(),
        issued_at: record::timestamp(cp.issued_at),
        checkpoint: cp.note.clone(),
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyParams {
    /// The smaller tree's size (at least 1).
    from: u64,
    /// The larger tree's size; default: the newest checkpoint's.
    to: Option<u64>,
}

/// `GET /integrity/consistency/{tenantId}/{sourceId}?from=m&to=n`: proof that the tree of `n`
/// records (default: the newest checkpoint's) extends the tree of `m`.
#[utoipa::path(get, operation_id = "consistency_proof", path = "/integrity/consistency/{tenant_id}/{source_id}", tag = "integrity",
    params(("tenant_id" = String, Path, description = "The caller's own tenant"), ("source_id" = String, Path, description = "The source (one hash chain and Merkle log)"), ConsistencyParams),
    responses((status = 200, description = "Consistency proof between two tree sizes",
        body = ConsistencyProof, content_type = "application/json")))]
pub async fn consistency(
    principal: Principal,
    State(db): State<PgPool>,
    Path((tenant, source)): Path<(String, String)>,
    params: Result<Query<ConsistencyParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    principal.require(&ANY_ROLE)?;
    let p = own_partition(&principal, &tenant, &source)?;
    let Query(params) = params
        .map_err(|e| Problem::new(ProblemCode::InvalidQuery, e.body_text()).tenant(&tenant))?;
    let newest = checkpoint_for(&db, &p, None)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no checkpoint for {p}")).tenant(&tenant))?;
    let to = params.to.unwrap_or(newest.size());
    if params.from == 0 || params.from > to || to > newest.size() {
        return Err(Problem::new(
            ProblemCode::InvalidQuery,
            format!(
                "need 0 < from ≤ to ≤ {} (the newest checkpoint's size)",
                newest.size()
            ),
        )
        .tenant(&tenant));
    }
    let mut conn = db
        .acquire()
        .await
        .map_err(|e| Problem::unavailable("the read model", e))?;
    let fail = |e: String| integrity_error(&tenant, e);
    let plans = [
        ProofPlan::consistency(params.from, to).map_err(|e| fail(e.to_string()))?,
        ProofPlan::root(params.from),
        ProofPlan::root(to),
    ];
    let proved = store::prove_all(&mut conn, &p, &plans)
        .await
        .map_err(|e| tiles_problem(&tenant, e))?;
    let [proof, from_root, to_root] = <[Vec<Digest>; 3]>::try_from(proved)
        .map_err(|_| fail("one answer per plan expected".into()))?;
    let roots = [from_root, to_root]
        .iter()
        .map(|r| r.first().copied().ok_or_else(|| fail("empty tree".into())))
        .collect::<Result<Vec<_>, _>>()?;
    merkle::verify_consistency(params.from, to, &roots[0], &roots[1], &proof)
        .map_err(|e| fail(format!("stored tiles give no consistent proof: {e}")))?;
    let from_cp = checkpoint_for(&db, &p, Some(params.from)).await?;
    let to_cp = checkpoint_for(&db, &p, Some(to)).await?;
    for cp in from_cp.iter().chain(to_cp.iter()) {
        if cp.root().ok() != Some(roots[usize::from(cp.size() == to)]) {
            return Err(fail(format!(
                "checkpoint {} disagrees with the stored tiles",
                cp.size()
            )));
        }
    }
    Ok(Json(ConsistencyProof {
        tenant_id: tenant.clone(),
        source_id: p.source.to_string(),
        from_size: params.from,
        to_size: to,
        from_root: B64.encode(roots[0].0),
        to_root: B64.encode(roots[1].0),
        consistency_proof: b64_all(&proof),
        from_checkpoint: from_cp.map(|c| c.note),
        to_checkpoint: to_cp.map(|c| c.note),
    })
    .into_response())
}

/// Keeps the first failure of a range walk.
fn note_failure(
    slot: &mut Option<RangeFailure>,
    index: u64,
    check_name: &'static str,
    detail: String,
) {
    if slot.is_none() {
        *slot = Some(RangeFailure {
            chain_index: index,
            check: check_name,
            detail,
        });
    }
}

/// One line of a verification answer.
fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        check: name,
        ok,
        detail: detail.into(),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyRecordBody {
    record_id: Option<String>,
    /// A record as the caller holds it (any JSON form; its canonical bytes are checked).
    #[schema(value_type = Option<Object>)]
    record: Option<Value>,
}

/// `POST /integrity/verify/record`: re-checks a stored record (and optionally the caller's
/// copy) end to end: digest, chain link, inclusion in the newest checkpoint, its signature.
#[utoipa::path(post, path = "/integrity/verify/record", tag = "integrity", request_body = VerifyRecordBody,
    responses((status = 200, description = "The verification report", body = RecordVerification, content_type = "application/json")))]
pub async fn verify_record(
    principal: Principal,
    State(db): State<PgPool>,
    State(bus): State<Bus>,
    body: Result<Json<VerifyRecordBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    let tenant = principal.tenant.to_string();
    let Json(body) =
        body.map_err(|e| Problem::new(ProblemCode::InvalidRequest, e.body_text()).tenant(&tenant))?;
    let bad = |d: String| Problem::new(ProblemCode::InvalidRequest, d).tenant(&tenant);
    let given = body
        .record
        .as_ref()
        .map(|v| canonical::to_canonical(v).map_err(|e| bad(e.to_string())))
        .transpose()?;
    let record_id = match (&body.record_id, &given) {
        (Some(id), _) => id.clone(),
        (None, Some(bytes)) => record::head(bytes)
            .map_err(|e| bad(format!("record: {e}")))?
            .0
            .record_id
            .into_owned(),
        (None, None) => return Err(bad("send recordId or record".into())),
    };
    let r = query::record(&db, &tenant, &record_id)
        .await
        .map_err(Problem::from)?
        .ok_or_else(|| Problem::not_found(format!("no record {record_id:?}")).tenant(&tenant))?;
    let p = partition_of(&r)?;
    let mut checks = Vec::new();
    let stored_digest = r.digest;
    let digest = Digest::of(&r.record);
    checks.push(check(
        "storedDigest",
        digest == stored_digest,
        format!("SHA-256 of the stored bytes is {digest}"),
    ));
    if let Some(bytes) = &given {
        let theirs = Digest::of(bytes);
        checks.push(check(
            "callerCopy",
            theirs == digest,
            format!("the canonical bytes you sent hash to {theirs}"),
        ));
    }
    let link = record::head(&r.record).map(|(_, l)| l);
    let stored_chain = r.chain_hash;
    checks.push(match &link {
        Ok(l) => check(
            "chainLink",
            l.chain_hash == stored_chain
                && l.chain_hash == chain::chain_hash(&l.prev_hash, &digest),
            format!("chainHash = SHA-256(prevHash || digest) = {}", l.chain_hash),
        ),
        Err(e) => check("chainLink", false, e.to_string()),
    });
    let cp = checkpoint_for(&db, &p, None).await?;
    let mut proof_answer = None;
    match cp.filter(|c| c.size() > r.chain_index as u64) {
        None => checks.push(check(
            "inclusion",
            false,
            "not yet covered by a checkpoint; retry shortly",
        )),
        Some(cp) => {
            match inclusion(&db, &p, &r, &cp).await {
                Ok(proof) => {
                    checks.push(check(
                        "inclusion",
                        true,
                        format!("leaf {} of the tree of {} records", proof.index, cp.size()),
                    ));
                    let clearance = crate::redact::Clearance::of(&bus, &principal).await?;
                    proof_answer = Some(record_proof_of(record_view(&r, &clearance)?, &proof, &cp));
                }
                Err(e) => checks.push(check("inclusion", false, e.detail)),
            }
            let known = known_keys(&bus).await?;
            checks.push(match Checkpoint::open(&cp.note, &known) {
                Ok(c) => check(
                    "checkpointSignature",
                    true,
                    format!("signed note for origin {}", c.origin),
                ),
                Err(e) => check("checkpointSignature", false, e.to_string()),
            });
        }
    }
    Ok(Json(RecordVerification {
        verified: checks.iter().all(|c| c.ok),
        record_id: r.record_id.clone(),
        tenant_id: r.tenant_id.clone(),
        source_id: r.source_id.clone(),
        chain_index: r.chain_index,
        checks,
        proof: proof_answer,
    })
    .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyRangeBody {
    source_id: String,
    /// First chain index (inclusive, default 0).
    #[serde(default)]
    from_index: u64,
    /// End chain index (exclusive, default: the newest checkpoint's size).
    to_index: Option<u64>,
}

/// `POST /integrity/verify/range`: re-walks records `[fromIndex, toIndex)` of a partition as
/// stored: every digest, every chain link, every leaf against the stored tree, and the tree's
/// root against the newest signed checkpoint.
#[utoipa::path(post, path = "/integrity/verify/range", tag = "integrity", request_body = VerifyRangeBody,
    responses((status = 200, description = "The verification report (enterprise edition)", body = RangeVerification, content_type = "application/json")))]
pub async fn verify_range(
    principal: Principal,
    State(db): State<PgPool>,
    State(bus): State<Bus>,
    State(capacity): State<crate::capacity::Capacity>,
    body: Result<Json<VerifyRangeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    principal.require(&READERS)?;
    principal.require_feature(Feature::RangeVerification)?;
    let tenant = principal.tenant.to_string();
    let Json(body) =
        body.map_err(|e| Problem::new(ProblemCode::InvalidRequest, e.body_text()).tenant(&tenant))?;
    let p = own_partition(&principal, &tenant, &body.source_id)?;
    let Some(cp) = checkpoint_for(&db, &p, None).await? else {
        return Ok(pending(&tenant, format!("no checkpoint for {p} yet")));
    };
    let to = body.to_index.unwrap_or(cp.size());
    let from = body.from_index;
    if from >= to || to - from > MAX_RANGE {
        return Err(Problem::new(
            ProblemCode::InvalidRequest,
            format!("need fromIndex < toIndex and at most {MAX_RANGE} records per call"),
        )
        .tenant(&tenant));
    }
    if to > cp.size() {
        return Ok(pending(
            &tenant,
            format!(
                "the newest checkpoint covers {} records; toIndex is {to}",
                cp.size()
            ),
        ));
    }
    let fail = |e: String| integrity_error(&tenant, e);
    // A slot of the verification pool, held to the end: the hashing runs on blocking threads,
    // at most `verify_concurrency` at once and `verify_per_tenant` of them one tenant's.
    let _slot = match capacity.verify.try_enter(&tenant) {
        Ok(slot) => slot,
        Err(busy) => return Ok(busy.problem(&tenant)),
    };
    let root = {
        let mut conn = db
            .acquire()
            .await
            .map_err(|e| Problem::unavailable("the read model", e))?;
        store::prove(&mut conn, &p, &ProofPlan::root(cp.size()))
            .await
            .map_err(|e| tiles_problem(&tenant, e))?
    };

    // One chunk at a time, aligned to tiles: read its records and leaf hashes, check them on a
    // blocking thread, drop them, read the next. Memory stays at one chunk for any range.
    let mut walk = RangeWalk::new(&p, from);
    let mut start = from;
    while start < to && !walk.stopped {
        let end = ((start / RANGE_CHUNK + 1) * RANGE_CHUNK).min(to);
        // The first chunk also reads the record before the range: its chain hash is the first
        // link to check.
        let read_from = if start == from {
            from.saturating_sub(1)
        } else {
            start
        };
        let rows = query::records_by_chain(&db, &tenant, p.source.as_str(), read_from, end)
            .await
            .map_err(Problem::from)?;
        let leaves = {
            let mut conn = db
                .acquire()
                .await
                .map_err(|e| Problem::unavailable("the read model", e))?;
            store::leaf_hashes(&mut conn, &p, start, end)
                .await
                .map_err(|e| tiles_problem(&tenant, e))?
        };
        walk = tokio::task::spawn_blocking(move || {
            walk.feed(&rows, &leaves, start);
            walk
        })
        .await
        .map_err(|e| Problem::unavailable("verification", e))?;
        start = end;
    }
    let (checked, first_failure) = walk.finish(to);
    let signed_root = cp.root().map_err(|e| fail(e.to_string()))?;
    let known = known_keys(&bus).await?;
    let signature = Checkpoint::open(&cp.note, &known);
    let mut checks = vec![
        check(
            "records",
            first_failure.is_none(),
            format!("{checked} records: digests, chain links and leaves"),
        ),
        check(
            "treeRoot",
            root.first() == Some(&signed_root),
            "the stored Merkle log's root equals the checkpoint's",
        ),
    ];
    checks.push(match signature {
        Ok(c) => check(
            "checkpointSignature",
            c.root == signed_root,
            format!("signed note for origin {}", c.origin),
        ),
        Err(e) => check("checkpointSignature", false, e.to_string()),
    });
    Ok(Json(RangeVerification {
        verified: checks.iter().all(|c| c.ok),
        tenant_id: tenant.clone(),
        source_id: p.source.to_string(),
        from_index: from,
        to_index: to,
        checked,
        first_failure,
        checks,
        tree_size: cp.size(),
        root_hash: B64.encode(signed_root.0),
        checkpoint: cp.note.clone(),
    })
    .into_response())
}

/// The pure half of `verify/range`: fed the range's records chunk by chunk, in chain order,
/// it checks each one's digest, chain link and leaf, and keeps the first failure. It carries
/// only the last chain hash from one chunk to the next.
#[derive(Debug)]
struct RangeWalk {
    from: u64,
    expected: u64,
    prev: Option<Digest>,
    checked: u64,
    first_failure: Option<RangeFailure>,
    /// The walk cannot go on (a record that does not parse, a record out of sequence).
    stopped: bool,
}

impl RangeWalk {
    fn new(p: &PartitionKey, from: u64) -> Self {
        Self {
            from,
            expected: from,
            prev: (from == 0).then(|| chain::genesis(p)),
            checked: 0,
            first_failure: None,
            stopped: false,
        }
    }

    /// Checks one chunk: `rows` in chain order (the first chunk may start with the record
    /// before the range), `leaves` the stored leaf hashes from chain index `leaves_from` on.
    fn feed(&mut self, rows: &[StoredRecord], leaves: &[Digest], leaves_from: u64) {
        for r in rows {
            if self.stopped {
                return;
            }
            let (head, link) = match record::head(&r.record) {
                Ok(x) => x,
                Err(e) => {
                    note_failure(
                        &mut self.first_failure,
                        r.chain_index as u64,
                        "record",
                        e.to_string(),
                    );
                    self.stopped = true;
                    return;
                }
            };
            if head.chain_index + 1 == self.from {
                self.prev = Some(link.chain_hash);
                continue;
            }
            if head.chain_index != self.expected {
                note_failure(
                    &mut self.first_failure,
                    self.expected,
                    "sequence",
                    format!("the read model has chain index {} here", head.chain_index),
                );
                self.stopped = true;
                return;
            }
            if r.digest != link.digest {
                note_failure(
                    &mut self.first_failure,
                    self.expected,
                    "digest",
                    "the stored bytes do not hash to the stored digest".into(),
                );
            }
            if self.prev.is_some_and(|p| p != link.prev_hash) {
                note_failure(
                    &mut self.first_failure,
                    self.expected,
                    "chainLink",
                    "prevHash does not continue the chain".into(),
                );
            }
            let leaf = self
                .expected
                .checked_sub(leaves_from)
                .and_then(|i| leaves.get(usize::try_from(i).ok()?));
            if leaf != Some(&merkle::leaf_hash(&r.record)) {
                note_failure(
                    &mut self.first_failure,
                    self.expected,
                    "leaf",
                    "the record is not the leaf the Merkle log holds".into(),
                );
            }
            self.prev = Some(link.chain_hash);
            self.expected += 1;
            self.checked += 1;
        }
    }

    /// The records checked and the first failure, a missing record at the end included.
    fn finish(mut self, to: u64) -> (u64, Option<RangeFailure>) {
        if self.expected < to && self.first_failure.is_none() {
            note_failure(
                &mut self.first_failure,
                self.expected,
                "sequence",
                "the read model lacks this record".into(),
            );
        }
        (self.checked, self.first_failure)
    }
}

/// `GET /integrity/keys`: every checkpoint signing key ever used, as a JWKS. Public: verifying
/// needs no account.
#[utoipa::path(get, operation_id = "checkpoint_keys", path = "/integrity/keys", tag = "integrity", security(()),
    responses((status = 200, description = "The published checkpoint signing keys (JWKS)", body = crate::openapi::JwksSchema, content_type = "application/json")))]
pub async fn keys(State(bus): State<Bus>) -> Result<Response, Problem> {
    let keys = signing_keys::list(&bus.signing_keys)
        .await
        .map_err(|e| Problem::unavailable("the signing-key registry", e))?;
    Ok(Json(atp_core::keys::Jwks {
        keys: keys.iter().map(|k| k.jwk()).collect(),
    })
    .into_response())
}
