//! `atp-bench relay`: what the producer side costs. Each SDK's sign-and-publish rate (Rust,
//! and Python and TypeScript when installed) beside a raw JetStream publish of the same bytes;
//! an outbox of `--rows` rows relayed to queryable records beside a raw read of the same table;
//! and `--kafka-messages` trace events relayed from a Kafka topic (Tansu) beside a raw read of
//! the same topic; in the same run on the same servers.

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
    /// Trace events relayed from Kafka (0: no Kafka part; it needs Tansu,
    /// `ops/bin/install-tansu`).
    #[arg(long, default_value_t = 50_000)]
    pub kafka_messages: u64,
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
    let other_sdks = other_sdks(&js, &nats.url(), &key, b.events, b.in_flight).await?;
    let other_events: u64 = other_sdks
        .iter()
        .filter(|(_, r)| r.is_ok())
        .map(|_| b.events)
        .sum();

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
    let before = 2 * b.events + other_events;
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
    let kafka = if b.kafka_messages > 0 {
        Some(
            kafka(
                &js,
                &pool,
                &key,
                b.kafka_messages,
                b.in_flight,
                before + b.rows,
            )
            .await,
        )
    } else {
        None
    };
    let _ = child.start_kill();

    println!("## atp-bench relay — {date}\n");
    println!(
        "Machine: {cpus} cores. Command: `ops/bin/bench relay --rows {} --events {} --in-flight {} --kafka-messages {}`. \
         Servers: nats-server (file storage), PostgreSQL 15 with fsync on, Tansu 0.6.0 (SQLite \
         storage, one process); ATP's ingest and projector as one `atp serve` process.\n",
        b.rows, b.events, b.in_flight, b.kafka_messages
    );
    println!("| measure | result |\n|---|---|");
    println!("| Rust SDK: build and sign (one core) | {sign_rate:.0} events/s |");
    println!(
        "| Rust SDK: publish signed events, one partition in order, {} in flight (JetStream ack) | {sdk_publish_rate:.0} events/s |",
        b.in_flight
    );
    println!("| Rust SDK: build, sign and publish | {sdk_end_to_end:.0} events/s |");
    for (sdk, result) in &other_sdks {
        match result {
            Ok((sign, publish)) => {
                println!("| {sdk} SDK: build and sign (one core) | {sign:.0} events/s |");
                println!(
                    "| {sdk} SDK: publish signed events, one partition in order, {} in flight | {publish:.0} events/s |",
                    b.in_flight
                );
            }
            Err(why) => println!("| {sdk} SDK | not measured: {why} |"),
        }
    }
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
    match kafka {
        Some(Ok(k)) => {
            println!(
                "| raw read of the topic's {} trace events (a consumer group of one, from joining) | {:.0} msg/s |",
                b.kafka_messages, k.raw_read
            );
            println!(
                "| Kafka → queryable records (`atp relay kafka`, 3 partitions, batches of 500, from joining) | {:.0} msg/s |",
                k.relayed
            );
        }
        Some(Err(e)) => println!("| Kafka | not measured: {e:#} |"),
        None => {}
    }
    Ok(())
}

/// The Python and TypeScript SDKs' sign and publish rates (`sdk/*/bench/publish.*`), each on a
/// partition of its own, when the SDK is installed (`ATP_SDK_PYTHON`, `ATP_SDK_TYPESCRIPT`, as
/// `ops/bin/bench` sets them): (name, (sign, publish) events/s, or why not).
async fn other_sdks(
    js: &async_nats::jetstream::Context,
    nats_url: &str,
    key: &ed25519_dalek::SigningKey,
    events: u64,
    in_flight: usize,
) -> anyhow::Result<Vec<(&'static str, Result<(f64, f64), String>)>> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pem_dir = tempfile::tempdir()?;
    let pem = pem_dir.path().join("producer.pem");
    atp::keys::write_private(&pem, key)?;
    let mut out = Vec::new();
    for (name, prefix, env, script) in [
        (
            "Python",
            "py",
            "ATP_SDK_PYTHON",
            "sdk/python/bench/publish.py",
        ),
        (
            "TypeScript",
            "ts",
            "ATP_SDK_TYPESCRIPT",
            "sdk/typescript/dist/bench/publish.js",
        ),
    ] {
        let Some(tool) = std::env::var_os(env).filter(|v| !v.is_empty()) else {
            out.push((
                name,
                Err(format!("{env} is not set (ops/bin/bench sets it)")),
            ));
            continue;
        };
        let parts = super::partitions_of(prefix, 1);
        super::register(js, &parts, key).await?;
        let (p, uri) = &parts[0];
        // The TypeScript SDK's directory, or the Python SDK's interpreter.
        let (program, args) = if name == "TypeScript" {
            ("node".into(), vec![repo.join(script)])
        } else {
            (std::path::PathBuf::from(&tool), vec![repo.join(script)])
        };
        let run = tokio::process::Command::new(program)
            .args(args)
            .env("ATP_BENCH_EVENTS", events.to_string())
            .env("ATP_BENCH_IN_FLIGHT", in_flight.to_string())
            .env("ATP_TENANT", p.tenant.as_str())
            .env("ATP_SOURCE", p.source.as_str())
            .env("ATP_SOURCE_URI", uri)
            .env("ATP_KEY_PEM", &pem)
            .env("ATP_KEY_ID", "bench-1")
            .env("ATP_NATS_URL", nats_url)
            .output()
            .await;
        let result = match run {
            Ok(o) if o.status.success() => serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .ok()
                .and_then(|v| Some((v["sign"].as_f64()?, v["publish"].as_f64()?)))
                .ok_or_else(|| {
                    format!("unreadable output {:?}", String::from_utf8_lossy(&o.stdout))
                }),
            Ok(o) => Err(format!(
                "{} ({})",
                o.status,
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )),
            Err(e) => Err(e.to_string()),
        };
        out.push((name, result));
    }
    Ok(out)
}

