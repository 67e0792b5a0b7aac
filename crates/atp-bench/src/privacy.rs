//! `atp-bench privacy`: what privacy costs where a user waits. An erasure of one data subject
//! with many records, end to end through the gateway and the lifecycle role; and a 100-record
//! query page with redaction (records with sealed values, read by an auditor) beside the same
//! page of records that seal nothing, and beside the raw PostgreSQL query.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_core::role::Permission;
use hdrhistogram::Histogram;

#[derive(clap::Args, Debug, Clone)]
pub struct PrivacyBench {
    /// Records of the one subject erased (and of the tenant without a policy).
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Query pages timed per tenant.
    #[arg(long, default_value_t = 400)]
    pub pages: u64,
}

const QUERY: &str = "/api/v1/audit/records?limit=100";

pub async fn run(b: PrivacyBench) -> anyhow::Result<()> {
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
    let sealed = super::partitions_of("priv", 1);
    let plain = super::partitions_of("plain", 1);
    super::register(&js, &sealed, &key).await?;
    super::register(&js, &plain, &key).await?;
    let doc = atp_core::policy::parse(
        br#"{"fields": [
            {"path": "/actor/id", "classification": "personal"},
            {"path": "/attributes/personal_0", "classification": "personal"},
            {"path": "/attributes/personal_1", "classification": "personal"},
            {"path": "/attributes/personal_2", "classification": "sensitive"}
        ]}"#,
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let kv = atp_nats::policy::bucket(&js).await?;
    atp_nats::policy::replace(&kv, &sealed[0].0.tenant, doc).await?;

    let work = tempfile::tempdir()?;
    let issuer = atp::keys::generate();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(super::atp_exe()?)
        .args(["serve", "--roles", "all"])
        .env("ATP_NATS_URL", nats.url())
        .env("ATP_DATABASE_URL", &db)
        .env("ATP_LISTEN", format!("127.0.0.1:{port}"))
        .env(
            "ATP_TOKEN_KEYS",
            format!(
                "{}={}",
                atp::dev::ISSUER_KID,
                atp::keys::public_b64(&issuer)
            ),
        )
        .env("ATP_TENANT_KEYS_DIR", work.path().join("tenant-keys"))
        .env(
            "ATP_CHECKPOINT_KEYS_DIR",
            work.path().join("checkpoint-keys"),
        )
        .env("ATP_EXPORT_SPOOL", work.path().join("exports"))
        // The second scrub waits for every process's key cache (60 s in production); here it is
        // timed on its own, so the erasure's own work is what the total shows.
        .env("ATP_ERASURE_RESCRUB_MS", "0")
        .env("ATP_RATE_LIMITS", "query=1000000,append=1000000")
        .env("ATP_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .kill_on_drop(true)
        .spawn()
        .context("starting atp serve")?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "atp serve did not start in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One subject's records in the sealing tenant, the same shape in the plain one.
    eprintln!(
        "bench: {} records of one subject, and as many without a policy…",
        b.records
    );
    for (parts, prefix) in [(&sealed, "big"), (&plain, "plain")] {
        // One data subject for every record.
        let events =
            super::sign_events_as(parts, b.records, &key, prefix, 3, |_| "u-big".to_owned());
        let ingress = parts
            .iter()
            .map(|(p, _)| atp_nats::subjects::ingress(p))
            .collect();
        super::publish_all(&js, ingress, events, 8, 256).await?;
    }
    let want = 2 * b.records as i64;
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM records WHERE source_id <> 'atp-admin'")
                .fetch_one(&pool)
                .await?;
        if n >= want {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "records not projected in 30 min");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Query pages: raw PostgreSQL, plain tenant, sealing tenant (redacted for an auditor).
    eprintln!("bench: {} query pages each…", b.pages);
    let mut raw = Histogram::<u64>::new(3)?;
    for _ in 0..b.pages {
        let t = Instant::now();
        let _: Vec<(Vec<u8>,)> = sqlx::query_as(
            "SELECT record FROM records WHERE tenant_id = $1 \
             ORDER BY occurred_at DESC, record_id DESC LIMIT 101",
        )
        .bind(plain[0].0.tenant.as_str())
        .fetch_all(&pool)
        .await?;
        raw.record(t.elapsed().as_micros() as u64)?;
    }
    let mut pages = Vec::new();
    for (label, tenant) in [
        ("records that seal nothing", plain[0].0.tenant.as_str()),
        (
            "records with 3 sealed values and a sealed actor, redacted for an auditor",
            sealed[0].0.tenant.as_str(),
        ),
    ] {
        let token = atp::dev::mint_token(&issuer, tenant, Permission::Auditor, "bench", 3600)?;
        let mut h = Histogram::<u64>::new(3)?;
        for _ in 0..b.pages {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{QUERY}"))
                .bearer_auth(&token)
                .send()
                .await?;
            anyhow::ensure!(r.status().is_success(), "query answered {}", r.status());
            let _ = r.bytes().await?;
            h.record(t.elapsed().as_micros() as u64)?;
        }
        pages.push((label, h));
    }

    // The erasure, end to end.
    eprintln!("bench: erasing the subject of {} records…", b.records);
    let privacy = atp::dev::mint_token(
        &issuer,
        sealed[0].0.tenant.as_str(),
        Permission::Privacy,
        "bench",
        3600,
    )?;
    let t0 = Instant::now();
    let asked: serde_json::Value = serde_json::from_slice(
        &http
            .post(format!("{base}/api/v1/privacy/subjects/u-big/erasure"))
            .bearer_auth(&privacy)
            .send()
            .await?
            .bytes()
            .await?,
    )?;
    let id = asked["requestId"]
        .as_str()
        .context("no request id")?
        .to_owned();
    let mut reached: Vec<(String, Duration)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1800);
    let last = loop {
        let r: serde_json::Value = serde_json::from_slice(
            &http
                .get(format!("{base}/api/v1/privacy/requests/{id}"))
                .bearer_auth(&privacy)
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        let state = r["state"].as_str().unwrap_or_default().to_owned();
        if reached.last().is_none_or(|(s, _)| *s != state) {
            reached.push((state.clone(), t0.elapsed()));
        }
        if state == "done" || state == "blocked" || state == "failed" {
            break r;
        }
        anyhow::ensure!(Instant::now() < deadline, "erasure not done in 30 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = child.start_kill();

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!("\n## atp-bench privacy — {date}, {cpus} CPUs\n");
    println!(
        "Command: `ops/bin/bench privacy --records {} --pages {}`. One `atp serve --roles all` process; nats-server and PostgreSQL (fsync on) on loopback.\n",
        b.records, b.pages
    );
    println!("| `GET {QUERY}` as an auditor | p50 ms | p95 ms | p99 ms |\n|---|---:|---:|---:|");
    println!(
        "| raw PostgreSQL, the page's query | {:.2} | {:.2} | {:.2} |",
        ms(&raw, 0.5),
        ms(&raw, 0.95),
        ms(&raw, 0.99)
    );
    for (label, h) in &pages {
        println!(
            "| gateway, {label} | {:.2} | {:.2} | {:.2} |",
            ms(h, 0.5),
            ms(h, 0.95),
            ms(h, 0.99)
        );
    }
    if let [(_, plain_h), (_, sealed_h)] = &pages[..] {
        println!(
            "\nRedaction adds {:.2} ms at p95 to a 100-record page.\n",
            ms(sealed_h, 0.95) - ms(plain_h, 0.95)
        );
    }
    println!(
        "Erasure of one subject with {} records ({} keys destroyed, {} records scrubbed), time from the request:\n",
        b.records, last["keysDestroyed"], last["recordsAffected"]
    );
    println!("| state reached | after |\n|---|---:|");
    for (state, at) in &reached {
        println!("| {state} | {:.2} s |", at.as_secs_f64());
    }
    println!(
        "\nIn production the second scrub waits for every process's key cache (60 s) before `scrubbed`; the values are unreadable everywhere from `keys_destroyed` on."
    );
    Ok(())
}

/// What sealing and opening one value costs on one core: the field key (HKDF-Expand),
/// XChaCha20-Poly1305 and the value's JSON, as ingest and the projector do it per value.
/// (µs to seal, µs to open)
pub fn value_crypto_micros(n: u32) -> anyhow::Result<(f64, f64)> {
    use atp_core::policy::Classification;
    use atp_core::privacy::{self, BucketKey, Place};
    let bucket = BucketKey::new(
        "default-7y.202612.0123456789abcdef0123456789abcdef",
        &[7; 32],
    );
    let place = Place {
        tenant: "t0",
        source: "s0",
        record_id: "01JD000000000000000000000A",
        path: "/attributes/personal_0",
    };
    let clear = serde_json::Value::from("user-3.0@mail.example");
    let t = Instant::now();
    let mut sealed = None;
    for _ in 0..n {
        let key = privacy::field_key(&bucket, &place);
        sealed = Some(privacy::seal(
            &key,
            &place,
            Classification::Personal,
            &bucket.kid,
            &clear,
            [1; 24],
        )?);
    }
    let seal = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let sealed = sealed.context("no value sealed")?;
    let t = Instant::now();
    for _ in 0..n {
        let key = privacy::field_key(&bucket, &place);
        anyhow::ensure!(privacy::open(&key, &place, &sealed)? == clear);
    }
    let open = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    Ok((seal, open))
}
