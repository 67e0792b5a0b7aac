//! Export jobs (`exports`) and the record selection an export packages.
//!
//! Every query takes the tenant or the export id explicitly. The gateway admits requests under
//! a per-tenant lock so the concurrency cap holds with any number of gateways.

use atp_core::PartitionKey;
use atp_core::edition::Edition;
use atp_core::policy::Classification;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, QueryBuilder, Transaction};

use crate::StoreError;
use crate::query::{Readable, Selection};

/// Where an export is (the `exports.status` column and the API's `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl ExportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    /// Completed or failed: the outcome sticks (ADR 0005).
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

impl std::fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status the table's CHECK constraint would not have let in.
#[derive(Debug, thiserror::Error)]
#[error("unknown export status {0:?}")]
pub struct UnknownExportStatus(String);

impl TryFrom<String> for ExportStatus {
    type Error = UnknownExportStatus;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Ok(match s.as_str() {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            _ => return Err(UnknownExportStatus(s)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExportRow {
    pub export_id: String,
    pub tenant_id: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub selection: serde_json::Value,
    pub format: String,
    #[sqlx(try_from = "String")]
    pub status: ExportStatus,
    pub snapshot: Option<serde_json::Value>,
    pub created_at: Option<DateTime<Utc>>,
    pub records_total: Option<i64>,
    pub records_done: i64,
    pub attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub object_key: Option<String>,
    pub bytes: Option<i64>,
    pub bundle_sha256: Option<String>,
    pub manifest_sha256: Option<String>,
    pub record_count: Option<i64>,
    pub failure_code: Option<String>,
    pub failure_detail: Option<String>,
    pub webhook_status: Option<String>,
    pub webhook_attempts: i32,
    pub webhook_next_at: Option<DateTime<Utc>>,
    pub webhook_error: Option<String>,
    pub webhook_at: Option<DateTime<Utc>>,
    /// The edition the export was requested under.
    pub edition: String,
    /// What the requester reads in clear (classification names); `None` before disclosures.
    pub readable: Option<Vec<String>>,
    /// A data-subject access export: the subject's key ids.
    pub subject_keys: Option<Vec<String>>,
}

impl ExportRow {
    /// The edition the export was requested under (standard if unreadable: the least).
    pub fn edition(&self) -> Edition {
        Edition::parse(&self.edition).unwrap_or_default()
    }

    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// The classifications the requester reads in clear: what was stored with the request, or
    /// for a request made before disclosures what every permission reads by default (public,
    /// internal, confidential: nothing sealed, so nothing disclosed).
    pub fn readable(&self) -> Vec<Classification> {
        match &self.readable {
            Some(names) => names
                .iter()
                .filter_map(|n| Classification::parse(n))
                .collect(),
            None => Classification::ALL
                .into_iter()
                .filter(|c| !c.is_encrypted())
                .collect(),
        }
    }

    /// What the export selects: its filters, matched only on values its requester reads, and
    /// for an access export only the records naming the subject's keys.
    pub fn selection(&self) -> Result<ExportSelection, serde_json::Error> {
        Ok(ExportSelection {
            filters: serde_json::from_value(self.selection.clone())?,
            readable: crate::query::readable(&self.readable()),
            subject_keys: self.subject_keys.clone(),
        })
    }
}

/// What an export packages, as the store selects it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSelection {
    /// The `/audit/records` filters the requester gave.
    pub filters: Selection,
    /// What the requester reads in clear: a filter matches only where it reads the value it
    /// filters on (no oracle, CONTRACT §8), as on `/audit/records`.
    pub readable: Readable,
    /// A data-subject access export: only records naming one of these keys.
    pub subject_keys: Option<Vec<String>>,
}

/// What `atp.export.requested.<tenant>` carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportRequest {
    pub export_id: String,
    pub tenant_id: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub selection: Selection,
    pub format: String,
    /// The requester's edition, re-checked by the exporter before it delivers a webhook.
    #[serde(default)]
    pub edition: Edition,
    /// What the requester reads in clear under the tenant's policy when it asked (CONTRACT
    /// §8): the filters match, and the bundle discloses sealed values, only of these. Absent
    /// from requests made before disclosures ([`ExportRow::readable`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readable: Option<Vec<Classification>>,
    /// A data-subject access request's export: only records naming one of these subject keys,
    /// and only the values sealed under them disclosed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_keys: Option<Vec<String>>,
}

/// One partition of an export's snapshot: its records below `tree_size` are the candidates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotPart {
    pub source_id: String,
    pub tree_size: u64,
}

const COLUMNS: &str = "export_id, tenant_id, requested_by, requested_at, selection, format, status, \
    snapshot, created_at, records_total, records_done, attempts, started_at, finished_at, object_key, \
    bytes, bundle_sha256, manifest_sha256, record_count, failure_code, failure_detail, webhook_status, \
    webhook_attempts, webhook_next_at, webhook_error, webhook_at, edition, readable, subject_keys";

/// A tenant's exports, locked against concurrent admission until [`Self::admit`] or drop.
pub struct TenantExports {
    tx: Transaction<'static, Postgres>,
    /// Exports of the tenant queued or running.
    pub active: i64,
}

/// Takes the tenant's admission lock (a transaction-scoped advisory lock) and counts its active
/// exports. Between this and [`TenantExports::admit`] the caller publishes the request.
pub async fn lock_tenant(pool: &PgPool, tenant: &str) -> Result<TenantExports, StoreError> {
    let mut tx = crate::tenant_tx(pool, tenant).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('atp.exports:' || $1, 0))")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM exports WHERE tenant_id = $1 AND status IN ('queued', 'running')",
    )
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    Ok(TenantExports { tx, active })
}

