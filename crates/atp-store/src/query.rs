//! The read side: record and rejection queries behind `/api/v1/audit/*`.
//!
//! Every query takes the tenant explicitly; there is no query without one.

use atp_core::Digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::StoreError;

pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

/// What `GET /audit/records` and `POST /exports` select by (CONTRACT §5).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// The classifications (0 public .. 4 sensitive, `Classification::index`) a caller reads in
/// clear: filters and `q` match only on values of these (CONTRACT §8, no oracle).
pub type Readable = Vec<i16>;

/// Every classification: what a caller who reads everything in clear filters on.
pub fn read_all() -> Readable {
    (0..atp_core::policy::Classification::ALL.len() as i16).collect()
}

/// The [`Readable`] of a set of classifications.
pub fn readable(classes: &[atp_core::policy::Classification]) -> Readable {
    classes.iter().map(|c| c.index() as i16).collect()
}

impl Selection {
    /// Appends ` AND …` for every filter set, each matching only where `readable` covers the
    /// value's classification.
    pub(crate) fn push_where(&self, qb: &mut QueryBuilder<Postgres>, readable: &Readable) {
        if let Some(v) = self.from {
            qb.push(" AND occurred_at >= ").push_bind(v);
        }
        if let Some(v) = self.to {
            qb.push(" AND occurred_at < ").push_bind(v);
        }
        if let Some(v) = &self.source_id {
            qb.push(" AND source_id = ").push_bind(v.clone());
        }
        for (col, v) in [
            ("actor_id", &self.actor_id),
            ("action", &self.action),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
        ] {
            if let Some(v) = v {
                qb.push(format!(" AND {col} = "))
                    .push_bind(v.clone())
                    .push(format!(" AND {col}_class = ANY("))
                    .push_bind(readable.clone())
                    .push(")");
            }
        }
        if let Some(q) = &self.q {
            let public = readable.contains(&0) && readable.contains(&1) && readable.contains(&2);
            let private = readable.contains(&3) && readable.contains(&4);
            let pattern = like_pattern(q);
            match (public, private) {
                (true, true) => {
                    qb.push(" AND (attributes_text LIKE ")
                        .push_bind(pattern.clone())
                        .push(" OR private_text LIKE ")
                        .push_bind(pattern)
                        .push(")");
                }
                (true, false) => {
                    qb.push(" AND attributes_text LIKE ").push_bind(pattern);
                }
                (false, true) => {
                    qb.push(" AND private_text LIKE ").push_bind(pattern);
                }
                (false, false) => {
                    qb.push(" AND false");
                }
            }
        }
    }
}

/// A page of `GET /audit/records`.
#[derive(Debug, Clone, Default)]
pub struct RecordFilter {
    pub selection: Selection,
    /// What the caller reads in clear ([`Readable`]).
    pub readable: Readable,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// A keyset position: the (occurredAt, recordId) of the last row of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub micros: i64,
    pub id: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}|{}", self.micros, self.id))
    }
    pub fn decode(s: &str) -> Result<Self, StoreError> {
        let raw = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| StoreError::BadCursor)?;
        let text = String::from_utf8(raw).map_err(|_| StoreError::BadCursor)?;
        let (m, id) = text.split_once('|').ok_or(StoreError::BadCursor)?;
        Ok(Self {
            micros: m.parse().map_err(|_| StoreError::BadCursor)?,
            id: id.to_owned(),
        })
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredRecord {
    pub tenant_id: String,
    pub record_id: String,
    pub source_id: String,
    pub chain_index: i64,
    pub occurred_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    #[sqlx(try_from = "Vec<u8>")]
    pub digest: Digest,
    #[sqlx(try_from = "Vec<u8>")]
    pub chain_hash: Digest,
    pub ledger_seq: i64,
    pub record: Vec<u8>,
    /// JSON Pointer → classification of every value not `internal` (migration 0008).
    pub field_classes: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    /// The data with sealed values opened, `{"erased": true}` where their key is gone; `None`
    /// when the record seals nothing.
    pub data_view: Option<sqlx::types::Json<serde_json::Value>>,
}

