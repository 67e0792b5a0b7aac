//! The integrity role: ATP_LEDGER → each partition's Merkle log (tiles in PostgreSQL) →
//! signed checkpoints on ATP_CHECKPOINTS.
//!
//! Two halves. The *log* ([`IntegrityLog`]) reads the ledger in order, re-checks every link of
//! each partition's chain ([`ChainWalk`]), appends each record as the next leaf, and commits the
//! grown tiles, the log state and its watermark in one transaction. A gap, reorder or broken
//! link halts that partition's log where it is (no checkpoint will ever cover a record it could
//! not verify) and raises an alert: a structured ERROR log, the `atp.integrity.alerts` counter
//! and an event on `atp.alert.integrity.<tenant>.<source>`.
//!
//! The *checkpointer* ([`Checkpointer`]) signs what the log has committed: a partition is due
//! once `every_records` records wait or the oldest waiting record reached the ledger `every`
//! ago (its age counts from the ledger commit, so the role's own lag is not added on top).
//! Checkpoints are published first (ATP_CHECKPOINTS is their system of record), then stored for lookup.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{Context, Message};
use atp_core::Digest;
use atp_core::checkpoint::{Checkpoint, origin};
use atp_core::names::PartitionKey;
use atp_core::note::format_signature_line;
use atp_core::record::timestamp;
use atp_core::tiles::{self, TileLog};
use atp_core::walk::{ChainWalk, Finding};
use atp_nats::integrity::{self as nats_integrity, Alert};
use atp_nats::{signing_keys, streams, subjects};
use atp_store::integrity::{self as store, Halt, LogState, LogUpdate, StoredCheckpoint};
use atp_store::projection;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::sync::Notify;

use crate::reader::{BatchHandler, ReadSpec, Shutdown, Worker};
use crate::signer::CheckpointSigner;
use crate::{Classify, Handling, RoleError};
use atp_telemetry::failpoint;

/// Ledger messages per batch: a transaction of tiles for up to this many leaves.
pub const BATCH_MAX: usize = 1000;

/// When checkpoints are issued (CONTRACT §4: at most 1000 records or 1 s apart by default).
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_records: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_records: 1000,
            every: Duration::from_secs(1),
        }
    }
}

/// Counters for tests, benchmarks and logs.
#[derive(Debug, Default)]
pub struct IntegrityStats {
    pub leaves: AtomicU64,
    pub checkpoints: AtomicU64,
    pub alerts: AtomicU64,
}

/// What the log has committed and the checkpointer has yet to sign, per partition.
#[derive(Debug, Clone)]
struct Waiting {
    size: u64,
    root: Digest,
    signed: u64,
    /// Per committed batch: the tree size after it and the ledger time of its first record.
    /// The oldest entry past `signed` says how long the oldest unsigned record has waited,
    /// counted from its commit to the ledger (so the integrity role's own lag is not added).
    batches: VecDeque<(u64, DateTime<Utc>)>,
}

impl Waiting {
    fn oldest_unsigned(&self) -> Option<DateTime<Utc>> {
        self.batches
            .iter()
            .find(|(end, _)| *end > self.signed)
            .map(|(_, at)| *at)
    }
}

/// The hand-over between the two halves.
#[derive(Debug, Clone, Default)]
pub struct Board {
    waiting: Arc<Mutex<HashMap<PartitionKey, Waiting>>>,
    wake: Arc<Notify>,
}

impl Board {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PartitionKey, Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The log committed `p` up to `size` (root `root`); its first new record reached the
    /// ledger at `first_at`.
    fn committed(
        &self,
        p: &PartitionKey,
        size: u64,
        root: Digest,
        signed: u64,
        first_at: DateTime<Utc>,
        policy: &CheckpointPolicy,
    ) {
        let mut w = self.lock();
        let entry = w.entry(p.clone()).or_insert_with(|| Waiting {
            size: signed,
            root,
            signed,
            batches: VecDeque::new(),
        });
        entry.signed = entry.signed.max(signed);
        if size > entry.size {
            entry.batches.push_back((size, first_at));
            entry.size = size;
            entry.root = root;
        }
        if entry.size.saturating_sub(entry.signed) >= policy.every_records {
            self.wake.notify_one();
        }
    }

    /// When the oldest record of `p` not yet under a checkpoint reached the ledger.
    fn oldest_unsigned(&self, p: &PartitionKey) -> Option<DateTime<Utc>> {
        self.lock().get(p).and_then(Waiting::oldest_unsigned)
    }

    fn due(&self, policy: &CheckpointPolicy) -> Vec<(PartitionKey, u64, Digest)> {
        let every = chrono::Duration::from_std(policy.every).unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        self.lock()
            .iter()
            .filter(|(_, w)| {
                w.size > w.signed
                    && (w.size - w.signed >= policy.every_records
                        || w.oldest_unsigned().is_some_and(|at| now - at >= every))
            })
            .map(|(p, w)| (p.clone(), w.size, w.root))
            .collect()
    }

