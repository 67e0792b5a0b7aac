//! `atp relay kafka`: trace events on a Kafka topic (seed 001's `audit.events.log`) relayed to
//! ATP.
//!
//! Seed 001's services emit a trace event per request, fire-and-forget, with the request's
//! context as `x-*` metadata (tenant, user, session, idempotency key). The relay reads the topic
//! in a consumer group, maps each message onto an audit event ([`map_trace_event`]), signs it as
//! the producer of the message's tenant, and commits the group's offsets only after ATP's
//! ingress stream acknowledged everything before them.
//!
//! - **A crash anywhere loses nothing and doubles nothing.** Offsets not committed are read
//!   again; the event id is the message's Kafka coordinates and every field comes from the
//!   message, so a message read again signs into the same bytes and ATP answers it as the
//!   record it already is.
//! - **Nothing is dropped.** A message that cannot be mapped (not JSON, no tenant, a tenant
//!   with no producer here, no action) is forwarded as received to the fallback producer's
//!   ingress with the `Atp-Unmappable` header, and ATP keeps it as an `UNMAPPABLE` rejection
//!   saying what was missing (ADR 0024).
//! - **Several relays share the topic** as one consumer group: Kafka gives each its partitions.
//! - **Lag is reported**: per partition, the high watermark less the group's committed offset
//!   (`atp.relay.kafka.lag`, and a log line).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use atp_producer::{AuditEvent, NatsPublisher, Producer, Retry, SignedEvent};
use atp_telemetry::metrics::{label, metrics};
use chrono::{DateTime, TimeZone as _, Utc};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Headers as _, Message as _, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::{Map, Value};
use tokio::sync::watch;

use super::pause;

/// The context keys seed 001 propagates with every call, read from the message's headers or
/// from its `metadata` object.
pub mod context {
    pub const TENANT: &str = "x-tenant-id";
    pub const USER: &str = "x-user-id";
    pub const SESSION: &str = "x-session-id";
    pub const IDEMPOTENCY_KEY: &str = "x-idempotency-key";
    pub const ENVIRONMENT: &str = "x-environment";
    pub const CUSTOMER: &str = "x-customer-id";
}

/// The longest a forwarded unmappable message may be: more than this is cut, and the
/// rejection's detail says how long it was (NATS refuses a message over its max payload, and
/// the message must end somewhere).
pub const MAX_FORWARDED_BYTES: usize = 256 * 1024;

/// A Kafka message, as [`map_trace_event`] reads it.
#[derive(Debug, Clone, Default)]
pub struct TraceMessage<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The message's timestamp (milliseconds since the epoch), if the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Headers in order; values that are not UTF-8 are ignored.
    pub headers: Vec<(&'a str, &'a [u8])>,
    pub payload: Option<&'a [u8]>,
}

