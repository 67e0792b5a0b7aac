//! The one consume loop every role shares.
//!
//! A role reads its input stream with an *ordered* consumer from a start sequence it derives
//! from its own durable output (the ledger's tail for ingest, the PostgreSQL watermark for the
//! projector). There is no durable consumer state that could disagree with that output, and no
//! redelivery that could reorder a partition. Batches are what is ready, up to `batch_max`; a
//! batch whose handling fails transiently is retried as is (handlers are idempotent) with
//! capped exponential backoff until it succeeds or shutdown is asked for.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use async_nats::jetstream::{Context, Message};
use futures::StreamExt;
use tokio::sync::watch;

use crate::{Handling, RoleError};

/// Shutdown signal: roles stop at the next batch boundary once it reads `true`.
pub type Shutdown = watch::Receiver<bool>;

/// Backoff between retries of a failed batch: 50 ms doubling to 5 s. 50 ms is a few JetStream
/// round trips; 5 s keeps a dead dependency from being hammered while recovery stays prompt.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// How often an idle reader checks that its consumer is alive. An ordered consumer lives on one
/// server; when that server dies in a cluster, the client may not notice (its own connection is
/// to another node), so a reader that sees the stream grow past what it has received for two
/// checks in a row restarts from its durable position.
const STALL_CHECK: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct ReadSpec {
    pub stream: String,
    pub filter_subjects: Vec<String>,
    /// First stream sequence to read (1 = from the beginning).
    pub start_seq: u64,
    pub batch_max: usize,
    /// Stop (return) once this sequence has been handled; `None` follows the stream for ever.
    pub stop_after: Option<u64>,
    /// Stop once every message that matched when reading began has been handled (replays).
    pub stop_at_end: bool,
    /// For a reader of part of a stream: the subject (wildcards allowed) whose last message
    /// the stall check compares with what arrived. `None` compares the stream's last sequence,
    /// which only a reader of every subject may do (others would see a stall whenever another
    /// subject grows).
    pub tail_subject: Option<String>,
    /// Deliver headers only (with `Nats-Msg-Size`): for a reader that handles few of the
    /// messages it reads and fetches those bodies itself.
    pub headers_only: bool,
}

/// A role's batch handler. It must be idempotent: after a failure the same batch comes again,
/// and after a crash the batch after the role's durable position comes again.
pub trait BatchHandler {
    /// The batch is shared (`Arc`) so a handler can hand it to other threads without copying.
    fn handle(
        &mut self,
        batch: &Arc<[Message]>,
    ) -> impl Future<Output = Result<(), RoleError>> + Send;

    /// Called when no message is waiting, before the reader blocks: a handler that pipelines
    /// (returns from `handle` before its effect is durable) settles its work here, so nothing
    /// waits for a next message to become durable.
    fn flush(&mut self) -> impl Future<Output = Result<(), RoleError>> + Send {
        async { Ok(()) }
    }
}

