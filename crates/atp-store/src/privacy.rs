//! Data-subject requests and legal holds (CONTRACT §8, migration 0008): the rows the gateway
//! queues and the lifecycle role carries out, and the read-model work erasure does.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::StoreError;
use crate::projection::{RecordRow, Target};

/// One data-subject request as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize)]
pub struct PrivacyRequest {
    pub tenant_id: String,
    pub request_id: String,
    pub kind: String,
    #[serde(skip)]
    pub subject_id: Option<String>,
    pub subject_hash: String,
    pub subject_salt: String,
    pub state: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub scrub_again_at: Option<DateTime<Utc>>,
    pub key_ids: Vec<String>,
    pub records_affected: i64,
    pub attestation_event_id: Option<String>,
    pub detail: Option<String>,
    /// The export an access request started.
    pub export_id: Option<String>,
}

/// The states an erasure goes through, in order (or ends `blocked` or `failed`); an access
/// request goes `queued` → `exporting` → `done` (or `failed`).
pub mod state {
    pub const QUEUED: &str = "queued";
    pub const EXPORTING: &str = "exporting";
    pub const FAILED: &str = "failed";
    pub const KEYS_DESTROYED: &str = "keys_destroyed";
    pub const SCRUBBED_ONCE: &str = "scrubbed_once";
    pub const SCRUBBED: &str = "scrubbed";
    pub const DONE: &str = "done";
    pub const BLOCKED: &str = "blocked";
}

const REQUEST_COLUMNS: &str = "tenant_id, request_id, kind, subject_id, subject_hash, subject_salt, \
     state, requested_by, requested_at, updated_at, scrub_again_at, key_ids, records_affected, \
     attestation_event_id, detail, export_id";

/// What the gateway queues.
#[derive(Debug, Clone)]
pub struct NewRequest<'a> {
    pub tenant_id: &'a str,
    pub request_id: &'a str,
    pub kind: &'a str,
    pub subject_id: &'a str,
    pub subject_hash: &'a str,
    pub subject_salt: &'a str,
    pub requested_by: &'a str,
}

pub async fn queue(db: impl sqlx::PgExecutor<'_>, r: &NewRequest<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO privacy_requests (tenant_id, request_id, kind, subject_id, subject_hash, \
         subject_salt, requested_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(r.tenant_id)
    .bind(r.request_id)
    .bind(r.kind)
    .bind(r.subject_id)
    .bind(r.subject_hash)
    .bind(r.subject_salt)
    .bind(r.requested_by)
    .execute(db)
    .await?;
    Ok(())
}

pub async fn request(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    request_id: &str,
) -> Result<Option<PrivacyRequest>, StoreError> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM privacy_requests WHERE tenant_id = $1 AND request_id = $2"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(request_id)
        .fetch_optional(db)
        .await?)
}

/// The oldest request with a step to take now, of any tenant (the lifecycle role's pool): an
/// erasure's second scrub waits for `scrub_again_at`, an access request its export's end.
pub async fn next_pending(pool: &PgPool) -> Result<Option<PrivacyRequest>, StoreError> {
    let sql = format!(
        "SELECT {REQUEST_COLUMNS} FROM privacy_requests r \
         WHERE state NOT IN ('done', 'blocked', 'failed') \
         AND (scrub_again_at IS NULL OR scrub_again_at <= now() OR state <> 'scrubbed_once') \
         AND (state <> 'exporting' OR EXISTS (SELECT 1 FROM exports e \
              WHERE e.export_id = r.export_id AND e.status IN ('completed', 'failed'))) \
         ORDER BY requested_at LIMIT 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_optional(pool)
        .await?)
}

/// The next step's outcome for a request.
#[derive(Debug, Clone, Default)]
pub struct Step<'a> {
    pub state: &'a str,
    pub key_ids: Option<&'a [String]>,
    pub records_affected: Option<i64>,
    pub scrub_again_at: Option<DateTime<Utc>>,
    pub attestation_event_id: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// Forget the subject's id (the request is done).
    pub forget_subject: bool,
    /// The export an access request starts.
    pub export_id: Option<&'a str>,
}