    fn signed(&self, p: &PartitionKey, size: u64) {
        if let Some(w) = self.lock().get_mut(p) {
            w.signed = w.signed.max(size);
            let signed = w.signed;
            w.batches.retain(|(end, _)| *end > signed);
        }
    }
}

/// One partition as the log half tracks it.
struct Part {
    walk: ChainWalk,
    ledger_seq: u64,
    signed: u64,
    halted: Option<Halt>,
    dirty: bool,
    /// Ledger time of the first record appended since the last commit.
    first_at: Option<DateTime<Utc>>,
}

/// The log half: a [`Worker`] over ATP_LEDGER.
pub struct IntegrityLog {
    js: Context,
    pool: PgPool,
    board: Board,
    policy: CheckpointPolicy,
    stats: Arc<IntegrityStats>,
    parts: HashMap<PartitionKey, Part>,
}

impl IntegrityLog {
    pub fn new(
        js: Context,
        pool: PgPool,
        board: Board,
        policy: CheckpointPolicy,
        stats: Arc<IntegrityStats>,
    ) -> Self {
        Self {
            js,
            pool,
            board,
            policy,
            stats,
            parts: HashMap::new(),
        }
    }

    /// Loads a partition's log from its stored state and right-edge tiles.
    async fn load(&self, p: &PartitionKey) -> Result<Part, RoleError> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .or_retry("connecting to the database")?;
        let Some(state) = store::log_state_of(&mut conn, p)
            .await
            .or_retry("reading a partition's log state")?
        else {
            return Ok(Part {
                walk: ChainWalk::new(p.clone()),
                ledger_seq: 0,
                signed: 0,
                halted: None,
                dirty: false,
                first_at: None,
            });
        };
        let mut edge = store::read_tiles(&mut conn, p, &tiles::edge_tiles(state.tree_size))
            .await
            .or_retry("reading a partition's edge tiles")?;
        let log = TileLog::resume(state.tree_size, |id| edge.remove(&id))
            .map_err(|e| RoleError::fatal(format!("stored Merkle log of {p} is incomplete"), e))?;
        if log.root() != state.root {
            return Err(RoleError::new(
                Handling::Fatal,
                format!(
                    "stored tiles of {p} do not give the stored root at size {}: rebuild the integrity read model",
                    state.tree_size
                ),
            ));
        }
        Ok(Part {
            walk: ChainWalk::resume(p.clone(), state.chain_hash, log),
            ledger_seq: state.ledger_seq,
            signed: state.checkpoint_size,
            halted: state.halted,
            dirty: false,
            first_at: None,
        })
    }

    async fn raise(&self, p: &PartitionKey, seq: u64, finding: &Finding) -> Result<(), RoleError> {
        tracing::error!(
            alert = "integrity",
            kind = finding.code(),
            tenant.id = %p.tenant,
            source.id = %p.source,
            chain_index = finding.index(),
            ledger_seq = seq,
            detail = %finding,
            "integrity alert: the partition's log is halted"
        );
        crate::metrics::metrics()
            .integrity_alerts
            .add(1, &[crate::metrics::label("kind", finding.code())]);
        self.stats.alerts.fetch_add(1, Ordering::Relaxed);
        let alert = Alert {
            kind: finding.code().to_owned(),
            tenant_id: p.tenant.to_string(),
            source_id: p.source.to_string(),
            chain_index: finding.index(),
            ledger_seq: seq,
            detail: finding.to_string(),
            detected_at: timestamp(Utc::now()),
        };
        nats_integrity::publish_alert(&self.js, p, &alert)
            .await
            .or_restart("publishing an integrity alert")
    }

    /// Walks one message into its partition's log (or halts the partition); returns the
    /// message's ledger sequence.
    async fn take(&mut self, m: &Message) -> Result<u64, RoleError> {
        let (seq, at) = m
            .info()
            .map(|i| (i.stream_sequence, crate::to_chrono(i.published)))
            .or_retry("message without info")?;
        let Some(p) = subjects::partition_of(subjects::LEDGER, &m.subject) else {
            tracing::error!(subject = %m.subject, ledger_seq = seq, "ledger message on a subject that names no partition");
            return Ok(seq);
        };
        if !self.parts.contains_key(&p) {
            let part = self.load(&p).await?;
            self.parts.insert(p.clone(), part);
        }
        let Some(part) = self.parts.get_mut(&p) else {
            return Ok(seq);
        };
        if part.halted.is_some() || seq <= part.ledger_seq {
            return Ok(seq);
        }
        match part.walk.push(&m.payload) {
            Ok(_) => {
                part.ledger_seq = seq;
                part.dirty = true;
                part.first_at.get_or_insert(at);
                self.stats.leaves.fetch_add(1, Ordering::Relaxed);
            }
            Err(finding) => {
                part.halted = Some(Halt {
                    at_index: finding.index(),
                    reason: format!("{}: {finding} (ledger seq {seq})", finding.code()),
                });
                part.dirty = true;
                self.raise(&p, seq, &finding).await?;
            }
        }
        Ok(seq)
    }
}

