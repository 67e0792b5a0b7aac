//! `ops/bin/bench isolation`: one tenant floods a gateway (its own process) with queries while
//! another queries at a steady rate. How far does the quiet tenant's p99 move? Measured with the
//! per-tenant rate limits on (the default) and, in the same run, with them lifted; the flood comes
//! from its own process: connections in a closed loop at the machine's normal priority, the
//! same niced, and (against the limits) a niced open loop at a fixed rate. Beside the raw
//! baseline of the same query straight on PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_gateway::Permission;
use atp_runtime::signer::FileKeyStore;
use hdrhistogram::Histogram;
use tokio::io::AsyncBufReadExt as _;

#[derive(clap::Args, Debug, Clone)]
pub struct IsolationBench {
    /// Records seeded per tenant.
    #[arg(long, default_value_t = 50_000)]
    pub records: u64,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// The quiet tenant's steady query rate (per second).
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// Concurrent connections of the flooding tenant, each sending as fast as it is answered.
    #[arg(long, default_value_t = 32)]
    pub flooders: usize,
    /// The niceness of the flooding process in the second flood of each configuration: on a
    /// shared loopback machine it stands for a flooder whose own CPU is not the gateway's.
    #[arg(long, default_value_t = 19)]
    pub flood_nice: u8,
    /// The rate of the open-loop flood (requests per second, whatever the answers), run
    /// against the limits.
    #[arg(long, default_value_t = 5000)]
    pub flood_rate: u64,
    /// Flood NATS directly instead of the gateway: the quiet tenant's ingress → queryable
    /// latency beside another tenant's signed events, then garbage (`bench::ingress_isolation`).
    #[arg(long)]
    pub ingress: bool,
    /// With `--ingress`: the flooding tenant's signed events a second. 2,000 is a third of what
    /// ingest sustains on two cores (docs/benchmarks.md), a flood it can keep up with.
    #[arg(long, default_value_t = 2000)]
    pub nats_flood_rate: u64,
    /// With `--ingress`: the flooding tenant's garbage messages (4 KiB, not JSON) a second.
    #[arg(long, default_value_t = 5000)]
    pub garbage_rate: u64,
    /// With `--ingress`: ingest's per-tenant rate (`ATP_INGEST_TENANT_RATE`) for the run;
    /// unset, none.
    #[arg(long)]
    pub tenant_rate: Option<std::num::NonZeroU32>,
}

/// The flooding client, as a process of its own.
#[derive(clap::Args, Debug, Clone)]
pub struct Flood {
    /// The URL the flood asks.
    #[arg(long)]
    pub url: String,
    /// Connections each asking again as soon as they are answered (closed loop)…
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// …or this many requests a second whatever the answers (open loop).
    #[arg(long)]
    pub rate: Option<u64>,
    /// How long the flood lasts, from its first answer.
    #[arg(long)]
    pub secs: u64,
}

/// How the flooding tenant floods.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Connections each asking again as soon as they are answered.
    Closed { connections: usize, nice: u8 },
    /// A fixed rate of requests, whatever the answers.
    Open { rate: u64, nice: u8 },
}

impl Shape {
    fn nice(self) -> u8 {
        match self {
            Shape::Closed { nice, .. } | Shape::Open { nice, .. } => nice,
        }
    }

    fn label(self) -> String {
        let priority = match self.nice() {
            0 => "at the same priority".to_owned(),
            n => format!("at nice {n}"),
        };
        match self {
            Shape::Closed { connections, .. } => {
                format!("{connections} connections in a loop {priority}")
            }
            Shape::Open { rate, .. } => format!("{rate}/s open loop {priority}"),
        }
    }
}

/// Requests an open-loop flood keeps in flight at most; past it, ticks are skipped (counted).
const OPEN_IN_FLIGHT: usize = 4096;

/// What the flooding process reports when it ends.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct FloodCounts {
    ok: u64,
    limited: u64,
    failed: u64,
    /// Open-loop ticks skipped because too many requests were in flight.
    skipped: u64,
    secs: f64,
}

/// The line the flooding process prints once its flood is on.
const FLOODING: &str = "flooding";

const LOG_NAME: &str = "atp.bench";
const QUERY: &str = "/api/v1/audit/records?limit=20";

struct Phase {
    label: String,
    quiet: Histogram<u64>,
    /// The flood beside it, if any.
    flood: Option<FloodCounts>,
}

