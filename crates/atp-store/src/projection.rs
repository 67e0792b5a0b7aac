//! Writing the read models: rows derived from ledger and rejected-stream messages, inserted in
//! batches with the watermark in the same transaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use atp_core::event::AuditFacets;
use atp_core::policy::{Classification, PolicyDocument};
use atp_core::privacy::{self, BucketKey, Place};
use atp_core::reason::RejectionEnvelope;
use atp_core::record;
use chrono::{DateTime, Utc};
use serde::Deserialize as _;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::StoreError;

pub const RECORDS: &str = "records";
/// PostgreSQL channel the projector notifies after each commit (what `Prefer: wait` waits on).
pub const NOTIFY_CHANNEL: &str = "atp_projected";
pub const REJECTIONS: &str = "rejections";

/// The table a batch goes to: the live one, or the one a replay is rebuilding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Live,
    Rebuild,
}

impl Target {
    fn records(self) -> &'static str {
        match self {
            Self::Live => "records",
            Self::Rebuild => "records_rebuild",
        }
    }
}

/// One `records` row, derived from one ledger message.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRow {
    pub tenant_id: String,
    pub record_id: String,
    pub source_id: String,
    pub chain_index: i64,
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    pub committed_at: DateTime<Utc>,
    pub actor_id: String,
    pub actor_type: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub outcome: Option<String>,
    pub classification: String,
    pub policy_version: i32,
    pub attributes_text: String,
    /// Attribute values classified personal or sensitive, joined like `attributes_text`.
    pub private_text: String,
    /// Classification index of actor id, action, resource type and resource id.
    pub actor_id_class: i16,
    pub action_class: i16,
    pub resource_type_class: i16,
    pub resource_id_class: i16,
    /// JSON Pointer → classification of every value not `internal`.
    pub field_classes: sqlx::types::Json<BTreeMap<String, String>>,
    /// The data with sealed values opened (or marked erased); `None` when no sealed value is
    /// shown in clear (readers then show each sealed value of the record as erased).
    pub data_view: Option<sqlx::types::Json<Value>>,
    /// The key ids the record's sealed values name.
    pub kids: sqlx::types::Json<Vec<String>>,
    /// Where each value shown in clear in `data_view` sits (JSON Pointer tokens), by the id of
    /// the key that opened it: what erasure scrubs in place. `None` when nothing is sealed.
    pub sealed: Option<sqlx::types::Json<BTreeMap<String, Vec<Vec<String>>>>>,
    pub digest: Vec<u8>,
    pub chain_hash: Vec<u8>,
    pub ledger_seq: i64,
    pub ingress_seq: Option<i64>,
    pub record: Vec<u8>,
}

fn ts(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// What the projector can use to read a record as its readers will: the keys that open its
/// sealed values and the policy version that classified it.
pub trait Clearance {
    /// Key `kid` of `tenant`: `None` once destroyed (erasure, retention), or never known.
    fn key(&self, tenant: &str, kid: &str) -> Option<BucketKey>;
    /// Version `version` of the tenant's policy (`None`: the default policy).
    fn policy(&self, tenant: &str, version: u32) -> Option<Arc<PolicyDocument>>;
}

/// No keys and the default policy: for readers of records that seal nothing (benchmarks,
/// dead-letter replays of such records). A sealed value then reads as erased.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoClearance;

impl Clearance for NoClearance {
    fn key(&self, _: &str, _: &str) -> Option<BucketKey> {
        None
    }
    fn policy(&self, _: &str, _: u32) -> Option<Arc<PolicyDocument>> {
        None
    }
}

/// Lower-cased for `q`'s case-insensitive search.
fn search_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_lowercase(),
        other => other.to_string(),
    }
}

/// A ledger record parsed for its row: what [`RecordRow::from_parsed`] builds from, and the
/// subject keys its sealed values name, for a [`Clearance`] to be fetched first. A record is
/// parsed once however many steps look at it.
pub struct Parsed {
    opened: record::OpenedRecord,
    data: Value,
    sealed: Vec<(String, privacy::SealedValue)>,
    ledger_seq: u64,
}

