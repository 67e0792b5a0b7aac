//! The ingest role: ATP_INGRESS → verify, validate, canonicalise, stamp, chain → ATP_LEDGER
//! (accepted) or ATP_REJECTED (refused).
//!
//! What happens to each message (skipped, answered by its record, refused, sealed) is decided by
//! [`atp_core::ingest`], a pure function of the partition's state and the message's admission;
//! this module reads the messages and partition tails in, and writes the outcomes out.
//!
//! Exactly-once without a side store. Ingress is read in order from a resume hint. For each
//! partition the worker knows, from the ledger's tail alone, the highest ingress sequence
//! already recorded (`Atp-Ingress-Seq` on the last ledger message) and, from ATP_REJECTED's
//! tail, the highest already refused. Anything at or below those is skipped on re-reading, so a
//! crash at any point re-does only what never became durable. Within a batch a partition's
//! rejections are committed before its records: then "ingress seq ≤ ledger cursor" means
//! handled, whatever the outcome.
//!
//! No forks. Each partition's records go out as one atomic batch whose first message expects
//! the ledger subject's last sequence as this worker read it. A second worker that appended in
//! between makes the batch fail whole; the worker then forgets the partition, re-reads its tail
//! and handles the batch again, now skipping what the other worker recorded.
//!
//! Lanes (ADR 0017). One FIFO for every tenant would let one tenant's backlog hold up every
//! other tenant's events. So the worker reads ATP_INGRESS in lanes that run side by side, each
//! with its own ordered consumer and resume hint: one per registered tenant
//! (`atp.ingress.<tenant>.*`), and the rest lane for every message no tenant lane takes
//! (tenants not yet registered, subjects that name no valid tenant). Nothing above depends on
//! which lane handles a message: positions are per partition, and a partition belongs to one
//! tenant. When a tenant's lane opens it starts where the rest lane's hint says every earlier
//! message was handled; the two may both handle a message in between, which the partition
//! cursors and the atomic batches make harmless. What a lane has handled is trimmed from the
//! stream, so ATP_INGRESS holds what waits and its per-subject limit budgets each partition.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use async_nats::jetstream::{Context, Message};
use atp_core::event::{Admitted, Channel, Submission, admit};
use atp_core::ingest::{Partition, Step};
use atp_core::partition::{PartitionState, RecordRef, Stamps};
use atp_core::policy::{PolicyDocument, PolicyStamp};
use atp_core::privacy::Sealing;
use atp_core::reason::{RefusalFacts, RejectionEnvelope};
use atp_core::record::{self, timestamp};
use atp_core::registry::SourceRegistration;
use atp_core::{PartitionKey, Reason, Rejection, SealedRecord, SourceId, TenantId, attestation};
use atp_nats::headers::{BadHeader, Headers};
use atp_nats::policy::PolicyCache;
use atp_nats::registry::RegistryCache;
use atp_nats::{Append, AppendError, Outgoing, append_atomic, headers, streams, subjects};
use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use ed25519_dalek::VerifyingKey;
use futures::StreamExt;

use crate::metrics::{label, metrics};
use crate::reader::{BatchHandler, LaneOpener, LaneSet, ReadSpec, Shutdown, Worker};
pub use crate::shard::Shard;
use crate::{Classify, RoleError, telemetry, to_chrono};
use atp_telemetry::failpoint;

/// How often the ingest resume hint is stored: re-reading 250 ms of ingress after a crash is
/// cheap, and it keeps a KV write off every batch.
const HINT_EVERY: Duration = Duration::from_millis(250);

/// Batches smaller than this are committed before the next is read; larger ones (the reader
/// only builds them under load) are committed while the next is planned. Measured on 2 cores:
/// pipelining adds ~25% throughput under load but ~50% to p99 latency at 2,000 events/s, where
/// batches hold tens of events.
const PIPELINE_MIN: usize = 256;

#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub shard: Shard,
    /// Messages handled per batch. At most the 1000 of an atomic batch, since one partition may
    /// fill a whole batch; 1000 is also where JetStream's batch throughput levels off.
    pub batch_max: usize,
    /// How far back a partition's tail is read for duplicate ids when the worker (re)loads it.
    pub dedupe_window: Duration,
    /// The gateway's attestation key; without it gateway-forwarded submissions are refused.
    pub gateway_key: Option<VerifyingKey>,
    /// The key-management port that holds each tenant's key (ADR 0019): subject keys are
    /// created under it the first time a value of theirs is sealed.
    pub tenant_keys: Arc<dyn crate::keyring::TenantKeys>,
    /// The read model, asked once per batch whether an event id already has a record, so that
    /// a repeat older than the dedupe window still answers its record. Without it, duplicates
    /// are recognised within the window only (and, with `sequence`, refused for ever).
    pub dedupe_db: Option<sqlx::PgPool>,
    /// Submissions a second one tenant's lane handles (a second's worth as burst); `None`:
    /// as fast as the machine goes. The rest lane is not limited.
    pub tenant_rate: Option<std::num::NonZeroU32>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            shard: Shard::ALL,
            batch_max: atp_nats::batch::MAX_BATCH,
            dedupe_window: Duration::from_secs(600),
            gateway_key: None,
            tenant_keys: Arc::new(crate::keyring::FileTenantKeys::new(std::path::Path::new(
                DEFAULT_TENANT_KEYS_DIR,
            ))),
            dedupe_db: None,
            tenant_rate: None,
        }
    }
}

/// Where the file adapter keeps tenant keys unless configured (`ATP_TENANT_KEYS_DIR`).
pub const DEFAULT_TENANT_KEYS_DIR: &str = ".atp/tenant-keys";

/// How often the worker looks for tenants that have no lane yet. Until a new tenant's lane
/// opens, the rest lane handles its events, so this bounds only how soon it is isolated.
const LANE_REFRESH: Duration = Duration::from_secs(5);

/// Which of ATP_INGRESS's messages a lane handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lane {
    /// Every message of one tenant: `atp.ingress.<tenant>.*`.
    Tenant(TenantId),
    /// Every message of a tenant without a lane of its own.
    Rest,
}

/// The rest lane's name in logs (tenant ids cannot hold parentheses).
pub(crate) const REST: &str = "(rest)";

/// The tenants that have a lane of their own, which the rest lane leaves alone.
type Laned = Arc<RwLock<HashSet<String>>>;

/// A partition as its ingress subject names it: the two tokens, whether or not they are valid
/// ids (a message with an invalid one is refused, and its refusal still needs the partition's
/// rejected tail). Printed as `PartitionKey` is, `tenant:source`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PartKey {
    tenant: String,
    source: String,
}

impl PartKey {
    fn new(tenant: &str, source: &str) -> Self {
        PartKey {
            tenant: tenant.to_owned(),
            source: source.to_owned(),
        }
    }
}

impl std::fmt::Display for PartKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.tenant, self.source)
    }
}

/// What the worker knows of one partition: what the core decides on, and where the
/// partition's subjects end (which its next appends expect).
struct Part {
    state: Partition,
    /// Stream sequence of the last message on the partition's ledger subject (0 = none).
    ledger_tail: u64,
    /// Stream sequence of the last message on the partition's rejected subject (0 = none).
    rejected_tail: u64,
}