/// Reads `spec.stream` in order and feeds batches to `handler` until shutdown (or `stop_after`).
pub async fn read_stream<H: BatchHandler>(
    js: &Context,
    spec: ReadSpec,
    mut shutdown: Shutdown,
    handler: &mut H,
) -> Result<(), RoleError> {
    if spec.stop_after.is_some_and(|s| s < spec.start_seq) {
        return Ok(());
    }
    // A missing stream is a deployment error; one that does not answer (a cluster electing a
    // new leader) is waited for.
    let stream = js.get_stream(&spec.stream).await.map_err(|e| {
        let handling = if atp_nats::streams::is_not_found(&e.kind()) {
            Handling::Fatal
        } else {
            Handling::Retry
        };
        RoleError::caused(handling, format!("stream {} unavailable", spec.stream), e)
    })?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subjects: spec.filter_subjects.clone(),
            headers_only: spec.headers_only,
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: spec.start_seq.max(1),
            },
            ..Default::default()
        })
        .await
        .map_err(|e| {
            RoleError::retry(
                format!("cannot create ordered consumer on {}", spec.stream),
                e,
            )
        })?;
    let mut consumer = consumer;
    if spec.stop_at_end {
        let pending = consumer.info().await.map(|i| i.num_pending).unwrap_or(1);
        if pending == 0 {
            return Ok(());
        }
    }
    let messages = consumer
        .messages()
        .await
        .map_err(|e| RoleError::retry(format!("cannot read {}", spec.stream), e))?;
    // Pulling runs on its own task into a bounded buffer, so the next batch accumulates while
    // this one is handled: under load batches fill up to `batch_max`, and an idle stream costs
    // nothing. Four batches of buffer keep the pipe full without unbounded memory.
    let batch_max = spec.batch_max.max(1);
    let (tx, mut rx) = tokio::sync::mpsc::channel(batch_max * 4);
    let pump = tokio::spawn(async move {
        let mut messages = messages;
        while let Some(m) = messages.next().await {
            let failed = m.is_err();
            if tx.send(m).await.is_err() || failed {
                break;
            }
        }
    });
    let _stop_pump = AbortOnDrop(pump);
    let mut reconnects = atp_nats::reconnects();
    reconnects.mark_unchanged();
    let mut received = spec.start_seq.saturating_sub(1);
    let mut stall_check = tokio::time::interval(STALL_CHECK);
    stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut behind_checks = 0;
    loop {
        if rx.is_empty() {
            handler.flush().await?;
        }
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.changed() => None,
            _ = reconnects.changed() => {
                return Err(RoleError::new(Handling::Restart, format!(
                    "NATS reconnected; re-reading {} from the durable position",
                    spec.stream
                )));
            }
            _ = stall_check.tick() => {
                let last = last_sequence(&stream, spec.tail_subject.as_deref()).await;
                behind_checks = if last > received { behind_checks + 1 } else { 0 };
                if behind_checks >= 2 {
                    return Err(RoleError::new(Handling::Restart, format!(
                        "{} has messages up to {last} but none past {received} arrived; \
                         re-reading from the durable position",
                        spec.stream
                    )));
                }
                continue;
            }
        };
        behind_checks = 0;
        if *shutdown.borrow() {
            return Ok(());
        }
        let Some(first) = first else {
            return Err(RoleError::new(
                Handling::Retry,
                format!("consumer on {} ended", spec.stream),
            ));
        };
        let mut msgs = Vec::with_capacity(batch_max);
        // The ordered consumer recreates itself across gaps and server restarts; an error here
        // means it could not, and the caller restarts the reader from its position.
        let reading = |e| RoleError::retry(format!("reading {}", spec.stream), e);
        msgs.push(first.map_err(reading)?);
        while msgs.len() < batch_max {
            match rx.try_recv() {
                Ok(m) => msgs.push(m.map_err(reading)?),
                Err(_) => break,
            }
        }
        let batch: Arc<[Message]> = msgs.into();
        let (last, pending) = batch
            .last()
            .and_then(|m| m.info().ok().map(|i| (Some(i.stream_sequence), i.pending)))
            .unwrap_or((None, 1));
        received = received.max(last.unwrap_or(0));
        let mut delay = RETRY_FIRST;
        loop {
            match handler.handle(&batch).await {
                Ok(()) => break,
                Err(e) if e.handling() != Handling::Retry => return Err(e),
                Err(e) => {
                    tracing::warn!(stream = %spec.stream, error = %e, delay_ms = delay.as_millis() as u64, "batch failed; retrying");
                    if !pause(&mut shutdown, delay).await {
                        return Ok(());
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                }
            }
        }
        if let (Some(stop), Some(last)) = (spec.stop_after, last)
            && last >= stop
        {
            return Ok(());
        }
        if spec.stop_at_end && pending == 0 {
            return Ok(());
        }
    }
}

/// The stream's last sequence, or that of the last message on `subject`; 0 when unknown (a
/// server that does not answer is the reconnect logic's to notice, not a stall).
async fn last_sequence(
    stream: &async_nats::jetstream::stream::Stream,
    subject: Option<&str>,
) -> u64 {
    match subject {
        None => stream.get_info().await.map_or(0, |i| i.state.last_sequence),
        Some(s) => stream
            .direct_get_last_for_subject(s)
            .await
            .map_or(0, |m| m.sequence),
    }
}

/// Aborts the pulling task when the reader returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sleeps for `delay` unless shutdown comes first; false when shutting down.
pub async fn pause(shutdown: &mut Shutdown, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
    !*shutdown.borrow()
}

/// How a role that reads a stream works (ingest, the projector, the integrity log): where it
/// starts reading (derived afresh from its durable output on every (re)start, which also resets
/// any in-memory state) and how it handles batches. The roles themselves are
/// `atp_core::role::Role`.
pub trait Worker: BatchHandler {
    const NAME: &'static str;
    fn start(&mut self) -> impl Future<Output = Result<ReadSpec, RoleError>> + Send;
}