impl Parsed {
    pub fn parse(bytes: &[u8], ledger_seq: u64) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadRecord {
            seq: ledger_seq,
            reason,
        };
        let opened = record::open(bytes, false).map_err(|e| bad(e.to_string()))?;
        let Value::Object(event) = &opened.record.event else {
            return Err(bad("the event is not an object".to_owned()));
        };
        let data =
            privacy::data_of(event).ok_or_else(|| bad("event data is not JSON".to_owned()))?;
        let sealed = privacy::sealed_values(&data);
        Ok(Self {
            opened,
            data,
            sealed,
            ledger_seq,
        })
    }

    pub fn tenant(&self) -> &str {
        &self.opened.record.tenant_id
    }

    pub fn policy_version(&self) -> u32 {
        self.opened.record.policy.policy_version
    }

    /// The key ids the record's sealed values name (once each value, not deduplicated).
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.sealed.iter().map(|(_, s)| s.kid.as_str())
    }
}

impl RecordRow {
    /// Derives the row from the record bytes as stored on the ledger: sealed values opened
    /// with what `clearance` holds, every value classified under the record's policy version.
    pub fn from_ledger(
        bytes: &[u8],
        ledger_seq: u64,
        ingress_seq: Option<u64>,
        clearance: &dyn Clearance,
    ) -> Result<Self, StoreError> {
        Self::from_parsed(
            Parsed::parse(bytes, ledger_seq)?,
            bytes,
            ingress_seq,
            clearance,
        )
    }