#[derive(Default)]
struct Plan {
    ledger_subject: String,
    rejected_subject: String,
    records: Vec<Outgoing>,
    rejections: Vec<Outgoing>,
}

/// Counters for one batch, exported as metrics (`record_batch`) and summed in `Ingest::totals`.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchStats {
    pub accepted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub skipped: u64,
    /// Rejections per reason, indexed like [`Reason::ALL`].
    pub by_reason: [u64; Reason::ALL.len()],
}

impl BatchStats {
    fn count_rejection(&mut self, reason: Reason) {
        self.rejected += 1;
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            self.by_reason[i] += 1;
        }
    }
}

pub struct Ingest {
    js: Context,
    lane: Lane,
    laned: Laned,
    ingress: Stream,
    ledger: Stream,
    rejected: Stream,
    registry: RegistryCache,
    policies: PolicyCache,
    subject_keys: crate::keyring::SubjectKeys,
    producers: Store,
    progress: Store,
    cfg: IngestConfig,
    /// The rest lane: the tenants whose messages it has handled, trimmed with its hint.
    trim: HashSet<String>,
    /// A tenant lane's pace, when `tenant_rate` is set.
    pace: Option<Pace>,
    parts: HashMap<PartKey, Part>,
    /// The previous batch's commit, still in flight while this batch is planned.
    inflight: Option<Inflight>,
    hint_written: std::time::Instant,
    /// A handled position whose hint the rate limit held back.
    hint_due: Option<u64>,
    /// Totals since start, for tests and the benchmark.
    pub totals: Arc<std::sync::Mutex<BatchStats>>,
}

impl Ingest {
    pub async fn new(js: Context, cfg: IngestConfig) -> Result<Self, RoleError> {
        let ingress = js
            .get_stream(streams::INGRESS)
            .await
            .or_fatal("opening ATP_INGRESS")?;
        let ledger = js
            .get_stream(streams::LEDGER)
            .await
            .or_fatal("opening ATP_LEDGER")?;
        let rejected = js
            .get_stream(streams::REJECTED)
            .await
            .or_fatal("opening ATP_REJECTED")?;
        let producers = js
            .get_key_value(streams::PRODUCERS_BUCKET)
            .await
            .or_fatal("opening the producer registry")?;
        let progress = js
            .get_key_value(streams::INGEST_BUCKET)
            .await
            .or_fatal("opening the ingest progress bucket")?;
        let registry = RegistryCache::start(producers.clone())
            .await
            .or_fatal("loading the producer registry")?;
        let policies = PolicyCache::new(
            atp_nats::policy::bucket(&js)
                .await
                .or_fatal("opening the policy bucket")?,
        );
        let subject_keys = crate::keyring::SubjectKeys::new(
            atp_nats::subject_keys::bucket(&js)
                .await
                .or_fatal("opening the subject-key bucket")?,
            cfg.tenant_keys.clone(),
        );
        Ok(Self {
            js,
            lane: Lane::Rest,
            laned: Arc::default(),
            ingress,
            ledger,
            rejected,
            registry,
            policies,
            subject_keys,
            producers,
            progress,
            pace: None,
            cfg,
            trim: HashSet::new(),
            parts: HashMap::new(),
            inflight: None,
            hint_written: std::time::Instant::now(),
            hint_due: None,
            totals: Arc::default(),
        })
    }

    /// Another lane of the same worker: shared connections, registry and totals, fresh state.
    fn lane(&self, lane: Lane) -> Self {
        let pace = match (&lane, self.cfg.tenant_rate) {
            (Lane::Tenant(_), Some(rate)) => Some(Pace::new(rate)),
            _ => None,
        };
        Self {
            js: self.js.clone(),
            lane,
            laned: Arc::clone(&self.laned),
            ingress: self.ingress.clone(),
            ledger: self.ledger.clone(),
            rejected: self.rejected.clone(),
            registry: self.registry.clone(),
            policies: self.policies.clone(),
            subject_keys: self.subject_keys.clone(),
            producers: self.producers.clone(),
            progress: self.progress.clone(),
            pace,
            cfg: self.cfg.clone(),
            trim: HashSet::new(),
            parts: HashMap::new(),
            inflight: None,
            hint_written: std::time::Instant::now(),
            hint_due: None,
            totals: Arc::clone(&self.totals),
        }
    }

    /// A paced lane takes a twentieth of its rate at a time, so its work comes in even slices
    /// (50 ms of its rate each) instead of a second's worth at once, which every other lane would
    /// feel as a stall.
    fn batch_max(&self) -> usize {
        let most = self.cfg.batch_max.min(atp_nats::batch::MAX_BATCH);
        match (&self.pace, self.cfg.tenant_rate) {
            (Some(_), Some(rate)) => (rate.get() as usize / 20).clamp(1, most),
            _ => most,
        }
    }

    fn progress_key(&self) -> String {
        hint_key(self.cfg.shard, &self.lane)
    }

    fn is_laned(&self, tenant: &str) -> bool {
        self.laned.read().is_ok_and(|l| l.contains(tenant))
    }

    /// Runs the role: every tenant lane and the rest lane, side by side, until shutdown or a
    /// fatal error. Tenants registered later get their lane within [`LANE_REFRESH`].
    pub async fn run(self, shutdown: Shutdown) -> Result<(), RoleError> {
        let mut set = LaneSet::new(self.js.clone(), shutdown);
        // Lanes known already open first, so the rest lane leaves their tenants alone from its
        // first batch on (were it not so, both would handle them for a while: harmless, slower).
        if let Err(e) = self.open_lanes(&mut set).await {
            tracing::warn!(error = %e, "could not open the tenant lanes yet; retrying");
        }
        set.spawn(REST, self.lane(Lane::Rest));
        set.run(&self, LANE_REFRESH).await
    }
}

impl LaneOpener for Ingest {
    /// Opens a lane for every tenant that has a registration or a lane hint and no lane yet.
    /// A new lane's hint is written before the rest lane starts leaving the tenant alone, at
    /// the rest lane's hint: every message of the tenant at or below it is handled.
    async fn open_lanes(&self, set: &mut LaneSet) -> Result<(), String> {
        let label = self.cfg.shard.label();
        let mut tenants = BTreeSet::new();
        let mut keys = self.producers.keys().await.map_err(|e| e.to_string())?;
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| e.to_string())?;
            if let Some((t, _)) = k.split_once('.') {
                tenants.insert(t.to_owned());
            }
        }
        let mut keys = self.progress.keys().await.map_err(|e| e.to_string())?;
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| e.to_string())?;
            if let Some(t) = atp_nats::progress::lane_tenant(&label, &k) {
                tenants.insert(t.to_owned());
            }
        }
        for tenant in set.unopened(tenants) {
            let t = tenant.to_string();
            let key = atp_nats::progress::lane_key(&label, &t);
            if self
                .progress
                .get(&key)
                .await
                .map_err(|e| e.to_string())?
                .is_none()
            {
                let rest = self
                    .progress
                    .get(atp_nats::progress::rest_key(&label))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_or(0, |v| {
                        String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0)
                    });
                // Another instance of this shard (a rolling restart) may have created it: then
                // its value stands.
                let _ = self.progress.create(&key, rest.to_string().into()).await;
                failpoint::crash_point(failpoint::INGEST_LANE_HINT_STORED);
            }
            if let Ok(mut laned) = self.laned.write() {
                laned.insert(t.clone());
            }
            tracing::info!(tenant = %tenant, "ingest lane opened");
            set.spawn(&t, self.lane(Lane::Tenant(tenant)));
        }
        Ok(())
    }
}

