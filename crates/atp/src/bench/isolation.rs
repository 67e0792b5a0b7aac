//! `atp bench isolation`: one tenant floods a gateway (its own process) with queries while
//! another queries at a steady rate. How far does the quiet tenant's p99 move? Measured with the per-tenant rate
//! limits on (the default) and, in the same run, with them lifted; beside the raw baseline of
//! the same query straight on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_gateway::Role;
use atp_runtime::signer::FileKeyStore;
use hdrhistogram::Histogram;

#[derive(clap::Args, Debug, Clone)]
pub struct IsolationBench {
    /// Records seeded per tenant.
    #[arg(long, default_value_t = 50_000)]
    pub records: u64,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 15)]
    pub secs: u64,
    /// The quiet tenant's steady query rate (per second).
    #[arg(long, default_value_t = 20)]
    pub rate: u64,
    /// Concurrent connections of the flooding tenant, each sending as fast as it is answered.
    #[arg(long, default_value_t = 32)]
    pub flooders: usize,
}

const LOG_NAME: &str = "atp.bench";
const QUERY: &str = "/api/v1/audit/records?limit=20";

struct Phase {
    quiet: Histogram<u64>,
    flood_ok: u64,
    flood_limited: u64,
}

pub async fn run(b: IsolationBench) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let super::Servers {
        nats,
        pg: _pg,
        db,
        js: _js,
        pool,
    } = super::Servers::start().await?;
    let work = tempfile::tempdir()?;
    let keys = FileKeyStore::open_or_init(&work.path().join("keys"), LOG_NAME, chrono::Utc::now())?;
    let parts = super::partitions(2);
    let (quiet_p, flood_p) = (&parts[0].0, &parts[1].0);
    for (p, _) in &parts {
        super::export::seed(&pool, &keys, p, b.records).await?;
    }

    // Raw baseline: the gateway's query, straight on PostgreSQL, at the same rate.
    eprintln!("bench: raw PostgreSQL query at {}/s…", b.rate);
    let raw = paced(b.rate, b.secs, || {
        let pool = pool.clone();
        let tenant = quiet_p.tenant.to_string();
        async move {
            sqlx::query(
                "SELECT record FROM records WHERE tenant_id = $1 \
                 ORDER BY occurred_at DESC, record_id DESC LIMIT 21",
            )
            .bind(tenant)
            .fetch_all(&pool)
            .await
            .is_ok()
        }
    })
    .await?;

    let issuer = crate::keys::generate();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let token = |p: &atp_core::PartitionKey| {
        crate::dev::mint_token(&issuer, p.tenant.as_str(), Role::Auditor, "bench", 3600)
    };
    let (quiet_token, flood_token) = (token(quiet_p)?, token(flood_p)?);

    let mut results = Vec::new();
    for (label, limits) in [
        ("limits on (default: 100 queries/s per tenant)", Vec::new()),
        (
            "limits lifted",
            vec!["query=1000000".to_owned(), "append=1000000".to_owned()],
        ),
    ] {
        let mut gateway = spawn_gateway(&nats.url(), &db, &issuer, &limits, work.path()).await?;
        let base = gateway.base.clone();
        eprintln!("bench: {label}: the quiet tenant alone…");
        let alone = quiet(&http, &base, &quiet_token, b.rate, b.secs).await?;
        eprintln!(
            "bench: {label}: the quiet tenant beside {} flooding connections…",
            b.flooders
        );
        let flooded = flooded(&http, &base, &quiet_token, &flood_token, &b).await?;
        gateway.child.kill().await?;
        results.push((label, alone, flooded));
    }

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n## Tenant isolation under a flood — {date}, {cpus} CPUs\n\n`atp bench isolation --records {} --secs {} --rate {} --flooders {}` \
         (gateway in this process; nats-server and PostgreSQL, fsync on, on loopback)\n",
        b.records, b.secs, b.rate, b.flooders
    );
    println!(
        "| quiet tenant's `GET {QUERY}` | p50 ms | p99 ms | p99 vs alone | flooder answered 200 | flooder answered 429 |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| raw PostgreSQL, same query, alone | {:.2} | {:.2} | | | |",
        ms(&raw, 0.5),
        ms(&raw, 0.99)
    );
    for (label, alone, flood) in &results {
        println!(
            "| gateway, {label}, alone | {:.2} | {:.2} | 1.0× | | |",
            ms(&alone.quiet, 0.5),
            ms(&alone.quiet, 0.99)
        );
        println!(
            "| gateway, {label}, beside the flood | {:.2} | {:.2} | {:.1}× | {} | {} |",
            ms(&flood.quiet, 0.5),
            ms(&flood.quiet, 0.99),
            ms(&flood.quiet, 0.99) / ms(&alone.quiet, 0.99).max(0.001),
            flood.flood_ok,
            flood.flood_limited
        );
    }
    Ok(())
}