pub async fn advance(pool: &PgPool, r: &PrivacyRequest, s: &Step<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE privacy_requests SET state = $3, updated_at = now(), \
         key_ids = COALESCE($4, key_ids), records_affected = COALESCE($5, records_affected), \
         scrub_again_at = COALESCE($6, scrub_again_at), \
         attestation_event_id = COALESCE($7, attestation_event_id), \
         detail = COALESCE($8, detail), \
         subject_id = CASE WHEN $9 THEN NULL ELSE subject_id END, \
         export_id = COALESCE($10, export_id) \
         WHERE tenant_id = $1 AND request_id = $2",
    )
    .bind(&r.tenant_id)
    .bind(&r.request_id)
    .bind(s.state)
    .bind(s.key_ids)
    .bind(s.records_affected)
    .bind(s.scrub_again_at)
    .bind(s.attestation_event_id)
    .bind(s.detail)
    .bind(s.forget_subject)
    .bind(s.export_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// What a scrub of some keys finds in the tenant's read model ([`scrub_plan`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubPlan {
    /// Records that name one of the keys.
    pub named: i64,
    /// Records that show a value of the keys in clear and nothing else sealed: scrubbed in
    /// place ([`scrub_in_place`]).
    pub in_place: Vec<String>,
    /// Records that also show values of other keys in clear, or were projected before
    /// migration 0010: derived again from their bytes ([`records_by_id`]).
    pub rederive: Vec<String>,
}

/// Which of the tenant's records naming one of `kids` a scrub of them still has to write, and
/// how. A record none of whose clear values was opened by `kids` (scrubbed already, or
/// projected without them) needs nothing, so a second scrub finds only what was projected
/// since the first.
pub async fn scrub_plan(
    pool: &PgPool,
    tenant: &str,
    kids: &[String],
) -> Result<ScrubPlan, StoreError> {
    let rows: Vec<(String, Option<bool>)> = sqlx::query_as(
        "SELECT record_id, \
                CASE WHEN sealed IS NULL THEN true \
                     WHEN sealed ?| $2::text[] THEN (sealed - $2::text[]) <> '{}'::jsonb \
                END AS rederive \
         FROM records WHERE tenant_id = $1 AND kids ?| $2::text[]",
    )
    .bind(tenant)
    .bind(kids)
    .fetch_all(pool)
    .await?;
    let mut plan = ScrubPlan {
        named: i64::try_from(rows.len()).unwrap_or(i64::MAX),
        ..ScrubPlan::default()
    };
    for (id, rederive) in rows {
        match rederive {
            Some(true) => plan.rederive.push(id),
            Some(false) => plan.in_place.push(id),
            None => {}
        }
    }
    Ok(plan)
}

/// Scrubs the tenant's records `ids` in place, in one statement. Their only clear values were
/// opened by `kids` ([`scrub_plan`]), so the row gives up every clear copy: `data_view` (read
/// as the record with its sealed values erased), `private_text`, and every filter column
/// holding a sealed value (classification personal or sensitive) — what
/// [`crate::projection::RecordRow`] derives from the record without the keys. Rows that no
/// longer show a value of `kids` are left alone. Returns how many were written.
pub async fn scrub_in_place(
    pool: &PgPool,
    tenant: &str,
    kids: &[String],
    ids: &[String],
) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE records SET \
             data_view = NULL, \
             sealed = '{}'::jsonb, \
             private_text = '', \
             actor_id = CASE WHEN actor_id_class >= 3 THEN '' ELSE actor_id END, \
             action = CASE WHEN action_class >= 3 THEN '' ELSE action END, \
             resource_type = CASE WHEN resource_type_class >= 3 THEN '' ELSE resource_type END, \
             resource_id = CASE WHEN resource_id_class >= 3 THEN '' ELSE resource_id END \
         WHERE tenant_id = $1 AND record_id = ANY($3::text[]) AND sealed ?| $2::text[] \
           AND (sealed - $2::text[]) = '{}'::jsonb",
    )
    .bind(tenant)
    .bind(kids)
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The tenant's records `ids`, as stored.
pub async fn records_by_id(
    pool: &PgPool,
    tenant: &str,
    ids: &[String],
) -> Result<Vec<StoredBytes>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT record, ledger_seq, ingress_seq FROM records \
         WHERE tenant_id = $1 AND record_id = ANY($2::text[]) ORDER BY ledger_seq",
    )
    .bind(tenant)
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// A stored record to read again: its bytes and where it came from on the ledger.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredBytes {
    pub record: Vec<u8>,
    pub ledger_seq: i64,
    pub ingress_seq: Option<i64>,
}