pub async fn run(b: IsolationBench) -> anyhow::Result<()> {
    let cpus = super::cpus();
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

    let issuer = atp::keys::generate();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    let token = |p: &atp_core::PartitionKey| {
        atp::dev::mint_token(
            &issuer,
            p.tenant.as_str(),
            Permission::Auditor,
            "bench",
            3600,
        )
    };
    let (quiet_token, flood_token) = (token(quiet_p)?, token(flood_p)?);

    let mut phases = Vec::new();
    for (config, limits) in [
        ("limits on (default: 100 queries/s per tenant)", Vec::new()),
        (
            "limits lifted",
            vec!["query=1000000".to_owned(), "append=1000000".to_owned()],
        ),
    ] {
        let lifted = !limits.is_empty();
        let mut gateway = spawn_gateway(&nats.url(), &db, &issuer, &limits, work.path()).await?;
        let base = gateway.base.clone();
        eprintln!("bench: {config}: the quiet tenant alone…");
        phases.push(Phase {
            label: format!("{config}, alone"),
            quiet: quiet(&http, &base, &quiet_token, b.rate, b.secs).await?,
            flood: None,
        });
        let mut shapes = vec![
            Shape::Closed {
                connections: b.flooders,
                nice: 0,
            },
            Shape::Closed {
                connections: b.flooders,
                nice: b.flood_nice,
            },
        ];
        // An open-loop flood of real queries past the gateway's capacity measures only a
        // queue growing; it is run against the limits.
        if !lifted {
            shapes.push(Shape::Open {
                rate: b.flood_rate,
                nice: b.flood_nice,
            });
        }
        for shape in shapes {
            let label = format!("{config}, flood of {}", shape.label());
            eprintln!("bench: {label}…");
            let (quiet, flood) =
                flooded(&http, &base, &quiet_token, &flood_token, &b, shape).await?;
            phases.push(Phase {
                label,
                quiet,
                flood: Some(flood),
            });
        }
        gateway.child.kill().await?;
    }

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "\n## Tenant isolation under a flood — {date}, {cpus} CPUs\n\n`ops/bin/bench isolation --records {} --secs {} --rate {} --flooders {} --flood-nice {} --flood-rate {}` \
         (gateway and flooding client each in their own process; nats-server and PostgreSQL, fsync on, on loopback)\n",
        b.records, b.secs, b.rate, b.flooders, b.flood_nice, b.flood_rate
    );
    println!(
        "| quiet tenant's `GET {QUERY}`, {}/s | p50 ms | p99 ms | p99 vs alone | flooder answered 200 /s | flooder answered 429 /s | flooder failed or skipped /s |",
        b.rate
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    println!(
        "| raw PostgreSQL, same query, alone | {:.2} | {:.2} | | | | |",
        ms(&raw, 0.5),
        ms(&raw, 0.99)
    );
    let mut alone_p99 = 0.0;
    for phase in &phases {
        let p99 = ms(&phase.quiet, 0.99);
        let (vs, ok, limited, other) = match &phase.flood {
            None => {
                alone_p99 = p99;
                (
                    "1.0×".to_owned(),
                    String::new(),
                    String::new(),
                    String::new(),
                )
            }
            Some(f) => (
                format!("{:.1}×", p99 / f64::max(alone_p99, 0.001)),
                format!("{:.0}", f.ok as f64 / f.secs),
                format!("{:.0}", f.limited as f64 / f.secs),
                format!("{:.0}", (f.failed + f.skipped) as f64 / f.secs),
            ),
        };
        println!(
            "| gateway, {} | {:.2} | {p99:.2} | {vs} | {ok} | {limited} | {other} |",
            phase.label,
            ms(&phase.quiet, 0.5),
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
    atp::keys::write_private(&key, &atp::keys::generate())?;
    let mut cmd = tokio::process::Command::new(super::atp_exe()?);
    cmd.args(["serve", "--roles", "gateway"])
        .env("ATP_NATS_URL", nats_url)
        .env("ATP_DATABASE_URL", db)
        .env("ATP_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "ATP_TOKEN_KEYS",
            format!("{}={}", atp::dev::ISSUER_KID, atp::keys::public_b64(issuer)),
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
pub(crate) async fn paced<F, Fut>(rate: u64, secs: u64, op: F) -> anyhow::Result<Histogram<u64>>
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

/// The quiet tenant's query, `rate` times a second for `secs` seconds.
async fn quiet(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    rate: u64,
    secs: u64,
) -> anyhow::Result<Histogram<u64>> {
    paced(rate, secs, || {
        let req = http.get(format!("{base}{QUERY}")).bearer_auth(token).send();
        async move { req.await.is_ok_and(|r| r.status().is_success()) }
    })
    .await
}

/// The quiet tenant's steady queries while `atp-bench flood` runs as its own process, shaped
/// and niced as `shape` says.
async fn flooded(
    http: &reqwest::Client,
    base: &str,
    quiet_token: &str,
    flood_token: &str,
    b: &IsolationBench,
    shape: Shape,
) -> anyhow::Result<(Histogram<u64>, FloodCounts)> {
    let exe = std::env::current_exe()?;
    let nice = shape.nice();
    let mut cmd = if nice == 0 {
        tokio::process::Command::new(&exe)
    } else {
        let mut niced = tokio::process::Command::new("nice");
        niced.args(["-n", &nice.to_string()]).arg(&exe);
        niced
    };
    // The flood outlasts the quiet tenant's phase, which starts once the flood is on.
    cmd.args(["flood", "--url", &format!("{base}{QUERY}")])
        .args(["--secs", &(b.secs + 2).to_string()]);
    match shape {
        Shape::Closed { connections, .. } => cmd.args(["--connections", &connections.to_string()]),
        Shape::Open { rate, .. } => cmd.args(["--rate", &rate.to_string()]),
    };
    cmd.env("ATP_BENCH_TOKEN", flood_token)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting the flooding process")?;
    let stdout = child
        .stdout
        .take()
        .context("the flooding process has no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("the flood did not start in 30 s")??;
    anyhow::ensure!(
        first.as_deref() == Some(FLOODING),
        "the flooding process said {first:?}"
    );
    let quiet = quiet(http, base, quiet_token, b.rate, b.secs).await?;
    let last = tokio::time::timeout(Duration::from_secs(b.secs + 60), lines.next_line())
        .await
        .context("the flood did not end")??
        .context("the flooding process ended without its counts")?;
    let counts: FloodCounts = serde_json::from_str(&last)?;
    anyhow::ensure!(child.wait().await?.success(), "the flooding process failed");
    Ok((quiet, counts))
}

/// `atp-bench flood`: a closed-loop flood of `connections` or an open-loop one at `rate`, for
/// `secs` seconds from the first answer.
pub async fn flood(f: Flood) -> anyhow::Result<()> {
    let token = std::env::var("ATP_BENCH_TOKEN").context("ATP_BENCH_TOKEN is not set")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(f.rate.map_or(f.connections, |_| OPEN_IN_FLIGHT))
        .build()?;
    let asker = Asker {
        http,
        url: f.url.clone(),
        token,
        counts: Arc::default(),
        on: tokio::sync::watch::channel(None).0,
        secs: Duration::from_secs(f.secs),
    };
    let mut on_rx = asker.on.subscribe();
    let flooding = {
        let asker = asker.clone();
        tokio::spawn(async move {
            match f.rate {
                Some(rate) => asker.open_loop(rate).await,
                None => asker.closed_loop(f.connections).await,
            }
        })
    };
    let on = loop {
        if let Some(on) = *on_rx.borrow_and_update() {
            break on;
        }
        on_rx.changed().await?;
    };
    println!("{FLOODING}");
    flooding.await?;
    let [ok, limited, failed, skipped] = asker.counts.as_ref();
    let counts = FloodCounts {
        ok: ok.load(Ordering::Relaxed),
        limited: limited.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        skipped: skipped.load(Ordering::Relaxed),
        secs: on.elapsed().as_secs_f64(),
    };
    println!("{}", serde_json::to_string(&counts)?);
    Ok(())
}

/// One flooding request at a time, counted: ok, limited, failed, skipped.
#[derive(Clone)]
struct Asker {
    http: reqwest::Client,
    url: String,
    token: String,
    counts: Arc<[AtomicU64; 4]>,
    /// When the first answer came.
    on: tokio::sync::watch::Sender<Option<Instant>>,
    secs: Duration,
}

impl Asker {
    async fn ask(&self) {
        let which = match self
            .http
            .get(&self.url)
            .bearer_auth(&self.token)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => 0,
            Ok(r) if r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => 1,
            _ => 2,
        };
        self.counts[which].fetch_add(1, Ordering::Relaxed);
        self.on.send_if_modified(|on| {
            let first = on.is_none();
            if first {
                *on = Some(Instant::now());
            }
            first
        });
    }

    fn over(&self) -> bool {
        self.on.borrow().is_some_and(|on| on.elapsed() >= self.secs)
    }

    async fn closed_loop(&self, connections: usize) {
        let mut flood = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let asker = self.clone();
            flood.spawn(async move {
                while !asker.over() {
                    asker.ask().await;
                }
            });
        }
        while flood.join_next().await.is_some() {}
    }

    async fn open_loop(&self, rate: u64) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(OPEN_IN_FLIGHT));
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut flood = tokio::task::JoinSet::new();
        while !self.over() {
            tick.tick().await;
            while flood.try_join_next().is_some() {}
            let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                self.counts[3].fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let asker = self.clone();
            flood.spawn(async move {
                asker.ask().await;
                drop(permit);
            });
        }
        while flood.join_next().await.is_some() {}
    }
}
