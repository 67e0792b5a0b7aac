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
//!
//! Lanes (ADR 0017), as in ingest: each tenant with rows in the stream is projected by a lane
//! of its own, with its own reader, transactions and watermark row (`records#<tenant>`), side
//! by side with the others and with the rest lane (the projector's own row, for every tenant
//! without a lane). A flooding tenant's batches then delay other tenants' rows by a share of
//! the database, not by their place in one queue. The projection's watermark is the lowest of
//! the rows; the rest lane, which reads every message, moves a lane's row along with its own
//! when it saw nothing of the lane's tenant that the lane has not projected yet, and an idle
//! lane moves its row to the stream's end itself.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::{Context, Message};
use atp_core::TenantId;
use atp_core::deadletter::{DeadLetter, DeadRole, Letter};
use atp_nats::{headers, streams, subjects};
use atp_store::StoreError;
use atp_store::projection::{self, NOTIFY_CHANNEL, Parsed, RecordRow, RejectionRow, Target};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::clearance::{BatchClearance, Resolver};
use crate::reader::{BatchHandler, LaneOpener, LaneSet, ReadSpec, Shutdown, Worker};
use crate::shard::Shard;
use crate::{Classify, RoleError, telemetry};
use atp_telemetry::failpoint;

/// Rows per transaction: UNNEST inserts level off around 1000 rows (LIMITS.md), and a batch of
/// 1000 ~1 KiB records stays well inside one round trip's comfortable size.
pub const BATCH_MAX: usize = 1000;

fn seq_of(m: &Message) -> Result<u64, RoleError> {
    m.info()
        .map(|i| i.stream_sequence)
        .or_retry("message without info")
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
    /// What building a batch's rows needs besides the messages (fetched first: rows are built
    /// without I/O).
    type Context: Send + Sync;
    /// What the messages of `batch` that `takes` accepts need.
    fn prepare(
        resolver: &Resolver,
        batch: &[Message],
        takes: &(dyn Fn(&Message) -> bool + Sync),
    ) -> impl Future<Output = Result<Self::Context, RoleError>> + Send;
    /// The row for message `i` of the batch, at stream sequence `seq`.
    fn row(
        i: usize,
        m: &Message,
        seq: u64,
        cx: &mut Self::Context,
    ) -> Result<Self::Row, StoreError>;
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
    type Context = Prepared;
    async fn prepare(
        resolver: &Resolver,
        batch: &[Message],
        takes: &(dyn Fn(&Message) -> bool + Sync),
    ) -> Result<Prepared, RoleError> {
        // Each record is parsed once: for the keys it names here, for its row after.
        let mut parsed = Vec::with_capacity(batch.len());
        for m in batch.iter() {
            parsed.push(match (takes(m), seq_of(m)) {
                (true, Ok(seq)) => Some(Parsed::parse(&m.payload, seq)),
                _ => None,
            });
        }
        let clearance = resolver
            .for_parsed(parsed.iter().filter_map(|p| p.as_ref()?.as_ref().ok()))
            .await?;
        Ok(Prepared { parsed, clearance })
    }
    fn row(i: usize, m: &Message, seq: u64, cx: &mut Prepared) -> Result<RecordRow, StoreError> {
        let parsed = match cx.parsed.get_mut(i).and_then(Option::take) {
            Some(p) => p?,
            None => Parsed::parse(&m.payload, seq)?,
        };
        RecordRow::from_parsed(
            parsed,
            &m.payload,
            ingress_seq_of(m.headers.as_ref()),
            &cx.clearance,
        )
    }
    fn time(row: &RecordRow) -> DateTime<Utc> {
        row.committed_at
    }
    async fn insert(conn: &mut PgConnection, rows: &[RecordRow]) -> Result<u64, StoreError> {
        projection::insert_records(conn, Target::Live, rows).await
    }
}

