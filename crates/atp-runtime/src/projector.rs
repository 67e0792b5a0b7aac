//! The projector role: ATP_LEDGER → `records`, ATP_REJECTED → `rejections`.
//!
//! Each batch is inserted and its watermark advanced in one transaction, so the watermark is
//! exactly what is committed and a restart resumes right after it. Inserts skip rows already
//! present (keyed by ids inside the messages), so re-reading a batch is harmless.
//!
//! Failures split two ways, and the split decides whether a record can go missing from the
//! read model. A message that is not a row (`UNPROJECTABLE`) or a row PostgreSQL refuses as
//! data (`PROJECTION_REFUSED`: SQLSTATE class 22 or 23, [`atp_store::DbFailure`]) fails the
//! same way every time, so after [`MAX_ATTEMPTS`] tries it is dead-lettered and the rest of
//! the batch goes on. Every other database error is an outage: the batch is retried as is by
//! the reader, with backoff and a WARN naming the SQLSTATE, for as long as it lasts, and shows
//! as projector lag; it never spends a try, is never bisected and never dead-letters a row.

use std::future::Future;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream::{Context, Message};
use atp_core::deadletter::{DeadLetter, DeadRole, Letter};
use atp_nats::{headers, streams, subjects};
use atp_store::StoreError;
use atp_store::projection::{self, NOTIFY_CHANNEL, RecordRow, RejectionRow, Target};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::reader::{BatchHandler, ReadSpec, Role};
use crate::shard::Shard;
use crate::{RoleError, telemetry};

/// Rows per transaction: UNNEST inserts level off around 1000 rows (LIMITS.md), and a batch of
/// 1000 ~1 KiB records stays well inside one round trip's comfortable size.
pub const BATCH_MAX: usize = 1000;

/// A store error the batch cannot get past now: retried by the reader, which logs it at WARN
/// (the message names the SQLSTATE and whether the database was unavailable or refused the
/// data; a refusal only comes here while its batch still has tries left).
fn db(e: StoreError) -> RoleError {
    RoleError::Retry(e.to_string())
}

fn seq_of(m: &Message) -> Result<u64, RoleError> {
    m.info()
        .map(|i| i.stream_sequence)
        .map_err(|e| RoleError::Retry(format!("message without info: {e}")))
}

fn ingress_seq_of(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(headers::INGRESS_SEQ)?.as_str().parse().ok()
}