    /// [`RecordRow::from_ledger`] for a record already parsed from `bytes`.
    pub fn from_parsed(
        parsed: Parsed,
        bytes: &[u8],
        ingress_seq: Option<u64>,
        clearance: &dyn Clearance,
    ) -> Result<Self, StoreError> {
        let Parsed {
            opened,
            data,
            sealed,
            ledger_seq,
        } = parsed;
        let bad = |reason: String| StoreError::BadRecord {
            seq: ledger_seq,
            reason,
        };
        let r = opened.record;
        let ev = |name: &str| r.event.get(name).and_then(Value::as_str).map(str::to_owned);
        let event_type = ev("type").unwrap_or_default();

        // Sealed values: opened where the key is alive, else marked erased. `shape` is the
        // data with erased values blank, for the facets and the classification.
        let mut view = data.clone();
        let mut shape = data;
        let mut opened_text = Vec::new();
        let mut shown: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        for (path, s) in &sealed {
            let place = Place {
                tenant: &r.tenant_id,
                source: &r.source_id,
                record_id: &r.record_id,
                path,
            };
            let clear = clearance
                .key(&r.tenant_id, &s.kid)
                .and_then(|k| privacy::open(&privacy::field_key(&k, &place), &place, s).ok());
            match clear {
                Some(v) => {
                    if path.starts_with("/attributes/") {
                        opened_text.push(search_text(&v));
                    }
                    privacy::replace(&mut view, path, v.clone());
                    privacy::replace(&mut shape, path, v);
                    shown
                        .entry(s.kid.clone())
                        .or_default()
                        .push(atp_core::policy::split(path).unwrap_or_default());
                }
                None => {
                    privacy::replace(&mut view, path, privacy::erased());
                    privacy::replace(&mut shape, path, Value::String(String::new()));
                }
            }
        }
        let policy = clearance.policy(&r.tenant_id, r.policy.policy_version);
        let default_policy = PolicyDocument::default();
        let policy = policy.as_deref().unwrap_or(&default_policy);
        let mut classes: BTreeMap<String, Classification> = policy
            .classify(&r.source_id, &event_type, &shape)
            .fields
            .into_iter()
            .map(|f| (f.path, f.classification))
            .collect();
        // A sealed value keeps the classification it was sealed under.
        for (path, s) in &sealed {
            classes.insert(path.clone(), s.cls);
        }
        let class_of = |path: &str| {
            classes
                .get(path)
                .copied()
                .unwrap_or(Classification::Internal)
                .index() as i16
        };
        let facets = AuditFacets::deserialize(&shape)
            .map_err(|_| bad("event data has no audit facets".to_owned()))?;
        // `q` text (attributes are flat): the values anyone may search in `attributes_text`,
        // the opened ones in `private_text`.
        let (mut open_text, mut private_text) = (Vec::new(), Vec::new());
        if let Some(Value::Object(attrs)) = shape.get("attributes") {
            for (name, v) in attrs {
                let path = format!("/attributes/{}", atp_core::policy::escape(name));
                if classes.get(&path).is_some_and(|c| c.is_encrypted()) {
                    // Classified personal or sensitive yet not sealed (it cannot be under the
                    // record's own policy version): never in the open text.
                    if !sealed.iter().any(|(p, _)| *p == path) {
                        private_text.push(search_text(v));
                    }
                    continue;
                }
                open_text.push(search_text(v));
            }
        }
        private_text.extend(opened_text);
        let field_classes = classes
            .iter()
            .filter(|(_, c)| **c != Classification::Internal)
            .map(|(p, c)| (p.clone(), c.as_str().to_owned()))
            .collect();
        Ok(Self {
            record_id: r.record_id.clone(),
            source_id: r.source_id.clone(),
            chain_index: i64::try_from(r.chain_index)
                .map_err(|_| bad("chainIndex out of range".to_owned()))?,
            event_id: ev("id").ok_or_else(|| bad("event has no id".to_owned()))?,
            event_type,
            occurred_at: ev("time")
                .as_deref()
                .and_then(ts)
                .ok_or_else(|| bad("event has no time".to_owned()))?,
            received_at: ts(&r.received_at).ok_or_else(|| bad("bad receivedAt".to_owned()))?,
            committed_at: ts(&r.committed_at).ok_or_else(|| bad("bad committedAt".to_owned()))?,
            actor_id_class: class_of("/actor/id"),
            action_class: class_of("/action"),
            resource_type_class: class_of("/resource/type"),
            resource_id_class: class_of("/resource/id"),
            actor_id: facets.actor.id,
            actor_type: facets.actor.ty,
            action: facets.action,
            resource_type: facets.resource.ty,
            resource_id: facets.resource.id,
            outcome: facets.outcome.map(|o| format!("{o:?}").to_lowercase()),
            classification: r.policy.classification.clone(),
            policy_version: i32::try_from(r.policy.policy_version).unwrap_or(i32::MAX),
            attributes_text: open_text.join(" "),
            private_text: private_text.join(" "),
            field_classes: sqlx::types::Json(field_classes),
            data_view: (!shown.is_empty()).then_some(sqlx::types::Json(view)),
            kids: sqlx::types::Json({
                let mut kids: Vec<String> = sealed.iter().map(|(_, s)| s.kid.clone()).collect();
                kids.sort();
                kids.dedup();
                kids
            }),
            sealed: (!sealed.is_empty()).then_some(sqlx::types::Json(shown)),
            digest: opened.link.digest.0.to_vec(),
            chain_hash: opened.link.chain_hash.0.to_vec(),
            ledger_seq: i64::try_from(ledger_seq)
                .map_err(|_| bad("sequence out of range".to_owned()))?,
            ingress_seq: ingress_seq.and_then(|s| i64::try_from(s).ok()),
            record: bytes.to_vec(),
            tenant_id: r.tenant_id,
        })
    }
}

/// One `rejections` row, derived from one ATP_REJECTED message (and read back as is).
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RejectionRow {
    pub rejected_seq: i64,
    pub tenant_id: String,
    pub source_id: String,
    pub ingress_seq: i64,
    pub reason: String,
    pub detail: String,
    pub event_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub rejected_at: DateTime<Utc>,
    pub envelope: Vec<u8>,
}

impl RejectionRow {
    pub fn from_stream(bytes: &[u8], seq: u64) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::BadRecord { seq, reason };
        let env: RejectionEnvelope =
            serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            rejected_seq: i64::try_from(seq)
                .map_err(|_| bad("sequence out of range".to_owned()))?,
            tenant_id: env.tenant_id,
            source_id: env.source_id,
            ingress_seq: i64::try_from(env.ingress_seq)
                .map_err(|_| bad("ingressSeq out of range".to_owned()))?,
            reason: env.reason.code().to_owned(),
            detail: env.detail,
            event_id: env.event_id,
            received_at: ts(&env.received_at).ok_or_else(|| bad("bad receivedAt".to_owned()))?,
            rejected_at: ts(&env.rejected_at).ok_or_else(|| bad("bad rejectedAt".to_owned()))?,
            envelope: bytes.to_vec(),
        })
    }
}