/// Rates of the Kafka part, messages per second.
struct KafkaRates {
    raw_read: f64,
    relayed: f64,
}

/// `messages` trace events written to a 3-partition topic on a Tansu broker, read back raw by
/// a consumer of its own, then relayed by `atp relay kafka` until the ledger and the read model
/// hold `before + messages` records.
async fn kafka(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::PgPool,
    key: &ed25519_dalek::SigningKey,
    messages: u64,
    in_flight: usize,
    before: u64,
) -> anyhow::Result<KafkaRates> {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    const TOPIC: &str = "audit.events.log";
    let broker = atp_devstack::KafkaBroker::start().await?;
    broker.create_topic(TOPIC, 3).await?;
    let parts = super::partitions_of("kfk", 1);
    super::register(js, &parts, key).await?;
    let (p, _) = &parts[0];
    let tenant = p.tenant.to_string();

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let mut sent = Vec::with_capacity(messages as usize);
    for n in 0..messages {
        let body = serde_json::json!({
            "service": "transfer", "action": "transfer.approve",
            "resource": {"type": "transfer", "id": format!("tr_{n}")}, "status": 200,
            "request": {"method": "POST", "path": format!("/v1/transfers/tr_{n}/approve")},
            "metadata": {"x-user-id": format!("usr_{}", n % 1000), "x-session-id": format!("ses_{}", n % 97)},
        })
        .to_string();
        let session = format!("ses_{}", n % 97);
        let record = FutureRecord::to(TOPIC)
            .key(&session)
            .payload(&body)
            .headers(OwnedHeaders::new().insert(Header {
                key: "x-tenant-id",
                value: Some(&tenant),
            }));
        match producer.send_result(record) {
            Ok(delivery) => sent.push(delivery),
            Err((e, _)) => anyhow::bail!("producing to Kafka: {e}"),
        }
    }
    for d in sent {
        d.await?.map_err(|(e, _)| e)?;
    }

    let t = Instant::now();
    let raw: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "bench-raw")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    raw.subscribe(&[TOPIC])?;
    let mut read = 0;
    while read < messages {
        tokio::time::timeout(Duration::from_secs(60), raw.recv())
            .await
            .context("the raw consumer got nothing for a minute")??;
        read += 1;
    }
    let raw_read = messages as f64 / t.elapsed().as_secs_f64();
    drop(raw);

    let relay = atp::relay::kafka::KafkaRelay {
        brokers: broker.bootstrap(),
        topic: TOPIC.to_owned(),
        group: "atp-relay".to_owned(),
        // Static membership, as the Kafka relay's tests use: Tansu 0.6.0 never expires a
        // member whose session timed out, so a plain member that missed a heartbeat under load
        // would wait to rejoin for ever (ADR 0024).
        instance_id: Some("atp-bench-relay".to_owned()),
        type_prefix: "com.example.platform.".to_owned(),
        batch: 500,
        in_flight,
        lag_interval: Duration::from_secs(10),
        client_config: Vec::new(),
    };
    let signer = super::bench_producer(p, &parts[0].1, key)?;
    let nats = NatsPublisher::with_client(js.client(), signer.source());
    let producers = atp::relay::kafka::Producers::new(vec![(tenant.clone(), signer, nats)])?;
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let task = tokio::spawn(atp::relay::kafka::run_kafka(relay, producers, shutdown));
    wait_queryable(pool, js, before + messages).await?;
    let relayed = messages as f64 / t.elapsed().as_secs_f64();
    let _ = stop.send(true);
    task.await??;
    Ok(KafkaRates { raw_read, relayed })
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