const RECORD_COLUMNS: &str = "tenant_id, record_id, source_id, chain_index, occurred_at, committed_at, digest, chain_hash, ledger_seq, record, field_classes, data_view";

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Queries ask for `limit + 1` rows: the extra one only says there is a next page, which
    /// then starts after the last row shown.
    fn of(mut items: Vec<T>, limit: i64, cursor: impl Fn(&T) -> Cursor) -> Self {
        let more = items.len() as i64 > limit;
        items.truncate(usize::try_from(limit).unwrap_or(0));
        let next_cursor = if more {
            items.last().map(|r| cursor(r).encode())
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

pub async fn records(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    f: &RecordFilter,
) -> Result<Page<StoredRecord>, StoreError> {
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    if f.selection.q.is_some() {
        let mut qb = search(
            &format!("SELECT {RECORD_COLUMNS} FROM atp_search_records("),
            tenant,
            f,
            limit,
        )?;
        let items: Vec<StoredRecord> = qb.build_query_as().fetch_all(db).await?;
        return Ok(Page::of(items, limit, record_cursor));
    }
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = "
    ));
    qb.push_bind(tenant.to_owned());
    f.selection.push_where(&mut qb, &f.readable);
    if let Some(c) = &f.cursor {
        let c = Cursor::decode(c)?;
        let at = DateTime::<Utc>::from_timestamp_micros(c.micros).ok_or(StoreError::BadCursor)?;
        qb.push(" AND (occurred_at, record_id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(c.id)
            .push(")");
    }
    qb.push(" ORDER BY occurred_at DESC, record_id DESC LIMIT ")
        .push_bind(limit + 1);
    let items: Vec<StoredRecord> = qb.build_query_as().fetch_all(db).await?;
    Ok(Page::of(items, limit, record_cursor))
}

fn record_cursor(r: &StoredRecord) -> Cursor {
    Cursor {
        micros: r.occurred_at.timestamp_micros(),
        id: r.record_id.clone(),
    }
}

/// The `LIKE` pattern of a `q`: a substring of the lower-cased attribute values, with LIKE's
/// own characters taken literally.
fn like_pattern(q: &str) -> String {
    let escaped = q
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A call of `head` (`atp_search_records(` or `atp_search_records_plan(`) with a page's values.
///
/// A search goes through that function (migration 0007) because the gateway's role, under
/// row-level security, cannot use the trigram index on `attributes_text` by itself: the policy
/// runs before `LIKE`, which is not leakproof. The function shows the same rows the policy
/// would, and lets the planner use the index.
fn search(
    head: &str,
    tenant: &str,
    f: &RecordFilter,
    limit: i64,
) -> Result<QueryBuilder<Postgres>, StoreError> {
    let sel = &f.selection;
    let cursor = f.cursor.as_deref().map(Cursor::decode).transpose()?;
    let after_at = cursor
        .as_ref()
        .map(|c| DateTime::<Utc>::from_timestamp_micros(c.micros).ok_or(StoreError::BadCursor))
        .transpose()?;
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(head);
    let mut args = qb.separated(", ");
    args.push_bind(tenant.to_owned())
        .push_bind(like_pattern(sel.q.as_deref().unwrap_or_default()))
        .push_bind(sel.from)
        .push_bind(sel.to)
        .push_bind(sel.source_id.clone())
        .push_bind(sel.actor_id.clone())
        .push_bind(sel.action.clone())
        .push_bind(sel.resource_type.clone())
        .push_bind(sel.resource_id.clone())
        .push_bind(after_at)
        .push_bind(cursor.map(|c| c.id))
        .push_bind(limit + 1)
        .push_bind(f.readable.clone());
    qb.push(")");
    Ok(qb)
}

/// The plan PostgreSQL makes for the search [`records`] runs with this filter, as its owner
/// sees it (EXPLAIN lines). For tests and operators; the gateway's role may not call it.
pub async fn records_search_plan(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    f: &RecordFilter,
) -> Result<Vec<String>, StoreError> {
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut qb = search("SELECT * FROM atp_search_records_plan(", tenant, f, limit)?;
    Ok(qb.build_query_scalar().fetch_all(db).await?)
}

pub async fn record(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    record_id: &str,
) -> Result<Option<StoredRecord>, StoreError> {
    let sql =
        format!("SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = $1 AND record_id = $2");
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(record_id)
        .fetch_optional(db)
        .await?)
}

/// A partition's records with chain index in `[from, to)`, in chain order.
pub async fn records_by_chain(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    source: &str,
    from: u64,
    to: u64,
) -> Result<Vec<StoredRecord>, StoreError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = $1 AND source_id = $2 \
         AND chain_index >= $3 AND chain_index < $4 ORDER BY chain_index"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(source)
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .bind(i64::try_from(to).unwrap_or(i64::MAX))
        .fetch_all(db)
        .await?)
}