/// What differs between read models: where they read, how a message becomes a row, and how
/// rows are inserted.
pub trait Projection: Send {
    /// Watermark key and role name.
    const NAME: &'static str;
    const STREAM: &'static str;
    const SUBJECTS: &'static str;
    type Row: Send + Sync;
    /// The row for a message (its payload and headers) at stream sequence `seq`.
    fn row(payload: &[u8], headers: Option<&HeaderMap>, seq: u64) -> Result<Self::Row, StoreError>;
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
    fn row(payload: &[u8], headers: Option<&HeaderMap>, seq: u64) -> Result<RecordRow, StoreError> {
        RecordRow::from_ledger(payload, seq, ingress_seq_of(headers))
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
    fn row(
        payload: &[u8],
        _headers: Option<&HeaderMap>,
        seq: u64,
    ) -> Result<RejectionRow, StoreError> {
        RejectionRow::from_stream(payload, seq)
    }
    fn time(row: &RejectionRow) -> DateTime<Utc> {
        row.rejected_at
    }
    async fn insert(conn: &mut PgConnection, rows: &[RejectionRow]) -> Result<u64, StoreError> {
        projection::insert_rejections(conn, rows).await
    }
}

/// A batch's rows, and the messages that have none.
pub struct Rows<R> {
    pub rows: Vec<R>,
    /// The batch index of each row's message.
    pub from: Vec<usize>,
    /// Messages that cannot become a row, with why.
    pub failed: Vec<(usize, StoreError)>,
    /// The batch's last stream sequence.
    pub last: u64,
}

/// Builds the rows of a batch for the partitions `shard` owns (others are neither rows nor
/// failures: another instance projects them).
pub fn build<P: Projection>(batch: &[Message], shard: Shard) -> Result<Rows<P::Row>, RoleError> {
    let mut out = Rows {
        rows: Vec::with_capacity(batch.len()),
        from: Vec::with_capacity(batch.len()),
        failed: Vec::new(),
        last: 0,
    };
    for (i, m) in batch.iter().enumerate() {
        let seq = seq_of(m)?;
        out.last = seq;
        if !owned::<P>(shard, m) {
            continue;
        }
        match P::row(&m.payload, m.headers.as_ref(), seq) {
            Ok(r) => {
                out.rows.push(r);
                out.from.push(i);
            }
            Err(e) => out.failed.push((i, e)),
        }
    }
    Ok(out)
}

/// Whether `shard` projects the message's partition. A subject that names no partition is
/// everyone's problem: shard 0 takes it (and dead-letters it).
fn owned<P: Projection>(shard: Shard, m: &Message) -> bool {
    if shard.count <= 1 {
        return true;
    }
    match subjects::tokens_of(P::SUBJECTS, &m.subject) {
        Some((t, s)) => shard.owns(&format!("{t}.{s}")),
        None => shard.index == 0,
    }
}

/// Rows for a batch, leaving out (and logging) messages that cannot be projected: for
/// rebuilds, where the live projector has already dead-lettered them.
pub fn rows<P: Projection>(batch: &[Message]) -> Result<(Vec<P::Row>, u64), RoleError> {
    let built = build::<P>(batch, Shard::ALL)?;
    for (i, e) in &built.failed {
        tracing::error!(projection = P::NAME, subject = %batch[*i].subject, error = %e, "message cannot be projected");
    }
    Ok((built.rows, built.last))
}

/// A `project.record` span, child of the trace context the message carries.
fn record_span<P: Projection>(m: &Message) -> tracing::Span {
    let tenant = subjects::tokens_of(P::SUBJECTS, &m.subject).map_or("", |(t, _)| t);
    let span = telemetry::consumer_span!(
        "project.record",
        m.subject,
        db.system.name = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = P::NAME,
        tenant.id = tenant,
    );
    telemetry::follow_message(&span, m.headers.as_ref());
    span
}

/// Tries of a batch with a message that cannot be projected, or a row the database refuses,
/// before that message is dead-lettered and the projector moves on (retries back off 50 ms,
/// 100 ms, ...). Outages do not count: they are not the batch's fault.
pub const MAX_ATTEMPTS: u32 = 3;

/// A projector for one read model.
pub struct Projector<P: Projection> {
    js: Context,
    pool: PgPool,
    shard: Shard,
    /// This instance's watermark row (`records`, or `records@k/n` as a shard).
    watermark: String,
    /// Rows projected since start.
    pub projected: u64,
    /// The first stream sequence of the batch that keeps failing on its data, and how many
    /// such tries it has had.
    failing: Option<(u64, u32)>,
    _model: std::marker::PhantomData<fn() -> P>,
}

impl<P: Projection> Projector<P> {
    pub fn new(js: Context, pool: PgPool, shard: Shard) -> Self {
        Self {
            js,
            pool,
            shard,
            watermark: projection::watermark_key(P::NAME, shard.index, shard.count),
            projected: 0,
            failing: None,
            _model: std::marker::PhantomData,
        }
    }

    /// Counts a try of the batch starting at `batch_seq` that failed on its data; true once
    /// the tries are spent. The count is the batch's, not a message's: one batch can fail on
    /// an unreadable message and then on a refused row, and counting those against two keys
    /// would reset each other's count for ever, halting the partition.
    fn spent(&mut self, batch_seq: u64) -> bool {
        let tries = match self.failing {
            Some((s, n)) if s == batch_seq => n + 1,
            _ => 1,
        };
        self.failing = Some((batch_seq, tries));
        tries >= MAX_ATTEMPTS
    }

    async fn dead_letter(&self, m: &Message, code: &str, detail: String) -> Result<(), RoleError> {
        let seq = seq_of(m)?;
        let tenant = subjects::tokens_of(P::SUBJECTS, &m.subject).map_or("_", |(t, _)| t);
        let letter = DeadLetter::new(
            DeadRole::Projector,
            code,
            detail,
            MAX_ATTEMPTS,
            Letter {
                stream: P::STREAM,
                stream_seq: seq,
                subject: &m.subject,
                tenant_id: tenant,
                payload: &m.payload,
                traceparent: m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::TRACEPARENT))
                    .map(|v| v.as_str()),
            },
            Utc::now(),
        );
        crate::dlq::dead_letter(&self.js, &letter).await
    }

    /// Inserts rows one by one, each under a savepoint, dead-lettering those the database
    /// refuses: the way past a row that fails the whole batch. Only refusals are dead-lettered;
    /// an outage on any row fails the whole try (letters already published are published again
    /// on the next, under the same message id), so a row is never blamed for the database.
    async fn insert_each(
        &self,
        tx: &mut PgConnection,
        batch: &[Message],
        built: &Rows<P::Row>,
    ) -> Result<u64, RoleError> {
        let mut inserted = 0;
        for (row, &i) in built.rows.iter().zip(&built.from) {
            exec(tx, "SAVEPOINT atp_row").await?;
            match P::insert(tx, std::slice::from_ref(row)).await {
                Ok(n) => {
                    inserted += n;
                    exec(tx, "RELEASE SAVEPOINT atp_row").await?;
                }
                Err(e) if e.is_refusal() => {
                    exec(tx, "ROLLBACK TO SAVEPOINT atp_row").await?;
                    let detail = format!(
                        "the database refused the row (SQLSTATE {}): {}",
                        e.sqlstate().unwrap_or_default(),
                        e.refusal().unwrap_or_default()
                    );
                    self.dead_letter(&batch[i], "PROJECTION_REFUSED", detail)
                        .await?;
                }
                Err(e) => return Err(db(e)),
            }
        }
        Ok(inserted)
    }
}

