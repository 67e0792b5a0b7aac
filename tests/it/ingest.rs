//! Producers on NATS: records, rejections with their reason codes, duplicates, sequences, and
//! two ingest workers racing on the same partitions.

use atp_core::Reason;
use atp_core::chain::genesis;
use atp_nats::{headers, subjects};
use atp_tests::*;
use base64::Engine as _;
use serde_json::{Value, json};

#[tokio::test]
async fn a_signed_event_becomes_a_chained_record_and_is_queryable() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("ingest,projector")).await;
    let p = partition(TENANT, SOURCE);
    let first = stack.sign(stack.event("e-1"));
    let second = stack.sign(stack.event("e-2"));
    stack.publish(&p, &first).await;
    stack.publish(&p, &second).await;

    eventually("two records on the ledger", || async {
        (stack.ledger_len(&p).await == 2).then_some(())
    })
    .await;
    let records = stack.ledger(&p).await;
    assert_eq!(records[0].chain_index, 0);
    assert_eq!(records[0].prev_hash, genesis(&p));
    assert_eq!(
        records[0].event,
        Value::Object(first.clone()),
        "the event is kept as received"
    );
    assert_eq!(records[0].producer.key_id.as_deref(), Some(KEY_ID));
    assert_eq!(records[0].producer.auth, "dsse-ed25519");
    assert_eq!(records[0].policy.classification, "internal");
    assert_eq!(records[0].record_id.len(), 26, "a ULID");
    assert_eq!(stack.verify_chain(&p).await, 2);

    eventually("both records projected", || async {
        (stack.projected_records(TENANT).await == 2).then_some(())
    })
    .await;
    let (digest, chain_hash, actor): (Vec<u8>, Vec<u8>, String) = sqlx::query_as(
        "SELECT digest, chain_hash, actor_id FROM records WHERE tenant_id = $1 AND chain_index = 1",
    )
    .bind(TENANT)
    .fetch_one(&stack.pool)
    .await
    .unwrap();
    let ledger = stack
        .read_subject(atp_nats::streams::LEDGER, &subjects::ledger(&p))
        .await;
    let opened = atp_core::record::open(&ledger[1].2, true).unwrap();
    assert_eq!(digest, opened.link.digest.0.to_vec());
    assert_eq!(chain_hash, opened.link.chain_hash.0.to_vec());
    assert_eq!(actor, "alice");
    running.stop().await;
}

#[tokio::test]
async fn binary_mode_events_are_stored_structured_with_their_body() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("ingest")).await;
    let p = partition(TENANT, SOURCE);
    let body = br#"{"actor":{"id":"bob","type":"user"},"action":"LOGIN","resource":{"type":"Session","id":"s-9"}}"#;
    let time = chrono::Utc::now();
    let material = atp_core::dsse::verification_material(&atp_core::dsse::SignedFields {
        id: Some("bin-1"),
        source: Some(SOURCE_URI),
        specversion: Some("1.0"),
        ty: Some("com.acme.login"),
        datacontenttype: Some("application/json"),
        time: Some(time),
        data: body,
        ..Default::default()
    });
    let mut h = async_nats::HeaderMap::new();
    h.insert("content-type", "application/json");
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", "bin-1");
    h.insert("ce-source", SOURCE_URI);
    h.insert("ce-type", "com.acme.login");
    h.insert("ce-time", atp_core::dsse::normalise_time(&time).as_str());
    h.insert(
        "ce-dssematerial",
        atp_core::dsse::sign(&material, &stack.producer, KEY_ID).as_str(),
    );
    stack
        .js
        .publish_with_headers(subjects::ingress(&p), h, body.to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();

    eventually("the binary-mode record", || async {
        (stack.ledger_len(&p).await == 1).then_some(())
    })
    .await;
    let r = &stack.ledger(&p).await[0];
    let stored = r.event["data_base64"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(stored)
            .unwrap(),
        body.to_vec()
    );
    assert_eq!(r.event["id"], json!("bin-1"));
    running.stop().await;
}

