//! A JetStream cluster of three nodes on loopback, every stream replicated three times (R3),
//! two ATP instances sharing the partitions (ingest and projector, shards 0/2 and 1/2), and the
//! ledger's leader SIGKILLed mid-ingest. Afterwards: every acknowledged submission is a record
//! exactly once, every chain and checkpoint verifies, the read model is exact, and the
//! recovery time is printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use atp_core::role::Roles;
use atp_runtime::shard::Shard;
use atp_tests::*;

/// Partitions of the test tenant: `acme.billing` hashes to shard 0, the others to shard 1.
const SOURCES: [&str; 4] = ["crm", "billing", "hr", "web"];
const PER_SOURCE: usize = 150;

fn uri(source: &str) -> String {
    format!("https://{source}.acme.example/core")
}

/// Publishes event `i` of every source, retrying each until the cluster acknowledges it (the
/// same message id each time, as a producer retries); returns the longest wait.
async fn publish_acknowledged(stack: &Stack, range: std::ops::Range<usize>) -> Duration {
    let mut longest = Duration::ZERO;
    for i in range {
        for source in SOURCES {
            let p = partition(TENANT, source);
            let ev = atp_core::producer::example_event(
                &format!("{source}-{i}"),
                &uri(source),
                chrono::Utc::now(),
                "alice",
                "UPDATE",
            );
            let body = serde_json::to_vec(&stack.sign(ev)).unwrap();
            let took = stack
                .publish_until_acked(&p, &format!("{p}:{i}"), &body)
                .await;
            longest = longest.max(took);
        }
    }
    longest
}

/// Records on the ledger per source, or `None` while the cluster cannot answer.
async fn recorded(stack: &Stack) -> Option<BTreeMap<&'static str, u64>> {
    let s = stack.js.get_stream(atp_nats::streams::LEDGER).await.ok()?;
    let mut out = BTreeMap::new();
    for source in SOURCES {
        let p = partition(TENANT, source);
        let n = match s
            .direct_get_last_for_subject(atp_nats::subjects::ledger(&p))
            .await
        {
            Ok(m) => {
                atp_core::record::open(&m.payload, false)
                    .ok()?
                    .record
                    .chain_index
                    + 1
            }
            Err(_) => 0,
        };
        out.insert(source, n);
    }
    Some(out)
}

#[tokio::test]
async fn three_nodes_r3_two_shards_survive_losing_the_ledger_leader_mid_ingest() {
    let mut stack = Stack::start_cluster(3).await;
    assert_eq!(uri(SOURCE), SOURCE_URI, "the harness registered crm");
    for source in SOURCES.into_iter().filter(|s| *s != SOURCE) {
        atp::admin::add_producer(
            &stack.js,
            TENANT,
            source,
            &uri(source),
            Some((KEY_ID, stack.producer.verifying_key().to_bytes())),
        )
        .await
        .unwrap();
    }
    let mut ledger = stack
        .js
        .get_stream(atp_nats::streams::LEDGER)
        .await
        .unwrap();
    let info = ledger.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3, "the ledger is R3");
    let leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();

    // Two instances share the partitions; integrity runs once beside them.
    let shard = |s: &str| {
        let mut cfg = stack.serve_config(Roles::parse("ingest,projector").unwrap());
        cfg.shard = Shard::parse(s).unwrap();
        cfg
    };
    let zero = atp::serve::start(shard("0/2")).await.unwrap();
    let one = atp::serve::start(shard("1/2")).await.unwrap();
    let integrity = stack.serve(Roles::parse("integrity").unwrap()).await;

    publish_acknowledged(&stack, 0..PER_SOURCE / 2).await;
    eventually("ingest under way", || async {
        recorded(&stack)
            .await
            .filter(|r| r.values().all(|n| *n > 0))
    })
    .await;
    let node = stack.nats.cluster().position(&leader).unwrap();
    let killed = Instant::now();
    stack.nats.cluster().node_mut(node).kill().await;
    eprintln!("cluster: SIGKILLed {leader}, the ledger's leader, mid-ingest");
    let waited = publish_acknowledged(&stack, PER_SOURCE / 2..PER_SOURCE).await;
    eprintln!("cluster: the longest wait for an acknowledgement was {waited:?}");
    eventually("every acknowledged event recorded", || async {
        recorded(&stack)
            .await
            .filter(|r| r.values().all(|n| *n == PER_SOURCE as u64))
    })
    .await;
    let recovered = killed.elapsed();
    let total = (PER_SOURCE * SOURCES.len()) as i64;
    eventually("every record projected", || async {
        (stack.projected_records(TENANT).await == total).then_some(())
    })
    .await;
    eventually("every partition checkpointed", || async {
        let mut all = true;
        for source in SOURCES {
            all &= stack.checkpoint_size(&partition(TENANT, source)).await == PER_SOURCE as u64;
        }
        all.then_some(())
    })
    .await;
    eprintln!(
        "cluster: after losing the leader, all {total} records recorded {:.2} s and projected and checkpointed {:.2} s after the kill",
        recovered.as_secs_f64(),
        killed.elapsed().as_secs_f64()
    );
    let info = ledger.info().await.unwrap();
    let new_leader = info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    assert_ne!(new_leader, leader, "another node leads the ledger");

    for source in SOURCES {
        let p = partition(TENANT, source);
        assert_eq!(
            stack.verify_chain(&p).await,
            PER_SOURCE as u64,
            "{p}: every event exactly once, no gap"
        );
        assert_eq!(stack.rejected_len(&p).await, 0);
    }
    // The union of the two projectors is exact: one row per record, each partition's rows
    // written by its owner only (each shard advanced its own watermark).
    let per_source: Vec<(String, i64)> = sqlx::query_as(
        "SELECT source_id, count(DISTINCT chain_index) FROM records WHERE tenant_id = $1 \
         GROUP BY source_id ORDER BY source_id",
    )
    .bind(TENANT)
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    let mut want: Vec<(String, i64)> = SOURCES
        .iter()
        .map(|s| ((*s).to_owned(), PER_SOURCE as i64))
        .collect();
    want.sort();
    assert_eq!(per_source, want);
    let shards: Vec<String> = sqlx::query_scalar(
        "SELECT projection FROM projection_watermarks WHERE projection LIKE 'records@%' \
         ORDER BY projection",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap();
    assert_eq!(shards, ["records@0/2", "records@1/2"]);
    // Both ingest instances did their share: billing on shard 0, the other three on shard 1
    // (a batch whose acknowledgement the dead leader swallowed may count twice; the ledger,
    // checked above, holds it once).
    let accepted =
        |r: &atp::serve::Running| r.ingest_totals.as_ref().unwrap().lock().unwrap().accepted;
    assert!(accepted(&zero) >= PER_SOURCE as u64, "{}", accepted(&zero));
    assert!(
        accepted(&one) >= 3 * PER_SOURCE as u64,
        "{}",
        accepted(&one)
    );

    for r in [zero, one, integrity] {
        r.stop().await;
    }
}