impl Ingest {
    /// Looks up, in the read model, the event ids of this batch that the partitions' recent-id
    /// windows do not hold, and remembers those that already have a record.
    async fn remember_known(
        &mut self,
        db: &sqlx::PgPool,
        batch: &[Message],
        located: &[Option<Located>],
    ) -> Result<(), RoleError> {
        let mut keys = Vec::new();
        for (msg, loc) in batch.iter().zip(located) {
            let Some(loc) = loc else { continue };
            let Some(part) = self.parts.get(&loc.pkey) else {
                continue;
            };
            let Some(chain) = &part.state.chain else {
                continue;
            };
            if loc.seq <= chain.ledger_cursor || chain.knows_every_id() {
                continue;
            }
            let Some(id) = event_id_of(&submission(msg, Channel::Nats)) else {
                continue;
            };
            if chain.recent(&id).is_none() {
                keys.push((loc.pkey.tenant.clone(), loc.pkey.source.clone(), id));
            }
        }
        let known = atp_store::query::known_events(db, &keys)
            .await
            .or_retry("duplicate look-up in the read model")?;
        for k in known {
            let pkey = PartKey::new(&k.tenant_id, &k.source_id);
            let Some(chain) = self
                .parts
                .get_mut(&pkey)
                .and_then(|p| p.state.chain.as_mut())
            else {
                continue;
            };
            let digest = k.digest;
            let chain_index = u64::try_from(k.chain_index).unwrap_or(0);
            let fingerprint = atp_core::event::record_fingerprint(&k.record);
            chain.remember(
                k.event_id,
                RecordRef {
                    chain_index,
                    record_id: k.record_id,
                    digest,
                    fingerprint,
                },
            );
        }
        Ok(())
    }

    /// The batch with the bodies of the located messages, read by sequence (the rest lane's
    /// reader delivers headers only).
    async fn with_bodies(
        &self,
        batch: &Arc<[Message]>,
        located: &[Option<Located>],
    ) -> Result<Arc<[Message]>, RoleError> {
        let mut out = Vec::with_capacity(batch.len());
        for (msg, loc) in batch.iter().zip(located) {
            let mut msg = msg.clone();
            if let Some(loc) = loc {
                let full = self.ingress.direct_get(loc.seq).await.map_err(|e| {
                    RoleError::retry(format!("reading ingress message {}", loc.seq), e)
                })?;
                msg.message.payload = full.payload;
            }
            out.push(msg);
        }
        Ok(out.into())
    }

    /// Reads a partition's state from the ledger's and the rejected stream's tails.
    async fn load(
        &self,
        tenant: &str,
        source: &str,
        key: Option<&PartitionKey>,
    ) -> Result<Part, RoleError> {
        let rejected_subject = subjects::rejected_raw(tenant, source);
        let (rejected_cursor, rejected_tail) =
            match last_on(&self.rejected, &rejected_subject).await? {
                None => (0, 0),
                Some((seq, headers, _, _)) => {
                    (header_u64(&headers, headers::INGRESS_SEQ).unwrap_or(0), seq)
                }
            };
        let Some(key) = key else {
            return Ok(Part {
                state: Partition {
                    chain: None,
                    rejected_cursor,
                },
                ledger_tail: 0,
                rejected_tail,
            });
        };
        let ledger_subject = subjects::ledger(key);
        let (mut chain, ledger_tail, tail_time) = match last_on(&self.ledger, &ledger_subject)
            .await?
        {
            None => (PartitionState::genesis(key.clone()), 0, None),
            Some((seq, headers, payload, time)) => {
                let opened = record::open(&payload, false).map_err(|e| {
                    tracing::error!(partition = %key, ledger_seq = seq, error = %e, "ledger tail does not parse");
                    RoleError::fatal(format!("ledger tail of {key} at {seq} does not parse"), e)
                })?;
                let state = PartitionState::resume(
                    key.clone(),
                    opened.record.chain_index,
                    opened.link.chain_hash,
                    header_u64(&headers, headers::SEQ_HWM),
                    header_u64(&headers, headers::INGRESS_SEQ).unwrap_or(0),
                );
                (state, seq, Some(time))
            }
        };
        // Duplicate ids within the window are recognised after a restart too.
        let window_start = time::OffsetDateTime::now_utc() - self.cfg.dedupe_window;
        if tail_time.is_some_and(|t| t >= window_start) {
            self.warm_recent_ids(&ledger_subject, ledger_tail, window_start, &mut chain)
                .await?;
        }
        Ok(Part {
            state: Partition {
                chain: Some(chain),
                rejected_cursor,
            },
            ledger_tail,
            rejected_tail,
        })
    }

    async fn warm_recent_ids(
        &self,
        subject: &str,
        until_seq: u64,
        from: time::OffsetDateTime,
        chain: &mut PartitionState,
    ) -> Result<(), RoleError> {
        let consumer = self
            .ledger
            .create_consumer(OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::ByStartTime { start_time: from },
                ..Default::default()
            })
            .await
            .or_retry("reading a partition tail")?;
        let mut msgs = consumer
            .messages()
            .await
            .or_retry("reading a partition tail")?;
        while let Some(m) = tokio::time::timeout(Duration::from_secs(10), msgs.next())
            .await
            .or_retry("reading a partition tail")?
        {
            let m = m.or_retry("reading a partition tail")?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(until_seq);
            if let Ok(opened) = record::open(&m.payload, false)
                && let Some(id) = opened.record.event.get("id").and_then(|v| v.as_str())
            {
                let r = RecordRef {
                    chain_index: opened.record.chain_index,
                    record_id: opened.record.record_id.clone(),
                    digest: opened.link.digest,
                    fingerprint: atp_core::event::stored_fingerprint(&opened.record.event),
                };
                chain.remember(id.to_owned(), r);
            }
            if seq >= until_seq {
                break;
            }
        }
        Ok(())
    }
}

/// Which channel a submission came by; a gateway claim must carry a valid attestation.
fn channel(
    gateway_key: Option<&VerifyingKey>,
    subject: &str,
    h: Option<&HeaderMap>,
    body: &[u8],
) -> Result<Channel, Rejection> {
    let get = |n: &str| h.and_then(|h| h.get(n)).map(|v| v.as_str().to_owned());
    match (get(headers::GATEWAY_SUBJECT), get(headers::GATEWAY_MAC)) {
        (None, None) => Ok(Channel::Nats),
        (Some(token_subject), Some(sig)) => {
            let sig = base64::engine::general_purpose::STANDARD
                .decode(sig)
                .unwrap_or_default();
            match gateway_key {
                Some(k) if attestation::verify(k, subject, &token_subject, body, &sig) => {
                    Ok(Channel::Gateway {
                        subject: token_subject,
                    })
                }
                _ => Err(Rejection::new(
                    Reason::PolicyDenied,
                    "the gateway attestation does not verify",
                )),
            }
        }
        _ => Err(Rejection::new(
            Reason::PolicyDenied,
            "incomplete gateway attestation headers",
        )),
    }
}