/// Publishes one bad submission, then a good marker event; once the marker is on the ledger the
/// bad one has been handled (ingest keeps ingress order), so its outcome can be checked without
/// waiting on an absence. Returns the one rejection, after checking it answers the submission.
async fn rejected_on_nats(
    bad: impl FnOnce(&Stack) -> Vec<u8>,
    reason: Reason,
) -> atp_core::reason::RejectionEnvelope {
    let stack = Stack::start().await;
    let running = stack.serve(roles("ingest")).await;
    let p = partition(TENANT, SOURCE);
    let seq = stack
        .publish_raw(&p, bad(&stack), Some("the-bad-one"))
        .await;
    stack.publish(&p, &stack.sign(stack.event("marker"))).await;
    eventually("the marker recorded", || async {
        (stack.ledger_len(&p).await == 1).then_some(())
    })
    .await;
    let rejections = stack.rejections(&p).await;
    running.stop().await;
    assert_eq!(rejections.len(), 1, "exactly one rejection: {rejections:?}");
    let r = rejections.into_iter().next().unwrap();
    assert_eq!((r.reason, r.ingress_seq), (reason, seq), "{}", r.detail);
    assert_eq!(
        stack.ledger(&p).await[0].event["id"],
        json!("marker"),
        "only the good event became a record"
    );
    r
}

