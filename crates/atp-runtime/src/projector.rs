//! The projector role: ATP_LEDGER → `records`, ATP_REJECTED → `rejections`.
//!
//! Each batch is inserted and its watermark advanced in one transaction, so the watermark is
//! exactly what is committed and a restart resumes right after it. Inserts skip rows already
//! present (keyed by ids inside the messages), so re-reading a batch is harmless.

use async_nats::jetstream::{Context, Message};
use atp_nats::{headers, streams, subjects};
use atp_store::projection::{self, RecordRow, RejectionRow, Target};
use sqlx::PgPool;

use crate::RoleError;
use crate::reader::{BatchHandler, ReadSpec, Role};

/// Rows per transaction: UNNEST inserts level off around 1000 rows (LIMITS.md), and a batch of
/// 1000 ~1 KiB records stays well inside one round trip's comfortable size.
pub const BATCH_MAX: usize = 1000;
use atp_store::projection::NOTIFY_CHANNEL;

fn db(e: atp_store::StoreError) -> RoleError {
    RoleError::Retry(e.to_string())
}

fn seq_of(m: &Message) -> Result<u64, RoleError> {
    m.info()
        .map(|i| i.stream_sequence)
        .map_err(|e| RoleError::Retry(format!("message without info: {e}")))
}

fn ingress_seq_of(m: &Message) -> Option<u64> {
    m.headers
        .as_ref()?
        .get(headers::INGRESS_SEQ)?
        .as_str()
        .parse()
        .ok()
}

pub struct RecordsProjector {
    pool: PgPool,
    /// Rows projected since start.
    pub projected: u64,
}

impl RecordsProjector {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, projected: 0 }
    }
}

impl Role for RecordsProjector {
    const NAME: &'static str = "projector.records";

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        let wm = projection::watermark(&self.pool, projection::RECORDS)
            .await
            .map_err(db)?;
        Ok(ReadSpec {
            stream: streams::LEDGER.to_owned(),
            filter_subjects: vec![subjects::all(subjects::LEDGER)],
            start_seq: wm.map_or(0, |w| w.stream_seq) + 1,
            batch_max: BATCH_MAX,
            stop_after: None,
            stop_at_end: false,
        })
    }
}

/// Rows for a batch of ledger messages. A message that cannot be projected is an integrity
/// event (ATP wrote it): it is logged at ERROR and left out; the ledger still holds it and a
/// replay after the fix projects it.
pub fn record_rows(batch: &[Message]) -> Result<(Vec<RecordRow>, u64), RoleError> {
    let mut rows = Vec::with_capacity(batch.len());
    let mut last = 0;
    for m in batch {
        let seq = seq_of(m)?;
        last = seq;
        match RecordRow::from_ledger(&m.payload, seq, ingress_seq_of(m)) {
            Ok(r) => rows.push(r),
            Err(e) => {
                tracing::error!(ledger_seq = seq, subject = %m.subject, error = %e, "ledger message cannot be projected")
            }
        }
    }
    Ok((rows, last))
}

impl BatchHandler for RecordsProjector {
    async fn handle(&mut self, batch: &[Message]) -> Result<(), RoleError> {
        let (rows, last) = record_rows(batch)?;
        let newest = rows.iter().map(|r| r.committed_at).max();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        projection::insert_records(&mut tx, Target::Live, &rows)
            .await
            .map_err(db)?;
        projection::advance_watermark(&mut tx, projection::RECORDS, last, newest)
            .await
            .map_err(db)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(format!("records:{last}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        tx.commit()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        self.projected += rows.len() as u64;
        Ok(())
    }
}

pub struct RejectionsProjector {
    pool: PgPool,
}

impl RejectionsProjector {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Role for RejectionsProjector {
    const NAME: &'static str = "projector.rejections";

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        let wm = projection::watermark(&self.pool, projection::REJECTIONS)
            .await
            .map_err(db)?;
        Ok(ReadSpec {
            stream: streams::REJECTED.to_owned(),
            filter_subjects: vec![subjects::all(subjects::REJECTED)],
            start_seq: wm.map_or(0, |w| w.stream_seq) + 1,
            batch_max: BATCH_MAX,
            stop_after: None,
            stop_at_end: false,
        })
    }
}

impl BatchHandler for RejectionsProjector {
    async fn handle(&mut self, batch: &[Message]) -> Result<(), RoleError> {
        let mut rows = Vec::with_capacity(batch.len());
        let mut last = 0;
        for m in batch {
            let seq = seq_of(m)?;
            last = seq;
            match RejectionRow::from_stream(&m.payload, seq) {
                Ok(r) => rows.push(r),
                Err(e) => {
                    tracing::error!(rejected_seq = seq, error = %e, "rejection cannot be projected")
                }
            }
        }
        let newest = rows.iter().map(|r| r.rejected_at).max();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        projection::insert_rejections(&mut tx, &rows)
            .await
            .map_err(db)?;
        projection::advance_watermark(&mut tx, projection::REJECTIONS, last, newest)
            .await
            .map_err(db)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(format!("rejections:{last}"))
            .execute(&mut *tx)
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        tx.commit()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        Ok(())
    }
}

/// Runs both projections until shutdown.
pub async fn run(js: Context, pool: PgPool, shutdown: crate::Shutdown) -> Result<(), RoleError> {
    let mut records = RecordsProjector::new(pool.clone());
    let mut rejections = RejectionsProjector::new(pool);
    let (a, b) = tokio::join!(
        crate::reader::run_role(&js, &mut records, shutdown.clone()),
        crate::reader::run_role(&js, &mut rejections, shutdown),
    );
    a.and(b)
}