async fn exec(conn: &mut PgConnection, sql: &'static str) -> Result<(), RoleError> {
    sqlx::query(sql)
        .execute(conn)
        .await
        .map(|_| ())
        .map_err(|e| RoleError::Retry(e.to_string()))
}

impl<P: Projection> Role for Projector<P> {
    const NAME: &'static str = P::NAME;

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        // A shard starting for the first time resumes where the unsharded projector stopped.
        let mut wm = projection::watermark_row(&self.pool, &self.watermark)
            .await
            .map_err(db)?;
        if wm.is_none() && self.shard.count > 1 {
            wm = projection::watermark_row(&self.pool, P::NAME)
                .await
                .map_err(db)?;
        }
        Ok(ReadSpec {
            stream: P::STREAM.to_owned(),
            filter_subjects: vec![subjects::all(P::SUBJECTS)],
            start_seq: wm.map_or(0, |w| w.stream_seq) + 1,
            batch_max: BATCH_MAX,
            stop_after: None,
            stop_at_end: false,
            tail_subject: None,
            headers_only: false,
        })
    }
}

impl<P: Projection> BatchHandler for Projector<P> {
    async fn handle(&mut self, batch: &Arc<[Message]>) -> Result<(), RoleError> {
        // With traces on, one span per message, ended once its row is committed.
        let _spans: Vec<tracing::Span> = if telemetry::spans_on() {
            batch
                .iter()
                .filter(|m| owned::<P>(self.shard, m))
                .map(record_span::<P>)
                .collect()
        } else {
            Vec::new()
        };
        let built = build::<P>(batch, self.shard)?;
        let batch_seq = batch.first().map_or(Ok(0), seq_of)?;
        if let Some((i, e)) = built.failed.first() {
            let seq = seq_of(&batch[*i])?;
            if !self.spent(batch_seq) {
                return Err(RoleError::Retry(format!(
                    "stream message {seq} cannot be projected: {e}"
                )));
            }
            for (i, e) in &built.failed {
                self.dead_letter(&batch[*i], "UNPROJECTABLE", e.to_string())
                    .await?;
            }
        }
        let newest = built.rows.iter().map(P::time).max();
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        let rows = match P::insert(&mut tx, &built.rows).await {
            Ok(n) => n,
            // Only a refusal of the data is worth finding the bad row for; an outage would
            // fail every row alike, and bisecting it would only dead-letter healthy records.
            Err(e) if e.is_refusal() => {
                if !self.spent(batch_seq) {
                    return Err(db(e));
                }
                // The refused statement aborted the transaction: start again, row by row.
                tx.rollback()
                    .await
                    .map_err(|e| RoleError::Retry(e.to_string()))?;
                tx = self
                    .pool
                    .begin()
                    .await
                    .map_err(|e| RoleError::Retry(e.to_string()))?;
                self.insert_each(&mut tx, batch, &built).await?
            }
            // An outage: the same batch again after the reader's backoff, no try spent.
            Err(e) => return Err(db(e)),
        };
        projection::advance_watermark(&mut tx, &self.watermark, built.last, newest)
            .await
            .map_err(db)?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(format!("{}:{}", P::NAME, built.last))
            .execute(&mut *tx)
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        tx.commit()
            .await
            .map_err(|e| RoleError::Retry(e.to_string()))?;
        self.failing = None;
        self.projected += rows;
        let m = crate::metrics::metrics();
        let projection = [crate::metrics::label("projection", P::NAME)];
        m.projector_rows.add(rows, &projection);
        let now = Utc::now();
        for row in &built.rows {
            m.projector_latency_seconds.record(
                crate::metrics::seconds_between(P::time(row), now),
                &projection,
            );
        }
        Ok(())
    }
}

/// Runs both projections, for the partitions `shard` owns, until shutdown.
pub async fn run(
    js: Context,
    pool: PgPool,
    shard: Shard,
    shutdown: crate::Shutdown,
) -> Result<(), RoleError> {
    let mut records = Projector::<Records>::new(js.clone(), pool.clone(), shard);
    let mut rejections = Projector::<Rejections>::new(js.clone(), pool, shard);
    let (a, b) = tokio::join!(
        crate::reader::run_role(&js, &mut records, shutdown.clone()),
        crate::reader::run_role(&js, &mut rejections, shutdown),
    );
    a.and(b)
}
