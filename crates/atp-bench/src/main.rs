//! `atp-bench`: ATP against the raw baselines, on servers this command starts. Kept out of the
//! `atp` binary and of the library the tests link; `ops/bin/bench <which>` builds both
//! binaries and runs it.
//!
//! `atp-bench ingest` runs ATP's ingest and projector as a child `atp serve` process (so its
//! CPU and memory are its own), drives pre-signed events at the NATS ingress from concurrent
//! producers, and measures in the same run, on the same servers: plain JetStream publish and
//! plain PostgreSQL bulk insert of rows shaped like ATP's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use atp_core::{PartitionKey, SourceId, TenantId};
use atp_devstack::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use atp_nats::{headers, streams, subjects};
use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

mod export;
mod ingress_isolation;
mod integrity;
mod isolation;
mod privacy;
mod relay;

#[derive(clap::Parser)]
#[command(
    name = "atp-bench",
    about = "ATP's benchmarks, beside their raw baselines"
)]
struct Cli {
    #[command(subcommand)]
    which: Which,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = atp_telemetry::telemetry::init();
    run(<Cli as clap::Parser>::parse().which).await
}

/// The `atp` binary the benchmarks run as ATP's own process: `ATP_BIN`, else the one beside
/// this binary (`cargo build --release --bin atp --bin atp-bench` puts both there).
fn atp_exe() -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("ATP_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe()?;
    let exe = me.with_file_name("atp");
    anyhow::ensure!(
        exe.is_file(),
        "no atp binary at {}: build it (cargo build --release --bin atp) or set ATP_BIN",
        exe.display()
    );
    Ok(exe)
}

#[derive(clap::Subcommand, Debug, Clone)]
enum Which {
    /// Signed events at the NATS ingress → ledger → PostgreSQL, against raw JetStream publish
    /// and raw PostgreSQL insert on the same servers.
    Ingest(IngestBench),
    /// Inclusion proofs at 10M leaves, checkpoint lag at the ingest rate, offline chain
    /// verification, each beside its raw baseline.
    Integrity(integrity::IntegrityBench),
    /// Packaging a 1M-record export, download time to first byte, offline verification, each
    /// beside its raw baseline.
    Export(export::ExportBench),
    /// One tenant floods the gateway with queries: the other tenant's p99, with the per-tenant
    /// limits on and lifted, beside the same query straight on PostgreSQL.
    Isolation(isolation::IsolationBench),
    /// Erasure of one data subject with 100,000 records end to end, and the redaction a
    /// 100-record query page adds, beside the raw query.
    Privacy(privacy::PrivacyBench),
    /// The producer side: the Rust SDK's sign-and-publish rate beside raw JetStream publish,
    /// and an outbox relayed to queryable records beside a raw read of the table.
    Relay(relay::RelayBench),
    /// The flooding client of `atp-bench isolation`, run as its own process (token in
    /// `ATP_BENCH_TOKEN`); prints a line when the flood is on, then its counts as JSON.
    #[command(hide = true)]
    Flood(isolation::Flood),
}

#[derive(clap::Args, Debug, Clone)]
pub struct IngestBench {
    /// Events for the throughput run.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 8)]
    pub producers: usize,
    /// Partitions (tenant:source pairs) the events spread over.
    #[arg(long, default_value_t = 64)]
    pub partitions: usize,
    /// Publish rate of the latency run (events/s).
    #[arg(long, default_value_t = 5_000)]
    pub latency_rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 20)]
    pub latency_secs: u64,
    /// Events in each raw baseline.
    #[arg(long, default_value_t = 200_000)]
    pub baseline_events: u64,
    /// Run `atp serve` with traces on: every span exported over OTLP/HTTP to a sink this
    /// command runs (it counts and drops them), to measure what tracing costs.
    #[arg(long)]
    pub traces: bool,
    /// Personal attributes per event (e-mail-like values). With N > 0 every event carries N
    /// such attributes, and the throughput run is repeated on tenants whose policy classifies
    /// them (and the actor) `personal`: the second run seals them before hashing, the first
    /// stores them in clear, so the difference is the cost of encryption at ingest.
    #[arg(long, default_value_t = 0)]
    pub personal_fields: usize,
}

