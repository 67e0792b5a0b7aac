//! A worker killed with SIGKILL mid-stream, plus producer retries: no duplicate, no gap.

use atp_tests::*;

#[tokio::test]
async fn sigkill_mid_batch_and_producer_retries_lose_and_double_nothing() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    const N: u64 = 3000;
    let events: Vec<_> = (0..N)
        .map(|i| stack.sign(stack.event(&format!("k-{i}"))))
        .collect();
    for e in &events {
        stack.publish(&p, e).await;
    }
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("worker.log");
    let spawn = || stack.spawn_serve("ingest", &[], &log_path);
    let mut worker = spawn();
    // Kill it once it has recorded some but not all: mid-stream, between or inside batches.
    let alive = |w: &mut tokio::process::Child| assert_running(w, &log_path);
    eventually("the worker under way", || {
        alive(&mut worker);
        async { (stack.ledger_len(&p).await > 0).then_some(()) }
    })
    .await;
    worker.start_kill().unwrap(); // SIGKILL
    worker.wait().await.unwrap();
    let at_kill = stack.ledger_len(&p).await;
    assert!(
        at_kill < N,
        "the worker was killed mid-stream ({at_kill} of {N} recorded)"
    );

    // Producers retry everything (new Nats-Msg-Ids, so JetStream's dedupe does not help).
    for (i, e) in events.iter().enumerate().step_by(3) {
        stack
            .publish_raw(
                &p,
                serde_json::to_vec(e).unwrap(),
                Some(&format!("retry-{i}")),
            )
            .await;
    }
    let mut worker = spawn();
    eventually("every event recorded", || {
        alive(&mut worker);
        async { (stack.ledger_len(&p).await >= N).then_some(()) }
    })
    .await;
    // Let it finish reading the retries, then check there is still exactly one of each.
    let marker = stack.sign(stack.event("marker"));
    stack.publish(&p, &marker).await;
    eventually("the marker recorded", || async {
        (stack.ledger_len(&p).await > N).then_some(())
    })
    .await;
    worker.start_kill().unwrap();
    worker.wait().await.unwrap();
    assert_eq!(
        stack.verify_chain(&p).await,
        N + 1,
        "every event exactly once (killed after {at_kill})"
    );
    assert_eq!(stack.rejected_len(&p).await, 0);
}

/// The projector and the integrity worker SIGKILLed mid-burst and restarted: every record is
/// projected exactly once and every checkpoint covers the whole, verified log.
#[tokio::test]
async fn sigkill_of_the_projector_and_integrity_mid_burst_loses_and_doubles_nothing() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    const N: u64 = 2000;
    // Ingest runs in this process throughout; the killed roles run in a child process.
    let ingest = stack
        .serve(atp_core::role::Roles::parse("ingest").unwrap())
        .await;
    let logs = tempfile::tempdir().unwrap();
    let log_path = logs.path().join("roles.log");
    let spawn = || {
        stack.spawn_serve(
            "projector,integrity",
            &[("ATP_CHECKPOINT_EVERY_MS", "100")],
            &log_path,
        )
    };
    for i in 0..N {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("burst-{i}"))))
            .await;
    }
    // Started once the burst is on the ledger side, and killed as soon as it has begun.
    let mut roles = spawn();
    eventually("projection and checkpoints under way", || async {
        (stack.projected_records(TENANT).await > 0 && stack.checkpoint_size(&p).await > 0)
            .then_some(())
    })
    .await;
    roles.start_kill().unwrap(); // SIGKILL
    roles.wait().await.unwrap();
    let at_kill = stack.projected_records(TENANT).await;
    eprintln!("projector and integrity killed with {at_kill} of {N} projected");
    let restarted = std::time::Instant::now();
    let mut roles = spawn();
    eventually("every record projected and checkpointed", || {
        assert_running(&mut roles, &log_path);
        async {
            (stack.projected_records(TENANT).await == N as i64
                && stack.checkpoint_size(&p).await == N)
                .then_some(())
        }
    })
    .await;
    eprintln!(
        "projector and integrity: caught up {:.2} s after the restart",
        restarted.elapsed().as_secs_f64()
    );
    roles.start_kill().unwrap();
    roles.wait().await.unwrap();
    assert_eq!(stack.verify_chain(&p).await, N, "the ledger is whole");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT chain_index) FROM records WHERE tenant_id = $1 AND source_id = $2",
    )
    .bind(TENANT)
    .bind(SOURCE)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert_eq!(rows, N as i64, "one row per record");
    ingest.stop().await;
}