impl TraceMessage<'_> {
    /// The event id: the message's coordinates, unique in the topic and the same every time
    /// the message is read.
    pub fn coordinates(&self) -> String {
        format!("kafka:{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// What a message maps to.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// An audit event for the producer of `tenant` (the message's `x-tenant-id`).
    Event {
        tenant: String,
        event: Box<AuditEvent>,
    },
    /// Not an event: forwarded as received to become an `UNMAPPABLE` rejection saying `why`.
    Unmappable { tenant: Option<String>, why: String },
}

/// Maps a trace event onto an audit event. The payload is a JSON object:
///
/// ```json
/// { "service": "transfer", "action": "transfer.approve",
///   "timestamp": "2026-12-07T10:00:00.120Z",
///   "resource": { "type": "transfer", "id": "tr_81" },
///   "status": 200,
///   "request": { "method": "POST", "path": "/v1/transfers/tr_81/approve", "ip": "10.0.0.7" },
///   "metadata": { "x-tenant-id": "biz_1", "x-user-id": "usr_9", "x-session-id": "ses_4" } }
/// ```
///
/// - tenant: `x-tenant-id` (required), from a header or `metadata` (headers win);
/// - actor: `x-user-id` as a user, else the service as a service;
/// - action: `action` (required); type: `type_prefix` + `service` + `.` + `action`;
/// - resource: `resource` (`type`, `id`), else the request's path (or the coordinates) as a
///   `request`;
/// - outcome: `outcome` (`success`/`failure`), else from a numeric `status` (< 400: success);
/// - time: `timestamp` or `time` (RFC 3339, or milliseconds since the epoch), else the Kafka
///   timestamp;
/// - attributes: `service`, the session, idempotency key, environment and customer from the
///   context, `request.*` members, and every other top-level member (objects and arrays as
///   JSON text).
///
/// Every field comes from the message, so the same message always maps to the same event.
pub fn map_trace_event(msg: &TraceMessage<'_>, type_prefix: &str) -> Mapped {
    let unmappable = |tenant: Option<&str>, why: String| Mapped::Unmappable {
        tenant: tenant.map(str::to_owned),
        why,
    };
    let body: Map<String, Value> = match msg.payload.map(serde_json::from_slice::<Value>) {
        None => return unmappable(header(msg, context::TENANT), "an empty message".into()),
        Some(Ok(Value::Object(m))) => m,
        Some(Ok(_)) => {
            return unmappable(header(msg, context::TENANT), "not a JSON object".into());
        }
        Some(Err(e)) => {
            return unmappable(header(msg, context::TENANT), format!("not JSON ({e})"));
        }
    };
    let metadata = body
        .get("metadata")
        .or_else(|| body.get("context"))
        .and_then(Value::as_object);
    let ctx = |name: &str| {
        header(msg, name).or_else(|| {
            metadata.and_then(|m| {
                m.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .and_then(|(_, v)| v.as_str())
            })
        })
    };
    let Some(tenant) = ctx(context::TENANT).filter(|t| !t.is_empty()) else {
        return unmappable(None, "no x-tenant-id (header or metadata)".into());
    };
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let (Some(service), Some(action)) = (text("service"), text("action")) else {
        return unmappable(Some(tenant), "no service or no action".into());
    };
    let time = match body.get("timestamp").or_else(|| body.get("time")) {
        Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc)),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        _ => msg
            .timestamp_ms
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
    };
    let Some(time) = time else {
        return unmappable(
            Some(tenant),
            "no time: timestamp is not RFC 3339 or epoch milliseconds, and Kafka gave none".into(),
        );
    };

    let request = body.get("request").and_then(Value::as_object);
    let mut ev = AuditEvent::new(format!("{type_prefix}{service}.{action}"))
        .id(msg.coordinates())
        .time(time)
        .action(action)
        .attribute("service", service);
    ev = match ctx(context::USER).filter(|u| !u.is_empty()) {
        Some(user) => ev.actor(user, "user"),
        None => ev.actor(service, "service"),
    };
    let resource = body
        .get("resource")
        .and_then(Value::as_object)
        .and_then(|r| {
            Some((
                r.get("type").and_then(Value::as_str)?,
                r.get("id").and_then(Value::as_str)?,
            ))
        });
    ev = match resource {
        Some((kind, id)) => ev.resource(kind, id),
        None => {
            let path = request.and_then(|r| r.get("path")).and_then(Value::as_str);
            ev.resource(
                "request",
                path.map_or_else(|| msg.coordinates(), str::to_owned),
            )
        }
    };
    let outcome = match (body.get("outcome"), body.get("status")) {
        (Some(Value::String(o)), _) if o == "success" || o == "failure" => Some(o.as_str()),
        (_, Some(Value::Number(n))) => n
            .as_u64()
            .map(|s| if s < 400 { "success" } else { "failure" }),
        _ => None,
    };
    if let Some(o) = outcome {
        ev = ev.outcome(o);
    }
    for (name, attribute) in [
        (context::SESSION, "sessionId"),
        (context::IDEMPOTENCY_KEY, "idempotencyKey"),
        (context::ENVIRONMENT, "environment"),
        (context::CUSTOMER, "customerId"),
    ] {
        if let Some(v) = ctx(name) {
            ev = ev.attribute(attribute, v);
        }
    }
    for (name, value) in request.into_iter().flatten() {
        ev = ev.attribute(format!("request.{name}"), flat(value));
    }
    const MAPPED: [&str; 10] = [
        "service",
        "action",
        "timestamp",
        "time",
        "resource",
        "outcome",
        "request",
        "metadata",
        "context",
        "status",
    ];
    for (name, value) in &body {
        if !MAPPED.contains(&name.as_str()) {
            ev = ev.attribute(name, flat(value));
        }
    }
    if let Some(Value::Number(status)) = body.get("status") {
        ev = ev.attribute("status", Value::Number(status.clone()));
    }
    Mapped::Event {
        tenant: tenant.to_owned(),
        event: Box::new(ev),
    }
}

