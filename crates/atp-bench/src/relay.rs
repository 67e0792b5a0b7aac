//! `atp-bench relay`: what the producer side costs. The Rust SDK's sign-and-publish rate
//! beside a raw JetStream publish of the same bytes, and an outbox of `--rows` rows relayed to
//! queryable records beside a raw read of the same table, in the same run on the same servers.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_producer::{AuditEvent, NatsPublisher};

#[derive(clap::Args, Debug, Clone)]
pub struct RelayBench {
    /// Outbox rows relayed.
    #[arg(long, default_value_t = 50_000)]
    pub rows: u64,
    /// Events the SDK signs and publishes.
    #[arg(long, default_value_t = 50_000)]
    pub events: u64,
    /// Events the SDK keeps waiting for their acknowledgement.
    #[arg(long, default_value_t = 256)]
    pub in_flight: usize,
}

pub async fn run(b: RelayBench) -> anyhow::Result<()> {
    let cpus = super::cpus();
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let super::Servers {
        nats,
        pg,
        db,
        js,
        pool,
    } = super::Servers::start().await?;
    let key = atp::keys::generate();
    let sdk_parts = super::partitions_of("sdk", 1);
    let outbox_parts = super::partitions_of("obx", 1);
    super::register(&js, &sdk_parts, &key).await?;
    super::register(&js, &outbox_parts, &key).await?;

    // --- The SDK: build, sign and publish (one partition, in order), against raw publish ---
    let sdk = super::bench_producer(&sdk_parts[0].0, &sdk_parts[0].1, &key)?;
    let publisher = NatsPublisher::with_client(js.client(), sdk.source());
    let event = |n: u64| {
        AuditEvent::new("com.example.audit")
            .actor(format!("user-{}", n % 1000), "user")
            .action("UPDATE")
            .resource("Order", format!("o-{n}"))
            .attribute("ip", "192.0.2.1")
    };
    let t = Instant::now();
    let signed: Vec<_> = (0..b.events)
        .map(|n| sdk.sign(event(n)))
        .collect::<Result<_, _>>()?;
    let sign_rate = b.events as f64 / t.elapsed().as_secs_f64();
    let bytes: Vec<Vec<u8>> = signed.iter().map(|s| s.body().to_vec()).collect();
    let t = Instant::now();
    let receipts = publisher.publish_all(signed, b.in_flight).await;
    let sdk_publish_rate = b.events as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(receipts.iter().all(Result::is_ok), "an SDK publish failed");
    let t = Instant::now();
    let sdk_end_to_end = {
        let again: Vec<_> = (b.events..2 * b.events)
            .map(|n| sdk.sign(event(n)))
            .collect::<Result<_, _>>()?;
        let r = publisher.publish_all(again, b.in_flight).await;
        anyhow::ensure!(r.iter().all(Result::is_ok), "an SDK publish failed");
        b.events as f64 / t.elapsed().as_secs_f64()
    };
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        ..Default::default()
    })
    .await?;
    let raw: Vec<(usize, String, Vec<u8>)> = bytes
        .into_iter()
        .enumerate()
        .map(|(i, body)| (0, format!("raw-{i}"), body))
        .collect();
    let t = Instant::now();
    super::publish_all(&js, vec!["bench.raw.one".to_owned()], raw, 1, b.in_flight).await?;
    let raw_publish_rate = b.events as f64 / t.elapsed().as_secs_f64();

    // --- The outbox: rows written, read raw, then relayed to queryable records ---
    let crm_url = pg.create_database("crm").await?;
    let crm = atp_store::connect(&crm_url, 2).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(atp::relay::EXAMPLE_OUTBOX))
        .execute(&crm)
        .await?;
    sqlx::query(
        "INSERT INTO outbox (event_type, aggregate_type, aggregate_id, actor_id, payload) \
         SELECT 'contact.updated', 'contact', 'c-' || g, 'staff-' || (g % 50), \
                jsonb_build_object('field', 'email', 'n', g) \
         FROM generate_series(1, $1) AS g",
    )
    .bind(b.rows as i64)
    .execute(&crm)
    .await?;
    let t = Instant::now();
    let read: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT id::text, seq, event_type, aggregate_type, aggregate_id, \
         actor_id, payload, created_at FROM outbox WHERE delivered_at IS NULL ORDER BY seq) r",
    )
    .fetch_one(&crm)
    .await?;
    let raw_read_rate = read as f64 / t.elapsed().as_secs_f64();

    let tenant_keys = tempfile::tempdir()?;
    let started = Instant::now();
    let mut child = tokio::process::Command::new(super::atp_exe()?)
        .args(["serve", "--roles", "ingest,projector"])
        .env("ATP_NATS_URL", nats.url())
        .env("ATP_DATABASE_URL", &db)
        .env("ATP_TENANT_KEYS_DIR", tenant_keys.path())
        .env("ATP_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting atp serve")?;
    // The SDK's events go through first, so the relay's run starts on an idle ATP.
    let before = 2 * b.events;
    wait_queryable(&pool, &js, before).await?;
    // ATP started on the SDK's backlog: how fast one partition (one chain) becomes queryable.
    let one_chain_rate = before as f64 / started.elapsed().as_secs_f64();
    let relay = atp::relay::OutboxRelay {
        database_url: crm_url.clone(),
        mapping: atp::relay::OutboxMapping {
            type_prefix: "com.example.crm.".to_owned(),
            ..Default::default()
        },
        batch: 1000,
        in_flight: b.in_flight,
        poll: Duration::from_millis(50),
    };
    let relay_producer = super::bench_producer(&outbox_parts[0].0, &outbox_parts[0].1, &key)?;
    let relay_nats = NatsPublisher::with_client(js.client(), relay_producer.source());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let task = tokio::spawn(atp::relay::run_outbox(
        relay,
        relay_producer,
        relay_nats,
        shutdown,
    ));
    wait_queryable(&pool, &js, before + b.rows).await?;
    let relay_rate = b.rows as f64 / t.elapsed().as_secs_f64();
    let _ = stop.send(true);
    task.await??;
    let undelivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE delivered_at IS NULL")
            .fetch_one(&crm)
            .await?;
    anyhow::ensure!(undelivered == 0, "{undelivered} rows not marked delivered");
    let _ = child.start_kill();

    println!("## atp-bench relay — {date}\n");
    println!(
        "Machine: {cpus} cores. Command: `ops/bin/bench relay --rows {} --events {} --in-flight {}`. \
         Servers: nats-server (file storage), PostgreSQL 15 with fsync on; ATP's ingest and \
         projector as one `atp serve` process.\n",
        b.rows, b.events, b.in_flight
    );
    println!("| measure | result |\n|---|---|");
    println!("| Rust SDK: build and sign (one core) | {sign_rate:.0} events/s |");
    println!(
        "| Rust SDK: publish signed events, one partition in order, {} in flight (JetStream ack) | {sdk_publish_rate:.0} events/s |",
        b.in_flight
    );
    println!("| Rust SDK: build, sign and publish | {sdk_end_to_end:.0} events/s |");
    println!(
        "| raw JetStream publish of the same bytes, one subject, {} in flight | {raw_publish_rate:.0} msg/s |",
        b.in_flight
    );
    println!(
        "| ATP: a backlog of {before} events of one partition → queryable (one chain; ingest and projector started on it) | {one_chain_rate:.0} events/s |"
    );
    println!(
        "| raw read of the outbox's undelivered rows (one query) | {raw_read_rate:.0} rows/s |"
    );
    println!(
        "| outbox → queryable records (`atp relay outbox`, batches of 1000), sustained | {relay_rate:.0} rows/s |"
    );
    Ok(())
}

/// Until the ledger holds `n` records and the read model has them all.
async fn wait_queryable(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    n: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut ledger = js.get_stream(atp_nats::streams::LEDGER).await?;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "ATP did not catch up within 30 minutes"
        );
        let info = ledger.info().await?;
        if info.state.messages >= n
            && let Some(w) =
                atp_store::projection::watermark(pool, atp_store::projection::RECORDS).await?
            && w.stream_seq >= info.state.last_sequence
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