/// A batch of ledger messages parsed (by batch index; `None` for those another instance
/// projects) and the keys and policies they name.
pub struct Prepared {
    parsed: Vec<Option<Result<Parsed, StoreError>>>,
    clearance: BatchClearance,
}

pub struct Rejections;

impl Projection for Rejections {
    const NAME: &'static str = projection::REJECTIONS;
    const STREAM: &'static str = streams::REJECTED;
    const SUBJECTS: &'static str = subjects::REJECTED;
    type Row = RejectionRow;
    type Context = ();
    async fn prepare(
        _: &Resolver,
        _: &[Message],
        _: &(dyn Fn(&Message) -> bool + Sync),
    ) -> Result<(), RoleError> {
        Ok(())
    }
    fn row(_: usize, m: &Message, seq: u64, _: &mut ()) -> Result<RejectionRow, StoreError> {
        RejectionRow::from_stream(&m.payload, seq)
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
pub fn build<P: Projection>(
    batch: &[Message],
    shard: Shard,
    cx: &mut P::Context,
) -> Result<Rows<P::Row>, RoleError> {
    build_for::<P>(batch, |m| owned::<P>(shard, m), cx)
}

/// Builds the rows of a batch for the messages `takes` accepts.
fn build_for<P: Projection>(
    batch: &[Message],
    takes: impl Fn(&Message) -> bool,
    cx: &mut P::Context,
) -> Result<Rows<P::Row>, RoleError> {
    let mut out = Rows {
        rows: Vec::with_capacity(batch.len()),
        from: Vec::with_capacity(batch.len()),
        failed: Vec::new(),
        last: 0,
    };
    for (i, m) in batch.iter().enumerate() {
        let seq = seq_of(m)?;
        out.last = seq;
        if !takes(m) {
            continue;
        }
        match P::row(i, m, seq, cx) {
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
        Some((t, s)) => shard.owns(t, s),
        None => shard.index == 0,
    }
}

/// Rows for a batch, leaving out (and logging) messages that cannot be projected: for
/// rebuilds, where the live projector has already dead-lettered them.
pub fn rows<P: Projection>(
    batch: &[Message],
    cx: &mut P::Context,
) -> Result<(Vec<P::Row>, u64), RoleError> {
    let built = build::<P>(batch, Shard::ALL, cx)?;
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

/// How often an idle lane checks whether it may move its watermark to the stream's end.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How often the projector looks for tenants without a lane.
const LANE_REFRESH: Duration = Duration::from_secs(5);

/// Tenants that have a lane of their own, which the rest lane leaves alone.
type Laned = Arc<RwLock<HashSet<String>>>;

/// A projector for one read model: one lane (a tenant's, or the rest).
pub struct Projector<P: Projection> {
    js: Context,
    pool: PgPool,
    shard: Shard,
    /// The lane's tenant; `None` for the rest lane.
    lane: Option<TenantId>,
    laned: Laned,
    /// This lane's watermark row (`records`, `records@k/n` as a shard, `records#acme` for a
    /// tenant's lane).
    watermark: String,
    /// The lane's watermark as this instance last committed or read it.
    handled: u64,
    /// The rest lane: the last sequence of each laned tenant's messages it has read, and where
    /// it started (what it may assume of tenants it has read nothing of).
    seen: HashMap<String, u64>,
    started_at: u64,
    /// A tenant lane: when it last checked whether it is idle at the stream's end.
    idle_checked: Option<Instant>,
    stream: Option<Stream>,
    /// Rows projected since start.
    pub projected: u64,
    /// The first stream sequence of the batch that keeps failing on its data, and how many
    /// such tries it has had.
    failing: Option<(u64, u32)>,
    resolver: Resolver,
    _model: std::marker::PhantomData<fn() -> P>,
}

impl<P: Projection> Projector<P> {
    pub fn new(js: Context, pool: PgPool, shard: Shard, resolver: Resolver) -> Self {
        Self {
            js,
            pool,
            shard,
            lane: None,
            laned: Arc::default(),
            watermark: projection::watermark_key(P::NAME, shard.index, shard.count),
            handled: 0,
            seen: HashMap::new(),
            started_at: 0,
            idle_checked: None,
            stream: None,
            projected: 0,
            failing: None,
            resolver,
            _model: std::marker::PhantomData,
        }
    }

    /// A tenant's lane of the same projection.
    fn lane(&self, tenant: TenantId) -> Self {
        let mut lane = Self::new(
            self.js.clone(),
            self.pool.clone(),
            self.shard,
            self.resolver.clone(),
        );
        lane.watermark = projection::lane_watermark_key(
            P::NAME,
            tenant.as_str(),
            self.shard.index,
            self.shard.count,
        );
        lane.lane = Some(tenant);
        lane.laned = Arc::clone(&self.laned);
        lane
    }

    /// Whether this lane projects the message.
    fn takes(&self, m: &Message) -> bool {
        if !owned::<P>(self.shard, m) {
            return false;
        }
        match (&self.lane, subjects::tokens_of(P::SUBJECTS, &m.subject)) {
            (Some(_), _) | (None, None) => true,
            (None, Some((t, _))) => !self.laned.read().is_ok_and(|l| l.contains(t)),
        }
    }

    fn tenant_filter(tenant: &TenantId) -> String {
        subjects::tenant_all(P::SUBJECTS, tenant)
    }

    /// Runs the projection's lanes until shutdown or a fatal error: the rest lane, and one per
    /// tenant with rows in the stream (new ones within [`LANE_REFRESH`]).
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RoleError>
    where
        P: 'static,
    {
        let mut set = LaneSet::new(self.js.clone(), shutdown);
        if let Err(e) = self.open_lanes(&mut set).await {
            tracing::warn!(projection = P::NAME, error = %e, "could not open the tenant lanes yet; retrying");
        }
        let rest = Self {
            laned: Arc::clone(&self.laned),
            ..Self::new(
                self.js.clone(),
                self.pool.clone(),
                self.shard,
                self.resolver.clone(),
            )
        };
        set.spawn(crate::ingest::REST, rest);
        set.run(&self, LANE_REFRESH).await
    }
    /// A tenant lane with nothing to do moves its row to the stream's end, when no message of
    /// its tenant waits: the projection's watermark (the lowest row) is then not held back by
    /// tenants that are quiet. Checked at most every [`IDLE_CHECK`]; a failure only delays it.
    async fn advance_if_idle(&mut self) {
        let Some(tenant) = &self.lane else { return };
        if self
            .idle_checked
            .is_some_and(|at| at.elapsed() < IDLE_CHECK)
        {
            return;
        }
        self.idle_checked = Some(Instant::now());
        if self.stream.is_none() {
            self.stream = self.js.get_stream(P::STREAM).await.ok();
        }
        let Some(stream) = &self.stream else { return };
        // The stream's end first: a message of the tenant published after it has a higher
        // sequence, so the tenant's last message read next covers every one up to the end.
        let Ok(info) = stream.get_info().await else {
            return;
        };
        let end = info.state.last_sequence;
        if end <= self.handled {
            return;
        }
        let last_own = match stream
            .direct_get_last_for_subject(Self::tenant_filter(tenant))
            .await
        {
            Ok(m) => m.sequence,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => 0,
            Err(_) => return,
        };
        if last_own > self.handled {
            return;
        }
        let at = crate::to_chrono(info.state.last_timestamp);
        let Ok(mut tx) = self.pool.begin().await else {
            return;
        };
        if projection::advance_watermark(&mut tx, &self.watermark, end, Some(at))
            .await
            .is_ok()
            && tx.commit().await.is_ok()
        {
            self.handled = end;
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

    /// The rest lane, in its batch's transaction: every laned tenant's row that is at or past
    /// the last message of that tenant the rest lane has read (since it started; before, its
    /// start) moves to the batch's end, since no message of the tenant waits below it.
    async fn advance_lanes(&self, tx: &mut PgConnection, to: u64) -> Result<(), RoleError> {
        let laned: Vec<String> = match self.laned.read() {
            Ok(l) => l.iter().cloned().collect(),
            Err(_) => return Ok(()),
        };
        if laned.is_empty() {
            return Ok(());
        }
        let (mut keys, mut lasts) = (Vec::new(), Vec::new());
        for t in laned {
            let last = self.seen.get(&t).copied().unwrap_or(self.started_at);
            keys.push(projection::lane_watermark_key(
                P::NAME,
                &t,
                self.shard.index,
                self.shard.count,
            ));
            lasts.push(i64::try_from(last).unwrap_or(i64::MAX));
        }
        projection::advance_lanes(tx, &keys, &lasts, to)
            .await
            .or_retry("advancing the lanes' watermarks")
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
        crate::dead_letter::write(&self.js, &letter).await
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
                    failpoint::crash_point(failpoint::PROJECTOR_AFTER_DEAD_LETTER);
                }
                Err(e) => return Err(RoleError::retry("inserting a row", e)),
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
        .or_retry(sql)
}

impl<P: Projection + 'static> LaneOpener for Projector<P> {
    /// Opens a lane for every tenant with messages in the stream or a lane row, and none yet.
    /// A new lane's row is created at the rest lane's before the rest lane leaves the tenant
    /// alone: every message of the tenant at or below it is projected.
    async fn open_lanes(&self, set: &mut LaneSet) -> Result<(), String> {
        let (index, count) = (self.shard.index, self.shard.count);
        let mut tenants: std::collections::BTreeSet<String> =
            projection::lane_tenants(&self.pool, P::NAME, index, count)
                .await
                .map_err(|e| e.to_string())?
                .into_iter()
                .collect();
        let stream = self
            .js
            .get_stream(P::STREAM)
            .await
            .map_err(|e| e.to_string())?;
        let mut subjects_seen = stream
            .info_with_subjects(subjects::all(P::SUBJECTS))
            .await
            .map_err(|e| e.to_string())?;
        while let Some(s) = futures::StreamExt::next(&mut subjects_seen).await {
            let (subject, _) = s.map_err(|e| e.to_string())?;
            if let Some((t, _)) = subjects::tokens_of(P::SUBJECTS, &subject) {
                tenants.insert(t.to_owned());
            }
        }
        for tenant in set.unopened(tenants) {
            let t = tenant.to_string();
            let key = projection::lane_watermark_key(P::NAME, &t, index, count);
            projection::open_lane_watermark(&self.pool, &key, &self.watermark)
                .await
                .map_err(|e| e.to_string())?;
            if let Ok(mut laned) = self.laned.write() {
                laned.insert(t.clone());
            }
            set.spawn(&t, self.lane(tenant));
        }
        Ok(())
    }
}

impl<P: Projection> Worker for Projector<P> {
    const NAME: &'static str = P::NAME;

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        // A shard starting for the first time resumes where the unsharded projector stopped.
        let mut wm = projection::watermark_row(&self.pool, &self.watermark)
            .await
            .or_retry("reading the watermark")?;
        if wm.is_none() && self.shard.count > 1 && self.lane.is_none() {
            wm = projection::watermark_row(&self.pool, P::NAME)
                .await
                .or_retry("reading the unsharded watermark")?;
        }
        self.handled = wm.map_or(0, |w| w.stream_seq);
        self.started_at = self.handled;
        self.seen.clear();
        let (filter, tail_subject) = match &self.lane {
            None => (subjects::all(P::SUBJECTS), None),
            Some(t) => (Self::tenant_filter(t), Some(Self::tenant_filter(t))),
        };
        Ok(ReadSpec {
            stream: P::STREAM.to_owned(),
            filter_subjects: vec![filter],
            start_seq: self.handled + 1,
            batch_max: BATCH_MAX,
            stop_after: None,
            stop_at_end: false,
            tail_subject,
            headers_only: false,
        })
    }
}

impl<P: Projection> BatchHandler for Projector<P> {
    async fn flush(&mut self) -> Result<(), RoleError> {
        self.advance_if_idle().await;
        Ok(())
    }

    async fn handle(&mut self, batch: &Arc<[Message]>) -> Result<(), RoleError> {
        // With traces on, one span per message, ended once its row is committed.
        let _spans: Vec<tracing::Span> = if telemetry::spans_on() {
            batch
                .iter()
                .filter(|m| self.takes(m))
                .map(record_span::<P>)
                .collect()
        } else {
            Vec::new()
        };
        let takes = |m: &Message| self.takes(m);
        let mut cx = P::prepare(&self.resolver, batch, &takes).await?;
        let mut built = build_for::<P>(batch, takes, &mut cx)?;
        if self.lane.is_none() {
            // What the rest lane passes by, for moving the lanes' rows along with its own.
            for m in batch.iter() {
                if let Some((t, _)) = subjects::tokens_of(P::SUBJECTS, &m.subject)
                    && !self.takes(m)
                    && owned::<P>(self.shard, m)
                {
                    let seq = seq_of(m)?;
                    self.seen.insert(t.to_owned(), seq);
                }
            }
        }
        let batch_seq = batch.first().map_or(Ok(0), seq_of)?;
        if let Some((i, _)) = built.failed.first() {
            let seq = seq_of(&batch[*i])?;
            if !self.spent(batch_seq) {
                let (_, e) = built.failed.swap_remove(0);
                return Err(RoleError::retry(
                    format!("stream message {seq} cannot be projected"),
                    e,
                ));
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
            .or_retry("beginning a transaction")?;
        // A store error the batch cannot get past now is retried by the reader, which logs it at
        // WARN (the message names the SQLSTATE and whether the database was unavailable or
        // refused the data; a refusal only comes here while its batch still has tries left).
        let rows = match P::insert(&mut tx, &built.rows).await {
            Ok(n) => n,
            // Only a refusal of the data is worth finding the bad row for; an outage would
            // fail every row alike, and bisecting it would only dead-letter healthy records.
            Err(e) if e.is_refusal() => {
                if !self.spent(batch_seq) {
                    return Err(RoleError::retry("inserting rows", e));
                }
                // The refused statement aborted the transaction: start again, row by row.
                tx.rollback().await.or_retry("rolling back")?;
                tx = self
                    .pool
                    .begin()
                    .await
                    .or_retry("beginning a transaction")?;
                self.insert_each(&mut tx, batch, &built).await?
            }
            // An outage: the same batch again after the reader's backoff, no try spent.
            Err(e) => return Err(RoleError::retry("inserting rows", e)),
        };
        projection::advance_watermark(&mut tx, &self.watermark, built.last, newest)
            .await
            .or_retry("advancing the watermark")?;
        if self.lane.is_none() {
            self.advance_lanes(&mut tx, built.last).await?;
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(format!("{}:{}", P::NAME, built.last))
            .execute(&mut *tx)
            .await
            .or_retry("notifying the waiting requests")?;
        failpoint::crash_point(failpoint::PROJECTOR_BEFORE_COMMIT);
        tx.commit().await.or_retry("committing")?;
        self.failing = None;
        self.handled = built.last;
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
    tenant_keys: Arc<dyn crate::keyring::TenantKeys>,
    shutdown: crate::Shutdown,
) -> Result<(), RoleError> {
    let resolver = Resolver::new(&js, tenant_keys).await?;
    let records = Projector::<Records>::new(js.clone(), pool.clone(), shard, resolver.clone());
    let rejections = Projector::<Rejections>::new(js, pool, shard, resolver);
    let (a, b) = tokio::join!(records.run(shutdown.clone()), rejections.run(shutdown));
    a.and(b)
}