/// `atp serve --roles gateway` as a child process, so the flooding client's CPU is not the
/// gateway's runtime's.
struct ChildGateway {
    child: tokio::process::Child,
    base: String,
}

async fn spawn_gateway(
    nats_url: &str,
    db: &str,
    issuer: &ed25519_dalek::SigningKey,
    limits: &[String],
    work: &std::path::Path,
) -> anyhow::Result<ChildGateway> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let key = work.join("gateway-attestation.pem");
    crate::keys::write_private(&key, &crate::keys::generate())?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.args(["serve", "--roles", "gateway"])
        .env("ATP_NATS_URL", nats_url)
        .env("ATP_DATABASE_URL", db)
        .env("ATP_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "ATP_TOKEN_KEYS",
            format!(
                "{}={}",
                crate::dev::ISSUER_KID,
                crate::keys::public_b64(issuer)
            ),
        )
        .env("ATP_GATEWAY_KEY", &key)
        .env("ATP_LOG", "warn")
        .env_remove("ATP_RATE_LIMITS")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .kill_on_drop(true);
    if !limits.is_empty() {
        cmd.env("ATP_RATE_LIMITS", limits.join(","));
    }
    let child = cmd.spawn().context("starting atp serve --roles gateway")?;
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let http = reqwest::Client::new();
    loop {
        if http
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok(ChildGateway { child, base });
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the gateway did not start in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `op` `rate` times a second for `secs` seconds (open loop: a slow answer does not slow
/// the schedule), and returns the latencies in microseconds.
async fn paced<F, Fut>(rate: u64, secs: u64, op: F) -> anyhow::Result<Histogram<u64>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..rate * secs {
        tick.tick().await;
        let fut = op();
        tasks.spawn(async move {
            let t = Instant::now();
            let ok = fut.await;
            (ok, t.elapsed())
        });
    }
    let mut h = Histogram::<u64>::new(3)?;
    while let Some(r) = tasks.join_next().await {
        let (ok, took) = r?;
        anyhow::ensure!(ok, "a quiet-tenant query failed");
        h.record(took.as_micros() as u64)?;
    }
    Ok(h)
}

async fn quiet(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Phase> {
    let quiet = paced(rate, secs, || {
        let req = http.get(format!("{base}{QUERY}")).bearer_auth(token).send();
        async move { req.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await?;
    Ok(Phase {
        quiet,
        flood_ok: 0,
        flood_limited: 0,
    })
}

async fn flooded(
    http: &reqwest::Client,
    base: &str,
    quiet_token: &str,
    flood_token: &str,
    b: &IsolationBench,
) -> anyhow::Result<Phase> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..b.flooders {
        let (http, url, token) = (
            http.clone(),
            format!("{base}{QUERY}"),
            flood_token.to_owned(),
        );
        let (stop, ok, limited) = (stop.clone(), ok.clone(), limited.clone());
        flood.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).bearer_auth(&token).send().await {
                    Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                        limited.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        });
    }
    let measured = quiet(http, base, quiet_token, b.rate, b.secs).await;
    stop.store(true, Ordering::Relaxed);
    while flood.join_next().await.is_some() {}
    let mut phase = measured?;
    phase.flood_ok = ok.load(Ordering::Relaxed);
    phase.flood_limited = limited.load(Ordering::Relaxed);
    Ok(phase)
}