impl TenantExports {
    pub async fn admit(mut self, r: &ExportRequest) -> Result<(), StoreError> {
        insert_request(&mut self.tx, r).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

async fn insert_request(
    conn: &mut sqlx::PgConnection,
    r: &ExportRequest,
) -> Result<(), StoreError> {
    let selection = serde_json::to_value(&r.selection)
        .map_err(|e| StoreError::Corrupt(format!("selection: {e}")))?;
    let readable: Option<Vec<&str>> = r
        .readable
        .as_ref()
        .map(|cs| cs.iter().map(|c| c.as_str()).collect());
    sqlx::query(
        "INSERT INTO exports (export_id, tenant_id, requested_by, requested_at, selection, format, \
         edition, readable, subject_keys) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (export_id) DO NOTHING",
    )
    .bind(&r.export_id)
    .bind(&r.tenant_id)
    .bind(&r.requested_by)
    .bind(r.requested_at)
    .bind(selection)
    .bind(&r.format)
    .bind(r.edition.as_str())
    .bind(readable)
    .bind(&r.subject_keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Projects a request event: the row, unless the gateway already wrote it.
pub async fn record_request(pool: &PgPool, r: &ExportRequest) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    insert_request(&mut conn, r).await
}

pub async fn get(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    id: &str,
) -> Result<Option<ExportRow>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM exports WHERE tenant_id = $1 AND export_id = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(db)
        .await?)
}

/// The tenant's most recent exports, newest first.
pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    limit: i64,
) -> Result<Vec<ExportRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM exports WHERE tenant_id = $1 ORDER BY requested_at DESC, export_id DESC LIMIT $2"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(limit.clamp(1, 100))
        .fetch_all(db)
        .await?)
}