/// The first header `name` (any case) whose value is UTF-8.
fn header<'a>(msg: &TraceMessage<'a>, name: &str) -> Option<&'a str> {
    msg.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// An attribute value: scalars as they are, objects and arrays as JSON text.
fn flat(value: &Value) -> Value {
    match value {
        Value::Object(_) | Value::Array(_) => Value::String(value.to_string()),
        scalar => scalar.clone(),
    }
}

/// How a Kafka relay runs.
#[derive(Debug, Clone)]
pub struct KafkaRelay {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    /// The consumer group: relays with the same group share the topic's partitions.
    pub group: String,
    /// `group.instance.id`: static membership, so that a relay restarted under its name takes
    /// its partitions back without waiting out the session timeout.
    pub instance_id: Option<String>,
    /// Put before `service.action` to make the CloudEvents `type`.
    pub type_prefix: String,
    /// Messages relayed (and committed) together at most.
    pub batch: usize,
    /// Events waiting for their acknowledgement at once, per producer.
    pub in_flight: usize,
    /// How often lag is measured and reported.
    pub lag_interval: Duration,
    /// More librdkafka settings (`security.protocol`, `sasl.*`, ...), set last.
    pub client_config: Vec<(String, String)>,
}

/// The producers a relay signs as: one per tenant, keyed by the `x-tenant-id` value that maps
/// to it, and the one that receives what cannot be mapped.
pub struct Producers {
    by_tenant: HashMap<String, usize>,
    producers: Vec<(Producer, NatsPublisher)>,
    fallback: usize,
}

impl Producers {
    /// `producers`: (x-tenant-id value, producer, its publisher); the first receives what
    /// cannot be mapped to any of them.
    pub fn new(producers: Vec<(String, Producer, NatsPublisher)>) -> anyhow::Result<Producers> {
        anyhow::ensure!(!producers.is_empty(), "a Kafka relay needs a producer");
        let mut by_tenant = HashMap::new();
        let mut list = Vec::with_capacity(producers.len());
        for (i, (key, producer, nats)) in producers.into_iter().enumerate() {
            anyhow::ensure!(
                by_tenant.insert(key.clone(), i).is_none(),
                "x-tenant-id {key:?} is mapped to two producers"
            );
            list.push((producer, nats));
        }
        Ok(Producers {
            by_tenant,
            producers: list,
            fallback: 0,
        })
    }
}

/// One message of a batch, ready to send.
enum Outgoing {
    Event {
        producer: usize,
        event: SignedEvent,
    },
    Unmappable {
        producer: usize,
        message: Vec<u8>,
        why: String,
        id: String,
    },
}