/// The last message on `subject`, if any: (stream sequence, headers, payload, time).
async fn last_on(
    stream: &Stream,
    subject: &str,
) -> Result<Option<(u64, HeaderMap, Bytes, time::OffsetDateTime)>, RoleError> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(m) => Ok(Some((m.sequence, m.headers, m.payload, m.time))),
        Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
        Err(e) => Err(RoleError::retry(
            format!("reading the tail of {subject}"),
            e,
        )),
    }
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name).and_then(|v| v.as_str().parse().ok())
}

/// The submission as the core reads it: every value of every header, names in any case (a name
/// given twice, or in two cases, is the core's to refuse).
fn submission<'a>(msg: &'a Message, channel: Channel) -> Submission<'a> {
    let pairs = msg.headers.iter().flat_map(|h| {
        h.iter().flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (AsRef::<str>::as_ref(name), v.as_str()))
        })
    });
    Submission::from_headers(&msg.payload, pairs, channel)
}

fn event_id_of(sub: &Submission<'_>) -> Option<String> {
    if let Some((_, id)) = sub.ce_headers.iter().find(|(n, _)| n == "id") {
        return Some(id.clone());
    }
    let v: serde_json::Value = serde_json::from_slice(sub.body).ok()?;
    v.get("id")?.as_str().map(str::to_owned)
}

impl Worker for Ingest {
    const NAME: &'static str = "ingest";

    async fn start(&mut self) -> Result<ReadSpec, RoleError> {
        // Every (re)start forgets partitions: their state is re-read from the ledger, after any
        // commit still in flight has landed or failed (so the tails read are final).
        if let Some(inflight) = self.inflight.take() {
            let _ = inflight.task.await;
        }
        self.parts.clear();
        let resume = match self.progress.get(self.progress_key()).await {
            Ok(Some(v)) => String::from_utf8_lossy(&v).parse::<u64>().unwrap_or(0),
            Ok(None) => 0,
            Err(e) => return Err(RoleError::retry("reading the ingest resume hint", e)),
        };
        // The rest lane reads every message but handles few (tenants without a lane): it reads
        // headers only and fetches the bodies it needs, so a flooding tenant's bytes are not
        // delivered twice.
        let (filter, tail_subject, headers_only) = match &self.lane {
            Lane::Rest => (subjects::all(subjects::INGRESS), None, true),
            Lane::Tenant(t) => {
                let f = subjects::tenant_all(subjects::INGRESS, t);
                (f.clone(), Some(f), false)
            }
        };
        Ok(ReadSpec {
            stream: streams::INGRESS.to_owned(),
            filter_subjects: vec![filter],
            start_seq: resume + 1,
            batch_max: self.batch_max(),
            stop_after: None,
            stop_at_end: false,
            tail_subject,
            headers_only,
        })
    }
}

/// One ingress message, located.
struct Located {
    seq: u64,
    received_at: chrono::DateTime<Utc>,
    /// The partition its subject names; `key` once both ids are valid.
    pkey: PartKey,
    key: Option<PartitionKey>,
}

/// What the CPU-bound planning step needs besides the batch, all owned so it can run on a
/// blocking thread.
struct PlanInput {
    msgs: Arc<[Message]>,
    located: Vec<Option<Located>>,
    registrations: HashMap<PartKey, Option<Arc<SourceRegistration>>>,
    gateway_key: Option<VerifyingKey>,
    /// The policy current for each tenant of the batch (by subject token).
    policies: HashMap<String, Arc<PolicyDocument>>,
    committed_at: chrono::DateTime<Utc>,
}

/// One message's admission: `None` when it is not this lane's or was handled before.
type Admission = Option<Result<Admitted, Rejection>>;
/// What to seal in an admitted event: nothing, the values and keys, or why it cannot be.
type SealingPlan = Option<Result<Sealing, String>>;

struct PlanOutput {
    plans: HashMap<PartKey, Plan>,
    order: Vec<PartKey>,
    stats: BatchStats,
    /// When each record of the batch reached ingress (for the stage latency).
    received: Vec<chrono::DateTime<Utc>>,
}

impl Ingest {
    /// Writes the hint held back by the rate limit, now that no message waits.
    fn hint_idle(&mut self) {
        if let Some(seq) = self.hint_due {
            self.write_hint(seq);
        }
    }
}

impl BatchHandler for Ingest {
    async fn flush(&mut self) -> Result<(), RoleError> {
        self.settle().await?;
        self.hint_idle();
        Ok(())
    }

    async fn handle(&mut self, batch: &Arc<[Message]>) -> Result<(), RoleError> {
        if let Some(pace) = &mut self.pace {
            let wait = pace.take(batch.len());
            if !wait.is_zero() {
                tracing::debug!(wait_ms = wait.as_millis() as u64, "tenant lane at its rate");
                tokio::time::sleep(wait).await;
            }
        }
        let started = std::time::Instant::now();
        // 1. I/O first: where each message belongs, its partition's tails, its source's registration.
        let mut located = Vec::with_capacity(batch.len());
        let mut registrations: HashMap<PartKey, Option<Arc<SourceRegistration>>> = HashMap::new();
        let mut policies: HashMap<String, Arc<PolicyDocument>> = HashMap::new();
        let mut last_seq = 0;
        for msg in batch.iter() {
            let info = msg.info().or_retry("message without info")?;
            last_seq = info.stream_sequence;
            let Some((t, s)) = subjects::tokens_of(subjects::INGRESS, msg.subject.as_str()) else {
                located.push(None);
                continue;
            };
            let pkey = PartKey::new(t, s);
            if !self.cfg.shard.owns(t, s) || (self.lane == Lane::Rest && self.is_laned(t)) {
                located.push(None);
                continue;
            }
            if self.lane == Lane::Rest && !self.trim.contains(t) && self.trim.len() < REST_TRIM_MAX
            {
                self.trim.insert(t.to_owned());
            }
            let key = match (TenantId::new(t), SourceId::new(s)) {
                (Ok(t), Ok(s)) => Some(PartitionKey::new(t, s)),
                _ => None,
            };
            if !self.parts.contains_key(&pkey) {
                let part = self.load(t, s, key.as_ref()).await?;
                self.parts.insert(pkey.clone(), part);
            }
            if !registrations.contains_key(&pkey) {
                let reg = match &key {
                    Some(k) => self
                        .registry
                        .lookup(k)
                        .await
                        .or_retry("looking up a source's registration")?,
                    None => None,
                };
                registrations.insert(pkey.clone(), reg);
            }
            if let Some(k) = &key
                && !policies.contains_key(t)
            {
                let doc = self
                    .policies
                    .current(&k.tenant)
                    .await
                    .or_retry("reading the tenant's policy")?;
                policies.insert(t.to_owned(), doc);
            }
            located.push(Some(Located {
                seq: info.stream_sequence,
                received_at: to_chrono(info.published),
                pkey,
                key,
            }));
        }

        // The rest lane read headers only: the bodies of what it handles, now.
        let filled;
        let batch = if self.lane == Lane::Rest && located.iter().any(Option::is_some) {
            filled = self.with_bodies(batch, &located).await?;
            &filled
        } else {
            batch
        };

        // Ids older than the window: the read model knows them (it is derived from the ledger and
        // lags it by seconds, while the window covers minutes).
        if let Some(db) = self.cfg.dedupe_db.clone() {
            self.remember_known(&db, batch, &located).await?;
        }

        // 2. CPU: admission (signature checks) in parallel, then decisions and sealing in order,
        // on a blocking thread so the async workers (gateway, projector) are never held up.
        let input = PlanInput {
            msgs: Arc::clone(batch),
            located,
            registrations,
            gateway_key: self.cfg.gateway_key,
            policies,
            committed_at: Utc::now(),
        };
        let parts = std::mem::take(&mut self.parts);
        let (input, parts, admissions) = tokio::task::spawn_blocking(move || {
            let admissions = admit_all(&input, &parts);
            (input, parts, admissions)
        })
        .await
        .or_retry("admission failed")?;
        // Subject keys are I/O (found or created in ATP_SUBJECT_KEYS): fetched between
        // admission, which finds the data subjects, and sealing.
        let sealings = match self.sealings(&input, &admissions).await {
            Ok(s) => s,
            Err(e) => {
                self.parts = parts;
                return Err(e);
            }
        };
        let (parts, planned) = tokio::task::spawn_blocking(move || {
            let mut parts = parts;
            let sealed = seal_all(&input, admissions, sealings);
            let out = plan(&input, sealed, &mut parts);
            (parts, out)
        })
        .await
        .or_retry("planning failed")?;
        self.parts = parts;
        let PlanOutput {
            plans,
            order,
            stats,
            received,
        } = planned?;
        let planned_at = started.elapsed();

        // 3. Effects. The previous batch's commit ran while this one was planned; its outcome
        // decides the tails this batch's appends expect, so it is settled first.
        self.settle().await?;
        self.inflight = Some(self.begin_commit(plans, order, last_seq, stats, received));
        if batch.len() < PIPELINE_MIN {
            // Light load: overlapping buys no throughput, and committing at once is quickest.
            self.settle().await?;
        }
        tracing::debug!(
            size = batch.len(),
            plan_us = planned_at.as_micros() as u64,
            "ingest batch planned"
        );
        Ok(())
    }
}

