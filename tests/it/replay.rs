//! Rebuilding the read model from the ledger gives back exactly the rows it had.

use atp_runtime::replay::{ReplayOptions, replay_records};
use atp_tests::*;

type Row = (String, String, i64, Vec<u8>, Vec<u8>, Vec<u8>, String, i64);

async fn rows(stack: &Stack) -> Vec<Row> {
    sqlx::query_as(
        "SELECT tenant_id, record_id, chain_index, digest, chain_hash, record, actor_id, ledger_seq FROM records \
         ORDER BY tenant_id, source_id, chain_index",
    )
    .fetch_all(&stack.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn dropping_the_read_model_and_replaying_gives_identical_rows() {
    let stack = Stack::start().await;
    atp::admin::add_producer(
        &stack.js,
        "globex",
        "erp",
        "https://erp.globex.example",
        Some((KEY_ID, stack.producer.verifying_key().to_bytes())),
    )
    .await
    .unwrap();
    let running = stack.serve(roles("ingest,projector")).await;
    let (p, q) = (partition(TENANT, SOURCE), partition("globex", "erp"));
    for i in 0..120 {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("a-{i}"))))
            .await;
        let mut e = atp_core::producer::example_event(
            &format!("g-{i}"),
            "https://erp.globex.example",
            chrono::Utc::now(),
            "gina",
            "CREATE",
        );
        atp_core::producer::sign_structured(&mut e, &stack.producer, KEY_ID).unwrap();
        stack.publish(&q, &e).await;
    }
    eventually("everything projected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
        (n == 240).then_some(())
    })
    .await;
    running.stop().await;
    let before = rows(&stack).await;

    sqlx::query("DROP TABLE records")
        .execute(&stack.pool)
        .await
        .unwrap();
    let report = replay_records(
        &stack.js,
        &stack.pool,
        stack.tenant_keys(),
        &ReplayOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 240);
    assert_eq!(
        rows(&stack).await,
        before,
        "a full replay restores every row exactly"
    );

    // One tenant's rows, damaged, are rebuilt while the other tenant's stay untouched.
    sqlx::query("UPDATE records SET actor_id = 'mallory' WHERE tenant_id = 'globex'")
        .execute(&stack.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM records WHERE tenant_id = 'globex' AND chain_index < 10")
        .execute(&stack.pool)
        .await
        .unwrap();
    let report = replay_records(
        &stack.js,
        &stack.pool,
        stack.tenant_keys(),
        &ReplayOptions {
            tenant: Some(atp_core::TenantId::new("globex").unwrap()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 120);
    assert_eq!(rows(&stack).await, before);

    // A range of the ledger, damaged, is rebuilt; rows outside the range are left alone.
    let (lo, hi): (i64, i64) =
        sqlx::query_as("SELECT min(ledger_seq) + 50, min(ledger_seq) + 99 FROM records")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM records WHERE ledger_seq BETWEEN $1 AND $2")
        .bind(lo)
        .bind(hi)
        .execute(&stack.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE records SET actor_id = 'outside' WHERE ledger_seq = $1")
        .bind(hi + 1)
        .execute(&stack.pool)
        .await
        .unwrap();
    let report = replay_records(
        &stack.js,
        &stack.pool,
        stack.tenant_keys(),
        &ReplayOptions {
            tenant: None,
            from_seq: Some(lo as u64),
            to_seq: Some(hi as u64),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.rows, 50, "exactly the range is replayed");
    let after = rows(&stack).await;
    assert_eq!(after.len(), before.len());
    let changed: Vec<&Row> = after
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "only the row outside the range keeps its damage"
    );
    assert_eq!(changed[0].6, "outside");
    sqlx::query("UPDATE records SET actor_id = 'alice' WHERE ledger_seq = $1")
        .bind(hi + 1)
        .execute(&stack.pool)
        .await
        .unwrap();

    // The swapped-in table is under forced row-level security like the one it replaced.
    let forced: bool = sqlx::query_scalar(
        "SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE relname = 'records'",
    )
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    assert!(forced, "the rebuilt records table lost row-level security");

    // Live serving resumes from its watermark and keeps projecting into the swapped table.
    let running = stack.serve(roles("ingest,projector")).await;
    stack.publish(&p, &stack.sign(stack.event("after"))).await;
    eventually("projection continues after the swap", || async {
        (stack.projected_records(TENANT).await == 121).then_some(())
    })
    .await;
    running.stop().await;
}
