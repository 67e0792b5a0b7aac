//! A worker killed with SIGKILL mid-stream, plus producer retries: no duplicate, no gap.

use std::process::Stdio;

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
    let spawn = || {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        tokio::process::Command::new(atp_binary())
            .args(["serve", "--roles", "ingest"])
            .env("ATP_NATS_URL", stack.nats.url())
            .env("ATP_DATABASE_URL", &stack.database_url)
            .env("ATP_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("atp serve starts")
    };
    let mut worker = spawn();
    // Kill it once it has recorded some but not all: mid-stream, between or inside batches.
    let alive = |w: &mut tokio::process::Child| {
        if let Ok(Some(status)) = w.try_wait() {
            panic!(
                "the worker exited ({status}): {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
    };
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