impl Ingest {
    /// What the policy decides for each admitted event, with the subject keys and nonces to
    /// seal its `personal` and `sensitive` values. A key store that does not answer retries
    /// the batch; a key that cannot be made or opened refuses only its event (UNPROCESSABLE).
    async fn sealings(
        &self,
        input: &PlanInput,
        admissions: &[Admission],
    ) -> Result<Vec<SealingPlan>, RoleError> {
        let mut out = Vec::with_capacity(admissions.len());
        for (admission, loc) in admissions.iter().zip(&input.located) {
            let (Some(Ok(ev)), Some(loc)) = (admission, loc) else {
                out.push(None);
                continue;
            };
            let (Some(policy), Some(key)) = (input.policies.get(&loc.pkey.tenant), &loc.key) else {
                out.push(None);
                continue;
            };
            // ATP's own admin trail is classified by ATP's built-in policy, not the tenant's:
            // its attestations must read as long as the trail proves anything (ADR 0021).
            if key.source.as_str() == atp_core::registry::SYSTEM_SOURCE {
                out.push(None);
                continue;
            }
            let event_type_of = |ev: &Admitted| {
                ev.event
                    .get("type")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            if policy.is_uniform() && !policy.default_classification.is_encrypted() {
                // Nothing to seal and one classification for every value: no walk of `data`.
                let classified = policy.classify(
                    key.source.as_str(),
                    &event_type_of(ev),
                    &serde_json::Value::Null,
                );
                out.push(Some(Ok(Sealing {
                    classified,
                    keys: Default::default(),
                    nonces: Vec::new(),
                })));
                continue;
            }
            let Some(data) = atp_core::privacy::data_of(&ev.event) else {
                out.push(None);
                continue;
            };
            let event_type = ev
                .event
                .get("type")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            let classified = policy.classify(key.source.as_str(), event_type, &data);
            let subject = classified.subject.clone().unwrap_or_default();
            let mut keys = std::collections::BTreeMap::new();
            let mut nonces = Vec::new();
            let mut failed = None;
            for field in classified.encrypted() {
                if !keys.contains_key(&field.retention_policy_id) {
                    let found = self
                        .subject_keys
                        .for_sealing(
                            &key.tenant,
                            &subject,
                            &field.retention_policy_id,
                            &policy.bucket(&field.retention_policy_id, input.committed_at),
                        )
                        .await;
                    match found {
                        Ok(k) => {
                            keys.insert(field.retention_policy_id.clone(), k);
                        }
                        Err(crate::keyring::KeyringError::Store(e)) => {
                            return Err(e).or_retry("finding a subject key");
                        }
                        Err(e) => {
                            failed = Some(format!("cannot seal {}: {e}", field.path));
                            break;
                        }
                    }
                }
                let mut nonce = [0u8; 24];
                rand::fill(&mut nonce);
                nonces.push(nonce);
            }
            out.push(Some(match failed {
                Some(defect) => Err(defect),
                None => Ok(Sealing {
                    classified,
                    keys,
                    nonces,
                }),
            }));
        }
        Ok(out)
    }
}

/// Admits every message (in parallel: admission is pure), then walks the batch in order, asks
/// the core what each message's step is ([`Partition::step`]) and turns the steps into each
/// partition's appends.
///
/// Architecture invariant: nothing a message holds can make this fail or panic for the batch.
/// Every outcome for one message is a record, a duplicate or a rejection; a defect that makes
/// ATP itself fail on one message (a panic in admission, a record that does not seal) becomes
/// that message's `UNPROCESSABLE` rejection, logged at ERROR, and the batch goes on.
fn admit_all(input: &PlanInput, parts: &HashMap<PartKey, Part>) -> Vec<Admission> {
    let admit_one = |i: usize| -> Admission {
        let loc = input.located[i].as_ref()?;
        let msg = &input.msgs[i];
        // Handled before a restart: no signature check paid for it.
        if !parts.get(&loc.pkey)?.state.needs_admission(loc.seq) {
            return None;
        }
        let Some(key) = &loc.key else {
            return Some(Err(Rejection::new(
                Reason::Malformed,
                format!(
                    "subject tokens {:?}.{:?} are not a valid tenant and source id",
                    loc.pkey.tenant, loc.pkey.source
                ),
            )));
        };
        let reg = input
            .registrations
            .get(&loc.pkey)
            .and_then(|r| r.as_deref());
        let admitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ch = channel(
                input.gateway_key.as_ref(),
                msg.subject.as_str(),
                msg.headers.as_ref(),
                &msg.payload,
            )?;
            admit(key, &submission(msg, ch), reg)
        }));
        Some(match admitted {
            // Admission refuses ids that could not be a header value already; this keeps the
            // ledger message buildable, before the event gets a chain position, even if
            // admission ever let one through.
            Ok(Ok(ev)) => match headers::check(headers::EVENT_ID, &ev.id) {
                Ok(()) => Ok(ev),
                Err(e) => Err(unprocessable(loc, &e.to_string())),
            },
            Ok(refused) => refused,
            Err(panic) => Err(unprocessable(
                loc,
                &format!("admission panicked: {}", crate::panic_message(&*panic)),
            )),
        })
    };
    parallel_map(input.msgs.len(), admit_one)
}