/// What one message becomes: signed for its tenant's producer, or forwarded to the fallback.
fn outgoing(msg: &OwnedMessage, relay: &KafkaRelay, producers: &Producers) -> Outgoing {
    let headers: Vec<(&str, &[u8])> = msg
        .headers()
        .map(|h| h.iter().filter_map(|h| Some((h.key, h.value?))).collect())
        .unwrap_or_default();
    let trace = TraceMessage {
        topic: msg.topic(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp_ms: msg.timestamp().to_millis(),
        headers,
        payload: msg.payload(),
    };
    let id = trace.coordinates();
    let why = match map_trace_event(&trace, &relay.type_prefix) {
        Mapped::Event { tenant, event } => match producers.by_tenant.get(&tenant) {
            Some(&producer) => match producers.producers[producer].0.sign(*event) {
                Ok(event) => return Outgoing::Event { producer, event },
                Err(e) => format!("cannot be signed as an event: {e}"),
            },
            None => format!("x-tenant-id {tenant:?} has no ATP producer in this relay"),
        },
        Mapped::Unmappable {
            tenant: Some(tenant),
            why,
        } if !producers.by_tenant.contains_key(&tenant) => {
            format!("{why}; x-tenant-id {tenant:?} has no ATP producer in this relay")
        }
        Mapped::Unmappable { tenant, why } => {
            // A tenant's own unmappable message goes to that tenant's rejections.
            let producer = tenant
                .and_then(|t| producers.by_tenant.get(&t).copied())
                .unwrap_or(producers.fallback);
            return unmappable(producer, msg.payload().unwrap_or_default(), why, id);
        }
    };
    unmappable(
        producers.fallback,
        msg.payload().unwrap_or_default(),
        why,
        id,
    )
}

fn unmappable(producer: usize, payload: &[u8], why: String, id: String) -> Outgoing {
    let (message, why) = if payload.len() > MAX_FORWARDED_BYTES {
        (
            payload[..MAX_FORWARDED_BYTES].to_vec(),
            format!(
                "{why} (message of {} bytes; its first {MAX_FORWARDED_BYTES} kept)",
                payload.len()
            ),
        )
    } else {
        (payload.to_vec(), why)
    };
    Outgoing::Unmappable {
        producer,
        message,
        why: format!("{why} [{id}]"),
        id,
    }
}

/// Relays until `shutdown` turns true: reads a batch, sends it, waits until ATP acknowledged
/// all of it, commits the group's offsets past it, and so on.
pub async fn run_kafka(
    relay: KafkaRelay,
    producers: Producers,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &relay.brokers)
        .set("group.id", &relay.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A relay that died hands its partitions to the group's others within 10 s, not
        // librdkafka's default 45 s.
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("client.id", "atp-relay-kafka");
    if let Some(id) = &relay.instance_id {
        config.set("group.instance.id", id);
    }
    for (k, v) in &relay.client_config {
        config.set(k, v);
    }
    let consumer: Arc<StreamConsumer> =
        Arc::new(config.create().context("configuring the Kafka consumer")?);
    consumer
        .subscribe(&[&relay.topic])
        .with_context(|| format!("subscribing to {}", relay.topic))?;
    tracing::info!(topic = %relay.topic, group = %relay.group, "relaying Kafka trace events");
    let lag = tokio::spawn(report_lag(
        consumer.clone(),
        relay.topic.clone(),
        relay.lag_interval,
        shutdown.clone(),
    ));
    let mut last_commit: Option<TopicPartitionList> = None;
    while !*shutdown.borrow() {
        let first = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.changed() => break,
        };
        let first = match first {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(error = %e, "reading from Kafka failed; retrying");
                pause(&mut shutdown, Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut batch = vec![first];
        while batch.len() < relay.batch {
            match tokio::time::timeout(Duration::from_millis(5), consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "reading from Kafka failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let out: Vec<Outgoing> = batch
            .iter()
            .map(|m| outgoing(m, &relay, &producers))
            .collect();
        if !send_all(out, &relay, &producers, &mut shutdown).await {
            // Stopped before ATP acknowledged it all: nothing of the batch is committed, and
            // the next relay of the group reads it again.
            break;
        }
        let offsets = next_offsets(&batch)?;
        if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
            tracing::warn!(error = %e, "committing offsets failed; the next commit covers them");
        }
        last_commit = Some(offsets);
    }
    lag.abort();
    if let Some(offsets) = last_commit {
        // Asynchronous commits may still be queued: the last one, synchronously, before leaving.
        let c = consumer.clone();
        let done = tokio::task::spawn_blocking(move || c.commit(&offsets, CommitMode::Sync)).await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "the last commit failed; its messages are read again");
        }
    }
    Ok(())
}

/// Each partition's offset past the batch's last message from it.
fn next_offsets(batch: &[OwnedMessage]) -> anyhow::Result<TopicPartitionList> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(tpl)
}

