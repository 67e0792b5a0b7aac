//! `ops/bin/bench integrity`: inclusion-proof generation at 10M leaves, checkpoint lag at the
//! spine's ingest rate, offline chain verification — each beside its raw baseline, measured in
//! the same run on the same servers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_core::merkle::{self, ProofPlan};
use atp_core::names::PartitionKey;
use atp_core::policy::PolicyStamp;
use atp_core::record::{Record, SCHEMA_VERSION};
use atp_core::tiles::TileLog;
use atp_core::walk::ChainWalk;
use atp_core::{Digest, chain};
use atp_store::integrity::{self as store, LogState, LogUpdate};
use futures::StreamExt;
use hdrhistogram::Histogram;
use sha2::Digest as _;

#[derive(clap::Args, Debug, Clone)]
pub struct IntegrityBench {
    /// Leaves of the one partition whose proofs are timed.
    #[arg(long, default_value_t = 10_000_000)]
    pub leaves: u64,
    /// Inclusion proofs timed (random leaves).
    #[arg(long, default_value_t = 5_000)]
    pub proofs: u64,
    /// Records walked by the offline chain verification.
    #[arg(long, default_value_t = 500_000)]
    pub chain_records: u64,
    /// Publish rate of the checkpoint-lag run (events/s).
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
    /// Seconds of the checkpoint-lag run.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Partitions the lag run spreads over.
    #[arg(long, default_value_t = 64)]
    pub partitions: usize,
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn run(b: IntegrityBench) -> anyhow::Result<()> {
    let cpus = super::cpus();
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let (walk_rate, sha_rate, record_bytes) = chain_walk(b.chain_records)?;

    let super::Servers {
        nats,
        pg: _pg,
        db,
        js,
        pool,
    } = super::Servers::start().await?;

    let proofs = proof_latency(&pool, b.leaves, b.proofs).await?;
    let lag = super::checkpoint_lag(&js, &nats, &db, &pool, b.rate, b.secs, b.partitions).await?;

    println!("## atp-bench integrity — {date}\n");
    println!(
        "Machine: {cpus} cores. Command: `ops/bin/bench integrity --leaves {} --proofs {} --chain-records {} --rate {} --secs {} --partitions {}`. \
         PostgreSQL 15 with fsync on; nats-server with file storage.\n",
        b.leaves, b.proofs, b.chain_records, b.rate, b.secs, b.partitions
    );
    println!("| measure | ATP | raw baseline, same run |\n|---|---|---|");
    println!(
        "| inclusion proof at {} leaves (tile read + assemble + verify), p50 / p95 / p99 | {:.2} / {:.2} / {:.2} ms | primary-key read of one tile row: {:.2} / {:.2} / {:.2} ms |",
        b.leaves,
        ms(&proofs.atp, 0.5),
        ms(&proofs.atp, 0.95),
        ms(&proofs.atp, 0.99),
        ms(&proofs.raw, 0.5),
        ms(&proofs.raw, 0.95),
        ms(&proofs.raw, 0.99)
    );
    println!(
        "| building the {}-leaf log (hash + write tiles) | {:.1} s ({:.0} leaves/s) | — |",
        b.leaves,
        proofs.build.as_secs_f64(),
        b.leaves as f64 / proofs.build.as_secs_f64()
    );
    println!(
        "| checkpoint lag (ledger commit → signed checkpoint covering it) at {:.0} events/s, p50 / p99 / max | {:.0} / {:.0} / {:.0} ms | JetStream publish → ack at the same rate, p50 / p99: {:.1} / {:.1} ms |",
        lag.achieved,
        ms(&lag.lag, 0.5),
        ms(&lag.lag, 0.99),
        lag.lag.max() as f64 / 1000.0,
        ms(&lag.raw_ack, 0.5),
        ms(&lag.raw_ack, 0.99)
    );
    println!(
        "| checkpoints issued in the lag run | {} over {} partitions | — |",
        lag.checkpoints, b.partitions
    );
    println!(
        "| offline chain verification (`ChainWalk`: parse head, digest, link, leaf; one core, ~{record_bytes} B records) | {walk_rate:.0} records/s | SHA-256 of the same bytes (what `sha256sum` does): {sha_rate:.0} records/s |"
    );
    Ok(())
}

/// Synthetic ~1 KiB records of one chain (the size of the spine's bench events).
fn records(n: u64) -> (PartitionKey, Vec<Vec<u8>>) {
    let p = super::partitions(1).remove(0).0;
    let (out, _) = seal_chain(&p, 0, n, chain::genesis(&p));
    (p, out)
}

/// Records `start..start + n` of `p`'s chain, the first linking to `prev`; also the chain hash
/// of the last, to continue from.
pub(super) fn seal_chain(
    p: &PartitionKey,
    start: u64,
    n: u64,
    mut prev: Digest,
) -> (Vec<Vec<u8>>, Digest) {
    let event = serde_json::json!({
        "specversion": "1.0", "id": "", "source": "https://bench.example/app", "type": "com.example.bench",
        "time": "2026-11-23T10:00:00Z", "datacontenttype": "application/json",
        "data": {"actor": {"id": "bench-user", "type": "user"}, "action": "UPDATE",
                 "resource": {"type": "Order", "id": "4711"}, "outcome": "success",
                 "attributes": {"channel": "web", "note": "x".repeat(400)}},
        "dssematerial": "A".repeat(300), "keyid": "bench-1"
    });
    let out = (start..start + n)
        .map(|i| {
            let mut ev = event.clone();
            ev["id"] = serde_json::json!(format!("ev-{i}"));
            let r = Record {
                schema_version: SCHEMA_VERSION.to_owned(),
                record_id: ulid::Ulid::generate().to_string(),
                tenant_id: p.tenant.to_string(),
                source_id: p.source.to_string(),
                chain_index: i,
                prev_hash: prev,
                received_at: "2026-11-23T10:00:00.000000Z".to_owned(),
                committed_at: "2026-11-23T10:00:00.000100Z".to_owned(),
                policy: PolicyStamp::default(),
                producer: atp_core::event::ProducerStamp {
                    key_id: Some("bench-1".to_owned()),
                    auth: "dsse-ed25519".to_owned(),
                },
                event: ev,
            };
            let sealed = r.seal().map(|s| (s.link.chain_hash, s.bytes));
            let (h, bytes) = sealed.unwrap_or((prev, Vec::new()));
            prev = h;
            bytes
        })
        .collect();
    (out, prev)
}

/// Records/s of a full chain walk, and of bare SHA-256 over the same bytes.
fn chain_walk(n: u64) -> anyhow::Result<(f64, f64, usize)> {
    eprintln!("bench: sealing {n} records for the chain walk…");
    let (p, recs) = records(n);
    let avg = recs.iter().map(Vec::len).sum::<usize>() / recs.len().max(1);
    let t = Instant::now();
    let mut sink = 0u8;
    for r in &recs {
        sink ^= sha2::Sha256::digest(r)[0];
    }
    let sha = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut walk = ChainWalk::new(p);
    let mut ok = 0u64;
    for r in &recs {
        if walk.push(r).is_ok() {
            ok += 1;
        }
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(ok == n, "the synthetic chain does not verify");
    std::hint::black_box((sink, walk.root()));
    Ok((rate, sha, avg))
}

struct Proofs {
    atp: Histogram<u64>,
    raw: Histogram<u64>,
    build: Duration,
}

/// Builds one partition's log of `leaves` leaves in PostgreSQL, then times proofs of random
/// leaves against its full size, and the baseline: one primary-key read of a tile row.
async fn proof_latency(pool: &sqlx::PgPool, leaves: u64, n: u64) -> anyhow::Result<Proofs> {
    let p = super::partitions(1).remove(0).0;
    eprintln!("bench: building a {leaves}-leaf Merkle log in PostgreSQL…");
    let t = Instant::now();
    let mut log = TileLog::new();
    let chunk = 256 * 512;
    let mut i = 0u64;
    while i < leaves {
        let end = (i + chunk).min(leaves);
        for k in i..end {
            log.push(merkle::leaf_hash(&k.to_le_bytes()));
        }
        i = end;
        let update = LogUpdate {
            partition: p.clone(),
            state: LogState {
                tree_size: log.size(),
                root: log.root(),
                chain_hash: Digest([0; 32]),
                ledger_seq: log.size(),
                checkpoint_size: 0,
                halted: None,
            },
            tiles: log.take_writes(),
        };
        let mut tx = pool.begin().await?;
        store::write_logs(&mut tx, &[update]).await?;
        tx.commit().await?;
    }
    let build = t.elapsed();
    sqlx::query("VACUUM ANALYZE merkle_tiles")
        .execute(pool)
        .await?;
    let root = log.root();

    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let mut atp = Histogram::<u64>::new(3)?;
    let mut raw = Histogram::<u64>::new(3)?;
    let mut conn = pool.acquire().await?;
    for _ in 0..n {
        let index = next() % leaves;
        let t = Instant::now();
        let plan = ProofPlan::inclusion(index, leaves)?;
        let proof = store::prove(&mut conn, &p, &plan).await?;
        merkle::verify_inclusion(
            index,
            leaves,
            &merkle::leaf_hash(&index.to_le_bytes()),
            &proof,
            &root,
        )
        .context("a generated proof does not verify")?;
        atp.record(t.elapsed().as_micros() as u64)?;

        let idx = i64::try_from(index / 256).unwrap_or(0);
        let t = Instant::now();
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT hashes FROM merkle_tiles WHERE tenant_id = $1 AND source_id = $2 AND level = 0 AND idx = $3",
        )
        .bind(p.tenant.as_str())
        .bind(p.source.as_str())
        .bind(idx)
        .fetch_optional(&mut *conn)
        .await?;
        raw.record(t.elapsed().as_micros() as u64)?;
        anyhow::ensure!(row.is_some(), "tile {idx} missing");
    }
    Ok(Proofs { atp, raw, build })
}

pub(super) struct Lag {
    pub lag: Histogram<u64>,
    pub raw_ack: Histogram<u64>,
    pub achieved: f64,
    pub checkpoints: u64,
}

/// Per record: the first checkpoint arrival covering it, minus its committedAt.
pub(super) fn lag_of(
    arrivals: &HashMap<PartitionKey, Vec<(u64, chrono::DateTime<chrono::Utc>)>>,
    committed: &[(PartitionKey, u64, chrono::DateTime<chrono::Utc>)],
) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new(3)?;
    for (p, index, at) in committed {
        let Some(cps) = arrivals.get(p) else {
            anyhow::bail!("no checkpoint for {p}");
        };
        let first = cps
            .iter()
            .find(|(size, _)| *size > *index)
            .with_context(|| format!("no checkpoint covers {p} #{index}"))?;
        h.record((first.1 - *at).num_microseconds().unwrap_or(0).max(0) as u64)?;
    }
    Ok(h)
}