/// Replaces rows with ones derived again from the same records (with fewer keys): their clear
/// values give way to erased markers. One transaction.
pub async fn replace_rows(pool: &PgPool, rows: &[RecordRow]) -> Result<u64, StoreError> {
    let mut tx = pool.begin().await?;
    let tenants: Vec<String> = rows.iter().map(|r| r.tenant_id.clone()).collect();
    let ids: Vec<String> = rows.iter().map(|r| r.record_id.clone()).collect();
    sqlx::query(
        "DELETE FROM records r USING UNNEST($1::text[], $2::text[]) AS d(t, i) \
         WHERE r.tenant_id = d.t AND r.record_id = d.i",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let n = crate::projection::insert_records(&mut tx, Target::Live, rows).await?;
    tx.commit().await?;
    Ok(n)
}

/// Deletes the tenant's rejection rows whose event names `subject` at `path` (JSON path of
/// the subject pointer inside the stored envelope's `event.data`). Returns how many.
pub async fn forget_rejections_of(
    pool: &PgPool,
    tenant: &str,
    path: &[String],
    subject: &str,
) -> Result<u64, StoreError> {
    let mut full = vec!["event".to_owned(), "data".to_owned()];
    full.extend(path.iter().cloned());
    let done = sqlx::query(
        "DELETE FROM rejections WHERE tenant_id = $1 \
         AND convert_from(envelope, 'UTF8')::jsonb #>> $2::text[] = $3",
    )
    .bind(tenant)
    .bind(&full)
    .bind(subject)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A legal hold as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegalHold {
    #[serde(skip)]
    pub tenant_id: String,
    pub hold_id: String,
    pub subject_id: Option<String>,
    pub source_id: Option<String>,
    pub from_at: Option<DateTime<Utc>>,
    pub to_at: Option<DateTime<Utc>>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub released_by: Option<String>,
    pub released_at: Option<DateTime<Utc>>,
}

const HOLD_COLUMNS: &str = "tenant_id, hold_id, subject_id, source_id, from_at, to_at, reason, \
     created_by, created_at, released_by, released_at";

pub async fn create_hold(db: impl sqlx::PgExecutor<'_>, h: &LegalHold) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO legal_holds (tenant_id, hold_id, subject_id, source_id, from_at, to_at, \
         reason, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&h.tenant_id)
    .bind(&h.hold_id)
    .bind(&h.subject_id)
    .bind(&h.source_id)
    .bind(h.from_at)
    .bind(h.to_at)
    .bind(&h.reason)
    .bind(&h.created_by)
    .execute(db)
    .await?;
    Ok(())
}

/// The tenant's holds, newest first; released ones too when `all`.
pub async fn holds(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    all: bool,
) -> Result<Vec<LegalHold>, StoreError> {
    let sql = format!(
        "SELECT {HOLD_COLUMNS} FROM legal_holds WHERE tenant_id = $1 \
         AND ($2 OR released_at IS NULL) ORDER BY created_at DESC, hold_id DESC LIMIT 1000"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(all)
        .fetch_all(db)
        .await?)
}

/// Releases an active hold; `false` if there is none by that id.
pub async fn release_hold(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    hold_id: &str,
    by: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE legal_holds SET released_at = now(), released_by = $3 \
         WHERE tenant_id = $1 AND hold_id = $2 AND released_at IS NULL",
    )
    .bind(tenant)
    .bind(hold_id)
    .bind(by)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The active holds naming `subject`.
pub async fn holds_on_subject(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    subject: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT hold_id FROM legal_holds WHERE tenant_id = $1 AND subject_id = $2 \
         AND released_at IS NULL ORDER BY created_at",
    )
    .bind(tenant)
    .bind(subject)
    .fetch_all(db)
    .await?)
}