/// Marks an attempt at packaging; a finished export is returned unchanged.
pub async fn start(pool: &PgPool, id: &str) -> Result<Option<ExportRow>, StoreError> {
    let sql = format!(
        "UPDATE exports SET status = 'running', attempts = attempts + 1, \
         started_at = coalesce(started_at, now()) \
         WHERE export_id = $1 AND status IN ('queued', 'running') RETURNING {COLUMNS}"
    );
    if let Some(row) = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
    {
        return Ok(Some(row));
    }
    let sql = format!("SELECT {COLUMNS} FROM exports WHERE export_id = $1");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// Fixes the snapshot, unless an earlier attempt already did; returns the one in force.
pub async fn fix_snapshot(
    pool: &PgPool,
    id: &str,
    snapshot: &[SnapshotPart],
    created_at: DateTime<Utc>,
    total: u64,
) -> Result<(Vec<SnapshotPart>, DateTime<Utc>), StoreError> {
    let value = serde_json::to_value(snapshot)
        .map_err(|e| StoreError::Corrupt(format!("snapshot: {e}")))?;
    let (stored, at): (serde_json::Value, DateTime<Utc>) = sqlx::query_as(
        "WITH fixed AS (UPDATE exports SET snapshot = $2, created_at = $3, records_total = $4 \
         WHERE export_id = $1 AND snapshot IS NULL RETURNING snapshot, created_at) \
         SELECT snapshot, created_at FROM fixed \
         UNION ALL SELECT snapshot, created_at FROM exports WHERE export_id = $1 AND snapshot IS NOT NULL \
         LIMIT 1",
    )
    .bind(id)
    .bind(value)
    .bind(created_at)
    .bind(i64::try_from(total).unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await?;
    let parts = serde_json::from_value(stored)
        .map_err(|e| StoreError::Corrupt(format!("export {id} snapshot: {e}")))?;
    Ok((parts, at))
}

pub async fn progress(pool: &PgPool, id: &str, done: u64) -> Result<(), StoreError> {
    sqlx::query("UPDATE exports SET records_done = $2 WHERE export_id = $1 AND status = 'running'")
        .bind(id)
        .bind(i64::try_from(done).unwrap_or(i64::MAX))
        .execute(pool)
        .await?;
    Ok(())
}

/// A finished bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Completed {
    pub object_key: String,
    pub bytes: u64,
    pub bundle_sha256: String,
    pub manifest_sha256: String,
    pub record_count: u64,
    /// The subject keys whose values the bundle discloses.
    #[serde(default)]
    pub disclosed_kids: Vec<String>,
}

/// How an export ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Completed(Completed),
    Failed { code: String, detail: String },
}

/// Records the end of an export (idempotent: the first outcome stays). With `webhook`, a
/// delivery is queued.
pub async fn finish(
    pool: &PgPool,
    id: &str,
    outcome: &Outcome,
    webhook: bool,
) -> Result<(), StoreError> {
    let webhook = webhook.then_some("pending");
    match outcome {
        Outcome::Completed(c) => {
            sqlx::query(
                "UPDATE exports SET status = 'completed', finished_at = now(), object_key = $2, \
                 bytes = $3, bundle_sha256 = $4, manifest_sha256 = $5, record_count = $6, \
                 records_done = $6, webhook_status = $7, webhook_next_at = now(), \
                 disclosed_kids = $8 \
                 WHERE export_id = $1 AND status NOT IN ('completed', 'failed')",
            )
            .bind(id)
            .bind(&c.object_key)
            .bind(i64::try_from(c.bytes).unwrap_or(i64::MAX))
            .bind(&c.bundle_sha256)
            .bind(&c.manifest_sha256)
            .bind(i64::try_from(c.record_count).unwrap_or(i64::MAX))
            .bind(webhook)
            .bind(sqlx::types::Json(&c.disclosed_kids))
            .execute(pool)
            .await?;
        }
        Outcome::Failed { code, detail } => {
            sqlx::query(
                "UPDATE exports SET status = 'failed', finished_at = now(), failure_code = $2, \
                 failure_detail = $3, webhook_status = $4, webhook_next_at = now() \
                 WHERE export_id = $1 AND status NOT IN ('completed', 'failed')",
            )
            .bind(id)
            .bind(code)
            .bind(detail)
            .bind(webhook)
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// Exports whose webhook delivery is due.
pub async fn webhooks_due(pool: &PgPool, limit: i64) -> Result<Vec<ExportRow>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM exports WHERE webhook_status = 'pending' AND webhook_next_at <= now() \
         ORDER BY webhook_next_at LIMIT $1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(limit)
        .fetch_all(pool)
        .await?)
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Retry { at: DateTime<Utc>, error: String },
    GaveUp { error: String },
}

pub async fn webhook_attempted(
    pool: &PgPool,
    id: &str,
    delivery: &Delivery,
) -> Result<(), StoreError> {
    let (status, next, error): (&str, Option<DateTime<Utc>>, Option<&str>) = match delivery {
        Delivery::Delivered => ("delivered", None, None),
        Delivery::Retry { at, error } => ("pending", Some(*at), Some(error)),
        Delivery::GaveUp { error } => ("failed", None, Some(error)),
    };
    sqlx::query(
        "UPDATE exports SET webhook_status = $2, webhook_next_at = $3, webhook_error = $4, \
         webhook_attempts = webhook_attempts + 1, webhook_at = now() \
         WHERE export_id = $1 AND webhook_status = 'pending'",
    )
    .bind(id)
    .bind(status)
    .bind(next)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// A partition of the tenant as the integrity worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PartitionState {
    pub source_id: String,
    pub tree_size: i64,
    pub checkpoint_size: i64,
}

/// The tenant's partitions (one, with a source filter) and how far each is logged and signed.
pub async fn partitions(
    pool: &PgPool,
    tenant: &str,
    source: Option<&str>,
) -> Result<Vec<PartitionState>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT source_id, tree_size, checkpoint_size FROM merkle_logs \
         WHERE tenant_id = $1 AND ($2::text IS NULL OR source_id = $2) ORDER BY source_id",
    )
    .bind(tenant)
    .bind(source)
    .fetch_all(pool)
    .await?)
}

