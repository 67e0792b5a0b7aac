//! Faults survived (short form): the NATS server and the PostgreSQL server each restarted in
//! the middle of a stream of submissions. Afterwards nothing acknowledged is lost, nothing is
//! doubled, the chain and its checkpoints verify, the read model catches up; the recovery time
//! is printed.

use std::time::{Duration, Instant};

use atp_core::role::Roles;
use atp_tests::*;

const N: usize = 400;

/// Publishes events `from..to`, retrying each until JetStream acknowledges it (as a producer
/// does); returns how long the longest wait for an acknowledgement was.
async fn publish_acknowledged(stack: &Stack, from: usize, to: usize) -> Duration {
    let p = partition(TENANT, SOURCE);
    let mut longest = Duration::ZERO;
    for i in from..to {
        let ev = stack.sign(stack.event(&format!("fault-{i}")));
        let body = serde_json::to_vec(&ev).unwrap();
        let took = stack
            .publish_until_acked(&p, &format!("{p}:fault-{i}"), &body)
            .await;
        longest = longest.max(took);
    }
    longest
}

/// Waits until every event is a record exactly once, projected and under a checkpoint;
/// `started` is when the server came back.
async fn all_settled(stack: &Stack, started: Instant, what: &str) {
    let p = partition(TENANT, SOURCE);
    eventually("every event recorded", || async {
        (stack.ledger_len(&p).await == N as u64).then_some(())
    })
    .await;
    let recorded = started.elapsed();
    eventually("every record projected", || async {
        (stack.projected_records(TENANT).await == N as i64).then_some(())
    })
    .await;
    let projected = started.elapsed();
    eventually("every record checkpointed", || async {
        (stack.checkpoint_size(&p).await == N as u64).then_some(())
    })
    .await;
    eprintln!(
        "{what}: recorded after {:.2} s, projected after {:.2} s",
        recorded.as_secs_f64(),
        projected.as_secs_f64()
    );
    assert_eq!(stack.verify_chain(&p).await, N as u64, "no gap, no double");
    eprintln!(
        "{what}: all {N} records recorded, projected and checkpointed {:.2} s after the server was back",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn a_nats_server_restart_mid_stream_loses_and_doubles_nothing() {
    let mut stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    publish_acknowledged(&stack, 0, N / 2).await;
    let p = partition(TENANT, SOURCE);
    eventually("ingest under way", || async {
        (stack.ledger_len(&p).await > 0).then_some(())
    })
    .await;
    let t = Instant::now();
    stack.nats.restart().await.expect("nats-server restarts");
    eprintln!(
        "nats restart: the server was down and back in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let waited = publish_acknowledged(&stack, N / 2, N).await;
    eprintln!("nats restart: the longest wait for an acknowledgement was {waited:?}");
    all_settled(&stack, started, "nats restart").await;
    running.stop().await;
}

#[tokio::test]
async fn a_postgresql_restart_mid_stream_loses_and_doubles_nothing() {
    let mut stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    publish_acknowledged(&stack, 0, N / 2).await;
    eventually("projection under way", || async {
        (stack.projected_records(TENANT).await > 0).then_some(())
    })
    .await;
    let t = Instant::now();
    stack.pg.restart().await.expect("PostgreSQL restarts");
    eprintln!(
        "postgresql restart: the server was down and back in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    publish_acknowledged(&stack, N / 2, N).await;
    all_settled(&stack, started, "postgresql restart").await;
    running.stop().await;
}