/// Sends a batch and waits until ATP acknowledged every message of it, sending again what
/// was not, for as long as it takes: false if `shutdown` came first.
async fn send_all(
    out: Vec<Outgoing>,
    relay: &KafkaRelay,
    producers: &Producers,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let mut events: Vec<Vec<SignedEvent>> = vec![Vec::new(); producers.producers.len()];
    let mut unmappable = Vec::new();
    for o in out {
        match o {
            Outgoing::Event { producer, event } => events[producer].push(event),
            Outgoing::Unmappable {
                producer,
                message,
                why,
                id,
            } => unmappable.push((producer, message, why, id)),
        }
    }
    let count = |outcome: &'static str, n: usize| {
        metrics().relay_messages.add(
            n as u64,
            &[label("relay", "kafka"), label("outcome", outcome)],
        );
    };
    let mut failures = 0u32;
    loop {
        // Producers' events concurrently, each producer's in order.
        let mut sends = tokio::task::JoinSet::new();
        for (i, evs) in events.iter_mut().enumerate() {
            if evs.is_empty() {
                continue;
            }
            let evs = std::mem::take(evs);
            let nats = producers.producers[i].1.clone();
            let in_flight = relay.in_flight;
            sends.spawn(async move {
                let results = nats.publish_all(evs.iter().cloned(), in_flight).await;
                let failed: Vec<SignedEvent> = evs
                    .into_iter()
                    .zip(results)
                    .filter_map(|(e, r)| r.err().map(|err| (e, err)))
                    .map(|(e, err)| {
                        tracing::warn!(id = e.id(), error = %err, "not acknowledged; sent again");
                        e
                    })
                    .collect();
                (i, failed)
            });
        }
        let mut pending = 0;
        while let Some(joined) = sends.join_next().await {
            match joined {
                Ok((i, failed)) => {
                    pending += failed.len();
                    events[i] = failed;
                }
                Err(e) => {
                    tracing::error!(error = %e, "a publishing task failed");
                    return false;
                }
            }
        }
        let mut left = Vec::new();
        for (producer, message, why, id) in std::mem::take(&mut unmappable) {
            match producers.producers[producer]
                .1
                .publish_unmappable(&message, &why, &id)
                .await
            {
                Ok(_) => count("unmappable", 1),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "an unmappable message was not acknowledged");
                    left.push((producer, message, why, id));
                }
            }
        }
        unmappable = left;
        if pending == 0 && unmappable.is_empty() {
            return true;
        }
        failures += 1;
        let wait = Retry::default().backoff(failures.min(8));
        pause(shutdown, wait).await;
        if *shutdown.borrow() {
            return false;
        }
    }
}

