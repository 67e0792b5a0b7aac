//! `atp relay outbox|kafka`: relay a producer's PostgreSQL outbox table, or trace events on a
//! Kafka topic, to ATP (`crate::relay`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use atp_producer::{NatsPublisher, Producer, Signer, Source};
use tokio::sync::watch;

use super::NatsArgs;
use crate::relay::kafka::{KafkaRelay, Producers};
use crate::relay::{OutboxMapping, OutboxRelay};

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Relay a PostgreSQL outbox table: each row a signed event, marked delivered once ATP
    /// acknowledged it. Several relays on one table take turns (one relays, the others wait).
    Outbox(Box<OutboxArgs>),
    /// Relay trace events from a Kafka topic (seed 001's `audit.events.log`) in a consumer
    /// group: each message a signed event of its tenant's producer, offsets committed once ATP
    /// acknowledged; what cannot be mapped becomes an `UNMAPPABLE` rejection.
    Kafka(Box<KafkaArgs>),
}

#[derive(clap::Args)]
pub(super) struct KafkaArgs {
    /// Kafka's `bootstrap.servers` (host:port, comma-separated).
    #[arg(long, env = "ATP_KAFKA_BROKERS")]
    brokers: String,
    #[arg(long, env = "ATP_KAFKA_TOPIC", default_value = "audit.events.log")]
    topic: String,
    /// The consumer group: relays in one group share the topic's partitions.
    #[arg(long, env = "ATP_KAFKA_GROUP", default_value = "atp-relay")]
    group: String,
    /// This relay's stable name in the group (Kafka static membership, `group.instance.id`):
    /// restarted under the same name, it takes its partitions back at once instead of waiting
    /// for the group to notice it died. Give each relay of a group its own (a pod name).
    #[arg(long, env = "ATP_KAFKA_INSTANCE_ID")]
    instance_id: Option<String>,
    /// A producer to sign as: `X_TENANT_ID=DIR`, or `DIR` for the x-tenant-id equal to its
    /// ATP tenant; DIR is what `atp producer add --generate-key --nats-auth-dir … --output DIR`
    /// wrote. Repeat for each tenant; the first also receives what cannot be mapped.
    #[arg(long = "producer", required = true, value_name = "[X_TENANT_ID=]DIR")]
    producers: Vec<String>,
    /// NATS server URL, instead of the one each producer.json names.
    #[arg(long, env = "ATP_NATS_URL")]
    nats_url: Option<String>,
    /// Put before `service.action` to make the CloudEvents `type` (e.g. `com.acme.platform.`).
    #[arg(long, default_value = "")]
    type_prefix: String,
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Seconds between measurements of the group's lag.
    #[arg(long, default_value_t = 10)]
    lag_interval_secs: u64,
    /// A librdkafka setting (`security.protocol=sasl_plaintext`, ...), repeatable.
    #[arg(long = "kafka-config", value_name = "KEY=VALUE")]
    kafka_config: Vec<String>,
    /// Serve `/metrics` (lag, messages relayed) and `/healthz` here.
    #[arg(long, env = "ATP_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
}

#[derive(clap::Args)]
pub(super) struct OutboxArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// The producer's database, which holds the outbox table (kept out of logs).
    #[arg(long, env = "ATP_OUTBOX_DATABASE_URL", hide_env_values = true)]
    outbox_database_url: String,
    #[arg(long, env = "ATP_PRODUCER_TENANT")]
    tenant: String,
    #[arg(long, env = "ATP_PRODUCER_SOURCE")]
    source: String,
    #[arg(long, env = "ATP_PRODUCER_SOURCE_URI")]
    source_uri: String,
    /// The producer's Ed25519 key (PKCS#8 PEM).
    #[arg(long, env = "ATP_PRODUCER_KEY")]
    key: PathBuf,
    #[arg(long, env = "ATP_PRODUCER_KEY_ID")]
    key_id: String,
    #[arg(long, default_value = "outbox")]
    table: String,
    #[arg(long, default_value = "id")]
    id_column: String,
    /// A strictly increasing column (a bigserial): the events' `sequence`.
    #[arg(long, default_value = "seq")]
    order_column: String,
    #[arg(long, default_value = "event_type")]
    type_column: String,
    #[arg(long, default_value = "aggregate_type")]
    aggregate_type_column: String,
    #[arg(long, default_value = "aggregate_id")]
    aggregate_id_column: String,
    #[arg(long, default_value = "actor_id")]
    actor_column: String,
    #[arg(long, default_value = "payload")]
    payload_column: String,
    #[arg(long, default_value = "created_at")]
    created_at_column: String,
    #[arg(long, default_value = "delivered_at")]
    delivered_at_column: String,
    /// Put before each row's type to make the CloudEvents `type` (e.g. `com.acme.crm.`).
    #[arg(long, default_value = "")]
    type_prefix: String,
    #[arg(long, default_value_t = 500)]
    batch: i64,
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Milliseconds between reads of an empty outbox.
    #[arg(long, default_value_t = 200)]
    poll_ms: u64,
}