/// An admitted event with what its policy decided, its values sealed (on every core) under
/// the record id it gets if it is appended.
struct Sealed {
    admission: Admission,
    sealing: SealingPlan,
    /// Picked before sealing (the associated data binds each value to it); `None` when the
    /// event seals nothing and its record id is picked when it is appended.
    record_id: Option<String>,
}

/// Seals the `personal` and `sensitive` values of every admitted event in parallel, each under
/// a record id picked now. Sealing happens before the partition decides whether the event is a
/// duplicate; the work on a duplicate is thrown away. A sealing that fails (or panics) makes
/// its event `UNPROCESSABLE`, never the batch.
fn seal_all(
    input: &PlanInput,
    admissions: Vec<Admission>,
    sealings: Vec<SealingPlan>,
) -> Vec<Sealed> {
    let mut out: Vec<Sealed> = admissions
        .into_iter()
        .zip(sealings)
        .map(|(admission, sealing)| Sealed {
            admission,
            sealing,
            record_id: None,
        })
        .collect();
    let seals_any = out
        .iter()
        .any(|s| matches!(&s.sealing, Some(Ok(s)) if !s.nonces.is_empty()));
    if !seals_any {
        return out;
    }
    parallel_each_mut(&mut out, |i, item| {
        let (Some(Ok(ev)), Some(Ok(sealing))) = (item.admission.as_mut(), item.sealing.as_ref())
        else {
            return;
        };
        let Some(key) = input.located[i].as_ref().and_then(|l| l.key.as_ref()) else {
            return;
        };
        if sealing.nonces.is_empty() {
            return;
        }
        let record_id = ulid::Ulid::generate().to_string();
        let sealed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            atp_core::privacy::seal_event(
                &mut ev.event,
                key.tenant.as_str(),
                key.source.as_str(),
                &record_id,
                sealing,
            )
        }));
        match sealed {
            Ok(Ok(())) => item.record_id = Some(record_id),
            Ok(Err(e)) => item.sealing = Some(Err(format!("cannot seal a record: {e}"))),
            Err(panic) => {
                item.sealing = Some(Err(format!(
                    "sealing panicked: {}",
                    crate::panic_message(&*panic)
                )));
            }
        }
    });
    out
}

/// Walks the admitted batch in order: each message's step, with its values already sealed.
fn plan(
    input: &PlanInput,
    sealed: Vec<Sealed>,
    parts: &mut HashMap<PartKey, Part>,
) -> Result<PlanOutput, RoleError> {
    let mut stats = BatchStats::default();
    let mut received = Vec::new();
    let mut plans: HashMap<PartKey, Plan> = HashMap::new();
    let mut order: Vec<PartKey> = Vec::new();
    for (
        i,
        Sealed {
            admission,
            sealing,
            record_id,
        },
    ) in sealed.into_iter().enumerate()
    {
        let (Some(loc), msg) = (input.located[i].as_ref(), &input.msgs[i]) else {
            continue;
        };
        let Some(part) = parts.get_mut(&loc.pkey) else {
            continue;
        };
        let Some(admission) = admission else {
            stats.skipped += 1;
            continue;
        };
        // The policy's decision: the record's stamp, and what it seals (if anything).
        let (admission, policy, sealing) = match sealing {
            Some(Err(defect)) => (
                Err(unprocessable(loc, &defect)),
                PolicyStamp::default(),
                None,
            ),
            Some(Ok(s)) => {
                let stamp = s.classified.stamp();
                // Sealed by `seal_all` already, unless it had no record id to seal under.
                let unsealed = !s.nonces.is_empty() && record_id.is_none();
                (admission, stamp, unsealed.then_some(s))
            }
            None => (admission, PolicyStamp::default(), None),
        };
        let policy_version = policy.policy_version;
        let plan = plans.entry(loc.pkey.clone()).or_insert_with(|| {
            order.push(loc.pkey.clone());
            Plan {
                ledger_subject: loc.key.as_ref().map(subjects::ledger).unwrap_or_default(),
                rejected_subject: subjects::rejected_raw(&loc.pkey.tenant, &loc.pkey.source),
                ..Plan::default()
            }
        });
        let stamps = || Stamps {
            record_id: record_id.unwrap_or_else(|| ulid::Ulid::generate().to_string()),
            received_at: loc.received_at,
            committed_at: input.committed_at,
            policy,
            sealing,
        };
        let step = part.state.step(loc.seq, admission, stamps);
        if let Step::Unprocessable { defect, .. } = &step {
            log_unprocessable(loc, defect);
        }
        match step {
            Step::Skip(_) => stats.skipped += 1,
            Step::Duplicate(r) => {
                tracing::debug!(partition = %loc.pkey, ingress_seq = loc.seq, chain_index = r.chain_index, "duplicate answered by its record");
                stats.duplicates += 1;
            }
            Step::Reject(rejection) | Step::Unprocessable { rejection, .. } => {
                stats.count_rejection(rejection.reason);
                plan.rejections
                    .push(rejection_message(input, loc, msg, rejection));
            }
            Step::Append {
                record,
                event_id,
                seq_hwm,
            } => {
                let out = record_message(loc, msg, &event_id, record, seq_hwm, policy_version)
                    // Cannot happen: admission's id was checked before it was sealed. Were it
                    // to, the restart forgets the sealed record (never written) with the
                    // partition's state, and re-reads the partition from the ledger.
                    .or_restart("building a ledger message")?;
                plan.records.push(out);
                stats.accepted += 1;
                received.push(loc.received_at);
            }
        }
    }
    Ok(PlanOutput {
        plans,
        order,
        stats,
        received,
    })
}

/// The ATP_LEDGER message for a sealed record.
fn record_message(
    loc: &Located,
    msg: &Message,
    event_id: &str,
    record: SealedRecord,
    seq_hwm: Option<u64>,
    policy_version: u32,
) -> Result<Outgoing, BadHeader> {
    let mut h = Headers::new();
    h.text(headers::EVENT_ID, event_id)?
        .fixed(headers::CONTENT_TYPE, "application/json")
        .num(headers::INGRESS_SEQ, loc.seq);
    if let Some(hwm) = seq_hwm {
        h.num(headers::SEQ_HWM, hwm);
    }
    carry_trace(
        msg,
        &mut h,
        TraceAbout {
            tenant: &loc.pkey.tenant,
            event_id,
            policy_version,
            outcome: "recorded",
        },
    );
    Ok(Outgoing {
        headers: h.into_map(),
        payload: Bytes::from(record.bytes),
    })
}