/// Measures each assigned partition's lag every `every`: its high watermark less the group's
/// committed offset (the low watermark before any commit).
async fn report_lag(
    consumer: Arc<StreamConsumer>,
    topic: String,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        pause(&mut shutdown, every).await;
        if *shutdown.borrow() {
            return;
        }
        let (c, t) = (consumer.clone(), topic.clone());
        let lags = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
            let timeout = Duration::from_secs(5);
            let committed = c.committed(timeout)?;
            let mut lags = Vec::new();
            for e in committed.elements_for_topic(&t) {
                let (low, high) = c.fetch_watermarks(&t, e.partition(), timeout)?;
                let at = match e.offset() {
                    Offset::Offset(o) => o,
                    _ => low,
                };
                lags.push((e.partition(), (high - at).max(0)));
            }
            Ok(lags)
        })
        .await;
        match lags {
            Ok(Ok(lags)) => {
                for (partition, lag) in &lags {
                    metrics().relay_kafka_lag.record(
                        u64::try_from(*lag).unwrap_or(0),
                        &[
                            label("topic", topic.clone()),
                            label("partition", i64::from(*partition)),
                        ],
                    );
                }
                let total: i64 = lags.iter().map(|(_, l)| l).sum();
                tracing::info!(topic = %topic, lag = total, partitions = lags.len(), "Kafka relay lag");
            }
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "cannot measure the Kafka lag"),
            Err(e) => tracing::warn!(error = %e, "cannot measure the Kafka lag"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(payload: &'a [u8], headers: Vec<(&'a str, &'a [u8])>) -> TraceMessage<'a> {
        TraceMessage {
            topic: "audit.events.log",
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_796_000_000_000),
            headers,
            payload: Some(payload),
        }
    }

    const TRACE: &[u8] = br#"{"service":"transfer","action":"transfer.approve",
        "timestamp":"2026-12-07T10:00:00.120Z","resource":{"type":"transfer","id":"tr_81"},
        "status":200,"request":{"method":"POST","path":"/v1/transfers/tr_81/approve"},
        "metadata":{"x-tenant-id":"biz_1","x-user-id":"usr_9","x-session-id":"ses_4",
        "x-idempotency-key":"idem-7"},"amountMinor":125000}"#;

    fn event(m: Mapped) -> (String, serde_json::Value) {
        let Mapped::Event { tenant, event } = m else {
            panic!("expected an event: {m:?}");
        };
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let p = Producer::new(
            atp_producer::Source::new("acme", "platform", "urn:test").unwrap(),
            atp_producer::Signer::new(key, "k1"),
        );
        let signed = p.sign(*event).unwrap();
        (tenant, serde_json::from_slice(signed.body()).unwrap())
    }

    #[test]
    fn a_trace_event_maps_onto_an_audit_event_the_same_way_every_time() {
        let m = msg(TRACE, vec![]);
        assert_eq!(map_trace_event(&m, "fin."), map_trace_event(&m, "fin."));
        let (tenant, e) = event(map_trace_event(&m, "fin."));
        assert_eq!(tenant, "biz_1");
        assert_eq!(e["id"], "kafka:audit.events.log/2/41");
        assert_eq!(e["type"], "fin.transfer.transfer.approve");
        assert_eq!(e["time"], "2026-12-07T10:00:00.120Z");
        let d = &e["data"];
        assert_eq!(
            d["actor"],
            serde_json::json!({"id": "usr_9", "type": "user"})
        );
        assert_eq!(d["action"], "transfer.approve");
        assert_eq!(
            d["resource"],
            serde_json::json!({"type": "transfer", "id": "tr_81"})
        );
        assert_eq!(d["outcome"], "success");
        let a = &d["attributes"];
        assert_eq!(a["sessionId"], "ses_4");
        assert_eq!(a["idempotencyKey"], "idem-7");
        assert_eq!(a["request.path"], "/v1/transfers/tr_81/approve");
        assert_eq!(a["amountMinor"], 125000);
        assert_eq!(a["service"], "transfer");
        assert_eq!(a["status"], 200);
    }

    #[test]
    fn headers_win_over_metadata_and_defaults_fill_the_rest() {
        let body = br#"{"service":"fx","action":"rate.read","status":503,
            "metadata":{"x-tenant-id":"biz_1"}}"#;
        let m = msg(body, vec![("X-Tenant-Id", b"biz_2")]);
        let (tenant, e) = event(map_trace_event(&m, ""));
        assert_eq!(tenant, "biz_2");
        let d = &e["data"];
        assert_eq!(
            d["actor"],
            serde_json::json!({"id": "fx", "type": "service"})
        );
        assert_eq!(d["outcome"], "failure");
        assert_eq!(d["resource"]["id"], "kafka:audit.events.log/2/41");
        // No time in the body: Kafka's.
        assert_eq!(e["time"], "2026-11-30T00:53:20.000Z");
    }

    #[test]
    fn what_cannot_be_mapped_says_why() {
        let why = |payload: &[u8], headers: Vec<(&str, &[u8])>| match map_trace_event(
            &msg(payload, headers),
            "",
        ) {
            Mapped::Unmappable { tenant, why } => (tenant, why),
            m => panic!("mapped: {m:?}"),
        };
        assert_eq!(why(b"\x00\xff", vec![]).1.split(' ').next(), Some("not"));
        assert_eq!(
            why(b"[1]", vec![("x-tenant-id", b"biz_1")]),
            (Some("biz_1".into()), "not a JSON object".into())
        );
        assert!(
            why(br#"{"service":"a","action":"b"}"#, vec![])
                .1
                .contains("x-tenant-id")
        );
        assert!(
            why(br#"{"service":"a"}"#, vec![("x-tenant-id", b"t")])
                .1
                .contains("no action")
        );
        let mut no_time = msg(
            br#"{"service":"a","action":"b","timestamp":"yesterday"}"#,
            vec![("x-tenant-id", b"t")],
        );
        no_time.timestamp_ms = None;
        assert!(matches!(
            map_trace_event(&no_time, ""),
            Mapped::Unmappable { .. }
        ));
    }
}