pub(super) async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Outbox(a) => outbox(*a).await,
        Action::Kafka(a) => kafka(*a).await,
    }
}

/// A watch that turns true on SIGTERM or Ctrl-C.
fn shutdown_on_signal() -> watch::Receiver<bool> {
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        let _ = stop.send(true);
    });
    shutdown
}

async fn kafka(a: KafkaArgs) -> anyhow::Result<()> {
    let shutdown = shutdown_on_signal();
    if let Some(addr) = a.metrics_addr {
        serve_metrics(addr, shutdown.clone()).await?;
    }
    let mut producers = Vec::new();
    for spec in &a.producers {
        let (key, dir) = match spec.split_once('=') {
            Some((key, dir)) => (Some(key.to_owned()), PathBuf::from(dir)),
            None => (None, PathBuf::from(spec)),
        };
        let onboarded = crate::onboarding::load(&dir)?;
        let url = a.nats_url.as_deref().unwrap_or(&onboarded.facts.nats_url);
        let source = onboarded.producer.source().clone();
        let nats = loop {
            match NatsPublisher::connect(url, &onboarded.seed, &source).await {
                Ok(n) => break n,
                Err(e) if !*shutdown.borrow() => {
                    tracing::warn!(error = %e, "cannot reach NATS yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let key = key.unwrap_or_else(|| onboarded.facts.tenant.clone());
        producers.push((key, onboarded.producer, nats));
    }
    let client_config = a
        .kafka_config
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--kafka-config {kv:?} is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<_>>()?;
    let relay = KafkaRelay {
        brokers: a.brokers,
        topic: a.topic,
        group: a.group,
        instance_id: a.instance_id,
        type_prefix: a.type_prefix,
        batch: a.batch.clamp(1, 10_000),
        in_flight: a.in_flight.max(1),
        lag_interval: Duration::from_secs(a.lag_interval_secs.max(1)),
        client_config,
    };
    crate::relay::kafka::run_kafka(relay, Producers::new(producers)?, shutdown).await
}

/// `/metrics` and `/healthz` for a relay, until `shutdown`.
async fn serve_metrics(
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr} for metrics"))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|| async { atp_telemetry::metrics::render() }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "serving /metrics failed");
        }
    });
    Ok(())
}

async fn outbox(a: OutboxArgs) -> anyhow::Result<()> {
    let source = Source::new(&a.tenant, &a.source, &a.source_uri)?;
    let producer = Producer::new(source, Signer::read_pem_file(&a.key, &a.key_id)?);
    let shutdown = shutdown_on_signal();
    // A relay outlives either side restarting, its start-up included: NATS is tried until it
    // answers (the client then reconnects by itself).
    let client = loop {
        match a.nats.client().await {
            Ok(c) => break c,
            Err(e) if !*shutdown.borrow() => {
                tracing::warn!(error = %format!("{e:#}"), "cannot reach NATS yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let nats = NatsPublisher::with_client(client, producer.source());
    let relay = OutboxRelay {
        database_url: a.outbox_database_url,
        mapping: OutboxMapping {
            table: a.table,
            id: a.id_column,
            order: a.order_column,
            event_type: a.type_column,
            aggregate_type: a.aggregate_type_column,
            aggregate_id: a.aggregate_id_column,
            actor: a.actor_column,
            payload: a.payload_column,
            created_at: a.created_at_column,
            delivered_at: a.delivered_at_column,
            type_prefix: a.type_prefix,
        },
        batch: a.batch.clamp(1, 10_000),
        in_flight: a.in_flight.max(1),
        poll: Duration::from_millis(a.poll_ms.max(10)),
    };
    crate::relay::run_outbox(relay, producer, nats, shutdown).await
}