pub async fn record_by_event(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    source: &str,
    event_id: &str,
) -> Result<Option<StoredRecord>, StoreError> {
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM records WHERE tenant_id = $1 AND source_id = $2 AND event_id = $3 \
         ORDER BY chain_index LIMIT 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(source)
        .bind(event_id)
        .fetch_optional(db)
        .await?)
}

/// A record already holding an idempotency key (`tenant:source:id`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KnownEvent {
    pub tenant_id: String,
    pub source_id: String,
    pub event_id: String,
    pub record_id: String,
    pub chain_index: i64,
    #[sqlx(try_from = "Vec<u8>")]
    pub digest: Digest,
    /// The record's bytes: a repeat is compared with the event they hold.
    pub record: Vec<u8>,
}

/// Which of these idempotency keys already have a record: one round trip for a whole batch,
/// each key an index probe on `records_by_event`.
pub async fn known_events(
    pool: &PgPool,
    keys: &[(String, String, String)],
) -> Result<Vec<KnownEvent>, StoreError> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (t, rest): (Vec<String>, Vec<(String, String)>) = keys
        .iter()
        .map(|(t, s, e)| (t.clone(), (s.clone(), e.clone())))
        .unzip();
    let (s, e): (Vec<String>, Vec<String>) = rest.into_iter().unzip();
    Ok(sqlx::query_as(
        "SELECT r.tenant_id, r.source_id, r.event_id, r.record_id, r.chain_index, r.digest, r.record \
         FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(t, s, e) \
         JOIN records r ON r.tenant_id = k.t AND r.source_id = k.s AND r.event_id = k.e",
    )
    .bind(t)
    .bind(s)
    .bind(e)
    .fetch_all(pool)
    .await?)
}

/// A rejection as stored: the same row the projector writes.
pub type StoredRejection = crate::projection::RejectionRow;

