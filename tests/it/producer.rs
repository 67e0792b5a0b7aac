//! The Rust SDK (`atp-producer`) against the live stack, as a producer's engineer uses it: its
//! own NATS identity, its own key, events built from plain fields or a `cloudevents-sdk` event,
//! read back from the ledger and their signatures re-verified from the stored records.

use std::time::Duration;

use atp_core::event::{Channel, Submission};
use atp_core::reason::Reason;
use atp_gateway::Permission;
use atp_nats::streams;
use atp_producer::{
    AuditEvent, HttpPublisher, NatsPublisher, Outcome, Producer, PublishError, Retry, Sequencer,
    Signer, Source,
};
use atp_tests::*;
use cloudevents::EventBuilder as _;
use ed25519_dalek::SigningKey;

fn producer(stack: &Stack, sequencer: Option<Sequencer>) -> Producer {
    let source = Source::new(TENANT, SOURCE, SOURCE_URI).unwrap();
    let p = Producer::new(source, Signer::new(stack.producer.clone(), KEY_ID));
    match sequencer {
        Some(s) => p.with_sequencer(s),
        None => p,
    }
}

fn contact_updated(n: u32) -> AuditEvent {
    AuditEvent::new("com.acme.contact.updated")
        .actor(format!("user-{n}"), "user")
        .action("UPDATE")
        .resource("Contact", format!("c-{n}"))
        .outcome("success")
        .attribute("field", "email")
}

#[tokio::test]
async fn the_rust_sdk_publishes_over_nats_as_its_own_identity_and_every_record_reverifies() {
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let (auth, _) = stack.auth.as_ref().unwrap();
    let p = partition(TENANT, SOURCE);
    let (_, seed) = atp::admin::add_nats_producer(&stack.nats.url(), auth, &p, None)
        .await
        .unwrap();
    let seq_dir = tempfile::tempdir().unwrap();
    let producer = producer(
        &stack,
        Some(Sequencer::file(seq_dir.path().join("crm.seq")).unwrap()),
    );
    let nats = NatsPublisher::connect(&stack.nats.url(), &seed, producer.source())
        .await
        .expect("the producer connects with the seed file ATP wrote")
        .retry(Retry {
            attempts: 3,
            ..Retry::default()
        });

    // Three from plain fields, one from a cloudevents-sdk event, published two at a time.
    let mut events: Vec<_> = (0..3)
        .map(|n| producer.sign(contact_updated(n)).unwrap())
        .collect();
    let ce = cloudevents::EventBuilderV10::new()
        .id("ce-1")
        .source(SOURCE_URI)
        .ty("com.acme.note.created")
        .time(chrono::Utc::now())
        .data(
            "application/json",
            serde_json::json!({
                "actor": {"id": "user-9", "type": "user"}, "action": "CREATE",
                "resource": {"type": "Note", "id": "n-1"}, "attributes": {}
            }),
        )
        .build()
        .unwrap();
    events.push(producer.sign_cloudevent(&ce).unwrap());
    let receipts = nats.publish_all(events.clone(), 2).await;
    let mut seqs: Vec<u64> = receipts
        .into_iter()
        .map(|r| r.expect("acknowledged").ingress_seq)
        .collect();
    // A retry of an acknowledged event is the same submission: no second record.
    seqs.push(nats.publish(&events[0]).await.unwrap().ingress_seq);
    let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), 5, "five submissions reached ATP: {seqs:?}");

    let records = eventually("four records", || async {
        let r = stack.ledger(&p).await;
        (r.len() >= 4).then_some(r)
    })
    .await;
    assert_eq!(stack.verify_chain(&p).await, 4, "the repeat made no record");
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.event["id"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = events.iter().map(|e| e.id()).collect();
    want.sort();
    let mut got = ids.clone();
    got.sort();
    assert_eq!(got, want);
    // The SDK numbered them 1..=4, signed, and the records keep it.
    let mut seqs: Vec<u64> = records
        .iter()
        .map(|r| r.event["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4]);

    // Each stored event re-verifies against the registered producer key, as received.
    let kv = stack
        .js
        .get_key_value(streams::PRODUCERS_BUCKET)
        .await
        .unwrap();
    let reg = atp_nats::registry::get(&kv, &p).await.unwrap().unwrap();
    for r in &records {
        let body = serde_json::to_vec(&r.event).unwrap();
        let sub = Submission {
            body: &body,
            content_type: Some("application/cloudevents+json"),
            ce_headers: Vec::new(),
            repeated: Vec::new(),
            channel: Channel::Nats,
        };
        atp_core::event::admit(&p, &sub, Some(&reg)).expect("the stored signature verifies");
        assert_eq!(r.producer.key_id.as_deref(), Some(KEY_ID));
    }

    // An event numbered below what ATP recorded is durable, then refused, never recorded.
    let stale = producer.sign(contact_updated(7).sequence(2)).unwrap();
    nats.publish(&stale).await.unwrap();
    let rejections = eventually("the stale event's rejection", || async {
        let r = stack.rejections(&p).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(rejections[0].reason, Reason::SequenceRegression);
    assert_eq!(stack.verify_chain(&p).await, 4);
}

#[tokio::test]
async fn the_rust_sdk_over_http_answers_the_record_a_repeat_and_a_typed_rejection() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let http = HttpPublisher::new(&api.base, stack.token(TENANT, Permission::Producer))
        .unwrap()
        .wait(Duration::from_secs(20));
    let producer = producer(&stack, None);

    let event = producer.sign(contact_updated(1)).unwrap();
    let Outcome::Recorded(first) = http.append(&event).await.unwrap() else {
        panic!("no record within the wait");
    };
    assert_eq!(first.chain_index, 0);
    assert!(!first.repeat);
    assert!(first.digest.starts_with("sha256:"));
    let Outcome::Recorded(again) = http.append(&event).await.unwrap() else {
        panic!("a repeat answers its record");
    };
    assert!(again.repeat);
    assert_eq!(again.record_id, first.record_id);

    // Signed with a key ATP does not have under this key id: a typed rejection.
    let forger = Producer::new(
        Source::new(TENANT, SOURCE, SOURCE_URI).unwrap(),
        Signer::new(SigningKey::from_bytes(&[99; 32]), KEY_ID),
    );
    let forged = forger.sign(contact_updated(2)).unwrap();
    match http.append(&forged).await {
        Err(PublishError::Rejected { reason, detail }) => {
            assert_eq!(reason, Reason::SignatureInvalid, "{detail}");
        }
        other => panic!("a forged event answered {other:?}"),
    }
    // A token for another tenant's role is the gateway's refusal, not the event's.
    let auditor = HttpPublisher::new(&api.base, stack.token(TENANT, Permission::Auditor))
        .unwrap()
        .retry(Retry::never());
    match auditor
        .append(&producer.sign(contact_updated(3)).unwrap())
        .await
    {
        Err(PublishError::Refused { status, .. }) => assert_eq!(status, 403),
        other => panic!("an auditor's append answered {other:?}"),
    }
    // A source the producer does not own is refused before anything is sent.
    assert!(Source::new("Not A Tenant", SOURCE, SOURCE_URI).is_err());
}
