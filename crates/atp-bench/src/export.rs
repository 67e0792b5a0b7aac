//! `ops/bin/bench export`: packaging a 1M-record selection into a bundle, time to first byte of its
//! download through the gateway, and offline verification — each beside its raw baseline
//! (reading the same rows from PostgreSQL, storing the same bytes in the Object Store,
//! SHA-256 over the same file), measured in the same run on the same servers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atp_core::chain;
use atp_core::checkpoint::{Checkpoint, origin};
use atp_core::merkle;
use atp_core::note::format_signature_line;
use atp_core::tiles::TileLog;
use atp_delivery::cold::ColdStore;
use atp_devstack::NatsServer;
use atp_runtime::export::package::Packager;
use atp_runtime::signer::{CheckpointSigner, FileKeyStore};
use atp_store::exports::{self, ExportRequest, Outcome};
use atp_store::integrity::{self as store, LogState, LogUpdate, StoredCheckpoint};
use atp_store::projection::{self, RecordRow};
use atp_store::query::Selection;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(clap::Args, Debug, Clone)]
pub struct ExportBench {
    /// Records in the selection.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
}

const LOG_NAME: &str = "atp.bench";

pub async fn run(b: ExportBench) -> anyhow::Result<()> {
    let cpus = super::cpus();
    let date = chrono::Utc::now().format("%Y-%m-%d");
    let super::Servers {
        nats,
        pg: _pg,
        db,
        js,
        pool,
    } = super::Servers::start().await?;
    let work = tempfile::tempdir()?;
    let keys = Arc::new(FileKeyStore::open_or_init(
        &work.path().join("keys"),
        LOG_NAME,
        chrono::Utc::now(),
    )?);

    let p = super::partitions(1).remove(0).0;
    let record_bytes = seed(&pool, &keys, &p, b.records).await?;

    // Baseline: the same rows read from PostgreSQL in the same keyset pages, nothing else.
    eprintln!("bench: raw read of the selection…");
    let t = Instant::now();
    let mut next = 0u64;
    let mut read = 0u64;
    let selection = exports::ExportSelection::default();
    loop {
        let rows = exports::selected(&pool, &p, &selection, next, b.records, 2000).await?;
        let Some(last) = rows.last() else { break };
        next = last.chain_index as u64 + 1;
        read += rows.len() as u64;
    }
    let raw_read = read as f64 / t.elapsed().as_secs_f64();

    // Packaging, as the exporter does it, sampling the process's resident memory meanwhile.
    eprintln!("bench: packaging {} records…", b.records);
    let req = ExportRequest {
        export_id: ulid::Ulid::generate().to_string(),
        tenant_id: p.tenant.to_string(),
        requested_by: "bench".to_owned(),
        requested_at: chrono::Utc::now(),
        selection: Selection::default(),
        format: "tar".to_owned(),
        edition: Default::default(),
        readable: None,
        subject_keys: None,
    };
    exports::record_request(&pool, &req).await?;
    let row = exports::start(&pool, &req.export_id)
        .await?
        .context("the export row")?;
    let packager = Packager {
        pool: pool.clone(),
        signer: keys.clone(),
        spool: work.path().join("spool"),
        coverage_wait: Duration::from_secs(5),
        max_records_per_second: None,
        keys: None,
    };
    std::fs::create_dir_all(&packager.spool)?;
    let rss_before = rss_kib();
    let peak = Arc::new(AtomicU64::new(rss_before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let done = AtomicU64::new(0);
    let t = Instant::now();
    let packaged = packager
        .package(&row, &done)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let package_secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    sampler.await?;
    let peak_rss = peak.load(Ordering::Relaxed);
    anyhow::ensure!(
        packaged.record_count == b.records,
        "the bundle lacks records"
    );

    eprintln!("bench: storing the bundle in the Object Store…");
    let cold = ColdStore::open(&js, None).await?;
    let key = atp_delivery::object_key(p.tenant.as_str(), &req.export_id);
    let t = Instant::now();
    let (_, bundle_sha256) = cold.put(&key, packaged.reader().await?).await?;
    let store_secs = t.elapsed().as_secs_f64();
    exports::finish(
        &pool,
        &req.export_id,
        &Outcome::Completed(exports::Completed {
            object_key: key.clone(),
            bytes: packaged.bytes,
            bundle_sha256,
            manifest_sha256: packaged.manifest_sha256.clone(),
            record_count: packaged.record_count,
            disclosed_kids: packaged.disclosed_kids.clone(),
        }),
        false,
    )
    .await?;
    // Baseline: a plain Object Store put of a file of the same size.
    let plain = work.path().join("plain.bin");
    {
        let mut f = tokio::fs::File::create(&plain).await?;
        let block = vec![0x5au8; 1 << 20];
        let mut left = packaged.bytes;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).await?;
            left -= n as u64;
        }
        f.flush().await?;
    }
    let t = Instant::now();
    cold.put_file("bench/plain.bin", &plain).await?;
    let plain_secs = t.elapsed().as_secs_f64();
    std::fs::remove_file(&plain)?;

    // Time to first byte of the download through the gateway, and of the raw store read.
    let (ttfb, raw_ttfb) = ttfb(&nats, &db, &cold, &key, &p, &req.export_id).await?;

    // Offline verification of the bundle, beside bare SHA-256 of the same file.
    eprintln!("bench: verifying the bundle offline…");
    // Verification reads a file, as `atp verify` does: assemble the pieces into one.
    let path = work.path().join("bundle.tar");
    {
        let mut out = tokio::fs::File::create(&path).await?;
        tokio::io::copy(&mut packaged.reader().await?, &mut out).await?;
        out.flush().await?;
    }
    packaged.remove();
    let (verify_secs, sha_secs, ok) = tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut f = std::fs::File::open(&path)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut f, &mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        std::hint::black_box(h.finalize());
        let sha = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let report = atp_bundle::verify::verify(
            || std::fs::File::open(&path),
            &atp_bundle::verify::Trust::default(),
        )?;
        Ok::<_, std::io::Error>((t.elapsed().as_secs_f64(), sha, report.ok))
    })
    .await??;
    anyhow::ensure!(ok, "the benchmark bundle does not verify");

    let n = b.records as f64;
    let mb = packaged.bytes as f64 / 1e6;
    println!("## atp-bench export — {date}\n");
    println!(
        "Machine: {cpus} cores. Command: `ops/bin/bench export --records {}`. One partition of ~{record_bytes} B records, \
         PostgreSQL 15 with fsync on, nats-server with file storage. Bundle: {:.0} MB.\n",
        b.records, mb
    );
    println!("| measure | ATP | raw baseline, same run |\n|---|---|---|");
    println!(
        "| packaging {} records (read, prove, check, write, sign) | {:.0} records/s ({package_secs:.1} s) | reading the same rows from PostgreSQL: {raw_read:.0} rows/s |",
        b.records,
        n / package_secs
    );
    println!(
        "| storing the bundle in the Object Store | {:.0} MB/s ({store_secs:.1} s) | plain put of the same size: {:.0} MB/s |",
        mb / store_secs,
        mb / plain_secs
    );
    println!(
        "| exporter resident memory while packaging | peak {:.0} MiB (+{:.0} MiB over before) | bundle size {:.0} MiB |",
        peak_rss as f64 / 1024.0,
        (peak_rss.saturating_sub(rss_before)) as f64 / 1024.0,
        packaged.bytes as f64 / 1_048_576.0
    );
    println!(
        "| time to first byte of the download (gateway, loopback, median of 9) | {:.1} ms | first chunk from the Object Store: {:.1} ms |",
        ttfb * 1000.0,
        raw_ttfb * 1000.0
    );
    println!(
        "| offline verification (`atp verify`, one core) | {:.0} records/s ({verify_secs:.1} s) | SHA-256 of the file (`sha256sum`): {:.0} MB/s |",
        n / verify_secs,
        mb / sha_secs
    );
    Ok(())
}