fn signed_bytes(stack: &Stack, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> Vec<u8> {
    let mut e = stack.event("bad-1");
    edit(&mut e);
    serde_json::to_vec(&stack.sign(e)).unwrap()
}

#[tokio::test]
async fn malformed_json_on_nats_is_rejected_and_kept_byte_for_byte() {
    let r = rejected_on_nats(
        |_| b"{\"specversion\": \"1.0\",".to_vec(),
        Reason::Malformed,
    )
    .await;
    assert_eq!(
        r.event_encoding, "base64",
        "what was not JSON is kept byte for byte"
    );
    let kept = base64::engine::general_purpose::STANDARD
        .decode(r.event.as_str().unwrap())
        .unwrap();
    assert_eq!(kept, b"{\"specversion\": \"1.0\",".to_vec());
}

#[tokio::test]
async fn missing_required_attribute_on_nats_is_rejected() {
    rejected_on_nats(
        |s| signed_bytes(s, |e| drop(e.remove("type"))),
        Reason::SchemaValidationFailed,
    )
    .await;
}

#[tokio::test]
async fn unsigned_event_on_nats_is_rejected() {
    rejected_on_nats(
        |s| serde_json::to_vec(&s.event("bad-1")).unwrap(),
        Reason::SignatureMissing,
    )
    .await;
}

#[tokio::test]
async fn tampered_event_on_nats_is_rejected() {
    rejected_on_nats(
        |s| {
            let mut e = s.sign(s.event("bad-1"));
            e["data"]["action"] = json!("DELETE");
            serde_json::to_vec(&e).unwrap()
        },
        Reason::SignatureInvalid,
    )
    .await;
}

#[tokio::test]
async fn unknown_key_on_nats_is_rejected() {
    rejected_on_nats(
        |s| {
            let mut e = s.event("bad-1");
            atp_core::producer::sign_structured(&mut e, &s.producer, "nobody").unwrap();
            serde_json::to_vec(&e).unwrap()
        },
        Reason::UnknownKey,
    )
    .await;
}

#[tokio::test]
async fn tenant_mismatch_on_nats_is_rejected() {
    rejected_on_nats(
        |s| signed_bytes(s, |e| drop(e.insert("tenantid".into(), json!("globex")))),
        Reason::TenantMismatch,
    )
    .await;
}

#[tokio::test]
async fn oversize_event_on_nats_is_rejected() {
    rejected_on_nats(
        |s| {
            signed_bytes(s, |e| {
                e["data"]["attributes"]["blob"] = json!("x".repeat(70 * 1024))
            })
        },
        Reason::TooLarge,
    )
    .await;
}

#[tokio::test]
async fn non_i_json_number_on_nats_is_rejected() {
    rejected_on_nats(
        |s| {
            let text = String::from_utf8(signed_bytes(s, |_| {})).unwrap();
            let bad = text.replacen("\"amount\":12.5", "\"amount\":9007199254740993", 1);
            assert_ne!(bad, text);
            bad.into_bytes()
        },
        Reason::Malformed,
    )
    .await;
}

#[tokio::test]
async fn duplicate_keys_on_nats_are_rejected() {
    rejected_on_nats(
        |s| {
            let text = String::from_utf8(signed_bytes(s, |_| {})).unwrap();
            text.replacen("\"id\":\"bad-1\"", "\"id\":\"bad-1\",\"id\":\"bad-2\"", 1)
                .into_bytes()
        },
        Reason::Malformed,
    )
    .await;
}

#[tokio::test]
async fn source_uri_mismatch_on_nats_is_rejected() {
    rejected_on_nats(
        |s| {
            signed_bytes(s, |e| {
                drop(e.insert("source".into(), json!("https://elsewhere.example")))
            })
        },
        Reason::SourceMismatch,
    )
    .await;
}

/// Revoked keys and unknown sources, and the projection of rejections for the API.
#[tokio::test]
async fn revoked_keys_and_unknown_sources_are_rejected_and_projected() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("ingest,projector")).await;
    let p = partition(TENANT, SOURCE);
    atp::admin::revoke_key(&stack.js, TENANT, SOURCE, KEY_ID)
        .await
        .unwrap();
    let seq = stack
        .publish(&p, &stack.sign(stack.event("after-revoke")))
        .await;
    let r = eventually("the revoked key refused", || async {
        stack
            .rejections(&p)
            .await
            .into_iter()
            .find(|r| r.ingress_seq == seq)
    })
    .await;
    assert_eq!(r.reason, Reason::KeyRevoked);

    let q = partition(TENANT, "unregistered");
    let seq = stack.publish(&q, &stack.sign(stack.event("u-1"))).await;
    let r = eventually("unknown source refused", || async {
        stack.rejections(&q).await.into_iter().next()
    })
    .await;
    assert_eq!((r.reason, r.ingress_seq), (Reason::UnknownSource, seq));
    assert_eq!(stack.ledger_len(&p).await, 0);
    eventually("rejections projected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM rejections")
            .fetch_one(&stack.pool)
            .await
            .unwrap();
        (n == 2).then_some(())
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn duplicates_answer_the_same_record_and_sequences_never_go_back() {
    let stack = Stack::start().await;
    let running = stack.serve(roles("ingest")).await;
    let p = partition(TENANT, SOURCE);
    let with_seq = |id: &str, seq: u64| {
        let mut e = stack.event(id);
        e.insert("sequence".into(), json!(seq.to_string()));
        stack.sign(e)
    };
    let five = with_seq("s-5", 5);
    stack.publish(&p, &five).await;
    stack.publish(&p, &with_seq("s-9", 9)).await;
    // The same event again, past JetStream's own dedupe (another Nats-Msg-Id): a duplicate.
    stack
        .publish_raw(&p, serde_json::to_vec(&five).unwrap(), Some("retry-1"))
        .await;
    // A new event below the high-water mark: a regression.
    let regress = stack.publish(&p, &with_seq("s-7", 7)).await;
    stack.publish(&p, &with_seq("s-10", 10)).await;

    eventually("three records", || async {
        (stack.ledger_len(&p).await == 3).then_some(())
    })
    .await;
    let r = eventually("the regression refused", || async {
        stack.rejections(&p).await.into_iter().next()
    })
    .await;
    assert_eq!(
        (r.reason, r.ingress_seq),
        (Reason::SequenceRegression, regress)
    );
    assert_eq!(
        stack.rejected_len(&p).await,
        1,
        "a duplicate is not a rejection"
    );
    let ids: Vec<String> = stack
        .ledger(&p)
        .await
        .iter()
        .map(|r| r.event["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["s-5", "s-9", "s-10"]);
    let last = stack
        .read_subject(atp_nats::streams::LEDGER, &subjects::ledger(&p))
        .await
        .pop()
        .unwrap();
    assert_eq!(
        last.1.unwrap().get(headers::SEQ_HWM).unwrap().as_str(),
        "10"
    );
    running.stop().await;

    // After a restart the worker knows the partition again from the ledger alone.
    let running = stack.serve(roles("ingest")).await;
    stack
        .publish_raw(&p, serde_json::to_vec(&five).unwrap(), Some("retry-2"))
        .await;
    let marker = stack.sign(stack.event("marker"));
    stack.publish(&p, &marker).await;
    eventually("the marker recorded", || async {
        (stack.ledger_len(&p).await == 4).then_some(())
    })
    .await;
    assert_eq!(
        stack.verify_chain(&p).await,
        4,
        "the old duplicate did not become a record"
    );
    running.stop().await;
}

/// Two ingest workers read the same partitions and race to append: the expected-sequence check
/// makes the loser re-read instead of forking, and nothing is recorded twice or lost.
#[tokio::test]
async fn two_ingest_workers_on_the_same_partitions_never_fork_a_chain() {
    let stack = Stack::start().await;
    for s in ["s0", "s1", "s2", "s3"] {
        atp::admin::add_producer(
            &stack.js,
            TENANT,
            s,
            &format!("{SOURCE_URI}/{s}"),
            Some((KEY_ID, stack.producer.verifying_key().to_bytes())),
        )
        .await
        .unwrap();
    }
    let mut cfg = stack.serve_config(roles("ingest"));
    // Small batches make the two workers interleave often.
    cfg.ingest.batch_max = 7;
    let a = atp::serve::start(cfg).await.unwrap();
    let mut cfg = stack.serve_config(roles("ingest"));
    cfg.ingest.batch_max = 11;
    let b = atp::serve::start(cfg).await.unwrap();

    const PER_PARTITION: u64 = 250;
    for i in 0..PER_PARTITION {
        for s in ["s0", "s1", "s2", "s3"] {
            let p = partition(TENANT, s);
            let mut e = atp_core::producer::example_event(
                &format!("{s}-{i}"),
                &format!("{SOURCE_URI}/{s}"),
                chrono::Utc::now(),
                "alice",
                "UPDATE",
            );
            atp_core::producer::sign_structured(&mut e, &stack.producer, KEY_ID).unwrap();
            stack.publish(&p, &e).await;
        }
    }
    for s in ["s0", "s1", "s2", "s3"] {
        let p = partition(TENANT, s);
        eventually("every event recorded", || async {
            (stack.ledger_len(&p).await >= PER_PARTITION).then_some(())
        })
        .await;
    }
    a.stop().await;
    b.stop().await;
    for s in ["s0", "s1", "s2", "s3"] {
        let p = partition(TENANT, s);
        assert_eq!(
            stack.verify_chain(&p).await,
            PER_PARTITION,
            "{p}: one chain, every event once"
        );
        assert_eq!(stack.rejected_len(&p).await, 0);
    }
}

/// A repeat older than the in-memory window (here: a restarted worker with no warm-up at all)
/// is still recognised, from the read model, and answered by its record.
#[tokio::test]
async fn a_repeat_older_than_the_dedupe_window_still_answers_its_record() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    let serve = || {
        let mut cfg = stack.serve_config(roles("ingest,projector"));
        cfg.ingest.dedupe_window = std::time::Duration::ZERO;
        atp::serve::start(cfg)
    };
    let running = serve().await.unwrap();
    let original = stack.sign(stack.event("once-only"));
    stack.publish(&p, &original).await;
    eventually("the original projected", || async {
        (stack.projected_records(TENANT).await == 1).then_some(())
    })
    .await;
    running.stop().await;

    let running = serve().await.unwrap();
    stack
        .publish_raw(
            &p,
            serde_json::to_vec(&original).unwrap(),
            Some("a-day-later"),
        )
        .await;
    stack.publish(&p, &stack.sign(stack.event("marker"))).await;
    eventually("the marker recorded", || async {
        (stack.ledger_len(&p).await >= 2).then_some(())
    })
    .await;
    running.stop().await;
    let ids: Vec<String> = stack
        .ledger(&p)
        .await
        .iter()
        .map(|r| r.event["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids,
        ["once-only", "marker"],
        "the repeat did not become a second record"
    );
    assert_eq!(
        stack.rejected_len(&p).await,
        0,
        "a duplicate is not a rejection"
    );
}