/// One column of a batch as an array, for `UNNEST($n::type[])`.
macro_rules! col {
    ($rows:ident, $f:ident) => {
        $rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
    };
}

/// Inserts records in one round trip (`INSERT … SELECT FROM UNNEST`); rows already present
/// (redelivery, replay over a live table) are skipped.
pub async fn insert_records(
    conn: &mut PgConnection,
    target: Target,
    rows: &[RecordRow],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "INSERT INTO {} (tenant_id, record_id, source_id, chain_index, event_id, event_type, occurred_at, \
         received_at, committed_at, actor_id, actor_type, action, resource_type, resource_id, outcome, \
         classification, policy_version, attributes_text, digest, chain_hash, ledger_seq, ingress_seq, record, \
         private_text, actor_id_class, action_class, resource_type_class, resource_id_class, field_classes, \
         data_view, kids, sealed) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
         $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::text[], $11::text[], $12::text[], \
         $13::text[], $14::text[], $15::text[], $16::text[], $17::int4[], $18::text[], $19::bytea[], \
         $20::bytea[], $21::int8[], $22::int8[], $23::bytea[], $24::text[], $25::int2[], $26::int2[], \
         $27::int2[], $28::int2[], $29::jsonb[], $30::jsonb[], $31::jsonb[], $32::jsonb[]) \
         ON CONFLICT DO NOTHING",
        target.records()
    );
    let done = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(col!(rows, tenant_id))
        .bind(col!(rows, record_id))
        .bind(col!(rows, source_id))
        .bind(col!(rows, chain_index))
        .bind(col!(rows, event_id))
        .bind(col!(rows, event_type))
        .bind(col!(rows, occurred_at))
        .bind(col!(rows, received_at))
        .bind(col!(rows, committed_at))
        .bind(col!(rows, actor_id))
        .bind(col!(rows, actor_type))
        .bind(col!(rows, action))
        .bind(col!(rows, resource_type))
        .bind(col!(rows, resource_id))
        .bind(col!(rows, outcome))
        .bind(col!(rows, classification))
        .bind(col!(rows, policy_version))
        .bind(col!(rows, attributes_text))
        .bind(col!(rows, digest))
        .bind(col!(rows, chain_hash))
        .bind(col!(rows, ledger_seq))
        .bind(col!(rows, ingress_seq))
        .bind(col!(rows, record))
        .bind(col!(rows, private_text))
        .bind(col!(rows, actor_id_class))
        .bind(col!(rows, action_class))
        .bind(col!(rows, resource_type_class))
        .bind(col!(rows, resource_id_class))
        .bind(col!(rows, field_classes))
        .bind(col!(rows, data_view))
        .bind(col!(rows, kids))
        .bind(col!(rows, sealed))
        .execute(&mut *conn)
        .await?;
    note_subject_keys(conn, rows).await?;
    Ok(done.rows_affected())
}

