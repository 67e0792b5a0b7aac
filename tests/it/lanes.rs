//! Ingest's lanes (ADR 0017), on the real servers: one tenant's backlog does not hold up
//! another's events, what ingest has handled leaves ATP_INGRESS, a full partition refuses new
//! publishes instead of discarding acknowledged ones, and a tenant registered while ingest runs
//! is handled from its first event.

use atp_core::Reason;
use atp_nats::{streams, subjects};
use atp_tests::*;
use serde_json::{Map, Value};

const OTHER: &str = "globex";
const OTHER_URI: &str = "https://crm.globex.example/core";

/// A signed event of `uri`'s source.
fn event_of(stack: &Stack, uri: &str, id: &str) -> Map<String, Value> {
    let mut e = atp_core::producer::example_event(id, uri, chrono::Utc::now(), "alice", "UPDATE");
    atp_core::producer::sign_structured(&mut e, &stack.producer, KEY_ID).unwrap();
    e
}

/// `n` signed events of the stack's own tenant, published without waiting for each answer.
async fn publish_backlog(stack: &Stack, p: &atp_core::PartitionKey, n: u64) {
    let mut acks = Vec::new();
    for i in 0..n {
        let body = serde_json::to_vec(&stack.sign(stack.event(&format!("flood-{i}")))).unwrap();
        acks.push(
            stack
                .js
                .publish(subjects::ingress(p), body.into())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

async fn ingress_messages(stack: &Stack) -> u64 {
    let s = stack.js.get_stream(streams::INGRESS).await.unwrap();
    s.get_info().await.unwrap().state.messages
}

/// 3,000 events of one tenant wait in ingress ahead of one event of another. With one FIFO the
/// latter would be recorded only after all of them; in its own lane it is recorded while the
/// backlog is still being worked through.
#[tokio::test]
async fn a_tenants_backlog_does_not_hold_up_another_tenants_event() {
    const BACKLOG: u64 = 3_000;
    let stack = Stack::start().await;
    stack.register_tenant(OTHER, OTHER_URI, KEY_ID).await;
    let (busy, quiet) = (partition(TENANT, SOURCE), partition(OTHER, SOURCE));
    publish_backlog(&stack, &busy, BACKLOG).await;
    stack
        .publish(&quiet, &event_of(&stack, OTHER_URI, "quiet-1"))
        .await;

    let running = stack.serve(ingest_only()).await;
    eventually("the quiet tenant's event recorded", || async {
        (stack.ledger_len(&quiet).await == 1).then_some(())
    })
    .await;
    let busy_done = stack.ledger_len(&busy).await;
    assert!(
        busy_done < BACKLOG,
        "the quiet tenant's event waited for the whole backlog ({busy_done} of {BACKLOG} done)"
    );
    eventually("the backlog recorded", || async {
        (stack.ledger_len(&busy).await == BACKLOG).then_some(())
    })
    .await;
    assert_eq!(stack.verify_chain(&busy).await, BACKLOG);
    running.stop().await;
}

/// The same for the read model: 3,000 records of one tenant wait on the ledger ahead of one of
/// another's. In its own projector lane the latter is queryable while the backlog is still being
/// projected, and once everything is, the projection's watermark covers the whole ledger.
#[tokio::test]
async fn a_tenants_projection_backlog_does_not_hold_up_another_tenants_row() {
    const BACKLOG: u64 = 3_000;
    let stack = Stack::start().await;
    stack.register_tenant(OTHER, OTHER_URI, KEY_ID).await;
    let (busy, quiet) = (partition(TENANT, SOURCE), partition(OTHER, SOURCE));
    let ingest = stack.serve(ingest_only()).await;
    publish_backlog(&stack, &busy, BACKLOG).await;
    eventually("the backlog recorded", || async {
        (stack.ledger_len(&busy).await == BACKLOG).then_some(())
    })
    .await;
    stack
        .publish(&quiet, &event_of(&stack, OTHER_URI, "quiet-1"))
        .await;
    eventually("the quiet tenant's record on the ledger", || async {
        (stack.ledger_len(&quiet).await == 1).then_some(())
    })
    .await;
    ingest.stop().await;

    let projector = stack.serve(roles("projector")).await;
    eventually("the quiet tenant's row queryable", || async {
        (stack.projected_records(OTHER).await == 1).then_some(())
    })
    .await;
    let busy_done = stack.projected_records(TENANT).await;
    assert!(
        (busy_done as u64) < BACKLOG,
        "the quiet tenant's row waited for the whole backlog ({busy_done} of {BACKLOG} projected)"
    );
    let ledger_end = stack
        .js
        .get_stream(streams::LEDGER)
        .await
        .unwrap()
        .get_info()
        .await
        .unwrap()
        .state
        .last_sequence;
    eventually("the watermark at the ledger's end", || async {
        let wm = atp_store::projection::watermark(&stack.pool, atp_store::projection::RECORDS)
            .await
            .unwrap()?;
        (wm.stream_seq >= ledger_end).then_some(())
    })
    .await;
    assert_eq!(stack.projected_records(TENANT).await as u64, BACKLOG);
    projector.stop().await;
}

/// Records and rejections alike: once handled, a submission leaves ATP_INGRESS, so what the
/// stream holds is what waits (and its limits budget the backlog, not history).
#[tokio::test]
async fn handled_submissions_are_trimmed_from_ingress() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    let running = stack.serve(ingest_only()).await;
    for i in 0..5 {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("t-{i}"))))
            .await;
    }
    stack.publish_raw(&p, b"not json".to_vec(), None).await;
    eventually("five records and a rejection", || async {
        (stack.ledger_len(&p).await == 5 && stack.rejected_len(&p).await == 1).then_some(())
    })
    .await;
    eventually("ingress emptied of what was handled", || async {
        (ingress_messages(&stack).await == 0).then_some(())
    })
    .await;
    running.stop().await;
}

