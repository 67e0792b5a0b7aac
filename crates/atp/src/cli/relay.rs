//! `atp relay outbox`: relay a producer's PostgreSQL outbox table to ATP (`crate::relay`).

use std::path::PathBuf;
use std::time::Duration;

use atp_producer::{NatsPublisher, Producer, Signer, Source};

use super::NatsArgs;
use crate::relay::{OutboxMapping, OutboxRelay};

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Relay a PostgreSQL outbox table: each row a signed event, marked delivered once ATP
    /// acknowledged it. Several relays on one table take turns (one relays, the others wait).
    Outbox(OutboxArgs),
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
    let Action::Outbox(a) = action;
    let source = Source::new(&a.tenant, &a.source, &a.source_uri)?;
    let producer = Producer::new(source, Signer::read_pem_file(&a.key, &a.key_id)?);
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        super::serve::shutdown_signal().await;
        let _ = stop.send(true);
    });
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