#[derive(Debug, Clone, Default)]
pub struct RejectionFilter {
    pub source_id: Option<String>,
    pub reason: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The most rejection bytes one page carries (envelopes as stored), besides `limit`: 4 MiB
/// crosses a 100 Mbit/s link in a third of a second and is what a client parses without
/// thinking about memory, while an envelope is at most 768 KiB (ADR 0013), so a page always
/// holds at least five. Without it a page of 1,000 envelopes could be a gigabyte, read into
/// the gateway's memory at once. A page cut short by it has a `nextCursor`, like one cut by
/// `limit`.
pub const REJECTION_PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// A rejection row with what the page query adds to it.
#[derive(sqlx::FromRow)]
struct BudgetedRejection {
    #[sqlx(flatten)]
    row: StoredRejection,
    /// Rows the query's `LIMIT` let through, before the byte budget.
    selected: i64,
}

pub async fn rejections(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    f: &RejectionFilter,
) -> Result<Page<StoredRejection>, StoreError> {
    rejections_within(db, tenant, f, REJECTION_PAGE_BYTES).await
}

/// A page of rejections of at most `f.limit` rows and about `budget` bytes of envelopes: rows
/// are taken, newest first, while the bytes before them are under the budget (so at least
/// one, and the last may pass it by its own size). PostgreSQL applies the budget, so rows past
/// it never leave the database.
pub async fn rejections_within(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    f: &RejectionFilter,
    budget: i64,
) -> Result<Page<StoredRejection>, StoreError> {
    let limit = f.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let mut qb: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT rejected_seq, tenant_id, source_id, ingress_seq, reason, detail, event_id, received_at, rejected_at, envelope, selected \
         FROM (SELECT *, \
                 sum(octet_length(envelope)) OVER (ORDER BY rejected_at DESC, rejected_seq DESC) - octet_length(envelope) AS before, \
                 count(*) OVER () AS selected \
               FROM (SELECT rejected_seq, tenant_id, source_id, ingress_seq, reason, detail, event_id, received_at, rejected_at, envelope \
                     FROM rejections WHERE tenant_id = ",
    );
    qb.push_bind(tenant.to_owned());
    if let Some(v) = &f.source_id {
        qb.push(" AND source_id = ").push_bind(v.clone());
    }
    if let Some(v) = &f.reason {
        qb.push(" AND reason = ").push_bind(v.clone());
    }
    if let Some(v) = f.from {
        qb.push(" AND rejected_at >= ").push_bind(v);
    }
    if let Some(v) = f.to {
        qb.push(" AND rejected_at < ").push_bind(v);
    }
    if let Some(c) = &f.cursor {
        let c = Cursor::decode(c)?;
        let at = DateTime::<Utc>::from_timestamp_micros(c.micros).ok_or(StoreError::BadCursor)?;
        let seq: i64 = c.id.parse().map_err(|_| StoreError::BadCursor)?;
        qb.push(" AND (rejected_at, rejected_seq) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(seq)
            .push(")");
    }
    qb.push(" ORDER BY rejected_at DESC, rejected_seq DESC LIMIT ")
        .push_bind(limit + 1)
        .push(") AS page) AS budgeted WHERE before < ")
        .push_bind(budget.max(1))
        .push(" ORDER BY rejected_at DESC, rejected_seq DESC");
    let rows: Vec<BudgetedRejection> = qb.build_query_as().fetch_all(db).await?;
    let selected = rows.first().map_or(0, |r| r.selected);
    let kept = i64::try_from(rows.len()).unwrap_or(i64::MAX);
    let items: Vec<StoredRejection> = rows.into_iter().map(|r| r.row).collect();
    let cursor = |r: &StoredRejection| Cursor {
        micros: r.rejected_at.timestamp_micros(),
        id: r.rejected_seq.to_string(),
    };
    if kept < selected {
        // Cut by the budget: the next page starts after the last row shown.
        let next_cursor = items.last().map(|r| cursor(r).encode());
        return Ok(Page { items, next_cursor });
    }
    Ok(Page::of(items, limit, cursor))
}

pub async fn rejection_by_ingress(
    db: impl sqlx::PgExecutor<'_>,
    tenant: &str,
    ingress_seq: u64,
) -> Result<Option<StoredRejection>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT rejected_seq, tenant_id, source_id, ingress_seq, reason, detail, event_id, received_at, rejected_at, envelope \
         FROM rejections WHERE ingress_seq = $1 AND tenant_id = $2 LIMIT 1",
    )
    .bind(i64::try_from(ingress_seq).unwrap_or(i64::MAX))
    .bind(tenant)
    .fetch_optional(db)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_is_a_literal_substring_of_the_lower_cased_values() {
        assert_eq!(like_pattern("Web Portal"), "%web portal%");
        assert_eq!(like_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            micros: 1_763_900_000_000_000,
            id: "01JD".to_owned(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        assert!(Cursor::decode("not base64!").is_err());
        assert!(Cursor::decode(&URL_SAFE_NO_PAD.encode("nopipe")).is_err());
    }
}