/// Keeps a role running: a reader that ends with a transient error is restarted from the
/// position the role derives anew. Returns when shutdown is asked for or on a fatal error.
///
/// A role that keeps failing is never restarted in a tight loop: every restart that comes within
/// [`HEALTHY_RUN`] of the previous start doubles the pause (50 ms up to 5 s), and from the
/// third such restart on it is logged at WARN and counted (`atp_role_restarts_total`, which an
/// alert watches). One lost race (another writer appended first) stays an INFO line.
pub async fn run_role<R: Worker>(
    js: &Context,
    role: &mut R,
    mut shutdown: Shutdown,
) -> Result<(), RoleError> {
    let mut delay = RETRY_FIRST;
    let mut in_a_row = 0u32;
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let outcome = match role.start().await {
            Ok(spec) => read_stream(js, spec, shutdown.clone(), role).await,
            Err(e) => Err(e),
        };
        if started.elapsed() >= HEALTHY_RUN {
            // It ran well for a while: this failure is a new one, not the last one again.
            delay = RETRY_FIRST;
            in_a_row = 0;
        }
        in_a_row += 1;
        let Err(e) = &outcome else {
            return Ok(());
        };
        match e.handling() {
            Handling::Fatal => {
                tracing::error!(role = R::NAME, error = %e, "role stopped");
                return outcome;
            }
            Handling::Restart if in_a_row < 3 => {
                tracing::info!(role = R::NAME, reason = %e, delay_ms = delay.as_millis() as u64, "role restarting from its durable position");
            }
            Handling::Restart => {
                tracing::warn!(role = R::NAME, reason = %e, restarts_in_a_row = in_a_row, delay_ms = delay.as_millis() as u64, "role keeps restarting from its durable position");
            }
            Handling::Retry => {
                tracing::warn!(role = R::NAME, error = %e, restarts_in_a_row = in_a_row, delay_ms = delay.as_millis() as u64, "role restarting");
            }
        }
        let kind = e.handling().as_str();
        crate::metrics::metrics().role_restarts.add(
            1,
            &[
                crate::metrics::label("role", R::NAME),
                crate::metrics::label("kind", kind),
            ],
        );
        if !pause(&mut shutdown, delay).await {
            return Ok(());
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// A role read in lanes (ADR 0017): it knows which lanes should run, and opens the missing
/// ones into the set.
pub trait LaneOpener {
    fn open_lanes(&self, set: &mut LaneSet) -> impl Future<Output = Result<(), String>> + Send;
}

/// Lanes of one role running side by side, each a [`run_role`] of its own, by name.
pub struct LaneSet {
    js: Context,
    shutdown: Shutdown,
    open: std::collections::HashSet<String>,
    tasks: tokio::task::JoinSet<Result<(), RoleError>>,
}

impl LaneSet {
    pub fn new(js: Context, shutdown: Shutdown) -> Self {
        Self {
            js,
            shutdown,
            open: Default::default(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    /// The tenants of `names` that are valid tenant ids and have no lane yet.
    pub fn unopened(&self, names: impl IntoIterator<Item = String>) -> Vec<atp_core::TenantId> {
        names
            .into_iter()
            .filter(|n| !self.open.contains(n))
            .filter_map(|n| atp_core::TenantId::new(&n).ok())
            .collect()
    }

    /// Starts a lane; its log lines carry `lane = <name>`.
    pub fn spawn<R: Worker + Send + 'static>(&mut self, name: &str, mut role: R) {
        use tracing::Instrument as _;
        let (js, shutdown) = (self.js.clone(), self.shutdown.clone());
        let span = tracing::info_span!("lane", role = R::NAME, lane = name);
        self.open.insert(name.to_owned());
        self.tasks
            .spawn(async move { run_role(&js, &mut role, shutdown).await }.instrument(span));
    }

    /// Runs until shutdown (then waits for every lane to stop) or until a lane fails for good
    /// (then stops the others); asks `opener` for new lanes every `refresh`.
    pub async fn run(
        mut self,
        opener: &impl LaneOpener,
        refresh: Duration,
    ) -> Result<(), RoleError> {
        let mut tick = tokio::time::interval(refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = opener.open_lanes(&mut self).await {
                        tracing::warn!(error = %e, "could not look for new lanes");
                    }
                }
                done = self.tasks.join_next() => {
                    let outcome = match done {
                        Some(Ok(r)) => r,
                        Some(Err(e)) => Err(RoleError::fatal("a lane failed", e)),
                        None => Ok(()),
                    };
                    if outcome.is_err() || *self.shutdown.borrow() {
                        self.tasks.shutdown().await;
                        return outcome;
                    }
                }
                _ = shutdown.changed() => {
                    while self.tasks.join_next().await.is_some() {}
                    return Ok(());
                }
            }
        }
    }
}

/// A role that ran this long before failing was healthy: its next restart starts the backoff
/// afresh. 30 s is far longer than any restart loop's period (milliseconds) and far shorter than
/// the time between genuine, unrelated failures.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