impl Worker for IntegrityLog {
    const NAME: &'static str = "integrity";

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        // In-memory logs are re-derived from what was committed.
        self.parts.clear();
        let wm = projection::watermark_row(&self.pool, store::WATERMARK)
            .await
            .or_retry("reading the integrity watermark")?;
        Ok(ReadSpec {
            stream: streams::LEDGER.to_owned(),
            filter_subjects: vec![subjects::all(subjects::LEDGER)],
            start_seq: wm.map_or(0, |w| w.stream_seq) + 1,
            batch_max: BATCH_MAX,
            stop_after: None,
            stop_at_end: false,
            tail_subject: None,
            headers_only: false,
        })
    }
}

/// An `integrity.record` span, child of the trace context the ledger message carries; it ends
/// once the record is in the committed Merkle log.
fn record_span(m: &Message) -> tracing::Span {
    let tenant = atp_nats::subjects::tokens_of(atp_nats::subjects::LEDGER, &m.subject)
        .map_or("", |(t, _)| t);
    let span = crate::telemetry::consumer_span!(
        "integrity.record",
        m.subject,
        db.system.name = "postgresql",
        tenant.id = tenant,
    );
    crate::telemetry::follow_message(&span, m.headers.as_ref());
    span
}

impl BatchHandler for IntegrityLog {
    async fn handle(&mut self, batch: &Arc<[Message]>) -> Result<(), RoleError> {
        let _spans: Vec<tracing::Span> = if crate::telemetry::spans_on() {
            batch.iter().map(record_span).collect()
        } else {
            Vec::new()
        };
        let mut last = 0;
        for m in batch.iter() {
            last = self.take(m).await?;
        }
        let mut updates = Vec::new();
        for (p, part) in self.parts.iter_mut().filter(|(_, part)| part.dirty) {
            part.dirty = false;
            updates.push(LogUpdate {
                partition: p.clone(),
                state: LogState {
                    tree_size: part.walk.size(),
                    root: part.walk.root(),
                    chain_hash: part.walk.chain_hash(),
                    ledger_seq: part.ledger_seq,
                    checkpoint_size: part.signed,
                    halted: part.halted.clone(),
                },
                tiles: part.walk.log_mut().take_writes(),
            });
        }
        // From here the in-memory logs are ahead of storage: a failure must restart the role
        // from what was committed, not retry this batch on top of them.
        let commit = async {
            let mut tx = self.pool.begin().await?;
            store::write_logs(&mut tx, &updates).await?;
            projection::advance_watermark(&mut tx, store::WATERMARK, last, None).await?;
            tx.commit().await?;
            Ok::<_, atp_store::StoreError>(())
        };
        commit.await.or_restart("committing the Merkle log")?;
        for u in &updates {
            let Some(part) = self.parts.get_mut(&u.partition) else {
                continue;
            };
            let first_at = part.first_at.take().unwrap_or_else(Utc::now);
            if u.state.tree_size > 0 {
                self.board.committed(
                    &u.partition,
                    u.state.tree_size,
                    u.state.root,
                    part.signed,
                    first_at,
                    &self.policy,
                );
            }
        }
        Ok(())
    }
}

/// The checkpoint half: signs and publishes what the log committed.
pub struct Checkpointer<S> {
    js: Context,
    pool: PgPool,
    signer: Arc<S>,
    board: Board,
    policy: CheckpointPolicy,
    stats: Arc<IntegrityStats>,
    published_kid: Option<String>,
}

impl<S: CheckpointSigner> Checkpointer<S> {
    pub fn new(
        js: Context,
        pool: PgPool,
        signer: Arc<S>,
        board: Board,
        policy: CheckpointPolicy,
        stats: Arc<IntegrityStats>,
    ) -> Self {
        Self {
            js,
            pool,
            signer,
            board,
            policy,
            stats,
            published_kid: None,
        }
    }