/// A stand-in OTLP/HTTP collector: answers 200 to every export, counting requests and bytes.
struct OtlpSink {
    endpoint: String,
    requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl OtlpSink {
    async fn start() -> anyhow::Result<Self> {
        use std::sync::atomic::{AtomicU64, Ordering};
        let requests = std::sync::Arc::new(AtomicU64::new(0));
        let bytes = std::sync::Arc::new(AtomicU64::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        let app = axum::Router::new().fallback(move |body: bytes::Bytes| {
            let (r, b) = (r.clone(), b.clone());
            async move {
                r.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(body.len() as u64, Ordering::Relaxed);
                axum::http::StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(Self {
            endpoint,
            requests,
            bytes,
        })
    }
}

/// A gateway alone, on the bench's servers, trusting `issuer`'s tokens, with these rate limits
/// on top of the defaults.
pub(crate) async fn gateway(
    nats_url: &str,
    db: &str,
    issuer: &ed25519_dalek::SigningKey,
    limits: &[String],
) -> anyhow::Result<atp::serve::Running> {
    atp::serve::start(atp::serve::ServeConfig {
        nats_url: nats_url.to_owned(),
        nats_credentials: atp::serve::NatsCredentials::None,
        database_url: atp_runtime::Secret::new(db.to_owned()),
        gateway_database_url: None,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        roles: atp_core::role::Roles::parse("gateway")?,
        shard: atp_runtime::shard::Shard::ALL,
        ingest: Default::default(),
        // The gateway role alone seals and opens nothing.
        tenant_keys: std::sync::Arc::new(atp_runtime::keyring::FileTenantKeys::new(
            std::path::Path::new(atp_runtime::ingest::DEFAULT_TENANT_KEYS_DIR),
        )),
        lifecycle: Default::default(),
        issuer: atp::dev::ISSUER.to_owned(),
        audience: atp::dev::AUDIENCE.to_owned(),
        token_keys: vec![(
            atp::dev::ISSUER_KID.to_owned(),
            issuer.verifying_key().to_bytes(),
        )],
        token_jwks: None,
        rate_limits: atp_gateway::RateLimits::default()
            .with(limits)
            .map_err(anyhow::Error::msg)?,
        attestation_key: Some(atp::keys::generate()),
        integrity: atp::serve::IntegritySettings {
            keys_dir: std::env::temp_dir().join("atp-bench-unused-keys"),
            log_name: "atp.bench".to_owned(),
            policy: Default::default(),
        },
        exports: Default::default(),
        export_limits: Default::default(),
        gateway_limits: Default::default(),
        metrics_listen: None,
    })
    .await
}

async fn run(which: Which) -> anyhow::Result<()> {
    match which {
        Which::Ingest(b) => ingest(b).await,
        Which::Integrity(b) => integrity::run(b).await,
        Which::Export(b) => export::run(b).await,
        Which::Isolation(b) if b.ingress => ingress_isolation::run(b).await,
        Which::Isolation(b) => isolation::run(b).await,
        Which::Flood(f) => isolation::flood(f).await,
        Which::Privacy(b) => privacy::run(b).await,
        Which::Relay(b) => relay::run(b).await,
    }
}

/// CPU seconds used so far by a process (user + system), from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the ")"; ticks are 1/100 s
    // on Linux x86-64 (USER_HZ).
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// Peak resident set (VmHWM) of a process, MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A process and its children (PostgreSQL's backends), for CPU accounting.
fn process_tree(root: u32) -> Vec<u32> {
    let mut out = vec![root];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(root) {
                out.push(pid);
            }
        }
    }
    out
}

struct Meter {
    label: &'static str,
    pids: Box<dyn Fn() -> Vec<u32> + Send>,
    start_cpu: f64,
}

impl Meter {
    fn new(label: &'static str, pids: impl Fn() -> Vec<u32> + Send + 'static) -> Self {
        let start_cpu = pids().iter().map(|p| cpu_secs(*p)).sum();
        Self {
            label,
            pids: Box::new(pids),
            start_cpu,
        }
    }
    /// CPU seconds its processes used since it was made.
    fn cpu_secs(&self) -> f64 {
        (self.pids)().iter().map(|p| cpu_secs(*p)).sum::<f64>() - self.start_cpu
    }

    /// (cores used on average over `wall`, peak RSS MiB of the main process)
    fn read(&self, wall: Duration) -> (f64, f64) {
        let pids = (self.pids)();
        let cpu: f64 = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - self.start_cpu;
        (
            cpu / wall.as_secs_f64().max(1e-9),
            pids.first().map_or(0.0, |p| peak_rss_mib(*p)),
        )
    }
}

fn partitions(n: usize) -> Vec<(PartitionKey, String)> {
    partitions_of("t", n)
}

/// `n` partitions over 8 tenants named `<prefix>0`..`<prefix>7`.
pub(crate) fn partitions_of(prefix: &str, n: usize) -> Vec<(PartitionKey, String)> {
    (0..n)
        .filter_map(|i| {
            let t = TenantId::new(format!("{prefix}{}", i % 8)).ok()?;
            let s = SourceId::new(format!("s{}", i / 8)).ok()?;
            let uri = format!("https://bench.example/{t}/{s}");
            Some((PartitionKey::new(t, s), uri))
        })
        .collect()
}

/// Gives the tenants of `parts` a policy that classifies the actor and the `personal`
/// attributes personal (what ingest then seals).
async fn classify_personal(
    js: &async_nats::jetstream::Context,
    parts: &[(PartitionKey, String)],
    personal_fields: usize,
) -> anyhow::Result<()> {
    let mut fields = vec![atp_core::policy::FieldRule {
        path: "/actor/id".to_owned(),
        classification: atp_core::policy::Classification::Personal,
    }];
    fields.extend((0..personal_fields).map(|k| atp_core::policy::FieldRule {
        path: format!("/attributes/personal_{k}"),
        classification: atp_core::policy::Classification::Personal,
    }));
    let doc = atp_core::policy::PolicyDocument {
        fields,
        ..Default::default()
    };
    let kv = atp_nats::policy::bucket(js).await?;
    let tenants: std::collections::BTreeSet<TenantId> =
        parts.iter().map(|(p, _)| p.tenant.clone()).collect();
    for t in tenants {
        atp_nats::policy::replace(&kv, &t, doc.clone()).await?;
    }
    Ok(())
}

/// Pre-signed events (signing is the producer's cost, measured separately).
fn sign_events(
    parts: &[(PartitionKey, String)],
    n: u64,
    key: &ed25519_dalek::SigningKey,
    prefix: &str,
) -> Vec<(usize, String, Vec<u8>)> {
    sign_events_with(parts, n, key, prefix, 0)
}

/// [`sign_events`] with `personal` e-mail-like attributes `personal_0..` in each event, and one
/// actor (data subject) per thousand events.
pub(crate) fn sign_events_with(
    parts: &[(PartitionKey, String)],
    n: u64,
    key: &ed25519_dalek::SigningKey,
    prefix: &str,
    personal: usize,
) -> Vec<(usize, String, Vec<u8>)> {
    sign_events_as(parts, n, key, prefix, personal, |i| {
        if personal > 0 {
            format!("user-{}", i / 1000)
        } else {
            "bench-user".to_owned()
        }
    })
}

/// The SDK producer of partition `p` (source URI `uri`), signing as `register` registered it.
pub(crate) fn bench_producer(
    p: &PartitionKey,
    uri: &str,
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<atp_producer::Producer> {
    use atp_producer::{Producer, Signer, Source};
    Ok(Producer::new(
        Source::new(p.tenant.as_str(), p.source.as_str(), uri)?,
        Signer::new(key.clone(), "bench-1"),
    ))
}

/// [`sign_events_with`] with event `i`'s actor `actor(i)`. Events are built and signed by the
/// Rust SDK (`atp-producer`), as a producer would; an event that cannot be signed is left out.
pub(crate) fn sign_events_as(
    parts: &[(PartitionKey, String)],
    n: u64,
    key: &ed25519_dalek::SigningKey,
    prefix: &str,
    personal: usize,
    actor: impl Fn(u64) -> String,
) -> Vec<(usize, String, Vec<u8>)> {
    use atp_producer::AuditEvent;
    let producers: Vec<Option<atp_producer::Producer>> = parts
        .iter()
        .map(|(p, uri)| bench_producer(p, uri, key).ok())
        .collect();
    (0..n)
        .filter_map(|i| {
            let pi = (i as usize) % parts.len();
            let id = format!("{prefix}-{i}");
            let actor = actor(i);
            let mut ev = AuditEvent::new("com.example.audit")
                .id(&id)
                .actor(&actor, "user")
                .action("UPDATE")
                .resource("Order", "4711")
                .outcome("success")
                .attribute("ip", "192.0.2.1")
                .attribute("amount", 12.5);
            for k in 0..personal {
                ev = ev.attribute(format!("personal_{k}"), format!("{actor}.{k}@mail.example"));
            }
            let signed = producers.get(pi)?.as_ref()?.sign(ev).ok()?;
            Some((pi, id, signed.body().to_vec()))
        })
        .collect()
}

/// Publishes `events` (each aimed at `subjects[index]`) from `producers` concurrent tasks, each
/// keeping up to `in_flight` acks outstanding.
pub(crate) async fn publish_all(
    js: &async_nats::jetstream::Context,
    subjects: Vec<String>,
    events: Vec<(usize, String, Vec<u8>)>,
    producers: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let chunks: Vec<Vec<(usize, String, Vec<u8>)>> = {
        let mut c: Vec<Vec<_>> = (0..producers).map(|_| Vec::new()).collect();
        for (i, e) in events.into_iter().enumerate() {
            c[i % producers].push(e);
        }
        c
    };
    let subjects = Arc::new(subjects);
    let mut tasks = Vec::new();
    for chunk in chunks {
        let (js, subjects) = (js.clone(), subjects.clone());
        tasks.push(tokio::spawn(async move {
            let mut acks = futures::stream::FuturesUnordered::new();
            for (pi, _id, body) in chunk {
                let h = atp_nats::headers::IngressHeaders::structured();
                let ack = js
                    .publish_with_headers(subjects[pi].clone(), h.into_map(), body.into())
                    .await?
                    .into_future();
                acks.push(ack);
                while acks.len() >= in_flight {
                    if let Some(r) = acks.next().await {
                        r?;
                    }
                }
            }
            while let Some(r) = acks.next().await {
                r?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// What every benchmark runs against: nats-server (file storage) and PostgreSQL (fsync on) on
/// free ports, streams and schema applied. Dropping it stops both.
pub(crate) struct Servers {
    pub nats: NatsServer,
    pub pg: Postgres,
    /// The database URL.
    pub db: String,
    pub js: async_nats::jetstream::Context,
    pub pool: sqlx::PgPool,
}

impl Servers {
    pub async fn start() -> anyhow::Result<Self> {
        eprintln!("bench: starting nats-server and PostgreSQL (fsync on)…");
        let nats = NatsServer::start(NatsOptions::default()).await?;
        let pg = Postgres::start(PostgresOptions {
            durable: true,
            ..Default::default()
        })
        .await?;
        let db = pg.create_database("atp").await?;
        let client = atp_nats::connect(&nats.url(), "atp-bench", None).await?;
        let js = async_nats::jetstream::new(client);
        atp::admin::prepare(&js, &db, 1).await?;
        let pool = atp_store::connect(&db, 4).await?;
        Ok(Self {
            nats,
            pg,
            db,
            js,
            pool,
        })
    }
}

pub async fn ingest(b: IngestBench) -> anyhow::Result<()> {
    let Servers {
        nats,
        pg,
        db,
        js,
        pool,
    } = Servers::start().await?;
    let key = atp::keys::generate();
    let parts = partitions(b.partitions);
    register(&js, &parts, &key).await?;
    // The sealing run's tenants: the same partitions under other tenants, whose policy
    // classifies the personal attributes and the actor `personal`.
    let sealed_parts = partitions_of("pt", b.partitions);
    if b.personal_fields > 0 {
        register(&js, &sealed_parts, &key).await?;
        classify_personal(&js, &sealed_parts, b.personal_fields).await?;
    }
    let tenant_keys = tempfile::tempdir()?;

    // --- producer-side signing cost ---
    let t = Instant::now();
    let events = sign_events_with(&parts, b.events, &key, "tp", b.personal_fields);
    let sign_rate = b.events as f64 / t.elapsed().as_secs_f64();
    let event_bytes = events.iter().map(|e| e.2.len()).sum::<usize>() / events.len().max(1);

    // --- baseline 1: plain JetStream publish of the same bytes ---
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        ..Default::default()
    })
    .await?;
    let raw: Vec<(usize, String, Vec<u8>)> = events
        .iter()
        .take(b.baseline_events as usize)
        .map(|(pi, id, body)| (*pi, format!("raw-{id}"), body.clone()))
        .collect();
    let raw_subjects: Vec<String> = parts
        .iter()
        .map(|(p, _)| format!("bench.raw.{}.{}", p.tenant, p.source))
        .collect();
    let n_raw = raw.len() as f64;
    let t = Instant::now();
    publish_all(&js, raw_subjects, raw, b.producers, 256).await?;
    let raw_js_rate = n_raw / t.elapsed().as_secs_f64();

    // --- baseline 2: plain PostgreSQL bulk insert of rows shaped like ATP's ---
    let raw_pg_rate = pg_baseline(&pool, b.baseline_events).await?;

    // --- ATP: throughput ---
    let exe = atp_exe()?;
    let sink = if b.traces {
        Some(OtlpSink::start().await?)
    } else {
        None
    };
    let serve_command = |roles: &str| {
        let mut serve = tokio::process::Command::new(&exe);
        serve
            .args(["serve", "--roles", roles])
            .env("ATP_NATS_URL", nats.url())
            .env("ATP_DATABASE_URL", &db)
            .env("ATP_TENANT_KEYS_DIR", tenant_keys.path())
            .env(
                "ATP_LOG",
                std::env::var("ATP_BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        serve
    };
    let mut serve = serve_command("ingest,projector");
    if let Some(sink) = &sink {
        serve.env("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.endpoint);
    }
    let mut child = serve
        .kill_on_drop(true)
        .spawn()
        .context("starting atp serve")?;
    let atp_pid = child.id().context("atp serve pid")?;
    let nats_pid = nats.pid().context("nats pid")?;
    let pg_pid = pg.pid().context("postgres pid")?;
    let m_atp = Meter::new("atp serve (ingest+projector)", move || vec![atp_pid]);
    let m_nats = Meter::new("nats-server", move || vec![nats_pid]);
    let m_pg = Meter::new("postgres (all backends)", move || process_tree(pg_pid));

    let ledger = js.get_stream(streams::LEDGER).await?;
    let t0 = Instant::now();
    let publisher = {
        let js = js.clone();
        let ingress: Vec<String> = parts.iter().map(|(p, _)| subjects::ingress(p)).collect();
        let producers = b.producers;
        tokio::spawn(async move { publish_all(&js, ingress, events, producers, 256).await })
    };
    let total = b.events;
    let mut ledger_done = None;
    let mut queryable_done = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    while queryable_done.is_none() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "ATP did not finish within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        if ledger_done.is_none() {
            let mut l = ledger.clone();
            if l.info().await?.state.messages >= total {
                ledger_done = Some(t0.elapsed());
            }
        }
        if let Some(w) =
            atp_store::projection::watermark(&pool, atp_store::projection::RECORDS).await?
        {
            let mut l = ledger.clone();
            let info = l.info().await?;
            if info.state.messages >= total && w.stream_seq >= info.state.last_sequence {
                queryable_done = Some(t0.elapsed());
            }
        }
    }
    publisher.await??;
    let e2e = queryable_done.unwrap_or_default();
    let to_ledger = ledger_done.unwrap_or(e2e);
    let (atp_cpu, atp_rss) = m_atp.read(e2e);
    let (nats_cpu, nats_rss) = m_nats.read(e2e);
    let (pg_cpu, pg_rss) = m_pg.read(e2e);

    // --- ATP: the same throughput with the personal attributes sealed ---
    // CPU seconds of ATP, NATS and PostgreSQL per event: on a machine whose cores the run
    // saturates this is what throughput divides, with less of the noise of a shared VM.
    let clear_cpu_per_event = (atp_cpu + nats_cpu + pg_cpu) * e2e.as_secs_f64() / total as f64;
    let servers = move |atp_pid: u32| {
        move || {
            let mut pids = vec![atp_pid, nats_pid];
            pids.extend(process_tree(pg_pid));
            pids
        }
    };
    let sealed = if b.personal_fields > 0 {
        let events = sign_events_with(&sealed_parts, b.events, &key, "tps", b.personal_fields);
        let ingress: Vec<String> = sealed_parts
            .iter()
            .map(|(p, _)| subjects::ingress(p))
            .collect();
        let meter = Meter::new("servers", servers(atp_pid));
        let until = Until::Queryable(2 * total);
        let took = drive(&js, &pool, &ledger, ingress, events, b.producers, until).await?;
        Some((took, meter.cpu_secs() / total as f64))
    } else {
        None
    };

    // --- ATP: latency at a fixed rate ---
    let lat = latency_run(&js, &pool, &parts, &key, b.latency_rate, b.latency_secs).await?;
    let _ = child.start_kill();
    let _ = child.wait().await;

    // --- ATP: ingest alone, in clear and sealed: what sealing costs ingest itself, with no
    // projector (which opens the sealed values again) sharing the cores ---
    let alone = if b.personal_fields > 0 {
        let clear_parts = partitions_of("ia", b.partitions);
        let sealing_parts = partitions_of("ib", b.partitions);
        register(&js, &clear_parts, &key).await?;
        register(&js, &sealing_parts, &key).await?;
        classify_personal(&js, &sealing_parts, b.personal_fields).await?;
        let mut child = serve_command("ingest")
            .kill_on_drop(true)
            .spawn()
            .context("starting atp serve --roles ingest")?;
        let ingest_pid = child.id().context("atp serve --roles ingest pid")?;
        let mut rates = Vec::new();
        for (parts, prefix) in [(&clear_parts, "ia"), (&sealing_parts, "ib")] {
            let events = sign_events_with(parts, b.events, &key, prefix, b.personal_fields);
            let ingress: Vec<String> = parts.iter().map(|(p, _)| subjects::ingress(p)).collect();
            let until = Until::Ledger(ledger.clone().info().await?.state.messages + total);
            let meter = Meter::new("servers", servers(ingest_pid));
            let (took, _) = drive(&js, &pool, &ledger, ingress, events, b.producers, until).await?;
            rates.push((
                total as f64 / took.as_secs_f64(),
                meter.cpu_secs() / total as f64,
            ));
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
        Some((rates[0], rates[1]))
    } else {
        None
    };

    let date = chrono::Utc::now().format("%Y-%m-%d");
    let cpus = cpus();
    println!("## atp-bench ingest — {date}\n");
    println!(
        "Machine: {cpus} cores. Command: `ops/bin/bench ingest --events {} --producers {} --partitions {} --latency-rate {} --latency-secs {} --personal-fields {}`. \
         Events: ~{event_bytes} B signed CloudEvents (Ed25519/DSSE). Servers: nats-server (file storage), PostgreSQL 15 with fsync on.\n",
        b.events, b.producers, b.partitions, b.latency_rate, b.latency_secs, b.personal_fields
    );
    if let Some(sink) = &sink {
        use std::sync::atomic::Ordering;
        println!(
            "Traces: **on** — every span exported over OTLP/HTTP to a local sink ({} exports, {:.1} MiB).\n",
            sink.requests.load(Ordering::Relaxed),
            sink.bytes.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
        );
    } else {
        println!("Traces: off (the default).\n");
    }
    println!("| measure | result |\n|---|---|");
    println!(
        "| raw JetStream publish, same bytes, {} producers | {:.0} msg/s |",
        b.producers, raw_js_rate
    );
    println!(
        "| raw PostgreSQL bulk insert (UNNEST, batches of 1000, records table shape) | {:.0} rows/s |",
        raw_pg_rate
    );
    println!(
        "| producer-side signing (one core) | {:.0} events/s |",
        sign_rate
    );
    println!(
        "| ATP ingress → ledger, sustained | {:.0} events/s |",
        total as f64 / to_ledger.as_secs_f64()
    );
    println!(
        "| ATP ingress → queryable in PostgreSQL, sustained (end to end) | {:.0} events/s |",
        total as f64 / e2e.as_secs_f64()
    );
    if let Some(((s_ledger, s_e2e), s_cpu)) = sealed {
        let plain = total as f64 / to_ledger.as_secs_f64();
        let with = total as f64 / s_ledger.as_secs_f64();
        println!(
            "| ATP ingress → ledger, sustained, {} personal attributes and the actor sealed per event | {:.0} events/s ({:+.1} % against the run above, same attributes in clear) |",
            b.personal_fields,
            with,
            (with / plain - 1.0) * 100.0
        );
        let plain = total as f64 / e2e.as_secs_f64();
        let with = total as f64 / s_e2e.as_secs_f64();
        println!(
            "| ATP ingress → queryable, sustained, sealed (projector opens them) | {:.0} events/s ({:+.1} %) |",
            with,
            (with / plain - 1.0) * 100.0
        );
        println!(
            "| CPU per event, ATP + NATS + PostgreSQL, ingress → queryable, in clear | {:.0} µs |",
            clear_cpu_per_event * 1e6
        );
        println!(
            "| CPU per event, ATP + NATS + PostgreSQL, ingress → queryable, sealed | {:.0} µs ({:+.1} %) |",
            s_cpu * 1e6,
            (s_cpu / clear_cpu_per_event - 1.0) * 100.0
        );
    }
    if let Some(((plain, plain_cpu), (with, with_cpu))) = alone {
        println!(
            "| ATP ingress → ledger, ingest role alone, attributes in clear | {plain:.0} events/s |"
        );
        println!(
            "| ATP ingress → ledger, ingest role alone, {} personal attributes and the actor sealed | {with:.0} events/s ({:+.1} %: the cost of sealing at ingest) |",
            b.personal_fields,
            (with / plain - 1.0) * 100.0
        );
        println!(
            "| CPU per event, ATP ingest + NATS + PostgreSQL, in clear / sealed | {:.0} µs / {:.0} µs ({:+.1} %) |",
            plain_cpu * 1e6,
            with_cpu * 1e6,
            (with_cpu / plain_cpu - 1.0) * 100.0
        );
        let (seal, open) = privacy::value_crypto_micros(200_000)?;
        println!(
            "| one value, field key + XChaCha20-Poly1305 + its JSON, one core: seal / open | {seal:.2} µs / {open:.2} µs |"
        );
    }
    println!(
        "| ingress → ledger latency at {}/s, p50 / p99 | {:.1} ms / {:.1} ms |",
        b.latency_rate, lat.ledger_p50, lat.ledger_p99
    );
    println!(
        "| ingress → queryable latency at {}/s, p50 / p99 | {:.1} ms / {:.1} ms |",
        b.latency_rate, lat.query_p50, lat.query_p99
    );
    println!(
        "| achieved rate in the latency run | {:.0} events/s |",
        lat.achieved
    );
    println!(
        "\nDuring the throughput run ({:.1} s):\n",
        e2e.as_secs_f64()
    );
    println!("| process | CPU (cores, average) | peak RSS |\n|---|---|---|");
    for (label, cpu, rss) in [
        (m_atp.label, atp_cpu, atp_rss),
        (m_nats.label, nats_cpu, nats_rss),
        (m_pg.label, pg_cpu, pg_rss),
    ] {
        println!("| {label} | {cpu:.2} | {rss:.0} MiB |");
    }
    Ok(())
}

/// When [`drive`] is done: once the ledger holds this many records, or once the read model
/// has caught up with them too.
#[derive(Debug, Clone, Copy)]
enum Until {
    Ledger(u64),
    Queryable(u64),
}

/// Publishes `events` and waits until the ledger holds `until`'s count of records (and, for
/// [`Until::Queryable`], the read model all of them): (time to the ledger, time to the end).
async fn drive(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::PgPool,
    ledger: &async_nats::jetstream::stream::Stream,
    ingress: Vec<String>,
    events: Vec<(usize, String, Vec<u8>)>,
    producers: usize,
    until: Until,
) -> anyhow::Result<(Duration, Duration)> {
    let (total, queryable) = match until {
        Until::Ledger(n) => (n, false),
        Until::Queryable(n) => (n, true),
    };
    let t0 = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move { publish_all(&js, ingress, events, producers, 256).await })
    };
    let mut ledger_done = None;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "ATP did not finish within 30 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut l = ledger.clone();
        let info = l.info().await?;
        if ledger_done.is_none() && info.state.messages >= total {
            ledger_done = Some(t0.elapsed());
            if !queryable {
                break;
            }
        }
        if let Some(w) =
            atp_store::projection::watermark(pool, atp_store::projection::RECORDS).await?
            && info.state.messages >= total
            && w.stream_seq >= info.state.last_sequence
        {
            break;
        }
    }
    publisher.await??;
    let e2e = t0.elapsed();
    Ok((ledger_done.unwrap_or(e2e), e2e))
}

async fn pg_baseline(pool: &sqlx::PgPool, n: u64) -> anyhow::Result<f64> {
    sqlx::query("CREATE TABLE bench_raw (LIKE records INCLUDING ALL)")
        .execute(pool)
        .await?;
    let record = vec![b'x'; 700];
    let t = Instant::now();
    let mut done = 0u64;
    while done < n {
        let k = (n - done).min(1000);
        let ids: Vec<String> = (done..done + k).map(|i| format!("{i:026}")).collect();
        let now = chrono::Utc::now();
        let times: Vec<chrono::DateTime<chrono::Utc>> = vec![now; k as usize];
        let texts = |s: &str| vec![s.to_owned(); k as usize];
        let ints: Vec<i64> = (done as i64..(done + k) as i64).collect();
        let bytes32: Vec<Vec<u8>> = vec![vec![7u8; 32]; k as usize];
        let recs: Vec<Vec<u8>> = vec![record.clone(); k as usize];
        sqlx::query(
            "INSERT INTO bench_raw (tenant_id, record_id, source_id, chain_index, event_id, event_type, occurred_at, \
             received_at, committed_at, actor_id, actor_type, action, resource_type, resource_id, outcome, \
             classification, policy_version, attributes_text, digest, chain_hash, ledger_seq, ingress_seq, record) \
             SELECT t, r, s, ci, e, et, o, rc, c, a, at, ac, rt, ri, NULL, cl, 1, '', d, ch, ci, ci, rec FROM UNNEST(\
             $1::text[], $2::text[], $3::text[], $4::int8[], $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[], \
             $9::timestamptz[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::bytea[], \
             $17::bytea[], $18::bytea[]) AS u(t, r, s, ci, e, et, o, rc, c, a, at, ac, rt, ri, cl, d, ch, rec)",
        )
        .bind(texts("t0"))
        .bind(&ids)
        .bind(texts("s0"))
        .bind(&ints)
        .bind(&ids)
        .bind(texts("com.example.audit"))
        .bind(&times)
        .bind(&times)
        .bind(&times)
        .bind(texts("bench-user"))
        .bind(texts("user"))
        .bind(texts("UPDATE"))
        .bind(texts("Order"))
        .bind(texts("4711"))
        .bind(texts("internal"))
        .bind(&bytes32)
        .bind(&bytes32)
        .bind(&recs)
        .execute(pool)
        .await?;
        done += k;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// Publishes `events` at a fixed `rate`, recording each send time in `sent` (by id) and each
/// publish → ack latency in `acks_h` when given. Returns the achieved rate.
async fn publish_at_rate(
    js: &async_nats::jetstream::Context,
    subjects: &[String],
    events: Vec<(usize, String, Vec<u8>)>,
    rate: u64,
    sent: Option<&Mutex<HashMap<String, Instant>>>,
    mut acks_h: Option<&mut Histogram<u64>>,
) -> anyhow::Result<f64> {
    let n = events.len() as f64;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let t0 = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut record = |r: Result<
        (Instant, async_nats::jetstream::publish::PublishAck),
        async_nats::jetstream::context::PublishError,
    >|
     -> anyhow::Result<()> {
        let (at, _) = r?;
        if let Some(h) = acks_h.as_deref_mut() {
            h.record(at.elapsed().as_micros() as u64)?;
        }
        Ok(())
    };
    for (i, (pi, id, body)) in events.into_iter().enumerate() {
        let due = t0 + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let h = atp_nats::headers::IngressHeaders::structured();
        let h = h.into_map();
        if let Some(sent) = sent {
            sent.lock().await.insert(id, Instant::now());
        }
        let at = Instant::now();
        let ack = js
            .publish_with_headers(subjects[pi].clone(), h, body.into())
            .await?
            .into_future();
        acks.push(async move { ack.await.map(|a| (at, a)) });
        while let Some(Some(r)) = futures::FutureExt::now_or_never(acks.next()) {
            record(r)?;
        }
    }
    while let Some(r) = acks.next().await {
        record(r)?;
    }
    Ok(n / t0.elapsed().as_secs_f64())
}

/// Registers every bench partition with one producer key.
pub(crate) async fn register(
    js: &async_nats::jetstream::Context,
    parts: &[(PartitionKey, String)],
    key: &ed25519_dalek::SigningKey,
) -> anyhow::Result<()> {
    for (p, uri) in parts {
        atp::admin::add_producer(
            js,
            p.tenant.as_str(),
            p.source.as_str(),
            uri,
            Some(("bench-1", key.verifying_key().to_bytes())),
        )
        .await?;
    }
    Ok(())
}

/// Runs ingest, projector and integrity as a child process at a fixed rate and measures, per
/// record, ledger commit → the first signed checkpoint covering it; beside it, raw JetStream
/// publish → ack at the same rate.
async fn checkpoint_lag(
    js: &async_nats::jetstream::Context,
    nats: &NatsServer,
    db: &str,
    pool: &sqlx::PgPool,
    rate: u64,
    secs: u64,
    partitions_n: usize,
) -> anyhow::Result<integrity::Lag> {
    let key = atp::keys::generate();
    let parts = partitions(partitions_n);
    register(js, &parts, &key).await?;

    // Raw baseline: the same bytes at the same rate, straight to a plain stream.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW_RATE".into(),
        subjects: vec!["bench.rate.>".into()],
        ..Default::default()
    })
    .await?;
    let raw_n = rate * secs.min(5);
    let raw_subjects: Vec<String> = parts
        .iter()
        .map(|(p, _)| format!("bench.rate.{}.{}", p.tenant, p.source))
        .collect();
    let mut raw_ack = Histogram::<u64>::new(3)?;
    publish_at_rate(
        js,
        &raw_subjects,
        sign_events(&parts, raw_n, &key, "rawrate"),
        rate,
        None,
        Some(&mut raw_ack),
    )
    .await?;

    let keys_dir = tempfile::tempdir()?;
    let exe = atp_exe()?;
    let mut child = tokio::process::Command::new(&exe)
        .args(["serve", "--roles", "ingest,projector,integrity"])
        .env("ATP_NATS_URL", nats.url())
        .env("ATP_DATABASE_URL", db)
        .env("ATP_CHECKPOINT_KEYS_DIR", keys_dir.path())
        .env(
            "ATP_LOG",
            std::env::var("ATP_BENCH_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .kill_on_drop(true)
        .spawn()
        .context("starting atp serve")?;
    let sub = js
        .client()
        .subscribe(subjects::all(subjects::CHECKPOINT))
        .await?;
    let (stop, until) = tokio::sync::oneshot::channel();
    let collector = tokio::spawn(integrity::collect_checkpoints(sub, until));

    let n = rate * secs;
    let events = sign_events(&parts, n, &key, "lag");
    let ingress: Vec<String> = parts.iter().map(|(p, _)| subjects::ingress(p)).collect();
    let achieved = publish_at_rate(js, &ingress, events, rate, None, None).await?;

    let deadline = Instant::now() + integrity::DRAIN;
    loop {
        let (records, signed): (i64, Option<i64>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM records), (SELECT sum(checkpoint_size)::int8 FROM merkle_logs)",
        )
        .fetch_one(pool)
        .await?;
        if records as u64 >= n && signed.unwrap_or(0) as u64 >= n {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "checkpoints did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Checkpoints reach subscribers before they are stored: the last one has arrived.
    let _ = stop.send(());
    let arrivals = collector.await?;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let rows: Vec<(String, String, i64, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT tenant_id, source_id, chain_index, committed_at FROM records")
            .fetch_all(pool)
            .await?;
    let committed = rows
        .into_iter()
        .filter_map(|(t, s, i, at)| {
            let p = PartitionKey::from_ids(&t, &s).ok()?;
            Some((p, i as u64, at))
        })
        .collect::<Vec<_>>();
    let lag = integrity::lag_of(&arrivals, &committed)?;
    Ok(integrity::Lag {
        lag,
        raw_ack,
        achieved,
        checkpoints: arrivals.values().map(|v| v.len() as u64).sum(),
    })
}

struct Latency {
    ledger_p50: f64,
    ledger_p99: f64,
    query_p50: f64,
    query_p99: f64,
    achieved: f64,
}

async fn latency_run(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::PgPool,
    parts: &[(PartitionKey, String)],
    key: &ed25519_dalek::SigningKey,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Latency> {
    let n = rate * secs;
    let events = sign_events(parts, n, key, "lat");
    let sent: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    // Observe records as JetStream stores them on the ledger (an ordered consumer: what any
    // downstream reader would see), and projection commits via the projector's NOTIFY.
    let ledger = js.get_stream(streams::LEDGER).await?;
    let start_seq = {
        let mut l = ledger.clone();
        l.info().await?.state.last_sequence + 1
    };
    let consumer = ledger
        .create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: start_seq,
            },
            ..Default::default()
        })
        .await?;
    let mut stored = consumer.messages().await?;
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener
        .listen(atp_store::projection::NOTIFY_CHANNEL)
        .await?;

    let observer = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut ledger_h = Histogram::<u64>::new(3)?;
            let mut query_h = Histogram::<u64>::new(3)?;
            let mut by_seq: Vec<(u64, Instant)> = Vec::new();
            let mut seen = 0u64;
            while seen < n {
                tokio::select! {
                    m = stored.next() => {
                        let Some(m) = m else { break };
                        let m = m.map_err(|e| anyhow::anyhow!(e.to_string()))?;
                        let id = m.headers.as_ref().and_then(|h| h.get(headers::EVENT_ID)).map(|v| v.as_str().to_owned()).unwrap_or_default();
                        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
                        if let Some(t) = sent.lock().await.get(&id).copied() {
                            ledger_h.record(t.elapsed().as_micros() as u64)?;
                            by_seq.push((seq, t));
                        }
                    }
                    note = listener.recv() => {
                        let note = note?;
                        if let Some(seq) = note.payload().strip_prefix("records:").and_then(|s| s.parse::<u64>().ok()) {
                            let now = Instant::now();
                            by_seq.retain(|(s, t)| {
                                if *s <= seq {
                                    let _ = query_h.record(now.duration_since(*t).as_micros() as u64);
                                    seen += 1;
                                    false
                                } else {
                                    true
                                }
                            });
                        }
                    }
                }
            }
            Ok::<_, anyhow::Error>((ledger_h, query_h))
        })
    };

    let subjects: Vec<String> = parts.iter().map(|(p, _)| subjects::ingress(p)).collect();
    let achieved = publish_at_rate(js, &subjects, events, rate, Some(&sent), None).await?;
    let (lh, qh) = tokio::time::timeout(Duration::from_secs(300), observer)
        .await
        .context("latency observer timed out")???;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(Latency {
        ledger_p50: ms(&lh, 0.5),
        ledger_p99: ms(&lh, 0.99),
        query_p50: ms(&qh, 0.5),
        query_p99: ms(&qh, 0.99),
        achieved,
    })
}

/// The machine's CPUs, for the figures' heading (0 if it cannot say).
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