/// Records the subject keys `rows` name in `subject_keys` (what retention reads).
async fn note_subject_keys(conn: &mut PgConnection, rows: &[RecordRow]) -> Result<(), StoreError> {
    let (mut tenants, mut kids, mut policies, mut buckets, mut ends) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // A subject's key seals many records of a batch: noted once.
    let mut seen = std::collections::HashSet::new();
    for r in rows {
        for kid in r.kids.0.iter() {
            if !seen.insert((r.tenant_id.as_str(), kid.as_str())) {
                continue;
            }
            let Some((policy, bucket)) = privacy::kid_parts(kid) else {
                continue;
            };
            let Some(end) = atp_core::policy::bucket_end(bucket) else {
                continue;
            };
            tenants.push(r.tenant_id.clone());
            kids.push(kid.clone());
            policies.push(policy.to_owned());
            buckets.push(bucket.to_owned());
            ends.push(end);
        }
    }
    if kids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO subject_keys (tenant_id, kid, retention_policy_id, bucket, bucket_end) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(tenants)
    .bind(kids)
    .bind(policies)
    .bind(buckets)
    .bind(ends)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn insert_rejections(
    conn: &mut PgConnection,
    rows: &[RejectionRow],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "INSERT INTO rejections (rejected_seq, tenant_id, source_id, ingress_seq, reason, detail, event_id, \
         received_at, rejected_at, envelope) \
         SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], \
         $7::text[], $8::timestamptz[], $9::timestamptz[], $10::bytea[]) ON CONFLICT DO NOTHING",
    )
    .bind(col!(rows, rejected_seq))
    .bind(col!(rows, tenant_id))
    .bind(col!(rows, source_id))
    .bind(col!(rows, ingress_seq))
    .bind(col!(rows, reason))
    .bind(col!(rows, detail))
    .bind(col!(rows, event_id))
    .bind(col!(rows, received_at))
    .bind(col!(rows, rejected_at))
    .bind(col!(rows, envelope))
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Watermark of a projection: the last stream sequence whose rows are committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Watermark {
    pub stream_seq: u64,
    pub last_committed_at: Option<DateTime<Utc>>,
}

/// The watermark row a projector instance writes: `records` alone, `records@k/n` as shard `k`
/// of `n` (each shard reads the whole stream and advances its own row).
pub fn watermark_key(projection: &str, index: u32, count: u32) -> String {
    if count <= 1 {
        projection.to_owned()
    } else {
        format!("{projection}@{index}/{count}")
    }
}

/// The watermark row of one tenant's lane (ADR 0017): `records#acme`, or `records#acme@k/n`.
/// Every message of the tenant at or below it is projected; the projector's own row then
/// speaks for every other tenant.
pub fn lane_watermark_key(projection: &str, tenant: &str, index: u32, count: u32) -> String {
    watermark_key(&format!("{projection}#{tenant}"), index, count)
}

/// What a watermark row's key says: the lane's tenant (none for a projector's own row) and
/// the shard count it was written under (1 unsharded).
fn parse_key<'k>(key: &'k str, projection: &str) -> Option<(Option<&'k str>, u32)> {
    let rest = key.strip_prefix(projection)?;
    let (lane, shard) = match rest.strip_prefix('#') {
        Some(lane) => match lane.split_once('@') {
            Some((tenant, shard)) => (Some(tenant), Some(shard)),
            None => (Some(lane), None),
        },
        None if rest.is_empty() => (None, None),
        None => (None, Some(rest.strip_prefix('@')?)),
    };
    let count = match shard {
        None => 1,
        Some(s) => s.split_once('/')?.1.parse().ok()?,
    };
    Some((lane, count))
}

/// The shard count a watermark row was written under (1 for the plain row).
fn shard_count(key: &str, projection: &str) -> Option<u32> {
    parse_key(key, projection).map(|(_, n)| n)
}

/// The tenants with a lane row for this shard of the projection.
pub async fn lane_tenants(
    pool: &PgPool,
    projection: &str,
    index: u32,
    count: u32,
) -> Result<Vec<String>, StoreError> {
    let keys: Vec<String> = sqlx::query_scalar(
        "SELECT projection FROM projection_watermarks WHERE projection LIKE $1 || '#%'",
    )
    .bind(projection)
    .fetch_all(pool)
    .await?;
    Ok(keys
        .iter()
        .filter_map(|k| {
            let (tenant, _) = parse_key(k, projection)?;
            let tenant = tenant?;
            (lane_watermark_key(projection, tenant, index, count) == *k).then(|| tenant.to_owned())
        })
        .collect())
}

/// Creates a lane's watermark row, unless it exists, at the value of the row `from` (0 when
/// that has none).
pub async fn open_lane_watermark(pool: &PgPool, key: &str, from: &str) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO projection_watermarks (projection, stream_seq, last_committed_at, updated_at) \
         SELECT $1, coalesce(max(stream_seq), 0), max(last_committed_at), now() \
         FROM projection_watermarks WHERE projection = $2 ON CONFLICT (projection) DO NOTHING",
    )
    .bind(key)
    .bind(from)
    .execute(pool)
    .await?;
    Ok(())
}