/// The ATP_REJECTED message for a refusal: an envelope bounded whatever was sent (the
/// submission whole when small, else a prefix, always its SHA-256 and size).
fn rejection_message(input: &PlanInput, loc: &Located, msg: &Message, rej: Rejection) -> Outgoing {
    let event_id = event_id_of(&submission(msg, Channel::Nats));
    let (env, payload) = RejectionEnvelope::bounded(
        RefusalFacts {
            rejection: rej,
            ingress_seq: loc.seq,
            tenant_id: loc.pkey.tenant.clone(),
            source_id: loc.pkey.source.clone(),
            received_at: timestamp(loc.received_at),
            rejected_at: timestamp(input.committed_at),
            event_id,
        },
        &msg.payload,
    );
    let mut h = Headers::new();
    h.fixed(headers::CONTENT_TYPE, "application/json")
        .num(headers::INGRESS_SEQ, loc.seq);
    carry_trace(
        msg,
        &mut h,
        TraceAbout {
            tenant: &loc.pkey.tenant,
            event_id: env.event_id.as_deref().unwrap_or(""),
            policy_version: input
                .policies
                .get(&loc.pkey.tenant)
                .map_or(1, |p| p.policy_version),
            outcome: "rejected",
        },
    );
    Outgoing {
        headers: h.into_map(),
        payload: Bytes::from(payload),
    }
}

/// ATP failed on one message: that message is refused as `UNPROCESSABLE` (kept on
/// ATP_REJECTED, nothing lost), the failure is logged at ERROR and counted with the other
/// rejections (`atp_ingest_rejections_total{reason="UNPROCESSABLE"}`, which an alert watches),
/// and the partition goes on.
fn unprocessable(loc: &Located, defect: &str) -> Rejection {
    log_unprocessable(loc, defect);
    atp_core::ingest::unprocessable()
}

fn log_unprocessable(loc: &Located, defect: &str) {
    tracing::error!(partition = %loc.pkey, ingress_seq = loc.seq, error = %defect, "ATP could not handle a submission; refused as UNPROCESSABLE");
}

/// `f(0..n)` across the machine's cores (scoped threads; results in index order). Admission
/// of ~1000 events is 50–100 ms of CPU, well worth two threads; below 64 items one is enough.
/// Calls `f` with the index and each item of `items`, on every core for a batch big enough.
fn parallel_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(8);
    let n = items.len();
    if threads < 2 || n < 64 {
        for (i, item) in items.iter_mut().enumerate() {
            f(i, item);
        }
        return;
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        for (t, part) in items.chunks_mut(chunk).enumerate() {
            scope.spawn(move || {
                for (j, item) in part.iter_mut().enumerate() {
                    f(t * chunk + j, item);
                }
            });
        }
    });
}

fn parallel_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |p| p.get())
        .min(8);
    if threads < 2 || n < 64 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(n))
                        .map(f)
                        .collect::<Vec<T>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

/// Per partition of a committed batch, in order: its rejected and its ledger subject's new tail.
type NewTails = (Vec<u64>, Vec<u64>);

/// A batch's commit, running while the next batch is planned.
struct Inflight {
    keys: Vec<PartKey>,
    last_seq: u64,
    stats: BatchStats,
    received: Vec<chrono::DateTime<Utc>>,
    started: std::time::Instant,
    task: tokio::task::JoinHandle<Result<NewTails, AppendError>>,
}

/// What ingest writes for a message joins the message's W3C trace. With traces on, an
/// `ingest.record` span (child of the message's context, or a new root) is recorded and its own
/// context is written; otherwise the message's valid context is copied as is.
fn carry_trace(msg: &Message, out: &mut Headers, about: TraceAbout<'_>) {
    let (parent, state) = telemetry::message_context(msg.headers.as_ref());
    let traceparent = if telemetry::spans_on() {
        let span = telemetry::consumer_span!(
            "ingest.record",
            msg.subject,
            tenant.id = about.tenant,
            event.id = about.event_id,
            policy.version = about.policy_version,
            outcome = about.outcome,
        );
        if let Some(p) = &parent {
            telemetry::follow(&span, p, state);
        }
        telemetry::traceparent_of(&span).or(parent)
    } else {
        parent
    };
    if let Some(t) = traceparent
        && out.text(headers::TRACEPARENT, &t.header()).is_ok()
        && let Some(state) = state
        && out.text(headers::TRACESTATE, state).is_err()
    {
        // Optional metadata from outside: a state we would not write is left behind.
        tracing::debug!("tracestate not carried: not a printable header value");
    }
}

/// What an `ingest.record` span says about its record.
struct TraceAbout<'a> {
    tenant: &'a str,
    event_id: &'a str,
    policy_version: u32,
    outcome: &'static str,
}

/// A committed batch, in the metrics.
fn record_batch(stats: &BatchStats, took: std::time::Duration) {
    let m = metrics();
    for (outcome, n) in [
        ("accepted", stats.accepted),
        ("rejected", stats.rejected),
        ("duplicate", stats.duplicates),
        ("skipped", stats.skipped),
    ] {
        if n > 0 {
            m.ingest_events.add(n, &[label("outcome", outcome)]);
        }
    }
    for (reason, n) in Reason::ALL.iter().zip(stats.by_reason) {
        if n > 0 {
            m.ingest_rejections
                .add(n, &[label("reason", reason.code())]);
        }
    }
    m.ingest_batch_seconds.record(took.as_secs_f64(), &[]);
}

impl Ingest {
    /// Starts committing a batch: every partition's rejections in one atomic batch, then every
    /// partition's records in another.
    fn begin_commit(
        &mut self,
        mut plans: HashMap<PartKey, Plan>,
        order: Vec<PartKey>,
        last_seq: u64,
        stats: BatchStats,
        received: Vec<chrono::DateTime<Utc>>,
    ) -> Inflight {
        let mut keys = Vec::with_capacity(order.len());
        let mut rejections = Vec::with_capacity(order.len());
        let mut records = Vec::with_capacity(order.len());
        for pkey in order {
            let (Some(plan), Some(part)) = (plans.remove(&pkey), self.parts.get(&pkey)) else {
                continue;
            };
            rejections.push(Append {
                subject: plan.rejected_subject,
                expected_last: part.rejected_tail,
                msgs: plan.rejections,
            });
            records.push(Append {
                subject: plan.ledger_subject,
                expected_last: part.ledger_tail,
                msgs: plan.records,
            });
            keys.push(pkey);
        }
        let js = self.js.clone();
        let both = failpoint::ENABLED
            && [&rejections, &records]
                .iter()
                .all(|appends| appends.iter().any(|a| !a.msgs.is_empty()));
        let task = tokio::spawn(async move {
            let rejected_tails = append_atomic(&js, rejections).await?;
            // If we crash here, the rejections are durable and the records are not: re-reading
            // skips the former (rejected cursors) and appends the latter (ledger cursors).
            if both {
                failpoint::crash_point(failpoint::INGEST_BETWEEN_REJECTIONS_AND_RECORDS);
            }
            let ledger_tails = append_atomic(&js, records).await?;
            Ok((rejected_tails, ledger_tails))
        });
        Inflight {
            keys,
            last_seq,
            stats,
            received,
            started: std::time::Instant::now(),
            task,
        }
    }

