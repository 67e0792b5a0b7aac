//! The integrity read models: Merkle tiles, each partition's log state, and checkpoints
//! (migration 0003), and the proofs computed from them.
//!
//! Proofs read tiles, never leaves: a [`ProofPlan`] names the O(log n) subtrees a proof needs,
//! one query fetches the tiles that hold them, and the proof is assembled in memory.

use std::collections::HashMap;

use atp_core::Digest;
use atp_core::merkle::ProofPlan;
use atp_core::names::PartitionKey;
use atp_core::tiles::{self, TileId, TileWrite};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::StoreError;

/// Watermark name of the integrity worker.
pub const WATERMARK: &str = "integrity";

fn digest(bytes: &[u8]) -> Result<Digest, StoreError> {
    <[u8; 32]>::try_from(bytes)
        .map(Digest)
        .map_err(|_| StoreError::Corrupt("stored hash is not 32 bytes".into()))
}

fn i64_of(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where a partition's log stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    pub tree_size: u64,
    pub root: Digest,
    pub chain_hash: Digest,
    pub ledger_seq: u64,
    pub checkpoint_size: u64,
    pub halted: Option<Halt>,
}

/// Why a partition's log stopped growing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub at_index: u64,
    pub reason: String,
}

/// A `merkle_logs` row.
#[derive(sqlx::FromRow)]
struct LogRow {
    tenant_id: String,
    source_id: String,
    tree_size: i64,
    root: Vec<u8>,
    chain_hash: Vec<u8>,
    ledger_seq: i64,
    checkpoint_size: i64,
    halted_at_index: Option<i64>,
    halt_reason: Option<String>,
}

const LOG_COLUMNS: &str = "tenant_id, source_id, tree_size, root, chain_hash, ledger_seq, \
     checkpoint_size, halted_at_index, halt_reason FROM merkle_logs";

impl LogRow {
    fn state(self) -> Result<LogState, StoreError> {
        Ok(LogState {
            tree_size: self.tree_size as u64,
            root: digest(&self.root)?,
            chain_hash: digest(&self.chain_hash)?,
            ledger_seq: self.ledger_seq as u64,
            checkpoint_size: self.checkpoint_size as u64,
            halted: self.halted_at_index.map(|i| Halt {
                at_index: i as u64,
                reason: self.halt_reason.clone().unwrap_or_default(),
            }),
        })
    }
}

pub async fn log_state_of(
    conn: &mut PgConnection,
    p: &PartitionKey,
) -> Result<Option<LogState>, StoreError> {
    let sql = format!("SELECT {LOG_COLUMNS} WHERE tenant_id = $1 AND source_id = $2");
    let row: Option<LogRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(p.tenant.as_str())
        .bind(p.source.as_str())
        .fetch_optional(conn)
        .await?;
    row.map(LogRow::state).transpose()
}

/// Partitions whose log has grown past their last checkpoint (and are not halted).
pub async fn uncheckpointed(pool: &PgPool) -> Result<Vec<(PartitionKey, LogState)>, StoreError> {
    let sql = format!(
        "SELECT {LOG_COLUMNS} WHERE tree_size > checkpoint_size AND halted_at_index IS NULL"
    );
    let rows: Vec<LogRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|row| {
            let p = PartitionKey::from_ids(&row.tenant_id, &row.source_id)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            Ok((p, row.state()?))
        })
        .collect()
}

/// Reads tiles; a tile not stored is absent from the map.
pub async fn read_tiles(
    conn: &mut PgConnection,
    p: &PartitionKey,
    ids: &[TileId],
) -> Result<HashMap<TileId, Vec<u8>>, StoreError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let levels: Vec<i16> = ids.iter().map(|t| i16::from(t.level)).collect();
    let idxs: Vec<i64> = ids.iter().map(|t| i64_of(t.index)).collect();
    let rows: Vec<(i16, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT t.level, t.idx, t.hashes FROM merkle_tiles t \
         JOIN UNNEST($3::int2[], $4::int8[]) AS w(level, idx) ON t.level = w.level AND t.idx = w.idx \
         WHERE t.tenant_id = $1 AND t.source_id = $2",
    )
    .bind(p.tenant.as_str())
    .bind(p.source.as_str())
    .bind(levels)
    .bind(idxs)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(level, idx, hashes)| {
            (
                TileId {
                    level: level as u8,
                    index: idx as u64,
                },
                hashes,
            )
        })
        .collect())
}

