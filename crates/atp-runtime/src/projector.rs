//! The projector role: ATP_LEDGER → `records`, ATP_REJECTED → `rejections`.
//!
//! Each batch is inserted and its watermark advanced in one transaction, so the watermark is
//! exactly what is committed and a restart resumes right after it. Inserts skip rows already
//! present (keyed by ids inside the messages), so re-reading a batch is harmless.

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream::{Context, Message};
use atp_nats::{headers, streams, subjects};
use atp_store::StoreError;
use atp_store::projection::{self, NOTIFY_CHANNEL, RecordRow, RejectionRow, Target};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::reader::{BatchHandler, ReadSpec, Role};
use crate::{RoleError, telemetry};
use atp_core::trace::TraceParent;

/// Rows per transaction: UNNEST inserts level off around 1000 rows (LIMITS.md), and a batch of
/// 1000 ~1 KiB records stays well inside one round trip's comfortable size.
pub const BATCH_MAX: usize = 1000;

fn db(e: StoreError) -> RoleError {
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

/// What differs between read models: where they read, how a message becomes a row, and how
/// rows are inserted.
pub trait Projection: Send {
    /// Watermark key and role name.
    const NAME: &'static str;
    const STREAM: &'static str;
    const SUBJECTS: &'static str;
    type Row: Send + Sync;
    fn row(m: &Message, seq: u64) -> Result<Self::Row, StoreError>;
    /// The time the watermark reports for a row (committedAt or rejectedAt).
    fn time(row: &Self::Row) -> DateTime<Utc>;
    fn insert(
        conn: &mut PgConnection,
        rows: &[Self::Row],
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

pub struct Records;

impl Projection for Records {
    const NAME: &'static str = projection::RECORDS;
    const STREAM: &'static str = streams::LEDGER;
    const SUBJECTS: &'static str = subjects::LEDGER;
    type Row = RecordRow;
    fn row(m: &Message, seq: u64) -> Result<RecordRow, StoreError> {
        RecordRow::from_ledger(&m.payload, seq, ingress_seq_of(m))
    }
    fn time(row: &RecordRow) -> DateTime<Utc> {
        row.committed_at
    }
    async fn insert(conn: &mut PgConnection, rows: &[RecordRow]) -> Result<u64, StoreError> {
        projection::insert_records(conn, Target::Live, rows).await
    }
}

pub struct Rejections;

impl Projection for Rejections {
    const NAME: &'static str = projection::REJECTIONS;
    const STREAM: &'static str = streams::REJECTED;
    const SUBJECTS: &'static str = subjects::REJECTED;
    type Row = RejectionRow;
    fn row(m: &Message, seq: u64) -> Result<RejectionRow, StoreError> {
        RejectionRow::from_stream(&m.payload, seq)
    }
    fn time(row: &RejectionRow) -> DateTime<Utc> {
        row.rejected_at
    }
    async fn insert(conn: &mut PgConnection, rows: &[RejectionRow]) -> Result<u64, StoreError> {
        projection::insert_rejections(conn, rows).await
    }
}

/// Rows for a batch. A message that cannot be projected is an integrity event (ATP wrote it):
/// it is logged at ERROR and left out; the stream still holds it and a replay after the fix
/// projects it.
pub fn rows<P: Projection>(batch: &[Message]) -> Result<(Vec<P::Row>, u64), RoleError> {
    let mut rows = Vec::with_capacity(batch.len());
    let mut last = 0;
    for m in batch {
        let seq = seq_of(m)?;
        last = seq;
        match P::row(m, seq) {
            Ok(r) => rows.push(r),
            Err(e) => {
                tracing::error!(projection = P::NAME, stream_seq = seq, subject = %m.subject, error = %e, "message cannot be projected")
            }
        }
    }
    Ok((rows, last))
}

/// A `project.record` span, child of the trace context the message carries.
fn record_span<P: Projection>(m: &Message) -> tracing::Span {
    let tenant = subjects::tokens_of(P::SUBJECTS, &m.subject).map_or("", |(t, _)| t);
    let span = tracing::info_span!(
        "project.record",
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %m.subject,
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = P::NAME,
        tenant.id = tenant,
    );
    let h = m.headers.as_ref();
    if let Some(parent) = h
        .and_then(|h| h.get(headers::TRACEPARENT))
        .and_then(|v| TraceParent::parse(v.as_str()))
    {
        let state = h
            .and_then(|h| h.get(headers::TRACESTATE))
            .map(|v| v.as_str());
        telemetry::follow(&span, &parent, state);
    }
    span
}

/// A projector for one read model.
pub struct Projector<P: Projection> {
    pool: PgPool,
    /// Rows projected since start.
    pub projected: u64,
    _model: std::marker::PhantomData<P>,
}

impl<P: Projection> Projector<P> {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            projected: 0,
            _model: std::marker::PhantomData,
        }
    }
}

impl<P: Projection> Role for Projector<P> {
    const NAME: &'static str = P::NAME;

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        let wm = projection::watermark(&self.pool, P::NAME)
            .await
            .map_err(db)?;
        Ok(ReadSpec {
            stream: P::STREAM.to_owned(),
            filter_subjects: vec![subjects::all(P::SUBJECTS)],
            start_seq: wm.map_or(0, |w| w.stream_seq) + 1,
            batch_max: BATCH_MAX,
            stop_after: None,
            stop_at_end: false,
        })
    }
}

impl<P: Projection> BatchHandler for Projector<P> {
    async fn handle(&mut self, batch: &Arc<[Message]>) -> Result<(), RoleError> {
        // With traces on, one span per message, ended once its row is committed.
        let _spans: Vec<tracing::Span> = if telemetry::spans_on() {
            batch.iter().map(record_span::<P>).collect()
        } else {
            Vec::new()
        };
        let (rows, last) = rows::<P>(batch)?;
        let newest = rows.iter().map(P::time).max();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        P::insert(&mut tx, &rows).await.map_err(db)?;
        projection::advance_watermark(&mut tx, P::NAME, last, newest)
            .await
            .map_err(db)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(format!("{}:{last}", P::NAME))
            .execute(&mut *tx)
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        tx.commit()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        self.projected += rows.len() as u64;
        let m = crate::metrics::metrics();
        let projection = [crate::metrics::label("projection", P::NAME)];
        m.projector_rows.add(rows.len() as u64, &projection);
        Ok(())
    }
}

/// Runs both projections until shutdown.
pub async fn run(js: Context, pool: PgPool, shutdown: crate::Shutdown) -> Result<(), RoleError> {
    let mut records = Projector::<Records>::new(pool.clone());
    let mut rejections = Projector::<Rejections>::new(pool);
    let (a, b) = tokio::join!(
        crate::reader::run_role(&js, &mut records, shutdown.clone()),
        crate::reader::run_role(&js, &mut rejections, shutdown),
    );
    a.and(b)
}