/// Collects checkpoint arrivals from a core subscription.
pub(super) async fn collect_checkpoints(
    mut sub: async_nats::Subscriber,
    until: tokio::sync::oneshot::Receiver<()>,
) -> HashMap<PartitionKey, Vec<(u64, chrono::DateTime<chrono::Utc>)>> {
    let mut out: HashMap<PartitionKey, Vec<(u64, chrono::DateTime<chrono::Utc>)>> = HashMap::new();
    let mut until = until;
    loop {
        tokio::select! {
            m = sub.next() => {
                let Some(m) = m else { break };
                record_arrival(&mut out, &m);
            }
            _ = &mut until => break,
        }
    }
    // Checkpoints stored are already published; drain what is still in flight to us.
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        record_arrival(&mut out, &m);
    }
    out
}

fn record_arrival(
    out: &mut HashMap<PartitionKey, Vec<(u64, chrono::DateTime<chrono::Utc>)>>,
    m: &async_nats::Message,
) {
    let now = chrono::Utc::now();
    let size = m
        .headers
        .as_ref()
        .and_then(|h| h.get(atp_nats::integrity::TREE_SIZE))
        .and_then(|v| v.as_str().parse::<u64>().ok());
    let part = atp_nats::subjects::partition_of(atp_nats::subjects::CHECKPOINT, &m.subject);
    if let (Some(size), Some(part)) = (size, part) {
        out.entry(part).or_default().push((size, now));
    }
}

/// Seconds to wait for the checkpoint run to drain.
pub(super) const DRAIN: Duration = Duration::from_secs(120);