    /// Waits for the in-flight commit. On success the partitions' tails move on and the resume
    /// hint may advance; on failure the reader has already moved past that batch, so the role
    /// restarts from the position its durable output gives.
    async fn settle(&mut self) -> Result<(), RoleError> {
        let Some(Inflight {
            keys,
            last_seq,
            stats,
            received,
            started,
            task,
        }) = self.inflight.take()
        else {
            return Ok(());
        };
        let outcome = match task.await {
            Ok(r) => r.map_err(|e| {
                let conflict = matches!(e, AppendError::WrongLastSequence);
                (conflict, RoleError::restart("committing a batch", e))
            }),
            Err(e) => Err((false, RoleError::restart("the commit task failed", e))),
        };
        match outcome {
            Ok((rejected_tails, ledger_tails)) => {
                for ((pkey, rejected), ledger) in keys.iter().zip(rejected_tails).zip(ledger_tails)
                {
                    if let Some(part) = self.parts.get_mut(pkey) {
                        part.rejected_tail = rejected;
                        part.ledger_tail = ledger;
                    }
                }
                if stats.accepted > 0 {
                    failpoint::crash_point(failpoint::INGEST_BEFORE_HINT);
                }
                self.store_hint(last_seq);
                if let Ok(mut t) = self.totals.lock() {
                    t.accepted += stats.accepted;
                    t.rejected += stats.rejected;
                    t.duplicates += stats.duplicates;
                    t.skipped += stats.skipped;
                }
                record_batch(&stats, started.elapsed());
                let now = Utc::now();
                let m = metrics();
                for at in received {
                    m.ingest_latency_seconds
                        .record(crate::metrics::seconds_between(at, now), &[]);
                }
                Ok(())
            }
            Err((conflict, e)) => {
                // Our view of these partitions (and of any batch planned on top) ran ahead of
                // what is durable: forget everything and re-read.
                self.parts.clear();
                if conflict {
                    metrics().ledger_conflicts.add(1, &[]);
                    tracing::info!(
                        partitions = keys.len(),
                        "another writer appended first; re-reading the partitions"
                    );
                } else {
                    // Not a race: JetStream refused or lost the commit. The role restarts from
                    // its durable position with a growing pause (run_role), never in a tight loop.
                    tracing::warn!(partitions = keys.len(), error = %e, "ingest commit failed");
                }
                Err(e)
            }
        }
    }

    /// Only a hint: if this write is lost or lands late, the next start re-reads more and skips
    /// it. Written in the background, at most every `HINT_EVERY` while batches come, and once
    /// more when ingest falls idle ([`Ingest::hint_idle`]), so that a hint behind the stream's
    /// end means ingest is behind (the ingest lag figure, `atp_nats::progress`).
    fn store_hint(&mut self, last_seq: u64) {
        if last_seq == 0 {
            return;
        }
        if self.hint_written.elapsed() >= HINT_EVERY {
            self.write_hint(last_seq);
        } else {
            self.hint_due = Some(last_seq);
        }
    }

    /// Writes the hint, then trims from ATP_INGRESS what every shard's same lane has handled.
    fn write_hint(&mut self, last_seq: u64) {
        self.hint_due = None;
        self.hint_written = std::time::Instant::now();
        let (kv, key) = (self.progress.clone(), self.progress_key());
        let trim = Trim {
            ingress: self.ingress.clone(),
            progress: self.progress.clone(),
            shard: self.cfg.shard,
            lane: self.lane.clone(),
            laned: Arc::clone(&self.laned),
            rest_tenants: self.trim.iter().cloned().collect(),
        };
        tokio::spawn(async move {
            if let Err(e) = kv.put(key, last_seq.to_string().into()).await {
                tracing::warn!(error = %e, "could not store the ingest resume hint");
                return;
            }
            if let Err(e) = trim.run(last_seq).await {
                tracing::warn!(error = %e, "could not trim handled messages from ATP_INGRESS");
            }
        });
    }
}

/// A token bucket: `rate` a second, a second's worth of burst. Taking more than there is
/// answers how long to wait for the debt to be repaid.
#[derive(Debug)]
struct Pace {
    rate: f64,
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    fn new(rate: std::num::NonZeroU32) -> Self {
        let rate = f64::from(rate.get());
        Self {
            rate,
            tokens: rate,
            at: std::time::Instant::now(),
        }
    }

    fn take(&mut self, n: usize) -> Duration {
        self.take_at(n, std::time::Instant::now())
    }

    fn take_at(&mut self, n: usize, now: std::time::Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The rest lane trims at most this many tenants' subjects (tenants without a lane are the
/// exception: new ones, for a few seconds, and names that are not tenant ids).
const REST_TRIM_MAX: usize = 1024;

/// A lane's hint key for a shard.
fn hint_key(shard: Shard, lane: &Lane) -> String {
    match lane {
        Lane::Rest => atp_nats::progress::rest_key(&shard.label()),
        Lane::Tenant(t) => atp_nats::progress::lane_key(&shard.label(), t.as_str()),
    }
}

/// Removing handled messages from ATP_INGRESS, after a lane's hint is stored.
struct Trim {
    ingress: Stream,
    progress: Store,
    shard: Shard,
    lane: Lane,
    laned: Laned,
    rest_tenants: Vec<String>,
}

impl Trim {
    /// Purges, per tenant the lane handles, every message below the lowest hint of the lane
    /// over all shards (each shard handles only its partitions; one with no hint yet stops the
    /// trim). A tenant that has a lane of its own is never trimmed by the rest lane, which
    /// stopped handling it when the lane opened.
    async fn run(self, own: u64) -> Result<(), String> {
        let mut floor = own;
        for index in (0..self.shard.count).filter(|i| *i != self.shard.index) {
            let other = Shard {
                index,
                count: self.shard.count,
            };
            let Some(v) = self
                .progress
                .get(hint_key(other, &self.lane))
                .await
                .map_err(|e| e.to_string())?
            else {
                return Ok(());
            };
            floor = floor.min(String::from_utf8_lossy(&v).parse().unwrap_or(0));
        }
        let tenants = match &self.lane {
            Lane::Tenant(t) => vec![t.to_string()],
            Lane::Rest => {
                let laned = self
                    .laned
                    .read()
                    .map_err(|_| "the lane set is poisoned".to_owned())?;
                self.rest_tenants
                    .into_iter()
                    .filter(|t| !laned.contains(t))
                    .collect()
            }
        };
        for t in tenants {
            self.ingress
                .purge()
                .filter(subjects::render(subjects::INGRESS, &t, "*"))
                .sequence(floor + 1)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_at_its_rate_waits_for_what_it_took_beyond_it() {
        let rate = std::num::NonZeroU32::new(100).unwrap();
        let mut pace = Pace::new(rate);
        let t0 = pace.at;
        // A second's worth at once is the burst.
        assert_eq!(pace.take_at(100, t0), Duration::ZERO);
        // 50 more at the same instant: half a second of debt.
        assert_eq!(pace.take_at(50, t0), Duration::from_millis(500));
        // A second later the debt is repaid and half a second's worth has come back.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(pace.take_at(50, t1), Duration::ZERO);
        // Idle for long, the burst is still one second's worth.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(pace.take_at(100, t2), Duration::ZERO);
        assert!(pace.take_at(1, t2) > Duration::ZERO);
    }
}