/// One watermark row, exactly as written (a projector instance's own position).
pub async fn watermark_row(pool: &PgPool, key: &str) -> Result<Option<Watermark>, StoreError> {
    let row: Option<(i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT stream_seq, last_committed_at FROM projection_watermarks WHERE projection = $1",
    )
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(s, c)| Watermark {
        stream_seq: u64::try_from(s).unwrap_or(0),
        last_committed_at: c,
    }))
}

/// A projection's watermark, however many instances project it: the sharding in force is the
/// one of the most recently advanced row, and the projection is as far as its slowest shard (a
/// shard not started yet counts from where the unsharded projector stopped, as it will).
pub async fn watermark(pool: &PgPool, projection: &str) -> Result<Option<Watermark>, StoreError> {
    let rows: Vec<(String, i64, Option<DateTime<Utc>>)> = sqlx::query_as(
        "SELECT projection, stream_seq, last_committed_at FROM projection_watermarks \
         WHERE projection = $1 OR projection LIKE $1 || '@%' OR projection LIKE $1 || '#%' \
         ORDER BY updated_at DESC",
    )
    .bind(projection)
    .fetch_all(pool)
    .await?;
    let Some(n) = rows.first().and_then(|r| shard_count(&r.0, projection)) else {
        return Ok(None);
    };
    let current: Vec<_> = rows
        .iter()
        .filter(|r| shard_count(&r.0, projection) == Some(n))
        .collect();
    let plain = rows.iter().find(|r| r.0 == projection);
    // Every shard's own row must be there; tenant lanes' rows only ever hold it back.
    let own = current
        .iter()
        .filter(|r| parse_key(&r.0, projection).is_some_and(|(lane, _)| lane.is_none()))
        .count();
    let considered: Vec<_> = if own < n as usize {
        match plain {
            Some(p) => current.into_iter().chain(std::iter::once(p)).collect(),
            None => return Ok(None),
        }
    } else {
        current
    };
    // Rows at the same position have projected the same messages: the newest commit time
    // among them is the watermark's (a lane moved along while idle keeps its last own one).
    let Some(lowest) = considered.iter().map(|r| r.1).min() else {
        return Ok(None);
    };
    Ok(Some(Watermark {
        stream_seq: u64::try_from(lowest).unwrap_or(0),
        last_committed_at: considered
            .iter()
            .filter(|r| r.1 == lowest)
            .filter_map(|r| r.2)
            .max(),
    }))
}

