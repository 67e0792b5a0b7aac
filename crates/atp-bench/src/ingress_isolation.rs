//! `ops/bin/bench isolation --ingress`: one tenant floods NATS directly (signed events, then
//! rejectable garbage) while another publishes at a steady rate. How far does the quiet
//! tenant's ingress → queryable p99 move, and does every flood message end as a record or a
//! rejection? Beside the raw baseline of the same publishes on a plain JetStream stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_core::PartitionKey;
use atp_nats::headers;
use atp_nats::{streams, subjects};
use hdrhistogram::Histogram;

use super::isolation::IsolationBench;

/// How often the quiet client asks PostgreSQL which of its events are queryable: the latency
/// figures' resolution. 2 ms is well under the p50 of a record's trip (tens of ms) and costs
/// PostgreSQL 500 cheap index probes a second, the same in every phase.
const POLL: Duration = Duration::from_millis(2);

/// What floods in a phase.
#[derive(Debug, Clone, Copy)]
enum FloodKind {
    /// Signed, valid events of another tenant: each becomes a record.
    Signed,
    /// 4 KiB of non-JSON bytes on another tenant's subject: each becomes a rejection.
    Garbage,
}

pub async fn run(b: IsolationBench) -> anyhow::Result<()> {
    let cpus = super::cpus();
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let super::Servers {
        nats,
        pg: _pg,
        db,
        js,
        pool,
    } = super::Servers::start().await?;
    let key = atp::keys::generate();
    let parts = super::partitions(3);
    super::register(&js, &parts, &key).await?;

    // Raw baseline: the quiet tenant's publishes on a plain stream, acknowledged.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        ..Default::default()
    })
    .await?;
    eprintln!("bench: raw JetStream publish at {}/s…", b.rate);
    let raw = super::isolation::paced(b.rate, b.secs, || {
        let js = js.clone();
        async move {
            match js.publish("bench.raw.quiet", "x".into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await?;

    let exe = super::atp_exe()?;
    let mut serve = tokio::process::Command::new(&exe);
    serve
        .args(["serve", "--roles", "ingest,projector"])
        .env("ATP_NATS_URL", nats.url())
        .env("ATP_DATABASE_URL", &db)
        .env("ATP_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("ATP_INGEST_TENANT_RATE");
    if let Some(rate) = b.tenant_rate {
        serve.env("ATP_INGEST_TENANT_RATE", rate.to_string());
    }
    let mut child = serve
        .kill_on_drop(true)
        .spawn()
        .context("starting atp serve")?;

    let mut rows = Vec::new();
    eprintln!("bench: the quiet tenant alone…");
    let alone = quiet(&js, &pool, &parts[0], &key, "alone", b.rate, b.secs).await?;
    rows.push(("alone".to_owned(), alone, None));
    for (kind, rate, flood_p) in [
        (FloodKind::Signed, b.nats_flood_rate, &parts[1]),
        (FloodKind::Garbage, b.garbage_rate, &parts[2]),
    ] {
        let label = match kind {
            FloodKind::Signed => format!("another tenant floods {rate} signed events/s"),
            FloodKind::Garbage => format!("another tenant floods {rate} garbage messages/s"),
        };
        eprintln!("bench: {label}…");
        let events = match kind {
            FloodKind::Signed => {
                super::sign_events(std::slice::from_ref(flood_p), rate * b.secs, &key, "flood")
                    .into_iter()
                    .map(|(_, _, body)| body)
                    .collect()
            }
            FloodKind::Garbage => (0..rate * b.secs)
                .map(|i| {
                    let mut v = vec![0xffu8; 4096];
                    v[..8].copy_from_slice(&i.to_be_bytes());
                    v
                })
                .collect(),
        };
        let flood = spawn_flood(&nats.url(), subjects::ingress(&flood_p.0), events, rate)?;
        let quiet_h = quiet(&js, &pool, &parts[0], &key, kind_tag(kind), b.rate, b.secs).await?;
        let acked = flood
            .join()
            .map_err(|_| anyhow::anyhow!("the flooding thread panicked"))??;
        let answered = answered_within(&js, &flood_p.0, acked, Duration::from_secs(600)).await?;
        rows.push((label, quiet_h, Some((acked, answered))));
    }
    child.kill().await?;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n## Tenant isolation at the NATS ingress — {date}, {cpus} CPUs\n\n`ops/bin/bench isolation --ingress --secs {} --rate {} --nats-flood-rate {} --garbage-rate {}{}` \
         (ingest and projector in their own process; the flood from its own thread; nats-server and PostgreSQL, fsync on, on loopback)\n",
        b.secs,
        b.rate,
        b.nats_flood_rate,
        b.garbage_rate,
        b.tenant_rate
            .map_or(String::new(), |r| format!(" --tenant-rate {r}"))
    );
    println!(
        "| quiet tenant ({} signed events/s on NATS) | ingress → queryable p50 ms | p99 ms | p99 vs alone | ingress → ledger p50 ms | p99 ms | flood acknowledged | flood answered (record or rejection) |",
        b.rate
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| raw JetStream publish → ack, same rate, alone | {:.2} | {:.2} | | | | | |",
        ms(&raw, 0.5),
        ms(&raw, 0.99)
    );
    let alone_p99 = ms(&rows[0].1.queryable, 0.99);
    for (label, q, flood) in &rows {
        let p99 = ms(&q.queryable, 0.99);
        let (acked, answered) = flood.map_or((String::new(), String::new()), |(a, n)| {
            (a.to_string(), n.to_string())
        });
        println!(
            "| {label} | {:.2} | {p99:.2} | {:.1}× | {:.2} | {:.2} | {acked} | {answered} |",
            ms(&q.queryable, 0.5),
            p99 / f64::max(alone_p99, 0.001),
            ms(&q.ledger, 0.5),
            ms(&q.ledger, 0.99),
        );
    }
    Ok(())
}

fn kind_tag(kind: FloodKind) -> &'static str {
    match kind {
        FloodKind::Signed => "signed",
        FloodKind::Garbage => "garbage",
    }
}

/// The quiet tenant's latencies: publish → row visible in the read model, and publish → record
/// on the ledger (ingest's part of it).
struct Quiet {
    queryable: Histogram<u64>,
    ledger: Histogram<u64>,
}

/// The quiet tenant: `rate` signed events a second for `secs`, each timed from its publish to
/// the moment its record reaches the ledger (a core NATS subscription to its ledger subject)
/// and to the moment its row is visible in the read model.
async fn quiet(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::PgPool,
    part: &(PartitionKey, String),
    key: &ed25519_dalek::SigningKey,
    phase: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Quiet> {
    let n = rate * secs;
    let mut on_ledger = js.client().subscribe(subjects::ledger(&part.0)).await?;
    let ledger_seen: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Arc::default();
    let watcher = {
        let seen = ledger_seen.clone();
        tokio::spawn(async move {
            while let Some(m) = futures::StreamExt::next(&mut on_ledger).await {
                let at = Instant::now();
                let id = m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(headers::EVENT_ID))
                    .map(|v| v.as_str().to_owned());
                if let (Some(id), Ok(mut seen)) = (id, seen.lock()) {
                    seen.push((id, at));
                }
            }
        })
    };
    let mut all_sent: Vec<(String, Instant)> = Vec::with_capacity(n as usize);
    let events = super::sign_events(
        std::slice::from_ref(part),
        n,
        key,
        &format!("quiet-{phase}"),
    );
    let subject = subjects::ingress(&part.0);
    let sent: Arc<std::sync::Mutex<Vec<(String, Instant)>>> = Arc::default();
    let publisher = {
        let (js, sent) = (js.clone(), sent.clone());
        tokio::spawn(async move {
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let t0 = Instant::now();
            for (i, (_, id, body)) in events.into_iter().enumerate() {
                tokio::time::sleep_until((t0 + interval * i as u32).into()).await;
                let h = atp_nats::headers::IngressHeaders::structured();
                let at = Instant::now();
                js.publish_with_headers(subject.clone(), h.into_map(), body.into())
                    .await?
                    .await?;
                if let Ok(mut s) = sent.lock() {
                    s.push((id, at));
                }
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut hist = Histogram::<u64>::new(3)?;
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(secs + 600);
    while hist.len() < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the quiet tenant's events were not all queryable in time"
        );
        if let Ok(mut s) = sent.lock() {
            all_sent.extend(s.iter().cloned());
            waiting.append(&mut s);
        }
        if !waiting.is_empty() {
            let ids: Vec<String> = waiting.iter().map(|(id, _)| id.clone()).collect();
            let found: Vec<String> = sqlx::query_scalar(
                "SELECT event_id FROM records WHERE tenant_id = $1 AND source_id = $2 \
                 AND event_id = ANY($3)",
            )
            .bind(part.0.tenant.as_str())
            .bind(part.0.source.as_str())
            .bind(&ids)
            .fetch_all(pool)
            .await?;
            let now = Instant::now();
            waiting.retain(|(id, at)| {
                if found.contains(id) {
                    let _ = hist.record(now.duration_since(*at).as_micros() as u64);
                    false
                } else {
                    true
                }
            });
        }
        tokio::time::sleep(POLL).await;
    }
    publisher.await??;
    watcher.abort();
    let sent_at: std::collections::HashMap<String, Instant> = all_sent.into_iter().collect();
    let mut ledger = Histogram::<u64>::new(3)?;
    if let Ok(seen) = ledger_seen.lock() {
        for (id, at) in seen.iter() {
            if let Some(sent) = sent_at.get(id) {
                let _ = ledger.record(at.saturating_duration_since(*sent).as_micros() as u64);
            }
        }
    }
    Ok(Quiet {
        queryable: hist,
        ledger,
    })
}

/// Publishes `events` open-loop at `rate` a second from a thread and runtime of its own, so the
/// flood's client work does not queue behind the quiet tenant's; returns how many JetStream
/// acknowledged.
fn spawn_flood(
    url: &str,
    subject: String,
    events: Vec<Vec<u8>>,
    rate: u64,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<u64>>> {
    let url = url.to_owned();
    Ok(std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = atp_nats::connect(&url, "atp-bench-flood", None).await?;
            let js = async_nats::jetstream::new(client);
            let acked = Arc::new(AtomicU64::new(0));
            let mut acks = futures::stream::FuturesUnordered::new();
            let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
            let t0 = Instant::now();
            for (i, body) in events.into_iter().enumerate() {
                tokio::time::sleep_until((t0 + interval * i as u32).into()).await;
                let ack = js
                    .publish(subject.clone(), body.into())
                    .await?
                    .into_future();
                acks.push(ack);
                while let Some(Some(r)) =
                    futures::FutureExt::now_or_never(futures::StreamExt::next(&mut acks))
                {
                    if r.is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            while let Some(r) = futures::StreamExt::next(&mut acks).await {
                if r.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(acked.load(Ordering::Relaxed))
        })
    }))
}

/// Waits until every acknowledged flood message of `p` has its record or rejection; returns
/// how many it counted (fails after `patience` if they never add up).
async fn answered_within(
    js: &async_nats::jetstream::Context,
    p: &PartitionKey,
    acked: u64,
    patience: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + patience;
    loop {
        let mut n: u64 = 0;
        for (stream, subject) in [
            (streams::LEDGER, subjects::ledger(p)),
            (streams::REJECTED, subjects::rejected(p)),
        ] {
            let s = js.get_stream(stream).await?;
            let mut subjects = s.info_with_subjects(subject).await?;
            while let Some(entry) = futures::StreamExt::next(&mut subjects).await {
                n += entry?.1 as u64;
            }
        }
        if n >= acked || Instant::now() > deadline {
            return Ok(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