/// One partition's share of a committed batch.
#[derive(Debug, Clone)]
pub struct LogUpdate {
    pub partition: PartitionKey,
    pub state: LogState,
    pub tiles: Vec<TileWrite>,
}

/// Writes tiles and log states in the caller's transaction. Tiles only grow and states only
/// move forward, so a batch written twice (a retry, a second worker) changes nothing.
pub async fn write_logs(
    tx: &mut Transaction<'_, Postgres>,
    updates: &[LogUpdate],
) -> Result<(), StoreError> {
    let (mut tenants, mut sources, mut levels, mut idxs, mut hashes) =
        (vec![], vec![], vec![], vec![], vec![]);
    for u in updates {
        for t in &u.tiles {
            tenants.push(u.partition.tenant.as_str());
            sources.push(u.partition.source.as_str());
            levels.push(i16::from(t.id.level));
            idxs.push(i64_of(t.id.index));
            hashes.push(t.hashes.as_slice());
        }
    }
    if !tenants.is_empty() {
        sqlx::query(
            "INSERT INTO merkle_tiles (tenant_id, source_id, level, idx, hashes) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int2[], $4::int8[], $5::bytea[]) \
             ON CONFLICT (tenant_id, source_id, level, idx) DO UPDATE SET hashes = EXCLUDED.hashes \
             WHERE length(EXCLUDED.hashes) > length(merkle_tiles.hashes)",
        )
        .bind(&tenants)
        .bind(&sources)
        .bind(&levels)
        .bind(&idxs)
        .bind(&hashes)
        .execute(&mut **tx)
        .await?;
    }
    if updates.is_empty() {
        return Ok(());
    }
    let col = |f: fn(&LogUpdate) -> i64| updates.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO merkle_logs (tenant_id, source_id, tree_size, root, chain_hash, ledger_seq, \
         halted_at_index, halt_reason, updated_at) \
         SELECT t, s, n, r, c, q, h, hr, now() FROM UNNEST($1::text[], $2::text[], $3::int8[], \
         $4::bytea[], $5::bytea[], $6::int8[], $7::int8[], $8::text[]) AS u(t, s, n, r, c, q, h, hr) \
         ON CONFLICT (tenant_id, source_id) DO UPDATE SET tree_size = EXCLUDED.tree_size, \
         root = EXCLUDED.root, chain_hash = EXCLUDED.chain_hash, ledger_seq = EXCLUDED.ledger_seq, \
         halted_at_index = COALESCE(merkle_logs.halted_at_index, EXCLUDED.halted_at_index), \
         halt_reason = COALESCE(merkle_logs.halt_reason, EXCLUDED.halt_reason), updated_at = now() \
         WHERE EXCLUDED.tree_size >= merkle_logs.tree_size",
    )
    .bind(
        updates
            .iter()
            .map(|u| u.partition.tenant.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        updates
            .iter()
            .map(|u| u.partition.source.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(col(|u| i64_of(u.state.tree_size)))
    .bind(
        updates
            .iter()
            .map(|u| u.state.root.0.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(
        updates
            .iter()
            .map(|u| u.state.chain_hash.0.to_vec())
            .collect::<Vec<_>>(),
    )
    .bind(col(|u| i64_of(u.state.ledger_seq)))
    .bind(
        updates
            .iter()
            .map(|u| u.state.halted.as_ref().map(|h| i64_of(h.at_index)))
            .collect::<Vec<_>>(),
    )
    .bind(
        updates
            .iter()
            .map(|u| u.state.halted.as_ref().map(|h| h.reason.clone()))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredCheckpoint {
    pub tenant_id: String,
    pub source_id: String,
    pub tree_size: i64,
    pub root: Vec<u8>,
    pub key_id: String,
    pub note: String,
    pub issued_at: DateTime<Utc>,
}

impl StoredCheckpoint {
    pub fn size(&self) -> u64 {
        self.tree_size as u64
    }
    pub fn root(&self) -> Result<Digest, StoreError> {
        digest(&self.root)
    }
}

/// Stores issued checkpoints and moves each log's `checkpoint_size` forward.
pub async fn insert_checkpoints(
    pool: &PgPool,
    rows: &[StoredCheckpoint],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    macro_rules! col {
        ($f:ident) => {
            rows.iter().map(|r| r.$f.clone()).collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "INSERT INTO checkpoints (tenant_id, source_id, tree_size, root, key_id, note, issued_at) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::bytea[], $5::text[], $6::text[], \
         $7::timestamptz[]) ON CONFLICT DO NOTHING",
    )
    .bind(col!(tenant_id))
    .bind(col!(source_id))
    .bind(col!(tree_size))
    .bind(col!(root))
    .bind(col!(key_id))
    .bind(col!(note))
    .bind(col!(issued_at))
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE merkle_logs m SET checkpoint_size = GREATEST(m.checkpoint_size, u.n) \
         FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS u(t, s, n) \
         WHERE m.tenant_id = u.t AND m.source_id = u.s",
    )
    .bind(col!(tenant_id))
    .bind(col!(source_id))
    .bind(col!(tree_size))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

const CHECKPOINT_COLUMNS: &str =
    "tenant_id, source_id, tree_size, root, key_id, note, issued_at FROM checkpoints";

/// The newest checkpoint of a partition, or the one of exactly `size` leaves.
pub async fn checkpoint(
    db: impl sqlx::PgExecutor<'_>,
    p: &PartitionKey,
    size: Option<u64>,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} WHERE tenant_id = $1 AND source_id = $2 \
         AND ($3::int8 IS NULL OR tree_size = $3) ORDER BY tree_size DESC LIMIT 1"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(p.tenant.as_str())
        .bind(p.source.as_str())
        .bind(size.map(i64_of))
        .fetch_optional(db)
        .await?)
}

/// Every checkpoint of a partition with a size in `[from, to]`, oldest first.
pub async fn checkpoints_between(
    pool: &PgPool,
    p: &PartitionKey,
    from: u64,
    to: u64,
) -> Result<Vec<StoredCheckpoint>, StoreError> {
    let sql = format!(
        "SELECT {CHECKPOINT_COLUMNS} WHERE tenant_id = $1 AND source_id = $2 \
         AND tree_size BETWEEN $3 AND $4 ORDER BY tree_size"
    );
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(p.tenant.as_str())
        .bind(p.source.as_str())
        .bind(i64_of(from))
        .bind(i64_of(to))
        .fetch_all(pool)
        .await?)
}

/// Computes the hashes of a proof plan from stored tiles.
pub async fn prove(
    conn: &mut PgConnection,
    p: &PartitionKey,
    plan: &ProofPlan,
) -> Result<Vec<Digest>, StoreError> {
    let mut all = prove_all(conn, p, std::slice::from_ref(plan)).await?;
    Ok(all.pop().unwrap_or_default())
}

/// Computes several proof plans of one partition from one read of the tiles they need.
pub async fn prove_all(
    conn: &mut PgConnection,
    p: &PartitionKey,
    plans: &[ProofPlan],
) -> Result<Vec<Vec<Digest>>, StoreError> {
    let nodes: Vec<_> = plans.iter().flat_map(ProofPlan::nodes).collect();
    let tiles = read_tiles(conn, p, &tiles::tiles_for(&nodes)).await?;
    let mut nodes = tiles::NodeCache::new(|t| tiles.get(&t).map(Vec::as_slice));
    plans
        .iter()
        .map(|plan| {
            plan.assemble(|n| nodes.get(n))
                .map_err(|e| StoreError::Corrupt(format!("tiles of {p}: {e}")))
        })
        .collect()
}

/// The leaf hashes stored for leaves `[from, to)` (level-0 tiles), for range verification.
pub async fn leaf_hashes(
    conn: &mut PgConnection,
    p: &PartitionKey,
    from: u64,
    to: u64,
) -> Result<Vec<Digest>, StoreError> {
    if from >= to {
        return Ok(vec![]);
    }
    let ids: Vec<TileId> = (from / tiles::TILE_WIDTH..=(to - 1) / tiles::TILE_WIDTH)
        .map(|index| TileId { level: 0, index })
        .collect();
    let stored = read_tiles(conn, p, &ids).await?;
    (from..to)
        .map(|i| {
            let id = TileId {
                level: 0,
                index: i / tiles::TILE_WIDTH,
            };
            stored
                .get(&id)
                .and_then(|t| tiles::hash_at(t, (i % tiles::TILE_WIDTH) as usize))
                .ok_or_else(|| StoreError::Corrupt(format!("no leaf hash {i} stored for {p}")))
        })
        .collect()
}