/// Moves a watermark forward (never back) inside the caller's transaction.
pub async fn advance_watermark(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    stream_seq: u64,
    last_committed_at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO projection_watermarks (projection, stream_seq, last_committed_at, updated_at) \
         VALUES ($1, $2, $3, now()) ON CONFLICT (projection) DO UPDATE SET \
         stream_seq = GREATEST(projection_watermarks.stream_seq, EXCLUDED.stream_seq), \
         last_committed_at = COALESCE(GREATEST(projection_watermarks.last_committed_at, EXCLUDED.last_committed_at), \
         projection_watermarks.last_committed_at, EXCLUDED.last_committed_at), updated_at = now()",
    )
    .bind(projection)
    .bind(i64::try_from(stream_seq).unwrap_or(i64::MAX))
    .bind(last_committed_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves each lane row of `keys` to `to` if it is at or past its entry of `lasts` (the last
/// message of its tenant the caller has read), inside the caller's transaction.
pub async fn advance_lanes(
    conn: &mut sqlx::PgConnection,
    keys: &[String],
    lasts: &[i64],
    to: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE projection_watermarks w SET stream_seq = $3, updated_at = now() \
         FROM unnest($1::text[], $2::bigint[]) AS l(key, last) \
         WHERE w.projection = l.key AND w.stream_seq >= l.last AND w.stream_seq < $3",
    )
    .bind(keys)
    .bind(lasts)
    .bind(i64::try_from(to).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Prepares an empty `records_rebuild` (from the one table definition, migration 0002).
pub async fn begin_rebuild(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("DROP TABLE IF EXISTS records_rebuild")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT atp_create_records_table('records_rebuild')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// How a finished rebuild replaces live rows.
#[derive(Debug, Clone)]
pub enum Swap {
    /// The whole table: `records_rebuild` becomes `records` in one transaction.
    All,
    /// Some rows: one tenant's, a ledger-sequence range, or both.
    Scoped {
        tenant_id: Option<String>,
        ledger_seq: Option<(i64, i64)>,
    },
}

/// Swaps rebuilt rows in atomically: readers see the old rows until the commit, then the new.
pub async fn finish_rebuild(pool: &PgPool, swap: Swap) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    match swap {
        Swap::All => {
            let live: Option<String> = sqlx::query_scalar("SELECT to_regclass('records')::text")
                .fetch_one(&mut *tx)
                .await?;
            if live.is_none() {
                // The read model was dropped: the rebuild simply becomes it.
                sqlx::query("ALTER TABLE records_rebuild RENAME TO records")
                    .execute(&mut *tx)
                    .await?;
                rename_indexes(&mut tx).await?;
                tx.commit().await?;
                return Ok(());
            }
            // The brief ACCESS EXCLUSIVE lock orders the swap after in-flight projector writes;
            // rows the live projector committed meanwhile are carried over (they are the same
            // rows the replay would write, keyed identically).
            sqlx::query("LOCK TABLE records IN ACCESS EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO records_rebuild SELECT * FROM records r WHERE r.ledger_seq > \
                 (SELECT coalesce(max(ledger_seq), 0) FROM records_rebuild) ON CONFLICT DO NOTHING",
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query("ALTER TABLE records RENAME TO records_replaced")
                .execute(&mut *tx)
                .await?;
            sqlx::query("ALTER TABLE records_rebuild RENAME TO records")
                .execute(&mut *tx)
                .await?;
            sqlx::query("DROP TABLE records_replaced")
                .execute(&mut *tx)
                .await?;
            rename_indexes(&mut tx).await?;
        }
        Swap::Scoped {
            tenant_id,
            ledger_seq,
        } => {
            let (lo, hi) = ledger_seq.unwrap_or((0, i64::MAX));
            sqlx::query(
                "DELETE FROM records WHERE ($1::text IS NULL OR tenant_id = $1) AND ledger_seq BETWEEN $2 AND $3",
            )
            .bind(&tenant_id)
            .bind(lo)
            .bind(hi)
            .execute(&mut *tx)
            .await?;
            sqlx::query("INSERT INTO records SELECT * FROM records_rebuild ON CONFLICT DO NOTHING")
                .execute(&mut *tx)
                .await?;
            sqlx::query("DROP TABLE records_rebuild")
                .execute(&mut *tx)
                .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// The rebuilt table's indexes are named after `records_rebuild`; give them the live names.
async fn rename_indexes(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'records' \
         AND indexname LIKE 'records\\_rebuild\\_%'",
    )
    .fetch_all(&mut **tx)
    .await?;
    for name in names {
        let Some(suffix) = name.strip_prefix("records_rebuild_") else {
            continue;
        };
        // Names come from the catalogue and are plain identifiers (table name + fixed suffix).
        if !suffix.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            continue;
        }
        let sql = format!("ALTER INDEX {name} RENAME TO records_{suffix}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_keys_name_their_lane_and_shard() {
        assert_eq!(parse_key("records", RECORDS), Some((None, 1)));
        assert_eq!(parse_key("records@1/3", RECORDS), Some((None, 3)));
        let lane = lane_watermark_key(RECORDS, "acme", 0, 1);
        assert_eq!(lane, "records#acme");
        assert_eq!(parse_key(&lane, RECORDS), Some((Some("acme"), 1)));
        let sharded = lane_watermark_key(RECORDS, "acme", 1, 2);
        assert_eq!(sharded, "records#acme@1/2");
        assert_eq!(parse_key(&sharded, RECORDS), Some((Some("acme"), 2)));
        assert_eq!(parse_key("rejections", RECORDS), None);
        assert_eq!(parse_key("records@x", RECORDS), None);
    }
}