/// How many of the partition's first `size` records the read model holds: they are projected
/// in chain order, so it is one past the highest chain index below `size`.
pub async fn projected_below(
    pool: &PgPool,
    p: &PartitionKey,
    size: u64,
) -> Result<u64, StoreError> {
    let max: Option<i64> = sqlx::query_scalar(
        "SELECT max(chain_index) FROM records WHERE tenant_id = $1 AND source_id = $2 AND chain_index < $3",
    )
    .bind(p.tenant.as_str())
    .bind(p.source.as_str())
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .fetch_one(pool)
    .await?;
    Ok(max.map_or(0, |m| m as u64 + 1))
}

/// The newest checkpoint of at most `size` leaves.
pub async fn checkpoint_at_most(
    pool: &PgPool,
    p: &PartitionKey,
    size: u64,
) -> Result<Option<crate::integrity::StoredCheckpoint>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, source_id, tree_size, root, key_id, note, issued_at FROM checkpoints \
         WHERE tenant_id = $1 AND source_id = $2 AND tree_size <= $3 ORDER BY tree_size DESC LIMIT 1",
    )
    .bind(p.tenant.as_str())
    .bind(p.source.as_str())
    .bind(i64::try_from(size).unwrap_or(i64::MAX))
    .fetch_optional(pool)
    .await?)
}

fn selected_query(
    head: &str,
    p: &PartitionKey,
    sel: &ExportSelection,
    from_index: u64,
    below: u64,
) -> QueryBuilder<Postgres> {
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(head);
    qb.push(" FROM records WHERE tenant_id = ")
        .push_bind(p.tenant.to_string())
        .push(" AND source_id = ")
        .push_bind(p.source.to_string())
        .push(" AND chain_index >= ")
        .push_bind(i64::try_from(from_index).unwrap_or(i64::MAX))
        .push(" AND chain_index < ")
        .push_bind(i64::try_from(below).unwrap_or(i64::MAX));
    sel.filters.push_where(&mut qb, &sel.readable);
    if let Some(kids) = &sel.subject_keys {
        qb.push(" AND kids ?| ")
            .push_bind(kids.clone())
            .push("::text[]");
    }
    qb
}

/// What packaging needs of a record: where it sits, its stored digest, its bytes, and the
/// subject keys its sealed values name (what a disclosure needs).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PackagedRecord {
    pub chain_index: i64,
    pub digest: Vec<u8>,
    pub record: Vec<u8>,
    pub kids: sqlx::types::Json<Vec<String>>,
}

/// The selected records of a partition with chain index in `[from_index, below)`, in chain
/// order, at most `limit`: only the columns a bundle needs.
pub async fn selected(
    pool: &PgPool,
    p: &PartitionKey,
    sel: &ExportSelection,
    from_index: u64,
    below: u64,
    limit: i64,
) -> Result<Vec<PackagedRecord>, StoreError> {
    let mut qb = selected_query(
        "SELECT chain_index, digest, record, kids",
        p,
        sel,
        from_index,
        below,
    );
    qb.push(" ORDER BY chain_index LIMIT ").push_bind(limit);
    Ok(qb.build_query_as().fetch_all(pool).await?)
}

/// How many records of a partition below `below` the selection holds.
pub async fn count_selected(
    pool: &PgPool,
    p: &PartitionKey,
    sel: &ExportSelection,
    below: u64,
) -> Result<u64, StoreError> {
    let mut qb = selected_query("SELECT count(*)", p, sel, 0, below);
    let n: i64 = qb.build_query_scalar().fetch_one(pool).await?;
    Ok(n as u64)
}