/// Resident set size of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Writes `n` records of one partition as the projector and integrity role would: the read
/// model, the tiles and log state, and one signed checkpoint of the whole log. Returns the mean
/// record size.
pub(super) async fn seed(
    pool: &sqlx::PgPool,
    keys: &FileKeyStore,
    p: &atp_core::PartitionKey,
    n: u64,
) -> anyhow::Result<usize> {
    eprintln!("bench: seeding {n} records, their tiles and a checkpoint…");
    let chunk = 20_000u64;
    let mut prev = chain::genesis(p);
    let mut log = TileLog::new();
    let mut total = 0usize;
    let mut start = 0u64;
    while start < n {
        let count = chunk.min(n - start);
        let (recs, last) = super::integrity::seal_chain(p, start, count, prev);
        prev = last;
        let mut rows = Vec::with_capacity(recs.len());
        for (i, r) in recs.iter().enumerate() {
            total += r.len();
            log.push(merkle::leaf_hash(r));
            rows.push(RecordRow::from_ledger(
                r,
                start + i as u64 + 1,
                None,
                &atp_store::projection::NoClearance,
            )?);
        }
        let mut conn = pool.acquire().await?;
        for batch in rows.chunks(1000) {
            projection::insert_records(&mut conn, projection::Target::Live, batch).await?;
        }
        let mut tx = pool.begin().await?;
        store::write_logs(
            &mut tx,
            &[LogUpdate {
                partition: p.clone(),
                state: LogState {
                    tree_size: log.size(),
                    root: log.root(),
                    chain_hash: prev,
                    ledger_seq: log.size(),
                    checkpoint_size: 0,
                    halted: None,
                },
                tiles: log.take_writes(),
            }],
        )
        .await?;
        tx.commit().await?;
        start += count;
    }
    let ring = keys.keyring().await?;
    let body = Checkpoint {
        origin: origin(LOG_NAME, p),
        size: n,
        root: log.root(),
    }
    .body();
    let sig = keys.sign(&ring.active.kid, body.as_bytes()).await?;
    let kid = u32::from_str_radix(&ring.active.kid, 16)?;
    let note = format!("{body}\n{}", format_signature_line(LOG_NAME, kid, &sig));
    store::insert_checkpoints(
        pool,
        &[StoredCheckpoint {
            tenant_id: p.tenant.to_string(),
            source_id: p.source.to_string(),
            tree_size: i64::try_from(n)?,
            root: log.root().0.to_vec(),
            key_id: ring.active.kid.clone(),
            note,
            issued_at: chrono::Utc::now(),
        }],
    )
    .await?;
    sqlx::query("VACUUM ANALYZE records").execute(pool).await?;
    Ok(total / n.max(1) as usize)
}