    /// Runs until shutdown. Failures are logged and retried on the next tick: what is due
    /// stays due until it is stored.
    pub async fn run(mut self, mut shutdown: Shutdown) -> Result<(), RoleError> {
        // Logs committed before a restart but never signed are due at once.
        let mut loaded = false;
        // How late a due checkpoint may be: a twentieth of the interval, at most 50 ms.
        let tick =
            (self.policy.every / 20).clamp(Duration::from_millis(5), Duration::from_millis(50));
        loop {
            if !loaded {
                match store::uncheckpointed(&self.pool).await {
                    Ok(rows) => {
                        for (p, s) in rows {
                            // Waiting since before the restart: due at once.
                            self.board.committed(
                                &p,
                                s.tree_size,
                                s.root,
                                s.checkpoint_size,
                                DateTime::<Utc>::UNIX_EPOCH,
                                &self.policy,
                            );
                        }
                        loaded = true;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot read unsigned logs; retrying"),
                }
            }
            if let Err(e) = self.issue_due().await {
                tracing::warn!(error = %e, "issuing checkpoints failed; retrying");
            }
            tokio::select! {
                _ = self.board.wake.notified() => {}
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
    }

    async fn issue_due(&mut self) -> Result<(), RoleError> {
        let ring = self
            .signer
            .keyring()
            .await
            .or_retry("reading the signing keys")?;
        if self.published_kid.as_deref() != Some(ring.active.kid.as_str()) {
            let kv = signing_keys::bucket(&self.js)
                .await
                .or_retry("opening the signing keys bucket")?;
            signing_keys::publish(&kv, &ring.all)
                .await
                .or_retry("publishing the signing keys")?;
            tracing::info!(kid = %ring.active.kid, verifier_key = %ring.active.verifier_key, "checkpoint signing key published");
            self.published_kid = Some(ring.active.kid.clone());
        }
        let due = self.board.due(&self.policy);
        if due.is_empty() {
            return Ok(());
        }
        let key = &ring.active;
        let key_id = u32::from_str_radix(&key.kid, 16)
            .map_err(|e| RoleError::fatal(format!("key id {}", key.kid), e))?;
        let mut acks = Vec::with_capacity(due.len());
        let mut rows = Vec::with_capacity(due.len());
        let waited: Vec<Option<DateTime<Utc>>> = due
            .iter()
            .map(|(p, _, _)| self.board.oldest_unsigned(p))
            .collect();
        for (p, size, root) in due {
            let body = Checkpoint {
                origin: origin(&key.name, &p),
                size,
                root,
            }
            .body();
            let sig = self
                .signer
                .sign(&key.kid, body.as_bytes())
                .await
                .or_retry("signing a checkpoint")?;
            let note = format!("{body}\n{}", format_signature_line(&key.name, key_id, &sig));
            failpoint::crash_point(failpoint::INTEGRITY_BEFORE_PUBLISH);
            acks.push(
                nats_integrity::publish_checkpoint(&self.js, &p, size, &key.kid, &note)
                    .await
                    .or_retry("publishing a checkpoint")?,
            );
            rows.push(StoredCheckpoint {
                tenant_id: p.tenant.to_string(),
                source_id: p.source.to_string(),
                tree_size: i64::try_from(size).unwrap_or(i64::MAX),
                root: root.0.to_vec(),
                key_id: key.kid.clone(),
                note,
                issued_at: Utc::now(),
            });
        }
        for ack in
            futures::future::join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
                .await
        {
            ack.or_retry("publishing a checkpoint")?;
        }
        if !rows.is_empty() {
            failpoint::crash_point(failpoint::INTEGRITY_BEFORE_STORE);
        }
        store::insert_checkpoints(&self.pool, &rows)
            .await
            .or_retry("storing checkpoints")?;
        for r in &rows {
            if let Ok(p) = PartitionKey::from_ids(&r.tenant_id, &r.source_id) {
                self.board.signed(&p, r.tree_size as u64);
            }
        }
        self.stats
            .checkpoints
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        let m = crate::metrics::metrics();
        m.checkpoints.add(rows.len() as u64, &[]);
        let now = Utc::now();
        for since in waited.into_iter().flatten() {
            let lag = (now - since).num_milliseconds().max(0) as f64 / 1000.0;
            m.checkpoint_lag_seconds.record(lag, &[]);
        }
        Ok(())
    }
}

/// Runs both halves until shutdown.
pub async fn run<S: CheckpointSigner>(
    js: Context,
    pool: PgPool,
    signer: Arc<S>,
    policy: CheckpointPolicy,
    stats: Arc<IntegrityStats>,
    shutdown: Shutdown,
) -> Result<(), RoleError> {
    let board = Board::default();
    let mut log = IntegrityLog::new(
        js.clone(),
        pool.clone(),
        board.clone(),
        policy,
        stats.clone(),
    );
    let checkpointer = Checkpointer::new(js.clone(), pool, signer, board, policy, stats);
    let (a, b) = tokio::join!(
        crate::reader::run_role(&js, &mut log, shutdown.clone()),
        checkpointer.run(shutdown),
    );
    a.and(b)
}