/// Of `kids`, those some active source or time-range hold covers (a record naming the key lies
/// in its scope), with the hold: what neither erasure nor retention may destroy.
pub async fn held_keys(
    pool: &PgPool,
    tenant: &str,
    kids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT k.kid, h.hold_id FROM records r \
         CROSS JOIN LATERAL jsonb_array_elements_text(r.kids) AS k(kid) \
         JOIN legal_holds h ON h.tenant_id = r.tenant_id AND h.released_at IS NULL \
           AND h.subject_id IS NULL \
           AND (h.source_id IS NULL OR h.source_id = r.source_id) \
           AND (h.from_at IS NULL OR r.occurred_at >= h.from_at) \
           AND (h.to_at IS NULL OR r.occurred_at < h.to_at) \
         WHERE r.tenant_id = $1 AND r.kids ?| $2::text[] AND k.kid = ANY($2::text[]) \
         ORDER BY 1, 2",
    )
    .bind(tenant)
    .bind(kids)
    .fetch_all(pool)
    .await?)
}

/// The active holds naming any subject (retention keeps their keys whole).
pub async fn held_subjects(pool: &PgPool, tenant: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT subject_id FROM legal_holds WHERE tenant_id = $1 \
         AND released_at IS NULL AND subject_id IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(pool)
    .await?)
}

/// Live subject keys whose bucket has ended, by tenant, retention policy and bucket: what
/// retention looks at (whether each has expired depends on its policy's duration).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyGroup {
    pub tenant_id: String,
    pub retention_policy_id: String,
    pub bucket: String,
    pub bucket_end: DateTime<Utc>,
    pub kids: Vec<String>,
}

pub async fn ended_key_groups(pool: &PgPool) -> Result<Vec<KeyGroup>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, retention_policy_id, bucket, bucket_end, array_agg(kid ORDER BY kid) AS kids \
         FROM subject_keys WHERE destroyed_at IS NULL AND bucket_end <= now() \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 4, 2",
    )
    .fetch_all(pool)
    .await?)
}

/// Marks keys destroyed (by erasure or retention).
pub async fn keys_destroyed(
    pool: &PgPool,
    tenant: &str,
    kids: &[String],
    by: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE subject_keys SET destroyed_at = COALESCE(destroyed_at, now()), \
         destroyed_by = COALESCE(destroyed_by, $3) WHERE tenant_id = $1 AND kid = ANY($2)",
    )
    .bind(tenant)
    .bind(kids)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keys retention destroyed whose expiry no attestation names yet (a crash came between).
pub async fn unattested_expiries(pool: &PgPool) -> Result<Vec<KeyGroup>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, retention_policy_id, bucket, bucket_end, array_agg(kid ORDER BY kid) AS kids \
         FROM subject_keys WHERE destroyed_by = 'retention' AND attested_in IS NULL \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 4, 2",
    )
    .fetch_all(pool)
    .await?)
}

pub async fn expiries_attested(
    pool: &PgPool,
    tenant: &str,
    kids: &[String],
    event_id: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE subject_keys SET attested_in = $3 WHERE tenant_id = $1 AND kid = ANY($2)")
        .bind(tenant)
        .bind(kids)
        .bind(event_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Keys destroyed since `since`, by tenant: scrubbed again until every process's key cache has
/// let them go.
pub async fn destroyed_since(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<(String, Vec<String>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, array_agg(kid ORDER BY kid) FROM subject_keys \
         WHERE destroyed_at >= $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(since)
    .fetch_all(pool)
    .await?)
}

/// Stored bundles of the tenant that disclose a value sealed under one of `kids`, not yet
/// withdrawn: `(export id, object key)`.
pub async fn bundles_disclosing(
    pool: &PgPool,
    tenant: &str,
    kids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT export_id, object_key FROM exports WHERE tenant_id = $1 \
         AND disclosed_kids ?| $2::text[] AND withdrawn_at IS NULL AND object_key IS NOT NULL",
    )
    .bind(tenant)
    .bind(kids)
    .fetch_all(pool)
    .await?)
}

/// Records that a bundle was withdrawn (deleted from the cold store).
pub async fn bundle_withdrawn(pool: &PgPool, export_id: &str) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE exports SET withdrawn_at = COALESCE(withdrawn_at, now()) WHERE export_id = $1",
    )
    .bind(export_id)
    .execute(pool)
    .await?;
    Ok(())
}