/// Starts a gateway, asks it for the bundle over loopback and times the first body byte; and
/// the first chunk straight from the store.
async fn ttfb(
    nats: &NatsServer,
    db: &str,
    cold: &ColdStore,
    key: &str,
    p: &atp_core::PartitionKey,
    export_id: &str,
) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut chunks = cold.read(key, 0..1).await?;
    futures::StreamExt::next(&mut chunks).await;
    let raw = t.elapsed().as_secs_f64();

    let issuer = atp::keys::generate();
    let running = super::gateway(&nats.url(), db, &issuer, &[]).await?;
    let addr = running.gateway_addr.context("no gateway")?;
    let token = atp::dev::mint_token(
        &issuer,
        p.tenant.as_str(),
        atp_gateway::Permission::Auditor,
        "bench",
        600,
    )?;
    let mut times = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "GET /api/v1/exports/{export_id}/download HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf).await?;
            anyhow::ensure!(n > 0, "the gateway closed before the body");
            got.extend_from_slice(&buf[..n]);
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                anyhow::ensure!(
                    got.starts_with(b"HTTP/1.1 200"),
                    "download refused: {}",
                    String::from_utf8_lossy(&got[..end])
                );
                if got.len() > end + 4 {
                    break;
                }
            }
        }
        times.push(t.elapsed().as_secs_f64());
    }
    running.stop().await;
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], raw))
}