/// A partition whose backlog is full has new publishes refused by JetStream (the producer sees
/// the error and retries); every acknowledged one is kept, another partition publishes on, and
/// once ingest has handled the backlog the partition takes publishes again.
#[tokio::test]
async fn a_full_partition_refuses_new_publishes_and_loses_nothing() {
    let stack = Stack::start().await;
    stack.register_tenant(OTHER, OTHER_URI, KEY_ID).await;
    let (full, other) = (partition(TENANT, SOURCE), partition(OTHER, SOURCE));
    let mut ingress = stack.js.get_stream(streams::INGRESS).await.unwrap();
    let mut config = ingress.info().await.unwrap().config.clone();
    config.max_messages_per_subject = 3;
    stack.js.update_stream(config).await.unwrap();

    let body = |id: &str| serde_json::to_vec(&stack.sign(stack.event(id))).unwrap();
    for i in 0..3 {
        stack
            .publish_raw(&full, body(&format!("f-{i}")), None)
            .await;
    }
    let refused = stack
        .js
        .publish(subjects::ingress(&full), body("f-3").into())
        .await
        .unwrap()
        .await;
    assert!(refused.is_err(), "a fourth message was taken: {refused:?}");
    stack
        .publish(&other, &event_of(&stack, OTHER_URI, "o-1"))
        .await;

    // Ingest runs as it would in `atp serve` (which would first refuse the drifted stream).
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let ingest = atp_runtime::ingest::Ingest::new(stack.js.clone(), Default::default())
        .await
        .unwrap();
    let task = tokio::spawn(ingest.run(shutdown));
    eventually("every acknowledged message recorded", || async {
        (stack.ledger_len(&full).await == 3 && stack.ledger_len(&other).await == 1).then_some(())
    })
    .await;
    eventually("the trimmed partition taking publishes again", || async {
        let ack = stack
            .js
            .publish(subjects::ingress(&full), body("f-3").into())
            .await
            .ok()?;
        ack.await.ok()
    })
    .await;
    eventually("the fourth recorded", || async {
        (stack.ledger_len(&full).await == 4).then_some(())
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap().unwrap();
}

/// A tenant that registers while ingest runs: its events are handled from the first (by the
/// rest lane, which also refuses a tenant nobody registered), then in a lane of its own, with
/// one chain across the hand-over.
#[tokio::test]
async fn a_tenant_registered_while_ingest_runs_gets_a_lane_and_one_chain() {
    let stack = Stack::start().await;
    let late = partition(OTHER, SOURCE);
    let running = stack.serve(ingest_only()).await;

    stack
        .publish(&late, &event_of(&stack, OTHER_URI, "before"))
        .await;
    eventually("the unregistered tenant refused", || async {
        (stack.rejected_len(&late).await == 1).then_some(())
    })
    .await;
    assert_eq!(
        stack.rejections(&late).await[0].reason,
        Reason::UnknownSource
    );

    stack.register_tenant(OTHER, OTHER_URI, KEY_ID).await;
    stack
        .publish(&late, &event_of(&stack, OTHER_URI, "first"))
        .await;
    eventually("the first event recorded", || async {
        (stack.ledger_len(&late).await == 1).then_some(())
    })
    .await;
    let kv = stack
        .js
        .get_key_value(streams::INGEST_BUCKET)
        .await
        .unwrap();
    let key = atp_nats::progress::lane_key("0-of-1", OTHER);
    eventually("the tenant's lane opened", || async {
        kv.get(&key).await.ok().flatten().map(|_| ())
    })
    .await;
    stack
        .publish(&late, &event_of(&stack, OTHER_URI, "second"))
        .await;
    eventually("the second event recorded", || async {
        (stack.ledger_len(&late).await == 2).then_some(())
    })
    .await;
    assert_eq!(stack.verify_chain(&late).await, 2);
    assert_eq!(stack.rejected_len(&late).await, 1);
    running.stop().await;
}
